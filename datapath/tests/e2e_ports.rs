//! End to end: pod ports added and deleted through the control socket
//! (`port-add`, `port-del`) while sluiced forwards. sluiced starts with an
//! uplink-less configuration holding only a stream sink (`net_null` with
//! `no-rx`: takes everything, receives nothing); once the stream's rule is
//! in place, the stream source is added at run time too (`net_null`: it
//! delivers packets as fast as the PMD polls). Two pod namespaces behind veth pairs are added at run
//! time, ping each other, one is deleted (ping stops, it disappears from
//! `dump-ports` and `pmd-rxq-show`) and added again. The stream's loss is
//! measured by port counters: every packet the source delivered left
//! through the sink.

mod common;

use std::time::Instant;

use common::*;
use sluice_api::pmd::{PmdRxqReply, PmdRxqShow};
use sluice_api::ports::{
    DumpPorts, DumpPortsRequest, PodDriver, PortAdd, PortAddRequest, PortDel, PortDelRequest,
    PortDump, PortKind,
};
use sluice_api::{Client, ClientError, Empty, ErrorCode};

const PREFIX: &str = "slt-rp";

fn client() -> Client {
    let mut c = Client::connect(ctl_path(PREFIX)).expect("connect to sluiced's control socket");
    c.set_timeout(Some(WAIT)).expect("timeout");
    c
}

fn text(c: &mut Client, cmd: &str, args: &[&str]) -> String {
    c.call_text(cmd, args)
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

fn ports(c: &mut Client) -> PortDump {
    c.call::<DumpPorts>(&DumpPortsRequest::default())
        .expect("dump-ports")
}

fn rx_of(d: &PortDump, name: &str) -> u64 {
    d.ports
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.stats.rx_packets)
        .unwrap_or_else(|| panic!("no port {name} in {d:?}"))
}

/// The stream source's rx counter, once it moved past `after` (bounded
/// wait: the stream never stops, so this proves it still forwards).
fn stream_moves(c: &mut Client, after: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = rx_of(&ports(c), "src");
        if n > after {
            return n;
        }
        assert!(Instant::now() < deadline, "the stream stopped at {n}");
        std::thread::yield_now();
    }
}

fn add(c: &mut Client, name: &str, iface: &str) -> Result<u16, ClientError> {
    c.call::<PortAdd>(&PortAddRequest {
        name: name.into(),
        ofport: None,
        kind: PortKind::Pod {
            iface: iface.into(),
            driver: None,
        },
        rx_queues: 1,
    })
    .map(|r| {
        assert_eq!(r.driver, "net_af_packet", "{r:?}");
        assert_eq!(PodDriver::DEFAULT, PodDriver::AfPacket);
        r.ofport
    })
}

fn code(r: Result<u16, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Api(e)) => e.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rxq_names(c: &mut Client) -> Vec<(String, String)> {
    let r: PmdRxqReply = c.call::<PmdRxqShow>(&Empty {}).expect("pmd-rxq-show");
    r.pmds
        .iter()
        .flat_map(|p| p.queues.iter().map(|q| (q.port.clone(), q.kind.clone())))
        .collect()
}

#[test]
fn pod_ports_added_and_deleted_while_a_stream_forwards() {
    let Some(pods) = two_pods(
        "pod_ports_added_and_deleted_while_a_stream_forwards",
        "slt-rp",
        "slt-rp",
        "10.203.0",
    ) else {
        return;
    };
    let (node, a, b) = (&pods.node, &pods.a, &pods.b);
    let (d, ready) = Sluiced::start_in(
        node,
        &config(PREFIX, "[port:sink]\ndevargs = net_null0,no-rx=1\n"),
    );
    assert_eq!(ready["ports"].as_array().map(Vec::len), Some(1), "{ready}");
    let mut c = client();
    // The stream: src (2) -> sink (1), in place before src exists; the
    // rest drops unless a rule below says otherwise (nothing floods into
    // the sink).
    text(&mut c, "del-flows", &[]);
    text(
        &mut c,
        "add-flow",
        &["priority=100,in_port=2 actions=output:1"],
    );
    text(&mut c, "add-flow", &["priority=0 actions=drop"]);
    let src = c
        .call::<PortAdd>(&PortAddRequest {
            name: "src".into(),
            ofport: None,
            kind: PortKind::Devargs {
                devargs: "net_null_src".into(),
            },
            rx_queues: 1,
        })
        .expect("port-add src");
    assert_eq!(
        (src.ofport, src.driver.as_str()),
        (2, "net_null"),
        "{src:?}"
    );
    let mut seen = stream_moves(&mut c, 0);

    // Add both pods while the stream runs.
    let pa = add(&mut c, "pod-a", "slt-rpa-o").expect("port-add pod-a");
    seen = stream_moves(&mut c, seen);
    let pb = add(&mut c, "pod-b", "slt-rpb-o").expect("port-add pod-b");
    seen = stream_moves(&mut c, seen);
    assert_eq!((pa, pb), (3, 4), "the lowest free numbers");
    for (i, o) in [(pa, pb), (pb, pa)] {
        text(
            &mut c,
            "add-flow",
            &[&format!("priority=10,in_port={i} actions=output:{o}")],
        );
    }
    a.assert_ping("10.203.0.2");
    b.assert_ping("10.203.0.1");
    let d1 = ports(&mut c);
    let pod_b = d1
        .ports
        .iter()
        .find(|p| p.name == "pod-b")
        .expect("pod-b listed");
    assert_eq!(
        (pod_b.kind.as_str(), pod_b.rx_queues),
        ("pod", 1),
        "{pod_b:?}"
    );
    assert!(pod_b.stats.rx_packets >= 3, "{pod_b:?}");
    assert!(rxq_names(&mut c).contains(&("pod-b".into(), "pod".into())));
    assert!(text(&mut c, "dump-ports", &[]).contains("kind pod, 1 rx queue(s) polled by pmd 0"));
    // node-status: this instance, no generation committed yet, the pods
    // forwarding.
    let st = c
        .call::<sluice_api::node::QueryNodeStatus>(&Empty {})
        .expect("node-status");
    assert_eq!(st.generation, 0);
    assert_eq!(st.instance_id.len(), 36, "a UUID: {st:?}");
    assert!(
        st.ports["pod-a"].forwarding && st.ports["pod-b"].forwarding,
        "{st:?}"
    );
    assert_eq!(st.ports["pod-b"].ofport, 4);
    // The contract: sluiced serves every method sluice-api defines, under
    // its name and its OVS aliases.
    let served: Vec<String> = c
        .call::<sluice_api::system::ListCommands>(&Empty {})
        .expect("list-commands")
        .commands
        .into_iter()
        .map(|c| c.name)
        .collect();
    for (name, aliases) in sluice_api::all_methods() {
        for n in std::iter::once(name).chain(aliases.iter().copied()) {
            assert!(served.iter().any(|s| s == n), "sluiced does not serve {n}");
        }
    }
    // Without a VTEP there is no local stack: its methods say so.
    let e = c
        .call::<sluice_api::stack::DumpNeighbours>(&Empty {})
        .expect_err("no local stack here");
    assert!(
        matches!(&e, ClientError::Api(e) if e.code == ErrorCode::Unavailable && e.message.contains("vtep_ip")),
        "{e}"
    );

    // Port security on pod-b (its own MAC and IP: traffic still passes).
    let mac = String::from_utf8_lossy(&b.exec(&["cat", "/sys/class/net/slt-rpb-i/address"]).stdout)
        .trim()
        .to_string();
    text(&mut c, "set-port-security", &["4", &mac, "10.203.0.2"]);
    a.assert_ping("10.203.0.2");
    assert!(text(&mut c, "dump-port-security", &[]).contains("port 4: mac"));

    // Refusals, with their codes; nothing changes.
    assert_eq!(
        code(add(&mut c, "pod-a", "slt-rpb-o")),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code(add(&mut c, "pod-x", "slt-rp-none")),
        ErrorCode::NotFound
    );
    let taken = c.call::<PortAdd>(&PortAddRequest {
        name: "pod-y".into(),
        ofport: Some(1),
        kind: PortKind::Devargs {
            devargs: "net_null9".into(),
        },
        rx_queues: 1,
    });
    assert_eq!(code(taken.map(|r| r.ofport)), ErrorCode::AlreadyExists);
    let bad = c.call::<PortAdd>(&PortAddRequest {
        name: "pod-z".into(),
        ofport: None,
        kind: PortKind::Devargs {
            devargs: "net_nosuchdriver0".into(),
        },
        rx_queues: 1,
    });
    assert_eq!(code(bad.map(|r| r.ofport)), ErrorCode::Failed);

    // Delete pod-b: its in_port rule goes with it, the rule that outputs
    // to it stays (and drops).
    let del = c
        .call::<PortDel>(&PortDelRequest {
            port: "pod-b".into(),
        })
        .expect("port-del pod-b");
    assert_eq!((del.ofport, del.flows_removed), (4, 1), "{del:?}");
    seen = stream_moves(&mut c, seen);
    a.assert_no_ping("10.203.0.2");
    assert!(ports(&mut c).ports.iter().all(|p| p.name != "pod-b"));
    assert!(rxq_names(&mut c).iter().all(|(n, _)| n != "pod-b"));
    assert!(!text(&mut c, "dump-flows", &[]).contains("in_port=4"));
    let ps = text(&mut c, "dump-port-security", &[]);
    assert!(
        !ps.contains("port 4:"),
        "pod-b's binding and counters stay: {ps}"
    );
    let e = c
        .call::<PortDel>(&PortDelRequest {
            port: "pod-b".into(),
        })
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api(e) if e.code == ErrorCode::NotFound),
        "{e}"
    );

    // Re-add: it takes number 4 again, with fresh counters.
    let pb2 = add(&mut c, "pod-b", "slt-rpb-o").expect("port-add pod-b again");
    assert_eq!(pb2, 4);
    text(
        &mut c,
        "add-flow",
        &["priority=10,in_port=4 actions=output:3"],
    );
    a.assert_ping("10.203.0.2");
    seen = stream_moves(&mut c, seen);
    assert!(seen > 0);

    let ev = d.stop();
    let (sent, got) = (
        port_stat(&ev, "src", "rx_packets"),
        port_stat(&ev, "sink", "tx_packets"),
    );
    assert!(sent >= seen, "{ev}");
    assert_eq!(
        sent, got,
        "stream packets lost across the adds and deletes: {ev}"
    );
    println!(
        "stream: {sent} packets delivered by src, {got} sent by sink, across 4 adds and 1 delete"
    );
}
