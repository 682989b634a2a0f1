//! [`TableUndoLog`]: a checkpoint that copies nothing and logs the prior image of every row
//! changed after capture, so that restore and diff cost O(rows changed). The logs and
//! their triggers are in [`triggers`], what the logs say changed in [`changes`], the
//! restore in [`restore`] and the classification a selective restore undoes by in
//! [`selective`].

mod changes;
mod proof;
mod restore;
mod selective;
mod triggers;

pub use changes::{LoggedChanges, UndoLogParity};

use crate::catalog::{self, TableModel};
use crate::db::Database;
use crate::error::PgResultExt;
use crate::fingerprint::{combine, table_fingerprint, SnapshotHasher};
use crate::hash::{self, ChunkDigest, Shape};
use crate::ident::{check_ident, column_list_with, quote_ident, Table};
use crate::markers::DEFAULT_MARKER_SCHEMA;
use crate::reads::read_tx;
use async_trait::async_trait;
use rollback_core::{Checkpoint, Context, Digest, Error, Restored, Result, Snapshot};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_postgres::GenericClient;

/// The snapshot kind of a [`TableUndoLog`].
pub const UNDO_LOG_KIND: &str = "pg.undo-log";

/// Every trigger this module creates starts with this; the fingerprint leaves them out.
const TRIGGER_PREFIX: &str = "_rollback_undo_";

/// Bookkeeping columns of a log table (a tracked table may not have columns so named).
const SEQ: &str = "_rollback_seq";
const XID: &str = "_rollback_xid";
const PRESENT: &str = "_rollback_present";
const WRITER: &str = "_rollback_writer";
/// What made each log entry: `u` update, `d` delete, `i` insert, `t` truncate, `k` either
/// half of an update that changed the row's key (its old key's image and its new key).
const OP: &str = "_rollback_op";
/// Column names a tracked table may not use: the log's and the restore's own.
const RESERVED_PREFIX: &str = "_rollback_";
/// The widest table (in columns) a selective restore classifies: its working tables hold
/// about five columns per column, and PostgreSQL allows 1600. Wider tables restore every
/// change since capture (counted and named).
const MAX_SELECTIVE_COLUMNS: usize = 300;

/// The session setting that attributes writes to a run (see [`crate::mark_run_writes`]);
/// the undo log records it with every prior image.
pub(crate) const WRITER_SETTING: &str = "rollback.writer";

/// The writer value of a restore's own writes starts with this, followed by a secret
/// drawn at capture and kept in the snapshot's descriptor: the log of the snapshot being
/// restored does not record them (every other live log does). The trigger holds only the
/// secret's md5, so no other session can write unlogged by claiming to be the restore.
const RESTORE_WRITER: &str = "rollback:restore:";

/// A new restore tag (see [`RESTORE_WRITER`]).
fn new_restore_tag() -> String {
    format!("{RESTORE_WRITER}{}", uuid::Uuid::new_v4().simple())
}

/// What a selective [`TableUndoLog`] restore does with a row that both the run and
/// someone else (the application) changed since capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// Keep the application's version of the row: each column holds what the
    /// application left in it (its capture value where the application never set it),
    /// so the run's changes — before or after the application's — are undone; the row
    /// exists as the application's last change to its existence left it (a row it only
    /// updated, and the run deleted, comes back). Every such row is listed in the report.
    #[default]
    KeepApplication,
    /// Put the row back as it was at capture, discarding the application's changes to
    /// it (counted and listed in the report).
    KeepBaseline,
    /// Change nothing and fail the restore with [`Error::Conflict`] listing the rows.
    Refuse,
}

/// A checkpoint of one table or a set of tables that copies nothing: it keeps an **undo
/// log** inside the database.
///
/// **Capture** (one transaction, committed before anything is hashed): per table, a log
/// table in the bookkeeping schema ([`DEFAULT_MARKER_SCHEMA`]) with the table's columns in
/// their own types (`CREATE TABLE … (LIKE …)`, no defaults, indexes or constraints but
/// `NOT NULL`) plus a sequence number, the writing transaction's id, whether the row
/// existed, who wrote and how; statement-level `AFTER INSERT`, `AFTER UPDATE` and `AFTER
/// DELETE` triggers that log, from the statement's transition tables in one `INSERT …
/// SELECT`, the old image of every updated or deleted row and the key of every inserted
/// one (and an update's new keys when keys change); a `BEFORE TRUNCATE` trigger that logs
/// every row before it goes (correct, but as costly as a copy). The triggers are `ENABLE
/// ALWAYS`: they fire in sessions with `session_replication_role = replica` too. The log
/// is append-only to everyone but the restore (a guard trigger refuses `UPDATE`, `DELETE`
/// and `TRUNCATE` of it). Then, in a `REPEATABLE READ` transaction, the tables
/// are fingerprinted exactly as [`crate::TableSnapshot`] does (same digest: the table hash
/// and definition; the triggers of this type are left out of the definition) and that
/// transaction's MVCC snapshot is recorded. A change committed before that snapshot is in
/// the fingerprint; one committed after is in the log: log entries of transactions the
/// recorded snapshot sees are ignored, so no concurrent write escapes and none is undone
/// twice. The same pass keeps the digests of the table's key ranges of 256 rows (up to
/// ~16,384 ranges; larger ranges for tables over 4.2 million rows, whole 4,096-row leaves
/// over 33.5 million), and the same snapshot
/// records the catalog's state of the triggers and the table's storage. Capture therefore
/// costs one fingerprint (on one session), whatever the table size.
///
/// **Restore** (one transaction, the tables locked `EXCLUSIVE`: readers go on, writers
/// wait): refuses a snapshot of another resource, one whose descriptor no longer matches
/// its digest, one whose triggers or log tables are gone or disabled (the log would be
/// incomplete), and tables whose shape (columns, constraints, indexes, triggers) changed
/// since capture (revert schema steps first — the executor does). Then for every logged
/// key the **earliest** entry after capture is the row as it was at capture: rows whose
/// key did not exist are deleted, rows that differ (by binary image) are updated, rows
/// that were deleted are inserted back; owned sequences get their captured values; user
/// triggers are disabled meanwhile; what DDL alone puts back of the definition (owner,
/// privileges, comments, statistics targets, storage parameters, rules, policies…) is put
/// back; the log is emptied. Foreign keys between the tables of the set are respected by order
/// (deletes children first, inserts parents first); a restore that would delete a row a
/// table outside the set still references fails with [`Error::Conflict`] — refused
/// beforehand for cascading foreign keys, so that nothing outside the set changes.
/// [`Restored::method`] is `undo-log`, [`Restored::items_changed`] the rows written.
/// Restoring twice is a no-op the second time. Cost: O(rows changed since capture).
///
/// **The proof reads what changed.** The restore's parity proof, under its lock, re-hashes
/// only the key ranges holding a key logged since capture and takes every other range's
/// digest from capture — sound because every write since capture went through the log,
/// which the restore checks from the catalog first: the triggers and their function are
/// those created at capture, unchanged since (disabling and re-enabling a trigger, or
/// replacing the function, changes its catalog row), still `ENABLE ALWAYS`; the table's
/// storage is the one of capture (a rewrite by `ALTER COLUMN … TYPE`, `VACUUM FULL` or
/// `CLUSTER`, and `TRUNCATE`, give it new storage); no logical replication subscription
/// feeds the table (its apply worker fires no statement trigger) and it has no inheritance
/// children. When any of that is in doubt, when most ranges hold logged keys, or when a
/// re-hashed range differs from its capture digest, the proof reads the whole table.
/// [`Restored::proof`] says which proof was used and why (the run's report shows it), and
/// the executor, which then needs no fingerprint before restoring
/// ([`Checkpoint::restore_proves`]), reads only the changed ranges of a rollback of a few
/// rows. [`TableUndoLog::full_proof`] always reads everything; [`Checkpoint::fingerprint`]
/// does too, as an independent check after the run.
///
/// **Diff**: [`TableUndoLog::changes`] lists the keys that differ from the capture (added,
/// removed, changed — a row changed and changed back is not a difference) from the log
/// alone, in O(rows changed); [`UndoLogParity`] is the same as a verifier.
///
/// **Selective restore.** The trigger also records who wrote each change (the
/// `rollback.writer` setting, which this crate's steps set to the run id inside their
/// transactions, and [`crate::mark_run_writes`] sets for a custom step's). Inside a run
/// (a [`Context`] holding a lease) the restore undoes only the run's writes: rows only
/// others (the application) changed are left as they are — and checked, after the
/// restore's changes and before commit, to be exactly as they were (a foreign key
/// cascading from a row the run added would otherwise take one away: the restore then
/// refuses with [`Error::Conflict`]); rows both changed are conflicts, resolved by the
/// [`ConflictPolicy`] and listed in [`Restored::discarded`]. Its proof, taken under the
/// restore's lock, is the tables' fingerprint with every row others changed replaced by
/// its image at capture: equal to the baseline exactly when nothing of the run's is
/// left. [`Restored::method`] is then `undo-log (selective)` and the log is kept.
/// Refused, with nothing changed: a row whose key changed and that both sides wrote (the
/// log names rows by key, so their changes cannot be told apart — resolve by hand, or
/// restore with [`TableUndoLog::selective`]`(false)`). Tables of more than 300 columns
/// are restored in full. Outside a run, or with `selective(false)`, every change since
/// capture is undone and each one counted.
///
/// **Discard** drops the triggers, their function and the log tables (idempotent). The
/// triggers stay until then: call [`Checkpoint::discard`] once the run is over.
///
/// # Trust and limits
///
/// Restore and diff trust the triggers to have seen every change. What bypasses them is
/// invisible to the log: `ALTER TABLE … DISABLE TRIGGER` (restore refuses a disabled
/// trigger it can see; one disabled and re-enabled meanwhile makes the proof read the
/// whole table), a logical replication subscription's apply worker, and DDL that rewrites
/// or drops data (`DROP COLUMN`, `ALTER COLUMN … TYPE`, renaming a column). Dropping or renaming a captured column also makes
/// every later write to the table fail (the trigger names the captured columns), and its
/// values are not in the log: restore refuses a table whose columns are not the captured
/// ones (a column dropped and re-added is detected by its position). The parity proof — the
/// full fingerprint compared with the snapshot's, which the executor checks after every
/// restore — catches anything the log missed.
///
/// Writers are trusted to say who they are: a session that sets `rollback.writer` to the
/// run's id has its writes undone as the run's. The restore's own tag is a secret of the
/// snapshot (the trigger holds only its md5), so no session can write past the log by
/// claiming to be the restore.
///
/// Tables need a primary key or a `NOT NULL` unique key that is not `DEFERRABLE` (two rows
/// may hold a deferred key at once), must be plain tables (not partitioned), exist at
/// capture, be owned by the capturing role or a role it belongs to (only the owner may
/// drop the triggers at discard), and have no column named `_rollback_…` (the log's own
/// names).
///
/// # When to choose [`crate::TableSnapshot`] instead
///
/// Writes during the migration pay for the trigger (one extra row in the log per changed
/// row, written by one statement per writing statement, in the writer's transaction), and a step that rewrites every row (a backfill) makes the
/// log as large as a copy — then a copy is cheaper, restores by an O(1) swap, and survives
/// column drops and type changes. The undo log fits migrations that change few rows of a
/// big table, or none (the common case of a rollback that never happens), and plans whose
/// capture must not copy the table.
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_core::{Checkpoint, Context};
/// use rollback_postgres::{Database, Table, TableUndoLog};
/// let db = Database::connect("postgres://postgres@127.0.0.1:55432/shop")?;
/// let cp = TableUndoLog::new(&db, Table::public("customers"));
/// let ctx = Context::detached();
/// let snap = cp.capture(&ctx).await?; // triggers + one fingerprint, no copy
/// // ... a migration changes a few rows of public.customers ...
/// for d in cp.changes(&snap).await? {
///     println!("{}: {} added, {} removed, {} changed", d.table, d.added.len(), d.removed.len(), d.changed.len());
/// }
/// let how = cp.restore(&snap, &ctx).await?; // O(rows changed)
/// assert_eq!(how.method, "undo-log");
/// cp.discard(&snap, &ctx).await?; // drops the triggers and the log
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TableUndoLog {
    db: Database,
    tables: Vec<Table>,
    resource: String,
    schema: String,
    lock_timeout: Duration,
    parallelism: usize,
    selective: bool,
    conflicts: ConflictPolicy,
    full_proof: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Descriptor {
    version: u32,
    database: String,
    /// The bookkeeping schema holding the logs and the trigger function.
    schema: String,
    /// `pg_current_snapshot()` of the fingerprint's transaction.
    mvcc_snapshot: String,
    tables: Vec<Entry>,
    /// The logs record who wrote each change and how (version 2 on): a restore can undo
    /// the run's own writes only.
    #[serde(default)]
    writers: bool,
    /// The value a restore sets as its writer so that its own writes are not logged
    /// (the trigger knows only its md5).
    #[serde(default)]
    restore_tag: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    table: Table,
    log: Table,
    function: String,
    row_trigger: String,
    truncate_trigger: String,
    key: Vec<String>,
    /// (column name, attnum) at capture.
    attnums: Vec<(String, i16)>,
    definition: TableModel,
    fingerprint: Digest,
    /// The content root at capture (version 3 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<Digest>,
    /// The table's digests at capture in key ranges of a few hundred rows (up to ~16,384
    /// ranges, see [`hash::fine_chunk_rows`]; earlier snapshots kept ranges of
    /// [`hash::LEAF_ROWS`] rows, which the proof takes as well; version 3 on): a restore's
    /// proof re-hashes only the ranges holding logged keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chunks: Vec<ChunkDigest>,
    /// What the catalog said of the log's triggers and the table's storage at capture
    /// (`None`: they could not be trusted then; version 3 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    marks: Option<triggers::Marks>,
}

impl Entry {
    /// The key columns of the row alias `alias` as text, comma-separated, for
    /// `concat_ws(', ', …)`: how every query of the undo log names a key.
    fn key_text(&self, alias: &str) -> String {
        self.key
            .iter()
            .map(|k| format!("{alias}.{}::text", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A table's model without the triggers of undo logs.
async fn model_without_logs<C: GenericClient>(c: &C, oid: u32) -> Result<TableModel> {
    let mut m = catalog::table_model_by_oid(c, oid).await?;
    m.triggers.retain(|t| !t.name.starts_with(TRIGGER_PREFIX));
    Ok(m)
}

async fn attnums<C: GenericClient>(c: &C, oid: u32) -> Result<Vec<(String, i16)>> {
    let rows = c
        .query(
            "SELECT attname::text, attnum FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await
        .ctx("reading column positions")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What one fingerprint pass saw of a table.
struct Seen {
    fingerprint: Digest,
    model: Option<TableModel>,
    attnums: Vec<(String, i16)>,
    key: Vec<String>,
    /// At capture: the content root and its fine chunks.
    hash: Option<hash::TableHash>,
    /// At capture: the log machinery's catalog marks (`None`: not trustworthy).
    marks: Option<triggers::Marks>,
}

impl TableUndoLog {
    /// An undo-log checkpoint of one table.
    pub fn new(db: &Database, table: Table) -> Self {
        Self::of_tables(db, vec![table])
    }

    /// An undo-log checkpoint of a set of tables, captured and restored together (needed
    /// when they reference each other). The resource id is the one a
    /// [`crate::TableSnapshot`] of the same tables has (see [`Database::tables_resource`]),
    /// so verifiers and steps name it alike.
    pub fn of_tables(db: &Database, mut tables: Vec<Table>) -> Self {
        tables.sort();
        tables.dedup();
        TableUndoLog {
            resource: db.tables_resource(&tables),
            db: db.clone(),
            tables,
            schema: DEFAULT_MARKER_SCHEMA.into(),
            lock_timeout: Duration::from_secs(5),
            parallelism: 2,
            selective: true,
            conflicts: ConflictPolicy::default(),
            full_proof: false,
        }
    }

    /// Whether a restore undoes only the run's own writes and keeps everyone else's
    /// (default `true`; see the type's docs). `false`: every change since capture is
    /// undone, the application's included — each one counted and named in the report.
    pub fn selective(mut self, on: bool) -> Self {
        self.selective = on;
        self
    }

    /// What a selective restore does with rows both the run and the application changed
    /// (default [`ConflictPolicy::KeepApplication`]).
    pub fn on_conflict(mut self, policy: ConflictPolicy) -> Self {
        self.conflicts = policy;
        self
    }

    /// Whether a restore proves parity by re-reading every row of the tables (`true`)
    /// instead of only the chunks holding logged keys (default `false`: the changed
    /// chunks, whenever the catalog shows the log saw every write — see the type's docs;
    /// the restore reads everything anyway, and says why, when it cannot show that).
    /// [`Checkpoint::fingerprint`] always reads everything: the independent check, e.g. on
    /// a schedule after the run.
    pub fn full_proof(mut self, on: bool) -> Self {
        self.full_proof = on;
        self
    }

    /// Keep the logs and the trigger function in another schema (default
    /// [`DEFAULT_MARKER_SCHEMA`]).
    pub fn log_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// `lock_timeout` for capture, restore and discard (default 5 s): creating and dropping
    /// triggers and restoring take table locks; one not granted in time fails with a
    /// transient error, which the executor retries.
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

    /// Sessions a big table is hashed with in parallel by the fingerprint (default 2), as
    /// [`crate::TableSnapshot::fingerprint_parallelism`]; the digest does not depend on it.
    pub fn fingerprint_parallelism(mut self, sessions: usize) -> Self {
        self.parallelism = sessions.max(1);
        self
    }

    /// The covered tables.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    fn descriptor(&self, snap: &Snapshot) -> Result<Descriptor> {
        super::read_descriptor(
            snap,
            &self.resource,
            UNDO_LOG_KIND,
            "undo-log descriptor",
            &self.tables,
            |d: &Descriptor| d.tables.iter().map(|e| e.table.clone()).collect(),
        )
    }

    /// Fingerprint every table in one `REPEATABLE READ` snapshot; also returns that
    /// snapshot (`pg_current_snapshot()`), taken by the transaction's first statement.
    /// With `capture` (the entries just installed), each table is hashed in one pass in
    /// fine chunks ([`hash::fine_chunk_rows`]) and the log machinery's catalog marks are
    /// read in the same snapshot, for restores to prove parity from the changed chunks.
    async fn fingerprint_all(&self, capture: Option<&[Entry]>) -> Result<(Vec<Seen>, String)> {
        let mut obj = self.db.lib_client().await?;
        let tx = read_tx(&mut obj, "starting fingerprint").await?;
        let mvcc: String = tx
            .query_one("SELECT pg_catalog.pg_current_snapshot()::text", &[])
            .await
            .ctx("reading the transaction snapshot")?
            .get(0);
        let mut hasher = SnapshotHasher::begin(&tx, self.parallelism).await;
        let mut out = Vec::new();
        let result = async {
            for (i, t) in self.tables.iter().enumerate() {
                let Some(oid) = catalog::table_oid(&tx, t).await? else {
                    out.push(Seen {
                        fingerprint: table_fingerprint(t, None, None),
                        model: None,
                        attnums: vec![],
                        key: vec![],
                        hash: None,
                        marks: None,
                    });
                    continue;
                };
                let model = model_without_logs(&tx, oid).await?;
                let key = catalog::order_key(&tx, oid).await?;
                let cols = attnums(&tx, oid).await?;
                let (root, hash, marks) = match capture.and_then(|es| es.get(i)) {
                    Some(e) => {
                        let marks = triggers::read_marks(&tx, e).await?;
                        if let Err(why) = &marks {
                            tracing::warn!(table = %t, "restores will prove parity by a full re-read: {why}");
                        }
                        let estimate = row_estimate(&tx, oid, &t.quoted()).await?;
                        let shape = Shape {
                            rel: t.quoted(),
                            columns: model.column_names(),
                            key: key.clone(),
                        };
                        let estimate = estimate.max(0) as u64;
                        let chunk_rows = hash::fine_chunk_rows(estimate);
                        // A big table with a dense integer key is hashed on several
                        // sessions in key ranges; else in one pass.
                        let key_type = key
                            .first()
                            .and_then(|k| model.columns.iter().find(|c| &c.name == k))
                            .map(|c| c.data_type.clone())
                            .unwrap_or_default();
                        let dense = if estimate >= hash::PARALLEL_MIN_ROWS && self.parallelism > 1
                        {
                            let clients = hasher.clients(&self.db, &tx).await;
                            hash::hash_dense_chunks(
                                &clients,
                                &shape,
                                &key_type,
                                estimate,
                                chunk_rows,
                            )
                            .await?
                        } else {
                            None
                        };
                        let h = match dense {
                            Some(h) => h,
                            None => {
                                hash::hash_relation_in_chunks(tx.client(), &shape, chunk_rows)
                                    .await?
                            }
                        };
                        (h.root, Some(h), marks.ok())
                    }
                    None => (
                        hasher
                            .root(&self.db, &tx, t, oid, &model, key.clone())
                            .await?,
                        None,
                        None,
                    ),
                };
                out.push(Seen {
                    fingerprint: table_fingerprint(t, Some(&model), Some(root)),
                    model: Some(model),
                    attnums: cols,
                    key,
                    hash,
                    marks,
                });
            }
            Ok::<(), Error>(())
        }
        .await;
        hasher.close().await;
        result?;
        tx.commit().await.ctx("ending fingerprint")?;
        Ok((out, mvcc))
    }
}

/// About how many rows the table holds: its statistics, or — never analyzed — the
/// planner's estimate from its size and row width.
async fn row_estimate<C: GenericClient>(c: &C, oid: u32, rel: &str) -> Result<i64> {
    let n: i64 = c
        .query_one(
            "SELECT reltuples::bigint FROM pg_catalog.pg_class WHERE oid = $1",
            &[&oid],
        )
        .await
        .ctx("reading table size estimate")?
        .get(0);
    if n > 0 {
        return Ok(n);
    }
    // The plan's first line ends "(cost=… rows=N width=…)".
    let plan = c
        .query(&format!("EXPLAIN SELECT 1 FROM ONLY {rel}"), &[])
        .await
        .ctx("reading the planner's row estimate")?;
    let line: String = plan.first().map(|r| r.get(0)).unwrap_or_default();
    Ok(line
        .split("rows=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// The earliest entry after capture of every logged key, as a CTE body selecting the log's
/// rows (`$1`: the capture's MVCC snapshot).
fn earliest_sql(e: &Entry) -> String {
    format!(
        "SELECT DISTINCT ON ({k}) l.* FROM {log} l \
         WHERE NOT pg_catalog.pg_visible_in_snapshot(l.{xid}, $1::text::pg_catalog.pg_snapshot) \
         ORDER BY {k}, l.{seq}",
        k = column_list_with("l", &e.key),
        log = e.log.quoted(),
        xid = quote_ident(XID),
        seq = quote_ident(SEQ),
    )
}

fn key_match(e: &Entry, a: &str, b: &str) -> String {
    e.key
        .iter()
        .map(|k| format!("{a}.{} = {b}.{}", quote_ident(k), quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

#[async_trait]
impl Checkpoint for TableUndoLog {
    fn resource(&self) -> &str {
        &self.resource
    }

    /// Installs the logs and triggers, commits, then fingerprints the tables.
    ///
    /// # Cancel safety
    /// Dropped after the triggers were committed, the capture leaves them (and the empty
    /// logs) behind with no snapshot naming them; they log writes until dropped by hand
    /// (`DROP FUNCTION _rollback.undo_<id>_<i>() CASCADE`).
    async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
        for t in &self.tables {
            t.check()?;
        }
        check_ident("schema", &self.schema)?;
        crate::checkpoint::ensure_schema(&self.db, &self.schema).await?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let restore_tag = new_restore_tag();
        let mut entries = self.install(&id, &restore_tag).await?;
        let (seen, mvcc) = match self.fingerprint_all(Some(&entries)).await {
            Ok(x) => x,
            Err(e) => {
                if let Err(cleanup) = self.uninstall(&entries).await {
                    tracing::warn!(error = %cleanup, "could not remove the undo log of a failed capture");
                }
                return Err(e);
            }
        };
        // The triggers log the columns they were created with: the fingerprint must have
        // seen the same ones.
        let drifted = entries.iter().zip(&seen).find(|(e, s)| {
            s.model.as_ref().map(|m| m.column_names()) != Some(e.definition.column_names())
        });
        if let Some((e, _)) = drifted {
            let err = Error::conflict(format!(
                "{} was altered or dropped during capture; capture again",
                e.table
            ));
            let _ = self.uninstall(&entries).await;
            return Err(err);
        }
        for (e, s) in entries.iter_mut().zip(&seen) {
            if let Some(model) = &s.model {
                e.definition = model.clone();
            }
            e.attnums = s.attnums.clone();
            e.key = s.key.clone();
            e.fingerprint = s.fingerprint;
            if let Some(h) = &s.hash {
                e.root = Some(h.root);
                e.chunks = h.chunks.clone();
            }
            e.marks = s.marks.clone();
            ctx.progress(&format!("capture {}", e.table), 1, Some(1), "tables");
        }
        let descriptor = Descriptor {
            version: 3,
            writers: true,
            restore_tag,
            database: self.db.name().to_string(),
            schema: self.schema.clone(),
            mvcc_snapshot: mvcc,
            tables: entries,
        };
        let fps: Vec<Digest> = seen.iter().map(|s| s.fingerprint).collect();
        Ok(Snapshot::new(
            format!("pg-undo-{id}"),
            self.resource.clone(),
            UNDO_LOG_KIND,
            Digest::of_json(&descriptor),
            combine(&fps),
            serde_json::to_value(&descriptor)
                .map_err(|e| Error::invalid(format!("encoding descriptor: {e}")))?,
        )
        .with_size(0))
    }
    async fn restore(&self, snap: &Snapshot, ctx: &Context) -> Result<Restored> {
        self.restore_logged(snap, ctx).await
    }

    fn selective(&self) -> bool {
        self.selective
    }

    /// A restore with nothing logged reads no row, and every restore returns its proof.
    fn restore_proves(&self) -> bool {
        true
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        let (seen, _) = self.fingerprint_all(None).await?;
        Ok(combine(
            &seen.iter().map(|s| s.fingerprint).collect::<Vec<_>>(),
        ))
    }

    async fn discard(&self, snap: &Snapshot, _ctx: &Context) -> Result<()> {
        let d = self.descriptor(snap)?;
        self.uninstall(&d.tables).await
    }
}
