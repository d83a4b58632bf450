//! End to end: a ClusterIP Service through `sluiced`. A client namespace
//! opens real kernel TCP connections to 10.96.0.10:80; the flow program
//! sends every IPv4 packet through `ct(commit,zone=1,nat)`, which balances
//! new connections over two endpoint namespaces (port 8080) and translates
//! the replies back. Each server answers with the address it saw, which
//! must be the client's own (ClusterIP traffic is not masqueraded).

mod common;

use common::*;

/// One connection from the client namespace to the VIP; returns what the
/// server said ("<address it saw> <server name>").
fn connect(client: &Netns) -> String {
    let out = client.exec(&[
        "python3",
        "-c",
        "import socket\n\
         s=socket.create_connection(('10.96.0.10',80),timeout=20)\n\
         print(s.makefile().readline().strip())",
    ]);
    assert!(
        out.status.success(),
        "connection to the ClusterIP failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn ctl(prefix: &str, args: &[&str]) -> String {
    let (ok, out, err) = sluicectl(prefix, args);
    assert!(ok, "sluicectl {args:?} failed: {out}{err}");
    out
}

#[test]
fn cluster_ip_tcp_through_conntrack_dnat() {
    if !can_use_netns("cluster_ip_tcp_through_conntrack_dnat") {
        return;
    }
    let prefix = "slt-svc";
    let net = ServiceNet::new("slt-svc", "10.202.0", "02:00:00:02:02");
    let (node, c, a, b) = (&net.node, &net.c, &net.a, &net.b);
    let (d, _ready) = Sluiced::start_in(
        node,
        &config(
            prefix,
            "[port:c]\ndevargs = net_af_packet0,iface=slt-svc-co\nofport = 1\n\
             [port:a]\ndevargs = net_af_packet1,iface=slt-svc-ao\nofport = 2\n\
             [port:b]\ndevargs = net_af_packet2,iface=slt-svc-bo\nofport = 3\n",
        ),
    );
    for f in [
        "table=0,priority=100,arp actions=normal",
        "table=0,priority=10,ip actions=ct(commit,zone=1,nat,table=1)",
        "table=1,priority=20,ct_state=+trk+inv actions=drop",
        "table=1,priority=10,ip,nw_dst=10.202.0.1 actions=mod_dl_dst:02:00:00:02:02:01,output:1",
        "table=1,priority=10,ip,nw_dst=10.202.0.5 actions=mod_dl_dst:02:00:00:02:02:05,output:2",
        "table=1,priority=10,ip,nw_dst=10.202.0.6 actions=mod_dl_dst:02:00:00:02:02:06,output:3",
    ] {
        ctl(prefix, &["add-flow", f]);
    }
    let update = r#"{"upsert": [{"name": "default/web:http", "protocol": "tcp", "port": 80,
        "cluster_ips": ["10.96.0.10"],
        "endpoints": [{"ip": "10.202.0.5", "port": 8080}, {"ip": "10.202.0.6", "port": 8080}]}]}"#;
    let out = ctl(prefix, &["call", "service-update", update]);
    assert!(out.contains("\"services\":1"), "{out}");

    let _sa = Server::start(a, "a");
    let _sb = Server::start(b, "b");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..24 {
        let answer = connect(c);
        let (addr, server) = answer
            .split_once(' ')
            .unwrap_or_else(|| panic!("unexpected answer {answer:?}"));
        assert_eq!(addr, "10.202.0.1", "the server sees the client's address");
        *seen.entry(server.to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["a", "b"],
        "both endpoints serve: {seen:?}"
    );

    let ct = ctl(prefix, &["call", "dump-conntrack", "zone=1"]);
    assert!(
        ct.lines()
            .any(|l| l.starts_with("tcp,orig=(src=10.202.0.1,dst=10.96.0.10")
                && l.contains("service=default/web:http")),
        "{ct}"
    );
    let svc = ctl(prefix, &["call", "dump-services"]);
    let conns: u64 = svc
        .lines()
        .filter_map(|l| l.split("connections=").nth(1))
        .filter_map(|v| v.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(conns, 24, "{svc}");
    // `sluicectl trace` follows the packet through conntrack and the
    // Service table: a new connection is DNATed to one of the endpoints
    // and the trace resumes in table 1 with the translated key.
    let trace = ctl(
        prefix,
        &[
            "trace",
            "in_port=1,tcp,tcp_flags=+syn,nw_src=10.202.0.1,nw_dst=10.96.0.10,tp_src=40000,tp_dst=80",
        ],
    );
    for want in [
        "lb: service default/web:http -> endpoint 10.202.0.",
        "ct_state=new|trk|dnat",
        "Resuming from table 1",
    ] {
        assert!(trace.contains(want), "missing {want:?} in\n{trace}");
    }
    // Established packets were served by the PMD's connection cache.
    let pmd = ctl(prefix, &["pmd-stats-show"]);
    let hits: u64 = pmd
        .lines()
        .find_map(|l| l.trim().strip_prefix("conntrack cache hits: "))
        .and_then(|v| v.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no conntrack cache line in {pmd}"));
    assert!(hits > 0, "{pmd}");
    let stats = ctl(prefix, &["call", "conntrack-stats"]);
    let created: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("created: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no created counter in {stats}"));
    assert!(created >= 24, "{stats}");
    let ev = d.stop();
    assert_eq!(sum_pmds(&ev, "rx_packets"), sum_ports(&ev, "rx_packets"));
}
