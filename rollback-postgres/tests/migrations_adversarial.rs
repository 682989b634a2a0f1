//! Migration folders run the way production runs them: by a least-privilege role, on a
//! database with non-default settings, with hostile file names, by two processes at once,
//! with the connection killed mid-migration, and with folders that disagree with their
//! ledger. Each test checks the tool's own ledger and the database after the run.

mod common;

use common::{TestDb, TestRole};
use rollback_core::journal::MemoryJournal;
use rollback_core::{Executor, Outcome, RunReport};
use rollback_postgres::{Database, MigrationError, Migrations};
use std::path::Path;
use std::time::Duration;

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (f, text) in files {
        let p = dir.join(f);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, text).unwrap();
    }
}

async fn run(plan: &rollback_core::Plan) -> RunReport {
    Executor::new(MemoryJournal::new()).run(plan).await.unwrap()
}

async fn rows(db: &TestDb, sql: &str) -> Vec<String> {
    db.checker()
        .await
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

// ---------------------------------------------------------------------------------------
// 5. A folder that disagrees with its ledger.
// ---------------------------------------------------------------------------------------

/// golang-migrate's `migrate create -seq` writes `000001_name.up.sql`; its ledger keeps
/// the version as a bigint (`1`). The next run must see it applied.
#[tokio::test]
async fn zero_padded_versions_are_seen_applied_on_the_next_run() {
    let db = TestDb::new("adv_padded").await;
    let gm = tempfile::tempdir().unwrap();
    write(
        gm.path(),
        &[
            (
                "000001_create_a.up.sql",
                "CREATE TABLE a (id int PRIMARY KEY);\n",
            ),
            ("000001_create_a.down.sql", "DROP TABLE a;\n"),
            ("000002_fill_a.up.sql", "INSERT INTO a VALUES (1), (2);\n"),
            (
                "000002_fill_a.down.sql",
                "DELETE FROM a WHERE id IN (1, 2);\n",
            ),
        ],
    );
    let p = Migrations::golang_migrate(gm.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.migrations().len(), 2);
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    assert_eq!(
        rows(
            &db,
            "SELECT version::text || ' ' || dirty::text FROM schema_migrations"
        )
        .await,
        ["2 false"]
    );
    let again = Migrations::golang_migrate(gm.path())
        .unwrap()
        .pending(&db.db)
        .await
        .expect("the ledger's version 2 is the file 000002");
    assert_eq!(again.migrations().len(), 0);
    assert_eq!(again.applied_count(), 2);
    // Rolled back by a later failing run: the ledger goes back to 2, not to 000002.
    write(
        gm.path(),
        &[
            ("000003_more.up.sql", "INSERT INTO a VALUES (3);\n"),
            ("000003_more.down.sql", "DELETE FROM a WHERE id = 3;\n"),
            ("000004_fail.up.sql", "INSERT INTO a VALUES (1);\n"),
            ("000004_fail.down.sql", "SELECT 1;\n"),
        ],
    );
    let p = Migrations::golang_migrate(gm.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::RolledBack);
    assert_eq!(
        rows(
            &db,
            "SELECT version::text || ' ' || dirty::text FROM schema_migrations"
        )
        .await,
        ["2 false"]
    );
    assert_eq!(db.count("SELECT count(*) FROM a").await, 2);

    // sqlx `--sequential` names: `0001_create_b.sql`; the ledger's version is 1.
    let sx = tempfile::tempdir().unwrap();
    write(
        sx.path(),
        &[(
            "0001_create_b.sql",
            "CREATE TABLE b (id int PRIMARY KEY);\n",
        )],
    );
    let p = Migrations::sqlx(sx.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    let again = Migrations::sqlx(sx.path())
        .unwrap()
        .pending(&db.db)
        .await
        .expect("the ledger's version 1 is the file 0001");
    assert_eq!(again.migrations().len(), 0);
}

/// Edited, deleted, dirty and duplicate: each refused before anything runs, the database
/// and its ledger as they were.
#[tokio::test]
async fn a_folder_that_disagrees_with_its_ledger_changes_nothing() {
    let db = TestDb::new("adv_disagree").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("1_create_a.sql", "CREATE TABLE a (id int PRIMARY KEY);\n"),
            ("2_fill_a.sql", "INSERT INTO a VALUES (1);\n"),
        ],
    );
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    write(dir.path(), &[("3_more.sql", "INSERT INTO a VALUES (3);\n")]);
    let before = db.dump();

    // Edited after it ran.
    write(
        dir.path(),
        &[("2_fill_a.sql", "INSERT INTO a VALUES (2);\n")],
    );
    let e = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap_err();
    assert!(
        matches!(e, MigrationError::ChecksumMismatch { ref version, .. } if version == "2"),
        "{e}"
    );
    // Deleted after it ran.
    std::fs::remove_file(dir.path().join("2_fill_a.sql")).unwrap();
    let e = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap_err();
    assert!(
        matches!(e, MigrationError::MissingFile { ref version, .. } if version == "2"),
        "{e}"
    );
    // Two files of one version, even spelled differently.
    write(
        dir.path(),
        &[
            ("2_fill_a.sql", "INSERT INTO a VALUES (1);\n"),
            ("03_other.sql", "INSERT INTO a VALUES (4);\n"),
        ],
    );
    let e = Migrations::sqlx(dir.path()).unwrap_err();
    assert!(
        matches!(e, MigrationError::Duplicate { ref version, .. } if version.trim_start_matches('0') == "3"),
        "{e}"
    );
    common::assert_same_dump(&before, &db.dump(), "refused folders");

    // A dirty golang-migrate version is reported, never cleaned.
    let gm = tempfile::tempdir().unwrap();
    write(
        gm.path(),
        &[
            ("1_x.up.sql", "CREATE TABLE gx (id int);\n"),
            ("1_x.down.sql", "DROP TABLE gx;\n"),
        ],
    );
    db.exec("CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL); INSERT INTO schema_migrations VALUES (1, true)")
        .await;
    let before = db.dump();
    let e = Migrations::golang_migrate(gm.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap_err();
    assert!(
        matches!(e, MigrationError::Dirty { ref version, .. } if version == "1"),
        "{e}"
    );
    common::assert_same_dump(&before, &db.dump(), "dirty ledger");
}

// ---------------------------------------------------------------------------------------
// 2. Settings of the database, and names the tool writes verbatim.
// ---------------------------------------------------------------------------------------

/// sqlx, diesel, refinery, golang-migrate, dbmate and Flyway name their table without a
/// schema: it lives in the first schema of the search path (`current_schema()`). A
/// database whose search path starts with `app` keeps the ledger in `app`, where the tool
/// reads it, even when `public` has a table of that name.
#[tokio::test]
async fn the_ledger_is_where_the_tool_looks_under_the_database_search_path() {
    let db = TestDb::with_settings("adv_search_path", &["search_path = app, public"]).await;
    db.exec(
        "CREATE SCHEMA app; \
         CREATE TABLE public.schema_migrations (version text, note text); \
         INSERT INTO public.schema_migrations VALUES ('not a ledger', 'an application table')",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("1_create_t.sql", "CREATE TABLE t (id int PRIMARY KEY);\n"),
            ("2_fill_t.sql", "INSERT INTO t VALUES (1);\n"),
        ],
    );
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    assert_eq!(
        rows(
            &db,
            "SELECT version::text FROM app._sqlx_migrations ORDER BY version"
        )
        .await,
        ["1", "2"]
    );
    assert_eq!(
        db.scalar("SELECT coalesce(to_regclass('public._sqlx_migrations')::text, 'none')")
            .await
            .as_deref(),
        Some("none")
    );
    assert_eq!(db.count("SELECT count(*) FROM app.t").await, 1);

    // dbmate: its `schema_migrations` in `app`; the application's table in `public` untouched.
    let dm = tempfile::tempdir().unwrap();
    write(
        dm.path(),
        &[(
            "20240101000001_u.sql",
            "-- migrate:up\nCREATE TABLE u (id int);\n-- migrate:down\nDROP TABLE u;\n",
        )],
    );
    let p = Migrations::dbmate(dm.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    assert_eq!(
        rows(&db, "SELECT version::text FROM app.schema_migrations").await,
        ["20240101000001"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT version || '|' || note FROM public.schema_migrations"
        )
        .await,
        ["not a ledger|an application table"]
    );
}

/// Names with quotes, backslashes and non-ASCII letters, and `$$` bodies, with
/// `standard_conforming_strings = off` as the database's default: the ledger holds the
/// names exactly as the tool writes them, and nothing in a name runs.
#[tokio::test]
async fn hostile_file_names_are_recorded_verbatim_and_never_run() {
    let db = TestDb::with_settings(
        "adv_names",
        &[
            "standard_conforming_strings = off",
            "escape_string_warning = off",
        ],
    )
    .await;
    db.exec("CREATE TABLE victim (id int PRIMARY KEY); INSERT INTO victim VALUES (1)")
        .await;
    let sx = tempfile::tempdir().unwrap();
    let name = r"1_o'brien\'); DROP TABLE victim; --_ünï.sql";
    write(
        sx.path(),
        &[
            (
                name,
                "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$ SELECT 'a''b\\c'::text $$;\n",
            ),
            (
                r"2_x\_y.sql",
                "CREATE TABLE quoted (v text); INSERT INTO quoted VALUES ($q$it's \\ $q$);\n",
            ),
        ],
    );
    let p = Migrations::sqlx(sx.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let report = run(&p.plan().unwrap()).await;
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        rows(
            &db,
            "SELECT description FROM _sqlx_migrations ORDER BY version"
        )
        .await,
        [r"o'brien\'); DROP TABLE victim; -- ünï", r"x\ y"]
    );
    assert_eq!(rows(&db, "SELECT f()").await, [r"a'b\c"]);
    assert_eq!(rows(&db, "SELECT v FROM quoted").await, [r"it's \ "]);
    assert_eq!(db.count("SELECT count(*) FROM victim").await, 1);

    let fw = tempfile::tempdir().unwrap();
    let script = r"V1__it's_a_\back_slash_ü.sql";
    write(fw.path(), &[(script, "CREATE TABLE fw (id int);\n")]);
    let p = Migrations::flyway(fw.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    assert_eq!(
        rows(
            &db,
            "SELECT description || '|' || script FROM flyway_schema_history"
        )
        .await,
        [format!(r"it's a \back slash ü|{script}")]
    );
    assert_eq!(db.count("SELECT count(*) FROM victim").await, 1);
}

// ---------------------------------------------------------------------------------------
// 1. A least-privilege role.
// ---------------------------------------------------------------------------------------

/// As the DBA: `app` owns schema `shop`, its search path is `shop`, the bookkeeping
/// schemas exist for it; no CREATE on the database or on `public` (PostgreSQL 15).
async fn provision(db: &TestDb, app: &str, bookkeeping: bool) {
    let mut sql = format!(
        "CREATE SCHEMA shop AUTHORIZATION \"{app}\"; \
         ALTER ROLE \"{app}\" IN DATABASE \"{}\" SET search_path = shop; \
         REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
        db.name
    );
    if bookkeeping {
        sql.push_str(&format!(
            "CREATE SCHEMA _rollback; CREATE SCHEMA _rollback_snapshots; \
             GRANT USAGE, CREATE ON SCHEMA _rollback, _rollback_snapshots TO \"{app}\";"
        ));
    }
    db.exec(&sql).await;
}

#[tokio::test]
async fn a_least_privilege_role_runs_and_rolls_back_a_folder_in_its_own_schema() {
    let app = TestRole::new("mig_app", "").await;
    let db = TestDb::new("adv_least_priv").await;
    provision(&db, &app.name, true).await;
    let as_app = Database::connect(&db.url_as(&app.name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "1_create_items.sql",
                "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);\n",
            ),
            (
                "2_fill_items.sql",
                "INSERT INTO items VALUES (1, 'a'), (2, 'b');\n",
            ),
        ],
    );
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&as_app)
        .await
        .expect("the ledger goes where the role may create it: its own schema");
    let report = run(&p.plan().unwrap()).await;
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        rows(
            &db,
            "SELECT version::text FROM shop._sqlx_migrations ORDER BY version"
        )
        .await,
        ["1", "2"]
    );
    let before = db.dump();

    // The rest: a data change covered by a checkpoint, then a failure.
    write(
        dir.path(),
        &[
            ("3_rename.sql", "UPDATE items SET name = upper(name);\n"),
            ("4_more.sql", "ALTER TABLE items ADD COLUMN note text;\n"),
            ("5_fail.sql", "INSERT INTO items VALUES (1, 'dup');\n"),
        ],
    );
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&as_app)
        .await
        .unwrap();
    assert_eq!(p.migrations().len(), 3);
    let report = run(&p.plan().unwrap()).await;
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    common::assert_same_dump(&before, &db.dump(), "rolled back as the role");
}

/// Without the bookkeeping schemas (which the role may not create), the run fails before
/// any migration runs, with an error that names the missing privilege.
#[tokio::test]
async fn a_role_without_the_bookkeeping_schemas_fails_before_anything_runs() {
    let app = TestRole::new("mig_nobk", "").await;
    let db = TestDb::new("adv_no_bookkeeping").await;
    provision(&db, &app.name, false).await;
    let as_app = Database::connect(&db.url_as(&app.name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "1_create_items.sql",
                "CREATE TABLE items (id int PRIMARY KEY);\n",
            ),
            ("2_fill.sql", "INSERT INTO items VALUES (1);\n"),
        ],
    );
    let before = db.dump();
    let err = match Migrations::sqlx(dir.path()).unwrap().pending(&as_app).await {
        Err(e) => e.to_string(),
        Ok(p) => match Executor::new(MemoryJournal::new())
            .run(&p.plan().unwrap())
            .await
        {
            Err(e) => e.to_string(),
            Ok(r) => {
                assert_ne!(r.outcome, Outcome::Committed, "{}", r.to_markdown());
                r.to_markdown()
            }
        },
    };
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        db.scalar("SELECT coalesce(to_regclass('shop.items')::text, 'none')")
            .await
            .as_deref(),
        Some("none")
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname <> 'shop'")
            .await,
        0
    );
    let _ = before;
}

// ---------------------------------------------------------------------------------------
// 3. Two processes.
// ---------------------------------------------------------------------------------------

/// Two runners plan the same folder at once (both see every migration pending) and run
/// it together: each migration is applied once, the ledger is the tool's, and the runner
/// that lost fails with a conflict, undoing none of the winner's work.
#[tokio::test]
async fn two_runners_of_one_folder_apply_each_migration_once() {
    let db = TestDb::new("adv_two_runners").await;
    db.exec("CREATE TABLE events (n int NOT NULL)").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "1_first.up.sql",
                "INSERT INTO events VALUES (1); SELECT pg_sleep(0.5);\n",
            ),
            ("1_first.down.sql", "DELETE FROM events WHERE n = 1;\n"),
            ("2_second.up.sql", "INSERT INTO events VALUES (2);\n"),
            ("2_second.down.sql", "DELETE FROM events WHERE n = 2;\n"),
        ],
    );
    let a = Migrations::golang_migrate(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let other = Database::connect(&db.url).unwrap();
    let b = Migrations::golang_migrate(dir.path())
        .unwrap()
        .pending(&other)
        .await
        .unwrap();
    assert_eq!((a.migrations().len(), b.migrations().len()), (2, 2));
    let (pa, pb) = (a.plan().unwrap(), b.plan().unwrap());
    let (ra, rb) = tokio::join!(run(&pa), run(&pb));
    let mut outcomes = [ra.outcome, rb.outcome];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        [Outcome::Committed, Outcome::RolledBack],
        "{}\n{}",
        ra.to_markdown(),
        rb.to_markdown()
    );
    let loser = if ra.outcome == Outcome::RolledBack {
        &ra
    } else {
        &rb
    };
    let why = loser
        .steps
        .iter()
        .filter_map(|s| s.last_error.clone())
        .collect::<Vec<_>>()
        .join("; ");
    assert!(why.contains("conflict"), "{why}");
    assert_eq!(
        rows(&db, "SELECT n::text FROM events ORDER BY n").await,
        ["1", "2"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT version::text || ' ' || dirty::text FROM schema_migrations"
        )
        .await,
        ["2 false"]
    );
}

// ---------------------------------------------------------------------------------------
// 4. The connection killed mid-migration.
// ---------------------------------------------------------------------------------------

/// `pg_terminate_backend` of the session running a long migration: the run ends either
/// committed (the migration retried) or rolled back, never half-applied, and the ledger
/// says which.
#[tokio::test]
async fn a_connection_killed_mid_migration_leaves_the_ledger_true() {
    let db = TestDb::new("adv_killed").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("1_create.sql", "CREATE TABLE k (id int PRIMARY KEY);\n"),
            (
                "2_slow.up.sql",
                "INSERT INTO k VALUES (1); SELECT pg_sleep(2) /* adv-slow */;\nINSERT INTO k VALUES (2);\n",
            ),
            ("2_slow.down.sql", "DELETE FROM k WHERE id IN (1, 2);\n"),
        ],
    );
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let plan = p.plan().unwrap();
    let killer = async {
        let c = db.checker().await;
        let mut killed = 0;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            killed = c
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE query LIKE '%adv-slow%' AND pid <> pg_backend_pid() \
                     AND datname = current_database() \
                     AND query NOT LIKE '%pg_stat_activity%'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
            if killed > 0 {
                break;
            }
        }
        killed
    };
    let (report, killed) = tokio::join!(run(&plan), killer);
    assert_eq!(
        killed, 1,
        "the slow migration's session was found and killed"
    );
    let ledger = rows(
        &db,
        "SELECT version::text FROM _sqlx_migrations ORDER BY version",
    )
    .await;
    match report.outcome {
        Outcome::Committed => {
            assert_eq!(ledger, ["1", "2"]);
            assert_eq!(
                rows(&db, "SELECT id::text FROM k ORDER BY id").await,
                ["1", "2"]
            );
        }
        Outcome::RolledBack => {
            assert!(ledger.is_empty(), "{ledger:?}");
            assert_eq!(
                db.scalar("SELECT coalesce(to_regclass('k')::text, 'none')")
                    .await
                    .as_deref(),
                Some("none")
            );
        }
        o => panic!("{o:?}: {}", report.to_markdown()),
    }
}

/// A database search path that puts a schema of shadowing functions before `pg_catalog`,
/// a 200 ms `statement_timeout` and a 50 ms `lock_timeout`: the ledger's own SQL never
/// calls a shadowing function, and a migration slower than the database's timeout runs
/// under the migration's own timeouts.
#[tokio::test]
async fn ledger_sql_ignores_shadowing_functions_and_the_database_timeouts() {
    let db = TestDb::with_settings(
        "adv_shadow",
        &[
            "search_path = public, evil, pg_catalog",
            "statement_timeout = '200ms'",
            "lock_timeout = '50ms'",
        ],
    )
    .await;
    db.exec(
        r#"
CREATE SCHEMA evil;
CREATE TABLE evil.calls (fn text, query text);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT, SELECT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('clock_timestamp', current_query()); RETURN pg_catalog.clock_timestamp(); END $f$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('now', current_query()); RETURN pg_catalog.now(); END $f$;
CREATE FUNCTION evil.encode(bytea, text) RETURNS text LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('encode', current_query()); RETURN pg_catalog.encode($1, $2); END $f$;
CREATE FUNCTION evil.to_char(timestamp, text) RETURNS text LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO evil.calls VALUES ('to_char', current_query()); RETURN pg_catalog.to_char($1, $2); END $f$;
"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            ("1_create.sql", "CREATE TABLE t (id int PRIMARY KEY);\n"),
            (
                "2_slow.up.sql",
                "INSERT INTO t VALUES (1); SELECT pg_catalog.pg_sleep(0.4);\n",
            ),
            ("2_slow.down.sql", "DELETE FROM t WHERE id = 1;\n"),
        ],
    );
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let report = run(&p.plan().unwrap()).await;
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    let again = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(again.migrations().len(), 0);
    assert_eq!(
        rows(
            &db,
            "SELECT version::text FROM public._sqlx_migrations ORDER BY version"
        )
        .await,
        ["1", "2"]
    );
    let rf = tempfile::tempdir().unwrap();
    write(rf.path(), &[("V1__r.sql", "CREATE TABLE r (id int);\n")]);
    let p = Migrations::refinery(rf.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    assert_eq!(
        rows(&db, "SELECT fn || ': ' || query FROM evil.calls").await,
        Vec::<String>::new()
    );
}

/// The same kill during a dbmate `transaction:false` migration, whose statements commit
/// one by one: the run ends committed or rolled back by its down, never with the first
/// statement's row kept and no ledger row (or a ledger row and a missing statement).
#[tokio::test]
async fn a_connection_killed_mid_non_transactional_migration_leaves_the_ledger_true() {
    let db = TestDb::new("adv_killed_nt").await;
    db.exec("CREATE TABLE k (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[(
            "20240101000001_slow.sql",
            "-- migrate:up transaction:false\n\
             INSERT INTO k VALUES (1) ON CONFLICT DO NOTHING;\n\
             SELECT pg_sleep(2) /* adv-slow-nt */;\n\
             INSERT INTO k VALUES (2) ON CONFLICT DO NOTHING;\n\
             -- migrate:down transaction:false\n\
             DELETE FROM k WHERE id IN (1, 2);\n",
        )],
    );
    let p = Migrations::dbmate(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let plan = p.plan().unwrap();
    let killer = async {
        let c = db.checker().await;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let killed = c
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE query LIKE '%adv-slow-nt%' AND pid <> pg_backend_pid() \
                     AND datname = current_database() \
                     AND query NOT LIKE '%pg_stat_activity%'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0);
            if killed > 0 {
                return killed;
            }
        }
        0
    };
    let (report, killed) = tokio::join!(run(&plan), killer);
    assert_eq!(
        killed, 1,
        "the slow migration's session was found and killed"
    );
    let ledger = rows(&db, "SELECT version FROM schema_migrations").await;
    let k = rows(&db, "SELECT id::text FROM k ORDER BY id").await;
    match report.outcome {
        Outcome::Committed => {
            assert_eq!(ledger, ["20240101000001"]);
            assert_eq!(k, ["1", "2"]);
        }
        Outcome::RolledBack => {
            assert!(ledger.is_empty(), "{ledger:?}");
            assert!(k.is_empty(), "{k:?}");
        }
        o => panic!("{o:?}: {}", report.to_markdown()),
    }
}

/// Two runners of a folder without downs, whose migrations a table copy covers: the
/// runner that loses restores nothing the winner wrote.
#[tokio::test]
async fn the_losing_runner_restores_nothing_the_winner_wrote() {
    let db = TestDb::new("adv_two_copies").await;
    db.exec("CREATE TABLE events (n int NOT NULL); INSERT INTO events VALUES (0)")
        .await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "1_first.sql",
                "INSERT INTO events SELECT 1 FROM pg_catalog.pg_sleep(0.5);\n",
            ),
            ("2_second.sql", "UPDATE events SET n = n + 10;\n"),
        ],
    );
    let plan_of = |db: Database| {
        let dir = dir.path().to_path_buf();
        async move {
            Migrations::sqlx(dir)
                .unwrap()
                .checkpoint_kind(rollback_postgres::CheckpointKind::Snapshot)
                .pending(&db)
                .await
                .unwrap()
                .plan()
                .unwrap()
        }
    };
    let pa = plan_of(db.db.clone()).await;
    let pb = plan_of(Database::connect(&db.url).unwrap()).await;
    let (ra, rb) = tokio::join!(run(&pa), run(&pb));
    let mut outcomes = [ra.outcome, rb.outcome];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        [Outcome::Committed, Outcome::RolledBack],
        "{}\n{}",
        ra.to_markdown(),
        rb.to_markdown()
    );
    assert_eq!(
        rows(&db, "SELECT n::text FROM events ORDER BY n").await,
        ["10", "11"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT version::text FROM _sqlx_migrations ORDER BY version"
        )
        .await,
        ["1", "2"]
    );
}

/// Two runners racing on a migration that runs outside a transaction (a concurrent index
/// build): it runs once, the ledger records it once, the second runner fails with a
/// conflict.
#[tokio::test]
async fn two_runners_of_a_non_transactional_migration_run_it_once() {
    let db = TestDb::new("adv_two_nt").await;
    db.exec("CREATE TABLE events (n int NOT NULL)").await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        &[
            (
                "1_index.up.sql",
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_n ON events (n);\n\
                 INSERT INTO events SELECT 1 FROM pg_catalog.pg_sleep(0.5);\n",
            ),
            (
                "1_index.down.sql",
                "DROP INDEX CONCURRENTLY IF EXISTS events_n;\nDELETE FROM events WHERE n = 1;\n",
            ),
        ],
    );
    let a = Migrations::golang_migrate(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let other = Database::connect(&db.url).unwrap();
    let b = Migrations::golang_migrate(dir.path())
        .unwrap()
        .pending(&other)
        .await
        .unwrap();
    let (pa, pb) = (a.plan().unwrap(), b.plan().unwrap());
    let (ra, rb) = tokio::join!(run(&pa), run(&pb));
    let mut outcomes = [ra.outcome, rb.outcome];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        [Outcome::Committed, Outcome::RolledBack],
        "{}\n{}",
        ra.to_markdown(),
        rb.to_markdown()
    );
    assert_eq!(rows(&db, "SELECT n::text FROM events").await, ["1"]);
    assert_eq!(
        rows(
            &db,
            "SELECT version::text || ' ' || dirty::text FROM schema_migrations"
        )
        .await,
        ["1 false"]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pg_indexes WHERE indexname = 'events_n'")
            .await,
        1
    );
}
