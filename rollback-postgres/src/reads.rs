//! Consistent reads: the `REPEATABLE READ READ ONLY` transaction in which fingerprints,
//! catalog models, undo-log diffs and verifiers see one snapshot of the database.

use crate::error::PgResultExt;
use rollback_core::Result;
use tokio_postgres::{IsolationLevel, Transaction};

/// Start a `REPEATABLE READ READ ONLY` transaction on the pooled session `obj`; `what`
/// names it in the error when it cannot start.
pub(crate) async fn read_tx<'a>(
    obj: &'a mut deadpool_postgres::Object,
    what: &str,
) -> Result<Transaction<'a>> {
    let client: &mut tokio_postgres::Client = obj;
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .ctx(what)
}
