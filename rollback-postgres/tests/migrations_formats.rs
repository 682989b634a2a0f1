//! Flyway folders (no Flyway binary here: its layout, history table and checksum are
//! checked against its documentation and source), the typed errors of refinery, Flyway
//! and sqitch folders, and the approval an irreversible migration needs.

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

/// A copy of a fixture folder (files only), plus extra files.
fn folder(name: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    for (f, text) in extra {
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    dir
}

async fn run(plan: &rollback_core::Plan) -> rollback_core::RunReport {
    Executor::new(MemoryJournal::new()).run(plan).await.unwrap()
}

async fn rows(db: &TestDb, sql: &str) -> Vec<String> {
    let c = db.db.client().await.unwrap();
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

const FLYWAY_HISTORY: &str = "SELECT installed_rank::text || ' ' || version || ' ' || description || ' ' || type || ' ' \
     || script || ' ' || checksum::text || ' ' || success::text || ' ' || (installed_by = current_user)::text \
     FROM flyway_schema_history ORDER BY installed_rank";

/// Flyway's checksums of the fixture's files, computed independently with
/// `python3 -c "import zlib; print(zlib.crc32(''.join(open(f).read().splitlines()).encode()))"`
/// (as a signed 32-bit integer): CRC-32 of the lines without their line breaks.
const FLYWAY_CHECKSUMS: [(&str, i32); 5] = [
    ("V1__create_users.sql", 606831276),
    ("V1_1__add_status.sql", -1321896317),
    ("V2__index_email.sql", 1075930726),
    ("V3__rename_total.sql", -690529173),
    ("V4__drop_legacy_audit.sql", -79303935),
];

#[tokio::test]
async fn flyway_folder_keeps_flyway_schema_history_true_and_rolls_back() {
    let db = TestDb::new("mig_flyway").await;
    let dir = folder(
        "flyway",
        &[(
            "V5__duplicate_user.sql",
            "INSERT INTO users (id, email) VALUES (51, 'user1@example.com');\n",
        )],
    );
    let all = Migrations::flyway(dir.path()).unwrap();
    let shape: Vec<(String, String, bool)> = all
        .all()
        .iter()
        .map(|m| (m.version.clone(), m.name.clone(), m.has_down()))
        .collect();
    assert_eq!(
        shape,
        [
            ("1".into(), "create users".into(), false),
            ("1.1".into(), "add status".into(), true),
            ("2".into(), "index email".into(), false),
            ("3".into(), "rename total".into(), true),
            ("4".into(), "drop legacy audit".into(), false),
            ("5".into(), "duplicate user".into(), false),
        ]
    );
    for (m, (file, sum)) in all.all().iter().zip(FLYWAY_CHECKSUMS) {
        assert_eq!(m.file.file_name().unwrap(), file);
        assert_eq!(m.checksum(), Some(sum.to_string().as_str()), "{file}");
    }

    // Up to version 2 (1, 1.1 and 2), committed.
    let p = all.target(2).pending(&db.db).await.unwrap();
    assert_eq!(p.migrations().len(), 3);
    let report = run(&p.plan().unwrap()).await;
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    let expected: Vec<String> = [
        (1, "1", "create users", "V1__create_users.sql", 606831276),
        (2, "1.1", "add status", "V1_1__add_status.sql", -1321896317),
        (3, "2", "index email", "V2__index_email.sql", 1075930726),
    ]
    .iter()
    .map(|(rank, v, d, s, c)| format!("{rank} {v} {d} SQL {s} {c} true true"))
    .collect();
    assert_eq!(rows(&db, FLYWAY_HISTORY).await, expected);
    assert_eq!(
        rows(
            &db,
            "SELECT count(*)::text FROM pg_indexes WHERE indexname = 'users_email_key'"
        )
        .await,
        ["1"]
    );
    let before = db.dump();

    // The rest: 3 by its undo file, 4 by a checkpoint; 5 fails and all is rolled back.
    let p = Migrations::flyway(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.applied_count(), 3);
    let reverts = p.reverts().unwrap();
    assert_eq!(reverts[0], ("3_rename_total".into(), Revert::Down));
    assert!(
        matches!(&reverts[1].1, Revert::Checkpoint(r) if r.iter().any(|x| x.ends_with("public.legacy_audit"))),
        "{reverts:?}"
    );
    let report = run(&p.plan().unwrap()).await;
    common::assert_rolled_back_with_ledger_proven(&report);
    assert_eq!(rows(&db, FLYWAY_HISTORY).await, expected);
    common::assert_same_dump(
        &before,
        &db.dump(),
        "after rolling back the rest of a Flyway folder",
    );

    // A file changed after it ran is refused before anything runs.
    std::fs::write(
        dir.path().join("V1_1__add_status.sql"),
        "ALTER TABLE users ADD COLUMN status text;\n",
    )
    .unwrap();
    let err = Migrations::flyway(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrationError::ChecksumMismatch { version, recorded, .. } if version == "1.1" && recorded == "-1321896317"),
        "{err}"
    );
    // A failed row (Flyway's `success = false`, cleared by `flyway repair`) is refused.
    std::fs::copy(
        fixture("flyway").join("V1_1__add_status.sql"),
        dir.path().join("V1_1__add_status.sql"),
    )
    .unwrap();
    let c = db.db.client().await.unwrap();
    c.batch_execute("UPDATE flyway_schema_history SET success = false WHERE version = '2'")
        .await
        .unwrap();
    let err = Migrations::flyway(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrationError::Dirty { version, .. } if version == "2"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failing_sqitch_verify_script_rolls_the_change_back() {
    let db = TestDb::new("mig_sqitch_verify").await;
    let by = "2024-01-01T00:00:00Z Ada <ada@example.com>";
    let dir = sqitch_project(&format!("widgets {by}\n"), &[]);
    for (sub, text) in [
        (
            "deploy",
            "BEGIN;\nCREATE TABLE widgets (id int PRIMARY KEY);\nCOMMIT;\n",
        ),
        ("revert", "BEGIN;\nDROP TABLE widgets;\nCOMMIT;\n"),
        // Checks a column the deploy forgot.
        (
            "verify",
            "BEGIN;\nSELECT id, name FROM widgets WHERE FALSE;\nROLLBACK;\n",
        ),
    ] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        std::fs::write(dir.path().join(sub).join("widgets.sql"), text).unwrap();
    }
    let p = Migrations::sqitch(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let report = run(&p.plan().unwrap()).await;
    common::assert_rolled_back_with_ledger_proven(&report);
    assert!(
        report
            .to_markdown()
            .contains("column \"name\" does not exist"),
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        rows(&db, "SELECT count(*)::text FROM sqitch.changes").await,
        ["0"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT string_agg(event, ' ' ORDER BY committed_at) FROM sqitch.events"
        )
        .await,
        ["deploy revert"]
    );
    assert_eq!(
        rows(
            &db,
            "SELECT count(*)::text FROM pg_tables WHERE tablename = 'widgets'"
        )
        .await,
        ["0"]
    );
}

#[test]
fn flyway_checksum_ignores_line_breaks_and_a_byte_order_mark() {
    let text = std::fs::read_to_string(fixture("flyway").join("V1__create_users.sql")).unwrap();
    let crlf = text.replace('\n', "\r\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("V1__lf.sql"), &text).unwrap();
    std::fs::write(dir.path().join("V2__crlf.sql"), &crlf).unwrap();
    std::fs::write(dir.path().join("V3__bom.sql"), format!("\u{feff}{crlf}")).unwrap();
    let m = Migrations::flyway(dir.path()).unwrap();
    let sums: Vec<&str> = m.all().iter().map(|m| m.checksum().unwrap()).collect();
    assert_eq!(sums, ["606831276"; 3]);
}

#[test]
fn flyway_repeatables_baselines_placeholders_and_orphan_undos_are_typed_errors() {
    let cases: [(&str, &str, &str); 4] = [
        (
            "R__refresh_view.sql",
            "CREATE OR REPLACE VIEW v AS SELECT 1;\n",
            "repeatable",
        ),
        ("B5__baseline.sql", "CREATE TABLE t (id int);\n", "baseline"),
        (
            "V6__grant.sql",
            "CREATE TABLE t (id int);\nGRANT SELECT ON t TO ${reader};\n",
            "placeholder",
        ),
        ("U9__nothing.sql", "SELECT 1;\n", "no versioned migration"),
    ];
    for (file, text, what) in cases {
        let dir = folder("flyway", &[(file, text)]);
        let err = Migrations::flyway(dir.path()).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains(file) && shown.contains(what),
            "{file}: {shown}"
        );
        match (file, &err) {
            ("V6__grant.sql", MigrationError::Unsupported { line, .. }) => assert_eq!(*line, 2),
            ("U9__nothing.sql", MigrationError::Parse { .. }) => {}
            (_, MigrationError::Unsupported { .. }) if file != "U9__nothing.sql" => {}
            _ => panic!("{file}: {err:?}"),
        }
    }
    // A placeholder is fine where the script's configuration turns replacement off.
    let dir = folder(
        "flyway",
        &[
            ("V6__literal.sql", "SELECT '${not_a_placeholder}';\n"),
            ("V6__literal.sql.conf", "placeholderReplacement=false\n"),
        ],
    );
    assert_eq!(Migrations::flyway(dir.path()).unwrap().all().len(), 6);
}

#[tokio::test]
async fn refinery_and_flyway_refuse_a_pending_migration_older_than_the_latest_applied() {
    let db = TestDb::new("mig_order").await;
    let dir = folder("refinery", &[]);
    let p = Migrations::refinery(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    assert_eq!(
        rows(&db, "SELECT count(*)::text FROM refinery_schema_history").await,
        ["5"]
    );
    std::fs::write(
        dir.path().join("V2_5__late.sql"),
        "ALTER TABLE users ADD COLUMN late text;\n",
    )
    .unwrap();
    // `V2_5` is not a refinery version (`\d+(\.\d+)?` then `__`): ignored, as refinery does.
    assert_eq!(Migrations::refinery(dir.path()).unwrap().all().len(), 5);
    std::fs::rename(
        dir.path().join("V2_5__late.sql"),
        dir.path().join("V0__late.sql"),
    )
    .unwrap();
    let err = Migrations::refinery(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrationError::OutOfOrder { version, latest, .. } if version == "0" && latest == "5"),
        "{err}"
    );
    // refinery's `U` (unversioned) migrations are exempt: they run whenever not applied.
    std::fs::rename(
        dir.path().join("V0__late.sql"),
        dir.path().join("U0__late.sql"),
    )
    .unwrap();
    let p = Migrations::refinery(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(p.migrations().len(), 1);

    let db = TestDb::new("mig_order_flyway").await;
    let dir = folder("flyway", &[]);
    let p = Migrations::flyway(dir.path())
        .unwrap()
        .target(1)
        .pending(&db.db)
        .await
        .unwrap();
    // Version 1 only; then 2 and 3 by hand, leaving 1.1 behind.
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    std::fs::remove_file(dir.path().join("V1_1__add_status.sql")).unwrap();
    std::fs::remove_file(dir.path().join("U1_1__add_status.sql")).unwrap();
    let p = Migrations::flyway(dir.path())
        .unwrap()
        .target(3)
        .pending(&db.db)
        .await
        .unwrap();
    assert_eq!(run(&p.plan().unwrap()).await.outcome, Outcome::Committed);
    let back = folder("flyway", &[]);
    let err = Migrations::flyway(back.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrationError::OutOfOrder { version, latest, .. } if version == "1.1" && latest == "3"),
        "{err}"
    );
}

/// A sqitch project from a plan's body and deploy scripts (all changes by one planner).
fn sqitch_project(body: &str, deploys: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("deploy")).unwrap();
    for d in deploys {
        std::fs::write(dir.path().join("deploy").join(d), "SELECT 1;\n").unwrap();
    }
    std::fs::write(
        dir.path().join("sqitch.plan"),
        format!("%syntax-version=1.0.0\n%project=shop\n\n{body}"),
    )
    .unwrap();
    dir
}

#[test]
fn sqitch_plan_mistakes_are_typed_errors_naming_the_line() {
    let by = "2024-01-01T00:00:00Z Ada <ada@example.com>";
    let cases = [
        (
            format!("a {by}\nb [other:a] {by}\n"),
            vec!["a.sql", "b.sql"],
            2,
            "another project",
        ),
        (
            format!("a {by}\na {by}\n"),
            vec!["a.sql"],
            2,
            "no tag between them",
        ),
        (
            format!("a {by}\nb [c] {by}\n"),
            vec!["a.sql", "b.sql"],
            2,
            "no such change",
        ),
        (
            "a Ada <ada@example.com>\n".to_string(),
            vec!["a.sql"],
            1,
            "timestamp",
        ),
        (
            format!("@v1 {by}\n"),
            vec![],
            1,
            "without a preceding change",
        ),
    ];
    for (body, deploys, line, what) in cases {
        let dir = sqitch_project(&body, &deploys);
        let err = Migrations::sqitch(dir.path()).unwrap_err();
        let (MigrationError::Parse { line: l, .. } | MigrationError::Unsupported { line: l, .. }) =
            &err
        else {
            panic!("{body}: {err:?}");
        };
        assert_eq!(*l, line + 3, "{body}: {err}");
        assert!(err.to_string().contains(what), "{body}: {err}");
    }
    // The fixture: a reworked change reads its earlier scripts from `<name>@<tag>.sql`.
    let m = Migrations::sqitch(fixture("sqitch")).unwrap();
    let files: Vec<String> = m
        .all()
        .iter()
        .map(|m| m.file.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        [
            "users.sql",
            "status.sql",
            "user_count@v1.0.sql",
            "index_email.sql",
            "rename_total.sql",
            "user_count.sql",
            "drop_legacy_audit.sql"
        ]
    );
}

#[tokio::test]
async fn an_irreversible_migration_needs_approval_and_stays_applied_after_rollback() {
    let db = TestDb::new("mig_approve").await;
    let opaque = (
        "20240101000006_refresh_stats.sql",
        "DO $$ BEGIN PERFORM count(*) FROM users; END $$;\n",
    );
    let fail = (
        "20240101000007_duplicate_user.sql",
        "INSERT INTO users (id, email) VALUES (51, 'user1@example.com');\n",
    );
    let dir = folder("sqlx", &[opaque, fail]);
    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .pending(&db.db)
        .await
        .unwrap();
    let err = p.plan().unwrap_err();
    assert!(
        matches!(&err, MigrationError::NotReversible { file, line: 1, .. } if file.ends_with(opaque.0)),
        "{err}"
    );
    assert!(err.to_string().contains("approve_irreversible"), "{err}");
    assert!(p.reverts().unwrap().iter().any(
        |(id, r)| id == "20240101000006_refresh_stats" && matches!(r, Revert::NeedsApproval(_))
    ));

    let p = Migrations::sqlx(dir.path())
        .unwrap()
        .approve_irreversible([opaque.0], "read-only statistics refresh")
        .pending(&db.db)
        .await
        .unwrap();
    assert!(p.reverts().unwrap().contains(&(
        "20240101000006_refresh_stats".into(),
        Revert::Approved("read-only statistics refresh".into())
    )));
    let plan = p.plan().unwrap();
    let dry = plan.dry_run().to_string();
    assert!(
        dry.contains("20240101000006_refresh_stats")
            && dry.contains("read-only statistics refresh"),
        "{dry}"
    );
    let report = run(&plan).await;
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    // Everything but the approved migration is undone; it stays applied, and so its row.
    let ledger = rows(
        &db,
        "SELECT version::text FROM _sqlx_migrations ORDER BY version",
    )
    .await;
    assert_eq!(ledger, ["20240101000006"], "{}", report.to_markdown());
    assert_eq!(
        rows(
            &db,
            "SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public' AND tablename = 'users'"
        )
        .await,
        ["0"]
    );
}
