//! A real container runtime drives sluice-cni: Debian 12's podman with its
//! CNI network backend (netavark is the default) and runc (crun fails on
//! these hybrid-cgroup machines), pointed at a Sluice conflist in a
//! test-owned configuration directory, runs containers from a busybox root
//! filesystem imported locally (no registry is reachable). The setup is the
//! one `control/README.md` documents.
//!
//! Until sluice-agent exists, a test thread stands in for it by setting
//! `Logical_Port.up = true` when a row appears (`cni_harness::Agent`), so
//! these tests check the attachment (addresses, routes, MTU, rows) and the
//! detachment on `podman rm`, not forwarding through sluiced.

mod cni_harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cni_harness::*;
use serde_json::json;

const NET: &str = "sluice-pm";
const IMAGE: &str = "localhost/sluice-bb:1";

/// podman with a private storage, run root, containers.conf and CNI
/// configuration directory; everything is reset on drop.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn ready(test: &str) -> bool {
        if !ready(test) {
            return false;
        }
        for (what, ok) in [
            (
                "podman",
                Command::new("podman")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
            ),
            (
                "runc",
                Command::new("runc")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
            ),
            (
                "/bin/busybox (busybox-static)",
                Path::new("/bin/busybox").is_file(),
            ),
        ] {
            if !ok {
                report_skip(&format!(
                    "SKIPPED: control {test}: needs {what} (Debian packages podman, runc, busybox-static)"
                ));
                return false;
            }
        }
        true
    }

    /// Writes the configuration (a conflist naming `nestdb`) and imports
    /// the busybox image.
    fn new(db: &Nestdb) -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("sluice-podman")
            .tempdir()
            .unwrap();
        let w = dir.path();
        for d in ["root", "run", "cni", "cnibin", "ipam", "rootfs/bin"] {
            std::fs::create_dir_all(w.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice-cni"), w.join("cnibin/sluice"))
            .unwrap();
        std::fs::write(
            w.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"{CNI_PLUGINS}\"]\nnetwork_config_dir = \"{}\"\n\
                 [containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
                w.join("cnibin").display(),
                w.join("cni").display()
            ),
        )
        .unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": NET,
            "plugins": [{
                "type": "sluice",
                "nestdb": db.remote(),
                "portUpTimeoutMs": 30000,
                "ipam": {"type": "host-local", "dataDir": w.join("ipam").display().to_string()},
            }],
        });
        std::fs::write(w.join("cni/10-sluice.conflist"), conflist.to_string()).unwrap();
        std::fs::copy("/bin/busybox", w.join("rootfs/bin/busybox")).unwrap();
        for a in ["sh", "ip", "cat", "sleep", "ping", "nc", "wget"] {
            std::os::unix::fs::symlink("busybox", w.join("rootfs/bin").join(a)).unwrap();
        }
        let tar = w.join("bb.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(w.join("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar the root filesystem");
        let pm = Podman { dir };
        pm.ok(&[
            "import",
            "--change",
            "ENV PATH=/bin",
            tar.to_str().unwrap(),
            IMAGE,
        ]);
        pm
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn run(&self, args: &[&str]) -> Output {
        let w = self.dir.path();
        Command::new("podman")
            .env("CONTAINERS_CONF", w.join("containers.conf"))
            .arg("--root")
            .arg(w.join("root"))
            .arg("--runroot")
            .arg(w.join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--runtime", "runc"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    /// Runs podman and returns its stdout, failing the test on error.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a container that sleeps, on the Sluice network.
    fn start(&self, name: &str) -> String {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            NET,
            IMAGE,
            "sleep",
            "600",
        ])
        .trim()
        .to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.run(&["system", "reset", "-f"]);
    }
}

fn leases(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(NET))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn podman_run_attaches_and_podman_rm_detaches() {
    if !Podman::ready("podman_run_attaches_and_podman_rm_detaches") {
        return;
    }
    let db = Nestdb::start(true);
    let _agent = Agent::start(&db);
    let pm = Podman::new(&db);
    let networks = pm.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        networks.lines().any(|l| l == NET),
        "podman does not list {NET}: {networks}"
    );

    let ids = [pm.start("pod-a"), pm.start("pod-b")];
    let mut addrs = Vec::new();
    for (id, name) in ids.iter().zip(["pod-a", "pod-b"]) {
        let row = db
            .port(&format!("{id}_eth0"))
            .unwrap_or_else(|| panic!("no Logical_Port for {name} ({id}); rows: {:?}", db.ports()));
        assert!(row.up);
        assert_eq!(row.interface_name, "eth0");
        assert_eq!(row.external_ids["cni_network"], NET);
        let ip = row.ips.iter().next().unwrap().clone();
        assert!(ip.starts_with("10.250.0."), "{ip}");
        // Inside the container: the address, the MAC, the MTU, the route.
        let a = pm.ok(&[
            "exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ]);
        assert!(a.contains(&format!("inet {ip}/24")), "{name}: {a}");
        let l = pm.ok(&["exec", name, "ip", "-o", "link", "show", "dev", "eth0"]);
        assert!(
            l.contains("mtu 1438") && l.contains(&row.mac),
            "{name}: {l}"
        );
        let r = pm.ok(&["exec", name, "ip", "-4", "route", "show", "default"]);
        assert!(r.contains("default via 10.250.0.1 dev eth0"), "{name}: {r}");
        // The host end exists, as the agent will look for it.
        assert!(host_link(&row.external_ids["host_interface"]).is_some());
        addrs.push(ip);
    }
    assert_ne!(addrs[0], addrs[1]);
    let mut both = addrs.clone();
    both.sort();
    assert_eq!(leases(&pm.ipam_dir()), both);

    // podman rm: DEL removes the row, the veth and the lease of that one.
    let host_a =
        db.port(&format!("{}_eth0", ids[0])).unwrap().external_ids["host_interface"].clone();
    pm.ok(&["rm", "-f", "-t", "0", "pod-a"]);
    assert!(
        db.port(&format!("{}_eth0", ids[0])).is_none(),
        "pod-a's row outlived podman rm"
    );
    assert!(
        host_link(&host_a).is_none(),
        "pod-a's veth outlived podman rm"
    );
    assert_eq!(leases(&pm.ipam_dir()), vec![addrs[1].clone()]);
    assert!(db.port(&format!("{}_eth0", ids[1])).is_some());
    pm.ok(&["rm", "-f", "-t", "0", "pod-b"]);
    assert!(db.ports().is_empty(), "{:?}", db.ports());
    assert!(leases(&pm.ipam_dir()).is_empty());
}
