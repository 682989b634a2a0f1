//! The core conformance suite, run against the real PostgreSQL for every checkpoint and
//! step of this crate.

mod common;

use common::TestDb;
use rollback_core::conformance::Subject;
use rollback_core::journal::{Journal, MemoryJournal};
use rollback_postgres::{PgJournal, RestoreMethod, SqlStep, Table, TableSnapshot};
use std::sync::Arc;

async fn items(db: &TestDb) {
    db.exec(
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, qty int DEFAULT 0 CHECK (qty >= 0));
         CREATE INDEX items_name ON items (name);
         INSERT INTO items (name, qty) SELECT 'item ' || g, g FROM generate_series(1, 500) g;
         CREATE TABLE other (id int PRIMARY KEY, v text);
         INSERT INTO other VALUES (1, 'x');",
    )
    .await;
}

async fn run_suite(db: &TestDb, method: RestoreMethod, step: SqlStep) {
    run_suite_with(db, method, step, Arc::new(MemoryJournal::new())).await
}

async fn run_suite_with(
    db: &TestDb,
    method: RestoreMethod,
    step: SqlStep,
    journal: Arc<dyn Journal>,
) {
    let cp = TableSnapshot::new(&db.db, Table::public("items")).restore_method(method);
    let other = TableSnapshot::new(&db.db, Table::public("other"));
    // Step contract 2: the step names what it changes (its parity is checked by it).
    let step = step.touching(rollback_core::Checkpoint::resource(&cp));
    rollback_core::conformance::run_all(Subject {
        checkpoint: Arc::new(cp),
        other_checkpoint: Arc::new(other),
        step: Arc::new(step),
        journal,
    })
    .await;
}

#[tokio::test]
async fn table_snapshot_with_swap_and_compensable_sql_step_pass_the_suite_with_the_pg_journal() {
    let db = TestDb::new("conf_swap").await;
    items(&db).await;
    let step = SqlStep::new(
        &db.db,
        "bump-qty",
        "UPDATE items SET qty = qty + 1 WHERE id <= 50",
    )
    .down("UPDATE items SET qty = qty - 1 WHERE id <= 50");
    run_suite_with(
        &db,
        RestoreMethod::Auto,
        step,
        Arc::new(PgJournal::new(&db.db)),
    )
    .await;
}

#[tokio::test]
async fn table_snapshot_with_copy_and_schema_changing_step_pass_the_suite() {
    let db = TestDb::new("conf_copy").await;
    items(&db).await;
    let step = SqlStep::new(
        &db.db,
        "add-note",
        "ALTER TABLE items ADD COLUMN note text; UPDATE items SET note = 'n' || id",
    )
    .down("ALTER TABLE items DROP COLUMN IF EXISTS note");
    run_suite(&db, RestoreMethod::Copy, step).await;
}

#[tokio::test]
async fn table_snapshot_with_merge_and_restore_only_step_pass_the_suite() {
    let db = TestDb::new("conf_merge").await;
    items(&db).await;
    let cp = TableSnapshot::new(&db.db, Table::public("items"));
    let step = SqlStep::new(&db.db, "purge", "DELETE FROM items WHERE id % 3 = 0")
        .touching(rollback_core::Checkpoint::resource(&cp));
    assert_eq!(
        rollback_core::Step::reversibility(&step),
        rollback_core::Reversibility::RestoreOnly
    );
    run_suite(&db, RestoreMethod::Merge, step).await;
}

#[tokio::test]
async fn table_snapshot_and_non_transactional_index_step_pass_the_suite() {
    let db = TestDb::new("conf_cic").await;
    items(&db).await;
    let step = SqlStep::new(
        &db.db,
        "index-qty",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS items_qty ON items (qty)",
    )
    .down("DROP INDEX CONCURRENTLY IF EXISTS items_qty");
    assert_eq!(step.mode(), rollback_postgres::TxMode::NonTransactional);
    run_suite(&db, RestoreMethod::Auto, step).await;
}
