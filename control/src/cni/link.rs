//! The pod's veth pair, driven through iproute2 (`ip -j`, and `nsenter
//! --net=` for what happens inside the pod's namespace).
//!
//! Why `ip` and not a netlink crate: the plugin is a short-lived,
//! synchronous process (the netlink crates worth using, rtnetlink and
//! friends, bring a tokio runtime); moving into another network namespace
//! with `setns` inside a multi-threaded Rust process is easy to get wrong
//! (the namespace is per thread), while `ip link add ... peer ... netns
//! PATH` creates the container end directly inside the namespace and
//! `nsenter --net=PATH ip -batch -` configures it in one process, leaving
//! this process's threads in the host namespace (but the one below).
//! iproute2 is on every
//! node already (sluiced's host path drives `ip -j` the same way) and its
//! messages are what an operator would see. The cost is a handful of
//! process spawns per ADD.
//!
//! The container end's transmit checksum offload is turned off (what
//! `ethtool -K IFNAME tx off` does, here with the `SIOCETHTOOL` ioctl from
//! a short-lived thread that enters the namespace, so that ethtool, not
//! installed on every node, is not needed): sluiced reads pod frames from
//! the host end through af_packet, where an offloaded checksum is still
//! unfinished. That thread is the only one that ever leaves the host
//! namespace, and it ends right after.
//!
//! Invariants: the host end is created first, together with its peer, so a
//! failure leaves either nothing or a pair that [`delete_host`] removes
//! whole (deleting one end of a veth deletes both).
//!
//! Thread-safety: each function spawns and reaps its own processes (and
//! [`tx_checksum_off`] its own thread).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::spec::{code, CniError, Ipv4Cidr, Route};

/// What the host end and the container end look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPlan<'a> {
    /// Host end name.
    pub host: &'a str,
    /// Container end name (`CNI_IFNAME`).
    pub ifname: &'a str,
    /// `CNI_NETNS`.
    pub netns: &'a str,
    /// The container end's MAC.
    pub mac: &'a str,
    /// Both ends' MTU.
    pub mtu: u16,
    /// The container's address.
    pub ip: Ipv4Cidr,
    /// Routes in the container (the default one included).
    pub routes: &'a [Route],
}

fn io_error(what: String, out: &Output) -> CniError {
    CniError::new(
        code::IO,
        what,
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

fn run(cmd: &mut Command, input: Option<&str>) -> Result<Output, CniError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        CniError::new(
            code::IO,
            format!("could not run {:?}", cmd.get_program()),
            format!("{e}; install iproute2 and util-linux (ip, nsenter)"),
        )
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IO,
            format!("could not wait for {:?}", cmd.get_program()),
            e.to_string(),
        )
    })
}

fn in_netns(netns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={netns}")).arg("ip");
    c
}

fn absent(out: &Output) -> bool {
    let e = String::from_utf8_lossy(&out.stderr);
    e.contains("Cannot find device") || e.contains("does not exist")
}

/// Checks that `netns` is a network namespace that can be entered.
pub fn netns_exists(netns: &str) -> bool {
    std::fs::File::open(netns).is_ok()
}

/// Creates the pair with its container end in the namespace, configures
/// the container end (MAC, MTU, address, routes, up, transmit checksum
/// offload off) and brings the host end up. Returns the host end's MAC.
/// On error the pair may exist: the caller removes it with
/// [`delete_host`].
pub fn create(plan: &VethPlan<'_>) -> Result<String, CniError> {
    let mtu = plan.mtu.to_string();
    let out = run(
        Command::new("ip").args([
            "link",
            "add",
            plan.host,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            plan.ifname,
            "address",
            plan.mac,
            "mtu",
            &mtu,
            "netns",
            plan.netns,
        ]),
        None,
    )?;
    if !out.status.success() {
        return Err(io_error(
            format!(
                "could not create the veth pair {} / {}",
                plan.host, plan.ifname
            ),
            &out,
        ));
    }
    let mut batch = format!(
        "addr add {} dev {}\nlink set {} up\n",
        plan.ip, plan.ifname, plan.ifname
    );
    for r in plan.routes {
        match r.gw {
            Some(gw) => {
                batch += &format!("route add {} via {} dev {}\n", net(r.dst), gw, plan.ifname)
            }
            None => batch += &format!("route add {} dev {}\n", net(r.dst), plan.ifname),
        }
    }
    let out = run(in_netns(plan.netns).args(["-batch", "-"]), Some(&batch))?;
    if !out.status.success() {
        return Err(io_error(
            format!("could not configure {} inside {}", plan.ifname, plan.netns),
            &out,
        ));
    }
    // The datapath reads the pod's frames from the host end with an
    // af_packet socket, which sees a checksum the pod left to offload as
    // unfinished: the receiving pod would drop such TCP/UDP segments (ICMP
    // is checksummed in software and would still work). The pod computes
    // its checksums itself instead, as with other userspace datapaths.
    tx_checksum_off(plan.netns, plan.ifname)?;
    let out = run(
        Command::new("ip").args(["link", "set", plan.host, "up"]),
        None,
    )?;
    if !out.status.success() {
        return Err(io_error(format!("could not bring {} up", plan.host), &out));
    }
    link_mac(None, plan.host)?.ok_or_else(|| {
        CniError::new(
            code::IO,
            format!("{} vanished right after it was created", plan.host),
            "something else on the host deletes interfaces; try again",
        )
    })
}

/// The network address form of a route destination (`ip route` refuses
/// host bits).
fn net(c: Ipv4Cidr) -> String {
    format!("{}/{}", c.network(), c.len)
}

/// `ETHTOOL_STXCSUM` (linux/ethtool.h): set transmit checksumming.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` (linux/ethtool.h).
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns transmit checksum offload off on `ifname` inside `netns`
/// (`ethtool -K IFNAME tx off`; the segmentation offloads that need it
/// follow).
pub fn tx_checksum_off(netns: &str, ifname: &str) -> Result<(), CniError> {
    let failed = |e: std::io::Error| {
        CniError::new(
            code::IO,
            format!("could not turn checksum offload off on {ifname} inside {netns}"),
            e.to_string(),
        )
    };
    let ns = std::fs::File::open(netns).map_err(failed)?;
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(failed(std::io::Error::from_raw_os_error(
            libc::ENAMETOOLONG,
        )));
    }
    for (d, b) in name.iter_mut().zip(ifname.bytes()) {
        *d = b as libc::c_char;
    }
    let worker = std::thread::spawn(move || -> std::io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: setns(2) with a file descriptor this closure owns (`ns`
        // is open for the call); it moves only this thread, which ends
        // when the closure returns and runs nothing else.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: socket(2) has no memory preconditions.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by
        // nothing else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        // SAFETY: ifreq is plain data (a name array and a union of plain
        // fields and a pointer); all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_name = name;
        req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name, checked
        // above) and the `ethtool_value` its data points to, both alive
        // until the call returns.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    });
    match worker.join() {
        Ok(r) => r.map_err(failed),
        Err(_) => Err(failed(std::io::Error::other(
            "the namespace thread panicked",
        ))),
    }
}

/// Deletes the host end (and with it the container end). Absent is fine.
pub fn delete_host(host: &str) -> Result<(), CniError> {
    let out = run(Command::new("ip").args(["link", "del", host]), None)?;
    if out.status.success() || absent(&out) {
        Ok(())
    } else {
        Err(io_error(format!("could not delete {host}"), &out))
    }
}

/// Deletes `ifname` inside `netns`, if both exist.
pub fn delete_in_netns(netns: &str, ifname: &str) -> Result<(), CniError> {
    if !netns_exists(netns) {
        return Ok(());
    }
    let out = run(in_netns(netns).args(["link", "del", ifname]), None)?;
    if out.status.success() || absent(&out) {
        Ok(())
    } else {
        Err(io_error(
            format!("could not delete {ifname} inside {netns}"),
            &out,
        ))
    }
}

fn json_of(out: &Output, what: &str) -> Result<Value, CniError> {
    serde_json::from_slice(&out.stdout).map_err(|e| {
        CniError::new(
            code::IO,
            format!("could not read {what}"),
            format!("ip -j printed something that is not JSON: {e}"),
        )
    })
}

/// The MAC of `dev` (inside `netns` when given), `None` if it does not
/// exist.
pub fn link_mac(netns: Option<&str>, dev: &str) -> Result<Option<String>, CniError> {
    Ok(
        link(netns, dev)?
            .and_then(|l| l.get("address").and_then(Value::as_str).map(str::to_string)),
    )
}

/// `ip -j link show dev` of `dev`, `None` if it does not exist.
pub fn link(netns: Option<&str>, dev: &str) -> Result<Option<Value>, CniError> {
    let mut c = match netns {
        Some(ns) => in_netns(ns),
        None => Command::new("ip"),
    };
    let out = run(c.args(["-j", "link", "show", "dev", dev]), None)?;
    if !out.status.success() {
        if absent(&out) {
            return Ok(None);
        }
        return Err(io_error(format!("could not read link {dev}"), &out));
    }
    Ok(json_of(&out, "the link")?
        .as_array()
        .and_then(|a| a.first().cloned()))
}

/// The IPv4 addresses of `dev` inside `netns`.
pub fn addresses(netns: &str, dev: &str) -> Result<Vec<Ipv4Cidr>, CniError> {
    let out = run(
        in_netns(netns).args(["-j", "-4", "addr", "show", "dev", dev]),
        None,
    )?;
    if !out.status.success() {
        return Err(io_error(
            format!("could not read the addresses of {dev}"),
            &out,
        ));
    }
    let v = json_of(&out, "the addresses")?;
    let mut found = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for a in l
            .get("addr_info")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = a
                .get("local")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<Ipv4Addr>().ok());
            let len = a.get("prefixlen").and_then(Value::as_u64);
            if let (Some(addr), Some(len)) = (ip, len) {
                found.push(Ipv4Cidr {
                    addr,
                    len: len as u8,
                });
            }
        }
    }
    Ok(found)
}

/// The IPv4 routes through `dev` inside `netns`.
pub fn routes(netns: &str, dev: &str) -> Result<Vec<Route>, CniError> {
    let out = run(
        in_netns(netns).args(["-j", "-4", "route", "show", "dev", dev]),
        None,
    )?;
    if !out.status.success() {
        return Err(io_error(
            format!("could not read the routes of {dev}"),
            &out,
        ));
    }
    let v = json_of(&out, "the routes")?;
    let mut found = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        let dst = match r.get("dst").and_then(Value::as_str) {
            Some("default") => Ipv4Cidr {
                addr: Ipv4Addr::UNSPECIFIED,
                len: 0,
            },
            Some(d) if d.contains('/') => match Ipv4Cidr::parse(d) {
                Some(c) => c,
                None => continue,
            },
            Some(d) => match d.parse() {
                Ok(addr) => Ipv4Cidr { addr, len: 32 },
                Err(_) => continue,
            },
            None => continue,
        };
        let gw = r
            .get("gateway")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        found.push(Route { dst, gw });
    }
    Ok(found)
}

/// True if `want` is among `have` (same network and next hop).
pub fn has_route(have: &[Route], want: &Route) -> bool {
    have.iter().any(|r| {
        r.dst.network() == want.dst.network() && r.dst.len == want.dst.len && r.gw == want.gw
    })
}
