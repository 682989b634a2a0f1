//! Opening the journal the command line names: a file journal folder or PostgreSQL.

use crate::{code, Cli, Failure};
use rollback_core::journal::{FileJournal, Journal, JournalError};

/// The journal of `--journal DIR` or `--pg URL` (or their environment variables).
pub(crate) fn open(cli: &Cli) -> Result<Box<dyn Journal>, Failure> {
    match (&cli.journal, &cli.pg) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                return Err(Failure::new(
                    code::JOURNAL,
                    format!("{} is not a journal folder", dir.display()),
                ));
            }
            Ok(Box::new(FileJournal::open(dir)?))
        }
        (None, Some(url)) => {
            // The URL may carry a password: errors name the journal, never repeat it.
            let db = rollback_postgres::Database::connect_with(url, 2).map_err(|e| {
                Failure::new(code::JOURNAL, format!("PostgreSQL journal: {e}"))
            })?;
            Ok(Box::new(
                rollback_postgres::PgJournal::new(&db).schema(cli.pg_schema.clone()),
            ))
        }
        (None, None) => Err(Failure::new(
            code::USAGE,
            "no journal: give --journal DIR or --pg URL (or set ROLLBACK_JOURNAL / ROLLBACK_PG_URL)",
        )),
    }
}

/// Whether a journal error says the journal's content is damaged (as opposed to
/// unreachable): `verify`'s business.
pub(crate) fn is_damage(e: &JournalError) -> bool {
    matches!(
        e,
        JournalError::Tampered { .. }
            | JournalError::OutOfOrder { .. }
            | JournalError::Malformed { .. }
            | JournalError::EpochRegressed { .. }
            | JournalError::TailLost { .. }
    )
}
