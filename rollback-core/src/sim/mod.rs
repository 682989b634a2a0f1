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

mod checkpoint;
mod journal;
mod spec;
mod steps;
mod verifiers;

pub use checkpoint::SimCheckpoint;
pub use journal::CrashAfter;
#[cfg(feature = "proptest")]
pub use spec::{arb_faults, arb_plan};
pub use spec::{FaultSchedule, SimPlanSpec, SimStepSpec};
pub use steps::{SendMessage, SetKey};
pub use verifiers::{HealthProbe, KeyEquals};

use crate::{Context, Digest, Receipt, Result};
use std::collections::BTreeMap;
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
/// [`Error::Fenced`](crate::Error::Fenced) — what an adapter over a real backend does in its transaction.
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
