//! The load-balancing contract of connection tracking.
//!
//! A bare `nat` on a new, committed connection asks the [`LoadBalancer`]
//! installed with [`super::Conntrack::with_services`] (the Service table of
//! `crate::service` implements it) for an [`LbDecision`]; the connection
//! entry then remembers the endpoint in an [`LbRef`] and keeps its
//! [`EndpointStats`] current (active connections while it lives, its packets
//! when it ends). The trait is defined here, below its implementation, so
//! that conntrack does not depend on the Service table.
//!
//! Thread-safety: a [`LoadBalancer`] is shared by every PMD and the control
//! thread (`Send + Sync`); [`EndpointStats`] are atomics updated with
//! relaxed ordering (counters, not synchronisation).

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::drop::DropReason;
use crate::time::Nanos;

/// A new connection as the load balancer sees it: from `src` to
/// `dst:dport` over `proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbQuery {
    /// IP protocol.
    pub proto: u8,
    /// Client address.
    pub src: u32,
    /// Frontend address.
    pub dst: u32,
    /// Frontend port.
    pub dport: u16,
}

/// What conntrack asks of a load balancer for new connections.
pub trait LoadBalancer: Send + Sync {
    /// Chooses the endpoint for the new connection `q`; `rand` is a
    /// uniformly random number. With `record` the client's affinity is
    /// remembered; without it nothing changes (what `trace` shows).
    fn choose(&self, now: Nanos, q: LbQuery, rand: u64, record: bool) -> LbDecision;

    /// Explains, without changing any state, what the new connection `q`
    /// would get, as text lines.
    fn trace(&self, q: LbQuery) -> String;

    /// Removes expired client-affinity state of one shard (`shard` modulo
    /// the shard count); called by each PMD's periodic sweep.
    fn expire_affinity(&self, now: Nanos, shard: usize);
}

/// Per-endpoint counters (shared by the table versions and by the
/// connections balanced to it).
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Connections balanced to the endpoint.
    pub connections: AtomicU64,
    /// Connections currently tracked.
    pub active: AtomicU64,
    /// Packets of its finished connections (both directions); the
    /// Service table's dump adds the live ones.
    pub packets: AtomicU64,
}

/// What a conntrack entry remembers of its Service decision: one shared
/// reference to the endpoint's [`LbEndpoint`] (built once per endpoint when
/// the Service table is updated), so a new connection takes one reference
/// count and its entry holds one pointer.
#[derive(Debug, Clone)]
pub struct LbRef(Arc<LbEndpoint>);

/// The endpoint a connection was balanced to, as its entry sees it.
#[derive(Debug)]
pub struct LbEndpoint {
    /// Service name.
    pub service: Arc<str>,
    /// Endpoint address and port.
    pub endpoint: (Ipv4Addr, u16),
    /// Endpoint counters.
    pub stats: Arc<EndpointStats>,
}

impl LbRef {
    /// A reference to the endpoint `endpoint` of Service `service`,
    /// counting into `stats`.
    pub fn new(service: Arc<str>, endpoint: (Ipv4Addr, u16), stats: Arc<EndpointStats>) -> LbRef {
        LbRef(Arc::new(LbEndpoint {
            service,
            endpoint,
            stats,
        }))
    }
}

impl std::ops::Deref for LbRef {
    type Target = LbEndpoint;
    fn deref(&self) -> &LbEndpoint {
        &self.0
    }
}

/// A chosen endpoint.
#[derive(Debug, Clone)]
pub struct LbTarget {
    /// Endpoint address.
    pub ip: u32,
    /// Endpoint port.
    pub port: u16,
    /// SNAT source address, when the connection is masqueraded.
    pub masquerade: Option<u32>,
    /// What the connection remembers.
    pub lb: LbRef,
}

/// The answer for a new connection.
#[derive(Debug, Clone)]
pub enum LbDecision {
    /// The destination is no Service frontend.
    NotService,
    /// Forward to this endpoint.
    Forward(LbTarget),
    /// No endpoint: answer with ICMP port unreachable.
    Reject,
    /// Drop under this reason.
    Drop(DropReason),
}
