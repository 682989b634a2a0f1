//! [`Database`]: a connection pool to one PostgreSQL database, with redacted display.

use crate::error::{pool_error, PgResultExt};
use crate::ident::{id_part, Table};
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use rollback_core::{Error, Result};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
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
        DatabaseBuilder {
            conn: conn.to_string(),
            pool_size: DEFAULT_POOL_SIZE,
            ssl_mode: None,
            root: None,
            client_cert: None,
        }
    }

    /// The pool and handle for a parsed configuration (TLS parameters already taken out).
    fn from_config(
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

// ---------------------------------------------------------------------------------------
// TLS: libpq's sslmode, sslrootcert, sslcert and sslkey, with rustls.
// ---------------------------------------------------------------------------------------

/// How a connection negotiates TLS: libpq's `sslmode`, with libpq's meaning.
///
/// | Mode | Encrypted | Server certificate checked |
/// |---|---|---|
/// | `disable` | never | — |
/// | `prefer` (default) | when the server accepts SSL; plain when it refuses | only when a root certificate is given (then as `verify-ca`) |
/// | `require` | always: a server refusing SSL is an error | only when a root certificate is given (then as `verify-ca`) |
/// | `verify-ca` | always | signed by a trusted root |
/// | `verify-full` | always | signed by a trusted root **and** issued for the host connected to |
///
/// As in libpq, `prefer` falls back to a plain connection only when the server answers
/// that it does not do SSL, not when a TLS handshake fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server accepts it, else plain (libpq's default).
    #[default]
    Prefer,
    /// TLS or fail; the certificate is checked only against a given root certificate.
    Require,
    /// TLS, and the server's certificate chains to a trusted root.
    VerifyCa,
    /// TLS, the certificate chains to a trusted root and names the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq name (`verify-full`…).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(Error::invalid(
                    "sslmode=allow (plain first, TLS on refusal) is not supported: use prefer",
                ))
            }
            other => {
                return Err(Error::invalid(format!(
                    "unknown sslmode {other:?} (expected disable, prefer, require, verify-ca or verify-full)"
                )))
            }
        })
    }
}

/// Where the trusted root certificates come from.
#[derive(Clone)]
pub(crate) enum Roots {
    /// A PEM file (`sslrootcert=<path>`).
    File(PathBuf),
    /// PEM bytes given to the builder.
    Pem(Vec<u8>),
    /// The platform's trust store (`sslrootcert=system`, as libpq 16).
    System,
}

/// Options of [`Database::connect`] beyond the connection string: pool size and TLS.
/// Made by [`Database::builder`]; an option set here wins over the same parameter in the
/// connection string.
///
/// ```no_run
/// # fn demo() -> rollback_core::Result<()> {
/// use rollback_postgres::{Database, SslMode};
/// let db = Database::builder("postgres://app@db.internal:5432/shop")
///     .ssl_mode(SslMode::VerifyFull)
///     .ssl_root_cert("/etc/ssl/db-ca.pem")
///     .ssl_client_cert("/etc/ssl/app.pem", "/etc/ssl/app.key")
///     .pool_size(16)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DatabaseBuilder {
    conn: String,
    pool_size: usize,
    ssl_mode: Option<SslMode>,
    root: Option<Roots>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for DatabaseBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection string may hold a password: not shown.
        f.debug_struct("DatabaseBuilder")
            .field("pool_size", &self.pool_size)
            .field("ssl_mode", &self.ssl_mode)
            .finish_non_exhaustive()
    }
}

impl DatabaseBuilder {
    /// The pool's size (at least 2; default [`DEFAULT_POOL_SIZE`]).
    pub fn pool_size(mut self, max_size: usize) -> Self {
        self.pool_size = max_size;
        self
    }

    /// The TLS mode (overrides `sslmode` in the connection string; default `prefer`).
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = Some(mode);
        self
    }

    /// Trust the root certificates of this PEM file (overrides `sslrootcert`).
    pub fn ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.root = Some(Roots::File(path.into()));
        self
    }

    /// Trust the root certificates of these PEM bytes (overrides `sslrootcert`).
    pub fn ssl_root_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root = Some(Roots::Pem(pem.into()));
        self
    }

    /// Trust the platform's root certificates (as `sslrootcert=system`).
    pub fn ssl_system_roots(mut self) -> Self {
        self.root = Some(Roots::System);
        self
    }

    /// Present this client certificate chain and key (PEM files) to the server
    /// (overrides `sslcert` and `sslkey`).
    pub fn ssl_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Build the pool. No connection is made until one is needed; certificate files are
    /// read now.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed connection string (the message never repeats
    /// it), an unknown `sslmode`, a root or client certificate that cannot be read or
    /// parsed (the message names the file), `sslcert` without `sslkey` or the reverse,
    /// `sslrootcert=system` with a mode weaker than `verify-full`, or `verify-ca` /
    /// `verify-full` with no root certificate (none given and no
    /// `~/.postgresql/root.crt`).
    pub fn build(self) -> Result<Database> {
        let (rest, params) = split_tls_params(&self.conn)?;
        let mut mode = match params.sslmode.as_deref() {
            Some(m) => Some(m.parse::<SslMode>()?),
            None => None,
        };
        if self.ssl_mode.is_some() {
            mode = self.ssl_mode;
        }
        let mut root = params.sslrootcert.map(|r| {
            if r == "system" {
                Roots::System
            } else {
                Roots::File(PathBuf::from(r))
            }
        });
        if self.root.is_some() {
            root = self.root;
        }
        let client_cert = match (self.client_cert, params.sslcert, params.sslkey) {
            (Some(c), _, _) => Some(c),
            (None, Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None, None) => None,
            (None, Some(_), None) => {
                return Err(Error::invalid("sslcert is set but sslkey is not"))
            }
            (None, None, Some(_)) => {
                return Err(Error::invalid("sslkey is set but sslcert is not"))
            }
        };
        let mode = match (mode, &root) {
            (None, Some(Roots::System)) => SslMode::VerifyFull,
            (Some(m), Some(Roots::System)) if m != SslMode::VerifyFull => {
                return Err(Error::invalid(format!(
                    "sslrootcert=system needs sslmode=verify-full (got {m}), as libpq"
                )))
            }
            (m, _) => m.unwrap_or_default(),
        };
        if root.is_none() && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            // libpq's default root file.
            match default_root_file() {
                Some(p) => root = Some(Roots::File(p)),
                None => {
                    return Err(Error::invalid(format!(
                        "sslmode={mode} needs a root certificate to check the server's: set \
                         sslrootcert (a PEM file, or `system` for the platform's roots) or \
                         create ~/.postgresql/root.crt"
                    )))
                }
            }
        }
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|_| {
            Error::invalid(
                "malformed PostgreSQL connection string (not shown: it may hold a password)",
            )
        })?;
        let tls = match mode {
            SslMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            m => {
                config.ssl_mode(if m == SslMode::Prefer {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                Some(tls::MakeRustls::new(
                    m,
                    root.as_ref(),
                    client_cert.as_ref(),
                )?)
            }
        };
        Database::from_config(config, tls, mode, self.pool_size)
    }
}

/// `~/.postgresql/root.crt` when it exists (libpq's default `sslrootcert`).
fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".postgresql").join("root.crt");
    p.is_file().then_some(p)
}

/// The TLS parameters taken out of a connection string.
#[derive(Default)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl TlsParams {
    /// Take `key`'s value if it is one of ours.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Split a connection string (URL or `key=value` form) into the string without the TLS
/// parameters (which tokio-postgres rejects or ignores) and those parameters. Errors
/// never repeat the string.
fn split_tls_params(conn: &str) -> Result<(String, TlsParams)> {
    let mut params = TlsParams::default();
    let malformed = || {
        Error::invalid("malformed PostgreSQL connection string (not shown: it may hold a password)")
    };
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else {
            return Ok((conn.to_string(), params));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k).ok_or_else(malformed)?;
            let value = percent_decode(v).ok_or_else(malformed)?;
            if !params.take(&key, value) {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    // key=value form: values may be single-quoted, with \' and \\ escapes.
    let mut kept = Vec::new();
    let mut chars = conn.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(malformed());
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(malformed)?),
                    Some(c) => value.push(c),
                    None => return Err(malformed()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next().ok_or_else(malformed)?);
                } else {
                    value.push(c);
                }
            }
        }
        if !params.take(&key, value.clone()) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), params))
}

/// Decode `%XX` escapes (and nothing else); `None` for a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A rustls connector for tokio-postgres (aws-lc-rs provider), and the certificate checks of
/// each [`SslMode`].
pub(crate) mod tls {
    use super::{Roots, SslMode};
    use rollback_core::{Error, Result};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
    use std::future::Future;
    use std::io;
    use std::path::PathBuf;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
    use tokio_postgres::Socket;

    /// Makes a TLS session per connection from one rustls configuration.
    #[derive(Clone)]
    pub(crate) struct MakeRustls {
        config: Arc<ClientConfig>,
    }

    impl MakeRustls {
        /// The configuration for `mode` with these roots and client certificate.
        pub(crate) fn new(
            mode: SslMode,
            roots: Option<&Roots>,
            client_cert: Option<&(PathBuf, PathBuf)>,
        ) -> Result<Self> {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
                (SslMode::VerifyFull, Some(r)) => webpki(r, &provider)?,
                (SslMode::VerifyCa | SslMode::Require | SslMode::Prefer, Some(r)) => {
                    Arc::new(ChainOnly(webpki(r, &provider)?))
                }
                (_, _) => Arc::new(EncryptionOnly(provider.clone())),
            };
            let builder = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::invalid(format!("TLS configuration: {e}")))?
                .dangerous()
                .with_custom_certificate_verifier(verifier);
            let config = match client_cert {
                None => builder.with_no_client_auth(),
                Some((cert, key)) => {
                    let chain = read_certs(cert, "sslcert")?;
                    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                        Error::invalid(format!(
                            "sslkey {}: cannot read a PEM private key: {e}",
                            key.display()
                        ))
                    })?;
                    builder.with_client_auth_cert(chain, key).map_err(|e| {
                        Error::invalid(format!(
                            "sslcert {} and its key do not make a client certificate: {e}",
                            cert.display()
                        ))
                    })?
                }
            };
            Ok(MakeRustls {
                config: Arc::new(config),
            })
        }
    }

    fn read_certs(path: &PathBuf, what: &str) -> Result<Vec<CertificateDer<'static>>> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::invalid(format!("{what} {}: cannot read: {e}", path.display())))?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid(format!("{what} {}: bad PEM: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::invalid(format!(
                "{what} {}: no certificate in it",
                path.display()
            )));
        }
        Ok(certs)
    }

    fn webpki(roots: &Roots, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>> {
        let mut store = RootCertStore::empty();
        match roots {
            Roots::File(p) => {
                for c in read_certs(p, "sslrootcert")? {
                    store
                        .add(c)
                        .map_err(|e| Error::invalid(format!("sslrootcert {}: {e}", p.display())))?;
                }
            }
            Roots::Pem(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::invalid(format!("root certificate PEM: {e}")))?;
                if certs.is_empty() {
                    return Err(Error::invalid("root certificate PEM holds no certificate"));
                }
                for c in certs {
                    store
                        .add(c)
                        .map_err(|e| Error::invalid(format!("root certificate: {e}")))?;
                }
            }
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(Error::invalid(
                        "sslrootcert=system: the platform's trust store holds no usable certificate",
                    ));
                }
            }
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .build()
            .map_err(|e| Error::invalid(format!("TLS verifier: {e}")))
    }

    /// `verify-ca` (and `require`/`prefer` with a root certificate): the chain is checked,
    /// the host name is not.
    #[derive(Debug)]
    struct ChainOnly(Arc<WebPkiServerVerifier>);

    impl ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            // The chain is checked before the name: a name error means the chain is good.
            match self
                .0
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => Ok(ServerCertVerified::assertion()),
                other => other,
            }
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    /// `prefer` and `require` without a root certificate, as libpq: encrypted, the
    /// server's certificate not checked (the handshake's signatures are).
    #[derive(Debug)]
    struct EncryptionOnly(Arc<CryptoProvider>);

    impl ServerCertVerifier for EncryptionOnly {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> std::result::Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    impl MakeTlsConnect<Socket> for MakeRustls {
        type Stream = RustlsStream;
        type TlsConnect = RustlsConnect;
        type Error = rustls::pki_types::InvalidDnsNameError;

        fn make_tls_connect(
            &mut self,
            domain: &str,
        ) -> std::result::Result<RustlsConnect, Self::Error> {
            // A Unix socket has no host name (""): the server answers SSLRequest with 'N'
            // there, and tokio-postgres never calls `connect` without a host name.
            let name = if domain.is_empty() {
                None
            } else {
                Some(ServerName::try_from(domain.to_string())?)
            };
            Ok(RustlsConnect {
                config: self.config.clone(),
                name,
            })
        }
    }

    /// One connection's TLS handshake.
    pub(crate) struct RustlsConnect {
        config: Arc<ClientConfig>,
        name: Option<ServerName<'static>>,
    }

    impl TlsConnect<Socket> for RustlsConnect {
        type Stream = RustlsStream;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

        fn connect(self, stream: Socket) -> Self::Future {
            Box::pin(async move {
                let name = self.name.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "no host name to check the server's certificate against",
                    )
                })?;
                tokio_rustls::TlsConnector::from(self.config)
                    .connect(name, stream)
                    .await
                    .map(RustlsStream)
            })
        }
    }

    /// An encrypted connection.
    pub(crate) struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

    impl tokio_postgres::tls::TlsStream for RustlsStream {
        fn channel_binding(&self) -> ChannelBinding {
            // SCRAM then authenticates without channel binding (channel_binding=prefer).
            ChannelBinding::none()
        }
    }

    impl AsyncRead for RustlsStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for RustlsStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}
