//! rollback adapter for postgres (work in progress).
