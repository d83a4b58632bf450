//! End to end: sluiced forwards real kernel traffic between network
//! namespaces through DPDK af_packet and TAP ports, and its counters
//! account for every packet.

mod common;

use common::*;

/// Checks the stopped event: every packet the ports received went through
/// the PMD, and every packet the PMD sent left through a port.
fn assert_counters_match(ev: &serde_json::Value, min_packets: u64) {
    let port_rx = sum_ports(ev, "rx_packets");
    let port_tx = sum_ports(ev, "tx_packets");
    let pmd_rx = sum_pmds(ev, "rx_packets");
    let pmd_tx = sum_pmds(ev, "tx_packets");
    assert_eq!(pmd_rx, port_rx, "PMD rx vs ports rx: {ev}");
    assert_eq!(pmd_tx, port_tx, "PMD tx vs ports tx: {ev}");
    assert!(
        pmd_rx >= min_packets,
        "expected at least {min_packets} packets: {ev}"
    );
}

#[test]
fn af_packet_ports_forward_ping_between_namespaces() {
    let Some(pods) = two_pods(
        "af_packet_ports_forward_ping_between_namespaces",
        "slt-afp",
        "slt-af",
        "10.201.0",
    ) else {
        return;
    };
    let (node, a, b) = (&pods.node, &pods.a, &pods.b);
    let (d, ready) = Sluiced::start_in(node, &config(
        "slt-afp",
        "[port:a]\ndevargs = net_af_packet0,iface=slt-afa-o\n[port:b]\ndevargs = net_af_packet1,iface=slt-afb-o\n",
    ));
    assert_eq!(ready["ports"][0]["driver"], "net_af_packet");
    // Capture port a while pinging: the pcap holds both directions.
    let pcap = std::env::temp_dir().join("slt-afp-capture.pcap");
    let _ = std::fs::remove_file(&pcap);
    let (ok, out, err) = sluicectl(
        "slt-afp",
        &["call", "capture", "a", pcap.to_str().unwrap(), "1000"],
    );
    assert!(ok, "capture failed: {out}{err}");
    a.assert_ping("10.201.0.2");
    b.assert_ping("10.201.0.1");
    let (ok, out, err) = sluicectl("slt-afp", &["call", "capture-stop"]);
    assert!(ok, "capture-stop failed: {out}{err}");
    let decoded = sh(&[
        "tshark",
        "-n",
        "-r",
        pcap.to_str().unwrap(),
        "-Y",
        "icmp",
        "-T",
        "fields",
        "-e",
        "icmp.type",
    ]);
    let types: Vec<&str> = decoded.lines().collect();
    assert_eq!(
        types.iter().filter(|t| **t == "8").count(),
        6,
        "echo requests in capture: {decoded}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "0").count(),
        6,
        "echo replies in capture: {decoded}"
    );
    let _ = std::fs::remove_file(&pcap);
    let ev = d.stop();
    // 6 echo requests + 6 replies at least (plus ARP).
    assert_counters_match(&ev, 12);
    assert_eq!(
        ev["pmds"][0]["drops"].as_object().map(|m| m.len()),
        Some(0),
        "{ev}"
    );
}

#[test]
fn tap_ports_moved_into_namespaces_forward_ping() {
    if !can_use_netns("tap_ports_moved_into_namespaces_forward_ping") {
        return;
    }
    let a = Netns::new("slt-tap-a");
    let b = Netns::new("slt-tap-b");
    let (d, ready) = Sluiced::start(&config(
        "slt-tap",
        "[port:a]\ndevargs = net_tap0,iface=slt-tapa\n[port:b]\ndevargs = net_tap1,iface=slt-tapb\n",
    ));
    assert_eq!(ready["ports"][1]["driver"], "net_tap");
    for (ns, ifname, addr) in [
        (&a, "slt-tapa", "10.202.0.1/24"),
        (&b, "slt-tapb", "10.202.0.2/24"),
    ] {
        sh(&["ip", "link", "set", ifname, "netns", &ns.0]);
        ns.ip(&["addr", "add", addr, "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
    a.assert_ping("10.202.0.2");
    let ev = d.stop();
    assert_counters_match(&ev, 6);
    // Closing the TAP ports removed the interfaces.
    let links = String::from_utf8_lossy(&a.exec(&["ip", "-o", "link"]).stdout).into_owned();
    assert!(
        !links.contains("slt-tapa"),
        "TAP interface left behind: {links}"
    );
}

/// Operators' tools against a running sluiced: the real `ovs-appctl`
/// lists the commands and dumps flows whose counters move with traffic;
/// a flow added at run time takes effect on live traffic and its drops
/// are counted; deleting it restores forwarding.
#[test]
fn ovs_appctl_and_flow_changes_on_a_running_datapath() {
    let prefix = "slt-ofp";
    let Some(pods) = two_pods(
        "ovs_appctl_and_flow_changes_on_a_running_datapath",
        "slt-ofp",
        "slt-of",
        "10.203.0",
    ) else {
        return;
    };
    let (node, a) = (&pods.node, &pods.a);
    let (d, ready) = Sluiced::start_in(node, &config(
        prefix,
        "[port:a]\ndevargs = net_af_packet0,iface=slt-ofa-o\nofport = 1\n[port:b]\ndevargs = net_af_packet1,iface=slt-ofb-o\nofport = 2\n",
    ));
    assert_eq!(ready["pipeline"], "flow");
    let cmds = appctl(prefix, &["list-commands"]);
    for c in [
        "dump-flows",
        "add-flow",
        "trace",
        "pmd-stats-show",
        "dump-ports",
    ] {
        assert!(cmds.contains(c), "list-commands lacks {c}:\n{cmds}");
    }
    a.assert_ping("10.203.0.2");
    let flows = appctl(prefix, &["dump-flows"]);
    let normal = flows
        .lines()
        .find(|l| l.contains("priority=0 actions=NORMAL"))
        .unwrap_or_else(|| panic!("default flow missing:\n{flows}"));
    let n_packets: u64 = normal
        .split("n_packets=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .expect("n_packets");
    assert!(
        n_packets >= 6,
        "default flow counted {n_packets} packets:\n{flows}"
    );

    // The PMD's megaflow cache holds what the ping installed: with only
    // the `normal` flow, one wildcarded megaflow (normal does its own MAC
    // lookup per packet, so it needs no L2 fields in the mask).
    let cache = appctl(prefix, &["dump-cache"]);
    assert!(cache.contains("pmd thread index 0:"), "{cache}");
    assert!(
        cache.lines().any(|l| l.ends_with("actions:normal")),
        "no normal megaflow in dump-cache:\n{cache}"
    );

    // Drop ICMP from port 1: ping must now fail, and the drops are counted.
    let (ok, _, err) = sluicectl(
        prefix,
        &[
            "add-flow",
            "table=0,priority=100,in_port=1,icmp actions=drop",
        ],
    );
    assert!(ok, "add-flow failed: {err}");
    let out = a.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.203.0.2"]);
    assert!(
        !out.status.success(),
        "ping should be dropped by the new flow"
    );
    let flows = appctl(prefix, &["dump-flows"]);
    let drop_rule = flows
        .lines()
        .find(|l| {
            l.contains("priority=100,icmp,in_port=1") || l.contains("priority=100,in_port=1,icmp")
        })
        .unwrap_or_else(|| panic!("drop rule missing:\n{flows}"));
    assert!(
        !drop_rule.contains("n_packets=0,"),
        "drop rule never hit: {drop_rule}"
    );
    let stats = appctl(prefix, &["pmd-stats-show"]);
    assert!(
        stats.contains("flow_drop:"),
        "drops not counted by reason:\n{stats}"
    );

    let (ok, _, err) = sluicectl(
        prefix,
        &[
            "del-flows",
            "--strict",
            "table=0,priority=100,in_port=1,icmp",
        ],
    );
    assert!(ok, "del-flows failed: {err}");
    a.assert_ping("10.203.0.2");
    // A flow with a hard timeout is removed by the daemon's revalidator.
    let (ok, _, err) = sluicectl(
        prefix,
        &[
            "add-flow",
            "table=0,priority=50,hard_timeout=1,udp,tp_dst=9 actions=drop",
        ],
    );
    assert!(ok, "add-flow failed: {err}");
    assert!(appctl(prefix, &["dump-flows"]).contains("hard_timeout=1"));
    let deadline = std::time::Instant::now() + WAIT;
    while appctl(prefix, &["dump-flows"]).contains("hard_timeout=1") {
        assert!(
            std::time::Instant::now() < deadline,
            "the hard_timeout=1 flow was never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ev = d.stop();
    assert_eq!(sum_pmds(&ev, "rx_packets"), sum_ports(&ev, "rx_packets"));
}
