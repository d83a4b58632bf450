//! `sluice-bootstrap supervise`: the node's addresses come back on the
//! uplink whenever the supervised datapath dies, and at the next start if
//! the supervisor died too. A stand-in for sluiced (python3, in the node's
//! namespace) creates a non-persistent TAP, as net_tap does, moves the
//! uplink's address and a static route onto it, and is SIGKILLed: its TAP
//! and the address vanish with it, and the supervisor puts them back on
//! the uplink, where a peer reaches the node again.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn report_skip(line: &str) {
    sluice_testkit::record_skip(env!("CARGO_TARGET_TMPDIR"), line);
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

struct Ns(&'static str);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).output();
    }
}

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

fn supervise(state: &Path, child: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", "slsv-node"])
        .arg(env!("CARGO_BIN_EXE_sluice-bootstrap"))
        .arg("--state-dir")
        .arg(state)
        .args([
            "--node-if",
            "up0",
            "--host-if",
            "sv-host",
            "supervise",
            "--",
        ])
        .args(child)
        .stdout(Stdio::piped())
        .spawn()
        .expect("sluice-bootstrap supervise")
}

/// The stand-in's pid, once it moved the address.
fn moved(c: &mut Child) -> i32 {
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("the stand-in did not start: {line:?}"))
}

fn wait_exit(c: &mut Child) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = c.try_wait().expect("wait") {
            return st;
        }
        assert!(t0.elapsed() < WAIT, "the supervisor did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn uplink() -> String {
    sh(&["ip", "-n", "slsv-node", "-4", "addr", "show", "dev", "up0"])
        + &sh(&["ip", "-n", "slsv-node", "-4", "route", "show", "dev", "up0"])
}

/// The peer namespace pings the node's address on the uplink (one echo,
/// within 5 s).
fn peer_reaches_the_node() {
    sh(&[
        "ip",
        "netns",
        "exec",
        "slsv-peer",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "10.78.0.1",
    ]);
}

#[test]
fn addresses_come_back_when_the_datapath_dies() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/net/tun").exists() {
        report_skip("bootstrap_supervise: needs root and /dev/net/tun");
        return;
    }
    for n in ["slsv-node", "slsv-peer"] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
        sh(&["ip", "netns", "add", n]);
    }
    let _ns = (Ns("slsv-node"), Ns("slsv-peer"));
    sh(&[
        "ip",
        "-n",
        "slsv-node",
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
        "netns",
        "slsv-peer",
    ]);
    sh(&[
        "ip",
        "-n",
        "slsv-node",
        "addr",
        "add",
        "10.78.0.1/24",
        "dev",
        "up0",
    ]);
    sh(&["ip", "-n", "slsv-node", "link", "set", "up0", "up"]);
    sh(&[
        "ip",
        "-n",
        "slsv-node",
        "route",
        "add",
        "10.79.0.0/24",
        "via",
        "10.78.0.2",
        "dev",
        "up0",
    ]);
    sh(&[
        "ip",
        "-n",
        "slsv-peer",
        "addr",
        "add",
        "10.78.0.2/24",
        "dev",
        "peer0",
    ]);
    sh(&["ip", "-n", "slsv-peer", "link", "set", "peer0", "up"]);
    let state = tempfile::tempdir().expect("tempdir");

    // 1. The datapath is SIGKILLed: the supervisor puts the address and the
    // route back and exits with 128 + 9.
    let mut sup = supervise(state.path(), &["python3", "-c", FAKE_SLUICED]);
    let pid = moved(&mut sup);
    assert!(!uplink().contains("10.78.0.1/24"), "moved: {}", uplink());
    sh(&["kill", "-KILL", &pid.to_string()]);
    let st = wait_exit(&mut sup);
    assert_eq!(st.code(), Some(137), "the datapath's status");
    let up = uplink();
    assert!(up.contains("10.78.0.1/24"), "{up}");
    assert!(up.contains("10.79.0.0/24 via 10.78.0.2"), "{up}");
    peer_reaches_the_node();
    assert!(!state.path().join("node-ip.json").exists(), "record kept");

    // 2. Supervisor and datapath both killed: the next supervisor moves the
    // addresses back before starting its datapath.
    let mut sup = supervise(state.path(), &["python3", "-c", FAKE_SLUICED]);
    let pid = moved(&mut sup);
    let _ = sup.kill();
    let _ = sup.wait();
    sh(&["kill", "-KILL", &pid.to_string()]);
    assert!(
        state.path().join("node-ip.json").exists(),
        "the move is recorded"
    );
    let gone = uplink();
    assert!(!gone.contains("10.78.0.1/24"), "{gone}");
    let mut sup = supervise(state.path(), &["true"]);
    assert_eq!(wait_exit(&mut sup).code(), Some(0));
    let up = uplink();
    assert!(
        up.contains("10.78.0.1/24") && up.contains("10.79.0.0/24"),
        "{up}"
    );
    peer_reaches_the_node();
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/net/tun").exists() {
        report_skip("bootstrap_supervise: needs root and /dev/net/tun");
        return;
    }
    let (node, peer) = ("slsh-node", "slsh-peer");
    for n in [node, peer] {
        let _ = Command::new("ip").args(["netns", "del", n]).output();
        sh(&["ip", "netns", "add", n]);
    }
    let _ns = (Ns(node), Ns(peer));
    sh(&[
        "ip", "-n", node, "link", "add", "up0", "type", "veth", "peer", "name", "peer0", "netns",
        peer,
    ]);
    sh(&[
        "ip",
        "-n",
        node,
        "addr",
        "add",
        "10.78.0.1/24",
        "dev",
        "up0",
    ]);
    sh(&["ip", "-n", node, "link", "set", "up0", "up"]);
    sh(&[
        "ip",
        "-n",
        peer,
        "addr",
        "add",
        "10.78.0.2/24",
        "dev",
        "peer0",
    ]);
    sh(&["ip", "-n", peer, "link", "set", "peer0", "up"]);
    let state = tempfile::tempdir().expect("tempdir");
    let run = tempfile::tempdir().expect("tempdir");
    let ctl = run.path().join("sluiced.ctl");
    let ctl_s = ctl.display().to_string();
    let start = |child: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", node])
            .arg(env!("CARGO_BIN_EXE_sluice-bootstrap"))
            .arg("--state-dir")
            .arg(state.path())
            .args([
                "--node-if",
                "up0",
                "--host-if",
                "sv-host",
                "supervise",
                "--",
            ])
            .args(child)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice-bootstrap supervise")
    };
    let addr = |dev: &str| sh(&["ip", "-n", node, "-4", "addr", "show", "dev", dev]);
    // The old datapath, as the DaemonSet runs it (with --take-over: no
    // sluiced answers yet, so it starts as usual).
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
    // The stand-in reads its own argv: the extra flags are the
    // supervisor's business only.
    let old_pid = moved(&mut old);
    assert!(
        !addr("up0").contains("10.78.0.1/24"),
        "moved: {}",
        addr("up0")
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
    let new_pid = moved(&mut new);
    assert!(
        addr("sv-new").contains("10.78.0.1/24"),
        "{}",
        addr("sv-new")
    );
    assert!(!addr("up0").contains("10.78.0.1/24"), "{}", addr("up0"));
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
    assert!(!addr("up0").contains("10.78.0.1/24"), "{}", addr("up0"));
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
    assert!(addr("up0").contains("10.78.0.1/24"), "{}", addr("up0"));
    sh(&[
        "ip",
        "netns",
        "exec",
        peer,
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "10.78.0.1",
    ]);
}
