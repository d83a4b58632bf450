//! End-to-end tests of the `sluicectl` binary against the real control
//! socket server (in-process, in a temporary directory).

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};

use common::{Call, TestDaemon};
use serde_json::{json, Value};

/// Runs sluicectl with `--socket` and a reply timeout so a broken server
/// fails the test instead of hanging it.
fn sluicectl(daemon: &TestDaemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--timeout", "60"])
        .args(args)
        .env_remove("SLUICE_CTL")
        .output()
        .expect("run sluicectl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_subcommand_sends_its_unixctl_command_and_prints_the_reply() {
    let daemon = TestDaemon::start();
    let cases: &[(&[&str], &str, &[&str])] = &[
        (
            &["add-flow", "table=0,priority=5,ip,actions=drop"],
            "add-flow",
            &["table=0,priority=5,ip,actions=drop"],
        ),
        (&["del-flows"], "del-flows", &[]),
        (
            &["del-flows", "--strict", "priority=5,ip"],
            "del-flows",
            &["--strict", "priority=5,ip"],
        ),
        (
            &["mod-flows", "ip,actions=output:2"],
            "mod-flows",
            &["ip,actions=output:2"],
        ),
        (&["dump-flows"], "dump-flows", &[]),
        (
            &["dump-flows", "table=2", "tcp"],
            "dump-flows",
            &["table=2", "tcp"],
        ),
        (
            &["trace", "in_port=1,tcp,tp_dst=80"],
            "trace",
            &["in_port=1,tcp,tp_dst=80"],
        ),
        (
            &["trace", "ffffffffffff0000000000010806"],
            "trace",
            &["ffffffffffff0000000000010806"],
        ),
        (&["dump-ports"], "dump-ports", &[]),
        (&["dump-ports", "uplink"], "dump-ports", &["uplink"]),
        (&["pmd-stats-show"], "pmd-stats-show", &[]),
        (&["pmd-stats-clear"], "pmd-stats-clear", &[]),
        (&["dump-cache"], "dump-cache", &[]),
        (
            &["capture", "uplink", "-c", "10", "-w", "/tmp/u.pcap"],
            "capture",
            &["uplink", "/tmp/u.pcap", "10"],
        ),
        (&["dump-conntrack"], "dump-conntrack", &[]),
        (&["dump-conntrack", "zone=3"], "dump-conntrack", &["zone=3"]),
        (&["flush-conntrack"], "flush-conntrack", &[]),
        (&["conntrack-stats"], "conntrack-stats", &[]),
        (&["dump-services"], "dump-services", &[]),
        (&["dump-tunnels"], "dump-tunnels", &[]),
        (&["dump-neighbours"], "dump-neighbours", &[]),
        (&["flush-neighbours"], "flush-neighbours", &[]),
        (
            &["call", "echo", "a", "--b", "c d"],
            "echo",
            &["a", "--b", "c d"],
        ),
    ];
    for (args, command, sent) in cases {
        let out = sluicectl(&daemon, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(
            daemon.last_call(),
            Some(Call::Command(command.to_string(), strings(sent))),
            "{args:?}"
        );
        assert_eq!(
            stdout(&out),
            format!("{command}({})\n", sent.join("|")),
            "{args:?}"
        );
        assert_eq!(stderr(&out), "", "{args:?}");
    }
}

#[test]
fn list_commands_and_version_print_the_server_text() {
    let daemon = TestDaemon::start();
    let out = sluicectl(&daemon, &["list-commands"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), daemon.registry.list_commands());
    assert!(stdout(&out).contains("\n  capture                 PORT FILE [COUNT]\n"));
    let out = sluicectl(&daemon, &["version"]);
    assert_eq!(stdout(&out), "sluiced (Sluice) e2e\n");
}

#[test]
fn add_flows_and_replace_flows_send_one_bundle() {
    let daemon = TestDaemon::start();
    let file = daemon.dir().join("flows.txt");
    std::fs::write(
        &file,
        "# web\n table=0,priority=10,tcp,tp_dst=80,actions=output:2 \n\n\
         table=0,priority=0,actions=drop # default\n   # indented comment\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let out = sluicectl(&daemon, &["add-flows", file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let adds = json!([
        {"op": "add", "flow": "table=0,priority=10,tcp,tp_dst=80,actions=output:2"},
        {"op": "add", "flow": "table=0,priority=0,actions=drop"},
    ]);
    assert_eq!(
        daemon.last_call(),
        Some(Call::Method("flow-bundle".into(), adds.clone()))
    );
    // A structured result is printed as JSON even in text format.
    let printed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(printed, json!({"method": "flow-bundle", "params": adds}));

    let out = sluicectl(&daemon, &["replace-flows", file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let Some(Call::Method(name, Value::Array(ops))) = daemon.last_call() else {
        panic!("no bundle recorded");
    };
    assert_eq!(name, "flow-bundle");
    assert_eq!(ops[0], json!({"op": "del", "match": ""}));
    assert_eq!(Value::Array(ops[1..].to_vec()), adds);
    assert_eq!(daemon.call_count(), 2);
}

#[test]
fn add_flows_reads_standard_input() {
    let daemon = TestDaemon::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--timeout", "60", "add-flows", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"priority=1,actions=drop\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        daemon.last_call(),
        Some(Call::Method(
            "flow-bundle".into(),
            json!([{"op": "add", "flow": "priority=1,actions=drop"}])
        ))
    );
}

#[test]
fn missing_flow_file_exits_2_without_contacting_the_server() {
    let daemon = TestDaemon::start();
    let missing = daemon.dir().join("nope.flows");
    let out = sluicectl(&daemon, &["add-flows", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "sluicectl: cannot read flow file {}: No such file or directory\n",
            missing.display()
        )
    );
    assert_eq!(daemon.call_count(), 0);
}

#[test]
fn server_error_exits_1_with_one_line_on_stderr() {
    let daemon = TestDaemon::start();
    let out = sluicectl(&daemon, &["call", "fail"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "sluicectl: flow table 3 is full; remove flows first\n"
    );

    let out = sluicectl(&daemon, &["call", "no-such-command"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "sluicectl: \"no-such-command\" is not a valid command (use \"list-commands\" to see a list of valid commands)\n"
    );

    let out = sluicectl(&daemon, &["call", "add-flow"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "sluicectl: \"add-flow\" command requires at least 1 arguments\n"
    );
}

#[test]
fn cannot_connect_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("sluiced.ctl");
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("--socket")
        .arg(&missing)
        .arg("version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "sluicectl: cannot connect to {}: No such file or directory (is sluiced running?)\n",
            missing.display()
        )
    );

    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("no-such-subcommand")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unrecognized subcommand"),
        "{}",
        stderr(&out)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .args(["--timeout", "-1", "version"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn socket_path_comes_from_sluice_ctl_env() {
    let daemon = TestDaemon::start();
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .env("SLUICE_CTL", daemon.socket())
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "sluiced (Sluice) e2e\n");
}

#[test]
fn json_format_uses_the_method_or_wraps_the_text() {
    let daemon = TestDaemon::start();
    // dump-ports has a structured method: it gets {"args": [...]}.
    let out = sluicectl(&daemon, &["--format", "json", "dump-ports", "uplink"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        printed,
        json!({"method": "dump-ports", "params": {"args": ["uplink"]}})
    );
    // dump-tunnels has only text: it comes back as a JSON string.
    let out = sluicectl(&daemon, &["--format", "json", "dump-tunnels"]);
    let printed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(printed, json!("dump-tunnels()\n"));
}

#[test]
fn capture_file_is_made_absolute() {
    let daemon = TestDaemon::start();
    let out = Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .current_dir(daemon.dir())
        .arg("--socket")
        .arg(daemon.socket())
        .args(["capture", "pod1", "-w", "out.pcap"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = daemon.dir().join("out.pcap");
    assert_eq!(
        daemon.last_call(),
        Some(Call::Command(
            "capture".into(),
            vec!["pod1".into(), expected.to_string_lossy().into_owned()]
        ))
    );
}

#[test]
fn silent_and_half_message_clients_do_not_block_sluicectl() {
    let daemon = TestDaemon::start();
    let _silent = UnixStream::connect(daemon.socket()).unwrap();
    let mut half = UnixStream::connect(daemon.socket()).unwrap();
    half.write_all(br#"{"id":0,"method":"add-fl"#).unwrap();
    let out = sluicectl(&daemon, &["call", "echo", "still", "served"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "echo(still|served)\n");
}

#[test]
fn socket_is_root_only() {
    use std::os::unix::fs::PermissionsExt;
    let daemon = TestDaemon::start();
    let mode = std::fs::metadata(daemon.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}
