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

fn ping(ns: &Netns, dst: &str) {
    let out = ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "5", dst]);
    assert!(
        out.status.success(),
        "ping {dst} from {} failed:\n{}{}",
        ns.0,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 received"), "{text}");
}

#[test]
fn af_packet_ports_forward_ping_between_namespaces() {
    if !can_use_netns("af_packet_ports_forward_ping_between_namespaces") {
        return;
    }
    let a = Netns::new("slt-afp-a");
    let b = Netns::new("slt-afp-b");
    let _va = Veth::new("slt-afa-o", "slt-afa-i", &a, "10.201.0.1/24");
    let _vb = Veth::new("slt-afb-o", "slt-afb-i", &b, "10.201.0.2/24");
    let (d, ready) = Sluiced::start(&config(
        "slt-afp",
        "[port:a]\ndevargs = net_af_packet0,iface=slt-afa-o\n[port:b]\ndevargs = net_af_packet1,iface=slt-afb-o\n",
    ));
    assert_eq!(ready["ports"][0]["driver"], "net_af_packet");
    ping(&a, "10.201.0.2");
    ping(&b, "10.201.0.1");
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
        sh(&["ip", "-n", &ns.0, "addr", "add", addr, "dev", ifname]);
        sh(&["ip", "-n", &ns.0, "link", "set", ifname, "up"]);
    }
    ping(&a, "10.202.0.2");
    let ev = d.stop();
    assert_counters_match(&ev, 6);
    // Closing the TAP ports removed the interfaces.
    let links = String::from_utf8_lossy(&a.exec(&["ip", "-o", "link"]).stdout).into_owned();
    assert!(
        !links.contains("slt-tapa"),
        "TAP interface left behind: {links}"
    );
}
