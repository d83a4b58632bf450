//! The CNI protocol as the plugin sees it (CNI spec 1.0.0, with 0.4.0 and
//! 1.1.0 accepted): the versions, the `CNI_*` environment, the network
//! configuration read from stdin, the error object and the result JSON.
//!
//! Invariants: an [`Env`] and a [`NetConf`] only exist when the variables the command
//! needs are present and well formed and the configuration's `cniVersion`
//! is one of [`SUPPORTED`]; every failure is a [`CniError`] carrying one of
//! the spec's well-known codes (or a plugin-specific code ≥ 100), rendered
//! as the spec's error object. Results are rendered in the configuration's
//! own version (0.4.0 adds `version` to each IP, 1.1.0 adds the MTU to the
//! container's interface).
//!
//! Thread-safety: plain values.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Map, Value};

/// The versions this plugin speaks, oldest first.
pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The version used for errors when the configuration names none we know.
pub const DEFAULT_VERSION: &str = "1.0.0";

/// The spec's well-known error codes and this plugin's own (≥ 100).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (a transient condition: nestdb down, agent late).
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin is not available.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available because of limited resources.
    pub const LIMITED_RESOURCES: u32 = 51;
    /// ADD for a (container, interface) that is already attached.
    pub const ALREADY_ATTACHED: u32 = 100;
    /// CHECK found the attachment different from `prevResult`.
    pub const CHECK_FAILED: u32 = 101;
}

/// A failure, as the spec's error object: `code`, `msg`, `details`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    /// One of [`code`]'s codes, or a delegated plugin's code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// What exactly went wrong and what to do about it.
    pub details: String,
}

impl CniError {
    /// An error with its code, message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object, in `version`.
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// The CNI operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify an attachment.
    Check,
    /// Report the supported versions.
    Version,
    /// Is the plugin ready to ADD (1.1.0).
    Status,
    /// Remove what is not in the valid attachments (1.1.0).
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `CNI_*` variables of one invocation, checked for the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION, STATUS, GC).
    pub container_id: String,
    /// `CNI_NETNS` (optional for DEL).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (empty for VERSION, STATUS, GC).
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`, split.
    pub path: Vec<String>,
}

fn missing(var: &str, command: Command) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        format!("{var} is not set"),
        format!("the runtime must set {var} for {command}; this plugin is meant to be run by a container runtime (see the CNI spec)"),
    )
}

/// Reads and checks the `CNI_*` variables through `get`.
pub fn read_env(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let get = |k: &str| get(k).filter(|v| !v.is_empty());
    let raw = get("CNI_COMMAND").ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "set CNI_COMMAND to ADD, DEL, CHECK, VERSION, STATUS or GC; this plugin is meant to be run by a container runtime",
        )
    })?;
    let command = Command::parse(&raw).ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {raw:?}"),
            "CNI_COMMAND must be ADD, DEL, CHECK, VERSION, STATUS or GC",
        )
    })?;
    let attach = matches!(command, Command::Add | Command::Del | Command::Check);
    let mut env = Env {
        command,
        container_id: String::new(),
        netns: get("CNI_NETNS"),
        ifname: String::new(),
        args: BTreeMap::new(),
        path: get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    };
    if attach {
        let id = get("CNI_CONTAINERID").ok_or_else(|| missing("CNI_CONTAINERID", command))?;
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_CONTAINERID {id:?} is not a valid container ID"),
                "a container ID holds only letters, digits, '_', '.' and '-'",
            ));
        }
        env.container_id = id;
        let ifname = get("CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME", command))?;
        if ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME {ifname:?} is not a valid interface name"),
                "an interface name has 1 to 15 characters, none of them '/', ':' or a space",
            ));
        }
        env.ifname = ifname;
        if command != Command::Del && env.netns.is_none() {
            return Err(missing("CNI_NETNS", command));
        }
        if env.path.is_empty() {
            return Err(missing("CNI_PATH", command));
        }
    }
    if let Some(args) = get("CNI_ARGS") {
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS holds {pair:?}, which is not KEY=VALUE"),
                    "CNI_ARGS is a ';'-separated list of KEY=VALUE pairs",
                )
            })?;
            env.args.insert(k.to_string(), v.to_string());
        }
    }
    Ok(env)
}

/// `cniVersion` of a configuration, checked against [`SUPPORTED`].
pub fn check_version(v: &str) -> Result<&'static str, CniError> {
    SUPPORTED.iter().copied().find(|s| *s == v).ok_or_else(|| {
        CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "the configuration's cniVersion is {v:?}; this plugin supports {}",
                SUPPORTED.join(", ")
            ),
        )
    })
}

/// Orders two `X.Y.Z` versions.
pub fn version_key(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// This plugin's own settings, read from its network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The configuration as received (with `name`/`cniVersion` filled in
    /// when it came as a conflist): what IPAM is given.
    pub raw: Map<String, Value>,
    /// `cniVersion`, one of [`SUPPORTED`].
    pub version: &'static str,
    /// `name`.
    pub name: String,
    /// The nestdb remote (`nestdb`), `unix:PATH` or `tcp:HOST:PORT`.
    pub nestdb: String,
    /// How long ADD waits for the agent to set `up` (`portUpTimeoutMs`, or
    /// `portUpTimeoutSeconds`).
    pub up_timeout_ms: u64,
    /// An MTU forced by the configuration (`mtu`), else derived from
    /// `Node_Config.mtu`.
    pub mtu: Option<u16>,
    /// `ipam`, if given.
    pub ipam: Option<Map<String, Value>>,
    /// `dns`, copied into the result.
    pub dns: Option<Value>,
    /// `prevResult`, for CHECK, DEL and chained ADD.
    pub prev_result: Option<Value>,
}

/// Default of `portUpTimeoutMs`.
pub const DEFAULT_UP_TIMEOUT_MS: u64 = 30_000;

fn invalid(details: impl Into<String>) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        "invalid network configuration",
        details,
    )
}

/// The `cniVersion` of stdin, as well as it can be read (for the error
/// object of a configuration that fails later checks).
pub fn sniff_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// Parses the network configuration on stdin: a plugin configuration, or a
/// whole conflist (its first plugin of `type` "sluice" or "sluice-cni"
/// then takes the list's `name` and `cniVersion`).
pub fn parse_conf(stdin: &[u8], default_nestdb: &str) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "failed to decode the network configuration",
            format!("stdin is not a JSON object: {e}"),
        )
    })?;
    let Value::Object(mut raw) = v else {
        return Err(CniError::new(
            code::DECODE,
            "failed to decode the network configuration",
            "stdin is JSON but not an object",
        ));
    };
    if let Some(plugins) = raw.get("plugins").and_then(Value::as_array) {
        let mine = plugins
            .iter()
            .filter_map(Value::as_object)
            .find(|p| {
                matches!(
                    p.get("type").and_then(Value::as_str),
                    Some("sluice" | "sluice-cni")
                )
            })
            .cloned()
            .ok_or_else(|| invalid("the conflist on stdin has no plugin of type \"sluice\""))?;
        let mut p = mine;
        for k in ["name", "cniVersion"] {
            if let Some(x) = raw.get(k) {
                p.insert(k.to_string(), x.clone());
            }
        }
        raw = p;
    }
    let version = match raw.get("cniVersion") {
        Some(Value::String(s)) => check_version(s)?,
        Some(other) => return Err(invalid(format!("cniVersion is {other}, not a string"))),
        None => {
            return Err(invalid(
                "cniVersion is missing; give e.g. \"cniVersion\": \"1.0.0\"",
            ))
        }
    };
    let name = match raw.get("name").and_then(Value::as_str) {
        Some(n)
            if !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) =>
        {
            n.to_string()
        }
        Some(n) => {
            return Err(invalid(format!(
                "network name {n:?} is not valid: use letters, digits, '_', '.' and '-'"
            )))
        }
        None => return Err(invalid("name is missing: give the network a name")),
    };
    let nestdb = match raw.get("nestdb") {
        None => format!("unix:{default_nestdb}"),
        Some(Value::String(s)) if s.starts_with("unix:") || s.starts_with("tcp:") => s.clone(),
        Some(Value::String(s)) if s.starts_with('/') => format!("unix:{s}"),
        Some(other) => {
            return Err(invalid(format!(
                "nestdb is {other}; give \"unix:/PATH\", a socket path or \"tcp:HOST:PORT\""
            )))
        }
    };
    let up_timeout_ms = match (raw.get("portUpTimeoutMs"), raw.get("portUpTimeoutSeconds")) {
        (None, None) => DEFAULT_UP_TIMEOUT_MS,
        (Some(x), None) => x
            .as_u64()
            .filter(|t| (1..=3_600_000).contains(t))
            .ok_or_else(|| {
                invalid(format!(
                    "portUpTimeoutMs is {x}; give milliseconds between 1 and 3600000"
                ))
            })?,
        (None, Some(x)) => {
            x.as_u64()
                .filter(|t| (1..=3_600).contains(t))
                .ok_or_else(|| {
                    invalid(format!(
                        "portUpTimeoutSeconds is {x}; give seconds between 1 and 3600"
                    ))
                })?
                * 1000
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give portUpTimeoutMs or portUpTimeoutSeconds, not both",
            ))
        }
    };
    let mtu = match raw.get("mtu") {
        None => None,
        Some(x) => Some(
            x.as_u64()
                .filter(|m| (576..=9216).contains(m))
                .map(|m| m as u16)
                .ok_or_else(|| invalid(format!("mtu is {x}; give a number from 576 to 9216")))?,
        ),
    };
    let ipam = match raw.get("ipam") {
        None => None,
        Some(Value::Object(m)) => {
            if !m.get("type").is_some_and(Value::is_string) {
                return Err(invalid(
                    "ipam has no \"type\": name the IPAM plugin, e.g. \"host-local\"",
                ));
            }
            Some(m.clone())
        }
        Some(other) => return Err(invalid(format!("ipam is {other}, not an object"))),
    };
    Ok(NetConf {
        version,
        name,
        nestdb,
        up_timeout_ms,
        mtu,
        ipam,
        dns: raw.get("dns").cloned(),
        prev_result: raw.get("prevResult").cloned(),
        raw,
    })
}

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length (0..=32).
    pub len: u8,
}

impl Ipv4Cidr {
    /// Parses `A.B.C.D/N`.
    pub fn parse(s: &str) -> Option<Ipv4Cidr> {
        let (a, l) = s.split_once('/')?;
        let len: u8 = l.parse().ok().filter(|l| *l <= 32)?;
        Some(Ipv4Cidr {
            addr: a.parse().ok()?,
            len,
        })
    }

    /// The network's mask.
    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// True if `ip` is inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A route of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: Ipv4Cidr,
    /// Next hop, if any.
    pub gw: Option<Ipv4Addr>,
}

/// One attachment, as ADD made it (and as the result describes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The host end of the veth.
    pub host_ifname: String,
    /// Its MAC.
    pub host_mac: String,
    /// The container's interface (`CNI_IFNAME`).
    pub ifname: String,
    /// Its MAC.
    pub mac: String,
    /// Its MTU.
    pub mtu: u16,
    /// `CNI_NETNS`.
    pub sandbox: String,
    /// Its address.
    pub ip: Ipv4Cidr,
    /// The pod CIDR's gateway.
    pub gateway: Ipv4Addr,
    /// Routes in the container (the default route first).
    pub routes: Vec<Route>,
    /// DNS settings (from the configuration, else IPAM's).
    pub dns: Option<Value>,
}

impl Attachment {
    /// The result JSON in `version`.
    pub fn to_result(&self, version: &str) -> Value {
        let mut container = json!({"name": self.ifname, "mac": self.mac, "sandbox": self.sandbox});
        if version_key(version) >= (1, 1, 0) {
            container["mtu"] = json!(self.mtu);
        }
        let mut ip = json!({
            "address": self.ip.to_string(),
            "gateway": self.gateway.to_string(),
            "interface": 1,
        });
        if version_key(version) < (1, 0, 0) {
            ip["version"] = json!("4");
        }
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match r.gw {
                Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                None => json!({"dst": r.dst.to_string()}),
            })
            .collect();
        let mut out = json!({
            "cniVersion": version,
            "interfaces": [{"name": self.host_ifname, "mac": self.host_mac}, container],
            "ips": [ip],
            "routes": routes,
        });
        if let Some(d) = &self.dns {
            out["dns"] = d.clone();
        }
        out
    }
}

/// What CHECK compares: the container-side facts of a `prevResult`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrevResult {
    /// The MAC of the interface named `CNI_IFNAME`, if listed.
    pub mac: Option<String>,
    /// Addresses assigned to that interface.
    pub ips: Vec<Ipv4Cidr>,
    /// Routes.
    pub routes: Vec<Route>,
}

/// Reads the facts of `prevResult` about the container interface `ifname`.
pub fn parse_prev_result(v: &Value, ifname: &str) -> Result<PrevResult, CniError> {
    let bad = |what: String| {
        CniError::new(
            code::DECODE,
            "failed to decode prevResult",
            format!("{what}; prevResult must be the result ADD returned"),
        )
    };
    let ifaces = v
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let index = ifaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname) && i.get("sandbox").is_some()
    });
    let Some(index) = index else {
        return Err(CniError::new(
            code::CHECK_FAILED,
            "prevResult does not match the attachment",
            format!("prevResult lists no interface {ifname} inside a sandbox"),
        ));
    };
    let mac = ifaces[index]
        .get("mac")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    let mut ips = Vec::new();
    for ip in v
        .get("ips")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let addr = ip
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("an entry of ips has no address: {ip}")))?;
        if addr.contains(':') {
            continue;
        }
        let c = Ipv4Cidr::parse(addr)
            .ok_or_else(|| bad(format!("ips holds {addr:?}, not A.B.C.D/N")))?;
        let on = ip.get("interface").and_then(Value::as_u64);
        if on.is_none() || on == Some(index as u64) {
            ips.push(c);
        }
    }
    let mut routes = Vec::new();
    for r in v
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let dst = r
            .get("dst")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("a route has no dst: {r}")))?;
        if dst.contains(':') {
            continue;
        }
        let dst = Ipv4Cidr::parse(dst)
            .ok_or_else(|| bad(format!("route dst {dst:?} is not A.B.C.D/N")))?;
        let gw = match r.get("gw").and_then(Value::as_str) {
            None => None,
            Some(g) => Some(
                g.parse::<IpAddr>()
                    .ok()
                    .and_then(|g| match g {
                        IpAddr::V4(g) => Some(g),
                        IpAddr::V6(_) => None,
                    })
                    .ok_or_else(|| bad(format!("route gw {g:?} is not an IPv4 address")))?,
            ),
        };
        routes.push(Route { dst, gw });
    }
    Ok(PrevResult { mac, ips, routes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        read_env(|k| m.get(k).cloned())
    }

    #[test]
    fn env_requires_what_each_command_needs() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/a:/b"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
        ];
        let e = env(&full).unwrap();
        assert_eq!(e.path, ["/a", "/b"]);
        assert_eq!(e.args["K8S_POD_NAME"], "p");
        for drop in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_PATH",
        ] {
            let less: Vec<_> = full.iter().copied().filter(|(k, _)| *k != drop).collect();
            let err = env(&less).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{drop}");
            assert!(err.msg.contains(drop), "{err}");
        }
        // DEL may omit the namespace; VERSION needs nothing.
        let del: Vec<_> = full
            .iter()
            .map(|&(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(env(&del).unwrap().netns, None);
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "ADDX")]).unwrap_err().code,
            code::INVALID_ENV
        );
        let bad_if: Vec<_> = full
            .iter()
            .map(|&(k, v)| {
                if k == "CNI_IFNAME" {
                    (k, "eth0/x")
                } else {
                    (k, v)
                }
            })
            .collect();
        assert_eq!(env(&bad_if).unwrap_err().code, code::INVALID_ENV);
    }

    #[test]
    fn conf_versions_and_conflists() {
        for v in SUPPORTED {
            let c = parse_conf(
                format!(r#"{{"cniVersion":"{v}","name":"n","type":"sluice"}}"#).as_bytes(),
                "/s",
            )
            .unwrap();
            assert_eq!(c.version, *v);
            assert_eq!(c.nestdb, "unix:/s");
        }
        for v in ["0.3.1", "2.0.0", "1.0"] {
            let e = parse_conf(
                format!(r#"{{"cniVersion":"{v}","name":"n","type":"sluice"}}"#).as_bytes(),
                "/s",
            )
            .unwrap_err();
            assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "{v}");
        }
        let list = br#"{"cniVersion":"1.1.0","name":"pods","plugins":[{"type":"portmap"},{"type":"sluice","mtu":1400}]}"#;
        let c = parse_conf(list, "/s").unwrap();
        assert_eq!(
            (c.name.as_str(), c.version, c.mtu),
            ("pods", "1.1.0", Some(1400))
        );
        assert_eq!(parse_conf(b"{", "/s").unwrap_err().code, code::DECODE);
        assert_eq!(parse_conf(b"[]", "/s").unwrap_err().code, code::DECODE);
        let e = parse_conf(br#"{"cniVersion":"1.0.0","type":"sluice"}"#, "/s").unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = parse_conf(
            br#"{"cniVersion":"1.0.0","name":"n","type":"sluice","portUpTimeoutMs":0}"#,
            "/s",
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let secs =
            br#"{"cniVersion":"1.0.0","name":"n","type":"sluice","portUpTimeoutSeconds":45}"#;
        assert_eq!(parse_conf(secs, "/s").unwrap().up_timeout_ms, 45_000);
        let both = br#"{"cniVersion":"1.0.0","name":"n","type":"sluice","portUpTimeoutSeconds":4,"portUpTimeoutMs":4}"#;
        assert_eq!(
            parse_conf(both, "/s").unwrap_err().code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn results_follow_their_version() {
        let a = Attachment {
            host_ifname: "sl0".into(),
            host_mac: "02:00:00:00:00:01".into(),
            ifname: "eth0".into(),
            mac: "0a:58:0a:00:00:05".into(),
            mtu: 1438,
            sandbox: "/run/netns/p".into(),
            ip: Ipv4Cidr::parse("10.0.0.5/24").unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            routes: vec![Route {
                dst: Ipv4Cidr::parse("0.0.0.0/0").unwrap(),
                gw: Some("10.0.0.1".parse().unwrap()),
            }],
            dns: Some(json!({"nameservers": ["10.96.0.10"]})),
        };
        let r = a.to_result("0.4.0");
        assert_eq!(r["ips"][0]["version"], "4");
        assert!(r["interfaces"][1].get("mtu").is_none());
        let r = a.to_result("1.0.0");
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["ips"][0]["interface"], 1);
        let r = a.to_result("1.1.0");
        assert_eq!(r["interfaces"][1]["mtu"], 1438);
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
        let p = parse_prev_result(&r, "eth0").unwrap();
        assert_eq!(p.mac.as_deref(), Some("0a:58:0a:00:00:05"));
        assert_eq!(p.ips, vec![a.ip]);
        assert_eq!(p.routes, a.routes);
        assert_eq!(
            parse_prev_result(&r, "eth1").unwrap_err().code,
            code::CHECK_FAILED
        );
    }
}
