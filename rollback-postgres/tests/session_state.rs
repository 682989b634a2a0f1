//! Nothing a step or a caller does to a pooled session outlives its use of it: a step's
//! session-level `SET` is refused, and a connection is reset (and its settings pinned
//! again) before anything else uses it.

mod common;

use common::{TestDb, TestRole};
use rollback_core::journal::MemoryJournal;
use rollback_core::{Checkpoint, Context, Executor, Outcome, Plan, Step};
use rollback_postgres::{Database, SqlStep, Table, TableUndoLog};

async fn rows(db: &TestDb) -> String {
    db.scalar("SELECT string_agg(t::text, ',' ORDER BY id) FROM t t")
        .await
        .unwrap_or_default()
}

/// What a pooled session of `db` sees: (session_replication_role, search_path, role is
/// the login role, standard_conforming_strings, lock_timeout, a leaked temp table).
async fn session_of(c: &tokio_postgres::Client) -> (String, String, bool, String, String, bool) {
    let r = c
        .query_one(
            "SELECT pg_catalog.current_setting('session_replication_role'), \
                    pg_catalog.current_setting('search_path'), \
                    current_user OPERATOR(pg_catalog.=) session_user, \
                    pg_catalog.current_setting('standard_conforming_strings'), \
                    pg_catalog.current_setting('lock_timeout'), \
                    pg_catalog.to_regclass('pg_temp.leak') IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
}

fn clean() -> (String, String, bool, String, String, bool) {
    (
        "origin".into(),
        "\"$user\", public".into(),
        true,
        "on".into(),
        "0".into(),
        false,
    )
}

/// Ten later sessions (one at a time, then the whole pool at once) are clean.
async fn ten_later_sessions_are_clean(pool: &Database) {
    for i in 0..10 {
        let c = pool.client().await.unwrap();
        assert_eq!(session_of(&c).await, clean(), "pooled session {i}");
    }
    let all = futures::future::join_all((0..2).map(|_| pool.client())).await;
    for c in all {
        assert_eq!(session_of(&c.unwrap()).await, clean(), "pool held at once");
    }
}

#[tokio::test]
async fn a_step_setting_session_replication_role_is_refused_and_the_run_rolls_back_whole() {
    let db = TestDb::new("srr_step").await;
    db.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
         INSERT INTO t SELECT g, g FROM generate_series(1, 100) g;",
    )
    .await;
    let before = rows(&db).await;
    // A small pool, so that a session left in replica mode would be the next step's.
    let pool = Database::connect_with(&db.url, 2).unwrap();
    let cp = TableUndoLog::new(&pool, Table::public("t"));
    let plan = Plan::builder("srr-leak")
        .checkpoint("db", cp.clone())
        .step(
            "db",
            SqlStep::new(&pool, "replica", "SET session_replication_role = replica")
                .down("SELECT 1")
                .touching(cp.resource()),
            &[],
        )
        .step(
            "db",
            SqlStep::new(&pool, "change", "UPDATE t SET v = v + 1000").touching(cp.resource()),
            &["replica"],
        )
        .step(
            "db",
            SqlStep::new(&pool, "boom", "SELECT 1/0").down("SELECT 1"),
            &["change"],
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
    let refused = report.steps.iter().find(|s| s.id == "replica").unwrap();
    let why = refused.last_error.as_deref().unwrap_or_default();
    assert!(
        why.contains("SET session_replication_role") && why.contains("invalid input"),
        "the refusal names the statement: {why}"
    );
    assert_eq!(rows(&db).await, before, "the table is as it was");
    ten_later_sessions_are_clean(&pool).await;
}

#[tokio::test]
async fn a_step_refuses_each_session_level_statement_naming_it_and_changes_nothing() {
    let db = TestDb::new("session_refused").await;
    db.exec("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t VALUES (1, 1);")
        .await;
    let c = Context::standalone("refused");
    for (sql, named) in [
        (
            "UPDATE t SET v = 2; SET search_path = pg_catalog",
            "SET search_path",
        ),
        ("SET ROLE postgres; UPDATE t SET v = 2", "SET ROLE"),
        (
            "SET SESSION AUTHORIZATION postgres; UPDATE t SET v = 2",
            "SET SESSION AUTHORIZATION",
        ),
        ("UPDATE t SET v = 2; RESET ALL", "RESET ALL"),
        (
            "set lock_timeout to '1s'; UPDATE t SET v = 2",
            "set lock_timeout",
        ),
        (
            "SET SESSION statement_timeout = 0; UPDATE t SET v = 2",
            "SET SESSION statement_timeout",
        ),
        (
            "SET LOCAL session_replication_role = replica; UPDATE t SET v = 2",
            "SET LOCAL session_replication_role",
        ),
    ] {
        let step = SqlStep::new(&db.db, "s", sql).down("UPDATE t SET v = 1");
        let err = step.apply(&c).await.unwrap_err();
        assert!(
            matches!(err, rollback_core::Error::Invalid { .. }),
            "{sql}: {err:?}"
        );
        assert!(err.to_string().contains(named), "{sql}: {err}");
        assert_eq!(db.count("SELECT v FROM t").await, 1, "{sql} ran");
    }
    // SET LOCAL ends with the step's transaction.
    let step = SqlStep::new(
        &db.db,
        "local",
        "SET LOCAL lock_timeout = '2s'; SET LOCAL search_path = pg_catalog, public; UPDATE t SET v = 2",
    )
    .down("UPDATE t SET v = 1");
    step.apply(&c).await.unwrap();
    assert_eq!(db.count("SELECT v FROM t").await, 2);
    let pooled = db.db.client().await.unwrap();
    assert_eq!(session_of(&pooled).await, clean());
}

#[tokio::test]
async fn session_state_left_on_a_pooled_connection_is_reset_before_its_next_use() {
    let other = TestRole::new("other", "").await;
    let db = TestDb::new("session_reset").await;
    let pool = Database::connect_with(&db.url, 2).unwrap();
    // Directly on a pooled client.
    {
        let c = pool.client().await.unwrap();
        c.batch_execute(&format!(
            "SET session_replication_role = replica; SET search_path = pg_catalog; \
             SET standard_conforming_strings = off; SET lock_timeout = '1ms'; \
             CREATE TEMP TABLE leak (x int); SELECT pg_advisory_lock(4242); LISTEN leak; \
             SET ROLE \"{}\"",
            other.name
        ))
        .await
        .unwrap();
    }
    // Through a step, hidden from the scanner in a DO block.
    SqlStep::new(
        &pool,
        "hidden",
        "DO $$ BEGIN PERFORM set_config('session_replication_role', 'replica', false); \
                     PERFORM set_config('search_path', 'pg_catalog', false); END $$",
    )
    .down("SELECT 1")
    .apply(&Context::standalone("hidden"))
    .await
    .unwrap();
    ten_later_sessions_are_clean(&pool).await;
    // The advisory lock went with the reset.
    let chk = db.checker().await;
    let free: bool = chk
        .query_one("SELECT pg_try_advisory_lock(4242)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(free, "an advisory lock survived on a pooled connection");
    drop(pool);
    drop(db);
}
