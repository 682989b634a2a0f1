//! One migration over a fleet of 50 tenants (one schema each), in waves, with three
//! workers: a canary, then 20%, 50% and the rest, each wave soaking before the next
//! starts. One tenant of the third wave has data the migration cannot take: the wave
//! breaches its failure budget, every tenant run of that wave is rolled back (those that
//! had committed too), no later wave starts, and the fleet report says who stayed
//! migrated. The waves are printed as they change, then the report (Markdown; JSON with
//! `--json`).
//!
//! ```text
//! cargo run -p examples --example fleet_waves            # a throwaway cluster
//! DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres \
//!   cargo run -p examples --example fleet_waves          # a fresh database on that server
//! ```
//!
//! The workers here are tasks of one process; in production each is a process (or a
//! machine) running `fleet.worker(holder).run()` with the same fleet description: they
//! share the work through the fleet's tables in PostgreSQL.

use rollback_core::{Error, Plan};
use rollback_postgres::fleet::{FailureBudget, Fleet, Tenant, TenantSource, Wave};
use rollback_postgres::{Database, SqlStep, Table, TableSnapshot};
use rollback_testkit::cluster::ThrowawayCluster;
use std::time::Duration;

const TENANTS: usize = 50;

fn tenant_plan(db: &Database, t: &Tenant) -> Result<Plan, Error> {
    let accounts = Table::new(&t.location, "accounts");
    let q = accounts.quoted();
    Ok(Plan::builder(format!("require-email/{}", t.id))
        .checkpoint("database", TableSnapshot::new(db, accounts.clone()))
        .step(
            "database",
            SqlStep::new(
                db,
                "normalize",
                format!("UPDATE {q} SET email = lower(email)"),
            )
            .touches_table(&accounts),
            &[],
        )
        .step(
            "database",
            SqlStep::new(
                db,
                "require",
                format!("ALTER TABLE {q} ALTER COLUMN email SET NOT NULL"),
            )
            .down(format!("ALTER TABLE {q} ALTER COLUMN email DROP NOT NULL"))
            .touches_table(&accounts),
            &["normalize"],
        )
        .build()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let json = std::env::args().any(|a| a == "--json");
    // The database: a fresh one on DATABASE_URL's server, or a throwaway cluster.
    let (url, _cluster) = match std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()) {
        Some(url) => (url, None),
        None => {
            let cluster = tokio::task::spawn_blocking(ThrowawayCluster::start).await??;
            (cluster.url("postgres"), Some(cluster))
        }
    };
    let admin = Database::connect(&url)?;
    let name = format!(
        "fleet_waves_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    admin
        .execute_batch(&format!("CREATE DATABASE {name}"))
        .await?;
    let db_url = with_database(&url, &name);
    let db = Database::connect(&db_url)?;
    println!("database {name}: {TENANTS} tenant schemas");

    // 50 tenants, each with its own accounts; tenant 27 (third wave) has an account
    // without an email, which the migration cannot make required.
    db.execute_batch(&format!(
        "DO $$ DECLARE s text; BEGIN FOR i IN 0..{} LOOP \
           s := 'tenant_' || lpad(i::text, 2, '0'); \
           EXECUTE format('CREATE SCHEMA %I', s); \
           EXECUTE format('CREATE TABLE %I.accounts (id int PRIMARY KEY, email text)', s); \
           EXECUTE format('INSERT INTO %I.accounts SELECT g, ''User'' || g || ''@Example.com'' FROM generate_series(1, 50) g', s); \
         END LOOP; END $$; \
         UPDATE tenant_27.accounts SET email = NULL WHERE id = 9;",
        TENANTS - 1
    ))
    .await?;

    let pg = db.clone();
    let fleet = Fleet::builder("require-email", &db)
        .tenants(TenantSource::Query(
            "SELECT nspname::text, nspname::text FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1".into(),
        ))
        .plan(move |t| tenant_plan(&pg, t))
        .wave(Wave::count(3).soak(Duration::from_millis(500)))
        .wave(Wave::percent(20.0).soak(Duration::from_millis(500)))
        .wave(Wave::percent(50.0).soak(Duration::from_millis(500)))
        .wave(Wave::rest())
        .budget(FailureBudget::failed_runs(0))
        .concurrency(3)
        .claim_ttl(Duration::from_secs(5))
        .poll(Duration::from_millis(50))
        .build()?;

    // Three workers; the waves printed as they change.
    let workers: Vec<_> = (1..=3)
        .map(|i| {
            let w = fleet.worker(format!("worker-{i}"));
            tokio::spawn(async move { w.run().await })
        })
        .collect();
    let watcher = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Ok(r) = fleet.report().await else {
                    continue;
                };
                let line =
                    r.waves
                        .iter()
                        .map(|w| {
                            format!(
                            "wave {} {:<12} {:>2}/{:<2} migrated {:>2} failed {} rolled back {:>2}",
                            w.wave, w.status, w.migrated + w.failed + w.rolled_back, w.tenants,
                            w.migrated, w.failed, w.rolled_back
                        )
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                if line != last {
                    println!("---\n{line}");
                    last = line;
                }
                if r.status != "running" {
                    return;
                }
            }
        })
    };
    let mut report = None;
    for w in workers {
        report = Some(w.await??);
    }
    watcher.await?;
    let report = report.expect("three workers");
    if json {
        println!("{}", report.to_json());
    } else {
        println!("\n{}", report.to_markdown());
    }
    println!(
        "{} of {TENANTS} tenants stayed migrated: {}",
        report.stayed_migrated.len(),
        report.stayed_migrated.join(", ")
    );
    // The tenants' database was made for this run: drop it (the throwaway cluster goes
    // with it anyway).
    drop((fleet, db));
    admin
        .execute_batch(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    Ok(())
}

/// `url` with its database replaced by `db`.
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
