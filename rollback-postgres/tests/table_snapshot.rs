//! TableSnapshot: capture, refusal, and each restore method on the real server.

mod common;

use common::TestDb;
use rollback_core::{Checkpoint, Context, Error};
use rollback_postgres::{RestoreMethod, Table, TableSnapshot};

fn ctx() -> Context {
    Context::standalone(&format!("t-{}", uuid::Uuid::new_v4()))
}

async fn customers(db: &TestDb) {
    db.exec(
        "CREATE TABLE customers (
            id bigserial PRIMARY KEY,
            email text NOT NULL UNIQUE,
            name text,
            balance numeric(12,2) DEFAULT 0 CHECK (balance >= 0),
            tags jsonb,
            created_at timestamptz NOT NULL DEFAULT '2024-01-01T00:00:00Z'
         );
         CREATE INDEX customers_name_idx ON customers (lower(name));
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.name := NEW.name || '!'; RETURN NEW; END $$;
         CREATE TRIGGER customers_touch BEFORE INSERT OR UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch();
         ALTER TABLE customers DISABLE TRIGGER customers_touch;
         INSERT INTO customers (email, name, balance, tags)
           SELECT 'c' || g || '@example.com', 'Name ' || g, g, jsonb_build_object('g', g) FROM generate_series(1, 2000) g;
         ALTER TABLE customers ENABLE TRIGGER customers_touch;
         ALTER TABLE customers SET (fillfactor = 90);",
    )
    .await;
}

async fn mutate(db: &TestDb) {
    db.exec(
        "UPDATE customers SET balance = balance + 1 WHERE id % 10 = 0;
         DELETE FROM customers WHERE id % 97 = 0;
         INSERT INTO customers (email, name) VALUES ('new@example.com', 'New');
         ALTER TABLE customers ADD COLUMN first_name text;
         CREATE INDEX customers_first ON customers (first_name);",
    )
    .await;
}

#[tokio::test]
async fn restore_swaps_a_table_nothing_depends_on_and_pg_dump_matches() {
    let db = TestDb::new("swap").await;
    customers(&db).await;
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("customers"));
    let c = ctx();
    let fp = cp.fingerprint(&c).await.unwrap();
    let snap = cp.capture(&c).await.unwrap();
    assert_eq!(
        cp.fingerprint(&c).await.unwrap(),
        fp,
        "capture is read-only"
    );
    assert_eq!(snap.fingerprint, fp);
    mutate(&db).await;
    assert_ne!(cp.fingerprint(&c).await.unwrap(), fp);
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "swap", "{how:?}");
    assert_eq!(cp.fingerprint(&c).await.unwrap(), fp);
    common::assert_same_dump(&before, &db.dump(), "after restore");
    // The trigger came back enabled and works.
    db.exec("INSERT INTO customers (email, name) VALUES ('t@example.com', 'T')")
        .await;
    assert_eq!(
        db.scalar("SELECT name FROM customers WHERE email = 't@example.com'")
            .await
            .as_deref(),
        Some("T!")
    );
    // The snapshot survives the swap: change the table again and restore again.
    mutate(&db).await;
    assert_eq!(cp.restore(&snap, &c).await.unwrap().method, "swap");
    common::assert_same_dump(&before, &db.dump(), "second swap");
    cp.discard(&snap, &c).await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM pg_tables WHERE schemaname = '_rollback_snapshots'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_swap_that_consumes_its_copy_makes_a_second_restore_a_noop_or_a_clear_refusal() {
    let db = TestDb::new("swap_noop").await;
    customers(&db).await;
    let cp = TableSnapshot::new(&db.db, Table::public("customers")).keep_snapshot_after_swap(false);
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    mutate(&db).await;
    assert_eq!(cp.restore(&snap, &c).await.unwrap().method, "swap");
    let again = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(again.method, "noop");
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    mutate(&db).await;
    let refused = cp.restore(&snap, &c).await;
    assert!(matches!(refused, Err(Error::Invalid { .. })), "{refused:?}");
}

#[tokio::test]
async fn restore_falls_back_to_copy_when_a_view_depends_on_the_table() {
    let db = TestDb::new("view").await;
    customers(&db).await;
    db.exec("CREATE VIEW rich AS SELECT id, email FROM customers WHERE balance > 1000")
        .await;
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("customers"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    mutate(&db).await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "copy", "{how:?}");
    assert!(
        how.note.as_deref().unwrap_or("").contains("view"),
        "{how:?}"
    );
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    common::assert_same_dump(&before, &db.dump(), "after restore");
    // The copy is still there: restoring again works and changes nothing (the table is
    // at its snapshot, so the delta finds no range to write).
    let again = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(
        (again.method.as_str(), again.items_changed),
        ("delta", Some(0))
    );
    common::assert_same_dump(&before, &db.dump(), "after restore");
    cp.discard(&snap, &c).await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM pg_tables WHERE schemaname = '_rollback_snapshots'")
            .await,
        0
    );
}

#[tokio::test]
async fn restore_merges_a_table_referenced_from_outside_the_checkpoint() {
    let db = TestDb::new("merge").await;
    customers(&db).await;
    db.exec(
        "CREATE TABLE orders (id serial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id), total int);
         INSERT INTO orders (customer_id, total) SELECT g, g FROM generate_series(1, 50) g;",
    )
    .await;
    let before = db.dump();
    // Auto would restore these few rows by delta (tests/table_snapshot_delta.rs).
    let cp =
        TableSnapshot::new(&db.db, Table::public("customers")).restore_method(RestoreMethod::Merge);
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec(
        "UPDATE customers SET name = 'changed' WHERE id < 100;
         DELETE FROM customers WHERE id BETWEEN 1500 AND 1510;
         INSERT INTO customers (email) VALUES ('added@example.com');",
    )
    .await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "merge", "{how:?}");
    assert_eq!(how.items_changed, Some(99 + 11 + 1), "{how:?}");
    common::assert_same_dump(&before, &db.dump(), "after restore");
    // A row referenced from outside cannot be deleted by the restore: refused, unchanged.
    db.exec("INSERT INTO customers (id, email) VALUES (999999, 'x@example.com'); INSERT INTO orders (customer_id) VALUES (999999);")
        .await;
    let refused = cp.restore(&snap, &c).await;
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM customers WHERE id = 999999")
            .await,
        1
    );
}

#[tokio::test]
async fn restore_of_a_table_set_truncates_and_copies_parent_and_child_together() {
    let db = TestDb::new("set").await;
    customers(&db).await;
    db.exec(
        "CREATE TABLE orders (id serial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id) ON DELETE CASCADE, total int);
         INSERT INTO orders (customer_id, total) SELECT g, g FROM generate_series(1, 500) g;",
    )
    .await;
    let before = db.dump();
    // Auto would restore by delta (the definitions are unchanged).
    let cp = TableSnapshot::of_tables(
        &db.db,
        vec![Table::public("orders"), Table::public("customers")],
    )
    .restore_method(RestoreMethod::Copy);
    assert!(cp.resource().contains("public.customers+public.orders"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec("DELETE FROM customers WHERE id <= 100; UPDATE orders SET total = 0;")
        .await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "copy", "{how:?}");
    common::assert_same_dump(&before, &db.dump(), "after restore");
}

#[tokio::test]
async fn restore_refuses_a_tampered_snapshot_copy_and_changes_nothing() {
    let db = TestDb::new("tamper").await;
    customers(&db).await;
    let cp = TableSnapshot::new(&db.db, Table::public("customers"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    mutate(&db).await;
    let changed = cp.fingerprint(&c).await.unwrap();
    let copy = db
        .scalar(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = '_rollback_snapshots'",
        )
        .await
        .unwrap();
    db.exec(&format!(
        "UPDATE _rollback_snapshots.{copy} SET balance = 0 WHERE id = 7"
    ))
    .await;
    let r = cp.restore(&snap, &c).await;
    assert!(matches!(r, Err(Error::DigestMismatch { .. })), "{r:?}");
    assert_eq!(cp.fingerprint(&c).await.unwrap(), changed);
    db.exec(&format!(
        "UPDATE _rollback_snapshots.{copy} SET balance = 7 WHERE id = 7"
    ))
    .await;
    db.exec(&format!(
        "ALTER TABLE _rollback_snapshots.{copy} ADD COLUMN sneaky int"
    ))
    .await;
    let r = cp.restore(&snap, &c).await;
    assert!(
        matches!(r, Err(Error::DigestMismatch { .. })),
        "altered definition: {r:?}"
    );
    db.exec(&format!(
        "ALTER TABLE _rollback_snapshots.{copy} DROP COLUMN sneaky"
    ))
    .await;
    // Untampered again: restores.
    cp.restore(&snap, &c).await.unwrap();
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
}

#[tokio::test]
async fn restore_refuses_snapshot_of_another_table() {
    let db = TestDb::new("other").await;
    customers(&db).await;
    db.exec("CREATE TABLE other (id int PRIMARY KEY)").await;
    let a = TableSnapshot::new(&db.db, Table::public("customers"));
    let b = TableSnapshot::new(&db.db, Table::public("other"));
    let c = ctx();
    let snap = b.capture(&c).await.unwrap();
    let r = a.restore(&snap, &c).await;
    assert!(matches!(r, Err(Error::WrongResource { .. })), "{r:?}");
}

#[tokio::test]
async fn restore_brings_back_a_dropped_table_with_its_sequence() {
    let db = TestDb::new("dropped").await;
    customers(&db).await;
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("customers"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec("DROP TABLE customers").await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "swap");
    common::assert_same_dump(&before, &db.dump(), "after restore");
    db.exec("INSERT INTO customers (email) VALUES ('after@example.com')")
        .await;
    assert_eq!(
        db.count("SELECT id FROM customers WHERE email = 'after@example.com'")
            .await,
        2001
    );
}

#[tokio::test]
async fn restore_puts_back_sequence_values_and_drops_a_table_created_since() {
    let db = TestDb::new("seq").await;
    customers(&db).await;
    let cp = TableSnapshot::of_tables(
        &db.db,
        vec![Table::public("customers"), Table::public("later")],
    )
    .restore_method(RestoreMethod::Copy);
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec(
        "SELECT nextval('customers_id_seq') FROM generate_series(1, 10);
         CREATE TABLE later (x int);",
    )
    .await;
    assert_ne!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    cp.restore(&snap, &c).await.unwrap();
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    assert_eq!(db.count("SELECT nextval('customers_id_seq')").await, 2001);
    assert_eq!(
        db.count("SELECT count(*) FROM pg_tables WHERE tablename = 'later'")
            .await,
        0
    );
}

#[tokio::test]
async fn copy_restore_undoes_column_and_index_changes() {
    let db = TestDb::new("copy_ddl").await;
    customers(&db).await;
    db.exec("CREATE VIEW v AS SELECT id FROM customers").await; // forbids the swap
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("customers"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec(
        "ALTER TABLE customers ADD COLUMN extra int NOT NULL DEFAULT 1;
         ALTER TABLE customers ALTER COLUMN name TYPE varchar(200);
         ALTER TABLE customers ALTER COLUMN balance DROP DEFAULT;
         DROP INDEX customers_name_idx;
         ALTER TABLE customers DROP CONSTRAINT customers_balance_check;
         ALTER TABLE customers ADD CONSTRAINT positive_id CHECK (id > 0);
         ALTER TABLE customers DISABLE TRIGGER customers_touch;
         ALTER TABLE customers RESET (fillfactor);
         UPDATE customers SET name = NULL;",
    )
    .await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "copy", "{how:?}");
    common::assert_same_dump(&before, &db.dump(), "after restore");
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
}

#[tokio::test]
async fn quoted_mixed_case_and_unicode_identifiers_work() {
    let db = TestDb::new("idents").await;
    db.exec(
        r#"CREATE SCHEMA "My ""Odd"" Schema";
           CREATE TABLE "My ""Odd"" Schema"."Tåble With Spaces" ("Mixed Case" int PRIMARY KEY, "naïve ""q""" text, "select" int);
           INSERT INTO "My ""Odd"" Schema"."Tåble With Spaces" SELECT g, 'v' || g, g FROM generate_series(1, 300) g;"#,
    )
    .await;
    let t = Table::new("My \"Odd\" Schema", "Tåble With Spaces");
    let before = db.dump();
    for method in [
        RestoreMethod::Swap,
        RestoreMethod::Copy,
        RestoreMethod::Merge,
    ] {
        let cp = TableSnapshot::new(&db.db, t.clone()).restore_method(method);
        let c = ctx();
        let snap = cp.capture(&c).await.unwrap();
        db.exec(r#"UPDATE "My ""Odd"" Schema"."Tåble With Spaces" SET "naïve ""q""" = 'x' WHERE "Mixed Case" < 10;
                   DELETE FROM "My ""Odd"" Schema"."Tåble With Spaces" WHERE "Mixed Case" > 290;"#)
            .await;
        let how = cp.restore(&snap, &c).await.unwrap();
        assert_eq!(how.method, format!("{method:?}").to_lowercase());
        common::assert_same_dump(&before, &db.dump(), "after restore");
        cp.discard(&snap, &c).await.unwrap();
    }
}

#[tokio::test]
async fn a_parallel_fingerprint_equals_the_single_pass_one_and_still_sees_every_change() {
    let db = TestDb::new("parallel_fp").await;
    db.exec(
        "CREATE TABLE big (region text COLLATE \"C\", id int, payload text, PRIMARY KEY (region, id));
         INSERT INTO big SELECT 'r' || (g % 3), g, md5(g::text) FROM generate_series(1, 250000) g;
         ANALYZE big;",
    )
    .await;
    let c = ctx();
    let one = TableSnapshot::new(&db.db, Table::public("big")).fingerprint_parallelism(1);
    for sessions in [2, 3, 4] {
        let par =
            TableSnapshot::new(&db.db, Table::public("big")).fingerprint_parallelism(sessions);
        assert_eq!(
            par.fingerprint(&c).await.unwrap(),
            one.fingerprint(&c).await.unwrap(),
            "{sessions} sessions"
        );
    }
    let par = TableSnapshot::new(&db.db, Table::public("big")).fingerprint_parallelism(3);
    let before = par.fingerprint(&c).await.unwrap();
    // The capture's digest is computed in one pass: parity with it is exact.
    let snap = par.capture(&c).await.unwrap();
    assert_eq!(snap.fingerprint, before);
    db.exec("UPDATE big SET payload = 'x' WHERE region = 'r2' AND id = 200000")
        .await;
    let after = par.fingerprint(&c).await.unwrap();
    assert_ne!(after, before);
    assert_eq!(after, one.fingerprint(&c).await.unwrap());
}

/// Index definitions of `rel` with the index and table names blanked, and comments.
async fn index_shapes(db: &TestDb, rel: &str) -> Vec<String> {
    let mut out = Vec::new();
    let q = format!(
        "SELECT regexp_replace(pg_get_indexdef(i.indexrelid), ' INDEX .*? ON .*? USING ', ' INDEX ON t USING ') \
                || coalesce(' / ' || k.contype::text || ' ' || pg_get_constraintdef(k.oid), '') \
                || coalesce(' # ' || obj_description(i.indexrelid, 'pg_class'), '') \
                || coalesce(' ## ' || obj_description(k.oid, 'pg_constraint'), '') \
         FROM pg_index i LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid \
         WHERE i.indrelid = '{rel}'::regclass ORDER BY 1"
    );
    let n = db.count(&format!("SELECT count(*) FROM ({q}) x")).await;
    for i in 0..n {
        out.push(
            db.scalar(&format!("{q} OFFSET {i} LIMIT 1"))
                .await
                .unwrap_or_default(),
        );
    }
    out
}

#[tokio::test]
async fn capture_builds_the_copys_indexes_after_loading_it_and_hashes_what_it_copied() {
    let db = TestDb::new("bulk_capture").await;
    db.exec(
        "CREATE TABLE \"Big Orders\" (
            id bigint PRIMARY KEY,
            ref text NOT NULL,
            during tsrange,
            amount numeric(12,2),
            note text,
            CONSTRAINT \"ref unique\" UNIQUE (ref) DEFERRABLE INITIALLY DEFERRED,
            CONSTRAINT no_overlap EXCLUDE USING gist (during WITH &&)
         );
         CREATE INDEX big_amount_partial ON \"Big Orders\" (lower(note)) INCLUDE (amount) WHERE amount > 10;
         COMMENT ON INDEX big_amount_partial IS 'partial';
         INSERT INTO \"Big Orders\"
           SELECT g, 'ref-' || g, tsrange('2024-01-01'::timestamp + g * interval '1 minute',
                                          '2024-01-01'::timestamp + (g + 1) * interval '1 minute'),
                  g % 100, md5(g::text)
           FROM generate_series(1, 30000) g;",
    )
    .await;
    assert!(
        db.count("SELECT pg_relation_size('\"Big Orders\"')").await >= 1 << 20,
        "the table is big enough to be hashed while it is copied"
    );
    let before = db.dump();
    // A swap re-hashes the whole copy (a delta reads only the ranges it uses).
    let cp =
        TableSnapshot::new(&db.db, Table::public("Big Orders")).restore_method(RestoreMethod::Swap);
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    assert_eq!(snap.fingerprint, cp.fingerprint(&c).await.unwrap());
    let copy = db
        .scalar(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables \
             WHERE schemaname = '_rollback_snapshots'",
        )
        .await
        .unwrap();
    // The copy carries the indexes and constraints LIKE … INCLUDING ALL would give it.
    db.exec("CREATE TABLE like_ref (LIKE \"Big Orders\" INCLUDING ALL EXCLUDING DEFAULTS EXCLUDING IDENTITY)")
        .await;
    let shapes = index_shapes(&db, &copy).await;
    assert_eq!(shapes.len(), 4, "{shapes:?}");
    assert_eq!(shapes, index_shapes(&db, "like_ref").await);
    db.exec("DROP TABLE like_ref").await;
    // Restore (which re-hashes the copy) accepts the digest hashed from the source.
    db.exec("UPDATE \"Big Orders\" SET note = 'changed' WHERE id % 1000 = 0; DELETE FROM \"Big Orders\" WHERE id > 29990")
        .await;
    let how = cp.restore(&snap, &c).await.unwrap();
    assert_eq!(how.method, "swap", "{how:?}");
    common::assert_same_dump(&before, &db.dump(), "after restore");
    assert_eq!(cp.fingerprint(&c).await.unwrap(), snap.fingerprint);
    // And still refuses a copy changed since.
    db.exec(&format!("UPDATE {copy} SET amount = 0 WHERE id = 12345"))
        .await;
    let r = cp.restore(&snap, &c).await;
    assert!(matches!(r, Err(Error::DigestMismatch { .. })), "{r:?}");
    db.exec(&format!("UPDATE {copy} SET amount = 45 WHERE id = 12345"))
        .await;
    db.exec("UPDATE \"Big Orders\" SET note = 'again' WHERE id = 5")
        .await;
    cp.restore(&snap, &c).await.unwrap();
    common::assert_same_dump(&before, &db.dump(), "after a second restore");
}

#[tokio::test]
async fn capture_of_a_big_table_with_a_generated_column_restores() {
    let db = TestDb::new("bulk_generated").await;
    db.exec(
        "CREATE TABLE g (id int PRIMARY KEY, a int NOT NULL, twice int GENERATED ALWAYS AS (a * 2) STORED, pad text);
         INSERT INTO g (id, a, pad) SELECT x, x % 77, repeat('p', 40) FROM generate_series(1, 20000) x;",
    )
    .await;
    assert!(db.count("SELECT pg_relation_size('g')").await >= 1 << 20);
    let before = db.dump();
    let cp = TableSnapshot::new(&db.db, Table::public("g"));
    let c = ctx();
    let snap = cp.capture(&c).await.unwrap();
    db.exec("UPDATE g SET a = a + 1 WHERE id < 100").await;
    // The delta writes the generated column's inputs only.
    assert_eq!(cp.restore(&snap, &c).await.unwrap().method, "delta");
    common::assert_same_dump(&before, &db.dump(), "after restore");
}

#[tokio::test]
async fn a_parallel_fingerprint_does_not_depend_on_where_the_key_range_is_split() {
    let db = TestDb::new("parallel_splits").await;
    db.exec(
        "CREATE TABLE dense (id int PRIMARY KEY, v text);
         INSERT INTO dense SELECT g, md5(g::text) FROM generate_series(1, 240000) g;
         CREATE TABLE gaps (id bigint PRIMARY KEY, v text);
         INSERT INTO gaps SELECT g * 3 + (g % 7), md5(g::text) FROM generate_series(1, 230000) g;
         CREATE TABLE words (w text COLLATE \"C\" PRIMARY KEY, n int);
         INSERT INTO words SELECT md5(g::text), g FROM generate_series(1, 210000) g;
         ANALYZE dense; ANALYZE gaps; ANALYZE words;",
    )
    .await;
    let c = ctx();
    let check = |name: &'static str| {
        let db = &db;
        let c = &c;
        async move {
            let one = TableSnapshot::new(&db.db, Table::public(name))
                .fingerprint_parallelism(1)
                .fingerprint(c)
                .await
                .unwrap();
            for sessions in [2, 3] {
                let par = TableSnapshot::new(&db.db, Table::public(name))
                    .fingerprint_parallelism(sessions)
                    .fingerprint(c)
                    .await
                    .unwrap();
                assert_eq!(par, one, "{name}, {sessions} sessions");
            }
            one
        }
    };
    // Dense integer keys (ranks from the key range), keys with gaps (ranks counted), text
    // keys (histogram bounds).
    check("dense").await;
    check("gaps").await;
    check("words").await;
    // A key range that looks dense to stale statistics but is not: ranks are wrong, the
    // parts are hashed again, the digest is unchanged.
    db.exec("DELETE FROM dense WHERE id BETWEEN 1000 AND 1100")
        .await;
    let before = check("dense").await;
    let snap = TableSnapshot::new(&db.db, Table::public("dense"))
        .capture(&c)
        .await
        .unwrap();
    assert_eq!(snap.fingerprint, before);
    // A swap re-hashes the big copy in two parts and refuses it when rows were changed,
    // removed or added (the parts then hold other row counts than at capture).
    let cp = TableSnapshot::new(&db.db, Table::public("dense")).restore_method(RestoreMethod::Swap);
    let copy = db
        .scalar(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables \
             WHERE schemaname = '_rollback_snapshots'",
        )
        .await
        .unwrap();
    for (tamper, undo) in [
        (
            format!("UPDATE {copy} SET v = 'x' WHERE id = 200000"),
            format!("UPDATE {copy} SET v = md5('200000') WHERE id = 200000"),
        ),
        (
            format!("DELETE FROM {copy} WHERE id = 7"),
            format!("INSERT INTO {copy} VALUES (7, md5('7'))"),
        ),
        (
            format!("INSERT INTO {copy} VALUES (1050, 'new')"),
            format!("DELETE FROM {copy} WHERE id = 1050"),
        ),
    ] {
        db.exec(&tamper).await;
        let r = cp.restore(&snap, &c).await;
        assert!(
            matches!(r, Err(Error::DigestMismatch { .. })),
            "{tamper}: {r:?}"
        );
        db.exec(&undo).await;
    }
    db.exec("UPDATE dense SET v = 'changed' WHERE id % 1000 = 1")
        .await;
    assert_eq!(cp.restore(&snap, &c).await.unwrap().method, "swap");
    assert_eq!(cp.fingerprint(&c).await.unwrap(), before);
    db.exec("UPDATE words SET n = -1 WHERE w = (SELECT max(w) FROM words)")
        .await;
    let one = TableSnapshot::new(&db.db, Table::public("words")).fingerprint_parallelism(1);
    let par = TableSnapshot::new(&db.db, Table::public("words")).fingerprint_parallelism(2);
    assert_eq!(
        par.fingerprint(&c).await.unwrap(),
        one.fingerprint(&c).await.unwrap()
    );
}
