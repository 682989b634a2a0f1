//! `rollback watch RUN`: follow a run in the journal as other processes write it — a bar
//! for the steps, a spinner per long action (capture, apply, revert, restore) that shows
//! the step's journaled cursor and ends with its duration, and a bar per source of the
//! progress the executor publishes beside the journal (`Journal::progress`: a backfill's
//! rows, a snapshot's bytes). Off a terminal: one line per record (`--json`: one JSON
//! object per record and per progress update).

use crate::output;
use crate::{code, Failure};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rollback_core::journal::{Entry, Journal, LiveProgress, Record};
use rollback_core::report::RunSummary;
use rollback_core::Outcome;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How a record is shown when bars are off: one line per record.
#[derive(serde::Serialize)]
struct Line<'a> {
    run_id: &'a str,
    seq: u64,
    at_ms: u64,
    kind: &'a str,
    detail: String,
}

struct Bars {
    mp: MultiProgress,
    steps: ProgressBar,
    actions: HashMap<String, ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let steps = mp.add(ProgressBar::new(0));
        steps.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} steps  {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        steps.set_prefix("apply");
        Bars {
            mp,
            steps,
            actions: HashMap::new(),
        }
    }

    fn start(&mut self, key: String, label: String) {
        let bar = self.mp.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} {spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix("");
        bar.set_message(label);
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Some(old) = self.actions.insert(key, bar) {
            old.finish_and_clear();
        }
    }

    fn message(&self, key: &str, msg: String) {
        if let Some(b) = self.actions.get(key) {
            b.set_message(msg);
        }
    }

    /// An action ended: its spinner goes, its line stays above the bars.
    fn finish(&mut self, key: &str, msg: String) {
        if let Some(b) = self.actions.remove(key) {
            b.finish_and_clear();
            let _ = self.mp.println(format!("  {msg}"));
        }
    }

    fn record(&mut self, r: &Record, summary: &RunSummary) {
        let line = r.entry.to_string();
        match &r.entry {
            Entry::PlanDescribed(d) => self.steps.set_length(d.steps.len() as u64),
            Entry::CaptureIntent { checkpoint } => self.start(
                format!("cp:{checkpoint}"),
                format!("capturing {checkpoint}"),
            ),
            Entry::Captured { checkpoint, .. } | Entry::Fingerprinted { checkpoint, .. } => {
                self.finish(&format!("cp:{checkpoint}"), line.clone())
            }
            Entry::ApplyIntent { step, .. } => self.start(format!("step:{step}"), line.clone()),
            Entry::RevertIntent { step, .. } => self.start(format!("step:{step}"), line.clone()),
            Entry::Progress { step, cursor } => {
                self.message(&format!("step:{step}"), format!("{step}: at {cursor}"))
            }
            Entry::Applied { step, .. }
            | Entry::ApplyFailed { step, .. }
            | Entry::Reverted { step, .. }
            | Entry::RevertFailed { step, .. } => {
                self.finish(&format!("step:{step}"), line.clone())
            }
            Entry::RestoreIntent { checkpoint } => {
                self.start(format!("cp:{checkpoint}"), line.clone())
            }
            Entry::Restored { checkpoint, .. } | Entry::RestoreFailed { checkpoint, .. } => {
                self.finish(&format!("cp:{checkpoint}"), line.clone())
            }
            Entry::RollbackStarted { steps, .. } => {
                self.steps.set_prefix("rollback");
                self.steps.set_length(steps.len() as u64);
                let _ = self.mp.println(format!("  {line}"));
            }
            Entry::Verdict { .. } | Entry::Parity { .. } | Entry::RollbackFailed { .. } => {
                let _ = self.mp.println(format!("  {line}"));
            }
            _ => {}
        }
        let done = if summary.rollback_reason.is_some() {
            summary.steps_reverted
        } else {
            summary.steps_applied
        };
        self.steps.set_position(done as u64);
        self.steps.set_message(line);
    }

    /// A bar per source of published progress (a backfill's rows, a snapshot's bytes).
    fn live(&mut self, p: &LiveProgress) {
        let key = format!("live:{}", p.source);
        let bar = match self.actions.get(&key) {
            Some(b) => b.clone(),
            None => {
                let b = self.mp.add(ProgressBar::new(p.total.unwrap_or(0)));
                let template = if p.total.is_some() {
                    "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})"
                } else {
                    "{prefix:>10} {spinner} {pos} {msg} ({elapsed})"
                };
                b.set_style(
                    ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b.set_prefix(p.unit.clone());
                b.set_message(p.source.clone());
                self.actions.insert(key.clone(), b.clone());
                b
            }
        };
        if let Some(t) = p.total {
            bar.set_length(t);
        }
        bar.set_position(p.done);
        if p.total.is_some_and(|t| p.done >= t) {
            self.finish(&key, format!("{}: {} {} done", p.source, p.done, p.unit));
        }
    }

    fn end(self, msg: String) {
        for b in self.actions.values() {
            b.finish_and_clear();
        }
        self.steps.finish_with_message(msg);
    }
}

/// `rollback watch RUN`: returns when the run ends (committed, rolled back, rollback
/// failed) with its exit code, or after `timeout` seconds.
pub(crate) async fn watch(
    journal: &dyn Journal,
    run: &str,
    interval_ms: u64,
    timeout: Option<u64>,
    json: bool,
) -> Result<u8, Failure> {
    let started = Instant::now();
    let deadline = timeout.map(|s| started + Duration::from_secs(s));
    let interval = Duration::from_millis(interval_ms.max(10));
    let mut bars = (!json && std::io::stderr().is_terminal()).then(Bars::new);
    let mut seen = 0usize;
    let mut told_interrupted = false;
    // The last published progress shown, per source.
    let mut shown: HashMap<String, (u64, Option<u64>)> = HashMap::new();
    loop {
        let records = journal.records(run).await?;
        let new = records.get(seen..).unwrap_or_default();
        // Progress beside the journal is best effort: a failure to read it is not the run's.
        for p in journal.progress(run).await.unwrap_or_default() {
            if shown.insert(p.source.clone(), (p.done, p.total)) == Some((p.done, p.total)) {
                continue;
            }
            match bars.as_mut() {
                Some(b) => b.live(&p),
                None if json => output::print(
                    &serde_json::json!({
                        "run_id": run,
                        "kind": "progress",
                        "source": p.source,
                        "done": p.done,
                        "total": p.total,
                        "unit": p.unit,
                        "at_ms": p.at_ms,
                    })
                    .to_string(),
                ),
                None => {}
            }
        }
        if !records.is_empty() {
            let summary = RunSummary::from_records(run, &records).ok_or_else(|| {
                Failure::new(
                    code::DAMAGED,
                    format!("run {run}: its first record is not run_started"),
                )
            })?;
            for r in new {
                match bars.as_mut() {
                    Some(b) => {
                        // Each record's own view of the run, so the bars move record by
                        // record (a long backlog jumps to the end instead).
                        let upto = (new.len() <= 200)
                            .then(|| RunSummary::from_records(run, &records[..=r.seq as usize]))
                            .flatten()
                            .unwrap_or_else(|| summary.clone());
                        b.record(r, &upto)
                    }
                    None if json => output::print(
                        &serde_json::to_string(&Line {
                            run_id: run,
                            seq: r.seq,
                            at_ms: r.at_ms,
                            kind: r.entry.kind(),
                            detail: r.entry.to_string(),
                        })
                        .unwrap_or_default(),
                    ),
                    None => output::print(&format!(
                        "{:>9}  {}",
                        format!(
                            "+{}",
                            output::duration(r.at_ms.saturating_sub(summary.started_at_ms))
                        ),
                        r.entry
                    )),
                }
            }
            seen = records.len();
            let ended = match summary.outcome {
                Outcome::Committed => Some(code::OK),
                Outcome::RolledBack | Outcome::PartiallyRolledBack => Some(code::ROLLED_BACK),
                Outcome::RollbackFailed => Some(code::ROLLBACK_FAILED),
                Outcome::InProgress => None,
            };
            // A run that reached `committed` or `rolled_back` may still release its
            // snapshots: wait until nobody works on it any more.
            let holder_done = ended.is_some()
                && (summary.outcome == Outcome::RollbackFailed
                    || !crate::runs::held(journal, &summary).await?);
            if let (Some(c), true) = (ended, holder_done) {
                let msg = format!(
                    "run {run} ended {} after {} records",
                    output::outcome(summary.outcome),
                    records.len()
                );
                match bars.take() {
                    Some(b) => b.end(msg),
                    None if json => {}
                    None => output::print(&msg),
                }
                return Ok(c);
            }
            if !told_interrupted
                && crate::runs::state_of(journal, &summary).await?
                    == crate::runs::RunState::Interrupted
            {
                told_interrupted = true;
                let note = format!(
                    "run {run} is interrupted (nobody holds plan {}): waiting for a resume",
                    summary.plan
                );
                match &bars {
                    Some(b) => {
                        let _ = b.mp.println(note);
                    }
                    None if json => {}
                    None => eprintln!("{note}"),
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            if let Some(b) = bars.take() {
                b.end("stopped waiting".into());
            }
            return Err(Failure::new(
                code::TIMED_OUT,
                if seen == 0 {
                    format!("no run {run} appeared in the journal in time")
                } else {
                    format!("run {run} did not end in time")
                },
            ));
        }
        tokio::time::sleep(interval).await;
    }
}
