//! [`SqlStep`]: a migration step of `up` and `down` SQL, applied exactly once per run.

mod run;

use super::{DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT};
use crate::db::Database;
use crate::error::{PgError, PgResultExt};
use crate::ident::{quote_ident, Table};
use crate::markers::DEFAULT_MARKER_SCHEMA;
use crate::sqlscan;
use async_trait::async_trait;
use rollback_core::{Context, Digest, Effect, Error, Receipt, Result, Reversibility, Step};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::OnceCell;

/// How a [`SqlStep`] runs its SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxMode {
    /// `up` (or `down`) and the marker row in one transaction (the default).
    Transactional,
    /// Statement by statement outside a transaction, for `CREATE INDEX CONCURRENTLY` and
    /// friends; see [`SqlStep`].
    NonTransactional,
}

/// What an applied [`SqlStep`] remembers (its receipt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlReceipt {
    /// The run.
    pub run_id: String,
    /// The step.
    pub step_id: String,
    /// How it ran.
    pub mode: TxMode,
    /// blake3 of the `up` SQL that ran.
    pub up_digest: Digest,
}

/// A step made of `up` SQL and (optionally) `down` SQL.
///
/// **Exactly once.** In the default transactional mode, `up` runs in one transaction with
/// an insert into `_rollback.applied_steps(run_id, step_id, receipt, applied_at)`, after
/// `pg_advisory_xact_lock` on the (run, step) pair and a look at that table: a second
/// `apply` in the same run (a retry, a resumed run, another process) finds the marker and
/// returns the recorded receipt without running anything, and the step can never be
/// recorded without having run. `revert` runs `down` and deletes the marker in one
/// transaction; without a marker it does nothing (reverting twice, or reverting a step
/// that never ran, is a no-op). When the connection breaks during `COMMIT`, `apply` looks
/// for the marker on a new connection to learn whether it committed.
///
/// **Lock and statement guards.** Every transaction starts with `SET LOCAL lock_timeout`
/// (default 5 s) and `SET LOCAL statement_timeout` (default 60 s), so a migration never
/// holds a queue of traffic behind a lock it waits for. A lock timeout, statement timeout,
/// deadlock, serialization failure or dropped connection is a
/// [`Error::Transient`] that the executor retries (the transaction was rolled back, so
/// `maybe_applied` is false).
///
/// **Non-transactional statements.** A script holding `CREATE/DROP INDEX CONCURRENTLY`,
/// `REINDEX … CONCURRENTLY`, `VACUUM`, `ALTER SYSTEM`, `CREATE/DROP DATABASE` or
/// `DETACH PARTITION … CONCURRENTLY` (or any script after
/// [`SqlStep::non_transactional`]) runs statement by statement in autocommit. The marker
/// is then written as `applying` before the first statement and turned into `applied`
/// after the last, so a crash in between is seen by `revert(None)`, which runs `down`.
/// Such statements must be idempotent on their own (`IF NOT EXISTS`, `IF EXISTS`): a
/// retried apply runs them again. Before `CREATE INDEX CONCURRENTLY name`, an invalid
/// index of that name left by an interrupted build is dropped, so `IF NOT EXISTS` does not
/// keep a broken index. Errors in this mode say `maybe_applied`.
///
/// **Destructive statements.** `up` is scanned (comments and literals skipped) for
/// `DROP TABLE / SCHEMA / DATABASE / SEQUENCE / MATERIALIZED VIEW / OWNED`, `TRUNCATE`,
/// `DELETE`, `ALTER TABLE … DROP [COLUMN]` and `ALTER COLUMN … TYPE` to any type but
/// `text` or unbounded `varchar` (the scanner cannot see the old type, so it assumes a
/// narrowing). A step with such a statement, or with no `down`, declares
/// [`Reversibility::RestoreOnly`]: the plan then needs a checkpoint of every resource in
/// [`touches`](Step::touches) (e.g. a [`crate::TableSnapshot`]), and revert only clears the
/// marker. [`SqlStep::approve_destructive`] together with a `down` declares it
/// [`Reversibility::Compensable`] instead: the author vouches that `down` undoes it.
/// `UPDATE` is not flagged: its `down` must restore the old values.
///
/// **Runs.** Markers are per run id ([`Context::run_id`]); outside an executor, give each
/// logical run its own [`Context::standalone`] id. Markers of restore-only steps stay after
/// a rollback (the executor does not revert them; the checkpoint does): they only record
/// that the run applied them.
///
/// **Refused statements** ([`SqlStep::check`], also run by `apply` and `revert` before
/// anything else, failing with [`Error::Invalid`] naming the statement):
/// - transaction control (`BEGIN`, `COMMIT`, `SAVEPOINT`…): it would commit part of a step
///   without its marker;
/// - anything that changes the session beyond the step's transaction — session-level
///   `SET` (use `SET LOCAL`), `RESET`, `SET ROLE` and `SET SESSION AUTHORIZATION` (use
///   `SET LOCAL ROLE`), `SET SESSION CHARACTERISTICS`, `DISCARD ALL`: on a pooled
///   connection it would outlive the step and reach whatever runs next (a later step
///   writing with `session_replication_role = replica` escapes an undo log); for settings
///   in non-transactional mode, where `SET LOCAL` does nothing, use [`SqlStep::setting`];
/// - `SET [LOCAL] standard_conforming_strings` and `SET [LOCAL] session_replication_role`:
///   the first would make the server read the rest of the script otherwise than the
///   scanner does, the second silences triggers (an undo log's) and foreign keys.
///
/// Statements hidden from the scanner (`set_config(…)`, a `DO` block) are not refused;
/// the session is reset before anything else uses the connection (see
/// [`Database`](crate::Database)).
///
/// **Settings.** `up` and `down` run with the database's own `search_path` and
/// `row_security`, and with the settings every session of this crate pins
/// (`standard_conforming_strings = on`, `check_function_bodies = on`,
/// `session_replication_role = origin`…: see [`Database`](crate::Database)).
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_core::Step;
/// use rollback_postgres::{Database, SqlStep, Table};
/// let db = Database::connect("postgres://postgres@127.0.0.1:55432/shop")?;
/// let step = SqlStep::new(&db, "add-email", "ALTER TABLE customers ADD COLUMN email text")
///     .down("ALTER TABLE customers DROP COLUMN IF EXISTS email")
///     .touches_table(&Table::public("customers"));
/// assert_eq!(step.reversibility(), rollback_core::Reversibility::Compensable);
/// let drop = SqlStep::new(&db, "drop-fax", "ALTER TABLE customers DROP COLUMN fax")
///     .touches_table(&Table::public("customers"));
/// assert_eq!(drop.reversibility(), rollback_core::Reversibility::RestoreOnly);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SqlStep {
    db: Database,
    id: String,
    up: String,
    down: Option<String>,
    touches: Vec<String>,
    lock_timeout: Duration,
    statement_timeout: Duration,
    force_non_tx: bool,
    /// Bookkeeping SQL of this crate run after `up` / `down` in the same transaction (a
    /// migration tool's ledger row): written by the crate, so never scanned.
    bookkeeping: Option<(String, String)>,
    /// A query of this crate run before `up` in the same transaction (after the step's
    /// marker is checked): a row whose first column is not null says why the step must
    /// not run ([`Error::Conflict`]), e.g. a migration another runner has recorded.
    guard: Option<String>,
    /// Outside a transaction: SQL taking and releasing a session-level lock held from the
    /// guard to the end of the bookkeeping (the guard's own lock is transaction-level).
    guard_session_lock: Option<(String, String)>,
    approved: Option<String>,
    marker_schema: String,
    settings: Vec<(String, String)>,
    creates: Vec<Created>,
    writes: Vec<(Table, String)>,
    ready: OnceCell<()>,
}

/// An object a step declares it creates (and its `down` removes).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Created {
    Column(Table, String),
    Table(Table),
}

impl std::fmt::Display for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Created::Column(t, c) => write!(f, "column {} of {t}", quote_ident(c)),
            Created::Table(t) => write!(f, "table {t}"),
        }
    }
}

impl SqlStep {
    /// A step `id` running `up`.
    pub fn new(db: &Database, id: impl Into<String>, up: impl Into<String>) -> Self {
        SqlStep {
            db: db.clone(),
            id: id.into(),
            up: up.into(),
            down: None,
            touches: Vec::new(),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            force_non_tx: false,
            bookkeeping: None,
            guard: None,
            guard_session_lock: None,
            approved: None,
            marker_schema: DEFAULT_MARKER_SCHEMA.into(),
            settings: Vec::new(),
            creates: Vec::new(),
            writes: Vec::new(),
            ready: OnceCell::new(),
        }
    }

    fn touch_table(&mut self, table: &Table) -> String {
        let r = self.db.table_resource(table);
        if !self.touches.contains(&r) {
            self.touches.push(r.clone());
        }
        r
    }

    /// Declare that `up` adds `column` to `table` and `down` drops it (an
    /// [`Effect::Creates`]): a later restore-only step that writes only that column — a
    /// [`crate::Backfill`] of it — is then undone by this step's revert, with no restore
    /// that would discard the application's writes to the table (see
    /// [`Plan::undo`](rollback_core::Plan::undo)). The step checks the declaration: after
    /// `up` the column must exist and after `down` it must not, or the step fails (inside
    /// its transaction, when it has one).
    ///
    /// ```no_run
    /// # fn demo(db: rollback_postgres::Database) {
    /// use rollback_postgres::{Backfill, SqlStep, Table};
    /// let customers = Table::public("customers");
    /// let add = SqlStep::new(&db, "add-tier", "ALTER TABLE customers ADD COLUMN tier text")
    ///     .down("ALTER TABLE customers DROP COLUMN tier")
    ///     .creates_column(&customers, "tier");
    /// let fill = Backfill::new(&db, "fill-tier", customers, "id", "tier = 'basic'");
    /// // A plan with `fill` after `add` undoes `fill` by `add`'s revert: the dry run says
    /// // "undone by compensation of add-tier", and no checkpoint of customers is needed.
    /// # }
    /// ```
    pub fn creates_column(mut self, table: &Table, column: impl Into<String>) -> Self {
        self.touch_table(table);
        self.creates
            .push(Created::Column(table.clone(), column.into()));
        self
    }

    /// Declare that `up` creates `table` and `down` drops it: everything later steps
    /// write into it is undone by this step's revert. Checked like
    /// [`SqlStep::creates_column`].
    pub fn creates_table(mut self, table: &Table) -> Self {
        self.touch_table(table);
        self.creates.push(Created::Table(table.clone()));
        self
    }

    /// Declare that `up` writes only these columns of `table` (rows it updates; it inserts
    /// and deletes none). Without a declaration a step writes anywhere in what it touches.
    pub fn writes_columns<S: AsRef<str>>(mut self, table: &Table, columns: &[S]) -> Self {
        self.touch_table(table);
        for c in columns {
            self.writes.push((table.clone(), c.as_ref().to_string()));
        }
        self
    }

    /// Check that every object this step declares it creates exists (`present`) or does
    /// not (after `down`).
    async fn check_created<C: tokio_postgres::GenericClient>(
        &self,
        c: &C,
        present: bool,
    ) -> Result<()> {
        for obj in &self.creates {
            let exists: bool = match obj {
                Created::Column(t, col) => c
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
                         WHERE attrelid = pg_catalog.to_regclass($1) AND attname = $2 \
                           AND attnum > 0 AND NOT attisdropped)",
                        &[&t.quoted(), col],
                    )
                    .await
                    .ctx("checking a declared column")?
                    .get(0),
                Created::Table(t) => c
                    .query_one(
                        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                        &[&t.quoted()],
                    )
                    .await
                    .ctx("checking a declared table")?
                    .get(0),
            };
            if exists != present {
                let found = if present {
                    "it does not exist after `up`"
                } else {
                    "it still exists after `down`"
                };
                return Err(Error::invalid(format!(
                    "step {}: declares that it creates {obj}, but {found} (the plan relies on \
                     the declaration to undo later steps without a restore)",
                    self.id
                )));
            }
        }
        Ok(())
    }

    /// Run `up` and `down` with a setting, e.g. `("maintenance_work_mem", "2GB")` before a
    /// `CREATE INDEX CONCURRENTLY`: `SET LOCAL` in a transactional step, a session setting
    /// of the step's dedicated session in a non-transactional one (where `SET LOCAL` does
    /// nothing and a session-level `SET` in the script is refused). The value is passed as
    /// a parameter (`set_config`), never spliced into SQL. Settings this crate pins,
    /// `role` and `session_authorization` are refused by [`SqlStep::check`].
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// The SQL that undoes `up`.
    pub fn down(mut self, sql: impl Into<String>) -> Self {
        self.down = Some(sql.into());
        self
    }

    /// Declare a resource id this step changes (e.g. a [`crate::TableSnapshot`]'s
    /// resource).
    pub fn touching(mut self, resource: impl Into<String>) -> Self {
        self.touches.push(resource.into());
        self
    }

    /// Declare that this step changes `table` (resource `postgres:<db>/<schema>.<table>`).
    pub fn touches_table(self, table: &Table) -> Self {
        let r = self.db.table_resource(table);
        self.touching(r)
    }

    /// `lock_timeout` (default [`DEFAULT_LOCK_TIMEOUT`]).
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }

    /// `statement_timeout` (default [`DEFAULT_STATEMENT_TIMEOUT`]).
    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = d;
        self
    }

    /// Run statement by statement outside a transaction even if no statement needs it.
    pub fn non_transactional(mut self) -> Self {
        self.force_non_tx = true;
        self
    }

    /// Vouch that `down` undoes `up` although `up` holds destructive statements, making the
    /// step compensable. The reason is kept in the step's spec (and so in the plan digest).
    pub fn approve_destructive(mut self, reason: impl Into<String>) -> Self {
        self.approved = Some(reason.into());
        self
    }

    /// SQL of this crate's own that runs right after `up` (and after `down`), in the same
    /// transaction where the step has one: a migration tool's ledger write. It is in the
    /// step's spec but not scanned (it is not the user's).
    pub(crate) fn bookkeeping(mut self, after_up: String, after_down: String) -> Self {
        self.bookkeeping = Some((after_up, after_down));
        self
    }

    /// A query of this crate's own run before `up`, in the step's transaction where it has
    /// one (locks it takes are held until the step commits): a row whose first column is
    /// not null is why the step must not run, and `apply` fails with [`Error::Conflict`]
    /// before `up` runs. Not scanned (it is not the user's).
    ///
    /// Outside a transaction, `lock` runs first and `unlock` after the bookkeeping (or the
    /// failure), so the lock is held while `up` runs there too.
    pub(crate) fn guard(mut self, sql: String, lock: String, unlock: String) -> Self {
        self.guard = Some(sql);
        self.guard_session_lock = Some((lock, unlock));
        self
    }

    /// Run the guard (see [`SqlStep::guard`]) on `c`.
    async fn check_guard<C: tokio_postgres::GenericClient>(&self, c: &C) -> Result<()> {
        let Some(sql) = &self.guard else {
            return Ok(());
        };
        let msgs = c
            .simple_query(sql)
            .await
            .map_err(|e| PgError::new(format!("step {}: guard", self.id), &e).into_core(false))?;
        for m in msgs {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                if let Some(why) = r.get(0) {
                    return Err(Error::conflict(format!("step {}: {why}", self.id)));
                }
            }
        }
        Ok(())
    }

    /// Keep markers in another schema (default [`DEFAULT_MARKER_SCHEMA`]).
    pub fn marker_schema(mut self, schema: impl Into<String>) -> Self {
        self.marker_schema = schema.into();
        self
    }

    /// The destructive statements found in `up`, with what makes them so.
    pub fn destructive_statements(&self) -> Vec<(String, String)> {
        sqlscan::split(&self.up)
            .iter()
            .filter_map(|s| sqlscan::destructive(s).map(|why| (why, s.text.clone())))
            .collect()
    }

    /// How the step runs.
    pub fn mode(&self) -> TxMode {
        let needs = sqlscan::split(&self.up)
            .iter()
            .chain(sqlscan::split(self.down.as_deref().unwrap_or("")).iter())
            .any(|s| sqlscan::non_transactional(s).is_some());
        if needs || self.force_non_tx {
            TxMode::NonTransactional
        } else {
            TxMode::Transactional
        }
    }

    /// Check the step can run: no transaction control, no statement that changes the
    /// session beyond the step's transaction or a setting this crate pins, and no
    /// [`SqlStep::setting`] of a pinned setting, `role` or `session_authorization` (see
    /// "Refused statements" above). `apply` and `revert` run it before anything else; call
    /// it when building a plan to fail earlier.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the statement (or setting) and why.
    pub fn check(&self) -> Result<()> {
        for (what, sql) in [("up", Some(&self.up)), ("down", self.down.as_ref())] {
            let Some(sql) = sql else { continue };
            for st in sqlscan::split(sql) {
                if sqlscan::transaction_control(&st) {
                    return Err(Error::invalid(format!(
                        "step {}: {what} controls the transaction ({}); the step runs in its own transaction",
                        self.id,
                        short(&st.text)
                    )));
                }
                if let Some(why) = sqlscan::session_state(&st) {
                    return Err(Error::invalid(format!(
                        "step {}: {what} changes the session beyond the step ({}: {why}); it would leak into later users of the connection",
                        self.id,
                        short(&st.text)
                    )));
                }
            }
        }
        for (name, _) in &self.settings {
            let n = name.to_ascii_lowercase();
            if [
                "standard_conforming_strings",
                "session_replication_role",
                "role",
                "session_authorization",
            ]
            .contains(&n.as_str())
            {
                return Err(Error::invalid(format!(
                    "step {}: setting {name} cannot be set for a step (a setting this crate pins, or the session's identity)",
                    self.id
                )));
            }
        }
        Ok(())
    }
}

fn short(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line.chars().take(60).collect();
    if one_line.chars().count() > 60 {
        out.push('…');
    }
    out
}

#[async_trait]
impl Step for SqlStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn reversibility(&self) -> Reversibility {
        let destructive = !self.destructive_statements().is_empty();
        match (&self.down, destructive, &self.approved) {
            (Some(_), false, _) | (Some(_), true, Some(_)) => Reversibility::Compensable,
            _ => Reversibility::RestoreOnly,
        }
    }

    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }

    fn effects(&self) -> Vec<Effect> {
        let mut out: Vec<Effect> = self
            .creates
            .iter()
            .map(|c| match c {
                Created::Column(t, col) => Effect::creates(self.db.table_resource(t), Some(col)),
                Created::Table(t) => Effect::creates(self.db.table_resource(t), None),
            })
            .collect();
        out.extend(
            self.writes
                .iter()
                .map(|(t, col)| Effect::writes(self.db.table_resource(t), Some(col))),
        );
        for t in &self.touches {
            if !out.iter().any(|e| e.resource() == t) {
                out.push(Effect::writes(t.clone(), None));
            }
        }
        out
    }

    fn spec(&self) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "kind": "pg.sql",
            "up": self.up,
            "down": self.down,
            "mode": self.mode(),
            "lock_timeout_ms": self.lock_timeout.as_millis() as u64,
            "statement_timeout_ms": self.statement_timeout.as_millis() as u64,
            "approved_destructive": self.approved,
        });
        if !self.settings.is_empty() {
            spec["settings"] = serde_json::json!(self.settings);
        }
        if let Some((after_up, after_down)) = &self.bookkeeping {
            spec["bookkeeping"] = serde_json::json!({ "up": after_up, "down": after_down });
        }
        if let Some(guard) = &self.guard {
            spec["guard"] = serde_json::json!(guard);
        }
        spec
    }

    fn describe(&self) -> String {
        let d = self.destructive_statements();
        let mut s = format!("SQL {}: {}", self.id, short(&self.up));
        if !d.is_empty() {
            s.push_str(&format!(
                " [destructive: {}]",
                d.iter()
                    .map(|(w, _)| w.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.mode() == TxMode::NonTransactional {
            s.push_str(" [non-transactional]");
        }
        s
    }

    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        self.check()?;
        self.ready().await?;
        match self.mode() {
            TxMode::Transactional => self.apply_tx(ctx).await,
            TxMode::NonTransactional => self.apply_non_tx(ctx).await,
        }
    }

    async fn revert(&self, _receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        self.check()?;
        self.ready().await?;
        match self.mode() {
            TxMode::Transactional => self.revert_tx(ctx).await,
            TxMode::NonTransactional => self.revert_non_tx(ctx).await,
        }
    }
}
