//! Composition of the flow pipeline's extension points.
//!
//! The flow pipeline calls one [`ActionHooks`] value for `ct(...)` and for
//! tunnel push/pop; the trait is defined here, with the per-feature traits
//! it is composed of, so the pipeline depends on its hooks and not the
//! reverse. Connection tracking (the `conntrack` feature) and
//! tunnels (the `tunnel` feature) are separate features owned by separate
//! modules, each implementing its own small trait; [`Hooks`] joins them so
//! that `sluiced` can run with either, both or neither. A feature that is
//! absent uses [`NoConntrack`] / [`NoTunnels`], which drop the packet under
//! `ct_unsupported` / `tunnel_unsupported`.
//!
//! Thread-safety: one `Hooks` value per PMD (it holds per-core state such
//! as a conntrack shard handle); it is `Send`, never shared.

use crate::drop::DropReason;
use crate::flow::action::CtAction;
use crate::flow::key::{FlowKey, Layout};
use crate::packet::PacketBuf;
use crate::time::Nanos;

/// What `ct(...)` and tunnel actions do; filled in by the conntrack and
/// tunnel features. Each hook either succeeds (having updated the packet
/// and key) or returns the reason to drop the packet.
pub trait ActionHooks<B: PacketBuf>: Send {
    /// Runs connection tracking; on success sets `ct_state`/`ct_zone`/
    /// `ct_mark` in `key` (and applies NAT to `pkt`).
    fn conntrack(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        key: &mut FlowKey,
    ) -> Result<(), DropReason>;
    /// Encapsulates `pkt` using the key's `tun_*` fields.
    fn tunnel_push(&mut self, now: Nanos, pkt: &mut B, key: &FlowKey) -> Result<(), DropReason>;
    /// Decapsulates `pkt` in one pass (see [`TunnelHook::tunnel_pop`]):
    /// on success `key` is the inner frame's key with the `tun_*` fields
    /// set, and the inner frame's [`Layout`] is returned.
    fn tunnel_pop(
        &mut self,
        now: Nanos,
        pkt: &mut B,
        key: &mut FlowKey,
    ) -> Result<Layout, DropReason>;
    /// A hint that a packet with `key` may soon reach `ct(...)`: start
    /// loading what its lookup will read (see
    /// [`ConntrackHook::prefetch`]). Never changes a result.
    #[inline]
    fn prefetch_conntrack(&self, _key: &FlowKey, _stage: Prefetch) {}
}

/// The stage of a bulk lookup a prefetch hint is for: the pipeline asks for
/// the buckets of a packet several packets ahead, then for what they point
/// to a few packets ahead, so that the misses of a burst overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// The table bucket (far ahead).
    Bucket,
    /// The entry the bucket points to (near; the bucket is cached by now).
    Entry,
}

/// Hooks for a datapath without conntrack or tunnels: every such action
/// drops the packet with a reason that says so.
pub type NoHooks = Hooks<NoConntrack, NoTunnels>;

/// The `ct(...)` action.
pub trait ConntrackHook<B: PacketBuf>: Send {
    /// Tracks `pkt` (and applies NAT); sets `ct_state`, `ct_zone`,
    /// `ct_mark` in `key`, or returns the reason to drop.
    fn conntrack(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        key: &mut FlowKey,
    ) -> Result<(), DropReason>;

    /// A hint that a packet with `key` may soon be tracked: start loading
    /// its bucket or entry. Never changes a result; the default does
    /// nothing.
    #[inline]
    fn prefetch(&self, _key: &FlowKey, _stage: Prefetch) {}
}

/// Tunnel encapsulation and decapsulation.
pub trait TunnelHook<B: PacketBuf>: Send {
    /// Encapsulates `pkt` using the key's `tun_*` fields.
    fn tunnel_push(&mut self, now: Nanos, pkt: &mut B, key: &FlowKey) -> Result<(), DropReason>;
    /// Decapsulates `pkt` and parses the inner frame in the same pass: on
    /// success `pkt` is the inner frame and `key` its key, equal to
    /// `extract_into(inner, key.in_port())` with the outer header's
    /// `tun_*` fields and the `metadata` register carried over (what the
    /// pipeline would get by re-parsing, without the second pass); the
    /// inner frame's [`Layout`] is returned. On failure `pkt` and `key`
    /// are unchanged.
    fn tunnel_pop(
        &mut self,
        now: Nanos,
        pkt: &mut B,
        key: &mut FlowKey,
    ) -> Result<Layout, DropReason>;
}

/// No connection tracking: `ct(...)` drops under `ct_unsupported`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoConntrack;

impl<B: PacketBuf> ConntrackHook<B> for NoConntrack {
    fn conntrack(
        &mut self,
        _: Nanos,
        _: &CtAction,
        _: &mut B,
        _: &mut FlowKey,
    ) -> Result<(), DropReason> {
        Err(DropReason::CtUnsupported)
    }
}

/// No tunnels: push/pop drop under `tunnel_unsupported`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTunnels;

impl<B: PacketBuf> TunnelHook<B> for NoTunnels {
    fn tunnel_push(&mut self, _: Nanos, _: &mut B, _: &FlowKey) -> Result<(), DropReason> {
        Err(DropReason::TunnelUnsupported)
    }
    fn tunnel_pop(&mut self, _: Nanos, _: &mut B, _: &mut FlowKey) -> Result<Layout, DropReason> {
        Err(DropReason::TunnelUnsupported)
    }
}

/// Conntrack and tunnel hooks joined into the pipeline's [`ActionHooks`].
#[derive(Debug, Default, Clone)]
pub struct Hooks<C, T> {
    /// Connection tracking.
    pub ct: C,
    /// Tunnels.
    pub tunnels: T,
}

impl<B: PacketBuf, C: ConntrackHook<B>, T: TunnelHook<B>> ActionHooks<B> for Hooks<C, T> {
    fn conntrack(
        &mut self,
        now: Nanos,
        ct: &CtAction,
        pkt: &mut B,
        key: &mut FlowKey,
    ) -> Result<(), DropReason> {
        self.ct.conntrack(now, ct, pkt, key)
    }
    fn tunnel_push(&mut self, now: Nanos, pkt: &mut B, key: &FlowKey) -> Result<(), DropReason> {
        self.tunnels.tunnel_push(now, pkt, key)
    }
    fn tunnel_pop(
        &mut self,
        now: Nanos,
        pkt: &mut B,
        key: &mut FlowKey,
    ) -> Result<Layout, DropReason> {
        self.tunnels.tunnel_pop(now, pkt, key)
    }
    #[inline]
    fn prefetch_conntrack(&self, key: &FlowKey, stage: Prefetch) {
        self.ct.prefetch(key, stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::HeapBuf;

    #[test]
    fn absent_features_drop_with_their_reason() {
        let mut h: Hooks<NoConntrack, NoTunnels> = Hooks::default();
        let mut pkt = HeapBuf::from_frame(&[0u8; 60]);
        let mut key = FlowKey::default();
        let ct = CtAction {
            commit: false,
            zone: 0,
            table: None,
            nat: None,
            mark: None,
            label: None,
        };
        assert_eq!(
            ActionHooks::<HeapBuf>::conntrack(&mut h, 0, &ct, &mut pkt, &mut key),
            Err(DropReason::CtUnsupported)
        );
        assert_eq!(
            ActionHooks::<HeapBuf>::tunnel_pop(&mut h, 0, &mut pkt, &mut key),
            Err(DropReason::TunnelUnsupported)
        );
    }
}
