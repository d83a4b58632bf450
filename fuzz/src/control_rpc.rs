//! Target `control_rpc`: the control socket's JSON-RPC framing, the unixctl
//! registry's dispatch, and every sluice-api method's parameters (serde of
//! each `Request`, and `FromArgs` of its text form).
//!
//! The input is a byte stream as a client would send it; its first byte
//! chooses how the stream is cut into reads. Each read goes to a
//! `Framer` (the server's limits, scaled down), and each complete frame is
//! handled as the server's `handle_frame` does: `RawRequest::parse`,
//! `validate`, `Registry::dispatch_raw`, reply encoding. The registry
//! serves every method of `sluice_api::all_methods()` (checked) through
//! `sluice_datapath::ctl::typed::register`, with a handler that checks the
//! decoded request and answers with an error.
//!
//! Invariants: nothing panics; cutting the stream differently gives the
//! same frames and the same framing error; every frame gets exactly one
//! reply that is valid JSON with the request's id; `dispatch_raw` on the
//! raw text answers what `dispatch` answers on the decoded request; every
//! request a method accepts serialises and deserialises back to itself.

use std::cell::RefCell;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use sluice_api::{ApiError, Method};
use sluice_datapath::ctl::registry::{DispatchContext, Registry};
use sluice_datapath::ctl::typed::{register, register_builtins};
use sluice_jsonrpc::unixctl::protocol::{encode_reply, RawRequest, Request};
use sluice_jsonrpc::{FrameError, Framer, Limits};

/// The reply every fuzzed method gives once its request is checked.
const ANSWER: &str = "fuzz: request decoded";

/// Checks that `r` survives a JSON round trip unchanged.
fn round_trips<R: Serialize + DeserializeOwned>(name: &str, r: &R) {
    let v = serde_json::to_value(r)
        .unwrap_or_else(|e| panic!("{name}: a decoded request does not serialise: {e}"));
    let back: R = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{name}: the serialised request {v} does not deserialise: {e}"));
    let again = serde_json::to_value(&back).expect("serialises");
    assert_eq!(v, again, "{name}: request changed in a JSON round trip");
}

fn add<M: Method>(reg: &Registry) {
    register::<M>(reg, |r: M::Request| {
        round_trips(M::NAME, &r);
        Err(ApiError::failed(ANSWER))
    })
    .unwrap_or_else(|e| panic!("register {}: {e}", M::NAME));
}

/// A registry serving every sluice-api method.
fn registry() -> Registry {
    use sluice_api::*;
    let reg = Registry::new();
    register_builtins(&reg).expect("built-ins");
    add::<flows::AddFlow>(&reg);
    add::<flows::AddFlows>(&reg);
    add::<flows::ReplaceFlows>(&reg);
    add::<flows::AddGroup>(&reg);
    add::<flows::DelFlows>(&reg);
    add::<flows::ModFlows>(&reg);
    add::<flows::DumpFlows>(&reg);
    add::<flows::DumpGroups>(&reg);
    add::<flows::FlowBundle>(&reg);
    add::<flows::Trace>(&reg);
    add::<pmd::PmdStatsShow>(&reg);
    add::<pmd::PmdStatsClear>(&reg);
    add::<pmd::PmdRxqShow>(&reg);
    add::<pmd::DumpCache>(&reg);
    add::<ports::DumpPorts>(&reg);
    add::<ports::PortAdd>(&reg);
    add::<ports::PortDel>(&reg);
    add::<ports::Capture>(&reg);
    add::<ports::CaptureStop>(&reg);
    add::<ports::CaptureStatus>(&reg);
    add::<conntrack::DumpConntrack>(&reg);
    add::<conntrack::FlushConntrack>(&reg);
    add::<conntrack::ConntrackStats>(&reg);
    add::<service::UpdateServices>(&reg);
    add::<service::DumpServices>(&reg);
    add::<service::LbTrace>(&reg);
    add::<tunnel::DumpTunnels>(&reg);
    add::<tunnel::AddVtep>(&reg);
    add::<tunnel::DelVtep>(&reg);
    add::<tunnel::TunnelTrace>(&reg);
    add::<tunnel::TunnelMtu>(&reg);
    add::<tunnel::SetVtep>(&reg);
    add::<stack::DumpNeighbours>(&reg);
    add::<stack::FlushNeighbours>(&reg);
    add::<stack::NeighSet>(&reg);
    add::<stack::NeighDel>(&reg);
    add::<stack::LocalStackShow>(&reg);
    add::<stack::DumpPortSecurity>(&reg);
    add::<stack::SetPortSecurity>(&reg);
    add::<stack::DelPortSecurity>(&reg);
    add::<node::NodeCommit>(&reg);
    add::<node::QueryNodeStatus>(&reg);
    add::<node::QueryNodeProgram>(&reg);
    add::<pmd::PmdPerfShow>(&reg);
    add::<handover::HandoverPrepare>(&reg);
    add::<handover::HandoverRelease>(&reg);
    add::<handover::HandoverCommit>(&reg);
    add::<handover::QueryRestartReport>(&reg);
    let names = reg.command_names();
    for (name, aliases) in all_methods() {
        for n in std::iter::once(name).chain(aliases.iter().copied()) {
            assert!(
                names.iter().any(|x| x == n),
                "the fuzz registry does not serve '{n}': add its method to control_rpc::registry"
            );
        }
    }
    reg
}

thread_local! {
    static REGISTRY: Registry = registry();
    static EXITS: RefCell<u64> = const { RefCell::new(0) };
}

/// The server's limits, scaled down so the fuzzer reaches them.
const LIMITS: Limits = Limits {
    max_message_bytes: 4096,
    max_depth: 16,
};

/// Splits `stream` into frames, pushing it in reads of `chunk` bytes.
fn frames(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut framer = Framer::with_limits(LIMITS);
    let mut out = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        framer.push(piece);
        loop {
            match framer.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

/// Handles one frame as the control server does; returns the reply's id
/// and outcome.
fn handle_frame(reg: &Registry, frame: &[u8]) -> (Value, Result<Value, String>) {
    let ctx = DispatchContext {
        on_exit: &|| EXITS.with(|e| *e.borrow_mut() += 1),
    };
    let raw = match RawRequest::parse(frame) {
        Ok(Some(raw)) => raw,
        Ok(None) => return (Value::Null, Err("message is not a JSON object\n".into())),
        Err(e) => {
            return (
                Value::Null,
                Err(format!("malformed JSON in request: {e}\n")),
            )
        }
    };
    let mut decode = |raw: &RawValue| -> Result<Value, String> {
        serde_json::from_str(raw.get()).map_err(|e| format!("malformed JSON in request: {e}"))
    };
    let request = match raw.validate(&mut decode) {
        Ok(r) => r,
        Err((id, message)) => return (id, Err(format!("{message}\n"))),
    };
    let outcome = reg.dispatch_raw(&request.method, request.params, &ctx, &mut decode);
    // The decoded path must answer the same.
    if let Ok(value) = serde_json::from_slice::<Value>(frame) {
        match Request::from_value(value) {
            Ok(req) => {
                assert_eq!(req.method, request.method, "method differs");
                assert_eq!(req.id, request.id, "id differs");
                let decoded = reg.dispatch(&req.method, &req.params, &ctx);
                assert_eq!(
                    outcome,
                    decoded,
                    "dispatch_raw and dispatch disagree on {}",
                    String::from_utf8_lossy(frame)
                );
            }
            Err((id, e)) => panic!(
                "RawRequest accepted what Request refuses ({id}: {e}): {}",
                String::from_utf8_lossy(frame)
            ),
        }
    }
    (request.id, outcome)
}

#[derive(serde::Deserialize)]
struct ReplyId<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
}

/// Feeds `data` to the control socket's request path.
pub fn run(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let (whole, whole_err) = frames(stream, stream.len());
    let (cut_frames, cut_err) = frames(stream, cut as usize % 64 + 1);
    assert_eq!(whole, cut_frames, "frames depend on how the stream is cut");
    assert_eq!(whole_err, cut_err, "framing error depends on the cut");
    REGISTRY.with(|reg| {
        for f in &whole {
            let (id, outcome) = handle_frame(reg, f);
            let reply = encode_reply(&id, &outcome);
            let v: Value = serde_json::from_slice(&reply).unwrap_or_else(|e| {
                panic!(
                    "reply is not JSON ({e}): {}",
                    String::from_utf8_lossy(&reply)
                )
            });
            // The id's text, not its decoded value: serde_json's default
            // float parser is not exact, so decoding would compare two
            // roundings rather than what was sent.
            let raw: ReplyId<'_> = serde_json::from_slice(&reply).expect("a reply object");
            assert_eq!(
                raw.id.get(),
                serde_json::to_string(&id).expect("an id encodes"),
                "reply carries another id"
            );
            match &outcome {
                Ok(result) => {
                    assert_eq!(&v["result"], result, "reply result differs");
                    assert!(v["error"].is_null(), "a result with an error: {v}");
                }
                Err(message) => {
                    assert_eq!(
                        v["error"],
                        Value::String(message.clone()),
                        "reply error differs"
                    );
                    assert!(v["result"].is_null(), "an error with a result: {v}");
                }
            }
        }
    });
}
