//! The crate's error type.

use crate::Digest;
use std::time::Duration;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, with variants a caller can act on.
///
/// Adapters keep their own private errors and convert them into [`Error::Backend`] (or a
/// more specific variant) with `From`. Whether an error is worth retrying is told by
/// [`Error::is_transient`]; whether the failed action may nevertheless have taken effect
/// (a timeout after the request was sent) by [`Error::maybe_applied`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A snapshot's content does not hash to the digest it carries: it was corrupted or
    /// tampered with, and restoring it would not give "the correct recovery point".
    #[error(
        "snapshot of {resource} does not match its digest (expected {expected}, found {actual})"
    )]
    DigestMismatch {
        /// The resource the snapshot claims to be of.
        resource: String,
        /// The digest the snapshot carries.
        expected: Digest,
        /// The digest of what was found.
        actual: Digest,
    },
    /// A snapshot was given to a checkpoint of another resource.
    #[error("snapshot belongs to {found}, not to {expected}")]
    WrongResource {
        /// The checkpoint's resource.
        expected: String,
        /// The resource named by the snapshot.
        found: String,
    },
    /// An irreversible change was refused (no checkpoint covers it and it was not approved),
    /// or an irreversible step was asked to revert.
    #[error("irreversible: step {step}: {reason}")]
    Irreversible {
        /// The step.
        step: String,
        /// Why.
        reason: String,
    },
    /// The resource is not in the state the operation expected (a concurrent writer, a
    /// precondition that no longer holds).
    #[error("conflict: {message}")]
    Conflict {
        /// What conflicts.
        message: String,
    },
    /// A transient failure (dropped connection, throttling, 5xx): retrying may succeed.
    /// Built with [`Error::transient`] or [`Error::transient_from`] (which keeps the
    /// backend's error — its SQLSTATE, HTTP status — as the [`source`](std::error::Error::source)).
    #[error("transient failure: {message}")]
    #[non_exhaustive]
    Transient {
        /// What failed.
        message: String,
        /// Whether the effect may have happened despite the error.
        maybe_applied: bool,
        /// The backend's own error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// An operation did not finish in time. Its effect may have happened.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        operation: String,
        /// The limit.
        after: Duration,
    },
    /// The run was cancelled (rollback follows; applied steps are never abandoned).
    #[error("cancelled")]
    Cancelled,
    /// [`Executor::rollback_committed`](crate::Executor::rollback_committed) was asked to
    /// roll back a run that did not commit: an unfinished run is finished by `resume`, a
    /// rolled-back one has nothing left to undo.
    #[error("run {run_id} is not committed (it is {outcome}): only a committed run is rolled back after its commit")]
    NotCommitted {
        /// The run.
        run_id: String,
        /// How it stands (`rolled_back`, `in_progress`, …).
        outcome: String,
    },
    /// A committed run cannot be rolled back: the baseline snapshots a rollback would
    /// restore were released when it ended (keep them with
    /// [`SnapshotRetention::KeepAll`](crate::SnapshotRetention::KeepAll) or `KeepMigrated`).
    #[error("run {run_id} released the baseline snapshots of {}: its commit can no longer be rolled back", checkpoints.join(", "))]
    SnapshotsReleased {
        /// The run.
        run_id: String,
        /// The checkpoints whose snapshots were released (or whose release was attempted).
        checkpoints: Vec<String>,
    },
    /// A plan failed validation.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// A journal is unreadable, torn beyond repair, or was tampered with.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// Another runner holds the lease on this plan.
    #[error("lease {key} is held by {holder} for another {remaining_ms} ms")]
    LeaseHeld {
        /// The lease key (the plan's name).
        key: String,
        /// Who holds it.
        holder: String,
        /// Time left before it expires and may be taken over.
        remaining_ms: u64,
    },
    /// This runner was fenced off: another runner took the lease over (a newer fencing
    /// epoch), so this one must do nothing more to any resource or journal. Returned by a
    /// journal refusing a stale append, by the executor when its lease is gone, and by
    /// adapters that fence their own writes with [`Context::fence`](crate::Context::fence).
    #[error("fenced: {scope} belongs to a newer runner (epoch {current}; this runner holds epoch {epoch}); this runner stops")]
    Fenced {
        /// What refused the stale writer: `run <id>`, `lease <key>`, a resource.
        scope: String,
        /// This runner's epoch.
        epoch: u64,
        /// The newer epoch that fenced it (0 when unknown, e.g. the lease is held by
        /// another holder).
        current: u64,
    },
    /// The journal lost records at the end of the run that may have held its outcome
    /// (`committed`, `rolled_back`): resuming on the surviving records alone could undo a
    /// committed migration. Nothing was done; choose with
    /// [`Executor::assume_lost_tail`](crate::Executor::assume_lost_tail).
    #[error("run {run_id}: the journal lost {lost} after seq {last_seq:?}, which may have been {could_be}; nothing was done. Resume with Executor::assume_lost_tail(TailAssumption::Committed) to record it committed (nothing is rolled back), TailAssumption::RolledBack to record it rolled back (nothing is restored again), or TailAssumption::NotCommitted to continue from the surviving records (an unfinished apply is rolled back)")]
    LostTail {
        /// The run.
        run_id: String,
        /// The last surviving record.
        last_seq: Option<u64>,
        /// What was lost (the journal's description).
        lost: String,
        /// The outcome the lost records may have held.
        could_be: String,
    },
    /// A step, checkpoint or verifier panicked; the panic was caught at the call and
    /// treated as a failure of that call (its effect may have happened).
    #[error("{operation} panicked: {message}")]
    Panicked {
        /// The call that panicked (`apply step-1`, `restore db`...).
        operation: String,
        /// The panic message.
        message: String,
    },
    /// `resume` was given a plan that is not the one the run started with.
    #[error("run {run_id} was started with plan digest {expected}, not {found}")]
    PlanMismatch {
        /// The run.
        run_id: String,
        /// The digest journaled when the run started.
        expected: Digest,
        /// The digest of the plan given now.
        found: Digest,
    },
    /// No run with this id is in the journal.
    #[error("no run {run_id} in the journal")]
    UnknownRun {
        /// The run id asked for.
        run_id: String,
    },
    /// The run's journal does not describe its plan (no `plan_described` record: it was
    /// written before journals described plans), so its report cannot be rebuilt from the
    /// records alone; rebuild it with the plan ([`RunReport::from_records`](crate::RunReport::from_records)).
    #[error("run {run_id} was journaled without a description of its plan (an older journal); its report needs the plan")]
    Undescribed {
        /// The run.
        run_id: String,
    },
    /// A verifier failed where failure stops the run (a precondition).
    #[error("verification failed: {verifier}: {summary}")]
    VerificationFailed {
        /// The verifier id.
        verifier: String,
        /// Its summary.
        summary: String,
    },
    /// Malformed input: a snapshot, receipt, plan file or identifier that cannot be used.
    #[error("invalid input: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
    /// The backend failed (not known to be transient).
    #[error("{backend}: {source}")]
    Backend {
        /// Which backend ("postgres", "s3", "unleash"...).
        backend: &'static str,
        /// The underlying error (never carries credentials).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// Whether the effect may have happened despite the error.
        maybe_applied: bool,
    },
    /// The simulated process crashed (simulation and fault injection only).
    #[error("simulated crash: {0}")]
    Crashed(String),
}

impl Error {
    /// Whether retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. } | Error::Timeout { .. })
    }

    /// Whether the failed operation may have taken effect anyway (it must then be treated
    /// as applied and reverted idempotently).
    pub fn maybe_applied(&self) -> bool {
        match self {
            Error::Transient { maybe_applied, .. } | Error::Backend { maybe_applied, .. } => {
                *maybe_applied
            }
            Error::Timeout { .. }
            | Error::Cancelled
            | Error::Crashed(_)
            | Error::Panicked { .. } => true,
            _ => false,
        }
    }

    /// A [`Error::Backend`] wrapping any error, whose effect **may have happened**: the
    /// safe default for a step's error (the executor then treats the step as applied and
    /// reverts it, idempotently). Use [`Error::backend_not_applied`] when it certainly
    /// did not.
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
            maybe_applied: true,
        }
    }

    /// A [`Error::Backend`] for a failure that certainly changed nothing (refused before
    /// any write, or rolled back with its transaction).
    pub fn backend_not_applied(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
            maybe_applied: false,
        }
    }

    /// An [`Error::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid {
            message: message.into(),
        }
    }

    /// An [`Error::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict {
            message: message.into(),
        }
    }

    /// A transient error whose effect may or may not have happened.
    pub fn transient(message: impl Into<String>, maybe_applied: bool) -> Self {
        Error::Transient {
            message: message.into(),
            maybe_applied,
            source: None,
        }
    }

    /// A transient error caused by `source` (kept for [`std::error::Error::source`], so a
    /// caller can still read the SQLSTATE or HTTP status behind it).
    ///
    /// ```
    /// use rollback_core::Error;
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
    /// let e = Error::transient_from("connection lost", io, false);
    /// assert!(e.is_transient());
    /// let source = std::error::Error::source(&e).unwrap();
    /// assert!(source.downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn transient_from(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
        maybe_applied: bool,
    ) -> Self {
        Error::Transient {
            message: message.into(),
            maybe_applied,
            source: Some(source.into()),
        }
    }

    /// The same failure, raised after some of the operation's writes may already have
    /// reached `backend`: it now says so ([`Error::maybe_applied`] is true), so the executor
    /// treats the step as applied and reverts it. Transient and backend errors keep their
    /// variant (a transient one is still retried); any other error is wrapped as an
    /// [`Error::Backend`] of `backend` with it as the source. The one way adapters mark it.
    ///
    /// ```
    /// use rollback_core::Error;
    /// let e = Error::transient("timeout", false).after_writes("s3");
    /// assert!(e.is_transient() && e.maybe_applied());
    /// let e = Error::conflict("precondition failed").after_writes("s3");
    /// assert!(e.maybe_applied());
    /// ```
    pub fn after_writes(self, backend: &'static str) -> Self {
        match self {
            Error::Transient {
                message, source, ..
            } => Error::Transient {
                message,
                maybe_applied: true,
                source,
            },
            Error::Backend {
                backend, source, ..
            } => Error::Backend {
                backend,
                source,
                maybe_applied: true,
            },
            e if e.maybe_applied() => e,
            other => Error::Backend {
                backend,
                source: Box::new(other),
                maybe_applied: true,
            },
        }
    }
}
