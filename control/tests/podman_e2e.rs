//! The whole pod attach path with a real runtime: podman (CNI backend,
//! runc, a local busybox image) → `sluice-cni` → nestdb-server →
//! `sluice-agent` → `sluiced` (DPDK, the flow pipeline, an af_packet
//! uplink on a veth the test owns, a TAP host port, each pod's veth host end opened as an af_packet
//! port by `node-commit`).
//!
//! Two containers on the Sluice network ping each other and open a TCP
//! connection through sluiced; a Service ClusterIP written into nestdb
//! lands on one of them from a third container; `podman rm` removes the
//! port from sluiced and the row from nestdb. Here the real agent sets
//! `up`: ADD returns only once sluiced forwards for the pod.
//!
//! Needs root, podman/runc/busybox-static, host-local, and the binaries
//! `nestdb-server`, `sluiced` and `sluice-agent` built beside this test
//! (`cargo build -p nestdb -p sluice-datapath -p sluice-control`);
//! otherwise the skip is recorded.

mod cni_harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use cni_harness::podman::Podman;
use cni_harness::*;
use nestdb_client::node::{
    Endpoint, Protocol, Service, ServicePort, ServiceType, SessionAffinity, TrafficPolicy, DB,
};
use nestdb_client::{Datum, TableRow, Transaction};
use sluice_api::node::{NodeProgram, NodeStatus, QueryNodeProgram, QueryNodeStatus};
use sluice_api::Empty;

const PREFIX: &str = "slt-cni-e2e";
const VIP: &str = "10.96.0.50";
/// The uplink: one end of a veth pair the test owns, without addresses
/// (sluiced's host path finds nothing to move off it).
const UPLINK: &str = "slce-up";

/// The uplink veth pair, deleted on drop.
struct UplinkVeth;

impl UplinkVeth {
    fn new() -> UplinkVeth {
        let _ = Command::new("ip")
            .args(["link", "del", UPLINK])
            .stderr(Stdio::null())
            .status();
        let st = Command::new("ip")
            .args([
                "link", "add", UPLINK, "type", "veth", "peer", "name", "slce-upp",
            ])
            .status()
            .unwrap();
        assert!(st.success(), "create the uplink veth");
        for dev in [UPLINK, "slce-upp"] {
            let st = Command::new("ip")
                .args(["link", "set", dev, "up"])
                .status()
                .unwrap();
            assert!(st.success());
        }
        UplinkVeth
    }
}

impl Drop for UplinkVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", UPLINK])
            .stderr(Stdio::null())
            .status();
    }
}

/// A binary cargo built beside this test.
fn built(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.parent()?.join(name);
    p.is_file().then_some(p)
}

/// The last CPU this process may use (the PMD core).
fn pmd_core() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("0")
        .trim()
        .split(',')
        .filter_map(|p| p.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

/// A daemon child process: SIGTERM, then SIGKILL, on drop.
struct Daemon {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    fn alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited with {st}:\n{}", self.what, self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; a stale pid is harmless
        // because the child is not reaped until wait below.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts sluiced and waits for its `ready` event.
fn start_sluiced(dir: &Path, ctl: &Path) -> Daemon {
    let ini = dir.join("sluiced.ini");
    std::fs::write(
        &ini,
        format!(
            "[coe]\nnode_type = 'BAREMETAL'\n[nsx_node_agent]\novs_bridge = br-int\novs_uplink_port = uplink\n\
             [datapath]\ncores = {}\nmain_core = 0\nfile_prefix = {PREFIX}\nhugepages = auto\nmbufs = 8192\n\
             ctl_socket = {}\nhost_port = host\n\
             [port:uplink]\ndevargs = net_af_packet0,iface={UPLINK}\nofport = 1\n\
             [port:host]\ndevargs = net_tap0,iface=slce-host\nofport = 2\n",
            pmd_core(),
            ctl.display()
        ),
    )
    .unwrap();
    let log = dir.join("sluiced.log");
    let mut child = Command::new(built("sluiced").unwrap())
        .arg("--config")
        .arg(&ini)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start sluiced");
    let (tx, rx) = channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut d = Daemon {
        child,
        what: "sluiced",
        log,
    };
    wait_ready(&mut d, &rx);
    d
}

fn wait_ready(d: &mut Daemon, rx: &Receiver<String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["event"] == "ready" {
                    return;
                }
            }
            Err(_) => {
                d.alive();
                panic!("sluiced gave no ready event within {WAIT:?}:\n{}", d.log());
            }
        }
    }
}

fn start_agent(dir: &Path, db: &Nestdb, ctl: &Path) -> Daemon {
    let log = dir.join("agent.log");
    let child = Command::new(built("sluice-agent").unwrap())
        .arg("--db")
        .arg(db.remote())
        .arg("--ctl")
        .arg(ctl)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start sluice-agent");
    Daemon {
        child,
        what: "sluice-agent",
        log,
    }
}

fn ctl_client(ctl: &Path) -> sluice_api::Client {
    let mut c = sluice_api::Client::connect(ctl).expect("connect to sluiced's control socket");
    c.set_timeout(Some(WAIT)).unwrap();
    c
}

fn program(ctl: &Path) -> NodeProgram {
    ctl_client(ctl)
        .call::<QueryNodeProgram>(&Empty {})
        .expect("node-program")
}

fn status(ctl: &Path) -> NodeStatus {
    ctl_client(ctl)
        .call::<QueryNodeStatus>(&Empty {})
        .expect("node-status")
}

fn ready_e2e(test: &str) -> bool {
    if !Podman::ready(test) {
        return false;
    }
    for b in ["sluiced", "sluice-agent"] {
        if built(b).is_none() {
            report_skip(&format!(
                "SKIPPED: control {test}: needs the {b} binary beside the tests (cargo build -p sluice-datapath -p sluice-control)"
            ));
            return false;
        }
    }
    true
}

/// Waits until `port` listens (TCP over IPv4 or IPv6, any address) inside
/// container `name`.
fn wait_listening(pm: &Podman, name: &str, port: u16) {
    let suffix = format!(":{port:04X}");
    wait_until(&format!("{name} to listen on {port}"), || {
        let t = pm.ok(&["exec", name, "cat", "/proc/net/tcp", "/proc/net/tcp6"]);
        t.lines()
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&suffix) && f[3] == "0A"
            })
            .then_some(())
    });
}

/// Starts a one-shot TCP server in `name` answering `text`.
fn serve(pm: &Podman, name: &str, port: u16, text: &str) {
    pm.ok(&[
        "exec",
        "-d",
        name,
        "sh",
        "-c",
        &format!("echo {text} | nc -l -p {port}"),
    ]);
    wait_listening(pm, name, port);
}

#[test]
fn pods_ping_talk_tcp_and_reach_a_cluster_ip_through_sluiced() {
    if !ready_e2e("podman_e2e pods_ping_talk_tcp_and_reach_a_cluster_ip_through_sluiced") {
        return;
    }
    let db = Nestdb::start(true);
    let _uplink = UplinkVeth::new();
    let dir = tempfile::Builder::new()
        .prefix("sluice-e2e")
        .tempdir()
        .unwrap();
    let ctl = dir.path().join("sluiced.ctl");
    let mut sluiced = start_sluiced(dir.path(), &ctl);
    let mut agent = start_agent(dir.path(), &db, &ctl);
    let pm = Podman::new(&db);

    // ADD returns once the agent has set up: sluiced forwards for the pod.
    let mut pods = Vec::new();
    for name in ["pod-a", "pod-b", "pod-c"] {
        let id = pm.start(name);
        let port = format!("{id}_eth0");
        let row = db
            .port(&port)
            .unwrap_or_else(|| panic!("no row for {name}"));
        assert!(row.up && row.dp_port.is_some(), "{name}: {row:?}");
        let st = status(&ctl);
        let ps = st
            .ports
            .get(&port)
            .unwrap_or_else(|| panic!("sluiced has no port {port}: {st:?}"));
        assert!(ps.forwarding, "{port} is not forwarding: {ps:?}");
        assert_eq!(Some(u32::from(ps.ofport)), row.dp_port);
        pods.push((name, id, row.ips.iter().next().unwrap().clone()));
    }
    sluiced.alive();
    agent.alive();
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);

    // Ping both ways through sluiced.
    for (from, to) in [(a, b), (b, a)] {
        let out = pm.ok(&["exec", from.0, "ping", "-c", "3", "-W", "5", &to.2]);
        assert!(
            out.contains("3 packets received"),
            "{} -> {}: {out}",
            from.0,
            to.2
        );
    }
    // TCP from a to b.
    serve(&pm, b.0, 8080, "hello-from-b");
    let got = pm.ok(&["exec", a.0, "nc", "-w", "5", &b.2, "8080"]);
    assert_eq!(got.trim(), "hello-from-b");

    // A ClusterIP Service (80 -> 8080) whose only endpoint is b.
    let sp = ServicePort {
        name: None,
        protocol: Protocol::Tcp,
        port: 80,
        target_port: Some(8080),
        node_port: None,
    };
    let svc = Service {
        name: "web".into(),
        namespace: "default".into(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: [VIP.parse().unwrap()].into(),
        external_ips: Default::default(),
        load_balancer_ips: Default::default(),
        ports: Default::default(),
        session_affinity: SessionAffinity::None,
        affinity_timeout: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Cluster,
        external_ids: Default::default(),
    };
    let ep = Endpoint {
        service: None,
        ip: b.2.parse().unwrap(),
        ports: Default::default(),
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some("node-a".into()),
        is_local: true,
        zone_hints: Default::default(),
        external_ids: Default::default(),
    };
    let mut svc_row = svc.to_row();
    svc_row.insert("ports".into(), Datum::named_uuid("sp"));
    let mut ep_row = ep.to_row();
    ep_row.insert("service".into(), Datum::named_uuid("svc"));
    db.client()
        .transact(
            &Transaction::new(DB)
                .insert(ServicePort::TABLE, sp.to_row())
                .named("sp")
                .insert(Service::TABLE, svc_row)
                .named("svc")
                .insert(Endpoint::TABLE, ep_row),
        )
        .expect("write the Service");
    wait_until("the agent to program Service default/web", || {
        program(&ctl)
            .services
            .get("default/web")
            .filter(|s| s.endpoints.len() == 1)
            .map(|_| ())
    });
    serve(&pm, b.0, 8080, "hello-via-clusterip");
    let got = pm.ok(&["exec", c.0, "nc", "-w", "5", VIP, "80"]);
    assert_eq!(got.trim(), "hello-via-clusterip");

    // podman rm: the row goes, then the agent removes the port.
    let a_port = format!("{}_eth0", a.1);
    pm.ok(&["rm", "-f", "-t", "0", a.0]);
    assert!(db.port(&a_port).is_none(), "pod-a's row outlived podman rm");
    wait_until("sluiced to drop pod-a's port", || {
        (!program(&ctl).ports.contains_key(&a_port) && !status(&ctl).ports.contains_key(&a_port))
            .then_some(())
    });
    // b and c still talk.
    let out = pm.ok(&["exec", c.0, "ping", "-c", "2", "-W", "5", &b.2]);
    assert!(out.contains("2 packets received"), "{out}");
    sluiced.alive();
    agent.alive();
}
