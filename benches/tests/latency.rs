//! Smoke test of the latency mode: `memif-gen` against `sluiced` over
//! two net_memif links for a couple of seconds.
//!
//! Needs root (DPDK) and a built `sluiced` (`$SLUICED`, else
//! `$CARGO_TARGET_DIR` or the workspace `target/`, release then debug);
//! without them it prints why it is skipped and passes. It uses its own
//! DPDK file prefixes and a private directory; both daemons are children
//! stopped on drop. No timing thresholds: only that frames came back and
//! the percentiles are ordered.

mod common;

use common::sluiced_for;
use std::path::PathBuf;
use std::time::Duration;

use sluice_benches::latency::{run_all, LatencyConfig};
use sluice_benches::peer::Cores;
use sluice_benches::runner::{PeerKind, Status};
use sluice_benches::scenario::{Kind, Scenario};

#[test]
fn memif_latency_smoke_on_sluiced() {
    let Some(bin) = sluiced_for("memif_latency_smoke_on_sluiced") else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let cfg = LatencyConfig {
        memif_gen: PathBuf::from(env!("CARGO_BIN_EXE_memif-gen")),
        sluiced: bin,
        testpmd: "/usr/bin/dpdk-testpmd".into(),
        work_dir: work.path().to_path_buf(),
        cores: Cores::one(0, 1),
        rates: vec![Some(100_000), None],
        warmup: Duration::from_millis(300),
        interval: Duration::from_millis(500),
        runs: 3,
        peers: vec![PeerKind::Sluiced],
        scenarios: vec![Scenario::new(Kind::L2, 64, 0)],
        gen_prefix: format!("sluice-test-memif-gen-{}", std::process::id()),
    };
    let rep = run_all(&cfg);
    assert_eq!(rep.outcomes.len(), 2, "{rep:?}");
    for o in &rep.outcomes {
        assert_eq!(o.status, Status::Ok, "{:?}", o.reason);
        assert_eq!(o.runs.len(), 3);
        for r in &o.runs {
            assert!(r.sent > 0 && r.received > 0, "nothing came back: {r:?}");
            assert!(r.received <= r.sent, "{r:?}");
            let p = [r.min_ns, r.p50_ns, r.p90_ns, r.p99_ns, r.p999_ns, r.max_ns]
                .map(|x| x.expect("a percentile"));
            assert!(p.windows(2).all(|w| w[0] <= w[1]), "unordered: {p:?}");
            assert!(p[0] > 0.0);
        }
    }
    assert!(rep.tsc_hz.is_some_and(|h| h > 0));
    let table = rep.table();
    println!("{table}");
    assert!(table.contains("| sluiced | l2/64f | 0.1 Mpps |"), "{table}");
}
