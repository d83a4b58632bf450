//! The continuation cache (`pipeline::cont`) against the two-pass path:
//! two pipelines, one classifying recirculated passes through the
//! continuation cache and one through the EMC/megaflow/slow path only, each
//! with its own conntrack table, get the same packets, program changes,
//! rule removals, conntrack flushes and clock jumps; every packet must
//! leave both the same way (ports, bytes, drop reasons) and both tables
//! must end the same.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::tests::{fl, tcp};
use super::*;
use crate::flow::tables::FlowTables;
use crate::packet::{Burst, HeapBuf, Output, PortNo};
use crate::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use crate::pipeline::hooks::{Hooks, NoTunnels};
use crate::pipeline::Pipeline;

type Pipe = FlowPipeline<Hooks<ConntrackHandle, NoTunnels>>;

struct Side {
    pipe: Pipe,
    ct: Conntrack,
}

fn side(tables: &FlowTables, continuation_cache: bool, emc_insert_inv_prob: u32) -> Side {
    let ct = Conntrack::new(ConntrackConfig::default());
    let pipe = FlowPipeline::with_hooks(
        tables.clone(),
        FlowPipelineConfig {
            ports: (1..=3).map(PortNo).collect(),
            continuation_cache,
            emc_insert_inv_prob,
            ..FlowPipelineConfig::default()
        },
        Hooks {
            ct: ct.handle(1),
            tunnels: NoTunnels,
        },
    );
    Side { pipe, ct }
}

/// What one burst did: frames per port, drops by reason.
fn send(s: &mut Side, now: Nanos, port: u16, frames: &[Vec<u8>]) -> String {
    let mut out = Output::new(4);
    let mut burst = Burst::new(PortNo(port));
    burst
        .pkts
        .extend(frames.iter().map(|f| HeapBuf::from_frame(f)));
    s.pipe.process(now, &mut burst, &mut out);
    let mut r = String::new();
    for p in 1..=3 {
        for b in out.take(PortNo(p)) {
            r += &format!("port {p}: {:02x?}\n", b.data());
        }
    }
    r += &format!("drops: {:?}\n", out.drops.nonzero());
    r
}

const TABLE0: [&str; 4] = [
    "table=0,priority=10,tcp,in_port=1,nw_dst=10.96.0.10 actions=ct(commit,zone=5,nat(dst=10.1.0.5:8080),table=1)",
    "table=0,priority=5,ip,in_port=1 actions=ct(zone=5,nat,table=1)",
    "table=0,priority=5,ip,in_port=2 actions=ct(zone=5,nat,table=1)",
    "table=0,priority=20,tcp,in_port=1,tp_src=1002 actions=ct(commit,zone=5,exec(set_field:1->ct_mark),table=1)",
];

const TABLE1: [&str; 12] = [
    "table=1,priority=20,ct_state=+trk+inv actions=drop",
    "table=1,priority=10,ct_state=+trk,in_port=1 actions=output:2",
    "table=1,priority=10,ct_state=+trk+est+rpl,in_port=2 actions=output:1",
    "table=1,priority=12,ct_state=+new,in_port=1 actions=output:3",
    "table=1,priority=15,ct_mark=1 actions=dec_ttl,output:3",
    "table=1,priority=14,tcp,nw_dst=10.1.0.5,tp_dst=8080 actions=output:2",
    "table=1,priority=13,ct_state=+est,tcp,tp_src=1001 actions=ct(commit,zone=7,table=2)",
    "table=1,priority=11,ct_state=+dnat actions=output:2,output:3",
    "table=1,priority=1 actions=drop",
    "table=1,priority=9,in_port=2,ct_state=+rpl actions=output:1",
    "table=2,priority=5,ct_state=+new actions=output:3",
    "table=2,priority=4 actions=output:1",
];

fn program(t0: &BTreeSet<usize>, t1: &BTreeSet<usize>) -> String {
    let mut p: Vec<&str> = t0.iter().map(|&i| TABLE0[i]).collect();
    p.extend(t1.iter().map(|&i| TABLE1[i]));
    p.join("\n")
}

/// One step of a scenario.
#[derive(Debug, Clone)]
enum Step {
    /// Client `c` (port 1) or its server (port 2) sends segment `seg`.
    Packet { client: u8, reply: bool, seg: u8 },
    /// A burst of several ACKs of client `c`.
    Burst { client: u8, n: u8 },
    /// Replace the program by program 2.
    Reprogram,
    /// Remove the table 1 rule of this index (if present).
    DelRule(usize),
    /// `flush-conntrack`.
    Flush,
    /// Advance the clock (past some timeouts when large).
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..3, any::<bool>(), 0u8..4).prop_map(|(client, reply, seg)| Step::Packet { client, reply, seg }),
        3 => (0u8..3, 1u8..8).prop_map(|(client, n)| Step::Burst { client, n }),
        1 => Just(Step::Reprogram),
        1 => (0usize..TABLE1.len()).prop_map(Step::DelRule),
        1 => Just(Step::Flush),
        1 => prop_oneof![Just(1_000_000u64), Just(200_000_000_000u64)].prop_map(Step::Wait),
    ]
}

/// Client `c`'s segment `seg` (0 SYN, 1 ACK, 2 data, 3 FIN) or the
/// server's answer to it, as the server sees the connection (through the
/// DNAT of the first table-0 rule when the client talks to the VIP).
fn frame(client: u8, reply: bool, seg: u8) -> Vec<u8> {
    let (c, vip, ep) = ([10, 0, 0, 1 + client], [10, 96, 0, 10], [10, 1, 0, 5]);
    let sport = 1000 + u16::from(client);
    if reply {
        let flags = match seg {
            0 => fl::SYNACK,
            3 => fl::FINACK,
            _ => fl::ACK,
        };
        tcp(ep, c, 8080, sport, 500, 101, flags, b"")
    } else {
        match seg {
            0 => tcp(c, vip, sport, 80, 100, 0, fl::SYN, b""),
            1 => tcp(c, vip, sport, 80, 101, 501, fl::ACK, b""),
            2 => tcp(c, vip, sport, 80, 101, 501, fl::ACK, b"data"),
            _ => tcp(c, vip, sport, 80, 101, 501, fl::FINACK, b""),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn continuation_equals_two_pass(
        t0 in proptest::collection::btree_set(0usize..4, 1..4),
        t1 in proptest::collection::btree_set(0usize..12, 1..8),
        t1b in proptest::collection::btree_set(0usize..12, 1..8),
        steps in proptest::collection::vec(step(), 1..40),
        always_insert in any::<bool>(),
    ) {
        let inv_prob = if always_insert { 1 } else { 100 };
        let (ta, tb) = (FlowTables::new(), FlowTables::new());
        let p1 = program(&t0, &t1);
        let p2 = program(&t0, &t1b);
        for t in [&ta, &tb] {
            t.replace_flows(&p1, 0).expect("program 1");
        }
        let mut fast = side(&ta, true, inv_prob);
        let mut slow = side(&tb, false, inv_prob);
        let mut now = 1;
        let mut gen = 1;
        for (i, s) in steps.iter().enumerate() {
            match s {
                Step::Packet { client, reply, seg } => {
                    let port = if *reply { 2 } else { 1 };
                    let f = frame(*client, *reply, *seg);
                    let a = send(&mut fast, now, port, std::slice::from_ref(&f));
                    let b = send(&mut slow, now, port, std::slice::from_ref(&f));
                    prop_assert_eq!(a, b, "step {} {:?}", i, s);
                }
                Step::Burst { client, n } => {
                    let f: Vec<Vec<u8>> = (0..*n).map(|k| frame(*client, false, 1 + k % 2)).collect();
                    let a = send(&mut fast, now, 1, &f);
                    let b = send(&mut slow, now, 1, &f);
                    prop_assert_eq!(a, b, "step {} {:?}", i, s);
                }
                Step::Reprogram => {
                    for t in [&ta, &tb] {
                        t.replace_flows(&p2, gen).expect("program 2");
                    }
                    gen += 1;
                }
                Step::DelRule(r) => {
                    let rule = TABLE1[*r];
                    let (m, _) = rule.split_once(" actions=").expect("rule text");
                    for t in [&ta, &tb] {
                        let _ = t.del_flows(m, true, gen);
                    }
                    gen += 1;
                }
                Step::Flush => {
                    prop_assert_eq!(
                        fast.ct.flush(&ConnFilter::default()),
                        slow.ct.flush(&ConnFilter::default())
                    );
                }
                Step::Wait(d) => now += d,
            }
        }
        prop_assert_eq!(
            fast.ct.dump(&ConnFilter::default(), now),
            slow.ct.dump(&ConnFilter::default(), now)
        );
        prop_assert_eq!(slow.pipe.stats().continuations.get(), 0);
    }
}

/// The steady state of a DNATed connection takes its second pass from the
/// continuation cache, and a program change or a state change (the
/// connection going `+est`) is seen at once.
#[test]
fn established_traffic_continues_from_the_cache() {
    let tables = FlowTables::new();
    tables
        .replace_flows(
            &format!(
                "{}\n{}\n{}\n{}",
                TABLE0[0],
                TABLE0[2],
                TABLE1[1],
                "table=1,priority=10,ct_state=+trk+est+rpl,in_port=2 actions=output:1"
            ),
            0,
        )
        .expect("program");
    let mut s = side(&tables, true, 1);
    let syn = frame(0, false, 0);
    let ack = frame(0, false, 1);
    assert!(send(&mut s, 1, 1, &[syn]).contains("port 2:"));
    let before = s.pipe.stats().continuations.get();
    let out = send(&mut s, 2, 1, &vec![ack.clone(); 8]);
    assert_eq!(out.matches("port 2:").count(), 8, "{out}");
    assert!(
        s.pipe.stats().continuations.get() >= before + 7,
        "at most the first packet learns: {}",
        s.pipe.stats().show()
    );
    // The connection goes +est: a rule on +est now decides.
    assert!(send(&mut s, 3, 2, &[frame(0, true, 0)]).contains("port 1:"));
    tables
        .add_flow(
            "table=1,priority=30,ct_state=+est,in_port=1 actions=output:3",
            1,
        )
        .expect("add");
    let out = send(&mut s, 4, 1, &vec![ack; 4]);
    assert_eq!(out.matches("port 3:").count(), 4, "{out}");
}

/// A Service whose second table routes per endpoint: one previous
/// translation (the `ct` of the VIP) has a continuation per endpoint, more
/// than a set holds. They do not evict each other (the wide array keeps
/// one per masked key), so once learnt every recirculated pass is a
/// continuation hit, and every packet leaves as the two-pass path sends it.
#[test]
fn per_endpoint_continuations_do_not_evict_each_other() {
    const ENDPOINTS: u8 = 8;
    const CLIENTS: u8 = 32;
    let tables = FlowTables::new();
    let mut prog = vec![
        "table=0,priority=10,tcp,in_port=1,nw_dst=10.96.0.10 actions=ct(commit,zone=5,nat(dst=10.1.0.1-10.1.0.8:8080),table=1)".to_string(),
    ];
    for e in 1..=ENDPOINTS {
        prog.push(format!(
            "table=1,priority=10,ip,nw_dst=10.1.0.{e} actions=mod_dl_dst:02:00:00:00:00:{e:02x},output:2"
        ));
    }
    tables.replace_flows(&prog.join("\n"), 0).expect("program");
    let (mut fast, mut slow) = (side(&tables, true, 1), side(&tables, false, 1));
    let client = |i: u8, syn: bool| {
        let (c, sport) = ([10, 0, 1, i], 2000 + u16::from(i));
        if syn {
            tcp(c, [10, 96, 0, 10], sport, 80, 100, 0, fl::SYN, b"")
        } else {
            tcp(c, [10, 96, 0, 10], sport, 80, 101, 0, fl::ACK, b"")
        }
    };
    let syns: Vec<_> = (0..CLIENTS).map(|i| client(i, true)).collect();
    assert_eq!(send(&mut fast, 1, 1, &syns), send(&mut slow, 1, 1, &syns));
    let acks: Vec<_> = (0..CLIENTS).map(|i| client(i, false)).collect();
    let mut endpoints = BTreeSet::new();
    // Learning is rationed (one slow-path translation per LEARN_EVERY
    // bursts): enough bursts to learn every endpoint's continuation.
    let warm = u64::from(ENDPOINTS) * u64::from(crate::pipeline::cont::LEARN_EVERY) * 2;
    for r in 0..warm + 20 {
        let stats = fast.pipe.stats();
        let (h0, r0) = (stats.continuations.get(), stats.recirculations.get());
        let out = send(&mut fast, 2 + r, 1, &acks);
        assert_eq!(out, send(&mut slow, 2 + r, 1, &acks), "burst {r}");
        assert_eq!(
            out.matches("port 2:").count(),
            usize::from(CLIENTS),
            "{out}"
        );
        for l in out.lines().filter(|l| l.starts_with("port 2: [")) {
            // The rewritten destination MAC names the endpoint.
            let mac: Vec<&str> = l["port 2: [".len()..].split(", ").take(6).collect();
            endpoints.insert(mac.join(":"));
        }
        if r >= warm {
            assert_eq!(
                stats.continuations.get() - h0,
                stats.recirculations.get() - r0,
                "burst {r}: every second pass from the continuation cache\n{}",
                stats.show()
            );
        }
    }
    assert!(
        endpoints.len() > 2,
        "more endpoints than a set's ways: {endpoints:?}"
    );
}
