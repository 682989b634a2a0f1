//! [`FleetWorker`]: claims tenant runs and runs them, until the fleet has ended.

use super::report::TenantOutcome;
use super::tables::{self, Claim, Task};
use super::{decide, Fleet, FleetReport};
use crate::error::PgResultExt;
use crate::ident::quote_ident;
use crate::journal::PgJournal;
use futures::FutureExt;
use rollback_core::journal::Journal;
use rollback_core::{Error, Executor, Outcome, Result, ResumePolicy, RunReport, SnapshotRetention};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// One worker of a [`Fleet`]: claims tenant runs (up to the fleet's concurrency at once),
/// runs, resumes, rolls back or releases them, and decides wave verdicts when it finds no
/// work, until the fleet is done or halted and no claim is left open. Start as many as you
/// like, in as many processes; each needs its own `holder`.
///
/// # Cancel safety
/// Dropping [`FleetWorker::run`] (or killing the process) leaves the worker's claims to
/// expire; other workers take them over and resume each tenant run from its journal.
#[derive(Clone)]
pub struct FleetWorker {
    fleet: Fleet,
    holder: String,
    journal: Arc<dyn Journal>,
    events: Option<tokio::sync::broadcast::Sender<rollback_core::events::Event>>,
}

impl std::fmt::Debug for FleetWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetWorker")
            .field("fleet", &self.fleet.inner.name)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

/// How a claim ended: the tenant's status to write, and what to write with it.
struct Ended {
    status: &'static str,
    outcome: Option<TenantOutcome>,
    error: Option<String>,
    attempt_failed: bool,
}

impl Ended {
    fn retry(status: &'static str, e: &Error) -> Self {
        Ended {
            status,
            outcome: None,
            error: Some(e.to_string()),
            attempt_failed: true,
        }
    }
}

impl FleetWorker {
    pub(crate) fn new(fleet: Fleet, holder: String) -> Self {
        let journal: Arc<dyn Journal> =
            Arc::new(PgJournal::new(&fleet.inner.db).schema(fleet.inner.schema.clone()));
        FleetWorker {
            fleet,
            holder,
            journal,
            events: None,
        }
    }

    /// Forward every event of this worker's tenant runs (each naming its run and tenant)
    /// to `events`.
    pub fn events(
        mut self,
        events: tokio::sync::broadcast::Sender<rollback_core::events::Event>,
    ) -> Self {
        self.events = Some(events);
        self
    }

    /// Journal the tenant runs in `journal` instead of the [`PgJournal`] on the control
    /// database (every worker of the fleet must use the same journal: a takeover resumes
    /// a tenant run from it).
    pub fn journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = journal;
        self
    }

    /// The holder id of this worker's claims and leases.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Work until the fleet has ended (done, or halted after a breach's rollback) and no
    /// claim is open; return the fleet's report.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the fleet exists with another spec; [`Error::Invalid`]
    /// for a fleet without tenants; backend errors of the control database. A tenant
    /// run's failure is never an error here: it is recorded and counted against the
    /// wave's budget.
    pub async fn run(&self) -> Result<FleetReport> {
        let f = &self.fleet.inner;
        let mut ctl = f.db.dedicated_lib().await?;
        tables::ensure(&ctl, &f.schema).await?;
        tables::create(&mut ctl, f).await?;
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut last_decision: Option<std::time::Instant> = None;
        loop {
            while let Some(res) = tasks.try_join_next() {
                if let Err(e) = res {
                    tracing::error!(error = %e, "a tenant task ended abnormally; its claim will expire");
                }
            }
            let mut idle = false;
            if tasks.len() < f.concurrency {
                idle = true;
                if let Some(claim) = tables::claim(&mut ctl, f, &self.holder).await? {
                    let span = tracing::info_span!(
                        "fleet_task",
                        fleet = %f.name,
                        tenant = %claim.tenant.id,
                        run = %claim.run_id,
                        wave = claim.wave,
                        task = claim.task.as_str(),
                        epoch = claim.epoch,
                    );
                    if let Some(prev) = &claim.taken_over_from {
                        tracing::warn!(parent: &span, previous = %prev, "took over an expired claim");
                    }
                    let this = self.clone();
                    tasks.spawn(async move { this.execute(claim).await }.instrument(span));
                    continue;
                }
            }
            // Decide when there is nothing to claim, and at least every poll while busy
            // (a breach of the budget is seen while runs go on).
            if idle || last_decision.is_none_or(|t| t.elapsed() >= f.poll) {
                last_decision = Some(std::time::Instant::now());
                let status = decide::advance(&mut ctl, f, &self.holder).await?;
                if status != "running"
                    && tasks.is_empty()
                    && tables_open_claims(&ctl, self).await? == 0
                {
                    break;
                }
            }
            tokio::select! {
                _ = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(f.poll) => {}
            }
        }
        self.fleet.report().await
    }

    /// Run one claim to its end and write the outcome (fenced by the claim's epoch).
    async fn execute(&self, claim: Claim) {
        let f = &self.fleet.inner;
        let stop = CancellationToken::new();
        let renewer = {
            let (this, claim, stop) = (self.clone(), claim.clone(), stop.clone());
            tokio::spawn(async move {
                let f = &this.fleet.inner;
                let every = (f.claim_ttl / 3).max(Duration::from_millis(10));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    let ok = match f.db.lib_client().await {
                        Ok(c) => tables::renew(&c, f, &this.holder, &claim, f.claim_ttl).await,
                        Err(e) => Err(e),
                    };
                    match ok {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("the claim was taken over; the tenant run's own lease fences this worker");
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing a claim failed; retrying"),
                    }
                }
            })
        };
        let ended = match std::panic::AssertUnwindSafe(self.work(&claim))
            .catch_unwind()
            .await
        {
            Ok(e) => e,
            Err(_) => Ended::retry(
                match claim.task {
                    Task::Forward => "running",
                    Task::RollBack => "rolling_back",
                    Task::Release => "committed",
                },
                &Error::invalid("the tenant task panicked"),
            ),
        };
        stop.cancel();
        let _ = renewer.await;
        let outcome = ended
            .outcome
            .as_ref()
            .and_then(|o| serde_json::to_string(o).ok());
        let written = match f.db.lib_client().await {
            Ok(c) => {
                tables::finish(
                    &c,
                    f,
                    &self.holder,
                    &claim,
                    ended.status,
                    outcome.as_deref(),
                    ended.error.as_deref(),
                    ended.attempt_failed,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match written {
            Ok(true) => {
                tracing::info!(status = ended.status, error = ?ended.error, "tenant task ended")
            }
            Ok(false) => tracing::warn!(
                "the claim was taken over before its end was written; the new holder decides"
            ),
            Err(e) => {
                tracing::error!(error = %e, "could not write the tenant's end; the claim will expire and be resumed")
            }
        }
    }

    fn executor(&self, tenant: &str) -> Executor {
        let f = &self.fleet.inner;
        let ex = Executor::with_journal(self.journal.clone())
            .holder(self.holder.clone())
            .tenant(tenant)
            .lease_ttl(f.claim_ttl)
            .retain_snapshots(SnapshotRetention::KeepAll);
        if let Some(tx) = &self.events {
            let mut rx = ex.subscribe();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(e) = rx.recv().await {
                    let _ = tx.send(e);
                }
            });
        }
        ex
    }

    async fn work(&self, claim: &Claim) -> Ended {
        let f = &self.fleet.inner;
        let tenant = &claim.tenant;
        let plan = match (f.factory)(tenant) {
            Ok(p) if p.name().contains(tenant.id.as_str()) => p,
            Ok(p) => {
                let e = Error::invalid(format!(
                    "the plan factory named tenant {}'s plan {:?}: a tenant's plan name must contain its id (leases are per plan name)",
                    tenant.id,
                    p.name()
                ));
                return Ended {
                    status: "failed",
                    outcome: None,
                    error: Some(e.to_string()),
                    attempt_failed: true,
                };
            }
            Err(e) => {
                return Ended {
                    status: "failed",
                    outcome: None,
                    error: Some(format!("the plan factory failed: {e}")),
                    attempt_failed: true,
                }
            }
        };
        let records = match self.journal.records(&claim.run_id).await {
            Ok(r) => r,
            Err(e) => return Ended::retry(status_of(claim.task), &e),
        };
        let ex = self.executor(&tenant.id);
        match claim.task {
            Task::Forward => {
                let res = if records.is_empty() {
                    ex.run_as(&plan, &claim.run_id, CancellationToken::new())
                        .await
                } else {
                    // A worker died with it: finish applying from the journal.
                    ex.on_resume(ResumePolicy::RollForward)
                        .resume(&plan, &claim.run_id)
                        .await
                };
                match res {
                    Ok(r) => match r.outcome {
                        Outcome::Committed => ended("committed", &r),
                        Outcome::RolledBack | Outcome::PartiallyRolledBack => {
                            let mut e = ended("failed", &r);
                            e.error = r.rollback_reason.clone();
                            e
                        }
                        Outcome::RollbackFailed => ended("rollback_failed", &r),
                        Outcome::InProgress => ended("running", &r),
                    },
                    // Never started after as many attempts: give up on it (counted as
                    // failed). A run that started is always finished from its journal.
                    Err(e) if records.is_empty() && claim.attempts + 1 >= MAX_START_ATTEMPTS => {
                        Ended {
                            status: "failed",
                            outcome: None,
                            error: Some(format!(
                                "could not start after {MAX_START_ATTEMPTS} attempts: {e}"
                            )),
                            attempt_failed: true,
                        }
                    }
                    Err(e) => Ended::retry("running", &e),
                }
            }
            Task::RollBack => {
                if records.is_empty() {
                    return Ended {
                        status: "cancelled",
                        outcome: None,
                        error: None,
                        attempt_failed: false,
                    };
                }
                let reason = self.breach_reason(claim.wave).await;
                let now = RunReport::from_records(&plan, &claim.run_id, &records);
                let res = match now.outcome {
                    Outcome::Committed => {
                        ex.rollback_committed(&plan, &claim.run_id, &reason).await
                    }
                    Outcome::InProgress | Outcome::RollbackFailed => {
                        ex.on_resume(ResumePolicy::RollBack)
                            .resume(&plan, &claim.run_id)
                            .await
                    }
                    Outcome::RolledBack | Outcome::PartiallyRolledBack => Ok(now),
                };
                match res {
                    Ok(r) if r.outcome == Outcome::RolledBack => ended("rolled_back", &r),
                    Ok(r) if r.outcome == Outcome::RollbackFailed => ended("rollback_failed", &r),
                    Ok(r) => ended("rolling_back", &r),
                    Err(e) => Ended::retry("rolling_back", &e),
                }
            }
            Task::Release => {
                let res = ex
                    .retain_snapshots(SnapshotRetention::Release)
                    .resume(&plan, &claim.run_id)
                    .await;
                match res {
                    Ok(r) if r.outcome == Outcome::Committed => ended("released", &r),
                    Ok(r) => ended("committed", &r),
                    Err(e) => Ended::retry("committed", &e),
                }
            }
        }
    }

    /// The recorded reason of the breach rolling `wave` back.
    async fn breach_reason(&self, wave: i32) -> String {
        let f = &self.fleet.inner;
        let s = quote_ident(&f.schema);
        let read = async {
            let c = f.db.lib_client().await?;
            let row = c
                .query_opt(
                    &format!(
                        "SELECT wave, evidence ->> 'reason' FROM {s}.fleet_decisions \
                         WHERE fleet = $1 AND decision = 'wave_breached' ORDER BY seq DESC LIMIT 1"
                    ),
                    &[&f.name],
                )
                .await
                .ctx("reading the breach")?;
            Ok::<_, Error>(row.map(|r| {
                let w: i32 = r.get(0);
                let reason: Option<String> = r.get(1);
                format!(
                    "fleet {} wave {w} breached: {}",
                    f.name,
                    reason.unwrap_or_default()
                )
            }))
        };
        match read.await {
            Ok(Some(r)) => r,
            _ => format!("fleet {} is rolling back wave {wave}", f.name),
        }
    }
}

/// Attempts to start a tenant run before it is counted as failed.
const MAX_START_ATTEMPTS: i32 = 5;

fn status_of(task: Task) -> &'static str {
    match task {
        Task::Forward => "running",
        Task::RollBack => "rolling_back",
        Task::Release => "committed",
    }
}

fn ended(status: &'static str, r: &RunReport) -> Ended {
    Ended {
        status,
        outcome: Some(TenantOutcome::of(r)),
        error: None,
        attempt_failed: false,
    }
}

/// Live claims of this fleet (expired ones are claimable, or have nothing left to do).
async fn tables_open_claims(c: &tokio_postgres::Client, w: &FleetWorker) -> Result<i64> {
    let f = &w.fleet.inner;
    let s = quote_ident(&f.schema);
    let row = c
        .query_one(
            &format!("SELECT count(*) FROM {s}.fleet_tenants WHERE fleet = $1 AND holder <> '' AND lease_expires_at_ms >= {}", tables::NOW_MS),
            &[&f.name],
        )
        .await
        .ctx("counting open claims")?;
    Ok(row.get(0))
}
