//! The client-side cost a table fingerprint is made of: blake3 over a binary COPY stream,
//! fed either one row (~100 bytes, what PostgreSQL sends per COPY message) at a time or in
//! large gathered spans. The gap between the two is why rollback-postgres gathers COPY
//! messages into 256 KiB spans before hashing; the large-span rate is the client's
//! ceiling on one core. Also rollback-core's framed `Hasher` (used for manifests and
//! fingerprints of small records).
//!
//! `cargo bench -p benches --bench hashing`

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

/// A pgbench_accounts-like row as a binary COPY tuple: 4 fields, 4+4+4+84 bytes.
fn row(i: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(114);
    v.extend_from_slice(&4i16.to_be_bytes());
    for x in [i, i / 100_000 + 1, 0] {
        v.extend_from_slice(&4i32.to_be_bytes());
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(&84i32.to_be_bytes());
    v.extend_from_slice(&[b' '; 84]);
    v
}

fn hashing(c: &mut Criterion) {
    const ROWS: u32 = 40_000;
    let rows: Vec<Vec<u8>> = (0..ROWS).map(row).collect();
    let stream: Vec<u8> = rows.concat();
    let mut g = c.benchmark_group("blake3_copy_stream");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    g.bench_function(BenchmarkId::new("update_per", "row"), |b| {
        b.iter(|| {
            let mut h = blake3::Hasher::new();
            for r in &rows {
                h.update(black_box(r));
            }
            h.finalize()
        })
    });
    for span in [8 * 1024usize, 256 * 1024] {
        g.bench_function(
            BenchmarkId::new("update_per", format!("{}KiB", span / 1024)),
            |b| {
                b.iter(|| {
                    let mut h = blake3::Hasher::new();
                    for s in stream.chunks(span) {
                        h.update(black_box(s));
                    }
                    h.finalize()
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("core_hasher");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("field_x3_per_entry_10k_entries", |b| {
        b.iter(|| {
            let mut h = rollback_core::Hasher::new();
            for i in 0..10_000u64 {
                h.field(format!("data/{:03}/{i:08}.bin", i % 997).as_bytes());
                h.field(&1024u64.to_le_bytes());
                h.field(b"0123456789abcdef0123456789abcdef");
            }
            h.finish()
        })
    });
    g.finish();
}

criterion_group!(benches, hashing);
criterion_main!(benches);
