//! The [`Executor`]: runs a [`Plan`] transactionally, journaled, with automatic rollback.

use crate::events::{Event, Notifier, RunEvent};
use crate::journal::{plan_of, Entry, Journal, Record, TailAssumption};
use crate::lease::LeaseKeeper;
use crate::report::{Outcome, RunReport};
use crate::state::State;
use crate::{Error, Plan, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod committed;
mod forward;
mod rollback;
mod run;

use run::Run;

/// What is rolled back when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackScope {
    /// Every applied step of the plan (the default).
    #[default]
    Plan,
    /// Only the failed step's component and every step that depends on it; the rest stays
    /// applied (partial rollback). Failures not tied to one step (final verifiers, soak
    /// triggers, cancellation) still roll back the whole plan.
    Component,
}

/// What [`Executor::resume`] does with a run that was interrupted while applying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumePolicy {
    /// Roll the run back to its baseline (the default: the safe end).
    #[default]
    RollBack,
    /// Finish applying it (re-applying an uncertain step idempotently), then verify.
    RollForward,
}

/// The policy a run starts with; journaled, so `resume` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunPolicy {
    /// Rollback scope.
    pub scope: RollbackScope,
    /// What resume does with an interrupted apply.
    pub on_resume: ResumePolicy,
    /// Roll back after a successful apply and soak (a rehearsal).
    #[serde(default)]
    pub rehearsal: bool,
    /// What happens to the baseline snapshots once the run has ended (see
    /// [`Executor::retain_snapshots`]).
    #[serde(default)]
    pub retention: SnapshotRetention,
}

/// What the executor does with the baseline snapshots of a run that has ended (committed,
/// or rolled back with parity proven). A run stopped in `RollbackFailed` keeps them all:
/// resume needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotRetention {
    /// Release every snapshot ([`Checkpoint::discard`](crate::Checkpoint::discard)):
    /// table copies, snapshot prefixes and change-tracking triggers do not outlive the run.
    #[default]
    Release,
    /// Release the snapshots of resources a rollback proved back at their baseline; keep
    /// those of resources left migrated (all of them after a commit, the kept components'
    /// after a partial rollback), so a later, manual rollback can still restore them.
    KeepMigrated,
    /// Keep every snapshot.
    KeepAll,
}

/// Runs plans. Cheap to clone; clones share the journal, event stream and notifier.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use rollback_core::{Executor, Plan, report::Outcome};
/// use rollback_core::journal::MemoryJournal;
/// use rollback_core::sim::{SimWorld, SetKey};
///
/// let world = SimWorld::new();
/// let plan = Plan::builder("rename")
///     .checkpoint("db", world.checkpoint("db"))
///     .step("db", SetKey::new("set-k", &world, "db", "k", "v2"), &[])
///     .build()?;
/// let report = Executor::new(MemoryJournal::new()).run(&plan).await?;
/// assert_eq!(report.outcome, Outcome::Committed);
/// assert_eq!(world.get("db", "k").as_deref(), Some("v2"));
/// # Ok::<(), rollback_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Executor {
    journal: Arc<dyn Journal>,
    events: broadcast::Sender<Event>,
    notifier: Option<Arc<dyn Notifier>>,
    holder: String,
    lease_ttl: Duration,
    policy: RunPolicy,
    resume_override: Option<ResumePolicy>,
    retention_override: Option<SnapshotRetention>,
    rollback_retries: u32,
    tail_assumption: Option<TailAssumption>,
    tenant: Option<String>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("holder", &self.holder)
            .field("policy", &self.policy)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// A rehearsal's two runs: apply → rollback → parity, then apply again.
#[derive(Debug, Clone)]
pub struct Rehearsal {
    /// The rehearsal run, rolled back after applying.
    pub rehearsal: RunReport,
    /// The real run after it (only when the rehearsal rolled back with parity proven).
    pub run: Option<RunReport>,
}

impl Rehearsal {
    /// Whether the rehearsal proved the rollback and the second apply committed.
    pub fn passed(&self) -> bool {
        self.rehearsal.outcome == Outcome::RolledBack
            && self.rehearsal.parity_proven()
            && self
                .run
                .as_ref()
                .is_some_and(|r| r.outcome == Outcome::Committed)
    }
}

impl Executor {
    /// An executor writing to `journal`, with default policy (whole-plan rollback,
    /// resume rolls back), a 30 s lease and a generated holder id.
    pub fn new(journal: impl Journal + 'static) -> Self {
        Self::with_journal(Arc::new(journal))
    }

    /// Same as [`Executor::new`] for a shared journal.
    pub fn with_journal(journal: Arc<dyn Journal>) -> Self {
        let (events, _) = broadcast::channel(1024);
        Executor {
            journal,
            events,
            notifier: None,
            holder: format!(
                "pid{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            lease_ttl: Duration::from_secs(30),
            policy: RunPolicy::default(),
            resume_override: None,
            retention_override: None,
            rollback_retries: 5,
            tail_assumption: None,
            tenant: None,
        }
    }

    /// Set the rollback scope.
    pub fn scope(mut self, scope: RollbackScope) -> Self {
        self.policy.scope = scope;
        self
    }
    /// Set what resume does with an interrupted apply. Runs started by this executor
    /// journal it; [`Executor::resume`] on this executor uses it instead of the policy
    /// the run was started with (without this call, resume keeps the journaled one).
    pub fn on_resume(mut self, policy: ResumePolicy) -> Self {
        self.policy.on_resume = policy;
        self.resume_override = Some(policy);
        self
    }
    /// Choose what happens to the baseline snapshots once a run has ended.
    ///
    /// By default ([`SnapshotRetention::Release`]), once a run has committed or rolled
    /// back with parity proven, the executor calls
    /// [`Checkpoint::discard`](crate::Checkpoint::discard) on each captured snapshot,
    /// journaled as `discarded` (a failure is logged and reported, never changes the
    /// outcome), so table copies, snapshot prefixes and change-tracking triggers do not
    /// outlive the migration. Keep them to restore by hand later (a delayed rollback after
    /// commit); the snapshots are in the journal's `captured` records, and
    /// [`Executor::resume`] of the run releases them once the policy is `Release` again.
    /// A run that stops in `RollbackFailed` never releases: resume needs them.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use rollback_core::{Executor, Plan, SnapshotRetention};
    /// use rollback_core::journal::MemoryJournal;
    /// use rollback_core::sim::{SetKey, SimWorld};
    ///
    /// let world = SimWorld::new();
    /// let plan = Plan::builder("rename")
    ///     .checkpoint("db", world.checkpoint("db"))
    ///     .step("db", SetKey::new("set-k", &world, "db", "k", "v2"), &[])
    ///     // Its own revert undoes set-k: without this, db is only fingerprinted.
    ///     .capture_all_checkpoints()
    ///     .build()?;
    /// // Keep the baseline after the commit, for a delayed manual rollback.
    /// let report = Executor::new(MemoryJournal::new())
    ///     .retain_snapshots(SnapshotRetention::KeepAll)
    ///     .run(&plan)
    ///     .await?;
    /// assert_eq!(world.stored_snapshots(), 1);
    /// assert_eq!(report.checkpoints[0].discarded, None); // "kept" in the Markdown report
    /// # Ok::<(), rollback_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn retain_snapshots(mut self, retention: SnapshotRetention) -> Self {
        self.policy.retention = retention;
        self.retention_override = Some(retention);
        self
    }
    /// What [`Executor::resume`] assumes when the journal lost records at the end of a run
    /// that may have held its outcome. Without this, such a resume stops with
    /// [`Error::LostTail`] and does nothing; with it, the decision is journaled
    /// ([`Entry::TailLossResolved`]) and shown in the report. Choose from what you know of
    /// the resources (e.g. the application ran on the migrated schema: `Committed`).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use rollback_core::{Executor, Plan, Outcome, SnapshotRetention, TailAssumption};
    /// use rollback_core::journal::FileJournal;
    /// use rollback_core::sim::{SetKey, SimWorld};
    ///
    /// let world = SimWorld::new();
    /// let plan = Plan::builder("rename")
    ///     .checkpoint("db", world.checkpoint("db"))
    ///     .step("db", SetKey::new("set-k", &world, "db", "k", "v2"), &[])
    ///     .build()?;
    /// let dir = tempfile::tempdir().unwrap();
    /// let report = Executor::new(FileJournal::open(dir.path())?)
    ///     .retain_snapshots(SnapshotRetention::KeepAll) // `committed` is the last record
    ///     .run(&plan)
    ///     .await?;
    ///
    /// // The disk loses the last bytes of the run's file: its `committed` record is cut.
    /// let path = dir.path().join(format!("{}.journal", report.run_id));
    /// let bytes = std::fs::read(&path).unwrap();
    /// let cut = bytes[..bytes.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 10;
    /// std::fs::write(&path, &bytes[..cut]).unwrap();
    ///
    /// let journal = FileJournal::open(dir.path())?;
    /// let err = Executor::new(journal.clone()).resume(&plan, &report.run_id).await.unwrap_err();
    /// assert!(matches!(err, rollback_core::Error::LostTail { .. }), "{err}");
    /// assert_eq!(world.get("db", "k").as_deref(), Some("v2")); // nothing rolled back
    ///
    /// let again = Executor::new(journal)
    ///     .assume_lost_tail(TailAssumption::Committed)
    ///     .resume(&plan, &report.run_id)
    ///     .await?;
    /// assert_eq!(again.outcome, Outcome::Committed);
    /// assert_eq!(world.get("db", "k").as_deref(), Some("v2"));
    /// # Ok::<(), rollback_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn assume_lost_tail(mut self, assumption: TailAssumption) -> Self {
        self.tail_assumption = Some(assumption);
        self
    }
    /// Name the tenant this executor's runs belong to (a fleet's per-tenant runs): every
    /// [`Event`] carries it ([`Event::tenant`]) and every tracing span of a run is inside
    /// a `run` / `resume` / `rollback_committed` span with a `tenant` field beside `run`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
    /// Set the holder id used for leases (defaults to pid + random).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }
    /// Set the lease time-to-live (renewed in the background while running, and checked
    /// before every durable action: a runner that cannot show it still holds its lease
    /// stops with [`Error::Fenced`]).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }
    /// Retries for each revert and restore during rollback (with backoff) before the
    /// rollback stops in `RollbackFailed`.
    pub fn rollback_retries(mut self, n: u32) -> Self {
        self.rollback_retries = n;
        self
    }
    /// Set a notifier told when rollback starts and ends.
    pub fn notifier(mut self, n: impl Notifier + 'static) -> Self {
        self.notifier = Some(Arc::new(n));
        self
    }
    /// The journal.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.journal
    }
    /// Subscribe to the typed event stream of every run of this executor.
    /// Every [`Event`] names its run; [`ConsoleProgress`](crate::ConsoleProgress) renders
    /// them for a person.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Run `plan` to its end: committed, rolled back (with parity proven), or
    /// `RollbackFailed` (resumable).
    ///
    /// A run that starts returns `Ok` with its report whatever happens to the migration;
    /// check [`RunReport::outcome`].
    ///
    /// # Errors
    /// Before the run starts: [`Error::LeaseHeld`]; [`Error::Conflict`] when a run of a
    /// plan with the same name is unfinished (see [`Executor::unfinished`]). At any time:
    /// journal errors, after which nothing more is done and [`Executor::resume`] finishes
    /// the run.
    ///
    /// # Cancel safety
    /// Dropping the future stops the run wherever it is; the journal then holds what
    /// `resume` needs to reach a consistent end.
    pub async fn run(&self, plan: &Plan) -> Result<RunReport> {
        self.run_with_cancel(plan, CancellationToken::new()).await
    }

    /// Like [`Executor::run`], rolling back when `cancel` is cancelled while applying or
    /// soaking (applied steps are never abandoned).
    ///
    /// # Errors
    /// As [`Executor::run`].
    pub async fn run_with_cancel(
        &self,
        plan: &Plan,
        cancel: CancellationToken,
    ) -> Result<RunReport> {
        let run_id = uuid::Uuid::new_v4().to_string();
        self.start(plan, &run_id, cancel).await
    }

    /// Like [`Executor::run`] with a run id chosen by the caller (for a per-tenant run, or
    /// a child process that a supervisor resumes by id).
    ///
    /// # Errors
    /// As [`Executor::run`]; [`Error::Conflict`] if the journal already has this run.
    pub async fn run_as(
        &self,
        plan: &Plan,
        run_id: &str,
        cancel: CancellationToken,
    ) -> Result<RunReport> {
        if !self.journal.records(run_id).await?.is_empty() {
            return Err(Error::conflict(format!(
                "run {run_id} already exists; resume it instead"
            )));
        }
        self.start(plan, run_id, cancel).await
    }

    /// Runs of a plan with this plan's name that have not reached an end (interrupted,
    /// or stopped in `RollbackFailed`): [`Executor::resume`] them.
    ///
    /// # Errors
    /// Journal errors.
    pub async fn unfinished(&self, plan: &Plan) -> Result<Vec<String>> {
        // The journal's index names the runs that have not ended, so runs that did cost
        // nothing here however many there are; each one named is read and folded, and the
        // run's own state has the last word.
        let mut out = Vec::new();
        for run_id in self.journal.open_runs_of_plan(plan.name()).await? {
            let records = self.journal.records(&run_id).await?;
            if plan_of(&records) == Some(plan.name()) && !State::from_records(&records).finished() {
                out.push(run_id);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn start(
        &self,
        plan: &Plan,
        run_id: &str,
        cancel: CancellationToken,
    ) -> Result<RunReport> {
        if let Some(open) = self.unfinished(plan).await?.first() {
            // Starting again would change resources an interrupted run may have left half
            // migrated: finish that one first.
            return Err(Error::conflict(format!(
                "run {open} of plan {} is unfinished; resume it before starting another",
                plan.name()
            )));
        }
        let (keeper, lease) = LeaseKeeper::acquire(
            self.journal.clone(),
            plan.name(),
            &self.holder,
            self.lease_ttl,
        )
        .await?;
        let _renew = keeper.renew_in_background();
        let (live, progress) = crate::live::channel();
        let progress = crate::live::publish(self.journal.clone(), progress, run_id);
        let span = tracing::info_span!(
            "run",
            run = %run_id,
            plan = %plan.name(),
            tenant = self.tenant.as_deref().unwrap_or(""),
            epoch = lease.epoch
        );
        let out = async {
            let mut run = Run::new(self, plan, run_id, cancel, false, keeper);
            run.live = Some(live);
            // The run's three opening records go out in one durable write of their own,
            // before anything else: a crash before it leaves no run at all, and once it
            // is written a runner that takes the plan's lease over finds the run and
            // fences this one. Deferred to the first verdict or intent, a runner stopped
            // in a precondition would leave no run to find and could write a whole run
            // at its stale epoch after the takeover (`fencing.rs`).
            run.defer(Entry::RunStarted {
                plan: plan.name().into(),
                plan_digest: plan.digest(),
                holder: self.holder.clone(),
                policy: self.policy,
            });
            // The report of the run can then be rebuilt from its records alone.
            run.defer(Entry::PlanDescribed(Box::new(plan.describe())));
            run.append(Entry::LeaseTaken {
                holder: self.holder.clone(),
                taken_over_from: lease.taken_over_from,
                epoch: lease.epoch,
            })
            .await?;
            let report = run.drive().await;
            self.finish(plan, report).await
        }
        .instrument(span)
        .await;
        // What the run published of its progress reaches the journal before it returns.
        progress.finish().await;
        out
    }

    /// Bring an interrupted run to a consistent end, with the same plan (checked by
    /// digest). Finished runs just return their report.
    ///
    /// # Errors
    /// [`Error::UnknownRun`], [`Error::PlanMismatch`], [`Error::LeaseHeld`] while the
    /// previous runner's lease is live, journal errors.
    ///
    /// # Cancel safety
    /// As [`Executor::run`]: resume again.
    pub async fn resume(&self, plan: &Plan, run_id: &str) -> Result<RunReport> {
        self.resume_with_cancel(plan, run_id, CancellationToken::new())
            .await
    }

    /// [`Executor::resume`], cancellable like [`Executor::run_with_cancel`]: cancelling
    /// rolls the resumed run back (applied steps are never abandoned).
    ///
    /// # Errors
    /// As [`Executor::resume`].
    pub async fn resume_with_cancel(
        &self,
        plan: &Plan,
        run_id: &str,
        cancel: CancellationToken,
    ) -> Result<RunReport> {
        let records = self.journal.records(run_id).await?;
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
        let policy = *policy;
        let state = State::from_records(&records);
        let lost = self.journal.lost_tail(run_id).await?;
        // Records lost at the end may have held the outcome: never decide that alone.
        let resolution = match lost
            .as_ref()
            .and_then(|l| state.outcome_maybe_lost(plan, &policy, l).map(|c| (l, c)))
        {
            None => None,
            Some((lost, could_be)) => match self.tail_assumption {
                None => {
                    return Err(Error::LostTail {
                        run_id: run_id.into(),
                        last_seq: records.last().map(|r| r.seq),
                        lost: lost.to_string(),
                        could_be: could_be.into(),
                    })
                }
                Some(assumed) => Some((lost.to_string(), assumed)),
            },
        };
        let retention = self.retention_override.unwrap_or(policy.retention);
        if resolution.is_none() && state.finished() && !state.discard_pending(retention) {
            return Ok(RunReport::from_records(plan, run_id, &records));
        }
        let (keeper, lease) = LeaseKeeper::acquire(
            self.journal.clone(),
            plan.name(),
            &self.holder,
            self.lease_ttl,
        )
        .await?;
        let _renew = keeper.renew_in_background();
        let (live, progress) = crate::live::channel();
        let progress = crate::live::publish(self.journal.clone(), progress, run_id);
        let span = tracing::info_span!(
            "resume",
            run = %run_id,
            plan = %plan.name(),
            tenant = self.tenant.as_deref().unwrap_or(""),
            epoch = lease.epoch
        );
        let out = async {
            let mut run = Run::new(self, plan, run_id, cancel, true, keeper);
            run.live = Some(live);
            run.policy = policy;
            if let Some(p) = self.resume_override {
                run.policy.on_resume = p;
            }
            if let Some(r) = self.retention_override {
                run.policy.retention = r;
            }
            if let Some((lost, assumed)) = &resolution {
                tracing::warn!(%lost, %assumed, "the journal lost records at the end of the run; resuming on the assumption given");
                run.append(Entry::TailLossResolved {
                    lost: lost.clone(),
                    assumed: *assumed,
                })
                .await?;
            }
            // This record fences the run: from here on, the journal refuses the appends of
            // any earlier runner. Read the run again after it, so that nothing such a runner
            // wrote before the fence is missed.
            run.append(Entry::Resumed {
                holder: self.holder.clone(),
            })
            .await?;
            run.append(Entry::LeaseTaken {
                holder: self.holder.clone(),
                taken_over_from: lease.taken_over_from,
                epoch: lease.epoch,
            })
            .await?;
            run.state = State::from_records(&self.journal.records(run_id).await?);
            if run.state.description.is_none() {
                // A run journaled before journals described their plan: describe it now.
                run.append(Entry::PlanDescribed(Box::new(plan.describe())))
                    .await?;
            }
            if let Some((_, assumed)) = resolution {
                run.settle_lost_outcome(assumed).await?;
            }
            let report = run.drive().await;
            self.finish(plan, report).await
        }
        .instrument(span)
        .await;
        // What the run published of its progress reaches the journal before it returns.
        progress.finish().await;
        out
    }

    /// Apply, roll back, prove parity, then apply again: the rollback rehearsal for CI.
    ///
    /// # Errors
    /// As [`Executor::run`].
    pub async fn rehearse(&self, plan: &Plan) -> Result<Rehearsal> {
        let mut ex = self.clone();
        ex.policy.rehearsal = true;
        ex.policy.scope = RollbackScope::Plan;
        let rehearsal = ex.run(plan).await?;
        let run = if rehearsal.outcome == Outcome::RolledBack && rehearsal.parity_proven() {
            Some(self.run(plan).await?)
        } else {
            None
        };
        Ok(Rehearsal { rehearsal, run })
    }

    /// The report of a run, rebuilt from its journal.
    ///
    /// # Errors
    /// Journal errors; [`Error::UnknownRun`].
    pub async fn report(&self, plan: &Plan, run_id: &str) -> Result<RunReport> {
        let records = self.journal.records(run_id).await?;
        if records.is_empty() {
            return Err(Error::UnknownRun {
                run_id: run_id.into(),
            });
        }
        Ok(RunReport::from_records(plan, run_id, &records))
    }

    async fn finish(&self, plan: &Plan, report: Result<RunReport>) -> Result<RunReport> {
        let report = report?;
        if report.outcome != Outcome::InProgress {
            if let Err(e) = self.journal.release_lease(plan.name(), &self.holder).await {
                tracing::warn!(error = %e, "could not release lease (it will expire)");
            }
        }
        let _ = self.events.send(
            Event::new(
                report.run_id.clone(),
                RunEvent::RunFinished {
                    outcome: report.outcome.to_string(),
                },
            )
            .with_tenant(self.tenant.clone()),
        );
        tracing::info!(outcome = %report.outcome, "run finished");
        Ok(report)
    }
}
