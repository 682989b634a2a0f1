//! Backfill: conformance, progress events, journaled cursor, resume after a crash.

mod common;

use common::TestDb;
use rollback_core::conformance::Subject;
use rollback_core::events::RunEvent;
use rollback_core::journal::{Entry, Journal, MemoryJournal};
use rollback_core::sim::CrashAfter;
use rollback_core::{Error, Executor, Outcome, Plan, ResumePolicy, Step};
use rollback_postgres::{Backfill, SqlStep, Table, TableSnapshot};
use std::sync::Arc;

async fn people(db: &TestDb, n: i64) {
    db.exec(&format!(
        "CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, first_name text, last_name text);
         INSERT INTO people (id, name) SELECT g, 'First' || g || ' Last' || g FROM generate_series(1, {n}) g;
         CREATE TABLE other (id int PRIMARY KEY);"
    ))
    .await;
}

fn fill(db: &TestDb) -> Backfill {
    Backfill::new(
        &db.db,
        "split-names",
        Table::public("people"),
        "id",
        "first_name = split_part(name, ' ', 1), last_name = split_part(name, ' ', 2)",
    )
    .batch_size(100)
}

#[tokio::test]
async fn backfill_and_table_snapshot_pass_the_conformance_suite() {
    let db = TestDb::new("bf_conf").await;
    people(&db, 1000).await;
    let step = fill(&db);
    assert_eq!(
        step.touches(),
        vec![db.db.table_resource(&Table::public("people"))]
    );
    rollback_core::conformance::run_all(Subject {
        checkpoint: Arc::new(TableSnapshot::new(&db.db, Table::public("people"))),
        other_checkpoint: Arc::new(TableSnapshot::new(&db.db, Table::public("other"))),
        step: Arc::new(step),
        journal: Arc::new(MemoryJournal::new()),
    })
    .await;
}

#[tokio::test]
async fn backfill_reports_progress_and_journals_its_cursor() {
    let db = TestDb::new("bf_progress").await;
    people(&db, 1000).await;
    let plan = Plan::builder("bf-progress")
        .checkpoint("db", TableSnapshot::new(&db.db, Table::public("people")))
        .step("db", fill(&db), &[])
        .build()
        .unwrap();
    let journal = Arc::new(MemoryJournal::new());
    let ex = Executor::with_journal(journal.clone());
    let mut rx = ex.subscribe();
    let report = ex.run(&plan).await.unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    let mut progress = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let RunEvent::Progress {
            source,
            done,
            total,
            unit,
        } = e.event
        {
            if source == "split-names" {
                assert_eq!(unit, "rows");
                assert_eq!(total, Some(1000));
                progress.push(done);
            }
        }
    }
    assert_eq!(progress, (1..=10).map(|i| i * 100).collect::<Vec<_>>());
    let cursors: Vec<serde_json::Value> = journal
        .records(&report.run_id)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.entry {
            Entry::Progress { cursor, .. } => Some(cursor),
            _ => None,
        })
        .collect();
    assert_eq!(cursors.len(), 10);
    assert_eq!(
        cursors.last().unwrap(),
        &serde_json::json!({"next": 1001, "rows": 1000})
    );
    assert_eq!(
        db.count("SELECT count(*) FROM people WHERE first_name = 'First' || id AND last_name = 'Last' || id").await,
        1000
    );
}

#[tokio::test]
async fn backfill_resumes_from_its_journaled_cursor_after_a_crash() {
    let db = TestDb::new("bf_resume").await;
    people(&db, 1000).await;
    let add = SqlStep::new(
        &db.db,
        "add-check",
        "ALTER TABLE people ADD CONSTRAINT names CHECK (first_name IS NOT NULL) NOT VALID",
    )
    .down("ALTER TABLE people DROP CONSTRAINT IF EXISTS names");
    let plan = Plan::builder("bf-resume")
        .checkpoint("db", TableSnapshot::new(&db.db, Table::public("people")))
        .step("db", fill(&db), &[])
        .step("db", add, &["split-names"])
        .build()
        .unwrap();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    // run_started, plan_described, lease_taken, capture_intent, captured, apply_intent, then
    // 4 cursors: crash.
    let crashing = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 10)))
        .holder("worker-1")
        .on_resume(ResumePolicy::RollForward);
    let err = crashing.run(&plan).await.unwrap_err();
    assert!(matches!(err, Error::Crashed(_)), "{err:?}");
    let run_id = journal.runs().await.unwrap().pop().unwrap();
    // The batch whose cursor could not be journaled committed: the database is ahead.
    assert_eq!(
        db.count("SELECT count(*) FROM people WHERE first_name IS NOT NULL")
            .await,
        500
    );
    let report = Executor::with_journal(journal.clone())
        .holder("worker-1")
        .on_resume(ResumePolicy::RollForward)
        .resume(&plan, &run_id)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    let records = journal.records(&run_id).await.unwrap();
    let resumed_at = records
        .iter()
        .position(|r| matches!(r.entry, Entry::Resumed { .. }))
        .unwrap();
    let after: Vec<serde_json::Value> = records[resumed_at..]
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Progress { cursor, .. } => Some(cursor.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(after.len(), 5, "only the remaining batches ran: {after:?}");
    assert_eq!(after[0], serde_json::json!({"next": 601, "rows": 600}));
    assert_eq!(
        db.count("SELECT count(*) FROM people WHERE first_name = 'First' || id")
            .await,
        1000
    );
}

#[tokio::test]
async fn a_fragment_that_escapes_its_place_is_refused_before_anything_is_written() {
    let db = TestDb::new("bf_filter").await;
    people(&db, 300).await;
    let before = db.dump();
    let split = "first_name = split_part(name, ' ', 1)";
    for (set, filter) in [
        // The filter goes in `AND (…)`: this one would close it and OR every row in.
        (split, Some("id <= 0) OR (true")),
        (split, Some("id <= 0); DROP TABLE other; --")),
        (split, Some("id <= 0 /* open")),
        (split, Some("(id <= 0")),
        ("first_name = 'x' WHERE true OR id", None),
        ("first_name = 'x' FROM other", None),
        ("first_name = 'x'; DROP TABLE other", None),
        // One fragment each, but not a valid UPDATE: the server says so before any batch.
        (split, Some("no_such_column > 0")),
        ("no_such_column = 1", None),
    ] {
        let mut step = Backfill::new(&db.db, "bad", Table::public("people"), "id", set);
        if let Some(f) = filter {
            step = step.filter(f);
        }
        let err = step
            .apply(&rollback_core::Context::standalone("bf-bad"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid { .. }),
            "set {set:?} filter {filter:?}: {err:?}"
        );
        assert_eq!(
            db.count("SELECT count(*) FROM people WHERE first_name IS NOT NULL")
                .await,
            0,
            "set {set:?} filter {filter:?} wrote"
        );
    }
    common::assert_same_dump(&before, &db.dump(), "after refused backfills");
    // A filter ending in a line comment stays in its place.
    Backfill::new(&db.db, "ten", Table::public("people"), "id", split)
        .filter("id <= 10 -- only the first ten")
        .batch_size(7)
        .apply(&rollback_core::Context::standalone("bf-ten"))
        .await
        .unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM people WHERE first_name IS NOT NULL")
            .await,
        10
    );
}
