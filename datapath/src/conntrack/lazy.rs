//! A crash restore that does not hold up forwarding: the saved connections
//! go back into the table in the background, and a packet whose connection
//! is not back yet puts it back itself.
//!
//! [`Pending::new`] takes the state file's bytes (and its journal, decoded)
//! and checks all of it before anything is used: magic, version, sizes and
//! checksum, then every record as [`state::decode`](super::state::decode)
//! checks it; a file that fails is refused whole (the caller discards it
//! with one log line). It then builds an index of both keys of every saved
//! connection (an open-addressing array of record numbers, 4 bytes a slot)
//! instead of decoding the records: at a million connections that is a
//! pass over the file instead of the seconds a decode and a million
//! inserts take, so the PMDs forward that much sooner.
//!
//! [`Conntrack::begin_restore`] installs it. From then on:
//! - a background thread ([`Conntrack::finish_restore`]) puts the records
//!   back in file order;
//! - a table miss ([`Conntrack::lookup`] after its lock-free find, and
//!   [`Conntrack::try_insert`] before a new connection takes a key) looks
//!   the key up in the index and, when a saved connection holds it that is
//!   not back yet, puts that one back first, so its packet finds it exactly
//!   as an eager restore would have (same NAT, same endpoint, same TCP
//!   state), and a new connection cannot take its key;
//! - whatever reads the whole table (dumps, flushes, the saver, a
//!   hand-over's snapshot) first finishes the restore on its own thread.
//!
//! Each record is put back once: a per-record state moves 0 (saved) → 1
//! (being put back) → 2 (done: back, skipped or expired) by
//! compare-and-swap; a thread that finds one at 1 waits for it (the holder
//! runs a bounded insert, no wait of its own).
//!
//! The journal's frames apply as [`state::merge`](super::state::merge)
//! applies them: a record whose original key a frame deleted or replaced is
//! left out, and the connections the frames carry are put back from
//! memory, indexed like the records. Lifetimes count from each one's save
//! time, on the Unix clock, converted to this process's clock once.
//!
//! The file's bytes are read into memory, not mapped: a file truncated
//! under a mapping would kill the PMDs with `SIGBUS`. They are freed when
//! the restore finishes.
//!
//! Cost when no restore runs: one relaxed load per table miss.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashMap;

use super::entry::ConnKey;
use super::lb::{EndpointStats, LbRef};
use super::state::{
    self, AffinityEntry, Journal, Layout, RawConn, RestoreFields, SavedMac, StateError,
};
use super::Conntrack;
use crate::time::Nanos;

/// The index's hash of a key: every field mixed in full. (Written when the
/// table's `key_hash` XORed the source port over the source address's low
/// bits, so that keys whose address and port differed by the same bits
/// collided completely: the figures' synthetic million did, in long probe
/// runs. `key_hash` now mixes every field too.)
fn index_hash(k: &ConnKey) -> u64 {
    fn mix(mut x: u64) -> u64 {
        // splitmix64's finaliser.
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ x >> 31
    }
    let a = u64::from(k.tuple.src) << 32 | u64::from(k.tuple.dst);
    let b = u64::from(k.tuple.sport) << 48
        | u64::from(k.tuple.dport) << 32
        | u64::from(k.zone) << 8
        | u64::from(k.proto);
    mix(a ^ mix(b))
}

/// A record's state: still only in the file.
const SAVED: u8 = 0;
/// Being put back by some thread.
const BUSY: u8 = 1;
/// Back in the table, skipped or expired.
const DONE: u8 = 2;

/// How many times a thread checks a record another thread is putting
/// back before it yields (then it yields between checks).
const SPINS: u32 = 64;

/// Saved connections waiting to go back into a table (see the module doc).
pub struct Pending {
    data: Vec<u8>,
    layout: Layout,
    /// The Service names, shared by the connections that name them.
    names: Vec<Arc<str>>,
    /// The connections the journal carries, with their save times.
    extra: Vec<(RawConn, u64)>,
    /// Per record, then per journal connection: [`SAVED`], [`BUSY`],
    /// [`DONE`].
    states: Box<[AtomicU8]>,
    /// Open addressing by key hash: a record number plus one (0: empty).
    index: Box<[u32]>,
    mask: usize,
    /// This process's clock minus the Unix clock, ns.
    clock_offset: i128,
    /// The next record the background pass takes.
    next: AtomicUsize,
    /// Records done.
    done: AtomicUsize,
    /// Records put back, by the background pass or by a packet.
    restored: AtomicUsize,
    /// Of those, put back by a miss (a packet or a new connection).
    faulted: AtomicUsize,
    /// Records skipped (key taken, table full).
    skipped: AtomicUsize,
    /// Records left out when their turn came: expired.
    expired: AtomicUsize,
    /// Records the journal replaced or deleted (done from the start).
    replaced: usize,
    /// Records valid at load time (not replaced or deleted by the
    /// journal, not expired then).
    live_at_load: usize,
    /// The affinity entries and learned MACs, as [`state::merge`] leaves
    /// them (lifetimes relative to the load).
    affinity: Vec<AffinityEntry>,
    macs: Vec<SavedMac>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("records", &self.states.len())
            .field("done", &self.done.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a lazy restore did, so far or in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LazyStats {
    /// Saved connections, the journal's included (those it deleted or
    /// replaced left out).
    pub saved: usize,
    /// Of those, still to be put back at load time (not expired then).
    pub live_at_load: usize,
    /// Put back.
    pub restored: usize,
    /// Of those, by a table miss before the background pass came to them.
    pub faulted: usize,
    /// Skipped: a key already taken, or the table full.
    pub skipped: usize,
    /// Expired before their turn.
    pub expired: usize,
    /// Done (all of `saved` when finished).
    pub done: usize,
}

impl Pending {
    /// Checks the state file `data` (every record) and the `journal` of
    /// it, and indexes their connections. `now_unix_ns` and `now` are the
    /// Unix clock and this process's clock at the same moment.
    ///
    /// # Errors
    /// [`StateError`]: what is wrong with the file; nothing of it may be
    /// used.
    pub fn new(
        data: Vec<u8>,
        journal: &Journal,
        now_unix_ns: u64,
        now: Nanos,
    ) -> Result<Pending, StateError> {
        let layout = state::layout(&data)?;
        let names_str = state::names_of(&data, &layout)?;
        let names: Vec<Arc<str>> = names_str.iter().map(|&n| Arc::from(n)).collect();
        let mut affinity = state::affinity_of(&data, &layout, &names_str)?;
        for a in &mut affinity {
            a.remaining = layout.saved_at_unix_ns.saturating_add(a.remaining);
        }
        let macs = state::macs_of(&data, &layout);
        // The journal, applied as `merge` applies it: per original key,
        // the last frame's word (a connection, or gone).
        let mut last: HashMap<ConnKey, Option<(RawConn, u64)>> = HashMap::new();
        let mut order: Vec<ConnKey> = Vec::new();
        let mut name_ix: HashMap<String, u32> = names_str
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i as u32))
            .collect();
        let mut names = names;
        for f in &journal.frames {
            for k in &f.deleted {
                if last.insert(*k, None).is_none() {
                    order.push(*k);
                }
            }
            let at = f.upserts.saved_at_unix_ns;
            for c in &f.upserts.conns {
                let lb = c.lb.as_ref().map(|(name, ip, port)| {
                    let i = *name_ix.entry(name.clone()).or_insert_with(|| {
                        names.push(Arc::from(name.as_str()));
                        (names.len() - 1) as u32
                    });
                    (i, *ip, *port)
                });
                let raw = RawConn {
                    keys: c.keys,
                    nat: c.nat,
                    proto: c.proto,
                    replied: c.replied,
                    remaining: c.remaining,
                    packets: c.packets,
                    bytes: c.bytes,
                    mark: c.mark,
                    label: c.label,
                    lb,
                };
                if last.insert(c.keys[0], Some((raw, at))).is_none() {
                    order.push(c.keys[0]);
                }
            }
            if f.with_affinity {
                affinity = f.upserts.affinity.clone();
                for a in &mut affinity {
                    a.remaining = at.saturating_add(a.remaining);
                }
            }
        }
        affinity.retain_mut(|a| {
            a.remaining = a.remaining.saturating_sub(now_unix_ns);
            a.remaining > 0
        });
        let extra: Vec<(RawConn, u64)> = order
            .iter()
            .filter_map(|k| last.get(k).cloned().flatten())
            .collect();
        let total = layout.count + extra.len();
        if total >= u32::MAX as usize {
            return Err(StateError::Length(format!(
                "{total} connections are more than a restore indexes"
            )));
        }
        let states: Box<[AtomicU8]> = (0..total).map(|_| AtomicU8::new(SAVED)).collect();
        // Both keys of every connection: a load of at most a half.
        let slots = (total * 4).next_power_of_two().max(16);
        let mut index = vec![0u32; slots].into_boxed_slice();
        let mask = slots - 1;
        let mut put = |k: &ConnKey, r: usize| {
            let mut i = index_hash(k) as usize & mask;
            while index[i] != 0 {
                i = (i + 1) & mask;
            }
            index[i] = r as u32 + 1;
        };
        let mut live_at_load = 0;
        let clock_offset = i128::from(now) - i128::from(now_unix_ns);
        let alive =
            |saved_at: u64, remaining: Nanos| saved_at.saturating_add(remaining) > now_unix_ns;
        // One pass: every record is checked (as `decode` checks it,
        // against the file's own names) before any is used, and indexed.
        for i in 0..layout.count {
            let c = state::record_at(&data, &layout, names_str.len(), i)?;
            if last.contains_key(&c.keys[0]) {
                // Replaced or deleted by the journal.
                states[i].store(DONE, Ordering::Relaxed);
                continue;
            }
            put(&c.keys[0], i);
            if c.keys[1] != c.keys[0] {
                put(&c.keys[1], i);
            }
            live_at_load += usize::from(alive(layout.saved_at_unix_ns, c.remaining));
        }
        for (j, (c, at)) in extra.iter().enumerate() {
            put(&c.keys[0], layout.count + j);
            if c.keys[1] != c.keys[0] {
                put(&c.keys[1], layout.count + j);
            }
            live_at_load += usize::from(alive(*at, c.remaining));
        }
        let done = states
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == DONE)
            .count();
        Ok(Pending {
            data,
            layout,
            names,
            extra,
            states,
            index,
            mask,
            clock_offset,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(done),
            replaced: done,
            restored: AtomicUsize::new(0),
            faulted: AtomicUsize::new(0),
            skipped: AtomicUsize::new(0),
            expired: AtomicUsize::new(0),
            live_at_load,
            affinity,
            macs,
        })
    }

    /// The affinity entries (lifetimes relative to the load).
    pub fn affinity(&self) -> &[AffinityEntry] {
        &self.affinity
    }

    /// The learned MAC entries.
    pub fn macs(&self) -> &[SavedMac] {
        &self.macs
    }

    /// Counts so far.
    pub fn stats(&self) -> LazyStats {
        LazyStats {
            saved: self.states.len() - self.replaced,
            live_at_load: self.live_at_load,
            restored: self.restored.load(Ordering::Relaxed),
            faulted: self.faulted.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Acquire) - self.replaced,
        }
    }

    /// True once every record is done.
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire) == self.states.len()
    }

    /// The keys of connection `r`.
    fn keys_of(&self, r: usize) -> [ConnKey; 2] {
        match r.checked_sub(self.layout.count) {
            None => state::keys_at(&self.data, &self.layout, r),
            Some(j) => self.extra[j].0.keys,
        }
    }

    /// The saved connection holding `k`, if any (the first in file order).
    fn find(&self, k: &ConnKey) -> Option<usize> {
        let mut i = index_hash(k) as usize & self.mask;
        loop {
            let r = self.index[i];
            if r == 0 {
                return None;
            }
            let r = r as usize - 1;
            if self.keys_of(r).contains(k) {
                return Some(r);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Puts connection `r` back into `ct` unless another thread does or
    /// did; returns once it is done (by whichever thread). `miss`: asked
    /// for by a table miss.
    fn take(&self, ct: &Conntrack, r: usize, now: Nanos, miss: bool) {
        let s = &self.states[r];
        match s.compare_exchange(SAVED, BUSY, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {
                self.put_back(ct, r, now, miss);
                s.store(DONE, Ordering::Release);
                self.done.fetch_add(1, Ordering::AcqRel);
            }
            Err(DONE) => {}
            Err(_) => {
                // Another thread is inserting it (a bounded insert): wait
                // so that the caller's lookup finds it.
                let mut n = 0u32;
                while s.load(Ordering::Acquire) == BUSY {
                    if n < SPINS {
                        std::hint::spin_loop();
                        n += 1;
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    fn put_back(&self, ct: &Conntrack, r: usize, now: Nanos, miss: bool) {
        let decoded;
        let (c, saved_at) = match r.checked_sub(self.layout.count) {
            None => {
                // Checked by `new`: this cannot fail; if it did, the
                // record is skipped like one whose key is taken.
                match state::record_at(&self.data, &self.layout, self.names.len(), r) {
                    Ok(c) => {
                        decoded = c;
                        (&decoded, self.layout.saved_at_unix_ns)
                    }
                    Err(_) => {
                        self.skipped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            Some(j) => (&self.extra[j].0, self.extra[j].1),
        };
        // The deadline on the Unix clock, then on this process's.
        let deadline = i128::from(saved_at.saturating_add(c.remaining)) + self.clock_offset;
        if deadline <= i128::from(now) {
            self.expired.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let expires = u64::try_from(deadline).unwrap_or(u64::MAX);
        let lb = c.lb.and_then(|(i, ip, port): (u32, Ipv4Addr, u16)| {
            Some(LbRef::new(
                self.names.get(i as usize)?.clone(),
                (ip, port),
                Arc::new(EndpointStats::default()),
            ))
        });
        let fields = RestoreFields {
            keys: c.keys,
            nat: c.nat,
            proto: c.proto,
            replied: c.replied,
            expires,
            packets: c.packets,
            bytes: c.bytes,
            mark: c.mark,
            label: c.label,
        };
        if ct.restore_one(now, &fields, lb) {
            self.restored.fetch_add(1, Ordering::Relaxed);
            if miss {
                self.faulted.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Puts back the saved connection holding `k`, if one does and it is
    /// not back yet (a table miss).
    pub(super) fn fault_in(&self, ct: &Conntrack, k: &ConnKey, now: Nanos) {
        if let Some(r) = self.find(k) {
            self.take(ct, r, now, true);
        }
    }

    /// Puts back every connection not back yet, in file order, sharing the
    /// work with other threads doing the same; returns once all are done.
    pub(super) fn run(&self, ct: &Conntrack, now: impl Fn() -> Nanos) {
        let total = self.states.len();
        let mut t = now();
        loop {
            let r = self.next.fetch_add(1, Ordering::Relaxed);
            if r >= total {
                break;
            }
            if r.is_multiple_of(1024) {
                t = now();
            }
            if self.states[r].load(Ordering::Relaxed) == SAVED {
                self.take(ct, r, t, false);
            }
        }
        // Records other threads hold: wait for them.
        let mut n = 0u32;
        while !self.finished() {
            if n < SPINS {
                std::hint::spin_loop();
                n += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
impl Pending {
    /// The background pass's next `n` records (a test's interleaving).
    fn step(&self, ct: &Conntrack, now: Nanos, n: usize) {
        for _ in 0..n {
            let r = self.next.fetch_add(1, Ordering::Relaxed);
            if r >= self.states.len() {
                return;
            }
            if self.states[r].load(Ordering::Relaxed) == SAVED {
                self.take(ct, r, now, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::nat::Tuple;
    use crate::conntrack::shard::key_hash;
    use crate::conntrack::state::{
        decode, encode, journal_frame, journal_header, merge, save, SavedConn, SavedProto,
        SavedState,
    };
    use crate::conntrack::tests::{fl, ip, seen, tcp, Rig};
    use crate::conntrack::{ConnFilter, ConntrackConfig};
    use proptest::prelude::*;

    const SEC: Nanos = 1_000_000_000;
    const FLOWS: &str = "\
table=0,priority=10,tcp,in_port=1,nw_dst=10.96.0.10 actions=ct(commit,zone=5,nat(dst=10.1.0.5:8080),table=1)
table=0,priority=5,ip,in_port=1 actions=ct(zone=5,nat,table=1)
table=0,priority=5,ip,in_port=2 actions=ct(zone=5,nat,table=1)
table=1,priority=20,ct_state=+trk+inv actions=drop
table=1,priority=10,ct_state=+trk,in_port=1 actions=output:2
table=1,priority=10,ct_state=+trk+est+rpl,in_port=2 actions=output:1
table=1,priority=1 actions=drop
";

    fn no_journal() -> Journal {
        Journal::default()
    }

    /// A DNATed TCP connection, established mid-stream, then saved: the
    /// new table's first packets of it (both directions) find it with its
    /// translation before the background pass ran, and it was put back by
    /// that miss; a mid-stream segment of a connection never saved is
    /// still invalid.
    #[test]
    fn a_packet_puts_its_saved_connection_back_first() {
        let mut r = Rig::new(FLOWS, Conntrack::new(ConntrackConfig::default()));
        let (c, vip, ep) = ([10, 0, 0, 1], [10, 96, 0, 10], [10, 1, 0, 5]);
        r.expect(0, 1, tcp(c, vip, 1000, 80, 100, 0, fl::SYN, b""), 2);
        r.expect(SEC, 2, tcp(ep, c, 8080, 1000, 500, 101, fl::SYNACK, b""), 1);
        r.expect(
            2 * SEC,
            1,
            tcp(c, vip, 1000, 80, 101, 501, fl::ACK, b"hi"),
            2,
        );
        let saved = save(&r.ct, 3 * SEC);
        let data = encode(&saved);
        let t0 = 500 * SEC;
        let p = Pending::new(data, &no_journal(), saved.saved_at_unix_ns, t0).expect("checks");
        assert_eq!(p.stats().live_at_load, 1);
        let mut n = Rig::new(FLOWS, Conntrack::new(ConntrackConfig::default()));
        n.ct.begin_restore(p);
        assert!(n.ct.is_empty());
        // The endpoint's segment first (the reply key).
        let out = n.expect(t0, 2, tcp(ep, c, 8080, 1000, 501, 103, fl::ACK, b"ok"), 1);
        assert_eq!((seen(&out).src, seen(&out).sport), (ip("10.96.0.10"), 80));
        let out = n.expect(t0, 1, tcp(c, vip, 1000, 80, 103, 503, fl::ACK, b"more"), 2);
        assert_eq!((seen(&out).dst, seen(&out).dport), (ip("10.1.0.5"), 8080));
        n.expect_drop(
            t0,
            1,
            tcp(c, vip, 1001, 80, 5, 5, fl::ACK, b""),
            crate::drop::DropReason::FlowDrop,
        );
        let s = n.ct.restore_progress().expect("under way");
        assert_eq!((s.restored, s.faulted, s.done, s.saved), (1, 1, 1, 1));
        let s = n.ct.finish_restore().expect("ends");
        assert_eq!((s.restored, s.faulted, s.skipped), (1, 1, 0));
        assert!(n.ct.restore_progress().is_none() && n.ct.finish_restore().is_none());
        let dump = n.ct.dump(&ConnFilter::default(), t0);
        assert!(dump.contains("ESTABLISHED"), "{dump}");
    }

    /// A new connection cannot take a key a saved connection not back
    /// yet holds: committing the saved connection's own original tuple
    /// finds the saved one (put back first), so a UDP packet sent to it
    /// is `+est`, as after an eager restore.
    #[test]
    fn a_commit_finds_the_saved_connection_not_a_new_one() {
        let saved = SavedState {
            saved_at_unix_ns: 1_000 * SEC,
            conns: vec![conn(1, 0, HOUR, 7)],
            ..Default::default()
        };
        let p = Pending::new(encode(&saved), &no_journal(), 1_000 * SEC, SEC).expect("checks");
        let ct = Conntrack::new(ConntrackConfig::default());
        ct.begin_restore(p);
        let fresh = Arc::new(super::super::entry::Conn::placeholder());
        let k = saved.conns[0].keys[0];
        match ct.try_insert(SEC, k, &fresh, 0) {
            Err(Some(c)) => assert_eq!(c.marks().mark, 7),
            other => panic!("the saved connection holds its key: {other:?}"),
        }
        assert_eq!(ct.restore_progress().expect("running").faulted, 1);
    }

    const HOUR: Nanos = 3600 * SEC;

    /// Keys whose address and port differ by the same bits (the figures'
    /// synthetic keys: they once shared one table hash, a million of them
    /// in a few thousand hashes) get distinct hashes from the table's
    /// `key_hash` and the index's own, and the index's probes stay short.
    #[test]
    fn keys_sharing_bits_spread() {
        let keys: Vec<ConnKey> = (0..4096u32)
            .map(|i| ConnKey {
                zone: 1,
                proto: 17,
                tuple: Tuple {
                    src: 0xac10_0000 | i,
                    dst: 0x0a01_0001,
                    sport: (i ^ 0x0400) as u16,
                    dport: 53,
                },
            })
            .collect();
        let table: std::collections::HashSet<u64> = keys.iter().map(key_hash).collect();
        assert_eq!(table.len(), keys.len(), "the table's hash spreads them too");
        let index: std::collections::HashSet<u64> = keys.iter().map(index_hash).collect();
        assert_eq!(index.len(), keys.len());
        // In the index's own array (a quarter full), no long runs.
        let mask = (keys.len() * 4).next_power_of_two() - 1;
        let slots: std::collections::HashSet<usize> =
            keys.iter().map(|k| index_hash(k) as usize & mask).collect();
        assert!(
            slots.len() * 10 > keys.len() * 8,
            "{} start slots",
            slots.len()
        );
    }

    /// Threads missing on saved keys while the background pass runs: every
    /// miss finds its connection, and each is put back once.
    #[test]
    fn concurrent_misses_and_the_background_pass_put_each_back_once() {
        let n = 20_000u32;
        let saved = SavedState {
            saved_at_unix_ns: 1_000 * SEC,
            conns: (0..n).map(|i| conn(i, (i % 2) as u8, HOUR, i)).collect(),
            ..Default::default()
        };
        let now = crate::time::clock_ns();
        let p = Pending::new(encode(&saved), &no_journal(), 1_000 * SEC, now).expect("checks");
        let ct = Conntrack::new(ConntrackConfig::default());
        ct.begin_restore(p);
        let missers: Vec<_> = (0..3u32)
            .map(|t| {
                let ct = ct.clone();
                let keys: Vec<ConnKey> = saved
                    .conns
                    .iter()
                    .rev()
                    .skip(t as usize)
                    .step_by(3)
                    .map(|c| c.keys[(t % 2) as usize])
                    .collect();
                std::thread::spawn(move || {
                    keys.iter()
                        .filter(|k| ct.lookup(now, key_hash(k), k).is_none())
                        .count()
                })
            })
            .collect();
        let s = ct.finish_restore().expect("ran");
        for m in missers {
            assert_eq!(m.join().expect("misser"), 0, "a miss found nothing");
        }
        assert_eq!((s.restored, s.skipped, s.done), (n as usize, 0, n as usize));
        assert_eq!(ct.len(), n as usize);
    }

    /// Saved connection `i` (distinct keys for distinct `i`; its reply
    /// tuple NATed to `j`'s address space when `nat`), `remaining` ns left.
    fn conn(i: u32, nat: u8, remaining: Nanos, mark: u32) -> SavedConn {
        let t = Tuple {
            src: 0x0a00_0000 | i,
            dst: 0x0a60_000a,
            sport: 1000 + (i % 7) as u16,
            dport: 80,
        };
        let r = Tuple {
            src: if nat != 0 { 0x0a01_0000 | i } else { t.dst },
            dst: t.src,
            sport: t.dport,
            dport: t.sport,
        };
        let key = |tuple| ConnKey {
            zone: 3,
            proto: 17,
            tuple,
        };
        SavedConn {
            keys: [key(t), key(r)],
            nat,
            proto: SavedProto::Other,
            replied: i.is_multiple_of(2),
            remaining,
            packets: [u64::from(i), 1],
            bytes: [64 * u64::from(i), 64],
            mark,
            label: u128::from(i) << 70,
            lb: i.is_multiple_of(3).then(|| {
                (
                    format!("svc{}", i % 5),
                    Ipv4Addr::from(0x0a01_0000 | i),
                    8080,
                )
            }),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever order misses and the background pass take the saved
        /// connections in, the table ends as an eager restore of the
        /// decoded snapshot and journal (`merge`) leaves it: same
        /// connections, translations, endpoints, marks, labels, counters
        /// and lifetimes. Expired ones are left out by both.
        #[test]
        fn any_order_of_misses_and_background_ends_as_the_eager_restore(
            base in proptest::collection::vec((0u32..2, 0u64..4, 0u32..4), 0..60),
            frames in proptest::collection::vec(
                (proptest::collection::vec(0usize..80, 0..6), proptest::collection::vec((0usize..80, 0u32..4), 0..6)),
                0..4),
            misses in proptest::collection::vec((0usize..80, 0usize..2, 0usize..5), 0..40),
        ) {
            let at = 10_000 * SEC;
            // Lifetimes: some gone by the load, the rest not.
            let life = |x: u64| [SEC, 20 * SEC, HOUR, 2 * HOUR][x as usize];
            let conns: Vec<SavedConn> = base
                .iter()
                .enumerate()
                .map(|(i, &(nat, l, mark))| conn(i as u32, nat as u8, life(l), mark))
                .collect();
            let snapshot = SavedState { saved_at_unix_ns: at, conns, ..Default::default() };
            let mut data = journal_header(at);
            let mut next_id = base.len() as u32;
            for (f, (deleted, upserts)) in frames.iter().enumerate() {
                let saved_at = at + (f as u64 + 1) * 5 * SEC;
                let deleted: Vec<ConnKey> = deleted
                    .iter()
                    .filter(|&&d| d < base.len())
                    .map(|&d| snapshot.conns[d].keys[0])
                    .collect();
                let upserts = SavedState {
                    saved_at_unix_ns: saved_at,
                    conns: upserts
                        .iter()
                        .map(|&(u, mark)| {
                            // A change of a saved connection, or a new one.
                            let id = if u < base.len() { u as u32 } else { next_id += 1; next_id };
                            conn(id, 0, HOUR, mark + 10)
                        })
                        .collect(),
                    ..Default::default()
                };
                data.extend(journal_frame(&deleted, &upserts, false));
            }
            let journal = state::decode_journal(&data, at).expect("journal decodes");
            let file = encode(&snapshot);
            let now_unix = at + 30 * SEC;
            let now = 77 * SEC;
            let eager = Conntrack::new(ConntrackConfig::default());
            let merged = merge(decode(&file).expect("decodes"), &journal, now_unix);
            eager.restore(&merged, now);
            let lazy = Conntrack::new(ConntrackConfig::default());
            let p = Pending::new(file, &journal, now_unix, now).expect("checks");
            let saved = p.stats().saved;
            lazy.begin_restore(p);
            for &(m, dir, bg) in &misses {
                // A miss of either key of a saved or a journal connection
                // (or of one never saved), between background steps.
                // Each miss finds what the eager table holds under the key.
                let k = conn(m as u32, 0, HOUR, 0).keys[dir];
                let got = lazy.lookup(now, key_hash(&k), &k).map(|s| s.conn.keys);
                let want = eager.lookup(now, key_hash(&k), &k).map(|s| s.conn.keys);
                prop_assert_eq!(got, want);
                if let Some(p) = lazy.inner.pending.load().as_ref() {
                    p.step(&lazy, now, bg);
                }
            }
            // The rest at the same time `now` (`finish_restore` reads the
            // clock), then the end.
            if let Some(p) = lazy.inner.pending.load().as_ref() {
                p.step(&lazy, now, usize::MAX);
            }
            let s = lazy.finish_restore().expect("was under way");
            prop_assert_eq!(s.done, saved);
            prop_assert_eq!(s.restored + s.skipped + s.expired, saved);
            prop_assert_eq!(s.restored, merged.conns.len());
            prop_assert_eq!(lazy.len(), eager.len());
            prop_assert_eq!(
                lazy.dump(&ConnFilter::default(), now),
                eager.dump(&ConnFilter::default(), now)
            );
        }

        /// A file with a byte changed, cut short, or made of arbitrary
        /// bytes is refused (or, when the change leaves it valid, read as
        /// any valid file): never a panic, never half used.
        #[test]
        fn damaged_files_are_refused_cleanly(
            n in 0u32..20,
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
            cut in any::<prop::sample::Index>(),
            junk in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let snapshot = SavedState {
                saved_at_unix_ns: 5 * SEC,
                conns: (0..n).map(|i| conn(i, (i % 2) as u8, HOUR, i)).collect(),
                ..Default::default()
            };
            let good = encode(&snapshot);
            let mut flipped = good.clone();
            let i = at.index(flipped.len());
            flipped[i] ^= xor;
            prop_assert!(Pending::new(flipped, &no_journal(), 5 * SEC, SEC).is_err());
            let short = good[..cut.index(good.len())].to_vec();
            prop_assert!(Pending::new(short, &no_journal(), 5 * SEC, SEC).is_err());
            // Arbitrary bytes, with and without a valid checksum.
            let mut crc = junk.clone();
            crc.extend(crc32fast::hash(&junk).to_le_bytes());
            for d in [junk, crc] {
                if let Ok(p) = Pending::new(d.clone(), &no_journal(), 5 * SEC, SEC) {
                    // Only what `decode` also accepts.
                    let s = decode(&d).expect("decode agrees");
                    let ct = Conntrack::new(ConntrackConfig::default());
                    ct.begin_restore(p);
                    let got = ct.finish_restore().expect("ran");
                    prop_assert_eq!(got.saved, s.conns.len());
                }
            }
            let p = Pending::new(good, &no_journal(), 5 * SEC, SEC).expect("the good file checks");
            prop_assert_eq!(p.stats().saved, n as usize);
        }
    }
}

/// Where a crash restore's time goes at `SLCT_PHASE_CONNS` (default 1M)
/// connections, eager (decode, merge, insert) against lazy (check and
/// index before forwarding, then the background pass): not run in CI
/// (`cargo test --release -p sluice-datapath --lib -- --ignored
/// --nocapture restore_phase_times`).
#[cfg(test)]
#[test]
#[ignore = "a timing figure (decode, merge, insert of 1M saved connections); run in release with --ignored --nocapture"]
fn restore_phase_times() {
    use super::state::{decode, encode, merge, SavedState};
    use super::ConntrackConfig;
    use std::time::Instant;
    let n: usize = std::env::var("SLCT_PHASE_CONNS")
        .ok()
        .and_then(|x| x.parse().ok())
        .unwrap_or(1_000_000);
    // As the figures' e2e test makes them.
    let conns = (0..n)
        .map(|i| {
            super::state::saved_udp(
                0xac10_0000 | (i as u32 >> 8),
                1024 + (i & 0xff) as u16,
                3_600_000_000_000,
            )
        })
        .collect();
    let unix = 1_000_000_000_000;
    let data = encode(&SavedState {
        saved_at_unix_ns: unix,
        conns,
        ..Default::default()
    });
    let cfg = ConntrackConfig {
        max_connections: n + 100_000,
        ..Default::default()
    };
    let now = crate::time::clock_ns();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let s = decode(&data).expect("decodes");
    let decode_ms = ms(t);
    let t = Instant::now();
    let s = merge(s, &Journal::default(), unix);
    let merge_ms = ms(t);
    let ct = Conntrack::new(cfg.clone());
    let t = Instant::now();
    let r = ct.restore(&s, now);
    let insert_ms = ms(t);
    assert_eq!(r.restored, n);
    drop((s, ct));
    let t = Instant::now();
    let p = Pending::new(data, &Journal::default(), unix, now).expect("checks");
    let index_ms = ms(t);
    let ct = Conntrack::new(cfg);
    ct.begin_restore(p);
    let t = Instant::now();
    let st = ct.finish_restore().expect("ran");
    let background_ms = ms(t);
    assert_eq!(st.restored, n);
    println!(
        "{n} connections: eager: decode {decode_ms:.0} ms, merge {merge_ms:.0} ms, insert {insert_ms:.0} ms (total {:.0} ms before forwarding); lazy: check and index {index_ms:.0} ms before forwarding, background {background_ms:.0} ms",
        decode_ms + merge_ms + insert_ms
    );
}
