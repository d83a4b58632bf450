//! Durable storage of one database: the in-memory [`Database`] plus its [`Log`].
//!
//! Invariant: every change applied to `db` has been appended to the log, and the server
//! calls [`Storage::sync`] (which fsyncs) before acknowledging any of them, so an
//! acknowledged transaction is always on disk.  Opening replays every complete record
//! (including `_is_diff` records written by ovsdb-server) after the log layer has cut
//! off a torn tail.  Each committed transaction gets a transaction id derived from the
//! previous id and the record's header line (which holds the SHA-1 of the record's
//! body, so it stands for the whole record without hashing megabytes twice), so ids are stable across restarts and a client
//! resuming with `monitor_cond_since` after a server restart still finds its place in
//! the history rebuilt from the log.  Compaction rewrites the file as schema + one
//! snapshot record once the log has grown past a threshold.  Owned by the server thread.

use crate::log::{encode_record, record_header, record_parts, Log, LogError};
use crate::table::{Changes, Database};
use ovsdb_core::{Schema, Uuid};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

/// Errors opening or writing a database.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Log-level failure.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The schema record or a schema file is invalid.
    #[error("{path}: invalid schema: {reason}")]
    Schema {
        /// File involved.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A transaction record could not be replayed.
    #[error("{path}: record {index} cannot be applied: {reason}")]
    Replay {
        /// File involved.
        path: String,
        /// Record number (0 is the schema).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file does not exist and no schema was given to create it.
    #[error("{path}: database file does not exist; pass --schema FILE to create it")]
    Missing {
        /// File involved.
        path: String,
    },
}

/// Number of transactions kept for `monitor_cond_since`.
pub const HISTORY_LEN: usize = 1000;

/// A committed transaction remembered for `monitor_cond_since`.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// Transaction id.
    pub id: Uuid,
    /// What it changed.
    pub changes: Arc<Changes>,
}

/// A database and its log.
#[derive(Debug)]
pub struct Storage {
    /// Current contents.
    pub db: Database,
    log: Option<Log>,
    /// Id of the last committed transaction (nil before the first).
    pub last_txn: Uuid,
    /// Recent transactions, oldest first.
    pub history: VecDeque<HistoryEntry>,
    snapshot_len: u64,
    /// Log size that triggers automatic compaction.
    pub compact_threshold: u64,
    /// Records appended since the last compaction.
    pub records_since_compact: u64,
    /// Number of compactions performed.
    pub compactions: u64,
}

/// The id of the transaction after `prev` whose record has the header line
/// `header` (see [`record_header`]).
fn next_id(prev: Uuid, header: &[u8]) -> Uuid {
    let mut h = Sha1::new();
    h.update(prev.as_bytes());
    h.update(header);
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    Uuid(uuid::Builder::from_sha1_bytes(b).into_uuid())
}

impl Storage {
    /// An in-memory database (used for `_Server`).
    pub fn in_memory(schema: Schema) -> Self {
        Self {
            db: Database::new(Arc::new(schema)),
            log: None,
            last_txn: Uuid::nil(),
            history: VecDeque::new(),
            snapshot_len: 0,
            compact_threshold: u64::MAX,
            records_since_compact: 0,
            compactions: 0,
        }
    }

    /// Opens `path`, creating it from `schema_file` if it does not exist.
    pub fn open(
        path: &Path,
        schema_file: Option<&Path>,
        compact_threshold: u64,
    ) -> Result<Self, StorageError> {
        let p = path.display().to_string();
        if !path.exists() {
            let Some(sf) = schema_file else {
                return Err(StorageError::Missing { path: p });
            };
            let text = std::fs::read_to_string(sf).map_err(|e| StorageError::Schema {
                path: sf.display().to_string(),
                reason: e.to_string(),
            })?;
            let schema = Schema::from_json_str(&text).map_err(|e| StorageError::Schema {
                path: sf.display().to_string(),
                reason: e.details().to_owned(),
            })?;
            Log::create(path, std::slice::from_ref(&schema.json))?;
        }
        let (log, scan) = Log::open(path)?;
        if let Some(err) = &scan.tail_error {
            tracing::warn!(
                "{p}: {err}; kept {} complete records, truncated {} bytes",
                scan.records.len(),
                scan.file_len - scan.valid_len
            );
        }
        let schema = Schema::from_json(&scan.records[0]).map_err(|e| StorageError::Schema {
            path: p.clone(),
            reason: e.details().to_owned(),
        })?;
        let mut s = Self {
            db: Database::new(Arc::new(schema)),
            log: None,
            last_txn: Uuid::nil(),
            history: VecDeque::new(),
            snapshot_len: 0,
            compact_threshold,
            records_since_compact: 0,
            compactions: 0,
        };
        for (index, rec) in scan.records.iter().enumerate().skip(1) {
            let ch =
                s.db.changes_from_record(rec)
                    .map_err(|e| StorageError::Replay {
                        path: p.clone(),
                        index,
                        reason: e.details().to_owned(),
                    })?;
            s.db.apply(&ch);
            s.remember(record_header(&encode_record(rec)), ch);
        }
        s.records_since_compact = scan.records.len().saturating_sub(1) as u64;
        // The base snapshot is the schema plus the first record (what compaction writes).
        s.snapshot_len = scan
            .records
            .iter()
            .take(2)
            .map(|r| encode_record(r).len() as u64)
            .sum();
        s.log = Some(log);
        Ok(s)
    }

    fn remember(&mut self, header: &[u8], changes: Changes) {
        self.last_txn = next_id(self.last_txn, header);
        self.history.push_back(HistoryEntry {
            id: self.last_txn,
            changes: Arc::new(changes),
        });
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
    }

    /// Applies committed changes and queues their log record.  Returns the history
    /// entry (with the new transaction id).  Not durable until [`Storage::sync`].
    pub fn stage(&mut self, changes: Changes, date_ms: u64) -> HistoryEntry {
        // The same bytes as encode_record(&record_for(..)), which replay hashes
        // again for the transaction id, without building the record's Value.
        let (header, body) = record_parts(self.db.record_json(&changes, date_ms));
        self.db.apply(&changes);
        self.remember(&header, changes);
        if let Some(log) = &mut self.log {
            log.append_parts(header, body);
            self.records_since_compact += 1;
        }
        self.history.back().cloned().unwrap_or(HistoryEntry {
            id: self.last_txn,
            changes: Arc::new(Changes::default()),
        })
    }

    /// Makes all staged records durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(log) = &mut self.log {
            log.commit()?;
        }
        Ok(())
    }

    /// Current log size in bytes (0 for in-memory databases).
    pub fn log_len(&self) -> u64 {
        self.log.as_ref().map_or(0, Log::len)
    }

    /// True when the log has grown enough to be worth compacting (same spirit as
    /// ovsdb-server: past the threshold, at least 100 records, and 4x the last snapshot).
    pub fn should_compact(&self) -> bool {
        self.log.is_some()
            && self.log_len() >= self.compact_threshold
            && self.records_since_compact >= 100
            && self.log_len() >= self.snapshot_len.saturating_mul(4)
    }

    /// Rewrites the log as schema + one snapshot record.
    pub fn compact(&mut self) -> Result<(), StorageError> {
        let Some(log) = &mut self.log else {
            return Ok(());
        };
        let snap = self.db.snapshot_changes();
        let mut rec = self.db.record_for(&snap, now_ms());
        if let Value::Object(o) = &mut rec {
            o.insert("_comment".into(), json!("compacting database online"));
        }
        log.replace(&[self.db.schema.json.clone(), rec])?;
        self.snapshot_len = log.len();
        self.records_since_compact = 1;
        self.compactions += 1;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction::{execute, ExecContext, Outcome};

    const SCHEMA: &str =
        r#"{"name":"T","version":"1.0.0","tables":{"A":{"columns":{"n":{"type":"integer"}}}}}"#;

    fn insert(s: &mut Storage, n: i64) {
        let ctx = ExecContext {
            owns_lock: &|_| false,
            wait_expired: false,
            read_only: None,
        };
        let ops = json!([{"op":"insert","table":"A","row":{"n":n}}]);
        let Outcome::Done {
            changes: Some(c), ..
        } = execute(&s.db, ops.as_array().unwrap(), &ctx)
        else {
            panic!("insert failed")
        };
        s.stage(c, now_ms());
    }

    #[test]
    fn survives_reopen_and_compaction_with_stable_txn_ids() {
        let dir = tempfile::tempdir().unwrap();
        let sf = dir.path().join("s.ovsschema");
        std::fs::write(&sf, SCHEMA).unwrap();
        let p = dir.path().join("t.db");
        assert!(matches!(
            Storage::open(&p, None, 0),
            Err(StorageError::Missing { .. })
        ));
        let mut s = Storage::open(&p, Some(&sf), 0).unwrap();
        for i in 0..150 {
            insert(&mut s, i);
        }
        s.sync().unwrap();
        let id = s.last_txn;
        drop(s);
        let mut s = Storage::open(&p, None, 0).unwrap();
        assert_eq!(s.db.row_count(), 150);
        assert_eq!(s.last_txn, id, "transaction ids must survive a restart");
        assert!(s.should_compact());
        s.compact().unwrap();
        insert(&mut s, 1000);
        s.sync().unwrap();
        drop(s);
        let s = Storage::open(&p, None, 0).unwrap();
        assert_eq!(s.db.row_count(), 151);
        assert_eq!(crate::log::read_records(&p).unwrap().records.len(), 3);
    }
}
