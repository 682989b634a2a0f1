//! Migration folders (sqlx, golang-migrate) turned into plans, on the real server: the
//! tool's ledger written with each migration and removed on rollback, pending computed
//! from it, transaction wrappers, checksum and dirty errors, automatic covering
//! checkpoints.

mod common;

use common::TestDb;
use rollback_core::journal::MemoryJournal;
use rollback_core::{Executor, Outcome};
use rollback_postgres::{MigrationError, Migrations, Revert};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrations")
        .join(name)
}

/// A copy of a fixture folder, plus extra files.
fn folder(name: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    for (f, text) in extra {
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    dir
}

async fn run(db: &TestDb, plan: &rollback_core::Plan) -> rollback_core::RunReport {
    let _ = db;
    Executor::new(MemoryJournal::new()).run(plan).await.unwrap()
}

async fn sqlx_ledger(db: &TestDb) -> Vec<String> {
    let c = db.db.client().await.unwrap();
    c.query(
        "SELECT version::text || ' ' || description || ' ' || success::text || ' ' || encode(checksum, 'hex') \
         FROM _sqlx_migrations ORDER BY version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn sha384_hex(path: &Path) -> String {
    use sha2::Digest;
    sha2::Sha384::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn sqlx_folder_without_downs_is_reversible_and_keeps_the_ledger_true() {
    let db = TestDb::new("mig_sqlx").await;
    let dir = folder(
        "sqlx",
        &[(
            "20240101000006_duplicate_user.sql",
            "INSERT INTO users (id, email) VALUES (51, 'user1@example.com');\n",
        )],
    );
    // First half, committed.
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .target(20240101000002)
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.migrations().len(), 2);
    let report = run(&db, &p.plan().unwrap()).await;
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    let ledger = sqlx_ledger(&db).await;
    assert_eq!(
        ledger,
        vec![
            format!(
                "20240101000001 create users true {}",
                sha384_hex(&dir.path().join("20240101000001_create_users.sql"))
            ),
            format!(
                "20240101000002 add status true {}",
                sha384_hex(&dir.path().join("20240101000002_add_status.sql"))
            ),
        ]
    );
    assert!(
        db.count("SELECT count(*) FROM _sqlx_migrations WHERE execution_time < 0")
            .await
            == 0
    );
    let before = db.dump();

    // The rest: every one is covered by a checkpoint (no downs); the last one fails.
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.applied_count(), 2);
    let ids: Vec<String> = p.migrations().iter().map(|m| m.id()).collect();
    assert_eq!(
        ids,
        [
            "20240101000003_index_email",
            "20240101000004_rename_total",
            "20240101000005_drop_legacy_audit",
            "20240101000006_duplicate_user"
        ]
    );
    let reverts = p.reverts().unwrap();
    for (id, r) in &reverts {
        assert!(
            matches!(r, Revert::Checkpoint(res) if !res.is_empty()),
            "{id}: {r:?}"
        );
    }
    let plan = p.plan().unwrap();
    let dry = plan.dry_run().to_string();
    assert!(dry.contains("20240101000005_drop_legacy_audit"), "{dry}");
    let report = run(&db, &plan).await;
    common::assert_rolled_back_with_ledger_proven(&report);
    assert_eq!(
        sqlx_ledger(&db).await,
        ledger,
        "ledger as after the first half"
    );
    assert_eq!(db.count("SELECT count(*) FROM legacy_audit").await, 20);
    common::assert_same_dump(
        &before,
        &db.dump(),
        "after rolling back the rest of a sqlx folder",
    );

    // Without the failing file the rest commits, and a second pass finds nothing pending.
    std::fs::remove_file(dir.path().join("20240101000006_duplicate_user.sql")).unwrap();
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let report = run(&db, &p.plan().unwrap()).await;
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    assert_eq!(sqlx_ledger(&db).await.len(), 5);
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert!(p.migrations().is_empty());
}

#[tokio::test]
async fn sqlx_checksum_mismatch_and_failed_rows_are_refused_before_anything_runs() {
    let db = TestDb::new("mig_sqlx_sum").await;
    let dir = folder("sqlx", &[]);
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .target(20240101000001)
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(
        run(&db, &p.plan().unwrap()).await.outcome,
        Outcome::Committed
    );
    let f = dir.path().join("20240101000001_create_users.sql");
    let mut text = std::fs::read_to_string(&f).unwrap();
    text.push_str("-- edited after it ran\n");
    std::fs::write(&f, text).unwrap();
    match Migrations::sqlx(dir.path()).unwrap().pending(&db.db).await {
        Err(MigrationError::ChecksumMismatch { version, file, .. }) => {
            assert_eq!(version, "20240101000001");
            assert_eq!(file, f);
        }
        other => panic!("{other:?}"),
    }
    db.exec("UPDATE _sqlx_migrations SET success = false").await;
    match Migrations::sqlx(dir.path()).unwrap().pending(&db.db).await {
        Err(MigrationError::Dirty { version, .. }) => assert_eq!(version, "20240101000001"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn golang_migrate_wrappers_dirty_flag_and_rollback_by_downs() {
    let db = TestDb::new("mig_golang").await;
    let dir = folder(
        "golang-migrate",
        &[
            (
                "6_fail.up.sql",
                "BEGIN;\nUPDATE users SET status = 'x';\nSELECT 1/0;\nCOMMIT;\n",
            ),
            ("6_fail.down.sql", "UPDATE users SET status = 'active';\n"),
        ],
    );
    // The tool's own history: versions 1 and 2 applied by it.
    db.exec(
        "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
         INSERT INTO schema_migrations VALUES (2, false);
         CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, status text);
         CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id), total numeric(12, 2) NOT NULL);
         INSERT INTO users SELECT g, 'user' || g || '@example.com', 'active' FROM generate_series(1, 50) g;
         INSERT INTO orders SELECT g, 1 + g % 50, g * 1.5 FROM generate_series(1, 200) g;",
    )
    .await;
    let before = db.dump();
    let p = Migrations::golang_migrate(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let versions: Vec<&str> = p.migrations().iter().map(|m| m.version.as_str()).collect();
    assert_eq!(versions, ["3", "4", "5", "6"]);
    for (id, r) in p.reverts().unwrap() {
        assert_eq!(r, Revert::Down, "{id}");
    }
    let report = run(&db, &p.plan().unwrap()).await;
    common::assert_rolled_back_with_ledger_proven(&report);
    assert_eq!(
        db.scalar("SELECT version || ' ' || dirty FROM schema_migrations")
            .await
            .as_deref(),
        Some("2 false")
    );
    common::assert_same_dump(
        &before,
        &db.dump(),
        "after rolling back a golang-migrate folder",
    );

    // Up to 5 commits; the tool's single row says 5.
    let p = Migrations::golang_migrate(dir.path())
        .unwrap()
        .target(5)
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(
        run(&db, &p.plan().unwrap()).await.outcome,
        Outcome::Committed
    );
    assert_eq!(
        db.scalar("SELECT version || ' ' || dirty FROM schema_migrations")
            .await
            .as_deref(),
        Some("5 false")
    );
    assert_eq!(db.count("SELECT count(*) FROM schema_migrations").await, 1);

    // A dirty version is reported, and left as it is.
    db.exec("UPDATE schema_migrations SET dirty = true").await;
    match Migrations::golang_migrate(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
    {
        Err(MigrationError::Dirty { version, .. }) => assert_eq!(version, "5"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        db.scalar("SELECT dirty::text FROM schema_migrations")
            .await
            .as_deref(),
        Some("true")
    );
}

#[tokio::test]
async fn transaction_control_inside_a_file_is_refused_at_plan_time_with_file_and_line() {
    let db = TestDb::new("mig_txctl").await;
    let dir = folder(
        "golang-migrate",
        &[(
            "6_two_transactions.up.sql",
            "-- two transactions in one file\nUPDATE users SET status = 'a';\nCOMMIT;\nUPDATE users SET status = 'b';\n",
        )],
    );
    let p = Migrations::golang_migrate(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    match p.plan() {
        Err(MigrationError::TransactionControl { file, line, .. }) => {
            assert_eq!(file, dir.path().join("6_two_transactions.up.sql"));
            assert_eq!(line, 3);
        }
        other => panic!("{other:?}"),
    }
    // Nothing ran: the ledger is empty and no table was created.
    assert_eq!(db.count("SELECT count(*) FROM schema_migrations").await, 0);
    assert_eq!(db.scalar("SELECT to_regclass('users')::text").await, None);
    // A session-level SET is refused too, with its line.
    let dir = folder(
        "golang-migrate",
        &[("6_set.up.sql", "\n\nSET statement_timeout = 0;\n")],
    );
    let p = Migrations::golang_migrate(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    match p.plan() {
        Err(MigrationError::SessionState { line, .. }) => assert_eq!(line, 3),
        other => panic!("{other:?}"),
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

async fn diesel_ledger(db: &TestDb) -> Vec<String> {
    let c = db.db.client().await.unwrap();
    c.query(
        "SELECT version FROM __diesel_schema_migrations ORDER BY version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn diesel_folders_keep_diesels_table_and_roll_back_by_downs() {
    let db = TestDb::new("mig_diesel").await;
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture("diesel"), dir.path());
    let fail = dir.path().join("2024-01-06-000000_duplicate_user");
    std::fs::create_dir(&fail).unwrap();
    std::fs::write(
        fail.join("up.sql"),
        "INSERT INTO users (id, email) VALUES (51, 'user1@example.com');\n",
    )
    .unwrap();
    std::fs::write(fail.join("down.sql"), "DELETE FROM users WHERE id = 51;\n").unwrap();

    let p = Migrations::diesel(dir.path())
        .unwrap()
        .target(20240102000000)
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(
        run(&db, &p.plan().unwrap()).await.outcome,
        Outcome::Committed
    );
    let half = diesel_ledger(&db).await;
    assert_eq!(half, ["20240101000000", "20240102000000"]);
    let before = db.dump();

    let p = Migrations::diesel(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let ids: Vec<String> = p.migrations().iter().map(|m| m.id()).collect();
    assert_eq!(
        ids,
        [
            "20240103000000_index_email",
            "20240104000000_rename_total",
            "20240105000000_orders_note",
            "20240106000000_duplicate_user"
        ]
    );
    let plan = p.plan().unwrap();
    assert!(
        plan.dry_run().to_string().contains("non-transactional"),
        "metadata.toml's run_in_transaction = false: {}",
        plan.dry_run()
    );
    let report = run(&db, &plan).await;
    common::assert_rolled_back_with_ledger_proven(&report);
    assert_eq!(diesel_ledger(&db).await, half);
    common::assert_same_dump(
        &before,
        &db.dump(),
        "after rolling back the rest of a diesel folder",
    );

    std::fs::remove_dir_all(&fail).unwrap();
    let p = Migrations::diesel(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(
        run(&db, &p.plan().unwrap()).await.outcome,
        Outcome::Committed
    );
    assert_eq!(diesel_ledger(&db).await.len(), 5);
    assert_eq!(
        db.scalar("SELECT to_regclass('users_email_key')::text")
            .await
            .as_deref(),
        Some("users_email_key")
    );
}
