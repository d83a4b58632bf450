//! The agent's compiler: from-scratch `compile` of 10k Services × 10
//! endpoints, the incremental compiler's first load of the same, and one
//! endpoint change (incremental update plus its `NodeChanges`) with 100k
//! Services × 10 endpoints installed.
//!
//! `cargo bench -p sluice-control --bench compile -- --quick`; the
//! percentiles and memory at 100k are printed by the `compile_latency`
//! bench binary.

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sluice_control::agent::{compile, IncrementalCompiler, Limits};

fn from_scratch(c: &mut Criterion) {
    let rows = common::rows(10_000, 10);
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("from_scratch_10k_services_x10", |b| {
        b.iter(|| compile(&rows))
    });
    g.bench_function("incremental_load_10k_services_x10", |b| {
        b.iter(|| IncrementalCompiler::from_rows(&rows, Limits::default()))
    });
    g.finish();
}

fn endpoint_change(c: &mut Criterion) {
    let (services, eps) = (100_000, 10);
    let mut inc = IncrementalCompiler::from_rows(&common::rows(services, eps), Limits::default());
    let mut changes = common::Changes::new(services, eps);
    let mut g = c.benchmark_group("incremental");
    g.bench_function("endpoint_change_100k_services_x10", |b| {
        b.iter_batched(
            || changes.next_change().0,
            |u| inc.update([u]),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, from_scratch, endpoint_change);
criterion_main!(benches);
