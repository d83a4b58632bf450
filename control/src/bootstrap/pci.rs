//! The uplink NIC's PCI driver binding, for `sluice-bootstrap supervise`:
//! when sluiced ran on a NIC bound to `vfio-pci`, the node has no kernel
//! interface for that NIC while it runs, so before the node's addresses
//! can go back the NIC must go back to its kernel driver.
//!
//! Everything goes through sysfs under a root ([`Sysfs`]: `/sys` on a
//! node, `$SLUICE_SYSFS_ROOT` when set, a fake tree in tests), with the
//! kernel's documented interface (Documentation/ABI/testing/sysfs-bus-pci):
//! 1. `devices/ADDR/driver_override` is cleared (it pins the device to
//!    vfio-pci: `dpdk-devbind.py` and `driverctl` set it);
//! 2. `ADDR` is written to `devices/ADDR/driver/unbind` (vfio-pci lets go);
//! 3. `ADDR` is written to `drivers/DRIVER/bind` when the kernel driver is
//!    known (recorded in `uplink-nic.json` by a supervisor that saw the NIC
//!    on it), else to `drivers_probe` (the kernel picks the driver that
//!    matches the device's IDs, as at boot);
//! 4. the caller waits (bounded) for a network interface to appear under
//!    `devices/ADDR/net/`.
//!
//! Which NIC: the PCI address sluiced's configuration gives as the uplink
//! port's `devargs` ([`uplink_pci_from_command`]); an af_packet or TAP
//! uplink has none and nothing here runs.
//!
//! Thread-safety: none needed; one supervisor per node (the bootstrap lock).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::install::{ensure_dir, write_atomic};
use super::BootstrapError;

/// The driver DPDK needs the NIC bound to.
pub const VFIO_PCI: &str = "vfio-pci";
/// The environment variable that moves the sysfs root (tests).
pub const SYSFS_ENV: &str = "SLUICE_SYSFS_ROOT";
const RECORD: &str = "uplink-nic.json";

/// A sysfs tree: `/sys`, or a fake one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysfs {
    /// The directory holding `bus/pci`.
    pub root: PathBuf,
}

impl Sysfs {
    /// `$SLUICE_SYSFS_ROOT`, or `/sys`.
    pub fn from_env() -> Sysfs {
        Sysfs {
            root: std::env::var_os(SYSFS_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/sys")),
        }
    }

    fn device(&self, addr: &str) -> PathBuf {
        self.root.join("bus/pci/devices").join(addr)
    }

    /// The driver `addr` is bound to, if any (`None` also when the device
    /// does not exist).
    pub fn driver(&self, addr: &str) -> Option<String> {
        let link = fs::read_link(self.device(addr).join("driver")).ok()?;
        link.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// The kernel network interfaces of `addr` (empty while it is bound
    /// to vfio-pci).
    pub fn netdevs(&self, addr: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.device(addr).join("net"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn write(&self, path: &Path, text: &str) -> Result<(), BootstrapError> {
        tracing::info!("sysfs: {} > {}", text.trim_end(), path.display());
        fs::write(path, text).map_err(BootstrapError::io("write", path))
    }

    /// Gives `addr` back to its kernel driver (`driver`, or whichever the
    /// kernel matches when `None`): clears `driver_override`, unbinds it
    /// from its current driver, binds it. Returns false when it was not
    /// bound to vfio-pci (nothing done).
    ///
    /// # Errors
    /// [`BootstrapError::Io`] when a sysfs write fails (the message names
    /// the file).
    pub fn give_back(&self, addr: &str, driver: Option<&str>) -> Result<bool, BootstrapError> {
        if self.driver(addr).as_deref() != Some(VFIO_PCI) {
            return Ok(false);
        }
        let dev = self.device(addr);
        let over = dev.join("driver_override");
        if over.exists() {
            // A lone newline clears it (an empty write is refused).
            self.write(&over, "\n")?;
        }
        self.write(&dev.join("driver/unbind"), addr)?;
        match driver {
            Some(d) => self.write(
                &self.root.join("bus/pci/drivers").join(d).join("bind"),
                addr,
            )?,
            None => self.write(&self.root.join("bus/pci/drivers_probe"), addr)?,
        }
        Ok(true)
    }

    /// Waits until `addr` has a kernel network interface, at most `limit`;
    /// returns its names (empty when the time ran out).
    pub fn wait_netdev(&self, addr: &str, limit: Duration) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let v = self.netdevs(addr);
            if !v.is_empty() || t0.elapsed() >= limit {
                return v;
            }
            // The kernel creates the interface in the driver's probe, which
            // runs in the bind write; this only covers udev renames.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The kernel driver the uplink NIC was seen on, kept in the state
/// directory so that a later supervisor (the NIC on vfio-pci by then)
/// knows where to give it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicRecord {
    /// PCI address.
    pub pci: String,
    /// Its kernel driver (ixgbe, i40e, mlx5_core...).
    pub driver: String,
}

impl NicRecord {
    /// Reads the record for `pci`, if there is one (a record of another
    /// device is ignored).
    pub fn load(state_dir: &Path, pci: &str) -> Option<NicRecord> {
        let r: NicRecord = serde_json::from_slice(&fs::read(state_dir.join(RECORD)).ok()?).ok()?;
        (r.pci == pci).then_some(r)
    }

    /// Writes it (atomically).
    ///
    /// # Errors
    /// [`BootstrapError::Io`] when the state directory cannot be written.
    pub fn save(&self, state_dir: &Path) -> Result<(), BootstrapError> {
        ensure_dir(state_dir)?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| BootstrapError::Record {
            path: state_dir.join(RECORD),
            reason: e.to_string(),
        })?;
        write_atomic(&state_dir.join(RECORD), &text, 0o644)
    }
}

/// Whether `s` is a PCI address `DDDD:BB:DD.F` (or `BB:DD.F`, domain 0),
/// returned in the full form sysfs uses.
pub fn pci_address(s: &str) -> Option<String> {
    let full = if s.matches(':').count() == 1 {
        format!("0000:{s}")
    } else {
        s.to_string()
    };
    let b = full.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    (b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11]))
    .then(|| full.to_ascii_lowercase())
}

/// The uplink's PCI address from sluiced's configuration, when `command`
/// runs sluiced with `--config FILE` and the uplink port
/// (`[nsx_node_agent] ovs_uplink_port`, default `uplink`) has a PCI
/// address as its `devargs` (`0000:01:00.0` or `0000:01:00.0,opt=...`).
/// `None` for af_packet/TAP uplinks, or when the file cannot be read.
pub fn uplink_pci_from_command(command: &[String]) -> Option<String> {
    let file = command
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| command.get(i + 1))
        .cloned()
        .or_else(|| {
            command
                .iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_string))
        })?;
    let text = fs::read_to_string(file).ok()?;
    uplink_pci_from_ini(&text)
}

/// [`uplink_pci_from_command`] on the configuration's text.
pub fn uplink_pci_from_ini(text: &str) -> Option<String> {
    let mut section = String::new();
    let mut uplink = "uplink".to_string();
    let mut devargs: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim().trim_matches('\'').trim_matches('"'));
        if section == "nsx_node_agent" && k == "ovs_uplink_port" {
            uplink = v.to_string();
        }
        if let Some(port) = section.strip_prefix("port:") {
            if k == "devargs" {
                devargs.push((port.trim().to_string(), v.to_string()));
            }
        }
    }
    let (_, d) = devargs.iter().find(|(p, _)| *p == uplink)?;
    pci_address(d.split(',').next()?.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(pci_address("0000:01:00.0").as_deref(), Some("0000:01:00.0"));
        assert_eq!(pci_address("3b:00.1").as_deref(), Some("0000:3b:00.1"));
        assert_eq!(pci_address("0000:3B:00.1").as_deref(), Some("0000:3b:00.1"));
        for bad in [
            "net_af_packet0",
            "0000:01:00.8",
            "0000:01:00",
            "",
            "0000:0g:00.0",
        ] {
            assert_eq!(pci_address(bad), None, "{bad}");
        }
    }

    #[test]
    fn uplink_pci_comes_from_the_uplink_port() {
        let ini = "[nsx_node_agent]\novs_uplink_port = up\n[port:host]\ndevargs = 0000:02:00.0\n\
                   [port:up]\n; a comment\ndevargs = 0000:01:00.0,rx_vlan_offload=0\n";
        assert_eq!(uplink_pci_from_ini(ini).as_deref(), Some("0000:01:00.0"));
        let af = "[port:uplink]\ndevargs = net_af_packet0,iface=eth1\n";
        assert_eq!(uplink_pci_from_ini(af), None);
        let dflt = "[port:uplink]\ndevargs = '0000:05:00.1'\n";
        assert_eq!(uplink_pci_from_ini(dflt).as_deref(), Some("0000:05:00.1"));
    }

    /// A fake sysfs tree (plain files: no kernel reacts), to check what is
    /// written where; the supervisor's test (control/tests/bootstrap_vfio.rs)
    /// plays the kernel.
    #[test]
    fn give_back_writes_override_unbind_bind() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = Sysfs {
            root: t.path().to_path_buf(),
        };
        let a = "0000:01:00.0";
        let dev = t.path().join("bus/pci/devices").join(a);
        let drivers = t.path().join("bus/pci/drivers");
        for d in ["vfio-pci", "ixgbe"] {
            fs::create_dir_all(drivers.join(d)).expect("mkdir");
            fs::write(drivers.join(d).join("bind"), "").expect("bind");
            fs::write(drivers.join(d).join("unbind"), "").expect("unbind");
        }
        fs::create_dir_all(&dev).expect("mkdir");
        fs::write(dev.join("driver_override"), "vfio-pci\n").expect("override");
        std::os::unix::fs::symlink("../../drivers/ixgbe", dev.join("driver")).expect("link");
        // On its kernel driver: nothing to do.
        assert!(!s.give_back(a, Some("ixgbe")).expect("give back"));
        assert_eq!(
            fs::read_to_string(drivers.join("ixgbe/unbind")).unwrap(),
            ""
        );
        fs::remove_file(dev.join("driver")).unwrap();
        std::os::unix::fs::symlink("../../drivers/vfio-pci", dev.join("driver")).expect("link");
        assert_eq!(s.driver(a).as_deref(), Some(VFIO_PCI));
        assert!(s.give_back(a, Some("ixgbe")).expect("give back"));
        assert_eq!(
            fs::read_to_string(dev.join("driver_override")).unwrap(),
            "\n"
        );
        assert_eq!(
            fs::read_to_string(drivers.join("vfio-pci/unbind")).unwrap(),
            a
        );
        assert_eq!(fs::read_to_string(drivers.join("ixgbe/bind")).unwrap(), a);
        // Unknown driver: the kernel's own match.
        fs::write(t.path().join("bus/pci/drivers_probe"), "").unwrap();
        assert!(s.give_back(a, None).expect("give back"));
        assert_eq!(
            fs::read_to_string(t.path().join("bus/pci/drivers_probe")).unwrap(),
            a
        );
        assert!(s.netdevs(a).is_empty());
        assert!(s.wait_netdev(a, Duration::ZERO).is_empty());
        fs::create_dir_all(dev.join("net/eth1")).unwrap();
        assert_eq!(s.wait_netdev(a, Duration::ZERO), vec!["eth1".to_string()]);
    }
}
