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

/// Runs sluicectl expecting exit status 1; returns what it wrote on stderr.
fn fails(daemon: &TestDaemon, args: &[&str]) -> String {
    let out = sluicectl(daemon, args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
    stderr(&out)
}

#[test]
fn every_subcommand_prints_what_ovs_appctl_prints() {
    let daemon = TestDaemon::start();
    let ok = |args: &[&str]| {
        let out = sluicectl(&daemon, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
        stdout(&out)
    };
    ok(&[
        "add-flow",
        "table=0,priority=5,in_port=1,tcp,actions=output:2",
    ]);
    ok(&["add-group", "group_id=7,type=all,bucket=output:1"]);
    ok(&["add-vtep", "node-b", "192.168.50.2"]);
    ok(&["set-port-security", "3", "0a:58:0a:f4:01:05", "10.244.1.5"]);
    // (sluicectl arguments, the same request as ovs-appctl text arguments)
    let cases: &[(&[&str], &[&str])] = &[
        (&["dump-flows"], &["dump-flows"]),
        (
            &["dump-flows", "table=0", "tcp"],
            &["dump-flows", "table=0", "tcp"],
        ),
        (&["dump-groups"], &["dump-groups"]),
        (
            &["trace", "in_port=1,tcp,tp_dst=80"],
            &["trace", "in_port=1,tcp,tp_dst=80"],
        ),
        (&["dump-ports"], &["dump-ports"]),
        (&["dump-ports", "uplink"], &["dump-ports", "uplink"]),
        (&["pmd-stats-show"], &["pmd-stats-show"]),
        (&["pmd-rxq-show"], &["pmd-rxq-show"]),
        (&["dump-cache"], &["dump-cache"]),
        (&["dump-conntrack"], &["dump-conntrack"]),
        (&["dump-conntrack", "zone=3"], &["dump-conntrack", "zone=3"]),
        (&["conntrack-stats"], &["conntrack-stats"]),
        (&["dump-services"], &["dump-services"]),
        (
            &["lb-trace", "tcp", "10.0.0.1", "10.96.0.1", "80"],
            &["lb-trace", "tcp", "10.0.0.1", "10.96.0.1", "80"],
        ),
        (&["dump-tunnels"], &["dump-tunnels"]),
        (&["tunnel-mtu"], &["tunnel-mtu"]),
        (&["dump-neighbours"], &["dump-neighbours"]),
        (&["dump-port-security"], &["dump-port-security"]),
        (&["capture-status"], &["capture-status"]),
        (&["list-commands"], &["list-commands"]),
        (&["version"], &["version"]),
    ];
    for (args, text) in cases {
        let typed = ok(args);
        let mut raw = vec!["call"];
        raw.extend_from_slice(text);
        assert_eq!(
            common::timeless(&typed),
            common::timeless(&ok(&raw)),
            "{args:?}"
        );
        // Empty tables print nothing, as in OVS.
        let may_be_empty = ["dump-conntrack", "dump-services", "dump-neighbours"];
        assert!(
            !typed.is_empty() || may_be_empty.contains(&args[0]),
            "{args:?} printed nothing"
        );
    }
    assert!(
        ok(&["dump-flows"]).contains("priority=5,tcp,in_port=1 actions=output:2")
            || ok(&["dump-flows"]).contains("priority=5,in_port=1,tcp actions=output:2")
    );
    assert!(ok(&["dump-groups"]).contains("group_id=7,type=all"));
    assert!(ok(&["dump-tunnels"]).contains("remote node-b vtep 192.168.50.2"));
    assert!(ok(&["dump-port-security"]).contains("port 3: mac 0a:58:0a:f4:01:05 ips 10.244.1.5"));
    assert!(ok(&["pmd-rxq-show"]).contains("port: uplink"));
}

#[test]
fn list_commands_and_version_print_the_server_text() {
    let daemon = TestDaemon::start();
    let out = sluicectl(&daemon, &["list-commands"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), daemon.registry.list_commands());
    assert!(stdout(&out).contains("\n  capture                 PORT FILE [COUNT]\n"));
    assert!(stdout(&out).contains("\n  dpctl/dump-flows        [table=N] [MATCH]\n"));
    let out = sluicectl(&daemon, &["version"]);
    assert_eq!(stdout(&out), "sluiced (Sluice) e2e\n");
}

#[test]
fn flow_changes_reach_the_program() {
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
    assert_eq!(stdout(&out), "added 2, modified 0, deleted 0, groups 0\n");
    assert_eq!(daemon.flows.program().rules().count(), 2);

    let out = sluicectl(
        &daemon,
        &[
            "mod-flows",
            "--strict",
            "table=0,priority=0,actions=output:9",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "added 0, modified 1, deleted 0, groups 0\n");

    // replace-flows: one bundle that deletes everything and adds the file.
    let out = sluicectl(&daemon, &["replace-flows", file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(daemon.flows.program().rules().count(), 2);
    let dump = daemon.flows.dump_flows("", 0).unwrap();
    assert!(dump.contains("actions=drop"), "replaced: {dump}");

    let out = sluicectl(&daemon, &["del-flows", "--strict", "table=0,priority=0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "added 0, modified 0, deleted 1, groups 0\n");

    // A bad line refuses the whole bundle.
    std::fs::write(
        daemon.dir().join("bad.txt"),
        "priority=1,actions=drop\nip,nw_dst=1.2.3.400,actions=drop\n",
    )
    .unwrap();
    let out = sluicectl(
        &daemon,
        &["add-flows", daemon.dir().join("bad.txt").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).starts_with("sluicectl: operation 1:"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        daemon.flows.program().rules().count(),
        1,
        "nothing of the bad bundle applied"
    );
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
    assert!(daemon
        .flows
        .dump_flows("", 0)
        .unwrap()
        .contains("priority=1 actions=drop"));
}

#[test]
fn services_tunnels_and_neighbours_through_sluicectl() {
    let daemon = TestDaemon::start();
    let batch = daemon.dir().join("svc.json");
    std::fs::write(
        &batch,
        r#"{"upsert":[{"name":"default/web:http","protocol":"tcp","port":80,"cluster_ips":["10.96.0.10"],"endpoints":[{"ip":"10.244.1.5","port":8080}]}]}"#,
    )
    .unwrap();
    let out = sluicectl(&daemon, &["service-update", batch.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = sluicectl(&daemon, &["--format", "json", "dump-services"]);
    let dump: sluice_api::service::ServiceDump = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(dump.services.len(), 1);
    assert_eq!(dump.services[0].endpoints[0].port, 8080);
    let out = sluicectl(
        &daemon,
        &["lb-trace", "tcp", "10.0.0.1", "10.96.0.10", "80"],
    );
    assert!(stdout(&out).contains("10.244.1.5:8080"), "{}", stdout(&out));
    // A bad batch is refused with the server's sentence, exit 1.
    std::fs::write(&batch, r#"{"upsert":[{"name":"x","protocol":"tcp"}]}"#).unwrap();
    let out = sluicectl(&daemon, &["service-update", batch.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "refused locally: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("invalid service update"),
        "{}",
        stderr(&out)
    );

    fails(&daemon, &["del-vtep", "nobody"]);
    let out = sluicectl(&daemon, &["neigh-set", "192.168.50.9", "02:00:00:00:00:09"]);
    assert_eq!(
        stdout(&out),
        "192.168.50.9 lladdr 02:00:00:00:00:09 PERMANENT\n"
    );
    let out = sluicectl(&daemon, &["--format", "json", "dump-neighbours"]);
    let n: sluice_api::stack::NeighbourDump = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(n.neighbours[0].state, "PERMANENT");
    assert_eq!(
        fails(&daemon, &["neigh-del", "192.168.50.10"]),
        "sluicectl: no neighbour entry for 192.168.50.10\n"
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

    assert_eq!(
        fails(&daemon, &["call", "no-such-command"]),
        "sluicectl: \"no-such-command\" is not a valid command (use \"list-commands\" to see a list of valid commands)\n"
    );

    assert_eq!(
        fails(&daemon, &["call", "add-flow"]),
        "sluicectl: \"add-flow\" command requires at least 1 arguments\n"
    );

    let err = fails(&daemon, &["add-flow", "ip,nw_dst=10.0.0.300,actions=drop"]);
    assert!(err.contains("invalid IPv4 address"), "{err}");
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
fn json_format_prints_the_typed_reply() {
    let daemon = TestDaemon::start();
    let out = sluicectl(&daemon, &["--format", "json", "dump-ports", "uplink"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: sluice_api::ports::PortDump = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(printed.ports[0].name, "uplink");
    assert_eq!(printed.ports[0].stats.rx_packets, 5);
    assert_eq!(
        daemon.last_call(),
        Some(Call("dump-ports".into(), json!({"port": "uplink"})))
    );
    let out = sluicectl(&daemon, &["--format", "json", "tunnel-mtu"]);
    let printed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(printed["uplink_mtu"], 1500);
    assert_eq!(printed["pod_mtu"], 1438, "1500 - 50 - 12 bytes of options");
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
        Some(Call(
            "capture".into(),
            json!({"port": "pod1", "file": expected.to_string_lossy(), "count": null})
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
