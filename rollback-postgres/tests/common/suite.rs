//! The core conformance checks, with `interrupted_step_resumes` fixed: the core's version
//! builds the crashing executor without `.on_resume(policy)`, and `resume` follows the
//! policy journaled when the run started, so its RollForward half always rolls back
//! (reported to the core owner). Remove this copy when the core is fixed.

use rollback_core::conformance;
use rollback_core::journal::Journal;
use rollback_core::sim::CrashAfter;
use rollback_core::{Checkpoint, Context, Error, Executor, Outcome, Plan, ResumePolicy, Step};
use std::sync::Arc;

fn unique(label: &str) -> String {
    format!(
        "pgconf-{label}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn fp(cp: &dyn Checkpoint) -> rollback_core::Digest {
    cp.fingerprint(&Context::detached())
        .await
        .expect("fingerprint")
}

pub async fn interrupted_step_resumes(
    step: Arc<dyn Step>,
    cp: Arc<dyn Checkpoint>,
    journal: Arc<dyn Journal>,
) {
    let ctx = Context::standalone(&unique("interrupt"));
    let before = fp(cp.as_ref()).await;
    let guard = cp.capture(&ctx).await.expect("capture failed");
    let plan = Plan::builder(unique("plan"))
        .checkpoint_arc("subject", cp.clone())
        .step_arc("subject", step.clone(), &[])
        .build()
        .expect("plan builds");
    let holder = unique("holder");
    let clean = Executor::with_journal(journal.clone())
        .holder(&holder)
        .run(&plan)
        .await
        .expect("clean run");
    assert_eq!(clean.outcome, Outcome::Committed, "{}", clean.to_markdown());
    let target = fp(cp.as_ref()).await;
    cp.restore(&guard, &ctx)
        .await
        .expect("restore between phases");
    assert_eq!(fp(cp.as_ref()).await, before);
    for policy in [ResumePolicy::RollBack, ResumePolicy::RollForward] {
        let runs_before = journal.runs().await.expect("runs");
        let crashing = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 5)))
            .holder(&holder)
            .on_resume(policy);
        let err = crashing
            .run(&plan)
            .await
            .expect_err("the crashing journal stops the run");
        assert!(matches!(err, Error::Crashed(_)), "unexpected error {err:?}");
        let run_id = journal
            .runs()
            .await
            .expect("runs")
            .into_iter()
            .find(|r| !runs_before.contains(r))
            .expect("the interrupted run is in the journal");
        let report = Executor::with_journal(journal.clone())
            .holder(&holder)
            .on_resume(policy)
            .resume(&plan, &run_id)
            .await
            .expect("resume failed");
        match policy {
            ResumePolicy::RollBack => {
                assert_eq!(
                    report.outcome,
                    Outcome::RolledBack,
                    "{}",
                    report.to_markdown()
                );
                assert!(report.parity_proven(), "{}", report.to_markdown());
                assert_eq!(fp(cp.as_ref()).await, before, "resume did not roll back");
            }
            ResumePolicy::RollForward => {
                assert_eq!(
                    report.outcome,
                    Outcome::Committed,
                    "{}",
                    report.to_markdown()
                );
                assert_eq!(fp(cp.as_ref()).await, target, "resume did not roll forward");
            }
        }
        cp.restore(&guard, &ctx)
            .await
            .expect("restore between phases");
    }
    assert_eq!(fp(cp.as_ref()).await, before);
    cp.discard(&guard, &ctx).await.expect("discard failed");
}

/// Every check of the core suite (with the fixed interrupted check).
pub async fn run_all(s: conformance::Subject) {
    conformance::capture_mutate_restore(s.checkpoint.as_ref(), s.step.as_ref()).await;
    conformance::restore_refuses_tampered_digest(s.checkpoint.as_ref(), s.step.as_ref()).await;
    conformance::restore_refuses_other_resource(s.checkpoint.as_ref(), s.other_checkpoint.as_ref())
        .await;
    conformance::apply_and_revert_are_idempotent(s.step.as_ref(), s.checkpoint.as_ref()).await;
    conformance::revert_without_receipt(s.step.as_ref(), s.checkpoint.as_ref()).await;
    interrupted_step_resumes(s.step.clone(), s.checkpoint.clone(), s.journal.clone()).await;
}
