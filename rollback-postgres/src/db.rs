//! [`Database`]: a connection pool to one PostgreSQL database, with redacted display.

use crate::error::{pool_error, PgResultExt};
use crate::ident::{id_part, Table};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rollback_core::{Error, Result};
use std::fmt;
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

impl Database {
    /// Open a pool on the database named by a connection string (URL
    /// `postgres://user:pass@host:port/db` or `key=value` form). No connection is made
    /// until one is needed. TLS is not negotiated by this constructor: use
    /// [`Database::from_pool`] with a pool built with your TLS connector for that.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed connection string (the message never repeats it)
    /// or one that names no database.
    pub fn connect(conn: &str) -> Result<Self> {
        Self::connect_with(conn, DEFAULT_POOL_SIZE)
    }

    /// Like [`Database::connect`] with a pool of `max_size` connections.
    ///
    /// # Errors
    /// As [`Database::connect`].
    pub fn connect_with(conn: &str, max_size: usize) -> Result<Self> {
        let mut config = tokio_postgres::Config::from_str(conn).map_err(|_| {
            Error::invalid(
                "malformed PostgreSQL connection string (not shown: it may hold a password)",
            )
        })?;
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
        let mgr = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(max_size.max(2))
            .build()
            .map_err(|e| Error::invalid(format!("building connection pool: {e}")))?;
        Ok(Database {
            inner: Arc::new(Inner {
                pool,
                name,
                display,
                config: Some(config),
            }),
        })
    }

    /// Use an existing `deadpool-postgres` pool (e.g. one built with a TLS connector).
    /// `database` is the database's name as it should appear in resource ids.
    pub fn from_pool(pool: Pool, database: impl Into<String>) -> Self {
        let name = database.into();
        Database {
            inner: Arc::new(Inner {
                pool,
                display: format!("(pool)/{name}"),
                name,
                config: None,
            }),
        }
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

    /// A pooled connection.
    ///
    /// # Errors
    /// [`Error::Transient`] when no connection can be made.
    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(pool_error)
    }

    /// A fresh connection outside the pool (for sessions that must not be shared, e.g.
    /// non-transactional DDL that sets session parameters). Dropping it closes it.
    ///
    /// # Errors
    /// [`Error::Transient`] when no connection can be made.
    pub async fn dedicated(&self) -> Result<tokio_postgres::Client> {
        match &self.inner.config {
            Some(cfg) => {
                let (client, conn) = cfg.connect(NoTls).await.ctx("connecting")?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %crate::error::PgError::new("connection", &e), "connection ended");
                    }
                });
                Ok(client)
            }
            None => Err(Error::invalid(
                "a Database built with from_pool has no connection config for dedicated sessions",
            )),
        }
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
        let c = self.client().await?;
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
