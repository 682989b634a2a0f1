//! [`RunSummary`]: one line about a run, read from its records alone — for lists of runs
//! (`rollback runs`, `rollback history`) and for runs journaled before journals described
//! their plan.

use super::{sections, Outcome};
use crate::journal::{Entry, Record};
use crate::state::State;
use crate::Digest;
use serde::{Deserialize, Serialize};

/// What a run's records say about it, without its plan: which plan, when, who, how far
/// it got and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Plan name (from `run_started`).
    pub plan: String,
    /// Plan digest (from `run_started`).
    pub plan_digest: Digest,
    /// The holder that started the run.
    pub started_by: String,
    /// The holder that wrote the run's last lease record (who works on it, or did last).
    pub holder: String,
    /// The fencing epoch of the run's last record.
    pub epoch: u64,
    /// Time of the first record, epoch ms.
    pub started_at_ms: u64,
    /// Time of the last record, epoch ms.
    pub last_at_ms: u64,
    /// How many records.
    pub records: u64,
    /// The kind of the last record (`applied`, `committed`...).
    pub last_kind: String,
    /// How it ended, as far as its records go.
    pub outcome: Outcome,
    /// Why rollback started, if it did.
    pub rollback_reason: Option<String>,
    /// Recovery time, when a rollback finished.
    pub rto_ms: Option<u64>,
    /// The declared RTO target, when the journal describes the plan.
    pub rto_target_ms: Option<u64>,
    /// Steps the plan has, when the journal describes it.
    pub steps_total: Option<usize>,
    /// Steps applied (with an `applied` record), including those undone since.
    pub steps_applied: usize,
    /// Steps reverted.
    pub steps_reverted: usize,
    /// How many times the run was resumed.
    pub resumes: u32,
    /// Whether the journal describes the plan (a report can be rebuilt without it).
    pub described: bool,
}

impl RunSummary {
    /// Summarize `run_id` from its records. `None` when there are none, or the first is
    /// not `run_started`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> rollback_core::Result<()> {
    /// use rollback_core::journal::{Journal, MemoryJournal};
    /// use rollback_core::report::RunSummary;
    /// use rollback_core::sim::{SetKey, SimWorld};
    /// use rollback_core::{Executor, Outcome, Plan};
    /// use std::sync::Arc;
    /// let w = SimWorld::new();
    /// let plan = Plan::builder("demo")
    ///     .step("db", SetKey::new("s1", &w, "db", "k", "v"), &[])
    ///     .build()?;
    /// let journal = Arc::new(MemoryJournal::new());
    /// let report = Executor::with_journal(journal.clone()).run(&plan).await?;
    /// let records = journal.records(&report.run_id).await?;
    /// let s = RunSummary::from_records(&report.run_id, &records).unwrap();
    /// assert_eq!((s.plan.as_str(), s.outcome, s.steps_total), ("demo", Outcome::Committed, Some(1)));
    /// # Ok(()) }
    /// ```
    pub fn from_records(run_id: &str, records: &[Record]) -> Option<RunSummary> {
        let (plan, plan_digest, started_by) = match records.first().map(|r| &r.entry) {
            Some(Entry::RunStarted {
                plan,
                plan_digest,
                holder,
                ..
            }) => (plan.clone(), *plan_digest, holder.clone()),
            _ => return None,
        };
        let holder = records
            .iter()
            .rev()
            .find_map(|r| match &r.entry {
                Entry::LeaseTaken { holder, .. } => Some(holder.clone()),
                _ => None,
            })
            .unwrap_or_else(|| started_by.clone());
        let last = records.last()?;
        let state = State::from_records(records);
        let description = state.description.as_ref();
        Some(RunSummary {
            run_id: run_id.to_string(),
            plan,
            plan_digest,
            started_by,
            holder,
            epoch: last.epoch,
            started_at_ms: state.started_at_ms.unwrap_or(last.at_ms),
            last_at_ms: last.at_ms,
            records: records.len() as u64,
            last_kind: last.entry.kind().to_string(),
            outcome: sections::outcome(&state),
            rollback_reason: state.rollback.as_ref().map(|(r, _, _)| r.clone()),
            rto_ms: sections::rto_ms(&state),
            rto_target_ms: description.and_then(|d| d.objectives.rto_ms),
            steps_total: description.map(|d| d.steps.len()),
            steps_applied: state
                .applied
                .values()
                .filter(|receipt| receipt.is_some())
                .count(),
            steps_reverted: state.reverted.len(),
            resumes: state.resumes,
            described: description.is_some(),
        })
    }

    /// Whether the run reached an end (committed, rolled back): nothing is left to do.
    pub fn finished(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Committed | Outcome::RolledBack | Outcome::PartiallyRolledBack
        )
    }
}
