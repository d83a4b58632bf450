//! What the unixctl server accepts and sends: validation of one decoded
//! message as a request ([`Request::from_value`]: `method` is a string, `id`
//! is present, it is not a reply), the same validation over the message's
//! raw text (`RawRequest`, which the server uses so that nothing is decoded
//! before it is charged to the memory budget), and the reply encoding
//! ([`encode_reply`]: a text error becomes a JSON string).
//!
//! Thread-safety: plain values without I/O.

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// A validated JSON-RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The request id, echoed in the reply; `Value::Null` for a notification.
    pub id: Value,
    /// The command or method name.
    pub method: String,
    /// `params` as sent; a missing or null `params` becomes an empty array.
    pub params: Value,
}

impl Request {
    /// Validates a decoded message.
    ///
    /// # Errors
    /// A sentence describing why the message is not a usable request, and
    /// the message's id if it had one (so the error reply can carry it).
    pub fn from_value(value: Value) -> Result<Self, (Value, String)> {
        let Value::Object(mut object) = value else {
            return Err((Value::Null, "message is not a JSON object".to_owned()));
        };
        let id = object.remove("id").unwrap_or(Value::Null);
        let result = object.remove("result").unwrap_or(Value::Null);
        let error = object.remove("error").unwrap_or(Value::Null);
        if !result.is_null() || !error.is_null() {
            return Err((
                id,
                "received a reply, but the control socket only accepts requests".to_owned(),
            ));
        }
        let method = match object.remove("method") {
            Some(Value::String(method)) => method,
            Some(_) => return Err((id, "\"method\" is not a JSON string".to_owned())),
            None => return Err((id, "request has no \"method\"".to_owned())),
        };
        if id.is_null() {
            return Err((
                id,
                format!("\"{method}\" was sent as a notification (null id); send it with an id to get a reply"),
            ));
        }
        let params = match object.remove("params") {
            None | Some(Value::Null) => Value::Array(Vec::new()),
            Some(params) => params,
        };
        Ok(Self { id, method, params })
    }
}

/// A request's members as raw JSON text borrowed from the message, so that
/// nothing is decoded before the server knows what it is for (and has
/// charged its memory budget for what must be decoded). Public for the
/// fuzz targets (`fuzz/src/control_rpc.rs`), which replay the server's
/// request path.
#[derive(Debug, Default)]
pub struct RawRequest<'a> {
    id: Option<&'a RawValue>,
    method: Option<&'a RawValue>,
    params: Option<&'a RawValue>,
    result: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
}

/// A validated request whose `params` are still raw text (`None`: absent
/// or null, which means no arguments).
#[derive(Debug)]
pub struct RawValidated<'a> {
    pub id: Value,
    pub method: String,
    pub params: Option<&'a RawValue>,
}

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|r| r.get().trim() == "null")
}

impl<'a> RawRequest<'a> {
    /// Splits one message into its members without decoding them.
    /// `Ok(None)`: the message is valid JSON but not an object.
    ///
    /// # Errors
    /// The text is not valid JSON.
    pub fn parse(frame: &'a [u8]) -> Result<Option<Self>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(frame);
        let parsed = de::Deserializer::deserialize_any(&mut de, RawRequestVisitor)?;
        de.end()?;
        Ok(parsed)
    }

    /// Validates like [`Request::from_value`] (same checks, order and
    /// texts); the id is decoded with `decode`, which may refuse.
    pub fn validate(
        self,
        decode: &mut dyn FnMut(&RawValue) -> Result<Value, String>,
    ) -> Result<RawValidated<'a>, (Value, String)> {
        let id = match self.id {
            Some(raw) if !is_null(Some(raw)) => decode(raw).map_err(|e| (Value::Null, e))?,
            _ => Value::Null,
        };
        if !is_null(self.result) || !is_null(self.error) {
            return Err((
                id,
                "received a reply, but the control socket only accepts requests".to_owned(),
            ));
        }
        let method = match self.method {
            Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                Ok(method) => method,
                Err(_) => return Err((id, "\"method\" is not a JSON string".to_owned())),
            },
            None => return Err((id, "request has no \"method\"".to_owned())),
        };
        if id.is_null() {
            return Err((
                id,
                format!("\"{method}\" was sent as a notification (null id); send it with an id to get a reply"),
            ));
        }
        let params = self.params.filter(|raw| !is_null(Some(raw)));
        Ok(RawValidated { id, method, params })
    }
}

struct RawRequestVisitor;

impl<'de> Visitor<'de> for RawRequestVisitor {
    type Value = Option<RawRequest<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut request = RawRequest::default();
        // A repeated member keeps its last value, as a decoded object does.
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "id" => &mut request.id,
                "method" => &mut request.method,
                "params" => &mut request.params,
                "result" => &mut request.result,
                "error" => &mut request.error,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(Some(request))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(None)
    }
}

/// Encodes the reply to request `id`: `Ok` fills `result`, `Err` fills
/// `error` (as a JSON string), the other is null.
pub fn encode_reply(id: &Value, outcome: &Result<Value, String>) -> Vec<u8> {
    match outcome {
        Ok(result) => crate::message::encode_reply(id, Ok(result)),
        Err(message) => crate::message::encode_reply(id, Err(&Value::String(message.clone()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_validation() {
        let ok = Request::from_value(json!({"id": 3, "method": "version", "params": []})).unwrap();
        assert_eq!(ok.method, "version");
        assert_eq!(ok.id, json!(3));
        let no_params = Request::from_value(json!({"id": "x", "method": "m"})).unwrap();
        assert_eq!(no_params.params, json!([]));

        let (id, err) = Request::from_value(json!([1, 2])).unwrap_err();
        assert_eq!(
            (id, err.as_str()),
            (Value::Null, "message is not a JSON object")
        );
        let (id, err) = Request::from_value(json!({"id": 4, "method": 5})).unwrap_err();
        assert_eq!(id, json!(4));
        assert!(err.contains("not a JSON string"), "{err}");
        let (_, err) =
            Request::from_value(json!({"id": 4, "result": "x", "error": null})).unwrap_err();
        assert!(err.contains("only accepts requests"), "{err}");
        let (_, err) =
            Request::from_value(json!({"id": null, "method": "m", "params": []})).unwrap_err();
        assert!(err.contains("notification"), "{err}");
    }

    #[test]
    fn raw_validation_matches_decoded_validation() {
        for text in [
            r#"{"id":3,"method":"version","params":[]}"#,
            r#"{"id":"x","method":"m"}"#,
            r#"{"id":"x","method":"m","params":null}"#,
            r#"{"id":1,"method":"m","params":{"args":["a"]}}"#,
            r#"{"id":4,"method":5}"#,
            r#"{"id":4,"result":"x","error":null}"#,
            r#"{"id":4,"result":null,"error":"e"}"#,
            r#"{"id":null,"method":"m","params":[]}"#,
            r#"{"method":"m","params":[]}"#,
            r#"{"id":[1,{"a":2}],"params":[]}"#,
            r#"{"id":1,"method":"a","method":"b","extra":{"x":[1,2]}}"#,
        ] {
            let decoded = Request::from_value(serde_json::from_str(text).unwrap());
            let raw = RawRequest::parse(text.as_bytes())
                .unwrap()
                .expect("an object")
                .validate(&mut |r| Ok(serde_json::from_str(r.get()).unwrap()));
            match (decoded, raw) {
                (Ok(d), Ok(r)) => {
                    assert_eq!(d.id, r.id, "{text}");
                    assert_eq!(d.method, r.method, "{text}");
                    let params: Value = r
                        .params
                        .map_or(json!([]), |p| serde_json::from_str(p.get()).unwrap());
                    assert_eq!(d.params, params, "{text}");
                }
                (Err(d), Err(r)) => assert_eq!(d, r, "{text}"),
                (d, r) => panic!("{text}: decoded {d:?}, raw {r:?}"),
            }
        }
        assert!(RawRequest::parse(b"[1,2]").unwrap().is_none());
        assert!(RawRequest::parse(b"{\"a\":tru}").is_err());
        // A refused id decode is reported with a null id.
        let (id, err) = RawRequest::parse(br#"{"id":[0,0],"method":"m"}"#)
            .unwrap()
            .unwrap()
            .validate(&mut |_| Err("no memory".to_owned()))
            .unwrap_err();
        assert_eq!((id, err.as_str()), (Value::Null, "no memory"));
    }

    #[test]
    fn reply_encoding_matches_unixctl() {
        let ok = encode_reply(&json!(0), &Ok(json!("hello\n")));
        assert_eq!(ok, br#"{"id":0,"result":"hello\n","error":null}"#);
        let err = encode_reply(&json!(1), &Err("boom\n".to_owned()));
        assert_eq!(err, br#"{"id":1,"result":null,"error":"boom\n"}"#);
    }
}
