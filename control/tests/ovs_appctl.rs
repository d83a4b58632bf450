//! Interoperability with the real `ovs-appctl` (Debian `openvswitch-common`):
//! the control socket must be a drop-in unixctl server.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TestDaemon;

const OVS_APPCTL: &str = "/usr/bin/ovs-appctl";

fn ovs_appctl(socket: &Path, args: &[&str]) -> Output {
    assert!(
        Path::new(OVS_APPCTL).exists(),
        "{OVS_APPCTL} is missing: install the openvswitch-common package"
    );
    Command::new(OVS_APPCTL)
        .arg("-t")
        .arg(socket)
        // Bounds the wait so a broken server fails instead of hanging.
        .arg("--timeout=60")
        .args(args)
        .output()
        .expect("run ovs-appctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

#[test]
fn list_commands_matches_the_registry_listing() {
    let daemon = TestDaemon::start();
    let out = ovs_appctl(daemon.socket(), &["list-commands"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert_eq!(listing, daemon.registry.list_commands());
    assert!(listing.starts_with("The available commands are:\n"));
    assert!(listing.contains("\n  dump-flows              [table=N] [MATCH]\n"));
    assert!(listing.contains("\n  version                 \n"));
}

#[test]
fn command_with_arguments_runs_and_prints_its_text() {
    let daemon = TestDaemon::start();
    daemon
        .flows
        .add_flow("table=0,priority=5,ip,nw_dst=10.0.0.1,actions=drop", 0)
        .unwrap();
    let out = ovs_appctl(
        daemon.socket(),
        &["dump-flows", "table=0", "ip,nw_dst=10.0.0.1"],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let dump = text(&out.stdout);
    assert!(
        dump.contains("priority=5,ip,nw_dst=10.0.0.1 actions=drop\n"),
        "{dump}"
    );
    assert_eq!(dump.lines().count(), 1, "{dump}");
    let out = ovs_appctl(daemon.socket(), &["version"]);
    assert_eq!(text(&out.stdout), "sluiced (Sluice) e2e\n");
}

#[test]
fn ovs_command_names_work_as_aliases() {
    let daemon = TestDaemon::start();
    daemon
        .flows
        .add_flow("table=0,priority=5,in_port=1,tcp,actions=output:2", 0)
        .unwrap();
    // (OVS name, Sluice name, arguments): the same text either way.
    let cases: &[(&str, &str, &[&str])] = &[
        ("ofproto/trace", "trace", &["in_port=1,tcp,tp_dst=80"]),
        ("dpctl/dump-flows", "dump-flows", &["table=0"]),
        ("dpctl/dump-conntrack", "dump-conntrack", &["zone=0"]),
        ("dpctl/ct-stats-show", "conntrack-stats", &[]),
        ("dpif-netdev/pmd-stats-show", "pmd-stats-show", &[]),
        ("dpif-netdev/pmd-rxq-show", "pmd-rxq-show", &[]),
        (
            "tnl/neigh/set",
            "neigh/set",
            &["192.168.50.7", "02:00:00:00:00:07"],
        ),
        ("tnl/neigh/show", "dump-neighbours", &[]),
        ("dpctl/flush-conntrack", "flush-conntrack", &[]),
        ("dpif-netdev/pmd-stats-clear", "pmd-stats-clear", &[]),
    ];
    for (ovs, sluice, args) in cases {
        let a = ovs_appctl(daemon.socket(), &[&[*ovs][..], args].concat());
        assert!(a.status.success(), "{ovs}: {}", text(&a.stderr));
        let b = ovs_appctl(daemon.socket(), &[&[*sluice][..], args].concat());
        assert!(b.status.success(), "{sluice}: {}", text(&b.stderr));
        assert_eq!(
            common::timeless(&text(&a.stdout)),
            common::timeless(&text(&b.stdout)),
            "{ovs} vs {sluice}"
        );
    }
    let trace = text(
        &ovs_appctl(
            daemon.socket(),
            &["ofproto/trace", "in_port=1,tcp,tp_dst=80"],
        )
        .stdout,
    );
    assert!(trace.contains("output:2"), "{trace}");
    let neigh = text(&ovs_appctl(daemon.socket(), &["tnl/neigh/show"]).stdout);
    assert!(
        neigh.contains("192.168.50.7 lladdr 02:00:00:00:00:07 PERMANENT"),
        "{neigh}"
    );
}

#[test]
fn error_replies_are_shown_as_server_errors() {
    let daemon = TestDaemon::start();
    let out = ovs_appctl(daemon.socket(), &["fail"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    let err = text(&out.stderr);
    assert!(
        err.starts_with("flow table 3 is full\nremove flows first\n"),
        "{err}"
    );
    assert!(err.contains("server returned an error"), "{err}");

    let out = ovs_appctl(daemon.socket(), &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("\"no-such-command\" is not a valid command (use \"list-commands\" to see a list of valid commands)\n"),
        "{err}"
    );

    let out = ovs_appctl(daemon.socket(), &["dump-conntrack", "a", "b", "c"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("\"dump-conntrack\" command takes at most 2 arguments\n"),
        "{err}"
    );
    let out = ovs_appctl(daemon.socket(), &["dpctl/dump-conntrack", "zone=x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("invalid zone \"x\""),
        "{}",
        text(&out.stderr)
    );
    // No handler ran for any of the refused requests.
    assert_eq!(daemon.call_count(), 0);
}
