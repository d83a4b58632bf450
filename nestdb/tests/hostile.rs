//! Hostile clients against a running nestdb-server (issue 18, point 5 and
//! defect 4): monitor clients that never read, a message too costly to
//! decode, truncated frames, a message of the byte limit + 1, slow readers,
//! a thousand idle connections, and a peer that is not root on a shared
//! socket. Each gets an error or a close (or, for the non-root peer, read
//! access only) and the server keeps answering the others. Every wait is
//! bounded and fails with a message.

mod common;

use common::{Impl, Rpc, ServerProc, WAIT};
use nestdb::jsonrpc::Message;
use serde_json::{json, Value};
use sluice_testkit::hostile::{self, NOBODY};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Set in the child process that plays the non-root peer.
const CHILD_ENV: &str = "NESTDB_HOSTILE_CHILD_SOCKET";

fn start(extra: &[&str]) -> (tempfile::TempDir, ServerProc) {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(Impl::Nestdb, dir.path(), extra);
    (dir, s)
}

fn stats(s: &ServerProc) -> String {
    Rpc::connect(&s.ctl)
        .call("stats", json!([]))
        .expect("stats")
        .as_str()
        .unwrap()
        .to_owned()
}

fn stat(s: &ServerProc, name: &str) -> u64 {
    let text = stats(s);
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in stats: {text}"))
        .parse()
        .unwrap()
}

fn echo_is_answered(s: &ServerProc, after: &str) {
    let mut c = s.client();
    assert_eq!(
        c.call("echo", json!(["still here"])),
        Ok(json!(["still here"])),
        "after {after}"
    );
}

/// Reads until the server closes the connection; returns what it sent.
fn read_to_close(stream: &mut UnixStream, what: &str) -> Vec<u8> {
    hostile::read_to_close(stream, what, WAIT)
}

/// Streams a message of exactly `len` bytes, `{"id":1,"method":"echo","params":[…]}`
/// whose params are `fill` repeated; stops quietly if the server closes.
fn stream_message(stream: &mut UnixStream, len: usize, fill: &[u8]) {
    let (head, tail) = (br#"{"id":1,"method":"echo","params":["#, b"0]}");
    hostile::stream_message(stream, len, head, fill, tail);
}

fn protocol_error_text(bytes: &[u8]) -> String {
    let mut framer = nestdb::jsonrpc::Framer::new(1 << 20);
    framer.push(bytes);
    let v = framer
        .next_value()
        .expect("valid JSON")
        .expect("an error reply before the close");
    v["error"]["details"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn never_reading_monitors_cannot_take_more_than_the_memory_bound() {
    // Per-client backlog larger than the total: only the total can trigger.
    let (_d, s) = start(&["--max-backlog=67108864", "--max-memory=4194304"]);
    let mut stuck: Vec<Rpc> = (0..3).map(|_| s.client()).collect();
    for c in &mut stuck {
        c.call("monitor", json!(["Test", 0, {"Node": {}}])).unwrap();
    }
    let mut w = s.client();
    let big = "v".repeat(16_000);
    let mut dropped = false;
    for i in 0..2000 {
        let r = w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": format!("n{i}"), "labels": ["map", [["k", big]]]}}]));
        assert!(r[0].get("error").is_none(), "{r:?}");
        if stat(&s, "memory-drops") >= 1 {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "the never-reading monitors were never disconnected"
    );
    assert_eq!(stat(&s, "backlog-drops"), 0);
    echo_is_answered(&s, "never-reading monitors");
    let log = std::fs::read_to_string(s.dir.join("Nestdb.stderr")).unwrap();
    assert!(
        log.contains("over the 4194304-byte limit (--max-memory)"),
        "{log}"
    );
}

#[test]
fn a_message_too_costly_to_decode_is_refused_without_holding_up_others() {
    let (_d, s) = start(&[]);
    // 8 MiB of `0,`: 4M values, about 1 GB once decoded.
    let mut hostile = UnixStream::connect(&s.sock).unwrap();
    stream_message(&mut hostile, 8 << 20, b"0,");
    let sent = read_to_close(&mut hostile, "costly message");
    let text = protocol_error_text(&sent);
    assert!(text.contains("--max-message-memory"), "{text}");
    echo_is_answered(&s, "a message too costly to decode");
    // The same size as one string (a large but real row) is accepted.
    let mut w = s.client();
    let big = "s".repeat(8 << 20);
    let r = w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "big", "labels": ["map", [["k", big]]]}}]));
    assert!(r[0]["uuid"].is_array(), "{r:?}");
}

#[test]
fn truncated_and_oversize_frames_get_an_error_or_a_close() {
    let (_d, s) = start(&[]);
    // Half a message, then the client closes: the session ends.
    let mut half = UnixStream::connect(&s.sock).unwrap();
    half.write_all(br#"{"id":1,"method":"ec"#).unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    read_to_close(&mut half, "truncated frame");
    common::wait_until("the truncated session to be reaped", || {
        (stat(&s, "sessions") == 0).then_some(())
    });
    // Half a message, then silence: it holds only its bytes, others go on.
    let mut stalled = UnixStream::connect(&s.sock).unwrap();
    stalled
        .write_all(br#"{"id":1,"method":"echo","params":["#)
        .unwrap();
    echo_is_answered(&s, "a stalled half frame");
    // One byte over the message limit (32 MiB by default).
    let limit = 32 << 20;
    let mut over = UnixStream::connect(&s.sock).unwrap();
    stream_message(&mut over, limit + 1, b"aaaa");
    let sent = read_to_close(&mut over, "oversize message");
    let text = protocol_error_text(&sent);
    assert!(text.contains(&format!("{limit}-byte limit")), "{text}");
    // Garbage.
    let mut garbage = UnixStream::connect(&s.sock).unwrap();
    garbage
        .write_all(b"\x00\x01GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    let text = protocol_error_text(&read_to_close(&mut garbage, "garbage"));
    assert!(text.contains("not speaking JSON-RPC"), "{text}");
    echo_is_answered(&s, "truncated, oversize and garbage frames");
}

#[test]
fn slow_readers_and_a_thousand_idle_connections_do_not_hold_up_others() {
    let (_d, s) = start(&[]);
    let mut w = s.client();
    let big = "r".repeat(1 << 20);
    let r = w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "big", "labels": ["map", [["k", big]]]}}]));
    assert!(r[0]["uuid"].is_array(), "{r:?}");
    // A slow reader asks for the 1 MiB row and reads it 4 KiB at a time.
    let mut slow = UnixStream::connect(&s.sock).unwrap();
    let req = Message::Request {
        method: "transact".into(),
        params: json!(["Test", {"op": "select", "table": "Node", "where": []}]),
        id: json!(1),
    };
    slow.write_all(&req.to_bytes()).unwrap();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    for round in 0..8 {
        assert!(slow.read(&mut buf).expect("the slow reader's reply") > 0);
        echo_is_answered(&s, &format!("slow reader round {round}"));
    }
    let idle: Vec<UnixStream> = (0..1000)
        .map(|i| {
            UnixStream::connect(&s.sock).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    echo_is_answered(&s, "1000 idle connections");
    assert!(stat(&s, "sessions") >= 1000);
    drop(idle);
}

/// Runs in the child started by `non_root_peer_may_read_but_not_write`, as
/// `nobody`: prints one JSON line with what each request got.
#[test]
fn child_peer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut c = Rpc::connect(std::path::Path::new(&path));
    let out = json!({
        "list_dbs": c.call("list_dbs", json!([])).is_ok(),
        "get_schema": c.call("get_schema", json!(["Test"])).is_ok(),
        "select": c.call("transact", json!(["Test", {"op": "select", "table": "Node", "where": []}])),
        "monitor": c.call("monitor", json!(["Test", "m", {"Node": {}}])).is_ok(),
        "insert": c.call("transact", json!(["Test", {"op": "select", "table": "Node", "where": []}, {"op": "insert", "table": "Node", "row": {"name": "from-nobody"}}])),
        "lock": c.call("lock", json!(["l"])),
        "echo": c.call("echo", json!(["after"])),
    });
    println!("CHILD-RESULT {out}");
}

#[test]
fn non_root_peer_may_read_but_not_write() {
    if !sluice_testkit::is_root() {
        common::report_skip("SKIPPED: running a peer as uid 65534 needs root");
        return;
    }
    let (d, s) = start(&[]);
    // Share the socket: anyone may connect, so the peer credentials are
    // what keeps a non-root peer from writing.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&s.sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut root = s.client();
    let r = root.transact(json!([{"op": "insert", "table": "Node", "row": {"name": "from-root"}}]));
    assert!(r[0]["uuid"].is_array(), "{r:?}");
    let line = hostile::run_as_nobody(
        "child_peer",
        CHILD_ENV,
        &s.sock.to_string_lossy(),
        "CHILD-RESULT ",
    );
    let got: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["list_dbs"], true, "{got}");
    assert_eq!(got["get_schema"], true, "{got}");
    assert_eq!(got["monitor"], true, "{got}");
    assert_eq!(
        got["select"]["Ok"][0]["rows"][0]["name"], "from-root",
        "{got}"
    );
    for refused in ["insert", "lock"] {
        assert_eq!(got[refused]["Err"]["error"], "permission error", "{got}");
        assert!(
            got[refused]["Err"]["details"]
                .as_str()
                .unwrap()
                .contains(&format!("uid {NOBODY}")),
            "{got}"
        );
    }
    assert_eq!(got["echo"]["Ok"], json!(["after"]), "{got}");
    let rows = root.transact(json!([{"op": "select", "table": "Node", "where": []}]));
    assert_eq!(rows[0]["rows"].as_array().unwrap().len(), 1, "{rows:?}");
    assert_eq!(stat(&s, "permission-denied"), 2);
}

fn vm_hwm_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

/// The reliability figure: 1,000 idle connections, 20 monitor clients that
/// never read while a writer floods updates, and one client sending a
/// 64 MiB + 1 message, at once; another client's echo is still answered and
/// the server's peak RSS stays bounded. Prints a `FIGURE:` line.
#[test]
fn figure_hostile_mix() {
    let (_d, s) = start(&[]);
    let pid = s.proc.as_ref().unwrap().child.id();
    let idle: Vec<UnixStream> = (0..1000)
        .map(|i| {
            UnixStream::connect(&s.sock).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    let mut deaf: Vec<Rpc> = (0..20).map(|_| s.client()).collect();
    for c in &mut deaf {
        c.call("monitor", json!(["Test", 0, {"Node": {}}])).unwrap();
    }
    let sock = s.sock.clone();
    let oversize = std::thread::spawn(move || {
        let mut c = UnixStream::connect(&sock).unwrap();
        stream_message(&mut c, (64 << 20) + 1, b"0,");
        protocol_error_text(&read_to_close(&mut c, "64 MiB + 1 message"))
    });
    let mut w = s.client();
    let big = "v".repeat(256 << 10);
    let started = Instant::now();
    let mut txns = 0;
    while stat(&s, "memory-drops") + stat(&s, "backlog-drops") < 20 {
        let r = w.transact(json!([{"op": "insert", "table": "Node", "row": {"name": format!("n{txns}"), "labels": ["map", [["k", big]]]}}]));
        assert!(r[0].get("error").is_none(), "{r:?}");
        txns += 1;
        assert!(
            started.elapsed() < WAIT * 10,
            "the never-reading monitors were not all disconnected after {txns} transactions"
        );
        if txns % 50 == 0 {
            echo_is_answered(&s, &format!("{txns} transactions"));
        }
    }
    let text = oversize.join().unwrap();
    assert!(text.contains("byte limit"), "{text}");
    echo_is_answered(&s, "the hostile mix");
    let peak = vm_hwm_mib(pid);
    println!(
        "FIGURE: 1,000 idle + 20 never-reading monitors ({txns} x 256 KiB updates) + 1 64 MiB+1 client: \
         other clients' echo answered throughout, {} sessions dropped for memory, server RSS peak {peak} MiB",
        stat(&s, "memory-drops")
    );
    assert!(
        peak < 1024,
        "the server's RSS peaked at {peak} MiB (limit --max-memory 512 MiB)"
    );
    drop(idle);
}
