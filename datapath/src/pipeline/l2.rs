//! L2 learning switch: the Foundation pipeline and the flow program's
//! `normal` action.
//!
//! [`MacTable`] maps (MAC, VLAN) to the port the address was last seen on.
//! Entries are learned from source addresses, age out after `aging_ns`
//! without traffic, and static entries never age and are never overwritten
//! by learning. The table is bounded: when it is full, new addresses are not
//! learned (counted by the table, [`MacTable::refused_full`], shown by
//! `dump-cache` for the flow program's `normal`, and in
//! [`L2Stats::learn_full`]) and their frames flood, which is always
//! correct, only less efficient.
//!
//! A hand-over restart carries the learned entries over
//! ([`collect_macs`] in the old process, [`import_macs`] in the new one,
//! both through the process's [`MacExchange`], which each table serves
//! from its pipeline's `maintain`): the new process does not flood to
//! relearn every host.
//!
//! One table serves every PMD ([`MacTable`] is a handle; the owner of the
//! pipelines gives each PMD a clone of one table), as OVS's bridge has one
//! MAC learning table for all its PMDs: an address learned from a frame
//! one PMD received is known to every other, so their frames to it are not
//! flooded, and an address that moves is relearned once for all. The table
//! is open addressing over a fixed array of slots (twice the capacity,
//! hashed with a per-table random seed) that readers read without a lock
//! through a per-slot sequence count (a seqlock); a slot a writer is
//! changing reads as a miss, which floods, never as a wrong port. Learning
//! an address already known on the same port (the per-packet hit path)
//! writes nothing but, at most once per refresh interval, its last-seen
//! time (one compare-and-swap). New and moved addresses, removals, expiry
//! and static entries take the table's writers' mutex (not per packet:
//! once per new address); removed entries leave tombstones, cleared by a
//! rebuild in place when they take a quarter of the slots. No allocation
//! and no lock on the hit path.
//!
//! Thread-safety: every method may be called from any thread. The
//! exchange is the other shared part: control threads post a request,
//! each PMD answers it between bursts under the exchange's mutex.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Pipeline;
use crate::drop::DropReason;
use crate::packet::{Burst, Output, PacketBuf, PortNo};
use crate::stats::Counter;
use crate::time::Nanos;

/// Default number of MAC entries (one table for all PMDs, as OVS's
/// `mac-table-size`).
pub const DEFAULT_MAC_CAPACITY: usize = 8192;
/// Default aging time: 300 s, as OVS and Linux bridges.
pub const DEFAULT_AGING_NS: u64 = 300 * 1_000_000_000;

#[inline]
fn mac_key(mac: [u8; 6], vlan: u16) -> u64 {
    let mut k = 0u64;
    for b in mac {
        k = k << 8 | b as u64;
    }
    (vlan as u64 & 0x0fff) << 48 | k
}

/// One learned MAC address, as a hand-over saves it (the conntrack state
/// file's version 4 carries them: `conntrack::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedMac {
    /// The address.
    pub mac: [u8; 6],
    /// Its VLAN (0: none).
    pub vlan: u16,
    /// The OpenFlow port it was last seen on.
    pub port: u16,
    /// Time since it was last seen, ns.
    pub idle: Nanos,
}

/// A slot's `meta` word: the seqlock count in the high 32 bits (odd while
/// a writer changes the slot), the static flag and the port below.
const SEQ_ONE: u64 = 1 << 32;
const STATIC_BIT: u64 = 1 << 16;
const PORT_MASK: u64 = 0xffff;
/// Slot keys: empty, removed (a tombstone), or a live key with bit 63 set
/// (`mac_key` uses 60 bits).
const EMPTY: u64 = 0;
const TOMB: u64 = 1;
const LIVE: u64 = 1 << 63;

/// One slot of the shared table (24 bytes). Readers take a consistent
/// copy with the seqlock in `meta`; writers hold [`Shared::writer`],
/// except that a PMD refreshing `seen` of the entry it just read does a
/// compare-and-swap on `seen` alone.
#[derive(Debug, Default)]
struct Slot {
    meta: AtomicU64,
    key: AtomicU64,
    seen: AtomicU64,
}

/// A consistent copy of a live slot.
#[derive(Debug, Clone, Copy)]
struct Hit {
    slot: usize,
    port: PortNo,
    is_static: bool,
    seen: Nanos,
}

/// What the writers' mutex guards: counts of the slots' states.
#[derive(Debug, Default)]
struct Writer {
    tombs: usize,
}

/// The table every handle of one [`MacTable`] shares.
struct Shared {
    slots: Box<[Slot]>,
    mask: usize,
    hasher: hashbrown::DefaultHashBuilder,
    capacity: usize,
    aging_ns: u64,
    /// A hit refreshes `seen` only when it is at least this old (a shared
    /// cache line written at most once per this per address, not per
    /// packet): aging is exact to within it.
    refresh_ns: u64,
    writer: Mutex<Writer>,
    /// Live entries, static and learned (changed under `writer`).
    live: AtomicUsize,
    refused_full: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("slots", &self.slots.len())
            .field("capacity", &self.capacity)
            .field("aging_ns", &self.aging_ns)
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// How many times a reader retries a slot a writer changed under it
/// before it calls the address unknown (a miss floods, which is correct).
const READ_RETRIES: usize = 4;

impl Shared {
    fn new(capacity: usize, aging_ns: u64) -> Self {
        // At most half full with learned entries; statics may add some.
        let n = (capacity.clamp(8, 1 << 24) * 2).next_power_of_two();
        Shared {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            hasher: hashbrown::DefaultHashBuilder::default(),
            capacity,
            aging_ns,
            refresh_ns: (aging_ns / 64).min(1_000_000_000),
            writer: Mutex::new(Writer::default()),
            live: AtomicUsize::new(0),
            refused_full: AtomicU64::new(0),
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        (self.hasher.hash_one(key) as usize) & self.mask
    }

    /// A consistent copy of slot `i`: (key, meta, seen), or `None` when a
    /// writer kept changing it.
    #[inline]
    fn read(&self, i: usize) -> Option<(u64, u64, u64)> {
        let s = &self.slots[i];
        for _ in 0..READ_RETRIES {
            let m1 = s.meta.load(Ordering::Acquire);
            if m1 & SEQ_ONE != 0 {
                std::hint::spin_loop();
                continue;
            }
            let k = s.key.load(Ordering::Relaxed);
            let seen = s.seen.load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if s.meta.load(Ordering::Relaxed) == m1 {
                return Some((k, m1, seen));
            }
        }
        None
    }

    /// The live entry for `key`, lock-free. `None` also when a writer
    /// was changing a slot on the way (the caller floods or takes the
    /// writers' path).
    #[inline]
    fn find(&self, key: u64) -> Option<Hit> {
        let want = key | LIVE;
        let mut i = self.home(key);
        for _ in 0..=self.mask {
            let (k, m, seen) = self.read(i)?;
            if k == want {
                return Some(Hit {
                    slot: i,
                    port: PortNo((m & PORT_MASK) as u16),
                    is_static: m & STATIC_BIT != 0,
                    seen,
                });
            }
            if k == EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes slot `i` under the seqlock (writers' mutex held).
    fn write(&self, _w: &Writer, i: usize, key: u64, port: PortNo, is_static: bool, seen: Nanos) {
        let s = &self.slots[i];
        let m = s.meta.load(Ordering::Relaxed);
        let seq = m >> 32;
        s.meta
            .store((seq + 1) << 32 | (m & 0xffff_ffff), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        s.key.store(key, Ordering::Relaxed);
        s.seen.store(seen, Ordering::Relaxed);
        let flags = if is_static { STATIC_BIT } else { 0 };
        s.meta.store(
            (seq + 2) << 32 | flags | u64::from(port.0),
            Ordering::Release,
        );
    }

    /// With the writers' mutex: the slot holding `key`, or the first free
    /// one on its probe sequence (`Err`), or `Err(None)` when the table
    /// has no free slot.
    fn probe(&self, key: u64) -> Result<usize, Option<usize>> {
        let want = key | LIVE;
        let mut free = None;
        let mut i = self.home(key);
        for _ in 0..=self.mask {
            let k = self.slots[i].key.load(Ordering::Relaxed);
            if k == want {
                return Ok(i);
            }
            if k == EMPTY {
                return Err(free.or(Some(i)));
            }
            if k == TOMB && free.is_none() {
                free = Some(i);
            }
            i = (i + 1) & self.mask;
        }
        Err(free)
    }

    fn meta_of(&self, i: usize) -> (PortNo, bool) {
        let m = self.slots[i].meta.load(Ordering::Relaxed);
        (PortNo((m & PORT_MASK) as u16), m & STATIC_BIT != 0)
    }

    /// Inserts or updates `key` (writers' mutex held). `learned`: refused
    /// when a static entry holds the key or the table is full. Returns
    /// whether the entry was written.
    fn upsert(
        &self,
        w: &mut std::sync::MutexGuard<'_, Writer>,
        key: u64,
        port: PortNo,
        is_static: bool,
        seen: Nanos,
    ) -> bool {
        match self.probe(key) {
            Ok(i) => {
                let (_, was_static) = self.meta_of(i);
                if was_static && !is_static {
                    return false;
                }
                self.write(w, i, key | LIVE, port, is_static, seen);
                true
            }
            Err(free) => {
                let live = self.live.load(Ordering::Relaxed);
                if !is_static && live >= self.capacity {
                    self.refused_full.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                // Keep a quarter of the slots empty so probes end: clear
                // the tombstones first when they are in the way (once:
                // after it there are none).
                if w.tombs > 0 && (live + w.tombs + 1) * 4 > self.slots.len() * 3 {
                    self.rebuild(w);
                    return self.upsert(w, key, port, is_static, seen);
                }
                if (live + 1) * 8 > self.slots.len() * 7 {
                    // Only statics get here (learned entries stay under
                    // half the slots).
                    return false;
                }
                let Some(i) = free else {
                    return false;
                };
                if self.slots[i].key.load(Ordering::Relaxed) == TOMB {
                    w.tombs -= 1;
                }
                self.write(w, i, key | LIVE, port, is_static, seen);
                self.live.fetch_add(1, Ordering::Relaxed);
                true
            }
        }
    }

    /// Turns slot `i` into a tombstone (writers' mutex held).
    fn remove_slot(&self, w: &mut Writer, i: usize) {
        self.write(w, i, TOMB, PortNo(0), false, 0);
        w.tombs += 1;
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    /// Removes every live entry `f` selects (writers' mutex held).
    fn remove_where(
        &self,
        w: &mut Writer,
        mut f: impl FnMut(PortNo, bool, Nanos) -> bool,
    ) -> usize {
        let mut n = 0;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.key.load(Ordering::Relaxed) & LIVE == 0 {
                continue;
            }
            let (port, is_static) = self.meta_of(i);
            if f(port, is_static, s.seen.load(Ordering::Relaxed)) {
                self.remove_slot(w, i);
                n += 1;
            }
        }
        if w.tombs * 4 > self.slots.len() {
            self.rebuild(w);
        }
        n
    }

    /// Re-inserts every live entry into a table without tombstones, in
    /// place (writers' mutex held; not per packet: it allocates). Readers
    /// meanwhile may miss an address: they flood it, which is correct.
    fn rebuild(&self, w: &mut Writer) {
        let mut keep = Vec::with_capacity(self.live.load(Ordering::Relaxed));
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            let k = s.key.load(Ordering::Relaxed);
            if k & LIVE != 0 {
                let (port, is_static) = self.meta_of(i);
                keep.push((k, port, is_static, s.seen.load(Ordering::Relaxed)));
            }
            if k != EMPTY {
                self.write(w, i, EMPTY, PortNo(0), false, 0);
            }
        }
        w.tombs = 0;
        for (k, port, is_static, seen) in keep {
            if let Err(Some(i)) = self.probe(k & !LIVE) {
                self.write(w, i, k, port, is_static, seen);
            }
        }
    }

    /// Every live entry (writers' mutex held, for a stable view).
    fn snapshot(&self, _w: &Writer) -> Vec<(u64, PortNo, bool, Nanos)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let k = s.key.load(Ordering::Relaxed);
                (k & LIVE != 0).then(|| {
                    let (port, is_static) = self.meta_of(i);
                    (k & !LIVE, port, is_static, s.seen.load(Ordering::Relaxed))
                })
            })
            .collect()
    }
}

/// A bounded MAC learning table shared by every PMD: a handle on it. See
/// the module documentation. [`Clone`] gives another handle on the same
/// table (what each PMD's pipeline holds); [`MacTable::new`] makes a new
/// table.
#[derive(Debug)]
pub struct MacTable {
    shared: Arc<Shared>,
    /// The [`MacExchange`] requests this handle served.
    served_export: u64,
    served_import: u64,
}

impl Clone for MacTable {
    /// Another handle on the same table (learning through one is seen
    /// through every other).
    fn clone(&self) -> Self {
        MacTable {
            shared: self.shared.clone(),
            served_export: self.served_export,
            served_import: self.served_import,
        }
    }
}

impl MacTable {
    /// A new table holding at most `capacity` learned entries that age
    /// out after `aging_ns` nanoseconds without being refreshed.
    pub fn new(capacity: usize, aging_ns: u64) -> Self {
        MacTable {
            shared: Arc::new(Shared::new(capacity, aging_ns)),
            served_export: 0,
            served_import: 0,
        }
    }

    /// Whether `other` is a handle on the same table.
    pub fn same_table(&self, other: &MacTable) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The learned (not static) entries still live at `now`, as a
    /// hand-over saves them.
    pub fn export(&self, now: Nanos) -> Vec<SavedMac> {
        self.entries(now)
            .into_iter()
            .filter(|&(_, _, _, is_static, idle)| !is_static && idle < self.shared.aging_ns)
            .map(|(mac, vlan, port, _, idle)| SavedMac {
                mac,
                vlan,
                port: port.0,
                idle,
            })
            .collect()
    }

    /// Learns saved entries as if each was last seen `idle` before `now`;
    /// those already aged out, held by a static entry, or beyond the
    /// capacity are skipped, an entry learned here already is kept if it
    /// is fresher. Returns how many were learned.
    pub fn import(&mut self, saved: &[SavedMac], now: Nanos) -> usize {
        let t = &*self.shared;
        let mut w = t.lock();
        let mut n = 0;
        for m in saved {
            if m.idle >= t.aging_ns {
                continue;
            }
            let seen = now.saturating_sub(m.idle);
            let key = mac_key(m.mac, m.vlan);
            if let Ok(i) = t.probe(key) {
                if t.meta_of(i).1 || t.slots[i].seen.load(Ordering::Relaxed) >= seen {
                    continue;
                }
            }
            if m.mac[0] & 1 == 0 && t.upsert(&mut w, key, PortNo(m.port), false, seen) {
                n += 1;
            }
        }
        n
    }

    /// Serves the process's [`MacExchange`]: answers a pending export
    /// request, learns a pending import. One relaxed load each when
    /// nothing is pending; pipelines call it from `maintain`.
    #[inline]
    pub fn serve_exchange(&mut self, now: Nanos) {
        let ex = &EXCHANGE;
        let e = ex.export_gen.load(Ordering::Acquire);
        if e != self.served_export {
            self.served_export = e;
            let mine = self.export(now);
            let mut g = ex.exported.lock().unwrap_or_else(|p| p.into_inner());
            if g.0 == e {
                g.1 += 1;
                g.2.extend(mine);
            }
        }
        let i = ex.import_gen.load(Ordering::Acquire);
        if i != self.served_import {
            self.served_import = i;
            let g = ex.import.lock().unwrap_or_else(|p| p.into_inner());
            self.import(&g, now);
        }
    }

    /// Learns that `mac` on `vlan` is behind `port`. Returns false when the
    /// address could not be learned (table full, multicast source, or a
    /// static entry holds it).
    ///
    /// An address already known on `port` (the hit path) costs one
    /// lock-free read, and a compare-and-swap of its last-seen time at
    /// most once per refresh interval (1/64 of the aging time, at most a
    /// second); a new address or one that moved takes the writers' mutex.
    #[inline]
    pub fn learn(&mut self, mac: [u8; 6], vlan: u16, port: PortNo, now: Nanos) -> bool {
        if mac[0] & 1 != 0 {
            return false;
        }
        let t = &*self.shared;
        let key = mac_key(mac, vlan);
        if let Some(h) = t.find(key) {
            if h.is_static {
                return false;
            }
            if h.port == port {
                if now.saturating_sub(h.seen) >= t.refresh_ns && now > h.seen {
                    // Lost to a writer that changed the slot meanwhile:
                    // the next packet refreshes it.
                    let _ = t.slots[h.slot].seen.compare_exchange(
                        h.seen,
                        now,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return true;
            }
        }
        self.learn_slow(key, port, now)
    }

    #[cold]
    fn learn_slow(&mut self, key: u64, port: PortNo, now: Nanos) -> bool {
        let t = &*self.shared;
        let mut w = t.lock();
        t.upsert(&mut w, key, port, false, now)
    }

    /// The port `mac` on `vlan` was last seen on, unless the entry aged
    /// out. Lock-free; a lookup racing a writer on the same slot may miss
    /// (the frame floods).
    #[inline]
    pub fn lookup(&self, mac: [u8; 6], vlan: u16, now: Nanos) -> Option<PortNo> {
        let t = &*self.shared;
        let h = t.find(mac_key(mac, vlan))?;
        if h.is_static || now.saturating_sub(h.seen) < t.aging_ns {
            Some(h.port)
        } else {
            None
        }
    }

    /// Installs a static entry (never ages, never overwritten by learning).
    /// Static entries may exceed the capacity: the operator asked for them;
    /// false only when the table has no slot left for it (7/8 of its
    /// slots, twice the capacity, are in use).
    pub fn add_static(&mut self, mac: [u8; 6], vlan: u16, port: PortNo) -> bool {
        let t = &*self.shared;
        let mut w = t.lock();
        t.upsert(&mut w, mac_key(mac, vlan), port, true, 0)
    }

    /// Removes an entry, static or learned. Returns whether it existed.
    pub fn remove(&mut self, mac: [u8; 6], vlan: u16) -> bool {
        let t = &*self.shared;
        let mut w = t.lock();
        match t.probe(mac_key(mac, vlan)) {
            Ok(i) => {
                t.remove_slot(&mut w, i);
                true
            }
            Err(_) => false,
        }
    }

    /// Removes learned entries idle for longer than the aging time.
    /// Returns how many were removed; 0 without waiting when another
    /// thread (another PMD's expiry) holds the writers' mutex.
    pub fn expire(&mut self, now: Nanos) -> usize {
        let t = &*self.shared;
        let Ok(mut w) = t.writer.try_lock() else {
            return 0;
        };
        let aging = t.aging_ns;
        t.remove_where(&mut w, |_, is_static, seen| {
            !is_static && now.saturating_sub(seen) >= aging
        })
    }

    /// Forgets every learned entry on `port` (port deleted or link down).
    pub fn flush_port(&mut self, port: PortNo) {
        let t = &*self.shared;
        let mut w = t.lock();
        t.remove_where(&mut w, |p, is_static, _| !is_static && p == port);
    }

    /// Number of entries, static and learned.
    pub fn len(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// The most learned entries it holds.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Source addresses not learned because the table was full.
    pub fn refused_full(&self) -> u64 {
        self.shared.refused_full.load(Ordering::Relaxed)
    }

    /// True when the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(mac, vlan, port, is_static, age_ns)` for every entry, for
    /// `fdb/show`-style output.
    pub fn entries(&self, now: Nanos) -> Vec<([u8; 6], u16, PortNo, bool, u64)> {
        let t = &*self.shared;
        let w = t.lock();
        t.snapshot(&w)
            .into_iter()
            .map(|(k, port, is_static, seen)| {
                let mut mac = [0u8; 6];
                for (i, b) in mac.iter_mut().enumerate() {
                    *b = (k >> (40 - 8 * i)) as u8;
                }
                let vlan = (k >> 48) as u16;
                let age = if is_static {
                    now
                } else {
                    now.saturating_sub(seen)
                };
                (mac, vlan, port, is_static, age)
            })
            .collect()
    }
}

/// How a hand-over moves the PMDs' learned MAC entries in and out of a
/// process (one per process: [`collect_macs`], [`import_macs`]).
#[derive(Debug)]
pub struct MacExchange {
    export_gen: AtomicU64,
    /// (request, answers, entries).
    exported: Mutex<(u64, usize, Vec<SavedMac>)>,
    import_gen: AtomicU64,
    import: Mutex<Vec<SavedMac>>,
}

static EXCHANGE: MacExchange = MacExchange {
    export_gen: AtomicU64::new(0),
    exported: Mutex::new((0, 0, Vec::new())),
    import_gen: AtomicU64::new(0),
    import: Mutex::new(Vec::new()),
};

/// The learned entries of every PMD's table: asks each table (served from
/// its pipeline's `maintain`) and waits at most `timeout` for `tables`
/// answers; returns the union (for an address learned by several PMDs,
/// the freshest) and how many tables answered. Control threads only.
pub fn collect_macs(tables: usize, timeout: Duration) -> (Vec<SavedMac>, usize) {
    let ex = &EXCHANGE;
    let gen = {
        let mut g = ex.exported.lock().unwrap_or_else(|p| p.into_inner());
        let gen = g.0 + 1;
        *g = (gen, 0, Vec::new());
        ex.export_gen.store(gen, Ordering::Release);
        gen
    };
    let t0 = Instant::now();
    let (answers, mut all) = loop {
        {
            let mut g = ex.exported.lock().unwrap_or_else(|p| p.into_inner());
            if g.0 == gen && (g.1 >= tables || t0.elapsed() >= timeout) {
                break (g.1, std::mem::take(&mut g.2));
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    all.sort_unstable_by_key(|m| (m.mac, m.vlan, m.idle));
    all.dedup_by_key(|m| (m.mac, m.vlan));
    (all, answers)
}

/// Has every table of this process (those made later too) learn `saved`
/// (see [`MacTable::import`]) at its next `maintain`.
pub fn import_macs(saved: Vec<SavedMac>) {
    let ex = &EXCHANGE;
    *ex.import.lock().unwrap_or_else(|p| p.into_inner()) = saved;
    ex.import_gen.fetch_add(1, Ordering::AcqRel);
}

/// Counters of the L2 pipeline on one core.
#[derive(Debug, Default)]
pub struct L2Stats {
    /// Frames forwarded to one known port.
    pub unicast: Counter,
    /// Frames flooded (unknown unicast, broadcast, multicast).
    pub flooded: Counter,
    /// Source addresses learned or refreshed.
    pub learned: Counter,
    /// Source addresses not learned because the table was full.
    pub learn_full: Counter,
    /// Learned entries expired.
    pub expired: Counter,
}

/// Reads the destination MAC, source MAC and VLAN id (0 when untagged) of
/// an Ethernet frame of at least 14 bytes.
#[inline]
fn l2_header(frame: &[u8]) -> ([u8; 6], [u8; 6], u16) {
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    src.copy_from_slice(&frame[6..12]);
    let tpid = u16::from_be_bytes([frame[12], frame[13]]);
    let vlan = if (tpid == 0x8100 || tpid == 0x88a8) && frame.len() >= 16 {
        u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff
    } else {
        0
    };
    (dst, src, vlan)
}

/// Sends `pkt` to every port in `ports` except `in_port`: copies for all
/// but the last, the original for the last. Drops are counted.
pub fn flood<B: PacketBuf>(ports: &[PortNo], in_port: PortNo, pkt: B, out: &mut Output<B>) {
    let mut targets = ports.iter().copied().filter(|&p| p != in_port);
    let Some(mut prev) = targets.next() else {
        out.drop(DropReason::L2FloodNoPort, pkt);
        return;
    };
    for next in targets {
        match pkt.try_clone() {
            Some(copy) => out.send(prev, copy),
            None => out.drops.inc(DropReason::NoBuffer),
        }
        prev = next;
    }
    out.send(prev, pkt);
}

/// The L2 learning switch pipeline over a set of ports (changed between
/// bursts by [`Pipeline::set_ports`]).
#[derive(Debug)]
pub struct L2Pipeline {
    ports: Vec<PortNo>,
    table: MacTable,
    stats: Arc<L2Stats>,
    last_expire: Nanos,
}

impl L2Pipeline {
    /// A switch over `ports` with a new MAC table of the given size and
    /// aging.
    pub fn new(ports: Vec<PortNo>, capacity: usize, aging_ns: u64) -> Self {
        Self::with_table(ports, MacTable::new(capacity, aging_ns))
    }

    /// A switch over `ports` learning into `table` (a handle on a table
    /// other PMDs' switches share).
    pub fn with_table(ports: Vec<PortNo>, table: MacTable) -> Self {
        L2Pipeline {
            ports,
            table,
            stats: Arc::new(L2Stats::default()),
            last_expire: 0,
        }
    }

    /// The MAC table (static entries, inspection).
    pub fn table_mut(&mut self) -> &mut MacTable {
        &mut self.table
    }

    /// The MAC table.
    pub fn table(&self) -> &MacTable {
        &self.table
    }

    /// This core's counters, shared with the control socket.
    pub fn stats(&self) -> Arc<L2Stats> {
        self.stats.clone()
    }

    #[inline]
    fn forward<B: PacketBuf>(&mut self, now: Nanos, in_port: PortNo, pkt: B, out: &mut Output<B>) {
        if pkt.len() < 14 {
            out.drop(DropReason::RxTooShort, pkt);
            return;
        }
        let (dst, src, vlan) = l2_header(pkt.data());
        if src[0] & 1 != 0 {
            out.drop(DropReason::L2SrcMulticast, pkt);
            return;
        }
        if self.table.learn(src, vlan, in_port, now) {
            self.stats.learned.inc();
        } else if self.table.lookup(src, vlan, now).is_none() {
            self.stats.learn_full.inc();
        }
        if dst[0] & 1 == 0 {
            if let Some(port) = self.table.lookup(dst, vlan, now) {
                if port == in_port {
                    out.drop(DropReason::L2SamePort, pkt);
                } else {
                    self.stats.unicast.inc();
                    out.send(port, pkt);
                }
                return;
            }
        }
        self.stats.flooded.inc();
        flood(&self.ports, in_port, pkt, out);
    }
}

/// How often `maintain` scans for aged-out entries.
const EXPIRE_INTERVAL_NS: u64 = 1_000_000_000;

impl<B: PacketBuf> Pipeline<B> for L2Pipeline {
    fn process(&mut self, now: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
        let in_port = burst.in_port;
        for pkt in burst.pkts.drain(..) {
            self.forward(now, in_port, pkt, out);
        }
    }

    fn set_ports(&mut self, ports: &[PortNo]) {
        for &p in &self.ports {
            if !ports.contains(&p) {
                self.table.flush_port(p);
            }
        }
        self.ports.clear();
        self.ports.extend_from_slice(ports);
    }

    fn maintain(&mut self, now: Nanos, _out: &mut Output<B>) {
        self.table.serve_exchange(now);
        if now.saturating_sub(self.last_expire) >= EXPIRE_INTERVAL_NS {
            self.last_expire = now;
            let n = self.table.expire(now);
            self.stats.expired.add(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::HeapBuf;

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
    const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];
    const BCAST: [u8; 6] = [0xff; 6];

    fn frame(dst: [u8; 6], src: [u8; 6]) -> HeapBuf {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        HeapBuf::from_frame(&f)
    }

    fn run(p: &mut L2Pipeline, now: Nanos, in_port: u16, pkts: Vec<HeapBuf>) -> Output<HeapBuf> {
        let mut out = Output::new(4);
        let mut burst = Burst::new(PortNo(in_port));
        burst.pkts = pkts;
        p.process(now, &mut burst, &mut out);
        assert!(burst.pkts.is_empty(), "pipeline must consume the burst");
        out
    }

    fn switch() -> L2Pipeline {
        L2Pipeline::new(vec![PortNo(0), PortNo(1), PortNo(2)], 16, 1_000)
    }

    #[test]
    fn mac_key_round_trips_through_entries() {
        let mut t = MacTable::new(4, 10);
        let mac = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc];
        assert!(t.learn(mac, 42, PortNo(3), 0));
        assert_eq!(t.entries(0), vec![(mac, 42, PortNo(3), false, 0)]);
        assert_eq!(t.lookup(mac, 42, 0), Some(PortNo(3)));
        assert_eq!(t.lookup(mac, 43, 0), None, "VLANs are separate");
    }

    #[test]
    fn unknown_unicast_floods_then_learned_reply_is_unicast() {
        let mut p = switch();
        let mut out = run(&mut p, 0, 0, vec![frame(B, A)]);
        assert_eq!(out.take(PortNo(1)).len(), 1);
        assert_eq!(out.take(PortNo(2)).len(), 1);
        assert!(
            out.take(PortNo(0)).is_empty(),
            "never back out of the ingress port"
        );
        assert_eq!(p.stats.flooded.get(), 1);

        let mut out = run(&mut p, 1, 1, vec![frame(A, B)]);
        assert_eq!(out.take(PortNo(0)).len(), 1, "A was learned on port 0");
        assert!(out.take(PortNo(2)).is_empty());
        assert_eq!(p.stats.unicast.get(), 1);
        assert_eq!(p.table.lookup(B, 0, 1), Some(PortNo(1)));
    }

    #[test]
    fn broadcast_floods_and_flood_copies_are_identical() {
        let mut p = switch();
        let f = frame(BCAST, A);
        let mut out = run(&mut p, 0, 2, vec![f.clone()]);
        let p0 = out.take(PortNo(0));
        let p1 = out.take(PortNo(1));
        assert_eq!(p0, vec![f.clone()]);
        assert_eq!(p1, vec![f]);
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let mut p = switch();
        // Multicast source.
        let out = run(&mut p, 0, 0, vec![frame(B, [0x01, 0, 0x5e, 0, 0, 1])]);
        assert_eq!(out.drops.get(DropReason::L2SrcMulticast), 1);
        // Runt.
        let out = run(&mut p, 0, 0, vec![HeapBuf::from_frame(&[0u8; 13])]);
        assert_eq!(out.drops.get(DropReason::RxTooShort), 1);
        // Destination on the ingress port.
        run(&mut p, 0, 0, vec![frame(BCAST, B)]);
        let out = run(&mut p, 0, 0, vec![frame(B, A)]);
        assert_eq!(out.drops.get(DropReason::L2SamePort), 1);
        // Flood with no other port.
        let mut lonely = L2Pipeline::new(vec![PortNo(0)], 4, 1_000);
        let out = run(&mut lonely, 0, 0, vec![frame(BCAST, A)]);
        assert_eq!(out.drops.get(DropReason::L2FloodNoPort), 1);
        assert_eq!(out.drops.total(), 1);
    }

    #[test]
    fn static_entries_win_over_learning_and_never_age() {
        let mut p = switch();
        p.table_mut().add_static(C, 0, PortNo(2));
        // A frame sourced from C on port 0 must not move the static entry.
        run(&mut p, 0, 0, vec![frame(BCAST, C)]);
        let mut out = run(&mut p, 1_000_000, 1, vec![frame(C, B)]);
        assert_eq!(out.take(PortNo(2)).len(), 1);
        assert!(out.take(PortNo(0)).is_empty());
    }

    #[test]
    fn learned_entries_age_out_with_the_fake_clock() {
        let mut p = switch();
        run(&mut p, 0, 0, vec![frame(BCAST, A)]);
        assert_eq!(p.table.lookup(A, 0, 999), Some(PortNo(0)));
        assert_eq!(
            p.table.lookup(A, 0, 1_000),
            None,
            "aged at exactly aging_ns"
        );
        // Aged entry: frames to A flood again.
        let mut out = run(&mut p, 1_500, 1, vec![frame(A, B)]);
        assert_eq!(out.take(PortNo(0)).len(), 1);
        assert_eq!(out.take(PortNo(2)).len(), 1);
        let mut o = Output::<HeapBuf>::new(4);
        Pipeline::<HeapBuf>::maintain(&mut p, 2_000_000_000, &mut o);
        assert_eq!(p.table.len(), 0);
        assert_eq!(p.stats.expired.get(), 2);
    }

    #[test]
    fn full_table_stops_learning_but_keeps_forwarding() {
        let mut p = L2Pipeline::new(vec![PortNo(0), PortNo(1)], 1, 1_000_000);
        run(&mut p, 0, 0, vec![frame(BCAST, A)]);
        let mut out = run(&mut p, 0, 1, vec![frame(A, B)]);
        assert_eq!(
            out.take(PortNo(0)).len(),
            1,
            "known destination still forwarded"
        );
        assert_eq!(p.stats.learn_full.get(), 1);
        assert_eq!(p.table.refused_full(), 1);
        assert_eq!(p.table.lookup(B, 0, 0), None);
    }

    /// Exported learned entries (not static ones, not aged ones) are
    /// learned by another table with their age; a static entry or a
    /// fresher learned one there wins.
    #[test]
    fn learned_entries_export_and_import_with_their_age() {
        let sec = 1_000_000_000;
        let mut t = MacTable::new(16, 300 * sec);
        t.learn([2, 0, 0, 0, 0, 1], 0, PortNo(1), 10 * sec);
        t.learn([2, 0, 0, 0, 0, 2], 7, PortNo(2), 40 * sec);
        t.learn([2, 0, 0, 0, 0, 3], 0, PortNo(3), 0);
        t.add_static([2, 0, 0, 0, 0, 4], 0, PortNo(4));
        let out = t.export(301 * sec);
        assert_eq!(out.len(), 2, "{out:?}");
        let two = out.iter().find(|m| m.mac[5] == 2).expect("exported");
        assert_eq!((two.vlan, two.port, two.idle), (7, 2, 261 * sec));
        let mut n = MacTable::new(16, 300 * sec);
        n.add_static([2, 0, 0, 0, 0, 1], 0, PortNo(9));
        n.learn([2, 0, 0, 0, 0, 2], 7, PortNo(5), 1000 * sec);
        assert_eq!(n.import(&out, 1000 * sec), 0);
        assert_eq!(n.lookup([2, 0, 0, 0, 0, 1], 0, 1000 * sec), Some(PortNo(9)));
        assert_eq!(n.lookup([2, 0, 0, 0, 0, 2], 7, 1000 * sec), Some(PortNo(5)));
        let mut e = MacTable::new(16, 300 * sec);
        assert_eq!(e.import(&out, 1000 * sec), 2);
        assert_eq!(e.lookup([2, 0, 0, 0, 0, 2], 7, 1000 * sec), Some(PortNo(2)));
        // It ages from when it was last seen in the old table.
        assert_eq!(e.lookup([2, 0, 0, 0, 0, 2], 7, 1040 * sec), None);
        assert_eq!(e.lookup([2, 0, 0, 0, 0, 1], 0, 1000 * sec), Some(PortNo(1)));
    }

    /// `collect_macs` gets the entries of a table served by another
    /// thread (as a PMD serves it from `maintain`).
    #[test]
    fn collect_macs_asks_the_tables_of_other_threads() {
        use std::sync::atomic::AtomicBool;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let pmd = std::thread::spawn(move || {
            let mut t = MacTable::new(16, 300_000_000_000);
            t.learn([0x0e, 0xc0, 0x11, 0xec, 0x7e, 0xd0], 9, PortNo(3), 5);
            while !s.load(Ordering::Relaxed) {
                t.serve_exchange(10);
                std::thread::yield_now();
            }
        });
        let (got, answers) = collect_macs(1, Duration::from_secs(10));
        stop.store(true, Ordering::Relaxed);
        pmd.join().expect("join");
        assert!(answers >= 1);
        let m = got
            .iter()
            .find(|m| m.mac == [0x0e, 0xc0, 0x11, 0xec, 0x7e, 0xd0])
            .expect("the other thread's entry");
        assert_eq!((m.vlan, m.port, m.idle), (9, 3, 5));
    }

    /// The table counts what it refuses when full (the flow pipeline's
    /// `normal` shows it in `dump-cache`); refreshing a known address or
    /// refusing a multicast source is not a refusal for lack of room.
    #[test]
    fn a_full_table_counts_refused_addresses() {
        let mut t = MacTable::new(2, 1_000);
        assert!(t.learn(A, 0, PortNo(0), 0));
        assert!(t.learn(B, 0, PortNo(1), 0));
        for i in 0..100u8 {
            assert!(!t.learn([2, 0, 0, 0, 1, i], 0, PortNo(0), 0));
        }
        assert!(t.learn(A, 0, PortNo(1), 1), "a known address is refreshed");
        assert!(!t.learn(BCAST, 0, PortNo(0), 1));
        assert_eq!((t.len(), t.refused_full()), (2, 100));
        // Room again after aging: learned, the count stays.
        t.expire(5_000);
        assert!(t.learn([2, 0, 0, 0, 1, 0], 0, PortNo(0), 5_000));
        assert_eq!(t.refused_full(), 100);
    }

    /// Two PMDs' switches on one table: an address learned by one is
    /// forwarded to by the other without a flood, and an address that
    /// moves is relearned once for both.
    #[test]
    fn two_switches_share_learning_and_relearn_a_move() {
        let ports = vec![PortNo(0), PortNo(1), PortNo(2), PortNo(3)];
        let table = MacTable::new(16, 1_000_000);
        let mut p0 = L2Pipeline::with_table(ports.clone(), table.clone());
        let mut p1 = L2Pipeline::with_table(ports, table.clone());
        assert!(p0.table().same_table(p1.table()));
        // A speaks on port 0 (PMD 0's); C answers from port 2 (PMD 1's).
        run(&mut p0, 0, 0, vec![frame(BCAST, A)]);
        let mut out = run(&mut p1, 1, 2, vec![frame(A, C)]);
        assert_eq!(out.take(PortNo(0)).len(), 1);
        assert!(out.take(PortNo(1)).is_empty() && out.take(PortNo(3)).is_empty());
        assert_eq!((p1.stats.unicast.get(), p1.stats.flooded.get()), (1, 0));
        // And PMD 0 knows C, learned by PMD 1.
        let mut out = run(&mut p0, 2, 0, vec![frame(C, A)]);
        assert_eq!(out.take(PortNo(2)).len(), 1);
        assert_eq!(p0.stats.flooded.get(), 1, "only the first broadcast");
        // A moves to port 3, seen by PMD 1: PMD 0 forwards there at once.
        run(&mut p1, 3, 3, vec![frame(C, A)]);
        let mut out = run(&mut p0, 4, 1, vec![frame(A, B)]);
        assert_eq!(out.take(PortNo(3)).len(), 1, "to A's new port");
        assert!(out.take(PortNo(0)).is_empty(), "not to its old one");
        assert_eq!(p0.stats.flooded.get(), 1);
        assert_eq!(table.len(), 3);
    }

    /// Removing and relearning many more addresses than the table has
    /// slots leaves tombstones that rebuilds clear: every live address
    /// stays found, the count stays exact, the capacity holds.
    #[test]
    fn tombstones_are_cleared_and_lookups_stay_right() {
        let mut t = MacTable::new(32, u64::MAX);
        let mac = |i: u32| [2, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8, 1];
        for round in 0..200u32 {
            for i in 0..20 {
                assert!(t.learn(mac(round * 20 + i), 0, PortNo(i as u16), 0));
            }
            for i in 0..20 {
                assert_eq!(t.lookup(mac(round * 20 + i), 0, 0), Some(PortNo(i as u16)));
            }
            for i in 0..20 {
                assert!(t.remove(mac(round * 20 + i), 0));
            }
            assert!(t.is_empty());
        }
        for i in 0..40 {
            t.learn(mac(i), 0, PortNo(1), 0);
        }
        assert_eq!((t.len(), t.refused_full()), (32, 8));
        t.flush_port(PortNo(1));
        assert!(t.is_empty());
        assert_eq!(t.lookup(mac(0), 0, 0), None);
    }

    /// PMD threads learning, moving and looking up while another thread
    /// removes, expires and re-adds statics: a lookup returns one of the
    /// ports the address was ever learned on, never another address's
    /// (the seqlock), or misses. Bounded by iteration counts.
    #[test]
    fn concurrent_learning_never_reads_a_wrong_port() {
        use std::sync::atomic::AtomicBool;
        let t = MacTable::new(64, 1_000);
        let mac = |i: u16| [2, 0, 0, 0, (i >> 8) as u8, i as u8];
        // Address i lives on port 2i or 2i+1.
        let ok = |i: u16, p: PortNo| p.0 == 2 * i || p.0 == 2 * i + 1;
        let done = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for w in 0..2u16 {
            let mut t = t.clone();
            threads.push(std::thread::spawn(move || {
                for n in 0..20_000u64 {
                    let i = (n % 48) as u16;
                    t.learn(mac(i), 0, PortNo((2 * i + (n / 48 % 2) as u16) ^ w), n);
                    let j = ((n * 7) % 48) as u16;
                    if let Some(p) = t.lookup(mac(j), 0, n) {
                        assert!(ok(j, p), "address {j} read as on port {p:?}");
                    }
                }
            }));
        }
        let d = done.clone();
        let mut c = t.clone();
        let churn = std::thread::spawn(move || {
            let mut n = 0u64;
            while !d.load(Ordering::Relaxed) || n < 1_000 {
                let i = (n % 48) as u16;
                c.remove(mac(i), 0);
                if n.is_multiple_of(5) {
                    c.expire(n * 10);
                }
                if n.is_multiple_of(7) {
                    c.add_static(mac(i), 0, PortNo(2 * i));
                    c.remove(mac(i), 0);
                }
                n += 1;
            }
        });
        for th in threads {
            th.join().expect("no wrong port");
        }
        done.store(true, Ordering::Relaxed);
        churn.join().expect("churn");
        assert!(t.len() <= 64);
        for (mac, _, port, _, _) in t.entries(0) {
            let i = u16::from_be_bytes([mac[4], mac[5]]);
            assert!(ok(i, port), "{mac:?} on {port:?}");
        }
    }

    #[test]
    fn vlan_tagged_frames_learn_per_vlan() {
        let mut p = switch();
        let mut f = Vec::new();
        f.extend_from_slice(&BCAST);
        f.extend_from_slice(&A);
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        run(&mut p, 0, 1, vec![HeapBuf::from_frame(&f)]);
        assert_eq!(p.table.lookup(A, 100, 0), Some(PortNo(1)));
        assert_eq!(p.table.lookup(A, 0, 0), None);
    }
}
