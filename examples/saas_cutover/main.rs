//! A SaaS cutover across PostgreSQL, object storage and feature flags — one plan, with
//! checkpoints of every resource, parity and referential-integrity verifiers, a health
//! trigger during a soak window, a status-page notifier, and the Markdown run report.
//!
//! **The plan is in `plan.rs`, beside this file**: read it first. This file parses the
//! options, lays down the fixture, prints the dry run, runs the plan and prints what
//! happened.
//!
//! - database: split `customers.name` into `first_name` / `last_name` (add the columns,
//!   backfill them in batches, add a validated constraint);
//! - storage: move the customers' attachments from `v1/{customer_id}/…` to
//!   `v2/{customer_id}/…`;
//! - flags: roll out `new_name_fields` (after the backfill) and `use_v2_storage` (after
//!   the move) in stages, health-checked; each flag has its own checkpoint, and turning
//!   them off is the first thing a rollback does (the kill switch).
//!
//! ```text
//! cargo run -p examples --example saas_cutover                                   # commits
//! cargo run -p examples --example saas_cutover -- --fail-at relayout --scope component
//! cargo run -p examples --example saas_cutover -- --fail-at backfill             # whole plan back
//! cargo run -p examples --example saas_cutover -- --fail-at soak                 # health breach
//! ```
//!
//! Options: `--fail-at backfill|relayout|soak|none` (default `none`), `--scope
//! plan|component` (default `plan`), `--customers N` (2000), `--attachments N` (200),
//! `--soak-ms N` (1500), `--prometheus URL QUERY` (the health trigger from your
//! Prometheus: a PromQL query giving the error rate, breaching above 1%, two bad
//! measurements in a row), `--quiet` (no progress lines).
//!
//! Backends (each chosen on its own; see `examples::setup`): `DATABASE_URL`; `S3_ENDPOINT`,
//! `S3_ACCESS_KEY` and `S3_SECRET_KEY` (or `ROLLBACK_TEST_S3_*`); `UNLEASH_URL` and
//! `UNLEASH_ADMIN_TOKEN` (or `ROLLBACK_TEST_UNLEASH_*`). Unset, the embedded default runs:
//! a throwaway PostgreSQL cluster from the local binaries, a local folder for objects, a
//! flag file and a file journal, under `target/saas_cutover/`.

// The same file is the library's `examples::cutover::cutover_plan` (the drill and the tests
// run that plan too).
#[allow(unreachable_pub)]
mod plan;

use examples::cutover::{parse_scope, scope_name, FailAt, Options};
use examples::setup::{self, SetupError};
use rollback_core::Outcome;
use std::path::PathBuf;
use std::time::Duration;

fn usage() -> &'static str {
    "usage: saas_cutover [--fail-at backfill|relayout|soak|none] [--scope plan|component] \
     [--customers N] [--attachments N] [--soak-ms N] [--prometheus URL QUERY] [--quiet]"
}

fn parse() -> Result<(Options, bool), String> {
    let mut o = Options::default();
    let mut quiet = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{name} needs a number, not {v:?}"))
        };
        match a.as_str() {
            "--fail-at" => o.fail_at = value("--fail-at")?.parse()?,
            "--scope" => o.scope = parse_scope(&value("--scope")?)?,
            "--customers" => o.customers = number("--customers", value("--customers")?)?.max(1),
            "--attachments" => {
                o.attachments = number("--attachments", value("--attachments")?)?.max(1)
            }
            "--soak-ms" => {
                o.soak = Duration::from_millis(number("--soak-ms", value("--soak-ms")?)?)
            }
            "--prometheus" => {
                let url = value("--prometheus")?;
                let query = value("--prometheus")?;
                o.prometheus = Some((url, query));
            }
            "--quiet" => quiet = true,
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown option {other:?}\n{}", usage())),
        }
    }
    Ok((o, quiet))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let (opts, quiet) = match parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match run(opts, quiet).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("\nsaas_cutover: {e}");
            std::process::exit(1);
        }
    }
}

/// `Ok(true)`: the run reached a consistent, proven end (committed, or rolled back with
/// parity proven).
async fn run(opts: Options, quiet: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let work = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/saas_cutover");
    println!("== backends ==");
    let setup = match setup::from_env(&work, "demo").await {
        Ok(s) => s,
        Err(e @ SetupError::Cluster(_)) => {
            return Err(format!(
            "{e}\n(the embedded default needs the PostgreSQL server binaries; nothing was changed)"
        )
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    for line in &setup.chosen {
        println!("  {line}");
    }
    let b = &setup.backends;

    println!(
        "\n== fixture ==\n  {} customers in {}.customers, {} attachments in {}.attachments and under {}{{customer_id}}/, flags {} and {} off",
        opts.customers,
        b.names.schema,
        opts.attachments,
        b.names.schema,
        examples::cutover::FROM,
        b.names.new_name_fields,
        b.names.use_v2_storage
    );
    b.seed(&opts).await?;

    let plan = plan::cutover_plan(b, &opts)?;
    println!(
        "\n== dry run (failure injected: {}, rollback scope: {}) ==\n{}",
        opts.fail_at,
        scope_name(opts.scope),
        plan.dry_run()
    );
    match opts.fail_at {
        FailAt::Backfill => println!(
            "drill: customer {} is poisoned; the backfill batch holding it fails after the earlier batches committed\n",
            opts.poisoned_customer()
        ),
        FailAt::Relayout => println!(
            "drill: the move of attachments fails once {} objects are moved (the move checks after each batch of {} objects)\n",
            opts.relayout_fail_after(),
            examples::cutover::move_batch(&*b.storage)
        ),
        FailAt::Soak => println!(
            "drill: from the 2nd poll of the soak window on, the application's error rate is 12% (injected); \
             the window is at least {} s, ended early by the breach\n",
            examples::cutover::SOAK_DRILL_WINDOW.as_secs()
        ),
        FailAt::None => {}
    }

    println!("== run ==");
    let run = b.execute(&plan, &opts, !quiet, true).await?;
    let report = &run.report;

    println!("\n== what happened ==\n{}", run.summary());
    if !run.released.is_empty() {
        println!(
            "released the baseline snapshots of {} (back at baseline, proven)",
            run.released.join(", ")
        );
    }
    let kept: Vec<String> = report
        .checkpoints
        .iter()
        .filter(|c| c.snapshot_id.is_some() && !run.released.contains(&c.resource))
        .map(|c| {
            format!(
                "{} (snapshot {})",
                c.resource,
                c.snapshot_id.as_deref().unwrap_or("")
            )
        })
        .collect();
    if !kept.is_empty() {
        println!(
            "kept the baseline snapshots of {}: those resources stay migrated, and a later rollback can still restore them{}",
            kept.join(", "),
            if setup.cluster.is_some() {
                " (here the throwaway database, with its snapshot, is deleted at exit)"
            } else {
                ""
            }
        );
    }
    println!("\n== status page ==");
    if run.notices.is_empty() {
        println!("  (nothing published: no rollback)");
    }
    for n in &run.notices {
        println!("  [{:?}] {}", n.kind, n.message);
    }
    println!("\n== run report ==\n\n{}", report.to_markdown());

    let ok = match report.outcome {
        Outcome::Committed => true,
        Outcome::RolledBack => report.parity_proven(),
        Outcome::PartiallyRolledBack => {
            report.parity_proven() && report.kept_verified() != Some(false)
        }
        _ => false,
    };
    if !ok {
        eprintln!(
            "the run did not reach a proven end ({}); `Executor::resume` continues it",
            report.outcome
        );
    }
    drop(setup); // stops the throwaway cluster, if one was started
    Ok(ok)
}
