//! Detection latency in the report: when the breach that started a rollback was
//! detected (the failing verdict's journal record) and when the rollback started (the
//! `rollback_started` record), checked against the journal's own record timestamps.

use async_trait::async_trait;
use rollback_core::journal::{Entry, Journal, Lease, LostTail, MemoryJournal, Record};
use rollback_core::report::Detection;
use rollback_core::sim::{HealthProbe, KeyEquals, SetKey, SimWorld};
use rollback_core::{CancellationToken, Executor, Outcome, Plan, Result, RunReport, Trigger};
use std::sync::Arc;
use std::time::Duration;

/// A journal that waits `delay` before appending `rollback_started`: the time between
/// the detection and the start of the rollback is then known to be at least `delay`.
struct SlowRollbackStart {
    inner: MemoryJournal,
    delay: Duration,
}

#[async_trait]
impl Journal for SlowRollbackStart {
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
        if matches!(entry, Entry::RollbackStarted { .. }) {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.append(run_id, entry, epoch).await
    }
    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        self.inner.records(run_id).await
    }
    async fn lost_tail(&self, run_id: &str) -> Result<Option<LostTail>> {
        self.inner.lost_tail(run_id).await
    }
    async fn runs(&self) -> Result<Vec<String>> {
        self.inner.runs().await
    }
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        self.inner.release_lease(key, holder).await
    }
}

fn world() -> SimWorld {
    let w = SimWorld::new();
    w.set("db", "schema", "v1");
    w
}

async fn run(plan: &Plan, delay: Duration) -> (RunReport, Vec<Record>) {
    let journal: Arc<dyn Journal> = Arc::new(SlowRollbackStart {
        inner: MemoryJournal::new(),
        delay,
    });
    let report = Executor::with_journal(journal.clone())
        .run(plan)
        .await
        .unwrap();
    let records = journal.records(&report.run_id).await.unwrap();
    (report, records)
}

/// The first `rollback_started` record and the record just before it.
fn around_rollback_start(records: &[Record]) -> (&Record, &Record) {
    let i = records
        .iter()
        .position(|r| matches!(r.entry, Entry::RollbackStarted { .. }))
        .expect("a rollback started");
    (&records[i - 1], &records[i])
}

#[tokio::test]
async fn trigger_breach_reports_when_it_was_detected_and_when_rollback_started() {
    let w = world();
    let plan = Plan::builder("soak-breach")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .trigger(
            Trigger::new(HealthProbe::new("error-rate", &w, &[0.0, 0.01, 0.2, 0.3]))
                .every(Duration::from_millis(5))
                .threshold(2, 3),
        )
        .soak(Duration::from_secs(5))
        .build()
        .unwrap();
    let (report, records) = run(&plan, Duration::from_millis(40)).await;
    assert_eq!(report.outcome, Outcome::RolledBack);

    let (verdict, started) = around_rollback_start(&records);
    let Entry::Verdict {
        verifier,
        phase,
        verdict: v,
    } = &verdict.entry
    else {
        panic!("the record before rollback_started is not a verdict: {verdict:?}");
    };
    let d = report.detection.clone().expect("a breach was detected");
    assert_eq!(
        d,
        Detection {
            verifier: verifier.clone(),
            phase: phase.clone(),
            detected_at_ms: verdict.at_ms,
            rollback_started_at_ms: started.at_ms,
            latency_ms: started.at_ms - verdict.at_ms,
            summary: v.summary.clone(),
        }
    );
    assert_eq!(
        (d.verifier.as_str(), d.phase.as_str()),
        ("error-rate", "soak")
    );
    assert_eq!(d.summary, "error rate 30.0%", "the deciding (4th) poll");
    assert!(
        d.latency_ms >= 40,
        "the journal held rollback_started back 40 ms: {d:?}"
    );

    // Every verdict carries its own record's timestamp.
    let verdict_times: Vec<u64> = records
        .iter()
        .filter(|r| matches!(r.entry, Entry::Verdict { .. }))
        .map(|r| r.at_ms)
        .collect();
    let report_times: Vec<u64> = report.verdicts.iter().map(|v| v.at_ms).collect();
    assert_eq!(report_times, verdict_times);

    // In the JSON, and read back.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["detection"]["detected_at_ms"], verdict.at_ms);
    assert_eq!(json["detection"]["rollback_started_at_ms"], started.at_ms);
    assert_eq!(json["detection"]["latency_ms"], d.latency_ms);
    let back: RunReport = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(back, report);

    // In the Markdown, in the summary and in the incident skeleton.
    let md = report.to_markdown();
    let sentence = format!(
        "by error-rate (error rate 30.0%); rollback started at T+{} ms.",
        d.latency_ms
    );
    assert_eq!(md.matches(&sentence).count(), 2, "{md}");
    assert!(md.contains("| detection | Breach detected at "), "{md}");
}

#[tokio::test]
async fn a_poll_over_the_trigger_limit_is_the_detection_even_when_the_verdict_passes() {
    let w = world();
    // 0.03 passes the probe's own check (≤ 5%) but is over the trigger's limit of 2%.
    let plan = Plan::builder("soak-limit")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .trigger(
            Trigger::new(HealthProbe::new("latency", &w, &[0.0, 0.03]))
                .every(Duration::from_millis(5))
                .max_value(0.02),
        )
        .soak(Duration::from_secs(5))
        .build()
        .unwrap();
    let (report, records) = run(&plan, Duration::ZERO).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    let (verdict, started) = around_rollback_start(&records);
    let d = report.detection.expect("the breach was detected");
    assert!(report.verdicts.last().unwrap().verdict.passed());
    assert_eq!(d.verifier, "latency");
    assert_eq!(d.detected_at_ms, verdict.at_ms);
    assert_eq!(d.rollback_started_at_ms, started.at_ms);
    assert_eq!(d.latency_ms, started.at_ms - verdict.at_ms);
}

#[tokio::test]
async fn a_failing_post_step_verifier_is_the_detection() {
    let w = world();
    let plan = Plan::builder("post-step")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .verify_after(
            "s",
            KeyEquals::new("schema-is-v3", &w, "db", "schema", Some("v3")),
        )
        .build()
        .unwrap();
    let (report, records) = run(&plan, Duration::from_millis(20)).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    let (verdict, started) = around_rollback_start(&records);
    let d = report
        .detection
        .expect("the failing verdict started the rollback");
    assert_eq!(
        (d.verifier.as_str(), d.phase.as_str()),
        ("schema-is-v3", "after:s")
    );
    assert_eq!(d.detected_at_ms, verdict.at_ms);
    assert_eq!(d.rollback_started_at_ms, started.at_ms);
    assert!(d.latency_ms >= 20);
}

#[tokio::test]
async fn a_failed_step_is_no_detection_of_a_breach() {
    let w = world();
    let plan = Plan::builder("failed-step")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .trigger(Trigger::new(HealthProbe::new("error-rate", &w, &[0.9])))
        .build()
        .unwrap();
    w.faults().fail_apply("s", 1);
    let (report, _) = run(&plan, Duration::ZERO).await;
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report
        .rollback_reason
        .as_deref()
        .unwrap()
        .contains("step s failed"));
    // No verifier detected anything: the field is None (`null` in the JSON), and the
    // Markdown claims no detection.
    assert_eq!(report.detection, None);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(json["detection"].is_null());
    assert!(!report.to_markdown().contains("Breach detected"));
}

#[tokio::test]
async fn a_cancelled_soak_is_no_detection_even_after_a_passing_poll() {
    let w = world();
    let plan = Plan::builder("cancelled-soak")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .trigger(
            Trigger::new(HealthProbe::new("error-rate", &w, &[0.0]))
                .every(Duration::from_millis(5)),
        )
        .soak(Duration::from_secs(5))
        .build()
        .unwrap();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(60)).await;
        c2.cancel();
    });
    let report = Executor::new(MemoryJournal::new())
        .run_with_cancel(&plan, cancel)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(!report.verdicts.is_empty());
    assert_eq!(report.detection, None, "{:?}", report.rollback_reason);
}

#[tokio::test]
async fn a_committed_run_has_no_detection() {
    let w = world();
    let plan = Plan::builder("ok")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .build()
        .unwrap();
    let (report, _) = run(&plan, Duration::ZERO).await;
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(report.detection, None);
}

#[tokio::test]
async fn a_report_saved_before_detection_existed_still_reads() {
    let w = world();
    let plan = Plan::builder("old-json")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .build()
        .unwrap();
    let (report, _) = run(&plan, Duration::ZERO).await;
    let mut json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    json.as_object_mut().unwrap().remove("detection");
    let back: RunReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}
