//! Control methods of the running daemon, served as [`sluice_api`] types:
//! PMD statistics, cycles by stage and rx-queue assignment, ports, per-PMD cache dumps and
//! packet capture. The port-related ones read the current port set through
//! a closure at every call, so ports added at run time (`port-add`, see
//! `daemon::ports`) appear in them. (The flow program's methods live in `flow::commands`,
//! the features' next to each feature.)
//!
//! Every handler runs on a control thread. PMD state is read through the
//! single-writer counters; `pmd-stats-clear` records a baseline (a
//! snapshot under a mutex only control threads take) instead of writing
//! counters a PMD owns.

use std::sync::{Arc, Mutex};

use sluice_api::{self as api, ApiError, Empty, ErrorCode};

use crate::ctl::registry::{Registry, RegistryError};
use crate::ctl::typed::register;
use crate::drop::DropReason;
use crate::pipeline::flow::FlowPipelineStats;
use crate::pmd::PmdStats;
use crate::port::{LinkState, PortStats};
use crate::time::clock_ns;

/// What `pmd-stats-show` reads for one PMD.
#[derive(Debug, Clone)]
pub struct PmdView {
    /// Generic PMD counters.
    pub pmd: Arc<PmdStats>,
    /// Flow pipeline counters, when the PMD runs the flow pipeline.
    pub flow: Option<Arc<FlowPipelineStats>>,
    /// This PMD's connection-cache counters, when it tracks connections.
    pub ct_cache: Option<Arc<crate::conntrack::CacheCounters>>,
}

/// Where the drop counters start in a [`snapshot`].
const DROPS_AT: usize = 16;

/// Counters of one PMD in a fixed order, so that a baseline can be
/// subtracted.
fn snapshot(v: &PmdView) -> Vec<u64> {
    let p = &v.pmd;
    let (rx, tx) = p.packets();
    let mut s = vec![
        rx,
        tx,
        p.rx_bursts.get(),
        p.busy_cycles.get(),
        p.idle_cycles.get(),
    ];
    match &v.flow {
        Some(f) => s.extend([
            f.emc.hit.get(),
            f.megaflow.tier.hit.get(),
            f.megaflow.tier.miss.get(),
            f.megaflow.probes.get(),
            f.upcalls.get(),
            f.recirculations.get(),
            f.packet_ins.get(),
        ]),
        None => s.extend([0; 7]),
    }
    match &v.ct_cache {
        Some(c) => s.extend([c.hits.get(), c.misses.get()]),
        None => s.extend([0; 2]),
    }
    s.push(v.flow.as_ref().map_or(0, |f| f.continuations.get()));
    s.push(v.flow.as_ref().map_or(0, |f| f.direct.get()));
    s.extend(DropReason::ALL.iter().map(|&r| p.drops.get(r)));
    s
}

/// One PMD's counters since start (the metrics: no clear baseline).
pub fn absolute_pmd_stats(v: &PmdView) -> api::pmd::PmdStats {
    view(v, &[])
}

/// One PMD's counters minus `base`, as the control API shows them.
fn view(v: &PmdView, base: &[u64]) -> api::pmd::PmdStats {
    let cur = snapshot(v);
    let d: Vec<u64> = cur
        .iter()
        .zip(base.iter().chain(std::iter::repeat(&0)))
        .map(|(c, b)| c.saturating_sub(*b))
        .collect();
    api::pmd::PmdStats {
        index: v.pmd.index,
        core: v.pmd.core,
        rx_packets: d[0],
        tx_packets: d[1],
        rx_bursts: d[2],
        busy_cycles: d[3],
        idle_cycles: d[4],
        flow_pipeline: v.flow.is_some(),
        emc_hits: d[5],
        megaflow_hits: d[6],
        megaflow_misses: d[7],
        megaflow_probes: d[8],
        upcalls: d[9],
        recirculations: d[10],
        packet_ins: d[11],
        // Every recirculation is one pass the continuation cache is asked
        // about (when it is on): what it did not answer went the long way.
        continuation_hits: d[14],
        continuation_misses: d[10].saturating_sub(d[14]),
        direct_hits: d[15],
        conntrack: v.ct_cache.is_some(),
        ct_cache_hits: d[12],
        ct_cache_misses: d[13],
        drops: DropReason::ALL
            .iter()
            .zip(&d[DROPS_AT..])
            .filter(|(_, &n)| n > 0)
            .map(|(&r, &n)| r.count(n))
            .collect(),
    }
}

/// One PMD's busy cycles by stage (`pmd-perf-show`): the PMD's own chain
/// (rx, process, tx, other) with `process` split by the flow pipeline into
/// parse (exact), the classifier tiers, actions, conntrack and encap/decap
/// (its exact body total in sampled proportions, see `pipeline::perf`),
/// and what wrappers around it (overlay, local stack) spent.
pub fn pmd_perf(v: &PmdView) -> api::pmd::PmdPerf {
    use crate::pipeline::perf::Stage;
    let p = &v.pmd;
    let stage = |name: &str, cycles: u64, estimated: bool| api::pmd::PerfStage {
        name: name.to_string(),
        cycles,
        estimated,
    };
    let mut stages = vec![stage("rx", p.rx_cycles.get(), false)];
    let process = p.process_cycles.get();
    let mut sampled_bursts = 0;
    match &v.flow {
        Some(f) => {
            let perf = &f.perf;
            let (parse, body, direct) = (perf.parse.get(), perf.body.get(), perf.direct.get());
            stages.push(stage(
                "direct path (specialised tables: parse, lookup, actions)",
                direct,
                false,
            ));
            stages.push(stage("parse (key extraction, hash)", parse, false));
            match perf.estimated_split() {
                Some(split) => {
                    sampled_bursts = perf.sampled_bursts.get();
                    for (s, c) in Stage::ALL.iter().zip(split) {
                        stages.push(stage(s.name(), c, true));
                    }
                }
                None => stages.push(stage("classify and actions (not sampled yet)", body, false)),
            }
            stages.push(stage(
                "other processing (overlay, local stack)",
                process.saturating_sub(parse + body + direct),
                false,
            ));
        }
        None => stages.push(stage("process (l2 pipeline)", process, false)),
    }
    stages.push(stage("tx", p.tx_cycles.get(), false));
    stages.push(stage("loop and housekeeping", p.other_cycles.get(), false));
    api::pmd::PmdPerf {
        index: p.index,
        core: p.core,
        rx_packets: p.rx_packets.get(),
        rx_bursts: p.rx_bursts.get(),
        busy_cycles: p.busy_cycles.get(),
        sampled_bursts,
        stages,
    }
}

/// `now` less the `pmd-stats-clear` snapshot `base`: the counts and each
/// stage's cycles (matched by name; a stage the snapshot lacks counts from
/// zero) since the clear.
fn perf_since(mut now: api::pmd::PmdPerf, base: Option<&api::pmd::PmdPerf>) -> api::pmd::PmdPerf {
    let Some(b) = base else {
        return now;
    };
    now.rx_packets = now.rx_packets.saturating_sub(b.rx_packets);
    now.rx_bursts = now.rx_bursts.saturating_sub(b.rx_bursts);
    now.busy_cycles = now.busy_cycles.saturating_sub(b.busy_cycles);
    now.sampled_bursts = now.sampled_bursts.saturating_sub(b.sampled_bursts);
    for st in &mut now.stages {
        if let Some(old) = b.stages.iter().find(|o| o.name == st.name) {
            st.cycles = st.cycles.saturating_sub(old.cycles);
        }
    }
    now
}

/// Registers `pmd-stats-show`, `pmd-stats-clear` and `pmd-perf-show` (and
/// their `dpif-netdev/` names).
pub fn register_pmd(reg: &Registry, pmds: Vec<PmdView>) -> Result<(), RegistryError> {
    let base: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); pmds.len()]));
    // `pmd-stats-clear` resets `pmd-perf-show` too (as in OVS): a
    // baseline per PMD, subtracted stage by stage.
    let perf_base: Arc<Mutex<Vec<Option<api::pmd::PmdPerf>>>> =
        Arc::new(Mutex::new(vec![None; pmds.len()]));
    let pmds = Arc::new(pmds);
    let (perf, pb) = (pmds.clone(), perf_base.clone());
    register::<api::pmd::PmdPerfShow>(reg, move |_| {
        let pb = pb.lock().unwrap_or_else(|e| e.into_inner());
        Ok(api::pmd::PmdPerfReply {
            pmds: perf
                .iter()
                .zip(pb.iter())
                .map(|(v, b)| perf_since(pmd_perf(v), b.as_ref()))
                .collect(),
        })
    })?;
    let (p, b) = (pmds.clone(), base.clone());
    register::<api::pmd::PmdStatsShow>(reg, move |_| {
        let base = b.lock().unwrap_or_else(|e| e.into_inner());
        Ok(api::pmd::PmdStatsReply {
            pmds: p.iter().zip(base.iter()).map(|(v, b)| view(v, b)).collect(),
        })
    })?;
    register::<api::pmd::PmdStatsClear>(reg, move |_| {
        let mut base = base.lock().unwrap_or_else(|e| e.into_inner());
        let mut pb = perf_base.lock().unwrap_or_else(|e| e.into_inner());
        for ((v, b), p) in pmds.iter().zip(base.iter_mut()).zip(pb.iter_mut()) {
            *b = snapshot(v);
            *p = Some(pmd_perf(v));
        }
        Ok(Empty {})
    })
}

/// Registers `pmd-rxq-show` (and `dpif-netdev/pmd-rxq-show`): which PMD
/// polls which rx queue of which port, as `rxqs` says at each call.
pub fn register_rxqs(
    reg: &Registry,
    rxqs: impl Fn() -> Vec<api::pmd::PmdRxqs> + Send + Sync + 'static,
) -> Result<(), RegistryError> {
    register::<api::pmd::PmdRxqShow>(reg, move |_| Ok(api::pmd::PmdRxqReply { pmds: rxqs() }))
}

/// What `dump-ports` shows for one port.
pub struct PortView {
    /// Port name.
    pub name: String,
    /// OpenFlow port number.
    pub ofport: u16,
    /// Driver name.
    pub driver: String,
    /// Devargs.
    pub devargs: String,
    /// `config`, `pod` or `devargs`.
    pub kind: String,
    /// The PMD polling each rx queue.
    pub pmds: Vec<usize>,
    /// Why a pod port fell back from af_xdp to af_packet.
    pub fallback: Option<String>,
    /// Reads counters.
    pub stats: Box<dyn Fn() -> PortStats + Send + Sync>,
    /// Reads link state.
    pub link: Box<dyn Fn() -> LinkState + Send + Sync>,
}

impl std::fmt::Debug for PortView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortView")
            .field("name", &self.name)
            .finish()
    }
}

/// Registers `dump-ports [PORT]` (like `ovs-ofctl dump-ports`) over the
/// ports `ports` returns at each call.
pub fn register_ports(
    reg: &Registry,
    bridge: &str,
    ports: impl Fn() -> Vec<PortView> + Send + Sync + 'static,
) -> Result<(), RegistryError> {
    let bridge = bridge.to_string();
    register::<api::ports::DumpPorts>(reg, move |r| {
        let ports = ports();
        let sel: Vec<&PortView> = match &r.port {
            None => ports.iter().collect(),
            Some(a) => vec![ports
                .iter()
                .find(|p| &p.name == a || p.ofport.to_string() == *a)
                .ok_or_else(|| ApiError::not_found(format!("no port named or numbered '{a}'")))?],
        };
        Ok(api::ports::PortDump {
            bridge: bridge.clone(),
            ports: sel
                .into_iter()
                .map(|v| {
                    let (st, l) = ((v.stats)(), (v.link)());
                    api::ports::PortInfo {
                        name: v.name.clone(),
                        ofport: v.ofport,
                        driver: v.driver.clone(),
                        devargs: v.devargs.clone(),
                        kind: v.kind.clone(),
                        rx_queues: v.pmds.len() as u16,
                        pmds: v.pmds.clone(),
                        fallback: v.fallback.clone(),
                        link: l,
                        stats: st,
                    }
                })
                .collect(),
        })
    })
}

/// Registers `dump-cache`: each PMD describes its EMC/megaflow caches
/// (megaflows with their masks and actions, subtable hit counts), asked
/// through its mailbox and answered between bursts.
pub fn register_cache_dump(
    reg: &Registry,
    mailboxes: Vec<Arc<crate::pmd::Mailbox>>,
) -> Result<(), RegistryError> {
    register::<api::pmd::DumpCache>(reg, move |_| {
        let pmds = mailboxes
            .iter()
            .map(|m| {
                m.ask(std::time::Duration::from_secs(5))
                    .map_err(|e| ApiError::new(ErrorCode::Unavailable, e))
            })
            .collect::<Result<_, _>>()?;
        Ok(api::pmd::CacheDump { pmds })
    })
}

/// Registers `capture PORT FILE [COUNT]`, `capture-stop` and
/// `capture-status`.
pub fn register_capture(
    reg: &Registry,
    capture: Arc<crate::capture::Capture>,
    ports: impl Fn() -> Vec<(String, u16)> + Send + Sync + 'static,
) -> Result<(), RegistryError> {
    let c = capture.clone();
    register::<api::ports::Capture>(reg, move |r| {
        r.check()?;
        let ports = ports();
        let ofport = api::ports::find_port(ports.iter().map(|(n, o)| (n.as_str(), *o)), &r.port)?;
        c.start(
            crate::packet::PortNo(ofport),
            std::path::Path::new(&r.file),
            r.count,
            clock_ns(),
        )
        .map_err(ApiError::failed)?;
        Ok(api::ports::CaptureStarted {
            port: r.port,
            file: r.file,
            count: r.count,
        })
    })?;
    let c = capture.clone();
    register::<api::ports::CaptureStop>(reg, move |_| {
        let st = c.stop().map_err(ApiError::failed)?;
        Ok(api::ports::CaptureStopped {
            written: st.written,
            file: st.file,
            missed: st.missed,
        })
    })?;
    register::<api::ports::CaptureStatus>(reg, move |_| Ok(capture.status()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::registry::Registry;
    use serde_json::json;

    fn call(reg: &Registry, cmd: &str, args: &[&str]) -> Result<String, String> {
        let ctx = crate::ctl::registry::DispatchContext { on_exit: &|| {} };
        let params = json!(args);
        reg.dispatch(cmd, &params, &ctx)
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    #[test]
    fn pmd_stats_clear_uses_a_baseline() {
        let reg = Registry::new();
        let pmd = Arc::new(PmdStats::default());
        pmd.rx_packets.add(10);
        pmd.busy_cycles.add(1000);
        pmd.drops.add(DropReason::TableMiss, 3);
        register_pmd(
            &reg,
            vec![PmdView {
                pmd: pmd.clone(),
                flow: None,
                ct_cache: None,
            }],
        )
        .unwrap();
        let s = call(&reg, "pmd-stats-show", &[]).unwrap();
        assert!(s.contains("packets received: 10"), "{s}");
        assert!(s.contains("table_miss: 3"), "{s}");
        call(&reg, "pmd-stats-clear", &[]).unwrap();
        pmd.rx_packets.add(5);
        let s = call(&reg, "pmd-stats-show", &[]).unwrap();
        assert!(s.contains("packets received: 5"), "{s}");
        // pmd-perf-show counts from the clear too.
        pmd.rx_cycles.add(70);
        let ctx = crate::ctl::registry::DispatchContext { on_exit: &|| {} };
        let perf: api::pmd::PmdPerfReply = serde_json::from_value(
            reg.dispatch("pmd-perf-show", &json!({}), &ctx)
                .expect("pmd-perf-show"),
        )
        .expect("a typed reply");
        let p = &perf.pmds[0];
        assert_eq!((p.rx_packets, p.busy_cycles), (5, 0), "{p:?}");
        let rx = p.stages.iter().find(|s| s.name == "rx").expect("rx stage");
        assert_eq!(rx.cycles, 70);
        assert!(s.contains("dropped: 0"), "{s}");
        assert_eq!(
            pmd.rx_packets.get(),
            15,
            "the PMD's own counter is untouched"
        );
    }

    #[test]
    fn pmd_stats_show_counts_continuation_hits_and_misses() {
        let reg = Registry::new();
        let pmd = Arc::new(PmdStats::default());
        let pipe = crate::pipeline::flow::FlowPipeline::new(
            crate::flow::tables::FlowTables::new(),
            crate::pipeline::flow::FlowPipelineConfig::default(),
        );
        let flow = pipe.stats();
        flow.recirculations.add(5);
        flow.continuations.add(3);
        register_pmd(
            &reg,
            vec![PmdView {
                pmd,
                flow: Some(flow.clone()),
                ct_cache: None,
            }],
        )
        .unwrap();
        let s = call(&reg, "pmd-stats-show", &[]).unwrap();
        assert!(
            s.contains("continuation hits: 3 (60.00% of recirculated passes)"),
            "{s}"
        );
        assert!(s.contains("continuation misses: 2"), "{s}");
        call(&reg, "pmd-stats-clear", &[]).unwrap();
        flow.recirculations.add(4);
        flow.continuations.add(4);
        let s = call(&reg, "pmd-stats-show", &[]).unwrap();
        assert!(s.contains("continuation hits: 4 (100.00%"), "{s}");
        assert!(s.contains("continuation misses: 0"), "{s}");
    }
}
