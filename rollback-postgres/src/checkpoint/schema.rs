//! [`SchemaSnapshot`]: a checkpoint of the catalog of some schemas.

use crate::catalog::{self, SchemaModel};
use crate::checkpoint::reconcile;
use crate::db::Database;
use crate::error::PgResultExt;
use crate::ident::{quote_ident, quote_literal, Table};
use async_trait::async_trait;
use rollback_core::{Checkpoint, Context, Digest, Error, Restored, Result, Snapshot};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_postgres::{IsolationLevel, Transaction};

/// The snapshot kind of a [`SchemaSnapshot`].
pub const SCHEMA_KIND: &str = "pg.schema";

/// A checkpoint of the catalog of some schemas: tables (columns, types, defaults,
/// nullability, constraints including foreign keys, indexes, triggers, owned sequences and
/// their values, and every other property pg_dump emits for a table: see
/// [`crate::TableModel`]), standalone sequences with their
/// values, views and materialized views, functions and procedures, and enum types — as a
/// [`SchemaModel`] kept inline in the snapshot, whose blake3 is both the snapshot's
/// `digest` and its `fingerprint`.
///
/// **What restore does, honestly.** It compares the live model with the captured one and,
/// in one transaction, runs DDL to undo the differences it knows how to undo: drops views,
/// tables, sequences, functions, enum types and schemas created since; re-creates dropped
/// views, functions, enum types, standalone sequences and schemas from their captured
/// definitions; for each table, drops added columns, constraints, indexes and triggers,
/// re-creates dropped ones, puts back defaults, nullability and trigger states and the
/// table's other properties (comments, privileges, statistics targets, rules, policies…),
/// and resets sequence values. Then it re-reads the catalog and commits only if the model equals the
/// captured one; otherwise it rolls back and fails with [`Error::Conflict`] listing what
/// it could not undo. It **cannot** bring back data: a table dropped since capture is
/// refused (restore it with a [`crate::TableSnapshot`] first — order the checkpoints so),
/// a column dropped since capture is re-created empty (and only if it was the last one, so
/// the column order matches), a column whose type changed is refused, and enum labels
/// added since cannot be removed. Data belongs to table checkpoints; this one restores
/// structure.
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_core::{Checkpoint, Context};
/// use rollback_postgres::{Database, SchemaSnapshot};
/// let db = Database::connect("postgres://postgres@127.0.0.1:55432/shop")?;
/// let cp = SchemaSnapshot::new(&db, ["public"]);
/// let before = cp.model().await?;
/// // ... DDL happens ...
/// for change in before.diff(&cp.model().await?) {
///     println!("{change}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SchemaSnapshot {
    db: Database,
    schemas: Vec<String>,
    resource: String,
    lock_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Descriptor {
    schemas: Vec<String>,
    model: SchemaModel,
}

impl SchemaSnapshot {
    /// A checkpoint of the given schemas (resource `postgres:<db>/schema:<s1>,<s2>`).
    pub fn new<S: Into<String>>(db: &Database, schemas: impl IntoIterator<Item = S>) -> Self {
        let mut schemas: Vec<String> = schemas.into_iter().map(Into::into).collect();
        schemas.sort();
        schemas.dedup();
        SchemaSnapshot {
            resource: db.schema_resource(&schemas),
            db: db.clone(),
            schemas,
            lock_timeout: Duration::from_secs(5),
        }
    }

    /// `lock_timeout` of the restore transaction (default 5 s).
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }

    /// The live catalog model.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn model(&self) -> Result<SchemaModel> {
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .ctx("starting catalog read")?;
        let m = catalog::schema_model(&tx, &self.schemas).await?;
        tx.commit().await.ctx("ending catalog read")?;
        Ok(m)
    }

    /// The model captured in a snapshot of this checkpoint (checked against its digest).
    ///
    /// # Errors
    /// [`Error::WrongResource`], [`Error::Invalid`], [`Error::DigestMismatch`].
    pub fn model_of(&self, snap: &Snapshot) -> Result<SchemaModel> {
        snap.ensure_resource(&self.resource)?;
        let d: Descriptor = serde_json::from_value(snap.descriptor.clone())
            .map_err(|e| Error::invalid(format!("malformed schema snapshot descriptor: {e}")))?;
        snap.ensure_digest(d.model.fingerprint())?;
        Ok(d.model)
    }
}

#[async_trait]
impl Checkpoint for SchemaSnapshot {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, _ctx: &Context) -> Result<Snapshot> {
        let model = self.model().await?;
        let fp = model.fingerprint();
        let size = serde_json::to_vec(&model).map(|v| v.len() as u64).ok();
        Ok(Snapshot {
            id: format!(
                "pg-schema-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            resource: self.resource.clone(),
            kind: SCHEMA_KIND.into(),
            digest: fp,
            fingerprint: fp,
            captured_at_ms: rollback_core::now_ms(),
            size_bytes: size,
            descriptor: serde_json::to_value(Descriptor {
                schemas: self.schemas.clone(),
                model,
            })
            .map_err(|e| Error::invalid(format!("encoding descriptor: {e}")))?,
        })
    }

    async fn restore(&self, snap: &Snapshot, ctx: &Context) -> Result<Restored> {
        let target = self.model_of(snap)?;
        let marker_schema = crate::markers::DEFAULT_MARKER_SCHEMA;
        crate::markers::ensure_for_fence(&self.db, marker_schema, ctx).await?;
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client.transaction().await.ctx("starting schema restore")?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            self.lock_timeout.as_millis().max(1)
        ))
        .await
        .ctx("setting lock_timeout")?;
        // Only the newest runner's restore commits.
        crate::markers::fence(&tx, marker_schema, ctx).await?;
        let live = catalog::schema_model(&tx, &self.schemas).await?;
        let changes = target.diff(&live);
        if changes.is_empty() {
            tx.commit().await.ctx("ending schema restore")?;
            return Ok(Restored::by("noop").changed(0));
        }
        let statements = undo(&tx, &live, &target).await?;
        let after = catalog::schema_model(&tx, &self.schemas).await?;
        let left = target.diff(&after);
        if !left.is_empty() {
            tx.rollback().await.ctx("rolling back schema restore")?;
            return Err(Error::conflict(format!(
                "schema restore of {} cannot undo: {}",
                self.resource,
                left.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        tx.commit().await.ctx("committing schema restore")?;
        ctx.progress(
            &format!("restore {}", self.resource),
            changes.len() as u64,
            Some(changes.len() as u64),
            "changes",
        );
        Ok(Restored::by("ddl")
            .changed(changes.len() as u64)
            .note(format!(
                "{statements} DDL statement(s) undid {} change(s)",
                changes.len()
            )))
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        Ok(self.model().await?.fingerprint())
    }
}

async fn exec(tx: &Transaction<'_>, sql: &str, n: &mut usize) -> Result<()> {
    tracing::debug!(sql, "schema restore");
    *n += 1;
    tx.batch_execute(sql).await.ctx("schema restore")
}

/// Run DDL turning `live` into `target`; returns the number of statements.
async fn undo(tx: &Transaction<'_>, live: &SchemaModel, target: &SchemaModel) -> Result<usize> {
    let mut n = 0;
    // Tables dropped since capture hold data this checkpoint does not have.
    for k in target.tables.keys() {
        if !live.tables.contains_key(k) {
            return Err(Error::conflict(format!(
                "table {k} was dropped since capture; restore it with a table snapshot (its data is not in a schema snapshot)"
            )));
        }
    }
    // a. Views added or changed since: drop (re-created below).
    for (k, v) in &live.views {
        if target.views.get(k) != Some(v) {
            let kind = if v.materialized {
                "MATERIALIZED VIEW"
            } else {
                "VIEW"
            };
            exec(
                tx,
                &format!(
                    "DROP {kind} IF EXISTS {}.{}",
                    quote_ident(&v.schema),
                    quote_ident(&v.name)
                ),
                &mut n,
            )
            .await?;
        }
    }
    // b. Tables and sequences added since.
    for (k, t) in &live.tables {
        if !target.tables.contains_key(k) {
            exec(
                tx,
                &format!("DROP TABLE {}", Table::new(&t.schema, &t.name).quoted()),
                &mut n,
            )
            .await?;
        }
    }
    for (k, s) in &live.sequences {
        if !target.sequences.contains_key(k) {
            exec(tx, &format!("DROP SEQUENCE {}", s.quoted()), &mut n).await?;
        }
    }
    // c. Schemas, enum types, functions and sequences that went away or changed.
    for s in &target.schemas {
        if !live.schemas.contains(s) {
            exec(tx, &format!("CREATE SCHEMA {}", quote_ident(s)), &mut n).await?;
        }
    }
    for (k, e) in &target.enums {
        match live.enums.get(k) {
            None => {
                let labels: Vec<String> = e.labels.iter().map(|l| quote_literal(l)).collect();
                exec(
                    tx,
                    &format!(
                        "CREATE TYPE {}.{} AS ENUM ({})",
                        quote_ident(&e.schema),
                        quote_ident(&e.name),
                        labels.join(", ")
                    ),
                    &mut n,
                )
                .await?;
            }
            Some(l) if l != e => {
                // Labels can be added back in order, never removed.
                let mut prev: Option<&str> = None;
                for lab in &e.labels {
                    if !l.labels.contains(lab) {
                        let pos = match prev {
                            Some(p) => format!(" AFTER {}", quote_literal(p)),
                            None => String::new(),
                        };
                        exec(
                            tx,
                            &format!(
                                "ALTER TYPE {}.{} ADD VALUE {}{pos}",
                                quote_ident(&e.schema),
                                quote_ident(&e.name),
                                quote_literal(lab)
                            ),
                            &mut n,
                        )
                        .await?;
                    }
                    prev = Some(lab);
                }
            }
            _ => {}
        }
    }
    for (k, f) in &target.functions {
        if live.functions.get(k) != Some(f) {
            // As pg_dump does: a body valid at capture may name objects put back later.
            exec(
                tx,
                &format!(
                    "SET LOCAL check_function_bodies = off; {}; SET LOCAL check_function_bodies = on",
                    f.definition
                ),
                &mut n,
            )
            .await?;
        }
    }
    for (k, s) in &target.sequences {
        match live.sequences.get(k) {
            None => {
                exec(tx, &s.create_sql(), &mut n).await?;
                exec(tx, &s.setval_sql(), &mut n).await?;
            }
            Some(l) if l != s => {
                exec(
                    tx,
                    &format!(
                        "ALTER SEQUENCE {} AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}",
                        s.quoted(),
                        s.data_type,
                        s.increment,
                        s.min,
                        s.max,
                        s.start,
                        s.cache,
                        if s.cycle { "CYCLE" } else { "NO CYCLE" }
                    ),
                    &mut n,
                )
                .await?;
                exec(tx, &s.setval_sql(), &mut n).await?;
            }
            _ => {}
        }
    }
    // d. Tables.
    for (k, t) in &target.tables {
        let Some(l) = live.tables.get(k) else {
            continue;
        };
        if l == t {
            continue;
        }
        let table = Table::new(&t.schema, &t.name);
        let plan = reconcile::plan(&table, l, t, false).map_err(Error::conflict)?;
        for s in plan.pre.iter().chain(plan.post.iter()) {
            exec(tx, s, &mut n).await?;
        }
        reconcile::table_properties(tx, &table, t).await?;
        for s in &t.sequences {
            exec(tx, &s.setval_sql(), &mut n).await?;
        }
    }
    // e. Views back, in an order that satisfies their dependencies.
    let mut pending: Vec<&catalog::ViewModel> = target
        .views
        .iter()
        .filter(|(k, v)| live.views.get(*k) != Some(*v))
        .map(|(_, v)| v)
        .collect();
    while !pending.is_empty() {
        let mut progress = false;
        let mut still = Vec::new();
        let mut last_err = None;
        for v in pending {
            let kind = if v.materialized {
                "MATERIALIZED VIEW"
            } else {
                "VIEW"
            };
            let sql = format!(
                "SAVEPOINT rb_view; CREATE {kind} {}.{} AS {}",
                quote_ident(&v.schema),
                quote_ident(&v.name),
                v.definition.trim_end_matches(';')
            );
            match tx.batch_execute(&sql).await {
                Ok(()) => {
                    tx.batch_execute("RELEASE SAVEPOINT rb_view")
                        .await
                        .ctx("schema restore")?;
                    n += 1;
                    progress = true;
                }
                Err(e) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT rb_view")
                        .await
                        .ctx("schema restore")?;
                    last_err = Some(crate::error::PgError::new("re-creating view", &e));
                    still.push(v);
                }
            }
        }
        if !progress {
            return Err(last_err
                .map(|e| e.into_core(false))
                .unwrap_or_else(|| Error::conflict("views cannot be re-created")));
        }
        pending = still;
    }
    // f. Functions, enum types and schemas created since.
    for (k, f) in &live.functions {
        if !target.functions.contains_key(k) {
            exec(
                tx,
                &format!(
                    "DROP ROUTINE {}.{}",
                    quote_ident(&f.schema),
                    f.signature_sql()
                ),
                &mut n,
            )
            .await?;
        }
    }
    for (k, e) in &live.enums {
        if !target.enums.contains_key(k) {
            exec(
                tx,
                &format!(
                    "DROP TYPE {}.{}",
                    quote_ident(&e.schema),
                    quote_ident(&e.name)
                ),
                &mut n,
            )
            .await?;
        }
    }
    for s in &live.schemas {
        if !target.schemas.contains(s) {
            exec(tx, &format!("DROP SCHEMA {}", quote_ident(s)), &mut n).await?;
        }
    }
    Ok(n)
}
