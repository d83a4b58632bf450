//! Connections that outlive the process (`[datapath] state_file`): at
//! start, the saved files are read and checked in full, and their
//! connections indexed, before the PMDs forward ([`begin_restore`]); the
//! connections then go back into the table in the background, and one a
//! packet needs first goes back at once (`conntrack::lazy`), so a crash
//! restart's gap does not grow with the table (at a million connections
//! the eager restore, [`restore`], took seconds before the first packet).
//! A thread saves every `state_interval_ms`; a clean stop saves once more.
//! So after a crash (SIGKILL, OOM) the next sluiced loses at most the
//! connections opened in the last interval, and after a clean restart
//! none; established ones keep their NAT, their endpoint and their TCP
//! state. The Services' session-affinity entries are saved too; restored
//! ones wait (with their lifetimes running) until their Service is
//! programmed again, and the saver thread puts them back then. A start
//! that put connections back forwards nothing until it is programmed
//! ([`hold_until_programmed`]: the learning-switch default flow would send
//! an endpoint's packet of a restored NATed connection out untranslated,
//! and the client's reset would end it).
//!
//! **Incremental.** The state file (`FILE`, the versioned format of
//! `conntrack::state`) is a full snapshot, written only by a compaction;
//! every save in between appends one frame to the journal `FILE.journal`
//! with the connections created, changed (in a field a restore needs, or
//! a lifetime past the bounds `conntrack::state::Tracker` documents) or
//! deleted since the previous save, so a save of a quiet 1M-connection
//! table writes nothing. Nor does it read the whole table: the rounds
//! between two compactions look only at the connections the table's
//! change log names (created, killed, or changed in a field a restore
//! needs) and at those whose lifetime check falls due (half their saved
//! lifetime on: an active connection is saved again then, so a restore
//! gives it at least half its timeout less the interval); a compaction,
//! the first round after reading the files back and a round after the
//! log overflowed scan the table. The journal names the snapshot it
//! extends (its save time). A compaction (at the first save with no usable files, when
//! the journal outgrows the snapshot, after a failed write) writes the
//! snapshot to a temporary private to the process, `fsync`s it, renames it
//! over `FILE` and `fsync`s the directory, then does the same for a new,
//! empty journal; each append is followed by `fdatasync`. So after a power
//! loss: a compaction cut between its two renames leaves a journal of the
//! previous snapshot, which is ignored (the new snapshot holds all); an
//! append cut short leaves a torn last frame, which is dropped (one save
//! lost, as with a crash) and cut off before the next append.
//!
//! **Never trusted blindly.** A snapshot that does not decode (corrupt,
//! truncated, a format this build does not read), or a journal with a bad
//! frame that is not its last, discards both files: they are moved aside
//! as `FILE.bad` and `FILE.journal.bad` with one log line and the table
//! starts empty.
//!
//! The same snapshot encoding carries the state of a hand-over restart
//! (see `handover`), written by [`write`] to a file the new process names.
//! The new process's saver starts from the files the old one left (it
//! reads them back and appends what differs).
//!
//! The saver spends at most a fifth of a core: after a round it waits the
//! interval or four times the round's length, whichever is longer (a
//! compaction passes over the whole table; on a busy machine with a
//! million connections that takes long, and the interval grows with it,
//! and so does what a crash can lose).
//!
//! Thread-safety: the saver thread reads the shared table as dumps do; it
//! skips its rounds while `paused` (from a hand-over's `prepare` on: the
//! new process owns the files once it commits; if the hand-over fails,
//! the saver reads the files back before it appends again);
//! [`wait_for_round`] returns once a round under way has finished, so a
//! hand-over that paused the saver knows it no longer writes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conntrack::state::{self, JournalError, Restored, SavedState, StateError, Tracker};
use crate::conntrack::Conntrack;
use crate::service::{AffinityEntry, Services};
use crate::time::{clock_ns, Nanos};

/// What a crash restore did.
#[derive(Debug, Clone, Default)]
pub struct CrashRestore {
    /// Connections restored and skipped.
    pub restored: Restored,
    /// Bytes read (snapshot and journal).
    pub bytes: usize,
    /// Time since the last save, ms.
    pub age_ms: u64,
    /// Time to decode and restore, ms.
    pub took_ms: f64,
    /// Affinity entries waiting for their Services, with their deadlines
    /// on this process's clock.
    pub affinity: Vec<(AffinityEntry, Nanos)>,
}

/// The journal beside the state file `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    suffixed(path, ".journal")
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Why the saved state was discarded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The snapshot.
    #[error("{0}")]
    State(#[from] StateError),
    /// The journal.
    #[error("{0}")]
    Journal(JournalError),
    /// Reading.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
}

/// What [`load`] read.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The state the snapshot and its journal hold together, lifetimes
    /// relative to the time of the load.
    pub state: SavedState,
    /// Bytes of the snapshot and of the journal.
    pub bytes: (usize, usize),
    /// Journal frames applied.
    pub frames: usize,
    /// Bytes of a torn last frame dropped.
    pub torn_bytes: usize,
    /// Length of the journal's valid part (where the next frame goes),
    /// None when there is no journal of this snapshot.
    pub journal_len: Option<u64>,
    /// Unix time of the last save, ns.
    pub saved_at_unix_ns: u64,
    /// Unix time of the snapshot's save, ns (what its journal names).
    pub base_saved_at_unix_ns: u64,
}

/// Reads the state file `path` and its journal. `Ok(None)`: no state
/// file. A journal of another snapshot (a compaction cut short) is
/// ignored; a missing one is no change.
///
/// # Errors
/// [`LoadError`]: the snapshot or the journal is corrupt or of a format
/// this build does not read (or unreadable).
pub fn load(path: &Path) -> Result<Option<Loaded>, LoadError> {
    let base = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let saved = state::decode(&base)?;
    let base_at = saved.saved_at_unix_ns;
    let (journal, jbytes) = match std::fs::read(journal_path(path)) {
        Ok(d) => match state::decode_journal(&d, base_at) {
            Ok(j) => (Some(j), d.len()),
            Err(JournalError::OtherBase { .. }) => (None, 0),
            Err(e) => return Err(LoadError::Journal(e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, 0),
        Err(e) => return Err(e.into()),
    };
    let j = journal.unwrap_or_default();
    let saved_at_unix_ns = j
        .frames
        .last()
        .map_or(base_at, |f| f.upserts.saved_at_unix_ns);
    let journal_len = (jbytes > 0).then_some((jbytes - j.torn_bytes) as u64);
    Ok(Some(Loaded {
        state: state::merge(saved, &j, unix_now_ns()),
        bytes: (base.len(), jbytes),
        frames: j.frames.len(),
        torn_bytes: j.torn_bytes,
        journal_len,
        saved_at_unix_ns,
        base_saved_at_unix_ns: base_at,
    }))
}

/// Puts back the connections saved in `path` (and its journal), if any;
/// discards (moves aside) files that cannot be trusted, with one log line.
pub fn restore(path: &Path, ct: &Conntrack) -> Option<CrashRestore> {
    let t0 = Instant::now();
    let loaded = match load(path) {
        Ok(Some(l)) => l,
        Ok(None) => return None,
        Err(LoadError::Io(e)) => {
            tracing::warn!(
                "cannot read saved connections {}: {e}; starting empty",
                path.display()
            );
            return None;
        }
        Err(e) => {
            let (bad, jbad) = discard(path);
            tracing::warn!(
                "discarded saved connections {} ({e}); moved to {} and {}; starting empty",
                path.display(),
                bad.display(),
                jbad.display()
            );
            return None;
        }
    };
    let now = clock_ns();
    let saved = loaded.state;
    let r = ct.restore(&saved, now);
    let age_ms = unix_now_ns().saturating_sub(loaded.saved_at_unix_ns) / 1_000_000;
    let took_ms = t0.elapsed().as_secs_f64() * 1e3;
    let torn = if loaded.torn_bytes > 0 {
        format!(
            "; the journal's last frame was cut short ({} bytes, dropped)",
            loaded.torn_bytes
        )
    } else {
        String::new()
    };
    tracing::info!(
        "restored {} connections ({} skipped) from {} ({} bytes and {} journal frames in {} bytes, last change saved {age_ms} ms ago) in {took_ms:.1} ms; {} affinity entries wait for their Services{torn}",
        r.restored,
        r.skipped,
        path.display(),
        loaded.bytes.0,
        loaded.frames,
        loaded.bytes.1,
        saved.affinity.len()
    );
    Some(CrashRestore {
        restored: r,
        bytes: loaded.bytes.0 + loaded.bytes.1,
        age_ms,
        took_ms,
        affinity: saved
            .affinity
            .into_iter()
            .map(|a| {
                let d = now.saturating_add(a.remaining);
                (a, d)
            })
            .collect(),
    })
}

/// What [`begin_restore`] hands the background restore's end.
#[derive(Debug, Clone, Copy)]
pub struct RestoreDone {
    /// What it did in all.
    pub stats: crate::conntrack::lazy::LazyStats,
    /// From the start of [`begin_restore`] to the last connection back, ms.
    pub ms: f64,
}

/// [`restore`] that does not hold up forwarding (see
/// `conntrack::lazy`): the files are read and checked in full (a file
/// that fails is discarded with one log line, as by [`restore`]) and
/// their connections indexed; then a thread (`ct-restore`) puts them back
/// while the PMDs forward, and a packet whose connection is not back yet
/// puts it back first. `on_done` runs on that thread at the end. The
/// returned counts are those to put back (the report's until the end).
pub fn begin_restore(
    path: &Path,
    ct: &Conntrack,
    on_done: impl FnOnce(RestoreDone) + Send + 'static,
) -> Option<CrashRestore> {
    let t0 = Instant::now();
    let fail = |e: LoadError| {
        match e {
            LoadError::Io(e) => tracing::warn!(
                "cannot read saved connections {}: {e}; starting empty",
                path.display()
            ),
            e => {
                let (bad, jbad) = discard(path);
                tracing::warn!(
                    "discarded saved connections {} ({e}); moved to {} and {}; starting empty",
                    path.display(),
                    bad.display(),
                    jbad.display()
                );
            }
        }
        None
    };
    let base = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return fail(e.into()),
    };
    let read_ms = t0.elapsed().as_secs_f64() * 1e3;
    // The save time the journal must name, from the header (checked with
    // the rest of the file by `Pending::new`: a bad one fails there).
    let base_at = base
        .get(16..24)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let (journal, jbytes) = match std::fs::read(journal_path(path)) {
        Ok(d) => match state::decode_journal(&d, base_at) {
            Ok(j) => (j, d.len()),
            Err(JournalError::OtherBase { .. }) => (state::Journal::default(), 0),
            Err(e) => {
                // The snapshot's own fault, if it has one, is the one to
                // report.
                if let Err(se) = state::check(&base) {
                    return fail(LoadError::State(se));
                }
                return fail(LoadError::Journal(e));
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (state::Journal::default(), 0),
        Err(e) => return fail(e.into()),
    };
    let bytes = base.len() + jbytes;
    let saved_at = journal
        .frames
        .last()
        .map_or(base_at, |f| f.upserts.saved_at_unix_ns);
    let now = clock_ns();
    let pending = match crate::conntrack::lazy::Pending::new(base, &journal, unix_now_ns(), now) {
        Ok(p) => p,
        Err(e) => return fail(LoadError::State(e)),
    };
    let affinity: Vec<(AffinityEntry, Nanos)> = pending
        .affinity()
        .iter()
        .map(|a| (a.clone(), now.saturating_add(a.remaining)))
        .collect();
    let st = pending.stats();
    ct.begin_restore(pending);
    let took_ms = t0.elapsed().as_secs_f64() * 1e3;
    let age_ms = unix_now_ns().saturating_sub(saved_at) / 1_000_000;
    let torn = if journal.torn_bytes > 0 {
        format!(
            "; the journal's last frame was cut short ({} bytes, dropped)",
            journal.torn_bytes
        )
    } else {
        String::new()
    };
    tracing::info!(
        "restoring {} connections from {} ({bytes} bytes with {} journal frames, last change saved {age_ms} ms ago): checked and indexed in {took_ms:.1} ms (read {read_ms:.1} ms); they go back in the background, each at once if a packet needs it first; {} affinity entries wait for their Services{torn}",
        st.live_at_load,
        path.display(),
        journal.frames.len(),
        affinity.len()
    );
    let ct2 = ct.clone();
    let spawned = std::thread::Builder::new()
        .name("ct-restore".into())
        .spawn(move || {
            let s = ct2.finish_restore().unwrap_or_default();
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            tracing::info!(
                "restored {} connections ({} skipped; {} expired, {} put back first by a packet that needed them) in {ms:.1} ms",
                s.restored,
                s.skipped,
                s.expired,
                s.faulted
            );
            on_done(RestoreDone { stats: s, ms });
        });
    if let Err(e) = spawned {
        // No thread: put them back here (the start waits for it).
        tracing::warn!("cannot start the restore thread ({e}); restoring before forwarding");
        ct.finish_restore();
    }
    Some(CrashRestore {
        restored: Restored {
            restored: st.live_at_load,
            skipped: 0,
        },
        bytes,
        age_ms,
        took_ms,
        affinity,
    })
}

/// Removes the learning-switch default flow ([`super::DEFAULT_FLOW`])
/// from a new process that put connections back, before its PMDs forward:
/// a miss then drops until the program is pushed again, as after a
/// hand-over. With it, an endpoint's packet of a restored NATed connection
/// (a retransmission of the segment whose acknowledgement the crash cut
/// off) would be switched out untranslated, the client would answer it
/// with a reset that reaches the endpoint, and the connection would die
/// although its state was saved.
pub fn hold_until_programmed(tables: &crate::flow::tables::FlowTables) {
    // `DEFAULT_FLOW`'s match, strictly: that one rule.
    match tables.del_flows("table=0,priority=0", true, clock_ns()) {
        Ok(_) => tracing::info!(
            "connections restored: no default flow, packets are dropped until the program is pushed again"
        ),
        Err(e) => tracing::warn!("cannot remove the default flow after a crash restore: {e}"),
    }
}

/// Moves the state file and its journal aside; their new names.
fn discard(path: &Path) -> (PathBuf, PathBuf) {
    let bad = suffixed(path, ".bad");
    let journal = journal_path(path);
    let jbad = suffixed(&journal, ".bad");
    let _ = std::fs::rename(path, &bad);
    let _ = std::fs::rename(&journal, &jbad);
    (bad, jbad)
}

/// The live connections of `ct` and the affinity entries of `services`.
pub fn snapshot(ct: &Conntrack, services: Option<&Services>) -> state::SavedState {
    snapshot_where(ct, services, |_| true)
}

/// [`snapshot`] of the connections whose original key `keep` accepts.
pub fn snapshot_where(
    ct: &Conntrack,
    services: Option<&Services>,
    keep: impl Fn(&crate::conntrack::ConnKey) -> bool,
) -> state::SavedState {
    let now = clock_ns();
    let mut saved = state::save_where(ct, now, keep);
    if let Some(s) = services {
        saved.affinity = s.affinity_entries(now);
    }
    saved
}

/// Saves the live connections of `ct` (and the affinity entries of
/// `services`) to the state file `path` in full, durably, with an empty
/// journal (a compaction: what a clean stop does); returns (connections,
/// affinity entries, bytes).
///
/// # Errors
/// The I/O error.
pub fn save(
    path: &Path,
    ct: &Conntrack,
    services: Option<&Services>,
) -> std::io::Result<(usize, usize, usize)> {
    let saved = snapshot(ct, services);
    let bytes = compact_files(path, &saved)?;
    Ok((saved.conns.len(), saved.affinity.len(), bytes as usize))
}

/// The format version the state file is written in: this build's, or
/// the older one `SLUICED_TEST_STATE_VERSION` names (what the previous
/// release writes, to test upgrades end to end).
fn write_version() -> u32 {
    std::env::var("SLUICED_TEST_STATE_VERSION")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|v| (1..=state::VERSION).contains(v))
        .unwrap_or(state::VERSION)
}

/// A temporary name beside `path`, private to this process (two
/// processes during a hand-over never share one).
fn tmp_path(path: &Path) -> PathBuf {
    suffixed(path, &format!(".tmp{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically and durably: a temporary, `fsync`,
/// rename, `fsync` of the directory.
fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let r = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// A compaction: `saved` as the state file, then an empty journal of it.
/// Returns the state file's size.
fn compact_files(path: &Path, saved: &SavedState) -> std::io::Result<u64> {
    let bytes = state::encode_version(saved, write_version());
    write_durable(path, &bytes)?;
    write_durable(
        &journal_path(path),
        &state::journal_header(saved.saved_at_unix_ns),
    )?;
    Ok(bytes.len() as u64)
}

/// Writes `saved` to `path` atomically (not durably: a hand-over's state,
/// read back by the next process at once); returns (connections, affinity
/// entries, bytes).
///
/// # Errors
/// The I/O error.
pub fn write(path: &Path, saved: &state::SavedState) -> std::io::Result<(usize, usize, usize)> {
    let bytes = state::encode_version(saved, write_version());
    let tmp = tmp_path(path);
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok((saved.conns.len(), saved.affinity.len(), bytes.len()))
}

/// Puts back the affinity entries whose Service exists; keeps the others
/// (until their deadline passes).
pub fn restore_pending(pending: &mut Vec<(AffinityEntry, Nanos)>, services: &Services) -> usize {
    let now = clock_ns();
    let mut done = 0;
    pending.retain_mut(|(a, deadline)| {
        if *deadline <= now {
            return false;
        }
        a.remaining = *deadline - now;
        if services.restore_affinity(std::slice::from_ref(a), now) == 1 {
            done += 1;
            return false;
        }
        true
    });
    done
}

/// The journal is compacted once it is larger than the state file and
/// than this.
const COMPACT_MIN: u64 = 16 << 20;

type AffinityKey = (String, Ipv4Addr, (Ipv4Addr, u16));

/// What one save did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// It was a compaction (the whole table written).
    pub compacted: bool,
    /// It read the files back and went on from them.
    pub resumed: bool,
    /// Connections written (all of them for a compaction).
    pub written: usize,
    /// Deletions written.
    pub deleted: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Connections looked at: the whole table for a compaction or a scan,
    /// else only the ones the table's change log names and those whose
    /// lifetime check fell due.
    pub examined: usize,
    /// The round scanned the whole table (a compaction, the first round
    /// after reading the files back, or a change log that overflowed).
    pub scanned: bool,
}

/// The incremental saver's state: what the files hold, and the journal
/// open for appending.
///
/// Thread-safety: owned by the saver thread.
#[derive(Debug)]
pub struct Incremental {
    path: PathBuf,
    tracker: Tracker,
    /// None: the next round reads the files back (or compacts).
    journal: Option<File>,
    /// The next round compacts (a write failed: the journal may end in
    /// a torn frame that must not be followed by others).
    must_compact: bool,
    base_bytes: u64,
    journal_bytes: u64,
    /// The affinity entries the files hold: deadline bounds, as for
    /// connections.
    affinity: HashMap<AffinityKey, (Nanos, Nanos)>,
    /// The journal is compacted once larger than the state file and this.
    compact_min: u64,
    /// The next round scans the whole table (the tracker was seeded from
    /// the files, which may differ from the table).
    scan_next: bool,
}

impl Incremental {
    /// A saver for the state file `path`; its first round reads back the
    /// files there, or compacts.
    pub fn new(path: &Path) -> Incremental {
        Incremental {
            path: path.to_path_buf(),
            tracker: Tracker::new(),
            journal: None,
            must_compact: false,
            base_bytes: 0,
            journal_bytes: 0,
            affinity: HashMap::new(),
            compact_min: COMPACT_MIN,
            scan_next: false,
        }
    }

    /// The same saver, compacting once the journal is larger than the
    /// state file and than `bytes` (instead of 16 MiB): the power-cut
    /// test compacts often so that cuts land in compactions too.
    pub fn with_compact_min(mut self, bytes: u64) -> Incremental {
        self.compact_min = bytes;
        self
    }

    /// Forgets the open journal: the next round reads the files back
    /// (another process may have written them).
    pub fn reload(&mut self) {
        self.journal = None;
    }

    /// One save: the changes since the last one appended to the journal,
    /// or a compaction.
    ///
    /// # Errors
    /// The I/O error (the next round compacts).
    pub fn round(&mut self, ct: &Conntrack, services: Option<&Services>) -> std::io::Result<Round> {
        let r = self.round_inner(ct, services);
        if r.is_err() {
            self.journal = None;
            self.must_compact = true;
        }
        r
    }

    fn round_inner(
        &mut self,
        ct: &Conntrack,
        services: Option<&Services>,
    ) -> std::io::Result<Round> {
        let mut resumed = false;
        if self.journal.is_none() {
            if self.must_compact || !self.resume()? {
                return self.compact(ct, services);
            }
            resumed = true;
        }
        if self.journal_bytes > self.base_bytes.max(self.compact_min) {
            return self.compact(ct, services);
        }
        let now = clock_ns();
        let logged = ct.take_changes();
        let changes = match logged {
            Some(keys) if !self.scan_next => self.tracker.changes_logged(ct, now, &keys),
            _ => {
                // The log (re)starts before the scan: what changes during
                // it is looked at again next round.
                ct.log_changes();
                self.tracker.changes(ct, now)
            }
        };
        self.scan_next = false;
        let (examined, scanned) = (changes.examined, changes.scanned);
        let affinity = services
            .map(|s| s.affinity_entries(now))
            .unwrap_or_default();
        let with_affinity = self.affinity_changed(&affinity, now);
        if changes.is_empty() && !with_affinity {
            return Ok(Round {
                resumed,
                examined,
                scanned,
                ..Round::default()
            });
        }
        let upserts = SavedState {
            saved_at_unix_ns: unix_now_ns(),
            conns: changes.upserts,
            affinity: if with_affinity { affinity } else { Vec::new() },
            macs: Vec::new(),
        };
        let frame = state::journal_frame(&changes.deleted, &upserts, with_affinity);
        let f = self
            .journal
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no journal open"))?;
        f.write_all(&frame)?;
        f.sync_data()?;
        self.journal_bytes += frame.len() as u64;
        Ok(Round {
            compacted: false,
            resumed,
            written: upserts.conns.len(),
            deleted: changes.deleted.len(),
            bytes: frame.len() as u64,
            examined,
            scanned,
        })
    }

    /// Whether `entries` differ from the affinity entries the files hold
    /// (a new or gone entry, a deadline past its bounds); when they do,
    /// they become the ones the files hold.
    fn affinity_changed(&mut self, entries: &[AffinityEntry], now: Nanos) -> bool {
        let changed = entries.len() != self.affinity.len()
            || entries.iter().any(|a| {
                let d = now.saturating_add(a.remaining);
                self.affinity
                    .get(&(a.service.clone(), a.client, a.endpoint))
                    .is_none_or(|&(lo, hi)| d < lo || d > hi)
            });
        if changed {
            self.remember_affinity(entries, now);
        }
        changed
    }

    fn remember_affinity(&mut self, entries: &[AffinityEntry], now: Nanos) {
        self.affinity = entries
            .iter()
            .map(|a| {
                let d = now.saturating_add(a.remaining);
                (
                    (a.service.clone(), a.client, a.endpoint),
                    (d.saturating_sub(1_000_000_000), d + a.remaining / 2),
                )
            })
            .collect();
    }

    /// Reads the files back and opens the journal after its last valid
    /// frame; false when they are missing or unusable (then a compaction
    /// follows).
    fn resume(&mut self) -> std::io::Result<bool> {
        let loaded = match load(&self.path) {
            Ok(Some(l)) => l,
            Ok(None) | Err(LoadError::State(_)) | Err(LoadError::Journal(_)) => return Ok(false),
            Err(LoadError::Io(e)) => return Err(e),
        };
        let len = match loaded.journal_len {
            Some(len) => len,
            None => {
                // No journal of this snapshot (none yet, or one of the
                // previous snapshot): an empty one.
                write_durable(
                    &journal_path(&self.path),
                    &state::journal_header(loaded.base_saved_at_unix_ns),
                )?;
                state::JOURNAL_HEADER as u64
            }
        };
        let now = clock_ns();
        // The table may differ from the files (a failed hand-over's
        // files, connections restored since): the next changes come from
        // a scan, with the change log on from before it.
        self.scan_next = true;
        self.tracker.seed(&loaded.state, now);
        self.remember_affinity(&loaded.state.affinity, now);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(journal_path(&self.path))?;
        // A torn last frame is cut off: the next frame must follow the
        // last whole one.
        f.set_len(len)?;
        f.sync_all()?;
        f.seek(std::io::SeekFrom::End(0))?;
        self.journal = Some(f);
        self.base_bytes = loaded.bytes.0 as u64;
        self.journal_bytes = len;
        Ok(true)
    }

    fn compact(&mut self, ct: &Conntrack, services: Option<&Services>) -> std::io::Result<Round> {
        self.journal = None;
        // The change log restarts before the pass: what changes during it
        // is looked at again next round.
        ct.log_changes();
        self.scan_next = false;
        let now = clock_ns();
        let mut saved = self.tracker.full(ct, now);
        if let Some(s) = services {
            saved.affinity = s.affinity_entries(now);
        }
        self.remember_affinity(&saved.affinity, now);
        let base = compact_files(&self.path, &saved)?;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(journal_path(&self.path))?;
        self.journal = Some(f);
        self.must_compact = false;
        self.base_bytes = base;
        self.journal_bytes = state::JOURNAL_HEADER as u64;
        Ok(Round {
            compacted: true,
            resumed: false,
            written: saved.conns.len(),
            deleted: 0,
            bytes: base + state::JOURNAL_HEADER as u64,
            examined: saved.conns.len(),
            scanned: true,
        })
    }
}

/// The saver waits at least this many times the length of its last
/// round before the next one.
const MAX_DUTY_INVERSE: u32 = 4;

/// Held by the saver thread for each round.
static ROUND: Mutex<()> = Mutex::new(());

/// Returns once the saver round under way, if any, has finished: after
/// setting `paused`, the caller knows the saver no longer writes.
pub fn wait_for_round() {
    drop(ROUND.lock().unwrap_or_else(|e| e.into_inner()));
}

/// The saver thread's inputs.
#[derive(Debug)]
pub struct Saver {
    /// The file.
    pub path: PathBuf,
    /// The connections.
    pub ct: Conntrack,
    /// The Services (affinity).
    pub services: Services,
    /// How often.
    pub every: Duration,
    /// Stops the thread.
    pub stop: Arc<AtomicBool>,
    /// Skips rounds while set.
    pub paused: Arc<AtomicBool>,
    /// Restored affinity entries waiting for their Services.
    pub pending: Vec<(AffinityEntry, Nanos)>,
}

/// The saver thread.
pub fn spawn_saver(mut s: Saver) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("state-saver".into())
        .spawn(move || {
            let mut failing = false;
            let mut inc = Incremental::new(&s.path);
            let mut wait = s.every;
            while !s.stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(wait);
                wait = s.every;
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                if !s.pending.is_empty() {
                    let n = restore_pending(&mut s.pending, &s.services);
                    if n > 0 {
                        tracing::info!("restored {n} Service affinity entries");
                    }
                }
                let _round = ROUND.lock().unwrap_or_else(|e| e.into_inner());
                if s.paused.load(Ordering::Relaxed) {
                    // Another process may write the files meanwhile.
                    inc.reload();
                    continue;
                }
                // A lazy restore's connections are all back before the
                // files are compared with the table.
                s.ct.finish_restore();
                let t0 = Instant::now();
                let r = inc.round(&s.ct, Some(&s.services));
                // At most a fifth of a core: a long round (a large table
                // on a busy machine) spaces the next one out.
                wait = wait.max(t0.elapsed() * MAX_DUTY_INVERSE);
                match r {
                    Ok(r) => {
                        failing = false;
                        if r.compacted || r.resumed {
                            tracing::info!(
                                "state saver: {} {} ({} connections, {} bytes) in {:.1} ms",
                                if r.compacted {
                                    "compacted"
                                } else {
                                    "resumed from"
                                },
                                s.path.display(),
                                if r.compacted {
                                    r.written
                                } else {
                                    inc.tracker.len()
                                },
                                r.bytes,
                                t0.elapsed().as_secs_f64() * 1e3
                            );
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("cannot save connections to {}: {e}", s.path.display());
                    }
                    Err(_) => {}
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::state::SavedConn;
    use crate::conntrack::{ConnFilter, ConnKey, ConntrackConfig};

    const HOUR: Nanos = 3_600_000_000_000;

    fn udp(i: u32) -> SavedConn {
        crate::conntrack::state::saved_udp(0xac10_0000 | i, 1024, HOUR)
    }

    /// Adds connections `ids` to `ct` (as a restore does).
    fn add(ct: &Conntrack, ids: impl IntoIterator<Item = u32>) {
        let s = SavedState {
            conns: ids.into_iter().map(udp).collect(),
            ..Default::default()
        };
        let n = s.conns.len();
        assert_eq!(ct.restore(&s, clock_ns()).restored, n);
    }

    fn keys_of(s: &SavedState) -> Vec<ConnKey> {
        let mut k: Vec<ConnKey> = s.conns.iter().map(|c| c.keys[0]).collect();
        k.sort_by_key(|k| k.tuple.src);
        k
    }

    fn live_keys(ct: &Conntrack) -> Vec<ConnKey> {
        let mut k = Vec::new();
        ct.for_each(|c| k.push(c.keys[0]));
        k.sort_by_key(|k| k.tuple.src);
        k
    }

    fn loaded(path: &Path) -> Loaded {
        load(path).expect("loads").expect("there is a state file")
    }

    /// A table of 1,000 connections, saved once in full, then twice
    /// incrementally; returns (dir, file, table, journal length before the
    /// last frame).
    fn saved_with_two_frames() -> (tempfile::TempDir, PathBuf, Conntrack, u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("conntrack.state");
        let ct = Conntrack::new(ConntrackConfig::default());
        add(&ct, 0..1000);
        let mut inc = Incremental::new(&path);
        let r = inc.round(&ct, None).expect("first save");
        assert!(r.compacted && r.written == 1000, "{r:?}");
        add(&ct, 1000..1003);
        inc.round(&ct, None).expect("second save");
        let before = std::fs::metadata(journal_path(&path))
            .expect("journal")
            .len();
        ct.flush(&ConnFilter {
            ip: Some(Ipv4Addr::new(172, 16, 0, 7)),
            ..Default::default()
        });
        add(&ct, [2000]);
        inc.round(&ct, None).expect("third save");
        (dir, path, ct, before)
    }

    /// A process that put connections back holds its traffic until it is
    /// programmed: the learning-switch default flow goes (a miss drops),
    /// and nothing else does.
    #[test]
    fn a_crash_restore_removes_only_the_default_flow() {
        use crate::flow::tables::FlowTables;
        let t = FlowTables::new();
        t.add_flow(crate::daemon::DEFAULT_FLOW, 0).expect("default");
        t.add_flow("table=1,priority=0 actions=normal", 0)
            .expect("another priority 0");
        t.add_flow("table=0,priority=0,ip actions=drop", 0)
            .expect("another match at priority 0");
        hold_until_programmed(&t);
        let left: Vec<String> = t
            .dump_flows("", 0)
            .expect("dump")
            .lines()
            .map(|l| l.split("idle_age=0, ").nth(1).unwrap_or(l).to_string())
            .collect();
        assert_eq!(
            left,
            ["priority=0,ip actions=drop", "priority=0 actions=NORMAL"]
        );
        assert!(t.dump_flows("table=1", 0).expect("dump").contains("NORMAL"));
    }

    /// After the first (full) save, a save writes only the connections
    /// created or deleted since the previous one, nothing when nothing
    /// changed, and the state file and journal read back as the table.
    #[test]
    fn a_save_writes_only_what_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("conntrack.state");
        let ct = Conntrack::new(ConntrackConfig::default());
        add(&ct, 0..1000);
        let mut inc = Incremental::new(&path);
        let first = inc.round(&ct, None).expect("save");
        assert!(first.compacted, "{first:?}");
        assert_eq!(first.written, 1000);
        let base = std::fs::metadata(&path).expect("state file").len();
        assert!(base > 1000 * state::RECORD_V2 as u64);
        // Nothing changed: nothing written.
        let quiet = inc.round(&ct, None).expect("save");
        assert_eq!(quiet, Round::default());
        assert_eq!(
            std::fs::metadata(journal_path(&path))
                .expect("journal")
                .len(),
            state::JOURNAL_HEADER as u64
        );
        // Three new, two gone: one small frame.
        add(&ct, 1000..1003);
        for ip in [Ipv4Addr::new(172, 16, 0, 7), Ipv4Addr::new(172, 16, 0, 9)] {
            assert_eq!(
                ct.flush(&ConnFilter {
                    ip: Some(ip),
                    ..Default::default()
                }),
                1
            );
        }
        let r = inc.round(&ct, None).expect("save");
        assert!(!r.compacted);
        assert_eq!((r.written, r.deleted), (3, 2), "{r:?}");
        assert!(
            r.bytes < 5 * state::RECORD_V2 as u64 + 200,
            "a frame of 3 connections and 2 deletions is small: {r:?}"
        );
        assert_eq!(std::fs::metadata(&path).expect("state file").len(), base);
        let l = loaded(&path);
        assert_eq!(l.frames, 1);
        assert_eq!(keys_of(&l.state), live_keys(&ct));
        assert_eq!(l.state.conns.len(), 1001);
        // Lifetimes are relative to the load, not to each save.
        assert!(l.state.conns.iter().all(|c| c.remaining <= HOUR));
    }

    /// Between compactions a round looks only at the connections the
    /// table's change log names (not the whole table), and still finds
    /// every creation and deletion; the first round after reading the
    /// files back scans once.
    #[test]
    fn a_round_looks_only_at_what_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("conntrack.state");
        let ct = Conntrack::new(ConntrackConfig::default());
        add(&ct, 0..20_000);
        let mut inc = Incremental::new(&path);
        let first = inc.round(&ct, None).expect("save");
        assert!(
            first.compacted && first.scanned && first.examined == 20_000,
            "{first:?}"
        );
        let quiet = inc.round(&ct, None).expect("save");
        assert_eq!(quiet, Round::default(), "a quiet round looks at nothing");
        add(&ct, 20_000..20_003);
        for ip in [Ipv4Addr::new(172, 16, 0, 7), Ipv4Addr::new(172, 16, 0, 9)] {
            let f = ConnFilter {
                ip: Some(ip),
                ..Default::default()
            };
            assert_eq!(ct.flush(&f), 1);
        }
        let r = inc.round(&ct, None).expect("save");
        assert!(!r.scanned && !r.compacted, "{r:?}");
        assert_eq!((r.written, r.deleted, r.examined), (3, 2, 5), "{r:?}");
        assert_eq!(keys_of(&loaded(&path).state), live_keys(&ct));
        // A new saver (the next process) reads the files back and scans
        // once, then follows the log again.
        let mut next = Incremental::new(&path);
        let r = next.round(&ct, None).expect("save");
        assert!(r.resumed && r.scanned && r.written == 0, "{r:?}");
        add(&ct, [30_000]);
        let r = next.round(&ct, None).expect("save");
        assert!(!r.scanned, "{r:?}");
        assert_eq!((r.written, r.examined), (1, 1), "{r:?}");
        assert_eq!(keys_of(&loaded(&path).state), live_keys(&ct));
    }

    /// A power cut during an append leaves a torn last frame: every cut
    /// point inside it reads back as the state before that save, says so,
    /// and the next saver cuts it off before it appends (so the torn bytes
    /// never end up in the middle of the journal).
    #[test]
    fn a_torn_last_frame_is_dropped_and_cut_off() {
        let (_dir, path, ct, before) = saved_with_two_frames();
        let jpath = journal_path(&path);
        let whole = std::fs::read(&jpath).expect("journal");
        let earlier = {
            std::fs::write(&jpath, &whole[..before as usize]).expect("cut");
            let l = loaded(&path);
            assert_eq!((l.frames, l.torn_bytes), (1, 0));
            keys_of(&l.state)
        };
        for cut in before as usize + 1..whole.len() {
            std::fs::write(&jpath, &whole[..cut]).expect("cut");
            let l = loaded(&path);
            assert_eq!(l.frames, 1, "cut at {cut}");
            assert_eq!(l.torn_bytes, cut - before as usize, "cut at {cut}");
            assert_eq!(keys_of(&l.state), earlier, "cut at {cut}");
        }
        // A cut whose size reached the disk before its data: zeros.
        let mut zeros = whole[..before as usize + 11].to_vec();
        zeros.resize(whole.len() + 4096, 0);
        std::fs::write(&jpath, &zeros).expect("zero tail");
        let l = loaded(&path);
        assert_eq!(l.frames, 1);
        assert_eq!(keys_of(&l.state), earlier);
        // The next process resumes: cuts the tail, appends what differs.
        let mut inc = Incremental::new(&path);
        let r = inc.round(&ct, None).expect("save");
        assert!(r.resumed && !r.compacted, "{r:?}");
        assert_eq!((r.written, r.deleted), (1, 1), "{r:?}");
        let l = loaded(&path);
        assert_eq!((l.frames, l.torn_bytes), (2, 0));
        assert_eq!(keys_of(&l.state), live_keys(&ct));
    }

    /// A bad frame that is not the last one is corruption: the restore
    /// discards both files (moved aside) and restores nothing.
    #[test]
    fn a_corrupt_journal_discards_both_files() {
        let (dir, path, _ct, _) = saved_with_two_frames();
        let jpath = journal_path(&path);
        let mut data = std::fs::read(&jpath).expect("journal");
        data[state::JOURNAL_HEADER + 20] ^= 0x10;
        std::fs::write(&jpath, &data).expect("corrupt");
        assert!(matches!(load(&path), Err(LoadError::Journal(_))));
        let ct = Conntrack::new(ConntrackConfig::default());
        assert!(restore(&path, &ct).is_none());
        assert!(ct.is_empty());
        assert!(!path.exists() && !jpath.exists());
        assert!(dir.path().join("conntrack.state.bad").exists());
        assert!(dir.path().join("conntrack.state.journal.bad").exists());
    }

    /// A compaction cut between its two renames leaves a new state file
    /// and the journal of the previous one: the journal is ignored, the
    /// state file alone is read, and the next saver replaces the journal
    /// with an empty one of the state file.
    #[test]
    fn a_journal_of_another_state_file_is_ignored() {
        let (_dir, path, ct, _) = saved_with_two_frames();
        let jpath = journal_path(&path);
        let old_journal = std::fs::read(&jpath).expect("journal");
        save(&path, &ct, None).expect("a compaction");
        std::fs::write(&jpath, &old_journal).expect("the previous journal");
        let l = loaded(&path);
        assert_eq!((l.frames, l.journal_len), (0, None));
        assert_eq!(keys_of(&l.state), live_keys(&ct));
        // The next saver starts an empty journal of the state file.
        let r = Incremental::new(&path).round(&ct, None).expect("save");
        assert!(r.resumed && !r.compacted, "{r:?}");
        assert_eq!((r.written, r.deleted), (0, 0), "{r:?}");
        assert_eq!(
            std::fs::metadata(&jpath).expect("journal").len(),
            state::JOURNAL_HEADER as u64
        );
        assert_eq!(
            loaded(&path).journal_len,
            Some(state::JOURNAL_HEADER as u64)
        );
    }

    /// A corrupt state file is refused as before (moved aside).
    #[test]
    fn a_corrupt_state_file_discards_both_files() {
        let (_dir, path, _ct, _) = saved_with_two_frames();
        let mut data = std::fs::read(&path).expect("state file");
        let n = data.len();
        data[n / 2] ^= 0xff;
        std::fs::write(&path, &data).expect("corrupt");
        assert!(matches!(load(&path), Err(LoadError::State(_))));
        assert!(restore(&path, &Conntrack::new(ConntrackConfig::default())).is_none());
        assert!(!path.exists() && !journal_path(&path).exists());
    }

    /// The lazy restore the daemon starts with puts back what the eager
    /// one does (snapshot and journal frames together), reports the end,
    /// and a whole-table reader sees every saved connection at once.
    #[test]
    fn a_lazy_restore_ends_with_what_an_eager_restore_gives() {
        let (_dir, path, ct, _) = saved_with_two_frames();
        let eager = Conntrack::new(ConntrackConfig::default());
        let e = restore(&path, &eager).expect("restores");
        assert_eq!(live_keys(&eager), live_keys(&ct));
        let lazy = Conntrack::new(ConntrackConfig::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let r = begin_restore(&path, &lazy, move |d| tx.send(d).expect("send")).expect("begins");
        assert_eq!(r.restored.restored, e.restored.restored);
        // A dump (a whole-table reader) finishes the restore first.
        assert_eq!(live_keys(&lazy), live_keys(&ct));
        let d = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the background restore ends");
        assert_eq!(d.stats.restored, e.restored.restored);
        assert_eq!((d.stats.skipped, d.stats.done), (0, d.stats.saved));
        assert!(lazy.restore_progress().is_none());
    }

    /// A corrupt state file or journal is discarded by the lazy restore as
    /// by the eager one (moved aside), and nothing is put back.
    #[test]
    fn a_lazy_restore_discards_a_corrupt_file_or_journal() {
        for journal in [false, true] {
            let (_dir, path, _ct, _) = saved_with_two_frames();
            let target = if journal {
                journal_path(&path)
            } else {
                path.clone()
            };
            let mut data = std::fs::read(&target).expect("file");
            let n = data.len();
            // In the journal: a frame that is not its last.
            let at = if journal {
                state::JOURNAL_HEADER + 12
            } else {
                n / 2
            };
            data[at] ^= 0xff;
            std::fs::write(&target, &data).expect("corrupt");
            let ct = Conntrack::new(ConntrackConfig::default());
            assert!(
                begin_restore(&path, &ct, |_| {}).is_none(),
                "journal {journal}"
            );
            assert!(!path.exists() && !journal_path(&path).exists());
            assert!(ct.is_empty() && ct.restore_progress().is_none());
        }
    }
}
