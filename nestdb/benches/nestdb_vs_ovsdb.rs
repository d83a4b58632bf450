//! Benchmark: nestdb-server vs Debian's ovsdb-server on the same schema and machine.
//!
//! Measures single-row insert transactions per second with 1 and 8 clients, and monitor
//! update latency (transaction sent → `update2` received by a monitoring client).
//! nestdb fsyncs every commit (batched across clients); ovsdb-server only fsyncs when a
//! transaction asks for `commit durable:true`, so it is measured both ways.
//! Run: `cargo bench -p nestdb --bench nestdb_vs_ovsdb` (set NESTDB_BENCH_TXNS to change
//! the transaction count).

use nestdb::jsonrpc::{Framer, Message};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCHEMA: &str = include_str!("../tests/data/test.ovsschema");

struct Server {
    child: Child,
    sock: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(which: &str, dir: &Path) -> Server {
    let schema = dir.join("s.ovsschema");
    std::fs::write(&schema, SCHEMA).unwrap();
    let db = dir.join(format!("{which}.db"));
    let sock = dir.join(format!("{which}.sock"));
    let ctl = dir.join(format!("{which}.ctl"));
    let mut cmd = if which == "nestdb" {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nestdb-server"));
        c.arg(&db).arg("--schema").arg(&schema);
        c
    } else {
        let st = Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(&schema)
            .status()
            .unwrap();
        assert!(st.success());
        let mut c = Command::new("ovsdb-server");
        c.arg(&db).arg("--no-chdir");
        c
    };
    let child = cmd
        .arg(format!("--remote=punix:{}", sock.display()))
        .arg(format!("--unixctl={}", ctl.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let start = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{which} did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Server { child, sock }
}

struct Client {
    s: UnixStream,
    p: Framer,
    id: u64,
}

impl Client {
    fn new(path: &Path) -> Self {
        Self {
            s: UnixStream::connect(path).unwrap(),
            p: Framer::new(1 << 30),
            id: 0,
        }
    }
    fn send(&mut self, method: &str, params: Value) -> u64 {
        self.id += 1;
        let m = Message::Request {
            method: method.into(),
            params,
            id: json!(self.id),
        };
        self.s.write_all(&m.to_bytes()).unwrap();
        self.id
    }
    fn recv(&mut self) -> Message {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(v) = self.p.next_value().unwrap() {
                return Message::from_json(v).unwrap();
            }
            let n = self.s.read(&mut buf).unwrap();
            assert!(n > 0, "server closed the connection");
            self.p.push(&buf[..n]);
        }
    }
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params);
        loop {
            match self.recv() {
                Message::Reply { result, id: r } if r == json!(id) => return result,
                Message::Error { error, .. } => panic!("error {error}"),
                _ => {}
            }
        }
    }
}

fn insert_ops(tag: &str, i: usize, durable: bool) -> Value {
    let mut ops = vec![
        json!("Test"),
        json!({"op": "insert", "table": "Node", "row": {"name": format!("{tag}-{i}")}}),
    ];
    if durable {
        ops.push(json!({"op": "commit", "durable": true}));
    }
    Value::Array(ops)
}

fn tps(sock: &Path, clients: usize, n: usize, durable: bool, tag: &str) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|k| {
            let sock = sock.to_owned();
            let tag = format!("{tag}-{k}");
            std::thread::spawn(move || {
                let mut c = Client::new(&sock);
                for i in 0..n / clients {
                    let r = c.call("transact", insert_ops(&tag, i, durable));
                    assert!(r[0].get("uuid").is_some(), "{r}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn monitor_latency(sock: &Path, n: usize, durable: bool) -> (f64, f64) {
    let mut m = Client::new(sock);
    m.call(
        "monitor_cond",
        json!(["Test", "lat", {"Node": [{"columns": ["name"]}]}]),
    );
    let mut w = Client::new(sock);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        w.send("transact", insert_ops("lat", i, durable));
        loop {
            if let Message::Notification { method, .. } = m.recv() {
                if method == "update2" {
                    break;
                }
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e6);
        let _ = w.recv();
    }
    lat.sort_by(f64::total_cmp);
    (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing special: keep both quick.
    let n: usize = std::env::var("NESTDB_BENCH_TXNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let have_ovsdb = Command::new("ovsdb-server")
        .arg("--version")
        .output()
        .is_ok();
    println!("nestdb-server vs ovsdb-server: {n} single-row insert transactions per measurement");
    println!(
        "{:<34} {:>10} {:>10} {:>14} {:>14}",
        "server", "tps 1 cli", "tps 8 cli", "mon p50 (us)", "mon p99 (us)"
    );
    let mut rows: Vec<(&str, &str, bool)> = vec![("nestdb (fsync every commit)", "nestdb", false)];
    if have_ovsdb {
        rows.push(("ovsdb-server (no fsync)", "ovsdb", false));
        rows.push(("ovsdb-server (durable:true)", "ovsdb", true));
    } else {
        println!("ovsdb-server not installed: comparison skipped");
    }
    for (label, which, durable) in rows {
        let dir = tempfile::tempdir().unwrap();
        let s = start(which, dir.path());
        let t1 = tps(&s.sock, 1, n, durable, "a");
        let t8 = tps(&s.sock, 8, n, durable, "b");
        let (p50, p99) = monitor_latency(&s.sock, n.min(1000), durable);
        println!("{label:<34} {t1:>10.0} {t8:>10.0} {p50:>14.0} {p99:>14.0}");
    }
}
