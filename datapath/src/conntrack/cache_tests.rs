//! The per-PMD connection cache and the lock-free hit path: concurrent
//! PMDs on both directions, invalidation by flush, expiry and eviction,
//! more connections than the cache holds. Deterministic: threads meet at
//! barriers and do fixed work; nothing sleeps or measures time.

use std::net::Ipv4Addr;
use std::sync::Barrier;

use super::tests::{fl, ip, seen, tcp, udp};
use super::*;
use crate::packet::{HeapBuf, PortNo};

/// Runs `ct` over `f` through the hook; returns `ct_state` and the frame
/// as it leaves.
fn run(h: &mut ConntrackHandle, now: Nanos, ct: &CtAction, f: &[u8]) -> (u8, Vec<u8>) {
    let mut b = HeapBuf::from_frame(f);
    let mut key = crate::flow::key::extract(f, PortNo(1));
    ConntrackHook::<HeapBuf>::conntrack(h, now, ct, &mut b, &mut key).expect("tracked");
    (key.get(Field::CtState) as u8, b.data().to_vec())
}

/// A default table, a handle on it, and zone 0's commit and peek actions.
fn zone0() -> (Conntrack, ConntrackHandle, CtAction, CtAction) {
    let ct = Conntrack::new(ConntrackConfig::default());
    let h = ct.handle(1);
    (ct, h, act(0, true, None), act(0, false, None))
}

fn act(zone: u16, commit: bool, dnat: Option<[u8; 4]>) -> CtAction {
    CtAction {
        commit,
        zone,
        table: None,
        nat: Some(NatSpec {
            kind: dnat.map(|_| NatKind::Dst),
            addrs: dnat.map(|a| (Ipv4Addr::from(a), Ipv4Addr::from(a))),
            ports: None,
        }),
        mark: None,
        label: None,
    }
}

const EST: u8 = ct_state::TRK | ct_state::EST;
const EST_RPL: u8 = ct_state::TRK | ct_state::EST | ct_state::RPL;

fn client(i: u32) -> [u8; 4] {
    (u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i).to_be_bytes()
}

#[test]
fn two_pmds_on_the_two_directions_see_no_false_invalid_and_count_exactly() {
    const CONNS: u32 = 300;
    const ROUNDS: u32 = 40;
    const LEN: u32 = 100;
    let ct = Conntrack::new(ConntrackConfig {
        shards: 8,
        ..ConntrackConfig::default()
    });
    let server = [10, 1, 0, 5];
    let vip = [10, 96, 0, 1];
    let dnat = act(1, true, Some(server));
    let (isn_c, isn_s) = (1000u32, 7_000_000u32);
    // Handshakes on one PMD: TCP ESTABLISHED, DNATed to the server.
    let mut h = ct.handle(9);
    for i in 0..CONNS {
        let c = client(i);
        let (st, _) = run(
            &mut h,
            0,
            &dnat,
            &tcp(c, vip, 40000, 80, isn_c, 0, fl::SYN, b""),
        );
        assert_eq!(st, ct_state::TRK | ct_state::NEW | ct_state::DNAT);
        let synack = tcp(server, c, 80, 40000, isn_s, isn_c + 1, fl::SYNACK, b"");
        assert_eq!(run(&mut h, 0, &dnat, &synack).0, EST_RPL | ct_state::DNAT);
        let ack = tcp(c, vip, 40000, 80, isn_c + 1, isn_s + 1, fl::ACK, b"");
        assert_eq!(run(&mut h, 0, &dnat, &ack).0, EST | ct_state::DNAT);
    }
    // Each direction sends ROUNDS segments of LEN bytes per connection,
    // acknowledging the other's SYN only: in window in any interleaving.
    let payload = vec![7u8; LEN as usize];
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        for dir in 0..2u32 {
            let (ct, dnat, payload, start) = (ct.clone(), dnat.clone(), &payload, &start);
            s.spawn(move || {
                let mut h = ct.handle(u64::from(dir) + 1);
                start.wait();
                for r in 0..ROUNDS {
                    for i in 0..CONNS {
                        let c = client(i);
                        let (f, want) = if dir == 0 {
                            let seq = isn_c + 1 + r * LEN;
                            let f = tcp(c, vip, 40000, 80, seq, isn_s + 1, fl::ACK, payload);
                            (f, EST | ct_state::DNAT)
                        } else {
                            let seq = isn_s + 1 + r * LEN;
                            let f = tcp(server, c, 80, 40000, seq, isn_c + 1, fl::ACK, payload);
                            (f, EST_RPL | ct_state::DNAT)
                        };
                        let (st, out) = run(&mut h, 1, &dnat, &f);
                        assert_eq!(st, want, "dir {dir} round {r} conn {i}");
                        let o = seen(&out);
                        if dir == 0 {
                            assert_eq!(o.dst, Ipv4Addr::from(server));
                        } else {
                            assert_eq!((o.src, o.sport), (Ipv4Addr::from(vip), 80));
                        }
                    }
                }
                assert!(h.cache_stats().hits >= u64::from(CONNS * (ROUNDS - 1)));
            });
        }
    });
    assert_eq!(ct.stats().invalid.load(Ordering::Relaxed), 0);
    let frame_len = |payload: u32| u64::from(20 + 20 + payload);
    let mut n = 0;
    ct.for_each(|c| {
        n += 1;
        assert_eq!(c.tcp_state(), Some(TcpState::Established));
        assert_eq!(
            c.packets(),
            [2 + u64::from(ROUNDS), 1 + u64::from(ROUNDS)],
            "handshake plus data, per direction"
        );
        let data = u64::from(ROUNDS) * frame_len(LEN);
        assert_eq!(c.bytes(), [2 * frame_len(0) + data, frame_len(0) + data]);
    });
    assert_eq!(n, CONNS);
}

/// One UDP Service (10.96.0.10:53 → 10.1.0.5:5353) in a fresh table.
fn dns_table(cfg: ConntrackConfig) -> (Conntrack, crate::service::Services) {
    let s = crate::service::Services::new(crate::service::ServiceConfig::default());
    let u: crate::service::ServiceUpdate = serde_json::from_value(serde_json::json!({
        "upsert": [{"name": "default/dns:dns", "protocol": "udp", "port": 53,
                    "cluster_ips": ["10.96.0.10"],
                    "endpoints": [{"ip": "10.1.0.5", "port": 5353}]}]
    }))
    .expect("batch parses");
    s.apply(&u, None).expect("applies");
    (Conntrack::with_services(cfg, s.clone()), s)
}

#[test]
fn endpoint_packet_counts_stay_exact_under_concurrent_flushes() {
    endpoint_counts_under_flushes(ConntrackConfig::default());
}

/// The same with no per-PMD cache: every packet reads the shared table
/// lock-free while the flushes remove keys and rebuild its arrays.
#[test]
fn endpoint_packet_counts_stay_exact_under_concurrent_flushes_without_a_cache() {
    endpoint_counts_under_flushes(ConntrackConfig {
        cache_entries: 0,
        shards: 2,
        ..ConntrackConfig::default()
    });
}

fn endpoint_counts_under_flushes(cfg: ConntrackConfig) {
    // Two PMDs send client → Service packets while a third thread flushes
    // the table again and again: every packet lands in exactly one
    // connection, live or finished, so the endpoint's total is exact.
    const CLIENTS: u32 = 64;
    const ROUNDS: u32 = 200;
    let (ct, svcs) = dns_table(cfg);
    let lb = act(1, true, None);
    let start = Barrier::new(3);
    std::thread::scope(|s| {
        for pmd in 0..2u32 {
            let (ct, lb, start) = (ct.clone(), lb.clone(), &start);
            s.spawn(move || {
                let mut h = ct.handle(u64::from(pmd) + 1);
                start.wait();
                for r in 0..ROUNDS {
                    for i in 0..CLIENTS {
                        let f = udp(client(i), [10, 96, 0, 10], 2000, 53, b"q");
                        let (st, out) = run(&mut h, u64::from(r), &lb, &f);
                        assert_eq!(st & ct_state::DNAT, ct_state::DNAT, "translated");
                        assert_eq!(seen(&out).dst, ip("10.1.0.5"));
                    }
                }
            });
        }
        let (ct, start) = (ct.clone(), &start);
        s.spawn(move || {
            start.wait();
            for _ in 0..100 {
                ct.flush(&ConnFilter::default());
            }
        });
    });
    // `dump-services`: finished connections' packets plus live ones.
    let dump = svcs.dump_with(Some(&ct));
    let field = |name: &str| -> u64 {
        dump.split(name)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {dump}"))
    };
    assert_eq!(field("packets="), u64::from(2 * ROUNDS * CLIENTS), "{dump}");
    assert_eq!(field("active="), ct.len() as u64, "{dump}");
    assert_eq!(
        field("connections="),
        ct.stats().created.load(Ordering::Relaxed),
        "{dump}"
    );
}

#[test]
fn flushed_connections_are_not_found_through_the_cache() {
    let (ct, mut h, commit, peek) = zone0();
    let (c, s) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    // UDP: created by the first packet (not cached: a connection's second
    // packet fills the cache), replied, cached by the second request, then
    // hit.
    run(&mut h, 0, &commit, &udp(c, s, 1, 2, b"q"));
    assert_eq!(run(&mut h, 0, &peek, &udp(s, c, 2, 1, b"a")).0, EST_RPL);
    let hits = h.cache_stats().hits;
    assert_eq!(run(&mut h, 0, &peek, &udp(c, s, 1, 2, b"q")).0, EST);
    assert_eq!(
        h.cache_stats().hits,
        hits,
        "the second packet fills the cache"
    );
    assert_eq!(run(&mut h, 0, &peek, &udp(c, s, 1, 2, b"q")).0, EST);
    assert_eq!(h.cache_stats().hits, hits + 1, "served by the cache");
    assert_eq!(ct.flush(&ConnFilter::default()), 1);
    let misses = h.cache_stats().misses;
    assert_eq!(
        run(&mut h, 0, &peek, &udp(c, s, 1, 2, b"q")).0,
        ct_state::TRK | ct_state::NEW,
        "the cached entry is dead: not established any more"
    );
    assert_eq!(
        run(&mut h, 0, &peek, &udp(s, c, 2, 1, b"a")).0,
        ct_state::TRK | ct_state::NEW
    );
    assert!(h.cache_stats().misses >= misses + 2);
    assert!(ct.is_empty());
    // TCP: an established connection's data after a flush is invalid (a
    // non-SYN without an entry), not tracked through the cache.
    run(&mut h, 0, &commit, &tcp(c, s, 5, 6, 100, 0, fl::SYN, b""));
    run(
        &mut h,
        0,
        &commit,
        &tcp(s, c, 6, 5, 500, 101, fl::SYNACK, b""),
    );
    assert_eq!(
        run(
            &mut h,
            0,
            &commit,
            &tcp(c, s, 5, 6, 101, 501, fl::ACK, b"x")
        )
        .0,
        EST
    );
    assert_eq!(ct.flush(&ConnFilter::default()), 1);
    assert_eq!(
        run(
            &mut h,
            0,
            &commit,
            &tcp(c, s, 5, 6, 102, 501, fl::ACK, b"y")
        )
        .0,
        ct_state::TRK | ct_state::INV
    );
    assert!(ct.is_empty());
}

#[test]
fn expiry_through_the_cache_follows_the_fake_clock() {
    let t = Timeouts::default();
    let (ct, mut h, commit, peek) = zone0();
    let (c, s) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    run(&mut h, 0, &commit, &udp(c, s, 1, 2, b"q"));
    run(&mut h, 0, &commit, &udp(s, c, 2, 1, b"a"));
    // Busy traffic within a second does not move the expiry (no write):
    // the entry may expire up to EXPIRES_REFRESH_NS early.
    for i in 1..10 {
        assert_eq!(
            run(
                &mut h,
                i * EXPIRES_REFRESH_NS / 10,
                &peek,
                &udp(c, s, 1, 2, b"q")
            )
            .0,
            EST
        );
    }
    assert_eq!(ct.sweep(t.udp_stream - 1), 0);
    let hits = h.cache_stats().hits;
    assert_eq!(
        run(&mut h, t.udp_stream - 1, &peek, &udp(c, s, 1, 2, b"q")).0,
        EST
    );
    assert_eq!(h.cache_stats().hits, hits + 1, "a hit moves the expiry");
    let last = t.udp_stream - 1;
    assert_eq!(
        ct.sweep(last + t.udp_stream - 1),
        0,
        "refreshed by the cached hit"
    );
    // Expired: the cached entry is not used, even before any sweep.
    let late = last + t.udp_stream;
    assert_eq!(
        run(&mut h, late, &peek, &udp(c, s, 1, 2, b"q")).0,
        ct_state::TRK | ct_state::NEW
    );
    assert!(ct.is_empty(), "removed when found expired");
    assert_eq!(ct.stats().expired.load(Ordering::Relaxed), 1);
}

#[test]
fn more_connections_than_the_cache_holds_stay_correct() {
    const CONNS: u32 = 200;
    let ct = Conntrack::new(ConntrackConfig {
        cache_entries: 8,
        ..ConntrackConfig::default()
    });
    let mut h = ct.handle(1);
    assert_eq!(h.cache_capacity(), 8);
    let vip = [10, 96, 0, 1];
    let target = |i: u32| [10, 1, (i >> 8) as u8, i as u8];
    for i in 0..CONNS {
        let dnat = act(2, true, Some(target(i)));
        let (st, out) = run(&mut h, 0, &dnat, &udp(client(i), vip, 7, 53, b"q"));
        assert_eq!(st, ct_state::TRK | ct_state::NEW | ct_state::DNAT);
        assert_eq!(seen(&out).dst, Ipv4Addr::from(target(i)));
    }
    let any = act(2, true, None);
    for round in 0..3 {
        for i in 0..CONNS {
            let (st, out) = run(&mut h, round, &any, &udp(target(i), client(i), 53, 7, b"a"));
            assert_eq!(st, EST_RPL | ct_state::DNAT, "reply of {i}");
            assert_eq!(
                (seen(&out).src, seen(&out).dst),
                (Ipv4Addr::from(vip), Ipv4Addr::from(client(i)))
            );
            let (st, out) = run(&mut h, round, &any, &udp(client(i), vip, 7, 53, b"q"));
            assert_eq!(st, EST | ct_state::DNAT, "request of {i}");
            assert_eq!(seen(&out).dst, Ipv4Addr::from(target(i)));
        }
    }
    let st = h.cache_stats();
    assert!(
        st.misses > u64::from(CONNS),
        "the cache is too small to hold them: {st:?}"
    );
    assert_eq!(ct.len(), CONNS as usize);
    ct.for_each(|c| assert_eq!(c.packets(), [4, 3]));
    // A working set that fits is served by the cache once it is in:
    // full sets give an entry up on one miss in EVICT_EVERY, so it takes
    // a few rounds (bounded), and then it stays.
    let round = |h: &mut ConntrackHandle| {
        let before = h.cache_stats().hits;
        for i in 0..4 {
            run(h, 5, &any, &udp(client(i), vip, 7, 53, b"q"));
        }
        h.cache_stats().hits - before
    };
    let mut warm = 0;
    while round(&mut h) < 4 {
        warm += 1;
        assert!(
            warm < 16 * cache::EVICT_EVERY,
            "the working set never settled"
        );
    }
    let before = h.cache_stats();
    for _ in 0..10 {
        round(&mut h);
    }
    assert_eq!(h.cache_stats().hits - before.hits, 40);
    assert_eq!(h.cache_stats().misses, before.misses);
}

/// More connections than the cache holds, replayed in a cycle (pktgen's
/// dnat/100000f through 64Ki entries): a full set gives an entry up on
/// one offer in EVICT_EVERY only, so a stable part of the connections
/// keeps hitting; replacing an entry on every miss would evict each one
/// just before its connection comes back and never hit.
#[test]
fn a_cyclic_working_set_larger_than_the_cache_still_hits() {
    const CONNS: u32 = 48;
    let ct = Conntrack::new(ConntrackConfig {
        cache_entries: 16,
        ..ConntrackConfig::default()
    });
    let mut h = ct.handle(1);
    let vip = [10, 96, 0, 1];
    let dnat = |i: u32| act(2, true, Some([10, 1, 0, i as u8]));
    for i in 0..CONNS {
        run(&mut h, 0, &dnat(i), &udp(client(i), vip, 7, 53, b"q"));
    }
    let any = act(2, true, None);
    for _ in 0..50 {
        for i in 0..CONNS {
            run(&mut h, 1, &any, &udp(client(i), vip, 7, 53, b"q"));
        }
    }
    let before = h.cache_stats();
    for _ in 0..10 {
        for i in 0..CONNS {
            let (st, out) = run(&mut h, 1, &any, &udp(client(i), vip, 7, 53, b"q"));
            assert_eq!(st, ct_state::TRK | ct_state::NEW | ct_state::DNAT);
            assert_eq!(seen(&out).dst, Ipv4Addr::new(10, 1, 0, i as u8));
        }
    }
    let hits = h.cache_stats().hits - before.hits;
    // 16 entries for 48 connections: at best a third of the packets hit;
    // replacing an entry on every miss, none would.
    assert!(
        hits >= u64::from(10 * CONNS / 6),
        "{hits} hits of {} packets",
        10 * CONNS
    );
    ct.for_each(|c| assert_eq!(c.packets(), [61, 0]));
}

#[test]
fn a_killed_connection_lingering_in_a_cache_never_translates() {
    let vip = [10, 96, 0, 1];
    let (old, new) = ([10, 1, 0, 5], [10, 1, 0, 6]);
    let c = client(1);
    let q = || udp(c, vip, 7, 53, b"q");
    // Each way of killing the connection PMD A has cached.
    for how in ["flush", "expiry", "eviction", "reopen"] {
        let ct = Conntrack::new(ConntrackConfig {
            zone_limits: vec![(3, 1)],
            shards: 1,
            ..ConntrackConfig::default()
        });
        let (mut a, mut b) = (ct.handle(1), ct.handle(2));
        let zone = if how == "eviction" { 3 } else { 4 };
        let to_old = act(zone, true, Some(old));
        let to_new = act(zone, true, Some(new));
        if how == "reopen" {
            // A TCP connection closed by RST, cached by A, reopened on B.
            let syn = tcp(c, vip, 7, 80, 100, 0, fl::SYN, b"");
            run(&mut a, 0, &to_old, &syn);
            run(
                &mut a,
                0,
                &to_old,
                &tcp(old, c, 80, 7, 9, 101, fl::SYNACK, b""),
            );
            run(
                &mut a,
                0,
                &to_old,
                &tcp(c, vip, 7, 80, 101, 10, fl::ACK, b""),
            );
            let mut rst = tcp(c, vip, 7, 80, 101, 10, fl::ACK, b"");
            rst[47] |= 0x04;
            run(&mut a, 0, &to_old, &rst);
            let (st, out) = run(&mut b, 1, &to_new, &syn);
            assert_eq!(
                st,
                ct_state::TRK | ct_state::NEW | ct_state::DNAT,
                "reopened"
            );
            assert_eq!(seen(&out).dst, Ipv4Addr::from(new));
            let (st, out) = run(&mut a, 1, &to_old, &syn);
            assert_eq!(st, ct_state::TRK | ct_state::NEW | ct_state::DNAT, "{how}");
            assert_eq!(
                seen(&out).dst,
                Ipv4Addr::from(new),
                "{how}: A uses the new entry"
            );
            continue;
        }
        run(&mut a, 0, &to_old, &q());
        assert_eq!(
            seen(&run(&mut a, 0, &to_old, &q()).1).dst,
            Ipv4Addr::from(old)
        );
        let now = match how {
            "flush" => {
                assert_eq!(ct.flush(&ConnFilter::default()), 1);
                1
            }
            "expiry" => {
                let later = Timeouts::default().udp_first;
                assert_eq!(ct.sweep(later), 2);
                later
            }
            _ => {
                // Zone 3 holds one connection: another one evicts ours.
                run(
                    &mut b,
                    1,
                    &act(3, true, None),
                    &udp(client(2), vip, 7, 53, b"q"),
                );
                assert_eq!(ct.stats().evictions.load(Ordering::Relaxed), 1);
                1
            }
        };
        // Without a new entry, A's packet is a new connection, untranslated.
        let (st, out) = run(&mut a, now, &act(zone, false, None), &q());
        assert_eq!(st, ct_state::TRK | ct_state::NEW, "{how}");
        assert_eq!(seen(&out).dst, Ipv4Addr::from(vip), "{how}: not translated");
        if how == "eviction" {
            continue;
        }
        // A new entry for the same tuple on B: A follows it, not the old.
        run(&mut b, now, &to_new, &q());
        let (st, out) = run(&mut a, now, &to_old, &q());
        assert_eq!(st & ct_state::DNAT, ct_state::DNAT);
        assert_eq!(seen(&out).dst, Ipv4Addr::from(new), "{how}");
        let reply = udp(new, c, 53, 7, b"a");
        let (st, out) = run(&mut a, now, &to_old, &reply);
        assert_eq!(st, EST_RPL | ct_state::DNAT);
        assert_eq!(seen(&out).src, Ipv4Addr::from(vip));
    }
}
