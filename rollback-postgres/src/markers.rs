//! The bookkeeping tables in the `_rollback` schema: step markers, backfill cursors, and
//! the fencing epochs that keep a stale runner's writes out.

use crate::db::Database;
use crate::error::{PgError, PgResultExt};
use crate::ident::quote_ident;
use rollback_core::{Context, Error, Result};
use tokio_postgres::GenericClient;

/// The default schema of the bookkeeping tables.
pub const DEFAULT_MARKER_SCHEMA: &str = "_rollback";

/// Create the marker tables if absent (idempotent, safe under concurrency). Nothing is
/// created that exists: a schema a DBA created beforehand needs no `CREATE` privilege on
/// the database (`CREATE SCHEMA IF NOT EXISTS` would check it all the same), and tables
/// that exist need none on the schema.
pub(crate) async fn ensure(db: &Database, schema: &str) -> Result<()> {
    // A session that dies under it (terminated, restarted server) is replaced: creating
    // the tables is idempotent, and the step that needs them should not fail for it.
    let mut attempt = 0;
    loop {
        match ensure_once(db, schema).await {
            Err(e) if attempt < 2 && e.is_transient() => {
                attempt += 1;
                tracing::debug!(error = %e, "the session creating the marker tables was lost; again");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn ensure_once(db: &Database, schema: &str) -> Result<()> {
    let c = db.lib_client().await?;
    let r = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1), \
                    (SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname IN ('applied_steps', 'backfill_progress', 'fences'))",
            &[&schema],
        )
        .await
        .ctx("looking up marker tables")?;
    let (schema_exists, present): (bool, i64) = (r.get(0), r.get(1));
    if present == 3 {
        return Ok(());
    }
    let s = quote_ident(schema);
    let create_schema = if schema_exists {
        String::new()
    } else {
        format!("CREATE SCHEMA IF NOT EXISTS {s}; ")
    };
    let ddl = format!(
        "{create_schema}\
         CREATE TABLE IF NOT EXISTS {s}.applied_steps ( \
            run_id text NOT NULL, step_id text NOT NULL, receipt jsonb NOT NULL, \
            state text NOT NULL DEFAULT 'applied' CHECK (state IN ('applying', 'applied')), \
            applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_id, step_id)); \
         CREATE TABLE IF NOT EXISTS {s}.backfill_progress ( \
            run_id text NOT NULL, step_id text NOT NULL, next_key bigint, rows_done bigint NOT NULL DEFAULT 0, \
            updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_id, step_id)); \
         CREATE TABLE IF NOT EXISTS {s}.fences ( \
            key text PRIMARY KEY, epoch bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());"
    );
    // Concurrent creators may collide on the catalog's unique indexes: retry once.
    for attempt in 0..3 {
        match c.batch_execute(&ddl).await {
            Ok(()) => return Ok(()),
            Err(e)
                if attempt < 2
                    && matches!(
                        e.code().map(|c| c.code()),
                        Some("23505") | Some("42P06") | Some("42P07")
                    ) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(PgError::new("creating marker tables", &e).into_core(false)),
        }
    }
    Ok(())
}

/// The marker of (run, step): (state, receipt).
pub(crate) async fn read<C: GenericClient>(
    c: &C,
    schema: &str,
    run_id: &str,
    step_id: &str,
) -> std::result::Result<Option<(String, serde_json::Value)>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            &format!(
                "SELECT state, receipt::text FROM {}.applied_steps WHERE run_id = $1 AND step_id = $2",
                quote_ident(schema)
            ),
            &[&run_id, &step_id],
        )
        .await?;
    Ok(row.map(|r| {
        let text: String = r.get(1);
        (
            r.get(0),
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }))
}

/// The steps that have a marker in `run_id` (none when the marker table does not exist).
pub(crate) async fn steps_of_run<C: GenericClient>(
    c: &C,
    schema: &str,
    run_id: &str,
) -> std::result::Result<std::collections::BTreeSet<String>, tokio_postgres::Error> {
    let table = format!("{}.applied_steps", quote_ident(schema));
    let exists: bool = c
        .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&table])
        .await?
        .get(0);
    if !exists {
        return Ok(Default::default());
    }
    let rows = c
        .query(
            &format!("SELECT step_id FROM {table} WHERE run_id = $1"),
            &[&run_id],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What a step marker says of its step: being applied outside a transaction, or applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// `up` is running outside a transaction (or failed part-way there).
    Applying,
    /// The step is applied.
    Applied,
}

impl State {
    fn as_sql(self) -> &'static str {
        match self {
            State::Applying => "'applying'",
            State::Applied => "'applied'",
        }
    }
}

/// What [`insert`] does when (run, step) already has a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Fail (unique violation).
    Fail,
    /// Keep it as it is.
    Keep,
}

/// Record the marker of (run, step) with its receipt (JSON text) in `state`.
pub(crate) async fn insert<C: GenericClient>(
    c: &C,
    schema: &str,
    run_id: &str,
    step_id: &str,
    receipt: &str,
    state: State,
    existing: Existing,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let on_conflict = match existing {
        Existing::Fail => "",
        Existing::Keep => " ON CONFLICT (run_id, step_id) DO NOTHING",
    };
    c.execute(
        &format!(
            "INSERT INTO {}.applied_steps (run_id, step_id, receipt, state) VALUES ($1, $2, $3::text::jsonb, {}){on_conflict}",
            quote_ident(schema),
            state.as_sql()
        ),
        &[&run_id, &step_id, &receipt],
    )
    .await
}

/// Mark (run, step) applied (its `up` ran outside a transaction): a statement for
/// [`execute`].
pub(crate) const MARK_APPLIED: &str = "UPDATE {schema}.applied_steps SET state = 'applied', applied_at = now() WHERE run_id = $1 AND step_id = $2";
/// Delete the marker of (run, step): a statement for [`execute`].
pub(crate) const DELETE_MARKER: &str =
    "DELETE FROM {schema}.applied_steps WHERE run_id = $1 AND step_id = $2";
/// Forget the backfill cursor of (run, step): a statement for [`execute`].
pub(crate) const CLEAR_PROGRESS: &str =
    "DELETE FROM {schema}.backfill_progress WHERE run_id = $1 AND step_id = $2";

/// Run `statement` ([`MARK_APPLIED`], [`DELETE_MARKER`] or [`CLEAR_PROGRESS`]) on the
/// bookkeeping rows of (run, step) in `schema`.
pub(crate) async fn execute<C: GenericClient>(
    c: &C,
    schema: &str,
    statement: &str,
    run_id: &str,
    step_id: &str,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let sql = statement.replace("{schema}", &quote_ident(schema));
    c.execute(&sql, &[&run_id, &step_id]).await
}

/// The backfill cursor of (run, step): (next key, rows done).
pub(crate) async fn progress<C: GenericClient>(
    c: &C,
    schema: &str,
    run_id: &str,
    step_id: &str,
) -> std::result::Result<Option<(Option<i64>, i64)>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            &format!(
                "SELECT next_key, rows_done FROM {}.backfill_progress WHERE run_id = $1 AND step_id = $2",
                quote_ident(schema)
            ),
            &[&run_id, &step_id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Record the backfill cursor of (run, step).
pub(crate) async fn record_progress<C: GenericClient>(
    c: &C,
    schema: &str,
    run_id: &str,
    step_id: &str,
    next_key: i64,
    rows_done: i64,
) -> std::result::Result<u64, tokio_postgres::Error> {
    c.execute(
        &format!(
            "INSERT INTO {}.backfill_progress (run_id, step_id, next_key, rows_done, updated_at) VALUES ($1, $2, $3, $4, now()) \
             ON CONFLICT (run_id, step_id) DO UPDATE SET next_key = EXCLUDED.next_key, rows_done = EXCLUDED.rows_done, updated_at = now()",
            quote_ident(schema)
        ),
        &[&run_id, &step_id, &next_key, &rows_done],
    )
    .await
}

/// Serialize work on one (run, step) across processes for the rest of the transaction.
pub(crate) async fn lock_xact<C: GenericClient>(
    c: &C,
    run_id: &str,
    step_id: &str,
) -> std::result::Result<(), tokio_postgres::Error> {
    c.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('rollback-step:' || $1 || '/' || $2, 0))",
        &[&run_id, &step_id],
    )
    .await
    .map(|_| ())
}

/// [`ensure`] the bookkeeping tables when `ctx` carries a fence, for writers that keep
/// no marker of their own (checkpoint restores) but fence with [`fence`].
pub(crate) async fn ensure_for_fence(db: &Database, schema: &str, ctx: &Context) -> Result<()> {
    match ctx.fence() {
        Some(_) => ensure(db, schema).await,
        None => Ok(()),
    }
}

/// Fence the writes of the transaction `c` is in (see [`Context::fence`]): record the
/// runner's epoch for its lease key, refusing it with [`Error::Fenced`] when a newer
/// runner already wrote. The row stays locked until the transaction ends, so a fenced
/// write and a takeover's first write are serialized: whichever commits second sees the
/// other. Outside a run (no fence) it does nothing.
pub(crate) async fn fence<C: GenericClient>(c: &C, schema: &str, ctx: &Context) -> Result<()> {
    let Some(f) = ctx.fence() else {
        return Ok(());
    };
    let epoch = i64::try_from(f.epoch)
        .map_err(|_| Error::invalid(format!("fencing epoch {} does not fit a bigint", f.epoch)))?;
    let s = quote_ident(schema);
    let admitted = c
        .query_opt(
            &format!(
                "INSERT INTO {s}.fences AS f (key, epoch) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET epoch = EXCLUDED.epoch, updated_at = now() \
                 WHERE f.epoch <= EXCLUDED.epoch RETURNING f.epoch"
            ),
            &[&f.key, &epoch],
        )
        .await
        .ctx("checking the runner's fencing epoch")?;
    if admitted.is_some() {
        return Ok(());
    }
    let current: i64 = c
        .query_one(
            &format!("SELECT epoch FROM {s}.fences WHERE key = $1"),
            &[&f.key],
        )
        .await
        .ctx("reading the newest fencing epoch")?
        .get(0);
    tracing::error!(key = %f.key, epoch = f.epoch, current, "refused a write by a fenced-off runner");
    Err(f.stale(current.max(0) as u64))
}

/// Let the server end the transaction `c` is in when it stays idle for longer than the
/// runner's lease TTL: a runner paused (SIGSTOP, a frozen VM) between its statements has
/// lost its lease by then, and its open transaction would otherwise hold the fence row and
/// every row it wrote against the runner that took over. For transactions the client
/// drives statement after statement (steps, backfill batches); not for ones that wait on
/// other sessions.
pub(crate) async fn abort_if_idle<C: GenericClient>(c: &C, ctx: &Context) -> Result<()> {
    let Some(ttl) = ctx.lease_ttl() else {
        return Ok(());
    };
    let ms = ttl.as_millis().clamp(1_000, i32::MAX as u128);
    c.batch_execute(&format!(
        "SET LOCAL idle_in_transaction_session_timeout = {ms}"
    ))
    .await
    .ctx("limiting the transaction's idle time")
}

/// Attribute the writes of the transaction `c` is in (or of its session, with `local`
/// false) to the run of `ctx`: a [`crate::TableUndoLog`] records the writer with each
/// change, and its selective restore undoes the run's changes only.
pub(crate) async fn attribute<C: GenericClient>(c: &C, ctx: &Context, local: bool) -> Result<()> {
    c.execute(
        "SELECT pg_catalog.set_config($1, $2, $3)",
        &[
            &crate::checkpoint::undo_log::WRITER_SETTING,
            &ctx.run_id(),
            &local,
        ],
    )
    .await
    .ctx("attributing the step's writes to its run")?;
    Ok(())
}
