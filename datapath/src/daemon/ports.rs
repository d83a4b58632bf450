//! The ports of a running daemon: those of the `[port:NAME]` sections,
//! opened at start, and those added and removed while the PMDs forward
//! (`port-add`, `port-del`).
//!
//! [`Ports`] owns every open [`Ethdev`] and the mbuf pool their rx queues
//! fill from, and publishes the PMDs' view of them, a
//! [`PortTable`], through [`SharedPorts`] (RCU-style; see `pmd`). Adding a
//! port probes the device (DPDK vdev hot-plug for `net_af_packet`,
//! `net_af_xdp`, `net_tap`, `virtio_user`), configures and starts it on
//! the shared pool, deals its rx queues to the least-loaded PMDs and then
//! publishes the new table; no PMD sees the port before it is started.
//! Deleting one publishes a table without it, waits until every PMD passed
//! a burst boundary (their epochs), then removes what belongs to the port:
//! the rules matching `in_port` = the port (rules that output to it stay,
//! as in OVS: they drop, counted as `no_such_port`, until a port takes the
//! number again), its port-security binding, its MAC entries and the PMDs'
//! cached translations (`Pipeline::set_ports`), and finally stops, closes
//! and unplugs the device, whose counters go with it. Other ports are not
//! touched: their queues keep being polled throughout.
//!
//! Pod ports (`port-add` of a pod, a node commit's pod ports) default to
//! `net_af_packet` ([`PodDriver::DEFAULT`] says why). Asked for `net_af_xdp`,
//! a port falls back to `net_af_packet` when af_xdp cannot work there: checked before opening (the
//! veth has fewer queues than the port needs, or the process lacks
//! CAP_NET_RAW, CAP_NET_ADMIN and CAP_BPF or CAP_SYS_ADMIN) or learnt by
//! opening it (no af_xdp PMD in this DPDK, the XDP program refused, ...).
//! Each fallback is logged with its reason and counted
//! ([`Ports::pod_driver_fallbacks`], also a Prometheus counter);
//! `dump-ports` shows the driver each port got and, for a port that fell
//! back, why ([`PortSummary::fallback`]).
//!
//! Thread-safety: control threads call [`Ports`] concurrently; a mutex
//! serialises adds and deletes (and covers the pool), never taken by a PMD.
//! A node commit holds it (and the port table's writer lock) from the
//! preparation of its port table ([`Ports::prepare_publish`]) to its
//! bookkeeping ([`PortPublication::finish`]), across the PMD barrier, so
//! that inside the barrier its publication is a pointer swap.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sluice_api::ports::{PodDriver, PortAddRequest, PortAdded, PortDeleted, PortKind};
use sluice_api::{ApiError, ErrorCode};
use thiserror::Error;

use crate::config::PortConfig;
use crate::dpdk::ethdev::{self, DpdkPort, Ethdev, EthdevError};
use crate::dpdk::mempool::Mempool;
use crate::flow::tables::FlowTables;
use crate::packet::PortNo;
use crate::pmd::{PortTable, SharedPorts};
use crate::port::Port;
use crate::time::clock_ns;

/// The kind `dump-ports` shows for a `[port:NAME]` port.
pub const CONFIG_KIND: &str = "config";

/// How long `port-del` waits for the PMDs to pass a burst boundary.
const PMD_WAIT: Duration = Duration::from_secs(5);

/// Why a port could not be added or deleted.
#[derive(Debug, Error)]
pub enum PortError {
    /// The name is in use.
    #[error("a port named '{0}' already exists: pick another name or port-del it first")]
    NameTaken(String),
    /// The number is in use.
    #[error("ofport {ofport} is already port '{by}': pick another number or leave ofport out to get the lowest free one")]
    OfportTaken {
        /// The number.
        ofport: u16,
        /// The port that has it.
        by: String,
    },
    /// Every number is in use.
    #[error("no OpenFlow port number is free")]
    NoFreeOfport,
    /// The pod's interface does not exist.
    #[error("interface '{0}' does not exist in sluiced's network namespace: create the veth pair first (the CNI plugin does)")]
    InterfaceMissing(String),
    /// The device could not be created or started.
    #[error("{0}")]
    Device(#[from] EthdevError),
    /// No such port.
    #[error("no port named or numbered '{0}'")]
    NotFound(String),
    /// The daemon is stopping.
    #[error("sluiced is stopping: ports can no longer be added")]
    Closed,
    /// A PMD did not pick up a new port table in time (after a delete:
    /// the port is unpolled but still open).
    #[error("port '{port}': the PMDs did not pick up the new port table: {source}")]
    PmdWait {
        /// The port.
        port: String,
        /// The wait that failed.
        source: crate::pmd::PmdWaitError,
    },
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        let code = match &e {
            PortError::NameTaken(_) | PortError::OfportTaken { .. } => ErrorCode::AlreadyExists,
            PortError::NoFreeOfport => ErrorCode::LimitExceeded,
            PortError::InterfaceMissing(_) | PortError::NotFound(_) => ErrorCode::NotFound,
            PortError::Closed => ErrorCode::Unavailable,
            PortError::Device(_) | PortError::PmdWait { .. } => ErrorCode::Failed,
        };
        ApiError::new(code, e.to_string())
    }
}

/// One open port.
#[derive(Debug)]
struct Entry {
    name: String,
    kind: String,
    devargs: String,
    driver: String,
    pmds: Vec<usize>,
    dev: Ethdev,
}

#[derive(Debug)]
struct Inner {
    entries: BTreeMap<u16, Entry>,
    pool: Option<Mempool>,
    /// Numbers the vdevs this process creates (`net_af_packet_sl7`), so
    /// that a name is never probed twice.
    seq: u32,
    /// While a hand-over's new process prepares ([`Ports::hold_rx`]): the
    /// rx queues' PMDs of each port published meanwhile, by OpenFlow
    /// number; the ports are published with no rx queue (usable for tx,
    /// polled by no PMD) until [`Ports::start_polling`].
    held: Option<BTreeMap<u16, Vec<usize>>>,
}

/// The names and numbers of the ports a `node-commit` has staged but not
/// yet published, by OpenFlow number. A `port-add` that runs meanwhile
/// (between the stage and the publication, when the ports' lock is free)
/// must neither take one of these numbers nor one of these names: the
/// commit would then publish two ports on one number. Its own lock, taken
/// after `Inner`'s when both are held, and alone by [`Reservation`]'s drop.
type Reserved = Arc<Mutex<BTreeMap<u16, String>>>;

/// A stage's hold on its added ports' names and numbers, released when
/// the stage is dropped (published and finished, or abandoned).
#[derive(Debug)]
struct Reservation {
    reserved: Reserved,
    ofports: Vec<u16>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut r = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        for o in &self.ofports {
            r.remove(o);
        }
    }
}

/// What `port-del` removes besides the device.
#[derive(Debug, Clone, Default)]
pub struct PortOwners {
    /// The flow program (rules matching `in_port`).
    pub flows: Option<FlowTables>,
    /// Port security bindings.
    pub ingress: Option<crate::neigh::ingress::IngressControl>,
}

/// The daemon's ports (see the module documentation).
#[derive(Debug)]
pub struct Ports {
    shared: Arc<SharedPorts<DpdkPort>>,
    inner: Mutex<Inner>,
    cores: Vec<Option<usize>>,
    owners: Mutex<PortOwners>,
    /// Pod ports opened with af_packet although af_xdp was wanted.
    fallbacks: AtomicU64,
    /// Why af_xdp could not work, by the name of the pod port that fell
    /// back (the last open of that name; cleared when it opens as asked).
    fallback_why: Mutex<BTreeMap<String, String>>,
    /// Ports staged by a commit, not yet published.
    reserved: Reserved,
}

/// One port as the control methods show it.
#[derive(Debug, Clone)]
pub struct PortSummary {
    /// Name.
    pub name: String,
    /// OpenFlow number.
    pub ofport: u16,
    /// `config`, `pod` or `devargs`.
    pub kind: String,
    /// Devargs.
    pub devargs: String,
    /// Driver.
    pub driver: String,
    /// The PMD of each rx queue.
    pub pmds: Vec<usize>,
    /// A handle (counters, link, MAC).
    pub handle: DpdkPort,
    /// For a pod port opened with af_packet although af_xdp was asked
    /// for: why af_xdp could not work.
    pub fallback: Option<String>,
}

impl Ports {
    /// No ports yet, for PMDs pinned to `cores`, filling rx queues from
    /// `pool`.
    pub fn new(pool: Mempool, cores: Vec<Option<usize>>) -> Self {
        let n = cores.len().max(1);
        Ports {
            shared: Arc::new(SharedPorts::new(n, PortTable::empty(n))),
            inner: Mutex::new(Inner {
                entries: BTreeMap::new(),
                pool: Some(pool),
                seq: 0,
                held: None,
            }),
            cores,
            owners: Mutex::new(PortOwners::default()),
            fallbacks: AtomicU64::new(0),
            fallback_why: Mutex::new(BTreeMap::new()),
            reserved: Arc::default(),
        }
    }

    /// The ports staged by a commit in progress (number → name).
    fn reserved(&self) -> MutexGuard<'_, BTreeMap<u16, String>> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many pod ports were opened with af_packet because af_xdp, the
    /// driver wanted, could not work for them (each logged with why).
    pub fn pod_driver_fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Opens pod port `name` on `iface` with `queues` queue pairs
    /// (`rx_queues` of them polled): with `want`, and when that is af_xdp
    /// and af_xdp cannot work here, with af_packet instead (logged with the
    /// reason and counted).
    fn open_pod(
        &self,
        inner: &mut Inner,
        name: &str,
        iface: &str,
        want: PodDriver,
        queues: u16,
        rx_queues: u16,
    ) -> Result<Ethdev, PortError> {
        let mut fell_back = self.fallback_why.lock().unwrap_or_else(|e| e.into_inner());
        fell_back.remove(name);
        let why = if want == PodDriver::AfXdp {
            match af_xdp_blocker(iface, queues) {
                Some(why) => why,
                None => {
                    inner.seq += 1;
                    let devargs = pod_devargs(PodDriver::AfXdp, iface, inner.seq, queues);
                    match open(inner, name, &devargs, rx_queues, self.n_pmds()) {
                        Ok(dev) => return Ok(dev),
                        Err(e) => format!("opening it with af_xdp failed: {e}"),
                    }
                }
            }
        } else {
            String::new()
        };
        if want == PodDriver::AfXdp {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            fell_back.insert(name.to_string(), why.clone());
            tracing::warn!(
                port = name,
                iface,
                "pod port {name}: af_xdp cannot work here ({why}); using af_packet for this port"
            );
        }
        inner.seq += 1;
        let devargs = pod_devargs(PodDriver::AfPacket, iface, inner.seq, queues);
        open(inner, name, &devargs, rx_queues, self.n_pmds())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the PMDs load.
    pub fn shared(&self) -> Arc<SharedPorts<DpdkPort>> {
        self.shared.clone()
    }

    /// Sets what `port-del` cleans up besides the device.
    pub fn set_owners(&self, owners: PortOwners) {
        *self.owners.lock().unwrap_or_else(|e| e.into_inner()) = owners;
    }

    /// Runs `f` on the mbuf pool (None once closed).
    pub fn with_pool<R>(&self, f: impl FnOnce(&Mempool) -> R) -> Option<R> {
        self.lock().pool.as_ref().map(f)
    }

    fn n_pmds(&self) -> usize {
        self.shared.n_pmds()
    }

    /// Opens a `[port:NAME]` port; its rx queues go to `pmds`.
    pub fn open_config(&self, p: &PortConfig, pmds: Vec<usize>) -> Result<(), PortError> {
        let mut inner = self.lock();
        let dev = open(&inner, &p.name, &p.devargs, p.rx_queues, self.n_pmds())?;
        self.publish(&mut inner, p.ofport, &p.name, CONFIG_KIND, dev, pmds);
        Ok(())
    }

    fn publish(
        &self,
        inner: &mut Inner,
        ofport: u16,
        name: &str,
        kind: &str,
        dev: Ethdev,
        pmds: Vec<usize>,
    ) -> (PortSummary, u64) {
        let h = dev.handle();
        let p = match inner.held.as_mut() {
            Some(held) => {
                held.insert(ofport, pmds.clone());
                Vec::new()
            }
            None => pmds.clone(),
        };
        let (_, generation) = self.shared.update(move |t| t.insert(PortNo(ofport), h, &p));
        let e = Entry {
            name: name.to_string(),
            kind: kind.to_string(),
            devargs: dev.devargs().to_string(),
            driver: dev.driver(),
            pmds,
            dev,
        };
        let s = self.summary(ofport, &e);
        inner.entries.insert(ofport, e);
        (s, generation)
    }

    /// `port-add`.
    ///
    /// # Errors
    /// [`PortError`]: the name or number is taken, the interface missing,
    /// the device failed to probe or start. Returns once every PMD
    /// forwards with the port.
    pub fn add(&self, r: &PortAddRequest) -> Result<PortAdded, ApiError> {
        r.check()?;
        let mut inner = self.lock();
        if inner.pool.is_none() {
            return Err(PortError::Closed.into());
        }
        // Held to the end: a commit staging meanwhile sees this port in
        // `entries` or waits for the ports' lock.
        let reserved = self.reserved();
        if inner.entries.values().any(|e| e.name == r.name)
            || reserved.values().any(|n| *n == r.name)
        {
            return Err(PortError::NameTaken(r.name.clone()).into());
        }
        let ofport = match r.ofport {
            Some(o) => {
                if let Some(by) = inner.entries.get(&o).map(|e| e.name.clone()).or_else(|| {
                    reserved
                        .get(&o)
                        .map(|n| format!("{n} (being added by a node-commit)"))
                }) {
                    return Err(PortError::OfportTaken { ofport: o, by }.into());
                }
                o
            }
            None => (1..0xff00u16)
                .find(|o| !inner.entries.contains_key(o) && !reserved.contains_key(o))
                .ok_or(PortError::NoFreeOfport)?,
        };
        let mut dev = match &r.kind {
            PortKind::Pod { iface, driver } => {
                if !std::path::Path::new("/sys/class/net").join(iface).exists() {
                    return Err(PortError::InterfaceMissing(iface.clone()).into());
                }
                self.open_pod(
                    &mut inner,
                    &r.name,
                    iface,
                    driver.unwrap_or(PodDriver::DEFAULT),
                    r.rx_queues.max(self.n_pmds() as u16),
                    r.rx_queues,
                )?
            }
            PortKind::Devargs { devargs } => {
                inner.seq += 1;
                open(&inner, &r.name, devargs, r.rx_queues, self.n_pmds())?
            }
        };
        dev.detach_on_close();
        let pmds = self.least_loaded(r.rx_queues);
        let (s, generation) = self.publish(&mut inner, ofport, &r.name, r.kind.name(), dev, pmds);
        // The reply means "forwarding": every PMD runs the table with the
        // port (a rule sending to it no longer finds no port).
        self.shared
            .wait_for_pmds(generation, PMD_WAIT)
            .map_err(|source| PortError::PmdWait {
                port: s.name.clone(),
                source,
            })?;
        tracing::info!(port = %s.name, ofport, driver = %s.driver, "port {} added ({})", s.name, s.devargs);
        Ok(PortAdded {
            name: s.name,
            ofport,
            driver: s.driver,
            devargs: s.devargs,
            pmds: s.pmds,
        })
    }

    /// PMDs for `n` new rx queues: each to the PMD polling fewest queues
    /// (lowest index on ties).
    fn least_loaded(&self, n: u16) -> Vec<usize> {
        pick_least_loaded(&mut self.rx_load(), n)
    }

    /// `port-del`.
    ///
    /// # Errors
    /// [`PortError::NotFound`]; [`PortError::PmdWait`] when a PMD did not
    /// pass a burst boundary (the device then stays open, unpolled).
    pub fn del(&self, port: &str) -> Result<PortDeleted, ApiError> {
        let mut inner = self.lock();
        let ofport = inner
            .entries
            .iter()
            .find(|(o, e)| e.name == port || o.to_string() == port)
            .map(|(o, _)| *o)
            .ok_or_else(|| PortError::NotFound(port.to_string()))?;
        let name = inner.entries[&ofport].name.clone();
        // 1. Stop polling: no PMD loads the port from the next burst on.
        let (_, generation) = self.shared.update(|t| {
            t.remove(PortNo(ofport));
        });
        // 2. Let in-flight bursts finish.
        self.shared
            .wait_for_pmds(generation, PMD_WAIT)
            .map_err(|source| PortError::PmdWait {
                port: name.clone(),
                source,
            })?;
        // 3. What belongs to the port.
        let owners = self
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let flows_removed = match &owners.flows {
            Some(t) => t
                .del_flows(&format!("in_port={ofport}"), false, clock_ns())
                .map(|s| s.deleted as u64)
                .unwrap_or_else(|e| {
                    tracing::warn!("port '{name}': its in_port rules stay: {e}");
                    0
                }),
            None => 0,
        };
        if let Some(i) = &owners.ingress {
            i.forget_port(PortNo(ofport));
        }
        // 4. The device.
        let Some(mut e) = inner.entries.remove(&ofport) else {
            return Err(PortError::NotFound(port.to_string()).into());
        };
        let st = e.dev.handle().stats();
        // Also a `[port:NAME]` port: unplugged, so that its devargs can be
        // added again.
        e.dev.detach_on_close();
        drop(e);
        tracing::info!(port = %name, ofport, "port {name} deleted");
        Ok(PortDeleted {
            name,
            ofport,
            flows_removed,
            stats: st,
        })
    }

    /// Prepares a node commit's port changes without publishing them:
    /// checks that every port in `removed` exists (by name) and that the
    /// names and numbers of `added` are free once `removed` are gone, then
    /// opens and starts each added pod port's device (not yet polled).
    /// [`Ports::prepare_publish`] then makes them all visible in one
    /// port-table generation (under the PMD barrier); dropping the stage
    /// instead closes what it opened.
    ///
    /// # Errors
    /// The first port that cannot be removed or added, by name, with why.
    pub fn stage(
        &self,
        removed: &[String],
        added: &[StagedPortSpec],
    ) -> Result<PortStage, (String, PortError)> {
        let mut inner = self.lock();
        if inner.pool.is_none() {
            return Err((String::new(), PortError::Closed));
        }
        let mut gone = Vec::new();
        for name in removed {
            let o = inner
                .entries
                .iter()
                .find(|(_, e)| &e.name == name)
                .map(|(o, _)| *o)
                .ok_or_else(|| (name.clone(), PortError::NotFound(name.clone())))?;
            gone.push(o);
        }
        let mut stage = PortStage {
            removed: gone,
            added: Vec::new(),
            closing: Vec::new(),
            generation: None,
            _reservation: None,
        };
        let mut reserved = self.reserved();
        let mut load = self.rx_load();
        for a in added {
            let err = |e| (a.name.clone(), e);
            let taken_by = |o: u16| {
                inner
                    .entries
                    .get(&o)
                    .filter(|_| !stage.removed.contains(&o))
                    .map(|e| e.name.clone())
                    .or_else(|| {
                        stage
                            .added
                            .iter()
                            .find(|s| s.ofport == o)
                            .map(|s| s.name.clone())
                    })
                    .or_else(|| {
                        reserved
                            .get(&o)
                            .map(|n| format!("{n} (being added by another node-commit)"))
                    })
            };
            if inner
                .entries
                .iter()
                .any(|(o, e)| e.name == a.name && !stage.removed.contains(o))
                || stage.added.iter().any(|s| s.name == a.name)
                || reserved.values().any(|n| *n == a.name)
            {
                return Err(err(PortError::NameTaken(a.name.clone())));
            }
            if let Some(by) = taken_by(a.ofport) {
                return Err(err(PortError::OfportTaken {
                    ofport: a.ofport,
                    by,
                }));
            }
            if !std::path::Path::new("/sys/class/net")
                .join(&a.interface)
                .exists()
            {
                return Err(err(PortError::InterfaceMissing(a.interface.clone())));
            }
            let mut dev = self
                .open_pod(
                    &mut inner,
                    &a.name,
                    &a.interface,
                    a.driver,
                    self.n_pmds() as u16,
                    1,
                )
                .map_err(err)?;
            dev.detach_on_close();
            let pmds = pick_least_loaded(&mut load, 1);
            stage.added.push(StagedPort {
                name: a.name.clone(),
                ofport: a.ofport,
                pmds,
                dev: Some(dev),
            });
        }
        if !stage.added.is_empty() {
            for s in &stage.added {
                reserved.insert(s.ofport, s.name.clone());
            }
            stage._reservation = Some(Reservation {
                reserved: Arc::clone(&self.reserved),
                ofports: stage.added.iter().map(|s| s.ofport).collect(),
            });
        }
        Ok(stage)
    }

    /// Prepares the publication of a stage's removals and additions as
    /// one port-table generation: takes the ports' lock and the port
    /// table's writer lock (held until the returned value is finished or
    /// dropped, so that nothing interleaves) and builds the new table.
    /// Call it before [`SharedPorts::barrier`]; inside the barrier only
    /// [`PortPublication::publish`] (a pointer swap); after it,
    /// [`PortPublication::finish`] and then [`Ports::finish_stage`].
    pub fn prepare_publish(&self, stage: &PortStage) -> PortPublication<'_> {
        let inner = self.lock();
        let held = inner.held.is_some();
        let adds: Vec<(u16, DpdkPort, Vec<usize>)> = stage
            .added
            .iter()
            .filter_map(|s| {
                s.dev.as_ref().map(|d| {
                    // While a hand-over holds rx, ports are published with
                    // no rx queue (`finish` records their PMDs).
                    let pmds = if held { Vec::new() } else { s.pmds.clone() };
                    (s.ofport, d.handle(), pmds)
                })
            })
            .collect();
        let removed = &stage.removed;
        let ((), table) = self.shared.prepare(|t| {
            for o in removed {
                t.remove(PortNo(*o));
            }
            for (o, h, pmds) in adds {
                t.insert(PortNo(o), h, &pmds);
            }
        });
        PortPublication { inner, table }
    }

    /// After a published stage: waits until no PMD runs a table with the
    /// removed ports, then stops and closes their devices; returns the
    /// names of the ports closed.
    ///
    /// # Errors
    /// [`PortError::PmdWait`] when a PMD did not pass a burst boundary
    /// (the removed devices then stay open, unpolled).
    pub fn finish_stage(&self, stage: PortStage) -> Result<Vec<String>, PortError> {
        let Some(generation) = stage.generation else {
            return Ok(Vec::new());
        };
        self.shared
            .wait_for_pmds(generation, PMD_WAIT)
            .map_err(|source| PortError::PmdWait {
                port: format!("{} removed", stage.removed.len()),
                source,
            })?;
        let mut closed = Vec::new();
        for mut e in stage.closing {
            e.dev.detach_on_close();
            closed.push(e.name.clone());
            drop(e);
        }
        Ok(closed)
    }

    /// The published number of rx queues per PMD.
    fn rx_load(&self) -> Vec<usize> {
        let t = self.shared.load();
        (0..self.n_pmds())
            .map(|i| t.rx.get(i).map_or(0, Vec::len))
            .collect()
    }

    /// Every port, by OpenFlow number.
    pub fn list(&self) -> Vec<PortSummary> {
        self.lock()
            .entries
            .iter()
            .map(|(&o, e)| self.summary(o, e))
            .collect()
    }

    /// `pmd-rxq-show`: the published table's queues per PMD.
    pub fn rx_queues(&self) -> Vec<sluice_api::pmd::PmdRxqs> {
        let t = self.shared.load();
        let inner = self.lock();
        (0..self.n_pmds())
            .map(|i| sluice_api::pmd::PmdRxqs {
                index: i,
                core: self.cores.get(i).copied().flatten(),
                queues: t
                    .rx
                    .get(i)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|&(p, queue)| {
                        let e = inner.entries.get(&p.0);
                        sluice_api::pmd::RxQueue {
                            port: e.map(|e| e.name.clone()).unwrap_or_default(),
                            ofport: p.0,
                            queue,
                            kind: e.map(|e| e.kind.clone()).unwrap_or_default(),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// Closes every port, then frees the pool (after the PMDs stopped).
    pub fn close_all(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.pool = None;
    }
}

/// Devices no PMD polls any more, still open ([`Ports::release_all`]).
#[derive(Debug)]
pub struct UnpolledPorts(Vec<Entry>);

impl UnpolledPorts {
    /// Splits off the devices `f` selects (by devargs).
    pub fn split(&mut self, f: impl Fn(&str) -> bool) -> UnpolledPorts {
        let (yes, no) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|e| f(&e.devargs));
        self.0 = no;
        UnpolledPorts(yes)
    }

    /// Stops, closes and unplugs them.
    pub fn close(self) {
        drop(self);
    }
}

/// A port given up by a hand-over restart ([`Ports::release_all`]), with
/// what reopens it ([`Ports::reopen`]).
#[derive(Debug, Clone)]
pub struct ReleasedPort {
    /// Name.
    pub name: String,
    /// OpenFlow number.
    pub ofport: u16,
    /// `config`, `pod` or `devargs`.
    pub kind: String,
    /// Devargs.
    pub devargs: String,
    /// The PMD of each rx queue.
    pub pmds: Vec<usize>,
    /// Its counters when closed.
    pub stats: sluice_api::ports::PortCounters,
}

// Hand-over restart (see `daemon::handover`): unlike `port-del`, these
// leave the flows, port security and MAC entries of the ports alone, since
// the same ports come back (in the new process, or here on a rollback).
impl Ports {
    /// Stops polling every port and waits for the PMDs to pass a burst
    /// boundary; the devices are still open, returned in
    /// [`UnpolledPorts`] for the caller to close (their interfaces are
    /// free for another process to open once closed).
    ///
    /// # Errors
    /// [`PortError::PmdWait`]: a PMD did not pick up the empty table (the
    /// devices stay open, unpolled).
    pub fn release_all(&self) -> Result<(Vec<ReleasedPort>, UnpolledPorts), PortError> {
        let mut inner = self.lock();
        let all: Vec<u16> = inner.entries.keys().copied().collect();
        let (_, generation) = self.shared.update(|t| {
            for &o in &all {
                t.remove(PortNo(o));
            }
        });
        self.shared
            .wait_for_pmds(generation, PMD_WAIT)
            .map_err(|source| PortError::PmdWait {
                port: "(every port)".into(),
                source,
            })?;
        let mut out = Vec::new();
        let mut open = Vec::new();
        for (ofport, mut e) in std::mem::take(&mut inner.entries) {
            out.push(ReleasedPort {
                name: e.name.clone(),
                ofport,
                kind: e.kind.clone(),
                devargs: e.devargs.clone(),
                pmds: e.pmds.clone(),
                stats: e.dev.handle().stats(),
            });
            e.dev.detach_on_close();
            open.push(e);
        }
        Ok((out, UnpolledPorts(open)))
    }

    /// Opens a port given up by [`Ports::release_all`] again (in this
    /// process or another) with its devargs, kind and rx queues' PMDs.
    ///
    /// # Errors
    /// [`PortError`]: the device failed to probe or start.
    pub fn reopen(&self, p: &ReleasedPort) -> Result<(), PortError> {
        let mut inner = self.lock();
        // A vdev name this process makes later (`net_af_packet_slN`) must
        // not be one reopened here.
        if let Some(n) = p
            .devargs
            .split(',')
            .next()
            .and_then(|v| v.rsplit_once("_sl"))
            .and_then(|(_, n)| n.parse::<u32>().ok())
        {
            inner.seq = inner.seq.max(n + 1);
        }
        let n = self.n_pmds();
        let pmds: Vec<usize> = p.pmds.iter().map(|&i| i % n).collect();
        let dev = open(&inner, &p.name, &p.devargs, pmds.len().max(1) as u16, n)?;
        self.publish(&mut inner, p.ofport, &p.name, &p.kind, dev, pmds);
        Ok(())
    }

    /// From now until [`Ports::start_polling`], ports opened or published
    /// (config ports, [`Ports::reopen`], a node commit's pod ports) get no
    /// rx queue in the PMDs' table: a hand-over's new process opens them
    /// while the old one still polls its own sockets on the same
    /// interfaces.
    pub fn hold_rx(&self) {
        self.lock().held.get_or_insert_with(BTreeMap::new);
    }

    /// Ends [`Ports::hold_rx`]: empties every held port's rx queues (what
    /// they hold arrived while another process polled the interface, so
    /// it was forwarded already, or must count as lost: never twice),
    /// then publishes every held port's rx queues in one port-table
    /// generation, which each PMD polls from its next burst on. Returns
    /// (ports, frames discarded).
    pub fn start_polling(&self) -> (usize, u64) {
        let mut inner = self.lock();
        let Some(held) = inner.held.take() else {
            return (0, 0);
        };
        let mut discarded = 0u64;
        let mut publish = Vec::new();
        for (o, pmds) in held {
            let Some(e) = inner.entries.get(&o) else {
                continue;
            };
            let mut h = e.dev.handle();
            let mut bufs = Vec::with_capacity(crate::packet::BURST_SIZE);
            for q in 0..pmds.len() as u16 {
                // Bounded: a ring holds a few thousand frames at most;
                // the bound stops a drain racing a line-rate sender.
                for _ in 0..256 {
                    let n = h.rx_burst(q, &mut bufs, crate::packet::BURST_SIZE);
                    discarded += n as u64;
                    bufs.clear();
                    if n == 0 {
                        break;
                    }
                }
            }
            publish.push((o, h, pmds));
        }
        let n = publish.len();
        self.shared.update(move |t| {
            for (o, h, pmds) in publish {
                t.insert(PortNo(o), h, &pmds);
            }
        });
        (n, discarded)
    }
}

impl Ports {
    fn summary(&self, ofport: u16, e: &Entry) -> PortSummary {
        let fallback = (e.kind == "pod")
            .then(|| {
                let why = self.fallback_why.lock().unwrap_or_else(|e| e.into_inner());
                why.get(&e.name).cloned()
            })
            .flatten();
        PortSummary {
            name: e.name.clone(),
            ofport,
            kind: e.kind.clone(),
            devargs: e.devargs.clone(),
            driver: e.driver.clone(),
            pmds: e.pmds.clone(),
            handle: e.dev.handle(),
            fallback,
        }
    }
}

/// `n` PMDs for new rx queues: each to the PMD polling fewest queues
/// (lowest index on ties); `load` is updated.
fn pick_least_loaded(load: &mut [usize], n: u16) -> Vec<usize> {
    (0..n)
        .map(|_| {
            let i = (0..load.len()).min_by_key(|&i| (load[i], i)).unwrap_or(0);
            if let Some(l) = load.get_mut(i) {
                *l += 1;
            }
            i
        })
        .collect()
}

/// A pod port a node commit adds.
#[derive(Debug, Clone)]
pub struct StagedPortSpec {
    /// Its name (the `Logical_Port`'s).
    pub name: String,
    /// Its OpenFlow number.
    pub ofport: u16,
    /// The host end of the pod's veth.
    pub interface: String,
    /// The driver.
    pub driver: PodDriver,
}

#[derive(Debug)]
struct StagedPort {
    name: String,
    ofport: u16,
    pmds: Vec<usize>,
    /// Open and started; taken when published.
    dev: Option<Ethdev>,
}

/// A node commit's port changes, prepared by [`Ports::stage`]. Dropped
/// unpublished, it closes the devices it opened.
#[derive(Debug)]
pub struct PortStage {
    removed: Vec<u16>,
    added: Vec<StagedPort>,
    /// The removed ports' entries once published, closed by
    /// [`Ports::finish_stage`].
    closing: Vec<Entry>,
    generation: Option<u64>,
    /// The added ports' names and numbers, kept from `port-add` until the
    /// stage is dropped.
    _reservation: Option<Reservation>,
}

impl PortStage {
    /// Nothing to publish.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// A stage's port table, ready to publish ([`Ports::prepare_publish`]).
/// It holds the ports' lock and the port table's writer lock until
/// finished or dropped (dropped unpublished, nothing changes).
#[derive(Debug)]
pub struct PortPublication<'a> {
    inner: MutexGuard<'a, Inner>,
    table: crate::pmd::PreparedTable<'a, DpdkPort>,
}

impl PortPublication<'_> {
    /// Makes the prepared table the one in force (inside the barrier: one
    /// pointer swap, no lock, no allocation).
    pub fn publish(&mut self) {
        self.table.publish();
    }

    /// After the barrier: the ports' bookkeeping. The removed ports'
    /// entries leave the set (a port added in the same commit may take
    /// the same number; their devices close in [`Ports::finish_stage`],
    /// once no PMD polls them) and the added ones join it; then the locks
    /// are released and the replaced table freed. Does nothing to `stage`
    /// if the table was not published.
    pub fn finish(mut self, stage: &mut PortStage) {
        if !self.table.is_published() {
            return;
        }
        stage.generation = Some(self.table.generation());
        let inner = &mut *self.inner;
        if let Some(held) = inner.held.as_mut() {
            for s in &stage.added {
                held.insert(s.ofport, s.pmds.clone());
            }
        }
        for o in &stage.removed {
            if let Some(e) = inner.entries.remove(o) {
                stage.closing.push(e);
            }
        }
        for s in &mut stage.added {
            if let Some(dev) = s.dev.take() {
                let e = Entry {
                    name: s.name.clone(),
                    kind: "pod".to_string(),
                    devargs: dev.devargs().to_string(),
                    driver: dev.driver(),
                    pmds: s.pmds.clone(),
                    dev,
                };
                inner.entries.insert(s.ofport, e);
            }
        }
    }
}

/// Why af_xdp cannot work for a pod port on `iface` with `queues` queue
/// pairs, checked before opening it: the veth has fewer rx queues than
/// that (the CNI's veths have one; sluiced needs one tx queue per PMD), or
/// this process lacks CAP_NET_RAW, CAP_NET_ADMIN and CAP_BPF or
/// CAP_SYS_ADMIN (loading and attaching the XDP program). `None`: try it.
pub fn af_xdp_blocker(iface: &str, queues: u16) -> Option<String> {
    let have = veth_queues(iface);
    if let Some(have) = have.filter(|&h| h < queues) {
        return Some(format!(
            "{iface} has {have} rx queue(s) and the port needs {queues} (one per PMD); create the veth with numrxqueues/numtxqueues {queues} to use af_xdp"
        ));
    }
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    missing_af_xdp_caps(caps).map(|m| {
        format!("sluiced lacks {m}, which af_xdp needs to load and attach its XDP program")
    })
}

/// The capabilities af_xdp needs that `cap_eff` (a CapEff mask) lacks, as
/// text; `None` when it has them.
pub fn missing_af_xdp_caps(cap_eff: u64) -> Option<String> {
    const NET_ADMIN: u32 = 12;
    const NET_RAW: u32 = 13;
    const SYS_ADMIN: u32 = 21;
    const BPF: u32 = 39;
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !has(NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(BPF) && !has(SYS_ADMIN) {
        missing.push("CAP_BPF (or CAP_SYS_ADMIN)");
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// The number of rx queues of Linux interface `iface` (`None` when
/// sysfs does not say).
fn veth_queues(iface: &str) -> Option<u16> {
    let dir = std::fs::read_dir(
        std::path::Path::new("/sys/class/net")
            .join(iface)
            .join("queues"),
    )
    .ok()?;
    let n = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    u16::try_from(n).ok()
}

/// Devargs of a pod port on `iface` with `queues` queue pairs; `seq` makes
/// the vdev name unique in this process.
pub fn pod_devargs(driver: PodDriver, iface: &str, seq: u32, queues: u16) -> String {
    match driver {
        PodDriver::AfPacket => {
            format!("net_af_packet_sl{seq},iface={iface},qpairs={queues}")
        }
        PodDriver::AfXdp => {
            format!("net_af_xdp_sl{seq},iface={iface},start_queue=0,queue_count={queues}")
        }
    }
}

fn open(
    inner: &Inner,
    name: &str,
    devargs: &str,
    rx_queues: u16,
    n_pmds: usize,
) -> Result<Ethdev, PortError> {
    let pool = inner.pool.as_ref().ok_or(PortError::Closed)?;
    Ok(Ethdev::open(
        &ethdev::EthdevConfig {
            name: name.to_string(),
            devargs: devargs.to_string(),
            rx_queues,
            tx_queues: n_pmds as u16,
            rx_desc: 1024,
            tx_desc: 1024,
        },
        pool,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_devargs_name_unique_vdevs() {
        assert_eq!(
            pod_devargs(PodDriver::AfPacket, "veth1", 3, 2),
            "net_af_packet_sl3,iface=veth1,qpairs=2"
        );
        assert!(pod_devargs(PodDriver::AfXdp, "v", 4, 1).starts_with("net_af_xdp_sl4,iface=v,"));
    }

    #[test]
    fn af_xdp_needs_raw_admin_and_bpf_or_sys_admin() {
        let bit = |c: u32| 1u64 << c;
        assert_eq!(missing_af_xdp_caps(bit(12) | bit(13) | bit(39)), None);
        assert_eq!(missing_af_xdp_caps(bit(12) | bit(13) | bit(21)), None);
        let m = missing_af_xdp_caps(bit(12) | bit(13)).unwrap();
        assert!(m.contains("CAP_BPF"), "{m}");
        let m = missing_af_xdp_caps(0).unwrap();
        assert!(
            m.contains("CAP_NET_RAW") && m.contains("CAP_NET_ADMIN"),
            "{m}"
        );
    }

    #[test]
    fn af_xdp_is_blocked_on_a_veth_with_too_few_queues() {
        // The loopback interface has one rx queue everywhere.
        if veth_queues("lo") != Some(1) {
            return;
        }
        let why = af_xdp_blocker("lo", 2).expect("two queues on a one-queue interface");
        assert!(
            why.contains("1 rx queue(s)") && why.contains("needs 2"),
            "{why}"
        );
    }

    #[test]
    fn errors_carry_their_codes() {
        let e: ApiError = PortError::NameTaken("a".into()).into();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        let e: ApiError = PortError::InterfaceMissing("v".into()).into();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("does not exist"), "{e}");
    }
}
