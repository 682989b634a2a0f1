//! The conformance suite: the checks every [`Checkpoint`] and [`Step`] implementation
//! runs against its real backend (and the in-memory reference implementations run
//! against memory), and in [`journal`] those of every [`Journal`]. Each check panics
//! with the contract clause it found broken, and leaves the resource as it found it.
//! [`Suite`] and [`check`] run every check to the end and return a [`ConformanceReport`]
//! of every clause; [`run_all`] prints that report and panics when a clause failed.
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
mod suite;

pub use suite::{ClauseResult, ClauseStatus, ConformanceReport, Suite};

use crate::journal::Journal;
use crate::sim::CrashAfter;
use crate::{
    Checkpoint, Context, Digest, Error, Executor, Outcome, Plan, ResumePolicy, Reversibility, Step,
    Verifier,
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
    let first = cp.restore(&snap, &ctx).await.expect("restore failed");
    assert_eq!(
        fp(cp).await,
        before,
        "Checkpoint contract 5: restore did not give back the captured state"
    );
    let second = cp
        .restore(&snap, &ctx)
        .await
        .expect("Checkpoint contract 6: restoring twice failed");
    if cp.restore_proves() {
        for (which, r) in [("first", &first), ("second", &second)] {
            assert_eq!(
                r.proof.as_ref().map(|p| p.fingerprint),
                Some(before),
                "Checkpoint contract 5: restore_proves, yet the {which} restore returned no proof of the captured state"
            );
        }
    }
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
        // Records: run_started, plan_described, lease_taken, capture_intent, captured,
        // apply_intent; the crash comes before `applied` is written, after the step ran.
        let crashing =
            Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 6))).holder(&holder);
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

/// Which kind of change a step makes to the checkpoint's resource, for
/// [`restore_undoes_change`] and [`Suite::change`]: a restore must undo each kind, and a
/// restore that only rewrites the captured items passes a modification yet leaves added
/// items behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Adds items (rows, objects, flags) that did not exist at capture.
    Add,
    /// Changes items that existed at capture.
    Modify,
    /// Deletes items that existed at capture.
    Delete,
}

impl Change {
    /// Every kind, in the order the suite checks them.
    pub const ALL: [Change; 3] = [Change::Add, Change::Modify, Change::Delete];

    /// `add`, `modify`, `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Add => "add",
            Change::Modify => "modify",
            Change::Delete => "delete",
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Undo what `step` did to the checkpoints' resources, best effort: its own revert, then
/// a restore of each snapshot whose resource differs from `before`; then release the
/// snapshots. Used before asserting, so a failing check leaves the resources as found.
async fn undo(
    step: &dyn Step,
    receipt: Option<&crate::Receipt>,
    cps: &[(&dyn Checkpoint, crate::Snapshot, Digest)],
    ctx: &Context,
) {
    let _ = step.revert(receipt, ctx).await;
    for (cp, snap, before) in cps {
        if cp.fingerprint(ctx).await.ok().as_ref() != Some(before) {
            let _ = cp.restore(snap, ctx).await;
        }
        let _ = cp.discard(snap, ctx).await;
    }
}

/// Step clause 2: [`Step::touches`] names every resource the step changes. The step is
/// applied once; each of `checkpoints` whose fingerprint changed must be named by
/// `touches()` (the resource itself, a part of it, or something containing it). Then the
/// step is reverted and the resources restored.
pub async fn step_touches_what_it_changes(step: &dyn Step, checkpoints: &[&dyn Checkpoint]) {
    let ctx = Context::standalone(&unique("touches"));
    let mut cps = Vec::new();
    for cp in checkpoints {
        let before = fp(*cp).await;
        let snap = cp.capture(&ctx).await.expect("capture failed");
        cps.push((*cp, snap, before));
    }
    let receipt = step.apply(&ctx).await.expect("apply failed");
    let mut changed = Vec::new();
    for (cp, _, before) in &cps {
        if fp(*cp).await != *before {
            changed.push(cp.resource().to_string());
        }
    }
    undo(step, Some(&receipt), &cps, &ctx).await;
    let touches = step.touches();
    assert!(
        !changed.is_empty(),
        "the step `{}` changed none of {:?}: cannot check what it names",
        step.id(),
        checkpoints.iter().map(|c| c.resource()).collect::<Vec<_>>()
    );
    for r in &changed {
        assert!(
            touches
                .iter()
                .any(|t| crate::resource_contains(t, r) || crate::resource_contains(r, t)),
            "Step contract 2: `{}` changed {r}, but touches() names {touches:?}",
            step.id()
        );
    }
}

/// Checkpoint clauses 5 and 7 for one kind of change: `change` changes the fingerprint,
/// and restoring the snapshot taken before it gives back the captured fingerprint — for
/// an [`Change::Add`], the added items are gone.
pub async fn restore_undoes_change(cp: &dyn Checkpoint, change: &dyn Step, kind: Change) {
    let ctx = Context::standalone(&unique(kind.as_str()));
    let before = fp(cp).await;
    let snap = cp.capture(&ctx).await.expect("capture failed");
    let receipt = change
        .apply(&ctx)
        .await
        .expect("the change failed to apply");
    let after = fp(cp).await;
    let restored = cp.restore(&snap, &ctx).await.map(|_| ());
    let now = fp(cp).await;
    undo(change, Some(&receipt), &[(cp, snap, before)], &ctx).await;
    assert_ne!(
        after,
        before,
        "Checkpoint contract 7: a {kind} (`{}`) did not change the fingerprint",
        change.id()
    );
    restored.expect("restore failed");
    assert_eq!(
        now,
        before,
        "Checkpoint contract 5: restore after a {kind} (`{}`) did not give back the captured state",
        change.id()
    );
}

/// Verifier clauses 1 and 4: verifying changes nothing, and verifying twice gives the same
/// status.
pub async fn verifier_is_read_only(v: &dyn Verifier, cp: &dyn Checkpoint) {
    let ctx = Context::standalone(&unique("verify-ro"));
    let before = fp(cp).await;
    let first = v.verify(&ctx).await.expect("the verifier could not run");
    let second = v.verify(&ctx).await.expect("the verifier could not run");
    assert_eq!(
        fp(cp).await,
        before,
        "Verifier contract 1: `{}` changed the resource it checks",
        v.id()
    );
    assert_eq!(
        first.status,
        second.status,
        "Verifier contract 4: `{}` gave two statuses over the same state ({} / {})",
        v.id(),
        first.summary,
        second.summary
    );
}

/// Verifier clause 4, first half: at the baseline (what it checks holds) it passes.
pub async fn verifier_passes_at_baseline(v: &dyn Verifier) {
    let ctx = Context::standalone(&unique("verify-base"));
    let verdict = v.verify(&ctx).await.expect("the verifier could not run");
    assert!(
        verdict.passed(),
        "Verifier contract 4: `{}` does not pass at the baseline: {:?} {}",
        v.id(),
        verdict.status,
        verdict.summary
    );
}

/// Verifier clause 4: after `breaks_it` is applied, the verifier does not pass; after the
/// checkpoint is restored, it passes again. A verifier that passes whatever the state
/// proves nothing.
pub async fn verifier_fails_after_breaking_change(
    v: &dyn Verifier,
    cp: &dyn Checkpoint,
    breaks_it: &dyn Step,
) {
    let ctx = Context::standalone(&unique("verify-broken"));
    let before = fp(cp).await;
    let snap = cp.capture(&ctx).await.expect("capture failed");
    let receipt = breaks_it
        .apply(&ctx)
        .await
        .expect("the breaking change failed");
    let broken = v.verify(&ctx).await;
    let restored = cp.restore(&snap, &ctx).await.map(|_| ());
    let again = v.verify(&ctx).await;
    undo(breaks_it, Some(&receipt), &[(cp, snap, before)], &ctx).await;
    let broken = broken.expect("the verifier could not run");
    assert!(
        !broken.passed(),
        "Verifier contract 4: `{}` still passes after `{}` broke what it checks: {}",
        v.id(),
        breaks_it.id(),
        broken.summary
    );
    restored.expect("restore failed");
    let again = again.expect("the verifier could not run");
    assert!(
        again.passed(),
        "Verifier contract 4: `{}` does not pass again after the restore: {:?} {}",
        v.id(),
        again.status,
        again.summary
    );
}

/// Every check above on `s`, in order, each to the end: prints the
/// [`ConformanceReport`] and panics when any clause failed. [`check`] returns the report
/// instead; [`Suite`] adds changes of each kind and verifiers.
pub async fn run_all(s: Subject) {
    Suite::new(s).run().await
}

/// Every check on `s`, each to the end, as a [`ConformanceReport`] (nothing panics).
pub async fn check(s: Subject) -> ConformanceReport {
    Suite::new(s).check().await
}
