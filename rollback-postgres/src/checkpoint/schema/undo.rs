//! The DDL a [`super::SchemaSnapshot`] restore runs to turn the live catalog back into
//! the captured one.

use crate::catalog::{self, SchemaModel};
use crate::checkpoint::reconcile;
use crate::error::PgResultExt;
use crate::ident::{quote_ident, quote_literal, Table};
use rollback_core::{Error, Result};
use tokio_postgres::Transaction;

/// Run one statement of the restore, counting it in `n`.
async fn exec(tx: &Transaction<'_>, sql: &str, n: &mut usize) -> Result<()> {
    tracing::debug!(sql, "schema restore");
    *n += 1;
    tx.batch_execute(sql).await.ctx("schema restore")
}

/// Run DDL turning `live` into `target`; returns the number of statements. The order
/// matters: what depends on an object is dropped before it and created after it.
pub(super) async fn undo(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
) -> Result<usize> {
    refuse_dropped_tables(live, target)?;
    let mut n = 0;
    // a. Views added or changed since: drop (re-created below).
    drop_changed_views(tx, live, target, &mut n).await?;
    // b. Tables and sequences added since.
    drop_added_relations(tx, live, target, &mut n).await?;
    // c. Schemas, enum types, functions and sequences that went away or changed.
    create_missing_schemas(tx, live, target, &mut n).await?;
    restore_enums(tx, live, target, &mut n).await?;
    restore_functions(tx, live, target, &mut n).await?;
    restore_sequences(tx, live, target, &mut n).await?;
    // d. Tables.
    restore_tables(tx, live, target, &mut n).await?;
    // e. Views back, in an order that satisfies their dependencies.
    recreate_views(tx, live, target, &mut n).await?;
    // f. Functions, enum types and schemas created since.
    drop_added_functions(tx, live, target, &mut n).await?;
    drop_added_enums(tx, live, target, &mut n).await?;
    drop_added_schemas(tx, live, target, &mut n).await?;
    Ok(n)
}

/// Refuse when a table was dropped since capture: its data is not in a schema snapshot.
fn refuse_dropped_tables(live: &SchemaModel, target: &SchemaModel) -> Result<()> {
    for k in target.tables.keys() {
        if !live.tables.contains_key(k) {
            return Err(Error::conflict(format!(
                "table {k} was dropped since capture; restore it with a table snapshot (its data is not in a schema snapshot)"
            )));
        }
    }
    Ok(())
}

/// Drop the views added or changed since capture (re-created by [`recreate_views`]).
async fn drop_changed_views(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for (k, v) in &live.views {
        if target.views.get(k) != Some(v) {
            let kind = if v.materialized {
                "MATERIALIZED VIEW"
            } else {
                "VIEW"
            };
            exec(
                tx,
                &format!(
                    "DROP {kind} IF EXISTS {}.{}",
                    quote_ident(&v.schema),
                    quote_ident(&v.name)
                ),
                n,
            )
            .await?;
        }
    }
    Ok(())
}

/// Drop the tables and sequences added since capture.
async fn drop_added_relations(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for (k, t) in &live.tables {
        if !target.tables.contains_key(k) {
            exec(
                tx,
                &format!("DROP TABLE {}", Table::new(&t.schema, &t.name).quoted()),
                n,
            )
            .await?;
        }
    }
    for (k, s) in &live.sequences {
        if !target.sequences.contains_key(k) {
            exec(tx, &format!("DROP SEQUENCE {}", s.quoted()), n).await?;
        }
    }
    Ok(())
}

/// Create the schemas dropped since capture.
async fn create_missing_schemas(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for s in &target.schemas {
        if !live.schemas.contains(s) {
            exec(tx, &format!("CREATE SCHEMA {}", quote_ident(s)), n).await?;
        }
    }
    Ok(())
}

/// Create the enum types dropped since capture, and add back the labels of changed ones
/// (labels can be added, never removed).
async fn restore_enums(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for (k, e) in &target.enums {
        match live.enums.get(k) {
            None => {
                let labels: Vec<String> = e.labels.iter().map(|l| quote_literal(l)).collect();
                exec(
                    tx,
                    &format!(
                        "CREATE TYPE {}.{} AS ENUM ({})",
                        quote_ident(&e.schema),
                        quote_ident(&e.name),
                        labels.join(", ")
                    ),
                    n,
                )
                .await?;
            }
            Some(l) if l != e => {
                // Labels can be added back in order, never removed.
                let mut prev: Option<&str> = None;
                for lab in &e.labels {
                    if !l.labels.contains(lab) {
                        let pos = match prev {
                            Some(p) => format!(" AFTER {}", quote_literal(p)),
                            None => String::new(),
                        };
                        exec(
                            tx,
                            &format!(
                                "ALTER TYPE {}.{} ADD VALUE {}{pos}",
                                quote_ident(&e.schema),
                                quote_ident(&e.name),
                                quote_literal(lab)
                            ),
                            n,
                        )
                        .await?;
                    }
                    prev = Some(lab);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Re-create the functions dropped or changed since capture.
async fn restore_functions(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for (k, f) in &target.functions {
        if live.functions.get(k) != Some(f) {
            // As pg_dump does: a body valid at capture may name objects put back later.
            exec(
                tx,
                &format!(
                    "SET LOCAL check_function_bodies = off; {}; SET LOCAL check_function_bodies = on",
                    f.definition
                ),
                n,
            )
            .await?;
        }
    }
    Ok(())
}

/// Create the sequences dropped since capture and alter the changed ones, with their values.
async fn restore_sequences(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for (k, s) in &target.sequences {
        match live.sequences.get(k) {
            None => {
                exec(tx, &s.create_sql(), n).await?;
                exec(tx, &s.setval_sql(), n).await?;
            }
            Some(l) if l != s => {
                exec(
                    tx,
                    &format!(
                        "ALTER SEQUENCE {} AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}",
                        s.quoted(),
                        s.data_type,
                        s.increment,
                        s.min,
                        s.max,
                        s.start,
                        s.cache,
                        if s.cycle { "CYCLE" } else { "NO CYCLE" }
                    ),
                    n,
                )
                .await?;
                exec(tx, &s.setval_sql(), n).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reconcile the tables changed since capture (see [`reconcile::plan`]), with their
/// properties and owned sequences' values.
async fn restore_tables(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for (k, t) in &target.tables {
        let Some(l) = live.tables.get(k) else {
            continue;
        };
        if l == t {
            continue;
        }
        let table = Table::new(&t.schema, &t.name);
        let plan = reconcile::plan(&table, l, t, false).map_err(Error::conflict)?;
        for s in plan.pre.iter().chain(plan.post.iter()) {
            exec(tx, s, n).await?;
        }
        reconcile::table_properties(tx, &table, t).await?;
        for s in &t.sequences {
            exec(tx, &s.setval_sql(), n).await?;
        }
    }
    Ok(())
}

/// Re-create the views dropped by [`drop_changed_views`] or since capture, retrying in
/// rounds until their dependencies are satisfied.
async fn recreate_views(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    let mut pending: Vec<&catalog::ViewModel> = target
        .views
        .iter()
        .filter(|(k, v)| live.views.get(*k) != Some(*v))
        .map(|(_, v)| v)
        .collect();
    while !pending.is_empty() {
        let mut progress = false;
        let mut still = Vec::new();
        let mut last_err = None;
        for v in pending {
            let kind = if v.materialized {
                "MATERIALIZED VIEW"
            } else {
                "VIEW"
            };
            let sql = format!(
                "SAVEPOINT rb_view; CREATE {kind} {}.{} AS {}",
                quote_ident(&v.schema),
                quote_ident(&v.name),
                v.definition.trim_end_matches(';')
            );
            match tx.batch_execute(&sql).await {
                Ok(()) => {
                    tx.batch_execute("RELEASE SAVEPOINT rb_view")
                        .await
                        .ctx("schema restore")?;
                    *n += 1;
                    progress = true;
                }
                Err(e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT rb_view")
                        .await
                        .ctx("schema restore")?;
                    last_err = Some(crate::error::PgError::new("re-creating view", &e));
                    still.push(v);
                }
            }
        }
        if !progress {
            return Err(last_err
                .map(|e| e.into_core(false))
                .unwrap_or_else(|| Error::conflict("views cannot be re-created")));
        }
        pending = still;
    }
    Ok(())
}

/// Drop the functions created since capture.
async fn drop_added_functions(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for (k, f) in &live.functions {
        if !target.functions.contains_key(k) {
            exec(
                tx,
                &format!(
                    "DROP ROUTINE {}.{}",
                    quote_ident(&f.schema),
                    f.signature_sql()
                ),
                n,
            )
            .await?;
        }
    }
    Ok(())
}

/// Drop the enum types created since capture.
async fn drop_added_enums(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for (k, e) in &live.enums {
        if !target.enums.contains_key(k) {
            exec(
                tx,
                &format!(
                    "DROP TYPE {}.{}",
                    quote_ident(&e.schema),
                    quote_ident(&e.name)
                ),
                n,
            )
            .await?;
        }
    }
    Ok(())
}

/// Drop the schemas created since capture.
async fn drop_added_schemas(
    tx: &Transaction<'_>,
    live: &SchemaModel,
    target: &SchemaModel,
    n: &mut usize,
) -> Result<()> {
    for s in &live.schemas {
        if !target.schemas.contains(s) {
            exec(tx, &format!("DROP SCHEMA {}", quote_ident(s)), n).await?;
        }
    }
    Ok(())
}
