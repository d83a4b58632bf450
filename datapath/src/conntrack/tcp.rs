//! The TCP state machine and window tracking of one connection.
//!
//! A simplified form of the Linux `nf_conntrack_proto_tcp` tracker (after
//! Guido van Rooij, "Real Stateful TCP Packet Filtering in IP Filter"): each
//! direction remembers the highest sequence number it sent (`end`), the
//! highest sequence number the peer allowed it to send (`maxend`) and its
//! largest advertised window (`maxwin`, scaled). A segment is in window when
//!
//! 1. it does not go beyond what the receiver allowed (`end <= maxend`),
//! 2. it is not older than one receiver window (`seq >= end - maxwin`),
//! 3. it does not acknowledge data never sent (`ack <= receiver.end`),
//! 4. it does not acknowledge far in the past (`ack >= receiver.end - max(maxwin, 66000)`).
//!
//! Out-of-window segments are reported invalid and do not change the state.
//! Checks start once both directions have been seen (the first segment of
//! each direction initialises it), as the kernel does.
//!
//! Thread-safety: the state and both sides are atomics inside the shared
//! conntrack entry. State transitions ([`TcpConn::track`]) are serialised
//! by the entry's lock; segments of an ESTABLISHED connection that change
//! no state ([`TcpConn::track_established`]) and originator segments of a
//! SYN_SENT connection that change nothing at all
//! ([`TcpConn::track_unreplied_noop`]: retransmitted SYNs, repeated ACKs
//! before any reply) are tracked without it.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use super::Timeouts;
use crate::time::Nanos;

/// TCP flag bits.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Connection states (kernel names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    /// SYN seen from the originator.
    SynSent,
    /// SYN-ACK seen from the responder.
    SynRecv,
    /// Three-way handshake completed.
    Established,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN, waiting for the last ACK.
    LastAck,
    /// Closed by FINs; lingering for stray segments.
    TimeWait,
    /// Reset.
    Close,
}

impl TcpState {
    /// Name in `dump-conntrack` output.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }

    /// How long an entry in this state lives without traffic.
    pub fn timeout(self, t: &Timeouts) -> Nanos {
        match self {
            TcpState::SynSent => t.tcp_syn_sent,
            TcpState::SynRecv => t.tcp_syn_recv,
            TcpState::Established => t.tcp_established,
            TcpState::FinWait => t.tcp_fin_wait,
            TcpState::LastAck => t.tcp_last_ack,
            TcpState::TimeWait => t.tcp_time_wait,
            TcpState::Close => t.tcp_close,
        }
    }
}

/// The parts of a TCP segment the tracker reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Segment {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flag byte (see [`flags`]).
    pub flags: u8,
    /// Advertised window (unscaled).
    pub win: u16,
    /// Payload length.
    pub len: u32,
    /// Window scale option of a SYN, if present.
    pub wscale: Option<u8>,
}

/// `Side::bits`: the window scale (low four bits), then flags.
const SIDE_INIT: u8 = 0x10;
const SIDE_FIN: u8 = 0x20;
const SCALE_MASK: u8 = 0x0f;

/// One direction's window tracking. Every field only grows (in sequence
/// space for `end` and `maxend`) once the side is initialised, so updates
/// are monotone `max` operations that commute: concurrent updaters reach
/// the state any serial order reaches.
#[derive(Debug, Default)]
struct Side {
    end: AtomicU32,
    maxend: AtomicU32,
    maxwin: AtomicU32,
    /// Scale, `SIDE_INIT`, `SIDE_FIN`; written only under the entry lock.
    bits: AtomicU8,
}

impl Side {
    fn bits(&self) -> u8 {
        self.bits.load(Ordering::Acquire)
    }

    fn init(&self) -> bool {
        self.bits() & SIDE_INIT != 0
    }

    fn scale(&self) -> u8 {
        self.bits() & SCALE_MASK
    }

    fn set_bits(&self, f: impl FnOnce(u8) -> u8) {
        self.bits.store(f(self.bits()), Ordering::Release);
    }
}

/// Advances `a` to `v` when `v` is after it in sequence space.
fn advance_seq(a: &AtomicU32, v: u32) {
    let mut cur = a.load(Ordering::Acquire);
    while after(v, cur) {
        match a.compare_exchange_weak(cur, v, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(x) => cur = x,
        }
    }
}

/// Raises `a` to `v` (plain numeric maximum); no write when it would not
/// change.
fn raise(a: &AtomicU32, v: u32) {
    if v > a.load(Ordering::Acquire) {
        a.fetch_max(v, Ordering::AcqRel);
    }
}

/// One side's window tracking, saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideSnapshot {
    /// Highest sequence number sent plus length.
    pub end: u32,
    /// Highest acknowledged window edge.
    pub maxend: u32,
    /// Largest window seen.
    pub maxwin: u32,
    /// Window scale and flags.
    pub bits: u8,
}

/// A TCP tracker's whole state, saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSnapshot {
    /// `TcpState` as a number.
    pub state: u8,
    /// Both directions.
    pub sides: [SideSnapshot; 2],
    /// Picked up mid-stream.
    pub liberal: bool,
}

/// The tracked TCP state of a connection.
///
/// Thread-safety: [`TcpConn::track`] (state transitions, handshake) must
/// be serialised by the caller (the conntrack entry's lock);
/// [`TcpConn::track_established`] may run concurrently with it and with
/// itself, on any thread, without a lock.
#[derive(Debug)]
pub struct TcpConn {
    /// `TcpState` as `u8`.
    state: AtomicU8,
    sides: [Side; 2],
    /// Picked up mid-stream: the window scale of either side is unknown,
    /// so window checks are skipped for the connection's life (Linux's
    /// "be liberal" after a loose pickup). Set at creation only.
    liberal: bool,
}

#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

const STATES: [TcpState; 7] = [
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::Established,
    TcpState::FinWait,
    TcpState::LastAck,
    TcpState::TimeWait,
    TcpState::Close,
];

impl TcpConn {
    /// A connection opened by `seg`, a SYN without ACK from the originator.
    pub fn new(seg: &Segment) -> TcpConn {
        let c = TcpConn {
            state: AtomicU8::new(TcpState::SynSent as u8),
            sides: [Side::default(), Side::default()],
            liberal: false,
        };
        c.init_side(0, seg);
        c
    }

    /// True when `seg` may start a connection picked up mid-stream (loose
    /// mode): an ACK without SYN, FIN or RST, as Linux's
    /// `nf_conntrack_tcp_loose` accepts.
    pub fn can_pick_up(seg: &Segment) -> bool {
        seg.flags & (flags::SYN | flags::FIN | flags::RST | flags::ACK) == flags::ACK
    }

    /// A connection whose handshake was not seen, picked up from `seg`
    /// (see [`TcpConn::can_pick_up`]) in the original direction: ESTABLISHED,
    /// no window checks (the scale is unknown), state transitions tracked.
    pub fn picked_up(seg: &Segment) -> TcpConn {
        let c = TcpConn {
            state: AtomicU8::new(TcpState::Established as u8),
            sides: [Side::default(), Side::default()],
            liberal: true,
        };
        c.init_side(0, seg);
        c
    }

    /// Everything the tracker holds, for saving (`conntrack::state`).
    pub fn snapshot(&self) -> TcpSnapshot {
        let side = |s: &Side| SideSnapshot {
            end: s.end.load(Ordering::Acquire),
            maxend: s.maxend.load(Ordering::Acquire),
            maxwin: s.maxwin.load(Ordering::Acquire),
            bits: s.bits(),
        };
        TcpSnapshot {
            state: self.state.load(Ordering::SeqCst),
            sides: [side(&self.sides[0]), side(&self.sides[1])],
            liberal: self.liberal,
        }
    }

    /// A tracker continuing from a saved snapshot; None when the saved
    /// state is not one this version knows.
    pub fn restore(s: &TcpSnapshot) -> Option<TcpConn> {
        if usize::from(s.state) >= STATES.len() {
            return None;
        }
        let side = |x: &SideSnapshot| Side {
            end: AtomicU32::new(x.end),
            maxend: AtomicU32::new(x.maxend),
            maxwin: AtomicU32::new(x.maxwin),
            bits: AtomicU8::new(x.bits),
        };
        Some(TcpConn {
            state: AtomicU8::new(s.state),
            sides: [side(&s.sides[0]), side(&s.sides[1])],
            liberal: s.liberal,
        })
    }

    /// Picked up mid-stream (window checks skipped).
    pub fn is_liberal(&self) -> bool {
        self.liberal
    }

    /// Current state.
    pub fn state(&self) -> TcpState {
        STATES[usize::from(self.state.load(Ordering::SeqCst)).min(STATES.len() - 1)]
    }

    fn set_state(&self, s: TcpState) {
        self.state.store(s as u8, Ordering::SeqCst);
    }

    fn init_side(&self, d: usize, seg: &Segment) {
        let end = seg_end(seg);
        let s = &self.sides[d];
        let maxwin = u32::from(seg.win).max(1);
        s.end.store(end, Ordering::Release);
        s.maxwin.store(maxwin, Ordering::Release);
        s.maxend.store(end.wrapping_add(maxwin), Ordering::Release);
        s.bits.store(
            SIDE_INIT | seg.wscale.unwrap_or(0).min(14),
            Ordering::Release,
        );
    }

    /// True when `seg` may open a new connection (SYN without ACK).
    pub fn is_syn(seg: &Segment) -> bool {
        seg.flags & (flags::SYN | flags::ACK | flags::RST) == flags::SYN
    }

    /// Tracks `seg` sent in direction `d` (0 original, 1 reply). Returns
    /// false when the segment is out of window or makes no sense in the
    /// current state (the caller marks it invalid). Callers serialise
    /// calls of `track` on one connection (the entry lock).
    pub fn track(&self, d: usize, seg: &Segment) -> bool {
        let f = seg.flags;
        let state = self.state();
        if !self.sides[d].init() && self.liberal {
            // The first reply of a picked-up connection: any segment.
            self.init_side(d, seg);
            if f & flags::FIN != 0 {
                self.sides[d].set_bits(|b| b | SIDE_FIN);
            }
            self.set_state(self.next_state(state, d, f));
            return true;
        }
        if !self.sides[d].init() {
            // First segment of the reply direction: must be SYN-ACK (or RST).
            let orig_end = self.sides[0].end.load(Ordering::Acquire);
            if d == 1 && f & flags::SYN != 0 && f & flags::ACK != 0 {
                if seg.ack != orig_end {
                    return false;
                }
                self.init_side(1, seg);
                // Window scaling is used only when both SYNs carried it.
                if seg.wscale.is_none() {
                    self.sides[0].set_bits(|b| b & !SCALE_MASK);
                }
                if self.sides[0].scale() == 0 {
                    self.sides[1].set_bits(|b| b & !SCALE_MASK);
                }
                let ack_end = seg.ack.wrapping_add(u32::from(seg.win).max(1));
                self.sides[0].maxend.store(ack_end, Ordering::Release);
                self.set_state(TcpState::SynRecv);
                return true;
            }
            if f & flags::RST != 0 && d == 1 && seg.ack == orig_end {
                self.set_state(TcpState::Close);
                return true;
            }
            return false;
        }
        if f & flags::SYN != 0 && f & flags::ACK == 0 {
            // A retransmitted SYN from the originator.
            return d == 0 && state == TcpState::SynSent;
        }
        if self.sides[1 - d].init() && !self.in_window(d, seg) {
            return false;
        }
        self.advance(d, seg);
        if f & flags::FIN != 0 {
            self.sides[d].set_bits(|b| b | SIDE_FIN);
        }
        self.set_state(self.next_state(state, d, f));
        true
    }

    /// The lock-free path: tracks `seg` when the connection is
    /// ESTABLISHED, the segment carries no SYN, FIN or RST (so the state
    /// cannot change) and it is in window. Returns false, having changed
    /// nothing, when the caller must use [`TcpConn::track`] under the
    /// entry lock instead (including every out-of-window verdict, which
    /// the locked path re-checks).
    ///
    /// Races: window fields only grow, the sender updates `maxwin` before
    /// `end` (release) and the check loads `end` before `maxwin`
    /// (acquire), so every condition is evaluated on values some serial
    /// order of the concurrent segments produces. A segment that is in
    /// window in every such order is therefore never refused here.
    pub fn track_established(&self, d: usize, seg: &Segment) -> bool {
        if seg.flags & (flags::SYN | flags::FIN | flags::RST) != 0
            || self.state() != TcpState::Established
            || !self.in_window(d, seg)
        {
            return false;
        }
        self.advance(d, seg);
        true
    }

    /// The lock-free path of a connection whose reply was not seen yet:
    /// tracks `seg` when it is from the originator (`d == 0`) of a
    /// SYN_SENT connection and [`TcpConn::track`] would accept it without
    /// changing anything: a retransmitted SYN, or a segment without SYN,
    /// FIN or RST that sends nothing beyond what was sent (`end`) and
    /// advertises no larger window (`maxwin`). (The locked path would also
    /// move the reply side's `maxend`, which the reply's first segment
    /// overwrites before anything reads it.) Returns false, having changed
    /// nothing, otherwise.
    ///
    /// Races: this path writes nothing, so it is equivalent to the locked
    /// path run just before any concurrent transition (the first reply):
    /// nothing a transition reads is changed by it.
    pub fn track_unreplied_noop(&self, d: usize, seg: &Segment) -> bool {
        if d != 0 || self.liberal || self.state() != TcpState::SynSent || self.sides[1].init() {
            return false;
        }
        let f = seg.flags;
        if f & flags::SYN != 0 {
            // `track` accepts a retransmitted SYN (no ACK) and changes
            // nothing.
            return f & flags::ACK == 0;
        }
        if f & (flags::FIN | flags::RST) != 0 {
            return false;
        }
        let s = &self.sides[0];
        let win = u32::from(seg.win) << s.scale();
        !after(seg_end(seg), s.end.load(Ordering::Acquire))
            && win.max(1) <= s.maxwin.load(Ordering::Acquire)
    }

    /// The window checks of segment `seg` in direction `d` (both sides
    /// initialised).
    fn in_window(&self, d: usize, seg: &Segment) -> bool {
        if self.liberal {
            return true;
        }
        let (sender, receiver) = (&self.sides[d], &self.sides[1 - d]);
        // Order matters (see `track_established`): `end` before `maxwin`.
        let s_end = sender.end.load(Ordering::Acquire);
        let s_maxwin = sender.maxwin.load(Ordering::Acquire);
        let s_maxend = sender.maxend.load(Ordering::Acquire);
        let r_end = receiver.end.load(Ordering::Acquire);
        let r_maxwin = receiver.maxwin.load(Ordering::Acquire);
        let end = seg_end(seg);
        let ack = if seg.flags & flags::ACK != 0 {
            seg.ack
        } else {
            r_end
        };
        let maxackwin = s_maxwin.max(66_000);
        !after(end, s_maxend)
            && !before(seg.seq, s_end.wrapping_sub(r_maxwin.max(1)))
            && !after(ack, r_end)
            && !before(ack, r_end.wrapping_sub(maxackwin))
    }

    /// Window tracking updates of an accepted segment: monotone, `maxwin`
    /// before `end`.
    fn advance(&self, d: usize, seg: &Segment) {
        let f = seg.flags;
        let s = &self.sides[d];
        let end = seg_end(seg);
        let win = u32::from(seg.win) << if f & flags::SYN != 0 { 0 } else { s.scale() };
        raise(&s.maxwin, win.max(1));
        advance_seq(&s.end, end);
        if f & flags::ACK != 0 {
            advance_seq(&self.sides[1 - d].maxend, seg.ack.wrapping_add(win.max(1)));
        }
    }

    fn next_state(&self, state: TcpState, d: usize, f: u8) -> TcpState {
        use TcpState::*;
        if f & flags::RST != 0 {
            return Close;
        }
        let fins = (
            self.sides[0].bits() & SIDE_FIN != 0,
            self.sides[1].bits() & SIDE_FIN != 0,
        );
        match state {
            SynRecv if d == 0 && f & flags::ACK != 0 && f & flags::FIN == 0 => Established,
            SynRecv | SynSent => state,
            Established | FinWait if fins.0 && fins.1 => LastAck,
            Established if fins.0 || fins.1 => FinWait,
            LastAck if f & flags::ACK != 0 && f & flags::FIN == 0 => TimeWait,
            s => s,
        }
    }
}

/// The sequence number after `seg` (SYN and FIN count one).
fn seg_end(seg: &Segment) -> u32 {
    let mut e = seg.seq.wrapping_add(seg.len);
    if seg.flags & flags::SYN != 0 {
        e = e.wrapping_add(1);
    }
    if seg.flags & flags::FIN != 0 {
        e = e.wrapping_add(1);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u32, ack: u32, flags: u8, len: u32) -> Segment {
        Segment {
            seq,
            ack,
            flags,
            win: 1000,
            len,
            wscale: None,
        }
    }

    mod unreplied_noop {
        use super::*;
        use proptest::prelude::*;

        /// Everything `track` may read later: the snapshot without the
        /// reply side's `maxend`, which the reply's first segment
        /// overwrites before anything reads it.
        fn observable(c: &TcpConn) -> TcpSnapshot {
            let mut s = c.snapshot();
            if s.sides[1].bits & SIDE_INIT == 0 {
                s.sides[1].maxend = 0;
            }
            s
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            /// Whenever the lock-free SYN_SENT path accepts a segment,
            /// the locked path accepts it too and changes nothing
            /// observable, whatever came before (retransmitted SYNs,
            /// ACKs with or without data, windows, a reply or not).
            #[test]
            fn noop_path_agrees_with_track(
                syn_win in 1u16..5000,
                wscale in proptest::option::of(0u8..4),
                history in proptest::collection::vec((0u8..6, 0u32..3, 0u16..6000, any::<bool>()), 0..8),
            ) {
                use flags::*;
                let c = TcpConn::new(&Segment { seq: 100, ack: 0, flags: SYN, win: syn_win, len: 0, wscale });
                for (kind, len, win, reply) in history {
                    let (d, f) = match kind {
                        0 => (0, SYN),
                        1 => (0, ACK),
                        2 => (0, ACK | FIN),
                        3 => (0, RST),
                        4 if reply => (1, SYN | ACK),
                        _ => (0, SYN | ACK),
                    };
                    let s = Segment { seq: if f & SYN != 0 && d == 0 { 100 } else { 101 }, ack: 501, flags: f, win, len, wscale: None };
                    let before = observable(&c);
                    if c.track_unreplied_noop(d, &s) {
                        let twin = TcpConn::restore(&c.snapshot()).expect("restore");
                        prop_assert!(twin.track(d, &s), "the locked path accepts {:?}", s);
                        prop_assert_eq!(observable(&twin), before, "and changes nothing: {:?}", s);
                        prop_assert_eq!(observable(&c), before);
                    } else {
                        prop_assert_eq!(observable(&c), before, "refusing changes nothing");
                        let _ = c.track(d, &s);
                    }
                }
            }
        }

        #[test]
        fn repeated_acks_before_the_reply_take_no_lock() {
            use flags::*;
            let c = TcpConn::new(&seg(100, 0, SYN, 0));
            assert!(
                c.track_unreplied_noop(0, &seg(100, 0, SYN, 0)),
                "retransmitted SYN"
            );
            assert!(
                c.track_unreplied_noop(0, &seg(101, 501, ACK, 0)),
                "bare ACK"
            );
            assert!(
                !c.track_unreplied_noop(0, &seg(101, 501, ACK, 5)),
                "data moves `end`"
            );
            assert!(
                !c.track_unreplied_noop(1, &seg(500, 101, SYN | ACK, 0)),
                "the reply"
            );
            assert!(c.track(1, &seg(500, 101, SYN | ACK, 0)));
            assert!(
                !c.track_unreplied_noop(0, &seg(101, 501, ACK, 0)),
                "replied"
            );
        }
    }

    #[test]
    fn handshake_data_and_close() {
        use flags::*;
        let c = TcpConn::new(&seg(100, 0, SYN, 0));
        assert_eq!(c.state(), TcpState::SynSent);
        assert!(c.track(1, &seg(500, 101, SYN | ACK, 0)));
        assert_eq!(c.state(), TcpState::SynRecv);
        assert!(c.track(0, &seg(101, 501, ACK, 0)));
        assert_eq!(c.state(), TcpState::Established);
        assert!(c.track(0, &seg(101, 501, ACK, 10)));
        assert!(c.track(1, &seg(501, 111, ACK, 0)));
        // Far beyond the receiver's window: invalid, state unchanged.
        assert!(!c.track(0, &seg(101 + 100_000, 501, ACK, 10)));
        // Acknowledging data never sent: invalid.
        assert!(!c.track(1, &seg(501, 5000, ACK, 0)));
        assert!(c.track(0, &seg(111, 501, FIN | ACK, 0)));
        assert_eq!(c.state(), TcpState::FinWait);
        assert!(c.track(1, &seg(501, 112, FIN | ACK, 0)));
        assert_eq!(c.state(), TcpState::LastAck);
        assert!(c.track(0, &seg(112, 502, ACK, 0)));
        assert_eq!(c.state(), TcpState::TimeWait);
    }

    #[test]
    fn mid_stream_pickup_is_liberal_and_tracks_the_close() {
        use flags::*;
        assert!(TcpConn::can_pick_up(&seg(7, 9, ACK, 10)));
        for f in [SYN, SYN | ACK, FIN | ACK, RST, RST | ACK, 0] {
            assert!(!TcpConn::can_pick_up(&seg(7, 9, f, 0)), "flags {f:#x}");
        }
        let c = TcpConn::picked_up(&seg(1_000, 5_000, ACK, 100));
        assert_eq!(c.state(), TcpState::Established);
        assert!(c.is_liberal());
        // The reply side starts with whatever it sends first; sequence
        // numbers far apart are accepted (the window scale is unknown).
        assert!(c.track(1, &seg(5_000, 1_100, ACK, 0)));
        assert!(c.track_established(0, &seg(900_000, 5_000, ACK, 10)));
        assert!(c.track(0, &seg(900_010, 5_000, FIN | ACK, 0)));
        assert_eq!(c.state(), TcpState::FinWait);
        assert!(c.track(1, &seg(5_000, 900_011, RST, 0)));
        assert_eq!(c.state(), TcpState::Close);
        // A normal connection keeps its window checks.
        let n = TcpConn::new(&seg(100, 0, SYN, 0));
        assert!(!n.is_liberal());
    }

    #[test]
    fn bad_synack_and_reset() {
        use flags::*;
        let c = TcpConn::new(&seg(100, 0, SYN, 0));
        assert!(!c.track(1, &seg(500, 7, SYN | ACK, 0)), "wrong ack");
        assert!(c.track(1, &seg(500, 101, SYN | ACK, 0)));
        assert!(c.track(1, &seg(501, 101, RST | ACK, 0)));
        assert_eq!(c.state(), TcpState::Close);
    }
}
