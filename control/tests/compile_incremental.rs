//! The incremental compiler against the from-scratch compile: for random
//! row sets A and B (bad rows, VIP and name conflicts, dangling references,
//! renames, deletions, a missing or bad `Node_Config`), compiling A then
//! the change set A→B gives exactly `compile(B)` (program and row errors)
//! and a change set equal to `diff(compile(A), compile(B))`, which `apply`
//! turns into `compile(B)`; the same holds after every single row change.
//! Also: compile's output is canonical, one endpoint change looks at one
//! Service however many are installed, and goldens of the change sets of
//! typical updates (`tests/golden/incremental_*.txt`; rewrite them with
//! `SLUICE_UPDATE_GOLDEN=1 cargo test -p sluice-control --test compile_incremental`).

use nestdb_client::node::{Endpoint, NodeConfig, ServiceType, SessionAffinity};
use nestdb_client::{ChangeKind, RowChange, TableRow, Uuid};
use proptest::prelude::*;
use sluice_api::node::{apply, diff, NodeChanges, NodeProgram};
use sluice_control::agent::compile::{compile, compile_with, Compiled, Limits, NodeRows};
use sluice_control::agent::incremental::{IncrementalCompiler, RowUpdate};
use sluice_testkit::rows::{
    self, node_config, pod as lp, remote_node as remote, service, service_port as sport, uuid,
};

mod compile_common;
use compile_common::{check_golden, replica_with_a_bad_endpoint};

/// A ready endpoint of Service `uuid(svc)` on this node, port `http`.
fn endpoint(svc: Option<u64>, ip: &str, port: u16) -> Endpoint {
    rows::endpoint(svc, ip, &[("http", port)], "node-a", true)
}

// ------------------------------------------------------------ strategies

/// The `Node_Config` rows: usually one good row, sometimes another good
/// one (other node IPs and node-port range), a bad one, none or two.
fn arb_node() -> impl Strategy<Value = Vec<(Uuid, NodeConfig)>> {
    (0u8..12).prop_map(|k| {
        let mut n = node_config();
        match k {
            0 => return vec![],
            1 => {
                let mut m = node_config();
                m.node_name = "node-z".into();
                return vec![(uuid(1), n), (uuid(2), m)];
            }
            2 => {
                n.external_ids.insert("vni".into(), "0".into());
            }
            3 => {
                n.node_ips.insert("192.0.2.99".parse().unwrap());
                n.nodeport_min = 30001;
            }
            4 => {
                n.ovs_bridge = Some("br-int".into()); // unused by the program
            }
            _ => {}
        }
        vec![(uuid(1), n)]
    })
}

/// One Service slot: name, type, VIP, ports (by slot), flags.
type SvcDraw = (u8, u8, u8, u8, bool, u8, Option<u16>);

fn arb_rows() -> impl Strategy<Value = NodeRows> {
    let port = prop::option::of((0u8..5, 4u8..10, prop::option::of(3u32..7), 0u8..8));
    let remote = prop::option::of((0u8..4, 1u8..5, 0u8..4));
    // name, type, VIP (small pool: conflicts), port shape, affinity,
    // external IP, node port
    let svc = prop::option::of((
        0u8..5,
        0u8..3,
        0u8..3,
        0u8..5,
        any::<bool>(),
        0u8..4,
        prop::option::of(30000u16..30003),
    ));
    // Endpoint: service slot (or dangling / none), address, flags.
    let ep = prop::option::of((0u8..7, 0u8..8, any::<bool>(), any::<bool>(), 8080u16..8082));
    (
        arb_node(),
        prop::collection::vec(port, 6),
        prop::collection::vec(remote, 4),
        prop::collection::vec(svc, 5),
        prop::collection::vec(ep, 10),
    )
        .prop_map(|(node, ports, remotes, svcs, eps)| build(node, ports, remotes, svcs, eps))
}

type PortDraw = Option<(u8, u8, Option<u32>, u8)>;
type RemoteDraw = Option<(u8, u8, u8)>;
type EpDraw = Option<(u8, u8, bool, bool, u16)>;

/// Rows in UUID order (the order `NodeRows::from_replica` gives), each
/// slot with a fixed UUID so that two draws differ by inserts, updates
/// and deletes of the same rows.
fn build(
    node: Vec<(Uuid, NodeConfig)>,
    ports: Vec<PortDraw>,
    remotes: Vec<RemoteDraw>,
    svcs: Vec<Option<SvcDraw>>,
    eps: Vec<EpDraw>,
) -> NodeRows {
    let mut rows = NodeRows {
        node_config: node,
        ..Default::default()
    };
    for (i, p) in ports.into_iter().enumerate() {
        if let Some((n, ip, dp, bad)) = p {
            let mut p = lp(&format!("pod{n}"), ip, dp);
            if bad == 0 {
                p.mac = "bad".into();
            }
            rows.logical_ports.push((uuid(100 + i as u64), p));
        }
    }
    for (i, r) in remotes.into_iter().enumerate() {
        if let Some((n, cidr, vtep)) = r {
            rows.remote_nodes.push((
                uuid(200 + i as u64),
                remote(
                    &format!("node-{n}"),
                    &format!("192.0.2.{}", 20 + vtep),
                    &format!("10.244.{}.0/24", cidr),
                ),
            ));
        }
    }
    // Service_Port rows: slots 500.. always present (some unused).
    let port_rows = [
        sport(Some("http"), 80, Some(8080), None),
        sport(Some("http"), 80, None, Some(30000)),
        sport(None, 80, Some(80), Some(80)), // node port out of range
        sport(Some("metrics"), 9100, Some(9100), None),
    ];
    for (i, p) in port_rows.iter().enumerate() {
        rows.service_ports.push((uuid(500 + i as u64), p.clone()));
    }
    for (i, s) in svcs.into_iter().enumerate() {
        let Some((n, ty, vip, shape, affinity, ext, np)) = s else {
            continue;
        };
        let ty = [
            ServiceType::ClusterIp,
            ServiceType::NodePort,
            ServiceType::LoadBalancer,
        ][usize::from(ty)];
        let ports: Vec<u64> = match shape {
            0 => vec![500],
            1 => vec![501],
            2 => vec![500, 503],
            3 => vec![502],
            _ => vec![599], // missing
        };
        // `web:http` collides by name with `web`'s port `http`.
        let name = ["web", "db", "web:http", "api", "web"][usize::from(n)];
        let mut s = service(name, ty, &format!("10.96.0.{vip}"), &ports);
        if n == 4 {
            s.namespace = "kube-system".into();
        }
        if affinity {
            s.session_affinity = SessionAffinity::ClientIp;
            s.affinity_timeout = Some(60);
        }
        if ext == 1 {
            s.external_ips.insert("203.0.113.5".parse().unwrap());
        }
        if ext == 2 {
            s.load_balancer_ips.insert("192.0.2.10".parse().unwrap()); // a node IP
        }
        if let Some(np) = np {
            s.external_ids.insert("np".into(), np.to_string());
        }
        rows.services.push((uuid(300 + i as u64), s));
    }
    for (i, e) in eps.into_iter().enumerate() {
        let Some((slot, ip, ready, terminating, port)) = e else {
            continue;
        };
        let svc = match slot {
            0..=4 => Some(300 + u64::from(slot)),
            5 => Some(399), // no such Service
            _ => None,      // its Service was deleted
        };
        let mut e = endpoint(svc, &format!("10.244.{}.{}", 1 + ip % 2, 4 + ip), port);
        e.ready = ready;
        e.terminating = terminating;
        if ip == 7 {
            e.ports.insert("metrics".into(), 9101);
        }
        rows.endpoints.push((uuid(400 + i as u64), e));
    }
    rows
}

// ------------------------------------------------------------ properties

fn canonical(p: &NodeProgram) -> bool {
    let mut c = p.clone();
    c.canonicalize();
    &c == p
}

fn check_equal(inc: &IncrementalCompiler, rows: &NodeRows) -> Result<(), TestCaseError> {
    let want = compile(rows);
    let got = inc.compiled();
    prop_assert_eq!(&got.errors, &want.errors);
    prop_assert_eq!(&got.program, &want.program);
    prop_assert_eq!(&inc.rows(), rows);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A then the change set A→B is B, and the change set is the diff.
    #[test]
    fn incremental_equals_from_scratch(a in arb_rows(), b in arb_rows()) {
        let (ca, cb) = (compile(&a), compile(&b));
        prop_assert!(canonical(&ca.program) && canonical(&cb.program));
        let mut inc = IncrementalCompiler::from_rows(&a, Limits::default());
        check_equal(&inc, &a)?;
        let changes = inc.update(RowUpdate::between(&a, &b));
        check_equal(&inc, &b)?;
        prop_assert!(canonical(&inc.program()));
        let d = diff(&ca.program, &cb.program);
        prop_assert_eq!(&changes, &d);
        prop_assert_eq!(apply(&ca.program, &d), cb.program.clone());
        // Nothing to do twice.
        prop_assert!(inc.update(RowUpdate::between(&b, &b)).is_empty());
    }

    /// The same after every single row change, in a shuffled order (so
    /// references are dangling in between).
    #[test]
    fn every_row_change_keeps_the_compiler_exact(
        a in arb_rows(),
        b in arb_rows(),
        seed in any::<u64>(),
    ) {
        let mut inc = IncrementalCompiler::from_rows(&a, Limits::default());
        let mut updates = RowUpdate::between(&a, &b);
        // A deterministic shuffle.
        let mut x = seed | 1;
        for i in (1..updates.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            updates.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut before = compile(&a).program;
        for u in updates {
            let changes = inc.update([u]);
            let rows = inc.rows();
            check_equal(&inc, &rows)?;
            let now = compile(&rows).program;
            prop_assert_eq!(&changes, &diff(&before, &now));
            prop_assert_eq!(&apply(&before, &changes), &now);
            before = now;
        }
        check_equal(&inc, &b)?;
    }

    /// Few OpenFlow numbers: numbering conflicts settle the same way.
    #[test]
    fn small_port_range_settles_the_same(a in arb_rows(), b in arb_rows()) {
        let limits = Limits { max_ofport: 5 };
        let mut inc = IncrementalCompiler::from_rows(&a, limits);
        inc.update(RowUpdate::between(&a, &b));
        let want = compile_with(&b, &limits);
        prop_assert_eq!(inc.compiled(), want);
    }
}

// --------------------------------------------------------------- scale

/// `n` Services, each with one port and `eps` endpoints.
fn many_services(n: u64, eps: u64) -> NodeRows {
    let mut rows = NodeRows {
        node_config: vec![(uuid(1), node_config())],
        ..Default::default()
    };
    for i in 0..n {
        let s = 0x10_0000 + i * 16;
        rows.services.push((
            uuid(s),
            service(
                &format!("svc-{i}"),
                ServiceType::ClusterIp,
                &format!("10.96.{}.{}", i / 256, i % 256),
                &[s + 1],
            ),
        ));
        rows.service_ports
            .push((uuid(s + 1), sport(Some("http"), 80, Some(8080), None)));
        for j in 0..eps {
            let k = i * eps + j;
            rows.endpoints.push((
                uuid(s + 2 + j),
                endpoint(
                    Some(s),
                    &format!("10.{}.{}.{}", 100 + k / 65536, (k / 256) % 256, k % 256),
                    8080,
                ),
            ));
        }
    }
    rows
}

#[test]
fn one_endpoint_change_looks_at_one_service() {
    let rows = many_services(2000, 3);
    let mut inc = IncrementalCompiler::from_rows(&rows, Limits::default());
    let (u, mut e) = rows.endpoints[3001].clone();
    e.ready = false;
    let changes = inc.update([RowUpdate::Endpoint(u, Some(e.clone()))]);
    let s = inc.last_stats();
    assert!(!s.full);
    assert_eq!(
        (
            s.services_compiled,
            s.services_checked,
            s.services_rewritten
        ),
        (1, 1, 1)
    );
    assert_eq!(changes.services.upsert.len(), 1);
    assert!(changes.flow_ops.is_empty(), "{:?}", changes.flow_ops);
    // Its address moves: one reply flow goes, one comes.
    e.ip = "10.200.0.1".parse().unwrap();
    let changes = inc.update([RowUpdate::Endpoint(u, Some(e))]);
    assert_eq!(changes.flow_ops.len(), 2, "{:?}", changes.flow_ops);
    assert_eq!(inc.last_stats().services_checked, 1);
    let mut now = rows.clone();
    now.endpoints[3001] = (u, inc.rows().endpoints[3001].1.clone());
    assert_eq!(inc.compiled(), compile(&now));
    // A Node_Config change recompiles everything.
    let mut cfg = node_config();
    cfg.nodeport_max = 32000;
    inc.update([RowUpdate::NodeConfig(uuid(1), Some(cfg))]);
    assert!(inc.last_stats().full);
    assert_eq!(inc.last_stats().services_compiled, 2000);
}

#[test]
fn a_vip_conflict_chain_settles_in_name_order() {
    // a < b < c; b wants a's VIP, c wants b's second VIP.
    let mut rows = NodeRows {
        node_config: vec![(uuid(1), node_config())],
        service_ports: vec![(uuid(9), sport(Some("http"), 80, Some(8080), None))],
        ..Default::default()
    };
    let mut b = service("b", ServiceType::ClusterIp, "10.96.0.1", &[9]);
    b.external_ips.insert("203.0.113.2".parse().unwrap());
    rows.services = vec![
        (
            uuid(30),
            service("a", ServiceType::ClusterIp, "10.96.0.1", &[9]),
        ),
        (uuid(31), b),
        (
            uuid(32),
            service("c", ServiceType::ClusterIp, "203.0.113.2", &[9]),
        ),
    ];
    let mut inc = IncrementalCompiler::from_rows(&rows, Limits::default());
    let names = |c: &Compiled| c.program.services.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&inc.compiled()), ["default/a:http", "default/c:http"]);
    // a goes: b takes its VIPs, so c loses its.
    let changes = inc.update([RowUpdate::Service(uuid(30), None)]);
    rows.services.remove(0);
    let want = compile(&rows);
    assert_eq!(inc.compiled(), want);
    assert_eq!(names(&want), ["default/b:http"]);
    assert_eq!(want.errors.len(), 1);
    assert_eq!(
        want.errors[0].sentence,
        "its frontend 203.0.113.2:80/tcp is already Service default/b's; give each address, port and protocol to one Service"
    );
    assert_eq!(
        changes.services.delete,
        ["default/a:http", "default/c:http"]
    );
    assert_eq!(inc.last_stats().services_checked, 2);
}

#[test]
fn monitor_changes_convert_and_bad_rows_are_reported() {
    let rows = many_services(1, 1);
    let mut inc = IncrementalCompiler::new(Limits::default());
    fn insert(table: &str, uuid: Uuid, row: nestdb_client::Row) -> RowChange {
        RowChange {
            table: table.into(),
            uuid,
            kind: ChangeKind::Insert,
            old: None,
            new: Some(row.into()),
        }
    }
    fn typed<T: TableRow>((u, r): &(Uuid, T)) -> RowChange {
        insert(T::TABLE, *u, r.to_row())
    }
    let mut batch = vec![
        typed(&rows.node_config[0]),
        typed(&rows.services[0]),
        typed(&rows.service_ports[0]),
        typed(&rows.endpoints[0]),
        insert("Node_Status", uuid(77), nestdb_client::Row::new()),
    ];
    let mut bad = rows.endpoints[0].1.to_row();
    bad.insert("ip".into(), nestdb_client::Datum::from("10.244.1.300"));
    batch.push(insert(Endpoint::TABLE, uuid(78), bad));
    let changes = inc.update_from_changes(&batch);
    assert_eq!(inc.compiled(), compile(&rows));
    assert_eq!(
        apply(&NodeProgram::default(), &changes),
        compile(&rows).program
    );
    let conv = inc.conversion_errors();
    assert_eq!(conv.len(), 1, "{conv:?}");
    assert_eq!(conv[0].key, uuid(78).to_string());
    assert!(conv[0].sentence.contains("10.244.1.300"), "{}", conv[0]);
    // Deleting the bad row clears its error.
    let epoch = inc.errors_epoch();
    inc.update_from_changes(&[RowChange {
        table: Endpoint::TABLE.into(),
        uuid: uuid(78),
        kind: ChangeKind::Delete,
        old: None,
        new: None,
    }]);
    assert!(inc.conversion_errors().is_empty());
    assert_ne!(inc.errors_epoch(), epoch);
}

// --------------------------------------------------------------- goldens

/// A change set as text: one item per line.
fn render_changes(c: &NodeChanges, errors: &[sluice_control::agent::RowError]) -> String {
    let mut s = String::new();
    for p in &c.ports_removed {
        s += &format!("port- {p}\n");
    }
    for (name, p) in &c.ports_added {
        s += &format!("port+ {name} {}\n", serde_json::to_string(p).unwrap());
    }
    if let Some(set) = &c.settings {
        s += &format!("settings {}\n", serde_json::to_string(set).unwrap());
    }
    for v in &c.vteps_removed {
        s += &format!("vtep- {v}\n");
    }
    for (n, ip) in &c.vteps_set {
        s += &format!("vtep+ {n} {ip}\n");
    }
    for ip in &c.arp_removed {
        s += &format!("arp- {ip}\n");
    }
    for p in &c.port_security_removed {
        s += &format!("port-security- {p}\n");
    }
    for p in &c.port_security_set {
        s += &format!("port-security+ {}\n", serde_json::to_string(p).unwrap());
    }
    for op in &c.flow_ops {
        s += &format!("{}\n", serde_json::to_string(op).unwrap());
    }
    for n in &c.services.delete {
        s += &format!("service- {n}\n");
    }
    for spec in &c.services.upsert {
        s += &format!("service+ {}\n", serde_json::to_string(spec).unwrap());
    }
    s += "# errors\n";
    for e in errors {
        s += &format!("{e}\n");
    }
    s
}

fn golden(name: &str, text: &str) {
    check_golden("compile_incremental", name, text);
}

/// A Service `web` with two endpoints and a pod.
fn web() -> NodeRows {
    NodeRows {
        node_config: vec![(uuid(1), node_config())],
        logical_ports: vec![(uuid(10), lp("default_web-0", 5, None))],
        services: vec![(
            uuid(30),
            service("web", ServiceType::NodePort, "10.96.0.10", &[31]),
        )],
        service_ports: vec![(uuid(31), sport(Some("http"), 80, Some(8080), Some(30080)))],
        endpoints: vec![
            (uuid(40), endpoint(Some(30), "10.244.1.5", 8080)),
            (uuid(41), endpoint(Some(30), "10.244.2.7", 8080)),
        ],
        ..Default::default()
    }
}

/// Checks one step against the from-scratch compile and renders it.
fn step(inc: &mut IncrementalCompiler, updates: Vec<RowUpdate>) -> String {
    let before = inc.program();
    let c = inc.update(updates);
    let want = compile(&inc.rows());
    assert_eq!(inc.compiled(), want);
    assert_eq!(c, diff(&before, &want.program));
    render_changes(&c, &want.errors)
}

#[test]
fn golden_incremental_endpoints() {
    let mut inc = IncrementalCompiler::from_rows(&web(), Limits::default());
    let mut out = String::from("## endpoint 10.244.2.7 removed\n");
    out += &step(&mut inc, vec![RowUpdate::Endpoint(uuid(41), None)]);
    out += "## endpoint 10.244.1.5 terminating, endpoint 10.244.1.9 added\n";
    let mut e = endpoint(Some(30), "10.244.1.5", 8080);
    e.ready = false;
    e.terminating = true;
    out += &step(
        &mut inc,
        vec![
            RowUpdate::Endpoint(uuid(40), Some(e)),
            RowUpdate::Endpoint(uuid(42), Some(endpoint(Some(30), "10.244.1.9", 8080))),
        ],
    );
    out += "## endpoint of a Service that does not exist\n";
    out += &step(
        &mut inc,
        vec![RowUpdate::Endpoint(
            uuid(43),
            Some(endpoint(Some(99), "10.244.1.6", 8080)),
        )],
    );
    out += "## that Service appears\n";
    out += &step(
        &mut inc,
        vec![RowUpdate::Service(
            uuid(99),
            Some(service("late", ServiceType::ClusterIp, "10.96.0.99", &[31])),
        )],
    );
    golden("incremental_endpoints", &out);
}

#[test]
fn golden_incremental_conflicts_and_node() {
    let mut inc = IncrementalCompiler::from_rows(&web(), Limits::default());
    let mut out =
        String::from("## Service `zz-api` (after `web` in name order) wants web's VIP: refused\n");
    out += &step(
        &mut inc,
        vec![
            RowUpdate::Service(
                uuid(32),
                Some(service(
                    "zz-api",
                    ServiceType::ClusterIp,
                    "10.96.0.10",
                    &[33],
                )),
            ),
            RowUpdate::ServicePort(uuid(33), Some(sport(Some("http"), 80, Some(9090), None))),
            RowUpdate::Endpoint(uuid(44), Some(endpoint(Some(32), "10.244.1.8", 9090))),
        ],
    );
    out += "## web deleted: zz-api takes the VIP\n";
    out += &step(&mut inc, vec![RowUpdate::Service(uuid(30), None)]);
    out += "## a remote node and a second pod\n";
    out += &step(
        &mut inc,
        vec![
            RowUpdate::RemoteNode(
                uuid(20),
                Some(remote("node-b", "192.0.2.11", "10.244.2.0/24")),
            ),
            RowUpdate::LogicalPort(uuid(11), Some(lp("default_db-0", 6, None))),
        ],
    );
    out += "## web back on another VIP; Node_Config: the node-port range shrinks (everything recompiled)\n";
    let mut cfg = node_config();
    cfg.nodeport_max = 30050;
    out += &step(
        &mut inc,
        vec![
            RowUpdate::Service(
                uuid(30),
                Some(service("web", ServiceType::NodePort, "10.96.0.11", &[31])),
            ),
            RowUpdate::NodeConfig(uuid(1), Some(cfg)),
        ],
    );
    out += "## Node_Config deleted: nothing is programmed\n";
    out += &step(&mut inc, vec![RowUpdate::NodeConfig(uuid(1), None)]);
    golden("incremental_conflicts_and_node", &out);
}

#[test]
fn a_replica_snapshot_loads_with_its_bad_rows_reported() {
    let rows = web();
    let (replica, changes) = replica_with_a_bad_endpoint(&rows);
    let inc = IncrementalCompiler::from_replica(&replica, Limits::default());
    assert_eq!(inc.compiled(), compile(&rows));
    assert_eq!(inc.conversion_errors().len(), 1);
    assert_eq!(inc.conversion_errors()[0].key, uuid(77).to_string());
    // The dump's own change batch gives the same compiler state.
    let mut from_batch = IncrementalCompiler::new(Limits::default());
    let c = from_batch.update_from_changes(&changes);
    assert_eq!(from_batch.compiled(), inc.compiled());
    assert_eq!(from_batch.conversion_errors(), inc.conversion_errors());
    assert_eq!(apply(&NodeProgram::default(), &c), inc.program());
    // Replaying the batch changes nothing.
    assert!(from_batch.update_from_changes(&changes).is_empty());
}
