//! # rollback-core
//!
//! Reversible migrations. Before a change, capture verifiable checkpoints of every
//! resource it touches; apply the change as a journaled plan of steps; check integrity
//! automatically; and when anything goes wrong — a failed step, a failed check, a breached
//! health threshold, a killed process — return every resource to its known-good state
//! and prove it.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use rollback_core::{Executor, Plan, report::Outcome};
//! use rollback_core::journal::FileJournal;
//! use rollback_core::sim::{SimWorld, SetKey, Faults};
//!
//! let world = SimWorld::new();
//! world.set("db", "schema", "v1");
//! let plan = Plan::builder("upgrade")
//!     .checkpoint("db", world.checkpoint("db"))
//!     .step("db", SetKey::new("bump", &world, "db", "schema", "v2"), &[])
//!     .step("db", SetKey::new("backfill", &world, "db", "rows", "migrated"), &["bump"])
//!     .build()?;
//! world.faults().fail_apply("backfill", 1); // force a failure
//!
//! let dir = tempfile::tempdir().unwrap();
//! let report = Executor::new(FileJournal::open(dir.path())?).run(&plan).await?;
//! assert_eq!(report.outcome, Outcome::RolledBack);
//! assert!(report.parity_proven());
//! assert_eq!(world.get("db", "schema").as_deref(), Some("v1"));
//! println!("{}", report.to_markdown());
//! # Ok::<(), rollback_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! The three traits are [`Checkpoint`], [`Step`] and [`Verifier`]; a [`Plan`] ties them
//! into a DAG; the [`Executor`] runs it against a [`journal::Journal`]. The `sim`
//! feature's [`sim`] module simulates resources and faults; the `conformance` feature
//! exposes the checks every adapter runs on its real backend. No feature is on by default.
//!
//! ## Components and resources: two names, two jobs
//!
//! | | a **component** label | a **resource** id |
//! |---|---|---|
//! | written by | the plan's author: `.checkpoint("database", cp)`, `.step("database", s, &[])` | the adapter: [`Checkpoint::resource`], [`Step::touches`] |
//! | looks like | any word: `database`, `storage`, `flags` | a stable id of what changes: `postgres:public.customers`, `s3:bucket/v1/`, `flags:unleash:default/production/new-checkout` |
//! | used for | grouping: a component-scoped rollback ([`RollbackScope::Component`]) undoes the failed step's component and what depends on it; reports and notices name components | coverage: a step's `touches` must name the resources of the checkpoints that cover it (a step touching a resource no checkpoint names is a [`Risk::NoCheckpoint`]), and parity is proven per resource |
//!
//! A step's `touches()` must name exactly what it changes, with the same ids the
//! checkpoints use: the conformance suite checks it against what the step changed.
//!
//! ## Writing an adapter: where the per-run idempotency marker lives
//!
//! The executor may call [`Step::apply`] again for the same step of the same run (a retry
//! after a timeout, a resume after a crash), and [`Step::revert`] with no receipt when the
//! outcome was never journaled. A step therefore keeps a marker keyed by
//! ([`Context::run_id`], [`Step::id`]) **in the backend it changes, written atomically
//! with the change** where the backend allows it, holding what the receipt holds:
//!
//! - `apply` finds the marker → returns the recorded receipt without changing anything;
//! - `revert` with `None` reads the marker to learn what to undo (no marker: the apply
//!   never happened, nothing to do), and removes it with the undo.
//!
//! Where the adapters here keep theirs: `rollback-postgres` in the table
//! `_rollback.applied_steps (run_id, step_id, receipt)`, written in the step's own
//! transaction (its `markers` module); `rollback-s3` in step-state objects under
//! `<store prefix>steps/<run id>/<step id>/` of the store bucket; `rollback-flags` in the
//! step's journaled resume cursor ([`Context::save_cursor`]), written before the flag;
//! the simulation (`sim::SetKey`) in a map beside the simulated resources.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod checkpoint;
mod context;
mod describe;
mod digest;
mod error;
pub mod events;
mod executor;
pub mod journal;
mod lease;
mod live;
pub mod plan;
mod progress;
pub mod report;
mod secret;
mod state;
mod step;
mod verifier;

#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

pub use checkpoint::{Checkpoint, Discarded, Proof, Restored, Snapshot};
pub use context::Context;
pub use describe::{
    CheckpointDescription, PlanDescription, StepDescription, TriggerDescription,
    VerifierDescription,
};
pub use digest::{Digest, Hasher};
pub use error::{Error, Result};
pub use events::{Event, Notice, Notifier, RunEvent};
pub use executor::{
    Executor, Rehearsal, ResumePolicy, RollbackScope, RunPolicy, SnapshotRetention,
};
pub use journal::TailAssumption;
pub use lease::Fence;
pub use plan::{
    Objectives, Plan, PlanBuilder, PlanError, Risk, StepOptions, Trigger, Undo, ROLLBACK_LEAD,
};
pub use progress::ConsoleProgress;
pub use report::{Outcome, RunReport};
pub use secret::Secret;
pub use step::{Effect, Receipt, Reversibility, Step};
pub use tokio_util::sync::CancellationToken;
pub use verifier::{Status, Verdict, Verifier};

/// Whether the resource id `container` covers the resource id `part`. Resource ids are
/// paths: `a/b` lies inside `a`; a last segment ending in `*` covers every id that
/// starts with what precedes the `*` (`flags:unleash:p/new-*`); a last segment `{x,y}`
/// covers `x` and `y` (and what lies inside them). Every id covers itself.
///
/// ```
/// use rollback_core::resource_contains;
/// assert!(resource_contains("s3:bucket/v1", "s3:bucket/v1/a.txt"));
/// assert!(!resource_contains("s3:bucket/v1", "s3:bucket/v10"));
/// assert!(resource_contains("flags:memory:app/new-*", "flags:memory:app/new-ui"));
/// assert!(resource_contains("flags:memory:app/{a,b}", "flags:memory:app/b"));
/// assert!(!resource_contains("flags:memory:app/{a,b}", "flags:memory:app/c"));
/// ```
pub fn resource_contains(container: &str, part: &str) -> bool {
    if container == part {
        return true;
    }
    let under =
        |c: &str| part.len() > c.len() && part.starts_with(c) && part[c.len()..].starts_with('/');
    if under(container) {
        return true;
    }
    let (base, last) = match container.rsplit_once('/') {
        Some((b, l)) => (format!("{b}/"), l),
        None => (String::new(), container),
    };
    if let Some(prefix) = last.strip_suffix('*') {
        return part.starts_with(&format!("{base}{prefix}"));
    }
    if let Some(set) = last.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
        return set.split(',').any(|x| {
            let one = format!("{base}{x}");
            one == part || (part.starts_with(&one) && part[one.len()..].starts_with('/'))
        });
    }
    false
}

/// Milliseconds since the Unix epoch (the clock every record and snapshot uses).
pub fn now_ms() -> u64 {
    journal::now_ms()
}
