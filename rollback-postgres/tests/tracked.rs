//! TableUndoLog: the conformance suite, restores checked by pg_dump, refusals, the
//! O(changes) diff, the executor, and writers racing the capture.

mod common;

use common::TestDb;
use rollback_core::conformance::Subject;
use rollback_core::journal::MemoryJournal;
use rollback_core::{Checkpoint, Context, Error, Executor, Outcome, Plan};
use rollback_postgres::{
    PgJournal, SqlStep, Table, TableSnapshot, TableUndoLog, UndoLogParity, UNDO_LOG_KIND,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn ctx() -> Context {
    Context::standalone(&format!("t-{}", uuid::Uuid::new_v4()))
}

async fn items(db: &TestDb) {
    db.exec(
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, qty int DEFAULT 0 CHECK (qty >= 0),
                             price numeric, seen timestamptz, doc jsonb, half float8);
         CREATE INDEX items_name ON items (name);
         INSERT INTO items (name, qty, price, seen, doc, half)
           SELECT 'item ' || g, g, g / 3.0, '2024-01-01'::timestamptz + g * interval '1 min',
                  jsonb_build_object('g', g), g / 7.0
           FROM generate_series(1, 500) g;
         CREATE TABLE other (id int PRIMARY KEY, v text);
         INSERT INTO other VALUES (1, 'x');",
    )
    .await;
}

/// Rows of `table` ordered by key, as text: an independent check of content.
async fn rows(db: &TestDb, table: &str) -> String {
    let c = db.db.client().await.unwrap();
    let r = c
        .query_one(
            &format!("SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t), '') FROM {table} t"),
            &[],
        )
        .await
        .unwrap();
    r.get(0)
}

async fn undo_objects(db: &TestDb) -> i64 {
    db.count(
        "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE '\\_rollback\\_undo\\_%') \
              + (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = '_rollback' AND c.relname LIKE 'undo\\_%' AND c.relkind = 'r') \
              + (SELECT count(*) FROM pg_proc WHERE proname LIKE 'undo\\_%')",
    )
    .await
}

#[tokio::test]
async fn undo_log_and_compensable_step_pass_the_suite_with_the_pg_journal() {
    let db = TestDb::new("undo_conf").await;
    items(&db).await;
    let step = SqlStep::new(
        &db.db,
        "bump-qty",
        "UPDATE items SET qty = qty + 1 WHERE id <= 50",
    )
    .down("UPDATE items SET qty = qty - 1 WHERE id <= 50")
    .touches_table(&Table::public("items"));
    rollback_core::conformance::run_all(Subject {
        checkpoint: Arc::new(TableUndoLog::new(&db.db, Table::public("items"))),
        other_checkpoint: Arc::new(TableUndoLog::new(&db.db, Table::public("other"))),
        step: Arc::new(step),
        journal: Arc::new(PgJournal::new(&db.db)),
    })
    .await;
    assert_eq!(undo_objects(&db).await, 0, "every snapshot was discarded");
}

#[tokio::test]
async fn undo_log_and_restore_only_step_pass_the_suite() {
    let db = TestDb::new("undo_conf_ro").await;
    items(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("items"));
    let step = SqlStep::new(
        &db.db,
        "purge",
        "DELETE FROM items WHERE id % 3 = 0; INSERT INTO items (name) VALUES ('added')",
    )
    .touching(cp.resource());
    rollback_core::conformance::run_all(Subject {
        checkpoint: Arc::new(cp),
        other_checkpoint: Arc::new(TableUndoLog::new(&db.db, Table::public("other"))),
        step: Arc::new(step),
        journal: Arc::new(MemoryJournal::new()),
    })
    .await;
}

#[tokio::test]
async fn fingerprint_equals_the_table_snapshots_before_and_while_the_log_is_live() {
    let db = TestDb::new("undo_fp").await;
    items(&db).await;
    let c = ctx();
    let t = Table::public("items");
    let copy = TableSnapshot::new(&db.db, t.clone());
    let undo = TableUndoLog::new(&db.db, t.clone()).fingerprint_parallelism(1);
    let before = copy.fingerprint(&c).await.unwrap();
    assert_eq!(undo.fingerprint(&c).await.unwrap(), before);
    let snap = undo.capture(&c).await.unwrap();
    assert_eq!(snap.kind, UNDO_LOG_KIND);
    assert_eq!(snap.fingerprint, before, "same digest as TableSnapshot's");
    assert_eq!(undo.fingerprint(&c).await.unwrap(), before);
    db.exec("UPDATE items SET qty = qty + 1 WHERE id = 7").await;
    assert_ne!(undo.fingerprint(&c).await.unwrap(), before);
    undo.discard(&snap, &c).await.unwrap();
    assert_eq!(
        copy.fingerprint(&c).await.unwrap(),
        undo.fingerprint(&c).await.unwrap()
    );
}

#[tokio::test]
async fn restore_undoes_inserts_updates_deletes_key_changes_and_truncate_and_pg_dump_matches() {
    let db = TestDb::new("undo_dump").await;
    items(&db).await;
    let before = db.dump();
    let before_rows = rows(&db, "items").await;
    let cp = TableUndoLog::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec(
        "UPDATE items SET qty = qty + 1, doc = doc || '{\"x\": 1}' WHERE id % 10 = 0;
         UPDATE items SET qty = qty + 5 WHERE id % 10 = 0;
         DELETE FROM items WHERE id % 97 = 0;
         INSERT INTO items (name) VALUES ('new 1'), ('new 2');
         UPDATE items SET id = 10000 WHERE id = 3;
         DELETE FROM items WHERE id = 4; UPDATE items SET id = 4 WHERE id = 5;",
    )
    .await;
    assert_ne!(rows(&db, "items").await, before_rows);
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "undo-log");
    assert!(how.items_changed.unwrap() >= 50, "{how:?}");
    assert_eq!(rows(&db, "items").await, before_rows);
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    // Restoring again changes nothing.
    assert_eq!(cp.restore(&snap, &c).await.unwrap().items_changed, Some(0));
    // The log keeps working after a restore: truncate, then restore again.
    db.exec("TRUNCATE items; INSERT INTO items (name) VALUES ('after truncate')")
        .await;
    assert_eq!(db.count("SELECT count(*) FROM items").await, 1);
    cp.restore(&snap, &c).await.unwrap();
    assert_eq!(rows(&db, "items").await, before_rows);
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    cp.discard(&snap, &c).await.unwrap();
    cp.discard(&snap, &c).await.unwrap();
    assert_eq!(undo_objects(&db).await, 0);
    // Sequence values are part of the dump: nextval gives what it gave before.
    common::assert_same_dump(&before, &db.dump(), "after restore and discard");
    match cp.restore(&snap, &c).await {
        Err(Error::Invalid { .. }) => {}
        other => panic!("restore of a discarded undo log: {other:?}"),
    }
}

#[tokio::test]
async fn quoted_mixed_case_and_unicode_identifiers_work() {
    let db = TestDb::new("undo_idents").await;
    db.exec(
        "CREATE SCHEMA \"Sales Data\";
         CREATE TABLE \"Sales Data\".\"Öffnungs\"\"zeiten\" (\"Key Col\" int PRIMARY KEY, \"Wert ü\" text, \"MiXeD\" int);
         INSERT INTO \"Sales Data\".\"Öffnungs\"\"zeiten\" SELECT g, 'w' || g, g FROM generate_series(1, 50) g;",
    )
    .await;
    let t = Table::new("Sales Data", "Öffnungs\"zeiten");
    let q = t.quoted();
    let before = rows(&db, &q).await;
    let cp = TableUndoLog::new(&db.db, t.clone());
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec(&format!(
        "UPDATE {q} SET \"Wert ü\" = 'changed' WHERE \"Key Col\" < 5; DELETE FROM {q} WHERE \"Key Col\" = 9; \
         INSERT INTO {q} VALUES (100, 'neu', 1)"
    ))
    .await;
    let changes = cp.changes(&snap).await.unwrap();
    assert_eq!(changes[0].changed, vec!["1", "2", "3", "4"]);
    assert_eq!(changes[0].removed, vec!["9"]);
    assert_eq!(changes[0].added, vec!["100"]);
    cp.restore(&snap, &c).await.unwrap();
    assert_eq!(rows(&db, &q).await, before);
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    cp.discard(&snap, &c).await.unwrap();
    assert_eq!(undo_objects(&db).await, 0);
}

#[tokio::test]
async fn restore_refuses_a_tampered_descriptor_and_changes_nothing() {
    let db = TestDb::new("undo_tamper").await;
    items(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec("DELETE FROM items WHERE id <= 10").await;
    let changed = rows(&db, "items").await;
    // Point the snapshot at an MVCC snapshot that sees every change (so nothing is undone).
    let mut bad = snap.clone();
    bad.descriptor["mvcc_snapshot"] = serde_json::json!("1:1:");
    match cp.restore(&bad, &c).await {
        Err(Error::DigestMismatch { .. }) => {}
        other => panic!("tampered descriptor not refused: {other:?}"),
    }
    let mut bad = snap.clone();
    bad.descriptor["tables"][0]["key"] = serde_json::json!(["name"]);
    assert!(matches!(
        cp.restore(&bad, &c).await,
        Err(Error::DigestMismatch { .. })
    ));
    assert!(matches!(
        cp.changes(&bad).await,
        Err(Error::DigestMismatch { .. })
    ));
    assert_eq!(rows(&db, "items").await, changed, "refusal changed nothing");
    // Another resource's snapshot is refused too.
    let other = TableUndoLog::new(&db.db, Table::public("other"));
    let other_snap = other.capture(&c).await.unwrap();
    assert!(matches!(
        cp.restore(&other_snap, &c).await,
        Err(Error::WrongResource { .. })
    ));
    other.discard(&other_snap, &c).await.unwrap();
    cp.restore(&snap, &c).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM items").await, 500);
    cp.discard(&snap, &c).await.unwrap();
}

#[tokio::test]
async fn restore_refuses_a_disabled_trigger_because_changes_may_have_escaped() {
    let db = TestDb::new("undo_disabled").await;
    items(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec("ALTER TABLE items DISABLE TRIGGER ALL; DELETE FROM items WHERE id = 1")
        .await;
    match cp.restore(&snap, &c).await {
        Err(Error::Conflict { message }) => assert!(message.contains("escaped"), "{message}"),
        other => panic!("restore with a disabled trigger: {other:?}"),
    }
    db.exec("ALTER TABLE items ENABLE TRIGGER ALL").await;
    cp.discard(&snap, &c).await.unwrap();
}

#[tokio::test]
async fn restore_works_after_a_column_was_added_and_dropped_and_refuses_a_changed_definition() {
    let db = TestDb::new("undo_ddl").await;
    items(&db).await;
    let before = rows(&db, "items").await;
    let cp = TableUndoLog::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec(
        "ALTER TABLE items ADD COLUMN note text; UPDATE items SET note = 'n' || id, qty = qty + 1 WHERE id < 20;
         INSERT INTO items (name, note) VALUES ('with note', 'x');",
    )
    .await;
    match cp.restore(&snap, &c).await {
        Err(Error::Conflict { message }) => assert!(message.contains("note"), "{message}"),
        other => panic!("restore with an extra column: {other:?}"),
    }
    db.exec("ALTER TABLE items DROP COLUMN note").await;
    cp.restore(&snap, &c).await.unwrap();
    assert_eq!(rows(&db, "items").await, before);
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    cp.discard(&snap, &c).await.unwrap();

    // The last column dropped and re-added: same model, values gone: refused.
    let snap = cp.capture(&c).await.unwrap();
    db.exec("ALTER TABLE items DROP COLUMN half; ALTER TABLE items ADD COLUMN half float8")
        .await;
    match cp.restore(&snap, &c).await {
        Err(Error::Conflict { message }) => {
            assert!(message.contains("dropped and re-created"), "{message}")
        }
        other => panic!("restore after a column was re-created: {other:?}"),
    }
    cp.discard(&snap, &c).await.unwrap();
}

#[tokio::test]
async fn changes_name_exactly_the_changed_keys_and_ignore_a_row_changed_back() {
    let db = TestDb::new("undo_diff").await;
    items(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    let none = cp.changes(&snap).await.unwrap();
    assert!(none[0].is_empty() && none[0].log_entries == 0, "{none:?}");
    db.exec(
        "UPDATE items SET qty = qty + 1 WHERE id IN (10, 20, 30);
         UPDATE items SET name = 'tmp' WHERE id = 40; UPDATE items SET name = 'item 40' WHERE id = 40;
         DELETE FROM items WHERE id IN (50, 60);
         INSERT INTO items (id, name) VALUES (1001, 'a'), (1002, 'b');
         INSERT INTO items (id, name) VALUES (1003, 'gone'); DELETE FROM items WHERE id = 1003;
         UPDATE items SET id = 2000 WHERE id = 70;",
    )
    .await;
    let d = &cp.changes(&snap).await.unwrap()[0];
    assert_eq!(d.changed, vec!["10", "20", "30"]);
    assert_eq!(d.removed, vec!["50", "60", "70"]);
    assert_eq!(d.added, vec!["1001", "1002", "2000"]);
    assert_eq!(d.log_entries, 3 + 2 + 2 + 2 + 2 + 2);
    // The verifier gives the same keys from the run's baseline.
    let vc = Context::standalone("diff-verifier").with_baseline([snap.clone()]);
    let v = rollback_core::Verifier::verify(&UndoLogParity::new(&cp), &vc)
        .await
        .unwrap();
    assert!(!v.passed(), "{v:?}");
    let ev = v.evidence.clone();
    assert_eq!(
        ev["tables"][0]["changed"],
        serde_json::json!(["10", "20", "30"])
    );
    cp.restore(&snap, &c).await.unwrap();
    assert!(cp.changes(&snap).await.unwrap()[0].is_empty());
    assert!(
        rollback_core::Verifier::verify(&UndoLogParity::new(&cp), &vc)
            .await
            .unwrap()
            .passed()
    );
    cp.discard(&snap, &c).await.unwrap();
}

#[tokio::test]
async fn a_set_with_a_foreign_key_restores_parents_and_children_in_order() {
    let db = TestDb::new("undo_fk").await;
    db.exec(
        "CREATE TABLE parent (id int PRIMARY KEY, v text);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent ON DELETE CASCADE, w text);
         INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 20) g;
         INSERT INTO child SELECT g, 1 + g % 20, 'c' || g FROM generate_series(1, 100) g;",
    )
    .await;
    let (p0, c0) = (rows(&db, "parent").await, rows(&db, "child").await);
    let cp = TableUndoLog::of_tables(
        &db.db,
        vec![Table::public("parent"), Table::public("child")],
    );
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec(
        "DELETE FROM parent WHERE id <= 5;
         INSERT INTO parent VALUES (100, 'new'); INSERT INTO child VALUES (1000, 100, 'new child');
         UPDATE child SET parent_id = 100 WHERE id BETWEEN 50 AND 55;",
    )
    .await;
    cp.restore(&snap, &c).await.unwrap();
    assert_eq!(rows(&db, "parent").await, p0);
    assert_eq!(rows(&db, "child").await, c0);
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    cp.discard(&snap, &c).await.unwrap();
}

#[tokio::test]
async fn two_live_undo_logs_each_restore_their_own_capture() {
    let db = TestDb::new("undo_two").await;
    items(&db).await;
    let r0 = rows(&db, "items").await;
    let cp = TableUndoLog::new(&db.db, Table::public("items"));
    let c = ctx();
    let a = cp.capture(&c).await.unwrap();
    db.exec("UPDATE items SET qty = 0 WHERE id < 100").await;
    let r1 = rows(&db, "items").await;
    let b = cp.capture(&c).await.unwrap();
    db.exec("DELETE FROM items WHERE id > 400").await;
    cp.restore(&b, &c).await.unwrap();
    assert_eq!(rows(&db, "items").await, r1);
    // A's log saw both the change and B's restore.
    cp.restore(&a, &c).await.unwrap();
    assert_eq!(rows(&db, "items").await, r0);
    // And B's log saw A's restore.
    cp.restore(&b, &c).await.unwrap();
    assert_eq!(rows(&db, "items").await, r1);
    cp.discard(&a, &c).await.unwrap();
    cp.discard(&b, &c).await.unwrap();
    assert_eq!(undo_objects(&db).await, 0);
}

#[tokio::test]
async fn a_failing_plan_rolls_back_through_the_undo_log() {
    let db = TestDb::new("undo_exec").await;
    items(&db).await;
    let before = db.dump();
    let t = Table::public("items");
    let cp = TableUndoLog::new(&db.db, t.clone());
    let plan = Plan::builder("undo-rollback")
        .checkpoint("db", cp.clone())
        .step(
            "db",
            SqlStep::new(
                &db.db,
                "purge",
                "DELETE FROM items WHERE qty % 2 = 0; UPDATE items SET name = upper(name)",
            )
            .touching(cp.resource()),
            &[],
        )
        .step(
            "db",
            SqlStep::new(&db.db, "boom", "SELECT 1/0").down("SELECT 1"),
            &["purge"],
        )
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven(), "{}", report.to_markdown());
    let cpr = &report.checkpoints[0];
    // Inside a run the restore is selective: only the run's own writes are undone.
    assert_eq!(cpr.restore_method.as_deref(), Some("undo-log (selective)"));
    assert_eq!(cpr.restored_items, Some(500));
    if cpr.discarded == Some(true) {
        assert_eq!(undo_objects(&db).await, 0);
    }
    common::assert_same_dump(&before, &db.dump(), "after rollback through the undo log");
}

#[tokio::test]
async fn a_final_check_names_the_changed_rows_and_the_run_rolls_back() {
    let db = TestDb::new("undo_verify").await;
    items(&db).await;
    let before = db.dump();
    let cp = TableUndoLog::new(&db.db, Table::public("items"));
    let plan = Plan::builder("undo-verify")
        .checkpoint("db", cp.clone())
        .step(
            "db",
            SqlStep::new(
                &db.db,
                "bump",
                "UPDATE items SET qty = qty + 1 WHERE id IN (3, 4)",
            )
            .down("UPDATE items SET qty = qty - 1 WHERE id IN (3, 4)"),
            &[],
        )
        .verify_final(UndoLogParity::new(&cp))
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    let v = report
        .verdicts
        .iter()
        .find(|v| v.verifier.starts_with("undo-log:"))
        .expect("verdict");
    assert_eq!(
        v.verdict.evidence["tables"][0]["changed"],
        serde_json::json!(["3", "4"])
    );
    common::assert_same_dump(&before, &db.dump(), "after rollback");
}

#[tokio::test]
async fn writers_racing_the_capture_neither_escape_the_log_nor_get_undone_twice() {
    let db = TestDb::new("undo_race").await;
    db.exec(
        "CREATE TABLE acc (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO acc SELECT g, 0 FROM generate_series(1, 100000) g;",
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (stop, writes, pool) = (stop.clone(), writes.clone(), db.db.clone());
        writers.push(tokio::spawn(async move {
            let c = pool.client().await.unwrap();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 2;
                let id = (i * 7919 % 100_000 + 1) as i32;
                c.batch_execute(&format!(
                    "BEGIN; UPDATE acc SET v = v + 1 WHERE id = {id}; \
                     INSERT INTO acc VALUES ({}, 1) ON CONFLICT DO NOTHING; COMMIT",
                    200_000 + i
                ))
                .await
                .unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let cp = TableUndoLog::new(&db.db, Table::public("acc"));
    let c = ctx();
    let mut snaps = Vec::new();
    for _ in 0..3 {
        snaps.push(cp.capture(&c).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(writes.load(Ordering::Relaxed) > 20, "the writers ran");
    for snap in snaps.iter().rev() {
        cp.restore(snap, &c).await.unwrap();
        assert_eq!(
            cp.fingerprint(&c).await.unwrap(),
            snap.fingerprint,
            "restore gave back exactly the state the fingerprint saw"
        );
    }
    for snap in &snaps {
        cp.discard(snap, &c).await.unwrap();
    }
}

#[tokio::test]
async fn restore_refuses_to_cascade_into_rows_outside_the_checkpoint() {
    let db = TestDb::new("undo_cascade").await;
    db.exec(
        "CREATE TABLE parent (id int PRIMARY KEY, v text);
         CREATE TABLE outside (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE CASCADE);
         INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 10) g;",
    )
    .await;
    let cp = TableUndoLog::new(&db.db, Table::public("parent"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec("INSERT INTO parent VALUES (11, 'new'); INSERT INTO outside VALUES (1, 11)")
        .await;
    match cp.restore(&snap, &c).await {
        Err(Error::Conflict { message }) => assert!(message.contains("outside"), "{message}"),
        other => panic!("restore cascading outside the set: {other:?}"),
    }
    assert_eq!(db.count("SELECT count(*) FROM outside").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM parent").await, 11);
    // Once the outside row is gone, the restore goes through.
    db.exec("DELETE FROM outside").await;
    cp.restore(&snap, &c).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM parent").await, 10);
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    cp.discard(&snap, &c).await.unwrap();
}
