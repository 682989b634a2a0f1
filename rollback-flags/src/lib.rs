//! # rollback-flags
//!
//! Feature-flag snapshots, staged rollouts and kill switches for `rollback`, over real
//! flag providers: [Unleash](UnleashProvider) (Admin API), a [flagd-format JSON
//! file](FileProvider) (the embedded default) and [memory](MemoryProvider) — plus an
//! [OpenFeature bridge](OpenFeatureBridge) so an application evaluates the very flags a
//! migration controls.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use rollback_core::{Executor, Outcome, Plan, Verdict};
//! use rollback_core::journal::MemoryJournal;
//! use rollback_flags::{FileProvider, FlagCheckpoint, FlagProvider, FlagState, StagedRollout};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let flags = Arc::new(FileProvider::new(dir.path().join("flags.json")));
//! flags.put("new-checkout", &FlagState::off()).await?;
//!
//! // A health check that fails: the rollout stops and the flag goes back to off.
//! struct Unhealthy;
//! #[async_trait::async_trait]
//! impl rollback_core::Verifier for Unhealthy {
//!     fn id(&self) -> &str { "error-rate" }
//!     async fn verify(&self, _: &rollback_core::Context) -> rollback_core::Result<Verdict> {
//!         Ok(Verdict::fail("error rate 7% > 1%"))
//!     }
//! }
//! let plan = Plan::builder("checkout-rollout")
//!     .checkpoint("flags", FlagCheckpoint::flag(flags.clone(), "new-checkout"))
//!     .step("flags", StagedRollout::new("roll-out", flags.clone(), "new-checkout", &[1, 10, 50, 100])
//!         .health_check(Arc::new(Unhealthy)), &[])
//!     .build()?;
//! let report = Executor::new(MemoryJournal::new()).run(&plan).await?;
//! assert_eq!(report.outcome, Outcome::RolledBack);
//! assert!(report.parity_proven());
//! assert_eq!(flags.get("new-checkout").await?, Some(FlagState::off()));
//! # Ok::<(), rollback_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## Pieces
//! - [`FlagProvider`]: read and write [`FlagState`] (enabled, strategies with rollout
//!   percentage, variants) in one scope; [`UnleashProvider`], [`FileProvider`],
//!   [`MemoryProvider`].
//! - [`FlagCheckpoint`]: a snapshot of all flags, a prefix, a set or one flag of a scope,
//!   carried inline with a blake3 digest over a canonical encoding; restore writes back
//!   exactly and verifies by reading back. Resource ids `flags:<kind>:<scope>[/<flag>]`.
//! - Steps: [`SetFlag`] (and [`SetFlag::kill_switch`], [`SetFlag::create`]), [`StagedRollout`] with a health
//!   check between stages; all compensable, with the prior state in the receipt and in the
//!   journaled cursor (see [`steps`]).
//! - Verifiers: [`FlagsMatchSnapshot`] (the run's baseline, evidence per differing flag)
//!   and [`FlagsMatch`] (expected states); [`UnleashReady`], a precondition that the
//!   server, token, project and environment can take the plan's changes.
//! - [`OpenFeatureBridge`]: an `open-feature` `FeatureProvider` over any provider.
//!
//! ## Unleash over HTTPS
//!
//! An `https://` URL works with the platform's roots; a private CA is added with
//! [`UnleashProvider::with_root_certificate_pem`], and a team's own configured client
//! (proxies, client certificates) is used with [`UnleashProvider::with_client`]. A
//! certificate from an unknown CA or for another host, a bad token (401/403) and a
//! missing project are permanent errors, not retried:
//!
//! ```no_run
//! # async fn demo() -> rollback_core::Result<()> {
//! use rollback_flags::{FlagProvider, UnleashProvider};
//! let ca = std::fs::read("/etc/ssl/internal-ca.pem").expect("CA file");
//! let unleash = UnleashProvider::new("https://unleash.internal", "*:*.admin-token", "default", "production")?
//!     .with_root_certificate_pem(&ca)?;
//! println!("{:?}", unleash.get("new-checkout").await?);
//! # Ok(()) }
//! ```
//!
//! ## Creating and removing flags
//!
//! [`SetFlag::create`] creates a flag a migration introduces and removes it on rollback.
//! On Unleash, removing is archiving, waiting until Unleash has recorded the archive in
//! its flag lifecycle, then deleting from the archive (deleting at once races Unleash's
//! own asynchronous archive handling, which crashes Unleash 6); a flag whose archive is
//! not recorded in time is left archived, where clients no longer see it.
//!
//! Credentials (the Unleash admin token) are held in a [`Secret`] and never appear in
//! `Debug`, errors, logs or reports.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod checkpoint;
mod file;
mod model;
#[cfg(feature = "openfeature")]
mod openfeature;
mod provider;
pub mod steps;
#[cfg(feature = "unleash")]
mod unleash;
mod verify;

pub use checkpoint::{FlagCheckpoint, FlagSnapshot, Selection, SNAPSHOT_KIND};
pub use file::FileProvider;
pub use model::{
    canonical_json, digest_flags, FlagChange, FlagState, Payload, Strategy, Variant,
    ROLLOUT_STRATEGY,
};
#[cfg(feature = "openfeature")]
#[cfg_attr(docsrs, doc(cfg(feature = "openfeature")))]
pub use openfeature::{bucket, evaluate_bool, select_variant, BoolEvaluation, OpenFeatureBridge};
pub use provider::{flag_resource, scope_resource, FlagProvider, MemoryProvider};
pub use rollback_core::Secret;
pub use steps::{kill_switch, FlagReceipt, HealthCheckFailed, SetFlag, StagedRollout};
#[cfg(feature = "unleash")]
#[cfg_attr(docsrs, doc(cfg(feature = "unleash")))]
pub use unleash::{ServerFacts, UnleashProvider, UnleashReady};
pub use verify::{Expect, FlagsMatch, FlagsMatchSnapshot};

/// Re-exported for programs that use the OpenFeature bridge without depending on
/// `open-feature` themselves.
#[cfg(feature = "openfeature")]
#[cfg_attr(docsrs, doc(cfg(feature = "openfeature")))]
pub use open_feature;
