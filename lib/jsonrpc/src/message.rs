//! JSON-RPC 1.0 messages as OVSDB (RFC 7047 §4) and unixctl use them, and
//! their encoding.
//!
//! A [`Message`] is a request (a `method` and a non-null `id`), a
//! notification (a `method` with a null or absent `id`), a reply (`result`
//! with a null `error`) or an error reply (a non-null `error`). Classifying
//! accepts `params` of any JSON type: OVSDB requires an array and checks
//! that itself, while unixctl's structured methods also take objects.
//! Encoding writes `{"id":…,"method":…,"params":…}` for requests and
//! notifications and `{"id":…,"result":…,"error":…}` for replies, with
//! exactly one of `result`/`error` non-null, the shape `ovs-appctl` and
//! ovsdb-server send.
//!
//! Thread-safety: plain values without I/O.

use serde::Serialize;
use serde_json::Value;

/// Why a JSON value is not a JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The value is not a JSON object.
    #[error("received a JSON value that is not a JSON-RPC message (an object): {0}")]
    NotAnObject(String),
    /// `method` is present but not a string.
    #[error("received a JSON-RPC message whose \"method\" is not a string")]
    MethodNotString,
    /// The object has neither `method` nor `result`/`error`.
    #[error("received a JSON object with neither \"method\" nor \"result\"/\"error\"; it is not a JSON-RPC message")]
    Unclassifiable,
}

/// A classified JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request expecting a reply.
    Request {
        /// Method name.
        method: String,
        /// Parameters (an array in OVSDB and unixctl text commands).
        params: Value,
        /// Request id (any non-null JSON).
        id: Value,
    },
    /// A notification (`id` null or absent).
    Notification {
        /// Method name.
        method: String,
        /// Parameters.
        params: Value,
    },
    /// A successful reply.
    Reply {
        /// Result.
        result: Value,
        /// Id of the request answered.
        id: Value,
    },
    /// An error reply.
    Error {
        /// Error value (a string in unixctl, a string or an
        /// `{"error":…,"details":…}` object in OVSDB).
        error: Value,
        /// Id of the request answered.
        id: Value,
    },
}

#[derive(Serialize)]
struct RequestWire<'a> {
    id: &'a Value,
    method: &'a str,
    params: &'a Value,
}

#[derive(Serialize)]
struct ReplyWire<'a> {
    id: &'a Value,
    result: &'a Value,
    error: &'a Value,
}

impl Message {
    /// Classifies a decoded JSON value. A missing `params` becomes an empty
    /// array; a message with a `method` is a request or notification even if
    /// it also carries `result`/`error`.
    ///
    /// # Errors
    /// [`MessageError`] if the value is not a JSON-RPC message.
    pub fn from_json(v: Value) -> Result<Self, MessageError> {
        let Value::Object(mut o) = v else {
            return Err(MessageError::NotAnObject(v.to_string()));
        };
        let id = o.remove("id").unwrap_or(Value::Null);
        if let Some(m) = o.remove("method") {
            let Value::String(method) = m else {
                return Err(MessageError::MethodNotString);
            };
            let params = o.remove("params").unwrap_or(Value::Array(Vec::new()));
            return Ok(if id.is_null() {
                Message::Notification { method, params }
            } else {
                Message::Request { method, params, id }
            });
        }
        match (o.remove("result"), o.remove("error")) {
            (_, Some(e)) if !e.is_null() => Ok(Message::Error { error: e, id }),
            (Some(r), _) => Ok(Message::Reply { result: r, id }),
            _ => Err(MessageError::Unclassifiable),
        }
    }

    /// The reply to request `id` for a handler outcome: `Ok` fills `result`,
    /// `Err` fills `error`.
    pub fn reply(id: Value, outcome: Result<Value, Value>) -> Self {
        match outcome {
            Ok(result) => Message::Reply { result, id },
            Err(error) => Message::Error { error, id },
        }
    }

    /// The wire form of this message as a JSON value.
    pub fn to_json(&self) -> Value {
        // Serialising plain `Value`s into a `Value` cannot fail.
        serde_json::from_slice(&self.to_bytes()).unwrap_or(Value::Null)
    }

    /// Encodes this message (compact JSON, no delimiter).
    pub fn to_bytes(&self) -> Vec<u8> {
        let null = Value::Null;
        let encoded = match self {
            Message::Request { method, params, id } => {
                serde_json::to_vec(&RequestWire { id, method, params })
            }
            Message::Notification { method, params } => serde_json::to_vec(&RequestWire {
                id: &null,
                method,
                params,
            }),
            Message::Reply { result, id } => return encode_reply(id, Ok(result)),
            Message::Error { error, id } => return encode_reply(id, Err(error)),
        };
        // As in `encode_reply`: cannot fail.
        encoded.unwrap_or_else(|_| {
            br#"{"id":null,"result":null,"error":"internal error encoding a message"}"#.to_vec()
        })
    }
}

/// Encodes the reply to request `id` without copying the result:
/// `{"id":…,"result":…,"error":…}` with `Ok` in `result` and `Err` in
/// `error`, the other null.
pub fn encode_reply(id: &Value, outcome: Result<&Value, &Value>) -> Vec<u8> {
    let null = Value::Null;
    let (result, error) = match outcome {
        Ok(result) => (result, &null),
        Err(error) => (&null, error),
    };
    // Serialising a struct of `Value`s into a Vec cannot fail: there are
    // no non-string map keys and no I/O.
    serde_json::to_vec(&ReplyWire { id, result, error }).unwrap_or_else(|_| {
        br#"{"id":null,"result":null,"error":"internal error encoding a reply"}"#.to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_messages() {
        let m = Message::from_json(json!({"method":"echo","params":[],"id":"x"})).unwrap();
        assert!(matches!(m, Message::Request { .. }));
        let n = Message::from_json(json!({"method":"update","params":[1],"id":null})).unwrap();
        assert!(matches!(n, Message::Notification { .. }));
        let r = Message::from_json(json!({"result":{},"error":null,"id":1})).unwrap();
        assert!(matches!(r, Message::Reply { .. }));
        let e = Message::from_json(json!({"result":null,"error":"x","id":1})).unwrap();
        assert!(matches!(e, Message::Error { .. }));
        assert!(Message::from_json(json!([1])).is_err());
        assert_eq!(
            Message::from_json(json!({"method": 5, "id": 1})),
            Err(MessageError::MethodNotString)
        );
        assert_eq!(
            Message::from_json(json!({"foo":1})),
            Err(MessageError::Unclassifiable)
        );
        // Object params are kept for the layer above to judge.
        assert_eq!(
            Message::from_json(json!({"method":"x","params":{"a":1},"id":2})),
            Ok(Message::Request {
                method: "x".into(),
                params: json!({"a": 1}),
                id: json!(2)
            })
        );
        assert_eq!(
            Message::from_json(json!({"method":"x","id":2})),
            Ok(Message::Request {
                method: "x".into(),
                params: json!([]),
                id: json!(2)
            })
        );
    }

    #[test]
    fn encodes_in_the_ovs_shape_and_round_trips() {
        let cases = [
            (
                Message::Request {
                    method: "echo".into(),
                    params: json!(["a"]),
                    id: json!(1),
                },
                &br#"{"id":1,"method":"echo","params":["a"]}"#[..],
            ),
            (
                Message::Notification {
                    method: "update".into(),
                    params: json!([null]),
                },
                br#"{"id":null,"method":"update","params":[null]}"#,
            ),
            (
                Message::reply(json!(0), Ok(json!("hello\n"))),
                br#"{"id":0,"result":"hello\n","error":null}"#,
            ),
            (
                Message::reply(json!(1), Err(json!("boom\n"))),
                br#"{"id":1,"result":null,"error":"boom\n"}"#,
            ),
        ];
        for (message, wire) in cases {
            assert_eq!(message.to_bytes(), wire);
            assert_eq!(Message::from_json(message.to_json()).as_ref(), Ok(&message));
        }
    }
}
