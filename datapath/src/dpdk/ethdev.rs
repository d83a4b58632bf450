//! DPDK ethdev ports: any PMD, created from devargs after EAL init.
//!
//! [`Ethdev::open`] probes the device (`rte_dev_probe`: a vdev such as
//! `net_tap0,iface=x`, `net_af_packet0,iface=veth0`, `net_pcap0,rx_pcap=f`,
//! `net_ring0`, `net_null0`, `net_memif0`, or a PCI address bound to
//! vfio-pci), configures `rx_queues` rx queues and one tx queue per PMD
//! thread, starts it and enables promiscuous mode. Each PMD thread gets a
//! [`DpdkPort`] handle (a port id and a name: cheap, `Send`) and uses only
//! its own queue ids, which DPDK allows without locking.
//!
//! Scatter is off; a driver that still chains mbufs for a large frame has
//! the chain dropped and counted (`rx_multi_segment`) by the PMD right after
//! `rx_burst`, so the pipeline only ever sees single-segment mbufs.
//!
//! A port opened at run time (`port-add`) is marked with
//! [`Ethdev::detach_on_close`]: dropping it also removes the device from
//! its bus (`rte_dev_remove`, DPDK hot-unplug), so that its name (a vdev's
//! `net_af_packet_x`, `net_tap_x`) can be probed again.

use std::ffi::{CStr, CString};
use std::sync::Arc;

use thiserror::Error;

use super::mbuf::Mbuf;
use super::mempool::Mempool;
use crate::packet::BURST_SIZE;
use crate::port::{LinkState, Port, PortStats};

/// How to open one port.
#[derive(Debug, Clone)]
pub struct EthdevConfig {
    /// The port's name in Sluice (config section, dump-ports).
    pub name: String,
    /// DPDK devargs (`net_tap0,iface=sl0` or `0000:01:00.0`).
    pub devargs: String,
    /// Number of rx queues.
    pub rx_queues: u16,
    /// Number of tx queues (one per PMD thread).
    pub tx_queues: u16,
    /// Descriptors per rx queue.
    pub rx_desc: u16,
    /// Descriptors per tx queue.
    pub tx_desc: u16,
}

/// Why a port could not be opened.
#[derive(Debug, Error)]
pub enum EthdevError {
    /// The devargs contain a NUL byte.
    #[error("port '{port}': devargs {devargs:?} contain a NUL byte")]
    BadDevargs {
        /// Port name.
        port: String,
        /// The devargs.
        devargs: String,
    },
    /// The device could not be probed (unknown driver, bad arguments,
    /// missing interface, missing permission).
    #[error("port '{port}': cannot create DPDK device '{devargs}': {reason}")]
    Probe {
        /// Port name.
        port: String,
        /// The devargs.
        devargs: String,
        /// DPDK's reason.
        reason: String,
    },
    /// A DPDK call on the port failed.
    #[error("port '{port}': {what} failed: {reason}")]
    Setup {
        /// Port name.
        port: String,
        /// The failing step.
        what: &'static str,
        /// DPDK's reason.
        reason: String,
    },
    /// The device has fewer queues than needed.
    #[error(
        "port '{port}': the device supports {max} {kind} queue(s) but {wanted} are needed ({why})"
    )]
    Queues {
        /// Port name.
        port: String,
        /// "rx" or "tx".
        kind: &'static str,
        /// Device maximum.
        max: u16,
        /// Requested.
        wanted: u16,
        /// Why that many are needed.
        why: &'static str,
    },
}

fn dpdk_reason(code: i32) -> String {
    let base = super::strerror(code);
    match super::log::last_error_line() {
        Some(l) => format!("{base} ({l})"),
        None => base,
    }
}

/// An open, started DPDK port. Stopped and closed on drop.
#[derive(Debug)]
pub struct Ethdev {
    port_id: u16,
    name: Arc<str>,
    devargs: String,
    rx_queues: u16,
    tx_queues: u16,
    detach: bool,
}

impl Ethdev {
    /// Makes the drop also hot-unplug the device (see the module
    /// documentation).
    pub fn detach_on_close(&mut self) {
        self.detach = true;
    }

    /// Probes, configures and starts a port whose rx queues take mbufs
    /// from `pool`.
    pub fn open(cfg: &EthdevConfig, pool: &Mempool) -> Result<Ethdev, EthdevError> {
        let port = cfg.name.clone();
        let cdev = CString::new(cfg.devargs.as_str()).map_err(|_| EthdevError::BadDevargs {
            port: port.clone(),
            devargs: cfg.devargs.clone(),
        })?;
        // The ethdev name is the devargs' device part (before the first ',').
        let dev_name = cfg
            .devargs
            .split(',')
            .next()
            .unwrap_or_default()
            .to_string();
        let cname = CString::new(dev_name.as_str()).map_err(|_| EthdevError::BadDevargs {
            port: port.clone(),
            devargs: cfg.devargs.clone(),
        })?;
        super::log::clear_recent();
        // SAFETY: valid C string; EAL initialised (callers hold an Eal).
        let rc = unsafe { dpdk_sys::rte_dev_probe(cdev.as_ptr()) };
        if rc < 0 {
            let reason = if super::log::recent_contains("failed to parse device") {
                format!(
                    "no DPDK driver knows the device name '{dev_name}' (a typo, or the driver's package is not installed)"
                )
            } else {
                dpdk_reason(-rc)
            };
            return Err(EthdevError::Probe {
                port,
                devargs: cfg.devargs.clone(),
                reason,
            });
        }
        let mut port_id = 0u16;
        // SAFETY: valid C string and out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut port_id) };
        if rc != 0 {
            return Err(EthdevError::Probe {
                port,
                devargs: cfg.devargs.clone(),
                reason: format!(
                    "the device probed but no ethdev named '{dev_name}' appeared (is it a network device?)"
                ),
            });
        }
        Ethdev::adopt(port_id, cfg, pool)
    }

    /// Configures and starts an ethdev that already exists (created by a
    /// driver-specific call such as `rte_eth_from_rings`).
    pub(crate) fn adopt(
        port_id: u16,
        cfg: &EthdevConfig,
        pool: &Mempool,
    ) -> Result<Ethdev, EthdevError> {
        let dev = Ethdev {
            port_id,
            name: Arc::from(cfg.name.as_str()),
            devargs: cfg.devargs.clone(),
            rx_queues: cfg.rx_queues,
            tx_queues: cfg.tx_queues,
            detach: false,
        };
        dev.setup(cfg, pool)?;
        Ok(dev)
    }

    fn setup(&self, cfg: &EthdevConfig, pool: &Mempool) -> Result<(), EthdevError> {
        let fail = |what: &'static str, rc: i32| EthdevError::Setup {
            port: cfg.name.clone(),
            what,
            reason: dpdk_reason(-rc),
        };
        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: valid port id and out-pointer.
        let rc = unsafe { dpdk_sys::rte_eth_dev_info_get(self.port_id, &mut info) };
        if rc != 0 {
            return Err(fail("rte_eth_dev_info_get", rc));
        }
        if cfg.rx_queues > info.max_rx_queues {
            return Err(EthdevError::Queues {
                port: cfg.name.clone(),
                kind: "rx",
                max: info.max_rx_queues,
                wanted: cfg.rx_queues,
                why: "rx_queues in the port's configuration",
            });
        }
        if cfg.tx_queues > info.max_tx_queues {
            return Err(EthdevError::Queues {
                port: cfg.name.clone(),
                kind: "tx",
                max: info.max_tx_queues,
                wanted: cfg.tx_queues,
                why: "one per PMD core",
            });
        }
        let conf = dpdk_sys::rte_eth_conf::default();
        // SAFETY: valid port id and a zeroed (default) configuration.
        let rc = unsafe {
            dpdk_sys::rte_eth_dev_configure(self.port_id, cfg.rx_queues, cfg.tx_queues, &conf)
        };
        if rc != 0 {
            return Err(fail("rte_eth_dev_configure", rc));
        }
        // SAFETY: valid port id.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(self.port_id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        for q in 0..cfg.rx_queues {
            // SAFETY: configured port, queue index in range, valid pool;
            // NULL rx_conf selects the driver's defaults.
            let rc = unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(
                    self.port_id,
                    q,
                    cfg.rx_desc,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(fail("rx queue setup", rc));
            }
        }
        for q in 0..cfg.tx_queues {
            // SAFETY: configured port, queue index in range; NULL tx_conf
            // selects the driver's defaults.
            let rc = unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(
                    self.port_id,
                    q,
                    cfg.tx_desc,
                    socket,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(fail("tx queue setup", rc));
            }
        }
        // SAFETY: fully configured port.
        let rc = unsafe { dpdk_sys::rte_eth_dev_start(self.port_id) };
        if rc != 0 {
            return Err(fail("rte_eth_dev_start", rc));
        }
        // Some PMDs (net_null, net_ring) have no promiscuous mode: not an error.
        // SAFETY: started port.
        let _ = unsafe { dpdk_sys::rte_eth_promiscuous_enable(self.port_id) };
        Ok(())
    }

    /// A handle for a PMD thread.
    pub fn handle(&self) -> DpdkPort {
        DpdkPort {
            port_id: self.port_id,
            name: self.name.clone(),
        }
    }

    /// The DPDK port id.
    pub fn port_id(&self) -> u16 {
        self.port_id
    }

    /// The devargs the port was created from.
    pub fn devargs(&self) -> &str {
        &self.devargs
    }

    /// Configured (rx, tx) queue counts.
    pub fn queues(&self) -> (u16, u16) {
        (self.rx_queues, self.tx_queues)
    }

    /// The port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut a = dpdk_sys::rte_ether_addr::default();
        // SAFETY: valid port id and out-pointer.
        unsafe { dpdk_sys::rte_eth_macaddr_get(self.port_id, &mut a) };
        a.addr_bytes
    }

    /// The DPDK driver name (e.g. `net_tap`).
    pub fn driver(&self) -> String {
        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: valid port id and out-pointer; driver_name is a static
        // string owned by the driver.
        unsafe {
            if dpdk_sys::rte_eth_dev_info_get(self.port_id, &mut info) != 0
                || info.driver_name.is_null()
            {
                return String::new();
            }
            CStr::from_ptr(info.driver_name)
                .to_string_lossy()
                .into_owned()
        }
    }
}

impl Drop for Ethdev {
    fn drop(&mut self) {
        let mut info = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: we opened the port; no PMD uses it any more (PMD threads
        // are joined, or passed a burst boundary without it, before ports
        // are dropped). Stop releases the queues' mbufs back to the pool;
        // close frees the device (a TAP interface disappears). The
        // rte_device read before close belongs to its bus and outlives the
        // ethdev; removing it unplugs the (already closed) device.
        unsafe {
            let dev = if self.detach && dpdk_sys::rte_eth_dev_info_get(self.port_id, &mut info) == 0
            {
                info.device
            } else {
                std::ptr::null_mut()
            };
            dpdk_sys::rte_eth_dev_stop(self.port_id);
            dpdk_sys::rte_eth_dev_close(self.port_id);
            if !dev.is_null() {
                let rc = dpdk_sys::rte_dev_remove(dev);
                if rc < 0 {
                    tracing::warn!(
                        "port '{}': the device was closed but not unplugged ({}); its name cannot be reused until sluiced restarts",
                        self.name,
                        super::strerror(-rc)
                    );
                }
            }
        }
    }
}

/// A PMD thread's handle to a DPDK port.
#[derive(Debug, Clone)]
pub struct DpdkPort {
    port_id: u16,
    name: Arc<str>,
}

impl DpdkPort {
    /// The DPDK port id.
    pub fn port_id(&self) -> u16 {
        self.port_id
    }
}

/// The MAC address of a DPDK port.
pub fn mac_of(port_id: u16) -> [u8; 6] {
    let mut a = dpdk_sys::rte_ether_addr::default();
    // SAFETY: out-pointer valid; an invalid port id leaves zeros.
    unsafe { dpdk_sys::rte_eth_macaddr_get(port_id, &mut a) };
    a.addr_bytes
}

/// Reads stats of a DPDK port.
pub fn port_stats(port_id: u16) -> PortStats {
    let mut s = dpdk_sys::rte_eth_stats::default();
    // SAFETY: out-pointer valid; an invalid port id returns an error and
    // leaves zeros.
    unsafe { dpdk_sys::rte_eth_stats_get(port_id, &mut s) };
    PortStats {
        rx_packets: s.ipackets,
        rx_bytes: s.ibytes,
        rx_dropped: s.imissed + s.rx_nombuf,
        rx_errors: s.ierrors,
        tx_packets: s.opackets,
        tx_bytes: s.obytes,
        tx_errors: s.oerrors,
    }
}

/// Reads the link state of a DPDK port without waiting.
pub fn port_link(port_id: u16) -> LinkState {
    let mut l = dpdk_sys::rte_eth_link::default();
    // SAFETY: out-pointer valid.
    unsafe { dpdk_sys::rte_eth_link_get_nowait(port_id, &mut l) };
    LinkState {
        up: l.link_status() != 0,
        speed_mbps: l.link_speed,
        full_duplex: l.link_duplex() != 0,
    }
}

impl Port for DpdkPort {
    type Buf = Mbuf;

    fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    fn rx_burst(&mut self, queue: u16, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut raw = [std::ptr::null_mut::<dpdk_sys::rte_mbuf>(); BURST_SIZE];
        let max = max.min(BURST_SIZE);
        // SAFETY: started port, this thread owns `queue`, `raw` has room
        // for `max` pointers.
        let n = unsafe {
            dpdk_sys::rte_eth_rx_burst(self.port_id, queue, raw.as_mut_ptr(), max as u16)
        } as usize;
        for &m in &raw[..n] {
            if let Some(m) = std::ptr::NonNull::new(m) {
                // SAFETY: the driver hands us ownership of n valid mbufs.
                out.push(unsafe { Mbuf::from_raw(m) });
            }
        }
        n
    }

    #[inline]
    fn tx_burst(&mut self, queue: u16, pkts: &mut Vec<Mbuf>) -> usize {
        let mut total = 0;
        while !pkts.is_empty() {
            let k = pkts.len().min(BURST_SIZE);
            let mut raw = [std::ptr::null_mut::<dpdk_sys::rte_mbuf>(); BURST_SIZE];
            for (r, m) in raw.iter_mut().zip(pkts.iter()) {
                *r = m.as_raw();
            }
            // SAFETY: started port, this thread owns `queue`, `raw` holds k
            // valid mbufs that we own.
            let sent = unsafe {
                dpdk_sys::rte_eth_tx_burst(self.port_id, queue, raw.as_mut_ptr(), k as u16)
            } as usize;
            // The driver now owns the sent mbufs: forget our handles.
            for m in pkts.drain(..sent) {
                let _ = m.into_raw();
            }
            total += sent;
            if sent < k {
                break;
            }
        }
        total
    }

    fn stats(&self) -> PortStats {
        port_stats(self.port_id)
    }

    fn link(&self) -> LinkState {
        port_link(self.port_id)
    }
}
