//! End to end with real processes only: `nestdb-server` (node schema),
//! `sluiced` (DPDK, its own `--file-prefix`, in a node network namespace:
//! uplink `net_af_packet` on a veth to a gateway namespace, host exception
//! port `net_tap`) and `sluice-agent`. Pods are network namespaces behind
//! veths whose host ends are in the node namespace; the desired state is
//! written with the real `ovsdb-client transact`.
//!
//! 1. `Node_Config`, pod-a (veth present) and pod-b (veth not created yet)
//!    written; the agent starts: pod-a is committed and `Logical_Port.up`
//!    turns true only when sluiced's node-status shows it forwarding;
//!    sluiced refuses pod-b (no interface), which is left out and recorded
//!    in `Node_Status.row_errors` while the rest applies;
//! 2. pod-b's veth is created and its row rewritten (its real MAC): it is
//!    committed, comes up, and the pods ping each other through sluiced;
//!    A Service (ClusterIP, one endpoint on pod-b) is added: a kernel TCP
//!    connection from pod-a to the ClusterIP reaches it; the endpoint is
//!    deleted: a new connection does not;
//! 3. under a 10 ms ping from pod-a to pod-b, the agent is SIGKILLed and
//!    restarted (sluiced's generation does not move: nothing sent), then
//!    nestdb-server is SIGKILLed and restarted (the monitor resumes from its
//!    last transaction id) and a `Remote_Node` written after it is
//!    committed: sluiced forwards every probe and every reply, by the two
//!    pods' kernel ICMP counters (ping's own count also misses the probes
//!    in flight when it is stopped, many on a loaded machine);
//! 4. sluiced is restarted (SIGTERM, start; new instance id, empty
//!    program): the agent pushes the whole program in one commit
//!    (generation 1) and the pods ping again; the time to forwarding and
//!    the ping gap are printed.
//!
//! A second test runs two full node stacks (nestdb-server, sluiced and
//! agent each) whose uplinks share an underlay veth: the `Remote_Node` rows
//! send each node's pod CIDR to the other over Geneve and the pods ping
//! each other through the tunnel flows.
//!
//! Needs root, `ovsdb-client` (openvswitch-common), and the `sluiced` and
//! `nestdb-server` binaries of this build (`cargo build --workspace`);
//! skips with the reason recorded otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nestdb_client::node::{LogicalPort, NodeStatus as StatusRow};
use nestdb_client::Client as DbClient;
use sluice_api::node::{NodeStatus, QueryNodeStatus};
use sluice_api::{Client, Empty};
use sluice_testkit::node::{ctl_socket, start_sluiced, Nestdb, SluicedIni};
use sluice_testkit::{
    built_or_skip, have_tool, report_skip, root_or_skip, rows, sh, sh_quiet, Daemon, Netns, Veth,
};

const WAIT: Duration = Duration::from_secs(90);
const PREFIX: &str = "slt-agent";

/// What a test of this file starts from: this binary's DPDK turn (one
/// test at a time), the nestdb-server and sluiced binaries and a
/// directory for the processes' files. `None` (the reason recorded) when
/// not root, without `ovsdb-client`, or either binary is not built.
fn prerequisites() -> Option<(
    std::sync::MutexGuard<'static, ()>,
    [PathBuf; 2],
    tempfile::TempDir,
)> {
    let turn = DPDK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bins = binaries()?;
    Some((
        turn,
        bins,
        tempfile::tempdir().expect("a temporary directory"),
    ))
}

/// The nestdb-server and sluiced binaries, when root with `ovsdb-client`
/// and both built; `None` with the reason recorded otherwise.
fn binaries() -> Option<[PathBuf; 2]> {
    if !root_or_skip!("needs root (namespaces, DPDK)") {
        return None;
    }
    if !have_tool("ovsdb-client") {
        report_skip!(
            "SKIPPED {}: ovsdb-client is not installed (Debian package openvswitch-common)",
            file!()
        );
        return None;
    }
    built_or_skip!(
        ["nestdb-server", "sluiced"],
        "cargo build -p nestdb --bin nestdb-server -p sluice-datapath --bin sluiced"
    )
}

fn wait_for<T>(what: &str, logs: impl Fn() -> String, f: impl FnMut() -> Option<T>) -> T {
    sluice_testkit::wait_until_logged(what, WAIT, logs, f)
}

fn ctl_path() -> PathBuf {
    ctl_socket(PREFIX)
}

/// sluiced in namespace `node` with DPDK prefix `prefix` (which also names
/// its control socket) and the kernel interfaces of its uplink and host
/// ports; its files are `dir/NAME.*`.
fn start_sluiced_as(
    bin: &Path,
    node: &Netns,
    dir: &Path,
    name: &str,
    (prefix, uplink_if, host_if): (&str, &str, &str),
) -> Daemon {
    let ctl = ctl_socket(prefix);
    let ini = SluicedIni {
        prefix,
        ctl: &ctl,
        uplink_if,
        host_if,
    };
    start_sluiced(bin, &ini.render(), Some(node), dir, name)
}

/// The node's sluiced (run `n`), from `dir/sluiced-N.ini`.
fn start_node_sluiced(bin: &Path, node: &Netns, dir: &Path, n: u32) -> Daemon {
    let name = format!("sluiced-{n}");
    start_sluiced_as(bin, node, dir, &name, (PREFIX, "slt-agu-o", "slt-agh"))
}

fn node_status() -> Option<NodeStatus> {
    node_status_at(&ctl_path())
}

fn node_status_at(ctl: &Path) -> Option<NodeStatus> {
    let mut c = Client::connect(ctl).ok()?;
    c.set_timeout(Some(WAIT)).ok()?;
    c.call::<QueryNodeStatus>(&Empty {}).ok()
}

fn start_agent(dir: &Path, db: &str) -> Daemon {
    start_agent_as(dir, "agent", db, &ctl_path())
}

/// The agent for `db` and `ctl`, logging to `dir/NAME.log`.
fn start_agent_as(dir: &Path, name: &str, db: &str, ctl: &Path) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-agent"));
    cmd.args(["--db", db, "--ctl"])
        .arg(ctl)
        .args(["--status-interval-ms", "200", "--retry-max-ms", "1000"])
        .stdout(Stdio::null());
    Daemon::spawn_appending(cmd, "sluice-agent", &dir.join(format!("{name}.log")))
}

/// One DPDK test at a time in this binary: each runs sluiced processes
/// polling on the same core.
static DPDK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ovsdb_transact(remote: &str, ops: &[serde_json::Value]) {
    rows::ovsdb_client_transact(remote, ops);
}

/// `name` → (`dp_port`, `up`).
fn ports(db: &DbClient) -> BTreeMap<String, (Option<u32>, bool)> {
    rows::select::<LogicalPort>(db)
        .into_iter()
        .map(|p| (p.name, (p.dp_port, p.up)))
        .collect()
}

fn status_row(db: &DbClient) -> Option<StatusRow> {
    rows::select::<StatusRow>(db).into_iter().next()
}

/// Three echoes from `ns` to `dst` came back. ping keeps sending (every
/// 0.2 s) until three replies are in, for at most [`WAIT`]: with `-c`
/// alone, once the last probe is sent iputils waits only twice the
/// largest round trip seen so far (at least the interval) and counts a
/// slower reply as lost, which a loaded machine turns into a failure of
/// the test, not of the data path (`-W` applies only before the first
/// reply).
fn ping(ns: &Netns, dst: &str) -> bool {
    let deadline = WAIT.as_secs().to_string();
    let out = ns.exec(&["ping", "-n", "-c", "3", "-i", "0.2", "-w", &deadline, dst]);
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = out.status.success() && text.contains(" 3 received");
    if !ok {
        eprintln!(
            "ping {dst} from {}:\n{text}{}",
            ns.0,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok
}

/// The ICMP echo counters of a namespace's kernel (`/proc/net/snmp`):
/// where a ping's probes and replies were when the test looked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Echoes {
    /// Echo requests sent (`OutEchos`).
    requests_out: u64,
    /// Echo requests received (`InEchos`).
    requests_in: u64,
    /// Echo replies sent (`OutEchoReps`).
    replies_out: u64,
    /// Echo replies received (`InEchoReps`).
    replies_in: u64,
}

impl Echoes {
    fn of(ns: &str) -> Echoes {
        let snmp = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
        let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
        let (names, values) = (icmp.next(), icmp.next());
        let (Some(names), Some(values)) = (names, values) else {
            panic!("no Icmp counters in /proc/net/snmp of {ns}:\n{snmp}");
        };
        let get = |name: &str| -> u64 {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {names}"))
        };
        Echoes {
            requests_out: get("OutEchos"),
            requests_in: get("InEchos"),
            replies_out: get("OutEchoReps"),
            replies_in: get("InEchoReps"),
        }
    }

    fn since(self, before: Echoes) -> Echoes {
        Echoes {
            requests_out: self.requests_out - before.requests_out,
            requests_in: self.requests_in - before.requests_in,
            replies_out: self.replies_out - before.replies_out,
            replies_in: self.replies_in - before.replies_in,
        }
    }
}

/// What a [`Pinger`] saw: ping's own count, and where its probes went by
/// the kernels' counters of both pods.
#[derive(Debug, Clone, Copy)]
struct PingReport {
    /// Probes ping sent.
    sent: u64,
    /// Replies ping counted before it stopped.
    received: u64,
    /// Echo requests that left the source pod's kernel.
    requests_out: u64,
    /// Echo requests that reached the destination pod's kernel.
    requests_in: u64,
    /// Echo replies the destination pod sent.
    replies_out: u64,
    /// Echo replies that reached the source pod's kernel.
    replies_in: u64,
}

impl PingReport {
    /// Probes or replies the data path lost: sent by one pod's kernel and
    /// never received by the other's.
    fn lost_by_the_data_path(&self) -> u64 {
        (self.requests_out - self.requests_in) + (self.replies_out - self.replies_in)
    }

    /// All counters agree: every probe went there and back.
    fn complete(&self) -> bool {
        self.requests_out == self.sent
            && self.requests_in == self.requests_out
            && self.replies_out == self.requests_in
            && self.replies_in == self.replies_out
    }
}

impl std::fmt::Display for PingReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ping sent {} and counted {} replies; echo requests: {} left the source pod, {} reached the destination pod; echo replies: {} sent, {} reached the source pod",
            self.sent,
            self.received,
            self.requests_out,
            self.requests_in,
            self.replies_out,
            self.replies_in
        )
    }
}

/// A 10 ms ping from one pod namespace to another. [`Pinger::stop`] sends
/// SIGINT and reads ping's summary; the probes still in flight then are
/// counted as sent but not received by ping, however sound the data path
/// (many of them when a loaded machine stretches the round trip past the
/// interval). So the pods' kernel counters tell what the data path did.
struct Pinger {
    ping: Daemon,
    src: String,
    dst: String,
    before: (Echoes, Echoes),
}

impl Pinger {
    fn start(src: &Netns, dst_ns: &Netns, dst: &str, log: &Path) -> Pinger {
        let before = (Echoes::of(&src.0), Echoes::of(&dst_ns.0));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &src.0, "ping", "-n", "-i", "0.01", dst])
            .stdout(Stdio::piped());
        Pinger {
            ping: Daemon::spawn(cmd, "ping", log),
            src: src.0.clone(),
            dst: dst_ns.0.clone(),
            before,
        }
    }

    fn report(&self, sent: u64, received: u64) -> PingReport {
        let src = Echoes::of(&self.src).since(self.before.0);
        let dst = Echoes::of(&self.dst).since(self.before.1);
        PingReport {
            sent,
            received,
            requests_out: src.requests_out,
            requests_in: dst.requests_in,
            replies_out: dst.replies_out,
            replies_in: src.replies_in,
        }
    }

    /// Stops ping and reports at once (the counters may still move).
    fn stop(mut self) -> PingReport {
        let (sent, received) = self.interrupt();
        self.report(sent, received)
    }

    /// Stops ping, then waits (at most [`WAIT`]) for the probes in flight
    /// to land: returns as soon as every probe went there and back by the
    /// counters, or with what is missing after the wait.
    fn stop_and_settle(mut self) -> PingReport {
        let (sent, received) = self.interrupt();
        let start = Instant::now();
        loop {
            let r = self.report(sent, received);
            if r.complete() || start.elapsed() >= WAIT {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGINT; (transmitted, received) from ping's summary.
    fn interrupt(&mut self) -> (u64, u64) {
        use std::io::Read as _;
        let p = self.ping.child();
        sh(&["kill", "-INT", &p.id().to_string()]);
        let mut text = String::new();
        p.stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut text)
            .expect("ping output");
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary: {text}"));
        let n = |word: &str| -> u64 {
            line.split(',')
                .find(|f| f.contains(word))
                .and_then(|f| f.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no '{word}' in {line}"))
        };
        (n("transmitted"), n("received"))
    }
}

fn pod_row(name: &str, mac: &str, ip: &str, host_if: &str) -> serde_json::Value {
    serde_json::json!({"op": "insert", "table": "Logical_Port", "row": {
        "name": name, "mac": mac, "ips": ip, "interface_name": "eth0", "up": false,
        "external_ids": ["map", [["host_interface", host_if]]]}})
}

#[test]
fn agent_programs_real_sluiced_from_nestdb_through_restarts() {
    let Some((_turn, [nestdb, sluiced], dir)) = prerequisites() else {
        return;
    };
    let d = dir.path();
    let logs = || {
        let names = ["agent.log", "sluiced-1.log", "sluiced-2.log", "nestdb.log"];
        sluice_testkit::logs_of(d, &names)
    };

    // The node: uplink to a gateway namespace, pods a (now) and b (later).
    let node = Netns::new("slt-ag-node");
    let gw = Netns::new("slt-ag-gw");
    let a = Netns::new("slt-ag-a");
    let b = Netns::new("slt-ag-b");
    let _up = Veth::new_in(&node, "slt-agu-o", "slt-agu-i", &gw, "192.0.2.1/24");
    node.ip(&["addr", "add", "192.0.2.10/24", "dev", "slt-agu-o"]);
    let _va = Veth::new_in(&node, "slt-aga-o", "slt-aga-i", &a, "10.244.1.5/24");

    // nestdb-server with the node schema.
    let mut db_proc = Nestdb::start(&nestdb, d, "nestdb");
    let remote = db_proc.remote();
    let mut sluiced_proc = start_node_sluiced(&sluiced, &node, d, 1);
    let first_instance = node_status().unwrap().instance_id;

    // 1. The desired state, written with ovsdb-client.
    ovsdb_transact(
        &remote,
        &[
            serde_json::json!({"op": "insert", "table": "Node_Config", "row": {
                "node_name": "node-a", "node_type": "BAREMETAL", "uplink_port": "uplink",
                "vtep_ip": "192.0.2.10", "pod_cidrs": "10.244.1.0/24",
                "node_ips": "192.0.2.10", "nodeport_min": 30000, "nodeport_max": 32767,
                "mtu": 1500}}),
            pod_row("pod-a", &a.mac_of("slt-aga-i"), "10.244.1.5", "slt-aga-o"),
            pod_row("pod-b", "0a:58:0a:f4:01:06", "10.244.1.6", "slt-agb-o"),
        ],
    );
    let mut agent = start_agent(d, &remote);
    let db = DbClient::connect(&remote).unwrap();
    wait_for("pod-a up", logs, || (ports(&db)["pod-a"].1).then_some(()));
    let st = node_status().unwrap();
    assert!(
        st.ports["pod-a"].up && st.ports["pod-a"].forwarding,
        "Logical_Port.up is true but sluiced does not forward: {st:?}"
    );
    assert_eq!(
        ports(&db)["pod-a"].0,
        Some(u32::from(st.ports["pod-a"].ofport))
    );
    let row = wait_for("pod-b's refusal in Node_Status", logs, || {
        status_row(&db).filter(|s| s.row_errors.contains_key("Logical_Port pod-b"))
    });
    println!(
        "pod-b without its veth: {}",
        row.row_errors["Logical_Port pod-b"]
    );
    assert_eq!(ports(&db)["pod-b"], (None, false));
    assert!(!st.ports.contains_key("pod-b"));

    // 2. pod-b's veth exists now; its row is written again.
    let _vb = Veth::new_in(&node, "slt-agb-o", "slt-agb-i", &b, "10.244.1.6/24");
    let mac_b = b.mac_of("slt-agb-i");
    ovsdb_transact(
        &remote,
        &[serde_json::json!({"op": "update", "table": "Logical_Port",
            "where": [["name", "==", "pod-b"]], "row": {"mac": mac_b}})],
    );
    wait_for("pod-b up", logs, || ports(&db)["pod-b"].1.then_some(()));
    wait_for("pod-b's error cleared", logs, || {
        status_row(&db).filter(|s| s.row_errors.is_empty())
    });
    assert!(ping(&a, "10.244.1.6"), "a -> b through sluiced\n{}", logs());
    assert!(ping(&b, "10.244.1.5"), "b -> a through sluiced\n{}", logs());

    // 2b. A Service: a kernel TCP connection from pod-a to its ClusterIP
    // reaches the endpoint on pod-b; once the endpoint is deleted, new
    // connections do not.
    let mut http = Command::new("ip");
    http.args([
        "netns",
        "exec",
        &b.0,
        "python3",
        "-m",
        "http.server",
        "8080",
    ])
    .args(["--bind", "10.244.1.6"])
    .stdout(Stdio::null());
    let _server = Daemon::spawn(http, "python3 http.server", &d.join("http.log"));
    a.ip(&["route", "add", "10.96.0.0/12", "via", "10.244.1.1"]);
    let gen_before = node_status().unwrap().generation;
    ovsdb_transact(
        &remote,
        &[
            serde_json::json!({"op": "insert", "table": "Service_Port", "uuid-name": "p80",
                "row": {"protocol": "TCP", "port": 80, "target_port": 8080}}),
            serde_json::json!({"op": "insert", "table": "Service", "uuid-name": "web", "row": {
                "name": "web", "namespace": "default", "type": "ClusterIP",
                "cluster_ips": "10.96.0.10", "ports": ["named-uuid", "p80"],
                "session_affinity": "None", "internal_traffic_policy": "Cluster",
                "external_traffic_policy": "Cluster"}}),
            serde_json::json!({"op": "insert", "table": "Endpoint", "row": {
                "service": ["named-uuid", "web"], "ip": "10.244.1.6", "ready": true,
                "serving": true, "terminating": false, "is_local": true}}),
        ],
    );
    wait_for("the Service committed", logs, || {
        node_status().filter(|s| s.generation > gen_before)
    });
    let get = |url: &str| -> bool {
        a.exec(&[
            "python3",
            "-c",
            &format!("import urllib.request; urllib.request.urlopen('{url}', timeout=2).read()"),
        ])
        .status
        .success()
    };
    // The server may still be starting: retry (bounded) until it answers
    // directly, then through the ClusterIP once.
    wait_for("the endpoint's HTTP server", logs, || {
        get("http://10.244.1.6:8080/").then_some(())
    });
    assert!(
        get("http://10.96.0.10/"),
        "TCP to the ClusterIP did not reach the endpoint\n{}",
        logs()
    );
    let gen_svc = node_status().unwrap().generation;
    ovsdb_transact(
        &remote,
        &[serde_json::json!({"op": "delete", "table": "Endpoint",
            "where": [["ip", "==", "10.244.1.6"]]})],
    );
    wait_for("the endpoint's removal committed", logs, || {
        node_status().filter(|s| s.generation > gen_svc)
    });
    assert!(
        !get("http://10.96.0.10/"),
        "a new connection reached a deleted endpoint"
    );
    assert!(
        get("http://10.244.1.6:8080/"),
        "the pod itself still answers"
    );

    // 3. Agent SIGKILLed and restarted, then nestdb-server SIGKILLed and
    // restarted, under a 10 ms ping: nothing sent, no packet lost.
    let pinger = Pinger::start(&a, &b, "10.244.1.6", &d.join("ping.log"));
    let gen = node_status().unwrap().generation;
    agent.kill();
    agent = start_agent(d, &remote);
    wait_for(
        "the restarted agent to find nothing to change",
        logs,
        || {
            let l = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
            let second = l.rmatch_indices("sluice-agent started").next()?.0;
            (l.matches("sluice-agent started").count() == 2
                && l[second..].contains("nothing to send"))
            .then_some(())
        },
    );
    assert_eq!(
        node_status().unwrap().generation,
        gen,
        "the restarted agent committed"
    );
    db_proc.kill();
    wait_for("the agent to notice nestdb-server went", logs, || {
        let l = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
        l.contains("lost nestdb-server").then_some(())
    });
    db_proc.restart();
    wait_for("the agent's monitor to resume", logs, || {
        let l = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
        l.contains("nestdb monitor resumed from the last transaction id")
            .then_some(())
    });
    // A change after the restart is applied (and only it).
    let db = DbClient::connect(&remote).unwrap();
    ovsdb_transact(
        &remote,
        &[
            serde_json::json!({"op": "insert", "table": "Remote_Node", "row": {
            "name": "node-b", "vtep_ip": "192.0.2.11", "pod_cidrs": "10.244.2.0/24"}}),
        ],
    );
    wait_for("the Remote_Node committed", logs, || {
        node_status().filter(|s| s.generation == gen + 1)
    });
    let report = pinger.stop_and_settle();
    println!(
        "10 ms ping a -> b across an agent SIGKILL/restart and a nestdb-server restart: {report}"
    );
    // ping's own count misses the probes in flight at SIGINT; the pods'
    // counters do not: sluiced's program did not change, so it forwarded
    // every probe and every reply.
    assert!(report.sent > 0 && report.received > 0, "{report}");
    assert_eq!(
        report.lost_by_the_data_path(),
        0,
        "sluiced lost packets while the agent and nestdb-server restarted: {report}\n{}",
        logs()
    );
    assert!(report.complete(), "{report}");

    // 4. sluiced restarted: the whole program in one commit.
    let pinger = Pinger::start(&a, &b, "10.244.1.6", &d.join("ping.log"));
    sluiced_proc.stop(WAIT);
    let t0 = Instant::now();
    sluiced_proc = start_node_sluiced(&sluiced, &node, d, 2);
    let st = wait_for("the program pushed to the new sluiced", logs, || {
        node_status().filter(|s| {
            s.instance_id != first_instance
                && s.ports.get("pod-b").is_some_and(|p| p.forwarding)
                && s.ports.get("pod-a").is_some_and(|p| p.forwarding)
        })
    });
    println!(
        "sluiced restart to both pods forwarding again: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(st.generation, 1, "one commit for the whole program");
    // The pinger sees replies again, then stops.
    let t1 = Instant::now();
    while !ping(&b, "10.244.1.5") {
        assert!(t1.elapsed() < WAIT, "no traffic after the sluiced restart");
    }
    let report = pinger.stop();
    println!(
        "10 ms ping a -> b across a sluiced restart: {report}; gap ~{} ms",
        report.lost_by_the_data_path() * 10
    );
    assert!(
        report.received > 0 && report.lost_by_the_data_path() > 0,
        "a sluiced restart without a gap? {report}"
    );
    assert!(
        ping(&a, "10.244.1.6"),
        "a -> b after the sluiced restart\n{}",
        logs()
    );
    let row = wait_for("Node_Status of the new sluiced", logs, || {
        status_row(&db).filter(|s| s.instance_id == st.instance_id)
    });
    assert_eq!(row.generation, 1);
    // Logged once per state change, however often it retried meanwhile.
    let l = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
    assert_eq!(
        (
            l.matches("sluiced is unreachable").count(),
            l.matches("sluiced is reachable again").count()
        ),
        (1, 1),
        "{l}"
    );
    sluiced_proc.stop(WAIT);
    agent.kill();
    db_proc.kill();
    if std::env::var_os("SLUICE_E2E_LOGS").is_some() {
        println!("{}", logs());
    }
}

/// Rows of one node: its `Node_Config`, its pod, and the other node.
fn node_rows(
    name: &str,
    vtep: &str,
    cidr: &str,
    pod: (&str, &str, &str, &str),
    other: (&str, &str, &str),
) -> Vec<serde_json::Value> {
    let (pname, mac, ip, host_if) = pod;
    let (oname, ovtep, ocidr) = other;
    vec![
        serde_json::json!({"op": "insert", "table": "Node_Config", "row": {
            "node_name": name, "node_type": "BAREMETAL", "uplink_port": "uplink",
            "vtep_ip": vtep, "pod_cidrs": cidr, "node_ips": vtep,
            "nodeport_min": 30000, "nodeport_max": 32767, "mtu": 1500}}),
        pod_row(pname, mac, ip, host_if),
        serde_json::json!({"op": "insert", "table": "Remote_Node", "row": {
            "name": oname, "vtep_ip": ovtep, "pod_cidrs": ocidr}}),
    ]
}

/// Two full node stacks (nestdb-server, sluiced, agent each) whose uplinks
/// share an underlay veth: a `Remote_Node` row on each sends the other
/// node's pod CIDR over Geneve, and the pods ping each other across it.
#[test]
fn two_nodes_reach_each_other_over_geneve() {
    let Some((_turn, [nestdb, sluiced], dir)) = prerequisites() else {
        return;
    };
    let d = dir.path();
    let logs = || {
        let names = [
            "agent-a.log",
            "agent-b.log",
            "sluiced-a.log",
            "sluiced-b.log",
        ];
        sluice_testkit::logs_of(d, &names)
    };
    let node_a = Netns::new("slt-ag2-na");
    let node_b = Netns::new("slt-ag2-nb");
    let pod_a = Netns::new("slt-ag2-a");
    let pod_b = Netns::new("slt-ag2-b");
    // The underlay: one veth between the two nodes' uplinks.
    sh_quiet(&["ip", "-n", &node_a.0, "link", "del", "slt-ag2-ua"]);
    sh(&[
        "ip",
        "link",
        "add",
        "slt-ag2-ua",
        "type",
        "veth",
        "peer",
        "name",
        "slt-ag2-ub",
    ]);
    sh(&["ip", "link", "set", "slt-ag2-ua", "netns", &node_a.0]);
    sh(&["ip", "link", "set", "slt-ag2-ub", "netns", &node_b.0]);
    for (ns, ifc, addr) in [
        (&node_a, "slt-ag2-ua", "192.0.2.10/24"),
        (&node_b, "slt-ag2-ub", "192.0.2.11/24"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", ifc]);
        ns.ip(&["link", "set", ifc, "up"]);
    }
    let _va = Veth::new_in(&node_a, "slt-ag2-pa", "slt-ag2-ia", &pod_a, "10.244.1.5/24");
    let _vb = Veth::new_in(&node_b, "slt-ag2-pb", "slt-ag2-ib", &pod_b, "10.244.2.5/24");
    pod_a.ip(&["route", "add", "default", "via", "10.244.1.1"]);
    pod_b.ip(&["route", "add", "default", "via", "10.244.2.1"]);

    let (spec_a, spec_b) = (
        ("slt-ag2a", "slt-ag2-ua", "slt-ag2-ha"),
        ("slt-ag2b", "slt-ag2-ub", "slt-ag2-hb"),
    );
    let db_a = Nestdb::start(&nestdb, d, "nestdb-a");
    let db_b = Nestdb::start(&nestdb, d, "nestdb-b");
    let (remote_a, remote_b) = (db_a.remote(), db_b.remote());
    let s_a = start_sluiced_as(&sluiced, &node_a, d, "sluiced-a", spec_a);
    let s_b = start_sluiced_as(&sluiced, &node_b, d, "sluiced-b", spec_b);
    ovsdb_transact(
        &remote_a,
        &node_rows(
            "node-a",
            "192.0.2.10",
            "10.244.1.0/24",
            (
                "pod-a",
                &pod_a.mac_of("slt-ag2-ia"),
                "10.244.1.5",
                "slt-ag2-pa",
            ),
            ("node-b", "192.0.2.11", "10.244.2.0/24"),
        ),
    );
    ovsdb_transact(
        &remote_b,
        &node_rows(
            "node-b",
            "192.0.2.11",
            "10.244.2.0/24",
            (
                "pod-b",
                &pod_b.mac_of("slt-ag2-ib"),
                "10.244.2.5",
                "slt-ag2-pb",
            ),
            ("node-a", "192.0.2.10", "10.244.1.0/24"),
        ),
    );
    let agent_a = start_agent_as(d, "agent-a", &remote_a, &ctl_socket(spec_a.0));
    let agent_b = start_agent_as(d, "agent-b", &remote_b, &ctl_socket(spec_b.0));
    let (dbc_a, dbc_b) = (
        DbClient::connect(&remote_a).unwrap(),
        DbClient::connect(&remote_b).unwrap(),
    );
    wait_for("both pods up", logs, || {
        (ports(&dbc_a)["pod-a"].1 && ports(&dbc_b)["pod-b"].1).then_some(())
    });
    for (db, name) in [(&dbc_a, "node-a"), (&dbc_b, "node-b")] {
        let st = status_row(db).expect("Node_Status");
        assert!(st.row_errors.is_empty(), "{name}: {:?}", st.row_errors);
        assert_eq!(st.node_name, name);
    }
    // The first packets also resolve the other VTEP: allow a few rounds.
    let t0 = Instant::now();
    while !ping(&pod_a, "10.244.2.5") {
        assert!(
            t0.elapsed() < WAIT,
            "pod-a -> pod-b over Geneve\n{}",
            logs()
        );
    }
    assert!(
        ping(&pod_b, "10.244.1.5"),
        "pod-b -> pod-a over Geneve\n{}",
        logs()
    );
    // They went through the tunnel flows the Remote_Node rows made.
    for (spec, cidr) in [(spec_a, "10.244.2.0/24"), (spec_b, "10.244.1.0/24")] {
        let mut c = Client::connect(ctl_socket(spec.0)).unwrap();
        let dump = c.call_text::<&str>("dump-flows", &[]).unwrap();
        let line = dump
            .lines()
            .find(|l| l.contains(&format!("nw_dst={cidr}")) && l.contains("tnl_push"))
            .unwrap_or_else(|| panic!("no tunnel flow to {cidr}:\n{dump}"));
        assert!(!line.contains("n_packets=0,"), "{line}");
    }
    s_a.stop(WAIT);
    s_b.stop(WAIT);
    agent_a.kill();
    agent_b.kill();
    sh_quiet(&["ip", "-n", &node_a.0, "link", "del", "slt-ag2-ua"]);
}
