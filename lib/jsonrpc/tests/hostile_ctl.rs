//! Hostile clients against the control socket server (issue 18, point 5),
//! in-process with a registry as `sluiced` runs it: a peer that is not
//! root, truncated frames, a request of 64 MiB + 1 byte, a slow reader, a
//! thousand idle connections and a client that never reads its replies.
//! Each gets an error reply or a close, and after each a well-behaved client
//! is still answered. Waits are bounded and fail with a message; nothing
//! depends on timing except the configured timeouts that end a stalled
//! client, which the test waits for without a deadline of its own.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_jsonrpc::unixctl::{AllowedPeers, CtlServer, Registry, ServerConfig};
use sluice_jsonrpc::Framer;
use sluice_testkit::hostile::{self, NOBODY};

/// Set in the child process that plays the non-root client.
const CHILD_ENV: &str = "SLUICE_HOSTILE_CTL_CHILD_SOCKET";

/// Reads exactly one reply (byte by byte, so a following one stays in the
/// socket).
fn read_reply(s: &mut UnixStream) -> Value {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut framer = Framer::new(64 << 20);
    let mut byte = [0u8; 1];
    loop {
        let n = s.read(&mut byte).expect("no reply within 60 s");
        assert!(n > 0, "the server closed the connection without replying");
        framer.push(&byte);
        if let Some(reply) = framer.next_value().unwrap() {
            return reply;
        }
    }
}

/// Waits (at most 60 s) until the server has closed its end of `s`,
/// without reading what it sent.
#[allow(unsafe_code)]
fn assert_hung_up(s: &UnixStream, what: &str) {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor `s` keeps open.
    let rc = unsafe { libc::poll(&mut fd, 1, 60_000) };
    assert!(
        rc == 1 && fd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0,
        "{what}: the server did not close the connection within 60 s"
    );
}

fn call(s: &mut UnixStream, id: u64, method: &str, params: Value) -> Value {
    let req = json!({"id": id, "method": method, "params": params});
    s.write_all(req.to_string().as_bytes()).unwrap();
    read_reply(s)
}

/// Reads until the server closes `s` (any data before is skipped).
fn assert_closed(s: &mut UnixStream, what: &str) {
    hostile::read_to_close(s, what, Duration::from_secs(60));
}

/// The next reply on `s` is an error whose text contains `expected`, and
/// then the server closes `s`.
fn assert_error_then_closed(s: &mut UnixStream, expected: &str, what: &str) {
    let reply = read_reply(s);
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains(expected)),
        "{what}: expected an error containing {expected:?}, got {reply}"
    );
    assert_closed(s, what);
}

/// A well-behaved client: one fresh connection, one echo.
fn good_client_is_answered(path: &Path, after: &str) {
    let mut s =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("after {after}: cannot connect: {e}"));
    let reply = call(&mut s, 7, "echo", json!(["still here"]));
    assert_eq!(
        reply,
        json!({"id": 7, "result": "still here\n", "error": null}),
        "after {after}"
    );
}

fn registry() -> (Registry, Arc<AtomicUsize>) {
    let r = Registry::with_version("sluiced (Sluice) test");
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    r.register(
        "echo",
        "ARG",
        0,
        1,
        Arc::new(move |args: &[String]| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(args.join(" "))
        }),
    )
    .unwrap();
    // A reply large enough to fill a socket's buffers quickly.
    r.register(
        "big",
        "",
        0,
        0,
        Arc::new(|_: &[String]| Ok("x".repeat(1 << 20))),
    )
    .unwrap();
    (r, ran)
}

fn start(dir: &Path, config: impl FnOnce(&mut ServerConfig)) -> (CtlServer, Arc<AtomicUsize>) {
    let mut cfg = ServerConfig::with_path(dir.join("sluiced.ctl"));
    cfg.write_timeout = Duration::from_millis(500);
    cfg.read_timeout = Duration::from_millis(500);
    config(&mut cfg);
    let (r, ran) = registry();
    (CtlServer::start(cfg, r, || {}).expect("server starts"), ran)
}

/// Runs in the child started by `non_root_peer_is_refused`, as `nobody`.
#[test]
fn child_client() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut s = UnixStream::connect(&path).expect("the child can open the socket file");
    let reply = call(&mut s, 3, "echo", json!(["from nobody"]));
    println!("CHILD-REPLY {reply}");
    assert_closed(&mut s, "refused peer");
}

#[test]
fn non_root_peer_is_refused() {
    if !sluice_testkit::is_root() {
        sluice_testkit::report_skip!("SKIPPED: running a client as uid {NOBODY} needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The socket file is open to everyone: the peer credentials are the
    // only barrier.
    let (server, ran) = start(dir.path(), |c| {
        c.socket_mode = 0o666;
        c.allowed_peers = AllowedPeers::RootAndSelf;
    });
    let line = hostile::run_as_nobody(
        "child_client",
        CHILD_ENV,
        &server.path().to_string_lossy(),
        "CHILD-REPLY ",
    );
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["id"], 3);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("permission denied: uid {NOBODY} ")),
        "{reply}"
    );
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "a refused peer ran a command"
    );
    good_client_is_answered(server.path(), "a refused non-root peer");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn truncated_frames_get_a_close_or_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path(), |_| {});
    // Half a request, then the client ends its side: closed.
    let mut s = UnixStream::connect(server.path()).unwrap();
    s.write_all(br#"{"id":1,"method":"ec"#).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closed(&mut s, "truncated then shut down");
    good_client_is_answered(server.path(), "a truncated frame");
    // Half a request, then silence: an error once the read timeout passes.
    let mut s = UnixStream::connect(server.path()).unwrap();
    s.write_all(br#"{"id":1,"method":"echo","params":["#)
        .unwrap();
    good_client_is_answered(server.path(), "a stalled half frame (while it stalls)");
    assert_error_then_closed(&mut s, "timed out", "stalled half frame");
    // A complete request cut by garbage.
    let mut s = UnixStream::connect(server.path()).unwrap();
    s.write_all(b"{\"id\":1,\"method\":\"echo\",\"params\":[\"a\"]}\x00\x01")
        .unwrap();
    assert_eq!(read_reply(&mut s)["result"], "a\n");
    assert_error_then_closed(&mut s, "not speaking JSON-RPC", "garbage");
    good_client_is_answered(server.path(), "garbage");
}

#[test]
fn a_request_of_64_mib_plus_one_byte_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path(), |c| {
        c.read_timeout = Duration::from_secs(30);
    });
    let limit = ServerConfig::default().max_message_bytes;
    assert_eq!(limit, 64 << 20);
    let mut s = UnixStream::connect(server.path()).unwrap();
    // The server closes as soon as the limit is crossed; writes then fail.
    let (head, tail) = (br#"{"id":1,"method":"echo","params":[""#, br#""]}"#);
    hostile::stream_message(&mut s, limit + 1, head, b"a", tail);
    let expected = format!("{limit}-byte limit");
    assert_error_then_closed(&mut s, &expected, "oversize request");
    good_client_is_answered(server.path(), "a 64 MiB + 1 request");
}

#[test]
fn slow_and_never_reading_clients_do_not_hold_up_others() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path(), |_| {});
    // A slow reader: asks for a 1 MiB reply and reads it 4 KiB at a time,
    // while another client is answered between its reads.
    let mut slow = UnixStream::connect(server.path()).unwrap();
    slow.write_all(br#"{"id":1,"method":"big","params":[]}"#)
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut got = 0;
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    for round in 0..8 {
        got += slow.read(&mut buf).expect("slow reader gets its reply");
        good_client_is_answered(server.path(), &format!("slow reader round {round}"));
    }
    assert!(got > 0);
    // A client that never reads: requests pile up replies until the
    // server's write times out and it is disconnected.
    let mut deaf = UnixStream::connect(server.path()).unwrap();
    for id in 0..16u64 {
        let req = json!({"id": id, "method": "big", "params": []}).to_string();
        if deaf.write_all(req.as_bytes()).is_err() {
            break;
        }
    }
    good_client_is_answered(server.path(), "a client that never reads");
    assert_hung_up(&deaf, "never-reading client");
    good_client_is_answered(server.path(), "a never-reading client was dropped");
}

#[test]
fn a_thousand_idle_connections_do_not_lock_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path(), |_| {});
    let max = ServerConfig::default().max_connections;
    let mut idle: Vec<UnixStream> = (0..1000)
        .map(|i| {
            UnixStream::connect(server.path())
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    // Served after them, so every eviction they caused has happened.
    good_client_is_answered(server.path(), "1000 idle connections");
    let mut closed = 0;
    let mut open = 0;
    for s in &mut idle {
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                // A "too many connections" error reply before the close.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    open += 1;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    closed += 1;
                    break;
                }
                Err(e) => panic!("idle connection: {e}"),
            }
        }
    }
    assert!(
        open < max,
        "{open} idle connections still held (limit {max})"
    );
    assert_eq!(closed + open, 1000);
    println!("1000 idle connections: {closed} closed, {open} still open");
}
