//! The typed event stream of a run, and the notifier hook.

use crate::{Reversibility, Status};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Apply or revert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Applying a step.
    Apply,
    /// Reverting a step.
    Revert,
}

/// Progress of a run, as it happens. Subscribe with
/// [`Executor::subscribe`](crate::Executor::subscribe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunEvent {
    /// A run started (or was resumed).
    RunStarted {
        /// Run id.
        run_id: String,
        /// Plan name.
        plan: String,
        /// Whether this is a resume of a crashed run.
        resumed: bool,
    },
    /// A baseline checkpoint was captured.
    CheckpointCaptured {
        /// Resource.
        resource: String,
        /// Content digest (short form).
        digest: String,
        /// Time taken.
        millis: u64,
    },
    /// A step action started.
    StepStarted {
        /// Step id.
        step: String,
        /// Apply or revert.
        action: Action,
        /// Attempt number, from 1.
        attempt: u32,
        /// The step's reversibility.
        reversibility: Reversibility,
    },
    /// A step action finished.
    StepFinished {
        /// Step id.
        step: String,
        /// Apply or revert.
        action: Action,
        /// Whether it succeeded.
        ok: bool,
        /// Time taken.
        millis: u64,
        /// The error, when it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Progress of long work (a backfill, hashing, copying objects).
    Progress {
        /// What is progressing (a step id, a checkpoint resource, a verifier).
        source: String,
        /// Units done.
        done: u64,
        /// Units in all, where known.
        total: Option<u64>,
        /// The unit ("rows", "objects", "bytes").
        unit: String,
    },
    /// A verifier returned.
    Verdict {
        /// Verifier id.
        verifier: String,
        /// When it ran.
        phase: String,
        /// Its status.
        status: Status,
        /// Its summary.
        summary: String,
    },
    /// A trigger was polled during the soak window.
    SoakPoll {
        /// Trigger (verifier) id.
        trigger: String,
        /// Failures counted in the window.
        failures_in_window: usize,
        /// Whether the threshold is breached.
        breached: bool,
    },
    /// Rollback started.
    RollbackStarted {
        /// Why.
        reason: String,
        /// Steps in scope.
        steps: Vec<String>,
    },
    /// A checkpoint was restored.
    CheckpointRestored {
        /// Resource.
        resource: String,
        /// How.
        method: String,
        /// Time taken.
        millis: u64,
    },
    /// Parity with the baseline was checked.
    Parity {
        /// Resource.
        resource: String,
        /// Whether the fingerprint equals the baseline.
        ok: bool,
    },
    /// After the run ended, a baseline snapshot's storage was released (or could not be).
    SnapshotDiscarded {
        /// Resource.
        resource: String,
        /// Whether the discard succeeded.
        ok: bool,
    },
    /// The run reached its end.
    RunFinished {
        /// Outcome, e.g. `committed`, `rolled_back`.
        outcome: String,
    },
}

/// A [`RunEvent`] of one run: what [`Executor::subscribe`](crate::Executor::subscribe)
/// delivers. Every event names its run, so one subscriber can follow several runs (a
/// fleet, a resumed run beside a new one). `Display` is one line a person reads, prefixed
/// with the run id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The run the event belongs to.
    pub run_id: String,
    /// The tenant the run belongs to, when its executor names one
    /// ([`Executor::tenant`](crate::Executor::tenant)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When it happened, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: RunEvent,
}

impl Event {
    /// An event of `run_id`, now.
    pub fn new(run_id: impl Into<String>, event: RunEvent) -> Self {
        Event {
            run_id: run_id.into(),
            tenant: None,
            at_ms: crate::now_ms(),
            event,
        }
    }

    /// The same event, naming `tenant`.
    pub fn with_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }
}

impl std::ops::Deref for Event {
    type Target = RunEvent;
    fn deref(&self) -> &RunEvent {
        &self.event
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tenant {
            Some(t) => write!(f, "[{t} {}] {}", self.run_id, self.event),
            None => write!(f, "[{}] {}", self.run_id, self.event),
        }
    }
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Apply => "apply",
        Action::Revert => "revert",
    }
}

/// One line a person reads (no debug formatting).
impl fmt::Display for RunEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunEvent::RunStarted {
                run_id,
                plan,
                resumed,
            } => write!(
                f,
                "run {run_id} of plan {plan} {}",
                if *resumed { "resumed" } else { "started" }
            ),
            RunEvent::CheckpointCaptured {
                resource,
                digest,
                millis,
            } => write!(f, "captured {resource} (digest {digest}) in {millis} ms"),
            RunEvent::StepStarted {
                step,
                action,
                attempt,
                ..
            } => {
                write!(f, "{} {step}", verb(*action))?;
                if *attempt > 1 {
                    write!(f, " (attempt {attempt})")?;
                }
                Ok(())
            }
            RunEvent::StepFinished {
                step,
                action,
                ok,
                millis,
                error,
            } => {
                let what = verb(*action);
                match (ok, error) {
                    (true, _) => write!(f, "{what} {step}: ok in {millis} ms"),
                    (false, Some(e)) => write!(f, "{what} {step}: FAILED after {millis} ms: {e}"),
                    (false, None) => write!(f, "{what} {step}: FAILED after {millis} ms"),
                }
            }
            RunEvent::Progress {
                source,
                done,
                total,
                unit,
            } => match total {
                Some(t) if *t > 0 => write!(
                    f,
                    "{source}: {done}/{t} {unit} ({:.0}%)",
                    100.0 * *done as f64 / *t as f64
                ),
                _ => write!(f, "{source}: {done} {unit}"),
            },
            RunEvent::Verdict {
                verifier,
                phase,
                status,
                summary,
            } => {
                let s = match status {
                    Status::Pass => "pass",
                    Status::Fail => "FAIL",
                    Status::Inconclusive => "inconclusive",
                };
                write!(f, "verifier {verifier} ({phase}): {s}: {summary}")
            }
            RunEvent::SoakPoll {
                trigger,
                failures_in_window,
                breached,
            } => write!(
                f,
                "soak: trigger {trigger}, {failures_in_window} failing poll(s) in the window{}",
                if *breached { ": BREACHED" } else { "" }
            ),
            RunEvent::RollbackStarted { reason, steps } => write!(
                f,
                "ROLLBACK started: {reason} (undoing {})",
                if steps.is_empty() {
                    "no step".to_string()
                } else {
                    steps.join(", ")
                }
            ),
            RunEvent::CheckpointRestored {
                resource,
                method,
                millis,
            } => write!(f, "restored {resource} by {method} in {millis} ms"),
            RunEvent::Parity { resource, ok } => write!(
                f,
                "parity of {resource} with its baseline: {}",
                if *ok { "proven" } else { "NOT proven" }
            ),
            RunEvent::SnapshotDiscarded { resource, ok } => write!(
                f,
                "snapshot of {resource} {}",
                if *ok {
                    "released"
                } else {
                    "could not be released (kept)"
                }
            ),
            RunEvent::RunFinished { outcome } => write!(f, "run finished: {outcome}"),
        }
    }
}

/// What the notifier is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// Rollback has started: customers may see degraded service.
    RollbackStarted,
    /// Rollback finished and parity with the baseline is proven.
    RollbackFinished,
    /// Rollback could not finish: operators must act.
    RollbackFailed,
}

/// A status message for a status page, a chat channel or account managers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// Which moment.
    pub kind: NoticeKind,
    /// Run id.
    pub run_id: String,
    /// Plan name.
    pub plan: String,
    /// Components affected.
    pub components: Vec<String>,
    /// The rendered message, ready to publish.
    pub message: String,
    /// The plan's owners (role → who), for routing the notice internally (paging the
    /// rollback lead, telling account managers); not part of the public `message`.
    #[serde(default)]
    pub owners: std::collections::BTreeMap<String, String>,
    /// Resources whose restore discards writes others (the application) made since
    /// capture: at rollback start, those the rollback may restore; at its end, those it
    /// restored. Empty: the message may say no customer data is deleted.
    #[serde(default)]
    pub may_discard: Vec<String>,
    /// After the rollback: writes by others that its restores discarded, where counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_discarded: Option<u64>,
}

/// A hook told when rollback starts and ends (status page, chat, paging).
///
/// A notifier's failure never stops a rollback: errors are logged and journaled around.
///
/// ```
/// use rollback_core::{Notifier, Notice};
/// struct Print;
/// #[async_trait::async_trait]
/// impl Notifier for Print {
///     async fn notify(&self, notice: &Notice) -> Result<(), String> {
///         println!("{}", notice.message);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Publish `notice`.
    ///
    /// # Errors
    /// A message for the log; the run goes on.
    async fn notify(&self, notice: &Notice) -> Result<(), String>;
}
