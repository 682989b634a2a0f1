//! # rollback-s3
//!
//! The S3 adapter of [`rollback_core`]: checkpoints of bucket prefixes (versioned or
//! copy-based, each with a stored, digest-checked manifest), object steps (put, copy or
//! move a prefix to a new layout, rewrite through a function, delete) and manifest
//! verifiers, on any S3-compatible API with path-style addressing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rollback_core::{Executor, Outcome, Plan, journal::FileJournal};
//! use rollback_s3::{ManifestParity, MovePrefix, S3Bucket, S3Checkpoint, S3Settings};
//!
//! let settings = S3Settings::new("http://127.0.0.1:59000", "us-east-1", "key", "secret");
//! let bucket = S3Bucket::connect(&settings, "media");
//! let checkpoint = S3Checkpoint::new(&bucket, ""); // the whole bucket
//! let plan = Plan::builder("relayout-media")
//!     .checkpoint("storage", checkpoint.clone())
//!     .step("storage", MovePrefix::new("move-v1-v2", &bucket, "v1/", "v2/"), &[])
//!     .verify_after(
//!         "move-v1-v2",
//!         ManifestParity::against_baseline("v2-holds-v1", &checkpoint).mapped("v1/", "v2/"),
//!     )
//!     .build()?;
//! let report = Executor::new(FileJournal::open("/var/lib/migrations")?).run(&plan).await?;
//! assert!(report.outcome == Outcome::Committed || report.parity_proven());
//! println!("{}", report.to_markdown());
//! # Ok(()) }
//! ```
//!
//! ## Pieces
//! - [`S3Settings`] builds an [`aws_sdk_s3::Client`] for an endpoint with path-style
//!   addressing, a fixed region, static credentials, plain HTTP and the SDK's standard
//!   retries (throttling and transient network errors are retried with backoff). Bring
//!   your own client with [`S3Bucket::new`] (e.g. one with the SDK's default TLS stack).
//! - [`S3Bucket`] is the handle everything shares: client, bucket, concurrency, and the
//!   *store* — where snapshots and step bookkeeping live (`.rollback/` in the bucket by
//!   default; excluded from every listing and fingerprint of this crate).
//! - [`S3Checkpoint`] captures a manifest of a prefix; on a versioned bucket it copies
//!   nothing and restores exactly the captured versions, otherwise it keeps server-side
//!   copies. Its fingerprint is blake3 over (key, size, ETag) in key order.
//! - Steps: [`PutObjects`], [`CopyPrefix`], [`MovePrefix`], [`RewriteObjects`],
//!   [`DeleteObjects`] — idempotent apply and revert, `revert(None)` undoes a partial
//!   apply, progress and cancellation at batch boundaries.
//! - Verifiers: [`ManifestParity`], [`ObjectExists`], [`ObjectAbsent`],
//!   [`ObjectPredicate`].
//!
//! Errors are [`rollback_core::Error`]s: throttling that outlasts the SDK's retries is
//! [`Error::Transient`](rollback_core::Error::Transient) with `maybe_applied: false`; a
//! timeout or dropped connection during a write is `Transient` with
//! `maybe_applied: true`. No error, `Debug` output or log event of this crate carries
//! credentials (see [`SDK_LOG_FILTER`] for the SDK's own debug logs).
//!
//! Work is streamed page by page (1000 keys), with at most
//! [`S3Bucket::concurrency`] requests in flight and batch deletes, so memory stays flat
//! however many objects a prefix holds.

mod bucket;
mod checkpoint;
mod config;
mod error;
mod manifest;
mod steps;
mod verify;

pub use aws_sdk_s3;
pub use bucket::{ObjectInfo, S3Bucket, Store, DEFAULT_CONCURRENCY, DEFAULT_STORE_PREFIX};
pub use checkpoint::{CheckpointMode, S3Checkpoint};
pub use config::{RequestCounter, S3Settings, Secret, SDK_LOG_FILTER};
pub use manifest::{ManifestEntry, ManifestHeader, ManifestRef, FORMAT, PART_ENTRIES};
pub use steps::{
    CopyPrefix, DeleteObjects, MovePrefix, PutObjects, RelayoutReceipt, RewriteFn, RewriteObjects,
};
pub use verify::{ManifestParity, ObjectAbsent, ObjectExists, ObjectPredicate, SAMPLE_CAP};
