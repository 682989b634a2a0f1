//! The in-memory reference implementations pass the conformance suite every adapter runs:
//! `SimWorld::checkpoint` with a compensable `SetKey::new` and with a restore-only
//! `SetKey::delete`, each against the memory journal and the file journal.
//!
//! Each check also runs on its own, so a failure names the clause it broke.
#![cfg(feature = "conformance")]

use rollback_core::conformance::{self, Subject};
use rollback_core::journal::{FileJournal, Journal, MemoryJournal};
use rollback_core::sim::{CrashAfter, SetKey, SimWorld};
use rollback_core::{Checkpoint, Context, Error, Executor, Outcome, Plan, ResumePolicy, Step};
use std::sync::Arc;

fn world() -> SimWorld {
    let w = SimWorld::new();
    w.set("t", "a", "1");
    w.set("t", "b", "kept");
    w.set("u", "z", "other resource");
    w
}

async fn run_suite(world: &SimWorld, step: Arc<dyn Step>, journal: Arc<dyn Journal>) {
    let before = world.snapshot_state();
    conformance::run_all(Subject {
        checkpoint: Arc::new(world.checkpoint("t")),
        other_checkpoint: Arc::new(world.checkpoint("u")),
        step,
        journal,
    })
    .await;
    assert_eq!(
        world.snapshot_state(),
        before,
        "the suite leaves the resources as it found them"
    );
}

fn compensable(w: &SimWorld) -> Arc<dyn Step> {
    Arc::new(SetKey::new("set-a", w, "t", "a", "2"))
}

fn restore_only(w: &SimWorld) -> Arc<dyn Step> {
    Arc::new(SetKey::delete("drop-a", w, "t", "a"))
}

#[tokio::test]
async fn compensable_set_key_conforms_with_the_memory_journal() {
    let w = world();
    run_suite(&w, compensable(&w), Arc::new(MemoryJournal::new())).await;
}

#[tokio::test]
async fn compensable_set_key_conforms_with_the_file_journal() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
    run_suite(&w, compensable(&w), journal.clone()).await;
    // every run the suite made is a readable, verified journal
    for run in journal.runs().await.unwrap() {
        assert!(!journal.records(&run).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn restore_only_delete_conforms_with_the_memory_journal() {
    let w = world();
    run_suite(&w, restore_only(&w), Arc::new(MemoryJournal::new())).await;
}

#[tokio::test]
async fn restore_only_delete_conforms_with_the_file_journal() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
    run_suite(&w, restore_only(&w), journal.clone()).await;
    for run in journal.runs().await.unwrap() {
        assert!(!journal.records(&run).await.unwrap().is_empty());
    }
}

/// A key the step creates (absent in the baseline) is removed again by revert and restore.
#[tokio::test]
async fn set_key_creating_a_new_key_conforms() {
    let w = world();
    let step: Arc<dyn Step> = Arc::new(SetKey::new("add-c", &w, "t", "c", "new"));
    run_suite(&w, step, Arc::new(MemoryJournal::new())).await;
}

// ---------------------------------------------------------------------------------------
// the same checks, one by one

/// Every check of `run_all` but the last, then the crash-and-resume check under the policy
/// journaled by the run.
async fn run_checks(world: &SimWorld, step: Arc<dyn Step>, journal: Arc<dyn Journal>) {
    let before = world.snapshot_state();
    let cp: Arc<dyn Checkpoint> = Arc::new(world.checkpoint("t"));
    let other = world.checkpoint("u");
    conformance::capture_mutate_restore(cp.as_ref(), step.as_ref()).await;
    conformance::restore_refuses_tampered_digest(cp.as_ref(), step.as_ref()).await;
    conformance::restore_refuses_other_resource(cp.as_ref(), &other).await;
    conformance::apply_and_revert_are_idempotent(step.as_ref(), cp.as_ref()).await;
    conformance::revert_without_receipt(step.as_ref(), cp.as_ref()).await;
    interrupted_step_resumes_under_the_journaled_policy(step, cp, journal).await;
    assert_eq!(
        world.snapshot_state(),
        before,
        "the checks leave the resources as found"
    );
}

/// `conformance::interrupted_step_resumes`, with the resume policy given to the executor
/// that starts (and journals) the run: a run crashed right after the step's apply, before
/// its outcome is journaled, is rolled back to the baseline (RollBack) or applied to the
/// state of an uninterrupted run (RollForward) by a fresh executor.
async fn interrupted_step_resumes_under_the_journaled_policy(
    step: Arc<dyn Step>,
    cp: Arc<dyn Checkpoint>,
    journal: Arc<dyn Journal>,
) {
    let ctx = Context::standalone(&format!("interrupt-{}", uuid()));
    let fp = |cp: Arc<dyn Checkpoint>| async move {
        cp.fingerprint(&Context::detached()).await.unwrap()
    };
    let before = fp(cp.clone()).await;
    let guard = cp.capture(&ctx).await.unwrap();
    let plan = Plan::builder(format!("plan-{}", uuid()))
        .checkpoint("subject", cp.clone())
        .step("subject", step.clone(), &[])
        .build()
        .unwrap();
    let clean = Executor::with_journal(journal.clone())
        .holder("h")
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(clean.outcome, Outcome::Committed, "{}", clean.to_markdown());
    let target = fp(cp.clone()).await;
    assert_ne!(target, before);
    cp.restore(&guard, &ctx).await.unwrap();

    for policy in [ResumePolicy::RollBack, ResumePolicy::RollForward] {
        let runs_before = journal.runs().await.unwrap();
        // run_started, plan_described, lease_taken, capture_intent, captured, apply_intent:
        // the step runs, and the crash comes before `applied` is journaled.
        let crashing = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 6)))
            .holder("h")
            .on_resume(policy);
        let err = crashing.run(&plan).await.unwrap_err();
        assert!(matches!(err, Error::Crashed(_)), "{err:?}");
        assert_eq!(
            fp(cp.clone()).await,
            target,
            "the step ran before the crash"
        );
        let run_id = journal
            .runs()
            .await
            .unwrap()
            .into_iter()
            .find(|r| !runs_before.contains(r))
            .unwrap();
        let report = Executor::with_journal(journal.clone())
            .holder("h")
            .resume(&plan, &run_id)
            .await
            .unwrap();
        match policy {
            ResumePolicy::RollBack => {
                assert_eq!(
                    report.outcome,
                    Outcome::RolledBack,
                    "{}",
                    report.to_markdown()
                );
                assert!(report.parity_proven(), "{}", report.to_markdown());
                assert_eq!(fp(cp.clone()).await, before);
            }
            ResumePolicy::RollForward => {
                assert_eq!(
                    report.outcome,
                    Outcome::Committed,
                    "{}",
                    report.to_markdown()
                );
                assert_eq!(fp(cp.clone()).await, target);
            }
        }
        assert_eq!(report.resumes, 1);
        cp.restore(&guard, &ctx).await.unwrap();
    }
    assert_eq!(fp(cp.clone()).await, before);
    cp.discard(&guard, &ctx).await.unwrap();
}

fn uuid() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

#[tokio::test]
async fn compensable_set_key_passes_every_check_with_the_memory_journal() {
    let w = world();
    run_checks(&w, compensable(&w), Arc::new(MemoryJournal::new())).await;
}

#[tokio::test]
async fn compensable_set_key_passes_every_check_with_the_file_journal() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    run_checks(
        &w,
        compensable(&w),
        Arc::new(FileJournal::open(dir.path()).unwrap()),
    )
    .await;
}

#[tokio::test]
async fn restore_only_delete_passes_every_check_with_the_memory_journal() {
    let w = world();
    run_checks(&w, restore_only(&w), Arc::new(MemoryJournal::new())).await;
}

#[tokio::test]
async fn restore_only_delete_passes_every_check_with_the_file_journal() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    run_checks(
        &w,
        restore_only(&w),
        Arc::new(FileJournal::open(dir.path()).unwrap()),
    )
    .await;
}

#[tokio::test]
async fn set_key_creating_a_new_key_passes_every_check() {
    let w = world();
    let step: Arc<dyn Step> = Arc::new(SetKey::new("add-c", &w, "t", "c", "new"));
    run_checks(&w, step, Arc::new(MemoryJournal::new())).await;
}

/// The simulated world fences its writes, as a transactional backend can.
#[tokio::test]
async fn sim_steps_and_restores_are_fenced() {
    let w = world();
    let before = w.snapshot_state();
    let cp = w.checkpoint("t");
    conformance::step_writes_are_fenced(compensable(&w).as_ref(), &cp).await;
    conformance::restore_is_fenced(&cp, compensable(&w).as_ref()).await;
    assert_eq!(w.snapshot_state(), before);
}
