//! The `ovs-ofctl` flow syntax (a documented subset): parsing `add-flow`,
//! `del-flows` and `add-group` strings, and printing `dump-flows` lines.
//!
//! Grammar (`,` separates items; commas inside parentheses do not split;
//! whitespace around items is ignored; `N` is decimal or `0x` hex):
//!
//! ```text
//! flow      := item ("," item)* ("," | " ") "actions=" actions
//! item      := "table=" N | "priority=" N | "cookie=" N ["/" N]
//!            | "idle_timeout=" N | "hard_timeout=" N
//!            | "duration=" ... | "n_packets=" ... | "n_bytes=" ... | "idle_age=" ...
//!                                  (dump-flows statistics, ignored)
//!            | proto | field "=" value ["/" mask]
//! proto     := ip | ipv6 | arp | tcp | udp | sctp | icmp | tcp6 | udp6 | sctp6 | icmp6
//! field     := in_port | recirc_id | dl_src | dl_dst | dl_type | vlan_tci | nw_src | nw_dst
//!            | nw_proto | nw_tos | nw_ttl | ip_frag | ipv6_src | ipv6_dst | tp_src | tp_dst
//!            | tcp_flags | icmp_type | icmp_code | arp_op | arp_spa | arp_tpa | arp_sha
//!            | arp_tha | tun_id | tun_src | tun_dst | tun_gnv_class | tun_gnv_type
//!            | tun_metadata0 | ct_state | ct_zone | ct_mark | ct_label | reg0..reg7 | metadata
//!              (aliases: eth_src, eth_dst, eth_type, ip_src, ip_dst, tcp_src, udp_dst, ...)
//! value     := MAC "aa:bb:cc:dd:ee:ff" ["/" MAC]  | IPv4 "a.b.c.d" ["/" prefix | "/" a.b.c.d]
//!            | IPv6 ["/" prefix] | N ["/" N] | port (N, LOCAL, CONTROLLER, IN_PORT)
//!            | flags ("+trk+est-new", "+syn-ack") | ip_frag (no, yes, first, later, not_later)
//! actions   := "drop" | action ("," action)*
//! action    := "output:" port | N | "in_port" | "local" | "normal" | "controller" [":" N]
//!            | "goto_table:" N | "resubmit:" port | "resubmit(" [port] "," [N] ")"
//!            | "mod_dl_src:" MAC | "mod_dl_dst:" MAC | "mod_nw_src:" IPv4 | "mod_nw_dst:" IPv4
//!            | "mod_tp_src:" N | "mod_tp_dst:" N | "mod_nw_ttl:" N
//!            | "set_field:" value ["/" mask] "->" field
//!            | "load:" N "->" field ["[]" | "[" lo ".." hi "]"]
//!            | "dec_ttl" | "group:" N | "tnl_push" | "tnl_pop"
//!            | "ct" ["(" ctarg ("," ctarg)* ")"]
//! ctarg     := "commit" | "zone=" N | "table=" N | "nat" ["(" ("src"|"dst") "=" IPv4 ["-" IPv4]
//!              [":" N ["-" N]] ")"] | "exec(" setct ("," setct)* ")"
//! setct     := "set_field:" N ["/" N] "->" ("ct_mark" | "ct_label")
//! group     := "group_id=" N "," "type=" ("all"|"select") ["," "selection_method=hash"]
//!              ["," "fields(" field ("," field)* ")"] ("," "bucket=" bucket)*
//! bucket    := ["bucket_id:" N ","] ["weight:" N ","] ["actions="] action ("," action)*
//! ```
//!
//! Errors are [`ParseError`]s naming the offending item, what was
//! expected, and the 1-based column where the item starts, e.g.
//! `nw_dst=10.0.0.300: invalid IPv4 address (expected a.b.c.d, a.b.c.d/N or
//! a.b.c.d/w.x.y.z) at column 9` for `table=0,nw_dst=10.0.0.300 actions=drop`.
//! Everything printed by this module parses back to the same value.
//!
//! Thread-safety: pure functions.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::action::{Action, CtAction, DpAction, GroupType, NatKind, NatSpec};
use super::key::{ct_state, ethertype, ipproto, Field, FieldFormat, FlowKey, TCP_FLAG_NAMES};
use super::matches::{Match, MatchError};
use super::program::{Bucket, FlowFilter, FlowMod, FlowSpec, Group, Rule};
use crate::packet::PortNo;
use crate::time::Nanos;

/// What was wrong at a position of a flow string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// Not a known match field or keyword.
    #[error("unknown match field (see the flow::text grammar for the supported fields)")]
    UnknownField,
    /// Bad IPv4 address or mask.
    #[error("invalid IPv4 address (expected a.b.c.d, a.b.c.d/N or a.b.c.d/w.x.y.z)")]
    InvalidIpv4,
    /// Bad IPv6 address or prefix.
    #[error("invalid IPv6 address (expected an RFC 4291 address, optionally /N)")]
    InvalidIpv6,
    /// Bad MAC address or mask.
    #[error("invalid MAC address (expected aa:bb:cc:dd:ee:ff, optionally /aa:bb:cc:dd:ee:ff)")]
    InvalidMac,
    /// Bad or too large number.
    #[error("invalid number (expected decimal or 0x hex, at most {max:#x})")]
    InvalidNumber {
        /// Largest allowed value.
        max: u128,
    },
    /// Bad port.
    #[error("invalid port (expected a number, LOCAL, CONTROLLER or IN_PORT)")]
    InvalidPort,
    /// Bad flag list.
    #[error("invalid flags (expected +name or -name, names: {0})")]
    InvalidFlags(&'static str),
    /// Bad ip_frag keyword.
    #[error("invalid ip_frag (expected no, yes, first, later or not_later)")]
    InvalidFrag,
    /// No `actions=` in an add-flow.
    #[error("missing `actions=` (a flow needs actions; use actions=drop to drop)")]
    MissingActions,
    /// `actions=` where no actions are allowed.
    #[error("actions are not allowed here")]
    UnexpectedActions,
    /// Not a known action.
    #[error("unknown action (see the flow::text grammar for the supported actions)")]
    UnknownAction,
    /// Something else was expected.
    #[error("expected {0}")]
    Expected(&'static str),
    /// A field that actions may not write.
    #[error("field {0} cannot be written by set_field or load")]
    ReadOnly(Field),
    /// `drop` together with other actions.
    #[error("`drop` must be the only action")]
    DropNotAlone,
    /// The match misses a prerequisite.
    #[error("{0}")]
    Prereq(MatchError),
    /// A match field or flow keyword given twice with different values.
    #[error("conflicts with an earlier {0} in the same flow; give each field once")]
    Conflict(String),
    /// More actions than one flow may carry.
    #[error("{count} actions in one list; at most {MAX_ACTIONS} are allowed (OVS caps an action list at 64 KiB)")]
    TooManyActions {
        /// How many were given.
        count: usize,
    },
}

/// Most actions one action list (a flow's, or a group bucket's) may hold:
/// OVS caps an encoded action list at 64 KiB, 4096 of its 16-byte
/// `output` actions.
pub const MAX_ACTIONS: usize = 4096;

/// A flow string error: the item, the reason and the 1-based column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{token}: {kind} at column {column}")]
pub struct ParseError {
    /// 1-based character column where the offending item starts.
    pub column: usize,
    /// The offending item.
    pub token: String,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

/// A piece of the input with its byte offset.
#[derive(Clone, Copy)]
struct Tok<'a> {
    off: usize,
    s: &'a str,
}

impl<'a> Tok<'a> {
    fn err(self, kind: ParseErrorKind) -> ParseError {
        ParseError {
            column: self.off + 1,
            token: self.s.to_string(),
            kind,
        }
    }
}

/// Splits `s` (at offset `base` of the input) on top-level commas,
/// trimming whitespace, skipping empty pieces.
fn split_top(s: &str, base: usize) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = s.as_bytes();
    for i in 0..=bytes.len() {
        let c = bytes.get(i).copied();
        match c {
            Some(b'(') => depth += 1,
            Some(b')') => depth -= 1,
            Some(b',') if depth <= 0 => {}
            None => {}
            _ => continue,
        }
        if c.is_none() || c == Some(b',') && depth <= 0 {
            let piece = &s[start..i];
            let lead = piece.len() - piece.trim_start().len();
            let t = piece.trim();
            if !t.is_empty() {
                out.push(Tok {
                    off: base + start + lead,
                    s: t,
                });
            }
            start = i + 1;
        }
    }
    out
}

fn parse_int(s: &str, max: u128) -> Option<u128> {
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u128::from_str_radix(h, 16).ok()?
    } else {
        s.parse::<u128>().ok()?
    };
    (v <= max).then_some(v)
}

fn parse_mac(s: &str) -> Option<u128> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut v = 0u128;
    for p in parts {
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        v = (v << 8) | u128::from(u8::from_str_radix(p, 16).ok()?);
    }
    Some(v)
}

fn prefix_mask(bits: u32, len: u32) -> Option<u128> {
    if len > bits {
        return None;
    }
    let all = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    Some(if len == 0 {
        0
    } else {
        (all << (bits - len)) & all
    })
}

fn parse_port(s: &str) -> Option<PortNo> {
    match s {
        "LOCAL" | "local" => Some(PortNo::LOCAL),
        "CONTROLLER" | "controller" => Some(PortNo::CONTROLLER),
        "IN_PORT" | "in_port" => Some(PortNo::IN_PORT),
        "NONE" => Some(PortNo::NONE),
        _ => parse_int(s, 0xffff).map(|v| PortNo(v as u16)),
    }
}

fn parse_flags(s: &str, names: &[(&str, u16)]) -> Option<(u128, u128)> {
    let mut v = 0u128;
    let mut m = 0u128;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let set = match rest.as_bytes()[0] {
            b'+' => true,
            b'-' => false,
            _ => return None,
        };
        rest = &rest[1..];
        let end = rest.find(['+', '-']).unwrap_or(rest.len());
        let name = &rest[..end];
        let bit = names.iter().find(|(n, _)| *n == name)?.1;
        m |= u128::from(bit);
        if set {
            v |= u128::from(bit);
        }
        rest = &rest[end..];
    }
    Some((v, m))
}

fn ct_names() -> [(&'static str, u16); 8] {
    ct_state::NAMES.map(|(n, b)| (n, u16::from(b)))
}

const FRAGS: [(&str, u128, u128); 5] = [
    ("no", 0, 1),
    ("yes", 1, 1),
    ("first", 1, 3),
    ("later", 3, 3),
    ("not_later", 0, 2),
];

/// Parses a field value with optional mask in the field's format.
fn parse_value(field: Field, s: &str) -> Result<(u128, u128), ParseErrorKind> {
    let max = field.max_value();
    let split = |s: &str| match s.split_once('/') {
        Some((a, b)) => (a.to_string(), Some(b.to_string())),
        None => (s.to_string(), None),
    };
    let num_err = ParseErrorKind::InvalidNumber { max };
    match field.format() {
        FieldFormat::Hex | FieldFormat::Decimal => {
            let (v, m) = split(s);
            let v = parse_int(&v, max).ok_or(num_err.clone())?;
            let m = match m {
                Some(m) => parse_int(&m, max).ok_or(num_err)?,
                None => max,
            };
            Ok((v & m, m))
        }
        FieldFormat::Port => match s.split_once('/') {
            // A masked port (programmatic matches) prints as value/mask.
            Some(_) => parse_value_as_int(s, max).ok_or(ParseErrorKind::InvalidPort),
            None => parse_port(s)
                .map(|p| (u128::from(p.0), max))
                .ok_or(ParseErrorKind::InvalidPort),
        },
        FieldFormat::Mac => {
            let (v, m) = split(s);
            let v = parse_mac(&v).ok_or(ParseErrorKind::InvalidMac)?;
            let m = match m {
                Some(m) => parse_mac(&m).ok_or(ParseErrorKind::InvalidMac)?,
                None => max,
            };
            Ok((v & m, m))
        }
        FieldFormat::Ipv4 => {
            let (v, m) = split(s);
            let v = u128::from(u32::from(
                v.parse::<Ipv4Addr>()
                    .map_err(|_| ParseErrorKind::InvalidIpv4)?,
            ));
            let m = match m {
                None => max,
                Some(m) if m.contains('.') => u128::from(u32::from(
                    m.parse::<Ipv4Addr>()
                        .map_err(|_| ParseErrorKind::InvalidIpv4)?,
                )),
                Some(m) => m
                    .parse::<u32>()
                    .ok()
                    .and_then(|len| prefix_mask(32, len))
                    .ok_or(ParseErrorKind::InvalidIpv4)?,
            };
            Ok((v & m, m))
        }
        FieldFormat::Ipv6 => {
            let (v, m) = split(s);
            let v = u128::from(
                v.parse::<Ipv6Addr>()
                    .map_err(|_| ParseErrorKind::InvalidIpv6)?,
            );
            let m = match m {
                None => max,
                Some(m) if m.contains(':') => u128::from(
                    m.parse::<Ipv6Addr>()
                        .map_err(|_| ParseErrorKind::InvalidIpv6)?,
                ),
                Some(m) => m
                    .parse::<u32>()
                    .ok()
                    .and_then(|len| prefix_mask(128, len))
                    .ok_or(ParseErrorKind::InvalidIpv6)?,
            };
            Ok((v & m, m))
        }
        FieldFormat::CtState | FieldFormat::TcpFlags => {
            let (names, list): (&[(&str, u16)], &'static str) =
                if field.format() == FieldFormat::CtState {
                    (&ct_names(), "new est rel rpl inv trk snat dnat")
                } else {
                    (&TCP_FLAG_NAMES, "fin syn rst psh ack urg ece cwr ns")
                };
            if s.starts_with(['+', '-']) {
                parse_flags(s, names).ok_or(ParseErrorKind::InvalidFlags(list))
            } else {
                parse_value_as_int(s, max).ok_or(ParseErrorKind::InvalidFlags(list))
            }
        }
        FieldFormat::Frag => FRAGS
            .iter()
            .find(|(n, _, _)| *n == s)
            .map(|&(_, v, m)| (v, m))
            .or_else(|| parse_value_as_int(s, max))
            .ok_or(ParseErrorKind::InvalidFrag),
    }
}

fn parse_value_as_int(s: &str, max: u128) -> Option<(u128, u128)> {
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (parse_int(v, max)?, parse_int(m, max)?),
        None => (parse_int(s, max)?, max),
    };
    Some((v & m, m))
}

/// Formats a field value with its mask (omitted when exact).
pub fn format_value(field: Field, v: u128, m: u128) -> String {
    let max = field.max_value();
    let exact = m == max;
    match field.format() {
        FieldFormat::Hex => {
            if exact {
                format!("{v:#x}")
            } else {
                format!("{v:#x}/{m:#x}")
            }
        }
        FieldFormat::Decimal => {
            if exact {
                format!("{v}")
            } else {
                format!("{v}/{m:#x}")
            }
        }
        FieldFormat::Port if exact => PortNo(v as u16).to_string(),
        FieldFormat::Port => format!("{v:#x}/{m:#x}"),
        FieldFormat::Mac => {
            let mac = |x: u128| {
                let b = (x as u64).to_be_bytes();
                format!(
                    "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    b[2], b[3], b[4], b[5], b[6], b[7]
                )
            };
            if exact {
                mac(v)
            } else {
                format!("{}/{}", mac(v), mac(m))
            }
        }
        FieldFormat::Ipv4 => {
            let a = Ipv4Addr::from(v as u32);
            if exact {
                a.to_string()
            } else if let Some(len) = (0..=32).find(|&l| prefix_mask(32, l) == Some(m)) {
                format!("{a}/{len}")
            } else {
                format!("{a}/{}", Ipv4Addr::from(m as u32))
            }
        }
        FieldFormat::Ipv6 => {
            let a = Ipv6Addr::from(v);
            if exact {
                a.to_string()
            } else if let Some(len) = (0..=128).find(|&l| prefix_mask(128, l) == Some(m)) {
                format!("{a}/{len}")
            } else {
                format!("{a}/{}", Ipv6Addr::from(m))
            }
        }
        FieldFormat::CtState | FieldFormat::TcpFlags => {
            let names: &[(&str, u16)] = if field.format() == FieldFormat::CtState {
                &ct_names()
            } else {
                &TCP_FLAG_NAMES
            };
            let named: u128 = names.iter().map(|(_, b)| u128::from(*b)).sum();
            if exact && m & !named != 0 {
                return format!("{v:#x}");
            }
            if m & !named != 0 {
                return format!("{v:#x}/{m:#x}");
            }
            let mut s = String::new();
            for (n, b) in names {
                let b = u128::from(*b);
                if m & b != 0 {
                    s.push(if v & b != 0 { '+' } else { '-' });
                    s.push_str(n);
                }
            }
            s
        }
        FieldFormat::Frag => FRAGS
            .iter()
            .find(|&&(_, fv, fm)| fv == v && fm == m)
            .map(|(n, _, _)| n.to_string())
            .unwrap_or_else(|| format!("{v:#x}/{m:#x}")),
    }
}

const SHORTHANDS: [(&str, u16, Option<u8>); 11] = [
    ("ip", ethertype::IPV4, None),
    ("ipv6", ethertype::IPV6, None),
    ("arp", ethertype::ARP, None),
    ("tcp", ethertype::IPV4, Some(ipproto::TCP)),
    ("udp", ethertype::IPV4, Some(ipproto::UDP)),
    ("sctp", ethertype::IPV4, Some(ipproto::SCTP)),
    ("icmp", ethertype::IPV4, Some(ipproto::ICMP)),
    ("tcp6", ethertype::IPV6, Some(ipproto::TCP)),
    ("udp6", ethertype::IPV6, Some(ipproto::UDP)),
    ("sctp6", ethertype::IPV6, Some(ipproto::SCTP)),
    ("icmp6", ethertype::IPV6, Some(ipproto::ICMPV6)),
];

/// Finds the top-level `actions=` and splits there: (match part, actions
/// part and its offset).
fn split_actions(s: &str) -> (&str, Option<(usize, &str)>) {
    let b = s.as_bytes();
    let mut depth = 0i32;
    for i in 0..b.len() {
        match b[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b'a' if depth <= 0
                && s[i..].starts_with("actions=")
                && (i == 0 || matches!(b[i - 1], b',' | b' ' | b'\t')) =>
            {
                return (&s[..i], Some((i + 8, &s[i + 8..])));
            }
            _ => {}
        }
    }
    (s, None)
}

/// Everything an add-flow/del-flows string can say.
struct Parsed {
    spec: FlowSpec,
    cookie_mask: u64,
    table: Option<u8>,
}

/// The actions part of a flow string and its offset, if present.
type ActionsPart<'a> = Option<(usize, &'a str)>;

fn parse_items(s: &str, allow_cookie_mask: bool) -> Result<(Parsed, ActionsPart<'_>), ParseError> {
    let (mpart, apart) = split_actions(s);
    let mut spec = FlowSpec::default();
    let mut cookie_mask = 0u64;
    let mut table = None;
    let mut field_toks: Vec<(Field, Tok<'_>)> = Vec::new();
    // Keywords seen, with their value text: a keyword repeated with
    // another value is refused rather than the last one silently winning.
    let mut keywords: Vec<(&str, &str)> = Vec::new();
    for tok in split_top(mpart, 0) {
        let (name, value) = match tok.s.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (tok.s, None),
        };
        let num = |max: u128| {
            value
                .and_then(|v| parse_int(v, max))
                .ok_or(tok.err(ParseErrorKind::InvalidNumber { max }))
        };
        if let ("table" | "priority" | "idle_timeout" | "hard_timeout" | "cookie", Some(v)) =
            (name, value)
        {
            match keywords.iter().find(|(n, _)| *n == name) {
                Some((_, old)) if *old != v => {
                    return Err(tok.err(ParseErrorKind::Conflict(format!("{name}={old}"))))
                }
                _ => keywords.push((name, v)),
            }
        }
        match (name, value) {
            ("table", Some(_)) => {
                let t = num(254)? as u8;
                spec.table = t;
                table = Some(t);
            }
            ("priority", Some(_)) => spec.priority = num(0xffff)? as u16,
            ("idle_timeout", Some(_)) => spec.idle_timeout = num(0xffff)? as u16,
            ("hard_timeout", Some(_)) => spec.hard_timeout = num(0xffff)? as u16,
            ("cookie", Some(v)) => {
                let max = u128::from(u64::MAX);
                let bad = || tok.err(ParseErrorKind::InvalidNumber { max });
                let (c, m) = match v.split_once('/') {
                    Some((c, "-1")) if allow_cookie_mask => (c, u64::MAX),
                    Some((c, m)) if allow_cookie_mask => {
                        (c, parse_int(m, max).ok_or_else(bad)? as u64)
                    }
                    Some(_) => {
                        return Err(tok.err(ParseErrorKind::Expected(
                            "a cookie without mask in add-flow",
                        )))
                    }
                    None => (v, u64::MAX),
                };
                spec.cookie = parse_int(c, max).ok_or_else(bad)? as u64;
                cookie_mask = m;
            }
            ("duration" | "n_packets" | "n_bytes" | "idle_age" | "hard_age", Some(_)) => {}
            (_, None) => {
                let (_, ty, proto) = SHORTHANDS
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .ok_or(tok.err(ParseErrorKind::UnknownField))?;
                set_once(&mut spec.m, Field::DlType, u128::from(*ty), u128::MAX, tok)?;
                if let Some(p) = proto {
                    set_once(&mut spec.m, Field::NwProto, u128::from(*p), u128::MAX, tok)?;
                }
            }
            (_, Some(v)) => {
                let field = Field::from_name(name).ok_or(tok.err(ParseErrorKind::UnknownField))?;
                let (val, mask) = parse_value(field, v).map_err(|k| tok.err(k))?;
                set_once(&mut spec.m, field, val, mask, tok)?;
                field_toks.push((field, tok));
            }
        }
    }
    if let Err(e) = spec.m.check_prereqs() {
        let MatchError::MissingPrereq { field, .. } = &e;
        let tok = field_toks
            .iter()
            .find(|(f, _)| f == field)
            .map(|(_, t)| *t)
            .unwrap_or(Tok {
                off: 0,
                s: s.trim(),
            });
        return Err(tok.err(ParseErrorKind::Prereq(e)));
    }
    Ok((
        Parsed {
            spec,
            cookie_mask,
            table,
        },
        apart,
    ))
}

/// Sets `field` in `m` unless an earlier item set it to something else
/// (`reg0=1,reg0=2`, `ip,arp`): the same value twice (`ip,dl_type=0x0800`)
/// is fine.
fn set_once(
    m: &mut Match,
    field: Field,
    val: u128,
    mask: u128,
    tok: Tok<'_>,
) -> Result<(), ParseError> {
    let full = field.max_value();
    let (mask, val) = (mask & full, val & mask & full);
    let (old_val, old_mask) = m.get(field);
    if old_mask != 0 && (old_val & old_mask, old_mask) != (val, mask) {
        return Err(tok.err(ParseErrorKind::Conflict(field.name().to_string())));
    }
    m.set(field, val, mask);
    Ok(())
}

/// Parses an `add-flow` string (also accepts `dump-flows` lines).
pub fn parse_flow(s: &str) -> Result<FlowSpec, ParseError> {
    let (mut p, apart) = parse_items(s, false)?;
    let Some((off, a)) = apart else {
        return Err(ParseError {
            column: s.len() + 1,
            token: s.trim().to_string(),
            kind: ParseErrorKind::MissingActions,
        });
    };
    p.spec.actions = parse_actions(a, off)?;
    Ok(p.spec)
}

/// Parses a `del-flows`/`dump-flows` filter: match fields, `table=`,
/// `priority=` (for strict operations) and `cookie=V/M`.
pub fn parse_filter(s: &str) -> Result<FlowFilter, ParseError> {
    let (p, apart) = parse_items(s, true)?;
    if let Some((off, a)) = apart {
        return Err(ParseError {
            column: off - 7,
            token: format!("actions={a}"),
            kind: ParseErrorKind::UnexpectedActions,
        });
    }
    Ok(FlowFilter {
        table: p.table,
        priority: p.spec.priority,
        m: p.spec.m,
        cookie: p.spec.cookie,
        cookie_mask: p.cookie_mask,
    })
}

/// Parses a `mod-flows` string: a filter (as [`parse_filter`]) followed by
/// `actions=`.
pub fn parse_mod(s: &str) -> Result<(FlowFilter, Vec<Action>), ParseError> {
    let (p, apart) = parse_items(s, true)?;
    let Some((off, a)) = apart else {
        return Err(ParseError {
            column: s.len() + 1,
            token: s.trim().to_string(),
            kind: ParseErrorKind::MissingActions,
        });
    };
    let actions = parse_actions(a, off)?;
    Ok((
        FlowFilter {
            table: p.table,
            priority: p.spec.priority,
            m: p.spec.m,
            cookie: p.spec.cookie,
            cookie_mask: p.cookie_mask,
        },
        actions,
    ))
}

/// Parses a flow description for `trace` (`in_port=1,tcp,nw_dst=...`):
/// the match's key is the packet.
pub fn parse_packet(s: &str) -> Result<FlowKey, ParseError> {
    let (p, apart) = parse_items(s, false)?;
    if let Some((off, a)) = apart {
        return Err(ParseError {
            column: off - 7,
            token: format!("actions={a}"),
            kind: ParseErrorKind::UnexpectedActions,
        });
    }
    Ok(p.spec.m.key())
}

/// Parses the actions after `actions=`; `off` is their input offset.
pub fn parse_actions(s: &str, off: usize) -> Result<Vec<Action>, ParseError> {
    let toks = split_top(s, off);
    parse_action_toks(&toks)
}

fn parse_action_toks(toks: &[Tok<'_>]) -> Result<Vec<Action>, ParseError> {
    if toks.len() > MAX_ACTIONS {
        return Err(toks[MAX_ACTIONS].err(ParseErrorKind::TooManyActions { count: toks.len() }));
    }
    let mut out = Vec::with_capacity(toks.len());
    for &tok in toks {
        if tok.s.eq_ignore_ascii_case("drop") {
            if toks.len() > 1 {
                return Err(tok.err(ParseErrorKind::DropNotAlone));
            }
            return Ok(Vec::new());
        }
        out.push(parse_action(tok)?);
    }
    if toks.is_empty() {
        return Err(ParseError {
            column: 1,
            token: String::new(),
            kind: ParseErrorKind::Expected("at least one action (or drop)"),
        });
    }
    Ok(out)
}

fn parse_action(tok: Tok<'_>) -> Result<Action, ParseError> {
    let s = tok.s;
    let (name, arg) = match s.split_once(':') {
        Some((n, a)) if !n.contains('(') => (n, Some(a)),
        _ => (s, None),
    };
    let e = |k| tok.err(k);
    let num = |a: Option<&str>, max: u128| {
        a.and_then(|v| parse_int(v, max))
            .ok_or(e(ParseErrorKind::InvalidNumber { max }))
    };
    let set = |field: Field, a: Option<&str>| -> Result<Action, ParseError> {
        let (value, mask) = parse_value(field, a.unwrap_or("")).map_err(e)?;
        // Writable fields are at most 64 bits: the casts keep every bit.
        Ok(Action::SetField {
            field,
            value: value as u64,
            mask: mask as u64,
        })
    };
    Ok(match (name.to_ascii_lowercase().as_str(), arg) {
        ("output", Some(p)) => Action::Output(parse_port(p).ok_or(e(ParseErrorKind::InvalidPort))?),
        ("in_port", None) => Action::InPort,
        ("local", None) => Action::Local,
        ("normal", None) => Action::Normal,
        ("controller", None) => Action::Controller { max_len: 0 },
        ("controller", a) => Action::Controller {
            max_len: num(a, 0xffff)? as u16,
        },
        ("goto_table", a) => Action::GotoTable(num(a, 254)? as u8),
        ("resubmit", Some(p)) => Action::Resubmit {
            port: Some(parse_port(p).ok_or(e(ParseErrorKind::InvalidPort))?),
            table: None,
        },
        ("mod_dl_src", a) => set(Field::DlSrc, a)?,
        ("mod_dl_dst", a) => set(Field::DlDst, a)?,
        ("mod_nw_src", a) => set(Field::NwSrc, a)?,
        ("mod_nw_dst", a) => set(Field::NwDst, a)?,
        ("mod_tp_src", a) => set(Field::TpSrc, a)?,
        ("mod_tp_dst", a) => set(Field::TpDst, a)?,
        ("mod_nw_ttl", a) => set(Field::NwTtl, a)?,
        ("set_field", Some(a)) => {
            let (v, f) = a
                .rsplit_once("->")
                .ok_or(e(ParseErrorKind::Expected("set_field:VALUE->FIELD")))?;
            let field = Field::from_name(f.trim()).ok_or(e(ParseErrorKind::UnknownField))?;
            if !field.writable() {
                return Err(e(ParseErrorKind::ReadOnly(field)));
            }
            set(field, Some(v))?
        }
        ("load", Some(a)) => {
            let (v, dst) = a
                .split_once("->")
                .ok_or(e(ParseErrorKind::Expected("load:VALUE->FIELD[lo..hi]")))?;
            let (fname, range) = match dst.split_once('[') {
                Some((f, r)) => (
                    f,
                    Some(
                        r.strip_suffix(']')
                            .ok_or(e(ParseErrorKind::Expected("]")))?,
                    ),
                ),
                None => (dst, None),
            };
            let field = Field::from_name(fname).ok_or(e(ParseErrorKind::UnknownField))?;
            if !field.writable() {
                return Err(e(ParseErrorKind::ReadOnly(field)));
            }
            let (lo, hi) = match range {
                None | Some("") => (0, field.bits() - 1),
                Some(r) => {
                    let bad = || {
                        e(ParseErrorKind::Expected(
                            "a bit range lo..hi within the field",
                        ))
                    };
                    let (lo, hi) = r.split_once("..").ok_or_else(bad)?;
                    let lo: u32 = lo.parse().map_err(|_| bad())?;
                    let hi: u32 = hi.parse().map_err(|_| bad())?;
                    if lo > hi || hi >= field.bits() {
                        return Err(bad());
                    }
                    (lo, hi)
                }
            };
            let width = hi - lo + 1;
            let vmax = if width == 128 {
                u128::MAX
            } else {
                (1u128 << width) - 1
            };
            let value = num(Some(v), vmax)?;
            Action::SetField {
                field,
                value: (value << lo) as u64,
                mask: (vmax << lo) as u64,
            }
        }
        ("dec_ttl", None) => Action::DecTtl,
        ("group", a) => Action::Group(num(a, u128::from(u32::MAX))? as u32),
        ("tnl_push", None) => Action::TunnelPush,
        ("tnl_pop", None) => Action::TunnelPop,
        ("ct", None) => Action::Ct(Box::default()),
        _ if s.starts_with("resubmit(") => {
            let inner = s["resubmit(".len()..]
                .strip_suffix(')')
                .ok_or(e(ParseErrorKind::Expected("resubmit([PORT],[TABLE])")))?;
            let (p, t) = inner
                .split_once(',')
                .ok_or(e(ParseErrorKind::Expected("resubmit([PORT],[TABLE])")))?;
            let port = match p.trim() {
                "" => None,
                p => Some(parse_port(p).ok_or(e(ParseErrorKind::InvalidPort))?),
            };
            let table = match t.trim() {
                "" => None,
                t => Some(num(Some(t), 254)? as u8),
            };
            Action::Resubmit { port, table }
        }
        _ if s.starts_with("ct(") => Action::Ct(Box::new(parse_ct(tok)?)),
        _ => {
            if let Some(v) = parse_int(s, 0xffff) {
                Action::Output(PortNo(v as u16))
            } else {
                return Err(e(ParseErrorKind::UnknownAction));
            }
        }
    })
}

fn parse_ct(tok: Tok<'_>) -> Result<CtAction, ParseError> {
    let e = |k| tok.err(k);
    let inner = tok.s["ct(".len()..]
        .strip_suffix(')')
        .ok_or(e(ParseErrorKind::Expected(
            "ct(commit,zone=N,table=N,nat(...))",
        )))?;
    let mut ct = CtAction::default();
    for arg in split_top(inner, tok.off + 3) {
        let bad = |what| arg.err(ParseErrorKind::Expected(what));
        match arg.s.split_once('=') {
            _ if arg.s == "commit" => ct.commit = true,
            _ if arg.s == "nat" => {
                ct.nat = Some(NatSpec {
                    kind: None,
                    addrs: None,
                    ports: None,
                })
            }
            Some(("zone", z)) => {
                ct.zone = parse_int(z, 0xffff).ok_or_else(|| bad("zone=0..65535"))? as u16
            }
            Some(("table", t)) => {
                ct.table = Some(parse_int(t, 254).ok_or_else(|| bad("table=0..254"))? as u8)
            }
            _ if arg.s.starts_with("nat(") => {
                let body = arg.s[4..]
                    .strip_suffix(')')
                    .ok_or_else(|| bad("nat(src=A[-B][:P[-Q]]) or nat(dst=...)"))?;
                let (kind, range) = match body.split_once('=') {
                    Some(("src", r)) => (NatKind::Src, r),
                    Some(("dst", r)) => (NatKind::Dst, r),
                    _ => return Err(bad("nat(src=...) or nat(dst=...)")),
                };
                let (addrs, ports) = match range.split_once(':') {
                    Some((a, p)) => (a, Some(p)),
                    None => (range, None),
                };
                let ip = |s: &str| {
                    s.parse::<Ipv4Addr>()
                        .map_err(|_| arg.err(ParseErrorKind::InvalidIpv4))
                };
                let (a1, a2) = match addrs.split_once('-') {
                    Some((a, b)) => (ip(a)?, ip(b)?),
                    None => (ip(addrs)?, ip(addrs)?),
                };
                let ports = match ports {
                    None => None,
                    Some(p) => {
                        let port = |s: &str| {
                            parse_int(s, 0xffff)
                                .map(|v| v as u16)
                                .ok_or_else(|| bad("a port range P[-Q]"))
                        };
                        Some(match p.split_once('-') {
                            Some((a, b)) => (port(a)?, port(b)?),
                            None => (port(p)?, port(p)?),
                        })
                    }
                };
                ct.nat = Some(NatSpec {
                    kind: Some(kind),
                    addrs: Some((a1, a2)),
                    ports,
                });
            }
            _ if arg.s.starts_with("exec(") => {
                let what = "exec(set_field:V[/M]->ct_mark or ct_label, ...)";
                let body = arg.s["exec(".len()..]
                    .strip_suffix(')')
                    .ok_or_else(|| bad(what))?;
                for item in body.split(',') {
                    let v = item
                        .trim()
                        .strip_prefix("set_field:")
                        .ok_or_else(|| bad(what))?;
                    let (v, field) = v.rsplit_once("->").ok_or_else(|| bad(what))?;
                    let (v, m) = match v.split_once('/') {
                        Some((v, m)) => (v.trim(), Some(m.trim())),
                        None => (v.trim(), None),
                    };
                    match field.trim() {
                        "ct_mark" => {
                            let int = |s: &str| {
                                parse_int(s, u128::from(u32::MAX))
                                    .map(|x| x as u32)
                                    .ok_or_else(|| bad("a 32-bit ct_mark value[/mask]"))
                            };
                            let m = m.map_or(Ok(u32::MAX), int)?;
                            ct.mark = Some((int(v)? & m, m));
                        }
                        "ct_label" => {
                            let int = |s: &str| {
                                parse_int(s, u128::MAX)
                                    .ok_or_else(|| bad("a 128-bit ct_label value[/mask]"))
                            };
                            let m = m.map_or(Ok(u128::MAX), int)?;
                            ct.label = Some((int(v)? & m, m));
                        }
                        _ => return Err(bad(what)),
                    }
                }
            }
            _ => return Err(bad("commit, zone=N, table=N, nat or exec(...)")),
        }
    }
    Ok(ct)
}

/// Parses an `add-group` string.
pub fn parse_group(s: &str) -> Result<Group, ParseError> {
    let toks = split_top(s, 0);
    let mut id = None;
    let mut kind = None;
    let mut fields = Vec::new();
    let mut buckets: Vec<(Tok<'_>, Vec<Tok<'_>>)> = Vec::new();
    for tok in toks {
        if let Some(rest) = tok.s.strip_prefix("bucket=") {
            let first = Tok {
                off: tok.off + 7,
                s: rest,
            };
            buckets.push((tok, vec![first]));
            continue;
        }
        if let Some((_, b)) = buckets.last_mut() {
            b.push(tok);
            continue;
        }
        match tok.s.split_once('=') {
            Some(("group_id", v)) => {
                id = Some(parse_int(v, u128::from(u32::MAX)).ok_or(tok.err(
                    ParseErrorKind::InvalidNumber {
                        max: u128::from(u32::MAX),
                    },
                ))? as u32)
            }
            Some(("type", "all")) => kind = Some(GroupType::All),
            Some(("type", "select")) => kind = Some(GroupType::Select),
            Some(("type", _)) => {
                return Err(tok.err(ParseErrorKind::Expected("type=all or type=select")))
            }
            Some(("selection_method", "hash")) => {}
            Some(("selection_method", _)) => {
                return Err(tok.err(ParseErrorKind::Expected("selection_method=hash")))
            }
            _ if tok.s.starts_with("fields(") && tok.s.ends_with(')') => {
                for f in split_top(&tok.s[7..tok.s.len() - 1], tok.off + 7) {
                    fields.push(Field::from_name(f.s).ok_or(f.err(ParseErrorKind::UnknownField))?);
                }
            }
            _ => {
                return Err(tok.err(ParseErrorKind::Expected(
                    "group_id=, type=, selection_method=, fields(...) or bucket=",
                )))
            }
        }
    }
    let whole = Tok {
        off: 0,
        s: s.trim(),
    };
    let id = id.ok_or(whole.err(ParseErrorKind::Expected("group_id=N")))?;
    let kind = kind.ok_or(whole.err(ParseErrorKind::Expected("type=all or type=select")))?;
    let mut out = Vec::with_capacity(buckets.len());
    for (btok, mut parts) in buckets {
        let mut weight = 100u16;
        while let Some(p) = parts.first().copied() {
            if let Some(w) = p.s.strip_prefix("weight:") {
                weight = parse_int(w, 0xffff)
                    .ok_or(p.err(ParseErrorKind::InvalidNumber { max: 0xffff }))?
                    as u16;
            } else if p.s.starts_with("bucket_id:") {
            } else {
                break;
            }
            parts.remove(0);
        }
        if let Some(p) = parts.first_mut() {
            if let Some(a) = p.s.strip_prefix("actions=") {
                p.off += 8;
                p.s = a;
            }
        }
        if parts.is_empty() {
            return Err(btok.err(ParseErrorKind::Expected("actions in the bucket")));
        }
        out.push(Bucket {
            weight,
            actions: parse_action_toks(&parts)?,
        });
    }
    Ok(Group {
        id,
        kind,
        fields,
        buckets: out,
    })
}

/// Prints a match (`ip,nw_dst=10.0.0.0/24`), protocol shorthand first.
pub fn format_match(m: &Match) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut skip_proto = false;
    let mut skip_type = false;
    let (ty, tym) = m.get(Field::DlType);
    let (proto, protom) = m.get(Field::NwProto);
    if tym == 0xffff {
        let exact_proto = (protom == 0xff).then_some(proto as u8);
        if let Some((n, _, p)) = SHORTHANDS
            .iter()
            .find(|(_, t, p)| u128::from(*t) == ty && p.is_some() && *p == exact_proto)
            .or_else(|| {
                SHORTHANDS
                    .iter()
                    .find(|(_, t, p)| u128::from(*t) == ty && p.is_none())
            })
        {
            parts.push(n.to_string());
            skip_type = true;
            skip_proto = p.is_some();
        }
    }
    for (f, v, mask) in m.fields() {
        if (f == Field::DlType && skip_type) || (f == Field::NwProto && skip_proto) {
            continue;
        }
        parts.push(format!("{}={}", f.name(), format_value(f, v, mask)));
    }
    parts.join(",")
}

/// Prints one action.
pub fn format_action(a: &Action) -> String {
    match a {
        Action::Output(p) => format!("output:{p}"),
        Action::InPort => "IN_PORT".into(),
        Action::Drop => "drop".into(),
        Action::Local => "LOCAL".into(),
        Action::Controller { max_len: 0 } => "CONTROLLER".into(),
        Action::Controller { max_len } => format!("controller:{max_len}"),
        Action::Normal => "NORMAL".into(),
        Action::GotoTable(t) => format!("goto_table:{t}"),
        Action::Resubmit { port, table } => match (port, table) {
            (Some(p), None) => format!("resubmit:{p}"),
            (p, t) => format!(
                "resubmit({},{})",
                p.map(|p| p.to_string()).unwrap_or_default(),
                t.map(|t| t.to_string()).unwrap_or_default()
            ),
        },
        Action::SetField { field, value, mask } => {
            let (value, mask) = (&u128::from(*value), &u128::from(*mask));
            let short = match field {
                Field::DlSrc => "mod_dl_src",
                Field::DlDst => "mod_dl_dst",
                Field::NwSrc => "mod_nw_src",
                Field::NwDst => "mod_nw_dst",
                Field::TpSrc => "mod_tp_src",
                Field::TpDst => "mod_tp_dst",
                Field::NwTtl => "mod_nw_ttl",
                _ => "",
            };
            if !short.is_empty() && *mask == field.max_value() {
                format!("{short}:{}", format_value(*field, *value, *mask))
            } else {
                format!(
                    "set_field:{}->{}",
                    format_value(*field, *value, *mask),
                    field.name()
                )
            }
        }
        Action::DecTtl => "dec_ttl".into(),
        Action::Group(g) => format!("group:{g}"),
        Action::Ct(ct) => format_ct(ct),
        Action::TunnelPush => "tnl_push".into(),
        Action::TunnelPop => "tnl_pop".into(),
    }
}

/// Prints `ct_state` bits the way OVS's trace does (`new|trk|dnat`).
pub fn format_ct_state(st: u8) -> String {
    let names: Vec<&str> = crate::flow::key::ct_state::NAMES
        .iter()
        .filter(|(_, b)| st & b != 0)
        .map(|(n, _)| *n)
        .collect();
    if names.is_empty() {
        "0".into()
    } else {
        names.join("|")
    }
}

/// Prints a `ct(...)` action.
pub fn format_ct(ct: &CtAction) -> String {
    let mut args = Vec::new();
    if ct.commit {
        args.push("commit".to_string());
    }
    if ct.zone != 0 {
        args.push(format!("zone={}", ct.zone));
    }
    if let Some(t) = ct.table {
        args.push(format!("table={t}"));
    }
    if let Some(nat) = &ct.nat {
        match (nat.kind, nat.addrs) {
            (Some(k), Some((a, b))) => {
                let mut s = format!("nat({}={a}", if k == NatKind::Src { "src" } else { "dst" });
                if a != b {
                    let _ = write!(s, "-{b}");
                }
                if let Some((p, q)) = nat.ports {
                    let _ = write!(s, ":{p}");
                    if p != q {
                        let _ = write!(s, "-{q}");
                    }
                }
                s.push(')');
                args.push(s);
            }
            _ => args.push("nat".into()),
        }
    }
    let mut exec = Vec::new();
    if let Some((v, m)) = ct.mark {
        if m == u32::MAX {
            exec.push(format!("set_field:{v:#x}->ct_mark"));
        } else {
            exec.push(format!("set_field:{v:#x}/{m:#x}->ct_mark"));
        }
    }
    if let Some((v, m)) = ct.label {
        if m == u128::MAX {
            exec.push(format!("set_field:{v:#x}->ct_label"));
        } else {
            exec.push(format!("set_field:{v:#x}/{m:#x}->ct_label"));
        }
    }
    if !exec.is_empty() {
        args.push(format!("exec({})", exec.join(",")));
    }
    if args.is_empty() {
        "ct".into()
    } else {
        format!("ct({})", args.join(","))
    }
}

/// Prints an action list (`drop` when empty).
pub fn format_actions(actions: &[Action]) -> String {
    if actions.is_empty() {
        return "drop".into();
    }
    actions
        .iter()
        .map(format_action)
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints a flow spec in `add-flow` syntax.
pub fn format_spec(s: &FlowSpec) -> String {
    let mut out = String::new();
    if s.cookie != 0 {
        let _ = write!(out, "cookie={:#x},", s.cookie);
    }
    let _ = write!(out, "table={},", s.table);
    if s.idle_timeout != 0 {
        let _ = write!(out, "idle_timeout={},", s.idle_timeout);
    }
    if s.hard_timeout != 0 {
        let _ = write!(out, "hard_timeout={},", s.hard_timeout);
    }
    let _ = write!(out, "priority={}", s.priority);
    let m = format_match(&s.m);
    if !m.is_empty() {
        out.push(',');
        out.push_str(&m);
    }
    let _ = write!(out, " actions={}", format_actions(&s.actions));
    out
}

/// Prints a rule as a `dump-flows` line at time `now`.
pub fn format_rule(r: &Rule, now: Nanos) -> String {
    flow_entry(r, now).line()
}

/// A rule and its counters as the control API shows them (`dump-flows`).
pub fn flow_entry(r: &Rule, now: Nanos) -> sluice_api::flows::FlowEntry {
    let s = &r.spec;
    let age = now.saturating_sub(r.created);
    let idle = now.saturating_sub(r.created.max(r.stats.last_hit()));
    sluice_api::flows::FlowEntry {
        table: s.table,
        priority: s.priority,
        cookie: s.cookie,
        n_packets: r.stats.packets(),
        n_bytes: r.stats.bytes(),
        duration_ms: age / 1_000_000,
        idle_age_s: idle / 1_000_000_000,
        idle_timeout: s.idle_timeout,
        hard_timeout: s.hard_timeout,
        match_: format_match(&s.m),
        actions: format_actions(&s.actions),
    }
}

/// Prints a group in `add-group`/`dump-groups` syntax.
pub fn format_group(g: &Group) -> String {
    let mut out = format!("group_id={},type=", g.id);
    match g.kind {
        GroupType::All => out.push_str("all"),
        GroupType::Select => {
            out.push_str("select,selection_method=hash");
            if !g.fields.is_empty() {
                let names: Vec<&str> = g.fields.iter().map(|f| f.name()).collect();
                let _ = write!(out, ",fields({})", names.join(","));
            }
        }
    }
    for b in &g.buckets {
        out.push_str(",bucket=");
        if g.kind == GroupType::Select {
            let _ = write!(out, "weight:{},", b.weight);
        }
        let _ = write!(out, "actions={}", format_actions(&b.actions));
    }
    out
}

/// Prints datapath actions as `ofproto/trace` does.
pub fn format_dp_actions(actions: &[DpAction]) -> String {
    if actions.is_empty() {
        return "drop".into();
    }
    let parts: Vec<String> = actions
        .iter()
        .map(|a| match a {
            DpAction::Output(p) => format!("output:{p}"),
            DpAction::Controller { max_len } => format!("controller({max_len})"),
            DpAction::Normal => "normal".into(),
            DpAction::Set { field, value, mask } => {
                format!(
                    "set({}={})",
                    field.name(),
                    format_value(*field, *value, *mask)
                )
            }
            DpAction::Ct(ct) => format_ct(ct),
            DpAction::TunnelPush => "tnl_push".into(),
            DpAction::TunnelPop => "tnl_pop".into(),
            DpAction::Clone(inner) => format!("clone({})", format_dp_actions(inner)),
            DpAction::Drop(r) => format!("drop({})", r.key()),
        })
        .collect();
    parts.join(",")
}

/// Prints a flow mod for error messages.
pub fn format_flow_mod(fm: &FlowMod) -> String {
    match fm {
        FlowMod::Add(s) => format!("add {}", format_spec(s)),
        FlowMod::Modify {
            filter,
            strict,
            actions,
        } => format!(
            "modify{} {} actions={}",
            if *strict { "-strict" } else { "" },
            format_filter(filter, *strict),
            format_actions(actions)
        ),
        FlowMod::Delete { filter, strict } => format!(
            "delete{} {}",
            if *strict { "-strict" } else { "" },
            format_filter(filter, *strict)
        ),
        FlowMod::AddGroup(g) => format!("add-group {}", format_group(g)),
        FlowMod::DeleteGroup(id) => format!("del-groups group_id={id}"),
        FlowMod::SetMiss { table, miss } => format!("table-miss table={table} {miss:?}"),
    }
}

fn format_filter(f: &FlowFilter, strict: bool) -> String {
    let mut parts = Vec::new();
    if let Some(t) = f.table {
        parts.push(format!("table={t}"));
    }
    if strict {
        parts.push(format!("priority={}", f.priority));
    }
    if f.cookie_mask != 0 {
        parts.push(format!("cookie={:#x}/{:#x}", f.cookie, f.cookie_mask));
    }
    let m = format_match(&f.m);
    if !m.is_empty() {
        parts.push(m);
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::program::RuleStats;
    use std::sync::Arc;

    fn round_trip(s: &str) -> FlowSpec {
        let a = parse_flow(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let printed = format_spec(&a);
        let b = parse_flow(&printed).unwrap_or_else(|e| panic!("{printed}: {e}"));
        assert_eq!(a, b, "{s} -> {printed}");
        a
    }

    #[test]
    fn example_flow_parses() {
        let s = round_trip(
            "table=0,priority=100,ip,nw_dst=10.0.0.0/24,tcp,tp_dst=80 actions=mod_dl_dst:aa:bb:cc:dd:ee:ff,output:2",
        );
        assert_eq!(s.priority, 100);
        assert_eq!(s.m.get(Field::NwDst), (0x0a00_0000, 0xffff_ff00));
        assert_eq!(s.m.get(Field::TpDst), (80, 0xffff));
        assert_eq!(s.m.get(Field::NwProto), (6, 0xff));
        assert_eq!(
            s.actions,
            vec![
                Action::SetField {
                    field: Field::DlDst,
                    value: 0xaabb_ccdd_eeff,
                    mask: 0xffff_ffff_ffff
                },
                Action::Output(PortNo(2))
            ]
        );
        assert_eq!(
            format_match(&s.m),
            "tcp,nw_dst=10.0.0.0/24,tp_dst=80",
            "shorthand first, canonical order"
        );
    }

    #[test]
    fn every_match_field_round_trips() {
        let cases = [
            "in_port=3",
            "in_port=LOCAL",
            "recirc_id=0x2",
            "dl_src=01:00:00:00:00:00/01:00:00:00:00:00",
            "dl_dst=aa:bb:cc:dd:ee:ff",
            "dl_type=0x88cc",
            "vlan_tci=0x1005/0x1fff",
            "ip,nw_src=192.168.0.0/255.255.0.255",
            "ip,nw_dst=10.1.2.3",
            "ip,nw_proto=47",
            "ip,nw_tos=16",
            "ip,nw_ttl=1",
            "ip,ip_frag=later",
            "ipv6,ip_frag=not_later",
            "ipv6,ipv6_src=fe80::1/64",
            "ipv6,ipv6_dst=2001:db8::1",
            "udp,tp_src=53",
            "sctp6,tp_dst=0x100/0xff00",
            "tcp,tcp_flags=+syn-ack",
            "tcp,tcp_flags=0x800/0x800",
            "icmp,icmp_type=8,icmp_code=0",
            "icmp6,icmp_type=135",
            "arp,arp_op=2,arp_spa=10.0.0.1,arp_tpa=10.0.0.0/8",
            "arp,arp_sha=02:00:00:00:00:01,arp_tha=00:00:00:00:00:00",
            "tun_id=0x1234/0xffff",
            "tun_src=172.16.0.1,tun_dst=172.16.0.2",
            "tun_gnv_class=0x102,tun_gnv_type=0x80,tun_metadata0=0xdead",
            "ct_state=+trk+est-new",
            "ct_state=0x21/0x21",
            "ct_zone=7,ct_mark=0x1/0x1",
            "ct_label=0x1/0x1",
            "ct_label=0xffeeddccbbaa99887766554433221100",
            "reg0=0x5/0xff,reg1=1,reg2=2,reg3=3,reg4=4,reg5=5,reg6=6,reg7=0xffffffff",
            "metadata=0xabcdef",
        ];
        for c in cases {
            let s = round_trip(&format!("priority=5,{c} actions=drop"));
            assert!(s.m.fields().count() >= 1, "{c}");
        }
    }

    #[test]
    fn every_action_round_trips() {
        let cases = [
            "output:2",
            "3",
            "output:LOCAL",
            "in_port",
            "local",
            "normal",
            "controller",
            "controller:128",
            "goto_table:5",
            "resubmit(,3)",
            "resubmit(2,4)",
            "resubmit:7",
            "mod_dl_src:02:00:00:00:00:09",
            "mod_dl_dst:aa:bb:cc:dd:ee:ff",
            "mod_nw_src:1.2.3.4",
            "mod_nw_dst:5.6.7.8",
            "mod_tp_src:1000",
            "mod_tp_dst:2000",
            "mod_nw_ttl:9",
            "set_field:0x5/0xff->reg3",
            "set_field:10.0.0.9->tun_dst",
            "set_field:0x99->tun_id",
            "set_field:0x1->metadata",
            "load:0x3->NXM_NX_REG0[0..7]",
            "load:1->reg7[]",
            "dec_ttl",
            "group:4",
            "ct",
            "ct(commit,zone=5,table=3)",
            "ct(nat)",
            "ct(commit,nat(src=1.1.1.1-1.1.1.9:100-200))",
            "ct(commit,zone=3,exec(set_field:0x2a->ct_mark))",
            "ct(commit,exec(set_field:0x1/0xf->ct_mark))",
            "ct(commit,exec(set_field:0x1234567890abcdef1122->ct_label))",
            "ct(commit,exec(set_field:0x2->ct_mark,set_field:0x10/0xf0->ct_label))",
            "ct(nat(dst=10.0.0.1:80))",
            "tnl_push",
            "tnl_pop",
            "drop",
        ];
        for c in cases {
            let s = round_trip(&format!("table=1,priority=5 actions={c}"));
            assert!(s.actions.len() <= 1, "{c}");
        }
        let s = round_trip("actions=load:0x3->NXM_NX_REG0[8..15]");
        assert_eq!(
            s.actions,
            vec![Action::SetField {
                field: Field::Reg0,
                value: 0x300,
                mask: 0xff00
            }]
        );
    }

    #[test]
    fn dump_line_parses_back() {
        let spec = parse_flow("cookie=0x1f,table=3,idle_timeout=10,priority=100,ip,nw_dst=10.0.0.0/24 actions=output:2")
            .expect("parse");
        let rule = Rule {
            spec: spec.clone(),
            created: 1_000_000_000,
            stats: Arc::new(RuleStats::default()),
        };
        rule.stats.hit(2, 120, 2_000_000_000);
        let line = format_rule(&rule, 3_234_000_000);
        assert_eq!(
            line,
            " cookie=0x1f, duration=2.234s, table=3, n_packets=2, n_bytes=120, idle_timeout=10, idle_age=1, priority=100,ip,nw_dst=10.0.0.0/24 actions=output:2"
        );
        assert_eq!(parse_flow(&line).expect("dump line parses"), spec);
    }

    #[test]
    fn contradictory_flows_are_refused_and_consistent_repeats_accepted() {
        let e = parse_flow("reg0=1,reg0=2 actions=drop").expect_err("reg0 twice");
        assert_eq!(e.kind, ParseErrorKind::Conflict("reg0".into()));
        assert_eq!(e.column, 8, "{e}");
        assert!(
            e.to_string()
                .starts_with("reg0=2: conflicts with an earlier reg0"),
            "{e}"
        );
        let e = parse_flow("ip,arp actions=drop").expect_err("two ethertypes");
        assert_eq!(e.kind, ParseErrorKind::Conflict("dl_type".into()));
        let e = parse_flow("ip,nw_dst=10.0.0.0/8,nw_dst=10.1.0.0/16 actions=drop")
            .expect_err("two masks");
        assert!(matches!(e.kind, ParseErrorKind::Conflict(_)), "{e}");
        let e = parse_flow("priority=1,priority=2,ip actions=drop").expect_err("priority twice");
        assert_eq!(e.kind, ParseErrorKind::Conflict("priority=1".into()));
        let e = parse_flow("table=1,ip,table=2 actions=drop").expect_err("table twice");
        assert_eq!(e.kind, ParseErrorKind::Conflict("table=1".into()));
        // The same constraint twice is not a contradiction.
        let f = parse_flow("ip,dl_type=0x0800,reg0=1,reg0=1,priority=5,priority=5 actions=drop")
            .expect("consistent repeats");
        assert_eq!(f.priority, 5);
        assert!(f.m.is_exact(Field::DlType, 0x0800));
        let f = parse_flow("tcp,ip actions=drop").expect("tcp implies ip");
        assert!(f.m.is_exact(Field::NwProto, 6));
    }

    #[test]
    fn action_lists_are_bounded() {
        let many = |n: usize| {
            (0..n)
                .map(|i| format!("output:{}", i % 60 + 1))
                .collect::<Vec<_>>()
                .join(",")
        };
        let f = parse_flow(&format!("ip actions={}", many(MAX_ACTIONS))).expect("at the limit");
        assert_eq!(f.actions.len(), MAX_ACTIONS);
        let e = parse_flow(&format!("ip actions={}", many(20_001))).expect_err("over the limit");
        assert_eq!(e.kind, ParseErrorKind::TooManyActions { count: 20_001 });
        assert!(e.to_string().contains("at most 4096"), "{e}");
        let e = parse_group(&format!(
            "group_id=1,type=all,bucket={}",
            many(MAX_ACTIONS + 1)
        ))
        .expect_err("a bucket over the limit");
        assert!(
            matches!(e.kind, ParseErrorKind::TooManyActions { .. }),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_column() {
        let e = parse_flow("table=0,nw_dst=10.0.0.300 actions=drop").expect_err("bad ip");
        assert_eq!(e.column, 9);
        assert_eq!(
            e.to_string(),
            "nw_dst=10.0.0.300: invalid IPv4 address (expected a.b.c.d, a.b.c.d/N or a.b.c.d/w.x.y.z) at column 9"
        );
        let e = parse_flow("priority=1,ip,nw_dst=10.0.0.1").expect_err("no actions");
        assert_eq!(e.kind, ParseErrorKind::MissingActions);
        let e = parse_flow("priority=1, dl_src=aa:bb:cc:dd:ee actions=drop").expect_err("mac");
        assert_eq!((e.column, e.kind), (13, ParseErrorKind::InvalidMac));
        let e = parse_flow("nw_dst=1.2.3.4 actions=drop").expect_err("prereq");
        assert_eq!(e.column, 1);
        assert!(e.to_string().contains("nw_dst needs dl_type=0x0800"), "{e}");
        let e = parse_flow("ip actions=output:1,frobnicate").expect_err("action");
        assert_eq!((e.column, e.kind), (21, ParseErrorKind::UnknownAction));
        let e = parse_flow("ip actions=set_field:1->nw_proto").expect_err("read-only");
        assert_eq!(e.kind, ParseErrorKind::ReadOnly(Field::NwProto));
        let e = parse_flow("ip,bogus=1 actions=drop").expect_err("field");
        assert_eq!((e.column, e.kind), (4, ParseErrorKind::UnknownField));
        let e = parse_flow("table=255 actions=drop").expect_err("table");
        assert_eq!(e.column, 1);
        let e = parse_flow("ip actions=drop,output:1").expect_err("drop");
        assert_eq!(e.kind, ParseErrorKind::DropNotAlone);
        let e = parse_flow("actions=ct(commit,zone=x)").expect_err("ct");
        assert_eq!(e.column, 19);
        let e = parse_flow("actions=ct(commit,exec(set_field:1->reg0))").expect_err("exec");
        assert!(e.to_string().contains("ct_mark or ct_label"), "{e}");
        let e = parse_flow("actions=ct(commit,exec(set_field:0x100000000->ct_mark))")
            .expect_err("mark width");
        assert!(e.to_string().contains("32-bit ct_mark"), "{e}");
    }

    #[test]
    fn groups_round_trip() {
        let g = parse_group(
            "group_id=1,type=select,selection_method=hash,fields(ip_src,tp_src),bucket=actions=output:1,bucket=weight:10,actions=mod_dl_dst:02:00:00:00:00:01,output:2",
        )
        .expect("group");
        assert_eq!(g.id, 1);
        assert_eq!(g.kind, GroupType::Select);
        assert_eq!(g.fields, vec![Field::NwSrc, Field::TpSrc]);
        assert_eq!(g.buckets.len(), 2);
        assert_eq!(g.buckets[1].weight, 10);
        assert_eq!(g.buckets[1].actions.len(), 2);
        assert_eq!(parse_group(&format_group(&g)).expect("reparse"), g);
        let all = parse_group("group_id=2,type=all,bucket=output:1,bucket=output:2").expect("all");
        assert_eq!(parse_group(&format_group(&all)).expect("reparse"), all);
        let e = parse_group("group_id=2,type=any,bucket=output:1").expect_err("type");
        assert_eq!(e.column, 12);
    }

    #[test]
    fn filters_take_cookie_masks() {
        let f = parse_filter("table=2,cookie=0x10/0xf0,ip").expect("filter");
        assert_eq!((f.table, f.cookie, f.cookie_mask), (Some(2), 0x10, 0xf0));
        let f = parse_filter("cookie=0x1/-1").expect("filter");
        assert_eq!(f.cookie_mask, u64::MAX);
        assert!(parse_flow("cookie=0x1/-1 actions=drop").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in "[a-z_0-9=,.:/()+\\-> \\[\\]x]{0,60}") {
            let _ = parse_flow(&s);
            let _ = parse_filter(&s);
            let _ = parse_group(&s);
            let _ = parse_packet(&s);
        }

        #[test]
        fn keyword_soup_never_panics(parts in proptest::collection::vec(proptest::sample::select(vec![
            "table=", "priority=", "ip", "tcp", "nw_dst=", "10.0.0.1/", "actions=", "ct(", ")", "nat(",
            "src=", "1.2.3.4-", ":", "resubmit(", ",", "load:", "->", "reg0[", "..", "]", "bucket=",
            "group_id=1", "type=select", "fields(", "0x", "-1", "+trk", "weight:", "set_field:", "/",
        ]), 0..16)) {
            let s: String = parts.concat();
            let _ = parse_flow(&s);
            let _ = parse_filter(&s);
            let _ = parse_group(&s);
        }
    }

    mod random_round_trip {
        use super::*;
        use crate::flow::key::Prereq;
        use proptest::prelude::*;

        /// (dl_type, nw_proto) contexts that satisfy different prerequisites.
        const CONTEXTS: [(Option<u16>, Option<u8>); 7] = [
            (None, None),
            (Some(0x0800), None),
            (Some(0x0800), Some(6)),
            (Some(0x0800), Some(1)),
            (Some(0x86dd), Some(17)),
            (Some(0x86dd), Some(58)),
            (Some(0x0806), None),
        ];

        fn allowed(f: Field, ctx: (Option<u16>, Option<u8>)) -> bool {
            let (ty, proto) = ctx;
            let ip = matches!(ty, Some(0x0800) | Some(0x86dd));
            match f.prereq() {
                Prereq::None => !matches!(f, Field::DlType | Field::NwProto),
                Prereq::Ipv4 => ty == Some(0x0800),
                Prereq::Ip => ip && f != Field::NwProto,
                Prereq::Ipv6 => ty == Some(0x86dd),
                Prereq::Arp => ty == Some(0x0806),
                Prereq::L4Ports => ip && matches!(proto, Some(6) | Some(17) | Some(132)),
                Prereq::Tcp => ip && proto == Some(6),
                Prereq::Icmp => matches!(
                    (ty, proto),
                    (Some(0x0800), Some(1)) | (Some(0x86dd), Some(58))
                ),
            }
        }

        fn spec() -> impl Strategy<Value = FlowSpec> {
            (
                0usize..CONTEXTS.len(),
                proptest::collection::vec(
                    (
                        0usize..Field::ALL.len(),
                        any::<u128>(),
                        any::<u128>(),
                        any::<bool>(),
                    ),
                    0..6,
                ),
                proptest::collection::vec(
                    (
                        0usize..Field::ALL.len(),
                        any::<u128>(),
                        any::<u128>(),
                        0u8..8,
                    ),
                    0..4,
                ),
                (
                    0u8..255,
                    any::<u16>(),
                    any::<u64>(),
                    any::<u16>(),
                    any::<u16>(),
                ),
            )
                .prop_map(
                    |(ctx, fields, acts, (table, priority, cookie, idle, hard))| {
                        let c = CONTEXTS[ctx];
                        let mut m = Match::ANY;
                        if let Some(t) = c.0 {
                            m.set_exact(Field::DlType, u128::from(t));
                        }
                        if let Some(p) = c.1 {
                            m.set_exact(Field::NwProto, u128::from(p));
                        }
                        for (i, v, mask, exact) in fields {
                            let f = Field::ALL[i];
                            if allowed(f, c) {
                                let mask = if exact {
                                    f.max_value()
                                } else {
                                    mask & f.max_value()
                                };
                                m.set(f, v, mask);
                            }
                        }
                        let actions = acts
                            .into_iter()
                            .map(|(i, v, mask, kind)| {
                                let f = Field::ALL[i];
                                match kind {
                                    0 if f.writable() => Action::SetField {
                                        field: f,
                                        value: (v & mask & f.max_value()) as u64,
                                        mask: (mask & f.max_value()) as u64,
                                    },
                                    1 => Action::Output(PortNo(v as u16)),
                                    2 => Action::Resubmit {
                                        port: None,
                                        table: Some((v % 255) as u8),
                                    },
                                    3 => Action::Group(v as u32),
                                    4 => Action::Controller { max_len: v as u16 },
                                    5 => Action::Ct(Box::new(CtAction {
                                        commit: v & 1 == 1,
                                        zone: mask as u16,
                                        table: (v & 2 == 2).then_some((v >> 8) as u8 % 255),
                                        nat: None,
                                        mark: None,
                                        label: (v & 4 == 4).then_some((v, u128::MAX)),
                                    })),
                                    6 => Action::DecTtl,
                                    _ => Action::Normal,
                                }
                            })
                            .collect();
                        FlowSpec {
                            table,
                            priority,
                            m,
                            actions,
                            cookie,
                            idle_timeout: idle,
                            hard_timeout: hard,
                        }
                    },
                )
        }

        proptest! {
            #[test]
            fn printed_specs_parse_back(s in spec()) {
                let text = format_spec(&s);
                let back = parse_flow(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                prop_assert_eq!(back, s, "{}", text);
            }
        }
    }
}
