//! Rolling back a run after it committed: [`Executor::rollback_committed`].
//!
//! A committed run whose baseline snapshots were kept ([`SnapshotRetention::KeepAll`] or
//! [`SnapshotRetention::KeepMigrated`]) is undone by the same rollback a failure before
//! the commit starts: compensations first, restores where no compensation undoes a
//! change (or where the checkpoint is selective), parity proven with the baseline, then
//! the snapshots released per retention. One record (`rollback_after_commit`) revokes the
//! commit and opens the rollback's scope, so the run's state stays a fold over its
//! journal and `resume` finishes a rollback interrupted at any point.
//!
//! [`SnapshotRetention::KeepAll`]: crate::SnapshotRetention::KeepAll
//! [`SnapshotRetention::KeepMigrated`]: crate::SnapshotRetention::KeepMigrated

use super::{Executor, Run};
use crate::events::{NoticeKind, RunEvent};
use crate::journal::{Entry, Record};
use crate::lease::LeaseKeeper;
use crate::report::RunReport;
use crate::state::State;
use crate::{Error, Plan, Result};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

impl Executor {
    /// Roll back a run that committed, while its baseline snapshots are still kept (it
    /// ran with [`SnapshotRetention::KeepAll`](crate::SnapshotRetention::KeepAll) or
    /// `KeepMigrated`): the problem found the morning after, or a fleet wave that
    /// breached after some of its tenants committed.
    ///
    /// The rollback has the guarantees of one before the commit: journaled (one
    /// `rollback_after_commit` record revokes the commit and names the scope, the whole
    /// plan), under the plan's lease with a new fencing epoch, resumable after a crash
    /// ([`Executor::resume`], or this method again), declared `rolled_back` only after
    /// parity with the baseline is proven (see [`RunReport::parity_proven`]). Its RPO is
    /// in the report: [`RunReport::rpo_since_commit_ms`] is the window of writes made
    /// since the commit that the restores put back, and
    /// [`RunReport::items_discarded`] counts what they discarded where the checkpoint
    /// can tell; changes undone by compensation keep every write made since.
    ///
    /// Calling it on a run already rolled back after its commit returns its report; on
    /// one whose rollback after commit was interrupted, finishes it.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use rollback_core::{Executor, Outcome, Plan, SnapshotRetention};
    /// use rollback_core::journal::MemoryJournal;
    /// use rollback_core::sim::{SetKey, SimWorld};
    ///
    /// let world = SimWorld::new();
    /// world.set("db", "k", "v1");
    /// let plan = Plan::builder("rename")
    ///     .checkpoint("db", world.checkpoint("db"))
    ///     .step("db", SetKey::new("set-k", &world, "db", "k", "v2").restore_only(), &[])
    ///     .build()?;
    /// let executor = Executor::new(MemoryJournal::new()).retain_snapshots(SnapshotRetention::KeepAll);
    /// let run = executor.run(&plan).await?;
    /// assert_eq!(run.outcome, Outcome::Committed);
    ///
    /// // The next morning: roll it back.
    /// let report = executor.rollback_committed(&plan, &run.run_id, "errors since the deploy").await?;
    /// assert_eq!(report.outcome, Outcome::RolledBack);
    /// assert!(report.parity_proven() && report.rolled_back_after_commit);
    /// assert_eq!(world.get("db", "k").as_deref(), Some("v1"));
    /// # Ok::<(), rollback_core::Error>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownRun`]; [`Error::PlanMismatch`]; [`Error::NotCommitted`] when the run
    /// did not commit (finish an interrupted one with [`Executor::resume`]);
    /// [`Error::SnapshotsReleased`] when a baseline snapshot was released;
    /// [`Error::LeaseHeld`] while another runner holds the plan's lease; journal errors,
    /// after which the rollback is finished by `resume`.
    ///
    /// # Cancel safety
    /// Dropping the future stops the rollback wherever it is: once the
    /// `rollback_after_commit` record is written, `resume` finishes it; before, the run is
    /// still committed.
    pub async fn rollback_committed(
        &self,
        plan: &Plan,
        run_id: &str,
        reason: &str,
    ) -> Result<RunReport> {
        let records = self.journal.records(run_id).await?;
        let policy = check_run(plan, run_id, &records)?;
        let state = State::from_records(&records);
        if state.reopened() {
            // Already revoked: finish (or report) that rollback.
            return self.resume(plan, run_id).await;
        }
        refuse(run_id, &state)?;
        let (keeper, lease) = LeaseKeeper::acquire(
            self.journal.clone(),
            plan.name(),
            &self.holder,
            self.lease_ttl,
        )
        .await?;
        let _renew = keeper.renew_in_background();
        let span = tracing::info_span!(
            "rollback_committed",
            run = %run_id,
            plan = %plan.name(),
            tenant = self.tenant.as_deref().unwrap_or(""),
            epoch = lease.epoch
        );
        async {
            let mut run = Run::new(self, plan, run_id, CancellationToken::new(), true, keeper);
            run.policy = policy;
            if let Some(r) = self.retention_override {
                run.policy.retention = r;
            }
            // This record fences the run; read it again after it, so that nothing an
            // earlier holder wrote before the fence is missed.
            run.append(Entry::LeaseTaken {
                holder: self.holder.clone(),
                taken_over_from: lease.taken_over_from,
                epoch: lease.epoch,
            })
            .await?;
            run.state = State::from_records(&self.journal.records(run_id).await?);
            if !run.state.reopened() {
                refuse(run_id, &run.state)?;
                run.begin_rollback_after_commit(reason).await?;
            }
            let report = run.drive().await;
            self.finish(plan, report).await
        }
        .instrument(span)
        .await
    }
}

/// The run's first record names this plan (by digest); returns the journaled policy.
fn check_run(plan: &Plan, run_id: &str, records: &[Record]) -> Result<super::RunPolicy> {
    let Some(Record {
        entry:
            Entry::RunStarted {
                plan_digest,
                policy,
                ..
            },
        ..
    }) = records.first()
    else {
        return Err(Error::UnknownRun {
            run_id: run_id.into(),
        });
    };
    if *plan_digest != plan.digest() {
        return Err(Error::PlanMismatch {
            run_id: run_id.into(),
            expected: *plan_digest,
            found: plan.digest(),
        });
    }
    Ok(*policy)
}

/// Refuse a run that is not committed, or whose snapshots were released.
fn refuse(run_id: &str, state: &State) -> Result<()> {
    if !state.committed {
        let outcome = if state.rolled_back {
            "rolled_back"
        } else if state.rollback_failed.is_some() {
            "rollback_failed"
        } else {
            "in_progress"
        };
        return Err(Error::NotCommitted {
            run_id: run_id.into(),
            outcome: outcome.into(),
        });
    }
    let released = state.released_snapshots();
    if !released.is_empty() {
        return Err(Error::SnapshotsReleased {
            run_id: run_id.into(),
            checkpoints: released,
        });
    }
    Ok(())
}

impl Run<'_> {
    /// Revoke the commit and open the rollback of the whole plan, in one record.
    async fn begin_rollback_after_commit(&mut self, reason: &str) -> Result<()> {
        self.flush().await?;
        let plan = self.plan;
        let steps: Vec<String> = plan.steps().iter().map(|s| s.id().to_string()).collect();
        let checkpoints: Vec<String> = plan
            .checkpoints()
            .iter()
            .map(|c| c.resource().to_string())
            .collect();
        let reason = format!("rollback after commit: {reason}");
        tracing::warn!(%reason, ?steps, "rolling back a committed run");
        self.emit(RunEvent::RollbackStarted {
            reason: reason.clone(),
            steps: steps.clone(),
        });
        self.append(Entry::RollbackAfterCommit {
            reason: reason.clone(),
            holder: self.ex.holder.clone(),
            steps,
            checkpoints,
        })
        .await?;
        debug_assert!(!self.state.finished() && self.state.rollback.is_some());
        self.notify(NoticeKind::RollbackStarted, &reason).await;
        Ok(())
    }
}
