//! The disaster-recovery drill of the SaaS cutover on the real servers of the test
//! suite (PostgreSQL, S3, Unleash), one scenario per test, each with its own fresh
//! database, buckets and flag names.
//!
//! After every scenario, every resource is compared with its baseline (or with the
//! intended partial state) by checks that do not use the library:
//! - the database: `pg_dump` (schema and data, COPY rows sorted) of the test database,
//!   without the library's bookkeeping schemas (`_rollback`, `_rollback_snapshots`); the
//!   partial state is compared with a reference database built with plain SQL;
//! - the bucket: a listing and blake3 of every object, with plain SDK calls;
//! - the flags: Unleash's client API (`GET /api/client/features`, client token), read
//!   once its revision has caught up with the latest flag event.
//!
//! Run through `scripts/test` (it starts the servers and exports `ROLLBACK_TEST_*`).

use examples::cutover::{self, Backends, Cutover, FailAt, Names, Options};
use examples::drill::{self, Scenario};
use rollback_core::journal::Journal;
use rollback_core::{Outcome, RollbackScope};
use rollback_flags::UnleashProvider;
use rollback_postgres::{Database, PgJournal};
use rollback_s3::{S3Bucket, S3Settings};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollback_testkit::env::require as env;
use rollback_testkit::pg::{assert_same_dump, dump as pg_dump};

fn loopback(url: &str, what: &str) -> String {
    assert!(
        url.contains("://127.0.0.1:")
            || url.contains("://localhost:")
            || url.contains("@127.0.0.1:"),
        "{what} must point at 127.0.0.1, got a URL elsewhere"
    );
    url.to_string()
}

fn unique(label: &str) -> String {
    format!(
        "{label}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// `url` (postgres://user[:pw]@host:port/db) with database `db` and password `pw`.
fn pg_url(url: &str, db: &str, pw: Option<&str>) -> String {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"));
    let rest = rest.unwrap_or_else(|| panic!("ROLLBACK_TEST_PG_URL must be a postgres:// URL"));
    let (auth, host) = rest
        .split_once('@')
        .expect("ROLLBACK_TEST_PG_URL names a user");
    let user = auth.split(':').next().unwrap();
    let host = host.split('/').next().unwrap();
    match pw {
        Some(pw) => format!("postgres://{user}:{pw}@{host}/{db}"),
        None => format!("postgres://{user}@{host}/{db}"),
    }
}

async fn admin(sql: &str) {
    let url = env("ROLLBACK_TEST_PG_URL");
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(conn);
    c.batch_execute(sql).await.expect(sql);
}

/// Everything one scenario runs on, created fresh, removed by [`World::cleanup`].
struct World {
    backends: Backends,
    db_name: String,
    ref_db: Option<String>,
    bucket: S3Bucket,
    store: S3Bucket,
    prefix: String,
    secrets: Vec<String>,
}

impl World {
    async fn new(label: &str) -> World {
        let server = loopback(&env("ROLLBACK_TEST_PG_URL"), "ROLLBACK_TEST_PG_URL");
        let db_name = unique(&format!("rbx_drill_{label}")).replace('-', "_");
        admin(&format!("CREATE DATABASE {db_name}")).await;
        // The server trusts local connections: the password is never checked, only
        // looked for in every output (it must never appear).
        let pg_pass = unique("pg-password");
        let db = Database::connect(&pg_url(&server, &db_name, Some(&pg_pass))).unwrap();

        let endpoint = loopback(
            &env("ROLLBACK_TEST_S3_ENDPOINT"),
            "ROLLBACK_TEST_S3_ENDPOINT",
        );
        // The S3 server checks no signature: a made-up secret key works, and is looked for.
        let s3_secret = unique("s3-secret-key");
        let settings = S3Settings::new(
            endpoint,
            std::env::var("ROLLBACK_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
            env("ROLLBACK_TEST_S3_ACCESS_KEY"),
            s3_secret.clone(),
        );
        let name = unique(&format!("rbx-drill-{}", label.replace('_', "-")));
        let store = S3Bucket::connect(&settings, format!("{name}-rb"));
        store.create(false).await.unwrap();
        let bucket = S3Bucket::connect(&settings, &name).store(store.name(), "");
        bucket.create(true).await.unwrap();

        let unleash_url = loopback(
            &env("ROLLBACK_TEST_UNLEASH_URL"),
            "ROLLBACK_TEST_UNLEASH_URL",
        );
        let admin_token = env("ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN");
        let flags =
            UnleashProvider::new(&unleash_url, admin_token.clone(), "default", "development")
                .unwrap();
        let prefix = format!("{}.", unique(&format!("rbx-{label}")));
        let journal: Arc<dyn Journal> = Arc::new(PgJournal::new(&db));
        let mut names = Names::new(&prefix);
        names.plan = format!("{prefix}saas-cutover");
        World {
            backends: Backends {
                db,
                storage: Arc::new(bucket.clone()),
                flags: Arc::new(flags),
                journal,
                journal_description: "PostgreSQL journal".into(),
                names,
            },
            db_name,
            ref_db: None,
            bucket,
            store,
            prefix,
            secrets: vec![pg_pass, s3_secret, admin_token],
        }
    }

    fn db_url(&self, db: &str) -> String {
        pg_url(&env("ROLLBACK_TEST_PG_URL"), db, None)
    }

    async fn cleanup(self) {
        let flags = &self.backends.flags;
        for f in [
            &self.backends.names.new_name_fields,
            &self.backends.names.use_v2_storage,
        ] {
            let _ = flags.delete(f).await;
        }
        let _ = self.bucket.dangerous_delete_bucket().await;
        let _ = self.store.dangerous_delete_bucket().await;
        drop(self.backends);
        for db in std::iter::once(self.db_name).chain(self.ref_db) {
            admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await;
        }
    }
}

// ---- independent views -------------------------------------------------------------

/// Key → (size, blake3) of every object of a bucket: ListObjectsV2 + GetObject.
async fn bucket_state(b: &S3Bucket) -> BTreeMap<String, (u64, String)> {
    use futures::StreamExt;
    let client = b.client();
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(b.name())
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("list");
        keys.extend(out.contents().iter().map(|o| o.key().unwrap().to_string()));
        token = out.next_continuation_token().map(str::to_string);
        if out.is_truncated() != Some(true) {
            break;
        }
    }
    futures::stream::iter(keys.into_iter().map(|k| async move {
        // A body stalled by a loaded machine (the SDK's stalled-stream guard) is read
        // again: this is the test's own view of the bucket, not the library's.
        let mut attempt = 0;
        let body = loop {
            attempt += 1;
            let got = client
                .get_object()
                .bucket(b.name())
                .key(&k)
                .send()
                .await
                .expect("get")
                .body
                .collect()
                .await;
            match got {
                Ok(b) => break b.into_bytes(),
                Err(e) if attempt < 5 => {
                    eprintln!("reading {k} again after: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("body of {k}: {e}"),
            }
        };
        (
            k,
            (body.len() as u64, blake3::hash(&body).to_hex().to_string()),
        )
    }))
    .buffer_unordered(16)
    .collect()
    .await
}

/// The three independent views of a world.
struct Views {
    dump: (String, String),
    objects: BTreeMap<String, (u64, String)>,
    flags: BTreeMap<String, Value>,
}

async fn views(w: &World) -> Views {
    let url = w.db_url(&w.db_name);
    let dump = tokio::task::spawn_blocking(move || pg_dump(&url))
        .await
        .unwrap();
    Views {
        dump,
        objects: bucket_state(&w.bucket).await,
        flags: rollback_testkit::unleash::client_view(&w.prefix).await.0,
    }
}

/// The database as the cutover should leave it when its database part is kept: the same
/// fixture in a reference database, migrated with plain SQL.
async fn reference_dump(w: &mut World, opts: &Options) -> (String, String) {
    let name = format!("{}_ref", w.db_name);
    admin(&format!("CREATE DATABASE {name}")).await;
    w.ref_db = Some(name.clone());
    let url = w.db_url(&name);
    let db = Database::connect(&url).unwrap();
    cutover::seed_database(&db, &w.backends.names, opts)
        .await
        .unwrap();
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let s = &w.backends.names.schema;
    c.batch_execute(&format!(
        "ALTER TABLE {s}.customers ADD COLUMN first_name text, ADD COLUMN last_name text;
         UPDATE {s}.customers SET first_name = split_part(name, ' ', 1), last_name = split_part(name, ' ', 2);
         ALTER TABLE {s}.customers ADD CONSTRAINT customers_name_split
           CHECK (first_name IS NOT NULL AND last_name IS NOT NULL AND first_name || ' ' || last_name = name);"
    ))
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || pg_dump(&url))
        .await
        .unwrap()
}

fn options() -> Options {
    Options {
        soak: Duration::from_millis(1_000),
        poll: Duration::from_millis(150),
        stage_pause: Duration::from_millis(30),
        throttle: Duration::ZERO,
        ..Options::default()
    }
}

/// Nothing a scenario prints, reports or journals holds a credential.
async fn assert_no_secrets(w: &World, run: &Cutover) {
    let records = w
        .backends
        .journal
        .records(&run.report.run_id)
        .await
        .unwrap();
    let mut texts = vec![
        run.report.to_json(),
        run.report.to_markdown(),
        cutover::summary(&run.report),
        format!("{:?}", w.backends),
        serde_json::to_string(&records.iter().map(|r| &r.entry).collect::<Vec<_>>()).unwrap(),
    ];
    texts.extend(run.notices.iter().map(|n| format!("{n:?}")));
    for secret in &w.secrets {
        for t in &texts {
            assert!(
                !t.contains(secret.as_str()),
                "a credential appears in the output:\n{t}"
            );
        }
    }
}

async fn scenario(fail_at: FailAt, scope: RollbackScope) {
    let label = format!("{fail_at}_{}", cutover::scope_name(scope));
    let t = Instant::now();
    let mut w = World::new(&label).await;
    let mut opts = options();
    if fail_at == FailAt::Relayout {
        // More than one listing page (1000 keys): the move stops midway, after half of
        // the objects, with the rest still under v1/.
        opts.attachments = 1_200;
    }
    w.backends.seed(&opts).await.unwrap();
    let before = views(&w).await;
    assert_eq!(before.objects.len() as u64, opts.attachments);
    assert_eq!(before.flags.len(), 2, "{:?}", before.flags.keys());
    let seeded = t.elapsed();

    let plan = w
        .backends
        .plan(&Options {
            fail_at,
            scope,
            ..opts.clone()
        })
        .unwrap();
    let t_run = Instant::now();
    let run = w
        .backends
        .execute(
            &plan,
            &Options {
                fail_at,
                scope,
                ..opts.clone()
            },
            false,
            false,
        )
        .await
        .unwrap();
    let ran = t_run.elapsed();
    let r = &run.report;
    let md = r.to_markdown();
    let after = views(&w).await;

    assert!(r.parity_proven(), "{md}");
    assert!(r.rto_ms.is_some() && r.rpo_ms.is_some(), "{md}");
    // The plan's objective reaches the report, which judges the measured RTO against it.
    assert_eq!(
        r.objectives.rto_ms,
        Some(cutover::RTO_TARGET.as_millis() as u64)
    );
    assert_eq!(
        r.rto_met,
        r.rto_ms
            .map(|v| v <= cutover::RTO_TARGET.as_millis() as u64)
    );
    assert_eq!(
        r.owners
            .get(rollback_core::ROLLBACK_LEAD)
            .map(String::as_str),
        Some("platform on-call")
    );
    assert_eq!(
        run.notices.len(),
        2,
        "status page: rollback started and finished: {:?}",
        run.notices
    );
    match (fail_at, scope) {
        (FailAt::Relayout, RollbackScope::Component) => {
            // Storage and the flag that depends on it are undone; the database change
            // and its flag are kept, and re-verified.
            assert_eq!(r.outcome, Outcome::PartiallyRolledBack, "{md}");
            assert_eq!(r.undone(), vec![cutover::steps::MOVE], "{md}");
            assert_eq!(
                r.kept(),
                vec![
                    cutover::steps::ADD_COLUMNS,
                    cutover::steps::BACKFILL,
                    cutover::steps::CONSTRAINT,
                    cutover::steps::ROLLOUT_NAMES
                ],
                "{md}"
            );
            assert_eq!(r.kept_verified(), Some(true), "{md}");
            assert!(md.contains("Kept: add-name-columns"), "{md}");
            // Storage: exactly the baseline.
            assert_eq!(
                after.objects, before.objects,
                "bucket differs from its baseline"
            );
            // Flags: use_v2_storage as before; new_name_fields on for everyone.
            let v2 = &w.backends.names.use_v2_storage;
            let nf = &w.backends.names.new_name_fields;
            assert_eq!(after.flags[v2], before.flags[v2]);
            assert_eq!(
                after.flags[nf]["enabled"],
                Value::Bool(true),
                "{:#?}",
                after.flags[nf]
            );
            assert_eq!(
                after.flags[nf]["strategies"][0]["parameters"]["rollout"],
                Value::String("100".into()),
                "{:#?}",
                after.flags[nf]
            );
            // Database: the migrated state, equal to a reference migrated by plain SQL.
            let expected = reference_dump(&mut w, &opts).await;
            assert_ne!(expected, before.dump);
            assert_same_dump(&expected, &after.dump, "kept database");
        }
        _ => {
            if fail_at == FailAt::Backfill && scope == RollbackScope::Component {
                // Nothing outside the database component and its dependents had been
                // applied: nothing is kept.
                assert!(
                    matches!(
                        r.outcome,
                        Outcome::RolledBack | Outcome::PartiallyRolledBack
                    ),
                    "{md}"
                );
            } else {
                assert_eq!(r.outcome, Outcome::RolledBack, "{md}");
            }
            assert!(r.kept().is_empty(), "{md}");
            assert_same_dump(&before.dump, &after.dump, &label);
            assert_eq!(
                after.objects, before.objects,
                "bucket differs from its baseline"
            );
            assert_eq!(
                after.flags, before.flags,
                "client view of the flags differs"
            );
        }
    }
    match fail_at {
        FailAt::Backfill => {
            assert!(r.detection.is_none(), "a failed step is no breach: {md}");
            assert!(md.contains("drill: poisoned row"), "{md}");
            assert!(r.undone().contains(&cutover::steps::BACKFILL), "{md}");
        }
        FailAt::Relayout => {
            assert!(
                md.contains("drill: injected failure after 1000 objects"),
                "{md}"
            );
        }
        FailAt::Soak => {
            assert!(md.contains("trigger app-error-rate breached"), "{md}");
            assert_eq!(r.undone().len(), 6, "every step undone: {md}");
            // The drill reports how long the breach took to start the rollback.
            let d = r.detection.as_ref().expect("a breach started the rollback");
            assert_eq!(d.verifier, "app-error-rate", "{d:?}");
            assert_eq!(d.phase, "soak", "{d:?}");
            assert_eq!(
                d.latency_ms,
                d.rollback_started_at_ms - d.detected_at_ms,
                "{d:?}"
            );
            assert!(md.contains("Breach detected at"), "{md}");
        }
        FailAt::None => unreachable!(),
    }
    assert_no_secrets(&w, &run).await;
    println!(
        "{}\nseeded and viewed in {seeded:?}, ran in {ran:?}, whole scenario {:?}\n{}",
        drill::table(&[drill::ScenarioResult {
            scenario: Scenario { fail_at, scope },
            cutover: run.clone(),
            wall_ms: ran.as_millis() as u64,
        }]),
        t.elapsed(),
        cutover::summary(r)
    );
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_failing_midway_rolls_back_the_whole_plan_to_the_baseline() {
    scenario(FailAt::Backfill, RollbackScope::Plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_failing_under_component_scope_undoes_the_database_and_its_flag() {
    scenario(FailAt::Backfill, RollbackScope::Component).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayout_failing_midway_rolls_back_the_whole_plan_to_the_baseline() {
    scenario(FailAt::Relayout, RollbackScope::Plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayout_failing_under_component_scope_keeps_the_database_and_its_flag() {
    scenario(FailAt::Relayout, RollbackScope::Component).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_breach_during_soak_rolls_back_every_component() {
    scenario(FailAt::Soak, RollbackScope::Plan).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_cutover_commits_and_leaves_every_component_migrated() {
    let mut w = World::new("none").await;
    let opts = Options {
        soak: Duration::from_millis(500),
        ..options()
    };
    w.backends.seed(&opts).await.unwrap();
    let before = views(&w).await;
    let plan = w.backends.plan(&opts).unwrap();
    let run = w
        .backends
        .execute(&plan, &opts, false, false)
        .await
        .unwrap();
    let md = run.report.to_markdown();
    assert_eq!(run.report.outcome, Outcome::Committed, "{md}");
    assert!(run.notices.is_empty());
    let after = views(&w).await;
    // Every object moved to v2/, unchanged.
    let moved: BTreeMap<String, (u64, String)> = before
        .objects
        .iter()
        .map(|(k, v)| (k.replacen("v1/", "v2/", 1), v.clone()))
        .collect();
    assert_eq!(after.objects, moved);
    for f in after.flags.values() {
        assert_eq!(f["enabled"], Value::Bool(true), "{f:#?}");
        assert_eq!(
            f["strategies"][0]["parameters"]["rollout"],
            Value::String("100".into())
        );
    }
    let expected = reference_dump(&mut w, &opts).await;
    assert_same_dump(&expected, &after.dump, "committed database");
    w.cleanup().await;
}
