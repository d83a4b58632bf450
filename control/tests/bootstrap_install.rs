//! `sluice-bootstrap install` / `--uninstall`, driven through the binary
//! into a temporary root: files and modes, the conflist's version rule,
//! the loopback configuration and present reference plugins left alone,
//! the AppArmor profile accepted by the real `apparmor_parser`, the real
//! reference plugins of containernetworking-plugins, bad inputs that
//! change nothing, and an uninstall that leaves the tree exactly as it was.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice-bootstrap");
const PLUGIN: &[u8] = b"#!/bin/sh\n# stand-in for sluice-cni\nexit 0\n";
const PROFILE: &str = include_str!("../../deploy/apparmor/sluiced");

/// Prints a skip line and appends it to `target/tmp/skips.txt`, which
/// `scripts/test.sh` prints at the end: a skip must never be silent.
fn report_skip(line: &str) {
    sluice_testkit::record_skip(env!("CARGO_TARGET_TMPDIR"), line);
}

/// A temporary node root, a stand-in sluice-cni and a stand-in plugin
/// directory (what Debian's containernetworking-plugins provides).
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("temporary directory");
        let n = Node { dir };
        fs::create_dir_all(n.inputs().join("plugins")).unwrap();
        fs::write(n.inputs().join("sluice-cni"), PLUGIN).unwrap();
        for p in ["loopback", "host-local"] {
            fs::write(
                n.inputs().join("plugins").join(p),
                format!("#!/bin/sh\n# {p}\n"),
            )
            .unwrap();
        }
        fs::create_dir(n.root()).unwrap();
        n
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn inputs(&self) -> PathBuf {
        self.dir.path().join("inputs")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn put(&self, rel: &str, data: &str, mode: u32) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Runs the bootstrap on this root with the stand-in inputs and
    /// AppArmor never loaded (a test must not change the kernel's
    /// profiles).
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("--root").arg(self.root());
        // The stand-ins, unless the test names others.
        if !args.contains(&"--cni-plugin") {
            cmd.arg("--cni-plugin")
                .arg(self.inputs().join("sluice-cni"));
        }
        if !args.contains(&"--plugins-dir") {
            cmd.arg("--plugins-dir").arg(self.inputs().join("plugins"));
        }
        cmd.args(["--apparmor", "never"])
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .expect("run sluice-bootstrap")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "sluice-bootstrap {args:?} failed:\n{log}"
        );
        log
    }

    /// Every file and directory under the root: relative path → (mode,
    /// contents; directories have none).
    fn tree(&self) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Option<Vec<u8>>)>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let md = fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(base).unwrap().to_path_buf();
                let mode = md.permissions().mode() & 0o7777;
                if md.is_dir() {
                    out.insert(rel, (mode, None));
                    walk(base, &p, out);
                } else {
                    out.insert(rel, (mode, Some(fs::read(&p).unwrap())));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root(), &self.root(), &mut out);
        out
    }

    fn mode(&self, rel: &str) -> u32 {
        fs::metadata(self.path(rel)).unwrap().permissions().mode() & 0o7777
    }
}

fn bootstrap_version() -> String {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string()
}

fn conflist_version(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v["sluiceBuildVersion"].as_str().map(str::to_string)
}

const CONFLIST: &str = "etc/cni/net.d/10-sluice.conflist";
const LOOPBACK: &str = "etc/cni/net.d/99-loopback.conf";

#[test]
fn installs_every_file_with_its_mode_and_a_rerun_changes_nothing() {
    let n = Node::new();
    n.ok(&[]);
    for (rel, mode, want) in [
        ("opt/cni/bin/sluice", 0o755, PLUGIN.to_vec()),
        (
            "opt/cni/bin/loopback",
            0o755,
            b"#!/bin/sh\n# loopback\n".to_vec(),
        ),
        (
            "opt/cni/bin/host-local",
            0o755,
            b"#!/bin/sh\n# host-local\n".to_vec(),
        ),
        ("etc/apparmor.d/sluiced", 0o644, PROFILE.as_bytes().to_vec()),
    ] {
        assert_eq!(n.mode(rel), mode, "mode of {rel}");
        assert_eq!(fs::read(n.path(rel)).unwrap(), want, "contents of {rel}");
    }
    assert_eq!(n.mode(CONFLIST), 0o644);
    assert_eq!(n.mode(LOOPBACK), 0o644);
    let conf: Value = serde_json::from_str(&fs::read_to_string(n.path(CONFLIST)).unwrap()).unwrap();
    assert_eq!(
        conf["sluiceBuildVersion"],
        Value::String(bootstrap_version())
    );
    assert_eq!(conf["plugins"][0]["type"], "sluice");
    let lo: Value = serde_json::from_str(&fs::read_to_string(n.path(LOOPBACK)).unwrap()).unwrap();
    assert_eq!(lo["type"], "loopback");
    // Directories it made are 0755, and no temporary file is left behind.
    assert_eq!(n.mode("opt/cni/bin"), 0o755);
    for (p, _) in n.tree() {
        assert!(
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".sluice-bootstrap."),
            "temporary file left: {}",
            p.display()
        );
    }
    // A given conflist is installed (stamped), not the built-in one.
    let before = n.tree();
    let log = n.ok(&[]);
    assert_eq!(
        n.tree(),
        before,
        "a second install changed the tree:\n{log}"
    );
    assert!(
        log.contains("up to date") && log.contains("left alone"),
        "{log}"
    );
}

#[test]
fn the_conflist_is_replaced_only_by_a_newer_version() {
    let ours = bootstrap_version();
    let given =
        r#"{"cniVersion":"1.0.0","name":"sluice","plugins":[{"type":"sluice","mtu":1400}]}"#;
    for (theirs, replaced, said) in [
        (Some("0.0.1"), true, "with the newer"),
        (Some(ours.as_str()), false, "the same as"),
        (Some("999.0.0"), false, "newer than"),
        (None, true, "carried no sluiceBuildVersion"),
    ] {
        let n = Node::new();
        fs::write(n.inputs().join("given.conflist"), given).unwrap();
        let old = match theirs {
            Some(v) => format!(
                "{{\"cniVersion\":\"1.0.0\",\"name\":\"sluice\",\"plugins\":[],\"sluiceBuildVersion\":\"{v}\",\"marker\":1}}\n"
            ),
            None => "{\"cniVersion\":\"1.0.0\",\"name\":\"sluice\",\"plugins\":[]}\n".into(),
        };
        n.put(CONFLIST, &old, 0o644);
        let before = n.tree();
        let given_path = n.inputs().join("given.conflist");
        let log = n.ok(&["install", "--conflist", given_path.to_str().unwrap()]);
        let now = fs::read_to_string(n.path(CONFLIST)).unwrap();
        assert!(log.contains(said), "installed {theirs:?}: log says:\n{log}");
        if replaced {
            assert_eq!(
                conflist_version(&now),
                Some(ours.clone()),
                "installed {theirs:?}"
            );
            let v: Value = serde_json::from_str(&now).unwrap();
            assert_eq!(
                v["plugins"][0]["mtu"], 1400,
                "the given conflist is installed"
            );
            assert_eq!(n.mode(CONFLIST), 0o644);
        } else {
            assert_eq!(now, old, "installed {theirs:?} was changed");
            assert!(log.contains("left alone"), "{log}");
        }
        // Uninstall puts back the replaced file, exactly.
        n.ok(&["--uninstall"]);
        assert_eq!(
            n.tree(),
            before,
            "installed {theirs:?}: uninstall did not restore the tree"
        );
    }
}

#[test]
fn a_newer_installed_sluice_keeps_its_plugin_too() {
    let n = Node::new();
    let newer = "{\"plugins\":[],\"sluiceBuildVersion\":\"999.0.0\"}\n";
    n.put(CONFLIST, newer, 0o644);
    n.put("opt/cni/bin/sluice", "the newer plugin\n", 0o755);
    let log = n.ok(&[]);
    assert_eq!(
        fs::read_to_string(n.path("opt/cni/bin/sluice")).unwrap(),
        "the newer plugin\n",
        "{log}"
    );
    assert_eq!(fs::read_to_string(n.path(CONFLIST)).unwrap(), newer);
    assert!(log.contains("newer version 999.0.0"), "{log}");
    // With an older conflist installed, the plugin is replaced with ours.
    n.put(
        CONFLIST,
        "{\"plugins\":[],\"sluiceBuildVersion\":\"0.0.1\"}\n",
        0o644,
    );
    n.ok(&[]);
    assert_eq!(fs::read(n.path("opt/cni/bin/sluice")).unwrap(), PLUGIN);
}

#[test]
fn an_existing_loopback_conf_and_reference_plugins_are_kept() {
    let n = Node::new();
    let mine = "{\"cniVersion\":\"0.4.0\",\"name\":\"mine\",\"type\":\"loopback\"}\n";
    n.put(LOOPBACK, mine, 0o600);
    n.put(
        "opt/cni/bin/host-local",
        "#!/bin/sh\n# the node's own\n",
        0o700,
    );
    let log = n.ok(&[]);
    assert_eq!(fs::read_to_string(n.path(LOOPBACK)).unwrap(), mine);
    assert_eq!(n.mode(LOOPBACK), 0o600);
    assert_eq!(
        fs::read_to_string(n.path("opt/cni/bin/host-local")).unwrap(),
        "#!/bin/sh\n# the node's own\n"
    );
    // The missing one is installed.
    assert_eq!(
        fs::read_to_string(n.path("opt/cni/bin/loopback")).unwrap(),
        "#!/bin/sh\n# loopback\n"
    );
    assert!(
        log.contains("99-loopback.conf: present, left alone"),
        "{log}"
    );
    n.ok(&["uninstall"]);
    assert_eq!(fs::read_to_string(n.path(LOOPBACK)).unwrap(), mine);
    assert!(n.path("opt/cni/bin/host-local").exists());
    assert!(!n.path("opt/cni/bin/loopback").exists());
}

#[test]
fn uninstall_leaves_the_tree_exactly_as_before() {
    // An empty node, and one that already has CNI files of its own.
    for populated in [false, true] {
        let n = Node::new();
        if populated {
            n.put(
                "etc/cni/net.d/05-other.conflist",
                "{\"plugins\":[]}\n",
                0o644,
            );
            n.put(LOOPBACK, "{\"type\":\"loopback\"}\n", 0o644);
            n.put("opt/cni/bin/host-local", "node's own\n", 0o755);
            n.put("opt/cni/bin/sluice", "an old sluice\n", 0o755);
            n.put("etc/apparmor.d/sluiced", "# an old profile\n", 0o644);
            n.put("var/lib/other/keep", "x\n", 0o600);
        }
        let before = n.tree();
        n.ok(&[]);
        assert_ne!(n.tree(), before, "install changed nothing");
        n.ok(&[]);
        let log = n.ok(&["--uninstall"]);
        assert_eq!(n.tree(), before, "populated={populated}:\n{log}");
        // Nothing recorded any more: a second uninstall does nothing.
        let log = n.ok(&["--uninstall"]);
        assert!(log.contains("nothing to uninstall"), "{log}");
        assert_eq!(n.tree(), before);
    }
}

#[test]
fn uninstall_leaves_a_file_changed_since_the_install_alone() {
    let n = Node::new();
    n.ok(&[]);
    n.put("opt/cni/bin/sluice", "replaced by hand\n", 0o755);
    let log = n.ok(&["--uninstall"]);
    assert!(
        log.contains("changed since sluice-bootstrap installed it"),
        "{log}"
    );
    assert_eq!(
        fs::read_to_string(n.path("opt/cni/bin/sluice")).unwrap(),
        "replaced by hand\n"
    );
    assert!(
        !n.path(CONFLIST).exists(),
        "the unchanged files are removed"
    );
    assert!(
        !n.path("etc/apparmor.d").exists(),
        "its empty directories are removed"
    );
}

#[test]
fn bad_inputs_fail_with_a_sentence_and_change_nothing() {
    let n = Node::new();
    let before = n.tree();
    let missing = n.inputs().join("no-such-cni");
    let out = n.run(&["--cni-plugin", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("sluice-cni binary not found") && err.contains("--cni-plugin"),
        "{err}"
    );
    assert_eq!(n.tree(), before);

    fs::write(n.inputs().join("bad.conflist"), "{\"type\":\"sluice\"}").unwrap();
    let bad = n.inputs().join("bad.conflist");
    let out = n.run(&["--conflist", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no \"plugins\" list"), "{err}");
    assert_eq!(n.tree(), before);

    fs::remove_file(n.inputs().join("plugins/host-local")).unwrap();
    let out = n.run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no CNI plugin host-local") && err.contains("containernetworking-plugins"),
        "{err}"
    );
    assert_eq!(n.tree(), before);

    let out = n.run(&["move"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "move without interfaces is a usage error"
    );
}

#[test]
fn the_installed_apparmor_profile_is_accepted_by_apparmor_parser() {
    let Some(parser) = ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        report_skip(
            "SKIP bootstrap_install::the_installed_apparmor_profile_is_accepted_by_apparmor_parser: apparmor_parser not installed (Debian package apparmor)",
        );
        return;
    };
    let n = Node::new();
    n.ok(&[]);
    // -Q: parse and compile without loading into the kernel; -K: no cache.
    let check = |p: &Path| {
        Command::new(parser)
            .args(["-Q", "-K"])
            .arg(p)
            .output()
            .expect("run apparmor_parser")
    };
    let out = check(&n.path("etc/apparmor.d/sluiced"));
    assert!(
        out.status.success(),
        "apparmor_parser rejects the installed profile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same parser rejects a broken profile, so the check means something.
    n.put(
        "broken",
        "profile sluiced {\n  capability no_such_cap,\n}\n",
        0o644,
    );
    assert!(!check(&n.path("broken")).status.success());
}

#[test]
fn the_real_reference_plugins_are_installed_and_run() {
    let dir = Path::new("/usr/lib/cni");
    if !dir.join("host-local").exists() || !dir.join("loopback").exists() {
        report_skip(
            "SKIP bootstrap_install::the_real_reference_plugins_are_installed_and_run: /usr/lib/cni has no host-local/loopback (Debian package containernetworking-plugins)",
        );
        return;
    }
    let n = Node::new();
    n.ok(&["--plugins-dir", "/usr/lib/cni"]);
    for p in ["host-local", "loopback"] {
        let installed = n.path("opt/cni/bin").join(p);
        assert_eq!(
            fs::read(&installed).unwrap(),
            fs::read(dir.join(p)).unwrap()
        );
        assert_eq!(n.mode(&format!("opt/cni/bin/{p}")), 0o755);
        let out = Command::new(&installed)
            .env("CNI_COMMAND", "VERSION")
            .output()
            .expect("run the installed plugin");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{p} VERSION: {}", String::from_utf8_lossy(&out.stdout)));
        assert!(
            v["supportedVersions"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "1.0.0")),
            "{p}: {v}"
        );
    }
}

#[test]
fn the_plugin_is_taken_from_beside_the_binary_and_each_path_can_be_overridden() {
    let n = Node::new();
    // A copy of the bootstrap with a sluice-cni beside it.
    let bin = n.inputs().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::copy(BIN, bin.join("sluice-bootstrap")).unwrap();
    fs::write(bin.join("sluice-cni"), b"beside\n").unwrap();
    let bins = n.dir.path().join("elsewhere/bin");
    // Executing a file just written can fail with ETXTBSY while another
    // test thread's fork still holds the writing descriptor (until that
    // child execs): retry, a bounded number of times.
    let mut tries = 0;
    let out = loop {
        match Command::new(bin.join("sluice-bootstrap"))
            .arg("--root")
            .arg(n.root())
            .arg("--cni-bin-dir")
            .arg(&bins)
            .arg("--plugins-dir")
            .arg(n.inputs().join("plugins"))
            .args(["--apparmor", "never"])
            .output()
        {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => break r.unwrap(),
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(bins.join("sluice")).unwrap(), b"beside\n");
    assert!(bins.join("host-local").exists());
    assert!(
        !n.path("opt").exists(),
        "--cni-bin-dir replaces ROOT/opt/cni/bin"
    );
    assert!(
        n.path(CONFLIST).exists(),
        "the other paths stay under --root"
    );
    // Without one beside it, the error names the option.
    fs::remove_file(bin.join("sluice-cni")).unwrap();
    fs::remove_file(bins.join("sluice")).unwrap();
    let out = Command::new(bin.join("sluice-bootstrap"))
        .arg("--root")
        .arg(n.root())
        .args(["--apparmor", "never"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--cni-plugin"), "{err}");
}

#[test]
fn with_apparmor_off_the_profile_is_installed_and_the_log_says_it_is_not_loaded() {
    let enabled = fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y");
    if enabled {
        // Loading would change this machine's kernel policy.
        report_skip(
            "SKIP bootstrap_install::with_apparmor_off_the_profile_is_installed_and_the_log_says_it_is_not_loaded: AppArmor is enabled here, and the test must not load a profile",
        );
        return;
    }
    let n = Node::new();
    let out = Command::new(BIN)
        .arg("--root")
        .arg(n.root())
        .arg("--cni-plugin")
        .arg(n.inputs().join("sluice-cni"))
        .arg("--plugins-dir")
        .arg(n.inputs().join("plugins"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("AppArmor is not enabled") && log.contains("installed but not loaded"),
        "{log}"
    );
    assert!(n.path("etc/apparmor.d/sluiced").exists());
    let manifest: Value = serde_json::from_slice(
        &fs::read(n.path("var/lib/sluice/bootstrap/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["apparmor_loaded"], Value::Null);
}

#[test]
fn an_install_made_under_one_root_is_uninstalled_under_another() {
    // The init container installs under /host; an operator uninstalls on
    // the host under /.
    let n = Node::new();
    n.put(LOOPBACK, "{\"type\":\"loopback\"}\n", 0o644);
    n.put("opt/cni/bin/sluice", "an old sluice\n", 0o755);
    let before = n.tree();
    n.ok(&[]);
    let moved = n.dir.path().join("moved");
    fs::rename(n.root(), &moved).unwrap();
    fs::create_dir(n.root()).unwrap();
    // A re-run under the new root, with a new plugin, replaces its own
    // file: the copy of the node's old one stays the one to put back.
    fs::write(n.inputs().join("sluice-cni"), b"a newer sluice-cni\n").unwrap();
    let out = Command::new(BIN)
        .arg("--root")
        .arg(&moved)
        .arg("--cni-plugin")
        .arg(n.inputs().join("sluice-cni"))
        .arg("--plugins-dir")
        .arg(n.inputs().join("plugins"))
        .args(["--apparmor", "never"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read(moved.join("opt/cni/bin/sluice")).unwrap(),
        b"a newer sluice-cni\n"
    );
    let out = Command::new(BIN)
        .arg("--root")
        .arg(&moved)
        .arg("--uninstall")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    fs::remove_dir(n.root()).unwrap();
    fs::rename(&moved, n.root()).unwrap();
    assert_eq!(n.tree(), before, "{log}");
}

#[test]
fn the_repository_conflist_template_installs_as_is_with_the_version_added() {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni/10-sluice.conflist");
    if !template.exists() {
        report_skip(
            "SKIP bootstrap_install::the_repository_conflist_template_installs_as_is_with_the_version_added: deploy/cni/10-sluice.conflist is not in this tree",
        );
        return;
    }
    let n = Node::new();
    n.ok(&["--conflist", template.to_str().unwrap()]);
    let mut want: Value = serde_json::from_str(&fs::read_to_string(&template).unwrap()).unwrap();
    want["sluiceBuildVersion"] = Value::String(bootstrap_version());
    let got: Value = serde_json::from_str(&fs::read_to_string(n.path(CONFLIST)).unwrap()).unwrap();
    assert_eq!(got, want);
}

#[test]
fn a_second_bootstrap_at_the_same_time_is_refused() {
    use std::os::fd::AsRawFd;
    let n = Node::new();
    n.ok(&[]);
    let state = n.path("var/lib/sluice/bootstrap");
    let held = fs::File::open(&state).unwrap();
    // SAFETY: flock(2) on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let before = n.tree();
    let out = n.run(&["--uninstall"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another sluice-bootstrap is running"), "{err}");
    assert_eq!(n.tree(), before);
    drop(held);
    n.ok(&["--uninstall"]);
}
