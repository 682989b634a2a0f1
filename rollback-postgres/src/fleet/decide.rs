//! Wave verdicts: any worker, when it finds no work, moves the fleet on — starts the next
//! wave, counts failed runs against the budget, soaks and polls the wave's health,
//! breaches, finishes a wave's rollback, ends the fleet. One decider at a time (the
//! fleet's row locked `FOR UPDATE SKIP LOCKED`); every decision is written with its
//! evidence in `fleet_decisions` in the transaction that changes the wave, and read from
//! the tables alone.

use super::tables::NOW_MS;
use super::{EarlierWaves, FleetInner, Tenant};
use crate::error::PgResultExt;
use crate::ident::quote_ident;
use rollback_core::{Result, Status};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_postgres::types::Type;

/// Take the decisions due: the fleet's status after them (`running`, `done` or
/// `halted`), and whether any was taken (the next may then be due at once).
pub(crate) async fn advance(
    c: &mut tokio_postgres::Client,
    f: &FleetInner,
    holder: &str,
) -> Result<(String, bool)> {
    let decided = AtomicBool::new(false);
    let status = advance_once(c, f, holder, &decided).await?;
    Ok((status, decided.load(Ordering::Relaxed)))
}

async fn advance_once(
    c: &mut tokio_postgres::Client,
    f: &FleetInner,
    holder: &str,
    decided: &AtomicBool,
) -> Result<String> {
    let s = quote_ident(&f.schema);
    let tx = c.transaction().await.ctx("deciding the fleet")?;
    // Typed statements: one round trip each, no separate prepare.
    let Some(row) = tx
        .query_typed(
            &format!(
                "SELECT status, {NOW_MS} FROM {s}.fleets WHERE fleet = $1 FOR UPDATE SKIP LOCKED"
            ),
            &[(&f.name, Type::TEXT)],
        )
        .await
        .ctx("locking the fleet")?
        .into_iter()
        .next()
    else {
        // Another worker is deciding.
        tx.commit().await.ctx("deciding the fleet")?;
        return Ok("running".into());
    };
    let status: String = row.get(0);
    let now: i64 = row.get(1);
    if status != "running" {
        tx.commit().await.ctx("deciding the fleet")?;
        return Ok(status);
    }
    // The waves, read after the lock (a new snapshot, which sees the last decider's
    // commit), with the tenants of each wave a decision can read counted by status: the
    // waves running, soaking or rolling back, and the next to start.
    let waves = tx
        .query_typed(
            &format!(
                "SELECT w.wave, w.status, coalesce(w.soak_until_ms, 0), coalesce(w.health_checked_at_ms, 0),                    CASE WHEN w.status IN ('running', 'soaking', 'rolling_back')                           OR w.wave = (SELECT min(p.wave) FROM {s}.fleet_waves p                                        WHERE p.fleet = $1 AND p.status = 'pending')                    THEN (SELECT coalesce(json_object_agg(c.status, c.n), '{{}}')::text                          FROM (SELECT t.status, count(*) AS n FROM {s}.fleet_tenants t                                WHERE t.fleet = $1 AND t.wave = w.wave GROUP BY t.status) c)                    ELSE '{{}}' END                  FROM {s}.fleet_waves w WHERE w.fleet = $1 ORDER BY w.wave"
            ),
            &[(&f.name, Type::TEXT)],
        )
        .await
        .ctx("reading the waves")?;
    let mut counts: BTreeMap<(i32, String), i64> = BTreeMap::new();
    for w in &waves {
        let by_status: BTreeMap<String, i64> = serde_json::from_str(w.get::<_, &str>(4))
            .map_err(|e| rollback_core::Error::invalid(format!("counting the tenants: {e}")))?;
        for (status, n) in by_status {
            counts.insert((w.get(0), status), n);
        }
    }
    let count = |wave: i32, st: &[&str]| -> i64 {
        st.iter()
            .map(|x| counts.get(&(wave, x.to_string())).copied().unwrap_or(0))
            .sum()
    };
    let d = Decider {
        tx: &tx,
        f,
        holder,
        decided,
        schema: s.clone(),
    };

    // A wave rolling back ends when none of its tenants has anything left to undo.
    let rolling: Vec<i32> = waves
        .iter()
        .filter(|w| w.get::<_, String>(1) == "rolling_back")
        .map(|w| w.get(0))
        .collect();
    let mut still_rolling = false;
    for w in &rolling {
        if count(*w, &["running", "committed", "rolling_back"]) == 0 {
            let evidence = json!({
                "rolled_back": count(*w, &["rolled_back"]),
                "failed": count(*w, &["failed"]),
                "rollback_failed": count(*w, &["rollback_failed"]),
                "cancelled": count(*w, &["cancelled"]),
            });
            d.set_wave(*w, "rolled_back", "ended_at_ms = $now").await?;
            d.decide(*w, "wave_rolled_back", &evidence).await?;
        } else {
            still_rolling = true;
        }
    }
    let any_breached = waves.iter().any(|w| {
        matches!(
            w.get::<_, String>(1).as_str(),
            "rolling_back" | "rolled_back"
        )
    });
    if any_breached {
        if !still_rolling {
            d.end_fleet("halted").await?;
            tx.commit().await.ctx("deciding the fleet")?;
            return Ok("halted".into());
        }
        tx.commit().await.ctx("deciding the fleet")?;
        return Ok("running".into());
    }

    let Some(current) = waves.iter().find(|w| w.get::<_, String>(1) != "passed") else {
        d.end_fleet("done").await?;
        tx.commit().await.ctx("deciding the fleet")?;
        return Ok("done".into());
    };
    let wave: i32 = current.get(0);
    let wstatus: String = current.get(1);
    let soak_until: i64 = current.get(2);
    let health_at: i64 = current.get(3);
    let spec = &f.spec.waves[(wave - 1) as usize];
    let budget = spec.budget.unwrap_or(f.spec.budget);
    match wstatus.as_str() {
        "pending" => {
            d.set_wave(wave, "running", "started_at_ms = $now").await?;
            d.decide(
                wave,
                "wave_started",
                &json!({ "tenants": count(wave, &["pending"]) }),
            )
            .await?;
        }
        "running" => {
            let failed = count(wave, &["failed", "rollback_failed"]);
            let ended = failed + count(wave, &["committed", "released"]);
            let left = count(wave, &["pending", "running"]);
            let rate = if ended > 0 {
                failed as f64 / ended as f64
            } else {
                0.0
            };
            let over_count = failed as usize > budget.max_failed;
            let over_rate = budget
                .max_failure_rate
                .is_some_and(|m| ended as usize >= budget.min_ended && rate > m);
            if over_count || over_rate {
                let failures = d.failures(wave).await?;
                let reason = if over_count {
                    format!(
                        "{failed} failed tenant run(s), over the budget of {}",
                        budget.max_failed
                    )
                } else {
                    format!(
                        "{:.1}% of {ended} ended tenant runs failed, over the budget of {:.1}%",
                        rate * 100.0,
                        budget.max_failure_rate.unwrap_or(0.0) * 100.0
                    )
                };
                let evidence = json!({
                    "reason": reason,
                    "trigger": "failure_budget",
                    "failed": failed,
                    "ended": ended,
                    "not_ended": left,
                    "failure_rate": rate,
                    "budget": budget,
                    "failures": failures,
                });
                d.breach(wave, &evidence).await?;
            } else if left == 0 {
                let until = now.saturating_add(i64::try_from(spec.soak_ms).unwrap_or(i64::MAX / 4));
                d.tx.execute(
                    &format!(
                        "UPDATE {s}.fleet_waves SET status = 'soaking', ended_at_ms = $3, soak_until_ms = $4 \
                         WHERE fleet = $1 AND wave = $2"
                    ),
                    &[&f.name, &wave, &now, &until],
                )
                .await
                .ctx("starting a wave's soak")?;
                d.decide(
                    wave,
                    "wave_soaking",
                    &json!({ "committed": count(wave, &["committed"]), "failed": failed, "soak_ms": spec.soak_ms }),
                )
                .await?;
            }
        }
        "soaking" => {
            let due = now >= soak_until;
            let poll =
                now.saturating_sub(health_at) >= i64::try_from(f.spec.health_every_ms).unwrap_or(0);
            let mut health_evidence = serde_json::Value::Null;
            if let Some(h) = &f.health {
                if due || poll {
                    let tenants = d.tenants(wave).await?;
                    let verdict = h.check(&tenants).await;
                    d.tx.execute(
                        &format!(
                            "UPDATE {s}.fleet_waves SET health_checked_at_ms = $3 WHERE fleet = $1 AND wave = $2"
                        ),
                        &[&f.name, &wave, &now],
                    )
                    .await
                    .ctx("recording a health poll")?;
                    let (ok, ev) = match verdict {
                        Ok(v) => (
                            v.status == Status::Pass,
                            json!({ "health": h.id(), "status": v.status, "summary": v.summary, "value": v.value, "evidence": v.evidence }),
                        ),
                        Err(e) => (
                            false,
                            json!({ "health": h.id(), "status": "error", "summary": e.to_string() }),
                        ),
                    };
                    // Only a failing measurement breaches before the soak is due; at the
                    // end, anything but a pass does.
                    let failed_now = ev["status"] == json!(Status::Fail);
                    if failed_now || (due && !ok) {
                        let evidence = json!({
                            "reason": format!("health {} did not pass: {}", h.id(), ev["summary"].as_str().unwrap_or("")),
                            "trigger": "health",
                            "health": ev,
                            "committed": count(wave, &["committed"]),
                            "failed": count(wave, &["failed", "rollback_failed"]),
                            "failures": d.failures(wave).await?,
                        });
                        d.breach(wave, &evidence).await?;
                        tx.commit().await.ctx("deciding the fleet")?;
                        return Ok("running".into());
                    }
                    health_evidence = ev;
                }
            }
            if due {
                d.set_wave(wave, "passed", "decided_at_ms = $now").await?;
                d.decide(
                    wave,
                    "wave_passed",
                    &json!({
                        "committed": count(wave, &["committed", "released"]),
                        "failed": count(wave, &["failed", "rollback_failed"]),
                        "budget": budget,
                        "health": health_evidence,
                    }),
                )
                .await?;
                // The next wave starts at once.
                if let Some(next) = waves.iter().find(|w| w.get::<_, i32>(0) == wave + 1) {
                    let n: i32 = next.get(0);
                    d.set_wave(n, "running", "started_at_ms = $now").await?;
                    d.decide(
                        n,
                        "wave_started",
                        &json!({ "tenants": count(n, &["pending"]) }),
                    )
                    .await?;
                } else {
                    d.end_fleet("done").await?;
                    tx.commit().await.ctx("deciding the fleet")?;
                    return Ok("done".into());
                }
            }
        }
        _ => {}
    }
    tx.commit().await.ctx("deciding the fleet")?;
    Ok("running".into())
}

struct Decider<'a> {
    tx: &'a tokio_postgres::Transaction<'a>,
    f: &'a FleetInner,
    holder: &'a str,
    decided: &'a AtomicBool,
    schema: String,
}

impl Decider<'_> {
    async fn set_wave(&self, wave: i32, status: &str, at_column: &str) -> Result<()> {
        let s = &self.schema;
        self.tx
            .execute(
                &format!(
                    "UPDATE {s}.fleet_waves SET status = $3, {} WHERE fleet = $1 AND wave = $2",
                    at_column.replace("$now", NOW_MS)
                ),
                &[&self.f.name, &wave, &status],
            )
            .await
            .ctx("changing a wave")?;
        Ok(())
    }

    async fn decide(&self, wave: i32, decision: &str, evidence: &serde_json::Value) -> Result<()> {
        let s = &self.schema;
        tracing::info!(fleet = %self.f.name, wave, decision, %evidence, "fleet decision");
        self.decided.store(true, Ordering::Relaxed);
        self.tx
            .execute(
                &format!(
                    "INSERT INTO {s}.fleet_decisions (fleet, seq, at_ms, wave, decision, holder, evidence) \
                     SELECT $1, coalesce(max(seq), -1) + 1, {NOW_MS}, $2, $3, $4, $5::text::jsonb \
                     FROM {s}.fleet_decisions WHERE fleet = $1"
                ),
                &[&self.f.name, &wave, &decision, &self.holder, &evidence.to_string()],
            )
            .await
            .ctx("recording a fleet decision")?;
        Ok(())
    }

    async fn end_fleet(&self, status: &str) -> Result<()> {
        let s = &self.schema;
        self.tx
            .execute(
                &format!(
                    "UPDATE {s}.fleets SET status = $2, finished_at_ms = {NOW_MS} WHERE fleet = $1"
                ),
                &[&self.f.name, &status],
            )
            .await
            .ctx("ending the fleet")?;
        self.decide(0, &format!("fleet_{status}"), &json!({})).await
    }

    async fn tenants(&self, wave: i32) -> Result<Vec<Tenant>> {
        let s = &self.schema;
        Ok(self
            .tx
            .query(
                &format!(
                    "SELECT tenant, location FROM {s}.fleet_tenants WHERE fleet = $1 AND wave = $2 ORDER BY ordinal"
                ),
                &[&self.f.name, &wave],
            )
            .await
            .ctx("reading a wave's tenants")?
            .iter()
            .map(|r| Tenant::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// The wave's failed tenant runs, with their errors (the breach's evidence).
    async fn failures(&self, wave: i32) -> Result<serde_json::Value> {
        let s = &self.schema;
        let rows = self
            .tx
            .query(
                &format!(
                    "SELECT tenant, status, coalesce(error, '') FROM {s}.fleet_tenants \
                     WHERE fleet = $1 AND wave = $2 AND status IN ('failed', 'rollback_failed') ORDER BY ordinal LIMIT 50"
                ),
                &[&self.f.name, &wave],
            )
            .await
            .ctx("reading a wave's failures")?;
        Ok(serde_json::Value::Array(
            rows.iter()
                .map(|r| {
                    json!({ "tenant": r.get::<_, String>(0), "status": r.get::<_, String>(1), "error": r.get::<_, String>(2) })
                })
                .collect(),
        ))
    }

    /// Breach `wave`: it rolls back (and earlier waves too, by policy), its tenants not
    /// started never start, and the decision is recorded with `evidence`.
    async fn breach(&self, wave: i32, evidence: &serde_json::Value) -> Result<()> {
        let s = &self.schema;
        tracing::warn!(fleet = %self.f.name, wave, %evidence, "wave breached: rolling it back");
        self.set_wave(wave, "rolling_back", "decided_at_ms = $now")
            .await?;
        let cancelled = self
            .tx
            .execute(
                &format!(
                    "UPDATE {s}.fleet_tenants SET status = 'cancelled', updated_at_ms = {NOW_MS} \
                     WHERE fleet = $1 AND wave = $2 AND status = 'pending'"
                ),
                &[&self.f.name, &wave],
            )
            .await
            .ctx("cancelling a wave's tenants")?;
        let mut earlier = Vec::new();
        if self.f.spec.earlier_waves == EarlierWaves::RollBack {
            for r in self
                .tx
                .query(
                    &format!(
                        "UPDATE {s}.fleet_waves SET status = 'rolling_back', decided_at_ms = {NOW_MS} \
                         WHERE fleet = $1 AND wave < $2 AND status = 'passed' RETURNING wave"
                    ),
                    &[&self.f.name, &wave],
                )
                .await
                .ctx("rolling back earlier waves")?
            {
                earlier.push(r.get::<_, i32>(0));
            }
        }
        let mut ev = evidence.clone();
        ev["cancelled_not_started"] = json!(cancelled);
        ev["earlier_waves_rolled_back"] = json!(earlier);
        ev["earlier_waves_policy"] = json!(self.f.spec.earlier_waves);
        self.decide(wave, "wave_breached", &ev).await
    }
}
