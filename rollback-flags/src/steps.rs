//! Flag steps: [`SetFlag`] (and its kill switch) and [`StagedRollout`].
//!
//! # How a flag step knows the prior state
//! Every flag step is [`Reversibility::Compensable`]: its revert writes back the flag's
//! state from just before the apply. That prior state is kept in three places, so that
//! `revert(None)` (apply outcome unknown) always knows it:
//! 1. the receipt (`{"flag", "prior", "applied"}`), when the apply returned;
//! 2. the step's journaled resume cursor ([`Context::save_cursor`]), written — durably —
//!    *before* the first change to the flag: a resumed run after a crash finds it there;
//! 3. an in-process record keyed by run id, for the same process (a timed-out attempt,
//!    or a context without a journal).
//!
//! If none of them has it, the apply never got as far as changing the flag (the cursor
//! is written first), and `revert(None)` is a no-op (Step contract clause 4). Nothing is
//! ever stored in the provider itself (no description fields, no side flags).
//!
//! The in-process record is keyed by [`Context::run_id`]: outside an executor run, give
//! each logical run its own id with [`Context::standalone`] (every
//! [`Context::detached`] shares the id `detached`, so a second apply would reuse the
//! first one's prior state).

use crate::checkpoint::FlagSnapshot;
use crate::provider::{flag_resource, scope_resource};
use crate::{FlagChange, FlagProvider, FlagState};
use async_trait::async_trait;
use rollback_core::events::RunEvent;
use rollback_core::{Context, Error, Receipt, Result, Reversibility, Step, Verdict, Verifier};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a flag step's receipt holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagReceipt {
    /// The flag.
    pub flag: String,
    /// Its state just before the apply (what revert writes back).
    pub prior: FlagState,
    /// The state the apply left it in.
    pub applied: FlagState,
    /// Whether the apply created the flag (then revert removes it, and `prior` is
    /// [`FlagState::off`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub created: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The journaled resume cursor of a flag step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    prior: FlagState,
    /// Index of the last stage set and checked (staged rollouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stage: Option<usize>,
    /// The flag did not exist: the apply creates it, the revert removes it.
    #[serde(default, skip_serializing_if = "is_false")]
    created: bool,
}

/// Per-run cursors of one step in this process.
#[derive(Default)]
struct Memo(Mutex<HashMap<String, Cursor>>);

impl Memo {
    fn get(&self, run: &str) -> Option<Cursor> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run)
            .cloned()
    }
    fn set(&self, run: &str, c: Cursor) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.to_string(), c);
    }
}

/// The shared part of the flag steps.
struct Core {
    id: String,
    provider: Arc<dyn FlagProvider>,
    flag: String,
    touches: Vec<String>,
    memo: Memo,
}

impl Core {
    fn new(id: &str, provider: Arc<dyn FlagProvider>, flag: &str) -> Self {
        let touches = vec![
            flag_resource(provider.as_ref(), flag),
            scope_resource(provider.as_ref()),
        ];
        Core {
            id: id.to_string(),
            provider,
            flag: flag.to_string(),
            touches,
            memo: Memo::default(),
        }
    }

    /// The cursor of this run: this process's record, else the journaled one.
    fn known(&self, ctx: &Context) -> Option<Cursor> {
        self.memo.get(ctx.run_id()).or_else(|| {
            ctx.cursor()
                .and_then(|c| serde_json::from_value::<Cursor>(c.clone()).ok())
        })
    }

    /// The cursor to apply from: known (an earlier attempt of this run may have changed
    /// the flag: `true`), or read now and journaled before any change (`false`).
    /// `create`: a missing flag is created (from [`FlagState::off`]) rather than refused.
    async fn start(&self, ctx: &Context, create: bool) -> Result<(Cursor, bool)> {
        if let Some(c) = self.known(ctx) {
            self.memo.set(ctx.run_id(), c.clone());
            return Ok((c, true));
        }
        let c = match self.provider.get(&self.flag).await? {
            Some(prior) => Cursor {
                prior,
                stage: None,
                created: false,
            },
            None if create => Cursor {
                prior: FlagState::off(),
                stage: None,
                created: true,
            },
            None => {
                return Err(Error::conflict(format!(
                    "flag {} does not exist in {} (SetFlag::create makes a step that creates it \
                     and removes it on revert)",
                    self.flag,
                    scope_resource(self.provider.as_ref())
                )))
            }
        };
        self.save(ctx, &c).await?;
        Ok((c, false))
    }

    async fn save(&self, ctx: &Context, c: &Cursor) -> Result<()> {
        self.memo.set(ctx.run_id(), c.clone());
        let v = serde_json::to_value(c)
            .map_err(|e| Error::invalid(format!("cursor does not serialize: {e}")))?;
        ctx.save_cursor(v).await
    }

    /// Make the flag `target` unless it already is.
    async fn write(&self, target: &FlagState) -> Result<()> {
        let current = self.provider.get(&self.flag).await?;
        if current.as_ref() != Some(target) {
            self.provider.put(&self.flag, target).await?;
        }
        Ok(())
    }

    async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        let prior = match receipt {
            Some(r) if !r.0.is_null() => {
                let r = r.parse::<FlagReceipt>()?;
                Some((r.prior, r.created))
            }
            _ => self.known(ctx).map(|c| (c.prior, c.created)),
        };
        let Some((prior, created)) = prior else {
            tracing::info!(step = %self.id, flag = %self.flag, "revert: the apply never changed the flag; nothing to do");
            return Ok(());
        };
        if created {
            // The flag did not exist before the apply: remove it (a no-op when the apply
            // never got as far as creating it).
            self.provider.delete(&self.flag).await?;
            tracing::info!(step = %self.id, flag = %self.flag, "flag created by the step removed");
            return Ok(());
        }
        self.write(&prior).await?;
        tracing::info!(step = %self.id, flag = %self.flag, enabled = prior.enabled, rollout = ?prior.rollout_percent(), "flag reverted to its prior state");
        Ok(())
    }

    fn receipt(&self, cursor: Cursor, applied: FlagState) -> Receipt {
        Receipt::new(&FlagReceipt {
            flag: self.flag.clone(),
            prior: cursor.prior,
            applied,
            created: cursor.created,
        })
    }
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagStep")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("flag", &self.flag)
            .finish()
    }
}

/// Set a flag (enabled, rollout percentage, variants) — or, as
/// [`SetFlag::kill_switch`], turn it off at once.
///
/// Compensable: revert writes back the prior state (see the [module docs](self) for how
/// it is known without a receipt). The flag must exist ([`Error::Conflict`] otherwise),
/// unless the step is made by [`SetFlag::create`], which creates it and removes it on
/// revert.
/// [`touches`](Step::touches) lists the flag's resource (`flags:<kind>:<scope>/<flag>`)
/// and the scope's (`flags:<kind>:<scope>`); add others with [`SetFlag::touching`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use rollback_core::{Context, Step};
/// use rollback_flags::{FlagChange, FlagProvider, FlagState, MemoryProvider, SetFlag};
/// let p = MemoryProvider::new("sim");
/// p.put("checkout", &FlagState::rollout("checkout", 100)).await?;
/// let kill = SetFlag::kill_switch("kill-checkout", Arc::new(p.clone()), "checkout");
/// let ctx = Context::standalone("demo");
/// let receipt = kill.apply(&ctx).await?;
/// assert!(!p.get("checkout").await?.unwrap().enabled);
/// kill.revert(Some(&receipt), &ctx).await?;
/// assert!(p.get("checkout").await?.unwrap().enabled);
/// # Ok::<(), rollback_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct SetFlag {
    core: Core,
    change: FlagChange,
    kill: bool,
    create: bool,
}

impl SetFlag {
    /// A step `id` applying `change` to `flag`.
    pub fn new(id: &str, provider: Arc<dyn FlagProvider>, flag: &str, change: FlagChange) -> Self {
        SetFlag {
            core: Core::new(id, provider, flag),
            change,
            kill: false,
            create: false,
        }
    }

    /// A step `id` that creates `flag` with `change` applied to [`FlagState::off`] when
    /// the flag does not exist — a normal migration step — and whose revert removes the
    /// flag it created. When the flag exists, it behaves as [`SetFlag::new`] (revert
    /// writes the prior state back). Whether it created the flag is journaled before the
    /// flag is written, so a resumed run after a crash removes it too.
    ///
    /// With [`UnleashProvider`](crate::UnleashProvider), removing is archiving and then
    /// deleting from the archive once Unleash has recorded the archive (see
    /// [`FlagProvider::delete`]).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use rollback_core::{Context, Step};
    /// use rollback_flags::{FlagChange, FlagProvider, MemoryProvider, SetFlag};
    /// let p = MemoryProvider::new("sim");
    /// let step = SetFlag::create("add-checkout", Arc::new(p.clone()), "checkout", FlagChange::new().rollout(5));
    /// let ctx = Context::standalone("demo");
    /// let receipt = step.apply(&ctx).await?;
    /// assert_eq!(p.get("checkout").await?.unwrap().rollout_percent(), Some(5));
    /// step.revert(Some(&receipt), &ctx).await?;
    /// assert_eq!(p.get("checkout").await?, None);
    /// # Ok::<(), rollback_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn create(
        id: &str,
        provider: Arc<dyn FlagProvider>,
        flag: &str,
        change: FlagChange,
    ) -> Self {
        SetFlag {
            create: true,
            ..Self::new(id, provider, flag, change)
        }
    }

    /// A kill switch: turn `flag` off (strategies kept, so the revert turns the same
    /// rollout back on).
    pub fn kill_switch(id: &str, provider: Arc<dyn FlagProvider>, flag: &str) -> Self {
        SetFlag {
            kill: true,
            ..Self::new(id, provider, flag, FlagChange::kill())
        }
    }

    /// Also declare `resource` as touched (e.g. a flag-set checkpoint's resource).
    pub fn touching(mut self, resource: impl Into<String>) -> Self {
        self.core.touches.push(resource.into());
        self
    }
}

#[async_trait]
impl Step for SetFlag {
    fn id(&self) -> &str {
        &self.core.id
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::Compensable
    }
    fn touches(&self) -> Vec<String> {
        self.core.touches.clone()
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": if self.kill { "flags.kill_switch" } else if self.create { "flags.create_or_set" } else { "flags.set" },
            "resource": flag_resource(self.core.provider.as_ref(), &self.core.flag),
            "change": self.change,
        })
    }
    fn describe(&self) -> String {
        if self.kill {
            format!("kill switch: turn flag {} off", self.core.flag)
        } else {
            format!("set flag {}: {}", self.core.flag, self.change.describe())
        }
    }
    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        let (cursor, _) = self.core.start(ctx, self.create).await?;
        let target = self.change.apply_to(&self.core.flag, cursor.prior.clone());
        self.core.write(&target).await?;
        tracing::info!(step = %self.core.id, flag = %self.core.flag, change = %self.change.describe(), "flag set");
        ctx.progress(&self.core.id, 1, Some(1), "flags");
        Ok(self.core.receipt(cursor, target))
    }
    async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        self.core.revert(receipt, ctx).await
    }
}

/// A failed health check between rollout stages.
#[derive(Debug, thiserror::Error)]
#[error("health check {verifier} failed at stage {stage}/{stages} ({percent}%): {summary}")]
pub struct HealthCheckFailed {
    /// The verifier.
    pub verifier: String,
    /// The stage (1-based).
    pub stage: usize,
    /// Number of stages.
    pub stages: usize,
    /// The stage's rollout percentage.
    pub percent: u32,
    /// The verdict's summary.
    pub summary: String,
}

/// A staged rollout: turn a flag on and raise its rollout through `stages` (e.g. 1 % →
/// 10 % → 50 % → 100 %), waiting `pause` after each stage and then running an optional
/// health check; a failed check stops the rollout with an error (the executor then rolls
/// back, reverting the flag to its prior state).
///
/// The journaled cursor records the last stage whose check passed, so a resumed run picks
/// up with the next one (re-setting a stage is idempotent). Each health verdict is also
/// sent to the run's event stream (`RunEvent::Verdict`, phase `<step> stage i/n (p%)`). Progress goes to
/// [`Context::progress`] as `rollout:<flag>`, one unit per stage. The error of a failed
/// check is [`Error::Backend`] (`backend: "flags"`, source [`HealthCheckFailed`]) with
/// `maybe_applied: true`: the flag was changed.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use rollback_core::{Context, Step};
/// use rollback_flags::{FlagProvider, FlagState, MemoryProvider, StagedRollout};
/// let p = MemoryProvider::new("sim");
/// p.put("checkout", &FlagState::off()).await?;
/// let step = StagedRollout::new("roll-out", Arc::new(p.clone()), "checkout", &[1, 10, 50, 100]);
/// step.apply(&Context::standalone("demo")).await?;
/// assert_eq!(p.get("checkout").await?.unwrap().rollout_percent(), Some(100));
/// # Ok::<(), rollback_core::Error>(())
/// # }).unwrap();
/// ```
pub struct StagedRollout {
    core: Core,
    stages: Vec<u32>,
    health: Option<Arc<dyn Verifier>>,
    pause: Duration,
}

impl fmt::Debug for StagedRollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedRollout")
            .field("core", &self.core)
            .field("stages", &self.stages)
            .field("health", &self.health.as_ref().map(|h| h.id().to_string()))
            .field("pause", &self.pause)
            .finish()
    }
}

impl StagedRollout {
    /// Roll `flag` out through `stages` (percentages, each clamped to 100).
    pub fn new(id: &str, provider: Arc<dyn FlagProvider>, flag: &str, stages: &[u32]) -> Self {
        StagedRollout {
            core: Core::new(id, provider, flag),
            stages: stages.iter().map(|p| (*p).min(100)).collect(),
            health: None,
            pause: Duration::ZERO,
        }
    }

    /// Run `verifier` after each stage (after the pause); a verdict that does not pass
    /// stops the rollout.
    pub fn health_check(mut self, verifier: Arc<dyn Verifier>) -> Self {
        self.health = Some(verifier);
        self
    }

    /// Wait this long after setting each stage, before its health check.
    pub fn pause(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    /// Also declare `resource` as touched.
    pub fn touching(mut self, resource: impl Into<String>) -> Self {
        self.core.touches.push(resource.into());
        self
    }

    fn target(&self, prior: &FlagState, stage: usize) -> FlagState {
        FlagChange::new()
            .enabled(true)
            .rollout(self.stages[stage])
            .apply_to(&self.core.flag, prior.clone())
    }

    async fn wait(&self, ctx: &Context) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.pause;
        while tokio::time::Instant::now() < deadline {
            if ctx.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let left = deadline - tokio::time::Instant::now();
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
        Ok(())
    }

    async fn check(&self, ctx: &Context, stage: usize) -> Result<()> {
        let Some(h) = &self.health else {
            return Ok(());
        };
        let mut attempt = 0;
        let verdict = loop {
            attempt += 1;
            match h.verify(ctx).await {
                Ok(v) => break v,
                Err(e) if e.is_transient() && attempt < 3 => {
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => break Verdict::inconclusive(format!("health check could not run: {e}")),
            }
        };
        tracing::info!(step = %self.core.id, verifier = h.id(), stage = stage + 1, status = ?verdict.status, summary = %verdict.summary, "rollout health check");
        ctx.emit(RunEvent::Verdict {
            verifier: h.id().to_string(),
            phase: format!(
                "{} stage {}/{} ({}%)",
                self.core.id,
                stage + 1,
                self.stages.len(),
                self.stages[stage]
            ),
            status: verdict.status,
            summary: verdict.summary.clone(),
        });
        if verdict.passed() {
            return Ok(());
        }
        Err(Error::Backend {
            backend: "flags",
            source: Box::new(HealthCheckFailed {
                verifier: h.id().to_string(),
                stage: stage + 1,
                stages: self.stages.len(),
                percent: self.stages[stage],
                summary: verdict.summary,
            }),
            maybe_applied: true,
        })
    }
}

#[async_trait]
impl Step for StagedRollout {
    fn id(&self) -> &str {
        &self.core.id
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::Compensable
    }
    fn touches(&self) -> Vec<String> {
        self.core.touches.clone()
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "flags.staged_rollout",
            "resource": flag_resource(self.core.provider.as_ref(), &self.core.flag),
            "stages": self.stages,
            "pause_ms": self.pause.as_millis() as u64,
            "health_check": self.health.as_ref().map(|h| h.id().to_string()),
        })
    }
    fn describe(&self) -> String {
        let stages: Vec<String> = self.stages.iter().map(|p| format!("{p}%")).collect();
        format!(
            "staged rollout of flag {}: {}{}",
            self.core.flag,
            stages.join(" → "),
            self.health
                .as_ref()
                .map(|h| format!(", checking {} after each stage", h.id()))
                .unwrap_or_default()
        )
    }
    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        if self.stages.is_empty() {
            return Err(Error::invalid(format!(
                "staged rollout {} has no stages",
                self.core.id
            )));
        }
        let (mut cursor, resumed) = self.core.start(ctx, false).await?;
        let first = cursor.stage.map_or(0, |s| s + 1);
        let source = format!("rollout:{}", self.core.flag);
        let n = self.stages.len();
        // Once a stage may have been written, every error says the change may have
        // happened (the executor then reverts).
        let mut touched = resumed;
        let mark = |e: Error, touched: bool| if touched { e.after_writes("flags") } else { e };
        for stage in first..n {
            if ctx.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let target = self.target(&cursor.prior, stage);
            self.core
                .write(&target)
                .await
                .map_err(|e| mark(e, touched))?;
            touched = true;
            tracing::info!(step = %self.core.id, flag = %self.core.flag, stage = stage + 1, stages = n, percent = self.stages[stage], "rollout stage set");
            ctx.progress(&source, stage as u64 + 1, Some(n as u64), "stages");
            self.wait(ctx).await?;
            self.check(ctx, stage).await?;
            // One cursor per stage, once its check passed: a resume re-sets the next
            // stage (idempotent) and checks it.
            cursor.stage = Some(stage);
            self.core
                .save(ctx, &cursor)
                .await
                .map_err(|e| mark(e, true))?;
        }
        let applied = self.target(&cursor.prior, n - 1);
        Ok(self.core.receipt(cursor, applied))
    }
    async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        self.core.revert(receipt, ctx).await
    }
}

/// Turn `flag` off at once, outside any plan (an operator's emergency switch). Returns
/// the state it had, to turn it back on with [`FlagProvider::put`].
///
/// # Errors
/// [`Error::Conflict`] when the flag does not exist; provider errors.
pub async fn kill_switch(provider: &dyn FlagProvider, flag: &str) -> Result<FlagState> {
    let prior = provider.get(flag).await?.ok_or_else(|| {
        Error::conflict(format!(
            "flag {flag} does not exist in {}",
            scope_resource(provider)
        ))
    })?;
    if prior.enabled {
        let mut off = prior.clone();
        off.enabled = false;
        provider.put(flag, &off).await?;
    }
    tracing::warn!(flag, "kill switch: flag turned off");
    Ok(prior)
}

/// The state a snapshot holds for `flag` (`Some(None)`: captured as absent; `None`: not
/// covered by the snapshot).
pub fn state_in_snapshot(
    snapshot: &rollback_core::Snapshot,
    flag: &str,
) -> Result<Option<Option<FlagState>>> {
    Ok(FlagSnapshot::from_snapshot(snapshot)?
        .flags
        .get(flag)
        .cloned())
}
