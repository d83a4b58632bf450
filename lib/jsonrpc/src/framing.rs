//! Stream framing: splitting a byte stream into JSON-RPC messages.
//!
//! OVSDB (RFC 7047 §4) and OVS's unixctl send JSON values back to back on a
//! stream socket with no length prefix and no delimiter (whitespace between
//! them is allowed). [`Framer`] finds the end of each top-level object or
//! array incrementally: every byte is scanned exactly once, however the
//! stream is split across reads, so a peer that trickles a message byte by
//! byte costs O(n), not O(n²).
//!
//! Limits ([`Limits`]) bound what a peer can make us hold: a message longer
//! than `max_message_bytes` is refused as soon as the limit is crossed (not
//! when it completes), and so is nesting deeper than `max_depth`. Such a
//! framing error, or a top-level value that is not an object or array, puts
//! the stream out of sync for good: [`Framer::next_frame`] keeps returning
//! the same [`FrameError`] and the connection must be closed. Messages
//! completed before the error are still returned first. A frame that is
//! delimited correctly but is not valid JSON ([`FrameError::InvalidJson`]
//! from [`Framer::next_value`]) does not desynchronise the stream; the caller
//! decides whether to go on.
//!
//! Thread-safety: plain values without I/O; each connection owns its own
//! [`Framer`].

use std::io::{self, Read};

use serde_json::Value;

/// The default bound on nesting depth. `serde_json` itself refuses to parse
/// values nested 128 levels deep or more, so this limit rejects nothing that
/// could have been decoded, and says why.
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// Bounds on one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted message, in bytes, from its opening bracket to its
    /// closing one.
    pub max_message_bytes: usize,
    /// Deepest accepted nesting of arrays and objects (the message itself
    /// is depth 1).
    pub max_depth: usize,
}

impl Limits {
    /// `max_message_bytes` with the default depth limit.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            max_message_bytes,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// Why a byte stream could not be split into JSON-RPC messages. After any
/// variant but [`FrameError::InvalidJson`] the stream is out of sync and the
/// connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// One message grew past the configured size limit.
    #[error("message exceeds the {limit}-byte limit; send smaller messages (split the request) or raise the limit")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// One message nests arrays and objects deeper than the limit.
    #[error("message nests arrays and objects more than {limit} levels deep; flatten the request")]
    TooDeep {
        /// The depth limit.
        limit: usize,
    },
    /// The stream contained something other than a JSON object or array
    /// between messages.
    #[error("expected a JSON-RPC message (a JSON object) but found byte 0x{byte:02x}; the peer is not speaking JSON-RPC")]
    NotAnObject {
        /// The offending byte.
        byte: u8,
    },
    /// A delimited message is not valid JSON (from [`Framer::next_value`]
    /// only; the stream stays in sync).
    #[error("malformed JSON in message: {0}")]
    InvalidJson(String),
}

impl FrameError {
    /// True if the stream is out of sync after this error (everything but
    /// [`FrameError::InvalidJson`]).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::InvalidJson(_))
    }
}

/// Incremental splitter of a byte stream into top-level JSON values.
///
/// Use: after each [`Framer::push`], call [`Framer::next_frame`] (raw bytes)
/// or [`Framer::next_value`] (decoded) until it returns `Ok(None)`.
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
    limits: Limits,
    failed: Option<FrameError>,
    /// Scratch space for [`Framer::read_value`], allocated on first use.
    chunk: Vec<u8>,
}

impl Framer {
    /// A framer that rejects any single message longer than `max_message`
    /// bytes, with the default depth limit.
    pub fn new(max_message: usize) -> Self {
        Self::with_limits(Limits::new(max_message))
    }

    /// A framer with explicit limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            buf: Vec::new(),
            consumed: 0,
            scan: 0,
            start: None,
            depth: 0,
            in_string: false,
            escape: false,
            limits,
            failed: None,
            chunk: Vec::new(),
        }
    }

    /// The limits this framer enforces.
    pub fn limits(&self) -> Limits {
        self.limits
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

    /// Reads from `reader` (blocking, in chunks of up to 64 KiB) until the
    /// next message is complete and returns it decoded; `Ok(None)` at a
    /// clean end of stream. Bytes read beyond that message stay buffered
    /// for the next call, so use one framer per stream.
    ///
    /// # Errors
    /// The reader's I/O errors (`Interrupted` is retried); a
    /// [`FrameError`] as `InvalidData`; `UnexpectedEof` if the stream ends
    /// inside a message.
    pub fn read_value(&mut self, reader: &mut impl Read) -> io::Result<Option<Value>> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(64 * 1024, 0);
        let outcome = self.read_value_with(reader, &mut chunk);
        self.chunk = chunk;
        outcome
    }

    fn read_value_with(
        &mut self,
        reader: &mut impl Read,
        chunk: &mut [u8],
    ) -> io::Result<Option<Value>> {
        loop {
            if let Some(value) = self
                .next_value()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                return Ok(Some(value));
            }
            if !self.fill(reader, chunk)? {
                return Ok(None);
            }
        }
    }

    /// Reads from `reader` (blocking, in chunks of up to 64 KiB) until the
    /// next message is complete and returns its bytes, undecoded (for a
    /// caller that decodes it itself); `Ok(None)` at a clean end of
    /// stream. Errors as [`Framer::read_value`]'s.
    pub fn read_frame(&mut self, reader: &mut impl Read) -> io::Result<Option<&[u8]>> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(64 * 1024, 0);
        let outcome = loop {
            match self.next_frame_range() {
                Err(e) => break Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                Ok(Some(r)) => break Ok(Some(r)),
                Ok(None) => {}
            }
            match self.fill(reader, &mut chunk) {
                Ok(true) => {}
                Ok(false) => break Ok(None),
                Err(e) => break Err(e),
            }
        };
        self.chunk = chunk;
        Ok(outcome?.map(|r| &self.buf[r]))
    }

    /// One read into the buffer: false at a clean end of stream.
    fn fill(&mut self, reader: &mut impl Read, chunk: &mut [u8]) -> io::Result<bool> {
        loop {
            match reader.read(chunk) {
                Ok(0) if self.has_partial() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the stream ended in the middle of a message",
                    ))
                }
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.push(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next complete message, decoded.
    ///
    /// # Errors
    /// As [`Framer::next_frame`], plus [`FrameError::InvalidJson`] for a
    /// delimited message that does not parse (the stream stays in sync).
    pub fn next_value(&mut self) -> Result<Option<Value>, FrameError> {
        match self.next_frame_ref()? {
            None => Ok(None),
            Some(frame) => serde_json::from_slice(frame)
                .map(Some)
                .map_err(|e| FrameError::InvalidJson(e.to_string())),
        }
    }

    /// The next complete message, or `None` if more bytes are needed.
    ///
    /// # Errors
    /// [`FrameError`] if a message is too large or too deep or the stream
    /// holds something other than JSON objects; the stream is then out of
    /// sync and every later call returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        Ok(self.next_frame_ref()?.map(<[u8]>::to_vec))
    }

    /// Bytes received and held that do not belong to a message already
    /// returned (the partial message and anything after it).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// Bytes of memory the framer's buffer has reserved.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The buffer's capacity after [`Framer::push`] of `n` more bytes
    /// (consumed bytes are dropped first; a full buffer doubles), so a
    /// caller can account for the memory before it is taken.
    pub fn capacity_after_push(&self, n: usize) -> usize {
        let needed = self.buf.len() - self.consumed + n;
        let capacity = self.buf.capacity();
        if needed <= capacity {
            capacity
        } else {
            needed.max(capacity.saturating_mul(2)).max(8)
        }
    }

    /// As [`Framer::next_frame`], but borrows the message from the
    /// framer's buffer instead of copying it (it stays valid until the next
    /// call that takes `&mut self`).
    ///
    /// # Errors
    /// As [`Framer::next_frame`].
    pub fn next_frame_ref(&mut self) -> Result<Option<&[u8]>, FrameError> {
        Ok(self.next_frame_range()?.map(|r| &self.buf[r]))
    }

    /// Where in the buffer the next complete message lies (as
    /// [`Framer::next_frame_ref`]).
    ///
    /// The scanner state lives in locals while it runs and is stored back
    /// when it stops. Inside a string it jumps to the next `"` or `\\` with
    /// `memchr2` instead of looking at every byte (an OVSDB transaction is
    /// mostly string text: UUIDs, names, addresses), and it looks only at
    /// the bytes the size limit allows, so the limit is checked once per
    /// call rather than per byte. The outcome is the byte-by-byte scanner's
    /// (`tests::reference_scan` and the proptest comparing the two).
    fn next_frame_range(&mut self) -> Result<Option<std::ops::Range<usize>>, FrameError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let len = self.buf.len();
        let mut scan = self.scan;
        let start = match self.start {
            Some(start) => start,
            None => {
                // Between messages: whitespace, then an object or array.
                loop {
                    let Some(&byte) = self.buf.get(scan) else {
                        self.scan = scan;
                        return Ok(None);
                    };
                    scan += 1;
                    match byte {
                        b' ' | b'\t' | b'\n' | b'\r' => self.consumed = scan,
                        b'{' | b'[' => {
                            self.start = Some(scan - 1);
                            self.depth = 1;
                            self.in_string = false;
                            self.escape = false;
                            break scan - 1;
                        }
                        _ => {
                            self.scan = scan;
                            return Err(self.fail(FrameError::NotAnObject { byte }));
                        }
                    }
                }
            }
        };
        // Bytes at `start + max_message_bytes` and beyond cannot belong to
        // an accepted message.
        let limit_end = start.saturating_add(self.limits.max_message_bytes);
        let end = len.min(limit_end);
        let bytes = &self.buf[..end];
        let max_depth = self.limits.max_depth;
        let (mut depth, mut in_string, mut escape) = (self.depth, self.in_string, self.escape);
        while scan < end {
            if in_string {
                if escape {
                    escape = false;
                    scan += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &bytes[scan..]) {
                    None => scan = end,
                    Some(i) => {
                        let at = scan + i;
                        if bytes[at] == b'\\' {
                            escape = true;
                        } else {
                            in_string = false;
                        }
                        scan = at + 1;
                    }
                }
                continue;
            }
            let byte = bytes[scan];
            scan += 1;
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max_depth {
                        self.scan = scan;
                        return Err(self.fail(FrameError::TooDeep { limit: max_depth }));
                    }
                }
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.start = None;
                        self.depth = 0;
                        self.in_string = false;
                        self.escape = false;
                        self.scan = scan;
                        self.consumed = scan;
                        return Ok(Some(start..scan));
                    }
                }
                _ => {}
            }
        }
        self.scan = scan;
        self.depth = depth;
        self.in_string = in_string;
        self.escape = escape;
        if len > limit_end {
            let limit = self.limits.max_message_bytes;
            return Err(self.fail(FrameError::TooLarge { limit }));
        }
        Ok(None)
    }

    fn fail(&mut self, error: FrameError) -> FrameError {
        self.failed = Some(error.clone());
        error
    }
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
    fn capacity_after_push_predicts_the_buffer_growth() {
        let mut f = Framer::new(1 << 30);
        for n in [0, 1, 7, 100, 64 * 1024, 64 * 1024, 1 << 20, 3, 5 << 20] {
            let predicted = f.capacity_after_push(n);
            f.push(&vec![b' '; n]);
            assert_eq!(f.capacity(), predicted, "after pushing {n}");
            assert!(f.next_frame().unwrap().is_none());
        }
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
    fn nesting_deeper_than_the_limit_is_refused() {
        let limits = Limits {
            max_message_bytes: 1024,
            max_depth: 3,
        };
        let mut f = Framer::with_limits(limits);
        assert_eq!(feed_all(&mut f, &[b"[[[1]]] {\"a\":{\"b\":[]}}"]).len(), 2);
        // Brackets inside strings do not count.
        assert_eq!(feed_all(&mut f, &[b"[\"[[[[[\"]"]).len(), 1);
        f.push(b"[[[[");
        assert_eq!(f.next_frame(), Err(FrameError::TooDeep { limit: 3 }));
        assert!(FrameError::TooDeep { limit: 3 }.is_fatal());
    }

    #[test]
    fn read_value_reads_one_message_at_a_time_from_a_stream() {
        let mut f = Framer::new(1024);
        let mut stream: &[u8] = br#"{"a":1} [2] {"b":"#;
        assert_eq!(f.read_value(&mut stream).unwrap(), Some(json!({"a": 1})));
        assert_eq!(f.read_value(&mut stream).unwrap(), Some(json!([2])));
        let err = f.read_value(&mut stream).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut f = Framer::new(1024);
        assert_eq!(f.read_value(&mut &b" \n"[..]).unwrap(), None);
        let err = f.read_value(&mut &b"x"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("not speaking JSON-RPC"), "{err}");
    }

    #[test]
    fn invalid_json_in_a_frame_keeps_the_stream_in_sync() {
        let mut f = Framer::new(1024);
        f.push(br#"{"a":tru} {"b":1}"#);
        let err = f.next_value().unwrap_err();
        assert!(matches!(err, FrameError::InvalidJson(_)), "{err}");
        assert!(!err.is_fatal());
        assert_eq!(f.next_value(), Ok(Some(json!({"b": 1}))));
        assert_eq!(f.next_value(), Ok(None));
    }

    #[test]
    fn splits_back_to_back_messages_in_any_chunking() {
        let text = br#"{"method":"echo","params":["a}{\"b"],"id":1} {"id":null,"method":"x","params":[]}[1]"#;
        for chunk in 1..text.len() {
            let mut p = Framer::new(1 << 20);
            let mut got = Vec::new();
            for c in text.chunks(chunk) {
                p.push(c);
                while let Some(v) = p.next_value().unwrap() {
                    got.push(v);
                }
            }
            assert_eq!(got.len(), 3, "chunk size {chunk}");
            assert_eq!(got[0]["params"][0], "a}{\"b");
            assert!(!p.has_partial());
        }
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        let mut p = Framer::new(16);
        p.push(b"hello");
        assert_eq!(p.next_value(), Err(FrameError::NotAnObject { byte: b'h' }));
        let mut p = Framer::new(16);
        p.push(br#"{"method":"aaaaaaaaaaaaaaaaaaaaaaaaa"#);
        assert_eq!(p.next_value(), Err(FrameError::TooLarge { limit: 16 }));
        let mut p = Framer::new(16);
        p.push(br#"{"method":"aaaaaaaaaaaaaaaaaaaaaaaaa"}"#);
        assert_eq!(p.next_value(), Err(FrameError::TooLarge { limit: 16 }));
        let mut p = Framer::new(100);
        p.push(br#"{"a":tru}"#);
        assert!(matches!(p.next_value(), Err(FrameError::InvalidJson(_))));
    }

    /// The byte-by-byte scanner the framer had before it skipped string
    /// text with `memchr2` and checked the size limit once per call: the
    /// oracle of `scanner_equals_the_byte_by_byte_one`. The frames of
    /// `wire` in order, then how the stream ends: `Ok(true)` inside a
    /// message, `Ok(false)` between messages, or the fatal error.
    fn reference_scan(wire: &[u8], limits: Limits) -> (Vec<Vec<u8>>, Result<bool, FrameError>) {
        let mut frames = Vec::new();
        let (mut start, mut depth, mut in_string, mut escape) = (None, 0usize, false, false);
        for (pos, &byte) in wire.iter().enumerate() {
            let Some(s) = start else {
                match byte {
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    b'{' | b'[' => {
                        start = Some(pos);
                        depth = 1;
                    }
                    _ => return (frames, Err(FrameError::NotAnObject { byte })),
                }
                continue;
            };
            if pos + 1 - s > limits.max_message_bytes {
                let limit = limits.max_message_bytes;
                return (frames, Err(FrameError::TooLarge { limit }));
            }
            if in_string {
                if escape {
                    escape = false;
                } else if byte == b'\\' {
                    escape = true;
                } else if byte == b'"' {
                    in_string = false;
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > limits.max_depth {
                        let limit = limits.max_depth;
                        return (frames, Err(FrameError::TooDeep { limit }));
                    }
                }
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        frames.push(wire[s..=pos].to_vec());
                        start = None;
                    }
                }
                _ => {}
            }
        }
        (frames, Ok(start.is_some()))
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
            let mut p = Framer::new(1 << 20);
            let mut got = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain(std::iter::once(wire.len())) {
                p.push(&wire[last..c]);
                last = c;
                while let Some(v) = p.next_value().unwrap() {
                    got.push(v);
                }
            }
            proptest::prop_assert_eq!(got, msgs);
        }

        /// The framer (any chunking, the limits crossed anywhere) gives the
        /// frames and the end state the byte-by-byte scanner gives.
        #[test]
        fn scanner_equals_the_byte_by_byte_one(
            wire in proptest::collection::vec(
                proptest::sample::select(b"{}[]\"\\ \nax:,".to_vec()), 0..160),
            cuts in proptest::collection::vec(0usize..200, 0..8),
            max_message_bytes in 1usize..48,
            max_depth in 1usize..5,
        ) {
            let limits = Limits { max_message_bytes, max_depth };
            let (want_frames, want_end) = reference_scan(&wire, limits);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut p = Framer::with_limits(limits);
            let (mut frames, mut error) = (Vec::new(), None);
            let mut last = 0;
            'feed: for c in cuts.into_iter().chain(std::iter::once(wire.len())) {
                p.push(&wire[last..c]);
                last = c;
                loop {
                    match p.next_frame() {
                        Ok(Some(frame)) => frames.push(frame),
                        Ok(None) => break,
                        Err(e) => {
                            error = Some(e);
                            break 'feed;
                        }
                    }
                }
            }
            let end = match error {
                Some(e) => Err(e),
                None => Ok(p.has_partial()),
            };
            proptest::prop_assert_eq!(frames, want_frames);
            proptest::prop_assert_eq!(end, want_end);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut p = Framer::new(128);
            p.push(&bytes);
            for _ in 0..bytes.len() + 1 {
                match p.next_value() {
                    Ok(Some(_)) | Err(FrameError::InvalidJson(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
