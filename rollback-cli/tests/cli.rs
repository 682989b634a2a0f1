//! The `rollback` command as an operator runs it, on a file journal written by real runs.

mod fixture;

use fixture::{rollback, run, snapshot, COMMITTED, PLAN, ROLLED_BACK};
use rollback_core::journal::{FileJournal, Journal};
use rollback_core::RunReport;
use std::path::Path;
use std::sync::Arc;

/// A journal folder with a committed and a rolled-back run of the plan; their reports.
async fn journal() -> (tempfile::TempDir, RunReport, RunReport) {
    let dir = tempfile::tempdir().unwrap();
    let j: Arc<dyn Journal> = Arc::new(FileJournal::open(dir.path()).unwrap());
    let (committed, _) = run(j.clone(), COMMITTED, true).await;
    let (rolled_back, _) = run(j, ROLLED_BACK, false).await;
    (dir, committed, rolled_back)
}

fn at(dir: &Path) -> assert_cmd::Command {
    let mut c = rollback();
    c.arg("--journal").arg(dir);
    c
}

#[tokio::test]
async fn runs_lists_every_run_with_its_state_outcome_and_rto() {
    let (dir, _, rolled_back) = journal().await;
    let out = at(dir.path()).arg("runs").assert().success();
    let stdout = &out.get_output().stdout;
    snapshot("runs", stdout);
    let text = String::from_utf8_lossy(stdout);
    assert!(!text.contains('\u{1b}'), "no colors off a terminal: {text}");
    assert!(text.contains(&format!(
        "{} (<= 5.0 s)",
        match rolled_back.rto_ms.unwrap() {
            ms if ms < 1000 => format!("{ms} ms"),
            ms => format!("{:.1} s", ms as f64 / 1000.0),
        }
    )));

    // The same from the environment, as JSON for scripts.
    let out = rollback()
        .env("ROLLBACK_JOURNAL", dir.path())
        .args(["runs", "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["run_id"], COMMITTED);
    assert_eq!(runs[0]["state"], "finished");
    assert_eq!(runs[0]["outcome"], "committed");
    assert_eq!(runs[1]["outcome"], "rolled_back");
    assert_eq!(runs[1]["rto_ms"], rolled_back.rto_ms.unwrap());
    assert_eq!(runs[1]["steps_total"], 4);
}

#[tokio::test]
async fn colors_are_on_only_when_asked_off_a_terminal() {
    let (dir, _, _) = journal().await;
    let out = at(dir.path())
        .args(["runs", "--color", "always"])
        .env_remove("NO_COLOR")
        .assert()
        .success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("\u{1b}["));
    let out = at(dir.path())
        .args(["runs"])
        .env_remove("NO_COLOR")
        .assert()
        .success();
    assert!(!String::from_utf8_lossy(&out.get_output().stdout).contains('\u{1b}'));
}

#[tokio::test]
async fn status_shows_steps_checkpoints_and_the_failed_checks() {
    let (dir, _, _) = journal().await;
    let out = at(dir.path())
        .args(["status", ROLLED_BACK])
        .assert()
        .success();
    snapshot("status_rolled_back", &out.get_output().stdout);
    let out = at(dir.path())
        .args(["status", COMMITTED, "--json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["state"], "finished");
    assert_eq!(v["summary"]["plan"], PLAN);
    assert_eq!(v["report"]["outcome"], "committed");
}

#[tokio::test]
async fn report_rebuilt_by_the_command_equals_the_report_of_the_run() {
    let (dir, committed, rolled_back) = journal().await;
    for want in [committed, rolled_back] {
        let out = at(dir.path())
            .args(["report", &want.run_id, "--format", "json"])
            .assert()
            .success();
        let got: RunReport = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(got, want);
    }
    let out = at(dir.path())
        .args(["report", ROLLED_BACK])
        .assert()
        .success();
    let md = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(md.starts_with(&format!("# Run report: {PLAN}")), "{md}");
    assert!(md.contains("Incident report"), "{md}");
    let file = dir.path().join("report.html");
    at(dir.path())
        .args(["report", ROLLED_BACK, "--format", "html", "-o"])
        .arg(&file)
        .assert()
        .success()
        .stdout("");
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
}

#[tokio::test]
async fn history_lists_a_plans_runs_oldest_first() {
    let (dir, _, _) = journal().await;
    let out = at(dir.path()).args(["history", PLAN]).assert().success();
    snapshot("history", &out.get_output().stdout);
    at(dir.path())
        .args(["history", "no-such-plan"])
        .assert()
        .code(3)
        .stderr(predicates::str::contains("no run of plan no-such-plan"));
}

#[tokio::test]
async fn verify_passes_an_intact_journal() {
    let (dir, _, _) = journal().await;
    let out = at(dir.path()).arg("verify").assert().success();
    snapshot("verify_ok", &out.get_output().stdout);
}

#[tokio::test]
async fn verify_names_the_altered_record_and_fails() {
    let (dir, _, _) = journal().await;
    let path = dir.path().join(format!("{ROLLED_BACK}.journal"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Record 5 claims another step.
    assert!(lines[5].contains("\"seq\":5"), "{}", lines[5]);
    let altered = lines[5].replacen("\"seq\":5,\"at_ms\":", "\"seq\":5,\"at_ms\":1", 1);
    assert_ne!(altered, lines[5]);
    lines[5] = altered;
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let out = at(dir.path()).arg("verify").assert().code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("BAD at record 5"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "journal of run {ROLLED_BACK}: record 5 was altered"
        )),
        "{stdout}"
    );
    snapshot("verify_tampered", &out.get_output().stdout);
    let out = at(dir.path()).args(["verify", "--json"]).assert().code(1);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["ok"], false);
    let bad: Vec<&serde_json::Value> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ok"] == false)
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["run_id"], ROLLED_BACK);
    assert_eq!(bad[0]["record"], 5);
    // The intact run still verifies alone; the listing marks the other damaged.
    at(dir.path())
        .args(["verify", COMMITTED])
        .assert()
        .success();
    let out = at(dir.path()).args(["runs", "--json"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v[1]["state"], "damaged");
    // Its report is refused with the damage named.
    at(dir.path())
        .args(["report", ROLLED_BACK])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("record 5 was altered"));
}

#[tokio::test]
async fn verify_fails_when_a_plans_lease_lost_its_epoch() {
    let (dir, _, _) = journal().await;
    let lease = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "lease"))
        .expect("a lease file");
    std::fs::remove_file(&lease).unwrap();
    let out = at(dir.path()).arg("verify").assert().code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        stdout.contains(&format!("no lease stored for plan {PLAN}")),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_older_journal_without_a_description_gives_status_but_no_report() {
    let (dir, _, _) = journal().await;
    // The same run as an older version journaled it: no plan_described record.
    let old = tempfile::tempdir().unwrap();
    let from = FileJournal::open(dir.path()).unwrap();
    let to = FileJournal::open(old.path()).unwrap();
    for r in from.records(COMMITTED).await.unwrap() {
        if r.entry.kind() != "plan_described" {
            to.append(COMMITTED, &r.entry, r.epoch).await.unwrap();
        }
    }
    let out = at(old.path())
        .args(["status", COMMITTED])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("outcome    committed"), "{text}");
    assert!(text.contains("does not describe the plan"), "{text}");
    at(old.path())
        .args(["report", COMMITTED])
        .assert()
        .code(5)
        .stderr(predicates::str::contains("needs the plan"));
}

#[test]
fn bad_usage_and_unknown_runs_have_their_exit_codes() {
    rollback()
        .arg("runs")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("no journal"));
    let dir = tempfile::tempdir().unwrap();
    at(dir.path())
        .args(["status", "nope"])
        .assert()
        .code(3)
        .stderr(predicates::str::contains("no run nope"));
    at(dir.path()).args(["report", "nope"]).assert().code(3);
    at(dir.path()).args(["bogus"]).assert().code(2);
    at(&dir.path().join("missing")).arg("runs").assert().code(4);
    let help = rollback().arg("--help").assert().success();
    assert!(String::from_utf8_lossy(&help.get_output().stdout).contains("Exit codes:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_live_run_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    // The watcher starts before the run exists, and waits for it.
    let watcher = std::process::Command::new(assert_cmd::cargo::cargo_bin("rollback"))
        .arg("--journal")
        .arg(dir.path())
        .args(["watch", ROLLED_BACK, "--interval", "10", "--timeout", "120"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let j: Arc<dyn Journal> = Arc::new(FileJournal::open(dir.path()).unwrap());
    let (report, _) = run(j, ROLLED_BACK, false).await;
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One line per record, in order, ending with the outcome.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), report.timeline.len() + 1, "{stdout}");
    for (line, t) in lines.iter().zip(&report.timeline) {
        assert!(line.ends_with(&t.detail), "{line} / {}", t.detail);
    }
    assert!(
        lines.last().unwrap().contains("ended rolled_back"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_json_streams_records_and_the_published_progress() {
    let dir = tempfile::tempdir().unwrap();
    let watcher = std::process::Command::new(assert_cmd::cargo::cargo_bin("rollback"))
        .arg("--journal")
        .arg(dir.path())
        .args([
            "watch",
            COMMITTED,
            "--json",
            "--interval",
            "5",
            "--timeout",
            "120",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let j: Arc<dyn Journal> = Arc::new(FileJournal::open(dir.path()).unwrap());
    let (report, _) = run(j, COMMITTED, true).await;
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let records: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["kind"] != "progress").collect();
    assert_eq!(records.len(), report.timeline.len());
    for (i, (line, t)) in records.iter().zip(&report.timeline).enumerate() {
        assert_eq!(line["seq"], i as u64);
        assert_eq!(line["kind"], t.kind);
        assert_eq!(line["detail"], t.detail);
    }
    // The capture of `customers` (a snapshot) reported its progress; the executor published
    // it beside the journal.
    assert!(
        lines.iter().any(|l| l["kind"] == "progress"
            && l["source"] == "customers"
            && l["done"] == 1
            && l["total"] == 1),
        "{lines:#?}"
    );
}
