//! The flagd-format flag file: its format, atomic writes, a rollback through the
//! executor, and a staged rollout resumed from its journaled cursor.

use async_trait::async_trait;
use rollback_core::journal::{FileJournal, Journal, MemoryJournal};
use rollback_core::sim::CrashAfter;
use rollback_core::{Context, Executor, Outcome, Plan, ResumePolicy, Verdict, Verifier};
use rollback_flags::{
    FileProvider, FlagCheckpoint, FlagProvider, FlagState, StagedRollout, Variant,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn read(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test]
async fn writes_flagd_definitions_atomically_and_keeps_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    std::fs::write(
        &path,
        r#"{"$evaluators": {"x": {"in": ["a", "b"]}}, "flags": {}}"#,
    )
    .unwrap();
    let file = FileProvider::new(&path);
    file.put("checkout", &FlagState::rollout("checkout", 10))
        .await
        .unwrap();
    file.put(
        "theme",
        &FlagState {
            enabled: false,
            strategies: vec![],
            variants: vec![
                Variant::new("red", 700).with_payload("string", "#f00"),
                Variant::new("blue", 300),
            ],
        },
    )
    .await
    .unwrap();
    let doc = read(&path);
    assert_eq!(doc["$evaluators"], json!({"x": {"in": ["a", "b"]}}));
    assert_eq!(
        doc["$schema"],
        json!("https://flagd.dev/schema/v0/flags.json")
    );
    assert_eq!(
        doc["flags"]["checkout"],
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
               "targeting": {"fractional": [["on", 10], ["off", 90]]}})
    );
    assert_eq!(
        doc["flags"]["theme"],
        json!({"state": "DISABLED", "variants": {"red": "#f00", "blue": "blue"}, "defaultVariant": "red",
               "targeting": {"fractional": [["red", 700], ["blue", 300]]}})
    );
    // Only the file itself is left: the temporary file was renamed over it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["flags.json".to_string()]);
    // What cannot be written exactly is refused and nothing changes.
    let before = std::fs::read(&path).unwrap();
    let mut s = FlagState::rollout("checkout", 10);
    s.strategies[0]
        .constraints
        .push(json!({"contextName": "userId", "operator": "IN", "values": ["u"]}));
    assert!(matches!(
        file.put("checkout", &s).await,
        Err(rollback_core::Error::Invalid { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn unsupported_targeting_in_a_hand_written_file_is_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    std::fs::write(&path, r#"{"flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false},
        "defaultVariant": "off", "targeting": {"if": [{"==": [{"var": "email"}, "a@b"]}, "on", "off"]}}}}"#).unwrap();
    let err = FileProvider::new(&path).get("f").await.unwrap_err();
    assert!(err.to_string().contains("fractional"), "{err}");
}

struct FailAt {
    percent: u32,
    file: Arc<FileProvider>,
    flag: String,
    calls: AtomicUsize,
}

#[async_trait]
impl Verifier for FailAt {
    fn id(&self) -> &str {
        "health"
    }
    async fn verify(&self, _: &Context) -> rollback_core::Result<Verdict> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let p = self
            .file
            .get(&self.flag)
            .await?
            .and_then(|s| s.rollout_percent())
            .unwrap_or(0);
        Ok(Verdict::check(p < self.percent, format!("at {p}%")))
    }
}

#[tokio::test]
async fn failed_health_check_rolls_the_file_back_byte_for_byte_in_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let file = Arc::new(FileProvider::new(&path).with_scope("app"));
    file.put("checkout", &FlagState::off()).await.unwrap();
    file.put("other", &FlagState::rollout("other", 30))
        .await
        .unwrap();
    let before = read(&path);
    let health = Arc::new(FailAt {
        percent: 10,
        file: file.clone(),
        flag: "checkout".into(),
        calls: AtomicUsize::new(0),
    });
    let plan = Plan::builder("file-rollout")
        .checkpoint("flags", FlagCheckpoint::all(file.clone()))
        .step(
            "flags",
            StagedRollout::new("roll", file.clone(), "checkout", &[1, 10, 50, 100])
                .health_check(health.clone()),
            &[],
        )
        .build()
        .unwrap();
    let journal = tempfile::tempdir().unwrap();
    let report = Executor::new(FileJournal::open(journal.path()).unwrap())
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
    assert_eq!(
        health.calls.load(Ordering::SeqCst),
        2,
        "checked at 1 % then 10 %"
    );
    assert_eq!(read(&path), before);
}

#[tokio::test]
async fn staged_rollout_resumes_from_its_journaled_stage_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let file = Arc::new(FileProvider::new(dir.path().join("flags.json")).with_scope("app"));
    file.put("checkout", &FlagState::off()).await.unwrap();
    let make = |health: Arc<FailAt>| {
        Plan::builder("resumable")
            .checkpoint("flags", FlagCheckpoint::flag(file.clone(), "checkout"))
            .step(
                "flags",
                StagedRollout::new("roll", file.clone(), "checkout", &[1, 10, 50, 100])
                    .health_check(health),
                &[],
            )
            // The record count below assumes a captured snapshot (capture intent, captured).
            .capture_all_checkpoints()
            .build()
            .unwrap()
    };
    let health = || {
        Arc::new(FailAt {
            percent: 101,
            file: file.clone(),
            flag: "checkout".into(),
            calls: AtomicUsize::new(0),
        })
    };
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    // Records: run, plan, lease, capture intent, captured, apply intent, prior cursor, then
    // one per checked stage. After 9 the process dies journaling stage 3's pass: the file
    // already says 50 %.
    let first = health();
    let err = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 9)))
        .on_resume(ResumePolicy::RollForward)
        .holder("a")
        .run(&make(first.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, rollback_core::Error::Crashed(_)));
    assert_eq!(first.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        file.get("checkout")
            .await
            .unwrap()
            .unwrap()
            .rollout_percent(),
        Some(50)
    );
    let run = journal.runs().await.unwrap().remove(0);
    // A new process: fresh steps and health check, the same journal.
    let second = health();
    let report = Executor::with_journal(journal.clone())
        .holder("a")
        .resume(&make(second.clone()), &run)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        second.calls.load(Ordering::SeqCst),
        2,
        "stages 1 and 2 are not checked again"
    );
    assert_eq!(
        file.get("checkout")
            .await
            .unwrap()
            .unwrap()
            .rollout_percent(),
        Some(100)
    );
}
