//! Migration folders of existing tools as reversible plans: see [`Migrations`].

mod error;
mod formats;
mod ledger;
mod pending;
mod scan;
mod sqitch;
mod steps;
mod verifier;

pub use error::MigrationError;
pub use pending::{Pending, Revert};

use crate::db::Database;
use crate::error::PgError;
use crate::ident::Table;
use crate::sqlscan;
use ledger::Ledger;
use sqitch::Committer;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A migration tool's folder layout and ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// sqlx (`_sqlx_migrations`).
    Sqlx,
    /// golang-migrate (`schema_migrations` with `dirty`).
    GolangMigrate,
    /// dbmate (`schema_migrations`).
    Dbmate,
    /// diesel (`__diesel_schema_migrations`).
    Diesel,
    /// refinery (`refinery_schema_history`).
    Refinery,
    /// Flyway (`flyway_schema_history`).
    Flyway,
    /// sqitch (`sqitch.plan`; the registry schema `sqitch`).
    Sqitch,
}

impl Format {
    /// The tool's name, as in step ids.
    pub fn tool(self) -> &'static str {
        match self {
            Format::Sqlx => "sqlx",
            Format::GolangMigrate => "golang-migrate",
            Format::Dbmate => "dbmate",
            Format::Diesel => "diesel",
            Format::Refinery => "refinery",
            Format::Flyway => "flyway",
            Format::Sqitch => "sqitch",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sqlx" => Ok(Format::Sqlx),
            "golang-migrate" | "migrate" => Ok(Format::GolangMigrate),
            "dbmate" => Ok(Format::Dbmate),
            "diesel" => Ok(Format::Diesel),
            "refinery" => Ok(Format::Refinery),
            "flyway" => Ok(Format::Flyway),
            "sqitch" => Ok(Format::Sqitch),
            o => Err(format!(
                "unknown migration format {o:?} (sqlx, golang-migrate, dbmate, diesel, refinery, flyway, sqitch)"
            )),
        }
    }
}

/// Which checkpoint covers the rows of a table a migration without a down writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointKind {
    /// [`TableUndoLog`](crate::TableUndoLog): logs the rows changed (default).
    #[default]
    UndoLog,
    /// [`TableSnapshot`](crate::TableSnapshot): copies the table.
    Snapshot,
}

/// One migration of a folder.
#[derive(Debug, Clone)]
pub struct Migration {
    /// The version as the tool records it (sqitch: the change's position in the plan,
    /// from 1).
    pub version: String,
    /// The sort key (the version's numbers).
    order: Vec<u64>,
    /// What the ledger keys the migration by (the version; sqitch: the change id).
    ledger_key: String,
    /// The file name the ledger records (Flyway's `script`).
    script: String,
    /// A verify script (sqitch), run after the migration as a verifier.
    verify: Option<(PathBuf, String)>,
    /// sqitch: the change as the registry records it.
    sqitch: Option<Box<sqitch::Change>>,
    /// refinery's `U` (unversioned) prefix: exempt from the out-of-order check.
    unversioned: bool,
    /// The name (sqlx: its description).
    pub name: String,
    /// The file `up` is read from.
    pub file: PathBuf,
    up: String,
    up_line: usize,
    down: Option<String>,
    down_file: Option<PathBuf>,
    down_line: usize,
    transaction: bool,
    checksum: Option<String>,
}

impl Migration {
    /// The step id: `<version>_<name>`.
    pub fn id(&self) -> String {
        format!("{}_{}", self.version, self.name.replace(' ', "_"))
    }

    /// Whether the folder has a down for it.
    pub fn has_down(&self) -> bool {
        self.down.is_some()
    }

    /// The checksum the tool records for it, as text (see
    /// [`MigrationError::ChecksumMismatch`]), if the tool keeps one.
    pub fn checksum(&self) -> Option<&str> {
        self.checksum.as_deref()
    }

    /// The step ids, file names and versions a knob may name this migration by.
    fn named(&self, name: &str) -> bool {
        name == self.version
            || name == self.id()
            || name == self.script
            || self.file.file_name().is_some_and(|f| f == name)
            || self.file == Path::new(name)
    }
}

/// [`Migrations`]: a migration folder of an existing tool, turned into a reversible
/// [`Plan`](rollback_core::Plan) whose ledger is the tool's own history table.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use rollback_core::Executor;
/// use rollback_postgres::{Database, Migrations, PgJournal};
/// let db = Database::connect(&std::env::var("DATABASE_URL")?)?;
/// let plan = Migrations::sqlx("migrations")?.pending(&db).await?.plan()?;
/// let report = Executor::new(PgJournal::new(&db)).run(&plan).await?;
/// # let _ = report; Ok(()) }
/// ```
///
/// **Pending** is what the tool's table does not list: [`Migrations::pending`] reads it
/// once (creating it first, as the tool's first command does), so a folder half-applied
/// by the tool itself continues where it is. A recorded checksum that differs from the
/// file ([`MigrationError::ChecksumMismatch`]), a failed or dirty version
/// ([`MigrationError::Dirty`], never cleaned here) and a recorded version with no file
/// ([`MigrationError::MissingFile`]) are refused before anything runs.
///
/// **Each migration is a [`SqlStep`](crate::SqlStep)** (exactly once per run, lock and statement guards,
/// non-transactional statements detected), whose `up` is followed by the tool's ledger
/// write and whose `down` by its removal, in the same transaction, so both commit with
/// the migration, as the tool does (the ledger's SQL is the crate's, never scanned as the
/// user's). A first step (`<tool>-ledger`) removes, on rollback, the rows of migrations that
/// a checkpoint undoes rather than a down. After a committed run the tool's `status`
/// says applied; after a rollback it says pending.
///
/// **Transaction control** is handled when the plan is built: a whole-file wrapper
/// (`BEGIN;` … `COMMIT;`) is dropped (the step's transaction replaces it); any other
/// `BEGIN`/`COMMIT`/`SAVEPOINT`… is [`MigrationError::TransactionControl`] naming the
/// file and line, and a session-level `SET` is [`MigrationError::SessionState`].
///
/// **Covering checkpoints.** A migration without a down, or with a destructive `up`
/// (see [`SqlStep`](crate::SqlStep)), is undone by checkpoints of exactly what the scanner finds it
/// touching: tables whose rows it writes get a [`TableUndoLog`](crate::TableUndoLog) (or a [`TableSnapshot`](crate::TableSnapshot)
/// with [`CheckpointKind::Snapshot`]), tables it drops or truncates a [`TableSnapshot`](crate::TableSnapshot),
/// and structure it changes one [`SchemaSnapshot`](crate::SchemaSnapshot) of the schemas involved. A statement
/// the scanner cannot see into (`DO`, a function call) with no down makes
/// [`Pending::plan`] fail with [`MigrationError::NotReversible`]: write a down for it, or
/// name it in [`Migrations::approve_irreversible`] (with a reason), which lets it run as
/// an approved irreversible step that a rollback leaves applied (its ledger row too); the
/// plan's dry run lists it among the risks with the reason. [`Pending::reverts`] lists,
/// per migration, how a rollback undoes it ([`Revert`]).
///
/// ## Formats
///
/// - **sqlx** ([`Migrations::sqlx`]): `<version>_<description>.sql` (no down) or
///   `<version>_<description>.up.sql` + `.down.sql`. A first line `-- no-transaction`
///   runs it outside a transaction. Ledger `_sqlx_migrations(version, description,
///   installed_on, success, checksum, execution_time)`: the description is the name with
///   `_` as spaces, the checksum SHA-384 of the up file's bytes, `execution_time` in
///   nanoseconds; a row with `success = false` is a failed migration sqlx refuses to pass.
/// - **golang-migrate** ([`Migrations::golang_migrate`]): `<version>_<title>.up.<ext>` +
///   optional `.down.<ext>`. The tool runs a file as one multi-statement query (no
///   transaction of its own, hence the common `BEGIN; … COMMIT;` wrapper). Its ledger
///   `schema_migrations(version, dirty)` holds one row, the current version: every
///   version up to it is applied; `dirty = true` means a migration failed halfway and
///   needs a human (`migrate force`); a down sets the version to the previous file's.
/// - **dbmate** ([`Migrations::dbmate`]): `<version>_<name>.sql` with a
///   `-- migrate:up` section and an optional `-- migrate:down` section; the option
///   `transaction:false` on a section marker runs it outside a transaction (set it on
///   both sections: one step runs both alike). Ledger `schema_migrations(version
///   varchar(128))`, one row per applied version, written in the migration's transaction.
/// - **diesel** ([`Migrations::diesel`]): one folder per migration,
///   `<version>_<name>/up.sql` + `down.sql` (diesel's generator always writes a
///   `down.sql`; an empty one counts as none), and an optional `metadata.toml` whose
///   `run_in_transaction = false` runs it outside a transaction. The version is the
///   folder name before its first `_` with the dashes removed
///   (`2024-01-01-000001_users` → `20240101000001`). Ledger
///   `__diesel_schema_migrations(version varchar(50), run_on timestamp)`, written in the
///   migration's transaction.
///
/// - **refinery** ([`Migrations::refinery`]): `V<version>__<name>.sql`, searched
///   recursively; the version is an `i32` (refinery's default; a dotted version is its
///   `InvalidVersion` error), the name `\w+`. refinery has no down files. A `U` prefix
///   ("unversioned") runs whenever it is not applied, even below the latest version; a
///   `V` file below the latest applied one is never run by refinery ("missing") and is
///   [`MigrationError::OutOfOrder`] here. Ledger `refinery_schema_history(version int4,
///   name, applied_on, checksum)`: `applied_on` RFC 3339 text, `checksum` the decimal
///   `u64` refinery computes — SipHash-1-3 with zero keys over the name, the version
///   and the file's text, each as Rust's `Hash` feeds them (a string's bytes then
///   `0xff`, the version's four little-endian bytes). refinery writes the row in a second
///   transaction after the migration's; here it commits with it.
/// - **Flyway** ([`Migrations::flyway`]): `V<version>__<description>.sql` and its undo
///   `U<version>__<description>.sql` (Flyway Teams' `flyway undo`; here the down), searched
///   recursively. Version parts are separated by `.` or `_` (`V1_1__` is `1.1`), compared
///   as numbers, trailing zeros ignored; the description is the name with `_` as spaces.
///   A script configuration file `<file>.sql.conf` may say `executeInTransaction=false`,
///   `placeholderReplacement=false` or `encoding=UTF-8`; any other setting is
///   [`MigrationError::Unsupported`]. Refused with [`MigrationError::Unsupported`]:
///   repeatable migrations (`R__`, re-run whenever their checksum changes, with no version
///   to roll back to), baseline migrations (`B<version>__`) and placeholders (`${…}`,
///   which Flyway replaces before running a file). Callbacks (`beforeMigrate.sql`…) and
///   Java migrations are not read. A version below the latest applied one is
///   [`MigrationError::OutOfOrder`] (Flyway's `outOfOrder = false`). Ledger
///   `flyway_schema_history(installed_rank, version, description, type, script, checksum,
///   installed_by, installed_on, execution_time, success)`: `type` `SQL`, `script` the
///   path under the folder, `installed_by` `current_user`, `execution_time` in
///   milliseconds, `checksum` Flyway's: CRC-32 of the file's lines without their line
///   breaks (and without a leading byte-order mark), as a signed 32-bit integer. A
///   `success = false` row is [`MigrationError::Dirty`] (Flyway's `repair` clears it); a
///   version whose last row is an `UNDO_SQL` one counts as not applied. A rollback removes
///   the rows it wrote (as `flyway repair` would), it does not add undo rows.
/// - **sqitch** ([`Migrations::sqitch`]): a project folder with `sqitch.plan` and the
///   scripts `deploy/<change>.sql`, `revert/<change>.sql` (the down) and
///   `verify/<change>.sql` (run after the change as a verifier: it passes when it raises
///   no error, in a transaction always rolled back). The plan's pragmas `%project` and
///   `%uri`, change lines `name [dependencies] <date> <planner> <<email>> # note`, tags
///   `@tag <date> <planner> <<email>>`, and reworked changes (a name planned again after a
///   tag; the earlier one's scripts are `<change>@<tag>.sql`) are read as sqitch reads
///   them. Dependencies: `name` requires the latest change of that name before it,
///   `name@tag` the one as of the tag, `@tag` the change the tag is on, `!name` declares a
///   conflict; a dependency on another project (`other:name`) and a `-` (revert) entry are
///   [`MigrationError::Unsupported`]. Each change's id is sqitch's: SHA-1 of
///   `change <length>\0` and its info (project, uri, name, parent's id, planner, date,
///   requires, conflicts, note); a tag's likewise. Deploy scripts usually hold their own
///   `BEGIN; … COMMIT;`, which the step's transaction replaces. The version is the
///   change's position in the plan (from 1; [`Migrations::target`] counts changes), the
///   ledger the registry (schema `sqitch`, or [`Migrations::ledger_schema`]), created as
///   sqitch's `pg.sql` does when missing: a deploy writes `changes` (with the deploy
///   script's SHA-1 as `script_hash`), `dependencies`, `tags` and a `deploy` event; a
///   revert removes them and logs a `revert` event, as `sqitch revert` does. The
///   committer is [`Migrations::committer`]. A change before the last deployed one that is
///   not deployed is [`MigrationError::OutOfOrder`].
///
/// Every ledger lives where the tool itself puts it unless [`Migrations::ledger_schema`]
/// says otherwise: sqitch's registry in `sqitch`; every other tool names its table without
/// a schema (or, golang-migrate and dbmate, in `current_schema()`), so it lives in the first
/// existing schema of the session's search path, as the database and the role define it
/// (`public` by default; a role whose search path is its own schema keeps it there).
/// [`Migrations::pending`] asks the server (`current_schema()`); a search path with no
/// existing schema is [`MigrationError::NoLedgerSchema`].
///
/// **Concurrent runners.** Two processes may plan the same folder at once. Creating the
/// ledger, and each migration's transaction, take a transaction-level advisory lock on the
/// ledger table, and each migration checks under it, before its `up`, that the ledger does
/// not already record it: the runner that comes second fails that migration with
/// [`rollback_core::Error::Conflict`] (its run rolls back what it applied itself, and its
/// rollback removes only the ledger rows of migrations it applied), so each migration runs
/// once and the ledger holds no duplicate. Plan again to continue. A migration that runs
/// outside a transaction (dbmate's `transaction:false`, sqlx's `-- no-transaction`, a
/// concurrent index build) holds the same lock at session level from its check to its
/// ledger write.
#[derive(Debug, Clone)]
pub struct Migrations {
    format: Format,
    dir: PathBuf,
    all: Vec<Migration>,
    /// `None`: the session's `current_schema()`, resolved by [`Migrations::pending`].
    ledger_schema: Option<String>,
    committer: Committer,
    approvals: Vec<(String, String)>,
    target: Option<u64>,
    kind: CheckpointKind,
    lock_timeout: Option<Duration>,
    statement_timeout: Option<Duration>,
    timeouts: BTreeMap<String, Duration>,
}

impl Migrations {
    /// Read `dir` in `format`'s layout.
    ///
    /// # Errors
    /// [`MigrationError::Io`], [`MigrationError::Parse`], [`MigrationError::Duplicate`].
    pub fn load(format: Format, dir: impl AsRef<Path>) -> Result<Self, MigrationError> {
        let dir = dir.as_ref().to_path_buf();
        let all = formats::load(format, &dir)?;
        Ok(Migrations {
            format,
            dir,
            ledger_schema: (format == Format::Sqitch).then(|| "sqitch".to_string()),
            all,
            committer: Committer::from_env(),
            approvals: Vec::new(),
            target: None,
            kind: CheckpointKind::default(),
            lock_timeout: None,
            statement_timeout: None,
            timeouts: BTreeMap::new(),
        })
    }

    /// A sqlx folder.
    ///
    /// # Errors
    /// As [`Migrations::load`].
    pub fn sqlx(dir: impl AsRef<Path>) -> Result<Self, MigrationError> {
        Self::load(Format::Sqlx, dir)
    }

    /// A golang-migrate folder.
    ///
    /// # Errors
    /// As [`Migrations::load`].
    pub fn golang_migrate(dir: impl AsRef<Path>) -> Result<Self, MigrationError> {
        Self::load(Format::GolangMigrate, dir)
    }

    /// A dbmate folder.
    ///
    /// # Errors
    /// As [`Migrations::load`].
    pub fn dbmate(dir: impl AsRef<Path>) -> Result<Self, MigrationError> {
        Self::load(Format::Dbmate, dir)
    }

    /// A diesel folder.
    ///
    /// # Errors
    /// As [`Migrations::load`].
    pub fn diesel(dir: impl AsRef<Path>) -> Result<Self, MigrationError> {
        Self::load(Format::Diesel, dir)
    }

    /// A refinery folder.
    ///
    /// # Errors
    /// As [`Migrations::load`].
    pub fn refinery(dir: impl AsRef<Path>) -> Result<Self, MigrationError> {
        Self::load(Format::Refinery, dir)
    }

    /// A Flyway folder (one location).
    ///
    /// # Errors
    /// As [`Migrations::load`], and [`MigrationError::Unsupported`] for repeatable (`R__`)
    /// and baseline (`B…__`) migrations and placeholders.
    pub fn flyway(dir: impl AsRef<Path>) -> Result<Self, MigrationError> {
        Self::load(Format::Flyway, dir)
    }

    /// A sqitch project: the folder holding `sqitch.plan`, `deploy/`, `revert/` and
    /// `verify/`.
    ///
    /// ```no_run
    /// # async fn demo(db: &rollback_postgres::Database) -> Result<(), Box<dyn std::error::Error>> {
    /// use rollback_postgres::Migrations;
    /// let plan = Migrations::sqitch("db/sqitch")?
    ///     .committer("Release Bot", "release@example.com")
    ///     .pending(db)
    ///     .await?
    ///     .plan()?;
    /// # let _ = plan; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Migrations::load`], and [`MigrationError::Unsupported`] for a dependency on
    /// another project or a `-` entry.
    pub fn sqitch(dir: impl AsRef<Path>) -> Result<Self, MigrationError> {
        Self::load(Format::Sqitch, dir)
    }

    /// The migrations of the folder, in order.
    pub fn all(&self) -> &[Migration] {
        &self.all
    }

    /// sqitch: the committer's name and email written in the registry (default as sqitch
    /// finds them without a configuration file: `SQITCH_FULLNAME` and `SQITCH_EMAIL`,
    /// else the system user and `user@host`).
    pub fn committer(mut self, name: impl Into<String>, email: impl Into<String>) -> Self {
        self.committer = Committer {
            name: name.into(),
            email: email.into(),
        };
        self
    }

    /// Let these migrations run although no down and no checkpoint can undo them (a
    /// statement the scanner cannot see into, such as `DO` or a function call, with no
    /// down): each is named by its file name, version or step id. A rollback leaves them
    /// applied (and in the tool's ledger); the plan's dry run and report list each with
    /// `reason`. Without this, [`Pending::plan`] fails with
    /// [`MigrationError::NotReversible`].
    ///
    /// ```no_run
    /// # async fn demo(db: &rollback_postgres::Database) -> Result<(), Box<dyn std::error::Error>> {
    /// use rollback_postgres::{Migrations, Revert};
    /// let pending = Migrations::flyway("sql")?
    ///     .approve_irreversible(["V7__refresh_stats.sql"], "a read-only statistics refresh")
    ///     .pending(db)
    ///     .await?;
    /// for (step, how) in pending.reverts()? {
    ///     if let Revert::Approved(why) = how {
    ///         println!("{step} stays applied after a rollback: {why}");
    ///     }
    /// }
    /// let plan = pending.plan()?;
    /// # let _ = plan; Ok(()) }
    /// ```
    pub fn approve_irreversible<S: Into<String>>(
        mut self,
        migrations: impl IntoIterator<Item = S>,
        reason: impl Into<String>,
    ) -> Self {
        let reason = reason.into();
        self.approvals
            .extend(migrations.into_iter().map(|m| (m.into(), reason.clone())));
        self
    }

    fn approval(&self, m: &Migration) -> Option<&str> {
        self.approvals
            .iter()
            .find(|(n, _)| m.named(n))
            .map(|(_, r)| r.as_str())
    }

    /// The schema of the tool's ledger table (default: where the tool puts it, the
    /// session's `current_schema()`; sqitch: the registry schema, default `sqitch`).
    pub fn ledger_schema(mut self, schema: impl Into<String>) -> Self {
        self.ledger_schema = Some(schema.into());
        self
    }

    /// Apply only up to this version (included). A Flyway version with several parts
    /// sorts after its first: `target(1)` stops before `1.1`. sqitch: the first `version`
    /// changes of the plan.
    pub fn target(mut self, version: u64) -> Self {
        self.target = Some(version);
        self
    }

    /// Which checkpoint covers the rows a migration without a down writes.
    pub fn checkpoint_kind(mut self, kind: CheckpointKind) -> Self {
        self.kind = kind;
        self
    }

    /// `lock_timeout` of every migration (default [`crate::DEFAULT_LOCK_TIMEOUT`]).
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = Some(d);
        self
    }

    /// `statement_timeout` of every migration (default
    /// [`crate::DEFAULT_STATEMENT_TIMEOUT`]).
    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = Some(d);
        self
    }

    /// `statement_timeout` of one migration, by version (a long index build).
    pub fn timeout_for(mut self, version: impl Into<String>, d: Duration) -> Self {
        self.timeouts.insert(version.into(), d);
        self
    }

    fn ledger(&self) -> Ledger {
        Ledger {
            format: self.format,
            schema: self
                .ledger_schema
                .clone()
                .unwrap_or_else(|| "public".into()),
            committer: self.committer.clone(),
            project: sqitch::project(&self.all),
        }
    }

    /// Read the tool's ledger and keep what is pending: two round trips, one for the
    /// search path the migrations run with (where the ledger and their unqualified names
    /// are), one that creates the table as the tool does when it is missing (under the
    /// ledger's advisory lock) and reads it.
    ///
    /// # Errors
    /// [`MigrationError::ChecksumMismatch`], [`MigrationError::Dirty`],
    /// [`MigrationError::MissingFile`], [`MigrationError::NoLedgerSchema`], backend errors
    /// (a missing privilege names the ledger table and the server's message).
    pub async fn pending(mut self, db: &Database) -> Result<Pending, MigrationError> {
        let c = db.client().await?;
        // The search path the migrations run with (the database's and the role's): where
        // their unqualified names are, and where the tool puts its table.
        let row = c
            .query_one(
                "SELECT pg_catalog.current_schema()::text, \
                 pg_catalog.current_setting('search_path'), \
                 pg_catalog.current_schemas(false)::text[]",
                &[],
            )
            .await
            .map_err(|e| PgError::new("reading the search path", &e).into_core(false))?;
        let path = scan::SearchPath {
            schemas: row.get(2),
        };
        if self.ledger_schema.is_none() {
            match row.get::<_, Option<String>>(0) {
                Some(s) => self.ledger_schema = Some(s),
                None => {
                    return Err(MigrationError::NoLedgerSchema {
                        search_path: row.get(1),
                    })
                }
            }
        }
        drop(row);
        drop(c);
        // The ledger's SQL is the crate's: it runs with the library's search path, so
        // nothing the database's path puts before pg_catalog stands in for a function.
        let c = db.lib_client().await?;
        let ledger = self.ledger();
        let create = ledger.create_sql();
        // Two runners creating the ledger at once: the second waits for the first
        // (concurrent `CREATE TABLE IF NOT EXISTS` can fail on the catalog's unique index).
        // The ledger's rows follow the statements that create it, and the transaction's.
        let rows_part = sqlscan::split(&create).len() + 3;
        let sql = format!(
            "BEGIN;\n{};\n{};\nCOMMIT;\n{};\nSELECT n.nspname::text, c.relname::text, NULL, NULL FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            ledger.lock_sql(),
            create,
            ledger.read_sql()
        );
        let msgs = match c.simple_query(&sql).await {
            Ok(m) => m,
            Err(e) => {
                // A failed statement leaves the transaction aborted: end it before the
                // connection goes back to the pool.
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(PgError::new(
                    format!("creating or reading the ledger {}", ledger.table()),
                    &e,
                )
                .into_core(false)
                .into());
            }
        };
        let mut rows = Vec::new();
        let mut existing = BTreeSet::new();
        let mut part = 0;
        for m in msgs {
            match m {
                tokio_postgres::SimpleQueryMessage::Row(r) if part == rows_part => {
                    rows.push(ledger::Row {
                        version: r.get(0).unwrap_or_default().to_string(),
                        checksum: r.get(1).map(str::to_string),
                        dirty: r.get(2) == Some("true"),
                    })
                }
                tokio_postgres::SimpleQueryMessage::Row(r) if part == rows_part + 1 => {
                    existing.insert(Table::new(
                        r.get(0).unwrap_or_default(),
                        r.get(1).unwrap_or_default(),
                    ));
                }
                tokio_postgres::SimpleQueryMessage::CommandComplete(_) => part += 1,
                _ => {}
            }
        }
        // Parts: BEGIN, the lock, the CREATE TABLE, COMMIT, the ledger's rows, the
        // existing tables.
        self.sort_out(db, rows, existing, path)
    }

    fn sort_out(
        self,
        db: &Database,
        rows: Vec<ledger::Row>,
        existing: BTreeSet<Table>,
        path: scan::SearchPath,
    ) -> Result<Pending, MigrationError> {
        let ledger = self.ledger();
        let table = format!("{}.{}", ledger.schema, ledger.table_name());
        if let Some(d) = rows.iter().find(|r| r.dirty) {
            return Err(MigrationError::Dirty {
                table,
                version: d.version.clone(),
            });
        }
        let mut applied: BTreeSet<usize> = BTreeSet::new();
        let mut before = None;
        for r in &rows {
            let Some(i) = self.all.iter().position(|m| m.ledger_key == r.version) else {
                return Err(MigrationError::MissingFile {
                    table,
                    version: r.version.clone(),
                });
            };
            let m = &self.all[i];
            if let (Some(rec), Some(cur)) = (&r.checksum, &m.checksum) {
                if rec != cur {
                    return Err(MigrationError::ChecksumMismatch {
                        version: m.version.clone(),
                        file: m.file.clone(),
                        recorded: rec.clone(),
                        current: cur.clone(),
                    });
                }
            }
            if self.format == Format::GolangMigrate {
                // One row: the current version; everything up to it is applied.
                before = Some(m.version.clone());
                applied.extend((0..self.all.len()).filter(|&j| self.all[j].order <= m.order));
            } else {
                applied.insert(i);
            }
        }
        // refinery, Flyway and sqitch never run a migration that sorts before the latest
        // applied one.
        if matches!(
            self.format,
            Format::Refinery | Format::Flyway | Format::Sqitch
        ) {
            if let Some(&last) = applied
                .iter()
                .max_by(|&&a, &&b| self.all[a].order.cmp(&self.all[b].order))
            {
                let latest = &self.all[last];
                if let Some(m) = self
                    .all
                    .iter()
                    .enumerate()
                    .find(|(j, m)| !applied.contains(j) && m.order < latest.order && !m.unversioned)
                    .map(|(_, m)| m)
                {
                    return Err(MigrationError::OutOfOrder {
                        file: m.file.clone(),
                        version: m.version.clone(),
                        latest: latest.version.clone(),
                    });
                }
            }
        }
        let pending: Vec<usize> = (0..self.all.len())
            .filter(|i| !applied.contains(i))
            .filter(|&i| self.target.is_none_or(|t| self.all[i].order <= vec![t]))
            .collect();
        Ok(Pending {
            db: db.clone(),
            migrations: self,
            applied: applied.len(),
            pending,
            before,
            existing,
            path,
        })
    }
}
