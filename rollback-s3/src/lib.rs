//! # rollback-s3
//!
//! S3 adapter for [`rollback_core`]: checkpoints of bucket prefixes (versioned or
//! copy-based, with a stored manifest), object steps (put, copy or move a prefix to a
//! new layout, rewrite through a function, delete), and manifest verifiers — on any
//! S3-compatible API, with path-style addressing.

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
