//! Helpers shared by the integration tests: the real Unleash from `scripts/test`, unique
//! flag names, and Unleash's client API (what an application sees).
#![allow(dead_code, unreachable_pub)]

use rollback_flags::UnleashProvider;

pub use rollback_testkit::unleash::*;

pub fn unleash() -> UnleashProvider {
    UnleashProvider::new(&unleash_url(), admin_token(), "default", "development")
        .expect("unleash provider")
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
