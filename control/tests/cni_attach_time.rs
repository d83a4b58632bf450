//! Pod attach time through `sluice-cni`: from ADD called to ADD returned,
//! p50/p99 over 100 pods, one at a time and 10 at a time. A measurement,
//! not a check (no thresholds), so it is ignored by default:
//!
//! ```sh
//! cargo test -p sluice-control --test cni_attach_time -- --ignored --nocapture
//! ```
//!
//! The agent is the test's stand-in (`cni_harness::Agent`), which sets
//! `up` as soon as the row appears: the figures are the plugin's own cost
//! (IPAM, veth, row, the wait's round trip), without sluiced's port-add.

mod cni_harness;

use std::time::{Duration, Instant};

use cni_harness::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn attach_all(db: &Nestdb, conf: &serde_json::Value, tag: &str, parallel: usize) -> Vec<Duration> {
    const PODS: usize = 100;
    let namespaces: Vec<Netns> = (0..PODS)
        .map(|i| Netns::new(&format!("cni-{tag}{i}")))
        .collect();
    let ids: Vec<String> = (0..PODS)
        .map(|i| container_id(&format!("{tag}{i}")))
        .collect();
    let mut times = Vec::with_capacity(PODS);
    for chunk in (0..PODS).collect::<Vec<_>>().chunks(parallel) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let inv = Invocation::new("ADD", &ids[i], Some(&namespaces[i].path()));
                let conf = conf.clone();
                std::thread::spawn(move || {
                    let t = Instant::now();
                    inv.run(&conf).ok();
                    t.elapsed()
                })
            })
            .collect();
        times.extend(handles.into_iter().map(|h| h.join().unwrap()));
    }
    assert_eq!(db.ports().len(), PODS);
    for (i, id) in ids.iter().enumerate() {
        Invocation::new("DEL", id, Some(&namespaces[i].path()))
            .run(conf)
            .ok();
    }
    assert!(db.ports().is_empty());
    times.sort();
    times
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn attach_time_of_100_pods() {
    if !ready("cni_attach_time attach_time_of_100_pods") {
        return;
    }
    let db = Nestdb::start(true);
    let _agent = Agent::start(&db);
    let conf = db.conf("speed", "1.0.0");
    for (tag, parallel) in [("seq", 1), ("par", 10)] {
        let t = attach_all(&db, &conf, tag, parallel);
        println!(
            "ADD, {parallel} at a time, 100 pods: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&t, 0.5).as_secs_f64() * 1e3,
            percentile(&t, 0.99).as_secs_f64() * 1e3,
            t[t.len() - 1].as_secs_f64() * 1e3
        );
    }
}
