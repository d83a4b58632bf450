//! The `sluiced` daemon: wires configuration, DPDK, ports, PMD threads,
//! pipelines and the control socket together, and tears them down in the
//! right order.
//!
//! Start-up: capabilities → EAL → mbuf pool → ports → (drop unneeded
//! capabilities) → control socket → PMD threads. Shutdown: stop and join
//! the PMDs, stop the control socket, close the ports (their mbufs return
//! to the pool), free the pool, clean up the EAL.

pub mod commands;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::caps;
use crate::capture::Capture;
use crate::config::{Config, PortConfig};
use crate::ctl::{CtlServer, Registry, ServerConfig};
use crate::dpdk::{self, eal, ethdev, mempool};
use crate::flow::tables::FlowTables;
use crate::packet::PortNo;
use crate::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use crate::pipeline::l2::L2Pipeline;
use crate::pmd::{self, PmdSpec, PmdThread};
use crate::port::Port;
use crate::time::clock_ns;

use commands::{PmdView, PortView};

/// The flow a new flow-table datapath starts with, as a new OVS bridge:
/// behave as a learning switch until programmed.
pub const DEFAULT_FLOW: &str = "table=0,priority=0 actions=normal";

/// The EAL configuration of a daemon configuration.
pub fn eal_config(cfg: &Config) -> Result<eal::EalConfig, String> {
    Ok(eal::EalConfig {
        file_prefix: cfg.datapath.file_prefix.clone(),
        hugepages: cfg.datapath.hugepages.parse()?,
        no_huge_memory_mb: cfg.datapath.no_huge_memory_mb,
        main_core: cfg.datapath.main_core,
        extra_args: cfg.datapath.eal_args.clone(),
    })
}

/// A running datapath.
#[derive(Debug)]
pub struct Daemon {
    pmds: Vec<PmdThread>,
    ctl: Option<CtlServer>,
    ports: Vec<(PortConfig, ethdev::Ethdev)>,
    pool: Option<mempool::Mempool>,
    eal: Option<eal::Eal>,
    stop: Arc<AtomicBool>,
    /// The flow program, when the flow pipeline runs.
    pub flows: Option<FlowTables>,
    /// Expires flows whose idle or hard timeout passed (once a second).
    revalidator: Option<std::thread::JoinHandle<()>>,
    /// The "ready" event printed on stdout.
    pub ready: Value,
    /// The host exception path (node addresses moved onto the TAP).
    hostpath: Option<crate::hostpath::HostPath>,
}

impl Daemon {
    /// Starts everything. `on_exit` is called by the control socket's
    /// `exit` command (it should wake the main thread).
    pub fn start(
        cfg: &Config,
        on_exit: impl Fn() + Send + Sync + 'static,
    ) -> Result<Daemon, String> {
        let ecfg = eal_config(cfg)?;
        let (_, hugepages) = eal::Eal::args_for(&ecfg).map_err(|e| e.to_string())?;
        let need = caps::required(cfg, hugepages);
        if let Some(line) = caps::missing(&need, caps::effective()?) {
            return Err(line);
        }
        let t0 = Instant::now();
        let eal = eal::Eal::init(&ecfg).map_err(|e| e.to_string())?;
        let eal_ms = t0.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            hugepages = eal.hugepages,
            "DPDK EAL initialised in {eal_ms:.1} ms ({})",
            dpdk::version()
        );
        let mut d = Daemon {
            pmds: Vec::new(),
            ctl: None,
            ports: Vec::new(),
            pool: None,
            eal: Some(eal),
            stop: Arc::new(AtomicBool::new(false)),
            flows: None,
            revalidator: None,
            ready: Value::Null,
            hostpath: None,
        };
        // From here on, an error drops `d`, which tears down what started.
        d.start_rest(cfg, need, eal_ms, on_exit)?;
        Ok(d)
    }

    fn start_rest(
        &mut self,
        cfg: &Config,
        need: std::collections::BTreeMap<caps::Cap, Vec<String>>,
        eal_ms: f64,
        on_exit: impl Fn() + Send + Sync + 'static,
    ) -> Result<(), String> {
        let n_pmds = cfg.datapath.cores.len();
        // Memzone names live in the process's own file prefix, and DPDK
        // caps them at 25 characters: a fixed name, not one built from a
        // prefix of any length.
        let pool = mempool::Mempool::new("sluiced_mbufs", cfg.datapath.mbufs, 256)
            .map_err(|e| e.to_string())?;
        for p in &cfg.ports {
            let dev = ethdev::Ethdev::open(
                &ethdev::EthdevConfig {
                    name: p.name.clone(),
                    devargs: p.devargs.clone(),
                    rx_queues: p.rx_queues,
                    tx_queues: n_pmds as u16,
                    rx_desc: 1024,
                    tx_desc: 1024,
                },
                &pool,
            )
            .map_err(|e| e.to_string())?;
            tracing::info!(
                port = %p.name,
                ofport = p.ofport,
                driver = %dev.driver(),
                "port {} up ({})",
                p.name,
                p.devargs
            );
            self.ports.push((p.clone(), dev));
        }
        self.pool = Some(pool);
        // Keep what the configured ports need, plus CAP_NET_ADMIN when we
        // have it: pod TAP ports are added at run time and the host
        // exception path moves addresses and routes back at stop.
        let mut keep: Vec<caps::Cap> = need.keys().copied().collect();
        if !keep.contains(&caps::Cap::NetAdmin) {
            keep.push(caps::Cap::NetAdmin);
        }
        if let Err(e) = caps::drop_all_except(&keep) {
            tracing::warn!("{e}");
        }

        let registry = Registry::new();
        let ctl = CtlServer::start(
            ServerConfig::with_path(&cfg.datapath.ctl_socket),
            registry.clone(),
            on_exit,
        )
        .map_err(|e| e.to_string())?;
        self.ctl = Some(ctl);

        let ofports: Vec<PortNo> = self.ports.iter().map(|(p, _)| PortNo(p.ofport)).collect();
        let flows = (cfg.datapath.pipeline == "flow").then(FlowTables::new);
        if let Some(t) = &flows {
            t.add_flow(DEFAULT_FLOW, clock_ns())
                .map_err(|e| format!("cannot install the default flow: {e}"))?;
        }
        let capture = Capture::new();
        let mut specs: Vec<PmdSpec> = cfg
            .datapath
            .cores
            .iter()
            .enumerate()
            .map(|(i, &c)| PmdSpec {
                index: i,
                core: Some(c),
                rx: Vec::new(),
                capture: Some(capture.clone()),
                mailbox: Some(Arc::new(pmd::Mailbox::default())),
            })
            .collect();
        let mut k = 0;
        for (p, _) in &self.ports {
            for q in 0..p.rx_queues {
                specs[k % n_pmds].rx.push((PortNo(p.ofport), q));
                k += 1;
            }
        }
        let max_ofport = self.ports.iter().map(|(p, _)| p.ofport).max().unwrap_or(0) as usize;
        // Overlay: Geneve tunnels, port security, ARP responder, and the
        // local stack for the VTEP on PMD 0 (see `stack::overlay`).
        let uplink = cfg
            .uplink_port
            .as_ref()
            .and_then(|n| self.ports.iter().find(|(p, _)| &p.name == n))
            .map(|(p, d)| (PortNo(p.ofport), d.mac()));
        let mut overlay =
            crate::stack::overlay::Overlay::new(&cfg.datapath.overlay, n_pmds, uplink);
        // Connection tracking and the Service table, shared by the PMDs
        // (see `conntrack`); each PMD gets its own handle.
        let services = crate::service::Services::new(cfg.datapath.stateful.services.clone());
        let conntrack = crate::conntrack::Conntrack::with_services(
            cfg.datapath.stateful.conntrack.clone(),
            services.clone(),
        );
        let mut views = Vec::new();
        let mailboxes: Vec<Arc<pmd::Mailbox>> =
            specs.iter().filter_map(|s| s.mailbox.clone()).collect();
        for spec in specs {
            let mut handles: Vec<Option<ethdev::DpdkPort>> = vec![None; max_ofport + 1];
            for (p, dev) in &self.ports {
                handles[p.ofport as usize] = Some(dev.handle());
            }
            let init = || dpdk::register_thread();
            let t = match &flows {
                Some(tables) => {
                    let ct = conntrack.handle(spec.index as u64 + 1);
                    let ct_cache = ct.cache_counters();
                    let pl = FlowPipeline::with_hooks(
                        tables.clone(),
                        FlowPipelineConfig {
                            ports: ofports.clone(),
                            mac_capacity: cfg.datapath.mac_table_size,
                            mac_aging_ns: cfg.datapath.mac_aging_s.saturating_mul(1_000_000_000),
                            emc_insert_inv_prob: cfg.datapath.emc_insert_inv_prob,
                            ..Default::default()
                        },
                        crate::pipeline::hooks::Hooks {
                            ct,
                            tunnels: overlay.tunnel_hook(spec.index),
                        },
                    );
                    let fstats = pl.stats();
                    let seed = self
                        .pool
                        .as_ref()
                        .and_then(|p| p.alloc())
                        .ok_or("the mbuf pool is exhausted at start: raise [datapath] mbufs")?;
                    let pl = overlay.wrap(
                        spec.index,
                        pl,
                        crate::stack::overlay::SeedAlloc::new(seed),
                    )?;
                    let t = pmd::spawn(spec, handles, pl, self.stop.clone(), init);
                    t.inspect(|t| {
                        views.push(PmdView {
                            pmd: t.stats.clone(),
                            flow: Some(fstats),
                            ct_cache: Some(ct_cache),
                        });
                    })
                }
                None => {
                    let pl = L2Pipeline::new(
                        ofports.clone(),
                        cfg.datapath.mac_table_size,
                        cfg.datapath.mac_aging_s.saturating_mul(1_000_000_000),
                    );
                    pmd::spawn(spec, handles, pl, self.stop.clone(), init).inspect(|t| {
                        views.push(PmdView {
                            pmd: t.stats.clone(),
                            flow: None,
                            ct_cache: None,
                        });
                    })
                }
            }
            .map_err(|e| format!("cannot start PMD thread: {e}"))?;
            self.pmds.push(t);
        }

        let reg_err = |e: crate::ctl::RegistryError| format!("cannot register commands: {e}");
        commands::register_pmd(&registry, views).map_err(reg_err)?;
        commands::register_cache_dump(&registry, mailboxes).map_err(reg_err)?;
        let port_views = self
            .ports
            .iter()
            .map(|(p, d)| {
                let h = d.handle();
                let h2 = d.handle();
                PortView {
                    name: p.name.clone(),
                    ofport: p.ofport,
                    driver: d.driver(),
                    devargs: p.devargs.clone(),
                    stats: Box::new(move || h.stats()),
                    link: Box::new(move || h2.link()),
                }
            })
            .collect();
        commands::register_ports(&registry, &cfg.bridge, port_views).map_err(reg_err)?;
        let names: Vec<(String, u16)> = self
            .ports
            .iter()
            .map(|(p, _)| (p.name.clone(), p.ofport))
            .collect();
        commands::register_capture(&registry, capture, names).map_err(reg_err)?;
        if let Some(t) = &flows {
            let oracle = Arc::new(crate::conntrack::trace::CtTracer::new(
                conntrack.clone(),
                clock_ns,
            ));
            commands::register_flows(&registry, t.clone(), Some(oracle)).map_err(reg_err)?;
        }
        if flows.is_some() {
            overlay.register_commands(&registry).map_err(reg_err)?;
            crate::conntrack::commands::register_commands(&registry, conntrack.clone(), clock_ns)
                .map_err(reg_err)?;
            crate::service::commands::register_commands(&registry, services, Some(conntrack))
                .map_err(reg_err)?;
        }
        if let Some(t) = &flows {
            let (t, stop) = (t.clone(), self.stop.clone());
            let h = std::thread::Builder::new()
                .name("revalidator".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(std::time::Duration::from_secs(1));
                        let n = t.expire(clock_ns());
                        if n > 0 {
                            tracing::debug!("{n} flows expired");
                        }
                    }
                })
                .map_err(|e| format!("cannot start the revalidator thread: {e}"))?;
            self.revalidator = Some(h);
        }
        self.flows = flows;

        // Last: move the node's addresses onto the exception port once
        // the PMDs forward.
        self.hostpath = attach_host_path(cfg)?;
        let eal = self.eal.as_ref().ok_or("EAL not running")?;
        self.ready = json!({
            "event": "ready",
            "eal_init_ms": (eal_ms * 10.0).round() / 10.0,
            "hugepages": eal.hugepages,
            "pipeline": cfg.datapath.pipeline,
            "pmd_cores": cfg.datapath.cores,
            "ctl_socket": cfg.datapath.ctl_socket,
            "ports": self.ports.iter().map(|(p, d)| json!({
                "name": p.name, "ofport": p.ofport, "devargs": p.devargs,
                "driver": d.driver(), "dpdk_port_id": d.port_id(),
            })).collect::<Vec<_>>(),
        });
        Ok(())
    }

    /// Stops forwarding and tears everything down; returns the "stopped"
    /// event with final counters.
    pub fn shutdown(mut self) -> Result<Value, String> {
        // First: give the node's addresses back to the uplink.
        if let Some(h) = self.hostpath.take() {
            if let Err(e) = h.detach() {
                tracing::error!("{e}");
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut pmd_stats = Vec::new();
        for t in std::mem::take(&mut self.pmds) {
            let st = t.stats.clone();
            if let Err(e) = t.join() {
                errors.push(e);
            }
            let busy = st.busy_cycles.get();
            let rx = st.rx_packets.get();
            pmd_stats.push(json!({
                "index": st.index, "core": st.core,
                "rx_packets": rx, "tx_packets": st.tx_packets.get(),
                "busy_cycles": busy, "idle_cycles": st.idle_cycles.get(),
                "cycles_per_packet": if rx > 0 { busy as f64 / rx as f64 } else { 0.0 },
                "drops": st.drops.nonzero().into_iter()
                    .map(|(r, n)| (r.key().to_string(), json!(n)))
                    .collect::<serde_json::Map<_, _>>(),
            }));
            tracing::info!("{}", st.render().trim_end());
        }
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(p, d)| json!({"name": p.name, "ofport": p.ofport, "stats": d.handle().stats()}))
            .collect();
        self.teardown();
        if errors.is_empty() {
            Ok(json!({"event": "stopped", "pmds": pmd_stats, "ports": ports}))
        } else {
            Err(errors.join("; "))
        }
    }

    fn teardown(&mut self) {
        drop(self.hostpath.take());
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.revalidator.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        for t in std::mem::take(&mut self.pmds) {
            let _ = t.join();
        }
        if let Some(mut c) = self.ctl.take() {
            c.stop();
        }
        self.ports.clear();
        self.pool = None;
        self.eal = None;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Sets up the host exception path when `host_port` is configured: the
/// node's addresses move from the uplink's kernel interface to the host
/// port's. Called by the daemon once the PMDs forward.
///
/// # Errors
/// A sentence when the ports are not configured as needed or a move failed.
fn attach_host_path(
    cfg: &crate::config::Config,
) -> Result<Option<crate::hostpath::HostPath>, String> {
    use crate::hostpath::{devargs_iface, HostPath, HostPathConfig};
    let Some(host) = &cfg.datapath.overlay.host_port else {
        return Ok(None);
    };
    let port = |name: &str, what: &str| {
        cfg.ports
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| devargs_iface(&p.devargs).map(str::to_string))
            .ok_or_else(|| {
                format!("[datapath] host_port: the {what} port '{name}' must be a [port:{name}] section whose devargs name its kernel interface (iface=...)")
            })
    };
    let uplink = cfg.uplink_port.as_deref().ok_or(
        "[datapath] host_port needs [nsx_node_agent] ovs_uplink_port (where the node's addresses are now)",
    )?;
    let hp = HostPath::attach(HostPathConfig {
        uplink_if: port(uplink, "uplink")?,
        host_if: port(host, "host")?,
    })
    .map_err(|e| e.to_string())?;
    Ok(Some(hp))
}
