//! [`RunReport`]: what a run did and undid, with evidence, RTO and RPO — rebuilt from the
//! journal, rendered as JSON or Markdown, with an incident-report skeleton.

mod html;
mod markdown;
mod notice;
mod sections;
mod summary;
mod timeline;

pub(crate) use notice::{status_message, NoticeFacts};
pub use summary::RunSummary;

use crate::journal::{Journal, Record};
use crate::state::State;
use crate::{Digest, Error, Plan, PlanDescription, Reversibility, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The version of the report's JSON schema that [`RunReport::schema_version`] carries.
/// Version 1: the first versioned schema.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every step applied and verified.
    Committed,
    /// Every applied step undone; parity with the baseline proven.
    RolledBack,
    /// The failed component and its dependents undone, parity proven for them; the rest
    /// kept applied.
    PartiallyRolledBack,
    /// Rollback could not finish: see [`RunReport::remaining`]; `resume` continues it.
    RollbackFailed,
    /// Not finished (interrupted): `resume` brings it to an end.
    InProgress,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Committed => "committed",
            Outcome::RolledBack => "rolled_back",
            Outcome::PartiallyRolledBack => "partially_rolled_back",
            Outcome::RollbackFailed => "rollback_failed",
            Outcome::InProgress => "in_progress",
        })
    }
}

/// Where a step ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Never applied.
    NotApplied,
    /// Applied (and kept).
    Applied,
    /// Applied, outside the rollback scope: kept on purpose by a partial rollback.
    Kept,
    /// Undone by its own compensation.
    Reverted,
    /// Undone by restoring the checkpoints of what it touches.
    UndoneByRestore,
    /// Undone by the reverts of the steps that created what it wrote (see
    /// [`Undo::CompensationOf`](crate::Undo::CompensationOf)).
    UndoneByCompensation,
    /// Irreversible and approved: it stays applied after rollback.
    IrreversibleKept,
    /// Applied (or possibly applied) and not yet undone: rollback is unfinished.
    NotUndone,
}

/// One step in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StepReport {
    /// Step id.
    pub id: String,
    /// Component.
    pub component: String,
    /// Reversibility.
    pub reversibility: Reversibility,
    /// Final state.
    pub state: StepState,
    /// Apply attempts.
    pub apply_attempts: u32,
    /// Duration of the successful apply.
    pub apply_ms: Option<u64>,
    /// Revert attempts.
    pub revert_attempts: u32,
    /// Duration of the successful revert.
    pub revert_ms: Option<u64>,
    /// Last error seen.
    pub last_error: Option<String>,
    /// What the report found beyond the step's own account (e.g. it said it did not
    /// apply, yet the restore of what it touches rewrote items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One checkpoint in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CheckpointReport {
    /// Resource.
    pub resource: String,
    /// Component.
    pub component: String,
    /// Snapshot id, digest and fingerprint, if captured.
    pub snapshot_id: Option<String>,
    /// Content digest.
    pub digest: Option<Digest>,
    /// Baseline fingerprint.
    pub fingerprint: Option<Digest>,
    /// Size of the captured content.
    pub size_bytes: Option<u64>,
    /// Capture time (epoch ms) and duration.
    pub captured_at_ms: Option<u64>,
    /// Capture duration.
    pub capture_ms: Option<u64>,
    /// How it was restored, if it was.
    pub restore_method: Option<String>,
    /// Items written back by the restore.
    pub restored_items: Option<u64>,
    /// Restore duration.
    pub restore_ms: Option<u64>,
    /// Whether parity with the baseline fingerprint was proven (None: not checked).
    pub parity: Option<bool>,
    /// Writes made between capture and restore are lost: restore time − capture time.
    pub rpo_ms: Option<u64>,
    /// After the run ended: `Some(true)` the snapshot was released, `Some(false)` releasing
    /// it failed (see `discard_error`; it is left in place), `None` it is kept (run
    /// unfinished, never captured, or kept by [`Executor::retain_snapshots`](crate::Executor::retain_snapshots)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<bool>,
    /// Why releasing the snapshot failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_error: Option<String>,
    /// Only the baseline fingerprint was taken (no snapshot): no undo path of the plan
    /// restores this resource.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fingerprint_only: bool,
    /// How many times it was restored in this run (more than once: each restore
    /// discarded the writes made since the one before).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restores: u32,
    /// Writes by others than the run that the restores discarded (summed), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded_writes: Option<crate::Discarded>,
    /// Items of the application's the restore kept and set aside for its parity proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_writes: Option<u64>,
    /// How the restore proved parity when it did not read the whole resource for it (for
    /// example from the changed parts alone, and why that is sound), or why it read
    /// everything after all. `None`: by a full read (a fingerprint of the whole resource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity_proof: Option<String>,
    /// Why it was left as it is after the compensations (parity not proven).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_restored: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A verdict with when and where it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VerdictReport {
    /// Verifier id.
    pub verifier: String,
    /// Phase: `precondition`, `after:<step>`, `final`, `soak`.
    pub phase: String,
    /// When the verdict's journal record was written (epoch ms).
    pub at_ms: u64,
    /// The verdict with its evidence.
    pub verdict: Verdict,
}

/// The breach that started a rollback: which verifier saw it, when its verdict was
/// recorded, and when the rollback started. Both times are the journal records'
/// (`verdict` and `rollback_started`), so `latency_ms` is what the run took from the
/// recorded detection to the recorded start of the rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Detection {
    /// The verifier whose verdict started the rollback (a trigger's verifier in `soak`).
    pub verifier: String,
    /// Its phase: `precondition`, `after:<step>`, `final`, `soak`.
    pub phase: String,
    /// When its verdict was recorded (epoch ms).
    pub detected_at_ms: u64,
    /// When `rollback_started` was recorded (epoch ms).
    pub rollback_started_at_ms: u64,
    /// `rollback_started_at_ms − detected_at_ms`.
    pub latency_ms: u64,
    /// The verdict's summary.
    pub summary: String,
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TimelineEntry {
    /// Milliseconds since the run started.
    pub offset_ms: u64,
    /// The record kind (`apply_intent`, `restored`...).
    pub kind: String,
    /// Human-readable detail.
    pub detail: String,
    /// What the record is about: the step, checkpoint (resource) or verifier it names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// The report of a run. Built from the journal, so a resumed run's report covers every
/// process that worked on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunReport {
    /// The version of this JSON's schema ([`REPORT_SCHEMA_VERSION`]): raised on every change
    /// a reader could notice, and noted in the CHANGELOG.
    #[serde(default)]
    pub schema_version: u32,
    /// Run id.
    pub run_id: String,
    /// Plan name.
    pub plan: String,
    /// Plan digest.
    pub plan_digest: Digest,
    /// How it ended.
    pub outcome: Outcome,
    /// Why rollback started, if it did.
    pub rollback_reason: Option<String>,
    /// Start, epoch ms.
    pub started_at_ms: u64,
    /// Last record, epoch ms.
    pub finished_at_ms: u64,
    /// Steps in plan order.
    pub steps: Vec<StepReport>,
    /// Checkpoints.
    pub checkpoints: Vec<CheckpointReport>,
    /// Every verdict.
    pub verdicts: Vec<VerdictReport>,
    /// When the breach that started the rollback was detected and how long the rollback
    /// took to start: the failing verdict recorded right before `rollback_started`.
    /// `None` when no verdict started the rollback (a failed step, a failed capture, a
    /// cancellation, a resume that rolls back, a rehearsal) or when there was no rollback.
    #[serde(default)]
    pub detection: Option<Detection>,
    /// Recovery time: from the trigger (rollback start) to verified restored.
    pub rto_ms: Option<u64>,
    /// Recovery point: the largest window of writes lost to a checkpoint restore (0 when
    /// every change was undone by compensation).
    pub rpo_ms: Option<u64>,
    /// Items written by others (the application) since capture that restores discarded,
    /// summed over checkpoints: the recovery point by items. `None` when no restore
    /// discarded anything it could count; see `discarded_exact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_discarded: Option<u64>,
    /// Whether `items_discarded` is exact (every restore counted exactly).
    #[serde(default)]
    pub discarded_exact: bool,
    /// What the rollback does not prove back at its baseline, each with the reason: a
    /// resource changed by an undone step that has no checkpoint, a step naming no
    /// resource, a checkpoint left as it is after the compensations. Empty when parity is
    /// proven for everything the rollback undid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unproven: Vec<String>,
    /// What is left when the rollback could not finish.
    pub remaining: Vec<String>,
    /// When the run committed, if it did (kept when a later rollback revoked the commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_at_ms: Option<u64>,
    /// The run was rolled back after it had committed
    /// ([`Executor::rollback_committed`](crate::Executor::rollback_committed)).
    #[serde(default)]
    pub rolled_back_after_commit: bool,
    /// For a rollback after commit that restored a checkpoint: the window of writes made
    /// since the commit that the restores put back to the baseline (commit → last
    /// restore, the largest over the checkpoints). The items they discarded are in
    /// `items_discarded`; compensations keep them. `None` when no restore ran after the
    /// commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_since_commit_ms: Option<u64>,
    /// The checkpoints the rollback restores and proves parity for.
    pub rollback_checkpoints: Vec<String>,
    /// How many times the run was resumed.
    pub resumes: u32,
    /// Lease takeovers from expired holders.
    pub lease_takeovers: Vec<String>,
    /// What the journal lost or repaired at the end of the run (a torn record dropped, a
    /// lost tail and the assumption resume was told to make).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal_repairs: Vec<String>,
    /// Irreversible steps approved to stay, with the reasons given.
    pub approvals: BTreeMap<String, String>,
    /// The plan's declared recovery objectives.
    #[serde(default)]
    pub objectives: crate::Objectives,
    /// Whether the rollback met the RTO target (None: no target, or no finished rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto_met: Option<bool>,
    /// Whether the rollback met the RPO target (None: no target, or no finished rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_met: Option<bool>,
    /// The plan's declared owners (role → who).
    #[serde(default)]
    pub owners: BTreeMap<String, String>,
    /// Timeline.
    pub timeline: Vec<TimelineEntry>,
}

impl RunReport {
    /// Rebuild the report of `run_id` from its records: the records are folded once
    /// into the run's state (the same fold the executor runs as it appends them), and
    /// each section of the report reads that state; the timeline renders each record.
    pub fn from_records(plan: &Plan, run_id: &str, records: &[Record]) -> RunReport {
        let state = State::from_records(records);
        Self::from_state(&plan.describe(), run_id, state, records)
    }

    /// Rebuild the report of `run_id` from its records alone, with the plan as the run's
    /// `plan_described` record describes it (no plan code needed). Equal to
    /// [`RunReport::from_records`] with the plan the run was started with.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> rollback_core::Result<()> {
    /// use rollback_core::journal::{Journal, MemoryJournal};
    /// use rollback_core::sim::{SetKey, SimWorld};
    /// use rollback_core::{Executor, Plan, RunReport};
    /// use std::sync::Arc;
    /// let w = SimWorld::new();
    /// let plan = Plan::builder("demo")
    ///     .checkpoint("db", w.checkpoint("db"))
    ///     .step("db", SetKey::new("s1", &w, "db", "k", "v"), &[])
    ///     .build()?;
    /// let journal = Arc::new(MemoryJournal::new());
    /// let report = Executor::with_journal(journal.clone()).run(&plan).await?;
    /// let records = journal.records(&report.run_id).await?;
    /// assert_eq!(RunReport::rebuild(&report.run_id, &records)?, report);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownRun`] when there are no records; [`Error::Undescribed`] when the
    /// run was journaled before journals described their plan (build its report with
    /// [`RunReport::from_records`] and the plan); [`Error::PlanMismatch`] when the
    /// description's digest is not the one `run_started` gives.
    pub fn rebuild(run_id: &str, records: &[Record]) -> Result<RunReport, Error> {
        if records.is_empty() {
            return Err(Error::UnknownRun {
                run_id: run_id.into(),
            });
        }
        let mut state = State::from_records(records);
        let Some(description) = state.description.take() else {
            return Err(Error::Undescribed {
                run_id: run_id.into(),
            });
        };
        if let Some(started) = state.plan_digest.filter(|d| *d != description.digest) {
            return Err(Error::PlanMismatch {
                run_id: run_id.into(),
                expected: started,
                found: description.digest,
            });
        }
        Ok(Self::from_state(&description, run_id, state, records))
    }

    /// Read the run `run_id` from `journal` (verified) and [`rebuild`](RunReport::rebuild)
    /// its report.
    ///
    /// # Errors
    /// Journal errors, and as [`RunReport::rebuild`].
    pub async fn load(journal: &dyn Journal, run_id: &str) -> Result<RunReport, Error> {
        let records = journal.records(run_id).await?;
        Self::rebuild(run_id, &records)
    }

    /// The report of a run whose records fold into `state`.
    fn from_state(
        plan: &PlanDescription,
        run_id: &str,
        mut state: State,
        records: &[Record],
    ) -> RunReport {
        let verdicts = std::mem::take(&mut state.verdicts);
        let state = &state;
        let started = state.started_at_ms.unwrap_or(0);
        let checkpoints = sections::checkpoints(plan, state);
        let steps = sections::steps(plan, state, &checkpoints);
        let unproven = sections::unproven(plan, state, &checkpoints);
        let outcome = sections::outcome(state);
        let recovery = sections::recovery(plan, state, &checkpoints);
        let (rollback_reason, rollback_checkpoints) = match &state.rollback {
            Some((reason, _, cps)) => (Some(reason.clone()), cps.clone()),
            None => (None, Vec::new()),
        };
        let objectives = plan.objectives;
        RunReport {
            schema_version: REPORT_SCHEMA_VERSION,
            run_id: run_id.into(),
            plan: plan.plan.clone(),
            plan_digest: plan.digest,
            outcome,
            rollback_reason,
            started_at_ms: started,
            finished_at_ms: state.last_at_ms,
            steps,
            checkpoints,
            verdicts,
            detection: state.detection.clone(),
            rto_ms: recovery.rto_ms,
            rpo_ms: recovery.rpo_ms,
            items_discarded: recovery.items_discarded,
            discarded_exact: recovery.discarded_exact,
            unproven,
            remaining: match (&state.rollback_failed, outcome) {
                (Some((remaining, _)), Outcome::RollbackFailed) => remaining.clone(),
                _ => Vec::new(),
            },
            rollback_checkpoints,
            committed_at_ms: state.committed_at_ms,
            rolled_back_after_commit: state.reopened(),
            rpo_since_commit_ms: state.committed_at_ms.filter(|_| state.reopened()).and_then(
                |commit| {
                    state
                        .checkpoints
                        .values()
                        .filter_map(|c| c.last_restore.as_ref())
                        .filter(|r| r.at_ms >= commit)
                        .map(|r| r.at_ms - commit)
                        .max()
                },
            ),
            resumes: state.resumes,
            lease_takeovers: state
                .takeovers
                .iter()
                .map(|(holder, prev, epoch)| {
                    format!("{holder} took over from {prev} (epoch {epoch})")
                })
                .collect(),
            journal_repairs: state.journal_repairs.iter().map(timeline::repair).collect(),
            approvals: plan.approvals.clone(),
            objectives,
            rto_met: recovery
                .rto_ms
                .zip(objectives.rto_ms)
                .map(|(got, target)| got <= target),
            rpo_met: recovery
                .rpo_ms
                .zip(objectives.rpo_ms)
                .map(|(got, target)| got <= target),
            owners: plan.owners.clone(),
            timeline: timeline::timeline(plan, started, records),
        }
    }

    /// Whether the rollback proved everything it undid back at its baseline: every
    /// checkpoint in its scope that had a baseline shows parity, and nothing it undid is
    /// unchecked ([`RunReport::unproven`] is empty: no resource changed without a
    /// checkpoint, no step naming no resource, no checkpoint left differing). False when
    /// no rollback happened.
    pub fn parity_proven(&self) -> bool {
        self.rollback_reason.is_some()
            && self.unproven.is_empty()
            && self
                .checkpoints
                .iter()
                .filter(|c| {
                    self.rollback_checkpoints.contains(&c.resource) && c.fingerprint.is_some()
                })
                .all(|c| c.parity == Some(true))
    }

    /// After a partial rollback: whether every verifier re-run on the kept steps passed
    /// (`None` when none was re-run).
    pub fn kept_verified(&self) -> Option<bool> {
        let kept: Vec<&VerdictReport> = self
            .verdicts
            .iter()
            .filter(|v| v.phase.starts_with("kept:"))
            .collect();
        if kept.is_empty() {
            None
        } else {
            Some(kept.iter().all(|v| v.verdict.passed()))
        }
    }

    /// The JSON Schema of the report's JSON ([`RunReport::to_json`]), generated from its
    /// types; `rollback-core/report.schema.json` is this schema, committed.
    ///
    /// ```
    /// let schema = rollback_core::RunReport::json_schema();
    /// assert_eq!(schema["title"], "RunReport");
    /// assert!(schema["properties"]["schema_version"].is_object());
    /// ```
    #[cfg(feature = "schema")]
    #[cfg_attr(docsrs, doc(cfg(feature = "schema")))]
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(RunReport)).unwrap_or_default()
    }

    /// Whether the run committed.
    pub fn is_committed(&self) -> bool {
        self.outcome == Outcome::Committed
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Steps kept applied by a partial rollback.
    pub fn kept(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| s.state == StepState::Kept)
            .map(|s| s.id.as_str())
            .collect()
    }

    /// Steps undone (reverted or undone by restore).
    pub fn undone(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Reverted | StepState::UndoneByRestore))
            .map(|s| s.id.as_str())
            .collect()
    }
}

/// Whether resource id `part` lies inside `container`: see [`crate::resource_contains`].
fn inside(part: &str, container: &str) -> bool {
    part != container && crate::resource_contains(container, part)
}
