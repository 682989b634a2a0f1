//! Rollback while the application keeps writing, on a real server and a `pgbench` table:
//! four writer tasks insert, update and delete rows (and, where asked, rows the migration
//! changes too) through their own connections, before, during and after the run. Every
//! check below reads the table with its own SQL, against a copy taken before the run and
//! the writers' own record of what the server acknowledged.
//!
//! - The plan of the issue — `add-tier` (ADD COLUMN, compensable) then `fill-tier` (a
//!   backfill of it), a health trigger breaching during the soak — needs no restore: the
//!   column's drop undoes the backfill, and every application write survives, with an undo
//!   log and with a table snapshot as the checkpoint.
//! - A restore-only migration of rows the application also writes, undone by the undo log:
//!   only the run's own changes go back; conflicts follow the declared policy and are
//!   listed.
//! - Each restore method (swap, copy, merge, undo log) under four writers: one restore,
//!   `rolled_back`, parity proven under the restore's lock, and every write acknowledged
//!   after the restore committed is there.
//! - A silent revert with no checkpoint is `rolled_back` with parity *not* proven.

mod common;

use async_trait::async_trait;
use common::TestDb;
use rollback_core::events::{Notice, NoticeKind, Notifier, RunEvent};
use rollback_core::journal::MemoryJournal;
use rollback_core::{
    Checkpoint, Context, Executor, Outcome, Plan, RunReport, Trigger, Undo, Verdict, Verifier,
};
use rollback_postgres::{
    Backfill, ConflictPolicy, RestoreMethod, SqlAssertion, SqlStep, Table, TableSnapshot,
    TableUndoLog,
};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: i32 = 4;
/// Rows in the table (`pgbench -i -s 1`).
const ROWS: i32 = 100_000;
/// Each writer owns a quarter of the keys, and changes at most this many of them per kind.
const PER_KIND: i32 = 1_000;

fn accounts() -> Table {
    Table::public("pgbench_accounts")
}

/// `pgbench -i -s 1`, and a copy of the table as it was before any writer started.
async fn setup(db: &TestDb) {
    let out = Command::new(common::pg_bin("pgbench"))
        .args(["-i", "-q", "-s", "1"])
        .arg(&db.url)
        .output()
        .expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.exec("CREATE TABLE before_run AS SELECT * FROM pgbench_accounts")
        .await;
    db.exec("VACUUM ANALYZE pgbench_accounts").await;
}

/// One write the server acknowledged, and when.
#[derive(Debug, Clone)]
struct Ack {
    aid: i32,
    write: Write,
    /// Sent.
    started: Instant,
    /// Acknowledged.
    at: Instant,
}

#[derive(Debug, Clone, PartialEq)]
enum Write {
    Insert { abalance: i32 },
    SetBalance(i32),
    SetFiller(String),
    Delete,
}

/// The application: four writers, each on its own connection, writing until stopped.
struct App {
    stop: Arc<AtomicBool>,
    /// Open while the application may write rows the migration changes.
    gate: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Start the writers. Each one, in turn: inserts a new row; sets `abalance` of a row
    /// the migration never touches (`aid % 10 = 1`); deletes one (`aid % 10 = 5`); and,
    /// with `conflicts`, while the gate is open, changes a row the migration changes
    /// (`aid % 10 = 0`) — its `filler` (a column the migration leaves alone) or its
    /// `abalance` (one it changes).
    async fn start(db: &TestDb, conflicts: bool) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let c = db.checker().await;
            let (stop, acks, errors) = (stop.clone(), acks.clone(), errors.clone());
            let gate = gate.clone();
            tasks.push(tokio::spawn(async move {
                let base = w * (ROWS / WRITERS);
                let kinds = if conflicts { 4 } else { 3 };
                let mut i: i32 = 0;
                while !stop.load(Ordering::SeqCst) {
                    let k = i / kinds;
                    let slot = base + (k % PER_KIND) * 20;
                    let mut kind = if k >= PER_KIND { 0 } else { i % kinds };
                    if kind == 3 && !gate.load(Ordering::SeqCst) {
                        kind = 0;
                    }
                    let (aid, write) = match kind {
                        // New keys end in 3: rows the migrations here never touch.
                        0 => (
                            10_000_000 + w * 1_000_000 + i * 10 + 3,
                            Write::Insert { abalance: i },
                        ),
                        1 => (slot + 1, Write::SetBalance(-i - 1)),
                        2 => (slot + 5, Write::Delete),
                        _ if k % 2 == 0 => (slot + 10, Write::SetFiller(format!("app {i}"))),
                        _ => (slot + 10, Write::SetBalance(-i - 1)),
                    };
                    let started = Instant::now();
                    let res = match &write {
                        Write::Insert { abalance } => {
                            c.execute(
                                "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES ($1, 1, $2, 'app')",
                                &[&aid, abalance],
                            )
                            .await
                        }
                        Write::SetBalance(v) => {
                            c.execute(
                                "UPDATE pgbench_accounts SET abalance = $2 WHERE aid = $1",
                                &[&aid, v],
                            )
                            .await
                        }
                        Write::SetFiller(f) => {
                            c.execute(
                                "UPDATE pgbench_accounts SET filler = $2 WHERE aid = $1",
                                &[&aid, f],
                            )
                            .await
                        }
                        Write::Delete => {
                            c.execute("DELETE FROM pgbench_accounts WHERE aid = $1", &[&aid])
                                .await
                        }
                    };
                    match res {
                        Ok(_) => acks.lock().unwrap().push(Ack {
                            aid,
                            write,
                            started,
                            at: Instant::now(),
                        }),
                        // Not acknowledged: the application would retry; not counted.
                        Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(4)).await;
                }
            }));
        }
        App {
            stop,
            gate,
            acks,
            errors,
            tasks,
        }
    }

    /// Stop the writers; their acknowledged writes, in order.
    async fn stop(self) -> (Vec<Ack>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acks = self.acks.lock().unwrap().clone();
        (acks, self.errors.load(Ordering::SeqCst))
    }
}

/// A row as the checks compare it: (abalance, filler without its padding).
type Row = (i32, String);

async fn rows(c: &tokio_postgres::Client, table: &str, aids: &[i32]) -> BTreeMap<i32, Row> {
    c.query(
        &format!("SELECT aid, abalance, rtrim(filler) FROM {table} WHERE aid = ANY($1)"),
        &[&aids],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get::<_, String>(2))))
    .collect()
}

/// What the acknowledged writes leave in each row they touched, starting from the rows
/// as they were before the run (`None`: absent).
fn expected(before: &BTreeMap<i32, Row>, acks: &[Ack]) -> BTreeMap<i32, Option<Row>> {
    let mut out: BTreeMap<i32, Option<Row>> = BTreeMap::new();
    for a in acks {
        let cur = out
            .entry(a.aid)
            .or_insert_with(|| before.get(&a.aid).cloned());
        *cur = match (&a.write, cur.take()) {
            (Write::Insert { abalance }, _) => Some((*abalance, "app".into())),
            (Write::SetBalance(v), Some((_, f))) => Some((*v, f)),
            (Write::SetFiller(f), Some((b, _))) => Some((b, f.clone())),
            (Write::Delete, _) | (_, None) => None,
        };
    }
    out
}

/// The keys of rows that differ between the table and its copy from before the run,
/// leaving out `skip`.
async fn differing(c: &tokio_postgres::Client, skip: &BTreeSet<i32>) -> Vec<i32> {
    let skip: Vec<i32> = skip.iter().copied().collect();
    c.query(
        "SELECT aid FROM ( \
           (SELECT aid, bid, abalance, filler FROM pgbench_accounts EXCEPT ALL SELECT aid, bid, abalance, filler FROM before_run) \
           UNION ALL \
           (SELECT aid, bid, abalance, filler FROM before_run EXCEPT ALL SELECT aid, bid, abalance, filler FROM pgbench_accounts) \
         ) d WHERE aid <> ALL($1) ORDER BY aid LIMIT 20",
        &[&skip],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn columns(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'pgbench_accounts' ORDER BY ordinal_position",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A health check that passes for a while, then fails on every poll.
struct Health {
    healthy_for: Duration,
    first: Mutex<Option<Instant>>,
}

impl Health {
    fn failing_after(d: Duration) -> Health {
        Health {
            healthy_for: d,
            first: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Verifier for Health {
    fn id(&self) -> &str {
        "error-rate"
    }
    async fn verify(&self, _ctx: &Context) -> rollback_core::Result<Verdict> {
        let first = *self.first.lock().unwrap().get_or_insert_with(Instant::now);
        let ok = first.elapsed() < self.healthy_for;
        Ok(Verdict::check(
            ok,
            if ok {
                "error rate 0.1%"
            } else {
                "error rate 7% (threshold 2%)"
            },
        ))
    }
}

#[derive(Clone, Default)]
struct Notices(Arc<Mutex<Vec<Notice>>>);

#[async_trait]
impl Notifier for Notices {
    async fn notify(&self, n: &Notice) -> std::result::Result<(), String> {
        self.0.lock().unwrap().push(n.clone());
        Ok(())
    }
}

/// What the run's event stream said, and when the test heard it.
#[derive(Default, Clone, Copy)]
struct Moments {
    rollback_started: Option<Instant>,
    /// The first restore, reported after it committed.
    restored: Option<Instant>,
}

/// Run `plan` while the application writes: the writers start before the run (so before
/// capture) and stop `after` it ended; writes to rows the migration changes (with
/// `conflicts`) happen only between the first applied step and the start of rollback.
/// Returns the report, the acknowledged writes, the moments and the notices.
async fn run_under_traffic(
    db: &TestDb,
    plan: &Plan,
    conflicts: bool,
    after: Duration,
) -> (RunReport, Vec<Ack>, Moments, Vec<Notice>) {
    let app = App::start(db, conflicts).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let notices = Notices::default();
    let ex = Executor::new(MemoryJournal::new()).notifier(notices.clone());
    let mut events = ex.subscribe();
    let moments = Arc::new(Mutex::new(Moments::default()));
    let watcher = {
        let moments = moments.clone();
        let gate = app.gate.clone();
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                match e.event {
                    RunEvent::StepFinished { ok: true, .. }
                        if moments.lock().unwrap().rollback_started.is_none() =>
                    {
                        gate.store(true, Ordering::SeqCst);
                    }
                    RunEvent::RollbackStarted { .. } => {
                        gate.store(false, Ordering::SeqCst);
                        moments.lock().unwrap().rollback_started = Some(Instant::now());
                    }
                    RunEvent::CheckpointRestored { .. } => {
                        moments
                            .lock()
                            .unwrap()
                            .restored
                            .get_or_insert_with(Instant::now);
                    }
                    _ => {}
                }
            }
        })
    };
    let report = ex.run(plan).await.expect("the run ends");
    tokio::time::sleep(after).await;
    let (acks, errors) = app.stop().await;
    watcher.abort();
    eprintln!(
        "{}: {} acknowledged writes, {errors} refused or failed",
        plan.name(),
        acks.len()
    );
    let m = *moments.lock().unwrap();
    let n = notices.0.lock().unwrap().clone();
    (report, acks, m, n)
}

/// Every acknowledged write (among `acks`) is in the table as the writers left it.
async fn assert_writes_survive(c: &tokio_postgres::Client, acks: &[Ack], what: &str) -> usize {
    let aids: Vec<i32> = acks
        .iter()
        .map(|a| a.aid)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let before = rows(c, "before_run", &aids).await;
    let now = rows(c, "pgbench_accounts", &aids).await;
    let want = expected(&before, acks);
    let mut wrong = Vec::new();
    for (aid, w) in &want {
        if now.get(aid) != w.as_ref() {
            wrong.push(format!("aid {aid}: want {w:?}, found {:?}", now.get(aid)));
        }
    }
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} rows the application wrote are not as it left them, e.g. {:?}",
        wrong.len(),
        want.len(),
        &wrong[..wrong.len().min(5)]
    );
    want.len()
}

/// The plan: `add-tier` adds a column (its revert drops it), `fill-tier`
/// backfills it, and the health trigger breaches during the soak.
fn tier_plan(db: &TestDb, name: &str, checkpoint: impl Checkpoint + 'static) -> Plan {
    Plan::builder(name)
        .checkpoint("database", checkpoint)
        .step(
            "database",
            SqlStep::new(
                &db.db,
                "add-tier",
                "ALTER TABLE pgbench_accounts ADD COLUMN tier text",
            )
            .down("ALTER TABLE pgbench_accounts DROP COLUMN tier")
            .creates_column(&accounts(), "tier"),
            &[],
        )
        .step(
            "database",
            Backfill::new(
                &db.db,
                "fill-tier",
                accounts(),
                "aid",
                "tier = CASE WHEN abalance >= 0 THEN 'basic' ELSE 'gold' END",
            )
            .batch_size(20_000),
            &["add-tier"],
        )
        .soak(Duration::from_secs(30))
        .trigger(
            Trigger::new(Health::failing_after(Duration::from_millis(1_500)))
                .every(Duration::from_millis(100))
                .threshold(1, 1),
        )
        .build()
        .expect("plan builds")
}

async fn tier_scenario(label: &str, undo_log: bool) {
    let db = TestDb::new(label).await;
    setup(&db).await;
    let c = db.checker().await;
    let plan = if undo_log {
        tier_plan(&db, label, TableUndoLog::new(&db.db, accounts()))
    } else {
        tier_plan(&db, label, TableSnapshot::new(&db.db, accounts()))
    };
    // Decided when the plan is built, and shown in the dry run.
    assert_eq!(
        plan.undo("fill-tier"),
        Some(&Undo::CompensationOf {
            steps: vec!["add-tier".into()]
        })
    );
    let dry = plan.dry_run().to_string();
    assert!(
        dry.contains("fill-tier is undone by the revert of add-tier"),
        "{dry}"
    );
    let (report, acks, _, notices) =
        run_under_traffic(&db, &plan, false, Duration::from_millis(300)).await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");

    // The migration's own effects are gone.
    assert!(!columns(&c).await.contains(&"tier".to_string()));
    // Every acknowledged application write survived — inserts, updates, deletes.
    let inserts = acks
        .iter()
        .filter(|a| matches!(a.write, Write::Insert { .. }))
        .count();
    let updates = acks
        .iter()
        .filter(|a| matches!(a.write, Write::SetBalance(_)))
        .count();
    let deletes = acks.iter().filter(|a| a.write == Write::Delete).count();
    assert!(
        inserts >= 40 && updates >= 40 && deletes >= 40,
        "too little traffic to tell: {inserts} inserts, {updates} updates, {deletes} deletes"
    );
    let n = assert_writes_survive(&c, &acks, label).await;
    // And nothing else changed.
    let touched: BTreeSet<i32> = acks.iter().map(|a| a.aid).collect();
    assert_eq!(differing(&c, &touched).await, Vec::<i32>::new());
    eprintln!(
        "{label}: {inserts} inserts, {updates} updates, {deletes} deletes, {n} rows: all kept"
    );

    // Nothing discarded, and nothing said data would be.
    let cp = &report.checkpoints[0];
    assert_eq!(report.items_discarded.unwrap_or(0), 0, "{md}");
    let started = notices
        .iter()
        .find(|n| n.kind == NoticeKind::RollbackStarted)
        .expect("a rollback-started notice");
    assert!(started.may_discard.is_empty(), "{started:?}");
    assert!(
        started
            .message
            .contains("no data written by customers is being deleted"),
        "{}",
        started.message
    );
    if undo_log {
        // The undo log tells the application's writes from the run's: its selective
        // restore finds none of the run's left to undo (the backfill's column is gone
        // with the column), and proves parity with "baseline + the application's writes".
        assert_eq!(
            cp.restore_method.as_deref(),
            Some("undo-log (selective)"),
            "{md}"
        );
        assert_eq!(cp.restored_items, Some(0), "{md}");
        assert!(cp.kept_writes.unwrap_or(0) > 0, "{md}");
        assert!(report.parity_proven(), "{md}");
    } else {
        // No restore ran. A snapshot cannot tell whose writes differ: the table is left
        // as it is, parity not proven, and the report says which resource and why.
        assert_eq!(cp.restores, 0, "{md}");
        assert!(!report.parity_proven(), "{md}");
        assert!(cp.not_restored.is_some(), "{md}");
        assert!(
            report
                .unproven
                .iter()
                .any(|u| u.contains("pgbench_accounts")),
            "{md}"
        );
        // Not even copied: no rollback could need the copy.
        assert_eq!(
            db.count("SELECT count(*) FROM pg_tables WHERE schemaname = '_rollback_snapshots'")
                .await,
            0
        );
    }
}

#[tokio::test]
async fn a_backfill_of_an_added_column_is_undone_by_its_drop_and_app_writes_survive_undo_log() {
    tier_scenario("live_tier_log", true).await;
}

#[tokio::test]
async fn a_backfill_of_an_added_column_is_undone_by_its_drop_and_app_writes_survive_snapshot() {
    tier_scenario("live_tier_snap", false).await;
}

/// A restore-only migration of the rows with `aid % 10 = 0` (and a few deletes and
/// inserts of its own), undone by the undo log while the application writes — to those
/// rows too.
fn reprice_plan(db: &TestDb, name: &str, policy: ConflictPolicy) -> Plan {
    let log = TableUndoLog::new(&db.db, accounts()).on_conflict(policy);
    let resource = log.resource().to_string();
    Plan::builder(name)
        .checkpoint("database", log)
        .step(
            "database",
            SqlStep::new(
                &db.db,
                "reprice",
                "UPDATE pgbench_accounts SET abalance = abalance + 100 WHERE aid % 10 = 0; \
                 DELETE FROM pgbench_accounts WHERE aid % 1000 = 7; \
                 INSERT INTO pgbench_accounts (aid, bid, abalance, filler) \
                   SELECT 5000000 + g, 1, 0, 'migration' FROM generate_series(1, 50) g",
            )
            .touching(resource),
            &[],
        )
        .soak(Duration::from_secs(30))
        .trigger(
            Trigger::new(Health::failing_after(Duration::from_millis(1_500)))
                .every(Duration::from_millis(100))
                .threshold(1, 1),
        )
        .build()
        .expect("plan builds")
}

async fn reprice_scenario(label: &str, policy: ConflictPolicy) {
    let db = TestDb::new(label).await;
    setup(&db).await;
    let c = db.checker().await;
    let plan = reprice_plan(&db, label, policy);
    assert!(
        plan.dry_run()
            .to_string()
            .contains("reprice is undone by the undo log of"),
        "{}",
        plan.dry_run()
    );
    let (report, acks, moments, _) =
        run_under_traffic(&db, &plan, true, Duration::from_millis(300)).await;
    let md = report.to_markdown();
    let rollback_started = moments.rollback_started.expect("rollback started");
    let restored = moments.restored.unwrap_or_else(Instant::now);
    let migrated = |a: &Ack| a.aid % 10 == 0 && a.aid <= ROWS;
    // Rows both the run and the application changed: the application's writes to them
    // acknowledged before the rollback started (so before the restore).
    let conflicted: BTreeSet<i32> = acks
        .iter()
        .filter(|a| migrated(a) && a.at < rollback_started)
        .map(|a| a.aid)
        .collect();
    // A write in flight while the restore ran may have landed before or after it: such
    // rows are left out of the exact checks.
    let straddling: BTreeSet<i32> = acks
        .iter()
        .filter(|a| migrated(a) && a.at >= rollback_started && a.started <= restored)
        .map(|a| a.aid)
        .collect();
    let conflicted: BTreeSet<i32> = conflicted.difference(&straddling).copied().collect();
    assert!(
        conflicted.len() >= 20,
        "too few conflicts to tell: {}",
        conflicted.len()
    );
    let others: Vec<Ack> = acks.iter().filter(|a| !migrated(a)).cloned().collect();
    if policy == ConflictPolicy::Refuse {
        // Refused: nothing restored, the run stops and names the conflicts.
        assert_eq!(report.outcome, Outcome::RollbackFailed, "{md}");
        assert!(md.contains("policy: refuse"), "{md}");
        assert!(md.contains("both changed"), "{md}");
        assert!(
            db.count("SELECT count(*) FROM pgbench_accounts WHERE abalance >= 100 AND aid % 10 = 0 AND aid <= 100000")
                .await
                > 0,
            "the run's changes stay until someone decides"
        );
        return;
    }
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    // The application's writes to rows the run never changed all survive.
    assert_writes_survive(&c, &others, label).await;
    // The run's own changes are gone: every row nobody else wrote is as before the run,
    // the run's inserts are gone and its deletes are back.
    let touched: BTreeSet<i32> = acks.iter().map(|a| a.aid).collect();
    assert_eq!(differing(&c, &touched).await, Vec::<i32>::new(), "{md}");
    eprintln!(
        "{label}: {} conflicts, {} in flight during the restore (left out)",
        conflicted.len(),
        straddling.len()
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pgbench_accounts WHERE aid > 5000000 AND aid <= 5000050")
            .await,
        0
    );
    // Conflicts are listed, and resolved by the policy.
    let cp = &report.checkpoints[0];
    let discarded = cp.discarded_writes.clone().unwrap_or_default();
    assert!(!discarded.conflicts.is_empty(), "{md}");
    assert!(
        discarded
            .conflicts
            .iter()
            .any(|c| c.contains("both changed")),
        "{:?}",
        discarded.conflicts
    );
    let conflicted_aids: Vec<i32> = conflicted.iter().copied().collect();
    let before = rows(&c, "before_run", &conflicted_aids).await;
    let now = rows(&c, "pgbench_accounts", &conflicted_aids).await;
    let conflict_acks: Vec<Ack> = acks
        .iter()
        .filter(|a| conflicted.contains(&a.aid))
        .cloned()
        .collect();
    match policy {
        ConflictPolicy::KeepApplication => {
            // The application's version: what it wrote, and the run's change to the
            // column the application left alone undone.
            let want = expected(&before, &conflict_acks);
            for (aid, w) in &want {
                assert_eq!(now.get(aid), w.as_ref(), "aid {aid}\n{md}");
            }
            assert!(discarded.items == 0 || discarded.exact, "{md}");
        }
        ConflictPolicy::KeepBaseline => {
            // The baseline: the application's writes to them before the restore are
            // discarded, and counted; its writes after the restore stand.
            let later: Vec<Ack> = conflict_acks
                .iter()
                .filter(|a| a.started > restored)
                .cloned()
                .collect();
            let want = expected(&before, &later);
            for aid in &conflicted_aids {
                let w = want
                    .get(aid)
                    .cloned()
                    .unwrap_or_else(|| before.get(aid).cloned());
                assert_eq!(now.get(aid), w.as_ref(), "aid {aid}\n{md}");
            }
            assert!(discarded.exact, "{md}");
            assert!(
                discarded.items >= conflicted.len() as u64,
                "{} discarded, {} conflicts\n{md}",
                discarded.items,
                conflicted.len()
            );
            assert!(!discarded.keys.is_empty(), "{md}");
        }
        ConflictPolicy::Refuse => unreachable!(),
    }
    eprintln!(
        "{label}: {} conflicts, {} application writes elsewhere kept, {} discarded",
        conflicted.len(),
        others.len(),
        discarded.items
    );
}

#[tokio::test]
async fn the_undo_log_undoes_only_the_runs_writes_and_keeps_the_applications_version_of_conflicts()
{
    reprice_scenario("live_keep_app", ConflictPolicy::KeepApplication).await;
}

#[tokio::test]
async fn the_undo_log_can_keep_the_baseline_of_conflicts_and_counts_what_it_discards() {
    reprice_scenario("live_keep_base", ConflictPolicy::KeepBaseline).await;
}

#[tokio::test]
async fn the_undo_log_can_refuse_conflicts_and_stop_with_their_list() {
    reprice_scenario("live_refuse", ConflictPolicy::Refuse).await;
}

/// A restore-only step and a failing final check, with four writers during the whole
/// rollback: one restore, `rolled_back`, parity proven, and every write acknowledged after
/// the restore committed is still there.
async fn restore_under_writers(
    label: &str,
    make: impl FnOnce(&TestDb) -> Box<dyn Checkpoint>,
    method: &str,
) {
    let db = TestDb::new(label).await;
    setup(&db).await;
    let checkpoint = make(&db);
    let c = db.checker().await;
    let resource = checkpoint.resource().to_string();
    let plan = Plan::builder(label)
        .checkpoint("database", checkpoint)
        .step(
            "database",
            SqlStep::new(
                &db.db,
                "reprice",
                "UPDATE pgbench_accounts SET abalance = abalance + 100 WHERE aid % 10 = 0",
            )
            .touching(resource),
            &[],
        )
        .verify_final(SqlAssertion::is_true(&db.db, "never-true", "SELECT false"))
        .build()
        .expect("plan builds");
    let (report, acks, moments, _) =
        run_under_traffic(&db, &plan, false, Duration::from_millis(800)).await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    let cp = &report.checkpoints[0];
    assert_eq!(cp.restores, 1, "restored more than once\n{md}");
    assert_eq!(cp.restore_method.as_deref(), Some(method), "{md}");
    let restored_at = moments.restored.expect("a restore event");
    let after: Vec<Ack> = acks
        .iter()
        .filter(|a| a.at > restored_at)
        .cloned()
        .collect();
    assert!(
        after.len() >= 20,
        "too few writes after the restore to tell: {}",
        after.len()
    );
    // Writes acknowledged after the restore: all there (rows each writer touched after
    // it only, so that an earlier discarded write to the same row does not count).
    let early: BTreeSet<i32> = acks
        .iter()
        .filter(|a| a.at <= restored_at)
        .map(|a| a.aid)
        .collect();
    let late: Vec<Ack> = after
        .into_iter()
        .filter(|a| !early.contains(&a.aid))
        .collect();
    let kept = assert_writes_survive(&c, &late, label).await;
    if method == "undo-log (selective)" {
        // The undo log keeps every write of the application, before the restore too.
        assert_writes_survive(&c, &acks, label).await;
    } else {
        // A snapshot restore discards the writes made before it, and says so: a lower
        // bound (the row-count difference — inserts and deletes may cancel out), the
        // run's own writes included, and the window.
        let d = cp
            .discarded_writes
            .clone()
            .expect("discarded writes reported");
        // The delta counts the rows it wrote back: exactly the rows that differed.
        assert_eq!(d.exact, method == "delta", "{d:?}");
        assert!(d.includes_run, "{d:?}");
        assert!(report.items_discarded.is_some(), "{md}");
        assert!(report.rpo_ms.is_some(), "{md}");
        assert!(md.contains("discarded"), "{md}");
    }
    // The run's own change is gone.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pgbench_accounts p JOIN before_run b USING (aid) \
                  WHERE p.aid % 10 = 0 AND p.abalance <> b.abalance"
        )
        .await,
        0
    );
    eprintln!("{label}: restored by {method} once; {kept} rows written after the restore all kept");
}

#[tokio::test]
async fn four_writers_during_a_swap_restore() {
    restore_under_writers(
        "live_swap",
        |db| Box::new(TableSnapshot::new(&db.db, accounts()).restore_method(RestoreMethod::Swap)),
        "swap",
    )
    .await;
}

#[tokio::test]
async fn four_writers_during_a_delta_restore() {
    restore_under_writers(
        "live_delta",
        |db| Box::new(TableSnapshot::new(&db.db, accounts()).restore_method(RestoreMethod::Delta)),
        "delta",
    )
    .await;
}

#[tokio::test]
async fn four_writers_during_a_copy_restore() {
    restore_under_writers(
        "live_copy",
        |db| Box::new(TableSnapshot::new(&db.db, accounts()).restore_method(RestoreMethod::Copy)),
        "copy",
    )
    .await;
}

#[tokio::test]
async fn four_writers_during_a_merge_restore() {
    restore_under_writers(
        "live_merge",
        |db| Box::new(TableSnapshot::new(&db.db, accounts()).restore_method(RestoreMethod::Merge)),
        "merge",
    )
    .await;
}

#[tokio::test]
async fn four_writers_during_an_undo_log_restore() {
    restore_under_writers(
        "live_undo",
        |db| Box::new(TableUndoLog::new(&db.db, accounts())),
        "undo-log (selective)",
    )
    .await;
}

/// A step whose revert silently does nothing, and no checkpoint: `rolled_back`, but parity
/// is not proven, and the report names the resource.
#[tokio::test]
async fn a_silent_revert_without_a_checkpoint_is_reported_unproven() {
    let db = TestDb::new("live_silent").await;
    db.exec("CREATE TABLE prices (id int PRIMARY KEY, amount int NOT NULL); INSERT INTO prices SELECT g, g FROM generate_series(1, 100) g")
        .await;
    let plan = Plan::builder("silent")
        .step(
            "database",
            SqlStep::new(
                &db.db,
                "zero",
                "UPDATE prices SET amount = 0 WHERE id <= 10",
            )
            .down("SELECT 1")
            .touches_table(&Table::public("prices")),
            &[],
        )
        .verify_final(SqlAssertion::is_true(&db.db, "never-true", "SELECT false"))
        .build()
        .expect("plan builds");
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(!report.parity_proven(), "{md}");
    assert!(
        report.unproven.iter().any(|u| u.contains("prices")),
        "{:?}",
        report.unproven
    );
    // Independent check: the data does differ from before.
    assert_eq!(
        db.count("SELECT count(*) FROM prices WHERE amount = 0")
            .await,
        10
    );
}
