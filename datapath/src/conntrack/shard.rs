//! One shard of the connection table: an open-addressing index of
//! connection keys that packets read without a lock.
//!
//! What it owns: per shard, an array of 64-bit words ([`ShardCell`]), each
//! either empty, a tombstone, or one key of a live connection packed as
//! `tag << 48 | Arc<Conn> pointer | direction` (the pointer is 8-aligned and
//! below 2^48, so the direction fits in bit 0 and a 16-bit hash tag in the
//! top bits). The key itself is not stored: the connection's immutable
//! `keys[dir]` confirms a tag match, so a slot costs 8 bytes and a
//! connection (two keys, load factor 3/8 to 3/4) about 21 to 43 bytes of
//! index. Each occupied word owns one strong count of its `Arc<Conn>`.
//!
//! Placement: a key's first probed slot is the low bits of its tag while
//! the array has at most [`TAG_PLACED_SLOTS`] slots (2^16: a shard of up
//! to ~49k keys), so a rehash moves words without reading the
//! connections (cold lines, one per key, otherwise); larger arrays take
//! more position bits from the hash and rehash by reading each key
//! (prefetched ahead). Releases: a single removal retires its count to
//! the epoch collector; a [`ShardGuard::retain`] hands its counts to an
//! [`Unlinked`] batch the caller releases after a grace period on its own
//! thread.
//!
//! Readers ([`ShardCell::find`]) pin an epoch (`crossbeam::epoch`), load the
//! published array and probe it linearly with acquire loads: no lock, no
//! store to shared memory. Writers (insert, remove, retain, rehash) hold the
//! shard's mutex ([`ShardCell::lock`]), so there is one writer per shard.
//!
//! Invariants that make a lock-free read exact:
//! - a word goes empty → key → tombstone (or key → key when a key is
//!   replaced), never back to empty, so a reader's probe never stops early
//!   at a slot that was occupied when its key was inserted;
//! - a rehash (growth, shrink, tombstone clean-up) builds a new array,
//!   moves the words (and their counts) into it and publishes it with a
//!   release store; the old array is freed only after every reader pinned
//!   before the publish has unpinned (`defer_destroy`). A reader on the old
//!   array sees the table as it was at the publish: a key inserted after it
//!   is a miss, which the caller treats like a packet that raced with the
//!   connection's creation (the creation path then finds the entry);
//! - a removed key's count is released by a deferred drop, after every
//!   reader that could have loaded its word has unpinned, so a reader may
//!   dereference any pointer it found while pinned. The table kills a
//!   connection (`dead`) before or while removing its keys; readers check it.
//!
//! Thread-safety: `Send + Sync`. Reads are lock-free; writes are serialised
//! by the shard mutex; the lock order is shard, then entry.

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam::epoch::{self, Atomic, Guard, Owned};

use super::entry::{Conn, ConnKey};

/// A table key's target: the connection and the direction the key names.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) conn: Arc<Conn>,
    pub(super) dir: u8,
}

/// The hash of a key: its shard in the table, its slot in the shard, its
/// set in a PMD's cache.
///
/// The addresses and the ports, zone and protocol go into two words; the
/// address word is multiplied (odd constant: one-to-one) before the port
/// word is XORed in, so for fixed ports distinct address pairs give
/// distinct words and the other way round, and the folded 64x64->128
/// multiply then spreads every input bit over the result's low bits (the
/// slot) and its high bits (the tag). The hash before this one XORed the
/// source port straight over the source address's low 16 bits: clients of
/// one /16 had at most 65,536 hashes between them however many
/// connections they made, and keys whose address and port differed by the
/// same bits collided completely (the crash-restore figures' synthetic
/// million walked long probe runs: `keys_sharing_bits_spread`).
#[inline]
pub(super) fn key_hash(k: &ConnKey) -> u64 {
    let addresses = u64::from(k.tuple.src) << 32 | u64::from(k.tuple.dst);
    let rest = u64::from(k.tuple.sport) << 48
        | u64::from(k.tuple.dport) << 32
        | u64::from(k.zone) << 16
        | u64::from(k.proto);
    let x = (addresses ^ 0x243f_6a88_85a3_08d3).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ rest;
    let m = u128::from(x) * u128::from(0xa076_1d64_78bd_642f_u64);
    (m as u64) ^ (m >> 64) as u64
}

const EMPTY: u64 = 0;
/// A removed key: probes go on past it.
const TOMB: u64 = 0b10;
const DIR: u64 = 0b01;
const PTR_MASK: u64 = 0x0000_ffff_ffff_fff8;
const TAG_SHIFT: u32 = 48;
/// The smallest array a shard that holds a key gets.
const MIN_SLOTS: usize = 16;

#[inline]
fn tag_of(hash: u64) -> u64 {
    hash >> TAG_SHIFT
}

/// Arrays up to this many slots place a key by its tag alone, so a rehash
/// into them moves words without reading the connections they point to
/// (smaller in tests, so that the proptest crosses the boundary).
#[cfg(not(test))]
const TAG_PLACED_SLOTS: usize = 1 << 16;
#[cfg(test)]
const TAG_PLACED_SLOTS: usize = 32;

/// Low position bits a larger array takes from the hash (bits the shard
/// choice and the tag do not use).
const EXTRA_SHIFT: u32 = 24;

/// The first slot probed in an array of `mask + 1` slots: the tag's low
/// bits while the array has at most [`TAG_PLACED_SLOTS`] slots (the tag is
/// the top of the hash, independent of the shard bits); beyond that, the
/// tag gives the high position bits and the hash the rest.
#[inline]
fn start_of(hash: u64, mask: usize) -> usize {
    let tag = tag_of(hash) as usize;
    if mask < TAG_PLACED_SLOTS {
        return tag & mask;
    }
    let extra = (mask + 1).trailing_zeros() - TAG_PLACED_SLOTS.trailing_zeros();
    let low = (hash >> EXTRA_SHIFT) as usize & ((1 << extra) - 1);
    (tag << extra | low) & mask
}

/// The first slot of the key word `w` holds, in an array of `mask + 1`
/// slots, from the word alone when the array is small enough
/// ([`TAG_PLACED_SLOTS`]).
#[inline]
fn start_of_word(w: u64, mask: usize) -> Option<usize> {
    (mask < TAG_PLACED_SLOTS).then_some((w >> TAG_SHIFT) as usize & mask)
}

#[inline]
fn is_key(w: u64) -> bool {
    w != EMPTY && w & TOMB == 0
}

#[inline]
fn ptr_of(w: u64) -> *const Conn {
    (w & PTR_MASK) as usize as *const Conn
}

/// The connection was at an address the packed word cannot hold (above
/// 2^48: not on Linux's default x86-64 or arm64 address spaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unrepresentable;

struct Buckets {
    words: Box<[AtomicU64]>,
    mask: usize,
}

impl Buckets {
    fn new(slots: usize) -> Buckets {
        Buckets {
            words: (0..slots).map(|_| AtomicU64::new(EMPTY)).collect(),
            mask: slots - 1,
        }
    }

    /// The slot and word of `key`.
    #[inline]
    fn find(&self, key: &ConnKey, hash: u64) -> Option<(usize, u64)> {
        let tag = tag_of(hash);
        let mut i = start_of(hash, self.mask);
        for _ in 0..=self.mask {
            let w = self.words[i].load(Ordering::Acquire);
            if w == EMPTY {
                return None;
            }
            if w & TOMB == 0 && w >> TAG_SHIFT == tag {
                // SAFETY: an occupied word holds a strong count of the
                // `Arc<Conn>` it points to, released only by a drop deferred
                // until every reader pinned before the word was removed has
                // unpinned; callers hold a guard (or the shard lock, which
                // excludes removal), so the connection is alive. The acquire
                // load pairs with the release store that published it.
                let c = unsafe { &*ptr_of(w) };
                if c.keys[(w & DIR) as usize] == *key {
                    return Some((i, w));
                }
            }
            i = (i + 1) & self.mask;
        }
        None
    }
}

/// What a lock-free lookup found: borrowed for as long as the reader's
/// epoch guard lives.
pub(super) struct Found<'g> {
    ptr: *const Conn,
    /// The direction the key names.
    pub(super) dir: u8,
    _guard: PhantomData<&'g Guard>,
}

impl<'g> Found<'g> {
    /// The connection.
    #[inline]
    pub(super) fn conn(&self) -> &'g Conn {
        // SAFETY: see `Buckets::find`: alive while the guard `'g` lives.
        unsafe { &*self.ptr }
    }

    /// A counted reference to the connection, with its direction.
    #[inline]
    pub(super) fn slot(&self) -> Slot {
        // SAFETY: `ptr` came from `Arc::into_raw` and the index still holds
        // that count while the guard lives (see `Buckets::find`), so adding
        // one and taking it as an `Arc` is sound.
        let conn = unsafe {
            Arc::increment_strong_count(self.ptr);
            Arc::from_raw(self.ptr)
        };
        Slot {
            conn,
            dir: self.dir,
        }
    }
}

/// Writer-side counts, under the shard mutex.
#[derive(Debug, Default)]
pub(super) struct Counts {
    len: usize,
    tombs: usize,
}

/// One shard: the published array (read lock-free) and the writers' mutex.
pub(super) struct ShardCell {
    buckets: Atomic<Buckets>,
    writer: Mutex<Counts>,
    /// The published array's first word and mask, for prefetch hints
    /// only: read without a pin, possibly stale or torn, and never
    /// dereferenced (a prefetch of any address is harmless).
    hint_words: AtomicUsize,
    hint_mask: AtomicUsize,
}

impl std::fmt::Debug for ShardCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCell").finish_non_exhaustive()
    }
}

impl Default for ShardCell {
    fn default() -> Self {
        ShardCell {
            buckets: Atomic::null(),
            writer: Mutex::new(Counts::default()),
            hint_words: AtomicUsize::new(0),
            hint_mask: AtomicUsize::new(0),
        }
    }
}

impl ShardCell {
    /// The live key `key` (hash `hash`), without a lock.
    #[inline]
    pub(super) fn find<'g>(&self, key: &ConnKey, hash: u64, guard: &'g Guard) -> Option<Found<'g>> {
        let b = self.buckets.load(Ordering::Acquire, guard);
        // SAFETY: a published array is freed only by `defer_destroy` after
        // the guards pinned before its replacement unpin; `guard` is pinned.
        let b = unsafe { b.as_ref() }?;
        let (_, w) = b.find(key, hash)?;
        Some(Found {
            ptr: ptr_of(w),
            dir: (w & DIR) as u8,
            _guard: PhantomData,
        })
    }

    /// Starts loading the slot where a lookup of hash `hash` begins (a
    /// hint: no pin, no dereference, never a wrong answer).
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        let words = self.hint_words.load(Ordering::Relaxed);
        if words != 0 {
            let mask = self.hint_mask.load(Ordering::Relaxed);
            let slot = words.wrapping_add(8 * start_of(hash, mask));
            crate::classifier::prefetch(slot as *const u8);
        }
    }

    /// Starts loading the connections the key words of hash `hash` point
    /// to (those whose tag matches, along the probe), reading only the
    /// index's words under `guard` and never the connections: the last
    /// stage of a bulk lookup, once [`ShardCell::prefetch`] brought the
    /// words in, so that the connection of a packet that misses its PMD's
    /// cache is in flight before the packet is tracked. A hint: a key
    /// inserted or removed meanwhile costs a useless load at most.
    #[inline]
    pub(super) fn prefetch_conns(&self, hash: u64, guard: &Guard) {
        let b = self.buckets.load(Ordering::Acquire, guard);
        // SAFETY: as in `find`: the published array lives while `guard`
        // is pinned.
        let Some(b) = (unsafe { b.as_ref() }) else {
            return;
        };
        let tag = tag_of(hash);
        let mut i = start_of(hash, b.mask);
        // A few words: a longer probe is rare at the load factors kept.
        for _ in 0..4.min(b.mask + 1) {
            let w = b.words[i].load(Ordering::Relaxed);
            if w == EMPTY {
                return;
            }
            if w & TOMB == 0 && w >> TAG_SHIFT == tag {
                let p = ptr_of(w).cast::<u8>();
                for line in (0..std::mem::size_of::<Conn>()).step_by(64) {
                    crate::classifier::prefetch(p.wrapping_add(line));
                }
            }
            i = (i + 1) & b.mask;
        }
    }

    /// Takes the shard's writer lock (poisoning ignored: every update under
    /// it is a plain store).
    pub(super) fn lock(&self) -> ShardGuard<'_> {
        #[cfg(test)]
        super::count_lock();
        ShardGuard {
            cell: self,
            counts: self.writer.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

impl Drop for ShardCell {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer can reach the shard.
        let guard = unsafe { epoch::unprotected() };
        let b = self
            .buckets
            .swap(epoch::Shared::null(), Ordering::Relaxed, guard);
        if b.is_null() {
            return;
        }
        // SAFETY: unreachable now (swapped out, `&mut self`); owned here.
        let b = unsafe { b.into_owned() };
        for w in b.words.iter() {
            let w = w.load(Ordering::Relaxed);
            if is_key(w) {
                // SAFETY: the word's own count, released once.
                drop(unsafe { Arc::from_raw(ptr_of(w)) });
            }
        }
    }
}

/// A shard locked for writing (reads keep going, lock-free).
pub(super) struct ShardGuard<'a> {
    cell: &'a ShardCell,
    counts: MutexGuard<'a, Counts>,
}

impl ShardGuard<'_> {
    fn buckets(&self) -> Option<&Buckets> {
        // SAFETY: under the writer lock only this writer replaces or frees
        // the array, and it does so through `&mut self`, so the reference
        // cannot outlive it here.
        let guard = unsafe { epoch::unprotected() };
        let b = self.cell.buckets.load(Ordering::Acquire, guard);
        // SAFETY: as above: the published array lives while the lock is held.
        unsafe { b.as_ref() }
    }

    /// Keys in the shard.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.counts.len
    }

    /// True when the shard holds no key.
    pub(super) fn is_empty(&self) -> bool {
        self.counts.len == 0
    }

    /// The slot of `key`, counted.
    pub(super) fn get(&self, key: &ConnKey) -> Option<Slot> {
        let (_, w) = self.buckets()?.find(key, key_hash(key))?;
        Some(with_arc(w, |conn| Slot {
            conn: conn.clone(),
            dir: (w & DIR) as u8,
        }))
    }

    /// Visits the keys' connections and directions until `f` returns
    /// `Some`.
    pub(super) fn find_map<R>(&self, mut f: impl FnMut(&Arc<Conn>, u8) -> Option<R>) -> Option<R> {
        let b = self.buckets()?;
        b.words.iter().find_map(|w| {
            let w = w.load(Ordering::Relaxed);
            if !is_key(w) {
                return None;
            }
            with_arc(w, |c| f(c, (w & DIR) as u8))
        })
    }

    /// Visits every key's connection and direction.
    pub(super) fn for_each(&self, mut f: impl FnMut(&Arc<Conn>, u8)) {
        self.find_map(|c, d| {
            f(c, d);
            None::<()>
        });
    }

    /// Inserts (or replaces) `key` → direction `dir` of `conn` (taking
    /// one count of it); the replaced key's count is released after the
    /// readers that may see it.
    pub(super) fn insert(
        &mut self,
        key: ConnKey,
        conn: &Arc<Conn>,
        dir: u8,
    ) -> Result<(), Unrepresentable> {
        let p = Arc::as_ptr(conn) as usize as u64;
        if p & !PTR_MASK != 0 {
            return Err(Unrepresentable);
        }
        let hash = key_hash(&key);
        let word = tag_of(hash) << TAG_SHIFT | p | u64::from(dir) & DIR;
        if let Some((i, old)) = self.buckets().and_then(|b| b.find(&key, hash)) {
            // The word owns this count from now on.
            std::mem::forget(conn.clone());
            self.buckets().expect("found in it").words[i].store(word, Ordering::Release);
            retire(old, &epoch::pin());
            return Ok(());
        }
        let slots = self.buckets().map_or(0, |b| b.words.len());
        if (self.counts.len + self.counts.tombs + 1) * 4 > slots * 3 {
            // (A pin only when something is retired: not per insert.)
            self.rehash(self.counts.len + 1, &epoch::pin());
        }
        let b = self.buckets().expect("rehash made an array");
        let mut i = start_of(hash, b.mask);
        while is_key(b.words[i].load(Ordering::Relaxed)) {
            i = (i + 1) & b.mask;
        }
        let reused = b.words[i].load(Ordering::Relaxed) == TOMB;
        // The word owns this count from now on.
        std::mem::forget(conn.clone());
        b.words[i].store(word, Ordering::Release);
        if reused {
            self.counts.tombs -= 1;
        }
        self.counts.len += 1;
        Ok(())
    }

    /// Removes `key` if it names `conn` (any connection when `None`);
    /// true when a key went.
    pub(super) fn remove(&mut self, key: &ConnKey, conn: Option<&Arc<Conn>>) -> bool {
        let Some((i, w)) = self.buckets().and_then(|b| b.find(key, key_hash(key))) else {
            return false;
        };
        if conn.is_some_and(|c| Arc::as_ptr(c) != ptr_of(w)) {
            return false;
        }
        let guard = epoch::pin();
        self.take(i, w, &guard);
        self.maybe_shrink(&guard);
        true
    }

    /// Keeps the keys `keep` accepts; the others are unlinked and their
    /// counts handed to `gone` (released after a grace period, see
    /// [`Unlinked`]). Returns how many went.
    pub(super) fn retain(
        &mut self,
        mut keep: impl FnMut(&Arc<Conn>, u8) -> bool,
        gone: &mut Unlinked,
    ) -> usize {
        let Some(b) = self.buckets() else { return 0 };
        let before = gone.words.len();
        for (i, w) in b.words.iter().enumerate() {
            let w = w.load(Ordering::Relaxed);
            if is_key(w) && !with_arc(w, |c| keep(c, (w & DIR) as u8)) {
                b.words[i].store(TOMB, Ordering::Release);
                gone.words.push(w);
            }
        }
        let n = gone.words.len() - before;
        if n == 0 {
            return 0;
        }
        self.counts.len -= n;
        self.counts.tombs += n;
        self.maybe_shrink(&epoch::pin());
        n
    }

    /// Tombstones slot `i` (holding `w`) and retires its count.
    fn take(&mut self, i: usize, w: u64, guard: &Guard) {
        self.buckets().expect("a key was found in it").words[i].store(TOMB, Ordering::Release);
        self.counts.len -= 1;
        self.counts.tombs += 1;
        retire(w, guard);
    }

    /// Rebuilds a smaller array when the shard is mostly empty, and a
    /// clean one when tombstones fill it.
    fn maybe_shrink(&mut self, guard: &Guard) {
        let slots = self.buckets().map_or(0, |b| b.words.len());
        let Counts { len, tombs } = *self.counts;
        if (slots > MIN_SLOTS && len * 8 < slots) || tombs * 2 > slots {
            self.rehash(len, guard);
        }
    }

    /// Publishes a fresh array sized for `want` keys (load at most 1/2
    /// after the rebuild), moving every key (and its count) into it.
    ///
    /// Into an array of at most [`TAG_PLACED_SLOTS`] slots a word's place
    /// follows from its tag, so no connection is read (they are cold: a
    /// shard growing after a flush, or cleaned of tombstones, would miss
    /// the cache once per key). A larger array needs each key's hash: the
    /// connections are prefetched [`REHASH_AHEAD`] words ahead.
    fn rehash(&mut self, want: usize, guard: &Guard) {
        let slots = (want * 2).next_power_of_two().max(MIN_SLOTS);
        let new = Buckets::new(slots);
        if let Some(old) = self.buckets() {
            let words = &old.words;
            let place = |w: u64| {
                let mut i = start_of_word(w, new.mask).unwrap_or_else(|| {
                    let hash = with_arc(w, |c| key_hash(&c.keys[(w & DIR) as usize]));
                    start_of(hash, new.mask)
                });
                while new.words[i].load(Ordering::Relaxed) != EMPTY {
                    i = (i + 1) & new.mask;
                }
                new.words[i].store(w, Ordering::Relaxed);
            };
            if start_of_word(0, new.mask).is_some() {
                for w in words.iter() {
                    let w = w.load(Ordering::Relaxed);
                    if is_key(w) {
                        place(w);
                    }
                }
            } else {
                for (j, w) in words.iter().enumerate() {
                    if let Some(ahead) = words.get(j + REHASH_AHEAD) {
                        let a = ahead.load(Ordering::Relaxed);
                        if is_key(a) {
                            let keys = std::mem::offset_of!(Conn, keys);
                            crate::classifier::prefetch(ptr_of(a).cast::<u8>().wrapping_add(keys));
                        }
                    }
                    let w = w.load(Ordering::Relaxed);
                    if is_key(w) {
                        place(w);
                    }
                }
            }
        }
        self.cell
            .hint_words
            .store(new.words.as_ptr() as usize, Ordering::Relaxed);
        self.cell.hint_mask.store(new.mask, Ordering::Relaxed);
        let old = self
            .cell
            .buckets
            .swap(Owned::new(new), Ordering::AcqRel, guard);
        self.counts.tombs = 0;
        if !old.is_null() {
            // SAFETY: unreachable for readers that pin from now on; freed
            // (the array only: its counts moved to the new one) after the
            // readers pinned before the swap unpin.
            unsafe { guard.defer_destroy(old) };
        }
    }
}

/// How many words ahead a rehash into a large array prefetches the
/// connection whose key it will hash.
const REHASH_AHEAD: usize = 8;

/// Calls `f` with the `Arc` occupied word `w` owns, without touching its
/// count.
fn with_arc<R>(w: u64, f: impl FnOnce(&Arc<Conn>) -> R) -> R {
    // SAFETY: the word owns a count of this `Arc` (from `Arc::into_raw`),
    // alive while the caller holds the shard lock or a guard; `ManuallyDrop`
    // keeps that count untouched.
    let arc = ManuallyDrop::new(unsafe { Arc::from_raw(ptr_of(w)) });
    f(&arc)
}

/// Releases the count word `w` owned, once the readers that may have
/// loaded it unpin.
fn retire(w: u64, guard: &Guard) {
    let p = ptr_of(w) as usize;
    // SAFETY: the word was unlinked (replaced or tombstoned) before this;
    // its count is released exactly once, after every reader pinned before
    // the unlink has unpinned. `Arc<Conn>` is `Send`, so dropping it on
    // whichever thread runs the deferred function is fine.
    unsafe {
        guard.defer_unchecked(move || drop(Arc::from_raw(p as *const Conn)));
    }
}

/// Counts of keys unlinked from the index (by [`ShardGuard::retain`]) that
/// readers pinned before the unlink may still be using.
///
/// [`Unlinked::release`] waits for a grace period on the calling thread and
/// drops them there: a flush or a sweep of the control thread frees its
/// connections itself, instead of leaving hundreds of thousands of deferred
/// drops to whichever thread collects the epoch's garbage next (a PMD on
/// its next pins, in the middle of traffic). Dropped without `release`, or
/// when the grace period does not come within the limit, the counts are
/// retired one by one, as a single removal's are.
#[derive(Debug, Default)]
pub(super) struct Unlinked {
    words: Vec<u64>,
}

impl Unlinked {
    /// Waits (at most `limit`) until every reader pinned before the
    /// unlinks has unpinned, then releases the counts on this thread. The
    /// caller must hold no epoch guard (its own pin would hold the epoch
    /// back until the limit). Returns false when the limit ran out and the
    /// counts were retired to the epoch collector instead.
    /// A connection whose last reference this was is reset to a
    /// placeholder and offered to `pool` for reuse (dropped when full).
    pub(super) fn release(
        mut self,
        limit: std::time::Duration,
        pool: &Mutex<Vec<Arc<Conn>>>,
        cap: usize,
    ) -> bool {
        if self.words.is_empty() {
            return true;
        }
        if !grace_period(limit) {
            return false;
        }
        let room = cap.saturating_sub(super::lock(pool).len());
        let mut reuse = Vec::new();
        for w in std::mem::take(&mut self.words) {
            // SAFETY: the word was unlinked before the grace period began,
            // and every reader pinned before that has unpinned since
            // (`grace_period`), so no reader can hold its pointer; the
            // count is the word's own, released once (taken out of `self`).
            let mut conn = unsafe { Arc::from_raw(ptr_of(w)) };
            if reuse.len() >= room {
                continue;
            }
            if let Some(c) = Arc::get_mut(&mut conn) {
                // The last reference: nobody else can see it any more.
                *c = Conn::placeholder();
                reuse.push(conn);
            }
        }
        let mut pool = super::lock(pool);
        let room = cap.saturating_sub(pool.len());
        reuse.truncate(room);
        pool.append(&mut reuse);
        true
    }
}

impl Drop for Unlinked {
    fn drop(&mut self) {
        if self.words.is_empty() {
            return;
        }
        let guard = epoch::pin();
        for w in self.words.drain(..) {
            retire(w, &guard);
        }
    }
}

/// Waits until every thread pinned when it was called has unpinned (an
/// epoch grace period), at most `limit`; true when it did. A marker is
/// deferred and the epoch pushed forward (`Guard::flush` collects and
/// tries to advance) until the marker has run, on this thread or on
/// whichever collected it.
fn grace_period(limit: std::time::Duration) -> bool {
    use std::sync::atomic::AtomicBool;
    let done = Arc::new(AtomicBool::new(false));
    {
        let guard = epoch::pin();
        let d = done.clone();
        guard.defer(move || d.store(true, Ordering::Release));
        guard.flush();
    }
    let start = std::time::Instant::now();
    loop {
        if done.load(Ordering::Acquire) {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::yield_now();
        epoch::pin().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rehash into a tag-placed array puts a word where a lookup of its
    /// key starts probing, and larger arrays do not claim to know the place
    /// from the word alone.
    #[test]
    fn a_word_is_placed_where_its_key_is_looked_up() {
        let mut h: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..10_000 {
            h = h.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(0x9e37);
            let w = tag_of(h) << TAG_SHIFT | 0x1000 | (h & DIR);
            let mut slots = MIN_SLOTS;
            while slots <= TAG_PLACED_SLOTS * 8 {
                let mask = slots - 1;
                let start = start_of(h, mask);
                assert!(start <= mask);
                match start_of_word(w, mask) {
                    Some(s) => {
                        assert!(slots <= TAG_PLACED_SLOTS);
                        assert_eq!(s, start, "hash {h:#x}, {slots} slots");
                    }
                    None => assert!(slots > TAG_PLACED_SLOTS),
                }
                slots *= 2;
            }
        }
    }

    /// Large arrays still use every slot as a starting point.
    #[test]
    fn large_arrays_start_probes_everywhere() {
        let slots = TAG_PLACED_SLOTS * 4;
        let mut seen = vec![false; slots];
        let mut h: u64 = 7;
        for _ in 0..slots * 64 {
            h = h.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(0x9e37);
            seen[start_of(key_mix(h), slots - 1)] = true;
        }
        assert!(seen.iter().all(|&s| s), "some slot is never a start");
    }

    fn key_mix(h: u64) -> u64 {
        h ^ h >> 29
    }
}
