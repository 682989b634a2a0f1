//! [`State`]: what the journal says about a run. A run's state is a fold over its
//! journal records: the executor folds each record as it appends it, `resume` folds the
//! records of an earlier process, and the report reads the same fold.

use crate::executor::{RunPolicy, SnapshotRetention};
use crate::journal::{Entry, LostTail, Record};
use crate::{Plan, Receipt, Snapshot};
use std::collections::{BTreeMap, BTreeSet};

/// What the journal says about a run, folded from its records.
#[derive(Debug, Default, Clone)]
pub(crate) struct State {
    pub(crate) baseline: BTreeMap<String, Snapshot>,
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
    /// Snapshots whose discard was attempted (successfully or not).
    pub(crate) discarded: BTreeSet<String>,
    /// Baseline fingerprints of checkpoints fingerprinted without a snapshot.
    pub(crate) fingerprinted: BTreeMap<String, crate::Digest>,
    /// Checkpoints left as they are after the compensations (see `Entry::NotRestored`).
    pub(crate) not_restored: BTreeSet<String>,
    /// Steps whose revert failed and that are not reverted since.
    pub(crate) revert_failed: BTreeSet<String>,
}

impl State {
    pub(crate) fn from_records(records: &[Record]) -> Self {
        let mut s = State::default();
        for r in records {
            s.fold(&r.entry);
        }
        s
    }

    pub(crate) fn fold(&mut self, e: &Entry) {
        match e {
            Entry::CaptureIntent { .. } => self.capture_started = true,
            Entry::Captured {
                checkpoint,
                snapshot,
                ..
            } => {
                self.baseline.insert(checkpoint.clone(), snapshot.clone());
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
            Entry::RolledBack { .. } => self.rolled_back = true,
            Entry::Discarded { checkpoint, .. } => {
                self.discarded.insert(checkpoint.clone());
            }
            _ => {}
        }
    }

    pub(crate) fn finished(&self) -> bool {
        self.committed || self.rolled_back
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
