//! The real node stack for end-to-end tests: `sluiced` (DPDK, the flow
//! pipeline, an af_packet uplink on a veth pair the test owns, a TAP host
//! port) and `sluice-agent`, both the binaries cargo built beside the
//! tests, stopped (SIGTERM, then SIGKILL) on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use sluice_api::node::{NodeProgram, NodeStatus, QueryNodeProgram, QueryNodeStatus};
use sluice_api::Empty;

use super::{ready, report_skip, Nestdb, WAIT};

/// The uplink: one end of a veth pair the test owns, without addresses
/// (sluiced's host path finds nothing to move off it).
const UPLINK: &str = "slce-up";

/// The uplink veth pair, deleted on drop.
pub struct UplinkVeth;

impl UplinkVeth {
    pub fn new() -> UplinkVeth {
        let _ = Command::new("ip")
            .args(["link", "del", UPLINK])
            .stderr(Stdio::null())
            .status();
        let st = Command::new("ip")
            .args([
                "link", "add", UPLINK, "type", "veth", "peer", "name", "slce-upp",
            ])
            .status()
            .unwrap();
        assert!(st.success(), "create the uplink veth");
        for dev in [UPLINK, "slce-upp"] {
            let st = Command::new("ip")
                .args(["link", "set", dev, "up"])
                .status()
                .unwrap();
            assert!(st.success());
        }
        UplinkVeth
    }
}

impl Drop for UplinkVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", UPLINK])
            .stderr(Stdio::null())
            .status();
    }
}

/// A binary cargo built beside this test.
pub fn built(name: &str) -> Option<PathBuf> {
    let p = std::env::current_exe().ok()?.parent()?.parent()?.join(name);
    p.is_file().then_some(p)
}

/// The last CPU this process may use (the PMD core).
pub fn pmd_core() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("0")
        .trim()
        .split(',')
        .filter_map(|p| p.rsplit('-').next()?.parse::<usize>().ok())
        .max()
        .unwrap_or(0)
}

/// A daemon child process: SIGTERM, then SIGKILL, on drop.
pub struct Daemon {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Daemon {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited with {st}:\n{}", self.what, self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; a stale pid is harmless
        // because the child is not reaped until wait below.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
            pmd_core(),
            ctl.display()
        ),
    )
    .unwrap();
    let log = dir.join("sluiced.log");
    let mut child = Command::new(built("sluiced").unwrap())
        .arg("--config")
        .arg(&ini)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start sluiced");
    let (tx, rx) = channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut d = Daemon {
        child,
        what: "sluiced",
        log,
    };
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
    let child = Command::new(built("sluice-agent").unwrap())
        .arg("--db")
        .arg(db.remote())
        .arg("--ctl")
        .arg(ctl)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start sluice-agent");
    Daemon {
        child,
        what: "sluice-agent",
        log,
    }
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
