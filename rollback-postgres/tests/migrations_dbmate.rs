//! Interop with the real dbmate (`ROLLBACK_TEST_DBMATE_BIN`, installed by
//! scripts/lib/servers.sh): the tool applies the first half of a folder, this library the
//! rest, the last one fails and everything it did is rolled back; `dbmate status` then
//! says what dbmate alone would have left. A committed run is then seen as applied by
//! dbmate, which can roll it back itself.

mod common;

use common::TestDb;
use rollback_core::journal::MemoryJournal;
use rollback_core::{Executor, Outcome};
use rollback_postgres::{Migrations, Revert};
use std::path::{Path, PathBuf};
use std::process::Command;

fn dbmate_bin() -> Option<String> {
    match std::env::var("ROLLBACK_TEST_DBMATE_BIN") {
        Ok(b) if Path::new(&b).exists() => Some(b),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("ROLLBACK_TEST_DBMATE_BIN is not set or missing, and CI=true: scripts/lib/servers.sh installs dbmate (rb_install_dbmate)");
            }
            eprintln!("skipped: ROLLBACK_TEST_DBMATE_BIN is not set (scripts/lib/servers.sh installs dbmate with rb_install_dbmate)");
            None
        }
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/migrations/dbmate")
}

/// The fixture's first `n` files (or all, with extra files).
fn folder(n: usize, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(fixture())
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

fn dbmate(bin: &str, url: &str, dir: &Path, args: &[&str]) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    let out = Command::new(bin)
        .arg("--url")
        .arg(format!("{url}{sep}sslmode=disable"))
        .arg("--migrations-dir")
        .arg(dir)
        .arg("--no-dump-schema")
        .args(args)
        .output()
        .expect("run dbmate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || args == ["status"],
        "dbmate {args:?}: {text}"
    );
    text
}

/// `dbmate status`'s lines for migrations: `[X] file` / `[ ] file`.
fn status(bin: &str, url: &str, dir: &Path) -> Vec<String> {
    dbmate(bin, url, dir, &["status"])
        .lines()
        .filter(|l| l.starts_with('['))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn dbmate_half_by_the_tool_rest_by_the_library_rolled_back_then_committed() {
    let Some(bin) = dbmate_bin() else { return };
    let db = TestDb::new("mig_dbmate").await;
    let fail = (
        "20240101000006_duplicate_user.sql",
        "-- migrate:up\nINSERT INTO users (id, email) VALUES (51, 'user1@example.com');\n\n-- migrate:down\nDELETE FROM users WHERE id = 51;\n",
    );
    // What dbmate alone leaves after the first half.
    let half = folder(2, &[]);
    dbmate(&bin, &db.url, half.path(), &["migrate"]);
    let full = folder(5, &[fail]);
    let expected = status(&bin, &db.url, full.path());
    assert_eq!(
        expected,
        [
            "[X] 20240101000001_create_users.sql",
            "[X] 20240101000002_add_status.sql",
            "[ ] 20240101000003_index_email.sql",
            "[ ] 20240101000004_rename_total.sql",
            "[ ] 20240101000005_drop_legacy_audit.sql",
            "[ ] 20240101000006_duplicate_user.sql",
        ]
    );
    let before = db.dump();

    // The rest by the library: it continues where dbmate is; the last one fails.
    let p = Migrations::dbmate(full.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.applied_count(), 2);
    let reverts = p.reverts().unwrap();
    let by_down: Vec<&str> = reverts
        .iter()
        .filter(|(_, r)| *r == Revert::Down)
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        by_down,
        [
            "20240101000003_index_email",
            "20240101000004_rename_total",
            "20240101000006_duplicate_user"
        ]
    );
    assert!(
        matches!(&reverts[2].1, Revert::Checkpoint(r) if r.iter().any(|x| x.ends_with("public.legacy_audit"))),
        "{reverts:?}"
    );
    let plan = p.plan().unwrap();
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
    assert_eq!(
        status(&bin, &db.url, full.path()),
        expected,
        "dbmate's own status"
    );
    common::assert_same_dump(
        &before,
        &db.dump(),
        "after rolling back the rest of a dbmate folder",
    );

    // Without the failing file the rest commits; dbmate sees it applied and can roll the
    // last one back by its own down.
    let rest = folder(5, &[]);
    let p = Migrations::dbmate(rest.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&p.plan().unwrap())
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    let st = status(&bin, &db.url, rest.path());
    assert_eq!(st.len(), 5);
    assert!(st.iter().all(|l| l.starts_with("[X]")), "{st:?}");
    dbmate(&bin, &db.url, rest.path(), &["rollback"]);
    assert!(status(&bin, &db.url, rest.path())[4].starts_with("[ ]"));
    let p = Migrations::dbmate(rest.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let ids: Vec<String> = p.migrations().iter().map(|m| m.id()).collect();
    assert_eq!(ids, ["20240101000005_drop_legacy_audit"]);
}
