//! The fleet's control plane at scale: tenants per minute with 1, 2 and 4 workers, the
//! control plane's cost per tenant run (time and transactions on the control database),
//! and a 10,000-tenant fleet.
//!
//! Tenant runs are simulated (`rollback_core::sim`: each tenant a key/value resource,
//! one compensable step, its checkpoint, a memory journal shared by the workers), so
//! everything measured on PostgreSQL is the control plane: claims (`SKIP LOCKED`, fenced
//! leases), outcomes, wave verdicts and snapshot releases. Workers are tasks of this
//! process, each with its own control session and pool, as separate processes would
//! have.
//!
//! ```text
//! cargo run --release -p benches --bin fleet                       # 2,000 tenants × {1, 2, 4} workers, then 10,000 × 4
//! cargo run --release -p benches --bin fleet -- --tenants 500 --big 0
//! ```
//!
//! The server: `DATABASE_URL` or `ROLLBACK_TEST_PG_URL` (a fresh database is created
//! and dropped).

use rollback_core::journal::{Journal, MemoryJournal};
use rollback_core::sim::{SetKey, SimWorld};
use rollback_core::Plan;
use rollback_postgres::fleet::{Fleet, FleetReport, Tenant, TenantSource, Wave};
use rollback_postgres::Database;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Measure {
    tenants: usize,
    workers: usize,
    secs: f64,
    xacts: i64,
    report: FleetReport,
}

async fn xacts(db: &Database) -> i64 {
    let c = db.client().await.expect("client");
    c.batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .ok();
    c.query_one(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
        &[],
    )
    .await
    .expect("pg_stat_database")
    .get(0)
}

async fn run(url: &str, name: &str, tenants: usize, workers: usize) -> Measure {
    let world = SimWorld::new();
    let list: Vec<Tenant> = (0..tenants)
        .map(|i| Tenant::new(format!("t{i:05}"), format!("r{i:05}")))
        .collect();
    for t in &list {
        world.set(&t.location, "schema", "v1");
    }
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let probe = Database::connect(url).expect("pool");
    // Backends flush their statistics when they end: count before and after the workers'
    // pools are gone.
    let before = xacts(&probe).await;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let db = Database::connect_with(url, 4).expect("pool");
        let world = world.clone();
        let fleet = Fleet::builder(name, &db)
            .tenants(TenantSource::List(list.clone()))
            .plan(move |t| {
                Ok(Plan::builder(format!("sim/{}", t.id))
                    .checkpoint("db", world.checkpoint(&t.location))
                    .step(
                        "db",
                        SetKey::new("set", &world, &t.location, "schema", "v2"),
                        &[],
                    )
                    .build()?)
            })
            .wave(Wave::percent(1.0))
            .wave(Wave::percent(10.0))
            .wave(Wave::percent(50.0))
            .wave(Wave::rest())
            .concurrency(4)
            .poll(Duration::from_millis(20))
            .claim_ttl(Duration::from_secs(30))
            .build()
            .expect("fleet");
        let worker = fleet.worker(format!("w{w}")).journal(journal.clone());
        set.spawn(async move {
            let r = worker.run().await;
            drop(fleet);
            drop(db);
            r
        });
    }
    let mut report = None;
    while let Some(r) = set.join_next().await {
        report = Some(r.expect("worker").expect("fleet"));
    }
    let secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = xacts(&probe).await;
    let report = report.expect("a report");
    assert_eq!(report.status, "done", "{}", report.to_markdown());
    assert_eq!(report.stayed_migrated.len(), tenants);
    Measure {
        tenants,
        workers,
        secs,
        xacts: after - before - 2,
        report,
    }
}

/// The same simulated tenant runs without a fleet (4 at a time, as one worker runs
/// them): run, then release the kept snapshots, as the fleet does. Seconds.
async fn without_fleet(tenants: usize) -> f64 {
    use rollback_core::{Executor, SnapshotRetention};
    let world = SimWorld::new();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..tenants {
        if set.len() >= 4 {
            set.join_next().await.expect("a run").expect("run");
        }
        let (world, journal) = (world.clone(), journal.clone());
        set.spawn(async move {
            let r = format!("r{i:05}");
            world.set(&r, "schema", "v1");
            let plan = Plan::builder(format!("sim/t{i:05}"))
                .checkpoint("db", world.checkpoint(&r))
                .step("db", SetKey::new("set", &world, &r, "schema", "v2"), &[])
                .build()
                .expect("plan");
            let ex = Executor::with_journal(journal).retain_snapshots(SnapshotRetention::KeepAll);
            let run_id = format!("base/t{i:05}");
            ex.run_as(&plan, &run_id, Default::default())
                .await
                .expect("run");
            ex.retain_snapshots(SnapshotRetention::Release)
                .resume(&plan, &run_id)
                .await
                .expect("release");
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("run");
    }
    t0.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut tenants = 2000usize;
    let mut big = 10_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tenants" => {
                tenants = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--tenants N")?
            }
            "--big" => big = args.next().and_then(|v| v.parse().ok()).ok_or("--big N")?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let url = std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("ROLLBACK_TEST_PG_URL"))
        .map_err(|_| "set DATABASE_URL (or ROLLBACK_TEST_PG_URL)")?;
    let admin = Database::connect(&url)?;
    let dbname = format!(
        "bench_fleet_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    admin
        .execute_batch(&format!("CREATE DATABASE {dbname}"))
        .await?;
    let db_url = with_database(&url, &dbname);

    let mut rows = Vec::new();
    for (i, workers) in [1usize, 2, 4].into_iter().enumerate() {
        if tenants > 0 {
            rows.push(run(&db_url, &format!("sim{i}"), tenants, workers).await);
        }
    }
    if big > 0 {
        rows.push(run(&db_url, "sim-big", big, 4).await);
    }
    if tenants > 0 {
        let base = without_fleet(tenants).await;
        let fleet1 = rows[0].secs;
        println!(
            "Without the fleet, the same {tenants} simulated runs (4 at a time, released after) take {:.1} s: {:.2} ms per tenant run against {:.2} ms with one fleet worker, so the control plane adds {:.2} ms of wall time per tenant run at 4 runs at a time.\n",
            base,
            base * 1000.0 / tenants as f64,
            fleet1 * 1000.0 / tenants as f64,
            (fleet1 - base) * 1000.0 / tenants as f64
        );
    }
    println!("| tenants | workers (×4 runs each) | wall time | tenants/min | worker time per tenant run (claim, simulated run, outcome, release) | control-database transactions per tenant run | waves |");
    println!("|---|---|---|---|---|---|---|");
    for m in &rows {
        let per_run_ms = m.secs * 1000.0 / m.tenants as f64 * m.workers as f64;
        println!(
            "| {} | {} | {:.1} s | {:.0} | {:.2} ms | {:.1} | {} |",
            m.tenants,
            m.workers,
            m.secs,
            m.tenants as f64 / m.secs * 60.0,
            per_run_ms,
            m.xacts as f64 / m.tenants as f64,
            m.report.waves.len()
        );
    }
    drop(admin);
    let admin = Database::connect(&url)?;
    admin
        .execute_batch(&format!("DROP DATABASE {dbname} WITH (FORCE)"))
        .await?;
    Ok(())
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host}/{db}?{q}"),
        None => format!("{host}/{db}"),
    }
}
