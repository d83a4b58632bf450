//! L2 learning switch: the Foundation pipeline and the flow program's
//! `normal` action.
//!
//! [`MacTable`] maps (MAC, VLAN) to the port the address was last seen on.
//! Entries are learned from source addresses, age out after `aging_ns`
//! without traffic, and static entries never age and are never overwritten
//! by learning. The table is bounded: when it is full, new addresses are not
//! learned (counted by the table, [`MacTable::refused_full`], shown by
//! `dump-cache` for the flow program's `normal`, and in
//! [`L2Stats::learn_full`]) and their frames flood, which is always
//! correct, only less efficient.
//!
//! A hand-over restart carries the learned entries over
//! ([`collect_macs`] in the old process, [`import_macs`] in the new one,
//! both through the process's [`MacExchange`], which each table serves
//! from its pipeline's `maintain`): the new process does not flood to
//! relearn every host.
//!
//! Thread-safety: a `MacTable` belongs to one PMD core. With several cores
//! each learns from the traffic it receives; a miss floods. Static entries
//! are installed into every core's table by the owner of the pipelines.
//! The exchange is the one shared part: control threads post a request,
//! each PMD answers it between bursts under the exchange's mutex.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::Pipeline;
use crate::drop::DropReason;
use crate::packet::{Burst, Output, PacketBuf, PortNo};
use crate::stats::Counter;
use crate::time::Nanos;

/// Default number of MAC entries per core (as OVS's `mac-table-size`).
pub const DEFAULT_MAC_CAPACITY: usize = 8192;
/// Default aging time: 300 s, as OVS and Linux bridges.
pub const DEFAULT_AGING_NS: u64 = 300 * 1_000_000_000;

#[derive(Debug, Clone, Copy)]
struct MacEntry {
    port: PortNo,
    last_seen: Nanos,
    is_static: bool,
}

#[inline]
fn mac_key(mac: [u8; 6], vlan: u16) -> u64 {
    let mut k = 0u64;
    for b in mac {
        k = k << 8 | b as u64;
    }
    (vlan as u64 & 0x0fff) << 48 | k
}

/// One learned MAC address, as a hand-over saves it (the conntrack state
/// file's version 4 carries them: `conntrack::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedMac {
    /// The address.
    pub mac: [u8; 6],
    /// Its VLAN (0: none).
    pub vlan: u16,
    /// The OpenFlow port it was last seen on.
    pub port: u16,
    /// Time since it was last seen, ns.
    pub idle: Nanos,
}

/// A bounded MAC learning table. See the module documentation.
#[derive(Debug)]
pub struct MacTable {
    entries: HashMap<u64, MacEntry>,
    capacity: usize,
    aging_ns: u64,
    /// The [`MacExchange`] requests this table served.
    served_export: u64,
    served_import: u64,
    refused_full: u64,
}

impl MacTable {
    /// A table holding at most `capacity` entries that age out after
    /// `aging_ns` nanoseconds without being refreshed.
    pub fn new(capacity: usize, aging_ns: u64) -> Self {
        MacTable {
            entries: HashMap::with_capacity(capacity.min(1 << 20)),
            capacity,
            aging_ns,
            served_export: 0,
            served_import: 0,
            refused_full: 0,
        }
    }

    /// The learned (not static) entries still live at `now`, as a
    /// hand-over saves them.
    pub fn export(&self, now: Nanos) -> Vec<SavedMac> {
        self.entries(now)
            .into_iter()
            .filter(|&(_, _, _, is_static, idle)| !is_static && idle < self.aging_ns)
            .map(|(mac, vlan, port, _, idle)| SavedMac {
                mac,
                vlan,
                port: port.0,
                idle,
            })
            .collect()
    }

    /// Learns saved entries as if each was last seen `idle` before `now`;
    /// those already aged out, held by a static entry, or beyond the
    /// capacity are skipped, an entry learned here already is kept if it
    /// is fresher. Returns how many were learned.
    pub fn import(&mut self, saved: &[SavedMac], now: Nanos) -> usize {
        let mut n = 0;
        for m in saved {
            if m.idle >= self.aging_ns {
                continue;
            }
            let seen = now.saturating_sub(m.idle);
            let key = mac_key(m.mac, m.vlan);
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.is_static || e.last_seen >= seen)
            {
                continue;
            }
            if self.learn(m.mac, m.vlan, PortNo(m.port), seen) {
                n += 1;
            }
        }
        n
    }

    /// Serves the process's [`MacExchange`]: answers a pending export
    /// request, learns a pending import. One relaxed load each when
    /// nothing is pending; pipelines call it from `maintain`.
    #[inline]
    pub fn serve_exchange(&mut self, now: Nanos) {
        let ex = &EXCHANGE;
        let e = ex.export_gen.load(Ordering::Acquire);
        if e != self.served_export {
            self.served_export = e;
            let mine = self.export(now);
            let mut g = ex.exported.lock().unwrap_or_else(|p| p.into_inner());
            if g.0 == e {
                g.1 += 1;
                g.2.extend(mine);
            }
        }
        let i = ex.import_gen.load(Ordering::Acquire);
        if i != self.served_import {
            self.served_import = i;
            let g = ex.import.lock().unwrap_or_else(|p| p.into_inner());
            self.import(&g, now);
        }
    }

    /// Learns that `mac` on `vlan` is behind `port`. Returns false when the
    /// address could not be learned (table full, multicast source, or a
    /// static entry holds it).
    #[inline]
    pub fn learn(&mut self, mac: [u8; 6], vlan: u16, port: PortNo, now: Nanos) -> bool {
        if mac[0] & 1 != 0 {
            return false;
        }
        let key = mac_key(mac, vlan);
        if let Some(e) = self.entries.get_mut(&key) {
            if e.is_static {
                return false;
            }
            e.port = port;
            e.last_seen = now;
            return true;
        }
        if self.entries.len() >= self.capacity {
            self.refused_full += 1;
            return false;
        }
        self.entries.insert(
            key,
            MacEntry {
                port,
                last_seen: now,
                is_static: false,
            },
        );
        true
    }

    /// The port `mac` on `vlan` was last seen on, unless the entry aged out.
    #[inline]
    pub fn lookup(&self, mac: [u8; 6], vlan: u16, now: Nanos) -> Option<PortNo> {
        let e = self.entries.get(&mac_key(mac, vlan))?;
        if e.is_static || now.saturating_sub(e.last_seen) < self.aging_ns {
            Some(e.port)
        } else {
            None
        }
    }

    /// Installs a static entry (never ages, never overwritten by learning).
    /// Static entries may exceed the capacity: the operator asked for them.
    pub fn add_static(&mut self, mac: [u8; 6], vlan: u16, port: PortNo) {
        self.entries.insert(
            mac_key(mac, vlan),
            MacEntry {
                port,
                last_seen: 0,
                is_static: true,
            },
        );
    }

    /// Removes an entry, static or learned. Returns whether it existed.
    pub fn remove(&mut self, mac: [u8; 6], vlan: u16) -> bool {
        self.entries.remove(&mac_key(mac, vlan)).is_some()
    }

    /// Removes learned entries idle for longer than the aging time.
    /// Returns how many were removed.
    pub fn expire(&mut self, now: Nanos) -> usize {
        let before = self.entries.len();
        let aging = self.aging_ns;
        self.entries
            .retain(|_, e| e.is_static || now.saturating_sub(e.last_seen) < aging);
        before - self.entries.len()
    }

    /// Forgets every learned entry on `port` (port deleted or link down).
    pub fn flush_port(&mut self, port: PortNo) {
        self.entries.retain(|_, e| e.is_static || e.port != port);
    }

    /// Number of entries, static and learned.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The most entries it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Source addresses not learned because the table was full.
    pub fn refused_full(&self) -> u64 {
        self.refused_full
    }

    /// True when the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(mac, vlan, port, is_static, age_ns)` for every entry, for
    /// `fdb/show`-style output.
    pub fn entries(&self, now: Nanos) -> Vec<([u8; 6], u16, PortNo, bool, u64)> {
        self.entries
            .iter()
            .map(|(&k, e)| {
                let mut mac = [0u8; 6];
                for (i, b) in mac.iter_mut().enumerate() {
                    *b = (k >> (40 - 8 * i)) as u8;
                }
                let vlan = (k >> 48) as u16;
                (
                    mac,
                    vlan,
                    e.port,
                    e.is_static,
                    now.saturating_sub(e.last_seen),
                )
            })
            .collect()
    }
}

/// How a hand-over moves the PMDs' learned MAC entries in and out of a
/// process (one per process: [`collect_macs`], [`import_macs`]).
#[derive(Debug)]
pub struct MacExchange {
    export_gen: AtomicU64,
    /// (request, answers, entries).
    exported: Mutex<(u64, usize, Vec<SavedMac>)>,
    import_gen: AtomicU64,
    import: Mutex<Vec<SavedMac>>,
}

static EXCHANGE: MacExchange = MacExchange {
    export_gen: AtomicU64::new(0),
    exported: Mutex::new((0, 0, Vec::new())),
    import_gen: AtomicU64::new(0),
    import: Mutex::new(Vec::new()),
};

/// The learned entries of every PMD's table: asks each table (served from
/// its pipeline's `maintain`) and waits at most `timeout` for `tables`
/// answers; returns the union (for an address learned by several PMDs,
/// the freshest) and how many tables answered. Control threads only.
pub fn collect_macs(tables: usize, timeout: Duration) -> (Vec<SavedMac>, usize) {
    let ex = &EXCHANGE;
    let gen = {
        let mut g = ex.exported.lock().unwrap_or_else(|p| p.into_inner());
        let gen = g.0 + 1;
        *g = (gen, 0, Vec::new());
        ex.export_gen.store(gen, Ordering::Release);
        gen
    };
    let t0 = Instant::now();
    let (answers, mut all) = loop {
        {
            let mut g = ex.exported.lock().unwrap_or_else(|p| p.into_inner());
            if g.0 == gen && (g.1 >= tables || t0.elapsed() >= timeout) {
                break (g.1, std::mem::take(&mut g.2));
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    all.sort_unstable_by_key(|m| (m.mac, m.vlan, m.idle));
    all.dedup_by_key(|m| (m.mac, m.vlan));
    (all, answers)
}

/// Has every table of this process (those made later too) learn `saved`
/// (see [`MacTable::import`]) at its next `maintain`.
pub fn import_macs(saved: Vec<SavedMac>) {
    let ex = &EXCHANGE;
    *ex.import.lock().unwrap_or_else(|p| p.into_inner()) = saved;
    ex.import_gen.fetch_add(1, Ordering::AcqRel);
}

/// Counters of the L2 pipeline on one core.
#[derive(Debug, Default)]
pub struct L2Stats {
    /// Frames forwarded to one known port.
    pub unicast: Counter,
    /// Frames flooded (unknown unicast, broadcast, multicast).
    pub flooded: Counter,
    /// Source addresses learned or refreshed.
    pub learned: Counter,
    /// Source addresses not learned because the table was full.
    pub learn_full: Counter,
    /// Learned entries expired.
    pub expired: Counter,
}

/// Reads the destination MAC, source MAC and VLAN id (0 when untagged) of
/// an Ethernet frame of at least 14 bytes.
#[inline]
fn l2_header(frame: &[u8]) -> ([u8; 6], [u8; 6], u16) {
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    src.copy_from_slice(&frame[6..12]);
    let tpid = u16::from_be_bytes([frame[12], frame[13]]);
    let vlan = if (tpid == 0x8100 || tpid == 0x88a8) && frame.len() >= 16 {
        u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff
    } else {
        0
    };
    (dst, src, vlan)
}

/// Sends `pkt` to every port in `ports` except `in_port`: copies for all
/// but the last, the original for the last. Drops are counted.
pub fn flood<B: PacketBuf>(ports: &[PortNo], in_port: PortNo, pkt: B, out: &mut Output<B>) {
    let mut targets = ports.iter().copied().filter(|&p| p != in_port);
    let Some(mut prev) = targets.next() else {
        out.drop(DropReason::L2FloodNoPort, pkt);
        return;
    };
    for next in targets {
        match pkt.try_clone() {
            Some(copy) => out.send(prev, copy),
            None => out.drops.inc(DropReason::NoBuffer),
        }
        prev = next;
    }
    out.send(prev, pkt);
}

/// The L2 learning switch pipeline over a set of ports (changed between
/// bursts by [`Pipeline::set_ports`]).
#[derive(Debug)]
pub struct L2Pipeline {
    ports: Vec<PortNo>,
    table: MacTable,
    stats: Arc<L2Stats>,
    last_expire: Nanos,
}

impl L2Pipeline {
    /// A switch over `ports` with a MAC table of the given size and aging.
    pub fn new(ports: Vec<PortNo>, capacity: usize, aging_ns: u64) -> Self {
        L2Pipeline {
            ports,
            table: MacTable::new(capacity, aging_ns),
            stats: Arc::new(L2Stats::default()),
            last_expire: 0,
        }
    }

    /// The MAC table (static entries, inspection).
    pub fn table_mut(&mut self) -> &mut MacTable {
        &mut self.table
    }

    /// The MAC table.
    pub fn table(&self) -> &MacTable {
        &self.table
    }

    /// This core's counters, shared with the control socket.
    pub fn stats(&self) -> Arc<L2Stats> {
        self.stats.clone()
    }

    #[inline]
    fn forward<B: PacketBuf>(&mut self, now: Nanos, in_port: PortNo, pkt: B, out: &mut Output<B>) {
        if pkt.len() < 14 {
            out.drop(DropReason::RxTooShort, pkt);
            return;
        }
        let (dst, src, vlan) = l2_header(pkt.data());
        if src[0] & 1 != 0 {
            out.drop(DropReason::L2SrcMulticast, pkt);
            return;
        }
        if self.table.learn(src, vlan, in_port, now) {
            self.stats.learned.inc();
        } else if self.table.lookup(src, vlan, now).is_none() {
            self.stats.learn_full.inc();
        }
        if dst[0] & 1 == 0 {
            if let Some(port) = self.table.lookup(dst, vlan, now) {
                if port == in_port {
                    out.drop(DropReason::L2SamePort, pkt);
                } else {
                    self.stats.unicast.inc();
                    out.send(port, pkt);
                }
                return;
            }
        }
        self.stats.flooded.inc();
        flood(&self.ports, in_port, pkt, out);
    }
}

/// How often `maintain` scans for aged-out entries.
const EXPIRE_INTERVAL_NS: u64 = 1_000_000_000;

impl<B: PacketBuf> Pipeline<B> for L2Pipeline {
    fn process(&mut self, now: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
        let in_port = burst.in_port;
        for pkt in burst.pkts.drain(..) {
            self.forward(now, in_port, pkt, out);
        }
    }

    fn set_ports(&mut self, ports: &[PortNo]) {
        for &p in &self.ports {
            if !ports.contains(&p) {
                self.table.flush_port(p);
            }
        }
        self.ports.clear();
        self.ports.extend_from_slice(ports);
    }

    fn maintain(&mut self, now: Nanos, _out: &mut Output<B>) {
        self.table.serve_exchange(now);
        if now.saturating_sub(self.last_expire) >= EXPIRE_INTERVAL_NS {
            self.last_expire = now;
            let n = self.table.expire(now);
            self.stats.expired.add(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::HeapBuf;

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
    const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];
    const BCAST: [u8; 6] = [0xff; 6];

    fn frame(dst: [u8; 6], src: [u8; 6]) -> HeapBuf {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        HeapBuf::from_frame(&f)
    }

    fn run(p: &mut L2Pipeline, now: Nanos, in_port: u16, pkts: Vec<HeapBuf>) -> Output<HeapBuf> {
        let mut out = Output::new(4);
        let mut burst = Burst::new(PortNo(in_port));
        burst.pkts = pkts;
        p.process(now, &mut burst, &mut out);
        assert!(burst.pkts.is_empty(), "pipeline must consume the burst");
        out
    }

    fn switch() -> L2Pipeline {
        L2Pipeline::new(vec![PortNo(0), PortNo(1), PortNo(2)], 16, 1_000)
    }

    #[test]
    fn mac_key_round_trips_through_entries() {
        let mut t = MacTable::new(4, 10);
        let mac = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc];
        assert!(t.learn(mac, 42, PortNo(3), 0));
        assert_eq!(t.entries(0), vec![(mac, 42, PortNo(3), false, 0)]);
        assert_eq!(t.lookup(mac, 42, 0), Some(PortNo(3)));
        assert_eq!(t.lookup(mac, 43, 0), None, "VLANs are separate");
    }

    #[test]
    fn unknown_unicast_floods_then_learned_reply_is_unicast() {
        let mut p = switch();
        let mut out = run(&mut p, 0, 0, vec![frame(B, A)]);
        assert_eq!(out.take(PortNo(1)).len(), 1);
        assert_eq!(out.take(PortNo(2)).len(), 1);
        assert!(
            out.take(PortNo(0)).is_empty(),
            "never back out of the ingress port"
        );
        assert_eq!(p.stats.flooded.get(), 1);

        let mut out = run(&mut p, 1, 1, vec![frame(A, B)]);
        assert_eq!(out.take(PortNo(0)).len(), 1, "A was learned on port 0");
        assert!(out.take(PortNo(2)).is_empty());
        assert_eq!(p.stats.unicast.get(), 1);
        assert_eq!(p.table.lookup(B, 0, 1), Some(PortNo(1)));
    }

    #[test]
    fn broadcast_floods_and_flood_copies_are_identical() {
        let mut p = switch();
        let f = frame(BCAST, A);
        let mut out = run(&mut p, 0, 2, vec![f.clone()]);
        let p0 = out.take(PortNo(0));
        let p1 = out.take(PortNo(1));
        assert_eq!(p0, vec![f.clone()]);
        assert_eq!(p1, vec![f]);
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let mut p = switch();
        // Multicast source.
        let out = run(&mut p, 0, 0, vec![frame(B, [0x01, 0, 0x5e, 0, 0, 1])]);
        assert_eq!(out.drops.get(DropReason::L2SrcMulticast), 1);
        // Runt.
        let out = run(&mut p, 0, 0, vec![HeapBuf::from_frame(&[0u8; 13])]);
        assert_eq!(out.drops.get(DropReason::RxTooShort), 1);
        // Destination on the ingress port.
        run(&mut p, 0, 0, vec![frame(BCAST, B)]);
        let out = run(&mut p, 0, 0, vec![frame(B, A)]);
        assert_eq!(out.drops.get(DropReason::L2SamePort), 1);
        // Flood with no other port.
        let mut lonely = L2Pipeline::new(vec![PortNo(0)], 4, 1_000);
        let out = run(&mut lonely, 0, 0, vec![frame(BCAST, A)]);
        assert_eq!(out.drops.get(DropReason::L2FloodNoPort), 1);
        assert_eq!(out.drops.total(), 1);
    }

    #[test]
    fn static_entries_win_over_learning_and_never_age() {
        let mut p = switch();
        p.table_mut().add_static(C, 0, PortNo(2));
        // A frame sourced from C on port 0 must not move the static entry.
        run(&mut p, 0, 0, vec![frame(BCAST, C)]);
        let mut out = run(&mut p, 1_000_000, 1, vec![frame(C, B)]);
        assert_eq!(out.take(PortNo(2)).len(), 1);
        assert!(out.take(PortNo(0)).is_empty());
    }

    #[test]
    fn learned_entries_age_out_with_the_fake_clock() {
        let mut p = switch();
        run(&mut p, 0, 0, vec![frame(BCAST, A)]);
        assert_eq!(p.table.lookup(A, 0, 999), Some(PortNo(0)));
        assert_eq!(
            p.table.lookup(A, 0, 1_000),
            None,
            "aged at exactly aging_ns"
        );
        // Aged entry: frames to A flood again.
        let mut out = run(&mut p, 1_500, 1, vec![frame(A, B)]);
        assert_eq!(out.take(PortNo(0)).len(), 1);
        assert_eq!(out.take(PortNo(2)).len(), 1);
        let mut o = Output::<HeapBuf>::new(4);
        Pipeline::<HeapBuf>::maintain(&mut p, 2_000_000_000, &mut o);
        assert_eq!(p.table.len(), 0);
        assert_eq!(p.stats.expired.get(), 2);
    }

    #[test]
    fn full_table_stops_learning_but_keeps_forwarding() {
        let mut p = L2Pipeline::new(vec![PortNo(0), PortNo(1)], 1, 1_000_000);
        run(&mut p, 0, 0, vec![frame(BCAST, A)]);
        let mut out = run(&mut p, 0, 1, vec![frame(A, B)]);
        assert_eq!(
            out.take(PortNo(0)).len(),
            1,
            "known destination still forwarded"
        );
        assert_eq!(p.stats.learn_full.get(), 1);
        assert_eq!(p.table.refused_full(), 1);
        assert_eq!(p.table.lookup(B, 0, 0), None);
    }

    /// Exported learned entries (not static ones, not aged ones) are
    /// learned by another table with their age; a static entry or a
    /// fresher learned one there wins.
    #[test]
    fn learned_entries_export_and_import_with_their_age() {
        let sec = 1_000_000_000;
        let mut t = MacTable::new(16, 300 * sec);
        t.learn([2, 0, 0, 0, 0, 1], 0, PortNo(1), 10 * sec);
        t.learn([2, 0, 0, 0, 0, 2], 7, PortNo(2), 40 * sec);
        t.learn([2, 0, 0, 0, 0, 3], 0, PortNo(3), 0);
        t.add_static([2, 0, 0, 0, 0, 4], 0, PortNo(4));
        let out = t.export(301 * sec);
        assert_eq!(out.len(), 2, "{out:?}");
        let two = out.iter().find(|m| m.mac[5] == 2).expect("exported");
        assert_eq!((two.vlan, two.port, two.idle), (7, 2, 261 * sec));
        let mut n = MacTable::new(16, 300 * sec);
        n.add_static([2, 0, 0, 0, 0, 1], 0, PortNo(9));
        n.learn([2, 0, 0, 0, 0, 2], 7, PortNo(5), 1000 * sec);
        assert_eq!(n.import(&out, 1000 * sec), 0);
        assert_eq!(n.lookup([2, 0, 0, 0, 0, 1], 0, 1000 * sec), Some(PortNo(9)));
        assert_eq!(n.lookup([2, 0, 0, 0, 0, 2], 7, 1000 * sec), Some(PortNo(5)));
        let mut e = MacTable::new(16, 300 * sec);
        assert_eq!(e.import(&out, 1000 * sec), 2);
        assert_eq!(e.lookup([2, 0, 0, 0, 0, 2], 7, 1000 * sec), Some(PortNo(2)));
        // It ages from when it was last seen in the old table.
        assert_eq!(e.lookup([2, 0, 0, 0, 0, 2], 7, 1040 * sec), None);
        assert_eq!(e.lookup([2, 0, 0, 0, 0, 1], 0, 1000 * sec), Some(PortNo(1)));
    }

    /// `collect_macs` gets the entries of a table served by another
    /// thread (as a PMD serves it from `maintain`).
    #[test]
    fn collect_macs_asks_the_tables_of_other_threads() {
        use std::sync::atomic::AtomicBool;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let pmd = std::thread::spawn(move || {
            let mut t = MacTable::new(16, 300_000_000_000);
            t.learn([0x0e, 0xc0, 0x11, 0xec, 0x7e, 0xd0], 9, PortNo(3), 5);
            while !s.load(Ordering::Relaxed) {
                t.serve_exchange(10);
                std::thread::yield_now();
            }
        });
        let (got, answers) = collect_macs(1, Duration::from_secs(10));
        stop.store(true, Ordering::Relaxed);
        pmd.join().expect("join");
        assert!(answers >= 1);
        let m = got
            .iter()
            .find(|m| m.mac == [0x0e, 0xc0, 0x11, 0xec, 0x7e, 0xd0])
            .expect("the other thread's entry");
        assert_eq!((m.vlan, m.port, m.idle), (9, 3, 5));
    }

    /// The table counts what it refuses when full (the flow pipeline's
    /// `normal` shows it in `dump-cache`); refreshing a known address or
    /// refusing a multicast source is not a refusal for lack of room.
    #[test]
    fn a_full_table_counts_refused_addresses() {
        let mut t = MacTable::new(2, 1_000);
        assert!(t.learn(A, 0, PortNo(0), 0));
        assert!(t.learn(B, 0, PortNo(1), 0));
        for i in 0..100u8 {
            assert!(!t.learn([2, 0, 0, 0, 1, i], 0, PortNo(0), 0));
        }
        assert!(t.learn(A, 0, PortNo(1), 1), "a known address is refreshed");
        assert!(!t.learn(BCAST, 0, PortNo(0), 1));
        assert_eq!((t.len(), t.refused_full()), (2, 100));
        // Room again after aging: learned, the count stays.
        t.expire(5_000);
        assert!(t.learn([2, 0, 0, 0, 1, 0], 0, PortNo(0), 5_000));
        assert_eq!(t.refused_full(), 100);
    }

    #[test]
    fn vlan_tagged_frames_learn_per_vlan() {
        let mut p = switch();
        let mut f = Vec::new();
        f.extend_from_slice(&BCAST);
        f.extend_from_slice(&A);
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        run(&mut p, 0, 1, vec![HeapBuf::from_frame(&f)]);
        assert_eq!(p.table.lookup(A, 100, 0), Some(PortNo(1)));
        assert_eq!(p.table.lookup(A, 0, 0), None);
    }
}
