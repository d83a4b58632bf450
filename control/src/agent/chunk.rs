//! A change set too big for one `node-commit` request, split into several
//! commits that are each valid on their own.
//!
//! `sluiced`'s control socket refuses a request larger than its message
//! limit (`ServerConfig::max_message_bytes`, 64 MiB by default), and one
//! `node-commit` is applied all at once, so it must fit. [`split`] keeps a
//! change set whose JSON fits `max` whole; a bigger one becomes, in order:
//!
//! 1. the base: ports removed and added, node settings, VTEPs, neighbours,
//!    ARP responder, port security, groups added or replaced;
//! 2. the flow deletions (in their order), in chunks;
//! 3. the Service upserts and deletions, in chunks;
//! 4. the flow additions and modifications (in their order), in chunks;
//! 5. the groups removed.
//!
//! Each part refers only to what earlier parts (or the program before)
//! hold: flows come after the ports, groups and settings they use, and a
//! group goes only after the flows that used it. Running the parts one
//! after the other ends in the same program as the whole change set when
//! its flow deletions and additions name distinct flows, which is what
//! `sluice_api::node::diff` and the incremental compiler produce (deletions
//! of identities that went away, additions of the others). In between,
//! `sluiced` forwards with a program that is part old, part new: the price
//! of a change set bigger than one request (the initial load of a very big
//! node; an ordinary change is far below the limit).
//!
//! Generations: part `i` carries `generation + i`, the first part the
//! change set's `expected_generation`, each later part the generation of
//! the one before, so a part can only apply on top of its predecessor.
//!
//! [`encode`] does the same split on the wire form and is what the agent
//! sends: every item is serialized once ([`serde_json::value::to_raw_value`]),
//! the parts are sized by those bytes and each part's JSON is assembled
//! from them (a copy, no second encoding); the client puts that text into
//! the request frame as it is ([`sluice_api::Client::call_encoded`]). Its
//! parts decode to exactly [`split`]'s (checked by tests).
//!
//! Thread-safety: pure functions.

use std::io;

use serde::Serialize;
use serde_json::value::RawValue;
use sluice_api::flows::FlowOp;
use sluice_api::node::NodeChanges;

/// The default largest commit: half of `sluiced`'s default request limit
/// (64 MiB), leaving room for the JSON-RPC envelope.
pub const DEFAULT_MAX_COMMIT_BYTES: usize = 32 << 20;

/// Why a `--max-commit-bytes` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaxCommitError {
    /// Not a number.
    #[error(
        "--max-commit-bytes {0:?} is not a number of bytes; give a whole number such as 33554432"
    )]
    NotANumber(String),
    /// Zero.
    #[error("--max-commit-bytes 0 would fit no change at all; give at least 1 (default {DEFAULT_MAX_COMMIT_BYTES})")]
    Zero,
    /// Above the control socket's limit.
    #[error("--max-commit-bytes {given} is above the largest request sluiced's control socket accepts ({limit} bytes): sluiced would refuse such a commit; give at most {limit} (default {DEFAULT_MAX_COMMIT_BYTES})")]
    AboveSocketLimit {
        /// The value given.
        given: usize,
        /// The control socket's limit.
        limit: usize,
    },
}

/// Reads a `--max-commit-bytes` value: a whole number of bytes from 1 to
/// the control socket's request limit
/// ([`sluice_api::node::control_socket_limit`]).
///
/// # Errors
/// [`MaxCommitError`]: not a number, 0, or above the limit.
pub fn parse_max_commit_bytes(text: &str) -> Result<usize, MaxCommitError> {
    let given: usize = text
        .trim()
        .parse()
        .map_err(|_| MaxCommitError::NotANumber(text.to_string()))?;
    let limit = sluice_api::node::control_socket_limit();
    match given {
        0 => Err(MaxCommitError::Zero),
        g if g > limit => Err(MaxCommitError::AboveSocketLimit { given, limit }),
        g => Ok(g),
    }
}

/// Room kept in each part for its fixed fields (an empty change set) and
/// the numbers and separators around its items.
fn fixed_room() -> usize {
    json_len(&NodeChanges {
        generation: u64::MAX,
        expected_generation: Some(u64::MAX),
        ..NodeChanges::default()
    }) + 64
}

/// Counts the bytes written.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The length of `v`'s compact JSON, without building it.
pub fn json_len<T: Serialize>(v: &T) -> usize {
    let mut c = Counter(0);
    // Writing into a counter cannot fail, and the types serialized here
    // always serialize; a failure counts what was written.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// `changes` as one or more commits whose JSON each fits `max` bytes (a
/// single item bigger than that goes alone, and `sluiced` says why it
/// refuses it). Always at least one part. See the module documentation.
pub fn split(changes: NodeChanges, max: usize) -> Vec<NodeChanges> {
    if json_len(&changes) <= max {
        return vec![changes];
    }
    let budget = max.saturating_sub(fixed_room()).max(1);
    let NodeChanges {
        generation,
        expected_generation,
        ports_removed,
        ports_added,
        settings,
        vteps_removed,
        vteps_set,
        neighbours_removed,
        neighbours_set,
        arp_removed,
        arp_set,
        port_security_removed,
        port_security_set,
        groups_removed,
        groups_set,
        flow_ops,
        services,
    } = changes;
    let mut parts = vec![NodeChanges {
        ports_removed,
        ports_added,
        settings,
        vteps_removed,
        vteps_set,
        neighbours_removed,
        neighbours_set,
        arp_removed,
        arp_set,
        port_security_removed,
        port_security_set,
        groups_set,
        ..NodeChanges::default()
    }];
    let (dels, adds): (Vec<FlowOp>, Vec<FlowOp>) = flow_ops
        .into_iter()
        .partition(|op| matches!(op, FlowOp::Del { .. }));
    for chunk in chunks(dels, budget) {
        parts.push(NodeChanges {
            flow_ops: chunk,
            ..NodeChanges::default()
        });
    }
    let flush = services.flush_removed_endpoints;
    for chunk in chunks(services.delete, budget) {
        let mut p = NodeChanges::default();
        p.services.delete = chunk;
        p.services.flush_removed_endpoints = flush;
        parts.push(p);
    }
    for chunk in chunks(services.upsert, budget) {
        let mut p = NodeChanges::default();
        p.services.upsert = chunk;
        p.services.flush_removed_endpoints = flush;
        parts.push(p);
    }
    for chunk in chunks(adds, budget) {
        parts.push(NodeChanges {
            flow_ops: chunk,
            ..NodeChanges::default()
        });
    }
    if !groups_removed.is_empty() {
        parts.push(NodeChanges {
            groups_removed,
            ..NodeChanges::default()
        });
    }
    // An empty base (nothing but Services or flows) is no commit.
    if parts.len() > 1 && parts[0].is_empty() {
        parts.remove(0);
    }
    let mut prev = expected_generation;
    for (i, p) in parts.iter_mut().enumerate() {
        p.generation = generation + i as u64;
        p.expected_generation = prev;
        prev = Some(p.generation);
    }
    parts
}

/// `items` in runs whose JSON (with separators) fits `budget`; an item
/// bigger than the budget forms a run of its own.
fn chunks<T: Serialize>(items: Vec<T>, budget: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for it in items {
        let n = json_len(&it) + 1;
        if !cur.is_empty() && size + n > budget {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += n;
        cur.push(it);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One part of a change set on the wire: its generation and its JSON
/// (what `node-commit`'s `params` carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPart {
    /// The generation the part creates.
    pub generation: u64,
    /// The part as compact JSON.
    pub json: Vec<u8>,
}

/// A part's wire form: [`NodeChanges`]'s fields in its order, the large
/// lists as items already serialized.
#[derive(Serialize)]
struct PartWire<'a> {
    generation: u64,
    expected_generation: Option<u64>,
    ports_removed: &'a [Box<RawValue>],
    ports_added: Map<'a>,
    settings: Option<&'a RawValue>,
    vteps_removed: &'a [Box<RawValue>],
    vteps_set: Map<'a>,
    neighbours_removed: &'a [Box<RawValue>],
    neighbours_set: Map<'a>,
    arp_removed: &'a [Box<RawValue>],
    arp_set: Map<'a>,
    port_security_removed: &'a [Box<RawValue>],
    port_security_set: &'a [Box<RawValue>],
    groups_removed: &'a [Box<RawValue>],
    groups_set: &'a [Box<RawValue>],
    flow_ops: &'a [&'a RawValue],
    services: ServicesWire<'a>,
}

#[derive(Serialize)]
struct ServicesWire<'a> {
    upsert: &'a [Box<RawValue>],
    delete: &'a [Box<RawValue>],
    flush_removed_endpoints: bool,
}

/// A map already serialized (`{}` when absent).
struct Map<'a>(Option<&'a RawValue>);

impl Serialize for Map<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.0 {
            Some(raw) => raw.serialize(s),
            None => s.serialize_map(Some(0))?.end(),
        }
    }
}

/// Every item of a change set, serialized once.
#[derive(Default)]
struct Items {
    ports_removed: Vec<Box<RawValue>>,
    ports_added: Option<Box<RawValue>>,
    settings: Option<Box<RawValue>>,
    vteps_removed: Vec<Box<RawValue>>,
    vteps_set: Option<Box<RawValue>>,
    neighbours_removed: Vec<Box<RawValue>>,
    neighbours_set: Option<Box<RawValue>>,
    arp_removed: Vec<Box<RawValue>>,
    arp_set: Option<Box<RawValue>>,
    port_security_removed: Vec<Box<RawValue>>,
    port_security_set: Vec<Box<RawValue>>,
    groups_removed: Vec<Box<RawValue>>,
    groups_set: Vec<Box<RawValue>>,
    /// Flow deletions, then additions and modifications (each in order).
    flow_dels: Vec<Box<RawValue>>,
    flow_adds: Vec<Box<RawValue>>,
    services_upsert: Vec<Box<RawValue>>,
    services_delete: Vec<Box<RawValue>>,
}

fn raw_all<T: Serialize>(items: &[T]) -> Result<Vec<Box<RawValue>>, serde_json::Error> {
    items.iter().map(serde_json::value::to_raw_value).collect()
}

fn raw_map<K: Serialize + Ord, V: Serialize>(
    m: &std::collections::BTreeMap<K, V>,
) -> Result<Option<Box<RawValue>>, serde_json::Error> {
    if m.is_empty() {
        Ok(None)
    } else {
        serde_json::value::to_raw_value(m).map(Some)
    }
}

/// One part's JSON: the base fields from `base` (or none), the rest from
/// the item slices.
#[allow(clippy::too_many_arguments)]
fn part_json(
    generation: u64,
    expected_generation: Option<u64>,
    base: Option<&Items>,
    groups_removed: &[Box<RawValue>],
    flow_ops: &[&RawValue],
    upsert: &[Box<RawValue>],
    delete: &[Box<RawValue>],
    flush: bool,
) -> Result<Vec<u8>, serde_json::Error> {
    let none: &[Box<RawValue>] = &[];
    let b = |f: fn(&Items) -> &[Box<RawValue>]| base.map_or(none, f);
    let m = |f: fn(&Items) -> &Option<Box<RawValue>>| Map(base.and_then(|i| f(i).as_deref()));
    let wire = PartWire {
        generation,
        expected_generation,
        ports_removed: b(|i| &i.ports_removed),
        ports_added: m(|i| &i.ports_added),
        settings: base.and_then(|i| i.settings.as_deref()),
        vteps_removed: b(|i| &i.vteps_removed),
        vteps_set: m(|i| &i.vteps_set),
        neighbours_removed: b(|i| &i.neighbours_removed),
        neighbours_set: m(|i| &i.neighbours_set),
        arp_removed: b(|i| &i.arp_removed),
        arp_set: m(|i| &i.arp_set),
        port_security_removed: b(|i| &i.port_security_removed),
        port_security_set: b(|i| &i.port_security_set),
        groups_removed,
        groups_set: b(|i| &i.groups_set),
        flow_ops,
        services: ServicesWire {
            upsert,
            delete,
            flush_removed_endpoints: flush,
        },
    };
    serde_json::to_vec(&wire)
}

/// `changes` on the wire, as one or more parts whose JSON each fits `max`
/// bytes: the parts of [`split`] (same order, generations and contents),
/// each item serialized once and each part sized by those bytes.
///
/// # Errors
/// An item cannot be serialized as JSON (never for the API's types).
pub fn encode(changes: &NodeChanges, max: usize) -> Result<Vec<EncodedPart>, serde_json::Error> {
    let c = changes;
    let (dels, adds): (Vec<&FlowOp>, Vec<&FlowOp>) = c
        .flow_ops
        .iter()
        .partition(|op| matches!(op, FlowOp::Del { .. }));
    let items = Items {
        ports_removed: raw_all(&c.ports_removed)?,
        ports_added: raw_map(&c.ports_added)?,
        settings: c
            .settings
            .as_ref()
            .map(serde_json::value::to_raw_value)
            .transpose()?,
        vteps_removed: raw_all(&c.vteps_removed)?,
        vteps_set: raw_map(&c.vteps_set)?,
        neighbours_removed: raw_all(&c.neighbours_removed)?,
        neighbours_set: raw_map(&c.neighbours_set)?,
        arp_removed: raw_all(&c.arp_removed)?,
        arp_set: raw_map(&c.arp_set)?,
        port_security_removed: raw_all(&c.port_security_removed)?,
        port_security_set: raw_all(&c.port_security_set)?,
        groups_removed: raw_all(&c.groups_removed)?,
        groups_set: raw_all(&c.groups_set)?,
        flow_dels: raw_all(&dels)?,
        flow_adds: raw_all(&adds)?,
        services_upsert: raw_all(&c.services.upsert)?,
        services_delete: raw_all(&c.services.delete)?,
    };
    let flush = c.services.flush_removed_endpoints;
    let g = c.generation;
    let eg = c.expected_generation;
    {
        // The whole change set, its flow operations in their order
        // (deletions and additions may interleave).
        let mut ops = Vec::with_capacity(c.flow_ops.len());
        let (mut d, mut a) = (items.flow_dels.iter(), items.flow_adds.iter());
        for op in &c.flow_ops {
            let next = if matches!(op, FlowOp::Del { .. }) {
                d.next()
            } else {
                a.next()
            };
            if let Some(r) = next {
                ops.push(&**r);
            }
        }
        let json = part_json(
            g,
            eg,
            Some(&items),
            &items.groups_removed,
            &ops,
            &items.services_upsert,
            &items.services_delete,
            flush,
        )?;
        if json.len() <= max {
            return Ok(vec![EncodedPart {
                generation: g,
                json,
            }]);
        }
    }
    let budget = max.saturating_sub(fixed_room()).max(1);
    // (base?, groups_removed?, flow ops, upsert, delete) per part, as
    // index ranges into the item lists.
    enum Body<'a> {
        Base,
        Flows(&'a [Box<RawValue>]),
        Delete(&'a [Box<RawValue>]),
        Upsert(&'a [Box<RawValue>]),
        GroupsRemoved,
    }
    let mut bodies = Vec::new();
    let base_empty = c.ports_removed.is_empty()
        && c.ports_added.is_empty()
        && c.settings.is_none()
        && c.vteps_removed.is_empty()
        && c.vteps_set.is_empty()
        && c.neighbours_removed.is_empty()
        && c.neighbours_set.is_empty()
        && c.arp_removed.is_empty()
        && c.arp_set.is_empty()
        && c.port_security_removed.is_empty()
        && c.port_security_set.is_empty()
        && c.groups_set.is_empty();
    bodies.push(Body::Base);
    for r in raw_chunks(&items.flow_dels, budget) {
        bodies.push(Body::Flows(r));
    }
    for r in raw_chunks(&items.services_delete, budget) {
        bodies.push(Body::Delete(r));
    }
    for r in raw_chunks(&items.services_upsert, budget) {
        bodies.push(Body::Upsert(r));
    }
    for r in raw_chunks(&items.flow_adds, budget) {
        bodies.push(Body::Flows(r));
    }
    if !items.groups_removed.is_empty() {
        bodies.push(Body::GroupsRemoved);
    }
    // An empty base (nothing but Services or flows) is no commit.
    if bodies.len() > 1 && base_empty {
        bodies.remove(0);
    }
    let none: &[Box<RawValue>] = &[];
    let no_ops: &[&RawValue] = &[];
    let mut prev = eg;
    let mut out = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.into_iter().enumerate() {
        let generation = g + i as u64;
        let json = match body {
            Body::Base => part_json(
                generation,
                prev,
                Some(&items),
                none,
                no_ops,
                none,
                none,
                false,
            )?,
            Body::Flows(r) => {
                let ops: Vec<&RawValue> = r.iter().map(|b| &**b).collect();
                part_json(generation, prev, None, none, &ops, none, none, false)?
            }
            Body::Delete(r) => part_json(generation, prev, None, none, no_ops, none, r, flush)?,
            Body::Upsert(r) => part_json(generation, prev, None, none, no_ops, r, none, flush)?,
            Body::GroupsRemoved => part_json(
                generation,
                prev,
                None,
                &items.groups_removed,
                no_ops,
                none,
                none,
                false,
            )?,
        };
        out.push(EncodedPart { generation, json });
        prev = Some(generation);
    }
    Ok(out)
}

/// `items` in runs whose JSON (with separators) fits `budget`, as
/// [`chunks`] cuts them; sized by the serialized bytes.
fn raw_chunks(items: &[Box<RawValue>], budget: usize) -> Vec<&[Box<RawValue>]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, it) in items.iter().enumerate() {
        let n = it.get().len() + 1;
        if i > start && size + n > budget {
            out.push(&items[start..i]);
            start = i;
            size = 0;
        }
        size += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn max_commit_bytes_between_one_and_the_socket_limit() {
        use super::{parse_max_commit_bytes, MaxCommitError, DEFAULT_MAX_COMMIT_BYTES};
        let limit = sluice_api::node::control_socket_limit();
        assert_eq!(limit, 64 << 20);
        assert!(DEFAULT_MAX_COMMIT_BYTES <= limit);
        assert_eq!(parse_max_commit_bytes("1"), Ok(1));
        assert_eq!(parse_max_commit_bytes(&limit.to_string()), Ok(limit));
        assert_eq!(parse_max_commit_bytes("0"), Err(MaxCommitError::Zero));
        assert_eq!(
            parse_max_commit_bytes(&(limit + 1).to_string()),
            Err(MaxCommitError::AboveSocketLimit {
                given: limit + 1,
                limit
            })
        );
        assert!(matches!(
            parse_max_commit_bytes("32M"),
            Err(MaxCommitError::NotANumber(_))
        ));
        assert!(parse_max_commit_bytes("0")
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
    }

    use std::net::Ipv4Addr;

    use sluice_api::node::{apply, diff, Flow, NodeProgram, PortKind, PortSpec};
    use sluice_api::service::{EndpointSpec, Protocol, ServiceSpec};

    use super::*;

    fn service(i: u32, endpoints: u8) -> ServiceSpec {
        let mut s: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": format!("default/svc-{i}:80"),
            "protocol": serde_json::to_value(Protocol::Tcp).unwrap(),
            "port": 80,
        }))
        .unwrap();
        s.cluster_ips = vec![Ipv4Addr::from(0x0a60_0000 + i)];
        s.endpoints = (0..endpoints)
            .map(|e| {
                serde_json::from_value::<EndpointSpec>(serde_json::json!({
                    "ip": Ipv4Addr::from(0x0a64_0000 + i * 16 + u32::from(e)),
                    "port": 8080,
                }))
                .unwrap()
            })
            .collect();
        s
    }

    fn program(services: u32, flows: u32, tag: &str) -> NodeProgram {
        let mut p = NodeProgram::default();
        p.ports.insert(
            "pod-a".into(),
            PortSpec {
                ofport: 10,
                kind: PortKind::Pod {
                    interface: "slabc".into(),
                },
                driver: Default::default(),
            },
        );
        for i in 0..services {
            let s = service(i, 3);
            p.services.insert(s.name.clone(), s);
        }
        p.flows = (0..flows)
            .map(|i| Flow {
                table: 10,
                priority: 100,
                match_: format!("ip,nw_dst=10.244.{}.{}", i / 250, i % 250),
                cookie: 1,
                actions: format!("output:{tag}"),
            })
            .collect();
        p.canonicalize();
        p
    }

    #[test]
    fn a_small_change_set_stays_one_commit() {
        let c = diff(&NodeProgram::default(), &program(10, 10, "10"));
        let parts = split(c.clone(), DEFAULT_MAX_COMMIT_BYTES);
        assert_eq!(parts, vec![c]);
    }

    #[test]
    fn a_big_change_set_becomes_parts_that_each_fit_and_end_in_the_same_program() {
        let old = program(300, 200, "10");
        let mut new = program(2000, 1500, "11");
        new.ports.clear();
        new.services.retain(|k, _| !k.ends_with("7:80"));
        let mut whole = diff(&old, &new);
        whole.generation = 8;
        whole.expected_generation = Some(7);
        let max = 20_000;
        assert!(
            json_len(&whole) > 10 * max,
            "the test needs a big change set"
        );
        let parts = split(whole.clone(), max);
        assert!(parts.len() > 10, "{} parts", parts.len());
        let mut p = old.clone();
        let mut prev = Some(7);
        for (i, part) in parts.iter().enumerate() {
            assert!(
                json_len(part) <= max,
                "part {i} is {} bytes",
                json_len(part)
            );
            assert!(!part.is_empty(), "part {i} is empty");
            assert_eq!(part.expected_generation, prev);
            assert_eq!(part.generation, 8 + i as u64);
            prev = Some(part.generation);
            // Flows never come before the ports they may use.
            if i > 0 {
                assert!(part.ports_added.is_empty() && part.ports_removed.is_empty());
            }
            p = apply(&p, part);
        }
        assert_eq!(p, new);
        assert_eq!(p, apply(&old, &whole));
    }

    #[test]
    fn an_item_bigger_than_the_limit_goes_alone() {
        let mut new = NodeProgram::default();
        for i in 0..3 {
            let s = service(i, 200);
            new.services.insert(s.name.clone(), s);
        }
        new.canonicalize();
        let parts = split(diff(&NodeProgram::default(), &new), 1000);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.services.upsert.len() == 1));
        let mut p = NodeProgram::default();
        for part in &parts {
            p = apply(&p, part);
        }
        assert_eq!(p, new);
    }

    /// `encode`'s parts decode to `split`'s, and a change set that fits is
    /// the very bytes `serde_json` writes for it.
    fn check_encode(whole: &NodeChanges, max: usize) {
        let parts = split(whole.clone(), max);
        let enc = encode(whole, max).unwrap();
        assert_eq!(enc.len(), parts.len(), "max {max}");
        for (e, p) in enc.iter().zip(&parts) {
            assert_eq!(e.generation, p.generation);
            let back: NodeChanges = serde_json::from_slice(&e.json).unwrap();
            assert_eq!(&back, p, "max {max}");
            assert_eq!(e.json, serde_json::to_vec(p).unwrap(), "max {max}");
        }
    }

    #[test]
    fn encode_equals_split_then_serde_json() {
        let old = program(300, 200, "10");
        let mut new = program(2000, 1500, "11");
        new.ports.clear();
        new.services.retain(|k, _| !k.ends_with("7:80"));
        new.groups.insert(
            4,
            sluice_api::node::Group {
                id: 4,
                cookie: 9,
                spec: "type=select,bucket=output:3".into(),
            },
        );
        let mut old2 = old.clone();
        old2.groups.insert(
            5,
            sluice_api::node::Group {
                id: 5,
                cookie: 9,
                spec: "type=all,bucket=output:2".into(),
            },
        );
        old2.settings.node_name = "n".into();
        for (a, b) in [(&old, &new), (&old2, &new), (&new, &old2)] {
            let mut whole = diff(a, b);
            whole.generation = 8;
            whole.expected_generation = Some(7);
            whole.services.flush_removed_endpoints = true;
            for max in [DEFAULT_MAX_COMMIT_BYTES, 200_000, 20_000, 1000, 1] {
                check_encode(&whole, max);
            }
        }
        check_encode(&NodeChanges::default(), 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn encode_equals_split_for_random_sizes(
            a in 0u32..60, b in 0u32..60, fa in 0u32..80, fb in 0u32..80,
            max in 1usize..40_000, eg in proptest::option::of(0u64..5),
        ) {
            let mut whole = diff(&program(a, fa, "1"), &program(b, fb, "2"));
            whole.generation = 9;
            whole.expected_generation = eg;
            check_encode(&whole, max);
        }
    }
}
