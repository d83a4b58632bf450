//! Neighbours: ARP for the underlay and for pods.
//!
//! - [`table`]: the resolved IPv4 → MAC snapshot PMDs read (tunnel encap)
//!   and the lock-free queue through which they ask for resolution.
//! - [`cache`]: the sans-IO neighbour cache that resolves underlay next
//!   hops with ARP (bounded per-entry packet queues, refresh, expiry,
//!   learning only from solicited replies), and ARP frame builders
//!   (including gratuitous ARP).
//! - [`ingress`]: port security (anti-spoofing) for pod ports and the ARP
//!   responder, as a wrapper in front of the flow pipeline.
//!
//! Invariants: PMDs only read published snapshots; one owner thread
//! mutates the cache and publishes. Malformed ARP is ignored or dropped
//! with a counted reason, never a panic.

pub mod cache;
pub mod ingress;
pub mod table;
