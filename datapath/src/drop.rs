//! Why packets are dropped: one definition list, VPP style.
//!
//! Every drop in the datapath is counted per core under one of these
//! reasons (`stats::DropCounters`); `pmd-stats-show` (`sluicectl` or
//! `ovs-appctl`) prints the non-zero ones by key with their description,
//! its JSON form and `sluiced`'s "stopped" event carry them by key, and the
//! tunnel and conntrack traces name the reason a packet would be dropped
//! for. Features add their reasons here, grouped by feature.
//!
//! Invariants: keys are unique and `ALL` lists every reason in definition
//! order (`reason as usize` indexes the counters). Thread-safety: plain
//! `Copy` data.

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident => $key:literal, $text:literal;)*) => {
        /// A named reason for dropping a packet.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[$doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in definition order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Number of reasons.
            pub const COUNT: usize = [$(DropReason::$name,)*].len();

            /// Short machine-readable key (stats output, JSON keys).
            pub fn key(self) -> &'static str {
                match self { $(DropReason::$name => $key,)* }
            }

            /// A sentence explaining the drop to an operator.
            pub fn description(self) -> &'static str {
                match self { $(DropReason::$name => $text,)* }
            }
        }
    };
}

drop_reasons! {
    // --- generic / port ---
    /// A frame too short to hold an Ethernet header.
    RxTooShort => "rx_too_short", "frame shorter than an Ethernet header";
    /// The pipeline addressed a port that does not exist.
    NoSuchPort => "no_such_port", "output to a port that does not exist";
    /// A received frame spread over several mbufs (jumbo frames on a port
    /// whose mbufs are smaller than the MTU).
    RxMultiSegment => "rx_multi_segment", "received frame spans several buffers (larger than one mbuf: raise the mbuf size or lower the port MTU)";
    /// The tx queue was full after retries.
    TxQueueFull => "tx_queue_full", "transmit queue full";
    /// A packet for the datapath's own IP stack (`local`) when no stack is
    /// configured on this core.
    LocalNoStack => "local_no_stack", "sent to the local IP stack, but none runs here (configure vtep_ip and ovs_uplink_port)";
    /// A packet-in (`controller`) with no controller attached.
    NoController => "no_controller", "sent to the controller, but no packet-in listener is attached";
    /// No free packet buffer to copy a packet into (flood, mirror, reply).
    NoBuffer => "no_buffer", "packet buffer pool exhausted";
    // --- L2 switching ---
    /// A frame whose source MAC is multicast or broadcast.
    L2SrcMulticast => "l2_src_multicast", "source MAC address is multicast";
    /// The destination MAC was learned on the port the frame came in on.
    L2SamePort => "l2_same_port", "destination is on the ingress port (hairpin suppressed)";
    /// Flooding had no other port to send to.
    L2FloodNoPort => "l2_flood_no_port", "flood with no other port in the bridge";
    // --- flow tables ---
    /// No rule matched in a table whose miss action is drop.
    TableMiss => "table_miss", "no flow matched and the table-miss action is drop";
    /// A rule's action list was `drop` (or empty).
    FlowDrop => "flow_drop", "a flow's actions dropped the packet";
    /// goto_table/resubmit recursion exceeded the limit.
    ResubmitLimit => "resubmit_limit", "too many resubmits (loop in the flow program)";
    /// dec_ttl on a packet whose TTL would reach zero.
    TtlExceeded => "ttl_exceeded", "TTL expired";
    /// The controller queue is full or rate-limited.
    ControllerLimit => "controller_limit", "packet-in rate limit or queue full";
    /// A packet whose headers could not be parsed for a field the program needs.
    Malformed => "malformed", "malformed packet headers";
    /// A `ct(...)` action ran but no conntrack implementation is installed.
    CtUnsupported => "ct_unsupported", "ct action not supported by this datapath build";
    /// A tunnel push/pop action ran but no tunnel implementation is installed.
    TunnelUnsupported => "tunnel_unsupported", "tunnel push/pop not supported by this datapath build";
    /// Too many recirculations (ct(table=...), tnl_pop) for one packet, or a
    /// recirculation requested inside a group `all` bucket copy.
    RecircLimit => "recirc_limit", "too many recirculations for one packet";
    // --- conntrack ---
    /// The global or per-zone connection limit was reached and no
    /// non-established entry could be evicted to make room.
    CtLimit => "ct_limit", "connection tracking table full (global or zone limit)";
    /// A new connection whose reply direction is its original direction
    /// (source address and port equal to the destination's).
    CtSelfAddressed => "ct_self_addressed", "a new connection addressed to its own source (same address and port both ways) cannot be tracked";
    /// No free NAT address/port in the configured range for a new connection.
    CtNatExhausted => "ct_nat_exhausted", "no free NAT port for a new connection";
    /// A Service with externalTrafficPolicy=Local had no node-local endpoint
    /// for external traffic (kube-proxy drops it).
    ServiceNoLocalEndpoint => "service_no_local_endpoint", "no node-local endpoint for a Service with traffic policy Local";
    /// A Service had no usable endpoint and the packet could not be turned
    /// into an ICMP port-unreachable reply.
    ServiceReject => "service_reject", "Service has no endpoints and the reject reply could not be built";
    // --- tunnel / neigh ---
    /// The tunnel destination (encap) or source (decap) is not a programmed
    /// remote VTEP.
    TunnelUnknownVtep => "tunnel_unknown_vtep", "the remote VTEP is not in the VTEP table (add it with `sluicectl add-vtep NODE IP`)";
    /// No underlay route to the remote VTEP.
    TunnelNoRoute => "tunnel_no_route", "no underlay route to the remote VTEP (it is off-subnet and no underlay gateway is configured)";
    /// The underlay next hop's MAC is not resolved yet (an ARP request is on its way).
    NeighUnresolved => "neigh_unresolved", "the underlay next hop's MAC address is not resolved yet (ARP request sent)";
    /// The per-neighbour queue of packets waiting for ARP resolution is full.
    NeighQueueFull => "neigh_queue_full", "too many packets wait for one unresolved neighbour";
    /// The inner packet would exceed the uplink MTU after encapsulation.
    TunnelTooBig => "tunnel_too_big", "the packet exceeds the uplink MTU after encapsulation (lower the pod MTU, see `sluicectl tunnel-mtu`)";
    /// As `tunnel_too_big`, and the inner packet has DF set (answered with
    /// ICMP fragmentation-needed where the datapath can).
    TunnelTooBigDf => "tunnel_too_big_df", "the DF packet exceeds the uplink MTU after encapsulation (ICMP fragmentation needed)";
    /// The buffer has too little headroom for the outer headers.
    TunnelNoHeadroom => "tunnel_no_headroom", "the packet buffer has no headroom for the tunnel headers";
    /// `tun_id` does not fit in a 24-bit VNI.
    TunnelBadVni => "tunnel_bad_vni", "tun_id does not fit in a 24-bit Geneve VNI";
    /// The outer Ethernet/IPv4/UDP/Geneve headers are malformed.
    GeneveMalformed => "geneve_malformed", "malformed outer headers of a Geneve packet";
    /// A Geneve packet carries a critical option this datapath does not understand.
    GeneveUnknownCritical => "geneve_unknown_critical", "Geneve critical option not understood (RFC 8926 requires the drop)";
    /// The Geneve payload is not an Ethernet frame.
    GeneveNotEthernet => "geneve_not_ethernet", "Geneve payload protocol is not Transparent Ethernet Bridging";
    /// A Geneve OAM packet (control traffic, not forwarded).
    GeneveOam => "geneve_oam", "Geneve OAM packet (not forwarded)";
    /// The outer destination address is not this node's VTEP.
    TunnelNotLocal => "tunnel_not_local", "the outer IPv4 destination is not this node's VTEP address";
    /// A pod port sent a frame whose source MAC is not its own.
    PortSecurityMac => "port_security_mac", "a pod port sent a frame with a source MAC that is not its own";
    /// A pod port sent an IPv4 packet whose source address is not its own.
    PortSecurityIp => "port_security_ip", "a pod port sent a packet with a source IP that is not its own";
    /// A pod port sent ARP for an address that is not its own.
    PortSecurityArp => "port_security_arp", "a pod port sent ARP claiming an address or MAC that is not its own";
    /// An ARP packet that is not Ethernet/IPv4 or is truncated.
    ArpMalformed => "arp_malformed", "malformed ARP packet";
    /// A frame delivered to the datapath's own IP stack that it does not
    /// answer (not ARP or ICMP echo for one of its addresses).
    LocalNotForUs => "local_not_for_us", "a packet for the local IP stack that it does not serve";
    /// A frame for the local IP stack, received by a PMD other than the
    /// stack's, found the stack's inbox full.
    LocalInboxFull => "local_inbox_full", "a packet for the local IP stack found its inbox from the other PMDs full";
}

impl DropReason {
    /// `packets` drops for this reason, as the control API shows them.
    pub fn count(self, packets: u64) -> sluice_api::pmd::DropCount {
        sluice_api::pmd::DropCount {
            reason: self.key().to_string(),
            description: self.description().to_string(),
            packets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_count_matches() {
        let mut keys: Vec<_> = DropReason::ALL.iter().map(|r| r.key()).collect();
        assert_eq!(keys.len(), DropReason::COUNT);
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), DropReason::COUNT, "duplicate drop reason key");
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
