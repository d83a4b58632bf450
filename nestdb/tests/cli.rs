//! The nestdb-server command line: ovsdb-server-compatible options, TCP remotes with
//! inactivity probes, pidfile and log file, socket permissions, clean shutdown on
//! SIGTERM, and clear errors for bad invocations.

mod common;

use common::{have, nestdb_bin, run_ok, wait_until, Proc, Rpc, SCHEMA};
use nestdb::jsonrpc::{Framer, Message};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_testkit::free_port;

#[test]
fn tcp_remote_pidfile_logfile_socket_mode_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("s.ovsschema"), SCHEMA).unwrap();
    let port = free_port();
    let sock = d.join("run/sub/n.sock");
    let pid = d.join("n.pid");
    let log = d.join("logs/n.log");
    let child = Command::new(nestdb_bin())
        .arg(d.join("n.db"))
        .arg(format!("--schema={}", d.join("s.ovsschema").display()))
        .arg(format!("--remote=punix:{}", sock.display()))
        .arg(format!("--remote=ptcp:{port}:127.0.0.1"))
        .arg(format!("--unixctl={}", d.join("n.ctl").display()))
        .arg(format!("--pidfile={}", pid.display()))
        .arg(format!("--log-file={}", log.display()))
        .arg("--inactivity-probe=200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc {
        child,
        what: "nestdb".into(),
    };
    wait_until("the unix socket", || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode");
    // The pidfile and the log line are written once the listeners are up.
    let pidtext = wait_until("the pidfile", || std::fs::read_to_string(&pid).ok());
    assert_eq!(pidtext.trim(), p.child.id().to_string());
    wait_until("the ready line in the log file", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("nestdb-server ready"))
    });
    if have("ovsdb-client") {
        let out = run_ok(
            "ovsdb-client",
            &["list-dbs", &format!("tcp:127.0.0.1:{port}")],
        );
        assert_eq!(out, "Test\n_Server\n");
    }
    // A silent TCP client is probed with echo and dropped when it never answers.
    let mut t = TcpStream::connect(("127.0.0.1", port)).unwrap();
    t.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut parser = Framer::new(1 << 20);
    let mut buf = [0u8; 4096];
    let first = loop {
        if let Some(v) = parser.next_value().unwrap() {
            break v;
        }
        let n = t.read(&mut buf).expect("server sends an inactivity probe");
        assert!(n > 0, "disconnected before any probe");
        parser.push(&buf[..n]);
    };
    match Message::from_json(first).unwrap() {
        Message::Request { method, id, .. } => {
            assert_eq!(method, "echo");
            assert_eq!(id, json!("echo"));
        }
        other => panic!("expected an echo probe, got {other:?}"),
    }
    let n = loop {
        match t.read(&mut buf) {
            Ok(n) if n > 0 => continue,
            Ok(n) => break n,
            // A reset connection is a disconnection too; a timeout fails below.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break 0,
            Err(e) => panic!("unresponsive client was not disconnected: {e}"),
        }
    };
    assert_eq!(n, 0, "unresponsive TCP client must be disconnected");
    // An answering TCP client stays connected across probes.
    let mut t = TcpStream::connect(("127.0.0.1", port)).unwrap();
    t.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut parser = Framer::new(1 << 20);
    let mut answered = 0;
    wait_until("three answered probes", || {
        match t.read(&mut buf) {
            Ok(0) => panic!("answering client was disconnected"),
            Ok(n) => parser.push(&buf[..n]),
            Err(_) => {}
        }
        while let Some(v) = parser.next_value().unwrap() {
            if let Ok(Message::Request { params, id, .. }) = Message::from_json(v) {
                t.write_all(&Message::Reply { result: params, id }.to_bytes())
                    .unwrap();
                answered += 1;
            }
        }
        (answered >= 3).then_some(())
    });
    // SIGTERM: clean exit, sockets and pidfile removed.
    // SAFETY: sending a signal to our own child process by pid.
    let rc = unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let st = wait_until("exit after SIGTERM", || p.child.try_wait().ok().flatten());
    assert!(st.success(), "{st}");
    assert!(!sock.exists(), "socket removed on exit");
    assert!(!pid.exists(), "pidfile removed on exit");
}

fn fails_with(args: &[String], needle: &str) {
    let out = Command::new(nestdb_bin()).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
}

#[test]
fn bad_invocations_fail_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ctl = format!("--unixctl={}", d.join("c.ctl").display());
    let remote = format!("--remote=punix:{}", d.join("s.sock").display());
    let db = d.join("x.db").display().to_string();
    fails_with(
        &[db.clone(), remote.clone(), ctl.clone()],
        "pass --schema FILE to create it",
    );
    fails_with(
        &[db.clone(), "--remote=tcp:1:2".into(), ctl.clone()],
        "is not supported",
    );
    std::fs::write(d.join("junk.db"), "this is not a database\n").unwrap();
    fails_with(
        &[
            d.join("junk.db").display().to_string(),
            remote.clone(),
            ctl.clone(),
        ],
        "not an OVSDB standalone database file",
    );
    std::fs::write(d.join("bad.ovsschema"), "{\"name\": 5}").unwrap();
    fails_with(
        &[
            db.clone(),
            format!("--schema={}", d.join("bad.ovsschema").display()),
            remote.clone(),
            ctl.clone(),
        ],
        "invalid schema",
    );
    // Two servers on one database file: the second is refused.
    std::fs::write(d.join("s.ovsschema"), SCHEMA).unwrap();
    let child = Command::new(nestdb_bin())
        .args([
            db.clone(),
            format!("--schema={}", d.join("s.ovsschema").display()),
            remote,
            ctl,
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _p = Proc {
        child,
        what: "first".into(),
    };
    wait_until("first server", || {
        std::os::unix::net::UnixStream::connect(d.join("s.sock")).ok()
    });
    fails_with(
        &[
            db,
            format!("--remote=punix:{}", d.join("t.sock").display()),
            format!("--unixctl={}", d.join("t.ctl").display()),
        ],
        "locked by another process",
    );
    // A second server on the same socket path is refused, not silently stolen.
    fails_with(
        &[
            d.join("other.db").display().to_string(),
            format!("--schema={}", d.join("s.ovsschema").display()),
            format!("--remote=punix:{}", d.join("s.sock").display()),
            format!("--unixctl={}", d.join("u.ctl").display()),
        ],
        "another server is listening",
    );
    let mut c = Rpc::connect(&d.join("s.sock"));
    assert_eq!(c.call("echo", json!([])).unwrap(), json!([]));
}

#[test]
fn serves_several_databases() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("s.ovsschema"), SCHEMA).unwrap();
    // A second database with its own schema, created in OVSDB file format.
    let other: serde_json::Value = serde_json::json!({"name": "Other", "version": "0.0.1",
        "tables": {"T": {"columns": {"v": {"type": "integer"}}}}});
    drop(nestdb::log::Log::create(&d.join("other.db"), &[other]).unwrap());
    let sock = d.join("n.sock");
    let child = Command::new(nestdb_bin())
        .arg(d.join("test.db"))
        .arg(d.join("other.db"))
        .arg(format!("--schema={}", d.join("s.ovsschema").display()))
        .arg(format!("--remote=punix:{}", sock.display()))
        .arg(format!("--unixctl={}", d.join("n.ctl").display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _p = Proc {
        child,
        what: "nestdb".into(),
    };
    wait_until("the socket", || {
        std::os::unix::net::UnixStream::connect(&sock).ok()
    });
    let mut c = Rpc::connect(&sock);
    assert_eq!(
        c.call("list_dbs", json!([])).unwrap(),
        json!(["_Server", "Test", "Other"])
    );
    let r = c
        .call(
            "transact",
            json!(["Other", {"op": "insert", "table": "T", "row": {"v": 1}}]),
        )
        .unwrap();
    assert!(r[0]["uuid"].is_array(), "{r}");
    let r = c
        .call(
            "transact",
            json!(["Test", {"op": "select", "table": "T", "where": []}]),
        )
        .unwrap();
    assert_eq!(
        r[0]["error"], "syntax error",
        "table T exists only in Other"
    );
    // The same schema name twice is refused with a clear message.
    fails_with(
        &[
            d.join("a.db").display().to_string(),
            d.join("b.db").display().to_string(),
            format!("--schema={}", d.join("s.ovsschema").display()),
            format!("--remote=punix:{}", d.join("x.sock").display()),
            format!("--unixctl={}", d.join("x.ctl").display()),
        ],
        "database Test is served twice",
    );
}
