//! Verifiers on the real server: counts, table hashes down to the differing rows, orphans,
//! schema, SQL.

mod common;

use common::TestDb;
use rollback_core::{Checkpoint, Context, Status, Verifier};
use rollback_postgres::{
    ForeignKeyIntegrity, RowCountParity, SchemaMatches, SchemaSnapshot, SqlAssertion, Table,
    TableHashParity, TableSnapshot,
};
use std::collections::BTreeSet;

async fn events(db: &TestDb) {
    db.exec(
        "CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL, payload jsonb, at timestamptz DEFAULT '2024-01-01');
         INSERT INTO events SELECT g, 'k' || (g % 7), jsonb_build_object('n', g) FROM generate_series(1, 50000) g;
         ANALYZE events;",
    )
    .await;
}

#[tokio::test]
async fn row_count_parity_passes_at_baseline_and_fails_after_deletes() {
    let db = TestDb::new("v_count").await;
    events(&db).await;
    let t = Table::public("events");
    let cp = TableSnapshot::new(&db.db, t.clone());
    let snap = cp.capture(&Context::detached()).await.unwrap();
    let ctx = Context::standalone("v1").with_baseline([snap]);
    let v = RowCountParity::new(&db.db, t.clone());
    assert!(v.verify(&ctx).await.unwrap().passed());
    db.exec("DELETE FROM events WHERE id <= 3").await;
    let verdict = v.verify(&ctx).await.unwrap();
    assert_eq!(verdict.status, Status::Fail);
    assert_eq!(verdict.evidence["delta"], -3);
    assert_eq!(
        v.verify(&Context::standalone("no-baseline"))
            .await
            .unwrap()
            .status,
        Status::Inconclusive
    );
}

#[tokio::test]
async fn table_hash_parity_bisects_down_to_the_changed_rows() {
    let db = TestDb::new("v_hash").await;
    events(&db).await;
    let t = Table::public("events");
    let cp = TableSnapshot::new(&db.db, t.clone());
    let snap = cp.capture(&Context::detached()).await.unwrap();
    let ctx = Context::standalone("v2").with_baseline([snap]);
    let v = TableHashParity::new(&db.db, t.clone());
    assert!(v.verify(&ctx).await.unwrap().passed());
    db.exec(
        "UPDATE events SET kind = 'changed' WHERE id = 777;
         DELETE FROM events WHERE id = 30001;
         INSERT INTO events VALUES (99999, 'new', NULL);
         UPDATE events SET payload = '{\"n\": -1}' WHERE id = 45000;",
    )
    .await;
    let verdict = v.verify(&ctx).await.unwrap();
    assert_eq!(verdict.status, Status::Fail, "{verdict:?}");
    let e = &verdict.evidence;
    assert_eq!(e["changed"], serde_json::json!(["777", "45000"]), "{e:#}");
    assert_eq!(e["removed"], serde_json::json!(["30001"]), "{e:#}");
    assert_eq!(e["added"], serde_json::json!(["99999"]), "{e:#}");
    assert_eq!(e["truncated"], false);
    let ranges = e["ranges"].as_array().unwrap();
    assert!(ranges.len() >= 3 && ranges.len() <= 4, "{e:#}");
    assert!(
        verdict.summary.contains("1 added, 1 removed, 2 changed"),
        "{}",
        verdict.summary
    );
}

#[tokio::test]
async fn table_hash_parity_lists_exactly_the_changed_keys_of_a_composite_key_across_chunks() {
    let db = TestDb::new("v_hash_chunks").await;
    // 40,000 rows: about ten stored chunks of 4,096 rows; a text + integer key.
    db.exec(
        "CREATE TABLE ledger (tenant text NOT NULL, id int NOT NULL, amount numeric, note text, \
                              PRIMARY KEY (tenant, id));
         INSERT INTO ledger SELECT 't' || lpad((g % 4)::text, 2, '0'), g, g / 100.0, md5(g::text) \
           FROM generate_series(1, 40000) g;
         ANALYZE ledger;",
    )
    .await;
    let t = Table::public("ledger");
    let cp = TableSnapshot::new(&db.db, t.clone());
    let snap = cp.capture(&Context::detached()).await.unwrap();
    let ctx = Context::standalone("v-chunks").with_baseline([snap.clone()]);
    for sessions in [1, 3] {
        let v = TableHashParity::new(&db.db, t.clone()).parallelism(sessions);
        let verdict = v.verify(&ctx).await.unwrap();
        assert!(verdict.passed(), "{sessions} sessions: {verdict:?}");
        assert_eq!(verdict.evidence["rows"], 40000);
    }
    // Changes in several chunks; one only in the binary encoding (numeric 1.0 and 1.00 are
    // equal by `=` but hash differently); an insert and a delete that shift the rows.
    db.exec(
        "UPDATE ledger SET note = 'x' WHERE tenant = 't00' AND id = 4;
         UPDATE ledger SET amount = 1.00 WHERE tenant = 't00' AND id = 100;
         UPDATE ledger SET note = NULL WHERE tenant = 't02' AND id = 20002;
         UPDATE ledger SET amount = -1 WHERE tenant = 't03' AND id = 39999;
         DELETE FROM ledger WHERE tenant = 't01' AND id = 9;
         INSERT INTO ledger VALUES ('t01', 0, 0, 'new'), ('t02', 50000, 0, 'new');",
    )
    .await;
    let mut hashes = BTreeSet::new();
    for sessions in [1, 2, 3] {
        let v = TableHashParity::new(&db.db, t.clone()).parallelism(sessions);
        let verdict = v.verify(&ctx).await.unwrap();
        assert_eq!(verdict.status, Status::Fail, "{verdict:?}");
        let e = &verdict.evidence;
        assert_eq!(
            e["changed"],
            serde_json::json!(["t00, 4", "t00, 100", "t02, 20002", "t03, 39999"]),
            "{sessions} sessions: {e:#}"
        );
        assert_eq!(e["removed"], serde_json::json!(["t01, 9"]), "{e:#}");
        assert_eq!(
            e["added"],
            serde_json::json!(["t01, 0", "t02, 50000"]),
            "{e:#}"
        );
        assert_eq!(e["truncated"], false);
        // Only the stored chunks holding a change differ.
        let ranges = e["ranges"].as_array().unwrap();
        assert!((3..=6).contains(&ranges.len()), "{e:#}");
        assert_eq!(e["current_rows"], 40001, "{e:#}");
        assert_eq!(e["baseline_rows"], 40000, "{e:#}");
        hashes.insert(e["hash"].to_string());
    }
    assert_eq!(
        hashes.len(),
        1,
        "the current hash depends on the sessions: {hashes:?}"
    );
    // That hash is the table's root as one pass over it gives it: the same table as the
    // baseline of a comparison, hashed by a single COPY.
    db.exec("CREATE TABLE ledger_other AS SELECT * FROM ledger WHERE id <> 7; ALTER TABLE ledger_other ADD PRIMARY KEY (tenant, id);")
        .await;
    let single = TableHashParity::between(&db.db, t.clone(), Table::public("ledger_other"))
        .verify(&Context::detached())
        .await
        .unwrap();
    assert_eq!(single.status, Status::Fail);
    assert_eq!(single.evidence["removed"], serde_json::json!(["t03, 7"]));
    assert!(
        hashes.contains(&single.evidence["baseline_hash"].to_string()),
        "{hashes:?} vs {:#}",
        single.evidence
    );
    // Restored, the table passes again.
    cp.restore(&snap, &Context::detached()).await.unwrap();
    let v = TableHashParity::new(&db.db, t.clone());
    assert!(v.verify(&ctx).await.unwrap().passed());
}

#[tokio::test]
async fn table_hash_parity_compares_two_tables() {
    let db = TestDb::new("v_between").await;
    events(&db).await;
    db.exec("CREATE TABLE events_copy (LIKE events INCLUDING ALL); INSERT INTO events_copy SELECT * FROM events;")
        .await;
    let v = TableHashParity::between(
        &db.db,
        Table::public("events"),
        Table::public("events_copy"),
    );
    assert!(v.verify(&Context::detached()).await.unwrap().passed());
    db.exec("DELETE FROM events_copy WHERE id = 5").await;
    let verdict = v.verify(&Context::detached()).await.unwrap();
    assert_eq!(verdict.evidence["removed"], serde_json::json!(["5"]));
    assert!(
        RowCountParity::between(
            &db.db,
            Table::public("events"),
            Table::public("events_copy")
        )
        .verify(&Context::detached())
        .await
        .unwrap()
        .status
            == Status::Fail
    );
}

#[tokio::test]
async fn foreign_key_integrity_finds_orphans_even_of_not_valid_constraints() {
    let db = TestDb::new("v_fk").await;
    db.exec(
        r#"CREATE TABLE "Parent" ("Id" int PRIMARY KEY, a int, b int, UNIQUE (a, b));
           CREATE TABLE child (id int PRIMARY KEY, parent_id int, a int, b int);
           INSERT INTO "Parent" SELECT g, g, g FROM generate_series(1, 10) g;
           INSERT INTO child VALUES (1, 1, 1, 1), (2, 42, NULL, NULL), (3, NULL, 5, NULL), (4, 43, 7, 8);
           ALTER TABLE child ADD CONSTRAINT child_parent FOREIGN KEY (parent_id) REFERENCES "Parent" ("Id") NOT VALID;
           ALTER TABLE child ADD CONSTRAINT child_ab FOREIGN KEY (a, b) REFERENCES "Parent" (a, b) MATCH FULL NOT VALID;"#,
    )
    .await;
    let v = ForeignKeyIntegrity::new(&db.db).schemas(["public"]);
    let verdict = v.verify(&Context::detached()).await.unwrap();
    assert_eq!(verdict.status, Status::Fail);
    assert_eq!(verdict.value, Some(4.0), "{verdict:?}");
    let violations = verdict.evidence["violations"].as_array().unwrap();
    let by = |n: &str| {
        violations
            .iter()
            .find(|x| x["constraint"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by("child_parent")["orphans"], 2);
    assert_eq!(
        by("child_parent")["sample"],
        serde_json::json!(["42", "43"])
    );
    assert_eq!(by("child_parent")["validated"], false);
    assert_eq!(
        by("child_ab")["orphans"],
        2,
        "MATCH FULL counts the half-null key"
    );
    db.exec("DELETE FROM child WHERE id > 1").await;
    assert!(v.verify(&Context::detached()).await.unwrap().passed());
}

#[tokio::test]
async fn schema_matches_lists_the_differences_from_the_baseline() {
    let db = TestDb::new("v_schema").await;
    events(&db).await;
    let cp = SchemaSnapshot::new(&db.db, ["public"]);
    let snap = cp.capture(&Context::detached()).await.unwrap();
    let ctx = Context::standalone("v5").with_baseline([snap]);
    let v = SchemaMatches::new(&db.db, ["public"]);
    assert!(v.verify(&ctx).await.unwrap().passed());
    db.exec("ALTER TABLE events ADD COLUMN source text").await;
    let verdict = v.verify(&ctx).await.unwrap();
    assert_eq!(verdict.status, Status::Fail);
    assert_eq!(
        verdict.evidence["differences"],
        serde_json::json!(["column public.events.source added: text"])
    );
}

#[tokio::test]
async fn sql_assertions_pass_on_true_or_no_rows_and_show_offending_rows() {
    let db = TestDb::new("v_sql").await;
    events(&db).await;
    let ok = SqlAssertion::is_true(
        &db.db,
        "all-kinds",
        "SELECT bool_and(kind LIKE 'k%') FROM events",
    );
    assert!(ok.verify(&Context::detached()).await.unwrap().passed());
    let none = SqlAssertion::no_rows(
        &db.db,
        "no-big",
        "SELECT id, kind FROM events WHERE id > 49998 ORDER BY id",
    );
    let verdict = none.verify(&Context::detached()).await.unwrap();
    assert_eq!(verdict.status, Status::Fail);
    assert_eq!(
        verdict.evidence["sample"],
        serde_json::json!(["49999, k5", "50000, k6"])
    );
    // Read-only: a writing "assertion" fails to run instead of writing.
    let writer = SqlAssertion::no_rows(&db.db, "writer", "DELETE FROM events RETURNING id");
    assert!(writer.verify(&Context::detached()).await.is_err());
    assert_eq!(db.count("SELECT count(*) FROM events").await, 50000);
}

#[tokio::test]
async fn an_assertion_that_is_not_one_statement_is_refused_and_cannot_escape_its_read_only_transaction(
) {
    let db = TestDb::new("v_sql_one").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await;
    for sql in [
        "SELECT true; COMMIT; DROP TABLE t",
        "SELECT true; SELECT true",
        "SELECT 'open",
    ] {
        let err = SqlAssertion::is_true(&db.db, "escape", sql)
            .verify(&Context::detached())
            .await
            .unwrap_err();
        assert!(
            matches!(err, rollback_core::Error::Invalid { .. }),
            "{sql}: {err:?}"
        );
        assert_eq!(db.count("SELECT count(*) FROM t").await, 1, "{sql}");
    }
    // One statement, with or without its semicolon, runs.
    for sql in ["SELECT count(*) = 1 FROM t", "SELECT count(*) = 1 FROM t;"] {
        let v = SqlAssertion::is_true(&db.db, "one", sql)
            .verify(&Context::detached())
            .await
            .unwrap();
        assert!(v.passed(), "{sql}");
    }
}
