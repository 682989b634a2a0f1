//! Checkpoints of PostgreSQL state: [`copy`] ([`crate::TableSnapshot`], table copies
//! inside the database), [`undo_log`] ([`crate::TableUndoLog`], triggers that log prior
//! images), [`schema`] ([`crate::SchemaSnapshot`], the catalog of schemas), and
//! [`reconcile`], the DDL that brings a table's definition back to a captured one, which
//! their restores share.

pub(crate) mod copy;
pub(crate) mod reconcile;
pub(crate) mod schema;
pub(crate) mod undo_log;

use crate::db::Database;
use crate::error::PgResultExt;
use crate::ident::{quote_ident, Table};
use rollback_core::{Error, Result, Snapshot};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How soon a lock wait of a checkpoint's transaction checks for deadlocks — which is
/// also when PostgreSQL cancels an autovacuum worker holding the lock it waits for
/// (anti-wraparound vacuums excepted). The server default, 1 s, stalled a 10-row
/// rollback of a freshly vacuumable table for that long.
pub(crate) const DEADLOCK_TIMEOUT_MS: u64 = 10;

/// The lock waits of a table checkpoint's capture, restore or discard: `SET LOCAL
/// lock_timeout`, so that a lock not granted in time fails with a transient error, which
/// the executor retries; and `deadlock_timeout` lowered for the transaction to
/// [`DEADLOCK_TIMEOUT_MS`] (never raised) where the role may set it — a superuser, or a
/// role granted `SET` on it (PostgreSQL 15+) — so that an autovacuum worker in the way is
/// cancelled at once instead of after a second; for other roles it stays as it is.
pub(crate) async fn set_lock_waits(
    tx: &tokio_postgres::Transaction<'_>,
    d: Duration,
) -> Result<()> {
    tx.batch_execute(&lock_waits_sql(d))
        .await
        .ctx("setting lock_timeout and deadlock_timeout")
}

/// The statements of [`set_lock_waits`].
fn lock_waits_sql(d: Duration) -> String {
    format!(
        "SET LOCAL lock_timeout = '{}ms'; \
         DO $rb$BEGIN \
           IF pg_catalog.current_setting('deadlock_timeout')::pg_catalog.interval OPERATOR(pg_catalog.>) '{DEADLOCK_TIMEOUT_MS} ms'::pg_catalog.interval THEN \
             PERFORM pg_catalog.set_config('deadlock_timeout', '{DEADLOCK_TIMEOUT_MS}ms', true); \
           END IF; \
         EXCEPTION WHEN insufficient_privilege THEN NULL; \
         END$rb$",
        d.as_millis().max(1)
    )
}

/// A table checkpoint's descriptor read back from `snap`: the snapshot must be of
/// `resource` and of `kind`, its descriptor must parse (`what` names it in the error), and
/// it must cover exactly `tables` (as `tables_of` lists them), else a typed error.
pub(crate) fn read_descriptor<D: DeserializeOwned>(
    snap: &Snapshot,
    resource: &str,
    kind: &str,
    what: &str,
    tables: &[Table],
    tables_of: impl Fn(&D) -> Vec<Table>,
) -> Result<D> {
    snap.ensure_resource(resource)?;
    if snap.kind != kind {
        return Err(Error::invalid(format!(
            "snapshot kind {} is not {kind}",
            snap.kind
        )));
    }
    let d = D::deserialize(&snap.descriptor)
        .map_err(|e| Error::invalid(format!("malformed {what}: {e}")))?;
    let found = tables_of(&d);
    if found != tables {
        return Err(Error::WrongResource {
            expected: resource.to_string(),
            found: format!("tables {found:?}"),
        });
    }
    Ok(d)
}

/// Create `schema` unless it exists (safe under concurrency).
pub(crate) async fn ensure_schema(db: &Database, schema: &str) -> Result<()> {
    let c = db.lib_client().await?;
    let exists = c
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .ctx("looking up schema")?;
    if exists.is_some() {
        return Ok(());
    }
    match c
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(schema)
        ))
        .await
    {
        Ok(()) => Ok(()),
        // A concurrent creator won the race.
        Err(e) if matches!(e.code().map(|c| c.code()), Some("23505") | Some("42P06")) => Ok(()),
        Err(e) => Err(crate::error::PgError::new("creating schema", &e).into_core(false)),
    }
}
