//! Verifiers: row counts, table hashes (narrowed to the differing rows), referential
//! integrity, schema, SQL.

use crate::catalog::{self, SchemaModel};
use crate::checkpoint::copy::table_entry;
use crate::checkpoint::schema::SchemaSnapshot;
use crate::db::Database;
use crate::diff::Differ;
use crate::error::PgResultExt;
use crate::fingerprint::SnapshotHasher;
use crate::hash::{self, Shape};
use crate::ident::{quote_ident, Table};
use crate::reads::read_tx;
use async_trait::async_trait;
use rollback_core::{Checkpoint, Context, Result, Verdict, Verifier};
use serde_json::json;

/// Row count of `table` equals its count in the baseline snapshot (a
/// [`crate::TableSnapshot`] captured by the run), or the count of another table.
///
/// ```no_run
/// # let db = rollback_postgres::Database::connect("postgres://u@127.0.0.1/shop").unwrap();
/// use rollback_postgres::{RowCountParity, Table};
/// let v = RowCountParity::new(&db, Table::public("customers"));
/// let copy = RowCountParity::between(&db, Table::public("customers"), Table::new("v2", "customers"));
/// ```
#[derive(Debug, Clone)]
pub struct RowCountParity {
    db: Database,
    id: String,
    table: Table,
    baseline_resource: String,
    other: Option<Table>,
}

impl RowCountParity {
    /// Compare with the baseline of the table's own checkpoint.
    pub fn new(db: &Database, table: Table) -> Self {
        RowCountParity {
            id: format!("row-count:{table}"),
            baseline_resource: db.table_resource(&table),
            db: db.clone(),
            table,
            other: None,
        }
    }

    /// Compare the row counts of two tables (e.g. a copy migration's source and target).
    pub fn between(db: &Database, table: Table, other: Table) -> Self {
        let mut v = Self::new(db, table);
        v.id = format!("row-count:{}={}", v.table, other);
        v.other = Some(other);
        v
    }

    /// Take the baseline from the checkpoint with this resource id (e.g. a multi-table
    /// [`crate::TableSnapshot`]).
    pub fn baseline_resource(mut self, resource: impl Into<String>) -> Self {
        self.baseline_resource = resource.into();
        self
    }

    /// Use another verifier id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

#[async_trait]
impl Verifier for RowCountParity {
    fn id(&self) -> &str {
        &self.id
    }

    fn baselines(&self) -> Vec<String> {
        match self.other {
            Some(_) => Vec::new(),
            None => vec![self.baseline_resource.clone()],
        }
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        let c = self.db.lib_client().await?;
        let count = |t: &Table| format!("SELECT count(*) FROM {}", t.quoted());
        let now: i64 = c
            .query_one(&count(&self.table), &[])
            .await
            .ctx("counting rows")?
            .get(0);
        let (expected, source) = match &self.other {
            Some(o) => {
                let n: i64 = c
                    .query_one(&count(o), &[])
                    .await
                    .ctx("counting rows")?
                    .get(0);
                (n, o.to_string())
            }
            None => {
                let Some(snap) = ctx.baseline(&self.baseline_resource) else {
                    return Ok(Verdict::inconclusive(format!(
                        "no baseline snapshot of {} in this run",
                        self.baseline_resource
                    )));
                };
                let Some(e) = table_entry(snap, &self.table)? else {
                    return Ok(Verdict::inconclusive(format!(
                        "the baseline of {} does not cover {}",
                        self.baseline_resource, self.table
                    )));
                };
                (
                    e.hash.as_ref().map(|h| h.rows as i64).unwrap_or(0),
                    "baseline".to_string(),
                )
            }
        };
        Ok(Verdict::check(
            now == expected,
            format!("{}: {now} rows, {source}: {expected}", self.table),
        )
        .with_evidence(json!({
            "table": self.table.to_string(),
            "rows": now,
            "expected": expected,
            "expected_from": source,
            "delta": now - expected,
        }))
        .with_value((now - expected).abs() as f64))
    }
}

/// The table's content equals its baseline (or another table's) by table hash: a blake3
/// over every row in key order, streamed with binary COPY. The current table is read once,
/// in the key ranges of the baseline's chunks (one COPY per range, the ranges shared by
/// parallel sessions in one exported snapshot), which gives its root and each range's
/// digest in the same pass; against a snapshot's stored chunk digests that is the whole
/// cost of a passing check. On mismatch only the differing ranges are read again: the
/// server compares them row by row with the baseline's snapshot copy (joined on the key,
/// by the binary encoding the hash is taken over), and the evidence lists the differing
/// keys (added, removed, changed; at most 50 each, 16 ranges) with the differing key
/// ranges and row counts. Memory stays bounded whatever the table size.
///
/// Against a baseline, the run must hold a [`crate::TableSnapshot`] covering the table; while its
/// copy exists rows can be listed, afterwards only key ranges.
#[derive(Debug, Clone)]
pub struct TableHashParity {
    db: Database,
    id: String,
    table: Table,
    baseline_resource: String,
    other: Option<Table>,
    /// Set by [`TableHashParity::parallelism`]; else 2 for a big table, 1 otherwise.
    parallelism: Option<usize>,
}

impl TableHashParity {
    /// Compare with the baseline of the table's own checkpoint.
    pub fn new(db: &Database, table: Table) -> Self {
        TableHashParity {
            id: format!("table-hash:{table}"),
            baseline_resource: db.table_resource(&table),
            db: db.clone(),
            table,
            other: None,
            parallelism: None,
        }
    }

    /// Sessions that read the current table, each taking its share of the ranges (by
    /// default 2 when the baseline has 200,000 rows or more, like the checkpoints'
    /// fingerprints, else 1); the verdict does not depend on it. The extra sessions come
    /// from the database's pool.
    pub fn parallelism(mut self, sessions: usize) -> Self {
        self.parallelism = Some(sessions.max(1));
        self
    }

    /// Compare `table` (current) with `baseline` (another table with the same columns and
    /// key, e.g. the source of a copy).
    pub fn between(db: &Database, baseline: Table, table: Table) -> Self {
        let mut v = Self::new(db, table);
        v.id = format!("table-hash:{}={}", baseline, v.table);
        v.other = Some(baseline);
        v
    }

    /// Take the baseline from the checkpoint with this resource id.
    pub fn baseline_resource(mut self, resource: impl Into<String>) -> Self {
        self.baseline_resource = resource.into();
        self
    }

    /// Use another verifier id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

#[async_trait]
impl Verifier for TableHashParity {
    fn id(&self) -> &str {
        &self.id
    }

    fn baselines(&self) -> Vec<String> {
        match self.other {
            Some(_) => Vec::new(),
            None => vec![self.baseline_resource.clone()],
        }
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        let mut obj = self.db.lib_client().await?;
        let tx = read_tx(&mut obj, "starting a read-only transaction").await?;
        let Some(oid) = catalog::table_oid(&tx, &self.table).await? else {
            return Ok(Verdict::fail(format!("{} does not exist", self.table)));
        };
        let model = catalog::table_model_by_oid(&tx, oid).await?;
        let key = catalog::order_key(&tx, oid).await?;
        let current = Shape {
            rel: self.table.quoted(),
            columns: model.column_names(),
            key: key.clone(),
        };
        let key_types: Vec<String> = key
            .iter()
            .filter_map(|k| model.columns.iter().find(|c| &c.name == k))
            .map(|c| c.data_type.clone())
            .collect();
        let (base, chunks, base_rows, base_root, present) = match &self.other {
            Some(o) => {
                let base = Shape {
                    rel: o.quoted(),
                    columns: current.columns.clone(),
                    key: key.clone(),
                };
                let est: i64 = tx
                    .query_one(
                        &format!(
                            "SELECT greatest(reltuples, 0)::bigint FROM pg_catalog.pg_class WHERE oid = {}::regclass",
                            o.regclass_literal()
                        ),
                        &[],
                    )
                    .await
                    .ctx("estimating table size")?
                    .get(0);
                let h = hash::hash_relation(tx.client(), &base, hash::chunk_leaves_for(est as u64))
                    .await?;
                (base, h.chunks, h.rows, h.root, true)
            }
            None => {
                let Some(snap) = ctx.baseline(&self.baseline_resource) else {
                    return Ok(Verdict::inconclusive(format!(
                        "no baseline snapshot of {} in this run",
                        self.baseline_resource
                    )));
                };
                let Some(e) = table_entry(snap, &self.table)? else {
                    return Ok(Verdict::inconclusive(format!(
                        "the baseline of {} does not cover {}",
                        self.baseline_resource, self.table
                    )));
                };
                let (Some(h), Some(copy), Some(def)) = (&e.hash, &e.copy, &e.definition) else {
                    return Ok(Verdict::fail(format!(
                        "{} did not exist at baseline",
                        self.table
                    )));
                };
                if def.column_names() != current.columns {
                    return Ok(Verdict::fail(format!(
                        "{}: columns differ from the baseline ({:?} vs {:?})",
                        self.table,
                        current.columns,
                        def.column_names()
                    ))
                    .with_evidence(
                        json!({"baseline_columns": def.column_names(), "columns": current.columns}),
                    ));
                }
                let present = catalog::table_oid(&tx, copy).await?.is_some();
                let base = Shape {
                    rel: copy.quoted(),
                    columns: current.columns.clone(),
                    key: e.key.clone(),
                };
                (base, h.chunks.clone(), h.rows, h.root, present)
            }
        };
        // The current table in the baseline's chunk ranges (one range when the key changed
        // or a start key cannot be printed): its root and each range's digest in one pass.
        let starts = if base.key == current.key && !chunks.is_empty() {
            crate::fingerprint::chunk_starts(tx.client(), &chunks, &key_types).await?
        } else {
            None
        };
        let chunks = if starts.is_some() { chunks } else { Vec::new() };
        // By default extra sessions for a big table only, as the fingerprint takes them.
        let parallelism = self
            .parallelism
            .unwrap_or(if base_rows >= hash::PARALLEL_MIN_ROWS {
                2
            } else {
                1
            });
        let mut hasher = SnapshotHasher::begin(&tx, parallelism).await;
        let outcome = {
            let clients = hasher.clients(&self.db, &tx).await;
            compare_ranges(
                clients,
                base,
                current,
                key_types,
                &chunks,
                starts.as_deref(),
                (base_rows, base_root),
                present,
            )
            .await
        };
        hasher.close().await;
        let (now, d) = match outcome? {
            Ranges::Equal(now) => {
                return Ok(Verdict::pass(format!(
                    "{}: {} rows, hash {} equals the baseline",
                    self.table,
                    now.rows,
                    now.root.short()
                ))
                .with_evidence(json!({"table": self.table.to_string(), "rows": now.rows, "hash": now.root, "bytes": now.bytes})));
            }
            Ranges::Differ(now, d) => (now, d),
        };
        let n = d.added.len() + d.removed.len() + d.changed.len();
        let summary = format!(
            "{}: hash {} differs from baseline {} ({} rows now, {} at baseline; {} differing range(s){})",
            self.table,
            now.root.short(),
            base_root.short(),
            now.rows,
            base_rows,
            d.ranges.len(),
            if n > 0 {
                format!(
                    ": {} added, {} removed, {} changed{}",
                    d.added.len(),
                    d.removed.len(),
                    d.changed.len(),
                    if d.truncated { " (lists truncated)" } else { "" }
                )
            } else {
                String::new()
            }
        );
        let mut evidence = serde_json::to_value(&d).unwrap_or_default();
        if let Some(o) = evidence.as_object_mut() {
            o.insert("table".into(), json!(self.table.to_string()));
            o.insert("hash".into(), json!(now.root));
            o.insert("baseline_hash".into(), json!(base_root));
        }
        Ok(Verdict::fail(summary)
            .with_evidence(evidence)
            .with_value(n as f64))
    }
}

enum Ranges {
    Equal(hash::TableHash),
    Differ(hash::TableHash, crate::diff::TableDiff),
}

/// Hash `current` in the ranges of the baseline's `chunks` (one range when `starts` is
/// `None`) on `clients`, and on mismatch list the differences.
#[allow(clippy::too_many_arguments)]
async fn compare_ranges(
    clients: Vec<&tokio_postgres::Client>,
    base: Shape,
    current: Shape,
    key_types: Vec<String>,
    chunks: &[hash::ChunkDigest],
    starts: Option<&[hash::Split]>,
    (base_rows, base_root): (u64, rollback_core::Digest),
    present: bool,
) -> Result<Ranges> {
    let (ranges, now) =
        hash::hash_ranges(&clients, &current, starts.unwrap_or_default(), u64::MAX).await?;
    if now.root == base_root {
        return Ok(Ranges::Equal(now));
    }
    let ranges = if chunks.is_empty() {
        vec![(now.rows, now.root)]
    } else {
        ranges
    };
    let differ = Differ {
        clients,
        base,
        current,
        key_types,
    };
    let d = differ.diff(chunks, &ranges, base_rows, present).await?;
    Ok(Ranges::Differ(now, d))
}

/// Every foreign key in scope (including `NOT VALID` ones, which PostgreSQL does not
/// check for existing rows) is checked for orphans: child rows whose key is not null
/// (for `MATCH FULL`, partly null) and matches no parent row. The evidence lists, per
/// constraint, the orphan count and up to 10 sample keys.
///
/// ```no_run
/// # let db = rollback_postgres::Database::connect("postgres://u@127.0.0.1/shop").unwrap();
/// use rollback_postgres::ForeignKeyIntegrity;
/// let v = ForeignKeyIntegrity::new(&db).schemas(["public"]);
/// ```
#[derive(Debug, Clone)]
pub struct ForeignKeyIntegrity {
    db: Database,
    id: String,
    schemas: Vec<String>,
    tables: Vec<Table>,
}

impl ForeignKeyIntegrity {
    /// Check every foreign key of the database (user schemas).
    pub fn new(db: &Database) -> Self {
        ForeignKeyIntegrity {
            db: db.clone(),
            id: "foreign-keys".into(),
            schemas: vec![],
            tables: vec![],
        }
    }

    /// Only foreign keys of tables in these schemas.
    pub fn schemas<S: Into<String>>(mut self, schemas: impl IntoIterator<Item = S>) -> Self {
        self.schemas = schemas.into_iter().map(Into::into).collect();
        self
    }

    /// Only foreign keys of (from) or to these tables.
    pub fn tables(mut self, tables: impl IntoIterator<Item = Table>) -> Self {
        self.tables = tables.into_iter().collect();
        self
    }

    /// Use another verifier id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

#[async_trait]
impl Verifier for ForeignKeyIntegrity {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let mut obj = self.db.lib_client().await?;
        let tx = read_tx(&mut obj, "starting a read-only transaction").await?;
        let fks = tx
            .query(
                "SELECT k.conname::text, cn.nspname::text, c.relname::text, pn.nspname::text, p.relname::text, \
                        k.convalidated, k.confmatchtype::text, \
                        array(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY x(n, o) \
                              JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.n ORDER BY x.o), \
                        array(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY x(n, o) \
                              JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = x.n ORDER BY x.o) \
                 FROM pg_catalog.pg_constraint k \
                 JOIN pg_catalog.pg_class c ON c.oid = k.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
                 JOIN pg_catalog.pg_class p ON p.oid = k.confrelid JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
                 WHERE k.contype = 'f' AND cn.nspname NOT IN ('pg_catalog', 'information_schema') \
                   AND (cardinality($1::text[]) = 0 OR cn.nspname = ANY($1)) \
                 ORDER BY cn.nspname, c.relname, k.conname",
                &[&self.schemas],
            )
            .await
            .ctx("reading foreign keys")?;
        let mut results = Vec::new();
        let mut total = 0i64;
        let mut checked = 0;
        for r in fks {
            let name: String = r.get(0);
            let child = Table::new(r.get::<_, String>(1), r.get::<_, String>(2));
            let parent = Table::new(r.get::<_, String>(3), r.get::<_, String>(4));
            if !self.tables.is_empty()
                && !self.tables.contains(&child)
                && !self.tables.contains(&parent)
            {
                continue;
            }
            checked += 1;
            let validated: bool = r.get(5);
            let full = r.get::<_, String>(6) == "f";
            let fk: Vec<String> = r.get(7);
            let refs: Vec<String> = r.get(8);
            let join: Vec<String> = fk
                .iter()
                .zip(&refs)
                .map(|(f, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(f)))
                .collect();
            let all_set: Vec<String> = fk
                .iter()
                .map(|f| format!("c.{} IS NOT NULL", quote_ident(f)))
                .collect();
            let any_set: Vec<String> = fk
                .iter()
                .map(|f| format!("c.{} IS NOT NULL", quote_ident(f)))
                .collect();
            let missing = format!(
                "NOT EXISTS (SELECT 1 FROM {} p WHERE {})",
                parent.quoted(),
                join.join(" AND ")
            );
            let cond = if full {
                format!(
                    "({}) AND (NOT ({}) OR {missing})",
                    any_set.join(" OR "),
                    all_set.join(" AND ")
                )
            } else {
                format!("{} AND {missing}", all_set.join(" AND "))
            };
            let key_text: Vec<String> = fk
                .iter()
                .map(|f| format!("coalesce(c.{}::text, 'NULL')", quote_ident(f)))
                .collect();
            let sql = format!(
                "SELECT count(*) OVER (), concat_ws(', ', {}) FROM {} c WHERE {cond} LIMIT 10",
                key_text.join(", "),
                child.quoted()
            );
            let rows = tx.query(&sql, &[]).await.ctx("checking for orphans")?;
            let orphans: i64 = rows.first().map(|r| r.get(0)).unwrap_or(0);
            total += orphans;
            if orphans > 0 {
                results.push(json!({
                    "constraint": name,
                    "child": child.to_string(),
                    "parent": parent.to_string(),
                    "columns": fk,
                    "validated": validated,
                    "orphans": orphans,
                    "sample": rows.iter().map(|r| r.get::<_, String>(1)).collect::<Vec<_>>(),
                }));
            }
        }
        let summary = if total == 0 {
            format!("{checked} foreign key(s) checked, no orphans")
        } else {
            format!(
                "{total} orphan row(s) in {} of {checked} foreign key(s): {}",
                results.len(),
                results
                    .iter()
                    .map(|r| format!(
                        "{} ({})",
                        r["constraint"].as_str().unwrap_or(""),
                        r["orphans"]
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Ok(Verdict::check(total == 0, summary)
            .with_evidence(json!({"checked": checked, "violations": results}))
            .with_value(total as f64))
    }
}

/// The catalog of some schemas equals the baseline captured by a [`SchemaSnapshot`] of
/// the same schemas in this run (or a given model); the evidence lists the differences.
#[derive(Debug, Clone)]
pub struct SchemaMatches {
    checkpoint: SchemaSnapshot,
    id: String,
    expected: Option<SchemaModel>,
}

impl SchemaMatches {
    /// Compare with the run's baseline of `SchemaSnapshot::new(db, schemas)`.
    pub fn new<S: Into<String>>(db: &Database, schemas: impl IntoIterator<Item = S>) -> Self {
        let checkpoint = SchemaSnapshot::new(db, schemas);
        SchemaMatches {
            id: format!("schema:{}", checkpoint.resource()),
            checkpoint,
            expected: None,
        }
    }

    /// Compare with this model instead of the run's baseline.
    pub fn expect(mut self, model: SchemaModel) -> Self {
        self.expected = Some(model);
        self
    }

    /// Use another verifier id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }
}

#[async_trait]
impl Verifier for SchemaMatches {
    fn id(&self) -> &str {
        &self.id
    }

    fn baselines(&self) -> Vec<String> {
        match self.expected {
            Some(_) => Vec::new(),
            None => vec![self.checkpoint.resource().to_string()],
        }
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        let expected = match &self.expected {
            Some(m) => m.clone(),
            None => match ctx.baseline(self.checkpoint.resource()) {
                Some(s) => self.checkpoint.model_of(s)?,
                None => {
                    return Ok(Verdict::inconclusive(format!(
                        "no baseline snapshot of {} in this run",
                        self.checkpoint.resource()
                    )))
                }
            },
        };
        let now = self.checkpoint.model().await?;
        let changes: Vec<String> = expected.diff(&now).iter().map(|c| c.to_string()).collect();
        Ok(Verdict::check(
            changes.is_empty(),
            if changes.is_empty() {
                "schema matches the baseline".to_string()
            } else {
                format!("{} schema difference(s): {}", changes.len(), changes.iter().take(5).cloned().collect::<Vec<_>>().join("; "))
            },
        )
        .with_evidence(json!({"fingerprint": now.fingerprint(), "expected": expected.fingerprint(), "differences": changes}))
        .with_value(changes.len() as f64))
    }
}

/// What a [`SqlAssertion`] expects of its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    True,
    NoRows,
}

/// A custom check in SQL, run in a read-only transaction: a query that must return
/// `true` (one row, one boolean column), or one that must return no rows (each row found
/// is an offending row; up to 10 are shown as evidence).
///
/// The SQL must be one statement (a `COMMIT` after it would end the read-only transaction
/// and let what follows write): anything else is refused with
/// [`rollback_core::Error::Invalid`]. It runs with the database's own `search_path`.
///
/// ```no_run
/// # let db = rollback_postgres::Database::connect("postgres://u@127.0.0.1/shop").unwrap();
/// use rollback_postgres::SqlAssertion;
/// let a = SqlAssertion::is_true(&db, "names-split", "SELECT bool_and(first_name IS NOT NULL) FROM customers");
/// let b = SqlAssertion::no_rows(&db, "no-negative", "SELECT id, balance FROM accounts WHERE balance < 0");
/// ```
#[derive(Debug, Clone)]
pub struct SqlAssertion {
    db: Database,
    id: String,
    sql: String,
    expect: Expect,
}

impl SqlAssertion {
    /// Passes when `sql` returns `true`.
    pub fn is_true(db: &Database, id: impl Into<String>, sql: impl Into<String>) -> Self {
        SqlAssertion {
            db: db.clone(),
            id: id.into(),
            sql: sql.into(),
            expect: Expect::True,
        }
    }

    /// Passes when `sql` returns no rows.
    pub fn no_rows(db: &Database, id: impl Into<String>, sql: impl Into<String>) -> Self {
        SqlAssertion {
            db: db.clone(),
            id: id.into(),
            sql: sql.into(),
            expect: Expect::NoRows,
        }
    }
}

#[async_trait]
impl Verifier for SqlAssertion {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let scan = crate::sqlscan::scan(&self.sql);
        let one = scan.statements.len() == 1
            && scan.unterminated.is_none()
            && scan.semicolons <= 1
            && !scan
                .statements
                .iter()
                .any(crate::sqlscan::transaction_control);
        if !one {
            return Err(rollback_core::Error::invalid(format!(
                "assertion {}: its SQL must be one statement (a query), not {} statement(s){}",
                self.id,
                scan.statements.len(),
                scan.unterminated
                    .map(|w| format!(" with a {w} left open"))
                    .unwrap_or_default()
            )));
        }
        let mut obj = self.db.lib_client().await?;
        let tx = read_tx(&mut obj, "starting a read-only transaction").await?;
        tx.batch_execute(&crate::db::user_settings_sql(true))
            .await
            .ctx("setting the database's search path")?;
        let msgs = tx
            .simple_query(&self.sql)
            .await
            .ctx("running the assertion")?;
        let rows: Vec<Vec<Option<String>>> = msgs
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
                }
                _ => None,
            })
            .collect();
        let sample: Vec<String> = rows
            .iter()
            .take(10)
            .map(|r| {
                r.iter()
                    .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect();
        let verdict = match self.expect {
            Expect::True => {
                let v = rows.first().and_then(|r| r.first().cloned().flatten());
                Verdict::check(
                    v.as_deref() == Some("t"),
                    format!("{}: returned {}", self.id, v.as_deref().unwrap_or("NULL")),
                )
            }
            Expect::NoRows => Verdict::check(
                rows.is_empty(),
                format!("{}: {} offending row(s)", self.id, rows.len()),
            )
            .with_value(rows.len() as f64),
        };
        Ok(verdict.with_evidence(json!({"query": self.sql, "rows": rows.len(), "sample": sample})))
    }
}
