//! Fleets: one migration over many tenants (schemas or databases), in waves, with
//! PostgreSQL as the control plane and a wave rolled back as a unit.
//!
//! A [`Fleet`] names its tenants (a list, or a SQL query run once when the fleet is
//! created), a plan factory (`Fn(&Tenant) -> Result<Plan>`: each tenant's own plan, named
//! after the tenant), its [`Wave`]s (a canary by count or percent, then percentages, then
//! the rest), a [`FailureBudget`] per wave (failed tenant runs, a failure rate) and an
//! optional aggregated [`WaveHealth`] check polled while the wave soaks, the per-worker
//! concurrency, and what happens to earlier waves when a later one breaches
//! ([`EarlierWaves`]).
//!
//! Any number of [`FleetWorker`]s, in any number of processes on any number of machines,
//! share the work through tables beside the [`PgJournal`](crate::PgJournal)
//! (`fleets`, `fleet_waves`, `fleet_tenants`, `fleet_decisions` in the `_rollback`
//! schema); the fleet's state is derived from those tables only:
//!
//! - **Claims.** A worker claims as many tenant runs as it has free slots with `FOR
//!   UPDATE SKIP LOCKED` and a lease decided by the core's lease rule
//!   ([`decide_lease`](rollback_core::journal::decide_lease)) on the server's clock, with
//!   a fencing epoch that grows with every claim; an outcome is written only while the
//!   claim's epoch is still the row's, in the statement that makes the worker's next
//!   claims (one commit for both). A worker killed mid-wave leaves claims that expire;
//!   another worker claims them (the takeover is recorded) and resumes each tenant run
//!   from its journal (run id `<fleet>/<tenant>`): rolled forward when it was applying,
//!   finished when it was rolling back. The tenant run itself runs under the executor's
//!   own lease and fencing on the tenant's plan.
//! - **Snapshots** of a wave's tenant runs are kept ([`SnapshotRetention::KeepAll`]) until
//!   the wave's verdict: released when it passes (or when the fleet ends, if earlier waves
//!   are to be rolled back with a later one).
//! - **Verdicts.** While a wave runs, its failed runs are counted against the budget;
//!   once every run of the wave has ended, the wave soaks and its [`WaveHealth`] is
//!   polled. A breach rolls back every tenant run of the wave, the committed ones with
//!   [`Executor::rollback_committed`](rollback_core::Executor::rollback_committed);
//!   tenants not started are never started, no later wave starts, and the decision is
//!   written in `fleet_decisions` with its evidence, in the transaction that changes the
//!   wave.
//!
//! [`FleetReport`] reads the tables back: per wave and per tenant outcome, RTO/RPO
//! distributions, the breach, the tenants that stayed migrated.
//!
//! [`SnapshotRetention::KeepAll`]: rollback_core::SnapshotRetention::KeepAll

mod decide;
mod health;
mod report;
mod tables;
mod worker;

pub use health::{TenantErrorRate, WaveHealth};
pub use report::{
    Distribution, FleetDecision, FleetReport, TenantOutcome, TenantReport, WaveReport,
};
pub use worker::FleetWorker;

use crate::db::Database;
use crate::ident::check_ident;
use rollback_core::{Error, Plan, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// One tenant: an id, and where its data lives (a schema or database name the plan
/// factory uses; never a connection string with credentials: it is stored in the control
/// tables and shown in reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// The tenant's id (unique in the fleet).
    pub id: String,
    /// Where its data lives, e.g. its schema.
    pub location: String,
}

impl Tenant {
    /// A tenant `id` living in `location`.
    pub fn new(id: impl Into<String>, location: impl Into<String>) -> Self {
        Tenant {
            id: id.into(),
            location: location.into(),
        }
    }
}

/// Where the fleet's tenants come from, read once when the fleet is created (in the
/// order given: the order waves take them in).
#[derive(Debug, Clone)]
pub enum TenantSource {
    /// These tenants.
    List(Vec<Tenant>),
    /// A query on the control database returning `(id text, location text)` rows. It
    /// runs in the library's session (`search_path = pg_catalog, pg_temp`): qualify the
    /// tables it reads with their schema.
    Query(String),
}

/// How many tenants a wave takes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSize {
    /// This many tenants.
    Count(usize),
    /// This percentage of the fleet's tenants (rounded up, at least one).
    Percent(f64),
    /// Every tenant left.
    Rest,
}

/// What a wave tolerates before it breaches.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FailureBudget {
    /// Failed tenant runs (rolled back by their own failure, or stopped in
    /// `rollback_failed`) the wave tolerates: one more breaches it.
    pub max_failed: usize,
    /// The largest fraction of failed runs among the wave's ended runs (checked once at
    /// least `min_ended` runs have ended), if any.
    pub max_failure_rate: Option<f64>,
    /// Ended runs needed before the rate is checked.
    pub min_ended: usize,
}

impl Default for FailureBudget {
    /// No failed run tolerated.
    fn default() -> Self {
        FailureBudget {
            max_failed: 0,
            max_failure_rate: None,
            min_ended: 1,
        }
    }
}

impl FailureBudget {
    /// Tolerate `n` failed tenant runs per wave.
    pub fn failed_runs(n: usize) -> Self {
        FailureBudget {
            max_failed: n,
            ..Self::default()
        }
    }
    /// Also breach when more than `rate` (0..=1) of the ended runs failed, once
    /// `min_ended` have ended.
    pub fn max_rate(mut self, rate: f64, min_ended: usize) -> Self {
        self.max_failure_rate = Some(rate);
        self.min_ended = min_ended.max(1);
        self
    }
}

/// One wave: its size, soak and budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    /// How many tenants.
    pub size: WaveSize,
    /// How long the wave soaks after its last run ended, its health polled, before the
    /// next wave starts.
    pub soak_ms: u64,
    /// The wave's budget (the fleet's, unless set).
    pub budget: Option<FailureBudget>,
}

impl Wave {
    /// A wave of `n` tenants (a canary by count).
    pub fn count(n: usize) -> Self {
        Wave {
            size: WaveSize::Count(n),
            soak_ms: 0,
            budget: None,
        }
    }
    /// A wave of `p` percent of the fleet.
    pub fn percent(p: f64) -> Self {
        Wave {
            size: WaveSize::Percent(p),
            soak_ms: 0,
            budget: None,
        }
    }
    /// The last wave: every tenant left.
    pub fn rest() -> Self {
        Wave {
            size: WaveSize::Rest,
            soak_ms: 0,
            budget: None,
        }
    }
    /// Soak this long after the wave's last run ended.
    pub fn soak(mut self, d: Duration) -> Self {
        self.soak_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self
    }
    /// This wave's own budget.
    pub fn budget(mut self, b: FailureBudget) -> Self {
        self.budget = Some(b);
        self
    }
}

/// What a breach of a later wave does to the waves that passed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlierWaves {
    /// They stay migrated; their snapshots are released as each passes.
    #[default]
    Keep,
    /// They are rolled back too; their snapshots are kept until the fleet ends.
    RollBack,
}

/// The part of a fleet every worker must agree on, stored with the fleet when it is
/// created: a worker built with another spec is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FleetSpec {
    pub(crate) waves: Vec<Wave>,
    pub(crate) budget: FailureBudget,
    pub(crate) earlier_waves: EarlierWaves,
    pub(crate) health: Option<String>,
    pub(crate) health_every_ms: u64,
}

/// The plan factory: a tenant's own plan.
pub type PlanFactory = Arc<dyn Fn(&Tenant) -> Result<Plan> + Send + Sync>;

/// A fleet: its tenants, plan factory, waves and budgets (see the [module docs](self)).
///
/// ```no_run
/// # async fn demo(control: rollback_postgres::Database, tenants: Vec<rollback_postgres::fleet::Tenant>) -> rollback_core::Result<()> {
/// use rollback_core::Plan;
/// use rollback_postgres::fleet::{FailureBudget, Fleet, Tenant, TenantSource, Wave};
/// use rollback_postgres::{SqlStep, Table, TableSnapshot};
/// use std::time::Duration;
///
/// let db = control.clone();
/// let fleet = Fleet::builder("add-tier", &control)
///     .tenants(TenantSource::List(tenants))
///     .plan(move |t: &Tenant| {
///         let table = Table::new(&t.location, "customers");
///         Plan::builder(format!("add-tier/{}", t.id))
///             .checkpoint("db", TableSnapshot::new(&db, table.clone()))
///             .step("db", SqlStep::new(&db, "tier", format!("UPDATE {} SET tier = 'basic'", table.quoted())).touches_table(&table), &[])
///             .build()
///             .map_err(Into::into)
///     })
///     .wave(Wave::count(5).soak(Duration::from_secs(60)))
///     .wave(Wave::percent(10.0).soak(Duration::from_secs(300)))
///     .wave(Wave::percent(50.0))
///     .wave(Wave::rest())
///     .budget(FailureBudget::failed_runs(0))
///     .build()?;
/// let report = fleet.worker("worker-a").run().await?;
/// println!("{}", report.to_markdown());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Fleet {
    pub(crate) inner: Arc<FleetInner>,
}

pub(crate) struct FleetInner {
    pub(crate) name: String,
    pub(crate) db: Database,
    pub(crate) schema: String,
    pub(crate) tenants: TenantSource,
    pub(crate) factory: PlanFactory,
    pub(crate) spec: FleetSpec,
    pub(crate) health: Option<Arc<dyn WaveHealth>>,
    pub(crate) concurrency: usize,
    pub(crate) claim_ttl: Duration,
    pub(crate) poll: Duration,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("name", &self.inner.name)
            .field("spec", &self.inner.spec)
            .field("concurrency", &self.inner.concurrency)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Start describing the fleet `name`, controlled from `control` (the database of the
    /// [`PgJournal`](crate::PgJournal) its tenant runs are journaled in).
    pub fn builder(name: impl Into<String>, control: &Database) -> FleetBuilder {
        FleetBuilder {
            name: name.into(),
            db: control.clone(),
            schema: crate::markers::DEFAULT_MARKER_SCHEMA.into(),
            tenants: None,
            factory: None,
            waves: Vec::new(),
            budget: FailureBudget::default(),
            earlier_waves: EarlierWaves::Keep,
            health: None,
            health_every: Duration::from_millis(250),
            concurrency: 2,
            claim_ttl: Duration::from_secs(10),
            poll: Duration::from_millis(100),
        }
    }

    /// The fleet's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A worker of this fleet, leasing its claims as `holder` (unique per worker).
    pub fn worker(&self, holder: impl Into<String>) -> FleetWorker {
        FleetWorker::new(self.clone(), holder.into())
    }

    /// The fleet's report, read from its tables.
    ///
    /// # Errors
    /// Backend errors; [`Error::Invalid`] when the fleet does not exist.
    pub async fn report(&self) -> Result<FleetReport> {
        FleetReport::load(&self.inner.db, &self.inner.schema, &self.inner.name).await
    }

    /// The run id of a tenant's run in the journal.
    pub fn run_id(&self, tenant: &str) -> String {
        format!("{}/{tenant}", self.inner.name)
    }
}

/// Builds a [`Fleet`].
pub struct FleetBuilder {
    name: String,
    db: Database,
    schema: String,
    tenants: Option<TenantSource>,
    factory: Option<PlanFactory>,
    waves: Vec<Wave>,
    budget: FailureBudget,
    earlier_waves: EarlierWaves,
    health: Option<Arc<dyn WaveHealth>>,
    health_every: Duration,
    concurrency: usize,
    claim_ttl: Duration,
    poll: Duration,
}

impl std::fmt::Debug for FleetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("name", &self.name)
            .field("waves", &self.waves)
            .finish_non_exhaustive()
    }
}

impl FleetBuilder {
    /// The tenants.
    pub fn tenants(mut self, source: TenantSource) -> Self {
        self.tenants = Some(source);
        self
    }
    /// The plan factory: each tenant's plan, whose name must contain the tenant's id
    /// (leases and the unfinished-run check are per plan name).
    pub fn plan(mut self, f: impl Fn(&Tenant) -> Result<Plan> + Send + Sync + 'static) -> Self {
        self.factory = Some(Arc::new(f));
        self
    }
    /// Add a wave (in order; the last one should be [`Wave::rest`], or tenants left over
    /// are never migrated — they are reported as such).
    pub fn wave(mut self, w: Wave) -> Self {
        self.waves.push(w);
        self
    }
    /// The budget of every wave without its own.
    pub fn budget(mut self, b: FailureBudget) -> Self {
        self.budget = b;
        self
    }
    /// What a breach does to the waves that passed before it.
    pub fn earlier_waves(mut self, p: EarlierWaves) -> Self {
        self.earlier_waves = p;
        self
    }
    /// The aggregated health check polled while a wave soaks (every `every`), and once
    /// more at the end of the soak: a failing verdict breaches the wave.
    pub fn health(mut self, h: impl WaveHealth + 'static, every: Duration) -> Self {
        self.health = Some(Arc::new(h));
        self.health_every = every;
        self
    }
    /// Tenant runs each worker runs at once (default 2).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// How long a worker's claim (and its tenant run's lease) lives without renewal
    /// (default 10 s): a killed worker's tenants are taken over after it.
    pub fn claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl;
        self
    }
    /// How often an idle worker looks for work and for a verdict (default 100 ms).
    pub fn poll(mut self, d: Duration) -> Self {
        self.poll = d;
        self
    }
    /// The schema of the control tables (default `_rollback`, beside the journal's).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Check and build.
    ///
    /// # Errors
    /// [`Error::Invalid`]: no tenants, no plan factory, no waves, a wave size of zero or
    /// a percentage outside (0, 100], `Rest` before the last wave, a failure rate outside
    /// [0, 1], a name with `/`, a bad schema name.
    pub fn build(self) -> Result<Fleet> {
        if self.name.is_empty() || self.name.contains('/') {
            return Err(Error::invalid(format!(
                "fleet name {:?} must be non-empty and contain no '/'",
                self.name
            )));
        }
        check_ident("control schema", &self.schema)?;
        let tenants = self
            .tenants
            .ok_or_else(|| Error::invalid("a fleet needs tenants (Fleet::builder().tenants)"))?;
        let factory = self.factory.ok_or_else(|| {
            Error::invalid("a fleet needs a plan factory (Fleet::builder().plan)")
        })?;
        if self.waves.is_empty() {
            return Err(Error::invalid("a fleet needs at least one wave"));
        }
        for (i, w) in self.waves.iter().enumerate() {
            match w.size {
                WaveSize::Count(0) => {
                    return Err(Error::invalid(format!("wave {} has no tenants", i + 1)))
                }
                WaveSize::Percent(p) if !(p > 0.0 && p <= 100.0) => {
                    return Err(Error::invalid(format!(
                        "wave {}: {p}% is not in (0, 100]",
                        i + 1
                    )))
                }
                WaveSize::Rest if i + 1 != self.waves.len() => {
                    return Err(Error::invalid(format!(
                        "wave {}: only the last wave takes the rest",
                        i + 1
                    )))
                }
                _ => {}
            }
            for b in w.budget.iter().chain(std::iter::once(&self.budget)) {
                if let Some(r) = b.max_failure_rate {
                    if !(0.0..=1.0).contains(&r) {
                        return Err(Error::invalid(format!("failure rate {r} is not in [0, 1]")));
                    }
                }
            }
        }
        if let TenantSource::List(list) = &tenants {
            let mut ids: Vec<&str> = list.iter().map(|t| t.id.as_str()).collect();
            ids.sort_unstable();
            if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
                return Err(Error::invalid(format!("tenant {} is listed twice", w[0])));
            }
        }
        let spec = FleetSpec {
            waves: self.waves,
            budget: self.budget,
            earlier_waves: self.earlier_waves,
            health: self.health.as_ref().map(|h| h.id().to_string()),
            health_every_ms: u64::try_from(self.health_every.as_millis()).unwrap_or(u64::MAX),
        };
        Ok(Fleet {
            inner: Arc::new(FleetInner {
                name: self.name,
                db: self.db,
                schema: self.schema,
                tenants,
                factory,
                spec,
                health: self.health,
                concurrency: self.concurrency,
                claim_ttl: self.claim_ttl,
                poll: self.poll,
            }),
        })
    }
}

/// Assign `n` tenants (in order) to waves: the wave index of each.
pub(crate) fn assign_waves(waves: &[Wave], n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    for (i, w) in waves.iter().enumerate() {
        let left = n - out.len();
        let take = match w.size {
            WaveSize::Count(c) => c,
            WaveSize::Percent(p) => ((n as f64) * p / 100.0).ceil().max(1.0) as usize,
            WaveSize::Rest => left,
        }
        .min(left);
        out.extend(std::iter::repeat_n(i + 1, take));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_take_their_share_in_order_and_the_rest_takes_what_is_left() {
        let waves = [
            Wave::count(5),
            Wave::percent(10.0),
            Wave::percent(50.0),
            Wave::rest(),
        ];
        let a = assign_waves(&waves, 200);
        let count = |w| a.iter().filter(|x| **x == w).count();
        assert_eq!((count(1), count(2), count(3), count(4)), (5, 20, 100, 75));
        // Small fleets: a percentage takes at least one, never more than is left.
        let b = assign_waves(&waves, 3);
        assert_eq!(b, vec![1, 1, 1]);
        let c = assign_waves(&[Wave::percent(1.0), Wave::count(2)], 10);
        assert_eq!(
            c,
            vec![1, 2, 2],
            "tenants beyond the last wave are left out"
        );
    }
}
