//! Overlay tunnels: Geneve encapsulation/decapsulation, the remote VTEP
//! table, and their introspection commands.
//!
//! - [`geneve`]: the per-PMD [`TunnelHook`](crate::pipeline::hooks::TunnelHook)
//!   implementation ([`geneve::GeneveTunnels`]) behind `tnl_push`/`tnl_pop`,
//!   the shared [`geneve::Tunnels`] state it is built from, MTU arithmetic
//!   ([`geneve::OVERHEAD_IPV4`]: 50 bytes over IPv4 without options) and the
//!   ICMP fragmentation-needed builder.
//! - [`template`]: per-VTEP outer header templates (built once per VTEP
//!   and next-hop MAC, copied per packet with only lengths, checksum,
//!   source port, VNI and option patched) and the per-PMD cache of them.
//! - [`vtep`]: the runtime-programmable node → VTEP IP table with per-VTEP
//!   traffic counters.
//! - [`commands`]: `dump-tunnels`, `add-vtep`, `del-vtep`, `tunnel-mtu`.
//!
//! Invariants: the hot path never locks or allocates; every failed encap
//! or decap is a counted [`DropReason`](crate::drop::DropReason), counted
//! both in the PMD's drops and in the tunnel's own counters shown by
//! `dump-tunnels`. Shared state is published RCU-style and read through
//! per-PMD cached snapshots.

pub mod commands;
pub mod geneve;
pub mod template;
pub mod vtep;

#[cfg(test)]
mod tests;

pub use geneve::{GeneveTunnels, TunnelConfig, Tunnels, OVERHEAD_IPV4};
pub use vtep::{VtepError, VtepTable};
