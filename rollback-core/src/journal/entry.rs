//! [`Entry`]: what a journal record says happened (or is about to happen).

use super::TailAssumption;
use crate::executor::RunPolicy;
use crate::{Digest, Discarded, Proof, Receipt, Snapshot, Verdict};
use serde::{Deserialize, Serialize};

/// What a journal record says happened (or is about to happen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)] // fields are named for what they hold
pub enum Entry {
    /// A run started.
    RunStarted {
        plan: String,
        plan_digest: Digest,
        holder: String,
        policy: RunPolicy,
    },
    /// What the run's report needs to know about its plan (steps, checkpoints, verifiers,
    /// objectives, owners), written right after `run_started` so that the report can be
    /// rebuilt from the records alone. Runs journaled before this record existed lack it
    /// (see [`RunReport::rebuild`](crate::RunReport::rebuild)).
    PlanDescribed(Box<crate::PlanDescription>),
    /// The lease on the plan was taken (possibly from an expired holder), with the fencing
    /// epoch of the grant: from this record on, the run refuses appends of older epochs.
    LeaseTaken {
        holder: String,
        taken_over_from: Option<String>,
        #[serde(default)]
        epoch: u64,
    },
    /// A crashed or stopped run was resumed.
    Resumed { holder: String },
    /// A baseline capture is about to start.
    CaptureIntent { checkpoint: String },
    /// A checkpoint's baseline was fingerprinted without a snapshot: no undo path of the
    /// plan restores it (compensations undo every change to it), so only parity is
    /// checked against this fingerprint after a rollback.
    Fingerprinted {
        checkpoint: String,
        fingerprint: Digest,
        duration_ms: u64,
    },
    /// After the compensations, a checkpoint differs from its baseline and is not
    /// restored: no step left to undo needs it, and its restore would discard the writes
    /// others made since capture. Parity is not proven for it; `reason` says why.
    NotRestored { checkpoint: String, reason: String },
    /// A baseline was captured.
    Captured {
        checkpoint: String,
        snapshot: Snapshot,
        duration_ms: u64,
    },
    /// A step is about to be applied.
    ApplyIntent { step: String, attempt: u32 },
    /// A step was applied; the receipt is everything needed to undo it.
    Applied {
        step: String,
        receipt: Receipt,
        duration_ms: u64,
    },
    /// An apply failed.
    ApplyFailed {
        step: String,
        attempt: u32,
        error: String,
        maybe_applied: bool,
        transient: bool,
    },
    /// A resumable step saved its cursor.
    Progress {
        step: String,
        cursor: serde_json::Value,
    },
    /// A verifier returned (or failed to run: status inconclusive).
    Verdict {
        verifier: String,
        phase: String,
        verdict: Verdict,
    },
    /// Rollback started.
    RollbackStarted {
        reason: String,
        steps: Vec<String>,
        checkpoints: Vec<String>,
    },
    /// A step is about to be reverted.
    RevertIntent { step: String, attempt: u32 },
    /// A step was reverted.
    Reverted { step: String, duration_ms: u64 },
    /// A revert failed.
    RevertFailed {
        step: String,
        attempt: u32,
        error: String,
    },
    /// A checkpoint restore is about to start.
    RestoreIntent { checkpoint: String },
    /// A checkpoint was restored.
    Restored {
        checkpoint: String,
        method: String,
        items_changed: Option<u64>,
        duration_ms: u64,
        /// Writes by others than the run that the restore discarded, where known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        discarded: Option<Discarded>,
        /// The parity proof the restore took under its own lock, if it could.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<Proof>,
    },
    /// A restore failed.
    RestoreFailed { checkpoint: String, error: String },
    /// Parity of a resource with its baseline fingerprint was checked.
    Parity {
        checkpoint: String,
        expected: Digest,
        actual: Digest,
    },
    /// The run committed: every step applied and verified.
    Committed,
    /// The run rolled back, with parity proven for every resource in scope.
    RolledBack { partial: bool },
    /// The rollback could not finish; `remaining` names what is left.
    RollbackFailed {
        remaining: Vec<String>,
        error: String,
    },
    /// A committed run is being rolled back
    /// ([`Executor::rollback_committed`](crate::Executor::rollback_committed)): its commit
    /// is revoked and the rollback of `steps`, restoring `checkpoints`, starts, as
    /// `rollback_started` does before a commit. One record, so a crash leaves either the
    /// committed run or a rollback that `resume` finishes.
    RollbackAfterCommit {
        reason: String,
        holder: String,
        steps: Vec<String>,
        checkpoints: Vec<String>,
    },
    /// A journal dropped the cut-short bytes of a record after the last complete one (a
    /// write torn by a crash) before appending; `kind` is the entry type of the cut record
    /// when enough of it survived to tell.
    TailTruncated {
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
    },
    /// Records at the end of the run were lost (see [`Journal::lost_tail`](super::Journal::lost_tail)) and resume was
    /// told explicitly what to assume about them.
    TailLossResolved {
        /// What was lost, as the journal described it.
        lost: String,
        /// The assumption made.
        assumed: TailAssumption,
    },
    /// After the run ended (committed or rolled back), a baseline snapshot's storage was
    /// released with [`Checkpoint::discard`](crate::Checkpoint::discard); `error` when that
    /// failed (the snapshot is then left in place, named in the report).
    Discarded {
        checkpoint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Entry {
    /// Whether the entry can hold a float (a verdict's value, a plan's thresholds), which
    /// JSON cannot always carry as it is (NaN and infinity are written as `null`).
    pub(crate) fn may_hold_floats(&self) -> bool {
        matches!(self, Entry::Verdict { .. } | Entry::PlanDescribed(_))
    }

    /// The `type` tag of the entry, e.g. `apply_intent`.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::RunStarted { .. } => "run_started",
            Entry::PlanDescribed(_) => "plan_described",
            Entry::LeaseTaken { .. } => "lease_taken",
            Entry::Resumed { .. } => "resumed",
            Entry::CaptureIntent { .. } => "capture_intent",
            Entry::Captured { .. } => "captured",
            Entry::Fingerprinted { .. } => "fingerprinted",
            Entry::NotRestored { .. } => "not_restored",
            Entry::ApplyIntent { .. } => "apply_intent",
            Entry::Applied { .. } => "applied",
            Entry::ApplyFailed { .. } => "apply_failed",
            Entry::Progress { .. } => "progress",
            Entry::Verdict { .. } => "verdict",
            Entry::RollbackStarted { .. } => "rollback_started",
            Entry::RevertIntent { .. } => "revert_intent",
            Entry::Reverted { .. } => "reverted",
            Entry::RevertFailed { .. } => "revert_failed",
            Entry::RestoreIntent { .. } => "restore_intent",
            Entry::Restored { .. } => "restored",
            Entry::RestoreFailed { .. } => "restore_failed",
            Entry::Parity { .. } => "parity",
            Entry::Committed => "committed",
            Entry::RolledBack { .. } => "rolled_back",
            Entry::RollbackFailed { .. } => "rollback_failed",
            Entry::RollbackAfterCommit { .. } => "rollback_after_commit",
            Entry::Discarded { .. } => "discarded",
            Entry::TailTruncated { .. } => "tail_truncated",
            Entry::TailLossResolved { .. } => "tail_loss_resolved",
        }
    }

    /// The step, checkpoint (resource) or verifier the entry is about, if one.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Entry::CaptureIntent { checkpoint }
            | Entry::Captured { checkpoint, .. }
            | Entry::Fingerprinted { checkpoint, .. }
            | Entry::NotRestored { checkpoint, .. }
            | Entry::RestoreIntent { checkpoint }
            | Entry::Restored { checkpoint, .. }
            | Entry::RestoreFailed { checkpoint, .. }
            | Entry::Parity { checkpoint, .. }
            | Entry::Discarded { checkpoint, .. } => Some(checkpoint),
            Entry::ApplyIntent { step, .. }
            | Entry::Applied { step, .. }
            | Entry::ApplyFailed { step, .. }
            | Entry::Progress { step, .. }
            | Entry::RevertIntent { step, .. }
            | Entry::Reverted { step, .. }
            | Entry::RevertFailed { step, .. } => Some(step),
            Entry::Verdict { verifier, .. } => Some(verifier),
            _ => None,
        }
    }

    /// Whether this entry ends a run (`committed`, `rolled_back`): journals that can lose
    /// a tail witness these records beyond the run's own file (see
    /// [`Journal::lost_tail`](super::Journal::lost_tail)).
    pub fn is_outcome(&self) -> bool {
        matches!(self, Entry::Committed | Entry::RolledBack { .. })
    }

    /// How this entry changes whether its run has ended: `Some(true)` for an outcome
    /// (`committed`, `rolled_back`), `Some(false)` for `rollback_after_commit`, which
    /// revokes a commit, `None` for every other entry. A run has ended when the last of its
    /// entries that says something says `true` ([`run_ended`](super::run_ended)): the one
    /// rule behind the executor's state and the journals' indexes of open runs
    /// ([`Journal::open_runs_of_plan`](super::Journal::open_runs_of_plan)).
    pub fn ends_run(&self) -> Option<bool> {
        match self {
            Entry::Committed | Entry::RolledBack { .. } => Some(true),
            Entry::RollbackAfterCommit { .. } => Some(false),
            _ => None,
        }
    }
}
