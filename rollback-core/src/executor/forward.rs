//! The forward path of a run: preflight, baseline, apply, verify, soak.

use super::run::{backoff, with_timeout, Flow, Run};
use crate::events::{Action, RunEvent};
use crate::journal::Entry;
use crate::plan::PlannedStep;
use crate::{Result, Verdict, Verifier};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tracing::Instrument;

impl<'a> Run<'a> {
    /// Preflight, baseline, apply, verify, soak.
    pub(super) async fn forward(&mut self) -> Result<Flow> {
        let plan = self.plan;
        if !self.state.capture_started {
            for v in &plan.preconditions {
                let verdict = self.verify(v.as_ref(), "precondition").await?;
                if !verdict.passed() {
                    return Ok(Flow::RollBack {
                        reason: format!("precondition {} failed: {}", v.id(), verdict.summary),
                        failed_step: None,
                    });
                }
            }
        }
        for c in &plan.checkpoints {
            if self.state.baseline_fingerprint(c.resource()).is_some() {
                continue;
            }
            let resource = c.resource().to_string();
            if !plan.needs_snapshot(&resource) && !c.checkpoint.selective() {
                // No undo path restores it: its baseline fingerprint is enough for parity.
                if let Some(flow) = self.fingerprint_baseline(c).await? {
                    return Ok(flow);
                }
                continue;
            }
            self.append(Entry::CaptureIntent {
                checkpoint: resource.clone(),
            })
            .await?;
            self.ensure_lease().await?;
            let t = Instant::now();
            let span = tracing::info_span!("capture", resource = %resource);
            let ctx = self.ctx();
            let snap = self
                .call(
                    || format!("capture {resource}"),
                    c.checkpoint.capture(&ctx).instrument(span),
                )
                .await?;
            match snap {
                Ok(snapshot) => {
                    let ms = t.elapsed().as_millis() as u64;
                    if snapshot.resource != resource {
                        return Ok(Flow::RollBack {
                            reason: format!(
                                "checkpoint of {resource} captured a snapshot of {}",
                                snapshot.resource
                            ),
                            failed_step: None,
                        });
                    }
                    self.emit(RunEvent::CheckpointCaptured {
                        resource: resource.clone(),
                        digest: snapshot.digest.short(),
                        millis: ms,
                    });
                    self.append(Entry::Captured {
                        checkpoint: resource,
                        snapshot,
                        duration_ms: ms,
                    })
                    .await?;
                }
                Err(e) => {
                    return Ok(Flow::RollBack {
                        reason: format!("capturing {resource} failed: {e}"),
                        failed_step: None,
                    });
                }
            }
        }
        for ps in plan.steps() {
            if matches!(self.state.applied.get(ps.id()), Some(Some(_))) {
                continue;
            }
            if self.cancel.is_cancelled() {
                return Ok(Flow::RollBack {
                    reason: "cancelled".into(),
                    failed_step: None,
                });
            }
            if let Err(e) = self.apply_step(ps).await? {
                return Ok(Flow::RollBack {
                    reason: format!("step {} failed: {e}", ps.id()),
                    failed_step: Some(ps.id().into()),
                });
            }
            for (sid, v) in &plan.post_step {
                if sid == ps.id() {
                    let verdict = self.verify(v.as_ref(), &format!("after:{sid}")).await?;
                    if !verdict.passed() {
                        return Ok(Flow::RollBack {
                            reason: format!(
                                "verifier {} failed after {sid}: {}",
                                v.id(),
                                verdict.summary
                            ),
                            failed_step: Some(sid.clone()),
                        });
                    }
                }
            }
        }
        for v in &plan.finals {
            let verdict = self.verify(v.as_ref(), "final").await?;
            if !verdict.passed() {
                return Ok(Flow::RollBack {
                    reason: format!("final verifier {} failed: {}", v.id(), verdict.summary),
                    failed_step: None,
                });
            }
        }
        self.soak().await
    }

    /// Record the baseline fingerprint of a checkpoint no undo path restores (no snapshot
    /// is taken). `Some(flow)` when it could not be taken: the run rolls back.
    pub(super) async fn fingerprint_baseline(
        &mut self,
        c: &crate::plan::PlannedCheckpoint,
    ) -> Result<Option<Flow>> {
        let resource = c.resource().to_string();
        let t = Instant::now();
        let span = tracing::info_span!("baseline", resource = %resource);
        let ctx = self.ctx();
        let fp = self
            .call(
                || format!("fingerprint {resource}"),
                c.checkpoint.fingerprint(&ctx).instrument(span),
            )
            .await?;
        match fp {
            Ok(fingerprint) => {
                let ms = t.elapsed().as_millis() as u64;
                tracing::info!(%resource, "baseline fingerprinted (no undo path restores it: no snapshot)");
                self.emit(RunEvent::CheckpointCaptured {
                    resource: resource.clone(),
                    digest: fingerprint.short(),
                    millis: ms,
                });
                // With the next record: it announces no action, and a crash before that
                // write leaves a baseline to take again, nothing to clean up.
                self.defer(Entry::Fingerprinted {
                    checkpoint: resource,
                    fingerprint,
                    duration_ms: ms,
                });
                Ok(None)
            }
            Err(e) => Ok(Some(Flow::RollBack {
                reason: format!("fingerprinting {resource} failed: {e}"),
                failed_step: None,
            })),
        }
    }

    /// Outer error: the journal failed (stop at once). Inner: the step failed.
    pub(super) async fn apply_step(&mut self, ps: &PlannedStep) -> Result<Result<()>> {
        let id = ps.id().to_string();
        let span = tracing::info_span!("apply", step = %id, component = %ps.component);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.append(Entry::ApplyIntent {
                step: id.clone(),
                attempt,
            })
            .await?;
            self.emit(RunEvent::StepStarted {
                step: id.clone(),
                action: Action::Apply,
                attempt,
                reversibility: ps.step.reversibility(),
            });
            self.ensure_lease().await?;
            let ctx = self.ctx().with_step(&id);
            let t = Instant::now();
            let res = self
                .call(
                    || format!("apply {id}"),
                    with_timeout(ps.options, &id, ps.step.apply(&ctx)).instrument(span.clone()),
                )
                .await?;
            let ms = t.elapsed().as_millis() as u64;
            match res {
                Ok(receipt) => {
                    self.defer(Entry::Applied {
                        step: id.clone(),
                        receipt,
                        duration_ms: ms,
                    });
                    self.emit(RunEvent::StepFinished {
                        step: id,
                        action: Action::Apply,
                        ok: true,
                        millis: ms,
                        error: None,
                    });
                    return Ok(Ok(()));
                }
                Err(e) => {
                    tracing::warn!(parent: &span, error = %e, attempt, "apply failed");
                    self.append(Entry::ApplyFailed {
                        step: id.clone(),
                        attempt,
                        error: e.to_string(),
                        maybe_applied: e.maybe_applied(),
                        transient: e.is_transient(),
                    })
                    .await?;
                    self.emit(RunEvent::StepFinished {
                        step: id.clone(),
                        action: Action::Apply,
                        ok: false,
                        millis: ms,
                        error: Some(e.to_string()),
                    });
                    if e.is_transient()
                        && attempt <= ps.options.retries
                        && !self.cancel.is_cancelled()
                    {
                        tokio::time::sleep(backoff(ps.options, attempt)).await;
                        continue;
                    }
                    return Ok(Err(e));
                }
            }
        }
    }

    pub(super) async fn verify(&mut self, v: &dyn Verifier, phase: &str) -> Result<Verdict> {
        let ctx = self.ctx();
        let span = tracing::info_span!("verify", verifier = %v.id(), phase);
        let mut attempt = 0;
        let verdict = loop {
            attempt += 1;
            let res = self
                .call(
                    || format!("verifier {}", v.id()),
                    v.verify(&ctx).instrument(span.clone()),
                )
                .await?;
            match res {
                Ok(verdict) => break verdict,
                Err(e) if e.is_transient() && attempt < 3 => {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => break Verdict::inconclusive(format!("verifier could not run: {e}")),
            }
        };
        tracing::info!(parent: &span, status = ?verdict.status, summary = %verdict.summary, "verdict");
        self.emit(RunEvent::Verdict {
            verifier: v.id().into(),
            phase: phase.into(),
            status: verdict.status,
            summary: verdict.summary.clone(),
        });
        self.append(Entry::Verdict {
            verifier: v.id().into(),
            phase: phase.into(),
            verdict: verdict.clone(),
        })
        .await?;
        Ok(verdict)
    }

    pub(super) async fn soak(&mut self) -> Result<Flow> {
        let plan = self.plan;
        if plan.triggers.is_empty() {
            if !plan.soak.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(plan.soak) => {}
                    _ = self.cancel.cancelled() => {
                        return Ok(Flow::RollBack { reason: "cancelled during soak".into(), failed_step: None });
                    }
                }
            }
            return Ok(Flow::Continue);
        }
        let start = Instant::now();
        let mut windows: Vec<VecDeque<bool>> = vec![VecDeque::new(); plan.triggers.len()];
        let mut next: Vec<Instant> = vec![start; plan.triggers.len()];
        loop {
            for (i, t) in plan.triggers.iter().enumerate() {
                if Instant::now() < next[i] {
                    continue;
                }
                next[i] = Instant::now() + t.every;
                let verdict = self.verify(t.verifier.as_ref(), "soak").await?;
                let failed = !verdict.passed()
                    || matches!((verdict.value, t.max_value), (Some(v), Some(m)) if v > m);
                let w = &mut windows[i];
                w.push_back(failed);
                while w.len() > t.window {
                    w.pop_front();
                }
                let failures = w.iter().filter(|f| **f).count();
                let breached = failures >= t.max_failures;
                self.emit(RunEvent::SoakPoll {
                    trigger: t.id().into(),
                    failures_in_window: failures,
                    breached,
                });
                if breached {
                    return Ok(Flow::RollBack {
                        reason: format!(
                            "trigger {} breached: {failures} of the last {} polls failed ({})",
                            t.id(),
                            w.len(),
                            verdict.summary
                        ),
                        failed_step: None,
                    });
                }
            }
            if start.elapsed() >= plan.soak {
                return Ok(Flow::Continue);
            }
            let wake = next.iter().min().copied().unwrap_or_else(Instant::now);
            let deadline = start + plan.soak;
            tokio::select! {
                _ = tokio::time::sleep_until(wake.min(deadline).into()) => {}
                _ = self.cancel.cancelled() => {
                    return Ok(Flow::RollBack { reason: "cancelled during soak".into(), failed_step: None });
                }
            }
        }
    }
}
