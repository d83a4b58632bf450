//! Protocol tests driven by real OVS clients against nestdb-server: `ovsdb-client`
//! (transact, dump, monitor, monitor-cond-since, lock/steal) and the Python `ovs` IDL.
//! Results are checked, not just exit codes.

mod common;

use common::{have, run_ok, Impl, Proc, ServerProc, WAIT};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;

/// A background ovsdb-client whose stdout lines arrive on a channel.
struct Background {
    _proc: Proc,
    lines: Receiver<String>,
}

impl Background {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new("ovsdb-client")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ovsdb-client");
        let rx = sluice_testkit::lines_of(child.stdout.take().unwrap());
        Self {
            _proc: Proc {
                child,
                what: "ovsdb-client".into(),
            },
            lines: rx,
        }
    }

    /// Next non-empty line, failing after [`WAIT`].
    fn line(&self) -> String {
        loop {
            let l = self
                .lines
                .recv_timeout(WAIT)
                .expect("ovsdb-client printed nothing within the time limit");
            if !l.trim().is_empty() {
                return l;
            }
        }
    }
}

fn transact(s: &ServerProc, ops: Value) -> Value {
    let mut p = vec![json!("Test")];
    p.extend(ops.as_array().unwrap().iter().cloned());
    let out = run_ok(
        "ovsdb-client",
        &["transact", &s.remote(), &Value::Array(p).to_string()],
    );
    serde_json::from_str(&out).expect("ovsdb-client transact prints JSON")
}

#[test]
fn ovsdb_client_transact_and_dump() {
    if !have("ovsdb-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(Impl::Nestdb, dir.path(), &[]);
    let r = transact(
        &s,
        json!([{"op": "insert", "table": "Node", "row": {"name": "n1", "cores": 4, "labels": ["map", [["a", "b"]]]}},
               {"op": "select", "table": "Node", "where": [["name", "==", "n1"]], "columns": ["name", "cores", "labels"]}]),
    );
    assert!(r[0]["uuid"].is_array());
    assert_eq!(
        r[1]["rows"],
        json!([{"name": "n1", "cores": 4, "labels": ["map", [["a", "b"]]]}])
    );
    let r = transact(
        &s,
        json!([{"op": "insert", "table": "Node", "row": {"name": "n1"}}]),
    );
    assert_eq!(r[1]["error"], "constraint violation");
    let dbs = run_ok("ovsdb-client", &["list-dbs", &s.remote()]);
    assert_eq!(dbs.lines().collect::<Vec<_>>(), vec!["Test", "_Server"]);
    let tables = run_ok("ovsdb-client", &["list-tables", &s.remote(), "Test"]);
    for t in ["Node", "Port", "Config"] {
        assert!(tables.contains(t), "{tables}");
    }
    let dump = run_ok(
        "ovsdb-client",
        &[
            "--format=json",
            "dump",
            &s.remote(),
            "Test",
            "Node",
            "name",
            "cores",
        ],
    );
    let v: Value = serde_json::from_str(dump.trim()).expect("dump --format=json prints JSON");
    assert_eq!(v["headings"], json!(["cores", "name"]));
    assert_eq!(v["data"], json!([[4, "n1"]]));
    let schema = run_ok("ovsdb-client", &["get-schema-version", &s.remote(), "Test"]);
    assert_eq!(schema.trim(), "1.2.3");
}

#[test]
fn ovsdb_client_monitor_and_monitor_cond_since() {
    if !have("ovsdb-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(Impl::Nestdb, dir.path(), &[]);
    transact(
        &s,
        json!([{"op": "insert", "table": "Node", "row": {"name": "pre", "cores": 1}}]),
    );
    let remote = s.remote();
    let mon = Background::spawn(&[
        "--format=json",
        "monitor",
        &remote,
        "Test",
        "Node",
        "name,cores",
    ]);
    let init: Value = serde_json::from_str(&mon.line()).unwrap();
    assert_eq!(init["data"][0][1], "initial");
    assert_eq!(init["data"][0][2], "pre");
    let since = Background::spawn(&["monitor-cond-since", &remote, "Test", "[]", "Node", "name"]);
    let first = since.line();
    assert!(first.starts_with("found: false, last_id: "), "{first}");
    let r = transact(
        &s,
        json!([{"op": "insert", "table": "Node", "row": {"name": "post", "cores": 2}}]),
    );
    let uuid = r[0]["uuid"][1].as_str().unwrap().to_owned();
    let upd: Value = serde_json::from_str(&mon.line()).unwrap();
    assert_eq!(upd["data"], json!([[uuid, "insert", "post", 2]]));
    // monitor-cond-since prints the initial table, then "last_id: ..." and the insert.
    let mut saw_insert = false;
    for _ in 0..20 {
        let l = since.line();
        if l.starts_with(&uuid) {
            assert!(l.contains("insert") && l.contains("post"), "{l}");
            saw_insert = true;
            break;
        }
    }
    assert!(saw_insert, "monitor-cond-since never reported the insert");
    transact(
        &s,
        json!([{"op": "update", "table": "Node", "where": [["name", "==", "post"]], "row": {"cores": 3}}]),
    );
    let upd: Value = serde_json::from_str(&mon.line()).unwrap();
    assert_eq!(upd["data"][0][1], "old");
    assert_eq!(upd["data"][0][3], 2);
    assert_eq!(upd["data"][1][1], "new");
    assert_eq!(upd["data"][1][3], 3);
}

#[test]
fn ovsdb_client_lock_and_steal() {
    if !have("ovsdb-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(Impl::Nestdb, dir.path(), &[]);
    let remote = s.remote();
    let mut a = Background::spawn(&["lock", &remote, "L"]);
    assert_eq!(a.line(), r#"{"locked":true}"#);
    let b = Background::spawn(&["lock", &remote, "L"]);
    assert_eq!(b.line(), r#"{"locked":false}"#);
    a._proc.kill();
    assert_eq!(b.line(), "locked");
    assert_eq!(b.line(), r#"["L"]"#);
    let c = Background::spawn(&["steal", &remote, "L"]);
    assert_eq!(c.line(), r#"{"locked":true}"#);
    assert_eq!(b.line(), "stolen");
    assert_eq!(b.line(), r#"["L"]"#);
}

/// True when python3 and its `ovs` package (the OVS Python IDL) are
/// installed; otherwise records why the test is skipped.
fn have_python_ovs() -> bool {
    if !have("python3") {
        return false;
    }
    let probe = Command::new("python3")
        .args(["-c", "import ovs.db.idl"])
        .status();
    let ok = probe.map(|s| s.success()).unwrap_or(false);
    if !ok {
        common::report_skip("SKIPPED: the Python 'ovs' package is not installed (pip install ovs)");
    }
    ok
}

#[test]
fn python_idl_round_trip() {
    if !have_python_ovs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(Impl::Nestdb, dir.path(), &[]);
    // Pre-existing data the IDL must receive in its initial dump.
    let mut c = s.client();
    c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "seed", "cores": 5}}]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/idl_roundtrip.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(s.remote())
        .arg(dir.path().join("test.ovsschema"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "IDL script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("script prints a JSON report");
    assert_eq!(report["initial"], json!([["seed", 5]]));
    assert_eq!(report["commit"], "success");
    assert_eq!(
        report["after_commit"],
        json!([["from-idl", 7], ["seed", 5]])
    );
    assert_eq!(report["external_update_seen"], json!(["ext", 9]));
    assert_eq!(report["delete"], "success");
    // The server's view agrees with what the IDL did.
    assert_eq!(c.node_names(), vec!["ext", "seed"]);
}

#[test]
fn python_idl_resyncs_after_server_restart() {
    if !have_python_ovs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(Impl::Nestdb, dir.path(), &[]);
    s.client()
        .transact(json!([{"op": "insert", "table": "Node", "row": {"name": "before"}}]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/idl_resume.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(s.remote())
        .arg(dir.path().join("test.ovsschema"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let rx = sluice_testkit::lines_of(child.stdout.take().unwrap());
    let mut py = Proc {
        child,
        what: "python3".into(),
    };
    assert_eq!(rx.recv_timeout(WAIT).expect("IDL never synced"), "synced");
    // Restart the server under the connected IDL, then change the database.
    s.kill();
    s.launch();
    s.client()
        .transact(json!([{"op": "insert", "table": "Node", "row": {"name": "after-restart"}}]));
    let line = rx.recv_timeout(WAIT * 2).unwrap_or_else(|_| {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(py.child.stderr.as_mut().unwrap(), &mut err);
        panic!("IDL did not report after the restart: {err}")
    });
    let report: Value = serde_json::from_str(&line).expect("JSON report");
    assert_eq!(report["names"], json!(["after-restart", "before"]));
    assert_eq!(report["reconnected"], true);
    let st = common::wait_until("python to exit", || py.child.try_wait().ok().flatten());
    assert!(st.success());
}
