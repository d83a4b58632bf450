//! A session's output queue: the encoded messages a client has not read yet.
//!
//! Each message stays its own buffer, in arrival order, until the socket has
//! taken all of it; writes gather up to [`MAX_SLICES`] buffers per system
//! call. The queue never copies a message after it is queued: a single
//! growing buffer (what this replaced) reallocates and copies its whole
//! content each time it doubles, so a client that stops reading cost the
//! server up to twice its backlog in memory, and freed blocks of that size
//! linger in the allocator's caches. Here what a session holds is exactly
//! [`OutQueue::len`] plus one allocation header per message, and a message's
//! memory is released as soon as it has been written.
//!
//! Not thread-safe by itself: each session's queue is owned by the server
//! loop.

use std::collections::VecDeque;
use std::io::{IoSlice, Write};

/// Most buffers handed to one `writev(2)`.
pub const MAX_SLICES: usize = 64;

/// The encoded messages queued for one client, oldest first.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already written.
    front_written: usize,
    /// Bytes queued and not yet written.
    len: usize,
}

impl OutQueue {
    /// Queues one encoded message (moved, not copied). Empty messages are ignored.
    pub fn push(&mut self, msg: Vec<u8>) {
        if msg.is_empty() {
            return;
        }
        self.len += msg.len();
        self.chunks.push_back(msg);
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops everything queued and gives its memory back.
    pub fn clear(&mut self) {
        self.chunks = VecDeque::new();
        self.front_written = 0;
        self.len = 0;
    }

    /// Writes as much as `w` takes in one gathered write. Returns the bytes
    /// written (0 only when the queue is empty or the writer took nothing).
    pub fn write_to(&mut self, w: &mut impl Write) -> std::io::Result<usize> {
        if self.len == 0 {
            return Ok(0);
        }
        let n = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut k = 0;
            for (i, c) in self.chunks.iter().take(MAX_SLICES).enumerate() {
                let from = if i == 0 { self.front_written } else { 0 };
                slices[k] = IoSlice::new(&c[from..]);
                k += 1;
            }
            w.write_vectored(&slices[..k])?
        };
        self.consume(n);
        Ok(n)
    }

    /// Marks `n` bytes from the front as written, releasing finished messages.
    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.len() - self.front_written;
            if n < left {
                self.front_written += n;
                return;
            }
            n -= left;
            self.chunks.pop_front();
            self.front_written = 0;
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 1024 {
            self.chunks = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A writer that takes at most `limits[i]` bytes on its i-th call (then
    /// everything), and records what it got.
    struct Trickle {
        limits: Vec<usize>,
        calls: usize,
        got: Vec<u8>,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            let mut limit = self.limits.get(self.calls).copied().unwrap_or(usize::MAX);
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(limit);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                limit -= take;
                if limit == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    proptest! {
        /// However the writer cuts the stream, it receives the messages'
        /// bytes in order, exactly once, and `len` always counts what is left.
        #[test]
        fn bytes_arrive_in_order_once(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..150),
            limits in proptest::collection::vec(0usize..700, 0..40),
        ) {
            let mut q = OutQueue::default();
            let mut want = Vec::new();
            for m in &msgs {
                want.extend_from_slice(m);
                q.push(m.clone());
            }
            prop_assert_eq!(q.len(), want.len());
            let mut w = Trickle { limits, calls: 0, got: Vec::new() };
            let mut rounds = 0;
            while !q.is_empty() {
                let n = q.write_to(&mut w).unwrap();
                prop_assert_eq!(q.len(), want.len() - w.got.len());
                rounds += 1;
                prop_assert!(n > 0 || rounds <= w.limits.len(), "no progress with an unlimited writer");
            }
            prop_assert_eq!(w.got, want);
        }
    }

    #[test]
    fn clear_drops_what_is_queued() {
        let mut q = OutQueue::default();
        q.push(b"abc".to_vec());
        q.push(Vec::new());
        q.push(b"de".to_vec());
        assert_eq!(q.len(), 5);
        let mut w = Trickle {
            limits: vec![1],
            calls: 0,
            got: Vec::new(),
        };
        assert_eq!(q.write_to(&mut w).unwrap(), 1);
        q.clear();
        assert!(q.is_empty());
        assert_eq!(q.write_to(&mut w).unwrap(), 0);
        assert_eq!(w.got, b"a");
    }
}
