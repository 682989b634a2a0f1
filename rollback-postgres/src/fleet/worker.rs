//! [`FleetWorker`]: claims tenant runs and runs them, until the fleet has ended.

use super::report::TenantOutcome;
use super::tables::{self, Claim, Ended, Task};
use super::{decide, Fleet, FleetReport};
use crate::error::PgResultExt;
use crate::ident::quote_ident;
use crate::journal::PgJournal;
use futures::FutureExt;
use rollback_core::journal::Journal;
use rollback_core::{Error, Executor, Outcome, Result, ResumePolicy, RunReport, SnapshotRetention};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::{JoinError, JoinSet};
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

fn retry(status: &'static str, e: &Error) -> Ended {
    Ended {
        status,
        outcome: None,
        error: Some(e.to_string()),
        attempt_failed: true,
    }
}

/// Live claims of a worker (tenant → epoch), renewed together.
type Live = Arc<Mutex<BTreeMap<String, i64>>>;

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
        let live: Live = Arc::default();
        let stop = CancellationToken::new();
        let renewer = tokio::spawn(self.clone().renew_claims(live.clone(), stop.clone()));
        let _stop_renewing = stop.clone().drop_guard();
        // A task runs one claim, or a batch of snapshot releases one after another.
        let mut tasks: JoinSet<Vec<Ended>> = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, Vec<Claim>> = HashMap::new();
        let mut ended: Vec<(tokio::task::Id, std::result::Result<Vec<Ended>, JoinError>)> =
            Vec::new();
        let mut last_decision: Option<std::time::Instant> = None;
        loop {
            while let Some(res) = tasks.try_join_next_with_id() {
                ended.push(split(res));
            }
            // The ends of every task that has ended, written in one statement.
            let mut failed_now = false;
            let mut ends_to_write = Vec::new();
            if !ended.is_empty() {
                let mut ends = Vec::with_capacity(ended.len());
                for (id, res) in ended.drain(..) {
                    let Some(claims) = running.remove(&id) else {
                        continue;
                    };
                    match res {
                        Ok(es) => {
                            for (claim, e) in claims.into_iter().zip(es) {
                                failed_now |= matches!(e.status, "failed" | "rollback_failed");
                                ends.push((claim, e));
                            }
                        }
                        Err(e) => {
                            for claim in &claims {
                                forget(&mut lock(&live), claim);
                                tracing::error!(tenant = %claim.tenant.id, error = %e, "a tenant task ended abnormally; its claim will expire");
                            }
                        }
                    }
                }
                ends_to_write = ends;
            }
            let free = f.concurrency.saturating_sub(tasks.len());
            let mut short_of_work = false;
            if free > 0 || !ends_to_write.is_empty() {
                let claims = self
                    .end_and_claim(&ctl, &live, std::mem::take(&mut ends_to_write), free)
                    .await?;
                let (releases, work): (Vec<Claim>, Vec<Claim>) =
                    claims.into_iter().partition(|c| c.task == Task::Release);
                short_of_work = work.len() < free;
                let groups = work
                    .into_iter()
                    .map(|c| vec![c])
                    .chain((!releases.is_empty()).then_some(releases));
                for group in groups {
                    for claim in &group {
                        lock(&live).insert(claim.tenant.id.clone(), claim.epoch);
                    }
                    let (this, cs) = (self.clone(), group.clone());
                    let h = tasks.spawn(async move {
                        let mut out = Vec::with_capacity(cs.len());
                        for c in &cs {
                            out.push(this.execute(c).instrument(this.span(c)).await);
                        }
                        out
                    });
                    running.insert(h.id(), group);
                }
            }
            // Decide when short of work (a wave's end, the next wave), at once after this
            // worker recorded a failed run (the budget), and while busy at least every
            // `BUSY_DECISION_POLLS` polls: a failure recorded by a worker that died before
            // deciding breaches the wave then (a wave never passes before its budget is
            // checked, since it soaks only after a decision that checks it).
            let busy_every = f.poll.saturating_mul(BUSY_DECISION_POLLS);
            if short_of_work
                || failed_now
                || last_decision.is_none_or(|t| t.elapsed() >= busy_every)
            {
                last_decision = Some(std::time::Instant::now());
                let (status, decided) = decide::advance(&mut ctl, f, &self.holder).await?;
                if status != "running"
                    && tasks.is_empty()
                    && tables_open_claims(&ctl, self).await? == 0
                {
                    break;
                }
                if decided {
                    // The next decision, or new work, may be due at once.
                    continue;
                }
            }
            // Busy: until a task ends or the next decision is due; short of work: a poll.
            let wait = if short_of_work || tasks.is_empty() {
                f.poll
            } else {
                busy_every.saturating_sub(last_decision.map_or(busy_every, |t| t.elapsed()))
            };
            tokio::select! {
                res = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    if let Some(res) = res {
                        ended.push(split(res));
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        stop.cancel();
        let _ = renewer.await;
        self.fleet.report().await
    }

    /// Write the ends of claims (fenced by their epochs) and forget them, and claim up to
    /// `free` tenant runs, in one statement.
    async fn end_and_claim(
        &self,
        ctl: &tokio_postgres::Client,
        live: &Live,
        ends: Vec<(Claim, Ended)>,
        free: usize,
    ) -> Result<Vec<Claim>> {
        let f = &self.fleet.inner;
        {
            let mut l = lock(live);
            for (c, _) in &ends {
                forget(&mut l, c);
            }
        }
        let (written, claims) = tables::end_and_claim(ctl, f, &self.holder, &ends, free).await?;
        for (c, e) in &ends {
            if written.contains(&c.tenant.id) {
                tracing::info!(tenant = %c.tenant.id, status = e.status, error = ?e.error, "tenant task ended");
            } else {
                tracing::warn!(tenant = %c.tenant.id, "the claim was taken over before its end was written; the new holder decides");
            }
        }
        Ok(claims)
    }

    /// Extend this worker's live claims every third of the claim's TTL, in one statement,
    /// until `stop`; a claim taken over is forgotten (the tenant run's own lease fences
    /// this worker).
    async fn renew_claims(self, live: Live, stop: CancellationToken) {
        let f = &self.fleet.inner;
        let every = (f.claim_ttl / 3).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let claims: Vec<(String, i64)> =
                lock(&live).iter().map(|(t, e)| (t.clone(), *e)).collect();
            if claims.is_empty() {
                continue;
            }
            let renewed = match f.db.lib_client().await {
                Ok(c) => tables::renew(&c, f, &self.holder, &claims).await,
                Err(e) => Err(e),
            };
            match renewed {
                Ok(renewed) => {
                    let mut l = lock(&live);
                    for (t, e) in &claims {
                        if !renewed.contains(t) && l.get(t) == Some(e) {
                            tracing::warn!(tenant = %t, "the claim was taken over; the tenant run's own lease fences this worker");
                            l.remove(t);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing claims failed; retrying"),
            }
        }
    }

    /// The span of a claim's task.
    fn span(&self, claim: &Claim) -> tracing::Span {
        let span = tracing::info_span!(
            "fleet_task",
            fleet = %self.fleet.inner.name,
            tenant = %claim.tenant.id,
            run = %claim.run_id,
            wave = claim.wave,
            task = claim.task.as_str(),
            epoch = claim.epoch,
        );
        if let Some(prev) = &claim.taken_over_from {
            tracing::warn!(parent: &span, previous = %prev, "took over an expired claim");
        }
        span
    }

    /// Run one claim to its end: the end to write.
    async fn execute(&self, claim: &Claim) -> Ended {
        match std::panic::AssertUnwindSafe(self.work(claim))
            .catch_unwind()
            .await
        {
            Ok(e) => e,
            Err(_) => retry(
                status_of(claim.task),
                &Error::invalid("the tenant task panicked"),
            ),
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
            Err(e) => return retry(status_of(claim.task), &e),
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
                    Err(e) => retry("running", &e),
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
                    Err(e) => retry("rolling_back", &e),
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
                    Err(e) => retry("committed", &e),
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

/// While busy, a worker decides at least once in this many polls.
const BUSY_DECISION_POLLS: u32 = 10;

fn lock(live: &Live) -> std::sync::MutexGuard<'_, BTreeMap<String, i64>> {
    live.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stop renewing `claim` (and only it: a later claim of the same tenant stays live).
fn forget(live: &mut BTreeMap<String, i64>, claim: &Claim) {
    if live.get(&claim.tenant.id) == Some(&claim.epoch) {
        live.remove(&claim.tenant.id);
    }
}

fn split<T>(
    res: std::result::Result<(tokio::task::Id, T), JoinError>,
) -> (tokio::task::Id, std::result::Result<T, JoinError>) {
    match res {
        Ok((id, e)) => (id, Ok(e)),
        Err(e) => (e.id(), Err(e)),
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
        outcome: serde_json::to_string(&TenantOutcome::of(r)).ok(),
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
