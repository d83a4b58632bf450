//! The shared connection table ([`Conntrack`]): shards, limits, expiry,
//! eviction and flush.
//!
//! What it owns: [`ConntrackConfig::shards`] shards (a power of two), each
//! a [`shard`](super::shard) index in which both keys of a connection point
//! at one `Arc<Conn>`; the global and per-zone live counts; the
//! [`ConntrackStats`]; the counters of every per-PMD cache; and the load
//! balancer bare `nat` consults.
//!
//! Invariants: a live connection is in the shards under both its keys; a
//! killed one is removed from both and never revived; counts move with
//! `count_in` exactly once up (commit) and once down (kill).
//!
//! Thread-safety: [`Conntrack`] is a cheap `Clone` handle (`Arc`), `Send +
//! Sync`. [`Conntrack::lookup`] of a live connection takes no lock (an epoch
//! pin and acquire loads, see `shard`). Create, insert, remove, expiry,
//! eviction, flush and dumps lock one shard at a time (lock order: shard,
//! then entry); poisoning is ignored because every update under a lock is a
//! plain store.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::cache;
use super::cache::CacheStats;
use super::config::ConntrackConfig;
use super::entry::{Conn, ConnKey, COUNT_DEAD};
use super::lazy::{LazyStats, Pending};
use super::lb::LoadBalancer;
use super::lock;
pub(super) use super::shard::{key_hash, Slot};
use super::shard::{ShardCell, Unlinked, Unrepresentable};
use crate::drop::DropReason;
use crate::time::Nanos;

/// The longest a flush or a control-thread sweep waits for the PMDs to
/// leave the epoch of its removals before it hands their memory to the
/// epoch collector instead of freeing it itself (PMDs unpin after every
/// lookup, so the wait is normally microseconds).
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Conntrack counters shared with `conntrack-stats`.
#[derive(Debug, Default)]
pub struct ConntrackStats {
    /// Connections created.
    pub created: AtomicU64,
    /// Connections removed because they expired.
    pub expired: AtomicU64,
    /// Non-established entries evicted early at a limit.
    pub evictions: AtomicU64,
    /// New connections refused at a limit.
    pub limit_hits: AtomicU64,
    /// Packets found invalid.
    pub invalid: AtomicU64,
    /// ICMP errors found related to a connection.
    pub related: AtomicU64,
    /// Service rejects (ICMP port unreachable generated).
    pub rejects: AtomicU64,
}

pub(super) struct Inner {
    pub(super) shards: Box<[ShardCell]>,
    pub(super) mask: usize,
    pub(super) config: ConntrackConfig,
    pub(super) zone_limit: Box<[u32]>,
    pub(super) count: AtomicUsize,
    pub(super) zone_counts: Box<[AtomicU32]>,
    pub(super) stats: ConntrackStats,
    pub(super) services: Option<Box<dyn LoadBalancer>>,
    /// Counters of the per-PMD connection caches (`conntrack-stats`).
    pub(super) caches: Mutex<Vec<Arc<cache::CacheCounters>>>,
    /// Keys of the connections created while a hand-over copies the
    /// table (off otherwise: one relaxed load per new connection).
    pub(super) created: CreationLog,
    /// Keys of the connections created, killed or changed in a field a
    /// crash restore needs, for the state saver (off without a state
    /// file: one relaxed load per such event).
    pub(super) changed: ChangeLog,
    /// Allocations of released connections, reset to placeholders, that
    /// new connections reuse (filled by flushes and control-thread
    /// sweeps, which release on their own thread; at most
    /// [`spare_pool`] of them).
    pub(super) spares: Mutex<Vec<Arc<Conn>>>,
    /// A lazy crash restore is under way ([`super::lazy`]): a miss looks
    /// in `pending` (one relaxed load per miss otherwise).
    pub(super) restoring: AtomicBool,
    /// The saved connections not all back yet.
    pub(super) pending: arc_swap::ArcSwapOption<Pending>,
    /// A test's hook run just before a new connection's original key is
    /// published ([`Conntrack::before_publish`]).
    #[cfg(test)]
    pub(super) before_publish: Mutex<Option<TestHook>>,
}

/// See [`Inner::before_publish`].
#[cfg(test)]
pub(super) type TestHook = Arc<dyn Fn(&Conntrack) + Send + Sync>;

/// How many pooled allocations a PMD takes at once (one pool lock per
/// this many new connections; its own stash is then read from one hot
/// array instead of the pool's, which the releasing thread wrote).
pub const SPARE_BATCH: usize = 32;

/// How many released connection allocations a table keeps for reuse: a
/// sixteenth of its connection limit, between 1Ki and 64Ki (about 200
/// bytes each: at most ~13 MiB, which the allocator's free lists would
/// otherwise hold).
pub fn spare_pool(config: &ConntrackConfig) -> usize {
    (config.max_connections / 16).clamp(1 << 10, 1 << 16)
}

/// The connection table, shared by all PMDs and the control thread.
#[derive(Clone)]
pub struct Conntrack {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("connections", &self.len())
            .finish_non_exhaustive()
    }
}

/// A filter for [`Conntrack::dump`] and [`Conntrack::flush`].
#[derive(Debug, Clone, Default)]
pub struct ConnFilter {
    /// Only this zone.
    pub zone: Option<u16>,
    /// Only connections with this address in either tuple.
    pub ip: Option<Ipv4Addr>,
}

impl ConnFilter {
    pub(super) fn matches(&self, c: &Conn) -> bool {
        if let Some(z) = self.zone {
            if c.keys[0].zone != z {
                return false;
            }
        }
        if let Some(ip) = self.ip {
            let ip = u32::from(ip);
            return c
                .keys
                .iter()
                .any(|k| k.tuple.src == ip || k.tuple.dst == ip);
        }
        true
    }
}

impl Conntrack {
    /// An empty table.
    pub fn new(config: ConntrackConfig) -> Conntrack {
        Self::build(config, None)
    }

    /// An empty table whose bare `nat` consults `services` for new
    /// connections.
    pub fn with_services(
        config: ConntrackConfig,
        services: impl LoadBalancer + 'static,
    ) -> Conntrack {
        Self::build(config, Some(Box::new(services)))
    }

    pub(super) fn build(
        config: ConntrackConfig,
        services: Option<Box<dyn LoadBalancer>>,
    ) -> Conntrack {
        let n = config.shards.max(1).next_power_of_two();
        let mut zone_limit = vec![config.default_zone_limit; 1 << 16];
        for &(z, l) in &config.zone_limits {
            zone_limit[usize::from(z)] = l;
        }
        Conntrack {
            inner: Arc::new(Inner {
                shards: (0..n).map(|_| ShardCell::default()).collect(),
                mask: n - 1,
                zone_limit: zone_limit.into_boxed_slice(),
                zone_counts: (0..1 << 16).map(|_| AtomicU32::new(0)).collect(),
                count: AtomicUsize::new(0),
                stats: ConntrackStats::default(),
                caches: Mutex::new(Vec::new()),
                created: CreationLog::default(),
                changed: ChangeLog::default(),
                spares: Mutex::new(Vec::new()),
                restoring: AtomicBool::new(false),
                pending: arc_swap::ArcSwapOption::empty(),
                #[cfg(test)]
                before_publish: Mutex::new(None),
                config,
                services,
            }),
        }
    }

    /// Hits and misses of every handle's connection cache, in the order
    /// the handles were made (one per PMD in `sluiced`).
    pub fn cache_counts(&self) -> Vec<CacheStats> {
        lock(&self.inner.caches)
            .iter()
            .map(|c| CacheStats {
                hits: c.hits.get(),
                misses: c.misses.get(),
            })
            .collect()
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        // A kill racing with a commit may decrement before the commit's
        // increment lands: read a transient "-1" as 0.
        let n = self.inner.count.load(Ordering::Relaxed);
        if n > isize::MAX as usize {
            0
        } else {
            n
        }
    }

    /// True when no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters.
    pub fn stats(&self) -> &ConntrackStats {
        &self.inner.stats
    }

    /// The configuration.
    pub fn config(&self) -> &ConntrackConfig {
        &self.inner.config
    }

    /// The Service table, if installed.
    pub fn services(&self) -> Option<&dyn LoadBalancer> {
        self.inner.services.as_deref()
    }

    pub(super) fn shard_of(&self, hash: u64) -> &ShardCell {
        &self.inner.shards[(hash as usize >> 7) & self.inner.mask]
    }

    /// Moves up to [`SPARE_BATCH`] pooled allocations into `stash`; when
    /// the pool has none, puts one fresh allocation there instead (a
    /// placeholder either way).
    pub(super) fn take_spares(&self, stash: &mut Vec<Arc<Conn>>) {
        {
            let mut pool = lock(&self.inner.spares);
            let n = pool.len();
            stash.extend(pool.drain(n.saturating_sub(SPARE_BATCH)..));
        }
        if stash.is_empty() {
            stash.push(Arc::new(Conn::placeholder()));
        }
    }

    /// Starts loading the table slot a lookup of hash `hash` probes first
    /// (a hint for a packet likely to miss its PMD's cache).
    #[inline]
    pub(super) fn prefetch_slot(&self, hash: u64) {
        self.shard_of(hash).prefetch(hash);
    }

    /// Starts loading the connections the table's words for `hash` point
    /// to (a hint; see `ShardCell::prefetch_conns`).
    #[inline]
    pub(super) fn prefetch_conns(&self, hash: u64, guard: &crossbeam::epoch::Guard) {
        self.shard_of(hash).prefetch_conns(hash, guard);
    }

    /// Marks `c` removed and releases its counts (once). Callers hold the
    /// shard lock of one of its keys.
    pub(super) fn kill(&self, c: &Conn) {
        if c.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        // Close the packet counters: a packet counted before this is in
        // the endpoint's total; one counted after sees `COUNT_DEAD`.
        let packets: u64 = c
            .packets
            .iter()
            .map(|p| p.fetch_or(COUNT_DEAD, Ordering::AcqRel) & !COUNT_DEAD)
            .sum();
        self.count_in(c, -1);
        if let Some(lb) = &c.lb {
            // Packet counts move to the endpoint when the connection ends
            // (live ones are added by `dump-services`), so the hit path
            // touches no shared endpoint counter.
            lb.stats.packets.fetch_add(packets, Ordering::Relaxed);
        }
    }

    /// Kills `c` when it expired at `now`; true when it is (now) dead.
    pub(super) fn reap(&self, now: Nanos, c: &Conn) -> bool {
        if !c.is_dead() && c.expires() <= now {
            self.kill(c);
            self.inner.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
        c.is_dead()
    }

    /// Adds `n` (1 or -1) to the live counts `c` is part of (global,
    /// zone, its endpoint's active connections). A removal (`c` already
    /// marked dead) is recorded in the change log; a new connection is
    /// recorded by [`Conntrack::published`], once its original key is in
    /// the table.
    pub(super) fn count_in(&self, c: &Conn, n: isize) {
        let zone = &self.inner.zone_counts[usize::from(c.keys[0].zone)];
        if n > 0 {
            self.inner.count.fetch_add(1, Ordering::Relaxed);
            zone.fetch_add(1, Ordering::Relaxed);
        } else {
            self.inner.changed.record(&c.keys[0]);
            self.inner.count.fetch_sub(1, Ordering::Relaxed);
            zone.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(lb) = &c.lb {
            if n > 0 {
                lb.stats.active.fetch_add(1, Ordering::Relaxed);
            } else {
                lb.stats.active.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Records a new connection in the change and creation logs: called
    /// once its original key is published (a taker that looks the key up
    /// must find it, see [`ChangeLog`]).
    pub(super) fn published(&self, c: &Conn) {
        self.inner.changed.record(&c.keys[0]);
        self.inner.created.record(&c.keys[0]);
    }

    /// Runs the hook a test set between a new connection's counts and the
    /// publication of its original key (see `tests`).
    #[cfg(test)]
    pub(super) fn before_publish(&self) {
        let hook = lock(&self.inner.before_publish).clone();
        if let Some(h) = hook {
            h(self);
        }
    }

    /// Looks `k` (hash `hash`) up in the shared table; expired or dead
    /// entries are removed and not returned. A live connection is found
    /// without a lock (see `shard`); only a dead or expired one takes the
    /// shard lock, to be removed.
    pub(super) fn lookup(&self, now: Nanos, hash: u64, k: &ConnKey) -> Option<Slot> {
        let cell = self.shard_of(hash);
        let missing = {
            let guard = crossbeam::epoch::pin();
            match cell.find(k, hash, &guard) {
                Some(found) if found.conn().live(now) => return Some(found.slot()),
                Some(_) => false,
                None if self.restoring() => true,
                None => return None,
            }
        };
        if missing {
            self.fault_in(k, now);
        }
        let mut shard = lock(cell);
        let slot = shard.get(k)?;
        if !self.reap(now, &slot.conn) {
            return Some(slot);
        }
        shard.remove(k, None);
        None
    }

    /// Inserts direction `dir` of `conn` under `k` unless a live entry
    /// holds it. Fails with the live entry that holds `k` (or with no
    /// entry when the connection's address cannot be indexed, see
    /// `shard`).
    pub(super) fn try_insert(
        &self,
        now: Nanos,
        k: ConnKey,
        conn: &Arc<Conn>,
        dir: u8,
    ) -> Result<(), Option<Arc<Conn>>> {
        if self.restoring() {
            // A saved connection not back yet may hold `k`: it goes back
            // first, and keeps its key.
            self.fault_in(&k, now);
        }
        self.insert_restored(now, k, conn, dir)
    }

    /// [`Conntrack::try_insert`] without looking at the saved connections
    /// of a lazy restore (what the restore itself inserts with).
    pub(super) fn insert_restored(
        &self,
        now: Nanos,
        k: ConnKey,
        conn: &Arc<Conn>,
        dir: u8,
    ) -> Result<(), Option<Arc<Conn>>> {
        let mut shard = lock(self.shard_of(key_hash(&k)));
        if let Some(old) = shard.get(&k) {
            if !self.reap(now, &old.conn) {
                return Err(Some(old.conn));
            }
        }
        shard.insert(k, conn, dir).map_err(|Unrepresentable| None)
    }

    /// True while a lazy restore has connections to put back.
    #[inline]
    pub(super) fn restoring(&self) -> bool {
        self.inner.restoring.load(Ordering::Relaxed)
    }

    /// Puts back the saved connection holding `k`, if a lazy restore has
    /// one not back yet.
    #[cold]
    #[inline(never)]
    fn fault_in(&self, k: &ConnKey, now: Nanos) {
        if let Some(p) = self.inner.pending.load().as_ref() {
            p.fault_in(self, k, now);
        }
    }

    /// Starts a lazy restore of `pending` (see [`super::lazy`]): from now
    /// on a miss puts back the saved connection it needs;
    /// [`Conntrack::finish_restore`] puts back the rest. Called before
    /// any PMD forwards; a restore already under way is finished first.
    pub fn begin_restore(&self, pending: Pending) {
        self.finish_restore();
        self.inner.pending.store(Some(Arc::new(pending)));
        self.inner.restoring.store(true, Ordering::SeqCst);
    }

    /// Puts back every saved connection of a lazy restore not back yet
    /// (sharing the work with other threads doing the same), then ends it;
    /// what it did, or None when no restore was under way.
    pub fn finish_restore(&self) -> Option<LazyStats> {
        if !self.inner.restoring.load(Ordering::Acquire) {
            return None;
        }
        let p = self.inner.pending.load_full()?;
        p.run(self, crate::time::clock_ns);
        if self.inner.restoring.swap(false, Ordering::AcqRel) {
            self.inner.pending.store(None);
            // A PMD that loaded it a moment ago may still hold it: the
            // saved bytes are freed here, not on a PMD (bounded wait).
            let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
            while Arc::strong_count(&p) > 1 && std::time::Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Some(p.stats())
    }

    /// What the lazy restore under way did so far.
    pub fn restore_progress(&self) -> Option<LazyStats> {
        self.inner.pending.load().as_ref().map(|p| p.stats())
    }

    pub(super) fn remove_key(&self, k: &ConnKey, conn: &Arc<Conn>) {
        lock(self.shard_of(key_hash(k))).remove(k, Some(conn));
    }

    /// Makes room for one connection in `zone`: evicts a non-established
    /// entry of the shard of `k` (same zone when the zone is full).
    pub(super) fn make_room(&self, now: Nanos, hash: u64, k: &ConnKey) -> Result<(), DropReason> {
        let zone = usize::from(k.zone);
        let zone_full = self.inner.zone_limit[zone] != 0
            && (self.inner.zone_counts[zone].load(Ordering::Relaxed) as i32).max(0) as u32
                >= self.inner.zone_limit[zone];
        let global_full = self.len() >= self.inner.config.max_connections;
        if !zone_full && !global_full {
            return Ok(());
        }
        let mut shard = lock(self.shard_of(hash));
        let mut seen = 0;
        let victim = shard.find_map(|c, dir| {
            seen += 1;
            if seen > 64 {
                return Some(None);
            }
            let pick = !c.is_dead()
                && (c.expires() <= now || !c.established())
                && (!zone_full || c.keys[0].zone == k.zone);
            pick.then(|| Some((c.keys[usize::from(dir)], c.clone())))
        });
        match victim.flatten() {
            Some((key, conn)) => {
                self.kill(&conn);
                shard.remove(&key, Some(&conn));
                self.inner.stats.evictions.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            None => {
                self.inner.stats.limit_hits.fetch_add(1, Ordering::Relaxed);
                Err(DropReason::CtLimit)
            }
        }
    }

    /// Removes expired entries of shard `i`; returns how many keys went.
    /// Their memory is released through the epoch collector (a PMD's
    /// periodic sweep: it must not wait for other threads).
    pub fn sweep_shard(&self, now: Nanos, i: usize) -> usize {
        self.sweep_shard_into(now, i, &mut Unlinked::default())
    }

    fn sweep_shard_into(&self, now: Nanos, i: usize, gone: &mut Unlinked) -> usize {
        let Some(m) = self.inner.shards.get(i) else {
            return 0;
        };
        let mut shard = lock(m);
        if shard.is_empty() {
            return 0;
        }
        shard.retain(|c, _| !self.reap(now, c), gone)
    }

    /// Removes every expired entry; the calling thread (not a PMD) frees
    /// them after a grace period (see [`Unlinked`]).
    pub fn sweep(&self, now: Nanos) -> usize {
        let mut gone = Unlinked::default();
        let n = (0..self.inner.shards.len())
            .map(|i| self.sweep_shard_into(now, i, &mut gone))
            .sum();
        gone.release(
            RELEASE_WAIT,
            &self.inner.spares,
            spare_pool(&self.inner.config),
        );
        n
    }

    /// Visits every live connection once (through its original key).
    pub fn for_each(&self, mut f: impl FnMut(&Conn)) {
        // Saved connections not back yet are part of the table.
        self.finish_restore();
        for m in self.inner.shards.iter() {
            lock(m).for_each(|c, dir| {
                if dir == 0 && !c.is_dead() {
                    f(c);
                }
            });
        }
    }

    /// Removes the connections `pred` selects; returns how many. The
    /// calling thread frees them after a grace period (see [`Unlinked`]),
    /// so a flush of the control thread leaves no deferred frees to the
    /// PMDs.
    pub fn flush_where(&self, pred: impl Fn(&Conn) -> bool) -> usize {
        // Saved connections not back yet are part of the table.
        self.finish_restore();
        let mut n = 0;
        let mut gone = Unlinked::default();
        for m in self.inner.shards.iter() {
            lock(m).retain(
                |c, _| {
                    if !c.is_dead() && pred(c) {
                        self.kill(c);
                        n += 1;
                    }
                    !c.is_dead()
                },
                &mut gone,
            );
        }
        gone.release(
            RELEASE_WAIT,
            &self.inner.spares,
            spare_pool(&self.inner.config),
        );
        n
    }

    /// Removes the connections matching `filter`; returns how many.
    pub fn flush(&self, filter: &ConnFilter) -> usize {
        self.flush_where(|c| filter.matches(c))
    }
}

/// Most keys a [`CreationLog`] holds; past it the log gives up and the
/// delta is found by a scan of the table (a hand-over that stalls must
/// not grow memory without bound).
pub const CREATION_LOG_MAX: usize = 1 << 20;

/// The original keys of the connections created since
/// [`Conntrack::log_creations`](super::Conntrack::log_creations)
/// (the table records each commit while it is on): what a hand-over's
/// delta holds, without a scan of the table. Off, it costs one relaxed
/// load per new connection and no memory per connection.
///
/// Thread-safety: PMDs append under the mutex (only while on); the
/// control thread switches it and takes the keys.
#[derive(Debug, Default)]
pub struct CreationLog {
    pub(super) on: AtomicBool,
    pub(super) keys: Mutex<Option<Vec<ConnKey>>>,
}

impl CreationLog {
    /// Records a new connection's original key (called by the table).
    #[inline]
    pub(super) fn record(&self, k: &ConnKey) {
        if self.on.load(std::sync::atomic::Ordering::Relaxed) {
            self.push(k);
        }
    }

    #[cold]
    fn push(&self, k: &ConnKey) {
        let mut g = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = g.as_mut() {
            if v.len() < CREATION_LOG_MAX {
                v.push(*k);
            } else {
                // Overflowed: the taker falls back to a scan.
                *g = None;
                self.on.store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Parts of a [`ChangeLog`] (PMDs that record at once contend on one in
/// this many, by key hash).
const CHANGE_LOG_PARTS: usize = 64;

/// Most keys a [`ChangeLog`] holds between two takes; past it the log
/// gives up and the saver's next round scans the table instead. The
/// queues are allocated when the log is first switched on (a sluiced with
/// a `state_file`): 2^18 keys of 16 bytes, 6 MiB with the queues' stamps.
pub const CHANGE_LOG_MAX: usize = 1 << 18;

type ChangeQueue = crossbeam::queue::ArrayQueue<ConnKey>;

/// The original keys of the connections created, killed (expired,
/// evicted, flushed) or changed in a field a crash restore needs (a TCP
/// state, the first reply, a mark or label write: the entry's locked hit
/// path) since the last take, while on: what the state saver looks at in
/// a round, so that its cost follows the changes instead of the table.
/// A key may appear more than once, or for a change that was none. Off,
/// it costs one relaxed load per event; on, one push onto a bounded
/// lock-free queue (no lock, no allocation: the queues are allocated by
/// the saver when it first switches the log on).
///
/// Ordering (what makes a round exact): a key is recorded *after* the
/// change it names is visible in the table (a new connection once its
/// original key is published, a killed one once it is marked dead, a
/// locked-path change before the entry's lock is released), so a taker
/// that looks a taken key up finds the change. A record before that
/// would let a round look the key up too early, find nothing, and never
/// look again (`tests::a_round_between_record_and_publish_…`).
///
/// Overflow: a push onto a full part sets `overflowed`; since only the
/// taker pops, a part that overflowed before a take is still full when the
/// take looks at it, so that take, or (for a push that fails while it
/// drains) the next one, gives up and the round scans.
///
/// Switching on: a change made just as the log comes on may be neither
/// recorded (its `on` load was early) nor seen by the scan that follows
/// (its store late): the switch marks the log `fresh`, and the first scan
/// after it passes each connection's entry lock before reading it (and
/// holds each shard's lock to list it, as every scan does), which orders
/// it after every change made under those locks, or that change after
/// the switch, and so recorded.
///
/// Thread-safety: PMDs push onto one of [`CHANGE_LOG_PARTS`] bounded
/// MPMC queues (`crossbeam::queue::ArrayQueue`, by key hash); the saver
/// thread alone switches the log and takes (pops) the keys. A PMD waits
/// for the saver only in the queue's own corner case: a part that is full
/// while the saver is popping the very slot the push wraps onto.
#[derive(Debug, Default)]
pub struct ChangeLog {
    pub(super) on: AtomicBool,
    /// Set when a push found its part full: the taker must scan.
    pub(super) overflowed: AtomicBool,
    /// Switched on since the last scan began (see [`ChangeLog::take_fresh`]).
    fresh: AtomicBool,
    /// Allocated by the first [`ChangeLog::switch`] on.
    parts: std::sync::OnceLock<Box<[ChangeQueue]>>,
}

impl ChangeLog {
    /// Records a connection's original key (called by the table and the
    /// locked hit path, once the change is visible in the table).
    #[inline]
    pub(super) fn record(&self, k: &ConnKey) {
        // The change is stored before `on` is read (see "Switching on").
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        if self.on.load(Ordering::Relaxed) {
            self.push(k);
        }
    }

    #[cold]
    fn push(&self, k: &ConnKey) {
        let Some(parts) = self.parts.get() else {
            return;
        };
        let part = &parts[(key_hash(k) as usize) % CHANGE_LOG_PARTS];
        if part.push(*k).is_err() {
            self.overflowed.store(true, Ordering::SeqCst);
        }
    }

    /// Pops what each part held when it was reached (keys pushed while it
    /// drains stay for the next take); true when a part was full.
    fn drain(&self, mut f: impl FnMut(ConnKey)) -> bool {
        let mut full = false;
        for p in self.parts.get().map_or(&[][..], |p| &p[..]) {
            full |= p.is_full();
            for _ in 0..p.len() {
                match p.pop() {
                    Some(k) => f(k),
                    None => break,
                }
            }
        }
        full
    }

    /// Switches the log on (emptied) or off. Only the saver thread
    /// switches and takes.
    pub(super) fn switch(&self, on: bool) {
        if !on {
            self.on.store(false, Ordering::SeqCst);
            self.drain(|_| {});
            self.overflowed.store(false, Ordering::SeqCst);
            return;
        }
        if !self.on.load(Ordering::SeqCst) {
            self.parts.get_or_init(|| {
                (0..CHANGE_LOG_PARTS)
                    .map(|_| ChangeQueue::new(CHANGE_LOG_MAX / CHANGE_LOG_PARTS))
                    .collect()
            });
            self.fresh.store(true, Ordering::SeqCst);
            self.on.store(true, Ordering::SeqCst);
        }
        // Already on, it stays on (no change goes unrecorded meanwhile):
        // what it holds is dropped, as the scan that follows finds it.
        self.drain(|_| {});
        self.overflowed.swap(false, Ordering::SeqCst);
    }

    /// True once after the log came on: the scan that follows must pass
    /// each connection's entry lock (see "Switching on").
    pub(super) fn take_fresh(&self) -> bool {
        self.fresh.swap(false, Ordering::SeqCst)
    }

    /// The keys recorded since the last take (the log stays on); `None`
    /// when it was off or overflowed (then only a scan finds what
    /// changed; [`ChangeLog::switch`] on empties it for the next round).
    pub(super) fn take(&self) -> Option<Vec<ConnKey>> {
        if !self.on.load(Ordering::SeqCst) {
            return None;
        }
        let mut out = Vec::new();
        let full = self.drain(|k| out.push(k));
        if self.overflowed.swap(false, Ordering::SeqCst) || full {
            return None;
        }
        Some(out)
    }
}
