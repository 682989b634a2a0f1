//! TableSnapshot's delta restore on the real server: only the key ranges that differ from
//! the snapshot are put back, each checked against its stored chunk digest; the copy is
//! never written, so the snapshot stays restorable.

mod common;

use common::TestDb;
use rollback_core::{Checkpoint, Context, Error};
use rollback_postgres::{RestoreMethod, Table, TableSnapshot};
use std::time::Duration;

fn ctx() -> Context {
    Context::standalone(&format!("t-{}", uuid::Uuid::new_v4()))
}

/// 50,000 rows: 13 key ranges of 4,096 rows at capture.
async fn items(db: &TestDb) {
    db.exec(
        "CREATE TABLE items (
            id bigserial PRIMARY KEY,
            sku text NOT NULL UNIQUE,
            qty int NOT NULL DEFAULT 0,
            note text
         );
         CREATE FUNCTION shout() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.note := upper(NEW.note); RETURN NEW; END $$;
         INSERT INTO items (sku, qty, note)
           SELECT 'sku-' || g, g % 100, 'note ' || g FROM generate_series(1, 50000) g;
         CREATE TRIGGER items_shout BEFORE INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION shout();
         ANALYZE items;",
    )
    .await;
}

/// Rows changed in three key ranges: updates around 100, a delete around 20,000, an
/// insert past the end (which also moves the sequence).
async fn change_a_few(db: &TestDb) {
    db.exec(
        "UPDATE items SET qty = qty + 1 WHERE id BETWEEN 100 AND 109;
         DELETE FROM items WHERE id IN (20000, 20001);
         INSERT INTO items (sku, note) VALUES ('late', 'late');",
    )
    .await;
}

async fn copy_of(db: &TestDb) -> String {
    db.scalar(
        "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = '_rollback_snapshots'",
    )
    .await
    .expect("a snapshot copy")
}

#[tokio::test]
async fn default_restore_puts_back_only_the_differing_ranges_and_pg_dump_matches() {
    let db = TestDb::new("delta").await;
    items(&db).await;
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    let copy = copy_of(&db).await;
    change_a_few(&db).await;
    assert_ne!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "delta", "{how:?}");
    // 10 updated back, 2 inserted back, 1 deleted: exactly the rows that differed.
    assert_eq!(how.items_changed, Some(13), "{how:?}");
    let discarded = how.discarded.clone().unwrap();
    assert_eq!((discarded.items, discarded.exact), (13, true), "{how:?}");
    let note = how.note.clone().unwrap_or_default();
    assert!(note.contains("3 of 13 key range(s)"), "{note}");
    // Within them, only the 512-row runs holding the changes were written and re-hashed.
    assert!(note.contains("put back 0 whole and 3 run(s)"), "{note}");
    // The proof the restore took under its lock is the baseline fingerprint, and true.
    assert_eq!(how.proof.as_ref().unwrap().fingerprint, snap.fingerprint);
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    common::assert_same_dump(&before, &db.dump(), "after the delta restore");
    // The sequence is back, and the trigger is enabled again.
    db.exec("INSERT INTO items (sku, note) VALUES ('after', 'after')")
        .await;
    assert_eq!(
        db.scalar("SELECT id::text || ' ' || note FROM items WHERE sku = 'after'")
            .await
            .as_deref(),
        Some("50001 AFTER")
    );
    // The copy was not written: the same table, still restorable, again by delta.
    assert_eq!(copy_of(&db).await, copy);
    change_a_few(&db).await;
    let again = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(again.method, "delta", "{again:?}");
    common::assert_same_dump(&before, &db.dump(), "after the second delta restore");
    // A table already at its snapshot: nothing written, still proven.
    let noop = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(
        (noop.method.as_str(), noop.items_changed),
        ("delta", Some(0))
    );
    assert_eq!(noop.proof.unwrap().fingerprint, snap.fingerprint);
    cp.discard(&snap, &c).await.unwrap();
}

#[tokio::test]
async fn delta_refuses_a_copy_tampered_in_a_range_it_uses_and_changes_nothing() {
    let db = TestDb::new("delta_tamper").await;
    items(&db).await;
    let cp = TableSnapshot::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    let copy = copy_of(&db).await;
    change_a_few(&db).await;
    let changed = cp.fingerprint(&c).await.unwrap();
    // Row 105 is in a range the restore must put back (rows 100–109 changed).
    db.exec(&format!(
        "UPDATE _rollback_snapshots.{copy} SET qty = -1 WHERE id = 105"
    ))
    .await;
    for method in [RestoreMethod::Auto, RestoreMethod::Delta] {
        let r = cp.clone().restore_method(method).restore(&snap, &c).await;
        assert!(
            matches!(r, Err(Error::DigestMismatch { .. })),
            "{method:?}: {r:?}"
        );
        assert_eq!(cp.fingerprint(&c).await.unwrap(), changed, "{method:?}");
    }
    // Put right, the copy restores.
    db.exec(&format!(
        "UPDATE _rollback_snapshots.{copy} SET qty = 5 WHERE id = 105"
    ))
    .await;
    assert_eq!(cp.restore(&snap, &c).await.unwrap().method, "delta");
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
}

#[tokio::test]
async fn a_copy_tampered_only_where_the_delta_does_not_read_is_refused_when_used() {
    let db = TestDb::new("delta_tamper_unused").await;
    items(&db).await;
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    let copy = copy_of(&db).await;
    // Row 45,000's range is unchanged in the table: the delta does not read it in the copy.
    db.exec(&format!(
        "UPDATE _rollback_snapshots.{copy} SET qty = -1 WHERE id = 45000"
    ))
    .await;
    change_a_few(&db).await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "delta", "{how:?}");
    common::assert_same_dump(&before, &db.dump(), "after restore");
    // Once the table differs there, the copy is read there and refused.
    db.exec("UPDATE items SET qty = 0 WHERE id = 45001").await;
    let r = cp.restore(&snap, &c).await;
    assert!(matches!(r, Err(Error::DigestMismatch { .. })), "{r:?}");
}

#[tokio::test]
async fn delta_keeps_rows_that_tables_outside_the_checkpoint_reference() {
    let db = TestDb::new("delta_fk").await;
    items(&db).await;
    db.exec(
        "CREATE TABLE orders (id serial PRIMARY KEY, item_id bigint NOT NULL REFERENCES items(id), n int);
         INSERT INTO orders (item_id, n) SELECT g * 10, g FROM generate_series(1, 4000) g;
         CREATE TABLE holds (item_id bigint REFERENCES items(id) ON DELETE CASCADE);",
    )
    .await;
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    // A swap is unsafe here (a foreign key references the table): before the delta, a
    // copy was refused and the whole table merged.
    db.exec(
        "UPDATE items SET note = 'changed' WHERE id BETWEEN 30000 AND 30100;
         INSERT INTO items (sku) VALUES ('added');",
    )
    .await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "delta", "{how:?}");
    assert_eq!(how.items_changed, Some(101 + 1), "{how:?}");
    common::assert_same_dump(&before, &db.dump(), "after restore");
    // A row added since and referenced from outside cannot be deleted: refused, unchanged.
    db.exec("INSERT INTO items (id, sku) VALUES (999999, 'x'); INSERT INTO orders (item_id) VALUES (999999);")
        .await;
    let refused = cp.restore(&snap, &c).await;
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM items WHERE id = 999999")
            .await,
        1
    );
    // Nor cascade into a table outside the checkpoint.
    db.exec("DELETE FROM orders WHERE item_id = 999999; INSERT INTO holds VALUES (999999);")
        .await;
    let refused = cp.restore(&snap, &c).await;
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );
    assert_eq!(db.count("SELECT count(*) FROM holds").await, 1);
}

#[tokio::test]
async fn a_definition_change_falls_back_to_the_whole_table_methods() {
    let db = TestDb::new("delta_ddl").await;
    items(&db).await;
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    change_a_few(&db).await;
    db.exec("ALTER TABLE items ADD COLUMN extra int").await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "swap", "{how:?}");
    let note = how.note.unwrap_or_default();
    assert!(
        note.contains("delta not applicable: the definition of public.items changed"),
        "{note}"
    );
    common::assert_same_dump(&before, &db.dump(), "after restore");
    // Asked for alone, the delta says why it cannot, and changes nothing.
    db.exec("ALTER TABLE items ADD COLUMN extra int").await;
    let changed = cp.fingerprint(&c).await.unwrap();
    let r = cp
        .clone()
        .restore_method(RestoreMethod::Delta)
        .restore(&snap, &c)
        .await;
    match r {
        Err(Error::Conflict { .. }) => {
            assert!(r.unwrap_err().to_string().contains("definition"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cp.fingerprint(&c).await.unwrap(), changed);
}

#[tokio::test]
async fn a_table_mostly_changed_is_swapped_not_merged() {
    let db = TestDb::new("delta_most").await;
    items(&db).await;
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("items"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec("UPDATE items SET qty = qty + 1 WHERE id % 2 = 0")
        .await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "swap", "{how:?}");
    assert!(how
        .note
        .unwrap_or_default()
        .contains("a whole-table method is cheaper"),);
    common::assert_same_dump(&before, &db.dump(), "after restore");
    // Asked for, the delta runs whatever share differs.
    db.exec("UPDATE items SET qty = qty + 1 WHERE id % 2 = 0")
        .await;
    let how = cp
        .clone()
        .restore_method(RestoreMethod::Delta)
        .restore(&snap, &c)
        .await
        .unwrap();
    assert_eq!(
        (how.method.as_str(), how.items_changed),
        ("delta", Some(25_000))
    );
    common::assert_same_dump(&before, &db.dump(), "after the delta");
}

#[tokio::test]
async fn a_table_without_a_key_is_not_restored_by_delta() {
    let db = TestDb::new("delta_nokey").await;
    db.exec("CREATE TABLE bag (x int, y text); INSERT INTO bag SELECT g, 'y' FROM generate_series(1, 100) g;")
        .await;
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("bag"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec("UPDATE bag SET y = 'z' WHERE x < 5").await;
    let r = cp
        .clone()
        .restore_method(RestoreMethod::Delta)
        .restore(&snap, &c)
        .await;
    assert!(matches!(r, Err(Error::Conflict { .. })), "{r:?}");
    assert_eq!(cp.restore(&snap, &c).await.unwrap().method, "swap");
    common::assert_same_dump(&before, &db.dump(), "after restore");
}

#[tokio::test]
async fn writers_wait_for_the_delta_and_a_write_queued_behind_it_is_kept() {
    let db = TestDb::new("delta_writers").await;
    items(&db).await;
    let cp =
        TableSnapshot::new(&db.db, Table::public("items")).lock_timeout(Duration::from_secs(30));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    change_a_few(&db).await;
    // A writer in the middle of a transaction: the restore waits for it.
    let early = db.checker().await;
    early
        .batch_execute("BEGIN; UPDATE items SET note = 'early' WHERE id = 5")
        .await
        .unwrap();
    let waiting = || async {
        db.count(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'public.items'::regclass",
        )
        .await
    };
    let restore = tokio::spawn({
        let (cp, snap, c) = (cp.clone(), snap.clone(), c.clone());
        async move { cp.restore(&snap, &c).await }
    });
    while waiting().await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A writer that comes after the restore queued: it waits behind the restore.
    let late = db.checker().await;
    let late_write = tokio::spawn(async move {
        late.batch_execute("UPDATE items SET note = 'late' WHERE id = 6")
            .await
    });
    while waiting().await < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    early.batch_execute("COMMIT").await.unwrap();
    let how = restore.await.unwrap().unwrap();
    late_write.await.unwrap().unwrap();
    assert_eq!(how.method, "delta", "{how:?}");
    // The proof was taken under the lock, before the late write.
    assert_eq!(how.proof.unwrap().fingerprint, snap.fingerprint);
    // The early write (committed before the restore ran) is discarded with the others;
    // the late one is kept.
    assert_eq!(
        db.scalar("SELECT note FROM items WHERE id = 5")
            .await
            .as_deref(),
        Some("note 5")
    );
    assert_eq!(
        db.scalar("SELECT note FROM items WHERE id = 6")
            .await
            .as_deref(),
        Some("LATE")
    );
    db.exec(
        "SET session_replication_role = replica; UPDATE items SET note = 'note 6' WHERE id = 6; \
         RESET session_replication_role",
    )
    .await;
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
}

#[tokio::test]
async fn a_table_set_is_restored_by_delta_parents_and_children_in_order() {
    let db = TestDb::new("delta_set").await;
    items(&db).await;
    db.exec(
        "CREATE TABLE lines (id serial PRIMARY KEY, item_id bigint NOT NULL REFERENCES items(id) ON DELETE CASCADE, n int);
         INSERT INTO lines (item_id, n) SELECT g, g FROM generate_series(1, 5000) g;",
    )
    .await;
    let before = db.dump();
    let cp = TableSnapshot::of_tables(&db.db, vec![Table::public("lines"), Table::public("items")]);
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    // Parent rows deleted (their lines go with them), children changed, a child added.
    db.exec(
        "DELETE FROM items WHERE id BETWEEN 10 AND 19;
         UPDATE lines SET n = 0 WHERE id > 4990;
         INSERT INTO lines (item_id, n) VALUES (30, 1);",
    )
    .await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "delta", "{how:?}");
    // 10 items and their 10 lines inserted back, 10 lines updated, 1 line deleted.
    assert_eq!(how.items_changed, Some(31), "{how:?}");
    assert_eq!(how.proof.unwrap().fingerprint, snap.fingerprint);
    common::assert_same_dump(&before, &db.dump(), "after restore");
}

/// Within a differing range the delta puts back only the runs that differ from the copy —
/// bounded by keys of any orderable type (here text) — and a row inserted or deleted
/// mid-range shifts the runs after it, which are then put back to the range's end.
#[tokio::test]
async fn delta_puts_back_the_differing_runs_of_a_text_key() {
    let db = TestDb::new("delta_runs").await;
    db.exec(
        "CREATE TABLE codes (code text COLLATE \"C\" PRIMARY KEY, v int NOT NULL);
         INSERT INTO codes SELECT 'k' || lpad(g::text, 6, '0'), g FROM generate_series(1, 20000) g;
         ANALYZE codes;",
    )
    .await;
    let content = "SELECT md5(string_agg(c::text, ',' ORDER BY code)) FROM codes c";
    let before = db.scalar(content).await;
    let cp = TableSnapshot::new(&db.db, Table::public("codes"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    // Range 1 of 5 (4,096 rows each): an insert in its second run shifts the rest of it;
    // range 3: one update; range 4: a delete in its sixth run.
    let changes = "INSERT INTO codes VALUES ('k001000x', 0);
         UPDATE codes SET v = -1 WHERE code = 'k010000';
         DELETE FROM codes WHERE code = 'k015000';";
    for round in ["first", "second"] {
        db.exec(changes).await;
        let how = cp.restore(&snap, &c).await.unwrap();
        assert_eq!(how.method, "delta", "{round}: {how:?}");
        assert_eq!(how.items_changed, Some(3), "{round}: {how:?}");
        let note = how.note.clone().unwrap_or_default();
        assert!(
            note.contains("3 of 5 key range(s)") && note.contains("put back 0 whole and 11 run(s)"),
            "{round}: {note}"
        );
        assert_eq!(how.proof.unwrap().fingerprint, snap.fingerprint, "{round}");
        assert_eq!(db.scalar(content).await, before, "{round}");
        assert_eq!(
            cp.fingerprint(&c).await.unwrap(),
            snap.fingerprint,
            "{round}"
        );
    }
    cp.discard(&snap, &c).await.unwrap();
}
