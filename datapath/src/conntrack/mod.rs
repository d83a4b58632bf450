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
//! authority; each PMD's [`cache`] serves its steady traffic, and a miss
//! reads the table; neither takes a lock for a live connection.
//!
//! - Shared table (why not per-core): NAT makes the two directions'
//!   tuples unrelated, and RSS or per-port PMD assignment sends them to
//!   different cores, so a per-core table would miss replies. The table is
//!   global, split into [`ConntrackConfig::shards`] shards (a power of
//!   two, default 256) by tuple hash. Each shard (`shard`) is an
//!   open-addressing array of 8-byte words, a tagged `Arc<Conn>` pointer
//!   per key (both keys of a connection point at one `Arc<Conn>`), read
//!   lock-free under an epoch pin (`crossbeam::epoch`) and written under
//!   the shard's mutex: a rehash publishes a new array, and a removed key's
//!   reference and a replaced array are freed only after the readers that
//!   may hold them unpin. Create, insert, remove, expiry, eviction, flush,
//!   dump and `peek` lock a shard; a lookup of a live connection does not.
//! - Per-PMD connection cache (`cache::ConnCache`, why per-core): a
//!   fixed set-associative array of `(tag, direction, Arc<Conn>)`
//!   allocated when the [`ConntrackHandle`] is created
//!   ([`ConntrackConfig::cache_entries`], default 64Ki entries, 1 MiB). A
//!   hit borrows the `Arc`: no refcount traffic, no allocation, one cache
//!   line of lookup. Per-core because a PMD's connections are what it sees
//!   again; both directions of a connection may be cached on different
//!   PMDs and still share one `Conn`, so the state stays one. A miss reads
//!   the key's shard lock-free and fills the cache (an `Arc` clone). A new
//!   connection is not cached by its first packet: its second one fills
//!   the cache, so a flood of one-packet connections evicts nothing.
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
//! TCP ESTABLISHED without SYN/FIN/RST and in window; a TCP originator
//! segment of a SYN_SENT connection that changes nothing (a retransmitted
//! SYN, a repeated ACK before the reply: Service traffic whose replies take
//! another path, like pktgen's); UDP, SCTP, ICMP
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
//! happens on the PMD on a miss. The table's own reference to a removed
//! key's connection is dropped by the epoch collector once no reader can
//! hold it, on whichever thread pins next (a PMD on a miss, or a control
//! thread), never on a cache hit. A flush or a control-thread sweep
//! instead waits for that grace period itself and releases what it
//! removed on its own thread (`shard::Unlinked`), so a flush of 100k
//! connections leaves no deferred frees to the PMDs.
//!
//! Locks that remain: shard mutexes (control commands, creation, the
//! removal of a dead or expired key a lookup found, sweeps: one shard per
//! [`SWEEP_INTERVAL_NS`] per PMD) and entry mutexes (transitions, as
//! above; lock order shard then entry). None on an established packet,
//! whether it hits its PMD's cache or not (`shard_tests` counts the locks
//! a PMD thread takes). Allocation happens only when a connection is
//! created (and when a shard's array is rebuilt), and not even then when
//! the table's pool of released allocations has one: a flush or
//! control-thread sweep resets the connections whose last reference it
//! held to placeholders and pools them (at most [`spare_pool`]); each PMD
//! takes them [`SPARE_BATCH`] at a time (one pool lock per batch) and
//! prefetches the next one ahead of its next new connection.
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
//! Files, one concern each (as OVS splits `conntrack-{private,tcp,other}`):
//! `config` (settings and their keys), `entry` (a connection and its key),
//! `table` (the shared sharded table), `shard` (one shard's lock-free
//! index), `hit` (the lock-free hit path),
//! `handle` (the per-PMD hook and the slow path that creates connections),
//! `show` (dumps and read-only views), [`tcp`] (state machine and windows),
//! [`nat`] (header rewriting), [`cache`] (the per-PMD cache), [`lb`] (the
//! load-balancer contract), [`trace`] and [`commands`].
//!
//! Thread-safety: [`Conntrack`] is a cheap `Clone` handle (`Arc`), `Send +
//! Sync`; each PMD owns one [`ConntrackHandle`] (its `ConntrackHook` and
//! its connection cache), `Send`, never shared.

pub mod cache;
#[cfg(test)]
mod cache_tests;
pub mod commands;
pub mod config;
#[cfg(test)]
mod cont_tests;
mod entry;
#[cfg(test)]
mod flood_tests;
mod handle;
mod hit;
pub mod lazy;
pub mod lb;
pub mod nat;
#[allow(unsafe_code)]
mod shard;
#[cfg(test)]
mod shard_tests;
mod show;
pub mod state;
mod table;
pub mod tcp;
#[cfg(test)]
pub(crate) mod tests;
pub mod trace;

use std::sync::{Mutex, MutexGuard};

use crate::time::Nanos;
pub use cache::CacheCounters;
pub use config::{ConntrackConfig, Timeouts};
pub use entry::*;
pub use handle::*;
pub use show::*;
pub use table::*;

// The test modules (`use super::*`) see the names this module imported
// before it was split into submodules.
#[cfg(test)]
use {
    crate::drop::DropReason,
    crate::flow::action::{CtAction, NatKind, NatSpec},
    crate::flow::key::{ct_state, Field, FlowKey},
    crate::packet::PacketBuf,
    crate::pipeline::hooks::ConntrackHook,
    nat::Tuple,
    std::sync::atomic::Ordering,
    tcp::TcpState,
};

/// How often a [`ConntrackHandle`] sweeps one shard for expired entries.
pub const SWEEP_INTERVAL_NS: Nanos = 10_000_000;

/// The lock-free hit path moves a connection's expiry only when it
/// advances by at least this much (like Linux's `nf_ct_refresh` did with
/// `HZ`), so a busy connection writes it about once a second, not per
/// packet. An idle connection may thus expire up to this much early.
pub const EXPIRES_REFRESH_NS: Nanos = 1_000_000_000;

/// The locks conntrack takes: a `Mutex` (an entry's, the cache registry)
/// or a shard's writer lock.
pub(super) trait Lockable {
    /// What holding the lock gives.
    type Guard<'a>
    where
        Self: 'a;
    /// Takes the lock.
    fn take(&self) -> Self::Guard<'_>;
}

impl<T> Lockable for Mutex<T> {
    type Guard<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;
    fn take(&self) -> MutexGuard<'_, T> {
        #[cfg(test)]
        count_lock();
        // A panic while holding a conntrack lock leaves consistent data
        // (every update is a plain field store), so poisoning is ignored.
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Lockable for shard::ShardCell {
    type Guard<'a> = shard::ShardGuard<'a>;
    fn take(&self) -> shard::ShardGuard<'_> {
        self.lock()
    }
}

fn lock<L: Lockable + ?Sized>(m: &L) -> L::Guard<'_> {
    m.take()
}

#[cfg(test)]
thread_local! {
    /// Conntrack locks this thread took (tests check that the hit path
    /// takes none).
    static LOCKS_TAKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
fn count_lock() {
    LOCKS_TAKEN.with(|n| n.set(n.get() + 1));
}

/// Conntrack locks (shard or entry) the calling thread has taken so far
/// (tests only).
#[cfg(test)]
pub(crate) fn locks_taken() -> u64 {
    LOCKS_TAKEN.with(|n| n.get())
}
