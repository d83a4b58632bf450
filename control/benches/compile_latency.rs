//! One endpoint change with 100k Services × 10 endpoints installed, as the
//! agent sees it: p50/p99/max of the incremental update (which returns the
//! `NodeChanges`) and of its JSON encoding over 1,000 changes, and the
//! memory the compiler holds. For scale it also times the from-scratch
//! `compile` of 10k and 100k Services × 10 and a full `program()` + `diff`
//! at 100k (what the agent would do without the incremental compiler).
//!
//! `cargo bench -p sluice-control --bench compile_latency` (no criterion:
//! it prints its figures). Arguments: `[SERVICES [ENDPOINTS [CHANGES]]]`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_api::node::diff;
use sluice_control::agent::{compile, IncrementalCompiler, Limits, NodeRows, RowUpdate};

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        PEAK.fetch_max(n, Ordering::Relaxed);
        // SAFETY: the caller's layout is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new >= l.size() {
            let n = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
            PEAK.fetch_max(n, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
        }
        // SAFETY: `p` was allocated by `System` with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// CPU time this thread has used: the machine is shared, so wall-clock
/// figures include time spent waiting for a core; CPU time does not.
fn cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall-clock and CPU time of `f`.
fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration, Duration) {
    let (w, c) = (Instant::now(), cpu());
    let r = f();
    (r, w.elapsed(), cpu() - c)
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// `VmRSS` and `VmHWM` of this process in MiB (0 when unreadable).
fn rss() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |k: &str| -> f64 {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn both(w: Duration, c: Duration) -> String {
    format!("{} wall, {} cpu", ms(w), ms(c))
}

fn percentiles(name: &str, wall: &mut [Duration], cpu: &mut [Duration]) {
    wall.sort();
    cpu.sort();
    println!(
        "  {name}: wall p50 {} p99 {} max {} | cpu p50 {} p99 {} max {}",
        ms(pct(wall, 0.5)),
        ms(pct(wall, 0.99)),
        ms(*wall.last().expect("samples")),
        ms(pct(cpu, 0.5)),
        ms(pct(cpu, 0.99)),
        ms(*cpu.last().expect("samples")),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; take the numbers only.
    let nums: Vec<u64> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    let services = nums.first().copied().unwrap_or(100_000);
    let eps = nums.get(1).copied().unwrap_or(10);
    let n_changes = nums.get(2).copied().unwrap_or(1_000) as usize;

    let small = common::rows(10_000, eps);
    let (c, w, t) = timed(|| compile(&small));
    println!(
        "compile (from scratch) 10000 Services x {eps}: {} ({} flows, {} errors)",
        both(w, t),
        c.program.flows.len(),
        c.errors.len()
    );
    let batch = RowUpdate::between(&NodeRows::default(), &small);
    let mut inc = IncrementalCompiler::new(Limits::default());
    let (changes, w, t) = timed(|| inc.update(batch));
    let (json, jw, jt) = timed(|| serde_json::to_string(&changes).unwrap_or_default());
    println!(
        "10000 Services x {eps} in one batch into an empty incremental compiler: update + NodeChanges {}; JSON {} ({:.1} MiB)",
        both(w, t),
        both(jw, jt),
        mib(json.len())
    );
    drop((small, c, inc, changes, json));

    let rows = common::rows(services, eps);
    let before = LIVE.load(Ordering::Relaxed);
    let (mut inc, w, t) = timed(|| IncrementalCompiler::from_rows(&rows, Limits::default()));
    let held = LIVE.load(Ordering::Relaxed) - before;
    let rows_bytes = before;
    drop(rows);
    let (rss_now, hwm) = rss();
    println!(
        "incremental load {services} Services x {eps}: {}",
        both(w, t)
    );
    println!(
        "memory: compiler holds {:.1} MiB of heap (rows + indexes + program); the input rows were {:.1} MiB; process RSS {:.1} MiB, peak RSS {:.1} MiB",
        mib(held),
        mib(rows_bytes),
        rss_now,
        hwm
    );

    let mut changes = common::Changes::new(services, eps);
    let (mut wall, mut cpus) = (Vec::new(), Vec::new());
    let (mut enc_w, mut enc_c) = (Vec::new(), Vec::new());
    let mut kinds: std::collections::BTreeMap<&str, (Vec<Duration>, Vec<Duration>)> =
        Default::default();
    let mut ops = 0usize;
    for _ in 0..n_changes {
        let (u, kind) = changes.next_change();
        let (c, w, t) = timed(|| inc.update([u]));
        let (text, ew, et) = timed(|| serde_json::to_string(&c).unwrap_or_default());
        std::hint::black_box(text);
        ops += c.flow_ops.len() + c.services.upsert.len() + c.services.delete.len();
        wall.push(w);
        cpus.push(t);
        enc_w.push(ew);
        enc_c.push(et);
        let k = kinds.entry(kind).or_default();
        k.0.push(w);
        k.1.push(t);
        let s = inc.last_stats();
        assert!(s.services_checked <= 1 && !s.full, "{s:?}");
    }
    println!(
        "one endpoint change, {services} Services x {eps} installed, {n_changes} changes ({ops} items in the change sets):"
    );
    percentiles("update + NodeChanges", &mut wall, &mut cpus);
    for (k, (mut w, mut c)) in kinds {
        percentiles(&format!("  {k:6} ({:4})", w.len()), &mut w, &mut c);
    }
    percentiles("JSON encoding of the change set", &mut enc_w, &mut enc_c);

    // Without the incremental compiler: rebuild and diff the whole program.
    let (old, mw, mt) = timed(|| inc.program());
    let (u, _) = changes.next_change();
    let quick = inc.update([u]);
    let new = inc.program();
    let (full, dw, dt) = timed(|| diff(&old, &new));
    assert_eq!(full, quick, "the journal's changes equal the full diff");
    println!(
        "for comparison at {services} Services: program() {}; full diff {} ({} flows)",
        both(mw, mt),
        both(dw, dt),
        new.flows.len()
    );
    drop((old, new));
    let rows = inc.rows();
    let (c, w, t) = timed(|| compile(&rows));
    println!(
        "compile (from scratch) {services} Services x {eps}: {}",
        both(w, t)
    );
    assert_eq!(c, inc.compiled(), "incremental equals from scratch");
    println!("peak heap {:.1} MiB", mib(PEAK.load(Ordering::Relaxed)));
}
