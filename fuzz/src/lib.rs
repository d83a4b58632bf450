//! Coverage-guided fuzz targets for Sluice.
//!
//! Each module owns one target and exposes `run(data: &[u8])`, which feeds
//! arbitrary bytes to one input surface and panics (so the fuzzer reports a
//! crash) when the code under test panics or an invariant the module states
//! does not hold. The same `run` functions are called three ways:
//! `fuzz_targets/*.rs` for libFuzzer (built by `scripts/fuzz.sh` with
//! coverage instrumentation on the stable toolchain), `tests/corpus.rs`
//! replaying `corpus/<target>/*` as plain `cargo test` cases, and the
//! per-module regression tests of inputs a campaign found.
//!
//! Targets: [`packet_path`] (one burst through the whole sans-IO packet
//! path), [`control_rpc`] (the control socket's JSON-RPC framing, dispatch
//! and every sluice-api method's parameters), [`nestdb_rpc`] (nestdb's
//! JSON-RPC messages and transactions against the node schema, with the
//! log reopened and compared), [`ini_config`] (sluiced's ini file) and
//! [`ofctl_flow`] (the ovs-ofctl flow text parser, parse → print → parse).
//!
//! Thread-safety: each target keeps its state in thread-locals; libFuzzer
//! and the replay tests call `run` from one thread at a time per target.

pub mod checksum;
pub mod control_rpc;
pub mod ini_config;
pub mod nestdb_rpc;
pub mod ofctl_flow;
pub mod packet_path;

/// The names of every target (the directories under `corpus/`).
pub const TARGETS: &[&str] = &[
    "packet_path",
    "control_rpc",
    "nestdb_rpc",
    "ini_config",
    "ofctl_flow",
];

/// Runs target `name` on `data`; `false` if there is no such target.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match name {
        "packet_path" => packet_path::run(data),
        "control_rpc" => control_rpc::run(data),
        "nestdb_rpc" => nestdb_rpc::run(data),
        "ini_config" => ini_config::run(data),
        "ofctl_flow" => ofctl_flow::run(data),
        _ => return false,
    }
    true
}
