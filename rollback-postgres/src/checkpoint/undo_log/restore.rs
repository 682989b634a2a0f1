//! Restore of a [`TableUndoLog`]: refusal when the definition changed or the log cannot
//! be trusted, then the logged rows put back (deletes children first, updates and
//! inserts parents first) with user triggers off, and the fingerprint proof under the
//! same lock — with the rows others changed set aside in a selective restore.

use super::proof::ChunkProof;
use super::selective::{
    classify, conflict_list, keep_others_rows, keyed, logged_by_others, others_rows_changed,
    resolve_for_others, Resolve,
};
use super::{
    attnums, earliest_sql, key_match, model_without_logs, ConflictPolicy, Descriptor, Entry,
    TableUndoLog, MAX_SELECTIVE_COLUMNS, PRESENT, TRIGGER_PREFIX, WRITER_SETTING,
};
use crate::catalog::{self, diff_tables};
use crate::error::{PgError, PgResultExt};
use crate::fingerprint::{combine, table_fingerprint};
use crate::ident::{column_list, column_list_with, quote_ident, Table};
use crate::triggers;
use rollback_core::{Context, Digest, Discarded, Error, Proof, Restored, Result, Snapshot};
use std::collections::BTreeSet;
use tokio_postgres::{GenericClient, Transaction};

/// Foreign keys among `tables`: a topological order (parents first).
async fn parents_first<C: GenericClient>(c: &C, tables: &[Table]) -> Result<Vec<Table>> {
    let rows = c
        .query(
            "SELECT cn.nspname::text, ch.relname::text, pn.nspname::text, p.relname::text \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class ch ON ch.oid = k.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = ch.relnamespace \
             JOIN pg_catalog.pg_class p ON p.oid = k.confrelid JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE k.contype = 'f'",
            &[],
        )
        .await
        .ctx("reading foreign keys")?;
    let set: BTreeSet<&Table> = tables.iter().collect();
    let mut edges = Vec::new();
    for r in rows {
        let child = Table::new(r.get::<_, String>(0), r.get::<_, String>(1));
        let parent = Table::new(r.get::<_, String>(2), r.get::<_, String>(3));
        if child != parent && set.contains(&child) && set.contains(&parent) {
            edges.push((child, parent));
        }
    }
    let mut order = Vec::new();
    let mut left: Vec<Table> = tables.to_vec();
    while !left.is_empty() {
        let pos = left
            .iter()
            .position(|t| !edges.iter().any(|(ch, p)| ch == t && left.contains(p)));
        order.push(left.remove(pos.unwrap_or(0)));
    }
    Ok(order)
}

/// Refuse (with [`Error::Conflict`]) to delete rows that tables outside the set reference
/// through an `ON DELETE CASCADE / SET NULL / SET DEFAULT` foreign key: the delete would
/// change rows the checkpoint does not cover.
async fn refuse_cascades(tx: &Transaction<'_>, d: &Descriptor, tables: &[Table]) -> Result<()> {
    let rows = tx
        .query(
            "SELECT k.conname::text, cn.nspname::text, ch.relname::text, pn.nspname::text, p.relname::text, \
                    array(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY x(n, o) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.n ORDER BY x.o), \
                    array(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY x(n, o) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = x.n ORDER BY x.o) \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class ch ON ch.oid = k.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = ch.relnamespace \
             JOIN pg_catalog.pg_class p ON p.oid = k.confrelid JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE k.contype = 'f' AND k.confdeltype IN ('c', 'n', 'd') ORDER BY 1",
            &[],
        )
        .await
        .ctx("reading cascading foreign keys")?;
    for r in rows {
        let child = Table::new(r.get::<_, String>(1), r.get::<_, String>(2));
        let parent = Table::new(r.get::<_, String>(3), r.get::<_, String>(4));
        if tables.contains(&child) {
            continue;
        }
        let Some(e) = d.tables.iter().find(|e| e.table == parent) else {
            continue;
        };
        let name: String = r.get(0);
        let fk_cols: Vec<String> = r.get(5);
        let ref_cols: Vec<String> = r.get(6);
        let n: i64 = tx
            .query_one(
                &format!(
                    "WITH e AS MATERIALIZED ({}) SELECT count(*) FROM {} c WHERE EXISTS \
                     (SELECT 1 FROM e JOIN {} x ON {} WHERE NOT e.{} AND ROW({}) = ROW({}))",
                    earliest_sql(e),
                    child.quoted(),
                    parent.quoted(),
                    key_match(e, "x", "e"),
                    quote_ident(PRESENT),
                    column_list_with("x", &ref_cols),
                    column_list_with("c", &fk_cols),
                ),
                &[&d.mvcc_snapshot],
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

pub(super) fn restore_error(err: tokio_postgres::Error, t: &Table) -> Error {
    let e = PgError::new(format!("restoring {t}"), &err);
    if err.code().map(|c| c.code()) == Some("23503") {
        return Error::conflict(format!(
            "{e}; rows outside the checkpoint reference rows the restore must remove or change — include their tables in the checkpoint"
        ));
    }
    e.into_core(false)
}

/// The columns a restore may set (not the key, not generated, not identity-always).
pub(super) fn settable_columns(e: &Entry) -> Vec<String> {
    e.definition
        .columns
        .iter()
        .filter(|c| c.generated.is_empty() && c.identity != "a")
        .map(|c| c.name.clone())
        .filter(|c| !e.key.contains(c))
        .collect()
}

/// An extra `WHERE` condition keeping the keys `chosen` selects from a classification
/// table (alias `a`), for statements whose earliest log entry has alias `e`.
pub(super) fn restrict(e: &Entry, chosen: Option<(Table, &str)>) -> String {
    match chosen {
        None => String::new(),
        Some((sel, cond)) => format!(
            " AND EXISTS (SELECT 1 FROM {} a WHERE {} AND {cond})",
            sel.quoted(),
            key_match(e, "a", "e")
        ),
    }
}

/// The fingerprint of one table as the restore left it, taken in its transaction under
/// its lock. With `aside` (a classification table and a condition on it), the rows it
/// selects are set aside: each is replaced by its image at capture (absent rows left
/// out), so the result equals the baseline exactly when every other row is back at it.
/// Returns the fingerprint, how many rows were set aside and — when it did not simply
/// read the whole table — how it was proven (from the changed chunks, see
/// [`TableUndoLog::prove_by_changed_chunks`]) or why it read everything after all.
async fn proof_fingerprint(
    cp: &TableUndoLog,
    tx: &Transaction<'_>,
    mvcc: &str,
    e: &Entry,
    aside: Option<(Table, String)>,
    sequences_aside: bool,
) -> Result<(Digest, u64, Option<String>)> {
    let Some(oid) = catalog::table_oid(tx, &e.table).await? else {
        return Ok((table_fingerprint(&e.table, None, None), 0, None));
    };
    let mut model = model_without_logs(tx, oid).await?;
    if sequences_aside {
        // Others' inserts moved the sequences on: their position at capture stands in.
        model.sequences = e.definition.sequences.clone();
    }
    let cols = model.column_names();
    let (rel, n) = match aside {
        None => (e.table.quoted(), 0),
        Some((sel, cond)) => {
            let n: i64 = tx
                .query_one(
                    &format!("SELECT count(*) FROM {} a WHERE {cond}", sel.quoted()),
                    &[],
                )
                .await
                .ctx("counting rows set aside")?
                .get(0);
            (
                format!(
                    "(SELECT {xc} FROM {t} x WHERE NOT EXISTS (SELECT 1 FROM {s} a WHERE {m} AND {cond}) \
                     UNION ALL SELECT {ac} FROM {s} a WHERE {cond} AND a._rollback_base_present)",
                    xc = column_list_with("x", &cols),
                    t = e.table.quoted(),
                    s = sel.quoted(),
                    m = key_match(e, "x", "a"),
                    ac = column_list_with("a", &cols),
                ),
                n.max(0) as u64,
            )
        }
    };
    let why = match cp
        .prove_by_changed_chunks(tx, mvcc, e, &rel, &model)
        .await?
    {
        ChunkProof::Proven { fingerprint, how } => return Ok((fingerprint, n, Some(how))),
        ChunkProof::Full(why) => why,
    };
    if let Some(w) = &why {
        tracing::info!(table = %e.table, "proving parity by a full re-read: {w}");
    }
    let shape = crate::hash::Shape {
        rel,
        columns: cols,
        key: e.key.clone(),
    };
    let h = crate::hash::hash_relation(tx.client(), &shape, u64::MAX).await?;
    Ok((
        table_fingerprint(&e.table, Some(&model), Some(h.root)),
        n,
        why.map(|w| format!("full re-read: {w}")),
    ))
}

impl TableUndoLog {
    /// Put back every logged row (or, selective, the run's own changes) in one
    /// transaction under an `EXCLUSIVE` lock, and prove it by the fingerprint.
    pub(super) async fn restore_logged(&self, snap: &Snapshot, ctx: &Context) -> Result<Restored> {
        let d = self.descriptor(snap)?;
        snap.ensure_digest(Digest::of_json(&d))?;
        crate::markers::ensure_for_fence(&self.db, &self.schema, ctx).await?;
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        // READ COMMITTED whatever the database's default: each statement after the lock
        // must see every write committed before the lock was granted.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .ctx("starting restore")?;
        crate::checkpoint::set_lock_waits(&tx, self.lock_timeout).await?;
        // Only the newest runner's restore commits.
        crate::markers::fence(&tx, &self.schema, ctx).await?;
        // The restore's own writes are not logged (the log keeps what it undoes).
        let tag = d.restore_tag.clone();
        tx.execute(
            "SELECT pg_catalog.set_config($1, $2, true)",
            &[&WRITER_SETTING, &tag],
        )
        .await
        .ctx("marking the restore's writes")?;
        // 1. Refusal, before anything changes.
        self.check_tracking(&tx, &d).await?;
        let mut locked: Vec<String> = d.tables.iter().map(|e| e.table.quoted()).collect();
        locked.sort();
        tx.batch_execute(&format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            locked.join(", ")
        ))
        .await
        .ctx("locking tables for restore")?;
        for e in &d.tables {
            let Some(oid) = catalog::table_oid(&tx, &e.table).await? else {
                return Err(Error::conflict(format!("{} no longer exists", e.table)));
            };
            let now = model_without_logs(&tx, oid).await?;
            // What DDL alone puts back (comments, privileges…) is put back below; a
            // changed shape needs the schema change reverted first.
            if now.shape() != e.definition.shape() {
                let diff = diff_tables(&e.table.to_string(), &e.definition, &now)
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(Error::conflict(format!(
                    "the definition of {} changed since capture ({diff}); revert the schema change first — an undo log restores rows, not definitions",
                    e.table
                )));
            }
            if attnums(&tx, oid).await? != e.attnums {
                return Err(Error::conflict(format!(
                    "columns of {} were dropped and re-created since capture: their values are not in the undo log",
                    e.table
                )));
            }
        }
        // 2. Who changed what since capture, per key (logs that record writers only).
        // Selective in a run (the run's own writes are undone, everyone else's kept);
        // outside one (a tool, a guard snapshot) every change since capture is undone.
        let narrow = d
            .tables
            .iter()
            .all(|e| e.definition.columns.len() <= MAX_SELECTIVE_COLUMNS);
        let can_select = self.selective && d.writers && !d.restore_tag.is_empty() && ctx.in_run();
        let selective = can_select && narrow;
        if can_select && !narrow {
            tracing::warn!(
                resource = %self.resource,
                "a table has more than {MAX_SELECTIVE_COLUMNS} columns: restoring every change since capture, the application's included (each one counted)"
            );
        }
        let mut sel: Vec<Option<Table>> = Vec::new();
        for (i, e) in d.tables.iter().enumerate() {
            sel.push(if selective {
                Some(classify(&tx, &d, e, i, ctx.run_id()).await?)
            } else {
                None
            });
        }
        let sel_of = |t: &Table| {
            d.tables
                .iter()
                .position(|e| &e.table == t)
                .and_then(|i| sel[i].clone())
        };
        let policy = self.conflicts;
        let mut conflicts: Vec<String> = Vec::new();
        let mut conflict_rows = 0u64;
        let mut others = 0u64;
        let mut other_keys: Vec<String> = Vec::new();
        for (e, s) in d.tables.iter().zip(&sel) {
            match s {
                Some(s) => {
                    let (n, keys) = keyed(&tx, e, s, "a._rollback_app", 50).await?;
                    others += n;
                    other_keys.extend(keys);
                    let (n, list) = conflict_list(&tx, e, s, 50).await?;
                    conflict_rows += n;
                    conflicts.extend(list);
                    // A row whose key changed, written by both: the log names rows by
                    // key, so whose change is whose cannot be told.
                    let (moved, keys) = keyed(
                        &tx,
                        e,
                        s,
                        "a._rollback_mig AND a._rollback_app AND a._rollback_moved",
                        20,
                    )
                    .await?;
                    if moved > 0 {
                        return Err(Error::conflict(format!(
                            "{moved} row(s) of {} changed key since capture and were written by both this run and others, so the undo log cannot tell their changes apart; nothing was restored. Resolve them by hand, or restore with TableUndoLog::selective(false) (which discards the others' changes): {}",
                            e.table,
                            keys.join("; ")
                        )));
                    }
                }
                None if d.writers => {
                    let (n, keys) = logged_by_others(&tx, &d, e, ctx.run_id(), 50).await?;
                    others += n;
                    other_keys.extend(keys);
                }
                None => {}
            }
        }
        if selective && policy == ConflictPolicy::Refuse && conflict_rows > 0 {
            return Err(Error::conflict(format!(
                "{conflict_rows} row(s) of {} were changed by this run and by others since capture; nothing was restored (policy: refuse): {}",
                self.resource,
                conflicts.join("; ")
            )));
        }
        // What others alone wrote must come out of the restore as it went in (a cascade
        // inside the set would take it away unseen): keep a copy to compare.
        let mut kept_copies = Vec::new();
        for (i, (e, s)) in d.tables.iter().zip(&sel).enumerate() {
            if let Some(s) = s {
                kept_copies.push(Some(keep_others_rows(&tx, e, s, i).await?));
            } else {
                kept_copies.push(None);
            }
        }
        // 3. Put the rows back: deletes children first, then parents first.
        let order = parents_first(&tx, &self.tables).await?;
        let entry = |t: &Table| d.tables.iter().find(|e| &e.table == t);
        let disabled = triggers::disable_for_restore(
            &tx,
            &d.tables.iter().map(|e| &e.table).collect::<Vec<_>>(),
            Some(TRIGGER_PREFIX),
        )
        .await?;
        refuse_cascades(&tx, &d, &self.tables).await?;
        // Which keys go back to their image at capture: all of them (a full restore),
        // or the run's own changes (and, keeping the baseline, rows both changed).
        let chosen = |t: &Table| -> Option<(Table, &'static str)> {
            sel_of(t).map(|s| {
                let cond = if policy == ConflictPolicy::KeepBaseline {
                    "a._rollback_mig"
                } else {
                    "a._rollback_mig AND NOT a._rollback_app"
                };
                (s, cond)
            })
        };
        let keep_application = selective && policy == ConflictPolicy::KeepApplication;
        let mut items = 0u64;
        for t in order.iter().rev() {
            let Some(e) = entry(t) else { continue };
            let filter = restrict(e, chosen(t));
            items += tx
                .execute(
                    &format!(
                        "WITH e AS MATERIALIZED ({}) DELETE FROM {} x USING e WHERE NOT e.{} AND {}{filter}",
                        earliest_sql(e),
                        t.quoted(),
                        quote_ident(PRESENT),
                        key_match(e, "x", "e")
                    ),
                    &[&d.mvcc_snapshot],
                )
                .await
                .map_err(|err| restore_error(err, t))?;
            if keep_application {
                if let Some(s) = sel_of(t) {
                    items += resolve_for_others(&tx, e, &s, Resolve::Delete).await?;
                }
            }
        }
        for t in &order {
            let Some(e) = entry(t) else { continue };
            let filter = restrict(e, chosen(t));
            let def = &e.definition;
            let all = def.column_names();
            let settable = settable_columns(e);
            if !settable.is_empty() {
                items += tx
                    .execute(
                        &format!(
                            "WITH e AS MATERIALIZED ({}) UPDATE {} x SET ({}) = ROW({}) FROM e \
                             WHERE e.{} AND {} AND pg_catalog.record_image_ne(ROW({}), ROW({})){filter}",
                            earliest_sql(e),
                            t.quoted(),
                            column_list(&settable),
                            column_list_with("e", &settable),
                            quote_ident(PRESENT),
                            key_match(e, "x", "e"),
                            column_list_with("x", &all),
                            column_list_with("e", &all),
                        ),
                        &[&d.mvcc_snapshot],
                    )
                    .await
                    .map_err(|err| restore_error(err, t))?;
            }
            let cols = def.insertable_columns();
            let overriding = if def.columns.iter().any(|c| c.identity == "a") {
                "OVERRIDING SYSTEM VALUE"
            } else {
                ""
            };
            items += tx
                .execute(
                    &format!(
                        "WITH e AS MATERIALIZED ({}) INSERT INTO {} ({}) {overriding} SELECT {} FROM e \
                         WHERE e.{} AND NOT EXISTS (SELECT 1 FROM {} x WHERE {}){filter}",
                        earliest_sql(e),
                        t.quoted(),
                        column_list(&cols),
                        column_list_with("e", &cols),
                        quote_ident(PRESENT),
                        t.quoted(),
                        key_match(e, "x", "e")
                    ),
                    &[&d.mvcc_snapshot],
                )
                .await
                .map_err(|err| restore_error(err, t))?;
            // Rows both changed, keeping the application's version of each.
            if keep_application {
                if let Some(s) = sel_of(t) {
                    items += resolve_for_others(&tx, e, &s, Resolve::Update).await?;
                    items += resolve_for_others(&tx, e, &s, Resolve::Insert).await?;
                }
            }
        }
        triggers::reenable(&tx, &disabled).await?;
        // Rows others alone wrote: untouched by all of the above, or nothing is restored.
        for ((e, s), copy) in d.tables.iter().zip(&sel).zip(&kept_copies) {
            if let (Some(s), Some(copy)) = (s, copy) {
                let (n, keys) = others_rows_changed(&tx, e, s, copy).await?;
                if n > 0 {
                    return Err(Error::conflict(format!(
                        "restoring {} would change {n} row(s) only others wrote since capture (a foreign key cascading from a row the run added or changed?); nothing was restored: {}",
                        e.table,
                        keys.join("; ")
                    )));
                }
            }
        }
        // Tables others wrote to in a selective restore: their sequences stay where they
        // are (rows the application inserted keep their ids, and the sequence must stay
        // past them), and the proof sets the sequences' position aside with those rows.
        let mut others_wrote: Vec<bool> = Vec::new();
        for (e, s) in d.tables.iter().zip(&sel) {
            let wrote = match s {
                Some(s) => keyed(&tx, e, s, "a._rollback_app", 0).await?.0 > 0,
                None => false,
            };
            others_wrote.push(wrote);
            if !wrote {
                for s in &e.definition.sequences {
                    tx.batch_execute(&s.setval_sql())
                        .await
                        .ctx("restoring sequence value")?;
                }
            }
            crate::checkpoint::reconcile::table_properties(&tx, &e.table, &e.definition).await?;
        }
        // 4. The proof, under the lock that keeps writers out: the tables' fingerprint —
        //    with the rows others changed set aside (each replaced by its image at
        //    capture) in a selective restore — must equal the baseline's.
        let mut fps = Vec::new();
        let mut set_aside = 0u64;
        let mut hows = Vec::new();
        for ((e, s), wrote) in d.tables.iter().zip(&sel).zip(&others_wrote) {
            let aside = s.as_ref().map(|s| {
                let both = if policy == ConflictPolicy::KeepBaseline {
                    " AND NOT a._rollback_mig"
                } else {
                    ""
                };
                (s.clone(), format!("a._rollback_app{both}"))
            });
            let (fp, n, how) =
                proof_fingerprint(self, &tx, &d.mvcc_snapshot, e, aside, *wrote).await?;
            fps.push(fp);
            set_aside += n;
            if let Some(how) = how {
                hows.push(if d.tables.len() > 1 {
                    format!("{}: {how}", e.table)
                } else {
                    how
                });
            }
        }
        let proof = Proof {
            fingerprint: combine(&fps),
            set_aside,
            method: (!hows.is_empty()).then(|| hows.join("; ")),
        };
        // 5. A full restore's own writes are not logged, and the log starts afresh; a
        //    selective one keeps the log (a second restore is then a no-op).
        if !selective {
            let logs: Vec<String> = d.tables.iter().map(|e| e.log.quoted()).collect();
            // A few entries go faster by DELETE (TRUNCATE makes and syncs new files).
            let bounded: Vec<String> = logs
                .iter()
                .map(|l| format!("(SELECT count(*) FROM (SELECT 1 FROM {l} LIMIT 10000) x)"))
                .collect();
            let entries: i64 = tx
                .query_one(&format!("SELECT {}", bounded.join(" + ")), &[])
                .await
                .ctx("counting the undo logs' entries")?
                .get(0);
            let sql = if entries < 10_000 {
                logs.iter().map(|l| format!("DELETE FROM {l};")).collect()
            } else {
                format!("TRUNCATE {}", logs.join(", "))
            };
            tx.batch_execute(&sql).await.ctx("emptying the undo logs")?;
        }
        tx.commit().await.ctx("committing restore")?;
        ctx.progress(
            &format!("restore {}", self.resource),
            items,
            Some(items),
            "rows",
        );
        let discarded = if !d.writers {
            None
        } else if selective {
            let lost = if policy == ConflictPolicy::KeepBaseline {
                conflict_rows
            } else {
                0
            };
            Some(Discarded {
                items: lost,
                exact: true,
                keys: if policy == ConflictPolicy::KeepBaseline {
                    conflicts.clone()
                } else {
                    Vec::new()
                },
                conflicts,
                includes_run: false,
            })
        } else {
            Some(Discarded {
                items: others,
                exact: true,
                keys: other_keys,
                conflicts: Vec::new(),
                includes_run: false,
            })
        };
        let mut r = Restored::by(if selective {
            "undo-log (selective)"
        } else {
            "undo-log"
        })
        .changed(items)
        .proof(proof);
        if let Some(dd) = discarded {
            r = r.discarded(dd);
        }
        Ok(r)
    }
}
