//! The processes of a node stack as the end-to-end tests start them: a
//! `nestdb-server` serving the node schema ([`Nestdb`]) and a `sluiced`
//! with one PMD, an af_packet uplink and a TAP host port
//! ([`SluicedIni`], [`start_sluiced`]), each a [`Daemon`] whose log is a
//! file in the test's directory.
//!
//! Invariants: every start waits (bounded) until the process serves (the
//! server's socket accepts, sluiced printed its `ready` event) and fails
//! the test with the process's log otherwise; a stopped or dropped fixture
//! has no process left. Thread-safety: owned guards; two tests running at
//! once must use different directories, DPDK prefixes and interfaces.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use crate::{Daemon, Netns};

/// The node schema (database `Sluice_Node`) in the source tree.
pub const NODE_SCHEMA_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/nestdb/sluice.ovsschema"
);

/// How long a process may take to start serving.
const START_LIMIT: Duration = Duration::from_secs(90);

/// A `nestdb-server` in directory `dir` whose files are `NAME.db`,
/// `NAME.sock` (its OVSDB socket), `NAME.ctl` (unixctl) and `NAME.log`
/// (stderr, kept across restarts). Stopped (SIGTERM) on drop;
/// [`Nestdb::kill`] and [`Nestdb::restart`] crash and restart it on the
/// same files.
pub struct Nestdb {
    bin: PathBuf,
    dir: PathBuf,
    name: String,
    schema: PathBuf,
    extra: Vec<String>,
    daemon: Option<Daemon>,
}

impl Nestdb {
    /// `bin` serving the node schema ([`NODE_SCHEMA_PATH`]).
    pub fn start(bin: &Path, dir: &Path, name: &str) -> Nestdb {
        Self::start_with(bin, dir, name, Path::new(NODE_SCHEMA_PATH), &[])
    }

    /// `bin` serving `schema`, with `extra` arguments (limits, …).
    pub fn start_with(bin: &Path, dir: &Path, name: &str, schema: &Path, extra: &[&str]) -> Nestdb {
        let mut db = Nestdb {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            name: name.to_string(),
            schema: schema.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            daemon: None,
        };
        db.restart();
        db
    }

    fn file(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.name))
    }

    /// The OVSDB socket.
    pub fn sock(&self) -> PathBuf {
        self.file("sock")
    }

    /// The OVSDB remote (`unix:…`) clients connect to.
    pub fn remote(&self) -> String {
        format!("unix:{}", self.sock().display())
    }

    /// A client connected to the server (feature `node-rows`).
    #[cfg(feature = "node-rows")]
    pub fn client(&self) -> nestdb_client::Client {
        nestdb_client::Client::connect(&self.remote()).expect("connect to nestdb-server")
    }

    /// What the server wrote to stderr so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.file("log")).unwrap_or_default()
    }

    /// The running server (for its pid); `None` after [`Nestdb::kill`].
    pub fn daemon(&mut self) -> Option<&mut Daemon> {
        self.daemon.as_mut()
    }

    /// SIGKILLs the server (its files stay).
    pub fn kill(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Starts the server on its files (stopping a running one first with
    /// SIGKILL) and waits until its socket accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(&self.bin);
        cmd.arg(self.file("db"))
            .arg("--schema")
            .arg(&self.schema)
            .arg(format!("--remote=punix:{}", self.sock().display()))
            .arg(format!("--unixctl={}", self.file("ctl").display()))
            .args(&self.extra)
            .stdout(Stdio::null());
        let log = self.file("log");
        let mut d = Daemon::spawn_appending(cmd, "nestdb-server", &log);
        crate::wait_for_listener(d.child(), "nestdb-server", &self.sock(), &log, START_LIMIT);
        self.daemon = Some(d);
    }
}

/// The control socket of the test sluiced with DPDK prefix `prefix`
/// (`$TMPDIR/PREFIX.ctl`): unique as the prefix is.
pub fn ctl_socket(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}.ctl"))
}

/// A test sluiced's configuration: bare-metal node, bridge `br-int`, one
/// PMD on the last CPU this process may use ([`crate::last_allowed_cpu`]),
/// main core 0, hugepages `auto`, 8192 mbufs; port `uplink` (ofport 1) is
/// `net_af_packet` on `uplink_if`, port `host` (ofport 2, the host
/// exception port) `net_tap` on `host_if`.
#[derive(Debug, Clone, Copy)]
pub struct SluicedIni<'a> {
    /// The DPDK `--file-prefix` (unique per running sluiced).
    pub prefix: &'a str,
    /// The control socket.
    pub ctl: &'a Path,
    /// The kernel interface of the uplink.
    pub uplink_if: &'a str,
    /// The TAP interface sluiced creates for the host port.
    pub host_if: &'a str,
}

impl SluicedIni<'_> {
    /// The configuration file's text.
    pub fn render(&self) -> String {
        format!(
            "[coe]\nnode_type = 'BAREMETAL'\n[nsx_node_agent]\novs_bridge = br-int\novs_uplink_port = uplink\n\
             [datapath]\ncores = {}\nmain_core = 0\nfile_prefix = {}\nhugepages = auto\nmbufs = 8192\n\
             ctl_socket = {}\nhost_port = host\n\
             [port:uplink]\ndevargs = net_af_packet0,iface={}\nofport = 1\n\
             [port:host]\ndevargs = net_tap0,iface={}\nofport = 2\n",
            crate::last_allowed_cpu(),
            self.prefix,
            self.ctl.display(),
            self.uplink_if,
            self.host_if,
        )
    }
}

/// Starts `sluiced` (`bin`) with configuration `ini` written to
/// `dir/NAME.ini`, inside network namespace `netns` when given, stderr
/// appended to `dir/NAME.log`, and waits until it prints its `ready` event
/// (its control socket serves by then). Its stdout is read to the end, so
/// it never writes into a closed pipe.
pub fn start_sluiced(
    bin: &Path,
    ini: &str,
    netns: Option<&Netns>,
    dir: &Path,
    name: &str,
) -> Daemon {
    let cfg = dir.join(format!("{name}.ini"));
    std::fs::write(&cfg, ini).unwrap_or_else(|e| panic!("write {}: {e}", cfg.display()));
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.0]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("--config").arg(&cfg).stdout(Stdio::piped());
    let mut d = Daemon::spawn_appending(cmd, "sluiced", &dir.join(format!("{name}.log")));
    let out = d.child().stdout.take().expect("sluiced's stdout is piped");
    let rx = crate::lines_of(out);
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["event"] == "ready" {
                    return d;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                let st = d.child().wait();
                panic!(
                    "sluiced closed its stdout before its ready event ({st:?}):\n{}",
                    d.log()
                );
            }
            Err(RecvTimeoutError::Timeout) => {
                d.alive();
                panic!(
                    "sluiced gave no ready event within {START_LIMIT:?}:\n{}",
                    d.log()
                );
            }
        }
    }
}
