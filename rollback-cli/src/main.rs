//! `rollback`: the operator's side of the rollback library. Everything it shows is read
//! from a run journal — a file journal folder or a PostgreSQL journal — with no plan code:
//! the runs, a run's status and report, the journal's integrity, a live run's progress.
//!
//! Exit codes (also in `rollback --help`):
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done |
//! | 1 | `verify` found a damaged record or an inconsistent lease |
//! | 2 | bad usage (unknown command or option, no journal given) |
//! | 3 | no such run or plan in the journal |
//! | 4 | the journal cannot be reached or read |
//! | 5 | the run's journal does not describe its plan (an older journal): no report without the plan |
//! | 6 | `watch`: the run ended in `rollback_failed` |
//! | 7 | `watch`: the run ended rolled back (the change is not in place) |
//! | 8 | `watch`: the run did not end before `--timeout` |

mod journal;
mod output;
mod runs;
mod verify;
mod watch;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit codes.
pub(crate) mod code {
    pub(crate) const OK: u8 = 0;
    pub(crate) const DAMAGED: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const NOT_FOUND: u8 = 3;
    pub(crate) const JOURNAL: u8 = 4;
    pub(crate) const UNDESCRIBED: u8 = 5;
    pub(crate) const ROLLBACK_FAILED: u8 = 6;
    pub(crate) const ROLLED_BACK: u8 = 7;
    pub(crate) const TIMED_OUT: u8 = 8;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  verify found a damaged record or an inconsistent lease
  2  bad usage (unknown command or option, no journal given)
  3  no such run or plan in the journal
  4  the journal cannot be reached or read
  5  the run's journal does not describe its plan (an older journal): no report without the plan
  6  watch: the run ended in rollback_failed
  7  watch: the run ended rolled back
  8  watch: the run did not end before --timeout

Environment: ROLLBACK_JOURNAL (a file journal folder), ROLLBACK_PG_URL (a PostgreSQL
journal), NO_COLOR / CLICOLOR_FORCE (colors; off when stdout is not a terminal).";

/// Read what migrations did from their journal: runs, status, reports, integrity, live
/// progress.
#[derive(Debug, Parser)]
#[command(name = "rollback", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    /// A file journal folder.
    #[arg(long, global = true, env = "ROLLBACK_JOURNAL", value_name = "DIR")]
    journal: Option<PathBuf>,
    /// A PostgreSQL journal (connection URL; its `_rollback` schema).
    #[arg(
        long,
        global = true,
        env = "ROLLBACK_PG_URL",
        value_name = "URL",
        hide_env_values = true,
        conflicts_with = "journal"
    )]
    pg: Option<String>,
    /// The schema of the PostgreSQL journal.
    #[arg(
        long,
        global = true,
        default_value = "_rollback",
        value_name = "SCHEMA"
    )]
    pg_schema: String,
    /// Machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Colors: auto (only on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every run in the journal: plan, run id, state, start, outcome, RTO.
    Runs {
        /// Only the runs of this plan.
        #[arg(long)]
        plan: Option<String>,
    },
    /// One run: where it is, what it did, what is left.
    Status {
        /// The run id.
        run: String,
    },
    /// A run's report, rebuilt from the journal alone.
    Report {
        /// The run id.
        run: String,
        /// Markdown (with an incident-report skeleton), JSON, or one self-contained HTML
        /// file with the timeline as a chart.
        #[arg(long, value_enum, default_value_t = Format::Markdown)]
        format: Format,
        /// Write it to this file instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Check every run's hash chain and the plans' leases; names the first bad record.
    Verify {
        /// Only these runs (default: all).
        runs: Vec<String>,
    },
    /// Follow a run as it happens, with a progress bar per step, until it ends.
    Watch {
        /// The run id.
        run: String,
        /// How often to read the journal, in milliseconds.
        #[arg(long, default_value_t = 250, value_name = "MS")]
        interval: u64,
        /// Stop waiting after this many seconds without an end (default: never).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// The runs of one plan, oldest first.
    History {
        /// The plan name.
        plan: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Markdown,
    Json,
    Html,
}

/// An error the command stops with: its message for stderr and its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<rollback_core::Error> for Failure {
    fn from(e: rollback_core::Error) -> Self {
        use rollback_core::Error as E;
        let code = match &e {
            E::UnknownRun { .. } => code::NOT_FOUND,
            E::Undescribed { .. } => code::UNDESCRIBED,
            E::Journal(j) if journal::is_damage(j) => code::DAMAGED,
            _ => code::JOURNAL,
        };
        Failure::new(code, e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::set_colors(cli.color);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollback: cannot start: {e}");
            return ExitCode::from(code::JOURNAL);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(c) => ExitCode::from(c),
        Err(f) => {
            eprintln!("rollback: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let journal = journal::open(&cli)?;
    let j = journal.as_ref();
    match cli.command {
        Command::Runs { plan } => runs::runs(j, plan.as_deref(), cli.json).await,
        Command::History { plan } => runs::history(j, &plan, cli.json).await,
        Command::Status { run } => runs::status(j, &run, cli.json).await,
        Command::Report {
            run,
            format,
            output,
        } => {
            let report = rollback_core::RunReport::load(j, &run).await?;
            let text = match format {
                Format::Markdown => report.to_markdown(),
                Format::Json => report.to_json(),
                Format::Html => report.to_html(),
            };
            match output {
                Some(path) => std::fs::write(&path, text).map_err(|e| {
                    Failure::new(
                        code::JOURNAL,
                        format!("cannot write {}: {e}", path.display()),
                    )
                })?,
                None => output::print(&text),
            }
            Ok(code::OK)
        }
        Command::Verify { runs } => verify::verify(j, &runs, cli.json).await,
        Command::Watch {
            run,
            interval,
            timeout,
        } => watch::watch(j, &run, interval, timeout, cli.json).await,
    }
}
