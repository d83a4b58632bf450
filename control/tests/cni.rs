//! CNI conformance of `sluice-cni`, driven through the built binary the way
//! a runtime drives it: real network namespaces, Debian's real host-local
//! IPAM plugin, a real nestdb-server with the node schema. A test thread
//! stands in for sluice-agent by setting `Logical_Port.up = true` when a
//! row appears (`cni_harness::Agent`), so these tests are about the plugin
//! alone and need no DPDK (`podman_e2e.rs` runs the real agent and
//! sluiced); the timeout test runs without it.

mod cni_harness;

use cni_harness::*;
use serde_json::{json, Value};
use sluice_control::cni::host_interface_name;

const GW: &str = "10.250.0.1";

/// ADD, then everything the result and the node should show.
fn add_and_verify(db: &Nestdb, ns: &Netns, id: &str, conf: &Value) -> Value {
    let version = conf["cniVersion"].as_str().unwrap().to_string();
    let r = Invocation::new("ADD", id, Some(&ns.path())).run(conf).ok();
    assert_eq!(r["cniVersion"], version.as_str());
    // interfaces: the host end, then eth0 in the sandbox.
    let host = host_interface_name(&port_name(id));
    assert_eq!(r["interfaces"][0]["name"], host.as_str());
    assert!(r["interfaces"][0].get("sandbox").is_none());
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["sandbox"], ns.path().as_str());
    let mac = r["interfaces"][1]["mac"].as_str().unwrap().to_string();
    // ips: the address in the pod CIDR on interface 1, via the gateway.
    let ip = &r["ips"][0];
    let address = ip["address"].as_str().unwrap().to_string();
    assert!(
        address.starts_with("10.250.0.") && address.ends_with("/24"),
        "{address}"
    );
    assert_eq!(ip["gateway"], GW);
    assert_eq!(ip["interface"], 1);
    assert_eq!(ip.get("version").is_some(), version == "0.4.0", "{r}");
    assert_eq!(
        r["interfaces"][1].get("mtu").is_some(),
        version == "1.1.0",
        "{r}"
    );
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0", "gw": GW}]));
    let dns = conf.get("plugins").map_or(&conf["dns"], |p| &p[0]["dns"]);
    assert_eq!(&r["dns"], dns);
    let addr = address.split('/').next().unwrap().to_string();
    let o: Vec<u8> = addr.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(
        mac,
        format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    );
    // The namespace: eth0 with that MAC, the MTU (1500 - 62), up, the
    // address and the default route.
    let link = &ns.ip_json(&["link", "show", "dev", "eth0"])[0];
    assert_eq!(link["address"], mac.as_str());
    assert_eq!(link["mtu"], 1438);
    assert!(
        link["flags"].as_array().unwrap().contains(&json!("UP")),
        "{link}"
    );
    let addrs = &ns.ip_json(&["-4", "addr", "show", "dev", "eth0"])[0]["addr_info"];
    assert_eq!(addrs[0]["local"], addr.as_str());
    assert_eq!(addrs[0]["prefixlen"], 24);
    let routes = ns.ip_json(&["-4", "route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], GW, "{routes}");
    // Transmit checksum offload off (sluiced reads the frames through
    // af_packet).
    let k = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ethtool", "-k", "eth0"])
        .output()
        .unwrap();
    let k = String::from_utf8_lossy(&k.stdout);
    assert!(k.contains("tx-checksumming: off"), "{k}");
    // The host end, up, with the same MTU.
    let h = host_link(&host).expect("host end of the veth");
    assert_eq!(h["mtu"], 1438);
    assert!(h["flags"].as_array().unwrap().contains(&json!("UP")), "{h}");
    // The row.
    let row = db.port(&port_name(id)).expect("Logical_Port row");
    assert_eq!(row.mac, mac);
    assert_eq!(row.ips, [addr.clone()].into());
    assert_eq!(row.netns.as_deref(), Some(ns.path().as_str()));
    assert_eq!(row.interface_name, "eth0");
    assert_eq!(row.pod_namespace.as_deref(), Some("default"));
    assert_eq!(row.pod_name, Some(format!("pod-{id}")));
    assert!(row.up, "the stand-in agent set it up before ADD returned");
    assert_eq!(row.external_ids["host_interface"], host);
    assert_eq!(row.external_ids["cni_container_id"], id);
    // The lease.
    assert!(db.leases(conf["name"].as_str().unwrap()).contains(&addr));
    r
}

/// Everything of `id` is gone: row, host end, lease.
fn assert_detached(db: &Nestdb, net: &str, id: &str, addr: &str) {
    assert!(db.port(&port_name(id)).is_none(), "row of {id} left behind");
    assert!(
        host_link(&host_interface_name(&port_name(id))).is_none(),
        "veth of {id} left behind"
    );
    assert!(
        !db.leases(net).contains(&addr.to_string()),
        "lease {addr} left behind"
    );
}

fn addr_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// The node's nestdb-server (with its `Node_Config` when `configured`), or
/// None (the skip recorded) when `test` cannot run here.
fn node(test: &str, configured: bool) -> Option<Nestdb> {
    ready(test).then(|| Nestdb::start(configured))
}

/// A configured node's nestdb-server with the stand-in agent running, or
/// None (the skip recorded) when `test` cannot run here. Bind it as
/// `let (db, _agent)`: the agent stops before the server.
fn node_with_agent(test: &str) -> Option<(Nestdb, Agent)> {
    let db = node(test, true)?;
    let agent = Agent::start(&db);
    Some((db, agent))
}

/// One container of a test: its namespace (`cni-TAG`), its ID and the
/// plugin configuration it is attached with.
struct Pod {
    ns: Netns,
    id: String,
    conf: Value,
}

impl Pod {
    /// Container `tag` on network `net` in CNI `version`.
    fn new(db: &Nestdb, tag: &str, net: &str, version: &str) -> Pod {
        Pod {
            ns: Netns::new(&format!("cni-{tag}")),
            id: container_id(tag),
            conf: db.conf(net, version),
        }
    }

    /// `command` for this container in its namespace.
    fn cmd(&self, command: &str) -> Invocation {
        Invocation::new(command, &self.id, Some(&self.ns.path()))
    }

    /// ADD, checked with [`add_and_verify`]; returns the result.
    fn add(&self, db: &Nestdb) -> Value {
        add_and_verify(db, &self.ns, &self.id, &self.conf)
    }

    /// Asserts that the namespace holds no eth0.
    fn assert_no_eth0(&self) {
        let links = self.ns.ip_json(&["link", "show"]);
        assert!(
            links
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["ifname"] != "eth0"),
            "{links}"
        );
    }

    /// DEL with `prev` as prevResult, then checks that nothing is left.
    fn del(&self, db: &Nestdb, prev: &Value) {
        self.cmd("DEL").run(&with_prev(&self.conf, prev)).ok();
        let net = self.conf["name"].as_str().unwrap();
        assert_detached(db, net, &self.id, &addr_of(prev));
    }
}

#[test]
fn add_check_del_round_trip_in_each_version() {
    let Some((db, _agent)) = node_with_agent("cni add_check_del_round_trip_in_each_version") else {
        return;
    };
    for (i, v) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let pod = Pod::new(&db, &format!("rt{i}"), "rt", v);
        let r = pod.add(&db);
        let prev = with_prev(&pod.conf, &r);
        let c = pod.cmd("CHECK").run(&prev);
        assert_eq!(c.exit, 0, "CHECK in {v}: {}", c.stdout);
        assert_eq!(c.stdout, Value::Null);
        let d = pod.cmd("DEL").run(&prev);
        assert_eq!(d.exit, 0, "DEL in {v}: {}", d.stdout);
        assert_detached(&db, "rt", &pod.id, &addr_of(&r));
        pod.assert_no_eth0();
        // DEL again: nothing left, still success.
        pod.cmd("DEL").run(&prev).ok();
    }
    assert!(db.ports().is_empty());
}

#[test]
fn add_reads_a_conflist_and_fills_host_local_ranges_from_node_config() {
    let Some((db, _agent)) =
        node_with_agent("cni add_reads_a_conflist_and_fills_host_local_ranges_from_node_config")
    else {
        return;
    };
    let ns = Netns::new("cni-list");
    let id = container_id("list");
    let plugin = db.conf("lst", "1.0.0");
    let list = json!({"cniVersion": "1.0.0", "name": "lst", "plugins": [
        {"type": "sluice", "nestdb": plugin["nestdb"], "dns": plugin["dns"],
         "ipam": {"type": "host-local", "dataDir": plugin["ipam"]["dataDir"]}}]});
    let r = add_and_verify(&db, &ns, &id, &list);
    Invocation::new("DEL", &id, Some(&ns.path()))
        .run(&list)
        .ok();
    assert_detached(&db, "lst", &id, &addr_of(&r));
}

#[test]
fn add_twice_is_refused_and_keeps_the_first_attachment() {
    let Some((db, _agent)) =
        node_with_agent("cni add_twice_is_refused_and_keeps_the_first_attachment")
    else {
        return;
    };
    let pod = Pod::new(&db, "twice", "tw", "1.0.0");
    let r = pod.add(&db);
    let again = pod.cmd("ADD").run(&pod.conf);
    assert_eq!(again.code(), 100, "{}", again.stdout);
    again.assert_says("msg", "already attached");
    assert_eq!(again.stdout["cniVersion"], "1.0.0");
    // The first attachment is untouched: one lease, CHECK passes.
    assert_eq!(db.leases("tw"), vec![addr_of(&r)]);
    pod.cmd("CHECK").run(&with_prev(&pod.conf, &r)).ok();
    pod.del(&db, &r);
}

#[test]
fn del_of_something_never_added_succeeds() {
    let Some(db) = node("cni del_of_something_never_added_succeeds", true) else {
        return;
    };
    let conf = db.conf("nv", "1.0.0");
    let id = container_id("never");
    Invocation::new("DEL", &id, Some("/run/netns/sluice-no-such-netns"))
        .run(&conf)
        .ok();
    Invocation::new("DEL", &id, None).run(&conf).ok();
    assert!(db.ports().is_empty());
}

#[test]
fn del_after_the_namespace_is_gone() {
    let Some((db, _agent)) = node_with_agent("cni del_after_the_namespace_is_gone") else {
        return;
    };
    let pod = Pod::new(&db, "gone", "gn", "1.0.0");
    let r = pod.add(&db);
    pod.ns.delete();
    pod.del(&db, &r);
}

#[test]
fn check_with_a_wrong_prev_result_fails() {
    let Some((db, _agent)) = node_with_agent("cni check_with_a_wrong_prev_result_fails") else {
        return;
    };
    let pod = Pod::new(&db, "chk", "ck", "1.0.0");
    let r = pod.add(&db);
    let check = |prev: &Value| pod.cmd("CHECK").run(&with_prev(&pod.conf, prev));
    let mut wrong_ip = r.clone();
    wrong_ip["ips"][0]["address"] = json!("10.250.0.200/24");
    let c = check(&wrong_ip);
    assert_eq!(c.code(), 101);
    c.assert_says("details", "10.250.0.200/24");
    let mut wrong_mac = r.clone();
    wrong_mac["interfaces"][1]["mac"] = json!("0a:58:00:00:00:01");
    assert_eq!(check(&wrong_mac).code(), 101);
    let mut wrong_route = r.clone();
    wrong_route["routes"] = json!([{"dst": "0.0.0.0/0", "gw": "10.250.0.9"}]);
    assert_eq!(check(&wrong_route).code(), 101);
    let mut wrong_if = r.clone();
    wrong_if["interfaces"][1]["name"] = json!("eth9");
    assert_eq!(check(&wrong_if).code(), 101);
    // No prevResult at all: invalid configuration.
    let c = pod.cmd("CHECK").run(&pod.conf);
    assert_eq!(c.code(), 7);
    // A container that was never attached.
    let c = Invocation::new("CHECK", &container_id("other"), Some(&pod.ns.path()))
        .run(&with_prev(&pod.conf, &r));
    assert_eq!(c.code(), 3);
    // The right one still passes.
    check(&r).ok();
    pod.del(&db, &r);
}

#[test]
fn bad_inputs_have_their_error_codes() {
    let Some(db) = node("cni bad_inputs_have_their_error_codes", true) else {
        return;
    };
    let pod = Pod::new(&db, "bad", "bd", "1.1.0");
    let (add, conf) = (pod.cmd("ADD"), pod.conf.clone());
    // Failed to decode content.
    let r = add.run_raw(b"{\"cniVersion\": ");
    assert_eq!(r.code(), 6);
    assert_eq!(r.stdout["cniVersion"], "1.0.0");
    assert!(!r.stdout["details"].as_str().unwrap().is_empty());
    // Incompatible versions.
    for v in ["0.3.1", "9.9.9"] {
        let r = add.run(&db.conf("bd", v));
        assert_eq!(r.code(), 1, "{v}");
        r.assert_says("details", "0.4.0, 1.0.0, 1.1.0");
    }
    // Missing or invalid CNI_* variables.
    for var in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
    ] {
        let r = add.clone().without(var).run(&conf);
        assert_eq!(r.code(), 4, "{var}");
        r.assert_says("msg", var);
        assert_eq!(
            r.stdout["cniVersion"], "1.1.0",
            "errors speak the configuration's version"
        );
    }
    assert_eq!(
        add.clone().with("CNI_COMMAND", "ATTACH").run(&conf).code(),
        4
    );
    assert_eq!(add.clone().with("CNI_IFNAME", "a/b").run(&conf).code(), 4);
    // Invalid configuration.
    let mut no_name = conf.clone();
    no_name.as_object_mut().unwrap().remove("name");
    assert_eq!(add.run(&no_name).code(), 7);
    // The namespace does not exist: container unknown.
    let r = add
        .clone()
        .with("CNI_NETNS", "/run/netns/sluice-no-such-netns")
        .run(&conf);
    assert_eq!(r.code(), 3);
    // nestdb unreachable: try again later.
    let mut far = conf.clone();
    far["nestdb"] = json!(format!("unix:{}/absent.sock", db.dir.path().display()));
    let r = add.run(&far);
    assert_eq!(r.code(), 11);
    r.assert_says("msg", "nestdb");
    // IPAM plugin missing from CNI_PATH.
    let mut no_ipam = conf.clone();
    no_ipam["ipam"]["type"] = json!("no-such-ipam");
    let r = add.run(&no_ipam);
    assert_eq!(r.code(), 7);
    r.assert_says("details", "CNI_PATH");
    // IPAM failing (host-local refuses a range outside its subnet); its
    // error comes back and nothing is left behind.
    let mut broken = conf.clone();
    broken["ipam"]["ranges"] = json!([[{"subnet": POD_CIDR, "rangeStart": "10.99.0.5"}]]);
    let r = add.run(&broken);
    assert_ne!(r.exit, 0);
    r.assert_says("msg", "IPAM plugin host-local");
    assert!(db.ports().is_empty());
    assert!(host_link(&host_interface_name(&port_name(&pod.id))).is_none());
    // IPAM leasing outside the node's pod CIDR: refused and rolled back.
    let mut outside = conf.clone();
    outside["ipam"]["ranges"] = json!([[{"subnet": "10.77.0.0/24"}]]);
    let r = add.run(&outside);
    assert_eq!(r.code(), 7, "{}", r.stdout);
    assert!(db.leases("bd").is_empty(), "the lease was released");
    assert!(db.ports().is_empty());
}

#[test]
fn an_unconfigured_node_is_a_transient_error() {
    let Some(db) = node("cni an_unconfigured_node_is_a_transient_error", false) else {
        return;
    };
    let pod = Pod::new(&db, "unconf", "uc", "1.0.0");
    let r = pod.cmd("ADD").run(&pod.conf);
    assert_eq!(r.code(), 11);
    r.assert_says("details", "Node_Config");
}

#[test]
fn add_times_out_without_the_agent_and_rolls_back() {
    // No stand-in agent: nobody sets up.
    let Some(db) = node("cni add_times_out_without_the_agent_and_rolls_back", true) else {
        return;
    };
    let mut pod = Pod::new(&db, "late", "lt", "1.0.0");
    pod.conf["portUpTimeoutMs"] = json!(300);
    let r = pod.cmd("ADD").run(&pod.conf);
    assert_eq!(r.code(), 11, "{}", r.stdout);
    r.assert_says("msg", "timed out");
    let details = r.stdout["details"].as_str().unwrap();
    assert!(
        details.contains("300 ms") && details.contains("sluice-agent"),
        "{details}"
    );
    // Rolled back: no row, no veth (either end), no lease.
    assert!(db.ports().is_empty());
    assert!(host_link(&host_interface_name(&port_name(&pod.id))).is_none());
    pod.assert_no_eth0();
    assert!(db.leases("lt").is_empty(), "{:?}", db.leases("lt"));
    // With the agent back, the same ADD works (nothing half-attached in the way).
    let _agent = Agent::start(&db);
    pod.conf["portUpTimeoutMs"] = json!(30000);
    let r = pod.add(&db);
    pod.del(&db, &r);
}

#[test]
fn version_negotiation() {
    let v = |stdin: &str| {
        Invocation {
            vars: vec![("CNI_COMMAND".into(), "VERSION".into())],
        }
        .run_raw(stdin.as_bytes())
        .ok()
    };
    for ver in ["0.4.0", "1.0.0", "1.1.0"] {
        let r = v(&format!(r#"{{"cniVersion":"{ver}"}}"#));
        assert_eq!(
            r,
            json!({"cniVersion": ver, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }
    // An unknown version is answered in the newest one.
    assert_eq!(v(r#"{"cniVersion":"2.0.0"}"#)["cniVersion"], "1.1.0");
    assert_eq!(v("")["supportedVersions"][1], "1.0.0");
}

#[test]
fn status_and_gc_in_1_1_0() {
    let Some((db, _agent)) = node_with_agent("cni status_and_gc_in_1_1_0") else {
        return;
    };
    let conf = db.conf("gc", "1.1.0");
    let status = Invocation {
        vars: vec![
            ("CNI_COMMAND".into(), "STATUS".into()),
            ("CNI_PATH".into(), CNI_PLUGINS.into()),
        ],
    };
    assert_eq!(status.run(&conf).ok(), Value::Null);
    let mut far = conf.clone();
    far["nestdb"] = json!(format!("unix:{}/absent.sock", db.dir.path().display()));
    assert_eq!(status.run(&far).code(), 50);
    assert_eq!(
        status.run(&db.conf("gc", "1.0.0")).code(),
        1,
        "STATUS is a 1.1.0 command"
    );
    // Two attachments; GC keeps the valid one only.
    let (a, b) = (
        Pod::new(&db, "gca", "gc", "1.1.0"),
        Pod::new(&db, "gcb", "gc", "1.1.0"),
    );
    let (ra, rb) = (a.add(&db), b.add(&db));
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": a.id, "ifname": "eth0"}]);
    let gc_run = Invocation {
        vars: vec![
            ("CNI_COMMAND".into(), "GC".into()),
            ("CNI_PATH".into(), CNI_PLUGINS.into()),
        ],
    };
    gc_run.run(&gc).ok();
    assert_detached(&db, "gc", &b.id, &addr_of(&rb));
    a.cmd("CHECK").run(&with_prev(&conf, &ra)).ok();
    a.del(&db, &ra);
}

#[test]
fn the_pod_mtu_overhead_is_the_datapaths() {
    use sluice_datapath::tunnel::geneve::MAX_EMITTED_OPTION;
    use sluice_datapath::tunnel::OVERHEAD_IPV4;
    assert_eq!(sluice_control::cni::GENEVE_OVERHEAD_IPV4, OVERHEAD_IPV4);
    assert_eq!(sluice_control::cni::MAX_GENEVE_OPTION, MAX_EMITTED_OPTION);
    let t = sluice_datapath::tunnel::TunnelConfig::default();
    assert_eq!(
        t.uplink_mtu - sluice_control::cni::POD_MTU_OVERHEAD,
        t.pod_mtu()
    );
}

#[test]
fn the_deploy_conflist_is_accepted() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni/10-sluice.conflist");
    let text = std::fs::read(&path).unwrap();
    let conf = sluice_control::cni::spec::parse_conf(&text, "/elsewhere.sock").unwrap();
    assert_eq!((conf.name.as_str(), conf.version), ("sluice", "1.0.0"));
    assert_eq!(
        conf.nestdb,
        format!("unix:{}", sluice_api::paths::NESTDB_SOCK)
    );
    assert_eq!(conf.ipam.unwrap()["type"], "host-local");
    // sluice-bootstrap installs the same configuration when given none.
    let template: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let built_in: serde_json::Value =
        serde_json::from_str(sluice_control::bootstrap::install::DEFAULT_CONFLIST).unwrap();
    assert_eq!(template, built_in);
}

#[test]
fn a_failed_veth_rolls_back_the_lease() {
    let Some((db, _agent)) = node_with_agent("cni a_failed_veth_rolls_back_the_lease") else {
        return;
    };
    let pod = Pod::new(&db, "taken", "tk", "1.0.0");
    // Something else already holds eth0 in the namespace: the veth cannot
    // be created there.
    sluice_testkit::sh(&[
        "ip",
        "-n",
        &pod.ns.name,
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "other0",
    ]);
    let r = pod.cmd("ADD").run(&pod.conf);
    assert_eq!(r.code(), 5, "{}", r.stdout);
    r.assert_says("msg", "veth");
    assert!(
        db.leases("tk").is_empty(),
        "lease kept: {:?}",
        db.leases("tk")
    );
    assert!(db.ports().is_empty());
    assert!(host_link(&host_interface_name(&port_name(&pod.id))).is_none());
    // The runtime's DEL after the failed ADD leaves that eth0 alone too.
    pod.cmd("DEL").run(&pod.conf).ok();
    // The namespace's own eth0 is untouched (still paired with other0).
    assert_eq!(
        pod.ns.ip_json(&["link", "show", "dev", "eth0"])[0]["link"],
        "other0"
    );
}

#[test]
fn a_node_with_two_pod_cidrs_gives_a_pod_one_address() {
    use nestdb_client::node::{NodeConfig, DB};
    use nestdb_client::{row, Datum, TableRow, Transaction};
    if !ready("cni a_node_with_two_pod_cidrs_gives_a_pod_one_address") {
        return;
    }
    let db = Nestdb::start(true);
    db.client()
        .transact(&Transaction::new(DB).update(
            NodeConfig::TABLE,
            vec![],
            row([("pod_cidrs", Datum::set(["10.250.0.0/24", "10.251.0.0/24"]))]),
        ))
        .unwrap();
    let _agent = Agent::start(&db);
    let pod = Pod::new(&db, "two", "two", "1.0.0");
    let r = pod.cmd("ADD").run(&pod.conf).ok();
    assert_eq!(r["ips"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(db.port(&port_name(&pod.id)).unwrap().ips.len(), 1);
    assert_eq!(db.leases("two").len(), 1);
    pod.del(&db, &r);
}
