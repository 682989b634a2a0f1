//! The `rollback` command on a PostgreSQL journal (the test server of scripts/test).

mod fixture;

use fixture::{rollback, run, COMMITTED, PLAN, ROLLED_BACK};
use rollback_core::journal::Journal;
use rollback_core::RunReport;
use rollback_postgres::PgJournal;
use rollback_testkit::pg::TestDb;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_reads_runs_status_reports_and_verifies_a_postgres_journal() {
    let db = TestDb::new("cli_pg").await;
    let j: Arc<dyn Journal> = Arc::new(PgJournal::new(&db.db));
    let (committed, _) = run(j.clone(), COMMITTED, true).await;
    let (rolled_back, _) = run(j.clone(), ROLLED_BACK, false).await;

    let out = rollback()
        .args(["--pg", &db.url, "runs", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [COMMITTED, ROLLED_BACK]);
    assert_eq!(v[1]["outcome"], "rolled_back");

    // The URL from the environment; the table for people.
    let out = rollback()
        .env("ROLLBACK_PG_URL", &db.url)
        .arg("runs")
        .assert()
        .success();
    fixture::snapshot("pg_runs", &out.get_output().stdout);
    let out = rollback()
        .env("ROLLBACK_PG_URL", &db.url)
        .args(["status", ROLLED_BACK])
        .assert()
        .success();
    fixture::snapshot("pg_status_rolled_back", &out.get_output().stdout);
    rollback()
        .env("ROLLBACK_PG_URL", &db.url)
        .args(["history", PLAN])
        .assert()
        .success();

    for want in [committed, rolled_back] {
        let out = rollback()
            .args(["--pg", &db.url, "report", &want.run_id, "--format", "json"])
            .assert()
            .success();
        let got: RunReport = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(got, want);
    }

    // Watching a finished run replays its records and the progress its executor published
    // beside the journal (the capture of `customers`), then exits with its outcome.
    let out = rollback()
        .args([
            "--pg",
            &db.url,
            "watch",
            ROLLED_BACK,
            "--json",
            "--timeout",
            "60",
        ])
        .assert()
        .code(7);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l["kind"] == "progress"
            && l["source"] == "customers"
            && l["done"] == 1
            && l["total"] == 1),
        "{lines:#?}"
    );
    assert_eq!(lines.last().unwrap()["kind"], "discarded", "{lines:#?}");

    let out = rollback()
        .args(["--pg", &db.url, "verify"])
        .assert()
        .success();
    fixture::snapshot("pg_verify_ok", &out.get_output().stdout);

    // A DBA edits a record of the rolled-back run by hand.
    db.exec(&format!(
        "UPDATE _rollback.journal SET entry = replace(entry, '\"holder\":\"operator-a\"', '\"holder\":\"mallory\"') \
         WHERE run_id = '{ROLLED_BACK}' AND seq = 0"
    ))
    .await;
    let out = rollback()
        .args(["--pg", &db.url, "verify"])
        .assert()
        .code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("BAD at record 0"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "journal of run {ROLLED_BACK}: record 0 was altered"
        )),
        "{stdout}"
    );
    // Passwords in the URL never reach the output.
    assert!(!String::from_utf8_lossy(&out.get_output().stderr).contains(&db.url));
}

#[test]
fn an_unreachable_postgres_journal_exits_4_without_repeating_the_url() {
    let url = "postgres://admin:s3cret-pw@127.0.0.1:1/nowhere";
    let out = rollback().args(["--pg", url, "runs"]).assert().code(4);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
}
