//! The report's sections, each read from the run's folded [`State`]: checkpoints, steps,
//! what is not proven, the outcome and the recovery figures.

use super::{inside, CheckpointReport, Outcome, StepReport, StepState};
use crate::state::State;
use crate::{PlanDescription, Reversibility};
use std::collections::{BTreeMap, BTreeSet};

/// The plan's checkpoints: capture, restores, parity, release.
pub(super) fn checkpoints(plan: &PlanDescription, state: &State) -> Vec<CheckpointReport> {
    plan.checkpoints
        .iter()
        .map(|c| {
            let resource = c.resource.as_str();
            let snap = state.baseline.get(resource);
            let log = state.checkpoints.get(resource).cloned().unwrap_or_default();
            let restore = log.last_restore.as_ref();
            CheckpointReport {
                resource: resource.into(),
                component: c.component.clone(),
                snapshot_id: snap.map(|s| s.id.clone()),
                digest: snap.map(|s| s.digest),
                fingerprint: state.baseline_fingerprint(resource),
                size_bytes: snap.and_then(|s| s.size_bytes),
                captured_at_ms: log.captured_at_ms,
                capture_ms: log.capture_ms,
                restore_method: restore.map(|r| r.method.clone()),
                restored_items: restore.and_then(|r| r.items),
                restore_ms: restore.map(|r| r.duration_ms),
                parity: state.parity.get(resource).copied(),
                rpo_ms: restore.and_then(|r| log.captured_at_ms.map(|t| r.at_ms.saturating_sub(t))),
                discarded: log.released.as_ref().map(|r| r.is_ok()),
                discard_error: log.released.as_ref().and_then(|r| r.clone().err()),
                fingerprint_only: log.fingerprint_only,
                restores: log.restores,
                discarded_writes: log.discarded_writes,
                kept_writes: log.kept_writes,
                parity_proof: log.proof_method,
                not_restored: log.not_restored,
            }
        })
        .collect()
}

/// The plan's steps, each with the state it ended in: what the restore found, not only
/// the step's own account.
pub(super) fn steps(
    plan: &PlanDescription,
    state: &State,
    cps: &[CheckpointReport],
) -> Vec<StepReport> {
    let restored_items = |t: &str| {
        cps.iter()
            .find(|c| c.resource == t)
            .and_then(|c| c.restored_items)
            .unwrap_or(0)
    };
    let (scope, scope_cps) = rollback_scope(state);
    let restored_ok: BTreeSet<&String> = scope_cps
        .iter()
        .filter(|c| state.parity.get(*c) == Some(&true))
        .collect();
    plan.steps
        .iter()
        .map(|ps| {
            let log = state.steps.get(&ps.id).cloned().unwrap_or_default();
            let mut sr = StepReport {
                id: ps.id.clone(),
                component: ps.component.clone(),
                reversibility: ps.reversibility,
                state: StepState::NotApplied,
                apply_attempts: log.apply_attempts,
                apply_ms: log.apply_ms,
                revert_attempts: log.revert_attempts,
                revert_ms: log.revert_ms,
                last_error: log.last_error,
                note: None,
            };
            let touches = &ps.touches;
            sr.state = if !state.applied.contains_key(&ps.id) {
                not_applied_state(plan, state, &mut sr, touches, &restored_ok, &restored_items)
            } else if state.reverted.contains(&ps.id) {
                StepState::Reverted
            } else if state.rollback.is_none() {
                StepState::Applied
            } else if !scope.contains(&ps.id) {
                StepState::Kept
            } else {
                let by_restore =
                    !touches.is_empty() && touches.iter().all(|t| restored_ok.contains(t));
                match plan.undo(&ps.id) {
                    Some(crate::Undo::CompensationOf { steps: by })
                        if by.iter().all(|b| state.reverted.contains(b)) =>
                    {
                        StepState::UndoneByCompensation
                    }
                    _ if by_restore => StepState::UndoneByRestore,
                    _ if ps.reversibility == Reversibility::Irreversible => {
                        StepState::IrreversibleKept
                    }
                    _ => StepState::NotUndone,
                }
            };
            sr
        })
        .collect()
}

/// A step the journal does not count as applied: it may still have had effects, which a
/// restore of what it touches had to rewrite while no applied step touches them.
fn not_applied_state(
    plan: &PlanDescription,
    state: &State,
    sr: &mut StepReport,
    touches: &[String],
    restored_ok: &BTreeSet<&String>,
    restored_items: &dyn Fn(&str) -> u64,
) -> StepState {
    let rewrote: Vec<String> = touches
        .iter()
        .filter(|t| {
            restored_items(t) > 0
                && !plan
                    .steps
                    .iter()
                    .any(|o| state.applied.contains_key(&o.id) && o.touches.contains(t))
        })
        .map(|t| format!("{t} ({} items)", restored_items(t)))
        .collect();
    let restored: Vec<String> = touches
        .iter()
        .filter(|t| restored_items(t) > 0)
        .map(|t| format!("{t} ({} items)", restored_items(t)))
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
}

/// The rollback's scope: its steps and its checkpoints (empty without a rollback).
fn rollback_scope(state: &State) -> (BTreeSet<String>, Vec<String>) {
    match &state.rollback {
        Some((_, s, c)) => (s.iter().cloned().collect(), c.clone()),
        None => (BTreeSet::new(), Vec::new()),
    }
}

/// What the rollback cannot claim back at its baseline: checkpoints in its scope without
/// parity, undone steps naming no resource, resources changed without a checkpoint.
pub(super) fn unproven(
    plan: &PlanDescription,
    state: &State,
    cps: &[CheckpointReport],
) -> Vec<String> {
    let mut unproven = Vec::new();
    if state.rollback.is_none() {
        return unproven;
    }
    let (scope, scope_cps) = rollback_scope(state);
    let by_resource: BTreeMap<&str, &CheckpointReport> =
        cps.iter().map(|c| (c.resource.as_str(), c)).collect();
    for c in &scope_cps {
        let Some(cr) = by_resource.get(c.as_str()) else {
            continue;
        };
        if cr.fingerprint.is_none() || cr.parity == Some(true) {
            continue;
        }
        unproven.push(match (&cr.not_restored, cr.parity) {
            (Some(why), _) => format!("{c}: {why}"),
            (None, Some(false)) => format!("{c}: differs from its baseline"),
            _ => format!("{c}: parity not checked"),
        });
    }
    let with_checkpoint: Vec<&str> = plan.checkpoint_resources().collect();
    // A resource is checked when a checkpoint is of it or of something containing it
    // (`a/b` is inside `a`). A step may also name a container beside the part of it that
    // it changes (a flag and its provider scope): the container is then checked through
    // that part.
    let direct = |t: &str| with_checkpoint.iter().any(|c| *c == t || inside(t, c));
    let mut unchecked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ps in &plan.steps {
        if !scope.contains(&ps.id) || !state.applied.contains_key(&ps.id) {
            continue;
        }
        let touches = &ps.touches;
        if touches.is_empty() {
            unproven.push(format!(
                "step {}: names no resource it changes, so what it changed is not checked",
                ps.id
            ));
        }
        for t in touches {
            let through_part = touches.iter().any(|part| inside(part, t) && direct(part));
            if !direct(t) && !through_part {
                unchecked.entry(t.clone()).or_default().push(ps.id.clone());
            }
        }
    }
    for (t, by) in unchecked {
        unproven.push(format!(
            "{t}: changed by {} and has no checkpoint, so its state after the rollback is not checked",
            by.join(", ")
        ));
    }
    unproven
}

/// How the run ended, as far as its records go.
pub(super) fn outcome(state: &State) -> Outcome {
    if state.committed {
        Outcome::Committed
    } else if state.rolled_back {
        if state.partial {
            Outcome::PartiallyRolledBack
        } else {
            Outcome::RolledBack
        }
    } else if state.rollback_failed.is_some() {
        Outcome::RollbackFailed
    } else {
        Outcome::InProgress
    }
}

/// RTO: from the rollback's start (or the interruption a resume rolled back) to the
/// `rolled_back` record.
pub(super) fn rto_ms(state: &State) -> Option<u64> {
    let rto_start = match (state.rollback_started_at_ms, state.interrupted_at_ms) {
        (Some(a), Some(i)) => Some(a.min(i)),
        (a, _) => a,
    };
    match (rto_start, state.rolled_back_at_ms) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    }
}

/// The recovery figures: RTO, RPO by time, and by items discarded.
pub(super) struct Recovery {
    pub(super) rto_ms: Option<u64>,
    pub(super) rpo_ms: Option<u64>,
    pub(super) items_discarded: Option<u64>,
    pub(super) discarded_exact: bool,
}

/// RTO: from the rollback's start (or the interruption a resume rolled back) to the
/// `rolled_back` record. RPO: the largest capture → restore window over the checkpoints,
/// whenever a restore ran. Items: the writes of others the restores counted.
pub(super) fn recovery(
    plan: &PlanDescription,
    state: &State,
    cps: &[CheckpointReport],
) -> Recovery {
    let rto_ms = rto_ms(state);
    // A restore discarded writes whenever it ran, whether or not the rollback finished.
    let rpo_ms = (state.rolled_back || !state.restored.is_empty())
        .then(|| cps.iter().filter_map(|c| c.rpo_ms).max().unwrap_or(0));
    let counted: Vec<&crate::Discarded> = cps
        .iter()
        .filter_map(|c| c.discarded_writes.as_ref())
        .collect();
    let uncounted = plan.checkpoint_resources().any(|c| {
        state
            .checkpoints
            .get(c)
            .is_some_and(|l| l.uncounted_discards)
    });
    Recovery {
        rto_ms,
        rpo_ms,
        items_discarded: (!counted.is_empty()).then(|| counted.iter().map(|d| d.items).sum()),
        discarded_exact: !counted.is_empty() && !uncounted && counted.iter().all(|d| d.exact),
    }
}
