//! End-to-end protocol tests against a running nestdb-server, over a raw JSON-RPC
//! client: every method, every transaction operation, monitors of all three versions,
//! locks, blocking waits, bad input and slow clients.

mod common;

use common::{Impl, Rpc, ServerProc};
use serde_json::{json, Value};
use std::io::Write;

fn start(extra: &[&str]) -> (tempfile::TempDir, ServerProc) {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(Impl::Nestdb, dir.path(), extra);
    (dir, s)
}

fn uuid_of(v: &Value) -> String {
    v["uuid"][1]
        .as_str()
        .expect("insert result has a uuid")
        .to_owned()
}

#[test]
fn basic_methods() {
    let (_d, s) = start(&[]);
    let mut c = s.client();
    let dbs = c.call("list_dbs", json!([])).unwrap();
    assert_eq!(dbs, json!(["_Server", "Test"]));
    let schema = c.call("get_schema", json!(["Test"])).unwrap();
    assert_eq!(schema["version"], "1.2.3");
    assert_eq!(
        c.call("get_schema", json!(["Nope"])).unwrap_err(),
        json!("unknown database")
    );
    let id = c.call("get_server_id", json!([])).unwrap();
    assert!(uuid::Uuid::parse_str(id.as_str().unwrap()).is_ok());
    assert_eq!(c.call("echo", json!(["hi", 1])).unwrap(), json!(["hi", 1]));
    assert_eq!(
        c.call("set_db_change_aware", json!([true])).unwrap(),
        json!({})
    );
    assert_eq!(
        c.call("frob", json!([])).unwrap_err()["error"],
        "unknown method"
    );
    let e = c
        .call(
            "transact",
            json!(["Nope", {"op": "comment", "comment": "x"}]),
        )
        .unwrap_err();
    assert_eq!(e, json!("unknown database"));
    // _Server lists every database with its schema.
    let r = c
        .call("transact", json!(["_Server", {"op": "select", "table": "Database", "where": [["name", "==", "Test"]]}]))
        .unwrap();
    let row = &r[0]["rows"][0];
    assert_eq!(row["model"], "standalone");
    assert_eq!(row["leader"], true);
    let embedded: Value = serde_json::from_str(row["schema"].as_str().unwrap()).unwrap();
    assert_eq!(embedded["name"], "Test");
    // ...and is read-only for clients, as in ovsdb-server.
    let r = c
        .call(
            "transact",
            json!(["_Server", {"op": "comment", "comment": "x"}, {"op": "delete", "table": "Database", "where": []}]),
        )
        .unwrap();
    assert_eq!(r[0], json!({}));
    assert_eq!(r[1]["error"], "not allowed");
}

#[test]
fn transact_every_operation() {
    let (_d, s) = start(&[]);
    let mut c = s.client();
    let r = c.transact(json!([
        {"op": "insert", "table": "Port", "uuid-name": "p1", "row": {"name": "eth0", "ips": ["set", ["10.0.0.1", "10.0.0.2"]]}},
        {"op": "insert", "table": "Node", "uuid-name": "n1",
         "row": {"name": "a", "kind": "worker", "cores": 4, "ports": ["named-uuid", "p1"],
                 "labels": ["map", [["zone", "z1"]]], "serial": 7}},
        {"op": "insert", "table": "Node", "row": {"name": "b", "peers": ["named-uuid", "n1"]}},
        {"op": "comment", "comment": "setup"},
        {"op": "commit", "durable": true}
    ]));
    assert_eq!(r.len(), 5, "{r:?}");
    assert!(r.iter().all(|x| x.get("error").is_none()), "{r:?}");
    let n1 = uuid_of(&r[1]);
    let r = c.transact(json!([
        {"op": "select", "table": "Node", "where": [["name", "==", "b"]], "columns": ["peers"]},
        {"op": "update", "table": "Node", "where": [["name", "==", "a"]], "row": {"cores": 8}},
        {"op": "mutate", "table": "Node", "where": [["name", "==", "a"]],
         "mutations": [["cores", "+=", 2], ["labels", "insert", ["map", [["rack", "r7"]]]], ["tags", "insert", "blue"]]},
        {"op": "select", "table": "Node", "where": [["_uuid", "==", ["uuid", n1.clone()]]], "columns": ["cores", "labels", "tags"]},
        {"op": "wait", "table": "Node", "where": [["name", "==", "a"]], "columns": ["cores"], "until": "==", "rows": [{"cores": 10}], "timeout": 0}
    ]));
    assert_eq!(r[0]["rows"][0]["peers"], json!(["uuid", n1]));
    assert_eq!(r[1], json!({"count": 1}));
    assert_eq!(r[2], json!({"count": 1}));
    assert_eq!(
        r[3]["rows"][0],
        json!({"cores": 10, "labels": ["map", [["rack", "r7"], ["zone", "z1"]]], "tags": "blue"})
    );
    assert_eq!(r[4], json!({}));
    // Deleting node a clears b's weak reference and garbage-collects the orphaned port.
    let r = c.transact(json!([
        {"op": "delete", "table": "Node", "where": [["name", "==", "a"]]},
        {"op": "select", "table": "Node", "where": [], "columns": ["name", "peers"]},
    ]));
    assert_eq!(r[0], json!({"count": 1}));
    let r = c.transact(json!([
        {"op": "select", "table": "Node", "where": [], "columns": ["name", "peers"]},
        {"op": "select", "table": "Port", "where": []}
    ]));
    assert_eq!(r[0]["rows"], json!([{"name": "b", "peers": ["set", []]}]));
    assert_eq!(
        r[1]["rows"],
        json!([]),
        "unreferenced Port must be garbage-collected"
    );
    // Errors: abort, constraint, referential integrity, unknown names, immutable column.
    let r = c.transact(
        json!([{"op": "insert", "table": "Node", "row": {"name": "c"}}, {"op": "abort"}]),
    );
    assert_eq!(r[1]["error"], "aborted");
    let r =
        c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "c", "cores": 999}}]));
    assert_eq!(r[0]["error"], "constraint violation");
    let r = c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "b"}}]));
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[1]["error"], "constraint violation",
        "duplicate index value is a commit-time error"
    );
    let r = c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "c", "ports": ["uuid", "5c3a3e5e-0000-4000-8000-000000000001"]}}]));
    assert_eq!(r[1]["error"], "referential integrity violation");
    let r =
        c.transact(json!([{"op": "update", "table": "Node", "where": [], "row": {"serial": 1}}]));
    assert_eq!(r[0]["error"], "constraint violation");
    let r = c.transact(json!([{"op": "select", "table": "Nope", "where": []}]));
    assert_eq!(
        r[0]["error"], "syntax error",
        "unknown table, as ovsdb-server reports it"
    );
    let r = c.transact(json!([{"op": "select", "table": "Node", "where": [["nope", "==", 1]]}]));
    assert_eq!(r[0]["error"], "unknown column");
    let r = c.transact(json!([{"op": "insert", "table": "Node", "row": {"name": 5}}]));
    assert_eq!(r[0]["error"], "syntax error");
    let r = c.transact(json!([{"op": "insert", "table": "Config", "row": {}}, {"op": "insert", "table": "Config", "row": {}}]));
    assert_eq!(r[2]["error"], "constraint violation", "maxRows");
    let r = c.transact(json!([{"op": "assert", "lock": "l"}]));
    assert_eq!(r[0]["error"], "not owner");
}

#[test]
fn monitors_of_every_version() {
    let (_d, s) = start(&[]);
    let mut m = s.client();
    let mut w = s.client();
    w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "pre", "cores": 1}}]));
    let init = m
        .call(
            "monitor",
            json!(["Test", "m1", {"Node": {"columns": ["name", "cores"]}}]),
        )
        .unwrap();
    assert_eq!(
        init["Node"].as_object().unwrap().values().next().unwrap(),
        &json!({"new": {"name": "pre", "cores": 1}})
    );
    let init2 = m
        .call("monitor_cond", json!(["Test", "m2", {"Node": [{"columns": ["name", "cores"], "where": [["cores", ">", 5]]}]}]))
        .unwrap();
    assert_eq!(init2, json!({}));
    let r =
        w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "big", "cores": 9}}]));
    let big = uuid_of(&r[0]);
    let mut got = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let (method, params) = m.notification();
        got.insert(method, params);
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got["update"],
        json!(["m1", {"Node": {big.clone(): {"new": {"name": "big", "cores": 9}}}}])
    );
    assert_eq!(
        got["update2"],
        json!(["m2", {"Node": {big.clone(): {"insert": {"name": "big", "cores": 9}}}}])
    );
    // Condition change: now watch small nodes.
    let r = m
        .call(
            "monitor_cond_change",
            json!(["m2", "m2", {"Node": [{"where": [["cores", "<", 5]]}]}]),
        )
        .unwrap();
    assert_eq!(r, json!({}));
    let (method, params) = m.notification();
    assert_eq!(method, "update2");
    let u = params[1]["Node"].as_object().unwrap();
    assert_eq!(u[&big], json!({"delete": null}));
    assert_eq!(u.len(), 2, "pre is inserted, big deleted: {u:?}");
    assert_eq!(m.call("monitor_cancel", json!(["m1"])).unwrap(), json!({}));
    assert_eq!(
        m.call("monitor_cancel", json!(["m1"])).unwrap_err(),
        json!("unknown monitor")
    );
    assert_eq!(
        m.call("monitor", json!(["Test", "m2", {"Node": {}}]))
            .unwrap_err(),
        json!("duplicate monitor ID")
    );
    w.transact(json!([{"op": "update", "table": "Node", "where": [["name", "==", "big"]], "row": {"cores": 2}}]));
    let (method, params) = m.notification();
    assert_eq!(method, "update2", "cancelled m1 must not report");
    assert_eq!(
        params[1]["Node"][&big],
        json!({"insert": {"name": "big", "cores": 2}})
    );
}

#[test]
fn monitor_cond_since_resumes_from_history() {
    let (_d, mut s) = start(&[]);
    let mut w = s.client();
    w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "old"}}]));
    let req = json!({"Node": [{"columns": ["name"]}]});
    let mut m = s.client();
    let r = m
        .call(
            "monitor_cond_since",
            json!(["Test", "x", req, "00000000-0000-0000-0000-000000000000"]),
        )
        .unwrap();
    assert_eq!(r[0], false);
    assert_eq!(r[2]["Node"].as_object().unwrap().len(), 1);
    let last = r[1].as_str().unwrap().to_owned();
    w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "n1"}}]));
    let (method, params) = m.notification();
    assert_eq!(method, "update3");
    let last2 = params[1].as_str().unwrap().to_owned();
    assert_ne!(last, last2);
    drop(m);
    // While disconnected, two more transactions.
    let r = w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "n2"}}]));
    let n2 = uuid_of(&r[0]);
    w.transact(json!([{"op": "delete", "table": "Node", "where": [["name", "==", "n1"]]}]));
    let mut m = s.client();
    let r = m
        .call("monitor_cond_since", json!(["Test", "x", req, last2]))
        .unwrap();
    assert_eq!(
        r[0], true,
        "history must contain the client's last transaction"
    );
    let u = r[2]["Node"].as_object().unwrap();
    assert_eq!(
        u.len(),
        2,
        "only the two missed changes, no full dump: {u:?}"
    );
    assert_eq!(u[&n2], json!({"insert": {"name": "n2"}}));
    let last3 = r[1].as_str().unwrap().to_owned();
    drop(m);
    drop(w);
    // Transaction ids survive a restart: resuming at the head finds nothing to send.
    s.kill();
    s.launch();
    let mut m = s.client();
    let r = m
        .call("monitor_cond_since", json!(["Test", "x", req, last3]))
        .unwrap();
    assert_eq!(r[0], true);
    assert_eq!(r[2], json!({}));
}

#[test]
fn locks_notify_locked_and_stolen() {
    let (_d, s) = start(&[]);
    let mut a = s.client();
    let mut b = s.client();
    assert_eq!(
        a.call("lock", json!(["L"])).unwrap(),
        json!({"locked": true})
    );
    assert_eq!(
        b.call("lock", json!(["L"])).unwrap(),
        json!({"locked": false})
    );
    assert_eq!(
        a.call("lock", json!(["L"])).unwrap_err()["error"],
        "syntax error",
        "a lock requested twice is refused as ovsdb-server does"
    );
    assert_eq!(
        b.call("steal", json!(["L"])).unwrap_err()["error"],
        "syntax error",
        "a waiter may not steal"
    );
    assert_eq!(
        a.transact(json!([{"op": "assert", "lock": "L"}]))[0],
        json!({})
    );
    assert_eq!(
        b.transact(json!([{"op": "assert", "lock": "L"}]))[0]["error"],
        "not owner"
    );
    assert_eq!(a.call("unlock", json!(["L"])).unwrap(), json!({}));
    assert_eq!(b.notification(), ("locked".to_string(), json!(["L"])));
    assert_eq!(
        a.call("steal", json!(["L"])).unwrap(),
        json!({"locked": true})
    );
    assert_eq!(b.notification(), ("stolen".to_string(), json!(["L"])));
    assert_eq!(
        b.transact(json!([{"op": "assert", "lock": "L"}]))[0]["error"],
        "not owner"
    );
    // The owner disconnecting hands the lock to the next waiter.
    drop(a);
    assert_eq!(b.notification(), ("locked".to_string(), json!(["L"])));
}

#[test]
fn wait_blocks_until_satisfied_or_times_out() {
    let (_d, s) = start(&[]);
    let mut a = s.client();
    let mut b = s.client();
    let req = nestdb::jsonrpc::Message::Request {
        method: "transact".into(),
        params: json!(["Test",
            {"op": "wait", "table": "Node", "where": [["name", "==", "w"]], "columns": ["name"], "until": "!=", "rows": [], "timeout": 600000},
            {"op": "select", "table": "Node", "where": [["name", "==", "w"]], "columns": ["name"]}]),
        id: json!("blocked"),
    };
    a.send_raw(&req.to_bytes());
    // The blocked transaction does not stop the server from serving b.
    b.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "w"}}]));
    match a.read_message() {
        Some(nestdb::jsonrpc::Message::Reply { result, id }) => {
            assert_eq!(id, json!("blocked"));
            assert_eq!(result, json!([{}, {"rows": [{"name": "w"}]}]));
        }
        other => panic!("expected the wait to complete, got {other:?}"),
    }
    // A timeout too large to represent as a deadline simply never expires.
    let req = nestdb::jsonrpc::Message::Request {
        method: "transact".into(),
        params: json!(["Test",
            {"op": "wait", "table": "Node", "where": [["name", "==", "v"]], "columns": ["name"], "until": "!=", "rows": [], "timeout": u64::MAX}]),
        id: json!("huge"),
    };
    a.send_raw(&req.to_bytes());
    b.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "v"}}]));
    match a.read_message() {
        Some(nestdb::jsonrpc::Message::Reply { result, id }) => {
            assert_eq!(id, json!("huge"));
            assert_eq!(result, json!([{}]));
        }
        other => panic!("expected the wait to complete, got {other:?}"),
    }
    let r = a.transact(json!([{"op": "wait", "table": "Node", "where": [], "columns": ["name"], "until": "==", "rows": [], "timeout": 50}]));
    assert_eq!(r[0]["error"], "timed out");
}

#[test]
fn bad_input_gets_errors_and_others_keep_working() {
    let (_d, s) = start(&["--max-message-size=4096"]);
    let mut good = s.client();
    // Malformed JSON: an error reply, then disconnect.
    let mut bad = s.client();
    bad.send_raw(b"{\"method\": \"echo\", \"params\": [tru]}");
    match bad.read_message() {
        Some(nestdb::jsonrpc::Message::Error { error, id }) => {
            assert_eq!(id, Value::Null);
            assert_eq!(error["error"], "protocol error");
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(
        bad.read_message().is_none(),
        "malformed client must be disconnected"
    );
    // Not a message object, then an oversize message.
    let mut bad = s.client();
    bad.send_raw(b"[1,2,3]");
    assert!(matches!(
        bad.read_message(),
        Some(nestdb::jsonrpc::Message::Error { .. })
    ));
    let mut big = s.client();
    let huge = format!(
        "{{\"method\":\"echo\",\"params\":[\"{}\"],\"id\":1}}",
        "x".repeat(10000)
    );
    let _ = big.stream.write_all(huge.as_bytes());
    match big.read_message() {
        Some(nestdb::jsonrpc::Message::Error { error, .. }) => {
            assert!(
                error["details"]
                    .as_str()
                    .unwrap()
                    .contains("4096-byte limit"),
                "{error}"
            )
        }
        other => panic!("expected an oversize error, got {other:?}"),
    }
    // Wrong types inside a valid request: precise errors, connection stays up.
    let mut c = s.client();
    assert_eq!(
        c.call("transact", json!(["Test", 5])).unwrap()[0]["error"],
        "syntax error"
    );
    assert_eq!(
        c.call("transact", json!([])).unwrap_err()["error"],
        "syntax error"
    );
    assert_eq!(
        c.call("monitor", json!(["Test", 1, {"Nope": {}}]))
            .unwrap_err()["error"],
        "syntax error"
    );
    assert_eq!(
        c.call("lock", json!([7])).unwrap_err()["error"],
        "syntax error"
    );
    assert_eq!(
        good.call("echo", json!(["still here"])).unwrap(),
        json!(["still here"])
    );
}

#[test]
fn client_that_stops_reading_is_disconnected() {
    let (_d, s) = start(&["--max-backlog=65536"]);
    let mut stuck = s.client();
    stuck
        .call("monitor", json!(["Test", 0, {"Node": {}}]))
        .unwrap();
    // `stuck` now never reads; a writer floods monitor updates.
    let mut w = s.client();
    let mut ctl = Rpc::connect(&s.ctl);
    let big = "v".repeat(4000);
    let mut dropped = false;
    for i in 0..3000 {
        let r = w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": format!("n{i}"), "labels": ["map", [["k", big]]]}}]));
        assert!(r[0].get("error").is_none(), "{r:?}");
        let stats = ctl.call("stats", json!([])).unwrap();
        if stats.as_str().unwrap().contains("backlog-drops:1") {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the stuck client was never disconnected");
    assert_eq!(w.call("echo", json!([])).unwrap(), json!([]));
}

#[test]
fn many_clients_at_once() {
    let (_d, s) = start(&[]);
    let mut clients: Vec<Rpc> = (0..64).map(|_| s.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let m = nestdb::jsonrpc::Message::Request {
            method: "transact".into(),
            params: json!(["Test", {"op": "insert", "table": "Node", "row": {"name": format!("c{i}")}}]),
            id: json!(i),
        };
        c.send_raw(&m.to_bytes());
    }
    for (i, c) in clients.iter_mut().enumerate() {
        match c.read_message() {
            Some(nestdb::jsonrpc::Message::Reply { result, id }) => {
                assert_eq!(id, json!(i));
                assert!(result[0]["uuid"].is_array(), "{result}");
            }
            other => panic!("client {i}: {other:?}"),
        }
    }
    let r = clients[0]
        .transact(json!([{"op": "select", "table": "Node", "where": [], "columns": ["name"]}]));
    assert_eq!(r[0]["rows"].as_array().unwrap().len(), 64);
}

#[test]
fn acknowledged_data_survives_sigkill() {
    let (_d, mut s) = start(&[]);
    let mut c = s.client();
    let r = c.transact(
        json!([{"op": "insert", "table": "Node", "row": {"name": "durable", "cores": 3}}]),
    );
    assert!(r[0]["uuid"].is_array());
    drop(c);
    s.kill();
    s.launch();
    let mut c = s.client();
    let r = c.transact(
        json!([{"op": "select", "table": "Node", "where": [], "columns": ["name", "cores"]}]),
    );
    assert_eq!(r[0]["rows"], json!([{"name": "durable", "cores": 3}]));
}

#[test]
fn control_socket_commands() {
    let (_d, s) = start(&[]);
    let mut ctl = Rpc::connect(&s.ctl);
    assert_eq!(
        ctl.call("list-dbs", json!([])).unwrap(),
        json!("_Server\nTest\n")
    );
    assert!(ctl
        .call("frob", json!([]))
        .unwrap_err()
        .as_str()
        .unwrap()
        .contains("not a valid command"));
    assert_eq!(
        ctl.call("ovsdb-server/compact", json!(["Test"])).unwrap(),
        json!("")
    );
    assert!(ctl.call("compact", json!(["Nope"])).is_err());
    assert_eq!(ctl.call("exit", json!([])).unwrap(), json!(""));
}

#[test]
fn running_out_of_descriptors_does_not_stop_service() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("s.ovsschema"), common::SCHEMA).unwrap();
    let sock = d.join("n.sock");
    let mut cmd = std::process::Command::new(common::nestdb_bin());
    cmd.arg(d.join("n.db"))
        .arg(format!("--schema={}", d.join("s.ovsschema").display()))
        .arg(format!("--remote=punix:{}", sock.display()))
        .arg(format!("--unixctl={}", d.join("n.ctl").display()))
        .stderr(std::process::Stdio::null());
    // SAFETY: pre_exec runs in the forked child before exec; setrlimit is
    // async-signal-safe and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 32,
                rlim_max: 32,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _p = common::Proc {
        child: cmd.spawn().unwrap(),
        what: "nestdb".into(),
    };
    let mut first = common::wait_until("server to listen", || {
        std::os::unix::net::UnixStream::connect(&sock)
            .ok()
            .map(|_| Rpc::connect(&sock))
    });
    assert_eq!(first.call("echo", json!([1])).unwrap(), json!([1]));
    // Far more connections than descriptors: the kernel queues them.
    let mut extra: Vec<Rpc> = (0..60).map(|_| Rpc::connect(&sock)).collect();
    // The server keeps serving an existing session meanwhile.
    for i in 0..5 {
        assert_eq!(first.call("echo", json!([i])).unwrap(), json!([i]));
    }
    // Closing most connections frees descriptors; the queued ones are then accepted
    // and served.
    let mut late = extra.split_off(50);
    drop(extra);
    for c in late.iter_mut() {
        assert_eq!(c.call("echo", json!(["late"])).unwrap(), json!(["late"]));
    }
    assert_eq!(first.call("echo", json!(["end"])).unwrap(), json!(["end"]));
}
