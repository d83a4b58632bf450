//! Control-socket commands of the running daemon: PMD statistics, ports
//! and the flow program.
//!
//! Every handler runs on a control thread. PMD state is read through the
//! single-writer counters; `pmd-stats-clear` records a baseline (a
//! snapshot under a mutex only control threads take) instead of writing
//! counters a PMD owns. Flow changes publish a new immutable program that
//! PMDs pick up between bursts.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::ctl::registry::{Registry, RegistryError};
use crate::drop::DropReason;
use crate::flow::tables::FlowTables;
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
const DROPS_AT: usize = 14;

/// Counters of one PMD in a fixed order, so that a baseline can be
/// subtracted.
fn snapshot(v: &PmdView) -> Vec<u64> {
    let p = &v.pmd;
    let mut s = vec![
        p.rx_packets.get(),
        p.tx_packets.get(),
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
    s.extend(DropReason::ALL.iter().map(|&r| p.drops.get(r)));
    s
}

/// Renders one PMD's counters minus `base`, in the layout of OVS's
/// `dpif-netdev/pmd-stats-show`.
fn render(v: &PmdView, base: &[u64]) -> String {
    let cur = snapshot(v);
    let d: Vec<u64> = cur
        .iter()
        .zip(base.iter().chain(std::iter::repeat(&0)))
        .map(|(c, b)| c.saturating_sub(*b))
        .collect();
    let (rx, tx, bursts, busy, idle) = (d[0], d[1], d[2], d[3], d[4]);
    let (emc, mf_hit, mf_miss, probes, upcalls, recirc, packet_ins) =
        (d[5], d[6], d[7], d[8], d[9], d[10], d[11]);
    let total = (busy + idle).max(1) as f64;
    let mut s = format!(
        "pmd thread index {}{}:\n",
        v.pmd.index,
        v.pmd
            .core
            .map(|c| format!(" core_id {c}"))
            .unwrap_or_default()
    );
    s += &format!("  packets received: {rx}\n");
    s += &format!("  packets sent: {tx}\n");
    s += &format!("  packet recirculations: {recirc}\n");
    s += &format!(
        "  avg. packets per rx burst: {:.2}\n",
        rx as f64 / bursts.max(1) as f64
    );
    if v.flow.is_some() {
        s += &format!("  emc hits: {emc}\n");
        s += &format!("  megaflow hits: {mf_hit}\n");
        s += &format!(
            "  avg. subtable lookups per megaflow lookup: {:.2}\n",
            probes as f64 / (mf_hit + mf_miss).max(1) as f64
        );
        s += &format!("  miss with success upcall: {upcalls}\n");
        s += &format!("  packet-ins: {packet_ins}\n");
    }
    if v.ct_cache.is_some() {
        let (hits, misses) = (d[12], d[13]);
        s += &format!(
            "  conntrack cache hits: {hits} ({:.2}% of lookups, no lock)\n",
            100.0 * hits as f64 / (hits + misses).max(1) as f64
        );
        s += &format!("  conntrack cache misses: {misses}\n");
    }
    s += &format!(
        "  idle cycles: {idle} ({:.2}%)\n",
        100.0 * idle as f64 / total
    );
    s += &format!(
        "  processing cycles: {busy} ({:.2}%)\n",
        100.0 * busy as f64 / total
    );
    if rx > 0 {
        s += &format!(
            "  avg cycles per packet: {:.2} ({busy}/{rx})\n",
            (busy + idle) as f64 / rx as f64
        );
        s += &format!(
            "  avg processing cycles per packet: {:.2} ({busy}/{rx})\n",
            busy as f64 / rx as f64
        );
    }
    let drops: Vec<(DropReason, u64)> = DropReason::ALL
        .iter()
        .zip(&d[DROPS_AT..])
        .filter(|(_, &n)| n > 0)
        .map(|(&r, &n)| (r, n))
        .collect();
    s += &format!("  dropped: {}\n", drops.iter().map(|x| x.1).sum::<u64>());
    for (r, n) in drops {
        s += &format!("    {}: {n} ({})\n", r.key(), r.description());
    }
    s
}

fn json_view(v: &PmdView, base: &[u64]) -> Value {
    let cur = snapshot(v);
    let d: Vec<u64> = cur
        .iter()
        .zip(base.iter().chain(std::iter::repeat(&0)))
        .map(|(c, b)| c.saturating_sub(*b))
        .collect();
    let drops: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .zip(&d[DROPS_AT..])
        .filter(|(_, &n)| n > 0)
        .map(|(r, &n)| (r.key().to_string(), json!(n)))
        .collect();
    json!({
        "index": v.pmd.index, "core": v.pmd.core,
        "rx_packets": d[0], "tx_packets": d[1], "rx_bursts": d[2],
        "busy_cycles": d[3], "idle_cycles": d[4],
        "emc_hits": d[5], "megaflow_hits": d[6], "megaflow_misses": d[7],
        "upcalls": d[9], "recirculations": d[10], "packet_ins": d[11],
        "ct_cache_hits": d[12], "ct_cache_misses": d[13],
        "drops": drops,
    })
}

/// Registers `pmd-stats-show` and `pmd-stats-clear`.
pub fn register_pmd(reg: &Registry, pmds: Vec<PmdView>) -> Result<(), RegistryError> {
    let base: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); pmds.len()]));
    let pmds = Arc::new(pmds);
    let (p, b) = (pmds.clone(), base.clone());
    reg.register(
        "pmd-stats-show",
        "",
        0,
        0,
        Arc::new(move |_| {
            let base = b.lock().unwrap_or_else(|e| e.into_inner());
            Ok(p.iter()
                .zip(base.iter())
                .map(|(v, b)| render(v, b))
                .collect::<String>())
        }),
    )?;
    let (p, b) = (pmds.clone(), base.clone());
    reg.register_method(
        "pmd-stats-show",
        Arc::new(move |_| {
            let base = b.lock().unwrap_or_else(|e| e.into_inner());
            Ok(json!(p
                .iter()
                .zip(base.iter())
                .map(|(v, b)| json_view(v, b))
                .collect::<Vec<_>>()))
        }),
    )?;
    reg.register(
        "pmd-stats-clear",
        "",
        0,
        0,
        Arc::new(move |_| {
            let mut base = base.lock().unwrap_or_else(|e| e.into_inner());
            for (v, b) in pmds.iter().zip(base.iter_mut()) {
                *b = snapshot(v);
            }
            Ok(String::new())
        }),
    )
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

/// Registers `dump-ports [PORT]` (text like `ovs-ofctl dump-ports`, and a
/// structured method of the same name).
pub fn register_ports(
    reg: &Registry,
    bridge: &str,
    ports: Vec<PortView>,
) -> Result<(), RegistryError> {
    let ports = Arc::new(ports);
    let select = |ports: &Arc<Vec<PortView>>, args: &[String]| -> Result<Vec<usize>, String> {
        match args.first() {
            None => Ok((0..ports.len()).collect()),
            Some(a) => ports
                .iter()
                .position(|p| &p.name == a || p.ofport.to_string() == *a)
                .map(|i| vec![i])
                .ok_or_else(|| format!("no port named or numbered '{a}'")),
        }
    };
    let (p, br) = (ports.clone(), bridge.to_string());
    reg.register(
        "dump-ports",
        "[PORT]",
        0,
        1,
        Arc::new(move |args| {
            let sel = select(&p, args)?;
            let mut s = format!("{br}: {} ports\n", sel.len());
            for i in sel {
                let v = &p[i];
                let st = (v.stats)();
                let l = (v.link)();
                s += &format!(
                    "  port {:>2} ({}): {} {}, driver {} ({})\n           rx pkts={}, bytes={}, drop={}, errs={}\n           tx pkts={}, bytes={}, errs={}\n",
                    v.ofport,
                    v.name,
                    if l.up { "link up" } else { "link down" },
                    if l.speed_mbps > 0 { format!("{} Mbps", l.speed_mbps) } else { "speed unknown".into() },
                    v.driver,
                    v.devargs,
                    st.rx_packets, st.rx_bytes, st.rx_dropped, st.rx_errors,
                    st.tx_packets, st.tx_bytes, st.tx_errors,
                );
            }
            Ok(s)
        }),
    )?;
    reg.register_method(
        "dump-ports",
        Arc::new(move |params| {
            let args: Vec<String> = params
                .get("args")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let sel = select(&ports, &args)?;
            Ok(json!(sel
                .into_iter()
                .map(|i| {
                    let v = &ports[i];
                    json!({"name": v.name, "ofport": v.ofport, "driver": v.driver,
                           "devargs": v.devargs, "link": (v.link)(), "stats": (v.stats)()})
                })
                .collect::<Vec<_>>()))
        }),
    )
}

/// Registers `dump-cache`: each PMD describes its EMC/megaflow caches
/// (megaflows with their masks and actions, subtable hit counts), asked
/// through its mailbox and answered between bursts.
pub fn register_cache_dump(
    reg: &Registry,
    mailboxes: Vec<Arc<crate::pmd::Mailbox>>,
) -> Result<(), RegistryError> {
    reg.register(
        "dump-cache",
        "",
        0,
        0,
        Arc::new(move |_| {
            let mut s = String::new();
            for (i, m) in mailboxes.iter().enumerate() {
                s += &format!("pmd thread index {i}:\n");
                s += &m.ask(std::time::Duration::from_secs(5))?;
            }
            Ok(s)
        }),
    )
}

/// Registers `capture PORT FILE [COUNT]`, `capture-stop` and
/// `capture-status`.
pub fn register_capture(
    reg: &Registry,
    capture: Arc<crate::capture::Capture>,
    ports: Vec<(String, u16)>,
) -> Result<(), RegistryError> {
    let c = capture.clone();
    reg.register(
        "capture",
        "PORT FILE [COUNT]",
        2,
        3,
        Arc::new(move |a| {
            let ofport = ports
                .iter()
                .find(|(n, o)| n == &a[0] || o.to_string() == a[0])
                .map(|(_, o)| *o)
                .ok_or_else(|| format!("no port named or numbered '{}'", a[0]))?;
            let count = match a.get(2) {
                None => None,
                Some(n) => Some(
                    n.parse::<u64>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("COUNT '{n}' is not a positive number"))?,
                ),
            };
            c.start(
                crate::packet::PortNo(ofport),
                std::path::Path::new(&a[1]),
                count,
                clock_ns(),
            )?;
            Ok(format!(
                "capturing port {} (rx and tx) into {}{}; stop with capture-stop\n",
                a[0],
                a[1],
                count
                    .map(|n| format!(", at most {n} packets"))
                    .unwrap_or_default()
            ))
        }),
    )?;
    let c = capture.clone();
    reg.register(
        "capture-stop",
        "",
        0,
        0,
        Arc::new(move |_| {
            let st = c.stop()?;
            Ok(format!(
                "{} packets written to {}, {} not captured (writer behind)\n",
                st.written,
                st.file.map(|f| f.display().to_string()).unwrap_or_default(),
                st.missed
            ))
        }),
    )?;
    reg.register(
        "capture-status",
        "",
        0,
        0,
        Arc::new(move |_| serde_json::to_string(&capture.status()).map_err(|e| e.to_string())),
    )
}

fn summary(s: crate::flow::program::BundleSummary) -> String {
    format!(
        "added {}, modified {}, deleted {}, groups {}\n",
        s.added, s.modified, s.deleted, s.groups
    )
}

/// Registers the flow-program commands (`add-flow`, `add-flows`,
/// `del-flows`, `mod-flows`, `dump-flows`, `replace-flows`, `add-group`,
/// `dump-groups`, `trace`) and the `flow-bundle` method.
pub fn register_flows(
    reg: &Registry,
    tables: FlowTables,
    oracle: Option<Arc<dyn crate::flow::tables::TraceOracle>>,
) -> Result<(), RegistryError> {
    type Apply =
        fn(
            &FlowTables,
            &str,
            crate::time::Nanos,
        )
            -> Result<crate::flow::program::BundleSummary, crate::flow::tables::FlowTablesError>;
    let one_text: [(&str, &str, Apply); 4] = [
        ("add-flow", "FLOW", FlowTables::add_flow),
        ("add-flows", "FLOWS (one per line)", FlowTables::add_flows),
        (
            "replace-flows",
            "FLOWS (one per line)",
            FlowTables::replace_flows,
        ),
        ("add-group", "GROUP", FlowTables::add_group),
    ];
    for (name, usage, apply) in one_text {
        let t = tables.clone();
        reg.register(
            name,
            usage,
            1,
            1,
            Arc::new(move |a| {
                apply(&t, &a[0], clock_ns())
                    .map(summary)
                    .map_err(|e| e.to_string())
            }),
        )?;
    }
    let t = tables.clone();
    reg.register(
        "del-flows",
        "[--strict] [MATCH]",
        0,
        2,
        Arc::new(move |a| {
            let strict = a.iter().any(|x| x == "--strict");
            let filter: Vec<&str> = a
                .iter()
                .filter(|x| *x != "--strict")
                .map(String::as_str)
                .collect();
            t.del_flows(filter.first().copied().unwrap_or(""), strict, clock_ns())
                .map(summary)
                .map_err(|e| e.to_string())
        }),
    )?;
    let t = tables.clone();
    reg.register(
        "mod-flows",
        "[--strict] FLOW",
        1,
        2,
        Arc::new(move |a| {
            let strict = a.iter().any(|x| x == "--strict");
            let flow = a
                .iter()
                .find(|x| *x != "--strict")
                .ok_or("mod-flows needs a FLOW")?;
            t.mod_flows(flow, strict, clock_ns())
                .map(summary)
                .map_err(|e| e.to_string())
        }),
    )?;
    let t = tables.clone();
    reg.register(
        "dump-flows",
        "[table=N] [MATCH]",
        0,
        2,
        Arc::new(move |a| {
            let filter = a.join(",");
            t.dump_flows(&filter, clock_ns()).map_err(|e| e.to_string())
        }),
    )?;
    let t = tables.clone();
    reg.register(
        "dump-groups",
        "",
        0,
        0,
        Arc::new(move |_| Ok(t.dump_groups())),
    )?;
    let t = tables.clone();
    reg.register(
        "trace",
        "FLOW|HEXPACKET",
        1,
        2,
        Arc::new(move |a| {
            t.trace_with(&a.join(" "), oracle.as_deref())
                .map_err(|e| e.to_string())
        }),
    )?;
    reg.register_method(
        "flow-bundle",
        Arc::new(move |params| {
            let ops = params
                .as_array()
                .ok_or("flow-bundle takes an array of operations")?;
            let mut mods = Vec::with_capacity(ops.len());
            for (i, op) in ops.iter().enumerate() {
                let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
                let strict = op.get("strict").and_then(Value::as_bool).unwrap_or(false);
                let text = |k: &str| {
                    op.get(k)
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("operation {i}: missing string field '{k}'"))
                };
                let m = match kind {
                    "add" => {
                        let f = text("flow")?;
                        if f.trim_start().starts_with("group_id=") {
                            crate::flow::program::FlowMod::AddGroup(
                                crate::flow::text::parse_group(f)
                                    .map_err(|e| format!("operation {i}: {e}"))?,
                            )
                        } else {
                            crate::flow::program::FlowMod::Add(
                                crate::flow::text::parse_flow(f)
                                    .map_err(|e| format!("operation {i}: {e}"))?,
                            )
                        }
                    }
                    "del" => crate::flow::program::FlowMod::Delete {
                        filter: crate::flow::text::parse_filter(text("match")?)
                            .map_err(|e| format!("operation {i}: {e}"))?,
                        strict,
                    },
                    "mod" => {
                        let (filter, actions) = crate::flow::text::parse_mod(text("flow")?)
                            .map_err(|e| format!("operation {i}: {e}"))?;
                        crate::flow::program::FlowMod::Modify {
                            filter,
                            strict,
                            actions,
                        }
                    }
                    other => {
                        return Err(format!(
                            "operation {i}: unknown op '{other}' (expected add, del or mod)"
                        ))
                    }
                };
                mods.push(m);
            }
            let s = tables
                .apply_bundle(&mods, clock_ns())
                .map_err(|e| e.to_string())?;
            Ok(json!({"added": s.added, "modified": s.modified, "deleted": s.deleted, "groups": s.groups}))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::registry::Registry;

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
        assert!(s.contains("dropped: 0"), "{s}");
        assert_eq!(
            pmd.rx_packets.get(),
            15,
            "the PMD's own counter is untouched"
        );
    }

    #[test]
    fn flow_commands_program_and_dump() {
        let reg = Registry::new();
        let tables = FlowTables::new();
        register_flows(&reg, tables.clone(), None).unwrap();
        call(
            &reg,
            "add-flow",
            &["table=0,priority=10,ip,nw_dst=10.0.0.0/24 actions=output:2"],
        )
        .unwrap();
        let dump = call(&reg, "dump-flows", &[]).unwrap();
        assert!(
            dump.contains("priority=10,ip,nw_dst=10.0.0.0/24 actions=output:2"),
            "{dump}"
        );
        let e = call(&reg, "add-flow", &["ip,nw_dst=10.0.0.300 actions=drop"]).unwrap_err();
        assert!(e.contains("invalid IPv4 address"), "{e}");
        call(&reg, "del-flows", &[]).unwrap();
        assert!(!call(&reg, "dump-flows", &[])
            .unwrap()
            .contains("priority=10"));
    }
}
