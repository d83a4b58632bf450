//! A `sluiced` control socket for end-to-end tests: the real
//! [`CtlServer`] in a temporary directory, serving the real flow, conntrack,
//! Service, tunnel, neighbour and port-security methods of
//! `sluice-datapath` (built without DPDK), and recording stand-ins for the
//! methods that need DPDK devices and PMD threads (ports, PMD statistics,
//! capture), which record their typed requests and answer fixed replies.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sluice_api::{pmd, ports, Empty, Method};
use sluice_datapath::conntrack::{Conntrack, ConntrackConfig};
use sluice_datapath::ctl::typed::{register, register_builtins};
use sluice_datapath::ctl::{CtlServer, Registry, ServerConfig};
use sluice_datapath::flow::tables::FlowTables;
use sluice_datapath::service::{ServiceConfig, Services};
use sluice_datapath::stack::overlay::{Overlay, OverlayConfig};

/// One recorded request of a stand-in: method name and typed request as
/// JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Call(pub String, pub Value);

/// A running test server; stops and cleans up on drop.
pub struct TestDaemon {
    pub server: CtlServer,
    pub registry: Registry,
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub flows: FlowTables,
    dir: tempfile::TempDir,
}

/// Serves `M` with a handler that records the request and answers `reply`.
fn stand_in<M: Method>(reg: &Registry, calls: &Arc<Mutex<Vec<Call>>>, reply: M::Reply)
where
    M::Reply: Clone + Sync,
{
    let calls = calls.clone();
    register::<M>(reg, move |request| {
        calls.lock().unwrap().push(Call(
            M::NAME.to_owned(),
            serde_json::to_value(&request).unwrap(),
        ));
        Ok(reply.clone())
    })
    .expect("register stand-in");
}

fn sample_ports() -> ports::PortDump {
    ports::PortDump {
        bridge: "br-int".into(),
        ports: vec![ports::PortInfo {
            name: "uplink".into(),
            ofport: 1,
            driver: "net_null".into(),
            devargs: "net_null0".into(),
            link: ports::LinkState {
                up: true,
                speed_mbps: 10000,
                full_duplex: true,
            },
            stats: ports::PortCounters {
                rx_packets: 5,
                ..Default::default()
            },
            ..Default::default()
        }],
    }
}

impl TestDaemon {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let registry = Registry::with_version("sluiced (Sluice) e2e");
        register_builtins(&registry).unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        // The real features.
        let flows = FlowTables::new();
        sluice_datapath::flow::commands::register_flows(&registry, flows.clone(), None).unwrap();
        let services = Services::new(ServiceConfig::default());
        let ct = Conntrack::with_services(ConntrackConfig::default(), services.clone());
        sluice_datapath::conntrack::commands::register_commands(&registry, ct.clone(), || 0)
            .unwrap();
        sluice_datapath::service::commands::register_commands(&registry, services, Some(ct))
            .unwrap();
        let mut oc = OverlayConfig::default();
        oc.set("vtep_ip", "192.168.50.1/24").unwrap();
        let uplink = sluice_datapath::packet::PortNo(1);
        let mut overlay = Overlay::new(&oc, 1, Some((uplink, [2, 0, 0, 0, 0, 1])));
        // PMD 0's pipeline carries the local stack (and its neighbour
        // commands); it is never polled here.
        let pipeline = sluice_datapath::pipeline::l2::L2Pipeline::new(vec![uplink], 16, 0);
        let _pmd0 = overlay
            .wrap(0, pipeline, sluice_datapath::packet::HeapAlloc)
            .unwrap();
        overlay.register_commands(&registry).unwrap();
        // Stand-ins for what needs DPDK.
        stand_in::<ports::DumpPorts>(&registry, &calls, sample_ports());
        stand_in::<pmd::PmdStatsShow>(
            &registry,
            &calls,
            pmd::PmdStatsReply {
                pmds: vec![pmd::PmdStats {
                    index: 0,
                    core: Some(1),
                    rx_packets: 10,
                    flow_pipeline: true,
                    ..Default::default()
                }],
            },
        );
        stand_in::<pmd::PmdStatsClear>(&registry, &calls, Empty {});
        stand_in::<pmd::PmdRxqShow>(
            &registry,
            &calls,
            pmd::PmdRxqReply {
                pmds: vec![pmd::PmdRxqs {
                    index: 0,
                    core: Some(1),
                    queues: vec![pmd::RxQueue {
                        port: "uplink".into(),
                        ofport: 1,
                        queue: 0,
                        ..Default::default()
                    }],
                }],
            },
        );
        stand_in::<pmd::DumpCache>(
            &registry,
            &calls,
            pmd::CacheDump {
                pmds: vec!["emc: 0 entries\n".into()],
            },
        );
        stand_in::<ports::Capture>(&registry, &calls, ports::CaptureStarted::default());
        stand_in::<ports::CaptureStop>(&registry, &calls, ports::CaptureStopped::default());
        stand_in::<ports::CaptureStatus>(&registry, &calls, ports::CaptureProgress::default());
        stand_in::<sluice_api::node::QueryNodeStatus>(
            &registry,
            &calls,
            sluice_api::node::NodeStatus {
                instance_id: "00000000-0000-4000-8000-000000000001".into(),
                ..Default::default()
            },
        );
        // Text-only commands for the raw `call` path.
        registry
            .register(
                "echo",
                "[ARG...]",
                0,
                4,
                Arc::new(|args: &[String]| Ok(format!("echo({})", args.join("|")))),
            )
            .unwrap();
        registry
            .register(
                "fail",
                "",
                0,
                0,
                Arc::new(|_: &[String]| Err("flow table 3 is full\nremove flows first".into())),
            )
            .unwrap();
        let config = ServerConfig::with_path(dir.path().join("run/sluiced.ctl"));
        let server = CtlServer::start(config, registry.clone(), || {}).expect("start ctl server");
        Self {
            server,
            registry,
            calls,
            flows,
            dir,
        }
    }

    pub fn socket(&self) -> &Path {
        self.server.path()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn last_call(&self) -> Option<Call> {
        self.calls.lock().unwrap().last().cloned()
    }

    pub fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

/// `text` without the parts of a dump that move with time
/// (`duration=…s, ` and `idle_age=…, ` of flow dumps), so two dumps taken
/// one after the other compare equal.
pub fn timeless(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = ["duration=", "idle_age="]
            .iter()
            .filter_map(|k| rest.find(k))
            .min();
        let Some(at) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match rest.find(", ") {
            Some(end) => rest = &rest[end + 2..],
            None => rest = "",
        }
    }
}

/// Prints a skip line and appends it to `target/tmp/skips.txt`, which
/// scripts/test.sh prints at the end (a skip is never silent).
#[allow(dead_code)]
pub fn report_skip(line: &str) {
    sluice_testkit::record_skip(env!("CARGO_TARGET_TMPDIR"), line);
}
