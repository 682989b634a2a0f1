//! SqlStep on the real server: exactly-once markers, guards, non-transactional DDL,
//! destructive statements, and connections killed mid-step.

mod common;

use common::TestDb;
use rollback_core::journal::{Entry, Journal, MemoryJournal};
use rollback_core::{
    Context, Error, Executor, Outcome, Plan, PlanError, Reversibility, Step, StepOptions,
};
use rollback_postgres::{Backfill, SqlStep, Table, TableSnapshot, TxMode};
use std::sync::Arc;
use std::time::Duration;

async fn counter(db: &TestDb) {
    db.exec(
        "CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO counter VALUES (1, 0);
         CREATE TABLE t (id int PRIMARY KEY, v int, label text);
         INSERT INTO t SELECT g, g, 'l' || g FROM generate_series(1, 2000) g;",
    )
    .await;
}

fn bump(db: &TestDb) -> SqlStep {
    SqlStep::new(&db.db, "bump", "UPDATE counter SET n = n + 1")
        .down("UPDATE counter SET n = n - 1")
        .touches_table(&Table::public("counter"))
}

#[tokio::test]
async fn apply_runs_up_once_per_run_and_revert_runs_down_once() {
    let db = TestDb::new("sql_once").await;
    counter(&db).await;
    let step = bump(&db);
    assert_eq!(step.mode(), TxMode::Transactional);
    assert_eq!(step.reversibility(), Reversibility::Compensable);
    let run1 = Context::standalone("run-1");
    let r1 = step.apply(&run1).await.unwrap();
    let r2 = step.apply(&run1).await.unwrap();
    assert_eq!(r1, r2, "same receipt");
    assert_eq!(db.count("SELECT n FROM counter").await, 1, "applied once");
    assert_eq!(
        db.count("SELECT count(*) FROM _rollback.applied_steps WHERE run_id = 'run-1' AND step_id = 'bump'").await,
        1
    );
    // Another run is another application.
    step.apply(&Context::standalone("run-2")).await.unwrap();
    assert_eq!(db.count("SELECT n FROM counter").await, 2);
    step.revert(Some(&r1), &run1).await.unwrap();
    step.revert(Some(&r1), &run1).await.unwrap();
    step.revert(None, &run1).await.unwrap();
    assert_eq!(db.count("SELECT n FROM counter").await, 1, "reverted once");
    // Never applied in this run: a no-op.
    step.revert(None, &Context::standalone("run-3"))
        .await
        .unwrap();
    assert_eq!(db.count("SELECT n FROM counter").await, 1);
}

#[tokio::test]
async fn a_failing_up_leaves_neither_change_nor_marker() {
    let db = TestDb::new("sql_fail").await;
    counter(&db).await;
    let step = SqlStep::new(&db.db, "half", "UPDATE counter SET n = 100; SELECT 1/0")
        .down("UPDATE counter SET n = 0");
    let ctx = Context::standalone("run-f");
    let err = step.apply(&ctx).await.unwrap_err();
    assert!(!err.maybe_applied() && !err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("division by zero"), "{err}");
    assert_eq!(db.count("SELECT n FROM counter").await, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM _rollback.applied_steps")
            .await,
        0
    );
}

#[tokio::test]
async fn a_lock_timeout_is_transient_and_the_executor_retries_until_the_lock_frees() {
    let db = TestDb::new("sql_lock").await;
    counter(&db).await;
    // Another session holds the table for a while.
    let (holder, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    holder
        .batch_execute("BEGIN; LOCK TABLE counter IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let step = bump(&db).lock_timeout(Duration::from_millis(200));
    let err = step
        .apply(&Context::standalone("direct"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transient {
                maybe_applied: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("55P03"), "{err}");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        holder.batch_execute("COMMIT").await.unwrap();
    });
    let plan = Plan::builder("lock-retry")
        .step(
            "db",
            bump(&db).lock_timeout(Duration::from_millis(200)),
            &[],
        )
        .default_step_options(
            StepOptions::default()
                .retries(10)
                .backoff(Duration::from_millis(150)),
        )
        .build()
        .unwrap();
    let journal = Arc::new(MemoryJournal::new());
    let report = Executor::with_journal(journal.clone())
        .run(&plan)
        .await
        .unwrap();
    release.await.unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    let records = journal.records(&report.run_id).await.unwrap();
    let transient_failures = records
        .iter()
        .filter(|r| {
            matches!(
                &r.entry,
                Entry::ApplyFailed {
                    transient: true,
                    maybe_applied: false,
                    ..
                }
            )
        })
        .count();
    assert!(transient_failures >= 1, "the lock timeout was retried");
    assert_eq!(db.count("SELECT n FROM counter").await, 1);
}

#[tokio::test]
async fn a_statement_timeout_stops_a_runaway_statement() {
    let db = TestDb::new("sql_stmt").await;
    counter(&db).await;
    let step = SqlStep::new(
        &db.db,
        "slow",
        "UPDATE counter SET n = 5; SELECT pg_sleep(5)",
    )
    .down("UPDATE counter SET n = 0")
    .statement_timeout(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let err = step.apply(&Context::standalone("s")).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(err.is_transient() && !err.maybe_applied(), "{err:?}");
    assert_eq!(db.count("SELECT n FROM counter").await, 0);
}

#[tokio::test]
async fn create_index_concurrently_runs_outside_a_transaction_and_cleans_an_invalid_leftover() {
    let db = TestDb::new("sql_cic").await;
    counter(&db).await;
    db.exec("INSERT INTO t VALUES (2001, 1, 'dup')").await; // v is not unique yet
    let step = SqlStep::new(
        &db.db,
        "unique-v",
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_v_key ON t (v)",
    )
    .down("DROP INDEX CONCURRENTLY IF EXISTS t_v_key");
    assert_eq!(step.mode(), TxMode::NonTransactional);
    let ctx = Context::standalone("cic");
    let err = step.apply(&ctx).await.unwrap_err();
    assert!(
        err.maybe_applied(),
        "a non-transactional failure may have left effects: {err:?}"
    );
    assert_eq!(
        db.scalar("SELECT indisvalid::text FROM pg_index WHERE indexrelid = 't_v_key'::regclass")
            .await
            .as_deref(),
        Some("false"),
        "the failed build left an invalid index"
    );
    assert_eq!(
        db.scalar("SELECT state FROM _rollback.applied_steps WHERE step_id = 'unique-v'")
            .await
            .as_deref(),
        Some("applying")
    );
    db.exec("DELETE FROM t WHERE id = 2001").await;
    step.apply(&ctx).await.unwrap();
    assert_eq!(
        db.scalar("SELECT indisvalid::text FROM pg_index WHERE indexrelid = 't_v_key'::regclass")
            .await
            .as_deref(),
        Some("true"),
        "rebuilt valid, not kept invalid by IF NOT EXISTS"
    );
    assert_eq!(
        db.scalar("SELECT state FROM _rollback.applied_steps WHERE step_id = 'unique-v'")
            .await
            .as_deref(),
        Some("applied")
    );
    step.revert(None, &ctx).await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM pg_class WHERE relname = 't_v_key'")
            .await,
        0
    );
    step.revert(None, &ctx).await.unwrap();
}

#[tokio::test]
async fn destructive_up_makes_the_step_restore_only_and_the_checkpoint_undoes_it() {
    let db = TestDb::new("sql_destr").await;
    counter(&db).await;
    let before = db.dump();
    let t = Table::public("t");
    let drop = || {
        SqlStep::new(&db.db, "drop-label", "ALTER TABLE t DROP COLUMN label")
            .down("ALTER TABLE t ADD COLUMN label text")
            .touches_table(&t)
    };
    assert_eq!(drop().reversibility(), Reversibility::RestoreOnly);
    assert_eq!(
        drop().destructive_statements()[0].0,
        "ALTER TABLE … DROP COLUMN"
    );
    assert!(drop().describe().contains("destructive"));
    let approved = drop().approve_destructive("label is derivable");
    assert_eq!(approved.reversibility(), Reversibility::Compensable);
    // No checkpoint: the plan is refused.
    let refused = Plan::builder("no-cover").step("db", drop(), &[]).build();
    assert!(
        matches!(refused, Err(PlanError::Uncovered { .. })),
        "{refused:?}"
    );
    // Covered: a later failure rolls it back by restoring the snapshot.
    let plan = Plan::builder("covered")
        .checkpoint("db", TableSnapshot::new(&db.db, t.clone()))
        .step("db", drop(), &[])
        .step(
            "db",
            SqlStep::new(&db.db, "boom", "SELECT 1/0").down("SELECT 1"),
            &["drop-label"],
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
    assert!(report.parity_proven());
    assert!(
        report.to_markdown().contains("swap"),
        "{}",
        report.to_markdown()
    );
    common::assert_same_dump(&before, &db.dump(), "after rollback of a DROP COLUMN");
}

/// Kill the backend that runs a statement matching `marker` once it shows up.
fn terminate_when_running(url: String, marker: &'static str) -> tokio::task::JoinHandle<i32> {
    tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..400 {
            let rows = c
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid() AND query LIKE '%' || $1 || '%' AND state = 'active'",
                    &[&marker],
                )
                .await
                .unwrap();
            if let Some(r) = rows.first() {
                let pid: i32 = r.get(0);
                c.execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .unwrap();
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no backend ran {marker}");
    })
}

#[tokio::test]
async fn a_backend_terminated_mid_step_is_retried_and_nothing_is_lost_or_doubled() {
    let db = TestDb::new("sql_kill").await;
    counter(&db).await;
    let killer = terminate_when_running(db.url.clone(), "kill-me-apply");
    let step = SqlStep::new(
        &db.db,
        "bump-slowly",
        "UPDATE counter SET n = n + 1; SELECT pg_sleep(0.5), 'kill-me-apply'",
    )
    .down("UPDATE counter SET n = n - 1; SELECT pg_sleep(0.5), 'kill-me-revert'")
    .touches_table(&Table::public("counter"));
    let plan = Plan::builder("kill-apply")
        .checkpoint("db", TableSnapshot::new(&db.db, Table::public("counter")))
        .step("db", step, &[])
        .step(
            "db",
            SqlStep::new(&db.db, "fail-later", "SELECT 1/0").down("SELECT 1"),
            &["bump-slowly"],
        )
        .default_step_options(
            StepOptions::default()
                .retries(3)
                .backoff(Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    let killer2 = tokio::spawn({
        let url = db.url.clone();
        async move {
            killer.await.unwrap();
            // Once the apply was killed and retried, kill the revert as well.
            terminate_when_running(url, "kill-me-revert").await.unwrap()
        }
    });
    let journal = Arc::new(MemoryJournal::new());
    let report = Executor::with_journal(journal.clone())
        .run(&plan)
        .await
        .unwrap();
    killer2.await.unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven());
    let recs = journal.records(&report.run_id).await.unwrap();
    let killed_apply = recs.iter().any(|r| matches!(&r.entry, Entry::ApplyFailed { step, transient: true, .. } if step == "bump-slowly"));
    let killed_revert = recs
        .iter()
        .any(|r| matches!(&r.entry, Entry::RevertFailed { step, .. } if step == "bump-slowly"));
    assert!(killed_apply && killed_revert, "{}", report.to_markdown());
    assert_eq!(
        db.count("SELECT n FROM counter").await,
        0,
        "applied once, reverted once"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM _rollback.applied_steps WHERE step_id = 'bump-slowly'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_backend_terminated_mid_backfill_batch_is_retried_in_place() {
    let db = TestDb::new("bf_kill").await;
    counter(&db).await;
    db.exec("ALTER TABLE t ADD COLUMN doubled int").await;
    let killer = terminate_when_running(db.url.clone(), "pg_sleep(0.2)");
    let fill = Backfill::new(
        &db.db,
        "double",
        Table::public("t"),
        "id",
        "doubled = v * 2 + (SELECT 0 FROM pg_sleep(0.2))",
    )
    .batch_size(500);
    let ctx = Context::standalone("bf-kill");
    let receipt = fill.apply(&ctx).await.unwrap();
    killer.await.unwrap();
    assert_eq!(receipt.0["rows"], 2000);
    assert_eq!(
        db.count("SELECT count(*) FROM t WHERE doubled = v * 2")
            .await,
        2000
    );
}

#[tokio::test]
async fn steps_verifiers_and_journal_work_with_quoted_mixed_case_and_unicode_names() {
    let db = TestDb::new("sql_idents").await;
    db.exec(
        r#"CREATE SCHEMA "Sales ""EU""";
           CREATE TABLE "Sales ""EU"""."Kundén Liste" ("ID" int PRIMARY KEY, "Full Name" text NOT NULL, "First" text);
           CREATE TABLE "Sales ""EU"""."Bestellung" ("Nr" int PRIMARY KEY, "Kunde" int REFERENCES "Sales ""EU"""."Kundén Liste" ("ID"));
           INSERT INTO "Sales ""EU"""."Kundén Liste" SELECT g, 'Zoë ' || g, NULL FROM generate_series(1, 500) g;
           INSERT INTO "Sales ""EU"""."Bestellung" SELECT g, g FROM generate_series(1, 100) g;"#,
    )
    .await;
    let before = db.dump();
    let t = Table::new("Sales \"EU\"", "Kundén Liste");
    let journal = rollback_postgres::PgJournal::new(&db.db).schema("Jörnal \"X\"");
    let plan = Plan::builder("idents")
        .checkpoint("db", TableSnapshot::new(&db.db, t.clone()))
        .step(
            "db",
            Backfill::new(&db.db, "fill", t.clone(), "ID", r#""First" = split_part("Full Name", ' ', 1)"#)
                .batch_size(100)
                .marker_schema("Märker"),
            &[],
        )
        .step(
            "db",
            SqlStep::new(&db.db, "constrain", r#"ALTER TABLE "Sales ""EU"""."Kundén Liste" ADD CONSTRAINT "First Set" CHECK ("First" IS NOT NULL)"#)
                .down(r#"ALTER TABLE "Sales ""EU"""."Kundén Liste" DROP CONSTRAINT IF EXISTS "First Set""#)
                .marker_schema("Märker")
                .touches_table(&t),
            &["fill"],
        )
        .verify_final(rollback_postgres::RowCountParity::new(&db.db, t.clone()))
        .verify_final(rollback_postgres::ForeignKeyIntegrity::new(&db.db).schemas(["Sales \"EU\""]))
        .verify_final(rollback_postgres::TableHashParity::new(&db.db, t.clone()).id("hash-must-match"))
        .build()
        .unwrap();
    let report = Executor::new(journal).run(&plan).await.unwrap();
    // The table hash differs from the baseline (the backfill changed rows): rollback.
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven());
    let md = report.to_markdown();
    assert!(md.contains("500 changed") || md.contains("changed"), "{md}");
    assert!(
        db.count(r#"SELECT count(*) FROM "Jörnal ""X""".journal"#)
            .await
            > 10
    );
    // The reverted step's marker is gone (the restore-only backfill's stays: it is per run).
    assert_eq!(
        db.count(r#"SELECT count(*) FROM "Märker".applied_steps WHERE step_id = 'constrain'"#)
            .await,
        0
    );
    // The bookkeeping schemas are ours; the user's schema is back to the baseline.
    db.exec(r#"DROP SCHEMA "Jörnal ""X""" CASCADE; DROP SCHEMA "Märker" CASCADE;"#)
        .await;
    common::assert_same_dump(&before, &db.dump(), "weird identifiers");
}

#[tokio::test]
async fn transaction_control_inside_a_step_is_refused_before_anything_runs() {
    let db = TestDb::new("sql_txctl").await;
    counter(&db).await;
    let step = SqlStep::new(
        &db.db,
        "sneaky",
        "UPDATE counter SET n = 7; COMMIT; UPDATE counter SET n = 8",
    )
    .down("UPDATE counter SET n = 0");
    let err = step.apply(&Context::standalone("tx")).await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert_eq!(db.count("SELECT n FROM counter").await, 0);
}

#[tokio::test]
async fn check_refuses_session_level_statements_and_pinned_settings_before_a_run() {
    let db = TestDb::new("sql_check").await;
    let err = SqlStep::new(&db.db, "a", "SELECT 1; SET work_mem = '1GB'")
        .down("SELECT 1")
        .check()
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("SET work_mem = '1GB'"), "{err}");
    let err = SqlStep::new(&db.db, "b", "SELECT 1")
        .down("RESET work_mem")
        .check()
        .unwrap_err();
    assert!(
        err.to_string().contains("down") && err.to_string().contains("RESET"),
        "{err}"
    );
    SqlStep::new(&db.db, "c", "SET LOCAL work_mem = '1GB'; SELECT 1")
        .check()
        .unwrap();
    for name in [
        "session_replication_role",
        "Standard_Conforming_Strings",
        "role",
    ] {
        let err = SqlStep::new(&db.db, "d", "SELECT 1")
            .setting(name, "x")
            .check()
            .unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[tokio::test]
async fn a_step_setting_holds_for_the_steps_own_session_only() {
    let db = TestDb::new("sql_setting").await;
    db.exec("CREATE TABLE seen (mode text PRIMARY KEY, work_mem text)")
        .await;
    let default = db.scalar("SHOW work_mem").await.unwrap();
    let ctx = Context::standalone("setting");
    let tx = SqlStep::new(
        &db.db,
        "tx",
        "INSERT INTO seen VALUES ('tx', current_setting('work_mem'))",
    )
    .down("DELETE FROM seen WHERE mode = 'tx'")
    .setting("work_mem", "77MB");
    assert_eq!(tx.mode(), TxMode::Transactional);
    tx.apply(&ctx).await.unwrap();
    let non_tx = SqlStep::new(
        &db.db,
        "non-tx",
        "INSERT INTO seen VALUES ('non-tx', current_setting('work_mem'))",
    )
    .down("DELETE FROM seen WHERE mode = 'non-tx'")
    .non_transactional()
    .setting("work_mem", "78MB");
    non_tx.apply(&ctx).await.unwrap();
    assert_eq!(
        db.scalar("SELECT string_agg(mode || '=' || work_mem, ' ' ORDER BY mode) FROM seen")
            .await
            .as_deref(),
        Some("non-tx=78MB tx=77MB")
    );
    for _ in 0..4 {
        assert_eq!(db.scalar("SHOW work_mem").await, Some(default.clone()));
    }
    tx.revert(None, &ctx).await.unwrap();
    non_tx.revert(None, &ctx).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM seen").await, 0);
}

/// A step's declared effects decide the plan's undo path, so they are checked where the
/// SQL runs: a column it says it creates must exist after `up` and be gone after `down`.
#[tokio::test]
async fn declared_created_columns_are_checked_after_up_and_after_down() {
    let db = TestDb::new("sql_declared").await;
    counter(&db).await;
    let t = Table::public("t");
    let cols = |db: &TestDb| {
        let db = db.db.clone();
        async move {
            let c = db.client().await.unwrap();
            c.query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = 'public.t'::regclass \
                 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
        }
    };

    // Honest: adds and drops `tier`.
    let ok = SqlStep::new(&db.db, "add-tier", "ALTER TABLE t ADD COLUMN tier text")
        .down("ALTER TABLE t DROP COLUMN tier")
        .creates_column(&t, "tier");
    assert_eq!(ok.touches(), vec![db.db.table_resource(&t)]);
    let run = Context::standalone("declared-ok");
    ok.apply(&run).await.unwrap();
    assert!(cols(&db).await.contains(&"tier".to_string()));
    ok.revert(None, &run).await.unwrap();
    assert!(!cols(&db).await.contains(&"tier".to_string()));

    // A misspelt declaration: refused inside the step's transaction, nothing applied.
    let typo = SqlStep::new(&db.db, "add-tier", "ALTER TABLE t ADD COLUMN tier text")
        .down("ALTER TABLE t DROP COLUMN tier")
        .creates_column(&t, "teir");
    let err = typo
        .apply(&Context::standalone("declared-typo"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { message } if message.contains("teir") && message.contains("does not exist after `up`")),
        "{err}"
    );
    assert!(!err.maybe_applied());
    assert!(!cols(&db).await.contains(&"tier".to_string()));

    // A `down` that does not remove what the plan relies on it to remove: the revert
    // fails (and rolls back) instead of reporting success.
    let keeps = SqlStep::new(&db.db, "add-tier", "ALTER TABLE t ADD COLUMN tier text")
        .down("UPDATE t SET tier = NULL")
        .creates_column(&t, "tier");
    let run = Context::standalone("declared-keeps");
    keeps.apply(&run).await.unwrap();
    let err = keeps.revert(None, &run).await.unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { message } if message.contains("still exists after `down`")),
        "{err}"
    );
    assert!(cols(&db).await.contains(&"tier".to_string()));
}

/// The plan decides at `build()` that a backfill of a column an earlier step creates
/// needs no restore, from the effects both steps declare, and that one of another column
/// does.
#[tokio::test]
async fn a_backfill_of_a_created_column_needs_no_checkpoint_and_one_of_another_column_does() {
    let db = TestDb::new("sql_effects").await;
    let t = Table::public("t");
    let add = || {
        SqlStep::new(&db.db, "add-tier", "ALTER TABLE t ADD COLUMN tier text")
            .down("ALTER TABLE t DROP COLUMN tier")
            .creates_column(&t, "tier")
    };
    let plan = Plan::builder("fill-new")
        .step("database", add(), &[])
        .step(
            "database",
            Backfill::new(&db.db, "fill-tier", t.clone(), "id", "tier = 'basic'"),
            &["add-tier"],
        )
        .build()
        .expect("no checkpoint needed");
    assert_eq!(
        plan.undo("fill-tier"),
        Some(&rollback_core::Undo::CompensationOf {
            steps: vec!["add-tier".into()]
        })
    );
    let err = Plan::builder("fill-old")
        .step("database", add(), &[])
        .step(
            "database",
            Backfill::new(
                &db.db,
                "fill-label",
                t.clone(),
                "id",
                "tier = 'basic', label = 'x'",
            ),
            &["add-tier"],
        )
        .build()
        .expect_err("label is not created by add-tier: a checkpoint is needed");
    assert!(matches!(err, PlanError::Uncovered { .. }), "{err}");
}
