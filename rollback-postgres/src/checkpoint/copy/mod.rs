//! [`TableSnapshot`]: a checkpoint that copies tables inside the database. Capture is in
//! [`capture`], the three ways of putting the tables back in [`restore`].

mod capture;
mod restore;

use crate::catalog::{self, TableModel};
use crate::db::Database;
use crate::error::PgResultExt;
use crate::fingerprint::{combine, table_fingerprint, SnapshotHasher};
use crate::hash::TableHash;
use crate::ident::Table;
use crate::reads::read_tx;
use async_trait::async_trait;
use rollback_core::{Checkpoint, Context, Digest, Error, Hasher, Restored, Result, Snapshot};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_postgres::{GenericClient, Transaction};

/// The default schema holding snapshot copies.
pub const DEFAULT_SNAPSHOT_SCHEMA: &str = "_rollback_snapshots";

/// The snapshot kind of a [`TableSnapshot`].
pub const TABLE_COPY_KIND: &str = "pg.table-copy";

/// How a [`TableSnapshot`] puts its tables back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMethod {
    /// Delta where it applies, else swap where safe, else copy, else merge (the default).
    #[default]
    Auto,
    /// Put back only the key ranges that differ from the snapshot, and read the copy only
    /// there. Under one transaction the live tables are locked `EXCLUSIVE` (plain reads
    /// go on, writers wait) and hashed in the key ranges of the chunks stored at capture
    /// (a big table on [`TableSnapshot::fingerprint_parallelism`] sessions); each
    /// differing range of the copy is hashed and must equal its stored chunk digest
    /// (else [`Error::DigestMismatch`], nothing changed); then, in those ranges only, rows
    /// the copy lacks are deleted, changed rows updated and missing rows inserted, by key
    /// (as [`RestoreMethod::Merge`] does: user triggers off, foreign keys from outside
    /// kept and cascades into rows outside the checkpoint refused with
    /// [`Error::Conflict`]). Each restored range is hashed again and must give its stored
    /// chunk, so every chunk of the table is the captured one: the restore returns the
    /// baseline fingerprint as its proof (the `proof` of [`Restored`]) without reading the table
    /// again. The copy is never written, so the snapshot stays restorable.
    ///
    /// **Cost**: one read of each live table (about one fingerprint), plus the differing
    /// ranges read twice in the copy and twice in the table, plus the rows written —
    /// against a swap's full re-hash of the copy and, to keep the snapshot, a full
    /// duplicate. [`Restored::method`] is `delta`, [`Restored::items_changed`] the rows
    /// written — exactly the rows that differed, so also the exact count of its
    /// `discarded` — and the note how many ranges differed.
    ///
    /// **Trust**: a copy altered outside the ranges used is not read, so not refused;
    /// a later restore that uses those ranges (or any other method) refuses it. The
    /// chunk digests are those of the snapshot's descriptor, as kept by the journal.
    ///
    /// **Limits**: only when every live table exists, has the captured definition
    /// (sequence values aside: they are set back) and the captured key, and the snapshot
    /// has chunk digests. Under [`RestoreMethod::Auto`] the other methods follow when it
    /// does not apply, and also when the differing ranges hold more than half of a table
    /// of 32,768 rows or more (a whole-table method is then cheaper; the table was read
    /// once for nothing). Asked for alone it runs whatever share differs, and fails with
    /// [`Error::Conflict`] naming why when it does not apply.
    Delta,
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
    /// key; the only whole-table method for tables referenced by foreign keys from outside
    /// the set.
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
/// **Restore**: first by [`RestoreMethod::Delta`] where it applies (the tables keep their
/// captured definitions and only some key ranges differ; one transaction). Otherwise
/// (one transaction per method tried): the copies are locked, re-hashed and checked against the
/// digest before anything changes (a copy of 200 000 rows or more is re-hashed by two
/// sessions, split at a chunk boundary recorded at capture; nothing proves cheaply that a
/// copy was not written since, so the re-hash is never skipped); then the live tables are locked `ACCESS EXCLUSIVE` and
/// put back by one of the [`RestoreMethod`]s; finally each table's definition is compared
/// with the captured one — everything pg_dump emits for it (see [`crate::TableModel`]) and
/// owned sequences with their values — and any difference rolls the transaction back.
/// The fingerprint covers the same definition, so parity is never claimed while any of it
/// differs.
/// [`Restored::method`] says which method ran (`delta`, `swap`, `copy`, `merge`, or `noop` when the
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
    let d = Descriptor::deserialize(&snap.descriptor)
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
    ///
    /// An autovacuum worker holding a table (its lock conflicts with a restore's) is
    /// cancelled by PostgreSQL after `deadlock_timeout` of waiting (1 s by default); these
    /// transactions lower it to 10 ms for themselves where the role may set it (a
    /// superuser, or `GRANT SET ON PARAMETER deadlock_timeout` on PostgreSQL 15+), so a
    /// rollback does not wait that second. Anti-wraparound vacuums are never cancelled.
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
        super::read_descriptor(
            snap,
            &self.resource,
            TABLE_COPY_KIND,
            "table snapshot descriptor",
            &self.tables,
            |d: &Descriptor| d.tables.iter().map(|e| e.table.clone()).collect(),
        )
    }
}

async fn relation_exists<C: GenericClient>(c: &C, t: &Table) -> Result<bool> {
    Ok(catalog::table_oid(c, t).await?.is_some())
}

#[async_trait]
impl Checkpoint for TableSnapshot {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
        self.capture_copies(ctx).await
    }

    async fn restore(&self, snap: &Snapshot, ctx: &Context) -> Result<Restored> {
        self.restore_from_copies(snap, ctx).await
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        let mut obj = self.db.lib_client().await?;
        let tx = read_tx(&mut obj, "starting fingerprint").await?;
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
