//! Adversarial checks of the undo log's selective restore (`TableUndoLog` inside a run):
//! key changes on either side, delete/re-insert, cascades between the tables of a set,
//! TRUNCATE, awkward column types and names, wide tables, spoofed writers, a
//! least-privilege role and a non-default isolation level. Every expectation is checked
//! with independent SQL on a superuser session (`TestDb::checker`).
//!
//! Each test here once found a defect (or pins a limit down); all are regression tests.

mod common;

use async_trait::async_trait;
use common::{TestDb, TestRole};
use rollback_core::journal::MemoryJournal;
use rollback_core::{
    Checkpoint, Context, Executor, Outcome, Plan, Receipt, Result, Reversibility, RunReport, Step,
};
use rollback_postgres::{
    mark_run_writes, ConflictPolicy, Database, SqlAssertion, Table, TableUndoLog,
};
use std::sync::Arc;
use std::time::Duration;

/// Who writes.
#[derive(Clone, Copy, Debug)]
enum By {
    /// The run: a transaction marked with `mark_run_writes`.
    Run,
    /// The application: its own connection, no mark.
    App,
    /// The application claiming to be the run (sets `rollback.writer` to the run id).
    AppAsRun,
}

/// A restore-only step that runs `script` in order: the run's statements in a
/// transaction marked as the run's, the application's on its own connection.
struct Interleaved {
    db: Database,
    app: Arc<tokio_postgres::Client>,
    resource: String,
    script: Vec<(By, String)>,
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
                By::AppAsRun => {
                    self.app
                        .execute(
                            "SELECT set_config('rollback.writer', $1, false)",
                            &[&ctx.run_id()],
                        )
                        .await
                        .map_err(be)?;
                    self.app.batch_execute(sql).await.map_err(be)?;
                    self.app
                        .batch_execute("RESET rollback.writer")
                        .await
                        .map_err(be)?;
                }
            }
        }
        Ok(Receipt::empty())
    }
    async fn revert(&self, _: Option<&Receipt>, _: &Context) -> Result<()> {
        Ok(()) // restore-only: the undo log undoes it
    }
}

fn script(s: &[(By, &str)]) -> Vec<(By, String)> {
    s.iter().map(|(b, q)| (*b, q.to_string())).collect()
}

/// Run `script` under `log` with a final check that always fails (so the run rolls back).
async fn run_with(db: &TestDb, label: &str, log: TableUndoLog, s: Vec<(By, String)>) -> RunReport {
    let step = Interleaved {
        db: db.db.clone(),
        app: Arc::new(db.checker().await),
        resource: log.resource().to_string(),
        script: s,
    };
    let plan = Plan::builder(label)
        .checkpoint("database", log)
        .step("database", step, &[])
        .verify_final(SqlAssertion::is_true(&db.db, "never", "SELECT false"))
        .build()
        .unwrap();
    Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap()
}

/// The first column of the first row, as text, on an independent superuser session.
async fn text(db: &TestDb, sql: &str) -> String {
    let c = db.checker().await;
    for m in c.simple_query(sql).await.expect(sql) {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("<null>").to_string();
        }
    }
    "<no row>".into()
}

const ACCT: &str = "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text);
     INSERT INTO acct SELECT g, g, 'base' FROM generate_series(1, 12) g";

/// `id:v:note` of every row, ordered by id.
const ACCT_ROWS: &str =
    "SELECT coalesce(string_agg(format('%s:%s:%s', id, v, note), ' ' ORDER BY id), '') FROM acct";

fn base_rows_except(skip: &[i32], extra: &[&str]) -> String {
    let mut v: Vec<(i32, String)> = (1..=12)
        .filter(|i| !skip.contains(i))
        .map(|i| (i, format!("{i}:{i}:base")))
        .collect();
    for e in extra {
        let id: i32 = e.split(':').next().unwrap().parse().unwrap();
        v.push((id, e.to_string()));
    }
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, s)| s).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------
// Primary-key changes
// ---------------------------------------------------------------------------------------

/// The run's change must not survive under the key the application moved the row to.
/// The log names rows by key, so who changed what in a row whose key the application
/// changed after the run wrote it cannot be told: the selective restore refuses, names
/// the row, and changes nothing (it used to keep the run's v+100 in row 100, parity
/// "proven").
#[tokio::test]
async fn app_moves_the_key_of_a_row_the_run_updated_is_refused_by_name() {
    let db = TestDb::new("adv_app_pk").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_app_pk",
        log,
        script(&[
            (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 1"),
            (By::App, "UPDATE acct SET id = 100 WHERE id = 1"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{md}");
    assert!(md.contains("changed key since capture"), "{md}");
    assert!(md.contains("key (1)"), "{md}");
    assert!(!report.parity_proven(), "{md}");
    // Nothing restored: the table is as the run and the application left it.
    assert_eq!(
        text(&db, ACCT_ROWS).await,
        base_rows_except(&[1], &["100:101:base"]),
        "{md}"
    );
}

/// KeepBaseline, the same moved row: the entity must never exist twice (it used to: row 1
/// put back, row 100 kept). Refused as above.
#[tokio::test]
async fn keep_baseline_app_moves_the_key_of_a_row_the_run_updated() {
    let db = TestDb::new("adv_app_pk_kb").await;
    db.exec(ACCT).await;
    let log =
        TableUndoLog::new(&db.db, Table::public("acct")).on_conflict(ConflictPolicy::KeepBaseline);
    let report = run_with(
        &db,
        "adv_app_pk_kb",
        log,
        script(&[
            (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 1"),
            (By::App, "UPDATE acct SET id = 100 WHERE id = 1"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    let rows = text(&db, ACCT_ROWS).await;
    assert_eq!(
        text(&db, "SELECT count(*) FROM acct WHERE v IN (1, 101)").await,
        "1",
        "rows: {rows}\n{md}"
    );
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{md}");
    assert!(md.contains("changed key since capture"), "{md}");
}

/// The run moves key 1 to 100 and the application then writes row 100: the entity must
/// not end up twice (it used to: row 1 put back, row 100 kept, parity "proven").
#[tokio::test]
async fn run_moves_a_key_and_the_app_updates_the_moved_row_no_duplicate_entity() {
    let db = TestDb::new("adv_run_pk").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_run_pk",
        log,
        script(&[
            (By::Run, "UPDATE acct SET id = 100 WHERE id = 1"),
            (By::App, "UPDATE acct SET note = 'app' WHERE id = 100"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    let rows = text(&db, ACCT_ROWS).await;
    // The entity (v = 1) exists exactly once, whichever key it ends up under.
    assert_eq!(
        text(&db, "SELECT count(*) FROM acct WHERE v = 1").await,
        "1",
        "rows: {rows}\n{md}"
    );
    assert_eq!(text(&db, "SELECT count(*) FROM acct").await, "12", "{rows}");
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{md}");
    assert!(md.contains("key (100)"), "{md}");
}

/// The same with a UNIQUE column: it used to fail on a duplicate key after six restores;
/// now it is refused at once, by name, with nothing changed.
#[tokio::test]
async fn run_moves_a_key_and_the_app_updates_it_with_a_unique_column_rolls_back() {
    let db = TestDb::new("adv_run_pk_u").await;
    db.exec(
        "CREATE TABLE acct (id int PRIMARY KEY, email text NOT NULL UNIQUE, note text);
         INSERT INTO acct SELECT g, 'u' || g || '@x', 'base' FROM generate_series(1, 12) g",
    )
    .await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_run_pk_u",
        log,
        script(&[
            (By::Run, "UPDATE acct SET id = 100 WHERE id = 1"),
            (By::App, "UPDATE acct SET note = 'app' WHERE id = 100"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{md}");
    assert!(md.contains("changed key since capture"), "{md}");
    assert!(!md.contains("duplicate key"), "{md}");
    assert_eq!(
        text(&db, "SELECT count(*) FROM acct WHERE email = 'u1@x'").await,
        "1"
    );
}

// Regression: the application moves a key, the run then updates the moved row: the run's
// change is undone on the row under its new key; the old key stays gone.
#[tokio::test]
async fn app_moves_a_key_then_the_run_updates_the_moved_row() {
    let db = TestDb::new("adv_app_pk2").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_app_pk2",
        log,
        script(&[
            (By::App, "UPDATE acct SET id = 100 WHERE id = 1"),
            (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 100"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(
        text(&db, ACCT_ROWS).await,
        base_rows_except(&[1], &["100:1:base"]),
        "{md}"
    );
}

/// A key swap under a DEFERRABLE primary key logged key 2's "new key" entry before its old
/// image, and the restore deleted row 2 (data loss). A deferrable key is now refused at
/// capture: the run stops before changing anything.
#[tokio::test]
async fn run_swaps_keys_under_a_deferrable_primary_key() {
    let db = TestDb::new("adv_swap").await;
    db.exec(
        "CREATE TABLE pos (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, label text NOT NULL);
         INSERT INTO pos VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    .await;
    let log = TableUndoLog::new(&db.db, Table::public("pos"));
    let report = run_with(
        &db,
        "adv_swap",
        log,
        script(&[(By::Run, "UPDATE pos SET id = 3 - id WHERE id IN (1, 2)")]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(
        text(
            &db,
            "SELECT string_agg(id || label, ' ' ORDER BY id) FROM pos"
        )
        .await,
        "1a 2b 3c",
        "{md}"
    );
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
}

/// The same swap outside a run: capture refuses the deferrable key.
#[tokio::test]
async fn full_restore_of_a_key_swap_under_a_deferrable_primary_key() {
    let db = TestDb::new("adv_swap_full").await;
    db.exec(
        "CREATE TABLE pos (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, label text NOT NULL);
         INSERT INTO pos VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    .await;
    let cp = TableUndoLog::new(&db.db, Table::public("pos"));
    let c = Context::detached();
    let err = cp.capture(&c).await.unwrap_err();
    assert!(
        matches!(&err, rollback_core::Error::Invalid { message } if message.contains("DEFERRABLE")),
        "{err}"
    );
    // Nothing left behind.
    assert_eq!(
        text(
            &db,
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'pos'::regclass AND NOT tgisinternal"
        )
        .await,
        "0"
    );
}

// ---------------------------------------------------------------------------------------
// Existence changes on either side
// ---------------------------------------------------------------------------------------

/// The run deletes and re-inserts row 3 with v changed, the application then changes
/// note: only the run changed v, so v goes back (it used to stay, parity "proven").
#[tokio::test]
async fn run_deletes_and_reinserts_a_row_the_app_then_updates() {
    let db = TestDb::new("adv_del_ins").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_del_ins",
        log,
        script(&[
            (
                By::Run,
                "DELETE FROM acct WHERE id = 3; INSERT INTO acct VALUES (3, 103, 'base')",
            ),
            (By::App, "UPDATE acct SET note = 'app3' WHERE id = 3"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert_eq!(
        text(
            &db,
            "SELECT format('%s:%s:%s', id, v, note) FROM acct WHERE id = 3"
        )
        .await,
        "3:3:app3",
        "{md}"
    );
}

// Regression: the run updates, the application deletes and re-inserts the key (and the
// reverse order, with the run's update last): the application's re-inserted row is kept
// as it inserted it.
#[tokio::test]
async fn app_deletes_and_reinserts_a_key_the_run_updated() {
    let db = TestDb::new("adv_app_reins").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_app_reins",
        log,
        script(&[
            // 5: run first, then the application deletes and re-inserts.
            (
                By::Run,
                "UPDATE acct SET v = v + 100, note = 'run' WHERE id = 5",
            ),
            (By::App, "DELETE FROM acct WHERE id = 5"),
            (By::App, "INSERT INTO acct VALUES (5, 55, 'again')"),
            // 6: the application deletes and re-inserts, then the run updates v.
            (By::App, "DELETE FROM acct WHERE id = 6"),
            (By::App, "INSERT INTO acct VALUES (6, 66, 'again')"),
            (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 6"),
            // 7: same, the application re-inserts the capture image exactly.
            (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 7"),
            (By::App, "DELETE FROM acct WHERE id = 7"),
            (By::App, "INSERT INTO acct VALUES (7, 7, 'base')"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(
        text(&db, ACCT_ROWS).await,
        base_rows_except(&[5, 6, 7], &["5:55:again", "6:66:again", "7:7:base"]),
        "{md}"
    );
}

// Regression: rows the run inserted that the application then updated (kept, listed as a
// conflict) or deleted (stay gone); a row the run inserted alone is removed.
#[tokio::test]
async fn run_inserts_rows_the_app_then_updates_or_deletes() {
    let db = TestDb::new("adv_run_ins").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_run_ins",
        log,
        script(&[
            (
                By::Run,
                "INSERT INTO acct VALUES (2001, 1, 'run'), (2002, 2, 'run'), (2003, 3, 'run')",
            ),
            (By::App, "UPDATE acct SET note = 'app' WHERE id = 2001"),
            (By::App, "DELETE FROM acct WHERE id = 2002"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(
        text(&db, ACCT_ROWS).await,
        base_rows_except(&[], &["2001:1:app"]),
        "{md}"
    );
    let d = report.checkpoints[0].discarded_writes.clone().unwrap();
    assert!(
        d.conflicts.iter().any(|c| c.contains("key (2001)")),
        "{d:?}"
    );
    assert!(
        d.conflicts.iter().any(|c| c.contains("key (2002)")),
        "{d:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Sets of tables with a foreign key
// ---------------------------------------------------------------------------------------

const PARENT_CHILD: &str = "CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
     CREATE TABLE child (id int PRIMARY KEY, pid int NOT NULL REFERENCES parent (id), qty int NOT NULL);
     INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 5) g;
     INSERT INTO child SELECT g, g, g FROM generate_series(1, 5) g";

const PC_ROWS: &str =
    "SELECT (SELECT string_agg(format('%s:%s', id, name), ' ' ORDER BY id) FROM parent) \
     || ' | ' || (SELECT string_agg(format('%s:%s:%s', id, pid, qty), ' ' ORDER BY id) FROM child)";

// Regression: conflicts on both tables of a set with a foreign key between them, and the
// run's inserted parent/child pair removed children first.
#[tokio::test]
async fn two_tables_with_a_foreign_key_and_conflicts_on_both() {
    let db = TestDb::new("adv_fk_both").await;
    db.exec(PARENT_CHILD).await;
    let log = TableUndoLog::of_tables(
        &db.db,
        vec![Table::public("parent"), Table::public("child")],
    );
    let report = run_with(
        &db,
        "adv_fk_both",
        log,
        script(&[
            (By::Run, "UPDATE parent SET name = 'run' WHERE id = 1"),
            (By::Run, "UPDATE child SET qty = qty + 100 WHERE id = 1"),
            (By::App, "UPDATE parent SET name = 'app' WHERE id = 1"),
            (By::App, "UPDATE child SET pid = 2 WHERE id = 1"),
            (
                By::Run,
                "INSERT INTO parent VALUES (100, 'runp'); INSERT INTO child VALUES (100, 100, 0)",
            ),
            (
                By::App,
                "INSERT INTO parent VALUES (200, 'appp'); INSERT INTO child VALUES (200, 200, 0)",
            ),
            (By::Run, "UPDATE child SET qty = 0 WHERE id = 3"),
            (By::App, "UPDATE parent SET name = 'app3' WHERE id = 3"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(
        text(&db, PC_ROWS).await,
        "1:app 2:p2 3:app3 4:p4 5:p5 200:appp | 1:2:1 2:2:2 3:3:3 4:4:4 5:5:5 200:200:0",
        "{md}"
    );
}

/// The run inserts parent 100, the application inserts child 50 under it (ON DELETE
/// CASCADE, both tables in the set). Deleting parent 100 used to cascade silently into the
/// application's child, with parity "proven"; now the restore checks that rows only
/// others wrote come out as they went in, and refuses.
#[tokio::test]
async fn restore_cascades_into_an_application_row_of_the_set() {
    let db = TestDb::new("adv_cascade").await;
    db.exec(
        "CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE child (id int PRIMARY KEY, pid int NOT NULL REFERENCES parent (id) ON DELETE CASCADE, qty int NOT NULL);
         INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 5) g;
         INSERT INTO child SELECT g, g, g FROM generate_series(1, 5) g",
    )
    .await;
    let log = TableUndoLog::of_tables(
        &db.db,
        vec![Table::public("parent"), Table::public("child")],
    );
    let report = run_with(
        &db,
        "adv_cascade",
        log,
        script(&[
            (By::Run, "INSERT INTO parent VALUES (100, 'runp')"),
            (By::App, "INSERT INTO child VALUES (50, 100, 7)"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    let kept = text(&db, "SELECT count(*) FROM child WHERE id = 50").await == "1";
    let discarded = report.checkpoints[0]
        .discarded_writes
        .as_ref()
        .map_or(0, |d| d.items);
    // The application's row survives: the restore refuses rather than take it, and says
    // why; nothing is claimed.
    assert!(kept, "child 50 gone, discarded={discarded}\n{md}");
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{md}");
    assert!(md.contains("only others wrote"), "{md}");
    assert!(!report.parity_proven(), "{md}");
}

// Regression-ish: same without a cascade: the restore cannot delete parent 100 and must not
// commit anything; the run ends RollbackFailed with the application's child intact.
#[tokio::test]
async fn restore_blocked_by_an_application_row_of_the_set_changes_nothing() {
    let db = TestDb::new("adv_fk_block").await;
    db.exec(PARENT_CHILD).await;
    let log = TableUndoLog::of_tables(
        &db.db,
        vec![Table::public("parent"), Table::public("child")],
    );
    let report = run_with(
        &db,
        "adv_fk_block",
        log,
        script(&[
            (By::Run, "UPDATE parent SET name = 'run' WHERE id = 2"),
            (By::Run, "INSERT INTO parent VALUES (100, 'runp')"),
            (By::App, "INSERT INTO child VALUES (50, 100, 7)"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_ne!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(!report.parity_proven(), "{md}");
    assert_eq!(
        text(&db, "SELECT count(*) FROM child WHERE id = 50").await,
        "1"
    );
    // Nothing restored (one transaction): the run's change to parent 2 is still there.
    assert_eq!(
        text(&db, "SELECT name FROM parent WHERE id = 2").await,
        "run"
    );
}

// ---------------------------------------------------------------------------------------
// TRUNCATE
// ---------------------------------------------------------------------------------------

// Regression: the application truncates the table during the run and inserts two rows:
// keeping the application's writes leaves exactly its two rows.
#[tokio::test]
async fn app_truncates_during_the_run() {
    let db = TestDb::new("adv_app_trunc").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_app_trunc",
        log,
        script(&[
            (By::Run, "UPDATE acct SET v = v + 100 WHERE id IN (1, 2)"),
            (By::Run, "INSERT INTO acct VALUES (2001, 3, 'run')"),
            (By::App, "TRUNCATE acct"),
            (
                By::App,
                "INSERT INTO acct VALUES (1, 1000, 'app'), (5, 5, 'app')",
            ),
            (By::Run, "UPDATE acct SET v = v + 1 WHERE id = 5"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(text(&db, ACCT_ROWS).await, "1:1000:app 5:5:app", "{md}");
}

// Regression: the run truncates, the application inserts and updates afterwards.
#[tokio::test]
async fn run_truncates_and_the_app_writes_after() {
    let db = TestDb::new("adv_run_trunc").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_run_trunc",
        log,
        script(&[
            (By::Run, "TRUNCATE acct"),
            (By::App, "INSERT INTO acct VALUES (1001, 1, 'app')"),
            (By::App, "INSERT INTO acct VALUES (4, 44, 'app')"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(
        text(&db, ACCT_ROWS).await,
        base_rows_except(&[4], &["4:44:app", "1001:1:app"]),
        "{md}"
    );
}

// ---------------------------------------------------------------------------------------
// Column types and names
// ---------------------------------------------------------------------------------------

// Regression: identity key, generated column, NULLs, arrays of varying length, jsonb,
// bytea; the run and the application change different columns of the same rows.
#[tokio::test]
async fn awkward_column_types_merge_column_by_column() {
    let db = TestDb::new("adv_types").await;
    db.exec(
        "CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int, b int,
            total int GENERATED ALWAYS AS (coalesce(a, 0) + coalesce(b, 0)) STORED,
            arr int[], doc jsonb, bin bytea, n text);
         INSERT INTO t (a, b, arr, doc, bin, n)
           SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE g END,
                  CASE WHEN g % 2 = 0 THEN NULL ELSE array_fill(g, ARRAY[g]) END,
                  jsonb_build_object('g', g, 'l', array_fill(g, ARRAY[g])),
                  CASE WHEN g = 4 THEN NULL ELSE decode(repeat('ab', g), 'hex') END,
                  CASE WHEN g % 4 = 0 THEN NULL ELSE 'n' || g END
           FROM generate_series(1, 8) g;
         CREATE TABLE base_copy AS SELECT * FROM t",
    )
    .await;
    let log = TableUndoLog::new(&db.db, Table::public("t"));
    let report = run_with(
        &db,
        "adv_types",
        log,
        script(&[
            (
                By::Run,
                "UPDATE t SET a = NULL, arr = coalesce(arr, '{}') || ARRAY[99, 98], \
                 doc = doc || '{\"run\": [1, 2, 3]}', bin = NULL WHERE id BETWEEN 1 AND 4",
            ),
            (
                By::App,
                "UPDATE t SET b = coalesce(b, 0) + 10, n = NULL WHERE id BETWEEN 3 AND 6",
            ),
            (
                By::App,
                "INSERT INTO t (a, b, arr, doc) VALUES (1, 2, '{}', '{}')",
            ),
            (By::Run, "INSERT INTO t (a, arr) VALUES (7, ARRAY[1])"),
            // The run changes a column the application changed: the application's value
            // must win (KeepApplication) even though the run wrote last.
            (By::Run, "UPDATE t SET n = 'run' WHERE id = 5"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    // Columns the run alone wrote are back at capture, byte for byte, for every row.
    assert_eq!(
        text(
            &db,
            "SELECT count(*) FROM t JOIN base_copy c USING (id) WHERE \
             t.a IS NOT DISTINCT FROM c.a AND t.arr IS NOT DISTINCT FROM c.arr \
             AND t.doc IS NOT DISTINCT FROM c.doc AND t.bin IS NOT DISTINCT FROM c.bin \
             AND t.total = coalesce(t.a, 0) + coalesce(t.b, 0)"
        )
        .await,
        "8",
        "{md}"
    );
    // The application's b and n on 3..6 are kept; 1, 2, 7, 8 as at capture.
    assert_eq!(
        text(
            &db,
            "SELECT string_agg(format('%s:%s:%s', id, coalesce(t.b::text, '-'), coalesce(t.n, '-')), ' ' ORDER BY id) FROM t"
        )
        .await,
        "1:1:n1 2:2:n2 3:10:- 4:14:- 5:15:- 6:10:- 7:7:n7 8:8:- 9:2:-",
        "{md}"
    );
}

/// A column named `mine` (an ordinary name) once clashed with a working column of the
/// classification (`st0.mine` ambiguous).
#[tokio::test]
async fn a_column_named_mine() {
    let db = TestDb::new("adv_mine").await;
    db.exec(
        "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, mine boolean NOT NULL DEFAULT false);
         INSERT INTO acct SELECT g, g, false FROM generate_series(1, 5) g",
    )
    .await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_mine",
        log,
        script(&[
            (
                By::Run,
                "UPDATE acct SET v = v + 100, mine = true WHERE id = 1",
            ),
            (By::App, "UPDATE acct SET v = 22 WHERE id = 2"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert_eq!(
        text(
            &db,
            "SELECT string_agg(format('%s:%s:%s', id, v, mine), ' ' ORDER BY id) FROM acct"
        )
        .await,
        "1:1:f 2:22:f 3:3:f 4:4:f 5:5:f"
    );
}

/// A table of 330 columns once failed every restore (the classification's working tables
/// hold about five columns per column, over PostgreSQL's limits). Wider than 300 columns,
/// a restore is now a full one.
#[tokio::test]
async fn a_wide_table() {
    let db = TestDb::new("adv_wide").await;
    db.exec(
        "DO $$ BEGIN EXECUTE (SELECT format('CREATE TABLE wide (id int PRIMARY KEY, %s)', \
           string_agg(format('c%s int', g), ', ')) FROM generate_series(1, 330) g); END $$;
         INSERT INTO wide (id, c1, c330) SELECT g, g, g FROM generate_series(1, 5) g",
    )
    .await;
    let log = TableUndoLog::new(&db.db, Table::public("wide"));
    let report = run_with(
        &db,
        "adv_wide",
        log,
        script(&[(By::Run, "UPDATE wide SET c1 = 100, c330 = 100 WHERE id = 1")]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert_eq!(
        report.checkpoints[0].restore_method.as_deref(),
        Some("undo-log"),
        "{md}"
    );
    assert_eq!(
        text(&db, "SELECT c1 || ',' || c330 FROM wide WHERE id = 1").await,
        "1,1"
    );
}

// Regression: quotes, spaces and non-ASCII in the table's and columns' names.
#[tokio::test]
async fn quoted_unicode_identifiers() {
    let db = TestDb::new("adv_idents").await;
    db.exec(
        r#"CREATE SCHEMA "Sch""émà";
           CREATE TABLE "Sch""émà"."Tä""ble ü" ("k ""ï""" int PRIMARY KEY, "v ö" int NOT NULL, "nö""te" text);
           INSERT INTO "Sch""émà"."Tä""ble ü" SELECT g, g, 'base' FROM generate_series(1, 6) g"#,
    )
    .await;
    let t = Table::new("Sch\"émà", "Tä\"ble ü");
    let log = TableUndoLog::new(&db.db, t);
    let report = run_with(
        &db,
        "adv_idents",
        log,
        script(&[
            (By::Run, r#"UPDATE "Sch""émà"."Tä""ble ü" SET "v ö" = "v ö" + 100 WHERE "k ""ï""" IN (1, 2)"#),
            (By::App, r#"UPDATE "Sch""émà"."Tä""ble ü" SET "nö""te" = 'app' WHERE "k ""ï""" IN (2, 3)"#),
            (By::App, r#"UPDATE "Sch""émà"."Tä""ble ü" SET "v ö" = 44 WHERE "k ""ï""" = 4"#),
            (By::Run, r#"UPDATE "Sch""émà"."Tä""ble ü" SET "v ö" = "v ö" + 100 WHERE "k ""ï""" = 4"#),
            (By::Run, r#"DELETE FROM "Sch""émà"."Tä""ble ü" WHERE "k ""ï""" = 6"#),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(
        text(
            &db,
            r#"SELECT string_agg(format('%s:%s:%s', "k ""ï""", "v ö", "nö""te"), ' ' ORDER BY "k ""ï""") FROM "Sch""émà"."Tä""ble ü""#
        )
        .await,
        "1:1:base 2:2:app 3:3:app 4:44:base 5:5:base 6:6:base",
        "{md}"
    );
}

// ---------------------------------------------------------------------------------------
// Trust: who claims to be the run
// ---------------------------------------------------------------------------------------

// Regression (documents a trust boundary, not a bug): an application session that sets
// `rollback.writer` to the run id has its writes undone as the run's, and nothing reports
// them as discarded.
#[tokio::test]
async fn an_application_claiming_the_run_id_is_undone_silently() {
    let db = TestDb::new("adv_spoof_run").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct"));
    let report = run_with(
        &db,
        "adv_spoof_run",
        log,
        script(&[
            (By::AppAsRun, "UPDATE acct SET v = 66 WHERE id = 6"),
            (By::App, "UPDATE acct SET v = 77 WHERE id = 7"),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert_eq!(
        text(&db, "SELECT v FROM acct WHERE id = 6").await,
        "6",
        "spoofed write undone"
    );
    assert_eq!(text(&db, "SELECT v FROM acct WHERE id = 7").await, "77");
    let d = report.checkpoints[0].discarded_writes.clone().unwrap();
    assert_eq!(d.items, 0, "{d:?}");
}

/// An application session that sets `rollback.writer` to what the restore's tag used to
/// be (readable from the trigger function's name) wrote past the log. The tag is now a
/// secret of the snapshot (the trigger holds its md5): the write is logged like any other
/// and a full restore undoes it.
#[tokio::test]
async fn an_application_claiming_the_restore_tag_escapes_the_log_but_not_the_proof() {
    let db = TestDb::new("adv_spoof_tag").await;
    db.exec(ACCT).await;
    let log = TableUndoLog::new(&db.db, Table::public("acct")).selective(false);
    let report = run_with(
        &db,
        "adv_spoof_tag",
        log,
        script(&[
            (By::Run, "UPDATE acct SET v = v + 100 WHERE id = 1"),
            (
                By::App,
                "SELECT set_config('rollback.writer', 'rollback:restore:' || \
                   regexp_replace(p.proname, '_[0-9]+$', ''), false) \
                 FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid \
                 WHERE g.tgrelid = 'acct'::regclass AND g.tgname LIKE '\\_rollback\\_undo\\_%' LIMIT 1; \
                 UPDATE acct SET v = 66 WHERE id = 6; RESET rollback.writer",
            ),
        ]),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert_eq!(text(&db, "SELECT v FROM acct WHERE id = 6").await, "6");
    // The trigger's source does not hold the tag.
    assert_eq!(
        text(
            &db,
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'undo\\_%' AND prosrc LIKE '%rollback:restore:_%'"
        )
        .await,
        "0"
    );
}

/// Columns named like the undo log's own (`_rollback_…`) are refused at capture with a
/// typed error, not misread by the restore.
#[tokio::test]
async fn a_column_with_the_reserved_prefix_is_refused_at_capture() {
    let db = TestDb::new("adv_reserved").await;
    db.exec("CREATE TABLE r (id int PRIMARY KEY, _rollback_after int)")
        .await;
    let err = TableUndoLog::new(&db.db, Table::public("r"))
        .capture(&Context::detached())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, rollback_core::Error::Invalid { message } if message.contains("_rollback_after")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Privileges and settings
// ---------------------------------------------------------------------------------------

/// A full restore (outside a run) needs no TEMP privilege (it used to classify every key
/// in temporary tables and fail with "permission denied to create temporary tables").
#[tokio::test]
async fn a_full_restore_needs_no_temp_privilege() {
    let app = TestRole::new("adv_notemp", "").await;
    let db = TestDb::new("adv_notemp").await;
    db.exec(&format!(
        r#"REVOKE TEMPORARY ON DATABASE "{d}" FROM PUBLIC;
           CREATE SCHEMA _rollback;
           GRANT USAGE, CREATE ON SCHEMA _rollback TO "{a}";
           CREATE SCHEMA shop AUTHORIZATION "{a}";
           SET ROLE "{a}";
           CREATE TABLE shop.acct (id int PRIMARY KEY, v int NOT NULL);
           INSERT INTO shop.acct SELECT g, g FROM generate_series(1, 10) g;
           RESET ROLE;"#,
        d = db.name,
        a = app.name
    ))
    .await;
    let as_app = Database::connect(&db.url_as(&app.name)).unwrap();
    let cp = TableUndoLog::new(&as_app, Table::new("shop", "acct"));
    let c = Context::detached();
    let snap = cp.capture(&c).await.unwrap();
    db.exec("UPDATE shop.acct SET v = v + 100 WHERE id < 4")
        .await;
    let r = cp.restore(&snap, &c).await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        text(&db, "SELECT sum(v) FROM shop.acct").await,
        "55",
        "{r:?}"
    );
    cp.discard(&snap, &c).await.unwrap();
}

/// With `default_transaction_isolation = 'repeatable read'` as the database's default, the
/// restore's snapshot used to be taken before `LOCK TABLE … EXCLUSIVE` was granted: a write
/// committed while it waited was not undone, erased from the log, and the proof matched
/// the baseline anyway. Sessions now pin READ COMMITTED.
#[tokio::test]
async fn a_write_committed_while_the_restore_waits_for_its_lock_repeatable_read() {
    let db = TestDb::with_settings(
        "adv_rr",
        &["default_transaction_isolation = 'repeatable read'"],
    )
    .await;
    let chk = db.checker().await;
    chk.batch_execute(ACCT).await.unwrap();
    let cp = TableUndoLog::new(&db.db, Table::public("acct"));
    let c = Context::detached();
    let snap = cp.capture(&c).await.unwrap();
    chk.batch_execute("UPDATE acct SET v = v + 100 WHERE id = 7")
        .await
        .unwrap();
    // A writer holds a row lock (and RowExclusive on the table) across the restore's start.
    let writer = db.checker().await;
    writer
        .batch_execute("BEGIN; UPDATE acct SET v = 66 WHERE id = 6")
        .await
        .unwrap();
    let cp2 = cp.clone();
    let snap2 = snap.clone();
    let restore = tokio::spawn(async move { cp2.restore(&snap2, &Context::detached()).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    writer.batch_execute("COMMIT").await.unwrap();
    let r = restore.await.unwrap();
    let now = cp.fingerprint(&c).await.unwrap();
    let rows = text(&db, ACCT_ROWS).await;
    let logged = cp.changes(&snap).await.map(|c| c[0].clone());
    let claims_parity = r
        .as_ref()
        .ok()
        .and_then(|h| h.proof.clone())
        .map(|p| p.fingerprint == snap.fingerprint);
    eprintln!(
        "restore proof equals the baseline: {claims_parity:?}; table equals it: {}; log after restore: {logged:?}",
        now == snap.fingerprint
    );
    match &r {
        // A restore that reports success must have undone every change since capture
        // (full restore) and its proof must match the table as it really is.
        Ok(how) => {
            let proof = how.proof.clone().map(|p| p.fingerprint);
            assert_eq!(
                proof,
                Some(now),
                "the proof does not describe the table as committed; rows: {rows}"
            );
            assert_eq!(rows, base_rows_except(&[], &[]), "restore said {how:?}");
        }
        // Failing (a transient serialization error, retried) is acceptable.
        Err(e) => assert!(
            rows.contains("7:107:base"),
            "a failed restore changed rows: {rows} ({e})"
        ),
    }
}
