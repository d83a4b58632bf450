//! Shared helpers for sluiced's end-to-end tests: a `sluiced` child process
//! whose stdout events are read with bounded waits, its config and control
//! socket; network namespaces, veth pairs and skip recording come from
//! `sluice-testkit`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Generous bound for anything on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(90);

// Each test binary uses its own subset.
#[allow(unused_imports)]
pub use sluice_testkit::{sh, sh_quiet, Netns, TwoPods, Veth};

/// True when the tests can create namespaces (root). Records why not.
pub fn can_use_netns(test: &str) -> bool {
    let ok = sluice_testkit::is_root();
    if !ok {
        report_skip(&format!(
            "SKIP {test}: needs root to create network namespaces and DPDK ports"
        ));
    }
    ok
}

/// The two-pod topology of `test` ([`TwoPods::new`]), or `None` with the
/// skip recorded when the test cannot create namespaces.
pub fn two_pods(test: &str, tag: &str, veths: &str, net: &str) -> Option<TwoPods> {
    can_use_netns(test).then(|| TwoPods::new(tag, veths, net))
}

/// A ClusterIP topology: a node namespace (where sluiced runs), a client
/// `c` and two endpoints `a` and `b`, each joined to the node by a veth
/// pair `{tag}-Xo` (node) / `{tag}-Xi` (pod) with address `{net}.1`, `.5`
/// and `.6` (/24) and MAC `{mac}:01`, `:05` and `:06`. The client reaches
/// the Service network 10.96.0.0/16 on-link, through a fixed next-hop MAC
/// for 10.96.0.10 (`{mac}:99`; the flows rewrite it per endpoint).
/// Everything is removed on drop (veths first).
pub struct ServiceNet {
    _veths: [Veth; 3],
    /// The client.
    pub c: Netns,
    /// The first endpoint.
    pub a: Netns,
    /// The second endpoint.
    pub b: Netns,
    /// The node.
    pub node: Netns,
}

impl ServiceNet {
    /// Namespaces `{tag}-node`, `{tag}-c`, `{tag}-a` and `{tag}-b`.
    pub fn new(tag: &str, net: &str, mac: &str) -> ServiceNet {
        let node = Netns::new(&format!("{tag}-node"));
        let pods = ["c", "a", "b"].map(|p| Netns::new(&format!("{tag}-{p}")));
        let veths = [(0, "c", 1), (1, "a", 5), (2, "b", 6)].map(|(i, p, host)| {
            let (outer, inner) = (format!("{tag}-{p}o"), format!("{tag}-{p}i"));
            let pod = &pods[i];
            let v = Veth::new_in(&node, &outer, &inner, pod, &format!("{net}.{host}/24"));
            let mac = format!("{mac}:{host:02}");
            pod.ip(&["link", "set", "dev", &inner, "address", &mac]);
            v
        });
        let [c, a, b] = pods;
        let client_dev = format!("{tag}-ci");
        c.ip(&["route", "add", "10.96.0.0/16", "dev", &client_dev]);
        let next_hop = format!("{mac}:99");
        c.ip(&[
            "neigh",
            "replace",
            "10.96.0.10",
            "lladdr",
            &next_hop,
            "dev",
            &client_dev,
            "nud",
            "permanent",
        ]);
        ServiceNet {
            _veths: veths,
            c,
            a,
            b,
            node,
        }
    }
}

/// Prints a skip (or note) line and records it in `target/tmp/skips.txt`
/// ([`sluice_testkit::report_skip!`]).
pub fn report_skip(line: &str) {
    sluice_testkit::report_skip!("{line}");
}

/// Path of the sluiced binary under test.
pub fn sluiced_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluiced"))
}

/// A running sluiced child process, killed on drop.
pub struct Sluiced {
    child: Option<Child>,
    events: Receiver<String>,
    pub dir: tempfile::TempDir,
}

impl Sluiced {
    /// Starts sluiced with `config` (INI text) and waits for its "ready"
    /// event; panics with its stderr if it exits instead.
    pub fn start(config: &str) -> (Sluiced, serde_json::Value) {
        Self::spawn(None, config, &[])
    }

    /// Starts sluiced inside network namespace `node` (its ports see that
    /// namespace's interfaces).
    pub fn start_in(node: &Netns, config: &str) -> (Sluiced, serde_json::Value) {
        Self::spawn(Some(node), config, &[])
    }

    /// As [`Sluiced::start_in`], with extra command-line arguments (e.g.
    /// `--cores 0,1`).
    pub fn start_in_with(
        node: &Netns,
        config: &str,
        args: &[&str],
    ) -> (Sluiced, serde_json::Value) {
        Self::spawn(Some(node), config, args)
    }

    fn spawn(node: Option<&Netns>, config: &str, args: &[&str]) -> (Sluiced, serde_json::Value) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("sluiced.ini");
        std::fs::write(&cfg, config).expect("write config");
        let mut cmd = match node {
            Some(n) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &n.0]).arg(sluiced_bin());
                c
            }
            None => Command::new(sluiced_bin()),
        };
        // stderr goes to a file, never a pipe: a pipe nobody reads fills
        // after 64 KiB of log lines and then blocks sluiced's threads.
        let stderr = std::fs::File::create(dir.path().join("sluiced.stderr")).expect("stderr file");
        let mut child = cmd
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn sluiced");
        let (tx, rx) = channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Sluiced {
            child: Some(child),
            events: rx,
            dir,
        };
        let ready = s.wait_event("ready");
        (s, ready)
    }

    fn stderr_text(&mut self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluiced.stderr")).unwrap_or_default()
    }

    /// Waits (bounded) for the next stdout event named `name`.
    pub fn wait_event(&mut self, name: &str) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["event"] == name {
                            return v;
                        }
                    }
                }
                Err(_) => {
                    let exited = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    let err = if exited.is_some() {
                        self.stderr_text()
                    } else {
                        String::new()
                    };
                    panic!("sluiced gave no '{name}' event within {WAIT:?} (exit: {exited:?}); stderr:\n{err}");
                }
            }
        }
    }

    /// Sends SIGTERM, waits (bounded) for the "stopped" event and a clean
    /// exit, and returns the event.
    pub fn stop(mut self) -> serde_json::Value {
        let pid = self.child.as_ref().expect("child").id();
        sh(&["kill", "-TERM", &pid.to_string()]);
        let ev = self.wait_event("stopped");
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                assert!(st.success(), "sluiced exited with {st} after SIGTERM");
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "sluiced did not exit after its stopped event"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sluiced {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sum of a per-port stat over the stopped event's ports.
pub fn sum_ports(ev: &serde_json::Value, key: &str) -> u64 {
    ev["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["stats"][key].as_u64().expect("stat"))
        .sum()
}

/// Stat `key` of port `name` in the stopped event.
pub fn port_stat(ev: &serde_json::Value, name: &str, key: &str) -> u64 {
    ev["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["stats"][key].as_u64())
        .unwrap_or_else(|| panic!("no {name}.{key} in {ev}"))
}

/// Sum of a per-PMD stat over the stopped event's PMDs.
pub fn sum_pmds(ev: &serde_json::Value, key: &str) -> u64 {
    ev["pmds"]
        .as_array()
        .expect("pmds")
        .iter()
        .map(|p| p[key].as_u64().expect("stat"))
        .sum()
}

/// A config with the given `[port:...]` sections appended.
pub fn config(prefix: &str, ports: &str) -> String {
    format!(
        "[coe]\nnode_type = 'BAREMETAL'\n[nsx_node_agent]\novs_bridge = br-int\n[datapath]\ncores = {}\nmain_core = 0\nfile_prefix = {prefix}\nhugepages = auto\nmbufs = 8192\nctl_socket = {}\n{ports}",
        pmd_core(),
        ctl_path(prefix).display()
    )
}

/// The control socket of the test daemon with DPDK prefix `prefix`.
pub fn ctl_path(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}.ctl"))
}

/// `ovs-appctl -t <sluiced ctl> ARGS`, asserting success.
pub fn appctl(prefix: &str, args: &[&str]) -> String {
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

/// Runs `sluicectl --socket <ctl> ARGS`; returns (success, stdout, stderr).
pub fn sluicectl(prefix: &str, args: &[&str]) -> (bool, String, String) {
    let bin = std::env::var("SLUICECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            // target/<profile>/deps/<test> -> target/<profile>/sluicectl
            let mut p = std::env::current_exe().expect("current exe");
            p.pop();
            if p.ends_with("deps") {
                p.pop();
            }
            p.join("sluicectl")
        });
    let out = Command::new(&bin)
        .arg("--socket")
        .arg(ctl_path(prefix))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (build it: cargo build -p sluice-control)",
                bin.display()
            )
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The PMD core for tests: the last CPU we may use.
pub fn pmd_core() -> usize {
    core_affinity_last()
}

fn core_affinity_last() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = s
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("0")
        .trim()
        .to_string();
    list.split(',')
        .filter_map(|p| p.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

/// A pcap file (microsecond, Ethernet) of `frames`.
pub fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) {
    let mut f = std::fs::File::create(path).expect("create pcap");
    let mut h = Vec::new();
    h.extend(0xa1b2_c3d4u32.to_le_bytes());
    h.extend(2u16.to_le_bytes());
    h.extend(4u16.to_le_bytes());
    h.extend([0u8; 8]);
    h.extend(65535u32.to_le_bytes());
    h.extend(1u32.to_le_bytes());
    for (i, fr) in frames.iter().enumerate() {
        h.extend(0u32.to_le_bytes());
        h.extend((i as u32).to_le_bytes());
        h.extend((fr.len() as u32).to_le_bytes());
        h.extend((fr.len() as u32).to_le_bytes());
        h.extend(fr);
    }
    std::io::Write::write_all(&mut f, &h).expect("write pcap");
}

/// The Internet checksum of `data`.
pub fn csum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + `l4` (a TCP or UDP header and payload; its checksum
/// field is filled in), checksums valid.
pub fn ipv4_frame(
    dmac: [u8; 6],
    smac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = dmac.to_vec();
    f.extend(smac);
    f.extend([0x08, 0x00]);
    let len = 20 + l4.len() as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&len.to_be_bytes());
    ip.extend(src);
    ip.extend(dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend(ip);
    let mut l4 = l4.to_vec();
    let mut pseudo = Vec::new();
    pseudo.extend(src);
    pseudo.extend(dst);
    pseudo.extend([0, proto]);
    pseudo.extend((l4.len() as u16).to_be_bytes());
    pseudo.extend(&l4);
    let c = csum(&pseudo);
    let at = if proto == 6 { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f.extend(l4);
    f
}

/// A TCP server (python3) on port 8080 in a namespace that answers each
/// connection with "<peer address> <name>" and closes it; killed on drop.
pub struct Server(Child);

impl Server {
    /// Starts the server and waits (bounded) until it listens.
    pub fn start(ns: &Netns, name: &str) -> Server {
        let script = format!(
            "import socket,sys\n\
             s=socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',8080))\n\
             s.listen(64)\n\
             print('listening',flush=True)\n\
             while True:\n\
             \x20   c,a=s.accept()\n\
             \x20   c.sendall(('%s {name}\\n' % a[0]).encode())\n\
             \x20   c.close()\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0, "python3", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3 server (python3 is needed for this test)");
        let stdout = child.stdout.take().expect("server stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let server = Server(child);
        let line = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!("server in {} did not start listening within {WAIT:?}", ns.0)
        });
        assert_eq!(
            line.trim(),
            "listening",
            "server in {} failed to start",
            ns.0
        );
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
