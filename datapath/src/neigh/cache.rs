//! The underlay neighbour cache: IPv4 next hop → MAC, resolved with ARP
//! over the uplink.
//!
//! Sans-IO, quinn style: every input takes `now`; frames to send come out
//! of [`NeighCache::poll`]; tests run it on a fake clock. States per entry:
//!
//! - `Incomplete`: a broadcast ARP request was sent; up to
//!   [`NeighConfig::queue_len`] packets wait for the answer (more are
//!   returned to the caller to drop under `neigh_queue_full`). After
//!   [`NeighConfig::max_probes`] unanswered requests the entry and its
//!   queue are dropped.
//! - `Reachable`: the MAC is known and published to PMDs until
//!   `reachable_ns` after the last confirmation.
//! - `Probe`: reachability expired; the MAC is still used while up to
//!   `max_probes` unicast requests refresh it; no answer deletes the entry.
//!
//! Learning: only ARP *replies* addressed to the local address, and only
//! for addresses this cache asked for (an entry exists), change bindings;
//! unsolicited replies and requests cannot poison the cache. The cache is
//! bounded by [`NeighConfig::capacity`] entries and cannot be flooded out
//! of what it resolved: when it is full, a new address evicts the
//! unresolved (`Incomplete`) entry asked for longest ago, its queued
//! packets returned by the next [`NeighCache::poll`] (counted in
//! [`NeighStats::evicted`]); when every entry is resolved or permanent, the
//! new address is refused (counted in [`NeighStats::refused`]) and its
//! packets are dropped under `neigh_queue_full` by the caller.
//!
//! Thread-safety: owned by one thread (the local stack's PMD); PMDs read
//! the [`NeighTable`] snapshot it publishes after changes.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use hashbrown::HashMap;

use super::table::{NeighMap, NeighTable};
use crate::time::Nanos;

/// Length of an Ethernet/ARP frame without padding.
pub const ARP_FRAME_LEN: usize = 42;

/// Sizes and timers of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighConfig {
    /// Address ARP requests are sent from.
    pub local_ip: Ipv4Addr,
    /// MAC ARP requests are sent from.
    pub local_mac: [u8; 6],
    /// How long a confirmed binding is used without re-probing.
    pub reachable_ns: u64,
    /// Interval between requests for one address.
    pub retrans_ns: u64,
    /// Requests before giving up.
    pub max_probes: u8,
    /// Packets queued per unresolved entry.
    pub queue_len: usize,
    /// Maximum entries.
    pub capacity: usize,
}

impl Default for NeighConfig {
    fn default() -> Self {
        NeighConfig {
            local_ip: Ipv4Addr::UNSPECIFIED,
            local_mac: [0x02, 0, 0, 0, 0, 1],
            reachable_ns: 30_000_000_000,
            retrans_ns: 1_000_000_000,
            max_probes: 3,
            queue_len: 8,
            capacity: 4096,
        }
    }
}

/// The resolution state of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighState {
    /// Waiting for the first answer.
    Incomplete,
    /// Known and fresh.
    Reachable,
    /// Known, being re-confirmed.
    Probe,
    /// Configured by the operator (`neigh/set`): never probed, expired or
    /// changed by ARP, like `ip neigh add ... nud permanent`.
    Permanent,
}

impl NeighState {
    /// The state as `ip neigh` prints it.
    pub fn name(self) -> &'static str {
        match self {
            NeighState::Incomplete => "INCOMPLETE",
            NeighState::Reachable => "REACHABLE",
            NeighState::Probe => "PROBE",
            NeighState::Permanent => "PERMANENT",
        }
    }
}

#[derive(Debug)]
struct Entry<P> {
    state: NeighState,
    mac: [u8; 6],
    /// Requests sent in the current Incomplete/Probe phase.
    probes: u8,
    /// When the next request is due (Incomplete/Probe) or reachability
    /// ends (Reachable).
    deadline: Nanos,
    queue: VecDeque<P>,
    /// When it was asked for (`NeighCache::asked`; 0: permanent).
    asked: u64,
}

/// What [`NeighCache::resolve`] did with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution<P> {
    /// Send it now to this MAC.
    Ready([u8; 6], P),
    /// Queued until the address resolves.
    Queued,
    /// Not queued (queue or cache full): drop it under `neigh_queue_full`.
    Dropped(P),
}

/// One line of `dump-neighbours`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighInfo {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its MAC (zero while incomplete).
    pub mac: [u8; 6],
    /// Its state.
    pub state: NeighState,
    /// Packets waiting.
    pub queued: usize,
}

impl std::fmt::Display for NeighInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lladdr {} {} queued {}",
            self.ip,
            crate::wire::ethernet::Address(self.mac),
            self.state.name(),
            self.queued
        )
    }
}

/// Packets released or dropped by an input to the cache.
#[derive(Debug)]
pub struct Released<P> {
    /// The resolved MAC and the packets that were waiting for it.
    pub ready: Option<([u8; 6], Vec<P>)>,
    /// Packets dropped because their entry failed or was flushed.
    pub failed: Vec<P>,
}

impl<P> Default for Released<P> {
    fn default() -> Self {
        Released {
            ready: None,
            failed: Vec::new(),
        }
    }
}

/// What the cache refused or evicted because it was full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NeighStats {
    /// Unresolved entries evicted to make room for a new address.
    pub evicted: u64,
    /// New addresses refused: the cache was full of resolved entries.
    pub refused: u64,
}

/// The neighbour cache; `P` is the queued packet type.
#[derive(Debug)]
pub struct NeighCache<P> {
    config: NeighConfig,
    entries: HashMap<Ipv4Addr, Entry<P>>,
    table: NeighTable,
    dirty: bool,
    stats: NeighStats,
    /// Packets of evicted entries, returned by the next `poll`.
    evicted: Vec<P>,
    /// Requests made so far: an entry's `asked` orders evictions.
    asked: u64,
}

/// An Ethernet/ARP frame.
///
/// `op` 1 = request, 2 = reply; `dst` is the Ethernet destination.
pub fn arp_frame(
    op: u16,
    dst: [u8; 6],
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

/// A gratuitous ARP announcing that `ip` is at `mac` (a broadcast request
/// with sender and target address both `ip`, as Linux sends).
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    arp_frame(1, [0xff; 6], mac, ip, [0; 6], ip)
}

/// The fields of an Ethernet/IPv4 ARP packet: (op, sha, spa, tha, tpa).
pub type ArpFields = (u16, [u8; 6], Ipv4Addr, [u8; 6], Ipv4Addr);

/// The [`ArpFields`] of `frame`, or
/// `None` when `frame` is not one.
pub fn parse_arp(frame: &[u8]) -> Option<ArpFields> {
    let a = frame.get(14..42)?;
    if frame[12..14] != [0x08, 0x06] || a[0..6] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let mac = |s: &[u8]| -> [u8; 6] { [s[0], s[1], s[2], s[3], s[4], s[5]] };
    Some((
        u16::from_be_bytes([a[6], a[7]]),
        mac(&a[8..14]),
        Ipv4Addr::new(a[14], a[15], a[16], a[17]),
        mac(&a[18..24]),
        Ipv4Addr::new(a[24], a[25], a[26], a[27]),
    ))
}

impl<P> NeighCache<P> {
    /// An empty cache publishing to `table`.
    pub fn new(config: NeighConfig, table: NeighTable) -> Self {
        NeighCache {
            config,
            entries: HashMap::new(),
            table,
            dirty: false,
            stats: NeighStats::default(),
            evicted: Vec::new(),
            asked: 0,
        }
    }

    /// What the cache refused or evicted because it was full.
    pub fn stats(&self) -> NeighStats {
        self.stats
    }

    /// The snapshot PMDs read (and their resolution requests).
    pub fn table(&self) -> &NeighTable {
        &self.table
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Makes room for one entry when the cache is full: evicts the
    /// unresolved entry asked for longest ago; false (counted) when every
    /// entry is resolved or permanent.
    fn make_room(&mut self) -> bool {
        if self.entries.len() < self.config.capacity {
            return true;
        }
        let oldest = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == NeighState::Incomplete)
            .min_by_key(|(_, e)| e.asked)
            .map(|(ip, _)| *ip);
        match oldest.and_then(|ip| self.entries.remove(&ip)) {
            Some(e) => {
                self.stats.evicted += 1;
                self.evicted.extend(e.queue);
                true
            }
            None => {
                self.stats.refused += 1;
                false
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NeighConfig {
        &self.config
    }

    /// Changes the local address and MAC (requests use the new ones).
    pub fn set_local(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        self.config.local_ip = ip;
        self.config.local_mac = mac;
    }

    /// The MAC of `ip` when known (Reachable or Probe).
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.entries
            .get(&ip)
            .filter(|e| e.state != NeighState::Incomplete)
            .map(|e| e.mac)
    }

    /// Starts resolving `ip` (no-op when an entry exists; when the cache
    /// is full, see the module documentation). The request goes out at the
    /// next [`poll`](Self::poll).
    pub fn request(&mut self, now: Nanos, ip: Ipv4Addr) {
        if self.entries.contains_key(&ip) {
            return;
        }
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return;
        }
        if !self.make_room() {
            return;
        }
        self.asked += 1;
        self.entries.insert(
            ip,
            Entry {
                state: NeighState::Incomplete,
                mac: [0; 6],
                probes: 0,
                deadline: now,
                queue: VecDeque::new(),
                asked: self.asked,
            },
        );
    }

    /// Resolves `ip` for `pkt`: ready, queued, or handed back to drop.
    pub fn resolve(&mut self, now: Nanos, ip: Ipv4Addr, pkt: P) -> Resolution<P> {
        if let Some(mac) = self.lookup(ip) {
            return Resolution::Ready(mac, pkt);
        }
        self.request(now, ip);
        let limit = self.config.queue_len;
        match self.entries.get_mut(&ip) {
            Some(e) if e.queue.len() < limit => {
                e.queue.push_back(pkt);
                Resolution::Queued
            }
            _ => Resolution::Dropped(pkt),
        }
    }

    /// Feeds a received ARP frame. Only a reply to the local address for an
    /// address this cache asked for changes a binding (published to PMDs at
    /// once); the packets queued for it are returned.
    pub fn on_arp(&mut self, now: Nanos, frame: &[u8]) -> Released<P> {
        let mut out = Released::default();
        let Some((op, sha, spa, _tha, tpa)) = parse_arp(frame) else {
            return out;
        };
        if op != 2 || tpa != self.config.local_ip || sha[0] & 1 != 0 {
            return out;
        }
        let reachable = self.config.reachable_ns;
        let Some(e) = self.entries.get_mut(&spa) else {
            return out;
        };
        if e.state == NeighState::Permanent {
            return out;
        }
        if e.mac != sha || e.state != NeighState::Reachable {
            self.dirty = true;
        }
        e.mac = sha;
        e.state = NeighState::Reachable;
        e.probes = 0;
        e.deadline = now.saturating_add(reachable);
        if !e.queue.is_empty() {
            out.ready = Some((sha, e.queue.drain(..).collect()));
        }
        self.publish_if_dirty();
        out
    }

    /// Advances timers: sends due requests through `tx`, moves expired
    /// entries to Probe, deletes failed ones (their queued packets are
    /// returned in `failed`), and publishes the snapshot if it changed.
    pub fn poll(&mut self, now: Nanos, mut tx: impl FnMut([u8; ARP_FRAME_LEN])) -> Vec<P> {
        let cfg = &self.config;
        let mut failed = std::mem::take(&mut self.evicted);
        let mut dead = Vec::new();
        for (ip, e) in self.entries.iter_mut() {
            if now < e.deadline {
                continue;
            }
            if e.state == NeighState::Reachable {
                e.state = NeighState::Probe;
                e.probes = 0;
            }
            if e.probes >= cfg.max_probes {
                dead.push(*ip);
                continue;
            }
            let dst = if e.state == NeighState::Probe {
                e.mac
            } else {
                [0xff; 6]
            };
            tx(arp_frame(1, dst, cfg.local_mac, cfg.local_ip, [0; 6], *ip));
            e.probes += 1;
            e.deadline = now.saturating_add(cfg.retrans_ns);
        }
        for ip in dead {
            if let Some(e) = self.entries.remove(&ip) {
                if e.state != NeighState::Incomplete {
                    self.dirty = true;
                }
                failed.extend(e.queue);
            }
        }
        self.publish_if_dirty();
        failed
    }

    /// Drains the PMDs' resolution requests from the [`NeighTable`].
    pub fn take_wanted(&mut self, now: Nanos) {
        while let Some(ip) = self.table.take_wanted() {
            self.request(now, ip);
        }
    }

    fn publish_if_dirty(&mut self) {
        if self.dirty {
            let map: NeighMap = self
                .entries
                .iter()
                .filter(|(_, e)| e.state != NeighState::Incomplete)
                .map(|(ip, e)| (*ip, e.mac))
                .collect();
            self.table.publish(map);
            self.dirty = false;
        }
    }

    /// Installs a permanent binding of `ip` to `mac` (`neigh/set`), replacing
    /// any learned entry; packets queued for it are returned ready to send.
    pub fn set_permanent(&mut self, ip: Ipv4Addr, mac: [u8; 6]) -> Vec<P> {
        let queued = self
            .entries
            .remove(&ip)
            .map(|e| e.queue.into_iter().collect())
            .unwrap_or_default();
        self.entries.insert(
            ip,
            Entry {
                state: NeighState::Permanent,
                mac,
                probes: 0,
                deadline: Nanos::MAX,
                queue: VecDeque::new(),
                asked: 0,
            },
        );
        self.dirty = true;
        self.publish_if_dirty();
        queued
    }

    /// Removes the entry for `ip`, learned or permanent (`neigh/del`);
    /// returns whether it existed and its queued packets.
    pub fn remove(&mut self, ip: Ipv4Addr) -> Option<Vec<P>> {
        let e = self.entries.remove(&ip)?;
        self.dirty = true;
        self.publish_if_dirty();
        Some(e.queue.into_iter().collect())
    }

    /// Forgets every entry (`flush-neighbours`); returns the queued packets.
    pub fn flush(&mut self) -> Vec<P> {
        let mut failed = std::mem::take(&mut self.evicted);
        // Operator-configured bindings survive a flush, as with `ip neigh flush`.
        self.entries.retain(|_, e| {
            if e.state == NeighState::Permanent {
                return true;
            }
            failed.extend(e.queue.drain(..));
            false
        });
        self.dirty = true;
        self.publish_if_dirty();
        failed
    }

    /// Every entry, sorted by address (`dump-neighbours`).
    pub fn dump(&self) -> Vec<NeighInfo> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .map(|(ip, e)| NeighInfo {
                ip: *ip,
                mac: e.mac,
                state: e.state,
                queued: e.queue.len(),
            })
            .collect();
        v.sort_by_key(|i| i.ip);
        v
    }
}

#[cfg(test)]
mod permanent_tests {
    use super::*;

    #[test]
    fn permanent_entries_are_published_never_probed_and_survive_flush() {
        let table = NeighTable::new();
        let mut c: NeighCache<u32> = NeighCache::new(NeighConfig::default(), table.clone());
        let ip = Ipv4Addr::new(192, 0, 2, 7);
        let mac = [2, 0, 0, 0, 0, 7];
        assert!(c.set_permanent(ip, mac).is_empty());
        assert_eq!(table.get(ip), Some(mac));
        let mut sent = 0;
        assert!(c.poll(u64::MAX - 1, |_| sent += 1).is_empty());
        assert_eq!(sent, 0, "a permanent entry is never probed");
        // An ARP reply cannot change it.
        let reply = arp_frame(
            2,
            [0; 6],
            [2, 0, 0, 0, 0, 9],
            ip,
            [0; 6],
            c.config().local_ip,
        );
        c.on_arp(1, &reply);
        assert_eq!(c.lookup(ip), Some(mac));
        c.flush();
        assert_eq!(table.get(ip), Some(mac), "flush keeps permanent entries");
        assert_eq!(c.dump()[0].state, NeighState::Permanent);
        assert!(c.remove(ip).is_some());
        assert_eq!(table.get(ip), None);
        assert!(c.remove(ip).is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    const MY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const S: u64 = 1_000_000_000;

    fn cache() -> (NeighCache<u32>, NeighTable) {
        let t = NeighTable::new();
        let c = NeighCache::new(
            NeighConfig {
                local_ip: ME,
                local_mac: MY_MAC,
                reachable_ns: 30 * S,
                retrans_ns: S,
                max_probes: 3,
                queue_len: 2,
                capacity: 4,
            },
            t.clone(),
        );
        (c, t)
    }

    fn reply(from: Ipv4Addr, mac: [u8; 6], to: Ipv4Addr) -> [u8; 42] {
        arp_frame(2, MY_MAC, mac, from, MY_MAC, to)
    }

    fn sent(c: &mut NeighCache<u32>, now: Nanos) -> (Vec<[u8; 42]>, Vec<u32>) {
        let mut v = Vec::new();
        let failed = c.poll(now, |f| v.push(f));
        (v, failed)
    }

    #[test]
    fn resolves_queues_and_releases_in_order() {
        let (mut c, t) = cache();
        assert_eq!(c.resolve(0, PEER, 1), Resolution::Queued);
        assert_eq!(c.resolve(0, PEER, 2), Resolution::Queued);
        assert_eq!(
            c.resolve(0, PEER, 3),
            Resolution::Dropped(3),
            "bounded queue"
        );
        let (frames, _) = sent(&mut c, 0);
        assert_eq!(frames.len(), 1);
        let (op, sha, spa, _, tpa) = parse_arp(&frames[0]).expect("arp");
        assert_eq!((op, sha, spa, tpa), (1, MY_MAC, ME, PEER));
        assert_eq!(&frames[0][0..6], &[0xff; 6], "broadcast while incomplete");
        // Not yet due: nothing sent.
        assert!(sent(&mut c, S / 2).0.is_empty());
        let r = c.on_arp(S / 2, &reply(PEER, PEER_MAC, ME));
        assert_eq!(r.ready, Some((PEER_MAC, vec![1, 2])));
        assert_eq!(c.resolve(S, PEER, 4), Resolution::Ready(PEER_MAC, 4));
        sent(&mut c, S);
        assert_eq!(t.get(PEER), Some(PEER_MAC), "published to PMDs");
    }

    #[test]
    fn learns_only_solicited_replies_to_us() {
        let (mut c, t) = cache();
        // Unsolicited reply: ignored.
        c.on_arp(0, &reply(PEER, PEER_MAC, ME));
        assert_eq!(c.lookup(PEER), None);
        c.request(0, PEER);
        // A request from the peer does not resolve it.
        c.on_arp(0, &arp_frame(1, [0xff; 6], PEER_MAC, PEER, [0; 6], ME));
        assert_eq!(c.lookup(PEER), None);
        // A reply to someone else does not either.
        c.on_arp(0, &reply(PEER, PEER_MAC, Ipv4Addr::new(192, 168, 50, 9)));
        assert_eq!(c.lookup(PEER), None);
        // Malformed bytes are ignored.
        c.on_arp(0, &[0u8; 20]);
        c.on_arp(0, &reply(PEER, PEER_MAC, ME));
        assert_eq!(c.lookup(PEER), Some(PEER_MAC));
        sent(&mut c, 0);
        assert_eq!(t.get(PEER), Some(PEER_MAC));
    }

    #[test]
    fn incomplete_gives_up_after_max_probes_and_drops_queue() {
        let (mut c, _) = cache();
        assert_eq!(c.resolve(0, PEER, 7), Resolution::Queued);
        for i in 0..3 {
            let (f, failed) = sent(&mut c, i * S);
            assert_eq!(f.len(), 1, "probe {i}");
            assert!(failed.is_empty());
        }
        let (f, failed) = sent(&mut c, 3 * S);
        assert!(f.is_empty());
        assert_eq!(failed, vec![7]);
        assert!(c.dump().is_empty());
    }

    #[test]
    fn reachable_expires_to_unicast_probe_then_refreshes_or_dies() {
        let (mut c, t) = cache();
        c.request(0, PEER);
        sent(&mut c, 0);
        c.on_arp(0, &reply(PEER, PEER_MAC, ME));
        sent(&mut c, 0);
        assert!(sent(&mut c, 29 * S).0.is_empty());
        let (f, _) = sent(&mut c, 30 * S);
        assert_eq!(f.len(), 1);
        assert_eq!(&f[0][0..6], &PEER_MAC, "unicast refresh");
        assert_eq!(c.dump()[0].state, NeighState::Probe);
        assert_eq!(c.lookup(PEER), Some(PEER_MAC), "still used while probing");
        c.on_arp(30 * S, &reply(PEER, PEER_MAC, ME));
        assert_eq!(c.dump()[0].state, NeighState::Reachable);
        // Now let it die.
        for i in 0..3 {
            assert_eq!(sent(&mut c, 60 * S + i * S).0.len(), 1);
        }
        sent(&mut c, 63 * S);
        assert!(c.dump().is_empty());
        assert_eq!(t.get(PEER), None, "withdrawn from PMDs");
    }

    #[test]
    fn bounded_capacity_wanted_queue_and_flush() {
        let (mut c, t) = cache();
        for i in 2..10u8 {
            t.want(Ipv4Addr::new(192, 168, 50, i));
        }
        c.take_wanted(0);
        assert_eq!(c.dump().len(), 4, "capacity");
        assert_eq!(
            c.stats().evicted,
            4,
            "the oldest unresolved entries made room"
        );
        assert_eq!(
            c.resolve(0, Ipv4Addr::new(192, 168, 50, 99), 1),
            Resolution::Queued
        );
        c.resolve(0, PEER, 5);
        assert_eq!(c.dump().len(), 4, "capacity");
        let mut failed = c.flush();
        failed.sort_unstable();
        assert_eq!(failed, vec![1, 5]);
        assert!(c.dump().is_empty());
    }

    /// A flood of addresses to resolve (a capacity of 4) never displaces
    /// a resolved neighbour: unresolved entries are evicted, oldest first,
    /// with their packets; once every entry is resolved, new addresses are
    /// refused. Both are counted.
    #[test]
    fn a_flood_evicts_unresolved_entries_and_never_resolved_ones() {
        let (mut c, t) = cache();
        c.request(0, PEER);
        c.on_arp(0, &reply(PEER, PEER_MAC, ME));
        assert_eq!(
            c.resolve(0, Ipv4Addr::new(192, 168, 50, 3), 30),
            Resolution::Queued
        );
        for i in 0..10_000u32 {
            t.want(Ipv4Addr::from(0x0a00_0000 + i));
            if i % 500 == 0 {
                c.take_wanted(i as u64);
            }
            assert!(c.len() <= 4, "over capacity");
        }
        c.take_wanted(10_000);
        assert_eq!(c.len(), 4, "full");
        assert_eq!(
            c.lookup(PEER),
            Some(PEER_MAC),
            "the resolved neighbour stays"
        );
        let s = c.stats();
        assert!(s.evicted > 0 && s.refused == 0, "{s:?}");
        // PEER resolved; .3 and 10,000 more asked for: three slots.
        assert_eq!(s.evicted, 10_001 - 3);
        // The evicted entry's packet comes back from `poll`, to be dropped.
        let (_, failed) = sent(&mut c, 10_000);
        assert_eq!(failed, vec![30]);
        // Resolve the three others: now the cache is full of resolved
        // entries and a new address is refused (counted), not evicting.
        for n in c.dump() {
            if n.state == NeighState::Incomplete {
                c.on_arp(10_000, &reply(n.ip, PEER_MAC, ME));
            }
        }
        c.request(10_001, Ipv4Addr::new(192, 168, 50, 99));
        assert_eq!(c.stats().refused, 1);
        assert_eq!(c.stats().evicted, s.evicted);
        assert!(c.dump().iter().all(|n| n.state == NeighState::Reachable));
        assert_eq!(
            c.resolve(10_001, Ipv4Addr::new(192, 168, 50, 98), 31),
            Resolution::Dropped(31)
        );
        assert_eq!(c.stats().refused, 2);
    }

    #[test]
    fn gratuitous_arp_layout() {
        let f = gratuitous_arp(MY_MAC, ME);
        let (op, sha, spa, tha, tpa) = parse_arp(&f).expect("arp");
        assert_eq!((op, sha, spa, tha, tpa), (1, MY_MAC, ME, [0; 6], ME));
        let (eth, rest) = etherparse::Ethernet2Header::from_slice(&f).expect("etherparse");
        assert_eq!(eth.ether_type, etherparse::EtherType::ARP);
        assert_eq!(eth.destination, [0xff; 6]);
        assert_eq!(rest.len(), 28);
    }
}
