//! `sluice-bootstrap supervise`: the node's addresses come back on the
//! uplink whenever the supervised datapath dies, and at the next start if
//! the supervisor died too. A stand-in for sluiced (python3, in the node's
//! namespace) creates a non-persistent TAP, as net_tap does, moves the
//! uplink's address and a static route onto it, and is SIGKILLed: its TAP
//! and the address vanish with it, and the supervisor puts them back on
//! the uplink, where a peer reaches the node again.

mod supervise_harness;

use std::io::{BufRead, BufReader};

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

/// A hand-over's stand-ins (argv: the control socket, the TAP's name):
/// the old one moves the address onto its TAP like FAKE_SLUICED and
/// listens on the control socket, exiting 0 on SIGTERM (as sluiced does
/// after a hand-over); the new one (`take`) moves the address from the
/// old TAP onto its own and puts its own listener in place of the old
/// one's (as a taking-over sluiced renames its socket into place).
const FAKE_HANDOVER: &str = r#"
import fcntl, os, signal, socket, struct, subprocess, sys, time
ctl, tap, take = sys.argv[1], sys.argv[2], 'take' in sys.argv
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', tap.encode(), 0x0002 | 0x1000))
run = lambda *a: subprocess.run(['ip'] + list(a), check=True)
run('link', 'set', tap, 'up')
run('addr', 'add', '10.78.0.1/24', 'dev', tap)
run('addr', 'del', '10.78.0.1/24', 'dev', 'sv-host' if take else 'up0')
l = socket.socket(socket.AF_UNIX); l.bind(ctl + '.new'); l.listen(8)
os.rename(ctl + '.new', ctl)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
print(os.getpid(), flush=True)
while True:
    l.accept()[0].close()
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

/// A hand-over under two supervisors (a DaemonSet rolling update with
/// surge): the new one, started with `--take-over` while the old datapath
/// answers on the control socket, leaves the recorded move alone; the old
/// one, whose datapath exits 0 while the new one answers, moves nothing
/// back and stays until SIGTERM (exiting 0); the address stays with the
/// new datapath throughout, and comes back to the uplink when that one
/// dies (the record the old supervisor made still holds it).
#[test]
fn a_hand_over_leaves_the_addresses_with_the_new_datapath() {
    if !can_run("bootstrap_supervise (hand-over)") {
        return;
    }
    let net = Uplink::new("slsh", "10.78.0.1/24", "10.78.0.2/24");
    let state = tempfile::tempdir().expect("tempdir");
    let run = tempfile::tempdir().expect("tempdir");
    let ctl = run.path().join("sluiced.ctl");
    let ctl_s = ctl.display().to_string();
    let start = |child: &[&str]| {
        net.supervise(state.path(), "sv-host")
            .args(child)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sluice-bootstrap supervise")
    };
    let addr = |dev: &str| net.node.ip(&["-4", "addr", "show", "dev", dev]);
    // The old datapath, as the DaemonSet runs it (with --take-over: no
    // sluiced answers yet, so it starts as usual). The stand-in reads its
    // own argv: the extra flags are the supervisor's business only.
    let mut old = start(&[
        "python3",
        "-c",
        FAKE_HANDOVER,
        &ctl_s,
        "sv-host",
        "--take-over",
        "--ctl-socket",
        &ctl_s,
    ]);
    let old_pid = stand_in_pid(&mut old);
    assert!(
        !net.addresses().contains("10.78.0.1/24"),
        "moved: {}",
        net.addresses()
    );
    // The new pod's supervisor: takes over; nothing is moved back.
    let mut new = start(&[
        "python3",
        "-c",
        FAKE_HANDOVER,
        &ctl_s,
        "sv-new",
        "take",
        "--take-over",
        "--ctl-socket",
        &ctl_s,
    ]);
    let new_pid = stand_in_pid(&mut new);
    assert!(
        addr("sv-new").contains("10.78.0.1/24"),
        "{}",
        addr("sv-new")
    );
    assert!(
        !net.addresses().contains("10.78.0.1/24"),
        "{}",
        net.addresses()
    );
    // The old datapath exits 0 (hand-over committed): its supervisor
    // leaves the address with the new one and waits.
    sh(&["kill", "-TERM", &old_pid.to_string()]);
    let mut err = BufReader::new(old.stderr.take().expect("stderr"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = err.read_line(&mut line).expect("read the supervisor's log");
        assert!(n > 0, "the old supervisor exited early: {seen}");
        seen += &line;
        if line.contains("handed over") {
            break;
        }
    }
    assert!(
        old.try_wait().expect("wait").is_none(),
        "it waits for SIGTERM"
    );
    assert!(
        addr("sv-new").contains("10.78.0.1/24"),
        "{}",
        addr("sv-new")
    );
    assert!(
        !net.addresses().contains("10.78.0.1/24"),
        "{}",
        net.addresses()
    );
    // The rollout deletes the old pod: SIGTERM, exit 0, still nothing moved.
    sh(&["kill", "-TERM", &old.id().to_string()]);
    assert_eq!(wait_exit(&mut old).code(), Some(0));
    assert!(
        addr("sv-new").contains("10.78.0.1/24"),
        "{}",
        addr("sv-new")
    );
    // The new datapath dies: its supervisor puts the address back on the
    // uplink from the record the old supervisor made.
    sh(&["kill", "-KILL", &new_pid.to_string()]);
    assert_eq!(wait_exit(&mut new).code(), Some(137));
    assert!(
        net.addresses().contains("10.78.0.1/24"),
        "{}",
        net.addresses()
    );
    net.peer_reaches("10.78.0.1");
}
