//! JSON-RPC 1.0 as ovsdb-server speaks it (RFC 7047 §4): the shared
//! `sluice-jsonrpc` framing and messages, plus the one rule OVSDB adds
//! (`params` is an array).
//!
//! [`Framer`] splits the incoming byte stream into messages under the
//! server's size limit (`--max-message-size`); [`parse_message`] classifies
//! one decoded value. Plain data, no I/O, thread-safe.

use serde_json::Value;

pub use sluice_jsonrpc::framing::{FrameError, Framer, Limits};
pub use sluice_jsonrpc::message::{Message, MessageError};

/// Classifies a decoded value as an OVSDB JSON-RPC message.
///
/// # Errors
/// A sentence for the peer if the value is not a JSON-RPC message or a
/// request's `params` is not an array.
pub fn parse_message(v: Value) -> Result<Message, String> {
    let message = Message::from_json(v).map_err(|e| e.to_string())?;
    match &message {
        Message::Request { method, params, .. } | Message::Notification { method, params }
            if !params.is_array() =>
        {
            Err(format!("\"params\" of {method} is not an array"))
        }
        _ => Ok(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ovsdb_params_must_be_arrays() {
        assert!(matches!(
            parse_message(json!({"method":"echo","params":[],"id":"x"})),
            Ok(Message::Request { .. })
        ));
        assert!(matches!(
            parse_message(json!({"method":"update","params":[1],"id":null})),
            Ok(Message::Notification { .. })
        ));
        assert!(matches!(
            parse_message(json!({"result":{},"error":null,"id":1})),
            Ok(Message::Reply { .. })
        ));
        assert_eq!(
            parse_message(json!({"method":"x","params":{}})),
            Err("\"params\" of x is not an array".to_owned())
        );
        assert!(parse_message(json!({"foo":1})).is_err());
        assert!(parse_message(json!([1])).is_err());
    }
}
