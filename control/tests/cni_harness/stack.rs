//! The real node stack for end-to-end tests: `sluiced` (DPDK, the flow
//! pipeline, an af_packet uplink on a veth pair the test owns, a TAP host
//! port) and `sluice-agent`, both the binaries cargo built beside the
//! tests, stopped (SIGTERM, then SIGKILL) on drop ([`Daemon`]).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use sluice_api::node::{NodeProgram, NodeStatus, QueryNodeProgram, QueryNodeStatus};
use sluice_api::Empty;
use sluice_testkit::{sh, sh_quiet};

use super::{ready, report_skip, Nestdb, WAIT};

/// The uplink: one end of a veth pair the test owns, without addresses
/// (sluiced's host path finds nothing to move off it).
const UPLINK: &str = "slce-up";

/// The uplink veth pair, deleted on drop.
pub struct UplinkVeth;

impl UplinkVeth {
    pub fn new() -> UplinkVeth {
        sh_quiet(&["ip", "link", "del", UPLINK]);
        sh(&[
            "ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "slce-upp",
        ]);
        for dev in [UPLINK, "slce-upp"] {
            sh(&["ip", "link", "set", dev, "up"]);
        }
        UplinkVeth
    }
}

impl Drop for UplinkVeth {
    fn drop(&mut self) {
        sh_quiet(&["ip", "link", "del", UPLINK]);
    }
}

pub use sluice_testkit::{built_binary as built, Daemon};

/// Starts sluiced and waits for its `ready` event.
pub fn start_sluiced(dir: &Path, ctl: &Path, prefix: &str) -> Daemon {
    let ini = dir.join("sluiced.ini");
    std::fs::write(
        &ini,
        format!(
            "[coe]\nnode_type = 'BAREMETAL'\n[nsx_node_agent]\novs_bridge = br-int\novs_uplink_port = uplink\n\
             [datapath]\ncores = {}\nmain_core = 0\nfile_prefix = {prefix}\nhugepages = auto\nmbufs = 8192\n\
             ctl_socket = {}\nhost_port = host\n\
             [port:uplink]\ndevargs = net_af_packet0,iface={UPLINK}\nofport = 1\n\
             [port:host]\ndevargs = net_tap0,iface=slce-host\nofport = 2\n",
            sluice_testkit::last_allowed_cpu(),
            ctl.display()
        ),
    )
    .unwrap();
    let log = dir.join("sluiced.log");
    let mut cmd = Command::new(built("sluiced").unwrap());
    cmd.arg("--config").arg(&ini).stdout(Stdio::piped());
    let mut d = Daemon::spawn(cmd, "sluiced", &log);
    let rx = sluice_testkit::lines_of(d.child().stdout.take().unwrap());
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

pub fn start_agent(dir: &Path, db: &Nestdb, ctl: &Path) -> Daemon {
    let log = dir.join("agent.log");
    let mut cmd = Command::new(built("sluice-agent").unwrap());
    cmd.arg("--db")
        .arg(db.remote())
        .arg("--ctl")
        .arg(ctl)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    Daemon::spawn(cmd, "sluice-agent", &log)
}

pub fn ctl_client(ctl: &Path) -> sluice_api::Client {
    let mut c = sluice_api::Client::connect(ctl).expect("connect to sluiced's control socket");
    c.set_timeout(Some(WAIT)).unwrap();
    c
}

pub fn program(ctl: &Path) -> NodeProgram {
    ctl_client(ctl)
        .call::<QueryNodeProgram>(&Empty {})
        .expect("node-program")
}

pub fn status(ctl: &Path) -> NodeStatus {
    ctl_client(ctl)
        .call::<QueryNodeStatus>(&Empty {})
        .expect("node-status")
}

pub fn ready_stack(test: &str) -> bool {
    if !ready(test) {
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
