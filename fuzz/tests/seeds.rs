//! Writes the seed inputs of every target into `corpus/<target>/seed-*`
//! (run by hand: `cargo test --test seeds -- --ignored`). The seeds are
//! well-formed inputs the fuzzer mutates from: frames each part of the
//! packet path serves, one request per control method, transactions and
//! monitors on every table of the node schema, configs and flows.

use std::net::Ipv4Addr;
use std::path::Path;

use etherparse::PacketBuilder;
use serde_json::json;
use sluice_fuzz::packet_path::{self, CLIENT, NODE_MAC, PEER, PEER_MAC, PEER_VTEP, SERVER, VTEP};

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{}", name.replace('/', "_"))), data).unwrap();
}

fn tcp(
    src: ([u8; 6], Ipv4Addr),
    dst: ([u8; 6], Ipv4Addr),
    ports: (u16, u16),
    syn: bool,
    ack: bool,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src.1.octets(), dst.1.octets(), 64)
        .tcp(ports.0, ports.1, if ack { 5000 } else { 1000 }, 64000);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1001);
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

fn udp(
    src: ([u8; 6], Ipv4Addr),
    dst: ([u8; 6], Ipv4Addr),
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src.1.octets(), dst.1.octets(), 64)
        .udp(ports.0, ports.1)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn icmp_echo(src: ([u8; 6], Ipv4Addr), dst: ([u8; 6], Ipv4Addr)) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src.1.octets(), dst.1.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut v, b"ping")
        .unwrap();
    v
}

fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr, dst: [u8; 6]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&dst);
    v.extend_from_slice(&sha);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&sha);
    v.extend_from_slice(&spa.octets());
    v.extend_from_slice(&tha);
    v.extend_from_slice(&tpa.octets());
    v
}

fn geneve(inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0, 0, 0x65, 0x58, 0, 0, 1, 0];
    payload.extend_from_slice(inner);
    udp(
        (PEER_MAC, PEER_VTEP),
        (NODE_MAC, VTEP),
        (50000, 6081),
        &payload,
    )
}

/// One record of the packet-path input.
fn rec(port: u8, new_burst: bool, advance: u8, frame: &[u8]) -> Vec<u8> {
    let mut v = vec![port | if new_burst { 8 } else { 0 } | (advance << 4)];
    v.extend_from_slice(&(frame.len() as u16).to_le_bytes());
    v.extend_from_slice(frame);
    v
}

fn input(records: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![0u8];
    for r in records {
        v.extend_from_slice(r);
    }
    v
}

#[test]
#[ignore = "writes the seed corpora; run by hand"]
fn write_seed_corpora() {
    // Port selectors: index into the sorted ports (1 uplink, 2 host, pods).
    let p = sluice_control::agent::compile::compile(&packet_path::rows()).program;
    let mut ports: Vec<u16> = p.ports.values().map(|s| s.ofport).collect();
    ports.sort();
    let sel = |name: &str| {
        ports
            .iter()
            .position(|&o| o == p.ports[name].ofport)
            .unwrap() as u8
    };
    let (up, host, cl, pe) = (sel("uplink"), sel("host"), sel("a-client"), sel("a-peer"));
    let gw = Ipv4Addr::new(10, 244, 1, 1);
    let router = ([2, 0, 0, 0, 0, 0xfe], Ipv4Addr::new(192, 0, 2, 1));
    let node = (NODE_MAC, VTEP);
    let svc = (NODE_MAC, Ipv4Addr::new(10, 96, 0, 10));
    let dns = (NODE_MAC, Ipv4Addr::new(10, 96, 0, 53));
    let bcast = [0xff; 6];
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "arp-gateway",
            input(&[rec(
                cl,
                false,
                0,
                &arp(1, CLIENT.0, CLIENT.1, [0; 6], gw, bcast),
            )]),
        ),
        (
            "arp-vtep",
            input(&[rec(
                up,
                false,
                0,
                &arp(1, router.0, router.1, [0; 6], VTEP, bcast),
            )]),
        ),
        (
            "arp-reply-peer",
            input(&[rec(
                up,
                false,
                0,
                &arp(2, PEER_MAC, PEER_VTEP, NODE_MAC, VTEP, NODE_MAC),
            )]),
        ),
        (
            "pod-to-pod",
            input(&[
                rec(
                    cl,
                    false,
                    0,
                    &tcp(CLIENT, (NODE_MAC, PEER.1), (4000, 80), true, false),
                ),
                rec(
                    pe,
                    true,
                    1,
                    &tcp(PEER, (NODE_MAC, CLIENT.1), (80, 4000), true, true),
                ),
            ]),
        ),
        (
            "clusterip-remote",
            input(&[
                rec(cl, false, 0, &tcp(CLIENT, svc, (4001, 80), true, false)),
                rec(
                    up,
                    true,
                    2,
                    &geneve(&tcp(
                        (SERVER.0, SERVER.1),
                        (NODE_MAC, CLIENT.1),
                        (8080, 4001),
                        true,
                        true,
                    )),
                ),
                rec(cl, true, 2, &tcp(CLIENT, svc, (4001, 80), false, true)),
            ]),
        ),
        (
            "clusterip-local-udp",
            input(&[
                rec(cl, false, 0, &udp(CLIENT, dns, (5000, 53), b"query")),
                rec(
                    pe,
                    true,
                    1,
                    &udp(PEER, (NODE_MAC, CLIENT.1), (5353, 5000), b"answer"),
                ),
            ]),
        ),
        (
            "nodeport",
            input(&[rec(
                up,
                false,
                0,
                &tcp(router, node, (40000, 30080), true, false),
            )]),
        ),
        (
            "geneve-to-pod",
            input(&[rec(
                up,
                false,
                0,
                &geneve(&tcp(SERVER, (NODE_MAC, PEER.1), (9, 80), true, false)),
            )]),
        ),
        (
            "ping-vtep",
            input(&[rec(up, false, 0, &icmp_echo(router, node))]),
        ),
        (
            "ping-vtep-broadcast",
            input(&[rec(up, false, 0, &icmp_echo(router, (bcast, VTEP)))]),
        ),
        (
            "spoofed",
            input(&[
                rec(
                    cl,
                    false,
                    0,
                    &tcp(
                        ([2, 9, 9, 9, 9, 9], CLIENT.1),
                        (NODE_MAC, PEER.1),
                        (1, 2),
                        true,
                        false,
                    ),
                ),
                rec(
                    cl,
                    false,
                    0,
                    &tcp(
                        (CLIENT.0, Ipv4Addr::new(10, 244, 1, 99)),
                        (NODE_MAC, PEER.1),
                        (1, 2),
                        true,
                        false,
                    ),
                ),
            ]),
        ),
        (
            "host",
            input(&[rec(
                host,
                false,
                0,
                &tcp(
                    (NODE_MAC, VTEP),
                    (CLIENT.0, CLIENT.1),
                    (22, 3000),
                    true,
                    false,
                ),
            )]),
        ),
        (
            "self-addressed",
            input(&[rec(
                cl,
                false,
                0,
                &tcp(CLIENT, (NODE_MAC, CLIENT.1), (7, 7), true, false),
            )]),
        ),
        (
            "big-df",
            input(&[rec(
                cl,
                false,
                0,
                &udp(CLIENT, (NODE_MAC, SERVER.1), (1, 2), &[0u8; 1480]),
            )]),
        ),
    ];
    for (name, data) in &seeds {
        write("packet_path", name, data);
    }

    // Control requests: every method, both forms, and some with arguments.
    for (i, (name, _)) in sluice_api::all_methods().into_iter().enumerate() {
        let text = json!({"id": i, "method": name, "params": []});
        let obj = json!({"id": i, "method": name, "params": {}});
        let mut data = vec![(i % 7) as u8];
        data.extend_from_slice(text.to_string().as_bytes());
        data.extend_from_slice(obj.to_string().as_bytes());
        write("control_rpc", name, &data);
    }
    let changes = sluice_api::node::diff(&Default::default(), &p);
    let with_args = [
        json!({"id": 1, "method": "add-flow", "params": ["table=0,priority=10,ip,nw_dst=10.0.0.0/8 actions=output:2"]}),
        json!({"id": 2, "method": "add-vtep", "params": ["node-b", "192.0.2.11"]}),
        json!({"id": 3, "method": "set-port-security", "params": ["3", "0a:58:0a:f4:01:05", "10.244.1.5"]}),
        json!({"id": 4, "method": "node-commit", "params": changes}),
        json!({"id": 5, "method": "node-commit", "params": [serde_json::to_string(&changes).unwrap()]}),
        json!({"id": 6, "method": "trace", "params": ["in_port=1,tcp,nw_dst=10.0.0.5,tp_dst=80"]}),
        json!({"id": 7, "method": "exit", "params": []}),
        json!({"id": "s", "method": "dpctl/dump-flows", "params": {"args": ["-m"]}}),
    ];
    for (i, r) in with_args.iter().enumerate() {
        let mut data = vec![i as u8 * 9];
        data.extend_from_slice(r.to_string().as_bytes());
        write("control_rpc", &format!("args-{i}"), &data);
    }

    // nestdb: transactions and monitors on the node schema.
    let db = "Sluice_Node";
    let msgs = [
        json!({"id": 1, "method": "transact", "params": [db,
            {"op": "insert", "table": "Node_Config", "row": {"node_name": "n", "node_type": "BAREMETAL", "uplink_port": "u", "vtep_ip": "192.0.2.10", "mtu": 1500}},
            {"op": "insert", "table": "Logical_Port", "uuid-name": "lp", "row": {"name": "p1", "mac": "0a:58:0a:f4:01:05", "ips": ["set", ["10.244.1.5"]], "interface_name": "eth0"}},
            {"op": "insert", "table": "Service_Port", "uuid-name": "sp", "row": {"protocol": "TCP", "port": 80}},
            {"op": "insert", "table": "Service", "uuid-name": "s", "row": {"name": "web", "namespace": "default", "ports": ["named-uuid", "sp"]}},
            {"op": "insert", "table": "Endpoint", "row": {"service": ["named-uuid", "s"], "ip": "10.244.1.5", "ports": ["map", [["http", 8080]]]}},
            {"op": "insert", "table": "Remote_Node", "row": {"name": "b", "vtep_ip": "192.0.2.11"}},
            {"op": "comment", "comment": "seed"},
            {"op": "commit", "durable": true}]}),
        json!({"id": 2, "method": "monitor_cond_since", "params": [db, "m", {"Logical_Port": [{"columns": ["name", "ips"], "where": [["up", "==", false]]}], "Service": {}}, "00000000-0000-0000-0000-000000000000"]}),
        json!({"id": 3, "method": "transact", "params": [db,
            {"op": "update", "table": "Logical_Port", "where": [["name", "==", "p1"]], "row": {"up": true}},
            {"op": "mutate", "table": "Node_Config", "where": [], "mutations": [["mtu", "-=", 50], ["pod_cidrs", "insert", ["set", ["10.244.1.0/24"]]]]},
            {"op": "select", "table": "Service", "where": [["name", "!=", "x"]], "columns": ["name", "ports"]},
            {"op": "wait", "table": "Remote_Node", "where": [], "columns": ["name"], "until": "==", "rows": [{"name": "b"}], "timeout": 0}]}),
        json!({"id": 4, "method": "transact", "params": [db,
            {"op": "delete", "table": "Service", "where": [["name", "==", "web"]]},
            {"op": "insert", "table": "Remote_Node", "row": {"name": "b", "vtep_ip": "192.0.2.12"}}]}),
        json!({"id": 5, "method": "transact", "params": [db, {"op": "insert", "table": "Logical_Port", "row": {"name": "p2"}}, {"op": "abort"}]}),
        json!({"id": 6, "method": "monitor", "params": [db, null, {"Endpoint": {"columns": ["ip"], "select": {"initial": true, "insert": true}}}]}),
    ];
    let mut all = vec![0u8];
    for m in &msgs {
        all.extend_from_slice(m.to_string().as_bytes());
    }
    write("nestdb_rpc", "session", &all);
    all[0] = 1;
    write("nestdb_rpc", "session-compacted", &all);
    for (i, m) in msgs.iter().enumerate() {
        let mut d = vec![0u8];
        d.extend_from_slice(msgs[0].to_string().as_bytes());
        d.extend_from_slice(m.to_string().as_bytes());
        write("nestdb_rpc", &format!("msg-{i}"), &d);
    }

    // Configs.
    let configs = [
        ("readme", "[coe]\nnode_type = 'BAREMETAL'\n[nsx_node_agent]\novs_bridge = br-int\novs_uplink_port = uplink\n[datapath]\ncores = 1                  ; PMD cores\nhugepages = auto\nctl_socket = /var/run/sluice/sluiced.ctl\nemc_insert_inv_prob = 100\n[port:uplink]\ndevargs = 0000:01:00.0\n[port:pod1]\ndevargs = net_tap1,iface=pod1\n"),
        ("overlay", "[coe]\nnode_type = 'BAREMETAL'\n[datapath]\ncores = 1-2,4\nmain_core = 0\nfile_prefix = x\nhugepages = never\nmbufs = 8192\nvtep_ip = 192.168.50.1/24\nvtep_gateway = 192.168.50.254\nuplink_mtu = 9000\ntunnel_ttl = 32\ntunnel_df = false\ntunnel_udp_checksum = yes\narp_gateways = 10.244.1.1, 10.244.2.1\nproxy_arp = 10.244.0.0/16\nhost_port = host\n[port:uplink]\ndevargs = net_ring0\n[port:host]\ndevargs = net_null0,no-rx=1\n"),
        ("dup", "[datapath]\ncores = 1\n[datapath]\ncores = 99\n"),
    ];
    for (name, text) in configs {
        write("ini_config", name, text.as_bytes());
    }

    // Flows: the compiled program's flows and groups, some actions,
    // filters and mods.
    for (i, line) in p.flow_lines().iter().enumerate().step_by(3) {
        let mut d = vec![0u8];
        d.extend_from_slice(line.as_bytes());
        write("ofctl_flow", &format!("flow-{i}"), &d);
    }
    for g in p.groups.values() {
        let mut d = vec![1u8];
        d.extend_from_slice(g.text().as_bytes());
        write("ofctl_flow", &format!("group-{}", g.id), &d);
    }
    let extra: [(u8, &str); 6] = [
        (1, "group_id=7,type=select,selection_method=hash,fields(ip_src,tcp_dst),bucket=weight:10,actions=output:3,bucket=weight:5,actions=mod_dl_dst:02:00:00:00:00:01,output:4"),
        (2, "ct(commit,zone=1,nat(dst=10.244.2.7:8080)),set_field:0x1->reg0,resubmit(,10),learn(table=5),dec_ttl,output:1"),
        (2, "push_vlan:0x8100,set_field:100->vlan_vid,move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],load:0x1->NXM_NX_REG1[0..3],set_tunnel:0x10,group:7,controller,local,drop"),
        (3, "table=0,priority=100,tcp,nw_src=10.0.0.0/8,tp_dst=80,cookie=0x5/0xff"),
        (4, "tcp,tp_dst=0x50/0xfff0 actions=ct(table=2,zone=NXM_NX_REG0[0..15])"),
        (5, "in_port=1,tcp,nw_dst=10.0.0.5,tp_dst=80,ct_state=+new+trk"),
    ];
    for (i, (sel, text)) in extra.iter().enumerate() {
        let mut d = vec![*sel];
        d.extend_from_slice(text.as_bytes());
        write("ofctl_flow", &format!("extra-{i}"), &d);
    }
}
