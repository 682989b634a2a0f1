//! rollback adapter for flags (work in progress).
