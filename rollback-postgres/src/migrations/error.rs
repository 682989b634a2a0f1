//! [`MigrationError`]: why a folder cannot become a plan.

use rollback_core::PlanError;
use std::path::PathBuf;

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
    /// only when [`Migrations::approve_irreversible`](super::Migrations::approve_irreversible) names it.
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
    /// [`Migrations::ledger_schema`](super::Migrations::ledger_schema).
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
