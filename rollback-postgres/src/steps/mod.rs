//! Migration steps that apply exactly once per run, each recording its marker in
//! `_rollback.applied_steps` (see [`crate::markers`]): [`sql`] ([`crate::SqlStep`], `up`
//! / `down` SQL) and [`backfill`] ([`crate::Backfill`], a batched, resumable `UPDATE`).

pub(crate) mod backfill;
pub(crate) mod sql;

use std::time::Duration;

/// Default `lock_timeout` of a step: a migration waits at most this long for a lock, so it
/// never queues traffic behind it for longer.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `statement_timeout` of a step.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
