//! [`TableSnapshot`]: a checkpoint that copies tables inside the database.

use crate::catalog::{self, diff_tables, TableModel};
use crate::db::Database;
use crate::error::{backend_msg, PgResultExt};
use crate::hash::{self, Shape, TableHash};
use crate::ident::{column_list, column_list_with, quote_ident, Table};
use crate::reconcile::{self, Reconcile};
use async_trait::async_trait;
use rollback_core::{
    Checkpoint, Context, Digest, Discarded, Error, Hasher, Proof, Restored, Result, Snapshot,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio_postgres::{GenericClient, IsolationLevel, Transaction};

/// The default schema holding snapshot copies.
pub const DEFAULT_SNAPSHOT_SCHEMA: &str = "_rollback_snapshots";

/// The snapshot kind of a [`TableSnapshot`].
pub const TABLE_COPY_KIND: &str = "pg.table-copy";

/// How a [`TableSnapshot`] puts its tables back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMethod {
    /// Swap where safe, else copy, else merge (the default).
    #[default]
    Auto,
    /// Rename the snapshot copy into place (O(1) in the data): drop the live table, move
    /// the copy into its schema under its name, rename indexes, put back defaults,
    /// sequences, triggers, foreign keys (re-validated), and everything else pg_dump
    /// emits for the table (owner, table and column privileges, comments on the table,
    /// its columns, constraints, indexes and triggers, statistics targets, storage,
    /// compression and attribute options, `CLUSTER ON`, storage parameters including
    /// `toast.*`, replica identity, row-level security), then check the definition equals
    /// the captured one. Only when nothing else depends on the table (see
    /// [`TableSnapshot`]).
    Swap,
    /// `TRUNCATE` the tables together and `INSERT … SELECT` from the copies.
    Copy,
    /// Delete rows added since, update rows changed since (compared by binary image, `*<>`),
    /// insert rows deleted since, by
    /// key; the only method for tables referenced by foreign keys from outside the set.
    Merge,
}

/// A checkpoint of one table or a set of tables, kept inside the database.
///
/// **Capture** (one `REPEATABLE READ` transaction, holding `ACCESS SHARE` locks so the
/// definitions cannot change meanwhile): for each table, `CREATE TABLE
/// <snapshot schema>.<copy> (LIKE <table> INCLUDING ALL EXCLUDING DEFAULTS EXCLUDING
/// IDENTITY)` and `INSERT … SELECT` — no row passes through the client. The copy's indexes
/// (and the primary key, unique and exclusion constraints they back) are built after the
/// rows are in, one bulk build each, with the names and definitions `LIKE` gave them. The
/// current values of sequences owned by the tables are recorded. The rows are hashed
/// (see [`crate::TableHashParity`] for the hash) and the copy's definition fingerprinted:
/// the snapshot's `digest` covers both, so an altered copy (rows or definition) is refused
/// at restore with [`Error::DigestMismatch`]. A table of 1 MiB or more is hashed
/// while it is copied, by a second session in the capture's exported snapshot — the same
/// rows the copy receives — unless it has generated columns (the copy computes those
/// again, so the copy itself is hashed afterwards, as is any table when the snapshot
/// cannot be shared).
///
/// **Restore** (one transaction): the copies are locked, re-hashed and checked against the
/// digest before anything changes (a copy of 200 000 rows or more is re-hashed by two
/// sessions, split at a chunk boundary recorded at capture; nothing proves cheaply that a
/// copy was not written since, so the re-hash is never skipped); then the live tables are locked `ACCESS EXCLUSIVE` and
/// put back by one of the [`RestoreMethod`]s; finally each table's definition is compared
/// with the captured one — everything pg_dump emits for it (see [`crate::TableModel`]) and
/// owned sequences with their values — and any difference rolls the transaction back.
/// The fingerprint covers the same definition, so parity is never claimed while any of it
/// differs.
/// [`Restored::method`] says which method ran (`swap`, `copy`, `merge`, or `noop` when the
/// tables already hold the snapshot's content).
///
/// **When a swap is safe.** The live table must be a plain table (not partitioned, not a
/// partition, no inheritance, not typed), without identity columns, unlogged storage,
/// replica identity `USING INDEX`, or a tablespace or access method of its own (or its
/// indexes'), and nothing outside the table may depend on it: no foreign key
/// of another table (or itself) referencing it, no view, rule, policy, publication,
/// extended statistics, or use of its row type. Its own foreign keys are re-created and
/// re-validated (a read of the table, the only part under the lock that is not O(1)).
/// The swap consumes the copy, so beforehand — while the live table is not yet locked —
/// the verified copy is duplicated (indexes built after the rows are in), and the duplicate
/// takes its name afterwards: the snapshot can be restored again
/// ([`TableSnapshot::keep_snapshot_after_swap`] turns this off).
///
/// **Copy** needs the live definitions to equal the captured ones (revert schema steps
/// first — the executor does, in reverse order, before restoring checkpoints) and no
/// foreign key from outside the set referencing a table of the set; user triggers are
/// disabled during the restore and re-enabled as they were. **Merge** has the same
/// definition requirement, needs a key, and refuses (with [`Error::Conflict`]) to delete a
/// row that a table outside the set still references through an `ON DELETE CASCADE / SET
/// NULL / SET DEFAULT` foreign key.
///
/// A table absent at capture is recorded as absent; restoring drops it (without
/// `CASCADE`).
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_core::{Checkpoint, Context};
/// use rollback_postgres::{Database, Table, TableSnapshot};
/// let db = Database::connect("postgres://postgres@127.0.0.1:55432/shop")?;
/// let cp = TableSnapshot::new(&db, Table::public("customers"));
/// assert_eq!(cp.resource(), "postgres:shop/public.customers");
/// let ctx = Context::detached();
/// let snap = cp.capture(&ctx).await?;
/// // ... a migration changes public.customers ...
/// let how = cp.restore(&snap, &ctx).await?;
/// println!("restored by {}", how.method);
/// cp.discard(&snap, &ctx).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    db: Database,
    tables: Vec<Table>,
    resource: String,
    snapshot_schema: String,
    method: RestoreMethod,
    lock_timeout: Duration,
    keep_after_swap: bool,
    parallelism: usize,
}

/// The captured entry of `table` in a table snapshot (for verifiers).
pub(crate) fn table_entry(snap: &Snapshot, table: &Table) -> Result<Option<Entry>> {
    if snap.kind != TABLE_COPY_KIND {
        return Ok(None);
    }
    let d: Descriptor = serde_json::from_value(snap.descriptor.clone())
        .map_err(|e| Error::invalid(format!("malformed table snapshot descriptor: {e}")))?;
    Ok(d.tables.into_iter().find(|e| &e.table == table))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Descriptor {
    version: u32,
    database: String,
    snapshot_schema: String,
    tables: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) table: Table,
    /// `None`: the table did not exist at capture.
    pub(crate) copy: Option<Table>,
    pub(crate) definition: Option<TableModel>,
    pub(crate) copy_definition: Option<Digest>,
    pub(crate) key: Vec<String>,
    pub(crate) hash: Option<TableHash>,
}

impl Entry {
    fn digest_part(&self, h: &mut Hasher) {
        h.field(self.table.quoted().as_bytes());
        match (&self.copy_definition, &self.hash, &self.definition) {
            (Some(cd), Some(hash), Some(def)) => {
                h.field(&cd.0);
                h.field(&hash.root.0);
                for s in &def.sequences {
                    h.field(s.quoted().as_bytes());
                    h.field(&s.last_value.to_le_bytes());
                    h.field(&[s.is_called as u8]);
                }
            }
            _ => {
                h.field(b"absent");
            }
        }
    }
}

fn table_fingerprint(t: &Table, def: Option<&TableModel>, root: Option<Digest>) -> Digest {
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

fn combine(parts: &[Digest]) -> Digest {
    let mut h = Hasher::new();
    h.field(b"rollback-postgres/tables/v1");
    for p in parts {
        h.field(&p.0);
    }
    h.finish()
}

impl TableSnapshot {
    /// A checkpoint of one table.
    pub fn new(db: &Database, table: Table) -> Self {
        Self::of_tables(db, vec![table])
    }

    /// A checkpoint of a set of tables captured together (one consistent snapshot) and
    /// restored together (one transaction); needed when tables reference each other and
    /// the restore must truncate them together. The resource id lists them all (see
    /// [`Database::tables_resource`]).
    pub fn of_tables(db: &Database, mut tables: Vec<Table>) -> Self {
        tables.sort();
        tables.dedup();
        TableSnapshot {
            resource: db.tables_resource(&tables),
            db: db.clone(),
            tables,
            snapshot_schema: DEFAULT_SNAPSHOT_SCHEMA.into(),
            method: RestoreMethod::Auto,
            lock_timeout: Duration::from_secs(5),
            keep_after_swap: true,
            parallelism: 2,
        }
    }

    /// Keep copies in another schema (default [`DEFAULT_SNAPSHOT_SCHEMA`]).
    pub fn snapshot_schema(mut self, schema: impl Into<String>) -> Self {
        self.snapshot_schema = schema.into();
        self
    }

    /// Choose the restore method (default [`RestoreMethod::Auto`]).
    pub fn restore_method(mut self, method: RestoreMethod) -> Self {
        self.method = method;
        self
    }

    /// `lock_timeout` for capture and restore (default 5 s): a restore that cannot get its
    /// locks in time fails with a transient error, which the executor retries.
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }

    /// Whether a swap first duplicates the snapshot copy so that the snapshot can be
    /// restored again later (default `true`). The duplicate is written before the live
    /// tables are locked; `false` makes a restore faster but consumes the snapshot (a later
    /// restore of it then only succeeds if the tables still hold its content: `noop`).
    ///
    /// `false` suits a caller that restores a snapshot at most once and then discards it —
    /// as the executor does after a rollback it has verified — when the duplicate's cost
    /// (a full copy of each table) matters: the swap then costs the integrity re-hash of the
    /// copy plus O(1) catalog changes. Keep the default when a snapshot may be restored
    /// twice (a failed verification after restore, a manual second attempt).
    pub fn keep_snapshot_after_swap(mut self, keep: bool) -> Self {
        self.keep_after_swap = keep;
        self
    }

    /// Sessions that [`Checkpoint::fingerprint`] hashes a big table (200 000 rows or more,
    /// with a key) with in parallel, each a binary COPY of one key range, all in one
    /// exported snapshot (default 2; 1 hashes in one pass). The digest does not depend on
    /// it. Each extra session is a connection from the pool.
    pub fn fingerprint_parallelism(mut self, sessions: usize) -> Self {
        self.parallelism = sessions.max(1);
        self
    }

    /// The covered tables.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    fn lock_timeout_sql(&self) -> String {
        format!(
            "SET LOCAL lock_timeout = '{}ms'",
            self.lock_timeout.as_millis().max(1)
        )
    }

    fn copy_name(&self, id: &str, i: usize, t: &Table) -> Table {
        let mut base = String::new();
        for ch in t.name.chars() {
            if base.len() + ch.len_utf8() > 36 {
                break;
            }
            base.push(ch);
        }
        Table::new(&self.snapshot_schema, format!("{base}_{id}_{i}"))
    }

    /// The size in bytes of the largest covered table (0 when none exists).
    async fn largest_table(&self, tx: &Transaction<'_>) -> Result<u64> {
        let names: Vec<String> = self.tables.iter().map(|t| t.quoted()).collect();
        let n: i64 = tx
            .query_one(
                "SELECT coalesce(max(pg_catalog.pg_relation_size(c.oid)), 0)::bigint \
                 FROM unnest($1::text[]) AS u(name) \
                 JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(u.name)",
                &[&names],
            )
            .await
            .ctx("reading table sizes")?
            .get(0);
        Ok(n.max(0) as u64)
    }

    /// Parse and check a snapshot's descriptor.
    fn descriptor(&self, snap: &Snapshot) -> Result<Descriptor> {
        snap.ensure_resource(&self.resource)?;
        if snap.kind != TABLE_COPY_KIND {
            return Err(Error::invalid(format!(
                "snapshot kind {} is not {TABLE_COPY_KIND}",
                snap.kind
            )));
        }
        let d: Descriptor = serde_json::from_value(snap.descriptor.clone())
            .map_err(|e| Error::invalid(format!("malformed table snapshot descriptor: {e}")))?;
        let tables: Vec<Table> = d.tables.iter().map(|e| e.table.clone()).collect();
        if tables != self.tables {
            return Err(Error::WrongResource {
                expected: self.resource.clone(),
                found: format!("tables {tables:?}"),
            });
        }
        Ok(d)
    }
}

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
        if big && !self.opened {
            self.opened = true;
            if let Some(id) = &self.exported {
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

    /// End the extra sessions' transactions (they go back to the pool).
    pub(crate) async fn close(self) {
        for o in &self.extra {
            let _ = o.batch_execute("ROLLBACK").await;
        }
    }
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
async fn copy_table<T>(
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

/// Split keys for re-hashing a snapshot copy in two parts: the start of the captured chunk
/// nearest the middle, whose rank the capture recorded (a copy changed since gets another
/// root all the same; see [`hash::hash_relation_split`]).
async fn chunk_splits(
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

async fn relation_exists<C: GenericClient>(c: &C, t: &Table) -> Result<bool> {
    Ok(catalog::table_oid(c, t).await?.is_some())
}

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

#[async_trait]
impl Checkpoint for TableSnapshot {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
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
        tx.batch_execute(&self.lock_timeout_sql())
            .await
            .ctx("setting lock_timeout")?;
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
        Ok(Snapshot {
            id: format!("pg-{id}"),
            resource: self.resource.clone(),
            kind: TABLE_COPY_KIND.into(),
            digest: dh.finish(),
            fingerprint: combine(&fps),
            captured_at_ms: rollback_core::now_ms(),
            size_bytes: Some(size),
            descriptor: serde_json::to_value(&descriptor)
                .map_err(|e| Error::invalid(format!("encoding descriptor: {e}")))?,
        })
    }

    async fn restore(&self, snap: &Snapshot, ctx: &Context) -> Result<Restored> {
        let d = self.descriptor(snap)?;
        let methods: Vec<Method> = match self.method {
            RestoreMethod::Auto => vec![Method::Swap, Method::Copy, Method::Merge],
            RestoreMethod::Swap => vec![Method::Swap],
            RestoreMethod::Copy => vec![Method::Copy],
            RestoreMethod::Merge => vec![Method::Merge],
        };
        let mut reasons: Vec<String> = Vec::new();
        crate::markers::ensure_for_fence(&self.db, crate::markers::DEFAULT_MARKER_SCHEMA, ctx)
            .await?;
        for m in methods {
            let mut obj = self.db.lib_client().await?;
            let client: &mut tokio_postgres::Client = &mut obj;
            let tx = client.transaction().await.ctx("starting restore")?;
            tx.batch_execute(&self.lock_timeout_sql())
                .await
                .ctx("setting lock_timeout")?;
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
            let mut mismatch = None;
            for e in &d.tables {
                let now = catalog::table_model(&tx, &e.table).await?;
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
                    mismatch = Some(format!(
                        "{} left {} different from the snapshot: {diff}",
                        m.name(),
                        e.table
                    ));
                    break;
                }
            }
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

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .ctx("starting fingerprint")?;
        let mut hasher = SnapshotHasher::begin(&tx, self.parallelism).await;
        let mut fps = Vec::new();
        let result = async {
            for t in &self.tables {
                let Some(oid) = catalog::table_oid(&tx, t).await? else {
                    fps.push(table_fingerprint(t, None, None));
                    continue;
                };
                let model = catalog::table_model_by_oid(&tx, oid).await?;
                let key = catalog::order_key(&tx, oid).await?;
                let root = hasher.root(&self.db, &tx, t, oid, &model, key).await?;
                fps.push(table_fingerprint(t, Some(&model), Some(root)));
            }
            Ok::<(), Error>(())
        }
        .await;
        hasher.close().await;
        result?;
        tx.commit().await.ctx("ending fingerprint")?;
        Ok(combine(&fps))
    }

    async fn discard(&self, snap: &Snapshot, _ctx: &Context) -> Result<()> {
        let d = self.descriptor(snap)?;
        let copies: Vec<String> = d
            .tables
            .iter()
            .filter_map(|e| e.copy.as_ref().map(|c| c.quoted()))
            .collect();
        if copies.is_empty() {
            return Ok(());
        }
        self.db
            .lib_client()
            .await?
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", copies.join(", ")))
            .await
            .ctx("dropping snapshot copies")
    }
}

/// Foreign keys among `tables`: (child, parent) pairs, and those from outside into the set.
struct FkInfo {
    /// Topological order of the set (parents first).
    order: Vec<Table>,
    /// FKs from tables outside the set into it: (constraint, child, parent, cascading delete).
    incoming: Vec<(String, Table, Table, bool)>,
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
    for r in rows {
        let child = Table::new(r.get::<_, String>(1), r.get::<_, String>(2));
        let parent = Table::new(r.get::<_, String>(3), r.get::<_, String>(4));
        if !set.contains(&parent) {
            continue;
        }
        if set.contains(&child) {
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
    Ok(FkInfo { order, incoming })
}

/// User triggers currently enabled on `t`: (name, enabled mode).
async fn enabled_triggers(tx: &Transaction<'_>, t: &Table) -> Result<Vec<(String, String)>> {
    let rows = tx
        .query(
            &format!(
                "SELECT tgname::text, tgenabled::text FROM pg_catalog.pg_trigger \
                 WHERE tgrelid = {}::regclass AND NOT tgisinternal AND tgenabled <> 'D' ORDER BY tgname",
                t.regclass_literal()
            ),
            &[],
        )
        .await
        .ctx("reading triggers")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn enable_trigger_sql(t: &Table, name: &str, mode: &str) -> String {
    let how = match mode {
        "R" => "ENABLE REPLICA",
        "A" => "ENABLE ALWAYS",
        "D" => "DISABLE",
        _ => "ENABLE",
    };
    format!(
        "ALTER TABLE {} {how} TRIGGER {}",
        t.quoted(),
        quote_ident(name)
    )
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

    async fn swap(&self, tx: &Transaction<'_>, d: &Descriptor) -> Result<Attempt> {
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
                    tx.batch_execute(&enable_trigger_sql(t, &tr.name, &tr.enabled))
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

    async fn copy_back(&self, tx: &Transaction<'_>, d: &Descriptor) -> Result<Attempt> {
        let fks = fk_info(tx, &self.tables).await?;
        if let Some((name, child, parent, _)) = fks.incoming.first() {
            return Ok(Attempt::Unsuitable(format!(
                "foreign key {name} of {child} (outside the checkpoint) references {parent}"
            )));
        }
        let plans = match self.reconcile_plans(tx, d, true).await? {
            Ok(p) => p,
            Err(why) => return Ok(Attempt::Unsuitable(why)),
        };
        let mut items = self.drop_absent(tx, d).await?;
        let present: Vec<&Entry> = d
            .tables
            .iter()
            .filter(|e| e.definition.is_some() && e.copy.is_some())
            .collect();
        if present.is_empty() {
            return Ok(Attempt::Done(items, vec![]));
        }
        tx.batch_execute(&format!(
            "TRUNCATE {}",
            present
                .iter()
                .map(|e| e.table.quoted())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .ctx("truncating tables for restore")?;
        for (_, p, _) in &plans {
            Self::run_all(tx, &p.pre, "restoring table definition").await?;
        }
        let disabled = self.disable_triggers(tx, &present).await?;
        for t in &fks.order {
            let Some(e) = present.iter().find(|e| &e.table == t) else {
                continue;
            };
            let (Some(def), Some(copy)) = (&e.definition, &e.copy) else {
                continue;
            };
            let cols = def.insertable_columns();
            let n = tx
                .execute(
                    &format!(
                        "INSERT INTO {} ({}) {} SELECT {} FROM {}",
                        t.quoted(),
                        column_list(&cols),
                        overriding(def),
                        column_list(&cols),
                        copy.quoted()
                    ),
                    &[],
                )
                .await
                .ctx(&format!("copying rows back into {t}"))?;
            items += n;
        }
        self.enable_triggers(tx, &disabled).await?;
        let notes = self.finish_structure(tx, &plans, d).await?;
        self.set_sequences(tx, d).await?;
        Ok(Attempt::Done(items, notes))
    }

    async fn merge(&self, tx: &Transaction<'_>, d: &Descriptor) -> Result<Attempt> {
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
        let key_match = |e: &Entry, a: &str, b: &str| -> String {
            e.key
                .iter()
                .map(|k| format!("{a}.{} = {b}.{}", quote_ident(k), quote_ident(k)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        // Refuse to cascade into rows outside the checkpoint.
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
                        "SELECT count(*) FROM {} c WHERE EXISTS (SELECT 1 FROM {} l WHERE ({}) = ({}) \
                         AND NOT EXISTS (SELECT 1 FROM {} s WHERE {}))",
                        child.quoted(),
                        parent.quoted(),
                        column_list_with("l", &ref_cols),
                        column_list_with("c", &fk_cols),
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
        let mut items = self.drop_absent(tx, d).await?;
        for (_, p, _) in &plans {
            Self::run_all(tx, &p.pre, "restoring table definition").await?;
        }
        let disabled = self.disable_triggers(tx, &present).await?;
        for t in fks.order.iter().rev() {
            let Some(e) = present.iter().find(|e| &e.table == t) else {
                continue;
            };
            let Some(copy) = &e.copy else { continue };
            items += tx
                .execute(
                    &format!(
                        "DELETE FROM {} l WHERE NOT EXISTS (SELECT 1 FROM {} s WHERE {})",
                        t.quoted(),
                        copy.quoted(),
                        key_match(e, "s", "l")
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
                            "UPDATE {} l SET ({}) = ROW({}) FROM {} s WHERE {} AND (l.*) OPERATOR(pg_catalog.*<>) (s.*)",
                            t.quoted(),
                            column_list(&settable),
                            column_list_with("s", &settable),
                            copy.quoted(),
                            key_match(e, "s", "l")
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
                        "INSERT INTO {} ({}) {} SELECT {} FROM {} s WHERE NOT EXISTS (SELECT 1 FROM {} l WHERE {})",
                        t.quoted(),
                        column_list(&cols),
                        overriding(def),
                        column_list_with("s", &cols),
                        copy.quoted(),
                        t.quoted(),
                        key_match(e, "s", "l")
                    ),
                    &[],
                )
                .await
                .map_err(|err| fk_conflict(err, t))?;
        }
        self.enable_triggers(tx, &disabled).await?;
        let notes = self.finish_structure(tx, &plans, d).await?;
        self.set_sequences(tx, d).await?;
        Ok(Attempt::Done(items, notes))
    }

    async fn disable_triggers(
        &self,
        tx: &Transaction<'_>,
        present: &[&Entry],
    ) -> Result<Vec<(Table, String, String)>> {
        let mut disabled = Vec::new();
        for e in present {
            for (name, mode) in enabled_triggers(tx, &e.table).await? {
                tx.batch_execute(&enable_trigger_sql(&e.table, &name, "D"))
                    .await
                    .ctx("disabling trigger for restore")?;
                disabled.push((e.table.clone(), name, mode));
            }
        }
        Ok(disabled)
    }

    async fn enable_triggers(
        &self,
        tx: &Transaction<'_>,
        disabled: &[(Table, String, String)],
    ) -> Result<()> {
        for (t, name, mode) in disabled {
            tx.batch_execute(&enable_trigger_sql(t, name, mode))
                .await
                .ctx("re-enabling trigger")?;
        }
        Ok(())
    }
}

fn overriding(def: &TableModel) -> &'static str {
    if def.columns.iter().any(|c| c.identity == "a") {
        "OVERRIDING SYSTEM VALUE"
    } else {
        ""
    }
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

/// Why the tables of `d` cannot be swapped (None: safe).
async fn swap_unsafe(tx: &Transaction<'_>, d: &Descriptor) -> Result<Option<String>> {
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
async fn rename_indexes(tx: &Transaction<'_>, t: &Table, def: &TableModel) -> Result<()> {
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
