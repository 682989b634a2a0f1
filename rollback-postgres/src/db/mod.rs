//! [`Database`]: a connection pool to one PostgreSQL database, with redacted display.

mod connect;
mod tls;

pub(crate) use connect::Roots;
pub use connect::{DatabaseBuilder, SslMode};

use crate::error::{pool_error, PgResultExt};
use crate::ident::{id_part, Table};
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use rollback_core::{Error, Result};
use std::fmt;
use std::sync::Arc;
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

/// A handle on one PostgreSQL database: a connection pool plus the database's name (which
/// enters every resource id). Cheap to clone.
///
/// Its `Debug` and `Display` show `user@host:port/database` and never the password; no
/// error of this crate carries the connection string.
///
/// # Session settings
///
/// A library that runs inside a customer's database cannot rely on the server's defaults:
/// a database or role may default to `standard_conforming_strings = off`,
/// `check_function_bodies = off`, `session_replication_role = replica` or a `search_path`
/// that shadows built-in functions. So every session this crate hands out — pooled
/// ([`Database::client`]) or dedicated ([`Database::dedicated`]) — is **pinned** when it
/// is opened ([`PINNED_SETTINGS`]): `standard_conforming_strings = on` (how literals and
/// the SQL scanner read backslashes), `check_function_bodies = on`,
/// `escape_string_warning = on`, `quote_all_identifiers = off` and
/// `extra_float_digits = 3` (catalog text and key literals read back exactly),
/// `default_transaction_isolation = 'read committed'` (a restore reads, after taking its
/// lock, every write committed before the lock was granted; transactions that need a
/// snapshot, such as a capture, ask for `REPEATABLE READ` themselves), and
/// `session_replication_role = origin` (triggers — an undo log's among them — and
/// foreign keys fire). A role that defaults to another replication role and may not set
/// it (only superusers and roles granted `SET` on it may) cannot use this crate: getting
/// a session fails with a permanent error saying so.
///
/// `search_path` is left as the database and role define it (your SQL and a
/// [`crate::SqlStep`]'s run with it); the crate's own statements run with
/// `search_path = pg_catalog, pg_temp` and `row_security = off`, set for the statement's
/// session or transaction, and name every object of yours with its schema — a function
/// or operator shadowing a built-in one is never called by them, and a table that row
/// security would filter makes them fail rather than see part of it.
///
/// **Back to the pool.** A pool built by [`Database::connect`] resets every connection
/// before it is reused ([`RESET_SESSION_SQL`]: `RESET ALL`, `SET SESSION AUTHORIZATION
/// DEFAULT`, `RESET ROLE`, advisory locks released, temporary tables and listeners
/// dropped) and pins it again, so nothing a session changed (`SET ROLE`, a leaked
/// `session_replication_role`, a `search_path`) reaches the next user. This crate holds no
/// session-level advisory lock (its locks are transaction-scoped), so releasing them all
/// takes nothing from it. A pool given to [`Database::from_pool`] is reset and pinned the
/// same way each time this crate takes a connection from it, whatever the pool's own
/// recycling method; state a hook of yours set on its connections does not survive that
/// (put such settings on the role or database, or in the connection's `options`).
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_postgres::Database;
/// let db = Database::connect("postgres://app:secret@127.0.0.1:5432/shop")?;
/// assert_eq!(db.name(), "shop");
/// assert_eq!(db.to_string(), "app@127.0.0.1:5432/shop"); // no password
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    name: String,
    display: String,
    config: Option<tokio_postgres::Config>,
    /// The TLS connector of `config` (none under `sslmode=disable`).
    tls: Option<tls::MakeRustls>,
    ssl_mode: SslMode,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("at", &self.inner.display)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.display)
    }
}

/// The pool size used by [`Database::connect`].
pub const DEFAULT_POOL_SIZE: usize = 8;

/// The settings pinned on every session this crate opens (see [`Database`]), as SQL.
///
/// Every name in it is schema-qualified and its literals hold no backslash, so it means
/// the same under any `search_path` and `standard_conforming_strings`.
pub const PINNED_SETTINGS: &str = "SET standard_conforming_strings = on; \
     SET check_function_bodies = on; \
     SET default_transaction_isolation = 'read committed'; \
     SET escape_string_warning = on; \
     SET quote_all_identifiers = off; \
     SET extra_float_digits = 3; \
     SELECT CASE WHEN pg_catalog.current_setting('session_replication_role') OPERATOR(pg_catalog.<>) 'origin' \
                 THEN pg_catalog.set_config('session_replication_role', 'origin', false) END;";

/// What a pooled connection goes through before it is reused, then [`PINNED_SETTINGS`].
pub const RESET_SESSION_SQL: &str = "CLOSE ALL; \
     SET SESSION AUTHORIZATION DEFAULT; \
     RESET ALL; \
     RESET ROLE; \
     UNLISTEN *; \
     SELECT pg_catalog.pg_advisory_unlock_all(); \
     DISCARD TEMP; \
     DISCARD SEQUENCES;";

/// Sets the search path and row security the crate's own statements run with, for the
/// session (`local` false) or the current transaction (`local` true).
pub(crate) fn library_settings_sql(local: bool) -> String {
    format!(
        "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', {local}), \
                pg_catalog.set_config('row_security', 'off', {local})"
    )
}

/// Puts back the database's own search path and row security (the session defaults) for
/// SQL written by the user, for the session or the current transaction.
pub(crate) fn user_settings_sql(local: bool) -> String {
    format!(
        "SELECT pg_catalog.set_config(s.name, s.reset_val, {local}) FROM pg_catalog.pg_settings s \
         WHERE s.name OPERATOR(pg_catalog.=) ANY (ARRAY['search_path', 'row_security'])"
    )
}

/// Pin a session, explaining the one failure a setting can cause.
async fn pin(c: &tokio_postgres::Client, sql: &str) -> std::result::Result<(), String> {
    match c.batch_execute(sql).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Err(format!(
                "{}; this role's or database's default session_replication_role is not \
                 'origin' (triggers and foreign keys would not fire) and the role may not set \
                 it back: change the default (ALTER ROLE … RESET session_replication_role) or \
                 GRANT SET ON PARAMETER session_replication_role to the role",
                crate::error::PgError::new("pinning session settings", &e)
            ))
        }
        Err(e) => Err(crate::error::PgError::new("pinning session settings", &e).to_string()),
    }
}

impl Database {
    /// Open a pool on the database named by a connection string (URL
    /// `postgres://user:pass@host:port/db?sslmode=verify-full&sslrootcert=/etc/ca.pem` or
    /// `key=value` form). No connection is made until one is needed.
    ///
    /// TLS follows libpq (with rustls): `sslmode` (`disable`, `prefer` — the default —,
    /// `require`, `verify-ca`, `verify-full`: see [`SslMode`]), `sslrootcert` (a PEM file,
    /// or `system`), `sslcert` and `sslkey` (PEM files) are read from the string;
    /// [`Database::builder`] sets them in code. A TLS failure when connecting is a
    /// permanent error whose cause [`tls_failure`](crate::tls_failure) names.
    ///
    /// ```no_run
    /// # fn demo() -> rollback_core::Result<()> {
    /// use rollback_postgres::Database;
    /// let db = Database::connect(
    ///     "postgres://app@db.internal/shop?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
    /// )?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed connection string (the message never repeats it)
    /// or one that names no database, and as [`DatabaseBuilder::build`].
    pub fn connect(conn: &str) -> Result<Self> {
        Self::builder(conn).build()
    }

    /// Like [`Database::connect`] with a pool of `max_size` connections.
    ///
    /// # Errors
    /// As [`Database::connect`].
    pub fn connect_with(conn: &str, max_size: usize) -> Result<Self> {
        Self::builder(conn).pool_size(max_size).build()
    }

    /// A builder for a connection string with options set in code (TLS, pool size); see
    /// [`DatabaseBuilder`].
    pub fn builder(conn: &str) -> DatabaseBuilder {
        DatabaseBuilder::new(conn)
    }

    /// The pool and handle for a parsed configuration (TLS parameters already taken out).
    pub(super) fn from_config(
        mut config: tokio_postgres::Config,
        tls: Option<tls::MakeRustls>,
        ssl_mode: SslMode,
        max_size: usize,
    ) -> Result<Self> {
        if config.get_application_name().is_none() {
            config.application_name("rollback-postgres");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        let user = config.get_user().unwrap_or("postgres").to_string();
        let name = match config.get_dbname() {
            Some(n) => n.to_string(),
            None => user.clone(),
        };
        let host = config
            .get_hosts()
            .first()
            .map(|h| match h {
                Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let display = format!("{user}@{host}:{port}/{name}");
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Custom(format!(
                "{RESET_SESSION_SQL} {PINNED_SETTINGS}"
            )),
        };
        let mgr = match &tls {
            Some(t) => Manager::from_config(config.clone(), t.clone(), manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(mgr)
            .max_size(max_size.max(2))
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    pin(client, PINNED_SETTINGS)
                        .await
                        .map_err(HookError::message)
                })
            }))
            .build()
            .map_err(|e| Error::invalid(format!("building connection pool: {e}")))?;
        Ok(Database {
            inner: Arc::new(Inner {
                pool,
                name,
                display,
                config: Some(config),
                tls,
                ssl_mode,
            }),
        })
    }

    /// Use an existing `deadpool-postgres` pool (e.g. one built with a TLS connector).
    /// `database` is the database's name as it should appear in resource ids.
    ///
    /// Each connection this crate takes from it is reset ([`RESET_SESSION_SQL`]) and
    /// pinned ([`PINNED_SETTINGS`]) first, whatever the pool's recycling method (see
    /// [`Database`]); building the pool with `RecyclingMethod::Custom` of both resets
    /// connections your own code takes from it too.
    pub fn from_pool(pool: Pool, database: impl Into<String>) -> Self {
        let name = database.into();
        Database {
            inner: Arc::new(Inner {
                pool,
                display: format!("(pool)/{name}"),
                name,
                config: None,
                tls: None,
                ssl_mode: SslMode::Disable,
            }),
        }
    }

    /// The TLS mode connections are made with ([`SslMode::Disable`] for a pool given to
    /// [`Database::from_pool`], whose TLS this crate does not know).
    pub fn ssl_mode(&self) -> SslMode {
        self.inner.ssl_mode
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The resource id of a table: `postgres:<database>/<schema>.<table>`.
    ///
    /// ```no_run
    /// # let db = rollback_postgres::Database::connect("postgres://u@127.0.0.1/shop").unwrap();
    /// use rollback_postgres::Table;
    /// assert_eq!(db.table_resource(&Table::public("orders")), "postgres:shop/public.orders");
    /// ```
    pub fn table_resource(&self, table: &Table) -> String {
        format!(
            "postgres:{}/{}",
            id_part(self.name()),
            table.resource_part()
        )
    }

    /// The resource id of a set of tables checkpointed together:
    /// `postgres:<database>/<schema>.<t1>+<schema>.<t2>` (sorted), or the single-table id.
    pub fn tables_resource(&self, tables: &[Table]) -> String {
        let mut parts: Vec<String> = tables.iter().map(|t| t.resource_part()).collect();
        parts.sort();
        parts.dedup();
        format!("postgres:{}/{}", id_part(self.name()), parts.join("+"))
    }

    /// The resource id of the catalog of some schemas: `postgres:<database>/schema:<s1>,<s2>`.
    pub fn schema_resource(&self, schemas: &[String]) -> String {
        let mut parts: Vec<String> = schemas.iter().map(|s| id_part(s)).collect();
        parts.sort();
        parts.dedup();
        format!(
            "postgres:{}/schema:{}",
            id_part(self.name()),
            parts.join(",")
        )
    }

    /// The resource id of the whole database (the recovery point's).
    pub fn database_resource(&self) -> String {
        format!("postgres:{}", id_part(self.name()))
    }

    /// A pooled connection, its settings pinned and its `search_path` the database's own
    /// (see [`Database`]; whatever a session changes is reset before the next use).
    ///
    /// # Errors
    /// [`Error::Transient`] when no connection can be made; [`Error::Backend`] when the
    /// session's settings cannot be pinned (see [`Database`]).
    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        let c = self.inner.pool.get().await.map_err(pool_error)?;
        if self.inner.config.is_none() {
            // Not our pool: its recycling is not ours either.
            pin(&c, &format!("{RESET_SESSION_SQL} {PINNED_SETTINGS}"))
                .await
                .map_err(pin_error)?;
        }
        Ok(c)
    }

    /// A pooled connection for this crate's own statements: as [`Database::client`], with
    /// `search_path = pg_catalog, pg_temp` and `row_security = off` (undone when the
    /// connection goes back to the pool).
    pub(crate) async fn lib_client(&self) -> Result<deadpool_postgres::Object> {
        let c = self.client().await?;
        c.batch_execute(&library_settings_sql(false))
            .await
            .ctx("setting the library's search path")?;
        Ok(c)
    }

    /// A fresh connection outside the pool (for sessions that must not be shared, e.g.
    /// non-transactional DDL that sets session parameters), with its settings pinned as
    /// pooled ones are (see [`Database`]). Dropping it closes it.
    ///
    /// # Errors
    /// [`Error::Transient`] when no connection can be made; [`Error::Backend`] when the
    /// session's settings cannot be pinned; [`Error::Invalid`] for a `Database` built with
    /// [`Database::from_pool`] (no connection config to open one with).
    pub async fn dedicated(&self) -> Result<tokio_postgres::Client> {
        match &self.inner.config {
            Some(cfg) => {
                let client = match &self.inner.tls {
                    Some(tls) => {
                        let (client, conn) = cfg.connect(tls.clone()).await.ctx("connecting")?;
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %crate::error::PgError::new("connection", &e), "connection ended");
                            }
                        });
                        client
                    }
                    None => {
                        let (client, conn) = cfg.connect(NoTls).await.ctx("connecting")?;
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %crate::error::PgError::new("connection", &e), "connection ended");
                            }
                        });
                        client
                    }
                };
                pin(&client, PINNED_SETTINGS).await.map_err(pin_error)?;
                Ok(client)
            }
            None => Err(Error::invalid(
                "a Database built with from_pool has no connection config for dedicated sessions",
            )),
        }
    }

    /// A dedicated session for this crate's own statements (see [`Database::lib_client`]).
    pub(crate) async fn dedicated_lib(&self) -> Result<tokio_postgres::Client> {
        let c = self.dedicated().await?;
        c.batch_execute(&library_settings_sql(false))
            .await
            .ctx("setting the library's search path")?;
        Ok(c)
    }

    /// Run one statement (or several separated by `;`) outside any transaction.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn execute_batch(&self, sql: &str) -> Result<()> {
        let c = self.client().await?;
        c.batch_execute(sql).await.ctx("executing SQL")
    }

    /// The server's idea of a monotonic-enough "now" in milliseconds since the epoch (the
    /// clock leases are decided by, so that machines with skewed clocks agree).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn server_now_ms(&self) -> Result<u64> {
        let c = self.lib_client().await?;
        let row = c
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .await
            .ctx("reading the server clock")?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}

/// A session that cannot be pinned is misconfigured, not unlucky: a permanent error.
fn pin_error(message: String) -> Error {
    crate::error::backend_msg(message)
}
