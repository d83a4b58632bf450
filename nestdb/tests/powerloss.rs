//! Power-loss durability: SIGKILL keeps the page cache, so `crash.rs` only
//! proves "written before acknowledged". Here nestdb-server runs under an
//! LD_PRELOAD model of a power cut (`sluice_testkit::powerloss`, its shim
//! `lib/testkit/powerloss/shim.c` compiled by the test with the system C
//! compiler, shared with sluiced's state-file test): file contents count as on disk only as
//! of their last fsync/fdatasync, directory entries only as of the
//! directory's last fsync. Each round, four writers pipeline transactions
//! (each inserts a `Node` and increments `Config.gen`), the server is
//! SIGKILLed after a seeded random number of acknowledgements, and the
//! database directory is rebuilt from the model alone, keeping at random
//! none, all or part of each file's unsynced tail (writes that happened to
//! reach the disk, possibly torn). A server without the shim then must
//! open it and hold every acknowledged row, with `gen` equal to the number
//! of rows (no half-applied transaction). Compaction is forced often
//! (`--compact-threshold`) so cuts also land around its rename.
//!
//! `POWERLOSS_ROUNDS` sets the number of cut points (default 25 in the
//! test suite; the README's figure comes from 1,000).

mod common;

use common::{Impl, ServerProc};
use nestdb::jsonrpc::Message;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sluice_testkit::powerloss::{self, CutOptions};
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const SEED: u64 = 0x90e5_10de;
const WRITERS: usize = 4;

fn state(s: &ServerProc) -> (BTreeSet<String>, i64) {
    let mut c = s.client();
    let r = c.transact(json!([
        {"op": "select", "table": "Node", "where": [], "columns": ["name"]},
        {"op": "select", "table": "Config", "where": [], "columns": ["gen"]}
    ]));
    let names = r[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["name"].as_str().unwrap().to_string())
        .collect();
    let gen = r[1]["rows"][0]["gen"]
        .as_i64()
        .unwrap_or_else(|| panic!("no Config row after the cut: {r:?}"));
    (names, gen)
}

/// One writer: pipelines transactions until the server dies; returns the
/// names it saw acknowledged.
fn writer(sock: PathBuf, w: usize, start: u64, total: Arc<AtomicU64>) -> Vec<String> {
    let mut acked = Vec::new();
    // A server that is already gone shows in the round's liveness check,
    // with its stderr.
    if std::os::unix::net::UnixStream::connect(&sock).is_err() {
        return acked;
    }
    let mut c = common::Rpc::connect(&sock);
    let (mut sent, mut got) = (start, start);
    loop {
        while sent < got + 4 {
            let m = Message::Request {
                method: "transact".into(),
                params: json!(["Test",
                    {"op": "insert", "table": "Node", "row": {"name": format!("w{w}-{sent}")}},
                    {"op": "mutate", "table": "Config", "where": [], "mutations": [["gen", "+=", 1]]}]),
                id: json!(sent),
            };
            if c.stream.write_all(&m.to_bytes()).is_err() {
                return acked;
            }
            sent += 1;
        }
        match c.read_message() {
            Some(Message::Reply { result, id }) => {
                assert!(result[0]["uuid"].is_array(), "{result}");
                acked.push(format!("w{w}-{}", id.as_u64().unwrap()));
                got += 1;
                total.fetch_add(1, Ordering::Relaxed);
            }
            _ => return acked,
        }
    }
}

/// Fails the test with the server's stderr (where the shim says why it
/// stopped) if the server under the model exited by itself.
fn assert_running(s: &mut common::ServerProc, round: usize) {
    let p = s.proc.as_mut().expect("a launched server");
    if let Ok(Some(st)) = p.child.try_wait() {
        panic!(
            "round {round}: nestdb-server exited by itself ({st}): {}",
            std::fs::read_to_string(s.dir.join("Nestdb.stderr")).unwrap_or_default()
        );
    }
}

#[test]
fn power_cuts_never_lose_acknowledged_transactions() {
    let rounds: usize = std::env::var("POWERLOSS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let work = tempfile::tempdir().unwrap();
    let shim = match powerloss::build_shim(work.path()) {
        Ok(s) => s,
        Err(why) => {
            common::report_skip(&format!("nestdb power-loss test: {why}"));
            return;
        }
    };
    let dbdir = work.path().join("db");
    std::fs::create_dir(&dbdir).unwrap();
    let dbdir = dbdir.canonicalize().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut s = ServerProc::start(Impl::Nestdb, &dbdir, &["--compact-threshold=20000"]);
    s.client()
        .transact(json!([{"op": "insert", "table": "Config", "row": {"gen": 0}}]));
    let mut acked_all: BTreeSet<String> = BTreeSet::new();
    let mut next = [0u64; WRITERS];
    let (mut unsynced_kept, mut cuts_with_tail, mut compacted_rounds) = (0usize, 0usize, 0usize);
    for round in 0..rounds {
        s.kill();
        let state_dir = work.path().join(format!("state-{round}"));
        std::fs::create_dir(&state_dir).unwrap();
        // The model applies to this launch only (the variables are the
        // child's environment; this test binary runs one test).
        std::env::set_var("LD_PRELOAD", &shim);
        std::env::set_var("POWERLOSS_DIR", &dbdir);
        std::env::set_var("POWERLOSS_STATE", &state_dir);
        s.launch();
        for v in ["LD_PRELOAD", "POWERLOSS_DIR", "POWERLOSS_STATE"] {
            std::env::remove_var(v);
        }
        let target: u64 = rng.gen_range(1..120);
        let total = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (sock, total, start) = (s.sock.clone(), total.clone(), next[w]);
                std::thread::spawn(move || writer(sock, w, start, total))
            })
            .collect();
        // Every other round (seeded) also compacts on request at a random
        // point before the cut, so cuts land after compactions however the
        // load groups the commits (automatic compaction needs 100 records,
        // and a loaded machine batches many transactions per record).
        if rng.gen_bool(0.5) {
            let at = rng.gen_range(0..target);
            common::wait_until("the acknowledgements before the compaction", || {
                assert_running(&mut s, round);
                (total.load(Ordering::Relaxed) >= at).then_some(())
            });
            let ino = std::fs::metadata(&s.db).map(|m| m.ino());
            // The launch waited for the database socket only; the control
            // socket's file may still be the killed server's.
            let ctl = s.ctl.clone();
            common::wait_until("the control socket", || {
                assert_running(&mut s, round);
                std::os::unix::net::UnixStream::connect(&ctl).ok()
            });
            common::Rpc::connect(&s.ctl)
                .call("compact", json!([]))
                .unwrap_or_else(|e| panic!("round {round}: compaction refused: {e}"));
            compacted_rounds +=
                usize::from(ino.ok() != std::fs::metadata(&s.db).ok().map(|m| m.ino()));
        }
        common::wait_until("the writers' acknowledgements", || {
            assert_running(&mut s, round);
            (total.load(Ordering::Relaxed) >= target).then_some(())
        });
        assert_running(&mut s, round);
        s.kill();
        for (w, h) in handles.into_iter().enumerate() {
            let acked = h.join().expect("writer");
            if let Some(last) = acked.last() {
                next[w] = last.rsplit('-').next().unwrap().parse::<u64>().unwrap() + 1;
            }
            acked_all.extend(acked);
        }
        // Requests that were in flight may or may not have committed: skip
        // past their names.
        for n in next.iter_mut() {
            *n += 8;
        }
        let kept =
            powerloss::power_cut(&dbdir, &state_dir, &mut rng, CutOptions::default()).unsynced_kept;
        unsynced_kept += kept;
        cuts_with_tail += usize::from(kept > 0);
        s.launch();
        let (names, gen) = state(&s);
        let lost: Vec<&String> = acked_all.difference(&names).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged transactions lost by the power cut: {lost:?}"
        );
        assert_eq!(
            gen,
            names.len() as i64,
            "round {round}: Config.gen must equal the rows (a half-applied transaction?)"
        );
        std::fs::remove_dir_all(&state_dir).unwrap();
    }
    assert!(
        compacted_rounds > 0 || rounds < 4,
        "no round compacted the log: the cuts never tested the compaction's rename"
    );
    println!(
        "power loss: {rounds} cuts, {} acknowledged transactions, none lost or half-applied; {cuts_with_tail} cuts kept part of an unsynced tail ({unsynced_kept} bytes); {compacted_rounds} rounds compacted before the cut",
        acked_all.len()
    );
}
