//! The OVSDB standalone log file format (ovsdb(5)), shared with `ovsdb-tool`.
//!
//! A file is a sequence of records, each `OVSDB JSON <length> <sha1>\n` followed by
//! `<length>` bytes of JSON text ending in a newline, where `<sha1>` is the SHA-1 of
//! those bytes.  The first record is the schema; the others are transactions.
//! [`read_records`] returns every complete, checksummed record and the offset where the
//! valid prefix ends; [`Log::open`] truncates anything after it (a torn or corrupt tail
//! left by a crash).  [`Log`] appends records and makes them durable with `fdatasync`
//! before [`Log::commit`] returns.  [`Log::replace`] atomically rewrites the file
//! (write temporary, fsync, rename, fsync directory) for compaction.  Files are created
//! with mode [`DB_FILE_MODE`] (0640).  A `Log` holds an
//! exclusive `flock` on its file so two servers never write one database.  Owned by one
//! thread.

use serde_json::Value;
use sha1::{Digest, Sha1};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const MAGIC: &str = "OVSDB JSON";

/// Errors of the log layer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// I/O failure with the file named.
    #[error("{path}: {source}")]
    Io {
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file does not start with a valid OVSDB record.
    #[error("{path}: not an OVSDB standalone database file ({reason})")]
    NotOvsdb {
        /// File involved.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Another process holds the database.
    #[error("{path}: database is locked by another process; stop it or use another file")]
    Locked {
        /// File involved.
        path: PathBuf,
    },
}

/// Result of scanning a log file.
#[derive(Debug)]
pub struct Scan {
    /// Complete records in order.
    pub records: Vec<Value>,
    /// Byte offset just after the last complete record.
    pub valid_len: u64,
    /// Total file length.
    pub file_len: u64,
    /// Why scanning stopped before the end, if it did.
    pub tail_error: Option<String>,
}

/// Formats one record.
pub fn encode_record(v: &Value) -> Vec<u8> {
    encode_record_text(serde_json::to_vec(v).unwrap_or_default())
}

/// Formats one record from its JSON text (what `serde_json::to_vec` gives for
/// the record's value).
pub fn encode_record_text(json: Vec<u8>) -> Vec<u8> {
    let (mut out, body) = record_parts(json);
    out.extend_from_slice(&body);
    out
}

/// The two parts of the record [`encode_record_text`] formats from `json`:
/// its header line (magic, length and SHA-1 of the body) and its body (the
/// JSON text and a newline), without copying the body.
pub fn record_parts(json: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let mut body = json;
    body.push(b'\n');
    let sha = Sha1::digest(&body);
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    (format!("{MAGIC} {} {hex}\n", body.len()).into_bytes(), body)
}

/// The header line (with its newline) of a record formatted by
/// [`encode_record`] or [`encode_record_text`].
pub fn record_header(record: &[u8]) -> &[u8] {
    record
        .iter()
        .position(|&b| b == b'\n')
        .map_or(record, |i| &record[..=i])
}

/// Parses records from file contents, stopping at the first incomplete or corrupt one.
pub fn parse_records(data: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut tail_error = None;
    while pos < data.len() {
        let rest = &data[pos..];
        let Some(nl) = rest.iter().take(200).position(|&b| b == b'\n') else {
            tail_error = Some(format!("incomplete record header at offset {pos}"));
            break;
        };
        let header = String::from_utf8_lossy(&rest[..nl]);
        let mut parts = header.rsplitn(3, ' ');
        let (Some(sha), Some(len), Some(magic)) = (parts.next(), parts.next(), parts.next()) else {
            tail_error = Some(format!("malformed record header at offset {pos}"));
            break;
        };
        let Ok(len) = len.parse::<usize>() else {
            tail_error = Some(format!("malformed record length at offset {pos}"));
            break;
        };
        if magic != MAGIC {
            tail_error = Some(format!(
                "unexpected record magic \"{magic}\" at offset {pos}"
            ));
            break;
        }
        let body_start = nl + 1;
        if rest.len() < body_start + len {
            tail_error = Some(format!("record at offset {pos} is truncated"));
            break;
        }
        let body = &rest[body_start..body_start + len];
        let digest: String = Sha1::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if digest != sha {
            tail_error = Some(format!("record at offset {pos} has a bad checksum"));
            break;
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => records.push(v),
            Err(e) => {
                tail_error = Some(format!("record at offset {pos} is not valid JSON: {e}"));
                break;
            }
        }
        pos += body_start + len;
    }
    Scan {
        records,
        valid_len: pos as u64,
        file_len: data.len() as u64,
        tail_error,
    }
}

/// Reads and scans a whole log file.
pub fn read_records(path: &Path) -> Result<Scan, LogError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|source| LogError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(parse_records(&data))
}

/// An open log file positioned for appending.
#[derive(Debug)]
pub struct Log {
    path: PathBuf,
    file: File,
    /// OVS-style `.<name>.~lock~` file, held with a POSIX record lock.
    _lockfile: File,
    /// Queued records (a large record's body is kept as it was written,
    /// not copied).
    pending: Vec<Vec<u8>>,
    len: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

fn lock(file: &File, path: &Path) -> Result<(), LogError> {
    // SAFETY: flock is called on a file descriptor owned by `file`, which outlives the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(LogError::Locked {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Takes the lock that OVS tools use (`.<name>.~lock~` next to the database, locked
/// with `fcntl(F_SETLK)`), so ovsdb-server and `ovsdb-tool compact` refuse to touch a
/// database nestdb is serving, and nestdb refuses one they hold.
fn ovs_lockfile(path: &Path) -> Result<File, LogError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lp = path.with_file_name(format!(".{name}.~lock~"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lp)
        .map_err(io(&lp))?;
    // SAFETY: a zeroed flock struct is valid; fields are then set explicitly.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on a descriptor owned by `f` with a pointer to a live flock struct.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) };
    if rc != 0 {
        return Err(LogError::Locked {
            path: path.to_owned(),
        });
    }
    Ok(f)
}

fn sync_dir(path: &Path) -> Result<(), LogError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Log {
    /// Opens an existing log, truncating a torn or corrupt tail.  Returns the log and
    /// the scan (records and what was dropped).
    pub fn open(path: &Path) -> Result<(Self, Scan), LogError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        lock(&file, path)?;
        let lockfile = ovs_lockfile(path)?;
        let scan = read_records(path)?;
        if scan.records.is_empty() {
            return Err(LogError::NotOvsdb {
                path: path.to_owned(),
                reason: scan
                    .tail_error
                    .clone()
                    .unwrap_or_else(|| "file is empty".into()),
            });
        }
        if scan.valid_len < scan.file_len {
            file.set_len(scan.valid_len).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
        }
        Ok((
            Self {
                path: path.to_owned(),
                file,
                _lockfile: lockfile,
                pending: Vec::new(),
                len: scan.valid_len,
            },
            scan,
        ))
    }

    /// Creates a new log holding `records` (the schema first).  Fails if it exists.
    pub fn create(path: &Path, records: &[Value]) -> Result<Self, LogError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let tmp = tmp_path(path);
        write_file(&tmp, records)?;
        std::fs::hard_link(&tmp, path).map_err(io(path))?;
        std::fs::remove_file(&tmp).map_err(io(&tmp))?;
        sync_dir(path)?;
        Ok(Self::open(path)?.0)
    }

    /// Queues a record; it is not durable until [`Log::commit`].
    pub fn append(&mut self, v: &Value) {
        self.pending.push(encode_record(v));
    }

    /// Queues a record already formatted by [`encode_record`].
    pub fn append_encoded(&mut self, record: &[u8]) {
        self.pending.push(record.to_vec());
    }

    /// Queues a record given as the parts [`record_parts`] makes.
    pub fn append_parts(&mut self, header: Vec<u8>, body: Vec<u8>) {
        self.pending.push(header);
        self.pending.push(body);
    }

    /// Writes queued records and waits until they are on stable storage.
    pub fn commit(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for p in &self.pending {
            self.file.write_all(p).map_err(io(&self.path))?;
        }
        self.file.sync_data().map_err(io(&self.path))?;
        self.len += self.pending.iter().map(|p| p.len() as u64).sum::<u64>();
        self.pending.clear();
        Ok(())
    }

    /// Current durable length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the file holds nothing (never true for an opened log).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Atomically replaces the file's contents with `records` and reopens it.
    pub fn replace(&mut self, records: &[Value]) -> Result<(), LogError> {
        self.commit()?;
        let tmp = tmp_path(&self.path);
        write_file(&tmp, records)?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        sync_dir(&self.path)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        lock(&file, &self.path)?;
        self.len = file.metadata().map_err(io(&self.path))?.len();
        self.file = file;
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Mode of database files: the owner (the server, root) reads and writes,
/// its group may read (backups, `ovsdb-tool`), other users nothing, as the
/// node's configuration (VTEPs, Services, port security) is not theirs to
/// read.
pub const DB_FILE_MODE: u32 = 0o640;

fn write_file(path: &Path, records: &[Value]) -> Result<(), LogError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(DB_FILE_MODE)
        .open(path)
        .map_err(io(path))?;
    // A leftover temporary keeps its old mode through `create`; set it.
    f.set_permissions(std::fs::Permissions::from_mode(DB_FILE_MODE))
        .map_err(io(path))?;
    for r in records {
        f.write_all(&encode_record(r)).map_err(io(path))?;
    }
    f.sync_all().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn database_files_are_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("conf.db");
        let mut log = Log::create(&p, &[json!({"name": "s"})]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), DB_FILE_MODE);
        // Compaction rewrites the file with the same mode, even over a
        // world-readable leftover temporary.
        let tmp = tmp_path(&p);
        std::fs::write(&tmp, b"stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        log.replace(&[json!({"name": "s"})]).unwrap();
        assert_eq!(mode(&p), DB_FILE_MODE);
    }

    #[test]
    fn record_format_matches_ovsdb_tool() {
        // A record written by ovsdb-tool 3.1: length and SHA-1 cover the JSON and newline.
        let body = b"{\"x\":1}\n";
        let enc = encode_record(&json!({"x": 1}));
        let sha: String = Sha1::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            enc,
            [format!("OVSDB JSON 8 {sha}\n").as_bytes(), body].concat()
        );
    }

    #[test]
    fn recovery_keeps_complete_records_and_truncates_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        let mut log = Log::create(&p, &[json!({"name": "s"})]).unwrap();
        log.append(&json!({"a": 1}));
        log.append(&json!({"a": 2}));
        log.commit().unwrap();
        drop(log);
        let good = std::fs::metadata(&p).unwrap().len();
        // Torn write: half a header, then garbage.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"OVSDB JSON 100 abc\n{\"a\":").unwrap();
        drop(f);
        let (log, scan) = Log::open(&p).unwrap();
        assert_eq!(scan.records.len(), 3);
        assert!(scan.tail_error.is_some());
        assert_eq!(log.len(), good);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), good);
        drop(log);
        // Corrupt checksum in the last record: that record is dropped.
        let mut data = std::fs::read(&p).unwrap();
        let n = data.len();
        data[n - 3] = b'9';
        std::fs::write(&p, &data).unwrap();
        let (_, scan) = Log::open(&p).unwrap();
        assert_eq!(scan.records.len(), 2);
    }

    #[test]
    fn second_open_is_refused_and_garbage_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        let _log = Log::create(&p, &[json!({"name": "s"})]).unwrap();
        assert!(matches!(Log::open(&p), Err(LogError::Locked { .. })));
        let q = dir.path().join("junk");
        std::fs::write(&q, b"hello world\n").unwrap();
        assert!(matches!(Log::open(&q), Err(LogError::NotOvsdb { .. })));
    }

    #[test]
    fn replace_compacts_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db");
        let mut log = Log::create(&p, &[json!({"name": "s"})]).unwrap();
        for i in 0..10 {
            log.append(&json!({ "i": i }));
        }
        log.commit().unwrap();
        log.replace(&[json!({"name": "s"}), json!({"i": 9})])
            .unwrap();
        log.append(&json!({"i": 10}));
        log.commit().unwrap();
        let scan = read_records(&p).unwrap();
        assert_eq!(
            scan.records,
            vec![json!({"name": "s"}), json!({"i": 9}), json!({"i": 10})]
        );
        assert!(scan.tail_error.is_none());
    }

    proptest::proptest! {
        #[test]
        fn damaged_logs_yield_a_prefix_of_records(
            n in 1usize..6,
            cut in 0usize..2000,
            flip in proptest::option::of((0usize..2000, 1u8..=255)),
        ) {
            let recs: Vec<Value> = (0..n).map(|i| json!({"i": i, "pad": "x".repeat(i * 7)})).collect();
            let mut data: Vec<u8> = recs.iter().flat_map(encode_record).collect();
            data.truncate(cut.min(data.len()));
            if let Some((pos, x)) = flip {
                if !data.is_empty() {
                    let p = pos % data.len();
                    data[p] ^= x;
                }
            }
            let scan = parse_records(&data);
            proptest::prop_assert!(scan.records.len() <= n);
            proptest::prop_assert_eq!(&scan.records[..], &recs[..scan.records.len()]);
            proptest::prop_assert!(scan.valid_len <= data.len() as u64);
        }
    }
}
