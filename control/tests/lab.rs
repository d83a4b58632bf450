//! The two-node lab (scripts/lab.sh, the README's main job) as a test:
//! two nodes in network namespaces, each with nestdb-server, sluiced and
//! sluice-agent; pods attached through sluice-cni; a Service written with
//! ovsdb-client. `lab_check` asserts pod-to-pod over Geneve, node-to-node
//! through the host ports, and a kernel TCP connection from a pod on node
//! a to the ClusterIP answered by the pod on node b; `lab_crash` SIGKILLs
//! node a's sluiced and asserts its address comes back on its kernel
//! interface, reachable from the underlay, with no duplicate answers
//! (the uplink is isolated from the kernel's IP stack while the node's
//! address is on the host port, and released after the move back);
//! `lab_down` removes everything (also after a failure). It runs twice:
//! with separate VTEP addresses, and with each VTEP on its node's address.

use std::path::{Path, PathBuf};
use std::process::Command;

fn report_skip(line: &str) {
    sluice_testkit::record_skip(env!("CARGO_TARGET_TMPDIR"), line);
}

#[test]
fn two_node_lab_service_over_geneve() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        report_skip("lab: not root (namespaces, DPDK and veths need it)");
        return;
    }
    let bin: PathBuf = Path::new(env!("CARGO_BIN_EXE_sluicectl"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    for b in [
        "sluiced",
        "nestdb-server",
        "sluice-agent",
        "sluicectl",
        "sluice-cni",
        "sluice-bootstrap",
    ] {
        assert!(
            bin.join(b).exists(),
            "{} is missing: cargo build --workspace first",
            bin.join(b).display()
        );
    }
    for tool in ["ovsdb-client", "python3"] {
        if Command::new(tool).arg("--version").output().is_err() {
            report_skip(&format!("lab: {tool} is not installed"));
            return;
        }
    }
    let text = run_lab(&bin, "lab_check; lab_show; lab_crash", false);
    // The same lab with each VTEP on its node's own address: the local
    // stack answers ARP and ping for it, the node's kernel still gets its
    // ARP replies and TCP (lab_check's node-to-node TCP), and nothing is
    // answered twice (lab_ping refuses DUPs).
    let same = run_lab(&bin, "lab_check; lab_crash", true);
    assert!(same.contains("node b to 192.168.60.1"), "{same}");
    assert!(text.contains("hello from b1 to 10.244.1.5"), "{text}");
    assert!(
        text.contains("sluice_service_endpoint_connections_total"),
        "{text}"
    );
    println!("{text}");
}

/// Runs the lab's steps `steps` after `lab_up` (with the VTEPs on the
/// nodes' addresses when `vtep_is_node_ip`), tearing it down whatever
/// happens; returns its output, or panics with it and the logs.
fn run_lab(bin: &Path, steps: &str, vtep_is_node_ip: bool) -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "set -euo pipefail; source scripts/lab.sh; trap lab_down EXIT; \
         lab_up '{}' '{}'; {steps}",
        bin.display(),
        work.path().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env(
            "LAB_VTEP_IS_NODE_IP",
            if vtep_is_node_ip { "1" } else { "0" },
        )
        .current_dir(&repo)
        .output()
        .expect("bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        // The processes' logs say why.
        let mut logs = String::new();
        for n in ["a", "b"] {
            for f in ["sluiced.log", "agent.log", "nestdb.log"] {
                let p = work.path().join(n).join(f);
                if let Ok(t) = std::fs::read_to_string(&p) {
                    let tail: Vec<&str> = t.lines().rev().take(15).collect();
                    logs += &format!(
                        "--- {} ---\n{}\n",
                        p.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        panic!("the lab (VTEP on the node IP: {vtep_is_node_ip}) failed:\n{text}\n{logs}");
    }
    text
}
