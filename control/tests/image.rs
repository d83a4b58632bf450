//! The node image and the DaemonSet's pod under a real container runtime.
//!
//! 1. `deploy/image/build.sh` builds the image offline (FROM scratch, the
//!    six binaries of this build, their libraries and the DPDK plugins,
//!    from this machine's Debian packages) into a podman storage kept
//!    under the target directory; the tag is a hash of the binaries,
//!    `rootfs.sh` and the Containerfile, so an unchanged build is not
//!    rebuilt (the first build takes ~25 s here, a cached run none).
//! 2. Each binary starts inside the image (`--version`; sluice-cni answers
//!    `CNI_COMMAND=VERSION`), and in the image's root filesystem (mounted,
//!    the image's own dynamic loader run chrooted in it) every binary, tool
//!    and DPDK plugin resolves all its shared libraries, with no dangling
//!    link: EAL loads every plugin of its directory and refuses to start if
//!    one fails.
//! 3. `deploy/podman/kube-play.sh` runs the DaemonSet's pod (generated
//!    from deploy/kubernetes/ by `pod-from-daemonset.py`) with `podman kube
//!    play` in a node namespace with a veth uplink: the init container
//!    installs the CNI plugin, sluiced and the agent start from the image
//!    with the manifest's capabilities, every exec probe passes (run with
//!    `podman exec`: podman 4.3 needs systemd timers for them), and two
//!    containers attached through the installed sluice CNI plugin ping and
//!    talk TCP through sluiced.
//!
//! Needs root, podman, runc, busybox-static, ovsdb-client, python3 with
//! PyYAML and the binaries built beside this test; otherwise the skip is
//! recorded.

use std::path::{Path, PathBuf};
use std::process::Command;

const BINARIES: [&str; 6] = [
    "sluiced",
    "sluice-agent",
    "nestdb-server",
    "sluicectl",
    "sluice-cni",
    "sluice-bootstrap",
];

fn report_skip(line: &str) {
    sluice_testkit::record_skip(env!("CARGO_TARGET_TMPDIR"), line);
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_sluicectl"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

/// The podman storage the image lives in (kept between runs: the cache).
/// Containers run with default_ulimits set in a containers.conf: root lacks CAP_SYS_RESOURCE on
/// these machines and podman's defaults fail (shared/notes/podman-cni.md).
fn storage() -> (PathBuf, PathBuf) {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-podman");
    (d.join("root"), d.join("run"))
}

fn ready(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        report_skip(&format!("image::{test}: not root (podman, namespaces)"));
        return false;
    }
    for (tool, args) in [
        ("podman", &["--version"][..]),
        ("runc", &["--version"][..]),
        ("ovsdb-client", &["--version"][..]),
        ("python3", &["-c", "import yaml"][..]),
    ] {
        if !Command::new(tool)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            report_skip(&format!(
                "image::{test}: {tool} {args:?} fails (Debian packages podman, runc, openvswitch-common, python3-yaml)"
            ));
            return false;
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        report_skip(&format!("image::{test}: needs busybox-static"));
        return false;
    }
    for b in BINARIES {
        assert!(
            bin_dir().join(b).exists(),
            "{} is missing: cargo build --workspace first",
            bin_dir().join(b).display()
        );
    }
    true
}

fn podman(args: &[&str]) -> std::process::Output {
    let (root, run) = storage();
    let conf = root.with_file_name("containers.conf");
    std::fs::create_dir_all(root.parent().expect("storage dir")).expect("mkdir");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
    )
    .expect("containers.conf");
    Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .arg("--root")
        .arg(root)
        .arg("--runroot")
        .arg(run)
        .args(["--cgroup-manager", "cgroupfs", "--runtime", "runc"])
        .args(args)
        .output()
        .expect("podman")
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds (or finds) the image; returns its name.
fn image() -> String {
    let (root, run) = storage();
    let out = Command::new("bash")
        .arg(repo().join("deploy/image/build.sh"))
        .arg(bin_dir())
        .arg(&root)
        .arg(&run)
        .output()
        .expect("build.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy/image/build.sh failed:\n{err}");
    println!("{err}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the image name")
        .to_string()
}

/// One test: the build, the checks and kube play share the image and the
/// storage, and run one after the other.
#[test]
fn image_holds_six_working_binaries_and_its_pod_runs_under_podman_kube_play() {
    let test = "image_holds_six_working_binaries_and_its_pod_runs_under_podman_kube_play";
    if !ready(test) {
        return;
    }
    let img = image();
    let size: u64 = podman_ok(&["image", "inspect", "--format", "{{.Size}}", &img])
        .trim()
        .parse()
        .expect("size");
    println!("image {img}: {size} bytes");

    // 2a. Every binary starts in the image.
    for b in BINARIES {
        let out = if b == "sluice-cni" {
            podman(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--env",
                "CNI_COMMAND=VERSION",
                "--entrypoint",
                "/usr/local/bin/sluice-cni",
                &img,
            ])
        } else {
            podman(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                &format!("/usr/local/bin/{b}"),
                &img,
                "--version",
            ])
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{b} does not start in the image: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if b == "sluice-cni" {
            assert!(text.contains("supportedVersions"), "{b}: {text}");
        } else {
            assert!(text.starts_with(&format!("{b} ")), "{b}: {text}");
        }
    }

    // 2b. Libraries and DPDK plugins resolve in the image's file system.
    let mnt = PathBuf::from(podman_ok(&["image", "mount", &img]).trim());
    let result = std::panic::catch_unwind(|| check_libraries(&mnt));
    podman_ok(&["image", "unmount", &img]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // 3. podman kube play of the DaemonSet's pod.
    let (root, run) = storage();
    let out = Command::new("bash")
        .arg(repo().join("deploy/podman/kube-play.sh"))
        .arg(&img)
        .arg(bin_dir())
        .arg(&root)
        .arg(&run)
        .output()
        .expect("kube-play.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kube play failed:\n{text}");
    for want in [
        "sluiced readinessProbe passes",
        "sluice-agent readinessProbe passes",
        "sluiced: [CAP_IPC_LOCK CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN]",
        "sluice-agent: []",
        "3 packets received",
        "kp-a <- kp-b over TCP: hello-through-sluiced",
    ] {
        assert!(text.contains(want), "no '{want}' in:\n{text}");
    }
    let pods = podman_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(pods.trim().is_empty(), "containers left behind: {pods}");
    assert!(
        !Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("slkp-"))
            .unwrap_or(false),
        "namespaces left behind"
    );
}

/// Runs the image's loader (chrooted in its mounted root) on every binary,
/// tool and DPDK plugin: nothing "not found", no dangling link.
fn check_libraries(mnt: &Path) {
    let pmds = "usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0";
    let mut files: Vec<String> = BINARIES
        .iter()
        .map(|b| format!("/usr/local/bin/{b}"))
        .chain(["/usr/sbin/ip", "/usr/sbin/tc"].map(String::from))
        .collect();
    let mut plugins = 0;
    for e in std::fs::read_dir(mnt.join(pmds)).expect("the DPDK plugin directory") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if name.contains(".so") {
            files.push(format!("/{pmds}/{name}"));
            plugins += 1;
        }
    }
    assert!(plugins >= 20, "only {plugins} plugin files in the image");
    for f in &files {
        let p = mnt.join(f.trim_start_matches('/'));
        assert!(p.exists(), "{f}: missing or a dangling link in the image");
        let out = Command::new("chroot")
            .arg(mnt)
            .args(["/lib64/ld-linux-x86-64.so.2", "--list", f])
            .output()
            .expect("chroot");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("not found"),
            "{f} does not resolve its libraries in the image:\n{text}"
        );
    }
    println!(
        "{} files (6 binaries, ip, tc, {plugins} DPDK plugin names) resolve their libraries in the image",
        files.len()
    );
}
