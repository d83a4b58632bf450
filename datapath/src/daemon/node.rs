//! `node-commit`, `node-status` and `node-program`: the datapath driven as
//! one program by `sluice-agent`.
//!
//! [`NodeState`] holds the [`NodeProgram`] last committed (every change
//! applied in place with `sluice_api::node::apply_in_place`, at a cost
//! that grows with the change) and its generation; both start
//! empty and at 0 with every `sluiced` process, whose instance id is new.
//!
//! A commit is all or nothing, and seen whole by the PMDs:
//! 1. under the commit lock, check `expected_generation` and that the
//!    generation grows;
//! 2. **prepare** every part without publishing anything: the flow program
//!    (groups set, flow operations, groups removed, as one bundle), the
//!    Service table (with the new node settings when they change), the VTEP
//!    map, the ingress configuration (ARP responder and port security) and
//!    the ports (each added pod port's device opened and started, not yet
//!    polled). The first item that does not check out fails the commit
//!    with its name and why; the prepared parts are dropped (the devices
//!    opened are closed) and nothing changed. A large commit reads its
//!    flow texts on a helper thread while the committing thread builds
//!    the Service table;
//! 3. **publish** every part inside the PMD barrier
//!    (`SharedPorts::barrier_with`): each PMD is parked at a burst
//!    boundary while the prepared versions are stored, so no packet is
//!    processed with half a commit. Everything the barrier needs is ready
//!    before it is raised (the new port table built, the ports' and the
//!    parts' writer locks taken), so inside it there are only pointer
//!    stores (no lock a PMD or another thread could hold, no device
//!    operation, no log line); a PMD parked longer than
//!    `pmd::PARK_PATIENCE` without the commit being published (this
//!    thread descheduled, or stopped by the test hook) gives the attempt
//!    up and forwards on, and the commit tries again;
//! 4. the generation is in force from the barrier's first store, made
//!    before the ports are published (`node-status` shows it from there,
//!    without waiting for the rest, and never shows a commit's ports with
//!    an older generation); after the barrier: the ports' bookkeeping and the
//!    locks released (the
//!    replaced port table freed), then wait until no PMD polls the
//!    removed ports, close them, and flush the connections of removed
//!    endpoints when the Service changes ask for it.
//!
//! The commit's log line times each phase (preparation by part, taking
//! the locks, parking the PMDs and the attempts it took, how long the
//! PMDs were held and by which part's store, the bookkeeping and what
//! follows); a hold of 1 ms or more is also logged as a warning.
//! [`TEST_PAUSE_ENV`] names a test hook that stops the committing thread
//! between phases.
//!
//! The first commit of a process replaces the flow program `sluiced`
//! started with (the learning-switch default): the agent's program is the
//! whole program. Uplink and host ports are `sluiced.ini`'s (their devices
//! are process-local): a program's `uplink`/`host` port binds to the
//! configured one, which must carry the same OpenFlow number.
//!
//! Which node settings apply at run time: the node addresses, NodePort
//! range, masquerade address, cluster CIDRs and zone (the Service table),
//! the VTEP address (tunnels and the local stack) and the uplink MTU
//! (tunnels). The VNI lives in the flows. They replace what `sluiced.ini`
//! set, which is logged once.
//!
//! Thread-safety: control threads call [`NodeState`] concurrently; one
//! mutex serialises commits (and the other writers of each part keep their
//! own locks, taken while preparing).

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_api::node::{
    self as api, item_error, CommitItem, NodeChanges, NodeCommitReply, NodeProgram, NodeStatus,
    PortKind, PortStatus,
};
use sluice_api::ports::PodDriver;
use sluice_api::{ApiError, ErrorCode};

use super::ports::{Ports, StagedPortSpec};
use crate::conntrack::Conntrack;
use crate::flow::program::{FlowMod, FlowProgram};
use crate::flow::tables::FlowTables;
use crate::neigh::ingress::{IngressControl, PortBinding};
use crate::packet::PortNo;
use crate::service::{ServiceConfig, Services};
use crate::stack::StackControl;
use crate::time::clock_ns;
use crate::tunnel::Tunnels;

/// How long a commit waits for every PMD to park.
const BARRIER_WAIT: Duration = Duration::from_secs(5);

/// The configured ports a program's `uplink` and `host` ports bind to.
#[derive(Debug, Clone, Default)]
pub struct FixedPorts {
    /// `[nsx_node_agent] ovs_uplink_port`'s `[port:NAME]`: name, ofport.
    pub uplink: Option<(String, u16)>,
    /// `[datapath] host_port`'s `[port:NAME]`: name, ofport.
    pub host: Option<(String, u16)>,
}

/// What a commit changes, by part.
#[derive(Debug)]
pub struct Parts {
    /// The ports.
    pub ports: Arc<Ports>,
    /// The flow program (None: the L2 pipeline runs; commits are refused).
    pub flows: Option<FlowTables>,
    /// The Service table.
    pub services: Services,
    /// The connection table (flushes of removed endpoints).
    pub conntrack: Conntrack,
    /// Tunnels and their VTEP map.
    pub tunnels: Tunnels,
    /// ARP responder and port security.
    pub ingress: IngressControl,
    /// The local stack (permanent neighbours, the VTEP address).
    pub stack: Option<StackControl>,
    /// The uplink and host ports of `sluiced.ini`.
    pub fixed: FixedPorts,
}

#[derive(Debug, Default)]
struct Held {
    generation: u64,
    program: NodeProgram,
    /// `sluiced.ini`'s settings were replaced (logged once).
    settings_replaced: bool,
}

/// The node program `sluiced` holds, and how commits change it.
#[derive(Debug)]
pub struct NodeState {
    parts: Parts,
    held: Mutex<Held>,
    instance_id: String,
    started: Instant,
    /// The generation in force: stored as soon as a commit is published
    /// (before the held program is brought up to date, under the lock), so
    /// `node-status` neither waits for a commit nor lags behind the PMDs.
    in_force: std::sync::atomic::AtomicU64,
    /// The indexer thread's queue: programs whose changed tables need
    /// their specialised indexes built (see [`spawn_indexer`]).
    indexer: mpsc::Sender<Arc<FlowProgram>>,
}

/// Starts the thread that builds the specialised classifier indexes
/// (`classifier::special::prepare`) of each committed program's changed
/// tables, so that neither the commit nor a PMD's upcall pays for it. A
/// changed table's index is derived from the previous program's (the
/// changed rules removed and inserted, untouched shards shared: a
/// one-rule change to a 100k-rule table copies one shard of ~512 rules)
/// unless the change is large or reshapes the table, when it is compiled
/// afresh. A PMD whose upcall needs a table while its index is being built
/// waits for that build (the slot is a `OnceLock`); one that comes first
/// builds it itself, as before. Only the newest queued program is indexed
/// (older ones are superseded; their changes reach the newest one's
/// delta, so it is still derived). The thread ends when the state is
/// dropped.
fn spawn_indexer() -> mpsc::Sender<Arc<FlowProgram>> {
    let (tx, rx) = mpsc::channel::<Arc<FlowProgram>>();
    let run = move || {
        while let Ok(mut prog) = rx.recv() {
            while let Ok(newer) = rx.try_recv() {
                prog = newer;
            }
            crate::classifier::special::prepare(&prog);
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("sluice-indexer".into())
        .spawn(run)
    {
        // Without the thread, indexes are built on first use by a PMD.
        tracing::warn!(error = %e, "cannot start the classifier indexer thread; PMDs build indexes on first use");
    }
    tx
}

fn port_err(name: &str, e: impl std::fmt::Display, code: ErrorCode) -> ApiError {
    item_error(code, &CommitItem::Port(name.to_string()), &e.to_string())
}

impl NodeState {
    /// A fresh state: generation 0, empty program, a new instance id.
    pub fn new(parts: Parts) -> Self {
        NodeState {
            parts,
            held: Mutex::new(Held::default()),
            instance_id: uuid::Uuid::new_v4().to_string(),
            started: Instant::now(),
            in_force: std::sync::atomic::AtomicU64::new(0),
            indexer: spawn_indexer(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node-status`.
    pub fn status(&self) -> NodeStatus {
        // The ports first, then the generation: a commit stores its
        // generation before it publishes its ports, so ports of commit N
        // come with a generation of at least N.
        let ports = self
            .parts
            .ports
            .list()
            .into_iter()
            .map(|s| {
                let status = PortStatus {
                    ofport: s.ofport,
                    up: crate::port::Port::link(&s.handle).up,
                    forwarding: !s.pmds.is_empty(),
                };
                (s.name, status)
            })
            .collect();
        let generation = self.in_force.load(std::sync::atomic::Ordering::Acquire);
        NodeStatus {
            generation,
            instance_id: self.instance_id.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            ports,
        }
    }

    /// `node-program`.
    pub fn program(&self) -> NodeProgram {
        self.lock().program.clone()
    }

    /// `node-commit` (see the module documentation).
    ///
    /// # Errors
    /// [`ApiError`]: a generation conflict, or the first item refused and
    /// why; nothing was applied.
    pub fn commit(&self, c: &NodeChanges) -> Result<NodeCommitReply, ApiError> {
        let p = &self.parts;
        let Some(flows) = &p.flows else {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "node-commit needs the flow pipeline: set [datapath] pipeline = flow in sluiced.ini",
            ));
        };
        let t_start = Instant::now();
        let mut held = self.lock();
        if let Some(e) = c.expected_generation {
            if e != held.generation {
                return Err(api::generation_conflict(held.generation, e));
            }
        }
        if c.generation <= held.generation {
            return Err(ApiError::invalid(format!(
                "node-commit refused: generation {} does not follow the generation in force ({}); nothing was applied",
                c.generation, held.generation
            )));
        }
        // The ports the program will have (small: a node's pods); the rest
        // of the held program is changed in place once the commit is
        // published, so a commit costs what it changes.
        let mut next_ports = held.program.ports.clone();
        for name in &c.ports_removed {
            next_ports.remove(name);
        }
        for (name, spec) in &c.ports_added {
            next_ports.insert(name.clone(), spec.clone());
        }
        let now = clock_ns();

        // 1. Ports (devices opened, not polled).
        let mut pods_removed = Vec::new();
        for name in &c.ports_removed {
            match held.program.ports.get(name).map(|s| &s.kind) {
                Some(PortKind::Pod { .. }) => pods_removed.push(name.clone()),
                Some(_) => {}
                None => {
                    return Err(port_err(
                        name,
                        "the program holds no such port",
                        ErrorCode::NotFound,
                    ))
                }
            }
        }
        let mut pods_added = Vec::new();
        for (name, spec) in &c.ports_added {
            match &spec.kind {
                PortKind::Pod { interface } => pods_added.push(StagedPortSpec {
                    name: name.clone(),
                    ofport: spec.ofport,
                    interface: interface.clone(),
                    driver: match spec.driver {
                        api::DriverHint::AfXdp => PodDriver::AfXdp,
                        api::DriverHint::AfPacket => PodDriver::AfPacket,
                        _ => PodDriver::DEFAULT,
                    },
                }),
                PortKind::Uplink { .. } => self.check_fixed(name, spec.ofport, true)?,
                PortKind::Host => self.check_fixed(name, spec.ofport, false)?,
            }
        }
        let mut port_stage = p
            .ports
            .stage(&pods_removed, &pods_added)
            .map_err(|(name, e)| {
                let api: ApiError = e.into();
                port_err(&name, api.message, api.code)
            })?;

        let t_ports = Instant::now();
        // 2. Settings.
        let svc_config = c.settings.as_ref().map(ServiceConfig::for_settings);
        // 3. VTEPs.
        let vteps = p
            .tunnels
            .vteps
            .stage(&c.vteps_removed, &c.vteps_set)
            .map_err(|(node, e)| {
                item_error(
                    ErrorCode::InvalidArgument,
                    &CommitItem::Vtep(node),
                    &e.to_string(),
                )
            })?;
        // 4. Neighbours need the local stack.
        if p.stack.is_none() {
            if let Some(ip) = c
                .neighbours_set
                .keys()
                .chain(c.neighbours_removed.iter())
                .next()
            {
                return Err(item_error(
                    ErrorCode::Unavailable,
                    &CommitItem::Neighbour(*ip),
                    "sluiced runs no local stack (configure the uplink port in sluiced.ini)",
                ));
            }
        }
        // 5. Ingress: ARP responder and port security.
        for ps in &c.port_security_set {
            if !next_ports.values().any(|s| s.ofport == ps.port) {
                return Err(item_error(
                    ErrorCode::NotFound,
                    &CommitItem::PortSecurity(ps.port),
                    "no port of the program has this number",
                ));
            }
        }
        let ingress = p.ingress.prepare(|cfg| {
            for ip in &c.arp_removed {
                cfg.arp.addresses.remove(ip);
            }
            for (ip, mac) in &c.arp_set {
                cfg.arp.addresses.insert(*ip, *mac);
            }
            for port in &c.port_security_removed {
                cfg.ports.remove(&PortNo(*port));
            }
            for ps in &c.port_security_set {
                cfg.ports.insert(
                    PortNo(ps.port),
                    PortBinding {
                        mac: ps.mac,
                        ips: ps.ips.clone(),
                    },
                );
            }
        });
        // 6. Flows and groups, one bundle (the first commit replaces the
        // start-up program), and 7. Services (with the new settings). A
        // large commit reads its flow texts on a helper thread while this
        // one builds the Service table (the two read only the request).
        let first = held.generation == 0;
        let big = c.flow_ops.len() + c.services.upsert.len() >= PARALLEL_PREPARE;
        let (mods, services_staged) = if big {
            std::thread::scope(|scope| {
                let parse = std::thread::Builder::new()
                    .name("sluice-commit".into())
                    .spawn_scoped(scope, || flow_mods(c, first));
                let svc = p.services.stage(&c.services, svc_config.clone());
                let mods = match parse {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Err(ApiError::failed(
                            "node-commit refused: reading the flow operations failed (a bug: see the sluiced log); nothing was applied",
                        ))
                    }),
                    // No thread: read them here.
                    Err(_) => flow_mods(c, first),
                };
                (mods, svc)
            })
        } else {
            (
                flow_mods(c, first),
                p.services.stage(&c.services, svc_config.clone()),
            )
        };
        // Errors in the order the parts are listed: flows first.
        let (mods, item_of) = mods?;
        let staged_flows = flows.stage(&mods, now).map_err(|e| {
            let item = match item_of.get(e.index) {
                Some(ModSource::StartUp) => CommitItem::FlowOp(0, "(the start-up program)".into()),
                Some(ModSource::Group(id)) => CommitItem::Group(*id),
                Some(ModSource::FlowOp(i)) => match c.flow_ops.get(*i) {
                    Some(op) => CommitItem::FlowOp(*i, op_text(op)),
                    None => CommitItem::FlowOp(e.index, e.summary.clone()),
                },
                None => CommitItem::FlowOp(e.index, e.summary.clone()),
            };
            item_error(ErrorCode::InvalidArgument, &item, &e.error.to_string())
        })?;
        let t_flows = Instant::now();
        let staged_services = services_staged.map_err(|e| {
            let name = match &e {
                crate::service::ServiceError::FrontendConflict { b, .. } => b.clone(),
                other => service_error_name(other),
            };
            item_error(
                ErrorCode::InvalidArgument,
                &CommitItem::Service(name),
                &e.to_string(),
            )
        })?;

        // Publish everything at once: what the barrier needs is ready (the
        // port table built, its locks taken); inside it, only pointer
        // stores; everything else after it.
        let settings = c.settings.clone();
        let t_prepared = Instant::now();
        test_pause(&self.instance_id, "prepared");
        let t_locking = Instant::now();
        let shared = p.ports.shared();
        let mut ports_pub = p.ports.prepare_publish(&port_stage);
        let t_raise = Instant::now();
        let mut t_parked = t_raise;
        // When each part was stored (inside the barrier).
        let mut marks = [t_raise; 7];
        let published = shared
            .barrier_with(
                BARRIER_WAIT,
                || test_pause(&self.instance_id, "parked"),
                || {
                    t_parked = Instant::now();
                    // In force from here on: stored before anything is
                    // published, so a `node-status` that sees any of this
                    // commit (its ports) sees its generation too
                    // (node-program still waits for the held program,
                    // under the lock). This closure runs only once the
                    // barrier is won: it cannot be undone.
                    self.in_force
                        .store(c.generation, std::sync::atomic::Ordering::Release);
                    ports_pub.publish();
                    marks[0] = Instant::now();
                    let flows = staged_flows.publish();
                    marks[1] = Instant::now();
                    let services = staged_services.publish();
                    marks[2] = Instant::now();
                    vteps.publish();
                    marks[3] = Instant::now();
                    p.ingress.publish(ingress);
                    marks[4] = Instant::now();
                    if let Some(s) = &settings {
                        self.apply_settings(s);
                    }
                    marks[5] = Instant::now();
                    if let Some(st) = &p.stack {
                        for ip in &c.neighbours_removed {
                            st.del_neighbour(*ip);
                        }
                        for (ip, mac) in &c.neighbours_set {
                            st.set_neighbour(*ip, *mac);
                        }
                    }
                    marks[6] = Instant::now();
                    (flows, services)
                },
            )
            .map_err(|e| ApiError::failed(format!("node-commit refused: {e}")))?;
        // `port_stage` dropped unpublished on the error above closes the
        // devices it opened (and `ports_pub`, dropped, changed nothing).
        let t_lowered = Instant::now();
        let ((_flows, services), attempts) = published;
        ports_pub.finish(&mut port_stage);
        let t_published = Instant::now();
        test_pause(&self.instance_id, "published");
        // The changed tables' indexes, built off the commit's path (an
        // error means the thread is gone: PMDs build them on first use).
        let _ = self.indexer.send(flows.program());
        let flushed = services.flush(Some(&p.conntrack));
        if flushed.flushed > 0 {
            tracing::info!(
                "node-commit {}: {} connections of removed endpoints flushed",
                c.generation,
                flushed.flushed
            );
        }
        if let Err(e) = p.ports.finish_stage(port_stage) {
            tracing::warn!("node-commit {}: {e}", c.generation);
        }
        for port in &c.port_security_removed {
            if !next_ports.values().any(|s| s.ofport == *port) {
                p.ingress.forget_port(PortNo(*port));
            }
        }
        if settings.is_some() && !held.settings_replaced {
            held.settings_replaced = true;
            tracing::info!("node settings from node-commit replace sluiced.ini's ([services] node addresses, NodePort range, masquerade address, cluster CIDRs, zone; [datapath] vtep_ip, uplink_mtu)");
        }
        api::apply_in_place(&mut held.program, c);
        held.generation = c.generation;
        let counts = c.counts();
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let us = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e6;
        let t_end = Instant::now();
        let held_us = us(t_parked, marks[6]);
        let parts = format!(
            "ports {:.1}, flows {:.1}, services {:.1}, vteps {:.1}, ingress {:.1}, settings {:.1}, neighbours {:.1}",
            us(t_parked, marks[0]),
            us(marks[0], marks[1]),
            us(marks[1], marks[2]),
            us(marks[2], marks[3]),
            us(marks[3], marks[4]),
            us(marks[4], marks[5]),
            us(marks[5], marks[6]),
        );
        tracing::info!(
            prepare_ms = format!("{:.2}", ms(t_start, t_prepared)),
            prepare_parts_ms = format!(
                "ports {:.2}, flows and services {:.2}, rest {:.2}",
                ms(t_start, t_ports),
                ms(t_ports, t_flows),
                ms(t_flows, t_prepared)
            ),
            lock_ms = format!("{:.2}", ms(t_locking, t_raise)),
            park_ms = format!("{:.2}", ms(t_raise, t_parked)),
            attempts,
            held_us = format!("{held_us:.1}"),
            held_parts_us = parts.as_str(),
            lower_us = format!("{:.1}", us(marks[6], t_lowered)),
            bookkeeping_ms = format!("{:.2}", ms(t_lowered, t_published)),
            after_ms = format!("{:.2}", ms(t_published, t_end)),
            "node-commit: generation {} in force ({})",
            c.generation,
            sluice_api::Render::render(&NodeCommitReply {
                generation: c.generation,
                counts
            })
            .trim_end()
        );
        // The PMDs wait only for the stores above; a long wait means the
        // committing thread lost its CPU meanwhile (or a part's store
        // became costly): worth a line at the default level.
        if held_us >= 1000.0 {
            tracing::warn!(
                "node-commit {}: the PMDs were held {:.2} ms while the parts were stored (µs: {parts}); the committing thread was probably descheduled",
                c.generation,
                held_us / 1e3
            );
        }
        Ok(NodeCommitReply {
            generation: c.generation,
            counts,
        })
    }

    /// A program's uplink or host port must be the configured one, with
    /// the same OpenFlow number.
    fn check_fixed(&self, name: &str, ofport: u16, uplink: bool) -> Result<(), ApiError> {
        let (fixed, what, how) = if uplink {
            (
                &self.parts.fixed.uplink,
                "uplink",
                "[nsx_node_agent] ovs_uplink_port",
            )
        } else {
            (
                &self.parts.fixed.host,
                "host exception",
                "[datapath] host_port",
            )
        };
        match fixed {
            None => Err(port_err(
                name,
                format!("sluiced has no {what} port: name its [port:NAME] section in sluiced.ini's {how}"),
                ErrorCode::NotFound,
            )),
            Some((n, o)) if *o != ofport => Err(port_err(
                name,
                format!("the program puts the {what} port on ofport {ofport}, but sluiced.ini's [port:{n}] has ofport {o}: make them equal"),
                ErrorCode::InvalidArgument,
            )),
            Some(_) => Ok(()),
        }
    }

    /// Stores the node settings the tunnels and the local stack use
    /// (inside the barrier; the Service table's are in its stage).
    fn apply_settings(&self, s: &api::NodeSettings) {
        let p = &self.parts;
        let cur = p.tunnels.config();
        let vtep = s.vtep.map(|v| (v.ip, v.prefix_len));
        let mtu = (s.mtu >= 576).then_some(s.mtu);
        let vtep_changed =
            vtep.is_some_and(|(ip, len)| (ip, len) != (cur.local_ip, cur.prefix_len));
        if vtep_changed || mtu.is_some_and(|m| m != cur.uplink_mtu) {
            p.tunnels.update_config(|t| {
                if let Some((ip, len)) = vtep {
                    t.local_ip = ip;
                    t.prefix_len = len;
                }
                if let Some(m) = mtu {
                    t.uplink_mtu = m;
                }
            });
        }
        if let (true, Some((ip, len)), Some(st)) = (vtep_changed, vtep, &p.stack) {
            if let Err(e) = st.set_address(ip, len) {
                tracing::warn!("the local stack keeps its address: {e}");
            }
        }
    }
}

/// The environment variable that names the directory of the commit test
/// hook ([`test_pause`]).
pub const TEST_PAUSE_ENV: &str = "SLUICE_TEST_COMMIT_PAUSE";

/// A test hook: with `SLUICE_TEST_COMMIT_PAUSE=DIR` in the environment,
/// a commit of the `sluiced` whose instance id is `ID` reaching `phase`
/// (`prepared`: every part built, before the barrier; `parked`: every PMD
/// parked, before the publication is claimed; `published`: after the
/// barrier) while the file `DIR/ID.phase` exists creates
/// `DIR/ID.phase.paused` and waits until `DIR/ID.phase` is removed (at
/// most two minutes), then removes `DIR/ID.phase.paused`. It lets a test
/// stop the committing thread between its phases and check that the PMDs
/// forward meanwhile. Without the variable it costs one check of a
/// cached value.
fn test_pause(instance_id: &str, phase: &str) {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os(TEST_PAUSE_ENV).map(Into::into)) else {
        return;
    };
    let gate = dir.join(format!("{instance_id}.{phase}"));
    if !gate.exists() {
        return;
    }
    let mark = dir.join(format!("{instance_id}.{phase}.paused"));
    if let Err(e) = std::fs::write(&mark, b"") {
        tracing::warn!("commit test hook: cannot create {}: {e}", mark.display());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while gate.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_file(&mark);
}

/// The Service a Service error is about.
fn service_error_name(e: &crate::service::ServiceError) -> String {
    use crate::service::ServiceError as E;
    match e {
        E::Duplicate(n) | E::NoSuchService(n) | E::ZeroPort(n) => n.clone(),
        E::EndpointZeroPort { name, .. }
        | E::AffinityRange { name, .. }
        | E::NodePortRange { name, .. } => name.clone(),
        E::FrontendConflict { b, .. } => b.clone(),
        E::Json(_) => String::new(),
    }
}

/// A commit with at least this many flow operations and Service upserts
/// prepares its flows and its Services on two threads.
const PARALLEL_PREPARE: usize = 2048;

/// A commit's flow bundle: the delete of the start-up program on the
/// `first` commit, the groups set, the flow operations, the groups
/// removed; and where each mod came from.
fn flow_mods(c: &NodeChanges, first: bool) -> Result<(Vec<FlowMod>, Vec<ModSource>), ApiError> {
    let n = c.groups_set.len() + c.flow_ops.len() + c.groups_removed.len() + 1;
    let mut mods: Vec<FlowMod> = Vec::with_capacity(n);
    // What each mod came from, named only if it fails (a big commit
    // carries 100k operations: no text is made for the others).
    let mut item_of: Vec<ModSource> = Vec::with_capacity(n);
    if first {
        mods.push(FlowMod::Delete {
            filter: crate::flow::program::FlowFilter::default(),
            strict: false,
        });
        item_of.push(ModSource::StartUp);
    }
    for g in &c.groups_set {
        let m = crate::flow::text::parse_group(&g.text()).map_err(|e| {
            item_error(
                ErrorCode::InvalidArgument,
                &CommitItem::Group(g.id),
                &e.to_string(),
            )
        })?;
        mods.push(FlowMod::AddGroup(m));
        item_of.push(ModSource::Group(g.id));
    }
    for (i, op) in c.flow_ops.iter().enumerate() {
        let m = crate::flow::commands::flow_mod(i, op)
            .map_err(|e| item_error(e.code, &CommitItem::FlowOp(i, op_text(op)), &e.message))?;
        mods.push(m);
        item_of.push(ModSource::FlowOp(i));
    }
    for id in &c.groups_removed {
        mods.push(FlowMod::DeleteGroup(*id));
        item_of.push(ModSource::Group(*id));
    }
    Ok((mods, item_of))
}

/// Drops a large request on a thread of its own (freeing 100k flow texts
/// and Service specs takes a while), so the reply does not wait for it;
/// a small one, or when no thread can be made, here.
fn drop_later(c: NodeChanges) {
    if c.flow_ops.len() + c.services.upsert.len() < PARALLEL_PREPARE {
        return;
    }
    // Without a thread, the closure (and `c` with it) is dropped here.
    let _ = std::thread::Builder::new()
        .name("sluice-commit-free".into())
        .spawn(move || drop(c));
}

/// Where one flow mod of a commit's bundle came from.
#[derive(Debug, Clone, Copy)]
enum ModSource {
    /// The delete of the start-up program (first commit).
    StartUp,
    /// A group set or removed.
    Group(u32),
    /// The flow operation at this index.
    FlowOp(usize),
}

/// A flow operation's text, for error messages.
fn op_text(op: &sluice_api::flows::FlowOp) -> String {
    use sluice_api::flows::FlowOp;
    match op {
        FlowOp::Add { flow } => format!("add {flow}"),
        FlowOp::Del { match_, strict } => {
            format!("del{} {match_}", if *strict { " --strict" } else { "" })
        }
        FlowOp::Mod { flow, strict } => {
            format!("mod{} {flow}", if *strict { " --strict" } else { "" })
        }
    }
}

/// Registers `node-commit`, `node-status` and `node-program`.
///
/// # Errors
/// A name is already registered.
pub fn register(
    registry: &crate::ctl::Registry,
    state: Arc<NodeState>,
) -> Result<(), crate::ctl::RegistryError> {
    use crate::ctl::typed::register;
    let s = state.clone();
    register::<api::NodeCommit>(registry, move |c| {
        let r = s.commit(&c);
        drop_later(c);
        r
    })?;
    let s = state.clone();
    register::<api::QueryNodeStatus>(registry, move |_| Ok(s.status()))?;
    register::<api::QueryNodeProgram>(registry, move |_| Ok(state.program()))?;
    Ok(())
}
