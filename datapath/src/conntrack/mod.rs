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
//! connection asks the [`lb::LoadBalancer`] (the Service table) installed with
//! [`Conntrack::with_services`]: if the destination is a Service frontend
//! the connection is DNATed to the chosen endpoint (and masqueraded when
//! the Service semantics say so); otherwise it is committed untranslated.
//! Established traffic never looks at the Service table again: the entry
//! carries the decision, so its cost does not depend on the number of
//! Services.
//!
//! Layout: a shared sharded table behind per-PMD caches. The table is the
//! authority; each PMD's [`cache`] serves its steady traffic without a
//! lock.
//!
//! - Shared table (why not per-core): NAT makes the two directions'
//!   tuples unrelated, and RSS or per-port PMD assignment sends them to
//!   different cores, so a per-core table would miss replies. The table is
//!   global, split into [`ConntrackConfig::shards`] shards (a power of
//!   two, default 256) by tuple hash, each a `Mutex<HashMap<ConnKey,
//!   Slot>>`; both keys of a connection point at one `Arc<Conn>`. Create,
//!   insert, remove, expiry, eviction, flush, dump and `peek` lock a
//!   shard; so does a packet whose key is not in its PMD's cache.
//! - Per-PMD connection cache (`cache::ConnCache`, why per-core): a
//!   fixed set-associative array of `(tag, direction, Arc<Conn>)`
//!   allocated when the [`ConntrackHandle`] is created
//!   ([`ConntrackConfig::cache_entries`], default 64Ki entries, 1 MiB). A
//!   hit borrows the `Arc`: no lock, no refcount traffic, no allocation,
//!   one cache line of lookup. Per-core because a PMD's connections are
//!   what it sees again; both directions of a connection may be cached on
//!   different PMDs and still share one `Conn`, so the state stays one.
//!   A miss locks the key's shard and fills the cache (an `Arc` clone).
//!
//! A connection (`Conn`) is immutable after publication except for its
//! hot state, which is atomic: the keys, zone, NAT bits, protocol kind
//! and Service endpoint never change; the dead flag, expiry, per-direction
//! packet and byte counters (relaxed `fetch_add`), `replied`, the TCP
//! state and each direction's window (`end`, `maxend`, `maxwin`: monotone
//! CAS/max in sequence space, see [`tcp`]) are atomics; `ct_mark` and
//! `ct_label` sit behind a sequence lock (read lock-free, never torn).
//!
//! The hit path ([`ConntrackHandle`]): a packet that changes no state —
//! TCP ESTABLISHED without SYN/FIN/RST and in window; UDP, SCTP, ICMP
//! after the first reply (or any original-direction packet); a commit
//! whose mark/label write changes nothing — is tracked without any lock.
//! Anything else takes the entry's own mutex (`Conn::lock`): TCP
//! handshake and close transitions, reopen, the first reply, a mark or
//! label write, and every packet the lock-free window check would call
//! out of window, which is re-checked there before it is reported `+inv`.
//! Window fields only grow and are read and written in an order that
//! makes the lock-free check see values of some serial order of the
//! concurrent segments, so two PMDs on the two directions never produce a
//! false `+inv` (`cache_tests`). The steady path writes the expiry only
//! when it moves by [`EXPIRES_REFRESH_NS`] (1 s) or more, so a busy
//! connection does not dirty that line per packet and an idle one may
//! expire up to 1 s early; a transition racing with that write is fixed
//! up under the entry's lock (the packet counts as after it).
//!
//! Invalidation: flush, expiry, eviction and reopen kill the connection
//! (set `dead`, then close both packet counters, see `COUNT_DEAD`) and
//! remove its keys; nothing is pushed to the caches. A cache hit on a
//! dead or expired connection, or a packet whose count finds the counter
//! closed, falls back to the shared table: it never gets the old
//! connection's state or translation. A cache entry may keep a killed
//! connection's memory until it is overwritten or looked up (at most
//! `cache_entries` per PMD); dropping that last `Arc`, a free, then
//! happens on the PMD on a miss.
//!
//! Locks that remain: shard mutexes (control commands, creation, cache
//! misses, sweeps: one shard per [`SWEEP_INTERVAL_NS`] per PMD) and entry
//! mutexes (transitions, as above; lock order shard then entry). None on
//! an established packet that hits its PMD's cache. Allocation happens
//! only when a connection is created.
//!
//! Stats stay exact: per-direction counters are atomics read by
//! `dump-conntrack`; an endpoint's finished-connection packet count is
//! taken by the kill in the same atomic step that closes the counters, so
//! a packet is counted in exactly one connection, live or finished
//! (`dump-services` adds the live ones).
//!
//! TCP mid-stream pickup is off by default (a non-SYN without an entry is
//! `+inv`, as in OVS); [`ConntrackConfig::tcp_loose`] turns it on (Linux's
//! `nf_conntrack_tcp_loose`): a plain ACK with no entry starts an
//! ESTABLISHED connection without window checks.
//!
//! Not supported: IPv6 (`+inv`), fragment reassembly (`+inv`), ALGs
//! (FTP/TFTP helpers).
//!
//! Expiry runs on the caller's clock (`now`): an expired entry is ignored
//! and removed when looked up, and [`ConntrackHandle`] sweeps one shard per
//! [`SWEEP_INTERVAL_NS`]. Limits: a global limit and per-zone limits; at a
//! limit, one non-established entry of the same shard (and zone) is
//! evicted early, otherwise the packet is dropped under `ct_limit`.
//!
//! Thread-safety: [`Conntrack`] is a cheap `Clone` handle (`Arc`), `Send +
//! Sync`; each PMD owns one [`ConntrackHandle`] (its `ConntrackHook` and
//! its connection cache), `Send`, never shared.

pub mod cache;
#[cfg(test)]
mod cache_tests;
pub mod commands;
pub mod config;
pub mod lb;
pub mod nat;
pub mod tcp;
#[cfg(test)]
pub(crate) mod tests;
pub mod trace;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashMap;

use crate::drop::DropReason;
use crate::flow::action::{CtAction, NatKind, NatSpec};
use crate::flow::key::{ct_state, extract_with_layout, ipproto, Field, FlowKey};
use crate::packet::PacketBuf;
use crate::pipeline::hooks::ConntrackHook;
use crate::time::Nanos;
pub use cache::CacheCounters;
use cache::{CacheStats, ConnCache};
use lb::{LbDecision, LbRef, LoadBalancer};
use nat::{Parsed, Tuple, L4};
use tcp::{TcpConn, TcpState};

/// How often a [`ConntrackHandle`] sweeps one shard for expired entries.
pub const SWEEP_INTERVAL_NS: Nanos = 10_000_000;

/// The lock-free hit path moves a connection's expiry only when it
/// advances by at least this much (like Linux's `nf_ct_refresh` did with
/// `HZ`), so a busy connection writes it about once a second, not per
/// packet. An idle connection may thus expire up to this much early.
pub const EXPIRES_REFRESH_NS: Nanos = 1_000_000_000;

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
    /// Entries of each PMD's connection cache (rounded up to a power of
    /// two; 0: no cache, every packet looks in the shared table).
    pub cache_entries: usize,
    /// Source ports for masquerading (Service hairpin, NodePort).
    pub masquerade_ports: (u16, u16),
    /// Pick up TCP connections whose handshake was not seen (a plain ACK
    /// with no entry), as Linux's `nf_conntrack_tcp_loose`: they start
    /// ESTABLISHED without window checks, so traffic survives a datapath
    /// restart. Off by default, like OVS (such a packet is `+inv`).
    pub tcp_loose: bool,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max_connections: 1 << 20,
            zone_limits: Vec::new(),
            default_zone_limit: 0,
            timeouts: Timeouts::default(),
            shards: 256,
            cache_entries: cache::CACHE_ENTRIES,
            masquerade_ports: (32768, 60999),
            tcp_loose: false,
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

/// Protocol state of a connection (the kind is fixed at creation).
#[derive(Debug)]
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

    /// The marks after `ct`'s `exec(set_field...)` writes (a committing
    /// action only).
    fn apply(self, ct: &CtAction) -> CtMarks {
        if !ct.commit {
            return self;
        }
        CtMarks {
            mark: ct
                .mark
                .map_or(self.mark, |(v, m)| (self.mark & !m) | (v & m)),
            label: ct
                .label
                .map_or(self.label, |(v, m)| (self.label & !m) | (v & m)),
        }
    }
}

/// `ct_mark` and `ct_label` behind a sequence lock: written (rarely: a
/// commit that changes them) under the entry's lock, read on every packet
/// without a lock and never torn.
#[derive(Debug, Default)]
struct Marks {
    /// Odd while a writer is storing.
    seq: AtomicU32,
    mark: AtomicU32,
    label: [AtomicU64; 2],
}

impl Marks {
    fn new(m: CtMarks) -> Marks {
        Marks {
            seq: AtomicU32::new(0),
            mark: AtomicU32::new(m.mark),
            label: [
                AtomicU64::new((m.label >> 64) as u64),
                AtomicU64::new(m.label as u64),
            ],
        }
    }

    fn load(&self) -> CtMarks {
        CtMarks {
            mark: self.mark.load(Ordering::Relaxed),
            label: u128::from(self.label[0].load(Ordering::Relaxed)) << 64
                | u128::from(self.label[1].load(Ordering::Relaxed)),
        }
    }

    /// A consistent snapshot, or `None` while a writer is storing.
    fn try_read(&self) -> Option<CtMarks> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let m = self.load();
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == s1).then_some(m)
    }

    /// Stores `m`; the caller holds the entry's lock (one writer).
    fn write(&self, m: CtMarks) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.mark.store(m.mark, Ordering::Relaxed);
        self.label[0].store((m.label >> 64) as u64, Ordering::Relaxed);
        self.label[1].store(m.label as u64, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

/// Set in a direction's packet counter when the connection is killed:
/// the kill reads the counter and sets this bit in one atomic step, so a
/// packet counted before it is in the endpoint's total and a packet that
/// finds it set knows it was not counted (and treats the entry as gone).
const COUNT_DEAD: u64 = 1 << 63;

/// One tracked connection, shared (`Arc`) by the table's two keys and
/// the PMDs' connection caches.
///
/// What never changes after the entry is published: both keys, the zone,
/// the NAT bits, the protocol kind and the Service endpoint. Everything a
/// packet updates is atomic (see the module doc); `lock` serialises state
/// transitions and mark/label writes, never the steady hit path.
#[derive(Debug)]
pub struct Conn {
    /// Tuples of the original (0) and reply (1) direction, as on the wire
    /// before translation.
    pub keys: [ConnKey; 2],
    /// `ct_state::SNAT` / `ct_state::DNAT` bits.
    pub nat: u8,
    /// The Service endpoint this connection was balanced to.
    pub lb: Option<LbRef>,
    /// Protocol state.
    pub proto: ProtoState,
    /// Removed from the table (the other direction's key, and PMD
    /// caches, may hold it until swept or overwritten).
    dead: AtomicBool,
    /// A reply has been seen.
    replied: AtomicBool,
    /// Expiry time (refreshed by at most [`EXPIRES_REFRESH_NS`] less
    /// than the exact value, see the module doc).
    expires: AtomicU64,
    /// Packets per direction (bit 63: [`COUNT_DEAD`]).
    packets: [AtomicU64; 2],
    /// Bytes per direction.
    bytes: [AtomicU64; 2],
    /// `ct_mark`, `ct_label`.
    marks: Marks,
    /// Serialises TCP state transitions, the first reply and mark/label
    /// writes.
    lock: Mutex<()>,
}

impl Conn {
    /// `ct_mark` and `ct_label`.
    pub fn marks(&self) -> CtMarks {
        self.marks.try_read().unwrap_or_else(|| {
            // A writer is mid-store: wait for it.
            let _g = lock(&self.lock);
            self.marks.load()
        })
    }

    /// `ct_mark`.
    pub fn mark(&self) -> u32 {
        self.marks().mark
    }

    /// `ct_label`.
    pub fn label(&self) -> u128 {
        self.marks().label
    }

    /// A reply has been seen.
    pub fn replied(&self) -> bool {
        self.replied.load(Ordering::SeqCst)
    }

    /// Expiry time.
    pub fn expires(&self) -> Nanos {
        self.expires.load(Ordering::SeqCst)
    }

    /// Packets per direction.
    pub fn packets(&self) -> [u64; 2] {
        [0, 1].map(|d| self.packets[d].load(Ordering::Relaxed) & !COUNT_DEAD)
    }

    /// Bytes per direction.
    pub fn bytes(&self) -> [u64; 2] {
        [0, 1].map(|d| self.bytes[d].load(Ordering::Relaxed))
    }

    /// Removed from the table.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// The TCP state, for TCP connections.
    pub fn tcp_state(&self) -> Option<TcpState> {
        match &self.proto {
            ProtoState::Tcp(t) => Some(t.state()),
            _ => None,
        }
    }

    fn established(&self) -> bool {
        match &self.proto {
            ProtoState::Tcp(t) => t.state() == TcpState::Established,
            _ => self.replied(),
        }
    }

    /// What the idle timeout depends on: the TCP state, or whether a
    /// reply was seen.
    fn timeout_class(&self) -> u8 {
        match &self.proto {
            ProtoState::Tcp(t) => t.state() as u8,
            _ => u8::from(self.replied()),
        }
    }

    fn timeout(&self, t: &Timeouts) -> Nanos {
        match &self.proto {
            ProtoState::Tcp(c) => c.state().timeout(t),
            ProtoState::Icmp => t.icmp,
            ProtoState::Other if self.replied() => t.udp_stream,
            ProtoState::Other => t.udp_first,
        }
    }

    /// Live at `now`: not killed, not expired.
    fn live(&self, now: Nanos) -> bool {
        !self.is_dead() && self.expires() > now
    }

    /// State name for dumps and stats.
    pub fn state_name(&self) -> &'static str {
        match &self.proto {
            ProtoState::Tcp(c) => c.state().name(),
            _ if self.replied() => "REPLIED",
            _ => "UNREPLIED",
        }
    }
}

/// A table key's target: the connection and the direction the key names.
#[derive(Debug, Clone)]
struct Slot {
    conn: Arc<Conn>,
    dir: u8,
}

type Shard = HashMap<ConnKey, Slot>;

/// The hash of a key: its shard in the table, its set in a PMD's cache.
#[inline]
fn key_hash(k: &ConnKey) -> u64 {
    let mut h = u64::from(k.tuple.src) << 32 | u64::from(k.tuple.dst);
    h ^= (u64::from(k.tuple.sport) << 32 | u64::from(k.tuple.dport) << 16)
        ^ u64::from(k.zone) << 8
        ^ u64::from(k.proto);
    h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ h >> 29
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    mask: usize,
    config: ConntrackConfig,
    zone_limit: Box<[u32]>,
    count: AtomicUsize,
    zone_counts: Box<[AtomicU32]>,
    stats: ConntrackStats,
    services: Option<Box<dyn LoadBalancer>>,
    /// Counters of the per-PMD connection caches (`conntrack-stats`).
    caches: Mutex<Vec<Arc<cache::CacheCounters>>>,
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
    /// Connections with a destination translation (Services, `nat(dst)`).
    pub dnat: u64,
    /// Connections with a source translation.
    pub snat: u64,
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
    pub fn with_services(
        config: ConntrackConfig,
        services: impl LoadBalancer + 'static,
    ) -> Conntrack {
        Self::build(config, Some(Box::new(services)))
    }

    fn build(config: ConntrackConfig, services: Option<Box<dyn LoadBalancer>>) -> Conntrack {
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
                caches: Mutex::new(Vec::new()),
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
            cache: {
                let c = ConnCache::new(self.inner.config.cache_entries);
                lock(&self.inner.caches).push(c.counters());
                c
            },
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

    fn shard_of(&self, hash: u64) -> &Mutex<Shard> {
        &self.inner.shards[(hash as usize >> 7) & self.inner.mask]
    }

    /// Marks `c` removed and releases its counts (once). Callers hold the
    /// shard lock of one of its keys.
    fn kill(&self, c: &Conn) {
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
    fn reap(&self, now: Nanos, c: &Conn) -> bool {
        if !c.is_dead() && c.expires() <= now {
            self.kill(c);
            self.inner.stats.expired.fetch_add(1, Ordering::Relaxed);
        }
        c.is_dead()
    }

    /// Adds `n` (1 or -1) to the live counts `c` is part of (global,
    /// zone, its endpoint's active connections).
    fn count_in(&self, c: &Conn, n: isize) {
        let zone = &self.inner.zone_counts[usize::from(c.keys[0].zone)];
        if n > 0 {
            self.inner.count.fetch_add(1, Ordering::Relaxed);
            zone.fetch_add(1, Ordering::Relaxed);
        } else {
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

    /// Looks `k` (hash `hash`) up in the shared table; expired or dead
    /// entries are removed and not returned.
    fn lookup(&self, now: Nanos, hash: u64, k: &ConnKey) -> Option<Slot> {
        let mut shard = lock(self.shard_of(hash));
        let slot = shard.get(k)?;
        if !self.reap(now, &slot.conn) {
            return Some(slot.clone());
        }
        shard.remove(k);
        None
    }

    /// Inserts `slot` under `k` unless a live entry holds it.
    /// Fails with the live entry that holds `k`.
    fn try_insert(&self, now: Nanos, k: ConnKey, slot: &Slot) -> Result<(), Arc<Conn>> {
        let mut shard = lock(self.shard_of(key_hash(&k)));
        if let Some(old) = shard.get(&k) {
            if !self.reap(now, &old.conn) {
                return Err(old.conn.clone());
            }
        }
        shard.insert(k, slot.clone());
        Ok(())
    }

    fn remove_key(&self, k: &ConnKey, conn: &Arc<Conn>) {
        let mut shard = lock(self.shard_of(key_hash(k)));
        if shard.get(k).is_some_and(|s| Arc::ptr_eq(&s.conn, conn)) {
            shard.remove(k);
        }
    }

    /// Makes room for one connection in `zone`: evicts a non-established
    /// entry of the shard of `k` (same zone when the zone is full).
    fn make_room(&self, now: Nanos, hash: u64, k: &ConnKey) -> Result<(), DropReason> {
        let zone = usize::from(k.zone);
        let zone_full = self.inner.zone_limit[zone] != 0
            && (self.inner.zone_counts[zone].load(Ordering::Relaxed) as i32).max(0) as u32
                >= self.inner.zone_limit[zone];
        let global_full = self.len() >= self.inner.config.max_connections;
        if !zone_full && !global_full {
            return Ok(());
        }
        let mut shard = lock(self.shard_of(hash));
        let victim = shard
            .iter()
            .take(64)
            .find(|(_, s)| {
                let c = &s.conn;
                !c.is_dead()
                    && (c.expires() <= now || !c.established())
                    && (!zone_full || c.keys[0].zone == k.zone)
            })
            .map(|(key, s)| (*key, s.conn.clone()));
        match victim {
            Some((key, conn)) => {
                self.kill(&conn);
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
        shard.retain(|_, s| !self.reap(now, &s.conn));
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
                if s.dir == 0 && !s.conn.is_dead() {
                    f(&s.conn);
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
                let c = &s.conn;
                if !c.is_dead() && pred(c) {
                    self.kill(c);
                    n += 1;
                }
                !c.is_dead()
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
                let [p0, p1] = c.packets();
                *m.entry((lb.service.clone(), lb.endpoint.0, lb.endpoint.1))
                    .or_default() += p0 + p1;
            }
        });
        m
    }

    /// The `dump-conntrack` line of the live connection `key` belongs to,
    /// with the direction it names (`lb-trace`).
    pub fn describe(&self, key: &ConnKey, now: Nanos) -> Option<String> {
        let shard = lock(self.shard_of(key_hash(key)));
        let slot = shard.get(key)?;
        let c = &slot.conn;
        c.live(now).then(|| {
            format!(
                "{} ({} direction)",
                format_conn(c, now),
                if slot.dir == 0 { "original" } else { "reply" }
            )
        })
    }

    /// What the next packet with `key` would find, without changing any
    /// state (`trace`): direction, `ct_state` bits, marks, the tuple a
    /// NATing `ct` rewrites it to, and the `dump-conntrack` line. TCP
    /// window checks are not evaluated (a key has no sequence numbers).
    pub fn peek(&self, now: Nanos, key: &ConnKey) -> Option<ConnPeek> {
        let shard = lock(self.shard_of(key_hash(key)));
        let slot = shard.get(key)?;
        let c = &slot.conn;
        if !c.live(now) {
            return None;
        }
        let dir = usize::from(slot.dir);
        let mut st = ct_state::TRK | c.nat;
        st |= if c.replied() || dir == 1 {
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
            line: format_conn(c, now),
        })
    }

    /// Connections by state.
    pub fn state_counts(&self) -> StateCounts {
        let mut m: std::collections::BTreeMap<&'static str, u64> = Default::default();
        let (mut total, mut dnat, mut snat) = (0, 0, 0);
        self.for_each(|c| {
            *m.entry(c.state_name()).or_default() += 1;
            total += 1;
            dnat += u64::from(c.nat & ct_state::DNAT != 0);
            snat += u64::from(c.nat & ct_state::SNAT != 0);
        });
        StateCounts {
            by_state: m.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            total,
            dnat,
            snat,
        }
    }

    /// `dump-conntrack` lines (OVS `dpctl/dump-conntrack` style), sorted.
    pub fn dump(&self, filter: &ConnFilter, now: Nanos) -> String {
        let mut lines = Vec::new();
        self.for_each(|c| {
            if filter.matches(c) && c.expires() > now {
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
    let marks = c.marks();
    if marks.mark != 0 {
        let _ = write!(s, ",mark={}", marks.mark);
    }
    if marks.label != 0 {
        let _ = write!(s, ",labels={:#x}", marks.label);
    }
    let packets = c.packets();
    let _ = write!(
        s,
        ",timeout={},packets=({},{})",
        (c.expires().saturating_sub(now)) / SEC,
        packets[0],
        packets[1]
    );
    if let Some(state) = c.tcp_state() {
        let _ = write!(s, ",protoinfo=(state={})", state.name());
    }
    if let Some(lb) = &c.lb {
        let _ = write!(s, ",service={}", lb.service);
    }
    s
}

/// A PMD's handle on the connection table: the `ct(...)` hook, with the
/// PMD's connection cache.
#[derive(Debug)]
pub struct ConntrackHandle {
    ct: Conntrack,
    last_sweep: Nanos,
    next_shard: usize,
    rng: u64,
    /// Re-tracking a packet after losing a commit race.
    retrying: bool,
    cache: ConnCache,
}

/// What the hit path found.
enum Hit {
    /// Tracked: state bits, mark and label, NAT target.
    Tracked(u8, CtMarks, Option<Tuple>),
    /// Out of window or otherwise invalid.
    Invalid,
    /// A SYN reopening a closed TCP connection.
    Reopen(Arc<Conn>),
    /// The connection was killed or expired: look again in the table.
    Gone,
}

/// The `ct_state` bits and NAT target of a tracked packet.
fn tracked(c: &Conn, ct: &CtAction, dir: usize, replied: bool, marks: CtMarks) -> Hit {
    let mut st = ct_state::TRK | c.nat;
    st |= if replied {
        ct_state::EST
    } else {
        ct_state::NEW
    };
    if dir == 1 {
        st |= ct_state::RPL;
    }
    let target = (c.nat != 0 && ct.nat.is_some()).then(|| c.keys[1 - dir].tuple.reverse());
    Hit::Tracked(st, marks, target)
}

/// Tracks a packet of direction `dir` of `conn`: lock-free when it
/// changes no state, else under the entry's lock.
#[allow(clippy::too_many_arguments)]
#[inline]
fn hit_conn(
    cfg: &ConntrackConfig,
    now: Nanos,
    ct: &CtAction,
    seg: Option<&tcp::Segment>,
    len: u64,
    dir: usize,
    conn: &Arc<Conn>,
) -> Hit {
    match hit_fast(cfg, now, ct, seg, len, dir, conn) {
        Some(hit) => hit,
        None => hit_locked(cfg, now, ct, seg, len, dir, conn),
    }
}

/// The lock-free hit path. `None` (having changed nothing) when the packet
/// needs the locked path: a TCP state transition or a segment it would
/// call out of window, the first reply, or a mark/label write.
#[allow(clippy::too_many_arguments)]
#[inline]
fn hit_fast(
    cfg: &ConntrackConfig,
    now: Nanos,
    ct: &CtAction,
    seg: Option<&tcp::Segment>,
    len: u64,
    dir: usize,
    c: &Conn,
) -> Option<Hit> {
    if !c.live(now) {
        return Some(Hit::Gone);
    }
    let replied = dir == 1 || c.replied();
    if dir == 1 && !c.replied() {
        return None;
    }
    let marks = c.marks.try_read()?;
    let new_marks = marks.apply(ct);
    if new_marks != marks {
        return None;
    }
    let class = c.timeout_class();
    if let ProtoState::Tcp(t) = &c.proto {
        // Changes the window only when it returns true.
        if !seg.is_some_and(|seg| t.track_established(dir, seg)) {
            return None;
        }
    }
    // Count the packet; a kill that closed the counter first means the
    // connection is gone (and this packet was not counted).
    if c.packets[dir].fetch_add(1, Ordering::AcqRel) & COUNT_DEAD != 0 {
        return Some(Hit::Gone);
    }
    c.bytes[dir].fetch_add(len, Ordering::Relaxed);
    refresh(cfg, now, c, class);
    Some(tracked(c, ct, dir, replied, marks))
}

/// Moves the expiry of `c` (timeout class `class` when the packet was
/// checked) forward, when it moves by at least [`EXPIRES_REFRESH_NS`].
#[inline]
fn refresh(cfg: &ConntrackConfig, now: Nanos, c: &Conn, class: u8) {
    let e = now + c.timeout(&cfg.timeouts);
    if e < c.expires().saturating_add(EXPIRES_REFRESH_NS) {
        return;
    }
    c.expires.fetch_max(e, Ordering::SeqCst);
    if c.timeout_class() != class {
        // A transition (FIN, RST, first reply) raced with this packet and
        // may have set a shorter expiry that `fetch_max` overwrote: the
        // packet counts as after it, so recompute under the lock.
        let _g = lock(&c.lock);
        c.expires
            .store(now + c.timeout(&cfg.timeouts), Ordering::SeqCst);
    }
}

/// The locked hit path: TCP transitions and the full window check, the
/// first reply, mark and label writes.
#[allow(clippy::too_many_arguments)]
fn hit_locked(
    cfg: &ConntrackConfig,
    now: Nanos,
    ct: &CtAction,
    seg: Option<&tcp::Segment>,
    len: u64,
    dir: usize,
    conn: &Arc<Conn>,
) -> Hit {
    let c = &**conn;
    let _g = lock(&c.lock);
    if !c.live(now) {
        return Hit::Gone;
    }
    if let (ProtoState::Tcp(t), Some(seg)) = (&c.proto, seg) {
        let reopen = dir == 0
            && TcpConn::is_syn(seg)
            && matches!(t.state(), TcpState::TimeWait | TcpState::Close);
        if reopen {
            return Hit::Reopen(conn.clone());
        }
        if !t.track(dir, seg) {
            return Hit::Invalid;
        }
    }
    if dir == 1 {
        c.replied.store(true, Ordering::SeqCst);
    }
    if c.packets[dir].fetch_add(1, Ordering::AcqRel) & COUNT_DEAD != 0 {
        return Hit::Gone;
    }
    c.bytes[dir].fetch_add(len, Ordering::Relaxed);
    c.expires
        .store(now + c.timeout(&cfg.timeouts), Ordering::SeqCst);
    let marks = c.marks.load();
    let new_marks = marks.apply(ct);
    if new_marks != marks {
        c.marks.write(new_marks);
    }
    tracked(c, ct, dir, c.replied(), new_marks)
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
        let hash = key_hash(&key);
        // The hit path: the PMD's cache, then the shared table (which
        // fills the cache). No allocation; no lock unless the packet
        // changes the connection's state or misses the cache.
        let cfg = &self.ct.inner.config;
        if let Some((conn, dir)) = self.cache.lookup(&key, hash) {
            match hit_conn(cfg, now, ct, seg.as_ref(), len, dir, conn) {
                Hit::Gone => self.cache.forget(&key, hash),
                hit => {
                    self.cache.count(true);
                    return self.finish_hit(now, ct, pkt, &p, key, seg, hit);
                }
            }
        }
        self.cache.count(false);
        if let Some(slot) = self.ct.lookup(now, hash, &key) {
            self.cache.insert(&key, hash, &slot);
            let hit = hit_conn(
                cfg,
                now,
                ct,
                seg.as_ref(),
                len,
                usize::from(slot.dir),
                &slot.conn,
            );
            // `Gone`: killed since the lookup, so it counts as not found.
            if !matches!(hit, Hit::Gone) {
                return self.finish_hit(now, ct, pkt, &p, key, seg, hit);
            }
        }
        // No entry: a new connection.
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
        let mut arc = Arc::new(conn);
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
            // A failed attempt leaves no clone behind, so this succeeds.
            let Some(unpublished) = Arc::get_mut(&mut arc) else {
                return Err(DropReason::CtLimit);
            };
            unpublished.keys[1] = rk;
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
                    let hit = (other.keys[0] == key).then(|| {
                        let cfg = &self.ct.inner.config;
                        hit_conn(cfg, now, ct, seg.as_ref(), bytes, 0, &other)
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
        self.cache.insert(
            &key,
            hash,
            &Slot {
                conn: arc.clone(),
                dir: 0,
            },
        );
        let mut verdict = Verdict::Tracked;
        if nat_bits != 0 {
            nat::rewrite(pkt.data_mut(), p, reply.reverse())?;
            verdict = Verdict::Rewritten(reply.reverse());
        }
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
