//! Fencing: a runner that stops (a paused process) while another takes its run over
//! must do nothing more to the journal or the resources once it wakes. In process: a
//! journal wrapper freezes runner A inside its n-th append, after the record is durable
//! (what SIGSTOP right after a write does), and blocks A's every later journal call,
//! lease renewals included, until thawed. Runner B takes the expired lease over and
//! finishes the run; A is thawed and must stop with `Error::Fenced`.
//! (`kill.rs` does the same with real processes and SIGSTOP.)

use async_trait::async_trait;
use rollback_core::journal::{Entry, FileJournal, Journal, Lease, LostTail, MemoryJournal, Record};
use rollback_core::sim::{SetKey, SimWorld};
use rollback_core::{
    CancellationToken, Context, Error, Executor, Outcome, Plan, Result, RunEvent, RunReport,
    Verdict, Verifier,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

const TTL: Duration = Duration::from_millis(150);
const RUN: &str = "fenced-run";

/// Freezes its runner inside the n-th append (after the write) or on demand, and blocks
/// every later call until thawed.
struct Freezable {
    inner: Arc<dyn Journal>,
    freeze_after: Option<u64>,
    appends: AtomicU64,
    frozen: watch::Sender<bool>,
    froze: Notify,
}

impl Freezable {
    fn new(inner: Arc<dyn Journal>, freeze_after: Option<u64>) -> Arc<Self> {
        Arc::new(Freezable {
            inner,
            freeze_after,
            appends: AtomicU64::new(0),
            frozen: watch::channel(false).0,
            froze: Notify::new(),
        })
    }
    fn freeze(&self) {
        self.frozen.send_replace(true);
        self.froze.notify_one();
    }
    fn thaw(&self) {
        self.frozen.send_replace(false);
    }
    async fn gate(&self) {
        let mut rx = self.frozen.subscribe();
        let _ = rx.wait_for(|frozen| !*frozen).await;
    }
}

#[async_trait]
impl Journal for Freezable {
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
        self.gate().await;
        let rec = self.inner.append(run_id, entry, epoch).await?;
        let n = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        if self.freeze_after == Some(n) {
            self.freeze();
            self.gate().await;
        }
        Ok(rec)
    }
    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        self.gate().await;
        self.inner.records(run_id).await
    }
    async fn runs(&self) -> Result<Vec<String>> {
        self.gate().await;
        self.inner.runs().await
    }
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        self.gate().await;
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        self.gate().await;
        self.inner.release_lease(key, holder).await
    }
    async fn lost_tail(&self, run_id: &str) -> Result<Option<LostTail>> {
        self.gate().await;
        self.inner.lost_tail(run_id).await
    }
}

type State = BTreeMap<String, BTreeMap<String, String>>;

fn world() -> (SimWorld, State) {
    let w = SimWorld::new();
    w.set("db", "k1", "v1");
    w.set("db", "k2", "v1");
    w.set("flags", "f", "off");
    let baseline = w.snapshot_state();
    (w, baseline)
}

/// Three steps over two resources, one without a checkpoint (compensation only).
fn plan(w: &SimWorld) -> Plan {
    Plan::builder("fencing")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s1", w, "db", "k1", "v2"), &[])
        .step("db", SetKey::new("s2", w, "db", "k2", "v2"), &["s1"])
        .step("flags", SetKey::new("s3", w, "flags", "f", "on"), &["s2"])
        .capture_all_checkpoints()
        .build()
        .expect("plan")
}

fn target(baseline: &State) -> State {
    let mut t = baseline.clone();
    t.get_mut("db").unwrap().insert("k1".into(), "v2".into());
    t.get_mut("db").unwrap().insert("k2".into(), "v2".into());
    t.get_mut("flags").unwrap().insert("f".into(), "on".into());
    t
}

async fn resume_until_done(b: &Executor, plan: &Plan) -> RunReport {
    for _ in 0..100 {
        match b.resume(plan, RUN).await {
            Err(Error::LeaseHeld { remaining_ms, .. }) => {
                tokio::time::sleep(Duration::from_millis(remaining_ms + 5)).await;
            }
            other => return other.expect("B resumes the run"),
        }
    }
    panic!("B never got the lease");
}

/// What the journal must read as: epochs never go back, and each epoch after the first
/// starts with the new runner's `resumed` (or its explicit tail decision).
fn assert_one_runner_per_epoch(records: &[Record], what: &str) {
    let mut epoch = 0;
    for r in records {
        assert!(
            r.epoch >= epoch,
            "{what}: record {} of epoch {} after epoch {epoch}",
            r.seq,
            r.epoch
        );
        if r.epoch > epoch && epoch > 0 {
            assert!(
                matches!(r.entry, Entry::Resumed { .. }),
                "{what}: epoch {} begins with {} (record {})",
                r.epoch,
                r.entry.kind(),
                r.seq
            );
        }
        epoch = r.epoch;
    }
}

#[derive(Debug, Default)]
struct Tally {
    fenced: usize,
    a_finished_first: usize,
    rolled_back: usize,
    committed: usize,
}

async fn pause_at_every_record_boundary(journal: impl Fn() -> Arc<dyn Journal>) -> Tally {
    // A clean run: how many records A writes.
    let (w, _) = world();
    let clean = Executor::with_journal(journal())
        .run_as(&plan(&w), RUN, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(clean.outcome, Outcome::Committed);
    let total = clean.timeline.len() as u64;
    assert!(total >= 12, "{total} records");
    let mut tally = Tally::default();
    for n in 1..=total {
        let what = format!("A frozen inside its append #{n} of {total}");
        let (w, baseline) = world();
        let plan = plan(&w);
        let inner = journal();
        let frozen = Freezable::new(inner.clone(), Some(n));
        let a = Executor::with_journal(frozen.clone())
            .holder("runner-a")
            .lease_ttl(TTL);
        let a_plan = plan.clone();
        let run_a =
            tokio::spawn(async move { a.run_as(&a_plan, RUN, CancellationToken::new()).await });
        tokio::time::timeout(Duration::from_secs(10), frozen.froze.notified())
            .await
            .unwrap_or_else(|_| panic!("{what}: A never froze"));
        // A's lease expires while it is frozen; B takes the run over and finishes it.
        tokio::time::sleep(TTL * 2).await;
        let b = Executor::with_journal(inner.clone())
            .holder("runner-b")
            .lease_ttl(TTL);
        let rb = resume_until_done(&b, &plan).await;
        let after_b = w.snapshot_state();
        frozen.thaw();
        let ra = tokio::time::timeout(Duration::from_secs(10), run_a)
            .await
            .unwrap_or_else(|_| panic!("{what}: A never stopped"))
            .expect("A's task");
        let records = inner.records(RUN).await.expect("the journal verifies");
        assert_one_runner_per_epoch(&records, &what);
        let took_over = records.iter().any(|r| r.epoch >= 2);
        match &ra {
            Err(Error::Fenced { .. }) => {
                assert!(took_over, "{what}: fenced without a takeover");
                tally.fenced += 1;
            }
            Ok(report) => {
                assert!(
                    !took_over,
                    "{what}: B took over, yet A finished: {:?}",
                    report.outcome
                );
                tally.a_finished_first += 1;
            }
            Err(e) => panic!("{what}: A failed otherwise: {e}"),
        }
        // Nothing A did after waking reached the resources.
        assert_eq!(
            w.snapshot_state(),
            after_b,
            "{what}: A changed the world after B"
        );
        let report = b.report(&plan, RUN).await.unwrap();
        match report.outcome {
            Outcome::RolledBack => {
                assert_eq!(w.snapshot_state(), baseline, "{what}");
                // The checkpointed resource is proven; `flags` has no checkpoint, and the
                // report says so whenever s3 was undone.
                assert!(
                    report.checkpoints.iter().all(|c| c.parity != Some(false)),
                    "{what}"
                );
                assert!(
                    report.unproven.iter().all(|u| u.starts_with("flags:")),
                    "{what}: {:?}",
                    report.unproven
                );
                tally.rolled_back += 1;
            }
            Outcome::Committed => {
                assert_eq!(w.snapshot_state(), target(&baseline), "{what}");
                tally.committed += 1;
            }
            other => panic!("{what}: outcome {other:?}; B said {:?}", rb.outcome),
        }
        assert_eq!(report.outcome, rb.outcome, "{what}");
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_paused_at_any_record_boundary_is_fenced_after_a_takeover_memory_journal() {
    let tally = pause_at_every_record_boundary(|| Arc::new(MemoryJournal::new())).await;
    eprintln!("memory journal: {tally:?}");
    assert!(tally.fenced >= 10, "{tally:?}");
    assert!(tally.rolled_back >= 8 && tally.committed >= 1, "{tally:?}");
}

/// Every record boundary on file journals, with the file work on tokio's blocking pool
/// or on the runners' own threads (`inline_io`): a write that blocks a worker thread must
/// not let a paused runner slip a record in after the takeover either.
async fn paused_on_file_journals(inline: bool) {
    let dirs = std::sync::Mutex::new(Vec::new());
    let tally = pause_at_every_record_boundary(|| {
        let d = tempfile::tempdir().unwrap();
        let j = FileJournal::open(d.path()).unwrap().inline_io(inline);
        dirs.lock().unwrap().push(d);
        Arc::new(j)
    })
    .await;
    eprintln!("file journal (inline I/O: {inline}): {tally:?}");
    assert!(tally.fenced >= 10, "{tally:?}");
    assert!(tally.rolled_back >= 8 && tally.committed >= 1, "{tally:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_paused_at_any_record_boundary_is_fenced_after_a_takeover_file_journal() {
    paused_on_file_journals(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_paused_at_any_record_boundary_is_fenced_after_a_takeover_inline_file_journal() {
    paused_on_file_journals(true).await;
}

/// The reproduction: A pauses in the middle of a slow step; B takes over and
/// rolls back; A wakes and finishes its step. The step's write is refused by the
/// resource's fence, A stops, and the journal holds nothing of A after B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_paused_inside_a_step_cannot_write_after_the_takeover() {
    for journal in ["memory", "file", "file-inline"] {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Journal> = match journal {
            "memory" => Arc::new(MemoryJournal::new()),
            "file" => Arc::new(FileJournal::open(dir.path()).unwrap()),
            _ => Arc::new(FileJournal::open(dir.path()).unwrap().inline_io(true)),
        };
        let (w, baseline) = world();
        let plan = plan(&w);
        w.faults().slow_apply("s2", Duration::from_millis(800));
        let frozen = Freezable::new(inner.clone(), None);
        let a = Executor::with_journal(frozen.clone())
            .holder("runner-a")
            .lease_ttl(TTL);
        let mut events = a.subscribe();
        let a_plan = plan.clone();
        let run_a =
            tokio::spawn(async move { a.run_as(&a_plan, RUN, CancellationToken::new()).await });
        // A enters s2: freeze it there (no renewal, no journal) until B is done.
        loop {
            match events.recv().await.expect("events").event {
                RunEvent::StepStarted { step, .. } if step == "s2" => break,
                _ => {}
            }
        }
        frozen.freeze();
        tokio::time::sleep(TTL * 2).await;
        let b = Executor::with_journal(inner.clone())
            .holder("runner-b")
            .lease_ttl(TTL);
        w.faults().clear();
        let rb = resume_until_done(&b, &plan).await;
        assert_eq!(rb.outcome, Outcome::RolledBack, "{journal}");
        assert_eq!(w.snapshot_state(), baseline, "{journal}: B rolled back");
        frozen.thaw();
        let ra = run_a.await.unwrap();
        assert!(
            matches!(ra, Err(Error::Fenced { .. })),
            "{journal}: A must be fenced, got {ra:?}"
        );
        assert_eq!(
            w.snapshot_state(),
            baseline,
            "{journal}: A's late write was refused by the resource's fence"
        );
        let records = inner.records(RUN).await.unwrap();
        assert_one_runner_per_epoch(&records, journal);
        let last_a = records.iter().rposition(|r| r.epoch == 1).unwrap();
        let first_b = records.iter().position(|r| r.epoch == 2).unwrap();
        assert!(
            last_a < first_b,
            "{journal}: A wrote after B's first record"
        );
        assert_eq!(
            b.report(&plan, RUN).await.unwrap().outcome,
            Outcome::RolledBack
        );
    }
}

/// Before the fix: a failed renewal was only logged, nothing checked the lease before
/// acting or appending, and A committed after B's rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_runner_cannot_commit_after_another_rolled_the_run_back() {
    let inner: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let (w, baseline) = world();
    let plan = plan(&w);
    // Frozen right after journaling the intent to apply s1.
    let frozen = Freezable::new(inner.clone(), Some(6));
    let a = Executor::with_journal(frozen.clone())
        .holder("runner-a")
        .lease_ttl(TTL);
    let a_plan = plan.clone();
    let run_a = tokio::spawn(async move { a.run_as(&a_plan, RUN, CancellationToken::new()).await });
    frozen.froze.notified().await;
    let kinds: Vec<&str> = vec![
        "run_started",
        "plan_described",
        "lease_taken",
        "capture_intent",
        "captured",
        "apply_intent",
    ];
    let recs = inner.records(RUN).await.unwrap();
    assert_eq!(
        recs.iter().map(|r| r.entry.kind()).collect::<Vec<_>>(),
        kinds
    );
    tokio::time::sleep(TTL * 2).await;
    let b = Executor::with_journal(inner.clone())
        .holder("runner-b")
        .lease_ttl(TTL);
    assert_eq!(
        resume_until_done(&b, &plan).await.outcome,
        Outcome::RolledBack
    );
    frozen.thaw();
    assert!(matches!(run_a.await.unwrap(), Err(Error::Fenced { .. })));
    let recs = inner.records(RUN).await.unwrap();
    assert!(
        !recs.iter().any(|r| matches!(r.entry, Entry::Committed)),
        "a committed record after the rollback"
    );
    assert!(matches!(
        recs.last().unwrap().entry,
        Entry::RolledBack { .. } | Entry::Discarded { .. }
    ));
    assert_eq!(w.snapshot_state(), baseline);
}

/// A precondition during which its runner's process stops (once): it freezes the
/// runner's journal and waits, as a SIGSTOP during the check would hold it.
struct StoppingPrecondition {
    journal: Arc<Freezable>,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Verifier for StoppingPrecondition {
    fn id(&self) -> &str {
        "pre"
    }
    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.journal.freeze();
            self.journal.gate().await;
        }
        Ok(Verdict::pass("ok"))
    }
}

/// Every run of the journal with its records.
async fn all_records(j: &dyn Journal) -> BTreeMap<String, Vec<Record>> {
    let mut out = BTreeMap::new();
    for run in j.runs().await.unwrap() {
        out.insert(run.clone(), j.records(&run).await.unwrap());
    }
    out
}

/// A runner that stops before its run's first durable write after the lease (in a
/// precondition) and loses its lease: the next runner must find the run and resume it,
/// not start a second run of the plan beside it, and the first must write nothing once
/// it wakes. Its opening records are its own first write: deferred to its first verdict,
/// the run did not exist for the next runner, and the stale runner wrote a whole run of
/// records at its old epoch into a file no later epoch had reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_stopped_before_its_first_verdict_is_found_and_fenced_after_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Journal> = Arc::new(FileJournal::open(dir.path()).unwrap());
    let w = SimWorld::new();
    w.set("db", "k1", "v1");
    let frozen = Freezable::new(inner.clone(), None);
    let build = |armed: bool| {
        Plan::builder("stopped-in-precondition")
            .checkpoint("db", w.checkpoint("db"))
            .step("db", SetKey::new("s1", &w, "db", "k1", "v2"), &[])
            .precondition(StoppingPrecondition {
                journal: frozen.clone(),
                armed: armed.into(),
            })
            .build()
            .unwrap()
    };
    let plan_a = build(true);
    let a = Executor::with_journal(frozen.clone())
        .holder("runner-a")
        .lease_ttl(TTL);
    let run_a = tokio::spawn(async move { a.run_as(&plan_a, RUN, CancellationToken::new()).await });
    frozen.froze.notified().await;
    tokio::time::sleep(TTL * 2).await; // A's lease expires while it is stopped

    // B, as an operator would: start the plan; resume what is unfinished if told to.
    let plan_b = build(false);
    let b = Executor::with_journal(inner.clone())
        .holder("runner-b")
        .lease_ttl(TTL);
    let err = b.run(&plan_b).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(b.unfinished(&plan_b).await.unwrap(), [RUN]);
    let rb = b.resume(&plan_b, RUN).await.unwrap();
    assert!(
        matches!(rb.outcome, Outcome::RolledBack | Outcome::Committed),
        "{:?}",
        rb.outcome
    );
    let before = all_records(inner.as_ref()).await;

    frozen.thaw();
    let ra = run_a.await.unwrap();
    assert!(matches!(ra, Err(Error::Fenced { .. })), "{ra:?}");
    assert_eq!(
        all_records(inner.as_ref()).await,
        before,
        "the stale runner wrote to the journal after the takeover"
    );
    assert!(b.unfinished(&plan_b).await.unwrap().is_empty());
}
