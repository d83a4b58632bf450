//! The real node stack for end-to-end tests: `sluiced` (DPDK, the flow
//! pipeline, an af_packet uplink on a veth pair the test owns, a TAP host
//! port) and `sluice-agent`, both the binaries cargo built beside the
//! tests, stopped (SIGTERM, then SIGKILL) on drop ([`Daemon`]).

use std::path::Path;
use std::process::{Command, Stdio};

use sluice_api::node::{NodeProgram, NodeStatus, QueryNodeProgram, QueryNodeStatus};
use sluice_api::Empty;
use sluice_testkit::node::SluicedIni;
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

/// Starts sluiced (in the root namespace, uplink [`UPLINK`], host port
/// `slce-host`) and waits for its `ready` event.
pub fn start_sluiced(dir: &Path, ctl: &Path, prefix: &str) -> Daemon {
    let ini = SluicedIni {
        prefix,
        ctl,
        uplink_if: UPLINK,
        host_if: "slce-host",
    };
    let bin = built("sluiced").expect("the sluiced binary");
    sluice_testkit::node::start_sluiced(&bin, &ini.render(), None, dir, "sluiced")
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
