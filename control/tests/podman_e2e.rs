//! The whole pod attach path with a real runtime: podman (CNI backend,
//! runc, a local busybox image) → `sluice-cni` → nestdb-server →
//! `sluice-agent` → `sluiced` (DPDK, the flow pipeline, an af_packet
//! uplink on a veth the test owns, a TAP host port, each pod's veth host end opened as an af_packet
//! port by `node-commit`).
//!
//! Two containers on the Sluice network ping each other and open a TCP
//! connection through sluiced; a Service ClusterIP written into nestdb
//! lands on one of them from a third container; `podman rm` removes the
//! port from sluiced and the row from nestdb. Here the real agent sets
//! `up`: ADD returns only once sluiced forwards for the pod.
//!
//! Needs root, podman/runc/busybox-static, host-local, and the binaries
//! `nestdb-server`, `sluiced` and `sluice-agent` built beside this test
//! (`cargo build -p nestdb -p sluice-datapath -p sluice-control`);
//! otherwise the skip is recorded.

mod cni_harness;

use cni_harness::podman::Podman;
use cni_harness::stack::*;
use cni_harness::*;
use nestdb_client::node::{
    Endpoint, Protocol, Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy, DB,
};
use nestdb_client::{Datum, TableRow, Transaction};

const VIP: &str = "10.96.0.50";

/// Waits until `port` listens (TCP over IPv4 or IPv6, any address) inside
/// container `name`.
fn wait_listening(pm: &Podman, name: &str, port: u16) {
    let suffix = format!(":{port:04X}");
    wait_until(&format!("{name} to listen on {port}"), || {
        let t = pm.ok(&["exec", name, "cat", "/proc/net/tcp", "/proc/net/tcp6"]);
        t.lines()
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&suffix) && f[3] == "0A"
            })
            .then_some(())
    });
}

/// Starts a one-shot TCP server in `name` answering `text`.
fn serve(pm: &Podman, name: &str, port: u16, text: &str) {
    pm.ok(&[
        "exec",
        "-d",
        name,
        "sh",
        "-c",
        &format!("echo {text} | nc -l -p {port}"),
    ]);
    wait_listening(pm, name, port);
}

#[test]
fn pods_ping_talk_tcp_and_reach_a_cluster_ip_through_sluiced() {
    let test = "podman_e2e pods_ping_talk_tcp_and_reach_a_cluster_ip_through_sluiced";
    if !Podman::ready(test) || !ready_stack(test) {
        return;
    }
    let db = Nestdb::start(true);
    let _uplink = UplinkVeth::new();
    let dir = tempfile::Builder::new()
        .prefix("sluice-e2e")
        .tempdir()
        .unwrap();
    let ctl = dir.path().join("sluiced.ctl");
    let mut sluiced = start_sluiced(dir.path(), &ctl, "slt-cni-e2e");
    let mut agent = start_agent(dir.path(), &db, &ctl);
    let pm = Podman::new(&db);

    // ADD returns once the agent has set up: sluiced forwards for the pod.
    let mut pods = Vec::new();
    for name in ["pod-a", "pod-b", "pod-c"] {
        let id = pm.start(name);
        let port = format!("{id}_eth0");
        let row = db
            .port(&port)
            .unwrap_or_else(|| panic!("no row for {name}"));
        assert!(row.up && row.dp_port.is_some(), "{name}: {row:?}");
        let st = status(&ctl);
        let ps = st
            .ports
            .get(&port)
            .unwrap_or_else(|| panic!("sluiced has no port {port}: {st:?}"));
        assert!(ps.forwarding, "{port} is not forwarding: {ps:?}");
        assert_eq!(Some(u32::from(ps.ofport)), row.dp_port);
        pods.push((name, id, row.ips.iter().next().unwrap().clone()));
    }
    sluiced.alive();
    agent.alive();
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);

    // Ping both ways through sluiced.
    for (from, to) in [(a, b), (b, a)] {
        let out = pm.ok(&["exec", from.0, "ping", "-c", "3", "-W", "5", &to.2]);
        assert!(
            out.contains("3 packets received"),
            "{} -> {}: {out}",
            from.0,
            to.2
        );
    }
    // TCP from a to b.
    serve(&pm, b.0, 8080, "hello-from-b");
    let got = pm.ok(&["exec", a.0, "nc", "-w", "5", &b.2, "8080"]);
    assert_eq!(got.trim(), "hello-from-b");

    // A ClusterIP Service (80 -> 8080) whose only endpoint is b.
    let sp = ServicePort {
        name: None,
        protocol: Protocol::Tcp,
        port: 80,
        target_port: Some(8080),
        node_port: None,
    };
    let svc = Service {
        name: "web".into(),
        namespace: "default".into(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: [VIP.parse().unwrap()].into(),
        external_ips: Default::default(),
        load_balancer_ips: Default::default(),
        ports: Default::default(),
        session_affinity: SessionAffinity::None,
        affinity_timeout: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Cluster,
        external_ids: Default::default(),
    };
    let ep = Endpoint {
        service: None,
        ip: b.2.parse().unwrap(),
        ports: Default::default(),
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some("node-a".into()),
        is_local: true,
        zone_hints: Default::default(),
        external_ids: Default::default(),
    };
    let mut svc_row = svc.to_row();
    svc_row.insert("ports".into(), Datum::named_uuid("sp"));
    let mut ep_row = ep.to_row();
    ep_row.insert("service".into(), Datum::named_uuid("svc"));
    db.client()
        .transact(
            &Transaction::new(DB)
                .insert(ServicePort::TABLE, sp.to_row())
                .named("sp")
                .insert(Service::TABLE, svc_row)
                .named("svc")
                .insert(Endpoint::TABLE, ep_row),
        )
        .expect("write the Service");
    wait_until("the agent to program Service default/web", || {
        program(&ctl)
            .services
            .get("default/web")
            .filter(|s| s.endpoints.len() == 1)
            .map(|_| ())
    });
    serve(&pm, b.0, 8080, "hello-via-clusterip");
    let got = pm.ok(&["exec", c.0, "nc", "-w", "5", VIP, "80"]);
    assert_eq!(got.trim(), "hello-via-clusterip");

    // podman rm: the row goes, then the agent removes the port.
    let a_port = format!("{}_eth0", a.1);
    pm.ok(&["rm", "-f", "-t", "0", a.0]);
    assert!(db.port(&a_port).is_none(), "pod-a's row outlived podman rm");
    wait_until("sluiced to drop pod-a's port", || {
        (!program(&ctl).ports.contains_key(&a_port) && !status(&ctl).ports.contains_key(&a_port))
            .then_some(())
    });
    // b and c still talk.
    let out = pm.ok(&["exec", c.0, "ping", "-c", "2", "-W", "5", &b.2]);
    assert!(out.contains("2 packets received"), "{out}");
    sluiced.alive();
    agent.alive();
}
