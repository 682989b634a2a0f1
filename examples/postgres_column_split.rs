//! Split a `name` column into `first_name` / `last_name` on a real PostgreSQL, with a
//! batched backfill, a recovery point, a table snapshot, verifiers and a journal kept in
//! the database itself — then (with `--fail`) watch it roll back and prove it.
//!
//! ```text
//! export DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres   # or ROLLBACK_TEST_PG_URL
//! cargo run --example postgres_column_split                    # migrate, commit
//! cargo run --example postgres_column_split -- --fail          # a final check fails → rollback
//! cargo run --example postgres_column_split -- --contract --fail
//!                                      # also drops `name` (restore-only) → restored by the snapshot
//! cargo run --example postgres_column_split -- --reset --rows 1000000
//! ```
//!
//! Options: `--rows N` (demo rows, default 200000), `--batch N` (backfill batch, default
//! 20000), `--reset` (drop and re-create the demo table), `--contract` (also drop the old
//! `name` column), `--fail` (add a final check that fails, forcing a rollback).

use rollback_core::{ConsoleProgress, Executor, Outcome, Plan, StepOptions};
use rollback_postgres::{
    Backfill, Database, ForeignKeyIntegrity, PgJournal, RecoveryPoint, RowCountParity,
    SqlAssertion, SqlStep, Table, TableSnapshot,
};
use std::time::Duration;

struct Options {
    rows: u64,
    batch: u64,
    reset: bool,
    contract: bool,
    fail: bool,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        rows: 200_000,
        batch: 20_000,
        reset: false,
        contract: false,
        fail: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--rows" => o.rows = number("--rows")?,
            "--batch" => o.batch = number("--batch")?,
            "--reset" => o.reset = true,
            "--contract" => o.contract = true,
            "--fail" => o.fail = true,
            "-h" | "--help" => {
                return Err(
                    "usage: postgres_column_split [--fail] [--contract] [--reset] [--rows N] [--batch N]"
                        .into(),
                )
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let url = std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("ROLLBACK_TEST_PG_URL"))
        .map_err(|_| {
            "set DATABASE_URL (or ROLLBACK_TEST_PG_URL) to a PostgreSQL connection string"
        })?;
    let db = Database::connect(&url)?;
    println!("database: {db}"); // user@host:port/db — never the password

    // 1. The demo table.
    let table = Table::public("demo_customers");
    let client = db.client().await?;
    if opts.reset {
        client
            .batch_execute("DROP TABLE IF EXISTS demo_customers")
            .await?;
    }
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = 'demo_customers'",
            &[],
        )
        .await?
        .is_some();
    if !exists {
        println!("creating demo_customers with {} rows…", opts.rows);
        client
            .batch_execute(&format!(
                "CREATE TABLE demo_customers (id bigserial PRIMARY KEY, name text NOT NULL, \
                   email text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO demo_customers (name, email)
                   SELECT (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Ken'])[1 + g % 6] || ' ' ||
                          (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Thompson'])[1 + (g / 6) % 6] || g,
                          'user' || g || '@example.com'
                   FROM generate_series(1, {}) g;
                 ANALYZE demo_customers;",
                opts.rows
            ))
            .await?;
    }
    let split_before = client
        .query_opt(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'demo_customers' AND column_name = 'first_name'",
            &[],
        )
        .await?
        .is_some();
    if split_before {
        println!(
            "demo_customers was already split by an earlier run; run with --reset to start over"
        );
        return Ok(());
    }
    drop(client);

    // 2. The plan: expand (add columns), backfill, constrain, optionally contract.
    let snapshot = TableSnapshot::new(&db, table.clone());
    let mut plan = Plan::builder("demo-split-name")
        .precondition(RecoveryPoint::new(&db, "before-split").lsn_is_enough())
        .checkpoint("database", snapshot)
        .step(
            "database",
            SqlStep::new(
                &db,
                "add-columns",
                "ALTER TABLE demo_customers ADD COLUMN first_name text, ADD COLUMN last_name text",
            )
            .down("ALTER TABLE demo_customers DROP COLUMN IF EXISTS first_name, DROP COLUMN IF EXISTS last_name"),
            &[],
        )
        .step(
            "database",
            Backfill::new(
                &db,
                "backfill-names",
                table.clone(),
                "id",
                "first_name = split_part(name, ' ', 1), last_name = split_part(name, ' ', 2)",
            )
            .batch_size(opts.batch)
            .throttle(Duration::from_millis(10)),
            &["add-columns"],
        )
        .step(
            "database",
            SqlStep::new(
                &db,
                "add-constraint",
                "ALTER TABLE demo_customers ADD CONSTRAINT demo_names_present \
                   CHECK (first_name <> '' AND last_name <> '') NOT VALID; \
                 ALTER TABLE demo_customers VALIDATE CONSTRAINT demo_names_present",
            )
            .down("ALTER TABLE demo_customers DROP CONSTRAINT IF EXISTS demo_names_present"),
            &["backfill-names"],
        )
        .verify_after(
            "backfill-names",
            SqlAssertion::no_rows(
                &db,
                "names-filled",
                "SELECT id FROM demo_customers WHERE first_name IS NULL OR last_name IS NULL LIMIT 10",
            ),
        )
        .verify_final(RowCountParity::new(&db, table.clone()))
        .verify_final(ForeignKeyIntegrity::new(&db).schemas(["public"]))
        .default_step_options(StepOptions::default().retries(3));
    if opts.contract {
        plan = plan.step(
            "database",
            SqlStep::new(
                &db,
                "drop-name",
                "ALTER TABLE demo_customers DROP COLUMN name",
            )
            .touches_table(&table),
            &["add-constraint"],
        );
    }
    if opts.fail {
        plan = plan.verify_final(SqlAssertion::is_true(
            &db,
            "forced-failure",
            "SELECT false -- --fail was given",
        ));
    }
    let plan = plan.build()?;
    println!("\n{}", plan.dry_run());

    // 3. Run it, journaled in the database, printing progress as it goes.
    let executor = Executor::new(PgJournal::new(&db));
    // Progress, as it happens: one line per step, verdict, restore and proof.
    let printer = ConsoleProgress::stdout()
        .without_run_ids()
        .follow(executor.subscribe());
    let report = executor.run(&plan).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    println!("\n{}", report.to_markdown());
    let ok = match report.outcome {
        Outcome::Committed => !opts.fail,
        Outcome::RolledBack => report.parity_proven(),
        _ => false,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
