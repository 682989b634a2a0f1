//! [`Plan`]: a validated DAG of steps with checkpoints, verifiers, triggers and guards.
//!
//! The plan's files: `builder` gathers steps, checkpoints and verifiers and validates
//! them into a [`Plan`] (with the graph checks in `validate`); `review` is what a
//! go/no-go review reads (the dry run and the risks); `options` holds per-step options
//! and health triggers; `error` why a plan was refused.

mod builder;
mod error;
mod options;
mod review;
mod validate;

pub use builder::PlanBuilder;
pub use error::PlanError;
pub use options::{StepOptions, Trigger};
pub use review::{DryRun, DryStep, Risk};

use crate::{Checkpoint, Digest, Step, Verifier};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The role that leads a rollback (see [`PlanBuilder::owner`]).
pub const ROLLBACK_LEAD: &str = "rollback lead";

/// How a rollback undoes one step, decided when the plan is built (see [`Plan::undo`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Undo {
    /// Its own revert (a compensation).
    Compensation,
    /// The reverts of these earlier steps, which remove everything it wrote (it writes
    /// only inside what they create): no restore is needed for it.
    CompensationOf {
        /// The covering steps.
        steps: Vec<String>,
    },
    /// Restoring the checkpoints of these resources. Unless a checkpoint is
    /// [`selective`](Checkpoint::selective), its restore also discards every write made to
    /// the resource since capture.
    Restore {
        /// The resources.
        resources: Vec<String>,
    },
    /// Nothing: an irreversible step approved to stay applied.
    Stays,
}

/// A step in a plan, with its component tag and dependencies.
#[derive(Clone)]
pub struct PlannedStep {
    /// The step.
    pub step: Arc<dyn Step>,
    /// Component tag ("database", "storage", "flags"...).
    pub component: String,
    /// Ids of the steps that must be applied first.
    pub deps: Vec<String>,
    /// Execution options.
    pub options: StepOptions,
}

impl PlannedStep {
    /// The step id.
    pub fn id(&self) -> &str {
        self.step.id()
    }
}

/// A checkpoint in a plan, with its component tag.
#[derive(Clone)]
pub struct PlannedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Arc<dyn Checkpoint>,
    /// Component tag.
    pub component: String,
}

impl PlannedCheckpoint {
    /// The covered resource.
    pub fn resource(&self) -> &str {
        self.checkpoint.resource()
    }
}

/// A validated plan. Build one with [`Plan::builder`].
///
/// ```
/// use rollback_core::sim::{SimWorld, SetKey};
/// use rollback_core::Plan;
/// let world = SimWorld::new();
/// let plan = Plan::builder("demo")
///     .checkpoint("db", world.checkpoint("db"))
///     .step("db", SetKey::new("s1", &world, "db", "k", "v"), &[])
///     .step("db", SetKey::new("s2", &world, "db", "k2", "v"), &["s1"])
///     .build()
///     .unwrap();
/// assert_eq!(plan.steps().len(), 2);
/// println!("{}", plan.dry_run());
/// ```
#[derive(Clone)]
pub struct Plan {
    pub(crate) name: String,
    pub(crate) steps: Vec<PlannedStep>,
    pub(crate) checkpoints: Vec<PlannedCheckpoint>,
    pub(crate) preconditions: Vec<Arc<dyn Verifier>>,
    pub(crate) post_step: Vec<(String, Arc<dyn Verifier>)>,
    pub(crate) finals: Vec<Arc<dyn Verifier>>,
    pub(crate) triggers: Vec<Trigger>,
    pub(crate) soak: Duration,
    pub(crate) approvals: BTreeMap<String, String>,
    pub(crate) objectives: Objectives,
    pub(crate) owners: BTreeMap<String, String>,
    /// How each step is undone (by step id).
    pub(crate) undo: BTreeMap<String, Undo>,
    /// Resources whose baseline snapshot a verifier reads.
    pub(crate) read_baselines: BTreeSet<String>,
    /// Capture every checkpoint in full, even those no undo path restores.
    pub(crate) capture_all: bool,
    pub(crate) digest: Digest,
}

/// Recovery objectives a plan declares: the run report says whether a rollback met them,
/// and a drill measures them (see the `RunReport` fields `rto_met` / `rpo_met`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Objectives {
    /// Longest acceptable time from the rollback trigger to every resource verified back
    /// at its baseline, in milliseconds.
    pub rto_ms: Option<u64>,
    /// Longest acceptable window of writes a checkpoint restore may discard, in
    /// milliseconds (0: every change must be undone by compensation).
    pub rpo_ms: Option<u64>,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field(
                "steps",
                &self.steps.iter().map(|s| s.id()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Plan {
    /// How a rollback undoes step `id`: its own revert, the revert of earlier steps that
    /// remove what it wrote, a checkpoint restore, or nothing (approved to stay).
    ///
    /// ```
    /// use rollback_core::{Effect, Plan, Undo};
    /// use rollback_core::sim::{SetKey, SimWorld};
    /// let w = SimWorld::new();
    /// let plan = Plan::builder("p")
    ///     .checkpoint("db", w.checkpoint("db"))
    ///     .step("db", SetKey::new("set", &w, "db", "k", "v"), &[])
    ///     .step("db", SetKey::delete("drop", &w, "db", "old"), &["set"])
    ///     .build()?;
    /// assert_eq!(plan.undo("set"), Some(&Undo::Compensation));
    /// assert_eq!(plan.undo("drop"), Some(&Undo::Restore { resources: vec!["db".into()] }));
    /// # Ok::<(), rollback_core::PlanError>(())
    /// ```
    pub fn undo(&self, id: &str) -> Option<&Undo> {
        self.undo.get(id)
    }

    /// Whether the run takes a full snapshot of `resource`: a step undone by a restore
    /// touches it, a verifier reads its baseline snapshot ([`Verifier::baselines`]), or the
    /// plan captures every checkpoint in full ([`PlanBuilder::capture_all_checkpoints`]). A checkpoint no undo path restores is
    /// only fingerprinted at the start (its baseline for parity), not copied.
    pub fn needs_snapshot(&self, resource: &str) -> bool {
        self.capture_all
            || self.read_baselines.contains(resource)
            || self.undo.values().any(|u| {
                matches!(u, Undo::Restore { resources } if resources.iter().any(|r| r == resource))
            })
    }

    /// The recovery objectives the plan declares.
    pub fn objectives(&self) -> Objectives {
        self.objectives
    }

    /// Who owns what during the run (role → person or team), as declared.
    pub fn owners(&self) -> &BTreeMap<String, String> {
        &self.owners
    }

    fn is_selective(&self, resource: &str) -> bool {
        self.checkpoints
            .iter()
            .any(|c| c.resource() == resource && c.checkpoint.selective())
    }

    /// The plan's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// blake3 over the plan's declared structure (steps with specs, dependencies,
    /// components, checkpoints, verifiers, approvals).
    pub fn digest(&self) -> Digest {
        self.digest
    }
    /// Steps in the order they are applied (a topological order of the DAG).
    pub fn steps(&self) -> &[PlannedStep] {
        &self.steps
    }
    /// Checkpoints.
    pub fn checkpoints(&self) -> &[PlannedCheckpoint] {
        &self.checkpoints
    }
    /// The soak window.
    pub fn soak(&self) -> Duration {
        self.soak
    }

    pub(crate) fn step(&self, id: &str) -> Option<&PlannedStep> {
        self.steps.iter().find(|s| s.id() == id)
    }

    /// The steps rolled back under the component policy when `failed` fails: every step
    /// of its component and every step depending on those, transitively.
    pub fn component_scope(&self, failed: &str) -> BTreeSet<String> {
        let mut scope = BTreeSet::new();
        if let Some(f) = self.step(failed) {
            for s in &self.steps {
                if s.component == f.component {
                    scope.insert(s.id().to_string());
                }
            }
        }
        // Steps are in topological order: a forward pass closes over dependents. A step in
        // scope that is undone by the revert of earlier steps brings those into scope (and
        // their dependents with them).
        loop {
            for s in &self.steps {
                if s.deps.iter().any(|d| scope.contains(d)) {
                    scope.insert(s.id().to_string());
                }
            }
            let covering: Vec<String> = scope
                .iter()
                .filter_map(|id| match self.undo.get(id) {
                    Some(Undo::CompensationOf { steps }) => Some(steps.clone()),
                    _ => None,
                })
                .flatten()
                .filter(|c| !scope.contains(c))
                .collect();
            if covering.is_empty() {
                return scope;
            }
            scope.extend(covering);
        }
    }

    /// The checkpoints whose resources are touched by any step of `steps`.
    pub(crate) fn checkpoints_for(&self, steps: &BTreeSet<String>) -> Vec<String> {
        let touched: BTreeSet<String> = self
            .steps
            .iter()
            .filter(|s| steps.contains(s.id()))
            .flat_map(|s| s.step.touches())
            .collect();
        self.checkpoints
            .iter()
            .map(|c| c.resource().to_string())
            .filter(|r| touched.contains(r))
            .collect()
    }
}
