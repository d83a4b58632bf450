//! The agent's compiler against golden programs (one per kind of row and
//! semantic), bad rows of every kind, and properties: compile-then-diff
//! equals the from-scratch compile, and compile does not depend on row
//! order or UUIDs. Every program is also fed to the real datapath parser
//! and Service table.
//!
//! Golden files live in `tests/golden/*.txt`; `SLUICE_UPDATE_GOLDEN=1
//! cargo test -p sluice-control --test compile` rewrites them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use nestdb_client::node::{
    Endpoint, LogicalPort, NodeConfig, Protocol, RemoteNode, Service, ServicePort, ServiceType,
    SessionAffinity, TrafficPolicy,
};
use nestdb_client::Uuid;
use proptest::prelude::*;
use sluice_api::node::{apply, diff, NodeProgram};
use sluice_control::agent::compile::{
    compile, compile_with, cookie, host_interface_name, render, Compiled, Limits, NodeRows,
};
use sluice_testkit::rows::{self, service_port as sport, uuid};

mod compile_common;
use compile_common::{check_golden, line_diff, replica_with_a_bad_endpoint};

/// Node-a with a second (IPv6) pod CIDR and node address.
fn node_config() -> NodeConfig {
    let mut n = rows::node_config();
    n.pod_cidrs.insert("fd00:1::/64".into());
    n.node_ips.insert("2001:db8::10".parse().unwrap());
    n
}

/// Pod `name` with its namespace path.
fn lp(name: &str, last: u8, dp_port: Option<u32>) -> LogicalPort {
    LogicalPort {
        netns: Some(format!("/var/run/netns/{name}")),
        ..rows::pod(name, last, dp_port)
    }
}

/// A remote node whose VTEP is also its node address.
fn remote(name: &str, vtep: &str, cidr: &str) -> RemoteNode {
    RemoteNode {
        node_ips: BTreeSet::from([vtep.parse().unwrap()]),
        ..rows::remote_node(name, vtep, cidr)
    }
}

/// A dual-stack Service (`vip` and fd00:96::a).
fn service(name: &str, ty: ServiceType, vip: &str, ports: &[u64]) -> Service {
    let mut s = rows::service(name, ty, vip, ports);
    s.cluster_ips.insert("fd00:96::a".parse().unwrap());
    s
}

/// An endpoint of Service `uuid(svc)` on node-a (`local`) or node-b.
fn endpoint(svc: u64, ip: &str, port: Option<(&str, u16)>, local: bool) -> Endpoint {
    let node = if local { "node-a" } else { "node-b" };
    rows::endpoint(Some(svc), ip, port.as_slice(), node, local)
}

/// Node-a with one pod, no Services.
fn base() -> NodeRows {
    NodeRows {
        node_config: vec![(uuid(1), node_config())],
        logical_ports: vec![(uuid(10), lp("default_web-0", 5, None))],
        ..Default::default()
    }
}

/// Base plus a remote node and a ClusterIP Service `web` (port 80, named
/// `http`, target 8080) with one local and one remote endpoint.
fn with_service(ty: ServiceType) -> NodeRows {
    let mut r = base();
    r.remote_nodes
        .push((uuid(20), remote("node-b", "192.0.2.11", "10.244.2.0/24")));
    r.services
        .push((uuid(30), service("web", ty, "10.96.0.10", &[31])));
    r.service_ports
        .push((uuid(31), sport(Some("http"), 80, Some(8080), Some(30080))));
    r.endpoints.push((
        uuid(40),
        endpoint(30, "10.244.1.5", Some(("http", 8080)), true),
    ));
    r.endpoints.push((
        uuid(41),
        endpoint(30, "10.244.2.7", Some(("http", 8080)), false),
    ));
    r
}

// ---------------------------------------------------------------- goldens

#[test]
fn golden_mismatches_show_a_line_diff() {
    assert_eq!(line_diff("a\nb\nc\n", "a\nb\nc\n"), "");
    assert_eq!(line_diff("a\nb\nc\n", "a\nx\nc\nd\n"), "+ x\n- b\n+ d\n");
}

/// Compiles `rows`, checks the datapath accepts the program, and compares
/// its rendering with `tests/golden/NAME.txt`.
fn golden(name: &str, rows: &NodeRows) -> Compiled {
    let c = compile(rows);
    datapath_accepts(&c.program);
    check_golden("compile", name, &render(&c));
    c
}

/// Every flow parses with the datapath's own parser, the whole program
/// loads into flow tables, and every Service is accepted by an empty
/// Service table configured from the settings.
fn datapath_accepts(p: &NodeProgram) {
    use sluice_datapath::flow::tables::FlowTables;
    use sluice_datapath::flow::text::{parse_flow, parse_group};
    use sluice_datapath::service::Services;
    for f in &p.flows {
        if let Err(e) = parse_flow(&f.text()) {
            panic!("the datapath refuses {}: {e}", f.text());
        }
    }
    for g in p.groups.values() {
        parse_group(&g.text()).unwrap_or_else(|e| panic!("{}: {e}", g.text()));
    }
    let lines: Vec<String> = p.flow_lines();
    FlowTables::new()
        .add_flows(&lines.join("\n"), 0)
        .unwrap_or_else(|e| panic!("the program does not load: {e}"));
    // A program without a NodePort range gets the Kubernetes default.
    let mut p = p.clone();
    if p.settings.node_port_range == (0, 0) {
        p.settings.node_port_range = (30000, 32767);
    }
    if let Err(e) = Services::for_program(&p) {
        panic!("the Service table refuses the Services: {e}");
    }
}

fn flows_of(c: &Compiled, table: &str, key: &str) -> Vec<String> {
    let k = cookie(table, key);
    c.program
        .flows
        .iter()
        .filter(|f| f.cookie == k)
        .map(|f| f.text())
        .collect()
}

#[test]
fn golden_one_pod() {
    let c = golden("one_pod", &base());
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let pod = &c.program.ports["default_web-0"];
    assert_eq!(pod.ofport, 3);
    assert_eq!(
        pod.kind,
        sluice_api::node::PortKind::Pod {
            interface: host_interface_name("default_web-0")
        }
    );
    assert_eq!(
        c.program.port_security[&3].ips,
        vec![Ipv4Addr::new(10, 244, 1, 5)]
    );
    assert_eq!(
        c.program.arp_responder[&Ipv4Addr::new(10, 244, 1, 1)],
        [2, 0, 0, 0, 0, 0x0a]
    );
    // The pod's flows are found by its cookie.
    let mine = flows_of(&c, "Logical_Port", "default_web-0");
    assert_eq!(mine.len(), 3, "{mine:#?}");
    assert!(mine.iter().any(|f| f.contains(
        "table=20,priority=300,ip,nw_dst=10.244.1.5,actions=mod_dl_src:02:00:00:00:00:0a,mod_dl_dst:0a:58:0a:f4:01:05,dec_ttl,output:3"
    )));
}

#[test]
fn golden_two_pods() {
    let mut rows = base();
    rows.logical_ports
        .push((uuid(11), lp("default_db-0", 6, None)));
    let c = golden("two_pods", &rows);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.program.ports["default_db-0"].ofport, 3, "name order");
    assert_eq!(c.program.ports["default_web-0"].ofport, 4);
    // ARP between the two pods is delivered (L2), IP is routed (L3).
    let db = flows_of(&c, "Logical_Port", "default_db-0");
    assert!(
        db.iter()
            .any(|f| f.ends_with("arp,arp_tpa=10.244.1.6,actions=output:3")),
        "{db:#?}"
    );
}

#[test]
fn pod_numbers_are_kept_from_dp_port() {
    let mut rows = base();
    rows.logical_ports = vec![
        (uuid(10), lp("a", 5, None)),
        (uuid(11), lp("b", 6, Some(3))),
        (uuid(12), lp("c", 7, Some(3))),     // taken by b: renumbered
        (uuid(13), lp("d", 8, Some(1))),     // reserved: renumbered
        (uuid(14), lp("e", 9, Some(70000))), // out of range
    ];
    let c = compile(&rows);
    let n = |name: &str| c.program.ports[name].ofport;
    assert_eq!((n("a"), n("b"), n("c"), n("d"), n("e")), (4, 3, 5, 6, 7));
    // No number left: the last port in name order is refused, the rest
    // compiles.
    let c = compile_with(&rows, &Limits { max_ofport: 6 });
    assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
    assert_eq!(c.errors[0].key, "e");
    assert!(c.errors[0]
        .sentence
        .starts_with("no OpenFlow port number is left (3 to 6 are all in use)"));
    assert!(!c.program.ports.contains_key("e"));
    assert!(flows_of(&c, "Logical_Port", "e").is_empty());
    assert_eq!(c.program.ports.len(), 2 + 4);
}

#[test]
fn golden_remote_node() {
    let mut rows = base();
    rows.remote_nodes
        .push((uuid(20), remote("node-b", "192.0.2.11", "10.244.2.0/24")));
    rows.node_config[0]
        .1
        .external_ids
        .insert("vni".into(), "4096".into());
    let c = golden("remote_node", &rows);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.program.vteps["node-b"], Ipv4Addr::new(192, 0, 2, 11));
    assert_eq!(
        flows_of(&c, "Remote_Node", "node-b"),
        vec!["cookie=0x".to_string() + &format!("{:x}", cookie("Remote_Node", "node-b"))
            + ",table=20,priority=200,ip,nw_dst=10.244.2.0/24,actions=dec_ttl,set_field:0x1000->tun_id,set_field:192.0.2.11->tun_dst,tnl_push,output:1"]
    );
    let cidrs: Vec<String> = c
        .program
        .settings
        .cluster_cidrs
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(cidrs, ["10.244.1.0/24", "10.244.2.0/24"]);
}

#[test]
fn golden_cluster_ip() {
    let c = golden("cluster_ip", &with_service(ServiceType::ClusterIp));
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let s = &c.program.services["default/web:http"];
    assert_eq!(s.cluster_ips, vec![Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(s.node_port, None, "a ClusterIP Service has no node port");
    assert_eq!(s.endpoints.len(), 2);
    assert!(s.endpoints[0].node_local && !s.endpoints[1].node_local);
    let f = flows_of(&c, "Service", "default/web");
    assert_eq!(f.len(), 2, "{f:#?}");
    assert!(f[1].ends_with(
        "table=11,priority=100,tcp,nw_dst=10.96.0.10,tp_dst=80,actions=ct(commit,zone=1,table=20,nat)"
    ));
    // Replies of both endpoints go back through conntrack.
    assert_eq!(flows_of(&c, "Endpoint", "10.244.2.7").len(), 1);
}

#[test]
fn golden_node_port() {
    let c = golden("node_port", &with_service(ServiceType::NodePort));
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(
        c.program.services["default/web:http"].node_port,
        Some(30080)
    );
    let f = flows_of(&c, "Service", "default/web");
    assert!(
        f.iter().any(|l| l.contains("tcp,in_port=1,tun_id=0,nw_dst=192.0.2.10,tp_dst=30080,actions=ct(commit,zone=1,table=20,nat,exec(set_field:0x1->ct_mark))")),
        "{f:#?}"
    );
}

#[test]
fn golden_external_ip_and_load_balancer() {
    let mut rows = with_service(ServiceType::LoadBalancer);
    let s = &mut rows.services[0].1;
    s.external_ips = BTreeSet::from(["203.0.113.5".parse().unwrap()]);
    s.load_balancer_ips = BTreeSet::from(["198.51.100.7".parse().unwrap()]);
    rows.node_config[0]
        .1
        .external_ids
        .insert("underlay_gateway_mac".into(), "02:00:00:00:00:01".into());
    let c = golden("external_lb", &rows);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    let s = &c.program.services["default/web:http"];
    assert_eq!(s.external_ips, vec![Ipv4Addr::new(203, 0, 113, 5)]);
    assert_eq!(s.load_balancer_ips, vec![Ipv4Addr::new(198, 51, 100, 7)]);
    assert_eq!(
        flows_of(&c, "Service", "default/web").len(),
        8,
        "4 frontends, 2 flows each"
    );
    // A ClusterIP Service does not get its LoadBalancer IPs.
    let mut rows2 = rows.clone();
    rows2.services[0].1.service_type = ServiceType::ClusterIp;
    assert!(compile(&rows2).program.services["default/web:http"]
        .load_balancer_ips
        .is_empty());
}

#[test]
fn golden_affinity() {
    let mut rows = with_service(ServiceType::ClusterIp);
    rows.services[0].1.session_affinity = SessionAffinity::ClientIp;
    rows.services[0].1.affinity_timeout = Some(600);
    let c = golden("affinity", &rows);
    assert_eq!(
        c.program.services["default/web:http"].session_affinity_seconds,
        Some(600)
    );
    rows.services[0].1.affinity_timeout = None;
    assert_eq!(
        compile(&rows).program.services["default/web:http"].session_affinity_seconds,
        Some(10800),
        "ClientIP without a timeout is Kubernetes' default"
    );
}

#[test]
fn golden_traffic_policy_local() {
    let mut rows = with_service(ServiceType::NodePort);
    rows.services[0].1.internal_traffic_policy = TrafficPolicy::Local;
    rows.services[0].1.external_traffic_policy = TrafficPolicy::Local;
    let c = golden("traffic_policy_local", &rows);
    let s = &c.program.services["default/web:http"];
    assert_eq!(
        s.internal_traffic_policy,
        sluice_api::service::TrafficPolicy::Local
    );
    assert_eq!(
        s.external_traffic_policy,
        sluice_api::service::TrafficPolicy::Local
    );
}

#[test]
fn golden_terminating_fallback() {
    let mut rows = with_service(ServiceType::ClusterIp);
    for (_, e) in rows.endpoints.iter_mut() {
        e.ready = false;
        e.serving = true;
        e.terminating = true;
    }
    let mut not_serving = endpoint(30, "10.244.1.9", Some(("http", 8080)), true);
    not_serving.ready = false;
    not_serving.serving = false;
    not_serving.terminating = true;
    rows.endpoints.push((uuid(42), not_serving));
    let c = golden("terminating_fallback", &rows);
    let eps = &c.program.services["default/web:http"].endpoints;
    assert_eq!(eps.len(), 3);
    assert!(eps.iter().all(|e| e.terminating && !e.ready));
    assert_eq!(eps.iter().filter(|e| e.serving == Some(true)).count(), 2);
}

#[test]
fn golden_named_and_unnamed_ports() {
    // Two ports, one resolving its number by name only.
    let mut rows = with_service(ServiceType::ClusterIp);
    rows.services[0].1.ports.insert(uuid(32));
    rows.service_ports.push((
        uuid(32),
        ServicePort {
            name: Some("metrics".into()),
            protocol: Protocol::Udp,
            port: 9100,
            target_port: None,
            node_port: None,
        },
    ));
    rows.endpoints[0].1.ports.insert("metrics".into(), 9101);
    let c = golden("two_service_ports", &rows);
    let m = &c.program.services["default/web:metrics"];
    assert_eq!(
        m.endpoints.len(),
        1,
        "only the endpoint that names the port"
    );
    assert_eq!(m.endpoints[0].port, 9101);
}

// --------------------------------------------------------------- bad rows

fn bad_rows() -> NodeRows {
    let mut rows = with_service(ServiceType::NodePort);
    let mut bad_mac = lp("bad-mac", 20, None);
    bad_mac.mac = "0a:58:zz:f4:01:14".into();
    let mut bad_ip = lp("bad-ip", 21, None);
    bad_ip.ips = BTreeSet::from(["10.244.1.300".into()]);
    let mut outside = lp("outside", 22, None);
    outside.ips = BTreeSet::from(["10.9.9.9".into()]);
    let dup = lp("z-dup", 5, None); // 10.244.1.5 is default_web-0's
    let reserved = lp("uplink", 23, None);
    let mut veth1 = lp("veth-1", 24, None);
    veth1
        .external_ids
        .insert("host_interface".into(), "vethA".into());
    let mut veth2 = lp("veth-2", 25, None);
    veth2
        .external_ids
        .insert("host_interface".into(), "vethA".into());
    rows.logical_ports.extend([
        (uuid(12), bad_mac),
        (uuid(13), bad_ip),
        (uuid(14), outside),
        (uuid(15), dup),
        (uuid(16), reserved),
        (uuid(17), veth1),
        (uuid(18), veth2),
    ]);
    // VIP conflict: `web2` wants web's clusterIP and port.
    rows.services.push((
        uuid(33),
        service("web2", ServiceType::ClusterIp, "10.96.0.10", &[34]),
    ));
    rows.service_ports
        .push((uuid(34), sport(Some("http"), 80, Some(8080), None)));
    // NodePort out of range.
    rows.services.push((
        uuid(35),
        service("np", ServiceType::NodePort, "10.96.0.11", &[36]),
    ));
    rows.service_ports
        .push((uuid(36), sport(None, 80, Some(80), Some(80))));
    // A Service whose port row is missing.
    rows.services.push((
        uuid(37),
        service("orphan", ServiceType::ClusterIp, "10.96.0.12", &[99]),
    ));
    // `web:http` (Service `web`, port `http`) collides with Service
    // `web:http`'s unnamed port, in names Kubernetes would refuse.
    rows.services.push((
        uuid(38),
        service("web:http", ServiceType::ClusterIp, "10.96.0.13", &[39]),
    ));
    rows.service_ports
        .push((uuid(39), sport(None, 80, Some(80), None)));
    // An endpoint of an unknown Service.
    rows.endpoints.push((
        uuid(43),
        endpoint(98, "10.244.1.5", Some(("http", 8080)), true),
    ));
    // Remote nodes: overlapping CIDR, IPv6 VTEP, bad CIDR text, itself.
    rows.remote_nodes.extend([
        (uuid(21), remote("node-c", "192.0.2.12", "10.244.2.128/25")),
        (uuid(22), remote("node-d", "2001:db8::12", "10.244.4.0/24")),
        (uuid(23), remote("node-e", "192.0.2.14", "10.244.5.0/33")),
        (uuid(24), remote("node-a", "192.0.2.15", "10.244.6.0/24")),
        (uuid(25), remote("node-f", "192.0.2.16", "10.244.1.0/16")),
    ]);
    rows
}

#[test]
fn golden_bad_rows() {
    let rows = bad_rows();
    let c = golden("bad_rows", &rows);
    let got: Vec<(String, String)> = c
        .errors
        .iter()
        .map(|e| (format!("{} {}", e.table, e.key), e.sentence.clone()))
        .collect();
    let want = [
        (&*format!("Endpoint {}", uuid(43)), &*format!("it references Service {}, which does not exist", uuid(98))),
        ("Logical_Port bad-ip", "ips holds \"10.244.1.300\", which is not an IP address; write A.B.C.D or A.B.C.D/N"),
        ("Logical_Port bad-mac", "mac \"0a:58:zz:f4:01:14\" is not a MAC address; write it as aa:bb:cc:dd:ee:ff"),
        ("Logical_Port outside", "address 10.9.9.9 is outside this node's pod CIDRs (10.244.1.0/24); give the pod an address from them"),
        ("Logical_Port uplink", "the port name \"uplink\" is reserved for the node's own port; rename the Logical_Port"),
        ("Logical_Port veth-2", "its host interface vethA is already port veth-1's; give each pod its own veth"),
        ("Logical_Port z-dup", "address 10.244.1.5 is already used by port default_web-0"),
        ("Remote_Node node-a", "it names this node (node-a); a node is not its own remote"),
        ("Remote_Node node-c", "pod CIDR 10.244.2.128/25 overlaps 10.244.2.0/24, already routed elsewhere; pod CIDRs of nodes must be disjoint"),
        ("Remote_Node node-d", "vtep_ip 2001:db8::12 is IPv6; the pod overlay is IPv4: give the node's IPv4 underlay address"),
        ("Remote_Node node-e", "pod_cidrs holds \"10.244.5.0/33\", which is not an IPv4 prefix; write it as A.B.C.D/N"),
        ("Remote_Node node-f", "pod CIDR 10.244.0.0/16 overlaps 10.244.1.0/24, already routed elsewhere; pod CIDRs of nodes must be disjoint"),
        ("Service default/np", "port 80/TCP has nodePort 80, outside the node-port range 30000-32767 of Node_Config; pick a node port inside it"),
        ("Service default/orphan", &*format!("it references Service_Port {}, which does not exist; write the Service and its ports in one transaction", uuid(99))),
        ("Service default/web2", "its frontend 10.96.0.10:80/tcp is already Service default/web's; give each address, port and protocol to one Service"),
        ("Service default/web:http", "its port's Service name \"default/web:http\" is already another Service's; Kubernetes names contain no ':'"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
    // Every good row still compiles exactly as without the bad ones.
    let mut good = with_service(ServiceType::NodePort);
    let mut veth1 = lp("veth-1", 24, None);
    veth1
        .external_ids
        .insert("host_interface".into(), "vethA".into());
    good.logical_ports.push((uuid(17), veth1));
    let good = compile(&good);
    assert!(good.errors.is_empty());
    assert_eq!(c.program, good.program);
}

#[test]
fn bad_node_config_compiles_nothing_and_says_why() {
    type Change = Box<dyn Fn(&mut NodeConfig)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|n| n.vtep_ip = "2001:db8::1".parse().unwrap()),
            "vtep_ip 2001:db8::1 is IPv6; the pod overlay is IPv4: give the node's IPv4 underlay address",
        ),
        (
            Box::new(|n| n.pod_cidrs = BTreeSet::from(["10.244.1.0/24".into(), "10.244.0.0/16".into()])),
            "pod CIDRs 10.244.0.0/16 and 10.244.1.0/24 overlap; give the node disjoint pod CIDRs",
        ),
        (
            Box::new(|n| n.pod_cidrs = BTreeSet::from(["10.244.1/24".into()])),
            "pod_cidrs holds \"10.244.1/24\", which is not an IPv4 prefix; write it as A.B.C.D/N",
        ),
        (
            Box::new(|n| n.pod_cidrs = BTreeSet::from(["fd00::/64".into()])),
            "pod_cidrs holds no IPv4 prefix; give the node its IPv4 pod CIDR (e.g. 10.244.1.0/24)",
        ),
        (
            Box::new(|n| {
                n.external_ids.insert("vni".into(), "0".into());
            }),
            "external_ids:vni is \"0\"; give a Geneve VNI between 1 and 16777215",
        ),
        (
            Box::new(|n| {
                n.external_ids.insert("node_mac".into(), "nope".into());
            }),
            "external_ids:node_mac is \"nope\", not a MAC address; write it as aa:bb:cc:dd:ee:ff",
        ),
        (
            Box::new(|n| {
                n.node_ips.insert("10.244.1.9".parse().unwrap());
            }),
            "node IP 10.244.1.9 lies inside the node's pod CIDR; node addresses and pod CIDRs must not overlap",
        ),
    ];
    for (change, sentence) in cases {
        let mut rows = with_service(ServiceType::NodePort);
        change(&mut rows.node_config[0].1);
        let c = compile(&rows);
        assert_eq!(c.program, NodeProgram::default());
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert_eq!(c.errors[0].table, "Node_Config");
        assert_eq!(c.errors[0].sentence, sentence);
    }
    let mut rows = base();
    rows.node_config.clear();
    let c = compile(&rows);
    assert!(c.errors[0]
        .sentence
        .starts_with("there is no Node_Config row"));
    let mut other = node_config();
    other.node_name = "node-b".into();
    rows.node_config = vec![(uuid(1), node_config()), (uuid(2), other)];
    assert_eq!(compile(&rows).errors.len(), 2);
}

#[test]
fn service_and_port_name_errors() {
    let mut rows = with_service(ServiceType::ClusterIp);
    rows.services[0].1.ports.insert(uuid(32));
    rows.service_ports
        .push((uuid(32), sport(Some("http"), 81, Some(8081), None)));
    let c = compile(&rows);
    assert_eq!(
        c.errors[0].sentence,
        "it has two ports named \"http\"; port names must be unique"
    );
    assert!(c.program.services.is_empty(), "never half a Service");
    assert!(flows_of(&c, "Service", "default/web").is_empty());
}

// ------------------------------------------------------------- properties

/// Rows drawn from small pools so that conflicts (shared addresses, VIPs,
/// CIDRs, dp_ports) happen often.
fn arb_rows() -> impl Strategy<Value = NodeRows> {
    let port =
        (0u8..6, 4u8..12, prop::option::of(3u32..9), 0u8..10).prop_map(|(n, ip, dp, bad)| {
            let mut p = lp(&format!("pod{n}"), ip, dp);
            if bad == 0 {
                p.mac = "bad".into();
            }
            p
        });
    let remote = (0u8..4, 1u8..5, 0u8..6).prop_map(|(n, cidr, vtep)| {
        remote(
            &format!("node-{n}"),
            &format!("192.0.2.{}", 20 + vtep),
            &format!("10.244.{}.0/24", cidr + 1),
        )
    });
    let svc = (
        0u8..4,
        0u8..3,
        0u8..3,
        any::<bool>(),
        prop::collection::vec((0u8..12, any::<bool>(), any::<bool>(), any::<bool>()), 0..4),
        prop::option::of(30000u16..30003),
    );
    (
        prop::collection::vec(port, 0..6),
        prop::collection::vec(remote, 0..4),
        prop::collection::vec(svc, 0..4),
    )
        .prop_map(|(ports, remotes, svcs)| {
            let mut rows = NodeRows {
                node_config: vec![(uuid(1), node_config())],
                ..Default::default()
            };
            // Unique names, as the schema's indexes require.
            let mut seen = BTreeSet::new();
            for (i, p) in ports.into_iter().enumerate() {
                if seen.insert(p.name.clone()) {
                    rows.logical_ports.push((uuid(100 + i as u64), p));
                }
            }
            let (mut seen, mut vteps) = (BTreeSet::new(), BTreeSet::new());
            for (i, r) in remotes.into_iter().enumerate() {
                if seen.insert(r.name.clone()) && vteps.insert(r.vtep_ip) {
                    rows.remote_nodes.push((uuid(200 + i as u64), r));
                }
            }
            let mut seen = BTreeSet::new();
            for (i, (n, vip, ty, affinity, eps, np)) in svcs.into_iter().enumerate() {
                let su = 300 + 10 * i as u64;
                let ty = [
                    ServiceType::ClusterIp,
                    ServiceType::NodePort,
                    ServiceType::LoadBalancer,
                ][usize::from(ty)];
                let mut s = service(&format!("s{n}"), ty, &format!("10.96.0.{vip}"), &[su + 1]);
                if !seen.insert(s.name.clone()) {
                    continue;
                }
                if affinity {
                    s.session_affinity = SessionAffinity::ClientIp;
                }
                rows.services.push((uuid(su), s));
                rows.service_ports
                    .push((uuid(su + 1), sport(Some("p"), 80, Some(8080), np)));
                for (j, (ip, ready, terminating, local)) in eps.into_iter().enumerate() {
                    let mut e = endpoint(su, &format!("10.244.1.{ip}"), Some(("p", 8080)), local);
                    e.ready = ready;
                    e.terminating = terminating;
                    rows.endpoints.push((uuid(su + 2 + j as u64), e));
                }
            }
            rows
        })
}

/// The same rows in another order and with other UUIDs (references
/// followed).
fn shuffled(rows: &NodeRows, seed: u64) -> NodeRows {
    let map = |u: &Uuid| {
        let b = u.as_bytes();
        let n = u64::from_be_bytes(b[8..16].try_into().unwrap()) & 0xffff_ffff_ffff;
        uuid(n.wrapping_mul(7919).wrapping_add(seed) & 0xffff_ffff_ffff)
    };
    /// Reversed and rotated by `seed`, each row under its mapped UUID,
    /// with `refs` mapping the UUIDs it refers to.
    fn moved<T: Clone>(
        v: &[(Uuid, T)],
        seed: u64,
        map: &dyn Fn(&Uuid) -> Uuid,
        refs: impl Fn(&mut T),
    ) -> Vec<(Uuid, T)> {
        let mut v = v.to_vec();
        v.reverse();
        if !v.is_empty() {
            let k = (seed as usize) % v.len();
            v.rotate_left(k);
        }
        v.into_iter()
            .map(|(u, mut r)| {
                refs(&mut r);
                (map(&u), r)
            })
            .collect()
    }
    NodeRows {
        node_config: rows
            .node_config
            .iter()
            .map(|(u, r)| (map(u), r.clone()))
            .collect(),
        logical_ports: moved(&rows.logical_ports, seed, &map, |_| {}),
        services: moved(&rows.services, seed, &map, |s| {
            s.ports = s.ports.iter().map(map).collect()
        }),
        service_ports: moved(&rows.service_ports, seed, &map, |_| {}),
        endpoints: moved(&rows.endpoints, seed, &map, |e| {
            e.service = e.service.as_ref().map(map)
        }),
        remote_nodes: moved(&rows.remote_nodes, seed, &map, |_| {}),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn diff_then_apply_equals_compile(a in arb_rows(), b in arb_rows()) {
        let (ca, cb) = (compile(&a), compile(&b));
        let changes = diff(&ca.program, &cb.program);
        prop_assert_eq!(apply(&ca.program, &changes), cb.program.clone());
        prop_assert!(diff(&cb.program, &cb.program).is_empty());
        datapath_accepts(&cb.program);
    }

    #[test]
    fn compile_is_deterministic(a in arb_rows(), seed in 0u64..1000) {
        let c = compile(&a);
        let s = compile(&shuffled(&a, seed));
        prop_assert_eq!(&c.program, &s.program);
        prop_assert_eq!(c.errors.len(), s.errors.len());
        let no_uuid = |c: &Compiled| -> Vec<String> {
            c.errors.iter().filter(|e| e.table != "Endpoint" && !e.sentence.contains("Service_Port 0")).map(|e| e.to_string()).collect()
        };
        prop_assert_eq!(no_uuid(&c), no_uuid(&s));
    }
}

#[test]
fn rows_come_from_a_replica_and_bad_ones_are_reported() {
    let rows = with_service(ServiceType::NodePort);
    let (replica, _) = replica_with_a_bad_endpoint(&rows);
    let (read, errors) = NodeRows::from_replica(&replica);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].table, "Endpoint");
    assert_eq!(errors[0].key, uuid(77).to_string());
    assert!(
        errors[0]
            .sentence
            .contains("Endpoint.ip holds \"10.244.1.300\""),
        "{}",
        errors[0]
    );
    assert_eq!(compile(&read), compile(&rows));
}
