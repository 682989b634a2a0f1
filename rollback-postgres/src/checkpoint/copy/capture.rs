//! Capture of a [`TableSnapshot`]: each table copied into the snapshot schema in one
//! `REPEATABLE READ` transaction, its rows hashed while they are copied.

use super::{relation_exists, Descriptor, Entry, TableSnapshot, TABLE_COPY_KIND};
use crate::catalog;
use crate::checkpoint::ensure_schema;
use crate::db::Database;
use crate::error::{backend_msg, PgResultExt};
use crate::fingerprint::{combine, table_fingerprint};
use crate::hash::{self, Shape};
use crate::ident::{column_list, quote_ident, Table};
use rollback_core::{Context, Digest, Error, Hasher, Result, Snapshot};
use tokio_postgres::{IsolationLevel, Transaction};

/// Size from which a capture hashes a table in a second session while it is copied.
const SOURCE_HASH_MIN_BYTES: u64 = 1 << 20;

/// A dedicated read-only session in the snapshot of `tx` (a `REPEATABLE READ` transaction),
/// or `None` when the snapshot cannot be exported or imported. Dropping it closes it, which
/// ends its transaction.
async fn snapshot_reader(db: &Database, tx: &Transaction<'_>) -> Option<tokio_postgres::Client> {
    let id: String = tx
        .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        .await
        .ok()?
        .get(0);
    let c = db.dedicated_lib().await.ok()?;
    c.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        crate::ident::quote_literal(&id)
    ))
    .await
    .ok()?;
    Some(c)
}

/// Create `dst` as `LIKE src INCLUDING ALL<like_options>`, fill it with the rows of `src`
/// (`INSERT … SELECT` of `cols`), and return what `during_load` returned (it runs while the
/// rows are inserted).
///
/// The indexes `LIKE` gives `dst` (and the primary key, unique and exclusion constraints
/// they back) are dropped before the load and built again afterwards, with the same names,
/// definitions and comments: one bulk build per index instead of maintaining each index
/// row by row. An index whose definition `pg_get_indexdef` does not fully reproduce (a
/// tablespace, per-column statistics targets) is kept and maintained during the load.
pub(super) async fn copy_table<T>(
    tx: &Transaction<'_>,
    src: &Table,
    dst: &Table,
    like_options: &str,
    cols: &[String],
    during_load: impl std::future::Future<Output = T>,
) -> Result<T> {
    let what = format!("copying {src} into {dst}");
    tx.batch_execute(&format!(
        "CREATE TABLE {} (LIKE {} INCLUDING ALL{like_options})",
        dst.quoted(),
        src.quoted()
    ))
    .await
    .ctx(&what)?;
    let rows = tx
        .query(
            "SELECT ic.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid), k.conname::text, \
                    pg_catalog.pg_get_constraintdef(k.oid), \
                    pg_catalog.obj_description(i.indexrelid, 'pg_class'), \
                    pg_catalog.obj_description(k.oid, 'pg_constraint') \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             LEFT JOIN pg_catalog.pg_constraint k \
               ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x') \
             WHERE i.indrelid = $1::text::regclass AND ic.reltablespace = 0 \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                               WHERE a.attrelid = i.indexrelid AND a.attstattarget >= 0) \
             ORDER BY ic.oid",
            &[&dst.quoted()],
        )
        .await
        .ctx("reading the copy's indexes")?;
    let schema = quote_ident(&dst.schema);
    let mut drop = Vec::new();
    let mut build = Vec::new();
    for r in &rows {
        let index: String = r.get(0);
        let index_def: String = r.get(1);
        let constraint: Option<String> = r.get(2);
        let constraint_def: Option<String> = r.get(3);
        let index_comment: Option<String> = r.get(4);
        let constraint_comment: Option<String> = r.get(5);
        match (&constraint, &constraint_def) {
            (Some(k), Some(kdef)) => {
                drop.push(format!(
                    "ALTER TABLE {} DROP CONSTRAINT {}",
                    dst.quoted(),
                    quote_ident(k)
                ));
                build.push(format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} {kdef}",
                    dst.quoted(),
                    quote_ident(k)
                ));
            }
            _ => {
                drop.push(format!("DROP INDEX {schema}.{}", quote_ident(&index)));
                build.push(index_def);
            }
        }
        if let Some(c) = index_comment {
            build.push(format!(
                "COMMENT ON INDEX {schema}.{} IS {}",
                quote_ident(&index),
                crate::ident::quote_literal(&c)
            ));
        }
        if let (Some(k), Some(c)) = (&constraint, constraint_comment) {
            build.push(format!(
                "COMMENT ON CONSTRAINT {} ON {} IS {}",
                quote_ident(k),
                dst.quoted(),
                crate::ident::quote_literal(&c)
            ));
        }
    }
    if !drop.is_empty() {
        tx.batch_execute(&drop.join("; ")).await.ctx(&what)?;
    }
    let insert = format!(
        "INSERT INTO {} ({}) SELECT {} FROM {}",
        dst.quoted(),
        column_list(cols),
        column_list(cols),
        src.quoted()
    );
    let (loaded, out) = futures::future::join(tx.execute(insert.as_str(), &[]), during_load).await;
    loaded.ctx(&what)?;
    if !build.is_empty() {
        tx.batch_execute(&build.join("; "))
            .await
            .ctx(&format!("building the indexes of {dst}"))?;
    }
    Ok(out)
}

impl TableSnapshot {
    /// Copy the tables into the snapshot schema and digest the copies.
    pub(super) async fn capture_copies(&self, ctx: &Context) -> Result<Snapshot> {
        for t in &self.tables {
            t.check()?;
        }
        crate::ident::check_ident("schema", &self.snapshot_schema)?;
        ensure_schema(&self.db, &self.snapshot_schema).await?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .await
            .ctx("starting capture")?;
        crate::checkpoint::set_lock_waits(&tx, self.lock_timeout).await?;
        let mut existing = Vec::new();
        for t in &self.tables {
            if relation_exists(&tx, t).await? {
                existing.push(t.quoted());
            }
        }
        if !existing.is_empty() {
            tx.batch_execute(&format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE",
                existing.join(", ")
            ))
            .await
            .ctx("locking tables for capture")?;
        }
        // A second session in this transaction's snapshot hashes big tables while they are
        // copied (none when the snapshot cannot be shared: the copy is hashed afterwards).
        let reader = if self.largest_table(&tx).await? >= SOURCE_HASH_MIN_BYTES {
            snapshot_reader(&self.db, &tx).await
        } else {
            None
        };
        let mut entries = Vec::new();
        let mut size = 0u64;
        for (i, t) in self.tables.iter().enumerate() {
            let Some(oid) = catalog::table_oid(&tx, t).await? else {
                entries.push(Entry {
                    table: t.clone(),
                    copy: None,
                    definition: None,
                    copy_definition: None,
                    key: vec![],
                    hash: None,
                });
                continue;
            };
            let def = catalog::table_model_by_oid(&tx, oid).await?;
            let key = catalog::order_key(&tx, oid).await?;
            let copy = self.copy_name(&id, i, t);
            let cols = def.insertable_columns();
            let sizes = tx
                .query_one(
                    "SELECT greatest(reltuples, 0)::bigint, pg_catalog.pg_relation_size(oid) \
                     FROM pg_catalog.pg_class WHERE oid = $1",
                    &[&oid],
                )
                .await
                .ctx("reading table size")?;
            let (estimate, bytes): (i64, i64) = (sizes.get(0), sizes.get(1));
            let chunk_leaves = hash::chunk_leaves_for(estimate.max(0) as u64);
            // The rows are hashed from the table itself, in a second session in the same
            // snapshot, while they are copied: the same rows the copy receives. Generated
            // columns are recomputed by the copy, so those tables hash the copy afterwards.
            let source_shape = Shape {
                rel: t.quoted(),
                columns: def.column_names(),
                key: key.clone(),
            };
            let hash_source = reader.is_some()
                && bytes as u64 >= SOURCE_HASH_MIN_BYTES
                && def.columns.iter().all(|c| c.generated.is_empty());
            let during_load = async {
                match (&reader, hash_source) {
                    (Some(r), true) => {
                        Some(hash::hash_relation(r, &source_shape, chunk_leaves).await)
                    }
                    _ => None,
                }
            };
            let hashed = copy_table(
                &tx,
                t,
                &copy,
                " EXCLUDING DEFAULTS EXCLUDING IDENTITY",
                &cols,
                during_load,
            )
            .await?;
            let h = match hashed {
                Some(h) => h?,
                None => {
                    let shape = Shape {
                        rel: copy.quoted(),
                        columns: def.column_names(),
                        key: key.clone(),
                    };
                    hash::hash_relation(tx.client(), &shape, chunk_leaves).await?
                }
            };
            size += h.bytes;
            let copy_def = catalog::table_model(&tx, &copy)
                .await?
                .ok_or_else(|| backend_msg("snapshot copy vanished during capture"))?;
            tx.batch_execute(&format!("ANALYZE {}", copy.quoted()))
                .await
                .ctx("analyzing snapshot copy")?;
            ctx.progress(&format!("capture {t}"), h.rows, Some(h.rows), "rows");
            entries.push(Entry {
                table: t.clone(),
                copy: Some(copy),
                definition: Some(def),
                copy_definition: Some(copy_def.digest()),
                key,
                hash: Some(h),
            });
        }
        if let Some(r) = &reader {
            let _ = r.batch_execute("ROLLBACK").await;
        }
        drop(reader);
        tx.commit().await.ctx("committing capture")?;
        let mut dh = Hasher::new();
        dh.field(b"rollback-postgres/table-copy/v1");
        for e in &entries {
            e.digest_part(&mut dh);
        }
        let fps: Vec<Digest> = entries
            .iter()
            .map(|e| {
                table_fingerprint(
                    &e.table,
                    e.definition.as_ref(),
                    e.hash.as_ref().map(|h| h.root),
                )
            })
            .collect();
        let descriptor = Descriptor {
            version: 1,
            database: self.db.name().to_string(),
            snapshot_schema: self.snapshot_schema.clone(),
            tables: entries,
        };
        Ok(Snapshot::new(
            format!("pg-{id}"),
            self.resource.clone(),
            TABLE_COPY_KIND,
            dh.finish(),
            combine(&fps),
            serde_json::to_value(&descriptor)
                .map_err(|e| Error::invalid(format!("encoding descriptor: {e}")))?,
        )
        .with_size(size))
    }
}
