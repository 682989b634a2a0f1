//! The timeline: every record of the run, rendered as one line.

use super::TimelineEntry;
use crate::journal::{Entry, Record};
use crate::state::JournalRepair;
use crate::PlanDescription;
use std::collections::BTreeMap;

/// One line per record, with its offset from the run's start (`started`, epoch ms).
pub(super) fn timeline(
    plan: &PlanDescription,
    started: u64,
    records: &[Record],
) -> Vec<TimelineEntry> {
    // How many times each of the plan's checkpoints was restored so far ("restored AGAIN").
    let mut restores: BTreeMap<&str, u32> = plan.checkpoint_resources().map(|c| (c, 0)).collect();
    records
        .iter()
        .map(|r| {
            let again = match &r.entry {
                Entry::Restored { checkpoint, .. } => {
                    restores.get_mut(checkpoint.as_str()).is_some_and(|n| {
                        *n += 1;
                        *n > 1
                    })
                }
                _ => false,
            };
            TimelineEntry {
                offset_ms: r.at_ms.saturating_sub(started),
                kind: r.entry.kind().into(),
                detail: describe(&r.entry, again),
                subject: r.entry.subject().map(str::to_string),
            }
        })
        .collect()
}

/// What the journal repaired, in words.
pub(super) fn repair(r: &JournalRepair) -> String {
    match r {
        JournalRepair::Truncated { bytes, kind } => format!(
            "the journal dropped {bytes} bytes of a record cut short ({})",
            kind.as_deref().unwrap_or("type unreadable")
        ),
        JournalRepair::LossResolved { lost, assumed } => {
            format!("the journal lost {lost}; resumed on the explicit assumption: {assumed}")
        }
    }
}

/// One record in words; `again`: a restore of a checkpoint restored before in this run.
fn describe(entry: &Entry, again: bool) -> String {
    match entry {
        Entry::RunStarted {
            plan,
            plan_digest,
            holder,
            policy,
        } => format!(
            "plan {plan} ({}) by {holder}, scope {:?}, on resume {:?}",
            plan_digest.short(),
            policy.scope,
            policy.on_resume
        ),
        Entry::PlanDescribed(d) => d.summary(),
        Entry::LeaseTaken {
            holder,
            taken_over_from,
            epoch,
        } => match taken_over_from {
            Some(p) => format!("lease taken by {holder} over expired {p}, epoch {epoch}"),
            None => format!("lease taken by {holder}, epoch {epoch}"),
        },
        Entry::TailTruncated { bytes, kind } => repair(&JournalRepair::Truncated {
            bytes: *bytes,
            kind: kind.clone(),
        }),
        Entry::TailLossResolved { lost, assumed } => repair(&JournalRepair::LossResolved {
            lost: lost.clone(),
            assumed: *assumed,
        }),
        Entry::Resumed { holder } => format!("resumed by {holder}"),
        Entry::CaptureIntent { checkpoint } => format!("capturing {checkpoint}"),
        Entry::Fingerprinted {
            checkpoint,
            fingerprint,
            duration_ms,
        } => format!(
            "fingerprinted {checkpoint} ({}) in {duration_ms} ms; no snapshot: no undo path restores it",
            fingerprint.short()
        ),
        Entry::NotRestored { checkpoint, reason } => {
            format!("{checkpoint} left as it is: {reason}")
        }
        Entry::Captured {
            checkpoint,
            snapshot,
            duration_ms,
        } => format!(
            "captured {checkpoint} digest {} in {duration_ms} ms",
            snapshot.digest.short()
        ),
        Entry::ApplyIntent { step, attempt } => format!("applying {step} (attempt {attempt})"),
        Entry::Applied {
            step, duration_ms, ..
        } => format!("applied {step} in {duration_ms} ms"),
        Entry::ApplyFailed {
            step,
            error,
            maybe_applied,
            ..
        } => format!(
            "apply of {step} failed{}: {error}",
            if *maybe_applied {
                " (may have applied)"
            } else {
                ""
            }
        ),
        Entry::Progress { step, cursor } => format!("{step} saved cursor {cursor}"),
        Entry::Verdict {
            verifier,
            phase,
            verdict,
        } => format!(
            "{verifier} [{phase}]: {:?} — {}",
            verdict.status, verdict.summary
        ),
        Entry::RollbackStarted {
            reason,
            steps: scope,
            ..
        } => format!("ROLLBACK started: {reason} (scope: {})", scope.join(", ")),
        Entry::RollbackAfterCommit {
            reason,
            holder,
            steps: scope,
            ..
        } => format!(
            "ROLLBACK AFTER COMMIT by {holder}: {reason} (scope: {})",
            scope.join(", ")
        ),
        Entry::RevertIntent { step, attempt } => format!("reverting {step} (attempt {attempt})"),
        Entry::Reverted { step, duration_ms } => format!("reverted {step} in {duration_ms} ms"),
        Entry::RevertFailed { step, error, .. } => format!("revert of {step} failed: {error}"),
        Entry::RestoreIntent { checkpoint } => format!("restoring {checkpoint}"),
        Entry::Restored {
            checkpoint,
            method,
            duration_ms,
            discarded,
            ..
        } => {
            let lost = match discarded {
                Some(d) if d.items > 0 => format!(
                    "; discarded {}{} write(s) made since capture",
                    if d.exact { "" } else { "at least " },
                    d.items
                ),
                Some(_) => "; discarded no write made since capture".into(),
                None => String::new(),
            };
            let again = if again { " AGAIN" } else { "" };
            format!("restored{again} {checkpoint} by {method} in {duration_ms} ms{lost}")
        }
        Entry::RestoreFailed { checkpoint, error } => {
            format!("restore of {checkpoint} failed: {error}")
        }
        Entry::Parity {
            checkpoint,
            expected,
            actual,
        } => format!(
            "parity of {checkpoint}: {} (baseline {}, now {})",
            if expected == actual {
                "proven"
            } else {
                "FAILED"
            },
            expected.short(),
            actual.short()
        ),
        Entry::Committed => "committed".to_string(),
        // What parity covers is in the parity records and the summary; this line claims
        // only the outcome.
        Entry::RolledBack { partial: true } => "partially rolled back".into(),
        Entry::RolledBack { partial: false } => "rolled back".into(),
        Entry::Discarded { checkpoint, error } => match error {
            None => format!("released the snapshot of {checkpoint}"),
            Some(e) => {
                format!("releasing the snapshot of {checkpoint} failed (left in place): {e}")
            }
        },
        Entry::RollbackFailed { remaining, error } => format!(
            "ROLLBACK FAILED: {error}; remaining: {}",
            remaining.join("; ")
        ),
    }
}

/// An entry as the timeline words it (`applied db-schema in 3 ms`).
impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(self, false))
    }
}
