//! The continuation cache: where a recirculated packet (after `ct(table=N)`
//! or `tnl_pop`) continues, found from the translation it came from
//! instead of by hashing its new key.
//!
//! What it owns: per PMD, a small set-associative array indexed by the
//! address of the previous pass's translation (`X0`, an `Arc<Xlate>` the
//! entry holds, so the address cannot be reused by another translation
//! while the entry lives). Each entry is one megaflow of the next pass:
//! the non-zero words of its mask `M1`, the masked words of the key that
//! was translated (`K1 & M1`) and the translation `X1`.
//!
//! Behind it, a larger direct-mapped array ([`WIDE`] entries) keyed by `X0`
//! *and* the masked key `K & M1`: when the next table matches on fields of
//! the connection (its translated destination, its ports), one `X0` has
//! one continuation per endpoint or per connection, more than a set's
//! [`WAYS`]. The first entry of `X0` in its set then serves as the shape
//! (`M1`'s words): a lookup whose key does not match its values hashes
//! `X0` and `K & M1` and probes the wide array once, and an insert of a
//! continuation of the same shape goes there instead of evicting it. A
//! Service whose next table routes per endpoint thus keeps one entry per
//! endpoint (or per connection) and skips the second classification for
//! each.
//!
//! Invariant (why a hit is exact): a hit requires the packet's new key
//! `K` to satisfy `K & M1 == K1 & M1` on every non-zero word of `M1`
//! (plus the `recirc_id` word), i.e. to be in the megaflow of `X1`; every
//! key of a megaflow translates alike (the megaflow cache's invariant, see
//! `classifier::megaflow`), so the answer is the slow path's whatever the
//! conntrack state, NAT or `X0` were. `X0` only picks where to look. A
//! program change flushes the cache (`FlowPipeline::reload`), as do port
//! changes; nothing else can make a megaflow wrong.
//!
//! Learning: the mask of `X1` is known when the next pass was an upcall;
//! after an EMC or megaflow hit it is learnt with one slow-path
//! translation, at most one per [`LEARN_EVERY`] bursts, so a workload
//! whose continuations do not repeat pays at most that.
//!
//! Thread-safety: owned by one PMD (`&mut self`), `Send`, never shared.

use std::sync::Arc;

use crate::classifier::slowpath::Xlate;
use crate::flow::key::{Field, FlowKey};

/// Sets (a power of two).
const SETS: usize = 256;
/// Entries per set.
const WAYS: usize = 2;
/// Most mask words an entry checks; megaflows with more are not cached.
pub const MAX_WORDS: usize = 6;
/// Bursts per learning translation (see the module doc).
pub const LEARN_EVERY: u32 = 16;
/// Entries of the wide array (a power of two), keyed by `X0` and the
/// masked key.
pub const WIDE: usize = 2048;

#[derive(Default)]
struct Entry {
    x0: Option<Arc<Xlate>>,
    x1: Option<Arc<Xlate>>,
    n: u8,
    idx: [u8; MAX_WORDS],
    mask: [u64; MAX_WORDS],
    value: [u64; MAX_WORDS],
}

impl Entry {
    /// `key & mask ^ value` over the entry's words: 0 when `key` is in
    /// the megaflow.
    #[inline]
    fn diff(&self, key: &FlowKey) -> u64 {
        let mut diff = 0u64;
        for i in 0..usize::from(self.n) {
            diff |= (key.w[usize::from(self.idx[i])] & self.mask[i]) ^ self.value[i];
        }
        diff
    }

    /// The same mask words as `o`.
    fn same_shape(&self, o: &Entry) -> bool {
        self.n == o.n && self.idx == o.idx && self.mask == o.mask
    }

    /// The wide-array slot of `x0` and the masked `key` in this entry's
    /// shape.
    #[inline]
    fn wide_slot(&self, x0: *const Xlate, key: &FlowKey) -> usize {
        let mut h = (x0 as usize as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in 0..usize::from(self.n) {
            h = (h ^ key.w[usize::from(self.idx[i])] & self.mask[i])
                .wrapping_mul(0xff51_afd7_ed55_8ccd);
        }
        (h >> 40) as usize & (WIDE - 1)
    }
}

/// A per-PMD cache of the next pass's megaflow by previous translation.
pub struct ContCache {
    sets: Box<[[Entry; WAYS]]>,
    wide: Box<[Entry]>,
    victim: usize,
    /// Bursts until the next learning translation is allowed.
    learn_wait: u32,
}

impl std::fmt::Debug for ContCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContCache").finish_non_exhaustive()
    }
}

#[inline]
fn set_of(x0: *const Xlate) -> usize {
    let h = (x0 as usize as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 40) as usize & (SETS - 1)
}

impl ContCache {
    /// An empty cache.
    pub fn new() -> ContCache {
        ContCache {
            sets: (0..SETS).map(|_| Default::default()).collect(),
            wide: (0..WIDE).map(|_| Entry::default()).collect(),
            victim: 0,
            learn_wait: 0,
        }
    }

    /// The next translation of a packet whose previous pass ran `x0` and
    /// whose key is now `key`, when cached.
    #[inline]
    pub fn lookup(&self, x0: *const Xlate, key: &FlowKey) -> Option<&Arc<Xlate>> {
        let mut shape: Option<&Entry> = None;
        for e in &self.sets[set_of(x0)] {
            let Some(x) = &e.x0 else { continue };
            if Arc::as_ptr(x) != x0 {
                continue;
            }
            if e.diff(key) == 0 {
                return e.x1.as_ref();
            }
            shape.get_or_insert(e);
        }
        // Another continuation of `x0` in the same shape, keyed by the
        // masked key.
        let shape = shape?;
        let w = &self.wide[shape.wide_slot(x0, key)];
        let x = w.x0.as_ref()?;
        (Arc::as_ptr(x) == x0 && w.same_shape(shape) && w.diff(key) == 0)
            .then_some(w.x1.as_ref())
            .flatten()
    }

    /// Called once per burst: one more burst towards the next learning
    /// translation.
    #[inline]
    pub fn tick(&mut self) {
        self.learn_wait = self.learn_wait.saturating_sub(1);
    }

    /// True when a learning translation is allowed now; taking it starts
    /// the wait for the next one.
    pub fn take_learn(&mut self) -> bool {
        if self.learn_wait == 0 {
            self.learn_wait = LEARN_EVERY;
            true
        } else {
            false
        }
    }

    /// Caches `x1` with megaflow mask `mask` (translated from `key`) as
    /// the continuation of `x0`. A mask of more than [`MAX_WORDS`] words is
    /// not cached.
    pub fn insert(&mut self, x0: &Arc<Xlate>, key: &FlowKey, mask: &FlowKey, x1: &Arc<Xlate>) {
        let mut m = *mask;
        // The pass is part of every megaflow (translation starts from the
        // table `recirc_id` names): check it even if the mask left it out.
        let recirc = FlowKey::field_mask(Field::RecircId);
        m.or_assign(&recirc);
        let words = m.nonzero_words();
        if words.len() > MAX_WORDS {
            return;
        }
        let mut e = Entry {
            x0: Some(x0.clone()),
            x1: Some(x1.clone()),
            n: words.len() as u8,
            ..Entry::default()
        };
        for (j, &i) in words.iter().enumerate() {
            let i = usize::from(i);
            e.idx[j] = i as u8;
            e.mask[j] = m.w[i];
            e.value[j] = key.w[i] & m.w[i];
        }
        let p0 = Arc::as_ptr(x0);
        let set = &mut self.sets[set_of(p0)];
        // A continuation of `x0` in a shape the set already holds goes to
        // the wide array, keyed by its values: the set keeps the shape.
        let shape = set
            .iter()
            .position(|s| s.x0.as_ref().is_some_and(|x| Arc::as_ptr(x) == p0) && s.same_shape(&e));
        if let Some(i) = shape {
            if set[i].value == e.value {
                // The same megaflow: a newer translation of it.
                set[i] = e;
            } else {
                let slot = set[i].wide_slot(p0, key);
                self.wide[slot] = e;
            }
            return;
        }
        let way = set.iter().position(|s| s.x0.is_none()).unwrap_or_else(|| {
            self.victim = self.victim.wrapping_add(1);
            self.victim % WAYS
        });
        set[way] = e;
    }

    /// Forgets everything (program or port change).
    pub fn flush(&mut self) {
        for set in self.sets.iter_mut() {
            for e in set.iter_mut() {
                *e = Entry::default();
            }
        }
        for e in self.wide.iter_mut() {
            *e = Entry::default();
        }
        self.learn_wait = 0;
    }

    /// Entries in use.
    pub fn len(&self) -> usize {
        self.sets
            .iter()
            .flatten()
            .chain(self.wide.iter())
            .filter(|e| e.x0.is_some())
            .count()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ContCache {
    fn default() -> Self {
        Self::new()
    }
}
