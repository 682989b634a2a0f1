//! PgJournal: the same semantics as the core's FileJournal, on the real server, plus
//! tamper detection and sharing between processes' pools.

mod common;

use common::TestDb;
use rollback_core::journal::{Entry, FileJournal, Journal, JournalError};
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

/// The semantics every journal shares (run against FileJournal and PgJournal alike).
async fn journal_semantics(j: Arc<dyn Journal>) {
    let run = format!("run-{}", uuid::Uuid::new_v4().simple());
    assert!(
        j.records(&run).await.unwrap().is_empty(),
        "unknown run: empty"
    );
    for e in entries(5) {
        j.append(&run, &e).await.unwrap();
    }
    let recs = j.records(&run).await.unwrap();
    assert_eq!(recs.len(), 5);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
        if i > 0 {
            assert_eq!(r.prev, recs[i - 1].hash, "chained");
        }
    }
    rollback_core::journal::verify_chain(&run, &recs).unwrap();
    assert!(j.runs().await.unwrap().contains(&run));

    // Leases: free → granted; held → refused; renewed by the holder; taken over after expiry.
    let key = format!("plan-{}", uuid::Uuid::new_v4().simple());
    let a = j
        .acquire_lease(&key, "a", Duration::from_millis(400))
        .await
        .unwrap();
    assert_eq!(a.taken_over_from, None);
    match j.acquire_lease(&key, "b", Duration::from_secs(5)).await {
        Err(Error::LeaseHeld {
            holder,
            remaining_ms,
            ..
        }) => {
            assert_eq!(holder, "a");
            assert!(remaining_ms <= 400);
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }
    let renewed = j
        .acquire_lease(&key, "a", Duration::from_millis(400))
        .await
        .unwrap();
    assert_eq!(renewed.taken_over_from, None);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let b = j
        .acquire_lease(&key, "b", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        b.taken_over_from.as_deref(),
        Some("a"),
        "takeover names the expired holder"
    );
    j.release_lease(&key, "a").await.unwrap(); // not the holder: no effect
    assert!(matches!(
        j.acquire_lease(&key, "c", Duration::from_secs(5)).await,
        Err(Error::LeaseHeld { .. })
    ));
    j.release_lease(&key, "b").await.unwrap();
    let c = j
        .acquire_lease(&key, "c", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        c.taken_over_from, None,
        "a released lease is not a takeover"
    );
}

#[tokio::test]
async fn pg_journal_has_the_file_journals_semantics() {
    let dir = tempfile::tempdir().unwrap();
    journal_semantics(Arc::new(FileJournal::open(dir.path()).unwrap())).await;
    let db = TestDb::new("journal_sem").await;
    journal_semantics(Arc::new(PgJournal::new(&db.db))).await;
}

#[tokio::test]
async fn tampered_deleted_or_reordered_rows_are_typed_errors() {
    let db = TestDb::new("journal_tamper").await;
    let j = PgJournal::new(&db.db);
    for e in entries(4) {
        j.append("r1", &e).await.unwrap();
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
        j.append("r2", &e).await.unwrap();
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
            SqlStep::new(&db.db, "bump", "UPDATE t SET v = v + 1").down("UPDATE t SET v = v - 1"),
            &[],
        )
        .build()
        .unwrap();
    let journal: Arc<dyn Journal> = Arc::new(PgJournal::new(&db.db));
    let crashing = Executor::with_journal(Arc::new(rollback_core::sim::CrashAfter::new(
        journal.clone(),
        5,
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
        Entry::LeaseTaken { holder, taken_over_from: Some(prev) } if holder == "worker-b" && prev == "worker-a"
    )));
}
