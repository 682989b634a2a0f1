//! [`PgJournal`]: the run journal in PostgreSQL, shared by many processes and machines.

use crate::db::Database;
use crate::error::{Class, PgError, PgResultExt};
use crate::ident::quote_ident;
use async_trait::async_trait;
use rollback_core::journal::{
    check_fence, decide_lease, verify_chain, Entry, Journal, JournalError, Lease, LiveProgress,
    Record,
};
use rollback_core::{Digest, Error, Result};
use std::time::Duration;
use tokio::sync::OnceCell;

/// A [`Journal`] in PostgreSQL: many executors in many processes on many machines share
/// runs through it.
///
/// - **Records** live in `_rollback.journal(run_id, seq, at_ms, prev, entry, hash)` with
///   primary key `(run_id, seq)`; `entry` is the exact JSON that was hashed (text; a
///   generated `entry_json jsonb` and `kind` column are there for operators' queries).
///   Each append runs in one transaction that takes `pg_advisory_xact_lock` on the run,
///   reads the run's head, refuses a writer whose fencing epoch is older than the head's
///   ([`Error::Fenced`]), seals the record with [`Record::seal`] chained to it and
///   inserts it, with `synchronous_commit = on`: it is durable when `append` returns.
///   Should another writer slip in anyway, the primary key refuses the duplicate seq and
///   the append fails with [`JournalError::Concurrent`]. A connection lost during
///   `COMMIT` is resolved by looking the record up.
/// - **Reads** return the records in `seq` order after [`verify_chain`]: an altered,
///   deleted or reordered row is a [`JournalError`] (`Tampered`, `OutOfOrder`,
///   `Malformed`), never silently accepted. Transactions make torn records impossible.
/// - **Leases** live in `_rollback.leases(key, holder, expires_at_ms, taken_over_from,
///   epoch)`, decided under an advisory lock on the key with the **database server's
///   clock**, so machines with skewed clocks agree on expiry; an expired lease is taken
///   over and the previous holder named. Every grant to a new holder increments the key's
///   fencing `epoch`; a released lease keeps its row (empty holder) so the epoch never
///   goes back.
/// - **Progress** of running runs (not records: the latest value per source, for
///   `rollback watch` on other machines) lives in `_rollback.progress(run_id, source,
///   done, total, unit, at_ms)`, created on the first publish where the role may create
///   it; where it may not, progress is dropped (the run goes on).
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_core::Executor;
/// use rollback_postgres::{Database, PgJournal};
/// let db = Database::connect("postgres://postgres@127.0.0.1:55432/ops")?;
/// let executor = Executor::new(PgJournal::new(&db));
/// # let _ = executor; Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgJournal {
    db: Database,
    schema: String,
    ready: OnceCell<()>,
    /// Whether the progress table is usable (created on first publish where the role may).
    progress_ready: OnceCell<bool>,
}

impl PgJournal {
    /// A journal in the `_rollback` schema of `db` (tables created on first use).
    pub fn new(db: &Database) -> Self {
        PgJournal {
            db: db.clone(),
            schema: crate::markers::DEFAULT_MARKER_SCHEMA.into(),
            ready: OnceCell::new(),
            progress_ready: OnceCell::new(),
        }
    }

    /// Use another schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn records_table(&self) -> String {
        format!("{}.journal", quote_ident(&self.schema))
    }

    fn progress_table(&self) -> String {
        format!("{}.progress", quote_ident(&self.schema))
    }

    /// Create the progress table once, if the role may; whether it is usable.
    async fn progress_ready(&self) -> bool {
        *self
            .progress_ready
            .get_or_init(|| async {
                let made = async {
                    self.ensure().await?;
                    let c = self.db.lib_client().await?;
                    c.batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {} ( \
                            run_id text NOT NULL, source text NOT NULL, done bigint NOT NULL, \
                            total bigint, unit text NOT NULL, at_ms bigint NOT NULL, \
                            PRIMARY KEY (run_id, source))",
                        self.progress_table()
                    ))
                    .await
                    .map_err(|e| journal_err(PgError::new("creating the progress table", &e)))
                }
                .await;
                made.inspect_err(|e| tracing::debug!(error = %e, "progress is not published"))
                    .is_ok()
            })
            .await
    }

    fn leases_table(&self) -> String {
        format!("{}.leases", quote_ident(&self.schema))
    }

    /// Create the tables if absent. Nothing that exists is created again: a schema a DBA
    /// created beforehand needs no `CREATE` privilege on the database (`CREATE SCHEMA IF
    /// NOT EXISTS` would check it all the same), and tables that exist need none on the
    /// schema.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn ensure(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async {
                let c = self.db.lib_client().await?;
                let r = c
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1), \
                                (SELECT count(*) FROM pg_catalog.pg_class c \
                                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                                 WHERE n.nspname = $1 AND c.relname IN ('journal', 'leases') AND c.relkind = 'r')",
                        &[&self.schema],
                    )
                    .await
                    .map_err(|e| journal_err(PgError::new("looking up journal tables", &e)))?;
                let (schema_exists, present): (bool, i64) = (r.get(0), r.get(1));
                if present == 2 {
                    return Ok(());
                }
                let s = quote_ident(&self.schema);
                let create_schema = if schema_exists {
                    String::new()
                } else {
                    format!("CREATE SCHEMA IF NOT EXISTS {s}; ")
                };
                let ddl = format!(
                    "{create_schema}\
                     CREATE TABLE IF NOT EXISTS {s}.journal ( \
                        run_id text NOT NULL, seq bigint NOT NULL, at_ms bigint NOT NULL, \
                        prev text NOT NULL, entry text NOT NULL, hash text NOT NULL, \
                        entry_json jsonb GENERATED ALWAYS AS (entry::jsonb) STORED, \
                        kind text GENERATED ALWAYS AS (entry::jsonb ->> 'type') STORED, \
                        written_at timestamptz NOT NULL DEFAULT now(), \
                        epoch bigint NOT NULL DEFAULT 0, \
                        PRIMARY KEY (run_id, seq)); \
                     ALTER TABLE {s}.journal ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0; \
                     CREATE TABLE IF NOT EXISTS {s}.leases ( \
                        key text PRIMARY KEY, holder text NOT NULL, expires_at_ms bigint NOT NULL, \
                        taken_over_from text, updated_at timestamptz NOT NULL DEFAULT now(), \
                        epoch bigint NOT NULL DEFAULT 0); \
                     ALTER TABLE {s}.leases ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0; \
                     CREATE INDEX IF NOT EXISTS journal_plan ON {s}.journal ((entry_json ->> 'plan')) WHERE seq = 0;"
                );
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
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => {
                            return Err(journal_err(PgError::new("creating journal tables", &e)))
                        }
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    async fn find(&self, run_id: &str, seq: i64, hash: &str) -> Result<bool> {
        let c = self.db.lib_client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT 1 FROM {} WHERE run_id = $1 AND seq = $2 AND hash = $3",
                    self.records_table()
                ),
                &[&run_id, &seq, &hash],
            )
            .await
            .ctx("looking up a journal record")?;
        Ok(row.is_some())
    }
}

fn journal_err(e: PgError) -> Error {
    match e.class() {
        Class::Transient | Class::Connection => e.into_core(false),
        Class::Permanent => Error::Journal(JournalError::Backend(e.to_string())),
    }
}

#[async_trait]
impl Journal for PgJournal {
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
        self.ensure().await?;
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .transaction()
            .await
            .map_err(|e| journal_err(PgError::new("journal append", &e)))?;
        tx.batch_execute("SET LOCAL synchronous_commit = on")
            .await
            .map_err(|e| journal_err(PgError::new("journal append", &e)))?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('rollback-journal:' || $1, 0))",
            &[&run_id],
        )
        .await
        .map_err(|e| journal_err(PgError::new("locking the run's journal", &e)))?;
        let head = tx
            .query_opt(
                &format!(
                    "SELECT seq, hash, epoch FROM {} WHERE run_id = $1 ORDER BY seq DESC LIMIT 1",
                    self.records_table()
                ),
                &[&run_id],
            )
            .await
            .map_err(|e| journal_err(PgError::new("reading the run's head", &e)))?;
        let (seq, prev, head_epoch) = match head {
            Some(r) => {
                let seq: i64 = r.get(0);
                let hash: String = r.get(1);
                let head_epoch: i64 = r.get(2);
                let prev = Digest::from_hex(&hash).map_err(|_| {
                    Error::Journal(JournalError::Malformed {
                        run_id: run_id.to_string(),
                        line: seq as u64 + 1,
                        message: "stored hash is not a digest".into(),
                    })
                })?;
                (seq as u64 + 1, prev, head_epoch.max(0) as u64)
            }
            None => (0, Digest::default(), 0),
        };
        // Fencing: refused in the transaction that holds the run's lock, before any write.
        check_fence(run_id, head_epoch, epoch)?;
        let db_epoch = i64::try_from(epoch)
            .map_err(|_| Error::invalid(format!("fencing epoch {epoch} does not fit a bigint")))?;
        let rec = Record::seal(
            run_id,
            seq,
            rollback_core::now_ms(),
            prev,
            epoch,
            entry.clone(),
        );
        let json = serde_json::to_string(&rec.entry)
            .map_err(|e| Error::Journal(JournalError::Backend(format!("encoding entry: {e}"))))?;
        let hash = rec.hash.to_hex();
        let inserted = tx
            .execute(
                &format!(
                    "INSERT INTO {} (run_id, seq, at_ms, prev, entry, hash, epoch) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    self.records_table()
                ),
                &[
                    &run_id,
                    &(seq as i64),
                    &(rec.at_ms as i64),
                    &rec.prev.to_hex(),
                    &json,
                    &hash,
                    &db_epoch,
                ],
            )
            .await;
        if let Err(e) = inserted {
            if e.code().map(|c| c.code()) == Some("23505") {
                return Err(Error::Journal(JournalError::Concurrent {
                    run_id: run_id.to_string(),
                    seq,
                }));
            }
            return Err(journal_err(PgError::new("inserting a journal record", &e)));
        }
        match tx.commit().await {
            Ok(()) => Ok(rec),
            Err(e) => {
                let pe = PgError::new("committing a journal record", &e);
                if pe.class() == Class::Connection
                    && self.find(run_id, seq as i64, &hash).await.unwrap_or(false)
                {
                    return Ok(rec);
                }
                Err(journal_err(pe))
            }
        }
    }

    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        self.ensure().await?;
        let c = self.db.lib_client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT seq, at_ms, prev, entry, hash, epoch FROM {} WHERE run_id = $1 ORDER BY seq",
                    self.records_table()
                ),
                &[&run_id],
            )
            .await
            .map_err(|e| journal_err(PgError::new("reading the journal", &e)))?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let malformed = |message: String| {
                Error::Journal(JournalError::Malformed {
                    run_id: run_id.to_string(),
                    line: i as u64 + 1,
                    message,
                })
            };
            let seq: i64 = r.get(0);
            let at_ms: i64 = r.get(1);
            let prev: String = r.get(2);
            let entry: String = r.get(3);
            let hash: String = r.get(4);
            let epoch: i64 = r.get(5);
            let entry: Entry = serde_json::from_str(&entry)
                .map_err(|e| malformed(format!("entry is not a journal entry: {e}")))?;
            out.push(Record {
                seq: seq.max(0) as u64,
                at_ms: at_ms.max(0) as u64,
                prev: Digest::from_hex(&prev)
                    .map_err(|_| malformed("prev is not a digest".into()))?,
                epoch: u64::try_from(epoch).map_err(|_| malformed("epoch is negative".into()))?,
                entry,
                hash: Digest::from_hex(&hash)
                    .map_err(|_| malformed("hash is not a digest".into()))?,
            });
        }
        verify_chain(run_id, &out)?;
        Ok(out)
    }

    async fn runs(&self) -> Result<Vec<String>> {
        self.ensure().await?;
        let c = self.db.lib_client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT DISTINCT run_id FROM {} ORDER BY run_id",
                    self.records_table()
                ),
                &[],
            )
            .await
            .map_err(|e| journal_err(PgError::new("listing runs", &e)))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
        self.ensure().await?;
        let c = self.db.lib_client().await?;
        // The first record of a run is its `run_started`; answered from an index.
        let rows = c
            .query(
                &format!(
                    "SELECT run_id FROM {} WHERE seq = 0 AND entry_json ->> 'plan' = $1 ORDER BY run_id",
                    self.records_table()
                ),
                &[&plan],
            )
            .await
            .map_err(|e| journal_err(PgError::new("listing the runs of a plan", &e)))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        self.ensure().await?;
        let mut obj = self.db.lib_client().await?;
        let client: &mut tokio_postgres::Client = &mut obj;
        let tx = client
            .transaction()
            .await
            .map_err(|e| journal_err(PgError::new("lease", &e)))?;
        let now: i64 = tx
            .query_one(
                "SELECT pg_advisory_xact_lock(hashtextextended('rollback-lease:' || $1, 0)), \
                        (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[&key],
            )
            .await
            .map_err(|e| journal_err(PgError::new("locking the lease", &e)))?
            .get(1);
        let current = tx
            .query_opt(
                &format!(
                    "SELECT holder, expires_at_ms, taken_over_from, epoch FROM {} WHERE key = $1",
                    self.leases_table()
                ),
                &[&key],
            )
            .await
            .map_err(|e| journal_err(PgError::new("reading the lease", &e)))?
            .map(|r| lease_from_row(key, &r));
        // The server's clock decides expiry for every holder.
        let lease = decide_lease(current.as_ref(), key, holder, ttl, now.max(0) as u64)?;
        store_lease(&tx, &self.leases_table(), &lease).await?;
        tx.commit()
            .await
            .map_err(|e| journal_err(PgError::new("committing the lease", &e)))?;
        if let Some(prev) = &lease.taken_over_from {
            tracing::warn!(key, holder, previous = %prev, epoch = lease.epoch, "took over an expired lease");
        }
        Ok(lease)
    }

    async fn publish_progress(&self, run_id: &str, p: &LiveProgress) -> Result<()> {
        if !self.progress_ready().await {
            return Ok(());
        }
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let c = self.db.lib_client().await?;
        c.execute(
            &format!(
                "INSERT INTO {} (run_id, source, done, total, unit, at_ms) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (run_id, source) DO UPDATE SET done = EXCLUDED.done, total = EXCLUDED.total, \
                 unit = EXCLUDED.unit, at_ms = EXCLUDED.at_ms",
                self.progress_table()
            ),
            &[
                &run_id,
                &p.source,
                &big(p.done),
                &p.total.map(big),
                &p.unit,
                &big(p.at_ms),
            ],
        )
        .await
        .map_err(|e| journal_err(PgError::new("publishing progress", &e)))?;
        Ok(())
    }

    async fn progress(&self, run_id: &str) -> Result<Vec<LiveProgress>> {
        self.ensure().await?;
        let c = self.db.lib_client().await?;
        let rows = match c
            .query(
                &format!(
                    "SELECT source, done, total, unit, at_ms FROM {} WHERE run_id = $1 ORDER BY source",
                    self.progress_table()
                ),
                &[&run_id],
            )
            .await
        {
            Ok(rows) => rows,
            // Nothing was ever published here.
            Err(e) if e.code().map(|c| c.code()) == Some("42P01") => return Ok(Vec::new()),
            Err(e) => return Err(journal_err(PgError::new("reading progress", &e))),
        };
        let n = |v: i64| v.max(0) as u64;
        Ok(rows
            .iter()
            .map(|r| LiveProgress {
                source: r.get(0),
                done: n(r.get(1)),
                total: r.get::<_, Option<i64>>(2).map(n),
                unit: r.get(3),
                at_ms: n(r.get(4)),
            })
            .collect())
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        self.ensure().await?;
        let c = self.db.lib_client().await?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT holder, expires_at_ms, taken_over_from, epoch FROM {} WHERE key = $1",
                    self.leases_table()
                ),
                &[&key],
            )
            .await
            .map_err(|e| journal_err(PgError::new("reading the lease", &e)))?;
        Ok(row.map(|r| lease_from_row(key, &r)))
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        self.ensure().await?;
        let c = self.db.lib_client().await?;
        // Keep the row and its epoch: the next grant of the key must be newer.
        c.execute(
            &format!(
                "UPDATE {} SET holder = '', expires_at_ms = 0, taken_over_from = NULL, updated_at = now() \
                 WHERE key = $1 AND holder = $2",
                self.leases_table()
            ),
            &[&key, &holder],
        )
        .await
        .map_err(|e| journal_err(PgError::new("releasing the lease", &e)))?;
        Ok(())
    }
}

/// A lease from a row of `SELECT holder, expires_at_ms, taken_over_from, epoch`.
fn lease_from_row(key: &str, r: &tokio_postgres::Row) -> Lease {
    Lease {
        key: key.to_string(),
        holder: r.get(0),
        expires_at_ms: r.get::<_, i64>(1).max(0) as u64,
        taken_over_from: r.get(2),
        epoch: r.get::<_, i64>(3).max(0) as u64,
    }
}

async fn store_lease(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    lease: &Lease,
) -> Result<()> {
    // Contract clause 5: expiries and epochs saturate within bigint (never wrap negative).
    let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    tx.execute(
        &format!(
            "INSERT INTO {table} (key, holder, expires_at_ms, taken_over_from, epoch, updated_at) \
             VALUES ($1, $2, $3, $4, $5, now()) \
             ON CONFLICT (key) DO UPDATE SET holder = EXCLUDED.holder, expires_at_ms = EXCLUDED.expires_at_ms, \
             taken_over_from = EXCLUDED.taken_over_from, epoch = EXCLUDED.epoch, updated_at = now()"
        ),
        &[
            &lease.key,
            &lease.holder,
            &big(lease.expires_at_ms),
            &lease.taken_over_from,
            &big(lease.epoch),
        ],
    )
    .await
    .map_err(|e| journal_err(PgError::new("writing the lease", &e)))?;
    Ok(())
}
