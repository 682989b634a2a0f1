//! Executor overhead per step, with the memory journal and the file journal, and the
//! fsync latency that bounds the file journal, measured in the same run.
//!
//! `cargo bench -p benches --bench executor`

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rollback_core::journal::{FileJournal, Journal, MemoryJournal};
use rollback_core::sim::{SetKey, SimWorld};
use rollback_core::{Executor, Plan};
use std::io::Write;
use std::sync::Arc;

const STEPS: usize = 50;

fn plan(world: &SimWorld, name: &str) -> Plan {
    let mut b = Plan::builder(name).checkpoint("db", world.checkpoint("db"));
    let ids: Vec<String> = (0..STEPS).map(|i| format!("s{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let deps: Vec<&str> = if i == 0 {
            vec![]
        } else {
            vec![ids[i - 1].as_str()]
        };
        b = b.step(
            "db",
            SetKey::new(id, world, "db", &format!("k{i}"), "v"),
            &deps,
        );
    }
    b.build().expect("plan")
}

fn executor_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("executor_run_50_steps");
    g.throughput(Throughput::Elements(STEPS as u64));
    g.sample_size(20);

    let world = SimWorld::new();
    let p = plan(&world, "bench-memory");
    let mem: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    g.bench_function(BenchmarkId::new("journal", "memory"), |b| {
        b.to_async(&rt).iter(|| async {
            let r = Executor::with_journal(mem.clone()).run(&p).await.unwrap();
            assert!(r.is_committed());
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let file: Arc<dyn Journal> = Arc::new(FileJournal::open(dir.path()).unwrap());
    let p = plan(&world, "bench-file");
    g.bench_function(BenchmarkId::new("journal", "file"), |b| {
        b.to_async(&rt).iter(|| async {
            let r = Executor::with_journal(file.clone()).run(&p).await.unwrap();
            assert!(r.is_committed());
        })
    });
    g.finish();

    // The physical limit of the file journal: one small write + fdatasync.
    let mut g = c.benchmark_group("fsync");
    let path = dir.path().join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let line = [b'x'; 300];
    g.bench_function("append_300B_fdatasync", |b| {
        b.iter(|| {
            f.write_all(&line).unwrap();
            f.sync_data().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, executor_overhead);
criterion_main!(benches);
