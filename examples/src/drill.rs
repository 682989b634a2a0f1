//! The disaster-recovery drill: the cutover run once per injected failure (and rollback
//! scope where it makes a difference), each from a freshly seeded fixture, with the
//! measured RTO and RPO of each.

use crate::cutover::{scope_name, Backends, Cutover, FailAt, Options};
use rollback_core::{Outcome, Result, RollbackScope};
use std::time::Instant;

/// One drill scenario: a failure and a rollback scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// The failure injected.
    pub fail_at: FailAt,
    /// The rollback scope.
    pub scope: RollbackScope,
}

impl Scenario {
    /// `relayout/component`, etc.
    pub fn label(&self) -> String {
        format!("{}/{}", self.fail_at, scope_name(self.scope))
    }
}

/// Every failure in turn, with both scopes where they differ in principle: a failing
/// step (backfill, relayout) can be rolled back by component; a breached soak trigger is
/// not tied to one step and always rolls back the whole plan.
pub fn scenarios() -> Vec<Scenario> {
    use FailAt::*;
    use RollbackScope::*;
    [
        (Backfill, Plan),
        (Backfill, Component),
        (Relayout, Plan),
        (Relayout, Component),
        (Soak, Plan),
    ]
    .into_iter()
    .map(|(fail_at, scope)| Scenario { fail_at, scope })
    .collect()
}

/// What one scenario gave.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// The scenario.
    pub scenario: Scenario,
    /// The run.
    pub cutover: Cutover,
    /// Wall time of the run (capture to end), ms.
    pub wall_ms: u64,
}

/// Seed `backends` afresh, then run the cutover with the scenario's failure and scope.
///
/// # Errors
/// Backend errors while seeding; journal errors.
pub async fn run_scenario(
    backends: &Backends,
    base: &Options,
    scenario: Scenario,
    print_events: bool,
) -> Result<ScenarioResult> {
    let opts = Options {
        fail_at: scenario.fail_at,
        scope: scenario.scope,
        ..base.clone()
    };
    backends.seed(&opts).await?;
    let plan = backends.plan(&opts)?;
    let t = Instant::now();
    let cutover = backends.execute(&plan, &opts, print_events, false).await?;
    Ok(ScenarioResult {
        scenario,
        cutover,
        wall_ms: t.elapsed().as_millis() as u64,
    })
}

fn ms(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "n/a".into())
}

/// The RTO/RPO table (Markdown) of a drill.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut t = String::from(
        "| # | failure injected | scope | outcome | undone | kept | detection ms (breach → rollback started) | RTO ms (trigger → verified restored) | RTO target met | RPO ms | parity proven | kept re-verified | run ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, r) in results.iter().enumerate() {
        let rep = &r.cutover.report;
        let list = |v: Vec<&str>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            i + 1,
            r.scenario.fail_at,
            scope_name(r.scenario.scope),
            rep.outcome,
            list(rep.undone()),
            list(rep.kept()),
            ms(rep.detection.as_ref().map(|d| d.latency_ms)),
            ms(rep.rto_ms),
            match (rep.rto_met, rep.objectives.rto_ms) {
                (Some(true), Some(t)) => format!("yes (≤ {t})"),
                (Some(false), Some(t)) => format!("**NO** (> {t})"),
                _ => "-".to_string(),
            },
            ms(rep.rpo_ms),
            if rep.outcome == Outcome::Committed {
                "-"
            } else if rep.parity_proven() {
                "yes"
            } else {
                "NO"
            },
            match rep.kept_verified() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
            r.wall_ms,
        ));
    }
    t
}
