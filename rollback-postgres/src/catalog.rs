//! The catalog model: tables (columns, constraints, indexes, triggers, owned sequences),
//! sequences, views, functions and enum types of some schemas, as serializable values
//! with blake3 fingerprints and a readable diff.

use crate::error::PgResultExt;
use crate::ident::{quote_ident, quote_literal, Table};
use rollback_core::{Digest, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use tokio_postgres::GenericClient;

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

    /// The differences that turn `self` into `other`, in a stable order.
    pub fn diff(&self, other: &SchemaModel) -> Vec<SchemaChange> {
        let mut out = Vec::new();
        for s in &other.schemas {
            if !self.schemas.contains(s) {
                out.push(SchemaChange::new("schema", s, Change::Added, None));
            }
        }
        for s in &self.schemas {
            if !other.schemas.contains(s) {
                out.push(SchemaChange::new("schema", s, Change::Removed, None));
            }
        }
        diff_maps(
            &mut out,
            "table",
            &self.tables,
            &other.tables,
            |out, k, a, b| out.extend(diff_tables(k, a, b)),
        );
        diff_maps(
            &mut out,
            "sequence",
            &self.sequences,
            &other.sequences,
            |out, k, a, b| {
                if a != b {
                    out.push(SchemaChange::new(
                        "sequence",
                        k,
                        Change::Modified,
                        Some(sequence_detail(a, b)),
                    ))
                }
            },
        );
        diff_maps(
            &mut out,
            "view",
            &self.views,
            &other.views,
            |out, k, a, b| {
                if a != b {
                    out.push(SchemaChange::new(
                        "view",
                        k,
                        Change::Modified,
                        Some("definition changed".into()),
                    ))
                }
            },
        );
        diff_maps(
            &mut out,
            "function",
            &self.functions,
            &other.functions,
            |out, k, a, b| {
                if a != b {
                    out.push(SchemaChange::new(
                        "function",
                        k,
                        Change::Modified,
                        Some("definition changed".into()),
                    ))
                }
            },
        );
        diff_maps(
            &mut out,
            "enum",
            &self.enums,
            &other.enums,
            |out, k, a, b| {
                if a != b {
                    out.push(SchemaChange::new(
                        "enum",
                        k,
                        Change::Modified,
                        Some(format!("labels {:?} -> {:?}", a.labels, b.labels)),
                    ))
                }
            },
        );
        out
    }
}

fn sequence_detail(a: &SequenceModel, b: &SequenceModel) -> String {
    if a.structure_eq(b) {
        format!(
            "value {}{} -> {}{}",
            a.last_value,
            if a.is_called { "" } else { " (not called)" },
            b.last_value,
            if b.is_called { "" } else { " (not called)" }
        )
    } else {
        "definition changed".into()
    }
}

impl SequenceModel {
    fn structure_eq(&self, b: &SequenceModel) -> bool {
        let mut x = self.clone();
        x.last_value = b.last_value;
        x.is_called = b.is_called;
        &x == b
    }
}

fn diff_maps<T: PartialEq>(
    out: &mut Vec<SchemaChange>,
    kind: &'static str,
    a: &BTreeMap<String, T>,
    b: &BTreeMap<String, T>,
    modified: impl Fn(&mut Vec<SchemaChange>, &str, &T, &T),
) {
    for (k, va) in a {
        match b.get(k) {
            None => out.push(SchemaChange::new(kind, k, Change::Removed, None)),
            Some(vb) => modified(out, k, va, vb),
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(SchemaChange::new(kind, k, Change::Added, None));
        }
    }
}

/// The differences between two definitions of one table (`name` labels them).
pub(crate) fn diff_tables(name: &str, a: &TableModel, b: &TableModel) -> Vec<SchemaChange> {
    let mut out = Vec::new();
    let mut push = |kind: &'static str, obj: String, change: Change, detail: Option<String>| {
        out.push(SchemaChange::new(kind, &obj, change, detail))
    };
    let cols_a: BTreeMap<&str, &ColumnModel> =
        a.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let cols_b: BTreeMap<&str, &ColumnModel> =
        b.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    for (n, ca) in &cols_a {
        match cols_b.get(n) {
            None => push(
                "column",
                format!("{name}.{n}"),
                Change::Removed,
                Some(ca.data_type.clone()),
            ),
            Some(cb) if ca != cb => {
                let mut what = Vec::new();
                if ca.data_type != cb.data_type {
                    what.push(format!("type {} -> {}", ca.data_type, cb.data_type));
                }
                if ca.not_null != cb.not_null {
                    what.push(if cb.not_null {
                        "NOT NULL added".to_string()
                    } else {
                        "NOT NULL dropped".to_string()
                    });
                }
                if ca.default != cb.default {
                    what.push(format!("default {:?} -> {:?}", ca.default, cb.default));
                }
                if ca.generated != cb.generated || ca.identity != cb.identity {
                    what.push("generated/identity changed".into());
                }
                if ca.collation != cb.collation {
                    what.push(format!(
                        "collation {:?} -> {:?}",
                        ca.collation, cb.collation
                    ));
                }
                if ca.comment != cb.comment {
                    what.push(format!("comment {:?} -> {:?}", ca.comment, cb.comment));
                }
                if ca.acl != cb.acl {
                    what.push(format!("privileges {:?} -> {:?}", ca.acl, cb.acl));
                }
                if ca.statistics != cb.statistics {
                    what.push(format!(
                        "statistics {:?} -> {:?}",
                        ca.statistics, cb.statistics
                    ));
                }
                if ca.storage != cb.storage || ca.compression != cb.compression {
                    what.push(format!(
                        "storage/compression {:?}/{:?} -> {:?}/{:?}",
                        ca.storage, ca.compression, cb.storage, cb.compression
                    ));
                }
                if ca.options != cb.options {
                    what.push(format!("options {:?} -> {:?}", ca.options, cb.options));
                }
                push(
                    "column",
                    format!("{name}.{n}"),
                    Change::Modified,
                    Some(what.join(", ")),
                )
            }
            _ => {}
        }
    }
    for (n, cb) in &cols_b {
        if !cols_a.contains_key(n) {
            push(
                "column",
                format!("{name}.{n}"),
                Change::Added,
                Some(cb.data_type.clone()),
            );
        }
    }
    if a.column_names() != b.column_names()
        && cols_a.keys().collect::<Vec<_>>() == cols_b.keys().collect::<Vec<_>>()
    {
        push(
            "columns",
            name.to_string(),
            Change::Modified,
            Some("order changed".into()),
        );
    }
    let named = |out: &mut Vec<SchemaChange>,
                 kind: &'static str,
                 xa: Vec<(String, String)>,
                 xb: Vec<(String, String)>| {
        let ma: BTreeMap<String, String> = xa.into_iter().collect();
        let mb: BTreeMap<String, String> = xb.into_iter().collect();
        for (n, da) in &ma {
            match mb.get(n) {
                None => out.push(SchemaChange::new(
                    kind,
                    &format!("{name}.{n}"),
                    Change::Removed,
                    Some(da.clone()),
                )),
                Some(db) if db != da => out.push(SchemaChange::new(
                    kind,
                    &format!("{name}.{n}"),
                    Change::Modified,
                    Some(format!("{da} -> {db}")),
                )),
                _ => {}
            }
        }
        for (n, db) in &mb {
            if !ma.contains_key(n) {
                out.push(SchemaChange::new(
                    kind,
                    &format!("{name}.{n}"),
                    Change::Added,
                    Some(db.clone()),
                ));
            }
        }
    };
    let with_comment = |d: String, c: &Option<String>| match c {
        Some(c) => format!("{d} [comment {c:?}]"),
        None => d,
    };
    let cons = |m: &TableModel| -> Vec<(String, String)> {
        m.constraints
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    with_comment(c.definition.clone(), &c.comment),
                )
            })
            .collect()
    };
    named(&mut out, "constraint", cons(a), cons(b));
    let idx = |m: &TableModel| -> Vec<(String, String)> {
        m.indexes
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    with_comment(
                        format!(
                            "{}{}{}{}{}{}",
                            i.definition,
                            if i.valid { "" } else { " (INVALID)" },
                            if i.clustered { " (CLUSTER ON)" } else { "" },
                            if i.replica_identity {
                                " (REPLICA IDENTITY)"
                            } else {
                                ""
                            },
                            i.tablespace
                                .as_ref()
                                .map(|t| format!(" (TABLESPACE {t})"))
                                .unwrap_or_default(),
                            if i.statistics.is_empty() {
                                String::new()
                            } else {
                                format!(" (STATISTICS {})", i.statistics.join(", "))
                            }
                        ),
                        &i.comment,
                    ),
                )
            })
            .collect()
    };
    named(&mut out, "index", idx(a), idx(b));
    let trg = |m: &TableModel| -> Vec<(String, String)> {
        m.triggers
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    with_comment(format!("{} [{}]", t.definition, t.enabled), &t.comment),
                )
            })
            .collect()
    };
    named(&mut out, "trigger", trg(a), trg(b));
    let rules = |m: &TableModel| -> Vec<(String, String)> {
        m.rules
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    with_comment(format!("{} [{}]", r.definition, r.enabled), &r.comment),
                )
            })
            .collect()
    };
    named(&mut out, "rule", rules(a), rules(b));
    let policies = |m: &TableModel| -> Vec<(String, String)> {
        m.policies
            .iter()
            .map(|p| (p.name.clone(), format!("{p:?}")))
            .collect()
    };
    named(&mut out, "policy", policies(a), policies(b));
    let stats = |m: &TableModel| -> Vec<(String, String)> {
        m.statistics
            .iter()
            .map(|x| (format!("{}.{}", x.schema, x.name), format!("{x:?}")))
            .collect()
    };
    named(&mut out, "statistics", stats(a), stats(b));
    let pubs = |m: &TableModel| -> Vec<(String, String)> {
        m.publications
            .iter()
            .map(|x| (x.name.clone(), format!("{x:?}")))
            .collect()
    };
    named(&mut out, "publication", pubs(a), pubs(b));
    let seqs = |m: &TableModel| -> BTreeMap<String, SequenceModel> {
        m.sequences
            .iter()
            .map(|s| (format!("{}.{}", s.schema, s.name), s.clone()))
            .collect()
    };
    let (sa, sb) = (seqs(a), seqs(b));
    for (k, x) in &sa {
        match sb.get(k) {
            None => out.push(SchemaChange::new("sequence", k, Change::Removed, None)),
            Some(y) if x != y => out.push(SchemaChange::new(
                "sequence",
                k,
                Change::Modified,
                Some(sequence_detail(x, y)),
            )),
            _ => {}
        }
    }
    for k in sb.keys() {
        if !sa.contains_key(k) {
            out.push(SchemaChange::new("sequence", k, Change::Added, None));
        }
    }
    let props = [
        ("kind", a.kind.clone(), b.kind.clone()),
        ("persistence", a.persistence.clone(), b.persistence.clone()),
        ("owner", a.owner.clone(), b.owner.clone()),
        ("privileges", format!("{:?}", a.acl), format!("{:?}", b.acl)),
        (
            "storage parameters",
            format!("{:?}", a.reloptions),
            format!("{:?}", b.reloptions),
        ),
        (
            "replica identity",
            a.replica_identity.clone(),
            b.replica_identity.clone(),
        ),
        (
            "row level security",
            format!("{:?}", a.rls),
            format!("{:?}", b.rls),
        ),
        (
            "comment",
            format!("{:?}", a.comment),
            format!("{:?}", b.comment),
        ),
        (
            "tablespace",
            format!("{:?}", a.tablespace),
            format!("{:?}", b.tablespace),
        ),
        (
            "access method",
            format!("{:?}", a.access_method),
            format!("{:?}", b.access_method),
        ),
        (
            "type, inheritance and partitioning",
            format!(
                "{:?} {:?} {:?} {:?}",
                a.of_type, a.parents, a.partition_key, a.partition_bound
            ),
            format!(
                "{:?} {:?} {:?} {:?}",
                b.of_type, b.parents, b.partition_key, b.partition_bound
            ),
        ),
        (
            "security labels",
            format!("{:?}", a.security_labels),
            format!("{:?}", b.security_labels),
        ),
    ];
    for (what, x, y) in props {
        if x != y {
            out.push(SchemaChange::new(
                "table",
                name,
                Change::Modified,
                Some(format!("{what} {x} -> {y}")),
            ));
        }
    }
    out
}

/// Added, removed or modified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Present only in the second model.
    Added,
    /// Present only in the first model.
    Removed,
    /// Present in both, different.
    Modified,
}

/// One difference between two catalog models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaChange {
    /// `table`, `column`, `index`, `constraint`, `trigger`, `sequence`, `view`,
    /// `function`, `enum`, `schema`.
    pub object: String,
    /// Qualified name, e.g. `public.accounts.email`.
    pub name: String,
    /// What happened to it.
    pub change: Change,
    /// Details (types, definitions, values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl SchemaChange {
    fn new(object: &str, name: &str, change: Change, detail: Option<String>) -> Self {
        SchemaChange {
            object: object.into(),
            name: name.into(),
            change,
            detail,
        }
    }
}

impl fmt::Display for SchemaChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.change {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
        };
        write!(f, "{} {} {c}", self.object, self.name)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

/// The OID of a table (`None` when it does not exist).
pub(crate) async fn table_oid<C: GenericClient>(c: &C, t: &Table) -> Result<Option<u32>> {
    let row = c
        .query_opt(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&t.schema, &t.name],
        )
        .await
        .ctx("looking up table")?;
    Ok(row.map(|r| r.get::<_, u32>(0)))
}

/// The model of a table, `None` when it does not exist.
pub(crate) async fn table_model<C: GenericClient>(c: &C, t: &Table) -> Result<Option<TableModel>> {
    let Some(oid) = table_oid(c, t).await? else {
        return Ok(None);
    };
    table_model_by_oid(c, oid).await.map(Some)
}

pub(crate) async fn table_model_by_oid<C: GenericClient>(c: &C, oid: u32) -> Result<TableModel> {
    let r = c
        .query_one(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text, \
                    pg_catalog.pg_get_userbyid(c.relowner)::text, \
                    CASE WHEN c.relacl = pg_catalog.acldefault('r', c.relowner) THEN NULL ELSE c.relacl::text END, \
                    coalesce(c.reloptions, '{}')::text[] \
                      || array(SELECT 'toast.' || o FROM pg_catalog.pg_class tc, unnest(tc.reloptions) WITH ORDINALITY x(o, n) \
                               WHERE tc.oid = c.reltoastrelid ORDER BY x.n), \
                    c.relreplident::text, \
                    c.relrowsecurity, c.relforcerowsecurity, \
                    pg_catalog.obj_description(c.oid, 'pg_class'), \
                    (SELECT spcname::text FROM pg_catalog.pg_tablespace WHERE oid = c.reltablespace), \
                    (SELECT amname::text FROM pg_catalog.pg_am WHERE oid = c.relam AND amname <> 'heap'), \
                    CASE WHEN c.reloftype <> 0 THEN pg_catalog.format_type(c.reloftype, NULL) END, \
                    array(SELECT i.inhparent::regclass::text FROM pg_catalog.pg_inherits i \
                          WHERE i.inhrelid = c.oid ORDER BY i.inhseqno), \
                    CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END, \
                    CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END, \
                    pg_catalog.current_setting('server_version_num')::int4 \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .ctx("reading table definition")?;
    let mut m = TableModel {
        schema: r.get(0),
        name: r.get(1),
        kind: r.get(2),
        persistence: r.get(3),
        owner: r.get(4),
        acl: r.get(5),
        reloptions: r.get(6),
        replica_identity: r.get(7),
        rls: (r.get(8), r.get(9)),
        columns: vec![],
        constraints: vec![],
        indexes: vec![],
        triggers: vec![],
        sequences: vec![],
        comment: r.get(10),
        tablespace: r.get(11),
        access_method: r.get(12),
        of_type: r.get(13),
        parents: r.get(14),
        partition_key: r.get(15),
        partition_bound: r.get(16),
        rules: vec![],
        policies: vec![],
        statistics: vec![],
        publications: vec![],
        security_labels: vec![],
    };
    let server_version: i32 = r.get(17);
    for r in c
        .query(
            &format!(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text, a.attidentity::text, \
                    CASE WHEN a.attcollation <> t.typcollation THEN co.collname::text END, \
                    pg_catalog.col_description(a.attrelid, a.attnum), a.attacl::text, \
                    CASE WHEN a.attstattarget >= 0 THEN a.attstattarget::int4 END, \
                    CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage::text END, \
                    {compression}, \
                    array(SELECT o FROM unnest(a.attoptions) o WHERE o NOT LIKE 'pg\\_%') \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            compression = if server_version >= 140000 {
                "NULLIF(a.attcompression::text, '')"
            } else {
                "NULL::text"
            }),
            &[&oid],
        )
        .await
        .ctx("reading columns")?
    {
        let generated: String = r.get(4);
        m.columns.push(ColumnModel {
            name: r.get(0),
            data_type: r.get(1),
            not_null: r.get(2),
            // A generated column's expression is its definition, not a default.
            default: r.get(3),
            generated,
            identity: r.get(5),
            collation: r.get(6),
            comment: r.get(7),
            acl: r.get(8),
            statistics: r.get(9),
            storage: r.get(10),
            compression: r.get(11),
            options: r.get(12),
        });
    }
    for r in c
        .query(
            "SELECT conname::text, contype::text, pg_catalog.pg_get_constraintdef(oid), convalidated, \
                    pg_catalog.obj_description(oid, 'pg_constraint') \
             FROM pg_catalog.pg_constraint WHERE conrelid = $1 ORDER BY conname, contype",
            &[&oid],
        )
        .await
        .ctx("reading constraints")?
    {
        m.constraints.push(ConstraintModel {
            name: r.get(0),
            kind: r.get(1),
            definition: r.get(2),
            validated: r.get(3),
            comment: r.get(4),
        });
    }
    for r in c
        .query(
            "SELECT ic.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid), \
                    i.indisvalid, pg_catalog.obj_description(i.indexrelid, 'pg_class'), i.indisclustered, \
                    i.indisreplident, \
                    (SELECT spcname::text FROM pg_catalog.pg_tablespace WHERE oid = ic.reltablespace), \
                    array(SELECT a.attnum || '=' || a.attstattarget FROM pg_catalog.pg_attribute a \
                          WHERE a.attrelid = i.indexrelid AND a.attstattarget >= 0 ORDER BY a.attnum) \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = $1 ORDER BY ic.relname",
            &[&oid],
        )
        .await
        .ctx("reading indexes")?
    {
        m.indexes.push(IndexModel {
            name: r.get(0),
            definition: r.get(1),
            constraint: r.get(2),
            valid: r.get(3),
            comment: r.get(4),
            clustered: r.get(5),
            replica_identity: r.get(6),
            tablespace: r.get(7),
            statistics: r.get(8),
        });
    }
    for r in c
        .query(
            "SELECT tgname::text, pg_catalog.pg_get_triggerdef(oid), tgenabled::text, \
                    pg_catalog.obj_description(oid, 'pg_trigger') \
             FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY tgname",
            &[&oid],
        )
        .await
        .ctx("reading triggers")?
    {
        m.triggers.push(TriggerModel {
            name: r.get(0),
            definition: r.get(1),
            enabled: r.get(2),
            comment: r.get(3),
        });
    }
    // Rules, policies, extended statistics, publications and security labels, in one
    // round trip (most tables have none).
    let (attrs, qual) = if server_version >= 150000 {
        (
            "CASE WHEN pr.prattrs IS NULL THEN '[]'::jsonb ELSE to_jsonb(array(SELECT a.attname::text \
               FROM unnest(pr.prattrs::int2[]) WITH ORDINALITY x(n, o) JOIN pg_catalog.pg_attribute a \
               ON a.attrelid = pr.prrelid AND a.attnum = x.n ORDER BY x.o)) END",
            "pg_catalog.pg_get_expr(pr.prqual, pr.prrelid)",
        )
    } else {
        ("'[]'::jsonb", "NULL::text")
    };
    let extras = c
        .query_one(
            &format!(
                "SELECT \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('name', r.rulename::text, \
                        'definition', pg_catalog.pg_get_ruledef(r.oid), 'enabled', r.ev_enabled::text, \
                        'comment', pg_catalog.obj_description(r.oid, 'pg_rewrite')) ORDER BY r.rulename), '[]') \
                   FROM pg_catalog.pg_rewrite r WHERE r.ev_class = $1 AND r.rulename <> '_RETURN')::text, \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('name', p.polname::text, 'permissive', p.polpermissive, \
                        'command', CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' \
                                                 WHEN 'd' THEN 'DELETE' ELSE 'ALL' END, \
                        'roles', to_jsonb(array(SELECT CASE WHEN x.r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(x.r)::text END \
                                                FROM unnest(p.polroles) x(r) ORDER BY 1)), \
                        'using', pg_catalog.pg_get_expr(p.polqual, p.polrelid), \
                        'with_check', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), \
                        'comment', pg_catalog.obj_description(p.oid, 'pg_policy')) ORDER BY p.polname), '[]') \
                   FROM pg_catalog.pg_policy p WHERE p.polrelid = $1)::text, \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('schema', n.nspname::text, 'name', s.stxname::text, \
                        'definition', pg_catalog.pg_get_statisticsobjdef(s.oid), \
                        'target', CASE WHEN s.stxstattarget >= 0 THEN s.stxstattarget::int4 END, \
                        'owner', pg_catalog.pg_get_userbyid(s.stxowner)::text, \
                        'comment', pg_catalog.obj_description(s.oid, 'pg_statistic_ext')) ORDER BY n.nspname, s.stxname), '[]') \
                   FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace \
                   WHERE s.stxrelid = $1)::text, \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('name', pb.pubname::text, 'columns', {attrs}, \
                        'row_filter', {qual}) ORDER BY pb.pubname), '[]') \
                   FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication pb ON pb.oid = pr.prpubid \
                   WHERE pr.prrelid = $1)::text, \
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('column', a.attname::text, 'provider', l.provider, \
                        'label', l.label) ORDER BY l.objsubid, l.provider), '[]') \
                   FROM pg_catalog.pg_seclabel l LEFT JOIN pg_catalog.pg_attribute a \
                     ON a.attrelid = l.objoid AND a.attnum = l.objsubid AND l.objsubid <> 0 \
                   WHERE l.classoid = 'pg_catalog.pg_class'::regclass AND l.objoid = $1)::text"
            ),
            &[&oid],
        )
        .await
        .ctx("reading rules, policies, statistics, publications and security labels")?;
    fn parse<T: serde::de::DeserializeOwned>(
        row: &tokio_postgres::Row,
        i: usize,
        what: &str,
    ) -> Result<T> {
        serde_json::from_str(&row.get::<_, String>(i))
            .map_err(|e| crate::error::backend_msg(format!("reading {what}: {e}")))
    }
    m.rules = parse(&extras, 0, "rules")?;
    m.policies = parse(&extras, 1, "policies")?;
    m.statistics = parse(&extras, 2, "statistics")?;
    m.publications = parse(&extras, 3, "publications")?;
    m.security_labels = parse(&extras, 4, "security labels")?;
    let owned = c
        .query(
            "SELECT s.oid, a.attname::text FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass \
               AND d.refobjid = $1 AND d.deptype IN ('a', 'i') ORDER BY s.relname",
            &[&oid],
        )
        .await
        .ctx("reading owned sequences")?;
    for r in owned {
        let mut s = sequence_model(c, r.get(0)).await?;
        s.owned_by = Some(format!("{}.{}", m.name, r.get::<_, String>(1)));
        m.sequences.push(s);
    }
    Ok(m)
}

/// The model of one sequence (by OID), with its current value.
pub(crate) async fn sequence_model<C: GenericClient>(c: &C, oid: u32) -> Result<SequenceModel> {
    let r = c
        .query_one(
            "SELECT n.nspname::text, c.relname::text, s.seqtypid::regtype::text, s.seqstart, s.seqincrement, \
                    s.seqmin, s.seqmax, s.seqcache, s.seqcycle \
             FROM pg_catalog.pg_sequence s JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE s.seqrelid = $1",
            &[&oid],
        )
        .await
        .ctx("reading sequence")?;
    let mut s = SequenceModel {
        schema: r.get(0),
        name: r.get(1),
        data_type: r.get(2),
        start: r.get(3),
        increment: r.get(4),
        min: r.get(5),
        max: r.get(6),
        cache: r.get(7),
        cycle: r.get(8),
        owned_by: None,
        last_value: 0,
        is_called: false,
    };
    let v = c
        .query_one(
            &format!("SELECT last_value, is_called FROM {}", s.quoted()),
            &[],
        )
        .await
        .ctx("reading sequence value")?;
    s.last_value = v.get(0);
    s.is_called = v.get(1);
    Ok(s)
}

/// The model of the given schemas (those that exist).
pub(crate) async fn schema_model<C: GenericClient>(
    c: &C,
    schemas: &[String],
) -> Result<SchemaModel> {
    let mut m = SchemaModel::default();
    let existing = c
        .query(
            "SELECT nspname::text FROM pg_catalog.pg_namespace WHERE nspname = ANY($1) ORDER BY nspname",
            &[&schemas],
        )
        .await
        .ctx("reading schemas")?;
    m.schemas = existing.iter().map(|r| r.get(0)).collect();
    let rels = c
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
                    CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p', 'S', 'v', 'm') \
             ORDER BY n.nspname, c.relname",
            &[&schemas],
        )
        .await
        .ctx("reading relations")?;
    let mut owned = std::collections::BTreeSet::new();
    for r in &rels {
        let kind: String = r.get(3);
        if kind == "r" || kind == "p" {
            let t = table_model_by_oid(c, r.get(0)).await?;
            for s in &t.sequences {
                owned.insert(format!("{}.{}", s.schema, s.name));
            }
            m.tables.insert(format!("{}.{}", t.schema, t.name), t);
        }
    }
    for r in &rels {
        let kind: String = r.get(3);
        let key = format!("{}.{}", r.get::<_, String>(1), r.get::<_, String>(2));
        match kind.as_str() {
            "S" if !owned.contains(&key) => {
                let s = sequence_model(c, r.get(0)).await?;
                m.sequences.insert(key, s);
            }
            "v" | "m" => {
                m.views.insert(
                    key,
                    ViewModel {
                        schema: r.get(1),
                        name: r.get(2),
                        materialized: kind == "m",
                        definition: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    },
                );
            }
            _ => {}
        }
    }
    for r in c
        .query(
            "SELECT n.nspname::text, p.proname::text || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')', \
                    pg_catalog.pg_get_functiondef(p.oid) \
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = ANY($1) AND p.prokind IN ('f', 'p') \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .ctx("reading functions")?
    {
        let f = FunctionModel {
            schema: r.get(0),
            signature: r.get(1),
            definition: r.get(2),
        };
        m.functions.insert(format!("{}.{}", f.schema, f.signature), f);
    }
    for r in c
        .query(
            "SELECT n.nspname::text, t.typname::text, \
                    array(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) \
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE n.nspname = ANY($1) AND t.typtype = 'e' ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .ctx("reading enum types")?
    {
        let e = EnumModel {
            schema: r.get(0),
            name: r.get(1),
            labels: r.get(2),
        };
        m.enums.insert(format!("{}.{}", e.schema, e.name), e);
    }
    Ok(m)
}

/// The key a table is ordered by for hashing: its primary key columns, else the columns of
/// its first valid, non-partial unique index on NOT NULL plain columns; empty when none.
pub(crate) async fn order_key<C: GenericClient>(c: &C, oid: u32) -> Result<Vec<String>> {
    let rows = c
        .query(
            "SELECT i.indexrelid, i.indisprimary, \
                    array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                          ORDER BY k.ord), \
                    (SELECT bool_and(a.attnotnull) FROM unnest(i.indkey) k(attnum) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum), \
                    0 = ANY(i.indkey::int2[]) OR i.indexprs IS NOT NULL OR i.indpred IS NOT NULL \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
             ORDER BY i.indisprimary DESC, ic.relname",
            &[&oid],
        )
        .await
        .ctx("reading keys")?;
    for r in rows {
        let primary: bool = r.get(1);
        let cols: Vec<String> = r.get(2);
        let not_null: Option<bool> = r.get(3);
        let weird: Option<bool> = r.get(4);
        if primary || (not_null == Some(true) && weird != Some(true) && !cols.is_empty()) {
            return Ok(cols);
        }
    }
    Ok(Vec::new())
}
