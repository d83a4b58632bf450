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
