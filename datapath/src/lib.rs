//! Sluice datapath: the packet engine behind `sluiced`.
//!
//! Modules depend only downward. The layers, bottom up (the table
//! `datapath/tests/layers.rs` checks, together with the absence of import
//! cycles):
//! - [`time`]: [`time::Nanos`] and the clocks; depends on nothing.
//! - [`wire`]: zero-copy header views over untrusted bytes.
//! - [`ctl`]: the unixctl-compatible control socket and its command
//!   registry, infrastructure every feature registers its commands with.
//! - [`mod@drop`] and [`stats`]: the named drop reasons and per-core counters.
//! - [`packet`], [`port`], [`dpdk`] and [`hugepages`]: packet buffers with
//!   encapsulation headroom, the `Port` trait that hides where packets come
//!   from (DPDK ethdev or memory), and the DPDK glue.
//! - [`flow`]: the OpenFlow-like program, its text syntax and its
//!   publication to the PMDs.
//! - [`classifier`]: the EMC → megaflow → slow-path cascade.
//! - [`pipeline`]: sans-IO packet processing over bursts, with the hooks
//!   features plug into, and `trace`.
//! - Features: [`conntrack`], [`service`], [`tunnel`], [`neigh`],
//!   [`stack`], [`hostpath`], [`capture`].
//! - [`pmd`] (poll-mode threads, one per core) and [`config`].
//! - [`daemon`] and [`caps`]: start-up, shutdown and capabilities.
//!
//! `unsafe` code is denied crate-wide and allowed only where it is needed,
//! each block with a `// SAFETY:` comment: the DPDK glue ([`dpdk`]), the
//! cycle counter ([`time::cycles`]), the classifier's prefetch, the
//! conntrack shard index read without a lock (`conntrack::shard`), the
//! control socket's peer-credential syscalls (`ctl::sys`), the PMD
//! barrier's `sched_getcpu` and `sched_setscheduler` ([`pmd`]) and the
//! hand-over's duplication of the packet sockets it releases
//! (`daemon::handover`).
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
