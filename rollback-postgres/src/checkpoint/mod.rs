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
use crate::ident::quote_ident;
use rollback_core::Result;

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
