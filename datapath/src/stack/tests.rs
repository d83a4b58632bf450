//! The local stack on a fake clock: ARP and ICMP echo answered by smoltcp
//! (checked with etherparse), neighbour resolution for the tunnels, the
//! gratuitous ARP at start, and drops of what it does not serve.

use std::net::Ipv4Addr;

use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::*;
use crate::neigh::cache::arp_frame;
use crate::packet::{HeapAlloc, HeapBuf};

const VTEP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const PEER_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
const UPLINK: PortNo = PortNo(3);

/// Sends every packet to the local stack, like `actions=local`.
struct ToLocal;
impl<B: PacketBuf> Pipeline<B> for ToLocal {
    fn process(&mut self, _: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
        for p in burst.pkts.drain(..) {
            out.send(PortNo::LOCAL, p);
        }
    }
}

fn stack() -> (LocalStack<ToLocal, HeapAlloc>, NeighTable) {
    let t = NeighTable::new();
    let s = LocalStack::new(
        ToLocal,
        HeapAlloc,
        StackConfig {
            ip: VTEP,
            prefix_len: 24,
            mac: MAC,
            uplink: UPLINK,
            mtu: 1500,
        },
        t.clone(),
        NeighConfig::default(),
    )
    .expect("stack");
    (s, t)
}

fn rx(s: &mut LocalStack<ToLocal, HeapAlloc>, now: Nanos, frame: &[u8]) -> Output<HeapBuf> {
    let mut out = Output::new(8);
    let mut b = Burst::new(UPLINK);
    b.pkts.push(HeapBuf::from_frame(frame));
    s.process(now, &mut b, &mut out);
    out
}

#[test]
fn answers_arp_for_the_vtep() {
    let (mut s, _) = stack();
    let req = arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP);
    let mut out = rx(&mut s, 0, &req);
    let sent = out.take(UPLINK);
    assert_eq!(sent.len(), 1);
    let (op, sha, spa, tha, tpa) = parse_arp(sent[0].data()).expect("arp reply");
    assert_eq!((op, sha, spa, tha, tpa), (2, MAC, VTEP, PEER_MAC, PEER));
    // ARP for another address is not answered and is counted.
    let req = arp_frame(
        1,
        [0xff; 6],
        PEER_MAC,
        PEER,
        [0; 6],
        Ipv4Addr::new(192, 168, 50, 9),
    );
    let mut out = rx(&mut s, 0, &req);
    assert!(out.take(UPLINK).is_empty());
    assert_eq!(out.drops.get(DropReason::LocalNotForUs), 1);
}

#[test]
fn answers_icmp_echo_like_a_host() {
    let (mut s, _) = stack();
    // The pinger ARPs first (smoltcp learns its MAC from the request).
    rx(
        &mut s,
        0,
        &arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP),
    );
    let b = PacketBuilder::ethernet2(PEER_MAC, MAC)
        .ipv4(PEER.octets(), VTEP.octets(), 64)
        .icmpv4_echo_request(0x1234, 7);
    let payload = *b"sluice-ping-payload!";
    let mut ping = Vec::new();
    b.write(&mut ping, &payload).expect("build");
    let mut out = rx(&mut s, 1_000_000, &ping);
    let sent = out.take(UPLINK);
    assert_eq!(sent.len(), 1, "drops {:?}", out.drops.nonzero());
    let p = SlicedPacket::from_ethernet(sent[0].data()).expect("parse reply");
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    assert_eq!(Ipv4Addr::from(ip.header().source()), VTEP);
    assert_eq!(Ipv4Addr::from(ip.header().destination()), PEER);
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
        panic!("not ICMP")
    };
    match icmp.icmp_type() {
        Icmpv4Type::EchoReply(h) => assert_eq!((h.id, h.seq), (0x1234, 7)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(icmp.payload(), &payload);
    assert_eq!(&sent[0].data()[0..6], &PEER_MAC);
    assert_eq!(s.control().stats.rx.get(), 2);
}

/// Issue 18, defect 2: a frame for the VTEP address with a broadcast or
/// multicast MAC that is not an echo request (here TCP, UDP, an ICMP echo
/// reply) used to be handed to smoltcp and freed, counted nowhere. Every
/// one must now end counted.
#[test]
fn broadcast_frames_the_stack_does_not_serve_are_counted() {
    let (mut s, _) = stack();
    let l3 = |dst_mac: [u8; 6]| {
        PacketBuilder::ethernet2(PEER_MAC, dst_mac).ipv4(PEER.octets(), VTEP.octets(), 64)
    };
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for mac in [[0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 1]] {
        let mut f = Vec::new();
        l3(mac)
            .tcp(1000, 80, 1, 1024)
            .write(&mut f, b"")
            .expect("tcp");
        frames.push(f);
        let mut f = Vec::new();
        l3(mac).udp(1000, 53).write(&mut f, b"q").expect("udp");
        frames.push(f);
        let mut f = Vec::new();
        l3(mac)
            .icmpv4_echo_reply(1, 1)
            .write(&mut f, b"x")
            .expect("icmp");
        frames.push(f);
    }
    for (i, f) in frames.iter().enumerate() {
        let mut out = rx(&mut s, i as u64, f);
        let sent = out.take(UPLINK).len();
        let dropped = out.drops.get(DropReason::LocalNotForUs);
        assert_eq!(
            (sent, dropped),
            (0, 1),
            "frame {i} must be counted, not swallowed"
        );
    }
    // A broadcast echo request to the VTEP address is still answered.
    rx(
        &mut s,
        10,
        &arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP),
    );
    let mut ping = Vec::new();
    l3([0xff; 6])
        .icmpv4_echo_request(9, 1)
        .write(&mut ping, b"p")
        .expect("ping");
    let mut out = rx(&mut s, 11, &ping);
    assert_eq!(out.take(UPLINK).len(), 1, "drops {:?}", out.drops.nonzero());
}

#[test]
fn gratuitous_arp_at_start_and_neighbour_resolution_for_tunnels() {
    let (mut s, t) = stack();
    let mut out = Output::new(8);
    // A PMD missed PEER (tunnel encap): asks for resolution.
    let mut reader = t.reader();
    assert_eq!(reader.resolve(PEER), None);
    s.maintain(0, &mut out);
    let sent = out.take(UPLINK);
    assert_eq!(sent.len(), 2, "gratuitous ARP + request");
    let garp = parse_arp(sent[0].data()).expect("garp");
    assert_eq!(garp, (1, MAC, VTEP, [0; 6], VTEP));
    let req = parse_arp(sent[1].data()).expect("request");
    assert_eq!(req, (1, MAC, VTEP, [0; 6], PEER));
    // No second gratuitous ARP; no retransmission before the timer.
    s.maintain(1, &mut out);
    assert!(out.take(UPLINK).is_empty());
    // The reply arrives through the `local` action.
    rx(&mut s, 2, &arp_frame(2, MAC, PEER_MAC, PEER, MAC, VTEP));
    assert_eq!(reader.resolve(PEER), Some(PEER_MAC));
    let c = s.control();
    let dump = sluice_api::Render::render(&c.dump_neighbours());
    assert!(
        dump.contains("192.168.50.2 lladdr 02:bb:00:00:00:02 REACHABLE"),
        "{dump}"
    );
    c.flush_neighbours();
    assert!(c.dump_neighbours().neighbours.is_empty());
    assert_eq!(t.get(PEER), None);
}

#[test]
fn unsolicited_reply_does_not_poison_and_garbage_is_dropped() {
    let (mut s, t) = stack();
    rx(&mut s, 0, &arp_frame(2, MAC, PEER_MAC, PEER, MAC, VTEP));
    assert_eq!(t.get(PEER), None);
    for n in [0usize, 1, 13, 14, 20, 33, 41] {
        let out = rx(&mut s, 0, &vec![0xffu8; n]);
        assert_eq!(out.drops.get(DropReason::LocalNotForUs), 1, "len {n}");
    }
}

#[test]
fn bad_address_is_refused_with_a_sentence() {
    let e = LocalStack::new(
        ToLocal,
        HeapAlloc,
        StackConfig {
            ip: Ipv4Addr::new(224, 0, 0, 1),
            prefix_len: 24,
            mac: MAC,
            uplink: UPLINK,
            mtu: 1500,
        },
        NeighTable::new(),
        NeighConfig::default(),
    )
    .expect_err("refused");
    assert!(e.to_string().contains("cannot be the VTEP address"));
}

#[test]
fn uplink_arp_and_ping_bypass_the_flow_program() {
    // Inner pipeline that forwards everything to port 1 (not LOCAL).
    struct Fwd;
    impl<B: PacketBuf> Pipeline<B> for Fwd {
        fn process(&mut self, _: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
            for p in burst.pkts.drain(..) {
                out.send(PortNo(1), p);
            }
        }
    }
    let mut s = LocalStack::new(
        Fwd,
        HeapAlloc,
        StackConfig {
            ip: VTEP,
            prefix_len: 24,
            mac: MAC,
            uplink: UPLINK,
            mtu: 1500,
        },
        NeighTable::new(),
        NeighConfig::default(),
    )
    .expect("stack");
    let geneve = PacketBuilder::ethernet2(PEER_MAC, MAC)
        .ipv4(PEER.octets(), VTEP.octets(), 64)
        .udp(5000, 6081);
    let mut g = Vec::new();
    geneve.write(&mut g, &[0u8; 30]).expect("build");
    let mut out = Output::new(8);
    let mut b = Burst::new(UPLINK);
    b.pkts.push(HeapBuf::from_frame(&g));
    b.pkts.push(HeapBuf::from_frame(&arp_frame(
        1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP,
    )));
    s.process(0, &mut b, &mut out);
    assert_eq!(
        out.take(PortNo(1)).len(),
        1,
        "Geneve stays with the flow tables"
    );
    assert_eq!(out.take(UPLINK).len(), 1, "ARP answered by the stack");
}

#[test]
fn queued_icmp_answers_go_out_of_their_port() {
    let (mut s, _) = stack();
    let q = Arc::new(ArrayQueue::new(4));
    s.set_icmp_source(q.clone());
    let mut frame = [0u8; crate::tunnel::geneve::ICMP_REPLY_MAX];
    frame[..3].copy_from_slice(&[1, 2, 3]);
    q.push(IcmpReply {
        port: PortNo(5),
        len: 3,
        frame,
    })
    .expect("queue");
    let mut out = Output::new(8);
    let mut b = Burst::new(PortNo(5));
    s.process(0, &mut b, &mut out);
    let sent = out.take(PortNo(5));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].data(), &[1, 2, 3]);
    assert!(q.is_empty());
}

#[test]
fn address_change_is_announced_and_served() {
    let (mut s, _) = stack();
    let mut out = Output::new(8);
    s.maintain(0, &mut out);
    assert_eq!(out.take(UPLINK).len(), 1, "gratuitous ARP at start");
    let new_ip = Ipv4Addr::new(192, 168, 50, 9);
    let c = s.control();
    assert!(c.set_address(Ipv4Addr::UNSPECIFIED, 24).is_err());
    c.set_address(new_ip, 24).expect("set");
    s.maintain(1, &mut out);
    let sent = out.take(UPLINK);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        parse_arp(sent[0].data()),
        Some((1, MAC, new_ip, [0; 6], new_ip)),
        "gratuitous ARP for the new address"
    );
    assert_eq!(c.config.load().ip, new_ip);
    // The new address answers ARP, the old one no longer does.
    let mut out = rx(
        &mut s,
        2,
        &arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], new_ip),
    );
    assert_eq!(out.take(UPLINK).len(), 1);
    let mut out = rx(
        &mut s,
        3,
        &arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP),
    );
    assert!(out.take(UPLINK).is_empty());
}

/// Without an address (sluiced.ini has no VTEP; a node commit brings it)
/// the stack is dormant: nothing is intercepted or answered, nothing is
/// announced, what reaches it is counted; once given an address it serves
/// it.
#[test]
fn a_stack_without_an_address_is_dormant_until_given_one() {
    let t = NeighTable::new();
    let mut s = LocalStack::new(
        ToLocal,
        HeapAlloc,
        StackConfig {
            ip: Ipv4Addr::UNSPECIFIED,
            prefix_len: 24,
            mac: MAC,
            uplink: UPLINK,
            mtu: 1500,
        },
        t,
        NeighConfig::default(),
    )
    .expect("a dormant stack");
    let mut out = Output::new(8);
    s.maintain(0, &mut out);
    assert!(out.take(UPLINK).is_empty(), "no gratuitous ARP for 0.0.0.0");
    let probe = arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], Ipv4Addr::UNSPECIFIED);
    let mut out = rx(&mut s, 1, &probe);
    assert!(out.take(UPLINK).is_empty());
    assert_eq!(out.drops.get(DropReason::LocalNotForUs), 1);
    s.control().set_address(VTEP, 24).expect("set");
    let mut out = Output::new(8);
    s.maintain(2, &mut out);
    assert_eq!(out.take(UPLINK).len(), 1, "announced once given an address");
    let mut out = rx(
        &mut s,
        3,
        &arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP),
    );
    assert_eq!(out.take(UPLINK).len(), 1, "answers ARP for it");
}

/// Issue 15: the VTEP address may also be the node's address on the host
/// port. The stack answers ARP requests and echo requests for it, but the
/// host kernel must still get ARP replies (a copy: the stack learns from
/// its own), TCP (NodePort, ssh), UDP other than Geneve and the ICMP
/// answers to its own pings, through the flow program; Geneve stays with
/// the flow tables for `tnl_pop`.
#[test]
fn vtep_equal_to_the_node_ip_leaves_host_traffic_to_the_flow_program() {
    const HOST: PortNo = PortNo(2);
    /// Like the compiled program for traffic from the uplink to the node
    /// IP: everything to the host port.
    struct ToHost;
    impl<B: PacketBuf> Pipeline<B> for ToHost {
        fn process(&mut self, _: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
            for p in burst.pkts.drain(..) {
                out.send(HOST, p);
            }
        }
    }
    let t = NeighTable::new();
    let mut s = LocalStack::new(
        ToHost,
        HeapAlloc,
        StackConfig {
            ip: VTEP,
            prefix_len: 24,
            mac: MAC,
            uplink: UPLINK,
            mtu: 1500,
        },
        t.clone(),
        NeighConfig::default(),
    )
    .expect("stack");
    // The tunnels want PEER: the stack sends its ARP request.
    let mut reader = t.reader();
    assert_eq!(reader.resolve(PEER), None);
    let mut out = Output::new(8);
    s.maintain(0, &mut out);
    assert_eq!(out.take(UPLINK).len(), 2, "gratuitous ARP + request");

    let l3 = || PacketBuilder::ethernet2(PEER_MAC, MAC).ipv4(PEER.octets(), VTEP.octets(), 64);
    let mut tcp = Vec::new();
    l3().tcp(40000, 30080, 1, 1024)
        .write(&mut tcp, b"")
        .expect("tcp");
    let mut udp = Vec::new();
    l3().udp(5353, 53).write(&mut udp, b"q").expect("udp");
    let mut geneve = Vec::new();
    l3().udp(5000, 6081)
        .write(&mut geneve, &[0u8; 30])
        .expect("geneve");
    let mut echo_reply = Vec::new();
    l3().icmpv4_echo_reply(7, 1)
        .write(&mut echo_reply, b"r")
        .expect("icmp");
    let mut echo_request = Vec::new();
    l3().icmpv4_echo_request(8, 1)
        .write(&mut echo_request, b"q")
        .expect("icmp");
    let arp_reply = arp_frame(2, MAC, PEER_MAC, PEER, MAC, VTEP).to_vec();
    let arp_request = arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP).to_vec();
    let to_host = [&arp_reply, &tcp, &udp, &geneve, &echo_reply];

    let mut b = Burst::new(UPLINK);
    for f in [
        &arp_reply,
        &tcp,
        &arp_request,
        &udp,
        &geneve,
        &echo_request,
        &echo_reply,
    ] {
        b.pkts.push(HeapBuf::from_frame(f));
    }
    let mut out = Output::new(16);
    s.process(1_000_000, &mut b, &mut out);

    let host: Vec<Vec<u8>> = out.take(HOST).iter().map(|p| p.data().to_vec()).collect();
    assert_eq!(
        host,
        to_host.iter().map(|f| f.to_vec()).collect::<Vec<_>>(),
        "the host port gets the ARP reply, TCP, UDP, Geneve (via the flow tables) and the echo reply, in order"
    );
    // The stack learnt PEER from its copy of the reply ...
    assert_eq!(reader.resolve(PEER), Some(PEER_MAC));
    assert_eq!(s.control().stats.arp_replies.get(), 1);
    // ... and answered the ARP request and the echo request (in smoltcp's
    // order).
    let sent = out.take(UPLINK);
    assert_eq!(sent.len(), 2, "drops {:?}", out.drops.nonzero());
    let arp: Vec<_> = sent.iter().filter_map(|p| parse_arp(p.data())).collect();
    assert_eq!(arp, vec![(2, MAC, VTEP, PEER_MAC, PEER)]);
    let echo = sent
        .iter()
        .filter_map(|p| SlicedPacket::from_ethernet(p.data()).ok())
        .filter(|p| {
            matches!(&p.transport, Some(TransportSlice::Icmpv4(i))
                if matches!(i.icmp_type(), Icmpv4Type::EchoReply(h) if h.id == 8))
        })
        .count();
    assert_eq!(echo, 1, "one echo reply");
    assert!(out.drops.nonzero().is_empty(), "{:?}", out.drops.nonzero());
}

/// Issue 18: the neighbour table under a flood. 5,000 ARP requests for
/// the VTEP from distinct senders are each answered (smoltcp's own cache
/// replaces its entries), and PMDs asking to resolve 5,000 next hops fill
/// the cache up to its capacity only: the resolved neighbour stays, the
/// unresolved entries are evicted, oldest first, and `local-stack/show`
/// counts the evictions and the requests the full queue dropped.
#[test]
fn the_neighbour_table_is_bounded_and_counts_a_flood() {
    use crate::ctl::registry::DispatchContext;
    let t = NeighTable::new();
    let mut s = LocalStack::new(
        ToLocal,
        HeapAlloc,
        StackConfig {
            ip: VTEP,
            prefix_len: 16,
            mac: MAC,
            uplink: UPLINK,
            mtu: 1500,
        },
        t.clone(),
        NeighConfig {
            capacity: 64,
            ..NeighConfig::default()
        },
    )
    .expect("stack");
    let mut out = Output::new(8);
    let mut reader = t.reader();
    assert_eq!(reader.resolve(PEER), None);
    s.maintain(0, &mut out);
    out.take(UPLINK);
    rx(&mut s, 1, &arp_frame(2, MAC, PEER_MAC, PEER, MAC, VTEP));
    assert_eq!(reader.resolve(PEER), Some(PEER_MAC));
    let mut answered = 0;
    for i in 0..5_000u32 {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 100, 0)) + i);
        let mac = [2, 0xcc, 0, 0, (i >> 8) as u8, i as u8];
        let mut o = rx(
            &mut s,
            2 + u64::from(i),
            &arp_frame(1, [0xff; 6], mac, ip, [0; 6], VTEP),
        );
        answered += o.take(UPLINK).len();
        // A PMD misses a next hop for every frame.
        assert_eq!(reader.resolve(ip), None);
        if i % 2_000 == 1_999 {
            s.maintain(10_000, &mut out);
            out.take(UPLINK);
            assert!(s.control().lock().len() <= 64, "over capacity");
        }
    }
    assert_eq!(answered, 5_000, "every ARP request answered");
    s.maintain(20_000, &mut out);
    assert_eq!(
        reader.resolve(PEER),
        Some(PEER_MAC),
        "the resolved neighbour stays"
    );
    let r = Registry::new();
    register_commands(&r, &s.control()).expect("register");
    let ctx = DispatchContext { on_exit: &|| {} };
    let show = r
        .dispatch("local-stack/show", &serde_json::json!({}), &ctx)
        .expect("local-stack/show");
    let show: sluice_api::stack::LocalStackReply = serde_json::from_value(show).expect("the reply");
    assert_eq!(show.neigh_entries, 64);
    assert_eq!(show.neigh_refused, 0);
    // 1 resolved + 63 slots: of the 5,000 addresses asked for, those not
    // dropped by the full request queue went through the slots.
    let asked = 5_000 - show.neigh_want_dropped;
    assert_eq!(show.neigh_evicted, asked - 63, "{show:?}");
    assert!(show.neigh_want_dropped > 0, "{show:?}");
}

/// Forwards everything to port 1 (the flow program of the relay tests).
struct ToPort1;
impl<B: PacketBuf> Pipeline<B> for ToPort1 {
    fn process(&mut self, _: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
        for p in burst.pkts.drain(..) {
            out.send(PortNo(1), p);
        }
    }
}

/// Issue 16, point 6: the uplink polled by a PMD other than the stack's.
/// The relay takes the ARP request and the echo request for the VTEP out
/// of its burst, copies the ARP reply to the VTEP and lets it (and Geneve)
/// go on to the flow program, and hands the flow program's `local`
/// packets over too; the stack's PMD, with no traffic of its own, answers
/// from `maintain` on the uplink, and learns the neighbour it asked for.
#[test]
fn a_relay_on_another_pmd_hands_the_stacks_frames_to_it() {
    let t = NeighTable::new();
    let mut owner = LocalStack::new(
        ToPort1,
        HeapAlloc,
        StackConfig {
            ip: VTEP,
            prefix_len: 24,
            mac: MAC,
            uplink: UPLINK,
            mtu: 1500,
        },
        t.clone(),
        NeighConfig::default(),
    )
    .expect("stack");
    let inbox = Arc::new(StackInbox::new(UPLINK));
    owner.set_inbox(inbox.clone());
    let mut relay = StackRelay::new(ToPort1, inbox.clone());
    // The owner starts: gratuitous ARP, and a request for PEER that the
    // tunnels want.
    let mut reader = t.reader();
    assert_eq!(reader.resolve(PEER), None);
    let mut o = Output::new(8);
    owner.maintain(0, &mut o);
    assert_eq!(o.take(UPLINK).len(), 2, "gratuitous ARP + request");

    let geneve = PacketBuilder::ethernet2(PEER_MAC, MAC)
        .ipv4(PEER.octets(), VTEP.octets(), 64)
        .udp(5000, 6081);
    let mut g = Vec::new();
    geneve.write(&mut g, &[0u8; 30]).expect("build");
    let b = PacketBuilder::ethernet2(PEER_MAC, MAC)
        .ipv4(PEER.octets(), VTEP.octets(), 64)
        .icmpv4_echo_request(0x99, 1);
    let mut ping = Vec::new();
    b.write(&mut ping, b"relayed").expect("build");
    let arp_req = arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP).to_vec();
    let arp_reply = arp_frame(2, MAC, PEER_MAC, PEER, MAC, VTEP).to_vec();
    let mut r = Output::new(8);
    let mut burst = Burst::new(UPLINK);
    for f in [&g, &arp_req, &ping, &arp_reply] {
        burst.pkts.push(HeapBuf::from_frame(f));
    }
    relay.process(1, &mut burst, &mut r);
    let passed: Vec<Vec<u8>> = r
        .take(PortNo(1))
        .iter()
        .map(|p| p.data().to_vec())
        .collect();
    assert_eq!(
        passed,
        vec![g.clone(), arp_reply.clone()],
        "Geneve and the ARP reply go on, in order"
    );
    assert!(
        r.take(UPLINK).is_empty(),
        "the relay answers nothing itself"
    );
    assert_eq!(r.drops.total(), 0);
    assert_eq!(inbox.len(), 3, "ARP request, echo request, ARP reply copy");
    // A packet the relay's flow program sends to `local`: handed over.
    let mut burst = Burst::new(PortNo(1));
    burst.pkts.push(HeapBuf::from_frame(&g));
    struct ToLocalOnce;
    impl<B: PacketBuf> Pipeline<B> for ToLocalOnce {
        fn process(&mut self, _: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
            for p in burst.pkts.drain(..) {
                out.send(PortNo::LOCAL, p);
            }
        }
    }
    let mut relay_local = StackRelay::new(ToLocalOnce, inbox.clone());
    relay_local.process(1, &mut burst, &mut r);
    assert!(
        r.local.is_empty(),
        "nothing left for pmd.rs to drop as local_no_stack"
    );
    assert_eq!(inbox.len(), 4);

    // The owner, with no burst of its own, serves them from `maintain`.
    let mut o = Output::new(8);
    owner.maintain(2_000_000, &mut o);
    assert!(inbox.is_empty());
    let sent = o.take(UPLINK);
    let mut arp_answered = false;
    let mut echo_answered = false;
    for p in &sent {
        if parse_arp(p.data()) == Some((2, MAC, VTEP, PEER_MAC, PEER)) {
            arp_answered = true;
        }
        if let Ok(s) = SlicedPacket::from_ethernet(p.data()) {
            if let Some(TransportSlice::Icmpv4(icmp)) = &s.transport {
                if let Icmpv4Type::EchoReply(h) = icmp.icmp_type() {
                    echo_answered = (h.id, h.seq) == (0x99, 1);
                }
            }
        }
    }
    assert!(
        arp_answered && echo_answered,
        "answers on the uplink: {sent:?}"
    );
    assert_eq!(
        reader.resolve(PEER),
        Some(PEER_MAC),
        "the relayed reply was learnt"
    );
    // The Geneve frame the relay's program sent to `local` is not the
    // stack's: counted, as on the stack's own PMD.
    assert_eq!(o.drops.get(DropReason::LocalNotForUs), 1);
    let st = owner.control().stats.clone();
    assert_eq!(st.relayed.get(), 4);
}

/// A full inbox drops what does not fit, counted on the relaying PMD.
#[test]
fn a_full_inbox_drops_and_counts() {
    let inbox = Arc::new(StackInbox::new(UPLINK));
    inbox.set_ip(VTEP);
    let mut relay = StackRelay::new(ToPort1, inbox.clone());
    let arp_req = arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP);
    let mut r = Output::new(8);
    for _ in 0..INBOX_FRAMES + 5 {
        let mut burst = Burst::new(UPLINK);
        burst.pkts.push(HeapBuf::from_frame(&arp_req));
        relay.process(0, &mut burst, &mut r);
    }
    assert_eq!(inbox.len(), INBOX_FRAMES);
    assert_eq!(r.drops.get(DropReason::LocalInboxFull), 5);
    assert!(r.take(PortNo(1)).is_empty());
}

/// A dormant stack (no address yet): the relay intercepts nothing.
#[test]
fn a_relay_of_a_dormant_stack_intercepts_nothing() {
    let inbox = Arc::new(StackInbox::new(UPLINK));
    let mut relay = StackRelay::new(ToPort1, inbox.clone());
    let mut r = Output::new(8);
    let mut burst = Burst::new(UPLINK);
    burst.pkts.push(HeapBuf::from_frame(&arp_frame(
        1, [0xff; 6], PEER_MAC, PEER, [0; 6], VTEP,
    )));
    relay.process(0, &mut burst, &mut r);
    assert_eq!(r.take(PortNo(1)).len(), 1);
    assert!(inbox.is_empty());
}
