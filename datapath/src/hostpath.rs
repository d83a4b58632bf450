//! The host exception path: the node's own IP traffic (kubelet, the API
//! server, SSH) reaches the kernel through an exception port, a TAP device
//! that `sluiced` switches like any other port (OVS's bridge internal
//! port).
//!
//! [`HostPath::attach`] moves the node's IPv4 addresses and routes from the
//! uplink's kernel interface onto the exception interface, and gives it the
//! uplink's MAC so that neighbours' ARP caches stay valid;
//! [`HostPath::detach`] (also run on drop) moves them back. The order keeps
//! the node reachable throughout: addresses are added on the new interface
//! before routes are replaced and before they are removed from the old
//! one, so the gap is at most the time the kernel takes to switch a route.
//! Routes the kernel made for an address (`proto kernel`) follow the
//! address; every other IPv4 route through the uplink (the default route,
//! static routes) is replaced with the same destination, gateway, metric
//! and source.
//!
//! It drives `ip -j` (iproute2) rather than netlink: the work happens once
//! at start and stop, and every step can be replayed by an operator from
//! the log. Errors say which command failed and how to undo by hand.
//!
//! Thread-safety: used by the daemon's start-up/shutdown thread only.

use std::process::Command;

use serde_json::Value;

/// Which interfaces to move the node's addresses between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathConfig {
    /// The uplink's kernel interface (holds the node IP before start).
    pub uplink_if: String,
    /// The exception port's kernel interface (the TAP).
    pub host_if: String,
}

/// Why the host path could not be set up or torn down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPathError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}; the node's addresses may be split between {uplink} and {host}: check `ip -4 addr` and `ip -4 route` and move them back by hand")]
    Command {
        /// The arguments.
        args: String,
        /// Its error output.
        stderr: String,
        /// The uplink interface.
        uplink: String,
        /// The exception interface.
        host: String,
    },
    /// `ip -j` printed something that is not the expected JSON.
    #[error(
        "cannot read the output of `ip -j {0}`: is iproute2 recent enough for JSON output (-j)?"
    )]
    Json(String),
}

/// One IPv4 address with its prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// `a.b.c.d/len`.
    pub cidr: String,
}

/// One route moved from the uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `default` or `a.b.c.d/len`.
    pub dst: String,
    /// Gateway, if any.
    pub via: Option<String>,
    /// Metric, if any.
    pub metric: Option<u64>,
    /// Preferred source, if any.
    pub src: Option<String>,
}

impl Route {
    fn args(&self, dev: &str) -> Vec<String> {
        let mut a = vec![
            "-4".into(),
            "route".into(),
            "replace".into(),
            self.dst.clone(),
        ];
        if let Some(v) = &self.via {
            a.extend(["via".into(), v.clone()]);
        }
        a.extend(["dev".into(), dev.into()]);
        if let Some(m) = self.metric {
            a.extend(["metric".into(), m.to_string()]);
        }
        if let Some(s) = &self.src {
            a.extend(["src".into(), s.clone()]);
        }
        a
    }
}

/// The node's addresses and routes, moved onto the exception port until
/// [`HostPath::detach`].
#[derive(Debug)]
pub struct HostPath {
    config: HostPathConfig,
    addrs: Vec<Addr>,
    routes: Vec<Route>,
    uplink_mac: Option<String>,
    attached: bool,
}

impl HostPath {
    fn ip(&self, args: &[String]) -> Result<String, HostPathError> {
        ip(&self.config, args)
    }

    /// Reads the IPv4 addresses and non-kernel routes of `dev`.
    ///
    /// # Errors
    /// [`HostPathError`] when `ip` fails or prints unexpected output.
    pub fn read(cfg: &HostPathConfig, dev: &str) -> Result<(Vec<Addr>, Vec<Route>), HostPathError> {
        let args: Vec<String> = ["-j", "-4", "addr", "show", "dev", dev]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = ip(cfg, &args)?;
        let v: Value =
            serde_json::from_str(&out).map_err(|_| HostPathError::Json(args.join(" ")))?;
        let mut addrs = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                if let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                    addrs.push(Addr {
                        cidr: format!("{local}/{len}"),
                    });
                }
            }
        }
        let args: Vec<String> = ["-j", "-4", "route", "show", "dev", dev]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = ip(cfg, &args)?;
        let v: Value =
            serde_json::from_str(&out).map_err(|_| HostPathError::Json(args.join(" ")))?;
        let routes = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["protocol"].as_str() != Some("kernel"))
            .filter_map(|r| {
                Some(Route {
                    dst: r["dst"].as_str()?.to_string(),
                    via: r["gateway"].as_str().map(str::to_string),
                    metric: r["metric"].as_u64(),
                    src: r["prefsrc"].as_str().map(str::to_string),
                })
            })
            .collect();
        Ok((addrs, routes))
    }

    /// Moves the uplink's IPv4 addresses, routes and MAC to the exception
    /// interface.
    ///
    /// # Errors
    /// [`HostPathError`] naming the failed step.
    pub fn attach(config: HostPathConfig) -> Result<HostPath, HostPathError> {
        let (addrs, routes) = Self::read(&config, &config.uplink_if)?;
        let uplink_mac =
            std::fs::read_to_string(format!("/sys/class/net/{}/address", config.uplink_if))
                .ok()
                .map(|s| s.trim().to_string());
        let mut hp = HostPath {
            config,
            addrs,
            routes,
            uplink_mac,
            attached: true,
        };
        let (up, host) = (hp.config.uplink_if.clone(), hp.config.host_if.clone());
        hp.switch(&up, &host, true)?;
        tracing::info!(
            uplink = %up,
            host = %host,
            "host exception path: moved {} address(es) and {} route(s) to {host}",
            hp.addrs.len(),
            hp.routes.len()
        );
        Ok(hp)
    }

    /// Moves everything from `from` to `to`, new side first.
    fn switch(&mut self, from: &str, to: &str, set_mac: bool) -> Result<(), HostPathError> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        if set_mac {
            if let Some(mac) = self.uplink_mac.clone() {
                self.ip(&s(&["link", "set", "dev", to, "address", &mac]))?;
            }
        }
        self.ip(&s(&["link", "set", "dev", to, "up"]))?;
        for a in &self.addrs {
            self.ip(&s(&["-4", "addr", "replace", &a.cidr, "dev", to]))?;
        }
        for r in &self.routes {
            self.ip(&r.args(to))?;
        }
        for a in &self.addrs {
            self.ip(&s(&["-4", "addr", "del", &a.cidr, "dev", from]))?;
        }
        // Routes through `from` that were not removed with its addresses.
        for r in &self.routes {
            let _ = ip(
                &self.config,
                &s(&["-4", "route", "del", &r.dst, "dev", from]),
            );
        }
        Ok(())
    }

    /// The addresses moved.
    pub fn addrs(&self) -> &[Addr] {
        &self.addrs
    }

    /// The routes moved.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Moves addresses and routes back to the uplink.
    ///
    /// # Errors
    /// [`HostPathError`] naming the failed step.
    pub fn detach(mut self) -> Result<(), HostPathError> {
        self.restore()
    }

    fn restore(&mut self) -> Result<(), HostPathError> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        let (up, host) = (self.config.uplink_if.clone(), self.config.host_if.clone());
        self.switch(&host, &up, false)?;
        tracing::info!(uplink = %up, "host exception path: addresses and routes back on {up}");
        Ok(())
    }
}

impl Drop for HostPath {
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            tracing::error!("{e}");
        }
    }
}

fn ip(cfg: &HostPathConfig, args: &[String]) -> Result<String, HostPathError> {
    let fail = |stderr: String| HostPathError::Command {
        args: args.join(" "),
        stderr,
        uplink: cfg.uplink_if.clone(),
        host: cfg.host_if.clone(),
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| fail(format!("cannot run ip: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel interface named by `iface=` in DPDK devargs
/// (`net_af_packet0,iface=eth1`, `net_tap0,iface=host0`).
pub fn devargs_iface(devargs: &str) -> Option<&str> {
    devargs
        .split(',')
        .find_map(|kv| kv.trim().strip_prefix("iface="))
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devargs_iface_finds_the_interface() {
        assert_eq!(devargs_iface("net_af_packet0,iface=eth1"), Some("eth1"));
        assert_eq!(
            devargs_iface("net_tap0,iface=host0,mac=fixed"),
            Some("host0")
        );
        assert_eq!(devargs_iface("net_null0"), None);
        assert_eq!(devargs_iface("net_tap0,iface="), None);
    }

    #[test]
    fn route_arguments_keep_gateway_metric_and_source() {
        let r = Route {
            dst: "default".into(),
            via: Some("192.0.2.1".into()),
            metric: Some(100),
            src: Some("192.0.2.5".into()),
        };
        assert_eq!(
            r.args("host0").join(" "),
            "-4 route replace default via 192.0.2.1 dev host0 metric 100 src 192.0.2.5"
        );
    }

    #[test]
    fn errors_say_how_to_recover() {
        let e = HostPathError::Command {
            args: "addr del".into(),
            stderr: "no such device".into(),
            uplink: "eth1".into(),
            host: "host0".into(),
        };
        let t = e.to_string();
        assert!(t.contains("eth1") && t.contains("host0") && t.contains("move them back"));
    }
}
