//! The fleet's control plane at scale: its cost per tenant run (wall time, statements,
//! round trips and transactions on the control database) against the same tenant runs
//! without a fleet, measured in the same run; tenants per minute with 1, 2 and 4 workers;
//! and a 10,000-tenant fleet.
//!
//! Tenant runs are simulated (`rollback_core::sim`: each tenant a key/value resource,
//! one compensable step, its checkpoint, a memory journal shared by the workers), so
//! everything measured on PostgreSQL is the control plane: claims (`SKIP LOCKED`, fenced
//! leases), outcomes, wave verdicts and snapshot releases. Workers are tasks of this
//! process, each with its own control session and pool, as separate processes would
//! have.
//!
//! - **Time per tenant run**: the fleet's wall time minus the wall time of the same
//!   simulated runs without a fleet (run, then release the kept snapshots, as the fleet
//!   does), over the tenants; one worker, with runs one at a time (what each run waits
//!   for) and four at a time. Each side is the fastest of `--reps` repetitions.
//! - **Statements per tenant run**: counted exactly by a proxy between the workers and the
//!   server (`wire.rs`): one per `CommandComplete` the server sends (each statement of a
//!   multi-statement query, `BEGIN` and `COMMIT` included), over the tenants; round trips
//!   are its `ReadyForQuery` messages. The fleet's sessions, and nothing else, go through
//!   it. Transactions are the control database's `xact_commit + xact_rollback` delta.
//!
//! ```text
//! cargo run --release -p benches --bin fleet                       # 2,000 tenants, then 10,000 × 4 workers
//! cargo run --release -p benches --bin fleet -- --tenants 500 --big 0 --reps 1
//! ```
//!
//! The server: `DATABASE_URL` or `ROLLBACK_TEST_PG_URL` (a fresh database is created
//! and dropped).

mod wire;

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
    concurrency: usize,
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

async fn run(url: &str, name: &str, tenants: usize, workers: usize, concurrency: usize) -> Measure {
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
            .concurrency(concurrency)
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
        concurrency,
        secs,
        xacts: after - before - 2,
        report,
    }
}

/// The same simulated tenant runs without a fleet (`concurrency` at a time, as one worker
/// runs them): run, then release the kept snapshots, as the fleet does. Seconds.
async fn without_fleet(tenants: usize, concurrency: usize) -> f64 {
    use rollback_core::{Executor, SnapshotRetention};
    let world = SimWorld::new();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..tenants {
        if set.len() >= concurrency {
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
    let mut reps = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tenants" => {
                tenants = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--tenants N")?
            }
            "--reps" => {
                reps = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|r| *r > 0)
                    .ok_or("--reps N (at least 1)")?
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

    let proxy = wire::Proxy::start(host_port(&url)).await?;
    let counted_url = through(&db_url, proxy.addr);
    let mut runs = 0usize;
    let mut name = || {
        runs += 1;
        format!("sim{runs}")
    };

    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    if tenants > 0 {
        println!("## The control plane's cost per tenant run ({tenants} simulated tenant runs, one worker, release build: {})\n", if cfg!(debug_assertions) { "no, a debug build" } else { "yes" });
        println!("| runs at a time | without the fleet | with the fleet | per tenant run without | per tenant run with | added by the fleet per tenant run |");
        println!("|---|---|---|---|---|---|");
        for concurrency in [1usize, 4] {
            let mut base = f64::MAX;
            let mut best: Option<Measure> = None;
            for _ in 0..reps {
                base = base.min(without_fleet(tenants, concurrency).await);
                let m = run(&db_url, &name(), tenants, 1, concurrency).await;
                if best.as_ref().is_none_or(|b| m.secs < b.secs) {
                    best = Some(m);
                }
            }
            let m = best.expect("a run");
            let per = |secs: f64| secs * 1000.0 / tenants as f64;
            let added = per(m.secs) - per(base);
            println!(
                "| {concurrency} | {base:.2} s | {:.2} s | {:.3} ms | {:.3} ms | {added:.3} ms ({:.1}× the run alone) |",
                m.secs,
                per(base),
                per(m.secs),
                m.secs / base
            );
            if concurrency == 1 {
                verdicts.push(format!(
                    "time: the fleet adds {added:.3} ms per tenant run (runs one at a time), target < 5 ms: {}",
                    if added < 5.0 { "met" } else { "missed" }
                ));
            }
            rows.push(m);
        }
        println!();
        println!("## Statements per tenant run, counted by the wire-protocol proxy\n");
        println!("The baseline (the same runs without a fleet) makes no statement on the control database: every statement below is the control plane's.\n");
        println!("| workers (×4 runs each) | statements | per tenant run | round trips per tenant run | transactions per tenant run | sessions |");
        println!("|---|---|---|---|---|---|");
        let mut breakdown = None;
        for workers in [1usize, 4] {
            proxy.reset();
            let m = run(&counted_url, &name(), tenants, workers, 4).await;
            let c = proxy.counts();
            let per = c.total() as f64 / tenants as f64;
            println!(
                "| {workers} | {} | {per:.2} | {:.2} | {:.2} | {} |",
                c.total(),
                c.round_trips as f64 / tenants as f64,
                m.xacts as f64 / tenants as f64,
                c.sessions
            );
            verdicts.push(format!(
                "statements: {per:.2} per tenant run with {workers} worker(s), target < 10: {}",
                if per < 10.0 { "met" } else { "missed" }
            ));
            if workers == 1 {
                breakdown = Some(c);
            }
        }
        if let Some(c) = breakdown {
            println!("\nWhere they go, one worker (per tenant run, by statement; the time is what the worker waited for the answer: the server's time and the loopback):\n");
            println!(
                "| statements per tenant run | ms waited per tenant run | count | statement |"
            );
            println!("|---|---|---|---|");
            let mut by: Vec<_> = c.statements.iter().collect();
            by.sort_by(|a, b| b.1.cmp(a.1));
            for (sql, n) in by {
                let us = c.waited_us.get(sql).copied().unwrap_or(0);
                println!(
                    "| {:.3} | {:.3} | {n} | `{sql}` |",
                    *n as f64 / tenants as f64,
                    us as f64 / 1000.0 / tenants as f64
                );
            }
            let total_us: u64 = c.waited_us.values().sum();
            println!(
                "\nIn all, the worker waited {:.3} ms per tenant run for the control database.",
                total_us as f64 / 1000.0 / tenants as f64
            );
        }
        println!();
        for w in [2usize, 4] {
            rows.push(run(&db_url, &name(), tenants, w, 4).await);
        }
    }
    if big > 0 {
        rows.push(run(&db_url, "sim-big", big, 4, 4).await);
    }
    println!("## Tenants per minute\n");
    println!("| tenants | workers | runs at a time per worker | wall time | tenants/min | worker time per tenant run | control-database transactions per tenant run | waves |");
    println!("|---|---|---|---|---|---|---|---|");
    for m in &rows {
        let per_run_ms = m.secs * 1000.0 / m.tenants as f64 * m.workers as f64;
        println!(
            "| {} | {} | {} | {:.2} s | {:.0} | {:.3} ms | {:.2} | {} |",
            m.tenants,
            m.workers,
            m.concurrency,
            m.secs,
            m.tenants as f64 / m.secs * 60.0,
            per_run_ms,
            m.xacts as f64 / m.tenants as f64,
            m.report.waves.len()
        );
    }
    println!();
    for v in &verdicts {
        println!("{v}");
    }
    drop(proxy);
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

/// `host:port` of a `postgres://` URL (port 5432 when absent).
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hp = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hp
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hp.to_string()
    } else {
        format!("{hp}:5432")
    }
}

/// The same URL through the counting proxy at `addr`, without TLS.
fn through(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    let sep = if tail.contains('?') { '&' } else { '?' };
    format!(
        "{scheme}://{}{addr}{tail}{sep}sslmode=disable",
        user.unwrap_or_default()
    )
}
