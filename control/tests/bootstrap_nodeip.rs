//! `sluice-bootstrap move` / `move-back` / `--uninstall` on a node made of
//! network namespaces: the node IP, its default route and a static route
//! move from the uplink (`node-if`) to the host port (`host0`) and back
//! while a TCP connection to an "API server" in another namespace, reached
//! through the uplink's gateway, stays up and carries data after every
//! move; a move or move-back stopped after any step (a crash) leaves the
//! connection working and a re-run finishes the job.
//!
//! Topology (TEST-NET addresses, all in namespaces the test makes):
//!
//! ```text
//!  node ns                      wire ns (bridge br0)          api ns
//!  node-if 192.0.2.10/24 ─ w-up ┐                             198.51.100.1/32 on lo
//!  host0 (no address)   ─ w-host├─ br0 ─ w-api ─ api0 192.0.2.1/24 (the gateway)
//!  default via 192.0.2.1 metric 100; 203.0.113.0/24 via 192.0.2.1 proto static
//! ```
//!
//! `host0` and `node-if` sit on the same bridge, as the host exception
//! port and the uplink sit on sluiced's switch: once `host0` carries the
//! node IP and the uplink's MAC, traffic flows through it. Two ports with
//! one MAC on a learning bridge is also what made the crash test flaky
//! (one run in six): the isolated uplink's IPv6 router solicitations
//! pulled the node's MAC to its bridge port, where every answer was
//! dropped. The move now silences the uplink's IPv6, and the tests check
//! it is silent after a move and as it was after a move back.
//!
//! A failed exchange prints every namespace's addresses, routes,
//! neighbours, sockets and counters and the bridge's forwarding table;
//! with `BSB_PCAP_DIR=DIR`, each lab also writes `DIR/bsb-TAG.pcapng`
//! (`dumpcap` on the three bridge ports).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-bootstrap");
/// Generous bound for anything on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(90);
const NODE_IP: &str = "192.0.2.10/24";
const API: &str = "198.51.100.1:6443";

fn report_skip(line: &str) {
    sluice_testkit::record_skip(env!("CARGO_TARGET_TMPDIR"), line);
}

fn can_use_netns(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !ip {
        report_skip(&format!(
            "SKIP bootstrap_nodeip::{test}: needs root and iproute2 to create network namespaces"
        ));
    }
    root && ip
}

use sluice_testkit::{sh, sh_quiet};

/// A network namespace, deleted (with its interfaces) on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        sh_quiet(&["ip", "netns", "del", name]);
        sh(&["ip", "netns", "add", name]);
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        Netns(name.to_string())
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["ip", "-n", &self.0];
        a.extend_from_slice(args);
        sh(&a)
    }

    /// Runs `f` on a thread inside this namespace; sockets it makes stay
    /// in the namespace.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns(2) with a valid namespace fd changes only this
            // thread's network namespace; the thread ends after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        sh_quiet(&["ip", "netns", "del", &self.0]);
    }
}

/// The three namespaces and an open "API server" connection.
struct Lab {
    node: Netns,
    wire: Netns,
    api: Netns,
    conn: BufReader<TcpStream>,
    sent: u32,
    state: tempfile::TempDir,
    /// `dumpcap` on the bridge ports, when `BSB_PCAP_DIR` asks for one.
    capture: Option<std::process::Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.capture.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let node = Netns::new(&format!("bsb-{tag}-node"));
        let wire = Netns::new(&format!("bsb-{tag}-wire"));
        let api = Netns::new(&format!("bsb-{tag}-api"));
        wire.ip(&["link", "add", "br0", "type", "bridge"]);
        wire.ip(&["link", "set", "br0", "up"]);
        for (ns, dev, peer) in [
            (&node, "node-if", "w-up"),
            (&node, "host0", "w-host"),
            (&api, "api0", "w-api"),
        ] {
            ns.ip(&[
                "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", &wire.0,
            ]);
            wire.ip(&["link", "set", peer, "master", "br0"]);
            wire.ip(&["link", "set", peer, "up"]);
        }
        api.ip(&["addr", "add", "192.0.2.1/24", "dev", "api0"]);
        api.ip(&["link", "set", "api0", "up"]);
        api.ip(&["addr", "add", "198.51.100.1/32", "dev", "lo"]);
        api.ip(&["addr", "add", "203.0.113.1/32", "dev", "lo"]);
        node.ip(&["addr", "add", NODE_IP, "dev", "node-if"]);
        node.ip(&["link", "set", "node-if", "up"]);
        node.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
            "dev",
            "node-if",
            "metric",
            "100",
        ]);
        node.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            "192.0.2.1",
            "dev",
            "node-if",
            "proto",
            "static",
        ]);
        // The API server: echoes lines back.
        let listener = api.enter(|| TcpListener::bind(API).expect("bind the API server"));
        std::thread::spawn(move || {
            if let Ok((s, _)) = listener.accept() {
                s.set_read_timeout(Some(WAIT * 4)).ok();
                let mut w = s.try_clone().expect("clone");
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if writeln!(w, "{line}").is_err() {
                        break;
                    }
                }
            }
        });
        let conn = node.enter(|| {
            let addr: SocketAddr = API.parse().unwrap();
            TcpStream::connect_timeout(&addr, WAIT).expect("connect to the API server")
        });
        conn.set_read_timeout(Some(WAIT)).unwrap();
        conn.set_write_timeout(Some(WAIT)).unwrap();
        let capture = std::env::var_os("BSB_PCAP_DIR").map(|dir| {
            let file = std::path::Path::new(&dir).join(format!("bsb-{tag}.pcapng"));
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &wire.0, "dumpcap", "-q"]);
            for p in ["w-up", "w-host", "w-api"] {
                c.args(["-i", p]);
            }
            c.arg("-w").arg(file);
            c.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("run dumpcap")
        });
        let mut lab = Lab {
            node,
            wire,
            api,
            conn: BufReader::new(conn),
            sent: 0,
            state: tempfile::tempdir().expect("state directory"),
            capture,
        };
        lab.exchange("connected");
        lab
    }

    /// Sends a line over the API connection and waits (bounded) for its
    /// echo.
    fn exchange(&mut self, when: &str) {
        self.sent += 1;
        let msg = format!("line {} ({when})", self.sent);
        writeln!(self.conn.get_mut(), "{msg}")
            .unwrap_or_else(|e| panic!("API connection broken {when}: {e}"));
        let mut got = String::new();
        if let Err(e) = self.conn.read_line(&mut got) {
            panic!(
                "no echo from the API server {when}: {e}\n{}",
                self.network_state()
            );
        }
        assert_eq!(got.trim_end(), msg, "API connection {when}");
    }

    /// Addresses, routes, neighbours, filters and counters of every
    /// namespace, and the bridge's forwarding table: what a failure
    /// message needs to say where the connection died.
    fn network_state(&self) -> String {
        let mut out = String::new();
        let run = |args: &[&str]| {
            let o = Command::new(args[0]).args(&args[1..]).output();
            match o {
                Ok(o) => format!(
                    "$ {}\n{}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("$ {}: {e}\n", args.join(" ")),
            }
        };
        for ns in [&self.node.0, &self.wire.0, &self.api.0] {
            for cmd in [
                &["ip", "-s", "addr"][..],
                &["ip", "route", "show", "table", "all"],
                &["ip", "neigh"],
                &["nstat", "-asz"],
                &["ss", "-tinoe"],
            ] {
                let mut a = vec!["ip", "netns", "exec", ns.as_str()];
                a.extend_from_slice(cmd);
                out += &run(&a);
            }
        }
        for dev in ["node-if", "host0"] {
            out += &run(&[
                "ip",
                "netns",
                "exec",
                &self.node.0,
                "tc",
                "-s",
                "filter",
                "show",
                "dev",
                dev,
                "ingress",
            ]);
        }
        out += &run(&[
            "ip",
            "netns",
            "exec",
            &self.wire.0,
            "bridge",
            "fdb",
            "show",
            "br",
            "br0",
        ]);
        out
    }

    fn bootstrap(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.node.0, BIN])
            .arg("--state-dir")
            .arg(self.state.path().join("bootstrap"))
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .expect("run sluice-bootstrap")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.bootstrap(args);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "sluice-bootstrap {args:?} failed:\n{log}"
        );
        log
    }

    fn addrs(&self, dev: &str) -> Vec<String> {
        let v: Value =
            serde_json::from_str(&self.node.ip(&["-j", "-4", "addr", "show", "dev", dev])).unwrap();
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    /// The uplink's `disable_ipv6` ("0", "1", or "" without IPv6).
    fn uplink_ipv6_disabled(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node.0, "cat"])
            .arg("/proc/sys/net/ipv6/conf/node-if/disable_ipv6")
            .output()
            .expect("run cat");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn addrs6(&self, dev: &str) -> Vec<String> {
        let v: Value =
            serde_json::from_str(&self.node.ip(&["-j", "-6", "addr", "show", "dev", dev])).unwrap();
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["local"].as_str().map(str::to_string))
            .collect()
    }

    fn routes(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .node
            .ip(&["-4", "route", "show"])
            .lines()
            .map(|l| l.trim().to_string())
            .collect();
        r.sort();
        r
    }

    fn mac(&self, dev: &str) -> String {
        let v: Value =
            serde_json::from_str(&self.node.ip(&["-j", "link", "show", "dev", dev])).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    }

    fn rx_packets(&self, dev: &str) -> u64 {
        let v: Value =
            serde_json::from_str(&self.node.ip(&["-j", "-s", "link", "show", "dev", dev])).unwrap();
        v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
    }

    fn route_dev(&self, to: &str) -> String {
        let out = self.node.ip(&["-4", "route", "get", to]);
        out.split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    /// The node as it is with everything on the host port.
    fn assert_on_host(&self, when: &str) {
        assert_eq!(self.addrs("host0"), [NODE_IP], "{when}");
        assert!(
            self.addrs("node-if").is_empty(),
            "{when}: {:?}",
            self.addrs("node-if")
        );
        let routes = self.routes();
        for want in [
            "default via 192.0.2.1 dev host0 metric 100",
            "203.0.113.0/24 via 192.0.2.1 dev host0 proto static",
        ] {
            assert!(
                routes.iter().any(|r| r == want),
                "{when}: no `{want}` in {routes:#?}"
            );
        }
        assert!(
            !routes.iter().any(|r| r.contains("node-if")),
            "{when}: {routes:#?}"
        );
        assert_eq!(
            self.mac("host0"),
            self.mac("node-if"),
            "{when}: the host port takes the uplink's MAC"
        );
        assert_eq!(self.route_dev("198.51.100.1"), "host0", "{when}");
        assert_eq!(self.route_dev("203.0.113.1"), "host0", "{when}");
        // The uplink says nothing with the MAC host0 took: an IPv6 router
        // solicitation or MLD report from it would make the bridge send the
        // node's frames to the uplink, whose isolation drops them.
        assert!(
            self.addrs6("node-if").is_empty(),
            "{when}: the uplink still speaks IPv6 with the node's MAC: {:?}",
            self.addrs6("node-if")
        );
    }

    /// The node as it was, everything on the uplink, IPv6 as it was.
    fn assert_back(&self, addrs0: &[String], routes0: &[String], ipv6_0: &str, when: &str) {
        assert_eq!(self.addrs("node-if"), addrs0, "{when}");
        assert!(self.addrs("host0").is_empty(), "{when}");
        assert_eq!(self.routes(), routes0, "{when}");
        assert_eq!(
            self.uplink_ipv6_disabled(),
            ipv6_0,
            "{when}: the uplink's IPv6"
        );
    }
}

#[test]
fn the_node_ip_moves_to_the_host_port_and_back_under_a_live_connection() {
    if !can_use_netns("the_node_ip_moves_to_the_host_port_and_back_under_a_live_connection") {
        return;
    }
    let mut lab = Lab::new("mv");
    let routes0 = lab.routes();
    let addrs0 = lab.addrs("node-if");
    let ipv6_0 = lab.uplink_ipv6_disabled();

    let rx = lab.rx_packets("host0");
    let log = lab.ok(&["move", "--node-if", "node-if", "--host-if", "host0"]);
    lab.assert_on_host("after the move");
    lab.exchange("after the move");
    assert!(
        lab.rx_packets("host0") > rx,
        "the API traffic does not reach host0:\n{log}"
    );

    // A re-run changes nothing.
    lab.ok(&["move", "--node-if", "node-if", "--host-if", "host0"]);
    lab.assert_on_host("after a second move");
    lab.exchange("after a second move");

    // A move between other interfaces is refused while this one is recorded.
    let out = lab.bootstrap(&["move", "--node-if", "node-if", "--host-if", "lo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("move-back"));

    let log = lab.ok(&["move-back"]);
    lab.assert_back(
        &addrs0,
        &routes0,
        &ipv6_0,
        &format!("after the move back:\n{log}"),
    );
    assert_eq!(lab.route_dev("198.51.100.1"), "node-if");
    let rx = lab.rx_packets("node-if");
    lab.exchange("after the move back");
    assert!(lab.rx_packets("node-if") > rx);
    assert!(
        !lab.state.path().join("bootstrap").exists(),
        "the move record (and the directory made for it) is gone"
    );
    let log = lab.ok(&["move-back"]);
    assert!(log.contains("nothing to move back"), "{log}");
    assert_eq!(lab.routes(), routes0);
}

#[test]
fn a_move_or_move_back_stopped_after_any_step_keeps_the_node_reachable_and_a_rerun_finishes() {
    if !can_use_netns(
        "a_move_or_move_back_stopped_after_any_step_keeps_the_node_reachable_and_a_rerun_finishes",
    ) {
        return;
    }
    let mut lab = Lab::new("cr");
    let routes0 = lab.routes();
    let addrs0 = lab.addrs("node-if");
    let ipv6_0 = lab.uplink_ipv6_disabled();
    let mv = ["move", "--node-if", "node-if", "--host-if", "host0"];
    // MAC, up, 1 address, 2 routes, 1 address removed, 2 routes removed,
    // the uplink isolated from the kernel's IP stack.
    let forward_steps = 9;
    // The uplink released, then the same without the MAC.
    let back_steps = 8;
    for n in 0..forward_steps {
        let stop = n.to_string();
        let mut args = mv.to_vec();
        args.extend(["--stop-after-step", &stop]);
        let out = lab.bootstrap(&args);
        assert_eq!(
            out.status.code(),
            Some(3),
            "move stopped after {n} steps: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.exchange(&format!("with the move stopped after {n} steps"));
        lab.ok(&mv);
        lab.assert_on_host(&format!("after a re-run of a move stopped after {n} steps"));
        lab.exchange(&format!("after a re-run of a move stopped after {n} steps"));

        // Then back, stopped after each step of the way back.
        let m = n.min(back_steps - 1);
        let stop = m.to_string();
        let out = lab.bootstrap(&["move-back", "--stop-after-step", &stop]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "move-back stopped after {m} steps: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.exchange(&format!("with the move back stopped after {m} steps"));
        // --uninstall finishes it too (and has nothing installed to remove).
        let log = lab.ok(&["--uninstall", "--root", lab.state.path().to_str().unwrap()]);
        lab.assert_back(
            &addrs0,
            &routes0,
            &ipv6_0,
            &format!("after a re-run of a move back stopped after {m} steps:\n{log}"),
        );
        lab.exchange(&format!(
            "after a re-run of a move back stopped after {m} steps"
        ));
    }
    // One more run of each stop count is not a crash: with the count at the
    // total, the move simply completes.
    let stop = forward_steps.to_string();
    let mut args = mv.to_vec();
    args.extend(["--stop-after-step", &stop]);
    lab.ok(&args);
    lab.assert_on_host("after a move with every step done");
    lab.ok(&["move-back"]);
    assert_eq!(lab.routes(), routes0);
}

#[test]
fn a_move_back_after_the_host_port_vanished_restores_the_recorded_addresses() {
    if !can_use_netns("a_move_back_after_the_host_port_vanished_restores_the_recorded_addresses") {
        return;
    }
    let mut lab = Lab::new("gone");
    let routes0 = lab.routes();
    lab.ok(&["move", "--node-if", "node-if", "--host-if", "host0"]);
    lab.assert_on_host("after the move");
    // sluiced died and its TAP went away with the node's addresses.
    lab.node.ip(&["link", "del", "host0"]);
    assert!(lab.addrs("node-if").is_empty());
    let log = lab.ok(&["move-back"]);
    assert!(log.contains("is gone"), "{log}");
    assert_eq!(lab.addrs("node-if"), [NODE_IP]);
    assert_eq!(lab.routes(), routes0, "{log}");
    lab.exchange("after the restore");
}

#[test]
fn install_moves_the_node_ip_when_the_host_port_exists_and_uninstall_undoes_everything() {
    if !can_use_netns(
        "install_moves_the_node_ip_when_the_host_port_exists_and_uninstall_undoes_everything",
    ) {
        return;
    }
    let mut lab = Lab::new("in");
    let routes0 = lab.routes();
    let root = lab.state.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let plugin = lab.state.path().join("sluice-cni");
    std::fs::write(&plugin, b"stand-in\n").unwrap();
    let plugins = lab.state.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    for p in ["loopback", "host-local"] {
        std::fs::write(plugins.join(p), p).unwrap();
    }
    let base = [
        "--root",
        root.to_str().unwrap(),
        "--cni-plugin",
        plugin.to_str().unwrap(),
        "--plugins-dir",
        plugins.to_str().unwrap(),
        "--apparmor",
        "never",
        "--node-if",
        "node-if",
    ];
    // The host port does not exist yet (the init container runs before
    // sluiced): files only, the node IP stays.
    let mut args = base.to_vec();
    args.extend(["--host-if", "nosuch0", "install"]);
    let log = lab.ok(&args);
    assert!(log.contains("does not exist yet"), "{log}");
    assert_eq!(lab.routes(), routes0);
    assert!(root.join("etc/cni/net.d/10-sluice.conflist").exists());
    // Now it does.
    let mut args = base.to_vec();
    args.extend(["--host-if", "host0", "install"]);
    lab.ok(&args);
    lab.assert_on_host("after install with the host port present");
    lab.exchange("after install");
    let log = lab.ok(&["--root", root.to_str().unwrap(), "--uninstall"]);
    assert_eq!(lab.routes(), routes0, "{log}");
    assert_eq!(lab.addrs("node-if"), [NODE_IP]);
    lab.exchange("after uninstall");
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert!(left.is_empty(), "uninstall left {left:?}:\n{log}");
}
