//! The merge restore: a keyed diff against the snapshot copy — rows the copy lacks are
//! deleted (children first), changed rows updated and missing rows inserted (parents
//! first) — for tables that other tables reference, refusing to cascade into rows outside
//! the checkpoint.

use super::super::{Descriptor, Entry, TableSnapshot};
use super::{fk_info, overriding, tables_of, Attempt, FkInfo};
use crate::error::PgResultExt;
use crate::ident::{column_list, column_list_with, quote_ident, Table};
use crate::triggers;
use rollback_core::{Error, Result};
use tokio_postgres::Transaction;

impl TableSnapshot {
    pub(super) async fn merge(&self, tx: &Transaction<'_>, d: &Descriptor) -> Result<Attempt> {
        let fks = fk_info(tx, &self.tables).await?;
        let plans = match self.reconcile_plans(tx, d, false).await? {
            Ok(p) => p,
            Err(why) => return Ok(Attempt::Unsuitable(why)),
        };
        let present: Vec<&Entry> = d
            .tables
            .iter()
            .filter(|e| e.definition.is_some() && e.copy.is_some())
            .collect();
        for e in &present {
            if e.key.is_empty() {
                return Ok(Attempt::Unsuitable(format!(
                    "{} has no primary key or NOT NULL unique key to merge by",
                    e.table
                )));
            }
        }
        refuse_cascades(tx, &fks, &present, &all_rows).await?;
        let mut items = self.drop_absent(tx, d).await?;
        for (_, p, _) in &plans {
            Self::run_all(tx, &p.pre, "restoring table definition").await?;
        }
        items += merge_rows(tx, &fks, &present, &all_rows).await?;
        let notes = self.finish_structure(tx, &plans, d).await?;
        self.set_sequences(tx, d).await?;
        Ok(Attempt::Done(items, notes))
    }
}

/// Which rows of a table a merge considers, as a predicate over the alias it is given
/// (`TRUE` for the whole table; the delta restore passes its differing key ranges).
pub(super) type Scope<'a> = &'a (dyn Fn(&Entry, &str) -> String + Sync);

/// The whole table.
fn all_rows(_: &Entry, _: &str) -> String {
    "TRUE".into()
}

fn key_match(e: &Entry, a: &str, b: &str) -> String {
    e.key
        .iter()
        .map(|k| format!("{a}.{} = {b}.{}", quote_ident(k), quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Refuse (with [`Error::Conflict`]) to delete rows in `scope` that a table outside the
/// checkpoint still references through a cascading foreign key.
pub(super) async fn refuse_cascades(
    tx: &Transaction<'_>,
    fks: &FkInfo,
    present: &[&Entry],
    scope: Scope<'_>,
) -> Result<()> {
    for (name, child, parent, cascading) in &fks.incoming {
        if !*cascading {
            continue;
        }
        let Some(e) = present.iter().find(|e| &e.table == parent) else {
            continue;
        };
        let Some(copy) = &e.copy else { continue };
        let k = tx
            .query_one(
                "SELECT array(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY x(n, o) JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.n ORDER BY x.o), \
                        array(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY x(n, o) JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = x.n ORDER BY x.o) \
                 FROM pg_catalog.pg_constraint k WHERE k.conname = $1 AND k.conrelid = $2::text::regclass",
                &[name, &child.quoted()],
            )
            .await
            .ctx("reading foreign key")?;
        let fk_cols: Vec<String> = k.get(0);
        let ref_cols: Vec<String> = k.get(1);
        let n: i64 = tx
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} c WHERE EXISTS (SELECT 1 FROM {} l WHERE ({}) = ({}) AND {} \
                     AND NOT EXISTS (SELECT 1 FROM {} s WHERE {}))",
                    child.quoted(),
                    parent.quoted(),
                    column_list_with("l", &ref_cols),
                    column_list_with("c", &fk_cols),
                    scope(e, "l"),
                    copy.quoted(),
                    key_match(e, "s", "l")
                ),
                &[],
            )
            .await
            .ctx("checking rows outside the checkpoint")?
            .get(0);
        if n > 0 {
            return Err(Error::conflict(format!(
                "restoring {parent} would delete rows that {n} row(s) of {child} (outside the checkpoint) reference through cascading foreign key {name}; include {child} in the checkpoint"
            )));
        }
    }
    Ok(())
}

/// Put the rows in `scope` of each table of `present` back from its copy by key: delete
/// the rows the copy lacks (children first), update those whose binary image differs
/// (`*<>`) and insert those missing (parents first), with user triggers disabled.
/// Returns the rows written. The scope bounds both sides of every join (rows equal by key
/// are in the same key ranges), so that the planner reads only those ranges of each.
pub(super) async fn merge_rows(
    tx: &Transaction<'_>,
    fks: &FkInfo,
    present: &[&Entry],
    scope: Scope<'_>,
) -> Result<u64> {
    let mut items = 0;
    let disabled = triggers::disable_for_restore(tx, &tables_of(present), None).await?;
    for t in fks.order.iter().rev() {
        let Some(e) = present.iter().find(|e| &e.table == t) else {
            continue;
        };
        let Some(copy) = &e.copy else { continue };
        items += tx
            .execute(
                &format!(
                    "DELETE FROM {} l WHERE {} AND NOT EXISTS (SELECT 1 FROM {} s WHERE {} AND {})",
                    t.quoted(),
                    scope(e, "l"),
                    copy.quoted(),
                    key_match(e, "s", "l"),
                    scope(e, "s")
                ),
                &[],
            )
            .await
            .map_err(|err| fk_conflict(err, t))?;
    }
    for t in &fks.order {
        let Some(e) = present.iter().find(|e| &e.table == t) else {
            continue;
        };
        let (Some(def), Some(copy)) = (&e.definition, &e.copy) else {
            continue;
        };
        let settable: Vec<String> = def
            .columns
            .iter()
            .filter(|c| c.generated.is_empty() && c.identity != "a")
            .map(|c| c.name.clone())
            .filter(|c| !e.key.contains(c))
            .collect();
        if !settable.is_empty() {
            items += tx
                .execute(
                    &format!(
                        "UPDATE {} l SET ({}) = ROW({}) FROM {} s WHERE {} AND {} AND {} AND (l.*) OPERATOR(pg_catalog.*<>) (s.*)",
                        t.quoted(),
                        column_list(&settable),
                        column_list_with("s", &settable),
                        copy.quoted(),
                        key_match(e, "s", "l"),
                        scope(e, "s"),
                        scope(e, "l")
                    ),
                    &[],
                )
                .await
                .map_err(|err| fk_conflict(err, t))?;
        }
        let cols = def.insertable_columns();
        items += tx
            .execute(
                &format!(
                    "INSERT INTO {} ({}) {} SELECT {} FROM {} s WHERE {} AND NOT EXISTS (SELECT 1 FROM {} l WHERE {} AND {})",
                    t.quoted(),
                    column_list(&cols),
                    overriding(def),
                    column_list_with("s", &cols),
                    copy.quoted(),
                    scope(e, "s"),
                    t.quoted(),
                    key_match(e, "s", "l"),
                    scope(e, "l")
                ),
                &[],
            )
            .await
            .map_err(|err| fk_conflict(err, t))?;
    }
    triggers::reenable(tx, &disabled).await?;
    Ok(items)
}

fn fk_conflict(err: tokio_postgres::Error, t: &Table) -> Error {
    if err.code().map(|c| c.code()) == Some("23503") {
        let e = crate::error::PgError::new(format!("restoring {t}"), &err);
        return Error::conflict(format!(
            "{e}; rows outside the checkpoint reference rows the restore must remove — include their tables in the checkpoint"
        ));
    }
    crate::error::PgError::new(format!("restoring {t}"), &err).into_core(false)
}
