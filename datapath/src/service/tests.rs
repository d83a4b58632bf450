//! Service semantics through the sans-IO flow pipeline: a real flow
//! program using `ct(commit,nat)`, crafted packets, etherparse checks.

use std::collections::HashMap as StdHashMap;

use serde_json::json;

use super::*;
use crate::conntrack::tests::{call, fl, ip, sctp, seen, tcp, udp, Rig};
use crate::conntrack::{ConnFilter, ConntrackConfig};

/// Pods (10.1/16) on port 2, other cluster clients (10.0/16) on port 1,
/// everything else (external, node) on port 3.
const FLOWS: &str = "\
table=0,priority=10,ip actions=ct(commit,zone=1,nat,table=1)
table=1,priority=20,ct_state=+trk+inv actions=drop
table=1,priority=10,ip,nw_dst=10.1.0.0/16 actions=output:2
table=1,priority=10,ip,nw_dst=10.0.0.0/16 actions=output:1
table=1,priority=5,ip actions=output:3
";

const MASQ: &str = "169.254.169.1";
const NODE: [u8; 4] = [192, 168, 1, 10];
const EXT: [u8; 4] = [172, 16, 0, 5];
const CLIENT: [u8; 4] = [10, 0, 0, 1];
const VIP: [u8; 4] = [10, 96, 0, 10];

fn services() -> Services {
    Services::new(ServiceConfig {
        node_addresses: vec![Ipv4Addr::from(NODE)],
        node_port_range: (30000, 32767),
        masquerade_ip: ip(MASQ),
        cluster_cidrs: vec![(ip("10.0.0.0"), 16), (ip("10.1.0.0"), 16)],
        node_zone: Some("zone-a".into()),
    })
}

fn rig() -> (Rig, Services) {
    let s = services();
    let ct = Conntrack::with_services(ConntrackConfig::default(), s.clone());
    (Rig::new(FLOWS, ct), s)
}

fn ep(ip: &str) -> serde_json::Value {
    json!({"ip": ip, "port": 8080})
}

/// Applies a JSON batch (the agent's format).
fn apply(s: &Services, ct: &Conntrack, batch: serde_json::Value) -> UpdateSummary {
    let u: ServiceUpdate = serde_json::from_value(batch).expect("batch parses");
    s.apply(&u, Some(ct)).expect("update applies")
}

fn web(endpoints: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"name": "default/web:http", "protocol": "tcp", "port": 80,
           "cluster_ips": ["10.96.0.10", "10.96.0.11"], "endpoints": endpoints})
}

#[test]
fn cluster_ip_every_address_both_directions_same_endpoint() {
    let (mut r, s) = rig();
    apply(
        &s,
        &r.ct,
        json!({"upsert": [web(vec![ep("10.1.0.5"), ep("10.1.0.6")])]}),
    );
    for (i, vip) in [[10, 96, 0, 10], [10, 96, 0, 11]].into_iter().enumerate() {
        let sport = 1000 + i as u16;
        let out = r.expect(0, 1, tcp(CLIENT, vip, sport, 80, 100, 0, fl::SYN, b""), 2);
        let first = seen(&out);
        assert_eq!(first.src, ip("10.0.0.1"), "client address preserved");
        assert_eq!(first.dport, 8080);
        let e = first.dst.octets();
        let out = r.expect(
            1,
            2,
            tcp(e, CLIENT, 8080, sport, 7, 101, fl::SYNACK, b""),
            1,
        );
        let back = seen(&out);
        assert_eq!(
            (back.src, back.sport),
            (Ipv4Addr::from(vip), 80),
            "reply from the VIP"
        );
        for k in 0..5u32 {
            let out = r.expect(
                2,
                1,
                tcp(CLIENT, vip, sport, 80, 101 + k, 8, fl::ACK, b"x"),
                2,
            );
            assert_eq!(
                seen(&out).dst,
                first.dst,
                "same endpoint for the connection"
            );
        }
    }
    let d = s.dump();
    assert!(
        d.contains("default/web:http tcp 10.96.0.10:80(cluster),10.96.0.11:80(cluster)"),
        "{d}"
    );
    let conns: u64 = d
        .lines()
        .filter_map(|l| l.split("connections=").nth(1))
        .map(|v| {
            v.split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(conns, 2);
}

#[test]
fn selection_is_uniform_over_ready_endpoints() {
    let (mut r, s) = rig();
    apply(
        &s,
        &r.ct,
        json!({"upsert": [web(vec![ep("10.1.0.5"), ep("10.1.0.6"), ep("10.1.0.7"),
                                   json!({"ip": "10.1.0.8", "port": 8080, "ready": false})])]}),
    );
    let mut counts: StdHashMap<Ipv4Addr, u32> = StdHashMap::new();
    for i in 0..3000u16 {
        let out = r.expect(
            0,
            1,
            tcp(CLIENT, VIP, 10_000 + i, 80, 1, 0, fl::SYN, b""),
            2,
        );
        *counts.entry(seen(&out).dst).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "never the unready endpoint: {counts:?}");
    for (e, n) in &counts {
        assert!((850..=1150).contains(n), "{e} got {n} of 3000");
    }
}

#[test]
fn node_port_external_ips_and_load_balancer_ips() {
    let (mut r, s) = rig();
    apply(
        &s,
        &r.ct,
        json!({"upsert": [{"name": "default/np:http", "protocol": "tcp", "port": 80,
            "cluster_ips": ["10.96.0.20"], "node_port": 30080,
            "external_ips": ["203.0.113.7"], "load_balancer_ips": ["198.51.100.9"],
            "endpoints": [ep("10.1.0.5")]}]}),
    );
    for (i, (front, port)) in [
        (NODE, 30080u16),
        ([203, 0, 113, 7], 80),
        ([198, 51, 100, 9], 80),
    ]
    .into_iter()
    .enumerate()
    {
        let sport = 2000 + i as u16;
        let out = r.expect(0, 3, tcp(EXT, front, sport, port, 1, 0, fl::SYN, b""), 2);
        let s1 = seen(&out);
        assert_eq!((s1.dst, s1.dport), (ip("10.1.0.5"), 8080));
        assert_eq!(
            s1.src,
            ip(MASQ),
            "external traffic with policy Cluster is masqueraded"
        );
        let out = r.expect(
            1,
            2,
            tcp(
                [10, 1, 0, 5],
                ip(MASQ).octets(),
                8080,
                s1.sport,
                9,
                2,
                fl::SYNACK,
                b"",
            ),
            3,
        );
        let s2 = seen(&out);
        assert_eq!((s2.src, s2.sport), (Ipv4Addr::from(front), port));
        assert_eq!((s2.dst, s2.dport), (Ipv4Addr::from(EXT), sport));
    }
    // NodePort from the node itself is masqueraded too.
    let out = r.expect(2, 3, tcp(NODE, NODE, 3000, 30080, 1, 0, fl::SYN, b""), 2);
    assert_eq!(seen(&out).src, ip(MASQ));
    // Another port on the node address is no Service.
    let out = r.expect(2, 3, tcp(EXT, NODE, 3001, 30081, 1, 0, fl::SYN, b""), 3);
    assert_eq!(seen(&out).dport, 30081);
    // A node port outside the range is refused.
    let e = s
        .apply(
            &serde_json::from_value(json!({"upsert": [{"name": "x", "protocol": "tcp",
                "port": 1, "node_port": 80}]}))
            .expect("batch"),
            None,
        )
        .expect_err("range");
    assert!(e
        .to_string()
        .contains("outside the node port range 30000-32767"));
}

#[test]
fn traffic_policy_local_keeps_client_ip_and_drops_without_local_endpoint() {
    let (mut r, s) = rig();
    let svc = |eps: Vec<serde_json::Value>| {
        json!({"upsert": [{"name": "default/loc:http", "protocol": "tcp", "port": 80,
            "cluster_ips": ["10.96.0.30"], "node_port": 30090,
            "external_traffic_policy": "Local", "internal_traffic_policy": "Local",
            "endpoints": eps}]})
    };
    apply(
        &s,
        &r.ct,
        svc(vec![
            json!({"ip": "10.1.0.5", "port": 8080, "node_local": true}),
            ep("10.1.0.6"),
        ]),
    );
    for i in 0..40u16 {
        let out = r.expect(0, 3, tcp(EXT, NODE, 4000 + i, 30090, 1, 0, fl::SYN, b""), 2);
        let x = seen(&out);
        assert_eq!(x.dst, ip("10.1.0.5"), "only the node-local endpoint");
        assert_eq!(x.src, Ipv4Addr::from(EXT), "client IP preserved");
        let out = r.expect(
            0,
            1,
            tcp(CLIENT, [10, 96, 0, 30], 4000 + i, 80, 1, 0, fl::SYN, b""),
            2,
        );
        assert_eq!(seen(&out).dst, ip("10.1.0.5"), "internal Local too");
    }
    apply(&s, &r.ct, svc(vec![ep("10.1.0.6")]));
    r.expect_drop(
        1,
        3,
        tcp(EXT, NODE, 5000, 30090, 1, 0, fl::SYN, b""),
        DropReason::ServiceNoLocalEndpoint,
    );
}

#[test]
fn session_affinity_pins_clients_until_the_fake_clock_says_otherwise() {
    let (mut r, s) = rig();
    let eps = (5..9)
        .map(|i| ep(&format!("10.1.0.{i}")))
        .collect::<Vec<_>>();
    apply(
        &s,
        &r.ct,
        json!({"upsert": [{"name": "default/aff:http", "protocol": "tcp", "port": 80,
            "cluster_ips": ["10.96.0.10"], "session_affinity_seconds": 10, "endpoints": eps}]}),
    );
    let sec = 1_000_000_000u64;
    let mut pinned = Vec::new();
    for c in 1..=20u8 {
        let client = [10, 0, 1, c];
        let mut first = None;
        for k in 0..10u64 {
            // One new connection per second: the affinity keeps being refreshed.
            let out = r.expect(
                k * sec,
                1,
                tcp(client, VIP, 100 + k as u16, 80, 1, 0, fl::SYN, b""),
                2,
            );
            let d = seen(&out).dst;
            assert_eq!(
                *first.get_or_insert(d),
                d,
                "client {c} stays on its endpoint"
            );
        }
        pinned.push(first);
    }
    // 10 s after the last connection (t = 9 s) the affinity has expired.
    let mut moved = 0;
    for c in 1..=20u8 {
        let out = r.expect(
            19 * sec,
            1,
            tcp([10, 0, 1, c], VIP, 999, 80, 1, 0, fl::SYN, b""),
            2,
        );
        if Some(seen(&out).dst) != pinned[usize::from(c) - 1] {
            moved += 1;
        }
    }
    assert!(moved > 0, "after the timeout clients are balanced afresh");
    // Range and default.
    let bad: ServiceUpdate = serde_json::from_value(json!({"upsert": [{"name": "b",
        "protocol": "tcp", "port": 1, "session_affinity_seconds": 86401}]}))
    .expect("batch");
    let e = s.apply(&bad, None).expect_err("out of range");
    assert!(e.to_string().contains("use 1 to 86400 seconds"), "{e}");
    apply(
        &s,
        &r.ct,
        json!({"upsert": [{"name": "d", "protocol": "udp", "port": 1,
            "cluster_ips": ["10.96.0.99"], "session_affinity_seconds": 0}]}),
    );
    assert!(s.dump().contains("affinity=ClientIP/10800s"));
}

#[test]
fn terminating_endpoints_serve_when_none_is_ready() {
    let (mut r, s) = rig();
    apply(
        &s,
        &r.ct,
        json!({"upsert": [web(vec![
            json!({"ip": "10.1.0.5", "port": 8080, "ready": false, "serving": true, "terminating": true}),
            json!({"ip": "10.1.0.6", "port": 8080, "ready": false, "serving": false, "terminating": true}),
        ])]}),
    );
    for i in 0..20u16 {
        let out = r.expect(0, 1, tcp(CLIENT, VIP, 100 + i, 80, 1, 0, fl::SYN, b""), 2);
        assert_eq!(
            seen(&out).dst,
            ip("10.1.0.5"),
            "serving+terminating fallback"
        );
    }
    apply(
        &s,
        &r.ct,
        json!({"upsert": [web(vec![
            json!({"ip": "10.1.0.5", "port": 8080, "ready": false, "serving": true, "terminating": true}),
            ep("10.1.0.7"),
        ])]}),
    );
    for i in 0..20u16 {
        let out = r.expect(1, 1, tcp(CLIENT, VIP, 200 + i, 80, 1, 0, fl::SYN, b""), 2);
        assert_eq!(seen(&out).dst, ip("10.1.0.7"), "ready endpoints first");
    }
}

#[test]
fn no_endpoint_rejects_with_icmp_port_unreachable() {
    let (mut r, s) = rig();
    apply(
        &s,
        &r.ct,
        json!({"upsert": [web(vec![]),
            {"name": "default/dns:udp", "protocol": "udp", "port": 53, "cluster_ips": ["10.96.0.10"]},
            {"name": "default/sig:sctp", "protocol": "sctp", "port": 3868, "cluster_ips": ["10.96.0.10"]}]}),
    );
    let frames = [
        (
            tcp(CLIENT, VIP, 1000, 80, 1, 0, fl::SYN, b""),
            1000u16,
            80u16,
        ),
        (udp(CLIENT, VIP, 1001, 53, b"q"), 1001, 53),
        (sctp(CLIENT, VIP, 1002, 3868), 1002, 3868),
    ];
    for (f, sport, dport) in frames {
        let out = r.expect(0, 1, f, 1);
        let x = seen(&out);
        assert_eq!(x.icmp, Some((3, 3)), "port unreachable");
        assert_eq!(
            (x.src, x.dst),
            (Ipv4Addr::from(VIP), Ipv4Addr::from(CLIENT))
        );
        assert_eq!(
            x.inner,
            Some((Ipv4Addr::from(CLIENT), Ipv4Addr::from(VIP), sport, dport)),
            "quotes the rejected packet"
        );
        assert_eq!(
            &out[0..6],
            &crate::conntrack::tests::MAC_A,
            "back to the sender's MAC"
        );
    }
    assert_eq!(r.ct.stats().rejects.load(Ordering::Relaxed), 3);
    assert!(r.ct.is_empty(), "nothing committed");
}

#[test]
fn hairpin_is_masqueraded() {
    let (mut r, s) = rig();
    apply(&s, &r.ct, json!({"upsert": [web(vec![ep("10.1.0.5")])]}));
    let pod = [10, 1, 0, 5];
    let out = r.expect(0, 2, tcp(pod, VIP, 5555, 80, 1, 0, fl::SYN, b""), 2);
    let x = seen(&out);
    assert_eq!((x.dst, x.dport), (ip("10.1.0.5"), 8080));
    assert_eq!(x.src, ip(MASQ), "hairpin masqueraded so the reply returns");
    let out = r.expect(
        1,
        2,
        tcp(pod, ip(MASQ).octets(), 8080, x.sport, 9, 2, fl::SYNACK, b""),
        2,
    );
    let y = seen(&out);
    assert_eq!((y.src, y.sport), (Ipv4Addr::from(VIP), 80));
    assert_eq!((y.dst, y.dport), (ip("10.1.0.5"), 5555));
    assert!(r
        .ct
        .dump(&ConnFilter::default(), 1)
        .contains("service=default/web:http"));
}

#[test]
fn udp_and_sctp_services() {
    let (mut r, s) = rig();
    apply(
        &s,
        &r.ct,
        json!({"upsert": [
            {"name": "kube-system/dns:dns", "protocol": "udp", "port": 53,
             "cluster_ips": ["10.96.0.10"], "endpoints": [{"ip": "10.1.0.9", "port": 5353}]},
            {"name": "default/sig:sctp", "protocol": "sctp", "port": 3868,
             "cluster_ips": ["10.96.0.10"], "endpoints": [{"ip": "10.1.0.8", "port": 3869}]}]}),
    );
    let out = r.expect(0, 1, udp(CLIENT, VIP, 4444, 53, b"query"), 2);
    assert_eq!((seen(&out).dst, seen(&out).dport), (ip("10.1.0.9"), 5353));
    let out = r.expect(1, 2, udp([10, 1, 0, 9], CLIENT, 5353, 4444, b"answer"), 1);
    assert_eq!(
        (seen(&out).src, seen(&out).sport),
        (Ipv4Addr::from(VIP), 53)
    );
    let out = r.expect(0, 1, sctp(CLIENT, VIP, 4445, 3868), 2);
    assert_eq!((seen(&out).dst, seen(&out).dport), (ip("10.1.0.8"), 3869));
    let out = r.expect(1, 2, sctp([10, 1, 0, 8], CLIENT, 3869, 4445), 1);
    assert_eq!(
        (seen(&out).src, seen(&out).sport),
        (Ipv4Addr::from(VIP), 3868)
    );
}

#[test]
fn updates_keep_established_connections_unless_flushed() {
    let (mut r, s) = rig();
    apply(&s, &r.ct, json!({"upsert": [web(vec![ep("10.1.0.5")])]}));
    let handshake = |r: &mut Rig, sport: u16| {
        let out = r.expect(0, 1, tcp(CLIENT, VIP, sport, 80, 100, 0, fl::SYN, b""), 2);
        let e = seen(&out).dst;
        r.expect(
            0,
            2,
            tcp(e.octets(), CLIENT, 8080, sport, 7, 101, fl::SYNACK, b""),
            1,
        );
        r.expect(0, 1, tcp(CLIENT, VIP, sport, 80, 101, 8, fl::ACK, b""), 2);
        e
    };
    assert_eq!(handshake(&mut r, 1000), ip("10.1.0.5"));
    // Replace the endpoint: the established connection keeps its endpoint,
    // new connections go to the new one.
    let sum = apply(&s, &r.ct, json!({"upsert": [web(vec![ep("10.1.0.6")])]}));
    assert_eq!(sum.flushed, 0);
    let out = r.expect(
        1,
        1,
        tcp(CLIENT, VIP, 1000, 80, 101, 8, fl::ACK, b"data"),
        2,
    );
    assert_eq!(seen(&out).dst, ip("10.1.0.5"), "kept until it ends");
    assert_eq!(handshake(&mut r, 1001), ip("10.1.0.6"));
    // An unrelated change (a second Service) leaves counters in place.
    apply(
        &s,
        &r.ct,
        json!({"upsert": [{"name": "other", "protocol": "udp", "port": 9, "cluster_ips": ["10.96.0.50"]},
                          web(vec![ep("10.1.0.6")])]}),
    );
    assert!(s
        .dump()
        .contains("10.1.0.6:8080 ready,serving connections=1 active=1"));
    // Now remove 10.1.0.6 with flushing: its connection is gone, so a
    // mid-stream segment is invalid and dropped.
    let sum = apply(
        &s,
        &r.ct,
        json!({"upsert": [web(vec![ep("10.1.0.7")])], "flush_removed_endpoints": true}),
    );
    assert_eq!(sum.flushed, 1);
    r.expect_drop(
        2,
        1,
        tcp(CLIENT, VIP, 1001, 80, 101, 8, fl::ACK, b"x"),
        DropReason::FlowDrop,
    );
    // Deleting the Service keeps its remaining connections (no flush).
    let sum = apply(&s, &r.ct, json!({"delete": ["default/web:http"]}));
    assert_eq!((sum.services, sum.flushed), (1, 0));
    let out = r.expect(
        3,
        1,
        tcp(CLIENT, VIP, 1000, 80, 105, 8, fl::ACK, b"more"),
        2,
    );
    assert_eq!(seen(&out).dst, ip("10.1.0.5"));
}

#[test]
fn invalid_batches_change_nothing() {
    let s = services();
    let ct = Conntrack::new(ConntrackConfig::default());
    apply(&s, &ct, json!({"upsert": [web(vec![ep("10.1.0.5")])]}));
    let before = s.dump();
    let cases = [
        (
            json!({"upsert": [web(vec![]), web(vec![])]}),
            "appears more than once",
        ),
        (
            json!({"upsert": [{"name": "b", "protocol": "tcp", "port": 80, "cluster_ips": ["10.96.0.10"]}]}),
            "both use 10.96.0.10:80/tcp",
        ),
        (
            json!({"upsert": [{"name": "z", "protocol": "tcp", "port": 0}]}),
            "has port 0",
        ),
        (json!({"delete": ["nope"]}), "does not exist"),
        (
            json!({"upsert": [{"name": "e", "protocol": "tcp", "port": 1,
                "endpoints": [{"ip": "10.1.0.1", "port": 0}]}]}),
            "with port 0",
        ),
    ];
    for (batch, text) in cases {
        let u: ServiceUpdate = serde_json::from_value(batch).expect("batch");
        let e = s.apply(&u, Some(&ct)).expect_err(text);
        assert!(e.to_string().contains(text), "{e}");
        assert_eq!(s.dump(), before, "nothing applied");
    }
}

#[test]
fn control_commands_and_lb_trace() {
    use crate::ctl::registry::Registry;
    let (mut r, s) = rig();
    let reg = Registry::new();
    commands::register_commands(&reg, s.clone(), Some(r.ct.clone())).expect("register");
    let ctx = crate::ctl::registry::DispatchContext { on_exit: &|| {} };
    let res = reg
        .dispatch(
            "service-update",
            &json!({"upsert": [web(vec![ep("10.1.0.5")])]}),
            &ctx,
        )
        .expect("method");
    assert_eq!(res["services"], 1);
    assert_eq!(res["frontends"], 2);
    let e = reg
        .dispatch("service-update", &json!({"upsert": 3}), &ctx)
        .expect_err("bad json");
    assert!(e.contains("invalid service-update request"), "{e}");
    // The text form takes the batch as one JSON string (ovs-appctl);
    // re-applying the same Service changes nothing.
    let res = reg
        .dispatch(
            "service-update",
            &json!([json!({"upsert": [web(vec![ep("10.1.0.5")])]}).to_string()]),
            &ctx,
        )
        .expect("text form");
    let res: serde_json::Value = serde_json::from_str(res.as_str().expect("text")).expect("json");
    assert_eq!(
        (res["upserted"].as_u64(), res["services"].as_u64()),
        (Some(1), Some(1))
    );
    let out = r.expect(0, 1, tcp(CLIENT, VIP, 1000, 80, 1, 0, fl::SYN, b""), 2);
    seen(&out);
    let d = call(&reg, "dump-services", &[]).expect("dump");
    assert!(
        d.contains("10.1.0.5:8080 ready,serving connections=1 active=1 packets=1"),
        "{d}"
    );
    // Counters of finished connections stay with the endpoint.
    r.ct.flush(&ConnFilter::default());
    let d = call(&reg, "dump-services", &[]).expect("dump");
    assert!(
        d.contains("10.1.0.5:8080 ready,serving connections=1 active=0 packets=1"),
        "{d}"
    );
    let t = call(&reg, "lb-trace", &["tcp", "10.0.0.1", "10.96.0.10", "80"]).expect("trace");
    assert!(
        t.contains("service default/web:http frontend ClusterIp traffic internal"),
        "{t}"
    );
    assert!(t.contains("candidates (uniform): 10.1.0.5:8080"), "{t}");
    let t = call(
        &reg,
        "lb-trace",
        &["tcp", "10.0.0.1:1000", "10.96.0.10", "80", "zone=1"],
    )
    .expect("trace");
    assert!(t.contains("conntrack: no entry"), "flushed above: {t}");
    let out = r.expect(1, 1, tcp(CLIENT, VIP, 1001, 80, 1, 0, fl::SYN, b""), 2);
    seen(&out);
    let t = call(
        &reg,
        "lb-trace",
        &["tcp", "10.0.0.1:1001", "10.96.0.10", "80", "zone=1"],
    )
    .expect("trace");
    assert!(
        t.contains("existing connection")
            && t.contains("reply=(src=10.1.0.5")
            && t.contains("(original direction)"),
        "{t}"
    );
    let t = call(&reg, "lb-trace", &["udp", "10.0.0.1", "10.96.0.10", "80"]).expect("trace");
    assert!(t.contains("not a Service frontend"), "{t}");
    let t = call(
        &reg,
        "service-update",
        &[r#"{"delete": ["default/web:http"]}"#],
    )
    .expect("text form");
    assert!(t.contains("\"services\":0"), "{t}");
}

#[test]
fn trace_shows_the_conntrack_and_service_decisions() {
    use crate::conntrack::trace::CtTracer;
    use crate::flow::tables::FlowTables;
    fn epoch() -> Nanos {
        0
    }
    let (mut r, s) = rig();
    apply(&s, &r.ct, json!({"upsert": [web(vec![ep("10.1.0.5")])]}));
    let tables = FlowTables::new();
    tables.add_flows(FLOWS, 0).expect("flows");
    let oracle = CtTracer::new(r.ct.clone(), epoch);
    let last_actions = |t: &str| {
        t.lines()
            .rev()
            .find_map(|l| l.strip_prefix("Datapath actions: "))
            .map(str::to_string)
    };

    // A new connection to the ClusterIP: the Service decision, the DNAT,
    // and the trace resumes in table 1 with the translated key.
    let t = tables
        .trace_with(
            "in_port=1,tcp,tcp_flags=+syn,nw_src=10.0.0.1,nw_dst=10.96.0.10,tp_src=1000,tp_dst=80",
            Some(&oracle),
        )
        .expect("trace");
    for want in [
        "no connection for tcp 10.0.0.1:1000 -> 10.96.0.10:80",
        "lb: service default/web:http -> endpoint 10.1.0.5:8080",
        "nat: 10.0.0.1:1000 -> 10.96.0.10:80 => 10.0.0.1:1000 -> 10.1.0.5:8080",
        "ct_state=new|trk|dnat,ct_zone=1",
        "Resuming from table 1 (recirc_id=0x2)",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    assert_eq!(last_actions(&t).as_deref(), Some("output:2"), "{t}");
    assert_eq!(r.ct.len(), 0, "trace commits nothing");

    // A real connection, then its reply traced: found in the reply
    // direction and reverse-translated back to the ClusterIP.
    r.expect(0, 1, tcp(CLIENT, VIP, 1000, 80, 100, 0, fl::SYN, b""), 2);
    let t = tables
        .trace_with(
            "in_port=2,tcp,tcp_flags=+syn+ack,nw_src=10.1.0.5,nw_dst=10.0.0.1,tp_src=8080,tp_dst=1000",
            Some(&oracle),
        )
        .expect("trace");
    for want in [
        "existing connection, reply direction",
        "nat: 10.1.0.5:8080 -> 10.0.0.1:1000 => 10.96.0.10:80 -> 10.0.0.1:1000",
        "ct_state=est|rpl|trk|dnat",
    ] {
        assert!(t.contains(want), "missing {want:?} in\n{t}");
    }
    assert_eq!(last_actions(&t).as_deref(), Some("output:1"), "{t}");

    // TCP without SYN and no connection: +inv, dropped by table 1.
    let t = tables
        .trace_with(
            "in_port=1,tcp,tcp_flags=+ack,nw_src=10.0.0.1,nw_dst=10.96.0.10,tp_src=2000,tp_dst=80",
            Some(&oracle),
        )
        .expect("trace");
    assert!(t.contains("ct_state=inv|trk"), "{t}");
    assert_eq!(last_actions(&t).as_deref(), Some("drop(flow_drop)"), "{t}");

    // No endpoint left: the reject is explained and the trace stops.
    apply(&s, &r.ct, json!({"upsert": [web(vec![])]}));
    let t = tables
        .trace_with(
            "in_port=1,udp,nw_src=10.0.0.1,nw_dst=10.96.0.10,tp_src=3000,tp_dst=80",
            Some(&oracle),
        )
        .expect("trace");
    assert!(
        t.contains("not a Service frontend"),
        "udp/80 is not the Service: {t}"
    );
    let t = tables
        .trace_with(
            "in_port=1,tcp,tcp_flags=+syn,nw_src=10.0.0.1,nw_dst=10.96.0.10,tp_src=3000,tp_dst=80",
            Some(&oracle),
        )
        .expect("trace");
    assert!(t.contains("ICMP port unreachable"), "{t}");
    assert!(!t.contains("Resuming"), "{t}");

    // Without an oracle, trace stops at the recirculation as before.
    let t = tables
        .trace("in_port=1,tcp,nw_src=10.0.0.1,nw_dst=10.96.0.10,tp_src=1,tp_dst=80")
        .expect("trace");
    assert!(t.contains("(recirculates after conntrack)"), "{t}");
    assert!(!t.contains("Resuming"), "{t}");
}

#[test]
fn zone_hints_narrow_cluster_endpoints_only_when_kube_proxy_would() {
    // This node is in zone-a (see `services()`).
    let s = services();
    let ct = Conntrack::with_services(ConntrackConfig::default(), s.clone());
    let chosen = |s: &Services| {
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..64u64 {
            let rand = r.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let q = crate::conntrack::lb::LbQuery {
                proto: ipproto::TCP,
                src: u32::from(ip("10.0.0.1")),
                dst: u32::from(ip("10.96.0.10")),
                dport: 80,
            };
            match s.choose(0, q, rand, true) {
                LbDecision::Forward(t) => {
                    seen.insert(Ipv4Addr::from(t.ip).to_string());
                }
                other => panic!("expected a forward, got {other:?}"),
            }
        }
        seen.into_iter().collect::<Vec<_>>()
    };
    let hinted = |a: &[&str], b: &[&str], aware: bool| {
        let mut w = web(vec![
            json!({"ip": "10.1.0.5", "port": 8080, "for_zones": a}),
            json!({"ip": "10.1.0.6", "port": 8080, "for_zones": b}),
        ]);
        w["topology_aware"] = json!(aware);
        json!({"upsert": [w]})
    };
    // Every ready endpoint hinted, one for this zone: only that one.
    apply(&s, &ct, hinted(&["zone-a"], &["zone-b"], true));
    assert_eq!(chosen(&s), ["10.1.0.5"]);
    let dump = s.dump();
    assert!(dump.contains(" topology=Auto"), "{dump}");
    assert!(
        dump.contains("10.1.0.6:8080 ready,serving zones=zone-b "),
        "{dump}"
    );
    // The Service did not ask for topology-aware routing: hints ignored.
    apply(&s, &ct, hinted(&["zone-a"], &["zone-b"], false));
    assert_eq!(chosen(&s), ["10.1.0.5", "10.1.0.6"]);
    // One ready endpoint without hints: hints ignored.
    apply(&s, &ct, hinted(&["zone-a"], &[], true));
    assert_eq!(chosen(&s), ["10.1.0.5", "10.1.0.6"]);
    // No endpoint hinted for this zone: hints ignored (no black hole).
    apply(&s, &ct, hinted(&["zone-b"], &["zone-c"], true));
    assert_eq!(chosen(&s), ["10.1.0.5", "10.1.0.6"]);
    // An endpoint may serve several zones.
    apply(&s, &ct, hinted(&["zone-b", "zone-a"], &["zone-a"], true));
    assert_eq!(chosen(&s), ["10.1.0.5", "10.1.0.6"]);
    // A node without a zone ignores hints.
    let nozone = Services::new(ServiceConfig {
        node_zone: None,
        ..(*s.config()).clone()
    });
    apply(&nozone, &ct, hinted(&["zone-a"], &["zone-b"], true));
    assert_eq!(chosen(&nozone), ["10.1.0.5", "10.1.0.6"]);
}

#[test]
fn mid_stream_tcp_is_picked_up_only_in_loose_mode() {
    let s = services();
    let ack = |sport| tcp(CLIENT, VIP, sport, 80, 7_000, 9_000, fl::ACK, b"mid");
    // Default (OVS semantics): an ACK with no connection is +inv and the
    // program drops it.
    let ct = Conntrack::with_services(ConntrackConfig::default(), s.clone());
    let mut r = Rig::new(FLOWS, ct);
    apply(&s, &r.ct, json!({"upsert": [web(vec![ep("10.1.0.5")])]}));
    let out = r.send(0, 1, ack(4000));
    assert_eq!(out.drops.get(DropReason::FlowDrop), 1, "+inv is dropped");
    assert!(r.ct.is_empty());

    // Loose (Linux's nf_conntrack_tcp_loose): picked up, balanced to the
    // endpoint, and the reply is translated back; a far-away sequence
    // number is accepted (no window checks without the handshake).
    let ct = Conntrack::with_services(
        ConntrackConfig {
            tcp_loose: true,
            ..ConntrackConfig::default()
        },
        s.clone(),
    );
    let mut r = Rig::new(FLOWS, ct);
    let out = r.expect(0, 1, ack(4001), 2);
    let there = seen(&out);
    assert_eq!((there.dst, there.dport), (ip("10.1.0.5"), 8080));
    let back = r.expect(
        0,
        2,
        tcp(
            [10, 1, 0, 5],
            CLIENT,
            8080,
            4001,
            9_000,
            7_003,
            fl::ACK,
            b"",
        ),
        1,
    );
    let back = seen(&back);
    assert_eq!((back.src, back.sport), (ip("10.96.0.10"), 80));
    r.expect(
        0,
        1,
        tcp(CLIENT, VIP, 4001, 80, 3_000_000, 9_000, fl::ACK, b"x"),
        2,
    );
    let dump = r.ct.dump(&ConnFilter::default(), 0);
    assert!(dump.contains("state=ESTABLISHED"), "{dump}");
    // A FIN or RST alone never starts a connection.
    let out = r.send(0, 1, tcp(CLIENT, VIP, 4002, 80, 1, 1, fl::FINACK, b""));
    assert_eq!(out.drops.get(DropReason::FlowDrop), 1);
}

/// New node settings published with a batch reach the next selection at
/// once (the selection reads them from the table version it loads), and
/// every connection balanced to one endpoint shares that endpoint's one
/// reference (`LbRef`), whose counters are the endpoint's.
#[test]
fn published_settings_reach_selection_and_connections_share_the_endpoint_reference() {
    let s = services();
    let ct = Conntrack::with_services(ConntrackConfig::default(), s.clone());
    apply(&s, &ct, json!({"upsert": [web(vec![ep("10.1.0.5")])]}));
    let choose = |s: &Services, rand: u64| {
        let q = crate::conntrack::lb::LbQuery {
            proto: ipproto::TCP,
            src: u32::from(Ipv4Addr::from(NODE)),
            dst: u32::from(Ipv4Addr::from(VIP)),
            dport: 80,
        };
        match s.choose(0, q, rand, true) {
            LbDecision::Forward(t) => t,
            other => panic!("expected a forward, got {other:?}"),
        }
    };
    // From the node itself: masqueraded to the configured address.
    let a = choose(&s, 1);
    assert_eq!(a.masquerade, Some(u32::from(ip(MASQ))));
    let b = choose(&s, 2);
    assert!(std::ptr::eq(&*a.lb, &*b.lb), "one reference per endpoint");
    assert_eq!(a.lb.endpoint, (ip("10.1.0.5"), 8080));
    assert_eq!(&*a.lb.service, "default/web:http");
    // New settings: another masquerade address.
    let moved = ServiceConfig {
        masquerade_ip: ip("169.254.169.2"),
        ..s.config().as_ref().clone()
    };
    let staged = s
        .stage(&ServiceUpdate::default(), Some(moved))
        .expect("stages");
    let _ = staged.publish().flush(Some(&ct));
    let c = choose(&s, 3);
    assert_eq!(
        c.masquerade,
        Some(u32::from(ip("169.254.169.2"))),
        "the selection uses the published settings"
    );
    // The endpoint survived the update: its counters are the same ones.
    assert!(std::sync::Arc::ptr_eq(&a.lb.stats, &c.lb.stats));
}
