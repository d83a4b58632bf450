//! Shared helpers for nestdb end-to-end tests: temporary directories, server processes
//! killed on drop, bounded waits, a raw JSON-RPC client and wrappers for OVS tools.
#![allow(dead_code)]

use nestdb::jsonrpc::{Framer, Message};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The test schema shared by all end-to-end tests.
pub const SCHEMA: &str = include_str!("../data/test.ovsschema");

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// True if `tool` is on PATH; otherwise records why the test is skipped.
pub fn have(tool: &str) -> bool {
    let ok = sluice_testkit::have_tool(tool);
    if !ok {
        report_skip(&format!(
            "SKIPPED: {tool} is not installed (Debian package openvswitch-common)"
        ));
    }
    ok
}

/// Prints a skip line and records it in `target/tmp/skips.txt`
/// ([`sluice_testkit::report_skip!`]).
pub fn report_skip(line: &str) {
    sluice_testkit::report_skip!("{line}");
}

/// A child process killed and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns Some, failing the test with `what` after [`WAIT`].
pub fn wait_until<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    sluice_testkit::wait_until(what, WAIT, f)
}

pub fn nestdb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nestdb-server")
}

/// Which server implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Nestdb,
    OvsdbServer,
}

/// A running server with its own directory, socket and control socket.
pub struct ServerProc {
    pub dir: PathBuf,
    pub db: PathBuf,
    pub sock: PathBuf,
    pub ctl: PathBuf,
    pub which: Impl,
    pub extra: Vec<String>,
    pub proc: Option<Proc>,
}

impl ServerProc {
    /// Creates the database from [`SCHEMA`] in `dir` and starts the server.
    pub fn start(which: Impl, dir: &Path, extra: &[&str]) -> Self {
        let mut s = Self::prepare(which, dir, extra);
        s.launch();
        s
    }

    /// Like [`ServerProc::start`] but does not launch the process.
    pub fn prepare(which: Impl, dir: &Path, extra: &[&str]) -> Self {
        let schema = dir.join("test.ovsschema");
        std::fs::write(&schema, SCHEMA).unwrap();
        let db = dir.join(match which {
            Impl::Nestdb => "nestdb.db",
            Impl::OvsdbServer => "ovsdb.db",
        });
        if which == Impl::OvsdbServer && !db.exists() {
            let st = Command::new("ovsdb-tool")
                .arg("create")
                .arg(&db)
                .arg(&schema)
                .status()
                .unwrap();
            assert!(st.success(), "ovsdb-tool create failed");
        }
        Self {
            dir: dir.to_owned(),
            sock: dir.join(format!("{which:?}.sock")),
            ctl: dir.join(format!("{which:?}.ctl")),
            db,
            which,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
        }
    }

    /// (Re)starts the process and waits until it accepts connections.
    pub fn launch(&mut self) {
        let schema = self.dir.join("test.ovsschema");
        let mut cmd = match self.which {
            Impl::Nestdb => {
                let mut c = Command::new(nestdb_bin());
                c.arg(&self.db).arg("--schema").arg(&schema);
                c
            }
            Impl::OvsdbServer => {
                let mut c = Command::new("ovsdb-server");
                c.arg(&self.db).arg("--no-chdir");
                c
            }
        };
        cmd.arg(format!("--remote=punix:{}", self.sock.display()))
            .arg(format!("--unixctl={}", self.ctl.display()))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join(format!("{:?}.stderr", self.which))).unwrap(),
            );
        let child = cmd.spawn().expect("spawn server");
        self.proc = Some(Proc {
            child,
            what: format!("{:?}", self.which),
        });
        let sock = self.sock.clone();
        let stderr_path = self.dir.join(format!("{:?}.stderr", self.which));
        let proc = self.proc.as_mut().unwrap();
        wait_until(
            &format!("{:?} to listen on {}", self.which, sock.display()),
            || {
                if let Ok(Some(st)) = proc.child.try_wait() {
                    panic!(
                        "server exited early with {st}: {}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
                UnixStream::connect(&sock).ok().map(|_| ())
            },
        );
    }

    pub fn remote(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    pub fn client(&self) -> Rpc {
        Rpc::connect(&self.sock)
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// A minimal JSON-RPC client over a Unix socket.
pub struct Rpc {
    pub stream: UnixStream,
    parser: Framer,
    pub notifications: VecDeque<(String, Value)>,
    next_id: u64,
}

impl Rpc {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect to server");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            stream,
            parser: Framer::new(1 << 30),
            notifications: VecDeque::new(),
            next_id: 1,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
    }

    /// Reads one message; None on clean EOF.  Fails the test after [`WAIT`].
    pub fn read_message(&mut self) -> Option<Message> {
        let start = Instant::now();
        let mut buf = [0u8; 65536];
        loop {
            if let Some(v) = self.parser.next_value().expect("server sent valid JSON") {
                return Some(Message::from_json(v).expect("server sent a JSON-RPC message"));
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.parser.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    assert!(
                        start.elapsed() < WAIT,
                        "timed out waiting for a message from the server"
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read from server: {e}"),
            }
        }
    }

    /// Sends a request and returns Ok(result) or Err(error), queueing notifications.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = json!(self.next_id);
        self.next_id += 1;
        let m = Message::Request {
            method: method.into(),
            params,
            id: id.clone(),
        };
        self.send_raw(&m.to_bytes());
        loop {
            match self
                .read_message()
                .expect("server closed the connection before replying")
            {
                Message::Reply { result, id: rid } if rid == id => return Ok(result),
                Message::Error { error, id: rid } if rid == id => return Err(error),
                Message::Notification { method, params } => {
                    self.notifications.push_back((method, params))
                }
                Message::Request { method, params, id } => {
                    if method == "echo" {
                        let r = Message::Reply { result: params, id };
                        self.send_raw(&r.to_bytes());
                    }
                }
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Convenience: transact on the test database.
    pub fn transact(&mut self, ops: Value) -> Vec<Value> {
        let mut params = vec![json!("Test")];
        params.extend(ops.as_array().unwrap().iter().cloned());
        self.call("transact", Value::Array(params))
            .expect("transact succeeded at the JSON-RPC level")
            .as_array()
            .unwrap()
            .clone()
    }

    /// The names of every `Node` row of the test database, sorted.
    pub fn node_names(&mut self) -> Vec<String> {
        let r = self
            .transact(json!([{"op": "select", "table": "Node", "where": [], "columns": ["name"]}]));
        let mut v: Vec<String> = r[0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    /// Next notification (method, params), waiting up to [`WAIT`].
    pub fn notification(&mut self) -> (String, Value) {
        loop {
            if let Some(n) = self.notifications.pop_front() {
                return n;
            }
            match self.read_message().expect("server closed the connection") {
                Message::Notification { method, params } => return (method, params),
                Message::Request { method, params, id } if method == "echo" => {
                    let r = Message::Reply { result: params, id };
                    self.send_raw(&r.to_bytes());
                }
                other => panic!("unexpected message while waiting for a notification: {other:?}"),
            }
        }
    }
}

/// Runs an OVS tool and returns its output.
pub fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"))
}

/// Runs an OVS tool, asserting success, and returns stdout.
pub fn run_ok(tool: &str, args: &[&str]) -> String {
    let o = run(tool, args);
    assert!(
        o.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
