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

/// One table's definition (and its owned sequences with their values).
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
    /// Storage parameters.
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
    let cons = |m: &TableModel| -> Vec<(String, String)> {
        m.constraints
            .iter()
            .map(|c| (c.name.clone(), c.definition.clone()))
            .collect()
    };
    named(&mut out, "constraint", cons(a), cons(b));
    let idx = |m: &TableModel| -> Vec<(String, String)> {
        m.indexes
            .iter()
            .map(|i| {
                (
                    i.name.clone(),
                    format!(
                        "{}{}",
                        i.definition,
                        if i.valid { "" } else { " (INVALID)" }
                    ),
                )
            })
            .collect()
    };
    named(&mut out, "index", idx(a), idx(b));
    let trg = |m: &TableModel| -> Vec<(String, String)> {
        m.triggers
            .iter()
            .map(|t| (t.name.clone(), format!("{} [{}]", t.definition, t.enabled)))
            .collect()
    };
    named(&mut out, "trigger", trg(a), trg(b));
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
                    pg_catalog.pg_get_userbyid(c.relowner)::text, c.relacl::text, \
                    coalesce(c.reloptions, '{}')::text[], c.relreplident::text, \
                    c.relrowsecurity, c.relforcerowsecurity \
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
    };
    for r in c
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text, a.attidentity::text, \
                    CASE WHEN a.attcollation <> t.typcollation THEN co.collname::text END \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
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
        });
    }
    for r in c
        .query(
            "SELECT conname::text, contype::text, pg_catalog.pg_get_constraintdef(oid), convalidated \
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
        });
    }
    for r in c
        .query(
            "SELECT ic.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid), \
                    i.indisvalid \
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
        });
    }
    for r in c
        .query(
            "SELECT tgname::text, pg_catalog.pg_get_triggerdef(oid), tgenabled::text \
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
        });
    }
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
