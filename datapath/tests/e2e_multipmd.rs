//! End to end with two PMD threads: conntrack, a ClusterIP Service and the
//! Geneve overlay stay correct when the two directions of a connection are
//! received by different PMDs.
//!
//! Each daemon runs with `--cores` naming two CPUs (on a 2-core machine the
//! EAL main thread shares one with a PMD: correctness only, nothing here
//! measures time). Ports get their single rx queue round-robin in config
//! order, so the topologies below put the two ends of each connection on
//! different PMDs, which `pmd-rxq-show` confirms:
//!
//! - Service: client port `c` → PMD 0, endpoint `a` → PMD 1, endpoint `b`
//!   → PMD 0. A connection to endpoint `a` is created (and DNATed) on PMD 0
//!   and its replies are un-NATed on PMD 1, through the shared table.
//! - Overlay: per node, the uplink → PMD 0 (which runs the local stack)
//!   and the pod port → PMD 1: encapsulation on PMD 1, decapsulation on
//!   PMD 0; the pods' traffic also goes through `ct(commit)`.
//! - Overlay with the uplink → PMD 1 and the pod port → PMD 0: the local
//!   stack still runs on PMD 0, so the VTEP's ARP, ping and the ARP
//!   replies resolving the tunnels' next hops reach it through PMD 1's
//!   relay (issue 16, point 6); no PMD drops a frame for the stack.
//!
//! Every namespace, veth, process and file is removed on drop. DPDK file
//! prefixes: `slm-svc`, `slm-a`, `slm-b`, `slm-a1`, `slm-b1`.

mod common;

use std::time::Instant;

use common::*;

/// Held by each test for its whole run: three daemons with two busy PMDs
/// each on a 2-core machine would slow every one of them down, so the
/// tests of this file take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts sluiced in `node` with `--cores CORES` (the config's `cores`
/// names one PMD core; the command line gives two, which may include the
/// main core) and checks that its ready event names two PMD cores.
fn start_two_pmds(node: &Netns, config: &str, cores: &str) -> Sluiced {
    let (d, ready) = Sluiced::start_in_with(node, config, &["--cores", cores]);
    let pmds = ready["pmd_cores"].as_array().map_or(0, |a| a.len());
    assert_eq!(pmds, 2, "two PMD cores in the ready event: {ready}");
    d
}

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two CPUs for the PMDs (the last two this process may use), or `None`
/// with the skip recorded.
fn two_cores(test: &str) -> Option<String> {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = s
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("0")
        .trim()
        .to_string();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    if cpus.len() < 2 {
        report_skip(&format!(
            "SKIP {test}: two PMD threads need two usable CPUs (have {list})"
        ));
        return None;
    }
    let n = cpus.len();
    Some(format!("{},{}", cpus[n - 2], cpus[n - 1]))
}

/// The devargs of port `n` on interface `iface`: one rx queue (incoming
/// frames only) and two tx queues, one per PMD. (A `net_af_packet` port
/// with two tx queues has two rx sockets the kernel spreads frames over by
/// hash: its queues would land on both PMDs at random.)
fn pcap_port(n: usize, iface: &str) -> String {
    format!("net_pcap{n},rx_iface_in={iface},tx_iface={iface},tx_iface={iface},phy_mac=1")
}

fn ctl(prefix: &str, args: &[&str]) -> String {
    let (ok, out, err) = sluicectl(prefix, args);
    assert!(ok, "sluicectl {args:?} failed: {out}{err}");
    out
}

/// The text blocks of a per-PMD listing (`pmd-rxq-show`, `pmd-stats-show`),
/// in PMD order.
fn pmd_blocks(text: &str) -> Vec<String> {
    text.split("pmd thread index ")
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// The number after `label` in `block`.
fn number_after(block: &str, label: &str) -> u64 {
    block
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no '{label}' in {block}"))
}

/// Asserts PMD `i` polls exactly the ports `names` (one queue each).
fn assert_rxqs(prefix: &str, want: &[&[&str]]) {
    let text = ctl(prefix, &["pmd-rxq-show"]);
    let blocks = pmd_blocks(&text);
    assert_eq!(blocks.len(), want.len(), "{text}");
    for (b, names) in blocks.iter().zip(want) {
        let mut ports: Vec<&str> = b
            .lines()
            .filter_map(|l| l.trim().strip_prefix("port: "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        ports.sort_unstable();
        let mut names = names.to_vec();
        names.sort_unstable();
        assert_eq!(ports, names, "{text}");
    }
}

/// Asserts every PMD received packets.
fn assert_both_pmds_busy(prefix: &str) -> String {
    let text = ctl(prefix, &["pmd-stats-show"]);
    let blocks = pmd_blocks(&text);
    assert_eq!(blocks.len(), 2, "{text}");
    for b in &blocks {
        assert!(number_after(b, "packets received: ") > 0, "{text}");
    }
    text
}

#[test]
fn service_dnat_with_the_two_directions_on_two_pmds() {
    let test = "service_dnat_with_the_two_directions_on_two_pmds";
    let _turn = one_at_a_time();
    if !can_use_netns(test) {
        return;
    }
    let Some(cores) = two_cores(test) else {
        return;
    };
    let prefix = "slm-svc";
    let net = ServiceNet::new("slm-svc", "10.203.0", "02:00:00:03:03");
    let (node, c, a, b) = (&net.node, &net.c, &net.a, &net.b);
    let d = start_two_pmds(
        node,
        &config(
            prefix,
            &[
                ("c", "slm-svc-co", 1),
                ("a", "slm-svc-ao", 2),
                ("b", "slm-svc-bo", 3),
            ]
            .iter()
            .enumerate()
            .map(|(i, (name, iface, ofport))| {
                format!(
                    "[port:{name}]\ndevargs = {}\nofport = {ofport}\n",
                    pcap_port(i, iface)
                )
            })
            .collect::<String>(),
        ),
        &cores,
    );
    assert_rxqs(prefix, &[&["b", "c"], &["a"]]);
    for f in [
        "table=0,priority=100,arp actions=normal",
        "table=0,priority=10,ip actions=ct(commit,zone=1,nat,table=1)",
        "table=1,priority=20,ct_state=+trk+inv actions=drop",
        "table=1,priority=10,ip,nw_dst=10.203.0.1 actions=mod_dl_dst:02:00:00:03:03:01,output:1",
        "table=1,priority=10,ip,nw_dst=10.203.0.5 actions=mod_dl_dst:02:00:00:03:03:05,output:2",
        "table=1,priority=10,ip,nw_dst=10.203.0.6 actions=mod_dl_dst:02:00:00:03:03:06,output:3",
    ] {
        ctl(prefix, &["add-flow", f]);
    }
    let update = r#"{"upsert": [{"name": "default/web:http", "protocol": "tcp", "port": 80,
        "cluster_ips": ["10.96.0.10"],
        "endpoints": [{"ip": "10.203.0.5", "port": 8080}, {"ip": "10.203.0.6", "port": 8080}]}]}"#;
    let out = ctl(prefix, &["call", "service-update", update]);
    assert!(out.contains("\"services\":1"), "{out}");

    let _sa = Server::start(a, "a");
    let _sb = Server::start(b, "b");
    const CONNS: u64 = 24;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..CONNS {
        let out = c.exec(&[
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
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (addr, server) = answer
            .split_once(' ')
            .unwrap_or_else(|| panic!("unexpected answer {answer:?}"));
        assert_eq!(addr, "10.203.0.1", "the server sees the client's address");
        *seen.entry(server.to_string()).or_insert(0u64) += 1;
    }
    // Endpoint `a` answers on PMD 1, `b` on PMD 0: both served.
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["a", "b"],
        "both endpoints serve: {seen:?}"
    );
    let svc = ctl(prefix, &["call", "dump-services"]);
    let conns: u64 = svc
        .lines()
        .filter_map(|l| l.split("connections=").nth(1))
        .filter_map(|v| v.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        conns, CONNS,
        "one Service connection per client connection: {svc}"
    );
    let stats = ctl(prefix, &["call", "conntrack-stats"]);
    let created: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("created: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no created counter in {stats}"));
    assert_eq!(
        created, CONNS,
        "each connection created once, its replies found on the other PMD: {stats}"
    );
    let pmds = assert_both_pmds_busy(prefix);
    // PMD 1 only receives endpoint `a`'s replies: every one found its
    // connection (created on PMD 0) in the shared table.
    let blocks = pmd_blocks(&pmds);
    let p1 = &blocks[1];
    let ct1 =
        number_after(p1, "conntrack cache hits: ") + number_after(p1, "conntrack cache misses: ");
    assert!(ct1 > 0, "PMD 1 tracked the replies: {pmds}");
    assert!(
        !p1.contains("ct_limit") && !p1.contains("ct_inv"),
        "no reply dropped on PMD 1: {pmds}"
    );
    let ev = d.stop();
    assert_eq!(sum_pmds(&ev, "rx_packets"), sum_ports(&ev, "rx_packets"));
}

/// Two sluiced "nodes" with two PMDs each, joined by an underlay bridge;
/// one pod per node. `uplink_first`: the uplink is the first port (PMD 0,
/// which runs the local stack), else the pod port is.
fn overlay_on_two_pmds(tag: &str, uplink_first: bool) {
    let test = format!("overlay_on_two_pmds({tag})");
    let _turn = one_at_a_time();
    if !can_use_netns(&test) {
        return;
    }
    let Some(cores) = two_cores(&test) else {
        return;
    };
    let ns = |s: &str| Netns::new(&format!("{tag}-{s}"));
    let (node_a, node_b, pod_a, pod_b, ul) = (ns("na"), ns("nb"), ns("pa"), ns("pb"), ns("ul"));
    // A hub, not a learning bridge: DPDK's pcap ports have the same
    // default MAC in every process, so the two uplinks share one address
    // and a learning bridge would send each node's frames to the other.
    ul.ip(&["link", "add", "br0", "type", "bridge", "ageing_time", "0"]);
    ul.ip(&["addr", "add", "192.168.79.254/24", "dev", "br0"]);
    ul.ip(&["link", "set", "br0", "up"]);
    for (node, side) in [(&node_a, "a"), (&node_b, "b")] {
        // Removed with the namespaces.
        let n = format!("{tag}-u{side}");
        let p = format!("{tag}-u{side}p");
        sh(&["ip", "link", "add", &n, "type", "veth", "peer", "name", &p]);
        sh(&["ip", "link", "set", &n, "netns", &node.0]);
        sh(&["ip", "link", "set", &p, "netns", &ul.0]);
        ul.ip(&["link", "set", &p, "master", "br0", "up"]);
        node.ip(&["link", "set", &n, "up"]);
    }
    let _pa = Veth::new_in(
        &node_a,
        &format!("{tag}-pa"),
        &format!("{tag}-pai"),
        &pod_a,
        "10.246.1.5/16",
    );
    let _pb = Veth::new_in(
        &node_b,
        &format!("{tag}-pb"),
        &format!("{tag}-pbi"),
        &pod_b,
        "10.246.2.7/16",
    );
    pod_a.ip(&["link", "set", &format!("{tag}-pai"), "mtu", "1400"]);
    pod_b.ip(&["link", "set", &format!("{tag}-pbi"), "mtu", "1400"]);
    let mac_a = pod_a.mac_of(&format!("{tag}-pai"));
    let mac_b = pod_b.mac_of(&format!("{tag}-pbi"));
    let conf = |prefix: &str, vtep: &str, pod_if: &str, uplink_if: &str| {
        let pod = format!(
            "[port:pod]\ndevargs = {}\nofport = 1\n",
            pcap_port(0, pod_if)
        );
        let uplink = format!(
            "[port:uplink]\ndevargs = {}\nofport = 2\n",
            pcap_port(1, uplink_if)
        );
        let ports = if uplink_first {
            uplink + &pod
        } else {
            pod + &uplink
        };
        format!(
            "[coe]\nnode_type = 'BAREMETAL'\n[nsx_node_agent]\novs_bridge = br-int\novs_uplink_port = uplink\n[datapath]\ncores = {}\nmain_core = 0\nfile_prefix = {prefix}\nhugepages = auto\nmbufs = 8192\nctl_socket = {}\nvtep_ip = {vtep}/24\nproxy_arp = 10.246.0.0/16\n{ports}",
            pmd_core(),
            ctl_path(prefix).display()
        )
    };
    let (pa_name, pb_name) = (
        if uplink_first { "slm-a" } else { "slm-a1" },
        if uplink_first { "slm-b" } else { "slm-b1" },
    );
    let da = start_two_pmds(
        &node_a,
        &conf(
            pa_name,
            "192.168.79.1",
            &format!("{tag}-pa"),
            &format!("{tag}-ua"),
        ),
        &cores,
    );
    let db = start_two_pmds(
        &node_b,
        &conf(
            pb_name,
            "192.168.79.2",
            &format!("{tag}-pb"),
            &format!("{tag}-ub"),
        ),
        &cores,
    );
    let want: &[&[&str]] = if uplink_first {
        &[&["uplink"], &["pod"]]
    } else {
        &[&["pod"], &["uplink"]]
    };
    for (prefix, remote_vtep, remote_node, remote_net, local_pod, pod_mac) in [
        (
            pa_name,
            "192.168.79.2",
            "node-b",
            "10.246.2.0/24",
            "10.246.1.5",
            &mac_a,
        ),
        (
            pb_name,
            "192.168.79.1",
            "node-a",
            "10.246.1.0/24",
            "10.246.2.7",
            &mac_b,
        ),
    ] {
        assert_rxqs(prefix, want);
        appctl(prefix, &["add-vtep", remote_node, remote_vtep]);
        for f in [
            // Pod traffic is tracked (committed) on the pod's PMD before
            // encapsulation, and after decapsulation on the uplink's.
            "table=0,priority=100,in_port=1,ip actions=ct(commit,zone=2,table=1)".to_string(),
            format!("table=1,priority=100,in_port=1,ip,nw_dst={remote_net} actions=set_field:0x64->tun_id,set_field:{remote_vtep}->tun_dst,tnl_push,output:2"),
            "table=0,priority=100,in_port=2,udp,tp_dst=6081 actions=tnl_pop".to_string(),
            format!("table=0,priority=90,tun_id=0x64,ip,nw_dst={local_pod} actions=ct(commit,zone=2,table=2)"),
            "table=2,priority=100,ct_state=+trk+inv actions=drop".to_string(),
            format!("table=2,priority=90,ip actions=set_field:{pod_mac}->dl_dst,output:1"),
            "table=0,priority=1 actions=drop".to_string(),
        ] {
            appctl(prefix, &["add-flow", &f]);
        }
    }
    // The VTEPs answer ping from the underlay (their local stacks).
    for (prefix, vtep) in [(pa_name, "192.168.79.1"), (pb_name, "192.168.79.2")] {
        let ok = ul
            .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", vtep])
            .status
            .success();
        assert!(
            ok,
            "VTEP {vtep} does not answer ping with the uplink on PMD {}\n{}",
            if uplink_first { 0 } else { 1 },
            appctl(prefix, &["pmd-stats-show"])
        );
    }
    // Pods reach each other over Geneve both ways, ICMP and TCP.
    for (from, to) in [(&pod_a, "10.246.2.7"), (&pod_b, "10.246.1.5")] {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = from.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", to]);
            if String::from_utf8_lossy(&out.stdout).contains("3 received") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ping {to} from {} never got 3/3 within {WAIT:?}\n{}\n{}\n{}\n{}",
                from.0,
                appctl(pa_name, &["pmd-stats-show"]),
                appctl(pa_name, &["dump-neighbours"]),
                appctl(pb_name, &["pmd-stats-show"]),
                appctl(pb_name, &["dump-neighbours"]),
            );
        }
    }
    let srv = Server::start(&pod_b, "pod-b");
    let out = pod_a.exec(&[
        "python3",
        "-c",
        "import socket\n\
         s=socket.create_connection(('10.246.2.7',8080),timeout=20)\n\
         print(s.makefile().readline().strip())",
    ]);
    drop(srv);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10.246.1.5 pod-b",
        "TCP over the overlay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for prefix in [pa_name, pb_name] {
        let pmds = assert_both_pmds_busy(prefix);
        assert!(
            !pmds.contains("local_no_stack") && !pmds.contains("local_inbox_full"),
            "{prefix}: a frame for the local stack was dropped: {pmds}"
        );
        // Each node tracked the pods' connections in zone 2: the ICMP
        // echo and the TCP connection at least, found from both PMDs.
        let ct = ctl(prefix, &["call", "dump-conntrack", "zone=2"]);
        assert!(
            ct.lines()
                .any(|l| l.starts_with("tcp,") && l.contains("10.246.1.5")),
            "{prefix}: {ct}"
        );
        assert!(ct.lines().any(|l| l.starts_with("icmp,")), "{prefix}: {ct}");
    }
    let (ea, eb) = (da.stop(), db.stop());
    for ev in [ea, eb] {
        assert_eq!(sum_pmds(&ev, "rx_packets"), sum_ports(&ev, "rx_packets"));
    }
}

#[test]
fn overlay_with_the_uplink_and_the_pod_on_two_pmds() {
    overlay_on_two_pmds("slm", true);
}

/// Issue 16, point 6: the local stack runs on PMD 0 while PMD 1 polls the
/// uplink; the VTEP answers ARP and ping and resolves the tunnels' next
/// hops through PMD 1's relay.
#[test]
fn overlay_with_the_uplink_on_pmd_1() {
    overlay_on_two_pmds("slm1", false);
}
