//! The catalog model: tables (columns, constraints, indexes, triggers, owned sequences),
//! sequences, views, functions and enum types of some schemas, as serializable values
//! with blake3 fingerprints. Read from the server's catalog in [`read`]; compared, with a
//! readable diff, in [`diff`].

mod diff;
mod read;

pub(crate) use diff::diff_tables;
pub use diff::{Change, SchemaChange};
pub(crate) use read::{order_key, schema_model, table_model, table_model_by_oid, table_oid};

use crate::ident::{quote_ident, quote_literal, Table};
use rollback_core::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnModel {
    /// Column name.
    pub name: String,
    /// Type as `format_type` prints it, e.g. `character varying(20)`.
    pub data_type: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Default expression (`pg_get_expr`), if any.
    pub default: Option<String>,
    /// `s` for a stored generated column, empty otherwise.
    pub generated: String,
    /// `a` (always) / `d` (by default) for identity columns, empty otherwise.
    pub identity: String,
    /// The collation when it differs from the type's default.
    pub collation: Option<String>,
    /// `COMMENT ON COLUMN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Column privileges (`attacl` as text; None: none granted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<String>,
    /// `SET STATISTICS` target (None: the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<i32>,
    /// `SET STORAGE` (`p`, `e`, `m`, `x`) when it differs from the type's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// `SET COMPRESSION` (`p` pglz, `l` lz4; None: the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Attribute options (`SET (n_distinct = …)`), as `name=value` (options a server
    /// manages itself, named `pg_…`, are left out: pg_dump does not emit them either).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A constraint (primary key, unique, check, foreign key, exclusion).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstraintModel {
    /// Name.
    pub name: String,
    /// `p`, `u`, `c`, `f`, `x`, `t`.
    pub kind: String,
    /// `pg_get_constraintdef`.
    pub definition: String,
    /// Whether it is validated (`false` for `NOT VALID`).
    pub validated: bool,
    /// `COMMENT ON CONSTRAINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// An index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexModel {
    /// Name.
    pub name: String,
    /// `pg_get_indexdef`.
    pub definition: String,
    /// Whether it backs a constraint (primary key, unique, exclusion).
    pub constraint: bool,
    /// Whether it is valid (an interrupted `CREATE INDEX CONCURRENTLY` leaves it invalid).
    pub valid: bool,
    /// `COMMENT ON INDEX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Whether the table is clustered on it (`CLUSTER ON`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clustered: bool,
    /// Whether it is the table's replica identity (`REPLICA IDENTITY USING INDEX`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replica_identity: bool,
    /// Its tablespace, when not the database's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace: Option<String>,
    /// Per-column statistics targets (`ALTER INDEX … ALTER COLUMN n SET STATISTICS`), as
    /// `column number=target`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statistics: Vec<String>,
}

impl ConstraintModel {
    /// The definition without a trailing `NOT VALID` (which `pg_get_constraintdef` adds).
    pub(crate) fn body(&self) -> &str {
        self.definition
            .strip_suffix(" NOT VALID")
            .unwrap_or(&self.definition)
    }
}

/// A (non-internal) trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerModel {
    /// Name.
    pub name: String,
    /// `pg_get_triggerdef`.
    pub definition: String,
    /// `O` (origin, the default), `D` (disabled), `R` (replica), `A` (always).
    pub enabled: String,
    /// `COMMENT ON TRIGGER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A rule on a table (`CREATE RULE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleModel {
    /// Name.
    pub name: String,
    /// `pg_get_ruledef`.
    pub definition: String,
    /// `O`, `D`, `R`, `A`, as for triggers.
    pub enabled: String,
    /// `COMMENT ON RULE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A row-level security policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyModel {
    /// Name.
    pub name: String,
    /// `PERMISSIVE` (true) or `RESTRICTIVE`.
    pub permissive: bool,
    /// `ALL`, `SELECT`, `INSERT`, `UPDATE` or `DELETE`.
    pub command: String,
    /// Roles it applies to (`PUBLIC` for everyone), sorted.
    pub roles: Vec<String>,
    /// The `USING` expression.
    pub using: Option<String>,
    /// The `WITH CHECK` expression.
    pub with_check: Option<String>,
    /// `COMMENT ON POLICY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// An extended statistics object on a table (`CREATE STATISTICS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatisticsModel {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `pg_get_statisticsobjdef`.
    pub definition: String,
    /// `ALTER STATISTICS … SET STATISTICS` target (None: the default).
    pub target: Option<i32>,
    /// Owner role.
    pub owner: String,
    /// `COMMENT ON STATISTICS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A publication the table is explicitly a member of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationModel {
    /// Publication name.
    pub name: String,
    /// The published columns (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// The row filter (`WHERE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_filter: Option<String>,
}

/// A security label on a table or one of its columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityLabelModel {
    /// The column (None: the table).
    pub column: Option<String>,
    /// The label provider.
    pub provider: String,
    /// The label.
    pub label: String,
}

/// A sequence, with its current value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceModel {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `bigint`, `integer`, `smallint`.
    pub data_type: String,
    /// Start value.
    pub start: i64,
    /// Increment.
    pub increment: i64,
    /// Minimum.
    pub min: i64,
    /// Maximum.
    pub max: i64,
    /// Cache size.
    pub cache: i64,
    /// Whether it cycles.
    pub cycle: bool,
    /// `table.column` owning it, if any.
    pub owned_by: Option<String>,
    /// Current `last_value`.
    pub last_value: i64,
    /// Current `is_called`.
    pub is_called: bool,
}

impl SequenceModel {
    pub(crate) fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `CREATE SEQUENCE` reproducing this sequence (without ownership and value).
    pub(crate) fn create_sql(&self) -> String {
        format!(
            "CREATE SEQUENCE {} AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}",
            self.quoted(),
            self.data_type,
            self.increment,
            self.min,
            self.max,
            self.start,
            self.cache,
            if self.cycle { "CYCLE" } else { "NO CYCLE" }
        )
    }

    pub(crate) fn setval_sql(&self) -> String {
        format!(
            "SELECT pg_catalog.setval({}::regclass, {}, {})",
            quote_literal(&self.quoted()),
            self.last_value,
            self.is_called
        )
    }
}

/// One table's definition (and its owned sequences with their values): everything
/// `pg_dump --schema-only` emits for the table — columns with their comments, privileges,
/// statistics targets, storage, compression and options; constraints, indexes (clustering,
/// replica identity, tablespace, statistics), triggers, rules and policies with their
/// comments; owner, privileges, storage parameters, replica identity, row-level security,
/// tablespace, access method, typed-table and partitioning clauses, inheritance — plus
/// extended statistics, publication membership and security labels, so that a
/// fingerprint over it cannot match while any of them differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableModel {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `relkind`: `r` table, `p` partitioned table.
    pub kind: String,
    /// `p` permanent, `u` unlogged.
    pub persistence: String,
    /// Owner role.
    pub owner: String,
    /// `relacl` as text (None: default privileges).
    pub acl: Option<String>,
    /// Storage parameters, in the order they are stored (pg_dump prints them so), then
    /// those of its TOAST table prefixed `toast.`.
    pub reloptions: Vec<String>,
    /// Replica identity: `d`, `n`, `f`, `i`.
    pub replica_identity: String,
    /// Row-level security enabled / forced.
    pub rls: (bool, bool),
    /// Columns in order.
    pub columns: Vec<ColumnModel>,
    /// Constraints, by name.
    pub constraints: Vec<ConstraintModel>,
    /// Indexes, by name.
    pub indexes: Vec<IndexModel>,
    /// Triggers, by name.
    pub triggers: Vec<TriggerModel>,
    /// Sequences owned by its columns (serial and identity), by name.
    pub sequences: Vec<SequenceModel>,
    /// `COMMENT ON TABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Its tablespace, when not the database's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace: Option<String>,
    /// Its table access method, when not `heap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_method: Option<String>,
    /// `OF type`, for a typed table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_type: Option<String>,
    /// `INHERITS` parents (and the partitioned table of a partition), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// `PARTITION BY`, for a partitioned table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// `FOR VALUES …`, for a partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_bound: Option<String>,
    /// Rules, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleModel>,
    /// Row-level security policies, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyModel>,
    /// Extended statistics objects, by schema and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statistics: Vec<StatisticsModel>,
    /// Publications it is explicitly a member of, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<PublicationModel>,
    /// Security labels on it and its columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_labels: Vec<SecurityLabelModel>,
}

impl TableModel {
    /// The table.
    pub fn table(&self) -> Table {
        Table::new(&self.schema, &self.name)
    }

    /// blake3 of the canonical JSON.
    pub fn digest(&self) -> Digest {
        Digest::of_json(self)
    }

    /// This model without the current sequence values (the structure alone).
    pub fn structure(&self) -> TableModel {
        let mut m = self.clone();
        for s in &mut m.sequences {
            s.last_value = 0;
            s.is_called = false;
        }
        m
    }

    /// The table's shape — columns, constraints, indexes, triggers, owned sequences,
    /// partitioning — without sequence values and without what a restore can put back
    /// with DDL alone (owner, privileges, comments, storage parameters, statistics
    /// targets, clustering, rules, policies, extended statistics, publications, security
    /// labels…: see `reconcile::table_properties`).
    pub(crate) fn shape(&self) -> TableModel {
        let mut m = self.structure();
        m.owner.clear();
        m.acl = None;
        m.reloptions.clear();
        m.replica_identity.clear();
        m.rls = (false, false);
        m.comment = None;
        m.tablespace = None;
        m.rules.clear();
        m.policies.clear();
        m.statistics.clear();
        m.publications.clear();
        m.security_labels.clear();
        for c in &mut m.columns {
            c.comment = None;
            c.acl = None;
            c.statistics = None;
            c.storage = None;
            c.compression = None;
            c.options.clear();
        }
        for k in &mut m.constraints {
            k.comment = None;
        }
        for i in &mut m.indexes {
            i.comment = None;
            i.clustered = false;
            i.replica_identity = false;
            i.tablespace = None;
            i.statistics.clear();
        }
        for t in &mut m.triggers {
            t.comment = None;
        }
        m
    }

    /// The column names in order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// Columns an `INSERT` may write (not generated).
    pub fn insertable_columns(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| c.generated.is_empty())
            .map(|c| c.name.clone())
            .collect()
    }

    /// Primary key columns, in key order, when known from the constraint definition.
    pub fn primary_key(&self) -> Option<&ConstraintModel> {
        self.constraints.iter().find(|c| c.kind == "p")
    }
}

/// A view or materialized view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewModel {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Materialized.
    pub materialized: bool,
    /// `pg_get_viewdef`.
    pub definition: String,
}

/// A function or procedure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionModel {
    /// Schema.
    pub schema: String,
    /// Name with argument types, e.g. `touch(integer)`.
    pub signature: String,
    /// `pg_get_functiondef`.
    pub definition: String,
}

impl FunctionModel {
    /// `name(args)` with the name quoted, for `DROP ROUTINE`.
    pub(crate) fn signature_sql(&self) -> String {
        match self.signature.split_once('(') {
            Some((name, args)) => format!("{}({args}", quote_ident(name)),
            None => quote_ident(&self.signature),
        }
    }
}

/// An enum type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnumModel {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Labels in order.
    pub labels: Vec<String>,
}

/// The catalog of some schemas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SchemaModel {
    /// The schemas covered (only those that exist).
    pub schemas: Vec<String>,
    /// Tables, by `schema.name`.
    pub tables: BTreeMap<String, TableModel>,
    /// Sequences not owned by a table column, by `schema.name`.
    pub sequences: BTreeMap<String, SequenceModel>,
    /// Views, by `schema.name`.
    pub views: BTreeMap<String, ViewModel>,
    /// Functions, by `schema.signature`.
    pub functions: BTreeMap<String, FunctionModel>,
    /// Enum types, by `schema.name`.
    pub enums: BTreeMap<String, EnumModel>,
}

impl SchemaModel {
    /// blake3 of the canonical JSON (every map is sorted).
    pub fn fingerprint(&self) -> Digest {
        Digest::of_json(self)
    }
}
