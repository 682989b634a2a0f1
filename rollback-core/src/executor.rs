//! The [`Executor`]: runs a [`Plan`] transactionally, journaled, with automatic rollback.

use crate::events::{Action, Event, Notice, NoticeKind, Notifier, RunEvent};
use crate::journal::{Entry, Journal, Record, TailAssumption};
use crate::lease::LeaseKeeper;
use crate::plan::{PlannedStep, StepOptions};
use crate::report::{Outcome, RunReport};
use crate::state::State;
use crate::{Context, Error, Plan, Receipt, Result, Reversibility, Snapshot, Verdict, Verifier};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("holder", &self.holder)
            .field("policy", &self.policy)
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
        let mut out = Vec::new();
        for run_id in self.journal.runs().await? {
            let records = self.journal.records(&run_id).await?;
            let same_plan = matches!(
                records.first(),
                Some(Record { entry: Entry::RunStarted { plan: name, .. }, .. }) if name == plan.name()
            );
            if same_plan && !State::from_records(&records).finished() {
                out.push(run_id);
            }
        }
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
        let progress = crate::live::publish(self.journal.clone(), self.events.subscribe(), run_id);
        let span =
            tracing::info_span!("run", run = %run_id, plan = %plan.name(), epoch = lease.epoch);
        let out = async {
            let mut run = Run::new(self, plan, run_id, cancel, false, keeper);
            run.append(Entry::RunStarted {
                plan: plan.name().into(),
                plan_digest: plan.digest(),
                holder: self.holder.clone(),
                policy: self.policy,
            })
            .await?;
            // The report of the run can then be rebuilt from its records alone.
            run.append(Entry::PlanDescribed(Box::new(plan.describe())))
                .await?;
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
        let progress = crate::live::publish(self.journal.clone(), self.events.subscribe(), run_id);
        let span =
            tracing::info_span!("resume", run = %run_id, plan = %plan.name(), epoch = lease.epoch);
        let out = async {
            let mut run = Run::new(self, plan, run_id, cancel, true, keeper);
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
        let _ = self.events.send(Event::new(
            report.run_id.clone(),
            RunEvent::RunFinished {
                outcome: report.outcome.to_string(),
            },
        ));
        tracing::info!(outcome = %report.outcome, "run finished");
        Ok(report)
    }
}

/// One run in progress.
struct Run<'a> {
    ex: &'a Executor,
    plan: &'a Plan,
    run_id: String,
    cancel: CancellationToken,
    resumed: bool,
    policy: RunPolicy,
    state: State,
    /// The lease this runner holds: its epoch goes with every append, and it is checked
    /// before every durable action.
    lease: Arc<LeaseKeeper>,
    /// Resume cursors: from the journal, plus those saved by steps in this process.
    cursors: Arc<std::sync::Mutex<BTreeMap<String, serde_json::Value>>>,
    /// A step's outcome waiting to be journaled in one write with the next record (see
    /// [`Run::defer`]).
    pending: Vec<Entry>,
}

enum Flow {
    Continue,
    RollBack {
        reason: String,
        failed_step: Option<String>,
    },
}

impl<'a> Run<'a> {
    fn new(
        ex: &'a Executor,
        plan: &'a Plan,
        run_id: &str,
        cancel: CancellationToken,
        resumed: bool,
        lease: Arc<LeaseKeeper>,
    ) -> Self {
        Run {
            ex,
            plan,
            run_id: run_id.into(),
            cancel,
            resumed,
            policy: ex.policy,
            state: State::default(),
            lease,
            cursors: Arc::default(),
            pending: Vec::new(),
        }
    }

    /// Journal `entry` under this runner's epoch. A refusal ([`Error::Fenced`]) stops the
    /// runner: the caller returns it at once.
    ///
    /// A deferred outcome ([`Run::defer`]) goes first, in the same durable write.
    async fn append(&mut self, entry: Entry) -> Result<()> {
        tracing::debug!(kind = entry.kind(), "journal");
        let epoch = self.lease.fence().epoch;
        let res = if self.pending.is_empty() {
            self.ex
                .journal
                .append(&self.run_id, &entry, epoch)
                .await
                .map(|r| vec![r])
        } else {
            let mut batch = std::mem::take(&mut self.pending);
            batch.push(entry);
            self.ex
                .journal
                .append_all(&self.run_id, &batch, epoch)
                .await
        };
        let recs = res.inspect_err(|e| {
            if matches!(e, Error::Fenced { .. }) {
                self.lease.mark_lost();
            }
        })?;
        for rec in &recs {
            self.state.fold(rec);
        }
        Ok(())
    }

    /// Journal `entry` — a step's outcome — together with the next record instead of on
    /// its own: one fsync per step instead of two. Safe because nothing acts on a resource
    /// between an outcome and the next record (every action is preceded by its own
    /// intent, which carries the outcome with it), and a crash in between is a crash
    /// during the apply: the step has an intent and no outcome, and is treated as maybe
    /// applied (step contract, clause 5). Until then the state does not show it:
    /// [`Run::flush`] before reading the state for a decision.
    fn defer(&mut self, entry: Entry) {
        self.pending.push(entry);
    }

    /// Journal a deferred outcome now.
    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let epoch = self.lease.fence().epoch;
        let batch = std::mem::take(&mut self.pending);
        let recs = self
            .ex
            .journal
            .append_all(&self.run_id, &batch, epoch)
            .await
            .inspect_err(|e| {
                if matches!(e, Error::Fenced { .. }) {
                    self.lease.mark_lost();
                }
            })?;
        for rec in &recs {
            self.state.fold(rec);
        }
        Ok(())
    }

    /// Immediately before a durable action: the lease must still be this runner's.
    async fn ensure_lease(&self) -> Result<()> {
        self.lease.ensure().await
    }

    /// The outcome of a trait call, with a panic turned into [`Error::Panicked`] and a
    /// fencing refusal pulled out as the outer error (the runner stops; nothing more is
    /// done or journaled).
    async fn call<T>(
        &self,
        operation: impl FnOnce() -> String,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<Result<T>> {
        let res = match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                let operation = operation();
                tracing::error!(%operation, %message, "caught a panic; treating it as a failure of the call");
                Err(Error::Panicked { operation, message })
            }
        };
        match res {
            Err(e @ Error::Fenced { .. }) => {
                self.lease.mark_lost();
                Err(e)
            }
            r => Ok(r),
        }
    }

    /// After an explicit assumption about a lost outcome: record that outcome again, or
    /// carry on from the surviving records.
    async fn settle_lost_outcome(&mut self, assumed: TailAssumption) -> Result<()> {
        match assumed {
            TailAssumption::Committed if !self.state.finished() => {
                self.append(Entry::Committed).await
            }
            TailAssumption::RolledBack if !self.state.finished() => {
                if self.state.rollback.is_none() {
                    let plan = self.plan;
                    self.append(Entry::RollbackStarted {
                        reason: "the journal lost the run's last records; assumed rolled back"
                            .into(),
                        steps: plan.steps().iter().map(|s| s.id().to_string()).collect(),
                        checkpoints: plan
                            .checkpoints()
                            .iter()
                            .map(|c| c.resource().to_string())
                            .collect(),
                    })
                    .await?;
                }
                let partial = self.state.applied.keys().any(|s| {
                    self.state
                        .rollback
                        .as_ref()
                        .is_some_and(|(_, scope, _)| !scope.contains(s))
                });
                self.append(Entry::RolledBack { partial }).await
            }
            _ => Ok(()),
        }
    }

    fn emit(&self, e: RunEvent) {
        let _ = self.ex.events.send(Event::new(self.run_id.clone(), e));
    }

    fn ctx(&self) -> Context {
        Context::for_run(
            &self.run_id,
            self.ex.events.clone(),
            self.cancel.clone(),
            self.ex.journal.clone(),
            Arc::new(self.state.baseline.clone()),
            self.cursors.clone(),
            self.lease.clone(),
        )
    }

    async fn drive(mut self) -> Result<RunReport> {
        *self.cursors.lock().unwrap_or_else(|e| e.into_inner()) = self.state.cursors.clone();
        self.emit(RunEvent::RunStarted {
            run_id: self.run_id.clone(),
            plan: self.plan.name().into(),
            resumed: self.resumed,
        });
        if self.state.rollback.is_none() && !self.state.finished() {
            let flow = if self.resumed && self.policy.on_resume == ResumePolicy::RollBack {
                Flow::RollBack {
                    reason: "resumed after an interruption; policy rolls back".into(),
                    failed_step: None,
                }
            } else {
                self.forward().await?
            };
            match flow {
                Flow::Continue => {
                    if self.policy.rehearsal {
                        self.begin_rollback(
                            "rehearsal: rolling back after a verified apply".into(),
                            None,
                        )
                        .await?;
                    } else {
                        self.append(Entry::Committed).await?;
                    }
                }
                Flow::RollBack {
                    reason,
                    failed_step,
                } => {
                    self.begin_rollback(reason, failed_step).await?;
                }
            }
        }
        if self.state.rollback.is_some() && !self.state.rolled_back {
            self.rollback().await?;
        }
        if self.state.discard_pending(self.policy.retention) {
            self.discard_snapshots().await?;
        }
        let records = self.ex.journal.records(&self.run_id).await?;
        Ok(RunReport::from_records(self.plan, &self.run_id, &records))
    }

    /// Preflight, baseline, apply, verify, soak.
    async fn forward(&mut self) -> Result<Flow> {
        let plan = self.plan;
        if !self.state.capture_started {
            for v in &plan.preconditions {
                let verdict = self.verify(v.as_ref(), "precondition").await?;
                if !verdict.passed() {
                    return Ok(Flow::RollBack {
                        reason: format!("precondition {} failed: {}", v.id(), verdict.summary),
                        failed_step: None,
                    });
                }
            }
        }
        for c in &plan.checkpoints {
            if self.state.baseline_fingerprint(c.resource()).is_some() {
                continue;
            }
            let resource = c.resource().to_string();
            if !plan.needs_snapshot(&resource) && !c.checkpoint.selective() {
                // No undo path restores it: its baseline fingerprint is enough for parity.
                if let Some(flow) = self.fingerprint_baseline(c).await? {
                    return Ok(flow);
                }
                continue;
            }
            self.append(Entry::CaptureIntent {
                checkpoint: resource.clone(),
            })
            .await?;
            self.ensure_lease().await?;
            let t = Instant::now();
            let span = tracing::info_span!("capture", resource = %resource);
            let ctx = self.ctx();
            let snap = self
                .call(
                    || format!("capture {resource}"),
                    c.checkpoint.capture(&ctx).instrument(span),
                )
                .await?;
            match snap {
                Ok(snapshot) => {
                    let ms = t.elapsed().as_millis() as u64;
                    if snapshot.resource != resource {
                        return Ok(Flow::RollBack {
                            reason: format!(
                                "checkpoint of {resource} captured a snapshot of {}",
                                snapshot.resource
                            ),
                            failed_step: None,
                        });
                    }
                    self.emit(RunEvent::CheckpointCaptured {
                        resource: resource.clone(),
                        digest: snapshot.digest.short(),
                        millis: ms,
                    });
                    self.append(Entry::Captured {
                        checkpoint: resource,
                        snapshot,
                        duration_ms: ms,
                    })
                    .await?;
                }
                Err(e) => {
                    return Ok(Flow::RollBack {
                        reason: format!("capturing {resource} failed: {e}"),
                        failed_step: None,
                    });
                }
            }
        }
        for ps in plan.steps() {
            if matches!(self.state.applied.get(ps.id()), Some(Some(_))) {
                continue;
            }
            if self.cancel.is_cancelled() {
                return Ok(Flow::RollBack {
                    reason: "cancelled".into(),
                    failed_step: None,
                });
            }
            if let Err(e) = self.apply_step(ps).await? {
                return Ok(Flow::RollBack {
                    reason: format!("step {} failed: {e}", ps.id()),
                    failed_step: Some(ps.id().into()),
                });
            }
            for (sid, v) in &plan.post_step {
                if sid == ps.id() {
                    let verdict = self.verify(v.as_ref(), &format!("after:{sid}")).await?;
                    if !verdict.passed() {
                        return Ok(Flow::RollBack {
                            reason: format!(
                                "verifier {} failed after {sid}: {}",
                                v.id(),
                                verdict.summary
                            ),
                            failed_step: Some(sid.clone()),
                        });
                    }
                }
            }
        }
        for v in &plan.finals {
            let verdict = self.verify(v.as_ref(), "final").await?;
            if !verdict.passed() {
                return Ok(Flow::RollBack {
                    reason: format!("final verifier {} failed: {}", v.id(), verdict.summary),
                    failed_step: None,
                });
            }
        }
        self.soak().await
    }

    /// Record the baseline fingerprint of a checkpoint no undo path restores (no snapshot
    /// is taken). `Some(flow)` when it could not be taken: the run rolls back.
    async fn fingerprint_baseline(
        &mut self,
        c: &crate::plan::PlannedCheckpoint,
    ) -> Result<Option<Flow>> {
        let resource = c.resource().to_string();
        let t = Instant::now();
        let span = tracing::info_span!("baseline", resource = %resource);
        let ctx = self.ctx();
        let fp = self
            .call(
                || format!("fingerprint {resource}"),
                c.checkpoint.fingerprint(&ctx).instrument(span),
            )
            .await?;
        match fp {
            Ok(fingerprint) => {
                let ms = t.elapsed().as_millis() as u64;
                tracing::info!(%resource, "baseline fingerprinted (no undo path restores it: no snapshot)");
                self.emit(RunEvent::CheckpointCaptured {
                    resource: resource.clone(),
                    digest: fingerprint.short(),
                    millis: ms,
                });
                self.append(Entry::Fingerprinted {
                    checkpoint: resource,
                    fingerprint,
                    duration_ms: ms,
                })
                .await?;
                Ok(None)
            }
            Err(e) => Ok(Some(Flow::RollBack {
                reason: format!("fingerprinting {resource} failed: {e}"),
                failed_step: None,
            })),
        }
    }

    /// Outer error: the journal failed (stop at once). Inner: the step failed.
    async fn apply_step(&mut self, ps: &PlannedStep) -> Result<Result<()>> {
        let id = ps.id().to_string();
        let span = tracing::info_span!("apply", step = %id, component = %ps.component);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.append(Entry::ApplyIntent {
                step: id.clone(),
                attempt,
            })
            .await?;
            self.emit(RunEvent::StepStarted {
                step: id.clone(),
                action: Action::Apply,
                attempt,
                reversibility: ps.step.reversibility(),
            });
            self.ensure_lease().await?;
            let ctx = self.ctx().with_step(&id);
            let t = Instant::now();
            let res = self
                .call(
                    || format!("apply {id}"),
                    with_timeout(ps.options, &id, ps.step.apply(&ctx)).instrument(span.clone()),
                )
                .await?;
            let ms = t.elapsed().as_millis() as u64;
            match res {
                Ok(receipt) => {
                    self.defer(Entry::Applied {
                        step: id.clone(),
                        receipt,
                        duration_ms: ms,
                    });
                    self.emit(RunEvent::StepFinished {
                        step: id,
                        action: Action::Apply,
                        ok: true,
                        millis: ms,
                        error: None,
                    });
                    return Ok(Ok(()));
                }
                Err(e) => {
                    tracing::warn!(parent: &span, error = %e, attempt, "apply failed");
                    self.append(Entry::ApplyFailed {
                        step: id.clone(),
                        attempt,
                        error: e.to_string(),
                        maybe_applied: e.maybe_applied(),
                        transient: e.is_transient(),
                    })
                    .await?;
                    self.emit(RunEvent::StepFinished {
                        step: id.clone(),
                        action: Action::Apply,
                        ok: false,
                        millis: ms,
                        error: Some(e.to_string()),
                    });
                    if e.is_transient()
                        && attempt <= ps.options.retries
                        && !self.cancel.is_cancelled()
                    {
                        tokio::time::sleep(backoff(ps.options, attempt)).await;
                        continue;
                    }
                    return Ok(Err(e));
                }
            }
        }
    }

    async fn verify(&mut self, v: &dyn Verifier, phase: &str) -> Result<Verdict> {
        let ctx = self.ctx();
        let span = tracing::info_span!("verify", verifier = %v.id(), phase);
        let mut attempt = 0;
        let verdict = loop {
            attempt += 1;
            let res = self
                .call(
                    || format!("verifier {}", v.id()),
                    v.verify(&ctx).instrument(span.clone()),
                )
                .await?;
            match res {
                Ok(verdict) => break verdict,
                Err(e) if e.is_transient() && attempt < 3 => {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => break Verdict::inconclusive(format!("verifier could not run: {e}")),
            }
        };
        tracing::info!(parent: &span, status = ?verdict.status, summary = %verdict.summary, "verdict");
        self.emit(RunEvent::Verdict {
            verifier: v.id().into(),
            phase: phase.into(),
            status: verdict.status,
            summary: verdict.summary.clone(),
        });
        self.append(Entry::Verdict {
            verifier: v.id().into(),
            phase: phase.into(),
            verdict: verdict.clone(),
        })
        .await?;
        Ok(verdict)
    }

    async fn soak(&mut self) -> Result<Flow> {
        let plan = self.plan;
        if plan.triggers.is_empty() {
            if !plan.soak.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(plan.soak) => {}
                    _ = self.cancel.cancelled() => {
                        return Ok(Flow::RollBack { reason: "cancelled during soak".into(), failed_step: None });
                    }
                }
            }
            return Ok(Flow::Continue);
        }
        let start = Instant::now();
        let mut windows: Vec<VecDeque<bool>> = vec![VecDeque::new(); plan.triggers.len()];
        let mut next: Vec<Instant> = vec![start; plan.triggers.len()];
        loop {
            for (i, t) in plan.triggers.iter().enumerate() {
                if Instant::now() < next[i] {
                    continue;
                }
                next[i] = Instant::now() + t.every;
                let verdict = self.verify(t.verifier.as_ref(), "soak").await?;
                let failed = !verdict.passed()
                    || matches!((verdict.value, t.max_value), (Some(v), Some(m)) if v > m);
                let w = &mut windows[i];
                w.push_back(failed);
                while w.len() > t.window {
                    w.pop_front();
                }
                let failures = w.iter().filter(|f| **f).count();
                let breached = failures >= t.max_failures;
                self.emit(RunEvent::SoakPoll {
                    trigger: t.id().into(),
                    failures_in_window: failures,
                    breached,
                });
                if breached {
                    return Ok(Flow::RollBack {
                        reason: format!(
                            "trigger {} breached: {failures} of the last {} polls failed ({})",
                            t.id(),
                            w.len(),
                            verdict.summary
                        ),
                        failed_step: None,
                    });
                }
            }
            if start.elapsed() >= plan.soak {
                return Ok(Flow::Continue);
            }
            let wake = next.iter().min().copied().unwrap_or_else(Instant::now);
            let deadline = start + plan.soak;
            tokio::select! {
                _ = tokio::time::sleep_until(wake.min(deadline).into()) => {}
                _ = self.cancel.cancelled() => {
                    return Ok(Flow::RollBack { reason: "cancelled during soak".into(), failed_step: None });
                }
            }
        }
    }

    async fn begin_rollback(&mut self, reason: String, failed_step: Option<String>) -> Result<()> {
        // The scope is decided from the state: it must show every applied step.
        self.flush().await?;
        let plan = self.plan;
        let all: BTreeSet<String> = plan.steps().iter().map(|s| s.id().to_string()).collect();
        let (steps, checkpoints) = match (&failed_step, self.policy.scope) {
            (Some(f), RollbackScope::Component) => {
                let scope = plan.component_scope(f);
                // A resource also changed by a kept (applied, out-of-scope) step cannot be
                // restored without undoing that step: leave it to compensations.
                let kept: BTreeSet<String> = plan
                    .steps()
                    .iter()
                    .filter(|s| !scope.contains(s.id()) && self.state.applied.contains_key(s.id()))
                    .flat_map(|s| s.step.touches())
                    .collect();
                let cps = plan
                    .checkpoints_for(&scope)
                    .into_iter()
                    .filter(|c| !kept.contains(c))
                    .collect();
                (scope, cps)
            }
            _ => (
                all,
                plan.checkpoints()
                    .iter()
                    .map(|c| c.resource().to_string())
                    .collect(),
            ),
        };
        let steps: Vec<String> = plan
            .steps()
            .iter()
            .map(|s| s.id().to_string())
            .filter(|s| steps.contains(s))
            .collect();
        tracing::warn!(%reason, ?steps, "rollback started");
        self.emit(RunEvent::RollbackStarted {
            reason: reason.clone(),
            steps: steps.clone(),
        });
        self.append(Entry::RollbackStarted {
            reason: reason.clone(),
            steps,
            checkpoints,
        })
        .await?;
        self.notify(NoticeKind::RollbackStarted, &reason).await;
        Ok(())
    }

    async fn notify(&self, kind: NoticeKind, detail: &str) {
        let Some(n) = &self.ex.notifier else { return };
        // Every claim of the message comes from what the plan can keep (at the start) or
        // what the rollback did (at the end), read back from the journal.
        let report = match self.ex.journal.records(&self.run_id).await {
            Ok(records) => RunReport::from_records(self.plan, &self.run_id, &records),
            Err(e) => {
                tracing::warn!(error = %e, "notifier: could not read the run back; not notifying");
                return;
            }
        };
        let facts = crate::report::NoticeFacts::of(kind, self.plan, &self.state, &report);
        let components: BTreeSet<String> = self
            .state
            .rollback
            .as_ref()
            .map(|(_, steps, _)| {
                steps
                    .iter()
                    .filter_map(|s| self.plan.step(s))
                    .map(|s| s.component.clone())
                    .collect()
            })
            .unwrap_or_default();
        let components: Vec<String> = components.into_iter().collect();
        let message =
            crate::report::status_message(kind, self.plan.name(), &components, detail, &facts);
        let notice = Notice {
            kind,
            run_id: self.run_id.clone(),
            plan: self.plan.name().into(),
            components,
            message,
            owners: self.plan.owners().clone(),
            may_discard: facts.may_discard.iter().map(|(r, _)| r.clone()).collect(),
            items_discarded: facts.items_discarded,
        };
        if let Err(e) = n.notify(&notice).await {
            tracing::warn!(error = %e, "notifier failed; rollback goes on");
        }
    }

    /// Revert applied steps in scope (reverse order), restore checkpoints, prove parity.
    async fn rollback(&mut self) -> Result<()> {
        let plan = self.plan;
        let (_, steps, checkpoints) = self.state.rollback.clone().unwrap_or_default();
        let scope: BTreeSet<&String> = steps.iter().collect();
        for ps in plan.steps().iter().rev() {
            let id = ps.id().to_string();
            if !scope.contains(&id)
                || !self.state.applied.contains_key(&id)
                || self.state.reverted.contains(&id)
            {
                continue;
            }
            if ps.step.reversibility() != Reversibility::Compensable {
                // Undone by the revert of the steps that created what it wrote, by
                // restoring its checkpoints, or approved to stay.
                continue;
            }
            let receipt = self.state.applied.get(&id).cloned().flatten();
            if let Err(e) = self.revert_step(ps, receipt.as_ref()).await? {
                // A snapshot of everything it touches is the fallback (restored below).
                let touches = ps.step.touches();
                if !touches.is_empty()
                    && touches.iter().all(|t| self.state.baseline.contains_key(t))
                {
                    tracing::warn!(step = %id, error = %e, "revert failed; its checkpoints will restore it");
                    continue;
                }
                let remaining = self.remaining(&steps, &checkpoints);
                return self
                    .rollback_failed(remaining, format!("reverting {id} failed: {e}"))
                    .await;
            }
        }
        // Compensation first: a snapshot is restored only for what no compensation undoes
        // (its restore discards everyone's writes since capture), or when the checkpoint
        // undoes the run's own writes only. Restores go first: one may put back what
        // another checkpoint covers too (a table restore brings back a dropped column its
        // schema checkpoint sees), and only then are the others compared.
        for restoring in [true, false] {
            for resource in &checkpoints {
                if self.state.parity.get(resource) == Some(&true)
                    || self.state.not_restored.contains(resource)
                {
                    continue;
                }
                let Some(pc) = plan.checkpoints().iter().find(|c| c.resource() == resource) else {
                    continue;
                };
                let Some(expected) = self.state.baseline_fingerprint(resource) else {
                    continue; // never captured: nothing was applied after it
                };
                let snapshot = self.state.baseline.get(resource).cloned();
                let restore = snapshot.is_some()
                    && (self.state.restore_needed(plan, &scope, resource)
                        || pc.checkpoint.selective());
                if restore != restoring {
                    continue;
                }
                let res = match snapshot {
                    Some(snapshot) if restore => {
                        self.restore_checkpoint(pc.checkpoint.as_ref(), &snapshot)
                            .await?
                    }
                    _ => {
                        self.check_unrestored(pc.checkpoint.as_ref(), expected)
                            .await?
                    }
                };
                if let Err(e) = res {
                    let remaining = self.remaining(&steps, &checkpoints);
                    return self
                        .rollback_failed(remaining, format!("restoring {resource} failed: {e}"))
                        .await;
                }
            }
        }
        // Partial only when something applied stays applied outside the scope.
        let kept: BTreeSet<&String> = self
            .state
            .applied
            .keys()
            .filter(|s| !scope.contains(s))
            .collect();
        let partial = !kept.is_empty();
        // Prove the kept part too: re-run the post-step verifiers of kept steps.
        let kept_verifiers: Vec<(String, Arc<dyn Verifier>)> = plan
            .post_step
            .iter()
            .filter(|(sid, _)| kept.contains(sid))
            .cloned()
            .collect();
        for (sid, v) in kept_verifiers {
            self.verify(v.as_ref(), &format!("kept:{sid}")).await?;
        }
        self.append(Entry::RolledBack { partial }).await?;
        self.notify(
            NoticeKind::RollbackFinished,
            if partial {
                "partial rollback"
            } else {
                "full rollback"
            },
        )
        .await;
        Ok(())
    }

    /// Release every captured snapshot of a finished run, in plan order, each once.
    async fn discard_snapshots(&mut self) -> Result<()> {
        let plan = self.plan;
        for pc in plan.checkpoints() {
            let resource = pc.resource().to_string();
            if !self.state.to_release(&resource, self.policy.retention) {
                continue;
            }
            let Some(snapshot) = self.state.baseline.get(&resource).cloned() else {
                continue;
            };
            self.ensure_lease().await?;
            let span = tracing::info_span!("discard", resource = %resource);
            let ctx = self.ctx();
            let res = self
                .call(
                    || format!("discard {resource}"),
                    pc.checkpoint.discard(&snapshot, &ctx).instrument(span),
                )
                .await?;
            let error = match res {
                Ok(()) => {
                    tracing::info!(%resource, snapshot = %snapshot.id, "snapshot discarded");
                    None
                }
                Err(e) => {
                    tracing::warn!(%resource, snapshot = %snapshot.id, error = %e, "discarding the snapshot failed; it is left in place");
                    Some(e.to_string())
                }
            };
            self.emit(RunEvent::SnapshotDiscarded {
                resource: resource.clone(),
                ok: error.is_none(),
            });
            self.append(Entry::Discarded {
                checkpoint: resource,
                error,
            })
            .await?;
        }
        Ok(())
    }

    fn remaining(&self, steps: &[String], checkpoints: &[String]) -> Vec<String> {
        let mut out: Vec<String> = steps
            .iter()
            .filter(|s| {
                self.state.applied.contains_key(*s)
                    && !self.state.reverted.contains(*s)
                    && self
                        .plan
                        .step(s)
                        .is_some_and(|p| p.step.reversibility() == Reversibility::Compensable)
            })
            .map(|s| format!("step {s}: not reverted"))
            .collect();
        out.extend(
            checkpoints
                .iter()
                .filter(|c| {
                    self.state.parity.get(*c) != Some(&true) && self.state.baseline.contains_key(*c)
                })
                .map(|c| format!("checkpoint {c}: parity with baseline not proven")),
        );
        out
    }

    async fn rollback_failed(&mut self, remaining: Vec<String>, error: String) -> Result<()> {
        tracing::error!(%error, ?remaining, "rollback failed");
        self.append(Entry::RollbackFailed {
            remaining,
            error: error.clone(),
        })
        .await?;
        self.notify(NoticeKind::RollbackFailed, &error).await;
        Ok(())
    }

    /// Outer error: the journal failed. Inner: the revert failed after its retries.
    async fn revert_step(
        &mut self,
        ps: &PlannedStep,
        receipt: Option<&Receipt>,
    ) -> Result<Result<()>> {
        let id = ps.id().to_string();
        let span = tracing::info_span!("revert", step = %id);
        let opts = StepOptions {
            retries: self.ex.rollback_retries,
            ..ps.options
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.append(Entry::RevertIntent {
                step: id.clone(),
                attempt,
            })
            .await?;
            self.emit(RunEvent::StepStarted {
                step: id.clone(),
                action: Action::Revert,
                attempt,
                reversibility: ps.step.reversibility(),
            });
            self.ensure_lease().await?;
            let ctx = self.ctx().with_step(&id);
            let t = Instant::now();
            let res = self
                .call(
                    || format!("revert {id}"),
                    with_timeout(opts, &id, ps.step.revert(receipt, &ctx)).instrument(span.clone()),
                )
                .await?;
            let ms = t.elapsed().as_millis() as u64;
            match res {
                Ok(()) => {
                    self.append(Entry::Reverted {
                        step: id.clone(),
                        duration_ms: ms,
                    })
                    .await?;
                    self.emit(RunEvent::StepFinished {
                        step: id,
                        action: Action::Revert,
                        ok: true,
                        millis: ms,
                        error: None,
                    });
                    return Ok(Ok(()));
                }
                Err(e) => {
                    tracing::warn!(parent: &span, error = %e, attempt, "revert failed");
                    self.append(Entry::RevertFailed {
                        step: id.clone(),
                        attempt,
                        error: e.to_string(),
                    })
                    .await?;
                    self.emit(RunEvent::StepFinished {
                        step: id.clone(),
                        action: Action::Revert,
                        ok: false,
                        millis: ms,
                        error: Some(e.to_string()),
                    });
                    // During rollback every error that is not a refusal is worth retrying.
                    let retryable =
                        !matches!(e, Error::Irreversible { .. } | Error::Invalid { .. });
                    if retryable && attempt <= opts.retries {
                        tokio::time::sleep(backoff(opts, attempt)).await;
                        continue;
                    }
                    return Ok(Err(e));
                }
            }
        }
    }

    /// A checkpoint the compensations alone were to bring back: compare it with its
    /// baseline, and leave it as it is when it differs (journaled `not_restored`: parity not
    /// proven, nothing discarded). Outer error: the journal failed. Inner: the fingerprint
    /// could not be taken.
    async fn check_unrestored(
        &mut self,
        cp: &dyn crate::Checkpoint,
        expected: crate::Digest,
    ) -> Result<Result<()>> {
        let resource = cp.resource().to_string();
        let ctx = self.ctx();
        let span = tracing::info_span!("parity", resource = %resource);
        let actual = match self
            .call(
                || format!("fingerprint {resource}"),
                cp.fingerprint(&ctx).instrument(span),
            )
            .await?
        {
            Ok(fp) => fp,
            Err(e) => return Ok(Err(e)),
        };
        let ok = actual == expected;
        self.emit(RunEvent::Parity {
            resource: resource.clone(),
            ok,
        });
        self.append(Entry::Parity {
            checkpoint: resource.clone(),
            expected,
            actual,
        })
        .await?;
        if !ok {
            tracing::warn!(%resource, "differs from its baseline after the compensations; not restored (a restore would discard writes made since capture)");
            self.append(Entry::NotRestored {
                checkpoint: resource,
                reason: "differs from its baseline after every change of the run was compensated: not restored, so that writes made since capture are kept (parity not proven)".into(),
            })
            .await?;
        }
        Ok(Ok(()))
    }

    /// Restore `cp` if it differs from its baseline, then prove parity.
    /// Outer error: the journal failed. Inner: restore or parity failed after retries.
    async fn restore_checkpoint(
        &mut self,
        cp: &dyn crate::Checkpoint,
        snapshot: &Snapshot,
    ) -> Result<Result<()>> {
        let resource = cp.resource().to_string();
        let ctx = self.ctx();
        let span = tracing::info_span!("restore", resource = %resource);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let fingerprint = self
                .call(
                    || format!("fingerprint {resource}"),
                    cp.fingerprint(&ctx).instrument(span.clone()),
                )
                .await?;
            let err = match fingerprint {
                Err(e) => e,
                Ok(fp) => {
                    let mut restore_err = None;
                    let mut proof: Option<crate::Proof> = None;
                    if fp != snapshot.fingerprint {
                        self.append(Entry::RestoreIntent {
                            checkpoint: resource.clone(),
                        })
                        .await?;
                        self.ensure_lease().await?;
                        let t = Instant::now();
                        let restored = self
                            .call(
                                || format!("restore {resource}"),
                                cp.restore(snapshot, &ctx).instrument(span.clone()),
                            )
                            .await?;
                        match restored {
                            Ok(how) => {
                                let ms = t.elapsed().as_millis() as u64;
                                self.emit(RunEvent::CheckpointRestored {
                                    resource: resource.clone(),
                                    method: how.method.clone(),
                                    millis: ms,
                                });
                                proof = how.proof.clone();
                                self.append(Entry::Restored {
                                    checkpoint: resource.clone(),
                                    method: how.method,
                                    items_changed: how.items_changed,
                                    duration_ms: ms,
                                    discarded: how.discarded,
                                    proof: how.proof,
                                })
                                .await?;
                            }
                            Err(e) => restore_err = Some(e),
                        }
                    }
                    let after = match (restore_err, proof) {
                        (Some(e), _) => Err(e),
                        // Taken under the restore's own lock: no writer could race it.
                        (None, Some(p)) => Ok(p.fingerprint),
                        (None, None) => {
                            self.call(
                                || format!("fingerprint {resource}"),
                                cp.fingerprint(&ctx).instrument(span.clone()),
                            )
                            .await?
                        }
                    };
                    match after {
                        Err(e) => e,
                        Ok(actual) => {
                            let ok = actual == snapshot.fingerprint;
                            self.emit(RunEvent::Parity {
                                resource: resource.clone(),
                                ok,
                            });
                            self.append(Entry::Parity {
                                checkpoint: resource.clone(),
                                expected: snapshot.fingerprint,
                                actual,
                            })
                            .await?;
                            if ok {
                                return Ok(Ok(()));
                            }
                            Error::conflict(format!(
                                    "{resource} differs from its baseline after restore (fingerprint {} != {})",
                                    actual.short(),
                                    snapshot.fingerprint.short()
                                ))
                        }
                    }
                }
            };
            tracing::warn!(parent: &span, error = %err, attempt, "restore failed");
            self.append(Entry::RestoreFailed {
                checkpoint: resource.clone(),
                error: err.to_string(),
            })
            .await?;
            let refused = matches!(
                err,
                Error::DigestMismatch { .. } | Error::WrongResource { .. } | Error::Invalid { .. }
            );
            if refused || attempt > self.ex.rollback_retries {
                return Ok(Err(err));
            }
            tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(6))).await;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

fn backoff(opts: StepOptions, attempt: u32) -> Duration {
    opts.backoff.saturating_mul(1u32 << (attempt - 1).min(10))
}

async fn with_timeout<T>(
    opts: StepOptions,
    what: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match opts.timeout {
        None => fut.await,
        Some(after) => match tokio::time::timeout(after, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation: what.to_string(),
                after,
            }),
        },
    }
}
