//! Run a migration folder of an existing tool (sqlx, golang-migrate, dbmate, diesel,
//! refinery, Flyway, sqitch) through the
//! executor: the pending migrations from the tool's own history table, a dry run saying
//! how each one would be undone, progress as it runs, and the report. The tool's table is
//! kept true: after a commit its `status` says applied, after a rollback pending.
//!
//! ```text
//! export DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres   # or ROLLBACK_TEST_PG_URL
//! cargo run -p examples --example migrate_folder -- --format sqlx DIR
//! cargo run -p examples --example migrate_folder -- --format dbmate --dry-run DIR
//! cargo run -p examples --example migrate_folder -- --format golang-migrate --target 5 DIR
//! cargo run -p examples --example migrate_folder -- --format sqitch PROJECT_DIR
//! ```
//!
//! Options: `--format sqlx|golang-migrate|dbmate|diesel|refinery|flyway|sqitch` (default
//! sqlx), `--target VERSION` (apply up to it; sqitch: the first VERSION changes of the
//! plan), `--snapshot` (cover tables written by migrations without a down with table
//! copies instead of undo logs), `--approve FILE` (let a migration that nothing can undo
//! run; it stays applied after a rollback), `--dry-run` (print the plan and stop).

use rollback_core::{ConsoleProgress, Executor, Outcome};
use rollback_postgres::{CheckpointKind, Database, Format, Migrations, PgJournal, Revert};
use std::time::Duration;

struct Options {
    format: Format,
    dir: String,
    target: Option<u64>,
    snapshot: bool,
    approve: Vec<String>,
    dry_run: bool,
}

const USAGE: &str = "usage: migrate_folder [--format sqlx|golang-migrate|dbmate|diesel|refinery|flyway|sqitch] [--target VERSION] [--snapshot] [--approve FILE]... [--dry-run] DIR";

fn options() -> Result<Options, String> {
    let mut o = Options {
        format: Format::Sqlx,
        dir: String::new(),
        target: None,
        snapshot: false,
        approve: Vec::new(),
        dry_run: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--format" => o.format = args.next().ok_or("--format needs a value")?.parse()?,
            "--target" => {
                o.target = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--target needs a version number")?,
                )
            }
            "--snapshot" => o.snapshot = true,
            "--approve" => o
                .approve
                .push(args.next().ok_or("--approve needs a file name")?),
            "--dry-run" => o.dry_run = true,
            "-h" | "--help" => return Err(USAGE.into()),
            d if !d.starts_with('-') && o.dir.is_empty() => o.dir = d.to_string(),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if o.dir.is_empty() {
        return Err(USAGE.into());
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let url = std::env::var("DATABASE_URL")
        .or_else(|_| std::env::var("ROLLBACK_TEST_PG_URL"))
        .map_err(|_| "set DATABASE_URL")?;
    let db = Database::connect(&url)?;

    // 1. The folder, and what the tool's own table says is pending.
    let mut folder = Migrations::load(opts.format, &opts.dir)?;
    if let Some(t) = opts.target {
        folder = folder.target(t);
    }
    if opts.snapshot {
        folder = folder.checkpoint_kind(CheckpointKind::Snapshot);
    }
    if !opts.approve.is_empty() {
        folder = folder.approve_irreversible(&opts.approve, "approved with --approve");
    }
    let pending = folder.pending(&db).await?;
    println!(
        "{} applied, {} pending in {}",
        pending.applied_count(),
        pending.migrations().len(),
        opts.dir
    );
    if pending.migrations().is_empty() {
        return Ok(());
    }

    // 2. The dry run: how a rollback would undo each migration.
    for (id, how) in pending.reverts()? {
        let how = match how {
            Revert::Down => "its down".to_string(),
            Revert::Checkpoint(r) => format!("restoring {}", r.join(", ")),
            Revert::NeedsApproval(why) => {
                format!("nothing: cannot be undone ({why}); approve it with --approve FILE")
            }
            Revert::Approved(why) => format!("nothing: stays applied (approved: {why})"),
        };
        println!("  {id}: reverted by {how}");
    }
    let plan = pending.plan()?;
    println!("\n{}", plan.dry_run());
    if opts.dry_run {
        return Ok(());
    }

    // 3. Run it, journaled in the database, printing progress as it goes.
    let executor = Executor::new(PgJournal::new(&db));
    let printer = ConsoleProgress::stdout()
        .without_run_ids()
        .follow(executor.subscribe());
    let report = executor.run(&plan).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    println!("\n{}", report.to_markdown());
    let ok = match report.outcome {
        Outcome::Committed => true,
        Outcome::RolledBack => report.parity_proven(),
        _ => false,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
