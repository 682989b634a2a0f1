//! Servers and fixtures shared by the workspace's tests and examples (not published), as
//! `tower-test` is for tower:
//!
//! - [`cluster`]: a throwaway PostgreSQL cluster from the machine's own binaries (the
//!   examples' embedded default database);
//! - [`pg`]: a fresh database per test on the server `scripts/test` starts
//!   (`ROLLBACK_TEST_PG_URL`), login roles, and `pg_dump` views that compare equal when
//!   the schema and data are the same ([`pg::dump`], [`pg::sort_copy_blocks`]);
//! - [`unleash`]: the test Unleash's URLs and tokens, unique flag names, its Admin API
//!   for setup and its client API (what an application sees);
//! - [`env`](mod@env): the variables `scripts/test` exports, with a message that says so when one
//!   is missing.
//!
//! Independent checks live here on purpose: a test compares what the library did with
//! `pg_dump` or Unleash's own client API, never with the library's own fingerprints.

pub mod cluster;
pub mod env;
pub mod pg;
pub mod unleash;
