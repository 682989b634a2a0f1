//! [`RunReport`]: what a run did and undid, with evidence, RTO and RPO — rebuilt from the
//! journal, rendered as JSON or Markdown, with an incident-report skeleton.

use crate::events::NoticeKind;
use crate::journal::{Entry, Record};
use crate::state::State;
use crate::{Digest, Plan, Reversibility, Status, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

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

    /// The report in Markdown: summary, steps, checkpoints, verdicts with evidence,
    /// timeline, and the incident-report skeleton.
    pub fn to_markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# Run report: {}\n", self.plan);
        let _ = writeln!(m, "| | |\n|---|---|");
        let _ = writeln!(m, "| run | `{}` |", self.run_id);
        let _ = writeln!(m, "| plan digest | `{}` |", self.plan_digest.short());
        let _ = writeln!(m, "| outcome | **{}** |", self.outcome);
        if let Some(r) = &self.rollback_reason {
            let _ = writeln!(m, "| rollback reason | {} |", md(r));
        }
        let _ = writeln!(
            m,
            "| duration | {} ms |",
            self.finished_at_ms.saturating_sub(self.started_at_ms)
        );
        if let Some(rto) = self.rto_ms {
            let _ = writeln!(
                m,
                "| RTO (trigger → verified restored) | {rto} ms{} |",
                target_note(self.objectives.rto_ms, self.rto_met)
            );
        }
        if let Some(rpo) = self.rpo_ms {
            let _ = writeln!(
                m,
                "| RPO (writes lost to restores) | {rpo} ms{} |",
                target_note(self.objectives.rpo_ms, self.rpo_met)
            );
        }
        if let Some(n) = self.items_discarded {
            let _ = writeln!(
                m,
                "| writes by others discarded by restores | {}{n} |",
                if self.discarded_exact {
                    ""
                } else {
                    "at least "
                }
            );
        }
        for (role, who) in &self.owners {
            let _ = writeln!(m, "| {} | {} |", md(role), md(who));
        }
        if self.resumes > 0 {
            let _ = writeln!(m, "| resumes | {} |", self.resumes);
        }
        for t in &self.lease_takeovers {
            let _ = writeln!(m, "| lease takeover | {} |", md(t));
        }
        for t in &self.journal_repairs {
            let _ = writeln!(m, "| **journal** | {} |", md(t));
        }
        if self.rollback_reason.is_some() {
            let _ = writeln!(
                m,
                "| parity with the baseline | {} |",
                if self.parity_proven() {
                    "proven for everything undone"
                } else {
                    "**NOT proven** (see below)"
                }
            );
        }
        if !self.unproven.is_empty() {
            let _ = writeln!(m, "\n## Not proven back at the baseline\n");
            for u in &self.unproven {
                let _ = writeln!(m, "- {}", md(u));
            }
        }
        if !self.remaining.is_empty() {
            let _ = writeln!(m, "\n## Left undone (resume to continue)\n");
            for r in &self.remaining {
                let _ = writeln!(m, "- {}", md(r));
            }
        }
        let _ = writeln!(m, "\n## Steps\n\n| step | component | reversibility | state | apply | revert | last error |\n|---|---|---|---|---|---|---|");
        for s in &self.steps {
            let state = match &s.note {
                Some(n) => format!("{:?} ({})", s.state, md(n)),
                None => format!("{:?}", s.state),
            };
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} |",
                md(&s.id),
                md(&s.component),
                s.reversibility,
                state,
                s.apply_ms
                    .map(|v| format!("{v} ms ({}x)", s.apply_attempts))
                    .unwrap_or_else(|| "-".into()),
                s.revert_ms
                    .map(|v| format!("{v} ms ({}x)", s.revert_attempts))
                    .unwrap_or_else(|| "-".into()),
                s.last_error
                    .as_deref()
                    .map(md)
                    .unwrap_or_else(|| "-".into()),
            );
        }
        let _ = writeln!(m, "\n## Checkpoints\n\n| resource | digest | size | capture | restore | parity | RPO | snapshot after the run |\n|---|---|---|---|---|---|---|---|");
        for c in &self.checkpoints {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                md(&c.resource),
                c.digest
                    .map(|d| format!("`{}`", d.short()))
                    .unwrap_or_else(|| "-".into()),
                c.size_bytes
                    .map(|b| format!("{b} B"))
                    .unwrap_or_else(|| "-".into()),
                c.capture_ms
                    .map(|v| format!("{v} ms"))
                    .unwrap_or_else(|| "-".into()),
                match (&c.restore_method, c.restore_ms) {
                    (Some(meth), Some(ms)) => format!(
                        "{meth}, {ms} ms{}{}{}{}",
                        c.restored_items
                            .map(|n| format!(", {n} items"))
                            .unwrap_or_default(),
                        if c.restores > 1 {
                            format!(", **restored {} times**", c.restores)
                        } else {
                            String::new()
                        },
                        c.discarded_writes
                            .as_ref()
                            .map(|d| format!(
                                ", discarded {}{} write(s) of others{}",
                                if d.exact { "" } else { "at least " },
                                d.items,
                                if d.keys.is_empty() {
                                    String::new()
                                } else {
                                    format!(
                                        " ({})",
                                        crate::digest::truncate(&d.keys.join(", "), 200)
                                    )
                                }
                            ))
                            .unwrap_or_default(),
                        c.kept_writes
                            .filter(|n| *n > 0)
                            .map(|n| format!(", kept {n} write(s) of others"))
                            .unwrap_or_default(),
                    ),
                    _ if c.fingerprint_only => "no snapshot (compensations undo it)".into(),
                    _ => "-".into(),
                },
                match (c.parity, &c.not_restored) {
                    (Some(true), _) => "proven",
                    (Some(false), Some(_)) => "**not proven: differs, not restored**",
                    (Some(false), None) => "**FAILED**",
                    (None, _) => "-",
                },
                c.rpo_ms
                    .map(|v| format!("{v} ms"))
                    .unwrap_or_else(|| "0".into()),
                match (c.discarded, &c.discard_error) {
                    (Some(true), _) => "released".to_string(),
                    (Some(false), e) => format!(
                        "**release failed**: {}",
                        md(e.as_deref().unwrap_or("unknown error"))
                    ),
                    (None, _) if c.snapshot_id.is_some() => "kept".to_string(),
                    (None, _) => "-".to_string(),
                },
            );
        }
        if !self.approvals.is_empty() {
            let _ = writeln!(m, "\n## Approved irreversible steps\n");
            for (s, why) in &self.approvals {
                let _ = writeln!(m, "- {}: {}", md(s), md(why));
            }
        }
        let _ = writeln!(m, "\n## Verdicts\n\n| verifier | phase | status | summary | evidence |\n|---|---|---|---|---|");
        for v in &self.verdicts {
            let ev = if v.verdict.evidence.is_null() {
                "-".to_string()
            } else {
                format!(
                    "`{}`",
                    crate::digest::truncate(&v.verdict.evidence.to_string(), 300)
                )
            };
            let _ = writeln!(
                m,
                "| {} | {} | {:?} | {} | {} |",
                md(&v.verifier),
                md(&v.phase),
                v.verdict.status,
                md(&v.verdict.summary),
                md(&ev)
            );
        }
        let _ = writeln!(m, "\n## Timeline\n\n| +ms | event |\n|---|---|");
        for t in &self.timeline {
            let _ = writeln!(m, "| {} | {} |", t.offset_ms, md(&t.detail));
        }
        m.push_str(&self.incident_skeleton());
        m
    }

    /// The after-action review skeleton: facts filled in, judgement left to people.
    pub fn incident_skeleton(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "\n## Incident report (after-action review skeleton)\n");
        let _ = writeln!(
            m,
            "**Summary.** Migration `{}` ended `{}`.{}",
            self.plan,
            self.outcome,
            self.rollback_reason
                .as_ref()
                .map(|r| format!(" Rollback was triggered by: {}.", md(r)))
                .unwrap_or_default()
        );
        let components: BTreeSet<&str> = self
            .steps
            .iter()
            .filter(|s| s.state != StepState::NotApplied)
            .map(|s| s.component.as_str())
            .collect();
        let _ = writeln!(
            m,
            "\n**Impact.** Components touched: {}. RTO {}; RPO {}{}.",
            if components.is_empty() {
                "none".to_string()
            } else {
                components.into_iter().collect::<Vec<_>>().join(", ")
            },
            self.rto_ms
                .map(|v| format!(
                    "{v} ms{}",
                    target_note(self.objectives.rto_ms, self.rto_met)
                ))
                .unwrap_or_else(|| "n/a".into()),
            self.rpo_ms
                .map(|v| format!(
                    "{v} ms{}",
                    target_note(self.objectives.rpo_ms, self.rpo_met)
                ))
                .unwrap_or_else(|| "n/a".into()),
            match self.items_discarded {
                Some(n) => format!(
                    " ({}{n} write(s) by others discarded by restores)",
                    if self.discarded_exact {
                        ""
                    } else {
                        "at least "
                    }
                ),
                None => String::new(),
            }
        );
        let failing: Vec<&VerdictReport> = self
            .verdicts
            .iter()
            .filter(|v| v.verdict.status != Status::Pass)
            .collect();
        let _ = writeln!(
            m,
            "\n**Detection.** {}",
            if failing.is_empty() {
                "No failing verdict; see the rollback reason.".to_string()
            } else {
                failing
                    .iter()
                    .map(|v| format!("{} [{}]: {}", v.verifier, v.phase, v.verdict.summary))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
        let errors: Vec<String> = self
            .steps
            .iter()
            .filter_map(|s| s.last_error.as_ref().map(|e| format!("{}: {}", s.id, e)))
            .collect();
        let _ = writeln!(
            m,
            "\n**Errors seen.** {}",
            if errors.is_empty() {
                "none".to_string()
            } else {
                md(&errors.join("; "))
            }
        );
        let _ = writeln!(
            m,
            "\n**Recovery.** Undone: {}. Kept: {}{}. Parity with baseline: {}.",
            list(self.undone()),
            list(self.kept()),
            match self.kept_verified() {
                Some(true) => " (re-verified after the rollback)",
                Some(false) => " (re-verification after the rollback FAILED)",
                None => "",
            },
            if self.parity_proven() {
                "proven".to_string()
            } else if self.unproven.is_empty() {
                "NOT proven".to_string()
            } else {
                format!("NOT proven ({})", md(&self.unproven.join("; ")))
            }
        );
        if !self.owners.is_empty() {
            let owners: Vec<String> = self
                .owners
                .iter()
                .map(|(role, who)| format!("{}: {}", md(role), md(who)))
                .collect();
            let _ = writeln!(m, "\n**Owners.** {}.", owners.join("; "));
        }
        let reviewer = self
            .owners
            .get("post-incident review")
            .or_else(|| self.owners.get(crate::ROLLBACK_LEAD))
            .map(|w| md(w))
            .unwrap_or_else(|| "the owner".into());
        let _ = writeln!(m, "\n**Root cause.** _to be written by {reviewer}_\n\n**What went well.** _…_\n\n**What went wrong.** _…_\n\n**Action items.**\n\n| action | owner | due |\n|---|---|---|\n| _…_ | _…_ | _…_ |");
        m
    }
}

/// Whether resource id `part` lies inside `container`: see [`crate::resource_contains`].
fn inside(part: &str, container: &str) -> bool {
    part != container && crate::resource_contains(container, part)
}

/// " (target X ms: met)" / " (target X ms: **missed**)", or nothing without a target.
fn target_note(target: Option<u64>, met: Option<bool>) -> String {
    match (target, met) {
        (Some(t), Some(true)) => format!(" (target {t} ms: met)"),
        (Some(t), Some(false)) => format!(" (target {t} ms: **missed**)"),
        _ => String::new(),
    }
}

fn list(v: Vec<&str>) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// What a notice may claim, derived from the plan and the journal (never fixed text).
pub(crate) struct NoticeFacts {
    /// Resources whose restore discards others' writes, with the time since which.
    pub(crate) may_discard: Vec<(String, u64)>,
    /// Counted writes by others that restores discarded (after the rollback).
    pub(crate) items_discarded: Option<u64>,
    /// Whether every restore counted what it discarded, exactly.
    pub(crate) discarded_exact: bool,
    /// Whether a count includes the run's own writes (a checkpoint that cannot tell).
    pub(crate) includes_run: bool,
    /// Whether parity is proven for everything the rollback undid.
    pub(crate) proven: bool,
    /// How many parts are not proven.
    pub(crate) unproven: usize,
}

impl NoticeFacts {
    pub(crate) fn of(kind: NoticeKind, plan: &Plan, state: &State, report: &RunReport) -> Self {
        let captured = |r: &str| {
            report
                .checkpoints
                .iter()
                .find(|c| c.resource == r)
                .and_then(|c| c.captured_at_ms)
                .unwrap_or(report.started_at_ms)
        };
        let selective = |r: &str| {
            plan.checkpoints()
                .iter()
                .any(|c| c.resource() == r && c.checkpoint.selective())
        };
        let may_discard: Vec<(String, u64)> = match kind {
            NoticeKind::RollbackStarted => {
                let scope: BTreeSet<&String> = state
                    .rollback
                    .as_ref()
                    .map(|(_, s, _)| s.iter().collect())
                    .unwrap_or_default();
                report
                    .rollback_checkpoints
                    .iter()
                    .filter(|r| state.baseline.contains_key(*r) && !selective(r))
                    .filter(|r| state.restore_needed(plan, &scope, r))
                    .map(|r| (r.clone(), captured(r)))
                    .collect()
            }
            _ => report
                .checkpoints
                .iter()
                .filter(|c| c.restores > 0 && c.restore_method.as_deref() != Some("noop"))
                .filter(|c| !selective(&c.resource))
                .map(|c| (c.resource.clone(), captured(&c.resource)))
                .collect(),
        };
        NoticeFacts {
            may_discard,
            items_discarded: report.items_discarded,
            discarded_exact: report.discarded_exact,
            includes_run: report
                .checkpoints
                .iter()
                .filter_map(|c| c.discarded_writes.as_ref())
                .any(|d| d.includes_run),
            proven: report.parity_proven(),
            unproven: report.unproven.len(),
        }
    }
}

/// `HH:MM UTC` of an epoch-ms time.
fn hhmm(ms: u64) -> String {
    let mins = (ms / 60_000) % (24 * 60);
    format!("{:02}:{:02} UTC", mins / 60, mins % 60)
}

/// The status-page message for a notice: every claim in it follows from `facts`.
pub(crate) fn status_message(
    kind: NoticeKind,
    plan: &str,
    components: &[String],
    detail: &str,
    facts: &NoticeFacts,
) -> String {
    let what = if components.is_empty() {
        "the affected services".to_string()
    } else {
        components.join(", ")
    };
    let since = facts.may_discard.iter().map(|(_, t)| *t).min().unwrap_or(0);
    let where_ = facts
        .may_discard
        .iter()
        .map(|(r, _)| r.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    match kind {
        NoticeKind::RollbackStarted => {
            let data = if facts.may_discard.is_empty() {
                "The revert undoes only the change's own effects: no data written by customers is being deleted.".to_string()
            } else {
                format!(
                    "Changes made since {} to {where_} may be reverted; we will contact affected customers.",
                    hhmm(since)
                )
            };
            format!(
                "Investigating: a maintenance change ({plan}) hit a problem and is being reverted automatically. \
                 {what} may be briefly degraded. {data} Next update when the revert is verified."
            )
        }
        NoticeKind::RollbackFinished => {
            let verified = if facts.proven {
                format!("and {what} verified back to the state before it")
            } else {
                format!(
                    "; {} part(s) of {what} could not be verified back to the state before it and are being checked by the team",
                    facts.unproven.max(1)
                )
            };
            let data = match (facts.may_discard.is_empty(), facts.items_discarded) {
                (true, _) => "No data written by customers was deleted.".to_string(),
                (false, Some(0)) if facts.discarded_exact => {
                    "No data written by customers was deleted.".to_string()
                }
                (false, Some(n)) => format!(
                    "{}{n} change(s) made since {} to {where_}{} were reverted; we will contact affected customers.",
                    if facts.discarded_exact { "" } else { "At least " },
                    hhmm(since),
                    if facts.includes_run {
                        " (the change's own included)"
                    } else {
                        ""
                    }
                ),
                (false, None) => format!(
                    "Changes made since {} to {where_} may have been reverted; we will contact affected customers.",
                    hhmm(since)
                ),
            };
            format!(
                "Resolved: the change ({plan}) was reverted ({detail}) {verified}. {data} \
                 A full incident report will follow."
            )
            .replace(" ;", ";")
        }
        NoticeKind::RollbackFailed => format!(
            "Identified: reverting the change ({plan}) needs manual action by the on-call team ({what}). \
             We are working on it and will update within 30 minutes."
        ),
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_markdown())
    }
}
