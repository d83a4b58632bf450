//! sluice-hostnet: moves the node's IPv4 addresses and routes between two
//! kernel interfaces, the uplink (`node-if`) and the host exception port
//! (the TAP that `sluiced` switches like any other port, OVS's bridge
//! internal port). `sluiced` (`datapath/src/hostpath.rs`) and
//! `sluice-bootstrap` both use it, so there is one implementation.
//!
//! A move is a [`Plan`] (the addresses, the non-kernel routes and the MAC
//! to carry) turned into an ordered list of [`Step`]s by [`move_steps`].
//! The order keeps the node reachable after every step: the destination
//! is brought up and given the addresses before the routes are replaced
//! onto it, and only then are the addresses removed from the source (the
//! kernel flushes the routes of an interface that loses its last address,
//! so routes must already be elsewhere). Routes the kernel made for an
//! address (`proto kernel`) follow the address; every other IPv4 route of
//! the main table through the source (the default route, static routes)
//! is replaced with the same destination, gateway, metric, source,
//! protocol and `onlink` flag.
//!
//! While the addresses are on the host port, the uplink's kernel
//! interface keeps carrying the frames (an af_packet uplink reads them
//! there), and the kernel would take IPv4 and ARP arriving on it too: the
//! node's address is still local to it (weak host model), so it answered
//! ARP and pings, and took TCP, once through the uplink and once through
//! the host port, and every peer saw duplicates (the two-node lab's
//! `ping` DUPs, two per crossing). So the move onto the host port ends
//! with [`Step::IsolateUplink`]: a `clsact` ingress filter on the uplink
//! drops IPv4 and ARP before the kernel's IP stack, after the packet
//! sockets (af_packet taps run first) have them; the move back starts
//! with [`Step::ReleaseUplink`], which removes exactly those filters. The
//! filter is a one-instruction classic BPF program (`ret #TC_ACT_SHOT`,
//! direct action): `cls_bpf` is the one classifier kernels without
//! `cls_matchall`/`act_gact` (this CI's) have. When `tc` cannot add it,
//! the move goes on and says so: duplicates are a nuisance, not an outage.
//! A crash leaves the filters on the uplink; the supervisor's move back
//! removes them before it puts the addresses back.
//!
//! The uplink must also stop *speaking* as the node. After the move the
//! host port carries the uplink's MAC, so two kernel interfaces send with
//! one source MAC, and any switch between them (sluiced's learning
//! switch, a Linux bridge in the tests) sends the node's frames to
//! whichever spoke last. The uplink has no IPv4 address left, but its IPv6
//! stack keeps talking (router solicitations, MLD reports, with backoff,
//! indefinitely): one of them after the node's last frame moved the
//! node's MAC to the uplink, whose isolation filter then dropped every
//! answer (an "API server" TCP connection dead until the node happened to
//! send again). So when the uplink's IPv6 is enabled but serves nothing
//! (link-local addresses only: [`Plan::silence_ipv6`], decided when the
//! plan is read and recorded with it), the isolation also disables IPv6
//! on the uplink, and the release enables it again. An uplink with a
//! global IPv6 address keeps its IPv6 (the move is IPv4-only) and the move
//! says that it may contend for the MAC.
//!
//! Every step is idempotent ([`Interfaces::run`]): adding an address or
//! replacing a route that is already there changes nothing, deleting one
//! that is already gone succeeds. So a move interrupted after any step
//! (a crash) is finished by running the same plan again, and a plan run
//! twice does nothing the second time.
//!
//! It drives `ip -j` (iproute2) rather than netlink: the work happens once
//! at start and stop, and every step can be replayed by an operator from
//! the log ([`Step`]'s `Display` is the `ip` command). Errors say which
//! command failed and how to recover by hand.
//!
//! Thread-safety: no shared state; each call runs `ip` child processes.
//! Two movers working on the same interfaces at once would interleave
//! their steps: callers run one at a time (start-up/shutdown thread, or
//! one bootstrap process).

use std::fmt;
use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The two interfaces the node's addresses move between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interfaces {
    /// The uplink's kernel interface (holds the node IP before the move).
    pub uplink_if: String,
    /// The host exception port's kernel interface (the TAP).
    pub host_if: String,
}

/// Why reading or moving the node's addresses failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostNetError {
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
    /// A `tc` command of the uplink isolation failed.
    #[error("`tc {args}` failed: {stderr}; list the uplink's filters with `tc filter show dev DEV ingress` and delete Sluice's (pref 4915 and 4916) with `tc filter del dev DEV ingress pref N`")]
    Tc {
        /// The arguments.
        args: String,
        /// Its error output.
        stderr: String,
    },
    /// `ip -j` printed something that is not the expected JSON.
    #[error(
        "cannot read the output of `ip -j {0}`: is iproute2 recent enough for JSON output (-j)?"
    )]
    Json(String),
}

/// One IPv4 address with its prefix length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addr {
    /// `a.b.c.d/len`.
    pub cidr: String,
}

/// One route moved between the interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `default` or `a.b.c.d/len`.
    pub dst: String,
    /// Gateway, if any.
    pub via: Option<String>,
    /// Metric, if any.
    pub metric: Option<u64>,
    /// Preferred source, if any.
    pub src: Option<String>,
    /// Routing protocol (`static`, `dhcp`…), if not the default `boot`.
    #[serde(default)]
    pub proto: Option<String>,
    /// The gateway is reached without a connected route (`onlink`).
    #[serde(default)]
    pub onlink: bool,
}

impl Route {
    /// The `ip` arguments that put this route on `dev`.
    fn replace_args(&self, dev: &str) -> Vec<String> {
        let mut a = strings(&["-4", "route", "replace", &self.dst]);
        if let Some(v) = &self.via {
            a.extend(strings(&["via", v]));
        }
        a.extend(strings(&["dev", dev]));
        if self.onlink {
            a.push("onlink".into());
        }
        if let Some(m) = self.metric {
            a.extend(strings(&["metric", &m.to_string()]));
        }
        if let Some(s) = &self.src {
            a.extend(strings(&["src", s]));
        }
        if let Some(p) = &self.proto {
            a.extend(strings(&["proto", p]));
        }
        a
    }

    /// The `ip` arguments that delete this route from `dev`.
    fn del_args(&self, dev: &str) -> Vec<String> {
        let mut a = strings(&["-4", "route", "del", &self.dst, "dev", dev]);
        if let Some(m) = self.metric {
            a.extend(strings(&["metric", &m.to_string()]));
        }
        a
    }

    /// Same route (destination and metric: the kernel's key in one table).
    fn same_key(&self, other: &Route) -> bool {
        self.dst == other.dst && self.metric == other.metric
    }
}

/// What a move carries: the addresses, the non-kernel routes and the MAC
/// the destination takes (the uplink's, so that neighbours' ARP caches
/// stay valid).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// IPv4 addresses.
    pub addrs: Vec<Addr>,
    /// IPv4 routes of the main table that are not `proto kernel`.
    pub routes: Vec<Route>,
    /// The MAC to give the destination, if any.
    pub mac: Option<String>,
    /// The uplink's IPv6 is enabled with link-local addresses only: it is
    /// disabled while the uplink is isolated and enabled again on release
    /// (see the module documentation).
    #[serde(default)]
    pub silence_ipv6: bool,
}

impl Plan {
    /// Adds what `other` has and `self` lacks (addresses by CIDR, routes by
    /// destination and metric); `self` wins where both have one. Used to
    /// resume an interrupted move: the addresses already moved are in the
    /// recorded plan, the ones not moved yet are still on the source.
    pub fn merge(&mut self, other: Plan) {
        for a in other.addrs {
            if !self.addrs.contains(&a) {
                self.addrs.push(a);
            }
        }
        for r in other.routes {
            if !self.routes.iter().any(|x| x.same_key(&r)) {
                self.routes.push(r);
            }
        }
        if self.mac.is_none() {
            self.mac = other.mac;
        }
        // Once silenced, the uplink reads as "IPv6 disabled": the recorded
        // decision is the one that holds.
        self.silence_ipv6 |= other.silence_ipv6;
    }

    /// True when there is nothing to move.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty() && self.routes.is_empty()
    }
}

/// One idempotent step of a move; `Display` prints it as the `ip` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Give `dev` the MAC `mac` (skipped when it has it already).
    SetMac {
        /// Interface.
        dev: String,
        /// `aa:bb:cc:dd:ee:ff`.
        mac: String,
    },
    /// Bring `dev` up.
    Up {
        /// Interface.
        dev: String,
    },
    /// Add (or keep) an address on `dev`.
    AddAddr {
        /// Interface.
        dev: String,
        /// The address.
        addr: Addr,
    },
    /// Put a route on `dev`, replacing the one with the same key.
    ReplaceRoute {
        /// Interface.
        dev: String,
        /// The route.
        route: Route,
    },
    /// Remove an address from `dev` (success when it is not there).
    DelAddr {
        /// Interface.
        dev: String,
        /// The address.
        addr: Addr,
    },
    /// Remove a route from `dev` if it is still there.
    DelRoute {
        /// Interface.
        dev: String,
        /// The route.
        route: Route,
    },
    /// Drop IPv4 and ARP at `dev`'s ingress, after packet sockets saw
    /// them (the uplink while the node's addresses are on the host port),
    /// and with `ipv6`, disable `dev`'s IPv6 so it stops sending with the
    /// node's MAC.
    IsolateUplink {
        /// Interface.
        dev: String,
        /// Also disable IPv6 on `dev` ([`Plan::silence_ipv6`]).
        ipv6: bool,
    },
    /// Remove the filters of [`Step::IsolateUplink`] (success when absent)
    /// and, with `ipv6`, enable `dev`'s IPv6 again.
    ReleaseUplink {
        /// Interface.
        dev: String,
        /// Also enable IPv6 on `dev` again ([`Plan::silence_ipv6`]).
        ipv6: bool,
    },
}

/// `/proc/sys/net/ipv6/conf/DEV/disable_ipv6` of the caller's network
/// namespace.
fn disable_ipv6_path(dev: &str) -> String {
    format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6")
}

/// The `tc filter` preferences [`Step::IsolateUplink`] uses, per protocol.
pub const ISOLATE_FILTERS: [(&str, &str); 2] = [("ip", "4915"), ("arp", "4916")];

impl Step {
    /// The `tc` commands of the isolation steps (empty for `ip` steps).
    fn tc_commands(&self) -> Vec<Vec<String>> {
        match self {
            Step::IsolateUplink { dev, .. } => {
                let mut v = vec![strings(&["qdisc", "replace", "dev", dev, "clsact"])];
                for (proto, pref) in ISOLATE_FILTERS {
                    v.push(strings(&[
                        "filter",
                        "replace",
                        "dev",
                        dev,
                        "ingress",
                        "pref",
                        pref,
                        "handle",
                        "1",
                        "protocol",
                        proto,
                        "bpf",
                        "da",
                        "bytecode",
                        "1,6 0 0 2",
                    ]));
                }
                v
            }
            Step::ReleaseUplink { dev, .. } => ISOLATE_FILTERS
                .iter()
                .map(|(_, pref)| strings(&["filter", "del", "dev", dev, "ingress", "pref", pref]))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Step {
    fn args(&self) -> Vec<String> {
        match self {
            Step::SetMac { dev, mac } => strings(&["link", "set", "dev", dev, "address", mac]),
            Step::Up { dev } => strings(&["link", "set", "dev", dev, "up"]),
            Step::AddAddr { dev, addr } => {
                strings(&["-4", "addr", "replace", &addr.cidr, "dev", dev])
            }
            Step::ReplaceRoute { dev, route } => route.replace_args(dev),
            Step::DelAddr { dev, addr } => strings(&["-4", "addr", "del", &addr.cidr, "dev", dev]),
            Step::DelRoute { dev, route } => route.del_args(dev),
            Step::IsolateUplink { .. } | Step::ReleaseUplink { .. } => Vec::new(),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tc = self.tc_commands();
        if tc.is_empty() {
            return write!(f, "ip {}", self.args().join(" "));
        }
        let quote = |a: &String| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        };
        let mut text: Vec<String> = tc
            .iter()
            .map(|c| format!("tc {}", c.iter().map(quote).collect::<Vec<_>>().join(" ")))
            .collect();
        match self {
            Step::IsolateUplink { dev, ipv6: true } => {
                text.push(format!("echo 1 > {}", disable_ipv6_path(dev)));
            }
            Step::ReleaseUplink { dev, ipv6: true } => {
                text.push(format!("echo 0 > {}", disable_ipv6_path(dev)));
            }
            _ => {}
        }
        write!(f, "{}", text.join("; "))
    }
}

/// Which way a move goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the uplink's kernel interface onto the host port: `to` takes
    /// the plan's MAC first, and the move ends by isolating the uplink
    /// `from` from the kernel's IP stack ([`Step::IsolateUplink`]).
    OntoHostPort,
    /// Back onto the uplink `to`: the move starts by releasing it
    /// ([`Step::ReleaseUplink`]); no MAC is set.
    BackToUplink,
}

/// The steps that move `plan` from `from` to `to` in `dir`, in an order
/// that keeps the node reachable after each one (see the module
/// documentation). When `from` is `None` (the source interface is gone,
/// and its addresses with it) the plan is only put on `to`.
pub fn move_steps(plan: &Plan, from: Option<&str>, to: &str, dir: Direction) -> Vec<Step> {
    let to = to.to_string();
    let mut steps = Vec::new();
    if dir == Direction::BackToUplink {
        steps.push(Step::ReleaseUplink {
            dev: to.clone(),
            ipv6: plan.silence_ipv6,
        });
    }
    if dir == Direction::OntoHostPort {
        if let Some(mac) = &plan.mac {
            steps.push(Step::SetMac {
                dev: to.clone(),
                mac: mac.clone(),
            });
        }
    }
    steps.push(Step::Up { dev: to.clone() });
    for a in &plan.addrs {
        steps.push(Step::AddAddr {
            dev: to.clone(),
            addr: a.clone(),
        });
    }
    for r in &plan.routes {
        steps.push(Step::ReplaceRoute {
            dev: to.clone(),
            route: r.clone(),
        });
    }
    if let Some(from) = from {
        for a in &plan.addrs {
            steps.push(Step::DelAddr {
                dev: from.to_string(),
                addr: a.clone(),
            });
        }
        // Routes through `from` that were not replaced or removed with its
        // addresses.
        for r in &plan.routes {
            steps.push(Step::DelRoute {
                dev: from.to_string(),
                route: r.clone(),
            });
        }
        if dir == Direction::OntoHostPort {
            steps.push(Step::IsolateUplink {
                dev: from.to_string(),
                ipv6: plan.silence_ipv6,
            });
        }
    }
    steps
}

impl Interfaces {
    /// Runs `ip ARGS`, returning its standard output.
    ///
    /// # Errors
    /// [`HostNetError::Command`] when `ip` cannot run or fails.
    pub fn ip(&self, args: &[String]) -> Result<String, HostNetError> {
        let fail = |stderr: String| HostNetError::Command {
            args: args.join(" "),
            stderr,
            uplink: self.uplink_if.clone(),
            host: self.host_if.clone(),
        };
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| fail(format!("cannot run ip (is iproute2 installed?): {e}")))?;
        if !out.status.success() {
            return Err(fail(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ip_json(&self, args: &[&str]) -> Result<Value, HostNetError> {
        let mut a = vec!["-j".to_string()];
        a.extend(strings(args));
        let out = self.ip(&a)?;
        serde_json::from_str(&out).map_err(|_| HostNetError::Json(args.join(" ")))
    }

    /// True when the kernel has an interface called `dev`.
    pub fn exists(&self, dev: &str) -> bool {
        self.ip(&strings(&["link", "show", "dev", dev])).is_ok()
    }

    /// The MAC of `dev`.
    ///
    /// # Errors
    /// [`HostNetError`] when `ip` fails or prints unexpected output.
    pub fn mac(&self, dev: &str) -> Result<Option<String>, HostNetError> {
        let v = self.ip_json(&["link", "show", "dev", dev])?;
        Ok(v.as_array()
            .and_then(|l| l.first())
            .and_then(|l| l["address"].as_str())
            .map(str::to_string))
    }

    /// The IPv4 addresses of `dev`.
    ///
    /// # Errors
    /// [`HostNetError`] when `ip` fails or prints unexpected output.
    pub fn addrs(&self, dev: &str) -> Result<Vec<Addr>, HostNetError> {
        Ok(self
            .addr_info("-4", dev)?
            .iter()
            .filter_map(|a| {
                let (local, len) = (a["local"].as_str()?, a["prefixlen"].as_u64()?);
                Some(Addr {
                    cidr: format!("{local}/{len}"),
                })
            })
            .collect())
    }

    /// The `addr_info` entries of `ip -j FAMILY addr show dev DEV`.
    fn addr_info(&self, family: &str, dev: &str) -> Result<Vec<Value>, HostNetError> {
        let v = self.ip_json(&[family, "addr", "show", "dev", dev])?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    /// The IPv4 routes of the main table through `dev` that are not
    /// `proto kernel` (those follow their address).
    ///
    /// # Errors
    /// [`HostNetError`] when `ip` fails or prints unexpected output.
    pub fn routes(&self, dev: &str) -> Result<Vec<Route>, HostNetError> {
        let v = self.ip_json(&["-4", "route", "show", "dev", dev])?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["protocol"].as_str() != Some("kernel"))
            .filter(|r| r["type"].as_str().is_none_or(|t| t == "unicast"))
            .filter_map(|r| {
                Some(Route {
                    dst: r["dst"].as_str()?.to_string(),
                    via: r["gateway"].as_str().map(str::to_string),
                    metric: r["metric"].as_u64(),
                    src: r["prefsrc"].as_str().map(str::to_string),
                    proto: r["protocol"]
                        .as_str()
                        .filter(|p| *p != "boot")
                        .map(str::to_string),
                    onlink: r["flags"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("onlink"))),
                })
            })
            .collect())
    }

    /// Whether `dev`'s IPv6 is enabled but holds no address beyond
    /// link-local ones (so disabling it while the uplink is isolated takes
    /// nothing from the node). False when the kernel has no IPv6 or it is
    /// disabled on `dev` already; an uplink with a global IPv6 address is
    /// logged, as it keeps speaking with the node's MAC.
    ///
    /// # Errors
    /// [`HostNetError`] when `ip` fails or prints unexpected output.
    pub fn ipv6_idle(&self, dev: &str) -> Result<bool, HostNetError> {
        let enabled =
            std::fs::read_to_string(disable_ipv6_path(dev)).is_ok_and(|v| v.trim() == "0");
        if !enabled {
            return Ok(false);
        }
        let global: Vec<String> = self
            .addr_info("-6", dev)?
            .iter()
            .filter(|a| a["scope"].as_str() != Some("link"))
            .filter_map(|a| a["local"].as_str().map(str::to_string))
            .collect();
        if !global.is_empty() {
            tracing::warn!(
                "{dev} keeps its IPv6 address(es) {} (only IPv4 moves): its IPv6 traffic carries the MAC the host port takes, so a switch between them may send the node's frames to {dev}",
                global.join(", ")
            );
        }
        Ok(global.is_empty())
    }

    /// What moving `dev`'s configuration elsewhere would carry: its
    /// addresses, routes and MAC, and whether its IPv6 is to be silenced
    /// while it is isolated ([`Interfaces::ipv6_idle`]).
    ///
    /// # Errors
    /// [`HostNetError`] when `ip` fails or prints unexpected output.
    pub fn read_plan(&self, dev: &str) -> Result<Plan, HostNetError> {
        Ok(Plan {
            addrs: self.addrs(dev)?,
            routes: self.routes(dev)?,
            mac: self.mac(dev)?,
            silence_ipv6: self.ipv6_idle(dev)?,
        })
    }

    /// Sets `dev`'s `disable_ipv6`. Nothing to do when `dev` or IPv6 is
    /// gone; any other failure (a read-only `/proc/sys` in a container) is
    /// logged with its consequence and the move goes on, as for the
    /// isolation filters: the node's IPv4 is in place either way.
    fn set_ipv6_disabled(&self, dev: &str, disabled: bool) {
        let path = disable_ipv6_path(dev);
        match std::fs::write(&path, if disabled { "1" } else { "0" }) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if disabled => tracing::warn!(
                "cannot disable IPv6 on {dev} ({path}: {e}): {dev} keeps sending IPv6 with the MAC {} took, so a switch between them may send the node's frames to {dev}",
                self.host_if
            ),
            Err(e) => tracing::warn!(
                "cannot enable IPv6 on {dev} again ({path}: {e}): run `sysctl -w net.ipv6.conf.{}.disable_ipv6=0`",
                dev.replace('.', "/")
            ),
        }
    }

    /// Runs `tc ARGS`.
    fn tc(&self, args: &[String]) -> Result<String, HostNetError> {
        let out = Command::new("tc").args(args).output();
        let fail = |stderr: String| HostNetError::Tc {
            args: args.join(" "),
            stderr,
        };
        match out {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
            Ok(o) => Err(fail(String::from_utf8_lossy(&o.stderr).trim().to_string())),
            Err(e) => Err(fail(format!("cannot run tc: {e}"))),
        }
    }

    /// Whether `dev` carries a filter of [`Step::IsolateUplink`].
    pub fn isolated(&self, dev: &str) -> bool {
        self.tc(&strings(&["filter", "show", "dev", dev, "ingress"]))
            .is_ok_and(|t| {
                ISOLATE_FILTERS
                    .iter()
                    .any(|(_, pref)| t.contains(&format!("pref {pref} bpf")))
            })
    }

    /// Runs one step; idempotent (see [`Step`]).
    ///
    /// # Errors
    /// [`HostNetError`] naming the failed command.
    pub fn run(&self, step: &Step) -> Result<(), HostNetError> {
        match step {
            Step::SetMac { dev, mac } => {
                if self.mac(dev)?.as_deref() == Some(mac.as_str()) {
                    return Ok(());
                }
                if self.ip(&step.args()).is_ok() {
                    return Ok(());
                }
                // Some drivers refuse a new MAC while the link is up.
                self.ip(&strings(&["link", "set", "dev", dev, "down"]))?;
                let set = self.ip(&step.args());
                self.ip(&strings(&["link", "set", "dev", dev, "up"]))?;
                set.map(|_| ())
            }
            Step::DelAddr { dev, addr } => match self.ip(&step.args()) {
                Ok(_) => Ok(()),
                // Already gone (or the interface with it): done.
                Err(_) if !self.exists(dev) || !self.addrs(dev)?.contains(addr) => Ok(()),
                Err(e) => Err(e),
            },
            Step::IsolateUplink { dev, ipv6 } => {
                if *ipv6 {
                    self.set_ipv6_disabled(dev, true);
                }
                for c in step.tc_commands() {
                    if let Err(e) = self.tc(&c) {
                        tracing::warn!(
                            "cannot isolate {dev} from the kernel's IP stack ({e}): the kernel still takes IPv4 and ARP arriving on {dev}, so peers may see duplicate answers while the node's addresses are on {}",
                            self.host_if
                        );
                        return Ok(());
                    }
                }
                Ok(())
            }
            Step::ReleaseUplink { dev, ipv6 } => {
                for c in step.tc_commands() {
                    // Absent (never added, or already removed): done.
                    if let Err(e) = self.tc(&c) {
                        if self.isolated(dev) {
                            return Err(e);
                        }
                    }
                }
                if *ipv6 {
                    self.set_ipv6_disabled(dev, false);
                }
                Ok(())
            }
            Step::DelRoute { .. } => {
                // Usually already gone: replaced onto the other interface,
                // or flushed with the last address.
                let _ = self.ip(&step.args());
                Ok(())
            }
            _ => self.ip(&step.args()).map(|_| ()),
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> Route {
        Route {
            dst: "default".into(),
            via: Some("192.0.2.1".into()),
            metric: Some(100),
            src: Some("192.0.2.5".into()),
            proto: None,
            onlink: false,
        }
    }

    #[test]
    fn route_arguments_keep_gateway_metric_and_source() {
        assert_eq!(
            route().replace_args("host0").join(" "),
            "-4 route replace default via 192.0.2.1 dev host0 metric 100 src 192.0.2.5"
        );
        let r = Route {
            proto: Some("dhcp".into()),
            onlink: true,
            ..route()
        };
        assert_eq!(
            r.replace_args("host0").join(" "),
            "-4 route replace default via 192.0.2.1 dev host0 onlink metric 100 src 192.0.2.5 proto dhcp"
        );
        assert_eq!(
            r.del_args("eth1").join(" "),
            "-4 route del default dev eth1 metric 100"
        );
    }

    #[test]
    fn steps_add_before_they_remove() {
        let plan = Plan {
            addrs: vec![Addr {
                cidr: "192.0.2.5/24".into(),
            }],
            routes: vec![route()],
            mac: Some("02:00:00:00:00:01".into()),
            silence_ipv6: false,
        };
        let text: Vec<String> = move_steps(&plan, Some("eth1"), "host0", Direction::OntoHostPort)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            text,
            [
                "ip link set dev host0 address 02:00:00:00:00:01",
                "ip link set dev host0 up",
                "ip -4 addr replace 192.0.2.5/24 dev host0",
                "ip -4 route replace default via 192.0.2.1 dev host0 metric 100 src 192.0.2.5",
                "ip -4 addr del 192.0.2.5/24 dev eth1",
                "ip -4 route del default dev eth1 metric 100",
                "tc qdisc replace dev eth1 clsact; \
                 tc filter replace dev eth1 ingress pref 4915 handle 1 protocol ip bpf da bytecode '1,6 0 0 2'; \
                 tc filter replace dev eth1 ingress pref 4916 handle 1 protocol arp bpf da bytecode '1,6 0 0 2'",
            ]
        );
        // Back, without touching the MAC; without a source, only the adds.
        let back = move_steps(&plan, Some("host0"), "eth1", Direction::BackToUplink);
        assert!(!back.iter().any(|s| matches!(s, Step::SetMac { .. })));
        // The uplink is released first, and never isolated on the way back.
        assert_eq!(
            back[0].to_string(),
            "tc filter del dev eth1 ingress pref 4915; tc filter del dev eth1 ingress pref 4916"
        );
        assert!(!back.iter().any(|s| matches!(s, Step::IsolateUplink { .. })));
        let restore = move_steps(&plan, None, "eth1", Direction::BackToUplink);
        assert_eq!(restore.len(), 4);
        assert!(restore
            .iter()
            .all(|s| !matches!(s, Step::DelAddr { .. } | Step::DelRoute { .. })));
    }

    #[test]
    fn an_idle_ipv6_uplink_is_silenced_while_isolated_and_enabled_again_on_release() {
        let plan = Plan {
            addrs: vec![Addr {
                cidr: "192.0.2.5/24".into(),
            }],
            silence_ipv6: true,
            ..Plan::default()
        };
        let onto = move_steps(&plan, Some("eth1"), "host0", Direction::OntoHostPort);
        let isolate = onto.last().unwrap().to_string();
        assert!(
            isolate.ends_with("; echo 1 > /proc/sys/net/ipv6/conf/eth1/disable_ipv6"),
            "{isolate}"
        );
        let back = move_steps(&plan, Some("host0"), "eth1", Direction::BackToUplink);
        let release = back[0].to_string();
        assert!(
            release.ends_with("; echo 0 > /proc/sys/net/ipv6/conf/eth1/disable_ipv6"),
            "{release}"
        );
        // The same number of steps either way: the IPv6 part belongs to
        // the isolation.
        let loud = Plan {
            silence_ipv6: false,
            ..plan.clone()
        };
        assert_eq!(
            move_steps(&loud, Some("eth1"), "host0", Direction::OntoHostPort).len(),
            onto.len()
        );
        assert!(
            !move_steps(&loud, Some("eth1"), "host0", Direction::OntoHostPort)
                .last()
                .unwrap()
                .to_string()
                .contains("disable_ipv6")
        );
    }

    #[test]
    fn merge_keeps_recorded_items_and_adds_new_ones() {
        let a = |c: &str| Addr { cidr: c.into() };
        let mut recorded = Plan {
            addrs: vec![a("192.0.2.5/24")],
            routes: vec![route()],
            mac: Some("02:00:00:00:00:01".into()),
            silence_ipv6: true,
        };
        let current = Plan {
            addrs: vec![a("192.0.2.5/24"), a("198.51.100.7/24")],
            routes: vec![
                Route {
                    src: None,
                    ..route()
                },
                Route {
                    dst: "203.0.113.0/24".into(),
                    ..route()
                },
            ],
            mac: Some("02:00:00:00:00:99".into()),
            // The uplink read after its IPv6 was silenced.
            silence_ipv6: false,
        };
        recorded.merge(current);
        assert!(recorded.silence_ipv6, "the recorded decision holds");
        assert_eq!(recorded.addrs, [a("192.0.2.5/24"), a("198.51.100.7/24")]);
        assert_eq!(recorded.routes.len(), 2);
        assert_eq!(recorded.routes[0], route(), "the recorded route wins");
        assert_eq!(recorded.mac.as_deref(), Some("02:00:00:00:00:01"));
    }

    #[test]
    fn errors_say_how_to_recover() {
        let e = HostNetError::Command {
            args: "addr del".into(),
            stderr: "no such device".into(),
            uplink: "eth1".into(),
            host: "host0".into(),
        };
        let t = e.to_string();
        assert!(t.contains("eth1") && t.contains("host0") && t.contains("move them back"));
    }
}
