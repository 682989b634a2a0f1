//! The undo log's selective restore, case by case: a step interleaves the run's writes
//! (attributed with `mark_run_writes`) with the application's (its own connection), in
//! an order the test fixes, then the run rolls back. Every conflict shape — the
//! application first or last, the same column or another, inserts and deletes on either
//! side — is checked row by row with independent SQL, under each conflict policy.

mod common;

use async_trait::async_trait;
use common::TestDb;
use rollback_core::journal::MemoryJournal;
use rollback_core::{
    Checkpoint, Context, Executor, Outcome, Plan, Receipt, Result, Reversibility, RunReport, Step,
};
use rollback_postgres::{
    mark_run_writes, ConflictPolicy, Database, SqlAssertion, Table, TableUndoLog,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Who writes.
#[derive(Clone, Copy)]
enum By {
    Run,
    App,
}

/// A restore-only step that runs `script` in order: the run's statements in a
/// transaction marked as the run's, the application's on its own connection.
struct Interleaved {
    db: Database,
    app: Arc<tokio_postgres::Client>,
    resource: String,
    script: Vec<(By, &'static str)>,
}

#[async_trait]
impl Step for Interleaved {
    fn id(&self) -> &str {
        "interleaved"
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::RestoreOnly
    }
    fn touches(&self) -> Vec<String> {
        vec![self.resource.clone()]
    }
    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        let be = |e| rollback_core::Error::backend("postgres", e);
        for (by, sql) in &self.script {
            match by {
                By::Run => {
                    let mut c = self.db.client().await?;
                    let tx = c.transaction().await.map_err(be)?;
                    mark_run_writes(&tx, ctx).await?;
                    tx.batch_execute(sql).await.map_err(be)?;
                    tx.commit().await.map_err(be)?;
                }
                By::App => self.app.batch_execute(sql).await.map_err(be)?,
            }
        }
        Ok(Receipt::empty())
    }
    async fn revert(&self, _: Option<&Receipt>, _: &Context) -> Result<()> {
        Ok(()) // restore-only: the undo log undoes it
    }
}

const SCRIPT: &[(By, &str)] = &[
    // 1001: the application inserts, the run updates it.
    (By::App, "INSERT INTO acct VALUES (1001, 1, 'app')"),
    (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 1001"),
    // 2: the application sets v, the run changes v after it.
    (By::App, "UPDATE acct SET v = -5 WHERE id = 2"),
    (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 2"),
    // 3: the run changes v, the application another column.
    (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 3"),
    (By::App, "UPDATE acct SET note = 'app3' WHERE id = 3"),
    // 4: the application changes a row the run then deletes.
    (By::App, "UPDATE acct SET note = 'app4' WHERE id = 4"),
    (By::Run, "DELETE FROM acct WHERE id = 4"),
    // 5: the run changes a row the application then deletes.
    (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 5"),
    (By::App, "DELETE FROM acct WHERE id = 5"),
    // 10: the run changes v, the application sets it after.
    (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 10"),
    (By::App, "UPDATE acct SET v = 77 WHERE id = 10"),
    // No conflict: each side alone.
    (By::App, "UPDATE acct SET v = 66 WHERE id = 6"),
    (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 7"),
    (By::App, "INSERT INTO acct VALUES (1002, 2, 'app')"),
    (By::Run, "INSERT INTO acct VALUES (2001, 3, 'run')"),
    (By::Run, "DELETE FROM acct WHERE id = 8"),
    (By::App, "DELETE FROM acct WHERE id = 9"),
];

async fn run(label: &str, policy: ConflictPolicy) -> (TestDb, RunReport) {
    let db = TestDb::new(label).await;
    db.exec(
        "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text);
         INSERT INTO acct SELECT g, g, 'base' FROM generate_series(1, 12) g",
    )
    .await;
    let log = TableUndoLog::new(&db.db, Table::public("acct")).on_conflict(policy);
    let step = Interleaved {
        db: db.db.clone(),
        app: Arc::new(db.checker().await),
        resource: log.resource().to_string(),
        script: SCRIPT.to_vec(),
    };
    let plan = Plan::builder(label)
        .checkpoint("database", log)
        .step("database", step, &[])
        .verify_final(SqlAssertion::is_true(&db.db, "never", "SELECT false"))
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    (db, report)
}

async fn table(db: &TestDb) -> BTreeMap<i32, (i32, String)> {
    db.checker()
        .await
        .query("SELECT id, v, note FROM acct", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

fn expect(rows: &[(i32, i32, &str)]) -> BTreeMap<i32, (i32, String)> {
    rows.iter()
        .map(|(id, v, n)| (*id, (*v, n.to_string())))
        .collect()
}

#[tokio::test]
async fn keeping_the_application_undoes_the_run_around_every_conflict() {
    let (db, report) = run("sel_keep_app", ConflictPolicy::KeepApplication).await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(
        table(&db).await,
        expect(&[
            (1, 1, "base"),
            (2, -5, "base"), // the application's value, the run's +100 after it undone
            (3, 3, "app3"),  // the run's v undone, the application's note kept
            (4, 4, "app4"),  // deleted by the run after the application changed it: back
            (6, 66, "base"), // the application's alone
            (7, 7, "base"),  // the run's alone: undone
            (8, 8, "base"),  // deleted by the run: back
            (10, 77, "base"), // the application set v last
            (11, 11, "base"),
            (12, 12, "base"),
            (1001, 1, "app"), // inserted by the application, the run's +100 undone
            (1002, 2, "app"),
            // 5 and 9: deleted by the application; 2001: the run's insert, gone
        ]),
        "{md}"
    );
    let d = report.checkpoints[0].discarded_writes.clone().unwrap();
    assert_eq!(
        d.items, 0,
        "nothing of the application's is discarded: {d:?}"
    );
    assert!(d.exact);
    let mut conflicts = d.conflicts.clone();
    conflicts.sort();
    assert_eq!(conflicts.len(), 6, "{conflicts:#?}");
    for id in ["1001", "2", "3", "4", "5", "10"] {
        assert!(
            conflicts.iter().any(|c| c.contains(&format!("key ({id})"))),
            "{id} not listed: {conflicts:#?}"
        );
    }
}

#[tokio::test]
async fn keeping_the_baseline_puts_conflicting_rows_back_and_counts_them() {
    let (db, report) = run("sel_keep_base", ConflictPolicy::KeepBaseline).await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(
        table(&db).await,
        expect(&[
            (1, 1, "base"),
            (2, 2, "base"),
            (3, 3, "base"),
            (4, 4, "base"),
            (5, 5, "base"),
            (6, 66, "base"),
            (7, 7, "base"),
            (8, 8, "base"),
            (10, 10, "base"),
            (11, 11, "base"),
            (12, 12, "base"),
            (1002, 2, "app"),
        ]),
        "{md}"
    );
    let d = report.checkpoints[0].discarded_writes.clone().unwrap();
    assert_eq!(d.items, 6, "{d:?}");
    assert!(d.exact);
    assert_eq!(d.conflicts.len(), 6, "{:#?}", d.conflicts);
    assert_eq!(report.items_discarded, Some(6), "{md}");
}

#[tokio::test]
async fn refusing_conflicts_changes_nothing_and_names_them() {
    let (db, report) = run("sel_refuse", ConflictPolicy::Refuse).await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{md}");
    assert!(md.contains("policy: refuse"), "{md}");
    assert!(md.contains("key (1001)"), "{md}");
    // Nothing restored: the run's own change to 7 is still there.
    assert_eq!(table(&db).await.get(&7), Some(&(107, "base".to_string())));
}
