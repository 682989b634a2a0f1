//! Each tool's own history table: how it is created, read, and written in the step's
//! transaction.

use super::sqitch::{self, Committer, Project};
use super::{Format, Migration};
use crate::ident::{quote_ident, quote_literal};

/// The ledger of one tool in one schema.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    pub format: Format,
    pub schema: String,
    /// sqitch: who deploys, and the plan's project.
    pub committer: Committer,
    pub project: Project,
}

/// One applied row as the tool recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub version: String,
    /// The checksum as the tool recorded it (text: sqlx's SHA-384 in hex, refinery's
    /// `u64`, Flyway's `i32`, sqitch's script hash).
    pub checksum: Option<String>,
    /// sqlx and Flyway `success = false`, golang-migrate `dirty = true`.
    pub dirty: bool,
}

impl Ledger {
    pub(crate) fn table_name(&self) -> &'static str {
        match self.format {
            Format::Sqlx => "_sqlx_migrations",
            Format::GolangMigrate | Format::Dbmate => "schema_migrations",
            Format::Diesel => "__diesel_schema_migrations",
            Format::Refinery => "refinery_schema_history",
            Format::Flyway => "flyway_schema_history",
            Format::Sqitch => "changes",
        }
    }

    /// The tables the ledger's rows live in (sqitch: the registry's changes, tags and
    /// dependencies; its `events` log only grows, as sqitch's own revert leaves it).
    pub(crate) fn tables(&self) -> Vec<crate::ident::Table> {
        let names: &[&str] = match self.format {
            Format::Sqitch => &["changes", "tags", "dependencies"],
            _ => &[self.table_name()],
        };
        names
            .iter()
            .map(|n| crate::ident::Table::new(&self.schema, *n))
            .collect()
    }

    pub(crate) fn table(&self) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(self.table_name())
        )
    }

    /// The tool's own `CREATE TABLE IF NOT EXISTS`.
    pub(crate) fn create_sql(&self) -> String {
        let t = self.table();
        match self.format {
            Format::Sqlx => format!(
                "CREATE TABLE IF NOT EXISTS {t} (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
                 installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, \
                 checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL)"
            ),
            Format::GolangMigrate => format!(
                "CREATE TABLE IF NOT EXISTS {t} (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
            ),
            Format::Dbmate => format!(
                "CREATE TABLE IF NOT EXISTS {t} (version character varying(128) NOT NULL PRIMARY KEY)"
            ),
            Format::Diesel => format!(
                "CREATE TABLE IF NOT EXISTS {t} (version VARCHAR(50) PRIMARY KEY NOT NULL, \
                 run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"
            ),
            Format::Refinery => format!(
                "CREATE TABLE IF NOT EXISTS {t}(version int4 PRIMARY KEY, name VARCHAR(255), \
                 applied_on VARCHAR(255), checksum VARCHAR(255))"
            ),
            Format::Flyway => format!(
                "CREATE TABLE IF NOT EXISTS {t} (installed_rank INT NOT NULL, version VARCHAR(50), \
                 description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL, \
                 script VARCHAR(1000) NOT NULL, checksum INTEGER, \
                 installed_by VARCHAR(100) NOT NULL, \
                 installed_on TIMESTAMP NOT NULL DEFAULT now(), \
                 execution_time INTEGER NOT NULL, success BOOLEAN NOT NULL, \
                 CONSTRAINT flyway_schema_history_pk PRIMARY KEY (installed_rank));\n\
                 CREATE INDEX IF NOT EXISTS flyway_schema_history_s_idx ON {t} (success)"
            ),
            Format::Sqitch => sqitch::create_sql(&self.schema, &self.project, &self.committer),
        }
    }

    /// Take the transaction-level advisory lock of this ledger: held by the runner that
    /// creates it and by each migration's transaction, so two runners never record one
    /// migration twice.
    pub(crate) fn lock_sql(&self) -> String {
        format!(
            "SELECT NULL::text FROM pg_catalog.pg_advisory_xact_lock(\
             pg_catalog.hashtext('rollback-postgres migrations ledger'), pg_catalog.hashtext({}))",
            quote_literal(&self.table())
        )
    }

    /// The same lock at session level (`lock`: take it; else release it), for a migration
    /// that runs outside a transaction.
    pub(crate) fn session_lock_sql(&self, lock: bool) -> String {
        format!(
            "SELECT pg_catalog.{}(pg_catalog.hashtext('rollback-postgres migrations ledger'), \
             pg_catalog.hashtext({}))",
            if lock {
                "pg_advisory_lock"
            } else {
                "pg_advisory_unlock"
            },
            quote_literal(&self.table())
        )
    }

    /// Run before `m`'s `up`, in its transaction: the ledger's lock, then (a statement of
    /// its own, so that it sees what a runner that held the lock committed) a row saying
    /// why `m` must not run when the ledger already records it (or, golang-migrate, a
    /// version at or after it, or a dirty one).
    pub(crate) fn guard_sql(&self, m: &Migration) -> String {
        let t = self.table();
        let applied = match self.format {
            Format::Sqlx | Format::Refinery => format!("version = {}", m.ledger_key),
            Format::GolangMigrate => format!("version >= {} OR dirty", m.ledger_key),
            Format::Dbmate | Format::Diesel => {
                format!("version = {}", quote_literal(&m.ledger_key))
            }
            Format::Flyway => format!(
                "version = {} AND type NOT LIKE 'UNDO%'",
                quote_literal(&m.version)
            ),
            Format::Sqitch => format!("change_id = {}", quote_literal(&m.ledger_key)),
        };
        let why = format!(
            "the {} ledger {t} already records version {} (another runner applied it after \
             this plan was made); nothing was run: plan again",
            self.format.tool(),
            m.version
        );
        format!(
            "{};\nSELECT {} WHERE EXISTS (SELECT 1 FROM {t} WHERE {applied})",
            self.lock_sql(),
            quote_literal(&why)
        )
    }

    /// A query whose text columns are version, checksum (hex or NULL), dirty (`t`/`f`).
    pub(crate) fn read_sql(&self) -> String {
        let t = self.table();
        match self.format {
            Format::Sqlx => format!(
                "SELECT version::text, encode(checksum, 'hex'), (NOT success)::text FROM {t} ORDER BY version"
            ),
            Format::Refinery => {
                format!("SELECT version::text, checksum, 'false' FROM {t} ORDER BY version")
            }
            // A version's last row decides: an undo row (Flyway Teams' `flyway undo`) means
            // it is no longer applied.
            Format::Flyway => format!(
                "SELECT version, checksum::text, (NOT success)::text FROM (\
                 SELECT DISTINCT ON (version) version, checksum, success, type FROM {t} \
                 WHERE version IS NOT NULL ORDER BY version, installed_rank DESC) last \
                 WHERE type NOT LIKE 'UNDO%'"
            ),
            Format::Sqitch => sqitch::read_sql(&self.schema, &self.project),
            Format::GolangMigrate => {
                format!("SELECT version::text, NULL::text, dirty::text FROM {t}")
            }
            Format::Dbmate | Format::Diesel => {
                format!("SELECT version::text, NULL::text, 'false' FROM {t} ORDER BY version")
            }
        }
    }

    /// SQL appended to `up`: record `m` as applied (in the step's transaction).
    pub(crate) fn record_sql(&self, m: &Migration) -> String {
        let t = self.table();
        let v = &m.version;
        let checksum = m.checksum.as_deref().unwrap_or_default();
        match self.format {
            Format::Sqlx => format!(
                "INSERT INTO {t} (version, description, success, checksum, execution_time) VALUES \
                 ({v}, {}, TRUE, '\\x{checksum}'::bytea, \
                 (EXTRACT(EPOCH FROM (clock_timestamp() - now())) * 1000000000)::bigint)",
                quote_literal(&m.name),
            ),
            // refinery writes `applied_on` as RFC 3339 text in UTC.
            Format::Refinery => format!(
                "INSERT INTO {t} (version, name, applied_on, checksum) VALUES ({v}, {}, \
                 to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), {})",
                quote_literal(&m.name),
                quote_literal(checksum)
            ),
            Format::Flyway => format!(
                "INSERT INTO {t} (installed_rank, version, description, type, script, checksum, \
                 installed_by, execution_time, success) SELECT \
                 COALESCE(MAX(installed_rank), 0) + 1, {}, {}, 'SQL', {}, {checksum}, current_user, \
                 (EXTRACT(EPOCH FROM (clock_timestamp() - now())) * 1000)::int, TRUE FROM {t}",
                quote_literal(v),
                quote_literal(&m.name),
                quote_literal(&m.script),
            ),
            Format::Sqitch => match &m.sqitch {
                Some(c) => sqitch::record_sql(&self.schema, c, m.checksum.as_deref(), &self.committer),
                None => String::new(),
            },
            Format::GolangMigrate => format!(
                "UPDATE {t} SET version = {v}, dirty = false;\n\
                 INSERT INTO {t} (version, dirty) SELECT {v}, false \
                 WHERE NOT EXISTS (SELECT 1 FROM {t})"
            ),
            Format::Dbmate | Format::Diesel => {
                format!("INSERT INTO {t} (version) VALUES ({})", quote_literal(v))
            }
        }
    }

    /// SQL appended to `down`: the ledger as the tool leaves it after reverting `m`
    /// (`previous`: the migration before it in the folder).
    pub(crate) fn erase_sql(&self, m: &Migration, previous: Option<&Migration>) -> String {
        let t = self.table();
        match self.format {
            Format::Sqlx | Format::Refinery => {
                format!("DELETE FROM {t} WHERE version = {}", m.version)
            }
            Format::Flyway => format!(
                "DELETE FROM {t} WHERE version = {} AND type = 'SQL'",
                quote_literal(&m.version)
            ),
            Format::Sqitch => match &m.sqitch {
                Some(c) => sqitch::erase_sql(&self.schema, c, &self.committer),
                None => String::new(),
            },
            Format::Dbmate | Format::Diesel => format!(
                "DELETE FROM {t} WHERE version = {}",
                quote_literal(&m.version)
            ),
            Format::GolangMigrate => match previous {
                Some(p) => format!(
                    "UPDATE {t} SET version = {}, dirty = false WHERE version = {}",
                    p.version, m.version
                ),
                None => format!("DELETE FROM {t} WHERE version = {}", m.version),
            },
        }
    }

    /// SQL that puts the ledger back as it was before a run applied `versions`
    /// (`before`: golang-migrate's version then).
    pub(crate) fn restore_sql(&self, versions: &[&Migration], before: Option<&str>) -> String {
        let t = self.table();
        if versions.is_empty() {
            return "SELECT 1".into();
        }
        match self.format {
            // Latest first, as the tool reverts.
            Format::Sqitch => {
                let changes: Vec<&sqitch::Change> = versions
                    .iter()
                    .filter_map(|m| m.sqitch.as_deref())
                    .collect();
                sqitch::erase_all_sql(&self.schema, &changes, &self.committer)
            }
            Format::Flyway => format!(
                "DELETE FROM {t} WHERE type = 'SQL' AND version IN ({})",
                versions
                    .iter()
                    .map(|m| quote_literal(&m.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Format::Sqlx | Format::Refinery => format!(
                "DELETE FROM {t} WHERE version IN ({})",
                versions
                    .iter()
                    .map(|m| m.version.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Format::Dbmate | Format::Diesel => format!(
                "DELETE FROM {t} WHERE version IN ({})",
                versions
                    .iter()
                    .map(|m| quote_literal(&m.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Format::GolangMigrate => match before {
                Some(b) => format!("UPDATE {t} SET version = {b}, dirty = false"),
                None => format!("DELETE FROM {t}"),
            },
        }
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
