//! The SaaS cutover: one plan over a PostgreSQL database, an object store and feature
//! flags, with checkpoints of every resource, parity and referential-integrity verifiers,
//! a health trigger during a soak window, a status-page notifier, and failure injection.
//!
//! The story: customers' `name` is split into `first_name` / `last_name` (database), their
//! attachments move from `v1/{customer_id}/…` to `v2/{customer_id}/…` (storage), and the
//! application's new code paths are rolled out behind two flags (flags):
//! `new_name_fields` (after the backfill) and `use_v2_storage` (after the move).
//!
//! ```text
//! database  add-name-columns → backfill-names → add-name-constraint
//!                                   │                 │
//! flags                             └─► rollout-new-name-fields (10% → 50% → 100%)
//! storage   move-attachments-v1-v2
//!                 │
//! flags           └─► rollout-use-v2-storage (10% → 50% → 100%)
//! ```
//!
//! The flags are the kill switch: each one depends on the change it exposes, so a
//! rollback turns it off *before* that change is undone, and the application stops
//! reading the new columns or the new layout first. Each flag has its own checkpoint, so
//! a partial rollback ([`RollbackScope::Component`]) can keep one and undo the other.
//!
//! [`Backends`] holds the four real backends (a [`Database`], an [`ObjectBackend`], a
//! [`FlagProvider`], a journal); [`Backends::seed`] lays down the fixture,
//! [`Backends::plan`] builds the plan, [`Backends::execute`] runs it.

use crate::faults::FailAfterCopies;
use async_trait::async_trait;
use futures::StreamExt;
use rollback_core::events::{Notice, Notifier, RunEvent};
use rollback_core::journal::Journal;
use rollback_core::report::StepState;
use rollback_core::{
    Checkpoint, ConsoleProgress, Context, Error, Executor, Outcome, Plan, Result, RollbackScope,
    RunReport, SnapshotRetention, Step, StepOptions, Trigger, Verdict, Verifier,
};
use rollback_flags::{Expect, FlagCheckpoint, FlagProvider, FlagState, FlagsMatch, StagedRollout};
use rollback_postgres::{
    quote_ident, quote_literal, Backfill, Database, ForeignKeyIntegrity, RowCountParity,
    SqlAssertion, SqlStep, Table, TableSnapshot,
};
use rollback_probes::{Analysis, Condition, PrometheusProbe};
use rollback_s3::{ManifestParity, MovePrefix, ObjectBackend, PutMode, S3Checkpoint};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The old layout of attachments.
pub const FROM: &str = "v1/";
/// The new layout of attachments.
pub const TO: &str = "v2/";

/// Step ids, as they appear in reports.
pub mod steps {
    /// `ALTER TABLE customers ADD COLUMN first_name, last_name` (compensable).
    pub const ADD_COLUMNS: &str = "add-name-columns";
    /// The batched backfill of the new columns (restore-only).
    pub const BACKFILL: &str = "backfill-names";
    /// The validated `CHECK` constraint on the new columns (compensable).
    pub const CONSTRAINT: &str = "add-name-constraint";
    /// The staged rollout of `new_name_fields` (compensable).
    pub const ROLLOUT_NAMES: &str = "rollout-new-name-fields";
    /// The move of every attachment from `v1/` to `v2/` (compensable).
    pub const MOVE: &str = "move-attachments-v1-v2";
    /// The staged rollout of `use_v2_storage` (compensable).
    pub const ROLLOUT_STORAGE: &str = "rollout-use-v2-storage";
}

/// The shortest soak window of the soak drill ([`FailAt::Soak`]): the breach ends it.
pub const SOAK_DRILL_WINDOW: Duration = Duration::from_secs(20);

/// Which failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailAt {
    /// Nothing fails: the plan commits after the soak window.
    None,
    /// The backfill fails midway: a batch hits a poisoned row (some batches committed).
    Backfill,
    /// The object move fails midway (drill switch of the move step).
    Relayout,
    /// The application's error rate breaches the health threshold during the soak window.
    Soak,
}

impl FromStr for FailAt {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(FailAt::None),
            "backfill" => Ok(FailAt::Backfill),
            "relayout" => Ok(FailAt::Relayout),
            "soak" => Ok(FailAt::Soak),
            other => Err(format!(
                "--fail-at {other:?}: expected backfill, relayout, soak or none"
            )),
        }
    }
}

impl fmt::Display for FailAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailAt::None => "none",
            FailAt::Backfill => "backfill",
            FailAt::Relayout => "relayout",
            FailAt::Soak => "soak",
        })
    }
}

/// Parse `plan` or `component`.
///
/// # Errors
/// A message naming the accepted values.
pub fn parse_scope(s: &str) -> std::result::Result<RollbackScope, String> {
    match s {
        "plan" => Ok(RollbackScope::Plan),
        "component" => Ok(RollbackScope::Component),
        other => Err(format!("--scope {other:?}: expected plan or component")),
    }
}

/// `plan` or `component`.
pub fn scope_name(s: RollbackScope) -> &'static str {
    match s {
        RollbackScope::Plan => "plan",
        RollbackScope::Component => "component",
    }
}

/// How a cutover runs: data sizes, timings, the failure to inject, the rollback scope.
#[derive(Debug, Clone)]
pub struct Options {
    /// The failure to inject.
    pub fail_at: FailAt,
    /// Whole-plan or component rollback.
    pub scope: RollbackScope,
    /// Customers in the fixture.
    pub customers: u64,
    /// Attachments (objects) in the fixture.
    pub attachments: u64,
    /// Rows per backfill batch.
    pub batch: u64,
    /// Pause between backfill batches.
    pub throttle: Duration,
    /// Rollout stages of both flags (percentages).
    pub stages: Vec<u32>,
    /// Pause after each rollout stage, before its health check.
    pub stage_pause: Duration,
    /// The soak window.
    pub soak: Duration,
    /// How often the health trigger is polled during the soak window.
    pub poll: Duration,
    /// Highest error rate the application may show (0.01 = 1 %).
    pub max_error_rate: f64,
    /// Release baseline snapshots once a rollback proved their resource back at its
    /// baseline (snapshots of resources left migrated are kept).
    pub discard_proven_snapshots: bool,
    /// Take the health trigger from a Prometheus instead of the built-in read-path probe:
    /// its URL and a PromQL query giving the error rate (compared with
    /// `max_error_rate`).
    pub prometheus: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fail_at: FailAt::None,
            scope: RollbackScope::Plan,
            customers: 2_000,
            attachments: 200,
            batch: 250,
            throttle: Duration::from_millis(10),
            stages: vec![10, 50, 100],
            stage_pause: Duration::from_millis(100),
            soak: Duration::from_millis(1_500),
            poll: Duration::from_millis(200),
            max_error_rate: 0.01,
            discard_proven_snapshots: true,
            prometheus: None,
        }
    }
}

impl Options {
    /// The customer whose row poisons the backfill (in a middle batch).
    pub fn poisoned_customer(&self) -> u64 {
        self.customers / 2 + 1
    }

    /// After how many objects the move fails (half of them).
    pub fn relayout_fail_after(&self) -> u64 {
        (self.attachments / 2).max(1)
    }
}

/// Names of the things a cutover creates: schema, plan, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// PostgreSQL schema of `customers` and `attachments`.
    pub schema: String,
    /// Plan name (also the lease key).
    pub plan: String,
    /// Flag exposing the new name fields.
    pub new_name_fields: String,
    /// Flag switching reads to the `v2/` layout.
    pub use_v2_storage: String,
}

impl Names {
    /// Schema `saas`, plan `saas-cutover`, flags `<flag_prefix>new_name_fields` and
    /// `<flag_prefix>use_v2_storage`.
    pub fn new(flag_prefix: &str) -> Self {
        Names {
            schema: "saas".into(),
            plan: "saas-cutover".into(),
            new_name_fields: format!("{flag_prefix}new_name_fields"),
            use_v2_storage: format!("{flag_prefix}use_v2_storage"),
        }
    }

    /// `<schema>.customers`.
    pub fn customers(&self) -> Table {
        Table::new(&self.schema, "customers")
    }

    /// `<schema>.attachments`.
    pub fn attachments(&self) -> Table {
        Table::new(&self.schema, "attachments")
    }
}

/// The checkpoint of every object of `storage`.
pub fn storage_checkpoint(storage: &Arc<dyn ObjectBackend>) -> Arc<dyn Checkpoint> {
    Arc::new(S3Checkpoint::new(storage, ""))
}

/// Objects per batch of the move on `storage`: a listing page (1000 keys) on S3, 25 on a
/// local folder, so that the small embedded fixture fails midway in the drill.
pub fn move_batch(storage: &dyn ObjectBackend) -> usize {
    if storage.scheme() == "s3" {
        1000
    } else {
        25
    }
}

/// The move `v1/` → `v2/`; with `fail_after`, wrapped so that its apply fails (the
/// backend lost midway) once that many objects were copied.
pub fn move_step(storage: &Arc<dyn ObjectBackend>, fail_after: Option<u64>) -> Arc<dyn Step> {
    let batch = move_batch(&**storage);
    let build =
        |b: &Arc<dyn ObjectBackend>| MovePrefix::new(steps::MOVE, b, FROM, TO).batch_size(batch);
    match fail_after {
        Some(n) => Arc::new(FailAfterCopies::new(storage, n, build)),
        None => Arc::new(build(storage)),
    }
}

/// `v2/` holds exactly what `v1/` held at the baseline.
pub fn layout_parity(storage: &Arc<dyn ObjectBackend>, id: &str) -> Arc<dyn Verifier> {
    Arc::new(ManifestParity::against_baseline(id, &S3Checkpoint::new(storage, "")).mapped(FROM, TO))
}

/// Every object under `prefix` of `storage` (its store excluded): key → size.
///
/// # Errors
/// Backend errors.
pub async fn list_objects(
    storage: &dyn ObjectBackend,
    prefix: &str,
) -> Result<BTreeMap<String, u64>> {
    let store = storage.store_location();
    let excluded = |k: &str| {
        store.bucket == storage.name() && !store.prefix.is_empty() && k.starts_with(&store.prefix)
    };
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = storage.list_page(prefix, None, token.as_deref()).await?;
        out.extend(
            page.objects
                .into_iter()
                .filter(|o| !excluded(&o.key))
                .map(|o| (o.key, o.size)),
        );
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Make `storage` hold nothing: objects, snapshots, step state (the bucket or folder
/// must exist, or be creatable on first write).
///
/// # Errors
/// Backend errors.
pub async fn reset_storage(storage: &dyn ObjectBackend) -> Result<()> {
    storage.dangerous_purge("").await?;
    let store = storage.store_backend();
    if store.name() != storage.name() {
        store.dangerous_purge("").await?;
    }
    Ok(())
}

/// The four backends a cutover runs on.
#[derive(Clone)]
pub struct Backends {
    /// The database holding `<schema>.customers` and `<schema>.attachments`.
    pub db: Database,
    /// Where attachments live: an S3 bucket, a local folder.
    pub storage: Arc<dyn ObjectBackend>,
    /// Where the flags live.
    pub flags: Arc<dyn FlagProvider>,
    /// The run journal.
    pub journal: Arc<dyn Journal>,
    /// One line describing the journal.
    pub journal_description: String,
    /// Schema, plan and flag names.
    pub names: Names,
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backends")
            .field("db", &self.db)
            .field("storage", &self.storage)
            .field("flags", &self.flags)
            .field("journal", &self.journal_description)
            .field("names", &self.names)
            .finish()
    }
}

/// The deterministic content of attachment `i` of customer `cid`.
pub fn attachment(i: u64, cid: u64) -> (String, Vec<u8>) {
    let ext = ["pdf", "png", "txt", "csv"][(i % 4) as usize];
    let name = format!("file-{i:05}.{ext}");
    let mut body = format!("attachment {i} of customer {cid} ({ext})\n").into_bytes();
    body.extend(std::iter::repeat_n(
        b'a' + (i % 26) as u8,
        200 + (i * 37 % 800) as usize,
    ));
    (name, body)
}

/// The customer an attachment belongs to.
pub fn owner_of(i: u64, customers: u64) -> u64 {
    (i * 7919) % customers.max(1) + 1
}

fn pg(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend("postgres", e)
}

/// The attachments of the fixture: (row id, customer id, file name, content).
pub fn fixture_files(opts: &Options) -> Vec<(u64, u64, String, Vec<u8>)> {
    (0..opts.attachments)
        .map(|i| {
            let cid = owner_of(i, opts.customers.max(1));
            let (name, body) = attachment(i, cid);
            (i + 1, cid, name, body)
        })
        .collect()
}

/// The database part of the fixture, replacing what an earlier run left: schema
/// `names.schema` with `customers` (id, name, email) and `attachments` (id, customer_id →
/// customers, file_name, size_bytes, blake3).
///
/// # Errors
/// Backend errors.
pub async fn seed_database(db: &Database, names: &Names, opts: &Options) -> Result<()> {
    let s = quote_ident(&names.schema);
    let n = opts.customers.max(1);
    db.execute_batch(&format!(
        "DROP SCHEMA IF EXISTS {s} CASCADE;
         CREATE SCHEMA {s};
         CREATE TABLE {s}.customers (
             id bigint PRIMARY KEY,
             name text NOT NULL,
             email text NOT NULL UNIQUE);
         CREATE TABLE {s}.attachments (
             id bigint PRIMARY KEY,
             customer_id bigint NOT NULL REFERENCES {s}.customers (id),
             file_name text NOT NULL,
             size_bytes integer NOT NULL,
             blake3 text NOT NULL);
         CREATE INDEX attachments_customer ON {s}.attachments (customer_id);
         INSERT INTO {s}.customers (id, name, email)
           SELECT g,
                  (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Ken','Margaret','Donald','Frances','John'])[1 + g % 10]
                    || ' ' ||
                  (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Thompson','Hamilton','Knuth','Allen','Backus'])[1 + (g / 10) % 10],
                  'customer' || g || '@example.com'
           FROM generate_series(1, {n}) g;"
    ))
    .await?;
    let files = fixture_files(opts);
    for chunk in files.chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(id, cid, name, body)| {
                format!(
                    "({id}, {cid}, {}, {}, '{}')",
                    quote_literal(name),
                    body.len(),
                    blake3::hash(body).to_hex()
                )
            })
            .collect();
        db.execute_batch(&format!(
            "INSERT INTO {s}.attachments (id, customer_id, file_name, size_bytes, blake3) VALUES {}",
            values.join(", ")
        ))
        .await?;
    }
    db.execute_batch(&format!("ANALYZE {s}.customers; ANALYZE {s}.attachments"))
        .await
}

/// The objects of the fixture: storage emptied, then every attachment under
/// `v1/{customer_id}/`.
///
/// # Errors
/// Backend errors.
pub async fn seed_objects(storage: &dyn ObjectBackend, opts: &Options) -> Result<()> {
    reset_storage(storage).await?;
    let puts = futures::stream::iter(fixture_files(opts).into_iter().map(
        |(_, cid, name, body)| async move {
            storage
                .put_object(
                    &format!("{FROM}{cid}/{name}"),
                    body.into(),
                    PutMode::Overwrite,
                )
                .await
                .map(|_| ())
        },
    ))
    .buffer_unordered(16)
    .collect::<Vec<Result<()>>>()
    .await;
    puts.into_iter().collect()
}

/// The flags of the fixture: both off.
///
/// # Errors
/// Backend errors.
pub async fn seed_flags(flags: &dyn FlagProvider, names: &Names) -> Result<()> {
    for flag in [&names.new_name_fields, &names.use_v2_storage] {
        flags.put(flag, &FlagState::off()).await?;
    }
    Ok(())
}

impl Backends {
    /// Lay down the whole fixture ([`seed_database`], [`seed_objects`], [`seed_flags`]),
    /// replacing what an earlier run left.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn seed(&self, opts: &Options) -> Result<()> {
        seed_database(&self.db, &self.names, opts).await?;
        seed_objects(&*self.storage, opts).await?;
        seed_flags(self.flags.as_ref(), &self.names).await
    }

    /// The read path an application would take, as a health probe (see [`ReadPathProbe`]).
    pub fn probe(&self, id: &str, opts: &Options) -> ReadPathProbe {
        ReadPathProbe {
            id: id.into(),
            backends: self.clone(),
            sample: 25,
            max_error_rate: opts.max_error_rate,
            chaos: None,
            polls: AtomicU32::new(0),
        }
    }

    /// The cutover plan for `opts` (the failure to inject is part of the plan: a poisoned
    /// backfill, a move that stops midway, or a breaching health probe).
    ///
    /// # Errors
    /// [`rollback_core::PlanError`] (as [`Error::Plan`]) when the plan does not validate.
    pub fn plan(&self, opts: &Options) -> Result<Plan> {
        let db = &self.db;
        let n = &self.names;
        let customers = n.customers();
        let c = customers.quoted();
        let s = quote_ident(&n.schema);
        let fail = opts.fail_at;

        let customers_cp = TableSnapshot::new(db, customers.clone());
        let storage_cp = storage_checkpoint(&self.storage);
        let names_flag_cp = FlagCheckpoint::flag(self.flags.clone(), &n.new_name_fields);
        let storage_flag_cp = FlagCheckpoint::flag(self.flags.clone(), &n.use_v2_storage);

        let last_name = if fail == FailAt::Backfill {
            // A poisoned row in a middle batch: the cast fails for it alone, after the
            // earlier batches committed.
            format!(
                "CASE WHEN id = {} THEN ('drill: poisoned row ' || id)::integer::text ELSE split_part(name, ' ', 2) END",
                opts.poisoned_customer()
            )
        } else {
            "split_part(name, ' ', 2)".to_string()
        };
        let health: Arc<dyn Verifier> = Arc::new(self.probe("read-path-health", opts));
        let mut error_rate = self.probe("app-error-rate", opts);
        if fail == FailAt::Soak {
            error_rate.chaos = Some(Chaos {
                from_poll: 2,
                error_rate: 0.12,
            });
        }

        let plan = Plan::builder(&n.plan)
            .checkpoint("database", customers_cp)
            .checkpoint("storage", storage_cp)
            .checkpoint("flags", names_flag_cp)
            .checkpoint("flags", storage_flag_cp)
            // database: expand, backfill, constrain
            .step(
                "database",
                SqlStep::new(
                    db,
                    steps::ADD_COLUMNS,
                    format!("ALTER TABLE {c} ADD COLUMN first_name text, ADD COLUMN last_name text"),
                )
                .down(format!(
                    "ALTER TABLE {c} DROP COLUMN IF EXISTS first_name, DROP COLUMN IF EXISTS last_name"
                ))
                .touches_table(&customers),
                &[],
            )
            .step(
                "database",
                Backfill::new(
                    db,
                    steps::BACKFILL,
                    customers.clone(),
                    "id",
                    format!("first_name = split_part(name, ' ', 1), last_name = {last_name}"),
                )
                .batch_size(opts.batch)
                .throttle(opts.throttle),
                &[steps::ADD_COLUMNS],
            )
            .verify_after(
                steps::BACKFILL,
                SqlAssertion::no_rows(
                    db,
                    "names-backfilled",
                    format!(
                        "SELECT id, name, first_name, last_name FROM {c} \
                         WHERE first_name IS NULL OR last_name IS NULL OR first_name || ' ' || last_name <> name"
                    ),
                ),
            )
            .verify_after(
                steps::BACKFILL,
                RowCountParity::new(db, customers.clone()).id("customers-row-count"),
            )
            .step(
                "database",
                SqlStep::new(
                    db,
                    steps::CONSTRAINT,
                    format!(
                        "ALTER TABLE {c} ADD CONSTRAINT customers_name_split \
                           CHECK (first_name IS NOT NULL AND last_name IS NOT NULL AND first_name || ' ' || last_name = name) NOT VALID; \
                         ALTER TABLE {c} VALIDATE CONSTRAINT customers_name_split"
                    ),
                )
                .down(format!("ALTER TABLE {c} DROP CONSTRAINT IF EXISTS customers_name_split"))
                .touches_table(&customers),
                &[steps::BACKFILL],
            )
            .verify_after(
                steps::CONSTRAINT,
                SqlAssertion::is_true(
                    db,
                    "name-constraint-validated",
                    format!(
                        "SELECT coalesce(bool_and(convalidated), false) FROM pg_catalog.pg_constraint \
                         WHERE conname = 'customers_name_split' AND conrelid = {}::regclass",
                        quote_literal(&format!("{s}.customers"))
                    ),
                ),
            )
            // flags: the new name fields, once the data is there
            .step(
                "flags",
                StagedRollout::new(
                    steps::ROLLOUT_NAMES,
                    self.flags.clone(),
                    &n.new_name_fields,
                    &opts.stages,
                )
                .health_check(health.clone())
                .pause(opts.stage_pause),
                &[steps::BACKFILL, steps::CONSTRAINT],
            )
            .verify_after(
                steps::ROLLOUT_NAMES,
                FlagsMatch::new("new-name-fields-at-100", self.flags.clone())
                    .flag(&n.new_name_fields, Expect::rollout(100)),
            )
            // storage: the re-layout
            .step(
                "storage",
                move_step(
                    &self.storage,
                    (fail == FailAt::Relayout).then(|| opts.relayout_fail_after()),
                ),
                &[],
            )
            .verify_after(
                steps::MOVE,
                layout_parity(&self.storage, "attachments-moved-intact"),
            )
            .verify_after(
                steps::MOVE,
                AttachmentsResolve {
                    id: "attachments-resolve-v2".into(),
                    backends: self.clone(),
                    layout: TO.into(),
                },
            )
            // flags: the new layout, once the objects are there
            .step(
                "flags",
                StagedRollout::new(
                    steps::ROLLOUT_STORAGE,
                    self.flags.clone(),
                    &n.use_v2_storage,
                    &opts.stages,
                )
                .health_check(health)
                .pause(opts.stage_pause),
                &[steps::MOVE],
            )
            .verify_after(
                steps::ROLLOUT_STORAGE,
                FlagsMatch::new("use-v2-storage-at-100", self.flags.clone())
                    .flag(&n.use_v2_storage, Expect::rollout(100)),
            )
            .verify_final(
                ForeignKeyIntegrity::new(db)
                    .schemas([n.schema.clone()])
                    .id("foreign-keys"),
            )
            .verify_final(self.probe("read-path-final", opts))
            .trigger(match &opts.prometheus {
                // The team's own monitoring: two bad measurements in a row breach.
                Some((url, query)) => Analysis::new(
                    PrometheusProbe::new(
                        url,
                        "prometheus-error-rate",
                        query.clone(),
                        Condition::lt(opts.max_error_rate),
                    )?,
                )
                .interval(opts.poll)
                .failure_limit(1)
                .trigger(),
                None => Trigger::new(error_rate)
                    .every(opts.poll)
                    .threshold(2, 3)
                    .max_value(opts.max_error_rate),
            })
            .soak(if fail == FailAt::Soak {
                // The breach ends the window early; a long window only makes sure it
                // comes however slow each poll is on a loaded machine.
                opts.soak.max(SOAK_DRILL_WINDOW)
            } else {
                opts.soak
            })
            .default_step_options(StepOptions::default().retries(3))
            .rto_target(RTO_TARGET)
            .owner(rollback_core::ROLLBACK_LEAD, "platform on-call")
            .owner("data verification", "database team")
            .owner("customer communication", "support lead")
            .owner("post-incident review", "platform team")
            .build()?;
        Ok(plan)
    }

    /// Run `plan` with `opts.scope`, printing progress events when `print_events`, and the
    /// status-page messages as they come when `print_notices`.
    ///
    /// # Errors
    /// Journal errors and a held lease (the migration's own failures are in the report).
    pub async fn execute(
        &self,
        plan: &Plan,
        opts: &Options,
        print_events: bool,
        print_notices: bool,
    ) -> Result<Cutover> {
        let status = StatusPage::new(print_notices);
        let executor = Executor::with_journal(self.journal.clone())
            .scope(opts.scope)
            .retain_snapshots(if opts.discard_proven_snapshots {
                SnapshotRetention::KeepMigrated
            } else {
                SnapshotRetention::KeepAll
            })
            .notifier(status.clone());
        let mut events = executor.subscribe();
        let printer = tokio::spawn(async move {
            let mut console = ConsoleProgress::stdout().without_run_ids();
            loop {
                match events.recv().await {
                    Ok(e) => {
                        if print_events {
                            let _ = console.render(&e);
                        }
                        if matches!(e.event, RunEvent::RunFinished { .. }) {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
        });
        let result = executor.run(plan).await;
        if result.is_err() {
            printer.abort();
        }
        let _ = printer.await;
        let report = result?;
        let released = report
            .checkpoints
            .iter()
            .filter(|c| c.discarded == Some(true))
            .map(|c| c.resource.clone())
            .collect();
        Ok(Cutover {
            report,
            notices: status.notices(),
            released,
        })
    }
}

/// The cutover's recovery time objective: every resource verified back at its baseline
/// within a minute of the trigger (the report and the drill say whether it was met).
pub const RTO_TARGET: Duration = Duration::from_secs(60);

/// What a cutover run gave.
#[derive(Debug, Clone)]
pub struct Cutover {
    /// The run report.
    pub report: RunReport,
    /// The status-page messages, in order.
    pub notices: Vec<Notice>,
    /// Resources whose baseline snapshot was released after parity was proven.
    pub released: Vec<String>,
}

impl Cutover {
    /// A plain-language account of what the run kept, undid, and proved.
    pub fn summary(&self) -> String {
        summary(&self.report)
    }
}

/// A plain-language account of what a run kept, undid, and proved.
pub fn summary(r: &RunReport) -> String {
    let mut out = String::new();
    let ids = |f: &dyn Fn(StepState) -> bool| -> Vec<String> {
        r.steps
            .iter()
            .filter(|s| f(s.state))
            .map(|s| format!("{} [{}]", s.id, s.component))
            .collect()
    };
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    out.push_str(&format!("outcome: {}\n", r.outcome));
    if let Some(reason) = &r.rollback_reason {
        out.push_str(&format!("rollback triggered by: {reason}\n"));
    }
    match r.outcome {
        Outcome::Committed => {
            out.push_str(&format!(
                "applied: {}\n",
                list(ids(&|s| s == StepState::Applied))
            ));
        }
        _ => {
            out.push_str(&format!(
                "kept (still applied): {}\n",
                list(ids(&|s| s == StepState::Kept))
            ));
            out.push_str(&format!(
                "undone: {}\n",
                list(
                    r.steps
                        .iter()
                        .filter(|s| matches!(
                            s.state,
                            StepState::Reverted | StepState::UndoneByRestore
                        ))
                        .map(|s| format!(
                            "{} [{}] ({})",
                            s.id,
                            s.component,
                            if s.state == StepState::Reverted {
                                "reverted by its compensation"
                            } else {
                                "covered by its checkpoint: resource proven at baseline"
                            }
                        ))
                        .collect()
                )
            ));
            out.push_str(&format!(
                "never applied: {}\n",
                list(ids(&|s| s == StepState::NotApplied))
            ));
            let not_undone =
                ids(&|s| matches!(s, StepState::NotUndone | StepState::IrreversibleKept));
            if !not_undone.is_empty() {
                out.push_str(&format!("NOT undone: {}\n", list(not_undone)));
            }
            let back: Vec<String> = r
                .checkpoints
                .iter()
                .filter(|c| r.rollback_checkpoints.contains(&c.resource))
                .map(|c| {
                    format!(
                        "{} ({}{})",
                        c.resource,
                        match c.parity {
                            Some(true) => "parity with baseline proven",
                            Some(false) => "PARITY FAILED",
                            None => "not checked",
                        },
                        c.restore_method
                            .as_ref()
                            .map(|m| format!(", restored by {m}"))
                            .unwrap_or_else(|| ", no restore needed".into())
                    )
                })
                .collect();
            out.push_str(&format!("resources back at baseline: {}\n", list(back)));
            let kept_res: Vec<String> = r
                .checkpoints
                .iter()
                .filter(|c| !r.rollback_checkpoints.contains(&c.resource))
                .map(|c| c.resource.clone())
                .collect();
            if r.outcome == Outcome::PartiallyRolledBack {
                out.push_str(&format!("resources kept migrated: {}\n", list(kept_res)));
                let kept_verdicts: Vec<String> = r
                    .verdicts
                    .iter()
                    .filter(|v| v.phase.starts_with("kept:"))
                    .map(|v| format!("{} [{}]: {:?}", v.verifier, v.phase, v.verdict.status))
                    .collect();
                out.push_str(&format!(
                    "kept side re-verified after the rollback: {}\n",
                    list(kept_verdicts)
                ));
            }
            out.push_str(&format!(
                "parity proven for everything rolled back: {}; kept side verified: {}\n",
                if r.parity_proven() { "yes" } else { "NO" },
                match r.kept_verified() {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "n/a (nothing kept)",
                }
            ));
        }
    }
    if let Some(rto) = r.rto_ms {
        out.push_str(&format!("RTO (trigger → verified restored): {rto} ms\n"));
    }
    if let Some(rpo) = r.rpo_ms {
        out.push_str(&format!("RPO (writes lost to restores): {rpo} ms\n"));
    }
    out
}

/// Publishes status-page messages (prints them, and keeps them for the report).
#[derive(Clone, Default)]
pub struct StatusPage {
    print: bool,
    notices: Arc<Mutex<Vec<Notice>>>,
}

impl StatusPage {
    /// A status page; `print`: also print each message as it is published.
    pub fn new(print: bool) -> Self {
        StatusPage {
            print,
            notices: Arc::default(),
        }
    }

    /// Every message so far.
    pub fn notices(&self) -> Vec<Notice> {
        self.notices.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Notifier for StatusPage {
    async fn notify(&self, notice: &Notice) -> std::result::Result<(), String> {
        if self.print {
            println!("\n  [status page] {}\n", notice.message);
        }
        if let Ok(mut n) = self.notices.lock() {
            n.push(notice.clone());
        }
        Ok(())
    }
}

/// An injected incident for the soak drill.
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    /// From which poll on (1-based) the incident shows.
    pub from_poll: u32,
    /// The error rate it adds.
    pub error_rate: f64,
}

/// The application's read path as a health probe: for a sample of attachments, it reads
/// both flags, then, as the application would for that customer, the customer's name (the
/// new `first_name`/`last_name` when `new_name_fields` is on for the customer, else
/// `name`) and the attachment (under `v2/` when `use_v2_storage` is on for the customer,
/// else `v1/`, falling back to the other layout as an application must while objects
/// move under a flag that is still off). A read that fails or finds the wrong thing is
/// an error; the verdict's value is the error rate, failing above the threshold.
///
/// It catches a name flag turned on before its columns are filled, and attachments lost
/// or damaged by the move. In the soak drill a [`Chaos`] adds an injected error rate
/// from a given poll on, saying so in the verdict.
pub struct ReadPathProbe {
    id: String,
    backends: Backends,
    sample: u64,
    max_error_rate: f64,
    chaos: Option<Chaos>,
    polls: AtomicU32,
}

impl fmt::Debug for ReadPathProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadPathProbe")
            .field("id", &self.id)
            .field("sample", &self.sample)
            .field("chaos", &self.chaos)
            .finish()
    }
}

/// Which percentage bucket (0..100) a customer falls in for flag rollouts.
pub fn rollout_bucket(customer_id: u64) -> u32 {
    ((customer_id.wrapping_mul(2_654_435_761)) % 100) as u32
}

fn served_percent(state: Option<FlagState>) -> u32 {
    match state {
        Some(s) if s.enabled => s.rollout_percent().unwrap_or(100),
        _ => 0,
    }
}

#[async_trait]
impl Verifier for ReadPathProbe {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let poll = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        let b = &self.backends;
        let n = &b.names;
        let names_pct = served_percent(b.flags.get(&n.new_name_fields).await?);
        let v2_pct = served_percent(b.flags.get(&n.use_v2_storage).await?);
        let c = b.db.client().await?;
        let total: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {}", n.attachments().quoted()),
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        let offset = (poll as i64 * self.sample as i64) % total.max(1);
        let rows = c
            .query(
                &format!(
                    "SELECT customer_id, file_name, size_bytes FROM {} ORDER BY id LIMIT $1 OFFSET $2",
                    n.attachments().quoted()
                ),
                &[&(self.sample as i64), &offset],
            )
            .await
            .map_err(pg)?;
        let sample: Vec<(u64, String, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i64>(0) as u64,
                    r.get::<_, String>(1),
                    r.get::<_, i32>(2) as u64,
                )
            })
            .collect();
        let mut errors: Vec<String> = Vec::new();
        // Names: the new fields for customers in the rollout, `name` for the others.
        let new_ids: Vec<i64> = sample
            .iter()
            .filter(|(cid, _, _)| rollout_bucket(*cid) < names_pct)
            .map(|(cid, _, _)| *cid as i64)
            .collect();
        if !new_ids.is_empty() {
            match c
                .query(
                    &format!(
                        "SELECT id, first_name, last_name, name FROM {} WHERE id = ANY($1)",
                        n.customers().quoted()
                    ),
                    &[&new_ids],
                )
                .await
            {
                Ok(rows) => {
                    let good: BTreeSet<i64> = rows
                        .iter()
                        .filter(|r| {
                            let f: Option<String> = r.get(1);
                            let l: Option<String> = r.get(2);
                            let name: String = r.get(3);
                            matches!((f, l), (Some(f), Some(l)) if !f.is_empty() && !l.is_empty() && format!("{f} {l}") == name)
                        })
                        .map(|r| r.get(0))
                        .collect();
                    for id in &new_ids {
                        if !good.contains(id) {
                            errors.push(format!("customer {id}: new name fields missing"));
                        }
                    }
                }
                Err(e) => {
                    let why = e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string());
                    for id in &new_ids {
                        errors.push(format!("customer {id}: {why}"));
                    }
                }
            }
        }
        drop(c);
        // Attachments: v2 for customers in the rollout, v1 for the others.
        let storage = &b.storage;
        // During a re-layout the application reads the layout its flag prefers and falls
        // back to the other one (objects move while the flag is still off).
        let reads =
            futures::stream::iter(sample.iter().cloned().map(|(cid, file, size)| async move {
                let (first, second) = if rollout_bucket(cid) < v2_pct {
                    (TO, FROM)
                } else {
                    (FROM, TO)
                };
                let mut fell_back = false;
                for layout in [first, second] {
                    let key = format!("{layout}{cid}/{file}");
                    match storage.head(&key).await.map(|o| o.map(|o| o.size)) {
                        Ok(Some(s)) if s == size => return (fell_back, None),
                        Ok(Some(s)) => {
                            return (fell_back, Some(format!("{key}: {s} B, expected {size} B")))
                        }
                        Ok(None) => fell_back = true,
                        Err(e) => return (fell_back, Some(format!("{key}: {e}"))),
                    }
                }
                (
                    fell_back,
                    Some(format!("{cid}/{file}: under neither {FROM} nor {TO}")),
                )
            }))
            .buffer_unordered(8)
            .collect::<Vec<(bool, Option<String>)>>()
            .await;
        let fallbacks = reads.iter().filter(|(f, e)| *f && e.is_none()).count();
        errors.extend(reads.into_iter().filter_map(|(_, e)| e));
        let requests = (sample.len() * 2).max(1) as f64;
        let measured = errors.len() as f64 / requests;
        let injected = self
            .chaos
            .filter(|c| poll >= c.from_poll)
            .map(|c| c.error_rate)
            .unwrap_or(0.0);
        let rate = (measured + injected).min(1.0);
        let mut summary = format!(
            "error rate {:.1}% over {} reads (new names for {names_pct}% of customers, v2 storage for {v2_pct}%, {fallbacks} attachment reads served by the other layout; max {:.1}%)",
            rate * 100.0,
            requests as u64,
            self.max_error_rate * 100.0
        );
        if injected > 0.0 {
            summary.push_str(&format!(
                " — includes {:.0}% injected by the soak drill (simulated timeouts on the checkout path)",
                injected * 100.0
            ));
        }
        Ok(Verdict::check(rate <= self.max_error_rate, summary)
            .with_evidence(json!({
                "poll": poll,
                "reads": requests as u64,
                "failed_reads": errors.len(),
                "fallback_reads": fallbacks,
                "examples": &errors[..errors.len().min(5)],
                "new_name_fields_percent": names_pct,
                "use_v2_storage_percent": v2_pct,
                "injected_error_rate": injected,
            }))
            .with_value(rate))
    }
}

/// Referential integrity across the database and the object store: every `attachments`
/// row has its object under the layout (same size), and every object under the layout
/// belongs to a row. Evidence lists missing, wrong-size and orphan keys.
pub struct AttachmentsResolve {
    id: String,
    backends: Backends,
    layout: String,
}

impl AttachmentsResolve {
    /// Check rows against objects under `layout` (`v1/` or `v2/`).
    pub fn new(id: &str, backends: &Backends, layout: &str) -> Self {
        AttachmentsResolve {
            id: id.into(),
            backends: backends.clone(),
            layout: layout.into(),
        }
    }
}

#[async_trait]
impl Verifier for AttachmentsResolve {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let b = &self.backends;
        let c = b.db.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT customer_id, file_name, size_bytes FROM {}",
                    b.names.attachments().quoted()
                ),
                &[],
            )
            .await
            .map_err(pg)?;
        drop(c);
        let expected: BTreeMap<String, u64> = rows
            .iter()
            .map(|r| {
                (
                    format!(
                        "{}{}/{}",
                        self.layout,
                        r.get::<_, i64>(0),
                        r.get::<_, String>(1)
                    ),
                    r.get::<_, i32>(2) as u64,
                )
            })
            .collect();
        let objects = list_objects(&*b.storage, &self.layout).await?;
        let missing: Vec<&String> = expected
            .keys()
            .filter(|k| !objects.contains_key(*k))
            .collect();
        let wrong: Vec<&String> = expected
            .iter()
            .filter(|(k, s)| objects.get(*k).is_some_and(|o| o != *s))
            .map(|(k, _)| k)
            .collect();
        let orphans: Vec<&String> = objects
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .collect();
        let bad = missing.len() + wrong.len() + orphans.len();
        Ok(Verdict::check(
            bad == 0,
            if bad == 0 {
                format!(
                    "{} attachment rows resolve to their {} objects under {}",
                    expected.len(),
                    objects.len(),
                    self.layout
                )
            } else {
                format!(
                    "{} rows without object, {} wrong size, {} orphan objects under {}",
                    missing.len(),
                    wrong.len(),
                    orphans.len(),
                    self.layout
                )
            },
        )
        .with_evidence(json!({
            "rows": expected.len(),
            "objects": objects.len(),
            "missing": missing.iter().take(10).collect::<Vec<_>>(),
            "wrong_size": wrong.iter().take(10).collect::<Vec<_>>(),
            "orphans": orphans.iter().take(10).collect::<Vec<_>>(),
        }))
        .with_value(bad as f64))
    }
}
