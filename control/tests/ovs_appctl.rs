//! Interoperability with the real `ovs-appctl` (Debian `openvswitch-common`):
//! the control socket must be a drop-in unixctl server.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Call, TestDaemon};

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
    let out = ovs_appctl(
        daemon.socket(),
        &["dump-flows", "table=0", "ip,nw_dst=10.0.0.1"],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "dump-flows(table=0|ip,nw_dst=10.0.0.1)\n"
    );
    assert_eq!(
        daemon.last_call(),
        Some(Call::Command(
            "dump-flows".into(),
            vec!["table=0".into(), "ip,nw_dst=10.0.0.1".into()]
        ))
    );
    let out = ovs_appctl(daemon.socket(), &["version"]);
    assert_eq!(text(&out.stdout), "sluiced (Sluice) e2e\n");
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

    let out = ovs_appctl(daemon.socket(), &["trace", "a", "b"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("\"trace\" command takes at most 1 arguments\n"),
        "{err}"
    );
    // No handler ran for any of the refused requests.
    assert_eq!(daemon.call_count(), 0);
}
