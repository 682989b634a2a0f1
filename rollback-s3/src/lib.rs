//! rollback adapter for s3 (work in progress).
