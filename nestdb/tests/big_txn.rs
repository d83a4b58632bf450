//! The large-transaction probe: the shape the agent speed probe
//! (control/tests/agent_speed.rs) writes, N Services x E endpoints in one
//! transaction built with nestdb-client against the node schema
//! (deploy/nestdb/sluice.ovsschema): per Service one `Service_Port`, one
//! `Service` naming it and E `Endpoint`s naming the Service (10,000 x 10 is
//! 120,000 rows, about 30 MB of JSON).
//!
//! `phases` runs every step the server takes in-process and prints each
//! one's time: client-side building and serialising, JSON parse, transaction
//! execution (operations, then the commit checks: references, garbage
//! collection, sizes, indexes), staging (log record, apply, reference counts
//! and indexes), fsync, monitor update composition and serialisation, and
//! the client-side parse of the reply and of the update, the replica's
//! decoding of the update into rows (what the agent's monitor does) and the
//! typed rows the agent's compiler reads. CPU time is split into user and
//! system: the system part is mostly the kernel zeroing fresh pages, which
//! on a loaded machine varies from run to run more than the work does.
//! `end_to_end` runs a real `nestdb-server` with a `monitor_cond_since`
//! client on every table (like the agent) and prints the time to the
//! transaction's reply and to the monitor's update.
//!
//! Not CI tests (their figures depend on the machine): `#[ignore]`, run in
//! release:
//!
//! ```text
//! cargo test --release -p nestdb --test big_txn -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `NESTDB_BIG_SERVICES` (default 10000) and `NESTDB_BIG_ENDPOINTS`
//! (default 10) scale the shape; `NESTDB_BIG_SERVER` runs another
//! `nestdb-server` binary (e.g. an older build, for a before/after figure). They also assert what they measured (row
//! counts, no error), so a broken server fails them.

// The allocator nestdb-server runs with, so the phases measure what it does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use nestdb::monitor::{Monitor, Version};
use nestdb::storage::{now_ms, Storage};
use nestdb::transaction::{execute, ExecContext, Outcome};
use nestdb_client::{Client, Datum, MonitorConfig, MonitorEvent, Transaction};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DB: &str = "Sluice_Node";
const TABLES: &[&str] = &["Service_Port", "Service", "Endpoint"];

fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nestdb/sluice.ovsschema")
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The agent speed probe's transaction: `n` Services, one port, `eps`
/// endpoints each (testkit's builder, with addresses that stay distinct
/// up to 62,500 Services).
fn services_txn(n: u32, eps: u32) -> Transaction {
    sluice_testkit::rows::services_txn(
        0..n,
        eps,
        |i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            format!("10.{}.{}.{lo}", 96 + hi / 250, hi % 250)
        },
        |i, e| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            format!("10.{}.{}.{lo}", 128 + e % 64, hi % 250)
        },
    )
}

/// CPU time this thread has used: (user, system). The system part is
/// mostly the kernel zeroing fresh pages, which on a loaded machine varies
/// more from run to run than the work itself.
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the call's duration.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Prints one phase line: wall time, then CPU as user + system.
fn report(what: &str, wall: Duration, c0: (Duration, Duration)) {
    let c1 = thread_cpu();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {what:<50} {:>8.1} ms wall {:>8.1} ms cpu = {:>7.1} user + {:>7.1} sys",
        ms(wall),
        ms(c1.0 + c1.1 - c0.0 - c0.1),
        ms(c1.0 - c0.0),
        ms(c1.1 - c0.1)
    );
}

/// Times `f` (wall and this thread's CPU), prints `what` with the times,
/// returns `f`'s value.
fn phase<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let (t, c) = (Instant::now(), thread_cpu());
    let v = f();
    report(what, t.elapsed(), c);
    v
}

#[test]
#[ignore = "a speed probe; run in release with --ignored --nocapture (see the module docs)"]
fn phases() {
    let n = env_or("NESTDB_BIG_SERVICES", 10_000);
    let eps = env_or("NESTDB_BIG_ENDPOINTS", 10);
    let rows = n as usize * (2 + eps as usize);
    println!("{n} Services x {eps} endpoints: {rows} rows in one transaction");
    let (total, total_cpu) = (Instant::now(), thread_cpu());
    let txn = phase("client: build Transaction", || services_txn(n, eps));
    let params = phase("client: to_params (JSON value)", || {
        txn.to_params().unwrap()
    });
    let request = json!({"method": "transact", "params": params, "id": 1});
    let bytes = phase("client: serialise request", || {
        serde_json::to_vec(&request).unwrap()
    });
    println!("  request size {:.1} MB", bytes.len() as f64 / 1e6);
    drop(request);
    drop(params);

    let dir = tempfile::tempdir().unwrap();
    let mut storage = Storage::open(&dir.path().join("node.db"), Some(&schema_path()), u64::MAX)
        .expect("create the node database");
    let monitor = Monitor::parse(
        &storage.db,
        DB,
        json!("m"),
        Version::V3,
        &json!({"Service_Port": {}, "Service": {}, "Endpoint": {}, "Node_Config": {}}),
    )
    .unwrap();

    let (server, server_cpu) = (Instant::now(), thread_cpu());
    let v: Value = phase("server: JSON parse", || {
        serde_json::from_slice(&bytes).unwrap()
    });
    let ops: Vec<Value> = v["params"].as_array().unwrap()[1..].to_vec();
    drop(v);
    let ctx = ExecContext {
        owns_lock: &|_| false,
        wait_expired: false,
        read_only: None,
    };
    let outcome = phase("server: execute (operations + commit checks)", || {
        execute(&storage.db, &ops, &ctx)
    });
    let Outcome::Done {
        results,
        changes: Some(changes),
        ..
    } = outcome
    else {
        panic!("the transaction did not commit")
    };
    assert!(
        results.iter().all(|r| !r.is_error()),
        "errors: {:?}",
        results.iter().find(|r| r.is_error())
    );
    assert_eq!(changes.rows.len(), rows);
    let entry = phase("server: stage (log record, apply, refs, indexes)", || {
        storage.stage(changes, now_ms())
    });
    phase("server: fsync", || storage.sync().unwrap());
    let reply_bytes = phase("server: serialise reply", || {
        nestdb::transaction::reply_bytes(&json!(1), &results)
    });
    // What the server does per monitor: the table-updates text, then the
    // notification around it (server.rs, notification_bytes).
    let update = phase("server: monitor update3 text (compose_json)", || {
        monitor
            .compose_json(&storage.db, &entry.changes)
            .expect("the monitor reports the inserts")
    });
    let note_bytes = phase("server: update3 notification", || {
        let mut out = br#"{"id":null,"method":"update3","params":["m","#.to_vec();
        out.extend_from_slice(format!("\"{}\",", entry.id).as_bytes());
        out.extend_from_slice(&update);
        out.extend_from_slice(b"]}");
        out
    });
    report(
        "server total (excluding client work)",
        server.elapsed(),
        server_cpu,
    );
    println!(
        "  reply {:.1} MB, update3 {:.1} MB",
        reply_bytes.len() as f64 / 1e6,
        note_bytes.len() as f64 / 1e6
    );
    let reply_v: Value = phase("client: parse reply JSON", || {
        serde_json::from_slice(&reply_bytes).unwrap()
    });
    let outcome = phase("client: parse_reply", || {
        txn.parse_reply(&reply_v["result"]).unwrap()
    });
    assert_eq!(outcome.results.len(), txn.len());
    let note: Value = phase("client: parse update3 JSON", || {
        serde_json::from_slice(&note_bytes).unwrap()
    });
    // What the agent's monitor does with it: the replica's rows and the
    // changes it reports, then the typed rows the compiler reads.
    let mut replica = nestdb_client::Replica::new(
        std::sync::Arc::new(storage.db.schema.as_ref().clone()),
        &TABLES.iter().map(|t| (t.to_string(), None)).collect(),
    )
    .unwrap();
    let changes = phase("client: Replica::apply_updates2 (rows)", || {
        replica.apply_updates2(&note["params"][2]).unwrap()
    });
    assert_eq!(changes.len(), rows);
    let typed = phase("client: typed rows (TableRow::from_row)", || {
        use nestdb_client::node::{Endpoint, Service, ServicePort};
        use nestdb_client::TableRow;
        changes
            .iter()
            .filter(|c| {
                let new = c.new.as_ref().unwrap();
                match c.table.as_str() {
                    "Service" => Service::from_row(new).is_ok(),
                    "Service_Port" => ServicePort::from_row(new).is_ok(),
                    _ => Endpoint::from_row(new).is_ok(),
                }
            })
            .count()
    });
    assert_eq!(typed, rows);
    phase("client: drop rows and changes", || drop((changes, replica)));
    assert_eq!(storage.db.row_count(), rows);
    report("total", total.elapsed(), total_cpu);
}

/// CPU time process `pid` has used, (user, system), from /proc/PID/stat.
fn process_cpu(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ms = |i: usize| Duration::from_millis(f.get(i).copied().unwrap_or(0) * 1000 / hz);
    (ms(11), ms(12))
}

/// The peak resident memory of process `pid` (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// A nestdb-server process, stopped and reaped on drop: SIGTERM first (so
/// a server run under `valgrind --tool=callgrind` through
/// `NESTDB_BIG_SERVER` writes its profile), SIGKILL if it has not exited
/// within a minute.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child not yet reaped.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `nestdb-server` (or `NESTDB_BIG_SERVER`) on a fresh node
/// database in `dir`, with limits that take the 100,000-Service shape, and
/// waits until it listens; its socket is `dir/nestdb.sock`, its log
/// `dir/nestdb.log`.
fn start_server(dir: &Path) -> Server {
    let sock = dir.join("nestdb.sock");
    let server = Server(
        Command::new(
            std::env::var_os("NESTDB_BIG_SERVER")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_nestdb-server").into()),
        )
        .arg(dir.join("node.db"))
        .arg("--schema")
        .arg(schema_path())
        .arg(format!("--remote=punix:{}", sock.display()))
        .arg(format!("--unixctl={}", dir.join("nestdb.ctl").display()))
        // Room for the 100,000-Service shape (about 200 MB of JSON).
        .args([
            "--max-message-size=1073741824",
            "--max-message-memory=8589934592",
            "--max-memory=17179869184",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nestdb.log")).unwrap())
        .spawn()
        .expect("spawn nestdb-server"),
    );
    sluice_testkit::wait_until("nestdb-server to listen", Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    server
}

#[test]
#[ignore = "a speed probe; run in release with --ignored --nocapture (see the module docs)"]
fn end_to_end() {
    let n = env_or("NESTDB_BIG_SERVICES", 10_000);
    let eps = env_or("NESTDB_BIG_ENDPOINTS", 10);
    let rows = n as usize * (2 + eps as usize);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nestdb.sock");
    let server = start_server(dir.path());
    let remote = format!("unix:{}", sock.display());
    let mut cfg = MonitorConfig::new(&remote, DB, TABLES);
    cfg.request_timeout = Duration::from_secs(600);
    cfg.probe_interval = None;
    let monitor = nestdb_client::Monitor::start(cfg).unwrap();
    let events = monitor.subscribe();
    let c = Client::connect(&remote).unwrap();
    let txn = services_txn(n, eps);
    let pid = server.0.id();
    let cpu0 = process_cpu(pid);
    let t0 = Instant::now();
    let out = c
        .transact_with_timeout(&txn, Duration::from_secs(600))
        .unwrap();
    let t_reply = t0.elapsed();
    assert!(out.results.iter().all(|r| r.uuid().is_some()));
    let mut seen = 0;
    let t_update = loop {
        match events.recv_timeout(Duration::from_secs(600)) {
            Ok(MonitorEvent::Changes(ch)) => {
                seen += ch.len();
                if seen >= rows {
                    break t0.elapsed();
                }
            }
            Ok(MonitorEvent::Disconnected { reason }) => panic!("monitor lost: {reason}"),
            Ok(_) => {}
            Err(e) => panic!("no monitor update for the transaction: {e}"),
        }
    };
    let cpu1 = process_cpu(pid);
    println!(
        "{n} Services x {eps} endpoints ({rows} rows) in one transaction through nestdb-server: \
         reply {:.1} ms, monitor update applied {:.1} ms (wall, from sending, client building \
         excluded); nestdb-server used {:.1} ms of CPU ({:.1} user + {:.1} system), peak RSS {} MiB",
        t_reply.as_secs_f64() * 1e3,
        t_update.as_secs_f64() * 1e3,
        (cpu1.0 + cpu1.1 - cpu0.0 - cpu0.1).as_secs_f64() * 1e3,
        (cpu1.0 - cpu0.0).as_secs_f64() * 1e3,
        (cpu1.1 - cpu0.1).as_secs_f64() * 1e3,
        peak_rss_mib(pid)
    );

    // Then single-endpoint changes with all of it installed (the agent probe's
    // second case): one update per transaction, round trip to the reply.
    let endpoints: Vec<nestdb_client::Uuid> = out
        .results
        .iter()
        .enumerate()
        .filter(|(i, _)| i % (2 + eps as usize) >= 2)
        .filter_map(|(_, r)| r.uuid())
        .collect();
    let changes = env_or("NESTDB_BIG_CHANGES", 200) as usize;
    let mut rtt = Vec::with_capacity(changes);
    for k in 0..changes {
        let u = endpoints[k * 7919 % endpoints.len()];
        let txn = Transaction::new(DB).update(
            "Endpoint",
            vec![nestdb_client::Condition::uuid(u)],
            nestdb_client::row([("ip", Datum::from(format!("10.200.{}.{}", k / 250, k % 250)))]),
        );
        let t = Instant::now();
        let r = c.transact(&txn).unwrap();
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(r.results[0].count(), Some(1));
    }
    rtt.sort_by(f64::total_cmp);
    let pct = |p: f64| rtt[((rtt.len() - 1) as f64 * p).round() as usize];
    println!(
        "{changes} single-endpoint updates at {n} Services, transaction round trip: \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        rtt[rtt.len() - 1]
    );
}

/// Reads one complete JSON-RPC message (a JSON object) from `r`, keeping
/// whatever follows it in `buf`; returns the message's text and the instant
/// its first byte was read. Only splits the stream (strings and escapes
/// are tracked, nothing is decoded), so the probe's own cost stays out of
/// what it measures.
fn read_message(r: &mut impl std::io::Read, buf: &mut Vec<u8>) -> (Vec<u8>, Instant) {
    let mut first: Option<Instant> = (!buf.is_empty()).then(Instant::now);
    let (mut depth, mut in_str, mut esc, mut pos) = (0usize, false, false, 0usize);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        while pos < buf.len() {
            let c = buf[pos];
            pos += 1;
            if in_str {
                if esc {
                    esc = false;
                } else if c == b'\\' {
                    esc = true;
                } else if c == b'"' {
                    in_str = false;
                }
                continue;
            }
            match c {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        let rest = buf.split_off(pos);
                        let msg = std::mem::replace(buf, rest);
                        return (msg, first.unwrap_or_else(Instant::now));
                    }
                }
                _ => {}
            }
        }
        let n = r.read(&mut chunk).expect("read from nestdb-server");
        assert!(n > 0, "nestdb-server closed the connection");
        first.get_or_insert_with(Instant::now);
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of `field="N"` in the last line of `log` that has it.
fn log_field(log: &str, field: &str) -> String {
    let pat = format!("{field}=");
    log.lines()
        .rev()
        .map(strip_ansi)
        .find_map(|l| {
            let i = l.find(&pat)? + pat.len();
            Some(
                l[i..]
                    .trim_start_matches('"')
                    .split(['"', ' '])
                    .next()?
                    .to_owned(),
            )
        })
        .unwrap_or_default()
}

/// `line` without its ANSI colour sequences (the server colours its log
/// on stderr).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// nestdb-server's own share of the agent's big transaction, with nothing
/// of a client's work in it: the request is written beforehand
/// (`Transaction::params_json`, what nestdb-client sends) and goes out on
/// a plain socket; a second plain socket holds a `monitor_cond_since` on
/// every table of the node schema (as the agent does) and only splits the
/// update off the stream. Prints, per run (a fresh server each,
/// `NESTDB_BIG_RUNS`, default 3): the time from the first byte sent to the
/// last byte of the reply and to the last byte of the `update3`, the
/// server's CPU time, and the phases the server logs.
#[test]
#[ignore = "a speed probe; run in release with --ignored --nocapture (see the module docs)"]
fn server_share() {
    use std::io::Write as _;
    use std::os::unix::net::UnixStream;
    let n = env_or("NESTDB_BIG_SERVICES", 10_000);
    let eps = env_or("NESTDB_BIG_ENDPOINTS", 10);
    let runs = env_or("NESTDB_BIG_RUNS", 3);
    let rows = n as usize * (2 + eps as usize);
    let txn = services_txn(n, eps);
    let mut request = br#"{"id":1,"method":"transact","params":"#.to_vec();
    request.extend_from_slice(&txn.params_json().unwrap());
    request.push(b'}');
    drop(txn);
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path()).unwrap()).unwrap();
    let all: serde_json::Map<String, Value> = schema["tables"]
        .as_object()
        .unwrap()
        .keys()
        .map(|t| (t.clone(), json!([{}])))
        .collect();
    let monitor_req = serde_json::to_vec(
        &json!({"id":0,"method":"monitor_cond_since","params":[DB,"m",all,null]}),
    )
    .unwrap();
    println!(
        "{n} Services x {eps} endpoints ({rows} rows), request {:.1} MB, {runs} runs",
        request.len() as f64 / 1e6
    );
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let server = start_server(dir.path());
        let sock = dir.path().join("nestdb.sock");
        let mut mon = UnixStream::connect(&sock).unwrap();
        mon.write_all(&monitor_req).unwrap();
        let mut mbuf = Vec::new();
        let (reply, _) = read_message(&mut mon, &mut mbuf);
        assert!(
            reply.starts_with(br#"{"id":0,"result":[false,"#),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        let monitor = std::thread::spawn(move || {
            let (update, first) = read_message(&mut mon, &mut mbuf);
            (update, first, Instant::now())
        });
        let mut c = UnixStream::connect(&sock).unwrap();
        let pid = server.0.id();
        let cpu0 = process_cpu(pid);
        let t0 = Instant::now();
        c.write_all(&request).unwrap();
        let t_sent = t0.elapsed();
        let (reply, _) = read_message(&mut c, &mut Vec::new());
        let t_reply = t0.elapsed();
        let (update, u_first, u_last) = monitor.join().unwrap();
        let cpu1 = process_cpu(pid);
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        let results = reply["result"].as_array().expect("a transact result");
        assert!(
            results.iter().all(|r| r.get("uuid").is_some()),
            "{:?}",
            results.iter().find(|r| r.get("uuid").is_none())
        );
        assert!(update.starts_with(br#"{"id":null,"method":"update3""#));
        let update_rows = update.windows(11).filter(|w| w == b"{\"insert\":{").count();
        assert_eq!(update_rows, rows, "the update reports every inserted row");
        drop(server);
        let log = std::fs::read_to_string(dir.path().join("nestdb.log")).unwrap_or_default();
        let f = |k: &str| log_field(&log, k);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  run {run}: request written {:7.1} ms, reply {:7.1} ms, update3 first byte {:7.1} ms, \
             last byte {:7.1} ms ({:.1} MB); server CPU {:.0} ms ({:.0} user + {:.0} sys); \
             logged: parse {} execute {} stage {} monitors {} fsync {} ms",
            ms(t_sent),
            ms(t_reply),
            ms(u_first - t0),
            ms(u_last - t0),
            update.len() as f64 / 1e6,
            ms(cpu1.0 + cpu1.1 - cpu0.0 - cpu0.1),
            ms(cpu1.0 - cpu0.0),
            ms(cpu1.1 - cpu0.1),
            f("parse_ms"),
            f("execute_ms"),
            f("stage_ms"),
            f("monitors_ms"),
            f("fsync_ms"),
        );
    }
}
