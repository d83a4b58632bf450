//! Bad input to sluiced: each case gives exactly one clear error line on
//! stderr and a non-zero exit: never a panic, a DPDK backtrace or raw EAL
//! output.

mod common;

use std::process::Command;

use common::*;

/// Runs sluiced with `config` (through `wrapper` if given) and checks the
/// one-line error. Returns that line.
fn expect_error(config: &str, wrapper: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.ini");
    std::fs::write(&path, config).unwrap();
    let bin = sluiced_bin();
    let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
    args.push(bin.display().to_string());
    args.push("--config".into());
    args.push(path.display().to_string());
    let out = Command::new(&args[0]).args(&args[1..]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "sluiced should fail; stderr:\n{stderr}"
    );
    for bad in ["panicked", "EAL:", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "stderr contains '{bad}':\n{stderr}");
    }
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("sluiced: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line, got:\n{stderr}");
    for l in stderr
        .lines()
        .filter(|l| !l.starts_with("sluiced: error: "))
    {
        assert!(
            l.contains("INFO"),
            "unexpected non-log line on stderr: {l}\n{stderr}"
        );
    }
    errors[0].to_string()
}

fn base(prefix: &str) -> String {
    config(
        prefix,
        "[port:a]\ndevargs = net_ring0\n[port:b]\ndevargs = net_null0,no-rx=1\n",
    )
}

#[test]
fn unknown_vdev_names_the_port() {
    if !can_use_netns("unknown_vdev_names_the_port") {
        return;
    }
    let cfg = base("slt-bad1").replace("net_ring0", "net_bogus0");
    let e = expect_error(&cfg, &[]);
    assert_eq!(
        e,
        "sluiced: error: port 'a': cannot create DPDK device 'net_bogus0': no DPDK driver knows the device name 'net_bogus0' (a typo, or the driver's package is not installed)"
    );
}

#[test]
fn config_typo_suggests_the_key() {
    let cfg = base("slt-bad2").replace("mbufs = 8192", "mbfus = 8192");
    let e = expect_error(&cfg, &[]);
    assert!(
        e.ends_with("[datapath] mbfus: unknown key (did you mean 'mbufs'?)"),
        "{e}"
    );
}

#[test]
fn core_that_does_not_exist() {
    let cfg = base("slt-bad3").replace(&format!("cores = {}", pmd_core()), "cores = 4000");
    let e = expect_error(&cfg, &[]);
    assert!(
        e.starts_with("sluiced: error: core 4000 does not exist"),
        "{e}"
    );
}

#[test]
fn node_type_other_than_baremetal_is_refused() {
    let cfg = base("slt-bad4").replace("'BAREMETAL'", "'HOSTVM'");
    let e = expect_error(&cfg, &[]);
    assert!(
        e.starts_with("sluiced: error: node_type is 'HOSTVM'"),
        "{e}"
    );
}

#[test]
fn second_instance_with_same_prefix_is_refused() {
    if !can_use_netns("second_instance_with_same_prefix_is_refused") {
        return;
    }
    let cfg = base("slt-bad5");
    let (first, _) = Sluiced::start(&cfg);
    let e = expect_error(&cfg, &[]);
    assert_eq!(
        e,
        "sluiced: error: another DPDK process already uses file prefix 'slt-bad5' (stop it or choose another file_prefix)"
    );
    // The first instance is unaffected and stops cleanly.
    first.stop();
}

#[test]
fn hugepages_required_but_none_free() {
    if !can_use_netns("hugepages_required_but_none_free") {
        return;
    }
    // A private mount namespace where /proc/meminfo says no hugepages are
    // free: the real kernel file, with the real check reading it.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("meminfo");
    let real = std::fs::read_to_string("/proc/meminfo").unwrap();
    let patched: String = real
        .lines()
        .map(|l| {
            if l.starts_with("HugePages_Free:") {
                "HugePages_Free:        0".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&fake, patched + "\n").unwrap();
    let cfg = base("slt-bad6").replace("hugepages = auto", "hugepages = required");
    let script = format!(
        "mount --bind {} /proc/meminfo && exec \"$0\" \"$@\"",
        fake.display()
    );
    let e = expect_error(&cfg, &["unshare", "--mount", "sh", "-c", &script]);
    assert!(
        e.starts_with("sluiced: error: hugepages are required (hugepages = required) but no hugepages are free"),
        "{e}"
    );
}

#[test]
fn missing_capability_is_named_in_one_line() {
    if !can_use_netns("missing_capability_is_named_in_one_line") {
        return;
    }
    let cfg = config("slt-bad7", "[port:up]\ndevargs = net_af_packet0,iface=lo\n");
    let e = expect_error(
        &cfg,
        &[
            "setpriv",
            "--bounding-set=-net_raw",
            "--inh-caps=-net_raw",
            "--",
        ],
    );
    assert!(
        e.starts_with(
            "sluiced: error: missing capabilities: CAP_NET_RAW (for af_packet port 'up')"
        ),
        "{e}"
    );
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(sluiced_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--check-config",
        "--cores",
        "--file-prefix",
        "--hugepages",
        "--ctl-socket",
        "--log-format",
        "--log",
        "--version",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
