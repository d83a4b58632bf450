//! `sluice-cni`: the CNI plugin that attaches pods to the Sluice datapath
//! (CNI spec 1.0.0; 0.4.0 and 1.1.0 configurations accepted).
//!
//! [`run`] is one invocation: the `CNI_*` environment and stdin in, the
//! result or the spec's error object out, with the exit status. The steps
//! of ADD, each undone in reverse order when a later one fails, so a
//! failed ADD leaves no lease, interface or row behind:
//!
//! 1. refuse a (container, interface) whose `Logical_Port` already exists
//!    ([`spec::code::ALREADY_ATTACHED`]); read `Node_Config` (pod CIDRs,
//!    MTU);
//! 2. IPAM ADD through the delegate ([`ipam`]; host-local over the node's
//!    pod CIDRs when the configuration names none);
//! 3. the veth pair ([`link`]): host end named as the agent expects
//!    (`external_ids:host_interface`, [`host_interface_name`]), container
//!    end `CNI_IFNAME` inside `CNI_NETNS` with MAC `0a:58:` + the IPv4
//!    address, the address, a default route via the pod CIDR's gateway
//!    (its first address, as the agent's compiler places it) and the MTU;
//! 4. the `Logical_Port` row ([`db`]);
//! 5. wait until the agent sets `up` (bounded by `portUpTimeoutMs`).
//!
//! After other plugins in a list, ADD passes their `prevResult` on with its
//! own interfaces, IPs and routes appended.
//!
//! DEL deletes the row, the veth and the lease, each absent one counting
//! as done. CHECK compares the interface, its addresses and routes and the
//! row with `prevResult`, then delegates CHECK to IPAM. STATUS (1.1.0)
//! answers whether nestdb and the node's configuration are there; GC
//! (1.1.0) detaches every attachment of the network not in
//! `cni.dev/valid-attachments`.
//!
//! MTU: `Node_Config.mtu` minus [`POD_MTU_OVERHEAD`] (62), the exact
//! IPv4 Geneve overhead the datapath adds (outer IPv4 20, UDP 8, Geneve 8,
//! inner Ethernet 14) plus the largest option it emits (12), the same
//! figure as sluiced's `tunnel-mtu`. Not OVN-Kubernetes' flat 100: that
//! budget covers an IPv6 underlay and OVN's options, neither of which
//! Sluice has, and would cost every pod 38 bytes per packet. OVN-Kubernetes
//! subtracts from the smallest MTU of the cluster; here `Node_Config.mtu`
//! must be set to the smallest underlay MTU where uplinks differ (or `mtu`
//! given in the configuration).
//!
//! Thread-safety: one invocation per process; nothing is shared.

pub mod db;
pub mod ipam;
pub mod link;
pub mod spec;

use std::net::Ipv4Addr;
use std::time::Duration;

use nestdb_client::node::{LogicalPort, NodeConfig};
use serde_json::{json, Map, Value};

pub use crate::agent::compile::host_interface_name;
use db::{key, Db};
use ipam::Ipam;
use spec::{code, Attachment, CniError, Command, Env, Ipv4Cidr, NetConf, Route};

/// IPv4 Geneve overhead without options (outer IPv4 20, UDP 8, Geneve 8,
/// inner Ethernet 14), as sluiced's `OVERHEAD_IPV4`.
pub const GENEVE_OVERHEAD_IPV4: u16 = 50;
/// Largest Geneve option sluiced emits (4-byte header + 8 data bytes).
pub const MAX_GENEVE_OPTION: u16 = 12;
/// What the pod MTU leaves off `Node_Config.mtu`.
pub const POD_MTU_OVERHEAD: u16 = GENEVE_OVERHEAD_IPV4 + MAX_GENEVE_OPTION;

/// What one invocation prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The result, the version reply, the error object, or nothing.
    pub stdout: Option<Value>,
    /// 0 on success, 1 on error.
    pub exit: i32,
}

/// One invocation: the `CNI_*` variables through `get_env`, the
/// configuration on `stdin`.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let err_version = spec::sniff_version(stdin)
        .and_then(|v| spec::check_version(&v).ok())
        .unwrap_or(spec::DEFAULT_VERSION);
    match dispatch(get_env, stdin) {
        Ok(stdout) => Outcome { stdout, exit: 0 },
        Err(e) => Outcome {
            stdout: Some(e.to_json(err_version)),
            exit: 1,
        },
    }
}

fn dispatch(
    get_env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>, CniError> {
    let env = spec::read_env(get_env)?;
    if env.command == Command::Version {
        let asked = spec::sniff_version(stdin)
            .and_then(|v| spec::check_version(&v).ok())
            .unwrap_or(spec::SUPPORTED[spec::SUPPORTED.len() - 1]);
        return Ok(Some(
            json!({"cniVersion": asked, "supportedVersions": spec::SUPPORTED}),
        ));
    }
    let conf = spec::parse_conf(stdin, sluice_api::paths::NESTDB_SOCK)?;
    match env.command {
        Command::Add => add(&env, &conf)
            .map(|a| Some(chain(a.to_result(conf.version), conf.prev_result.as_ref()))),
        Command::Del => del(&env, &conf).map(|()| None),
        Command::Check => check(&env, &conf).map(|()| None),
        Command::Status => status(&env, &conf).map(|()| None),
        Command::Gc => gc(&env, &conf).map(|()| None),
        Command::Version => Ok(None),
    }
}

/// ADD's result when the plugin runs after others in a list: the spec
/// has a plugin pass `prevResult` on or change it explicitly, so the
/// earlier plugins' interfaces, IPs and routes come first and this
/// plugin's follow (its IPs' interface indices shifted accordingly); DNS
/// is this plugin's when it has one.
fn chain(mut mine: Value, prev: Option<&Value>) -> Value {
    let Some(prev) = prev else {
        return mine;
    };
    let list = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let prev_ifaces = list(prev, "interfaces");
    let shift = prev_ifaces.len() as u64;
    let mut ips = list(prev, "ips");
    for mut ip in list(&mine, "ips") {
        if let Some(i) = ip.get("interface").and_then(Value::as_u64) {
            ip["interface"] = json!(i + shift);
        }
        ips.push(ip);
    }
    let mut interfaces = prev_ifaces;
    interfaces.extend(list(&mine, "interfaces"));
    let mut routes = list(prev, "routes");
    routes.extend(list(&mine, "routes"));
    mine["interfaces"] = Value::Array(interfaces);
    mine["ips"] = Value::Array(ips);
    mine["routes"] = Value::Array(routes);
    if mine.get("dns").is_none() {
        if let Some(d) = prev.get("dns") {
            mine["dns"] = d.clone();
        }
    }
    mine
}

/// The pod CIDRs (IPv4) of the node.
fn pod_cidrs(node: &NodeConfig) -> Vec<Ipv4Cidr> {
    node.pod_cidrs
        .iter()
        .filter_map(|c| Ipv4Cidr::parse(c))
        .collect()
}

/// The IPAM delegate for `conf`: its `ipam`, with host-local's ranges
/// filled from the node's pod CIDRs when it names none; host-local over
/// those CIDRs when there is no `ipam` at all.
fn delegate(env: &Env, conf: &NetConf, node: Option<&NodeConfig>) -> Result<Ipam, CniError> {
    let mut ipam: Map<String, Value> = conf.ipam.clone().unwrap_or_else(|| {
        json!({"type": "host-local"})
            .as_object()
            .cloned()
            .unwrap_or_default()
    });
    let host_local = ipam.get("type").and_then(Value::as_str) == Some("host-local");
    if host_local && !ipam.contains_key("ranges") && !ipam.contains_key("subnet") {
        let node = node.ok_or_else(|| {
            CniError::new(
                code::TRY_AGAIN,
                "the node is not configured yet",
                "no Node_Config row gives the pod CIDRs IPAM needs",
            )
        })?;
        // One range set: host-local leases one address per set, so every
        // IPv4 pod CIDR goes in the same set and the pod gets one address.
        let ranges: Vec<Value> = pod_cidrs(node)
            .iter()
            .map(|c| json!({"subnet": format!("{}/{}", c.network(), c.len)}))
            .collect();
        if ranges.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration",
                "Node_Config.pod_cidrs holds no IPv4 prefix for host-local to lease from",
            ));
        }
        ipam.insert("ranges".into(), json!([ranges]));
    }
    let mut raw = conf.raw.clone();
    raw.insert("ipam".into(), Value::Object(ipam));
    raw.remove("prevResult");
    Ipam::new(raw, &env.path)
}

fn mac_of(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// What ADD did so far, undone in reverse order on failure.
enum Undo {
    Lease,
    Veth(String),
    Row(String),
}

/// `CNI_NETNS`, which must exist (ADD and CHECK need the container's
/// namespace).
fn existing_netns(env: &Env) -> Result<String, CniError> {
    let netns = env.netns.clone().unwrap_or_default();
    if !link::netns_exists(&netns) {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            format!("CNI_NETNS {netns} cannot be opened"),
        ));
    }
    Ok(netns)
}

fn add(env: &Env, conf: &NetConf) -> Result<Attachment, CniError> {
    existing_netns(env)?;
    let db = Db::connect(&conf.nestdb)?;
    let name = db::port_name(&env.container_id, &env.ifname);
    if db.port(&name)?.is_some() {
        return Err(CniError::new(
            code::ALREADY_ATTACHED,
            "the container is already attached",
            format!(
                "{} of container {} is already attached (Logical_Port {name}); a runtime must DEL it before adding it again",
                env.ifname, env.container_id
            ),
        ));
    }
    let node = db.node_config()?;
    let ipam = delegate(env, conf, Some(&node))?;
    let ipam_version = ipam.negotiate(env, conf.version)?;
    let mut undo = Vec::new();
    let result = attach(
        env,
        conf,
        &db,
        &node,
        &ipam,
        &ipam_version,
        &name,
        &mut undo,
    );
    if result.is_err() {
        for step in undo.iter().rev() {
            let r = match step {
                Undo::Lease => ipam.del(env, &ipam_version),
                Undo::Veth(h) => link::delete_host(h),
                Undo::Row(n) => db.delete(n),
            };
            if let Err(e) = r {
                eprintln!("sluice-cni: rolling back ADD of {name}: {e}");
            }
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn attach(
    env: &Env,
    conf: &NetConf,
    db: &Db,
    node: &NodeConfig,
    ipam: &Ipam,
    ipam_version: &str,
    name: &str,
    undo: &mut Vec<Undo>,
) -> Result<Attachment, CniError> {
    let netns = env.netns.clone().unwrap_or_default();
    // A lease counts as taken from the moment the delegate ran: its ADD
    // may have recorded the address before failing.
    undo.push(Undo::Lease);
    let lease = ipam.add(env, ipam_version)?;
    let cidr = pod_cidrs(node)
        .into_iter()
        .find(|c| c.contains(lease.ip.addr))
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "IPAM leased an address outside the node's pod CIDRs",
                format!(
                    "{} is not in Node_Config.pod_cidrs ({}); the agent would refuse the port. Give IPAM the node's pod CIDR",
                    lease.ip,
                    node.pod_cidrs.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
    let gateway = Ipv4Addr::from(u32::from(cidr.network()) + 1);
    if lease.ip.addr == gateway {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "IPAM leased the pod CIDR's gateway",
            format!(
                "{} is the gateway of {}; exclude it from the IPAM range",
                gateway, cidr
            ),
        ));
    }
    let ip = Ipv4Cidr {
        addr: lease.ip.addr,
        len: cidr.len,
    };
    let default = Ipv4Cidr {
        addr: Ipv4Addr::UNSPECIFIED,
        len: 0,
    };
    let mut routes = vec![Route {
        dst: default,
        gw: Some(gateway),
    }];
    for r in &lease.routes {
        if r.dst.len == 0 {
            continue; // The default route goes through the gateway.
        }
        let r = Route {
            dst: r.dst,
            gw: Some(r.gw.unwrap_or(gateway)),
        };
        if !routes.contains(&r) {
            routes.push(r);
        }
    }
    let mtu = conf
        .mtu
        .unwrap_or_else(|| node.mtu.saturating_sub(POD_MTU_OVERHEAD));
    let mac = mac_of(ip.addr);
    let host = host_interface_name(name);
    undo.push(Undo::Veth(host.clone()));
    let host_mac = link::create(&link::VethPlan {
        host: &host,
        ifname: &env.ifname,
        netns: &netns,
        mac: &mac,
        mtu,
        ip,
        routes: &routes,
    })?;
    let port = LogicalPort {
        name: name.to_string(),
        mac: mac.clone(),
        ips: [ip.addr.to_string()].into(),
        netns: Some(netns.clone()),
        interface_name: env.ifname.clone(),
        pod_namespace: env.args.get("K8S_POD_NAMESPACE").cloned(),
        pod_name: env.args.get("K8S_POD_NAME").cloned(),
        dp_port: None,
        up: false,
        external_ids: {
            let mut ids = db::external_ids(&conf.name, &env.container_id, &env.ifname, &host);
            if let Some(uid) = env.args.get("K8S_POD_UID") {
                ids.insert("k8s_pod_uid".into(), uid.clone());
            }
            ids
        },
    };
    undo.push(Undo::Row(name.to_string()));
    db.insert(&port)?;
    db.wait_up(name, Duration::from_millis(conf.up_timeout_ms))?;
    Ok(Attachment {
        host_ifname: host,
        host_mac,
        ifname: env.ifname.clone(),
        mac,
        mtu,
        sandbox: netns,
        ip,
        gateway,
        routes,
        dns: conf.dns.clone().or(lease.dns),
    })
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let db = Db::connect(&conf.nestdb)?;
    let name = db::port_name(&env.container_id, &env.ifname);
    let row = db.port(&name)?;
    detach(env, conf, &db, &name, row.as_ref())
}

/// Removes the row, the veth and the lease of one attachment; each absent
/// one counts as done.
fn detach(
    env: &Env,
    conf: &NetConf,
    db: &Db,
    name: &str,
    row: Option<&LogicalPort>,
) -> Result<(), CniError> {
    let host = row
        .and_then(|r| r.external_ids.get(key::HOST_INTERFACE).cloned())
        .unwrap_or_else(|| host_interface_name(name));
    db.delete(name)?;
    link::delete_host(&host)?;
    // Deleting the host end deleted the container end with it. An
    // interface of that name still in the namespace is only ours to delete
    // if it wears our MAC: after a failed ADD (say, the name was taken) the
    // runtime sends DEL, and another plugin's interface must stay.
    if let (Some(ns), Some(row)) = (&env.netns, row) {
        if link::netns_exists(ns)
            && link::link_mac(Some(ns), &env.ifname)?.as_deref() == Some(row.mac.as_str())
        {
            link::delete_in_netns(ns, &env.ifname)?;
        }
    }
    let node = match db.node_config() {
        Ok(n) => Some(n),
        Err(e) if e.code == code::TRY_AGAIN && conf.ipam.is_some() => None,
        Err(e) => return Err(e),
    };
    let ipam = delegate(env, conf, node.as_ref())?;
    let v = ipam.negotiate(env, conf.version)?;
    ipam.del(env, &v)
}

fn mismatch(details: String) -> CniError {
    CniError::new(
        code::CHECK_FAILED,
        "the attachment does not match prevResult",
        details,
    )
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev_value = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            "CHECK needs prevResult: the result ADD returned",
        )
    })?;
    let prev = spec::parse_prev_result(&prev_value, &env.ifname)?;
    let netns = existing_netns(env)?;
    let db = Db::connect(&conf.nestdb)?;
    let name = db::port_name(&env.container_id, &env.ifname);
    let row = db.port(&name)?.ok_or_else(|| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            "the container is not attached",
            format!("there is no Logical_Port {name} in nestdb"),
        )
    })?;
    // The container interface.
    let mac = link::link_mac(Some(&netns), &env.ifname)?.ok_or_else(|| {
        mismatch(format!(
            "there is no interface {} inside {netns}",
            env.ifname
        ))
    })?;
    if let Some(want) = &prev.mac {
        if *want != mac {
            return Err(mismatch(format!(
                "{} has MAC {mac}, prevResult says {want}",
                env.ifname
            )));
        }
    }
    if row.mac != mac {
        return Err(mismatch(format!(
            "Logical_Port {name} has MAC {}, the interface {mac}",
            row.mac
        )));
    }
    let have = link::addresses(&netns, &env.ifname)?;
    for ip in &prev.ips {
        if !have.contains(ip) {
            return Err(mismatch(format!(
                "{} lacks address {ip} (it has {})",
                env.ifname,
                have.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !row
            .ips
            .iter()
            .any(|r| r.split('/').next() == Some(&ip.addr.to_string()))
        {
            return Err(mismatch(format!(
                "Logical_Port {name} does not hold address {}",
                ip.addr
            )));
        }
    }
    if prev.ips.is_empty() {
        return Err(mismatch(
            "prevResult assigns no IPv4 address to the interface".into(),
        ));
    }
    let routes = link::routes(&netns, &env.ifname)?;
    for r in &prev.routes {
        if !link::has_route(&routes, r) {
            return Err(mismatch(format!(
                "route {}{} is missing inside {netns}",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }
    // The host end and the datapath port.
    let host = row
        .external_ids
        .get(key::HOST_INTERFACE)
        .cloned()
        .unwrap_or_else(|| host_interface_name(&name));
    if link::link(None, &host)?.is_none() {
        return Err(mismatch(format!(
            "the host end {host} of the veth is missing"
        )));
    }
    if !row.up {
        return Err(mismatch(format!(
            "Logical_Port {name} is not up: sluice-agent has not (re)attached it to sluiced"
        )));
    }
    let node = db.node_config().ok();
    let ipam = delegate(env, conf, node.as_ref())?;
    let v = ipam.negotiate(env, conf.version)?;
    ipam.check(env, &v, &prev_value)
}

fn need_1_1(command: Command, conf: &NetConf) -> Result<(), CniError> {
    if spec::version_key(conf.version) < (1, 1, 0) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "{command} is a CNI 1.1.0 command; the configuration says {}",
                conf.version
            ),
        ));
    }
    Ok(())
}

fn status(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    need_1_1(Command::Status, conf)?;
    let unavailable = |e: CniError| {
        CniError::new(
            code::NOT_AVAILABLE,
            "sluice-cni cannot attach pods now",
            format!("{}: {}", e.msg, e.details),
        )
    };
    let db = Db::connect(&conf.nestdb).map_err(unavailable)?;
    let node = db.node_config().map_err(unavailable)?;
    if !env.path.is_empty() {
        let ipam = delegate(env, conf, Some(&node))?;
        if ipam.negotiate(env, conf.version)? == "1.1.0" {
            ipam.status(env)?;
        }
    }
    Ok(())
}

fn gc(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    need_1_1(Command::Gc, conf)?;
    let valid_value = conf
        .raw
        .get("cni.dev/valid-attachments")
        .cloned()
        .unwrap_or(json!([]));
    let valid: Vec<(String, String)> = valid_value
        .as_array()
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration",
                "cni.dev/valid-attachments is not a list",
            )
        })?
        .iter()
        .map(|a| {
            (
                a.get("containerID")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                a.get("ifname")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let db = Db::connect(&conf.nestdb)?;
    let mut first_error = None;
    for row in db.ports_of(&conf.name)? {
        let (Some(c), Some(i)) = (
            row.external_ids.get(key::CONTAINER),
            row.external_ids.get(key::IFNAME),
        ) else {
            continue;
        };
        if valid.iter().any(|(vc, vi)| vc == c && vi == i) {
            continue;
        }
        let stale = Env {
            command: Command::Del,
            container_id: c.clone(),
            ifname: i.clone(),
            netns: None,
            args: Default::default(),
            path: env.path.clone(),
        };
        if let Err(e) = detach(&stale, conf, &db, &row.name, Some(&row)) {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if !env.path.is_empty() {
        let node = db.node_config().ok();
        let ipam = delegate(env, conf, node.as_ref())?;
        if ipam.negotiate(env, conf.version)? == "1.1.0" {
            ipam.gc(env, &valid_value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_mac_carries_the_address() {
        assert_eq!(mac_of("10.244.1.5".parse().unwrap()), "0a:58:0a:f4:01:05");
    }

    #[test]
    fn a_chained_add_passes_the_previous_result_on() {
        let mine = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "slx"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.0.0.5/24", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]});
        assert_eq!(chain(mine.clone(), None), mine);
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}], "dns": {"nameservers": ["1.1.1.1"]}});
        let c = chain(mine, Some(&prev));
        assert_eq!(c["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(
            c["ips"][1],
            json!({"address": "10.0.0.5/24", "interface": 2})
        );
        assert_eq!(c["dns"], prev["dns"]);
        let p = spec::parse_prev_result(&c, "eth0").unwrap();
        assert_eq!(p.ips, vec![Ipv4Cidr::parse("10.0.0.5/24").unwrap()]);
    }

    #[test]
    fn version_needs_no_other_variable() {
        let out = run(
            |k| (k == "CNI_COMMAND").then(|| "VERSION".to_string()),
            br#"{"cniVersion":"0.4.0"}"#,
        );
        assert_eq!(out.exit, 0);
        let v = out.stdout.unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    }
}
