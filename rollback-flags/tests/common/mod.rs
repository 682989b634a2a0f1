//! Helpers shared by the integration tests: the real Unleash from `scripts/test`, unique
//! flag names, and Unleash's client API (what an application sees).
#![allow(dead_code, unreachable_pub)]

use rollback_flags::UnleashProvider;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test (it starts Unleash, PostgreSQL and moto and exports ROLLBACK_TEST_*)")
    })
}

pub fn unleash_url() -> String {
    let url = env("ROLLBACK_TEST_UNLEASH_URL");
    assert!(
        url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:"),
        "ROLLBACK_TEST_UNLEASH_URL must point at 127.0.0.1, got {url}"
    );
    url
}

pub fn admin_token() -> String {
    env("ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN")
}

pub fn client_token() -> String {
    env("ROLLBACK_TEST_UNLEASH_CLIENT_TOKEN")
}

pub fn unleash() -> UnleashProvider {
    UnleashProvider::new(&unleash_url(), admin_token(), "default", "development")
        .expect("unleash provider")
}

/// A unique flag-name prefix for one test.
pub fn prefix(label: &str) -> String {
    format!(
        "rbt-{label}-{}-",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Create a bare flag through the Admin API (what an operator did before the migration).
pub async fn create_flag(name: &str) {
    let r = http()
        .post(format!(
            "{}/api/admin/projects/default/features",
            unleash_url()
        ))
        .header("Authorization", admin_token())
        .json(&serde_json::json!({"name": name, "type": "release"}))
        .send()
        .await
        .expect("create flag");
    assert!(r.status().is_success(), "create {name}: {}", r.status());
}

/// Archive and delete every flag of this test (cleanup).
pub async fn cleanup(prefix: &str) {
    use rollback_flags::FlagProvider;
    let p = unleash();
    for f in p.list().await.unwrap_or_default() {
        if f.starts_with(prefix) {
            let _ = p.delete(&f).await;
        }
    }
}

/// The id of Unleash's latest flag event: the client API's `meta.revisionId` is the
/// largest id of events that name a flag (Unleash 6's `getMaxRevisionId`), so it catches
/// up to this one.
pub async fn latest_event_id() -> u64 {
    let v: Value = http()
        .get(format!("{}/api/admin/events", unleash_url()))
        .header("Authorization", admin_token())
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("events json");
    v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["featureName"].is_string())
        .filter_map(|e| e["id"].as_u64())
        .max()
        .unwrap_or(0)
}

/// What an application sees: `GET /api/client/features` with the client token, the
/// features whose names start with `prefix`, by name — read once the client API's
/// revision has caught up with every change made so far (Unleash 6 serves the client API
/// from a cache refreshed by revision; we poll its `meta.revisionId`, not a blind sleep).
pub async fn client_view(prefix: &str) -> (BTreeMap<String, Value>, Duration) {
    let target = latest_event_id().await;
    let start = Instant::now();
    loop {
        let v: Value = http()
            .get(format!("{}/api/client/features", unleash_url()))
            .header("Authorization", client_token())
            .send()
            .await
            .expect("client features")
            .json()
            .await
            .expect("client json");
        let rev = v["meta"]["revisionId"].as_u64().unwrap_or(0);
        if rev >= target {
            let features = v["features"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
                .map(|f| (f["name"].as_str().unwrap().to_string(), f))
                .collect();
            return (features, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the client API did not reach revision {target} in 30 s (at {rev})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Field-by-field differences between two client views: `(flag, field, before, after)`.
pub fn diff_views(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
) -> Vec<(String, String, Value, Value)> {
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for n in names {
        match (before.get(n), after.get(n)) {
            (Some(Value::Object(b)), Some(Value::Object(a))) => {
                let fields: std::collections::BTreeSet<&String> =
                    b.keys().chain(a.keys()).collect();
                for f in fields {
                    let (bv, av) = (
                        b.get(f).cloned().unwrap_or(Value::Null),
                        a.get(f).cloned().unwrap_or(Value::Null),
                    );
                    if bv != av {
                        out.push((n.clone(), f.clone(), bv, av));
                    }
                }
            }
            (b, a) => out.push((
                n.clone(),
                "<flag>".into(),
                b.cloned().unwrap_or(Value::Null),
                a.cloned().unwrap_or(Value::Null),
            )),
        }
    }
    out
}

use rollback_core::journal::{Journal, MemoryJournal};
use rollback_core::sim::CrashAfter;
use rollback_core::{Checkpoint, Context, Error, Executor, Outcome, Plan, ResumePolicy, Step};
use std::sync::Arc;

/// The core conformance suite (every check of `rollback_core::conformance::run_all`),
/// then [`interrupted_resumes`]: the same crash-and-resume check at several more crash
/// points, resumed by a fresh step (no in-process memory: only the journal).
pub async fn conformance(
    checkpoint: Arc<dyn Checkpoint>,
    other: Arc<dyn Checkpoint>,
    make_step: impl Fn() -> Arc<dyn Step>,
    crash_points: &[u64],
) {
    use rollback_core::conformance as c;
    let step = make_step();
    c::capture_mutate_restore(checkpoint.as_ref(), step.as_ref()).await;
    c::restore_refuses_tampered_digest(checkpoint.as_ref(), step.as_ref()).await;
    c::restore_refuses_other_resource(checkpoint.as_ref(), other.as_ref()).await;
    c::apply_and_revert_are_idempotent(step.as_ref(), checkpoint.as_ref()).await;
    c::revert_without_receipt(step.as_ref(), checkpoint.as_ref()).await;
    c::interrupted_step_resumes(
        step.clone(),
        checkpoint.clone(),
        Arc::new(MemoryJournal::new()),
    )
    .await;
    interrupted_resumes(checkpoint, make_step, crash_points).await;
}

/// A run killed after `n` journal records, for each `n`, is resumed by a fresh executor
/// with a fresh step: rolled back to the baseline under RollBack, committed to the same
/// state as an uninterrupted run under RollForward.
pub async fn interrupted_resumes(
    cp: Arc<dyn Checkpoint>,
    make_step: impl Fn() -> Arc<dyn Step>,
    crash_points: &[u64],
) {
    let ctx = Context::standalone(&format!("guard-{}", uuid::Uuid::new_v4()));
    let before = cp.fingerprint(&ctx).await.unwrap();
    let guard = cp.capture(&ctx).await.unwrap();
    let plan_with = |step: Arc<dyn Step>| {
        Plan::builder("flags-interrupted")
            .checkpoint("flags", cp.clone())
            .step("flags", step, &[])
            .build()
            .unwrap()
    };
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let clean = Executor::with_journal(journal.clone())
        .run(&plan_with(make_step()))
        .await
        .unwrap();
    assert_eq!(clean.outcome, Outcome::Committed, "{}", clean.to_markdown());
    let target = cp.fingerprint(&ctx).await.unwrap();
    cp.restore(&guard, &ctx).await.unwrap();
    for &n in crash_points {
        for policy in [ResumePolicy::RollBack, ResumePolicy::RollForward] {
            let known = journal.runs().await.unwrap();
            let err = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), n)))
                .holder("crashing")
                .on_resume(policy)
                .run(&plan_with(make_step()))
                .await
                .expect_err("the crashing journal must stop the run");
            assert!(matches!(err, Error::Crashed(_)), "{err:?}");
            let run = journal
                .runs()
                .await
                .unwrap()
                .into_iter()
                .find(|r| !known.contains(r))
                .unwrap();
            let report = Executor::with_journal(journal.clone())
                .holder("crashing")
                .resume(&plan_with(make_step()), &run)
                .await
                .unwrap();
            let now = cp.fingerprint(&ctx).await.unwrap();
            match policy {
                ResumePolicy::RollBack => {
                    assert_eq!(
                        report.outcome,
                        Outcome::RolledBack,
                        "crash after {n}: {}",
                        report.to_markdown()
                    );
                    assert!(report.parity_proven());
                    assert_eq!(now, before, "crash after {n}: resume did not roll back");
                }
                ResumePolicy::RollForward => {
                    assert_eq!(
                        report.outcome,
                        Outcome::Committed,
                        "crash after {n}: {}",
                        report.to_markdown()
                    );
                    assert_eq!(now, target, "crash after {n}: resume did not roll forward");
                }
            }
            cp.restore(&guard, &ctx).await.unwrap();
        }
    }
    assert_eq!(cp.fingerprint(&ctx).await.unwrap(), before);
}
