//! Crash safety: a writer pipelines transactions while the server is SIGKILLed at a
//! seeded random point, many times.  After each restart every acknowledged transaction
//! must be present and none half-applied.
//!
//! Each transaction inserts one `Node` named `n<seq>` and increments `Config.gen` by
//! one, atomically.  The writer keeps up to 16 requests in flight on one connection,
//! so transactions commit in order; after recovery the rows present must be exactly
//! `n0..n<m>` for some `m` with `m + 1 >= acknowledged`, and `gen == m + 1`.

mod common;

use common::{Impl, ServerProc};
use nestdb::jsonrpc::Message;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeSet;
use std::io::Write;

const SEED: u64 = 0x5eed_2026;
const ROUNDS: usize = 12;
const WINDOW: u64 = 16;

fn state(s: &ServerProc) -> (BTreeSet<u64>, i64) {
    let mut c = s.client();
    let r = c.transact(json!([
        {"op": "select", "table": "Node", "where": [], "columns": ["name"]},
        {"op": "select", "table": "Config", "where": [], "columns": ["gen"]}
    ]));
    let seqs = r[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["name"].as_str().unwrap()[1..].parse::<u64>().unwrap())
        .collect();
    let gen = r[1]["rows"][0]["gen"].as_i64().unwrap();
    (seqs, gen)
}

#[test]
fn sigkill_never_loses_acknowledged_transactions() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(Impl::Nestdb, dir.path(), &["--compact-threshold=30000"]);
    s.client()
        .transact(json!([{"op": "insert", "table": "Config", "row": {"gen": 0}}]));
    let mut next_seq = 0u64;
    for round in 0..ROUNDS {
        let kill_after: u64 = rng.gen_range(1..150);
        let mut c = s.client();
        let mut sent = next_seq;
        let mut acked = next_seq;
        while acked < next_seq + kill_after {
            while sent < acked + WINDOW {
                let m = Message::Request {
                    method: "transact".into(),
                    params: json!(["Test",
                        {"op": "insert", "table": "Node", "row": {"name": format!("n{sent}")}},
                        {"op": "mutate", "table": "Config", "where": [], "mutations": [["gen", "+=", 1]]}]),
                    id: json!(sent),
                };
                c.send_raw(&m.to_bytes());
                sent += 1;
            }
            match c.read_message() {
                Some(Message::Reply { result, id }) => {
                    assert_eq!(id, json!(acked), "replies arrive in order");
                    assert!(
                        result
                            .as_array()
                            .unwrap()
                            .iter()
                            .all(|r| r.get("error").is_none()),
                        "{result}"
                    );
                    acked += 1;
                }
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        // Requests are still in flight: kill now.
        s.kill();
        s.launch();
        let (seqs, gen) = state(&s);
        let m = seqs.len() as u64;
        assert!(
            m >= acked,
            "round {round}: {acked} acknowledged but only {m} present"
        );
        assert_eq!(
            seqs,
            (0..m).collect::<BTreeSet<u64>>(),
            "round {round}: rows must be a prefix"
        );
        assert_eq!(
            gen, m as i64,
            "round {round}: Config.gen must match the rows (no half-applied txn)"
        );
        next_seq = m;
    }
}

/// Several writers at once (so commits share fsyncs): after a SIGKILL at a seeded
/// random total of acknowledgements, every writer's acknowledged rows are present.
#[test]
fn sigkill_with_concurrent_writers() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const WRITERS: usize = 4;
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED ^ 0xc0c0);
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(Impl::Nestdb, dir.path(), &[]);
    let mut next = [0u64; WRITERS];
    for round in 0..6 {
        let target: u64 = rng.gen_range(10..200);
        let total = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let sock = s.sock.clone();
                let total = total.clone();
                let start = next[w];
                std::thread::spawn(move || {
                    let mut c = common::Rpc::connect(&sock);
                    let mut acked = start;
                    let mut sent = start;
                    loop {
                        while sent < acked + 4 {
                            let m = Message::Request {
                                method: "transact".into(),
                                params: json!(["Test", {"op": "insert", "table": "Node",
                                    "row": {"name": format!("w{w}-{sent}")}}]),
                                id: json!(sent),
                            };
                            if c.stream.write_all(&m.to_bytes()).is_err() {
                                return acked;
                            }
                            sent += 1;
                        }
                        match c.read_message() {
                            Some(Message::Reply { result, .. }) => {
                                assert!(result[0]["uuid"].is_array(), "{result}");
                                acked += 1;
                                total.fetch_add(1, Ordering::SeqCst);
                            }
                            None => return acked,
                            Some(other) => panic!("unexpected {other:?}"),
                        }
                    }
                })
            })
            .collect();
        common::wait_until("enough acknowledged transactions", || {
            (total.load(Ordering::SeqCst) >= target).then_some(())
        });
        s.kill();
        let acked: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        s.launch();
        let mut c = s.client();
        let r = c
            .transact(json!([{"op": "select", "table": "Node", "where": [], "columns": ["name"]}]));
        let present: BTreeSet<String> = r[0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["name"].as_str().unwrap().to_owned())
            .collect();
        for w in 0..WRITERS {
            let mine: BTreeSet<u64> = present
                .iter()
                .filter_map(|n| n.strip_prefix(&format!("w{w}-")))
                .map(|x| x.parse().unwrap())
                .collect();
            let m = mine.len() as u64;
            assert!(
                m >= acked[w],
                "round {round}: writer {w} had {} acknowledged, {m} present",
                acked[w]
            );
            assert_eq!(
                mine,
                (0..m).collect::<BTreeSet<u64>>(),
                "round {round}: writer {w} rows must be a prefix"
            );
            next[w] = m;
        }
    }
}
