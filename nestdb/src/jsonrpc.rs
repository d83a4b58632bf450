//! JSON-RPC 1.0 framing as ovsdb-server speaks it (RFC 7047 §4).
//!
//! Messages are JSON objects sent back to back on a byte stream, with no delimiter.
//! [`StreamParser`] splits an incoming byte stream into complete top-level JSON values
//! incrementally (bytes may arrive in any chunking) by tracking nesting depth and string
//! escapes, then hands each complete value to `serde_json`.  A message that grows past
//! the configured size limit is an error, so a hostile peer cannot make the server
//! buffer without bound.  [`Message`] classifies requests, notifications (`id: null`)
//! and replies.  Plain data, no I/O, thread-safe.

use serde_json::{json, Value};

/// Errors from the stream parser.  After an error the stream is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    /// The peer sent a message larger than the limit.
    #[error(
        "message exceeds the {limit}-byte limit; raise --max-message-size if this is legitimate"
    )]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer sent bytes that are not JSON.
    #[error("received invalid JSON: {0}")]
    Invalid(String),
    /// The peer sent a JSON value that is not a JSON-RPC message object.
    #[error("received a JSON value that is not a JSON-RPC message: {0}")]
    NotMessage(String),
}

/// Incremental splitter of back-to-back JSON values.
#[derive(Debug)]
pub struct StreamParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    /// Start of the current value in `buf` (after leading whitespace), if begun.
    start: Option<usize>,
    depth: u32,
    in_string: bool,
    escape: bool,
    limit: usize,
    /// End of the last message returned.
    consumed: usize,
}

impl StreamParser {
    /// A parser that rejects messages longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            scanned: 0,
            start: None,
            depth: 0,
            in_string: false,
            escape: false,
            limit,
            consumed: 0,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// True when no partial message is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf[self.scanned..].iter().all(u8::is_ascii_whitespace) && self.start.is_none()
    }

    /// Returns the next complete JSON value, if one is buffered.
    pub fn next_value(&mut self) -> Result<Option<Value>, FramingError> {
        while self.scanned < self.buf.len() {
            let b = self.buf[self.scanned];
            self.scanned += 1;
            if self.start.is_none() {
                if b.is_ascii_whitespace() {
                    continue;
                }
                if b != b'{' && b != b'[' {
                    return Err(FramingError::Invalid(format!(
                        "expected '{{' at the start of a message, found {:?}",
                        b as char
                    )));
                }
                self.start = Some(self.scanned - 1);
                self.depth = 1;
                continue;
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let start = self.start.take().unwrap_or(0);
                        let end = self.scanned;
                        if end - start > self.limit {
                            return Err(FramingError::TooLarge { limit: self.limit });
                        }
                        let v = serde_json::from_slice::<Value>(&self.buf[start..end])
                            .map_err(|e| FramingError::Invalid(e.to_string()));
                        // Consumed bytes are dropped lazily (see `compact`) so that many
                        // small pipelined messages do not cost a buffer shift each.
                        self.consumed = end;
                        if self.consumed >= 64 * 1024 {
                            self.compact();
                        }
                        return v.map(Some);
                    }
                }
                _ => {}
            }
        }
        let pending = match self.start {
            Some(s) => self.buf.len() - s,
            None => 0,
        };
        if pending > self.limit {
            return Err(FramingError::TooLarge { limit: self.limit });
        }
        self.compact();
        Ok(None)
    }

    /// Drops bytes belonging to messages already returned.
    fn compact(&mut self) {
        let cut = self.start.unwrap_or(self.scanned);
        if cut == 0 {
            return;
        }
        self.buf.drain(..cut);
        self.scanned -= cut;
        if let Some(s) = &mut self.start {
            *s -= cut;
        }
        self.consumed = 0;
    }
}

/// A classified JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request expecting a reply.
    Request {
        /// Method name.
        method: String,
        /// Parameters (always an array in OVSDB).
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
        /// Error value.
        error: Value,
        /// Id of the request answered.
        id: Value,
    },
}

impl Message {
    /// Classifies a JSON value.
    pub fn from_json(v: Value) -> Result<Self, FramingError> {
        let Value::Object(mut o) = v else {
            return Err(FramingError::NotMessage(v.to_string()));
        };
        let id = o.remove("id").unwrap_or(Value::Null);
        if let Some(m) = o.remove("method") {
            let method = m
                .as_str()
                .ok_or_else(|| FramingError::NotMessage("\"method\" is not a string".into()))?
                .to_owned();
            let params = o.remove("params").unwrap_or(Value::Array(Vec::new()));
            if !params.is_array() {
                return Err(FramingError::NotMessage(format!(
                    "\"params\" of {method} is not an array"
                )));
            }
            return Ok(if id.is_null() {
                Message::Notification { method, params }
            } else {
                Message::Request { method, params, id }
            });
        }
        match (o.remove("result"), o.remove("error")) {
            (_, Some(e)) if !e.is_null() => Ok(Message::Error { error: e, id }),
            (Some(r), _) => Ok(Message::Reply { result: r, id }),
            _ => Err(FramingError::NotMessage(
                "object has neither \"method\" nor \"result\"/\"error\"".into(),
            )),
        }
    }

    /// The wire form of this message.
    pub fn to_json(&self) -> Value {
        match self {
            Message::Request { method, params, id } => {
                json!({"method": method, "params": params, "id": id})
            }
            Message::Notification { method, params } => {
                json!({"method": method, "params": params, "id": null})
            }
            Message::Reply { result, id } => json!({"result": result, "error": null, "id": id}),
            Message::Error { error, id } => json!({"result": null, "error": error, "id": id}),
        }
    }

    /// Serialises to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a serde_json::Value to a Vec cannot fail.
        serde_json::to_vec(&self.to_json()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_back_to_back_messages_in_any_chunking() {
        let text = br#"{"method":"echo","params":["a}{\"b"],"id":1} {"id":null,"method":"x","params":[]}[1]"#;
        for chunk in 1..text.len() {
            let mut p = StreamParser::new(1 << 20);
            let mut got = Vec::new();
            for c in text.chunks(chunk) {
                p.feed(c);
                while let Some(v) = p.next_value().unwrap() {
                    got.push(v);
                }
            }
            assert_eq!(got.len(), 3, "chunk size {chunk}");
            assert_eq!(got[0]["params"][0], "a}{\"b");
            assert!(p.is_idle());
        }
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        let mut p = StreamParser::new(16);
        p.feed(b"hello");
        assert!(matches!(p.next_value(), Err(FramingError::Invalid(_))));
        let mut p = StreamParser::new(16);
        p.feed(br#"{"method":"aaaaaaaaaaaaaaaaaaaaaaaaa"#);
        assert_eq!(p.next_value(), Err(FramingError::TooLarge { limit: 16 }));
        let mut p = StreamParser::new(16);
        p.feed(br#"{"method":"aaaaaaaaaaaaaaaaaaaaaaaaa"}"#);
        assert_eq!(p.next_value(), Err(FramingError::TooLarge { limit: 16 }));
        let mut p = StreamParser::new(100);
        p.feed(br#"{"a":tru}"#);
        assert!(matches!(p.next_value(), Err(FramingError::Invalid(_))));
    }

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
        assert!(Message::from_json(json!({"method":"x","params":{}})).is_err());
        assert!(Message::from_json(json!({"foo":1})).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_yields_the_same_messages(
            texts in proptest::collection::vec("[a-z{}\\[\\]\"\\\\ ]{0,12}", 1..8),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let msgs: Vec<Value> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| json!({"method": "echo", "params": [t], "id": i}))
                .collect();
            let mut wire = Vec::new();
            for m in &msgs {
                wire.extend_from_slice(&serde_json::to_vec(m).unwrap());
                wire.push(b' ');
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut p = StreamParser::new(1 << 20);
            let mut got = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain(std::iter::once(wire.len())) {
                p.feed(&wire[last..c]);
                last = c;
                while let Some(v) = p.next_value().unwrap() {
                    got.push(v);
                }
            }
            proptest::prop_assert_eq!(got, msgs);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut p = StreamParser::new(128);
            p.feed(&bytes);
            for _ in 0..bytes.len() + 1 {
                match p.next_value() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
