//! Delegated IPAM: runs the configured IPAM plugin exactly as the CNI spec
//! says a plugin runs a delegate: the executable named by `ipam.type`,
//! found in `CNI_PATH`; the network configuration on stdin; this
//! invocation's environment with `CNI_COMMAND` set to the delegated
//! command; its result (or error object) on stdout.
//!
//! When the configuration's `cniVersion` is newer than the delegate speaks
//! (Debian 12's host-local stops at 1.0.0), the delegate is asked in the
//! newest version both support; IPAM results did not change between 1.0.0
//! and 1.1.0. A delegate's error object is passed on with its own code.
//!
//! Thread-safety: each call spawns and reaps one process.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command as Process, Stdio};

use serde_json::{Map, Value};

use super::spec::{code, version_key, CniError, Env, Ipv4Cidr, Route};

/// What an IPAM ADD gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The first IPv4 address.
    pub ip: Ipv4Cidr,
    /// Its gateway, if the delegate gave one.
    pub gateway: Option<Ipv4Addr>,
    /// Routes the delegate asks for.
    pub routes: Vec<Route>,
    /// Its DNS settings.
    pub dns: Option<Value>,
}

/// The delegate of one network configuration.
#[derive(Debug, Clone)]
pub struct Ipam {
    plugin: String,
    path: Vec<String>,
    conf: Map<String, Value>,
}

impl Ipam {
    /// The delegate named by `conf["ipam"]["type"]`, looked up in `path`.
    pub fn new(conf: Map<String, Value>, path: &[String]) -> Result<Ipam, CniError> {
        let plugin = conf
            .get("ipam")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if plugin.is_empty() || plugin.contains('/') {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "invalid network configuration",
                format!("ipam.type {plugin:?} is not a plugin name"),
            ));
        }
        Ok(Ipam {
            plugin,
            path: path.to_vec(),
            conf,
        })
    }

    /// The delegate's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    fn find(&self) -> Result<PathBuf, CniError> {
        self.path
            .iter()
            .map(|d| PathBuf::from(d).join(&self.plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!("IPAM plugin {:?} not found", self.plugin),
                    format!(
                        "no executable {:?} in CNI_PATH ({}); install it (host-local is in Debian's containernetworking-plugins, /usr/lib/cni) or fix ipam.type",
                        self.plugin,
                        self.path.join(":")
                    ),
                )
            })
    }

    /// Runs the delegate with `command`, the configuration in `version`
    /// on stdin. Returns its stdout (empty for DEL/CHECK/GC/STATUS).
    fn exec(
        &self,
        env: &Env,
        command: &str,
        version: &str,
        extra: &[(&str, Value)],
    ) -> Result<Value, CniError> {
        let exe = self.find()?;
        let mut conf = self.conf.clone();
        conf.insert("cniVersion".into(), Value::String(version.into()));
        for (k, v) in extra {
            conf.insert((*k).into(), v.clone());
        }
        let input = serde_json::to_vec(&Value::Object(conf)).unwrap_or_default();
        let mut p = Process::new(&exe);
        p.env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !env.container_id.is_empty() {
            p.env("CNI_CONTAINERID", &env.container_id)
                .env("CNI_IFNAME", &env.ifname);
        }
        if let Some(ns) = &env.netns {
            p.env("CNI_NETNS", ns);
        }
        p.env("CNI_PATH", env.path.join(":"));
        let io = |e: std::io::Error| {
            CniError::new(
                code::IO,
                format!("could not run IPAM plugin {}", exe.display()),
                e.to_string(),
            )
        };
        let mut child = p.spawn().map_err(io)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A delegate that exits without reading stdin is judged by its
            // exit status below.
            let _ = stdin.write_all(&input);
        }
        let out = child.wait_with_output().map_err(io)?;
        let stdout: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).map_err(|e| {
                CniError::new(
                    code::DECODE,
                    format!(
                        "IPAM plugin {} answered {command} with something that is not JSON",
                        self.plugin
                    ),
                    format!(
                        "{e}; stderr: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                )
            })?
        };
        if !out.status.success() {
            let c = stdout
                .get("code")
                .and_then(Value::as_u64)
                .unwrap_or(u64::from(code::IO));
            let msg = stdout
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("failed");
            let details = stdout.get("details").and_then(Value::as_str).unwrap_or("");
            return Err(CniError::new(
                c as u32,
                format!("IPAM plugin {} failed {command}: {msg}", self.plugin),
                format!(
                    "{details}{}{}",
                    if details.is_empty() { "" } else { "; " },
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(stdout)
    }

    /// The version to speak to the delegate: `want` if it supports it,
    /// else the newest it supports below `want`.
    pub fn negotiate(&self, env: &Env, want: &str) -> Result<String, CniError> {
        if want != "1.1.0" {
            // Every version below 1.1.0 this plugin accepts is spoken by
            // every reference IPAM plugin still in use.
            return Ok(want.into());
        }
        let v = self.exec(env, "VERSION", want, &[])?;
        let supported: Vec<String> = v
            .get("supportedVersions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        if supported.iter().any(|s| s == want) {
            return Ok(want.into());
        }
        supported
            .into_iter()
            .filter(|s| version_key(s) <= version_key(want) && version_key(s) >= (0, 4, 0))
            .max_by_key(|s| version_key(s))
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "IPAM plugin {} speaks no version this plugin can use",
                        self.plugin
                    ),
                    format!("it supports {v}; this plugin needs 0.4.0 or newer"),
                )
            })
    }

    /// IPAM ADD: leases an address.
    pub fn add(&self, env: &Env, version: &str) -> Result<Lease, CniError> {
        let r = self.exec(env, "ADD", version, &[])?;
        parse_lease(&r).map_err(|d| {
            CniError::new(
                code::DECODE,
                format!("IPAM plugin {} returned an unusable result", self.plugin),
                format!("{d}; it returned {r}"),
            )
        })
    }

    /// IPAM DEL: releases the lease of `env`'s container and interface.
    pub fn del(&self, env: &Env, version: &str) -> Result<(), CniError> {
        self.exec(env, "DEL", version, &[]).map(|_| ())
    }

    /// IPAM CHECK against `prev`.
    pub fn check(&self, env: &Env, version: &str, prev: &Value) -> Result<(), CniError> {
        self.exec(env, "CHECK", version, &[("prevResult", prev.clone())])
            .map(|_| ())
    }

    /// IPAM STATUS (1.1.0 delegates only).
    pub fn status(&self, env: &Env) -> Result<(), CniError> {
        self.exec(env, "STATUS", "1.1.0", &[]).map(|_| ())
    }

    /// IPAM GC with the valid attachments (1.1.0 delegates only).
    pub fn gc(&self, env: &Env, valid: &Value) -> Result<(), CniError> {
        self.exec(
            env,
            "GC",
            "1.1.0",
            &[("cni.dev/valid-attachments", valid.clone())],
        )
        .map(|_| ())
    }
}

/// The first IPv4 address of an IPAM result (0.4.0 or 1.x).
pub fn parse_lease(r: &Value) -> Result<Lease, String> {
    let ips = r
        .get("ips")
        .and_then(Value::as_array)
        .ok_or("the result has no ips")?;
    let first = ips
        .iter()
        .find(|ip| {
            ip.get("address")
                .and_then(Value::as_str)
                .is_some_and(|a| !a.contains(':'))
        })
        .ok_or("the result holds no IPv4 address (the Sluice overlay is IPv4)")?;
    let addr = first
        .get("address")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ip = Ipv4Cidr::parse(addr).ok_or_else(|| format!("address {addr:?} is not A.B.C.D/N"))?;
    let gateway = first
        .get("gateway")
        .and_then(Value::as_str)
        .and_then(|g| g.parse().ok());
    let mut routes = Vec::new();
    for rt in r
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let Some(dst) = rt.get("dst").and_then(Value::as_str) else {
            continue;
        };
        if dst.contains(':') {
            continue;
        }
        let dst =
            Ipv4Cidr::parse(dst).ok_or_else(|| format!("route dst {dst:?} is not A.B.C.D/N"))?;
        let gw = rt
            .get("gw")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        routes.push(Route { dst, gw });
    }
    Ok(Lease {
        ip,
        gateway,
        routes,
        dns: r
            .get("dns")
            .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()))
            .cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn leases_of_both_result_shapes() {
        let old = json!({"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.2/24","gateway":"10.1.0.1"}],
                         "routes":[{"dst":"10.9.0.0/16"}],"dns":{}});
        let l = parse_lease(&old).unwrap();
        assert_eq!(l.ip.to_string(), "10.1.0.2/24");
        assert_eq!(l.gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(l.routes.len(), 1);
        assert_eq!(l.dns, None);
        let v6 = json!({"ips":[{"address":"fd00::2/64"}]});
        assert!(parse_lease(&v6).unwrap_err().contains("IPv4"));
        let new = json!({"ips":[{"address":"fd00::2/64"},{"address":"10.1.0.3/24","interface":0}]});
        assert_eq!(parse_lease(&new).unwrap().ip.to_string(), "10.1.0.3/24");
    }
}
