//! The incremental compiler: holds the node database's rows and what each
//! row contributes to the [`NodeProgram`], takes row changes
//! ([`RowUpdate`], or the [`RowChange`]s of `nestdb-client`'s monitor)
//! and returns the [`NodeChanges`] from the program it held to the new
//! one, recomputing only what depends on the changed rows.
//!
//! Invariant: after every [`IncrementalCompiler::update`],
//! [`IncrementalCompiler::compiled`] equals the from-scratch
//! [`compile_with`](super::compile::compile_with) of
//! [`IncrementalCompiler::rows`] (program and row errors), and the returned
//! changes equal `sluice_api::node::diff` of the two programs (both checked
//! by proptests in `tests/compile_incremental.rs`). Rows with equal names
//! are ordered by UUID, as [`NodeRows::from_replica`] lists them.
//!
//! What a change recomputes:
//! - `Node_Config`: everything when the compiled node settings change
//!   (a column the program does not use changes nothing);
//! - `Remote_Node`: the remote-node part and the settings' cluster CIDRs
//!   (all remote nodes: they are checked against each other in name order);
//! - `Logical_Port`: the pods' part (all pods: addresses and OpenFlow
//!   numbers are settled among them in name order);
//! - `Service`, `Service_Port`, `Endpoint`: the Services that reference the
//!   row, then, in name order, only the Services that claim one of the
//!   frontends or Service names whose owner changed (a VIP conflict
//!   settles exactly as the from-scratch compile settles it). One endpoint
//!   change costs O(log n) map operations plus its Service's size, not
//!   O(number of Services).
//!
//! Updates carry whole rows, so they are idempotent: a batch applied twice
//! (e.g. a monitor batch that overlaps a snapshot) changes nothing the
//! second time.
//!
//! The program is held in maps (flows hashed by table, priority and match,
//! sorted when needed), each write journaled with the value it replaced, so the
//! changes come from the touched keys only; [`IncrementalCompiler::program`]
//! builds the canonical [`NodeProgram`] (O(program)) for a full push.
//!
//! # Use in the agent
//!
//! Subscribe to the monitor, then seed with [`IncrementalCompiler::from_replica`]
//! of its snapshot (or feed every `MonitorEvent::Changes` batch from the
//! start, a full dump included, to [`IncrementalCompiler::update_from_changes`]).
//! After a start of the agent or of `sluiced`, commit
//! `diff(&node_program_of_sluiced, &compiler.program())`; then for each
//! batch commit the [`NodeChanges`] that `update_from_changes` returns,
//! stamped with the generation, unless it is empty. Rewrite the status
//! table's errors ([`IncrementalCompiler::errors`] and
//! [`IncrementalCompiler::conversion_errors`]) when
//! [`IncrementalCompiler::errors_epoch`] moved.
//!
//! Thread-safety: a plain value (`Send + Sync`); `&mut self` to update.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv4Addr;

use nestdb_client::node::{Endpoint, LogicalPort, NodeConfig, RemoteNode, Service, ServicePort};
use nestdb_client::{Replica, RowChange, TableRow, Uuid};
use sluice_api::flows::FlowOp;
use sluice_api::node::{Flow, Mac, NodeChanges, NodeProgram, NodeSettings, PortSpec};
use sluice_api::service::ServiceSpec;
use sluice_api::stack::PortSecurity;

use super::compile::{
    compile_node, dangling_endpoint, frontend_conflict, frontends_of, name_conflict, node_section,
    pod_section, remote_section, reply_flow, service_specs, settings_of, Compiled, Ctx, Limits,
    Node, NodeRows, RowError, Section,
};

/// A flow's identity in canonical order: table, descending priority, match.
type FlowKey = (u8, Reverse<u16>, String);
/// A Service frontend: address, port, IP protocol number.
type Frontend = (Ipv4Addr, u16, u8);
/// A Service's place in name order: namespace, name, UUID.
type SvcKey = (String, String, Uuid);

/// The multiplicative word hash of rustc's `FxHasher`, a word at a time
/// (SipHash, the default, works harder per byte). Not resistant to chosen
/// collisions, which is fine for keys that come from the cluster's own
/// node database.
#[derive(Default, Clone, Copy)]
struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// One row inserted or modified (`Some`) or deleted (`None`), by UUID.
#[derive(Debug, Clone, PartialEq)]
pub enum RowUpdate {
    /// `Node_Config`.
    NodeConfig(Uuid, Option<NodeConfig>),
    /// `Logical_Port`.
    LogicalPort(Uuid, Option<LogicalPort>),
    /// `Service`.
    Service(Uuid, Option<Service>),
    /// `Service_Port`.
    ServicePort(Uuid, Option<ServicePort>),
    /// `Endpoint`.
    Endpoint(Uuid, Option<Endpoint>),
    /// `Remote_Node`.
    RemoteNode(Uuid, Option<RemoteNode>),
}

impl RowUpdate {
    /// The update a replica change makes, `None` for a table the compiler
    /// does not read. A row that does not convert to its typed form is
    /// treated as absent (as [`NodeRows::from_replica`] leaves it out) and
    /// its error is returned beside the update.
    pub fn from_change(c: &RowChange) -> Option<(RowUpdate, Option<RowError>)> {
        fn typed<T: TableRow>(c: &RowChange) -> (Option<T>, Option<RowError>) {
            match c.new.as_deref().map(T::from_row) {
                None => (None, None),
                Some(Ok(v)) => (Some(v), None),
                Some(Err(e)) => (
                    None,
                    Some(RowError {
                        table: T::TABLE,
                        key: c.uuid.to_string(),
                        sentence: e.to_string(),
                    }),
                ),
            }
        }
        let u = c.uuid;
        Some(match c.table.as_str() {
            NodeConfig::TABLE => {
                let (r, e) = typed(c);
                (RowUpdate::NodeConfig(u, r), e)
            }
            LogicalPort::TABLE => {
                let (r, e) = typed(c);
                (RowUpdate::LogicalPort(u, r), e)
            }
            Service::TABLE => {
                let (r, e) = typed(c);
                (RowUpdate::Service(u, r), e)
            }
            ServicePort::TABLE => {
                let (r, e) = typed(c);
                (RowUpdate::ServicePort(u, r), e)
            }
            Endpoint::TABLE => {
                let (r, e) = typed(c);
                (RowUpdate::Endpoint(u, r), e)
            }
            RemoteNode::TABLE => {
                let (r, e) = typed(c);
                (RowUpdate::RemoteNode(u, r), e)
            }
            _ => return None,
        })
    }

    /// The updates that turn `old` into `new` (rows matched by UUID; an
    /// unchanged row makes no update).
    pub fn between(old: &NodeRows, new: &NodeRows) -> Vec<RowUpdate> {
        fn table<T: Clone + PartialEq>(
            out: &mut Vec<RowUpdate>,
            old: &[(Uuid, T)],
            new: &[(Uuid, T)],
            make: fn(Uuid, Option<T>) -> RowUpdate,
        ) {
            let o: BTreeMap<&Uuid, &T> = old.iter().map(|(u, r)| (u, r)).collect();
            let n: BTreeMap<&Uuid, &T> = new.iter().map(|(u, r)| (u, r)).collect();
            for u in o.keys() {
                if !n.contains_key(u) {
                    out.push(make(**u, None));
                }
            }
            for (u, r) in &n {
                if o.get(u) != Some(r) {
                    out.push(make(**u, Some((*r).clone())));
                }
            }
        }
        let mut out = Vec::new();
        table(
            &mut out,
            &old.node_config,
            &new.node_config,
            RowUpdate::NodeConfig,
        );
        table(
            &mut out,
            &old.logical_ports,
            &new.logical_ports,
            RowUpdate::LogicalPort,
        );
        table(&mut out, &old.services, &new.services, RowUpdate::Service);
        table(
            &mut out,
            &old.service_ports,
            &new.service_ports,
            RowUpdate::ServicePort,
        );
        table(
            &mut out,
            &old.endpoints,
            &new.endpoints,
            RowUpdate::Endpoint,
        );
        table(
            &mut out,
            &old.remote_nodes,
            &new.remote_nodes,
            RowUpdate::RemoteNode,
        );
        out
    }
}

/// The program as maps, with the journal of the values each write replaced
/// since the last [`Out::take_changes`].
#[derive(Debug, Default)]
struct Out {
    ports: BTreeMap<String, PortSpec>,
    port_security: BTreeMap<u16, PortSecurity>,
    arp: BTreeMap<Ipv4Addr, Mac>,
    vteps: BTreeMap<String, Ipv4Addr>,
    settings: NodeSettings,
    /// Hashed (the most numerous items): sorted only when the program is
    /// built or the changes are taken.
    flows: FastMap<FlowKey, (u64, String)>,
    services: BTreeMap<String, ServiceSpec>,
    journal: Journal,
    /// Journal writes (off while loading: nobody asks for the changes).
    recording: bool,
}

/// First-touch values of every key written since the last take.
#[derive(Debug, Default)]
struct Journal {
    ports: BTreeMap<String, Option<PortSpec>>,
    port_security: BTreeMap<u16, Option<PortSecurity>>,
    arp: BTreeMap<Ipv4Addr, Option<Mac>>,
    vteps: BTreeMap<String, Option<Ipv4Addr>>,
    settings: Option<NodeSettings>,
    flows: FastMap<FlowKey, Option<(u64, String)>>,
    services: BTreeMap<String, Option<ServiceSpec>>,
}

/// Writes `v` (None: removes) at `k`, journaling the first old value
/// when `record`.
fn put<K: Ord + Clone, V>(
    map: &mut BTreeMap<K, V>,
    journal: &mut BTreeMap<K, Option<V>>,
    record: bool,
    k: K,
    v: Option<V>,
) {
    if !record {
        match v {
            Some(v) => map.insert(k, v),
            None => map.remove(&k),
        };
        return;
    }
    let old = match v {
        Some(v) => map.insert(k.clone(), v),
        None => map.remove(&k),
    };
    journal.entry(k).or_insert(old);
}

/// The journaled keys whose value differs now: (set, removed), in key
/// order, as `sluice_api::node::diff` lists them.
fn changed<K: Ord + Clone, V: PartialEq + Clone>(
    map: &BTreeMap<K, V>,
    journal: BTreeMap<K, Option<V>>,
) -> (Vec<(K, V)>, Vec<K>) {
    let (mut set, mut removed) = (Vec::new(), Vec::new());
    for (k, old) in journal {
        match (old, map.get(&k)) {
            (Some(_), None) => removed.push(k),
            (old, Some(new)) if old.as_ref() != Some(new) => set.push((k, new.clone())),
            _ => {}
        }
    }
    (set, removed)
}

fn flow_key(f: &Flow) -> FlowKey {
    (f.table, Reverse(f.priority), f.match_.clone())
}

fn flow_of(k: &FlowKey, body: &(u64, String)) -> Flow {
    Flow {
        table: k.0,
        priority: k.1 .0,
        match_: k.2.clone(),
        cookie: body.0,
        actions: body.1.clone(),
    }
}

impl Out {
    fn flow(&mut self, f: Flow) -> FlowKey {
        let k = flow_key(&f);
        let old = self.flows.insert(k.clone(), (f.cookie, f.actions));
        if self.recording {
            self.journal.flows.entry(k.clone()).or_insert(old);
        }
        k
    }

    fn unflow(&mut self, k: FlowKey) {
        let old = self.flows.remove(&k);
        if self.recording {
            self.journal.flows.entry(k).or_insert(old);
        }
    }

    fn set_settings(&mut self, s: NodeSettings) {
        if self.settings != s {
            let old = std::mem::replace(&mut self.settings, s);
            if self.recording {
                self.journal.settings.get_or_insert(old);
            }
        }
    }

    /// The changes since the last take (generation 0, no expected
    /// generation), equal to `diff(before, now)`.
    fn take_changes(&mut self) -> NodeChanges {
        let j = std::mem::take(&mut self.journal);
        let mut c = NodeChanges::default();
        for (name, old) in j.ports {
            let new = self.ports.get(&name);
            if old.as_ref() != new {
                if old.is_some() {
                    c.ports_removed.push(name.clone());
                }
                if let Some(n) = new {
                    c.ports_added.insert(name, n.clone());
                }
            }
        }
        if let Some(old) = j.settings {
            if old != self.settings {
                c.settings = Some(self.settings.clone());
            }
        }
        let (set, removed) = changed(&self.vteps, j.vteps);
        c.vteps_set = set.into_iter().collect();
        c.vteps_removed = removed;
        let (set, removed) = changed(&self.arp, j.arp);
        c.arp_set = set.into_iter().collect();
        c.arp_removed = removed;
        let (set, removed) = changed(&self.port_security, j.port_security);
        c.port_security_set = set.into_iter().map(|(_, v)| v).collect();
        c.port_security_removed = removed;
        let mut adds = Vec::new();
        let mut touched: Vec<(FlowKey, Option<(u64, String)>)> = j.flows.into_iter().collect();
        touched.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (k, old) in touched {
            match (old, self.flows.get(&k)) {
                (Some(_), None) => c.flow_ops.push(FlowOp::Del {
                    match_: flow_of(&k, &(0, String::new())).key_text(),
                    strict: true,
                }),
                (old, Some(new)) if old.as_ref() != Some(new) => adds.push(FlowOp::Add {
                    flow: flow_of(&k, new).text(),
                }),
                _ => {}
            }
        }
        c.flow_ops.extend(adds);
        let (set, removed) = changed(&self.services, j.services);
        c.services.upsert = set.into_iter().map(|(_, v)| v).collect();
        c.services.delete = removed;
        c
    }
}

/// The keys one section wrote, so it can be taken back.
#[derive(Debug, Default)]
struct Written {
    ports: Vec<String>,
    port_security: Vec<u16>,
    arp: Vec<Ipv4Addr>,
    vteps: Vec<String>,
    flows: Vec<FlowKey>,
    errors: Vec<RowError>,
}

/// A Service's own checks, before conflicts with other Services.
#[derive(Debug, Clone, PartialEq)]
enum Local {
    /// No node settings: nothing is compiled.
    NoNode,
    /// The row does not compile on its own.
    Bad(String),
    /// It compiles: its frontends (in the order the from-scratch compile
    /// meets them: spec by spec, each spec's sorted frontends, with the
    /// protocol's name) and its specs' Service names, in spec order.
    Good {
        frontends: Vec<(Frontend, &'static str)>,
        names: Vec<String>,
    },
}

impl Local {
    fn claims(&self) -> (BTreeSet<Frontend>, BTreeSet<&str>) {
        match self {
            Local::Good { frontends, names } => (
                frontends.iter().map(|(f, _)| *f).collect(),
                names.iter().map(String::as_str).collect(),
            ),
            _ => Default::default(),
        }
    }
}

/// What a Service contributed.
#[derive(Debug, Default)]
struct Emitted {
    error: Option<RowError>,
    specs: Vec<String>,
    flows: Vec<FlowKey>,
    replies: Vec<Ipv4Addr>,
}

#[derive(Debug)]
struct Svc {
    row: Service,
    key: SvcKey,
    local: Local,
    /// Holds its frontends and names (no earlier Service does).
    accepted: bool,
    /// The conflict or check error it reports.
    error: Option<String>,
    emitted: Emitted,
}

fn svc_key(u: Uuid, s: &Service) -> SvcKey {
    (s.namespace.clone(), s.name.clone(), u)
}

fn display(k: &SvcKey) -> String {
    format!("{}/{}", k.0, k.1)
}

/// How much work the last update did (for tests and benchmarks: the cost
/// of a change is bounded by what it touched, not by the program's size).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// The node settings changed: everything was recompiled.
    pub full: bool,
    /// Services whose own rows were compiled again.
    pub services_compiled: usize,
    /// Services whose standing (conflicts in name order) was looked at.
    pub services_checked: usize,
    /// Services whose contribution to the program was rewritten.
    pub services_rewritten: usize,
}

/// Where the last update's time went (for the agent's log of large
/// batches).
#[derive(Debug, Clone, Copy, Default)]
pub struct UpdateTimes {
    /// Monitor rows to typed rows ([`IncrementalCompiler::update_from_changes`]
    /// only; zero for [`IncrementalCompiler::update`]).
    pub convert: std::time::Duration,
    /// Applying the rows and recompiling what depends on them.
    pub compile: std::time::Duration,
    /// Building the changes from the journal (the diff).
    pub changes: std::time::Duration,
}

/// The incremental compiler. See the module documentation.
#[derive(Debug)]
pub struct IncrementalCompiler {
    limits: Limits,
    node_configs: BTreeMap<Uuid, NodeConfig>,
    logical_ports: BTreeMap<Uuid, LogicalPort>,
    remote_nodes: BTreeMap<Uuid, RemoteNode>,
    services: BTreeMap<Uuid, Svc>,
    service_ports: BTreeMap<Uuid, ServicePort>,
    endpoints: BTreeMap<Uuid, Endpoint>,
    /// Service_Port → the Services that reference it.
    port_users: BTreeMap<Uuid, BTreeSet<Uuid>>,
    /// Service UUID (existing or not) → the Endpoints that reference it.
    eps_of: BTreeMap<Uuid, BTreeSet<Uuid>>,
    /// Frontend → the Services (with good rows) that claim it.
    fe_claims: BTreeMap<Frontend, BTreeSet<SvcKey>>,
    /// Service name of a spec → the Services (with good rows) that claim it.
    name_claims: BTreeMap<String, BTreeSet<SvcKey>>,
    node: Option<Node>,
    node_errors: Vec<RowError>,
    /// Node, remote nodes, pods.
    sections: [Written; 3],
    /// Endpoint address → how many accepted Service specs list it.
    reply_refs: FastMap<Ipv4Addr, usize>,
    /// Endpoints reported for a Service that does not exist.
    dangling: BTreeMap<Uuid, RowError>,
    /// Row errors with the number of sources reporting each.
    errors: BTreeMap<RowError, usize>,
    errors_epoch: u64,
    /// Rows that did not convert to their typed form, by table and UUID.
    conversion: BTreeMap<(&'static str, Uuid), RowError>,
    out: Out,
    stats: UpdateStats,
    times: UpdateTimes,
}

/// What changed, and so must be recomputed, in one update.
#[derive(Default)]
struct Dirty {
    node: bool,
    remotes: bool,
    pods: bool,
    services: BTreeSet<Uuid>,
    endpoints: BTreeSet<Uuid>,
    /// Claims of Services whose rows changed or went away, before the
    /// change: their claimants must be looked at again.
    old_claims: Vec<(BTreeSet<Frontend>, BTreeSet<String>)>,
    /// What deleted Services had contributed.
    gone: Vec<Emitted>,
}

impl Default for IncrementalCompiler {
    fn default() -> Self {
        IncrementalCompiler::new(Limits::default())
    }
}

impl IncrementalCompiler {
    /// An empty compiler (no rows: the program is empty and the error
    /// says there is no `Node_Config`).
    pub fn new(limits: Limits) -> Self {
        let mut c = IncrementalCompiler {
            limits,
            node_configs: BTreeMap::new(),
            logical_ports: BTreeMap::new(),
            remote_nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            service_ports: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            port_users: BTreeMap::new(),
            eps_of: BTreeMap::new(),
            fe_claims: BTreeMap::new(),
            name_claims: BTreeMap::new(),
            node: None,
            node_errors: Vec::new(),
            sections: Default::default(),
            reply_refs: FastMap::default(),
            dangling: BTreeMap::new(),
            errors: BTreeMap::new(),
            errors_epoch: 0,
            conversion: BTreeMap::new(),
            out: Out::default(),
            stats: UpdateStats::default(),
            times: UpdateTimes::default(),
        };
        c.recompute(Dirty {
            node: true,
            ..Default::default()
        });
        c.out.journal = Journal::default();
        c.out.recording = true;
        c
    }

    /// A compiler holding `rows` (as [`compile_with`](super::compile::compile_with)
    /// would compile them).
    pub fn from_rows(rows: &NodeRows, limits: Limits) -> Self {
        fn all<'a, T: Clone + 'a>(
            rows: &'a [(Uuid, T)],
            make: fn(Uuid, Option<T>) -> RowUpdate,
        ) -> impl Iterator<Item = RowUpdate> + 'a {
            rows.iter().map(move |(u, r)| make(*u, Some(r.clone())))
        }
        let mut c = IncrementalCompiler::new(limits);
        c.load(
            all(&rows.node_config, RowUpdate::NodeConfig)
                .chain(all(&rows.logical_ports, RowUpdate::LogicalPort))
                .chain(all(&rows.services, RowUpdate::Service))
                .chain(all(&rows.service_ports, RowUpdate::ServicePort))
                .chain(all(&rows.endpoints, RowUpdate::Endpoint))
                .chain(all(&rows.remote_nodes, RowUpdate::RemoteNode)),
        );
        c
    }

    /// A compiler holding the node tables of `replica` (a monitor's
    /// snapshot); rows that do not convert are left out and reported by
    /// [`Self::conversion_errors`], as [`Self::update_from_changes`] does.
    pub fn from_replica(replica: &Replica, limits: Limits) -> Self {
        fn take<T: TableRow>(
            replica: &Replica,
            make: fn(Uuid, Option<T>) -> RowUpdate,
            out: &mut Vec<RowUpdate>,
            conversion: &mut BTreeMap<(&'static str, Uuid), RowError>,
        ) {
            for (u, r) in replica.typed::<T>() {
                match r {
                    Ok(v) => out.push(make(u, Some(v))),
                    Err(e) => {
                        conversion.insert(
                            (T::TABLE, u),
                            RowError {
                                table: T::TABLE,
                                key: u.to_string(),
                                sentence: e.to_string(),
                            },
                        );
                    }
                }
            }
        }
        let mut c = IncrementalCompiler::new(limits);
        let mut v = Vec::new();
        let conv = &mut c.conversion;
        take(replica, RowUpdate::NodeConfig, &mut v, conv);
        take(replica, RowUpdate::LogicalPort, &mut v, conv);
        take(replica, RowUpdate::Service, &mut v, conv);
        take(replica, RowUpdate::ServicePort, &mut v, conv);
        take(replica, RowUpdate::Endpoint, &mut v, conv);
        take(replica, RowUpdate::RemoteNode, &mut v, conv);
        c.load(v);
        c
    }

    /// Applies `updates` and returns the changes from the program held
    /// before to the one held now (generation 0, no expected generation:
    /// the caller stamps them). Equal to `diff(before, after)`.
    pub fn update(&mut self, updates: impl IntoIterator<Item = RowUpdate>) -> NodeChanges {
        let t = std::time::Instant::now();
        self.times.convert = std::time::Duration::ZERO;
        self.apply_updates(updates);
        self.times.compile = t.elapsed();
        let t = std::time::Instant::now();
        let changes = self.out.take_changes();
        self.times.changes = t.elapsed();
        changes
    }

    /// Applies `updates` without building the changes (for a first load or
    /// a resynchronisation, after which the caller diffs [`Self::program`]
    /// against what `sluiced` holds).
    pub fn load(&mut self, updates: impl IntoIterator<Item = RowUpdate>) {
        self.out.journal = Journal::default();
        self.out.recording = false;
        self.apply_updates(updates);
        self.out.recording = true;
    }

    /// Applies a monitor batch ([`RowChange`]s of the node tables; other
    /// tables are ignored) and returns the changes, as [`Self::update`].
    /// Rows that do not convert are treated as absent and reported by
    /// [`Self::conversion_errors`].
    pub fn update_from_changes(&mut self, changes: &[RowChange]) -> NodeChanges {
        let t = std::time::Instant::now();
        let mut updates = Vec::with_capacity(changes.len());
        for c in changes {
            if let Some((u, err)) = RowUpdate::from_change(c) {
                let table = match &u {
                    RowUpdate::NodeConfig(..) => NodeConfig::TABLE,
                    RowUpdate::LogicalPort(..) => LogicalPort::TABLE,
                    RowUpdate::Service(..) => Service::TABLE,
                    RowUpdate::ServicePort(..) => ServicePort::TABLE,
                    RowUpdate::Endpoint(..) => Endpoint::TABLE,
                    RowUpdate::RemoteNode(..) => RemoteNode::TABLE,
                };
                let changed = match err {
                    Some(e) => self.conversion.insert((table, c.uuid), e.clone()) != Some(e),
                    None => self.conversion.remove(&(table, c.uuid)).is_some(),
                };
                if changed {
                    self.errors_epoch += 1;
                }
                updates.push(u);
            }
        }
        let convert = t.elapsed();
        let out = self.update(updates);
        self.times.convert = convert;
        out
    }

    /// The program held, canonical (O(program): for a full push or a diff
    /// against what `sluiced` holds).
    pub fn program(&self) -> NodeProgram {
        let o = &self.out;
        NodeProgram {
            ports: o.ports.clone(),
            flows: {
                let mut v: Vec<(&FlowKey, &(u64, String))> = o.flows.iter().collect();
                v.sort_unstable_by(|a, b| a.0.cmp(b.0));
                v.into_iter().map(|(k, b)| flow_of(k, b)).collect()
            },
            services: o.services.clone(),
            vteps: o.vteps.clone(),
            port_security: o.port_security.clone(),
            arp_responder: o.arp.clone(),
            settings: o.settings.clone(),
            ..Default::default()
        }
    }

    /// The ports of the program held (cheap: no program is built).
    pub fn ports(&self) -> &BTreeMap<String, PortSpec> {
        &self.out.ports
    }

    /// The node settings of the program held.
    pub fn settings(&self) -> &NodeSettings {
        &self.out.settings
    }

    /// Records `errors` as the rows of a snapshot that did not convert
    /// (what [`NodeRows::from_replica`] returns beside the rows given to
    /// [`Self::from_rows`]), so a later change of such a row clears its
    /// error as [`Self::update_from_changes`] does. An error whose key is
    /// not a UUID is ignored.
    pub fn set_conversion_errors(&mut self, errors: &[RowError]) {
        self.conversion.clear();
        for e in errors {
            if let Ok(u) = e.key.parse::<Uuid>() {
                self.conversion.insert((e.table, u), e.clone());
            }
        }
        self.errors_epoch += 1;
    }

    /// The rows that were not compiled, sorted (as [`Compiled::errors`]).
    pub fn errors(&self) -> Vec<RowError> {
        self.errors.keys().cloned().collect()
    }

    /// Rows of the monitored tables that did not convert to typed rows
    /// (see [`Self::update_from_changes`]), sorted.
    pub fn conversion_errors(&self) -> Vec<RowError> {
        let mut v: Vec<RowError> = self.conversion.values().cloned().collect();
        v.sort();
        v
    }

    /// A number that changes whenever [`Self::errors`] or
    /// [`Self::conversion_errors`] does (to know when to rewrite the status).
    pub fn errors_epoch(&self) -> u64 {
        self.errors_epoch
    }

    /// Program and errors, as [`compile_with`](super::compile::compile_with)
    /// returns them.
    pub fn compiled(&self) -> Compiled {
        Compiled {
            program: self.program(),
            errors: self.errors(),
        }
    }

    /// The rows held, in UUID order.
    pub fn rows(&self) -> NodeRows {
        fn v<T: Clone>(m: &BTreeMap<Uuid, T>) -> Vec<(Uuid, T)> {
            m.iter().map(|(u, r)| (*u, r.clone())).collect()
        }
        NodeRows {
            node_config: v(&self.node_configs),
            logical_ports: v(&self.logical_ports),
            services: self
                .services
                .iter()
                .map(|(u, s)| (*u, s.row.clone()))
                .collect(),
            service_ports: v(&self.service_ports),
            endpoints: v(&self.endpoints),
            remote_nodes: v(&self.remote_nodes),
        }
    }

    /// The work the last update did.
    pub fn last_stats(&self) -> UpdateStats {
        self.stats
    }

    /// Where the last [`Self::update`] (or [`Self::update_from_changes`])
    /// spent its time.
    pub fn last_times(&self) -> UpdateTimes {
        self.times
    }

    /// Number of Services held (rows).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    // ------------------------------------------------------------ errors

    fn add_error(&mut self, e: RowError) {
        let n = self.errors.entry(e).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.errors_epoch += 1;
        }
    }

    fn remove_error(&mut self, e: &RowError) {
        if let Some(n) = self.errors.get_mut(e) {
            *n -= 1;
            if *n == 0 {
                self.errors.remove(e);
                self.errors_epoch += 1;
            }
        }
    }

    // ------------------------------------------------------------- rows

    fn apply_updates(&mut self, updates: impl IntoIterator<Item = RowUpdate>) {
        let mut d = Dirty::default();
        for u in updates {
            match u {
                RowUpdate::NodeConfig(u, r) => {
                    set_row(&mut self.node_configs, u, r);
                    d.node = true;
                }
                RowUpdate::LogicalPort(u, r) => {
                    if set_row(&mut self.logical_ports, u, r) {
                        d.pods = true;
                    }
                }
                RowUpdate::RemoteNode(u, r) => {
                    if set_row(&mut self.remote_nodes, u, r) {
                        d.remotes = true;
                    }
                }
                RowUpdate::ServicePort(u, r) => {
                    if set_row(&mut self.service_ports, u, r) {
                        if let Some(users) = self.port_users.get(&u) {
                            d.services.extend(users.iter().copied());
                        }
                    }
                }
                RowUpdate::Endpoint(u, r) => {
                    let old_svc = self.endpoints.get(&u).and_then(|e| e.service);
                    let new_svc = r.as_ref().and_then(|e| e.service);
                    if !set_row(&mut self.endpoints, u, r) {
                        continue;
                    }
                    if let Some(s) = old_svc {
                        if let Some(set) = self.eps_of.get_mut(&s) {
                            set.remove(&u);
                            if set.is_empty() {
                                self.eps_of.remove(&s);
                            }
                        }
                        d.services.insert(s);
                    }
                    if let Some(s) = new_svc {
                        self.eps_of.entry(s).or_default().insert(u);
                        d.services.insert(s);
                    }
                    d.endpoints.insert(u);
                }
                RowUpdate::Service(u, r) => self.set_service(&mut d, u, r),
            }
        }
        self.recompute(d);
    }

    fn set_service(&mut self, d: &mut Dirty, u: Uuid, r: Option<Service>) {
        let old_ports: BTreeSet<Uuid> = self
            .services
            .get(&u)
            .map(|s| s.row.ports.clone())
            .unwrap_or_default();
        let existed = self.services.contains_key(&u);
        match r {
            Some(row) => {
                if let Some(s) = self.services.get_mut(&u) {
                    if s.row == row {
                        return;
                    }
                    s.row = row;
                } else {
                    self.services.insert(
                        u,
                        Svc {
                            key: svc_key(u, &row),
                            row,
                            local: Local::NoNode,
                            accepted: false,
                            error: None,
                            emitted: Emitted::default(),
                        },
                    );
                }
            }
            None => {
                let Some(s) = self.services.remove(&u) else {
                    return;
                };
                self.unclaim(&s.key, &s.local, d);
                d.gone.push(s.emitted);
            }
        }
        let new_ports: BTreeSet<Uuid> = self
            .services
            .get(&u)
            .map(|s| s.row.ports.clone())
            .unwrap_or_default();
        for p in old_ports.difference(&new_ports) {
            if let Some(set) = self.port_users.get_mut(p) {
                set.remove(&u);
                if set.is_empty() {
                    self.port_users.remove(p);
                }
            }
        }
        for p in new_ports.difference(&old_ports) {
            self.port_users.entry(*p).or_default().insert(u);
        }
        if existed != self.services.contains_key(&u) {
            // Its endpoints' errors (dangling or not) change.
            if let Some(eps) = self.eps_of.get(&u) {
                d.endpoints.extend(eps.iter().copied());
            }
        }
        d.services.insert(u);
    }

    /// Removes a Service's claims, remembering them so their other
    /// claimants are looked at again.
    fn unclaim(&mut self, key: &SvcKey, local: &Local, d: &mut Dirty) {
        let (fes, names) = local.claims();
        for f in &fes {
            if let Some(set) = self.fe_claims.get_mut(f) {
                set.remove(key);
                if set.is_empty() {
                    self.fe_claims.remove(f);
                }
            }
        }
        for n in &names {
            if let Some(set) = self.name_claims.get_mut(*n) {
                set.remove(key);
                if set.is_empty() {
                    self.name_claims.remove(*n);
                }
            }
        }
        d.old_claims
            .push((fes, names.into_iter().map(str::to_string).collect()));
    }

    // -------------------------------------------------------- recompute

    fn recompute(&mut self, mut d: Dirty) {
        self.stats = UpdateStats::default();
        if d.node {
            let (node, errors) = compile_node(self.node_configs.values().collect());
            for e in std::mem::take(&mut self.node_errors) {
                self.remove_error(&e);
            }
            for e in &errors {
                self.add_error(e.clone());
            }
            self.node_errors = errors;
            if node != self.node {
                self.node = node;
                self.stats.full = true;
                // Everything depends on the node.
                d.remotes = true;
                d.pods = true;
                d.services.extend(self.services.keys().copied());
                d.endpoints.extend(self.endpoints.keys().copied());
                let s = self.node.as_ref().map(node_section).unwrap_or_default();
                self.replace_section(0, s);
            }
        }
        if d.remotes {
            let (s, settings) = match &self.node {
                Some(n) => {
                    let (s, cluster) = remote_section(n, self.remote_nodes.values().collect());
                    (s, settings_of(n, cluster))
                }
                None => Default::default(),
            };
            self.replace_section(1, s);
            self.out.set_settings(settings);
        }
        if d.pods {
            let s = match &self.node {
                Some(n) => pod_section(n, self.logical_ports.values().collect(), &self.limits),
                None => Section::default(),
            };
            self.replace_section(2, s);
        }
        self.recompute_services(&mut d);
        for e in std::mem::take(&mut d.endpoints) {
            self.check_endpoint(e);
        }
    }

    /// Replaces section `i`'s contribution.
    fn replace_section(&mut self, i: usize, s: Section) {
        let old = std::mem::take(&mut self.sections[i]);
        let rec = self.out.recording;
        let o = &mut self.out;
        let j = &mut o.journal;
        for k in old.ports {
            put(&mut o.ports, &mut j.ports, rec, k, None);
        }
        for k in old.port_security {
            put(&mut o.port_security, &mut j.port_security, rec, k, None);
        }
        for k in old.arp {
            put(&mut o.arp, &mut j.arp, rec, k, None);
        }
        for k in old.vteps {
            put(&mut o.vteps, &mut j.vteps, rec, k, None);
        }
        for k in old.flows {
            o.unflow(k);
        }
        for e in &old.errors {
            self.remove_error(e);
        }
        let mut w = Written::default();
        let o = &mut self.out;
        let j = &mut o.journal;
        for (k, v) in s.ports {
            w.ports.push(k.clone());
            put(&mut o.ports, &mut j.ports, rec, k, Some(v));
        }
        for (k, v) in s.port_security {
            w.port_security.push(k);
            put(&mut o.port_security, &mut j.port_security, rec, k, Some(v));
        }
        for (k, v) in s.arp_responder {
            w.arp.push(k);
            put(&mut o.arp, &mut j.arp, rec, k, Some(v));
        }
        for (k, v) in s.vteps {
            w.vteps.push(k.clone());
            put(&mut o.vteps, &mut j.vteps, rec, k, Some(v));
        }
        for f in s.cx.flows {
            w.flows.push(o.flow(f));
        }
        for e in &s.cx.errors {
            self.add_error(e.clone());
        }
        w.errors = s.cx.errors;
        self.sections[i] = w;
    }

    fn check_endpoint(&mut self, u: Uuid) {
        let want = match (&self.node, self.endpoints.get(&u).and_then(|e| e.service)) {
            (Some(_), Some(s)) if !self.services.contains_key(&s) => Some(s),
            _ => None,
        };
        if let Some(old) = self.dangling.remove(&u) {
            self.remove_error(&old);
        }
        if let Some(s) = want {
            let e = RowError {
                table: Endpoint::TABLE,
                key: u.to_string(),
                sentence: dangling_endpoint(s),
            };
            self.add_error(e.clone());
            self.dangling.insert(u, e);
        }
    }

    /// The specs of Service `u` (its own checks only).
    fn specs_of(&self, u: Uuid) -> Option<Result<Vec<ServiceSpec>, String>> {
        let n = self.node.as_ref()?;
        let s = self.services.get(&u)?;
        let eps: Vec<&Endpoint> = self
            .eps_of
            .get(&u)
            .map(|set| set.iter().filter_map(|e| self.endpoints.get(e)).collect())
            .unwrap_or_default();
        Some(service_specs(
            n,
            &s.row,
            &|p| self.service_ports.get(p),
            &eps,
        ))
    }

    fn recompute_services(&mut self, d: &mut Dirty) {
        let mut work: BTreeSet<SvcKey> = BTreeSet::new();
        // Fresh specs of the Services whose rows changed.
        let mut fresh: BTreeMap<Uuid, Vec<ServiceSpec>> = BTreeMap::new();
        // The Services whose rows (or what they reference) changed.
        let mut recompiled: BTreeSet<Uuid> = BTreeSet::new();
        for u in std::mem::take(&mut d.services) {
            let Some(svc) = self.services.get(&u) else {
                continue; // deleted, or an endpoint's missing Service
            };
            let (old_key, old_local) = (svc.key.clone(), svc.local.clone());
            let new_key = svc_key(u, &svc.row);
            let specs = self.specs_of(u);
            self.stats.services_compiled += 1;
            let local = match &specs {
                None => Local::NoNode,
                Some(Err(e)) => Local::Bad(e.clone()),
                // Specs exist only with a node (`specs_of`).
                Some(Ok(_)) if self.node.is_none() => Local::NoNode,
                Some(Ok(specs)) => {
                    let Some(n) = self.node.as_ref() else {
                        continue;
                    };
                    Local::Good {
                        frontends: specs
                            .iter()
                            .flat_map(|s| {
                                frontends_of(n, s).into_iter().map(|(ip, port)| {
                                    ((ip, port, s.protocol.ipproto()), s.protocol.name())
                                })
                            })
                            .collect(),
                        names: specs.iter().map(|s| s.name.clone()).collect(),
                    }
                }
            };
            if let Some(Ok(specs)) = specs {
                fresh.insert(u, specs);
            }
            if old_key != new_key || old_local != local {
                self.unclaim(&old_key, &old_local, d);
                let (fes, names) = local.claims();
                for f in fes {
                    self.fe_claims.entry(f).or_default().insert(new_key.clone());
                }
                for n in names {
                    self.name_claims
                        .entry(n.to_string())
                        .or_default()
                        .insert(new_key.clone());
                }
                d.old_claims.push({
                    let (f, n) = local.claims();
                    (f, n.into_iter().map(str::to_string).collect())
                });
            }
            recompiled.insert(u);
            let Some(svc) = self.services.get_mut(&u) else {
                continue;
            };
            svc.key = new_key.clone();
            svc.local = local;
            work.insert(new_key);
        }
        // Every claimant of a claim that changed hands is looked at again.
        let push = |work: &mut BTreeSet<SvcKey>, set: &BTreeSet<SvcKey>| {
            for k in set {
                if !work.contains(k) {
                    work.insert(k.clone());
                }
            }
        };
        for (fes, names) in std::mem::take(&mut d.old_claims) {
            for f in &fes {
                if let Some(set) = self.fe_claims.get(f) {
                    push(&mut work, set);
                }
            }
            for n in &names {
                if let Some(set) = self.name_claims.get(n) {
                    push(&mut work, set);
                }
            }
        }
        // In name order: a Service's standing depends only on the Services
        // before it, so each is settled once.
        let mut touched: Vec<Uuid> = Vec::new();
        while let Some(k) = work.pop_first() {
            let u = k.2;
            let Some(svc) = self.services.get(&u) else {
                continue;
            };
            if svc.key != k {
                continue;
            }
            let (accepted, error) = self.standing(svc);
            self.stats.services_checked += 1;
            let Some(svc) = self.services.get(&u) else {
                continue;
            };
            let moved = accepted != svc.accepted;
            if moved {
                let (fes, names) = svc.local.claims();
                for f in &fes {
                    if let Some(set) = self.fe_claims.get(f) {
                        work.extend(set.range((Excl(&k), Unb)).cloned());
                    }
                }
                for n in &names {
                    if let Some(set) = self.name_claims.get(*n) {
                        work.extend(set.range((Excl(&k), Unb)).cloned());
                    }
                }
            }
            let Some(svc) = self.services.get_mut(&u) else {
                continue;
            };
            if moved || error != svc.error || recompiled.contains(&u) {
                touched.push(u);
            }
            svc.accepted = accepted;
            svc.error = error;
        }
        // Take back everything the touched Services wrote, then write anew
        // (two passes: a Service may take over what another gives up).
        for e in std::mem::take(&mut d.gone) {
            self.retract(e);
        }
        for u in &touched {
            if let Some(svc) = self.services.get_mut(u) {
                let e = std::mem::take(&mut svc.emitted);
                self.retract(e);
            }
        }
        self.stats.services_rewritten = touched.len();
        for u in touched {
            let specs = match fresh.remove(&u) {
                Some(s) => Some(s),
                None => self.specs_of(u).and_then(Result::ok),
            };
            self.emit(u, specs.unwrap_or_default());
        }
    }

    /// Whether Service `svc` holds its frontends and names given the
    /// Services before it in name order, and the error it reports.
    fn standing(&self, svc: &Svc) -> (bool, Option<String>) {
        let (frontends, names) = match &svc.local {
            Local::NoNode => return (false, None),
            Local::Bad(e) => return (false, Some(e.clone())),
            Local::Good { frontends, names } => (frontends, names),
        };
        let k = &svc.key;
        let owner = |set: Option<&BTreeSet<SvcKey>>| -> Option<SvcKey> {
            set?.range(..k)
                .find(|o| self.services.get(&o.2).is_some_and(|s| s.accepted))
                .cloned()
        };
        let mut conflict = None;
        for ((ip, port, proto), name) in frontends {
            if let Some(o) = owner(self.fe_claims.get(&(*ip, *port, *proto))) {
                conflict = Some(frontend_conflict(*ip, *port, name, &display(&o)));
            }
        }
        if let Some(dup) = names
            .iter()
            .find(|n| owner(self.name_claims.get(*n)).is_some())
        {
            conflict = Some(name_conflict(dup));
        }
        (conflict.is_none(), conflict)
    }

    fn retract(&mut self, e: Emitted) {
        if let Some(err) = &e.error {
            self.remove_error(err);
        }
        for name in e.specs {
            put(
                &mut self.out.services,
                &mut self.out.journal.services,
                self.out.recording,
                name,
                None,
            );
        }
        for k in e.flows {
            self.out.unflow(k);
        }
        for ip in e.replies {
            if let Some(n) = self.reply_refs.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.reply_refs.remove(&ip);
                    self.out.unflow(flow_key(&reply_flow(ip)));
                }
            }
        }
    }

    fn emit(&mut self, u: Uuid, specs: Vec<ServiceSpec>) {
        let Some(svc) = self.services.get(&u) else {
            return;
        };
        let mut e = Emitted::default();
        let display_key = display(&svc.key);
        if let Some(s) = &svc.error {
            e.error = Some(RowError {
                table: Service::TABLE,
                key: display_key.clone(),
                sentence: s.clone(),
            });
        }
        let mut cx = Ctx::default();
        if svc.accepted {
            if let Local::Good { frontends, .. } = &svc.local {
                let mine: BTreeMap<Frontend, &'static str> = frontends.iter().copied().collect();
                super::compile::frontend_flows(&mut cx, &display_key, &mine);
            }
        }
        let accepted = svc.accepted;
        if let Some(err) = e.error.clone() {
            self.add_error(err);
        }
        for f in cx.flows {
            e.flows.push(self.out.flow(f));
        }
        if accepted {
            let mut replies: Vec<Ipv4Addr> = specs
                .iter()
                .flat_map(|s| s.endpoints.iter().map(|e| e.ip))
                .collect();
            replies.sort();
            replies.dedup();
            for ip in &replies {
                let n = self.reply_refs.entry(*ip).or_insert(0);
                *n += 1;
                if *n == 1 {
                    self.out.flow(reply_flow(*ip));
                }
            }
            e.replies = replies;
            for spec in specs {
                e.specs.push(spec.name.clone());
                put(
                    &mut self.out.services,
                    &mut self.out.journal.services,
                    self.out.recording,
                    spec.name.clone(),
                    Some(spec),
                );
            }
        }
        if let Some(svc) = self.services.get_mut(&u) {
            svc.emitted = e;
        }
    }
}

use std::ops::Bound::{Excluded as Excl, Unbounded as Unb};

/// Inserts, replaces or removes a row; false when nothing changed.
fn set_row<T: PartialEq>(map: &mut BTreeMap<Uuid, T>, u: Uuid, r: Option<T>) -> bool {
    match r {
        Some(r) => {
            if map.get(&u) == Some(&r) {
                return false;
            }
            map.insert(u, r);
            true
        }
        None => map.remove(&u).is_some(),
    }
}
