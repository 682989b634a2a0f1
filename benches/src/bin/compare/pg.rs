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

    /// Section 1: the fingerprint against a raw binary COPY read to nowhere by the same
    /// client; and, when the runner has the TLS-only cluster, the same pair over TLS
    /// (`sslmode=verify-full`), measured in the same repetitions, plain and TLS in turn.
    pub(crate) async fn fingerprint(&self, args: &Args, ds: &Dataset) -> Res<Report> {
        let mut tls_failed = None;
        let tls = match self.pg_tls.as_ref().filter(|_| ds.table == ACCOUNTS) {
            Some(t) => match self.setup_tls(t, args).await {
                Ok(side) => Some(side),
                Err(e) => {
                    let e = crate::chain(&*e);
                    eprintln!("compare: the TLS fingerprint's set-up failed: {e}");
                    tls_failed = Some(e);
                    None
                }
            },
            None => None,
        };
        let cp = self.snapshot_of(ds);
        let ctx = Context::detached();
        copy_out(&self.client, &ds.raw_copy()).await?; // warm the page cache
        let tls_cp = tls
            .as_ref()
            .map(|t| TableSnapshot::new(&t.db, Table::public(ACCOUNTS)));
        if let Some(t) = &tls {
            copy_out(&t.client, RAW_COPY).await?;
        }
        let (mut raw, mut ordered, mut fp) = (Vec::new(), Vec::new(), Vec::new());
        let (mut tls_raw, mut tls_fp) = (Vec::new(), Vec::new());
        let mut bytes = 0;
        let mut tls_bytes = 0;
        let mut digests = BTreeSet::new();
        let mut tls_digests = BTreeSet::new();
        for _ in 0..args.reps {
            let m = Meter::start(&self.client).await;
            bytes = copy_out(&self.client, &ds.raw_copy()).await?;
            raw.push(m.stop().await);
            let m = Meter::start(&self.client).await;
            copy_out(&self.client, &ds.ordered_copy()).await?;
            ordered.push(m.stop().await);
            let m = Meter::start(&self.client).await;
            digests.insert(cp.fingerprint(&ctx).await?);
            fp.push(m.stop().await);
            if let (Some(t), Some(tcp)) = (&tls, &tls_cp) {
                let m = Meter::start(&t.client).await;
                tls_bytes = copy_out(&t.client, RAW_COPY).await?;
                tls_raw.push(m.stop().await);
                let m = Meter::start(&t.client).await;
                tls_digests.insert(tcp.fingerprint(&ctx).await?);
                tls_fp.push(m.stop().await);
            }
        }
        let (raw, ordered, fp) = (med(&raw), med(&ordered), med(&fp));
        let ratio = raw.wall / fp.wall;
        let mut r = Report::default();
        r.push(
            Row::new(
                "1. table fingerprint",
                ds.says(format!(
                    "`{}`, {} rows ({} of binary COPY)",
                    ds.table,
                    fmt_count(ds.rows),
                    fmt_bytes(bytes)
                )),
            )
            .rollback(format!(
                "{} ({})",
                fmt_secs(fp.wall),
                fmt_rate(bytes, fp.wall)
            ))
            .reference(format!(
                "raw `COPY … TO STDOUT (FORMAT binary)` to nowhere: {} ({})",
                fmt_secs(raw.wall),
                fmt_rate(bytes, raw.wall)
            ))
            .ratio(format!("{} the COPY rate", fmt_ratio(ratio)))
            .target("≥ 0.8× the COPY rate", Some(ratio >= 0.8)),
        );
        r.push(
            Row::new(
                "",
                ds.says(format!(
                    "the same COPY in key order (`SELECT … ORDER BY {}`), to nowhere",
                    ds.key
                )),
            )
            .rollback(fmt_secs(fp.wall))
            .reference(format!(
                "{} ({})",
                fmt_secs(ordered.wall),
                fmt_rate(bytes, ordered.wall)
            ))
            .ratio(format!("{} its rate", fmt_ratio(ordered.wall / fp.wall))),
        );
        r.note(format!(
            "{}: fingerprint breakdown (medians): {}; {}; {}",
            ds.label,
            breakdown("fingerprint", fp),
            breakdown("raw COPY", raw),
            breakdown("ordered COPY", ordered)
        ));
        if digests.len() != 1 {
            r.note(format!(
                "**check failed**: the fingerprint of an unchanged table differed between repetitions ({} digests)",
                digests.len()
            ));
        }
        if let Some(e) = tls_failed {
            r.push(Row::new("", "over TLS: failed").rollback(e));
        }
        if let Some(t) = &tls {
            let (tls_raw, tls_fp) = (med(&tls_raw), med(&tls_fp));
            let tls_ratio = tls_raw.wall / tls_fp.wall;
            // What TLS does to the fingerprint relative to the COPY, and to its own rate.
            let change = tls_ratio / ratio;
            r.push(
                Row::new(
                    "",
                    format!(
                        "over TLS (`sslmode=verify-full`, host `localhost`): the same table ({} rows, {} of binary COPY) in a TLS-only cluster",
                        fmt_count(t.rows),
                        fmt_bytes(tls_bytes)
                    ),
                )
                .rollback(format!(
                    "{} ({})",
                    fmt_secs(tls_fp.wall),
                    fmt_rate(tls_bytes, tls_fp.wall)
                ))
                .reference(format!(
                    "raw binary COPY over the same TLS connection: {} ({})",
                    fmt_secs(tls_raw.wall),
                    fmt_rate(tls_bytes, tls_raw.wall)
                ))
                .ratio(format!(
                    "{} the COPY rate (plain: {})",
                    fmt_ratio(tls_ratio),
                    fmt_ratio(ratio)
                ))
                .target("≥ 0.8× the COPY rate", Some(tls_ratio >= 0.8)),
            );
            r.push(
                Row::new(
                    "",
                    "TLS against plain: the fingerprint's rate relative to the COPY's, over TLS ÷ over a plain connection",
                )
                .rollback(format!("over TLS: {}", fmt_ratio(tls_ratio)))
                .reference(format!(
                    "plain: {}; TLS fingerprint {} vs plain {}",
                    fmt_ratio(ratio),
                    fmt_secs(tls_fp.wall),
                    fmt_secs(fp.wall)
                ))
                .ratio(format!(
                    "{:+.1}% (fingerprint rate over TLS: {} the plain one)",
                    (change - 1.0) * 100.0,
                    fmt_ratio(fp.wall / tls_fp.wall)
                ))
                .target(
                    "TLS changes it by < 10%",
                    Some((change - 1.0).abs() < 0.10),
                ),
            );
            r.note(format!(
                "fingerprint over TLS, breakdown (medians): {}; {}; sessions: {}",
                breakdown("fingerprint", tls_fp),
                breakdown("raw COPY", tls_raw),
                t.sessions
            ));
            if tls_digests.len() != 1 {
                r.note(format!(
                    "**check failed**: the fingerprint over TLS of an unchanged table differed between repetitions ({} digests)",
                    tls_digests.len()
                ));
            }
            r.note(format!(
                "the fingerprint over TLS equals the plain cluster's: {}",
                if tls_digests == digests { "yes" } else { "no" }
            ));
        }
        Ok(r)
    }

    /// The keys changed in the copy: spread over the table.
    fn changed_keys(ds: &Dataset) -> Vec<i64> {
        let n = ds.rows.max(DIFF_CHANGES) as i64;
        (0..DIFF_CHANGES as i64)
            .map(|i| {
                1 + (i * n) / DIFF_CHANGES as i64
                    + (n / 37 + i * 7919) % (n / DIFF_CHANGES as i64).max(1)
            })
            .collect()
    }

    /// 2. Listing the differing keys: the bisecting table-hash verifier against reladiff.
    pub(crate) async fn diff(&self, args: &Args, ds: &Dataset) -> Res<Report> {
        let (table, changed) = (ds.table, ds.changed);
        let t = Instant::now();
        self.client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {changed}; \
                 CREATE TABLE {changed} (LIKE {table} INCLUDING ALL); \
                 INSERT INTO {changed} SELECT * FROM {table}"
            ))
            .await?;
        self.client
            .batch_execute(&format!("VACUUM ANALYZE {changed}"))
            .await?;
        // A snapshot of the copy before it changes: the baseline a run's verifier has.
        let ctx = Context::detached();
        let cp = TableSnapshot::new(&self.db, Table::public(changed));
        let baseline = cp.capture(&ctx).await?;
        // And an undo log of it, whose diff reads only the log.
        let undo = TableUndoLog::new(&self.db, Table::public(changed));
        let undo_snap = undo.capture(&ctx).await?;
        let keys = Self::changed_keys(ds);
        for (i, k) in keys.iter().enumerate() {
            self.client
                .execute(
                    &format!(
                        "UPDATE {changed} SET {c} = {c} + $1::int WHERE {key} = $2::bigint",
                        c = ds.touch,
                        key = ds.key
                    ),
                    &[&(1000 + i as i32), k],
                )
                .await?;
        }
        eprintln!(
            "compare: {}: copy with {DIFF_CHANGES} changed rows made in {}",
            ds.label,
            fmt_secs(secs(t))
        );
        let expected: BTreeSet<String> = keys.iter().map(|k| k.to_string()).collect();
        let between =
            TableHashParity::between(&self.db, Table::public(table), Table::public(changed));
        let against = TableHashParity::new(&self.db, Table::public(changed));
        let run_ctx = Context::detached().with_baseline([baseline.clone()]);
        let (mut two, mut base, mut fps) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ok_two, mut ok_base) = (true, true);
        let mut evidence_line = String::new();
        for _ in 0..args.reps {
            // The limit of a check against the stored chunk digests: one fingerprint of
            // the same (changed) table, in the same repetition.
            let m = Meter::start(&self.client).await;
            cp.fingerprint(&ctx).await?;
            fps.push(m.stop().await);
            for (v, c, costs, ok) in [
                (&between, &ctx, &mut two, &mut ok_two),
                (&against, &run_ctx, &mut base, &mut ok_base),
            ] {
                let m = Meter::start(&self.client).await;
                let verdict = v.verify(c).await?;
                costs.push(m.stop().await);
                let list = |k: &str| -> BTreeSet<String> {
                    verdict.evidence[k]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let changed = list("changed");
                *ok &= verdict.status == Status::Fail
                    && changed == expected
                    && list("added").is_empty()
                    && list("removed").is_empty()
                    && verdict.evidence["truncated"] != serde_json::json!(true);
                evidence_line = format!(
                    "verdict {:?}: \"{}\"; changed keys {:?}",
                    verdict.status, verdict.summary, changed
                );
            }
        }
        cp.discard(&baseline, &ctx).await?;
        // The undo log's diff: the earliest logged image of each key against the row now.
        let (mut logged, mut ok_logged) = (Vec::new(), true);
        let mut logged_line = String::new();
        for _ in 0..args.reps {
            let m = Meter::start(&self.client).await;
            let changes = undo.changes(&undo_snap).await?;
            logged.push(m.stop().await);
            let c = &changes[0];
            let changed: BTreeSet<String> = c.changed.iter().cloned().collect();
            ok_logged &= changed == expected && c.added.is_empty() && c.removed.is_empty();
            logged_line = format!(
                "{} changed, {} added, {} removed from {} log entries; changed keys {:?}",
                c.changed.len(),
                c.added.len(),
                c.removed.len(),
                c.log_entries,
                changed
            );
        }
        undo.discard(&undo_snap, &ctx).await?;
        let logged = med(&logged);
        let (two, base, fp) = (med(&two), med(&base), med(&fps));
        let mut r = Report::default();
        r.note(format!(
            "{}: differences from the undo log (last run): {logged_line}",
            ds.label
        ));
        let exact = |ok: bool| if ok { "exact keys" } else { "WRONG keys" };
        r.note(format!(
            "{}: differences: expected changed keys {:?}; rollback's evidence (last run): {evidence_line} — two tables: {}, against the baseline snapshot: {}",
            ds.label,
            expected,
            exact(ok_two),
            exact(ok_base)
        ));
        r.note(format!(
            "{}: differences breakdown (medians): {}; {}; {}",
            ds.label,
            breakdown("two tables", two),
            breakdown("against the baseline snapshot", base),
            breakdown("fingerprint of the changed table", fp)
        ));
        r.note(format!(
            "{}: differences breakdown (medians): {}",
            ds.label,
            breakdown("from the undo log", logged)
        ));
        let mut rows = vec![
            Row::new(
                "2. finding the differences",
                ds.says(format!(
                    "{DIFF_CHANGES} changed rows among {}: two tables (`TableHashParity::between`)",
                    fmt_count(ds.rows)
                )),
            )
            .rollback(format!("{} ({})", fmt_secs(two.wall), exact(ok_two))),
            Row::new(
                "",
                ds.says("the same against the run's baseline snapshot (`TableHashParity::new`, chunk digests stored at capture)"),
            )
            .rollback(format!("{} ({})", fmt_secs(base.wall), exact(ok_base))),
            Row::new(
                "",
                ds.says("the same from the run's undo log (`TableUndoLog::changes`: logged keys only, O(changes))"),
            )
            .rollback(format!("{} ({})", fmt_secs(logged.wall), exact(ok_logged))),
        ];
        let reladiff_url = self.url.replacen("postgres://", "postgresql://", 1);
        let mut peers = Vec::new();
        match ensure_reladiff().await {
            Err(e) => r.note(format!("reladiff not run: {e}")),
            Ok(()) => {
                for algo in ["auto", "hashdiff"] {
                    match reladiff(&reladiff_url, ds, algo).await {
                        Ok((s, found)) => {
                            if found != expected {
                                r.note(format!("reladiff {algo} found keys {found:?}"));
                            }
                            peers.push((algo, s, found == expected));
                        }
                        Err(e) => r.note(format!("reladiff {algo} failed: {e}")),
                    }
                }
            }
        }
        // Compare with the fastest reladiff run.
        let best = peers.iter().min_by(|a, b| a.1.total_cmp(&b.1)).copied();
        for (row, (ours, ok)) in rows.iter_mut().zip([
            (two.wall, ok_two),
            (base.wall, ok_base),
            (logged.wall, ok_logged),
        ]) {
            if let Some((algo, s, peer_ok)) = best {
                let ratio = s / ours;
                *row = std::mem::take(row)
                    .reference(format!(
                        "reladiff `diff_tables` ({algo}): {}{}",
                        fmt_secs(s),
                        if peer_ok { "" } else { ", wrong keys" }
                    ))
                    .ratio(format!("{} faster", fmt_ratio(ratio)))
                    .target(
                        "≥ 10× faster, exactly the changed keys",
                        Some(ratio >= 10.0 && ok),
                    );
            } else {
                *row = std::mem::take(row).target("exactly the changed keys", Some(ok));
            }
        }
        for row in rows {
            r.push(row);
        }
        let vs_fp = base.wall / fp.wall;
        r.push(
            Row::new(
                "",
                ds.says("against the baseline snapshot, beside one fingerprint of the same table (the read it cannot avoid)"),
            )
            .rollback(format!("{} ({})", fmt_secs(base.wall), exact(ok_base)))
            .reference(format!("`TableSnapshot::fingerprint`: {}", fmt_secs(fp.wall)))
            .ratio(format!("{} the fingerprint's time", fmt_ratio(vs_fp)))
            .target(
                "≤ 1.2× the fingerprint, exactly the changed keys",
                Some(vs_fp <= 1.2 && ok_base),
            ),
        );
        if peers.len() > 1 {
            r.note(format!(
                "{}: reladiff runs: {}",
                ds.label,
                peers
                    .iter()
                    .map(|(a, s, ok)| format!(
                        "{a} {}{}",
                        fmt_secs(*s),
                        if *ok {
                            " (exact keys)"
                        } else {
                            " (wrong keys)"
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        self.client
            .batch_execute(&format!("DROP TABLE IF EXISTS {changed}"))
            .await?;
        Ok(r)
    }

    /// 3. Table snapshot capture and restore against pg_dump -Fc and pg_restore --clean.
    pub(crate) async fn snapshot(&self, args: &Args, ds: &Dataset) -> Res<Report> {
        let dump = self.dir.path().join(format!("{}.dump", ds.table));
        let dump_s = dump.to_string_lossy().to_string();
        let ctx = Context::detached();
        let cp = self.snapshot_of(ds);
        let (mut dumps, mut captures, mut ctas) = (Vec::new(), Vec::new(), Vec::new());
        let mut snap = None;
        for _ in 0..args.reps {
            dumps.push(
                run_tool(
                    &self.bin("pg_dump"),
                    &[
                        "-Fc",
                        "-t",
                        &format!("public.{}", ds.table),
                        "-f",
                        &dump_s,
                        &self.url,
                    ],
                )
                .await?,
            );
            if let Some(s) = snap.take() {
                cp.discard(&s, &ctx).await?;
            }
            let t = Instant::now();
            snap = Some(cp.capture(&ctx).await?);
            captures.push(secs(t));
            let t = Instant::now();
            self.client
                .batch_execute(&format!(
                    "CREATE TABLE rb_ctas AS SELECT * FROM {}",
                    ds.table
                ))
                .await?;
            ctas.push(secs(t));
            self.client.batch_execute("DROP TABLE rb_ctas").await?;
        }
        let snap = snap.ok_or("no snapshot")?;
        let dump_size = std::fs::metadata(&dump).map(|m| m.len()).unwrap_or(0);
        let (dump_t, cap_t, ctas_t) = (median(&dumps), median(&captures), median(&ctas));
        let mut r = Report::default();
        let n = fmt_count(ds.rows);
        r.push(
            Row::new(
                "3. snapshot capture",
                ds.says(format!("`{}`, {n} rows", ds.table)),
            )
            .rollback(fmt_secs(cap_t))
            .reference(format!(
                "`pg_dump -Fc -t`: {} ({} file)",
                fmt_secs(dump_t),
                fmt_bytes(dump_size)
            ))
            .ratio(format!("{} pg_dump's speed", fmt_ratio(dump_t / cap_t)))
            .target("no slower than pg_dump (≥ 1×)", Some(cap_t <= dump_t)),
        );
        r.push(
            Row::new(
                "",
                ds.says("in-database copy limit: `CREATE TABLE … AS SELECT` (no index, no hash)"),
            )
            .rollback(fmt_secs(cap_t))
            .reference(fmt_secs(ctas_t))
            .ratio(format!("{} its speed", fmt_ratio(ctas_t / cap_t))),
        );
        // Restore: change 10 rows, then put the table back.
        let damage = format!(
            "UPDATE {} SET {c} = {c} - 1 WHERE {} IN ({})",
            ds.table,
            ds.key,
            Self::changed_keys(ds)
                .iter()
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            c = ds.touch
        );
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let mut methods = BTreeSet::new();
        let mut parity = true;
        for _ in 0..args.reps {
            self.client.batch_execute(&damage).await?;
            theirs.push(
                run_tool(
                    &self.bin("pg_restore"),
                    &["--clean", "--if-exists", "-d", &self.url, &dump_s],
                )
                .await?,
            );
            self.client.batch_execute(&damage).await?;
            let t = Instant::now();
            let restored = cp.restore(&snap, &ctx).await?;
            ours.push(secs(t));
            methods.insert(restored.method.clone());
            parity &= cp.fingerprint(&ctx).await? == snap.fingerprint;
        }
        // The one-shot swap: the copy is consumed (no second restore from it).
        self.client.batch_execute(&damage).await?;
        let once = self.snapshot_of(ds).keep_snapshot_after_swap(false);
        let t = Instant::now();
        let restored_once = once.restore(&snap, &ctx).await?;
        let once_t = secs(t);
        parity &= once.fingerprint(&ctx).await? == snap.fingerprint;
        let _ = once.discard(&snap, &ctx).await;
        // Restore by copy (TRUNCATE + INSERT … SELECT), for comparison.
        let snap2 = cp.capture(&ctx).await?;
        self.client.batch_execute(&damage).await?;
        let by_copy = self.snapshot_of(ds).restore_method(RestoreMethod::Copy);
        let t = Instant::now();
        by_copy.restore(&snap2, &ctx).await?;
        let copy_t = secs(t);
        parity &= by_copy.fingerprint(&ctx).await? == snap2.fingerprint;
        cp.discard(&snap2, &ctx).await?;

        let (ours_t, theirs_t) = (median(&ours), median(&theirs));
        let ratio = theirs_t / ours_t;
        r.push(
            Row::new(
                "3. snapshot restore",
                ds.says(format!(
                    "after 10 rows changed; default restore (method {}, keeps the snapshot restorable)",
                    methods.into_iter().collect::<Vec<_>>().join("/")
                )),
            )
            .rollback(fmt_secs(ours_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(theirs_t)))
            .ratio(format!("{} faster", fmt_ratio(ratio)))
            .target("≥ 2× faster than pg_restore", Some(ratio >= 2.0)),
        );
        r.push(
            Row::new(
                "",
                ds.says(format!(
                    "one-shot swap (`keep_snapshot_after_swap(false)`, method {})",
                    restored_once.method
                )),
            )
            .rollback(fmt_secs(once_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(theirs_t)))
            .ratio(format!("{} faster", fmt_ratio(theirs_t / once_t))),
        );
        r.push(
            Row::new(
                "",
                ds.says("restore by copy (`RestoreMethod::Copy`: TRUNCATE + INSERT … SELECT)"),
            )
            .rollback(fmt_secs(copy_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(theirs_t)))
            .ratio(format!("{} faster", fmt_ratio(theirs_t / copy_t))),
        );
        r.note(format!(
            "{}: snapshot: every restore left the table equal to the snapshot's fingerprint: {}",
            ds.label,
            if parity { "yes" } else { "**no**" }
        ));
        self.undo_log(args, ds, &mut r, &damage, dump_t, theirs_t)
            .await?;
        Ok(r)
    }

    /// Section 3 for the undo-log checkpoint: capture (triggers + one fingerprint) against
    /// pg_dump, restore after 10 changed rows against pg_restore, the writers' trigger cost.
    async fn undo_log(
        &self,
        args: &Args,
        ds: &Dataset,
        r: &mut Report,
        damage: &str,
        dump_t: f64,
        pg_restore_t: f64,
    ) -> Res<()> {
        let ctx = Context::detached();
        let cp = TableUndoLog::new(&self.db, Table::public(ds.table));
        let (mut captures, mut discards) = (Vec::new(), Vec::new());
        let mut snap = None;
        for _ in 0..args.reps {
            if let Some(s) = snap.take() {
                let t = Instant::now();
                cp.discard(&s, &ctx).await?;
                discards.push(secs(t));
            }
            let t = Instant::now();
            snap = Some(cp.capture(&ctx).await?);
            captures.push(secs(t));
        }
        let snap = snap.ok_or("no snapshot")?;
        let cap_t = median(&captures);
        let n = fmt_count(ds.rows);
        r.push(
            Row::new(
                "3. snapshot capture",
                ds.says(format!(
                    "undo log (`TableUndoLog`: triggers + one fingerprint, no copy), {n} rows"
                )),
            )
            .rollback(fmt_secs(cap_t))
            .reference(format!("`pg_dump -Fc -t`: {}", fmt_secs(dump_t)))
            .ratio(format!("{} pg_dump's speed", fmt_ratio(dump_t / cap_t)))
            .target("no slower than pg_dump (≥ 1×)", Some(cap_t <= dump_t)),
        );
        let (mut restores, mut fps, mut items) = (Vec::new(), Vec::new(), BTreeSet::new());
        let mut parity = true;
        for _ in 0..args.reps {
            self.client.batch_execute(damage).await?;
            let t = Instant::now();
            let restored = cp.restore(&snap, &ctx).await?;
            restores.push(secs(t));
            items.insert(restored.items_changed.unwrap_or(0));
            let t = Instant::now();
            parity &= cp.fingerprint(&ctx).await? == snap.fingerprint;
            fps.push(secs(t));
        }
        let (rest_t, fp_t) = (median(&restores), median(&fps));
        let ratio = pg_restore_t / rest_t;
        r.push(
            Row::new(
                "3. snapshot restore",
                ds.says("undo log, after 10 rows changed (restore alone: the 10 logged keys)"),
            )
            .rollback(fmt_secs(rest_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(pg_restore_t)))
            .ratio(format!("{} faster", fmt_ratio(ratio)))
            .target("≥ 5× faster than pg_restore", Some(ratio >= 5.0)),
        );
        r.push(
            Row::new(
                "",
                ds.says("undo log restore + the parity fingerprint the executor takes after it"),
            )
            .rollback(format!(
                "{} ({} + {})",
                fmt_secs(rest_t + fp_t),
                fmt_secs(rest_t),
                fmt_secs(fp_t)
            ))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(pg_restore_t)))
            .ratio(format!(
                "{} faster",
                fmt_ratio(pg_restore_t / (rest_t + fp_t))
            )),
        );
        if ds.table != ACCOUNTS {
            // The writers' costs below are measured on pgbench alone (the trigger before
            // it recorded writers is re-created for pgbench's columns).
            cp.discard(&snap, &ctx).await?;
            r.note(format!(
                "{}: undo log: rows written back per 10-row restore {items:?}; every restore left the table equal to the snapshot's fingerprint: {}",
                ds.label,
                if parity { "yes" } else { "**no**" }
            ));
            return Ok(());
        }
        // What writers pay: the same 1% update without and with the log (alternating),
        // and the restore that undoes it.
        let pct = format!("UPDATE {ACCOUNTS} SET abalance = abalance + 1 WHERE aid % 100 = 7");
        let t = Instant::now();
        cp.discard(&snap, &ctx).await?;
        discards.push(secs(t));
        let (mut plain, mut logged, mut bigs, mut written) =
            (Vec::new(), Vec::new(), Vec::new(), BTreeSet::new());
        for _ in 0..args.reps {
            let t = Instant::now();
            self.client.batch_execute(&pct).await?;
            plain.push(secs(t));
            let snap = cp.capture(&ctx).await?;
            let t = Instant::now();
            self.client.batch_execute(&pct).await?;
            logged.push(secs(t));
            let t = Instant::now();
            let big = cp.restore(&snap, &ctx).await?;
            bigs.push(secs(t));
            written.insert(big.items_changed.unwrap_or(0));
            parity &= cp.fingerprint(&ctx).await? == snap.fingerprint;
            cp.discard(&snap, &ctx).await?;
        }
        let (plain_t, logged_t, big_t) = (median(&plain), median(&logged), median(&bigs));
        let updated = ds.rows / 100;
        r.push(
            Row::new(
                "",
                format!(
                    "writers' cost: `UPDATE` of 1% of the rows ({}) with the undo log's trigger",
                    fmt_count(updated)
                ),
            )
            .rollback(fmt_secs(logged_t))
            .reference(format!("without the trigger: {}", fmt_secs(plain_t)))
            .ratio(format!("{} the time", fmt_ratio(logged_t / plain_t))),
        );
        // What recording the writer costs (the log's `_rollback_writer` and `_rollback_op`
        // columns, the setting read): the same update, marked as the run's, under the
        // library's trigger (per statement) and under the undo log's trigger as it was
        // before it recorded writers (per row, re-created here as the baseline).
        // 10% of the rows per update, each variant first in every other repetition, so
        // that noise and the table's growth weigh on both alike.
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let marked = format!(
            "BEGIN; SELECT set_config('rollback.writer', '{}', true); \
             UPDATE {ACCOUNTS} SET abalance = abalance + 1 WHERE aid % 10 = 7; COMMIT",
            uuid::Uuid::new_v4()
        );
        for rep in 0..args.reps.max(5) {
            for legacy in [rep % 2 == 0, rep % 2 == 1] {
                if legacy {
                    self.client.batch_execute(LEGACY_UNDO_LOG).await?;
                    let t = Instant::now();
                    self.client.batch_execute(&marked).await?;
                    without.push(secs(t));
                    self.client.batch_execute(LEGACY_UNDO_LOG_DROP).await?;
                } else {
                    let snap = cp.capture(&ctx).await?;
                    let t = Instant::now();
                    self.client.batch_execute(&marked).await?;
                    with.push(secs(t));
                    cp.discard(&snap, &ctx).await?;
                }
            }
        }
        let (without_t, with_t) = (median(&without), median(&with));
        let over = with_t / without_t - 1.0;
        r.push(
            Row::new(
                "",
                format!(
                    "writers' cost of recording who wrote (a run id): `UPDATE` of 10% of the rows ({}) under the undo log's trigger",
                    fmt_count(ds.rows / 10)
                ),
            )
            .rollback(fmt_secs(with_t))
            .reference(format!(
                "the trigger before it recorded writers (per row): {}",
                fmt_secs(without_t)
            ))
            .ratio(format!("{:+.1}%", over * 100.0))
            .target("< 10% over the trigger before it", Some(over < 0.10)),
        );
        // An application's writes are mostly one row per statement: 1,000 single-row
        // updates, one statement each, under each trigger and under none.
        const SINGLE: i32 = 1_000;
        let stmt = self
            .client
            .prepare(&format!(
                "UPDATE {ACCOUNTS} SET abalance = abalance + 1 WHERE aid = $1"
            ))
            .await?;
        let (mut none1, mut old1, mut new1) = (Vec::new(), Vec::new(), Vec::new());
        let step = ((ds.rows as i32) / SINGLE).max(1);
        for rep in 0..args.reps.max(5) {
            for variant in [rep % 3, (rep + 1) % 3, (rep + 2) % 3] {
                let snap = match variant {
                    1 => {
                        self.client.batch_execute(LEGACY_UNDO_LOG).await?;
                        None
                    }
                    2 => Some(cp.capture(&ctx).await?),
                    _ => None,
                };
                let t = Instant::now();
                for i in 0..SINGLE {
                    self.client.execute(&stmt, &[&(i * step + 1)]).await?;
                }
                let took = secs(t);
                match variant {
                    1 => {
                        old1.push(took);
                        self.client.batch_execute(LEGACY_UNDO_LOG_DROP).await?;
                    }
                    2 => {
                        new1.push(took);
                        if let Some(snap) = snap {
                            cp.discard(&snap, &ctx).await?;
                        }
                    }
                    _ => none1.push(took),
                }
            }
        }
        let (none_t, old_t, new_t) = (median(&none1), median(&old1), median(&new1));
        r.push(
            Row::new(
                "",
                format!("writers' cost, one row per statement: {SINGLE} single-row `UPDATE`s under the undo log's trigger"),
            )
            .rollback(fmt_secs(new_t))
            .reference(format!(
                "the trigger before it recorded writers: {}; no trigger: {}",
                fmt_secs(old_t),
                fmt_secs(none_t)
            ))
            .ratio(format!("{:+.1}% over the trigger before it", (new_t / old_t - 1.0) * 100.0))
            .target("< 10% over the trigger before it", Some(new_t / old_t - 1.0 < 0.10)),
        );
        r.push(
            Row::new(
                "",
                format!(
                    "undo log restore after that 1% update ({} rows written back)",
                    written
                        .iter()
                        .map(|n| fmt_count(*n))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .rollback(fmt_secs(big_t))
            .reference(format!("`pg_restore --clean`: {}", fmt_secs(pg_restore_t)))
            .ratio(format!("{} faster", fmt_ratio(pg_restore_t / big_t))),
        );
        r.note(format!(
            "undo log: rows written back per 10-row restore {items:?}; every restore left the table equal to the snapshot's fingerprint: {}; discard (drop triggers, function, log) median {}",
            if parity { "yes" } else { "**no**" },
            fmt_secs(median(&discards))
        ));
        Ok(())
    }

    /// 6. Peak RSS of fingerprinting 10M × scale rows, per child process.
    pub(crate) async fn memory(&self, args: &Args) -> Res<Report> {
        let n = ((10_000_000.0 * args.scale).round() as u64).max(1000);
        let t = Instant::now();
        self.client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {MEM_TABLE}; \
                 CREATE TABLE {MEM_TABLE} (aid integer NOT NULL, bid integer NOT NULL, abalance integer NOT NULL, filler character(84)); \
                 INSERT INTO {MEM_TABLE} SELECT g, (g - 1) / 100000 + 1, 0, '' FROM generate_series(1, {n}) g; \
                 ALTER TABLE {MEM_TABLE} ADD PRIMARY KEY (aid)"
            ))
            .await?;
        self.client
            .batch_execute(&format!("VACUUM ANALYZE {MEM_TABLE}"))
            .await?;
        eprintln!(
            "compare: {} rows for the memory test made in {}",
            fmt_count(n),
            fmt_secs(secs(t))
        );
        let idle = run_child(&["idle".into()], &[]).await?;
        let copy = run_child(&["copy".into(), self.url.clone(), MEM_TABLE.into()], &[]).await?;
        let fp = run_child(
            &["fingerprint".into(), self.url.clone(), MEM_TABLE.into()],
            &[],
        )
        .await?;
        self.client
            .batch_execute(&format!("DROP TABLE IF EXISTS {MEM_TABLE}"))
            .await?;
        let kib = |v: &serde_json::Value| v["peak_rss_kib"].as_u64().unwrap_or(0);
        let mut r = Report::default();
        let peak = kib(&fp) * 1024;
        r.push(
            Row::new(
                "6. peak memory",
                format!("fingerprint of {} rows", fmt_count(n)),
            )
            .rollback(format!(
                "{} ({})",
                fmt_bytes(peak),
                fmt_secs(fp["secs"].as_f64().unwrap_or(0.0))
            ))
            .reference(format!(
                "raw COPY client: {}; idle process: {}",
                fmt_bytes(kib(&copy) * 1024),
                fmt_bytes(kib(&idle) * 1024)
            ))
            .target("< 100 MiB", Some(peak < 100 * 1024 * 1024)),
        );
        Ok(r)
    }

    /// The admin URL (for cleanups).
    #[allow(dead_code)]
    pub(crate) fn admin(&self) -> &str {
        &self.admin
    }
}

/// Make sure reladiff is importable, installing it with pip when it is not.
async fn ensure_reladiff() -> Res<()> {
    let ok = |o: std::process::Output| o.status.success();
    let probe = || {
        tokio::process::Command::new("python3")
            .args(["-c", "import reladiff"])
            .output()
    };
    if probe().await.map(ok).unwrap_or(false) {
        return Ok(());
    }
    eprintln!("compare: installing reladiff[postgresql] with pip");
    let status = tokio::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "reladiff[postgresql]"])
        .status()
        .await?;
    if !status.success() || !probe().await.map(ok).unwrap_or(false) {
        return Err(
            "reladiff is missing and `python3 -m pip install 'reladiff[postgresql]'` failed".into(),
        );
    }
    Ok(())
}

const RELADIFF_PY: &str = r#"
import sys, time, json
from reladiff import connect_to_table, diff_tables, Algorithm
url, t1, t2, algo = sys.argv[1:5]
t0 = time.perf_counter()
key, extra = sys.argv[5], tuple(sys.argv[6].split(","))
a = connect_to_table(url, t1, key)
b = connect_to_table(url, t2, key)
diff = list(diff_tables(a, b, extra_columns=extra, algorithm=Algorithm(algo)))
el = time.perf_counter() - t0
print(json.dumps({"secs": el, "keys": sorted({str(row[0]) for sign, row in diff}), "rows": len(diff)}))
"#;

/// Time reladiff's `diff_tables` (inside the Python process, so interpreter start-up is
/// not counted); returns (seconds, keys found).
async fn reladiff(url: &str, ds: &Dataset, algo: &str) -> Res<(f64, BTreeSet<String>)> {
    let out = tokio::process::Command::new("python3")
        .args([
            "-c",
            RELADIFF_PY,
            url,
            ds.table,
            ds.changed,
            algo,
            ds.key,
            &ds.columns.join(","),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!("python exited {}: {}", out.status, tail.join(" / ")).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("no result line")?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let keys = v["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((v["secs"].as_f64().unwrap_or(f64::NAN), keys))
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
