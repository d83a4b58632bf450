//! A memory budget shared by every connection of one server, and the
//! estimate of what decoding a JSON text into a [`serde_json::Value`] costs.
//!
//! A server that reads JSON from untrusted peers holds two kinds of memory
//! per request: the raw bytes it has buffered, and the decoded value, which
//! can be far larger than the text (`[0,0,…]` costs 32 bytes of `Value` and
//! up to as much again of vector growth per 2 bytes of text, about 32×).
//! [`MemoryBudget`] caps the sum over all connections: a connection charges
//! what it is about to hold ([`MemoryBudget::try_charge`],
//! [`Charge::resize`]) and is refused ([`BudgetExceeded`]) if the total would
//! pass the limit, so one peer (or 64 peers at once) cannot make the process
//! hold more than the limit, while connections within it keep being served.
//!
//! [`decoded_size_estimate`] is a conservative bound on the heap a decoded
//! value takes (checked against the real allocator in
//! `tests/decode_memory.rs`), computed in one pass over the text without
//! allocating.
//!
//! Invariant: `used` is the sum of the sizes of the live [`Charge`]s; a
//! charge is released when dropped. Thread-safety: [`MemoryBudget`] is
//! `Sync` (one atomic counter); share it with an `Arc`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Refusal to take more memory than the budget allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server is out of request memory: this request needs {wanted} more bytes while {in_use} bytes of requests are in flight across all connections (limit {limit}); retry when other requests have completed, send a smaller request, or raise the limit")]
pub struct BudgetExceeded {
    /// Bytes asked for.
    pub wanted: usize,
    /// Bytes held by all connections when asked.
    pub in_use: usize,
    /// The limit.
    pub limit: usize,
}

/// A cap on the bytes held for requests by all connections of a server.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes currently charged by all connections.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Charges `bytes`, or refuses if the total would exceed the limit.
    ///
    /// # Errors
    /// [`BudgetExceeded`] and nothing is charged.
    pub fn try_charge(self: &Arc<Self>, bytes: usize) -> Result<Charge, BudgetExceeded> {
        self.add(bytes)?;
        Ok(Charge {
            budget: self.clone(),
            bytes,
        })
    }

    /// An empty charge, to be grown with [`Charge::resize`].
    pub fn empty_charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn add(&self, bytes: usize) -> Result<(), BudgetExceeded> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let total = used.saturating_add(bytes);
            if total > self.limit {
                return Err(BudgetExceeded {
                    wanted: bytes,
                    in_use: used,
                    limit: self.limit,
                });
            }
            match self
                .used
                .compare_exchange_weak(used, total, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes charged to a [`MemoryBudget`], released on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Charge {
    /// Bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes this charge hold `bytes`: shrinking always succeeds, growing
    /// is refused if the budget's total would pass its limit (the charge is
    /// then unchanged).
    ///
    /// # Errors
    /// [`BudgetExceeded`] when growing past the limit.
    pub fn resize(&mut self, bytes: usize) -> Result<(), BudgetExceeded> {
        if bytes > self.bytes {
            self.budget.add(bytes - self.bytes)?;
        } else {
            self.budget.sub(self.bytes - bytes);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.sub(self.bytes);
    }
}

/// Heap bytes charged per array element: the 32-byte `Value` and as much
/// again for the vector's spare capacity after doubling.
const PER_ARRAY_ELEMENT: usize = 2 * std::mem::size_of::<serde_json::Value>();
/// Heap bytes charged per array with elements: a vector's first
/// allocation holds 4 values.
const PER_ARRAY: usize = 4 * std::mem::size_of::<serde_json::Value>();
/// Heap bytes charged per object member beyond the first node's 11: a
/// B-tree slot (24-byte key `String` + 32-byte `Value`) and a share of
/// further nodes, which splitting leaves about half full.
const PER_OBJECT_MEMBER: usize = 128;
/// Members that fit in an object's first B-tree node.
const MEMBERS_IN_FIRST_NODE: u32 = 11;
/// Heap bytes charged per object with members: one B-tree leaf node (11
/// keys and values plus links) whatever its number of members (an empty
/// object allocates nothing).
const PER_OBJECT: usize = 640;
/// Heap bytes charged per string beyond its text: allocator header and
/// rounding.
const PER_STRING: usize = 32;

/// A conservative estimate of the heap that decoding the JSON text `json`
/// into a [`serde_json::Value`] takes, peak included, in one pass over the
/// text and without allocating. Meaningful for valid JSON; for anything
/// else it is still finite and at least `json.len()`.
pub fn decoded_size_estimate(json: &[u8]) -> usize {
    // Whether each open container is an object (bit set) or an array; the
    // framer limits nesting, deeper levels count as arrays.
    let mut objects: u128 = 0;
    // Members seen so far in each open object.
    let mut members = [0u32; 128];
    let mut depth: u32 = 0;
    let mut in_string = false;
    let mut escape = false;
    // True right after `[` until the first non-blank byte: an empty array
    // has no element.
    let mut array_open = false;
    let mut total = json.len();
    let mut at = 0;
    while at < json.len() {
        if in_string {
            // String text counts only by its length: jump to the next
            // quote or backslash (the same walk as the framer's).
            if escape {
                escape = false;
                at += 1;
            } else {
                match memchr::memchr2(b'"', b'\\', &json[at..]) {
                    None => break,
                    Some(k) => {
                        if json[at + k] == b'\\' {
                            escape = true;
                        } else {
                            in_string = false;
                        }
                        at += k + 1;
                    }
                }
            }
            continue;
        }
        let byte = json[at];
        at += 1;
        if array_open && !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            array_open = false;
            if byte != b']' {
                total = total.saturating_add(PER_ARRAY + PER_ARRAY_ELEMENT);
            }
        }
        let in_object = depth > 0 && depth <= 128 && objects & (1 << (depth - 1)) != 0;
        match byte {
            b'"' => {
                in_string = true;
                total = total.saturating_add(PER_STRING);
            }
            b'{' | b'[' => {
                if depth < 128 {
                    let bit = 1u128 << depth;
                    if byte == b'{' {
                        objects |= bit;
                    } else {
                        objects &= !bit;
                    }
                    members[depth as usize] = 0;
                }
                depth = depth.saturating_add(1);
                array_open = byte == b'[';
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if !in_object => total = total.saturating_add(PER_ARRAY_ELEMENT),
            b':' if in_object => {
                let seen = &mut members[depth as usize - 1];
                *seen = seen.saturating_add(1);
                if *seen == 1 {
                    total = total.saturating_add(PER_OBJECT);
                } else if *seen > MEMBERS_IN_FIRST_NODE {
                    total = total.saturating_add(PER_OBJECT_MEMBER);
                }
            }
            _ => {}
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte estimate before string text was skipped with
    /// `memchr2`: the oracle of `estimate_equals_the_byte_by_byte_one`.
    fn reference_estimate(json: &[u8]) -> usize {
        // Whether each open container is an object (bit set) or an array; the
        // framer limits nesting, deeper levels count as arrays.
        let mut objects: u128 = 0;
        // Members seen so far in each open object.
        let mut members = [0u32; 128];
        let mut depth: u32 = 0;
        let mut in_string = false;
        let mut escape = false;
        // True right after `[` until the first non-blank byte: an empty array
        // has no element.
        let mut array_open = false;
        let mut total = json.len();
        for &byte in json {
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
            if array_open && !matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                array_open = false;
                if byte != b']' {
                    total = total.saturating_add(PER_ARRAY + PER_ARRAY_ELEMENT);
                }
            }
            let in_object = depth > 0 && depth <= 128 && objects & (1 << (depth - 1)) != 0;
            match byte {
                b'"' => {
                    in_string = true;
                    total = total.saturating_add(PER_STRING);
                }
                b'{' | b'[' => {
                    if depth < 128 {
                        let bit = 1u128 << depth;
                        if byte == b'{' {
                            objects |= bit;
                        } else {
                            objects &= !bit;
                        }
                        members[depth as usize] = 0;
                    }
                    depth = depth.saturating_add(1);
                    array_open = byte == b'[';
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                b',' if !in_object => total = total.saturating_add(PER_ARRAY_ELEMENT),
                b':' if in_object => {
                    let seen = &mut members[depth as usize - 1];
                    *seen = seen.saturating_add(1);
                    if *seen == 1 {
                        total = total.saturating_add(PER_OBJECT);
                    } else if *seen > MEMBERS_IN_FIRST_NODE {
                        total = total.saturating_add(PER_OBJECT_MEMBER);
                    }
                }
                _ => {}
            }
        }
        total
    }

    proptest::proptest! {
        /// The estimate that skips string text equals the byte-by-byte one.
        #[test]
        fn estimate_equals_the_byte_by_byte_one(
            json in proptest::collection::vec(
                proptest::sample::select(b"{}[]\"\\ \nax:,0".to_vec()), 0..200),
        ) {
            proptest::prop_assert_eq!(decoded_size_estimate(&json), reference_estimate(&json));
        }
    }

    #[test]
    fn charges_are_bounded_shared_and_released() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_charge(60).unwrap();
        let mut b = budget.empty_charge();
        b.resize(40).unwrap();
        assert_eq!(budget.in_use(), 100);
        let err = b.resize(41).unwrap_err();
        assert_eq!(
            err,
            BudgetExceeded {
                wanted: 1,
                in_use: 100,
                limit: 100
            }
        );
        assert!(err.to_string().contains("raise the limit"), "{err}");
        assert_eq!(b.bytes(), 40);
        assert!(budget.try_charge(1).is_err());
        drop(a);
        assert_eq!(budget.in_use(), 40);
        b.resize(10).unwrap();
        assert_eq!(budget.in_use(), 10);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.try_charge(usize::MAX).is_err());
    }

    #[test]
    fn estimate_counts_elements_members_and_strings() {
        let v = std::mem::size_of::<serde_json::Value>();
        assert_eq!(decoded_size_estimate(b"[]"), 2);
        assert_eq!(decoded_size_estimate(b"[ ]"), 3);
        assert_eq!(decoded_size_estimate(b"[0]"), 3 + 6 * v);
        assert_eq!(decoded_size_estimate(b"[0,0]"), 5 + 8 * v);
        assert_eq!(decoded_size_estimate(b"[{},{}]"), 7 + 8 * v);
        assert_eq!(
            decoded_size_estimate(br#"{"a":1}"#),
            7 + PER_OBJECT + PER_STRING
        );
        let twelve: String = (0..12).map(|i| format!(r#","k{i}":0"#)).collect();
        let twelve = format!("{{{}}}", &twelve[1..]);
        assert_eq!(
            decoded_size_estimate(twelve.as_bytes()),
            twelve.len() + PER_OBJECT + PER_OBJECT_MEMBER + 12 * PER_STRING
        );
        // Commas and colons inside strings and objects are not elements.
        assert_eq!(
            decoded_size_estimate(br#"[",:[{"]"#),
            8 + 6 * v + PER_STRING
        );
        assert_eq!(
            decoded_size_estimate(br#"{"a":1,"b":[]}"#),
            14 + PER_OBJECT + 2 * PER_STRING
        );
        // Garbage still yields a finite value.
        assert!(decoded_size_estimate(b"]]]]{{{{,,,,::::") >= 16);
    }
}
