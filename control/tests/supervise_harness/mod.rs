//! What the tests of `sluice-bootstrap supervise` share: a node namespace
//! whose uplink `up0` is a veth to a peer namespace (`peer0`), the node's
//! address on the uplink; the supervisor started in the node namespace
//! around a stand-in datapath (python3) that prints its pid once it moved
//! the address onto its TAP; and the bounded wait for the supervisor's
//! exit.
//!
//! Invariants: the namespaces (and with them the veth pair) are deleted on
//! drop; every wait is bounded by [`WAIT`]. Thread-safety: plain functions
//! and owned guards; each test uses its own namespace names.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use sluice_testkit::{sh, Netns};

/// The bound of every wait.
pub const WAIT: Duration = Duration::from_secs(60);

/// True when the test can run (root, `/dev/net/tun`); records the skip
/// for `test` otherwise.
pub fn can_run(test: &str) -> bool {
    let ok = sluice_testkit::is_root() && Path::new("/dev/net/tun").exists();
    if !ok {
        sluice_testkit::record_skip(
            env!("CARGO_TARGET_TMPDIR"),
            &format!("{test}: needs root and /dev/net/tun"),
        );
    }
    ok
}

/// Namespaces `{tag}-node` and `{tag}-peer` joined by the uplink veth
/// `up0` ~ `peer0`, with `node_addr` on `up0` and `peer_addr` on `peer0`
/// (both CIDR, both up).
pub struct Uplink {
    /// The node, where the supervisor runs.
    pub node: Netns,
    /// The peer that pings the node.
    pub peer: Netns,
}

impl Uplink {
    pub fn new(tag: &str, node_addr: &str, peer_addr: &str) -> Uplink {
        let node = Netns::new(&format!("{tag}-node"));
        let peer = Netns::new(&format!("{tag}-peer"));
        node.ip(&[
            "link", "add", "up0", "type", "veth", "peer", "name", "peer0", "netns", &peer.0,
        ]);
        node.ip(&["addr", "add", node_addr, "dev", "up0"]);
        node.ip(&["link", "set", "up0", "up"]);
        peer.ip(&["addr", "add", peer_addr, "dev", "peer0"]);
        peer.ip(&["link", "set", "peer0", "up"]);
        Uplink { node, peer }
    }

    /// The IPv4 addresses of `up0` (`ip addr show`).
    pub fn addresses(&self) -> String {
        uplink_addresses(&self.node.0)
    }

    /// The IPv4 routes via `up0` (`ip route show`).
    pub fn routes(&self) -> String {
        self.node.ip(&["-4", "route", "show", "dev", "up0"])
    }

    /// The peer pings `addr` on the node (one echo, within 5 s).
    pub fn peer_reaches(&self, addr: &str) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.peer.0,
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            addr,
        ]);
    }

    /// `sluice-bootstrap supervise` in the node namespace, state in
    /// `state`, node interface `up0`, host interface `host_if`, stdout
    /// piped; the caller adds `--` and the datapath's command.
    pub fn supervise(&self, state: &Path, host_if: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.node.0])
            .arg(env!("CARGO_BIN_EXE_sluice-bootstrap"))
            .arg("--state-dir")
            .arg(state)
            .args(["--node-if", "up0", "--host-if", host_if, "supervise", "--"])
            .stdout(Stdio::piped());
        c
    }
}

/// The IPv4 addresses of `up0` in namespace `node`.
pub fn uplink_addresses(node: &str) -> String {
    sh(&["ip", "-n", node, "-4", "addr", "show", "dev", "up0"])
}

/// The stand-in datapath's pid, printed once it moved the address.
pub fn stand_in_pid(c: &mut Child) -> i32 {
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("the stand-in did not start: {line:?}"))
}

/// The supervisor's exit status, within [`WAIT`].
pub fn wait_exit(c: &mut Child) -> ExitStatus {
    sluice_testkit::wait_until("the supervisor to exit", WAIT, || {
        c.try_wait().expect("wait")
    })
}
