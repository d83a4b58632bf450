//! Floods against the connection table, through the sans-IO flow
//! pipeline with the Service table: a SYN flood from random clients to a
//! ClusterIP while established connections keep sending. The established
//! connections are never evicted and every one of their segments is
//! forwarded; the table never exceeds its limit; every flood SYN is either
//! forwarded (it got a slot, evicting an unestablished entry) or dropped
//! as `ct_limit`, and the counters say which; the node's own traffic
//! (a rule before conntrack) passes throughout.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use rand::{Rng, SeedableRng};

use super::tests::{fl, ip, seen, tcp, Rig};
use super::*;
use crate::drop::DropReason;
use crate::service::{ServiceConfig, ServiceUpdate, Services};

const FLOWS: &str = "\
table=0,priority=50,ip,nw_dst=192.168.1.10 actions=output:3
table=0,priority=10,ip actions=ct(commit,zone=1,nat,table=1)
table=1,priority=20,ct_state=+trk+inv actions=drop
table=1,priority=10,ip,nw_dst=10.1.0.0/16 actions=output:2
table=1,priority=10,ip,nw_dst=10.0.0.0/16 actions=output:1
";
const VIP: [u8; 4] = [10, 96, 0, 10];
const LIMIT: usize = 4096;
const ESTABLISHED: u16 = 1000;
const FLOOD: usize = 200_000;

fn rig() -> Rig {
    let s = Services::new(ServiceConfig {
        node_addresses: vec![Ipv4Addr::new(192, 168, 1, 10)],
        masquerade_ip: ip("169.254.169.1"),
        cluster_cidrs: vec![(ip("10.0.0.0"), 16), (ip("10.1.0.0"), 16)],
        ..ServiceConfig::default()
    });
    let u: ServiceUpdate = serde_json::from_value(serde_json::json!({"upsert": [{
        "name": "default/web:http", "protocol": "tcp", "port": 80, "cluster_ips": ["10.96.0.10"],
        "endpoints": [{"ip": "10.1.0.5", "port": 8080}, {"ip": "10.1.0.6", "port": 8080}]}]}))
    .expect("batch");
    s.apply(&u, None).expect("Service");
    let ct = Conntrack::with_services(
        ConntrackConfig {
            max_connections: LIMIT,
            ..ConntrackConfig::default()
        },
        s,
    );
    Rig::new(FLOWS, ct)
}

#[test]
fn syn_flood_keeps_established_connections_and_the_limit() {
    let mut r = rig();
    let client = |i: u16| [10, 0, (i >> 8) as u8, i as u8];
    // 1000 established connections, each with its endpoint.
    let mut eps = Vec::new();
    for i in 0..ESTABLISHED {
        let out = r.expect(0, 1, tcp(client(i), VIP, 5000, 80, 100, 0, fl::SYN, b""), 2);
        let ep = seen(&out).dst.octets();
        r.expect(
            0,
            2,
            tcp(ep, client(i), 8080, 5000, 700, 101, fl::SYNACK, b""),
            1,
        );
        r.expect(
            0,
            1,
            tcp(client(i), VIP, 5000, 80, 101, 701, fl::ACK, b""),
            2,
        );
        eps.push(ep);
    }
    assert_eq!(r.ct.len(), usize::from(ESTABLISHED));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xf100d);
    let (mut flood_fwd, mut flood_dropped) = (0u64, 0u64);
    let mut seq = vec![101u32; usize::from(ESTABLISHED)];
    for n in 0..FLOOD {
        let src = [10, 0, rng.gen_range(64..=255), rng.gen()];
        let mut out = r.send(
            1,
            1,
            tcp(
                src,
                VIP,
                rng.gen_range(1024..65535),
                80,
                rng.gen(),
                0,
                fl::SYN,
                b"",
            ),
        );
        flood_fwd += out.take(crate::packet::PortNo(2)).len() as u64;
        flood_dropped += out.drops.get(DropReason::CtLimit);
        assert!(
            r.ct.len() <= LIMIT,
            "the table holds {} > {LIMIT}",
            r.ct.len()
        );
        // Between flood packets, established traffic: each segment passes,
        // translated to its connection's endpoint.
        if n % 200 == 0 {
            let i = rng.gen_range(0..ESTABLISHED);
            let k = usize::from(i);
            let out = r.expect(
                1,
                1,
                tcp(client(i), VIP, 5000, 80, seq[k], 701, fl::ACK, b"data"),
                2,
            );
            assert_eq!(
                seen(&out).dst.octets(),
                eps[k],
                "connection {i} kept its endpoint"
            );
            seq[k] += 4;
        }
        // The node's own traffic is not tracked and always passes.
        if n % 10_000 == 0 {
            r.expect(
                1,
                1,
                tcp(
                    [172, 16, 0, 9],
                    [192, 168, 1, 10],
                    22,
                    40000,
                    1,
                    1,
                    fl::ACK,
                    b"",
                ),
                3,
            );
        }
    }
    assert_eq!(
        flood_fwd + flood_dropped,
        FLOOD as u64,
        "every flood SYN forwarded or counted"
    );
    let st = r.ct.stats();
    let (evicted, refused) = (
        st.evictions.load(Ordering::Relaxed),
        st.limit_hits.load(Ordering::Relaxed),
    );
    assert_eq!(refused, flood_dropped, "ct_limit drops are the refusals");
    assert!(
        evicted > 0 && refused > 0,
        "evicted {evicted}, refused {refused}"
    );
    let est =
        r.ct.dump(&ConnFilter::default(), 1)
            .lines()
            .filter(|l| l.contains("ESTABLISHED"))
            .count();
    assert_eq!(
        est,
        usize::from(ESTABLISHED),
        "no established connection was evicted"
    );
    println!(
        "SYN flood: {FLOOD} SYNs, limit {LIMIT}: {flood_fwd} got a slot, {refused} refused (ct_limit), {evicted} unestablished evicted; {ESTABLISHED} established connections all kept"
    );
}
