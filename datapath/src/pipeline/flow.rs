//! The flow-table pipeline: every packet through the classifier cascade
//! and its datapath actions.
//!
//! Keys sized to the program: the pipeline keeps the program's live mask
//! (`slowpath::live_mask`: every field a rule matches, plus the few actions
//! decide on, widened by every translation's megaflow mask, so it covers
//! everything a cached translation depends on). The parse stage hashes
//! only its bits, in its non-zero words, and the EMC compares only those:
//! an l2 program hashes 4 words, not 24, and two packets that differ only
//! in fields no rule looks at (source address and port for an l2
//! program, even where they share a word with a live field) share an EMC
//! entry. Keys equal on the live bits get the same translation, so sharing
//! is exact (proptests `live_word_emc_equals_slow_path`,
//! `keys_equal_on_live_words_translate_alike`,
//! `keys_equal_on_live_bits_translate_alike`).
//!
//! Per-flow batching (OVS's per-flow batches): within a burst, a packet
//! equal on the live bits to the packet before it that took a lookup (the
//! batch's leader) runs the leader's translation without a lookup of its
//! own; it is counted as an EMC hit (a megaflow hit with the EMC off).
//! When that translation recirculates (`tnl_pop`, `ct(table=N)`), only
//! the first pass is shared: a Geneve packet from the same outer flow as
//! its leader is decapsulated without an outer lookup, and its inner
//! frame is looked up on its own key. Proptest
//! `batched_bursts_equal_one_packet_bursts`.
//!
//! Direct path: when table 0 of the program is specialised
//! (`classifier::special`), a stage ahead of the parse sends every packet
//! whose walk meets only specialised tables with simple actions through
//! `classifier::direct` (index lookup, actions, rule counters) and leaves
//! the others, in order, to the cascade below; counted as `direct hits`
//! and, in `pmd-perf-show`, as the exact `direct` stage. Decided per
//! program (`direct::Plan`) at every reload; `direct_path = false` in the
//! configuration turns it off.
//!
//! Per packet: one [`extract`] into a [`FlowKey`], then the EMC, then the
//! megaflow cache, then (on a miss) the slow path, which installs the
//! megaflow and the EMC entry; then the cached [`DpAction`]s run on the
//! packet. Every drop is counted under a [`DropReason`]; per-tier hits are
//! in [`FlowPipelineStats`], shared with the control socket
//! (`pmd-stats-show`).
//!
//! Program updates: at the start of each burst and in `maintain`, the
//! pipeline compares the published generation of its [`FlowTables`] with
//! the one its caches were built from; on a change it takes the new program,
//! flushes the EMC and revalidates the megaflow cache (see
//! `FlowPipeline::reload`): no cached answer from an old program survives
//! unless the new program gives the same class the same mask-compatible
//! translation. No lock is taken and no packet is lost.
//!
//! Extension points: `ct(...)` and tunnel push/pop call an [`ActionHooks`]
//! implementation; [`NoHooks`] (the default) drops those packets under
//! `ct_unsupported` / `tunnel_unsupported`. `ct(table=N)` and `tnl_pop`
//! recirculate: the packet is classified again with `recirc_id` set (at
//! most [`MAX_RECIRC`] times).
//!
//! Steady state allocates nothing: keys live on the stack, cached actions
//! are shared `Arc`s, and outputs go to the reusable [`Output`] queues
//! (copies for multi-output actions come from [`PacketBuf::try_clone`]).
//!
//! Thread-safety: one instance per PMD thread (`Send`); the stats `Arc` is
//! read by other threads.

use std::sync::Arc;

use crate::classifier::direct;
use crate::classifier::emc::{Emc, EMC_ENTRIES, EMC_INSERT_INV_PROB};
use crate::classifier::megaflow::{MegaflowCache, MegaflowStats, MEGAFLOW_CAPACITY};
use crate::classifier::slowpath::{live_mask, translate, Xlate};
use crate::classifier::{prefetch, TierStats};
use crate::drop::DropReason;
use crate::flow::action::{rewrite, CtAction, DpAction};
use crate::flow::key::{extract_into, Field, FlowKey, Layout};
use crate::flow::program::FlowProgram;
use crate::flow::tables::FlowTables;
use crate::packet::{Burst, Output, PacketBuf, PortNo};
use crate::pipeline::cont::ContCache;
use crate::pipeline::hooks::{ActionHooks, NoHooks, Prefetch};
use crate::pipeline::l2::{flood, MacTable};
use crate::pipeline::perf::{Split, Stage, StageCycles, DEFAULT_SAMPLE_EVERY};
use crate::pipeline::Pipeline;
use crate::stats::Counter;
use crate::time::{cycles, Nanos};

/// Maximum recirculations per packet.
pub const MAX_RECIRC: usize = 4;

/// Largest megaflow cache revalidated on a program change; larger caches
/// are flushed (each revalidation is a slow-path translation on the PMD).
pub const REVALIDATE_LIMIT: usize = 1024;

/// How often `maintain` re-sorts megaflow subtables and ages MAC entries.
const HOUSEKEEPING_NS: u64 = 1_000_000_000;

/// Sizes and limits of one flow pipeline.
#[derive(Debug, Clone)]
pub struct FlowPipelineConfig {
    /// Ports `normal` floods to.
    pub ports: Vec<PortNo>,
    /// EMC slots.
    pub emc_entries: usize,
    /// A megaflow hit or upcall caches its key in the EMC with probability
    /// 1 / this (0: EMC disabled; see `classifier::emc`).
    pub emc_insert_inv_prob: u32,
    /// Megaflow cache capacity.
    pub megaflow_capacity: usize,
    /// MAC table capacity for `normal`.
    pub mac_capacity: usize,
    /// MAC aging for `normal`.
    pub mac_aging_ns: u64,
    /// The MAC table `normal` learns into, shared with the other PMDs'
    /// pipelines (`None`: a new table of `mac_capacity`, `mac_aging_ns`).
    pub mac_table: Option<MacTable>,
    /// Packet-in rate to the controller queue, packets per second.
    pub controller_rate: u64,
    /// Packet-in burst allowance.
    pub controller_burst: u64,
    /// One burst in this many has its cycles split by stage
    /// (`pmd-perf-show`; 0: never, 1: every burst). See `pipeline::perf`.
    pub perf_sample_every: u32,
    /// Classify recirculated passes through the continuation cache
    /// (`pipeline::cont`) before the EMC.
    pub continuation_cache: bool,
    /// Send packets whose tables are all specialised, with simple actions,
    /// down the direct path (`classifier::direct`) instead of the cascade.
    pub direct_path: bool,
}

impl Default for FlowPipelineConfig {
    fn default() -> Self {
        FlowPipelineConfig {
            ports: Vec::new(),
            emc_entries: EMC_ENTRIES,
            emc_insert_inv_prob: EMC_INSERT_INV_PROB,
            megaflow_capacity: MEGAFLOW_CAPACITY,
            mac_capacity: 8192,
            mac_aging_ns: 300_000_000_000,
            mac_table: None,
            controller_rate: 1000,
            controller_burst: 100,
            perf_sample_every: DEFAULT_SAMPLE_EVERY,
            direct_path: true,
            continuation_cache: true,
        }
    }
}

/// Per-PMD counters of the flow pipeline, shared with the control socket.
#[derive(Debug)]
pub struct FlowPipelineStats {
    /// Packets received.
    pub packets: Counter,
    /// EMC hits/misses.
    pub emc: Arc<TierStats>,
    /// Megaflow hits/misses and installs.
    pub megaflow: Arc<MegaflowStats>,
    /// Slow-path translations (megaflow misses).
    pub upcalls: Counter,
    /// Times a new program was picked up (caches flushed).
    pub reloads: Counter,
    /// Recirculations (ct(table=), tnl_pop).
    pub recirculations: Counter,
    /// Packets sent to the controller queue.
    pub packet_ins: Counter,
    /// Recirculated passes classified by the continuation cache (no EMC
    /// probe; see `pipeline::cont`).
    pub continuations: Counter,
    /// Packets forwarded by the direct path (`classifier::direct`: looked
    /// up in specialised tables, no EMC or megaflow probe).
    pub direct: Counter,
    /// Cycles by stage (`pmd-perf-show`).
    pub perf: StageCycles,
}

impl FlowPipelineStats {
    /// `pmd-stats-show` lines for this PMD.
    pub fn show(&self) -> String {
        let mf = &self.megaflow;
        let hits = mf.tier.hit.get();
        let avg = if hits + mf.tier.miss.get() == 0 {
            0.0
        } else {
            mf.probes.get() as f64 / (hits + mf.tier.miss.get()) as f64
        };
        format!(
            "  packets received: {}\n  emc hits: {}\n  megaflow hits: {}\n  avg. subtable lookups per megaflow lookup: {avg:.2}\n  miss with success upcall: {}\n  continuation hits: {}\n  direct hits: {}\n  megaflows installed: {}\n  megaflow cache full flushes: {}\n  megaflows revalidated: {}\n  megaflows evicted by revalidation: {}\n  program reloads: {}\n  recirculations: {}\n  packet-ins: {}\n",
            self.packets.get(),
            self.emc.hit.get(),
            hits,
            self.upcalls.get(),
            self.continuations.get(),
            self.direct.get(),
            mf.installed.get(),
            mf.flushes_full.get(),
            mf.revalidated.get(),
            mf.evicted.get(),
            self.reloads.get(),
            self.recirculations.get(),
            self.packet_ins.get(),
        )
    }
}

/// A token bucket over the caller's clock (packet-in rate limit).
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: u64,
    /// Capacity in nano-tokens (tokens × 1e9).
    cap: u128,
    /// Available nano-tokens.
    level: u128,
    last: Nanos,
}

impl TokenBucket {
    const ONE: u128 = 1_000_000_000;

    fn new(rate: u64, burst: u64) -> Self {
        let cap = u128::from(burst.max(1)) * Self::ONE;
        TokenBucket {
            rate,
            cap,
            level: cap,
            last: 0,
        }
    }

    fn take(&mut self, now: Nanos) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        self.level = (self.level + u128::from(elapsed) * u128::from(self.rate)).min(self.cap);
        if self.level >= Self::ONE {
            self.level -= Self::ONE;
            true
        } else {
            false
        }
    }
}

/// The parts of the pipeline that action execution needs.
struct Exec<'a, H> {
    now: Nanos,
    mac: &'a mut MacTable,
    hooks: &'a mut H,
    ports: &'a [PortNo],
    bucket: &'a mut TokenBucket,
    stats: &'a FlowPipelineStats,
    split: &'a mut Split,
    /// Set when a `ct(...)` runs (the next burst prefetches conntrack
    /// buckets).
    ct_ran: &'a mut bool,
}

/// How an action list ended.
enum Outcome<B> {
    /// The packet was sent, dropped or freed.
    Done {
        /// At least one copy was sent somewhere.
        sent: bool,
    },
    /// Classify the (possibly rewritten) packet again.
    Recirculate {
        pkt: B,
        /// The frame changed shape (decapsulation): its new layout (the
        /// hook already put the new frame's key in place).
        reparse: Option<Layout>,
        /// Copies already sent.
        sent: bool,
    },
}

impl<H> Exec<'_, H> {
    fn run<B: PacketBuf>(
        &mut self,
        actions: &[DpAction],
        pkt: B,
        key: &mut FlowKey,
        layout: Layout,
        out: &mut Output<B>,
    ) -> Outcome<B>
    where
        H: ActionHooks<B>,
    {
        // The lists a decapsulated packet runs (`tnl_pop`, then the inner
        // flow's one output), without the interpreter loop: the same
        // steps as its arms below.
        match actions {
            [DpAction::Output(port)] => {
                let port = if *port == PortNo::IN_PORT {
                    key.in_port()
                } else {
                    *port
                };
                out.send(port, pkt);
                return Outcome::Done { sent: true };
            }
            [DpAction::TunnelPop] => {
                let mut pkt = pkt;
                self.split.enter(Stage::Tunnel);
                let r = self.hooks.tunnel_pop(self.now, &mut pkt, key);
                self.split.enter(Stage::Actions);
                return match r {
                    Ok(inner) => Outcome::Recirculate {
                        pkt,
                        reparse: Some(inner),
                        sent: false,
                    },
                    Err(r) => {
                        out.drop(r, pkt);
                        Outcome::Done { sent: false }
                    }
                };
            }
            _ => {
                if let Some((sets, port)) = encap_shape(actions) {
                    let sent = encap_and_output(
                        self.hooks, self.split, self.now, sets, port, pkt, key, out,
                    );
                    return Outcome::Done { sent };
                }
            }
        }
        let mut pkt = Some(pkt);
        let mut sent = false;
        let n = actions.len();
        let final_drop = matches!(actions.last(), Some(DpAction::Drop(_)));
        for (i, a) in actions.iter().enumerate() {
            let Some(p) = pkt.as_mut() else { break };
            // The last packet-consuming action moves the packet; earlier
            // ones send copies.
            let last = i + 1 == n || (final_drop && i + 2 == n);
            macro_rules! take_or_copy {
                () => {
                    if last {
                        pkt.take()
                    } else {
                        match p.try_clone() {
                            Some(c) => Some(c),
                            None => {
                                out.drops.inc(DropReason::NoBuffer);
                                None
                            }
                        }
                    }
                };
            }
            match a {
                DpAction::Output(port) => {
                    let port = if *port == PortNo::IN_PORT {
                        key.in_port()
                    } else {
                        *port
                    };
                    if let Some(c) = take_or_copy!() {
                        out.send(port, c);
                        sent = true;
                    }
                }
                DpAction::Controller { max_len } => {
                    if !self.bucket.take(self.now) {
                        out.drops.inc(DropReason::ControllerLimit);
                        if last {
                            pkt = None;
                        }
                        continue;
                    }
                    if let Some(mut c) = take_or_copy!() {
                        let len = c.len();
                        let keep = usize::from(*max_len);
                        if keep != 0 && keep < len {
                            c.trim(len - keep);
                        }
                        out.controller.push(c);
                        self.stats.packet_ins.inc();
                        sent = true;
                    }
                }
                DpAction::Normal => {
                    if let Some(c) = take_or_copy!() {
                        sent |= self.normal(c, key, out);
                    }
                }
                DpAction::Set { field, value, mask } => {
                    if let Err(r) = rewrite(p.data_mut(), layout, key, *field, *value, *mask) {
                        if let Some(p) = pkt.take() {
                            out.drop(r, p);
                        }
                        return Outcome::Done { sent };
                    }
                    key.set_masked(*field, *value, *mask);
                }
                DpAction::Ct(ct) => {
                    *self.ct_ran = true;
                    self.split.enter(Stage::Conntrack);
                    let r = self.hooks.conntrack(self.now, ct, p, key);
                    self.split.enter(Stage::Actions);
                    if let Err(r) = r {
                        if let Some(p) = pkt.take() {
                            out.drop(r, p);
                        }
                        return Outcome::Done { sent };
                    }
                    if let Some(t) = ct.table {
                        key.set(Field::RecircId, u128::from(t) + 1);
                        if let Some(pkt) = pkt.take() {
                            return Outcome::Recirculate {
                                pkt,
                                reparse: None,
                                sent,
                            };
                        }
                    }
                }
                DpAction::TunnelPush => {
                    self.split.enter(Stage::Tunnel);
                    let r = self.hooks.tunnel_push(self.now, p, key);
                    self.split.enter(Stage::Actions);
                    if let Err(r) = r {
                        if let Some(p) = pkt.take() {
                            out.drop(r, p);
                        }
                        return Outcome::Done { sent };
                    }
                }
                DpAction::TunnelPop => {
                    self.split.enter(Stage::Tunnel);
                    // Single pass: the hook parses the inner frame into
                    // `key` as it decapsulates.
                    let r = self.hooks.tunnel_pop(self.now, p, key);
                    self.split.enter(Stage::Actions);
                    let inner = match r {
                        Ok(l) => l,
                        Err(r) => {
                            if let Some(p) = pkt.take() {
                                out.drop(r, p);
                            }
                            return Outcome::Done { sent };
                        }
                    };
                    if let Some(pkt) = pkt.take() {
                        return Outcome::Recirculate {
                            pkt,
                            reparse: Some(inner),
                            sent,
                        };
                    }
                }
                DpAction::Clone(inner) => {
                    let Some(copy) = p.try_clone() else {
                        out.drops.inc(DropReason::NoBuffer);
                        continue;
                    };
                    let mut k2 = *key;
                    match self.run(inner, copy, &mut k2, layout, out) {
                        Outcome::Done { sent: s } => sent |= s,
                        Outcome::Recirculate {
                            pkt: c, sent: s, ..
                        } => {
                            sent |= s;
                            out.drop(DropReason::RecircLimit, c);
                        }
                    }
                }
                DpAction::Drop(reason) => {
                    if let Some(p) = pkt.take() {
                        if sent {
                            drop(p);
                        } else {
                            out.drop(*reason, p);
                        }
                    }
                    return Outcome::Done { sent };
                }
            }
        }
        if let Some(p) = pkt {
            if sent {
                drop(p);
            } else {
                out.drop(DropReason::FlowDrop, p);
            }
        }
        Outcome::Done { sent }
    }

    /// The `normal` action: learn the source, forward to the learned port
    /// or flood. Returns true when the packet was sent.
    fn normal<B: PacketBuf>(&mut self, pkt: B, key: &FlowKey, out: &mut Output<B>) -> bool {
        let mac = |f: Field| {
            let b = (key.get(f) as u64).to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        };
        let (src, dst) = (mac(Field::DlSrc), mac(Field::DlDst));
        let vlan = (key.get(Field::VlanTci) as u16) & 0x0fff;
        let in_port = key.in_port();
        if src[0] & 1 != 0 {
            out.drop(DropReason::L2SrcMulticast, pkt);
            return false;
        }
        self.mac.learn(src, vlan, in_port, self.now);
        if dst[0] & 1 == 0 {
            if let Some(port) = self.mac.lookup(dst, vlan, self.now) {
                if port == in_port {
                    out.drop(DropReason::L2SamePort, pkt);
                    return false;
                }
                out.send(port, pkt);
                return true;
            }
        }
        if self.ports.iter().all(|&p| p == in_port) {
            out.drop(DropReason::L2FloodNoPort, pkt);
            return false;
        }
        flood(self.ports, in_port, pkt, out);
        true
    }
}

/// The flow-table pipeline of one PMD.
pub struct FlowPipeline<H = NoHooks> {
    tables: FlowTables,
    program: Arc<FlowProgram>,
    generation: u64,
    emc: Emc,
    megaflow: MegaflowCache,
    mac: MacTable,
    hooks: H,
    ports: Vec<PortNo>,
    bucket: TokenBucket,
    stats: Arc<FlowPipelineStats>,
    last_housekeeping: Nanos,
    /// Rule-counter updates of the burst being processed, applied at its
    /// end: consecutive packets with the same translation are counted once
    /// per run (fewer shared atomics), and the counters of all runs are
    /// prefetched before the first atomic, so with many flows the cache
    /// misses on different rules' counters overlap instead of stalling
    /// each packet (they were ~20% of the l3/10000 profile). Capacity
    /// reserved once.
    pending: Vec<(Arc<Xlate>, u64, u64)>,
    /// The parsed keys of the burst being processed (stage one of
    /// [`Pipeline::process`]: its first entries, one per packet; entries
    /// are reused, never cleared); capacity reserved once.
    parsed: Vec<Parsed>,
    /// The per-stage split of sampled bursts (`pipeline::perf`).
    split: Split,
    /// Every key bit a translation of this program has looked at or may
    /// look at (`slowpath::live_mask`, widened by each translation's
    /// megaflow mask): keys equal on it get the same translation.
    live: FlowKey,
    /// The non-zero words of `live`: the EMC hashes and compares only
    /// these (the program's key size).
    words: Vec<u8>,
    /// A `ct(...)` ran in the last burst: this one prefetches the
    /// conntrack buckets of its packets (bulk lookup).
    ct_ran: bool,
    /// Where recirculated passes continue (`None`: disabled).
    cont: Option<ContCache>,
    /// One copy of each distinct action list of this PMD's translations
    /// (see [`intern_actions`]).
    action_lists: std::collections::HashSet<Arc<[DpAction]>>,
    /// Whether `direct_path` is configured.
    direct_enabled: bool,
    /// Whether the current program sends packets down the direct path.
    direct: direct::Plan,
    /// The direct stage's parsed keys.
    direct_scratch: direct::Scratch,
}

/// Most distinct action lists [`intern_actions`] remembers before
/// it starts afresh.
const ACTION_LISTS_MAX: usize = 16_384;

/// A packet's key, header offsets and key hash, from the parse stage.
#[derive(Clone, Copy)]
struct Parsed {
    key: FlowKey,
    layout: Layout,
    hash: u64,
}

impl<H> std::fmt::Debug for FlowPipeline<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowPipeline")
            .field("generation", &self.generation)
            .field("megaflows", &self.megaflow.len())
            .finish_non_exhaustive()
    }
}

impl FlowPipeline<NoHooks> {
    /// A pipeline over `tables` without conntrack or tunnel support.
    pub fn new(tables: FlowTables, config: FlowPipelineConfig) -> Self {
        Self::with_hooks(tables, config, NoHooks::default())
    }
}

impl<H> FlowPipeline<H> {
    /// A pipeline over `tables` whose ct/tunnel actions call `hooks`.
    pub fn with_hooks(tables: FlowTables, config: FlowPipelineConfig, hooks: H) -> Self {
        let program = tables.program();
        let direct = direct::Plan {
            active: config.direct_path && direct::Plan::of(&program).active,
        };
        let live = live_mask(&program);
        let words = live.nonzero_words();
        let mut emc = Emc::new(config.emc_entries, config.emc_insert_inv_prob);
        emc.set_live(&live);
        let megaflow = MegaflowCache::new(config.megaflow_capacity);
        let stats = Arc::new(FlowPipelineStats {
            packets: Counter::default(),
            emc: emc.stats(),
            megaflow: megaflow.stats(),
            upcalls: Counter::default(),
            reloads: Counter::default(),
            recirculations: Counter::default(),
            packet_ins: Counter::default(),
            continuations: Counter::default(),
            direct: Counter::default(),
            perf: StageCycles::default(),
        });
        FlowPipeline {
            generation: program.generation,
            program,
            tables,
            emc,
            megaflow,
            mac: config
                .mac_table
                .unwrap_or_else(|| MacTable::new(config.mac_capacity, config.mac_aging_ns)),
            hooks,
            ports: config.ports,
            bucket: TokenBucket::new(config.controller_rate, config.controller_burst),
            stats,
            last_housekeeping: 0,
            pending: Vec::with_capacity(2 * crate::packet::BURST_SIZE),
            parsed: Vec::with_capacity(crate::packet::BURST_SIZE),
            split: Split::new(config.perf_sample_every),
            live,
            words,
            ct_ran: false,
            cont: config.continuation_cache.then(ContCache::new),
            action_lists: std::collections::HashSet::new(),
            direct_enabled: config.direct_path,
            direct,
            direct_scratch: direct::Scratch::default(),
        }
    }

    /// This PMD's counters.
    pub fn stats(&self) -> Arc<FlowPipelineStats> {
        self.stats.clone()
    }

    /// Number of megaflows cached.
    pub fn megaflow_count(&self) -> usize {
        self.megaflow.len()
    }

    /// This PMD's megaflows, one per line (`dpctl/dump-flows`); call it on
    /// the PMD thread (the cache is not shared).
    pub fn dump_megaflows(&self) -> String {
        self.megaflow.dump()
    }

    /// Number of distinct megaflow masks.
    pub fn megaflow_masks(&self) -> usize {
        self.megaflow.n_masks()
    }

    /// Picks up a newly published program and revalidates the caches.
    #[inline]
    fn check_program(&mut self) {
        if self.tables.generation() != self.generation {
            self.reload();
        }
    }

    /// Takes the current program. Each megaflow is re-translated from its
    /// masked key (a member of its own class); it stays, with the new
    /// actions, when the new megaflow mask is within the old one (then
    /// every packet of the old class gets those actions), and is removed
    /// otherwise. Above [`REVALIDATE_LIMIT`] megaflows the cache is flushed
    /// instead, bounding the pause. The EMC is always flushed (it refills
    /// from the megaflows at one probe per flow).
    #[cold]
    fn reload(&mut self) {
        self.program = self.tables.program();
        self.generation = self.program.generation;
        self.emc.flush();
        if let Some(c) = &mut self.cont {
            c.flush();
        }
        let mut live = live_mask(&self.program);
        self.action_lists.clear();
        if self.megaflow.len() <= REVALIDATE_LIMIT {
            let prog = &self.program;
            let lists = &mut self.action_lists;
            self.megaflow.revalidate(|masked, mask| {
                let t = translate(prog, masked, None);
                live.or_assign(&t.mask);
                t.mask
                    .is_subset_of(mask)
                    .then(|| intern_actions(lists, t.xlate))
            });
        } else {
            self.megaflow.flush();
        }
        self.set_live(live);
        self.direct.active = self.direct_enabled && direct::Plan::of(&self.program).active;
        self.stats.reloads.inc();
    }

    /// Takes `live` as the live mask: the EMC hashes and compares its
    /// words from now on (and is flushed if they changed).
    #[cold]
    fn set_live(&mut self, live: FlowKey) {
        self.live = live;
        self.words = live.nonzero_words();
        self.emc.set_live(&live);
    }

    /// The word indices of the key the EMC hashes and compares for the
    /// current program.
    pub fn live_words(&self) -> &[u8] {
        &self.words
    }

    /// The slow path: translates `key`, installs the megaflow and the EMC
    /// entry, and returns the translation.
    #[cold]
    fn upcall(&mut self, key: &FlowKey, hash: u64) -> (Arc<Xlate>, FlowKey) {
        self.stats.upcalls.inc();
        let mut t = translate(&self.program, key, None);
        t.xlate = intern_actions(&mut self.action_lists, t.xlate);
        self.megaflow.insert(key, &t.mask, t.xlate.clone());
        let hash = if t.mask.is_subset_of(&self.live) {
            hash
        } else {
            // A bit the program's rules did not show (a select group's
            // hash fields...): key the EMC on it too, from now on.
            let mut live = self.live;
            live.or_assign(&t.mask);
            self.set_live(live);
            key.hash_live(&self.live, &self.words)
        };
        self.emc.offer(key, hash, &t.xlate);
        (t.xlate, t.mask)
    }

    /// Looks `key` up through EMC → megaflow → slow path (tests).
    #[cfg(test)]
    fn classify(&mut self, key: &FlowKey) -> Arc<Xlate> {
        let hash = key.hash_live(&self.live, &self.words);
        if let Some(x) = self.emc.lookup(key, hash) {
            return x.clone();
        }
        if let Some(x) = self.megaflow.lookup(key) {
            let x = x.clone();
            self.emc.offer(key, hash, &x);
            return x;
        }
        self.upcall(key, hash).0
    }

    /// The direct stage (`classifier::direct::run_burst`): packets whose
    /// walk meets only specialised tables with simple actions are parsed,
    /// looked up and executed there; the others stay in `burst` (in order)
    /// for the cascade, which parses them again.
    fn direct_stage<B: PacketBuf>(
        &mut self,
        now: Nanos,
        burst: &mut Burst<B>,
        out: &mut Output<B>,
    ) {
        let n = direct::run_burst(
            &self.program,
            now,
            burst.in_port,
            &mut burst.pkts,
            &mut self.direct_scratch,
            out,
        );
        self.stats.direct.add(n);
    }

    /// Applies pending rule-counter updates: prefetches every counter
    /// first, then counts.
    fn flush_counts(&mut self, now: Nanos) {
        for (x, _, _) in &self.pending {
            for r in x.rules.iter() {
                prefetch(Arc::as_ptr(r));
            }
        }
        for (x, n, b) in self.pending.drain(..) {
            for r in x.rules.iter() {
                r.hit(n, b, now);
            }
        }
    }

    /// Where the translation at `x` counts in `pending`: one of the last
    /// two entries. A recirculating packet alternates between two
    /// translations (`tnl_pop` then the inner flow's, `ct(table=N)` then
    /// its continuation), so a burst of them keeps counting into the same
    /// two entries instead of pushing one per pass (an `Arc` clone, and at
    /// the flush a drop and three rule-counter atomics, per pass).
    #[inline]
    fn pending_slot(&self, x: *const Xlate) -> Option<usize> {
        let n = self.pending.len();
        (n.saturating_sub(2)..n)
            .rev()
            .find(|&i| Arc::as_ptr(&self.pending[i].0) == x)
    }

    /// Classifies and executes one packet (parsed as `first`),
    /// recirculating as asked. With `follow`, the packet is a follower of
    /// a batch whose leader's first-pass translation is at
    /// `pending[follow]`: its first pass takes that translation without a
    /// lookup (exact: keys equal on the live bits translate alike, however
    /// the packet continues), and only its later passes (the inner frame
    /// after `tnl_pop`, the continuation after `ct(table=N)`) are looked
    /// up. Returns the index in `pending` of its first-pass translation
    /// and whether that translation is single-pass: later packets of the
    /// burst equal to it on the live words may take it without a lookup.
    fn one_packet<B: PacketBuf>(
        &mut self,
        now: Nanos,
        first: &Parsed,
        pkt: B,
        out: &mut Output<B>,
        follow: Option<usize>,
    ) -> Option<(usize, bool)>
    where
        H: ActionHooks<B>,
    {
        if pkt.len() < 14 {
            out.drop(DropReason::RxTooShort, pkt);
            return None;
        }
        let mut key = first.key;
        let mut layout = first.layout;
        let mut pkt = pkt;
        // The translation of the previous pass (its address: the pending
        // counters hold it alive), where a recirculation continues from.
        let mut prev: Option<*const Xlate> = None;
        // The first pass's slot in `pending`, once the packet recirculated.
        let mut first_pass: Option<(usize, bool)> = None;
        for pass in 0..=MAX_RECIRC {
            // Borrow the cached translation in place (no refcount traffic
            // on a cache hit); only a slow-path result is owned here.
            let bytes = pkt.len() as u64;
            if let (0, Some(j)) = (pass, follow) {
                self.split.enter(Stage::Actions);
                let slot = self.count_pending(j, bytes);
                let xlate = &self.pending[slot].0;
                prev = Some(Arc::as_ptr(xlate));
                if let Some((ct, t)) = ct_recirc_shape(&xlate.actions) {
                    let r = ct_recirc(
                        &mut self.hooks,
                        &mut self.split,
                        &mut self.ct_ran,
                        now,
                        ct,
                        t,
                        &mut pkt,
                        &mut key,
                    );
                    if let Err(r) = r {
                        out.drop(r, pkt);
                        return Some((slot, xlate.single_pass));
                    }
                    first_pass = Some((slot, false));
                    self.stats.recirculations.inc();
                    continue;
                }
                let mut exec = Exec {
                    now,
                    mac: &mut self.mac,
                    hooks: &mut self.hooks,
                    ports: &self.ports,
                    bucket: &mut self.bucket,
                    stats: &self.stats,
                    split: &mut self.split,
                    ct_ran: &mut self.ct_ran,
                };
                match exec.run(&xlate.actions, pkt, &mut key, layout, out) {
                    Outcome::Done { .. } => return Some((slot, xlate.single_pass)),
                    Outcome::Recirculate {
                        pkt: p, reparse, ..
                    } => {
                        first_pass = Some((slot, false));
                        self.stats.recirculations.inc();
                        if let Some(l) = reparse {
                            layout = l;
                        }
                        pkt = p;
                        continue;
                    }
                }
            }
            self.split.enter(Stage::Emc);
            let mut owned: Option<Arc<Xlate>> = None;
            let cont = match (&self.cont, prev) {
                (Some(c), Some(x0)) => c.lookup(x0, &key),
                _ => None,
            };
            let xlate: &Arc<Xlate> = match cont {
                Some(x) => {
                    self.stats.continuations.inc();
                    x
                }
                None => {
                    // A continuation missed: the previous translation, to
                    // learn this pass's under it.
                    let x0 = match (&self.cont, prev) {
                        (Some(_), Some(p)) => {
                            self.pending_slot(p).map(|i| self.pending[i].0.clone())
                        }
                        _ => None,
                    };
                    let hash = if pass == 0 {
                        first.hash
                    } else {
                        key.hash_live(&self.live, &self.words)
                    };
                    let (x, mask): (&Arc<Xlate>, Option<FlowKey>) =
                        match self.emc.lookup(&key, hash) {
                            Some(x) => (x, None),
                            None => {
                                self.split.enter(Stage::Megaflow);
                                match self.megaflow.lookup(&key) {
                                    Some(x) => {
                                        self.emc.offer(&key, hash, x);
                                        (x, None)
                                    }
                                    None => {
                                        self.split.enter(Stage::Upcall);
                                        let (x, mask) = self.upcall(&key, hash);
                                        (owned.insert(x), Some(mask))
                                    }
                                }
                            }
                        };
                    if let (Some(x0), Some(c)) = (x0, &mut self.cont) {
                        let mask = match mask {
                            Some(m) => Some(m),
                            // Learning after a cache hit costs a slow-path
                            // translation: rationed.
                            None if c.take_learn() => {
                                self.split.enter(Stage::Upcall);
                                Some(translate(&self.program, &key, None).mask)
                            }
                            None => None,
                        };
                        if let Some(m) = mask {
                            c.insert(&x0, &key, &m, x);
                        }
                    }
                    x
                }
            };
            prev = Some(Arc::as_ptr(xlate));
            self.split.enter(Stage::Actions);
            // Rule counters, batched over consecutive packets with the same
            // translation (see `pending_slot`).
            let slot = match self.pending_slot(Arc::as_ptr(xlate)) {
                Some(i) => {
                    let (_, n, b) = &mut self.pending[i];
                    *n += 1;
                    *b += bytes;
                    i
                }
                None => {
                    self.pending.push((xlate.clone(), 1, bytes));
                    self.pending.len() - 1
                }
            };
            let leads = (pass == 0).then_some((slot, xlate.single_pass));
            if let Some((ct, t)) = ct_recirc_shape(&xlate.actions) {
                let r = ct_recirc(
                    &mut self.hooks,
                    &mut self.split,
                    &mut self.ct_ran,
                    now,
                    ct,
                    t,
                    &mut pkt,
                    &mut key,
                );
                if let Err(r) = r {
                    out.drop(r, pkt);
                    return leads.or(first_pass);
                }
                first_pass = first_pass.or(leads);
                if pass == MAX_RECIRC {
                    out.drop(DropReason::RecircLimit, pkt);
                    return None;
                }
                self.stats.recirculations.inc();
                continue;
            }
            // The commonest continuation, one output (what `Exec::run`
            // does for it, without building the interpreter): a Service
            // packet's second pass.
            if let [DpAction::Output(port)] = &*xlate.actions {
                let port = if *port == PortNo::IN_PORT {
                    key.in_port()
                } else {
                    *port
                };
                out.send(port, pkt);
                return leads.or(first_pass);
            }
            let mut exec = Exec {
                now,
                mac: &mut self.mac,
                hooks: &mut self.hooks,
                ports: &self.ports,
                bucket: &mut self.bucket,
                stats: &self.stats,
                split: &mut self.split,
                ct_ran: &mut self.ct_ran,
            };
            match exec.run(&xlate.actions, pkt, &mut key, layout, out) {
                Outcome::Done { .. } => return leads.or(first_pass),
                Outcome::Recirculate {
                    pkt: p, reparse, ..
                } => {
                    first_pass = first_pass.or(leads);
                    if pass == MAX_RECIRC {
                        out.drop(DropReason::RecircLimit, p);
                        return None;
                    }
                    self.stats.recirculations.inc();
                    if let Some(l) = reparse {
                        layout = l;
                    }
                    pkt = p;
                }
            }
        }
        None
    }

    /// Counts one packet of `bytes` for the translation at `pending[j]`:
    /// in place when `j` is one of the last two entries (see
    /// `pending_slot`), else in a new entry. Returns where it counted.
    #[inline]
    fn count_pending(&mut self, j: usize, bytes: u64) -> usize {
        if j + 2 >= self.pending.len() {
            if let Some((_, n, b)) = self.pending.get_mut(j) {
                *n += 1;
                *b += bytes;
                return j;
            }
        }
        let x = self.pending[j].0.clone();
        self.pending.push((x, 1, bytes));
        self.pending.len() - 1
    }

    /// Runs the actions of the single-pass translation at `pending[j]` on
    /// `pkt` (a follower of a batch: its live bits equal its leader's),
    /// counting it in the rule counters with the others of the batch (the
    /// caller counts the tier hit). Returns the translation's index in
    /// `pending` for the next follower.
    fn follower<B: PacketBuf>(
        &mut self,
        now: Nanos,
        j: usize,
        p: &mut Parsed,
        pkt: B,
        out: &mut Output<B>,
    ) -> usize
    where
        H: ActionHooks<B>,
    {
        let bytes = pkt.len() as u64;
        let last = j + 1 == self.pending.len();
        let j = match self.pending.get_mut(j) {
            Some((_, n, b)) if last => {
                *n += 1;
                *b += bytes;
                j
            }
            _ => {
                let x = self.pending[j].0.clone();
                self.pending.push((x, 1, bytes));
                self.pending.len() - 1
            }
        };
        self.split.enter(Stage::Actions);
        let xlate = &self.pending[j].0;
        // The commonest translation, one output, without the interpreter
        // (what `Exec::run` does for it).
        if let [DpAction::Output(port)] = &*xlate.actions {
            let port = if *port == PortNo::IN_PORT {
                p.key.in_port()
            } else {
                *port
            };
            out.send(port, pkt);
            return j;
        }
        // The overlay's encap, also without building the interpreter.
        if let Some((sets, port)) = encap_shape(&xlate.actions) {
            encap_and_output(
                &mut self.hooks,
                &mut self.split,
                now,
                sets,
                port,
                pkt,
                &mut p.key,
                out,
            );
            return j;
        }
        let mut exec = Exec {
            now,
            mac: &mut self.mac,
            hooks: &mut self.hooks,
            ports: &self.ports,
            bucket: &mut self.bucket,
            stats: &self.stats,
            split: &mut self.split,
            ct_ran: &mut self.ct_ran,
        };
        if let Outcome::Recirculate { pkt, .. } =
            exec.run(&xlate.actions, pkt, &mut p.key, p.layout, out)
        {
            // A single-pass translation has no recirculating action.
            out.drop(DropReason::RecircLimit, pkt);
        }
        j
    }
}

/// The Service translation `ct(..., table=N)` alone (every packet of a
/// Service goes through it before its continuation): its action and `N`.
#[inline(always)]
fn ct_recirc_shape(actions: &[DpAction]) -> Option<(&CtAction, u8)> {
    match actions {
        [DpAction::Ct(ct)] => ct.table.map(|t| (ct, t)),
        _ => None,
    }
}

/// Runs a [`ct_recirc_shape`] list on `pkt` without the interpreter, with
/// the same result as `Exec::run`: on success the packet recirculates to
/// table `t` (`recirc_id` set, no re-parse), else it is to be dropped
/// for the returned reason.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn ct_recirc<B: PacketBuf, H: ActionHooks<B>>(
    hooks: &mut H,
    split: &mut Split,
    ct_ran: &mut bool,
    now: Nanos,
    ct: &CtAction,
    t: u8,
    pkt: &mut B,
    key: &mut FlowKey,
) -> Result<(), DropReason> {
    *ct_ran = true;
    split.enter(Stage::Conntrack);
    let r = hooks.conntrack(now, ct, pkt, key);
    split.enter(Stage::Actions);
    r?;
    key.set(Field::RecircId, u128::from(t) + 1);
    Ok(())
}

/// The Geneve encap translation, `set_field:…->tun_*, …, tnl_push,
/// output:P` (the overlay's translation towards a remote node): its
/// tunnel-field sets and `P`.
#[inline(always)]
fn encap_shape(actions: &[DpAction]) -> Option<(&[DpAction], PortNo)> {
    match actions {
        [sets @ .., DpAction::TunnelPush, DpAction::Output(port)]
            if sets
                .iter()
                .all(|a| matches!(a, DpAction::Set { field, .. } if is_tunnel_field(*field))) =>
        {
            Some((sets, *port))
        }
        _ => None,
    }
}

/// Runs an [`encap_shape`] list on `pkt` without the interpreter, with
/// the same result as `Exec::run`: a tunnel field has no header bytes to
/// rewrite (only the key changes), and the push is the last chance to
/// drop before the one output. Returns true when the packet was sent.
/// Inlined into its two callers (the interpreter's shortcut and the
/// batch follower): out of line, its eight arguments and the call cost
/// ~25 instructions per encapsulated packet.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn encap_and_output<B: PacketBuf, H: ActionHooks<B>>(
    hooks: &mut H,
    split: &mut Split,
    now: Nanos,
    sets: &[DpAction],
    port: PortNo,
    mut pkt: B,
    key: &mut FlowKey,
    out: &mut Output<B>,
) -> bool {
    for a in sets {
        if let DpAction::Set { field, value, mask } = a {
            key.set_masked(*field, *value, *mask);
        }
    }
    let port = if port == PortNo::IN_PORT {
        key.in_port()
    } else {
        port
    };
    split.enter(Stage::Tunnel);
    let r = hooks.tunnel_push(now, &mut pkt, key);
    split.enter(Stage::Actions);
    match r {
        Ok(()) => {
            out.send(port, pkt);
            true
        }
        Err(r) => {
            out.drop(r, pkt);
            false
        }
    }
}

/// True for the tunnel metadata fields: key-only (no header bytes), read
/// by `tnl_push`.
#[inline]
fn is_tunnel_field(f: Field) -> bool {
    matches!(
        f,
        Field::TunId
            | Field::TunSrc
            | Field::TunDst
            | Field::TunGnvClass
            | Field::TunGnvType
            | Field::TunMetadata0
    )
}

/// `xlate` with its action list replaced by the equal one in `lists`
/// (added there if new): the translations of many megaflows with the same
/// actions (10,000 routes that all rewrite the MACs, decrement the TTL and
/// output to one port) then share one list, which stays in cache, instead
/// of each packet of each flow missing on its own copy. Behaviour is
/// unchanged: the lists are equal. A translation already shared (not
/// fresh from the slow path) is returned as it is.
fn intern_actions(
    lists: &mut std::collections::HashSet<Arc<[DpAction]>>,
    xlate: Arc<Xlate>,
) -> Arc<Xlate> {
    let mut x = match Arc::try_unwrap(xlate) {
        Ok(x) => x,
        Err(shared) => return shared,
    };
    match lists.get(&x.actions) {
        Some(a) => x.actions = a.clone(),
        None => {
            if lists.len() >= ACTION_LISTS_MAX {
                lists.clear();
            }
            lists.insert(x.actions.clone());
        }
    }
    Arc::new(x)
}

impl<B: PacketBuf, H: ActionHooks<B>> Pipeline<B> for FlowPipeline<H> {
    /// Takes the new port list (for `normal`/`flood`), forgets MAC entries
    /// on removed ports and flushes both caches: a cached translation may
    /// flood to the old set or output to a removed port.
    fn set_ports(&mut self, ports: &[PortNo]) {
        for &p in &self.ports {
            if !ports.contains(&p) {
                self.mac.flush_port(p);
            }
        }
        self.ports.clear();
        self.ports.extend_from_slice(ports);
        self.emc.flush();
        self.megaflow.flush();
        if let Some(c) = &mut self.cont {
            c.flush();
        }
    }

    fn dump_caches(&self) -> String {
        let emc = if self.emc.enabled() {
            format!(
                "emc: {} of {} slots of {} bytes ({} live key words), insert probability 1/{}\n",
                self.emc.len(),
                self.emc.capacity(),
                self.emc.slot_bytes(),
                self.emc.words().len(),
                self.emc.insert_inv_prob()
            )
        } else {
            "emc: disabled (emc_insert_inv_prob = 0)\n".to_string()
        };
        format!(
            "{emc}mac table (normal): {} of {} entries, {} addresses not learned (table full)\nmegaflows: {} in {} subtables\n{}{}",
            self.mac.len(),
            self.mac.capacity(),
            self.mac.refused_full(),
            self.megaflow.len(),
            self.megaflow.n_masks(),
            self.megaflow.describe(),
            self.megaflow.dump()
        )
    }

    fn process(&mut self, now: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
        self.check_program();
        if let Some(c) = &mut self.cont {
            c.tick();
        }
        let n_pkts = burst.pkts.len() as u64;
        if self.direct.active {
            let td = cycles();
            self.direct_stage(now, burst, out);
            self.stats.perf.direct.add(cycles().wrapping_sub(td));
        }
        let t0 = cycles();
        let in_port = burst.in_port;
        // Stage one: parse the whole burst and prefetch each packet's EMC
        // slots; stage two classifies and executes in arrival order, by
        // which time the slots of later packets are (mostly) in cache.
        // Parsed in place, into entries kept from earlier bursts (no copy
        // of the key into the vector, and no zeroing besides the one
        // `extract_into` does): only the first `n` are this burst's.
        let mut store = std::mem::take(&mut self.parsed);
        let n = burst.pkts.len();
        if store.len() < n {
            store.resize(
                n,
                Parsed {
                    key: FlowKey::ZERO,
                    layout: Layout::default(),
                    hash: 0,
                },
            );
        }
        let parsed = &mut store[..n];
        // The slots of a packet whose hash is the last one's are already
        // on their way (a burst of one flow prefetches once).
        let mut last_hash = None;
        for (q, pkt) in parsed.iter_mut().zip(burst.pkts.iter()) {
            if pkt.len() >= 14 {
                q.layout = extract_into(pkt.data(), in_port, &mut q.key);
            } else {
                q.key = FlowKey::ZERO;
                q.layout = Layout::default();
                q.key.set(Field::InPort, u128::from(in_port.0));
            }
            q.hash = q.key.hash_live(&self.live, &self.words);
            if last_hash != Some(q.hash) {
                self.emc.prefetch(q.hash);
                last_hash = Some(q.hash);
            }
        }
        let t1 = cycles();
        self.split.begin(t1);
        // With more flows than fit in the CPU caches, an EMC hit chases
        // pointers (tag → key and translation → action list), each a miss:
        // start those loads HIT_AHEAD and ACTIONS_AHEAD packets ahead.
        const HIT_AHEAD: usize = 4;
        const ACTIONS_AHEAD: usize = 2;
        for q in parsed.iter().take(HIT_AHEAD) {
            self.emc.prefetch_hit(q.hash);
        }
        for q in parsed.iter().take(ACTIONS_AHEAD) {
            self.emc.prefetch_actions(q.hash);
        }
        // Conntrack bulk lookup (when the last burst tracked packets): the
        // connection-cache set of a packet CT_BUCKET_AHEAD ahead, then the
        // connection its tag points to CT_ENTRY_AHEAD ahead.
        const CT_BUCKET_AHEAD: usize = 8;
        const CT_ENTRY_AHEAD: usize = 3;
        let ct_hint = std::mem::take(&mut self.ct_ran);
        if ct_hint {
            for q in parsed.iter().take(CT_BUCKET_AHEAD) {
                self.hooks.prefetch_conntrack(&q.key, Prefetch::Bucket);
            }
        }
        self.stats.packets.add(n_pkts);
        // Per-flow batching (OVS's batches per flow): a packet equal on the
        // live bits to the last packet that took a lookup (its batch's
        // leader) takes the leader's translation without one, when that
        // translation is single-pass. Exact for the same reason the EMC
        // is: keys equal on the live bits translate alike (compared on
        // the current mask: an upcall may have widened it).
        // The batch: its leader's index in the burst, the index in
        // `pending` of the leader's first-pass translation, and whether
        // that translation is single-pass (else a follower still looks up
        // its later passes: the inner frame after `tnl_pop`...).
        let mut batch: Option<(usize, usize, bool)> = None;
        let mut followers = 0u64;
        let mut pkts = burst.pkts.drain(..);
        for i in 0..parsed.len() {
            let Some(pkt) = pkts.next() else { break };
            if ct_hint {
                if let Some(q) = parsed.get(i + CT_BUCKET_AHEAD) {
                    self.hooks.prefetch_conntrack(&q.key, Prefetch::Bucket);
                }
                if let Some(q) = parsed.get(i + CT_ENTRY_AHEAD) {
                    self.hooks.prefetch_conntrack(&q.key, Prefetch::Entry);
                }
            }
            let hash = parsed[i].hash;
            // A packet of this one's flow needs no prefetch of its own.
            if let Some(q) = parsed.get(i + HIT_AHEAD).filter(|q| q.hash != hash) {
                self.emc.prefetch_hit(q.hash);
            }
            if let Some(q) = parsed.get(i + ACTIONS_AHEAD).filter(|q| q.hash != hash) {
                self.emc.prefetch_actions(q.hash);
            }
            if let Some((lead, j, single)) = batch {
                let l = &parsed[lead];
                if l.hash == hash
                    && pkt.len() >= 14
                    && l.key.eq_live(&parsed[i].key, &self.live, &self.words)
                {
                    followers += 1;
                    if single {
                        let j = self.follower(now, j, &mut parsed[i], pkt, out);
                        batch = Some((lead, j, true));
                    } else {
                        batch = self
                            .one_packet(now, &parsed[i], pkt, out, Some(j))
                            .map(|(j, s)| (lead, j, s));
                    }
                    continue;
                }
            }
            batch = self
                .one_packet(now, &parsed[i], pkt, out, None)
                .map(|(j, s)| (i, j, s));
        }
        drop(pkts);
        // Followers count as exact matches (on the live bits, like an EMC
        // hit), or as megaflow hits with the EMC off.
        if self.emc.enabled() {
            self.stats.emc.hit.add(followers);
        } else {
            self.stats.megaflow.tier.hit.add(followers);
        }
        self.parsed = store;
        self.flush_counts(now);
        let t2 = cycles();
        let perf = &self.stats.perf;
        self.split.finish(t2, n_pkts, perf);
        perf.bursts.inc();
        perf.packets.add(n_pkts);
        perf.parse.add(t1.wrapping_sub(t0));
        perf.body.add(t2.wrapping_sub(t1));
    }

    fn maintain(&mut self, now: Nanos, _out: &mut Output<B>) {
        self.check_program();
        self.mac.serve_exchange(now);
        if now.saturating_sub(self.last_housekeeping) >= HOUSEKEEPING_NS {
            self.last_housekeeping = now;
            self.megaflow.sort_subtables();
            self.mac.expire(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::action::checksum;
    use crate::flow::key::testpkt::{arp_request, l4_checksum, tcp4};
    use crate::packet::HeapBuf;

    fn pipeline(flows: &str) -> (FlowTables, FlowPipeline) {
        let t = FlowTables::new();
        t.add_flows(flows, 0).expect("flows");
        let p = FlowPipeline::new(
            t.clone(),
            FlowPipelineConfig {
                ports: (1..=4).map(PortNo).collect(),
                controller_rate: 10,
                controller_burst: 2,
                // Tests count EMC hits from the second packet of a flow.
                emc_insert_inv_prob: 1,
                ..FlowPipelineConfig::default()
            },
        );
        (t, p)
    }

    fn run(p: &mut FlowPipeline, now: Nanos, in_port: u16, frames: &[Vec<u8>]) -> Output<HeapBuf> {
        let mut out = Output::new(8);
        let mut burst = Burst::new(PortNo(in_port));
        burst
            .pkts
            .extend(frames.iter().map(|f| HeapBuf::from_frame(f)));
        p.process(now, &mut burst, &mut out);
        assert!(burst.pkts.is_empty());
        out
    }

    #[test]
    fn cascade_tiers_count_and_rules_count() {
        let (t, mut p) = pipeline("priority=10,tcp,nw_dst=10.0.0.0/24 actions=mod_nw_dst:10.0.1.1,dec_ttl,output:2\npriority=0 actions=drop");
        let f = tcp4([10, 0, 0, 1], [10, 0, 0, 9], 1000, 80, 64);
        let g = tcp4([10, 0, 0, 2], [10, 0, 0, 9], 1000, 80, 64);
        let mut out = run(&mut p, 0, 1, &[f.clone(), f.clone(), g.clone()]);
        let s = p.stats();
        assert_eq!(
            s.upcalls.get(),
            1,
            "g shares f's megaflow (nw_src is wildcarded)"
        );
        // g differs from f only in nw_src, which no rule reads: it follows
        // f's batch like f's repeat (both counted as EMC hits).
        assert_eq!(s.megaflow.tier.hit.get(), 0);
        assert_eq!(s.emc.hit.get(), 2);
        let sent = out.take(PortNo(2));
        assert_eq!(sent.len(), 3);
        let d = sent[0].data();
        assert_eq!(&d[30..34], &[10, 0, 1, 1]);
        assert_eq!(d[22], 63);
        assert_eq!(checksum(&d[14..34]), 0, "IP checksum still valid");
        assert_eq!(
            u16::from_be_bytes([d[50], d[51]]),
            l4_checksum(d, 6),
            "TCP checksum still valid"
        );
        let dump = t.dump_flows("", 0).expect("dump");
        assert!(dump.contains("n_packets=3, n_bytes=162"), "{dump}");
        let out = run(&mut p, 0, 1, &[arp_request([1, 1, 1, 1], [2, 2, 2, 2])]);
        assert_eq!(out.drops.get(DropReason::FlowDrop), 1);
        // in_port is live (a rule may match it) but not in f's megaflow:
        // f from port 3 misses the EMC and hits the megaflow.
        let mut out = run(&mut p, 0, 3, std::slice::from_ref(&f));
        assert_eq!(out.take(PortNo(2)).len(), 1);
        assert_eq!(s.megaflow.tier.hit.get(), 1);
        assert_eq!(s.upcalls.get(), 2, "f and the ARP request");
        assert!(s.show().contains("megaflow hits: 1"));
    }

    #[test]
    fn rule_counters_of_interleaved_flows_in_one_burst() {
        // Counts are applied at the end of the burst, one update per run
        // of equal translations: interleaving must still count each rule
        // exactly, and the counts are visible once the burst is done.
        let (t, mut p) =
            pipeline("priority=2,tcp,tp_dst=80 actions=output:2\npriority=1,tcp actions=output:3");
        let f = tcp4([10, 0, 0, 1], [10, 0, 0, 9], 1000, 80, 64);
        let g = tcp4([10, 0, 0, 1], [10, 0, 0, 9], 1000, 22, 100);
        let burst = [&f, &g, &g, &f, &g, &f, &f].map(|x| x.clone());
        let mut out = run(&mut p, 5, 1, &burst);
        assert_eq!(
            (out.take(PortNo(2)).len(), out.take(PortNo(3)).len()),
            (4, 3)
        );
        let dump = t.dump_flows("", 0).expect("dump");
        let (lf, lg) = (f.len() as u64, g.len() as u64);
        assert!(
            dump.contains(&format!("n_packets=4, n_bytes={}", 4 * lf)),
            "{dump}"
        );
        assert!(
            dump.contains(&format!("n_packets=3, n_bytes={}", 3 * lg)),
            "{dump}"
        );
        assert!(p.pending.is_empty(), "nothing left for the next burst");
    }

    #[test]
    fn emc_insertion_probability() {
        let f = tcp4([10, 0, 0, 1], [10, 0, 0, 9], 1000, 80, 64);
        for (inv_prob, emc_line) in [
            (0, "emc: disabled (emc_insert_inv_prob = 0)\n"),
            (
                1,
                "emc: 1 of 16384 slots of 64 bytes (3 live key words), insert probability 1/1\n",
            ),
            (
                100,
                "emc: 1 of 16384 slots of 64 bytes (3 live key words), insert probability 1/100\n",
            ),
        ] {
            let t = FlowTables::new();
            t.add_flows("priority=1,ip actions=output:2", 0)
                .expect("flows");
            let mut p = FlowPipeline::new(
                t.clone(),
                FlowPipelineConfig {
                    emc_insert_inv_prob: inv_prob,
                    ..FlowPipelineConfig::default()
                },
            );
            let burst = vec![f.clone(); 32];
            for now in 0..32 {
                let mut out = run(&mut p, now, 1, &burst);
                assert_eq!(out.take(PortNo(2)).len(), 32, "all forwarded");
            }
            let s = p.stats();
            let (emc, mf) = (s.emc.hit.get(), s.megaflow.tier.hit.get());
            assert_eq!((s.upcalls.get(), emc + mf), (1, 1023), "{inv_prob}");
            match inv_prob {
                0 => assert_eq!(emc, 0, "disabled"),
                1 => assert_eq!(mf, 0, "cached by the upcall"),
                // Cached after a few dozen megaflow hits (fixed seed).
                _ => assert!(mf > 1 && emc > 500, "{mf} megaflow, {emc} emc hits"),
            }
            let dump = <FlowPipeline as Pipeline<HeapBuf>>::dump_caches(&p);
            assert!(dump.starts_with(emc_line), "{dump}");
            let rules = t.dump_flows("", 0).expect("dump");
            assert!(rules.contains("n_packets=1024,"), "{rules}");
        }
    }

    #[test]
    fn program_update_is_picked_up_between_bursts() {
        let (t, mut p) = pipeline("priority=1,ip actions=output:1");
        let f = tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 64);
        let mut out = run(&mut p, 0, 3, std::slice::from_ref(&f));
        assert_eq!(out.take(PortNo(1)).len(), 1);
        t.replace_flows("priority=1,ip actions=output:4", 1)
            .expect("replace");
        let mut out = run(&mut p, 1, 3, std::slice::from_ref(&f));
        assert_eq!(
            out.take(PortNo(4)).len(),
            1,
            "the cached answer of the old program is gone"
        );
        assert_eq!(p.stats().reloads.get(), 1);
        assert_eq!(
            p.stats().megaflow.revalidated.get(),
            1,
            "same class, new actions"
        );
        assert_eq!(
            p.stats().upcalls.get(),
            1,
            "no new upcall after revalidation"
        );
        // A rule in a table this traffic never reaches keeps the megaflow.
        t.add_flow("table=7,priority=1 actions=drop", 1)
            .expect("add");
        let mut out = run(&mut p, 1, 3, std::slice::from_ref(&f));
        assert_eq!(out.take(PortNo(4)).len(), 1);
        assert_eq!(p.stats().upcalls.get(), 1);
        // A higher-priority rule that now matches evicts it.
        t.add_flow("priority=5,tcp actions=output:2", 1)
            .expect("add");
        let mut out = run(&mut p, 1, 3, std::slice::from_ref(&f));
        assert_eq!(out.take(PortNo(2)).len(), 1);
        assert_eq!(p.stats().megaflow.evicted.get(), 1);
        t.del_flows("", false, 2).expect("delete");
        let out = run(&mut p, 2, 3, &[f]);
        assert_eq!(out.drops.get(DropReason::TableMiss), 1);
    }

    #[test]
    fn normal_learns_then_forwards() {
        let (_t, mut p) = pipeline("priority=0 actions=NORMAL");
        let mut a_to_b = tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 64);
        a_to_b[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xb]);
        a_to_b[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xa]);
        let mut b_to_a = a_to_b.clone();
        b_to_a[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xa]);
        b_to_a[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xb]);
        let mut out = run(&mut p, 0, 1, &[a_to_b.clone()]);
        for port in 2..=4 {
            assert_eq!(out.take(PortNo(port)).len(), 1, "flooded to {port}");
        }
        assert!(
            out.take(PortNo(1)).is_empty(),
            "not back to the ingress port"
        );
        let mut out = run(&mut p, 1, 3, &[b_to_a]);
        assert_eq!(out.take(PortNo(1)).len(), 1, "a was learned on port 1");
        assert!(out.take(PortNo(2)).is_empty());
        let out = run(
            &mut p,
            2,
            1,
            &[{
                let mut f = a_to_b.clone();
                f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xa]);
                f
            }],
        );
        assert_eq!(out.drops.get(DropReason::L2SamePort), 1);
    }

    #[test]
    fn controller_is_rate_limited_on_the_fake_clock() {
        let (_t, mut p) = pipeline("priority=0 actions=controller:20");
        let f = tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 64);
        let frames = vec![f.clone(); 5];
        let out = run(&mut p, 0, 1, &frames);
        assert_eq!(out.controller.len(), 2, "burst of 2");
        assert!(
            out.controller.iter().all(|b| b.len() == 20),
            "truncated to max_len"
        );
        assert_eq!(out.drops.get(DropReason::ControllerLimit), 3);
        // 10 pps: one token per 100 ms.
        let out = run(&mut p, 100_000_000, 1, &frames);
        assert_eq!(out.controller.len(), 1);
    }

    #[test]
    fn hooks_unsupported_and_group_all_copies() {
        let (_t, mut p) = pipeline(
            "group_id=1,type=all,bucket=mod_tp_dst:99,output:1,bucket=output:2\npriority=2,udp actions=ct(commit,table=1)\npriority=1,tcp actions=group:1",
        );
        let udp = crate::flow::key::testpkt::udp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
        let out = run(&mut p, 0, 3, &[udp]);
        assert_eq!(out.drops.get(DropReason::CtUnsupported), 1);
        let mut out = run(&mut p, 0, 3, &[tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 64)]);
        let one = out.take(PortNo(1));
        let two = out.take(PortNo(2));
        assert_eq!((one.len(), two.len()), (1, 1));
        assert_eq!(
            u16::from_be_bytes([one[0].data()[36], one[0].data()[37]]),
            99
        );
        assert_eq!(
            u16::from_be_bytes([two[0].data()[36], two[0].data()[37]]),
            2,
            "copies are independent"
        );
        assert_eq!(out.drops.total(), 0);
    }

    #[test]
    fn runt_frames_are_counted() {
        let (_t, mut p) = pipeline("priority=0 actions=output:1");
        let out = run(&mut p, 0, 1, &[vec![1, 2, 3]]);
        assert_eq!(out.drops.get(DropReason::RxTooShort), 1);
    }

    #[test]
    fn no_packet_lost_while_programs_are_published() {
        // A PMD thread processes bursts while the control thread swaps
        // between two programs; whichever program a burst sees, every
        // packet must leave on port 1 or 2 and nothing may be dropped.
        let (t, mut p) = pipeline("priority=1,ip actions=output:1");
        let f = tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 64);
        const BURSTS: usize = 300;
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut sent = 0;
                let mut dropped = 0;
                for i in 0..BURSTS {
                    let mut out = run(&mut p, i as u64, 3, &vec![f.clone(); 8]);
                    sent += out.take(PortNo(1)).len() + out.take(PortNo(2)).len();
                    dropped += out.drops.total();
                }
                assert_eq!(dropped, 0);
                tx.send(sent).expect("report");
            });
            for i in 0..100u64 {
                let port = 1 + (i % 2);
                t.replace_flows(&format!("priority=1,ip actions=output:{port}"), i)
                    .expect("replace");
            }
        });
        assert_eq!(rx.recv().expect("pmd result"), BURSTS * 8);
    }

    mod equivalence {
        use super::*;
        use crate::flow::key::testpkt::udp4;
        use crate::flow::key::{extract, KEY_WORDS};
        use proptest::prelude::*;

        /// One random rule as flow text; values come from small sets so
        /// rules overlap and packets share megaflows.
        fn rule() -> impl Strategy<Value = String> {
            (
                0u8..3,
                0u16..4,
                proptest::option::of(1u16..4),
                proptest::option::of((0u8..4, 30u8..33)),
                proptest::option::of(prop_oneof![Just("tcp"), Just("udp")]),
                proptest::option::of(80u16..82),
                proptest::option::of(0u8..2),
                proptest::collection::vec(0u8..11, 0..4),
            )
                .prop_map(|(table, prio, in_port, dst, proto, tp, reg, acts)| {
                    let mut m = format!("table={table},priority={prio}");
                    if let Some(p) = in_port {
                        m += &format!(",in_port={p}");
                    }
                    match proto {
                        Some(p) => m += &format!(",{p}"),
                        None if dst.is_some() || tp.is_some() => m += ",tcp",
                        None => {}
                    }
                    if let Some((d, len)) = dst {
                        m += &format!(",nw_dst=10.0.0.{d}/{len}");
                    }
                    if let Some(tp) = tp {
                        m += &format!(",tp_dst={tp}");
                    }
                    if let Some(r) = reg {
                        m += &format!(",reg0={r}");
                    }
                    let actions: Vec<String> = acts
                        .iter()
                        .map(|a| match a {
                            0 => "output:1".to_string(),
                            1 => "output:2".to_string(),
                            2 if table < 2 => format!("goto_table:{}", table + 1),
                            2 => "output:3".to_string(),
                            3 => "resubmit(,1)".to_string(),
                            4 => "load:1->reg0".to_string(),
                            5 => "set_field:10.0.0.1->nw_dst".to_string(),
                            6 => "mod_tp_dst:81".to_string(),
                            7 => "dec_ttl".to_string(),
                            8 => "group:1".to_string(),
                            9 => "resubmit(2,2)".to_string(),
                            _ => "IN_PORT".to_string(),
                        })
                        .collect();
                    let actions = if actions.is_empty() {
                        "drop".to_string()
                    } else {
                        actions.join(",")
                    };
                    format!("{m} actions={actions}")
                })
        }

        fn packet() -> impl Strategy<Value = (u16, Vec<u8>)> {
            (
                1u16..4,
                0u8..4,
                0u8..4,
                any::<bool>(),
                0u16..2,
                80u16..82,
                1u8..4,
            )
                .prop_map(|(port, s, d, tcp, sp, dp, ttl)| {
                    let f = if tcp {
                        tcp4([10, 0, 1, s], [10, 0, 0, d], sp, dp, ttl)
                    } else {
                        let mut f = udp4([10, 0, 1, s], [10, 0, 0, d], sp, dp);
                        f[22] = ttl;
                        f
                    };
                    (port, f)
                })
        }

        const GROUP: &str = "group_id=1,type=select,fields(nw_src,tp_src),bucket=output:1,bucket=output:2,bucket=resubmit(,2)";

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]
            #[test]
            fn cached_results_equal_slow_path(
                prog1 in proptest::collection::vec(rule(), 1..10),
                prog2 in proptest::collection::vec(rule(), 1..10),
                pkts in proptest::collection::vec(packet(), 1..40),
            ) {
                let t = FlowTables::new();
                t.replace_flows(&format!("{GROUP}\n{}", prog1.join("\n")), 0).expect("program 1");
                let mut p = FlowPipeline::new(t.clone(), FlowPipelineConfig::default());
                for phase in 0..2 {
                    if phase == 1 {
                        t.replace_flows(&format!("{GROUP}\n{}", prog2.join("\n")), 1).expect("program 2");
                        p.check_program();
                    }
                    let prog = t.program();
                    for round in 0..2 {
                        for (port, f) in &pkts {
                            let key = extract(f, PortNo(*port));
                            let cached = p.classify(&key);
                            let slow = translate(&prog, &key, None);
                            prop_assert_eq!(
                                &cached.actions, &slow.xlate.actions,
                                "phase {} round {} key {:?}", phase, round, key
                            );
                        }
                    }
                }
                let s = p.stats();
                prop_assert_eq!(
                    s.emc.hit.get() + s.megaflow.tier.hit.get() + s.upcalls.get(),
                    4 * pkts.len() as u64
                );
            }

            /// The EMC keyed on the program's live words (always-insert, so
            /// nearly every repeat is an EMC hit): packets that differ only
            /// in fields no rule matches (MACs, TOS, source port...) share
            /// entries, and every cached answer still equals the slow path.
            #[test]
            fn live_word_emc_equals_slow_path(
                prog in proptest::collection::vec(rule(), 1..10),
                pkts in proptest::collection::vec((packet(), any::<[u8; 6]>(), any::<u8>(), 0u16..3), 1..40),
            ) {
                let t = FlowTables::new();
                t.replace_flows(&format!("{GROUP}\n{}", prog.join("\n")), 0).expect("program");
                let mut p = FlowPipeline::new(t.clone(), FlowPipelineConfig {
                    emc_insert_inv_prob: 1,
                    ..FlowPipelineConfig::default()
                });
                let prog = t.program();
                for round in 0..3 {
                    for ((port, f), mac, tos, sp) in &pkts {
                        let mut f = f.clone();
                        if round > 0 {
                            // Fields this program never matches on.
                            f[6..12].copy_from_slice(mac);
                            f[15] = *tos;
                            f[34..36].copy_from_slice(&sp.to_be_bytes());
                        }
                        let key = extract(&f, PortNo(*port));
                        let cached = p.classify(&key);
                        let slow = translate(&prog, &key, None);
                        prop_assert_eq!(&cached.actions, &slow.xlate.actions, "round {} key {:?}", round, key);
                        prop_assert!(slow.mask.is_subset_of(&p.live), "every cached mask is within the live mask");
                    }
                }
                prop_assert!(p.live_words().len() < KEY_WORDS, "{:?}", p.live_words());
            }

            /// Per-flow batching (`process`): a burst in which packets of
            /// one flow follow each other (so most take their leader's
            /// translation without a lookup) sends, port by port, the same
            /// frames as the same packets sent one per burst (no batching),
            /// with the same drops and rule counters.
            #[test]
            fn batched_bursts_equal_one_packet_bursts(
                prog in proptest::collection::vec(rule(), 1..10),
                pkts in proptest::collection::vec((packet(), 1usize..6), 1..12),
                inv_prob in prop_oneof![Just(0u32), Just(1u32), Just(100u32)],
            ) {
                // Distinct priorities: two FlowTables may order overlapping
                // rules of equal priority differently.
                let prog: Vec<String> = prog
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let (head, tail) = r.split_once("priority=").expect("priority");
                        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
                        format!("{head}priority={}{}", 100 + i, &tail[digits..])
                    })
                    .collect();
                let text = format!("{GROUP}\n{}", prog.join("\n"));
                let frames: Vec<(u16, Vec<u8>)> = pkts
                    .iter()
                    .flat_map(|(p, n)| std::iter::repeat_n(p.clone(), *n))
                    .collect();
                let config = FlowPipelineConfig {
                    ports: (1..=4).map(PortNo).collect(),
                    emc_insert_inv_prob: inv_prob,
                    ..FlowPipelineConfig::default()
                };
                let (ta, tb) = (FlowTables::new(), FlowTables::new());
                ta.replace_flows(&text, 0).expect("program");
                tb.replace_flows(&text, 0).expect("program");
                let mut a = FlowPipeline::new(ta.clone(), config.clone());
                let mut b = FlowPipeline::new(tb.clone(), config);
                // Bursts of consecutive frames from one port, up to 32.
                let (sent_a, sent_b, oa, ob) =
                    crate::pipeline::bursts_and_one_frame_bursts(&mut a, &mut b, &frames, 8);
                prop_assert_eq!(&sent_a, &sent_b);
                prop_assert_eq!(oa.drops.nonzero(), ob.drops.nonzero());
                // Rules of equal priority print in no fixed order.
                let dump = |t: &FlowTables| {
                    let mut l: Vec<String> = t.dump_flows("", 9).expect("dump").lines().map(str::to_string).collect();
                    l.sort();
                    l
                };
                prop_assert_eq!(dump(&ta), dump(&tb));
                let (sa, sb) = (a.stats(), b.stats());
                let tiers = |s: &FlowPipelineStats| s.emc.hit.get() + s.megaflow.tier.hit.get() + s.upcalls.get();
                prop_assert_eq!(tiers(&sa), frames.len() as u64, "every packet counted in one tier");
                prop_assert_eq!(tiers(&sb), frames.len() as u64);
            }

            /// Bit-level: two keys equal on the live bits of a program
            /// (widened by the first key's translation) translate alike,
            /// whatever the other bits hold, also those sharing a word
            /// with a live field; and they hash and compare alike.
            #[test]
            fn keys_equal_on_live_bits_translate_alike(
                prog in proptest::collection::vec(rule(), 1..10),
                (port, f) in packet(),
                noise in proptest::collection::vec(any::<u64>(), KEY_WORDS),
            ) {
                let t = FlowTables::new();
                t.replace_flows(&format!("{GROUP}\n{}", prog.join("\n")), 0).expect("program");
                let prog = t.program();
                let k1 = extract(&f, PortNo(port));
                let a = translate(&prog, &k1, None);
                let mut live = live_mask(&prog);
                live.or_assign(&a.mask);
                let words = live.nonzero_words();
                let mut k2 = k1;
                for (i, n) in noise.iter().enumerate() {
                    k2.w[i] = (k1.w[i] & live.w[i]) | (n & !live.w[i]);
                }
                prop_assert!(k1.eq_live(&k2, &live, &words));
                prop_assert!(k1.eq_masked(&k2, &live));
                prop_assert_eq!(k1.hash_live(&live, &words), k2.hash_live(&live, &words));
                let b = translate(&prog, &k2, None);
                prop_assert_eq!(&a.xlate.actions, &b.xlate.actions);
            }

            /// The structure itself: two keys equal on the live words of a
            /// program (once widened by the first key's translation, as the
            /// pipeline does) translate to the same actions, whatever the
            /// other words hold.
            #[test]
            fn keys_equal_on_live_words_translate_alike(
                prog in proptest::collection::vec(rule(), 1..10),
                (port, f) in packet(),
                noise in proptest::collection::vec(any::<u64>(), KEY_WORDS),
            ) {
                let t = FlowTables::new();
                t.replace_flows(&format!("{GROUP}\n{}", prog.join("\n")), 0).expect("program");
                let prog = t.program();
                let k1 = extract(&f, PortNo(port));
                let a = translate(&prog, &k1, None);
                let mut live = live_mask(&prog);
                live.or_assign(&a.mask);
                let words = live.nonzero_words();
                let mut k2 = k1;
                for (i, n) in noise.iter().enumerate() {
                    if !words.contains(&(i as u8)) {
                        k2.w[i] = *n;
                    }
                }
                prop_assert!(k1.eq_words(&k2, &words));
                prop_assert_eq!(k1.hash_words(&words), k2.hash_words(&words));
                let b = translate(&prog, &k2, None);
                prop_assert_eq!(&a.xlate.actions, &b.xlate.actions);
            }
        }
    }
}
