//! End to end: the overlay between two `sluiced` "nodes".
//!
//! Topology (every namespace is created and deleted by the test):
//!
//! ```text
//!  pod-a 10.244.1.5/16          pod-b 10.244.2.7/16
//!     │ veth (af_packet, ofport 1)    │
//!  node-a: sluiced A             node-b: sluiced B
//!     │ uplink (af_packet, ofport 2)  │
//!     └──── underlay ns: bridge 192.168.77.254/24 ────┘
//!        VTEP A 192.168.77.1          VTEP B 192.168.77.2
//! ```
//!
//! Pods reach each other over Geneve (VNI 100, one option); the next hop
//! of each VTEP is resolved by the neighbour cache (nothing static); the
//! underlay namespace pings both VTEPs (answered by the smoltcp stack);
//! spoofed frames from a pod are dropped and counted per port.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PREFIX_A: &str = "slo-a";
const PREFIX_B: &str = "slo-b";

fn node_config(prefix: &str, vtep: &str, pod_if: &str, uplink_if: &str) -> String {
    format!(
        "[coe]\nnode_type = 'BAREMETAL'\n[nsx_node_agent]\novs_bridge = br-int\novs_uplink_port = uplink\n[datapath]\ncores = {}\nmain_core = 0\nfile_prefix = {prefix}\nhugepages = auto\nmbufs = 8192\nctl_socket = {}\nvtep_ip = {vtep}/24\nproxy_arp = 10.244.0.0/16\n[port:pod]\ndevargs = net_af_packet0,iface={pod_if}\nofport = 1\n[port:uplink]\ndevargs = net_af_packet1,iface={uplink_if}\nofport = 2\n",
        pmd_core(),
        ctl_path(prefix).display()
    )
}

/// `ovs-appctl -t <sluiced ctl> ARGS`, asserting success.
fn appctl(prefix: &str, args: &[&str]) -> String {
    let out = Command::new("ovs-appctl")
        .arg("-t")
        .arg(ctl_path(prefix))
        .args(args)
        .output()
        .expect("ovs-appctl (Debian openvswitch-common) must be installed");
    assert!(
        out.status.success(),
        "ovs-appctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ping_ok(ns: &Netns, dst: &str, count: u32) -> bool {
    ns.exec(&[
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        dst,
    ])
    .status
    .success()
}

/// Pings until one round of 3 echoes all succeed (bounded by `WAIT`): the
/// first packets may be dropped (`neigh_unresolved`) while the underlay
/// next hop is being resolved.
fn ping_until_stable(ns: &Netns, dst: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = ns.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", dst]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("3 received") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ping {dst} from {} never got 3/3 replies within {WAIT:?}:\n{text}",
            ns.0
        );
    }
}

/// A TCP round trip from `client` to `server_ip:port` in `server`: the
/// server echoes one line back upper-cased. Both sides time out after 20 s.
fn tcp_round_trip(server: &Netns, client: &Netns, server_ip: &str, port: u16) {
    let srv = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\ns.listen(1)\ns.settimeout(20)\nc,_=s.accept()\nc.settimeout(20)\nd=c.recv(100)\nc.sendall(d.upper())\nc.close()\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &server.0, "python3", "-c", &srv])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3 server");
    // The server is ready when its port is listening (bounded wait).
    let deadline = Instant::now() + WAIT;
    loop {
        let ss = server.exec(&["ss", "-ltn"]);
        if String::from_utf8_lossy(&ss.stdout).contains(&format!(":{port} ")) {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("TCP server in {} did not listen on {port}", server.0);
        }
        std::thread::yield_now();
    }
    let cli = format!(
        "import socket\ns=socket.create_connection(('{server_ip}',{port}),timeout=20)\ns.sendall(b'hello overlay')\nprint(s.recv(100).decode())\n"
    );
    let out = client.exec(&["python3", "-c", &cli]);
    let status = child.wait().expect("server exit");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("HELLO OVERLAY"),
        "TCP {} -> {server_ip}:{port} failed: {}{} (server {status})",
        client.0,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits (bounded) until `dump-neighbours` on `prefix` shows `ip` reachable.
fn wait_neighbour(prefix: &str, ip: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = appctl(prefix, &["dump-neighbours"]);
        if n.lines()
            .any(|l| l.starts_with(&format!("{ip} ")) && l.contains("REACHABLE"))
        {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix}: neighbour {ip} never resolved:\n{n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Captures `count` Geneve packets on `ifname` in `ns` while `traffic`
/// runs, then decodes them with tshark's Geneve dissector; returns one
/// line per packet: VNI, option class, option type, option data, inner
/// IPv4 source and destination.
fn capture_geneve(ns: &Netns, ifname: &str, count: u32, traffic: impl FnOnce()) -> Vec<String> {
    let pcap = std::env::temp_dir().join(format!("{}-geneve.pcap", ns.0));
    let _ = std::fs::remove_file(&pcap);
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "tshark",
            "-q",
            "-i",
            ifname,
            "-f",
            "udp port 6081",
        ])
        .args(["-c", &count.to_string(), "-a", "duration:60", "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tshark (Debian tshark) must be installed");
    // tshark says "Capturing on ..." once the capture runs (bounded wait).
    let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut err, &mut line).expect("tshark stderr");
        assert!(n > 0, "tshark exited before capturing");
        if line.contains("Capturing on") {
            break;
        }
    }
    traffic();
    // It stops by itself after `count` packets, or after 60 s.
    let st = child.wait().expect("tshark exit");
    assert!(st.success(), "tshark capture failed: {st}");
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-Y", "geneve", "-T", "fields", "-E", "separator=;"])
        .args([
            "-e",
            "geneve.vni",
            "-e",
            "geneve.option.class",
            "-e",
            "geneve.option.type",
        ])
        .args([
            "-e",
            "geneve.option.unknown.data",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
        ])
        .output()
        .expect("tshark -r");
    let _ = std::fs::remove_file(&pcap);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn program(
    prefix: &str,
    remote_vtep: &str,
    remote_node: &str,
    remote_net: &str,
    local_pod: &str,
    pod_mac: &str,
) {
    appctl(prefix, &["add-vtep", remote_node, remote_vtep]);
    for f in [
        format!("table=0,priority=100,in_port=1,ip,nw_dst={remote_net} actions=set_field:0x64->tun_id,set_field:{remote_vtep}->tun_dst,set_field:0x102->tun_gnv_class,set_field:0x1->tun_gnv_type,set_field:0xabcd->tun_metadata0,tnl_push,output:2"),
        "table=0,priority=100,in_port=2,udp,tp_dst=6081 actions=tnl_pop".to_string(),
        format!("table=0,priority=90,tun_id=0x64,tun_gnv_class=0x102,tun_metadata0=0xabcd,ip,nw_dst={local_pod} actions=set_field:{pod_mac}->dl_dst,output:1"),
        "table=0,priority=1 actions=drop".to_string(),
    ] {
        appctl(prefix, &["add-flow", &f]);
    }
}

#[test]
fn two_sluiced_nodes_carry_pod_traffic_over_geneve() {
    if !can_use_netns("two_sluiced_nodes_carry_pod_traffic_over_geneve") {
        return;
    }
    let node_a = Netns::new("slo-node-a");
    let node_b = Netns::new("slo-node-b");
    let pod_a = Netns::new("slo-pod-a");
    let pod_b = Netns::new("slo-pod-b");
    let ul = Netns::new("slo-ul");
    // Underlay: a bridge in `ul` with a veth to each node.
    sh(&["ip", "-n", &ul.0, "link", "add", "br0", "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        &ul.0,
        "addr",
        "add",
        "192.168.77.254/24",
        "dev",
        "br0",
    ]);
    sh(&["ip", "-n", &ul.0, "link", "set", "br0", "up"]);
    for (node, side) in [(&node_a, "a"), (&node_b, "b")] {
        let n = format!("slo-ul{side}");
        let p = format!("slo-ul{side}-p");
        sh(&["ip", "link", "add", &n, "type", "veth", "peer", "name", &p]);
        sh(&["ip", "link", "set", &n, "netns", &node.0]);
        sh(&["ip", "link", "set", &p, "netns", &ul.0]);
        sh(&["ip", "-n", &ul.0, "link", "set", &p, "master", "br0", "up"]);
        sh(&["ip", "-n", &node.0, "link", "set", &n, "up"]);
    }
    // Pods: their MTU leaves room for the Geneve overhead.
    let _va = Veth::new_in(&node_a, "slo-pa", "slo-pa-i", &pod_a, "10.244.1.5/16");
    let _vb = Veth::new_in(&node_b, "slo-pb", "slo-pb-i", &pod_b, "10.244.2.7/16");
    for (p, i) in [(&pod_a, "slo-pa-i"), (&pod_b, "slo-pb-i")] {
        sh(&["ip", "-n", &p.0, "link", "set", i, "mtu", "1400"]);
    }
    let mac_a = mac_of(&pod_a, "slo-pa-i");
    let mac_b = mac_of(&pod_b, "slo-pb-i");

    let (da, ready_a) = Sluiced::start_in(
        &node_a,
        &node_config(PREFIX_A, "192.168.77.1", "slo-pa", "slo-ula"),
    );
    let (db, _) = Sluiced::start_in(
        &node_b,
        &node_config(PREFIX_B, "192.168.77.2", "slo-pb", "slo-ulb"),
    );
    assert_eq!(ready_a["pipeline"], "flow");
    program(
        PREFIX_A,
        "192.168.77.2",
        "node-b",
        "10.244.2.0/24",
        "10.244.1.5",
        &mac_a,
    );
    program(
        PREFIX_B,
        "192.168.77.1",
        "node-a",
        "10.244.1.0/24",
        "10.244.2.7",
        &mac_b,
    );
    appctl(PREFIX_A, &["set-port-security", "1", &mac_a, "10.244.1.5"]);
    appctl(PREFIX_B, &["set-port-security", "1", &mac_b, "10.244.2.7"]);

    // The VTEPs answer ping from the underlay like hosts (smoltcp).
    for (prefix, vtep) in [(PREFIX_A, "192.168.77.1"), (PREFIX_B, "192.168.77.2")] {
        if !ping_ok(&ul, vtep, 3) {
            panic!(
                "VTEP {vtep} does not answer ping\n{}\n{}\nunderlay neighbours:\n{}",
                appctl(prefix, &["local-stack/show"]),
                appctl(prefix, &["pmd-stats-show"]),
                String::from_utf8_lossy(&ul.exec(&["ip", "neigh"]).stdout)
            );
        }
    }

    // Pods reach each other; the VTEP next hops are resolved by ARP.
    ping_until_stable(&pod_a, "10.244.2.7");
    ping_until_stable(&pod_b, "10.244.1.5");
    let na = wait_neighbour(PREFIX_A, "192.168.77.2");
    wait_neighbour(PREFIX_B, "192.168.77.1");
    assert!(na.contains("192.168.77.2 lladdr"), "{na}");
    tcp_round_trip(&pod_b, &pod_a, "10.244.2.7", 7001);
    tcp_round_trip(&pod_a, &pod_b, "10.244.1.5", 7002);

    // The underlay capture, decoded by tshark's Geneve dissector: VNI 100,
    // option class 0x0102 type 1 data 0x0000abcd, the pods' addresses
    // inside, the VTEPs outside.
    let decoded = capture_geneve(&ul, "slo-ula-p", 4, || {
        ping_until_stable(&pod_a, "10.244.2.7")
    });
    assert_eq!(decoded.len(), 4, "{decoded:?}");
    for l in &decoded {
        let f: Vec<&str> = l.split(';').collect();
        assert!(f[0] == "100" || f[0] == "0x000064", "VNI in {l}");
        assert!(f[1] == "0x0102" || f[1] == "258", "option class in {l}");
        assert!(f[2] == "0x01" || f[2] == "1", "option type in {l}");
        assert!(
            f[3].replace(':', "").contains("0000abcd"),
            "option data in {l}"
        );
        let ips = [f[4], f[5]].join(",");
        assert!(
            ips == "192.168.77.1,10.244.1.5,192.168.77.2,10.244.2.7"
                || ips == "192.168.77.2,10.244.2.7,192.168.77.1,10.244.1.5",
            "outer/inner addresses in {l}"
        );
    }

    let tunnels = appctl(PREFIX_A, &["dump-tunnels"]);
    assert!(
        tunnels.contains("remote node-b vtep 192.168.77.2"),
        "{tunnels}"
    );
    assert!(!tunnels.contains("tx 0 packets"), "{tunnels}");
    assert!(!tunnels.contains("rx 0 packets"), "{tunnels}");
    let mtu = appctl(PREFIX_A, &["tunnel-mtu"]);
    assert!(mtu.contains("pod mtu 1438"), "{mtu}");

    // Spoofing from pod A: another source IP is dropped and counted.
    sh(&[
        "ip",
        "-n",
        &pod_a.0,
        "addr",
        "add",
        "10.244.1.99/16",
        "dev",
        "slo-pa-i",
    ]);
    assert!(
        !pod_a
            .exec(&[
                "ping",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                "10.244.1.99",
                "10.244.2.7"
            ])
            .status
            .success(),
        "spoofed ping got through"
    );
    let sec = appctl(PREFIX_A, &["dump-port-security"]);
    let ip_drops: u64 = sec
        .lines()
        .find(|l| l.starts_with("port 1:"))
        .and_then(|l| l.split(" ip ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no port 1 line:\n{sec}"));
    assert!(ip_drops >= 2, "spoofed packets not counted:\n{sec}");

    // flush-neighbours empties the cache; traffic re-resolves.
    appctl(PREFIX_A, &["flush-neighbours"]);
    ping_until_stable(&pod_a, "10.244.2.7");

    let ev_a = da.stop();
    let ev_b = db.stop();
    for ev in [&ev_a, &ev_b] {
        let drops = &ev["pmds"][0]["drops"];
        for bad in [
            "geneve_malformed",
            "tunnel_unknown_vtep",
            "tunnel_not_local",
        ] {
            assert!(drops.get(bad).is_none(), "unexpected {bad}: {ev}");
        }
    }
    assert!(
        ev_a["pmds"][0]["drops"]["port_security_ip"].as_u64() >= Some(2),
        "{ev_a}"
    );
}
