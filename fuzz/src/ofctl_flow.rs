//! Target `ofctl_flow`: the ovs-ofctl flow text parser
//! (`sluice_datapath::flow::text`) on arbitrary text.
//!
//! The first byte picks the grammar (flow, group, actions, filter, mod,
//! packet); the rest is the text. Invariants: no parser panics; for
//! flows, groups and action lists, parse → print → parse is the identity
//! (the printed text parses back to the same value, and printing that
//! gives the same text); a filter's or mod's match prints to text that
//! parses back to the same match.

use sluice_datapath::flow::text::{
    format_actions, format_group, format_match, format_spec, parse_actions, parse_filter,
    parse_flow, parse_group, parse_mod, parse_packet,
};

/// Feeds `data` to one of the flow text parsers.
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match sel % 6 {
        0 => {
            if let Ok(spec) = parse_flow(&text) {
                let printed = format_spec(&spec);
                let again = parse_flow(&printed).unwrap_or_else(|e| {
                    panic!("printed flow {printed:?} (from {text:?}) does not parse: {e}")
                });
                assert_eq!(spec, again, "flow {text:?} printed as {printed:?}");
                assert_eq!(printed, format_spec(&again), "printing is not stable");
            }
        }
        1 => {
            if let Ok(g) = parse_group(&text) {
                let printed = format_group(&g);
                let again = parse_group(&printed).unwrap_or_else(|e| {
                    panic!("printed group {printed:?} (from {text:?}) does not parse: {e}")
                });
                assert_eq!(g, again, "group {text:?} printed as {printed:?}");
                assert_eq!(printed, format_group(&again), "printing is not stable");
            }
        }
        2 => {
            if let Ok(a) = parse_actions(&text, 0) {
                let printed = format_actions(&a);
                let again = parse_actions(&printed, 0).unwrap_or_else(|e| {
                    panic!("printed actions {printed:?} (from {text:?}) do not parse: {e}")
                });
                assert_eq!(a, again, "actions {text:?} printed as {printed:?}");
            }
        }
        3 | 4 => {
            let parsed = if sel % 6 == 3 {
                parse_filter(&text).map(|f| f.m)
            } else {
                parse_mod(&text).map(|(f, _)| f.m)
            };
            if let Ok(m) = parsed {
                let printed = format_match(&m);
                let again = parse_filter(&printed).unwrap_or_else(|e| {
                    panic!("printed match {printed:?} (from {text:?}) does not parse: {e}")
                });
                assert_eq!(m, again.m, "match {text:?} printed as {printed:?}");
            }
        }
        _ => {
            let _ = parse_packet(&text);
        }
    }
}
