//! A tracked connection ([`Conn`]) and the key it is found by ([`ConnKey`]).
//!
//! What it owns: one connection's two direction keys, zone, NAT bits,
//! protocol state ([`ProtoState`]), Service endpoint, expiry, per-direction
//! packet and byte counters, and its `ct_mark`/`ct_label` ([`CtMarks`]).
//!
//! Invariants: a `Conn` is immutable after publication except for its hot
//! state. The keys, zone, NAT bits, protocol kind and endpoint never change;
//! the dead flag, expiry, counters, `replied`, the TCP state and windows are
//! atomics; marks sit behind a sequence lock (read lock-free, never torn).
//! Killing a connection sets `dead` and then closes both packet counters
//! (`COUNT_DEAD`), so a packet is counted in exactly one connection.
//!
//! Thread-safety: shared as `Arc<Conn>` by the table's shards and every
//! PMD's cache; transitions that need more than one atomic take the entry's
//! own mutex (`Conn::lock`), after the shard lock when both are held.

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use super::config::Timeouts;
use super::lb::LbRef;
use super::lock;
use super::nat::Tuple;
use super::tcp::{TcpConn, TcpState};
use crate::flow::action::CtAction;
use crate::time::Nanos;

/// The key a connection is found by: the on-wire tuple of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Zone.
    pub zone: u16,
    /// IP protocol.
    pub proto: u8,
    /// Addresses and ports.
    pub tuple: Tuple,
}

/// Protocol state of a connection (the kind is fixed at creation).
#[derive(Debug)]
pub enum ProtoState {
    /// TCP with its state machine.
    Tcp(TcpConn),
    /// ICMP echo.
    Icmp,
    /// UDP, SCTP and other protocols.
    Other,
}

/// A connection's `ct_mark` and `ct_label`, as the flow key sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtMarks {
    /// `ct_mark`.
    pub mark: u32,
    /// `ct_label`.
    pub label: u128,
}

impl CtMarks {
    /// No mark, no label.
    pub const ZERO: CtMarks = CtMarks { mark: 0, label: 0 };

    /// The marks after `ct`'s `exec(set_field...)` writes (a committing
    /// action only).
    pub(super) fn apply(self, ct: &CtAction) -> CtMarks {
        if !ct.commit {
            return self;
        }
        CtMarks {
            mark: ct
                .mark
                .map_or(self.mark, |(v, m)| (self.mark & !m) | (v & m)),
            label: ct
                .label
                .map_or(self.label, |(v, m)| (self.label & !m) | (v & m)),
        }
    }
}

/// `ct_mark` and `ct_label` behind a sequence lock: written (rarely: a
/// commit that changes them) under the entry's lock, read on every packet
/// without a lock and never torn.
#[derive(Debug, Default)]
pub(super) struct Marks {
    /// Odd while a writer is storing.
    pub(super) seq: AtomicU32,
    pub(super) mark: AtomicU32,
    pub(super) label: [AtomicU64; 2],
}

impl Marks {
    pub(super) fn new(m: CtMarks) -> Marks {
        Marks {
            seq: AtomicU32::new(0),
            mark: AtomicU32::new(m.mark),
            label: [
                AtomicU64::new((m.label >> 64) as u64),
                AtomicU64::new(m.label as u64),
            ],
        }
    }

    pub(super) fn load(&self) -> CtMarks {
        CtMarks {
            mark: self.mark.load(Ordering::Relaxed),
            label: u128::from(self.label[0].load(Ordering::Relaxed)) << 64
                | u128::from(self.label[1].load(Ordering::Relaxed)),
        }
    }

    /// A consistent snapshot, or `None` while a writer is storing.
    pub(super) fn try_read(&self) -> Option<CtMarks> {
        let s1 = self.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let m = self.load();
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == s1).then_some(m)
    }

    /// Stores `m`; the caller holds the entry's lock (one writer).
    pub(super) fn write(&self, m: CtMarks) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.mark.store(m.mark, Ordering::Relaxed);
        self.label[0].store((m.label >> 64) as u64, Ordering::Relaxed);
        self.label[1].store(m.label as u64, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }
}

/// Set in a direction's packet counter when the connection is killed:
/// the kill reads the counter and sets this bit in one atomic step, so a
/// packet counted before it is in the endpoint's total and a packet that
/// finds it set knows it was not counted (and treats the entry as gone).
pub(super) const COUNT_DEAD: u64 = 1 << 63;

/// One tracked connection, shared (`Arc`) by the table's two keys and
/// the PMDs' connection caches.
///
/// What never changes after the entry is published: both keys, the zone,
/// the NAT bits, the protocol kind and the Service endpoint. Everything a
/// packet updates is atomic (see the module doc); `lock` serialises state
/// transitions and mark/label writes, never the steady hit path.
#[derive(Debug)]
pub struct Conn {
    /// Tuples of the original (0) and reply (1) direction, as on the wire
    /// before translation.
    pub keys: [ConnKey; 2],
    /// `ct_state::SNAT` / `ct_state::DNAT` bits.
    pub nat: u8,
    /// The Service endpoint this connection was balanced to.
    pub lb: Option<LbRef>,
    /// Protocol state.
    pub proto: ProtoState,
    /// Removed from the table (the other direction's key, and PMD
    /// caches, may hold it until swept or overwritten).
    pub(super) dead: AtomicBool,
    /// A reply has been seen.
    pub(super) replied: AtomicBool,
    /// Expiry time (refreshed by at most [`EXPIRES_REFRESH_NS`] less
    /// than the exact value, see the module doc).
    pub(super) expires: AtomicU64,
    /// Packets per direction (bit 63: [`COUNT_DEAD`]).
    pub(super) packets: [AtomicU64; 2],
    /// Bytes per direction.
    pub(super) bytes: [AtomicU64; 2],
    /// `ct_mark`, `ct_label`.
    pub(super) marks: Marks,
    /// Serialises TCP state transitions, the first reply and mark/label
    /// writes.
    pub(super) lock: Mutex<()>,
}

impl Conn {
    /// A connection that is never published: what a recycled or spare
    /// allocation holds until [`super::ConntrackHandle`] writes a new
    /// connection over it (dead, no endpoint, nothing to drop).
    pub(super) fn placeholder() -> Conn {
        let k = ConnKey {
            zone: 0,
            proto: 0,
            tuple: Tuple {
                src: 0,
                dst: 0,
                sport: 0,
                dport: 0,
            },
        };
        Conn {
            keys: [k, k],
            nat: 0,
            lb: None,
            proto: ProtoState::Other,
            dead: AtomicBool::new(true),
            replied: AtomicBool::new(false),
            expires: AtomicU64::new(0),
            packets: [AtomicU64::new(COUNT_DEAD), AtomicU64::new(COUNT_DEAD)],
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            marks: Marks::new(CtMarks::ZERO),
            lock: Mutex::new(()),
        }
    }

    /// `ct_mark` and `ct_label`.
    pub fn marks(&self) -> CtMarks {
        self.marks.try_read().unwrap_or_else(|| {
            // A writer is mid-store: wait for it.
            let _g = lock(&self.lock);
            self.marks.load()
        })
    }

    /// `ct_mark`.
    pub fn mark(&self) -> u32 {
        self.marks().mark
    }

    /// `ct_label`.
    pub fn label(&self) -> u128 {
        self.marks().label
    }

    /// A reply has been seen.
    pub fn replied(&self) -> bool {
        self.replied.load(Ordering::SeqCst)
    }

    /// Expiry time.
    pub fn expires(&self) -> Nanos {
        self.expires.load(Ordering::SeqCst)
    }

    /// Packets per direction.
    pub fn packets(&self) -> [u64; 2] {
        [0, 1].map(|d| self.packets[d].load(Ordering::Relaxed) & !COUNT_DEAD)
    }

    /// Bytes per direction.
    pub fn bytes(&self) -> [u64; 2] {
        [0, 1].map(|d| self.bytes[d].load(Ordering::Relaxed))
    }

    /// Removed from the table.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// The TCP state, for TCP connections.
    pub fn tcp_state(&self) -> Option<TcpState> {
        match &self.proto {
            ProtoState::Tcp(t) => Some(t.state()),
            _ => None,
        }
    }

    pub(super) fn established(&self) -> bool {
        match &self.proto {
            ProtoState::Tcp(t) => t.state() == TcpState::Established,
            _ => self.replied(),
        }
    }

    /// What the idle timeout depends on: the TCP state, or whether a
    /// reply was seen.
    pub(super) fn timeout_class(&self) -> u8 {
        match &self.proto {
            ProtoState::Tcp(t) => t.state() as u8,
            _ => u8::from(self.replied()),
        }
    }

    /// [`Conn::timeout_class`] and [`Conn::timeout`] of one reading of
    /// the state.
    #[inline]
    pub(super) fn timeout_and_class(&self, t: &Timeouts) -> (u8, Nanos) {
        match &self.proto {
            ProtoState::Tcp(c) => {
                let s = c.state();
                (s as u8, s.timeout(t))
            }
            ProtoState::Icmp => (u8::from(self.replied()), t.icmp),
            ProtoState::Other if self.replied() => (1, t.udp_stream),
            ProtoState::Other => (0, t.udp_first),
        }
    }

    pub(super) fn timeout(&self, t: &Timeouts) -> Nanos {
        match &self.proto {
            ProtoState::Tcp(c) => c.state().timeout(t),
            ProtoState::Icmp => t.icmp,
            ProtoState::Other if self.replied() => t.udp_stream,
            ProtoState::Other => t.udp_first,
        }
    }

    /// Live at `now`: not killed, not expired.
    pub(super) fn live(&self, now: Nanos) -> bool {
        !self.is_dead() && self.expires() > now
    }

    /// State name for dumps and stats.
    pub fn state_name(&self) -> &'static str {
        match &self.proto {
            ProtoState::Tcp(c) => c.state().name(),
            _ if self.replied() => "REPLIED",
            _ => "UNREPLIED",
        }
    }
}
