//! Bytes per flow of the flow program, without a datapath: the bench's
//! memory figure (`benches/src/lib.rs` `control_plane`: 100,000 `/32`
//! routes installed with `add-flows` bundles of at most 900 KiB) measured
//! in-process, as live heap bytes (a counting allocator over the system
//! one) and as VmRSS, before and after the first lookup builds the
//! routing table's specialised index (`classifier::special::prepare`, what
//! a PMD's first upcall does).
//!
//! ```text
//! cargo run --release -p sluice-datapath --example flow_memory [-- N]
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_datapath::classifier::special;
use sluice_datapath::flow::program::{Rule, RuleStats};
use sluice_datapath::flow::tables::FlowTables;
use sluice_datapath::flow::text::parse_flow;
use std::sync::Arc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; the counter is only bookkeeping.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    // The bench's flows (benches/src/scenario.rs host_route_flows).
    let flows: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "priority=32,ip,nw_dst={} actions=mod_dl_dst:02:00:00:00:01:01,output:2",
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + i)
            )
        })
        .collect();
    let mut bundles = vec![String::new()];
    for f in &flows {
        if bundles
            .last()
            .is_some_and(|b| b.len() + f.len() + 32 > 900 * 1024)
        {
            bundles.push(String::new());
        }
        if let Some(b) = bundles.last_mut() {
            b.push_str(f);
            b.push('\n');
        }
    }
    let t = FlowTables::new();
    let (heap0, rss0) = (LIVE.load(Ordering::Relaxed), rss());
    for b in &bundles {
        t.add_flows(b, 0).expect("flows");
    }
    let (heap1, rss1) = (LIVE.load(Ordering::Relaxed), rss());
    special::prepare(&t.program());
    let (heap2, rss2) = (LIVE.load(Ordering::Relaxed), rss());
    let per = |a: usize, b: usize| (b as f64 - a as f64) / f64::from(n);
    // The rules alone (what any table must hold): a vector of them.
    let before = LIVE.load(Ordering::Relaxed);
    let alone: Vec<Arc<Rule>> = flows
        .iter()
        .map(|f| {
            let mut spec = parse_flow(f).expect("flow");
            spec.actions.shrink_to_fit();
            Arc::new(Rule {
                spec,
                created: 0,
                stats: Arc::new(RuleStats::default()),
            })
        })
        .collect();
    let rules_alone = per(before, LIVE.load(Ordering::Relaxed));
    drop(alone);
    println!(
        "sizes: Rule {} B, Match {} B, Action {} B; the rules alone (Vec<Arc<Rule>>): {rules_alone:.0} B per flow",
        std::mem::size_of::<Rule>(),
        std::mem::size_of::<sluice_datapath::flow::matches::Match>(),
        std::mem::size_of::<sluice_datapath::flow::action::Action>()
    );
    println!(
        "{n} flows in {} bundles; {}",
        bundles.len(),
        special::describe(&t.program()).trim()
    );
    println!(
        "heap bytes per flow: rules {:.0}, index {:.0}, total {:.0}",
        per(heap0, heap1),
        per(heap1, heap2),
        per(heap0, heap2)
    );
    println!(
        "VmRSS bytes per flow: rules {:.0}, index {:.0}, total {:.0}",
        per(rss0, rss1),
        per(rss1, rss2),
        per(rss0, rss2)
    );
}
