//! JSON-RPC 1.0 stream framing and messages, as spoken by OVS's unixctl.
//!
//! A unixctl stream carries JSON objects back to back with no length prefix
//! and no delimiter (whitespace between them is allowed). [`Framer`] finds
//! the end of each top-level object incrementally: every byte is scanned
//! exactly once, however the stream is split across reads, so a client that
//! trickles a message byte by byte costs O(n), not O(n²). A message larger
//! than the configured limit, or a top-level value that is not an object or
//! array, is a framing error after which the stream cannot be resynchronised
//! and the connection must be closed.
//!
//! [`Request::from_value`] validates one decoded message (`method` is a
//! string, `id` is present, it is not a reply) and [`encode_reply`] writes the
//! reply `{"id":…,"result":…,"error":…}` with exactly one of `result`/`error`
//! non-null.
//!
//! Thread-safety: plain values; each connection owns its own [`Framer`].

use serde::Serialize;
use serde_json::Value;

/// Why a byte stream could not be split into JSON-RPC messages. After any
/// of these the connection is out of sync and must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// One message grew past the configured size limit.
    #[error("message exceeds the {limit}-byte limit of the control socket; split the request into smaller ones")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The stream contained something other than a JSON object between
    /// messages.
    #[error("expected a JSON-RPC message (a JSON object) but found byte 0x{byte:02x}; the client is not speaking JSON-RPC")]
    NotAnObject {
        /// The offending byte.
        byte: u8,
    },
}

/// Incremental splitter of a byte stream into top-level JSON values.
///
/// Use: after each [`Framer::push`], call [`Framer::next_frame`] until it
/// returns `Ok(None)`. Messages completed before a framing error are still
/// returned first, so a valid request followed by garbage in the same read
/// is executed before the error is reported.
///
/// Invariant: `buf[..consumed]` belongs to messages already returned (or
/// whitespace); `buf[..scan]` has been scanned; if `start` is `Some(s)`, a
/// message begins at `buf[s]` and `depth`/`in_string`/`escape` describe the
/// scanner state at `scan`.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    consumed: usize,
    scan: usize,
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escape: bool,
    max_message: usize,
    failed: Option<FrameError>,
}

impl Framer {
    /// A framer that rejects any single message longer than `max_message`
    /// bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: Vec::new(),
            consumed: 0,
            scan: 0,
            start: None,
            depth: 0,
            in_string: false,
            escape: false,
            max_message,
            failed: None,
        }
    }

    /// True if part of a message has been received but not its end.
    pub fn has_partial(&self) -> bool {
        self.start.is_some()
    }

    /// Drops consumed bytes and gives back the buffer's memory beyond
    /// 64 KiB (after a large message, so a long-lived connection does not
    /// keep its size).
    pub fn compact(&mut self) {
        self.push(&[]);
        self.buf.shrink_to(64 * 1024);
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.scan -= self.consumed;
            if let Some(start) = self.start.as_mut() {
                *start -= self.consumed;
            }
            self.consumed = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, or `None` if more bytes are needed.
    ///
    /// # Errors
    /// [`FrameError`] if a message is too large or the stream holds
    /// something other than JSON objects; the stream is then out of sync and
    /// every later call returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        while self.scan < self.buf.len() {
            let byte = self.buf[self.scan];
            let pos = self.scan;
            self.scan += 1;
            let Some(start) = self.start else {
                match byte {
                    b' ' | b'\t' | b'\n' | b'\r' => self.consumed = self.scan,
                    b'{' | b'[' => {
                        self.start = Some(pos);
                        self.depth = 1;
                    }
                    _ => return Err(self.fail(FrameError::NotAnObject { byte })),
                }
                continue;
            };
            if pos + 1 - start > self.max_message {
                let limit = self.max_message;
                return Err(self.fail(FrameError::TooLarge { limit }));
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if byte == b'\\' {
                    self.escape = true;
                } else if byte == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.start = None;
                        self.consumed = self.scan;
                        return Ok(Some(self.buf[start..self.scan].to_vec()));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn fail(&mut self, error: FrameError) -> FrameError {
        self.failed = Some(error.clone());
        error
    }
}

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

#[derive(Serialize)]
struct Reply<'a> {
    id: &'a Value,
    result: &'a Value,
    error: &'a Value,
}

/// Encodes the reply to request `id`: `Ok` fills `result`, `Err` fills
/// `error` (as a JSON string), the other is null.
pub fn encode_reply(id: &Value, outcome: &Result<Value, String>) -> Vec<u8> {
    let null = Value::Null;
    let error;
    let reply = match outcome {
        Ok(result) => Reply {
            id,
            result,
            error: &null,
        },
        Err(message) => {
            error = Value::String(message.clone());
            Reply {
                id,
                result: &null,
                error: &error,
            }
        }
    };
    // Serialising a struct of `Value`s into a Vec cannot fail: there are
    // no non-string map keys and no I/O.
    serde_json::to_vec(&reply).unwrap_or_else(|_| {
        br#"{"id":null,"result":null,"error":"internal error encoding reply"}"#.to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Pushes each chunk and collects every frame it completes.
    fn feed_all(framer: &mut Framer, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk);
            while let Some(frame) = framer.next_frame().expect("valid stream") {
                out.push(frame);
            }
        }
        out
    }

    #[test]
    fn compact_gives_back_a_large_message_buffer_and_keeps_a_partial_one() {
        let mut f = Framer::new(8 << 20);
        let big = format!(r#"{{"id":1,"params":["{}"]}}"#, "x".repeat(4 << 20));
        let partial = br#"{"id":2,"#;
        f.push(big.as_bytes());
        f.push(partial);
        assert_eq!(
            f.next_frame().expect("frame").map(|b| b.len()),
            Some(big.len())
        );
        assert!(f.next_frame().expect("partial").is_none());
        f.compact();
        assert!(f.buf.capacity() <= 64 * 1024, "{}", f.buf.capacity());
        f.push(br#""params":[]}"#);
        assert_eq!(
            f.next_frame().expect("frame").as_deref(),
            Some(&br#"{"id":2,"params":[]}"#[..])
        );
    }

    #[test]
    fn one_message_one_read() {
        let mut f = Framer::new(1024);
        let frames = feed_all(&mut f, &[br#"{"id":0,"method":"version","params":[]}"#]);
        assert_eq!(
            frames,
            vec![br#"{"id":0,"method":"version","params":[]}"#.to_vec()]
        );
        assert!(!f.has_partial());
    }

    #[test]
    fn message_split_across_every_byte() {
        let msg = br#"{"id":7,"method":"add-flow","params":["a}b{\"c]\\"]}"#;
        let mut f = Framer::new(1024);
        let mut frames = Vec::new();
        for (i, b) in msg.iter().enumerate() {
            let got = feed_all(&mut f, &[std::slice::from_ref(b)]);
            if i + 1 < msg.len() {
                assert!(got.is_empty(), "completed early at byte {i}");
                assert!(f.has_partial());
            }
            frames.extend(got);
        }
        assert_eq!(frames, vec![msg.to_vec()]);
        let v: Value = serde_json::from_slice(&frames[0]).unwrap();
        assert_eq!(v["params"][0], "a}b{\"c]\\");
    }

    #[test]
    fn several_messages_in_one_read_and_straddling() {
        let mut f = Framer::new(1024);
        let frames = feed_all(
            &mut f,
            &[
                b" {\"id\":1,\"method\":\"a\"}\n{\"id\":2,\"method\":\"b\"}{\"id\":3,",
                b"\"method\":\"c\"}  ",
            ],
        );
        let ids: Vec<i64> = frames
            .iter()
            .map(|fr| {
                serde_json::from_slice::<Value>(fr).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert!(!f.has_partial());
    }

    #[test]
    fn garbage_after_a_message_is_reported_after_the_message() {
        let mut f = Framer::new(1024);
        f.push(b"{\"id\":1,\"method\":\"a\"} hello");
        assert_eq!(
            f.next_frame(),
            Ok(Some(b"{\"id\":1,\"method\":\"a\"}".to_vec()))
        );
        assert_eq!(f.next_frame(), Err(FrameError::NotAnObject { byte: b'h' }));
        // Once out of sync, always out of sync.
        f.push(b"{\"id\":2}");
        assert_eq!(f.next_frame(), Err(FrameError::NotAnObject { byte: b'h' }));
    }

    #[test]
    fn oversize_message_is_rejected_before_it_completes() {
        let mut f = Framer::new(16);
        f.push(b"{\"id\":1,\"method\":\"");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 16 }));
        // Exactly at the limit is accepted.
        let mut f = Framer::new(15);
        let msg = b"{\"a\":\"0123456\"}";
        assert_eq!(msg.len(), 15);
        assert_eq!(feed_all(&mut f, &[msg]).len(), 1);
    }

    #[test]
    fn buffer_is_compacted_between_pushes() {
        let mut f = Framer::new(64);
        for i in 0..1000 {
            let msg = format!("{{\"id\":{i},\"method\":\"m\"}}");
            assert_eq!(feed_all(&mut f, &[msg.as_bytes()]).len(), 1);
            assert!(f.buf.len() <= 64, "buffer grew to {}", f.buf.len());
        }
        f.push(b"");
        assert!(f.buf.is_empty());
        assert_eq!(f.scan, 0);
    }

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
    fn reply_encoding_matches_unixctl() {
        let ok = encode_reply(&json!(0), &Ok(json!("hello\n")));
        assert_eq!(ok, br#"{"id":0,"result":"hello\n","error":null}"#);
        let err = encode_reply(&json!(1), &Err("boom\n".to_owned()));
        assert_eq!(err, br#"{"id":1,"result":null,"error":"boom\n"}"#);
    }
}
