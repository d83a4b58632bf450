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

/// `value` was parsed from `text`: the text it prints must parse back to
/// the same value and, when `stable`, print the same text again.
fn round_trip<T: PartialEq + std::fmt::Debug, E: std::fmt::Display>(
    what: &str,
    text: &str,
    value: T,
    print: impl Fn(&T) -> String,
    reparse: impl Fn(&str) -> Result<T, E>,
    stable: bool,
) {
    let printed = print(&value);
    let again = reparse(&printed).unwrap_or_else(|e| {
        panic!("printed {what} {printed:?} (from {text:?}) does not parse: {e}")
    });
    assert_eq!(value, again, "{what} {text:?} printed as {printed:?}");
    if stable {
        assert_eq!(printed, print(&again), "printing is not stable");
    }
}

/// Feeds `data` to one of the flow text parsers.
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match sel % 6 {
        0 => {
            if let Ok(spec) = parse_flow(&text) {
                round_trip("flow", &text, spec, format_spec, parse_flow, true);
            }
        }
        1 => {
            if let Ok(g) = parse_group(&text) {
                round_trip("group", &text, g, format_group, parse_group, true);
            }
        }
        2 => {
            if let Ok(a) = parse_actions(&text, 0) {
                let reparse = |t: &str| parse_actions(t, 0);
                round_trip("actions", &text, a, |a| format_actions(a), reparse, false);
            }
        }
        3 | 4 => {
            let parsed = if sel % 6 == 3 {
                parse_filter(&text).map(|f| f.m)
            } else {
                parse_mod(&text).map(|(f, _)| f.m)
            };
            if let Ok(m) = parsed {
                let reparse = |t: &str| parse_filter(t).map(|f| f.m);
                round_trip("match", &text, m, format_match, reparse, false);
            }
        }
        _ => {
            let _ = parse_packet(&text);
        }
    }
}
