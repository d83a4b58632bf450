//! Why packets are dropped: one definition list, VPP style.
//!
//! Every drop in the datapath is counted per core under one of these
//! reasons; `sluicectl pmd-stats-show` and the Prometheus metrics print them
//! by name. Features add their reasons here, grouped by feature.

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

            /// Short machine-readable key (metrics label, stats output).
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
    /// The tx queue was full after retries.
    TxQueueFull => "tx_queue_full", "transmit queue full";
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
