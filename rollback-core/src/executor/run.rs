//! [`Run`]: one run in progress — its journal appends (deferred and flushed), lease,
//! trait calls with retries and timeouts, events, and `drive`, which takes it to an end.

use super::{Executor, ResumePolicy, RunPolicy};
use crate::events::{Event, RunEvent};
use crate::journal::{Entry, Journal, TailAssumption};
use crate::lease::LeaseKeeper;
use crate::plan::StepOptions;
use crate::report::RunReport;
use crate::state::State;
use crate::{Context, Error, Plan, Result};
use futures::FutureExt;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One run in progress.
pub(super) struct Run<'a> {
    pub(super) ex: &'a Executor,
    pub(super) plan: &'a Plan,
    pub(super) run_id: String,
    pub(super) cancel: CancellationToken,
    pub(super) resumed: bool,
    pub(super) policy: RunPolicy,
    pub(super) state: State,
    /// The lease this runner holds: its epoch goes with every append, and it is checked
    /// before every durable action.
    pub(super) lease: Arc<LeaseKeeper>,
    /// Resume cursors: from the journal, plus those saved by steps in this process.
    pub(super) cursors: Arc<std::sync::Mutex<BTreeMap<String, serde_json::Value>>>,
    /// Records waiting to be journaled in one write with the next record (see
    /// [`Run::defer`]).
    pub(super) pending: Vec<Entry>,
    /// Where the run's contexts send their progress for the live publisher, if one runs.
    pub(super) live: Option<crate::live::Sender>,
}

pub(super) enum Flow {
    Continue,
    RollBack {
        reason: String,
        failed_step: Option<String>,
    },
}

impl<'a> Run<'a> {
    pub(super) fn new(
        ex: &'a Executor,
        plan: &'a Plan,
        run_id: &str,
        cancel: CancellationToken,
        resumed: bool,
        lease: Arc<LeaseKeeper>,
    ) -> Self {
        Run {
            ex,
            plan,
            run_id: run_id.into(),
            cancel,
            resumed,
            policy: ex.policy,
            state: State::default(),
            lease,
            cursors: Arc::default(),
            pending: Vec::new(),
            live: None,
        }
    }

    /// Journal `entry` under this runner's epoch. A refusal ([`Error::Fenced`]) stops the
    /// runner: the caller returns it at once.
    ///
    /// A deferred outcome ([`Run::defer`]) goes first, in the same durable write.
    pub(super) async fn append(&mut self, entry: Entry) -> Result<()> {
        tracing::debug!(kind = entry.kind(), "journal");
        let epoch = self.lease.fence().epoch;
        let res = if self.pending.is_empty() {
            self.ex
                .journal
                .append(&self.run_id, &entry, epoch)
                .await
                .map(|r| vec![r])
        } else {
            let mut batch = std::mem::take(&mut self.pending);
            batch.push(entry);
            self.ex
                .journal
                .append_all(&self.run_id, &batch, epoch)
                .await
        };
        let recs = res.inspect_err(|e| {
            if matches!(e, Error::Fenced { .. }) {
                self.lease.mark_lost();
            }
        })?;
        for rec in &recs {
            self.state.fold(rec);
        }
        Ok(())
    }

    /// Journal `entry` — a step's outcome, a baseline fingerprint, the first two of a
    /// run's three opening records — together with the next record instead of on its own:
    /// one fsync per step instead of two. Safe because nothing acts on a resource between
    /// a deferred record and the next one (every action is preceded by its own intent,
    /// which carries the deferred records with it), and a crash in between is a crash
    /// during the apply: the step has an intent and no outcome, and is treated as maybe
    /// applied (step contract, clause 5); a lost fingerprint is taken again. A capture's
    /// `captured` is not deferred: it names a snapshot that a runner fenced before its
    /// next write would otherwise leave behind unrecorded. Nor are the opening records
    /// held past their own write: until they are written, no other runner can find the
    /// run and fence it. Until then the state does not show a deferred record:
    /// [`Run::flush`] before reading the state for a decision.
    pub(super) fn defer(&mut self, entry: Entry) {
        self.pending.push(entry);
    }

    /// Journal the deferred records now.
    pub(super) async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let epoch = self.lease.fence().epoch;
        let batch = std::mem::take(&mut self.pending);
        let recs = self
            .ex
            .journal
            .append_all(&self.run_id, &batch, epoch)
            .await
            .inspect_err(|e| {
                if matches!(e, Error::Fenced { .. }) {
                    self.lease.mark_lost();
                }
            })?;
        for rec in &recs {
            self.state.fold(rec);
        }
        Ok(())
    }

    /// Immediately before a durable action: the lease must still be this runner's.
    pub(super) async fn ensure_lease(&self) -> Result<()> {
        self.lease.ensure().await
    }

    /// The outcome of a trait call, with a panic turned into [`Error::Panicked`] and a
    /// fencing refusal pulled out as the outer error (the runner stops; nothing more is
    /// done or journaled).
    pub(super) async fn call<T>(
        &self,
        operation: impl FnOnce() -> String,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<Result<T>> {
        let res = match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r,
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                let operation = operation();
                tracing::error!(%operation, %message, "caught a panic; treating it as a failure of the call");
                Err(Error::Panicked { operation, message })
            }
        };
        match res {
            Err(e @ Error::Fenced { .. }) => {
                self.lease.mark_lost();
                Err(e)
            }
            r => Ok(r),
        }
    }

    /// After an explicit assumption about a lost outcome: record that outcome again, or
    /// carry on from the surviving records.
    pub(super) async fn settle_lost_outcome(&mut self, assumed: TailAssumption) -> Result<()> {
        match assumed {
            TailAssumption::Committed if !self.state.finished() => {
                self.append(Entry::Committed).await
            }
            TailAssumption::RolledBack if !self.state.finished() => {
                if self.state.rollback.is_none() {
                    let plan = self.plan;
                    self.append(Entry::RollbackStarted {
                        reason: "the journal lost the run's last records; assumed rolled back"
                            .into(),
                        steps: plan.steps().iter().map(|s| s.id().to_string()).collect(),
                        checkpoints: plan
                            .checkpoints()
                            .iter()
                            .map(|c| c.resource().to_string())
                            .collect(),
                    })
                    .await?;
                }
                let partial = self.state.applied.keys().any(|s| {
                    self.state
                        .rollback
                        .as_ref()
                        .is_some_and(|(_, scope, _)| !scope.contains(s))
                });
                self.append(Entry::RolledBack { partial }).await
            }
            _ => Ok(()),
        }
    }

    pub(super) fn emit(&self, e: RunEvent) {
        let _ = self
            .ex
            .events
            .send(Event::new(self.run_id.clone(), e).with_tenant(self.ex.tenant.clone()));
    }

    pub(super) fn ctx(&self) -> Context {
        Context::for_run(
            &self.run_id,
            self.ex.events.clone(),
            self.cancel.clone(),
            self.ex.journal.clone(),
            self.state.baseline.clone(),
            self.cursors.clone(),
            self.lease.clone(),
        )
        .with_tenant(self.ex.tenant.clone())
        .with_live(self.live.clone())
    }

    pub(super) async fn drive(mut self) -> Result<RunReport> {
        *self.cursors.lock().unwrap_or_else(|e| e.into_inner()) = self.state.cursors.clone();
        self.emit(RunEvent::RunStarted {
            run_id: self.run_id.clone(),
            plan: self.plan.name().into(),
            resumed: self.resumed,
        });
        if self.state.rollback.is_none() && !self.state.finished() {
            let flow = if self.resumed && self.policy.on_resume == ResumePolicy::RollBack {
                Flow::RollBack {
                    reason: "resumed after an interruption; policy rolls back".into(),
                    failed_step: None,
                }
            } else {
                self.forward().await?
            };
            match flow {
                Flow::Continue => {
                    if self.policy.rehearsal {
                        self.begin_rollback(
                            "rehearsal: rolling back after a verified apply".into(),
                            None,
                        )
                        .await?;
                    } else {
                        self.append(Entry::Committed).await?;
                    }
                }
                Flow::RollBack {
                    reason,
                    failed_step,
                } => {
                    self.begin_rollback(reason, failed_step).await?;
                }
            }
        }
        if self.state.rollback.is_some() && !self.state.rolled_back {
            self.rollback().await?;
        }
        if self.state.discard_pending(self.policy.retention) {
            self.discard_snapshots().await?;
        }
        let records = self.ex.journal.records(&self.run_id).await?;
        Ok(RunReport::from_records(self.plan, &self.run_id, &records))
    }
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

pub(super) fn backoff(opts: StepOptions, attempt: u32) -> Duration {
    opts.backoff.saturating_mul(1u32 << (attempt - 1).min(10))
}

pub(super) async fn with_timeout<T>(
    opts: StepOptions,
    what: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match opts.timeout {
        None => fut.await,
        Some(after) => match tokio::time::timeout(after, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation: what.to_string(),
                after,
            }),
        },
    }
}
