//! The host exception path: the node's own IP traffic (kubelet, the API
//! server, SSH) reaches the kernel through an exception port, a TAP device
//! that `sluiced` switches like any other port (OVS's bridge internal
//! port).
//!
//! [`HostPath::attach`] moves the node's IPv4 addresses and routes from the
//! uplink's kernel interface onto the exception interface, and gives it the
//! uplink's MAC so that neighbours' ARP caches stay valid;
//! [`HostPath::detach`] (also run on drop) moves them back. The moving
//! itself (the order that keeps the node reachable after every step, which
//! routes follow, idempotent steps) lives in the `sluice-hostnet` crate,
//! shared with `sluice-bootstrap`; this module holds what `sluiced` moved
//! in memory, from attach to detach.
//!
//! Thread-safety: used by the daemon's start-up/shutdown thread only.

use sluice_hostnet::{move_steps, Direction, Plan};
pub use sluice_hostnet::{
    Addr, HostNetError as HostPathError, Interfaces as HostPathConfig, Route,
};

/// The node's addresses and routes, moved onto the exception port until
/// [`HostPath::detach`].
#[derive(Debug)]
pub struct HostPath {
    config: HostPathConfig,
    plan: Plan,
    attached: bool,
}

impl HostPath {
    /// Reads the IPv4 addresses and non-kernel routes of `dev`.
    ///
    /// # Errors
    /// [`HostPathError`] when `ip` fails or prints unexpected output.
    pub fn read(cfg: &HostPathConfig, dev: &str) -> Result<(Vec<Addr>, Vec<Route>), HostPathError> {
        Ok((cfg.addrs(dev)?, cfg.routes(dev)?))
    }

    /// Moves the uplink's IPv4 addresses, routes and MAC to the exception
    /// interface.
    ///
    /// # Errors
    /// [`HostPathError`] naming the failed step.
    pub fn attach(config: HostPathConfig) -> Result<HostPath, HostPathError> {
        let plan = config.read_plan(&config.uplink_if)?;
        let mut hp = HostPath {
            config,
            plan,
            attached: true,
        };
        let (up, host) = (hp.config.uplink_if.clone(), hp.config.host_if.clone());
        hp.switch(&up, &host, Direction::OntoHostPort)?;
        tracing::info!(
            uplink = %up,
            host = %host,
            "host exception path: moved {} address(es) and {} route(s) to {host}",
            hp.plan.addrs.len(),
            hp.plan.routes.len()
        );
        Ok(hp)
    }

    /// Moves everything from `from` to `to`, new side first.
    fn switch(&mut self, from: &str, to: &str, dir: Direction) -> Result<(), HostPathError> {
        for step in move_steps(&self.plan, Some(from), to, dir) {
            tracing::debug!("host exception path: {step}");
            self.config.run(&step)?;
        }
        Ok(())
    }

    /// The addresses moved.
    pub fn addrs(&self) -> &[Addr] {
        &self.plan.addrs
    }

    /// The routes moved.
    pub fn routes(&self) -> &[Route] {
        &self.plan.routes
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
        self.switch(&host, &up, Direction::BackToUplink)?;
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
}
