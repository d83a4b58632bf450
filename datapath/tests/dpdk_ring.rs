//! In-process DPDK integration tests over real `net_ring` ethdevs.
//!
//! `rte_eal_init` runs once per process, so this binary has its own
//! harness: one EAL, then each test in turn, then cleanup (and a check that
//! cleanup left no runtime directory behind). It prints the plain
//! "N passed, N failed" line at the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_datapath::dpdk::eal::{Eal, EalConfig, HugepageMode};
use sluice_datapath::dpdk::ethdev::{DpdkPort, Ethdev};
use sluice_datapath::dpdk::mbuf::Mbuf;
use sluice_datapath::dpdk::mempool::Mempool;
use sluice_datapath::dpdk::ring::Ring;
use sluice_datapath::dpdk::{self};
use sluice_datapath::drop::DropReason;
use sluice_datapath::packet::{PacketBuf, PortNo};
use sluice_datapath::pipeline::l2::L2Pipeline;
use sluice_datapath::pmd::{self, PmdSpec};
use sluice_datapath::port::Port;

const WAIT: Duration = Duration::from_secs(90);
const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

fn frame(pool: &Mempool, dst: [u8; 6], src: [u8; 6], seq: u32) -> Mbuf {
    let mut m = pool.alloc().expect("mbuf");
    let d = m.append(64).expect("room");
    d[0..6].copy_from_slice(&dst);
    d[6..12].copy_from_slice(&src);
    d[12..14].copy_from_slice(&[0x08, 0x00]);
    d[14..18].copy_from_slice(&seq.to_be_bytes());
    m
}

fn enqueue_all(ring: &Ring, mut pkts: Vec<Mbuf>) {
    let deadline = Instant::now() + WAIT;
    while !pkts.is_empty() {
        ring.enqueue(&mut pkts);
        assert!(Instant::now() < deadline, "rx ring stayed full");
        std::thread::yield_now();
    }
}

fn collect(ring: &Ring, n: usize, what: &str) -> Vec<Mbuf> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < n {
        ring.dequeue(&mut got, 64);
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {n} frames for {what}",
            got.len()
        );
        std::thread::yield_now();
    }
    got
}

/// Field order is drop order: ports close before their rings are freed,
/// and everything returns its mbufs before the pool goes.
struct Rig {
    ports: Vec<Ethdev>,
    rx: [Ring; 2],
    tx: [Ring; 2],
    pool: Mempool,
}

fn rig(tag: &str, tx_slots: u32) -> Rig {
    let pool = Mempool::new(&format!("{tag}_pool"), 16384, 256).expect("pool");
    let rx = [
        Ring::new(&format!("{tag}_rx0"), 4096).unwrap(),
        Ring::new(&format!("{tag}_rx1"), 4096).unwrap(),
    ];
    let tx = [
        Ring::new(&format!("{tag}_tx0"), tx_slots).unwrap(),
        Ring::new(&format!("{tag}_tx1"), tx_slots).unwrap(),
    ];
    let ports = vec![
        Ethdev::from_rings(&format!("{tag}_p0"), &rx[0], &tx[0], &pool).unwrap(),
        Ethdev::from_rings(&format!("{tag}_p1"), &rx[1], &tx[1], &pool).unwrap(),
    ];
    Rig {
        ports,
        rx,
        tx,
        pool,
    }
}

fn run_pmd(r: &Rig, stop: &Arc<AtomicBool>) -> pmd::PmdThread {
    run_pmd_with(
        r,
        stop,
        L2Pipeline::new(vec![PortNo(0), PortNo(1)], 1024, u64::MAX),
    )
}

/// One PMD polling both ring ports through `pipeline`.
fn run_pmd_with<L>(r: &Rig, stop: &Arc<AtomicBool>, pipeline: L) -> pmd::PmdThread
where
    L: sluice_datapath::pipeline::Pipeline<<DpdkPort as Port>::Buf> + 'static,
{
    let handles: Vec<Option<DpdkPort>> = r.ports.iter().map(|p| Some(p.handle())).collect();
    pmd::spawn(
        PmdSpec {
            index: 0,
            core: None,
            rx: vec![(PortNo(0), 0), (PortNo(1), 0)],
            capture: None,
            mailbox: None,
        },
        handles,
        pipeline,
        stop.clone(),
        dpdk::register_thread,
    )
    .expect("spawn pmd")
}

/// 10 000 frames cross the switch in order and intact; every counter
/// (PMD, ethdev) agrees.
fn forwards_in_order_and_counts_match() {
    let r = rig("t1", 16384);
    let stop = Arc::new(AtomicBool::new(false));
    let pmd = run_pmd(&r, &stop);
    // B announces itself on port 1 (flooded to port 0).
    enqueue_all(&r.rx[1], vec![frame(&r.pool, [0xff; 6], B, u32::MAX)]);
    let flood = collect(&r.tx[0], 1, "the broadcast on port 0");
    assert_eq!(&flood[0].data()[6..12], &B);
    const N: u32 = 10_000;
    let pkts: Vec<Mbuf> = (0..N).map(|i| frame(&r.pool, B, A, i)).collect();
    enqueue_all(&r.rx[0], pkts);
    let got = collect(&r.tx[1], N as usize, "unicast A->B on port 1");
    for (i, m) in got.iter().enumerate() {
        let d = m.data();
        assert_eq!(d.len(), 64);
        assert_eq!(&d[0..6], &B);
        assert_eq!(
            u32::from_be_bytes([d[14], d[15], d[16], d[17]]),
            i as u32,
            "reordered"
        );
    }
    assert!(r.tx[0].is_empty(), "no unicast frame leaked to port 0");
    stop.store(true, Ordering::Relaxed);
    let st = pmd.stats.clone();
    pmd.join().unwrap();
    assert_eq!(st.rx_packets.get(), N as u64 + 1);
    assert_eq!(st.tx_packets.get(), N as u64 + 1);
    assert_eq!(st.drops.total(), 0);
    let s0 = r.ports[0].handle().stats();
    let s1 = r.ports[1].handle().stats();
    assert_eq!(s0.rx_packets + s1.rx_packets, N as u64 + 1);
    assert_eq!(s0.tx_packets + s1.tx_packets, N as u64 + 1);
    drop(got);
    drop(flood);
}

/// A full tx ring: the PMD drops and counts instead of blocking, and
/// rx = tx + drops.
fn full_tx_ring_drops_are_counted() {
    let r = rig("t2", 64);
    let stop = Arc::new(AtomicBool::new(false));
    let pmd = run_pmd(&r, &stop);
    const N: u32 = 2_000;
    // Broadcasts from port 0 all go to port 1, whose tx ring holds 63.
    let pkts: Vec<Mbuf> = (0..N).map(|i| frame(&r.pool, [0xff; 6], A, i)).collect();
    enqueue_all(&r.rx[0], pkts);
    let deadline = Instant::now() + WAIT;
    while pmd.stats.rx_packets.get() < N as u64 {
        assert!(Instant::now() < deadline, "PMD did not receive all frames");
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let st = pmd.stats.clone();
    pmd.join().unwrap();
    let dropped = st.drops.get(DropReason::TxQueueFull);
    assert_eq!(r.tx[1].len(), 63, "the tx ring is full");
    assert_eq!(st.tx_packets.get(), 63);
    assert_eq!(st.rx_packets.get(), st.tx_packets.get() + dropped);
    assert_eq!(dropped, N as u64 - 63);
}

/// Mbufs keep [`sluice_datapath::packet::HEADROOM`] bytes of headroom and
/// prepend/adj/clone behave like the heap buffers the unit tests use.
fn mbuf_headroom_and_clone() {
    let pool = Mempool::new("t3_pool", 1024, 0).unwrap();
    let mut m = frame(&pool, B, A, 7);
    assert!(m.headroom() >= sluice_datapath::packet::HEADROOM);
    let h = m.headroom();
    m.prepend(50).unwrap()[0] = 0xee;
    assert_eq!(m.len(), 114);
    assert_eq!(m.headroom(), h - 50);
    let c = m.try_clone().unwrap();
    assert_eq!(c.data(), m.data());
    assert!(m.adj(50));
    assert_eq!(&m.data()[0..6], &B);
    assert!(m.prepend(h + 1).is_none());
    let before = pool.available();
    drop(c);
    drop(m);
    assert_eq!(
        pool.available(),
        before + 2,
        "dropping returns mbufs to the pool"
    );
}

/// An IPv4/UDP frame from A to B carrying `seq`.
fn udp_frame(pool: &Mempool, seq: u32) -> Mbuf {
    let mut m = pool.alloc().expect("mbuf");
    let d = m.append(64).expect("room");
    let builder = etherparse::PacketBuilder::ethernet2(A, B)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(1000 + (seq % 64) as u16, 80);
    let payload = seq.to_be_bytes();
    let mut v = Vec::with_capacity(64);
    builder.write(&mut v, &payload).expect("build");
    v.resize(64, 0);
    d.copy_from_slice(&v);
    m
}

/// The flow program is replaced hundreds of times while a PMD forwards on
/// real DPDK ring ports: every packet arrives, in order, none dropped, and
/// the PMD really picked up new programs mid-stream.
fn program_updates_under_traffic_lose_nothing() {
    use sluice_datapath::flow::tables::FlowTables;
    use sluice_datapath::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
    let r = rig("t4", 16384);
    let tables = FlowTables::new();
    let prog_a = "table=0,priority=10,in_port=0 actions=output:1\n";
    let prog_b = "table=0,priority=20,in_port=0,udp actions=output:1\ntable=0,priority=10,in_port=0 actions=output:1\ntable=0,priority=5,ip,nw_dst=192.0.2.0/24 actions=drop\n";
    tables.replace_flows(prog_a, 0).expect("program a");
    let pipeline = FlowPipeline::new(
        tables.clone(),
        FlowPipelineConfig {
            ports: vec![PortNo(0), PortNo(1)],
            ..Default::default()
        },
    );
    let fstats = pipeline.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let pmd = run_pmd_with(&r, &stop, pipeline);
    const N: u32 = 20_000;
    const UPDATES: usize = 300;
    let updater = {
        let tables = tables.clone();
        std::thread::spawn(move || {
            for i in 0..UPDATES {
                let p = if i % 2 == 0 { prog_b } else { prog_a };
                tables.replace_flows(p, i as u64).expect("replace");
                std::thread::yield_now();
            }
        })
    };
    let mut sent = 0u32;
    let mut received = 0u32;
    let mut got: Vec<Mbuf> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while received < N {
        if sent < N {
            let chunk: Vec<Mbuf> = (sent..(sent + 64).min(N))
                .map(|i| udp_frame(&r.pool, i))
                .collect();
            let n = chunk.len() as u32;
            enqueue_all(&r.rx[0], chunk);
            sent += n;
        }
        r.tx[1].dequeue(&mut got, 256);
        for m in got.drain(..) {
            let d = m.data();
            let seq = u32::from_be_bytes([d[42], d[43], d[44], d[45]]);
            assert_eq!(seq, received, "lost or reordered");
            received += 1;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {received} of {N} frames arrived"
        );
    }
    updater.join().expect("updater");
    assert!(r.tx[0].is_empty());
    stop.store(true, Ordering::Relaxed);
    let st = pmd.stats.clone();
    pmd.join().unwrap();
    assert_eq!(st.drops.total(), 0, "drops: {:?}", st.drops.nonzero());
    assert_eq!(st.rx_packets.get(), N as u64);
    assert_eq!(st.tx_packets.get(), N as u64);
    assert!(
        fstats.reloads.get() > 0,
        "the PMD never picked up a new program"
    );
    println!(
        "    {N} packets, {UPDATES} program replacements, {} picked up by the PMD",
        fstats.reloads.get()
    );
}

/// Frames cross a real `net_memif` connection inside sluiced's PMD:
/// ring 0 → memif server port ⇄ memif client port → ring 1, steered by
/// flows, in order and intact.
fn memif_ports_carry_packets() {
    use sluice_datapath::dpdk::ethdev::EthdevConfig;
    use sluice_datapath::flow::tables::FlowTables;
    use sluice_datapath::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
    let pool = Mempool::new("t5_pool", 8192, 256).unwrap();
    let rx = Ring::new("t5_rx", 1024).unwrap();
    let tx = Ring::new("t5_tx", 1024).unwrap();
    let sock = std::env::temp_dir().join(format!("slt-memif-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let memif = |name: &str, role: &str| EthdevConfig {
        name: name.into(),
        devargs: format!("{name},role={role},socket={},id=0", sock.display()),
        rx_queues: 1,
        tx_queues: 1,
        rx_desc: 1024,
        tx_desc: 1024,
    };
    // Port numbers: 0 ring, 1 memif server, 2 memif client.
    let ports = vec![
        Ethdev::from_rings("t5_ring", &rx, &tx, &pool).unwrap(),
        Ethdev::open(&memif("net_memif10", "server"), &pool).unwrap(),
        Ethdev::open(&memif("net_memif11", "client"), &pool).unwrap(),
    ];
    let deadline = Instant::now() + WAIT;
    while !(ports[1].handle().link().up && ports[2].handle().link().up) {
        assert!(Instant::now() < deadline, "memif link never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tables = FlowTables::new();
    tables
        .add_flows(
            "table=0,priority=10,in_port=0 actions=output:1\ntable=0,priority=10,in_port=2 actions=output:0\n",
            0,
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<Option<DpdkPort>> = ports.iter().map(|p| Some(p.handle())).collect();
    let pmd = pmd::spawn(
        PmdSpec {
            index: 0,
            core: None,
            rx: vec![(PortNo(0), 0), (PortNo(1), 0), (PortNo(2), 0)],
            capture: None,
            mailbox: None,
        },
        handles,
        FlowPipeline::new(
            tables,
            FlowPipelineConfig {
                ports: vec![PortNo(0), PortNo(1), PortNo(2)],
                ..Default::default()
            },
        ),
        stop.clone(),
        dpdk::register_thread,
    )
    .unwrap();
    // The memif rings become usable a little after link up: until then the
    // server's tx takes nothing (counted as tx_queue_full). Warm up until a
    // frame makes the round trip, then send the numbered frames. Every
    // injected frame must either come back or be counted as a drop.
    let mut got = Vec::new();
    let mut injected = 0u64;
    let mut returned = 0u64;
    loop {
        enqueue_all(&rx, vec![udp_frame(&pool, u32::MAX)]);
        injected += 1;
        returned += tx.dequeue(&mut got, 64) as u64;
        if !got.is_empty() {
            got.clear();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no frame ever crossed the memif connection"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    const N: u32 = 2_000;
    let mut sent = 0;
    let mut received = 0u32;
    while received < N {
        if sent < N {
            let chunk: Vec<Mbuf> = (sent..(sent + 32).min(N))
                .map(|i| udp_frame(&pool, i))
                .collect();
            sent += chunk.len() as u32;
            injected += chunk.len() as u64;
            enqueue_all(&rx, chunk);
        }
        returned += tx.dequeue(&mut got, 64) as u64;
        for m in got.drain(..) {
            let d = m.data();
            let seq = u32::from_be_bytes([d[42], d[43], d[44], d[45]]);
            if seq == u32::MAX {
                continue; // a late warm-up frame
            }
            assert_eq!(seq, received, "lost or reordered");
            received += 1;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {received} of {N} frames came back through memif"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let st = pmd.stats.clone();
    pmd.join().unwrap();
    // Frames still in the rings after the stop are neither returned nor dropped.
    returned += tx.len() as u64;
    let in_flight = rx.len() as u64;
    assert_eq!(
        injected,
        returned + st.drops.total() + in_flight,
        "a frame vanished without a counted drop: drops {:?}",
        st.drops.nonzero()
    );
    let srv = ports[1].handle().stats();
    let cli = ports[2].handle().stats();
    assert!(srv.tx_packets >= N as u64);
    assert!(cli.rx_packets >= N as u64);
    drop(ports);
    let _ = std::fs::remove_file(&sock);
}

fn main() {
    let prefix = format!("slt-ring-{}", std::process::id());
    let eal = match Eal::init(&EalConfig {
        file_prefix: prefix.clone(),
        hugepages: HugepageMode::Auto,
        no_huge_memory_mb: 512,
        main_core: 0,
        extra_args: vec!["--no-pci".into()],
    }) {
        Ok(e) => e,
        Err(e) => {
            println!("dpdk_ring: cannot initialise DPDK: {e}");
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    // A second init in the same process is refused with a clear error.
    let second = Eal::init(&EalConfig::default()).unwrap_err().to_string();
    assert!(second.contains("already initialised"), "{second}");

    let tests: &[(&str, fn())] = &[
        (
            "forwards_in_order_and_counts_match",
            forwards_in_order_and_counts_match,
        ),
        (
            "full_tx_ring_drops_are_counted",
            full_tx_ring_drops_are_counted,
        ),
        ("mbuf_headroom_and_clone", mbuf_headroom_and_clone),
        (
            "program_updates_under_traffic_lose_nothing",
            program_updates_under_traffic_lose_nothing,
        ),
        ("memif_ports_carry_packets", memif_ports_carry_packets),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in tests {
        match std::panic::catch_unwind(f) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    let runtime_dir = format!("/var/run/dpdk/{prefix}");
    drop(eal);
    if std::path::Path::new(&runtime_dir).exists() {
        println!("test eal_cleanup_removes_runtime_dir ... FAILED ({runtime_dir} left behind)");
        failed += 1;
    } else {
        println!("test eal_cleanup_removes_runtime_dir ... ok");
        passed += 1;
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
