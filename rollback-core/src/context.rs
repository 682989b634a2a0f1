//! The [`Context`] handed to every checkpoint, step and verifier call.

use crate::events::{Event, RunEvent};
use crate::journal::{Entry, Journal};
use crate::lease::{Fence, LeaseKeeper};
use crate::{Result, Snapshot};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What an adapter may know and do during a call: the run and step it belongs to,
/// progress reporting, a journaled resume cursor, cancellation, and the baseline.
#[derive(Clone)]
pub struct Context {
    run_id: String,
    step: Option<String>,
    events: Option<broadcast::Sender<Event>>,
    cancel: CancellationToken,
    cursor: Option<serde_json::Value>,
    journal: Option<Arc<dyn Journal>>,
    baseline: Arc<BTreeMap<String, Snapshot>>,
    /// Cursors saved in this process, shared with the run (so a retry sees them).
    saved: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
    /// The runner's lease (absent outside a run).
    lease: Option<Arc<LeaseKeeper>>,
    /// The runner's fencing token: its lease's, or one given with [`Context::with_fence`].
    fence: Option<Fence>,
    /// The run's tenant, when its executor names one.
    tenant: Option<String>,
    /// Where progress events also go, for the run's live publisher (`live.rs`): only
    /// those, so that the publisher is not woken by every other event of the run.
    live: Option<crate::live::Sender>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("run_id", &self.run_id)
            .field("step", &self.step)
            .field("cursor", &self.cursor)
            .field("fence", &self.fence())
            .finish_non_exhaustive()
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::detached()
    }
}

impl Context {
    /// A context outside any run (tests, tools, the conformance suite): no journal, no
    /// events, never cancelled.
    pub fn detached() -> Self {
        Context {
            run_id: "detached".into(),
            step: None,
            events: None,
            cancel: CancellationToken::new(),
            cursor: None,
            journal: None,
            baseline: Arc::new(BTreeMap::new()),
            saved: Arc::default(),
            lease: None,
            fence: None,
            tenant: None,
            live: None,
        }
    }

    /// A detached context with its own run id, so that steps which mark their applies per
    /// run (for idempotency) see separate runs.
    pub fn standalone(run_id: &str) -> Self {
        Context {
            run_id: run_id.to_string(),
            ..Self::detached()
        }
    }

    pub(crate) fn for_run(
        run_id: &str,
        events: broadcast::Sender<Event>,
        cancel: CancellationToken,
        journal: Arc<dyn Journal>,
        baseline: Arc<BTreeMap<String, Snapshot>>,
        saved: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
        lease: Arc<LeaseKeeper>,
    ) -> Self {
        Context {
            run_id: run_id.to_string(),
            step: None,
            events: Some(events),
            cancel,
            cursor: None,
            journal: Some(journal),
            baseline,
            saved,
            fence: Some(lease.fence().clone()),
            lease: Some(lease),
            tenant: None,
            live: None,
        }
    }

    /// The same context, naming the run's tenant.
    pub(crate) fn with_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }

    /// The same context, sending its progress events to the run's live publisher too.
    pub(crate) fn with_live(mut self, live: Option<crate::live::Sender>) -> Self {
        self.live = live;
        self
    }

    /// The tenant the run belongs to, when its executor names one
    /// ([`Executor::tenant`](crate::Executor::tenant)).
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    pub(crate) fn with_step(&self, step: &str) -> Self {
        let mut c = self.clone();
        c.step = Some(step.to_string());
        c.cursor = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(step)
            .cloned();
        c
    }

    /// The run id (`"detached"` outside a run).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Whether this call is made by the executor for a run (`false` for a detached or
    /// standalone context: a tool, a test). A selective checkpoint undoes only the run's
    /// own writes in a run, and everything outside one.
    ///
    /// ```
    /// assert!(!rollback_core::Context::standalone("r").in_run());
    /// ```
    pub fn in_run(&self) -> bool {
        self.lease.is_some()
    }

    /// The step being applied or reverted, if any.
    pub fn step_id(&self) -> Option<&str> {
        self.step.as_deref()
    }

    /// The last cursor this step saved with [`Context::save_cursor`] before the process
    /// stopped: where a resumable step (a batched backfill) picks up.
    pub fn cursor(&self) -> Option<&serde_json::Value> {
        self.cursor.as_ref()
    }

    /// Journal a resume cursor for the current step (durable when this returns).
    ///
    /// # Errors
    /// Journal errors, [`Error::Fenced`](crate::Error::Fenced) when another runner took
    /// the run over; outside a run this does nothing.
    pub async fn save_cursor(&self, cursor: serde_json::Value) -> Result<()> {
        if let (Some(j), Some(step)) = (&self.journal, &self.step) {
            let epoch = self.fence().map_or(0, |f| f.epoch);
            j.append(
                &self.run_id,
                &Entry::Progress {
                    step: step.clone(),
                    cursor,
                },
                epoch,
            )
            .await?;
        }
        Ok(())
    }

    /// The fencing token of the runner this call belongs to (`None` outside a run).
    ///
    /// An adapter that can check it atomically with its own write should: keep the
    /// highest epoch seen per [`Fence::key`] beside the resource, and in the same
    /// transaction (or under the same lock) as the write, refuse an epoch lower than it
    /// with [`Fence::stale`]. A runner paused while another took its run over then cannot
    /// change the resource after the takeover, whatever its timing.
    ///
    /// ```
    /// use rollback_core::Context;
    /// assert!(Context::detached().fence().is_none());
    /// ```
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// How long this runner's lease lasts without renewal (`None` outside a run): a
    /// runner silent for longer than this has lost its lease. An adapter may let its
    /// backend end a write transaction that stays idle that long (a paused runner's),
    /// so that its locks do not hold the runner that took over.
    pub fn lease_ttl(&self) -> Option<std::time::Duration> {
        self.lease.as_deref().map(LeaseKeeper::ttl)
    }

    /// A copy of this context carrying `fence`, for running adapters outside the
    /// executor under a fencing token (tools, and tests of an adapter's fencing).
    ///
    /// ```
    /// use rollback_core::{Context, Fence};
    /// let ctx = Context::standalone("run-1").with_fence(Fence { key: "plan".into(), epoch: 7 });
    /// assert_eq!(ctx.fence().map(|f| f.epoch), Some(7));
    /// ```
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Check that this runner still holds its lease, renewing it when it is due. Long
    /// steps call it between batches: after an `Err` they must change nothing more and
    /// return the error. Outside a run it always succeeds.
    ///
    /// # Errors
    /// [`Error::Fenced`](crate::Error::Fenced) once another runner holds the lease;
    /// journal errors while renewing it.
    pub async fn ensure_lease(&self) -> Result<()> {
        match &self.lease {
            Some(l) => l.ensure().await,
            None => Ok(()),
        }
    }

    /// Report progress of long work: a `tracing` event and a [`RunEvent::Progress`].
    pub fn progress(&self, source: &str, done: u64, total: Option<u64>, unit: &str) {
        tracing::info!(run = %self.run_id, source, done, total, unit, "progress");
        self.emit(RunEvent::Progress {
            source: source.to_string(),
            done,
            total,
            unit: unit.to_string(),
        });
    }

    /// Send an event to the run's subscribers (if any).
    pub fn emit(&self, event: RunEvent) {
        let event = Event::new(self.run_id.clone(), event).with_tenant(self.tenant.clone());
        if let (Some(live), RunEvent::Progress { .. }) = (&self.live, &event.event) {
            let _ = live.send(event.clone());
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    /// Whether the run was cancelled. Long steps should check it between batches and
    /// return [`Error::Cancelled`](crate::Error::Cancelled) (the executor then rolls back).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The baseline snapshot of `resource` captured at the start of the run.
    pub fn baseline(&self, resource: &str) -> Option<&Snapshot> {
        self.baseline.get(resource)
    }

    /// A copy of this context carrying the given baseline snapshots (useful for running a
    /// parity verifier outside a run).
    pub fn with_baseline(mut self, snapshots: impl IntoIterator<Item = Snapshot>) -> Self {
        let mut map = (*self.baseline).clone();
        for s in snapshots {
            map.insert(s.resource.clone(), s);
        }
        self.baseline = Arc::new(map);
        self
    }
}
