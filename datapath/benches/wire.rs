//! Wire-format parse cost per packet.
//!
//! `cargo bench -p sluice-datapath --bench wire` reports the time to parse
//! one packet (criterion's time per iteration is nanoseconds per packet):
//! - `eth_ipv4_tcp/parse`: Ethernet → IPv4 (header checksum verified) →
//!   TCP header (checksum trusted, as when the NIC has verified it);
//! - `eth_ipv4_tcp/parse_verify_l4`: the same plus the TCP checksum over a
//!   64-byte payload;
//! - `geneve/parse`: a Geneve header with two options, every option
//!   visited, and the inner Ethernet header.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
#[path = "common/wire_work.rs"]
mod wire_work;

use sluice_datapath::wire::ChecksumMode;
use wire_work::{eth_ipv4_tcp_frame, geneve_payload, parse_eth_ipv4_tcp, parse_geneve};

fn bench(c: &mut Criterion) {
    let frame = eth_ipv4_tcp_frame();
    let geneve = geneve_payload();
    // The benchmarks must parse what they claim to, not bail out early.
    assert_eq!(
        parse_eth_ipv4_tcp(&frame, ChecksumMode::Verify),
        Ok((40000, 80))
    );
    assert!(parse_geneve(&geneve).is_ok());

    let mut group = c.benchmark_group("eth_ipv4_tcp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| parse_eth_ipv4_tcp(black_box(&frame), ChecksumMode::Trust))
    });
    group.bench_function("parse_verify_l4", |b| {
        b.iter(|| parse_eth_ipv4_tcp(black_box(&frame), ChecksumMode::Verify))
    });
    group.finish();

    let mut group = c.benchmark_group("geneve");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| b.iter(|| parse_geneve(black_box(&geneve))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
