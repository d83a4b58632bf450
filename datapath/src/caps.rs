//! Linux capabilities: which ones `sluiced` needs, checked at start.
//!
//! The set depends on the configuration:
//!
//! | feature | capabilities | why |
//! |---|---|---|
//! | hugepages | `CAP_IPC_LOCK`, `CAP_SYS_ADMIN` | lock hugepage memory; read physical addresses from `/proc/self/pagemap` |
//! | `net_tap` port | `CAP_NET_ADMIN` | create and configure a TAP interface |
//! | `net_af_packet` port | `CAP_NET_RAW`, `CAP_NET_ADMIN` | open a packet socket; set promiscuous mode |
//! | `net_pcap` on a live `iface=` | `CAP_NET_RAW`, `CAP_NET_ADMIN` | live capture and injection |
//! | PCI device (vfio-pci) | `CAP_IPC_LOCK` | pin DMA memory |
//! | `net_ring`, `net_null`, `net_memif`, pcap files | none | |
//!
//! [`missing`] compares that set with the effective set of the process and
//! names what is missing; `sluiced` prints it in one line and exits. After
//! start-up, [`drop_all_except`] clears every other capability from the
//! effective and permitted sets.

use std::collections::BTreeMap;

use crate::config::Config;

/// A capability we may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cap {
    /// CAP_NET_ADMIN (12).
    NetAdmin,
    /// CAP_NET_RAW (13).
    NetRaw,
    /// CAP_IPC_LOCK (14).
    IpcLock,
    /// CAP_SYS_ADMIN (21).
    SysAdmin,
}

impl Cap {
    /// The capability's bit number.
    pub fn bit(self) -> u32 {
        match self {
            Cap::NetAdmin => 12,
            Cap::NetRaw => 13,
            Cap::IpcLock => 14,
            Cap::SysAdmin => 21,
        }
    }

    /// The capability's name as in capabilities(7).
    pub fn name(self) -> &'static str {
        match self {
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::NetRaw => "CAP_NET_RAW",
            Cap::IpcLock => "CAP_IPC_LOCK",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
        }
    }

    fn to_caps(self) -> caps::Capability {
        match self {
            Cap::NetAdmin => caps::Capability::CAP_NET_ADMIN,
            Cap::NetRaw => caps::Capability::CAP_NET_RAW,
            Cap::IpcLock => caps::Capability::CAP_IPC_LOCK,
            Cap::SysAdmin => caps::Capability::CAP_SYS_ADMIN,
        }
    }
}

/// The capabilities a configuration needs, each with the reasons.
pub fn required(cfg: &Config, hugepages: bool) -> BTreeMap<Cap, Vec<String>> {
    let mut need: BTreeMap<Cap, Vec<String>> = BTreeMap::new();
    let mut add = |c: Cap, why: String| need.entry(c).or_default().push(why);
    if hugepages {
        add(Cap::IpcLock, "hugepages".into());
        add(Cap::SysAdmin, "hugepages".into());
    }
    for p in &cfg.ports {
        let dev = p.devargs.split(',').next().unwrap_or_default();
        let driver = dev.trim_end_matches(|c: char| c.is_ascii_digit());
        match driver {
            "net_tap" | "net_tun" => add(Cap::NetAdmin, format!("TAP port '{}'", p.name)),
            "net_af_packet" => {
                add(Cap::NetRaw, format!("af_packet port '{}'", p.name));
                add(Cap::NetAdmin, format!("af_packet port '{}'", p.name));
            }
            "net_pcap" if p.devargs.contains("iface=") => {
                add(Cap::NetRaw, format!("live pcap port '{}'", p.name));
                add(Cap::NetAdmin, format!("live pcap port '{}'", p.name));
            }
            _ if dev.contains(':') && dev.contains('.') => {
                add(Cap::IpcLock, format!("PCI port '{}'", p.name))
            }
            _ => {}
        }
    }
    need
}

/// Why this process's capabilities cannot be read or lowered.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// `/proc/self/status` is unreadable.
    #[error("cannot read /proc/self/status: {0}")]
    Status(#[source] std::io::Error),
    /// It has no `CapEff` line.
    #[error("no CapEff line in /proc/self/status")]
    NoCapEff,
    /// Its `CapEff` is not hexadecimal.
    #[error("bad CapEff value: {0}")]
    BadCapEff(#[source] std::num::ParseIntError),
    /// The kernel refused to report a capability set.
    #[error("cannot read capabilities: {0}")]
    Read(#[source] caps::errors::CapsError),
    /// The kernel refused to lower a capability set.
    #[error("cannot drop capabilities: {0}")]
    Drop(#[source] caps::errors::CapsError),
}

/// The effective capability bits of this process, from /proc/self/status.
pub fn effective() -> Result<u64, CapsError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(CapsError::Status)?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or(CapsError::NoCapEff)?;
    u64::from_str_radix(hex.trim(), 16).map_err(CapsError::BadCapEff)
}

/// The one-line report of missing capabilities, or `None` when all are
/// present.
pub fn missing(need: &BTreeMap<Cap, Vec<String>>, effective: u64) -> Option<String> {
    let missing: Vec<String> = need
        .iter()
        .filter(|(c, _)| effective & (1u64 << c.bit()) == 0)
        .map(|(c, why)| format!("{} (for {})", c.name(), why.join(", ")))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing capabilities: {}; run as root or grant them (DaemonSet securityContext.capabilities.add)",
            missing.join(", ")
        )
    })
}

/// Clears every capability not in `keep` from the effective, permitted and
/// inheritable sets of the calling thread, so that threads spawned later
/// inherit only `keep`. Call from the main thread before spawning.
pub fn drop_all_except(keep: &[Cap]) -> Result<(), CapsError> {
    let keep: caps::CapsHashSet = keep.iter().map(|c| c.to_caps()).collect();
    for set in [caps::CapSet::Effective, caps::CapSet::Inheritable] {
        let cur = caps::read(None, set).map_err(CapsError::Read)?;
        let new: caps::CapsHashSet = cur.intersection(&keep).copied().collect();
        caps::set(None, set, &new).map_err(CapsError::Drop)?;
    }
    let cur = caps::read(None, caps::CapSet::Permitted).map_err(CapsError::Read)?;
    let new: caps::CapsHashSet = cur.intersection(&keep).copied().collect();
    caps::set(None, caps::CapSet::Permitted, &new).map_err(CapsError::Drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ports: &str) -> Config {
        Config::parse(
            &format!("[coe]\nnode_type=BAREMETAL\n[datapath]\ncores=1\n{ports}"),
            "t.ini",
        )
        .unwrap()
    }

    #[test]
    fn tap_and_af_packet_need_net_caps() {
        let c = cfg("[port:a]\ndevargs=net_tap0,iface=x\n[port:b]\ndevargs=net_af_packet1,iface=y\n[port:c]\ndevargs=net_ring0\n");
        let need = required(&c, false);
        assert_eq!(
            need.keys().copied().collect::<Vec<_>>(),
            vec![Cap::NetAdmin, Cap::NetRaw]
        );
        assert_eq!(need[&Cap::NetRaw], vec!["af_packet port 'b'"]);
        let line = missing(&need, 1 << Cap::NetAdmin.bit()).unwrap();
        assert_eq!(line, "missing capabilities: CAP_NET_RAW (for af_packet port 'b'); run as root or grant them (DaemonSet securityContext.capabilities.add)");
        assert!(missing(&need, u64::MAX).is_none());
    }

    #[test]
    fn hugepages_need_ipc_lock_and_sys_admin() {
        let c = cfg("[port:a]\ndevargs=net_null0\n");
        assert!(required(&c, false).is_empty());
        let need = required(&c, true);
        assert_eq!(
            need.keys().copied().collect::<Vec<_>>(),
            vec![Cap::IpcLock, Cap::SysAdmin]
        );
    }

    #[test]
    fn effective_set_is_readable() {
        // Whatever we run as, the value parses.
        effective().unwrap();
    }
}
