//! The fleet's control tables and the only SQL that writes them outside a verdict: the
//! fleet's creation, tenant runs' ends (fenced by the claim's epoch) written with the next
//! claims (with `FOR UPDATE SKIP LOCKED` and the core's lease rule) in one statement, and
//! renewals.

use super::{assign_waves, FleetInner, FleetSpec, Tenant, TenantSource};
use crate::error::PgResultExt;
use crate::ident::quote_ident;
use rollback_core::journal::{decide_lease, Lease, MAX_LEASE_EXPIRY_MS};
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

/// Snapshot releases claimed together when a worker has a free slot and no other work:
/// one task releases them one after another.
pub(crate) const RELEASE_BATCH: usize = 16;

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

/// Write the ends of this holder's `ends` and claim up to `max` tenant runs with work to
/// do, in one statement (one commit: a tenant run's end and the next one's claim are
/// made durable together). Each end is fenced by its claim's epoch and holder (a row
/// whose epoch or holder changed is left alone); the tenants whose end was written come
/// back first, and a claim missing from them was taken over (its new holder decides).
///
/// The claims: rollbacks first, then migrations in wave and tenant order (expired claims
/// before new ones), up to `max`; and when fewer were found, up to [`RELEASE_BATCH`]
/// snapshot releases of passed waves (for one task). Each row is locked `FOR UPDATE SKIP LOCKED` (workers never wait on each
/// other) and updated in the same statement: a new epoch for every claim, the previous
/// holder named when its claim had expired, the lease's expiry on the server's clock.
/// The lease is the core's rule ([`decide_lease`]), written in SQL and checked here
/// against the rule itself on the pre-image the statement returns. Each lookup is one
/// wave and one status, in the order of the index `(fleet, wave, status, ordinal)`, and
/// the lookups stop at the first `max` rows, and the rows are updated through the primary
/// key (the `ANY` over the picked tenants keeps the planner on it), so a claim costs the
/// same in a fleet of ten tenants or of ten thousand.
pub(crate) async fn end_and_claim(
    c: &tokio_postgres::Client,
    f: &FleetInner,
    holder: &str,
    ends: &[(Claim, Ended)],
    max: usize,
) -> Result<(Vec<String>, Vec<Claim>)> {
    let s = quote_ident(&f.schema);
    let release_on_pass = f.spec.earlier_waves == super::EarlierWaves::Keep;
    let ttl_ms = i64::try_from(f.claim_ttl.as_millis())
        .unwrap_or(i64::MAX / 4)
        .min(i64::MAX / 4);
    let ttl = Duration::from_millis(ttl_ms as u64);
    let max = i64::try_from(max).unwrap_or(i64::MAX);
    let release_batch = i64::try_from(RELEASE_BATCH).unwrap_or(1);
    let tenants: Vec<&str> = ends.iter().map(|(c, _)| c.tenant.id.as_str()).collect();
    let epochs: Vec<i64> = ends.iter().map(|(c, _)| c.epoch).collect();
    let statuses: Vec<&str> = ends.iter().map(|(_, e)| e.status).collect();
    let outcomes: Vec<Option<&str>> = ends.iter().map(|(_, e)| e.outcome.as_deref()).collect();
    let errors: Vec<Option<&str>> = ends.iter().map(|(_, e)| e.error.as_deref()).collect();
    let failed: Vec<i32> = ends
        .iter()
        .map(|(_, e)| i32::from(e.attempt_failed))
        .collect();
    // (class, wave status, tenant status, only expired claims, order within the wave):
    // the lookups in the order of priority.
    let rows = c
        .query_typed(
            &format!(
                "WITH ended AS ( \
                   UPDATE {s}.fleet_tenants t SET status = e.status, \
                     outcome = coalesce(e.outcome::jsonb, t.outcome), error = e.error, \
                     holder = '', lease_expires_at_ms = 0, attempts = t.attempts + e.failed, \
                     updated_at_ms = {NOW_MS} \
                   FROM unnest($6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[], $11::int[]) \
                     AS e(tenant, epoch, status, outcome, error, failed) \
                   WHERE t.fleet = $1 AND t.tenant = ANY ($6) AND t.tenant = e.tenant \
                     AND t.holder = $4 AND t.epoch = e.epoch \
                   RETURNING t.tenant), \
                 n AS (SELECT {NOW_MS} AS ms), \
                 looks AS ( \
                   SELECT k.class, w.wave, k.sub, w.status AS wstatus, k.tstatus, k.expired_only \
                   FROM {s}.fleet_waves w JOIN {s}.fleets f ON f.fleet = w.fleet \
                   JOIN (VALUES (1, 'rolling_back', 'running', false, 1), \
                                (1, 'rolling_back', 'rolling_back', false, 2), \
                                (1, 'rolling_back', 'committed', false, 3), \
                                (2, 'running', 'running', true, 1), \
                                (2, 'running', 'pending', false, 2), \
                                (3, 'passed', 'committed', false, 1)) \
                     AS k(class, wstatus, tstatus, expired_only, sub) ON k.wstatus = w.status \
                   WHERE w.fleet = $1 AND (k.class <> 3 OR $3 OR f.status = 'done') \
                   ORDER BY k.class, w.wave, k.sub), \
                 work AS ( \
                   SELECT t.tenant, t.holder, t.lease_expires_at_ms, t.epoch, l.wstatus, n.ms \
                   FROM n, looks l CROSS JOIN LATERAL ( \
                     SELECT t.tenant, t.holder, t.lease_expires_at_ms, t.epoch FROM {s}.fleet_tenants t \
                     WHERE t.fleet = $1 AND t.wave = l.wave AND t.status = l.tstatus \
                       AND ((NOT l.expired_only AND t.holder = '') OR t.lease_expires_at_ms < n.ms) \
                       AND t.tenant <> ALL ($6) \
                     ORDER BY t.ordinal LIMIT $2 FOR UPDATE SKIP LOCKED) t \
                   WHERE l.class < 3 LIMIT $2), \
                 releases AS ( \
                   SELECT t.tenant, t.holder, t.lease_expires_at_ms, t.epoch, l.wstatus, n.ms \
                   FROM n, looks l CROSS JOIN LATERAL ( \
                     SELECT t.tenant, t.holder, t.lease_expires_at_ms, t.epoch FROM {s}.fleet_tenants t \
                     WHERE t.fleet = $1 AND t.wave = l.wave AND t.status = l.tstatus \
                       AND (t.holder = '' OR t.lease_expires_at_ms < n.ms) AND t.tenant <> ALL ($6) \
                     ORDER BY t.ordinal LIMIT $12 FOR UPDATE SKIP LOCKED) t \
                   WHERE l.class = 3 \
                   LIMIT CASE WHEN (SELECT count(*) FROM work) < $2 THEN $12 ELSE 0 END), \
                 picked AS (SELECT * FROM work UNION ALL SELECT * FROM releases), \
                 claimed AS ( \
                 UPDATE {s}.fleet_tenants t SET holder = $4, \
                   lease_expires_at_ms = least(p.ms + $5, {max_expiry}), epoch = t.epoch + 1, \
                   taken_over_from = CASE WHEN p.holder NOT IN ('', $4) THEN p.holder END, \
                   claims = t.claims + 1, takeovers = t.takeovers + (p.holder NOT IN ('', $4))::int, \
                   status = CASE p.wstatus WHEN 'rolling_back' THEN 'rolling_back' \
                                           WHEN 'passed' THEN t.status ELSE 'running' END, \
                   updated_at_ms = p.ms \
                 FROM picked p WHERE t.fleet = $1 AND t.tenant = p.tenant \
                   AND t.tenant = ANY (ARRAY(SELECT tenant FROM picked)) \
                 RETURNING t.tenant, t.location, t.wave, t.run_id, t.attempts, p.wstatus, \
                   p.holder, p.lease_expires_at_ms, p.epoch, p.ms, \
                   t.epoch, t.lease_expires_at_ms, t.taken_over_from) \
                 SELECT false, tenant, NULL, NULL::int, NULL, NULL::int, NULL, NULL, NULL::bigint, \
                   NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL FROM ended \
                 UNION ALL SELECT true, * FROM claimed",
                max_expiry = MAX_LEASE_EXPIRY_MS,
            ),
            &[
                (&f.name, Type::TEXT),
                (&max, Type::INT8),
                (&release_on_pass, Type::BOOL),
                (&holder, Type::TEXT),
                (&ttl_ms, Type::INT8),
                (&tenants, Type::TEXT_ARRAY),
                (&epochs, Type::INT8_ARRAY),
                (&statuses, Type::TEXT_ARRAY),
                (&outcomes, Type::TEXT_ARRAY),
                (&errors, Type::TEXT_ARRAY),
                (&failed, Type::INT4_ARRAY),
                (&release_batch, Type::INT8),
            ],
        )
        .await
        .ctx("recording tenant runs' ends and claiming tenant runs")?;
    let mut written = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if !row.get::<_, bool>(0) {
            written.push(row.get(1));
            continue;
        }
        let row = Shifted(&row);
        let tenant = Tenant::new(row.get::<String>(0), row.get::<String>(1));
        let before = Lease {
            key: format!("{}/{}", f.name, tenant.id),
            holder: row.get(6),
            expires_at_ms: row.get::<i64>(7).max(0) as u64,
            taken_over_from: None,
            epoch: row.get::<i64>(8).max(0) as u64,
        };
        let now = row.get::<i64>(9).max(0) as u64;
        let mut lease = decide_lease(Some(&before), &before.key, holder, ttl, now)?;
        if lease.epoch == before.epoch {
            // This holder's own claim, released and claimed again: still a new claim.
            lease.epoch += 1;
        }
        let written = Lease {
            key: before.key.clone(),
            holder: holder.to_string(),
            expires_at_ms: row.get::<i64>(11).max(0) as u64,
            taken_over_from: row.get(12),
            epoch: row.get::<i64>(10).max(0) as u64,
        };
        if written != lease {
            return Err(Error::invalid(format!(
                "the claim of tenant {} disagrees with the lease rule: wrote {written:?}, the rule grants {lease:?}",
                tenant.id
            )));
        }
        let task = match row.get::<&str>(5) {
            "rolling_back" => Task::RollBack,
            "passed" => Task::Release,
            _ => Task::Forward,
        };
        out.push(Claim {
            wave: row.get(2),
            run_id: row.get(3),
            attempts: row.get(4),
            task,
            epoch: row.get(10),
            taken_over_from: written.taken_over_from,
            tenant,
        });
    }
    Ok((written, out))
}

/// A claimed row, its columns read one place to the right (after the row's kind).
struct Shifted<'a>(&'a tokio_postgres::Row);

impl Shifted<'_> {
    fn get<'b, T: tokio_postgres::types::FromSql<'b>>(&'b self, i: usize) -> T {
        self.0.get(i + 1)
    }
}

/// Extend this holder's live claims (`(tenant, epoch)`), in one statement; the tenants
/// whose claim was extended (the others were taken over, or have ended).
pub(crate) async fn renew(
    c: &tokio_postgres::Client,
    f: &FleetInner,
    holder: &str,
    claims: &[(String, i64)],
) -> Result<Vec<String>> {
    let s = quote_ident(&f.schema);
    let ttl_ms = i64::try_from(f.claim_ttl.as_millis()).unwrap_or(i64::MAX / 2);
    let tenants: Vec<&str> = claims.iter().map(|(t, _)| t.as_str()).collect();
    let epochs: Vec<i64> = claims.iter().map(|(_, e)| *e).collect();
    let rows = c
        .query_typed(
            &format!(
                "UPDATE {s}.fleet_tenants t SET lease_expires_at_ms = {NOW_MS} + $5 \
                 FROM unnest($2::text[], $3::bigint[]) AS e(tenant, epoch) \
                 WHERE t.fleet = $1 AND t.tenant = ANY ($2) AND t.tenant = e.tenant \
                   AND t.holder = $4 AND t.epoch = e.epoch \
                 RETURNING t.tenant"
            ),
            &[
                (&f.name, Type::TEXT),
                (&tenants, Type::TEXT_ARRAY),
                (&epochs, Type::INT8_ARRAY),
                (&holder, Type::TEXT),
                (&ttl_ms, Type::INT8),
            ],
        )
        .await
        .ctx("renewing claims")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How a claim ended: the tenant's status to write (or the same one, released for
/// another attempt), its outcome and error.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    pub(crate) status: &'static str,
    pub(crate) outcome: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) attempt_failed: bool,
}
