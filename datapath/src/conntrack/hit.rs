//! The hit path: tracking a packet of a known connection without a lock.
//!
//! A packet that changes no state (TCP ESTABLISHED without SYN/FIN/RST and
//! in window; a TCP originator segment of a SYN_SENT connection that
//! changes nothing, such as a retransmitted SYN or a repeated ACK before
//! the reply; UDP, SCTP, ICMP after the first reply or in the original
//! direction; a commit whose mark/label write changes nothing) is tracked
//! from the PMD's cache with atomics only ([`hit_fast`]); anything else
//! takes the entry's mutex ([`hit_locked`]), where an out-of-window segment
//! is checked again before it is reported `+inv`. The expiry moves only
//! when it advances by [`super::EXPIRES_REFRESH_NS`] or more.
//!
//! Invariants: window fields only grow and are read and written in an order
//! that makes the lock-free check see some serial order of concurrent
//! segments, so two PMDs on the two directions never produce a false `+inv`.
//!
//! Thread-safety: called on a PMD thread through its own
//! [`super::ConntrackHandle`]; shares only `Arc<Conn>` atomics with other
//! PMDs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::config::ConntrackConfig;
use super::entry::{Conn, CtMarks, ProtoState, COUNT_DEAD};
use super::lock;
use super::nat::Tuple;
use super::table::ChangeLog;
use super::tcp;
use super::tcp::{TcpConn, TcpState};
use super::EXPIRES_REFRESH_NS;
use crate::flow::action::CtAction;
use crate::flow::key::ct_state;
use crate::time::Nanos;

/// How the packet's headers changed, so the hook can update the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Headers unchanged.
    Tracked,
    /// NAT rewrote addresses and ports to this tuple.
    Rewritten(Tuple),
    /// The packet was rebuilt or rewritten deeply (Service reject, NATed
    /// ICMP error): extract the key again.
    Reextract,
}

/// What the hit path found.
pub(super) enum Hit {
    /// Tracked: state bits, mark and label, NAT target.
    Tracked(u8, CtMarks, Option<Tuple>),
    /// Out of window or otherwise invalid.
    Invalid,
    /// A SYN reopening a closed TCP connection.
    Reopen(Arc<Conn>),
    /// The connection was killed or expired: look again in the table.
    Gone,
}

/// The `ct_state` bits and NAT target of a tracked packet.
pub(super) fn tracked(c: &Conn, ct: &CtAction, dir: usize, replied: bool, marks: CtMarks) -> Hit {
    let mut st = ct_state::TRK | c.nat;
    st |= if replied {
        ct_state::EST
    } else {
        ct_state::NEW
    };
    if dir == 1 {
        st |= ct_state::RPL;
    }
    let target = (c.nat != 0 && ct.nat.is_some()).then(|| c.keys[1 - dir].tuple.reverse());
    Hit::Tracked(st, marks, target)
}

/// Tracks a packet of direction `dir` of `conn`: lock-free when it
/// changes no state, else under the entry's lock.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) fn hit_conn(
    cfg: &ConntrackConfig,
    now: Nanos,
    ct: &CtAction,
    seg: Option<&tcp::Segment>,
    len: u64,
    dir: usize,
    conn: &Arc<Conn>,
    log: &ChangeLog,
) -> Hit {
    match hit_fast(cfg, now, ct, seg, len, dir, conn) {
        Some(hit) => hit,
        None => hit_locked(cfg, now, ct, seg, len, dir, conn, log),
    }
}

/// The lock-free hit path. `None` (having changed nothing) when the packet
/// needs the locked path: a TCP state transition or a segment it would
/// call out of window, the first reply, or a mark/label write.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn hit_fast(
    cfg: &ConntrackConfig,
    now: Nanos,
    ct: &CtAction,
    seg: Option<&tcp::Segment>,
    len: u64,
    dir: usize,
    c: &Conn,
) -> Option<Hit> {
    if !c.live(now) {
        return Some(Hit::Gone);
    }
    let replied = dir == 1 || c.replied();
    if dir == 1 && !c.replied() {
        return None;
    }
    let marks = c.marks.try_read()?;
    let new_marks = marks.apply(ct);
    if new_marks != marks {
        return None;
    }
    // The timeout class and its timeout from one read of the state (the
    // packet changes neither on this path).
    let (class, timeout) = c.timeout_and_class(&cfg.timeouts);
    if let ProtoState::Tcp(t) = &c.proto {
        // Changes the window only when it returns true.
        if !seg.is_some_and(|seg| t.track_established(dir, seg) || t.track_unreplied_noop(dir, seg))
        {
            return None;
        }
    }
    // Count the packet; a kill that closed the counter first means the
    // connection is gone (and this packet was not counted).
    if c.packets[dir].fetch_add(1, Ordering::AcqRel) & COUNT_DEAD != 0 {
        return Some(Hit::Gone);
    }
    c.bytes[dir].fetch_add(len, Ordering::Relaxed);
    refresh(cfg, now, c, class, timeout);
    Some(tracked(c, ct, dir, replied, marks))
}

/// Moves the expiry of `c` (timeout class `class`, of timeout `timeout`,
/// when the packet was checked) forward, when it moves by at least
/// [`EXPIRES_REFRESH_NS`]. A transition since the check (which sets its
/// own expiry under the entry's lock) makes the packet count as before
/// it when nothing is written, and is caught after the write otherwise.
#[inline]
pub(super) fn refresh(cfg: &ConntrackConfig, now: Nanos, c: &Conn, class: u8, timeout: Nanos) {
    let e = now + timeout;
    if e < c.expires().saturating_add(EXPIRES_REFRESH_NS) {
        return;
    }
    c.expires.fetch_max(e, Ordering::SeqCst);
    if c.timeout_class() != class {
        // A transition (FIN, RST, first reply) raced with this packet and
        // may have set a shorter expiry that `fetch_max` overwrote: the
        // packet counts as after it, so recompute under the lock.
        let _g = lock(&c.lock);
        c.expires
            .store(now + c.timeout(&cfg.timeouts), Ordering::SeqCst);
    }
}

/// The locked hit path: TCP transitions and the full window check, the
/// first reply, mark and label writes; a change of the TCP state, the
/// reply flag or the marks is recorded in `log` (for the state saver).
#[allow(clippy::too_many_arguments)]
pub(super) fn hit_locked(
    cfg: &ConntrackConfig,
    now: Nanos,
    ct: &CtAction,
    seg: Option<&tcp::Segment>,
    len: u64,
    dir: usize,
    conn: &Arc<Conn>,
    log: &ChangeLog,
) -> Hit {
    let c = &**conn;
    let _g = lock(&c.lock);
    if !c.live(now) {
        return Hit::Gone;
    }
    let tcp_state = |c: &Conn| match &c.proto {
        ProtoState::Tcp(t) => Some(t.state()),
        _ => None,
    };
    let before = (tcp_state(c), c.replied());
    if let (ProtoState::Tcp(t), Some(seg)) = (&c.proto, seg) {
        let reopen = dir == 0
            && TcpConn::is_syn(seg)
            && matches!(t.state(), TcpState::TimeWait | TcpState::Close);
        if reopen {
            return Hit::Reopen(conn.clone());
        }
        if !t.track(dir, seg) {
            return Hit::Invalid;
        }
    }
    if dir == 1 {
        c.replied.store(true, Ordering::SeqCst);
    }
    if c.packets[dir].fetch_add(1, Ordering::AcqRel) & COUNT_DEAD != 0 {
        return Hit::Gone;
    }
    c.bytes[dir].fetch_add(len, Ordering::Relaxed);
    c.expires
        .store(now + c.timeout(&cfg.timeouts), Ordering::SeqCst);
    let marks = c.marks.load();
    let new_marks = marks.apply(ct);
    if new_marks != marks {
        c.marks.write(new_marks);
    }
    if new_marks != marks || before != (tcp_state(c), c.replied()) {
        log.record(&c.keys[0]);
    }
    tracked(c, ct, dir, c.replied(), new_marks)
}
