//! The `mixed` scenario on a real `sluiced`: every part of the mix (ARP,
//! ICMP, l2, l3, Services, Geneve encap and decap) takes the flow meant
//! for it, the Service connections are tracked and NATed, and nothing is
//! dropped. A benchmark that forwarded the mix through the wrong flows
//! would still print a rate; this test is what keeps it honest.
//!
//! Needs root (DPDK) and a built `sluiced` (see `common::sluiced`);
//! without them it records why it is skipped and passes.

mod common;

use common::sluiced_for;
use std::time::{Duration, Instant};

use sluice_api::flows::FlowDump;
use sluice_benches::peer::{Cores, Peer, Sluiced};
use sluice_benches::runner::pcap_for;
use sluice_benches::scenario::{Kind, Scenario};

/// Bounded wait for the replayed pcap to go round a few times.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// `n_packets` of the first `dump-flows` line containing every one of
/// `parts`.
fn n_packets(dump: &FlowDump, parts: &[&str]) -> Option<u64> {
    dump.flows
        .iter()
        .find(|f| {
            let line = f.line();
            parts.iter().all(|p| line.contains(p))
        })
        .map(|f| f.n_packets)
}

#[test]
fn mixed_parts_take_their_flows_on_sluiced() {
    const NAME: &str = "mixed_parts_take_their_flows_on_sluiced";
    let Some(bin) = sluiced_for(NAME) else {
        return;
    };
    let work = tempfile::tempdir().expect("a temporary directory");
    let sc = Scenario::new(Kind::Mixed, 400, 5);
    let (pcap, frames) = pcap_for(&sc, work.path()).expect("the mixed pcap");
    let mut s = Sluiced::start(
        &bin,
        work.path(),
        &pcap,
        frames,
        &Cores::one(0, 1),
        &sc.sluice_config(),
    )
    .expect("sluiced starts");
    for call in sc.sluice_setup() {
        s.setup(&call).expect("overlay setup");
    }
    // Services before flows, as the runner does (see `runner::try_run`).
    let p = s
        .service_update(&sc.service_update(), None)
        .expect("the Services");
    assert_eq!(p.done, p.total);
    s.program(&sc.sluice_program()).expect("the mixed program");

    // Every frame of the pcap replayed at least 4 times since the program
    // was complete (the pcap replays from sluiced's start).
    let (before, _) = s.counters().expect("sluiced's counters");
    let start = Instant::now();
    let counters = loop {
        let (c, _) = s.counters().expect("sluiced's counters");
        let c = c.since(&before);
        if c.rx_packets >= 4 * frames as u64 {
            break c;
        }
        assert!(
            start.elapsed() < FORWARD_TIMEOUT,
            "sluiced received only {} packets of the {frames}-frame pcap in {FORWARD_TIMEOUT:?}",
            c.rx_packets
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        counters.drops.values().all(|&d| d == 0),
        "drops: {:?}",
        counters.drops
    );

    let dump = s.dump_flows().expect("dump-flows");
    for (what, parts) in [
        ("ARP", &["priority=50,arp"][..]),
        ("l2", &["dl_dst=02:00:00:00:00:02"][..]),
        // The ICMP echoes go to the network address of the routes 0-19
        // and the l3 frames to route 6-9 of every round (frame j routes
        // by j % 10000).
        ("l3 route 6", &["nw_dst=10.1.6.0/24"][..]),
        ("Services", &["nw_dst=10.96.0.0/12", "ct("][..]),
        ("after conntrack", &["table=1"][..]),
        ("encap", &["tnl_push"][..]),
        ("decap", &["tnl_pop"][..]),
        (
            "decapsulated",
            &["tun_id=0x1389", "dl_dst=02:00:00:00:00:01"][..],
        ),
    ] {
        let n = n_packets(&dump, parts).unwrap_or_else(|| {
            panic!(
                "no {what} flow with {parts:?} in dump-flows:\n{}",
                sluice_api::Render::render(&dump)
            )
        });
        assert!(
            n > 0,
            "the {what} flow forwarded nothing:\n{}",
            sluice_api::Render::render(&dump)
        );
    }
    let conns = u64::from(sc.mixed_connections());
    assert_eq!(
        s.conntrack_counts().expect("conntrack-stats"),
        (conns, conns),
        "every Service connection of the pcap is tracked and DNATed, no other"
    );
    let ct = s.dump_conntrack().expect("dump-conntrack");
    assert!(
        ct.connections
            .iter()
            .any(|c| c.reply.src.octets()[..3] == [10, 245, 0]),
        "the Service connections are DNATed to endpoints:\n{}",
        sluice_api::Render::render(&ct)
    );
}
