//! [`SchemaSnapshot`]: a checkpoint of the catalog of some schemas.

mod undo;

use crate::catalog::{self, SchemaModel};
use crate::db::Database;
use crate::error::PgResultExt;
use crate::reads::read_tx;
use async_trait::async_trait;
use rollback_core::{Checkpoint, Context, Digest, Error, Restored, Result, Snapshot};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
        let tx = read_tx(&mut obj, "starting catalog read").await?;
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
        let d = Descriptor::deserialize(&snap.descriptor)
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
        let size = serde_json::to_vec(&model).map(|v| v.len() as u64);
        let snapshot = Snapshot::new(
            format!(
                "pg-schema-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            self.resource.clone(),
            SCHEMA_KIND,
            fp,
            fp,
            serde_json::to_value(Descriptor {
                schemas: self.schemas.clone(),
                model,
            })
            .map_err(|e| Error::invalid(format!("encoding descriptor: {e}")))?,
        );
        Ok(match size {
            Ok(n) => snapshot.with_size(n),
            Err(_) => snapshot,
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
        let statements = undo::undo(&tx, &live, &target).await?;
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
