//! [`State`]: what the journal says about a run. A run's state is a fold over its
//! journal records: the executor folds each record as it appends it, `resume` folds the
//! records of an earlier process, and the report reads the same fold.

use crate::executor::{RunPolicy, SnapshotRetention};
use crate::journal::{Entry, LostTail, Record, TailAssumption};
use crate::report::{Detection, VerdictReport};
use crate::{Discarded, Plan, Receipt, Snapshot, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What the journal says about a run, folded from its records.
#[derive(Debug, Default, Clone)]
pub(crate) struct State {
    /// Shared with every [`crate::Context`] of the run: a snapshot's descriptor can hold
    /// thousands of chunk digests, too many to copy for each step and restore.
    pub(crate) baseline: Arc<BTreeMap<String, Snapshot>>,
    pub(crate) capture_started: bool,
    /// Applied steps: `Some(receipt)`, or `None` when the outcome is uncertain.
    pub(crate) applied: BTreeMap<String, Option<Receipt>>,
    pub(crate) maybe_applied: BTreeSet<String>,
    pub(crate) cursors: BTreeMap<String, serde_json::Value>,
    pub(crate) reverted: BTreeSet<String>,
    pub(crate) restored: BTreeSet<String>,
    pub(crate) parity: BTreeMap<String, bool>,
    pub(crate) rollback: Option<(String, Vec<String>, Vec<String>)>,
    pub(crate) committed: bool,
    pub(crate) rolled_back: bool,
    /// The run has ended: its last outcome is not revoked ([`Entry::ends_run`], the rule
    /// journals index open runs by).
    pub(crate) ended: bool,
    /// Snapshots whose discard was attempted (successfully or not).
    pub(crate) discarded: BTreeSet<String>,
    /// Baseline fingerprints of checkpoints fingerprinted without a snapshot.
    pub(crate) fingerprinted: BTreeMap<String, crate::Digest>,
    /// Checkpoints left as they are after the compensations (see `Entry::NotRestored`).
    pub(crate) not_restored: BTreeSet<String>,
    /// Steps whose revert failed and that are not reverted since.
    pub(crate) revert_failed: BTreeSet<String>,

    // What the report reads: when each thing happened and how long it took.
    /// Time of the first record (epoch ms).
    pub(crate) started_at_ms: Option<u64>,
    /// Time of the last record folded (epoch ms).
    pub(crate) last_at_ms: u64,
    /// The plan as the run's `plan_described` record gives it (the last one, if several).
    pub(crate) description: Option<crate::PlanDescription>,
    /// The plan digest `run_started` gives.
    pub(crate) plan_digest: Option<crate::Digest>,
    /// The run is a rehearsal (from `run_started`).
    pub(crate) rehearsal: bool,
    /// Per step: attempts, durations, last error.
    pub(crate) steps: BTreeMap<String, StepLog>,
    /// Per checkpoint: capture, restores, parity, release.
    pub(crate) checkpoints: BTreeMap<String, CheckpointLog>,
    /// Every verdict, with its phase and the time of its record.
    pub(crate) verdicts: Vec<VerdictReport>,
    /// The failing verdict that started the rollback, when one did.
    pub(crate) detection: Option<Detection>,
    /// Time of the first `rollback_started`.
    pub(crate) rollback_started_at_ms: Option<u64>,
    /// Time of the last `rolled_back`, and whether it was partial.
    pub(crate) rolled_back_at_ms: Option<u64>,
    pub(crate) partial: bool,
    /// The last `rollback_failed`: what remained and why.
    pub(crate) rollback_failed: Option<(Vec<String>, String)>,
    /// How many times the run was resumed.
    pub(crate) resumes: u32,
    /// Lease takeovers from expired holders: (holder, previous holder, epoch).
    pub(crate) takeovers: Vec<(String, String, u64)>,
    /// What the journal lost or repaired at the end of the run.
    pub(crate) journal_repairs: Vec<JournalRepair>,
    /// When a resumed run went straight to rollback, the outage began when the run was
    /// interrupted (its last record before the resume), not at the resume.
    pub(crate) interrupted_at_ms: Option<u64>,
    /// Time of the last `committed` record (kept when the commit is revoked).
    pub(crate) committed_at_ms: Option<u64>,
    /// Time of the `rollback_after_commit` record: the commit was revoked.
    pub(crate) reopened_at_ms: Option<u64>,
    /// A step was applied since the last resume.
    applying_since_resume: bool,
    /// The last record folded was this verdict (index into `verdicts`).
    last_verdict: Option<usize>,
}

/// A step's attempts as its records tell them.
#[derive(Debug, Default, Clone)]
pub(crate) struct StepLog {
    /// The attempt number of the last `apply_intent`.
    pub(crate) apply_attempts: u32,
    /// Duration of the last successful apply.
    pub(crate) apply_ms: Option<u64>,
    /// The attempt number of the last `revert_intent`.
    pub(crate) revert_attempts: u32,
    /// Duration of the last successful revert.
    pub(crate) revert_ms: Option<u64>,
    /// The last apply or revert error.
    pub(crate) last_error: Option<String>,
}

/// A checkpoint's capture, restores and release as its records tell them.
#[derive(Debug, Default, Clone)]
pub(crate) struct CheckpointLog {
    /// Capture time (the snapshot's, or the fingerprint record's).
    pub(crate) captured_at_ms: Option<u64>,
    /// Capture (or fingerprint) duration.
    pub(crate) capture_ms: Option<u64>,
    /// Only a baseline fingerprint was taken.
    pub(crate) fingerprint_only: bool,
    /// Why it was left as it is after the compensations.
    pub(crate) not_restored: Option<String>,
    /// The last restore: method, items written back, duration, record time.
    pub(crate) last_restore: Option<RestoreLog>,
    /// How many restores were recorded.
    pub(crate) restores: u32,
    /// Writes of others that the restores discarded, summed over the restores that
    /// counted them.
    pub(crate) discarded_writes: Option<Discarded>,
    /// A restore other than a no-op did not count what it discarded.
    pub(crate) uncounted_discards: bool,
    /// Items the last restore with a proof set aside.
    pub(crate) kept_writes: Option<u64>,
    /// How the last restore with a proof established it, when not by a full read.
    pub(crate) proof_method: Option<String>,
    /// The snapshot's release: `Ok(())` released, `Err(why)` failed.
    pub(crate) released: Option<std::result::Result<(), String>>,
}

/// One restore of a checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct RestoreLog {
    pub(crate) method: String,
    pub(crate) items: Option<u64>,
    pub(crate) duration_ms: u64,
    pub(crate) at_ms: u64,
}

/// What the journal repaired at the end of a run.
#[derive(Debug, Clone)]
pub(crate) enum JournalRepair {
    /// A record cut short was dropped.
    Truncated { bytes: u64, kind: Option<String> },
    /// A lost tail was resolved by an explicit assumption.
    LossResolved {
        lost: String,
        assumed: TailAssumption,
    },
}

impl State {
    pub(crate) fn from_records(records: &[Record]) -> Self {
        let mut s = State::default();
        for r in records {
            s.fold(r);
        }
        s
    }

    /// Fold one record into the state. The executor calls it with every record it
    /// appends; [`State::from_records`] with every record of the run.
    pub(crate) fn fold(&mut self, r: &Record) {
        self.fold_timing(r);
        self.fold_entry(&r.entry);
        if let Some(ended) = r.entry.ends_run() {
            self.ended = ended;
        }
        self.last_at_ms = r.at_ms;
    }

    /// What the report needs beyond what the executor decides with: times, durations,
    /// attempts, verdicts, restores, releases.
    fn fold_timing(&mut self, r: &Record) {
        let at = r.at_ms;
        let first = self.started_at_ms.is_none();
        let started = *self.started_at_ms.get_or_insert(at);
        if first {
            self.last_at_ms = started;
        }
        let last_verdict = self.last_verdict.take();
        match &r.entry {
            Entry::RunStarted {
                policy,
                plan_digest,
                ..
            } => {
                self.rehearsal |= policy.rehearsal;
                self.plan_digest.get_or_insert(*plan_digest);
            }
            Entry::PlanDescribed(d) => self.description = Some((**d).clone()),
            Entry::LeaseTaken {
                holder,
                taken_over_from: Some(prev),
                epoch,
            } => self.takeovers.push((holder.clone(), prev.clone(), *epoch)),
            Entry::TailTruncated { bytes, kind } => {
                self.journal_repairs.push(JournalRepair::Truncated {
                    bytes: *bytes,
                    kind: kind.clone(),
                })
            }
            Entry::TailLossResolved { lost, assumed } => {
                self.journal_repairs.push(JournalRepair::LossResolved {
                    lost: lost.clone(),
                    assumed: *assumed,
                })
            }
            Entry::Resumed { .. } => {
                self.resumes += 1;
                if self.rollback_started_at_ms.is_none() {
                    self.interrupted_at_ms = Some(self.last_at_ms);
                    self.applying_since_resume = false;
                }
            }
            Entry::Fingerprinted {
                checkpoint,
                duration_ms,
                ..
            } => {
                let c = self.checkpoints.entry(checkpoint.clone()).or_default();
                c.captured_at_ms = Some(at);
                c.capture_ms = Some(*duration_ms);
                c.fingerprint_only = true;
            }
            Entry::NotRestored { checkpoint, reason } => {
                self.checkpoints
                    .entry(checkpoint.clone())
                    .or_default()
                    .not_restored = Some(reason.clone());
            }
            Entry::Captured {
                checkpoint,
                snapshot,
                duration_ms,
            } => {
                let c = self.checkpoints.entry(checkpoint.clone()).or_default();
                c.captured_at_ms = Some(snapshot.captured_at_ms);
                c.capture_ms = Some(*duration_ms);
            }
            Entry::ApplyIntent { step, attempt } => {
                self.applying_since_resume = true;
                self.steps.entry(step.clone()).or_default().apply_attempts = *attempt;
            }
            Entry::Applied {
                step, duration_ms, ..
            } => {
                self.steps.entry(step.clone()).or_default().apply_ms = Some(*duration_ms);
            }
            Entry::ApplyFailed { step, error, .. } | Entry::RevertFailed { step, error, .. } => {
                self.steps.entry(step.clone()).or_default().last_error = Some(error.clone());
            }
            Entry::Verdict {
                verifier,
                phase,
                verdict,
            } => {
                self.verdicts.push(VerdictReport {
                    verifier: verifier.clone(),
                    phase: phase.clone(),
                    at_ms: at,
                    verdict: verdict.clone(),
                });
                self.last_verdict = Some(self.verdicts.len() - 1);
            }
            Entry::Committed => self.committed_at_ms = Some(at),
            Entry::RollbackAfterCommit { .. } => {
                self.reopened_at_ms.get_or_insert(at);
                self.rollback_started_at_ms.get_or_insert(at);
            }
            Entry::RollbackStarted { reason, .. } => {
                if self.rollback_started_at_ms.is_none() {
                    if self.applying_since_resume {
                        self.interrupted_at_ms = None; // the resumed run applied, then failed
                    }
                    self.detection = last_verdict
                        .and_then(|i| self.verdicts.get(i))
                        .filter(|v| !self.rehearsal && started_by(v, reason))
                        .map(|v| Detection {
                            verifier: v.verifier.clone(),
                            phase: v.phase.clone(),
                            detected_at_ms: v.at_ms,
                            rollback_started_at_ms: at,
                            latency_ms: at.saturating_sub(v.at_ms),
                            summary: v.verdict.summary.clone(),
                        });
                }
                self.rollback_started_at_ms.get_or_insert(at);
            }
            Entry::RevertIntent { step, attempt } => {
                self.steps.entry(step.clone()).or_default().revert_attempts = *attempt;
            }
            Entry::Reverted { step, duration_ms } => {
                self.steps.entry(step.clone()).or_default().revert_ms = Some(*duration_ms);
            }
            Entry::Restored {
                checkpoint,
                method,
                items_changed,
                duration_ms,
                discarded,
                proof,
            } => {
                let c = self.checkpoints.entry(checkpoint.clone()).or_default();
                c.last_restore = Some(RestoreLog {
                    method: method.clone(),
                    items: *items_changed,
                    duration_ms: *duration_ms,
                    at_ms: at,
                });
                c.restores += 1;
                if let Some(d) = discarded {
                    let sum = c.discarded_writes.get_or_insert_with(|| Discarded {
                        exact: true,
                        ..Default::default()
                    });
                    sum.items += d.items;
                    sum.exact &= d.exact;
                    sum.includes_run |= d.includes_run;
                    sum.keys.extend(d.keys.iter().cloned());
                    sum.conflicts.extend(d.conflicts.iter().cloned());
                } else if !method.eq_ignore_ascii_case("noop") {
                    c.uncounted_discards = true;
                }
                if let Some(p) = proof {
                    c.kept_writes = Some(p.set_aside);
                    c.proof_method = p.method.clone();
                }
            }
            Entry::RolledBack { partial } => {
                self.partial = *partial;
                self.rolled_back_at_ms = Some(at);
            }
            Entry::Discarded { checkpoint, error } => {
                self.checkpoints
                    .entry(checkpoint.clone())
                    .or_default()
                    .released = Some(match error {
                    None => Ok(()),
                    Some(e) => Err(e.clone()),
                });
            }
            Entry::RollbackFailed { remaining, error } => {
                self.rollback_failed = Some((remaining.clone(), error.clone()));
            }
            _ => {}
        }
    }

    /// What the executor decides with.
    fn fold_entry(&mut self, e: &Entry) {
        match e {
            Entry::CaptureIntent { .. } => self.capture_started = true,
            Entry::Captured {
                checkpoint,
                snapshot,
                ..
            } => {
                Arc::make_mut(&mut self.baseline).insert(checkpoint.clone(), snapshot.clone());
            }
            Entry::ApplyIntent { step, .. } => {
                if let Some(None) = self.applied.get(step) {
                    // An earlier attempt ended without an outcome: it may have applied.
                    self.maybe_applied.insert(step.clone());
                }
                self.applied.insert(step.clone(), None);
            }
            Entry::Applied { step, receipt, .. } => {
                self.applied.insert(step.clone(), Some(receipt.clone()));
            }
            Entry::ApplyFailed {
                step,
                maybe_applied,
                ..
            } => {
                if *maybe_applied {
                    self.maybe_applied.insert(step.clone());
                } else if !self.maybe_applied.contains(step) {
                    self.applied.remove(step);
                }
            }
            Entry::Progress { step, cursor } => {
                self.cursors.insert(step.clone(), cursor.clone());
            }
            Entry::RollbackStarted {
                reason,
                steps,
                checkpoints,
            } => {
                self.rollback = Some((reason.clone(), steps.clone(), checkpoints.clone()));
            }
            Entry::Reverted { step, .. } => {
                self.reverted.insert(step.clone());
                self.revert_failed.remove(step);
            }
            Entry::RevertFailed { step, .. } => {
                self.revert_failed.insert(step.clone());
            }
            Entry::Fingerprinted {
                checkpoint,
                fingerprint,
                ..
            } => {
                self.fingerprinted.insert(checkpoint.clone(), *fingerprint);
            }
            Entry::NotRestored { checkpoint, .. } => {
                self.not_restored.insert(checkpoint.clone());
            }
            Entry::Restored { checkpoint, .. } => {
                self.restored.insert(checkpoint.clone());
            }
            Entry::Parity {
                checkpoint,
                expected,
                actual,
            } => {
                self.parity.insert(checkpoint.clone(), expected == actual);
            }
            Entry::Committed => self.committed = true,
            Entry::RollbackAfterCommit {
                reason,
                steps,
                checkpoints,
                ..
            } => {
                self.committed = false;
                self.rollback = Some((reason.clone(), steps.clone(), checkpoints.clone()));
            }
            Entry::RolledBack { .. } => self.rolled_back = true,
            Entry::Discarded { checkpoint, .. } => {
                self.discarded.insert(checkpoint.clone());
            }
            _ => {}
        }
    }

    /// The commit was revoked by a rollback after it.
    pub(crate) fn reopened(&self) -> bool {
        self.reopened_at_ms.is_some()
    }

    /// Captured snapshots whose release was recorded (successful or not).
    pub(crate) fn released_snapshots(&self) -> Vec<String> {
        self.baseline
            .keys()
            .filter(|k| self.discarded.contains(*k))
            .cloned()
            .collect()
    }

    pub(crate) fn finished(&self) -> bool {
        self.ended
    }

    /// The baseline fingerprint of a checkpoint: its snapshot's, or the one taken alone.
    pub(crate) fn baseline_fingerprint(&self, resource: &str) -> Option<crate::Digest> {
        self.baseline
            .get(resource)
            .map(|s| s.fingerprint)
            .or_else(|| self.fingerprinted.get(resource).copied())
    }

    /// Whether undoing the steps in `scope` needs `resource` restored from its snapshot:
    /// an applied step undone by a restore of it is not yet undone, or a compensation
    /// touching it failed (the snapshot is its fallback).
    pub(crate) fn restore_needed(
        &self,
        plan: &Plan,
        scope: &BTreeSet<&String>,
        resource: &str,
    ) -> bool {
        plan.steps().iter().any(|ps| {
            let id = ps.id().to_string();
            if !scope.contains(&id)
                || !self.applied.contains_key(&id)
                || self.reverted.contains(&id)
            {
                return false;
            }
            match plan.undo(&id) {
                Some(crate::Undo::Restore { resources }) => resources.iter().any(|r| r == resource),
                Some(crate::Undo::Compensation) => {
                    self.revert_failed.contains(&id)
                        && ps.step.touches().iter().any(|r| r == resource)
                }
                _ => false,
            }
        })
    }

    /// Whether the run, as its records leave it, would write `committed` next (every step
    /// applied with a receipt, verified, no rollback started, not a rehearsal).
    pub(crate) fn commit_may_be_next(&self, plan: &Plan, policy: &RunPolicy) -> bool {
        !self.finished()
            && self.rollback.is_none()
            && !policy.rehearsal
            && plan
                .steps()
                .iter()
                .all(|s| matches!(self.applied.get(s.id()), Some(Some(_))))
    }

    /// The outcome that records lost at the end of the run may have held, which resuming
    /// on the surviving records would contradict: `committed` (resume would roll a
    /// committed run back) or `rolled_back` (resume would restore again over writes made
    /// since). `None` when the loss cannot have hidden an outcome.
    pub(crate) fn outcome_maybe_lost(
        &self,
        plan: &Plan,
        policy: &RunPolicy,
        lost: &LostTail,
    ) -> Option<&'static str> {
        if !self.committed && lost.names_outcome("committed") {
            return Some("committed");
        }
        if !self.rolled_back && lost.names_outcome("rolled_back") {
            return Some("rolled_back");
        }
        let unknown_record = lost.torn_bytes > 0 && lost.torn_kind.is_none();
        if unknown_record && self.commit_may_be_next(plan, policy) {
            return Some("committed");
        }
        None
    }

    /// Whether the snapshot of `resource` is to be released now under `retention`.
    pub(crate) fn to_release(&self, resource: &str, retention: SnapshotRetention) -> bool {
        self.finished()
            && self.baseline.contains_key(resource)
            && !self.discarded.contains(resource)
            && match retention {
                SnapshotRetention::Release => true,
                SnapshotRetention::KeepMigrated => {
                    self.rolled_back && self.parity.get(resource) == Some(&true)
                }
                SnapshotRetention::KeepAll => false,
            }
    }

    /// A finished run with snapshots to release under `retention`.
    pub(crate) fn discard_pending(&self, retention: SnapshotRetention) -> bool {
        self.baseline.keys().any(|k| self.to_release(k, retention))
    }
}

/// Whether the verdict `v`, recorded right before `rollback_started` with `reason`, is
/// what started the rollback: it did not pass, or it is the soak poll that breached its
/// trigger's threshold (a passing verdict whose value is over the trigger's limit).
fn started_by(v: &VerdictReport, reason: &str) -> bool {
    v.verdict.status != Status::Pass
        || (v.phase == "soak" && reason.starts_with(&format!("trigger {} breached", v.verifier)))
}
