//! The flow program: OpenFlow-style flows and groups in `ovs-ofctl` text,
//! atomic bundles, dumps with counters, and trace.
//!
//! Flow and group texts stay text on the wire: `ovs-ofctl`'s syntax is the
//! operators' language and `sluiced` parses it (with precise errors) in
//! one place.

use serde::{Deserialize, Serialize};

use crate::{args, method, ApiError, FromArgs, Render, Text};

/// What a flow change did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleSummary {
    /// Rules added (including replacements).
    pub added: usize,
    /// Rules modified.
    pub modified: usize,
    /// Rules deleted.
    pub deleted: usize,
    /// Groups added, replaced or deleted.
    pub groups: usize,
}

impl Render for BundleSummary {
    fn render(&self) -> String {
        format!(
            "added {}, modified {}, deleted {}, groups {}\n",
            self.added, self.modified, self.deleted, self.groups
        )
    }
}

/// One flow (`add-flow`) or group (`group_id=...`, `add-group`) in
/// `ovs-ofctl` syntax.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowText {
    /// The text, e.g. `table=0,priority=10,ip,actions=output:2`.
    pub flow: String,
}

impl FromArgs for FlowText {
    fn from_args(args: &[String]) -> Result<Self, ApiError> {
        Ok(FlowText {
            flow: args.first().cloned().unwrap_or_default(),
        })
    }
}

/// Many flows and groups, one per line (`#` comments and blank lines
/// ignored), applied as one bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowLines {
    /// The lines.
    pub flows: String,
}

impl FromArgs for FlowLines {
    fn from_args(args: &[String]) -> Result<Self, ApiError> {
        Ok(FlowLines {
            flows: args.first().cloned().unwrap_or_default(),
        })
    }
}

/// `del-flows`: the flows matching `filter` (all if empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelFlowsRequest {
    /// Match priority and fields exactly instead of as a wildcard.
    #[serde(default)]
    pub strict: bool,
    /// The match, e.g. `table=0,ip,nw_dst=10.0.0.1`.
    #[serde(default)]
    pub filter: String,
}

impl FromArgs for DelFlowsRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let (strict, rest) = args::strict_flag(a);
        if rest.len() > 1 {
            return Err(ApiError::invalid(
                "del-flows takes at most one MATCH (besides --strict)",
            ));
        }
        Ok(DelFlowsRequest {
            strict,
            filter: rest.first().map(|s| s.to_string()).unwrap_or_default(),
        })
    }
}

/// `mod-flows`: new actions for the flows matching `flow`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModFlowsRequest {
    /// Match priority and fields exactly instead of as a wildcard.
    #[serde(default)]
    pub strict: bool,
    /// The flow with its new actions.
    pub flow: String,
}

impl FromArgs for ModFlowsRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let (strict, rest) = args::strict_flag(a);
        match rest.as_slice() {
            [flow] => Ok(ModFlowsRequest {
                strict,
                flow: flow.to_string(),
            }),
            _ => Err(ApiError::invalid("mod-flows needs exactly one FLOW")),
        }
    }
}

/// `dump-flows`: the flows selected (loosely) by `filter` (`table=N`
/// and/or a match; all if empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpFlowsRequest {
    /// The filter text.
    #[serde(default)]
    pub filter: String,
}

impl FromArgs for DumpFlowsRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        // `ovs-ofctl dump-flows br table=0 ip` style: the parts are one
        // filter.
        Ok(DumpFlowsRequest {
            filter: a.join(","),
        })
    }
}

/// One flow with its counters, as `dump-flows` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEntry {
    /// Table number.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Cookie.
    pub cookie: u64,
    /// Packets that hit the flow.
    pub n_packets: u64,
    /// Bytes that hit the flow.
    pub n_bytes: u64,
    /// Milliseconds since the flow was added.
    pub duration_ms: u64,
    /// Seconds since the flow last matched (or was added).
    pub idle_age_s: u64,
    /// `idle_timeout` in seconds (0: none).
    pub idle_timeout: u16,
    /// `hard_timeout` in seconds (0: none).
    pub hard_timeout: u16,
    /// The match in `ovs-ofctl` syntax (empty: everything).
    #[serde(rename = "match")]
    pub match_: String,
    /// The actions in `ovs-ofctl` syntax.
    pub actions: String,
}

impl FlowEntry {
    /// The `ovs-ofctl dump-flows` line, without the newline.
    pub fn line(&self) -> String {
        let mut out = format!(
            " cookie={:#x}, duration={}.{:03}s, table={}, n_packets={}, n_bytes={}, ",
            self.cookie,
            self.duration_ms / 1000,
            self.duration_ms % 1000,
            self.table,
            self.n_packets,
            self.n_bytes
        );
        if self.idle_timeout != 0 {
            out += &format!("idle_timeout={}, ", self.idle_timeout);
        }
        if self.hard_timeout != 0 {
            out += &format!("hard_timeout={}, ", self.hard_timeout);
        }
        out += &format!("idle_age={}, priority={}", self.idle_age_s, self.priority);
        if !self.match_.is_empty() {
            out.push(',');
            out.push_str(&self.match_);
        }
        out += &format!(" actions={}", self.actions);
        out
    }
}

/// `dump-flows` reply: flows in table, then priority order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowDump {
    /// The flows.
    pub flows: Vec<FlowEntry>,
}

impl Render for FlowDump {
    fn render(&self) -> String {
        self.flows.iter().map(|f| f.line() + "\n").collect()
    }
}

/// `dump-groups` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDump {
    /// Each group in `add-group` syntax.
    pub groups: Vec<String>,
}

impl Render for GroupDump {
    fn render(&self) -> String {
        self.groups.iter().map(|g| format!(" {g}\n")).collect()
    }
}

/// One operation of a [`FlowBundle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum FlowOp {
    /// Add (or replace) a flow, or a group when the text starts with
    /// `group_id=`.
    Add {
        /// Flow or group text.
        flow: String,
    },
    /// Delete the flows matching.
    Del {
        /// The match.
        #[serde(rename = "match")]
        match_: String,
        /// Exact priority and match.
        #[serde(default)]
        strict: bool,
    },
    /// Change the actions of the flows matching.
    Mod {
        /// The flow with its new actions.
        flow: String,
        /// Exact priority and match.
        #[serde(default)]
        strict: bool,
    },
}

/// `flow-bundle`: operations applied all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowBundleRequest {
    /// The operations, in order.
    pub ops: Vec<FlowOp>,
}

impl FromArgs for FlowBundleRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        // Text form: one argument, the operations as JSON.
        let text = a.first().map(String::as_str).unwrap_or("[]");
        let ops: Vec<FlowOp> = serde_json::from_str(text).map_err(|e| {
            ApiError::invalid(format!(
                "flow-bundle takes a JSON array of operations ({{\"op\":\"add\",\"flow\":...}}, {{\"op\":\"del\",\"match\":...}}, {{\"op\":\"mod\",\"flow\":...}}): {e}"
            ))
        })?;
        Ok(FlowBundleRequest { ops })
    }
}

/// `trace`: a flow (`in_port=1,tcp,tp_dst=80`) or a frame in hex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// The flow or packet.
    pub target: String,
}

impl FromArgs for TraceRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        Ok(TraceRequest {
            target: a.join(" "),
        })
    }
}

method!(
    /// Adds one flow.
    AddFlow, "add-flow", "FLOW", (1, 1), FlowText => BundleSummary);
method!(
    /// Adds flows and groups (one per line) as one bundle.
    AddFlows, "add-flows", "FLOWS (one per line)", (1, 1), FlowLines => BundleSummary);
method!(
    /// Makes the program equal to the given flows, changing only what differs.
    ReplaceFlows, "replace-flows", "FLOWS (one per line)", (1, 1), FlowLines => BundleSummary);
method!(
    /// Adds or replaces a group.
    AddGroup, "add-group", "GROUP", (1, 1), FlowText => BundleSummary);
method!(
    /// Deletes the flows matching.
    DelFlows, "del-flows", "[--strict] [MATCH]", (0, 2), DelFlowsRequest => BundleSummary);
method!(
    /// Changes the actions of the flows matching.
    ModFlows, "mod-flows", "[--strict] FLOW", (1, 2), ModFlowsRequest => BundleSummary);
method!(
    /// Lists flows with their counters.
    DumpFlows, "dump-flows", "[table=N] [MATCH]", (0, 2), DumpFlowsRequest => FlowDump,
    aliases = ["dpctl/dump-flows"]);
method!(
    /// Lists groups.
    DumpGroups, "dump-groups", "", (0, 0), crate::Empty => GroupDump);
method!(
    /// Applies add/del/mod operations all or nothing.
    FlowBundle, "flow-bundle", "JSON-OPS", (1, 1), FlowBundleRequest => BundleSummary);
method!(
    /// Explains how a flow or packet is processed.
    Trace, "trace", "FLOW|HEXPACKET", (1, 2), TraceRequest => Text,
    aliases = ["ofproto/trace"]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_ops_have_the_documented_wire_form() {
        let ops: Vec<FlowOp> = serde_json::from_str(
            r#"[{"op":"add","flow":"priority=1,actions=drop"},{"op":"del","match":"ip","strict":true},{"op":"mod","flow":"ip,actions=drop"}]"#,
        )
        .unwrap();
        assert_eq!(
            ops,
            vec![
                FlowOp::Add {
                    flow: "priority=1,actions=drop".into()
                },
                FlowOp::Del {
                    match_: "ip".into(),
                    strict: true
                },
                FlowOp::Mod {
                    flow: "ip,actions=drop".into(),
                    strict: false
                },
            ]
        );
        assert!(serde_json::from_str::<FlowOp>(r#"{"op":"zap","flow":"x"}"#).is_err());
        assert!(serde_json::from_str::<FlowOp>(r#"{"op":"add"}"#).is_err());
    }

    #[test]
    fn dump_line_is_ovs_ofctl_shaped() {
        let e = FlowEntry {
            table: 1,
            priority: 10,
            cookie: 0x2a,
            n_packets: 3,
            n_bytes: 180,
            duration_ms: 12_345,
            idle_age_s: 2,
            idle_timeout: 60,
            hard_timeout: 0,
            match_: "ip,nw_dst=10.0.0.0/24".into(),
            actions: "output:2".into(),
        };
        assert_eq!(
            e.line(),
            " cookie=0x2a, duration=12.345s, table=1, n_packets=3, n_bytes=180, idle_timeout=60, idle_age=2, priority=10,ip,nw_dst=10.0.0.0/24 actions=output:2"
        );
    }

    #[test]
    fn text_arguments() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let d = DelFlowsRequest::from_args(&s(&["--strict", "ip"])).unwrap();
        assert!(d.strict);
        assert_eq!(d.filter, "ip");
        assert!(ModFlowsRequest::from_args(&s(&["--strict"])).is_err());
        assert_eq!(
            DumpFlowsRequest::from_args(&s(&["table=0", "ip"]))
                .unwrap()
                .filter,
            "table=0,ip"
        );
        assert!(FlowBundleRequest::from_args(&s(&["{"])).is_err());
    }
}
