//! [`Backfill`]: a batched, throttled, resumable `UPDATE` by primary-key ranges.

use super::{DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT};
use crate::db::Database;
use crate::error::{Class, PgError, PgResultExt};
use crate::ident::{quote_ident, Table};
use crate::markers::{self, DEFAULT_MARKER_SCHEMA};
use crate::sqlscan;
use async_trait::async_trait;
use rollback_core::{Context, Effect, Error, Receipt, Result, Reversibility, Step};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// What a finished [`Backfill`] remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillReceipt {
    /// The table.
    pub table: Table,
    /// Rows updated (over every process that worked on it in this run).
    pub rows: u64,
    /// Last key reached (exclusive upper bound of the work done).
    pub next_key: Option<i64>,
}

/// The cursor a [`Backfill`] journals after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillCursor {
    /// The next key to process.
    pub next: i64,
    /// Rows updated so far.
    pub rows: u64,
}

/// A data backfill: `UPDATE <table> SET <assignments> WHERE <key> BETWEEN lo AND hi [AND
/// <filter>]`, batch after batch of at most `batch_size` keys in key order, each batch in
/// its own short transaction with `lock_timeout` / `statement_timeout` guards, a pause of
/// `throttle` between batches, and a progress event (`ctx.progress`) after each.
///
/// **Resumable.** Each batch records its upper key in
/// `_rollback.backfill_progress(run_id, step_id, next_key, rows_done)` in the batch's own
/// transaction (so a batch is never counted without having run), and then journals the
/// same cursor with [`Context::save_cursor`]. After a crash, a fresh process resumes from
/// the later of the two. A batch that committed but whose cursor was not journaled yet is
/// not run again. Transient batch errors (lock timeout, dropped connection) are retried
/// in place, from the recorded cursor.
///
/// **Requirements.** The key is a single integer column (`smallint`, `integer`, `bigint`)
/// with an index (normally the primary key). The assignments must be a pure function of
/// the row's other columns (e.g. `first_name = split_part(name, ' ', 1)`), so that a batch
/// run twice gives the same rows.
///
/// **User fragments.** `set` and [`Backfill::filter`] are spliced into the `UPDATE` this
/// step writes, so each must be exactly one fragment of its kind: the filter one condition
/// (it goes in parentheses, and a `)` closing one it did not open — `id <= 0) OR (true` —
/// would escape them), `set` one assignment list (no top-level `WHERE`, `FROM` or
/// `RETURNING`); neither may hold a `;` or leave a literal, quoted identifier or comment
/// open; the key and the table must be names (they are quoted). [`Backfill::check`] tests
/// this, and `apply` then has the server plan the statement (`EXPLAIN`, nothing runs)
/// before anything is written: a fragment that breaks either test is refused with
/// [`Error::Invalid`]. They run with the database's own `search_path`; the rest of the
/// statement names every operator and type with its schema.
///
/// **Undo.** The step is [`Reversibility::RestoreOnly`]: its old values are not kept, so
/// a [`crate::TableSnapshot`] of the table (or of a set holding it) must cover it; its
/// [`touches`](Step::touches) names the table's resource (or the resource given with
/// [`Backfill::touching`]). `revert` only clears the step's bookkeeping.
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_postgres::{Backfill, Database, Table};
/// use std::time::Duration;
/// let db = Database::connect("postgres://postgres@127.0.0.1:55432/shop")?;
/// let fill = Backfill::new(
///     &db,
///     "fill-names",
///     Table::public("customers"),
///     "id",
///     "first_name = split_part(name, ' ', 1), last_name = split_part(name, ' ', 2)",
/// )
/// .filter("first_name IS NULL")
/// .batch_size(5_000)
/// .throttle(Duration::from_millis(20));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Backfill {
    db: Database,
    id: String,
    table: Table,
    key: String,
    set: String,
    filter: Option<String>,
    batch_size: u64,
    throttle: Duration,
    lock_timeout: Duration,
    statement_timeout: Duration,
    batch_retries: u32,
    touches: Vec<String>,
    marker_schema: String,
    ready: OnceCell<()>,
}

impl Backfill {
    /// A backfill of `table`, keyed by integer column `key`, running `SET set`.
    pub fn new(
        db: &Database,
        id: impl Into<String>,
        table: Table,
        key: impl Into<String>,
        set: impl Into<String>,
    ) -> Self {
        Backfill {
            touches: vec![db.table_resource(&table)],
            db: db.clone(),
            id: id.into(),
            table,
            key: key.into(),
            set: set.into(),
            filter: None,
            batch_size: 10_000,
            throttle: Duration::ZERO,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            batch_retries: 5,
            marker_schema: DEFAULT_MARKER_SCHEMA.into(),
            ready: OnceCell::new(),
        }
    }

    /// Only update rows matching this SQL condition (ANDed to the key range).
    pub fn filter(mut self, condition: impl Into<String>) -> Self {
        self.filter = Some(condition.into());
        self
    }

    /// Keys per batch (default 10 000).
    pub fn batch_size(mut self, n: u64) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Pause between batches (default none).
    pub fn throttle(mut self, d: Duration) -> Self {
        self.throttle = d;
        self
    }

    /// `lock_timeout` per batch (default 5 s).
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }

    /// `statement_timeout` per batch (default 60 s).
    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = d;
        self
    }

    /// Retries of one batch after a transient error (default 5).
    pub fn batch_retries(mut self, n: u32) -> Self {
        self.batch_retries = n;
        self
    }

    /// Name the resource that covers the table (e.g. a multi-table
    /// [`crate::TableSnapshot`]'s) instead of the table's own.
    pub fn touching(mut self, resource: impl Into<String>) -> Self {
        self.touches = vec![resource.into()];
        self
    }

    /// Keep bookkeeping in another schema (default [`DEFAULT_MARKER_SCHEMA`]).
    pub fn marker_schema(mut self, schema: impl Into<String>) -> Self {
        self.marker_schema = schema.into();
        self
    }

    async fn ready(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| markers::ensure(&self.db, &self.marker_schema))
            .await
            .map(|_| ())
    }

    /// Check the user fragments (see "User fragments" above) without the server: names
    /// usable as identifiers, `set` one assignment list, the filter one condition.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the fragment and what is wrong with it.
    pub fn check(&self) -> Result<()> {
        self.table.check()?;
        crate::ident::check_ident("key column", &self.key)?;
        crate::ident::check_ident("schema", &self.marker_schema)?;
        let fragments = [
            ("set", Some(&self.set), sqlscan::Fragment::Assignments),
            ("filter", self.filter.as_ref(), sqlscan::Fragment::Condition),
        ];
        for (what, sql, kind) in fragments {
            let Some(sql) = sql else { continue };
            if let Some(why) = sqlscan::fragment_problem(sql, kind) {
                return Err(Error::invalid(format!(
                    "backfill {}: {what} {sql:?} is not one {}: {why}",
                    self.id,
                    match kind {
                        sqlscan::Fragment::Assignments => "assignment list",
                        sqlscan::Fragment::Condition => "condition",
                    }
                )));
            }
        }
        Ok(())
    }

    /// The batch `UPDATE`, for keys `$1 ..= $2`. Fragments end with a newline, so that a
    /// trailing line comment cannot swallow what follows them.
    fn update_sql(&self) -> String {
        let k = quote_ident(&self.key);
        let filter = self
            .filter
            .as_ref()
            .map(|f| format!(" AND ({f}\n)"))
            .unwrap_or_default();
        format!(
            "UPDATE {t} SET {set}\n WHERE {k} OPERATOR(pg_catalog.>=) $1::pg_catalog.int8 \
             AND {k} OPERATOR(pg_catalog.<=) $2::pg_catalog.int8{filter}",
            t = self.table.quoted(),
            set = self.set,
        )
    }

    /// Have the server plan the batch statement (nothing runs): the fragments must parse,
    /// name existing columns and type-check; the key must be an integer column.
    async fn check_with_server(&self) -> Result<()> {
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .ctx("checking the backfill")?;
        let key_type: Option<String> = tx
            .query_opt(
                "SELECT pg_catalog.format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2 AND a.attnum > 0 \
                   AND NOT a.attisdropped",
                &[&self.table.quoted(), &self.key],
            )
            .await
            .ctx("reading the backfill key's type")?
            .map(|r| r.get(0));
        match key_type.as_deref() {
            Some("smallint" | "integer" | "bigint") => {}
            Some(other) => {
                return Err(Error::invalid(format!(
                    "backfill {}: key {}.{} is {other}, not an integer column",
                    self.id, self.table, self.key
                )))
            }
            None => {
                return Err(Error::invalid(format!(
                    "backfill {}: no key column {:?} in {} (or no such table)",
                    self.id, self.key, self.table
                )))
            }
        }
        tx.batch_execute(&crate::db::user_settings_sql(true))
            .await
            .ctx("setting the database's search path")?;
        let planned = tx
            .execute(
                &format!("EXPLAIN (COSTS OFF) {}", self.update_sql()),
                &[&0i64, &0i64],
            )
            .await;
        if let Err(e) = planned {
            let pe = PgError::new(format!("backfill {}: planning its UPDATE", self.id), &e);
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            // A missing privilege is the role's, not the fragments' fault.
            if code == "42501" || pe.class() != Class::Permanent {
                return Err(pe.into_core(false));
            }
            return Err(Error::invalid(format!(
                "backfill {}: set {:?}{} does not make a valid UPDATE: {pe}",
                self.id,
                self.set,
                self.filter
                    .as_ref()
                    .map(|f| format!(" with filter {f:?}"))
                    .unwrap_or_default()
            )));
        }
        tx.rollback().await.ctx("ending the backfill check")
    }

    async fn recorded(&self, run: &str) -> Result<Option<BackfillCursor>> {
        let c = self.db.lib_client().await?;
        let row = markers::progress(&**c, &self.marker_schema, run, &self.id)
            .await
            .ctx("reading backfill progress")?;
        Ok(row.and_then(|(next, rows)| {
            next.map(|next| BackfillCursor {
                next,
                rows: rows.max(0) as u64,
            })
        }))
    }

    /// One batch from `lo`: returns the new cursor, or `None` when nothing is left.
    async fn batch(
        &self,
        ctx: &Context,
        lo: i64,
        rows: u64,
    ) -> std::result::Result<Option<BackfillCursor>, BatchError> {
        let run = ctx.run_id();
        let mut obj = self.db.lib_client().await.map_err(|e| {
            let class = if e.is_transient() {
                Class::Connection
            } else {
                Class::Permanent
            };
            PgError::other("connecting", e.to_string(), class)
        })?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .transaction()
            .await
            .map_err(|e| PgError::new("starting batch", &e))?;
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'",
            self.lock_timeout.as_millis().max(1),
            self.statement_timeout.as_millis().max(1)
        ))
        .await
        .map_err(|e| PgError::new("setting timeouts", &e))?;
        // The batch commits only while this runner holds the newest epoch.
        markers::fence(&tx, &self.marker_schema, ctx)
            .await
            .map_err(BatchError::Refused)?;
        markers::abort_if_idle(&tx, ctx)
            .await
            .map_err(BatchError::Refused)?;
        markers::attribute(&tx, ctx, true)
            .await
            .map_err(BatchError::Refused)?;
        let k = quote_ident(&self.key);
        let t = self.table.quoted();
        let hi: Option<i64> = tx
            .query_one(
                &format!(
                    "SELECT max(k)::bigint FROM (SELECT {k} AS k FROM {t} WHERE {k} >= $1::bigint ORDER BY {k} LIMIT $2::bigint) s"
                ),
                &[&lo, &(self.batch_size as i64)],
            )
            .await
            .map_err(|e| PgError::new("finding the batch's upper key", &e))?
            .get(0);
        let Some(hi) = hi else {
            return Ok(None);
        };
        // The fragments see the database's own search path; the library's SQL around them
        // names its operators and types.
        tx.batch_execute(&crate::db::user_settings_sql(true))
            .await
            .map_err(|e| PgError::new("setting the database's search path", &e))?;
        let n = tx
            .execute(&self.update_sql(), &[&lo, &hi])
            .await
            .map_err(|e| PgError::new(format!("backfill {} batch [{lo}, {hi}]", self.id), &e))?;
        tx.batch_execute(&crate::db::library_settings_sql(true))
            .await
            .map_err(|e| PgError::new("setting the library's search path", &e))?;
        let next = hi.saturating_add(1);
        let total = rows + n;
        markers::record_progress(&tx, &self.marker_schema, run, &self.id, next, total as i64)
            .await
            .map_err(|e| PgError::new("recording backfill progress", &e))?;
        tx.commit()
            .await
            .map_err(|e| PgError::new("committing batch", &e))?;
        Ok(Some(BackfillCursor { next, rows: total }))
    }

    async fn estimate(&self) -> Result<Option<u64>> {
        let c = self.db.lib_client().await?;
        let est: i64 = c
            .query_one(
                &format!(
                    "SELECT greatest(reltuples, 0)::bigint FROM pg_catalog.pg_class WHERE oid = {}::regclass",
                    self.table.regclass_literal()
                ),
                &[],
            )
            .await
            .ctx("estimating table size")?
            .get(0);
        if est > 0 {
            return Ok(Some(est as u64));
        }
        let n: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {}", self.table.quoted()),
                &[],
            )
            .await
            .ctx("counting rows")?
            .get(0);
        Ok(Some(n.max(0) as u64))
    }
}

#[async_trait]
impl Step for Backfill {
    fn id(&self) -> &str {
        &self.id
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::RestoreOnly
    }

    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }

    /// The columns `set` assigns, in the table's own resource: a backfill updates rows
    /// and neither inserts nor deletes any. A plan then sees that a backfill of a column
    /// an earlier step creates (see [`crate::SqlStep::creates_column`]) is undone by that
    /// step's revert. When the columns cannot be named exactly (a quoted target) or the
    /// backfill touches another resource, it writes anywhere in it.
    fn effects(&self) -> Vec<Effect> {
        let own = self.db.table_resource(&self.table);
        match sqlscan::assignment_targets(&self.set) {
            Some(cols) if self.touches == [own.clone()] => cols
                .iter()
                .map(|c| Effect::writes(own.clone(), Some(c)))
                .collect(),
            _ => self
                .touches
                .iter()
                .map(|t| Effect::writes(t.clone(), None))
                .collect(),
        }
    }

    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "pg.backfill",
            "table": self.table,
            "key": self.key,
            "set": self.set,
            "filter": self.filter,
            "batch_size": self.batch_size,
        })
    }

    fn describe(&self) -> String {
        format!(
            "backfill {} SET {} in batches of {}",
            self.table, self.set, self.batch_size
        )
    }

    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        self.check()?;
        self.check_with_server().await?;
        self.ready().await?;
        let run = ctx.run_id();
        {
            let c = self.db.lib_client().await?;
            if let Some((_, r)) = markers::read(&**c, &self.marker_schema, run, &self.id)
                .await
                .ctx("reading the step marker")?
            {
                return Ok(Receipt(r));
            }
        }
        let journaled: Option<BackfillCursor> = ctx
            .cursor()
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let recorded = self.recorded(run).await?;
        let mut cursor = match (journaled, recorded) {
            (Some(a), Some(b)) => Some(if b.next >= a.next { b } else { a }),
            (a, b) => a.or(b),
        };
        if let Some(c) = cursor {
            tracing::info!(step = %self.id, next = c.next, rows = c.rows, "resuming backfill");
        }
        let total = self.estimate().await?;
        let started = Instant::now();
        let mut lo = match cursor {
            Some(c) => c.next,
            None => {
                let c = self.db.lib_client().await?;
                let min: Option<i64> = c
                    .query_one(
                        &format!(
                            "SELECT min({})::bigint FROM {}",
                            quote_ident(&self.key),
                            self.table.quoted()
                        ),
                        &[],
                    )
                    .await
                    .ctx("finding the first key")?
                    .get(0);
                min.unwrap_or(0)
            }
        };
        let mut rows = cursor.map(|c| c.rows).unwrap_or(0);
        let mut any_done = cursor.is_some();
        loop {
            if ctx.is_cancelled() {
                return Err(Error::Cancelled);
            }
            ctx.ensure_lease().await?;
            let mut attempt = 0;
            let res = loop {
                match self.batch(ctx, lo, rows).await {
                    Ok(r) => break Ok(r),
                    Err(BatchError::Pg(e))
                        if e.class() != Class::Permanent && attempt < self.batch_retries =>
                    {
                        attempt += 1;
                        tracing::warn!(step = %self.id, error = %e, attempt, "backfill batch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
                        // A batch whose COMMIT was lost may have committed: re-read the cursor.
                        if let Ok(Some(c)) = self.recorded(run).await {
                            if c.next > lo {
                                lo = c.next;
                                rows = c.rows;
                                any_done = true;
                            }
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            let next = match res {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(BatchError::Pg(e)) => return Err(e.into_core(any_done)),
                Err(BatchError::Refused(e)) => return Err(e),
            };
            any_done = true;
            cursor = Some(next);
            lo = next.next;
            rows = next.rows;
            ctx.save_cursor(serde_json::to_value(next).unwrap_or_default())
                .await?;
            ctx.progress(&self.id, rows, total, "rows");
            if !self.throttle.is_zero() {
                tokio::time::sleep(self.throttle).await;
            }
        }
        let receipt = Receipt::new(&BackfillReceipt {
            table: self.table.clone(),
            rows,
            next_key: cursor.map(|c| c.next),
        });
        let json = receipt.0.to_string();
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client.transaction().await.ctx("finishing backfill")?;
        markers::fence(&tx, &self.marker_schema, ctx).await?;
        markers::insert_if_absent(
            &tx,
            &self.marker_schema,
            run,
            &self.id,
            &json,
            markers::State::Applied,
        )
        .await
        .ctx("writing the step marker")?;
        tx.commit()
            .await
            .map_err(|e| PgError::new("finishing backfill", &e).into_core(true))?;
        tracing::info!(step = %self.id, rows, ms = started.elapsed().as_millis() as u64, "backfill done");
        Ok(receipt)
    }

    async fn revert(&self, _receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        self.ready().await?;
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let c = client.transaction().await.ctx("starting backfill revert")?;
        // The rows are the checkpoint's to restore; this forgets the run's bookkeeping, and
        // raises the fence so a paused older runner's next batch cannot commit.
        markers::fence(&c, &self.marker_schema, ctx).await?;
        markers::clear_progress(&c, &self.marker_schema, ctx.run_id(), &self.id)
            .await
            .ctx("clearing backfill progress")?;
        markers::delete(&c, &self.marker_schema, ctx.run_id(), &self.id)
            .await
            .ctx("clearing the step marker")?;
        c.commit().await.ctx("committing backfill revert")
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// The server said no (retried when transient).
    Pg(PgError),
    /// Refused before writing anything (fenced off): never retried.
    Refused(Error),
}

impl From<PgError> for BatchError {
    fn from(e: PgError) -> Self {
        BatchError::Pg(e)
    }
}
