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
//! Thread-safety: plain data owned by its conntrack entry.

use super::Timeouts;
use crate::pipeline::Nanos;

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

/// One direction's window tracking.
#[derive(Debug, Clone, Copy, Default)]
struct Side {
    init: bool,
    end: u32,
    maxend: u32,
    maxwin: u32,
    scale: u8,
    fin: bool,
}

/// The tracked TCP state of a connection.
#[derive(Debug, Clone, Copy)]
pub struct TcpConn {
    /// Current state.
    pub state: TcpState,
    sides: [Side; 2],
}

#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

impl TcpConn {
    /// A connection opened by `seg`, a SYN without ACK from the originator.
    pub fn new(seg: &Segment) -> TcpConn {
        let mut c = TcpConn {
            state: TcpState::SynSent,
            sides: [Side::default(); 2],
        };
        c.init_side(0, seg);
        c
    }

    fn init_side(&mut self, d: usize, seg: &Segment) {
        let end = seg_end(seg);
        let s = &mut self.sides[d];
        s.init = true;
        s.end = end;
        s.scale = seg.wscale.unwrap_or(0).min(14);
        s.maxwin = u32::from(seg.win).max(1);
        s.maxend = end.wrapping_add(s.maxwin);
    }

    /// True when `seg` may open a new connection (SYN without ACK).
    pub fn is_syn(seg: &Segment) -> bool {
        seg.flags & (flags::SYN | flags::ACK | flags::RST) == flags::SYN
    }

    /// Tracks `seg` sent in direction `d` (0 original, 1 reply). Returns
    /// false when the segment is out of window or makes no sense in the
    /// current state (the caller marks it invalid).
    pub fn track(&mut self, d: usize, seg: &Segment) -> bool {
        let f = seg.flags;
        if !self.sides[d].init {
            // First segment of the reply direction: must be SYN-ACK (or RST).
            if d == 1 && f & flags::SYN != 0 && f & flags::ACK != 0 {
                if seg.ack != self.sides[0].end {
                    return false;
                }
                self.init_side(1, seg);
                // Window scaling is used only when both SYNs carried it.
                if seg.wscale.is_none() {
                    self.sides[0].scale = 0;
                }
                if self.sides[0].scale == 0 {
                    self.sides[1].scale = 0;
                }
                let ack_end = seg.ack.wrapping_add(u32::from(seg.win).max(1));
                self.sides[0].maxend = ack_end;
                self.state = TcpState::SynRecv;
                return true;
            }
            if f & flags::RST != 0 && d == 1 && seg.ack == self.sides[0].end {
                self.state = TcpState::Close;
                return true;
            }
            return false;
        }
        if f & flags::SYN != 0 && f & flags::ACK == 0 {
            // A retransmitted SYN from the originator.
            return d == 0 && self.state == TcpState::SynSent;
        }
        let (sender, receiver) = (self.sides[d], self.sides[1 - d]);
        let end = seg_end(seg);
        if receiver.init {
            let ack = if f & flags::ACK != 0 {
                seg.ack
            } else {
                receiver.end
            };
            let maxackwin = sender.maxwin.max(66_000);
            let in_window = !after(end, sender.maxend)
                && !before(seg.seq, sender.end.wrapping_sub(receiver.maxwin.max(1)))
                && !after(ack, receiver.end)
                && !before(ack, receiver.end.wrapping_sub(maxackwin));
            if !in_window {
                return false;
            }
        }
        // Update window tracking.
        let win = u32::from(seg.win) << if f & flags::SYN != 0 { 0 } else { sender.scale };
        let s = &mut self.sides[d];
        if after(end, s.end) {
            s.end = end;
        }
        s.maxwin = s.maxwin.max(win.max(1));
        if f & flags::ACK != 0 {
            let allowed = seg.ack.wrapping_add(win.max(1));
            let r = &mut self.sides[1 - d];
            if after(allowed, r.maxend) {
                r.maxend = allowed;
            }
        }
        if f & flags::FIN != 0 {
            self.sides[d].fin = true;
        }
        self.state = self.next_state(d, f);
        true
    }

    fn next_state(&self, d: usize, f: u8) -> TcpState {
        use TcpState::*;
        if f & flags::RST != 0 {
            return Close;
        }
        let fins = (self.sides[0].fin, self.sides[1].fin);
        match self.state {
            SynRecv if d == 0 && f & flags::ACK != 0 && f & flags::FIN == 0 => Established,
            SynRecv | SynSent => self.state,
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

    #[test]
    fn handshake_data_and_close() {
        use flags::*;
        let mut c = TcpConn::new(&seg(100, 0, SYN, 0));
        assert_eq!(c.state, TcpState::SynSent);
        assert!(c.track(1, &seg(500, 101, SYN | ACK, 0)));
        assert_eq!(c.state, TcpState::SynRecv);
        assert!(c.track(0, &seg(101, 501, ACK, 0)));
        assert_eq!(c.state, TcpState::Established);
        assert!(c.track(0, &seg(101, 501, ACK, 10)));
        assert!(c.track(1, &seg(501, 111, ACK, 0)));
        // Far beyond the receiver's window: invalid, state unchanged.
        assert!(!c.track(0, &seg(101 + 100_000, 501, ACK, 10)));
        // Acknowledging data never sent: invalid.
        assert!(!c.track(1, &seg(501, 5000, ACK, 0)));
        assert!(c.track(0, &seg(111, 501, FIN | ACK, 0)));
        assert_eq!(c.state, TcpState::FinWait);
        assert!(c.track(1, &seg(501, 112, FIN | ACK, 0)));
        assert_eq!(c.state, TcpState::LastAck);
        assert!(c.track(0, &seg(112, 502, ACK, 0)));
        assert_eq!(c.state, TcpState::TimeWait);
    }

    #[test]
    fn bad_synack_and_reset() {
        use flags::*;
        let mut c = TcpConn::new(&seg(100, 0, SYN, 0));
        assert!(!c.track(1, &seg(500, 7, SYN | ACK, 0)), "wrong ack");
        assert!(c.track(1, &seg(500, 101, SYN | ACK, 0)));
        assert!(c.track(1, &seg(501, 101, RST | ACK, 0)));
        assert_eq!(c.state, TcpState::Close);
    }
}
