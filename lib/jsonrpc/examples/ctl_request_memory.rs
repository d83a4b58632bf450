//! Peak memory of a control socket server fed hostile requests (issue 18,
//! defect 1): `CLIENTS` clients each stream a `SIZE_MIB` request
//! `{"id":1,"method":"version","params":[0,0,…]}` at an in-process
//! [`CtlServer`] at once, then the process's peak RSS (`VmHWM`) is printed.
//! The clients generate their request on the fly in 64 KiB chunks, so the
//! peak is the server's.
//!
//! `cargo run --release -p sluice-jsonrpc --example ctl_request_memory -- [SIZE_MIB] [CLIENTS] [METHOD]`

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;

use sluice_jsonrpc::unixctl::{CtlServer, Registry, ServerConfig};

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let size_mib: usize = args.next().map_or(63, |a| a.parse().expect("SIZE_MIB"));
    let clients: usize = args.next().map_or(1, |a| a.parse().expect("CLIENTS"));
    let method = args.next().unwrap_or_else(|| "version".to_owned());
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    registry
        .register_method(
            "json-echo",
            std::sync::Arc::new(|p: &serde_json::Value| Ok(serde_json::json!(p.is_array()))),
        )
        .expect("register json-echo");
    let server = CtlServer::start(
        ServerConfig::with_path(dir.path().join("s.ctl")),
        registry,
        || {},
    )
    .expect("start the control server");
    let before = vm_hwm_kib();
    let path = server.path().to_path_buf();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let path = path.clone();
            let method = method.clone();
            thread::spawn(move || {
                let mut s = UnixStream::connect(&path).expect("connect");
                let head = format!(r#"{{"id":1,"method":"{method}","params":["#);
                let tail = b"0]}";
                let chunk = "0,".repeat(32 * 1024);
                let body = size_mib * (1 << 20) - head.len() - tail.len();
                let mut sent = 0;
                // A write fails when the server refused the request and
                // closed the connection; its error reply is then read.
                let mut ok = s.write_all(head.as_bytes()).is_ok();
                while ok && sent + chunk.len() <= body {
                    ok = s.write_all(chunk.as_bytes()).is_ok();
                    sent += chunk.len();
                }
                if ok {
                    let rest = body - sent;
                    let _ = s.write_all(&chunk.as_bytes()[..rest - rest % 2]);
                    let _ = s.write_all(tail);
                }
                let reply = sluice_jsonrpc::Framer::new(1 << 20).read_value(&mut s);
                let text = format!("{reply:?}");
                text[..text.len().min(300)].to_owned()
            })
        })
        .collect();
    let replies: Vec<String> = workers
        .into_iter()
        .map(|w| w.join().expect("client"))
        .collect();
    let after = vm_hwm_kib();
    for r in replies.iter().take(3) {
        println!("reply: {r}");
    }
    println!(
        "{clients} x {size_mib} MiB \"{method}\" request(s): peak RSS {} MiB (before the requests {} MiB)",
        after / 1024,
        before / 1024
    );
}
