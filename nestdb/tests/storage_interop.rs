//! On-disk compatibility and recovery: ovsdb-tool reads nestdb's files, nestdb opens
//! files written by ovsdb-server, a torn tail is recovered, and compaction (automatic
//! and via `ovs-appctl ovsdb-server/compact`) keeps every row.

mod common;

use common::{have, run, run_ok, Impl, Rpc, ServerProc};
use serde_json::{json, Value};
use std::io::Write;

fn stop(s: &mut ServerProc) {
    let mut ctl = Rpc::connect(&s.ctl);
    let _ = ctl.call("exit", json!([]));
    if let Some(p) = s.proc.as_mut() {
        let st = common::wait_until("server to exit", || p.child.try_wait().ok().flatten());
        assert!(st.success(), "server exited with {st}");
    }
    s.proc = None;
}

#[test]
fn ovsdb_tool_reads_and_compacts_nestdb_files() {
    if !have("ovsdb-tool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(Impl::Nestdb, dir.path(), &[]);
    let mut c = s.client();
    c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "a", "tags": ["set", ["x", "y"]]}}, {"op": "comment", "comment": "first"}]));
    c.transact(json!([{"op": "update", "table": "Node", "where": [], "row": {"tags": ["set", ["y", "z"]]}}]));
    c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "b"}}]));
    drop(c);
    stop(&mut s);
    let db = s.db.to_str().unwrap().to_owned();
    let log = run_ok("ovsdb-tool", &["show-log", &db]);
    assert!(
        log.contains("record 0: \"Test\" schema, version=\"1.2.3\""),
        "{log}"
    );
    assert!(
        log.contains("record 1:") && log.contains("\"first\""),
        "{log}"
    );
    assert!(log.contains("record 3:"), "{log}");
    assert_eq!(run_ok("ovsdb-tool", &["db-version", &db]).trim(), "1.2.3");
    assert_eq!(run_ok("ovsdb-tool", &["db-name", &db]).trim(), "Test");
    let q = run_ok(
        "ovsdb-tool",
        &[
            "query",
            &db,
            r#"["Test",{"op":"select","table":"Node","where":[],"columns":["name","tags"]}]"#,
        ],
    );
    let v: Value = serde_json::from_str(&q).unwrap();
    let mut rows = v[0]["rows"].as_array().unwrap().clone();
    rows.sort_by_key(|r| r["name"].to_string());
    assert_eq!(
        Value::Array(rows),
        json!([{"name": "a", "tags": ["set", ["y", "z"]]}, {"name": "b", "tags": ["set", []]}])
    );
    run_ok("ovsdb-tool", &["compact", &db]);
    s.launch();
    let mut c = s.client();
    assert_eq!(c.node_names(), vec!["a", "b"]);
}

#[test]
fn nestdb_opens_files_written_by_ovsdb_server() {
    if !have("ovsdb-server") || !have("ovsdb-tool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut o = ServerProc::start(Impl::OvsdbServer, dir.path(), &[]);
    let mut c = o.client();
    c.transact(json!([{"op": "insert", "table": "Port", "uuid-name": "p", "row": {"name": "p", "ips": ["set", ["1", "2"]]}},
                      {"op": "insert", "table": "Node", "row": {"name": "a", "ports": ["named-uuid", "p"], "labels": ["map", [["k", "v"], ["q", "r"]]]}}]));
    // Diff records (_is_diff) for sets and maps, and a deletion.
    c.transact(json!([{"op": "mutate", "table": "Port", "where": [], "mutations": [["ips", "delete", "1"], ["ips", "insert", "3"]]},
                      {"op": "mutate", "table": "Node", "where": [], "mutations": [["labels", "delete", ["set", ["k"]]], ["labels", "insert", ["map", [["n", "m"]]]]]}]));
    c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "gone"}}]));
    c.transact(json!([{"op": "delete", "table": "Node", "where": [["name", "==", "gone"]]}]));
    let q = json!([{"op": "select", "table": "Node", "where": [], "columns": ["_uuid", "name", "ports", "labels"]},
                   {"op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name", "ips"]}]);
    let theirs = c.transact(q.clone());
    drop(c);
    o.kill();
    let mut n = ServerProc::prepare(Impl::Nestdb, dir.path(), &[]);
    n.db = o.db.clone();
    n.launch();
    let mut c = n.client();
    let ours = c.transact(q);
    assert_eq!(
        ours, theirs,
        "nestdb must see exactly what ovsdb-server stored"
    );
    // And nestdb keeps appending to the same file in a form ovsdb-server can read back.
    c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "from-nestdb"}}]));
    drop(c);
    n.kill();
    o.launch();
    let mut c = o.client();
    assert_eq!(c.node_names(), vec!["a", "from-nestdb"]);
}

#[test]
fn torn_tail_is_truncated_and_complete_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(Impl::Nestdb, dir.path(), &[]);
    let mut c = s.client();
    for i in 0..10 {
        c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": format!("n{i}")}}]));
    }
    drop(c);
    s.kill();
    let good_len = std::fs::metadata(&s.db).unwrap().len();
    // A crash in the middle of writing a record: header and half of the JSON.
    let rec = nestdb::log::encode_record(
        &json!({"Node": {"7ab1b5a0-0000-4000-8000-000000000001": {"name": "torn"}}}),
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&s.db)
        .unwrap();
    f.write_all(&rec[..rec.len() / 2]).unwrap();
    drop(f);
    s.launch();
    let mut c = s.client();
    let got = c.node_names();
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(!got.contains(&"torn".to_string()));
    assert_eq!(
        std::fs::metadata(&s.db).unwrap().len(),
        good_len,
        "torn tail must be truncated"
    );
    c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "after"}}]));
    drop(c);
    s.kill();
    if have("ovsdb-tool") {
        let out = run("ovsdb-tool", &["show-log", s.db.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("record 11:"));
    }
    // A corrupted byte inside the last record: that record alone is dropped.
    let mut data = std::fs::read(&s.db).unwrap();
    let n = data.len();
    data[n - 5] ^= 0x20;
    std::fs::write(&s.db, &data).unwrap();
    s.launch();
    let mut c = s.client();
    assert_eq!(c.node_names().len(), 10);
}

#[test]
fn compaction_automatic_and_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(Impl::Nestdb, dir.path(), &["--compact-threshold=20000"]);
    let mut c = s.client();
    for i in 0..400 {
        c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": format!("n{i}")}}]));
        c.transact(json!([{"op": "delete", "table": "Node", "where": [["name", "==", format!("n{}", i.max(1) - 1)]]}]));
    }
    let mut ctl = Rpc::connect(&s.ctl);
    let stats = ctl.call("stats", json!([])).unwrap();
    let text = stats.as_str().unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Test:"))
        .expect("stats has a line for Test");
    assert!(
        !line.contains("compactions:0 "),
        "automatic compaction never ran: {text}"
    );
    let size = std::fs::metadata(&s.db).unwrap().len();
    assert!(size < 200_000, "log not compacted: {size} bytes");
    if have("ovs-appctl") {
        let out = run_ok(
            "ovs-appctl",
            &[
                "-t",
                s.ctl.to_str().unwrap(),
                "ovsdb-server/compact",
                "Test",
            ],
        );
        assert_eq!(out.trim(), "");
        let dbs = run_ok(
            "ovs-appctl",
            &["-t", s.ctl.to_str().unwrap(), "ovsdb-server/list-dbs"],
        );
        assert_eq!(dbs, "_Server\nTest\n");
    } else {
        ctl.call("ovsdb-server/compact", json!([])).unwrap();
    }
    let records = nestdb::log::read_records(&s.db).unwrap().records;
    assert_eq!(records.len(), 2, "compaction leaves schema + snapshot");
    let before = c.node_names();
    drop(c);
    s.kill();
    s.launch();
    let mut c = s.client();
    assert_eq!(c.node_names(), before);
    assert_eq!(before, vec!["n399"]);
}

#[test]
fn ovs_tools_respect_nestdbs_lock() {
    if !have("ovsdb-tool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(Impl::Nestdb, dir.path(), &[]);
    let mut c = s.client();
    c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "a"}}]));
    let db = s.db.to_str().unwrap().to_owned();
    // Read-only inspection works while nestdb serves the file...
    assert!(run_ok("ovsdb-tool", &["show-log", &db]).contains("record 1:"));
    // ...but a writer is refused instead of corrupting it.
    let out = run("ovsdb-tool", &["compact", &db]);
    assert!(
        !out.status.success(),
        "ovsdb-tool compact must not run on a served database"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.node_names(), vec!["a"]);
    drop(c);
    s.kill();
    // After nestdb is gone the lock is free again.
    run_ok("ovsdb-tool", &["compact", &db]);
}
