//! Saved connection state: what lets connections survive a sluiced
//! restart (a crash, or a hand-over to a new process). Each live
//! connection is saved with both tuples, its NAT, its Service endpoint, its
//! protocol state (TCP window tracking included), its remaining lifetime,
//! its counters and its mark and label; [`Conntrack::restore`] puts them
//! back in a new table, where the next packet of each connection finds it
//! exactly as before (same translation, same endpoint, same TCP state).
//!
//! # Format (versioned, little-endian)
//!
//! | field | bytes |
//! |---|---|
//! | magic `SLCTSTAT` | 8 |
//! | version | 4 |
//! | record size | 4 |
//! | saved at (Unix ns) | 8 |
//! | records | 8 |
//! | names length, then the Service names joined by NUL | 4 + n |
//! | records | records × record size |
//! | (version 3 on) affinity entries, then each entry | 8 + n × 24 |
//! | (version 4 on) learned MACs, then each entry | 8 + n × 24 |
//! | CRC-32 of everything before | 4 |
//!
//! A record (version 2, [`RECORD_V2`] bytes): both keys (zone u16, proto
//! u8, pad, src u32, dst u32, sport u16, dport u16), NAT bits, protocol
//! kind (0 other, 1 ICMP, 2 TCP), replied, TCP state and liberal flag, the
//! two TCP sides (end, maxend, maxwin u32, bits u8), remaining lifetime in
//! ns (u64), packets and bytes per direction (u64), mark (u32), label
//! (u128), Service name index (u32, `u32::MAX`: none), endpoint address and
//! port. Version 1 (sluice 0.1.0's first format, [`RECORD_V1`] bytes) had
//! no byte counters and no label; it is still read (they restore as 0), so
//! a newer sluiced takes over from an older one. Version 3 adds the
//! Services' session-affinity entries after the records: Service name
//! index (u32, into the same names), client address (u32), endpoint
//! address (u32) and port (u16), 2 bytes of padding, remaining lifetime in
//! ns (u64); versions 1 and 2 decode with no affinity entries. Version 4
//! adds the PMDs' learned MAC entries after the affinity entries: address
//! (6 bytes), VLAN (u16), OpenFlow port (u16), 6 bytes of padding, time
//! since last seen in ns (u64); versions 1 to 3 decode with none (the new
//! process relearns them, flooding once). A version this build does
//! not know, a bad magic, a length or CRC mismatch or an impossible value
//! fails [`decode`] with a [`StateError`] saying which; the caller discards
//! the file with one log line and starts empty, never trusting it half.
//!
//! Lifetimes are saved as time remaining, since the monotonic clock of the
//! next process has another origin. A restored TCP connection skips window
//! checks from then on (Linux's "be liberal"): the saved windows may be an
//! interval older than its latest segments.
//!
//! # Incremental saves
//!
//! The crash-survival saver (`daemon::state`) writes a full snapshot only
//! now and then and, in between, appends journal frames with what changed:
//! [`Tracker`] keeps a fingerprint and lifetime bounds per saved
//! connection and finds the connections created, changed or deleted since
//! the last save: from the table's change log
//! ([`Conntrack::log_changes`], [`Tracker::changes_logged`]: the keys
//! created, killed or changed in the locked hit path, plus the saved
//! entries whose lifetime check falls due), in time that follows the
//! changes, or in one pass over the table ([`Tracker::changes`]) when the
//! log is off or overflowed.
//! The journal ([`journal_header`], [`journal_frame`],
//! [`decode_journal`]): magic `SLCTJRNL`, version (u32), the save time of
//! the snapshot it extends (u64), CRC-32 of those; then frames, each a
//! payload length (u32), the payload's CRC-32 and the payload: flags
//! (u32, 1: it carries the full list of affinity entries), the deleted
//! original keys (count u32, 16 bytes each, as in a record) and the new or
//! changed connections encoded as a state file of the current version.
//! [`merge`] applies the frames in order to the snapshot. A last frame cut
//! short is dropped; any other bad frame makes the whole journal corrupt.
//!
//! A hand-over's delta (the connections created after the snapshot) comes
//! from a [`CreationLog`](super::table::CreationLog) the table keeps while
//! a hand-over runs, read by [`save_keys`]: its cost follows the delta, not
//! the table.
//!
//! Thread-safety: [`save`] and [`Tracker`] read the shared table shard by
//! shard, holding each shard's lock only to clone its connections'
//! handles (the records are built with no lock held);
//! [`Conntrack::restore`] inserts as PMDs would; the creation log and the
//! change log are appended by PMDs under their own mutexes, only while
//! on. [`Tracker::changes_logged`] locks one shard per key it looks up.

use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64};

use hashbrown::HashMap;
use std::sync::{Arc, Mutex};

use super::entry::{Conn, ConnKey, CtMarks, Marks, ProtoState};
use super::lb::{EndpointStats, LbRef};
use super::nat::Tuple;
use super::shard::key_hash;
use super::tcp::{SideSnapshot, TcpConn, TcpSnapshot};
use super::Conntrack;
use crate::time::Nanos;

/// One client's affinity to an endpoint of a Service, as saved (the
/// service layer exports and restores these: `service/saved.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityEntry {
    /// The Service's name.
    pub service: String,
    /// The client address.
    pub client: Ipv4Addr,
    /// The endpoint address and port the client is pinned to.
    pub endpoint: (Ipv4Addr, u16),
    /// Time left before the affinity expires, ns.
    pub remaining: Nanos,
}

pub use crate::pipeline::l2::SavedMac;

/// File magic.
pub const MAGIC: &[u8; 8] = b"SLCTSTAT";
/// The version this build writes.
pub const VERSION: u32 = 4;
/// Record size of version 1.
pub const RECORD_V1: usize = 32 + 4 + 2 + 2 * 13 + 8 + 16 + 4 + 10 + 4;
/// Record size of version 2.
pub const RECORD_V2: usize = RECORD_V1 + 16 + 16;
/// Record size of version 3 (its connection records are version 2's).
pub const RECORD_V3: usize = RECORD_V2;
/// Record size of version 4 (its connection records are version 2's).
pub const RECORD_V4: usize = RECORD_V2;
/// Size of one affinity entry (version 3 on).
pub const AFFINITY_RECORD: usize = 4 + 4 + 4 + 2 + 2 + 8;
/// Size of one learned MAC entry (version 4 on).
pub const MAC_RECORD: usize = 6 + 2 + 2 + 6 + 8;
const HEADER: usize = 8 + 4 + 4 + 8 + 8 + 4;

/// Why saved state was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not a state file.
    #[error("not a sluiced conntrack state file (bad magic)")]
    Magic,
    /// Written by a version this build does not read.
    #[error("written in format version {0}; this sluiced reads versions 1 to {VERSION}")]
    Version(u32),
    /// Shorter or longer than its header says.
    #[error("truncated or padded: {0}")]
    Length(String),
    /// The checksum does not match.
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    /// A record holds a value no sluiced writes.
    #[error("record {index}: {why}")]
    Record {
        /// Which record.
        index: usize,
        /// What is wrong.
        why: String,
    },
}

/// One saved connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedConn {
    /// Original and reply keys.
    pub keys: [ConnKey; 2],
    /// NAT bits.
    pub nat: u8,
    /// Protocol state.
    pub proto: SavedProto,
    /// A reply was seen.
    pub replied: bool,
    /// Lifetime left when saved, ns.
    pub remaining: Nanos,
    /// Packets per direction.
    pub packets: [u64; 2],
    /// Bytes per direction.
    pub bytes: [u64; 2],
    /// `ct_mark`.
    pub mark: u32,
    /// `ct_label`.
    pub label: u128,
    /// Service and endpoint.
    pub lb: Option<(String, Ipv4Addr, u16)>,
}

/// A saved protocol state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SavedProto {
    /// UDP, SCTP, others.
    Other,
    /// ICMP echo.
    Icmp,
    /// TCP with its tracker.
    Tcp(TcpSnapshot),
}

/// What was saved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedState {
    /// Unix time of the save, ns.
    pub saved_at_unix_ns: u64,
    /// The connections.
    pub conns: Vec<SavedConn>,
    /// The Services' session-affinity entries (version 3 on).
    pub affinity: Vec<AffinityEntry>,
    /// Learned MAC addresses (version 4 on).
    pub macs: Vec<SavedMac>,
}

/// The live connections of `ct` at `now` (each once).
pub fn save(ct: &Conntrack, now: Nanos) -> SavedState {
    save_where(ct, now, |_| true)
}

/// The saved form of one connection.
fn saved_conn(c: &Conn, now: Nanos) -> SavedConn {
    let marks = c.marks();
    SavedConn {
        keys: c.keys,
        nat: c.nat,
        proto: match &c.proto {
            ProtoState::Tcp(t) => SavedProto::Tcp(t.snapshot()),
            ProtoState::Icmp => SavedProto::Icmp,
            ProtoState::Other => SavedProto::Other,
        },
        replied: c.replied(),
        remaining: c.expires().saturating_sub(now),
        packets: c.packets(),
        bytes: c.bytes(),
        mark: marks.mark,
        label: marks.label,
        lb: c
            .lb
            .as_ref()
            .map(|l| (l.service.to_string(), l.endpoint.0, l.endpoint.1)),
    }
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Visits every live connection of `ct` once (through its original key)
/// like [`Conntrack::for_each`], but runs `f` with no shard lock held:
/// each shard's connections are cloned (`Arc`) under its lock, then
/// visited. A save's work per connection (building its record, a
/// fingerprint) never holds up a PMD that needs the shard, even when the
/// saving thread is preempted (a busy machine).
fn for_each_unlocked(ct: &Conntrack, f: impl FnMut(&Conn)) {
    for_each_unlocked_synced(ct, false, f);
}

/// [`for_each_unlocked`]; with `sync`, each connection's entry lock is
/// taken and released before `f` reads it: a change the locked hit path
/// made under it is then seen, or was made after, and so recorded in the
/// change log switched on before the pass (see
/// [`ChangeLog`](super::table::ChangeLog), "Switching on").
fn for_each_unlocked_synced(ct: &Conntrack, sync: bool, mut f: impl FnMut(&Conn)) {
    // Saved connections not back yet (a lazy restore) are part of the
    // table.
    ct.finish_restore();
    let mut batch: Vec<Arc<Conn>> = Vec::new();
    for m in ct.inner.shards.iter() {
        batch.clear();
        super::lock(m).for_each(|c, dir| {
            if dir == 0 && !c.is_dead() {
                batch.push(c.clone());
            }
        });
        for c in &batch {
            if sync {
                drop(super::lock(&c.lock));
            }
            if !c.is_dead() {
                f(c);
            }
        }
    }
}

/// The live connections of `ct` at `now` whose original key `keep`
/// accepts.
pub fn save_where(ct: &Conntrack, now: Nanos, keep: impl Fn(&ConnKey) -> bool) -> SavedState {
    let mut conns = Vec::new();
    for_each_unlocked(ct, |c| {
        if c.is_dead() || !c.live(now) || !keep(&c.keys[0]) {
            return;
        }
        conns.push(saved_conn(c, now));
    });
    SavedState {
        saved_at_unix_ns: unix_now_ns(),
        conns,
        ..Default::default()
    }
}

/// The live connections of `ct` at `now` found by the original keys
/// `keys` (each once, duplicates and dead ones skipped): a hand-over's
/// delta, from the [`CreationLog`](super::table::CreationLog), in time
/// proportional to the delta instead of the table.
pub fn save_keys(ct: &Conntrack, now: Nanos, keys: &[ConnKey]) -> SavedState {
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    let mut conns = Vec::new();
    for k in keys {
        if !seen.insert(*k) {
            continue;
        }
        let shard = super::lock(ct.shard_of(key_hash(k)));
        if let Some(s) = shard.get(k) {
            let c = &s.conn;
            if s.dir == 0 && !c.is_dead() && c.live(now) {
                conns.push(saved_conn(c, now));
            }
        }
    }
    SavedState {
        saved_at_unix_ns: unix_now_ns(),
        conns,
        ..Default::default()
    }
}

impl Conntrack {
    /// Starts recording the original key of every connection created
    /// from now on (restarting an earlier log).
    pub fn log_creations(&self) {
        let log = &self.inner.created;
        *log.keys.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        log.on.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops the log and returns its keys; `None` when it was not on or
    /// overflowed [`CREATION_LOG_MAX`](super::table::CREATION_LOG_MAX)
    /// (then only a scan finds the connections created since).
    pub fn take_creations(&self) -> Option<Vec<ConnKey>> {
        let log = &self.inner.created;
        log.on.store(false, std::sync::atomic::Ordering::SeqCst);
        log.keys.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Starts (or restarts, emptied) the change log the state saver reads
    /// ([`ChangeLog`](super::table::ChangeLog)).
    pub fn log_changes(&self) {
        self.inner.changed.switch(true);
    }

    /// Stops the change log.
    pub fn stop_logging_changes(&self) {
        self.inner.changed.switch(false);
    }

    /// The original keys of the connections created, killed or changed
    /// since the last take (the log stays on); `None` when the log is off
    /// or overflowed (then only a scan finds what changed).
    pub fn take_changes(&self) -> Option<Vec<ConnKey>> {
        self.inner.changed.take()
    }
}

/// The fields of a connection that a crash restore needs exactly (keys,
/// NAT, protocol kind and TCP state, replied, mark, label, Service and
/// endpoint), hashed: what [`Tracker`] compares to find changed entries.
/// Counters, TCP windows and the lifetime are left out (the counters and
/// windows restore as of the entry's last save, a restored TCP connection
/// is tracked liberally; the lifetime has its own rule in [`Tracker`]).
#[allow(clippy::too_many_arguments)]
fn fingerprint_of(
    h: &impl BuildHasher,
    keys: &[ConnKey; 2],
    nat: u8,
    proto: &SavedProto,
    replied: bool,
    mark: u32,
    label: u128,
    lb: Option<(&str, Ipv4Addr, u16)>,
) -> u64 {
    // The liberal flag is left out: a restored connection is liberal
    // whatever was saved.
    let (kind, state) = match proto {
        SavedProto::Other => (0u8, 0u8),
        SavedProto::Icmp => (1, 0),
        SavedProto::Tcp(t) => (2, t.state),
    };
    h.hash_one((keys, nat, kind, state, replied, mark, label, lb))
}

fn fingerprint_saved(h: &impl BuildHasher, c: &SavedConn) -> u64 {
    fingerprint_of(
        h,
        &c.keys,
        c.nat,
        &c.proto,
        c.replied,
        c.mark,
        c.label,
        c.lb.as_ref().map(|(s, ip, p)| (s.as_str(), *ip, *p)),
    )
}

fn fingerprint_conn(h: &impl BuildHasher, c: &Conn) -> u64 {
    let marks = c.marks();
    let proto = match &c.proto {
        ProtoState::Tcp(t) => SavedProto::Tcp(t.snapshot()),
        ProtoState::Icmp => SavedProto::Icmp,
        ProtoState::Other => SavedProto::Other,
    };
    fingerprint_of(
        h,
        &c.keys,
        c.nat,
        &proto,
        c.replied(),
        marks.mark,
        marks.label,
        c.lb.as_ref()
            .map(|l| (&*l.service, l.endpoint.0, l.endpoint.1)),
    )
}

/// What a [`Tracker`] knows of one saved connection.
#[derive(Debug, Clone, Copy)]
struct Known {
    fp: u64,
    /// The saved expiry (monotonic ns of this process) less a second of
    /// tolerance: an earlier expiry is saved again.
    lo: Nanos,
    /// The saved expiry plus half the lifetime it had left when saved: a
    /// later one (a refreshed connection) is saved again.
    hi: Nanos,
    /// When [`Tracker::changes_logged`] looks at the entry's lifetime
    /// next (half its saved lifetime on).
    due: Nanos,
    epoch: u32,
}

/// A [`Tracker`] entry's lifetime check time and key, ordered by the
/// time alone.
#[derive(Debug, Clone, Copy)]
struct Due(Nanos, ConnKey);

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        self.0 == other.0
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Tolerance below a saved expiry before the entry is saved again (two
/// clocks read a few microseconds apart must not resave everything).
const SHRINK_TOLERANCE: Nanos = 1_000_000_000;

impl Known {
    fn new(fp: u64, expires: Nanos, now: Nanos, epoch: u32) -> Known {
        let left = expires.saturating_sub(now);
        Known {
            fp,
            lo: expires.saturating_sub(SHRINK_TOLERANCE),
            hi: expires.saturating_add(left / 2),
            due: now.saturating_add(left / 2),
            epoch,
        }
    }
}

/// What changed in a table since the last save: the connections to write
/// again (new, or changed in a saved field, or whose lifetime moved past
/// the tracker's bounds) and the original keys of those gone.
#[derive(Debug, Default)]
pub struct Changes {
    /// New or changed connections, as saved now.
    pub upserts: Vec<SavedConn>,
    /// Original keys of saved connections no longer live.
    pub deleted: Vec<ConnKey>,
    /// Connections looked at (the whole table for a scan; the logged and
    /// due ones otherwise).
    pub examined: usize,
    /// The whole table was scanned.
    pub scanned: bool,
}

impl Changes {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deleted.is_empty()
    }
}

/// The incremental saver's memory of what the state file holds, one small
/// entry per connection (a fingerprint and two lifetime bounds), so that
/// a save writes only the connections created, changed or deleted since
/// the previous one instead of the whole table.
///
/// Lifetimes: an entry is saved again when its expiry moves later than
/// its saved expiry plus half the lifetime it had left when saved, or
/// earlier than the saved one (less [`SHRINK_TOLERANCE`]). So a
/// connection that stays active is restored after a crash with at least
/// half its timeout left minus the save interval, and one that is idle
/// is restored with the lifetime it really has left.
///
/// Thread-safety: owned by the saver thread; it reads the shared table
/// shard by shard, with no lock held while it compares.
#[derive(Debug, Default)]
pub struct Tracker {
    known: HashMap<ConnKey, Known>,
    /// (due, key) of every known entry, earliest first; an element whose
    /// due differs from its entry's is stale (skipped).
    due: std::collections::BinaryHeap<std::cmp::Reverse<Due>>,
    epoch: u32,
    /// Hashes the fingerprints (seeded per process: fingerprints are
    /// only compared within one).
    hasher: hashbrown::DefaultHashBuilder,
}

impl Tracker {
    /// An empty tracker (the file holds nothing yet).
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Connections the file holds, as far as the tracker knows.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// True when it knows of none.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Forgets everything and saves the whole table of `ct` at `now`
    /// (what a compaction writes), remembering each entry.
    pub fn full(&mut self, ct: &Conntrack, now: Nanos) -> SavedState {
        self.known.clear();
        self.due.clear();
        self.epoch = self.epoch.wrapping_add(1);
        let epoch = self.epoch;
        let mut conns = Vec::with_capacity(ct.len());
        let (known, hasher) = (&mut self.known, &self.hasher);
        known.reserve(ct.len());
        let sync = ct.inner.changed.take_fresh();
        for_each_unlocked_synced(ct, sync, |c| {
            if c.is_dead() || !c.live(now) {
                return;
            }
            let s = saved_conn(c, now);
            known.insert(
                c.keys[0],
                Known::new(fingerprint_saved(hasher, &s), c.expires(), now, epoch),
            );
            conns.push(s);
        });
        self.rebuild_due();
        SavedState {
            saved_at_unix_ns: unix_now_ns(),
            conns,
            ..Default::default()
        }
    }

    fn rebuild_due(&mut self) {
        self.due = self
            .known
            .iter()
            .map(|(k, v)| std::cmp::Reverse(Due(v.due, *k)))
            .collect();
    }

    /// Remembers that the file holds `saved` (a state read back from it,
    /// its lifetimes already made relative to the present), as if this
    /// tracker had written it at `now`.
    pub fn seed(&mut self, saved: &SavedState, now: Nanos) {
        self.known.clear();
        self.epoch = self.epoch.wrapping_add(1);
        self.known.reserve(saved.conns.len());
        for c in &saved.conns {
            let expires = now.saturating_add(c.remaining);
            self.known.insert(
                c.keys[0],
                Known::new(fingerprint_saved(&self.hasher, c), expires, now, self.epoch),
            );
        }
        self.rebuild_due();
    }

    /// What changed in `ct` since the last call (or [`Tracker::full`],
    /// [`Tracker::seed`]); the tracker assumes they are written.
    pub fn changes(&mut self, ct: &Conntrack, now: Nanos) -> Changes {
        self.epoch = self.epoch.wrapping_add(1);
        let epoch = self.epoch;
        let mut out = Changes::default();
        let (known, hasher) = (&mut self.known, &self.hasher);
        let sync = ct.inner.changed.take_fresh();
        for_each_unlocked_synced(ct, sync, |c| {
            if c.is_dead() || !c.live(now) {
                return;
            }
            let expires = c.expires();
            let fp = fingerprint_conn(hasher, c);
            match known.get_mut(&c.keys[0]) {
                Some(k) if k.fp == fp && expires >= k.lo && expires <= k.hi => k.epoch = epoch,
                _ => {
                    let s = saved_conn(c, now);
                    known.insert(c.keys[0], Known::new(fp, expires, now, epoch));
                    out.upserts.push(s);
                }
            }
        });
        out.examined = ct.len();
        out.scanned = true;
        known.retain(|k, v| {
            if v.epoch == epoch {
                true
            } else {
                out.deleted.push(*k);
                false
            }
        });
        self.rebuild_due();
        out
    }

    /// What changed in `ct` since the last call, from `logged` (the table's
    /// change log since then: keys created, killed or changed) and the
    /// entries whose lifetime check is due at `now`; the tracker assumes
    /// they are written. The cost follows the logged and due entries, not
    /// the table: a logged key is looked up and compared; a due entry that
    /// is live and unchanged is saved again only when its lifetime moved
    /// past its bounds, and looked at again half its remaining lifetime
    /// later. Equivalent to [`Tracker::changes`] as far as a restore
    /// goes, provided `logged` holds every key created, killed or changed
    /// since the last call (or [`Tracker::full`], [`Tracker::seed`] or
    /// [`Tracker::changes`] with the log on before it).
    pub fn changes_logged(&mut self, ct: &Conntrack, now: Nanos, logged: &[ConnKey]) -> Changes {
        let mut out = Changes::default();
        let mut seen = std::collections::HashSet::with_capacity(logged.len());
        let look = |k: &ConnKey, due: bool, out: &mut Changes, this: &mut Tracker| {
            out.examined += 1;
            let live = {
                let shard = super::lock(ct.shard_of(key_hash(k)));
                shard
                    .get(k)
                    .filter(|s| s.dir == 0 && !s.conn.is_dead() && s.conn.live(now))
                    .map(|s| s.conn.clone())
            };
            match live {
                Some(c) => {
                    let expires = c.expires();
                    let fp = fingerprint_conn(&this.hasher, &c);
                    // Logged: saved again when changed or its lifetime
                    // moved past its bounds. Due: also when it moved later
                    // than saved at all (an active connection is saved
                    // again every half of its lifetime).
                    let keep = this.known.get(k).is_some_and(|v| {
                        let saved = v.lo.saturating_add(SHRINK_TOLERANCE);
                        let upper = if due {
                            saved.saturating_add(SHRINK_TOLERANCE)
                        } else {
                            v.hi
                        };
                        v.fp == fp && expires >= v.lo && expires <= upper
                    });
                    if keep {
                        // Unchanged: looked at again half the rest of its
                        // saved lifetime later (or just after it ends).
                        if let Some(v) = this.known.get_mut(k) {
                            let saved = v.lo.saturating_add(SHRINK_TOLERANCE);
                            v.due = if saved > now.saturating_add(2 * SHRINK_TOLERANCE) {
                                now + (saved - now) / 2
                            } else {
                                saved.max(now).saturating_add(SHRINK_TOLERANCE)
                            };
                            this.due.push(std::cmp::Reverse(Due(v.due, *k)));
                        }
                    } else {
                        let v = Known::new(fp, expires, now, this.epoch);
                        this.known.insert(*k, v);
                        this.due.push(std::cmp::Reverse(Due(v.due, *k)));
                        out.upserts.push(saved_conn(&c, now));
                    }
                }
                None => {
                    if this.known.remove(k).is_some() {
                        out.deleted.push(*k);
                    }
                }
            }
        };
        for k in logged {
            if seen.insert(*k) {
                look(k, false, &mut out, self);
            }
        }
        while let Some(&std::cmp::Reverse(Due(due, k))) = self.due.peek() {
            if due > now {
                break;
            }
            self.due.pop();
            let current = self.known.get(&k).is_some_and(|v| v.due == due);
            if current && seen.insert(k) {
                look(&k, true, &mut out, self);
            }
        }
        if self.due.len() > 2 * self.known.len() + 1024 {
            // Stale elements (entries saved again, or gone) outnumber the
            // live ones: rebuilt.
            self.rebuild_due();
        }
        out
    }
}

// ---------------------------------------------------------------- journal

/// Journal file magic (the incremental saver's append log, beside the
/// state file it extends).
pub const JOURNAL_MAGIC: &[u8; 8] = b"SLCTJRNL";
/// The journal version this build writes and reads.
pub const JOURNAL_VERSION: u32 = 1;
/// Size of the journal's header.
pub const JOURNAL_HEADER: usize = 8 + 4 + 8 + 4;
const FRAME_HEADER: usize = 4 + 4;
/// Frame flag: the frame carries the full list of affinity entries.
const FRAME_AFFINITY: u32 = 1;

/// The header of a journal that extends the state file saved at
/// `base_saved_at` (its `saved_at_unix_ns`).
pub fn journal_header(base_saved_at: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(JOURNAL_HEADER);
    out.extend_from_slice(JOURNAL_MAGIC);
    out.extend_from_slice(&JOURNAL_VERSION.to_le_bytes());
    out.extend_from_slice(&base_saved_at.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// One journal frame: one save's changes. `upserts.affinity`, when
/// `with_affinity`, replaces every affinity entry saved before.
///
/// | field | bytes |
/// |---|---|
/// | payload length | 4 |
/// | CRC-32 of the payload | 4 |
/// | flags (1: carries the affinity entries) | 4 |
/// | deleted keys, then each original key | 4 + n × 16 |
/// | the upserted connections (and affinity entries), a state file of the current version | rest |
pub fn journal_frame(deleted: &[ConnKey], upserts: &SavedState, with_affinity: bool) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + deleted.len() * 16);
    let flags = if with_affinity { FRAME_AFFINITY } else { 0 };
    payload.extend_from_slice(&flags.to_le_bytes());
    payload.extend_from_slice(&(deleted.len() as u32).to_le_bytes());
    for k in deleted {
        put_key(&mut payload, k);
    }
    payload.extend_from_slice(&encode(upserts));
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// One decoded journal frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Original keys of the connections gone.
    pub deleted: Vec<ConnKey>,
    /// New or changed connections (and, when `with_affinity`, the full
    /// list of affinity entries).
    pub upserts: SavedState,
    /// The frame replaces the affinity entries.
    pub with_affinity: bool,
}

/// A decoded journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    /// Its frames, oldest first.
    pub frames: Vec<Frame>,
    /// Bytes of a last frame cut short (a crash or power loss during its
    /// append), dropped.
    pub torn_bytes: usize,
}

/// Why a journal does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// It extends another state file (a compaction replaced the state
    /// file and stopped before it replaced the journal): the state file
    /// alone is current.
    #[error("the journal extends the state file saved at {journal} ns, not this one (saved at {base} ns)")]
    OtherBase {
        /// The state file's save time.
        base: u64,
        /// The journal's.
        journal: u64,
    },
    /// Corrupt or of an unknown format: nothing of it, nor of the state
    /// file it extends, may be trusted.
    #[error("corrupt journal: {0}")]
    Corrupt(String),
}

/// Decodes a journal that should extend the state file saved at
/// `base_saved_at`. A last frame cut short (followed by nothing but
/// zeros) is dropped (counted in [`Journal::torn_bytes`]); a bad frame
/// followed by more data is corruption.
///
/// # Errors
/// [`JournalError`].
pub fn decode_journal(data: &[u8], base_saved_at: u64) -> Result<Journal, JournalError> {
    let corrupt = JournalError::Corrupt;
    if data.len() < JOURNAL_HEADER || &data[..8] != JOURNAL_MAGIC {
        return Err(corrupt("bad magic or no header".into()));
    }
    let (head, crc) = data[..JOURNAL_HEADER].split_at(JOURNAL_HEADER - 4);
    if crc32fast::hash(head).to_le_bytes() != crc {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let mut r = Rd(&head[8..]);
    let version = r.u32();
    if version != JOURNAL_VERSION {
        return Err(corrupt(format!(
            "format version {version}; this sluiced reads version {JOURNAL_VERSION}"
        )));
    }
    let base = r.u64();
    if base != base_saved_at {
        return Err(JournalError::OtherBase {
            base: base_saved_at,
            journal: base,
        });
    }
    let mut out = Journal::default();
    let mut at = JOURNAL_HEADER;
    while at < data.len() {
        let rest = &data[at..];
        let torn = |out: &mut Journal| out.torn_bytes = rest.len();
        if rest.len() < FRAME_HEADER {
            torn(&mut out);
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap_or([0xff; 4])) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or([0; 4]));
        let end = FRAME_HEADER.saturating_add(len);
        if end > rest.len() {
            // Only the last append can be cut short.
            torn(&mut out);
            break;
        }
        let payload = &rest[FRAME_HEADER..end];
        let frame = if len >= 8 && crc32fast::hash(payload) == crc {
            decode_frame(payload)
        } else {
            Err("checksum mismatch".to_string())
        };
        match frame {
            Ok(f) => out.frames.push(f),
            // The last append, cut short (possibly followed by the zeros
            // of a size that reached the disk before the data).
            Err(_) if rest[end..].iter().all(|&b| b == 0) => {
                torn(&mut out);
                break;
            }
            Err(why) => {
                return Err(corrupt(format!(
                    "frame {} at byte {at}: {why}",
                    out.frames.len()
                )))
            }
        }
        at += end;
    }
    Ok(out)
}

fn decode_frame(payload: &[u8]) -> Result<Frame, String> {
    let mut r = Rd(payload);
    let flags = r.u32();
    let n = r.u32() as usize;
    let keys_len = n.checked_mul(16).ok_or("too many deleted keys")?;
    if r.0.len() < keys_len {
        return Err(format!("{n} deleted keys do not fit"));
    }
    let deleted = (0..n).map(|_| r.key()).collect();
    let upserts = decode(r.0).map_err(|e| e.to_string())?;
    Ok(Frame {
        deleted,
        upserts,
        with_affinity: flags & FRAME_AFFINITY != 0,
    })
}

/// The state a state file and its journal hold together, as of
/// `now_unix_ns`: the journal's frames applied in order to the file's
/// connections (an upsert replaces the connection of its original key, a
/// deletion removes it; the last frame with affinity entries replaces
/// them), every lifetime made relative to `now_unix_ns` (each was saved
/// relative to its own save time) and those past dropped.
pub fn merge(base: SavedState, journal: &Journal, now_unix_ns: u64) -> SavedState {
    // Deadlines in Unix ns while merging.
    let deadline = |saved_at: u64, remaining: Nanos| saved_at.saturating_add(remaining);
    let mut conns = base.conns;
    for c in &mut conns {
        c.remaining = deadline(base.saved_at_unix_ns, c.remaining);
    }
    let mut affinity = base.affinity;
    for a in &mut affinity {
        a.remaining = deadline(base.saved_at_unix_ns, a.remaining);
    }
    if !journal.frames.is_empty() {
        let mut index: HashMap<ConnKey, usize> = conns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.keys[0], i))
            .collect();
        let mut gone = vec![false; conns.len()];
        for f in &journal.frames {
            for k in &f.deleted {
                if let Some(i) = index.remove(k) {
                    gone[i] = true;
                }
            }
            let at = f.upserts.saved_at_unix_ns;
            for c in &f.upserts.conns {
                let mut c = c.clone();
                c.remaining = deadline(at, c.remaining);
                match index.get(&c.keys[0]) {
                    Some(&i) => conns[i] = c,
                    None => {
                        index.insert(c.keys[0], conns.len());
                        conns.push(c);
                        gone.push(false);
                    }
                }
            }
            if f.with_affinity {
                affinity = f.upserts.affinity.clone();
                for a in &mut affinity {
                    a.remaining = deadline(at, a.remaining);
                }
            }
        }
        let mut i = 0;
        conns.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
    }
    conns.retain_mut(|c| {
        c.remaining = c.remaining.saturating_sub(now_unix_ns);
        c.remaining > 0
    });
    affinity.retain_mut(|a| {
        a.remaining = a.remaining.saturating_sub(now_unix_ns);
        a.remaining > 0
    });
    SavedState {
        saved_at_unix_ns: now_unix_ns,
        conns,
        affinity,
        macs: base.macs,
    }
}

fn put_key(out: &mut Vec<u8>, k: &ConnKey) {
    out.extend_from_slice(&k.zone.to_le_bytes());
    out.push(k.proto);
    out.push(0);
    out.extend_from_slice(&k.tuple.src.to_le_bytes());
    out.extend_from_slice(&k.tuple.dst.to_le_bytes());
    out.extend_from_slice(&k.tuple.sport.to_le_bytes());
    out.extend_from_slice(&k.tuple.dport.to_le_bytes());
}

/// Encodes `s` in format `version` (1 to [`VERSION`]; the older ones
/// exist to test upgrades: version 1 drops byte counters and labels,
/// versions 1 and 2 drop the affinity entries).
pub fn encode_version(s: &SavedState, version: u32) -> Vec<u8> {
    let record = if version == 1 { RECORD_V1 } else { RECORD_V2 };
    let mut names: Vec<&str> = s
        .conns
        .iter()
        .filter_map(|c| c.lb.as_ref().map(|l| l.0.as_str()))
        .chain(
            s.affinity
                .iter()
                .filter(|_| version >= 3)
                .map(|a| a.service.as_str()),
        )
        .collect();
    names.sort_unstable();
    names.dedup();
    let joined = names.join("\0");
    let mut out = Vec::with_capacity(HEADER + joined.len() + s.conns.len() * record + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(record as u32).to_le_bytes());
    out.extend_from_slice(&s.saved_at_unix_ns.to_le_bytes());
    out.extend_from_slice(&(s.conns.len() as u64).to_le_bytes());
    out.extend_from_slice(&(joined.len() as u32).to_le_bytes());
    out.extend_from_slice(joined.as_bytes());
    for c in &s.conns {
        let start = out.len();
        put_key(&mut out, &c.keys[0]);
        put_key(&mut out, &c.keys[1]);
        let (kind, tcp) = match c.proto {
            SavedProto::Other => (0u8, TcpSnapshot::default()),
            SavedProto::Icmp => (1, TcpSnapshot::default()),
            SavedProto::Tcp(t) => (2, t),
        };
        out.extend_from_slice(&[c.nat, kind, u8::from(c.replied), tcp.state]);
        out.push(u8::from(tcp.liberal));
        out.push(0);
        for side in &tcp.sides {
            out.extend_from_slice(&side.end.to_le_bytes());
            out.extend_from_slice(&side.maxend.to_le_bytes());
            out.extend_from_slice(&side.maxwin.to_le_bytes());
            out.push(side.bits);
        }
        out.extend_from_slice(&c.remaining.to_le_bytes());
        for p in c.packets {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out.extend_from_slice(&c.mark.to_le_bytes());
        let (idx, ip, port) = match &c.lb {
            Some((name, ip, port)) => (
                names
                    .binary_search(&name.as_str())
                    .map_or(u32::MAX, |i| i as u32),
                u32::from(*ip),
                *port,
            ),
            None => (u32::MAX, 0, 0),
        };
        out.extend_from_slice(&idx.to_le_bytes());
        out.extend_from_slice(&ip.to_le_bytes());
        out.extend_from_slice(&port.to_le_bytes());
        // 4 bytes of padding keep version 1 records at their size.
        out.extend_from_slice(&[0; 4]);
        if version >= 2 {
            for b in c.bytes {
                out.extend_from_slice(&b.to_le_bytes());
            }
            out.extend_from_slice(&c.label.to_le_bytes());
        }
        debug_assert_eq!(out.len() - start, record);
    }
    if version >= 3 {
        out.extend_from_slice(&(s.affinity.len() as u64).to_le_bytes());
        for a in &s.affinity {
            let idx = names
                .binary_search(&a.service.as_str())
                .map_or(u32::MAX, |i| i as u32);
            out.extend_from_slice(&idx.to_le_bytes());
            out.extend_from_slice(&u32::from(a.client).to_le_bytes());
            out.extend_from_slice(&u32::from(a.endpoint.0).to_le_bytes());
            out.extend_from_slice(&a.endpoint.1.to_le_bytes());
            out.extend_from_slice(&[0; 2]);
            out.extend_from_slice(&a.remaining.to_le_bytes());
        }
    }
    if version >= 4 {
        out.extend_from_slice(&(s.macs.len() as u64).to_le_bytes());
        for m in &s.macs {
            out.extend_from_slice(&m.mac);
            out.extend_from_slice(&m.vlan.to_le_bytes());
            out.extend_from_slice(&m.port.to_le_bytes());
            out.extend_from_slice(&[0; 6]);
            out.extend_from_slice(&m.idle.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Encodes `s` in the current format.
pub fn encode(s: &SavedState) -> Vec<u8> {
    encode_version(s, VERSION)
}

/// A little-endian reader over a checked slice.
struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0; N];
        let n = N.min(self.0.len());
        a[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        a
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }
    fn key(&mut self) -> ConnKey {
        let zone = self.u16();
        let proto = self.u8();
        self.u8();
        ConnKey {
            zone,
            proto,
            tuple: Tuple {
                src: self.u32(),
                dst: self.u32(),
                sport: self.u16(),
                dport: self.u16(),
            },
        }
    }
}

/// Where the sections of a checked state file are (see [`layout`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) version: u32,
    pub(super) record: usize,
    pub(super) saved_at_unix_ns: u64,
    pub(super) count: usize,
    /// The Service names, as a range of the file.
    pub(super) names: (usize, usize),
    /// Offset of the first record.
    pub(super) records: usize,
    pub(super) affinity_count: usize,
    /// Offset of the first affinity entry.
    pub(super) affinity: usize,
    pub(super) mac_count: usize,
    /// Offset of the first MAC entry.
    pub(super) macs: usize,
}

/// Checks a state file's magic, version, sizes and checksum and says where
/// its sections are; nothing in it is decoded yet.
///
/// # Errors
/// [`StateError`]: what is wrong; nothing of the file should be used.
pub(super) fn layout(data: &[u8]) -> Result<Layout, StateError> {
    if data.len() < HEADER + 4 || &data[..8] != MAGIC {
        return Err(StateError::Magic);
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let mut r = Rd(&body[8..]);
    let version = r.u32();
    let record = r.u32() as usize;
    let want = match version {
        1 => RECORD_V1,
        2 => RECORD_V2,
        3 => RECORD_V3,
        4 => RECORD_V4,
        v => return Err(StateError::Version(v)),
    };
    if record != want {
        return Err(StateError::Length(format!(
            "version {version} records are {want} bytes, the header says {record}"
        )));
    }
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(StateError::Checksum);
    }
    let saved_at_unix_ns = r.u64();
    let count = r.u64();
    let names_len = r.u32() as usize;
    let records_end = (HEADER as u64)
        .checked_add(names_len as u64)
        .and_then(|n| n.checked_add(count.checked_mul(record as u64)?));
    // Version 3: the affinity count follows the records.
    let affinity_count = match records_end {
        Some(end) if version >= 3 => {
            let at = usize::try_from(end).unwrap_or(usize::MAX);
            match body.get(at..at.saturating_add(8)) {
                Some(b) => u64::from_le_bytes(b.try_into().unwrap_or([0xff; 8])),
                None => return Err(StateError::Length("the affinity section is missing".into())),
            }
        }
        _ => 0,
    };
    let affinity_end = if version >= 3 {
        records_end.and_then(|n| {
            n.checked_add(8)?
                .checked_add(affinity_count.checked_mul(AFFINITY_RECORD as u64)?)
        })
    } else {
        records_end
    };
    // Version 4: the learned MACs' count follows the affinity entries.
    let mac_count = match affinity_end {
        Some(end) if version >= 4 => {
            let at = usize::try_from(end).unwrap_or(usize::MAX);
            match body.get(at..at.saturating_add(8)) {
                Some(b) => u64::from_le_bytes(b.try_into().unwrap_or([0xff; 8])),
                None => return Err(StateError::Length("the MAC section is missing".into())),
            }
        }
        _ => 0,
    };
    let expect = if version >= 4 {
        affinity_end.and_then(|n| {
            n.checked_add(8)?
                .checked_add(mac_count.checked_mul(MAC_RECORD as u64)?)
        })
    } else {
        affinity_end
    };
    if expect != Some(body.len() as u64) {
        return Err(StateError::Length(format!(
            "{count} records and {names_len} bytes of names do not make {} bytes",
            body.len()
        )));
    }
    // Every offset below is within `body` (the sum above matched its
    // length), so these conversions cannot truncate.
    let records = HEADER + names_len;
    let records_end = records + count as usize * record;
    let affinity = records_end + if version >= 3 { 8 } else { 0 };
    let affinity_end = affinity + affinity_count as usize * AFFINITY_RECORD;
    Ok(Layout {
        version,
        record,
        saved_at_unix_ns,
        count: count as usize,
        names: (HEADER, HEADER + names_len),
        records,
        affinity_count: affinity_count as usize,
        affinity,
        mac_count: mac_count as usize,
        macs: affinity_end + if version >= 4 { 8 } else { 0 },
    })
}

/// The Service names of a checked file.
pub(super) fn names_of<'a>(data: &'a [u8], l: &Layout) -> Result<Vec<&'a str>, StateError> {
    let raw = &data[l.names.0..l.names.1];
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    Ok(std::str::from_utf8(raw)
        .map_err(|_| StateError::Length("the Service names are not UTF-8".into()))?
        .split('\0')
        .collect())
}

/// One connection record as read, its Service named by index.
#[derive(Debug, Clone)]
pub(super) struct RawConn {
    pub(super) keys: [ConnKey; 2],
    pub(super) nat: u8,
    pub(super) proto: SavedProto,
    pub(super) replied: bool,
    pub(super) remaining: Nanos,
    pub(super) packets: [u64; 2],
    pub(super) bytes: [u64; 2],
    pub(super) mark: u32,
    pub(super) label: u128,
    /// Service name index, endpoint address and port.
    pub(super) lb: Option<(u32, Ipv4Addr, u16)>,
}

/// The two keys of record `index` of a checked file (no other check).
pub(super) fn keys_at(data: &[u8], l: &Layout, index: usize) -> [ConnKey; 2] {
    let at = l.records + index * l.record;
    let mut r = Rd(&data[at..at + 32]);
    [r.key(), r.key()]
}

/// Reads and checks record `index` of a checked file with `names` Service
/// names.
pub(super) fn record_at(
    data: &[u8],
    l: &Layout,
    names: usize,
    index: usize,
) -> Result<RawConn, StateError> {
    let at = l.records + index * l.record;
    let mut r = Rd(&data[at..at + l.record]);
    let bad = |why: String| StateError::Record { index, why };
    let keys = [r.key(), r.key()];
    let [nat, kind, replied, tcp_state] = r.take::<4>();
    let liberal = r.u8() != 0;
    r.u8();
    let mut sides = [SideSnapshot::default(); 2];
    for s in &mut sides {
        *s = SideSnapshot {
            end: r.u32(),
            maxend: r.u32(),
            maxwin: r.u32(),
            bits: r.u8(),
        };
    }
    let remaining = r.u64();
    let packets = [r.u64(), r.u64()];
    let mark = r.u32();
    let (idx, ip, port) = (r.u32(), r.u32(), r.u16());
    r.take::<4>();
    let (bytes, label) = if l.version >= 2 {
        ([r.u64(), r.u64()], r.u128())
    } else {
        ([0, 0], 0)
    };
    let proto = match kind {
        0 => SavedProto::Other,
        1 => SavedProto::Icmp,
        2 => {
            let t = TcpSnapshot {
                state: tcp_state,
                sides,
                liberal,
            };
            if TcpConn::restore(&t).is_none() {
                return Err(bad(format!("TCP state {tcp_state} is not one sluiced has")));
            }
            SavedProto::Tcp(t)
        }
        k => return Err(bad(format!("protocol kind {k} is not one sluiced has"))),
    };
    if keys[0].zone != keys[1].zone || keys[0].proto != keys[1].proto {
        return Err(bad("its two keys differ in zone or protocol".into()));
    }
    let lb = match idx {
        u32::MAX => None,
        i if (i as usize) < names => Some((i, Ipv4Addr::from(ip), port)),
        i => return Err(bad(format!("Service name {i} does not exist"))),
    };
    Ok(RawConn {
        keys,
        nat,
        proto,
        replied: replied != 0,
        remaining,
        packets,
        bytes,
        mark,
        label,
        lb,
    })
}

/// The affinity entries of a checked file.
pub(super) fn affinity_of(
    data: &[u8],
    l: &Layout,
    names: &[&str],
) -> Result<Vec<AffinityEntry>, StateError> {
    let mut r = Rd(&data[l.affinity..l.affinity + l.affinity_count * AFFINITY_RECORD]);
    let mut affinity = Vec::with_capacity(l.affinity_count);
    for index in 0..l.affinity_count {
        let (idx, client, ip, port) = (r.u32(), r.u32(), r.u32(), r.u16());
        r.u16();
        let remaining = r.u64();
        let service = names
            .get(idx as usize)
            .ok_or_else(|| StateError::Record {
                index: l.count + index,
                why: format!("affinity entry {index}: Service name {idx} does not exist"),
            })?
            .to_string();
        affinity.push(AffinityEntry {
            service,
            client: Ipv4Addr::from(client),
            endpoint: (Ipv4Addr::from(ip), port),
            remaining,
        });
    }
    Ok(affinity)
}

/// The learned MAC entries of a checked file.
pub(super) fn macs_of(data: &[u8], l: &Layout) -> Vec<SavedMac> {
    let mut r = Rd(&data[l.macs..l.macs + l.mac_count * MAC_RECORD]);
    let mut macs = Vec::with_capacity(l.mac_count);
    for _ in 0..l.mac_count {
        let mac = r.take::<6>();
        let (vlan, port) = (r.u16(), r.u16());
        r.take::<6>();
        macs.push(SavedMac {
            mac,
            vlan,
            port,
            idle: r.u64(),
        });
    }
    macs
}

/// Checks a state file's header, sizes and checksum (what [`decode`]
/// checks before the records).
///
/// # Errors
/// [`StateError`]: what is wrong.
pub fn check(data: &[u8]) -> Result<(), StateError> {
    layout(data).map(|_| ())
}

/// Decodes a state file (any version this build reads).
///
/// # Errors
/// [`StateError`]: what is wrong; nothing of the file should be used.
pub fn decode(data: &[u8]) -> Result<SavedState, StateError> {
    let l = layout(data)?;
    let names = names_of(data, &l)?;
    let mut conns = Vec::with_capacity(l.count);
    for index in 0..l.count {
        let c = record_at(data, &l, names.len(), index)?;
        conns.push(SavedConn {
            keys: c.keys,
            nat: c.nat,
            proto: c.proto,
            replied: c.replied,
            remaining: c.remaining,
            packets: c.packets,
            bytes: c.bytes,
            mark: c.mark,
            label: c.label,
            lb: c
                .lb
                .map(|(i, ip, port)| (names[i as usize].to_string(), ip, port)),
        });
    }
    Ok(SavedState {
        saved_at_unix_ns: l.saved_at_unix_ns,
        conns,
        affinity: affinity_of(data, &l, &names)?,
        macs: macs_of(data, &l),
    })
}

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Connections put back.
    pub restored: usize,
    /// Skipped: a key already taken, or the table full.
    pub skipped: usize,
}

impl Conntrack {
    /// Puts saved connections back at time `now` (each expires after the
    /// lifetime it had left). A connection whose key is taken, or that the
    /// table has no room for, is skipped.
    pub fn restore(&self, s: &SavedState, now: Nanos) -> Restored {
        let mut out = Restored::default();
        for c in &s.conns {
            let lb = c.lb.as_ref().map(|(name, ip, port)| {
                LbRef::new(
                    Arc::from(name.as_str()),
                    (*ip, *port),
                    Arc::new(EndpointStats::default()),
                )
            });
            let fields = RestoreFields {
                keys: c.keys,
                nat: c.nat,
                proto: c.proto,
                replied: c.replied,
                expires: now.saturating_add(c.remaining),
                packets: c.packets,
                bytes: c.bytes,
                mark: c.mark,
                label: c.label,
            };
            if self.restore_one(now, &fields, lb) {
                out.restored += 1;
            } else {
                out.skipped += 1;
            }
        }
        out
    }

    /// Puts one saved connection back (see [`Conntrack::restore`]); false
    /// when it was skipped (its key taken, no room, an impossible TCP
    /// state).
    pub(super) fn restore_one(&self, now: Nanos, c: &RestoreFields, lb: Option<LbRef>) -> bool {
        let proto = match c.proto {
            SavedProto::Other => ProtoState::Other,
            SavedProto::Icmp => ProtoState::Icmp,
            // Window checks are skipped from now on (as after a loose
            // pickup): the save may be up to an interval older than the
            // connection's last segment, whose sequence numbers are
            // then beyond the saved windows.
            SavedProto::Tcp(t) => match TcpConn::restore(&TcpSnapshot { liberal: true, ..t }) {
                Some(t) => ProtoState::Tcp(t),
                None => return false,
            },
        };
        let conn = Arc::new(Conn {
            keys: c.keys,
            nat: c.nat,
            lb,
            proto,
            dead: AtomicBool::new(false),
            replied: AtomicBool::new(c.replied),
            expires: AtomicU64::new(c.expires),
            packets: c.packets.map(AtomicU64::new),
            bytes: c.bytes.map(AtomicU64::new),
            marks: Marks::new(CtMarks {
                mark: c.mark,
                label: c.label,
            }),
            lock: Mutex::new(()),
        });
        if self
            .make_room(now, key_hash(&c.keys[0]), &c.keys[0])
            .is_err()
        {
            return false;
        }
        if self.insert_restored(now, c.keys[0], &conn, 0).is_err() {
            return false;
        }
        if c.keys[1] != c.keys[0] && self.insert_restored(now, c.keys[1], &conn, 1).is_err() {
            self.remove_key(&c.keys[0], &conn);
            return false;
        }
        self.count_in(&conn, 1);
        self.published(&conn);
        true
    }
}

/// What [`Conntrack::restore_one`] builds a connection from (its Service
/// apart).
#[derive(Debug, Clone, Copy)]
pub(super) struct RestoreFields {
    pub(super) keys: [ConnKey; 2],
    pub(super) nat: u8,
    pub(super) proto: SavedProto,
    pub(super) replied: bool,
    /// Expiry on this process's clock.
    pub(super) expires: Nanos,
    pub(super) packets: [u64; 2],
    pub(super) bytes: [u64; 2],
    pub(super) mark: u32,
    pub(super) label: u128,
}

/// A saved UDP connection `src:sport -> 10.1.0.1:53` in zone 1, replied,
/// `remaining` ns to live, one packet each way: the synthetic connections
/// the restore tests and the restore-phase figure build by the thousand.
#[cfg(test)]
pub(crate) fn saved_udp(src: u32, sport: u16, remaining: u64) -> SavedConn {
    let t = Tuple {
        src,
        dst: 0x0a01_0001,
        sport,
        dport: 53,
    };
    let r = Tuple {
        src: t.dst,
        dst: t.src,
        sport: t.dport,
        dport: t.sport,
    };
    let key = |tuple| ConnKey {
        zone: 1,
        proto: 17,
        tuple,
    };
    SavedConn {
        keys: [key(t), key(r)],
        nat: 0,
        proto: SavedProto::Other,
        replied: true,
        remaining,
        packets: [1, 1],
        bytes: [64, 64],
        mark: 0,
        label: 0,
        lb: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::tests::{fl, ip, seen, tcp, udp, Rig};
    use crate::conntrack::{ConnFilter, ConntrackConfig};

    const FLOWS: &str = "\
table=0,priority=10,tcp,in_port=1,nw_dst=10.96.0.10 actions=ct(commit,zone=5,nat(dst=10.1.0.5:8080),table=1)
table=0,priority=5,ip,in_port=1 actions=ct(zone=5,nat,table=1)
table=0,priority=5,ip,in_port=2 actions=ct(zone=5,nat,table=1)
table=1,priority=20,ct_state=+trk+inv actions=drop
table=1,priority=10,ct_state=+trk,in_port=1 actions=output:2
table=1,priority=10,ct_state=+trk+est+rpl,in_port=2 actions=output:1
table=1,priority=1 actions=drop
";
    const SEC: Nanos = 1_000_000_000;

    /// A DNATed TCP connection, established, mid-stream.
    fn established() -> Rig {
        let mut r = Rig::new(FLOWS, Conntrack::new(ConntrackConfig::default()));
        let (c, vip, ep) = ([10, 0, 0, 1], [10, 96, 0, 10], [10, 1, 0, 5]);
        r.expect(0, 1, tcp(c, vip, 1000, 80, 100, 0, fl::SYN, b""), 2);
        r.expect(SEC, 2, tcp(ep, c, 8080, 1000, 500, 101, fl::SYNACK, b""), 1);
        r.expect(
            2 * SEC,
            1,
            tcp(c, vip, 1000, 80, 101, 501, fl::ACK, b"hello"),
            2,
        );
        r
    }

    /// Saved, encoded, decoded and restored into a new process's table
    /// (another clock origin), the connection carries on: mid-stream
    /// segments both ways pass with the same translation, and it is still
    /// ESTABLISHED with its counters; a mid-stream segment of a connection
    /// that was never saved is still invalid.
    #[test]
    fn a_restored_connection_carries_on_with_its_nat() {
        let r = established();
        let saved = save(&r.ct, 3 * SEC);
        assert_eq!(saved.conns.len(), 1);
        let bytes = encode(&saved);
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back, saved);
        let mut n = Rig::new(FLOWS, Conntrack::new(ConntrackConfig::default()));
        let t0 = 500 * SEC;
        let done = n.ct.restore(&back, t0);
        assert_eq!(
            done,
            Restored {
                restored: 1,
                skipped: 0
            }
        );
        assert_eq!(n.ct.len(), 1);
        let dump = n.ct.dump(&ConnFilter::default(), t0);
        assert!(dump.contains("ESTABLISHED"), "{dump}");
        let (c, vip, ep) = ([10, 0, 0, 1], [10, 96, 0, 10], [10, 1, 0, 5]);
        let out = n.expect(t0, 1, tcp(c, vip, 1000, 80, 106, 501, fl::ACK, b"more"), 2);
        assert_eq!((seen(&out).dst, seen(&out).dport), (ip("10.1.0.5"), 8080));
        let out = n.expect(t0, 2, tcp(ep, c, 8080, 1000, 501, 110, fl::ACK, b"ok"), 1);
        assert_eq!((seen(&out).src, seen(&out).sport), (ip("10.96.0.10"), 80));
        n.expect_drop(
            t0,
            1,
            tcp(c, vip, 1001, 80, 5, 5, fl::ACK, b""),
            crate::drop::DropReason::FlowDrop,
        );
        // It keeps the lifetime it had left, on the new clock.
        let left = saved.conns[0].remaining;
        assert!(left > 0);
        assert_eq!(n.ct.len(), 1);
    }

    /// The change log names what a saver must look at: a new connection,
    /// a TCP transition (and the first reply), a killed one; the tracker
    /// finds from it the same changes a scan finds, and a mid-stream
    /// segment changes nothing a restore needs. An entry's lifetime is
    /// looked at again when half its saved lifetime has passed: unchanged,
    /// it is not written; refreshed by traffic, it is written again.
    #[test]
    fn the_change_log_and_due_lifetimes_find_what_a_scan_finds() {
        let mut r = Rig::new(FLOWS, Conntrack::new(ConntrackConfig::default()));
        r.ct.log_changes();
        let (c, vip, ep) = ([10, 0, 0, 1], [10, 96, 0, 10], [10, 1, 0, 5]);
        r.expect(0, 1, tcp(c, vip, 1000, 80, 100, 0, fl::SYN, b""), 2);
        let created = r.ct.take_changes().expect("the log is on");
        assert_eq!(created.len(), 1, "{created:?}");
        let mut logged = Tracker::new();
        logged.full(&r.ct, 0);
        let mut scanned = Tracker::new();
        scanned.full(&r.ct, 0);
        // The reply: a transition and the first reply, logged.
        r.expect(SEC, 2, tcp(ep, c, 8080, 1000, 500, 101, fl::SYNACK, b""), 1);
        let keys = r.ct.take_changes().expect("on");
        assert_eq!(
            keys, created,
            "the transition is logged under the original key"
        );
        let a = logged.changes_logged(&r.ct, SEC, &keys);
        let b = scanned.changes(&r.ct, SEC);
        assert_eq!((a.upserts.len(), a.examined), (1, 1), "{a:?}");
        assert_eq!(a.upserts, b.upserts);
        r.expect(
            2 * SEC,
            1,
            tcp(c, vip, 1000, 80, 101, 501, fl::ACK, b"hello"),
            2,
        );
        let keys = r.ct.take_changes().expect("on");
        let a = logged.changes_logged(&r.ct, 2 * SEC, &keys);
        let b = scanned.changes(&r.ct, 2 * SEC);
        assert_eq!(a.upserts, b.upserts, "ESTABLISHED: the same as a scan");
        // A mid-stream segment: nothing a restore needs changed.
        r.expect(
            3 * SEC,
            1,
            tcp(c, vip, 1000, 80, 106, 501, fl::ACK, b"more"),
            2,
        );
        let keys = r.ct.take_changes().expect("on");
        let a = logged.changes_logged(&r.ct, 3 * SEC, &keys);
        assert!(a.is_empty(), "{a:?}");
        // Due at half the saved lifetime: unchanged, not written.
        let left = save(&r.ct, 3 * SEC).conns[0].remaining;
        let t1 = 3 * SEC + left / 2 + SEC;
        let a = logged.changes_logged(&r.ct, t1, &[]);
        assert_eq!((a.examined, a.upserts.len()), (1, 0), "{a:?}");
        // Traffic moves its expiry on; the next check writes it again.
        r.expect(t1, 1, tcp(c, vip, 1000, 80, 110, 501, fl::ACK, b"again"), 2);
        assert!(
            r.ct.take_changes().expect("on").is_empty(),
            "a refresh is not logged"
        );
        let t2 = t1 + left / 2;
        let a = logged.changes_logged(&r.ct, t2, &[]);
        assert_eq!((a.examined, a.upserts.len()), (1, 1), "{a:?}");
        assert!(a.upserts[0].remaining > left / 4, "{a:?}");
        // Killed: logged, written as a deletion.
        assert_eq!(r.ct.flush(&ConnFilter::default()), 1);
        let keys = r.ct.take_changes().expect("on");
        let a = logged.changes_logged(&r.ct, t2, &keys);
        assert_eq!((a.deleted.len(), a.upserts.len()), (1, 0), "{a:?}");
    }

    /// One-way UDP flows committed in zone 5 (nothing ever answers them,
    /// so nothing changes them after their first packet).
    const UDP_FLOWS: &str = "\
table=0,priority=10,udp,in_port=1 actions=ct(commit,zone=5,table=1)
table=1,priority=10,ct_state=+trk,in_port=1 actions=output:2
table=1,priority=1 actions=drop
";

    /// A saver round that runs while a PMD creates a connection, between
    /// its counts and the publication of its original key (the table's
    /// test hook at that point runs the round), does not lose it: the key
    /// is recorded only once published, so that round finds nothing to do
    /// and the next one writes the connection. With the key recorded
    /// before (as `count_in` did), that round took the key, looked it up,
    /// found nothing, and no later round ever wrote the connection (a
    /// one-way flow has no later change to record).
    #[test]
    fn a_round_between_record_and_publish_does_not_lose_a_new_connection() {
        let mut r = Rig::new(UDP_FLOWS, Conntrack::new(ConntrackConfig::default()));
        r.ct.log_changes();
        let tracker = Arc::new(Mutex::new(Tracker::new()));
        assert!(super::super::lock(&*tracker)
            .full(&r.ct, 0)
            .conns
            .is_empty());
        let during: Arc<Mutex<Vec<Changes>>> = Arc::default();
        let (t, d) = (tracker.clone(), during.clone());
        *super::super::lock(&r.ct.inner.before_publish) = Some(Arc::new(move |ct: &Conntrack| {
            let keys = ct.take_changes().expect("the log is on");
            let round = super::super::lock(&*t).changes_logged(ct, SEC, &keys);
            super::super::lock(&*d).push(round);
        }));
        r.expect(SEC, 1, udp([10, 0, 0, 1], [10, 0, 0, 2], 5000, 53, b"q"), 2);
        *super::super::lock(&r.ct.inner.before_publish) = None;
        let during = std::mem::take(&mut *super::super::lock(&*during));
        assert_eq!(during.len(), 1, "the hook ran once: {during:?}");
        assert!(during[0].is_empty(), "{:?}", during[0]);
        let keys = r.ct.take_changes().expect("on");
        let mut tracker = super::super::lock(&*tracker);
        let next = tracker.changes_logged(&r.ct, 2 * SEC, &keys);
        assert_eq!(
            (next.upserts.len(), next.deleted.len()),
            (1, 0),
            "the round after the creation writes it: {next:?}"
        );
        assert_eq!(next.upserts[0].keys[0].tuple.sport, 5000);
        // What the rounds wrote is what a scan finds.
        assert!(tracker.changes(&r.ct, 2 * SEC).is_empty());
    }

    /// A part of the change log that fills up makes the next take give up
    /// (the round scans), also when the overflow flag is not (yet) set:
    /// only the taker pops, so a part that overflowed is still full when
    /// the take reaches it. A switch on (the scan's start) empties it and
    /// the log carries on.
    #[test]
    fn a_full_change_log_part_makes_the_round_scan() {
        use super::super::table::CHANGE_LOG_MAX;
        let ct = Conntrack::new(ConntrackConfig::default());
        assert_eq!(ct.take_changes(), None, "off");
        ct.log_changes();
        assert!(ct.inner.changed.take_fresh(), "switched on");
        assert!(!ct.inner.changed.take_fresh(), "once");
        let key = |i: u32| ConnKey {
            zone: 0,
            proto: 17,
            tuple: super::super::nat::Tuple {
                src: i,
                dst: 1,
                sport: 1,
                dport: 1,
            },
        };
        // Keys of one part, up to its capacity (no push fails).
        let part = |k: &ConnKey| key_hash(k) % 64;
        let p0 = part(&key(0));
        let same: Vec<ConnKey> = (0..)
            .map(key)
            .filter(|k| part(k) == p0)
            .take(CHANGE_LOG_MAX / 64)
            .collect();
        for k in &same[..10] {
            ct.inner.changed.record(k);
        }
        assert_eq!(ct.take_changes().map(|v| v.len()), Some(10));
        for k in &same {
            ct.inner.changed.record(k);
        }
        assert!(!ct
            .inner
            .changed
            .overflowed
            .load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(ct.take_changes(), None, "a full part: scan");
        // Past it: the flag.
        for k in &same {
            ct.inner.changed.record(k);
        }
        ct.inner.changed.record(&same[0]);
        assert!(ct
            .inner
            .changed
            .overflowed
            .load(std::sync::atomic::Ordering::SeqCst));
        ct.log_changes();
        assert!(!ct.inner.changed.take_fresh(), "it stayed on");
        assert_eq!(ct.take_changes(), Some(Vec::new()), "emptied, on");
        ct.inner.changed.record(&same[1]);
        assert_eq!(ct.take_changes(), Some(vec![same[1]]));
        ct.stop_logging_changes();
        ct.inner.changed.record(&same[2]);
        assert_eq!(ct.take_changes(), None, "off");
        ct.log_changes();
        assert!(ct.inner.changed.take_fresh(), "on again");
        assert_eq!(ct.take_changes(), Some(Vec::new()));
    }

    #[test]
    fn corrupt_truncated_and_unknown_files_are_refused() {
        let bytes = encode(&save(&established().ct, 3 * SEC));
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 0x40;
        assert_eq!(decode(&flipped), Err(StateError::Checksum));
        assert_eq!(decode(&bytes[..bytes.len() - 7]), Err(StateError::Checksum));
        assert_eq!(
            decode(b"not a state file at all, no"),
            Err(StateError::Magic)
        );
        assert_eq!(decode(&bytes[..10]), Err(StateError::Magic));
        let mut v9 = bytes.clone();
        v9[8..12].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(decode(&v9), Err(StateError::Version(9)));
        // A valid checksum over an impossible value.
        let mut bad = bytes[..bytes.len() - 4].to_vec();
        // The first record's protocol kind: after the names and both keys
        // and the NAT byte.
        let names_len = u32::from_le_bytes(bad[32..36].try_into().unwrap()) as usize;
        bad[HEADER + names_len + 33] = 7;
        let crc = crc32fast::hash(&bad);
        bad.extend_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(decode(&bad), Err(StateError::Record { index: 0, .. })),
            "{:?}",
            decode(&bad)
        );
    }

    /// A file in the previous format (version 1: no byte counters, no
    /// label) is read by this build: an upgrade keeps the connections.
    #[test]
    fn version_1_files_are_read() {
        let saved = save(&established().ct, 3 * SEC);
        let v1 = encode_version(&saved, 1);
        assert_eq!(
            v1.len(),
            HEADER
                + 4
                + RECORD_V1 * saved.conns.len()
                + u32::from_le_bytes(v1[32..36].try_into().unwrap()) as usize
        );
        let back = decode(&v1).expect("version 1 decodes");
        assert_eq!(back.conns[0].keys, saved.conns[0].keys);
        assert_eq!(back.conns[0].proto, saved.conns[0].proto);
        assert_eq!(back.conns[0].bytes, [0, 0]);
        let n = Conntrack::new(ConntrackConfig::default());
        assert_eq!(n.restore(&back, 0).restored, 1);
    }

    /// Version 3 carries the affinity entries; a version 2 file (the
    /// previous format) still decodes, with none.
    #[test]
    fn affinity_entries_round_trip_and_version_2_is_read() {
        let mut saved = save(&established().ct, 3 * SEC);
        saved.affinity = vec![AffinityEntry {
            service: "default/web:http".into(),
            client: Ipv4Addr::new(10, 0, 0, 1),
            endpoint: (Ipv4Addr::new(10, 1, 0, 5), 8080),
            remaining: 9 * SEC,
        }];
        let back = decode(&encode(&saved)).expect("version 3 decodes");
        assert_eq!(back, saved);
        let v2 = decode(&encode_version(&saved, 2)).expect("version 2 decodes");
        assert_eq!(v2.conns, saved.conns);
        assert!(v2.affinity.is_empty());
        // A truncated affinity section is refused, not half read.
        let bytes = encode(&saved);
        let mut cut = bytes[..bytes.len() - 4 - AFFINITY_RECORD].to_vec();
        let crc = crc32fast::hash(&cut);
        cut.extend_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(decode(&cut), Err(StateError::Length(_))),
            "{:?}",
            decode(&cut)
        );
    }

    /// `saved` (one DNATed connection 10.0.0.1:1000 → 10.96.0.10:80, as
    /// the fixtures hold) restores into a fresh table, and the client's
    /// next segment is still sent to the endpoint 10.1.0.5:8080.
    fn restores_and_carries_on_with_its_nat(saved: &SavedState) {
        let mut n = Rig::new(FLOWS, Conntrack::new(ConntrackConfig::default()));
        let t0 = 100 * SEC;
        assert_eq!(n.ct.restore(saved, t0).restored, 1);
        let out = n.expect(
            t0,
            1,
            tcp(
                [10, 0, 0, 1],
                [10, 96, 0, 10],
                1000,
                80,
                106,
                501,
                fl::ACK,
                b"more",
            ),
            2,
        );
        assert_eq!((seen(&out).dst, seen(&out).dport), (ip("10.1.0.5"), 8080));
    }

    /// The committed version-2 file (written by the previous format's
    /// encoder, what a sluiced of the previous release hands over or
    /// leaves behind) decodes in this build and restores a connection that
    /// carries on with its NAT.
    #[test]
    fn the_committed_version_2_fixture_is_read_and_carries_on() {
        let data = include_bytes!("../../tests/fixtures/conntrack-v2.state");
        assert_eq!(u32::from_le_bytes(data[8..12].try_into().unwrap()), 2);
        let saved = decode(data).expect("the version 2 fixture decodes");
        assert_eq!(saved.conns.len(), 1);
        assert!(saved.affinity.is_empty());
        let c = &saved.conns[0];
        assert!(matches!(c.proto, SavedProto::Tcp(_)), "{c:?}");
        assert_ne!(c.nat, 0, "the DNAT is saved");
        restores_and_carries_on_with_its_nat(&saved);
    }

    /// A hand-over's delta: the creation log names exactly the
    /// connections created while it was on, and `save_keys` saves those
    /// (live ones, each once) and nothing of the rest of the table.
    #[test]
    fn the_creation_log_names_the_delta() {
        let mut r = established();
        assert_eq!(r.ct.take_creations(), None, "off until asked");
        r.ct.log_creations();
        let (c, vip) = ([10, 0, 0, 2], [10, 96, 0, 10]);
        r.expect(4 * SEC, 1, tcp(c, vip, 2000, 80, 7, 0, fl::SYN, b""), 2);
        // A retransmitted SYN creates nothing new.
        r.expect(4 * SEC, 1, tcp(c, vip, 2000, 80, 7, 0, fl::SYN, b""), 2);
        let keys = r.ct.take_creations().expect("the log was on");
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].tuple.src, u32::from_be_bytes(c));
        let mut dup = keys.clone();
        dup.extend_from_slice(&keys);
        let delta = save_keys(&r.ct, 5 * SEC, &dup);
        assert_eq!(delta.conns.len(), 1);
        assert_eq!(delta.conns[0].keys[0], keys[0]);
        assert_eq!(r.ct.len(), 2, "the table holds the older one too");
        // Off again: nothing is logged.
        r.expect(
            6 * SEC,
            1,
            tcp([10, 0, 0, 3], vip, 3000, 80, 7, 0, fl::SYN, b""),
            2,
        );
        assert_eq!(r.ct.take_creations(), None);
        // A key no longer in the table is skipped.
        r.ct.flush(&ConnFilter::default());
        assert!(save_keys(&r.ct, 7 * SEC, &keys).conns.is_empty());
    }

    fn macs() -> Vec<SavedMac> {
        vec![
            SavedMac {
                mac: [0x02, 0, 0, 0, 0, 1],
                vlan: 0,
                port: 1,
                idle: 3 * SEC,
            },
            SavedMac {
                mac: [0x02, 0, 0, 0, 0, 2],
                vlan: 100,
                port: 2,
                idle: 0,
            },
        ]
    }

    /// Version 4 carries the learned MACs; version 3 (the previous
    /// format) decodes with none, its affinity entries intact.
    #[test]
    fn macs_round_trip_and_version_3_is_read() {
        let mut saved = save(&established().ct, 3 * SEC);
        saved.affinity = vec![AffinityEntry {
            service: "default/web:http".into(),
            client: Ipv4Addr::new(10, 0, 0, 1),
            endpoint: (Ipv4Addr::new(10, 1, 0, 5), 8080),
            remaining: 9 * SEC,
        }];
        saved.macs = macs();
        let bytes = encode(&saved);
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 4);
        assert_eq!(decode(&bytes).expect("version 4 decodes"), saved);
        let v3 = decode(&encode_version(&saved, 3)).expect("version 3 decodes");
        assert_eq!(v3.conns, saved.conns);
        assert_eq!(v3.affinity, saved.affinity);
        assert!(v3.macs.is_empty());
        // A MAC section cut short is refused, not half read.
        let mut cut = bytes[..bytes.len() - 4 - MAC_RECORD].to_vec();
        let crc = crc32fast::hash(&cut);
        cut.extend_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(decode(&cut), Err(StateError::Length(_))),
            "{:?}",
            decode(&cut)
        );
    }

    /// The committed version-3 file (the previous release's format, with
    /// one affinity entry) decodes in this build: its connection carries
    /// on with its NAT and its affinity entry is kept.
    #[test]
    fn the_committed_version_3_fixture_is_read_and_carries_on() {
        let data = include_bytes!("../../tests/fixtures/conntrack-v3.state");
        assert_eq!(u32::from_le_bytes(data[8..12].try_into().unwrap()), 3);
        let saved = decode(data).expect("the version 3 fixture decodes");
        assert_eq!(saved.conns.len(), 1);
        assert_eq!(saved.affinity.len(), 1);
        assert_eq!(saved.affinity[0].service, "default/web:http");
        assert!(saved.macs.is_empty());
        restores_and_carries_on_with_its_nat(&saved);
    }

    /// Writes `tests/fixtures/conntrack-v3.state` (run once, by hand, when
    /// the fixture must be made again; it is committed).
    #[test]
    #[ignore]
    fn write_the_version_3_fixture() {
        let mut saved = save(&established().ct, 3 * SEC);
        saved.affinity = vec![AffinityEntry {
            service: "default/web:http".into(),
            client: Ipv4Addr::new(10, 0, 0, 1),
            endpoint: (Ipv4Addr::new(10, 1, 0, 5), 8080),
            remaining: 9 * SEC,
        }];
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/conntrack-v3.state"
            ),
            encode_version(&saved, 3),
        )
        .expect("write the fixture");
    }

    /// Writes `tests/fixtures/conntrack-v2.state` (run once, by hand,
    /// when the fixture must be made again; it is committed).
    #[test]
    #[ignore]
    fn write_the_version_2_fixture() {
        let saved = save(&established().ct, 3 * SEC);
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/conntrack-v2.state"
            ),
            encode_version(&saved, 2),
        )
        .expect("write the fixture");
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode(&data);
        }
    }
}
