//! The pod-port driver the agent's ports get, with a real `sluiced` (DPDK,
//! its own `--file-prefix`, one PMD, in its own network namespace) and
//! real veths: af_packet by default; af_xdp, asked for, where it can
//! work, and af_packet per port, logged with the reason, where it cannot.
//!
//! - a one-queue veth (what the CNI creates), one queue asked: af_xdp;
//! - a one-queue veth, two queues asked: af_xdp cannot work (too few veth
//!   queues), the port opens with af_packet and sluiced logs why;
//! - a two-queue veth, two queues asked: af_xdp, or af_packet with the
//!   af_xdp open's failure logged (this VM's kernel refuses the second
//!   queue: the fallback learnt by opening);
//! - af_packet asked for explicitly: af_packet, no fallback logged;
//! - the fallbacks visible: `dump-ports` (typed and as text, what
//!   `sluicectl dump-ports` prints) names the ports that fell back and
//!   why, the others not; sluiced's Prometheus metrics count them
//!   (`sluice_pod_driver_fallbacks_total`) and flag each such port;
//! - a node commit's pod port (the agent's path) asking for af_xdp: af_xdp.
//!
//! Needs root and the `sluiced` binary of this build; skips with the
//! reason recorded otherwise. Everything it makes goes on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_api::node::{
    DriverHint, NodeChanges, NodeCommit, NodeProgram, PortKind as NodePortKind, PortSpec,
    QueryNodeProgram, QueryNodeStatus,
};
use sluice_api::ports::{
    DumpPorts, DumpPortsRequest, PodDriver, PortAdd, PortAddRequest, PortKind,
};
use sluice_api::{Client, Empty};
use sluice_testkit::node::{ctl_socket, start_sluiced, SluicedIni};
use sluice_testkit::{built_or_skip, root_or_skip, sh, Netns};

const WAIT: Duration = Duration::from_secs(90);
const PREFIX: &str = "slt-pdrv";
const NS: &str = "slt-pdrv-node";
/// sluiced's metrics port, inside the test's own namespace.
const METRICS_PORT: u16 = 9476;

/// sluiced's `/metrics`, fetched inside the namespace with bash's
/// `/dev/tcp` (no HTTP client needed).
fn metrics() -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", NS, "bash", "-c"])
        .arg(format!(
            "exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT} && printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3"
        ))
        .output()
        .expect("run bash in the namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one metrics sample line that starts with `prefix`.
fn sample(m: &str, prefix: &str) -> Option<f64> {
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn ctl() -> PathBuf {
    ctl_socket(PREFIX)
}

/// A veth pair inside the node namespace with `queues` queues each way.
fn veth(outer: &str, inner: &str, queues: u16) {
    let q = queues.to_string();
    sh(&[
        "ip",
        "-n",
        NS,
        "link",
        "add",
        outer,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        inner,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ]);
    sh(&["ip", "-n", NS, "link", "set", outer, "up"]);
    sh(&["ip", "-n", NS, "link", "set", inner, "up"]);
}

fn client() -> Client {
    let mut c = Client::connect(ctl()).expect("connect to sluiced");
    c.set_timeout(Some(WAIT)).unwrap();
    c
}

fn add(name: &str, iface: &str, driver: Option<PodDriver>, rx_queues: u16) -> String {
    client()
        .call::<PortAdd>(&PortAddRequest {
            name: name.into(),
            ofport: None,
            kind: PortKind::Pod {
                iface: iface.into(),
                driver,
            },
            rx_queues,
        })
        .unwrap_or_else(|e| panic!("port-add {name}: {e}"))
        .driver
}

#[test]
fn pod_ports_default_to_af_xdp_and_fall_back_to_af_packet_per_port() {
    if !root_or_skip!("needs root (namespace, DPDK)") {
        return;
    }
    let Some(bin) = built_or_skip!("sluiced", "cargo build -p sluice-datapath --bin sluiced")
    else {
        return;
    };
    let ns = Netns::new(NS);
    veth("slpd-up", "slpd-up-p", 1);
    veth("slpd-one", "slpd-one-p", 1);
    veth("slpd-few", "slpd-few-p", 1);
    veth("slpd-two", "slpd-two-p", 2);
    veth("slpd-pkt", "slpd-pkt-p", 1);
    veth("slpd-cmt", "slpd-cmt-p", 1);
    let dir = tempfile::tempdir().unwrap();
    let ctl = ctl();
    let ini = SluicedIni {
        prefix: PREFIX,
        ctl: &ctl,
        uplink_if: "slpd-up",
        host_if: "slpd-host",
    };
    // The metrics endpoint too: the fallbacks show there.
    let text = ini.render().replace(
        "host_port = host\n",
        &format!("host_port = host\nmetrics_address = 127.0.0.1:{METRICS_PORT}\n"),
    );
    let sluiced = start_sluiced(&bin, &text, Some(&ns), dir.path(), "sluiced");
    let log = || sluiced.log();

    assert_eq!(PodDriver::DEFAULT, PodDriver::AfPacket);
    let xdp = Some(PodDriver::AfXdp);
    assert_eq!(
        add("one", "slpd-one", xdp, 1),
        "net_af_xdp",
        "a one-queue veth, one queue: af_xdp; sluiced log:\n{}",
        log()
    );
    assert!(!log().contains("af_xdp cannot work"), "{}", log());

    assert_eq!(
        add("few", "slpd-few", xdp, 2),
        "net_af_packet",
        "a one-queue veth, two queues: af_packet"
    );
    let l = log();
    assert!(
        l.contains("pod port few: af_xdp cannot work here")
            && l.contains("slpd-few has 1 rx queue(s) and the port needs 2"),
        "the fallback and its reason are logged:\n{l}"
    );

    // A two-queue veth, two queues: af_xdp, or, where this kernel's
    // af_xdp refuses a second queue on a veth, af_packet with the open's
    // failure as the logged reason (the fallback learnt by opening).
    let two = add("two", "slpd-two", xdp, 2);
    let opened_fallback =
        log().contains("pod port two: af_xdp cannot work here (opening it with af_xdp failed");
    assert!(
        two == "net_af_xdp" || (two == "net_af_packet" && opened_fallback),
        "two: {two}; sluiced log:\n{}",
        log()
    );
    assert_eq!(
        add("pkt", "slpd-pkt", Some(PodDriver::AfPacket), 1),
        "net_af_packet"
    );
    assert_eq!(
        log().matches("af_xdp cannot work").count(),
        1 + usize::from(two == "net_af_packet"),
        "af_packet asked for is no fallback: {}",
        log()
    );

    // The fallbacks, visible: dump-ports names the ports and why, the
    // metrics count them.
    let fell_back = 1 + usize::from(two == "net_af_packet");
    let dump = client()
        .call::<DumpPorts>(&DumpPortsRequest::default())
        .expect("dump-ports");
    let why = |name: &str| {
        dump.ports
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no port {name} in {dump:?}"))
            .fallback
            .clone()
    };
    assert!(
        why("few").is_some_and(|w| w.contains("slpd-few has 1 rx queue(s) and the port needs 2")),
        "{dump:?}"
    );
    assert_eq!(why("one"), None, "af_xdp as asked: no fallback");
    assert_eq!(why("pkt"), None, "af_packet asked for is no fallback");
    assert_eq!(why("two").is_some(), two == "net_af_packet", "{dump:?}");
    assert_eq!(why("uplink"), None);
    let text = client()
        .call_text::<&str>("dump-ports", &[])
        .expect("dump-ports text");
    assert_eq!(
        text.matches("fell back from af_xdp to af_packet: ").count(),
        fell_back,
        "{text}"
    );
    assert!(
        text.contains("fell back from af_xdp to af_packet: slpd-few has 1 rx queue(s)"),
        "{text}"
    );
    let m = metrics();
    assert_eq!(
        sample(&m, "sluice_pod_driver_fallbacks_total "),
        Some(fell_back as f64),
        "metrics:\n{m}"
    );
    assert_eq!(
        sample(&m, "sluice_port_driver_fallback{port=\"few\""),
        Some(1.0),
        "metrics:\n{m}"
    );
    assert_eq!(
        sample(&m, "sluice_port_driver_fallback{port=\"one\""),
        Some(0.0),
        "metrics:\n{m}"
    );

    // The agent's path: a node commit's pod port asking for af_xdp.
    let mut c = client();
    let g = c.call::<QueryNodeStatus>(&Empty {}).unwrap().generation;
    let mut changes = NodeChanges {
        generation: g + 1,
        expected_generation: Some(g),
        ..NodeChanges::default()
    };
    changes.ports_added.insert(
        "pod-c".into(),
        PortSpec {
            ofport: 40,
            kind: NodePortKind::Pod {
                interface: "slpd-cmt".into(),
            },
            driver: DriverHint::AfXdp,
        },
    );
    c.call::<NodeCommit>(&changes)
        .unwrap_or_else(|e| panic!("node-commit: {e}\n{}", log()));
    let dump = c
        .call_text::<&str>("dump-ports", &[])
        .unwrap_or_else(|e| panic!("dump-ports: {e}"));
    let line = dump
        .lines()
        .find(|l| l.contains("slpd-cmt"))
        .unwrap_or_else(|| panic!("no pod-c in dump-ports:\n{dump}"));
    assert!(line.contains("net_af_xdp"), "{line}\n{dump}");
    let prog: NodeProgram = c.call::<QueryNodeProgram>(&Empty {}).unwrap();
    assert!(prog.ports.contains_key("pod-c"));
}

/// `sluice-agent --max-commit-bytes`: 0 and values above sluiced's control
/// socket limit are refused at start with a sentence saying why (clap's
/// usage error, exit status 2); the default is 32 MiB. Needs no root.
#[test]
fn max_commit_bytes_out_of_range_is_refused() {
    let agent = env!("CARGO_BIN_EXE_sluice-agent");
    let limit = sluice_api::node::control_socket_limit();
    for (value, why) in [
        ("0".to_string(), "would fit no change at all"),
        (
            (limit + 1).to_string(),
            "is above the largest request sluiced's control socket accepts (67108864 bytes)",
        ),
        ("lots".to_string(), "is not a number of bytes"),
    ] {
        let out = Command::new(agent)
            .args(["--max-commit-bytes", &value])
            .args([
                "--db",
                "unix:/nonexistent/slt-pdrv.sock",
                "--ctl",
                "/nonexistent/slt-pdrv.ctl",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run sluice-agent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--max-commit-bytes {value}: {err}"
        );
        assert!(err.contains(why), "--max-commit-bytes {value}: {err}");
    }
    let help = Command::new(agent)
        .arg("--help")
        .output()
        .expect("run sluice-agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--max-commit-bytes <BYTES>") && help.contains("[default: 33554432]"),
        "{help}"
    );
}
