//! Fleets on the real server: tenants are schemas of a fresh database, each with its own
//! data; workers run in this process (as tasks) or as separate processes (this test
//! binary re-invoked on its ignored `fleet_worker_process` test), one of them SIGKILLed
//! mid-wave. Every check of the tenants' data is the test's own SQL (md5 of the rows,
//! the catalog, a counter the migration bumps), not the library's fingerprints.

mod common;

use common::TestDb;
use rollback_core::{Error, Plan, Result};
use rollback_postgres::fleet::{
    EarlierWaves, FailureBudget, Fleet, FleetReport, Tenant, TenantErrorRate, TenantSource, Wave,
};
use rollback_postgres::{Database, SqlStep, Table, TableSnapshot};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// tenants and their plan

/// `n` tenant schemas `t_000…`, each with 20 rows of data, a counter of migrations and
/// 100 logged requests, all successful.
async fn make_tenants(db: &TestDb, n: usize) -> Vec<Tenant> {
    db.exec(&format!(
        "DO $$ DECLARE s text; BEGIN FOR i IN 0..{} LOOP \
           s := 't_' || lpad(i::text, 3, '0'); \
           EXECUTE format('CREATE SCHEMA %I', s); \
           EXECUTE format('CREATE TABLE %I.data (id int PRIMARY KEY, v int NOT NULL, note text)', s); \
           EXECUTE format('INSERT INTO %I.data SELECT g, g * %s, ''n'' || g FROM generate_series(1, 20) g', s, i + 1); \
           EXECUTE format('CREATE TABLE %I.meta (id int PRIMARY KEY, applied int NOT NULL)', s); \
           EXECUTE format('INSERT INTO %I.meta VALUES (1, 0)', s); \
           EXECUTE format('CREATE TABLE %I.requests (id serial PRIMARY KEY, status int NOT NULL)', s); \
           EXECUTE format('INSERT INTO %I.requests (status) SELECT 200 FROM generate_series(1, 100)', s); \
         END LOOP; END $$",
        n - 1
    ))
    .await;
    (0..n)
        .map(|i| Tenant::new(format!("t{i:03}"), format!("t_{i:03}")))
        .collect()
}

/// The migration of one tenant: add `v2`, fill it (restore-only: the table is
/// snapshotted), make `note` required (fails on a tenant with a NULL note), and count
/// the migration in `meta` (not idempotent by itself: a second application shows).
fn tenant_plan(db: &Database, t: &Tenant) -> Result<Plan> {
    let data = Table::new(&t.location, "data");
    let meta = Table::new(&t.location, "meta");
    let (d, m) = (data.quoted(), meta.quoted());
    Plan::builder(format!("add-v2/{}", t.id))
        .checkpoint("db", TableSnapshot::new(db, data.clone()))
        .checkpoint("db", TableSnapshot::new(db, meta.clone()))
        .step(
            "db",
            SqlStep::new(db, "add-v2", format!("ALTER TABLE {d} ADD COLUMN v2 int"))
                .down(format!("ALTER TABLE {d} DROP COLUMN IF EXISTS v2"))
                .creates_column(&data, "v2"),
            &[],
        )
        .step(
            "db",
            SqlStep::new(db, "fill-v2", format!("UPDATE {d} SET v2 = v * 2")).touches_table(&data),
            &["add-v2"],
        )
        .step(
            "db",
            SqlStep::new(
                db,
                "note-required",
                format!("ALTER TABLE {d} ALTER COLUMN note SET NOT NULL"),
            )
            .down(format!("ALTER TABLE {d} ALTER COLUMN note DROP NOT NULL"))
            .touches_table(&data),
            &["fill-v2"],
        )
        .step(
            "db",
            SqlStep::new(db, "count", format!("UPDATE {m} SET applied = applied + 1"))
                .down(format!("UPDATE {m} SET applied = applied - 1"))
                .touches_table(&meta),
            &["note-required"],
        )
        .build()
        .map_err(Error::from)
}

/// What the test's own SQL sees of a tenant.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    md5: String,
    has_v2: bool,
    note_required: bool,
    applied: i64,
}

async fn seen(db: &TestDb, loc: &str) -> Seen {
    let c = db.checker().await;
    let q = |s: &str| s.replace("{s}", &rollback_postgres::quote_ident(loc));
    let md5: String = c
        .query_one(
            &q("SELECT md5(string_agg(d::text, ';' ORDER BY id)) FROM {s}.data d"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = format('%I.data', $1::text)::regclass AND attname = 'v2' AND NOT attisdropped), \
                    (SELECT attnotnull FROM pg_attribute WHERE attrelid = format('%I.data', $1::text)::regclass AND attname = 'note')",
            &[&loc],
        )
        .await
        .unwrap();
    let applied: i32 = c
        .query_one(&q("SELECT applied FROM {s}.meta"), &[])
        .await
        .unwrap()
        .get(0);
    Seen {
        md5,
        has_v2: row.get(0),
        note_required: row.get(1),
        applied: i64::from(applied),
    }
}

/// The md5 the migrated data must have: the baseline rows with `v2 = v * 2`.
async fn migrated_md5(db: &TestDb, loc: &str) -> String {
    let c = db.checker().await;
    c.query_one(
        &format!(
            "SELECT md5(string_agg(ROW(d.id, d.v, d.note, d.v * 2)::text, ';' ORDER BY id)) FROM {}.data d",
            rollback_postgres::quote_ident(loc)
        ),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

struct Expect {
    baseline: BTreeMap<String, Seen>,
    migrated: BTreeMap<String, String>,
}

async fn expectations(db: &TestDb, tenants: &[Tenant]) -> Expect {
    let mut baseline = BTreeMap::new();
    let mut migrated = BTreeMap::new();
    for t in tenants {
        baseline.insert(t.id.clone(), seen(db, &t.location).await);
        migrated.insert(t.id.clone(), migrated_md5(db, &t.location).await);
    }
    Expect { baseline, migrated }
}

async fn assert_migrated(db: &TestDb, t: &Tenant, e: &Expect) {
    let s = seen(db, &t.location).await;
    assert_eq!(s.md5, e.migrated[&t.id], "{}: data migrated", t.id);
    assert!(
        s.has_v2 && s.note_required,
        "{}: schema migrated: {s:?}",
        t.id
    );
    assert_eq!(s.applied, 1, "{}: migrated exactly once", t.id);
}

async fn assert_baseline(db: &TestDb, t: &Tenant, e: &Expect) {
    let s = seen(db, &t.location).await;
    assert_eq!(
        s, e.baseline[&t.id],
        "{}: back at (or still at) its baseline",
        t.id
    );
}

/// Runs started per tenant run id, from the journal table (the test's own SQL).
async fn runs_started(db: &TestDb, fleet: &str) -> BTreeMap<String, i64> {
    let c = db.checker().await;
    c.query(
        "SELECT run_id, count(*) FROM _rollback.journal WHERE kind = 'run_started' AND run_id LIKE $1 || '/%' GROUP BY run_id",
        &[&fleet],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn wave_of(report: &FleetReport, tenant: &str) -> i32 {
    report
        .tenants
        .iter()
        .find(|t| t.tenant == tenant)
        .map(|t| t.wave)
        .unwrap_or(-1)
}

async fn run_workers(fleet: &Fleet, n: usize) -> FleetReport {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let w = fleet.worker(format!("w{i}"));
        set.spawn(async move { w.run().await });
    }
    let mut last = None;
    while let Some(r) = set.join_next().await {
        last = Some(r.expect("worker task").expect("worker"));
    }
    last.unwrap()
}

// ---------------------------------------------------------------------------------------
// in-process workers

#[tokio::test]
async fn a_fleet_migrates_wave_by_wave_and_releases_each_waves_snapshots() {
    let db = TestDb::new("fleet_ok").await;
    let tenants = make_tenants(&db, 12).await;
    let e = expectations(&db, &tenants).await;
    let pg = db.db.clone();
    let fleet = Fleet::builder("ok", &db.db)
        .tenants(TenantSource::Query(
            "SELECT 't' || substr(nspname, 3), nspname::text FROM pg_namespace WHERE nspname LIKE 't\\_%' ORDER BY 1".into(),
        ))
        .plan(move |t| tenant_plan(&pg, t))
        .wave(Wave::count(2).soak(Duration::from_millis(100)))
        .wave(Wave::percent(25.0).soak(Duration::from_millis(100)))
        .wave(Wave::rest())
        .concurrency(2)
        .claim_ttl(Duration::from_secs(5))
        .poll(Duration::from_millis(30))
        .build()
        .unwrap();
    // Every event of every tenant run names its run and its tenant.
    let (tx, mut rx) = tokio::sync::broadcast::channel(100_000);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..2 {
        let w = fleet.worker(format!("w{i}")).events(tx.clone());
        set.spawn(async move { w.run().await });
    }
    let mut report = None;
    while let Some(r) = set.join_next().await {
        report = Some(r.unwrap().unwrap());
    }
    let report = report.unwrap();
    assert_eq!(report.status, "done", "{}", report.to_markdown());
    assert_eq!(
        report.waves.iter().map(|w| w.tenants).collect::<Vec<_>>(),
        vec![2, 3, 7]
    );
    let mut tenants_seen = std::collections::BTreeSet::new();
    while let Ok(ev) = rx.try_recv() {
        let tenant = ev.tenant.clone().expect("every event names its tenant");
        assert_eq!(ev.run_id, format!("ok/{tenant}"), "{ev}");
        tenants_seen.insert(tenant);
    }
    assert_eq!(tenants_seen.len(), 12);
    for t in &tenants {
        assert_migrated(&db, t, &e).await;
    }
    assert_eq!(report.stayed_migrated.len(), 12);
    assert!(report.breach.is_none());
    // Each wave's snapshots were released after its verdict.
    assert!(
        report.tenants.iter().all(|t| t.status == "released"),
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        db.count("SELECT count(*) FROM _rollback.journal WHERE kind = 'discarded' AND run_id LIKE 'ok/%'")
            .await,
        12,
        "the data snapshot of each tenant released (meta's is only fingerprinted)"
    );
    let passed: Vec<i32> = report
        .decisions
        .iter()
        .filter(|d| d.decision == "wave_passed")
        .map(|d| d.wave)
        .collect();
    assert_eq!(passed, vec![1, 2, 3]);
    assert!(runs_started(&db, "ok").await.values().all(|n| *n == 1));
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["status"], "done");
}

#[tokio::test]
async fn a_failed_tenant_over_budget_rolls_back_its_whole_wave_including_committed_tenants() {
    let db = TestDb::new("fleet_budget").await;
    let tenants = make_tenants(&db, 16).await;
    // t005 (wave 2) has a row the migration cannot take: note is NULL.
    db.exec("UPDATE t_005.data SET note = NULL WHERE id = 7")
        .await;
    let e = expectations(&db, &tenants).await;
    let pg = db.db.clone();
    let fleet = Fleet::builder("budget", &db.db)
        .tenants(TenantSource::List(tenants.clone()))
        .plan(move |t| tenant_plan(&pg, t))
        .wave(Wave::count(3).soak(Duration::from_millis(50)))
        .wave(Wave::count(5))
        .wave(Wave::rest())
        .budget(FailureBudget::failed_runs(0))
        .concurrency(3)
        .poll(Duration::from_millis(30))
        .build()
        .unwrap();
    let report = run_workers(&fleet, 2).await;
    assert_eq!(report.status, "halted", "{}", report.to_markdown());
    let breach = report.breach.as_ref().expect("a breach");
    assert_eq!(breach.wave, 2);
    assert_eq!(breach.evidence["trigger"], "failure_budget");
    assert_eq!(
        breach.evidence["failures"][0]["tenant"], "t005",
        "{}",
        breach.evidence
    );
    for t in &tenants {
        match wave_of(&report, &t.id) {
            1 => assert_migrated(&db, t, &e).await,
            _ => assert_baseline(&db, t, &e).await,
        }
    }
    let w2 = &report.waves[1];
    assert_eq!(w2.status, "rolled_back");
    assert_eq!(w2.migrated, 0);
    assert_eq!(w2.failed + w2.rolled_back + w2.cancelled, 5);
    assert_eq!(report.waves[2].status, "pending", "no later wave starts");
    // Committed tenants of wave 2 were rolled back after their commit, with parity.
    for t in report.tenants.iter().filter(|t| t.status == "rolled_back") {
        let o = t.outcome.as_ref().unwrap();
        assert!(o.rolled_back_after_commit && o.parity_proven, "{t:?}");
    }
    let started = runs_started(&db, "budget").await;
    assert!(started.keys().all(|r| {
        let t = r.trim_start_matches("budget/");
        wave_of(&report, t) <= 2
    }));
    assert!(started.values().all(|n| *n == 1));
    assert!(report.to_markdown().contains("Wave 2 breached"));
}

#[tokio::test]
async fn a_health_breach_rolls_back_earlier_waves_too_when_the_policy_says_so() {
    let db = TestDb::new("fleet_earlier").await;
    let tenants = make_tenants(&db, 9).await;
    // Wave 2 (t002..t004) serves errors once migrated: the aggregated rate breaches.
    for i in 2..5 {
        db.exec(&format!(
            "INSERT INTO t_{i:03}.requests (status) SELECT 503 FROM generate_series(1, 30)"
        ))
        .await;
    }
    let e = expectations(&db, &tenants).await;
    let pg = db.db.clone();
    let fleet = Fleet::builder("earlier", &db.db)
        .tenants(TenantSource::List(tenants.clone()))
        .plan(move |t| tenant_plan(&pg, t))
        .wave(Wave::count(2).soak(Duration::from_millis(50)))
        .wave(Wave::count(3).soak(Duration::from_millis(300)))
        .wave(Wave::rest())
        .health(
            TenantErrorRate::new(
                &db.db,
                "error-rate",
                "SELECT count(*) FILTER (WHERE status >= 500), count(*) FROM {location}.requests",
                0.05,
            ),
            Duration::from_millis(50),
        )
        .earlier_waves(EarlierWaves::RollBack)
        .concurrency(2)
        .poll(Duration::from_millis(30))
        .build()
        .unwrap();
    let report = run_workers(&fleet, 2).await;
    assert_eq!(report.status, "halted", "{}", report.to_markdown());
    let breach = report.breach.as_ref().unwrap();
    assert_eq!(
        (breach.wave, breach.evidence["trigger"].as_str()),
        (2, Some("health"))
    );
    assert!(breach.evidence["health"]["value"].as_f64().unwrap() > 0.05);
    assert_eq!(
        breach.evidence["earlier_waves_rolled_back"],
        serde_json::json!([1])
    );
    for t in &tenants {
        assert_baseline(&db, t, &e).await;
    }
    assert!(report.stayed_migrated.is_empty());
    // Every run that started committed, then was rolled back after its commit.
    let rolled: Vec<_> = report.tenants.iter().filter(|t| t.wave <= 2).collect();
    assert_eq!(rolled.len(), 5);
    assert!(
        rolled.iter().all(|t| t.status == "rolled_back"),
        "{}",
        report.to_markdown()
    );
    assert!(report.rto.n == 5 && report.rto.max.is_some());
}

#[tokio::test]
async fn a_worker_with_another_spec_is_refused_and_bad_fleets_are_typed_errors() {
    let db = TestDb::new("fleet_spec").await;
    let tenants = make_tenants(&db, 3).await;
    let pg = db.db.clone();
    let build = |waves: &[Wave]| {
        let pg = pg.clone();
        let mut b = Fleet::builder("spec", &db.db)
            .tenants(TenantSource::List(tenants.clone()))
            .plan(move |t| tenant_plan(&pg, t));
        for w in waves {
            b = b.wave(*w);
        }
        b.build()
    };
    let a = build(&[Wave::count(1), Wave::rest()]).unwrap();
    let report = a.worker("a").run().await.unwrap();
    assert_eq!(report.status, "done");
    let b = build(&[Wave::count(2), Wave::rest()]).unwrap();
    let err = b.worker("b").run().await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");

    for bad in [
        build(&[]),
        build(&[Wave::count(0)]),
        build(&[Wave::percent(120.0)]),
        build(&[Wave::rest(), Wave::count(1)]),
    ] {
        assert!(matches!(bad, Err(Error::Invalid { .. })), "{bad:?}");
    }
    let dup = Fleet::builder("dup", &db.db)
        .tenants(TenantSource::List(vec![
            Tenant::new("x", "a"),
            Tenant::new("x", "b"),
        ]))
        .plan(|_| unreachable!())
        .wave(Wave::rest())
        .build();
    assert!(matches!(dup, Err(Error::Invalid { .. })));
}

// ---------------------------------------------------------------------------------------
// 200 tenants, 4 worker processes, one killed

const BIG_TENANTS: usize = 200;

fn big_fleet(db: &Database, name: &str, tenants: Vec<Tenant>) -> Fleet {
    let pg = db.clone();
    Fleet::builder(name, db)
        .tenants(TenantSource::List(tenants))
        .plan(move |t| tenant_plan(&pg, t))
        .wave(Wave::count(10).soak(Duration::from_millis(200)))
        .wave(Wave::percent(10.0).soak(Duration::from_millis(400)))
        .wave(Wave::percent(50.0).soak(Duration::from_millis(200)))
        .wave(Wave::rest())
        .budget(FailureBudget::failed_runs(1))
        .health(
            TenantErrorRate::new(
                db,
                "error-rate",
                "SELECT count(*) FILTER (WHERE status >= 500), count(*) FROM {location}.requests",
                0.05,
            ),
            Duration::from_millis(100),
        )
        .concurrency(2)
        .claim_ttl(Duration::from_millis(1500))
        .poll(Duration::from_millis(50))
        .build()
        .unwrap()
}

fn big_tenants() -> Vec<Tenant> {
    (0..BIG_TENANTS)
        .map(|i| Tenant::new(format!("t{i:03}"), format!("t_{i:03}")))
        .collect()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Not a test: the body of the worker processes the fleet test starts (it does nothing
/// unless `ROLLBACK_FLEET_URL` is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker process of the fleet test, started by it"]
async fn fleet_worker_process() {
    let Some(url) = env("ROLLBACK_FLEET_URL") else {
        return;
    };
    let name = env("ROLLBACK_FLEET_NAME").expect("fleet name");
    let holder = env("ROLLBACK_FLEET_HOLDER").expect("holder");
    let db = Database::connect(&url).expect("pool");
    let fleet = big_fleet(&db, &name, big_tenants());
    let report = fleet.worker(holder).run().await.expect("worker");
    println!("fleet {} ended {}", report.fleet, report.status);
}

fn spawn_worker(url: &str, name: &str, holder: &str, log: &std::path::Path) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    Command::new(exe)
        .args([
            "--exact",
            "fleet_worker_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ROLLBACK_FLEET_URL", url)
        .env("ROLLBACK_FLEET_NAME", name)
        .env("ROLLBACK_FLEET_HOLDER", holder)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn a worker process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tenants_four_worker_processes_one_killed_and_wave_two_rolled_back_as_a_unit() {
    let db = TestDb::new("fleet_big").await;
    let tenants = make_tenants(&db, BIG_TENANTS).await;
    // Wave 1: t000..t009; wave 2: t010..t029 (10%); waves 3 and 4: the rest.
    // Planted in wave 2: one tenant's data breaks the migration (tolerated by the
    // budget of one failed run), and its tenants serve errors (9%) — the aggregated
    // error rate breaches the wave while it soaks.
    db.exec("UPDATE t_017.data SET note = NULL WHERE id = 3")
        .await;
    for i in 10..30 {
        db.exec(&format!(
            "INSERT INTO t_{i:03}.requests (status) SELECT 500 FROM generate_series(1, 10)"
        ))
        .await;
    }
    let e = expectations(&db, &tenants).await;
    let dir = tempfile::tempdir().unwrap();
    let name = "big";
    // The fleet's tables exist before the workers race to join it.
    let t0 = Instant::now();
    let mut workers: Vec<Child> = (0..4)
        .map(|i| {
            spawn_worker(
                &db.url,
                name,
                &format!("w{i}"),
                &dir.path().join(format!("w{i}.log")),
            )
        })
        .collect();

    // SIGKILL worker w0 while it is running a tenant of wave 1 or 2.
    let checker = db.checker().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim: String = loop {
        assert!(Instant::now() < deadline, "w0 never claimed a tenant run");
        let row = checker
            .query_opt(
                "SELECT tenant FROM _rollback.fleet_tenants WHERE fleet = $1 AND holder = 'w0' AND status = 'running' LIMIT 1",
                &[&name],
            )
            .await
            .ok()
            .flatten();
        if let Some(r) = row {
            // Let its run get under way.
            tokio::time::sleep(Duration::from_millis(30)).await;
            workers[0].kill().expect("SIGKILL w0");
            let _ = workers[0].wait();
            break r.get(0);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    for (i, w) in workers.iter_mut().enumerate().skip(1) {
        let status = wait_with_timeout(w, Duration::from_secs(110));
        assert!(
            status.is_some_and(|s| s.success()),
            "worker w{i} failed: {}",
            std::fs::read_to_string(dir.path().join(format!("w{i}.log"))).unwrap_or_default()
        );
    }
    let elapsed = t0.elapsed();
    let report = FleetReport::load(&db.db, "_rollback", name).await.unwrap();
    println!("{}", report.to_markdown());
    println!("fleet ended in {elapsed:?}");
    assert_eq!(report.status, "halted");

    // The killed worker's tenant was taken over and resumed by another worker.
    let v = report.tenants.iter().find(|t| t.tenant == victim).unwrap();
    assert!(v.takeovers >= 1, "{v:?}");

    // The test's own SQL: wave 1 migrated once, wave 2 all at baseline (committed ones
    // included), later waves untouched.
    let mut rolled_back_after_commit = 0;
    for t in &tenants {
        match wave_of(&report, &t.id) {
            1 => assert_migrated(&db, t, &e).await,
            2 => {
                assert_baseline(&db, t, &e).await;
                let r = report.tenants.iter().find(|x| x.tenant == t.id).unwrap();
                if r.outcome
                    .as_ref()
                    .is_some_and(|o| o.rolled_back_after_commit)
                {
                    rolled_back_after_commit += 1;
                }
            }
            _ => assert_baseline(&db, t, &e).await,
        }
    }
    assert_eq!(
        rolled_back_after_commit, 19,
        "every committed tenant of wave 2"
    );
    let breach = report.breach.as_ref().expect("wave 2 breached");
    assert_eq!(
        (breach.wave, breach.evidence["trigger"].as_str()),
        (2, Some("health"))
    );
    let w2 = &report.waves[1];
    assert_eq!((w2.failed, w2.rolled_back, w2.migrated), (1, 19, 0));
    assert_eq!(
        report
            .tenants
            .iter()
            .find(|t| t.tenant == "t017")
            .unwrap()
            .status,
        "failed"
    );
    assert!(report.waves[2..].iter().all(|w| w.status == "pending"));

    // No tenant run lost or run twice: one run per tenant of waves 1 and 2, none after.
    let started = runs_started(&db, name).await;
    assert_eq!(started.len(), 30, "{started:?}");
    assert!(started.values().all(|n| *n == 1), "{started:?}");
    assert!(started
        .keys()
        .all(|r| wave_of(&report, r.trim_start_matches("big/")) <= 2));
    assert_eq!(
        db.count(
            "SELECT count(*) FROM _rollback.fleet_tenants WHERE fleet = 'big' AND holder <> ''"
        )
        .await,
        0,
        "no claim left open"
    );
    assert_eq!(report.stayed_migrated.len(), 10);
    assert!(report.rto.n >= 19 && report.rto.p95.is_some());
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}
