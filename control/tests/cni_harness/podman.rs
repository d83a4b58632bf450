//! podman with its CNI backend pointed at a Sluice conflist, for the
//! podman tests: a private storage, run root, `containers.conf` and CNI
//! configuration directory in a temporary directory, runc, and a busybox
//! image imported from a locally built root filesystem. Reset on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::json;

use super::{ready, report_skip, Nestdb, CNI_PLUGINS};

/// The network name of the conflist.
pub const NET: &str = "sluice-pm";
/// The imported image.
pub const IMAGE: &str = "localhost/sluice-bb:1";

/// podman with a private storage, run root, containers.conf and CNI
/// configuration directory; everything is reset on drop.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    pub fn ready(test: &str) -> bool {
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
    pub fn new(db: &Nestdb) -> Podman {
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

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    pub fn run(&self, args: &[&str]) -> Output {
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
    pub fn ok(&self, args: &[&str]) -> String {
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
    pub fn start(&self, name: &str) -> String {
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

pub fn leases(dir: &Path) -> Vec<String> {
    super::leases(dir, NET)
}
