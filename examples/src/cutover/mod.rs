//! The SaaS cutover: one plan over a PostgreSQL database, an object store and feature
//! flags, with checkpoints of every resource, parity and referential-integrity verifiers,
//! a health trigger during a soak window, a status-page notifier, and failure injection.
//!
//! The story: customers' `name` is split into `first_name` / `last_name` (database), their
//! attachments move from `v1/{customer_id}/…` to `v2/{customer_id}/…` (storage), and the
//! application's new code paths are rolled out behind two flags (flags):
//! `new_name_fields` (after the backfill) and `use_v2_storage` (after the move).
//!
//! ```text
//! database  add-name-columns → backfill-names → add-name-constraint
//!                                   │                 │
//! flags                             └─► rollout-new-name-fields (10% → 50% → 100%)
//! storage   move-attachments-v1-v2
//!                 │
//! flags           └─► rollout-use-v2-storage (10% → 50% → 100%)
//! ```
//!
//! The flags are the kill switch: each one depends on the change it exposes, so a
//! rollback turns it off *before* that change is undone, and the application stops
//! reading the new columns or the new layout first. Each flag has its own checkpoint, so
//! a partial rollback ([`RollbackScope::Component`]) can keep one and undo the other.
//!
//! The plan is [`cutover_plan`], in `examples/saas_cutover/plan.rs` beside the example
//! that runs it. The rest is here, one file each: `backends.rs` ([`Backends`]: a
//! [`Database`](rollback_postgres::Database), an
//! [`ObjectBackend`](rollback_s3::ObjectBackend), a
//! [`FlagProvider`](rollback_flags::FlagProvider) and a journal, and
//! [`Backends::execute`] running the plan over them), `fixture.rs` (what
//! [`Backends::seed`] lays down), `storage.rs` (the object store's checkpoint, the move
//! and its parity check), `probes.rs` (the application's read path as a health probe,
//! rows against objects, the status page).

mod backends;
mod fixture;
#[path = "../../saas_cutover/plan.rs"]
mod plan;
mod probes;
mod storage;

pub use backends::{summary, Backends, Cutover, RTO_TARGET};
pub use fixture::{attachment, fixture_files, owner_of, seed_database, seed_flags, seed_objects};
pub use plan::cutover_plan;
pub use probes::{rollout_bucket, AttachmentsResolve, Chaos, ReadPathProbe, StatusPage};
pub use storage::{
    layout_parity, list_objects, move_batch, move_step, reset_storage, storage_checkpoint,
};

use rollback_core::{Error, RollbackScope};
use rollback_postgres::Table;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The old layout of attachments.
pub const FROM: &str = "v1/";
/// The new layout of attachments.
pub const TO: &str = "v2/";

/// Step ids, as they appear in reports.
pub mod steps {
    /// `ALTER TABLE customers ADD COLUMN first_name, last_name` (compensable).
    pub const ADD_COLUMNS: &str = "add-name-columns";
    /// The batched backfill of the new columns (restore-only).
    pub const BACKFILL: &str = "backfill-names";
    /// The validated `CHECK` constraint on the new columns (compensable).
    pub const CONSTRAINT: &str = "add-name-constraint";
    /// The staged rollout of `new_name_fields` (compensable).
    pub const ROLLOUT_NAMES: &str = "rollout-new-name-fields";
    /// The move of every attachment from `v1/` to `v2/` (compensable).
    pub const MOVE: &str = "move-attachments-v1-v2";
    /// The staged rollout of `use_v2_storage` (compensable).
    pub const ROLLOUT_STORAGE: &str = "rollout-use-v2-storage";
}

/// The shortest soak window of the soak drill ([`FailAt::Soak`]): the breach ends it.
pub const SOAK_DRILL_WINDOW: Duration = Duration::from_secs(20);

/// Which failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailAt {
    /// Nothing fails: the plan commits after the soak window.
    None,
    /// The backfill fails midway: a batch hits a poisoned row (some batches committed).
    Backfill,
    /// The object move fails midway (drill switch of the move step).
    Relayout,
    /// The application's error rate breaches the health threshold during the soak window.
    Soak,
}

impl FromStr for FailAt {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(FailAt::None),
            "backfill" => Ok(FailAt::Backfill),
            "relayout" => Ok(FailAt::Relayout),
            "soak" => Ok(FailAt::Soak),
            other => Err(format!(
                "--fail-at {other:?}: expected backfill, relayout, soak or none"
            )),
        }
    }
}

impl fmt::Display for FailAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailAt::None => "none",
            FailAt::Backfill => "backfill",
            FailAt::Relayout => "relayout",
            FailAt::Soak => "soak",
        })
    }
}

/// Parse `plan` or `component`.
///
/// # Errors
/// A message naming the accepted values.
pub fn parse_scope(s: &str) -> std::result::Result<RollbackScope, String> {
    match s {
        "plan" => Ok(RollbackScope::Plan),
        "component" => Ok(RollbackScope::Component),
        other => Err(format!("--scope {other:?}: expected plan or component")),
    }
}

/// `plan` or `component`.
pub fn scope_name(s: RollbackScope) -> &'static str {
    match s {
        RollbackScope::Plan => "plan",
        RollbackScope::Component => "component",
    }
}

/// How a cutover runs: data sizes, timings, the failure to inject, the rollback scope.
#[derive(Debug, Clone)]
pub struct Options {
    /// The failure to inject.
    pub fail_at: FailAt,
    /// Whole-plan or component rollback.
    pub scope: RollbackScope,
    /// Customers in the fixture.
    pub customers: u64,
    /// Attachments (objects) in the fixture.
    pub attachments: u64,
    /// Rows per backfill batch.
    pub batch: u64,
    /// Pause between backfill batches.
    pub throttle: Duration,
    /// Rollout stages of both flags (percentages).
    pub stages: Vec<u32>,
    /// Pause after each rollout stage, before its health check.
    pub stage_pause: Duration,
    /// The soak window.
    pub soak: Duration,
    /// How often the health trigger is polled during the soak window.
    pub poll: Duration,
    /// Highest error rate the application may show (0.01 = 1 %).
    pub max_error_rate: f64,
    /// Release baseline snapshots once a rollback proved their resource back at its
    /// baseline (snapshots of resources left migrated are kept).
    pub discard_proven_snapshots: bool,
    /// Take the health trigger from a Prometheus instead of the built-in read-path probe:
    /// its URL and a PromQL query giving the error rate (compared with
    /// `max_error_rate`).
    pub prometheus: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fail_at: FailAt::None,
            scope: RollbackScope::Plan,
            customers: 2_000,
            attachments: 200,
            batch: 250,
            throttle: Duration::from_millis(10),
            stages: vec![10, 50, 100],
            stage_pause: Duration::from_millis(100),
            soak: Duration::from_millis(1_500),
            poll: Duration::from_millis(200),
            max_error_rate: 0.01,
            discard_proven_snapshots: true,
            prometheus: None,
        }
    }
}

impl Options {
    /// The customer whose row poisons the backfill (in a middle batch).
    pub fn poisoned_customer(&self) -> u64 {
        self.customers / 2 + 1
    }

    /// After how many objects the move fails (half of them).
    pub fn relayout_fail_after(&self) -> u64 {
        (self.attachments / 2).max(1)
    }
}

/// Names of the things a cutover creates: schema, plan, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// PostgreSQL schema of `customers` and `attachments`.
    pub schema: String,
    /// Plan name (also the lease key).
    pub plan: String,
    /// Flag exposing the new name fields.
    pub new_name_fields: String,
    /// Flag switching reads to the `v2/` layout.
    pub use_v2_storage: String,
}

impl Names {
    /// Schema `saas`, plan `saas-cutover`, flags `<flag_prefix>new_name_fields` and
    /// `<flag_prefix>use_v2_storage`.
    pub fn new(flag_prefix: &str) -> Self {
        Names {
            schema: "saas".into(),
            plan: "saas-cutover".into(),
            new_name_fields: format!("{flag_prefix}new_name_fields"),
            use_v2_storage: format!("{flag_prefix}use_v2_storage"),
        }
    }

    /// `<schema>.customers`.
    pub fn customers(&self) -> Table {
        Table::new(&self.schema, "customers")
    }

    /// `<schema>.attachments`.
    pub fn attachments(&self) -> Table {
        Table::new(&self.schema, "attachments")
    }
}

/// A PostgreSQL driver error as the library's error.
pub(crate) fn pg(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend("postgres", e)
}
