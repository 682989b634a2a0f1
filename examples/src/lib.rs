//! Runnable programs a newcomer starts with live beside this crate as `examples/*.rs`;
//! this library holds what the larger ones share.
//!
//! - [`cutover`]: the SaaS cutover over PostgreSQL, objects and flags (the plan, its
//!   verifiers and health probe, the fixture, failure injection) used by
//!   `examples/saas_cutover/`, `examples/dr_drill.rs` and the drill test; the plan
//!   itself is `examples/saas_cutover/plan.rs`, compiled into both;
//! - [`drill`]: the disaster-recovery drill (every failure in turn, RTO/RPO table);
//! - [`faults`]: fault injection from outside the production steps (a step wrapper over a
//!   backend that fails midway);
//! - [`setup`]: real servers from the environment, or the embedded default (a throwaway
//!   PostgreSQL cluster, a local folder as the object backend — `rollback_s3::FolderBackend`
//!   — a flag file and a file journal);
//! - the throwaway PostgreSQL cluster of the embedded default is [`rollback_testkit::cluster`].
//!
//! ```text
//! cargo run -p examples --example saas_cutover -- --fail-at relayout --scope component
//! cargo run -p examples --example dr_drill
//! ```
//!
//! A plan over the three components, in short (see [`cutover::cutover_plan`] —
//! `examples/saas_cutover/plan.rs` — for the whole of it):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use examples::cutover::{FailAt, Options};
//! use rollback_core::RollbackScope;
//! let setup = examples::setup::from_env(std::path::Path::new("target/demo"), "demo").await?;
//! let opts = Options { fail_at: FailAt::Relayout, scope: RollbackScope::Component, ..Options::default() };
//! setup.backends.seed(&opts).await?;
//! let plan = setup.backends.plan(&opts)?;
//! let run = setup.backends.execute(&plan, &opts, true, true).await?;
//! println!("{}\n{}", run.summary(), run.report.to_markdown());
//! # Ok(()) }
//! ```

// The plan file (`examples/saas_cutover/plan.rs`) names this crate as `examples`, as the
// example that includes it does.
extern crate self as examples;

pub mod cutover;
pub mod drill;
pub use rollback_s3::faults;
pub mod setup;
