//! TableUndoLog's parity proof from the changed chunks: a few changed rows are proven by
//! re-hashing only the chunks that hold them, and every way a write could have escaped the
//! log (a trigger disabled and re-enabled, a table rewrite, TRUNCATE) makes the restore
//! read the whole table instead — and say why. The proof never claims parity the table
//! does not have.

mod common;

use common::{TestDb, TestRole};
use rollback_core::journal::MemoryJournal;
use rollback_core::{Checkpoint, Context, Error, Executor, Outcome, Plan, Restored};
use rollback_postgres::{Database, SqlStep, Table, TableUndoLog};

fn ctx() -> Context {
    Context::standalone(&format!("t-{}", uuid::Uuid::new_v4()))
}

/// 50,000 rows: 196 chunks of 256 rows at capture.
async fn accounts(db: &TestDb) {
    db.exec(
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL, note text);
         INSERT INTO accounts SELECT g, 'owner ' || g, g * 1.5, md5(g::text) FROM generate_series(1, 50000) g;
         ANALYZE accounts;",
    )
    .await;
}

/// The table's content, in key order, as one md5: an independent check.
async fn content(db: &TestDb) -> String {
    db.scalar("SELECT md5(string_agg(a::text, ',' ORDER BY id)) FROM accounts a")
        .await
        .unwrap_or_default()
}

fn how(r: &Restored) -> String {
    r.proof
        .as_ref()
        .and_then(|p| p.method.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_few_changed_rows_are_proven_from_their_chunks_alone() {
    let db = TestDb::new("proof_chunks").await;
    accounts(&db).await;
    let before = content(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("accounts"));
    let snap = cp.capture(&ctx()).await.unwrap();
    // Three chunks: an update at the start, a delete in the middle, an insert past the end.
    db.exec(
        "UPDATE accounts SET balance = 0 WHERE id IN (1, 2);
         DELETE FROM accounts WHERE id = 25000;
         INSERT INTO accounts VALUES (60000, 'new', 1, NULL);",
    )
    .await;
    let r = cp.restore(&snap, &ctx()).await.unwrap();
    let proof = r.proof.clone().expect("the restore proves itself");
    assert_eq!(proof.fingerprint, snap.fingerprint, "{}", how(&r));
    assert!(
        how(&r).starts_with("changed chunks: 3 of 196 re-hashed"),
        "{}",
        how(&r)
    );
    assert!(how(&r).contains("4 logged key(s)"), "{}", how(&r));
    assert_eq!(content(&db).await, before);
    // The independent proof, reading everything, agrees.
    assert_eq!(cp.fingerprint(&ctx()).await.unwrap(), snap.fingerprint);
    // Restoring again with nothing logged re-hashes nothing and still proves parity.
    let again = cp.restore(&snap, &ctx()).await.unwrap();
    assert_eq!(again.proof.unwrap().fingerprint, snap.fingerprint);
    // The full proof, by option.
    db.exec("UPDATE accounts SET note = 'x' WHERE id = 7").await;
    let full = cp
        .clone()
        .full_proof(true)
        .restore(&snap, &ctx())
        .await
        .unwrap();
    assert_eq!(full.proof.clone().unwrap().fingerprint, snap.fingerprint);
    assert_eq!(how(&full), "", "a full read needs no explanation");
    cp.discard(&snap, &ctx()).await.unwrap();
}

#[tokio::test]
async fn a_trigger_disabled_and_re_enabled_meanwhile_makes_the_proof_read_everything() {
    let db = TestDb::new("proof_reenabled").await;
    accounts(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("accounts"));
    let snap = cp.capture(&ctx()).await.unwrap();
    // A write the log never sees, then the triggers back as they were: the restore cannot
    // tell from the triggers' state alone.
    db.exec(
        "ALTER TABLE accounts DISABLE TRIGGER ALL;
         UPDATE accounts SET balance = -1 WHERE id = 30000;
         DO $$ DECLARE r record; BEGIN
           FOR r IN SELECT tgname FROM pg_trigger WHERE tgrelid = 'accounts'::regclass LOOP
             EXECUTE format('ALTER TABLE accounts ENABLE ALWAYS TRIGGER %I', r.tgname);
           END LOOP;
         END $$;
         UPDATE accounts SET balance = 0 WHERE id = 5;",
    )
    .await;
    let r = cp.restore(&snap, &ctx()).await.unwrap();
    assert!(
        how(&r).starts_with(
            "full re-read: a trigger of the undo log was disabled, re-enabled or re-created"
        ),
        "{}",
        how(&r)
    );
    // Row 30000 is still changed: the proof says so instead of claiming parity.
    assert_ne!(r.proof.unwrap().fingerprint, snap.fingerprint);
    cp.discard(&snap, &ctx()).await.unwrap();
}

#[tokio::test]
async fn a_replica_session_writes_through_the_log_and_is_undone() {
    let db = TestDb::new("proof_replica").await;
    accounts(&db).await;
    let before = content(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("accounts"));
    let snap = cp.capture(&ctx()).await.unwrap();
    // Logical replication's apply worker and tools that skip triggers write like this.
    db.exec(
        "SET session_replication_role = replica;
         UPDATE accounts SET owner = 'replica' WHERE id BETWEEN 100 AND 110;
         RESET session_replication_role;",
    )
    .await;
    let r = cp.restore(&snap, &ctx()).await.unwrap();
    assert_eq!(r.items_changed, Some(11));
    assert_eq!(r.proof.clone().unwrap().fingerprint, snap.fingerprint);
    assert!(
        how(&r).starts_with("changed chunks: 1 of 196 re-hashed (256 rows"),
        "{}",
        how(&r)
    );
    assert_eq!(content(&db).await, before);
    cp.discard(&snap, &ctx()).await.unwrap();
}

#[tokio::test]
async fn a_table_rewrite_or_truncate_makes_the_proof_read_everything() {
    let db = TestDb::new("proof_rewrite").await;
    accounts(&db).await;
    let before = content(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("accounts"));
    // A type change and back: the same definition, data rewritten without a row trigger.
    let snap = cp.capture(&ctx()).await.unwrap();
    db.exec(
        "ALTER TABLE accounts ALTER COLUMN balance TYPE int USING balance::int;
         ALTER TABLE accounts ALTER COLUMN balance TYPE numeric;",
    )
    .await;
    let r = cp.restore(&snap, &ctx()).await.unwrap();
    assert!(
        how(&r).starts_with("full re-read: the table was rewritten or truncated"),
        "{}",
        how(&r)
    );
    assert_ne!(
        r.proof.unwrap().fingerprint,
        snap.fingerprint,
        "balances were rounded"
    );
    cp.discard(&snap, &ctx()).await.unwrap();

    // TRUNCATE is logged (every row) and put back; the proof reads everything.
    db.exec("DROP TABLE accounts").await;
    accounts(&db).await;
    let snap = cp.capture(&ctx()).await.unwrap();
    db.exec("TRUNCATE accounts").await;
    let r = cp.restore(&snap, &ctx()).await.unwrap();
    assert!(
        how(&r).starts_with("full re-read: the table was rewritten or truncated"),
        "{}",
        how(&r)
    );
    assert_eq!(r.proof.unwrap().fingerprint, snap.fingerprint);
    assert_eq!(content(&db).await, before);
    cp.discard(&snap, &ctx()).await.unwrap();
}

#[tokio::test]
async fn the_log_is_append_only_to_everyone_but_its_restore() {
    let db = TestDb::new("proof_guard").await;
    accounts(&db).await;
    let before = content(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("accounts"));
    let snap = cp.capture(&ctx()).await.unwrap();
    db.exec("UPDATE accounts SET balance = 0 WHERE id = 40000")
        .await;
    let log = db
        .scalar(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '_rollback' AND c.relname LIKE 'undo\\_%' AND c.relkind = 'r'",
        )
        .await
        .unwrap();
    let c = db.checker().await;
    for sql in [
        format!("DELETE FROM {log}"),
        format!("UPDATE {log} SET _rollback_present = NOT _rollback_present"),
        format!("TRUNCATE {log}"),
        // Claiming to be the restore without its secret.
        format!("SET rollback.writer = 'rollback:restore:0'; DELETE FROM {log}"),
    ] {
        let err = c.batch_execute(&sql).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
            "{sql}: {err:?}"
        );
    }
    let _ = c.batch_execute("RESET rollback.writer").await;
    assert_eq!(db.count(&format!("SELECT count(*) FROM {log}")).await, 1);
    // The restore itself empties it.
    let r = cp.restore(&snap, &ctx()).await.unwrap();
    assert_eq!(r.proof.unwrap().fingerprint, snap.fingerprint);
    assert_eq!(db.count(&format!("SELECT count(*) FROM {log}")).await, 0);
    assert_eq!(content(&db).await, before);
    cp.discard(&snap, &ctx()).await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM pg_proc WHERE proname LIKE 'undo\\_%'")
            .await,
        0,
        "discard drops the guard too"
    );
}

#[tokio::test]
async fn a_rolled_back_run_reports_how_parity_was_proven() {
    let db = TestDb::new("proof_run").await;
    accounts(&db).await;
    let before = content(&db).await;
    let cp = TableUndoLog::new(&db.db, Table::public("accounts"));
    let plan = Plan::builder("proof-run")
        .checkpoint("db", cp.clone())
        .step(
            "db",
            SqlStep::new(
                &db.db,
                "fix",
                "UPDATE accounts SET note = 'fixed' WHERE id % 10000 = 0",
            )
            .touching(cp.resource()),
            &[],
        )
        .step(
            "db",
            SqlStep::new(&db.db, "boom", "SELECT 1/0").down("SELECT 1"),
            &["fix"],
        )
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    let how = report.checkpoints[0]
        .parity_proof
        .clone()
        .unwrap_or_default();
    assert!(
        how.starts_with("changed chunks: 5 of 196 re-hashed (1104 rows"),
        "{md}"
    );
    assert!(md.contains("proven (changed chunks: 5 of 196"), "{md}");
    assert_eq!(content(&db).await, before);
}

#[tokio::test]
async fn a_role_that_does_not_own_the_table_is_refused_before_anything_is_installed() {
    let app = TestRole::new("proof_app", "").await;
    let db = TestDb::new("proof_not_owner").await;
    accounts(&db).await;
    db.exec(&format!(
        r#"CREATE SCHEMA _rollback; GRANT USAGE, CREATE ON SCHEMA _rollback TO "{a}";
           GRANT SELECT, INSERT, UPDATE, DELETE, TRIGGER ON accounts TO "{a}";"#,
        a = app.name
    ))
    .await;
    let as_app = Database::connect(&db.url_as(&app.name)).unwrap();
    // TRIGGER creates triggers, but only the owner drops them: the log could never go.
    let cp = TableUndoLog::new(&as_app, Table::public("accounts"));
    let err = cp.capture(&ctx()).await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("not owned by this role"), "{err}");
    assert_eq!(
        db.count("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'accounts'::regclass")
            .await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pg_proc WHERE proname LIKE 'undo\\_%'")
            .await,
        0
    );
}

/// Big tables with a dense integer key are hashed at capture by two sessions in ranges of
/// key values; with a gap the ranges do not fall on leaf boundaries, and the root is still
/// the one a single pass gives. Either way the proof re-hashes only the changed ranges.
#[tokio::test]
async fn a_big_table_hashed_in_parallel_at_capture_proves_from_its_changed_chunks() {
    let db = TestDb::new("proof_parallel").await;
    for (label, fill) in [
        ("dense", "SELECT g, 'o' || g, g, NULL FROM generate_series(1, 250000) g"),
        // 1,000 keys missing early on: still dense enough to split by key values.
        (
            "gap",
            "SELECT g, 'o' || g, g, NULL FROM generate_series(1, 251000) g WHERE g NOT BETWEEN 3001 AND 4000",
        ),
        ("sparse", "SELECT g * 3, 'o' || g, g, NULL FROM generate_series(1, 250000) g"),
    ] {
        db.exec(&format!(
            "DROP TABLE IF EXISTS accounts;
             CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL, note text);
             INSERT INTO accounts {fill}; ANALYZE accounts;"
        ))
        .await;
        let before = content(&db).await;
        let cp = TableUndoLog::new(&db.db, Table::public("accounts"));
        let snap = cp.capture(&ctx()).await.unwrap();
        assert_eq!(
            cp.fingerprint(&ctx()).await.unwrap(),
            snap.fingerprint,
            "{label}: the capture's root is the fingerprint's"
        );
        db.exec("UPDATE accounts SET balance = -1 WHERE id IN (6000, 120000, 240000)")
            .await;
        let r = cp.restore(&snap, &ctx()).await.unwrap();
        assert_eq!(r.proof.clone().unwrap().fingerprint, snap.fingerprint, "{label}");
        assert!(how(&r).starts_with("changed chunks: 3 of "), "{label}: {}", how(&r));
        assert_eq!(content(&db).await, before, "{label}");
        cp.discard(&snap, &ctx()).await.unwrap();
    }
}

/// A table never analyzed gets its chunks from the planner's estimate of its rows, not
/// from a guess that makes them too big for wide rows.
#[tokio::test]
async fn a_never_analyzed_wide_table_gets_chunks_of_256_rows() {
    let db = TestDb::new("proof_unanalyzed").await;
    db.exec(
        "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL, note text)
           WITH (autovacuum_enabled = false, parallel_workers = 2);
         INSERT INTO accounts SELECT g, repeat(md5(g::text), 10), g, NULL FROM generate_series(1, 30000) g;",
    )
    .await;
    // A plan of several lines (a parallel scan) is read by its first.
    db.exec(&format!(
        "ALTER DATABASE {d} SET parallel_setup_cost = 0; ALTER DATABASE {d} SET parallel_tuple_cost = 0; \
         ALTER DATABASE {d} SET min_parallel_table_scan_size = 0",
        d = db.name
    ))
    .await;
    let cp = TableUndoLog::new(
        &Database::connect(&db.url).unwrap(),
        Table::public("accounts"),
    );
    let snap = cp.capture(&ctx()).await.unwrap();
    db.exec("UPDATE accounts SET balance = 0 WHERE id = 1")
        .await;
    let r = cp.restore(&snap, &ctx()).await.unwrap();
    assert!(
        how(&r).starts_with("changed chunks: 1 of 118 re-hashed (256 rows"),
        "{}",
        how(&r)
    );
    cp.discard(&snap, &ctx()).await.unwrap();
}

/// Keys that are not a single integer are placed among the chunk starts by the server's
/// ordering of their type: a text key (ordered by its collation) and a composite key, each
/// with an update, a delete and an insert between two existing keys.
#[tokio::test]
async fn text_and_composite_keys_are_proven_from_their_changed_chunks() {
    let db = TestDb::new("proof_keys").await;
    for (label, ddl, changes) in [
        (
            "text",
            "CREATE TABLE accounts (code text COLLATE \"C\" PRIMARY KEY, balance numeric NOT NULL);
             INSERT INTO accounts SELECT 'k' || lpad(g::text, 6, '0'), g FROM generate_series(1, 20000) g;",
            "UPDATE accounts SET balance = 0 WHERE code IN ('k000001', 'k010000');
             DELETE FROM accounts WHERE code = 'k015000';
             INSERT INTO accounts VALUES ('k005000x', 1);",
        ),
        (
            "composite",
            "CREATE TABLE accounts (region int, code text COLLATE \"C\", balance numeric NOT NULL, PRIMARY KEY (region, code));
             INSERT INTO accounts SELECT g % 4, 'c' || lpad(g::text, 6, '0'), g FROM generate_series(1, 20000) g;",
            "UPDATE accounts SET balance = 0 WHERE (region, code) IN ((0, 'c000004'), (2, 'c010002'));
             DELETE FROM accounts WHERE (region, code) = (3, 'c015003');
             INSERT INTO accounts VALUES (1, 'c005001x', 1);",
        ),
    ] {
        db.exec(&format!("DROP TABLE IF EXISTS accounts; {ddl} ANALYZE accounts;"))
            .await;
        let digest = "SELECT md5(string_agg(a::text, ',' ORDER BY a::text)) FROM accounts a";
        let before = db.scalar(digest).await;
        let cp = TableUndoLog::new(&db.db, Table::public("accounts"));
        let snap = cp.capture(&ctx()).await.unwrap();
        db.exec(changes).await;
        let r = cp.restore(&snap, &ctx()).await.unwrap();
        assert_eq!(
            r.proof.clone().unwrap().fingerprint,
            snap.fingerprint,
            "{label}: {}",
            how(&r)
        );
        assert!(
            how(&r).starts_with("changed chunks: 4 of 79 re-hashed"),
            "{label}: {}",
            how(&r)
        );
        assert_eq!(db.scalar(digest).await, before, "{label}");
        cp.discard(&snap, &ctx()).await.unwrap();
    }
}
