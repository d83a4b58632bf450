//! Smoke test: the runner measures one short l2 scenario on `sluiced`.
//!
//! Needs root (DPDK) and a built `sluiced` (`$SLUICED`, else
//! `$CARGO_TARGET_DIR` or the workspace `target/`, release then debug);
//! without them it prints why it is skipped and passes.

mod common;

use common::sluiced_for;
use std::time::Duration;

use sluice_benches::peer::{Cores, OvsPaths};
use sluice_benches::runner::{run_one, PeerKind, RunConfig, Status};
use sluice_benches::scenario::{Kind, Scenario};

#[test]
fn l2_smoke_on_sluiced() {
    let Some(bin) = sluiced_for("l2_smoke_on_sluiced") else {
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
        cores: Cores::one(0, 1),
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
