//! # rollback-s3
//!
//! The object-storage adapter of [`rollback_core`]: checkpoints of prefixes (versioned or
//! copy-based, each with a stored, digest-checked manifest), object steps (put, copy or
//! move a prefix to a new layout, rewrite through a function, delete) and manifest
//! verifiers, on Amazon S3, any S3-compatible API, or a local folder.
//!
//! Everything is written once over [`ObjectBackend`]; the versioned checkpoint and the
//! compensable delete also need [`VersionedBackend`]. [`S3Bucket`] implements both;
//! [`FolderBackend`] (files in a folder) implements [`ObjectBackend`], so on it
//! checkpoints are copy-based.
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
//! ## Connecting
//! [`S3Settings`] builds the [`aws_sdk_s3::Client`] the way the AWS SDK does by
//! default: HTTPS through rustls with the server's certificate and host name verified,
//! the standard credential chain (environment, shared config and credentials files and
//! profiles, web identity, container and instance metadata) and region chain, path-style
//! addressing for a custom endpoint and virtual-hosted for Amazon S3, and the SDK's
//! standard retries. Static keys, a custom CA bundle for a private endpoint, a profile and
//! the addressing style are options. A private endpoint over TLS, credentials from the
//! chain:
//!
//! ```no_run
//! # async fn demo() -> Result<(), rollback_core::Error> {
//! use rollback_s3::{S3Bucket, S3Settings};
//!
//! let settings = S3Settings::custom("https://s3.internal.example:8443")
//!     .ca_bundle_file("/etc/ssl/private-ca.pem")? // trust this CA only
//!     .resolve_region() // AWS_REGION, the profile's region, instance metadata
//!     .await;
//! let bucket = S3Bucket::connect(&settings, "media");
//! bucket.put("hello.txt", b"over TLS".to_vec()).await?;
//! # Ok(()) }
//! ```
//!
//! A client you built yourself (from an `SdkConfig` with `aws_sdk_s3::Client::new`, or
//! any `aws_sdk_s3::Config`) goes to [`S3Bucket::new`]. Its config must carry an HTTP
//! client: `aws_config::load_from_env` gives one when aws-config's default features are
//! on; this crate compiles the SDK without them (no second TLS stack).
//!
//! Failures to connect are typed: a certificate refused (unknown CA, a host name the
//! certificate does not name) or an endpoint that does not speak TLS, missing
//! credentials, a signature refused (403) and a missing bucket (404) are permanent
//! [`Error::Backend`](rollback_core::Error::Backend) errors that applied nothing; an
//! invalid CA bundle is [`Error::Invalid`](rollback_core::Error::Invalid) when the
//! settings are built.
//!
//! ## Pieces
//! - [`ObjectBackend`] and [`VersionedBackend`]: what the rest needs from a store of
//!   objects, each with a numbered `# Contract`; shared (`Arc`) and boxed backends are
//!   backends.
//! - [`FolderBackend`]: a local folder (atomic writes, content-hash ETags, conditional
//!   puts and copies), for the embedded case and tests without a server.
//! - [`S3Settings`]: endpoint, TLS, credentials, region, addressing and retries.
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
//! ## Tested servers and their differences
//! The whole test suite runs on moto and on Ceph radosgw 16 (a production S3
//! implementation), in plain HTTP and, for the conformance suite, over verified HTTPS.
//! What differs between them, and what this crate does about it:
//! - **Signatures**: moto accepts any key and signature; radosgw checks them and
//!   answers `403 SignatureDoesNotMatch` / `403 InvalidAccessKeyId`, which this crate
//!   reports as permanent errors (never retried as transient).
//! - **Conditional copy**: neither moto nor radosgw 16 enforces
//!   `x-amz-copy-source-if-match` (both copy whatever the source holds). This crate's
//!   copies (backups before a put or rewrite, restores) carry it, and also compare the
//!   copy's ETag with the expected one when both are plain MD5s, so a write that lands
//!   between a listing and the copy is a `Conflict` on every server.
//! - **Conditional PUT** (seen, not used by this crate): radosgw honours
//!   `If-None-Match: *` only on unversioned buckets and, on a PUT with `If-Match`,
//!   matches only an unquoted ETag on unversioned buckets and no ETag at all on
//!   versioned ones; moto honours both, quoted or not, as S3 does.
//! - **A plain-HTTP request to radosgw's TLS port** is answered by closing the
//!   connection: to the client, a dropped connection (transient; the message names the
//!   likely cause).
//!
//! Work is streamed page by page (1000 keys), with at most
//! [`S3Bucket::concurrency`] requests in flight and batch deletes, so memory stays flat
//! however many objects a prefix holds.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod bucket;
mod checkpoint;
mod config;
mod error;
#[cfg(feature = "faults")]
#[cfg_attr(docsrs, doc(cfg(feature = "faults")))]
pub mod faults;
mod folder;
mod listing;
mod manifest;
mod steps;
mod verify;

pub use aws_sdk_s3;
pub use backend::{
    ListPage, ObjectBackend, ObjectVersion, PutMode, StoreLocation, VersionPage, VersionedBackend,
};
pub use bucket::{ObjectInfo, S3Bucket, DEFAULT_CONCURRENCY, DEFAULT_STORE_PREFIX};
pub use checkpoint::{CheckpointMode, S3Checkpoint};
pub use config::{RequestCounter, S3Settings, SDK_LOG_FILTER};
pub use folder::FolderBackend;
pub use manifest::{ManifestEntry, ManifestHeader, ManifestRef, FORMAT, PART_ENTRIES};
pub use rollback_core::Secret;
pub use steps::{
    CopyPrefix, DeleteObjects, MovePrefix, PutObjects, RelayoutReceipt, RewriteFn, RewriteObjects,
};
pub use verify::{ManifestParity, ObjectAbsent, ObjectExists, ObjectPredicate, SAMPLE_CAP};
