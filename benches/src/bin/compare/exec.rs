//! Executor overhead per step (section 4), memory and file journals, beside the fsync
//! latency that bounds the file journal — measured in the same run, on the same file system.

use crate::{secs, Args, Res};
use benches::{fmt_ratio, fmt_secs, median, Report, Row};
use rollback_core::journal::{FileJournal, Journal, MemoryJournal};
use rollback_core::sim::{SetKey, SimWorld};
use rollback_core::{Executor, Plan};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

const STEPS: usize = 50;

fn plan(world: &SimWorld, name: &str) -> Res<Plan> {
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
    Ok(b.build()?)
}

/// Per-step seconds of `runs` runs of a 50-step plan, and journal records per step.
async fn per_step(journal: Arc<dyn Journal>, name: &str, runs: usize) -> Res<(f64, f64)> {
    let world = SimWorld::new();
    let p = plan(&world, name)?;
    // one warm-up run
    let r = Executor::with_journal(journal.clone()).run(&p).await?;
    let records = journal.records(&r.run_id).await?.len() as f64 / STEPS as f64;
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = Executor::with_journal(journal.clone()).run(&p).await?;
        v.push(secs(t) / STEPS as f64);
        if !r.is_committed() {
            return Err("the bench plan did not commit".into());
        }
    }
    Ok((median(&v), records))
}

pub(crate) async fn executor(args: &Args) -> Res<Report> {
    let dir = tempfile::tempdir()?;
    let runs = 10 * args.reps;
    let (mem, mem_records) = per_step(Arc::new(MemoryJournal::new()), "bench-memory", runs).await?;
    let file_journal: Arc<dyn Journal> = Arc::new(FileJournal::open(dir.path())?);
    let (file, file_records) = per_step(file_journal, "bench-file", args.reps.max(3)).await?;
    // The physical limit of the file journal: one ~300-byte append + fdatasync.
    let path = dir.path().join("fsync-probe");
    let fsync = tokio::task::spawn_blocking(move || -> std::io::Result<f64> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let line = [b'x'; 300];
        let mut v = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            f.write_all(&line)?;
            f.sync_data()?;
            v.push(secs(t));
        }
        Ok(median(&v))
    })
    .await??;
    let mut r = Report::default();
    r.push(
        Row::new(
            "4. executor overhead",
            format!("per step, memory journal ({STEPS}-step sim plan)"),
        )
        .rollback(fmt_secs(mem))
        .reference("—"),
    );
    r.push(
        Row::new(
            "",
            format!(
                "per step, file journal ({:.1} fsynced records per step)",
                file_records
            ),
        )
        .rollback(fmt_secs(file))
        .reference(format!("300-byte append + fdatasync: {}", fmt_secs(fsync)))
        .ratio(format!(
            "{} fsync latencies per step",
            fmt_ratio(file / fsync)
        )),
    );
    r.note(format!(
        "executor: {:.1} journal records per step (memory journal {:.1}); file journal per step ≈ records × fsync = {} predicted, {} measured",
        file_records,
        mem_records,
        fmt_secs(file_records * fsync),
        fmt_secs(file)
    ));
    Ok(r)
}
