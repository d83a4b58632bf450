//! nestdb-server's Prometheus metrics (`--metrics-address`): transactions
//! counted as clients commit them, the commit-latency histogram filled,
//! the rows and log size of the database, and an exposition that
//! `promtool check metrics` accepts.

mod common;

use common::{wait_until, Impl, ServerProc};
use serde_json::json;
use std::io::{Read, Write};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
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
        value(&before, "nestdb_transactions_total "),
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
    assert_eq!(value(&after, "nestdb_transactions_total "), 5.0, "{after}");
    assert_eq!(
        value(&after, "nestdb_transactions_failed_total "),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "nestdb_commit_seconds_count "),
        5.0,
        "{after}"
    );
    assert_eq!(value(&after, "nestdb_rows{db=\"Test\"} "), 5.0, "{after}");
    assert!(
        value(&after, "nestdb_log_bytes{db=\"Test\"} ") > 0.0,
        "{after}"
    );
    assert_eq!(value(&after, "nestdb_sessions "), 1.0, "{after}");
    if common::have("promtool") {
        std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(&after);
    } else {
        common::report_skip(
            "nestdb metrics: promtool check metrics not run (install Debian's prometheus package)",
        );
    }
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    /// Runs the command with `input` on stdin; asserts it succeeded.
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}
