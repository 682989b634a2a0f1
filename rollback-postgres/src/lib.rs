//! # rollback-postgres
//!
//! PostgreSQL for [`rollback_core`]: checkpoints that keep table copies inside the
//! database, SQL and backfill steps that apply exactly once per run, integrity verifiers,
//! and a journal many processes share.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rollback_core::{Executor, Outcome, Plan};
//! use rollback_postgres::{
//!     Backfill, Database, ForeignKeyIntegrity, PgJournal, RecoveryPoint, SqlStep, Table,
//!     TableSnapshot,
//! };
//!
//! let db = Database::connect(&std::env::var("DATABASE_URL")?)?;
//! let customers = Table::public("customers");
//! let plan = Plan::builder("split-name")
//!     .precondition(RecoveryPoint::new(&db, "before-split")) // LSN + restore point
//!     .checkpoint("db", TableSnapshot::new(&db, customers.clone()))
//!     .step(
//!         "db",
//!         SqlStep::new(&db, "add-columns", "ALTER TABLE customers ADD COLUMN first_name text")
//!             .down("ALTER TABLE customers DROP COLUMN IF EXISTS first_name"),
//!         &[],
//!     )
//!     .step(
//!         "db",
//!         Backfill::new(&db, "fill", customers, "id", "first_name = split_part(name, ' ', 1)"),
//!         &["add-columns"],
//!     )
//!     .verify_final(ForeignKeyIntegrity::new(&db))
//!     .build()?;
//! let report = Executor::new(PgJournal::new(&db)).run(&plan).await?;
//! assert!(report.outcome == Outcome::Committed || report.parity_proven());
//! println!("{}", report.to_markdown());
//! # Ok(()) }
//! ```
//!
//! ## What is here
//!
//! - **Checkpoints.** [`TableSnapshot`] copies tables into a snapshot schema
//!   (`_rollback_snapshots`) without moving rows through the client, digests the copy
//!   (rows and definition) and restores it in one transaction — by an O(1) swap where
//!   nothing depends on the table, else by `TRUNCATE` + `INSERT … SELECT`, else by a
//!   keyed merge — refusing a copy that no longer matches its digest. [`SchemaSnapshot`]
//!   captures the catalog of schemas as a [`SchemaModel`] with a readable
//!   [`diff`](SchemaModel::diff) and restores structure with DDL (honestly limited: see its
//!   docs). [`RecoveryPoint`] records `pg_current_wal_lsn()` and a named restore point for
//!   PITR, as a verifier whose evidence lands in the run report.
//! - **Undo-log checkpoints.** [`TableUndoLog`] copies nothing: capture installs triggers
//!   that log, in `_rollback`, the prior image of every row changed afterwards, and takes
//!   one fingerprint (the same digest as [`TableSnapshot`]'s); restore and
//!   [`TableUndoLog::changes`] (also as the [`UndoLogParity`] verifier) cost O(rows
//!   changed). Writes pay for the trigger meanwhile, and a step rewriting every row makes
//!   the log as large as a copy: see its docs for when to prefer [`TableSnapshot`].
//! - **Steps.** [`SqlStep`] runs `up` / `down` SQL in one transaction with a marker row in
//!   `_rollback.applied_steps`, under `lock_timeout` / `statement_timeout` guards;
//!   statements that cannot run in a transaction are detected and run in autocommit; a
//!   destructive `up` makes the step restore-only. [`Backfill`] updates by key ranges in
//!   throttled batches, reports progress and resumes from its journaled cursor.
//! - **Verifiers.** [`RowCountParity`], [`TableHashParity`] (streamed blake3 table hash,
//!   bisected to the differing rows), [`ForeignKeyIntegrity`] (orphans, `NOT VALID`
//!   constraints included), [`SchemaMatches`], [`SqlAssertion`].
//! - **Journal.** [`PgJournal`] implements [`rollback_core::journal::Journal`] in
//!   `_rollback.journal` with chained records and leases decided by the server's clock.
//!
//! ## TLS
//!
//! [`Database::connect`] speaks TLS as libpq does, with rustls: `sslmode` (`disable`,
//! `prefer` — the default: TLS when the server offers it, else plain —, `require`,
//! `verify-ca`, `verify-full`), `sslrootcert` (a PEM file, or `system`), `sslcert` and
//! `sslkey` are read from the connection string, or set with [`Database::builder`]:
//!
//! ```no_run
//! # async fn demo() -> rollback_core::Result<()> {
//! use rollback_postgres::{tls_failure, Database, SslMode, TlsFailure};
//! let db = Database::connect(
//!     "postgres://app@db.internal:5432/shop?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
//! )?;
//! // or in code:
//! let db = Database::builder("postgres://app@db.internal:5432/shop")
//!     .ssl_mode(SslMode::VerifyFull)
//!     .ssl_root_cert("/etc/ssl/db-ca.pem")
//!     .build()?;
//! match db.client().await {
//!     Ok(_) => {}
//!     // Permanent, and the message says what to change; no password in it.
//!     Err(e) if tls_failure(&e) == Some(TlsFailure::WrongHostname) => eprintln!("{e}"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```
//!
//! A wrong host name under `verify-full`, a certificate from an unknown CA, a server
//! without SSL under `require` or stronger, and a plain connection to a server that takes
//! only SSL are permanent errors ([`rollback_core::Error::Backend`]) whose cause
//! [`tls_failure`] names ([`TlsFailure`]).
//!
//! ## Resource ids
//!
//! `postgres:<database>/<schema>.<table>` for a table ([`Database::table_resource`]),
//! `postgres:<database>/<schema>.<t1>+<schema>.<t2>` for a set of tables checkpointed
//! together, `postgres:<database>/schema:<s1>,<s2>` for a catalog, `postgres:<database>`
//! for the database. A part holding `.`, `"`, `/`, `:`, space, `+` or `,` is
//! double-quoted so ids never collide. A step's `touches` must name its checkpoint's id.
//!
//! ## Identifiers, literals, settings and secrets
//!
//! Every identifier is double-quoted in generated SQL, so mixed case, spaces, quotes and
//! unicode work ([`Table`] takes names verbatim); literals are written so that they mean
//! the same whatever `standard_conforming_strings` is ([`quote_literal`]); function bodies
//! the crate generates are dollar-quoted with a tag that occurs nowhere in them; text read
//! from the catalog (names, comments, labels) enters SQL only quoted. Every session pins
//! the settings this SQL relies on, and the crate's own statements run with
//! `search_path = pg_catalog, pg_temp`, whatever the server's, database's or role's
//! defaults (see [`Database`]); user SQL ([`SqlStep`], a [`Backfill`]'s fragments,
//! [`SqlAssertion`]) runs with the database's own `search_path`. A [`Database`] displays
//! as `user@host:port/db`; no error, log line, `Debug` output or report of this crate
//! carries a password or connection string.
//!
//! ## Privileges
//!
//! No type needs a superuser. What a role needs, beyond `LOGIN` and `CONNECT` on the
//! database, `USAGE` on the schemas of the tables it names, and a default
//! `session_replication_role` of `origin` (a role that defaults to another value needs
//! `SET` on that parameter: see [`Database`]):
//!
//! | Type | Database | Schemas | Tables and other objects |
//! |---|---|---|---|
//! | [`TableSnapshot`] | `CREATE` only while the snapshot schema (`_rollback_snapshots`) does not exist | `USAGE`, `CREATE` on the snapshot schema; a swap also `CREATE` on the table's schema (the copy moves there) | capture: `SELECT`; restore: owner of the tables (member of the owning role) — a swap drops and renames them, copy and merge disable their triggers — and `REFERENCES` on what their foreign keys reference; discard: owner of the copies (the capturing role) |
//! | [`TableUndoLog`] | `CREATE` only while `_rollback` does not exist; `TEMP` (granted to `PUBLIC` by default) for a selective restore, which classifies the logged keys in temporary tables | `USAGE`, `CREATE` on `_rollback` | owner of the tables: capture creates triggers on them, restore disables their user triggers, discard drops the triggers. Writers of the tables need nothing more: the trigger function is `SECURITY DEFINER` of the capturing role, which owns the logs |
//! | [`SchemaSnapshot`] | — | `USAGE` on the schemas; restore: `CREATE` on them | capture: `SELECT` on their sequences (their values are read); restore: owner of what it changes |
//! | [`SqlStep`] | `CREATE` only while `_rollback` does not exist | `USAGE` on `_rollback`; `CREATE` until its tables exist | `SELECT`, `INSERT`, `UPDATE`, `DELETE` on `_rollback.applied_steps` and `SELECT`, `INSERT`, `UPDATE` on `_rollback.fences` (their owner when the crate created them); whatever `up` and `down` need |
//! | [`Backfill`] | as [`SqlStep`] | as [`SqlStep`] | `SELECT`, `UPDATE` on the table; as [`SqlStep`] on `_rollback.applied_steps` and `_rollback.backfill_progress` |
//! | Verifiers | — | — | [`RowCountParity`], [`TableHashParity`]: `SELECT` on the table (and on the snapshot copy: its owner can); [`ForeignKeyIntegrity`]: `SELECT` on child and parent tables; [`SchemaMatches`]: as a [`SchemaSnapshot`] capture; [`SqlAssertion`]: what its query reads; [`UndoLogParity`]: the logs (their owner) |
//! | [`PgJournal`] | `CREATE` only while `_rollback` does not exist | `USAGE` on `_rollback`; `CREATE` until `journal` and `leases` exist | `SELECT`, `INSERT` on `_rollback.journal`; `SELECT`, `INSERT`, `UPDATE`, `DELETE` on `_rollback.leases` |
//! | [`RecoveryPoint`] | — | — | `EXECUTE` on `pg_create_restore_point(text)` (superuser only unless granted: without it the verdict fails, or passes with the LSN alone under [`RecoveryPoint::lsn_is_enough`]); `pg_control_checkpoint()` for the timeline (optional) |
//!
//! Inside a run, restores of both table checkpoints also raise the run's fencing epoch in
//! `_rollback.fences` (as [`SqlStep`] does).
//!
//! The crate's statements run with `row_security = off`: a table that row-level security
//! would filter for the role (a non-owner, or `FORCE ROW LEVEL SECURITY`) makes them fail
//! ("query would be affected by row-level security policy") instead of seeing part of it;
//! such a role needs `BYPASSRLS`. A missing privilege is a permanent error
//! ([`rollback_core::Error::Backend`], or [`rollback_core::Error::Journal`] for the
//! journal) carrying the server's "permission denied for …" message; a DBA may create
//! `_rollback` and `_rollback_snapshots` beforehand, and the crate then creates only what
//! is missing in them.
//!
//! ## Table hash
//!
//! A table's hash is a blake3 digest over the binary COPY encoding of every row in key
//! order (primary key, else a NOT NULL unique key, else the whole row's text), grouped
//! in leaves of [`LEAF_ROWS`] rows; the root covers every leaf, and the snapshot keeps
//! key-range chunk digests so that a mismatch is bisected without reading everything
//! twice. Rows are never decoded: the COPY stream is walked by its length prefixes and
//! hashed in large spans; big tables are hashed by parallel COPY streams over key ranges
//! of one exported snapshot.

mod catalog;
mod checkpoint;
mod db;
mod diff;
mod error;
mod fingerprint;
pub mod fleet;
mod hash;
mod ident;
mod journal;
mod markers;
mod migrations;
mod reads;
mod recovery;
mod sqlscan;
mod steps;
mod triggers;

mod verify;

pub use catalog::{
    Change, ColumnModel, ConstraintModel, EnumModel, FunctionModel, IndexModel, PolicyModel,
    PublicationModel, RuleModel, SchemaChange, SchemaModel, SecurityLabelModel, SequenceModel,
    StatisticsModel, TableModel, TriggerModel, ViewModel,
};
pub use checkpoint::copy::{
    RestoreMethod, TableSnapshot, DEFAULT_SNAPSHOT_SCHEMA, TABLE_COPY_KIND,
};
pub use checkpoint::schema::{SchemaSnapshot, SCHEMA_KIND};
pub use checkpoint::undo_log::{
    ConflictPolicy, LoggedChanges, TableUndoLog, UndoLogParity, UNDO_LOG_KIND,
};
pub use db::{
    Database, DatabaseBuilder, SslMode, DEFAULT_POOL_SIZE, PINNED_SETTINGS, RESET_SESSION_SQL,
};
pub use diff::{RangeDiff, TableDiff};
pub use error::{tls_failure, TlsFailure};
pub use hash::{ChunkDigest, KeyValue, TableHash, LEAF_ROWS};
pub use ident::{quote_ident, quote_literal, Table};
pub use journal::PgJournal;
pub use markers::DEFAULT_MARKER_SCHEMA;
pub use migrations::{
    CheckpointKind, Format, Migration, MigrationError, Migrations, Pending, Revert,
};
pub use recovery::{RecoveryPoint, RecoveryPointInfo};
pub use steps::backfill::{Backfill, BackfillCursor, BackfillReceipt};
pub use steps::sql::{SqlReceipt, SqlStep, TxMode};
pub use steps::{DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT};

/// Attribute the writes of the transaction `client` is in to the run of `ctx`, as this
/// crate's steps do: a [`TableUndoLog`] records who wrote each change, and its selective
/// restore undoes the run's changes only — a custom step's writes that are not
/// attributed count as someone else's and are kept. The mark lasts until the
/// transaction ends, so it takes a transaction (a pooled one derefs to it).
///
/// ```no_run
/// # async fn demo(db: rollback_postgres::Database, ctx: rollback_core::Context) -> rollback_core::Result<()> {
/// let mut c = db.client().await?;
/// let tx = c.transaction().await.map_err(|e| rollback_core::Error::backend("postgres", e))?;
/// rollback_postgres::mark_run_writes(&tx, &ctx).await?;
/// tx.execute("UPDATE customers SET tier = 'gold' WHERE id = 7", &[])
///     .await
///     .map_err(|e| rollback_core::Error::backend("postgres", e))?;
/// tx.commit().await.map_err(|e| rollback_core::Error::backend("postgres", e))?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// Backend errors.
pub async fn mark_run_writes(
    client: &tokio_postgres::Transaction<'_>,
    ctx: &rollback_core::Context,
) -> rollback_core::Result<()> {
    markers::attribute(client, ctx, true).await
}
pub use verify::{
    ForeignKeyIntegrity, RowCountParity, SchemaMatches, SqlAssertion, TableHashParity,
};
