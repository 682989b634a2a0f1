//! The steps of a migrations plan beyond the migrations' own `SqlStep`s: the ledger step,
//! and a migration's step with what the SQL scanner found it touches.

use super::ledger::Ledger;
use super::scan;
use crate::db::Database;
use crate::error::PgError;
use crate::markers;
use crate::steps::sql::SqlStep;
use async_trait::async_trait;
use rollback_core::{Context, Effect, Receipt, Reversibility, Step};

use super::Migration;

/// The first step of a migrations plan: nothing to apply; its revert puts the tool's
/// ledger back as it was before the run for migrations a checkpoint undoes (those with a
/// down already removed their row in their own transaction). Only migrations this run
/// applied (their step marker is there) are removed: a runner that lost the race for a
/// migration never removes the rows the winner wrote.
#[derive(Debug)]
pub(super) struct LedgerStep {
    pub(super) id: String,
    /// The ledger's tables (empty when an approved irreversible migration keeps its row).
    pub(super) touches: Vec<String>,
    pub(super) db: Database,
    /// The restore of every pending migration (what the spec and the dry run show).
    pub(super) restore: String,
    pub(super) ledger: Ledger,
    pub(super) migrations: Vec<Migration>,
    pub(super) before: Option<String>,
}

#[async_trait]
impl Step for LedgerStep {
    fn id(&self) -> &str {
        &self.id
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::Compensable
    }
    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "pg.migrations.ledger", "restore": self.restore })
    }
    fn describe(&self) -> String {
        format!(
            "ledger {}: on rollback, {}",
            self.id,
            scan::short(&self.restore)
        )
    }
    async fn apply(&self, ctx: &Context) -> rollback_core::Result<Receipt> {
        Ok(Receipt::new(&serde_json::json!({ "run_id": ctx.run_id() })))
    }
    async fn revert(&self, _r: Option<&Receipt>, ctx: &Context) -> rollback_core::Result<()> {
        let c = self.db.lib_client().await?;
        let mine = markers::steps_of_run(&**c, markers::DEFAULT_MARKER_SCHEMA, ctx.run_id())
            .await
            .map_err(|e| PgError::new("reading the run's step markers", &e).into_core(false))?;
        let applied: Vec<&Migration> = self
            .migrations
            .iter()
            .filter(|m| mine.contains(&m.id()))
            .collect();
        if applied.is_empty() {
            return Ok(());
        }
        let sql = self.ledger.restore_sql(&applied, self.before.as_deref());
        c.batch_execute(&sql).await.map_err(|e| {
            PgError::new(format!("{}: restoring the ledger", self.id), &e).into_core(false)
        })
    }
}

/// A [`SqlStep`] whose scan-derived answers (reversibility, effects, spec) are computed
/// once: building a plan asks them of every earlier step for every later one, and each
/// answer scans the SQL again.
#[derive(Debug)]
pub(super) struct Scanned {
    pub(super) inner: SqlStep,
    pub(super) reversibility: Reversibility,
    pub(super) touches: Vec<String>,
    pub(super) effects: Vec<Effect>,
    pub(super) spec: serde_json::Value,
    pub(super) describe: String,
}

impl Scanned {
    pub(super) fn new(inner: SqlStep) -> Self {
        Scanned {
            reversibility: inner.reversibility(),
            touches: inner.touches(),
            effects: inner.effects(),
            spec: inner.spec(),
            describe: inner.describe(),
            inner,
        }
    }
}

#[async_trait]
impl Step for Scanned {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn reversibility(&self) -> Reversibility {
        self.reversibility
    }
    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }
    fn effects(&self) -> Vec<Effect> {
        self.effects.clone()
    }
    fn spec(&self) -> serde_json::Value {
        self.spec.clone()
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    async fn apply(&self, ctx: &Context) -> rollback_core::Result<Receipt> {
        self.inner.apply(ctx).await
    }
    async fn revert(&self, r: Option<&Receipt>, ctx: &Context) -> rollback_core::Result<()> {
        self.inner.revert(r, ctx).await
    }
}
