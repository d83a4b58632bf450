//! End-to-end tests against a real OVSDB server (ovsdb-server by default,
//! or `NESTDB_TEST_SERVER`), using the Sluice node schema.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use nestdb_client::{
    row, BackoffConfig, ChangeKind, Client, ClientError, Condition, Datum, Error, LockEvent,
    Monitor, MonitorConfig, MonitorEvent, MonitorMethod, Mutation, Mutator, Replica, Row, Schema,
    TableMonitor, Transaction, Uuid, WaitUntil,
};

use common::{Mode, Proxy, TestServer, DB, WAIT};
use sluice_testkit::rows;

fn port_row(name: &str, mac: &str, ips: &[&str]) -> Row {
    row([
        ("name", Datum::from(name)),
        ("mac", Datum::from(mac)),
        ("ips", Datum::set(ips.iter().copied())),
        ("interface_name", Datum::from(format!("veth-{name}"))),
        ("up", Datum::from(false)),
    ])
}

fn insert_port(c: &Client, name: &str, mac: &str, ips: &[&str]) -> Uuid {
    let out = c
        .transact(
            &Transaction::new(DB)
                .insert("Logical_Port", port_row(name, mac, ips))
                .named("lp"),
        )
        .expect("insert a logical port");
    out.uuid_of("lp").expect("the insert returns a uuid")
}

/// A `Service_Port` row (no name, no node port).
fn service_port_row(protocol: &str, port: i64, target: i64) -> Row {
    row([
        ("protocol", Datum::from(protocol)),
        ("port", Datum::from(port)),
        ("target_port", Datum::from(target)),
    ])
}

/// Inserts a `Remote_Node` row; returns its UUID.
fn insert_remote_node(c: &Client, name: &str, vtep: &str) -> Uuid {
    let row = row([("name", Datum::from(name)), ("vtep_ip", Datum::from(vtep))]);
    let out = c
        .transact(&Transaction::new(DB).insert("Remote_Node", row).named("rn"))
        .expect("insert a remote node");
    out.uuid_of("rn").expect("the insert returns a uuid")
}

fn fast_monitor(remote: &str, tables: &[&str], method: MonitorMethod) -> MonitorConfig {
    let mut cfg = MonitorConfig::new(remote, DB, tables);
    cfg.method = method;
    cfg.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
        seed: Some(42),
    };
    cfg.request_timeout = Duration::from_secs(20);
    cfg
}

/// Receive events until `pred` matches one; returns everything received.
fn events_until(
    rx: &Receiver<MonitorEvent>,
    what: &str,
    pred: impl Fn(&MonitorEvent) -> bool,
) -> Vec<MonitorEvent> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) => {
                let done = pred(&ev);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no event matching \"{what}\" within {WAIT:?} ({e}); got {seen:#?}"),
        }
    }
}

fn changes(events: &[MonitorEvent]) -> Vec<(String, Uuid, ChangeKind)> {
    events
        .iter()
        .filter_map(|e| match e {
            MonitorEvent::Changes(c) => Some(c),
            _ => None,
        })
        .flatten()
        .map(|c| (c.table.clone(), c.uuid, c.kind))
        .collect()
}

/// Every row of `table` as the server has it, by uuid.
fn server_rows(c: &Client, table: &str) -> BTreeMap<Uuid, Row> {
    let out = c
        .transact(&Transaction::new(DB).select(table, vec![]))
        .expect("select all rows");
    out.results[0]
        .rows()
        .expect("select returns rows")
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let uuid = r
                .remove("_uuid")
                .and_then(|d| d.as_uuid())
                .expect("rows carry _uuid");
            r.remove("_version");
            (uuid, r)
        })
        .collect()
}

/// Compare replica and server, normalising the server's untyped JSON
/// through the schema (an empty map parses as an empty set untyped).
fn assert_converged(monitor: &Monitor, c: &Client, schema: &Schema, table: &str) {
    let ts = schema.table(table).unwrap();
    let server: BTreeMap<Uuid, Row> = server_rows(c, table)
        .into_iter()
        .map(|(u, r)| {
            let typed = r
                .into_iter()
                .map(|(k, v)| {
                    let ty = ts.column_type(&k).unwrap();
                    (k, Datum::from_json_typed(&v.to_json(), ty, None).unwrap())
                })
                .collect();
            (u, typed)
        })
        .collect();
    // The replica also carries `_version` when all columns are monitored.
    let replica: BTreeMap<Uuid, Row> = monitor.with_replica(|r: &Replica| {
        r.table(table)
            .into_iter()
            .flatten()
            .map(|(u, row)| {
                let mut row = Row::clone(row);
                row.remove("_version");
                (*u, row)
            })
            .collect()
    });
    assert_eq!(
        replica, server,
        "replica of {table} differs from the server"
    );
}

#[test]
fn node_schema_is_accepted_by_ovsdb_tool() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("ovsdb-tool")
        .arg("create")
        .arg(dir.path().join("x.db"))
        .arg(common::schema_path())
        .output()
        .expect("run ovsdb-tool (install openvswitch-common)");
    assert!(
        out.status.success(),
        "ovsdb-tool rejected the schema: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("ovsdb-tool")
        .arg("schema-name")
        .arg(common::schema_path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Sluice_Node");
}

#[test]
fn list_dbs_and_get_schema_match_the_file() {
    let server = TestServer::start(Mode::Standalone);
    let c = Client::connect(&server.remote()).unwrap();
    assert!(c.list_dbs().unwrap().contains(&DB.to_string()));
    let from_server = c.get_schema(DB).unwrap();
    let from_file =
        Schema::from_json_str(&std::fs::read_to_string(common::schema_path()).unwrap()).unwrap();
    assert_eq!(from_server.tables, from_file.tables);
    assert_eq!(from_server.version, from_file.version);
    match c.get_schema("NoSuchDb") {
        Err(Error::Rpc { error, .. }) => assert_eq!(error.tag, "unknown database"),
        other => panic!("expected an unknown database error, got {other:?}"),
    }
}

#[test]
fn transact_round_trips_every_operation() {
    let server = TestServer::start(Mode::Standalone);
    let c = Client::connect(&server.remote()).unwrap();
    let schema = c.get_schema(DB).unwrap();

    // A service with two ports, linked through named uuids.
    let txn = Transaction::new(DB)
        .insert("Service_Port", service_port_row("TCP", 80, 8080))
        .named("p80")
        .insert("Service_Port", service_port_row("UDP", 53, 53))
        .named("p53")
        .insert(
            "Service",
            row([
                ("name", Datum::from("web")),
                ("namespace", Datum::from("default")),
                ("type", Datum::from("ClusterIP")),
                ("cluster_ips", Datum::set(["10.96.0.10"])),
                (
                    "ports",
                    Datum::set([
                        nestdb_client::Atom::NamedUuid("p80".into()),
                        nestdb_client::Atom::NamedUuid("p53".into()),
                    ]),
                ),
                ("session_affinity", Datum::from("None")),
                ("internal_traffic_policy", Datum::from("Cluster")),
                ("external_traffic_policy", Datum::from("Cluster")),
            ]),
        )
        .named("svc")
        .comment("e2e: create service web");
    txn.validate(&schema).unwrap();
    let out = c.transact(&txn).unwrap();
    let svc = out.uuid_of("svc").unwrap();
    let p80 = out.uuid_of("p80").unwrap();

    // Select it back.
    let out = c
        .transact(&Transaction::new(DB).select("Service", vec![Condition::uuid(svc)]))
        .unwrap();
    let rows = out.results[0].rows().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], Datum::from("web"));
    assert_eq!(rows[0]["ports"].len(), 2);
    assert!(rows[0]["ports"].as_set().unwrap().contains(&p80.into()));

    // Update, mutate, wait, then delete.
    let out = c
        .transact(
            &Transaction::new(DB)
                .update(
                    "Service",
                    vec![Condition::uuid(svc)],
                    row([
                        ("session_affinity", Datum::from("ClientIP")),
                        ("affinity_timeout", Datum::from(10800i64)),
                    ]),
                )
                .mutate(
                    "Service",
                    vec![Condition::eq("name", "web")],
                    vec![Mutation::new(
                        "external_ids",
                        Mutator::Insert,
                        Datum::map([("k8s-uid", "1234")]),
                    )],
                )
                .wait(
                    "Service",
                    vec![Condition::uuid(svc)],
                    &["session_affinity"],
                    WaitUntil::Equal,
                    vec![row([("session_affinity", Datum::from("ClientIP"))])],
                    Some(Duration::ZERO),
                ),
        )
        .unwrap();
    assert_eq!(out.results[0].count(), Some(1));
    assert_eq!(out.results[1].count(), Some(1));
    let out = c
        .transact(&Transaction::new(DB).select_columns(
            "Service",
            vec![Condition::uuid(svc)],
            &["external_ids", "affinity_timeout"],
        ))
        .unwrap();
    let r = &out.results[0].rows().unwrap()[0];
    assert_eq!(r["external_ids"], Datum::map([("k8s-uid", "1234")]));
    assert_eq!(r["affinity_timeout"], Datum::from(10800i64));
    assert!(
        !r.contains_key("name"),
        "only the selected columns come back"
    );

    // Deleting the service garbage-collects its (non-root) ports.
    let out = c
        .transact(&Transaction::new(DB).delete("Service", vec![Condition::uuid(svc)]))
        .unwrap();
    assert_eq!(out.results[0].count(), Some(1));
    assert!(
        server_rows(&c, "Service_Port").is_empty(),
        "Service_Port rows are owned by their Service"
    );
}

#[test]
fn transact_errors_carry_the_servers_error_and_details() {
    let server = TestServer::start(Mode::Standalone);
    let c = Client::connect(&server.remote()).unwrap();
    let expect_err = |txn: Transaction, tag: &str| match c.transact(&txn) {
        Err(Error::Transaction {
            error, op_index, ..
        }) => {
            assert_eq!(error.tag, tag, "details: {:?}", error.details);
            (error, op_index)
        }
        other => panic!("expected \"{tag}\", got {other:?}"),
    };
    // Out-of-range port: the failing operation is identified.
    let e = expect_err(
        Transaction::new(DB).comment("x").insert(
            "Service_Port",
            row([
                ("protocol", Datum::from("TCP")),
                ("port", Datum::from(0i64)),
            ]),
        ),
        "constraint violation",
    );
    assert_eq!(e.1, Some(1));
    assert!(e.0.details.is_some());
    // Duplicate natural key violates the index at commit time.
    insert_port(&c, "pod-a", "0a:58:0a:f4:00:05", &["10.244.0.5"]);
    let e = expect_err(
        Transaction::new(DB).insert("Logical_Port", port_row("pod-a", "0a:58:0a:f4:00:06", &[])),
        "constraint violation",
    );
    assert_eq!(
        e.1, None,
        "index violations are reported for the whole transaction"
    );
    // A dangling strong reference.
    expect_err(
        Transaction::new(DB).insert(
            "Service",
            row([
                ("name", Datum::from("s")),
                ("namespace", Datum::from("n")),
                ("type", Datum::from("ClusterIP")),
                ("session_affinity", Datum::from("None")),
                ("internal_traffic_policy", Datum::from("Local")),
                ("external_traffic_policy", Datum::from("Local")),
                ("ports", Datum::from(Uuid::new_v4())),
            ]),
        ),
        "referential integrity violation",
    );
    // A failed precondition and a lock we do not hold.
    expect_err(
        Transaction::new(DB).wait(
            "Logical_Port",
            vec![],
            &["name"],
            WaitUntil::Equal,
            vec![],
            Some(Duration::ZERO),
        ),
        "timed out",
    );
    expect_err(
        Transaction::new(DB).assert_lock("agent").comment("x"),
        "not owner",
    );
    // A wait with no server-side timeout outlives a short client timeout:
    // the client gives up with a Timeout error instead of hanging.
    let blocked = Transaction::new(DB).wait(
        "Logical_Port",
        vec![],
        &["name"],
        WaitUntil::Equal,
        vec![],
        None,
    );
    match c.transact_with_timeout(&blocked, Duration::from_millis(200)) {
        Err(e @ Error::Connection(ClientError::Timeout { .. })) => {
            assert!(e.to_string().contains("transact"), "{e}")
        }
        other => panic!("expected a client-side timeout, got {other:?}"),
    }
    // The connection stays usable for other requests.
    assert!(c.list_dbs().unwrap().contains(&DB.to_string()));
    // Builder misuse never reaches the server.
    assert!(matches!(
        c.transact(&Transaction::new(DB).named("x")),
        Err(Error::InvalidTransaction(_))
    ));
}

fn monitor_converges_with(method: MonitorMethod) {
    let server = TestServer::start(Mode::Standalone);
    let writer = Client::connect(&server.remote()).unwrap();
    let schema = writer.get_schema(DB).unwrap();
    let pre = insert_port(&writer, "pre", "0a:58:0a:f4:00:01", &["10.244.0.1"]);

    let monitor = Monitor::start(fast_monitor(
        &server.remote(),
        &["Logical_Port", "Service", "Service_Port"],
        method,
    ))
    .unwrap();
    let rx = monitor.subscribe();
    let ev = events_until(&rx, "initial sync", |e| {
        matches!(e, MonitorEvent::Synced { .. })
    });
    assert_eq!(
        changes(&ev),
        vec![("Logical_Port".to_string(), pre, ChangeKind::Insert)]
    );
    assert_eq!(monitor.status().method, Some(method));

    // Insert, then modify sets, maps and optional columns, then delete.
    let lp = insert_port(
        &writer,
        "pod-b",
        "0a:58:0a:f4:00:02",
        &["10.244.0.2", "fd00::2"],
    );
    let ev = events_until(&rx, "insert of pod-b", |e| {
        changes(std::slice::from_ref(e)).iter().any(|c| c.1 == lp)
    });
    assert_eq!(
        changes(&ev),
        vec![("Logical_Port".to_string(), lp, ChangeKind::Insert)]
    );

    writer
        .transact(
            &Transaction::new(DB)
                .update(
                    "Logical_Port",
                    vec![Condition::uuid(lp)],
                    row([
                        ("ips", Datum::set(["10.244.0.2", "10.244.0.22"])),
                        ("up", Datum::from(true)),
                        ("dp_port", Datum::from(7i64)),
                    ]),
                )
                .mutate(
                    "Logical_Port",
                    vec![Condition::uuid(lp)],
                    vec![Mutation::new(
                        "external_ids",
                        Mutator::Insert,
                        Datum::map([("pod-uid", "u1"), ("owner", "cni")]),
                    )],
                ),
        )
        .unwrap();
    writer
        .transact(
            &Transaction::new(DB)
                .mutate(
                    "Logical_Port",
                    vec![Condition::uuid(lp)],
                    vec![Mutation::new(
                        "external_ids",
                        Mutator::Delete,
                        Datum::set(["owner"]),
                    )],
                )
                .mutate(
                    "Logical_Port",
                    vec![Condition::uuid(lp)],
                    vec![Mutation::new(
                        "external_ids",
                        Mutator::Insert,
                        Datum::map([("node", "n1")]),
                    )],
                )
                .update(
                    "Logical_Port",
                    vec![Condition::uuid(lp)],
                    row([("dp_port", Datum::empty_set())]),
                ),
        )
        .unwrap();
    monitor
        .wait_until(WAIT, |r, _| {
            r.row("Logical_Port", &lp)
                .is_some_and(|row| row["external_ids"].len() == 2 && row["dp_port"].is_empty())
        })
        .expect("the modifications reach the replica");
    let row = monitor
        .with_replica(|r| r.row("Logical_Port", &lp).cloned())
        .unwrap();
    assert_eq!(row["ips"], Datum::set(["10.244.0.2", "10.244.0.22"]));
    assert_eq!(row["up"], Datum::from(true));
    assert_eq!(
        row["external_ids"],
        Datum::map([("pod-uid", "u1"), ("node", "n1")])
    );
    assert_converged(&monitor, &writer, &schema, "Logical_Port");

    writer
        .transact(&Transaction::new(DB).delete("Logical_Port", vec![Condition::uuid(lp)]))
        .unwrap();
    let ev = events_until(&rx, "delete of pod-b", |e| {
        changes(std::slice::from_ref(e))
            .iter()
            .any(|c| c.1 == lp && c.2 == ChangeKind::Delete)
    });
    assert!(changes(&ev)
        .iter()
        .all(|c| c.1 == lp && c.2 == ChangeKind::Modify || c.2 == ChangeKind::Delete));
    assert_converged(&monitor, &writer, &schema, "Logical_Port");
    assert_eq!(monitor.status().sessions, 1);
}

#[test]
fn monitor_cond_since_replica_converges() {
    monitor_converges_with(MonitorMethod::CondSince);
}

#[test]
fn monitor_cond_update2_replica_converges() {
    monitor_converges_with(MonitorMethod::Cond);
}

#[test]
fn plain_monitor_update1_replica_converges() {
    monitor_converges_with(MonitorMethod::Plain);
}

#[test]
fn conditional_monitor_only_replicates_matching_rows() {
    let server = TestServer::start(Mode::Standalone);
    let writer = Client::connect(&server.remote()).unwrap();
    let mut cfg = fast_monitor(
        &server.remote(),
        &["Logical_Port"],
        MonitorMethod::CondSince,
    );
    cfg.tables.insert(
        "Logical_Port".into(),
        TableMonitor {
            columns: Some(vec!["name".into(), "up".into()]),
            conditions: Some(vec![Condition::eq("up", true)]),
        },
    );
    let monitor = Monitor::start(cfg).unwrap();
    monitor
        .wait_until(WAIT, |_, s| s.connected)
        .expect("monitor connects");
    let down = insert_port(&writer, "down", "0a:58:0a:f4:00:03", &[]);
    let up = insert_port(&writer, "up", "0a:58:0a:f4:00:04", &[]);
    writer
        .transact(&Transaction::new(DB).update(
            "Logical_Port",
            vec![Condition::uuid(up)],
            row([("up", Datum::from(true))]),
        ))
        .unwrap();
    monitor
        .wait_until(WAIT, |r, _| r.row("Logical_Port", &up).is_some())
        .expect("the matching row arrives");
    let (len, row) =
        monitor.with_replica(|r| (r.len("Logical_Port"), r.row("Logical_Port", &up).cloned()));
    assert_eq!(len, 1, "{down} does not match the condition");
    let row = row.unwrap();
    assert_eq!(
        row.keys().collect::<Vec<_>>(),
        vec!["name", "up"],
        "only the monitored columns"
    );
}

/// Cut the monitor off with a proxy, change the database (optionally
/// restarting the server), reconnect, and check what the server sent.
fn resync_after_outage(mode: Mode, restart_server: bool) {
    let mut server = TestServer::start(mode);
    let writer = Client::connect(&server.remote()).unwrap();
    let schema = writer.get_schema(DB).unwrap();
    // ovsdb-server keeps transaction history only while it is smaller than
    // the database itself, so give the database some ballast rows; the few
    // small changes below then stay resumable.
    let mut ballast = Transaction::new(DB);
    for i in 0..60 {
        ballast = ballast.insert(
            "Remote_Node",
            row([
                ("name", Datum::from(format!("ballast-{i}"))),
                ("vtep_ip", Datum::from(format!("192.0.2.{i}"))),
                (
                    "pod_cidrs",
                    Datum::set([format!("10.{i}.0.0/24"), format!("fd00:{i}::/64")]),
                ),
            ]),
        );
    }
    writer.transact(&ballast).expect("insert ballast rows");
    let keep = insert_port(&writer, "keep", "0a:58:0a:f4:00:11", &["10.244.0.11"]);
    let gone = insert_port(&writer, "gone", "0a:58:0a:f4:00:12", &["10.244.0.12"]);
    let proxy = Proxy::start(server.dir(), &server.remote());
    let monitor = Monitor::start(fast_monitor(
        &proxy.remote(),
        &["Logical_Port"],
        MonitorMethod::CondSince,
    ))
    .unwrap();
    let rx = monitor.subscribe();
    events_until(&rx, "initial sync", |e| {
        matches!(e, MonitorEvent::Synced { resumed: false })
    });
    // One more committed change so the monitor holds a recent txn id.
    writer
        .transact(&Transaction::new(DB).update(
            "Logical_Port",
            vec![Condition::uuid(keep)],
            row([("up", Datum::from(true))]),
        ))
        .unwrap();
    events_until(&rx, "update of keep", |e| {
        matches!(e, MonitorEvent::Changes(_))
    });
    let txn_before = monitor.status().last_txn_id;
    assert_eq!(
        txn_before.is_some(),
        server.expects_resume(),
        "only servers with history report txn ids"
    );

    proxy.cut();
    events_until(&rx, "disconnect", |e| {
        matches!(e, MonitorEvent::Disconnected { .. })
    });
    let writer = if restart_server {
        drop(writer);
        server.restart();
        Client::connect(&server.remote()).unwrap()
    } else {
        writer
    };
    // Changes made while the monitor is away.
    writer
        .transact(&Transaction::new(DB).delete("Logical_Port", vec![Condition::uuid(gone)]))
        .unwrap();
    writer
        .transact(&Transaction::new(DB).update(
            "Logical_Port",
            vec![Condition::uuid(keep)],
            row([("ips", Datum::set(["10.244.0.11", "10.244.0.111"]))]),
        ))
        .unwrap();
    let added = insert_port(&writer, "added", "0a:58:0a:f4:00:13", &[]);
    proxy.restore();

    let ev = events_until(&rx, "resync", |e| matches!(e, MonitorEvent::Synced { .. }));
    let resumed = ev
        .iter()
        .any(|e| matches!(e, MonitorEvent::Synced { resumed: true }));
    assert_eq!(
        resumed,
        server.expects_resume(),
        "resume vs full dump (mode {mode:?}); events: {ev:#?}"
    );
    let status = monitor.status();
    assert_eq!(status.sessions, 2);
    assert_eq!(
        (status.resumes, status.full_dumps),
        if resumed { (1, 1) } else { (0, 2) }
    );
    // Either way the consumer sees exactly what changed while it was away.
    let mut got = changes(&ev);
    got.sort();
    let mut want = vec![
        ("Logical_Port".to_string(), keep, ChangeKind::Modify),
        ("Logical_Port".to_string(), gone, ChangeKind::Delete),
        ("Logical_Port".to_string(), added, ChangeKind::Insert),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_converged(&monitor, &writer, &schema, "Logical_Port");
    // And live updates keep flowing on the new session.
    let later = insert_port(&writer, "later", "0a:58:0a:f4:00:14", &[]);
    monitor
        .wait_until(WAIT, |r, _| r.row("Logical_Port", &later).is_some())
        .expect("updates after the resync arrive");
}

#[test]
fn reconnect_standalone_falls_back_to_full_dump() {
    resync_after_outage(Mode::Standalone, false);
}

#[test]
fn reconnect_clustered_resumes_from_last_txn_id() {
    resync_after_outage(Mode::Clustered, false);
}

#[test]
fn server_restart_clustered_resumes() {
    resync_after_outage(Mode::Clustered, true);
}

#[test]
fn server_restart_standalone_full_dump() {
    resync_after_outage(Mode::Standalone, true);
}

#[test]
fn monitor_reconnects_after_server_kill_without_proxy() {
    let mut server = TestServer::start(Mode::Standalone);
    let monitor = Monitor::start(fast_monitor(
        &server.remote(),
        &["Remote_Node"],
        MonitorMethod::CondSince,
    ))
    .unwrap();
    monitor
        .wait_until(WAIT, |_, s| s.connected)
        .expect("monitor connects");
    server.kill();
    monitor
        .wait_until(WAIT, |_, s| !s.connected)
        .expect("monitor notices the server died");
    server.restart();
    let c = Client::connect(&server.remote()).unwrap();
    let rn = insert_remote_node(&c, "node-b", "192.0.2.2");
    monitor
        .wait_until(WAIT, |r, s| {
            s.sessions >= 2 && r.row("Remote_Node", &rn).is_some()
        })
        .expect("the monitor reconnects to the restarted server and sees new rows");
}

#[test]
fn lock_contention_between_two_clients() {
    let server = TestServer::start(Mode::Standalone);
    let a = Client::connect(&server.remote()).unwrap();
    let b = Client::connect(&server.remote()).unwrap();
    assert!(a.lock("agent").unwrap(), "the first locker gets the lock");
    assert!(!b.lock("agent").unwrap(), "the second is queued");
    let guarded =
        |c: &Client| c.transact(&Transaction::new(DB).assert_lock("agent").comment("guarded"));
    guarded(&a).expect("the holder passes assert");
    match guarded(&b) {
        Err(Error::Transaction { error, .. }) => assert_eq!(error.tag, "not owner"),
        other => panic!("a waiter must fail assert, got {other:?}"),
    }
    // Release: the queued client is granted the lock.
    a.unlock("agent").unwrap();
    b.wait_for_lock("agent", WAIT)
        .expect("b gets the lock after a unlocks");
    guarded(&b).unwrap();
    // Steal it back: b is told.
    a.steal("agent").unwrap();
    assert_eq!(
        b.next_lock_event(WAIT).unwrap(),
        Some(LockEvent::Stolen("agent".into()))
    );
    guarded(&a).unwrap();
    assert!(guarded(&b).is_err());
    // No event arrives for a client that did nothing.
    assert_eq!(a.next_lock_event(Duration::ZERO).unwrap(), None);
}

#[test]
fn echo_probe_detects_a_silent_peer_and_reconnects() {
    let server = TestServer::start(Mode::Standalone);
    let proxy = Proxy::start(server.dir(), &server.remote());
    let mut cfg = fast_monitor(&proxy.remote(), &["Remote_Node"], MonitorMethod::CondSince);
    cfg.probe_interval = Some(Duration::from_millis(100));
    cfg.request_timeout = Duration::from_millis(500);
    let monitor = Monitor::start(cfg).unwrap();
    let rx = monitor.subscribe();
    events_until(&rx, "initial sync", |e| {
        matches!(e, MonitorEvent::Synced { .. })
    });
    proxy.freeze(true);
    let ev = events_until(&rx, "disconnect", |e| {
        matches!(e, MonitorEvent::Disconnected { .. })
    });
    match ev.last() {
        Some(MonitorEvent::Disconnected { reason }) => {
            assert!(
                reason.contains("echo"),
                "the probe must be what noticed: {reason}"
            )
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    proxy.freeze(false);
    events_until(&rx, "resync", |e| matches!(e, MonitorEvent::Synced { .. }));
    // At least two sessions: a slow machine may add spurious probe failures.
    assert!(monitor.status().sessions >= 2);
}

#[test]
fn typed_node_rows_round_trip_through_the_server() {
    use nestdb_client::node::{Endpoint, NodeConfig, Protocol, Service, ServicePort, ServiceType};
    use nestdb_client::TableRow;

    let server = TestServer::start(Mode::Standalone);
    let c = Client::connect(&server.remote()).unwrap();
    let monitor = Monitor::start(fast_monitor(
        &server.remote(),
        &["Node_Config", "Service", "Service_Port", "Endpoint"],
        MonitorMethod::CondSince,
    ))
    .unwrap();
    let mut node = NodeConfig {
        uplink_port: "0000:3b:00.0".into(),
        mtu: 9000,
        external_ids: BTreeMap::new(),
        ..rows::node_config()
    };
    node.node_ips.insert("2001:db8::10".parse().unwrap());
    let port = ServicePort {
        name: Some("dns".into()),
        protocol: Protocol::Udp,
        ..rows::service_port(None, 53, None, None)
    };
    let mut svc = Service {
        namespace: "kube-system".into(),
        external_ids: BTreeMap::from([("k8s-uid".into(), "42".into())]),
        ..rows::service("dns", ServiceType::ClusterIp, "10.96.0.10", &[])
    };
    let mut svc_row = svc.to_row();
    svc_row.insert("ports".into(), Datum::named_uuid("p"));
    let mut ep = rows::endpoint(None, "10.244.1.7", &[("dns", 5353)], "node-a", true);
    let mut ep_row = ep.to_row();
    ep_row.insert("service".into(), Datum::named_uuid("s"));
    let txn = Transaction::new(DB)
        .insert(NodeConfig::TABLE, node.to_row())
        .insert(ServicePort::TABLE, port.to_row())
        .named("p")
        .insert(Service::TABLE, svc_row)
        .named("s")
        .insert(Endpoint::TABLE, ep_row);
    let out = c.transact(&txn).unwrap();
    svc.ports.insert(out.uuid_of("p").unwrap());
    ep.service = out.uuid_of("s");

    monitor
        .wait_until(WAIT, |r, _| r.len("Endpoint") == 1 && r.len("Service") == 1)
        .expect("the rows reach the replica");
    let replica = monitor.snapshot();
    let typed = |t: &str| replica.table(t).map(|m| m.len()).unwrap_or(0);
    assert_eq!(typed("Service_Port"), 1);
    let got: Vec<NodeConfig> = replica
        .typed::<NodeConfig>()
        .map(|(_, r)| r.unwrap())
        .collect();
    assert_eq!(got, vec![node.clone()]);
    let got: Vec<Service> = replica
        .typed::<Service>()
        .map(|(_, r)| r.unwrap())
        .collect();
    assert_eq!(got, vec![svc]);
    let got: Vec<ServicePort> = replica
        .typed::<ServicePort>()
        .map(|(_, r)| r.unwrap())
        .collect();
    assert_eq!(got, vec![port.clone()]);
    let got: Vec<Endpoint> = replica
        .typed::<Endpoint>()
        .map(|(_, r)| r.unwrap())
        .collect();
    assert_eq!(got, vec![ep.clone()]);

    // Node_Config holds at most one row.
    match c.transact(&Transaction::new(DB).insert(NodeConfig::TABLE, node.to_row())) {
        Err(Error::Transaction { error, .. }) => assert_eq!(error.tag, "constraint violation"),
        other => panic!("a second Node_Config must be refused, got {other:?}"),
    }
    // A Service_Port nobody references is not kept (non-root table).
    c.transact(&Transaction::new(DB).insert(ServicePort::TABLE, port.to_row()))
        .unwrap();
    assert_eq!(server_rows(&c, ServicePort::TABLE).len(), 1);
    // Deleting the service clears the endpoint's weak reference.
    c.transact(&Transaction::new(DB).delete(Service::TABLE, vec![]))
        .unwrap();
    monitor
        .wait_until(WAIT, |r, _| {
            r.len("Service") == 0
                && r.typed::<Endpoint>()
                    .all(|(_, e)| e.is_ok_and(|e| e.service.is_none()))
        })
        .expect("the weak reference is cleared");
}

/// Forward one TCP connection on 127.0.0.1 to the server's Unix socket, so
/// the TCP client path is tested without relying on the server's `ptcp:`.
fn forward_one_tcp_connection(upstream: &str) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local TCP port");
    let port = listener.local_addr().unwrap().port();
    let upstream = upstream.strip_prefix("unix:").unwrap().to_owned();
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept the client");
        let unix = std::os::unix::net::UnixStream::connect(&upstream).expect("reach the server");
        let (mut tcp_r, mut unix_w) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
        let up = std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n @ 1..) = tcp_r.read(&mut buf) {
                if unix_w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = unix_w.shutdown(std::net::Shutdown::Both);
        });
        let (mut unix_r, mut tcp_w) = (unix, tcp);
        let mut buf = [0u8; 16384];
        while let Ok(n @ 1..) = unix_r.read(&mut buf) {
            if tcp_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = tcp_w.shutdown(std::net::Shutdown::Both);
        let _ = up.join();
    });
    (port, handle)
}

#[test]
fn tcp_remote_works() {
    let server = TestServer::start(Mode::Standalone);
    let (port, forwarder) = forward_one_tcp_connection(&server.remote());
    let c = Client::connect(&format!("tcp:127.0.0.1:{port}")).unwrap();
    assert_eq!(c.remote(), format!("tcp:127.0.0.1:{port}"));
    let rn = insert_remote_node(&c, "tcp-node", "192.0.2.9");
    let out = c
        .transact(&Transaction::new(DB).select("Remote_Node", vec![Condition::uuid(rn)]))
        .unwrap();
    assert_eq!(
        out.results[0].rows().unwrap()[0]["name"],
        Datum::from("tcp-node")
    );
    drop(c);
    forwarder
        .join()
        .expect("the forwarder finishes once the client hangs up");
}

#[test]
fn changing_conditions_adds_and_removes_rows() {
    let server = TestServer::start(Mode::Standalone);
    let writer = Client::connect(&server.remote()).unwrap();
    let local = insert_port(&writer, "local", "0a:58:0a:f4:00:21", &[]);
    let remote = insert_port(&writer, "remote", "0a:58:0a:f4:00:22", &[]);
    let mut cfg = fast_monitor(
        &server.remote(),
        &["Logical_Port"],
        MonitorMethod::CondSince,
    );
    cfg.tables.get_mut("Logical_Port").unwrap().conditions =
        Some(vec![Condition::eq("name", "local")]);
    let monitor = Monitor::start(cfg).unwrap();
    let rx = monitor.subscribe();
    events_until(&rx, "initial sync", |e| {
        matches!(e, MonitorEvent::Synced { .. })
    });
    assert_eq!(
        monitor.with_replica(|r| r
            .table("Logical_Port")
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>()),
        vec![local]
    );

    monitor
        .set_conditions("Logical_Port", Some(vec![Condition::eq("name", "remote")]))
        .unwrap();
    let ev = events_until(&rx, "the filter change", |e| {
        changes(std::slice::from_ref(e))
            .iter()
            .any(|c| c.1 == remote)
    });
    let mut got = changes(&ev);
    got.sort();
    let mut want = vec![
        ("Logical_Port".to_string(), local, ChangeKind::Delete),
        ("Logical_Port".to_string(), remote, ChangeKind::Insert),
    ];
    want.sort();
    assert_eq!(got, want);

    monitor.set_conditions("Logical_Port", None).unwrap();
    monitor
        .wait_until(WAIT, |r, _| r.len("Logical_Port") == 2)
        .expect("all rows after clearing the filter");
    assert_eq!(monitor.status().sessions, 1, "changed on the live session");
    assert!(
        monitor.set_conditions("Service", None).is_err(),
        "Service is not monitored"
    );
}
