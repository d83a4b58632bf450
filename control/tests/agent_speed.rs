//! The end-to-end speed probe of issue 13, with real processes only:
//! `nestdb-server` (node schema), `sluiced` (DPDK, its own
//! `--file-prefix`, in its own network namespace: uplink `net_af_packet` on an
//! idle veth, host port `net_tap`) and `sluice-agent`. The probe stamps a nestdb
//! transaction and polls `sluiced`'s `node-status` until the generation
//! that carries it is in force:
//!
//! (a) 10,000 Services x 10 endpoints written in one transaction: the time
//!     from sending the transaction to `sluiced` reporting the generation
//!     that holds all of them (and, separately, nestdb's own commit time);
//! (b) 100,000 Services (one endpoint each) installed, then 1,000 changes
//!     of one endpoint's address, one transaction each, one after the
//!     other: p50, p99 and max of transaction sent → generation in force;
//!     and the agent's resident memory at 100k Services;
//! (c) then a generation the agent did not make (an empty commit from the
//!     probe): the agent re-reads and diffs the whole program; its
//!     resident memory before and after (the transient of that re-read
//!     must go back to the system).
//!
//! Not a CI test (it takes a minute and its figures depend on the
//! machine): `#[ignore]`, run in release mode by one command:
//!
//! ```text
//! cargo build --release -p nestdb --bin nestdb-server -p sluice-datapath --bin sluiced
//! cargo test --release -p sluice-control --test agent_speed -- --ignored --nocapture
//! ```
//!
//! Needs root (namespace, DPDK); `SLUICE_SPEED_SERVICES` and
//! `SLUICE_SPEED_BIG` scale (a) and (b) down for a quick look
//! (`SLUICE_SPEED_BIG=0` skips (b)); `SLUICE_SPEED_NESTDB` and
//! `SLUICE_SPEED_AGENT` and `SLUICE_SPEED_SLUICED` run other builds of
//! `nestdb-server`, `sluice-agent` and `sluiced` (e.g. older ones, for a
//! before/after figure). (a) prints
//! the stages of the big transaction as the three processes log them:
//! nestdb's parse, execute, stage, monitor update and fsync times, the
//! agent's decoding of the update, typed rows, incremental compile and
//! changes, the `node-commit` call and `sluiced`'s phases, and the status
//! write that follows, each with its time after the transaction was sent. Every
//! process, namespace and file it makes goes on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nestdb_client::node::DB;
use nestdb_client::{Client as DbClient, Condition, Datum, Transaction, Uuid};
use sluice_api::node::{NodeChanges, NodeCommit, NodeStatus, QueryNodeProgram, QueryNodeStatus};
use sluice_api::{Client, Empty};
use sluice_testkit::node::{ctl_socket, start_sluiced, Nestdb, SluicedIni};
use sluice_testkit::{built_or_skip, root_or_skip, rows, sh, Daemon, Netns};

/// Bound on each wait (100k Services arrive in ten 10k-Service
/// transactions, each of which nestdb may take tens of seconds to commit
/// on a loaded machine).
const WAIT: Duration = Duration::from_secs(1200);
const PREFIX: &str = "slt-speed";
const NS: &str = "slt-speed-node";

/// The node namespace with the uplink: a veth whose far end stays unused
/// in the namespace.
fn node_netns() -> Netns {
    let ns = Netns::new(NS);
    sh(&[
        "ip",
        "-n",
        NS,
        "link",
        "add",
        "slt-spd-u",
        "type",
        "veth",
        "peer",
        "name",
        "slt-spd-g",
    ]);
    sh(&["ip", "-n", NS, "link", "set", "slt-spd-u", "up"]);
    sh(&["ip", "-n", NS, "link", "set", "slt-spd-g", "up"]);
    ns
}

fn wait_for<T>(what: &str, log: impl Fn() -> String, f: impl FnMut() -> Option<T>) -> T {
    sluice_testkit::wait_until_logged(what, WAIT, log, f)
}

fn ctl() -> PathBuf {
    ctl_socket(PREFIX)
}

fn start_node_sluiced(bin: &Path, ns: &Netns, dir: &Path) -> Daemon {
    let ctl = ctl();
    let ini = SluicedIni {
        prefix: PREFIX,
        ctl: &ctl,
        uplink_if: "slt-spd-u",
        host_if: "slt-speed-h",
    };
    start_sluiced(bin, &ini.render(), Some(ns), dir, "sluiced")
}

/// sluiced's `node-status` (one connection per call: the probe's cost is
/// one connect and one request).
fn status() -> Option<NodeStatus> {
    let mut c = Client::connect(ctl()).ok()?;
    c.set_timeout(Some(WAIT)).ok()?;
    c.call::<QueryNodeStatus>(&Empty {}).ok()
}

/// Polls `node-status` on one kept connection until the generation passes
/// `after`; the instant of the reply that showed it. A 100 µs pause
/// between polls leaves the two cores to the processes measured.
fn wait_generation(c: &mut Client, after: u64) -> (u64, Instant) {
    let start = Instant::now();
    loop {
        let st = c.call::<QueryNodeStatus>(&Empty {}).expect("node-status");
        let t = Instant::now();
        if st.generation > after {
            return (st.generation, t);
        }
        assert!(
            start.elapsed() < WAIT,
            "sluiced stayed at generation {}",
            st.generation
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn services_held() -> usize {
    let mut c = Client::connect(ctl()).unwrap();
    c.set_timeout(Some(WAIT)).unwrap();
    c.call::<QueryNodeProgram>(&Empty {})
        .unwrap()
        .services
        .len()
}

/// `n` Services numbered from `first`, one port, `eps` endpoints each; the
/// UUIDs of the endpoints come back in the transaction's results.
fn services_txn(first: u32, n: u32, eps: u32) -> Transaction {
    rows::services_txn(
        first..first + n,
        eps,
        |i| {
            format!(
                "10.{}.{}.{}",
                96 + i / 250 / 250,
                i / 250 % 250,
                i % 250 + 1
            )
        },
        |i, e| format!("10.{}.{}.{}", 128 + e, i / 250 % 250, i % 250 + 1),
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One node stack: namespace, nestdb-server, sluiced, agent.
struct Stack {
    _ns: Netns,
    dir: tempfile::TempDir,
    _db: Nestdb,
    _sluiced: Daemon,
    agent: Daemon,
    remote: String,
}

impl Stack {
    fn start(nestdb: &Path, sluiced: &Path) -> Stack {
        let ns = node_netns();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let db = Nestdb::start_with(
            nestdb,
            d,
            "nestdb",
            Path::new(sluice_testkit::node::NODE_SCHEMA_PATH),
            // 10k Services x 10 endpoints is one ~30 MB transaction.
            &[
                "--max-message-size=268435456",
                "--max-message-memory=2147483648",
                "--max-memory=4294967296",
            ],
        );
        let remote = db.remote();
        let c = DbClient::connect(&remote).unwrap();
        c.transact(&Transaction::new(DB).insert(
            "Node_Config",
            nestdb_client::row([
                ("node_name", Datum::from("speed")),
                ("node_type", Datum::from("BAREMETAL")),
                ("uplink_port", Datum::from("uplink")),
                ("vtep_ip", Datum::from("192.0.2.10")),
                ("pod_cidrs", Datum::from("10.244.1.0/24")),
                ("node_ips", Datum::from("192.0.2.10")),
                ("nodeport_min", Datum::from(30000i64)),
                ("nodeport_max", Datum::from(32767i64)),
                ("mtu", Datum::from(1500i64)),
            ]),
        ))
        .unwrap();
        let sluiced = start_node_sluiced(sluiced, &ns, d);
        // Another build of the agent for a before/after figure.
        let agent_bin = std::env::var_os("SLUICE_SPEED_AGENT").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_sluice-agent")),
            PathBuf::from,
        );
        let mut agent = Command::new(agent_bin);
        agent
            .args(["--db", &remote, "--ctl"])
            .arg(ctl())
            // The client library's timings of large messages and updates.
            .env("RUST_LOG", "info,sluice_jsonrpc=debug,nestdb_client=debug")
            .stdout(Stdio::null());
        let agent = Daemon::spawn(agent, "sluice-agent", &d.join("agent.log"));
        let s = Stack {
            _ns: ns,
            dir,
            _db: db,
            _sluiced: sluiced,
            agent,
            remote,
        };
        wait_for(
            "the agent's first commit",
            || s.logs(),
            || status().filter(|st| st.generation >= 1),
        );
        s
    }

    fn logs(&self) -> String {
        let names = ["agent.log", "sluiced.log", "nestdb.log"];
        sluice_testkit::logs_of(self.dir.path(), &names)
    }

    /// The agent's log lines about commits since line `from`.
    fn commit_lines(&self, from: usize) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("agent.log"))
            .unwrap_or_default()
            .lines()
            .skip(from)
            .filter(|l| l.contains("committed:") || l.contains("parts"))
            .map(|l| l.to_owned())
            .collect()
    }

    /// The phase split of the last `n` commits: the agent's plan and
    /// commit call, sluiced's prepare, PMD barrier wait, publish and
    /// what follows (from their logs).
    fn print_phases(&self, n: usize) {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        let (agent, sluiced) = (read("agent.log"), read("sluiced.log"));
        let mut a = String::new();
        for f in ["plan_ms", "commit_ms"] {
            a += &phase(&agent, "committed:", f, n);
        }
        let mut d = String::new();
        for f in ["prepare_ms", "barrier_wait_ms", "publish_ms", "after_ms"] {
            d += &phase(&sluiced, "node-commit: generation", f, n);
        }
        println!("    phases (ms) agent: {a}\n    phases (ms) sluiced: {d}");
    }

    /// The log lines that time the stages of a large transaction, each
    /// prefixed with its time after `since` (from the line's UTC
    /// timestamp), in time order.
    fn stage_lines(&self, since: std::time::SystemTime) -> Vec<String> {
        const MARKERS: [(&str, &str); 8] = [
            ("nestdb.log", "transaction committed"),
            ("agent.log", "large message decoded"),
            ("agent.log", "large notification received as text"),
            ("agent.log", "large update applied"),
            ("agent.log", "large batch planned"),
            ("agent.log", "committed:"),
            ("sluiced.log", "node-commit: generation"),
            ("agent.log", "status written after a large commit"),
        ];
        let day = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
                % 86_400.0
        };
        let t0 = day(since);
        let mut out: Vec<(f64, String)> = Vec::new();
        for (file, marker) in MARKERS {
            let text = std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default();
            for l in text.lines().filter(|l| l.contains(marker)) {
                let l = strip_ansi(l);
                let Some(at) = utc_seconds_of_day(&l) else {
                    continue;
                };
                if at + 1.0 < t0 {
                    continue;
                }
                let body = l
                    .split_once(' ')
                    .map_or(l.as_str(), |(_, b)| b.trim_start());
                out.push((at, format!("+{:8.1} ms {file}: {body}", (at - t0) * 1e3)));
            }
        }
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.into_iter().map(|(_, l)| l).collect()
    }

    fn log_len(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("agent.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

/// The values of `field="N"` in the last `n` lines of `text` that contain
/// `marker`, sorted.
fn field_values(text: &str, marker: &str, field: &str, n: usize) -> Vec<f64> {
    let pat = format!("{field}=\"");
    let mut v: Vec<f64> = text
        .lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let l = strip_ansi(l);
            let i = l.find(&pat)? + pat.len();
            l[i..].split('"').next()?.parse().ok()
        })
        .collect();
    v = v.split_off(v.len().saturating_sub(n));
    v.sort_by(f64::total_cmp);
    v
}

/// The seconds since UTC midnight of a log line that starts with an RFC
/// 3339 UTC timestamp (`2026-12-07T13:40:01.123456Z ...`).
fn utc_seconds_of_day(line: &str) -> Option<f64> {
    let t = line.get(11..)?.split(['Z', ' ']).next()?;
    let mut it = t.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// `line` without its ANSI colour sequences (sluiced colours its log
/// when it thinks stderr is a terminal).
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

/// `name p50/p99` of the last `n` values of `field`, or "" when none.
fn phase(text: &str, marker: &str, field: &str, n: usize) -> String {
    let v = field_values(text, marker, field, n);
    if v.is_empty() {
        return String::new();
    }
    format!("{field} p50 {:.2} p99 {:.2}; ", pct(&v, 0.5), pct(&v, 0.99))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
#[ignore = "a speed probe with real processes; run in release with --ignored --nocapture (see the module docs)"]
fn commit_to_generation_in_force() {
    if !root_or_skip!("needs root (namespace, DPDK)") {
        return;
    }
    let Some(nestdb) = built_or_skip!("nestdb-server", "cargo build -p nestdb --bin nestdb-server")
    else {
        return;
    };
    // Another nestdb-server build for a before/after figure.
    let nestdb = std::env::var_os("SLUICE_SPEED_NESTDB").map_or(nestdb, PathBuf::from);
    let Some(sluiced) = built_or_skip!("sluiced", "cargo build -p sluice-datapath --bin sluiced")
    else {
        return;
    };
    // Another sluiced build for a before/after figure.
    let sluiced = std::env::var_os("SLUICE_SPEED_SLUICED").map_or(sluiced, PathBuf::from);
    let n_a = env_or("SLUICE_SPEED_SERVICES", 10_000);
    let n_b = env_or("SLUICE_SPEED_BIG", 100_000);
    let changes = env_or("SLUICE_SPEED_CHANGES", 1000);

    // (a) n_a Services x 10 endpoints in one transaction.
    {
        let s = Stack::start(&nestdb, &sluiced);
        let c = DbClient::connect(&s.remote).unwrap();
        let mut st = Client::connect(ctl()).unwrap();
        st.set_timeout(Some(WAIT)).unwrap();
        let g0 = st.call::<QueryNodeStatus>(&Empty {}).unwrap().generation;
        let from = s.log_len();
        let txn = services_txn(0, n_a, 10);
        // The client's encoding, timed on its own (transact does it again).
        let t_enc = Instant::now();
        let request = serde_json::to_vec(&txn.to_params().unwrap()).unwrap();
        let encode = t_enc.elapsed();
        drop(request);
        let wall0 = std::time::SystemTime::now();
        let t0 = Instant::now();
        c.transact_with_timeout(&txn, WAIT).unwrap();
        let t_reply = t0.elapsed();
        // The generation that holds every Service (the agent may need more
        // than one commit if the batch arrived in parts).
        let mut after = g0;
        let t_in_force = loop {
            let (g, t) = wait_generation(&mut st, after);
            if services_held() >= n_a as usize {
                break t;
            }
            after = g;
        };
        println!(
            "(a) {n_a} Services x 10 endpoints in one transaction: nestdb commit (reply) {:.1} ms; \
             transaction sent -> generation in force in sluiced {:.1} ms",
            t_reply.as_secs_f64() * 1e3,
            (t_in_force - t0).as_secs_f64() * 1e3
        );
        for l in s.commit_lines(from) {
            println!("    agent: {l}");
        }
        s.print_phases(usize::MAX);
        println!(
            "    stages (ms after the transaction was sent; fields as logged):\n      client encode (to_params + to_vec, timed apart) {:.1} ms",
            encode.as_secs_f64() * 1e3
        );
        // The status write follows the next node-status poll.
        wait_for(
            "the status write after the large commit",
            || s.logs(),
            || {
                s.stage_lines(wall0)
                    .iter()
                    .any(|l| l.contains("status written"))
                    .then_some(())
            },
        );
        for l in s.stage_lines(wall0) {
            println!("      {l}");
        }
    }

    if n_b == 0 {
        return;
    }

    // (b) n_b Services x 1 endpoint, then single-endpoint changes.
    {
        let s = Stack::start(&nestdb, &sluiced);
        let c = DbClient::connect(&s.remote).unwrap();
        let mut st = Client::connect(ctl()).unwrap();
        st.set_timeout(Some(WAIT)).unwrap();
        let mut endpoints: Vec<Uuid> = Vec::new();
        let chunk = 10_000.min(n_b);
        let t0 = Instant::now();
        let mut first = 0;
        while first < n_b {
            let n = chunk.min(n_b - first);
            let out = c
                .transact_with_timeout(&services_txn(first, n, 1), WAIT)
                .unwrap();
            // Results: Service_Port, Service, Endpoint per Service.
            endpoints.extend(
                out.results
                    .iter()
                    .skip(2)
                    .step_by(3)
                    .filter_map(|r| r.uuid()),
            );
            first += n;
        }
        wait_for(
            "all Services in force",
            || s.logs(),
            || (services_held() >= n_b as usize).then_some(()),
        );
        println!(
            "(b) {n_b} Services x 1 endpoint installed in {:.1} s ({} transactions of {chunk}); agent RSS {} MiB",
            t0.elapsed().as_secs_f64(),
            n_b.div_ceil(chunk),
            rss_kib(s.agent.id()) / 1024
        );
        assert_eq!(
            endpoints.len(),
            n_b as usize,
            "an endpoint UUID per Service"
        );
        // The install may have taken longer than sluiced's idle timeout
        // for a connection (300 s) on a loaded machine: a fresh one.
        let mut st = Client::connect(ctl()).unwrap();
        st.set_timeout(Some(WAIT)).unwrap();
        let mut lat = Vec::with_capacity(changes as usize);
        let mut rtt = Vec::with_capacity(changes as usize);
        let mut g = st.call::<QueryNodeStatus>(&Empty {}).unwrap().generation;
        for k in 0..changes {
            // Spread over the Services; the address flips between two values.
            let i = (k as u64 * 7919 % u64::from(n_b)) as usize;
            let flip = (k / n_b.max(1)).is_multiple_of(2);
            let (hi, lo) = (i / 250, i % 250 + 1);
            let ip = format!("10.{}.{}.{lo}", if flip { 200 } else { 128 }, hi % 250);
            let txn = Transaction::new(DB).update(
                "Endpoint",
                vec![Condition::uuid(endpoints[i])],
                nestdb_client::row([("ip", Datum::from(ip))]),
            );
            let t0 = Instant::now();
            c.transact(&txn).unwrap();
            rtt.push(t0.elapsed().as_secs_f64() * 1e3);
            let (g2, t) = wait_generation(&mut st, g);
            g = g2;
            lat.push((t - t0).as_secs_f64() * 1e3);
        }
        lat.sort_by(f64::total_cmp);
        rtt.sort_by(f64::total_cmp);
        println!(
            "(b) {changes} single-endpoint changes at {n_b} Services, transaction sent -> generation in force: \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (nestdb transaction round trip alone: p50 {:.2} ms, p99 {:.2} ms); agent RSS {} MiB",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat[lat.len() - 1],
            pct(&rtt, 0.5),
            pct(&rtt, 0.99),
            rss_kib(s.agent.id()) / 1024
        );
        let lines = s.commit_lines(0);
        for l in lines.iter().rev().take(3).rev() {
            println!("    agent: {l}");
        }
        s.print_phases(changes as usize);

        // (c) A generation the agent did not make (an empty commit from
        // here): the agent reads sluiced's whole program and diffs it
        // against its own (O(program) transient memory), finds nothing to
        // send, and records the generation in Node_Status.
        let rss_before = rss_kib(s.agent.id()) / 1024;
        let g = st.call::<QueryNodeStatus>(&Empty {}).unwrap().generation;
        let t0 = Instant::now();
        st.call::<NodeCommit>(&NodeChanges {
            generation: g + 1,
            expected_generation: Some(g),
            ..NodeChanges::default()
        })
        .unwrap();
        wait_for(
            "the agent to record the foreign generation in Node_Status",
            || s.logs(),
            || {
                let out = c
                    .transact(&Transaction::new(DB).select("Node_Status", vec![]))
                    .ok()?;
                let rows = out.results.first()?.rows()?;
                rows.iter()
                    .any(|r| r.get("generation").and_then(Datum::as_i64) == Some(g as i64 + 1))
                    .then_some(())
            },
        );
        println!(
            "(c) a foreign generation at {n_b} Services: the agent re-read and diffed the whole program (nothing sent) in {:.1} ms; agent RSS {} MiB before, {} MiB after",
            t0.elapsed().as_secs_f64() * 1e3,
            rss_before,
            rss_kib(s.agent.id()) / 1024
        );
    }
}
