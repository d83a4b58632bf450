//! Control methods of the flow program, served as [`sluice_api::flows`]
//! types: `add-flow`, `add-flows`, `replace-flows`, `add-group`,
//! `del-flows`, `mod-flows`, `dump-flows` (`dpctl/dump-flows`),
//! `dump-groups`, `trace` (`ofproto/trace`) and the atomic `flow-bundle`.
//!
//! Thread-safety: handlers run on control threads; every change publishes
//! a new immutable program that PMDs pick up between bursts.

use std::sync::Arc;

use sluice_api::{self as api, ApiError, Text};

use crate::ctl::registry::{Registry, RegistryError};
use crate::ctl::typed::register;
use crate::flow::program::FlowMod;
use crate::flow::tables::FlowTables;
use crate::flow::text;
use crate::time::clock_ns;

fn summary(s: crate::flow::program::BundleSummary) -> api::flows::BundleSummary {
    api::flows::BundleSummary {
        added: s.added,
        modified: s.modified,
        deleted: s.deleted,
        groups: s.groups,
    }
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(e.to_string())
}

/// One `flow-bundle` operation as a [`FlowMod`].
pub(crate) fn flow_mod(i: usize, op: &api::flows::FlowOp) -> Result<FlowMod, ApiError> {
    let at = |e: crate::flow::text::ParseError| ApiError::invalid(format!("operation {i}: {e}"));
    Ok(match op {
        api::flows::FlowOp::Add { flow } if flow.trim_start().starts_with("group_id=") => {
            FlowMod::AddGroup(text::parse_group(flow).map_err(at)?)
        }
        api::flows::FlowOp::Add { flow } => FlowMod::Add(text::parse_flow(flow).map_err(at)?),
        api::flows::FlowOp::Del { match_, strict } => FlowMod::Delete {
            filter: text::parse_filter(match_).map_err(at)?,
            strict: *strict,
        },
        api::flows::FlowOp::Mod { flow, strict } => {
            let (filter, actions) = text::parse_mod(flow).map_err(at)?;
            FlowMod::Modify {
                filter,
                strict: *strict,
                actions,
            }
        }
    })
}

/// Registers the flow-program methods (`add-flow`, `add-flows`,
/// `replace-flows`, `add-group`, `del-flows`, `mod-flows`, `dump-flows`,
/// `dump-groups`, `trace`, `flow-bundle`).
pub fn register_flows(
    reg: &Registry,
    tables: FlowTables,
    oracle: Option<Arc<dyn crate::flow::tables::TraceOracle>>,
) -> Result<(), RegistryError> {
    type Change = crate::flow::program::BundleSummary;
    type Outcome = Result<Change, crate::flow::tables::FlowTablesError>;
    /// Serves a method that changes the program and answers what changed.
    fn change<M: api::Method<Reply = api::flows::BundleSummary>>(
        reg: &Registry,
        tables: &FlowTables,
        apply: fn(&FlowTables, &M::Request) -> Outcome,
    ) -> Result<(), RegistryError> {
        let t = tables.clone();
        register::<M>(reg, move |r| apply(&t, &r).map(summary).map_err(invalid))
    }
    change::<api::flows::AddFlow>(reg, &tables, |t, r| t.add_flow(&r.flow, clock_ns()))?;
    change::<api::flows::AddGroup>(reg, &tables, |t, r| t.add_group(&r.flow, clock_ns()))?;
    change::<api::flows::AddFlows>(reg, &tables, |t, r| t.add_flows(&r.flows, clock_ns()))?;
    change::<api::flows::ReplaceFlows>(reg, &tables, |t, r| t.replace_flows(&r.flows, clock_ns()))?;
    change::<api::flows::DelFlows>(reg, &tables, |t, r| {
        t.del_flows(&r.filter, r.strict, clock_ns())
    })?;
    change::<api::flows::ModFlows>(reg, &tables, |t, r| {
        t.mod_flows(&r.flow, r.strict, clock_ns())
    })?;
    let t = tables.clone();
    register::<api::flows::DumpFlows>(reg, move |r| {
        Ok(api::flows::FlowDump {
            flows: t.dump_entries(&r.filter, clock_ns()).map_err(invalid)?,
        })
    })?;
    let t = tables.clone();
    register::<api::flows::DumpGroups>(reg, move |_| {
        Ok(api::flows::GroupDump {
            groups: t.group_texts(),
        })
    })?;
    let t = tables.clone();
    register::<api::flows::Trace>(reg, move |r| {
        Ok(Text {
            text: t
                .trace_with(&r.target, oracle.as_deref())
                .map_err(invalid)?,
        })
    })?;
    register::<api::flows::FlowBundle>(reg, move |r| {
        let mods = r
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| flow_mod(i, op))
            .collect::<Result<Vec<_>, _>>()?;
        tables
            .apply_bundle(&mods, clock_ns())
            .map(summary)
            .map_err(invalid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::registry::DispatchContext;
    use serde_json::json;

    fn call(reg: &Registry, cmd: &str, args: &[&str]) -> Result<String, String> {
        let ctx = DispatchContext { on_exit: &|| {} };
        reg.dispatch(cmd, &json!(args), &ctx)
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    #[test]
    fn flow_commands_program_and_dump() {
        let reg = Registry::new();
        let tables = FlowTables::new();
        register_flows(&reg, tables.clone(), None).unwrap();
        call(
            &reg,
            "add-flow",
            &["table=0,priority=10,ip,nw_dst=10.0.0.0/24 actions=output:2"],
        )
        .unwrap();
        let dump = call(&reg, "dump-flows", &[]).unwrap();
        assert!(
            dump.contains("priority=10,ip,nw_dst=10.0.0.0/24 actions=output:2"),
            "{dump}"
        );
        let e = call(&reg, "add-flow", &["ip,nw_dst=10.0.0.300 actions=drop"]).unwrap_err();
        assert!(e.contains("invalid IPv4 address"), "{e}");
        call(&reg, "del-flows", &[]).unwrap();
        assert!(!call(&reg, "dump-flows", &[])
            .unwrap()
            .contains("priority=10"));
    }

    #[test]
    fn bundles_are_all_or_nothing_and_dumps_are_structured() {
        let reg = Registry::new();
        let tables = FlowTables::new();
        register_flows(&reg, tables.clone(), None).unwrap();
        let ctx = DispatchContext { on_exit: &|| {} };
        let ok = reg
            .dispatch(
                "flow-bundle",
                &json!({"ops": [
                    {"op": "add", "flow": "table=0,priority=5,ip,actions=drop"},
                    {"op": "add", "flow": "group_id=1,type=all,bucket=output:1"},
                ]}),
                &ctx,
            )
            .unwrap();
        assert_eq!(ok["added"], 1);
        assert_eq!(ok["groups"], 1);
        // The second op is bad: nothing of the bundle is applied.
        let e = reg
            .dispatch(
                "flow-bundle",
                &json!({"ops": [
                    {"op": "del", "match": ""},
                    {"op": "add", "flow": "ip,nw_dst=10.0.0.300 actions=drop"},
                ]}),
                &ctx,
            )
            .unwrap_err();
        let e = ApiError::from_wire(&e);
        assert_eq!(e.code, api::ErrorCode::InvalidArgument);
        assert!(e.message.starts_with("operation 1:"), "{e}");
        let dump = reg
            .dispatch("dpctl/dump-flows", &json!({"filter": "table=0"}), &ctx)
            .unwrap();
        let dump: api::flows::FlowDump = serde_json::from_value(dump).unwrap();
        assert_eq!(dump.flows.len(), 1, "{dump:?}");
        assert_eq!(dump.flows[0].priority, 5);
        assert_eq!(dump.flows[0].match_, "ip");
        assert_eq!(dump.flows[0].actions, "drop");
        assert_eq!(
            call(&reg, "dump-groups", &[]).unwrap(),
            " group_id=1,type=all,bucket=actions=output:1\n"
        );
    }
}
