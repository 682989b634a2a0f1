//! User triggers around a restore: the SQL that sets a trigger's (or a rule's) enabled
//! mode as `pg_trigger.tgenabled` / `pg_rewrite.ev_enabled` spell it, and the restores'
//! switching of a table's enabled user triggers off for their own writes and back on.

use crate::error::PgResultExt;
use crate::ident::{quote_ident, Table};
use rollback_core::Result;
use tokio_postgres::Transaction;

/// The `ALTER TABLE` clause for an enabled mode: `O` (origin), `R` (replica), `A`
/// (always) or `D` (disabled).
fn mode_clause(mode: &str) -> &'static str {
    match mode {
        "R" => "ENABLE REPLICA",
        "A" => "ENABLE ALWAYS",
        "D" => "DISABLE",
        _ => "ENABLE",
    }
}

/// Set trigger `name` of `t` to `mode` (see [`mode_clause`]).
pub(crate) fn trigger_mode_sql(t: &Table, name: &str, mode: &str) -> String {
    format!(
        "ALTER TABLE {} {} TRIGGER {}",
        t.quoted(),
        mode_clause(mode),
        quote_ident(name)
    )
}

/// Set rule `name` of the table `tq` (already quoted) to `mode` (see [`mode_clause`]).
pub(crate) fn rule_mode_sql(tq: &str, name: &str, mode: &str) -> String {
    format!(
        "ALTER TABLE {tq} {} RULE {}",
        mode_clause(mode),
        quote_ident(name)
    )
}

/// User triggers currently enabled on `t`: (name, enabled mode), leaving out those whose
/// name starts with `except_prefix` (the undo logs' own).
async fn enabled_user_triggers(
    tx: &Transaction<'_>,
    t: &Table,
    except_prefix: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let rows = match except_prefix {
        None => tx
            .query(
                &format!(
                    "SELECT tgname::text, tgenabled::text FROM pg_catalog.pg_trigger \
                     WHERE tgrelid = {}::regclass AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY tgname",
                    t.regclass_literal()
                ),
                &[],
            )
            .await,
        Some(prefix) => tx
            .query(
                &format!(
                    "SELECT tgname::text, tgenabled::text FROM pg_catalog.pg_trigger \
                     WHERE tgrelid = {}::regclass AND NOT tgisinternal AND tgenabled <> 'D' \
                       AND NOT starts_with(tgname::text, $1) ORDER BY tgname",
                    t.regclass_literal()
                ),
                &[&prefix],
            )
            .await,
    }
    .ctx("reading triggers")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Disable the enabled user triggers of `tables` (but those starting with
/// `except_prefix`) for the rest of the restore, returning (table, trigger, mode) for
/// [`reenable`].
pub(crate) async fn disable_for_restore(
    tx: &Transaction<'_>,
    tables: &[&Table],
    except_prefix: Option<&str>,
) -> Result<Vec<(Table, String, String)>> {
    let mut disabled = Vec::new();
    for &t in tables {
        for (name, mode) in enabled_user_triggers(tx, t, except_prefix).await? {
            tx.batch_execute(&trigger_mode_sql(t, &name, "D"))
                .await
                .ctx("disabling trigger for restore")?;
            disabled.push((t.clone(), name, mode));
        }
    }
    Ok(disabled)
}

/// Put the triggers [`disable_for_restore`] disabled back in their modes.
pub(crate) async fn reenable(
    tx: &Transaction<'_>,
    disabled: &[(Table, String, String)],
) -> Result<()> {
    for (t, name, mode) in disabled {
        tx.batch_execute(&trigger_mode_sql(t, name, mode))
            .await
            .ctx("re-enabling trigger")?;
    }
    Ok(())
}
