//! Aggregated health over a wave's tenants: [`WaveHealth`] and [`TenantErrorRate`].

use super::Tenant;
use crate::db::Database;
use crate::error::PgResultExt;
use crate::ident::quote_ident;
use async_trait::async_trait;
use rollback_core::{Error, Result, Verdict};

/// A health check over a whole wave, polled while it soaks: one verdict for the wave's
/// tenants together (an error rate over all of them, a latency percentile).
///
/// # Contract
/// 1. **Read-only.** `check` changes nothing.
/// 2. **Evidence.** The verdict carries what was measured (its `value` and `evidence`),
///    written with the fleet's decision.
/// 3. **Fails closed.** A check that cannot measure returns an error or an inconclusive
///    verdict; only a passing verdict lets a wave pass.
#[async_trait]
pub trait WaveHealth: Send + Sync {
    /// A stable id, stored with the fleet (workers must agree on it).
    fn id(&self) -> &str;
    /// Check the wave's `tenants` together.
    ///
    /// # Errors
    /// When it cannot measure (the wave does not pass on an error).
    async fn check(&self, tenants: &[Tenant]) -> Result<Verdict>;
}

/// An error rate aggregated over a wave's tenants: `query` runs once per tenant with
/// `{location}` replaced by the tenant's location quoted as an identifier (its schema),
/// and returns one row of two `bigint`s, `(errors, total)`; the wave fails when
/// `sum(errors) / sum(total)` exceeds `max_rate`.
///
/// ```no_run
/// # fn demo(db: rollback_postgres::Database) {
/// use rollback_postgres::fleet::TenantErrorRate;
/// let rate = TenantErrorRate::new(
///     &db,
///     "error-rate",
///     "SELECT count(*) FILTER (WHERE status >= 500), count(*) FROM {location}.requests \
///      WHERE at > now() - interval '5 minutes'",
///     0.02,
/// );
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TenantErrorRate {
    db: Database,
    id: String,
    query: String,
    max_rate: f64,
}

impl TenantErrorRate {
    /// The rate of `query` over the wave, at most `max_rate` (0..=1).
    pub fn new(
        db: &Database,
        id: impl Into<String>,
        query: impl Into<String>,
        max_rate: f64,
    ) -> Self {
        TenantErrorRate {
            db: db.clone(),
            id: id.into(),
            query: query.into(),
            max_rate,
        }
    }
}

#[async_trait]
impl WaveHealth for TenantErrorRate {
    fn id(&self) -> &str {
        &self.id
    }

    async fn check(&self, tenants: &[Tenant]) -> Result<Verdict> {
        if !self.query.contains("{location}") {
            return Err(Error::invalid(format!(
                "health {}: the query names no {{location}}",
                self.id
            )));
        }
        let c = self.db.client().await?;
        let (mut errors, mut total) = (0i64, 0i64);
        let mut worst: Vec<(String, i64, i64)> = Vec::new();
        for t in tenants {
            let sql = self.query.replace("{location}", &quote_ident(&t.location));
            let row = c
                .query_one(&sql, &[])
                .await
                .ctx(&format!("health {} of tenant {}", self.id, t.id))?;
            let (e, n): (i64, i64) = (row.get(0), row.get(1));
            errors += e;
            total += n;
            if e > 0 {
                worst.push((t.id.clone(), e, n));
            }
        }
        worst.sort_by_key(|w| std::cmp::Reverse(w.1));
        worst.truncate(10);
        if total == 0 {
            return Ok(Verdict::inconclusive(format!(
                "{}: no requests measured over {} tenants",
                self.id,
                tenants.len()
            ))
            .with_evidence(serde_json::json!({ "tenants": tenants.len(), "total": 0 })));
        }
        let rate = errors as f64 / total as f64;
        Ok(Verdict::check(
            rate <= self.max_rate,
            format!(
                "{}: {errors} errors in {total} requests over {} tenants ({:.2}%, limit {:.2}%)",
                self.id,
                tenants.len(),
                rate * 100.0,
                self.max_rate * 100.0
            ),
        )
        .with_value(rate)
        .with_evidence(serde_json::json!({
            "errors": errors,
            "total": total,
            "rate": rate,
            "max_rate": self.max_rate,
            "tenants": tenants.len(),
            "worst": worst.iter().map(|(t, e, n)| serde_json::json!({"tenant": t, "errors": e, "total": n})).collect::<Vec<_>>(),
        })))
    }
}
