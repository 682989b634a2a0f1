//! The library's SQL holds whatever settings the customer's database runs with: one
//! injection suite — hostile names, comments and labels, a script the scanner must read
//! as the server does, shadowing functions and operators — runs with each non-default
//! setting as the database's (or the role's) default, through every checkpoint, step kind
//! and verifier, and must leave the database exactly as it was.

mod common;

use common::TestDb;
use rollback_core::journal::MemoryJournal;
use rollback_core::{Checkpoint, Context, Error, Executor, Outcome, Plan, Step};
use rollback_postgres::{
    Backfill, ForeignKeyIntegrity, RestoreMethod, RowCountParity, SchemaSnapshot, SqlAssertion,
    SqlStep, Table, TableHashParity, TableSnapshot, TableUndoLog, UndoLogParity,
};
use std::time::Duration;

/// A table whose name closes a trigger body dollar-quoted with a fixed tag.
const HOSTILE: &str = "a$rollback_undo$;DROP TABLE victim;SELECT $rollback_undo$";
/// A sequence whose name closes a `DO $rb$ … $rb$` block.
const HOSTILE_SEQ: &str = "s$rb$;DROP TABLE victim;--";

/// Set up with the server's defaults (the checker session), whatever the database's are.
fn setup_sql() -> String {
    let h = format!("\"{}\"", HOSTILE.replace('"', "\"\""));
    let s = format!("\"{}\"", HOSTILE_SEQ.replace('"', "\"\""));
    format!(
        r#"
CREATE TABLE victim (id int PRIMARY KEY);
INSERT INTO victim VALUES (1);
CREATE TABLE {h} (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO {h} SELECT g, g FROM generate_series(1, 50) g;
CREATE TABLE ledger (id int PRIMARY KEY, ref int NOT NULL REFERENCES {h} (id));
INSERT INTO ledger SELECT g, g FROM generate_series(1, 10) g;
-- Comments and data that close a literal when backslashes escape.
CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text);
INSERT INTO acct SELECT g, g, CASE WHEN g % 2 = 0 THEN 'back\slash' ELSE 'it''s' END FROM generate_series(1, 200) g;
CREATE INDEX acct_v ON acct (v);
COMMENT ON INDEX acct_v IS 'x\''; DROP TABLE victim; --';
COMMENT ON TABLE acct IS 'y\''; DROP TABLE victim; --';
COMMENT ON COLUMN acct.note IS 'z\''; DROP TABLE victim; --';
COMMENT ON CONSTRAINT acct_pkey ON acct IS 'k\''; DROP TABLE victim; --';
-- A sequence whose name closes a fixed dollar tag, read back from the catalog.
CREATE TABLE seqt (id int NOT NULL, v text);
CREATE SEQUENCE {s} OWNED BY seqt.id;
ALTER TABLE seqt ALTER COLUMN id SET DEFAULT nextval('public.{s}'::regclass);
INSERT INTO seqt (v) SELECT 'r' || g FROM generate_series(1, 20) g;
CREATE VIEW seqt_view AS SELECT id FROM seqt;
-- Labels and names in a schema checkpoint.
CREATE SCHEMA app;
CREATE TYPE app.mood AS ENUM ('ok', 'x\''); DROP TABLE victim; --');
CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
-- Shadowing functions and operators: each logs the query that called it.
CREATE SCHEMA evil;
CREATE TABLE evil.calls (fn text, query text);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT, SELECT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.quote_ident(text) RETURNS text LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('quote_ident', current_query()); RETURN pg_catalog.quote_ident($1); END $f$;
CREATE FUNCTION evil.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('unnest', current_query()); RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('now', current_query()); RETURN pg_catalog.now(); END $f$;
CREATE FUNCTION evil.starts_with(text, text) RETURNS boolean LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('starts_with', current_query()); RETURN pg_catalog.starts_with($1, $2); END $f$;
CREATE FUNCTION evil.to_regclass(text) RETURNS regclass LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('to_regclass', current_query()); RETURN pg_catalog.to_regclass($1); END $f$;
CREATE FUNCTION evil.textcat(text, text) RETURNS text LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('||', current_query()); RETURN pg_catalog.textcat($1, $2); END $f$;
CREATE OPERATOR evil.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.textcat);
CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('=', current_query()); RETURN pg_catalog.texteq($1, $2); END $f$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
CREATE FUNCTION evil.int48ge(int, bigint) RETURNS boolean LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('>=', current_query()); RETURN pg_catalog.int48ge($1, $2); END $f$;
CREATE OPERATOR evil.>= (LEFTARG = int, RIGHTARG = bigint, FUNCTION = evil.int48ge);
"#
    )
}

fn hostile() -> Table {
    Table::public(HOSTILE)
}

async fn victim_present(chk: &tokio_postgres::Client) -> bool {
    chk.query_one("SELECT to_regclass('public.victim') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

/// Calls of the shadowing functions and operators since the last look (they are then
/// forgotten, so that dumps compare the same).
async fn shadow_calls(chk: &tokio_postgres::Client) -> Vec<(String, String)> {
    let calls = chk
        .query("SELECT fn, query FROM evil.calls", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    chk.batch_execute("TRUNCATE evil.calls").await.unwrap();
    calls
}

async fn settings_seen_by_the_pool(db: &TestDb) -> String {
    let c = db.db.client().await.unwrap();
    let r = c
        .query_one(
            "SELECT pg_catalog.concat_ws(' ', pg_catalog.current_setting('standard_conforming_strings'), \
                    pg_catalog.current_setting('check_function_bodies'), \
                    pg_catalog.current_setting('session_replication_role'), \
                    pg_catalog.current_setting('search_path'))",
            &[],
        )
        .await
        .unwrap();
    r.get(0)
}

/// Everything the library does, with `settings` as the database's defaults (or, with
/// `role_default`, as the connecting role's defaults in this database).
async fn injection_suite(label: &str, settings: &[&str], role_default: bool) {
    let db = if role_default {
        TestDb::new(label).await
    } else {
        TestDb::with_settings(label, settings).await
    };
    let chk = db.checker().await;
    if role_default {
        let me: String = chk
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        for s in settings {
            chk.batch_execute(&format!(
                "ALTER ROLE \"{me}\" IN DATABASE \"{}\" SET {s}",
                db.name
            ))
            .await
            .unwrap();
        }
    }
    chk.batch_execute(&setup_sql()).await.unwrap();
    eprintln!(
        "{label}: the pool's sessions see {}",
        settings_seen_by_the_pool(&db).await
    );
    shadow_calls(&chk).await;
    let c = Context::standalone(&format!("inj-{}", uuid::Uuid::new_v4()));

    // 1. The undo log's trigger function of a table whose name holds a dollar tag.
    let undo = TableUndoLog::new(&db.db, hostile());
    let snap = undo.capture(&c).await.expect("undo-log capture");
    assert!(
        victim_present(&chk).await,
        "{label}: undo-log capture ran injected SQL"
    );
    chk.batch_execute(&format!(
        "UPDATE \"{}\" SET v = v + 1 WHERE id = 1",
        HOSTILE.replace('"', "\"\"")
    ))
    .await
    .expect("writes to a tracked table still work");
    assert!(!undo.changes(&snap).await.unwrap()[0].is_empty());
    undo.restore(&snap, &c).await.unwrap();
    assert_eq!(undo.fingerprint(&c).await.unwrap(), snap.fingerprint);
    undo.discard(&snap, &c).await.unwrap();
    let calls = shadow_calls(&chk).await;
    assert!(
        calls.is_empty(),
        "{label}: the undo log called shadowing functions: {calls:#?}"
    );

    // 2. A table snapshot reads comments back from the catalog.
    let before = db.dump();
    let acct_cp = TableSnapshot::new(&db.db, Table::public("acct"));
    let snap = acct_cp.capture(&c).await.expect("table snapshot capture");
    assert!(
        victim_present(&chk).await,
        "{label}: capture ran injected SQL"
    );
    acct_cp.discard(&snap, &c).await.unwrap();
    let calls = shadow_calls(&chk).await;
    assert!(
        calls.is_empty(),
        "{label}: the snapshot called shadowing functions: {calls:#?}"
    );

    // 3. A script the scanner must split as the server does.
    let scanned = SqlStep::new(
        &db.db,
        "scanner",
        r"UPDATE acct SET v=42 WHERE id=1; SELECT '\''; COMMIT; SELECT 1/0; SELECT '--'",
    )
    .down("UPDATE acct SET v=1 WHERE id=1");
    let applied = scanned.apply(&c).await;
    let v: i32 = chk
        .query_one("SELECT v FROM acct WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    let marker: i64 = chk
        .query_one(
            "SELECT count(*) FROM _rollback.applied_steps WHERE step_id = 'scanner'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    match &applied {
        Ok(_) => assert_eq!((v, marker), (42, 1), "{label}: applied, and recorded so"),
        Err(e) => assert!(
            e.maybe_applied() || (v == 1 && marker == 0),
            "{label}: apply failed with maybe_applied = false, yet v = {v} and {marker} marker(s): {e}"
        ),
    }
    assert!(applied.is_ok(), "{label}: {applied:?}");
    scanned.revert(None, &c).await.unwrap();
    let calls = shadow_calls(&chk).await;
    assert!(
        calls.is_empty(),
        "{label}: the step called shadowing functions: {calls:#?}"
    );
    common::assert_same_dump(
        &before,
        &db.dump(),
        &format!("{label}: revert undid the step"),
    );

    // 4. A whole run through every checkpoint, step kind and verifier, failing its final
    //    checks and rolling back.
    let before = db.dump();
    let h = HOSTILE.replace('"', "\"\"");
    let acct = TableSnapshot::new(&db.db, Table::public("acct"));
    let seqt =
        TableSnapshot::new(&db.db, Table::public("seqt")).restore_method(RestoreMethod::Copy);
    let undo = TableUndoLog::new(&db.db, hostile());
    let app = SchemaSnapshot::new(&db.db, ["app"]);
    let plan = Plan::builder(format!("inj-{label}"))
        .checkpoint("db", acct.clone())
        .checkpoint("db", seqt.clone())
        .checkpoint("db", undo.clone())
        .checkpoint("db", app.clone())
        .step(
            "db",
            SqlStep::new(
                &db.db,
                "scanner",
                r"UPDATE acct SET v=42 WHERE id=1; SELECT '\''; COMMIT; SELECT 1/0; SELECT '--'",
            )
            .down("UPDATE acct SET v=1 WHERE id=1")
            .touching(acct.resource()),
            &[],
        )
        .step(
            "db",
            SqlStep::new(
                &db.db,
                "hostile",
                format!(
                    "UPDATE \"{h}\" SET v = v + 1000; \
                     INSERT INTO \"{h}\" SELECT g, g FROM generate_series(51, 60) g; \
                     DELETE FROM \"{h}\" WHERE id > 40 AND id <= 50"
                ),
            )
            .touching(undo.resource()),
            &[],
        )
        .step(
            "db",
            Backfill::new(&db.db, "double", Table::public("acct"), "id", "v = v * 2")
                .filter("note IS NOT NULL")
                .batch_size(64),
            &["scanner"],
        )
        .step(
            "db",
            SqlStep::new(
                &db.db,
                "sequence",
                format!(
                    "ALTER TABLE seqt ALTER COLUMN id DROP DEFAULT; DROP SEQUENCE \"{}\"; \
                     INSERT INTO seqt VALUES (100, 'new')",
                    HOSTILE_SEQ.replace('"', "\"\"")
                ),
            )
            .touching(seqt.resource()),
            &[],
        )
        .step(
            "db",
            SqlStep::new(
                &db.db,
                "ddl",
                "DROP TYPE app.mood; DROP FUNCTION app.f(); CREATE TABLE app.extra (id int)",
            )
            .touching(app.resource()),
            &[],
        )
        .verify_final(RowCountParity::new(&db.db, Table::public("acct")))
        .verify_final(TableHashParity::new(&db.db, Table::public("acct")))
        .verify_final(UndoLogParity::new(&undo))
        .verify_final(ForeignKeyIntegrity::new(&db.db))
        .verify_final(SqlAssertion::is_true(
            &db.db,
            "victim-present",
            "SELECT count(*) = 1 FROM victim",
        ))
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{label}: {}",
        report.to_markdown()
    );
    assert!(report.parity_proven(), "{label}: {}", report.to_markdown());
    let hash = report
        .verdicts
        .iter()
        .find(|v| v.verifier.starts_with("table-hash:"))
        .expect("table hash verdict");
    assert!(!hash.verdict.passed(), "{label}: the backfill changed acct");
    assert!(
        victim_present(&chk).await,
        "{label}: the run executed injected SQL"
    );
    let calls = shadow_calls(&chk).await;
    common::assert_same_dump(&before, &db.dump(), &format!("{label}: after rollback"));
    assert!(
        calls.is_empty(),
        "{label}: the library called shadowing functions or operators: {calls:#?}"
    );
}

#[tokio::test]
async fn injection_suite_holds_under_default_settings() {
    injection_suite("inj_default", &[], false).await;
}

#[tokio::test]
async fn injection_suite_holds_under_standard_conforming_strings_off() {
    injection_suite("inj_scs", &["standard_conforming_strings = off"], false).await;
}

#[tokio::test]
async fn injection_suite_holds_under_check_function_bodies_off() {
    injection_suite("inj_cfb", &["check_function_bodies = off"], false).await;
}

#[tokio::test]
async fn injection_suite_holds_under_a_search_path_with_shadowing_functions_and_operators() {
    injection_suite(
        "inj_path",
        &["search_path = evil, pg_catalog, public"],
        false,
    )
    .await;
}

#[tokio::test]
async fn injection_suite_holds_under_escape_string_warning_off() {
    injection_suite("inj_esw", &["escape_string_warning = off"], false).await;
}

#[tokio::test]
async fn injection_suite_holds_under_session_replication_role_replica_as_database_default() {
    injection_suite("inj_srr_db", &["session_replication_role = replica"], false).await;
}

#[tokio::test]
async fn injection_suite_holds_under_session_replication_role_replica_as_role_default() {
    injection_suite(
        "inj_srr_role",
        &["session_replication_role = replica"],
        true,
    )
    .await;
}

#[tokio::test]
async fn injection_suite_holds_under_every_hostile_setting_at_once() {
    injection_suite(
        "inj_all",
        &[
            "standard_conforming_strings = off",
            "check_function_bodies = off",
            "escape_string_warning = off",
            "search_path = evil, pg_catalog, public",
            "session_replication_role = replica",
        ],
        false,
    )
    .await;
}

#[tokio::test]
async fn a_script_that_changes_standard_conforming_strings_is_refused_before_anything_runs() {
    let db = TestDb::new("scs_refused").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 1);")
        .await;
    let c = Context::standalone("scs");
    for sql in [
        "SET LOCAL standard_conforming_strings = off; UPDATE t SET v = 2",
        "UPDATE t SET v = 2; SET standard_conforming_strings TO off",
        "set session standard_conforming_strings = 'off'; UPDATE t SET v = 2",
    ] {
        let step = SqlStep::new(&db.db, "scs", sql).down("UPDATE t SET v = 1");
        let err = step.apply(&c).await.unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{sql}: {err:?}");
        assert!(
            err.to_string().contains("standard_conforming_strings"),
            "{sql}: {err}"
        );
        assert_eq!(db.count("SELECT v FROM t").await, 1, "{sql} ran");
    }
}

#[tokio::test]
async fn pooled_sessions_pin_the_settings_the_library_relies_on() {
    let db = TestDb::with_settings(
        "pinned",
        &[
            "standard_conforming_strings = off",
            "check_function_bodies = off",
            "session_replication_role = replica",
        ],
    )
    .await;
    let seen = settings_seen_by_the_pool(&db).await;
    assert!(seen.starts_with("on on origin "), "{seen}");
    // The database's own search_path is what user SQL sees.
    let chk = db.checker().await;
    chk.batch_execute(&format!(
        "ALTER DATABASE \"{}\" SET search_path = app, public",
        db.name
    ))
    .await
    .unwrap();
    let db2 = rollback_postgres::Database::connect(&db.url).unwrap();
    let path: String = db2
        .client()
        .await
        .unwrap()
        .query_one("SELECT pg_catalog.current_setting('search_path')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "app, public");
}

/// An autovacuum worker holding the table (its `SHARE UPDATE EXCLUSIVE` lock conflicts
/// with every restore's) is cancelled as soon as the restore waits for it — PostgreSQL
/// does that after `deadlock_timeout`, which the restore lowers for its transaction. Here
/// the database's `deadlock_timeout` is an hour, so a restore that left it alone would
/// wait out its lock timeout and fail; a throttled worker stays on the table for minutes.
#[tokio::test]
async fn a_restore_is_not_held_up_by_an_autovacuum_worker() {
    let db = TestDb::with_settings("autovac_restore", &["deadlock_timeout = '1h'"]).await;
    // Vacuumed as soon as it has a dead row, one page per 100 ms.
    db.exec(
        "CREATE TABLE slow (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL)
           WITH (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,
                 autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1);
         INSERT INTO slow SELECT g, g, repeat('x', 200) FROM generate_series(1, 20000) g;",
    )
    .await;
    let before: String = db
        .scalar("SELECT md5(string_agg(s::text, ',' ORDER BY id)) FROM slow s")
        .await
        .unwrap_or_default();
    let cp = TableUndoLog::new(&db.db, Table::public("slow")).lock_timeout(Duration::from_secs(3));
    let ctx = Context::standalone("autovac");
    let snap = cp.capture(&ctx).await.unwrap();
    db.exec("UPDATE slow SET v = v + 1 WHERE id % 10 = 0").await;
    // The launcher visits each database every naptime: 1 s for the length of the test.
    let admin = |sql: &'static str| {
        let url = db.url.clone();
        async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            // ALTER SYSTEM runs outside any transaction: a statement on its own.
            for stmt in sql.split(';') {
                c.batch_execute(stmt).await.unwrap();
            }
        }
    };
    admin("ALTER SYSTEM SET autovacuum_naptime = '1s'; SELECT pg_catalog.pg_reload_conf()").await;
    let mut seen = false;
    for _ in 0..240 {
        if db
            .count(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity
                  WHERE backend_type = 'autovacuum worker' AND datname = current_database()
                    AND query LIKE '%slow%'",
            )
            .await
            > 0
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    admin("ALTER SYSTEM RESET autovacuum_naptime; SELECT pg_catalog.pg_reload_conf()").await;
    assert!(
        seen,
        "no autovacuum worker came to the table within a minute"
    );
    let r = cp.restore(&snap, &ctx).await;
    assert!(
        r.is_ok(),
        "the restore waited on the autovacuum worker: {r:?}"
    );
    let after: String = db
        .scalar("SELECT md5(string_agg(s::text, ',' ORDER BY id)) FROM slow s")
        .await
        .unwrap_or_default();
    assert_eq!(after, before);
    assert_eq!(
        db.scalar("SHOW deadlock_timeout").await.as_deref(),
        Some("1h"),
        "the lower deadlock_timeout was the restore's transaction's alone"
    );
}
