//! Neighbours: ARP for the underlay and for pods.
//!
//! - [`table`]: the resolved IPv4 → MAC snapshot PMDs read (tunnel encap)
//!   and the lock-free queue through which they ask for resolution.
//!
//! Invariants: PMDs only read published snapshots; one owner thread
//! mutates the cache and publishes.

pub mod table;
