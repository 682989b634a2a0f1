//! PgJournal: the same semantics as the core's FileJournal, on the real server, plus
//! tamper detection and sharing between processes' pools.

mod common;

use common::TestDb;
use rollback_core::journal::{Entry, Journal, JournalError};
use rollback_core::{Error, Executor, Outcome, Plan, ResumePolicy};
use rollback_postgres::{Database, PgJournal, SqlStep, Table, TableSnapshot};
use std::sync::Arc;
use std::time::Duration;

fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry::ApplyIntent {
            step: format!("step-{i}"),
            attempt: 1,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_journal_keeps_the_journal_contract() {
    let db = TestDb::new("journal_contract").await;
    rollback_core::conformance::journal::run_all(Arc::new(PgJournal::new(&db.db))).await;
}

/// Two journals on one database, as two machines would have: a writer of an older epoch
/// is refused by the server, in the append's own transaction, once a newer epoch wrote.
#[tokio::test]
async fn a_stale_writer_in_another_process_is_refused_by_the_server() {
    let db = TestDb::new("journal_fence").await;
    let a = PgJournal::new(&Database::connect(&db.url).unwrap());
    let b = PgJournal::new(&Database::connect(&db.url).unwrap());
    let la = a
        .acquire_lease("plan", "a", Duration::from_millis(200))
        .await
        .unwrap();
    a.append("r", &Entry::Committed, la.epoch).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lb = b
        .acquire_lease("plan", "b", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(lb.epoch > la.epoch);
    b.append("r", &Entry::Committed, lb.epoch).await.unwrap();
    let err = a
        .append("r", &Entry::Committed, la.epoch)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Fenced { .. }), "{err}");
    assert_eq!(a.records("r").await.unwrap().len(), 2);
    // The lease row keeps its epoch when released: the next grant is newer still.
    b.release_lease("plan", "b").await.unwrap();
    let lc = a
        .acquire_lease("plan", "a", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(lc.epoch > lb.epoch);
}

#[tokio::test]
async fn tampered_deleted_or_reordered_rows_are_typed_errors() {
    let db = TestDb::new("journal_tamper").await;
    let j = PgJournal::new(&db.db);
    for e in entries(4) {
        j.append("r1", &e, 0).await.unwrap();
    }
    j.records("r1").await.unwrap();
    db.exec("UPDATE _rollback.journal SET entry = replace(entry, 'step-1', 'step-X') WHERE run_id = 'r1' AND seq = 1")
        .await;
    match j.records("r1").await {
        Err(Error::Journal(JournalError::Tampered { seq: 1, .. })) => {}
        other => panic!("expected Tampered at 1, got {other:?}"),
    }
    db.exec("UPDATE _rollback.journal SET entry = replace(entry, 'step-X', 'step-1') WHERE run_id = 'r1'").await;
    j.records("r1").await.unwrap();
    db.exec("DELETE FROM _rollback.journal WHERE run_id = 'r1' AND seq = 2")
        .await;
    match j.records("r1").await {
        Err(Error::Journal(JournalError::OutOfOrder {
            seq: 3,
            expected_seq: 2,
            ..
        })) => {}
        other => panic!("expected OutOfOrder, got {other:?}"),
    }
    for e in entries(2) {
        j.append("r2", &e, 0).await.unwrap();
    }
    db.exec("UPDATE _rollback.journal SET entry = '{\"type\":\"no_such_entry\"}' WHERE run_id = 'r2' AND seq = 0")
        .await;
    assert!(matches!(
        j.records("r2").await,
        Err(Error::Journal(JournalError::Malformed { .. }))
    ));
}

#[tokio::test]
async fn many_writers_in_separate_pools_keep_one_unbroken_chain() {
    let db = TestDb::new("journal_many").await;
    let mut tasks = Vec::new();
    for w in 0..6 {
        // A pool per writer, as separate processes would have.
        let j = PgJournal::new(&Database::connect(&db.url).unwrap());
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                j.append(
                    "shared",
                    &Entry::Progress {
                        step: format!("w{w}"),
                        cursor: serde_json::json!(i),
                    },
                    0,
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let recs = PgJournal::new(&db.db).records("shared").await.unwrap();
    assert_eq!(recs.len(), 120);
    assert_eq!(recs.last().unwrap().seq, 119);
}

#[tokio::test]
async fn a_run_journaled_in_postgres_is_resumed_by_another_executor() {
    let db = TestDb::new("journal_resume").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 100) g;")
        .await;
    let plan = Plan::builder("pg-journal-resume")
        .checkpoint("db", TableSnapshot::new(&db.db, Table::public("t")))
        .step(
            "db",
            SqlStep::new(&db.db, "bump", "UPDATE t SET v = v + 1")
                .down("UPDATE t SET v = v - 1")
                .touches_table(&Table::public("t")),
            &[],
        )
        .build()
        .unwrap();
    let journal: Arc<dyn Journal> = Arc::new(PgJournal::new(&db.db));
    let crashing = Executor::with_journal(Arc::new(rollback_core::sim::CrashAfter::new(
        journal.clone(),
        6,
    )))
    .holder("worker-a")
    .lease_ttl(Duration::from_millis(300));
    assert!(matches!(crashing.run(&plan).await, Err(Error::Crashed(_))));
    let run_id = journal.runs().await.unwrap().pop().unwrap();
    assert_eq!(
        db.count("SELECT sum(v) FROM t").await,
        5050 + 100,
        "the step ran"
    );
    // Another machine, another pool: waits for the lease to expire, takes it over.
    let other = Executor::new(PgJournal::new(&Database::connect(&db.url).unwrap()))
        .holder("worker-b")
        .on_resume(ResumePolicy::RollBack);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let report = other.resume(&plan, &run_id).await.unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven());
    assert_eq!(db.count("SELECT sum(v) FROM t").await, 5050);
    let recs = journal.records(&run_id).await.unwrap();
    assert!(recs.iter().any(|r| matches!(
        &r.entry,
        Entry::LeaseTaken { holder, taken_over_from: Some(prev), .. } if holder == "worker-b" && prev == "worker-a"
    )));
}

#[tokio::test]
async fn pg_journal_lists_the_runs_of_a_plan_from_its_first_records() {
    let db = TestDb::new("journal_runs_of_plan").await;
    rollback_core::conformance::journal::runs_of_plan(&PgJournal::new(&db.db)).await;
}

#[tokio::test]
async fn a_report_is_rebuilt_from_the_postgres_journal_alone() {
    let db = TestDb::new("journal_describe").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;")
        .await;
    let plan = Plan::builder("pg-journal-describe")
        .checkpoint("db", TableSnapshot::new(&db.db, Table::public("t")))
        .step(
            "db",
            SqlStep::new(&db.db, "bump", "UPDATE t SET v = v + 1")
                .down("UPDATE t SET v = v - 1")
                .touches_table(&Table::public("t")),
            &[],
        )
        .step(
            "db",
            SqlStep::new(&db.db, "fail", "SELECT 1 / 0").touches_table(&Table::public("t")),
            &["bump"],
        )
        .rto_target(Duration::from_secs(30))
        .build()
        .unwrap();
    let journal = PgJournal::new(&db.db);
    let report = Executor::new(PgJournal::new(&db.db))
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    // Another process, with no plan: the journal's records alone.
    let other = PgJournal::new(&Database::connect(&db.url).unwrap());
    let records = other.records(&report.run_id).await.unwrap();
    assert_eq!(records[1].entry.kind(), "plan_described");
    let rebuilt = rollback_core::RunReport::rebuild(&report.run_id, &records).unwrap();
    assert_eq!(rebuilt, report);
    assert_eq!(
        rollback_core::RunReport::from_records(&plan, &report.run_id, &records),
        rebuilt
    );
    assert_eq!(rebuilt.objectives.rto_ms, Some(30_000));
    assert_eq!(rebuilt.steps.len(), 2);
    // Progress is kept beside the records, latest value per source, for other machines.
    let p = |done| rollback_core::journal::LiveProgress {
        source: "backfill".into(),
        done,
        total: Some(10),
        unit: "rows".into(),
        at_ms: 1_000 + done,
    };
    // The run published its snapshot's progress (10 rows copied) as it went.
    let published = other.progress(&report.run_id).await.unwrap();
    assert!(
        published
            .iter()
            .any(|p| p.source == "capture public.t" && p.done == 10 && p.total == Some(10)),
        "{published:?}"
    );
    journal
        .publish_progress(&report.run_id, &p(3))
        .await
        .unwrap();
    journal
        .publish_progress(&report.run_id, &p(7))
        .await
        .unwrap();
    let now = other.progress(&report.run_id).await.unwrap();
    assert_eq!(now.len(), published.len() + 1, "{now:?}");
    assert!(now.contains(&p(7)) && !now.contains(&p(3)), "{now:?}");
    assert_eq!(other.progress("no-such-run").await.unwrap(), vec![]);
    // The stored lease is readable without taking it.
    let lease = journal.lease("pg-journal-describe").await.unwrap().unwrap();
    assert_eq!(lease.holder, "", "released after the run");
    assert!(lease.epoch >= 1);
    assert_eq!(journal.lease("no-such-plan").await.unwrap(), None);
}
