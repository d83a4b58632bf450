//! nestdb-server's Prometheus metrics (`--metrics-address`): transactions
//! counted as clients commit them, the commit-latency histogram filled,
//! the rows and log size of the database, and an exposition that
//! `promtool check metrics` accepts.

mod common;

use common::{wait_until, Impl, ServerProc};
use serde_json::json;
use std::io::{Read, Write};

use sluice_testkit::free_port;
use sluice_testkit::prometheus::{promtool_check, sample};

fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(common::WAIT)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Some(body.to_string())
}

#[test]
fn transactions_latency_and_size_are_exposed() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let srv = ServerProc::start(
        Impl::Nestdb,
        dir.path(),
        &[&format!("--metrics-address=127.0.0.1:{port}")],
    );
    let before = wait_until("the metrics endpoint", || scrape(port));
    assert_eq!(
        sample(&before, "nestdb_transactions_total "),
        0.0,
        "{before}"
    );
    let mut c = srv.client();
    for i in 0..5 {
        let r = c.transact(json!([
            {"op": "insert", "table": "Node", "row": {"name": format!("n{i}")}},
        ]));
        assert!(r[0].get("uuid").is_some(), "{r:?}");
    }
    // A failing one (a duplicate index key) counts as failed.
    let r = c.transact(json!([
        {"op": "insert", "table": "Node", "row": {"name": "n0"}},
    ]));
    assert!(r.iter().any(|x| x.get("error").is_some()), "{r:?}");
    let after = scrape(port).expect("scrape");
    assert_eq!(sample(&after, "nestdb_transactions_total "), 5.0, "{after}");
    assert_eq!(
        sample(&after, "nestdb_transactions_failed_total "),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "nestdb_commit_seconds_count "),
        5.0,
        "{after}"
    );
    assert_eq!(sample(&after, "nestdb_rows{db=\"Test\"} "), 5.0, "{after}");
    assert!(
        sample(&after, "nestdb_log_bytes{db=\"Test\"} ") > 0.0,
        "{after}"
    );
    assert_eq!(sample(&after, "nestdb_sessions "), 1.0, "{after}");
    if let Err(why) = promtool_check(&after) {
        common::report_skip(&format!("nestdb metrics: {why}"));
    }
}
