//! Executor overhead per step (section 4), memory and file journals, beside the fsync
//! latency that bounds the file journal — measured in the same run, on the same file system.

use crate::{secs, Args, Res};
use async_trait::async_trait;
use benches::{fmt_ratio, fmt_secs, median, Report, Row};
use rollback_core::journal::{Entry, FileJournal, Journal, Lease, LostTail, MemoryJournal, Record};
use rollback_core::sim::{SetKey, SimWorld};
use rollback_core::{Executor, Plan};
use std::io::{Seek, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A journal that counts the disk syncs its inner [`FileJournal`] makes, by its write
/// paths: one `fdatasync` per `append` / `append_all` (plus the directory's for a run's
/// first write), two (file and directory) per lease written and per outcome's end witness.
struct Syncs<J> {
    inner: J,
    /// Journal writes (`append` / `append_all` calls).
    writes: AtomicU64,
    syncs: AtomicU64,
    started: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl<J> Syncs<J> {
    fn new(inner: J) -> Self {
        Syncs {
            inner,
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            started: Default::default(),
        }
    }
    fn add(&self, n: u64) {
        self.syncs.fetch_add(n, Ordering::Relaxed);
    }
    fn write(&self, run_id: &str, entries: &[&Entry]) {
        let first = self
            .started
            .lock()
            .map(|mut s| s.insert(run_id.to_string()))
            .unwrap_or(false);
        let witnesses = entries.iter().filter(|e| e.is_outcome()).count() as u64;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.add(1 + u64::from(first) + 2 * witnesses);
    }
}

#[async_trait]
impl<J: Journal> Journal for Syncs<J> {
    async fn append(
        &self,
        run_id: &str,
        entry: &Entry,
        epoch: u64,
    ) -> rollback_core::Result<Record> {
        self.write(run_id, &[entry]);
        self.inner.append(run_id, entry, epoch).await
    }
    async fn append_all(
        &self,
        run_id: &str,
        entries: &[Entry],
        epoch: u64,
    ) -> rollback_core::Result<Vec<Record>> {
        self.write(run_id, &entries.iter().collect::<Vec<_>>());
        self.inner.append_all(run_id, entries, epoch).await
    }
    async fn records(&self, run_id: &str) -> rollback_core::Result<Vec<Record>> {
        self.inner.records(run_id).await
    }
    async fn runs(&self) -> rollback_core::Result<Vec<String>> {
        self.inner.runs().await
    }
    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> rollback_core::Result<Lease> {
        self.add(2);
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> rollback_core::Result<()> {
        self.add(2);
        self.inner.release_lease(key, holder).await
    }
    async fn lost_tail(&self, run_id: &str) -> rollback_core::Result<Option<LostTail>> {
        self.inner.lost_tail(run_id).await
    }
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
    // The same with a fresh journal per run: without the check for unfinished runs reading
    // every earlier run's records (`Executor::unfinished`), which the row above includes.
    let mut fresh = Vec::new();
    for _ in 0..runs {
        fresh.push(
            per_step(Arc::new(MemoryJournal::new()), "bench-memory", 1)
                .await?
                .0,
        );
    }
    let fresh = median(&fresh);
    // The file journal and its physical limit, one ~500-byte append + fdatasync on the
    // same file system, measured in turns (a run of the plan, then as many fsyncs as it
    // has steps), so that the disk's load weighs on both alike.
    let file_journal = Arc::new(Syncs::new(FileJournal::open(dir.path())?));
    let rounds = args.reps.max(3) * 2;
    let (mut files, mut fsyncs) = (Vec::new(), Vec::new());
    let mut file_records = 0.0;
    let mut writes_per_run = Vec::new();
    let mut syncs_per_run = Vec::new();
    for _ in 0..rounds {
        let before = (
            file_journal.writes.load(Ordering::Relaxed),
            file_journal.syncs.load(Ordering::Relaxed),
        );
        let (t, recs) = per_step(file_journal.clone(), "bench-file", 1).await?;
        files.push(t);
        file_records = recs;
        // per_step makes a warm-up run and a timed run.
        writes_per_run.push((file_journal.writes.load(Ordering::Relaxed) - before.0) as f64 / 2.0);
        syncs_per_run.push((file_journal.syncs.load(Ordering::Relaxed) - before.1) as f64 / 2.0);
        // The same write pattern as a journal record, on a fresh file like a run's:
        // open, seek to the end, write ~500 bytes, fdatasync, close.
        let path = dir.path().join(format!("fsync-probe-{}", fsyncs.len()));
        let v = tokio::task::spawn_blocking(move || -> std::io::Result<f64> {
            let line = [b'x'; 500];
            let mut v = Vec::new();
            for _ in 0..STEPS {
                let t = Instant::now();
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(&path)?;
                f.seek(std::io::SeekFrom::End(0))?;
                f.write_all(&line)?;
                f.sync_data()?;
                drop(f);
                v.push(secs(t));
            }
            Ok(median(&v))
        })
        .await??;
        fsyncs.push(v);
    }
    let (file, fsync) = (median(&files), median(&fsyncs));
    let writes = median(&writes_per_run) / STEPS as f64;
    let syncs = median(&syncs_per_run) / STEPS as f64;
    let mut r = Report::default();
    r.push(
        Row::new(
            "4. executor overhead",
            format!(
                "per step, memory journal ({STEPS}-step sim plan; one journal for its {} runs, each run's start reads the earlier ones)",
                runs + 1
            ),
        )
        .rollback(fmt_secs(mem))
        .reference(format!(
            "the same, a fresh journal per run (one earlier run, the warm-up): {} — reading the earlier runs costs {} of it",
            fmt_secs(fresh),
            fmt_secs((mem - fresh).max(0.0))
        ))
        .target("≤ 20 µs per step", Some(mem <= 20e-6)),
    );
    let ratio = file / fsync;
    r.push(
        Row::new(
            "",
            format!("per step, file journal ({file_records:.2} records per step)"),
        )
        .rollback(fmt_secs(file))
        .reference(format!(
            "a record's write + fdatasync (open, seek, 500 bytes, fdatasync, close), same file system: {}",
            fmt_secs(fsync)
        ))
        .ratio(format!("{} the fsync latency", fmt_ratio(ratio)))
        .target("≤ 1.5× the fsync latency", Some(ratio <= 1.5)),
    );
    r.push(
        Row::new(
            "",
            "fsynced journal writes per step, file journal (an outcome rides with the next record)",
        )
        .rollback(format!("{writes:.2}"))
        .reference("one per step: the intent before each action")
        .ratio(format!("{writes:.2} per step"))
        .target("≤ 1.2 per step", Some(writes <= 1.2)),
    );
    r.push(
        Row::new(
            "",
            "all disk syncs per step: journal writes, plus the run's lease (acquire, release), new file's directory and end witness, spread over its steps",
        )
        .rollback(format!("{syncs:.2}"))
        .reference(format!(
            "{:.0} per {STEPS}-step run",
            syncs * STEPS as f64
        ))
        .ratio(format!("{syncs:.2} per step")),
    );
    r.note(format!(
        "executor: {:.2} journal records per step (memory journal {:.2}) in {:.2} writes, {:.2} disk syncs per step in all; file journal per step ≈ syncs × fsync = {} predicted, {} measured; medians of {rounds} turns",
        file_records,
        mem_records,
        writes,
        syncs,
        fmt_secs(syncs * fsync),
        fmt_secs(file)
    ));
    Ok(r)
}
