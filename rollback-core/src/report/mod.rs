//! [`RunReport`]: what a run did and undid, with evidence, RTO and RPO — rebuilt from the
//! journal, rendered as JSON or Markdown, with an incident-report skeleton.

mod markdown;
mod notice;

pub(crate) use notice::{status_message, NoticeFacts};

use crate::journal::{Entry, Record};
use crate::state::State;
use crate::{Digest, Plan, Reversibility, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// unfinished, never captured, or [`Executor::keep_snapshots`](crate::Executor::keep_snapshots)).
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
    /// Why it was left as it is after the compensations (parity not proven).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_restored: Option<String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A verdict with when and where it was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictReport {
    /// Verifier id.
    pub verifier: String,
    /// Phase: `precondition`, `after:<step>`, `final`, `soak`.
    pub phase: String,
    /// Epoch ms.
    pub at_ms: u64,
    /// The verdict with its evidence.
    pub verdict: Verdict,
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Milliseconds since the run started.
    pub offset_ms: u64,
    /// The record kind (`apply_intent`, `restored`...).
    pub kind: String,
    /// Human-readable detail.
    pub detail: String,
}

/// The report of a run. Built from the journal, so a resumed run's report covers every
/// process that worked on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
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
    /// Rebuild the report of `run_id` from its records.
    pub fn from_records(plan: &Plan, run_id: &str, records: &[Record]) -> RunReport {
        let state = State::from_records(records);
        let started = records.first().map(|r| r.at_ms).unwrap_or(0);
        let finished = records.last().map(|r| r.at_ms).unwrap_or(started);
        let mut rollback_at = None;
        let mut rolled_back_at = None;
        let mut partial = false;
        let mut rollback_failed: Option<(Vec<String>, String)> = None;
        let mut resumes = 0;
        let mut takeovers = Vec::new();
        let mut journal_repairs = Vec::new();
        let mut restored_at: BTreeMap<String, u64> = BTreeMap::new();
        let mut unknown_discards = false;
        // When a resumed run went straight to rollback, the outage began when the run was
        // interrupted (its last record before the resume), not at the resume.
        let mut interrupted_at: Option<u64> = None;
        let mut last_at = started;
        let mut applying_since_resume = false;
        let mut verdicts = Vec::new();
        let mut steps: BTreeMap<String, StepReport> = plan
            .steps()
            .iter()
            .map(|s| {
                (
                    s.id().to_string(),
                    StepReport {
                        id: s.id().into(),
                        component: s.component.clone(),
                        reversibility: s.step.reversibility(),
                        state: StepState::NotApplied,
                        apply_attempts: 0,
                        apply_ms: None,
                        revert_attempts: 0,
                        revert_ms: None,
                        last_error: None,
                        note: None,
                    },
                )
            })
            .collect();
        let mut cps: BTreeMap<String, CheckpointReport> = plan
            .checkpoints()
            .iter()
            .map(|c| {
                (
                    c.resource().to_string(),
                    CheckpointReport {
                        resource: c.resource().into(),
                        component: c.component.clone(),
                        snapshot_id: None,
                        digest: None,
                        fingerprint: None,
                        size_bytes: None,
                        captured_at_ms: None,
                        capture_ms: None,
                        restore_method: None,
                        restored_items: None,
                        restore_ms: None,
                        parity: None,
                        rpo_ms: None,
                        discarded: None,
                        discard_error: None,
                        fingerprint_only: false,
                        restores: 0,
                        discarded_writes: None,
                        kept_writes: None,
                        not_restored: None,
                    },
                )
            })
            .collect();
        let mut timeline = Vec::new();
        for r in records {
            let detail = match &r.entry {
                Entry::RunStarted {
                    plan,
                    plan_digest,
                    holder,
                    policy,
                } => {
                    format!(
                        "plan {plan} ({}) by {holder}, scope {:?}, on resume {:?}",
                        plan_digest.short(),
                        policy.scope,
                        policy.on_resume
                    )
                }
                Entry::LeaseTaken {
                    holder,
                    taken_over_from,
                    epoch,
                } => {
                    if let Some(prev) = taken_over_from {
                        takeovers.push(format!("{holder} took over from {prev} (epoch {epoch})"));
                    }
                    match taken_over_from {
                        Some(p) => {
                            format!("lease taken by {holder} over expired {p}, epoch {epoch}")
                        }
                        None => format!("lease taken by {holder}, epoch {epoch}"),
                    }
                }
                Entry::TailTruncated { bytes, kind } => {
                    let what = format!(
                        "the journal dropped {bytes} bytes of a record cut short ({})",
                        kind.as_deref().unwrap_or("type unreadable")
                    );
                    journal_repairs.push(what.clone());
                    what
                }
                Entry::TailLossResolved { lost, assumed } => {
                    let what = format!(
                        "the journal lost {lost}; resumed on the explicit assumption: {assumed}"
                    );
                    journal_repairs.push(what.clone());
                    what
                }
                Entry::Resumed { holder } => {
                    resumes += 1;
                    if rollback_at.is_none() {
                        interrupted_at = Some(last_at);
                        applying_since_resume = false;
                    }
                    format!("resumed by {holder}")
                }
                Entry::CaptureIntent { checkpoint } => format!("capturing {checkpoint}"),
                Entry::Fingerprinted {
                    checkpoint,
                    fingerprint,
                    duration_ms,
                } => {
                    if let Some(c) = cps.get_mut(checkpoint) {
                        c.fingerprint = Some(*fingerprint);
                        c.captured_at_ms = Some(r.at_ms);
                        c.capture_ms = Some(*duration_ms);
                        c.fingerprint_only = true;
                    }
                    format!(
                        "fingerprinted {checkpoint} ({}) in {duration_ms} ms; no snapshot: no undo path restores it",
                        fingerprint.short()
                    )
                }
                Entry::NotRestored { checkpoint, reason } => {
                    if let Some(c) = cps.get_mut(checkpoint) {
                        c.not_restored = Some(reason.clone());
                    }
                    format!("{checkpoint} left as it is: {reason}")
                }
                Entry::Captured {
                    checkpoint,
                    snapshot,
                    duration_ms,
                } => {
                    if let Some(c) = cps.get_mut(checkpoint) {
                        c.snapshot_id = Some(snapshot.id.clone());
                        c.digest = Some(snapshot.digest);
                        c.fingerprint = Some(snapshot.fingerprint);
                        c.size_bytes = snapshot.size_bytes;
                        c.captured_at_ms = Some(snapshot.captured_at_ms);
                        c.capture_ms = Some(*duration_ms);
                    }
                    format!(
                        "captured {checkpoint} digest {} in {duration_ms} ms",
                        snapshot.digest.short()
                    )
                }
                Entry::ApplyIntent { step, attempt } => {
                    applying_since_resume = true;
                    if let Some(s) = steps.get_mut(step) {
                        s.apply_attempts = *attempt;
                    }
                    format!("applying {step} (attempt {attempt})")
                }
                Entry::Applied {
                    step, duration_ms, ..
                } => {
                    if let Some(s) = steps.get_mut(step) {
                        s.apply_ms = Some(*duration_ms);
                    }
                    format!("applied {step} in {duration_ms} ms")
                }
                Entry::ApplyFailed {
                    step,
                    error,
                    maybe_applied,
                    ..
                } => {
                    if let Some(s) = steps.get_mut(step) {
                        s.last_error = Some(error.clone());
                    }
                    format!(
                        "apply of {step} failed{}: {error}",
                        if *maybe_applied {
                            " (may have applied)"
                        } else {
                            ""
                        }
                    )
                }
                Entry::Progress { step, cursor } => format!("{step} saved cursor {cursor}"),
                Entry::Verdict {
                    verifier,
                    phase,
                    verdict,
                } => {
                    verdicts.push(VerdictReport {
                        verifier: verifier.clone(),
                        phase: phase.clone(),
                        at_ms: r.at_ms,
                        verdict: verdict.clone(),
                    });
                    format!(
                        "{verifier} [{phase}]: {:?} — {}",
                        verdict.status, verdict.summary
                    )
                }
                Entry::RollbackStarted {
                    reason,
                    steps: scope,
                    ..
                } => {
                    if rollback_at.is_none() && applying_since_resume {
                        interrupted_at = None; // the resumed run applied, then failed
                    }
                    rollback_at.get_or_insert(r.at_ms);
                    format!("ROLLBACK started: {reason} (scope: {})", scope.join(", "))
                }
                Entry::RevertIntent { step, attempt } => {
                    if let Some(s) = steps.get_mut(step) {
                        s.revert_attempts = *attempt;
                    }
                    format!("reverting {step} (attempt {attempt})")
                }
                Entry::Reverted { step, duration_ms } => {
                    if let Some(s) = steps.get_mut(step) {
                        s.revert_ms = Some(*duration_ms);
                    }
                    format!("reverted {step} in {duration_ms} ms")
                }
                Entry::RevertFailed { step, error, .. } => {
                    if let Some(s) = steps.get_mut(step) {
                        s.last_error = Some(error.clone());
                    }
                    format!("revert of {step} failed: {error}")
                }
                Entry::RestoreIntent { checkpoint } => format!("restoring {checkpoint}"),
                Entry::Restored {
                    checkpoint,
                    method,
                    items_changed,
                    duration_ms,
                    discarded,
                    proof,
                } => {
                    restored_at.entry(checkpoint.clone()).or_insert(r.at_ms);
                    if let Some(c) = cps.get_mut(checkpoint) {
                        c.restore_method = Some(method.clone());
                        c.restored_items = *items_changed;
                        c.restore_ms = Some(*duration_ms);
                        c.rpo_ms = c.captured_at_ms.map(|t| r.at_ms.saturating_sub(t));
                        c.restores += 1;
                        if let Some(d) = discarded {
                            let sum = c.discarded_writes.get_or_insert_with(|| crate::Discarded {
                                exact: true,
                                ..Default::default()
                            });
                            sum.items += d.items;
                            sum.exact &= d.exact;
                            sum.includes_run |= d.includes_run;
                            sum.keys.extend(d.keys.iter().cloned());
                            sum.conflicts.extend(d.conflicts.iter().cloned());
                        } else if !method.eq_ignore_ascii_case("noop") {
                            unknown_discards = true;
                        }
                        if let Some(p) = proof {
                            c.kept_writes = Some(p.set_aside);
                        }
                    }
                    let lost = match discarded {
                        Some(d) if d.items > 0 => format!(
                            "; discarded {}{} write(s) made since capture",
                            if d.exact { "" } else { "at least " },
                            d.items
                        ),
                        Some(_) => "; discarded no write made since capture".into(),
                        None => String::new(),
                    };
                    let again = if cps.get(checkpoint).is_some_and(|c| c.restores > 1) {
                        " AGAIN"
                    } else {
                        ""
                    };
                    format!("restored{again} {checkpoint} by {method} in {duration_ms} ms{lost}")
                }
                Entry::RestoreFailed { checkpoint, error } => {
                    format!("restore of {checkpoint} failed: {error}")
                }
                Entry::Parity {
                    checkpoint,
                    expected,
                    actual,
                } => {
                    if let Some(c) = cps.get_mut(checkpoint) {
                        c.parity = Some(expected == actual);
                    }
                    format!(
                        "parity of {checkpoint}: {} (baseline {}, now {})",
                        if expected == actual {
                            "proven"
                        } else {
                            "FAILED"
                        },
                        expected.short(),
                        actual.short()
                    )
                }
                Entry::Committed => "committed".to_string(),
                Entry::RolledBack { partial: p } => {
                    partial = *p;
                    rolled_back_at = Some(r.at_ms);
                    // What parity covers is in the parity records and the summary; this
                    // line claims only the outcome.
                    if *p {
                        "partially rolled back".into()
                    } else {
                        "rolled back".into()
                    }
                }
                Entry::Discarded { checkpoint, error } => {
                    if let Some(c) = cps.get_mut(checkpoint) {
                        c.discarded = Some(error.is_none());
                        c.discard_error = error.clone();
                    }
                    match error {
                        None => format!("released the snapshot of {checkpoint}"),
                        Some(e) => format!(
                            "releasing the snapshot of {checkpoint} failed (left in place): {e}"
                        ),
                    }
                }
                Entry::RollbackFailed { remaining, error } => {
                    rollback_failed = Some((remaining.clone(), error.clone()));
                    format!(
                        "ROLLBACK FAILED: {error}; remaining: {}",
                        remaining.join("; ")
                    )
                }
            };
            timeline.push(TimelineEntry {
                offset_ms: r.at_ms.saturating_sub(started),
                kind: r.entry.kind().into(),
                detail,
            });
            last_at = r.at_ms;
        }

        let (reason, scope, scope_cps) = match &state.rollback {
            Some((reason, s, c)) => (
                Some(reason.clone()),
                s.iter().cloned().collect::<BTreeSet<_>>(),
                c.clone(),
            ),
            None => (None, BTreeSet::new(), Vec::new()),
        };
        let restored_ok: BTreeSet<&String> = scope_cps
            .iter()
            .filter(|c| state.parity.get(*c) == Some(&true))
            .collect();
        for ps in plan.steps() {
            let Some(sr) = steps.get_mut(ps.id()) else {
                continue;
            };
            let applied = state.applied.contains_key(ps.id());
            let touches = ps.step.touches();
            sr.state = if !applied {
                // A step that said it did not apply, yet whose resources a restore had to
                // rewrite while no applied step touches them: it had effects.
                let rewrote: Vec<String> = touches
                    .iter()
                    .filter(|t| {
                        cps.get(*t).and_then(|c| c.restored_items).unwrap_or(0) > 0
                            && !plan.steps().iter().any(|o| {
                                state.applied.contains_key(o.id()) && o.step.touches().contains(t)
                            })
                    })
                    .map(|t| {
                        format!(
                            "{t} ({} items)",
                            cps.get(t).and_then(|c| c.restored_items).unwrap_or(0)
                        )
                    })
                    .collect();
                let restored: Vec<String> = touches
                    .iter()
                    .filter(|t| cps.get(*t).and_then(|c| c.restored_items).unwrap_or(0) > 0)
                    .map(|t| {
                        format!(
                            "{t} ({} items)",
                            cps.get(t).and_then(|c| c.restored_items).unwrap_or(0)
                        )
                    })
                    .collect();
                if sr.apply_attempts > 0
                    && !rewrote.is_empty()
                    && touches.iter().all(|t| restored_ok.contains(t))
                {
                    sr.note = Some(format!(
                        "reported that it did not apply, yet restoring {} had to rewrite them: its apply had effects",
                        rewrote.join(", ")
                    ));
                    StepState::UndoneByRestore
                } else {
                    if sr.apply_attempts > 0 && !restored.is_empty() {
                        sr.note = Some(format!(
                            "reported that it did not apply; the restore of {} would also have undone any effect it had",
                            restored.join(", ")
                        ));
                    }
                    StepState::NotApplied
                }
            } else if state.reverted.contains(ps.id()) {
                StepState::Reverted
            } else if reason.is_none() {
                StepState::Applied
            } else if !scope.contains(ps.id()) {
                StepState::Kept
            } else {
                let by_restore =
                    !touches.is_empty() && touches.iter().all(|t| restored_ok.contains(t));
                match plan.undo(ps.id()) {
                    Some(crate::Undo::CompensationOf { steps: by })
                        if by.iter().all(|b| state.reverted.contains(b)) =>
                    {
                        StepState::UndoneByCompensation
                    }
                    _ if by_restore => StepState::UndoneByRestore,
                    _ if ps.step.reversibility() == Reversibility::Irreversible => {
                        StepState::IrreversibleKept
                    }
                    _ => StepState::NotUndone,
                }
            };
        }
        // What the rollback cannot claim back at its baseline.
        let mut unproven = Vec::new();
        if reason.is_some() {
            for c in &scope_cps {
                let Some(cr) = cps.get(c) else { continue };
                if cr.fingerprint.is_none() || cr.parity == Some(true) {
                    continue;
                }
                unproven.push(match (&cr.not_restored, cr.parity) {
                    (Some(why), _) => format!("{c}: {why}"),
                    (None, Some(false)) => format!("{c}: differs from its baseline"),
                    _ => format!("{c}: parity not checked"),
                });
            }
            let with_checkpoint: Vec<&str> =
                plan.checkpoints().iter().map(|c| c.resource()).collect();
            // A resource is checked when a checkpoint is of it or of something containing
            // it (`a/b` is inside `a`). A step may also name a container beside the part of
            // it that it changes (a flag and its provider scope): the container is then
            // checked through that part.
            let direct = |t: &str| with_checkpoint.iter().any(|c| *c == t || inside(t, c));
            let mut unchecked: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for ps in plan.steps() {
                if !scope.contains(ps.id()) || !state.applied.contains_key(ps.id()) {
                    continue;
                }
                let touches = ps.step.touches();
                if touches.is_empty() {
                    unproven.push(format!(
                        "step {}: names no resource it changes, so what it changed is not checked",
                        ps.id()
                    ));
                }
                for t in &touches {
                    let through_part = touches.iter().any(|part| inside(part, t) && direct(part));
                    if !direct(t) && !through_part {
                        unchecked
                            .entry(t.clone())
                            .or_default()
                            .push(ps.id().to_string());
                    }
                }
            }
            for (t, by) in unchecked {
                unproven.push(format!(
                    "{t}: changed by {} and has no checkpoint, so its state after the rollback is not checked",
                    by.join(", ")
                ));
            }
        }

        let outcome = if state.committed {
            Outcome::Committed
        } else if state.rolled_back {
            if partial {
                Outcome::PartiallyRolledBack
            } else {
                Outcome::RolledBack
            }
        } else if rollback_failed.is_some() {
            Outcome::RollbackFailed
        } else {
            Outcome::InProgress
        };
        let remaining = if outcome == Outcome::RollbackFailed {
            rollback_failed.map(|(r, _)| r).unwrap_or_default()
        } else {
            Vec::new()
        };
        let rto_start = match (rollback_at, interrupted_at) {
            (Some(a), Some(i)) => Some(a.min(i)),
            (a, _) => a,
        };
        let rto_ms = match (rto_start, rolled_back_at) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        // A restore discarded writes whenever it ran, whether or not the rollback finished.
        let rpo_ms = if state.rolled_back || !restored_at.is_empty() {
            Some(cps.values().filter_map(|c| c.rpo_ms).max().unwrap_or(0))
        } else {
            None
        };
        let counted: Vec<&crate::Discarded> = cps
            .values()
            .filter_map(|c| c.discarded_writes.as_ref())
            .collect();
        let items_discarded = (!counted.is_empty()).then(|| counted.iter().map(|d| d.items).sum());
        let discarded_exact =
            !counted.is_empty() && !unknown_discards && counted.iter().all(|d| d.exact);
        RunReport {
            run_id: run_id.into(),
            plan: plan.name().into(),
            plan_digest: plan.digest(),
            outcome,
            rollback_reason: reason,
            started_at_ms: started,
            finished_at_ms: finished,
            steps: plan
                .steps()
                .iter()
                .filter_map(|s| steps.remove(s.id()))
                .collect(),
            checkpoints: plan
                .checkpoints()
                .iter()
                .filter_map(|c| cps.remove(c.resource()))
                .collect(),
            verdicts,
            rto_ms,
            rpo_ms,
            items_discarded,
            discarded_exact,
            unproven,
            remaining,
            rollback_checkpoints: scope_cps,
            resumes,
            lease_takeovers: takeovers,
            journal_repairs,
            approvals: plan.approvals.clone(),
            objectives: plan.objectives(),
            rto_met: rto_ms
                .zip(plan.objectives().rto_ms)
                .map(|(got, target)| got <= target),
            rpo_met: rpo_ms
                .zip(plan.objectives().rpo_ms)
                .map(|(got, target)| got <= target),
            owners: plan.owners().clone(),
            timeline,
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
