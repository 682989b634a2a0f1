//! The table fingerprint that both table checkpoints ([`crate::TableSnapshot`],
//! [`crate::TableUndoLog`]) and the verifiers compute, so that they agree whichever
//! checkpoint was used: per table a digest of its name, definition and content root
//! (see [`crate::hash`]), combined in table order. Also how tables are hashed for it
//! inside one snapshot ([`SnapshotHasher`]) and how a snapshot copy is split to be
//! re-hashed in parallel ([`chunk_splits`]).

use crate::catalog::{self, TableModel};
use crate::db::Database;
use crate::error::PgResultExt;
use crate::hash::{self, Shape, TableHash};
use crate::ident::Table;
use rollback_core::{Digest, Hasher, Result};
use tokio_postgres::{GenericClient, Transaction};

/// The fingerprint of one table: its name, the digest of its definition and the root of
/// its content hash — or `absent` when it does not exist (no definition or no root).
pub(crate) fn table_fingerprint(
    t: &Table,
    def: Option<&TableModel>,
    root: Option<Digest>,
) -> Digest {
    let mut h = Hasher::new();
    h.field(b"rollback-postgres/table/v1");
    h.field(t.quoted().as_bytes());
    match (def, root) {
        (Some(d), Some(r)) => {
            h.field(&d.digest().0);
            h.field(&r.0);
        }
        _ => {
            h.field(b"absent");
        }
    }
    h.finish()
}

/// The fingerprint of a set of tables, from theirs in table order.
pub(crate) fn combine(parts: &[Digest]) -> Digest {
    let mut h = Hasher::new();
    h.field(b"rollback-postgres/tables/v1");
    for p in parts {
        h.field(&p.0);
    }
    h.finish()
}

/// Hashes tables inside one `REPEATABLE READ` transaction, a big table (a key and
/// [`hash::PARALLEL_MIN_ROWS`] rows or more) in key ranges on extra sessions that import
/// the transaction's exported snapshot — opened when the first big table needs them. The
/// digest does not depend on how many sessions hash. [`SnapshotHasher::close`] ends the
/// extra sessions' transactions.
pub(crate) struct SnapshotHasher {
    exported: Option<String>,
    parallelism: usize,
    extra: Vec<deadpool_postgres::Object>,
    opened: bool,
}

impl SnapshotHasher {
    /// Export the snapshot of `tx` when `parallelism` > 1 (hash in one pass otherwise, or
    /// when the snapshot cannot be exported).
    pub(crate) async fn begin(tx: &Transaction<'_>, parallelism: usize) -> Self {
        let exported = if parallelism > 1 {
            tx.query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
                .await
                .ok()
                .map(|r| r.get(0))
        } else {
            None
        };
        SnapshotHasher {
            exported,
            parallelism,
            extra: Vec::new(),
            opened: false,
        }
    }

    /// The root hash of table `t` (oid `oid`, definition `model`, ordered by `key`), as
    /// seen by `tx`.
    pub(crate) async fn root(
        &mut self,
        db: &Database,
        tx: &Transaction<'_>,
        t: &Table,
        oid: u32,
        model: &TableModel,
        key: Vec<String>,
    ) -> Result<Digest> {
        let estimate: i64 = tx
            .query_one(
                "SELECT greatest(reltuples, 0)::bigint FROM pg_catalog.pg_class WHERE oid = $1",
                &[&oid],
            )
            .await
            .ctx("reading table size estimate")?
            .get(0);
        let key_types: Vec<String> = key
            .iter()
            .filter_map(|k| model.columns.iter().find(|c| &c.name == k))
            .map(|c| c.data_type.clone())
            .collect();
        let shape = Shape {
            rel: t.quoted(),
            columns: model.column_names(),
            key,
        };
        let big = estimate as u64 >= hash::PARALLEL_MIN_ROWS && !shape.key.is_empty();
        if big {
            self.open(db).await;
        }
        if big && !self.extra.is_empty() {
            let mut clients: Vec<&tokio_postgres::Client> = vec![tx.client()];
            clients.extend(self.extra.iter().map(|o| -> &tokio_postgres::Client { o }));
            let splits = hash::choose_splits(
                tx.client(),
                Some((&t.schema, &t.name)),
                &shape,
                &key_types,
                estimate as u64,
                clients.len(),
            )
            .await?;
            hash::hash_relation_split(&clients, &shape, splits).await
        } else {
            hash::hash_relation(tx.client(), &shape, u64::MAX)
                .await
                .map(|h| h.root)
        }
    }

    /// Open the extra sessions in the exported snapshot (once; as many as the snapshot
    /// could be imported into, up to the parallelism).
    async fn open(&mut self, db: &Database) {
        if self.opened {
            return;
        }
        self.opened = true;
        let Some(id) = &self.exported else { return };
        for _ in 1..self.parallelism {
            let Ok(o) = db.lib_client().await else { break };
            let ok = o
                .batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                    crate::ident::quote_literal(id)
                ))
                .await
                .is_ok();
            if !ok {
                let _ = o.batch_execute("ROLLBACK").await;
                break;
            }
            self.extra.push(o);
        }
    }

    /// `tx`'s session and the extra sessions (opened now if they are not yet), all
    /// seeing `tx`'s snapshot.
    pub(crate) async fn clients<'a>(
        &'a mut self,
        db: &Database,
        tx: &'a Transaction<'_>,
    ) -> Vec<&'a tokio_postgres::Client> {
        self.open(db).await;
        let mut clients: Vec<&tokio_postgres::Client> = vec![tx.client()];
        clients.extend(self.extra.iter().map(|o| -> &tokio_postgres::Client { o }));
        clients
    }

    /// End the extra sessions' transactions (they go back to the pool).
    pub(crate) async fn close(self) {
        for o in &self.extra {
            let _ = o.batch_execute("ROLLBACK").await;
        }
    }
}

/// Split keys for re-hashing a snapshot copy in two parts: the start of the captured chunk
/// nearest the middle, whose rank the capture recorded (a copy changed since gets another
/// root all the same; see [`hash::hash_relation_split`]).
pub(crate) async fn chunk_splits(
    tx: &Transaction<'_>,
    captured: &TableHash,
    def: &TableModel,
    key: &[String],
) -> Result<Vec<hash::Split>> {
    let half = captured.rows / 2;
    let mut rank = 0u64;
    let mut best: Option<(u64, &hash::KeyValue)> = None;
    for c in &captured.chunks {
        if let Some(start) = &c.start {
            if best.is_none_or(|(r, _)| rank.abs_diff(half) < r.abs_diff(half)) {
                best = Some((rank, start));
            }
        }
        rank += c.rows;
    }
    let Some((rank, start)) = best else {
        return Ok(Vec::new());
    };
    let params = start.params()?;
    let mut lits = Vec::new();
    for (k, p) in key.iter().zip(&params) {
        let Some(ty) = def
            .columns
            .iter()
            .find(|c| &c.name == k)
            .map(|c| &c.data_type)
        else {
            return Ok(Vec::new());
        };
        // The key's binary value, as the server prints it.
        let text: String = tx
            .query_one(&format!("SELECT $1::{ty}::text"), &[p])
            .await
            .ctx("reading a split key")?
            .get(0);
        lits.push(format!("{}::{ty}", crate::ident::quote_literal(&text)));
    }
    if lits.len() != key.len() {
        return Ok(Vec::new());
    }
    Ok(vec![hash::Split {
        lits,
        rank: Some(rank),
    }])
}

/// The start keys of `chunks` after the first (whose start is the table's), as typed SQL
/// literals of `key_types` printed by the server in one query; `None` when a start key
/// does not have one value per key column.
pub(crate) async fn chunk_starts(
    c: &tokio_postgres::Client,
    chunks: &[hash::ChunkDigest],
    key_types: &[String],
) -> Result<Option<Vec<hash::Split>>> {
    let mut params = Vec::new();
    for ch in chunks.iter().skip(1) {
        match &ch.start {
            Some(k) if k.0.len() == key_types.len() => params.extend(k.params()?),
            _ => return Ok(None),
        }
    }
    let mut out = Vec::new();
    // At most 60,000 parameters per statement (the protocol allows 65,535).
    let per = (60_000 / key_types.len().max(1)).max(1) * key_types.len().max(1);
    for batch in params.chunks(per) {
        let exprs: Vec<String> = batch
            .iter()
            .enumerate()
            .map(|(i, _)| format!("${}::{}::text", i + 1, key_types[i % key_types.len()]))
            .collect();
        let row = c
            .query_one(
                &format!("SELECT ARRAY[{}]::text[]", exprs.join(", ")),
                &batch
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect::<Vec<_>>(),
            )
            .await
            .ctx("reading chunk start keys")?;
        let texts: Vec<String> = row.get(0);
        for lits in texts.chunks(key_types.len()) {
            out.push(hash::Split {
                lits: lits
                    .iter()
                    .zip(key_types)
                    .map(|(t, ty)| format!("{}::{ty}", crate::ident::quote_literal(t)))
                    .collect(),
                rank: None,
            });
        }
    }
    Ok(Some(out))
}

/// A consistent fingerprint of tables: (per-table fingerprints, models, hashes).
pub(crate) async fn fingerprint_tables<C: GenericClient>(
    c: &C,
    tables: &[Table],
) -> Result<Vec<(Digest, Option<TableModel>, Option<TableHash>)>> {
    let mut out = Vec::new();
    for t in tables {
        let Some(oid) = catalog::table_oid(c, t).await? else {
            out.push((table_fingerprint(t, None, None), None, None));
            continue;
        };
        let model = catalog::table_model_by_oid(c, oid).await?;
        let key = catalog::order_key(c, oid).await?;
        let shape = Shape {
            rel: t.quoted(),
            columns: model.column_names(),
            key,
        };
        let h = hash::hash_relation(c.client(), &shape, u64::MAX).await?;
        out.push((
            table_fingerprint(t, Some(&model), Some(h.root)),
            Some(model),
            Some(h),
        ));
    }
    Ok(out)
}
