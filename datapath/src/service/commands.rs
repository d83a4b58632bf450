//! Control methods of the Service table, served as
//! [`sluice_api::service`] types: `service-update` (an atomic
//! [`ServiceUpdate`] batch, the control agent's interface), `dump-services`
//! and `lb-trace`, which shows, without changing any state, the conntrack
//! decision (an existing connection and its translation) and the
//! load-balancing decision a new connection would get.
//!
//! Thread-safety: handlers hold [`Services`] / [`Conntrack`] handles.

use sluice_api::service::{DumpServices, LbTrace, LbTraceRequest, UpdateServices};
use sluice_api::{ApiError, Text};

use super::{ServiceError, ServiceUpdate, Services, UpdateSummary};
use crate::conntrack::nat::Tuple;
use crate::conntrack::{ConnKey, Conntrack};
use crate::ctl::registry::{Registry, RegistryError};
use crate::ctl::typed::register;
use crate::time::clock_ns;

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

/// Applies one batch.
///
/// # Errors
/// The refusal, as an [`ApiError`]; nothing was applied.
pub fn apply(
    services: &Services,
    ct: Option<&Conntrack>,
    update: &ServiceUpdate,
) -> Result<UpdateSummary, ApiError> {
    Ok(services.apply(update, ct)?)
}

/// The `lb-trace` explanation.
pub fn lb_trace(services: &Services, ct: Option<&Conntrack>, r: &LbTraceRequest) -> String {
    let (src, dst) = (u32::from(r.src), u32::from(r.dst));
    let proto = r.protocol.ipproto();
    let mut out = String::new();
    if let (Some(ct), Some(sport)) = (ct, r.sport) {
        let key = ConnKey {
            zone: r.zone,
            proto,
            tuple: Tuple {
                src,
                dst,
                sport,
                dport: r.dport,
            },
        };
        match ct.describe(&key, clock_ns()) {
            Some(line) => {
                return format!(
                    "conntrack: existing connection, translated by its entry:\n  {line}\n"
                )
            }
            None => out += "conntrack: no entry, a new connection:\n",
        }
    }
    out += &services.trace(proto, src, dst, r.dport);
    out
}

/// Registers `dump-services`, `service-update` and `lb-trace`.
///
/// # Errors
/// [`RegistryError`] if a name is already registered.
pub fn register_commands(
    reg: &Registry,
    services: Services,
    ct: Option<Conntrack>,
) -> Result<(), RegistryError> {
    let (s, c) = (services.clone(), ct.clone());
    register::<DumpServices>(reg, move |_| Ok(s.view(c.as_ref())))?;
    let (s, c) = (services.clone(), ct.clone());
    register::<UpdateServices>(reg, move |u| apply(&s, c.as_ref(), &u))?;
    register::<LbTrace>(reg, move |r| {
        Ok(Text {
            text: lb_trace(&services, ct.as_ref(), &r),
        })
    })
}
