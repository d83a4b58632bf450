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

/// A child process killed (and reaped) when the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    ul.ip(&["link", "add", "br0", "type", "bridge"]);
    ul.ip(&["addr", "add", "192.168.77.254/24", "dev", "br0"]);
    ul.ip(&["link", "set", "br0", "up"]);
    for (node, side) in [(&node_a, "a"), (&node_b, "b")] {
        let n = format!("slo-ul{side}");
        let p = format!("slo-ul{side}-p");
        sh(&["ip", "link", "add", &n, "type", "veth", "peer", "name", &p]);
        sh(&["ip", "link", "set", &n, "netns", &node.0]);
        sh(&["ip", "link", "set", &p, "netns", &ul.0]);
        ul.ip(&["link", "set", &p, "master", "br0", "up"]);
        node.ip(&["link", "set", &n, "up"]);
    }
    // Pods: their MTU leaves room for the Geneve overhead.
    let _va = Veth::new_in(&node_a, "slo-pa", "slo-pa-i", &pod_a, "10.244.1.5/16");
    let _vb = Veth::new_in(&node_b, "slo-pb", "slo-pb-i", &pod_b, "10.244.2.7/16");
    for (p, i) in [(&pod_a, "slo-pa-i"), (&pod_b, "slo-pb-i")] {
        p.ip(&["link", "set", i, "mtu", "1400"]);
    }
    let mac_a = pod_a.mac_of("slo-pa-i");
    let mac_b = pod_b.mac_of("slo-pb-i");

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
    let dirs: std::collections::BTreeSet<&str> =
        decoded.iter().filter_map(|l| l.split(';').nth(4)).collect();
    assert_eq!(dirs.len(), 2, "both directions captured: {decoded:?}");
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

    // MTU: with the pod MTU raised to 1500, a DF packet too big for the
    // tunnel gets ICMP fragmentation-needed with the tunnel's inner MTU
    // (1500 - 50 - 8 bytes of option = 1442) from the VTEP address.
    pod_a.ip(&["link", "set", "slo-pa-i", "mtu", "1500"]);
    let out = pod_a.exec(&[
        "ping",
        "-M",
        "do",
        "-s",
        "1460",
        "-c",
        "1",
        "-W",
        "2",
        "10.244.2.7",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("Frag needed") && text.contains("mtu = 1442"),
        "no ICMP fragmentation-needed for a too-big DF packet:\n{text}"
    );
    pod_a.ip(&["link", "set", "slo-pa-i", "mtu", "1400"]);

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
    pod_a.ip(&["addr", "add", "10.244.1.99/16", "dev", "slo-pa-i"]);
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

    // Moving node B's VTEP at run time: the stack serves the new address.
    appctl(PREFIX_B, &["set-vtep", "192.168.77.3/24"]);
    let deadline = Instant::now() + WAIT;
    while !ping_ok(&ul, "192.168.77.3", 1) {
        assert!(Instant::now() < deadline, "moved VTEP never answered ping");
    }

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

/// A child process killed (and reaped) on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Open vSwitch's userspace (DPDK) datapath as an independent Geneve peer:
/// a private ovsdb-server and ovs-vswitchd running in namespace `ns`,
/// with their run/db directory in a temp dir. Killed on drop (vswitchd
/// first).
struct Ovs {
    vswitchd: Option<Child>,
    _ovsdb: Child,
    ns: String,
    dir: tempfile::TempDir,
}

impl Ovs {
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        for v in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(v, self.dir.path());
        }
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let mut c = self.cmd(program);
        if program == "ovs-vsctl" {
            c.arg(format!("--db=unix:{}/db.sock", self.dir.path().display()))
                .arg("--timeout=60");
        }
        if program == "ovs-appctl" {
            c.arg("-t").arg(self.dir.path().join("ovs-vswitchd.ctl"));
        }
        let out = c.args(args).output().expect(program);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}\nvswitchd log tail:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("ovs-vswitchd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn start(ns: &Netns) -> Ovs {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        sh(&[
            "ovsdb-tool",
            "create",
            &d.join("conf.db").display().to_string(),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ]);
        let sock = d.join("db.sock");
        let ovsdb = Child(
            Command::new("ip")
                .args(["netns", "exec", &ns.0, "ovsdb-server"])
                .arg(d.join("conf.db"))
                .arg(format!("--remote=punix:{}", sock.display()))
                .arg(format!(
                    "--unixctl={}",
                    d.join("ovsdb-server.ctl").display()
                ))
                .arg(format!(
                    "--log-file={}",
                    d.join("ovsdb-server.log").display()
                ))
                .args(["--no-chdir", "-vconsole:off"])
                .env("OVS_RUNDIR", d)
                .env("OVS_DBDIR", d)
                .env("OVS_LOGDIR", d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ovsdb-server"),
        );
        let deadline = Instant::now() + WAIT;
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "ovsdb-server did not create {sock:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut ovs = Ovs {
            vswitchd: None,
            _ovsdb: ovsdb,
            ns: ns.0.clone(),
            dir,
        };
        ovs.run(
            "ovs-vsctl",
            &[
                "--no-wait",
                "--",
                "init",
                "--",
                "set",
                "Open_vSwitch",
                ".",
                "other_config:dpdk-init=true",
                "other_config:dpdk-socket-mem=256",
                "other_config:dpdk-socket-limit=256",
                &format!("other_config:dpdk-lcore-mask={:#x}", 1u64),
                &format!("other_config:pmd-cpu-mask={:#x}", 1u64 << pmd_core()),
                "other_config:dpdk-extra=--no-pci",
            ],
        );
        let d = ovs.dir.path();
        let child = ovs
            .cmd("/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk")
            .arg(format!("unix:{}", d.join("db.sock").display()))
            .arg(format!(
                "--unixctl={}",
                d.join("ovs-vswitchd.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                d.join("ovs-vswitchd.log").display()
            ))
            .args(["--no-chdir", "-vconsole:off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovs-vswitchd-dpdk");
        ovs.vswitchd = Some(Child(child));
        ovs
    }

    /// Waits (bounded) until `ovs-ofctl show BRIDGE` lists `port`.
    fn wait_port(&mut self, bridge: &str, port: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(c) = self.vswitchd.as_mut() {
                if let Ok(Some(st)) = c.0.try_wait() {
                    panic!("ovs-vswitchd exited ({st}):\n{}", self.log_tail());
                }
            }
            let out = self
                .cmd("ovs-ofctl")
                .args(["show", bridge])
                .output()
                .expect("ovs-ofctl");
            if String::from_utf8_lossy(&out.stdout).contains(&format!("({port})")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "OVS port {port} on {bridge} not up within {WAIT:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        // vswitchd before its database.
        self.vswitchd.take();
    }
}

/// Whether this kernel can create Geneve devices (it usually cannot here).
fn kernel_geneve_skip_reason() -> Option<String> {
    let ns = Netns::new("slx-gnvprobe");
    let out = ns.exec(&[
        "ip",
        "link",
        "add",
        "gnv0",
        "type",
        "geneve",
        "id",
        "1",
        "remote",
        "192.0.2.1",
    ]);
    if out.status.success() {
        None
    } else {
        Some(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
fn interop_with_open_vswitch_userspace_geneve() {
    if !can_use_netns("interop_with_open_vswitch_userspace_geneve") {
        return;
    }
    match kernel_geneve_skip_reason() {
        Some(why) => report_skip(&format!(
            "SKIP kernel Geneve peer: this kernel cannot create Geneve devices ({why}); OVS userspace is the peer"
        )),
        None => report_skip(
            "NOTE kernel Geneve is available, but only the OVS userspace peer is exercised by this test",
        ),
    }
    let prefix = "slx-s";
    let node_s = Netns::new("slx-node-s");
    let node_o = Netns::new("slx-node-o");
    let pod_s = Netns::new("slx-pod-s");
    let pod_o = Netns::new("slx-pod-o");
    // Underlay: a bridge in its own namespace with a veth to each node
    // (captured on a bridge port: DPDK af_packet sends bypass the qdisc, so
    // a node's own interface never shows its outgoing frames).
    let ul = Netns::new("slx-ul");
    ul.ip(&["link", "add", "br0", "type", "bridge"]);
    ul.ip(&["link", "set", "br0", "up"]);
    for (node, n) in [(&node_s, "slx-uls"), (&node_o, "slx-ulo")] {
        let p = format!("{n}-p");
        sh(&["ip", "link", "add", n, "type", "veth", "peer", "name", &p]);
        sh(&["ip", "link", "set", n, "netns", &node.0]);
        sh(&["ip", "link", "set", &p, "netns", &ul.0]);
        ul.ip(&["link", "set", &p, "master", "br0", "up"]);
        node.ip(&["link", "set", n, "up"]);
    }
    let _vs = Veth::new_in(&node_s, "slx-ps", "slx-ps-i", &pod_s, "10.245.1.5/16");
    let _vo = Veth::new_in(&node_o, "slx-po", "slx-po-i", &pod_o, "10.245.2.7/16");
    pod_s.ip(&["link", "set", "slx-ps-i", "mtu", "1400"]);
    pod_o.ip(&["link", "set", "slx-po-i", "mtu", "1400"]);
    let mac_s = pod_s.mac_of("slx-ps-i");
    let mac_o = pod_o.mac_of("slx-po-i");
    let uplink_mac = node_s.mac_of("slx-uls");
    // The OVS pod reaches the Sluice pod through a fixed gateway MAC.
    pod_o.ip(&[
        "neigh",
        "add",
        "10.245.1.5",
        "lladdr",
        "0a:58:00:00:00:01",
        "dev",
        "slx-po-i",
    ]);

    // Sluice node.
    let cfg = format!(
        "[coe]\nnode_type = 'BAREMETAL'\n[nsx_node_agent]\novs_bridge = br-int\novs_uplink_port = uplink\n[datapath]\ncores = {}\nmain_core = 0\nfile_prefix = {prefix}\nhugepages = auto\nmbufs = 8192\nctl_socket = {}\nvtep_ip = 192.168.78.1/24\nproxy_arp = 10.245.0.0/16\n[port:pod]\ndevargs = net_af_packet0,iface=slx-ps\nofport = 1\n[port:uplink]\ndevargs = net_af_packet1,iface=slx-uls\nofport = 2\n",
        pmd_core(),
        ctl_path(prefix).display()
    );
    let (sluiced, _) = Sluiced::start_in(&node_s, &cfg);
    program(
        prefix,
        "192.168.78.2",
        "ovs-node",
        "10.245.2.0/24",
        "10.245.1.5",
        &mac_s,
    );

    // OVS node: br-int (pod + Geneve port), br-phy (underlay, VTEP address
    // on its internal port).
    let mut ovs = Ovs::start(&node_o);
    ovs.run(
        "ovs-vsctl",
        &[
            "--",
            "add-br",
            "br-phy",
            "--",
            "set",
            "bridge",
            "br-phy",
            "datapath_type=netdev",
            "--",
            "add-port",
            "br-phy",
            "ul",
            "--",
            "set",
            "Interface",
            "ul",
            "type=dpdk",
            "options:dpdk-devargs=net_af_packet1,iface=slx-ulo",
            "--",
            "add-br",
            "br-int",
            "--",
            "set",
            "bridge",
            "br-int",
            "datapath_type=netdev",
            "--",
            "add-port",
            "br-int",
            "pod",
            "--",
            "set",
            "Interface",
            "pod",
            "type=dpdk",
            "options:dpdk-devargs=net_af_packet0,iface=slx-po",
            "ofport_request=1",
            "--",
            "add-port",
            "br-int",
            "gnv",
            "--",
            "set",
            "Interface",
            "gnv",
            "type=geneve",
            "options:remote_ip=192.168.78.1",
            "options:key=100",
            "ofport_request=2",
        ],
    );
    ovs.wait_port("br-phy", "ul");
    ovs.wait_port("br-int", "pod");
    ovs.wait_port("br-int", "gnv");
    node_o.ip(&["addr", "add", "192.168.78.2/24", "dev", "br-phy"]);
    node_o.ip(&["link", "set", "br-phy", "up"]);
    ovs.run(
        "ovs-appctl",
        &["tnl/neigh/set", "br-phy", "192.168.78.1", &uplink_mac],
    );
    ovs.run(
        "ovs-ofctl",
        &[
            "add-tlv-map",
            "br-int",
            "{class=0x102,type=0x1,len=4}->tun_metadata0",
        ],
    );
    ovs.run("ovs-ofctl", &["del-flows", "br-int"]);
    for f in [
        "table=0,priority=100,in_port=1,ip actions=set_field:0xabcd->tun_metadata0,output:2".to_string(),
        format!("table=0,priority=100,in_port=2,tun_metadata0=0xabcd,ip actions=mod_dl_dst:{mac_o},output:1"),
    ] {
        ovs.run("ovs-ofctl", &["add-flow", "br-int", &f]);
    }

    // Both directions: ping, then TCP.
    ping_until_stable(&pod_s, "10.245.2.7");
    ping_until_stable(&pod_o, "10.245.1.5");
    tcp_round_trip(&pod_o, &pod_s, "10.245.2.7", 7101);
    tcp_round_trip(&pod_s, &pod_o, "10.245.1.5", 7102);

    // The underlay as tshark's Geneve dissector sees it: both directions
    // carry VNI 100 and the option OVS and Sluice agree on.
    let decoded = capture_geneve(&ul, "slx-uls-p", 4, || {
        ping_until_stable(&pod_s, "10.245.2.7")
    });
    assert_eq!(decoded.len(), 4, "{decoded:?}");
    let mut dirs = std::collections::BTreeSet::new();
    for l in &decoded {
        let f: Vec<&str> = l.split(';').collect();
        assert!(f[0] == "100" || f[0] == "0x000064", "VNI in {l}");
        assert!(f[1] == "0x0102" || f[1] == "258", "option class in {l}");
        assert!(
            f[3].replace(':', "").contains("0000abcd"),
            "option data in {l}"
        );
        dirs.insert(f[4].to_string());
    }
    assert_eq!(dirs.len(), 2, "both directions captured: {decoded:?}");

    let tunnels = appctl(prefix, &["dump-tunnels"]);
    assert!(
        tunnels.contains("remote ovs-node vtep 192.168.78.2"),
        "{tunnels}"
    );
    drop(ovs);
    let ev = sluiced.stop();
    let drops = &ev["pmds"][0]["drops"];
    for bad in [
        "geneve_malformed",
        "geneve_unknown_critical",
        "tunnel_unknown_vtep",
    ] {
        assert!(drops.get(bad).is_none(), "unexpected {bad}: {ev}");
    }
}

fn node_routes(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.exec(&["ip", "-4", "route"]).stdout).into_owned()
}

fn addrs_of(ns: &Netns, dev: &str) -> String {
    String::from_utf8_lossy(&ns.exec(&["ip", "-4", "addr", "show", "dev", dev]).stdout).into_owned()
}

/// The host exception path: at start the node's address and default route
/// move from the uplink to the TAP exception port (traffic then flows
/// kernel → TAP → sluiced → uplink), and at clean stop they move back.
#[test]
fn host_exception_path_moves_node_addresses_to_the_tap_and_back() {
    if !can_use_netns("host_exception_path_moves_node_addresses_to_the_tap_and_back") {
        return;
    }
    let prefix = "slh";
    let node = Netns::new("slh-node");
    let gw = Netns::new("slh-gw");
    let _v = Veth::new_in(&node, "slh-up", "slh-gw-i", &gw, "192.168.79.1/24");
    node.ip(&["addr", "add", "192.168.79.10/24", "dev", "slh-up"]);
    node.ip(&["route", "add", "default", "via", "192.168.79.1"]);
    assert!(ping_ok(&node, "192.168.79.1", 1), "baseline ping failed");

    // "API server" in the gateway namespace: a TCP echo server. The node
    // opens a connection before sluiced takes the uplink, and must still
    // use it afterwards (the kernel retransmits across the move).
    let work = tempfile::tempdir().expect("tempdir");
    let go = work.path().join("go");
    let server = std::process::Command::new("ip")
        .args(["netns", "exec", &gw.0, "python3", "-c"])
        .arg(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('192.168.79.1',6443))\ns.listen(1)\nc,_=s.accept()\n\
             while True:\n  d=c.recv(64)\n  if not d: break\n  c.sendall(d)\n",
        )
        .spawn()
        .expect("python3 server");
    let _server = KillOnDrop(server);
    let client_script = format!(
        "import socket,time,os\n\
         for _ in range(3000):\n  \
           try:\n    c=socket.create_connection(('192.168.79.1',6443),timeout=2); break\n  \
           except OSError: time.sleep(0.01)\n\
         c.settimeout(60)\nc.sendall(b'before');print(c.recv(64).decode(),flush=True)\n\
         while not os.path.exists('{go}'): time.sleep(0.01)\n\
         c.sendall(b'after');print(c.recv(64).decode(),flush=True)\n",
        go = go.display()
    );
    let client = std::process::Command::new("ip")
        .args(["netns", "exec", &node.0, "python3", "-c", &client_script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 client");
    let mut client = KillOnDrop(client);
    let mut client_out = std::io::BufReader::new(client.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    use std::io::BufRead;
    client_out.read_line(&mut line).expect("client output");
    assert_eq!(
        line.trim(),
        "before",
        "TCP connection to the API server before the move"
    );
    // Measure the gap: the gateway pings the node every 10 ms across the move.
    let pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &gw.0,
            "ping",
            "-i",
            "0.01",
            "-W",
            "1",
            "192.168.79.10",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    let pinger = KillOnDrop(pinger);

    let cfg = format!(
        "[coe]\nnode_type = 'BAREMETAL'\n[nsx_node_agent]\novs_bridge = br-int\novs_uplink_port = uplink\n[datapath]\ncores = {}\nmain_core = 0\nfile_prefix = {prefix}\nhugepages = auto\nmbufs = 8192\nctl_socket = {}\nhost_port = host\n[port:uplink]\ndevargs = net_af_packet0,iface=slh-up\nofport = 1\n[port:host]\ndevargs = net_tap0,iface=slh-host\nofport = 2\n",
        pmd_core(),
        ctl_path(prefix).display()
    );
    let (d, _) = Sluiced::start_in(&node, &cfg);
    let on_tap = addrs_of(&node, "slh-host");
    assert!(
        on_tap.contains("192.168.79.10/24"),
        "address not on the TAP:\n{on_tap}"
    );
    assert!(
        !addrs_of(&node, "slh-up").contains("192.168.79.10"),
        "address still on the uplink"
    );
    let routes = node_routes(&node);
    assert!(
        routes.contains("default via 192.168.79.1 dev slh-host"),
        "default route not moved:\n{routes}"
    );
    assert_eq!(
        node.mac_of("slh-host"),
        node.mac_of("slh-up"),
        "the TAP takes the uplink's MAC"
    );
    // The node's traffic now crosses sluiced (learning switch: TAP ↔ uplink).
    ping_until_stable(&node, "192.168.79.1");
    ping_until_stable(&gw, "192.168.79.10");
    // The connection opened before the move still carries data.
    std::fs::write(&go, b"1").expect("signal client");
    line.clear();
    client_out.read_line(&mut line).expect("client output");
    assert_eq!(
        line.trim(),
        "after",
        "TCP connection to the API server after the move"
    );
    // Stop the pinger (SIGINT prints its summary) and report the gap.
    let mut pinger = pinger;
    sh(&["kill", "-INT", &pinger.0.id().to_string()]);
    let mut ptext = String::new();
    use std::io::Read;
    pinger
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut ptext)
        .expect("ping output");
    let summary = ptext
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("no ping summary")
        .to_string();
    println!("host path move, node IP pinged every 10 ms from the gateway: {summary}");

    let ev = d.stop();
    assert!(sum_pmds(&ev, "rx_packets") >= 6, "{ev}");
    assert!(
        addrs_of(&node, "slh-up").contains("192.168.79.10/24"),
        "address not restored on the uplink"
    );
    let routes = node_routes(&node);
    assert!(
        routes.contains("default via 192.168.79.1 dev slh-up"),
        "default route not restored:\n{routes}"
    );
    assert!(ping_ok(&node, "192.168.79.1", 1), "ping after stop failed");
}
