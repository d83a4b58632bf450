//! The two-node lab (scripts/lab.sh, the README's main job) as a test:
//! two nodes in network namespaces, each with nestdb-server, sluiced and
//! sluice-agent; pods attached through sluice-cni; a Service written with
//! ovsdb-client. `lab_check` asserts pod-to-pod over Geneve, node-to-node
//! through the host ports, and a kernel TCP connection from a pod on node
//! a to the ClusterIP answered by the pod on node b; `lab_crash` SIGKILLs
//! node a's sluiced and asserts its address comes back on its kernel
//! interface, reachable from the underlay; `lab_down` removes everything
//! (also after a failure).

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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let work = tempfile::tempdir().expect("tempdir");
    let script = format!(
        "set -euo pipefail; source scripts/lab.sh; trap lab_down EXIT; \
         lab_up '{}' '{}'; lab_check; lab_show; lab_crash",
        bin.display(),
        work.path().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
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
        panic!("the lab failed:\n{text}\n{logs}");
    }
    assert!(text.contains("hello from b1 to 10.244.1.5"), "{text}");
    assert!(
        text.contains("sluice_service_endpoint_connections_total"),
        "{text}"
    );
    println!("{text}");
}
