//! PostgreSQL measurements: table fingerprint against a raw binary COPY, finding the
//! differing rows against reladiff, table snapshots against pg_dump / pg_restore, and
//! the fingerprint's peak memory.

use crate::servers::PgTls;
use crate::{on_exit, run_child, secs, Args, Cleanup, Res};
use benches::{fmt_bytes, fmt_count, fmt_rate, fmt_ratio, fmt_secs, median, Report, Row};
use futures::{pin_mut, StreamExt};
use rollback_core::{Checkpoint, Context, Status, Verifier};
use rollback_postgres::{
    Database, RestoreMethod, Table, TableHashParity, TableSnapshot, TableUndoLog,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio_postgres::{Client, NoTls};

mod diff;
mod fingerprint;
mod memory;
mod snapshot;

const ACCOUNTS: &str = "pgbench_accounts";
const CHANGED: &str = "rb_accounts_changed";
const MEM_TABLE: &str = "rb_accounts_10m";
const RAW_COPY: &str = "COPY pgbench_accounts TO STDOUT (FORMAT binary)";
/// The undo log's trigger as it was before it recorded the writer (per row, no `_rollback_writer`
/// column, no setting read), on `pgbench_accounts`: the baseline of the writer's cost.
const LEGACY_UNDO_LOG: &str = "\
CREATE TABLE bench_legacy_log (seq bigserial, xid pg_catalog.xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(), \
  present boolean NOT NULL, LIKE pgbench_accounts); \
CREATE FUNCTION bench_legacy_undo() RETURNS trigger LANGUAGE plpgsql \
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$ \
BEGIN \
  IF TG_OP = 'UPDATE' THEN \
    INSERT INTO public.bench_legacy_log (present, aid, bid, abalance, filler) VALUES (true, OLD.aid, OLD.bid, OLD.abalance, OLD.filler); \
    IF ROW(NEW.aid) IS DISTINCT FROM ROW(OLD.aid) THEN \
      INSERT INTO public.bench_legacy_log (present, aid, bid, abalance, filler) VALUES (false, NEW.aid, NEW.bid, NEW.abalance, NEW.filler); \
    END IF; \
  ELSIF TG_OP = 'DELETE' THEN \
    INSERT INTO public.bench_legacy_log (present, aid, bid, abalance, filler) VALUES (true, OLD.aid, OLD.bid, OLD.abalance, OLD.filler); \
  ELSIF TG_OP = 'INSERT' THEN \
    INSERT INTO public.bench_legacy_log (present, aid, bid, abalance, filler) VALUES (false, NEW.aid, NEW.bid, NEW.abalance, NEW.filler); \
  END IF; \
  RETURN NULL; \
END $body$; \
CREATE TRIGGER bench_legacy_undo AFTER INSERT OR UPDATE OR DELETE ON pgbench_accounts \
  FOR EACH ROW EXECUTE FUNCTION bench_legacy_undo();";
const LEGACY_UNDO_LOG_DROP: &str = "DROP TRIGGER bench_legacy_undo ON pgbench_accounts; \
  DROP FUNCTION bench_legacy_undo(); DROP TABLE bench_legacy_log;";

/// A table the PostgreSQL sections measure: `pgbench_accounts` (blank `filler`, which
/// compresses about 40:1) and a realistic one ([`REALISTIC_SQL`]).
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    /// Short name, printed before each row's measurement.
    pub(crate) label: &'static str,
    pub(crate) table: &'static str,
    pub(crate) key: &'static str,
    /// The other columns, in table order.
    pub(crate) columns: &'static [&'static str],
    /// A numeric column the benchmarks change.
    pub(crate) touch: &'static str,
    /// The copy the differs compare with the table.
    pub(crate) changed: &'static str,
    pub(crate) rows: u64,
}

impl Dataset {
    fn raw_copy(&self) -> String {
        format!("COPY {} TO STDOUT (FORMAT binary)", self.table)
    }
    fn ordered_copy(&self) -> String {
        format!(
            "COPY (SELECT {}, {} FROM {} ORDER BY {}) TO STDOUT (FORMAT binary)",
            self.key,
            self.columns.join(", "),
            self.table,
            self.key
        )
    }
    /// `label: text`.
    fn says(&self, text: impl std::fmt::Display) -> String {
        format!("{}: {text}", self.label)
    }
}

/// The realistic dataset: `rb_orders` (5M × scale rows, like `pgbench_accounts`) with a
/// foreign key to `rb_customers` (1/50 of that), two secondary indexes, ~200 bytes of
/// random text (base64 of chained sha256, i.e. 6 random bits per byte), a jsonb document,
/// a timestamp and a numeric. Generated on the server with `generate_series` from a
/// fixed seed (the row number hashed with a constant salt), so every run loads the same
/// bytes; keys, indexes and the foreign key are added after the load. `{orders}` and
/// `{customers}` are the row counts.
const REALISTIC_SQL: &str = "\
CREATE TABLE rb_customers (id bigint NOT NULL, name text NOT NULL, region text NOT NULL, created_at timestamptz NOT NULL); \
INSERT INTO rb_customers SELECT g, encode(sha256(('customer-' || g)::bytea), 'base64'), 'r' || (g % 17), \
  timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => g * 37) FROM generate_series(1, {customers}) g; \
ALTER TABLE rb_customers ADD PRIMARY KEY (id); \
CREATE TABLE rb_orders (id bigint NOT NULL, customer_id bigint NOT NULL, created_at timestamptz NOT NULL, \
  amount numeric(12,2) NOT NULL, note text NOT NULL, doc jsonb NOT NULL); \
INSERT INTO rb_orders \
SELECT g, \
  1 + (get_byte(h1, 0) * 65536 + get_byte(h1, 1) * 256 + get_byte(h1, 2)) % {customers}, \
  timestamptz '2020-01-01 00:00:00+00' + make_interval(secs => (get_byte(h1, 3) * 65536 + get_byte(h1, 4) * 256 + get_byte(h1, 5)) * 9), \
  ((get_byte(h1, 6) * 65536 + get_byte(h1, 7) * 256 + get_byte(h1, 8)) / 100.0)::numeric(12,2), \
  encode(h1 || h2 || h3 || h4 || substr(h5, 1, 22), 'base64'), \
  jsonb_build_object('sku', encode(substr(h5, 23, 6), 'hex'), 'qty', 1 + get_byte(h5, 29) % 9, \
    'tags', jsonb_build_array('t' || get_byte(h5, 30) % 50, 't' || get_byte(h5, 31) % 50), \
    'gift', get_byte(h1, 9) % 2 = 0, 'ref', encode(substr(h4, 1, 8), 'hex')) \
FROM generate_series(1, {orders}) g, \
  LATERAL (SELECT sha256(int8send(g) || '\\x5eed'::bytea) AS h1) a, \
  LATERAL (SELECT sha256(h1) AS h2) b, LATERAL (SELECT sha256(h2) AS h3) c, \
  LATERAL (SELECT sha256(h3) AS h4) d, LATERAL (SELECT sha256(h4) AS h5) e; \
ALTER TABLE rb_orders ADD PRIMARY KEY (id); \
CREATE INDEX rb_orders_customer ON rb_orders (customer_id); \
CREATE INDEX rb_orders_created ON rb_orders (created_at); \
ALTER TABLE rb_orders ADD CONSTRAINT rb_orders_customer_fk FOREIGN KEY (customer_id) REFERENCES rb_customers (id);";

/// Rows changed in the copy that the differs compare.
const DIFF_CHANGES: u64 = 10;

/// The database of one run: `pgbench -i` at the run's scale.
pub(crate) struct Bench {
    admin: String,
    url: String,
    db: Database,
    client: Client,
    /// `pgbench_accounts`, then the realistic table.
    pub(crate) sets: Vec<Dataset>,
    pg_bin: PathBuf,
    /// The TLS-only cluster, when the runner has one (section 1 loads the table there too).
    pg_tls: Option<PgTls>,
    dir: tempfile::TempDir,
}

/// The fingerprint's table in the TLS-only cluster.
struct TlsSide {
    db: Database,
    /// A session of `db`'s own TLS connector ([`Database::dedicated`]), for the raw COPY.
    client: Client,
    rows: u64,
    /// Protocol and cipher of the sessions, as the server saw them.
    sessions: String,
}

/// A fresh database (dropped at the end) under the superuser URL `admin`, holding
/// `pgbench -i -s round(50 × scale)`; its name and URL (`admin`'s, query included).
async fn load_pgbench(admin: &str, pg_bin: &Path, args: &Args) -> Res<(String, String)> {
    let name = format!(
        "rb_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    admin_execute(admin, &format!("CREATE DATABASE \"{name}\"")).await?;
    on_exit(Cleanup::Database(admin.to_string(), name.clone()));
    if std::env::var("COMPARE_LOG_SQL").is_ok_and(|v| v == "1") {
        admin_execute(
            admin,
            &format!("ALTER DATABASE \"{name}\" SET log_min_duration_statement = 0"),
        )
        .await?;
        eprintln!("compare: logging every statement of {name} with its duration (server log)");
    }
    let url = db_url(admin, &name);
    let s = ((50.0 * args.scale).round() as u64).max(1);
    eprintln!("compare: pgbench -i -s {s} into {name}");
    let t = Instant::now();
    run_tool(
        &pg_bin.join("pgbench"),
        &["-i", "-s", &s.to_string(), "-I", "dtGvp", "-q", &url],
    )
    .await?;
    eprintln!("compare: pgbench -i took {}", fmt_secs(secs(t)));
    Ok((name, url))
}

/// Run `sql` with the superuser URL `admin`: a plain connection, or, when the URL names an
/// `sslmode`, a session of `rollback_postgres`'s TLS connector.
async fn admin_execute(admin: &str, sql: &str) -> Res<()> {
    if admin.contains("sslmode=") {
        Database::connect(admin)?
            .dedicated()
            .await?
            .batch_execute(sql)
            .await?;
    } else {
        connect(admin).await?.batch_execute(sql).await?;
    }
    Ok(())
}

/// `url` with its database replaced by `name`.
pub(crate) fn db_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[after_scheme..]
        .find('/')
        .map(|i| i + after_scheme)
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..host_end])
}

pub(crate) async fn connect(url: &str) -> Res<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub(crate) async fn drop_database(admin: &str, name: &str) -> Res<()> {
    admin_execute(
        admin,
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await
}

/// Read a COPY to nowhere; returns the bytes read.
async fn copy_out(c: &Client, sql: &str) -> Res<u64> {
    let stream = c.copy_out(sql).await?;
    pin_mut!(stream);
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        n += chunk?.len() as u64;
    }
    Ok(n)
}

/// User + system CPU seconds of process `pid` (`None`: this process); 0 when it is gone.
fn cpu_secs(pid: Option<i32>) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let path = match pid {
        None => "/proc/self/stat".to_string(),
        Some(p) => format!("/proc/{p}/stat"),
    };
    let read = || -> Option<f64> {
        let s = std::fs::read_to_string(&path).ok()?;
        let close = s.rfind(')')?;
        let f: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
        // fields after the command name: state(0) ... utime(11) stime(12)
        let u: f64 = f.get(11)?.parse().ok()?;
        let st: f64 = f.get(12)?.parse().ok()?;
        Some((u + st) / tick)
    };
    read().unwrap_or(0.0)
}

/// Wall, client CPU and server CPU of one measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    wall: f64,
    client: f64,
    server: f64,
}

/// Measures one operation: wall time, this process's CPU, and the CPU of the server
/// backends connected to the bench database (from `pg_stat_activity`, read before and
/// after, so that the pool's connections count and other databases' load does not;
/// a connection that ends during the measurement is not counted).
struct Meter<'a> {
    client_db: &'a Client,
    t: Instant,
    client: f64,
    server: BTreeMap<i32, f64>,
}

async fn backends(c: &Client) -> Vec<i32> {
    c.query(
        "SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = current_database()",
        &[],
    )
    .await
    .map(|rows| rows.iter().map(|r| r.get::<_, i32>(0)).collect())
    .unwrap_or_default()
}

impl<'a> Meter<'a> {
    async fn start(c: &'a Client) -> Meter<'a> {
        let server = backends(c)
            .await
            .into_iter()
            .map(|p| (p, cpu_secs(Some(p))))
            .collect();
        Meter {
            client_db: c,
            server,
            client: cpu_secs(None),
            t: Instant::now(),
        }
    }
    async fn stop(self) -> Cost {
        let wall = secs(self.t);
        let client = cpu_secs(None) - self.client;
        let mut server = 0.0;
        for p in backends(self.client_db).await {
            server += cpu_secs(Some(p)) - self.server.get(&p).copied().unwrap_or(0.0);
        }
        Cost {
            wall,
            client,
            server,
        }
    }
}

fn med(costs: &[Cost]) -> Cost {
    Cost {
        wall: median(&costs.iter().map(|c| c.wall).collect::<Vec<_>>()),
        client: median(&costs.iter().map(|c| c.client).collect::<Vec<_>>()),
        server: median(&costs.iter().map(|c| c.server).collect::<Vec<_>>()),
    }
}

fn breakdown(name: &str, c: Cost) -> String {
    format!(
        "{name}: wall {}, client CPU {}, server CPU {}",
        fmt_secs(c.wall),
        fmt_secs(c.client),
        fmt_secs(c.server)
    )
}

async fn run_tool(bin: &Path, args: &[&str]) -> Res<f64> {
    let t = Instant::now();
    let out = tokio::process::Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    let s = secs(t);
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(s)
}

impl Bench {
    /// A fresh database holding `pgbench -i -s round(50 × scale)`.
    pub(crate) async fn setup(sv: &crate::servers::Servers, args: &Args) -> Res<Self> {
        let admin = sv.pg_url.clone();
        let (_, url) = load_pgbench(&admin, &sv.pg_bin, args).await?;
        let client = connect(&url).await?;
        let rows: i64 = client
            .query_one("SELECT count(*) FROM pgbench_accounts", &[])
            .await?
            .get(0);
        let orders = ((5_000_000.0 * args.scale).round() as u64).max(1000);
        let customers = (orders / 50).max(10);
        let t = Instant::now();
        client
            .batch_execute(
                &REALISTIC_SQL
                    .replace("{orders}", &orders.to_string())
                    .replace("{customers}", &customers.to_string()),
            )
            .await?;
        // VACUUM runs outside the load's implicit transaction.
        client.batch_execute("VACUUM ANALYZE rb_customers").await?;
        client.batch_execute("VACUUM ANALYZE rb_orders").await?;
        let size: i64 = client
            .query_one("SELECT pg_catalog.pg_table_size('rb_orders')", &[])
            .await?
            .get(0);
        eprintln!(
            "compare: realistic rb_orders ({} rows, {} on disk without indexes) and rb_customers ({} rows) made in {}",
            fmt_count(orders),
            fmt_bytes(size.max(0) as u64),
            fmt_count(customers),
            fmt_secs(secs(t))
        );
        let sets = vec![
            Dataset {
                label: "pgbench",
                table: ACCOUNTS,
                key: "aid",
                columns: &["bid", "abalance", "filler"],
                touch: "abalance",
                changed: CHANGED,
                rows: rows as u64,
            },
            Dataset {
                label: "realistic",
                table: "rb_orders",
                key: "id",
                columns: &["customer_id", "created_at", "amount", "note", "doc"],
                touch: "amount",
                changed: "rb_orders_changed",
                rows: orders,
            },
        ];
        Ok(Bench {
            db: Database::connect(&url)?,
            admin,
            url,
            client,
            sets,
            pg_bin: sv.pg_bin.clone(),
            pg_tls: sv.pg_tls.clone(),
            dir: tempfile::tempdir()?,
        })
    }

    /// The same `pgbench -i` table in a fresh database of the TLS-only cluster, reached
    /// with `sslmode=verify-full` (host `localhost`) by pgbench and by rollback alike.
    async fn setup_tls(&self, tls: &PgTls, args: &Args) -> Res<TlsSide> {
        let admin = tls.verify_full_url();
        let (_, url) = load_pgbench(&admin, &self.pg_bin, args).await?;
        let db = Database::connect(&url)?;
        // The raw COPY's client: a session of the same connector the pool uses.
        let client = db.dedicated().await?;
        let rows: i64 = client
            .query_one("SELECT count(*) FROM pgbench_accounts", &[])
            .await?
            .get(0);
        let ssl = "SELECT ssl, coalesce(version, ''), coalesce(cipher, '') \
                   FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()";
        let describe = |r: tokio_postgres::Row| -> Res<String> {
            if !r.get::<_, bool>(0) {
                return Err("a session to the TLS cluster is not encrypted".into());
            }
            Ok(format!(
                "{} {}",
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            ))
        };
        let copy_session = describe(client.query_one(ssl, &[]).await?)?;
        let pooled = db.client().await?;
        let pool_session = describe(pooled.query_one(ssl, &[]).await?)?;
        drop(pooled);
        Ok(TlsSide {
            db,
            client,
            rows: rows as u64,
            sessions: format!("COPY client {copy_session}; fingerprint's pool {pool_session}"),
        })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.pg_bin.join(name)
    }

    fn snapshot_of(&self, ds: &Dataset) -> TableSnapshot {
        TableSnapshot::new(&self.db, Table::public(ds.table))
    }

    /// The admin URL (for cleanups).
    #[allow(dead_code)]
    pub(crate) fn admin(&self) -> &str {
        &self.admin
    }
}

/// Child: fingerprint `table` of `url` with a table snapshot checkpoint.
pub(crate) async fn child_fingerprint(a: &[String]) -> Res<serde_json::Value> {
    let [url, table] = a else {
        return Err("usage: child fingerprint URL TABLE".into());
    };
    let db = Database::connect(url)?;
    let d = TableSnapshot::new(&db, Table::public(table.as_str()))
        .fingerprint(&Context::detached())
        .await?;
    Ok(serde_json::json!({ "digest": d.to_string() }))
}

/// Child: a raw binary COPY of `table` read to nowhere.
pub(crate) async fn child_copy(a: &[String]) -> Res<serde_json::Value> {
    let [url, table] = a else {
        return Err("usage: child copy URL TABLE".into());
    };
    let c = connect(url).await?;
    let n = copy_out(&c, &format!("COPY \"{table}\" TO STDOUT (FORMAT binary)")).await?;
    Ok(serde_json::json!({ "bytes": n }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_swap_only_the_database_name() {
        assert_eq!(
            db_url("postgres://postgres@127.0.0.1:55432/postgres", "x"),
            "postgres://postgres@127.0.0.1:55432/x"
        );
        assert_eq!(
            db_url("postgres://u@h:1/db?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(db_url("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }
}
