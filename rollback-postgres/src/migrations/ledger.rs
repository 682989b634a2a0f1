//! Each tool's own history table: how it is created, read, and written in the step's
//! transaction.

use super::{Format, Migration};
use crate::ident::{quote_ident, quote_literal};

/// The ledger of one tool in one schema.
#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    pub format: Format,
    pub schema: String,
}

/// One applied row as the tool recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub version: String,
    /// sqlx: the SHA-384 it recorded.
    pub checksum: Option<Vec<u8>>,
    /// sqlx `success = false`, golang-migrate `dirty = true`.
    pub dirty: bool,
}

impl Ledger {
    pub(crate) fn table_name(&self) -> &'static str {
        match self.format {
            Format::Sqlx => "_sqlx_migrations",
            Format::GolangMigrate | Format::Dbmate => "schema_migrations",
            Format::Diesel => "__diesel_schema_migrations",
        }
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
        }
    }

    /// A query whose text columns are version, checksum (hex or NULL), dirty (`t`/`f`).
    pub(crate) fn read_sql(&self) -> String {
        let t = self.table();
        match self.format {
            Format::Sqlx => format!(
                "SELECT version::text, encode(checksum, 'hex'), (NOT success)::text FROM {t} ORDER BY version"
            ),
            Format::GolangMigrate => {
                format!("SELECT version::text, NULL::text, dirty::text FROM {t}")
            }
            Format::Dbmate | Format::Diesel => {
                format!("SELECT version::text, NULL::text, 'false' FROM {t} ORDER BY version")
            }
        }
    }

    /// SQL appended to `up`: record `m` as applied (in the step's transaction).
    pub(crate) fn record_sql(&self, m: &Migration, checksum: &[u8]) -> String {
        let t = self.table();
        let v = &m.version;
        match self.format {
            Format::Sqlx => format!(
                "INSERT INTO {t} (version, description, success, checksum, execution_time) VALUES \
                 ({v}, {}, TRUE, '\\x{}'::bytea, \
                 (EXTRACT(EPOCH FROM (clock_timestamp() - now())) * 1000000000)::bigint)",
                quote_literal(&m.name),
                hex(checksum)
            ),
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
            Format::Sqlx => format!("DELETE FROM {t} WHERE version = {}", m.version),
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
        match self.format {
            Format::Sqlx => format!(
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

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}
