//! The fleet's control tables and the only SQL that writes them outside a verdict: the
//! fleet's creation, claims (with `FOR UPDATE SKIP LOCKED` and the core's lease rule),
//! renewals and outcomes (fenced by the claim's epoch).

use super::{assign_waves, FleetInner, FleetSpec, Tenant, TenantSource};
use crate::error::PgResultExt;
use crate::ident::quote_ident;
use rollback_core::journal::{decide_lease, Lease};
use rollback_core::{Error, Result};
use std::time::Duration;
use tokio_postgres::types::Type;

/// The server's clock in ms, as SQL.
pub(crate) const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Create the control tables if absent.
pub(crate) async fn ensure(c: &tokio_postgres::Client, schema: &str) -> Result<()> {
    let s = quote_ident(schema);
    let ddl = format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; \
         CREATE TABLE IF NOT EXISTS {s}.fleets ( \
            fleet text PRIMARY KEY, spec jsonb NOT NULL, status text NOT NULL DEFAULT 'running', \
            created_at_ms bigint NOT NULL, finished_at_ms bigint); \
         CREATE TABLE IF NOT EXISTS {s}.fleet_waves ( \
            fleet text NOT NULL REFERENCES {s}.fleets ON DELETE CASCADE, wave int NOT NULL, \
            status text NOT NULL DEFAULT 'pending', tenants int NOT NULL, \
            started_at_ms bigint, ended_at_ms bigint, soak_until_ms bigint, decided_at_ms bigint, \
            health_checked_at_ms bigint, PRIMARY KEY (fleet, wave)); \
         CREATE TABLE IF NOT EXISTS {s}.fleet_tenants ( \
            fleet text NOT NULL REFERENCES {s}.fleets ON DELETE CASCADE, tenant text NOT NULL, \
            location text NOT NULL, wave int NOT NULL, ordinal int NOT NULL, \
            status text NOT NULL DEFAULT 'pending', run_id text NOT NULL, \
            holder text NOT NULL DEFAULT '', lease_expires_at_ms bigint NOT NULL DEFAULT 0, \
            epoch bigint NOT NULL DEFAULT 0, taken_over_from text, claims int NOT NULL DEFAULT 0, \
            takeovers int NOT NULL DEFAULT 0, attempts int NOT NULL DEFAULT 0, \
            outcome jsonb, error text, updated_at_ms bigint, \
            PRIMARY KEY (fleet, tenant)); \
         CREATE INDEX IF NOT EXISTS fleet_tenants_work ON {s}.fleet_tenants (fleet, wave, status, ordinal); \
         CREATE TABLE IF NOT EXISTS {s}.fleet_decisions ( \
            fleet text NOT NULL REFERENCES {s}.fleets ON DELETE CASCADE, seq int NOT NULL, \
            at_ms bigint NOT NULL, wave int NOT NULL, decision text NOT NULL, holder text NOT NULL, \
            evidence jsonb NOT NULL, PRIMARY KEY (fleet, seq));"
    );
    // Serialized between workers creating the tables at once; a race with another
    // creator of the schema (the journal's) is retried.
    let sql = format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('rollback-fleet-ddl', 0)); {ddl} COMMIT;"
    );
    for attempt in 0..3 {
        match c.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e)
                if attempt < 2
                    && matches!(
                        e.code().map(|c| c.code()),
                        Some("23505") | Some("42P06") | Some("42P07")
                    ) =>
            {
                let _ = c.batch_execute("ROLLBACK").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(e).ctx("creating the fleet tables");
            }
        }
    }
    Ok(())
}

/// Create the fleet (tenants read and assigned to waves) unless it exists; refuse a fleet
/// of the same name with another spec.
pub(crate) async fn create(c: &mut tokio_postgres::Client, f: &FleetInner) -> Result<()> {
    let s = quote_ident(&f.schema);
    let spec = serde_json::to_value(&f.spec)
        .map_err(|e| Error::invalid(format!("encoding the fleet spec: {e}")))?;
    let tx = c.transaction().await.ctx("fleet creation")?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('rollback-fleet:' || $1, 0))",
        &[&f.name],
    )
    .await
    .ctx("locking the fleet")?;
    let existing = tx
        .query_opt(
            &format!("SELECT spec::text FROM {s}.fleets WHERE fleet = $1"),
            &[&f.name],
        )
        .await
        .ctx("reading the fleet")?;
    if let Some(row) = existing {
        let stored: String = row.get(0);
        let stored: FleetSpec = serde_json::from_str(&stored)
            .map_err(|e| Error::invalid(format!("stored spec of fleet {}: {e}", f.name)))?;
        if stored != f.spec {
            return Err(Error::conflict(format!(
                "fleet {} exists with another spec (waves, budget or health): a worker must be built with the fleet's spec",
                f.name
            )));
        }
        return Ok(());
    }
    let tenants: Vec<Tenant> = match &f.tenants {
        TenantSource::List(l) => l.clone(),
        TenantSource::Query(q) => tx
            .query(q.as_str(), &[])
            .await
            .ctx("reading the fleet's tenants")?
            .iter()
            .map(|r| Tenant::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect(),
    };
    if tenants.is_empty() {
        return Err(Error::invalid(format!("fleet {} has no tenants", f.name)));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(t) = tenants.iter().find(|t| !seen.insert(t.id.as_str())) {
        return Err(Error::invalid(format!("tenant {} appears twice", t.id)));
    }
    if let Some(t) = tenants
        .iter()
        .find(|t| t.id.contains('/') || t.id.is_empty())
    {
        return Err(Error::invalid(format!(
            "tenant id {:?} must be non-empty and contain no '/'",
            t.id
        )));
    }
    let waves = assign_waves(&f.spec.waves, tenants.len());
    tx.execute(
        &format!(
            "INSERT INTO {s}.fleets (fleet, spec, created_at_ms) VALUES ($1, $2::text::jsonb, {NOW_MS})"
        ),
        &[&f.name, &spec.to_string()],
    )
    .await
    .ctx("creating the fleet")?;
    for (i, _) in f.spec.waves.iter().enumerate() {
        let n = waves.iter().filter(|w| **w == i + 1).count() as i32;
        tx.execute(
            &format!("INSERT INTO {s}.fleet_waves (fleet, wave, tenants) VALUES ($1, $2, $3)"),
            &[&f.name, &((i + 1) as i32), &n],
        )
        .await
        .ctx("creating the fleet's waves")?;
    }
    // One statement for all tenants; those beyond the last wave are recorded unassigned.
    let ids: Vec<&str> = tenants.iter().map(|t| t.id.as_str()).collect();
    let locations: Vec<&str> = tenants.iter().map(|t| t.location.as_str()).collect();
    let wave_of: Vec<i32> = (0..tenants.len())
        .map(|i| waves.get(i).map(|w| *w as i32).unwrap_or(0))
        .collect();
    tx.execute(
        &format!(
            "INSERT INTO {s}.fleet_tenants (fleet, tenant, location, wave, ordinal, run_id, status) \
             SELECT $1, t.id, t.loc, t.wave, t.ord::int, $1 || '/' || t.id, \
                    CASE WHEN t.wave = 0 THEN 'unassigned' ELSE 'pending' END \
             FROM unnest($2::text[], $3::text[], $4::int[]) WITH ORDINALITY AS t(id, loc, wave, ord)"
        ),
        &[&f.name, &ids, &locations, &wave_of],
    )
    .await
    .ctx("creating the fleet's tenants")?;
    tx.execute(
        &format!(
            "INSERT INTO {s}.fleet_decisions (fleet, seq, at_ms, wave, decision, holder, evidence) \
             VALUES ($1, 0, {NOW_MS}, 0, 'created', '', $2::text::jsonb)"
        ),
        &[
            &f.name,
            &serde_json::json!({ "tenants": tenants.len(), "waves": f.spec.waves.len(), "spec": spec })
                .to_string(),
        ],
    )
    .await
    .ctx("recording the fleet's creation")?;
    tx.commit().await.ctx("creating the fleet")
}

/// What a claim is for, from the wave's state and the tenant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    /// Run (or resume) the tenant's migration.
    Forward,
    /// Roll the tenant's run back with its wave.
    RollBack,
    /// Release the kept snapshots of a passed wave's committed tenant.
    Release,
}

impl Task {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Task::Forward => "forward",
            Task::RollBack => "rollback",
            Task::Release => "release",
        }
    }
}

/// A claimed tenant run.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub(crate) tenant: Tenant,
    pub(crate) wave: i32,
    pub(crate) run_id: String,
    pub(crate) task: Task,
    pub(crate) epoch: i64,
    pub(crate) taken_over_from: Option<String>,
    pub(crate) attempts: i32,
}

/// Claim one tenant run with work to do: rollbacks first, then migrations in wave and
/// tenant order (expired claims before new ones), then releases. The row is locked `FOR
/// UPDATE SKIP LOCKED` (workers never wait on each other), and the claim's lease is
/// decided by the core's rule on the server's clock: a new epoch for every claim, the
/// previous holder named when its claim had expired. Each lookup is one wave and one
/// status, in the order of the index `(fleet, wave, status, ordinal)`, so a claim costs
/// the same in a fleet of ten tenants or of ten thousand.
pub(crate) async fn claim(
    c: &mut tokio_postgres::Client,
    f: &FleetInner,
    holder: &str,
) -> Result<Option<Claim>> {
    let s = quote_ident(&f.schema);
    let release_on_pass = f.spec.earlier_waves == super::EarlierWaves::Keep;
    let tx = c.transaction().await.ctx("claiming a tenant run")?;
    // Typed statements: one round trip each, no separate prepare.
    let waves = tx
        .query_typed(
            &format!(
                "SELECT w.wave, w.status, f.status, {NOW_MS} FROM {s}.fleet_waves w \
                 JOIN {s}.fleets f ON f.fleet = w.fleet \
                 WHERE w.fleet = $1 AND w.status IN ('running', 'rolling_back', 'passed') ORDER BY w.wave"
            ),
            &[(&f.name, Type::TEXT)],
        )
        .await
        .ctx("claiming a tenant run")?;
    let now: i64 = match waves.first() {
        Some(r) => r.get(3),
        None => 0,
    };
    // (wave, wave status, tenant status, only expired claims), in the order of priority.
    let mut lookups: Vec<(i32, String, &str, bool)> = Vec::new();
    for r in waves
        .iter()
        .filter(|r| r.get::<_, String>(1) == "rolling_back")
    {
        for st in ["running", "rolling_back", "committed"] {
            lookups.push((r.get(0), r.get(1), st, false));
        }
    }
    for r in waves.iter().filter(|r| r.get::<_, String>(1) == "running") {
        lookups.push((r.get(0), r.get(1), "running", true));
        lookups.push((r.get(0), r.get(1), "pending", false));
    }
    for r in waves.iter().filter(|r| r.get::<_, String>(1) == "passed") {
        if release_on_pass || r.get::<_, String>(2) == "done" {
            lookups.push((r.get(0), r.get(1), "committed", false));
        }
    }
    let mut found = None;
    for (wave, wave_status, status, expired_only) in lookups {
        let row = tx
            .query_typed_opt(
                &format!(
                    "SELECT tenant, location, wave, status, holder, lease_expires_at_ms, epoch, run_id, attempts \
                     FROM {s}.fleet_tenants \
                     WHERE fleet = $1 AND wave = $2 AND status = $3 \
                       AND (($5 = false AND holder = '') OR lease_expires_at_ms < $4) \
                     ORDER BY ordinal LIMIT 1 FOR UPDATE SKIP LOCKED"
                ),
                &[
                    (&f.name, Type::TEXT),
                    (&wave, Type::INT4),
                    (&status, Type::TEXT),
                    (&now, Type::INT8),
                    (&expired_only, Type::BOOL),
                ],
            )
            .await
            .ctx("claiming a tenant run")?;
        if let Some(row) = row {
            found = Some((row, wave_status));
            break;
        }
    }
    let Some((row, wave_status)) = found else {
        tx.commit().await.ctx("claiming a tenant run")?;
        return Ok(None);
    };
    let tenant = Tenant::new(row.get::<_, String>(0), row.get::<_, String>(1));
    let wave: i32 = row.get(2);
    let status: String = row.get(3);
    let current = Lease {
        key: format!("{}/{}", f.name, tenant.id),
        holder: row.get(4),
        expires_at_ms: row.get::<_, i64>(5).max(0) as u64,
        taken_over_from: None,
        epoch: row.get::<_, i64>(6).max(0) as u64,
    };
    let run_id: String = row.get(7);
    let attempts: i32 = row.get(8);
    let mut lease = decide_lease(
        Some(&current),
        &current.key,
        holder,
        f.claim_ttl,
        now.max(0) as u64,
    )?;
    if lease.epoch == current.epoch {
        // This holder's own claim, released and claimed again: still a new claim.
        lease.epoch += 1;
    }
    let task = match wave_status.as_str() {
        "rolling_back" => Task::RollBack,
        "passed" => Task::Release,
        _ => Task::Forward,
    };
    let new_status = match task {
        Task::Forward => "running",
        Task::RollBack => "rolling_back",
        Task::Release => status.as_str(),
    };
    let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    tx.execute_typed(
        &format!(
            "UPDATE {s}.fleet_tenants SET holder = $3, lease_expires_at_ms = $4, epoch = $5, \
             taken_over_from = $6::text, claims = claims + 1, takeovers = takeovers + ($6::text IS NOT NULL)::int, \
             status = $7, updated_at_ms = {NOW_MS} \
             WHERE fleet = $1 AND tenant = $2"
        ),
        &[
            (&f.name, Type::TEXT),
            (&tenant.id, Type::TEXT),
            (&holder, Type::TEXT),
            (&big(lease.expires_at_ms), Type::INT8),
            (&big(lease.epoch), Type::INT8),
            (&lease.taken_over_from, Type::TEXT),
            (&new_status, Type::TEXT),
        ],
    )
    .await
    .ctx("claiming a tenant run")?;
    tx.commit().await.ctx("claiming a tenant run")?;
    Ok(Some(Claim {
        tenant,
        wave,
        run_id,
        task,
        epoch: big(lease.epoch),
        taken_over_from: lease.taken_over_from,
        attempts,
    }))
}

/// Extend a claim; `false` when it is no longer this holder's (taken over).
pub(crate) async fn renew(
    c: &tokio_postgres::Client,
    f: &FleetInner,
    holder: &str,
    claim: &Claim,
    ttl: Duration,
) -> Result<bool> {
    let s = quote_ident(&f.schema);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let n = c
        .execute_typed(
            &format!(
                "UPDATE {s}.fleet_tenants SET lease_expires_at_ms = {NOW_MS} + $5 \
                 WHERE fleet = $1 AND tenant = $2 AND holder = $3 AND epoch = $4"
            ),
            &[
                (&f.name, Type::TEXT),
                (&claim.tenant.id, Type::TEXT),
                (&holder, Type::TEXT),
                (&claim.epoch, Type::INT8),
                (&ttl_ms, Type::INT8),
            ],
        )
        .await
        .ctx("renewing a claim")?;
    Ok(n == 1)
}

/// Write a claim's end: the tenant's new status (or the same one, released for another
/// attempt), its outcome and error, fenced by the claim's epoch. `false` when the claim
/// was taken over (nothing written).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn finish(
    c: &tokio_postgres::Client,
    f: &FleetInner,
    holder: &str,
    claim: &Claim,
    status: &str,
    outcome: Option<&str>,
    error: Option<&str>,
    attempt_failed: bool,
) -> Result<bool> {
    let s = quote_ident(&f.schema);
    let n = c
        .execute_typed(
            &format!(
                "UPDATE {s}.fleet_tenants SET status = $5, outcome = coalesce($6::text::jsonb, outcome), error = $7, \
                 holder = '', lease_expires_at_ms = 0, attempts = attempts + $8::int, updated_at_ms = {NOW_MS} \
                 WHERE fleet = $1 AND tenant = $2 AND holder = $3 AND epoch = $4"
            ),
            &[
                (&f.name, Type::TEXT),
                (&claim.tenant.id, Type::TEXT),
                (&holder, Type::TEXT),
                (&claim.epoch, Type::INT8),
                (&status, Type::TEXT),
                (&outcome, Type::TEXT),
                (&error, Type::TEXT),
                (&i32::from(attempt_failed), Type::INT4),
            ],
        )
        .await
        .ctx("recording a tenant run's end")?;
    Ok(n == 1)
}
