//! The rollback of a run: its start and notices, reverting steps and restoring
//! checkpoints in reverse order with parity, and releasing snapshots at the end.

use super::run::{backoff, with_timeout, Run};
use super::RollbackScope;
use crate::events::{Action, Notice, NoticeKind, RunEvent};
use crate::journal::{Entry, Journal};
use crate::plan::{PlannedStep, StepOptions};
use crate::report::RunReport;
use crate::{Error, Receipt, Result, Reversibility, Snapshot, Verifier};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

impl<'a> Run<'a> {
    pub(super) async fn begin_rollback(
        &mut self,
        reason: String,
        failed_step: Option<String>,
    ) -> Result<()> {
        // The scope is decided from the state: it must show every applied step.
        self.flush().await?;
        let plan = self.plan;
        let all: BTreeSet<String> = plan.steps().iter().map(|s| s.id().to_string()).collect();
        let (steps, checkpoints) = match (&failed_step, self.policy.scope) {
            (Some(f), RollbackScope::Component) => {
                let scope = plan.component_scope(f);
                // A resource also changed by a kept (applied, out-of-scope) step cannot be
                // restored without undoing that step: leave it to compensations.
                let kept: BTreeSet<String> = plan
                    .steps()
                    .iter()
                    .filter(|s| !scope.contains(s.id()) && self.state.applied.contains_key(s.id()))
                    .flat_map(|s| s.step.touches())
                    .collect();
                let cps = plan
                    .checkpoints_for(&scope)
                    .into_iter()
                    .filter(|c| !kept.contains(c))
                    .collect();
                (scope, cps)
            }
            _ => (
                all,
                plan.checkpoints()
                    .iter()
                    .map(|c| c.resource().to_string())
                    .collect(),
            ),
        };
        let steps: Vec<String> = plan
            .steps()
            .iter()
            .map(|s| s.id().to_string())
            .filter(|s| steps.contains(s))
            .collect();
        tracing::warn!(%reason, ?steps, "rollback started");
        self.emit(RunEvent::RollbackStarted {
            reason: reason.clone(),
            steps: steps.clone(),
        });
        self.append(Entry::RollbackStarted {
            reason: reason.clone(),
            steps,
            checkpoints,
        })
        .await?;
        self.notify(NoticeKind::RollbackStarted, &reason).await;
        Ok(())
    }

    pub(super) async fn notify(&self, kind: NoticeKind, detail: &str) {
        let Some(n) = &self.ex.notifier else { return };
        // Every claim of the message comes from what the plan can keep (at the start) or
        // what the rollback did (at the end), read back from the journal.
        let report = match self.ex.journal.records(&self.run_id).await {
            Ok(records) => RunReport::from_records(self.plan, &self.run_id, &records),
            Err(e) => {
                tracing::warn!(error = %e, "notifier: could not read the run back; not notifying");
                return;
            }
        };
        let facts = crate::report::NoticeFacts::of(kind, self.plan, &self.state, &report);
        let components: BTreeSet<String> = self
            .state
            .rollback
            .as_ref()
            .map(|(_, steps, _)| {
                steps
                    .iter()
                    .filter_map(|s| self.plan.step(s))
                    .map(|s| s.component.clone())
                    .collect()
            })
            .unwrap_or_default();
        let components: Vec<String> = components.into_iter().collect();
        let message =
            crate::report::status_message(kind, self.plan.name(), &components, detail, &facts);
        let notice = Notice {
            kind,
            run_id: self.run_id.clone(),
            plan: self.plan.name().into(),
            components,
            message,
            owners: self.plan.owners().clone(),
            may_discard: facts.may_discard.iter().map(|(r, _)| r.clone()).collect(),
            items_discarded: facts.items_discarded,
        };
        if let Err(e) = n.notify(&notice).await {
            tracing::warn!(error = %e, "notifier failed; rollback goes on");
        }
    }

    /// Revert applied steps in scope (reverse order), restore checkpoints, prove parity.
    pub(super) async fn rollback(&mut self) -> Result<()> {
        let plan = self.plan;
        let (_, steps, checkpoints) = self.state.rollback.clone().unwrap_or_default();
        let scope: BTreeSet<&String> = steps.iter().collect();
        for ps in plan.steps().iter().rev() {
            let id = ps.id().to_string();
            if !scope.contains(&id)
                || !self.state.applied.contains_key(&id)
                || self.state.reverted.contains(&id)
            {
                continue;
            }
            if ps.step.reversibility() != Reversibility::Compensable {
                // Undone by the revert of the steps that created what it wrote, by
                // restoring its checkpoints, or approved to stay.
                continue;
            }
            let receipt = self.state.applied.get(&id).cloned().flatten();
            if let Err(e) = self.revert_step(ps, receipt.as_ref()).await? {
                // A snapshot of everything it touches is the fallback (restored below).
                let touches = ps.step.touches();
                if !touches.is_empty()
                    && touches.iter().all(|t| self.state.baseline.contains_key(t))
                {
                    tracing::warn!(step = %id, error = %e, "revert failed; its checkpoints will restore it");
                    continue;
                }
                let remaining = self.remaining(&steps, &checkpoints);
                return self
                    .rollback_failed(remaining, format!("reverting {id} failed: {e}"))
                    .await;
            }
        }
        // Compensation first: a snapshot is restored only for what no compensation undoes
        // (its restore discards everyone's writes since capture), or when the checkpoint
        // undoes the run's own writes only. Restores go first: one may put back what
        // another checkpoint covers too (a table restore brings back a dropped column its
        // schema checkpoint sees), and only then are the others compared.
        for restoring in [true, false] {
            for resource in &checkpoints {
                if self.state.parity.get(resource) == Some(&true)
                    || self.state.not_restored.contains(resource)
                {
                    continue;
                }
                let Some(pc) = plan.checkpoints().iter().find(|c| c.resource() == resource) else {
                    continue;
                };
                let Some(expected) = self.state.baseline_fingerprint(resource) else {
                    continue; // never captured: nothing was applied after it
                };
                let baseline = self.state.baseline.clone();
                let snapshot = baseline.get(resource);
                let restore = snapshot.is_some()
                    && (self.state.restore_needed(plan, &scope, resource)
                        || pc.checkpoint.selective());
                if restore != restoring {
                    continue;
                }
                let res = match snapshot {
                    Some(snapshot) if restore => {
                        self.restore_checkpoint(pc.checkpoint.as_ref(), snapshot)
                            .await?
                    }
                    _ => {
                        self.check_unrestored(pc.checkpoint.as_ref(), expected)
                            .await?
                    }
                };
                if let Err(e) = res {
                    let remaining = self.remaining(&steps, &checkpoints);
                    return self
                        .rollback_failed(remaining, format!("restoring {resource} failed: {e}"))
                        .await;
                }
            }
        }
        // Partial only when something applied stays applied outside the scope.
        let kept: BTreeSet<&String> = self
            .state
            .applied
            .keys()
            .filter(|s| !scope.contains(s))
            .collect();
        let partial = !kept.is_empty();
        // Prove the kept part too: re-run the post-step verifiers of kept steps.
        let kept_verifiers: Vec<(String, Arc<dyn Verifier>)> = plan
            .post_step
            .iter()
            .filter(|(sid, _)| kept.contains(sid))
            .cloned()
            .collect();
        for (sid, v) in kept_verifiers {
            self.verify(v.as_ref(), &format!("kept:{sid}")).await?;
        }
        self.append(Entry::RolledBack { partial }).await?;
        self.notify(
            NoticeKind::RollbackFinished,
            if partial {
                "partial rollback"
            } else {
                "full rollback"
            },
        )
        .await;
        Ok(())
    }

    /// Release every captured snapshot of a finished run, in plan order, each once.
    pub(super) async fn discard_snapshots(&mut self) -> Result<()> {
        let plan = self.plan;
        for pc in plan.checkpoints() {
            let resource = pc.resource().to_string();
            if !self.state.to_release(&resource, self.policy.retention) {
                continue;
            }
            let baseline = self.state.baseline.clone();
            let Some(snapshot) = baseline.get(&resource) else {
                continue;
            };
            self.ensure_lease().await?;
            let span = tracing::info_span!("discard", resource = %resource);
            let ctx = self.ctx();
            let res = self
                .call(
                    || format!("discard {resource}"),
                    pc.checkpoint.discard(snapshot, &ctx).instrument(span),
                )
                .await?;
            let error = match res {
                Ok(()) => {
                    tracing::info!(%resource, snapshot = %snapshot.id, "snapshot discarded");
                    None
                }
                Err(e) => {
                    tracing::warn!(%resource, snapshot = %snapshot.id, error = %e, "discarding the snapshot failed; it is left in place");
                    Some(e.to_string())
                }
            };
            self.emit(RunEvent::SnapshotDiscarded {
                resource: resource.clone(),
                ok: error.is_none(),
            });
            self.append(Entry::Discarded {
                checkpoint: resource,
                error,
            })
            .await?;
        }
        Ok(())
    }

    pub(super) fn remaining(&self, steps: &[String], checkpoints: &[String]) -> Vec<String> {
        let mut out: Vec<String> = steps
            .iter()
            .filter(|s| {
                self.state.applied.contains_key(*s)
                    && !self.state.reverted.contains(*s)
                    && self
                        .plan
                        .step(s)
                        .is_some_and(|p| p.step.reversibility() == Reversibility::Compensable)
            })
            .map(|s| format!("step {s}: not reverted"))
            .collect();
        out.extend(
            checkpoints
                .iter()
                .filter(|c| {
                    self.state.parity.get(*c) != Some(&true) && self.state.baseline.contains_key(*c)
                })
                .map(|c| format!("checkpoint {c}: parity with baseline not proven")),
        );
        out
    }

    pub(super) async fn rollback_failed(
        &mut self,
        remaining: Vec<String>,
        error: String,
    ) -> Result<()> {
        tracing::error!(%error, ?remaining, "rollback failed");
        self.append(Entry::RollbackFailed {
            remaining,
            error: error.clone(),
        })
        .await?;
        self.notify(NoticeKind::RollbackFailed, &error).await;
        Ok(())
    }

    /// Outer error: the journal failed. Inner: the revert failed after its retries.
    pub(super) async fn revert_step(
        &mut self,
        ps: &PlannedStep,
        receipt: Option<&Receipt>,
    ) -> Result<Result<()>> {
        let id = ps.id().to_string();
        let span = tracing::info_span!("revert", step = %id);
        let opts = StepOptions {
            retries: self.ex.rollback_retries,
            ..ps.options
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.append(Entry::RevertIntent {
                step: id.clone(),
                attempt,
            })
            .await?;
            self.emit(RunEvent::StepStarted {
                step: id.clone(),
                action: Action::Revert,
                attempt,
                reversibility: ps.step.reversibility(),
            });
            self.ensure_lease().await?;
            let ctx = self.ctx().with_step(&id);
            let t = Instant::now();
            let res = self
                .call(
                    || format!("revert {id}"),
                    with_timeout(opts, &id, ps.step.revert(receipt, &ctx)).instrument(span.clone()),
                )
                .await?;
            let ms = t.elapsed().as_millis() as u64;
            match res {
                Ok(()) => {
                    self.append(Entry::Reverted {
                        step: id.clone(),
                        duration_ms: ms,
                    })
                    .await?;
                    self.emit(RunEvent::StepFinished {
                        step: id,
                        action: Action::Revert,
                        ok: true,
                        millis: ms,
                        error: None,
                    });
                    return Ok(Ok(()));
                }
                Err(e) => {
                    tracing::warn!(parent: &span, error = %e, attempt, "revert failed");
                    self.append(Entry::RevertFailed {
                        step: id.clone(),
                        attempt,
                        error: e.to_string(),
                    })
                    .await?;
                    self.emit(RunEvent::StepFinished {
                        step: id.clone(),
                        action: Action::Revert,
                        ok: false,
                        millis: ms,
                        error: Some(e.to_string()),
                    });
                    // During rollback every error that is not a refusal is worth retrying.
                    let retryable =
                        !matches!(e, Error::Irreversible { .. } | Error::Invalid { .. });
                    if retryable && attempt <= opts.retries {
                        tokio::time::sleep(backoff(opts, attempt)).await;
                        continue;
                    }
                    return Ok(Err(e));
                }
            }
        }
    }

    /// A checkpoint the compensations alone were to bring back: compare it with its
    /// baseline, and leave it as it is when it differs (journaled `not_restored`: parity not
    /// proven, nothing discarded). Outer error: the journal failed. Inner: the fingerprint
    /// could not be taken.
    pub(super) async fn check_unrestored(
        &mut self,
        cp: &dyn crate::Checkpoint,
        expected: crate::Digest,
    ) -> Result<Result<()>> {
        let resource = cp.resource().to_string();
        let ctx = self.ctx();
        let span = tracing::info_span!("parity", resource = %resource);
        let actual = match self
            .call(
                || format!("fingerprint {resource}"),
                cp.fingerprint(&ctx).instrument(span),
            )
            .await?
        {
            Ok(fp) => fp,
            Err(e) => return Ok(Err(e)),
        };
        let ok = actual == expected;
        self.emit(RunEvent::Parity {
            resource: resource.clone(),
            ok,
        });
        self.append(Entry::Parity {
            checkpoint: resource.clone(),
            expected,
            actual,
        })
        .await?;
        if !ok {
            tracing::warn!(%resource, "differs from its baseline after the compensations; not restored (a restore would discard writes made since capture)");
            self.append(Entry::NotRestored {
                checkpoint: resource,
                reason: "differs from its baseline after every change of the run was compensated: not restored, so that writes made since capture are kept (parity not proven)".into(),
            })
            .await?;
        }
        Ok(Ok(()))
    }

    /// Restore `cp` if it differs from its baseline, then prove parity.
    /// Outer error: the journal failed. Inner: restore or parity failed after retries.
    pub(super) async fn restore_checkpoint(
        &mut self,
        cp: &dyn crate::Checkpoint,
        snapshot: &Snapshot,
    ) -> Result<Result<()>> {
        let resource = cp.resource().to_string();
        let ctx = self.ctx();
        let span = tracing::info_span!("restore", resource = %resource);
        let mut attempt = 0u32;
        // A checkpoint whose restore finds nothing to do cheaply and proves itself is
        // restored without a fingerprint first: the rollback reads only what it restores.
        let proves = cp.restore_proves();
        loop {
            attempt += 1;
            let fingerprint = if proves {
                Ok(None)
            } else {
                self.call(
                    || format!("fingerprint {resource}"),
                    cp.fingerprint(&ctx).instrument(span.clone()),
                )
                .await?
                .map(Some)
            };
            let err = match fingerprint {
                Err(e) => e,
                Ok(fp) => {
                    let mut restore_err = None;
                    let mut proof: Option<crate::Proof> = None;
                    if fp != Some(snapshot.fingerprint) {
                        self.append(Entry::RestoreIntent {
                            checkpoint: resource.clone(),
                        })
                        .await?;
                        self.ensure_lease().await?;
                        let t = Instant::now();
                        let restored = self
                            .call(
                                || format!("restore {resource}"),
                                cp.restore(snapshot, &ctx).instrument(span.clone()),
                            )
                            .await?;
                        match restored {
                            Ok(how) => {
                                let ms = t.elapsed().as_millis() as u64;
                                self.emit(RunEvent::CheckpointRestored {
                                    resource: resource.clone(),
                                    method: how.method.clone(),
                                    millis: ms,
                                });
                                proof = how.proof.clone();
                                self.append(Entry::Restored {
                                    checkpoint: resource.clone(),
                                    method: how.method,
                                    items_changed: how.items_changed,
                                    duration_ms: ms,
                                    discarded: how.discarded,
                                    proof: how.proof,
                                })
                                .await?;
                            }
                            Err(e) => restore_err = Some(e),
                        }
                    }
                    let after = match (restore_err, proof) {
                        (Some(e), _) => Err(e),
                        // Taken under the restore's own lock: no writer could race it.
                        (None, Some(p)) => Ok(p.fingerprint),
                        (None, None) => {
                            self.call(
                                || format!("fingerprint {resource}"),
                                cp.fingerprint(&ctx).instrument(span.clone()),
                            )
                            .await?
                        }
                    };
                    match after {
                        Err(e) => e,
                        Ok(actual) => {
                            let ok = actual == snapshot.fingerprint;
                            self.emit(RunEvent::Parity {
                                resource: resource.clone(),
                                ok,
                            });
                            self.append(Entry::Parity {
                                checkpoint: resource.clone(),
                                expected: snapshot.fingerprint,
                                actual,
                            })
                            .await?;
                            if ok {
                                return Ok(Ok(()));
                            }
                            Error::conflict(format!(
                                    "{resource} differs from its baseline after restore (fingerprint {} != {})",
                                    actual.short(),
                                    snapshot.fingerprint.short()
                                ))
                        }
                    }
                }
            };
            tracing::warn!(parent: &span, error = %err, attempt, "restore failed");
            self.append(Entry::RestoreFailed {
                checkpoint: resource.clone(),
                error: err.to_string(),
            })
            .await?;
            let refused = matches!(
                err,
                Error::DigestMismatch { .. } | Error::WrongResource { .. } | Error::Invalid { .. }
            );
            if refused || attempt > self.ex.rollback_retries {
                return Ok(Err(err));
            }
            tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(6))).await;
        }
    }
}
