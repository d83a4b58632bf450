//! End to end: `node-commit` against a real sluiced while a stream
//! forwards. sluiced starts with a stream sink from sluiced.ini (`net_null`,
//! no rx, ofport 1); an operator's rule sends port 2 to it and the stream
//! source (`net_null`, ofport 2) is added with `port-add`. Two pod
//! namespaces behind veths exist but are not ports yet. Commits then:
//!
//! 1. add both pods, their rules and port security in one step (the first
//!    commit also replaces the start-up program): they ping each other;
//!    `node-status` shows generation 1 and the pods forwarding;
//!    `node-program` is exactly the program committed;
//! 2. a commit whose second flow operation is bad (and which also removes
//!    a pod and adds a port whose interface is missing) is refused, naming
//!    the item; nothing of it applies (generation, program, ports, pings
//!    unchanged);
//! 3. a stale `expected_generation` is refused;
//! 4. removing pod b (port, rules, binding) in one commit: the ping stops,
//!    the port is gone;
//! 5. adding it back: the ping works again;
//! 6. replacing it by another port on the same number in one commit: the
//!    new port forwards.
//!
//! Across all of it, the stream source's packets all leave through the
//! sink (port counters at stop): commits lose no packet of other ports.
//!
//! A second test stops the committing thread between its phases (the
//! test hook `SLUICE_TEST_COMMIT_PAUSE`): before the barrier, inside it
//! with the PMD parked, and after it. At each stop the PMD keeps
//! forwarding the stream (its counter moves: a bounded wait, no timing
//! threshold); once resumed, the commit applies whole.

mod common;

use std::collections::BTreeMap;

use common::*;
use sluice_api::flows::FlowOp;
use sluice_api::node::{
    apply, Flow, NodeChanges, NodeCommit, NodeProgram, PortKind, PortSpec, QueryNodeProgram,
    QueryNodeStatus,
};
use sluice_api::stack::PortSecurity;
use sluice_api::{Client, ClientError, Empty, ErrorCode};
use sluice_testkit::prometheus::{promtool_check, sample};
use sluice_testkit::strip_ansi;

const PREFIX: &str = "slt-nc";

fn client() -> Client {
    let mut c = Client::connect(ctl_path(PREFIX)).expect("connect to sluiced's control socket");
    c.set_timeout(Some(WAIT)).expect("timeout");
    c
}

fn mac_of(ns: &Netns, iface: &str) -> [u8; 6] {
    let t = ns.mac_of(iface);
    sluice_api::args::mac(&t).unwrap_or_else(|e| panic!("MAC of {iface}: {t}: {e}"))
}

fn flow(priority: u16, m: &str, actions: &str) -> Flow {
    Flow {
        table: 0,
        priority,
        match_: m.to_string(),
        cookie: 0x5c,
        actions: actions.to_string(),
    }
}

fn add_ops(flows: &[Flow]) -> Vec<FlowOp> {
    flows
        .iter()
        .map(|f| FlowOp::Add { flow: f.text() })
        .collect()
}

fn pod(ofport: u16, iface: &str) -> PortSpec {
    PortSpec {
        ofport,
        kind: PortKind::Pod {
            interface: iface.into(),
        },
        driver: Default::default(),
    }
}

/// A `port-add` request for a `net_null`-style vdev (`devargs`), with
/// `ofport` or a free number.
fn devargs_port(
    name: &str,
    ofport: Option<u16>,
    devargs: &str,
) -> sluice_api::ports::PortAddRequest {
    sluice_api::ports::PortAddRequest {
        name: name.into(),
        ofport,
        kind: sluice_api::ports::PortKind::Devargs {
            devargs: devargs.into(),
        },
        rx_queues: 1,
    }
}

/// The stream: an operator's rule sends port 2 to the sink (port 1), then
/// its source `src` (`devargs`) is added on port 2.
fn start_stream(c: &mut Client, devargs: &str) {
    c.call_text::<&str>("del-flows", &[]).expect("del-flows");
    c.call_text("add-flow", &["priority=100,in_port=2 actions=output:1"])
        .expect("add-flow");
    c.call::<sluice_api::ports::PortAdd>(&devargs_port("src", Some(2), devargs))
        .expect("port-add src");
}

fn api_err(r: Result<impl std::fmt::Debug, ClientError>) -> sluice_api::ApiError {
    match r {
        Err(ClientError::Api(e)) => e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// GET the metrics over plain HTTP/1.0 from inside the node's namespace
/// (where sluiced listens), with bash's /dev/tcp.
fn scrape(node: &Netns, url: &str) -> String {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 60 cat <&3"
    );
    let out = node.exec(&["bash", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "not an HTTP reply: {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[test]
fn node_commits_apply_whole_or_not_at_all_while_a_stream_forwards() {
    let Some(pods) = two_pods(
        "node_commits_apply_whole_or_not_at_all_while_a_stream_forwards",
        "slt-nc",
        "slt-nc",
        "10.204.0",
    ) else {
        return;
    };
    let (node, a, b) = (&pods.node, &pods.a, &pods.b);
    let (d, ready) = Sluiced::start_in(
        node,
        &config(
            PREFIX,
            "metrics_address = 127.0.0.1:0\n[port:sink]\ndevargs = net_null0,no-rx=1\nofport = 1\n",
        ),
    );
    let metrics_url = ready["metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("no metrics address in {ready}"))
        .to_string();
    let mut c = client();
    // The stream (src, 2 -> sink, 1) is in place before src exists, as an
    // operator's rule: the first commit replaces it with the program's
    // own copy, in the same step as everything else.
    start_stream(&mut c, "net_null_src");
    let st0 = c.call::<QueryNodeStatus>(&Empty {}).expect("node-status");
    assert_eq!(st0.generation, 0);
    assert_eq!(
        c.call::<QueryNodeProgram>(&Empty {}).expect("node-program"),
        NodeProgram::default()
    );

    // 1. Both pods, their rules and port security, in one commit.
    let (mac_a, mac_b) = (mac_of(a, "slt-nca-i"), mac_of(b, "slt-ncb-i"));
    let stream = flow(100, "in_port=2", "output:1");
    let a_to_b = flow(10, "in_port=3", "output:4");
    let b_to_a = flow(10, "in_port=4", "output:3");
    let rest = flow(0, "", "drop");
    let binding = |port, mac, ip: &str| PortSecurity {
        port,
        mac,
        ips: vec![ip.parse().unwrap()],
    };
    let first = NodeChanges {
        generation: 1,
        expected_generation: Some(0),
        ports_added: BTreeMap::from([
            ("pod-a".to_string(), pod(3, "slt-nca-o")),
            ("pod-b".to_string(), pod(4, "slt-ncb-o")),
        ]),
        port_security_set: vec![
            binding(3, mac_a, "10.204.0.1"),
            binding(4, mac_b, "10.204.0.2"),
        ],
        flow_ops: add_ops(&[stream.clone(), a_to_b.clone(), b_to_a.clone(), rest.clone()]),
        ..Default::default()
    };
    let r = c.call::<NodeCommit>(&first).expect("the first commit");
    assert_eq!(r.generation, 1);
    assert_eq!((r.counts.ports_added, r.counts.flow_ops), (2, 4), "{r:?}");
    a.assert_ping("10.204.0.2");
    b.assert_ping("10.204.0.1");
    let st1 = c.call::<QueryNodeStatus>(&Empty {}).expect("node-status");
    assert_eq!(st1.generation, 1);
    assert_eq!(st1.instance_id, st0.instance_id);
    assert!(
        st1.ports["pod-a"].forwarding && st1.ports["pod-b"].forwarding,
        "{st1:?}"
    );
    let expect1 = apply(&NodeProgram::default(), &first);
    let held1 = c.call::<QueryNodeProgram>(&Empty {}).expect("node-program");
    assert_eq!(held1, expect1);
    // The start-up learning-switch rule is gone: the program is the whole
    // program.
    let dump = c.call_text::<&str>("dump-flows", &[]).expect("dump-flows");
    assert!(!dump.contains("normal"), "{dump}");
    assert_eq!(dump.matches("cookie=0x5c").count(), 4, "{dump}");

    // The metrics: valid for promtool, the generation, and counters that
    // move with traffic.
    let m1 = scrape(node, &metrics_url);
    assert!(m1.contains("sluice_node_generation 1\n"), "{m1}");
    let rx = |m: &str| {
        sample(
            m,
            "sluice_port_rx_packets_total{port=\"pod-a\",ofport=\"3\"}",
        )
    };
    let before = rx(&m1);
    a.assert_ping("10.204.0.2");
    let m2 = scrape(node, &metrics_url);
    assert!(
        rx(&m2) >= before + 3.0,
        "pod-a rx {} -> {}",
        before,
        rx(&m2)
    );
    assert!(
        sample(&m2, "sluice_pmd_rx_packets_total{pmd=\"0\"}") > 0.0,
        "{m2}"
    );
    if let Err(why) = promtool_check(&m2) {
        report_skip(&format!("e2e_node_commit: {why}"));
    }

    // 2. Refused at its second flow operation: nothing applies.
    let bad = NodeChanges {
        generation: 2,
        expected_generation: Some(1),
        ports_removed: vec!["pod-b".into()],
        flow_ops: vec![
            FlowOp::Del {
                match_: "in_port=4".into(),
                strict: false,
            },
            FlowOp::Add {
                flow: "priority=5,in_port=3 actions=output:nowhere".into(),
            },
        ],
        ..Default::default()
    };
    let e = api_err(c.call::<NodeCommit>(&bad));
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    assert!(
        e.message.contains("flow operation 1") && e.message.contains("nothing was applied"),
        "{e}"
    );
    let missing = NodeChanges {
        generation: 2,
        expected_generation: Some(1),
        ports_added: BTreeMap::from([("pod-c".to_string(), pod(5, "slt-nc-none"))]),
        flow_ops: add_ops(&[flow(5, "in_port=5", "output:3")]),
        ..Default::default()
    };
    let e = api_err(c.call::<NodeCommit>(&missing));
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    assert!(
        e.message.contains("port \"pod-c\"") && e.message.contains("does not exist"),
        "{e}"
    );
    let st = c.call::<QueryNodeStatus>(&Empty {}).expect("node-status");
    assert_eq!(st.generation, 1);
    assert_eq!(
        st.ports.keys().collect::<Vec<_>>(),
        ["pod-a", "pod-b", "sink", "src"],
        "{st:?}"
    );
    assert_eq!(
        c.call::<QueryNodeProgram>(&Empty {}).expect("node-program"),
        expect1
    );
    a.assert_ping("10.204.0.2");

    // 3. A stale expected generation.
    let stale = NodeChanges {
        generation: 2,
        expected_generation: Some(0),
        ..Default::default()
    };
    let e = api_err(c.call::<NodeCommit>(&stale));
    assert!(
        e.message.contains("holds generation 1, not the expected 0"),
        "{e}"
    );

    // 4. Pod b leaves: port, rules and binding in one commit.
    let remove_b = NodeChanges {
        generation: 2,
        expected_generation: Some(1),
        ports_removed: vec!["pod-b".into()],
        port_security_removed: vec![4],
        flow_ops: vec![
            FlowOp::Del {
                match_: b_to_a.key_text(),
                strict: true,
            },
            FlowOp::Del {
                match_: a_to_b.key_text(),
                strict: true,
            },
        ],
        ..Default::default()
    };
    c.call::<NodeCommit>(&remove_b).expect("remove pod b");
    a.assert_no_ping("10.204.0.2");
    let st2 = c.call::<QueryNodeStatus>(&Empty {}).expect("node-status");
    assert_eq!(st2.generation, 2);
    assert!(!st2.ports.contains_key("pod-b"), "{st2:?}");
    let expect2 = apply(&expect1, &remove_b);
    assert_eq!(
        c.call::<QueryNodeProgram>(&Empty {}).expect("node-program"),
        expect2
    );
    let ps = c
        .call_text::<&str>("dump-port-security", &[])
        .expect("dump");
    assert!(!ps.contains("port 4:"), "{ps}");

    // 5. And back.
    let back = NodeChanges {
        generation: 3,
        expected_generation: Some(2),
        ports_added: BTreeMap::from([("pod-b".to_string(), pod(4, "slt-ncb-o"))]),
        port_security_set: vec![binding(4, mac_b, "10.204.0.2")],
        flow_ops: add_ops(&[a_to_b, b_to_a]),
        ..Default::default()
    };
    c.call::<NodeCommit>(&back).expect("pod b again");
    a.assert_ping("10.204.0.2");
    let expect3 = apply(&expect2, &back);
    assert_eq!(
        c.call::<QueryNodeProgram>(&Empty {}).expect("node-program"),
        expect3
    );

    // 6. One port replaced by another on the same number in one commit
    // (the CNI deleted a pod and added one, the agent renumbered): the new
    // one forwards.
    let renumber = NodeChanges {
        generation: 4,
        expected_generation: Some(3),
        ports_removed: vec!["pod-b".into()],
        ports_added: BTreeMap::from([("pod-b2".to_string(), pod(4, "slt-ncb-o"))]),
        ..Default::default()
    };
    c.call::<NodeCommit>(&renumber)
        .expect("pod-b2 replaces pod-b at 4");
    let st4 = c.call::<QueryNodeStatus>(&Empty {}).expect("node-status");
    assert!(!st4.ports.contains_key("pod-b"), "{st4:?}");
    assert!(
        st4.ports
            .get("pod-b2")
            .is_some_and(|p| p.ofport == 4 && p.forwarding),
        "{st4:?}"
    );
    a.assert_ping("10.204.0.2");

    let ev = d.stop();
    let (sent, got) = (
        port_stat(&ev, "src", "rx_packets"),
        port_stat(&ev, "sink", "tx_packets"),
    );
    assert!(sent > 0, "{ev}");
    assert_eq!(
        sent, got,
        "stream packets lost across the node commits: {ev}"
    );
    println!("stream: {sent} packets delivered by src, {got} sent by sink, across 4 commits and 3 refusals");
}

/// The PMD's sent-packet counter.
fn pmd_tx(c: &mut Client) -> u64 {
    let r = c
        .call::<sluice_api::pmd::PmdStatsShow>(&Empty {})
        .expect("pmd-stats-show");
    r.pmds.iter().map(|p| p.tx_packets).sum()
}

#[test]
fn a_committer_paused_between_its_phases_never_stops_forwarding() {
    const P: &str = "slt-ncp";
    if !can_use_netns("a_committer_paused_between_its_phases_never_stops_forwarding") {
        return;
    }
    // The hook's gates are named after the sluiced's instance id: another
    // test's sluiced, which may inherit the variable, never pauses.
    let hook = tempfile::tempdir().expect("tempdir");
    std::env::set_var("SLUICE_TEST_COMMIT_PAUSE", hook.path());
    let (d, _ready) = Sluiced::start(&config(
        P,
        "[port:sink]\ndevargs = net_null_ncp0,no-rx=1\nofport = 1\n",
    ));
    let mut c = Client::connect(ctl_path(P)).expect("connect to sluiced's control socket");
    c.set_timeout(Some(WAIT)).expect("timeout");
    // The stream's rule is in place before its source exists.
    start_stream(&mut c, "net_null_ncp1");
    let stream = flow(100, "in_port=2", "output:1");
    let first = NodeChanges {
        generation: 1,
        expected_generation: Some(0),
        flow_ops: add_ops(std::slice::from_ref(&stream)),
        ..Default::default()
    };
    c.call::<NodeCommit>(&first).expect("the first commit");
    let id = c
        .call::<QueryNodeStatus>(&Empty {})
        .expect("node-status")
        .instance_id;

    // The paused commit: the stream's rule moves to another priority (in
    // one step: never missing, never twice) and a Service arrives.
    let moved = flow(200, "in_port=2", "output:1");
    let second = NodeChanges {
        generation: 2,
        expected_generation: Some(1),
        flow_ops: vec![
            FlowOp::Del {
                match_: stream.key_text(),
                strict: true,
            },
            FlowOp::Add { flow: moved.text() },
        ],
        services: serde_json::from_value(serde_json::json!({"upsert": [{
            "name": "default/paused:http", "protocol": "tcp", "port": 80,
            "cluster_ips": ["10.96.7.7"],
            "endpoints": [{"ip": "10.1.7.7", "port": 8080}],
        }]}))
        .expect("services"),
        ..Default::default()
    };
    let phases = ["prepared", "parked", "published"];
    for ph in phases {
        std::fs::write(hook.path().join(format!("{id}.{ph}")), b"").expect("gate");
    }
    let committer = {
        let second = second.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(ctl_path(P)).expect("connect");
            c.set_timeout(Some(WAIT * 4)).expect("timeout");
            c.call::<NodeCommit>(&second)
        })
    };
    for ph in phases {
        let paused = hook.path().join(format!("{id}.{ph}.paused"));
        let deadline = std::time::Instant::now() + WAIT;
        while !paused.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit did not reach its '{ph}' phase within {WAIT:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The committer is stopped here: the stream must keep flowing.
        let before = pmd_tx(&mut c);
        let deadline = std::time::Instant::now() + WAIT;
        let mut now = before;
        while now < before + 10_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "with the committing thread stopped at '{ph}', the PMD sent {} frames in {WAIT:?}: it is held by the commit",
                now - before
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
            now = pmd_tx(&mut c);
        }
        println!(
            "committer stopped at '{ph}': the PMD sent {} frames meanwhile",
            now - before
        );
        std::fs::remove_file(hook.path().join(format!("{id}.{ph}"))).expect("open the gate");
    }
    let r = committer
        .join()
        .expect("the committing client")
        .expect("the paused commit applies once resumed");
    assert_eq!(r.generation, 2);
    let st = c.call::<QueryNodeStatus>(&Empty {}).expect("node-status");
    assert_eq!(st.generation, 2);
    let expect = apply(&apply(&NodeProgram::default(), &first), &second);
    assert_eq!(
        c.call::<QueryNodeProgram>(&Empty {}).expect("node-program"),
        expect
    );
    let dump = c.call_text::<&str>("dump-flows", &[]).expect("dump-flows");
    assert!(
        dump.contains("priority=200") && !dump.contains("priority=100"),
        "{dump}"
    );
    drop(c);
    // The commit's log line: the attempt the PMD gave up while the
    // committer was stopped inside the barrier, then the one published.
    let log = strip_ansi(
        &std::fs::read_to_string(d.dir.path().join("sluiced.stderr")).expect("sluiced's log"),
    );
    let line = log
        .lines()
        .find(|l| l.contains("generation 2 in force"))
        .unwrap_or_else(|| {
            panic!(
                "no log line of the paused commit in:
{log}"
            )
        });
    let attempts: u32 = line
        .split("attempts=")
        .nth(1)
        .and_then(|v| v.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no attempts in {line}"));
    assert!(
        attempts >= 2,
        "the stopped attempt was not given up: {line}"
    );
    println!("{line}");
    let ev = d.stop();
    let (sent, got) = (
        port_stat(&ev, "src", "rx_packets"),
        port_stat(&ev, "sink", "tx_packets"),
    );
    assert!(sent > 0, "{ev}");
    assert_eq!(
        sent, got,
        "stream packets lost across the paused commit: {ev}"
    );
    std::env::remove_var("SLUICE_TEST_COMMIT_PAUSE");
}

/// A `port-add` that runs while a commit has staged its pod ports but not
/// yet published them (the committer stopped at `prepared`) can take
/// neither their numbers nor their names; without a number it gets a free
/// one; once resumed, the commit publishes its port where it said.
#[test]
fn a_port_add_during_a_commit_cannot_take_its_staged_ports() {
    const P: &str = "slt-ncr";
    let Some(pods) = two_pods(
        "a_port_add_during_a_commit_cannot_take_its_staged_ports",
        P,
        P,
        "10.206.0",
    ) else {
        return;
    };
    let hook = tempfile::tempdir().expect("tempdir");
    std::env::set_var("SLUICE_TEST_COMMIT_PAUSE", hook.path());
    let (d, _ready) = Sluiced::start_in(
        &pods.node,
        &config(
            P,
            "[port:sink]\ndevargs = net_null_ncr0,no-rx=1\nofport = 1\n",
        ),
    );
    std::env::remove_var("SLUICE_TEST_COMMIT_PAUSE");
    let mut c = Client::connect(ctl_path(P)).expect("connect to sluiced's control socket");
    c.set_timeout(Some(WAIT)).expect("timeout");
    let id = c
        .call::<QueryNodeStatus>(&Empty {})
        .expect("node-status")
        .instance_id;
    std::fs::write(hook.path().join(format!("{id}.prepared")), b"").expect("gate");
    let commit = NodeChanges {
        generation: 1,
        expected_generation: Some(0),
        ports_added: BTreeMap::from([("pod-a".to_string(), pod(5, &format!("{P}a-o")))]),
        ..Default::default()
    };
    let committer = std::thread::spawn(move || {
        let mut c = Client::connect(ctl_path(P)).expect("connect");
        c.set_timeout(Some(WAIT * 2)).expect("timeout");
        c.call::<NodeCommit>(&commit)
    });
    let paused = hook.path().join(format!("{id}.prepared.paused"));
    let deadline = std::time::Instant::now() + WAIT;
    while !paused.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the commit did not reach its 'prepared' phase within {WAIT:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let add = devargs_port;
    let mut c2 = Client::connect(ctl_path(P)).expect("connect");
    c2.set_timeout(Some(WAIT)).expect("timeout");
    let e = api_err(c2.call::<sluice_api::ports::PortAdd>(&add("x", Some(5), "net_null_ncr1")));
    assert_eq!(e.code, ErrorCode::AlreadyExists, "{e:?}");
    assert!(e.message.contains("pod-a"), "{}", e.message);
    let e = api_err(c2.call::<sluice_api::ports::PortAdd>(&add("pod-a", None, "net_null_ncr2")));
    assert_eq!(e.code, ErrorCode::AlreadyExists, "{e:?}");
    let y = c2
        .call::<sluice_api::ports::PortAdd>(&add("y", None, "net_null_ncr3"))
        .expect("port-add y with a free number");
    assert!(
        y.ofport != 5 && y.ofport != 1,
        "port-add took a number in use or staged: {}",
        y.ofport
    );
    std::fs::remove_file(hook.path().join(format!("{id}.prepared"))).expect("open the gate");
    let r = committer
        .join()
        .expect("the committing client")
        .expect("the commit applies once resumed");
    assert_eq!(r.generation, 1);
    let dump = c
        .call::<sluice_api::ports::DumpPorts>(&sluice_api::ports::DumpPortsRequest::default())
        .expect("dump-ports");
    let of = |name: &str| {
        dump.ports
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no port {name} in {dump:?}"))
            .ofport
    };
    assert_eq!((of("pod-a"), of("y"), of("sink")), (5, y.ofport, 1));
    drop(d);
}
