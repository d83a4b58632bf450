//! Sluice datapath: the packet engine behind `sluiced`.
//!
//! Layers, bottom up (see `shared/DESIGN.md`):
//! - [`wire`]: zero-copy header views over untrusted bytes.
//! - [`packet`] and [`port`]: packet buffers with encapsulation headroom and the
//!   `Port` trait that hides where packets come from (DPDK ethdev or memory).
//! - [`pipeline`]: sans-IO packet processing over bursts, with per-core state
//!   and drops counted by [`drop::DropReason`].
//! - [`flow`] and [`classifier`]: the OpenFlow-like program and its
//!   EMC → megaflow → slow-path cascade.
//! - [`pmd`]: poll-mode threads, one per core.
//! - [`ctl`]: the unixctl-compatible control socket.
//!
//! Only the DPDK glue (`dpdk`, `port::dpdk`) contains `unsafe` code.
#![deny(unsafe_code)]

pub mod caps;
pub mod capture;
pub mod classifier;
pub mod config;
pub mod conntrack;
pub mod ctl;
#[cfg(feature = "dpdk")]
pub mod daemon;
#[cfg(feature = "dpdk")]
#[allow(unsafe_code)]
pub mod dpdk;
pub mod drop;
pub mod flow;
pub mod hostpath;
pub mod hugepages;
pub mod neigh;
pub mod packet;
pub mod pipeline;
pub mod pmd;
pub mod port;
pub mod service;
pub mod stack;
pub mod stats;
pub mod time;
pub mod tunnel;
pub mod wire;
