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
//! - a node commit's pod port (the agent's path) asking for af_xdp: af_xdp.
//!
//! Needs root and the `sluiced` binary of this build; skips with the
//! reason recorded otherwise. Everything it makes goes on drop.

use std::path::PathBuf;
use std::time::Duration;

use sluice_api::node::{
    DriverHint, NodeChanges, NodeCommit, NodeProgram, PortKind as NodePortKind, PortSpec,
    QueryNodeProgram, QueryNodeStatus,
};
use sluice_api::ports::{PodDriver, PortAdd, PortAddRequest, PortKind};
use sluice_api::{Client, Empty};
use sluice_testkit::node::{ctl_socket, start_sluiced, SluicedIni};
use sluice_testkit::{built_or_skip, root_or_skip, sh, Netns};

const WAIT: Duration = Duration::from_secs(90);
const PREFIX: &str = "slt-pdrv";
const NS: &str = "slt-pdrv-node";

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
    let sluiced = start_sluiced(&bin, &ini.render(), Some(&ns), dir.path(), "sluiced");
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
