//! Target `nestdb_rpc`: nestdb's JSON-RPC messages and transactions
//! against the node schema (`deploy/nestdb/sluice.ovsschema`), in process.
//!
//! The input's first byte holds flags (bit 0: compact the log at the end,
//! when the input committed anything);
//! the rest is a byte stream as a client would send it. It is framed with
//! nestdb's `Framer`, each frame decoded and classified with
//! `nestdb::jsonrpc::parse_message`, and each request run as
//! nestdb-server's event loop runs it: `transact` through
//! `nestdb::transaction::execute` and, when it changes the database,
//! `Storage::stage` + `Storage::sync` on a real log file; `monitor`,
//! `monitor_cond` and `monitor_cond_since` through `Monitor::parse`, with
//! the initial contents and every later commit's update composed. Waits
//! never block (`wait_expired`), as after their timeout.
//!
//! A new database's log is created once by `Storage::open` from the
//! schema; each input starts from a copy of it (or, when the previous input
//! committed nothing and did not compact, from that input's storage, which
//! is then exactly a new one), so a finding replays alone. The copy is
//! opened when the input's first request for the database comes.
//!
//! Invariants: nothing panics; a transaction answers one result per
//! operation (plus one for a failed commit), each an object or null; a
//! failed transaction changes nothing; after the input, the log reopens
//! (`Storage::open`) and holds exactly the in-memory rows, and, unless it
//! was compacted, the same last transaction id (what
//! `monitor_cond_since` clients resume from); an input that commits
//! nothing leaves the log byte for byte as it was.

use std::cell::RefCell;
use std::path::PathBuf;

use nestdb::jsonrpc::{parse_message, Framer, Message};
use nestdb::monitor::{Monitor, Version};
use nestdb::storage::Storage;
use nestdb::transaction::{execute, ExecContext, Outcome};
use serde_json::Value;

const SCHEMA: &str = include_str!("../../deploy/nestdb/sluice.ovsschema");
const DB: &str = "Sluice_Node";

struct Files {
    _dir: tempfile::TempDir,
    db: PathBuf,
    /// The log of a new database: the schema record alone.
    pristine: Vec<u8>,
}

fn files() -> Files {
    // tmpfs when there is one: the target fsyncs after every commit.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::Builder::new()
            .prefix("sluice-fuzz-nestdb")
            .tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory");
    let schema = dir.path().join("sluice.ovsschema");
    std::fs::write(&schema, SCHEMA).expect("write the schema");
    let db = dir.path().join("conf.db");
    // Created once by nestdb itself (`Storage::open` with the schema);
    // later inputs start from a copy of these bytes.
    drop(Storage::open(&db, Some(&schema), u64::MAX).expect("a new database"));
    let pristine = std::fs::read(&db).expect("read the new log");
    Files {
        _dir: dir,
        db,
        pristine,
    }
}

/// The files, and the storage of the last input when that input left it
/// exactly as a new one (nothing staged, no compaction: the same empty
/// rows, the same pristine log, no transaction id): most inputs commit
/// nothing, and opening a database (parsing the node schema, twice with
/// the reopen) is what an input costs otherwise.
struct State {
    files: Files,
    fresh: Option<Storage>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// The input's database: `slot`'s, or a new one (the log written afresh).
fn open<'a>(slot: &'a mut Option<Storage>, files: &Files) -> &'a mut Storage {
    slot.get_or_insert_with(|| {
        std::fs::write(&files.db, &files.pristine).expect("write a new log");
        Storage::open(&files.db, None, u64::MAX).expect("a new database")
    })
}

/// Every row, as one log record (for comparing two databases).
fn contents(s: &Storage) -> Value {
    s.db.record_for(&s.db.snapshot_changes(), 0)
}

/// Feeds `data` to nestdb's request path.
pub fn run(data: &[u8]) {
    let Some((&flags, stream)) = data.split_first() else {
        return;
    };
    STATE.with(|st| {
        let mut st = st.borrow_mut();
        let State { files, fresh } = st.get_or_insert_with(|| State {
            files: files(),
            fresh: None,
        });
        // Opened when a request needs the database: an input without one
        // (most mutants of a committing input) costs no schema parse.
        let mut slot = fresh.take();
        let mut monitors: Vec<Monitor> = Vec::new();
        let mut staged = false;
        let mut framer = Framer::new(64 * 1024);
        framer.push(stream);
        while let Ok(Some(frame)) = framer.next_frame() {
            let Ok(value) = serde_json::from_slice::<Value>(&frame) else {
                continue;
            };
            let Ok(Message::Request { method, params, .. }) = parse_message(value) else {
                continue;
            };
            let for_us = params.get(0).and_then(Value::as_str) == Some(DB);
            match method.as_str() {
                "transact" if for_us => {
                    let ops: Vec<Value> = params
                        .as_array()
                        .map(|a| a[1..].to_vec())
                        .unwrap_or_default();
                    staged |= transact(open(&mut slot, files), &mut monitors, &ops);
                }
                "monitor" | "monitor_cond" | "monitor_cond_since" if for_us => {
                    let version = match method.as_str() {
                        "monitor" => Version::V1,
                        "monitor_cond" => Version::V2,
                        _ => Version::V3,
                    };
                    let id = params.get(1).cloned().unwrap_or(Value::Null);
                    let requests = params.get(2).cloned().unwrap_or(Value::Null);
                    let storage = open(&mut slot, files);
                    if let Ok(m) = Monitor::parse(&storage.db, DB, id, version, &requests) {
                        let _ = m.initial(&storage.db);
                        if monitors.len() < 8 {
                            monitors.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(mut storage) = slot else {
            // No request reached the database.
            return;
        };
        storage.sync().expect("the log syncs");
        // Compacting a log that holds only the schema rewrites the same
        // bytes; it is done when the input committed something.
        let compacted = flags & 1 == 1 && staged;
        if compacted {
            storage.compact().expect("the log compacts");
        }
        if !staged && !compacted {
            // Nothing reached the log: it must still be the new one, and
            // the storage is as new (kept for the next input).
            assert_eq!(
                std::fs::read(&files.db).expect("read the log"),
                files.pristine,
                "nothing was committed, yet the log changed"
            );
            assert!(
                storage.last_txn.is_nil() && storage.history.is_empty(),
                "nothing was committed, yet there is a transaction id"
            );
            *fresh = Some(storage);
            return;
        }
        let before = contents(&storage);
        let last = storage.last_txn;
        drop(storage);
        let reopened = Storage::open(&files.db, None, u64::MAX)
            .unwrap_or_else(|e| panic!("the log does not reopen: {e}"));
        assert_eq!(
            contents(&reopened),
            before,
            "the reopened log differs from the database in memory"
        );
        if !compacted {
            assert_eq!(reopened.last_txn, last, "the last transaction id changed");
        }
    });
}

/// Runs one `transact`; true when it staged changes.
fn transact(storage: &mut Storage, monitors: &mut [Monitor], ops: &[Value]) -> bool {
    let owns = |_: &str| false;
    let ctx = ExecContext {
        owns_lock: &owns,
        wait_expired: true,
        read_only: None,
    };
    let before = contents(storage);
    match execute(&storage.db, ops, &ctx) {
        Outcome::Blocked { .. } => panic!("a wait blocked after its timeout"),
        Outcome::Done {
            results, changes, ..
        } => {
            assert!(
                results.len() == ops.len() || results.len() == ops.len() + 1,
                "{} results for {} operations",
                results.len(),
                ops.len()
            );
            assert!(
                results.iter().all(|r| r.is_object() || r.is_null()),
                "a result that is neither an object nor null: {results:?}"
            );
            let failed = results.iter().any(|r| r.get("error").is_some());
            match changes {
                Some(c) => {
                    assert!(!failed, "a failed transaction has changes: {results:?}");
                    let entry = storage.stage(c, 0);
                    for m in monitors.iter() {
                        let _ = m.compose(&storage.db, &entry.changes);
                    }
                    storage.sync().expect("the log syncs");
                    true
                }
                None => {
                    assert_eq!(
                        contents(storage),
                        before,
                        "no changes, yet the rows changed"
                    );
                    false
                }
            }
        }
    }
}
