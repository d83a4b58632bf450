//! What the sluice-cni tests share: a real `nestdb-server` process with the
//! node schema and a `Node_Config` row, network namespaces removed on drop,
//! a stand-in for sluice-agent, and the `sluice-cni` binary run the way a
//! runtime runs it (a clean environment with the `CNI_*` variables, the
//! configuration on stdin).
//!
//! The stand-in agent, for the tests of the plugin alone (no sluiced): a
//! thread does the one thing ADD waits for, setting `Logical_Port.up = true` on every row that
//! is not up yet. It blocks in an OVSDB `wait` (no polling) and stops when
//! dropped.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod podman;
pub mod stack;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nestdb_client::node::{LogicalPort, NodeConfig, DB};
use nestdb_client::{row, Client, Condition, Datum, Error, TableRow, Transaction, WaitUntil};
use serde_json::{json, Value};

/// Upper bound of every wait; generous for a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// Where Debian's containernetworking-plugins puts host-local.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

/// The pod CIDR of the test node.
pub const POD_CIDR: &str = "10.250.0.0/24";

/// Prints a skip line and appends it to `target/tmp/skips.txt`.
pub fn report_skip(line: &str) {
    sluice_testkit::record_skip(env!("CARGO_TARGET_TMPDIR"), line);
}

/// The nestdb-server binary: `$SLUICE_NESTDB_SERVER`, or the one cargo
/// built beside this test (`cargo build -p nestdb` or the workspace build).
pub fn nestdb_bin() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_NESTDB_SERVER") {
        Some(p) => Some(PathBuf::from(p)),
        None => sluice_testkit::built_binary("nestdb-server"),
    }
}

/// True when the test can run (root, iproute2, nsenter, host-local,
/// nestdb-server); otherwise records why in skips.txt.
pub fn ready(test: &str) -> bool {
    use sluice_testkit::have_tool as have;
    let why = if !sluice_testkit::is_root() {
        Some("needs root (network namespaces, veth pairs)".to_string())
    } else if !have("ip") || !have("nsenter") {
        Some("needs ip (iproute2) and nsenter (util-linux)".to_string())
    } else if !Path::new(CNI_PLUGINS).join("host-local").is_file() {
        Some(format!(
            "needs {CNI_PLUGINS}/host-local (Debian package containernetworking-plugins)"
        ))
    } else if nestdb_bin().is_none() {
        Some(
            "needs the nestdb-server binary: cargo build -p nestdb (or set SLUICE_NESTDB_SERVER)"
                .to_string(),
        )
    } else {
        None
    };
    match why {
        None => true,
        Some(w) => {
            report_skip(&format!("SKIPPED: control {test}: {w}"));
            false
        }
    }
}

/// Polls `f` until it returns Some, failing with `what` after [`WAIT`].
pub fn wait_until<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    sluice_testkit::wait_until(what, WAIT, f)
}

/// A nestdb-server with the node schema in a temporary directory; stopped
/// on drop.
pub struct Nestdb {
    server: sluice_testkit::node::Nestdb,
    pub dir: tempfile::TempDir,
}

impl Nestdb {
    /// Starts the server and, when `configured`, writes the node's
    /// `Node_Config` (pod CIDR [`POD_CIDR`], MTU 1500).
    pub fn start(configured: bool) -> Nestdb {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cni")
            .tempdir()
            .unwrap();
        let bin = nestdb_bin().expect("nestdb-server");
        let server = sluice_testkit::node::Nestdb::start(&bin, dir.path(), "nestdb");
        let db = Nestdb { server, dir };
        if configured {
            let cfg = NodeConfig {
                uplink_port: "net_null0".into(),
                vtep_ip: "192.168.50.1".parse().unwrap(),
                pod_cidrs: [POD_CIDR.to_string()].into(),
                node_ips: ["192.168.50.1".parse().unwrap()].into(),
                external_ids: Default::default(),
                ..sluice_testkit::rows::node_config()
            };
            db.client()
                .transact(&Transaction::new(DB).insert(NodeConfig::TABLE, cfg.to_row()))
                .expect("insert Node_Config");
        }
        db
    }

    pub fn remote(&self) -> String {
        self.server.remote()
    }

    pub fn client(&self) -> Client {
        self.server.client()
    }

    /// The `Logical_Port` named `name`.
    pub fn port(&self, name: &str) -> Option<LogicalPort> {
        let out = self
            .client()
            .transact(
                &Transaction::new(DB).select(LogicalPort::TABLE, vec![Condition::eq("name", name)]),
            )
            .unwrap();
        out.results[0]
            .rows()
            .unwrap()
            .first()
            .map(|r| LogicalPort::from_row(r).unwrap())
    }

    /// Every `Logical_Port`.
    pub fn ports(&self) -> Vec<LogicalPort> {
        sluice_testkit::rows::select(&self.client())
    }

    /// The IPAM data directory of this test.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The addresses host-local has leased in network `net`.
    pub fn leases(&self, net: &str) -> Vec<String> {
        leases(&self.ipam_dir(), net)
    }

    /// A plugin configuration of network `net` in `version` with host-local
    /// over the node's pod CIDR in this test's directory.
    pub fn conf(&self, net: &str, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": net,
            "type": "sluice",
            "nestdb": self.remote(),
            "portUpTimeoutMs": 30000,
            "ipam": {"type": "host-local", "dataDir": self.ipam_dir().display().to_string()},
            "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]},
        })
    }
}

/// The stand-in for sluice-agent (see the module docs).
pub struct Agent {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    pub fn start(db: &Nestdb) -> Agent {
        let client = db.client();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let not_up = || vec![Condition::eq("up", false)];
            while !s.load(Ordering::Relaxed) {
                // Blocks in the server until some row is not up (or 200 ms
                // pass, to look at the stop flag), then sets them up.
                let txn = Transaction::new(DB)
                    .wait(
                        LogicalPort::TABLE,
                        not_up(),
                        &["up"],
                        WaitUntil::NotEqual,
                        vec![],
                        Some(Duration::from_millis(200)),
                    )
                    .update(
                        LogicalPort::TABLE,
                        not_up(),
                        row([("up", Datum::from(true))]),
                    );
                match client.transact(&txn) {
                    Ok(_) => {}
                    Err(Error::Transaction { error, .. }) if error.tag == "timed out" => {}
                    Err(e) => panic!("stand-in agent: {e}"),
                }
            }
        });
        Agent {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The addresses host-local has leased in network `net` of its data
/// directory `dir`, sorted.
pub fn leases(dir: &Path, net: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(net))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A network namespace `/run/netns/NAME-PID` (unique to this process),
/// deleted on drop.
pub struct Netns {
    pub name: String,
    _ns: sluice_testkit::Netns,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let name = format!("{name}-{}", std::process::id());
        Netns {
            _ns: sluice_testkit::Netns::new(&name),
            name,
        }
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -j ARGS` inside the namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let out = sluice_testkit::sh(&[&["ip", "-n", &self.name, "-j"], args].concat());
        serde_json::from_str(&out).unwrap()
    }

    /// Deletes the namespace now.
    pub fn delete(&self) {
        sluice_testkit::sh(&["ip", "netns", "del", &self.name]);
    }
}

/// True if the host has a link named `dev`.
pub fn host_link(dev: &str) -> Option<Value> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "dev", dev])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().and_then(|a| a.first().cloned())
}

/// One run of the plugin's outcome.
#[derive(Debug)]
pub struct Run {
    pub exit: i32,
    pub stdout: Value,
    pub stderr: String,
}

impl Run {
    /// The error code; panics (with the output) if it succeeded.
    pub fn code(&self) -> u64 {
        assert_ne!(self.exit, 0, "expected a failure, got {}", self.stdout);
        self.stdout["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }

    /// Asserts that the error's `field` (`msg` or `details`) contains
    /// `text`.
    pub fn assert_says(&self, field: &str, text: &str) {
        let said = self.stdout[field].as_str().unwrap_or_default();
        assert!(
            said.contains(text),
            "{field} lacks {text:?}: {}",
            self.stdout
        );
    }

    /// Asserts success and returns stdout.
    pub fn ok(self) -> Value {
        assert_eq!(
            self.exit, 0,
            "plugin failed: {} (stderr: {})",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

/// The `CNI_*` variables of one invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub vars: Vec<(String, String)>,
}

impl Invocation {
    /// `command` for container `id`, interface eth0, namespace `netns`.
    pub fn new(command: &str, id: &str, netns: Option<&str>) -> Invocation {
        let mut vars = vec![
            ("CNI_COMMAND".to_string(), command.to_string()),
            ("CNI_CONTAINERID".to_string(), id.to_string()),
            ("CNI_IFNAME".to_string(), "eth0".to_string()),
            ("CNI_PATH".to_string(), CNI_PLUGINS.to_string()),
            (
                "CNI_ARGS".to_string(),
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{id}"),
            ),
        ];
        if let Some(ns) = netns {
            vars.push(("CNI_NETNS".to_string(), ns.to_string()));
        }
        Invocation { vars }
    }

    /// Without variable `k`.
    pub fn without(mut self, k: &str) -> Self {
        self.vars.retain(|(n, _)| n != k);
        self
    }

    /// With `k` set to `v`.
    pub fn with(mut self, k: &str, v: &str) -> Self {
        self.vars.retain(|(n, _)| n != k);
        self.vars.push((k.to_string(), v.to_string()));
        self
    }

    /// Runs the plugin binary with `stdin`.
    pub fn run_raw(&self, stdin: &[u8]) -> Run {
        use std::io::Write;
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice-cni"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run sluice-cni");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let stdout = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
        };
        Run {
            exit: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs the plugin with `conf` on stdin.
    pub fn run(&self, conf: &Value) -> Run {
        self.run_raw(conf.to_string().as_bytes())
    }
}

/// `conf` with `prevResult` set.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// The Logical_Port name the plugin uses for container `id`, eth0.
pub fn port_name(id: &str) -> String {
    format!("{id}_eth0")
}

/// A container ID unique to this process and `tag`.
pub fn container_id(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}
