//! Checks of `deploy/` that need no Kubernetes, no container runtime and no
//! DPDK: the ConfigMap's `sluiced.ini` is accepted by sluiced's own config
//! parser, the DaemonSet grants exactly the capabilities of
//! `datapath/src/caps.rs`, socket paths and probes match the binaries'
//! defaults, the AppArmor profile grants the same capabilities, and
//! `deploy/bootstrap.sh` is valid bash whose `--help` and `--dry-run` work.
//!
//! The manifests are read with small line-based extractors (no YAML
//! dependency). When `python3` with PyYAML is installed, one more test parses
//! every document for real and cross-checks the extractors; otherwise it says
//! it was skipped.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sluice_datapath::caps::{self, Cap};
use sluice_datapath::config::{Config, DatapathConfig};

const NESTDB_SOCKET: &str = "/var/run/nestdb/nestdb-server.sock";
const CTL_SOCKET: &str = "/var/run/sluice/sluiced.ctl";
/// The capabilities the DaemonSet adds: every capability caps.rs knows.
const GRANTED: [&str; 4] = ["NET_ADMIN", "NET_RAW", "IPC_LOCK", "SYS_ADMIN"];
const ALL_CAPS: [Cap; 4] = [Cap::NetAdmin, Cap::NetRaw, Cap::IpcLock, Cap::SysAdmin];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The literal block scalar `key: |` (first occurrence), dedented.
fn block_scalar(yaml: &str, key: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("no '{key}: |' block"));
    let base = indent(lines[start]);
    let body: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > base)
        .copied()
        .collect();
    let inner = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min()
        .expect("empty block");
    let mut out: String = body
        .iter()
        .map(|l| if l.trim().is_empty() { "" } else { &l[inner..] })
        .collect::<Vec<_>>()
        .join("\n");
    // `|` keeps one final newline and strips the trailing blank lines.
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// The lines of the list item `- name: NAME` up to its next sibling.
fn list_item<'a>(yaml: &'a str, name: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = yaml.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("no list item '- name: {name}'"));
    let base = indent(lines[start]);
    let mut item = vec![lines[start]];
    for l in &lines[start + 1..] {
        if !l.trim().is_empty() && !l.trim_start().starts_with('#') && indent(l) <= base {
            break;
        }
        item.push(l);
    }
    item
}

/// The flow sequence `key: ["A", "B"]` in `lines` (exactly one).
fn flow_list(lines: &[&str], key: &str) -> BTreeSet<String> {
    let found: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .collect();
    assert_eq!(found.len(), 1, "exactly one '{key}:' line, got {found:?}");
    let v = found[0].trim();
    let v = v
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or_else(|| panic!("'{key}: {v}' is not a flow sequence"));
    v.split(',')
        .map(|s| s.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn daemonset() -> String {
    read("deploy/kubernetes/sluice-daemonset.yaml")
}

fn sluiced_ini() -> String {
    block_scalar(&read("deploy/kubernetes/sluice-config.yaml"), "sluiced.ini")
}

#[test]
fn configmap_ini_is_accepted_by_sluiceds_parser() {
    let ini = sluiced_ini();
    let cfg = Config::parse(&ini, "sluice-config.yaml:sluiced.ini")
        .unwrap_or_else(|e| panic!("{e}\n--- ini ---\n{ini}"));
    cfg.check_node_type().unwrap();
    assert_eq!(cfg.bridge, "br-int");
    assert_eq!(cfg.uplink_port.as_deref(), Some("uplink"));
    assert_eq!(cfg.datapath.ctl_socket, CTL_SOCKET);
    assert_eq!(
        cfg.datapath.hugepages.name(),
        "required",
        "the pod mounts hugepages"
    );
    // The uplink keeps a kernel interface (node-if) by default; the host
    // exception port takes the node's addresses; connections are saved;
    // metrics are on.
    let uplink = cfg.ports.iter().find(|p| p.name == "uplink").unwrap();
    assert_eq!(uplink.devargs, "net_af_packet0,iface=eth1");
    assert_eq!(uplink.ofport, 1, "the compiled program's uplink number");
    let host = cfg.ports.iter().find(|p| p.name == "host").unwrap();
    assert_eq!(host.ofport, 2, "the compiled program's host port number");
    assert_eq!(cfg.datapath.overlay.host_port.as_deref(), Some("host"));
    assert_eq!(
        cfg.datapath.state_file.as_deref(),
        Some("/var/run/sluice/conntrack.state")
    );
    assert_eq!(
        cfg.datapath.metrics_address,
        Some("0.0.0.0:9476".parse().unwrap())
    );
    // The supervisor of the sluiced container names the same interfaces.
    let ds = daemonset();
    let args = list_item(&ds, "sluiced").join("\n");
    assert!(
        args.contains(r#"["--node-if", "eth1", "--host-if", "sluice-host", "supervise", "--","#),
        "{args}"
    );
    assert!(ini.contains("devargs = net_tap0,iface=sluice-host"));
    // The vfio-pci alternative's address is the one bootstrap.sh's help and
    // README use, and it parses too.
    assert!(read("deploy/bootstrap.sh").contains("0000:01:00.0"));
    let vfio = ini.replace(
        "devargs = net_af_packet0,iface=eth1",
        "devargs = 0000:01:00.0",
    );
    assert_ne!(vfio, ini);
    Config::parse(&vfio, "vfio variant").unwrap();

    // The parser is strict about [datapath] and [port:*] keys, so the check
    // above is meaningful: a key it does not know fails.
    let bad = ini.replace("[datapath]\n", "[datapath]\nno_such_key = 1\n");
    assert!(
        Config::parse(&bad, "x").is_err(),
        "unknown [datapath] key accepted"
    );
    let bad = ini.replace("[port:uplink]\n", "[port:uplink]\nno_such_key = 1\n");
    assert!(
        Config::parse(&bad, "x").is_err(),
        "unknown [port:*] key accepted"
    );
}

#[test]
fn daemonset_grants_exactly_the_capability_table() {
    let ds = daemonset();
    let sluiced = list_item(&ds, "sluiced");
    let add = flow_list(&sluiced, "add");
    assert_eq!(add, set(&GRANTED));
    assert_eq!(flow_list(&sluiced, "drop"), set(&["ALL"]));
    assert!(sluiced.iter().any(|l| l.trim() == "privileged: false"));
    // The API server refuses allowPrivilegeEscalation: false together with
    // SYS_ADMIN (and no_new_privs would be meaningless with it).
    assert!(!sluiced
        .iter()
        .any(|l| l.trim() == "allowPrivilegeEscalation: false"));

    // GRANTED is every capability caps.rs knows ...
    let known: BTreeSet<String> = ALL_CAPS
        .iter()
        .map(|c| c.name().trim_start_matches("CAP_").to_string())
        .collect();
    assert_eq!(add, known);
    // ... and covers what the shipped config needs with hugepages, and what
    // the documented alternatives (af_packet uplink, TAP pod ports) need.
    let ini = sluiced_ini();
    let variants = [
        ini.clone(),
        ini.replace(
            "devargs = net_af_packet0,iface=eth1",
            "devargs = 0000:01:00.0",
        ),
        format!("{ini}\n[port:pod1]\ndevargs = net_tap1,iface=pod1\n"),
    ];
    for text in variants {
        let cfg = Config::parse(&text, "variant").unwrap();
        for cap in caps::required(&cfg, true).keys() {
            let name = cap.name().trim_start_matches("CAP_");
            assert!(add.contains(name), "{name} needed but not granted");
        }
    }

    // The agent gets no capability at all; the bootstrap only MAC_ADMIN
    // (loading the AppArmor profile).
    let agent = list_item(&ds, "sluice-agent");
    assert!(!agent.iter().any(|l| l.trim().starts_with("add:")));
    assert_eq!(flow_list(&agent, "drop"), set(&["ALL"]));
    let boot = list_item(&ds, "sluice-bootstrap");
    assert_eq!(flow_list(&boot, "add"), set(&["MAC_ADMIN"]));
    assert_eq!(flow_list(&boot, "drop"), set(&["ALL"]));
}

#[test]
fn apparmor_profile_matches_the_daemonset() {
    let profile = read("deploy/apparmor/sluiced");
    assert!(profile.contains("profile sluiced "));
    let granted: BTreeSet<String> = profile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("capability "))
        .map(|c| c.trim_end_matches(',').trim().to_ascii_uppercase())
        .collect();
    assert_eq!(granted, set(&GRANTED));
    for path in [
        "/dev/hugepages/",
        "/dev/vfio/vfio",
        "/dev/net/tun",
        "/sys/bus/pci/",
        "/{var/,}run/dpdk/",
        "/{var/,}run/sluice/",
        "network packet raw",
    ] {
        assert!(profile.contains(path), "profile lacks {path}");
    }
    assert!(daemonset()
        .contains("container.apparmor.security.beta.kubernetes.io/sluiced: localhost/sluiced"));

    // The real parser, when this machine has it (Debian: apparmor).
    let parser = ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    match parser {
        Some(p) => {
            // -Q: parse and compile only, -K: no kernel, no cache.
            let out = Command::new(p)
                .args(["-Q", "-K"])
                .arg(repo().join("deploy/apparmor/sluiced"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "apparmor_parser: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => eprintln!("skipped: apparmor_parser not installed (apt-get install apparmor)"),
    }
}

#[test]
fn sockets_and_probes_use_the_default_paths() {
    // The defaults of the binaries.
    assert_eq!(sluice_api::paths::SLUICED_CTL, CTL_SOCKET);
    assert_eq!(DatapathConfig::default().ctl_socket, CTL_SOCKET);
    // nestdb is not a dependency of this crate: read its constant.
    assert!(read("nestdb/src/server.rs").contains(&format!(
        "pub const DEFAULT_REMOTE: &str = \"punix:{NESTDB_SOCKET}\";"
    )));

    let ds = daemonset();
    // nestdb-server runs on the host (its systemd unit) at the default
    // socket, which the pod mounts as a Socket hostPath for the agent.
    let unit = read("deploy/systemd/nestdb-server.service");
    assert!(unit.contains(&format!("--remote=punix:{NESTDB_SOCKET}")));
    assert!(unit.contains("/usr/share/sluice/sluice.ovsschema"));
    // The image's root filesystem carries the schema at that path.
    assert!(read("deploy/image/rootfs.sh")
        .contains("deploy/nestdb/sluice.ovsschema\" \"$R/usr/share/sluice/sluice.ovsschema\""));
    let vol = ds
        .lines()
        .skip_while(|l| l.trim() != format!("path: {NESTDB_SOCKET}"))
        .nth(1)
        .expect("the nestdb socket volume");
    assert_eq!(vol.trim(), "type: Socket");
    let agent = list_item(&ds, "sluice-agent").join("\n");
    assert!(agent.contains(&format!("unix:{NESTDB_SOCKET}")), "{agent}");
    assert!(agent.contains(CTL_SOCKET), "{agent}");
    assert!(
        agent.contains(&format!("mountPath: {NESTDB_SOCKET}")),
        "{agent}"
    );

    // sluiced: alive when its socket answers, ready when it forwards a
    // committed program.
    let sluiced = list_item(&ds, "sluiced");
    let probe = |what: &str| {
        format!(r#"["sluicectl", "--socket", "{CTL_SOCKET}", "--timeout", "2", "probe", "{what}"]"#)
    };
    for (kind, what) in [
        ("livenessProbe:", "sluiced"),
        ("readinessProbe:", "forwarding"),
        ("startupProbe:", "sluiced"),
    ] {
        let at = sluiced
            .iter()
            .position(|l| l.trim() == kind)
            .unwrap_or_else(|| panic!("sluiced has no {kind}"));
        let cmd = sluiced[at..]
            .iter()
            .find_map(|l| l.trim().strip_prefix("command: "))
            .unwrap();
        assert_eq!(cmd, probe(what), "{kind}");
    }
    assert!(
        agent.contains(r#""probe", "agent", "--db", "unix:/var/run/nestdb/nestdb-server.sock""#)
    );

    // sluiced's directory is shared with the host and the agent.
    let vol = ds
        .lines()
        .skip_while(|l| l.trim() != "path: /var/run/sluice")
        .nth(1)
        .expect("no hostPath /var/run/sluice");
    assert_eq!(vol.trim(), "type: DirectoryOrCreate");
    for c in ["sluiced", "sluice-agent"] {
        let item = list_item(&ds, c).join("\n");
        assert!(item.contains("mountPath: /var/run/sluice"), "{c}");
    }
}

/// The probe command, exactly as the DaemonSet runs it, against the real
/// control socket server (only the socket path differs).
#[test]
fn probe_command_succeeds_against_a_control_socket() {
    let daemon = common::TestDaemon::start();
    let run = |what: &str| {
        Command::new(env!("CARGO_BIN_EXE_sluicectl"))
            .arg("--socket")
            .arg(daemon.socket())
            .args(["--timeout", "2", "probe", what])
            .env_remove("SLUICE_CTL")
            .output()
            .unwrap()
    };
    let out = run("sluiced");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The stand-in holds generation 0: not ready, and it says why.
    let out = run("forwarding");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("generation 0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn daemonset_node_settings() {
    let ds = daemonset();
    for want in [
        "hostNetwork: true",
        "hostPID: false",
        "priorityClassName: system-node-critical",
        "sluice.io/node-type: baremetal",
        "- operator: Exists",
        "medium: HugePages",
        "namespace: sluice-system",
    ] {
        assert!(ds.lines().any(|l| l.trim() == want), "missing '{want}'");
    }
    let grace: u32 = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(grace >= 30, "sluiced needs time to hand the node IP back");
    // hugepages: requests == limits (Kubernetes requires it).
    let huge: Vec<&str> = ds
        .lines()
        .filter_map(|l| l.trim().strip_prefix("hugepages-2Mi: "))
        .collect();
    assert_eq!(huge.len(), 2, "{huge:?}");
    assert_eq!(huge[0], huge[1]);
    // The label bootstrap.sh sets is the one the DaemonSet selects.
    assert!(read("deploy/bootstrap.sh").contains("sluice.io/node-type=baremetal"));
    // The namespace comes first, in the file applied first.
    let cfgmap = read("deploy/kubernetes/sluice-config.yaml");
    let kinds: Vec<&str> = cfgmap
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap"]);
    assert!(!ds.lines().any(|l| l == "kind: Namespace"));
    // The ConfigMap is mounted read-only at /etc/sluice.
    let sluiced = list_item(&ds, "sluiced").join("\n");
    assert!(sluiced.contains("mountPath: /etc/sluice\n              readOnly: true"));
}

fn bootstrap(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(repo().join("deploy/bootstrap.sh"))
        .args(args)
        .output()
        .expect("run bash")
}

#[test]
fn bootstrap_script_is_valid_and_has_a_dry_run() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(repo().join("deploy/bootstrap.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = bootstrap(&["--dry-run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Usage:") && help.contains("--dry-run"),
        "{help}"
    );

    // Mistakes are refused before anything happens.
    assert_eq!(bootstrap(&["--dry-run"]).status.code(), Some(2));
    assert_eq!(
        bootstrap(&["--dry-run", "not-a-pci"]).status.code(),
        Some(2)
    );
    assert_eq!(
        bootstrap(&["--dry-run", "--bogus", "01:00.0"])
            .status
            .code(),
        Some(2)
    );

    // A dry run changes nothing (and needs no root): it inspects the node and
    // prints what it would do.
    let out = bootstrap(&["--dry-run", "--node", "n1", "01:00.0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("uplink 0000:01:00.0:"), "{text}");
    assert!(
        text.contains("+ kubectl label node n1 sluice.io/node-type=baremetal --overwrite"),
        "{text}"
    );
}

/// With PyYAML: every document parses, and the line-based extractors above
/// agree with a real YAML parser.
#[test]
fn manifests_parse_as_yaml_when_pyyaml_is_available() {
    let script = "import json,sys,yaml\n\
                  print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))]))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(repo().join("deploy/kubernetes/sluice-config.yaml"))
        .arg(repo().join("deploy/kubernetes/sluice-daemonset.yaml"))
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'yaml'") => {
            eprintln!("skipped: python3 has no PyYAML (apt-get install python3-yaml)");
            return;
        }
        Ok(o) => panic!(
            "YAML does not parse: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            eprintln!("skipped: no python3 ({e})");
            return;
        }
    };
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["Namespace", "ConfigMap", "ServiceAccount", "DaemonSet"]
    );
    assert_eq!(
        docs[1]["data"]["sluiced.ini"].as_str().unwrap(),
        sluiced_ini()
    );
    for d in &docs[1..] {
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "sluice-system");
        }
    }
    assert_eq!(docs[1]["metadata"]["namespace"], "sluice-system");

    let spec = &docs[3]["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["hostPID"], false);
    let containers = spec["containers"].as_array().unwrap();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sluiced", "sluice-agent"]);
    let sluiced = &containers[0];
    let caps = &sluiced["securityContext"]["capabilities"];
    let add: BTreeSet<String> = caps["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(add, set(&GRANTED));
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    let res = &sluiced["resources"];
    assert_eq!(
        res["requests"]["hugepages-2Mi"],
        res["limits"]["hugepages-2Mi"]
    );
    // Every volumeMount names a volume, and the config volume is the ConfigMap.
    let volumes: BTreeSet<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let inits = spec["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "sluice-bootstrap");
    for c in containers.iter().chain(inits) {
        for m in c["volumeMounts"].as_array().unwrap() {
            assert!(volumes.contains(m["name"].as_str().unwrap()), "{m}");
        }
    }
    let config = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    assert_eq!(config["configMap"]["name"], docs[1]["metadata"]["name"]);
    let probe = &sluiced["livenessProbe"]["exec"]["command"];
    assert_eq!(probe[2], CTL_SOCKET);
}

/// `kubernetes-validate --strict` (PyPI; scripts/setup-deps.sh installs it)
/// accepts every manifest for three Kubernetes minor versions.
#[test]
fn manifests_validate_strictly_for_three_kubernetes_versions() {
    let files = [
        repo().join("deploy/kubernetes/sluice-config.yaml"),
        repo().join("deploy/kubernetes/sluice-daemonset.yaml"),
    ];
    for v in ["1.28.0", "1.30.0", "1.32.0"] {
        let out = match Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", v])
            .args(&files)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                common::report_skip(&format!(
                    "deploy_manifests: kubernetes-validate not run ({e}): pip install kubernetes-validate"
                ));
                return;
            }
        };
        assert!(
            out.status.success(),
            "kubernetes-validate -k {v}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A rolling update hands the node over: the DaemonSet surges (the new pod
/// starts next to the old one, none is unavailable), the new pod's
/// sluiced runs under the supervisor with `--take-over`, the control socket
/// it takes over through and the saved connections are on the hostPath both
/// pods share (the supervisor finds the same socket in the ConfigMap), and
/// no hostPort keeps the surge pod off the node. Parsed with PyYAML (skipped,
/// and said, without it); `kubernetes-validate` above checks the fields
/// (`maxSurge` included) against the API schemas.
#[test]
fn daemonset_rolling_update_hands_over() {
    let script = "import json,sys,yaml\n\
                  print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = match Command::new("python3")
        .args(["-c", script])
        .arg(repo().join("deploy/kubernetes/sluice-daemonset.yaml"))
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'yaml'") => {
            common::report_skip(
                "deploy_manifests::daemonset_rolling_update_hands_over: python3 has no PyYAML (apt-get install python3-yaml)",
            );
            return;
        }
        Ok(o) => panic!(
            "YAML does not parse: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            common::report_skip(&format!(
                "deploy_manifests::daemonset_rolling_update_hands_over: no python3 ({e})"
            ));
            return;
        }
    };
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    assert_eq!(strategy["rollingUpdate"]["maxSurge"], 1, "{strategy}");
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0, "{strategy}");
    let spec = &ds["spec"]["template"]["spec"];
    let sluiced = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sluiced")
        .unwrap();
    assert_eq!(sluiced["command"], serde_json::json!(["sluice-bootstrap"]));
    let args: Vec<&str> = sluiced["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let dashdash = args.iter().position(|a| *a == "--").expect("supervise --");
    assert_eq!(args[dashdash - 1], "supervise", "{args:?}");
    let command: Vec<String> = args[dashdash + 1..].iter().map(|s| s.to_string()).collect();
    assert_eq!(command[0], "sluiced");
    assert!(command.iter().any(|a| a == "--take-over"), "{command:?}");
    // With hostNetwork a containerPort is a hostPort: the surge pod would
    // never fit on the node beside the old one.
    assert_eq!(spec["hostNetwork"], true);
    for c in spec["containers"].as_array().unwrap() {
        assert!(c.get("ports").is_none(), "{} declares ports", c["name"]);
    }
    // The socket both sluiceds meet at, and the state file, live on the
    // shared hostPath; the supervisor reads the same socket path from the
    // ConfigMap as sluiced serves.
    let run = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sluice-run")
        .unwrap();
    assert_eq!(run["hostPath"]["path"], "/var/run/sluice");
    assert!(sluiced["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "sluice-run" && m["mountPath"] == "/var/run/sluice"));
    let ini = sluiced_ini();
    let ctl = sluice_control::bootstrap::supervise::ctl_socket_from_ini(&ini)
        .unwrap_or_else(|| sluice_api::paths::SLUICED_CTL.into());
    assert_eq!(ctl, Path::new(CTL_SOCKET));
    let cfg = Config::parse(&ini, "sluice-config.yaml:sluiced.ini")
        .expect("the ConfigMap's sluiced.ini parses");
    let state = cfg
        .datapath
        .state_file
        .expect("a state_file for crash restarts");
    assert!(state.starts_with("/var/run/sluice/"), "{state}");
}
