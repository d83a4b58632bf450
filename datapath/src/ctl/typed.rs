//! Serving [`sluice_api`] methods on the control socket.
//!
//! [`register`] takes one handler per [`Method`] (typed request in, typed
//! reply or [`ApiError`] out) and serves it under the method's name and
//! every alias, two ways:
//!
//! - as a structured method: `params` is the request as a JSON object, the
//!   result the reply as JSON, an error the [`ApiError`] in its wire form
//!   (so its code survives);
//! - as a unixctl text command: the string arguments are read with the
//!   request's [`FromArgs`](sluice_api::FromArgs), the reply is rendered
//!   with [`Render`], an error is its sentence. This is what `ovs-appctl`
//!   uses, and it prints exactly what `sluicectl` prints.
//!
//! The handler runs on a control thread (never a PMD); it is shared by both
//! forms. Thread-safety: handlers must be `Send + Sync`.

use std::sync::Arc;

use serde::Deserialize as _;
use serde_json::value::RawValue;
use serde_json::Value;
use sluice_api::{ApiError, FromArgs, Method, Render};

use crate::ctl::registry::{Registry, RegistryError};

/// A typed handler.
pub type Handler<M> =
    Arc<dyn Fn(<M as Method>::Request) -> Result<<M as Method>::Reply, ApiError> + Send + Sync>;

/// Serves `M` (under its name and aliases) with `handler`.
///
/// # Errors
/// [`RegistryError`] if a name is already taken.
pub fn register<M: Method>(
    reg: &Registry,
    handler: impl Fn(M::Request) -> Result<M::Reply, ApiError> + Send + Sync + 'static,
) -> Result<(), RegistryError> {
    let handler: Handler<M> = Arc::new(handler);
    for name in std::iter::once(M::NAME).chain(M::ALIASES.iter().copied()) {
        let h = handler.clone();
        reg.register(
            name,
            M::USAGE,
            M::ARGS.0,
            M::ARGS.1,
            Arc::new(move |args: &[String]| {
                let request = M::Request::from_args(args).map_err(|e| e.message)?;
                h(request).map(|r| r.render()).map_err(|e| e.message)
            }),
        )?;
        register_structured::<M>(reg, name, handler.clone())?;
    }
    Ok(())
}

/// Serves only the structured form of `M` (for names whose text form is a
/// registry built-in, such as `version`).
///
/// # Errors
/// [`RegistryError`] if the method name is already taken.
pub fn register_structured_only<M: Method>(
    reg: &Registry,
    handler: impl Fn(M::Request) -> Result<M::Reply, ApiError> + Send + Sync + 'static,
) -> Result<(), RegistryError> {
    register_structured::<M>(reg, M::NAME, Arc::new(handler))
}

fn register_structured<M: Method>(
    reg: &Registry,
    name: &str,
    h: Handler<M>,
) -> Result<(), RegistryError> {
    let run = move |request: Result<M::Request, ApiError>| {
        let reply = h(request.map_err(|e| e.to_wire())?).map_err(|e| e.to_wire())?;
        serde_json::to_value(reply)
            .map_err(|e| ApiError::failed(format!("cannot encode the reply: {e}")).to_wire())
    };
    let run = Arc::new(run);
    let r = run.clone();
    reg.register_raw_method(
        name,
        Arc::new(move |raw: &RawValue| r(parse_raw_request::<M>(raw))),
        Arc::new(move |params: &Value| run(parse_request::<M>(params))),
    )
}

/// Reads `M`'s request straight from the `params` text: an object is
/// parsed by serde's visitors into the typed request (no [`Value`] tree,
/// the cost of a large `node-commit`); anything else, and an object that
/// does not parse, goes through [`parse_request`] on the decoded value,
/// which words the error, so both paths give the same outcome.
fn parse_raw_request<M: Method>(raw: &RawValue) -> Result<M::Request, ApiError> {
    if raw.get().trim_start().starts_with('{') {
        if let Ok(request) = serde_json::from_str::<M::Request>(raw.get()) {
            return Ok(request);
        }
    }
    let value: Value = serde_json::from_str(raw.get())
        .map_err(|e| ApiError::invalid(format!("malformed JSON in request: {e}")))?;
    parse_request::<M>(&value)
}

/// Serves the structured forms of the registry's built-ins, `version` and
/// `list-commands` (their text forms are built in).
///
/// # Errors
/// [`RegistryError`] if they are already registered.
pub fn register_builtins(reg: &Registry) -> Result<(), RegistryError> {
    use sluice_api::system::{CommandInfo, CommandList, ListCommands, Version, VersionReply};
    let r = reg.clone();
    register_structured_only::<Version>(reg, move |_| {
        Ok(VersionReply {
            version: r.version().to_owned(),
        })
    })?;
    let r = reg.clone();
    register_structured_only::<ListCommands>(reg, move |_| {
        Ok(CommandList {
            commands: r
                .usages()
                .into_iter()
                .map(|(name, usage)| CommandInfo { name, usage })
                .collect(),
        })
    })
}

/// Reads `M`'s request from structured `params`: the request object, or
/// an array holding it (JSON-RPC positional form).
fn parse_request<M: Method>(params: &Value) -> Result<M::Request, ApiError> {
    let body = match params {
        Value::Array(a) if a.len() == 1 && a[0].is_object() => &a[0],
        Value::Array(a) if a.is_empty() => &Value::Null,
        v => v,
    };
    let body = if body.is_null() {
        &Value::Object(Default::default())
    } else {
        body
    };
    M::Request::deserialize(body).map_err(|e| {
        ApiError::invalid(format!(
            "invalid {} request: {e}; see sluice-api's {} type",
            M::NAME,
            std::any::type_name::<M::Request>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::registry::DispatchContext;
    use serde_json::json;
    use sluice_api::conntrack::{ConnFilter, FlushConntrack, Flushed};
    use sluice_api::ErrorCode;

    fn reg() -> Registry {
        let r = Registry::new();
        register::<FlushConntrack>(&r, |f: ConnFilter| match f.zone {
            Some(0) => Err(ApiError::not_found("zone 0 is empty")),
            z => Ok(Flushed {
                connections: u64::from(z.unwrap_or(7)),
            }),
        })
        .unwrap();
        r
    }

    fn dispatch(r: &Registry, name: &str, params: Value) -> Result<Value, String> {
        r.dispatch(name, &params, &DispatchContext { on_exit: &|| {} })
    }

    #[test]
    fn text_and_structured_forms_share_the_handler() {
        let r = reg();
        assert_eq!(
            dispatch(&r, "flush-conntrack", json!(["zone=3"])).unwrap(),
            json!("flushed 3 connections\n")
        );
        assert_eq!(
            dispatch(&r, "flush-conntrack", json!({"zone": 3})).unwrap(),
            json!({"connections": 3})
        );
        // The OVS alias answers the same way.
        assert_eq!(
            dispatch(&r, "dpctl/flush-conntrack", json!({})).unwrap(),
            json!({"connections": 7})
        );
    }

    #[test]
    fn errors_keep_their_code_in_structured_form_and_text_in_text_form() {
        let r = reg();
        let e = dispatch(&r, "flush-conntrack", json!({"zone": 0})).unwrap_err();
        assert_eq!(ApiError::from_wire(&e).code, ErrorCode::NotFound);
        let e = dispatch(&r, "flush-conntrack", json!(["zone=0"])).unwrap_err();
        assert_eq!(e, "zone 0 is empty\n");
        let e = dispatch(&r, "flush-conntrack", json!({"zone": "x"})).unwrap_err();
        let e = ApiError::from_wire(&e);
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("invalid flush-conntrack request"), "{e}");
        let e = dispatch(&r, "flush-conntrack", json!({"zone": 1, "bogus": 1})).unwrap_err();
        assert_eq!(ApiError::from_wire(&e).code, ErrorCode::InvalidArgument);
        let e = dispatch(&r, "flush-conntrack", json!(["port=1"])).unwrap_err();
        assert!(e.contains("unknown argument"), "{e}");
    }

    /// The server's path (params read from their text, never decoded)
    /// gives what the decoded path gives, errors included.
    #[test]
    fn params_read_from_text_equal_the_decoded_path() {
        let r = reg();
        let ctx = DispatchContext { on_exit: &|| {} };
        for params in [
            json!({"zone": 3}),
            json!({}),
            json!([{"zone": 5}]),
            json!({"zone": 0}),
            json!({"zone": "x"}),
            json!({"zone": 1, "bogus": 1}),
            json!({"zone": 1, "zone": 2}),
            json!([]),
        ] {
            let text = serde_json::to_string(&params).unwrap();
            let raw = RawValue::from_string(text).unwrap();
            let mut decoded = 0;
            let mut charged = 0;
            let got = r.dispatch_raw_charged(
                "flush-conntrack",
                Some(&raw),
                &ctx,
                &mut |raw| {
                    decoded += 1;
                    serde_json::from_str(raw.get()).map_err(|e| e.to_string())
                },
                &mut |_| {
                    charged += 1;
                    Ok(())
                },
            );
            assert_eq!(
                got,
                dispatch(&r, "flush-conntrack", params.clone()),
                "{params}"
            );
            if params.is_object() {
                assert_eq!((decoded, charged), (0, 1), "{params}: read from the text");
            }
        }
        // A refused charge is the reply.
        let raw = RawValue::from_string("{\"zone\":3}".into()).unwrap();
        let e = r
            .dispatch_raw_charged(
                "flush-conntrack",
                Some(&raw),
                &ctx,
                &mut |_| Ok(Value::Null),
                &mut |_| Err("out of memory".into()),
            )
            .unwrap_err();
        assert_eq!(e, "out of memory\n");
    }
}
