//! The typed event stream of a run, and the notifier hook.

use crate::{Reversibility, Status};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

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
