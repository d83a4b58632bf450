//! Smoke test: the runner measures one short l2 scenario on `sluiced`.
//!
//! Needs root (DPDK) and a built `sluiced` (`$SLUICED`, else
//! `$CARGO_TARGET_DIR` or the workspace `target/`, release then debug);
//! without them it prints why it is skipped and passes.

use std::path::PathBuf;
use std::time::Duration;

use sluice_benches::peer::{Cores, OvsPaths};
use sluice_benches::runner::{run_one, PeerKind, RunConfig, Status};
use sluice_benches::scenario::{Kind, Scenario};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn sluiced() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICED") {
        return Some(PathBuf::from(p));
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let targets = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace.join("target")]);
    targets
        .flat_map(|t| [t.join("release/sluiced"), t.join("debug/sluiced")])
        .find(|p| p.exists())
}

#[test]
fn l2_smoke_on_sluiced() {
    if !is_root() {
        eprintln!("skipped: the smoke benchmark needs root (DPDK, hugepages)");
        return;
    }
    let Some(bin) = sluiced() else {
        eprintln!(
            "skipped: no sluiced binary (set SLUICED or build it with `cargo build -p sluice-datapath --bin sluiced`)"
        );
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let cfg = RunConfig {
        warmup: Duration::from_millis(500),
        max_warmup: Duration::from_secs(5),
        interval: Duration::from_millis(500),
        runs: 3,
        work_dir: work.path().to_path_buf(),
        sluiced: bin,
        testpmd: "/usr/bin/dpdk-testpmd".into(),
        ovs: OvsPaths::default(),
        cores: Cores { main: 0, pmd: 1 },
        program_budget: Duration::from_secs(60),
    };
    let o = run_one(PeerKind::Sluiced, &Scenario::new(Kind::L2, 64, 0), &cfg);
    assert_eq!(o.status, Status::Ok, "{:?}", o.reason);
    assert_eq!(o.runs.len(), 3);
    let mpps = o.mpps.expect("a summary").median;
    assert!(mpps > 0.0, "no packets forwarded: {o:?}");
    for m in &o.runs {
        assert_eq!(m.drops(), 0, "drops in {m:?}");
    }
}
