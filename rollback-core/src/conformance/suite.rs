//! [`Suite`]: every check of the conformance suite run to the end, each clause's result
//! collected in a [`ConformanceReport`] instead of stopping at the first broken one.

use super::{Change, Subject};
use crate::{Checkpoint, Context, Reversibility, Step, Verifier};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// The result of one clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClauseStatus {
    /// The implementation keeps the clause.
    Passed,
    /// The implementation broke the clause (see the message).
    Failed,
    /// Not checked, for the reason in the message (the suite was given nothing to check
    /// it with, or it does not apply to this kind of step). Not a pass.
    NotChecked,
}

/// One clause of the suite and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClauseResult {
    /// Stable id, e.g. `checkpoint.restore_undoes_add/add-row` (after the `/`: the step
    /// or verifier it was checked with).
    pub id: String,
    /// What the clause promises, with the contract clauses it checks.
    pub title: String,
    /// Passed, failed or not checked.
    pub status: ClauseStatus,
    /// Why it failed (the broken clause and what was seen) or why it was not checked;
    /// `held` when it passed.
    pub message: String,
}

/// Every clause the suite ran, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConformanceReport {
    /// The clauses, in the order they ran.
    pub clauses: Vec<ClauseResult>,
}

impl ConformanceReport {
    /// Whether no clause failed (clauses not checked do not fail the suite; they are
    /// listed as such).
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The failed clauses.
    pub fn failures(&self) -> impl Iterator<Item = &ClauseResult> {
        self.clauses
            .iter()
            .filter(|c| c.status == ClauseStatus::Failed)
    }

    /// The clause with this id.
    pub fn get(&self, id: &str) -> Option<&ClauseResult> {
        self.clauses.iter().find(|c| c.id == id)
    }

    /// Print the report; panic naming the failed clauses, with the report, if any failed.
    ///
    /// # Panics
    /// When a clause failed.
    pub fn print_or_panic(&self) {
        println!("{self}");
        if !self.passed() {
            let failed: Vec<String> = self
                .failures()
                .map(|c| format!("{}: {}", c.id, c.message))
                .collect();
            panic!(
                "conformance: {} clause(s) failed:\n{}\n\n{self}",
                failed.len(),
                failed.join("\n")
            );
        }
    }

    fn count(&self, status: ClauseStatus) -> usize {
        self.clauses.iter().filter(|c| c.status == status).count()
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conformance: {} clauses, {} passed, {} failed, {} not checked",
            self.clauses.len(),
            self.count(ClauseStatus::Passed),
            self.count(ClauseStatus::Failed),
            self.count(ClauseStatus::NotChecked)
        )?;
        for c in &self.clauses {
            let tag = match c.status {
                ClauseStatus::Passed => "PASS",
                ClauseStatus::Failed => "FAIL",
                ClauseStatus::NotChecked => "----",
            };
            writeln!(f, "  {tag} {} — {}", c.id, c.title)?;
            if c.status != ClauseStatus::Passed {
                writeln!(f, "       {}", c.message)?;
            }
        }
        Ok(())
    }
}

/// The conformance suite over a [`Subject`], with optional changes of each kind
/// ([`Suite::change`]) and verifiers ([`Suite::verifier`]). Every clause runs to the end;
/// after a failed one the checkpoint's resource is restored from a guard snapshot taken
/// at the start, so later clauses start from the same state.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use rollback_core::conformance::{Change, ClauseStatus, Subject, Suite};
/// use rollback_core::journal::MemoryJournal;
/// use rollback_core::sim::{KeyEquals, SetKey, SimWorld};
///
/// let world = SimWorld::new();
/// world.set("t", "a", "1");
/// let report = Suite::new(Subject {
///     checkpoint: Arc::new(world.checkpoint("t")),
///     other_checkpoint: Arc::new(world.checkpoint("u")),
///     step: Arc::new(SetKey::new("set-a", &world, "t", "a", "2")),
///     journal: Arc::new(MemoryJournal::new()),
/// })
/// .change(Change::Add, SetKey::new("add-b", &world, "t", "b", "new"))
/// .change(Change::Delete, SetKey::delete("drop-a", &world, "t", "a"))
/// .verifier(
///     KeyEquals::new("a-is-1", &world, "t", "a", Some("1")),
///     SetKey::new("break-a", &world, "t", "a", "broken"),
/// )
/// .check()
/// .await;
/// assert!(report.passed(), "{report}");
/// assert_eq!(
///     report.get("checkpoint.restore_undoes_add/add-b").unwrap().status,
///     ClauseStatus::Passed
/// );
/// # });
/// ```
#[derive(Clone)]
pub struct Suite {
    subject: Subject,
    changes: Vec<(Change, Arc<dyn Step>)>,
    verifiers: Vec<(Arc<dyn Verifier>, Arc<dyn Step>)>,
}

impl Suite {
    /// The suite over `subject` (the checks [`run_all`](super::run_all) always ran, plus
    /// `touches()` of its step).
    pub fn new(subject: Subject) -> Self {
        Suite {
            subject,
            changes: Vec::new(),
            verifiers: Vec::new(),
        }
    }

    /// Also check that a restore undoes `step`, a change of kind `kind` to the
    /// checkpoint's resource, and that `step.touches()` names what it changes.
    pub fn change(mut self, kind: Change, step: impl Step + 'static) -> Self {
        self.changes.push((kind, Arc::new(step)));
        self
    }

    /// Also check `verifier` against the checkpoint's resource: it passes at the
    /// baseline, changes nothing, and does not pass after `breaks_it` is applied (then
    /// passes again once the checkpoint is restored).
    pub fn verifier(
        mut self,
        verifier: impl Verifier + 'static,
        breaks_it: impl Step + 'static,
    ) -> Self {
        self.verifiers
            .push((Arc::new(verifier), Arc::new(breaks_it)));
        self
    }

    /// Run every clause to the end and return what came of each.
    pub async fn check(self) -> ConformanceReport {
        let s = &self.subject;
        let cp = s.checkpoint.as_ref();
        let other = s.other_checkpoint.as_ref();
        let step = s.step.as_ref();
        let mut run = Runner::new(Some(cp)).await;

        run.clause(
            "checkpoint.capture_mutate_restore",
            "Checkpoint 2, 3, 5, 6, 7, 8: capture is read-only and names its resource; a change changes the fingerprint; restore gives back the captured state, twice over; discard is idempotent",
            super::capture_mutate_restore(cp, step),
        )
        .await;
        run.clause(
            "checkpoint.refuses_tampered_digest",
            "Checkpoint 4: a snapshot whose digest does not match is refused with DigestMismatch, changing nothing",
            super::restore_refuses_tampered_digest(cp, step),
        )
        .await;
        run.clause(
            "checkpoint.refuses_other_resource",
            "Checkpoint 1, 4: a snapshot of another resource is refused with WrongResource, changing nothing",
            super::restore_refuses_other_resource(cp, other),
        )
        .await;
        let changes: Vec<(Option<Change>, &Arc<dyn Step>)> = std::iter::once((None, &s.step))
            .chain(self.changes.iter().map(|(k, st)| (Some(*k), st)))
            .collect();
        for (_, st) in &changes {
            run.clause(
                &format!("step.touches_what_it_changes/{}", st.id()),
                &format!(
                    "Step 2: touches() of `{}` names every resource its apply changes",
                    st.id()
                ),
                super::step_touches_what_it_changes(st.as_ref(), &[cp, other]),
            )
            .await;
        }
        for kind in Change::ALL {
            let of_kind: Vec<&Arc<dyn Step>> = self
                .changes
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, st)| st)
                .collect();
            if of_kind.is_empty() {
                run.not_checked(
                    &format!("checkpoint.restore_undoes_{kind}"),
                    &format!("Checkpoint 5, 7: restore undoes a {kind}"),
                    &format!("no {kind} was given (Suite::change(Change::{kind:?}, step))"),
                );
            }
            for st in of_kind {
                run.clause(
                    &format!("checkpoint.restore_undoes_{kind}/{}", st.id()),
                    &format!(
                        "Checkpoint 5, 7: restore undoes a {kind} (`{}`): the fingerprint changes, then is the captured one again",
                        st.id()
                    ),
                    super::restore_undoes_change(cp, st.as_ref(), kind),
                )
                .await;
            }
        }
        run.clause(
            "step.idempotent_apply_and_revert",
            "Step 3, 4, 7: applying twice = applying once; reverting twice = reverting once (restore-only: the checkpoint undoes it; irreversible: revert refuses)",
            super::apply_and_revert_are_idempotent(step, cp),
        )
        .await;
        if step.reversibility() == Reversibility::Compensable {
            run.clause(
                "step.revert_without_receipt",
                "Step 4, 5: revert(None) of a step never applied changes nothing; after an apply it undoes it",
                super::revert_without_receipt(step, cp),
            )
            .await;
        } else {
            run.not_checked(
                "step.revert_without_receipt",
                "Step 4, 5: revert(None) of a step never applied changes nothing; after an apply it undoes it",
                &format!("`{}` is {} (a checkpoint undoes it)", step.id(), step.reversibility()),
            );
        }
        if self.verifiers.is_empty() {
            run.not_checked(
                "verifier",
                "Verifier 1, 4: read-only, passes at the baseline, fails once what it checks is broken",
                "no verifier was given (Suite::verifier(verifier, breaking_step))",
            );
        }
        for (v, breaks_it) in &self.verifiers {
            let v = v.as_ref();
            run.clause(
                &format!("verifier.is_read_only/{}", v.id()),
                &format!(
                    "Verifier 1, 4: `{}` changes nothing and gives the same status twice",
                    v.id()
                ),
                super::verifier_is_read_only(v, cp),
            )
            .await;
            run.clause(
                &format!("verifier.passes_at_baseline/{}", v.id()),
                &format!("Verifier 4: `{}` passes at the baseline", v.id()),
                super::verifier_passes_at_baseline(v),
            )
            .await;
            run.clause(
                &format!("verifier.fails_after_breaking_change/{}", v.id()),
                &format!(
                    "Verifier 4: `{}` does not pass after `{}`, and passes again after the restore",
                    v.id(),
                    breaks_it.id()
                ),
                super::verifier_fails_after_breaking_change(v, cp, breaks_it.as_ref()),
            )
            .await;
        }
        run.clause(
            "executor.interrupted_step_resumes",
            "Executor with the adapter: a run interrupted after the step's apply is rolled back to the baseline by resume, or rolled forward to the state of an uninterrupted run",
            super::interrupted_step_resumes(s.step.clone(), s.checkpoint.clone(), s.journal.clone()),
        )
        .await;
        run.finish().await
    }

    /// Run every clause, print the report, and panic naming the failed clauses if any
    /// failed.
    ///
    /// # Panics
    /// When a clause failed.
    pub async fn run(self) {
        self.check().await.print_or_panic()
    }
}

/// Runs clauses, catching the panic a broken clause raises, and puts the resource back
/// from a guard snapshot after each failure.
pub(super) struct Runner<'a> {
    cp: Option<&'a dyn Checkpoint>,
    ctx: Context,
    guard: Option<crate::Snapshot>,
    report: ConformanceReport,
}

impl<'a> Runner<'a> {
    /// A runner that puts `cp`'s resource back from a guard snapshot after each failed
    /// clause (none without a checkpoint).
    pub(super) async fn new(cp: Option<&'a dyn Checkpoint>) -> Runner<'a> {
        let ctx = Context::standalone(&super::unique("guard"));
        let guard = match cp {
            Some(cp) => cp.capture(&ctx).await.ok(),
            None => None,
        };
        Runner {
            cp,
            ctx,
            guard,
            report: ConformanceReport::default(),
        }
    }

    /// Run one clause to its end: passed, or failed with the message it panicked with.
    pub(super) async fn clause(&mut self, id: &str, title: &str, check: impl Future<Output = ()>) {
        let (status, message) = match AssertUnwindSafe(check).catch_unwind().await {
            Ok(()) => (ClauseStatus::Passed, "held".to_string()),
            Err(panic) => (ClauseStatus::Failed, panic_message(panic.as_ref())),
        };
        if status == ClauseStatus::Failed {
            if let (Some(cp), Some(g)) = (self.cp, &self.guard) {
                let _ = cp.restore(g, &self.ctx).await;
            }
        }
        self.report.clauses.push(ClauseResult {
            id: id.into(),
            title: title.into(),
            status,
            message,
        });
    }

    fn not_checked(&mut self, id: &str, title: &str, why: &str) {
        self.report.clauses.push(ClauseResult {
            id: id.into(),
            title: title.into(),
            status: ClauseStatus::NotChecked,
            message: why.into(),
        });
    }

    pub(super) async fn finish(self) -> ConformanceReport {
        if let (Some(cp), Some(g)) = (self.cp, &self.guard) {
            let _ = cp.discard(g, &self.ctx).await;
        }
        self.report
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}
