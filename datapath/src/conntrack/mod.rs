//! Connection tracking and NAT behind the `ct(...)` action.
//!
//! What it owns: the connection table ([`Conntrack`]), one entry per
//! committed connection, found by the on-wire tuple of either direction
//! (`(zone, proto, src, dst, sport, dport)`; ICMP echo uses the id as both
//! ports). An entry holds both tuples, so NAT is symmetric: a packet in one
//! direction is rewritten to the reverse of the *other* direction's tuple
//! ([`nat`] does the bytes and the incremental checksums). TCP follows a
//! kernel-like state machine with window checks ([`tcp`]); UDP, SCTP and
//! other protocols are "unreplied / replied"; ICMP echo pairs by id, and an
//! ICMP error whose embedded packet belongs to a connection is `+rel` and
//! reverse-translated, embedded packet included.
//!
//! `ct_state` semantics (OVS): `+trk` always; `+inv` for packets that
//! cannot be tracked (not IPv4, malformed, fragments, out-of-window TCP,
//! TCP without SYN and without an entry, echo replies without a request);
//! `+new` until the connection saw a reply, then `+est`; `+rpl` in the
//! reply direction; `+rel` for ICMP errors of a connection (and for the
//! ICMP port-unreachable a Service reject generates); `+snat`/`+dnat` when
//! the entry translates. `ct(commit)` stores the connection; without
//! `commit` a new connection is reported `+new` and forgotten. NAT is
//! applied only by a `ct` action that has `nat`. A committing action's
//! `exec(set_field:V/M->ct_mark,set_field:V/M->ct_label)` writes the
//! entry's 32-bit mark and 128-bit label, which later packets see in
//! `ct_mark` and `ct_label`.
//!
//! Services: a bare `nat` (no `src=`/`dst=`) on a new, committed
//! connection asks the [`crate::service::Services`] table installed with
//! [`Conntrack::with_services`]: if the destination is a Service frontend
//! the connection is DNATed to the chosen endpoint (and masqueraded when
//! the Service semantics say so); otherwise it is committed untranslated.
//! Established traffic never looks at the Service table again: the entry
//! carries the decision, so its cost does not depend on the number of
//! Services.
//!
//! Sharding (why not per-core): NAT makes the two directions' tuples
//! unrelated, and RSS or per-port PMD assignment sends them to different
//! cores, so a per-core table would miss replies. The table is therefore
//! global and split into [`ConntrackConfig::shards`] shards (a power of two,
//! default 256) by tuple hash, each behind its own mutex; entries sit
//! behind their own small mutex (lock order: shard, then entry). A packet
//! of a known connection takes its shard's lock and its entry's lock for
//! the lookup and the state update only (tens of nanoseconds, never across
//! the NAT rewrite), uncontended unless two PMDs hit the same shard at the
//! same instant: with 256 shards that is rare, so adding cores scales until
//! memory bandwidth does, like the per-bucket locks of OVS's userspace
//! conntrack. This is the one lock on the fast path and it is deliberate:
//! a lock-free table with two keys per entry and in-place state updates
//! was not worth its complexity here. Allocation happens only when a
//! connection is created.
//!
//! Not supported: IPv6 (`+inv`), fragment reassembly (`+inv`), TCP
//! mid-stream pickup (a non-SYN without an entry is `+inv`),
//! ALGs (FTP/TFTP helpers).
//!
//! Expiry runs on the caller's clock (`now`): an expired entry is ignored
//! and removed when looked up, and [`ConntrackHandle`] sweeps one shard per
//! [`SWEEP_INTERVAL_NS`]. Limits: a global limit and per-zone limits; at a
//! limit, one non-established entry of the same shard (and zone) is
//! evicted early, otherwise the packet is dropped under `ct_limit`.
//!
//! Thread-safety: [`Conntrack`] is a cheap `Clone` handle (`Arc`), `Send +
//! Sync`; each PMD owns one [`ConntrackHandle`] (its `ConntrackHook`).

pub mod commands;
pub mod config;
pub mod nat;
pub mod tcp;
#[cfg(test)]
pub(crate) mod tests;
pub mod trace;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashMap;

use crate::drop::DropReason;
use crate::flow::action::{CtAction, NatKind, NatSpec};
use crate::flow::key::{ct_state, extract_with_layout, ipproto, Field, FlowKey};
use crate::packet::PacketBuf;
use crate::pipeline::hooks::ConntrackHook;
use crate::pipeline::Nanos;
use crate::service::{LbDecision, LbRef, Services};
use nat::{Parsed, Tuple, L4};
use tcp::{TcpConn, TcpState};

/// How often a [`ConntrackHandle`] sweeps one shard for expired entries.
pub const SWEEP_INTERVAL_NS: Nanos = 10_000_000;

const SEC: Nanos = 1_000_000_000;

/// Per-state idle timeouts (Linux defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP SYN_SENT (120 s).
    pub tcp_syn_sent: Nanos,
    /// TCP SYN_RECV (60 s).
    pub tcp_syn_recv: Nanos,
    /// TCP ESTABLISHED (5 days).
    pub tcp_established: Nanos,
    /// TCP FIN_WAIT (120 s).
    pub tcp_fin_wait: Nanos,
    /// TCP LAST_ACK (30 s).
    pub tcp_last_ack: Nanos,
    /// TCP TIME_WAIT (120 s).
    pub tcp_time_wait: Nanos,
    /// TCP CLOSE (10 s).
    pub tcp_close: Nanos,
    /// UDP/SCTP/other before a reply (30 s).
    pub udp_first: Nanos,
    /// UDP/SCTP/other after a reply (120 s, the kernel's "stream").
    pub udp_stream: Nanos,
    /// ICMP echo (30 s).
    pub icmp: Nanos,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120 * SEC,
            tcp_syn_recv: 60 * SEC,
            tcp_established: 432_000 * SEC,
            tcp_fin_wait: 120 * SEC,
            tcp_last_ack: 30 * SEC,
            tcp_time_wait: 120 * SEC,
            tcp_close: 10 * SEC,
            udp_first: 30 * SEC,
            udp_stream: 120 * SEC,
            icmp: 30 * SEC,
        }
    }
}

/// Sizes, limits and timeouts of the connection table.
#[derive(Debug, Clone)]
pub struct ConntrackConfig {
    /// Global connection limit.
    pub max_connections: usize,
    /// Per-zone limits (`(zone, limit)`); zones not listed use
    /// `default_zone_limit`.
    pub zone_limits: Vec<(u16, u32)>,
    /// Limit for zones not in `zone_limits` (0: only the global limit).
    pub default_zone_limit: u32,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Number of shards (rounded up to a power of two).
    pub shards: usize,
    /// Source ports for masquerading (Service hairpin, NodePort).
    pub masquerade_ports: (u16, u16),
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max_connections: 1 << 20,
            zone_limits: Vec::new(),
            default_zone_limit: 0,
            timeouts: Timeouts::default(),
            shards: 256,
            masquerade_ports: (32768, 60999),
        }
    }
}

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

/// The key a connection is found by: the on-wire tuple of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Zone.
    pub zone: u16,
    /// IP protocol.
    pub proto: u8,
    /// Addresses and ports.
    pub tuple: Tuple,
}

/// Protocol state of a connection.
#[derive(Debug, Clone, Copy)]
pub enum ProtoState {
    /// TCP with its state machine.
    Tcp(TcpConn),
    /// ICMP echo.
    Icmp,
    /// UDP, SCTP and other protocols.
    Other,
}

/// A connection's `ct_mark` and `ct_label`, as the flow key sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtMarks {
    /// `ct_mark`.
    pub mark: u32,
    /// `ct_label`.
    pub label: u128,
}

impl CtMarks {
    /// No mark, no label.
    pub const ZERO: CtMarks = CtMarks { mark: 0, label: 0 };
}

/// One tracked connection.
#[derive(Debug)]
pub struct Conn {
    /// Tuples of the original (0) and reply (1) direction, as on the wire
    /// before translation.
    pub keys: [ConnKey; 2],
    /// Protocol state.
    pub proto: ProtoState,
    /// A reply has been seen.
    pub replied: bool,
    /// Expiry time.
    pub expires: Nanos,
    /// `ct_mark`.
    pub mark: u32,
    /// `ct_label`.
    pub label: u128,
    /// `ct_state::SNAT` / `ct_state::DNAT` bits.
    pub nat: u8,
    /// The Service endpoint this connection was balanced to.
    pub lb: Option<LbRef>,
    /// Packets per direction.
    pub packets: [u64; 2],
    /// Bytes per direction.
    pub bytes: [u64; 2],
    /// Removed from the table (the other direction's key may linger until
    /// swept).
    dead: bool,
}

impl Conn {
    fn marks(&self) -> CtMarks {
        CtMarks {
            mark: self.mark,
            label: self.label,
        }
    }

    fn established(&self) -> bool {
        match self.proto {
            ProtoState::Tcp(t) => t.state == TcpState::Established,
            _ => self.replied,
        }
    }

    fn timeout(&self, t: &Timeouts) -> Nanos {
        match self.proto {
            ProtoState::Tcp(c) => c.state.timeout(t),
            ProtoState::Icmp => t.icmp,
            ProtoState::Other if self.replied => t.udp_stream,
            ProtoState::Other => t.udp_first,
        }
    }

    /// State name for dumps and stats.
    pub fn state_name(&self) -> &'static str {
        match self.proto {
            ProtoState::Tcp(c) => c.state.name(),
            _ if self.replied => "REPLIED",
            _ => "UNREPLIED",
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    conn: Arc<Mutex<Conn>>,
    dir: u8,
}

type Shard = HashMap<ConnKey, Slot>;

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    mask: usize,
    config: ConntrackConfig,
    zone_limit: Box<[u32]>,
    count: AtomicUsize,
    zone_counts: Box<[AtomicU32]>,
    stats: ConntrackStats,
    services: Option<Services>,
}

/// The connection table, shared by all PMDs and the control thread.
#[derive(Clone)]
pub struct Conntrack {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("connections", &self.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a conntrack lock leaves consistent data (every
    // update is a plain field store), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    fn matches(&self, c: &Conn) -> bool {
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

/// A read-only view of a connection, for `trace` ([`Conntrack::peek`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnPeek {
    /// 0: the key is the original direction's; 1: the reply's.
    pub dir: u8,
    /// The `ct_state` bits the packet would get.
    pub state: u8,
    /// `ct_mark` and `ct_label`.
    pub marks: CtMarks,
    /// `ct_state::SNAT`/`DNAT` bits of the entry.
    pub nat: u8,
    /// The tuple a `ct(nat)` rewrites this direction's packets to.
    pub target: Tuple,
    /// The `dump-conntrack` line.
    pub line: String,
}

/// Counts by state for `conntrack-stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// `(state name, connections)`, sorted by name.
    pub by_state: Vec<(String, u64)>,
    /// Connections in total.
    pub total: u64,
}

/// How the packet's headers changed, so the hook can update the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Headers unchanged.
    Tracked,
    /// NAT rewrote addresses and ports to this tuple.
    Rewritten(Tuple),
    /// The packet was rebuilt or rewritten deeply (Service reject, NATed
    /// ICMP error): extract the key again.
    Reextract,
}

impl Conntrack {
    /// An empty table.
    pub fn new(config: ConntrackConfig) -> Conntrack {
        Self::build(config, None)
    }

    /// An empty table whose bare `nat` consults `services` for new
    /// connections.
    pub fn with_services(config: ConntrackConfig, services: Services) -> Conntrack {
        Self::build(config, Some(services))
    }

    fn build(config: ConntrackConfig, services: Option<Services>) -> Conntrack {
        let n = config.shards.max(1).next_power_of_two();
        let mut zone_limit = vec![config.default_zone_limit; 1 << 16];
        for &(z, l) in &config.zone_limits {
            zone_limit[usize::from(z)] = l;
        }
        Conntrack {
            inner: Arc::new(Inner {
                shards: (0..n).map(|_| Mutex::new(Shard::new())).collect(),
                mask: n - 1,
                zone_limit: zone_limit.into_boxed_slice(),
                zone_counts: (0..1 << 16).map(|_| AtomicU32::new(0)).collect(),
                count: AtomicUsize::new(0),
                stats: ConntrackStats::default(),
                config,
                services,
            }),
        }
    }

    /// A per-PMD handle; `seed` varies endpoint selection between PMDs.
    pub fn handle(&self, seed: u64) -> ConntrackHandle {
        ConntrackHandle {
            ct: self.clone(),
            last_sweep: 0,
            next_shard: 0,
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            retrying: false,
        }
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
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
    pub fn services(&self) -> Option<&Services> {
        self.inner.services.as_ref()
    }

    fn shard_of(&self, k: &ConnKey) -> &Mutex<Shard> {
        let mut h = u64::from(k.tuple.src) << 32 | u64::from(k.tuple.dst);
        h ^= (u64::from(k.tuple.sport) << 32 | u64::from(k.tuple.dport) << 16)
            ^ u64::from(k.zone) << 8
            ^ u64::from(k.proto);
        h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        &self.inner.shards[(h as usize >> 7) & self.inner.mask]
    }

    /// Marks `c` removed and releases its counts (once).
    fn kill(&self, c: &mut Conn) {
        if c.dead {
            return;
        }
        c.dead = true;
        self.inner.count.fetch_sub(1, Ordering::Relaxed);
        self.inner.zone_counts[usize::from(c.keys[0].zone)].fetch_sub(1, Ordering::Relaxed);
        if let Some(lb) = &c.lb {
            lb.stats.active.fetch_sub(1, Ordering::Relaxed);
            // Packet counts move to the endpoint when the connection ends
            // (live ones are added by `dump-services`), so the hit path
            // touches no shared endpoint counter.
            lb.stats
                .packets
                .fetch_add(c.packets[0] + c.packets[1], Ordering::Relaxed);
        }
    }

    /// Looks `k` up; expired or dead entries are removed and not returned.
    fn lookup(&self, now: Nanos, k: &ConnKey) -> Option<Slot> {
        let mut shard = lock(self.shard_of(k));
        let slot = shard.get(k)?;
        let live = {
            let mut c = lock(&slot.conn);
            if !c.dead && c.expires <= now {
                self.kill(&mut c);
                self.inner.stats.expired.fetch_add(1, Ordering::Relaxed);
            }
            !c.dead
        };
        if live {
            Some(slot.clone())
        } else {
            shard.remove(k);
            None
        }
    }

    /// Runs `f` on the live entry found by `k`, holding its shard's and
    /// its own lock; expired or dead entries are removed and `None`
    /// returned.
    fn with_entry<R>(
        &self,
        now: Nanos,
        k: &ConnKey,
        f: impl FnOnce(&Slot, &mut Conn) -> R,
    ) -> Option<R> {
        let mut shard = lock(self.shard_of(k));
        let slot = shard.get(k)?;
        let mut c = lock(&slot.conn);
        if !c.dead && c.expires <= now {
            self.kill(&mut c);
            self.inner.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
        if !c.dead {
            return Some(f(slot, &mut c));
        }
        drop(c);
        shard.remove(k);
        None
    }

    /// Inserts `slot` under `k` unless a live entry holds it.
    /// Fails with the live entry that holds `k`.
    fn try_insert(&self, now: Nanos, k: ConnKey, slot: &Slot) -> Result<(), Arc<Mutex<Conn>>> {
        let mut shard = lock(self.shard_of(&k));
        if let Some(old) = shard.get(&k) {
            let mut c = lock(&old.conn);
            if !c.dead && c.expires > now {
                return Err(old.conn.clone());
            }
            if !c.dead {
                self.kill(&mut c);
                self.inner.stats.expired.fetch_add(1, Ordering::Relaxed);
            }
        }
        shard.insert(k, slot.clone());
        Ok(())
    }

    fn remove_key(&self, k: &ConnKey, conn: &Arc<Mutex<Conn>>) {
        let mut shard = lock(self.shard_of(k));
        if shard.get(k).is_some_and(|s| Arc::ptr_eq(&s.conn, conn)) {
            shard.remove(k);
        }
    }

    /// Makes room for one connection in `zone`: evicts a non-established
    /// entry of the shard of `k` (same zone when the zone is full).
    fn make_room(&self, now: Nanos, k: &ConnKey) -> Result<(), DropReason> {
        let zone = usize::from(k.zone);
        let zone_full = self.inner.zone_limit[zone] != 0
            && self.inner.zone_counts[zone].load(Ordering::Relaxed) >= self.inner.zone_limit[zone];
        let global_full = self.len() >= self.inner.config.max_connections;
        if !zone_full && !global_full {
            return Ok(());
        }
        let mut shard = lock(self.shard_of(k));
        let victim = shard
            .iter()
            .take(64)
            .find(|(_, s)| {
                let c = lock(&s.conn);
                !c.dead
                    && (c.expires <= now || !c.established())
                    && (!zone_full || c.keys[0].zone == k.zone)
            })
            .map(|(key, s)| (*key, s.conn.clone()));
        match victim {
            Some((key, conn)) => {
                self.kill(&mut lock(&conn));
                shard.remove(&key);
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
    pub fn sweep_shard(&self, now: Nanos, i: usize) -> usize {
        let Some(m) = self.inner.shards.get(i) else {
            return 0;
        };
        let mut shard = lock(m);
        let before = shard.len();
        shard.retain(|_, s| {
            let mut c = lock(&s.conn);
            if !c.dead && c.expires <= now {
                self.kill(&mut c);
                self.inner.stats.expired.fetch_add(1, Ordering::Relaxed);
            }
            !c.dead
        });
        before - shard.len()
    }

    /// Removes every expired entry.
    pub fn sweep(&self, now: Nanos) -> usize {
        (0..self.inner.shards.len())
            .map(|i| self.sweep_shard(now, i))
            .sum()
    }

    /// Visits every live connection once (through its original key).
    pub fn for_each(&self, mut f: impl FnMut(&Conn)) {
        for m in self.inner.shards.iter() {
            let shard = lock(m);
            for s in shard.values() {
                if s.dir == 0 {
                    let c = lock(&s.conn);
                    if !c.dead {
                        f(&c);
                    }
                }
            }
        }
    }

    /// Removes the connections `pred` selects; returns how many.
    pub fn flush_where(&self, pred: impl Fn(&Conn) -> bool) -> usize {
        let mut n = 0;
        for m in self.inner.shards.iter() {
            let mut shard = lock(m);
            shard.retain(|_, s| {
                let mut c = lock(&s.conn);
                if !c.dead && pred(&c) {
                    self.kill(&mut c);
                    n += 1;
                }
                !c.dead
            });
        }
        n
    }

    /// Removes the connections matching `filter`; returns how many.
    pub fn flush(&self, filter: &ConnFilter) -> usize {
        self.flush_where(|c| filter.matches(c))
    }

    /// Packets of live Service connections per `(service, endpoint
    /// address, endpoint port)` (for `dump-services`).
    pub fn live_endpoint_packets(
        &self,
    ) -> std::collections::HashMap<(Arc<str>, Ipv4Addr, u16), u64> {
        let mut m = std::collections::HashMap::new();
        self.for_each(|c| {
            if let Some(lb) = &c.lb {
                *m.entry((lb.service.clone(), lb.endpoint.0, lb.endpoint.1))
                    .or_default() += c.packets[0] + c.packets[1];
            }
        });
        m
    }

    /// The `dump-conntrack` line of the live connection `key` belongs to,
    /// with the direction it names (`lb-trace`).
    pub fn describe(&self, key: &ConnKey, now: Nanos) -> Option<String> {
        let shard = lock(self.shard_of(key));
        let slot = shard.get(key)?;
        let c = lock(&slot.conn);
        (!c.dead && c.expires > now).then(|| {
            format!(
                "{} ({} direction)",
                format_conn(&c, now),
                if slot.dir == 0 { "original" } else { "reply" }
            )
        })
    }

    /// What the next packet with `key` would find, without changing any
    /// state (`trace`): direction, `ct_state` bits, marks, the tuple a
    /// NATing `ct` rewrites it to, and the `dump-conntrack` line. TCP
    /// window checks are not evaluated (a key has no sequence numbers).
    pub fn peek(&self, now: Nanos, key: &ConnKey) -> Option<ConnPeek> {
        let shard = lock(self.shard_of(key));
        let slot = shard.get(key)?;
        let c = lock(&slot.conn);
        if c.dead || c.expires <= now {
            return None;
        }
        let dir = usize::from(slot.dir);
        let mut st = ct_state::TRK | c.nat;
        st |= if c.replied || dir == 1 {
            ct_state::EST
        } else {
            ct_state::NEW
        };
        if dir == 1 {
            st |= ct_state::RPL;
        }
        Some(ConnPeek {
            dir: slot.dir,
            state: st,
            marks: c.marks(),
            nat: c.nat,
            target: c.keys[1 - dir].tuple.reverse(),
            line: format_conn(&c, now),
        })
    }

    /// Connections by state.
    pub fn state_counts(&self) -> StateCounts {
        let mut m: std::collections::BTreeMap<&'static str, u64> = Default::default();
        let mut total = 0;
        self.for_each(|c| {
            *m.entry(c.state_name()).or_default() += 1;
            total += 1;
        });
        StateCounts {
            by_state: m.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            total,
        }
    }

    /// `dump-conntrack` lines (OVS `dpctl/dump-conntrack` style), sorted.
    pub fn dump(&self, filter: &ConnFilter, now: Nanos) -> String {
        let mut lines = Vec::new();
        self.for_each(|c| {
            if filter.matches(c) && c.expires > now {
                lines.push(format_conn(c, now));
            }
        });
        lines.sort();
        let mut s = String::new();
        for l in lines {
            s.push_str(&l);
            s.push('\n');
        }
        s
    }
}

fn proto_name(p: u8) -> String {
    match p {
        ipproto::TCP => "tcp".into(),
        ipproto::UDP => "udp".into(),
        ipproto::SCTP => "sctp".into(),
        ipproto::ICMP => "icmp".into(),
        p => format!("proto={p}"),
    }
}

fn format_tuple(k: &ConnKey) -> String {
    let t = k.tuple;
    let (s, d) = (Ipv4Addr::from(t.src), Ipv4Addr::from(t.dst));
    if k.proto == ipproto::ICMP {
        format!("src={s},dst={d},id={}", t.sport)
    } else {
        format!("src={s},dst={d},sport={},dport={}", t.sport, t.dport)
    }
}

fn format_conn(c: &Conn, now: Nanos) -> String {
    let mut s = format!(
        "{},orig=({}),reply=({})",
        proto_name(c.keys[0].proto),
        format_tuple(&c.keys[0]),
        format_tuple(&c.keys[1])
    );
    if c.keys[0].zone != 0 {
        let _ = write!(s, ",zone={}", c.keys[0].zone);
    }
    if c.mark != 0 {
        let _ = write!(s, ",mark={}", c.mark);
    }
    if c.label != 0 {
        let _ = write!(s, ",labels={:#x}", c.label);
    }
    let _ = write!(
        s,
        ",timeout={},packets=({},{})",
        (c.expires.saturating_sub(now)) / SEC,
        c.packets[0],
        c.packets[1]
    );
    if let ProtoState::Tcp(t) = c.proto {
        let _ = write!(s, ",protoinfo=(state={})", t.state.name());
    }
    if let Some(lb) = &c.lb {
        let _ = write!(s, ",service={}", lb.service);
    }
    s
}

/// A PMD's handle on the connection table: the `ct(...)` hook.
#[derive(Debug)]
pub struct ConntrackHandle {
    ct: Conntrack,
    last_sweep: Nanos,
    next_shard: usize,
    rng: u64,
    /// Re-tracking a packet after losing a commit race.
    retrying: bool,
}

/// The hit path on a locked entry: tracks a packet of direction `dir`.
#[allow(clippy::too_many_arguments)]
fn hit_entry(
    cfg: &ConntrackConfig,
    now: Nanos,
    ct: &CtAction,
    seg: Option<&tcp::Segment>,
    len: u64,
    dir: usize,
    conn: &Arc<Mutex<Conn>>,
    c: &mut Conn,
) -> Hit {
    if let (ProtoState::Tcp(t), Some(seg)) = (&mut c.proto, seg) {
        let reopen = dir == 0
            && TcpConn::is_syn(seg)
            && matches!(t.state, TcpState::TimeWait | TcpState::Close);
        if reopen {
            return Hit::Reopen(conn.clone());
        }
        if !t.track(dir, seg) {
            return Hit::Invalid;
        }
    }
    if dir == 1 {
        c.replied = true;
    }
    c.packets[dir] += 1;
    c.bytes[dir] += len;
    c.expires = now + c.timeout(&cfg.timeouts);
    if let (true, Some((v, m))) = (ct.commit, ct.mark) {
        c.mark = (c.mark & !m) | (v & m);
    }
    if let (true, Some((v, m))) = (ct.commit, ct.label) {
        c.label = (c.label & !m) | (v & m);
    }
    let mut st = ct_state::TRK | c.nat;
    st |= if c.replied {
        ct_state::EST
    } else {
        ct_state::NEW
    };
    if dir == 1 {
        st |= ct_state::RPL;
    }
    let target = (c.nat != 0 && ct.nat.is_some()).then(|| c.keys[1 - dir].tuple.reverse());
    Hit::Tracked(st, c.marks(), target)
}

/// What the hit path found.
enum Hit {
    /// Tracked: state bits, mark and label, NAT target.
    Tracked(u8, CtMarks, Option<Tuple>),
    /// Out of window or otherwise invalid.
    Invalid,
    /// A SYN reopening a closed TCP connection.
    Reopen(Arc<Mutex<Conn>>),
}

/// NAT plan for a new connection.
struct Plan {
    reply: Tuple,
    nat: u8,
    lb: Option<LbRef>,
    /// Source-port range to allocate the reply destination port from.
    sport_range: Option<(u16, u16)>,
}

impl ConntrackHandle {
    /// The shared table.
    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn maybe_sweep(&mut self, now: Nanos) {
        if now.saturating_sub(self.last_sweep) >= SWEEP_INTERVAL_NS {
            self.last_sweep = now;
            let n = self.ct.inner.shards.len();
            self.ct.sweep_shard(now, self.next_shard % n);
            if let Some(s) = &self.ct.inner.services {
                s.expire_affinity(now, self.next_shard);
            }
            self.next_shard = (self.next_shard + 1) % n;
        }
    }

    /// Runs `ct` over `pkt`, returning the `ct_state` bits and, when the
    /// packet belongs to a connection, its mark.
    fn track<B: PacketBuf>(
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
        // The hit path: one shard lock and the entry's lock, no refcount
        // traffic, no allocation.
        let cfg = &self.ct.inner.config;
        let hit = self.ct.with_entry(now, &key, |slot, c| {
            hit_entry(
                cfg,
                now,
                ct,
                seg.as_ref(),
                len,
                usize::from(slot.dir),
                &slot.conn,
                c,
            )
        });
        if let Some(hit) = hit {
            return self.finish_hit(now, ct, pkt, &p, key, seg, hit);
        }
        // No entry: a new connection.
        if p.proto == ipproto::TCP && !seg.as_ref().is_some_and(TcpConn::is_syn) {
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
        self.create(now, ct, pkt, &p, key, seg)
    }

    /// Applies what the hit path decided.
    #[allow(clippy::too_many_arguments)]
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
            Hit::Invalid => {
                self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
                Ok((
                    ct_state::TRK | ct_state::INV,
                    CtMarks::ZERO,
                    Verdict::Tracked,
                ))
            }
            Hit::Reopen(conn) => {
                // A new SYN on a closed connection's tuple: replace it.
                let keys = {
                    let mut c = lock(&conn);
                    self.ct.kill(&mut c);
                    c.keys
                };
                self.ct.remove_key(&keys[0], &conn);
                self.ct.remove_key(&keys[1], &conn);
                self.create(now, ct, pkt, p, key, seg)
            }
        }
    }

    /// Commits a new connection for `p` (key `key`), applying NAT.
    fn create<B: PacketBuf>(
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
        self.ct.make_room(now, &key)?;
        let bytes = (p.end - p.l3) as u64;
        let proto = match seg {
            Some(s) => ProtoState::Tcp(TcpConn::new(&s)),
            None if p.proto == ipproto::ICMP => ProtoState::Icmp,
            None => ProtoState::Other,
        };
        let mut conn = Conn {
            keys: [
                key,
                ConnKey {
                    zone: key.zone,
                    proto: key.proto,
                    tuple: plan.reply,
                },
            ],
            proto,
            replied: false,
            expires: 0,
            mark: ct.mark.map_or(0, |(v, m)| v & m),
            label: ct.label.map_or(0, |(v, m)| v & m),
            nat: plan.nat,
            lb: plan.lb,
            packets: [1, 0],
            bytes: [bytes, 0],
            dead: false,
        };
        conn.expires = now + conn.timeout(&self.ct.inner.config.timeouts);
        let (nat_bits, lb) = (conn.nat, conn.lb.clone());
        let arc = Arc::new(Mutex::new(conn));
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
            lock(&arc).keys[1] = rk;
            match self.ct.try_insert(
                now,
                rk,
                &Slot {
                    conn: arc.clone(),
                    dir: 1,
                },
            ) {
                Ok(()) => {
                    reserved = true;
                    break;
                }
                Err(other) => {
                    // Another PMD is committing this very connection:
                    // track the packet against its entry.
                    let hit = {
                        let mut c = lock(&other);
                        (c.keys[0] == key).then(|| {
                            let cfg = &self.ct.inner.config;
                            hit_entry(cfg, now, ct, seg.as_ref(), bytes, 0, &other, &mut c)
                        })
                    };
                    if let Some(hit) = hit {
                        if matches!(hit, Hit::Reopen(_)) || self.retrying {
                            return Err(DropReason::CtLimit);
                        }
                        self.retrying = true;
                        let r = self.finish_hit(now, ct, pkt, p, key, seg, hit);
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
        if self
            .ct
            .try_insert(
                now,
                key,
                &Slot {
                    conn: arc.clone(),
                    dir: 0,
                },
            )
            .is_err()
        {
            // Another PMD committed the same connection a moment ago:
            // withdraw ours and track the packet against theirs (once).
            let rk = lock(&arc).keys[1];
            self.ct.remove_key(&rk, &arc);
            if self.retrying {
                return Err(DropReason::CtLimit);
            }
            self.retrying = true;
            let r = self.track(now, ct, pkt);
            self.retrying = false;
            return r;
        }
        self.ct.inner.count.fetch_add(1, Ordering::Relaxed);
        self.ct.inner.zone_counts[usize::from(key.zone)].fetch_add(1, Ordering::Relaxed);
        self.ct.inner.stats.created.fetch_add(1, Ordering::Relaxed);
        if let Some(lb) = &lb {
            lb.stats.connections.fetch_add(1, Ordering::Relaxed);
            lb.stats.active.fetch_add(1, Ordering::Relaxed);
        }
        let mut verdict = Verdict::Tracked;
        if nat_bits != 0 {
            nat::rewrite(pkt.data_mut(), p, reply.reverse())?;
            verdict = Verdict::Rewritten(reply.reverse());
        }
        let marks = CtMarks {
            mark: ct.mark.map_or(0, |(v, m)| v & m),
            label: ct.label.map_or(0, |(v, m)| v & m),
        };
        Ok((ct_state::TRK | ct_state::NEW | nat_bits, marks, verdict))
    }

    /// Decides the reply tuple of a new connection. `Err(None)` asks for
    /// a Service reject.
    fn plan(&mut self, now: Nanos, ct: &CtAction, p: &Parsed) -> Result<Plan, Option<DropReason>> {
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
                let pick = |r: Option<(Ipv4Addr, Ipv4Addr)>, h: u64| {
                    r.map(|(a, b)| {
                        let (a, b) = (u32::from(a), u32::from(b.max(a)));
                        a + (h % (u64::from(b - a) + 1)) as u32
                    })
                };
                let h = (u64::from(t.src) << 16 | u64::from(t.sport)).wrapping_mul(0x9e37_79b9);
                match kind {
                    NatKind::Dst => {
                        if let Some(ip) = pick(*addrs, h) {
                            plan.reply.src = ip;
                        }
                        if let Some((a, b)) = ports {
                            let span = u64::from(b.saturating_sub(*a)) + 1;
                            plan.reply.sport = a + (h % span) as u16;
                        }
                        plan.nat = ct_state::DNAT;
                    }
                    NatKind::Src => {
                        if let Some(ip) = pick(*addrs, h) {
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
                match services.select(now, p.proto, t.src, t.dst, t.dport, r) {
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
    fn related<B: PacketBuf>(
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
        let Some(slot) = self.ct.lookup(now, &key) else {
            self.ct.inner.stats.invalid.fetch_add(1, Ordering::Relaxed);
            return inv;
        };
        let dir = usize::from(slot.dir);
        let c = lock(&slot.conn);
        let mut st = ct_state::TRK | ct_state::REL | c.nat;
        if dir == 1 {
            st |= ct_state::RPL;
        }
        // The embedded packet becomes what its sender originally sent.
        let inner_to = c.keys[1 - dir].tuple;
        let (mark, nat) = (c.marks(), c.nat != 0 && ct.nat.is_some());
        drop(c);
        self.ct.inner.stats.related.fetch_add(1, Ordering::Relaxed);
        if nat {
            nat::rewrite_icmp_error(pkt.data_mut(), p, &inner, inner_to)?;
            return Ok((st, mark, Verdict::Reextract));
        }
        Ok((st, mark, Verdict::Tracked))
    }
}

/// Fields the key keeps across a re-extraction (metadata, not headers).
const META_FIELDS: [Field; 16] = [
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

impl<B: PacketBuf> ConntrackHook<B> for ConntrackHandle {
    fn conntrack(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        key: &mut FlowKey,
    ) -> Result<(), DropReason> {
        self.maybe_sweep(now);
        let (st, mark, verdict) = self.track(now, ct, pkt)?;
        match verdict {
            Verdict::Tracked => {}
            // NAT: patch the translated fields (no second parse).
            Verdict::Rewritten(t) => {
                key.set(Field::NwSrc, u128::from(t.src));
                key.set(Field::NwDst, u128::from(t.dst));
                if matches!(key.nw_proto(), ipproto::TCP | ipproto::UDP | ipproto::SCTP) {
                    key.set(Field::TpSrc, u128::from(t.sport));
                    key.set(Field::TpDst, u128::from(t.dport));
                }
            }
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
        key.set(Field::CtState, u128::from(st));
        key.set(Field::CtZone, u128::from(ct.zone));
        key.set(Field::CtMark, u128::from(mark.mark));
        key.set(Field::CtLabel, mark.label);
        Ok(())
    }
}
