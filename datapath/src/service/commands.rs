//! Control commands of the Service table: `dump-services`, the
//! `service-update` structured method (a JSON [`ServiceUpdate`] batch, the
//! control agent's interface; also a text command taking the JSON as one
//! argument) and `lb-trace`, which shows, without changing any state,
//! the conntrack decision (an existing connection and its translation) and
//! the load-balancing decision a new connection would get.
//!
//! Thread-safety: handlers hold [`Services`] / [`Conntrack`] handles.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::Deserialize as _;
use serde_json::Value;

use super::{ServiceError, ServiceUpdate, Services};
use crate::conntrack::nat::Tuple;
use crate::conntrack::{ConnKey, Conntrack};
use crate::ctl::registry::{Registry, RegistryError};
use crate::time::clock_ns;

/// Applies a JSON update (`params` is the batch object, or an array whose
/// first element is).
pub fn apply_json(
    services: &Services,
    ct: Option<&Conntrack>,
    params: &Value,
) -> Result<Value, String> {
    let batch = match params {
        Value::Array(a) => a.first().unwrap_or(&Value::Null),
        v => v,
    };
    // Deserialised from the borrowed tree: a 100k-Service batch is a
    // ~32 MB request, and cloning its parsed tree first cost seconds.
    let update = ServiceUpdate::deserialize(batch)
        .map_err(|e| ServiceError::Json(e.to_string()).to_string())?;
    let s = services.apply(&update, ct).map_err(|e| e.to_string())?;
    serde_json::to_value(s).map_err(|e| e.to_string())
}

/// Registers the Service commands.
pub fn register_commands(
    reg: &Registry,
    services: Services,
    ct: Option<Conntrack>,
) -> Result<(), RegistryError> {
    let (s, c) = (services.clone(), ct.clone());
    reg.register(
        "dump-services",
        "",
        0,
        0,
        Arc::new(move |_| Ok(s.dump_with(c.as_ref()))),
    )?;
    let (s, c) = (services.clone(), ct.clone());
    reg.register_method(
        "service-update",
        Arc::new(move |p| apply_json(&s, c.as_ref(), p)),
    )?;
    let (s, c) = (services.clone(), ct.clone());
    reg.register(
        "service-update",
        "JSON-BATCH",
        1,
        1,
        Arc::new(move |a| {
            let v: Value = serde_json::from_str(&a[0])
                .map_err(|e| ServiceError::Json(e.to_string()).to_string())?;
            apply_json(&s, c.as_ref(), &v).map(|r| format!("{r}"))
        }),
    )?;
    reg.register(
        "lb-trace",
        "tcp|udp|sctp SRC[:SPORT] DST PORT [zone=N]",
        4,
        5,
        Arc::new(move |a| {
            let proto = match a[0].as_str() {
                "tcp" => 6,
                "udp" => 17,
                "sctp" => 132,
                p => return Err(format!("unknown protocol {p:?}: use tcp, udp or sctp")),
            };
            let ip = |s: &str| {
                s.parse::<Ipv4Addr>()
                    .map(u32::from)
                    .map_err(|_| format!("invalid address {s:?}: use A.B.C.D"))
            };
            let port = |s: &str| {
                s.parse::<u16>()
                    .map_err(|_| format!("invalid port {s:?}: use 1-65535"))
            };
            let (src, sport) = match a[1].split_once(':') {
                Some((s, p)) => (ip(s)?, Some(port(p)?)),
                None => (ip(&a[1])?, None),
            };
            let (dst, dport) = (ip(&a[2])?, port(&a[3])?);
            let zone = match a.get(4) {
                None => 0,
                Some(z) => z
                    .strip_prefix("zone=")
                    .and_then(|z| z.parse::<u16>().ok())
                    .ok_or_else(|| format!("invalid {z:?}: use zone=N"))?,
            };
            let mut out = String::new();
            if let (Some(ct), Some(sport)) = (&ct, sport) {
                let key = ConnKey {
                    zone,
                    proto,
                    tuple: Tuple {
                        src,
                        dst,
                        sport,
                        dport,
                    },
                };
                match ct.describe(&key, clock_ns()) {
                    Some(line) => {
                        return Ok(format!(
                            "conntrack: existing connection, translated by its entry:\n  {line}\n"
                        ))
                    }
                    None => out += "conntrack: no entry, a new connection:\n",
                }
            }
            out += &services.trace(proto, src, dst, dport);
            Ok(out)
        }),
    )
}
