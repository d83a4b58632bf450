//! The per-PMD handle ([`ConntrackHandle`]): the `ct(...)` hook, the slow
//! path that creates connections (NAT planning, Service decisions, SNAT
//! port allocation), related ICMP errors and the periodic sweep.
//!
//! What it owns: one PMD's connection cache, its random state for endpoint
//! and port choices, its place in the round-robin shard sweep (one
//! shard per [`super::SWEEP_INTERVAL_NS`]) and the last stage of the bulk
//! lookup's prefetch: the hints of the two packets before, so that a packet
//! that misses the cache has its connection in flight (read from the
//! table's words under an epoch pin) one packet before it is tracked.
//!
//! Invariants: a cache hit on a dead or expired connection falls back to
//! the shared table, so a packet never gets a killed connection's state or
//! translation; [`nat_pick`] is the single place explicit `nat` ranges are
//! chosen, shared with `trace`, so the two agree.
//!
//! Thread-safety: one handle per PMD, `Send`, never shared; it reaches the
//! shared table through its [`Conntrack`] clone.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::cache::CacheCounters;
use super::cache::{CacheStats, ConnCache};
use super::entry::{Conn, ConnKey, CtMarks, Marks, ProtoState};
use super::hit::{hit_conn, hit_fast, hit_locked, Hit, Verdict};
use super::lb::{LbDecision, LbQuery, LbRef};
use super::lock;
use super::nat::{Parsed, Tuple, L4};
use super::table::{key_hash, Conntrack};
use super::tcp::TcpConn;
use super::SWEEP_INTERVAL_NS;
use super::{nat, tcp};
use crate::drop::DropReason;
use crate::flow::action::{CtAction, NatKind, NatSpec};
use crate::flow::key::{ct_state, extract_with_layout, ipproto, Field, FlowKey};
use crate::packet::PacketBuf;
use crate::pipeline::hooks::{ConntrackHook, Prefetch};
use crate::time::Nanos;

/// A PMD's handle on the connection table: the `ct(...)` hook, with the
/// PMD's connection cache.
#[derive(Debug)]
pub struct ConntrackHandle {
    pub(super) ct: Conntrack,
    pub(super) last_sweep: Nanos,
    pub(super) next_shard: usize,
    pub(super) rng: u64,
    /// Re-tracking a packet after losing a commit race.
    pub(super) retrying: bool,
    pub(super) cache: ConnCache,
    /// The zone of this PMD's last `ct(...)`: the zone prefetch hints
    /// assume (see [`ConntrackHook::prefetch`]).
    pub(super) last_zone: u16,
    /// Allocations the next new connections are written into (the last
    /// one next): taken from the table's pool of recycled ones
    /// [`super::SPARE_BATCH`] at a time, or allocated, and the next one
    /// prefetched after each creation, so that a creation neither waits
    /// for cold memory nor, when the pool has some, calls the allocator.
    /// Never published; placeholders until used.
    pub(super) spares: Vec<Arc<Conn>>,
    /// The bulk lookup's last stage (see [`ConntrackHook::prefetch`]):
    /// the table hash of the packet whose `Prefetch::Entry` hint came
    /// `n` calls ago, at `n % 2`, when it missed the cache (0: none), and
    /// the number of such hints.
    pub(super) behind: [Cell<u64>; 2],
    pub(super) entry_hints: Cell<usize>,
}

/// What an explicit `nat(src=|dst=ADDRS[:PORTS])` picks for a new
/// connection whose original tuple is `t`: an address of the range and,
/// for DNAT, a port, both by a hash of the source (so a retransmitted
/// first packet gets the same answer). SNAT ports are not picked here:
/// they are allocated from the range at commit. Shared by the datapath
/// and `trace`, which must agree.
pub(crate) fn nat_pick(
    t: &Tuple,
    kind: NatKind,
    addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    ports: Option<(u16, u16)>,
) -> (Option<u32>, Option<u16>) {
    let h = (u64::from(t.src) << 16 | u64::from(t.sport)).wrapping_mul(0x9e37_79b9);
    let ip = addrs.map(|(a, b)| {
        let (a, b) = (u32::from(a), u32::from(b.max(a)));
        a + (h % (u64::from(b - a) + 1)) as u32
    });
    let port = match (kind, ports) {
        (NatKind::Dst, Some((a, b))) => Some(a + (h % (u64::from(b.saturating_sub(a)) + 1)) as u16),
        _ => None,
    };
    (ip, port)
}

/// NAT plan for a new connection.
pub(super) struct Plan {
    pub(super) reply: Tuple,
    pub(super) nat: u8,
    pub(super) lb: Option<LbRef>,
    /// Source-port range to allocate the reply destination port from.
    pub(super) sport_range: Option<(u16, u16)>,
}

impl ConntrackHandle {
    /// The shared table.
    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    /// This PMD's connection-cache counters, shared with `pmd-stats-show`.
    pub fn cache_counters(&self) -> Arc<CacheCounters> {
        self.cache.counters()
    }

    /// Hits and misses of this PMD's connection cache.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Entries of this PMD's connection cache.
    pub fn cache_capacity(&self) -> usize {
        self.cache.capacity()
    }

    pub(super) fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[inline]
    pub(super) fn maybe_sweep(&mut self, now: Nanos) {
        if now.saturating_sub(self.last_sweep) >= SWEEP_INTERVAL_NS {
            self.sweep(now);
        }
    }

    /// One step of the round-robin sweep (see [`SWEEP_INTERVAL_NS`]).
    #[cold]
    fn sweep(&mut self, now: Nanos) {
        self.last_sweep = now;
        let n = self.ct.inner.shards.len();
        self.ct.sweep_shard(now, self.next_shard % n);
        if let Some(s) = &self.ct.inner.services {
            s.expire_affinity(now, self.next_shard);
        }
        self.next_shard = (self.next_shard + 1) % n;
    }

    /// Runs `ct` over `pkt`, returning the `ct_state` bits and, when the
    /// packet belongs to a connection, its mark.
    pub(super) fn track<B: PacketBuf>(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
    ) -> Result<(u8, CtMarks, Verdict), DropReason> {
        let inv = Ok((
            ct_state::TRK | ct_state::INV,
            CtMarks::ZERO,
            Verdict::Tracked,
        ));
        let p = match nat::parse(pkt.data()) {
            Ok(p) => p,
            Err(_) => {
                self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
                return inv;
            }
        };
        if let L4::IcmpError { .. } = p.kind {
            return self.related(now, ct, pkt, &p);
        }
        let key = ConnKey {
            zone: ct.zone,
            proto: p.proto,
            tuple: p.tuple,
        };
        let seg = if p.proto == ipproto::TCP {
            match nat::tcp_segment(pkt.data(), &p) {
                Some(s) => Some(s),
                None => {
                    self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
                    return inv;
                }
            }
        } else {
            None
        };
        let len = (p.end - p.l3) as u64;
        let hash = key_hash(&key);
        // The hit path: the PMD's cache, then the shared table (which
        // fills the cache). No allocation; no lock unless the packet
        // changes the connection's state or misses the cache.
        let cfg = &self.ct.inner.config;
        if let Some((conn, dir)) = self.cache.lookup(&key, hash) {
            // `hit_conn`, with the steady case finished here: its result
            // goes straight to the rewrite instead of through the
            // `Hit` the locked path returns in memory (a store-forwarding
            // stall on every packet when the two joined).
            let fast = hit_fast(cfg, now, ct, seg.as_ref(), len, dir, conn);
            if let Some(Hit::Tracked(st, mark, target)) = fast {
                self.cache.count(true);
                return match target {
                    Some(target) => {
                        nat::rewrite(pkt.data_mut(), &p, target)?;
                        Ok((st, mark, Verdict::Rewritten(target)))
                    }
                    None => Ok((st, mark, Verdict::Tracked)),
                };
            }
            let hit = match fast {
                Some(hit) => hit,
                None => {
                    let log = &self.ct.inner.changed;
                    hit_locked(cfg, now, ct, seg.as_ref(), len, dir, conn, log)
                }
            };
            match hit {
                Hit::Gone => self.cache.forget(&key, hash),
                hit => {
                    self.cache.count(true);
                    return self.finish_hit(now, ct, pkt, &p, key, seg, hit);
                }
            }
        }
        self.cache.count(false);
        // The shared table, lock-free: a live connection whose packet
        // changes no state is tracked under the epoch pin, with no
        // reference count taken unless the cache keeps it (see
        // `ConnCache::offer`).
        let found = {
            let guard = crossbeam::epoch::pin();
            match self.ct.shard_of(hash).find(&key, hash, &guard) {
                Some(found) if found.conn().live(now) => {
                    let (c, dir) = (found.conn(), found.dir);
                    let hit = hit_fast(cfg, now, ct, seg.as_ref(), len, usize::from(dir), c);
                    if let Some(Hit::Tracked(..)) = hit {
                        self.cache.offer(&key, hash, dir, || found.slot().conn);
                    }
                    hit
                }
                _ => None,
            }
        };
        match found {
            // Needs the entry's lock, or not found lock-free: below.
            None => {}
            // Killed since the lookup: not found.
            Some(Hit::Gone) => return self.untracked(now, ct, pkt, &p, key, seg),
            Some(hit) => return self.finish_hit(now, ct, pkt, &p, key, seg, hit),
        }
        // A transition, or a dead or expired entry to remove: counted and
        // under the locks.
        if let Some(slot) = self.ct.lookup(now, hash, &key) {
            let hit = hit_conn(
                cfg,
                now,
                ct,
                seg.as_ref(),
                len,
                usize::from(slot.dir),
                &slot.conn,
                &self.ct.inner.changed,
            );
            self.cache.insert(&key, hash, slot);
            // `Gone`: killed since the lookup, so it counts as not found.
            if !matches!(hit, Hit::Gone) {
                return self.finish_hit(now, ct, pkt, &p, key, seg, hit);
            }
        }
        self.untracked(now, ct, pkt, &p, key, seg)
    }

    /// A packet with no live connection: invalid, new or committed.
    fn untracked<B: PacketBuf>(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        p: &Parsed,
        key: ConnKey,
        seg: Option<tcp::Segment>,
    ) -> Result<(u8, CtMarks, Verdict), DropReason> {
        let inv = Ok((
            ct_state::TRK | ct_state::INV,
            CtMarks::ZERO,
            Verdict::Tracked,
        ));
        let loose = self.ct.inner.config.tcp_loose;
        if p.proto == ipproto::TCP
            && !seg
                .as_ref()
                .is_some_and(|s| TcpConn::is_syn(s) || loose && TcpConn::can_pick_up(s))
        {
            self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
            return inv;
        }
        if p.kind == L4::Echo(false) {
            self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
            return inv;
        }
        if !ct.commit {
            return Ok((
                ct_state::TRK | ct_state::NEW,
                CtMarks::ZERO,
                Verdict::Tracked,
            ));
        }
        self.create(now, ct, pkt, p, key, seg)
    }

    /// Applies what the hit path decided.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn finish_hit<B: PacketBuf>(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        p: &Parsed,
        key: ConnKey,
        seg: Option<tcp::Segment>,
        hit: Hit,
    ) -> Result<(u8, CtMarks, Verdict), DropReason> {
        match hit {
            Hit::Tracked(st, mark, target) => match target {
                Some(target) => {
                    nat::rewrite(pkt.data_mut(), p, target)?;
                    Ok((st, mark, Verdict::Rewritten(target)))
                }
                None => Ok((st, mark, Verdict::Tracked)),
            },
            // `Gone` never reaches here: callers look again instead.
            Hit::Invalid | Hit::Gone => {
                self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
                Ok((
                    ct_state::TRK | ct_state::INV,
                    CtMarks::ZERO,
                    Verdict::Tracked,
                ))
            }
            Hit::Reopen(conn) => {
                // A new SYN on a closed connection's tuple: replace it.
                // Killed first: caches holding it fall back to the table.
                self.ct.kill(&conn);
                self.ct.remove_key(&conn.keys[0], &conn);
                self.ct.remove_key(&conn.keys[1], &conn);
                self.create(now, ct, pkt, p, key, seg)
            }
        }
    }

    /// Commits a new connection for `p` (key `key`), applying NAT; then
    /// readies the allocation of the next one.
    pub(super) fn create<B: PacketBuf>(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        p: &Parsed,
        key: ConnKey,
        seg: Option<tcp::Segment>,
    ) -> Result<(u8, CtMarks, Verdict), DropReason> {
        let r = self.create_conn(now, ct, pkt, p, key, seg);
        self.refill_spare();
        r
    }

    /// Makes sure a spare allocation is at hand (see `spares`) and starts
    /// loading the lines of the next one.
    fn refill_spare(&mut self) {
        if self.spares.is_empty() {
            self.ct.take_spares(&mut self.spares);
        }
        let Some(a) = self.spares.last() else { return };
        let p = Arc::as_ptr(a).cast::<u8>();
        // The reference counts sit just before the connection.
        crate::classifier::prefetch(p.wrapping_sub(16));
        for line in (0..std::mem::size_of::<Conn>()).step_by(64) {
            crate::classifier::prefetch(p.wrapping_add(line));
        }
    }

    fn create_conn<B: PacketBuf>(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        p: &Parsed,
        key: ConnKey,
        seg: Option<tcp::Segment>,
    ) -> Result<(u8, CtMarks, Verdict), DropReason> {
        let plan = match self.plan(now, ct, p) {
            Ok(plan) => plan,
            Err(Some(reason)) => return Err(reason),
            Err(None) => {
                // Service reject: answer with ICMP port unreachable.
                self.ct.inner.stats.rejects.fetch_add(1, Ordering::Relaxed);
                nat::make_port_unreachable(pkt, p).ok_or(DropReason::ServiceReject)?;
                return Ok((
                    ct_state::TRK | ct_state::REL | ct_state::RPL,
                    CtMarks::ZERO,
                    Verdict::Reextract,
                ));
            }
        };
        // The reply key's slot is a cold line: start loading it now.
        self.ct.prefetch_slot(key_hash(&ConnKey {
            zone: key.zone,
            proto: key.proto,
            tuple: plan.reply,
        }));
        let hash = key_hash(&key);
        self.ct.make_room(now, hash, &key)?;
        let bytes = (p.end - p.l3) as u64;
        let proto = match seg {
            Some(s) if TcpConn::is_syn(&s) => ProtoState::Tcp(TcpConn::new(&s)),
            Some(s) => ProtoState::Tcp(TcpConn::picked_up(&s)),
            None if p.proto == ipproto::ICMP => ProtoState::Icmp,
            None => ProtoState::Other,
        };
        let marks = CtMarks::ZERO.apply(ct);
        let conn = Conn {
            keys: [
                key,
                ConnKey {
                    zone: key.zone,
                    proto: key.proto,
                    tuple: plan.reply,
                },
            ],
            nat: plan.nat,
            lb: plan.lb,
            proto,
            dead: AtomicBool::new(false),
            replied: AtomicBool::new(false),
            expires: AtomicU64::new(0),
            packets: [AtomicU64::new(1), AtomicU64::new(0)],
            bytes: [AtomicU64::new(bytes), AtomicU64::new(0)],
            marks: Marks::new(marks),
            lock: Mutex::new(()),
        };
        conn.expires.store(
            now + conn.timeout(&self.ct.inner.config.timeouts),
            Ordering::Relaxed,
        );
        let nat_bits = conn.nat;
        // Unpublished until a key is inserted: uniquely owned, so the
        // reply key can still be changed in place (`Arc::get_mut`).
        if self.spares.is_empty() {
            self.ct.take_spares(&mut self.spares);
        }
        let mut arc = self
            .spares
            .pop()
            .unwrap_or_else(|| Arc::new(Conn::placeholder()));
        match Arc::get_mut(&mut arc) {
            Some(spare) => *spare = conn,
            None => arc = Arc::new(conn),
        }
        // Reserve the reply key first (allocating a port when asked), then
        // publish the original key.
        let mut reply = plan.reply;
        let attempts = match plan.sport_range {
            Some((a, b)) => u32::from(b - a) + 1,
            None => 1,
        }
        .min(128);
        let mut reserved = false;
        let start = self.next_rand() as u32;
        for i in 0..attempts {
            if let Some((a, b)) = plan.sport_range {
                let span = u32::from(b - a) + 1;
                let start = start % span;
                reply.dport = a + ((start + i) % span) as u16;
                if p.proto == ipproto::ICMP {
                    reply.sport = reply.dport;
                }
            }
            let rk = ConnKey {
                zone: key.zone,
                proto: key.proto,
                tuple: reply,
            };
            if rk == key && plan.sport_range.is_none() {
                // Both directions would be one table key: not a full
                // table, a packet sent to itself.
                return Err(DropReason::CtSelfAddressed);
            }
            // A failed attempt leaves no clone behind, so this succeeds.
            let Some(unpublished) = Arc::get_mut(&mut arc) else {
                return Err(DropReason::CtLimit);
            };
            unpublished.keys[1] = rk;
            match self.ct.try_insert(now, rk, &arc, 1) {
                Ok(()) => {
                    reserved = true;
                    break;
                }
                // The connection's address cannot be indexed (see
                // `shard`): refuse it like a full table.
                Err(None) => return Err(DropReason::CtLimit),
                Err(Some(other)) => {
                    // Another PMD is committing this very connection:
                    // track the packet against its entry.
                    let hit = (other.keys[0] == key).then(|| {
                        let cfg = &self.ct.inner.config;
                        let log = &self.ct.inner.changed;
                        hit_conn(cfg, now, ct, seg.as_ref(), bytes, 0, &other, log)
                    });
                    if let Some(hit) = hit {
                        if matches!(hit, Hit::Reopen(_)) || self.retrying {
                            return Err(DropReason::CtLimit);
                        }
                        self.retrying = true;
                        let r = match hit {
                            // Killed meanwhile: track the packet afresh.
                            Hit::Gone => self.track(now, ct, pkt),
                            hit => self.finish_hit(now, ct, pkt, p, key, seg, hit),
                        };
                        self.retrying = false;
                        return r;
                    }
                }
            }
        }
        if !reserved {
            return Err(if plan.sport_range.is_some() {
                DropReason::CtNatExhausted
            } else {
                // The reply tuple is taken by another connection.
                self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
                return Ok((
                    ct_state::TRK | ct_state::INV,
                    CtMarks::ZERO,
                    Verdict::Tracked,
                ));
            });
        }
        // Published under the reply key: count it now, so that a kill
        // (flush) finding it there balances these counts whenever it runs.
        self.ct.count_in(&arc, 1);
        #[cfg(test)]
        self.ct.before_publish();
        if self.ct.try_insert(now, key, &arc, 0).is_ok() {
            // Recorded for the state saver once a look-up finds it.
            self.ct.published(&arc);
        } else {
            // Another PMD committed the same connection a moment ago:
            // withdraw ours and track the packet against theirs (once).
            self.ct.remove_key(&arc.keys[1], &arc);
            if !arc.dead.swap(true, Ordering::SeqCst) {
                self.ct.count_in(&arc, -1);
                if self.retrying {
                    return Err(DropReason::CtLimit);
                }
                self.retrying = true;
                let r = self.track(now, ct, pkt);
                self.retrying = false;
                return r;
            }
            // A flush killed ours first, through its reply key, and took
            // this packet's count with it: the packet was tracked by a
            // connection created and removed at once; do not count it
            // again against theirs.
        }
        self.ct.inner.stats.created.fetch_add(1, Ordering::Relaxed);
        if let Some(lb) = &arc.lb {
            lb.stats.connections.fetch_add(1, Ordering::Relaxed);
        }
        // Not cached yet: a connection's second packet fills this PMD's
        // cache from the table (lock-free). Filling it here would evict
        // another connection (a cold reference-count write) for every new
        // connection, most of which, in a flood of one-packet connections,
        // never send a second packet.
        let mut verdict = Verdict::Tracked;
        if nat_bits != 0 {
            nat::rewrite(pkt.data_mut(), p, reply.reverse())?;
            verdict = Verdict::Rewritten(reply.reverse());
        }
        Ok((ct_state::TRK | ct_state::NEW | nat_bits, marks, verdict))
    }

    /// Decides the reply tuple of a new connection. `Err(None)` asks for
    /// a Service reject.
    pub(super) fn plan(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        p: &Parsed,
    ) -> Result<Plan, Option<DropReason>> {
        let t = p.tuple;
        let mut plan = Plan {
            reply: t.reverse(),
            nat: 0,
            lb: None,
            sport_range: None,
        };
        let Some(spec) = &ct.nat else {
            return Ok(plan);
        };
        match spec {
            NatSpec {
                kind: Some(kind),
                addrs,
                ports,
            } => {
                let (ip, port) = nat_pick(&t, *kind, *addrs, *ports);
                match kind {
                    NatKind::Dst => {
                        if let Some(ip) = ip {
                            plan.reply.src = ip;
                        }
                        if let Some(port) = port {
                            plan.reply.sport = port;
                        }
                        plan.nat = ct_state::DNAT;
                    }
                    NatKind::Src => {
                        if let Some(ip) = ip {
                            plan.reply.dst = ip;
                        }
                        if let Some((a, b)) = ports {
                            plan.sport_range = Some((*a, (*b).max(*a)));
                        }
                        plan.nat = ct_state::SNAT;
                    }
                }
                Ok(plan)
            }
            NatSpec { kind: None, .. } => {
                let r = self.next_rand();
                let Some(services) = &self.ct.inner.services else {
                    return Ok(plan);
                };
                if !matches!(p.kind, L4::Ports) {
                    return Ok(plan);
                }
                let q = LbQuery {
                    proto: p.proto,
                    src: t.src,
                    dst: t.dst,
                    dport: t.dport,
                };
                match services.choose(now, q, r, true) {
                    LbDecision::NotService => Ok(plan),
                    LbDecision::Reject => Err(None),
                    LbDecision::Drop(reason) => Err(Some(reason)),
                    LbDecision::Forward(target) => {
                        plan.reply.src = target.ip;
                        plan.reply.sport = target.port;
                        plan.nat = ct_state::DNAT;
                        if let Some(masq) = target.masquerade {
                            plan.reply.dst = masq;
                            plan.nat |= ct_state::SNAT;
                            plan.sport_range = Some(self.ct.inner.config.masquerade_ports);
                        }
                        plan.lb = Some(target.lb);
                        Ok(plan)
                    }
                }
            }
        }
    }

    /// An ICMP error: related to the connection of its embedded packet.
    pub(super) fn related<B: PacketBuf>(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        p: &Parsed,
    ) -> Result<(u8, CtMarks, Verdict), DropReason> {
        let inv = Ok((
            ct_state::TRK | ct_state::INV,
            CtMarks::ZERO,
            Verdict::Tracked,
        ));
        let Ok(inner) = nat::parse_embedded(pkt.data(), p) else {
            self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
            return inv;
        };
        // The embedded packet went the other way: its reverse is the
        // tuple of the error's own direction.
        let key = ConnKey {
            zone: ct.zone,
            proto: inner.proto,
            tuple: inner.tuple.reverse(),
        };
        let Some(slot) = self.ct.lookup(now, key_hash(&key), &key) else {
            self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
            return inv;
        };
        let dir = usize::from(slot.dir);
        let c = &slot.conn;
        let mut st = ct_state::TRK | ct_state::REL | c.nat;
        if dir == 1 {
            st |= ct_state::RPL;
        }
        // The embedded packet becomes what its sender originally sent.
        let inner_to = c.keys[1 - dir].tuple;
        let (mark, nat) = (c.marks(), c.nat != 0 && ct.nat.is_some());
        self.ct.inner.stats.related.fetch_add(1, Ordering::Relaxed);
        if nat {
            nat::rewrite_icmp_error(pkt.data_mut(), p, &inner, inner_to)?;
            return Ok((st, mark, Verdict::Reextract));
        }
        Ok((st, mark, Verdict::Tracked))
    }
}

/// Fields the key keeps across a re-extraction (metadata, not headers).
pub(super) const META_FIELDS: [Field; 16] = [
    Field::InPort,
    Field::RecircId,
    Field::TunId,
    Field::TunSrc,
    Field::TunDst,
    Field::TunGnvClass,
    Field::TunGnvType,
    Field::TunMetadata0,
    Field::Reg0,
    Field::Reg1,
    Field::Reg2,
    Field::Reg3,
    Field::Reg4,
    Field::Reg5,
    Field::Reg6,
    Field::Reg7,
];

/// The key word of `nw_src` (bits 0..32) and `nw_dst` (32..64).
const NW_WORD: usize = 3;
/// The key word of `tp_src` (bits 0..16), `tp_dst` (16..32), `ct_zone`
/// (32..48), `ct_state` (48..56) and `recirc_id` (56..64).
const TP_CT_WORD: usize = 4;

/// `key.set` of `nw_src` and `nw_dst` (and, for TCP, UDP and SCTP, of
/// `tp_src` and `tp_dst`) to `t`, as one store per key word (the
/// layout is checked by `tests::tuple_and_ct_words_are_the_fields`).
#[inline]
fn set_tuple(key: &mut FlowKey, t: Tuple) {
    key.w[NW_WORD] = u64::from(t.src) | u64::from(t.dst) << 32;
    if matches!(key.nw_proto(), ipproto::TCP | ipproto::UDP | ipproto::SCTP) {
        let w = &mut key.w[TP_CT_WORD];
        *w = (*w & !0xffff_ffff) | u64::from(t.sport) | u64::from(t.dport) << 16;
    }
}

/// `key.set` of `ct_state` and `ct_zone`, as one store.
#[inline]
fn set_ct_state_zone(key: &mut FlowKey, st: u8, zone: u16) {
    let w = &mut key.w[TP_CT_WORD];
    *w = (*w & !(0xff_ffff << 32)) | u64::from(zone) << 32 | u64::from(st) << 48;
}

impl<B: PacketBuf> ConntrackHook<B> for ConntrackHandle {
    fn conntrack(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        key: &mut FlowKey,
    ) -> Result<(), DropReason> {
        self.maybe_sweep(now);
        self.last_zone = ct.zone;
        let (st, mark, verdict) = self.track(now, ct, pkt)?;
        match verdict {
            Verdict::Tracked => {}
            // NAT: patch the translated fields (no second parse).
            Verdict::Rewritten(t) => set_tuple(key, t),
            // A rebuilt packet: extract again, keeping the metadata.
            Verdict::Reextract => {
                let (mut k, _) = extract_with_layout(pkt.data(), key.in_port());
                for f in META_FIELDS {
                    k.set(f, key.get(f));
                }
                k.set(Field::Metadata, key.get(Field::Metadata));
                *key = k;
            }
        }
        set_ct_state_zone(key, st, ct.zone);
        key.set(Field::CtMark, u128::from(mark.mark));
        key.set(Field::CtLabel, mark.label);
        Ok(())
    }

    #[inline]
    fn prefetch(&self, key: &FlowKey, stage: Prefetch) {
        if let Some(hash) = self.prefetch_hash(key) {
            match stage {
                Prefetch::Bucket => self.cache.prefetch_set(hash),
                Prefetch::Entry => {
                    // Not in the cache (a new connection, or one this PMD
                    // has not cached): the table slot its lookup probes,
                    // and two hints later, when that slot has arrived and
                    // the packet is next, the connection it points to.
                    let n = self.entry_hints.get().wrapping_add(1);
                    self.entry_hints.set(n);
                    let cached = self.cache.prefetch_conn(hash);
                    if !cached {
                        self.ct.prefetch_slot(hash);
                    }
                    let ready = self.behind[n % 2].replace(if cached { 0 } else { hash });
                    if ready != 0 {
                        self.ct.prefetch_conns(ready, &crossbeam::epoch::pin());
                    }
                }
            }
        }
    }
}

impl ConntrackHandle {
    /// The table hash the packet of `key` would be looked up with, if it
    /// is an unfragmented IPv4 TCP, UDP or SCTP packet, assuming the zone
    /// of this PMD's last `ct` (a prefetch hint: a wrong guess costs a
    /// useless load, never a wrong answer).
    #[inline]
    fn prefetch_hash(&self, key: &FlowKey) -> Option<u64> {
        if key.dl_type() != 0x0800
            || !matches!(key.nw_proto(), ipproto::TCP | ipproto::UDP | ipproto::SCTP)
            || key.get(Field::IpFrag) != 0
        {
            return None;
        }
        Some(key_hash(&ConnKey {
            zone: self.last_zone,
            proto: key.nw_proto(),
            tuple: Tuple {
                src: key.get(Field::NwSrc) as u32,
                dst: key.get(Field::NwDst) as u32,
                sport: key.get(Field::TpSrc) as u16,
                dport: key.get(Field::TpDst) as u16,
            },
        }))
    }
}

impl Conntrack {
    /// A per-PMD handle; `seed` varies endpoint selection between PMDs.
    pub fn handle(&self, seed: u64) -> ConntrackHandle {
        ConntrackHandle {
            ct: self.clone(),
            last_sweep: 0,
            next_shard: 0,
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            retrying: false,
            last_zone: 0,
            spares: Vec::with_capacity(super::SPARE_BATCH),
            behind: [Cell::new(0), Cell::new(0)],
            entry_hints: Cell::new(0),
            cache: {
                let c = ConnCache::new(self.inner.config.cache_entries);
                lock(&self.inner.caches).push(c.counters());
                c
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The one-store writes of the hook give the key `key.set` gives,
        /// other fields (`recirc_id` in the same word) untouched.
        #[test]
        fn tuple_and_ct_words_are_the_fields(
            words in proptest::collection::vec(any::<u64>(), crate::flow::key::KEY_WORDS),
            proto in prop_oneof![Just(ipproto::TCP), Just(ipproto::UDP), Just(ipproto::SCTP), Just(ipproto::ICMP), any::<u8>()],
            src in any::<u32>(), dst in any::<u32>(), sport in any::<u16>(), dport in any::<u16>(),
            st in any::<u8>(), zone in any::<u16>(),
        ) {
            let mut key = FlowKey::ZERO;
            key.w.copy_from_slice(&words);
            key.set(Field::NwProto, u128::from(proto));
            let t = Tuple { src, dst, sport, dport };
            let mut want = key;
            want.set(Field::NwSrc, u128::from(src));
            want.set(Field::NwDst, u128::from(dst));
            if matches!(proto, ipproto::TCP | ipproto::UDP | ipproto::SCTP) {
                want.set(Field::TpSrc, u128::from(sport));
                want.set(Field::TpDst, u128::from(dport));
            }
            want.set(Field::CtState, u128::from(st));
            want.set(Field::CtZone, u128::from(zone));
            set_tuple(&mut key, t);
            set_ct_state_zone(&mut key, st, zone);
            prop_assert_eq!(key.w, want.w);
        }
    }
}
