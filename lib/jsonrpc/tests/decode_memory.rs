//! Memory a control socket server takes for hostile requests, measured with a
//! counting global allocator (this test binary only): the decode estimate
//! the memory budget charges is never below what decoding really takes, and
//! a large `[0,0,…]` request to a text command costs about its own size
//! instead of ~18 times it (issue 18, defect 1).
//!
//! Reallocations count as the difference between the new and old sizes
//! (glibc grows large blocks in place with `mremap`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};
use sluice_jsonrpc::decoded_size_estimate;
use sluice_jsonrpc::unixctl::{CtlServer, Registry, ServerConfig};
use sluice_jsonrpc::Framer;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; the counters are only bookkeeping.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grew(new_size - layout.size());
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes allocated at the peak of `f`, above what was live before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

fn service_update(services: usize, endpoints: usize) -> Value {
    let upsert: Vec<Value> = (0..services)
        .map(|s| {
            json!({
                "name": format!("ns-{s}/svc-{s}:http"),
                "protocol": "Tcp",
                "port": 80,
                "cluster_ips": [format!("10.96.{}.{}", s / 256 % 256, s % 256)],
                "session_affinity_seconds": null,
                "endpoints": (0..endpoints).map(|e| json!({
                    "ip": format!("10.{}.{}.{}", e, s / 256 % 256, s % 256),
                    "port": 8080,
                    "ready": true,
                    "zone": "zone-a",
                    "for_zones": ["zone-a"],
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"upsert": upsert, "delete": [], "flush_removed_endpoints": false})
}

/// All in one test so nothing else allocates while a peak is measured.
#[test]
fn decode_estimates_bound_real_allocation_and_text_commands_do_not_decode() {
    let zeros = format!("[{}0]", "0,".repeat(200_000));
    let many_keys =
        Value::Object((0..5_000).map(|i| (format!("key{i}"), json!(i))).collect()).to_string();
    let shapes: Vec<(&str, String)> = vec![
        ("zeros", zeros),
        ("empty arrays", format!("[{}[]]", "[],".repeat(100_000))),
        ("empty objects", format!("[{}{{}}]", "{},".repeat(100_000))),
        (
            "one-member objects",
            format!("[{}{{\"a\":1}}]", "{\"a\":1},".repeat(50_000)),
        ),
        (
            "short strings",
            format!("[{}\"\"]", "\"\",".repeat(100_000)),
        ),
        (
            "escaped strings",
            format!("[{}]", vec![r#""a\"b\\c\u00e9""#; 20_000].join(",")),
        ),
        ("nested", format!("{}0{}", "[".repeat(120), "]".repeat(120))),
        ("many keys", many_keys),
        ("service update", service_update(500, 10).to_string()),
    ];
    for (name, text) in &shapes {
        let estimate = decoded_size_estimate(text.as_bytes());
        let (value, actual) = peak_of(|| serde_json::from_str::<Value>(text).unwrap());
        drop(value);
        println!(
            "{name:>20}: {} bytes of text, decoded peak {actual} bytes, estimate {estimate}",
            text.len()
        );
        assert!(
            estimate >= actual,
            "{name}: the estimate {estimate} is below the real decoded peak {actual}"
        );
        assert!(
            estimate <= 8 * actual.max(text.len()),
            "{name}: the estimate {estimate} is far above the real peak {actual}; it would refuse requests needlessly"
        );
    }

    // A 16 MiB `[0,0,…]` sent to `version`: the server takes about the
    // request's size (its buffer), where decoding it took ~18 times that.
    let dir = tempfile::tempdir().unwrap();
    let server = CtlServer::start(
        ServerConfig::with_path(dir.path().join("s.ctl")),
        Registry::new(),
        || {},
    )
    .unwrap();
    let size = 16 << 20;
    let mut client = UnixStream::connect(server.path()).unwrap();
    let head = br#"{"id":1,"method":"version","params":["#;
    let chunk = "0,".repeat(32 * 1024);
    let mut framer = Framer::new(1 << 20);
    let (reply, peak) = peak_of(|| {
        client.write_all(head).unwrap();
        let mut sent = head.len();
        while sent + chunk.len() + 3 <= size {
            client.write_all(chunk.as_bytes()).unwrap();
            sent += chunk.len();
        }
        client.write_all(b"0]}").unwrap();
        framer.read_value(&mut client).unwrap().unwrap()
    });
    assert_eq!(
        reply["error"],
        "\"version\" command takes at most 0 arguments\n"
    );
    println!("16 MiB [0,0,...] version request: server heap peak {peak} bytes");
    assert!(
        peak < size * 3 / 2,
        "the server's heap peaked at {peak} bytes for a {size}-byte request"
    );
}
