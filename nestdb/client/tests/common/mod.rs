//! Test harness: spawns a real OVSDB server in a temporary directory and a
//! cuttable proxy in front of it.
//!
//! By default the server is Debian's `ovsdb-server` (database created with
//! `ovsdb-tool create` or `create-cluster`). Set
//! `NESTDB_TEST_SERVER=/path/to/nestdb-server` to run the same tests against
//! another binary taking the same options plus `--schema FILE`; such a
//! server is expected to resume `monitor_cond_since` across restarts.
//!
//! Everything is cleaned up on drop: the server process is killed and
//! reaped, proxy threads are stopped, the temporary directory is removed.
//! Readiness is checked with bounded polling; failures panic with a message
//! that includes the server's log.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nestdb_client::{Client, Condition, Transaction};

/// Upper bound for every wait in the tests; generous for a loaded machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// Database name of the node schema.
pub const DB: &str = "Sluice_Node";

/// Path of the node schema in the repository.
pub fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nestdb/sluice.ovsschema")
}

/// How the database is stored (only meaningful for ovsdb-server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A standalone database: `monitor_cond_since` never resumes.
    Standalone,
    /// A one-server Raft cluster: transaction history is kept, so
    /// `monitor_cond_since` can resume, even across restarts.
    Clustered,
}

/// A running server; killed on drop.
pub struct TestServer {
    dir: tempfile::TempDir,
    custom: Option<PathBuf>,
    mode: Mode,
    child: Option<Child>,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}; is openvswitch installed?"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestServer {
    /// Create the database and start the server; waits until it answers.
    pub fn start(mode: Mode) -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("nestdbc")
            .tempdir()
            .expect("create a temporary directory");
        let custom = std::env::var_os("NESTDB_TEST_SERVER").map(PathBuf::from);
        let db = dir.path().join("db.db");
        if custom.is_none() {
            match mode {
                Mode::Standalone => run(Command::new("ovsdb-tool")
                    .arg("create")
                    .arg(&db)
                    .arg(schema_path())),
                Mode::Clustered => run(Command::new("ovsdb-tool")
                    .arg("create-cluster")
                    .arg(&db)
                    .arg(schema_path())
                    .arg(format!("unix:{}", dir.path().join("raft.sock").display()))),
            }
        }
        let mut s = TestServer {
            dir,
            custom,
            mode,
            child: None,
        };
        s.spawn();
        s
    }

    /// True when testing a binary from `NESTDB_TEST_SERVER`.
    pub fn is_custom(&self) -> bool {
        self.custom.is_some()
    }

    /// Whether `monitor_cond_since` is expected to resume on this server.
    pub fn expects_resume(&self) -> bool {
        self.is_custom() || self.mode == Mode::Clustered
    }

    /// The temporary directory (for proxies and extra files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("db.db")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("db.sock")
    }

    /// `unix:<socket>` of the server.
    pub fn remote(&self) -> String {
        format!("unix:{}", self.sock().display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        // A socket left by a killed server must not look like a live one.
        let _ = std::fs::remove_file(self.sock());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("server.log"))
            .expect("open the server log");
        let bin = self
            .custom
            .clone()
            .unwrap_or_else(|| PathBuf::from("ovsdb-server"));
        let mut cmd = Command::new(&bin);
        cmd.arg(self.db_path())
            .arg(format!("--remote=punix:{}", self.sock().display()))
            .arg(format!("--unixctl={}", d.join("ctl").display()))
            .arg(format!("--pidfile={}", d.join("pid").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        if self.custom.is_some() {
            cmd.arg("--schema").arg(schema_path());
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "the server exited early with {status}; log:\n{}",
                        self.log()
                    );
                }
            }
            match self.probe() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            // Bounded poll for an external process: there is no readiness
            // signal to block on.
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the server at {} was not ready within {WAIT:?} (last error: {last}); log:\n{}",
            self.remote(),
            self.log()
        );
    }

    /// Ready means: it lists our database and can commit a transaction.
    fn probe(&self) -> Result<(), String> {
        let c = Client::connect_with_timeout(&self.remote(), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let dbs = c.list_dbs().map_err(|e| e.to_string())?;
        if !dbs.iter().any(|d| d == DB) {
            return Err(format!("databases are {dbs:?}"));
        }
        if self.custom.is_none() {
            // ovsdb-server: the database must be connected (for a cluster,
            // that means it has a leader and may commit).
            let out = c
                .transact(
                    &Transaction::new("_Server")
                        .select("Database", vec![Condition::eq("name", DB)]),
                )
                .map_err(|e| e.to_string())?;
            let rows = out.results[0].rows().unwrap_or_default();
            let ok = rows.first().is_some_and(|r| {
                r.get("connected").and_then(|d| d.as_bool()) == Some(true)
                    && r.get("leader").and_then(|d| d.as_bool()) == Some(true)
            });
            if !ok {
                return Err(format!("_Server.Database says {rows:?}"));
            }
        }
        c.transact(&Transaction::new(DB).wait(
            "Remote_Node",
            vec![Condition::eq("name", "readiness-probe")],
            &["name"],
            nestdb_client::WaitUntil::Equal,
            vec![],
            Some(Duration::ZERO),
        ))
        .map(drop)
        .map_err(|e| e.to_string())
    }

    /// Kill the server abruptly (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the server again on the same database and socket.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Unix-socket proxy the test can cut (close every connection and refuse
/// new ones) and restore, to control exactly when a client is disconnected.
pub struct Proxy {
    path: PathBuf,
    shared: Arc<ProxyShared>,
    acceptor: Option<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: PathBuf,
    cut: AtomicBool,
    frozen: Arc<AtomicBool>,
    stopping: AtomicBool,
    live: Mutex<Vec<UnixStream>>,
}

impl Proxy {
    /// Listen on `dir/proxy.sock`, forwarding to the server at `upstream`.
    pub fn start(dir: &Path, upstream: &str) -> Proxy {
        let upstream = PathBuf::from(upstream.strip_prefix("unix:").expect("a unix: remote"));
        let path = dir.join("proxy.sock");
        let listener = UnixListener::bind(&path).expect("bind the proxy socket");
        let shared = Arc::new(ProxyShared {
            upstream,
            cut: AtomicBool::new(false),
            frozen: Arc::new(AtomicBool::new(false)),
            stopping: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
        });
        let sh = Arc::clone(&shared);
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(down) = conn else { continue };
                if sh.cut.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees EOF
                }
                let Ok(up) = UnixStream::connect(&sh.upstream) else {
                    continue;
                };
                let pairs = [
                    (down.try_clone(), up.try_clone()),
                    (up.try_clone(), down.try_clone()),
                ];
                {
                    // Checked under the lock `cut` takes, so no connection
                    // slips through a cut.
                    let mut live = sh.live.lock().expect("proxy lock");
                    if sh.cut.load(Ordering::SeqCst) {
                        continue;
                    }
                    live.push(down);
                    live.push(up);
                }
                for pair in pairs {
                    if let (Ok(mut from), Ok(mut to)) = pair {
                        let frozen = Arc::clone(&sh.frozen);
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 16384];
                            loop {
                                match from.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(_) if frozen.load(Ordering::SeqCst) => {}
                                    Ok(n) => {
                                        if to.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            let _ = from.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        Proxy {
            path,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `unix:<proxy socket>`.
    pub fn remote(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    /// Close every proxied connection and refuse new ones.
    pub fn cut(&self) {
        let mut live = self.shared.live.lock().expect("proxy lock");
        self.shared.cut.store(true, Ordering::SeqCst);
        for s in live.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accept and forward connections again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Keep connections open but silently drop everything sent either way,
    /// like a peer that vanished without closing (or thaw with `false`).
    pub fn freeze(&self, frozen: bool) {
        self.shared.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the stop flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}
