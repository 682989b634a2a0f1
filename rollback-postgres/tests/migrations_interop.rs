//! Interop with the real sqlx-cli, refinery_cli and sqitch (`ROLLBACK_TEST_SQLX_BIN`,
//! `ROLLBACK_TEST_REFINERY_BIN`, `ROLLBACK_TEST_SQITCH_BIN`, installed by
//! scripts/lib/servers.sh): the tool applies the first half of a folder, this library the
//! rest, the last one fails and everything it did is rolled back; the tool's own status
//! and `pg_dump` then show what the tool alone would have left. Without the failing file
//! the rest commits, and the tool sees it applied (its own checksum and id checks pass).

mod common;

use common::TestDb;
use rollback_core::journal::MemoryJournal;
use rollback_core::{Executor, Outcome, RunReport};
use rollback_postgres::{Migrations, Revert};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tool(var: &str, installer: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(b) if Path::new(&b).exists() => Some(b),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{var} is not set or missing, and CI=true: scripts/lib/servers.sh installs it ({installer})");
            }
            eprintln!(
                "skipped: {var} is not set (scripts/lib/servers.sh installs it with {installer})"
            );
            None
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrations")
        .join(name)
}

/// The first `n` files of a fixture folder, plus extra files.
fn folder(name: &str, n: usize, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(fixture(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files.iter().take(n) {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    for (f, text) in extra {
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    dir
}

/// Runs a tool; its stdout and stderr together. Panics when it fails unless `may_fail`.
fn run_tool(cmd: &mut Command, may_fail: bool) -> String {
    let out = cmd.output().expect("run the tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() || may_fail, "{cmd:?}: {text}");
    text
}

fn no_tls(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=disable")
}

async fn run(plan: &rollback_core::Plan) -> RunReport {
    Executor::new(MemoryJournal::new()).run(plan).await.unwrap()
}

const DUPLICATE_USER: &str = "INSERT INTO users (id, email) VALUES (51, 'user1@example.com');\n";

// ---------------------------------------------------------------------------------------
// sqlx-cli
// ---------------------------------------------------------------------------------------

fn sqlx(bin: &str, url: &str, dir: &Path, args: &[&str]) -> String {
    run_tool(
        Command::new(bin)
            .arg("migrate")
            .args(args)
            .arg("--source")
            .arg(dir)
            .arg("--database-url")
            .arg(no_tls(url))
            .arg("--no-dotenv")
            .current_dir(dir),
        false,
    )
}

/// `sqlx migrate info`'s lines: `<version>/<installed|pending> <description>`.
fn sqlx_info(bin: &str, url: &str, dir: &Path) -> Vec<String> {
    sqlx(bin, url, dir, &["info"])
        .lines()
        .filter(|l| l.contains("/installed") || l.contains("/pending"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// sqlx-cli keeps `_sqlx_migrations` in the first schema of the database's search path
/// and records `0001_…` as version 1: the library reads and writes the same table and
/// rows, and `sqlx migrate info` agrees.
#[tokio::test]
async fn sqlx_cli_and_the_library_share_the_ledger_under_a_search_path_and_padded_versions() {
    let Some(bin) = tool("ROLLBACK_TEST_SQLX_BIN", "rb_install_sqlx_cli") else {
        return;
    };
    let db = TestDb::with_settings("mig_sqlx_path", &["search_path = app, public"]).await;
    db.exec("CREATE SCHEMA app").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_create_t.sql"),
        "CREATE TABLE t (id int PRIMARY KEY);\n",
    )
    .unwrap();
    sqlx(&bin, &db.url, dir.path(), &["run"]);
    std::fs::write(
        dir.path().join("0002_fill_t.up.sql"),
        "INSERT INTO t VALUES (1);\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("0002_fill_t.down.sql"),
        "DELETE FROM t WHERE id = 1;\n",
    )
    .unwrap();
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.applied_count(), 1, "the tool's row for 0001 is found");
    let ids: Vec<String> = p.migrations().iter().map(|m| m.id()).collect();
    assert_eq!(ids, ["0002_fill_t"]);
    let report = run(&p.plan().unwrap()).await;
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    let info = sqlx_info(&bin, &db.url, dir.path());
    assert_eq!(info.len(), 2, "{info:?}");
    assert!(info.iter().all(|l| l.contains("/installed")), "{info:?}");
    assert_eq!(
        db.count("SELECT count(*) FROM app._sqlx_migrations").await,
        2
    );
    assert_eq!(db.count("SELECT count(*) FROM app.t").await, 1);
}

#[tokio::test]
async fn sqlx_cli_half_by_the_tool_rest_by_the_library_rolled_back_then_committed() {
    let Some(bin) = tool("ROLLBACK_TEST_SQLX_BIN", "rb_install_sqlx_cli") else {
        return;
    };
    let db = TestDb::new("mig_sqlxcli").await;
    let fail = ("20240101000006_duplicate_user.sql", DUPLICATE_USER);
    let half = folder("sqlx-cli", 2, &[]);
    sqlx(&bin, &db.url, half.path(), &["run"]);
    let full = folder("sqlx-cli", 5, &[fail]);
    let expected = sqlx_info(&bin, &db.url, full.path());
    assert_eq!(expected.len(), 6, "{expected:?}");
    assert_eq!(
        expected.iter().filter(|l| l.contains("/installed")).count(),
        2,
        "{expected:?}"
    );
    let before = db.dump();

    let p = Migrations::sqlx(full.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.applied_count(), 2);
    assert_eq!(p.migrations().len(), 4);
    // No downs: every one is undone by a checkpoint.
    let reverts = p.reverts().unwrap();
    assert!(
        reverts
            .iter()
            .all(|(_, r)| matches!(r, Revert::Checkpoint(c) if !c.is_empty())),
        "{reverts:?}"
    );
    let report = run(&p.plan().unwrap()).await;
    common::assert_rolled_back_with_ledger_proven(&report);
    assert_eq!(
        sqlx_info(&bin, &db.url, full.path()),
        expected,
        "sqlx migrate info"
    );
    common::assert_same_dump(
        &before,
        &db.dump(),
        "after rolling back the rest of a sqlx folder",
    );

    // Without the failing file the rest commits; sqlx sees every migration installed, and
    // its own run (which checks each applied file's checksum) has nothing to do.
    let rest = folder("sqlx-cli", 5, &[]);
    let p = Migrations::sqlx(rest.path())
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
    let info = sqlx_info(&bin, &db.url, rest.path());
    assert_eq!(info.len(), 5, "{info:?}");
    assert!(info.iter().all(|l| l.contains("/installed")), "{info:?}");
    sqlx(&bin, &db.url, rest.path(), &["run"]);
    // A file changed after it ran: sqlx refuses it, and so does the library.
    std::fs::write(
        rest.path().join("20240101000005_drop_legacy_audit.sql"),
        "DROP TABLE IF EXISTS legacy_audit;\n",
    )
    .unwrap();
    let err = Migrations::sqlx(rest.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap_err();
    assert!(
        matches!(err, rollback_postgres::MigrationError::ChecksumMismatch { ref version, .. } if version == "20240101000005"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// refinery_cli
// ---------------------------------------------------------------------------------------

fn refinery(bin: &str, url: &str, dir: &Path, args: &[&str]) -> String {
    run_tool(
        Command::new(bin)
            .arg("migrate")
            .arg("-e")
            .arg("ROLLBACK_REFINERY_URL")
            .arg("-p")
            .arg(dir)
            .args(args)
            .env("ROLLBACK_REFINERY_URL", url)
            .env("RUST_LOG", "info")
            .current_dir(dir),
        false,
    )
}

/// refinery's history: `version name checksum`.
async fn refinery_history(db: &TestDb) -> Vec<String> {
    let c = db.db.client().await.unwrap();
    c.query(
        "SELECT version::text || ' ' || name || ' ' || checksum FROM refinery_schema_history ORDER BY version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn refinery_cli_half_by_the_tool_rest_by_the_library_rolled_back_then_committed() {
    let Some(bin) = tool("ROLLBACK_TEST_REFINERY_BIN", "rb_install_refinery_cli") else {
        return;
    };
    let db = TestDb::new("mig_refinery").await;
    let fail = ("V6__duplicate_user.sql", DUPLICATE_USER);
    let half = folder("refinery", 2, &[]);
    refinery(&bin, &db.url, half.path(), &[]);
    let expected = refinery_history(&db).await;
    assert_eq!(expected.len(), 2, "{expected:?}");
    // The library computes the checksum refinery wrote.
    let all = Migrations::refinery(half.path()).unwrap();
    for (m, row) in all.all().iter().zip(&expected) {
        assert_eq!(
            row,
            &format!("{} {} {}", m.version, m.name, m.checksum().unwrap())
        );
    }
    let before = db.dump();

    let full = folder("refinery", 5, &[fail]);
    let p = Migrations::refinery(full.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.applied_count(), 2);
    let ids: Vec<String> = p.migrations().iter().map(|m| m.id()).collect();
    assert_eq!(
        ids,
        [
            "3_index_email",
            "4_rename_total",
            "5_drop_legacy_audit",
            "6_duplicate_user"
        ]
    );
    let report = run(&p.plan().unwrap()).await;
    common::assert_rolled_back_with_ledger_proven(&report);
    assert_eq!(refinery_history(&db).await, expected, "refinery's history");
    common::assert_same_dump(
        &before,
        &db.dump(),
        "after rolling back the rest of a refinery folder",
    );

    // Without the failing file the rest commits; refinery, told to abort on a divergent
    // (checksum) or missing migration, finds nothing to apply.
    let rest = folder("refinery", 5, &[]);
    let p = Migrations::refinery(rest.path())
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
    assert_eq!(refinery_history(&db).await.len(), 5);
    let out = refinery(&bin, &db.url, rest.path(), &["-d", "-m"]);
    assert!(out.contains("no migrations to apply"), "{out}");
    // refinery itself applies what comes next after the library's run.
    let next = folder(
        "refinery",
        5,
        &[(
            "V7__orders_note.sql",
            "ALTER TABLE orders ADD COLUMN note text;\n",
        )],
    );
    refinery(&bin, &db.url, next.path(), &["-d", "-m"]);
    assert_eq!(refinery_history(&db).await.len(), 6);
}

// ---------------------------------------------------------------------------------------
// sqitch
// ---------------------------------------------------------------------------------------

/// A copy of the sqitch fixture, with `extra` lines appended to the plan and extra files.
fn sqitch_project(extra_plan: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("sqitch");
    for sub in ["deploy", "revert", "verify"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(sub).join(e.file_name())).unwrap();
        }
    }
    let plan = std::fs::read_to_string(src.join("sqitch.plan")).unwrap();
    std::fs::write(dir.path().join("sqitch.plan"), plan + extra_plan).unwrap();
    for (f, text) in extra {
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    dir
}

fn sqitch(bin: &str, url: &str, dir: &Path, args: &[&str], may_fail: bool) -> String {
    let target = format!("db:{url}");
    let mut cmd = Command::new(bin);
    cmd.arg("--chdir")
        .arg(dir)
        .args(args)
        .arg("--target")
        .arg(target)
        .env("SQITCH_FULLNAME", "Release Bot")
        .env("SQITCH_EMAIL", "release@example.com")
        .env("SQITCH_CONFIG", dir.join("no-sqitch.conf"))
        .env("SQITCH_USER_CONFIG", dir.join("no-user.conf"))
        .env("SQITCH_SYSTEM_CONFIG", dir.join("no-system.conf"))
        .env("PGSSLMODE", "disable");
    run_tool(&mut cmd, may_fail)
}

/// `sqitch status` without its first line (the target, which names the database).
fn sqitch_status(bin: &str, url: &str, dir: &Path) -> String {
    sqitch(bin, url, dir, &["status", "--show-tags"], true)
        .lines()
        .filter(|l| !l.starts_with("# On database"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last deployed change `sqitch status` names.
fn deployed_name(status: &str) -> &str {
    status
        .lines()
        .find_map(|l| l.strip_prefix("# Name:"))
        .map(str::trim)
        .unwrap_or_default()
}

/// A data dump without sqitch's event log, which records every deploy and revert.
fn without_events(dump: (String, String)) -> (String, String) {
    let mut out = Vec::new();
    let mut skip = false;
    for l in dump.1.lines() {
        if l.starts_with("COPY sqitch.events ") {
            skip = true;
        }
        if !skip {
            out.push(l);
        }
        if skip && l == "\\." {
            skip = false;
        }
    }
    (dump.0, out.join("\n"))
}

async fn events(db: &TestDb) -> Vec<String> {
    let c = db.db.client().await.unwrap();
    c.query(
        "SELECT event || ' ' || change FROM sqitch.events ORDER BY committed_at",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn sqitch_half_by_the_tool_rest_by_the_library_rolled_back_then_committed() {
    let Some(bin) = tool("ROLLBACK_TEST_SQITCH_BIN", "rb_install_sqitch") else {
        return;
    };
    let db = TestDb::new("mig_sqitch").await;
    let full = sqitch_project(
        "duplicate_user [index_email] 2024-01-02T09:00:05Z Grace Hopper <grace@example.com> # Fails: the email is taken.\n",
        &[
            ("deploy/duplicate_user.sql", DUPLICATE_USER),
            (
                "revert/duplicate_user.sql",
                "DELETE FROM users WHERE id = 51;\n",
            ),
        ],
    );
    // The first half (up to the tag) by sqitch itself.
    sqitch(
        &bin,
        &db.url,
        full.path(),
        &["deploy", "--to", "@v1.0"],
        false,
    );
    let expected = sqitch_status(&bin, &db.url, full.path());
    assert_eq!(deployed_name(&expected), "user_count", "{expected}");
    assert!(expected.contains("# Tag:      @v1.0"), "{expected}");
    assert!(expected.contains("* duplicate_user"), "{expected}");
    let before = db.dump();
    let events_before = events(&db).await;

    let p = Migrations::sqitch(full.path())
        .unwrap()
        .committer("Release Bot", "release@example.com")
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(
        p.applied_count(),
        3,
        "sqitch's change ids are the library's"
    );
    let names: Vec<&str> = p.migrations().iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "index_email",
            "rename_total",
            "user_count",
            "drop_legacy_audit",
            "duplicate_user"
        ]
    );
    let reverts = p.reverts().unwrap();
    assert!(
        matches!(&reverts[3].1, Revert::Checkpoint(r) if r.iter().any(|x| x.ends_with("public.legacy_audit"))),
        "{reverts:?}"
    );
    let plan = p.plan().unwrap();
    // Verify scripts are post-step verifiers.
    let dry = plan.dry_run().to_string();
    assert!(dry.contains("verify:6_user_count"), "{dry}");
    let report = run(&plan).await;
    common::assert_rolled_back_with_ledger_proven(&report);
    assert_eq!(
        sqitch_status(&bin, &db.url, full.path()),
        expected,
        "sqitch status"
    );
    common::assert_same_dump(
        &without_events(before),
        &without_events(db.dump()),
        "after rolling back the rest of a sqitch plan",
    );
    // The event log tells what happened: each change deployed, then reverted.
    let ev = events(&db).await;
    assert_eq!(&ev[..events_before.len()], &events_before[..]);
    let added: Vec<&str> = ev[events_before.len()..]
        .iter()
        .map(String::as_str)
        .collect();
    assert!(added.contains(&"deploy index_email"), "{added:?}");
    assert!(added.contains(&"revert index_email"), "{added:?}");
    assert_eq!(
        added.iter().filter(|e| e.starts_with("deploy")).count(),
        added.iter().filter(|e| e.starts_with("revert")).count(),
        "{added:?}"
    );

    // Without the failing change the rest commits; sqitch says up to date, its verify
    // passes, and it can revert the library's changes itself.
    let rest = sqitch_project("", &[]);
    let p = Migrations::sqitch(rest.path())
        .unwrap()
        .committer("Release Bot", "release@example.com")
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
    let st = sqitch_status(&bin, &db.url, rest.path());
    assert_eq!(deployed_name(&st), "drop_legacy_audit", "{st}");
    assert!(st.contains("Nothing to deploy"), "{st}");
    let out = sqitch(&bin, &db.url, rest.path(), &["verify"], false);
    assert!(out.contains("Verify successful"), "{out}");
    sqitch(
        &bin,
        &db.url,
        rest.path(),
        &["revert", "-y", "--to", "@v1.0"],
        false,
    );
    let st = sqitch_status(&bin, &db.url, rest.path());
    assert_eq!(deployed_name(&st), "user_count", "{st}");
}

#[tokio::test]
async fn sqitch_reads_a_registry_the_library_created_and_deployed() {
    let Some(bin) = tool("ROLLBACK_TEST_SQITCH_BIN", "rb_install_sqitch") else {
        return;
    };
    let db = TestDb::new("mig_sqitch_new").await;
    let dir = sqitch_project("", &[]);
    let p = Migrations::sqitch(dir.path())
        .unwrap()
        .committer("Release Bot", "release@example.com")
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.applied_count(), 0);
    let report = run(&p.plan().unwrap()).await;
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    let st = sqitch_status(&bin, &db.url, dir.path());
    assert_eq!(deployed_name(&st), "drop_legacy_audit", "{st}");
    assert!(st.contains("Nothing to deploy"), "{st}");
    let out = sqitch(&bin, &db.url, dir.path(), &["verify"], false);
    assert!(out.contains("Verify successful"), "{out}");
    // sqitch can take it all back by its own revert scripts.
    sqitch(&bin, &db.url, dir.path(), &["revert", "-y"], false);
    let st = sqitch_status(&bin, &db.url, dir.path());
    assert!(st.contains("No changes deployed"), "{st}");
}
