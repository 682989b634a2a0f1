//! The swap restore: each live table is dropped and its snapshot copy renamed into its
//! place (O(1) in rows), with sequences, defaults, triggers and foreign keys put back —
//! only where nothing else depends on the table ([`swap_unsafe`]).

use super::super::{Descriptor, TableSnapshot};
use super::Attempt;
use crate::catalog::{self, TableModel};
use crate::checkpoint::reconcile::{self};
use crate::error::{backend_msg, PgResultExt};
use crate::ident::{quote_ident, Table};
use crate::triggers::trigger_mode_sql;
use rollback_core::Result;
use std::collections::BTreeMap;
use tokio_postgres::Transaction;

impl TableSnapshot {
    pub(super) async fn swap(&self, tx: &Transaction<'_>, d: &Descriptor) -> Result<Attempt> {
        // Checked again now that the live tables are locked.
        if let Some(why) = swap_unsafe(tx, d).await? {
            return Ok(Attempt::Unsuitable(why));
        }
        let mut notes = Vec::new();
        let mut items = self.drop_absent(tx, d).await?;
        for e in &d.tables {
            let (Some(def), Some(copy)) = (&e.definition, &e.copy) else {
                continue;
            };
            let t = &e.table;
            if let Some(live) = catalog::table_model(tx, t).await? {
                for s in &live.sequences {
                    tx.batch_execute(&format!("ALTER SEQUENCE {} OWNED BY NONE", s.quoted()))
                        .await
                        .ctx("detaching owned sequence")?;
                }
                tx.batch_execute(&format!("DROP TABLE {}", t.quoted()))
                    .await
                    .ctx(&format!("dropping {t} for the swap"))?;
            }
            let mut sql = Vec::new();
            if copy.schema != t.schema {
                sql.push(format!(
                    "ALTER TABLE {} SET SCHEMA {}",
                    copy.quoted(),
                    quote_ident(&t.schema)
                ));
            }
            sql.push(format!(
                "ALTER TABLE {}.{} RENAME TO {}",
                quote_ident(&t.schema),
                quote_ident(&copy.name),
                quote_ident(&t.name)
            ));
            tx.batch_execute(&sql.join("; "))
                .await
                .ctx(&format!("moving the snapshot copy into place as {t}"))?;
            rename_indexes(tx, t, def).await?;
            // Sequences (re-created if they went with a dropped table), then defaults.
            for s in &def.sequences {
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S'",
                        &[&s.schema, &s.name],
                    )
                    .await
                    .ctx("looking up sequence")?;
                if exists.is_none() {
                    tx.batch_execute(&s.create_sql())
                        .await
                        .ctx("re-creating sequence")?;
                }
            }
            for c in &def.columns {
                if let (Some(expr), true) = (&c.default, c.generated.is_empty()) {
                    tx.batch_execute(&format!(
                        "ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {expr}",
                        t.quoted(),
                        quote_ident(&c.name)
                    ))
                    .await
                    .ctx("restoring column default")?;
                }
            }
            for s in &def.sequences {
                if let Some(owner) = &s.owned_by {
                    let col = owner.strip_prefix(&format!("{}.", t.name)).unwrap_or(owner);
                    tx.batch_execute(&format!(
                        "ALTER SEQUENCE {} OWNED BY {}.{}",
                        s.quoted(),
                        t.quoted(),
                        quote_ident(col)
                    ))
                    .await
                    .ctx("re-attaching owned sequence")?;
                }
            }
            for tr in &def.triggers {
                tx.batch_execute(&tr.definition)
                    .await
                    .ctx("re-creating trigger")?;
                if tr.enabled != "O" {
                    tx.batch_execute(&trigger_mode_sql(t, &tr.name, &tr.enabled))
                        .await
                        .ctx("restoring trigger state")?;
                }
            }
            for k in def.constraints.iter().filter(|k| k.kind == "f") {
                tx.batch_execute(&format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID",
                    t.quoted(),
                    quote_ident(&k.name),
                    k.body()
                ))
                .await
                .ctx("re-creating foreign key")?;
                if k.validated {
                    tx.batch_execute(&format!(
                        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
                        t.quoted(),
                        quote_ident(&k.name)
                    ))
                    .await
                    .ctx("re-validating foreign key")?;
                    notes.push(format!("foreign key {} re-validated", k.name));
                }
            }
            reconcile::table_properties(tx, t, def).await?;
            items += e.hash.as_ref().map(|h| h.rows).unwrap_or(0);
        }
        self.set_sequences(tx, d).await?;
        Ok(Attempt::Done(items, notes))
    }
}

/// Why the tables of `d` cannot be swapped (None: safe).
pub(super) async fn swap_unsafe(tx: &Transaction<'_>, d: &Descriptor) -> Result<Option<String>> {
    for e in &d.tables {
        let Some(def) = &e.definition else { continue };
        if def.persistence != "p" {
            return Ok(Some(format!("{} is unlogged", e.table)));
        }
        if def.replica_identity == "i" {
            return Ok(Some(format!(
                "{} has replica identity USING INDEX",
                e.table
            )));
        }
        if def.kind != "r" {
            return Ok(Some(format!("{} is partitioned", e.table)));
        }
        if def.columns.iter().any(|c| !c.identity.is_empty()) {
            return Ok(Some(format!("{} has an identity column", e.table)));
        }
        // The copy is created in the default tablespace with the default access method,
        // untyped: a swap would move or change the table.
        if def.tablespace.is_some() || def.indexes.iter().any(|i| i.tablespace.is_some()) {
            return Ok(Some(format!(
                "{} or one of its indexes is in a tablespace of its own",
                e.table
            )));
        }
        if def.access_method.is_some() || def.of_type.is_some() {
            return Ok(Some(format!(
                "{} has its own access method or is a typed table",
                e.table
            )));
        }
        if let Some(oid) = catalog::table_oid(tx, &e.table).await? {
            let blockers = swap_blockers(tx, oid).await?;
            if !blockers.is_empty() {
                return Ok(Some(format!(
                    "{} has dependents: {}",
                    e.table,
                    blockers.join(", ")
                )));
            }
        }
    }
    Ok(None)
}

/// What prevents swapping table `oid` (empty: safe).
async fn swap_blockers(tx: &Transaction<'_>, oid: u32) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) \
             FROM pg_catalog.pg_depend d \
             WHERE ((d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = $1) \
                 OR (d.refclassid = 'pg_catalog.pg_type'::regclass AND d.refobjid = (SELECT reltype FROM pg_catalog.pg_class WHERE oid = $1))) \
               AND NOT (d.classid = 'pg_catalog.pg_constraint'::regclass AND EXISTS \
                        (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.oid = d.objid AND k.conrelid = $1)) \
               AND NOT (d.classid = 'pg_catalog.pg_attrdef'::regclass AND EXISTS \
                        (SELECT 1 FROM pg_catalog.pg_attrdef a WHERE a.oid = d.objid AND a.adrelid = $1)) \
               AND NOT (d.classid = 'pg_catalog.pg_trigger'::regclass AND EXISTS \
                        (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.oid = d.objid AND t.tgrelid = $1 AND NOT t.tgisinternal)) \
               AND NOT (d.classid = 'pg_catalog.pg_class'::regclass AND EXISTS \
                        (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indexrelid = d.objid AND i.indrelid = $1)) \
               AND (d.deptype = 'n' OR d.classid IN ('pg_catalog.pg_policy'::regclass, 'pg_catalog.pg_publication_rel'::regclass, \
                                                   'pg_catalog.pg_statistic_ext'::regclass, 'pg_catalog.pg_rewrite'::regclass)) \
             UNION ALL \
             SELECT 'inheritance' FROM pg_catalog.pg_inherits WHERE inhrelid = $1 OR inhparent = $1 \
             UNION ALL \
             SELECT 'identity column ' || attname FROM pg_catalog.pg_attribute \
               WHERE attrelid = $1 AND attidentity <> '' AND NOT attisdropped \
             UNION ALL \
             SELECT 'partition' FROM pg_catalog.pg_class WHERE oid = $1 AND (relkind <> 'r' OR relispartition)",
            &[&oid],
        )
        .await
        .ctx("checking whether a swap is safe")?;
    let mut out: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Give the moved copy's indexes the captured names (by matching definitions).
pub(super) async fn rename_indexes(
    tx: &Transaction<'_>,
    t: &Table,
    def: &TableModel,
) -> Result<()> {
    let now = catalog::table_model(tx, t)
        .await?
        .ok_or_else(|| backend_msg("swapped table vanished"))?;
    let names: Vec<String> = now
        .indexes
        .iter()
        .map(|i| i.name.clone())
        .chain(def.indexes.iter().map(|i| i.name.clone()))
        .collect();
    let quoted: Vec<String> = tx
        .query(
            "SELECT quote_ident(x) FROM unnest($1::text[]) WITH ORDINALITY u(x, o) ORDER BY o",
            &[&names],
        )
        .await
        .ctx("quoting index names")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (q_now, q_def) = quoted.split_at(now.indexes.len());
    let norm = |defn: &str, q: &str| defn.replacen(&format!(" INDEX {q} ON "), " INDEX ON ", 1);
    let mut targets: Vec<Option<&str>> = vec![None; now.indexes.len()];
    let mut used = vec![false; def.indexes.len()];
    for (i, ix) in now.indexes.iter().enumerate() {
        let n = norm(&ix.definition, &q_now[i]);
        if let Some(j) = def
            .indexes
            .iter()
            .enumerate()
            .position(|(j, dx)| !used[j] && norm(&dx.definition, &q_def[j]) == n)
        {
            used[j] = true;
            targets[i] = Some(&def.indexes[j].name);
        }
    }
    let schema = quote_ident(&t.schema);
    let tmp = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    for (i, ix) in now.indexes.iter().enumerate() {
        if targets[i].is_some() {
            tx.batch_execute(&format!(
                "ALTER INDEX {schema}.{} RENAME TO {}",
                quote_ident(&ix.name),
                quote_ident(&format!("rb_{tmp}_{i}"))
            ))
            .await
            .ctx("renaming index")?;
        }
    }
    for (i, target) in targets.iter().enumerate() {
        if let Some(target) = target {
            tx.batch_execute(&format!(
                "ALTER INDEX {schema}.{} RENAME TO {}",
                quote_ident(&format!("rb_{tmp}_{i}")),
                quote_ident(target)
            ))
            .await
            .ctx("renaming index")?;
        }
    }
    // Constraint names that did not follow their index (e.g. exclusion constraints).
    let now = catalog::table_model(tx, t)
        .await?
        .ok_or_else(|| backend_msg("swapped table vanished"))?;
    let mut want: BTreeMap<&str, &str> = BTreeMap::new();
    for k in def.constraints.iter().filter(|k| k.kind != "f") {
        want.insert(&k.definition, &k.name);
    }
    for k in now.constraints.iter().filter(|k| k.kind != "f") {
        if let Some(target) = want.get(k.definition.as_str()) {
            if *target != k.name {
                tx.batch_execute(&format!(
                    "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                    t.quoted(),
                    quote_ident(&k.name),
                    quote_ident(target)
                ))
                .await
                .ctx("renaming constraint")?;
            }
        }
    }
    Ok(())
}
