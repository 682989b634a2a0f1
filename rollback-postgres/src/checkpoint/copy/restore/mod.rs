//! Restore of a [`TableSnapshot`]: first, where it applies, [`delta`] (only the key ranges
//! that differ from the snapshot, verified against their stored chunk digests); else
//! refusal of a copy that no longer matches its digest, then one transaction per method
//! tried — [`swap`] (O(1), where nothing depends on the
//! table), [`copy_back`] (`TRUNCATE` + `INSERT … SELECT`), [`merge`] (a keyed diff) — each
//! checked against the captured definitions and proven by the fingerprint before commit.

mod copy_back;
mod delta;
mod merge;
mod swap;

use super::capture::copy_table;
use super::{relation_exists, Descriptor, Entry, RestoreMethod, TableSnapshot};
use crate::catalog::{self, diff_tables, TableModel};
use crate::checkpoint::reconcile::{self, Reconcile};
use crate::error::{backend_msg, PgResultExt};
use crate::fingerprint::{chunk_splits, combine, fingerprint_tables, table_fingerprint};
use crate::hash::{self, Shape};
use crate::ident::{quote_ident, Table};
use delta::Delta;
use rollback_core::{Context, Digest, Discarded, Error, Hasher, Proof, Restored, Result, Snapshot};
use std::collections::BTreeSet;
use swap::{rename_indexes, swap_unsafe};
use tokio_postgres::Transaction;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Swap,
    Copy,
    Merge,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Swap => "swap",
            Method::Copy => "copy",
            Method::Merge => "merge",
        }
    }
}

/// Why a restore attempt with one method failed in a way another method may fix.
enum Attempt {
    Done(u64, Vec<String>),
    Unsuitable(String),
}

impl TableSnapshot {
    /// Put the tables back from their copies, trying each method in turn.
    pub(super) async fn restore_from_copies(
        &self,
        snap: &Snapshot,
        ctx: &Context,
    ) -> Result<Restored> {
        let d = self.descriptor(snap)?;
        let methods: Vec<Method> = match self.method {
            RestoreMethod::Auto => vec![Method::Swap, Method::Copy, Method::Merge],
            RestoreMethod::Delta => vec![],
            RestoreMethod::Swap => vec![Method::Swap],
            RestoreMethod::Copy => vec![Method::Copy],
            RestoreMethod::Merge => vec![Method::Merge],
        };
        let mut reasons: Vec<String> = Vec::new();
        crate::markers::ensure_for_fence(&self.db, crate::markers::DEFAULT_MARKER_SCHEMA, ctx)
            .await?;
        // The delta first: where it applies it writes only the differing key ranges and
        // reads the copy only there; else the whole-table methods.
        if matches!(self.method, RestoreMethod::Auto | RestoreMethod::Delta) {
            match self.restore_delta(snap, &d, ctx).await? {
                Delta::Done(r) => return Ok(r),
                Delta::Unsuitable(why) => {
                    tracing::info!(reason = %why, "delta restore not applicable");
                    reasons.push(format!("delta not applicable: {why}"));
                }
            }
        }
        for m in methods {
            let mut obj = self.db.lib_client().await?;
            let client: &mut tokio_postgres::Client = &mut obj;
            let tx = client.transaction().await.ctx("starting restore")?;
            crate::checkpoint::set_lock_waits(&tx, self.lock_timeout).await?;
            // Only the newest runner's restore commits.
            crate::markers::fence(&tx, crate::markers::DEFAULT_MARKER_SCHEMA, ctx).await?;
            // 1. Refusal, before anything changes: copies present, digest and definitions.
            let mut missing = Vec::new();
            let mut copies = Vec::new();
            for e in &d.tables {
                if let Some(c) = &e.copy {
                    if relation_exists(&tx, c).await? {
                        copies.push(c.quoted());
                    } else {
                        missing.push(c.to_string());
                    }
                }
            }
            if !missing.is_empty() {
                let fps = fingerprint_tables(&tx, &self.tables).await?;
                let now = combine(&fps.iter().map(|f| f.0).collect::<Vec<_>>());
                if now == snap.fingerprint && copies.is_empty() {
                    // Nothing to do, but keep the fence this transaction raised.
                    tx.commit().await.ctx("ending restore")?;
                    return Ok(Restored::by("noop").changed(0).note(
                        "tables already hold the snapshot's content (its copy was consumed by an earlier swap)",
                    ));
                }
                return Err(Error::invalid(format!(
                    "snapshot copies {} are missing (discarded, or consumed by a swap); cannot restore {}",
                    missing.join(", "),
                    self.resource
                )));
            }
            if !copies.is_empty() {
                copies.sort();
                tx.batch_execute(&format!("LOCK TABLE {} IN SHARE MODE", copies.join(", ")))
                    .await
                    .ctx("locking snapshot copies")?;
            }
            // A swap that cannot apply is known before the copies are read.
            if m == Method::Swap {
                if let Some(why) = swap_unsafe(&tx, &d).await? {
                    tracing::info!(reason = %why, "swap not applicable");
                    reasons.push(format!("swap not applicable: {why}"));
                    tx.rollback().await.ctx("rolling back restore attempt")?;
                    continue;
                }
            }
            // The copies are locked against writes: a second session sees the same rows and
            // hashes half of each big copy.
            let reader = match d
                .tables
                .iter()
                .filter_map(|e| e.hash.as_ref())
                .map(|h| h.rows)
                .max()
            {
                Some(rows) if rows >= hash::PARALLEL_MIN_ROWS => {
                    match self.db.dedicated_lib().await {
                        Ok(r) => r
                            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                            .await
                            .is_ok()
                            .then_some(r),
                        Err(_) => None,
                    }
                }
                _ => None,
            };
            let mut dh = Hasher::new();
            dh.field(b"rollback-postgres/table-copy/v1");
            let mut copy_models: Vec<(Table, TableModel)> = Vec::new();
            // The verified content root of each copy: after a swap, the live table's.
            let mut verified: Vec<Option<Digest>> = Vec::new();
            for e in &d.tables {
                let mut actual = e.clone();
                if let (Some(copy), Some(def)) = (&e.copy, &e.definition) {
                    let copy_def = catalog::table_model(&tx, copy)
                        .await?
                        .ok_or_else(|| backend_msg("snapshot copy vanished"))?;
                    actual.copy_definition = Some(copy_def.digest());
                    copy_models.push((copy.clone(), copy_def));
                    let shape = Shape {
                        rel: copy.quoted(),
                        columns: def.column_names(),
                        key: e.key.clone(),
                    };
                    let root = match (&reader, &e.hash) {
                        (Some(r), Some(captured)) => {
                            let splits = chunk_splits(&tx, captured, def, &e.key).await?;
                            hash::hash_relation_split(&[tx.client(), r], &shape, splits).await?
                        }
                        _ => {
                            hash::hash_relation(tx.client(), &shape, u64::MAX)
                                .await?
                                .root
                        }
                    };
                    if let Some(hh) = actual.hash.as_mut() {
                        hh.root = root;
                    }
                    verified.push(Some(root));
                } else {
                    verified.push(None);
                }
                actual.digest_part(&mut dh);
            }
            drop(reader);
            snap.ensure_digest(dh.finish())?;
            // 2. For a swap (found safe above): keep a duplicate of each copy, made before the
            //    live tables are locked, so traffic is not blocked while it is written.
            let mut duplicates = Vec::new();
            if m == Method::Swap && self.keep_after_swap {
                for (copy, model) in &copy_models {
                    let dup = Table::new(
                        &copy.schema,
                        format!("rbdup_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]),
                    );
                    let cols = model.insertable_columns();
                    copy_table(&tx, copy, &dup, "", &cols, async {}).await?;
                    duplicates.push((dup, copy.clone(), model.clone()));
                }
            }
            // 3. Count the live rows (before locking them, not to hold writers up), then
            //    lock the live tables. The restore reverts at least the difference to the
            //    copy's row count: its recovery point by rows (a lower bound).
            let mut live = Vec::new();
            let mut reverted_at_least = 0u64;
            for (t, e) in self.tables.iter().zip(&d.tables) {
                if relation_exists(&tx, t).await? {
                    live.push(t.quoted());
                    let now: i64 = tx
                        .query_one(&format!("SELECT count(*) FROM {}", t.quoted()), &[])
                        .await
                        .ctx("counting rows before restore")?
                        .get(0);
                    let then = e.hash.as_ref().map_or(0, |h| h.rows);
                    reverted_at_least += (now.max(0) as u64).abs_diff(then);
                }
            }
            if !live.is_empty() {
                live.sort();
                tx.batch_execute(&format!(
                    "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                    live.join(", ")
                ))
                .await
                .ctx("locking tables for restore")?;
            }
            // 4. Put them back.
            let attempt = match m {
                Method::Swap => self.swap(&tx, &d).await,
                Method::Copy => self.copy_back(&tx, &d).await,
                Method::Merge => self.merge(&tx, &d).await,
            };
            let (items, mut notes) = match attempt {
                Ok(Attempt::Done(items, notes)) => (items, notes),
                Ok(Attempt::Unsuitable(why)) => {
                    tracing::info!(method = m.name(), reason = %why, "restore method not applicable");
                    reasons.push(format!("{} not applicable: {why}", m.name()));
                    tx.rollback().await.ctx("rolling back restore attempt")?;
                    continue;
                }
                // A swap that fails part-way (e.g. a foreign key that no longer validates)
                // is rolled back and the next method tried.
                Err(e)
                    if m == Method::Swap
                        && self.method == RestoreMethod::Auto
                        && !e.is_transient() =>
                {
                    tracing::info!(error = %e, "swap failed; trying the next method");
                    reasons.push(format!("swap failed: {e}"));
                    drop(tx);
                    continue;
                }
                Err(e) => return Err(e),
            };
            // The duplicates take the consumed copies' names.
            for (dup, copy, model) in &duplicates {
                tx.batch_execute(&format!(
                    "ALTER TABLE {} RENAME TO {}",
                    dup.quoted(),
                    quote_ident(&copy.name)
                ))
                .await
                .ctx("renaming the kept snapshot copy")?;
                rename_indexes(&tx, copy, model).await?;
                let now = catalog::table_model(&tx, copy).await?;
                if now.as_ref().map(|m| m.digest()) != Some(model.digest()) {
                    tracing::warn!(copy = %copy, "kept snapshot copy differs from the original; a later restore will refuse it");
                    notes.push(format!("the kept copy {copy} differs from the original"));
                }
            }
            // 5. The definitions must be the captured ones.
            let mismatch = definition_mismatch(&tx, &d, m.name()).await?;
            if let Some(why) = mismatch {
                tracing::warn!(method = m.name(), reason = %why, "restore result rejected");
                reasons.push(why);
                tx.rollback().await.ctx("rolling back restore attempt")?;
                continue;
            }
            // 6. The parity proof, under the lock that keeps writers out: a swapped-in
            //    table is its copy, whose content was verified above; a copied or merged
            //    one is hashed here, in this transaction.
            let proof = match m {
                Method::Swap => combine(
                    &d.tables
                        .iter()
                        .zip(&verified)
                        .map(|(e, root)| table_fingerprint(&e.table, e.definition.as_ref(), *root))
                        .collect::<Vec<_>>(),
                ),
                Method::Copy | Method::Merge => combine(
                    &fingerprint_tables(&tx, &self.tables)
                        .await?
                        .iter()
                        .map(|f| f.0)
                        .collect::<Vec<_>>(),
                ),
            };
            tx.commit().await.ctx("committing restore")?;
            ctx.progress(
                &format!("restore {}", self.resource),
                items,
                Some(items),
                "rows",
            );
            notes.extend(reasons);
            let mut r = Restored::by(m.name())
                .changed(items)
                .proof(Proof::of(proof))
                .discarded(Discarded {
                    items: reverted_at_least,
                    exact: false,
                    includes_run: true,
                    ..Default::default()
                });
            if !notes.is_empty() {
                r = r.note(notes.join("; "));
            }
            return Ok(r);
        }
        Err(Error::conflict(format!(
            "cannot restore {}: {}",
            self.resource,
            reasons.join("; ")
        )))
    }
}

/// Why the tables' definitions are not the captured ones after a restore by `method`
/// (`None`: they are).
async fn definition_mismatch(
    tx: &Transaction<'_>,
    d: &Descriptor,
    method: &str,
) -> Result<Option<String>> {
    for e in &d.tables {
        let now = catalog::table_model(tx, &e.table).await?;
        if now != e.definition {
            let diff = match (&e.definition, &now) {
                (Some(a), Some(b)) => diff_tables(&e.table.to_string(), a, b)
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
                (None, Some(_)) => "table exists but was absent at capture".into(),
                (Some(_), None) => "table is missing".into(),
                (None, None) => String::new(),
            };
            return Ok(Some(format!(
                "{method} left {} different from the snapshot: {diff}",
                e.table
            )));
        }
    }
    Ok(None)
}

/// Foreign keys among `tables`: (child, parent) pairs, and those from outside into the set.
struct FkInfo {
    /// Topological order of the set (parents first).
    order: Vec<Table>,
    /// FKs from tables outside the set into it: (constraint, child, parent, cascading delete).
    incoming: Vec<(String, Table, Table, bool)>,
    /// Whether a FK of the set references a table of the set (itself included).
    internal: bool,
}

async fn fk_info(tx: &Transaction<'_>, tables: &[Table]) -> Result<FkInfo> {
    let rows = tx
        .query(
            "SELECT k.conname::text, cn.nspname::text, c.relname::text, pn.nspname::text, p.relname::text, \
                    k.confdeltype::text IN ('c', 'n', 'd') \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class c ON c.oid = k.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_catalog.pg_class p ON p.oid = k.confrelid JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE k.contype = 'f' ORDER BY 1",
            &[],
        )
        .await
        .ctx("reading foreign keys")?;
    let set: BTreeSet<&Table> = tables.iter().collect();
    let mut edges: Vec<(Table, Table)> = Vec::new();
    let mut incoming = Vec::new();
    let mut internal = false;
    for r in rows {
        let child = Table::new(r.get::<_, String>(1), r.get::<_, String>(2));
        let parent = Table::new(r.get::<_, String>(3), r.get::<_, String>(4));
        if !set.contains(&parent) {
            continue;
        }
        if set.contains(&child) {
            internal = true;
            if child != parent {
                edges.push((child, parent));
            }
        } else {
            incoming.push((r.get(0), child, parent, r.get(5)));
        }
    }
    // Kahn's algorithm, parents first; cycles keep their input order at the end.
    let mut order = Vec::new();
    let mut left: Vec<Table> = tables.to_vec();
    while !left.is_empty() {
        let pos = left.iter().position(|t| {
            !edges
                .iter()
                .any(|(c, p)| c == t && left.contains(p) && p != t)
        });
        let t = left.remove(pos.unwrap_or(0));
        order.push(t);
    }
    Ok(FkInfo {
        order,
        incoming,
        internal,
    })
}

impl TableSnapshot {
    async fn drop_absent(&self, tx: &Transaction<'_>, d: &Descriptor) -> Result<u64> {
        let mut n = 0;
        for e in &d.tables {
            if e.definition.is_none() && relation_exists(tx, &e.table).await? {
                tx.batch_execute(&format!("DROP TABLE {}", e.table.quoted()))
                    .await
                    .ctx(&format!("dropping {} (absent at capture)", e.table))?;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn set_sequences(&self, tx: &Transaction<'_>, d: &Descriptor) -> Result<()> {
        for e in &d.tables {
            if let Some(def) = &e.definition {
                for s in &def.sequences {
                    tx.batch_execute(&s.setval_sql())
                        .await
                        .ctx("restoring sequence value")?;
                }
            }
        }
        Ok(())
    }
    /// Reconciliation plans for every table present at capture (`Err`: unsuitable).
    async fn reconcile_plans(
        &self,
        tx: &Transaction<'_>,
        d: &Descriptor,
        empty: bool,
    ) -> Result<std::result::Result<Vec<(Table, Reconcile, TableModel)>, String>> {
        let mut out = Vec::new();
        for e in &d.tables {
            let Some(def) = &e.definition else { continue };
            let Some(live) = catalog::table_model(tx, &e.table).await? else {
                return Ok(Err(format!("{} no longer exists", e.table)));
            };
            match reconcile::plan(&e.table, &live, def, empty) {
                Ok(p) => out.push((e.table.clone(), p, live)),
                Err(why) => return Ok(Err(why)),
            }
        }
        Ok(Ok(out))
    }

    async fn run_all(tx: &Transaction<'_>, sql: &[String], what: &str) -> Result<()> {
        for s in sql {
            tx.batch_execute(s).await.ctx(what)?;
        }
        Ok(())
    }

    async fn finish_structure(
        &self,
        tx: &Transaction<'_>,
        plans: &[(Table, Reconcile, TableModel)],
        d: &Descriptor,
    ) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        for (t, p, _) in plans {
            Self::run_all(tx, &p.post, "restoring table definition").await?;
            if let Some(def) = d
                .tables
                .iter()
                .find(|e| &e.table == t)
                .and_then(|e| e.definition.as_ref())
            {
                reconcile::table_properties(tx, t, def).await?;
            }
            if !p.is_empty() {
                notes.push(format!(
                    "{t}: definition restored with {} DDL statement(s)",
                    p.pre.len() + p.post.len()
                ));
            }
        }
        Ok(notes)
    }
}

fn overriding(def: &TableModel) -> &'static str {
    if def.columns.iter().any(|c| c.identity == "a") {
        "OVERRIDING SYSTEM VALUE"
    } else {
        ""
    }
}

/// The tables of `entries`.
fn tables_of<'a>(entries: &[&'a Entry]) -> Vec<&'a Table> {
    entries.iter().map(|e| &e.table).collect()
}
