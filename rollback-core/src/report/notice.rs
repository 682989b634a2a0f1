//! The status-page messages for the notifier: every claim derived from what the plan
//! can guarantee and what the journal says the rollback did.

use super::RunReport;
use crate::events::NoticeKind;
use crate::state::State;
use crate::Plan;
use std::collections::BTreeSet;

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
