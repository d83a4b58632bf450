//! Pod attach time through `sluice-cni`: from ADD called to ADD returned,
//! p50/p99 over 100 pods, one at a time and 10 at a time. A measurement,
//! not a check (no thresholds), so it is ignored by default:
//!
//! ```sh
//! cargo test -p sluice-control --test cni_attach_time -- --ignored --nocapture
//! ```
//!
//! In the first test the agent is the test's stand-in
//! (`cni_harness::Agent`), which sets `up` as soon as the row appears: the
//! figures are the plugin's own cost (IPAM, veth, row, the wait's round
//! trip). The second runs the real `sluice-agent` and `sluiced`.

mod cni_harness;

use std::time::{Duration, Instant};

use cni_harness::stack::*;
use cni_harness::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// ADD of `pods` pods, `parallel` at a time, then DEL of all; the ADD
/// times.
fn attach_all(
    db: &Nestdb,
    conf: &serde_json::Value,
    tag: &str,
    parallel: usize,
    pods: usize,
) -> Vec<Duration> {
    let namespaces: Vec<Netns> = (0..pods)
        .map(|i| Netns::new(&format!("cni-{tag}{i}")))
        .collect();
    let ids: Vec<String> = (0..pods)
        .map(|i| container_id(&format!("{tag}{i}")))
        .collect();
    let mut times = Vec::with_capacity(pods);
    for chunk in (0..pods).collect::<Vec<_>>().chunks(parallel) {
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
    assert_eq!(db.ports().len(), pods);
    for (i, id) in ids.iter().enumerate() {
        Invocation::new("DEL", id, Some(&namespaces[i].path()))
            .run(conf)
            .ok();
    }
    assert!(db.ports().is_empty());
    times.sort();
    times
}

fn report(what: &str, t: &[Duration]) {
    println!(
        "{what}, {} pods: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        t.len(),
        percentile(t, 0.5).as_secs_f64() * 1e3,
        percentile(t, 0.99).as_secs_f64() * 1e3,
        t[t.len() - 1].as_secs_f64() * 1e3
    );
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
        let t = attach_all(&db, &conf, tag, parallel, 100);
        report(&format!("stand-in agent: ADD, {parallel} at a time"), &t);
    }
}

/// The same with the real `sluice-agent` and `sluiced`: ADD returns once
/// sluiced forwards for the pod (node-commit of its af_packet port, its
/// flows and port security, then the agent's `up`). Debian's DPDK is built
/// with `RTE_MAX_ETHPORTS` 32 (uplink, host and 30 pods), so the 100 pods
/// attach in 5 waves of 20, each detached before the next.
#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn attach_time_of_100_pods_with_the_real_agent_and_sluiced() {
    let test = "cni_attach_time attach_time_of_100_pods_with_the_real_agent_and_sluiced";
    if !ready_stack(test) {
        return;
    }
    let db = Nestdb::start(true);
    let _uplink = UplinkVeth::new();
    let dir = tempfile::Builder::new()
        .prefix("sluice-speed")
        .tempdir()
        .unwrap();
    let ctl = dir.path().join("sluiced.ctl");
    let mut sluiced = start_sluiced(dir.path(), &ctl, "slt-cni-speed");
    let mut agent = start_agent(dir.path(), &db, &ctl);
    let mut conf = db.conf("speedr", "1.0.0");
    conf["portUpTimeoutMs"] = serde_json::json!(60000);
    for (tag, parallel) in [("rs", 1), ("rp", 10)] {
        let mut t = Vec::new();
        for wave in 0..5 {
            t.extend(attach_all(
                &db,
                &conf,
                &format!("{tag}{wave}-"),
                parallel,
                20,
            ));
            wait_until("sluiced to drop the wave's pod ports", || {
                (status(&ctl).ports.len() == 2).then_some(())
            });
        }
        t.sort();
        report(
            &format!("sluice-agent + sluiced: ADD, {parallel} at a time"),
            &t,
        );
    }
    sluiced.alive();
    agent.alive();
}
