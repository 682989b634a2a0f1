//! Rolling back a committed run on the real server (`Executor::rollback_committed`),
//! with each checkpoint kind kept after the commit: `TableSnapshot` (the restore puts
//! the table back, discarding the writes made since), `TableUndoLog` (its triggers stay
//! live while the snapshot is kept, and the selective restore undoes the run's writes
//! only, keeping the application's made after the commit) and `SchemaSnapshot`; and the
//! rollback crashed after each of its records on the PostgreSQL journal, then resumed.
//! State is checked with the test's own SQL (md5 of the rows, the catalog).

mod common;

use common::TestDb;
use rollback_core::journal::{Entry, Journal};
use rollback_core::sim::CrashAfter;
use rollback_core::{Error, Executor, Outcome, Plan, SnapshotRetention};
use rollback_postgres::{PgJournal, SchemaSnapshot, SqlStep, Table, TableSnapshot, TableUndoLog};
use std::sync::Arc;
use std::time::Duration;

async fn md5(db: &TestDb, table: &str) -> String {
    db.scalar(&format!(
        "SELECT md5(coalesce(string_agg(t::text, ';' ORDER BY id), '')) FROM {table} t"
    ))
    .await
    .unwrap_or_default()
}

async fn accounts(db: &TestDb, table: &str) {
    db.exec(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL, note text);
         INSERT INTO {table} SELECT g, g, 'base' FROM generate_series(1, 500) g"
    ))
    .await;
}

fn executor(db: &TestDb) -> Executor {
    Executor::new(PgJournal::new(&db.db))
        .holder("ops")
        .retain_snapshots(SnapshotRetention::KeepAll)
}

#[tokio::test]
async fn a_committed_run_is_restored_from_its_table_snapshot_and_the_rpo_counts_the_writes_since() {
    let db = TestDb::new("rbc_copy").await;
    accounts(&db, "acct").await;
    let baseline = md5(&db, "acct").await;
    let table = Table::public("acct");
    let plan = Plan::builder("reprice")
        .checkpoint("database", TableSnapshot::new(&db.db, table.clone()))
        .step(
            "database",
            SqlStep::new(&db.db, "double", "UPDATE acct SET v = v * 2").touches_table(&table),
            &[],
        )
        .build()
        .unwrap();
    let ex = executor(&db);
    let run = ex.run(&plan).await.unwrap();
    assert_eq!(run.outcome, Outcome::Committed);
    assert_ne!(md5(&db, "acct").await, baseline);
    // The application writes after the commit.
    db.exec("INSERT INTO acct VALUES (9001, 1, 'after commit'); UPDATE acct SET note = 'app' WHERE id = 7")
        .await;

    let report = ex
        .rollback_committed(&plan, &run.run_id, "invoices wrong since the deploy")
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report.parity_proven(), "{}", report.to_markdown());
    assert!(report.rolled_back_after_commit);
    assert_eq!(md5(&db, "acct").await, baseline, "back at the baseline");
    // RPO stated: the restore put back the writes made since the commit.
    assert!(report.rpo_since_commit_ms.is_some());
    let cp = &report.checkpoints[0];
    assert!(cp.restore_method.is_some(), "{cp:?}");
    assert!(report.to_markdown().contains("rolled back after commit"));
}

#[tokio::test]
async fn an_undo_log_kept_after_the_commit_undoes_the_runs_writes_and_keeps_the_applications() {
    let db = TestDb::new("rbc_undo").await;
    accounts(&db, "acct").await;
    let table = Table::public("acct");
    let log = TableUndoLog::new(&db.db, table.clone());
    let plan = Plan::builder("reprice-logged")
        .checkpoint("database", log)
        .step(
            "database",
            SqlStep::new(
                &db.db,
                "double",
                "UPDATE acct SET v = v * 2 WHERE id <= 100",
            )
            .touches_table(&table),
            &[],
        )
        .build()
        .unwrap();
    let ex = executor(&db);
    let run = ex.run(&plan).await.unwrap();
    assert_eq!(run.outcome, Outcome::Committed);
    // After the commit the triggers are still live (the snapshot is kept): the
    // application's writes are logged as its own.
    db.exec("INSERT INTO acct VALUES (9001, 1, 'after commit'); UPDATE acct SET note = 'app' WHERE id = 300")
        .await;
    let expected = {
        let c = db.checker().await;
        c.batch_execute(
            "CREATE TEMP TABLE want AS SELECT * FROM acct; \
             UPDATE want SET v = v / 2 WHERE id <= 100",
        )
        .await
        .unwrap();
        c.query_one(
            "SELECT md5(string_agg(t::text, ';' ORDER BY id)) FROM want t",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0)
    };
    let report = ex
        .rollback_committed(&plan, &run.run_id, "wrong prices")
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.rolled_back_after_commit);
    assert_eq!(
        md5(&db, "acct").await,
        expected,
        "the run's writes undone, the application's kept"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM acct WHERE id = 9001 OR note = 'app'")
            .await,
        2
    );
    assert_eq!(
        report.items_discarded.unwrap_or(0),
        0,
        "{}",
        report.to_markdown()
    );
}

#[tokio::test]
async fn a_committed_schema_change_is_rolled_back_from_its_schema_snapshot() {
    let db = TestDb::new("rbc_schema").await;
    accounts(&db, "acct").await;
    let schema = SchemaSnapshot::new(&db.db, ["public"]);
    let resource = rollback_core::Checkpoint::resource(&schema).to_string();
    let plan = Plan::builder("add-index")
        .checkpoint("database", schema)
        .step(
            "database",
            SqlStep::new(&db.db, "idx", "CREATE INDEX acct_note ON acct (note)").touching(resource),
            &[],
        )
        .build()
        .unwrap();
    let ex = executor(&db);
    let run = ex.run(&plan).await.unwrap();
    assert_eq!(run.outcome, Outcome::Committed);
    let has_index = "SELECT count(*) FROM pg_indexes WHERE indexname = 'acct_note'";
    assert_eq!(db.count(has_index).await, 1);
    let report = ex
        .rollback_committed(&plan, &run.run_id, "index bloats writes")
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven());
    assert_eq!(db.count(has_index).await, 0);
}

#[tokio::test]
async fn rollback_committed_refuses_a_run_that_released_its_table_snapshot() {
    let db = TestDb::new("rbc_released").await;
    accounts(&db, "acct").await;
    let table = Table::public("acct");
    let plan = Plan::builder("released")
        .checkpoint("database", TableSnapshot::new(&db.db, table.clone()))
        .step(
            "database",
            SqlStep::new(&db.db, "double", "UPDATE acct SET v = v * 2").touches_table(&table),
            &[],
        )
        .build()
        .unwrap();
    let ex = Executor::new(PgJournal::new(&db.db)).retain_snapshots(SnapshotRetention::Release);
    let run = ex.run(&plan).await.unwrap();
    let migrated = md5(&db, "acct").await;
    let err = ex
        .rollback_committed(&plan, &run.run_id, "too late")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SnapshotsReleased { .. }), "{err}");
    assert_eq!(md5(&db, "acct").await, migrated, "nothing changed");
}

/// The rollback after commit stops after each of its records (a crash of the process as
/// far as the run is concerned), and a new executor resumes it from the PostgreSQL
/// journal: the table ends at its baseline, with one `rolled_back`.
#[tokio::test]
async fn a_rollback_after_commit_crashed_after_any_record_is_resumed_from_the_pg_journal() {
    let db = TestDb::new("rbc_crash").await;
    let mut crashes = 0;
    for n in 0u64.. {
        let name = format!("acct_{n}");
        accounts(&db, &name).await;
        let baseline = md5(&db, &name).await;
        let table = Table::public(&name);
        let plan = Plan::builder(format!("reprice-{n}"))
            .checkpoint("database", TableSnapshot::new(&db.db, table.clone()))
            .step(
                "database",
                SqlStep::new(&db.db, "double", format!("UPDATE {name} SET v = v * 2"))
                    .touches_table(&table),
                &[],
            )
            .build()
            .unwrap();
        let journal: Arc<dyn Journal> = Arc::new(PgJournal::new(&db.db));
        let run = Executor::with_journal(journal.clone())
            .retain_snapshots(SnapshotRetention::KeepAll)
            .run(&plan)
            .await
            .unwrap();
        let crashing = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), n)))
            .holder("first")
            .lease_ttl(Duration::from_millis(300))
            .retain_snapshots(SnapshotRetention::KeepAll);
        match crashing.rollback_committed(&plan, &run.run_id, "bad").await {
            Ok(r) => {
                assert_eq!(r.outcome, Outcome::RolledBack);
                assert!(crashes >= 4, "only {crashes} crash points");
                break;
            }
            Err(Error::Crashed(_)) => crashes += 1,
            Err(e) => panic!("after {n} records: {e}"),
        }
        let revoked = journal
            .records(&run.run_id)
            .await
            .unwrap()
            .iter()
            .any(|r| matches!(r.entry, Entry::RollbackAfterCommit { .. }));
        // The first holder's lease expires; another process finishes.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let second = Executor::with_journal(journal.clone())
            .holder("second")
            .retain_snapshots(SnapshotRetention::KeepAll);
        let report = if revoked {
            second.resume(&plan, &run.run_id).await.unwrap()
        } else {
            second
                .rollback_committed(&plan, &run.run_id, "bad")
                .await
                .unwrap()
        };
        assert_eq!(report.outcome, Outcome::RolledBack, "after {n} records");
        assert!(
            report.parity_proven(),
            "after {n}: {}",
            report.to_markdown()
        );
        assert_eq!(md5(&db, &name).await, baseline, "after {n} records");
        let rolled_back = journal
            .records(&run.run_id)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.entry.kind() == "rolled_back")
            .count();
        assert_eq!(rolled_back, 1);
    }
}
