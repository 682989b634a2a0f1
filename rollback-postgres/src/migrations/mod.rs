//! Migration folders of existing tools as reversible plans: see [`Migrations`].

mod formats;
mod ledger;
mod scan;
mod sqitch;
mod verifier;

use crate::checkpoint::copy::TableSnapshot;
use crate::checkpoint::schema::SchemaSnapshot;
use crate::checkpoint::undo_log::TableUndoLog;
use crate::db::Database;
use crate::error::PgError;
use crate::ident::Table;
use crate::markers;
use crate::sqlscan;
use crate::steps::sql::SqlStep;
use async_trait::async_trait;
use ledger::Ledger;
use rollback_core::{Context, Effect, Plan, PlanError, Receipt, Reversibility, Step};
use sqitch::Committer;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use verifier::ScriptVerifier;

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
    /// [`TableUndoLog`]: logs the rows changed (default).
    #[default]
    UndoLog,
    /// [`TableSnapshot`]: copies the table.
    Snapshot,
}

/// Why a folder cannot become a plan. Every variant names the file (and line) or version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The folder or a file could not be read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        message: String,
    },
    /// A file does not follow the format.
    #[error("{}:{line}: {message}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// The line (0: the file name).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Transaction control other than a whole-file `BEGIN … COMMIT` wrapper.
    #[error("{}:{line}: transaction control ({statement}): each migration runs in its own transaction; only a whole-file BEGIN … COMMIT wrapper is accepted", file.display())]
    TransactionControl {
        /// The file.
        file: PathBuf,
        /// The line of the statement.
        line: usize,
        /// The statement.
        statement: String,
    },
    /// A statement that changes the session beyond the migration (a session-level `SET`).
    #[error("{}:{line}: {statement} changes the session beyond the migration ({why}); use SET LOCAL", file.display())]
    SessionState {
        /// The file.
        file: PathBuf,
        /// The line.
        line: usize,
        /// The statement.
        statement: String,
        /// Why.
        why: String,
    },
    /// Two files share a version.
    #[error("version {version} is in two files: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "))]
    Duplicate {
        /// The version.
        version: String,
        /// The files.
        files: Vec<PathBuf>,
    },
    /// The ledger records a checksum that differs from the applied file's.
    #[error("{}: version {version} was applied with another content (checksum {recorded}, file {current}); the file changed after it ran", file.display())]
    ChecksumMismatch {
        /// The version.
        version: String,
        /// The file.
        file: PathBuf,
        /// Recorded checksum, as the tool writes it (sqlx: hex; refinery, Flyway: decimal;
        /// sqitch: the deploy script's SHA-1 in hex).
        recorded: String,
        /// The file's checksum, in the same form.
        current: String,
    },
    /// A feature of the tool this library does not run (a Flyway repeatable or baseline
    /// migration, a placeholder, a sqitch dependency on another project…).
    #[error("{}:{line}: not supported: {message}", file.display())]
    Unsupported {
        /// The file.
        file: PathBuf,
        /// The line (0: the file name).
        line: usize,
        /// What it is, and what to do instead.
        message: String,
    },
    /// A pending migration sorts before one already applied: the tool itself would refuse
    /// or skip it (refinery's and Flyway's "missing" migrations, a sqitch change before
    /// the last one deployed).
    #[error("{}: version {version} is not applied but {latest} after it is; the tool would not run it (apply it out of order with the tool, or renumber it)", file.display())]
    OutOfOrder {
        /// The file.
        file: PathBuf,
        /// Its version.
        version: String,
        /// The latest applied version.
        latest: String,
    },
    /// The ledger marks a version failed or dirty: it needs a human (it is never cleaned
    /// here).
    #[error("{table}: version {version} is dirty (a migration failed halfway); fix the database and clear it with the tool before running again")]
    Dirty {
        /// The ledger table.
        table: String,
        /// The version.
        version: String,
    },
    /// The ledger records a version no file has.
    #[error("{table}: version {version} is applied but no file of the folder has it")]
    MissingFile {
        /// The ledger table.
        table: String,
        /// The version.
        version: String,
    },
    /// A migration has no down and does something no checkpoint can cover; it can run
    /// only when [`Migrations::approve_irreversible`] names it.
    #[error("{}:{line}: {reason}; add a down migration, or approve it as irreversible (Migrations::approve_irreversible)", file.display())]
    NotReversible {
        /// The file.
        file: PathBuf,
        /// The line.
        line: usize,
        /// Why.
        reason: String,
    },
    /// The ledger's schema is the session's current schema, and no schema of the search
    /// path exists (the tool itself would fail too): create one, or name one with
    /// [`Migrations::ledger_schema`].
    #[error("no schema of the search path ({search_path}) exists to hold the ledger; create it, or name one with Migrations::ledger_schema")]
    NoLedgerSchema {
        /// The session's search path.
        search_path: String,
    },
    /// Reading the ledger failed.
    #[error(transparent)]
    Backend(#[from] rollback_core::Error),
    /// The plan was refused.
    #[error(transparent)]
    Plan(#[from] PlanError),
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
/// [`Plan`] whose ledger is the tool's own history table.
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
/// **Each migration is a [`SqlStep`]** (exactly once per run, lock and statement guards,
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
/// (see [`SqlStep`]), is undone by checkpoints of exactly what the scanner finds it
/// touching: tables whose rows it writes get a [`TableUndoLog`] (or a [`TableSnapshot`]
/// with [`CheckpointKind::Snapshot`]), tables it drops or truncates a [`TableSnapshot`],
/// and structure it changes one [`SchemaSnapshot`] of the schemas involved. A statement
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

/// How a rollback undoes one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revert {
    /// By its down.
    Down,
    /// By restoring these checkpoints (resource ids).
    Checkpoint(Vec<String>),
    /// It cannot be undone: it needs a down (or an approval to stay).
    NeedsApproval(String),
    /// It cannot be undone and [`Migrations::approve_irreversible`] let it run: a rollback
    /// leaves it applied (the approval's reason).
    Approved(String),
}

/// The pending migrations of a folder (see [`Migrations::pending`]).
#[derive(Debug)]
pub struct Pending {
    db: Database,
    migrations: Migrations,
    applied: usize,
    pending: Vec<usize>,
    before: Option<String>,
    existing: BTreeSet<Table>,
    /// The migrations' search path, which resolves their unqualified names.
    path: scan::SearchPath,
}

struct Built {
    steps: Vec<SqlStep>,
    reverts: Vec<(String, Revert)>,
    /// Tables to checkpoint, and whether they need a copy (dropped, truncated, or
    /// altered during the run: an undo log's triggers follow the columns they were made
    /// for).
    data: BTreeMap<Table, bool>,
    schemas: BTreeSet<String>,
    problems: Vec<MigrationError>,
    /// Approved irreversible migrations: step id → reason.
    approved: BTreeMap<String, String>,
    /// Verify scripts: step id → verifier.
    verifiers: Vec<(String, ScriptVerifier)>,
}

impl Pending {
    /// The migrations to apply, in order.
    pub fn migrations(&self) -> Vec<&Migration> {
        self.pending
            .iter()
            .map(|&i| &self.migrations.all[i])
            .collect()
    }

    /// How many migrations the ledger lists as applied.
    pub fn applied_count(&self) -> usize {
        self.applied
    }

    /// Per pending migration (by step id), how a rollback undoes it.
    ///
    /// # Errors
    /// Files that cannot run (see [`Pending::plan`]).
    pub fn reverts(&self) -> Result<Vec<(String, Revert)>, MigrationError> {
        Ok(self.build()?.reverts)
    }

    fn build(&self) -> Result<Built, MigrationError> {
        let ms = &self.migrations;
        let ledger = ms.ledger();
        let db = &self.db;
        let mut out = Built {
            steps: Vec::new(),
            reverts: Vec::new(),
            data: BTreeMap::new(),
            schemas: BTreeSet::new(),
            problems: Vec::new(),
            approved: BTreeMap::new(),
            verifiers: Vec::new(),
        };
        // First pass: what each migration does and whether it needs a cover.
        let mut per: Vec<(SqlStep, scan::Touch, bool, usize)> = Vec::new();
        for &i in &self.pending {
            let m = &ms.all[i];
            let up = scan::unwrap_transaction(&m.file, &m.up, m.up_line)?;
            refuse_session_state(&m.file, &up, m.up_line)?;
            // A down section with no statement (dbmate's empty `-- migrate:down`) is none.
            let down = match m.down.as_ref().filter(|d| !sqlscan::split(d).is_empty()) {
                Some(d) => {
                    let f = m.down_file.as_deref().unwrap_or(&m.file);
                    let d = scan::unwrap_transaction(f, d, m.down_line)?;
                    refuse_session_state(f, &d, m.down_line)?;
                    Some(d)
                }
                None => None,
            };
            let mut touch = scan::Touch::default();
            let mut opaque_line = None;
            for l in scan::locate(&up, m.up_line) {
                let t = scan::touch(&l.st.text).resolve(&self.path, &|t| self.existing.contains(t));
                if t.opaque && opaque_line.is_none() {
                    opaque_line = Some(l.line);
                }
                touch.merge(t);
            }
            let previous = (i > 0).then(|| &ms.all[i - 1]);
            // The ledger's write follows `up` (its removal `down`) in the step's transaction.
            let mut step = SqlStep::new(db, m.id(), up.clone())
                .bookkeeping(ledger.record_sql(m), ledger.erase_sql(m, previous))
                .guard(
                    ledger.guard_sql(m),
                    ledger.session_lock_sql(true),
                    ledger.session_lock_sql(false),
                );
            if let Some(d) = &down {
                step = step.down(d.clone());
            }
            if !m.transaction {
                step = step.non_transactional();
            }
            if let Some(d) = ms.lock_timeout {
                step = step.lock_timeout(d);
            }
            if let Some(d) = ms
                .timeouts
                .get(&m.version)
                .or(ms.statement_timeout.as_ref())
            {
                step = step.statement_timeout(*d);
            }
            if let Some((file, text)) = &m.verify {
                out.verifiers.push((
                    m.id(),
                    ScriptVerifier::new(db, format!("verify:{}", m.id()), file, text)?,
                ));
            }
            let covered = step.reversibility() == Reversibility::RestoreOnly;
            if covered {
                if let (Some(_), Some(reason)) = (opaque_line, ms.approval(m)) {
                    out.approved.insert(m.id(), reason.to_string());
                } else if let Some(line) = opaque_line {
                    out.problems.push(MigrationError::NotReversible {
                        file: m.file.clone(),
                        line,
                        reason: "no down, and a statement the scanner cannot see into \
                                 (what it changes is unknown, so no checkpoint can cover it)"
                            .into(),
                    });
                }
            }
            per.push((step, touch, covered, i));
        }
        // Tables created by the plan are not there to checkpoint: their removal is the
        // structure's.
        let mut created: BTreeSet<Table> = BTreeSet::new();
        let altered: BTreeSet<Table> = per
            .iter()
            .flat_map(|(_, t, _, _)| t.altered.iter().chain(t.emptied.iter()).cloned())
            .collect();
        let mut covers: Vec<(BTreeSet<Table>, bool)> = Vec::new();
        for (_, touch, covered, _) in &per {
            let mut tables = BTreeSet::new();
            let mut structure = !touch.structure.is_empty();
            if *covered {
                for t in touch.data.iter().chain(touch.emptied.iter()) {
                    if self.existing.contains(t) && !created.contains(t) {
                        let copy = altered.contains(t);
                        let e = out.data.entry(t.clone()).or_insert(false);
                        *e |= copy;
                        tables.insert(t.clone());
                    } else {
                        // Rows of a table the plan creates: gone with the structure.
                        out.schemas.insert(t.schema.clone());
                        structure = true;
                    }
                }
                out.schemas.extend(touch.structure.iter().cloned());
            }
            created.extend(touch.created.iter().cloned());
            covers.push((tables, structure));
        }
        let schema_resource = db.schema_resource(&out.schemas.iter().cloned().collect::<Vec<_>>());
        for ((step, _, covered, i), (tables, structure)) in per.into_iter().zip(covers) {
            let m = &ms.all[i];
            if !covered {
                out.reverts.push((m.id(), Revert::Down));
                out.steps.push(step);
                continue;
            }
            if let Some(reason) = out.approved.get(&m.id()) {
                // Nothing can undo it: it touches nothing a checkpoint restores.
                out.reverts.push((m.id(), Revert::Approved(reason.clone())));
                out.steps.push(step);
                continue;
            }
            let mut step = step;
            let mut resources = Vec::new();
            for t in &tables {
                step = step.touches_table(t);
                resources.push(db.table_resource(t));
            }
            if structure {
                step = step.touching(schema_resource.clone());
                resources.push(schema_resource.clone());
            }
            let revert =
                if out.problems.iter().any(
                    |p| matches!(p, MigrationError::NotReversible { file, .. } if *file == m.file),
                ) {
                    Revert::NeedsApproval("no down and an opaque statement".into())
                } else {
                    Revert::Checkpoint(resources)
                };
            out.reverts.push((m.id(), revert));
            out.steps.push(step);
        }
        Ok(out)
    }

    /// The plan: a ledger step, then each pending migration after the one before it, with
    /// the covering checkpoints.
    ///
    /// # Errors
    /// [`MigrationError::TransactionControl`], [`MigrationError::SessionState`],
    /// [`MigrationError::NotReversible`], [`MigrationError::Plan`].
    pub fn plan(&self) -> Result<Plan, MigrationError> {
        let ms = &self.migrations;
        let mut built = self.build()?;
        if !built.problems.is_empty() {
            return Err(built.problems.remove(0));
        }
        let tool = ms.format.tool();
        let name = match (self.migrations().first(), self.migrations().last()) {
            (Some(a), Some(b)) => {
                format!("{tool}:{}:{}..{}", ms.dir.display(), a.version, b.version)
            }
            _ => format!("{tool}:{}:nothing-pending", ms.dir.display()),
        };
        let mut b = Plan::builder(name);
        for (t, copy) in &built.data {
            b = if *copy || ms.kind == CheckpointKind::Snapshot {
                b.checkpoint("db", TableSnapshot::new(&self.db, t.clone()))
            } else {
                b.checkpoint("db", TableUndoLog::new(&self.db, t.clone()))
            };
        }
        if !built.schemas.is_empty() {
            b = b.checkpoint(
                "db",
                SchemaSnapshot::new(&self.db, built.schemas.iter().cloned()),
            );
        }
        let ledger = ms.ledger();
        let ledger_id = format!("{tool}-ledger");
        // The ledger's tables are checked like any other resource: a rollback proves them
        // back at their baseline (a fingerprint; the ledger step's own revert undoes them,
        // so nothing is copied). Not when an approved irreversible migration keeps its row:
        // the ledger then rightly differs from its baseline.
        let ledger_tables = if built.approved.is_empty() {
            ledger.tables()
        } else {
            Vec::new()
        };
        for t in &ledger_tables {
            b = b.checkpoint("db", TableSnapshot::new(&self.db, t.clone()));
        }
        // Approved irreversible migrations stay applied, and so does their ledger row.
        let versions: Vec<&Migration> = self
            .migrations()
            .into_iter()
            .filter(|m| !built.approved.contains_key(&m.id()))
            .collect();
        let before = self
            .migrations()
            .into_iter()
            .rfind(|m| built.approved.contains_key(&m.id()))
            .map(|m| m.version.clone())
            .or_else(|| self.before.clone());
        b = b.step(
            "db",
            LedgerStep {
                id: ledger_id.clone(),
                touches: ledger_tables
                    .iter()
                    .map(|t| self.db.table_resource(t))
                    .collect(),
                db: self.db.clone(),
                restore: ledger.restore_sql(&versions, before.as_deref()),
                migrations: versions.iter().map(|m| (*m).clone()).collect(),
                before: before.clone(),
                ledger,
            },
            &[],
        );
        let mut prev = ledger_id;
        for step in built.steps.drain(..) {
            let id = step.id().to_string();
            let mut scanned = Scanned::new(step);
            if let Some(reason) = built.approved.get(&id) {
                scanned.reversibility = Reversibility::Irreversible;
                b = b.approve_irreversible(&id, reason);
            }
            b = b.step("db", scanned, &[prev.as_str()]);
            prev = id;
        }
        for (step, v) in built.verifiers.drain(..) {
            b = b.verify_after(&step, v);
        }
        Ok(b.build()?)
    }
}

fn refuse_session_state(file: &Path, sql: &str, first_line: usize) -> Result<(), MigrationError> {
    for l in scan::locate(sql, first_line) {
        if let Some(why) = sqlscan::session_state(&l.st) {
            return Err(MigrationError::SessionState {
                file: file.to_path_buf(),
                line: l.line,
                statement: scan::short(&l.st.text),
                why,
            });
        }
    }
    Ok(())
}

/// The first step of a migrations plan: nothing to apply; its revert puts the tool's
/// ledger back as it was before the run for migrations a checkpoint undoes (those with a
/// down already removed their row in their own transaction). Only migrations this run
/// applied (their step marker is there) are removed: a runner that lost the race for a
/// migration never removes the rows the winner wrote.
#[derive(Debug)]
struct LedgerStep {
    id: String,
    /// The ledger's tables (empty when an approved irreversible migration keeps its row).
    touches: Vec<String>,
    db: Database,
    /// The restore of every pending migration (what the spec and the dry run show).
    restore: String,
    ledger: Ledger,
    migrations: Vec<Migration>,
    before: Option<String>,
}

#[async_trait]
impl Step for LedgerStep {
    fn id(&self) -> &str {
        &self.id
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::Compensable
    }
    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "kind": "pg.migrations.ledger", "restore": self.restore })
    }
    fn describe(&self) -> String {
        format!(
            "ledger {}: on rollback, {}",
            self.id,
            scan::short(&self.restore)
        )
    }
    async fn apply(&self, ctx: &Context) -> rollback_core::Result<Receipt> {
        Ok(Receipt::new(&serde_json::json!({ "run_id": ctx.run_id() })))
    }
    async fn revert(&self, _r: Option<&Receipt>, ctx: &Context) -> rollback_core::Result<()> {
        let c = self.db.lib_client().await?;
        let mine = markers::steps_of_run(&**c, markers::DEFAULT_MARKER_SCHEMA, ctx.run_id())
            .await
            .map_err(|e| PgError::new("reading the run's step markers", &e).into_core(false))?;
        let applied: Vec<&Migration> = self
            .migrations
            .iter()
            .filter(|m| mine.contains(&m.id()))
            .collect();
        if applied.is_empty() {
            return Ok(());
        }
        let sql = self.ledger.restore_sql(&applied, self.before.as_deref());
        c.batch_execute(&sql).await.map_err(|e| {
            PgError::new(format!("{}: restoring the ledger", self.id), &e).into_core(false)
        })
    }
}

/// A [`SqlStep`] whose scan-derived answers (reversibility, effects, spec) are computed
/// once: building a plan asks them of every earlier step for every later one, and each
/// answer scans the SQL again.
#[derive(Debug)]
struct Scanned {
    inner: SqlStep,
    reversibility: Reversibility,
    touches: Vec<String>,
    effects: Vec<Effect>,
    spec: serde_json::Value,
    describe: String,
}

impl Scanned {
    fn new(inner: SqlStep) -> Self {
        Scanned {
            reversibility: inner.reversibility(),
            touches: inner.touches(),
            effects: inner.effects(),
            spec: inner.spec(),
            describe: inner.describe(),
            inner,
        }
    }
}

#[async_trait]
impl Step for Scanned {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn reversibility(&self) -> Reversibility {
        self.reversibility
    }
    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }
    fn effects(&self) -> Vec<Effect> {
        self.effects.clone()
    }
    fn spec(&self) -> serde_json::Value {
        self.spec.clone()
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    async fn apply(&self, ctx: &Context) -> rollback_core::Result<Receipt> {
        self.inner.apply(ctx).await
    }
    async fn revert(&self, r: Option<&Receipt>, ctx: &Context) -> rollback_core::Result<()> {
        self.inner.revert(r, ctx).await
    }
}
