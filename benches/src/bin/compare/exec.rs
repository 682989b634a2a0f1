//! Executor overhead per step (section 4), memory and file journals, beside the fsync
//! latency that bounds the file journal — measured in the same run, on the same file system.

use crate::{secs, Args, Res};
use async_trait::async_trait;
use benches::{fmt_ratio, fmt_secs, median, Report, Row};
use rollback_core::journal::{Entry, FileJournal, Journal, Lease, LostTail, MemoryJournal, Record};
use rollback_core::sim::{SetKey, SimWorld};
use rollback_core::{Executor, Plan};
use std::io::{Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STEPS: usize = 50;

/// Earlier runs of the plan in the memory journal measured against a fresh one: the
/// executor's cost per step must not grow with the journal's history.
const HISTORY: usize = 500;

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
/// first write), two (file and directory) per lease taken and per outcome's end witness,
/// one per lease released (its file; the folder is not synced).
struct Syncs<J> {
    inner: J,
    /// Journal writes (`append` / `append_all` calls).
    writes: AtomicU64,
    syncs: AtomicU64,
    /// Nanoseconds spent inside the inner journal's appends.
    append_ns: AtomicU64,
    /// Each append's seconds.
    append_secs: std::sync::Mutex<Vec<f64>>,
    started: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl<J> Syncs<J> {
    fn new(inner: J) -> Self {
        Syncs {
            inner,
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            append_ns: AtomicU64::new(0),
            append_secs: Default::default(),
            started: Default::default(),
        }
    }
    fn timed<T>(&self, t: Instant, out: T) -> T {
        let took = t.elapsed();
        self.append_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        if let Ok(mut v) = self.append_secs.lock() {
            v.push(took.as_secs_f64());
        }
        out
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
        let t = Instant::now();
        let out = self.inner.append(run_id, entry, epoch).await;
        self.timed(t, out)
    }
    async fn append_all(
        &self,
        run_id: &str,
        entries: &[Entry],
        epoch: u64,
    ) -> rollback_core::Result<Vec<Record>> {
        self.write(run_id, &entries.iter().collect::<Vec<_>>());
        let t = Instant::now();
        let out = self.inner.append_all(run_id, entries, epoch).await;
        self.timed(t, out)
    }
    async fn records(&self, run_id: &str) -> rollback_core::Result<Vec<Record>> {
        self.inner.records(run_id).await
    }
    async fn runs(&self) -> rollback_core::Result<Vec<String>> {
        self.inner.runs().await
    }
    async fn runs_of_plan(&self, plan: &str) -> rollback_core::Result<Vec<String>> {
        self.inner.runs_of_plan(plan).await
    }
    async fn open_runs_of_plan(&self, plan: &str) -> rollback_core::Result<Vec<String>> {
        self.inner.open_runs_of_plan(plan).await
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
        self.add(1);
        self.inner.release_lease(key, holder).await
    }
    async fn lost_tail(&self, run_id: &str) -> rollback_core::Result<Option<LostTail>> {
        self.inner.lost_tail(run_id).await
    }
}

/// Seconds per step of one run of `p` on `journal`.
async fn timed_run(journal: Arc<dyn Journal>, p: &Plan) -> Res<f64> {
    let t = Instant::now();
    let r = Executor::with_journal(journal).run(p).await?;
    let per_step = secs(t) / STEPS as f64;
    if !r.is_committed() {
        return Err("the bench plan did not commit".into());
    }
    Ok(per_step)
}

/// The memory journal, per step: one holding [`HISTORY`] earlier runs of the plan, and a
/// fresh one (after one warm-up run), in alternating turns. Returns (with history, fresh,
/// records per step).
async fn memory(turns: usize) -> Res<(f64, f64, f64)> {
    let world = SimWorld::new();
    let p = plan(&world, "bench-memory")?;
    let old = Arc::new(MemoryJournal::new());
    let mut records = 0.0;
    for _ in 0..HISTORY {
        let r = Executor::with_journal(old.clone()).run(&p).await?;
        records = old.records(&r.run_id).await?.len() as f64 / STEPS as f64;
    }
    let (mut with_history, mut fresh) = (Vec::new(), Vec::new());
    for turn in 0..turns {
        // A fresh journal goes with a fresh world: the world's fences remember the
        // epochs the old journal's runs reached.
        let new_world = SimWorld::new();
        let new_p = plan(&new_world, "bench-memory")?;
        let new = Arc::new(MemoryJournal::new());
        timed_run(new.clone(), &new_p).await?; // the warm-up
        if turn % 2 == 0 {
            with_history.push(timed_run(old.clone(), &p).await?);
            fresh.push(timed_run(new, &new_p).await?);
        } else {
            fresh.push(timed_run(new, &new_p).await?);
            with_history.push(timed_run(old.clone(), &p).await?);
        }
    }
    Ok((median(&with_history), median(&fresh), records))
}

/// The reference for one run of the file journal: as many journal-record writes as the run
/// has steps, each as the journal makes one — open, seek to the end, write `bytes`,
/// fdatasync, close — on a fresh file in the same folder (a run's file is new too).
/// Returns each write's seconds.
fn fsync_probe(path: &Path, bytes: usize) -> std::io::Result<Vec<f64>> {
    let line = vec![b'x'; bytes];
    let mut v = Vec::with_capacity(STEPS);
    for _ in 0..STEPS {
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        f.seek(std::io::SeekFrom::End(0))?;
        f.write_all(&line)?;
        f.sync_data()?;
        drop(f);
        v.push(secs(t));
    }
    // Kept until the folder goes, as the runs' files are: freeing blocks (discarded on a
    // file system mounted with `discard`) would weigh on the next writes.
    Ok(v)
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// One turn of the file journal: a run with the default (pooled) file work, a run with
/// [`FileJournal::inline_io`], and the fsync probe, in a rotating order.
struct FileTurn {
    /// The run, seconds per step.
    run: f64,
    /// The run with inline file work, seconds per step.
    inline: f64,
    /// Seconds per step inside the pooled journal's appends.
    appends: f64,
    /// The probe: mean seconds per write (the run's statistic: its time over its steps).
    probe: f64,
    /// The probe's single writes.
    probe_writes: Vec<f64>,
    writes: u64,
    syncs: u64,
}

/// The two file journals of the turns: default, and with inline file work.
struct FileJournals {
    pooled: Arc<Syncs<FileJournal>>,
    inline: Arc<FileJournal>,
}

async fn file_turn(
    journals: &FileJournals,
    p: &Plan,
    probe_path: &Path,
    bytes: usize,
    turn: usize,
) -> Res<FileTurn> {
    let journal = &journals.pooled;
    let before = (
        journal.writes.load(Ordering::Relaxed),
        journal.syncs.load(Ordering::Relaxed),
        journal.append_ns.load(Ordering::Relaxed),
    );
    let (mut run, mut inline, mut probe_writes) = (0.0, 0.0, Vec::new());
    for leg in 0..3 {
        match (leg + turn) % 3 {
            0 => run = timed_run(journal.clone(), p).await?,
            1 => inline = timed_run(journals.inline.clone(), p).await?,
            _ => {
                let path = probe_path.to_path_buf();
                probe_writes =
                    tokio::task::spawn_blocking(move || fsync_probe(&path, bytes)).await??;
            }
        }
    }
    Ok(FileTurn {
        run,
        inline,
        appends: (journal.append_ns.load(Ordering::Relaxed) - before.2) as f64 / 1e9 / STEPS as f64,
        probe: mean(&probe_writes),
        probe_writes,
        writes: journal.writes.load(Ordering::Relaxed) - before.0,
        syncs: journal.syncs.load(Ordering::Relaxed) - before.1,
    })
}

pub(crate) async fn executor(args: &Args) -> Res<Report> {
    let turns = 10 * args.reps;
    let (mem, fresh, mem_records) = memory(turns).await?;

    // The file journal beside its physical limit, the fsync latency, measured in turns on
    // the same file system (a run, then the probe; the next turn the other way round), so
    // that the disk's weather weighs on both alike; each turn's ratio pairs the two.
    let dir = tempfile::tempdir()?;
    let journal = Arc::new(Syncs::new(FileJournal::open(dir.path())?));
    let journals = FileJournals {
        pooled: journal.clone(),
        inline: Arc::new(FileJournal::open(dir.path().join("inline"))?.inline_io(true)),
    };
    let world = SimWorld::new();
    let p = plan(&world, "bench-file")?;
    let warm = Executor::with_journal(journal.clone()).run(&p).await?;
    timed_run(journals.inline.clone(), &p).await?; // its warm-up
    let run_file = dir.path().join(format!("{}.journal", warm.run_id));
    let file_records = journal.records(&warm.run_id).await?.len() as f64 / STEPS as f64;
    // The probe writes what a journal write holds on average (a step's intent and the
    // previous step's outcome, mostly).
    let bytes = (std::fs::metadata(&run_file)?.len()
        / journal.writes.load(Ordering::Relaxed).max(1)) as usize;
    let rounds = args.reps.max(3) * 10;
    let mut t = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let probe_path = dir.path().join(format!("fsync-probe-{i}"));
        t.push(file_turn(&journals, &p, &probe_path, bytes, i).await?);
    }
    let col = |f: fn(&FileTurn) -> f64| median(&t.iter().map(f).collect::<Vec<_>>());
    let file = col(|t| t.run);
    let appends = col(|t| t.appends);
    let fsync = col(|t| t.probe);
    let ratio = col(|t| t.run / t.probe);
    let inline = col(|t| t.inline);
    let inline_ratio = col(|t| t.inline / t.probe);
    let writes = col(|t| t.writes as f64) / STEPS as f64;
    let syncs = col(|t| t.syncs as f64) / STEPS as f64;
    let quantile = |xs: &[f64], q: f64| {
        let mut v = xs.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let singles: Vec<f64> = t.iter().flat_map(|t| t.probe_writes.clone()).collect();
    let (p50, p90, p99) = (
        quantile(&singles, 0.5),
        quantile(&singles, 0.9),
        quantile(&singles, 0.99),
    );
    let own = journal
        .append_secs
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let (own50, own90) = (quantile(&own, 0.5), quantile(&own, 0.9));

    let mut r = Report::default();
    r.push(
        Row::new(
            "4. executor overhead",
            format!(
                "per step, memory journal ({STEPS}-step sim plan; the journal holds {HISTORY}+ earlier runs of the plan)"
            ),
        )
        .rollback(fmt_secs(mem))
        .reference(format!(
            "the same on a fresh journal (one earlier run, the warm-up), in alternating turns: {}",
            fmt_secs(fresh)
        ))
        .ratio(format!("{} the fresh journal's", fmt_ratio(mem / fresh)))
        .target("≤ 20 µs per step", Some(mem <= 20e-6)),
    );
    r.push(
        Row::new(
            "",
            format!("per step, file journal ({file_records:.2} records per step)"),
        )
        .rollback(fmt_secs(file))
        .reference(format!(
            "a journal write's latency (open, seek, {bytes} bytes, fdatasync, close; mean of {STEPS} on a fresh file) in turns with the runs, same file system: {}",
            fmt_secs(fsync)
        ))
        .ratio(format!("{} the fsync latency (median of the turns' ratios)", fmt_ratio(ratio)))
        .target("≤ 1.5× the fsync latency", Some(ratio <= 1.5)),
    );
    r.push(
        Row::new(
            "",
            "per step, file journal with `inline_io(true)` (file work on the run's thread, no hand-off to tokio's blocking pool)",
        )
        .rollback(fmt_secs(inline))
        .reference(format!("the same fsync latency: {}", fmt_secs(fsync)))
        .ratio(format!(
            "{} the fsync latency (median of the turns' ratios)",
            fmt_ratio(inline_ratio)
        ))
        .target("≤ 1.5× the fsync latency", Some(inline_ratio <= 1.5)),
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
        "executor: {:.2} journal records per step (memory journal {:.2}) in {:.2} writes, {:.2} disk syncs per step in all; file journal per step {} measured, of which {} inside the journal's appends; syncs × fsync latency = {} predicted; medians of {rounds} turns (the pooled run, the inline run and the probe in a rotating order); single probe writes p50 {}, p90 {}, p99 {}; single journal appends p50 {} ({} the probe's p50), p90 {}",
        file_records,
        mem_records,
        writes,
        syncs,
        fmt_secs(file),
        fmt_secs(appends),
        fmt_secs(syncs * fsync),
        fmt_secs(p50),
        fmt_secs(p90),
        fmt_secs(p99),
        fmt_secs(own50),
        fmt_ratio(own50 / p50),
        fmt_secs(own90),
    ));
    Ok(r)
}
