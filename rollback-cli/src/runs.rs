//! `rollback runs`, `rollback history PLAN` and `rollback status RUN`.

use crate::output::{self, maybe_duration, table, time};
use crate::{code, Failure};
use rollback_core::journal::{Journal, Record};
use rollback_core::report::{RunSummary, StepState};
use rollback_core::{Outcome, RunReport};
use serde::Serialize;

/// Where a run stands, for an operator: the outcome says how it ended; this says whether
/// anyone is still at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunState {
    /// Committed or rolled back: nothing left to do.
    Finished,
    /// Not finished, and its holder's lease on the plan is live.
    Running,
    /// Not finished and nobody holds the plan: `resume` it.
    Interrupted,
    /// Its journal does not verify (see `rollback verify`).
    Damaged,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunState::Finished => "finished",
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Damaged => "damaged",
        })
    }
}

/// One run as listed.
#[derive(Debug, Serialize)]
pub(crate) struct Listed {
    pub(crate) run_id: String,
    pub(crate) state: RunState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    #[serde(flatten)]
    pub(crate) summary: Option<RunSummary>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether `summary`'s run is being worked on: unfinished, and its last holder's lease on
/// the plan is live (by this machine's clock).
pub(crate) async fn state_of(journal: &dyn Journal, s: &RunSummary) -> Result<RunState, Failure> {
    if s.finished() {
        return Ok(RunState::Finished);
    }
    Ok(if held(journal, s).await? {
        RunState::Running
    } else {
        RunState::Interrupted
    })
}

/// Whether the run's last holder holds the plan's lease (by this machine's clock): it is
/// still at work on the run (a finished run may still be releasing its snapshots).
pub(crate) async fn held(journal: &dyn Journal, s: &RunSummary) -> Result<bool, Failure> {
    Ok(journal
        .lease(&s.plan)
        .await?
        .is_some_and(|l| l.holder == s.holder && l.expires_at_ms > now_ms()))
}

/// Every run, read and summarized; a run whose records do not verify is listed as
/// damaged with the error.
pub(crate) async fn list(journal: &dyn Journal) -> Result<Vec<Listed>, Failure> {
    let mut out = Vec::new();
    for run_id in journal.runs().await? {
        match journal.records(&run_id).await {
            Ok(records) => {
                let Some(summary) = RunSummary::from_records(&run_id, &records) else {
                    continue;
                };
                let state = state_of(journal, &summary).await?;
                out.push(Listed {
                    run_id,
                    state,
                    error: None,
                    summary: Some(summary),
                });
            }
            Err(rollback_core::Error::Journal(e)) if crate::journal::is_damage(&e) => {
                out.push(Listed {
                    run_id,
                    state: RunState::Damaged,
                    error: Some(e.to_string()),
                    summary: None,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    out.sort_by_key(|l| {
        (
            l.summary.as_ref().map_or(u64::MAX, |s| s.started_at_ms),
            l.run_id.clone(),
        )
    });
    Ok(out)
}

fn rto(s: &RunSummary) -> String {
    match (s.rto_ms, s.rto_target_ms) {
        (Some(got), Some(target)) => format!(
            "{} ({} {})",
            output::duration(got),
            if got <= target { "<=" } else { ">" },
            output::duration(target)
        ),
        (got, _) => maybe_duration(got),
    }
}

/// `rollback runs [--plan PLAN]`.
pub(crate) async fn runs(
    journal: &dyn Journal,
    plan: Option<&str>,
    json: bool,
) -> Result<u8, Failure> {
    let listed: Vec<Listed> = list(journal)
        .await?
        .into_iter()
        .filter(|l| plan.is_none_or(|p| l.summary.as_ref().is_some_and(|s| s.plan == p)))
        .collect();
    if json {
        output::print_json(&listed);
        return Ok(code::OK);
    }
    if listed.is_empty() {
        output::print("no runs");
        return Ok(code::OK);
    }
    let mut t = table(&["plan", "run", "state", "started", "outcome", "rto"]);
    for l in &listed {
        match &l.summary {
            Some(s) => t.add_row(vec![
                s.plan.clone(),
                l.run_id.clone(),
                l.state.to_string(),
                time(s.started_at_ms),
                output::outcome(s.outcome).to_string(),
                rto(s),
            ]),
            None => t.add_row(vec![
                "?".to_string(),
                l.run_id.clone(),
                console::style(l.state.to_string()).red().to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        };
    }
    output::print(&output::render(&t));
    Ok(code::OK)
}

/// `rollback history PLAN`: the plan's runs, oldest first, with the digest of the plan
/// each ran (a change of digest is a change of plan).
pub(crate) async fn history(journal: &dyn Journal, plan: &str, json: bool) -> Result<u8, Failure> {
    let runs: Vec<Listed> = list(journal)
        .await?
        .into_iter()
        .filter(|l| l.summary.as_ref().is_some_and(|s| s.plan == plan))
        .collect();
    if runs.is_empty() {
        return Err(Failure::new(
            code::NOT_FOUND,
            format!("no run of plan {plan} in the journal"),
        ));
    }
    if json {
        output::print_json(&runs);
        return Ok(code::OK);
    }
    let mut t = table(&[
        "run", "started", "digest", "state", "outcome", "applied", "rto", "resumes",
    ]);
    for l in &runs {
        let Some(s) = &l.summary else { continue };
        let steps = match s.steps_total {
            Some(n) => format!("{}/{n}", s.steps_applied),
            None => s.steps_applied.to_string(),
        };
        t.add_row(vec![
            l.run_id.clone(),
            time(s.started_at_ms),
            s.plan_digest.short(),
            l.state.to_string(),
            output::outcome(s.outcome).to_string(),
            steps,
            rto(s),
            s.resumes.to_string(),
        ]);
    }
    output::print(&output::render(&t));
    Ok(code::OK)
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
struct Status {
    state: RunState,
    summary: RunSummary,
    /// The report, when the journal describes the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<RunReport>,
}

/// The records of `run`, or exit 3 when there are none.
pub(crate) async fn records(journal: &dyn Journal, run: &str) -> Result<Vec<Record>, Failure> {
    let records = journal.records(run).await?;
    if records.is_empty() {
        return Err(Failure::new(
            code::NOT_FOUND,
            format!("no run {run} in the journal"),
        ));
    }
    Ok(records)
}

/// `rollback status RUN`.
pub(crate) async fn status(journal: &dyn Journal, run: &str, json: bool) -> Result<u8, Failure> {
    let records = records(journal, run).await?;
    let summary = RunSummary::from_records(run, &records).ok_or_else(|| {
        Failure::new(
            code::DAMAGED,
            format!("run {run}: its first record is not run_started"),
        )
    })?;
    let state = state_of(journal, &summary).await?;
    let report = match RunReport::rebuild(run, &records) {
        Ok(r) => Some(r),
        Err(rollback_core::Error::Undescribed { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if json {
        output::print_json(&Status {
            state,
            summary,
            report,
        });
        return Ok(code::OK);
    }
    output::print(&status_text(&summary, state, report.as_ref()));
    Ok(code::OK)
}

fn status_text(s: &RunSummary, state: RunState, report: Option<&RunReport>) -> String {
    let mut out = Vec::new();
    let mut line = |k: &str, v: String| out.push(format!("{k:<10} {v}"));
    line("run", s.run_id.clone());
    line(
        "plan",
        format!("{} (digest {})", s.plan, s.plan_digest.short()),
    );
    line("state", state.to_string());
    line("outcome", output::outcome(s.outcome).to_string());
    line(
        "started",
        format!("{} by {}", time(s.started_at_ms), s.started_by),
    );
    line(
        "last",
        format!(
            "{} ({}, record {} of epoch {})",
            time(s.last_at_ms),
            s.last_kind,
            s.records.saturating_sub(1),
            s.epoch
        ),
    );
    let steps = match s.steps_total {
        Some(n) => format!("{} of {n} applied", s.steps_applied),
        None => format!("{} applied", s.steps_applied),
    };
    line("steps", format!("{steps}, {} reverted", s.steps_reverted));
    if let Some(reason) = &s.rollback_reason {
        line("rollback", reason.clone());
    }
    line("rto", rto(s));
    if let Some(r) = report {
        if r.rpo_ms.is_some() {
            let target = r
                .objectives
                .rpo_ms
                .map(|t| format!(" (target {})", output::duration(t)))
                .unwrap_or_default();
            line("rpo", format!("{}{target}", maybe_duration(r.rpo_ms)));
        }
    }
    if s.resumes > 0 {
        line("resumes", s.resumes.to_string());
    }
    let Some(r) = report else {
        out.push(String::new());
        out.push(
            "the journal does not describe the plan (an older journal): steps, checkpoints and \
             the report need the plan's program"
                .into(),
        );
        return out.join("\n");
    };
    out.push(String::new());
    let mut t = table(&[
        "step",
        "component",
        "reversibility",
        "state",
        "apply",
        "revert",
    ]);
    for st in &r.steps {
        t.add_row(vec![
            st.id.clone(),
            st.component.clone(),
            st.reversibility.to_string(),
            step_state(st.state).to_string(),
            maybe_duration(st.apply_ms),
            maybe_duration(st.revert_ms),
        ]);
    }
    out.push(output::render(&t));
    if !r.checkpoints.is_empty() {
        out.push(String::new());
        let mut t = table(&["checkpoint", "component", "baseline", "restored", "parity"]);
        for c in &r.checkpoints {
            t.add_row(vec![
                c.resource.clone(),
                c.component.clone(),
                if c.fingerprint_only {
                    "fingerprint".to_string()
                } else if c.snapshot_id.is_some() {
                    "snapshot".to_string()
                } else {
                    "-".to_string()
                },
                c.restore_method.clone().unwrap_or_else(|| "-".into()),
                match c.parity {
                    Some(true) => console::style("proven").green().to_string(),
                    Some(false) => console::style("FAILED").red().to_string(),
                    None => "-".into(),
                },
            ]);
        }
        out.push(output::render(&t));
    }
    let failed: Vec<String> = r
        .verdicts
        .iter()
        .filter(|v| !v.verdict.passed())
        .map(|v| format!("  {} [{}]: {}", v.verifier, v.phase, v.verdict.summary))
        .collect();
    if !failed.is_empty() {
        out.push(String::new());
        out.push("failed checks:".into());
        out.extend(failed);
    }
    if !r.unproven.is_empty() {
        out.push(String::new());
        out.push("not proven:".into());
        out.extend(r.unproven.iter().map(|u| format!("  {u}")));
    }
    if r.outcome == Outcome::RollbackFailed && !r.remaining.is_empty() {
        out.push(String::new());
        out.push("left to undo (resume the run):".into());
        out.extend(r.remaining.iter().map(|u| format!("  {u}")));
    }
    out.join("\n")
}

fn step_state(s: StepState) -> &'static str {
    match s {
        StepState::NotApplied => "not applied",
        StepState::Applied => "applied",
        StepState::Kept => "kept",
        StepState::Reverted => "reverted",
        StepState::UndoneByRestore => "undone by restore",
        StepState::UndoneByCompensation => "undone by compensation",
        StepState::IrreversibleKept => "irreversible, kept",
        StepState::NotUndone => "NOT UNDONE",
    }
}
