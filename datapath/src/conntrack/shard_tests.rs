//! The lock-free shard index against a model, and PMDs that hit the shared
//! table without their cache: they take no lock and agree with one thread.
//!
//! Deterministic: the proptest runs one thread; the concurrent tests meet at
//! barriers, do fixed work and check outcomes that hold in every
//! interleaving (no sleeps, no timing).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use proptest::prelude::*;

use super::entry::{Conn, ConnKey, Marks, ProtoState};
use super::nat::Tuple;
use super::shard::{key_hash, ShardCell, Unlinked};
use super::tests::{fl, seen, tcp, udp};
use super::*;
use crate::packet::{HeapBuf, PortNo};

fn key(i: u16) -> ConnKey {
    ConnKey {
        zone: i % 3,
        proto: 17,
        tuple: Tuple {
            src: 0x0a00_0000 | u32::from(i),
            dst: 0x0a60_0001,
            sport: 1000 + i,
            dport: 53,
        },
    }
}

/// A connection whose key of direction `dir` is `k`.
fn conn(k: ConnKey, dir: u8) -> Arc<Conn> {
    let other = ConnKey {
        tuple: k.tuple.reverse(),
        ..k
    };
    let keys = if dir == 0 { [k, other] } else { [other, k] };
    Arc::new(Conn {
        keys,
        nat: 0,
        lb: None,
        proto: ProtoState::Other,
        dead: Default::default(),
        replied: Default::default(),
        expires: AtomicU64::new(u64::MAX),
        packets: Default::default(),
        bytes: Default::default(),
        marks: Marks::new(CtMarks::ZERO),
        lock: Mutex::new(()),
    })
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u16, u8),
    Remove(u16),
    /// Remove only if the key names the connection inserted `n` inserts ago.
    RemoveIfStale(u16),
    /// Keep the keys of odd-numbered keys only.
    RetainOdd,
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..48u16, 0..2u8).prop_map(|(k, d)| Op::Insert(k, d)),
        3 => (0..48u16).prop_map(Op::Remove),
        1 => (0..48u16).prop_map(Op::RemoveIfStale),
        1 => Just(Op::RetainOdd),
        1 => Just(Op::Clear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of inserts, replacements, removals and retains (which
    /// grow, shrink and clean the array) leaves the lock-free reader, the
    /// locked reader and the length equal to a `HashMap` model.
    #[test]
    fn shard_index_matches_a_hash_map(ops in proptest::collection::vec(op(), 1..200)) {
        let cell = ShardCell::default();
        let mut model: HashMap<ConnKey, (Arc<Conn>, u8)> = HashMap::new();
        let mut older: HashMap<ConnKey, Arc<Conn>> = HashMap::new();
        for op in ops {
            let mut g = cell.lock();
            match op {
                Op::Insert(i, d) => {
                    let k = key(i);
                    let c = conn(k, d);
                    g.insert(k, &c, d).expect("indexable");
                    if let Some((old, _)) = model.insert(k, (c, d)) {
                        older.insert(k, old);
                    }
                }
                Op::Remove(i) => {
                    prop_assert_eq!(g.remove(&key(i), None), model.remove(&key(i)).is_some());
                }
                Op::RemoveIfStale(i) => {
                    let k = key(i);
                    if let Some(stale) = older.get(&k) {
                        let live = model.get(&k).is_some_and(|(c, _)| Arc::ptr_eq(c, stale));
                        prop_assert_eq!(g.remove(&k, Some(stale)), live);
                        if live {
                            model.remove(&k);
                        }
                    }
                }
                Op::RetainOdd => {
                    let before = model.len();
                    model.retain(|k, _| !k.tuple.sport.is_multiple_of(2));
                    let gone = g.retain(|c, d| !c.keys[usize::from(d)].tuple.sport.is_multiple_of(2), &mut Unlinked::default());
                    prop_assert_eq!(gone, before - model.len());
                }
                Op::Clear => {
                    g.retain(|_, _| false, &mut Unlinked::default());
                    model.clear();
                }
            }
            prop_assert_eq!(g.len(), model.len());
            drop(g);
            let guard = crossbeam::epoch::pin();
            for i in 0..48 {
                let k = key(i);
                let found = cell.find(&k, key_hash(&k), &guard);
                match model.get(&k) {
                    Some((c, d)) => {
                        let f = found.expect("a model key is found lock-free");
                        prop_assert!(std::ptr::eq(f.conn(), &**c));
                        prop_assert_eq!(f.dir, *d);
                        let s = cell.lock().get(&k).expect("and under the lock");
                        prop_assert!(Arc::ptr_eq(&s.conn, c));
                    }
                    None => {
                        prop_assert!(found.is_none(), "key {} is not in the model", i);
                        prop_assert!(cell.lock().get(&k).is_none());
                    }
                }
            }
        }
    }
}

fn run(h: &mut ConntrackHandle, now: Nanos, ct: &CtAction, f: &[u8]) -> (u8, Vec<u8>) {
    let mut b = HeapBuf::from_frame(f);
    let mut key = crate::flow::key::extract(f, PortNo(1));
    ConntrackHook::<HeapBuf>::conntrack(h, now, ct, &mut b, &mut key).expect("tracked");
    (key.get(Field::CtState) as u8, b.data().to_vec())
}

fn dnat(server: [u8; 4]) -> CtAction {
    CtAction {
        commit: true,
        zone: 1,
        table: None,
        nat: Some(NatSpec {
            kind: Some(NatKind::Dst),
            addrs: Some((Ipv4Addr::from(server), Ipv4Addr::from(server))),
            ports: None,
        }),
        mark: None,
        label: None,
    }
}

const CONNS: u32 = 200;
const ROUNDS: u32 = 30;
const SERVER: [u8; 4] = [10, 1, 0, 5];
const VIP: [u8; 4] = [10, 96, 0, 1];
const ISN_C: u32 = 1000;
const ISN_S: u32 = 7_000_000;

fn client(i: u32) -> [u8; 4] {
    (u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i).to_be_bytes()
}

/// Connection `i`: even ones TCP, odd ones UDP; both DNATed VIP → SERVER.
/// The packet of round `r` in direction `dir`.
fn packet(i: u32, dir: u32, r: u32) -> Vec<u8> {
    let c = client(i);
    let payload = [i as u8; 40];
    match (i % 2, dir) {
        (0, 0) => tcp(
            c,
            VIP,
            40000,
            80,
            ISN_C + 1 + r * 40,
            ISN_S + 1,
            fl::ACK,
            &payload,
        ),
        (0, _) => tcp(
            SERVER,
            c,
            80,
            40000,
            ISN_S + 1 + r * 40,
            ISN_C + 1,
            fl::ACK,
            &payload,
        ),
        (_, 0) => udp(c, VIP, 5000, 53, &payload),
        (_, _) => udp(SERVER, c, 53, 5000, &payload),
    }
}

/// Opens every connection (TCP handshake; UDP request and reply) on one
/// handle.
fn open_all(ct: &Conntrack, act: &CtAction) {
    let mut h = ct.handle(99);
    for i in 0..CONNS {
        let c = client(i);
        if i.is_multiple_of(2) {
            run(
                &mut h,
                0,
                act,
                &tcp(c, VIP, 40000, 80, ISN_C, 0, fl::SYN, b""),
            );
            let synack = tcp(SERVER, c, 80, 40000, ISN_S, ISN_C + 1, fl::SYNACK, b"");
            run(&mut h, 0, act, &synack);
            let ack = tcp(c, VIP, 40000, 80, ISN_C + 1, ISN_S + 1, fl::ACK, b"");
            run(&mut h, 0, act, &ack);
        } else {
            run(&mut h, 0, act, &udp(c, VIP, 5000, 53, b"q"));
            run(&mut h, 0, act, &udp(SERVER, c, 53, 5000, b"a"));
        }
    }
}

type Seen = HashMap<(u32, u32), (u8, Vec<u8>)>;
type Counts = HashMap<ConnKey, ([u64; 2], [u64; 2])>;

fn counts(ct: &Conntrack) -> Counts {
    let mut m = HashMap::new();
    ct.for_each(|c| {
        m.insert(c.keys[0], (c.packets(), c.bytes()));
    });
    m
}

/// The single-threaded model: one handle sends every packet of both
/// directions once per round; returns each packet's `ct_state` and output
/// (per connection and direction: every round's is the same) and the
/// counters after the opening and at the end.
fn model() -> (Seen, Counts, Counts) {
    let ct = Conntrack::new(ConntrackConfig::default());
    let act = dnat(SERVER);
    open_all(&ct, &act);
    let opened = counts(&ct);
    let mut h = ct.handle(1);
    let mut out = HashMap::new();
    for r in 0..ROUNDS {
        for i in 0..CONNS {
            for dir in 0..2 {
                let (st, f) = run(&mut h, 1, &act, &packet(i, dir, r));
                let f = strip_seq(i, f);
                let prev = out.insert((i, dir), (st, f.clone()));
                assert!(prev.is_none_or(|p| p == (st, f)), "model is stable");
            }
        }
    }
    (out, opened, counts(&ct))
}

/// The output frame without what differs between rounds (TCP sequence
/// number and checksum).
fn strip_seq(i: u32, mut f: Vec<u8>) -> Vec<u8> {
    if i.is_multiple_of(2) {
        f[14 + 20 + 4..14 + 20 + 8].fill(0);
        f[14 + 20 + 16..14 + 20 + 18].fill(0);
    }
    f
}

/// Two PMDs whose caches are off (every packet goes to the shared table)
/// or tiny (most do), each sending every connection's packets in both
/// directions, while a control thread creates and flushes other
/// connections in the same shards (rehashing them under the readers):
/// every packet gets the single-threaded model's `ct_state` and
/// translation, the counters end equal to the model's (two PMDs: twice the
/// rounds), and the PMDs take no lock at all.
fn two_pmds_agree_with_the_model(cache_entries: usize) {
    let (want, opened, model_end) = model();
    let ct = Conntrack::new(ConntrackConfig {
        shards: 4,
        cache_entries,
        ..ConntrackConfig::default()
    });
    let act = dnat(SERVER);
    open_all(&ct, &act);
    let start = Barrier::new(3);
    let (want, act) = (&want, &act);
    std::thread::scope(|s| {
        for pmd in 0..2u32 {
            let (ct, start) = (ct.clone(), &start);
            s.spawn(move || {
                let mut h = ct.handle(u64::from(pmd) + 1);
                start.wait();
                let locks = locks_taken();
                for r in 0..ROUNDS {
                    for i in 0..CONNS {
                        // Each PMD sends both directions, in opposite orders.
                        for d in 0..2 {
                            let dir = if pmd == 0 { d } else { 1 - d };
                            let (st, f) = run(&mut h, 1, act, &packet(i, dir, r));
                            let got = (st, strip_seq(i, f));
                            assert!(
                                want[&(i, dir)] == got,
                                "pmd {pmd} round {r} conn {i} dir {dir}: {got:?} vs model {:?}",
                                want[&(i, dir)]
                            );
                        }
                    }
                }
                assert_eq!(locks_taken() - locks, 0, "pmd {pmd} took a lock");
                if cache_entries == 0 {
                    assert_eq!(h.cache_stats().hits, 0);
                }
            });
        }
        let (ct, start) = (ct.clone(), &start);
        s.spawn(move || {
            let mut h = ct.handle(77);
            start.wait();
            let act = dnat([10, 9, 9, 9]);
            for round in 0..20u16 {
                for j in 0..100u32 {
                    let c = (u32::from(Ipv4Addr::new(10, 2, 0, 0)) + j).to_be_bytes();
                    let (st, _) = run(&mut h, 1, &act, &udp(c, VIP, 6000 + round, 53, b"x"));
                    assert_eq!(st & ct_state::NEW, ct_state::NEW);
                }
                let churn = ConnFilter {
                    zone: None,
                    ip: Some(Ipv4Addr::new(10, 9, 9, 9)),
                };
                assert_eq!(ct.flush(&churn), 100);
            }
        });
    });
    let end = counts(&ct);
    assert_eq!(end.len(), CONNS as usize);
    for (k, (p, b)) in &end {
        let (p0, b0) = opened[k];
        let (p1, b1) = model_end[k];
        let twice = |o: [u64; 2], m: [u64; 2]| [0, 1].map(|d| o[d] + 2 * (m[d] - o[d]));
        assert_eq!(*p, twice(p0, p1), "packets of {k:?}");
        assert_eq!(*b, twice(b0, b1), "bytes of {k:?}");
    }
    assert_eq!(ct.stats().invalid.load(Ordering::Relaxed), 0);
}

#[test]
fn two_pmds_without_a_cache_take_no_lock_and_agree_with_one_thread() {
    two_pmds_agree_with_the_model(0);
}

#[test]
fn two_pmds_with_a_tiny_cache_take_no_lock_and_agree_with_one_thread() {
    two_pmds_agree_with_the_model(8);
}

/// Established connections whose cache entries miss are found in the
/// table without a lock; a flushed one is not found (and the lookup of a
/// dead or expired one takes the shard lock to remove it).
#[test]
fn a_miss_finds_live_connections_lock_free_and_never_dead_ones() {
    let ct = Conntrack::new(ConntrackConfig {
        cache_entries: 0,
        ..ConntrackConfig::default()
    });
    let act = dnat(SERVER);
    open_all(&ct, &act);
    let mut h = ct.handle(5);
    let before = locks_taken();
    let (st, f) = run(&mut h, 1, &act, &packet(1, 0, 0));
    assert_eq!(st, ct_state::TRK | ct_state::EST | ct_state::DNAT);
    assert_eq!(seen(&f).dst, Ipv4Addr::from(SERVER));
    assert_eq!(locks_taken(), before, "an established packet took a lock");
    let k = ConnKey {
        zone: 1,
        proto: 17,
        tuple: Tuple {
            src: u32::from(Ipv4Addr::from(client(1))),
            dst: u32::from(Ipv4Addr::from(VIP)),
            sport: 5000,
            dport: 53,
        },
    };
    assert!(ct.lookup(1, key_hash(&k), &k).is_some());
    assert_eq!(
        ct.flush(&ConnFilter {
            zone: None,
            ip: Some(Ipv4Addr::from(client(1)))
        }),
        1
    );
    assert!(ct.lookup(1, key_hash(&k), &k).is_none(), "flushed");
    // The next packet opens a new connection (UDP), translated alike.
    let (st, f) = run(&mut h, 1, &act, &packet(1, 0, 0));
    assert_eq!(st, ct_state::TRK | ct_state::NEW | ct_state::DNAT);
    assert_eq!(seen(&f).dst, Ipv4Addr::from(SERVER));
    // Expired: found in the index, refused, removed under the lock.
    let far = 1 << 50;
    assert!(ct.lookup(far, key_hash(&k), &k).is_none());
    let cell = ct.shard_of(key_hash(&k));
    assert!(cell.lock().get(&k).is_none(), "the expired key was removed");
}

/// A flush releases the connections it removes on the flushing thread,
/// after a grace period, instead of leaving their drops to whichever
/// thread collects the epoch's garbage next (a PMD, mid-traffic): when
/// `flush` returns, no removed connection is alive.
#[test]
fn a_flush_frees_the_connections_it_removes_itself() {
    let ct = Conntrack::new(ConntrackConfig {
        cache_entries: 0,
        ..ConntrackConfig::default()
    });
    open_all(&ct, &dnat(SERVER));
    let mut weak = Vec::new();
    for cell in ct.inner.shards.iter() {
        cell.lock().for_each(|c, dir| {
            if dir == 0 {
                weak.push(Arc::downgrade(c));
            }
        });
    }
    assert_eq!(weak.len(), CONNS as usize);
    assert_eq!(ct.flush(&ConnFilter::default()), CONNS as usize);
    let alive = weak.iter().filter(|w| w.upgrade().is_some()).count();
    assert_eq!(alive, 0, "connections left to the epoch collector");
    assert!(ct.is_empty());
}

/// The same for a control-thread sweep of expired connections.
#[test]
fn a_control_sweep_frees_the_expired_connections_itself() {
    let ct = Conntrack::new(ConntrackConfig {
        cache_entries: 0,
        ..ConntrackConfig::default()
    });
    open_all(&ct, &dnat(SERVER));
    let mut weak = Vec::new();
    for cell in ct.inner.shards.iter() {
        cell.lock().for_each(|c, _| weak.push(Arc::downgrade(c)));
    }
    assert_eq!(ct.sweep(0), 0, "nothing expired yet");
    assert!(weak.iter().all(|w| w.upgrade().is_some()));
    assert_eq!(ct.sweep(1 << 50), 2 * CONNS as usize, "both keys of each");
    assert!(weak.iter().all(|w| w.upgrade().is_none()));
}

/// A PMD's own periodic sweep (`sweep_shard`) retires what it removes
/// through the epoch collector (a PMD never waits for other threads); the
/// removed connections are gone from the table at once.
#[test]
fn a_pmd_sweep_retires_through_the_collector() {
    let ct = Conntrack::new(ConntrackConfig {
        cache_entries: 0,
        ..ConntrackConfig::default()
    });
    open_all(&ct, &dnat(SERVER));
    let n: usize = (0..ct.inner.shards.len())
        .map(|i| ct.sweep_shard(1 << 50, i))
        .sum();
    assert_eq!(n, 2 * CONNS as usize);
    assert!(ct.is_empty());
    for i in 0..CONNS {
        let (st, _) = run(&mut ct.handle(3), 1 << 50, &dnat(SERVER), &packet(i, 1, 0));
        assert_ne!(
            st & ct_state::EST,
            ct_state::EST,
            "a swept connection was found"
        );
    }
}

/// Flushed connections whose last reference the flush held are reset and
/// pooled, and new connections are written into them instead of new
/// allocations; a pooled allocation is never visible in the table.
#[test]
fn flushed_allocations_are_reused_by_new_connections() {
    let ct = Conntrack::new(ConntrackConfig {
        cache_entries: 0,
        ..ConntrackConfig::default()
    });
    let act = dnat(SERVER);
    open_all(&ct, &act);
    let mut before = std::collections::HashSet::new();
    for cell in ct.inner.shards.iter() {
        cell.lock().for_each(|c, _| {
            before.insert(Arc::as_ptr(c) as usize);
        });
    }
    assert_eq!(ct.flush(&ConnFilter::default()), CONNS as usize);
    assert_eq!(lock(&ct.inner.spares).len(), CONNS as usize, "all pooled");
    assert!(ct.is_empty());
    open_all(&ct, &act);
    let mut reused = 0;
    for cell in ct.inner.shards.iter() {
        cell.lock().for_each(|c, dir| {
            if dir == 0 && before.contains(&(Arc::as_ptr(c) as usize)) {
                reused += 1;
            }
            assert!(!c.is_dead());
        });
    }
    // open_all's handle took them in batches; its stash went with it.
    assert_eq!(reused, CONNS as usize);
    assert_eq!(lock(&ct.inner.spares).len(), 0);
    assert_eq!(ct.len(), CONNS as usize);
    // And they behave as new connections: established traffic is DNATed.
    let mut h = ct.handle(5);
    let (st, f) = run(&mut h, 1, &act, &packet(1, 0, 0));
    assert_eq!(st, ct_state::TRK | ct_state::EST | ct_state::DNAT);
    assert_eq!(seen(&f).dst, Ipv4Addr::from(SERVER));
}

/// 100,000 clients' connections from one /16, with ports as varied as real
/// ones, to one Service: every key gets its own hash, and the slots of a
/// table sized for them are as spread as a random function's. (The hash
/// before XORed the source port over the address's low 16 bits: these keys
/// had at most 65,536 hashes between them.)
#[test]
fn key_hash_spreads_one_subnets_clients() {
    let keys: Vec<ConnKey> = (0..100_000u32)
        .map(|i| ConnKey {
            zone: 0,
            proto: 6,
            tuple: Tuple {
                src: 0x0a01_0000 | (i & 0xffff),
                dst: 0x0a60_0001,
                sport: (i.wrapping_mul(7919) >> 3) as u16,
                dport: 80,
            },
        })
        .collect();
    let hashes: std::collections::HashSet<u64> = keys.iter().map(key_hash).collect();
    assert_eq!(hashes.len(), keys.len(), "distinct keys sharing a hash");
    // 2^18 slots: a random function fills ~83,000 of them with 100,000 keys.
    let slots: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0x3_ffff).collect();
    assert!(
        slots.len() > 75_000,
        "{} slots of 262,144 used",
        slots.len()
    );
    let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 48).collect();
    assert!(tags.len() > 45_000, "{} tags of 65,536 used", tags.len());
}
