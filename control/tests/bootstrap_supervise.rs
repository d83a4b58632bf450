//! `sluice-bootstrap supervise`: the node's addresses come back on the
//! uplink whenever the supervised datapath dies, and at the next start if
//! the supervisor died too. A stand-in for sluiced (python3, in the node's
//! namespace) creates a non-persistent TAP, as net_tap does, moves the
//! uplink's address and a static route onto it, and is SIGKILLed: its TAP
//! and the address vanish with it, and the supervisor puts them back on
//! the uplink, where a peer reaches the node again.

mod supervise_harness;

use sluice_testkit::sh;
use supervise_harness::{can_run, stand_in_pid, wait_exit, Uplink};

/// The stand-in: a TAP that lives as long as the process, the address and
/// route moved onto it, then its pid on stdout.
const FAKE_SLUICED: &str = r#"
import fcntl, os, struct, subprocess, sys, time
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'sv-host', 0x0002 | 0x1000))
run = lambda *a: subprocess.run(['ip'] + list(a), check=True)
run('link', 'set', 'sv-host', 'up')
run('addr', 'add', '10.78.0.1/24', 'dev', 'sv-host')
run('route', 'replace', '10.79.0.0/24', 'via', '10.78.0.2', 'dev', 'sv-host')
run('addr', 'del', '10.78.0.1/24', 'dev', 'up0')
print(os.getpid(), flush=True)
time.sleep(3600)
"#;

#[test]
fn addresses_come_back_when_the_datapath_dies() {
    if !can_run("bootstrap_supervise") {
        return;
    }
    let net = Uplink::new("slsv", "10.78.0.1/24", "10.78.0.2/24");
    net.node.ip(&[
        "route",
        "add",
        "10.79.0.0/24",
        "via",
        "10.78.0.2",
        "dev",
        "up0",
    ]);
    let uplink = || net.addresses() + &net.routes();
    let state = tempfile::tempdir().expect("tempdir");
    let supervise = |child: &[&str]| {
        net.supervise(state.path(), "sv-host")
            .args(child)
            .spawn()
            .expect("sluice-bootstrap supervise")
    };

    // 1. The datapath is SIGKILLed: the supervisor puts the address and the
    // route back and exits with 128 + 9.
    let mut sup = supervise(&["python3", "-c", FAKE_SLUICED]);
    let pid = stand_in_pid(&mut sup);
    assert!(!uplink().contains("10.78.0.1/24"), "moved: {}", uplink());
    sh(&["kill", "-KILL", &pid.to_string()]);
    let st = wait_exit(&mut sup);
    assert_eq!(st.code(), Some(137), "the datapath's status");
    let up = uplink();
    assert!(up.contains("10.78.0.1/24"), "{up}");
    assert!(up.contains("10.79.0.0/24 via 10.78.0.2"), "{up}");
    net.peer_reaches("10.78.0.1");
    assert!(!state.path().join("node-ip.json").exists(), "record kept");

    // 2. Supervisor and datapath both killed: the next supervisor moves the
    // addresses back before starting its datapath.
    let mut sup = supervise(&["python3", "-c", FAKE_SLUICED]);
    let pid = stand_in_pid(&mut sup);
    let _ = sup.kill();
    let _ = sup.wait();
    sh(&["kill", "-KILL", &pid.to_string()]);
    assert!(
        state.path().join("node-ip.json").exists(),
        "the move is recorded"
    );
    let gone = uplink();
    assert!(!gone.contains("10.78.0.1/24"), "{gone}");
    let mut sup = supervise(&["true"]);
    assert_eq!(wait_exit(&mut sup).code(), Some(0));
    let up = uplink();
    assert!(
        up.contains("10.78.0.1/24") && up.contains("10.79.0.0/24"),
        "{up}"
    );
    net.peer_reaches("10.78.0.1");
}
