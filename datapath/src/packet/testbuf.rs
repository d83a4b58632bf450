//! A test buffer: a [`HeapBuf`] carrying a tag that decides what the tests
//! need to observe (whether the buffer is chained, when it is created,
//! cloned and released), shared by the unit tests and the `sluice-fuzz`
//! targets (feature `fuzzing`) so that there is one delegating
//! [`PacketBuf`] implementation over `HeapBuf`, not one per test.
//!
//! Thread-safety: as `HeapBuf` and the tag.

use super::{HeapBuf, PacketBuf};

/// What a [`TaggedBuf`]'s tag decides.
pub trait BufTag: Sized + Send {
    /// The tag of a clone of the buffer (`None`: the clone fails, as an
    /// mbuf pool that is empty).
    fn clone_tag(&self) -> Option<Self>;
    /// Whether the buffer is a chain of segments.
    fn is_chained(&self) -> bool {
        false
    }
}

/// A chained (multi-segment) buffer when `true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chained(pub bool);

impl BufTag for Chained {
    fn clone_tag(&self) -> Option<Self> {
        Some(*self)
    }
    fn is_chained(&self) -> bool {
        self.0
    }
}

/// A heap buffer with a tag; see the module documentation.
#[derive(Debug)]
pub struct TaggedBuf<T> {
    /// The bytes.
    pub buf: HeapBuf,
    /// The tag.
    pub tag: T,
}

impl<T: BufTag> TaggedBuf<T> {
    /// A buffer holding a copy of `frame`.
    pub fn from_frame(frame: &[u8], tag: T) -> Self {
        TaggedBuf {
            buf: HeapBuf::from_frame(frame),
            tag,
        }
    }
}

impl<T: BufTag> PacketBuf for TaggedBuf<T> {
    fn data(&self) -> &[u8] {
        self.buf.data()
    }
    fn data_mut(&mut self) -> &mut [u8] {
        self.buf.data_mut()
    }
    fn headroom(&self) -> usize {
        self.buf.headroom()
    }
    fn tailroom(&self) -> usize {
        self.buf.tailroom()
    }
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        self.buf.prepend(n)
    }
    fn adj(&mut self, n: usize) -> bool {
        self.buf.adj(n)
    }
    fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        self.buf.append(n)
    }
    fn trim(&mut self, n: usize) -> bool {
        self.buf.trim(n)
    }
    fn try_clone(&self) -> Option<Self> {
        Some(TaggedBuf {
            tag: self.tag.clone_tag()?,
            buf: self.buf.try_clone()?,
        })
    }
    fn is_chained(&self) -> bool {
        self.tag.is_chained()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delegates_to_the_heap_buffer_and_the_tag() {
        let mut b = TaggedBuf::from_frame(&[1, 2, 3, 4], Chained(true));
        assert!(b.is_chained());
        assert!(b.prepend(2).is_some());
        assert_eq!(b.data().len(), 6);
        assert!(b.adj(2) && b.trim(1));
        assert_eq!(b.data(), &[1, 2, 3]);
        let c = b.try_clone().expect("a clone");
        assert_eq!((c.data(), c.is_chained()), (&[1u8, 2, 3][..], true));
        assert!(!TaggedBuf::from_frame(&[0; 60], Chained(false)).is_chained());
    }
}
