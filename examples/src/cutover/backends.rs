//! [`Backends`]: the four backends a cutover runs on, and running the plan over them.

use super::{cutover_plan, Names, Options, ReadPathProbe, StatusPage};
use rollback_core::events::{Notice, RunEvent};
use rollback_core::journal::Journal;
use rollback_core::report::StepState;
use rollback_core::{
    ConsoleProgress, Executor, Outcome, Plan, Result, RunReport, SnapshotRetention,
};
use rollback_flags::FlagProvider;
use rollback_postgres::Database;
use rollback_s3::ObjectBackend;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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

impl Backends {
    /// The read path an application would take, as a health probe (see [`ReadPathProbe`]).
    pub fn probe(&self, id: &str, opts: &Options) -> ReadPathProbe {
        ReadPathProbe::new(id, self, opts.max_error_rate)
    }

    /// The cutover plan for `opts` ([`cutover_plan`], in `examples/saas_cutover/plan.rs`).
    ///
    /// # Errors
    /// [`rollback_core::PlanError`] (as [`rollback_core::Error::Plan`]) when the plan does not validate.
    pub fn plan(&self, opts: &Options) -> Result<Plan> {
        cutover_plan(self, opts)
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
