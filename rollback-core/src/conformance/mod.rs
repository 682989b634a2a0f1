//! The conformance suite: the checks every [`Checkpoint`] and [`Step`] implementation
//! runs against its real backend (and the in-memory reference implementations run
//! against memory), and in [`journal`] those of every [`Journal`]. Each check panics
//! with the contract clause it found broken, and leaves the resource as it found it when
//! it passes.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use rollback_core::conformance;
//! use rollback_core::journal::MemoryJournal;
//! use rollback_core::sim::{SimWorld, SetKey};
//!
//! let world = SimWorld::new();
//! world.set("t", "a", "1");
//! conformance::run_all(conformance::Subject {
//!     checkpoint: Arc::new(world.checkpoint("t")),
//!     other_checkpoint: Arc::new(world.checkpoint("u")),
//!     step: Arc::new(SetKey::new("set-a", &world, "t", "a", "2")),
//!     journal: Arc::new(MemoryJournal::new()),
//! }).await;
//! # });
//! ```

pub mod journal;

use crate::journal::Journal;
use crate::sim::CrashAfter;
use crate::{
    Checkpoint, Context, Digest, Error, Executor, Outcome, Plan, ResumePolicy, Reversibility, Step,
};
use std::sync::Arc;

/// What the suite runs against.
#[derive(Clone)]
pub struct Subject {
    /// A checkpoint of a resource the step changes.
    pub checkpoint: Arc<dyn Checkpoint>,
    /// A checkpoint of another resource (for the wrong-resource refusal).
    pub other_checkpoint: Arc<dyn Checkpoint>,
    /// A step that changes the checkpoint's resource (compensable or restore-only).
    pub step: Arc<dyn Step>,
    /// The journal to run the interrupted-step checks with.
    pub journal: Arc<dyn Journal>,
}

fn unique(label: &str) -> String {
    format!(
        "conformance-{label}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

async fn fp(cp: &dyn Checkpoint) -> Digest {
    cp.fingerprint(&Context::detached())
        .await
        .expect("fingerprint failed")
}

/// Checkpoint clauses 2, 3, 5, 6: capture is read-only; capture → mutate → restore gives
/// back the captured fingerprint, twice over.
pub async fn capture_mutate_restore(cp: &dyn Checkpoint, mutate: &dyn Step) {
    let ctx = Context::standalone(&unique("cmr"));
    let before = fp(cp).await;
    let snap = cp.capture(&ctx).await.expect("capture failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Checkpoint contract 2: capture changed the resource"
    );
    assert_eq!(
        snap.resource,
        cp.resource(),
        "Checkpoint contract 3: snapshot names another resource"
    );
    assert_eq!(
        snap.fingerprint, before,
        "Checkpoint contract 3: snapshot fingerprint is not the resource's"
    );
    let json = serde_json::to_vec(&snap).expect("snapshot serializes");
    let snap = crate::Snapshot::from_json(&json)
        .expect("Checkpoint contract 3: snapshot round-trips through JSON");
    mutate
        .apply(&ctx)
        .await
        .expect("mutating step failed to apply");
    assert_ne!(
        fp(cp).await,
        before,
        "Checkpoint contract 7: a change did not change the fingerprint"
    );
    cp.restore(&snap, &ctx).await.expect("restore failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Checkpoint contract 5: restore did not give back the captured state"
    );
    cp.restore(&snap, &ctx)
        .await
        .expect("Checkpoint contract 6: restoring twice failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Checkpoint contract 6: second restore changed the state"
    );
    // Forget the step's marker for this run, if it keeps one.
    let _ = mutate.revert(None, &ctx).await;
    cp.restore(&snap, &ctx).await.expect("restore failed");
    cp.discard(&snap, &ctx).await.expect("discard failed");
    // The executor may release a snapshot again after a crash between the release and its
    // journal record.
    cp.discard(&snap, &ctx)
        .await
        .expect("Checkpoint contract 8: discarding twice failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Checkpoint contract 8: discard changed the resource"
    );
}

/// Checkpoint clause 4: a snapshot whose digest does not match its content is refused
/// with [`Error::DigestMismatch`] and nothing changes.
pub async fn restore_refuses_tampered_digest(cp: &dyn Checkpoint, mutate: &dyn Step) {
    let ctx = Context::standalone(&unique("digest"));
    let before = fp(cp).await;
    let mut snap = cp.capture(&ctx).await.expect("capture failed");
    mutate
        .apply(&ctx)
        .await
        .expect("mutating step failed to apply");
    let changed = fp(cp).await;
    let good_digest = snap.digest;
    snap.digest = Digest::of(b"not the captured content");
    match cp.restore(&snap, &ctx).await {
        Err(Error::DigestMismatch { .. }) => {}
        other => panic!(
            "Checkpoint contract 4: tampered digest not refused with DigestMismatch: {other:?}"
        ),
    }
    assert_eq!(
        fp(cp).await,
        changed,
        "Checkpoint contract 4: a refused restore changed the resource"
    );
    snap.digest = good_digest;
    cp.restore(&snap, &ctx)
        .await
        .expect("restore of the untampered snapshot failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Checkpoint contract 5: restore did not give back the captured state"
    );
    let _ = mutate.revert(None, &ctx).await; // forget the step's marker, if any
    cp.restore(&snap, &ctx).await.expect("restore failed");
    cp.discard(&snap, &ctx).await.expect("discard failed");
    // The executor may release a snapshot again after a crash between the release and its
    // journal record.
    cp.discard(&snap, &ctx)
        .await
        .expect("Checkpoint contract 8: discarding twice failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Checkpoint contract 8: discard changed the resource"
    );
}

/// Checkpoint clause 4: a snapshot of another resource is refused with
/// [`Error::WrongResource`] and nothing changes.
pub async fn restore_refuses_other_resource(cp: &dyn Checkpoint, other: &dyn Checkpoint) {
    assert_ne!(
        cp.resource(),
        other.resource(),
        "Checkpoint contract 1: two resources share an id"
    );
    let ctx = Context::standalone(&unique("other"));
    let before = fp(cp).await;
    let snap = other
        .capture(&ctx)
        .await
        .expect("capture of the other resource failed");
    match cp.restore(&snap, &ctx).await {
        Err(Error::WrongResource { .. }) => {}
        other => panic!("Checkpoint contract 4: snapshot of another resource not refused with WrongResource: {other:?}"),
    }
    assert_eq!(
        fp(cp).await,
        before,
        "Checkpoint contract 4: a refused restore changed the resource"
    );
    other.discard(&snap, &ctx).await.expect("discard failed");
}

/// Step clauses 3, 4, 7: apply twice = apply once; revert twice = revert once (for
/// compensable steps; restore-only steps are undone by the checkpoint).
pub async fn apply_and_revert_are_idempotent(step: &dyn Step, cp: &dyn Checkpoint) {
    let ctx = Context::standalone(&unique("idem"));
    let before = fp(cp).await;
    let snap = cp.capture(&ctx).await.expect("capture failed");
    let r1 = step.apply(&ctx).await.expect("apply failed");
    let after = fp(cp).await;
    assert_ne!(
        after, before,
        "the step under test must change the checkpoint's resource"
    );
    let r2 = step
        .apply(&ctx)
        .await
        .expect("Step contract 3: second apply failed");
    assert_eq!(
        fp(cp).await,
        after,
        "Step contract 3: applying twice changed the state again"
    );
    let _ = r2;
    match step.reversibility() {
        Reversibility::Compensable => {
            step.revert(Some(&r1), &ctx).await.expect("revert failed");
            assert_eq!(
                fp(cp).await,
                before,
                "Step contract 4: revert did not restore the state"
            );
            step.revert(Some(&r1), &ctx)
                .await
                .expect("Step contract 4: second revert failed");
            assert_eq!(
                fp(cp).await,
                before,
                "Step contract 4: reverting twice changed the state"
            );
        }
        Reversibility::RestoreOnly => {
            step.revert(Some(&r1), &ctx)
                .await
                .expect("Step contract 7: revert of a restore-only step must not fail");
            cp.restore(&snap, &ctx).await.expect("restore failed");
            assert_eq!(
                fp(cp).await,
                before,
                "Checkpoint contract 5: restore did not undo the step"
            );
        }
        Reversibility::Irreversible => {
            assert!(
                matches!(
                    step.revert(Some(&r1), &ctx).await,
                    Err(Error::Irreversible { .. })
                ),
                "Step contract 7: an irreversible step's revert must fail with Irreversible"
            );
            cp.restore(&snap, &ctx).await.expect("restore failed");
        }
    }
    cp.discard(&snap, &ctx).await.expect("discard failed");
}

/// Step clause 5: `revert(None)` after an apply whose outcome is unknown undoes it; and
/// `revert(None)` of a step never applied changes nothing.
pub async fn revert_without_receipt(step: &dyn Step, cp: &dyn Checkpoint) {
    if step.reversibility() != Reversibility::Compensable {
        return;
    }
    let ctx = Context::standalone(&unique("noreceipt"));
    let before = fp(cp).await;
    step.revert(None, &ctx)
        .await
        .expect("Step contract 4: reverting a step never applied failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Step contract 4: reverting a step never applied changed the state"
    );
    step.apply(&ctx).await.expect("apply failed");
    step.revert(None, &ctx)
        .await
        .expect("Step contract 5: revert without receipt failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Step contract 5: revert without receipt did not undo the apply"
    );
}

/// Executor with the adapter: a run interrupted right after the step's apply (its outcome
/// not journaled) is resumed by a fresh executor — rolled back to the baseline, and,
/// under [`ResumePolicy::RollForward`], applied to the same state as an uninterrupted run.
pub async fn interrupted_step_resumes(
    step: Arc<dyn Step>,
    cp: Arc<dyn Checkpoint>,
    journal: Arc<dyn Journal>,
) {
    let ctx = Context::standalone(&unique("interrupt"));
    let before = fp(cp.as_ref()).await;
    let guard = cp.capture(&ctx).await.expect("capture failed");
    let plan = Plan::builder(unique("plan"))
        .checkpoint("subject", cp.clone())
        .step("subject", step.clone(), &[])
        .build()
        .expect("plan builds");

    // An uninterrupted run gives the target fingerprint.
    let holder = unique("holder");
    let clean = Executor::with_journal(journal.clone())
        .holder(&holder)
        .run(&plan)
        .await
        .expect("clean run");
    assert_eq!(
        clean.outcome,
        Outcome::Committed,
        "an uninterrupted run must commit: {}",
        clean.to_markdown()
    );
    let target = fp(cp.as_ref()).await;
    cp.restore(&guard, &ctx)
        .await
        .expect("restore between phases failed");
    assert_eq!(fp(cp.as_ref()).await, before);

    for policy in [ResumePolicy::RollBack, ResumePolicy::RollForward] {
        let runs_before = journal.runs().await.expect("runs");
        // Records: run_started, lease_taken, capture_intent, captured, apply_intent; the
        // crash comes before `applied` is written, after the step ran.
        let crashing =
            Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 5))).holder(&holder);
        let err = crashing
            .run(&plan)
            .await
            .expect_err("the crashing journal must stop the run");
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
                assert_eq!(
                    fp(cp.as_ref()).await,
                    before,
                    "resume did not roll back to the baseline"
                );
            }
            ResumePolicy::RollForward => {
                assert_eq!(
                    report.outcome,
                    Outcome::Committed,
                    "{}",
                    report.to_markdown()
                );
                assert_eq!(
                    fp(cp.as_ref()).await,
                    target,
                    "resume did not roll forward to the target"
                );
            }
        }
        cp.restore(&guard, &ctx)
            .await
            .expect("restore between phases failed");
    }
    // Leave nothing applied: revert markers of the runs above where the step keeps any.
    assert_eq!(fp(cp.as_ref()).await, before);
    cp.discard(&guard, &ctx).await.expect("discard failed");
}

/// Step clause 9, for adapters whose backend can fence (`rollback-postgres` does): a
/// write under an older [`Fence`](crate::Fence) than the newest seen for its key is
/// refused with [`Error::Fenced`] and changes nothing, and a newer runner's revert raises
/// the fence even when it has nothing to undo.
pub async fn step_writes_are_fenced(step: &dyn Step, cp: &dyn Checkpoint) {
    let key = unique("fence-key");
    let run = unique("fenced");
    let at = |epoch| {
        Context::standalone(&run).with_fence(crate::Fence {
            key: key.clone(),
            epoch,
        })
    };
    let (older, newer) = (at(1), at(2));
    let before = fp(cp).await;
    // The takeover reverts a step the paused runner may be about to apply.
    step.revert(None, &newer)
        .await
        .expect("revert of a step that never applied failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Step contract 4: a no-op revert changed the resource"
    );
    match step.apply(&older).await {
        Err(Error::Fenced { .. }) => {}
        other => panic!(
            "Step contract 9: an apply by an older runner after a newer one's revert was not fenced: {other:?}"
        ),
    }
    assert_eq!(
        fp(cp).await,
        before,
        "Step contract 9: a fenced apply changed the resource"
    );
    // The newer runner is not held back.
    let receipt = step
        .apply(&newer)
        .await
        .expect("apply by the newest runner failed");
    assert_ne!(
        fp(cp).await,
        before,
        "the newest runner's apply did nothing"
    );
    match step.revert(Some(&receipt), &older).await {
        Err(Error::Fenced { .. }) => {}
        other => panic!("Step contract 9: a revert by an older runner was not fenced: {other:?}"),
    }
    step.revert(Some(&receipt), &newer)
        .await
        .expect("revert by the newest runner failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Step contract 4: revert did not undo the apply"
    );
}

/// Checkpoint clause 9, for adapters whose backend can fence: a restore under an older
/// fence than the newest seen for its key is refused with [`Error::Fenced`] and changes
/// nothing. `mutate` must fence too (it raises the fence the restore is checked against).
pub async fn restore_is_fenced(cp: &dyn Checkpoint, mutate: &dyn Step) {
    let key = unique("fence-key");
    let run = unique("fenced-restore");
    let at = |epoch| {
        Context::standalone(&run).with_fence(crate::Fence {
            key: key.clone(),
            epoch,
        })
    };
    let (older, newer) = (at(1), at(2));
    let before = fp(cp).await;
    let snap = cp.capture(&newer).await.expect("capture failed");
    let receipt = mutate.apply(&newer).await.expect("mutating step failed");
    let changed = fp(cp).await;
    assert_ne!(changed, before);
    match cp.restore(&snap, &older).await {
        Err(Error::Fenced { .. }) => {}
        other => {
            panic!("Checkpoint contract 9: a restore by an older runner was not fenced: {other:?}")
        }
    }
    assert_eq!(
        fp(cp).await,
        changed,
        "Checkpoint contract 9: a fenced restore changed the resource"
    );
    cp.restore(&snap, &newer)
        .await
        .expect("restore by the newest runner failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Checkpoint contract 5: restore did not give back the captured state"
    );
    let _ = mutate.revert(Some(&receipt), &newer).await;
    cp.restore(&snap, &newer).await.expect("restore failed");
    cp.discard(&snap, &newer).await.expect("discard failed");
}

/// Every check above, in order.
pub async fn run_all(s: Subject) {
    capture_mutate_restore(s.checkpoint.as_ref(), s.step.as_ref()).await;
    restore_refuses_tampered_digest(s.checkpoint.as_ref(), s.step.as_ref()).await;
    restore_refuses_other_resource(s.checkpoint.as_ref(), s.other_checkpoint.as_ref()).await;
    apply_and_revert_are_idempotent(s.step.as_ref(), s.checkpoint.as_ref()).await;
    revert_without_receipt(s.step.as_ref(), s.checkpoint.as_ref()).await;
    interrupted_step_resumes(s.step.clone(), s.checkpoint.clone(), s.journal.clone()).await;
}
