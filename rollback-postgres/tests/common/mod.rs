//! Shared test helpers: a fresh database per test on the server of `ROLLBACK_TEST_PG_URL`,
//! login roles and comparable `pg_dump` views, from the workspace's test kit.
#![allow(unused_imports, unreachable_pub)]

pub use rollback_testkit::pg::*;
