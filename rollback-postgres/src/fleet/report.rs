//! [`FleetReport`]: the fleet as its tables say it is — per wave and per tenant outcome,
//! RTO/RPO distributions, the breach and its evidence, the tenants that stayed migrated.

use crate::db::Database;
use crate::error::PgResultExt;
use crate::ident::quote_ident;
use rollback_core::{Error, Outcome, Result, RunReport};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// What a tenant run's report says, kept in the control tables with the tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantOutcome {
    /// The run's outcome.
    pub outcome: Outcome,
    /// Parity with the baseline proven by the rollback (false when none ran).
    pub parity_proven: bool,
    /// The run was rolled back after it had committed.
    pub rolled_back_after_commit: bool,
    /// Why the run rolled back, if it did.
    pub rollback_reason: Option<String>,
    /// Recovery time of its rollback.
    pub rto_ms: Option<u64>,
    /// Recovery point of its rollback (capture → restore).
    pub rpo_ms: Option<u64>,
    /// Writes made since the commit that its restores put back.
    pub rpo_since_commit_ms: Option<u64>,
    /// Writes of others its restores discarded, where counted.
    pub items_discarded: Option<u64>,
    /// First to last record.
    pub duration_ms: u64,
    /// Times the run was resumed (a killed worker's runs are resumed by another).
    pub resumes: u32,
}

impl TenantOutcome {
    /// The outcome of a tenant run's report.
    pub fn of(r: &RunReport) -> Self {
        TenantOutcome {
            outcome: r.outcome,
            parity_proven: r.parity_proven(),
            rolled_back_after_commit: r.rolled_back_after_commit,
            rollback_reason: r.rollback_reason.clone(),
            rto_ms: r.rto_ms,
            rpo_ms: r.rpo_ms,
            rpo_since_commit_ms: r.rpo_since_commit_ms,
            items_discarded: r.items_discarded,
            duration_ms: r.finished_at_ms.saturating_sub(r.started_at_ms),
            resumes: r.resumes,
        }
    }
}

/// One tenant in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantReport {
    /// Tenant id.
    pub tenant: String,
    /// Where its data lives.
    pub location: String,
    /// Its wave (0: beyond the last wave, never run).
    pub wave: i32,
    /// `pending`, `running`, `committed`, `released` (committed, snapshots released),
    /// `failed` (its own run rolled back), `rolling_back`, `rolled_back` (with its wave),
    /// `rollback_failed`, `cancelled` (its wave breached before it started), `unassigned`.
    pub status: String,
    /// The run id in the journal.
    pub run_id: String,
    /// Claims of the tenant (a forward run, a takeover, a rollback, a release each claim).
    pub claims: i32,
    /// Claims taken over from an expired holder.
    pub takeovers: i32,
    /// The last error.
    pub error: Option<String>,
    /// The run's outcome as last recorded.
    pub outcome: Option<TenantOutcome>,
}

impl TenantReport {
    /// Whether the tenant is migrated now (committed, snapshots kept or released).
    pub fn migrated(&self) -> bool {
        matches!(self.status.as_str(), "committed" | "released")
    }
}

/// One wave in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveReport {
    /// 1-based.
    pub wave: i32,
    /// `pending`, `running`, `soaking`, `passed`, `rolling_back`, `rolled_back`.
    pub status: String,
    /// Tenants in the wave.
    pub tenants: i32,
    /// Migrated now.
    pub migrated: usize,
    /// Failed by their own run.
    pub failed: usize,
    /// Rolled back with the wave.
    pub rolled_back: usize,
    /// Never started (the wave breached first).
    pub cancelled: usize,
    /// Stopped in `rollback_failed`.
    pub rollback_failed: usize,
    /// Wave start, end of its runs, verdict (epoch ms).
    pub started_at_ms: Option<i64>,
    /// When its last run ended.
    pub ended_at_ms: Option<i64>,
    /// When its verdict was decided.
    pub decided_at_ms: Option<i64>,
}

/// A decision of the fleet, with its evidence, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetDecision {
    /// Order.
    pub seq: i32,
    /// When (epoch ms, the server's clock).
    pub at_ms: i64,
    /// The wave (0: the fleet).
    pub wave: i32,
    /// `created`, `wave_started`, `wave_soaking`, `wave_passed`, `wave_breached`,
    /// `wave_rolled_back`, `fleet_done`, `fleet_halted`.
    pub decision: String,
    /// The worker that decided.
    pub holder: String,
    /// What it was decided on.
    pub evidence: serde_json::Value,
}

/// p50 / p95 / max of a measure over the tenants that have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Distribution {
    /// Tenants measured.
    pub n: usize,
    /// Median (nearest rank).
    pub p50: Option<u64>,
    /// 95th percentile (nearest rank).
    pub p95: Option<u64>,
    /// Largest.
    pub max: Option<u64>,
}

impl Distribution {
    /// Of these values.
    pub fn of(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        let rank = |p: f64| -> Option<u64> {
            if v.is_empty() {
                return None;
            }
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            Some(v[i])
        };
        Distribution {
            n: v.len(),
            p50: rank(0.50),
            p95: rank(0.95),
            max: v.last().copied(),
        }
    }
}

/// The fleet as its tables say it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    /// The fleet.
    pub fleet: String,
    /// `running`, `done` or `halted`.
    pub status: String,
    /// Creation and end (epoch ms).
    pub created_at_ms: i64,
    /// When it ended.
    pub finished_at_ms: Option<i64>,
    /// Waves in order.
    pub waves: Vec<WaveReport>,
    /// Tenants in wave and tenant order.
    pub tenants: Vec<TenantReport>,
    /// RTO over the tenant runs that rolled back.
    pub rto: Distribution,
    /// RPO (capture → restore) over the tenant runs that restored.
    pub rpo: Distribution,
    /// The breach that stopped the fleet, with its evidence.
    pub breach: Option<FleetDecision>,
    /// Tenants migrated now.
    pub stayed_migrated: Vec<String>,
    /// Every decision, in order.
    pub decisions: Vec<FleetDecision>,
}

impl FleetReport {
    /// Read the report of fleet `name` from its tables in `schema`.
    ///
    /// # Errors
    /// Backend errors; [`Error::Invalid`] when there is no such fleet.
    pub async fn load(db: &Database, schema: &str, name: &str) -> Result<FleetReport> {
        let s = quote_ident(schema);
        let c = db.lib_client().await?;
        let f = c
            .query_opt(
                &format!(
                    "SELECT status, created_at_ms, finished_at_ms FROM {s}.fleets WHERE fleet = $1"
                ),
                &[&name],
            )
            .await
            .ctx("reading the fleet")?
            .ok_or_else(|| Error::invalid(format!("no fleet {name}")))?;
        let tenants: Vec<TenantReport> = c
            .query(
                &format!(
                    "SELECT tenant, location, wave, status, run_id, claims, takeovers, error, outcome::text \
                     FROM {s}.fleet_tenants WHERE fleet = $1 ORDER BY (wave = 0), wave, ordinal"
                ),
                &[&name],
            )
            .await
            .ctx("reading the fleet's tenants")?
            .iter()
            .map(|r| TenantReport {
                tenant: r.get(0),
                location: r.get(1),
                wave: r.get(2),
                status: r.get(3),
                run_id: r.get(4),
                claims: r.get(5),
                takeovers: r.get(6),
                error: r.get(7),
                outcome: r
                    .get::<_, Option<String>>(8)
                    .and_then(|v| serde_json::from_str(&v).ok()),
            })
            .collect();
        let waves = c
            .query(
                &format!(
                    "SELECT wave, status, tenants, started_at_ms, ended_at_ms, decided_at_ms \
                     FROM {s}.fleet_waves WHERE fleet = $1 ORDER BY wave"
                ),
                &[&name],
            )
            .await
            .ctx("reading the fleet's waves")?
            .iter()
            .map(|r| {
                let wave: i32 = r.get(0);
                let of = |st: &str| {
                    tenants
                        .iter()
                        .filter(|t| t.wave == wave && t.status == st)
                        .count()
                };
                WaveReport {
                    wave,
                    status: r.get(1),
                    tenants: r.get(2),
                    migrated: of("committed") + of("released"),
                    failed: of("failed"),
                    rolled_back: of("rolled_back"),
                    cancelled: of("cancelled"),
                    rollback_failed: of("rollback_failed"),
                    started_at_ms: r.get(3),
                    ended_at_ms: r.get(4),
                    decided_at_ms: r.get(5),
                }
            })
            .collect();
        let decisions: Vec<FleetDecision> = c
            .query(
                &format!(
                    "SELECT seq, at_ms, wave, decision, holder, evidence::text FROM {s}.fleet_decisions \
                     WHERE fleet = $1 ORDER BY seq"
                ),
                &[&name],
            )
            .await
            .ctx("reading the fleet's decisions")?
            .iter()
            .map(|r| FleetDecision {
                seq: r.get(0),
                at_ms: r.get(1),
                wave: r.get(2),
                decision: r.get(3),
                holder: r.get(4),
                evidence: serde_json::from_str(r.get::<_, &str>(5)).unwrap_or_default(),
            })
            .collect();
        let outcomes = || tenants.iter().filter_map(|t| t.outcome.as_ref());
        Ok(FleetReport {
            fleet: name.into(),
            status: f.get(0),
            created_at_ms: f.get(1),
            finished_at_ms: f.get(2),
            rto: Distribution::of(outcomes().filter_map(|o| o.rto_ms).collect()),
            rpo: Distribution::of(outcomes().filter_map(|o| o.rpo_ms).collect()),
            breach: decisions
                .iter()
                .find(|d| d.decision == "wave_breached")
                .cloned(),
            stayed_migrated: tenants
                .iter()
                .filter(|t| t.migrated())
                .map(|t| t.tenant.clone())
                .collect(),
            waves,
            tenants,
            decisions,
        })
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The report as Markdown: waves, the breach with its evidence, RTO/RPO, tenants.
    pub fn to_markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# Fleet `{}`: **{}**\n", self.fleet, self.status);
        let _ = writeln!(
            m,
            "{} tenants; {} migrated now.\n",
            self.tenants.len(),
            self.stayed_migrated.len()
        );
        let _ = writeln!(m, "## Waves\n\n| wave | status | tenants | migrated | failed | rolled back | not started | rollback failed |\n|---|---|---|---|---|---|---|---|");
        for w in &self.waves {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                w.wave,
                w.status,
                w.tenants,
                w.migrated,
                w.failed,
                w.rolled_back,
                w.cancelled,
                w.rollback_failed
            );
        }
        match &self.breach {
            Some(b) => {
                let _ = writeln!(
                    m,
                    "\n## Breach\n\nWave {} breached (decided by `{}`): {}\n\n```json\n{}\n```",
                    b.wave,
                    b.holder,
                    b.evidence["reason"]
                        .as_str()
                        .unwrap_or("(no reason recorded)"),
                    serde_json::to_string_pretty(&b.evidence).unwrap_or_default()
                );
            }
            None => {
                let _ = writeln!(m, "\n## Breach\n\nNone recorded.");
            }
        }
        let dist = |d: &Distribution| match (d.p50, d.p95, d.max) {
            (Some(a), Some(b), Some(c)) => {
                format!("p50 {a} ms, p95 {b} ms, max {c} ms over {} runs", d.n)
            }
            _ => "no run measured".into(),
        };
        let _ = writeln!(
            m,
            "\n## Recovery\n\n- RTO (rollback start → verified restored): {}\n- RPO (capture → restore): {}",
            dist(&self.rto),
            dist(&self.rpo)
        );
        let _ = writeln!(
            m,
            "\n## Tenants\n\n| tenant | wave | status | claims | takeovers | parity | RTO | error |\n|---|---|---|---|---|---|---|---|"
        );
        for t in &self.tenants {
            let o = t.outcome.as_ref();
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                t.tenant,
                t.wave,
                t.status,
                t.claims,
                t.takeovers,
                o.map(|o| if o.parity_proven { "proven" } else { "—" })
                    .unwrap_or("—"),
                o.and_then(|o| o.rto_ms)
                    .map(|v| format!("{v} ms"))
                    .unwrap_or_else(|| "—".into()),
                t.error
                    .as_deref()
                    .unwrap_or("")
                    .replace('|', "\\|")
                    .replace('\n', " ")
            );
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::Distribution;

    #[test]
    fn distribution_uses_nearest_rank() {
        let d = Distribution::of((1..=100).collect());
        assert_eq!(
            (d.p50, d.p95, d.max, d.n),
            (Some(50), Some(95), Some(100), 100)
        );
        let e = Distribution::of(vec![]);
        assert_eq!((e.p50, e.max, e.n), (None, None, 0));
        let one = Distribution::of(vec![7]);
        assert_eq!((one.p50, one.p95), (Some(7), Some(7)));
    }
}
