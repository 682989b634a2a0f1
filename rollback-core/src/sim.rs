//! Deterministic, serverless simulation: in-memory resources, steps and verifiers, fault
//! injection, a crashing journal, and (feature `proptest`) proptest strategies for plans and
//! fault schedules.
//!
//! The invariant every simulation test asserts: after recovery each resource equals its
//! baseline or the fully applied target, and the report says which.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use rollback_core::{Executor, Outcome};
//! use rollback_core::journal::MemoryJournal;
//! use rollback_core::sim::{CrashAfter, SimPlanSpec, SimWorld};
//!
//! let spec = SimPlanSpec::example();
//! let world = SimWorld::new();
//! spec.seed(&world);
//! let baseline = world.snapshot_state();
//! let plan = spec.build(&world).unwrap();
//! let journal = Arc::new(MemoryJournal::new());
//! // The "process" dies after writing 8 journal records.
//! let crashing = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 8))).holder("a");
//! assert!(crashing.run(&plan).await.is_err());
//! // A new executor resumes the run from the journal alone.
//! let run_id = journal.runs().await.unwrap().remove(0);
//! let report = Executor::with_journal(journal).holder("a").resume(&plan, &run_id).await.unwrap();
//! assert_eq!(report.outcome, Outcome::RolledBack);
//! assert_eq!(world.snapshot_state(), baseline);
//! # });
//! # use rollback_core::journal::Journal;
//! ```

use crate::journal::{Entry, Journal, Lease, Record};
use crate::{
    Checkpoint, Context, Digest, Error, Plan, Receipt, Restored, Result, Reversibility, Snapshot,
    Step, Verdict, Verifier,
};
use async_trait::async_trait;
#[cfg(feature = "proptest")]
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The state of one simulated resource: a sorted key/value map.
pub type ResourceState = BTreeMap<String, String>;

/// A simulated world of resources, with snapshot storage, apply markers and faults.
/// Cheap to clone (shared).
///
/// Its steps and restores fence their writes: each write checks the runner's
/// [`Context::fence`] against the newest epoch the world has seen for the lease key, in
/// the same critical section as the write, and refuses an older runner with
/// [`Error::Fenced`] — what an adapter over a real backend does in its transaction.
#[derive(Clone, Default)]
pub struct SimWorld {
    inner: Arc<Mutex<World>>,
}

impl std::fmt::Debug for SimWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimWorld")
            .field("resources", &self.lock().resources)
            .finish()
    }
}

#[derive(Default)]
struct World {
    resources: BTreeMap<String, ResourceState>,
    snapshots: BTreeMap<String, ResourceState>,
    /// (run, step) → receipt: written atomically with the change (as a database step
    /// records its journal entry in its own transaction).
    markers: BTreeMap<(String, String), Receipt>,
    outbox: Vec<String>,
    faults: FaultState,
    rng: u64,
    snapshot_counter: u64,
    /// Lease key → the newest fencing epoch that wrote here (see [`Context::fence`]).
    fences: BTreeMap<String, u64>,
}

impl World {
    /// The adapter's half of fencing: refuse a write by a runner older than the newest
    /// one seen for its lease key, atomically with the write (the caller holds the lock).
    fn admit(&mut self, ctx: &Context) -> Result<()> {
        if let Some(f) = ctx.fence() {
            let seen = self.fences.entry(f.key.clone()).or_insert(0);
            if f.epoch < *seen {
                return Err(f.stale(*seen));
            }
            *seen = f.epoch;
        }
        Ok(())
    }
}

#[derive(Default)]
struct FaultState {
    fail_apply: BTreeMap<String, u32>,
    uncertain_apply: BTreeMap<String, u32>,
    transient_apply: BTreeMap<String, u32>,
    fail_revert: BTreeMap<String, u32>,
    fail_restore: BTreeMap<String, u32>,
    fail_discard: BTreeMap<String, u32>,
    slow_apply: BTreeMap<String, Duration>,
}

fn take(map: &mut BTreeMap<String, u32>, key: &str) -> bool {
    match map.get_mut(key) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

/// Fault injection for a [`SimWorld`].
#[derive(Clone)]
pub struct Faults {
    world: SimWorld,
}

impl Faults {
    /// The next `times` applies of `step` fail before changing anything.
    pub fn fail_apply(&self, step: &str, times: u32) -> &Self {
        self.world
            .lock()
            .faults
            .fail_apply
            .insert(step.into(), times);
        self
    }
    /// The next `times` applies of `step` fail with a transient error before changing
    /// anything (retries should absorb them).
    pub fn transient_apply(&self, step: &str, times: u32) -> &Self {
        self.world
            .lock()
            .faults
            .transient_apply
            .insert(step.into(), times);
        self
    }
    /// The next `times` applies of `step` make the change, then report a timeout (the
    /// outcome is uncertain to the executor).
    pub fn uncertain_apply(&self, step: &str, times: u32) -> &Self {
        self.world
            .lock()
            .faults
            .uncertain_apply
            .insert(step.into(), times);
        self
    }
    /// The next `times` reverts of `step` fail (transiently).
    pub fn fail_revert(&self, step: &str, times: u32) -> &Self {
        self.world
            .lock()
            .faults
            .fail_revert
            .insert(step.into(), times);
        self
    }
    /// The next `times` restores of `resource` fail (transiently).
    pub fn fail_restore(&self, resource: &str, times: u32) -> &Self {
        self.world
            .lock()
            .faults
            .fail_restore
            .insert(resource.into(), times);
        self
    }
    /// The next `times` discards of snapshots of `resource` fail.
    pub fn fail_discard(&self, resource: &str, times: u32) -> &Self {
        self.world
            .lock()
            .faults
            .fail_discard
            .insert(resource.into(), times);
        self
    }
    /// Every apply of `step` takes `delay` first.
    pub fn slow_apply(&self, step: &str, delay: Duration) -> &Self {
        self.world
            .lock()
            .faults
            .slow_apply
            .insert(step.into(), delay);
        self
    }
    /// Remove every fault.
    pub fn clear(&self) {
        self.world.lock().faults = FaultState::default();
    }
}

impl SimWorld {
    /// An empty world (seed 1).
    pub fn new() -> Self {
        Self::seeded(1)
    }

    /// An empty world whose random choices (flaky verifiers) follow `seed`.
    pub fn seeded(seed: u64) -> Self {
        let w = SimWorld::default();
        w.lock().rng = seed.max(1);
        w
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fault injection.
    pub fn faults(&self) -> Faults {
        Faults {
            world: self.clone(),
        }
    }

    /// A deterministic pseudo-random number in `[0, 1)`.
    pub fn random(&self) -> f64 {
        let mut g = self.lock();
        let mut x = g.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        g.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Read a key.
    pub fn get(&self, resource: &str, key: &str) -> Option<String> {
        self.lock()
            .resources
            .get(resource)
            .and_then(|r| r.get(key).cloned())
    }

    /// Write a key (as the application would, outside any plan).
    pub fn set(&self, resource: &str, key: &str, value: &str) {
        self.lock()
            .resources
            .entry(resource.into())
            .or_default()
            .insert(key.into(), value.into());
    }

    /// Remove a key.
    pub fn remove(&self, resource: &str, key: &str) {
        if let Some(r) = self.lock().resources.get_mut(resource) {
            r.remove(key);
        }
    }

    /// The state of one resource.
    pub fn resource_state(&self, resource: &str) -> ResourceState {
        self.lock()
            .resources
            .get(resource)
            .cloned()
            .unwrap_or_default()
    }

    /// The state of every resource (empty resources omitted).
    pub fn snapshot_state(&self) -> BTreeMap<String, ResourceState> {
        self.lock()
            .resources
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// How many snapshots the snapshot store holds (captured and not yet discarded).
    pub fn stored_snapshots(&self) -> usize {
        self.lock().snapshots.len()
    }

    /// Messages "sent" by irreversible steps.
    pub fn outbox(&self) -> Vec<String> {
        self.lock().outbox.clone()
    }

    /// A checkpoint of `resource`.
    pub fn checkpoint(&self, resource: &str) -> SimCheckpoint {
        SimCheckpoint {
            world: self.clone(),
            resource: resource.into(),
        }
    }

    /// Alter the stored content of a snapshot (to test digest refusal).
    pub fn dangerous_corrupt_snapshot(&self, snapshot_id: &str) {
        if let Some(s) = self.lock().snapshots.get_mut(snapshot_id) {
            s.insert("__corrupted__".into(), "1".into());
        }
    }

    /// The fingerprint of a resource state.
    pub fn fingerprint_of(state: &ResourceState) -> Digest {
        let mut h = crate::Hasher::new();
        for (k, v) in state {
            h.field(k.as_bytes()).field(v.as_bytes());
        }
        h.finish()
    }
}

/// A checkpoint of one simulated resource.
#[derive(Clone, Debug)]
pub struct SimCheckpoint {
    world: SimWorld,
    resource: String,
}

#[async_trait]
impl Checkpoint for SimCheckpoint {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
        let mut g = self.world.lock();
        let state = g.resources.get(&self.resource).cloned().unwrap_or_default();
        g.snapshot_counter += 1;
        let id = format!(
            "sim-{}-{}-{}",
            self.resource,
            ctx.run_id(),
            g.snapshot_counter
        );
        let digest = SimWorld::fingerprint_of(&state);
        let size = state.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        g.snapshots.insert(id.clone(), state);
        ctx.progress(&self.resource, 1, Some(1), "snapshots");
        Ok(Snapshot::new(
            id.clone(),
            self.resource.clone(),
            "sim.kv",
            digest,
            digest,
            serde_json::json!({ "stored_as": id }),
        )
        .with_size(size))
    }

    async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
        snapshot.ensure_resource(&self.resource)?;
        let key = snapshot
            .descriptor
            .get("stored_as")
            .and_then(|v| v.as_str())
            .unwrap_or(&snapshot.id)
            .to_string();
        let mut g = self.world.lock();
        g.admit(ctx)?;
        if take(&mut g.faults.fail_restore, &self.resource) {
            return Err(Error::transient(
                format!("injected restore failure of {}", self.resource),
                false,
            ));
        }
        let stored = g.snapshots.get(&key).cloned().ok_or_else(|| {
            Error::invalid(format!("snapshot {key} is not in the snapshot store"))
        })?;
        snapshot.ensure_digest(SimWorld::fingerprint_of(&stored))?;
        let current = g.resources.get(&self.resource).cloned().unwrap_or_default();
        let changed = stored
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .count()
            + current.keys().filter(|k| !stored.contains_key(*k)).count();
        g.resources.insert(self.resource.clone(), stored);
        Ok(Restored::by("copy").changed(changed as u64))
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        Ok(SimWorld::fingerprint_of(
            &self.world.resource_state(&self.resource),
        ))
    }

    async fn discard(&self, snapshot: &Snapshot, _ctx: &Context) -> Result<()> {
        snapshot.ensure_resource(&self.resource)?;
        let mut g = self.world.lock();
        if take(&mut g.faults.fail_discard, &self.resource) {
            return Err(Error::transient(
                format!("injected discard failure of {}", self.resource),
                false,
            ));
        }
        let key = snapshot
            .descriptor
            .get("stored_as")
            .and_then(|v| v.as_str())
            .unwrap_or(&snapshot.id)
            .to_string();
        g.snapshots.remove(&key);
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct SetReceipt {
    previous: Option<String>,
}

/// Sets `key` of `resource` to `value`; compensable (its receipt keeps the previous value).
#[derive(Clone, Debug)]
pub struct SetKey {
    id: String,
    world: SimWorld,
    resource: String,
    key: String,
    value: Option<String>,
    reversibility: Reversibility,
    effects: Option<Vec<crate::Effect>>,
}

impl SetKey {
    /// Declare what the step changes (see [`Step::effects`]) instead of "writes anywhere
    /// in its resource": e.g. a step that creates a key its revert removes, and a
    /// restore-only step writing only inside it, so the plan undoes the latter by the
    /// former's revert.
    pub fn with_effects(mut self, effects: Vec<crate::Effect>) -> Self {
        self.effects = Some(effects);
        self
    }

    /// Make this step restore-only: its revert does nothing, and a checkpoint (or the
    /// revert of the step that created what it writes) undoes it — like a backfill.
    pub fn restore_only(mut self) -> Self {
        self.reversibility = Reversibility::RestoreOnly;
        self
    }

    /// A compensable step setting `resource[key] = value`.
    pub fn new(id: &str, world: &SimWorld, resource: &str, key: &str, value: &str) -> Self {
        SetKey {
            id: id.into(),
            world: world.clone(),
            resource: resource.into(),
            key: key.into(),
            value: Some(value.into()),
            reversibility: Reversibility::Compensable,
            effects: None,
        }
    }

    /// A restore-only step deleting `resource[key]` (like a `DROP COLUMN`).
    pub fn delete(id: &str, world: &SimWorld, resource: &str, key: &str) -> Self {
        SetKey {
            id: id.into(),
            world: world.clone(),
            resource: resource.into(),
            key: key.into(),
            value: None,
            reversibility: Reversibility::RestoreOnly,
            effects: None,
        }
    }

    async fn injected(&self, ctx: &Context) -> Result<bool> {
        let delay = self.world.lock().faults.slow_apply.get(&self.id).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut g = self.world.lock();
        if take(&mut g.faults.fail_apply, &self.id) {
            return Err(Error::conflict(format!(
                "injected failure applying {} (run {})",
                self.id,
                ctx.run_id()
            )));
        }
        if take(&mut g.faults.transient_apply, &self.id) {
            return Err(Error::transient(
                format!("injected transient failure applying {}", self.id),
                false,
            ));
        }
        Ok(take(&mut g.faults.uncertain_apply, &self.id))
    }
}

#[async_trait]
impl Step for SetKey {
    fn id(&self) -> &str {
        &self.id
    }
    fn reversibility(&self) -> Reversibility {
        self.reversibility
    }
    fn touches(&self) -> Vec<String> {
        vec![self.resource.clone()]
    }
    fn effects(&self) -> Vec<crate::Effect> {
        match &self.effects {
            Some(e) => e.clone(),
            None => vec![crate::Effect::writes(&self.resource, None)],
        }
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "resource": self.resource, "key": self.key, "value": self.value })
    }
    fn describe(&self) -> String {
        match &self.value {
            Some(v) => format!("{}: set {}[{}] = {}", self.id, self.resource, self.key, v),
            None => format!("{}: delete {}[{}]", self.id, self.resource, self.key),
        }
    }

    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        let uncertain = self.injected(ctx).await?;
        let mut g = self.world.lock();
        g.admit(ctx)?;
        let marker = (ctx.run_id().to_string(), self.id.clone());
        let receipt = match g.markers.get(&marker) {
            Some(r) => r.clone(), // already applied in this run: idempotent
            None => {
                let res = g.resources.entry(self.resource.clone()).or_default();
                let previous = match &self.value {
                    Some(v) => res.insert(self.key.clone(), v.clone()),
                    None => res.remove(&self.key),
                };
                let r = Receipt::new(&SetReceipt { previous });
                g.markers.insert(marker, r.clone());
                r
            }
        };
        if uncertain {
            return Err(Error::Timeout {
                operation: format!("apply {}", self.id),
                after: Duration::from_millis(1),
            });
        }
        Ok(receipt)
    }

    async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        let mut g = self.world.lock();
        g.admit(ctx)?;
        if take(&mut g.faults.fail_revert, &self.id) {
            return Err(Error::transient(
                format!("injected failure reverting {}", self.id),
                false,
            ));
        }
        if self.reversibility != Reversibility::Compensable {
            return Ok(()); // undone by restoring the checkpoint
        }
        let marker = (ctx.run_id().to_string(), self.id.clone());
        let receipt = match (receipt, g.markers.get(&marker)) {
            (_, Some(m)) => m.clone(),
            (Some(r), None) => r.clone(),
            (None, None) => return Ok(()), // never applied
        };
        let prev: SetReceipt = receipt.parse()?;
        let res = g.resources.entry(self.resource.clone()).or_default();
        match prev.previous {
            Some(v) => res.insert(self.key.clone(), v),
            None => res.remove(&self.key),
        };
        g.markers.remove(&marker);
        Ok(())
    }
}

/// An irreversible step: "sends" a message to the world's outbox.
#[derive(Clone, Debug)]
pub struct SendMessage {
    id: String,
    world: SimWorld,
    message: String,
}

impl SendMessage {
    /// A step sending `message`.
    pub fn new(id: &str, world: &SimWorld, message: &str) -> Self {
        SendMessage {
            id: id.into(),
            world: world.clone(),
            message: message.into(),
        }
    }
}

#[async_trait]
impl Step for SendMessage {
    fn id(&self) -> &str {
        &self.id
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::Irreversible
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "message": self.message })
    }
    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        let mut g = self.world.lock();
        g.admit(ctx)?;
        let marker = (ctx.run_id().to_string(), self.id.clone());
        if !g.markers.contains_key(&marker) {
            g.outbox.push(self.message.clone());
            g.markers.insert(marker, Receipt::empty());
        }
        Ok(Receipt::empty())
    }
    async fn revert(&self, _receipt: Option<&Receipt>, _ctx: &Context) -> Result<()> {
        Err(Error::Irreversible {
            step: self.id.clone(),
            reason: "a sent message cannot be unsent".into(),
        })
    }
}

/// Passes when `resource[key]` equals the expected value.
#[derive(Clone, Debug)]
pub struct KeyEquals {
    id: String,
    world: SimWorld,
    resource: String,
    key: String,
    expected: Option<String>,
}

impl KeyEquals {
    /// A verifier of `resource[key] == expected` (`None`: absent).
    pub fn new(
        id: &str,
        world: &SimWorld,
        resource: &str,
        key: &str,
        expected: Option<&str>,
    ) -> Self {
        KeyEquals {
            id: id.into(),
            world: world.clone(),
            resource: resource.into(),
            key: key.into(),
            expected: expected.map(Into::into),
        }
    }
}

#[async_trait]
impl Verifier for KeyEquals {
    fn id(&self) -> &str {
        &self.id
    }
    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let actual = self.world.get(&self.resource, &self.key);
        Ok(Verdict::check(
            actual == self.expected,
            format!(
                "{}[{}] is {:?}, expected {:?}",
                self.resource, self.key, actual, self.expected
            ),
        )
        .with_evidence(serde_json::json!({ "actual": actual, "expected": self.expected })))
    }
}

/// A scripted health probe: returns the scripted verdicts in turn (the last one repeats),
/// optionally failing at random with probability `flakiness`, after `delay`.
#[derive(Clone, Debug)]
pub struct HealthProbe {
    id: String,
    world: SimWorld,
    script: Arc<Mutex<std::collections::VecDeque<f64>>>,
    last: Arc<Mutex<f64>>,
    flakiness: f64,
    delay: Duration,
}

impl HealthProbe {
    /// A probe reporting the error rates in `script` in turn; a verdict fails when the
    /// rate is above 0.05.
    pub fn new(id: &str, world: &SimWorld, script: &[f64]) -> Self {
        HealthProbe {
            id: id.into(),
            world: world.clone(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            last: Arc::new(Mutex::new(0.0)),
            flakiness: 0.0,
            delay: Duration::ZERO,
        }
    }
    /// Fail at random (seeded by the world) with this probability.
    pub fn flaky(mut self, p: f64) -> Self {
        self.flakiness = p;
        self
    }
    /// Take this long to answer.
    pub fn slow(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

#[async_trait]
impl Verifier for HealthProbe {
    fn id(&self) -> &str {
        &self.id
    }
    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let rate = {
            let mut s = self.script.lock().unwrap_or_else(|e| e.into_inner());
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = s.pop_front() {
                *last = r;
            }
            *last
        };
        if self.flakiness > 0.0 && self.world.random() < self.flakiness {
            return Err(Error::transient("probe timed out", false));
        }
        Ok(
            Verdict::check(rate <= 0.05, format!("error rate {:.1}%", rate * 100.0))
                .with_value(rate)
                .with_evidence(serde_json::json!({ "error_rate": rate })),
        )
    }
}

/// A journal that "crashes" the process after `n` successful appends: every later append
/// fails with [`Error::Crashed`], so the executor stops where a killed process would.
pub struct CrashAfter {
    inner: Arc<dyn Journal>,
    remaining: AtomicU64,
}

impl CrashAfter {
    /// Wrap `inner`, allowing `n` more appends.
    pub fn new(inner: Arc<dyn Journal>, n: u64) -> Self {
        CrashAfter {
            inner,
            remaining: AtomicU64::new(n),
        }
    }
}

#[async_trait]
impl Journal for CrashAfter {
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
        let ok = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !ok {
            return Err(Error::Crashed(format!(
                "before journaling {}",
                entry.kind()
            )));
        }
        self.inner.append(run_id, entry, epoch).await
    }
    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        self.inner.records(run_id).await
    }
    async fn lost_tail(&self, run_id: &str) -> Result<Option<crate::journal::LostTail>> {
        self.inner.lost_tail(run_id).await
    }
    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        self.inner.lease(key).await
    }
    async fn publish_progress(
        &self,
        run_id: &str,
        progress: &crate::journal::LiveProgress,
    ) -> Result<()> {
        self.inner.publish_progress(run_id, progress).await
    }
    async fn progress(&self, run_id: &str) -> Result<Vec<crate::journal::LiveProgress>> {
        self.inner.progress(run_id).await
    }
    async fn runs(&self) -> Result<Vec<String>> {
        self.inner.runs().await
    }
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        self.inner.release_lease(key, holder).await
    }
}

/// A serializable description of a random simulated plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimPlanSpec {
    /// Number of resources (`r0`, `r1`…), each with a checkpoint.
    pub resources: u8,
    /// Initial keys per resource.
    pub initial_keys: u8,
    /// The steps, in insertion order.
    pub steps: Vec<SimStepSpec>,
}

/// One step of a [`SimPlanSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimStepSpec {
    /// Resource index.
    pub resource: u8,
    /// Key index.
    pub key: u8,
    /// `Some(v)`: set to `v` (compensable); `None`: delete (restore-only).
    pub value: Option<u8>,
    /// Indices of earlier steps this one depends on.
    pub deps: Vec<usize>,
}

impl SimPlanSpec {
    /// A small fixed example: three steps over two resources.
    pub fn example() -> Self {
        SimPlanSpec {
            resources: 2,
            initial_keys: 2,
            steps: vec![
                SimStepSpec {
                    resource: 0,
                    key: 0,
                    value: Some(7),
                    deps: vec![],
                },
                SimStepSpec {
                    resource: 1,
                    key: 3,
                    value: Some(1),
                    deps: vec![0],
                },
                SimStepSpec {
                    resource: 0,
                    key: 1,
                    value: None,
                    deps: vec![0],
                },
            ],
        }
    }

    /// Parse a spec from JSON.
    ///
    /// # Errors
    /// [`Error::Invalid`] for malformed input.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("malformed plan spec: {e}")))
    }

    /// Write the initial keys into `world`.
    pub fn seed(&self, world: &SimWorld) {
        for r in 0..self.resources {
            for k in 0..self.initial_keys {
                world.set(&format!("r{r}"), &format!("k{k}"), &format!("init{r}{k}"));
            }
        }
    }

    /// Build the plan over `world` (step ids `s0`, `s1`…).
    ///
    /// # Errors
    /// [`Error::Plan`] when the spec is not a valid plan (unknown resource or dependency).
    pub fn build(&self, world: &SimWorld) -> Result<Plan> {
        let mut b = Plan::builder("sim-plan");
        for r in 0..self.resources {
            let name = format!("r{r}");
            b = b.checkpoint(&name, world.checkpoint(&name));
        }
        for (i, s) in self.steps.iter().enumerate() {
            let res = format!("r{}", s.resource);
            let id = format!("s{i}");
            let key = format!("k{}", s.key);
            let step = match s.value {
                Some(v) => SetKey::new(&id, world, &res, &key, &format!("v{i}-{v}")),
                None => SetKey::delete(&id, world, &res, &key),
            };
            let deps: Vec<String> = s.deps.iter().map(|d| format!("s{d}")).collect();
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            b = b.step(&res, step, &deps);
        }
        Ok(b.build()?)
    }

    /// The state after applying every step of `plan` to `baseline`.
    pub fn target(
        &self,
        plan: &Plan,
        baseline: &BTreeMap<String, ResourceState>,
    ) -> BTreeMap<String, ResourceState> {
        let mut state = baseline.clone();
        for ps in plan.steps() {
            let i: usize = ps.id()[1..].parse().unwrap_or(0);
            let s = &self.steps[i];
            let res = state.entry(format!("r{}", s.resource)).or_default();
            match s.value {
                Some(v) => {
                    res.insert(format!("k{}", s.key), format!("v{i}-{v}"));
                }
                None => {
                    res.remove(&format!("k{}", s.key));
                }
            }
        }
        state.retain(|_, v| !v.is_empty());
        state
    }
}

/// A fault schedule for a simulated run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FaultSchedule {
    /// Apply of this step index fails (permanently).
    pub fail_apply: Option<usize>,
    /// Apply of this step index takes effect and then times out (uncertain), once.
    pub uncertain_apply: Option<usize>,
    /// Revert of this step index fails this many times.
    pub fail_revert: Option<(usize, u32)>,
    /// A health trigger fails during the soak window.
    pub unhealthy: bool,
}

impl FaultSchedule {
    /// Install the faults into `world`.
    pub fn install(&self, world: &SimWorld) {
        let f = world.faults();
        if let Some(i) = self.fail_apply {
            f.fail_apply(&format!("s{i}"), u32::MAX);
        }
        if let Some(i) = self.uncertain_apply {
            f.uncertain_apply(&format!("s{i}"), 1);
        }
        if let Some((i, n)) = self.fail_revert {
            f.fail_revert(&format!("s{i}"), n);
        }
    }
}

/// Random plans: 1–3 resources, 1–8 steps, random acyclic dependencies.
#[cfg(feature = "proptest")]
#[cfg_attr(docsrs, doc(cfg(feature = "proptest")))]
pub fn arb_plan() -> impl Strategy<Value = SimPlanSpec> {
    (1u8..=3, 0u8..=3, 1usize..=8).prop_flat_map(|(resources, initial_keys, n)| {
        let steps = (0..n)
            .map(move |i| {
                (
                    0..resources,
                    0u8..5,
                    prop::option::weighted(0.8, any::<u8>()),
                    prop::collection::vec(0..i.max(1), 0..=i.min(2)),
                )
                    .prop_map(move |(resource, key, value, deps)| {
                        let mut deps: Vec<usize> = if i == 0 { vec![] } else { deps };
                        deps.sort_unstable();
                        deps.dedup();
                        SimStepSpec {
                            resource,
                            key,
                            value,
                            deps,
                        }
                    })
            })
            .collect::<Vec<_>>();
        steps.prop_map(move |steps| SimPlanSpec {
            resources,
            initial_keys,
            steps,
        })
    })
}

/// Random fault schedules for a plan of `n` steps.
#[cfg(feature = "proptest")]
#[cfg_attr(docsrs, doc(cfg(feature = "proptest")))]
pub fn arb_faults(n: usize) -> impl Strategy<Value = FaultSchedule> {
    (
        prop::option::weighted(0.5, 0..n),
        prop::option::weighted(0.3, 0..n),
        prop::option::weighted(0.3, (0..n, 1u32..4)),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(fail_apply, uncertain_apply, fail_revert, unhealthy)| FaultSchedule {
                fail_apply,
                uncertain_apply,
                fail_revert,
                unhealthy,
            },
        )
}
