//! Helpers of the hostile-client tests (a server must answer a peer that
//! misbehaves with an error or a close and keep serving the others): a
//! non-root peer played by the test binary itself, streaming an oversized
//! message, and reading until the server hangs up. Every read has a bound and fails naming what it waited
//! for. Thread-safety: plain functions.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

/// The uid (and gid) of `nobody`, which the non-root peer runs as.
pub const NOBODY: u32 = 65534;

/// Runs test `child_test` of the current test binary as `nobody`, with
/// `env_key=env_value` set so that it knows it plays the peer, and returns
/// what the child printed after `marker` on its output (one line). Panics
/// with the child's output if it fails or prints no such line.
pub fn run_as_nobody(child_test: &str, env_key: &str, env_value: &str, marker: &str) -> String {
    let output = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(env_key, env_value)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the test binary as nobody");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, r)| r.to_owned()))
        .unwrap_or_else(|| panic!("the child printed no '{marker}' line:\n{stdout}"))
}

/// Reads until the server closes `stream` (or resets it) and returns what
/// it sent; panics naming `what` if that takes longer than `limit`.
pub fn read_to_close(stream: &mut UnixStream, what: &str, limit: Duration) -> Vec<u8> {
    stream
        .set_read_timeout(Some(limit))
        .expect("set a read timeout");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => {
                panic!("{what}: the server did not close the connection within {limit:?}: {e}")
            }
        }
    }
}

/// Streams a message of exactly `len` bytes — `head`, then `fill` repeated,
/// then `tail` — in 64 KiB writes, and stops quietly as soon as a write
/// fails (the server closed the connection, as it should past its limit).
pub fn stream_message(stream: &mut UnixStream, len: usize, head: &[u8], fill: &[u8], tail: &[u8]) {
    let body = len - head.len() - tail.len();
    let chunk: Vec<u8> = fill.iter().copied().cycle().take(1 << 16).collect();
    let mut ok = stream.write_all(head).is_ok();
    let mut sent = 0;
    while ok && sent < body {
        let n = chunk.len().min(body - sent);
        ok = stream.write_all(&chunk[..n]).is_ok();
        sent += n;
    }
    if ok {
        let _ = stream.write_all(tail);
    }
}
