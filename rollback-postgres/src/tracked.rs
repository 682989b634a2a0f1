//! [`TableUndoLog`]: a checkpoint that copies nothing and logs the prior image of every row
//! changed after capture, so that restore and diff cost O(rows changed).

use crate::catalog::{self, diff_tables, TableModel};
use crate::db::Database;
use crate::error::{PgError, PgResultExt};
use crate::fingerprint::SnapshotHasher;
use crate::ident::{check_ident, column_list, column_list_with, dollar_quote, quote_ident, Table};
use crate::markers::DEFAULT_MARKER_SCHEMA;
use async_trait::async_trait;
use rollback_core::{
    Checkpoint, Context, Digest, Discarded, Error, Hasher, Proof, Restored, Result, Snapshot,
    Verdict, Verifier,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_postgres::{GenericClient, IsolationLevel, Transaction};

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
/// every row before it goes (correct, but as costly as a copy). Then, in a `REPEATABLE READ` transaction, the tables
/// are fingerprinted exactly as [`crate::TableSnapshot`] does (same digest: the table hash
/// and definition; the triggers of this type are left out of the definition) and that
/// transaction's MVCC snapshot is recorded. A change committed before that snapshot is in
/// the fingerprint; one committed after is in the log: log entries of transactions the
/// recorded snapshot sees are ignored, so no concurrent write escapes and none is undone
/// twice. Capture therefore costs one fingerprint, whatever the table size.
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
/// invisible to the log: `session_replication_role = replica`, `ALTER TABLE … DISABLE
/// TRIGGER` (restore refuses a disabled trigger it can see, not one disabled and
/// re-enabled meanwhile), and DDL that rewrites or drops data (`DROP COLUMN`, `ALTER
/// COLUMN … TYPE`, renaming a column). Dropping or renaming a captured column also makes
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
/// capture, and have no column named `_rollback_…` (the log's own names).
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
}

/// What changed in one table since capture, from its undo log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedChanges {
    /// The table.
    pub table: Table,
    /// Keys (text, columns joined by `, `) present now but not at capture.
    pub added: Vec<String>,
    /// Keys present at capture but not now.
    pub removed: Vec<String>,
    /// Keys present in both whose rows differ (by binary image).
    pub changed: Vec<String>,
    /// Log entries written since capture (≥ the keys above: a row may change many times).
    pub log_entries: u64,
}

impl LoggedChanges {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The fingerprint of one table (the same as [`crate::TableSnapshot`]'s).
fn table_fingerprint(t: &Table, def: &TableModel, root: Digest) -> Digest {
    let mut h = Hasher::new();
    h.field(b"rollback-postgres/table/v1");
    h.field(t.quoted().as_bytes());
    h.field(&def.digest().0);
    h.field(&root.0);
    h.finish()
}

fn absent_fingerprint(t: &Table) -> Digest {
    let mut h = Hasher::new();
    h.field(b"rollback-postgres/table/v1");
    h.field(t.quoted().as_bytes());
    h.field(b"absent");
    h.finish()
}

/// The fingerprint of a set of tables (the same as [`crate::TableSnapshot`]'s).
fn combine(parts: &[Digest]) -> Digest {
    let mut h = Hasher::new();
    h.field(b"rollback-postgres/tables/v1");
    for p in parts {
        h.field(&p.0);
    }
    h.finish()
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

    /// Keep the logs and the trigger function in another schema (default
    /// [`DEFAULT_MARKER_SCHEMA`]).
    pub fn log_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// `lock_timeout` for capture, restore and discard (default 5 s): creating and dropping
    /// triggers and restoring take table locks; one not granted in time fails with a
    /// transient error, which the executor retries.
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

    fn lock_timeout_sql(&self) -> String {
        format!(
            "SET LOCAL lock_timeout = '{}ms'",
            self.lock_timeout.as_millis().max(1)
        )
    }

    fn descriptor(&self, snap: &Snapshot) -> Result<Descriptor> {
        snap.ensure_resource(&self.resource)?;
        if snap.kind != UNDO_LOG_KIND {
            return Err(Error::invalid(format!(
                "snapshot kind {} is not {UNDO_LOG_KIND}",
                snap.kind
            )));
        }
        let d: Descriptor = serde_json::from_value(snap.descriptor.clone())
            .map_err(|e| Error::invalid(format!("malformed undo-log descriptor: {e}")))?;
        let tables: Vec<Table> = d.tables.iter().map(|e| e.table.clone()).collect();
        if tables != self.tables {
            return Err(Error::WrongResource {
                expected: self.resource.clone(),
                found: format!("tables {tables:?}"),
            });
        }
        Ok(d)
    }

    /// Fingerprint every table in one `REPEATABLE READ` snapshot; also returns that
    /// snapshot (`pg_current_snapshot()`), taken by the transaction's first statement.
    async fn fingerprint_all(&self) -> Result<(Vec<Seen>, String)> {
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .ctx("starting fingerprint")?;
        let mvcc: String = tx
            .query_one("SELECT pg_catalog.pg_current_snapshot()::text", &[])
            .await
            .ctx("reading the transaction snapshot")?
            .get(0);
        let mut hasher = SnapshotHasher::begin(&tx, self.parallelism).await;
        let mut out = Vec::new();
        let result = async {
            for t in &self.tables {
                let Some(oid) = catalog::table_oid(&tx, t).await? else {
                    out.push(Seen {
                        fingerprint: absent_fingerprint(t),
                        model: None,
                        attnums: vec![],
                        key: vec![],
                    });
                    continue;
                };
                let model = model_without_logs(&tx, oid).await?;
                let key = catalog::order_key(&tx, oid).await?;
                let cols = attnums(&tx, oid).await?;
                let root = hasher
                    .root(&self.db, &tx, t, oid, &model, key.clone())
                    .await?;
                out.push(Seen {
                    fingerprint: table_fingerprint(t, &model, root),
                    model: Some(model),
                    attnums: cols,
                    key,
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

    /// The keys that differ from the capture, per table, read from the undo logs alone
    /// (O(rows changed since capture), whatever the table size): for each logged key, the
    /// earliest entry after capture is compared with the current row.
    ///
    /// This trusts the triggers (see the type's docs for what bypasses them); the
    /// fingerprint compared with the snapshot's is the proof.
    ///
    /// # Errors
    /// As for a restore: [`Error::WrongResource`], [`Error::DigestMismatch`],
    /// [`Error::Invalid`] when the logs are gone; backend errors.
    pub async fn changes(&self, snap: &Snapshot) -> Result<Vec<LoggedChanges>> {
        let d = self.descriptor(snap)?;
        snap.ensure_digest(Digest::of_json(&d))?;
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .ctx("starting diff")?;
        self.check_tracking(&tx, &d).await?;
        let mut out = Vec::new();
        for e in &d.tables {
            out.push(logged_changes(&tx, &d, e).await?);
        }
        tx.commit().await.ctx("ending diff")?;
        Ok(out)
    }

    /// Refuse when a log table, trigger or function of `d` is missing or a trigger is
    /// disabled.
    async fn check_tracking<C: GenericClient>(&self, c: &C, d: &Descriptor) -> Result<()> {
        for e in &d.tables {
            if catalog::table_oid(c, &e.log).await?.is_none() {
                return Err(Error::invalid(format!(
                    "the undo log {} of {} is gone (the snapshot was discarded?); cannot use it",
                    e.log, e.table
                )));
            }
            let rows = c
                .query(
                    &format!(
                        "SELECT tgname::text, tgenabled::text FROM pg_catalog.pg_trigger \
                         WHERE tgrelid = {}::regclass AND tgname = ANY($1)",
                        e.table.regclass_literal()
                    ),
                    &[&trigger_names(e)],
                )
                .await
                .ctx("reading the undo log's triggers")?;
            let enabled = rows.iter().filter(|r| r.get::<_, String>(1) != "D").count();
            if enabled != trigger_names(e).len() {
                return Err(Error::conflict(format!(
                    "the triggers logging changes of {} are missing or disabled: changes may have escaped the undo log; restore from another checkpoint",
                    e.table
                )));
            }
        }
        Ok(())
    }
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

async fn logged_changes<C: GenericClient>(
    c: &C,
    d: &Descriptor,
    e: &Entry,
) -> Result<LoggedChanges> {
    let cols = e.definition.column_names();
    let key_text = e
        .key
        .iter()
        .map(|k| format!("e.{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "WITH e AS MATERIALIZED ({earliest}) \
         SELECT concat_ws(', ', {key_text}), e.{present}, x.ctid IS NOT NULL, \
                x.ctid IS NOT NULL AND pg_catalog.record_image_ne(ROW({xc}), ROW({ec})) \
         FROM e LEFT JOIN {t} x ON {m} ORDER BY {ek}",
        earliest = earliest_sql(e),
        present = quote_ident(PRESENT),
        xc = column_list_with("x", &cols),
        ec = column_list_with("e", &cols),
        t = e.table.quoted(),
        m = key_match(e, "x", "e"),
        ek = column_list_with("e", &e.key),
    );
    let rows = c
        .query(sql.as_str(), &[&d.mvcc_snapshot])
        .await
        .ctx(&format!("reading the undo log of {}", e.table))?;
    let mut out = LoggedChanges {
        table: e.table.clone(),
        added: vec![],
        removed: vec![],
        changed: vec![],
        log_entries: 0,
    };
    for r in &rows {
        let key: String = r.get(0);
        let was: bool = r.get(1);
        let is: bool = r.get(2);
        let differs: bool = r.get(3);
        match (was, is) {
            (false, true) => out.added.push(key),
            (true, false) => out.removed.push(key),
            (true, true) if differs => out.changed.push(key),
            _ => {}
        }
    }
    out.log_entries = c
        .query_one(
            &format!(
                "SELECT count(*) FROM {} l WHERE NOT pg_catalog.pg_visible_in_snapshot(l.{}, $1::text::pg_catalog.pg_snapshot)",
                e.log.quoted(),
                quote_ident(XID)
            ),
            &[&d.mvcc_snapshot],
        )
        .await
        .ctx("counting undo log entries")?
        .get::<_, i64>(0) as u64;
    Ok(out)
}

/// The trigger function of one tracked table: log old images (and new keys). It runs
/// once per statement, over the statement's transition tables (`o`: the rows as they
/// were, `n`: as they are), not once per row — so a writer pays one `INSERT … SELECT`
/// per statement into the log.
fn function_sql(
    schema: &str,
    function: &str,
    t: &Table,
    log: &Table,
    def: &TableModel,
    key: &[String],
    restore_md5: &str,
) -> String {
    let cols = def.column_names();
    let into = format!(
        "INSERT INTO {} ({}, {}, {}, {})",
        log.quoted(),
        quote_ident(PRESENT),
        quote_ident(WRITER),
        quote_ident(OP),
        column_list(&cols)
    );
    let from = |rel: &str, present: bool, op: &str, filter: &str| {
        format!(
            "{into} SELECT {present}, writer, {op}, {} FROM {rel} r{filter};",
            column_list_with("r", &cols)
        )
    };
    let keys = |rel: &str| format!("SELECT {} FROM {rel} r", column_list_with("r", key));
    let in_other = |other: &str| {
        format!(
            "EXISTS (SELECT 1 FROM {other} x WHERE {})",
            key.iter()
                .map(|k| format!("x.{q} = r.{q}", q = quote_ident(k)))
                .collect::<Vec<_>>()
                .join(" AND ")
        )
    };
    // The body names the table, its log and its columns (double-quoted); it is
    // dollar-quoted with a tag that occurs nowhere in it, so no name can end it.
    let body = format!(
        "\n\
         DECLARE writer text := NULLIF(pg_catalog.current_setting('{setting}', true), '');\n\
         BEGIN\n\
           IF writer LIKE '{prefix}%' AND pg_catalog.md5(writer) = '{restore_md5}' THEN\n\
             RETURN NULL;\n\
           END IF;\n\
           IF TG_OP = 'UPDATE' THEN\n\
             IF NOT EXISTS ({new_keys} EXCEPT {old_keys}) THEN\n\
               {upd}\n\
             ELSE\n\
               {upd_moved_old}\n\
               {upd_moved_new}\n\
             END IF;\n\
           ELSIF TG_OP = 'DELETE' THEN\n\
             {del}\n\
           ELSIF TG_OP = 'INSERT' THEN\n\
             {ins}\n\
           ELSIF TG_OP = 'TRUNCATE' THEN\n\
             {into} SELECT true, writer, 't', {cols} FROM ONLY {t};\n\
           END IF;\n\
           RETURN NULL;\n\
         END\n",
        new_keys = keys("n"),
        old_keys = keys("o"),
        upd = from("o", true, "'u'", ""),
        upd_moved_old = from(
            "o",
            true,
            &format!("CASE WHEN {} THEN 'u' ELSE 'k' END", in_other("n")),
            ""
        ),
        upd_moved_new = from("n", false, "'k'", &format!(" WHERE NOT {}", in_other("o"))),
        del = from("o", true, "'d'", ""),
        ins = from("n", false, "'i'", ""),
        cols = column_list(&cols),
        t = t.quoted(),
        setting = WRITER_SETTING,
        prefix = RESTORE_WRITER,
        restore_md5 = restore_md5.replace(|c: char| !c.is_ascii_hexdigit(), ""),
    );
    format!(
        "CREATE FUNCTION {schema}.{function}() RETURNS trigger LANGUAGE plpgsql \
         SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {body}",
        schema = quote_ident(schema),
        function = quote_ident(function),
        body = dollar_quote(&body),
    )
}

/// The names of the triggers of one tracked table: per statement, after updates (the
/// entry's `row_trigger`), inserts and deletes (with their transition tables), and
/// before `TRUNCATE`.
fn trigger_names(e: &Entry) -> Vec<String> {
    vec![
        e.row_trigger.clone(),
        format!("{}_ins", e.row_trigger),
        format!("{}_del", e.row_trigger),
        e.truncate_trigger.clone(),
    ]
}

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

fn restore_error(err: tokio_postgres::Error, t: &Table) -> Error {
    let e = PgError::new(format!("restoring {t}"), &err);
    if err.code().map(|c| c.code()) == Some("23503") {
        return Error::conflict(format!(
            "{e}; rows outside the checkpoint reference rows the restore must remove or change — include their tables in the checkpoint"
        ));
    }
    e.into_core(false)
}

/// User triggers enabled on `t` other than the undo logs': (name, mode).
async fn user_triggers(tx: &Transaction<'_>, t: &Table) -> Result<Vec<(String, String)>> {
    let rows = tx
        .query(
            &format!(
                "SELECT tgname::text, tgenabled::text FROM pg_catalog.pg_trigger \
                 WHERE tgrelid = {}::regclass AND NOT tgisinternal AND tgenabled <> 'D' \
                   AND NOT starts_with(tgname::text, $1) ORDER BY tgname",
                t.regclass_literal()
            ),
            &[&TRIGGER_PREFIX],
        )
        .await
        .ctx("reading triggers")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn trigger_mode_sql(t: &Table, name: &str, mode: &str) -> String {
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

/// The columns a restore may set (not the key, not generated, not identity-always).
fn settable_columns(e: &Entry) -> Vec<String> {
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
fn restrict(e: &Entry, chosen: Option<(Table, &str)>) -> String {
    match chosen {
        None => String::new(),
        Some((sel, cond)) => format!(
            " AND EXISTS (SELECT 1 FROM {} a WHERE {} AND {cond})",
            sel.quoted(),
            key_match(e, "a", "e")
        ),
    }
}

/// Classify every key logged since capture in a temporary table (dropped at commit), one
/// row per key:
/// - the key's image at capture (its table's columns, `_rollback_base_present`);
/// - `_rollback_mig` / `_rollback_app`: whether the run (`run`, the writer recorded with
///   each entry) / anyone else changed it, `_rollback_mig_exist` / `_rollback_app_exist`:
///   its existence;
/// - per column `n`: `_rollback_m{n}` / `_rollback_a{n}` the run / others changed it,
///   `_rollback_s{n}` others set it (an insert sets every column), `_rollback_av{n}` the
///   value others left in it (right after their last change to it);
/// - `_rollback_ae`: whether the row existed right after others' last change to its
///   existence; `_rollback_moved`: the run changed its key, or others moved it away
///   after the run wrote it (either way part of the row's history is under another key,
///   with the other side's writes).
///
/// Each log entry's change is its prior image against the next entry's (the current row
/// for the last).
async fn classify(
    tx: &Transaction<'_>,
    d: &Descriptor,
    e: &Entry,
    i: usize,
    run: &str,
) -> Result<Table> {
    let cols = e.definition.column_names();
    let tmp = Table::new("pg_temp", format!("rollback_sel_{i}"));
    let k = |alias: &str| column_list_with(alias, &e.key);
    let present = quote_ident(PRESENT);
    let seq = quote_ident(SEQ);
    let nc = cols.len();
    let lead = cols
        .iter()
        .enumerate()
        .map(|(n, c)| format!("LEAD(l.{}) OVER w AS \"_rollback_n{n}\"", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let cur = cols
        .iter()
        .enumerate()
        .map(|(n, c)| format!("x.{} AS \"_rollback_c{n}\"", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    // The value of column n right after entry s's change.
    let after = |a: &str, n: usize| {
        format!(
            "CASE WHEN {a}._rollback_next IS NULL THEN {a}.\"_rollback_c{n}\" ELSE {a}.\"_rollback_n{n}\" END"
        )
    };
    let changed = cols
        .iter()
        .enumerate()
        .map(|(n, c)| {
            format!(
                "(s.{present} AND s._rollback_after AND pg_catalog.record_image_ne(ROW(s.{c}), ROW({a}))) AS \"_rollback_ch{n}\"",
                c = quote_ident(c),
                a = after("s", n),
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let inserted = format!("(NOT st0.{present} AND st0._rollback_after)");
    let exist_changed = |a: &str| format!("({a}.{present} IS DISTINCT FROM {a}._rollback_after)");
    // Window values (the same on every entry of a key): what others left in each column,
    // and whether their last change to its existence left the row there.
    let mut left: Vec<String> = (0..nc)
        .map(|n| {
            format!(
                "first_value({a}) OVER (PARTITION BY {pk} ORDER BY (NOT st0._rollback_mine AND (st0.\"_rollback_ch{n}\" OR {inserted})) DESC, st0.{seq} DESC) AS \"_rollback_av{n}\"",
                a = after("st0", n),
                pk = k("st0"),
            )
        })
        .collect();
    left.push(format!(
        "first_value(st0._rollback_after) OVER (PARTITION BY {pk} ORDER BY (NOT st0._rollback_mine AND {ec}) DESC, st0.{seq} DESC) AS _rollback_ae",
        pk = k("st0"),
        ec = exist_changed("st0"),
    ));
    let any_change = |who: &str| {
        let mut parts = vec![exist_changed("st")];
        parts.extend((0..nc).map(|n| format!("st.\"_rollback_ch{n}\"")));
        format!("bool_or({who} AND ({}))", parts.join(" OR "))
    };
    let per_col = (0..nc)
        .map(|n| {
            format!(
                "bool_or(st._rollback_mine AND st.\"_rollback_ch{n}\") AS \"_rollback_m{n}\", \
                 bool_or(NOT st._rollback_mine AND st.\"_rollback_ch{n}\") AS \"_rollback_a{n}\", \
                 bool_or(NOT st._rollback_mine AND (st.\"_rollback_ch{n}\" OR (NOT st.{present} AND st._rollback_after))) AS \"_rollback_s{n}\""
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let flag_cols = [
        "_rollback_mig",
        "_rollback_app",
        "_rollback_mig_exist",
        "_rollback_app_exist",
        "_rollback_moved",
    ]
    .iter()
    .map(|c| format!("flags.{c}"))
    .chain((0..nc).flat_map(|n| {
        [
            format!("flags.\"_rollback_m{n}\""),
            format!("flags.\"_rollback_a{n}\""),
            format!("flags.\"_rollback_s{n}\""),
        ]
    }))
    .collect::<Vec<_>>()
    .join(", ");
    let avs = (0..nc)
        .map(|n| format!("st.\"_rollback_av{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "CREATE TEMP TABLE {tmp} ON COMMIT DROP AS \
         WITH l AS MATERIALIZED (SELECT * FROM {log} l WHERE NOT pg_catalog.pg_visible_in_snapshot(l.{xid}, $1::text::pg_catalog.pg_snapshot)), \
         e AS (SELECT l.*, LEAD(l.{seq}) OVER w AS _rollback_next, LEAD(l.{present}) OVER w AS _rollback_npresent, {lead} \
               FROM l WINDOW w AS (PARTITION BY {lk} ORDER BY l.{seq})), \
         s AS (SELECT e.*, x.ctid IS NOT NULL AS _rollback_cpresent, {cur}, \
                      CASE WHEN e._rollback_next IS NULL THEN x.ctid IS NOT NULL ELSE e._rollback_npresent END AS _rollback_after \
               FROM e LEFT JOIN {t} x ON {xm}), \
         st0 AS (SELECT s.*, {changed}, (s.{writer} IS NOT DISTINCT FROM $2) AS _rollback_mine FROM s s), \
         st AS (SELECT st0.*, {left} FROM st0 st0), \
         flags AS (SELECT {sk}, {mig} AS _rollback_mig, {app} AS _rollback_app, \
                          bool_or(st._rollback_mine AND {ecst}) AS _rollback_mig_exist, \
                          bool_or(NOT st._rollback_mine AND {ecst}) AS _rollback_app_exist, \
                          (bool_or(st.{op} = 'k' AND st._rollback_mine) \
                           OR coalesce(max(st.{seq}) FILTER (WHERE st.{op} = 'k' AND NOT st._rollback_mine) \
                                       > min(st.{seq}) FILTER (WHERE st._rollback_mine), false)) AS _rollback_moved, \
                          {per_col} \
                   FROM st GROUP BY {sk}), \
         base AS (SELECT DISTINCT ON ({sk}) st.{present} AS _rollback_base_present, st._rollback_ae, {bcols}, {avs} \
                  FROM st ORDER BY {sk}, st.{seq}) \
         SELECT base.*, {flag_cols} FROM base JOIN flags ON {fm}",
        log = e.log.quoted(),
        xid = quote_ident(XID),
        lk = k("l"),
        t = e.table.quoted(),
        xm = key_match(e, "x", "e"),
        writer = quote_ident(WRITER),
        op = quote_ident(OP),
        left = left.join(", "),
        sk = k("st"),
        mig = any_change("st._rollback_mine"),
        app = any_change("NOT st._rollback_mine"),
        ecst = exist_changed("st"),
        bcols = column_list_with("st", &cols),
        // Key columns are never NULL: `=` lets the join hash.
        fm = e
            .key
            .iter()
            .map(|c| format!("base.{q} = flags.{q}", q = quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND "),
    );
    tx.execute(sql.as_str(), &[&d.mvcc_snapshot, &run])
        .await
        .ctx(&format!("reading who changed {} since capture", e.table))?;
    // Temporary tables get no statistics otherwise: the joins below need them.
    tx.batch_execute(&format!("ANALYZE {}", tmp.quoted()))
        .await
        .ctx("analyzing the classification")?;
    Ok(tmp)
}

/// How many keys of the classification match `cond`, and up to `cap` of them (text).
async fn keyed(
    tx: &Transaction<'_>,
    e: &Entry,
    sel: &Table,
    cond: &str,
    cap: i64,
) -> Result<(u64, Vec<String>)> {
    let key_text = e
        .key
        .iter()
        .map(|k| format!("a.{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let n: i64 = tx
        .query_one(
            &format!("SELECT count(*) FROM {} a WHERE {cond}", sel.quoted()),
            &[],
        )
        .await
        .ctx("counting classified rows")?
        .get(0);
    let rows = tx
        .query(
            &format!(
                "SELECT concat_ws(', ', {key_text}) FROM {} a WHERE {cond} ORDER BY {} LIMIT $1",
                sel.quoted(),
                column_list_with("a", &e.key)
            ),
            &[&cap],
        )
        .await
        .ctx("listing classified rows")?;
    Ok((
        n.max(0) as u64,
        rows.iter()
            .map(|r| format!("{} key ({})", e.table, r.get::<_, String>(0)))
            .collect(),
    ))
}

/// Rows both the run and others changed: how many, and up to `cap` described (key, and
/// the columns both changed or that both changed the row's existence).
async fn conflict_list(
    tx: &Transaction<'_>,
    e: &Entry,
    sel: &Table,
    cap: i64,
) -> Result<(u64, Vec<String>)> {
    let cols = e.definition.column_names();
    let both: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(n, c)| {
            format!(
                "CASE WHEN a.\"_rollback_m{n}\" AND a.\"_rollback_a{n}\" THEN {} END",
                crate::ident::quote_literal(c)
            )
        })
        .collect();
    let key_text = e
        .key
        .iter()
        .map(|k| format!("a.{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let n: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM {} a WHERE a._rollback_mig AND a._rollback_app",
                sel.quoted()
            ),
            &[],
        )
        .await
        .ctx("counting conflicts")?
        .get(0);
    let rows = tx
        .query(
            &format!(
                "SELECT concat_ws(', ', {key_text}), concat_ws(', ', {both}), \
                        a._rollback_mig_exist OR a._rollback_app_exist \
                 FROM {} a WHERE a._rollback_mig AND a._rollback_app ORDER BY {} LIMIT $1",
                sel.quoted(),
                column_list_with("a", &e.key),
                both = if both.is_empty() {
                    "NULL".into()
                } else {
                    both.join(", ")
                },
            ),
            &[&cap],
        )
        .await
        .ctx("listing conflicts")?;
    Ok((
        n.max(0) as u64,
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let cols: String = r.get(1);
                let existence: bool = r.get(2);
                let what = match (existence, cols.is_empty()) {
                    (true, _) => "its existence".to_string(),
                    (false, false) => format!("column(s) {cols}"),
                    (false, true) => "different columns".to_string(),
                };
                format!("{} key ({key}): both changed {what}", e.table)
            })
            .collect(),
    ))
}

/// The part of keeping the application's version of rows both changed (see
/// [`resolve_for_others`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    Delete,
    Update,
    Insert,
}

/// Rows both the run and others changed, resolved for the others: a row exists as it did
/// right after their last change to its existence, or — if they only changed its columns
/// — it exists (their writes need it); each column holds what they left in it, or where
/// they never set it its capture value (the run's, for a row the run added). So the run's
/// changes, before or after theirs, are undone and theirs kept. `Delete`, `Update` and
/// `Insert` do the three parts (deletes children first, the others parents first); a row
/// the run added, others changed and the run deleted again is not brought back.
async fn resolve_for_others(
    tx: &Transaction<'_>,
    e: &Entry,
    sel: &Table,
    part: Resolve,
) -> Result<u64> {
    let all = e.definition.column_names();
    // `cur`: the column's current value, for a row the run added (no capture image).
    let value = |c: &String, cur: Option<&str>| {
        let n = all.iter().position(|x| x == c).unwrap_or(0);
        let q = quote_ident(c);
        match cur {
            Some(x) => format!(
                "CASE WHEN a.\"_rollback_s{n}\" THEN a.\"_rollback_av{n}\" WHEN a._rollback_base_present THEN a.{q} ELSE {x}.{q} END"
            ),
            None => format!("CASE WHEN a.\"_rollback_s{n}\" THEN a.\"_rollback_av{n}\" ELSE a.{q} END"),
        }
    };
    let exists = "(NOT a._rollback_app_exist OR a._rollback_ae)";
    let both = "a._rollback_mig AND a._rollback_app";
    let t = e.table.quoted();
    let sql = match part {
        Resolve::Delete => format!(
            "DELETE FROM {t} x USING {s} a WHERE {m} AND {both} AND NOT {exists}",
            s = sel.quoted(),
            m = key_match(e, "x", "a"),
        ),
        Resolve::Update => {
            let settable = settable_columns(e);
            if settable.is_empty() {
                return Ok(0);
            }
            format!(
                "UPDATE {t} x SET ({cols}) = ROW({vals}) FROM {s} a WHERE {m} AND {both} AND {exists} \
                 AND pg_catalog.record_image_ne(ROW({cur}), ROW({want}))",
                cols = column_list(&settable),
                vals = settable
                    .iter()
                    .map(|c| value(c, Some("x")))
                    .collect::<Vec<_>>()
                    .join(", "),
                s = sel.quoted(),
                m = key_match(e, "x", "a"),
                cur = column_list_with("x", &settable),
                want = settable
                    .iter()
                    .map(|c| value(c, Some("x")))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        }
        Resolve::Insert => {
            let cols = e.definition.insertable_columns();
            let overriding = if e.definition.columns.iter().any(|c| c.identity == "a") {
                "OVERRIDING SYSTEM VALUE"
            } else {
                ""
            };
            format!(
                "INSERT INTO {t} ({}) {overriding} SELECT {} FROM {s} a WHERE {both} AND {exists} \
                 AND (a._rollback_base_present OR a._rollback_app_exist) \
                 AND NOT EXISTS (SELECT 1 FROM {t} x WHERE {m})",
                column_list(&cols),
                cols.iter()
                    .map(|c| value(c, None))
                    .collect::<Vec<_>>()
                    .join(", "),
                s = sel.quoted(),
                m = key_match(e, "x", "a"),
            )
        }
    };
    tx.execute(sql.as_str(), &[])
        .await
        .map_err(|err| restore_error(err, &e.table))
}

/// A copy (temporary, dropped at commit) of the rows only others changed since capture,
/// as they are before the restore.
async fn keep_others_rows(tx: &Transaction<'_>, e: &Entry, sel: &Table, i: usize) -> Result<Table> {
    let copy = Table::new("pg_temp", format!("rollback_kept_{i}"));
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE {c} ON COMMIT DROP AS SELECT {xc} FROM {t} x JOIN {s} a ON {m} \
         WHERE a._rollback_app AND NOT a._rollback_mig",
        c = copy.quoted(),
        xc = column_list_with("x", &e.definition.column_names()),
        t = e.table.quoted(),
        s = sel.quoted(),
        m = key_match(e, "x", "a"),
    ))
    .await
    .ctx("keeping the rows only others changed")?;
    Ok(copy)
}

/// Rows only others changed that the restore changed after all (compared with their copy
/// by binary image): how many, and up to 20 keys.
async fn others_rows_changed(
    tx: &Transaction<'_>,
    e: &Entry,
    sel: &Table,
    copy: &Table,
) -> Result<(u64, Vec<String>)> {
    let cols = e.definition.column_names();
    let first = quote_ident(&e.key[0]);
    let key_text = |a: &str| {
        e.key
            .iter()
            .map(|k| format!("{a}.{}::text", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = tx
        .query(
            &format!(
                "WITH now AS (SELECT {xc} FROM {t} x JOIN {s} a ON {m} WHERE a._rollback_app AND NOT a._rollback_mig) \
                 SELECT concat_ws(', ', {kk}), concat_ws(', ', {kn}) FROM {c} k FULL JOIN now n ON {kn_match} \
                 WHERE k.{first} IS NULL OR n.{first} IS NULL OR pg_catalog.record_image_ne(ROW({kc}), ROW({nc}))",
                xc = column_list_with("x", &cols),
                t = e.table.quoted(),
                s = sel.quoted(),
                m = key_match(e, "x", "a"),
                kk = key_text("k"),
                kn = key_text("n"),
                c = copy.quoted(),
                kn_match = key_match(e, "k", "n"),
                kc = column_list_with("k", &cols),
                nc = column_list_with("n", &cols),
            ),
            &[],
        )
        .await
        .ctx("checking the rows only others changed")?;
    let keys = rows
        .iter()
        .take(20)
        .map(|r| {
            let k: String = r.get(0);
            let n: String = r.get(1);
            format!("{} key ({})", e.table, if k.is_empty() { n } else { k })
        })
        .collect();
    Ok((rows.len() as u64, keys))
}

/// Keys others (any writer but `run`) logged since capture, for a restore that undoes
/// them all: how many, and up to `cap` of them. Needs no temporary table.
async fn logged_by_others(
    tx: &Transaction<'_>,
    d: &Descriptor,
    e: &Entry,
    run: &str,
    cap: i64,
) -> Result<(u64, Vec<String>)> {
    let key_text = e
        .key
        .iter()
        .map(|k| format!("l.{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = tx
        .query(
            &format!(
                "WITH k AS (SELECT DISTINCT {kl} FROM {log} l \
                   WHERE NOT pg_catalog.pg_visible_in_snapshot(l.{xid}, $1::text::pg_catalog.pg_snapshot) \
                     AND l.{w} IS DISTINCT FROM $2) \
                 SELECT (SELECT count(*) FROM k), \
                        array(SELECT concat_ws(', ', {key_text}) FROM k l ORDER BY {kl} LIMIT $3)",
                kl = column_list_with("l", &e.key),
                log = e.log.quoted(),
                xid = quote_ident(XID),
                w = quote_ident(WRITER),
            ),
            &[&d.mvcc_snapshot, &run, &cap],
        )
        .await
        .ctx("reading whose changes the restore undoes")?;
    let r = &rows[0];
    let n: i64 = r.get(0);
    let keys: Vec<String> = r.get(1);
    Ok((
        n.max(0) as u64,
        keys.into_iter()
            .map(|k| format!("{} key ({k})", e.table))
            .collect(),
    ))
}

/// The fingerprint of one table as the restore left it, taken in its transaction under
/// its lock. With `aside` (a classification table and a condition on it), the rows it
/// selects are set aside: each is replaced by its image at capture (absent rows left
/// out), so the result equals the baseline exactly when every other row is back at it.
/// Returns the fingerprint and how many rows were set aside.
async fn proof_fingerprint(
    tx: &Transaction<'_>,
    e: &Entry,
    aside: Option<(Table, String)>,
    sequences_aside: bool,
) -> Result<(Digest, u64)> {
    let Some(oid) = catalog::table_oid(tx, &e.table).await? else {
        return Ok((absent_fingerprint(&e.table), 0));
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
    let shape = crate::hash::Shape {
        rel,
        columns: cols,
        key: e.key.clone(),
    };
    let h = crate::hash::hash_relation(tx.client(), &shape, u64::MAX).await?;
    Ok((table_fingerprint(&e.table, &model, h.root), n))
}

impl TableUndoLog {
    /// Create the logs, function and triggers (committed), returning the entries without
    /// definitions and fingerprints.
    async fn install(&self, id: &str, restore_tag: &str) -> Result<Vec<Entry>> {
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client.transaction().await.ctx("starting capture")?;
        tx.batch_execute(&self.lock_timeout_sql())
            .await
            .ctx("setting lock_timeout")?;
        let restore_md5: String = tx
            .query_one("SELECT pg_catalog.md5($1)", &[&restore_tag])
            .await
            .ctx("hashing the restore tag")?
            .get(0);
        let mut entries = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            let Some(oid) = catalog::table_oid(&tx, t).await? else {
                return Err(Error::invalid(format!(
                    "{t} does not exist: an undo log tracks existing tables (use TableSnapshot for a table the migration creates)"
                )));
            };
            let def = model_without_logs(&tx, oid).await?;
            if def.kind != "r" {
                return Err(Error::invalid(format!(
                    "{t} is partitioned: an undo log tracks plain tables (use TableSnapshot)"
                )));
            }
            let key = catalog::order_key(&tx, oid).await?;
            if key.is_empty() {
                return Err(Error::invalid(format!(
                    "{t} has no primary key or NOT NULL unique key to log changes by (use TableSnapshot)"
                )));
            }
            let cols = def.column_names();
            if let Some(c) = cols.iter().find(|c| c.starts_with(RESERVED_PREFIX)) {
                return Err(Error::invalid(format!(
                    "{t} has a column named {c}: names starting with {RESERVED_PREFIX} are the undo log's own (use TableSnapshot)"
                )));
            }
            // A deferred key may be held by two rows at once inside a transaction (a key
            // swap): the log, which names rows by key, would mix them up.
            let immediate: Option<bool> = tx
                .query_one(
                    "SELECT bool_or(i.indimmediate) FROM pg_catalog.pg_index i \
                     WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
                       AND array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                                 JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                                 ORDER BY k.ord) = $2::text[]",
                    &[&oid, &key],
                )
                .await
                .ctx("reading whether the key is deferrable")?
                .get(0);
            if immediate != Some(true) {
                return Err(Error::invalid(format!(
                    "the key of {t} ({}) is DEFERRABLE: two rows may hold one key inside a transaction, which an undo log cannot tell apart (use TableSnapshot, or make the key NOT DEFERRABLE)",
                    key.join(", ")
                )));
            }
            let log = Table::new(&self.schema, format!("undo_{id}_{i}"));
            let function = format!("undo_{id}_{i}");
            let row_trigger = format!("{TRIGGER_PREFIX}{id}");
            let truncate_trigger = format!("{TRIGGER_PREFIX}{id}_truncate");
            let s = quote_ident(&self.schema);
            tx.batch_execute(&format!(
                "CREATE TABLE {log} ({seq} bigserial, {xid} pg_catalog.xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(), \
                   {present} boolean NOT NULL, {writer} text, {op} \"char\" NOT NULL, LIKE {t}); \
                 {function_sql}; \
                 REVOKE ALL ON FUNCTION {s}.{f}() FROM PUBLIC; \
                 CREATE TRIGGER {rt} AFTER UPDATE ON {t} REFERENCING OLD TABLE AS o NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION {s}.{f}(); \
                 CREATE TRIGGER {rti} AFTER INSERT ON {t} REFERENCING NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION {s}.{f}(); \
                 CREATE TRIGGER {rtd} AFTER DELETE ON {t} REFERENCING OLD TABLE AS o FOR EACH STATEMENT EXECUTE FUNCTION {s}.{f}(); \
                 CREATE TRIGGER {tt} BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {s}.{f}();",
                log = log.quoted(),
                seq = quote_ident(SEQ),
                xid = quote_ident(XID),
                present = quote_ident(PRESENT),
                writer = quote_ident(WRITER),
                op = quote_ident(OP),
                t = t.quoted(),
                function_sql =
                    function_sql(&self.schema, &function, t, &log, &def, &key, &restore_md5),
                f = quote_ident(&function),
                rt = quote_ident(&row_trigger),
                rti = quote_ident(&format!("{row_trigger}_ins")),
                rtd = quote_ident(&format!("{row_trigger}_del")),
                tt = quote_ident(&truncate_trigger),
            ))
            .await
            .ctx(&format!("installing the undo log of {t}"))?;
            entries.push(Entry {
                table: t.clone(),
                log,
                function,
                row_trigger,
                truncate_trigger,
                key,
                attnums: vec![],
                definition: def,
                fingerprint: Digest::of(b""),
            });
        }
        tx.commit().await.ctx("committing the undo log triggers")?;
        Ok(entries)
    }

    async fn uninstall(&self, entries: &[Entry]) -> Result<()> {
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client.transaction().await.ctx("starting discard")?;
        tx.batch_execute(&self.lock_timeout_sql())
            .await
            .ctx("setting lock_timeout")?;
        for e in entries {
            if catalog::table_oid(&tx, &e.table).await?.is_some() {
                tx.batch_execute(
                    &trigger_names(e)
                        .iter()
                        .map(|n| {
                            format!(
                                "DROP TRIGGER IF EXISTS {} ON {};",
                                quote_ident(n),
                                e.table.quoted()
                            )
                        })
                        .collect::<String>(),
                )
                .await
                .ctx(&format!("dropping the undo log triggers of {}", e.table))?;
            }
            tx.batch_execute(&format!(
                "DROP FUNCTION IF EXISTS {}.{}() CASCADE; DROP TABLE IF EXISTS {}",
                quote_ident(&e.log.schema),
                quote_ident(&e.function),
                e.log.quoted()
            ))
            .await
            .ctx(&format!("dropping the undo log of {}", e.table))?;
        }
        tx.commit().await.ctx("committing discard")
    }
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
        let (seen, mvcc) = match self.fingerprint_all().await {
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
            ctx.progress(&format!("capture {}", e.table), 1, Some(1), "tables");
        }
        let descriptor = Descriptor {
            version: 2,
            writers: true,
            restore_tag,
            database: self.db.name().to_string(),
            schema: self.schema.clone(),
            mvcc_snapshot: mvcc,
            tables: entries,
        };
        let fps: Vec<Digest> = seen.iter().map(|s| s.fingerprint).collect();
        Ok(Snapshot {
            id: format!("pg-undo-{id}"),
            resource: self.resource.clone(),
            kind: UNDO_LOG_KIND.into(),
            digest: Digest::of_json(&descriptor),
            fingerprint: combine(&fps),
            captured_at_ms: rollback_core::now_ms(),
            size_bytes: Some(0),
            descriptor: serde_json::to_value(&descriptor)
                .map_err(|e| Error::invalid(format!("encoding descriptor: {e}")))?,
        })
    }

    async fn restore(&self, snap: &Snapshot, ctx: &Context) -> Result<Restored> {
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
        tx.batch_execute(&self.lock_timeout_sql())
            .await
            .ctx("setting lock_timeout")?;
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
        let mut disabled = Vec::new();
        for e in &d.tables {
            for (name, mode) in user_triggers(&tx, &e.table).await? {
                tx.batch_execute(&trigger_mode_sql(&e.table, &name, "D"))
                    .await
                    .ctx("disabling trigger for restore")?;
                disabled.push((e.table.clone(), name, mode));
            }
        }
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
        for (t, name, mode) in &disabled {
            tx.batch_execute(&trigger_mode_sql(t, name, mode))
                .await
                .ctx("re-enabling trigger")?;
        }
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
        for ((e, s), wrote) in d.tables.iter().zip(&sel).zip(&others_wrote) {
            let aside = s.as_ref().map(|s| {
                let both = if policy == ConflictPolicy::KeepBaseline {
                    " AND NOT a._rollback_mig"
                } else {
                    ""
                };
                (s.clone(), format!("a._rollback_app{both}"))
            });
            let (fp, n) = proof_fingerprint(&tx, e, aside, *wrote).await?;
            fps.push(fp);
            set_aside += n;
        }
        let proof = Proof {
            fingerprint: combine(&fps),
            set_aside,
        };
        // 5. A full restore's own writes are not logged, and the log starts afresh; a
        //    selective one keeps the log (a second restore is then a no-op).
        if !selective {
            let logs: Vec<String> = d.tables.iter().map(|e| e.log.quoted()).collect();
            tx.batch_execute(&format!("TRUNCATE {}", logs.join(", ")))
                .await
                .ctx("emptying the undo logs")?;
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

    fn selective(&self) -> bool {
        self.selective
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        let (seen, _) = self.fingerprint_all().await?;
        Ok(combine(
            &seen.iter().map(|s| s.fingerprint).collect::<Vec<_>>(),
        ))
    }

    async fn discard(&self, snap: &Snapshot, _ctx: &Context) -> Result<()> {
        let d = self.descriptor(snap)?;
        self.uninstall(&d.tables).await
    }
}

/// The table's rows equal the run's baseline by the undo log of a [`TableUndoLog`]
/// checkpoint: O(rows changed), listing exactly the added, removed and changed keys in its
/// evidence. It trusts the triggers (see [`TableUndoLog`]); the executor's parity proof
/// after a restore is the full fingerprint.
///
/// ```no_run
/// # let db = rollback_postgres::Database::connect("postgres://u@127.0.0.1/shop").unwrap();
/// use rollback_postgres::{Table, TableUndoLog, UndoLogParity};
/// let cp = TableUndoLog::new(&db, Table::public("customers"));
/// let v = UndoLogParity::new(&cp);
/// ```
#[derive(Debug, Clone)]
pub struct UndoLogParity {
    id: String,
    checkpoint: TableUndoLog,
}

impl UndoLogParity {
    /// Compare the checkpoint's tables with the run's baseline snapshot of it.
    pub fn new(checkpoint: &TableUndoLog) -> Self {
        UndoLogParity {
            id: format!("undo-log:{}", checkpoint.resource),
            checkpoint: checkpoint.clone(),
        }
    }

    /// Use another verifier id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

#[async_trait]
impl Verifier for UndoLogParity {
    fn id(&self) -> &str {
        &self.id
    }

    fn baselines(&self) -> Vec<String> {
        vec![self.checkpoint.resource.clone()]
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        let Some(snap) = ctx.baseline(&self.checkpoint.resource) else {
            return Ok(Verdict::inconclusive(format!(
                "no baseline snapshot of {} in this run",
                self.checkpoint.resource
            )));
        };
        if snap.kind != UNDO_LOG_KIND {
            return Ok(Verdict::inconclusive(format!(
                "the baseline of {} is not an undo log",
                self.checkpoint.resource
            )));
        }
        let changes = self.checkpoint.changes(snap).await?;
        let n: usize = changes
            .iter()
            .map(|c| c.added.len() + c.removed.len() + c.changed.len())
            .sum();
        let summary = changes
            .iter()
            .map(|c| {
                format!(
                    "{}: {} added, {} removed, {} changed",
                    c.table,
                    c.added.len(),
                    c.removed.len(),
                    c.changed.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok(
            Verdict::check(n == 0, format!("{summary} since the baseline (undo log)"))
                .with_evidence(json!({ "tables": changes }))
                .with_value(n as f64),
        )
    }
}
