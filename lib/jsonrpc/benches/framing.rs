//! The framer's scan over a large OVSDB transaction (the shape of the
//! agent speed probe's 10k Services x 10 endpoints: mostly string text),
//! delivered in 64 KiB reads as `Framer::read_frame` does, and the
//! decoded-size estimate servers take of such a message before decoding it.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_jsonrpc::framing::Framer;

/// A `transact` of `rows` inserts with UUID-named references, addresses
/// and names, about 200 bytes per row.
fn transaction(rows: usize) -> Vec<u8> {
    let mut ops = Vec::with_capacity(rows);
    for i in 0..rows {
        ops.push(serde_json::json!({
            "op": "insert",
            "table": "Endpoint",
            "uuid-name": format!("ep{i}"),
            "row": {
                "ip": format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
                "service": ["named-uuid", format!("svc{}", i / 10)],
                "name": format!("default/web-{i}-\"quoted\"\\path"),
                "ready": true,
                "port": 8080,
            }
        }));
    }
    let mut params = vec![serde_json::json!("Sluice_Node")];
    params.extend(ops);
    serde_json::to_vec(&serde_json::json!({"id": 1, "method": "transact", "params": params}))
        .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let wire = transaction(20_000);
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.sample_size(20);
    group.bench_function("transact_20k_rows_64k_reads", |b| {
        b.iter(|| {
            let mut framer = Framer::new(1 << 30);
            let mut frames = 0;
            for chunk in wire.chunks(64 * 1024) {
                framer.push(chunk);
                while let Ok(Some(frame)) = framer.next_frame_ref() {
                    frames += frame.len();
                }
            }
            assert_eq!(frames, wire.len());
        })
    });
    group.bench_function("decoded_size_estimate_20k_rows", |b| {
        b.iter(|| sluice_jsonrpc::decoded_size_estimate(criterion::black_box(&wire)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
