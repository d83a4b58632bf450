//! The state saver's cost follows the changes, not the table: with a large
//! table (100,000 connections in the test suite; `SAVER_COST_CONNS=1000000`
//! for the figure) and a few changes, a round between compactions looks
//! only at the connections the table's change log names (asserted: it
//! examines as many as changed and does not scan), writes only them, and
//! the files read back as the table. The figure line ("saver cost:")
//! compares, on the same table in the same run, the round's time with a
//! scan of the whole table (what every round did before the change log)
//! and with a compaction.

use std::net::Ipv4Addr;
use std::time::Instant;

use sluice_datapath::conntrack::nat::Tuple;
use sluice_datapath::conntrack::state::{SavedConn, SavedProto, SavedState, Tracker};
use sluice_datapath::conntrack::{ConnFilter, ConnKey, Conntrack, ConntrackConfig};
use sluice_datapath::daemon::state::{self, Incremental};
use sluice_datapath::time::clock_ns;

const HOUR: u64 = 3_600_000_000_000;

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i)
}

fn conn(i: u32) -> SavedConn {
    let t = Tuple {
        src: u32::from(client(i)),
        dst: 0xc0a8_0001,
        sport: 40000,
        dport: 53,
    };
    let r = Tuple {
        src: t.dst,
        dst: t.src,
        sport: t.dport,
        dport: t.sport,
    };
    let key = |tuple| ConnKey {
        zone: 1,
        proto: 17,
        tuple,
    };
    SavedConn {
        keys: [key(t), key(r)],
        nat: 0,
        proto: SavedProto::Other,
        replied: true,
        remaining: HOUR,
        packets: [1, 1],
        bytes: [64, 64],
        mark: 0,
        label: 0,
        lb: None,
    }
}

fn add(ct: &Conntrack, ids: std::ops::Range<u32>) {
    let s = SavedState {
        conns: ids.map(conn).collect(),
        ..Default::default()
    };
    let n = s.conns.len();
    assert_eq!(ct.restore(&s, clock_ns()).restored, n);
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[test]
fn a_saver_round_follows_the_changes_not_the_table() {
    let n: u32 = std::env::var("SAVER_COST_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("conntrack.state");
    let ct = Conntrack::new(ConntrackConfig {
        max_connections: n as usize + 1000,
        ..Default::default()
    });
    add(&ct, 0..n);
    let mut inc = Incremental::new(&path);
    let t = Instant::now();
    let first = inc.round(&ct, None).expect("the first save");
    let compaction_ms = ms(t);
    assert!(first.compacted && first.written == n as usize, "{first:?}");

    let t = Instant::now();
    let quiet = inc.round(&ct, None).expect("a quiet save");
    let quiet_ms = ms(t);
    assert_eq!((quiet.examined, quiet.bytes), (0, 0), "{quiet:?}");

    // 50 new connections, 50 gone (the flushes scan the table: not timed).
    add(&ct, n..n + 50);
    for i in 0..50 {
        let f = ConnFilter {
            ip: Some(client(i * 7)),
            ..Default::default()
        };
        assert_eq!(ct.flush(&f), 1);
    }
    let t = Instant::now();
    let r = inc.round(&ct, None).expect("a save of 100 changes");
    let changes_ms = ms(t);
    assert!(!r.scanned && !r.compacted, "{r:?}");
    assert_eq!((r.written, r.deleted, r.examined), (50, 50, 100), "{r:?}");
    let back = state::load(&path).expect("loads").expect("a state file");
    assert_eq!(back.state.conns.len(), ct.len());

    // The same 100 changes found by a scan (every round before the log).
    let mut tracker = Tracker::new();
    tracker.full(&ct, clock_ns());
    add(&ct, n + 50..n + 100);
    for i in 50..100 {
        let f = ConnFilter {
            ip: Some(client(i * 7)),
            ..Default::default()
        };
        assert_eq!(ct.flush(&f), 1);
    }
    let t = Instant::now();
    let scan = tracker.changes(&ct, clock_ns());
    let scan_ms = ms(t);
    assert_eq!((scan.upserts.len(), scan.deleted.len()), (50, 50));
    assert!(scan.examined >= n as usize - 100);
    println!(
        "saver cost at {n} connections: a round with 100 changes (50 new, 50 gone) {changes_ms:.2} ms examining {} connections, {} bytes written; a quiet round {quiet_ms:.3} ms examining 0; the same changes found by a scan of the table (every round before the change log) {scan_ms:.1} ms examining {}; a compaction {compaction_ms:.0} ms ({} bytes){}",
        r.examined,
        r.bytes,
        scan.examined,
        first.bytes,
        if cfg!(debug_assertions) {
            " [debug build]"
        } else {
            ""
        }
    );
}
