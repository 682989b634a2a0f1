//! A realistic migration on a `pgbench -i --foreign-keys` schema plus a table with a foreign
//! key: split a column, backfill it in batches, add a constraint — failing at several
//! points, including a real child process SIGKILLed mid-backfill and resumed by a fresh
//! process — and after each rollback, `pg_dump` (schema, and data with each COPY block
//! sorted) equals the baseline.
//!
//! Scale: `ROLLBACK_PGBENCH_SCALE`, by default `-s 10` (1M accounts) in optimized builds
//! (`cargo test --release`) and `-s 2` (200 000 accounts) in debug builds, where `-s 10`
//! takes two to five minutes on a two-core machine — too long for the default suite.
//! `ROLLBACK_PGBENCH_SCALE=10 cargo test -p rollback-postgres --test pgbench` runs the full
//! scale in debug too.

mod common;

use common::TestDb;
use rollback_core::journal::{FileJournal, Journal};
use rollback_core::{Executor, Outcome, Plan, ResumePolicy, StepOptions};
use rollback_postgres::{
    Backfill, Database, ForeignKeyIntegrity, RecoveryPoint, SchemaSnapshot, SqlAssertion, SqlStep,
    Table, TableSnapshot,
};
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ROLLBACK_PG_TEST_CHILD";

fn scale() -> u32 {
    std::env::var("ROLLBACK_PGBENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 2 } else { 10 })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Failure {
    /// The constraint step fails (a row violates it).
    AtConstraint,
    /// A post-step verifier after the backfill fails.
    AfterBackfill,
    /// Nothing fails on its own (the process is killed from outside).
    None,
    /// A destructive step drops the old column, then a final verifier fails: only the
    /// table snapshot can bring the column's data back.
    AfterDrop,
}

fn accounts() -> Table {
    Table::public("pgbench_accounts")
}

/// The migration, built the same way by the parent and the child (same plan digest).
fn plan(db: &Database, failure: Failure, throttle_ms: u64) -> Plan {
    let tables = TableSnapshot::of_tables(
        db,
        vec![
            accounts(),
            Table::public("account_notes"),
            Table::public("pgbench_history"),
        ],
    );
    let covered = rollback_core::Checkpoint::resource(&tables).to_string();
    let schema = SchemaSnapshot::new(db, ["public"]);
    let structure = rollback_core::Checkpoint::resource(&schema).to_string();
    let mut b = Plan::builder(format!("split-owner-{failure:?}"))
        .precondition(RecoveryPoint::new(db, "pre-split"))
        .checkpoint("database", schema)
        .checkpoint("database", tables)
        .step(
            "database",
            SqlStep::new(
                db,
                "add-name-columns",
                "ALTER TABLE pgbench_accounts ADD COLUMN first_name text, ADD COLUMN last_name text",
            )
            .down("ALTER TABLE pgbench_accounts DROP COLUMN IF EXISTS first_name, DROP COLUMN IF EXISTS last_name")
            .touching(structure.clone()),
            &[],
        )
        .step(
            "database",
            Backfill::new(
                db,
                "backfill-names",
                accounts(),
                "aid",
                "first_name = split_part(owner, ' ', 1), last_name = split_part(owner, ' ', 2)",
            )
            .batch_size(20_000)
            .throttle(Duration::from_millis(throttle_ms))
            .touching(covered.clone()),
            &["add-name-columns"],
        )
        .step(
            "database",
            SqlStep::new(
                db,
                "add-names-constraint",
                "ALTER TABLE pgbench_accounts ADD CONSTRAINT names_present \
                   CHECK (first_name IS NOT NULL AND last_name <> '') NOT VALID; \
                 ALTER TABLE pgbench_accounts VALIDATE CONSTRAINT names_present",
            )
            .down("ALTER TABLE pgbench_accounts DROP CONSTRAINT IF EXISTS names_present")
            .touching(structure.clone()),
            &["backfill-names"],
        )
        .default_step_options(StepOptions::default().retries(2).backoff(Duration::from_millis(100)))
        .verify_final(ForeignKeyIntegrity::new(db).schemas(["public"]));
    b = b.verify_after(
        "backfill-names",
        match failure {
            Failure::AfterBackfill => SqlAssertion::is_true(
                db,
                "names-are-long",
                "SELECT bool_and(length(first_name) > 100) FROM pgbench_accounts",
            ),
            _ => SqlAssertion::no_rows(
                db,
                "names-filled",
                "SELECT aid FROM pgbench_accounts WHERE first_name IS NULL LIMIT 5",
            ),
        },
    );
    if failure == Failure::AfterDrop {
        b = b
            .step(
                "database",
                SqlStep::new(
                    db,
                    "drop-owner",
                    "ALTER TABLE pgbench_accounts DROP COLUMN owner",
                )
                .touching(covered),
                &["add-names-constraint"],
            )
            .verify_final(SqlAssertion::no_rows(
                db,
                "no-jane",
                "SELECT aid FROM pgbench_accounts WHERE first_name = 'Owner7'",
            ));
    }
    b.build().expect("plan builds")
}

async fn setup(db: &TestDb) {
    let out = Command::new(common::pg_bin("pgbench"))
        .args(["-i", "-q", "--foreign-keys", "-s", &scale().to_string()])
        .arg(&db.url)
        .output()
        .expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.exec(
        "ALTER TABLE pgbench_accounts ADD COLUMN owner text;
         UPDATE pgbench_accounts SET owner = 'Owner' || aid || ' Family' || (aid % 1000);
         CREATE TABLE account_notes (id serial PRIMARY KEY, aid int NOT NULL REFERENCES pgbench_accounts (aid), note text);
         INSERT INTO account_notes (aid, note) SELECT (g * 7) % 100000 + 1, 'note ' || g FROM generate_series(1, 5000) g;",
    )
    .await;
    db.exec("VACUUM ANALYZE pgbench_accounts").await;
}

/// Entry point of the child process that `a_migration_killed_mid_backfill_...` starts
/// and kills; when not started as that child (no `ROLLBACK_PG_TEST_CHILD`), it returns.
#[tokio::test]
async fn child_process_entry_point_for_the_kill_test() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let journal_dir = std::env::var("ROLLBACK_PG_TEST_JOURNAL").expect("journal dir");
    let run_id = std::env::var("ROLLBACK_PG_TEST_RUN").expect("run id");
    let db = Database::connect(&url).unwrap();
    let ex = Executor::new(FileJournal::open(journal_dir).unwrap())
        .holder("child")
        .lease_ttl(Duration::from_secs(1));
    let report = ex
        .run_as(&plan(&db, Failure::None, 150), &run_id, Default::default())
        .await
        .unwrap();
    panic!(
        "the child should have been killed, but the run ended: {}",
        report.outcome
    );
}

#[tokio::test]
async fn pgbench_migration_fails_at_several_points_and_each_rollback_matches_pg_dump() {
    let t0 = Instant::now();
    let db = TestDb::new("pgbench").await;
    setup(&db).await;
    let baseline = db.dump();
    let rows = db.count("SELECT count(*) FROM pgbench_accounts").await;
    assert_eq!(rows, 100_000 * scale() as i64);
    eprintln!("setup + baseline dump: {:?}", t0.elapsed());
    let journal_dir = tempfile::tempdir().unwrap();

    // 1. The constraint cannot be validated: one owner has no family name.
    db.exec("UPDATE pgbench_accounts SET owner = 'Cher' WHERE aid = 4242")
        .await;
    let baseline_1 = db.dump();
    let t = Instant::now();
    let report = Executor::new(FileJournal::open(journal_dir.path()).unwrap())
        .run(&plan(&db.db, Failure::AtConstraint, 0))
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven());
    let md = report.to_markdown();
    assert!(
        md.contains("names_present") && md.contains("restore point pre-split"),
        "{md}"
    );
    common::assert_same_dump(&baseline_1, &db.dump(), "failure at the constraint");
    eprintln!("scenario 1 (constraint fails): {:?}", t.elapsed());
    db.exec("UPDATE pgbench_accounts SET owner = 'Owner4242 Family242' WHERE aid = 4242")
        .await;
    common::assert_same_dump(&baseline, &db.dump(), "baseline again");

    // 2. A post-step verifier fails after the backfill.
    let t = Instant::now();
    let report = Executor::new(FileJournal::open(journal_dir.path()).unwrap())
        .run(&plan(&db.db, Failure::AfterBackfill, 0))
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.to_markdown().contains("names-are-long"));
    common::assert_same_dump(&baseline, &db.dump(), "failure after the backfill");
    eprintln!("scenario 2 (verifier fails): {:?}", t.elapsed());

    // 3. The old column is dropped, then a final check fails: the table snapshot restores it.
    let t = Instant::now();
    let report = Executor::new(FileJournal::open(journal_dir.path()).unwrap())
        .run(&plan(&db.db, Failure::AfterDrop, 0))
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven(), "{}", report.to_markdown());
    let md = report.to_markdown();
    assert!(
        md.contains("copy") || md.contains("merge"),
        "restored by the table snapshot: {md}"
    );
    common::assert_same_dump(
        &baseline,
        &db.dump(),
        "failure after dropping the old column",
    );
    eprintln!("scenario 3 (destructive step, restore): {:?}", t.elapsed());

    // 4. A real process is SIGKILLed mid-backfill; a fresh executor resumes and rolls back.
    let t = Instant::now();
    let run_id = format!("killed-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry_point_for_the_kill_test",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db.url)
        .env("ROLLBACK_PG_TEST_JOURNAL", journal_dir.path())
        .env("ROLLBACK_PG_TEST_RUN", &run_id)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the child");
    let mut done = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        done = db
            .scalar(&format!(
                "SELECT rows_done FROM _rollback.backfill_progress WHERE run_id = '{run_id}'"
            ))
            .await
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        if done >= 60_000 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the child ended early");
    }
    assert!(done >= 60_000, "the child made no progress");
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert!(!status.success());
    eprintln!("child killed after {done} rows backfilled");
    let filled = db
        .count("SELECT count(*) FROM pgbench_accounts WHERE first_name IS NOT NULL")
        .await;
    assert!(
        filled >= done && filled < rows,
        "killed mid-backfill: {filled} of {rows}"
    );
    let journal = FileJournal::open(journal_dir.path()).unwrap();
    let cursors = journal
        .records(&run_id)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.entry.kind() == "progress")
        .count();
    assert!(cursors >= 3, "the child journaled its cursor ({cursors})");
    let plan4 = plan(&db.db, Failure::None, 150);
    let resumer = Executor::new(journal)
        .holder("parent")
        .on_resume(ResumePolicy::RollBack);
    let report = loop {
        match resumer.resume(&plan4, &run_id).await {
            Err(rollback_core::Error::LeaseHeld { .. }) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven());
    assert!(
        report.to_markdown().contains("lease taken by parent"),
        "{}",
        report.to_markdown()
    );
    common::assert_same_dump(
        &baseline,
        &db.dump(),
        "after the killed run was rolled back",
    );
    eprintln!(
        "scenario 4 (SIGKILL mid-backfill, resume): {:?}",
        t.elapsed()
    );

    // 5. And the migration itself works: a clean run commits.
    let t = Instant::now();
    let report = Executor::new(FileJournal::open(journal_dir.path()).unwrap())
        .run(&plan(&db.db, Failure::None, 0))
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pgbench_accounts WHERE first_name || ' ' || last_name = owner"
        )
        .await,
        rows
    );
    eprintln!(
        "scenario 5 (clean run): {:?}; total {:?}",
        t.elapsed(),
        t0.elapsed()
    );
}
