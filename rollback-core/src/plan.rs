//! [`Plan`]: a validated DAG of steps with checkpoints, verifiers, triggers and guards.

use crate::{Checkpoint, Digest, Effect, Reversibility, Step, Verifier};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The role that leads a rollback (see [`PlanBuilder::owner`]).
pub const ROLLBACK_LEAD: &str = "rollback lead";

/// Why a plan was refused. Every variant names the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Two steps share an id.
    #[error("plan {plan}: duplicate step id {step:?}")]
    DuplicateStep {
        /// Plan name.
        plan: String,
        /// The id.
        step: String,
    },
    /// Two checkpoints cover the same resource.
    #[error("plan {plan}: two checkpoints of resource {resource:?}")]
    DuplicateCheckpoint {
        /// Plan name.
        plan: String,
        /// The resource.
        resource: String,
    },
    /// Two verifiers share an id.
    #[error("plan {plan}: duplicate verifier id {verifier:?}")]
    DuplicateVerifier {
        /// Plan name.
        plan: String,
        /// The id.
        verifier: String,
    },
    /// A step depends on a step that is not in the plan.
    #[error("plan {plan}: step {step:?} depends on unknown step {dependency:?}")]
    UnknownDependency {
        /// Plan name.
        plan: String,
        /// The dependent step.
        step: String,
        /// The missing dependency.
        dependency: String,
    },
    /// A post-step verifier or option names a step that is not in the plan.
    #[error("plan {plan}: {what} names unknown step {step:?}")]
    UnknownStep {
        /// Plan name.
        plan: String,
        /// What refers to it.
        what: String,
        /// The missing step.
        step: String,
    },
    /// The dependencies form a cycle.
    #[error("plan {plan}: dependency cycle {}", cycle.join(" -> "))]
    Cycle {
        /// Plan name.
        plan: String,
        /// The steps on the cycle, first repeated at the end.
        cycle: Vec<String>,
    },
    /// A restore-only step touches a resource no checkpoint covers.
    #[error("plan {plan}: step {step:?} can only be undone by restoring a checkpoint, but nothing covers {}", resources.join(", "))]
    Uncovered {
        /// Plan name.
        plan: String,
        /// The step.
        step: String,
        /// Resources without a checkpoint (empty: the step declares none it touches).
        resources: Vec<String>,
    },
    /// An irreversible step is neither covered by checkpoints nor explicitly approved.
    #[error("plan {plan}: step {step:?} is irreversible and no checkpoint covers it; approve it with `approve_irreversible` if this is intended")]
    UnapprovedIrreversible {
        /// Plan name.
        plan: String,
        /// The step.
        step: String,
    },
    /// A plan has no steps.
    #[error("plan {plan}: no steps")]
    Empty {
        /// Plan name.
        plan: String,
    },
    /// A step declares an effect on a resource it does not list in `touches`.
    #[error("plan {plan}: step {step:?} declares an effect on {resource:?}, which its touches() does not list")]
    EffectOutsideTouches {
        /// Plan name.
        plan: String,
        /// The step.
        step: String,
        /// The resource.
        resource: String,
    },
    /// A name that keys journals, leases or reports is empty (or only whitespace): the
    /// plan's name, a step id, a verifier id, a checkpoint's resource.
    #[error("plan {plan:?}: {what} is empty")]
    EmptyName {
        /// Plan name.
        plan: String,
        /// What is empty: `plan name`, `a step id`, `a verifier id`, `a checkpoint resource`.
        what: String,
    },
}

/// Per-step execution options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOptions {
    /// Give up on one attempt after this long (the effect is then uncertain). `None`: no limit.
    pub timeout: Option<Duration>,
    /// Retries after a transient error (apply and revert alike).
    pub retries: u32,
    /// First backoff; doubled after each retry.
    pub backoff: Duration,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            timeout: None,
            retries: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

impl StepOptions {
    /// With a timeout per attempt.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// With `n` retries on transient errors.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
    /// With this first backoff.
    pub fn backoff(mut self, d: Duration) -> Self {
        self.backoff = d;
        self
    }
}

/// A health trigger: a verifier polled during the soak window; when it fails
/// `max_failures` times within the last `window` polls, rollback starts by itself.
#[derive(Clone)]
pub struct Trigger {
    pub(crate) verifier: Arc<dyn Verifier>,
    pub(crate) every: Duration,
    pub(crate) window: usize,
    pub(crate) max_failures: usize,
    pub(crate) max_value: Option<f64>,
}

impl Trigger {
    /// A trigger on `verifier`: polled every second, breached by 1 failure in 1 poll.
    ///
    /// A shared verifier (`Arc<V>`, `Arc<dyn Verifier>`) or a boxed one is a verifier too,
    /// so the caller can keep a handle on it.
    pub fn new(verifier: impl Verifier + 'static) -> Self {
        Trigger {
            verifier: Arc::new(verifier),
            every: Duration::from_secs(1),
            window: 1,
            max_failures: 1,
            max_value: None,
        }
    }
    /// Poll interval.
    pub fn every(mut self, d: Duration) -> Self {
        self.every = d;
        self
    }
    /// Breached when at least `max_failures` of the last `window` polls failed.
    pub fn threshold(mut self, max_failures: usize, window: usize) -> Self {
        self.max_failures = max_failures.max(1);
        self.window = window.max(self.max_failures);
        self
    }
    /// Also count a poll as failed when the verdict's value exceeds `max` (an error rate,
    /// a latency).
    pub fn max_value(mut self, max: f64) -> Self {
        self.max_value = Some(max);
        self
    }
    /// The trigger's verifier id.
    pub fn id(&self) -> &str {
        self.verifier.id()
    }
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trigger")
            .field("verifier", &self.verifier.id())
            .field("every", &self.every)
            .field(
                "threshold",
                &format!("{}/{}", self.max_failures, self.window),
            )
            .field("max_value", &self.max_value)
            .finish()
    }
}

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

/// Builds a [`Plan`]; [`PlanBuilder::build`] validates it.
pub struct PlanBuilder {
    name: String,
    steps: Vec<PlannedStep>,
    checkpoints: Vec<PlannedCheckpoint>,
    preconditions: Vec<Arc<dyn Verifier>>,
    post_step: Vec<(String, Arc<dyn Verifier>)>,
    finals: Vec<Arc<dyn Verifier>>,
    triggers: Vec<Trigger>,
    soak: Duration,
    approvals: BTreeMap<String, String>,
    objectives: Objectives,
    owners: BTreeMap<String, String>,
    options: Vec<(String, StepOptions)>,
    default_options: StepOptions,
    capture_all: bool,
}

impl Plan {
    /// Start building a plan called `name` (the name also keys the plan's lease).
    pub fn builder(name: impl Into<String>) -> PlanBuilder {
        PlanBuilder {
            name: name.into(),
            steps: Vec::new(),
            checkpoints: Vec::new(),
            preconditions: Vec::new(),
            post_step: Vec::new(),
            finals: Vec::new(),
            triggers: Vec::new(),
            soak: Duration::ZERO,
            approvals: BTreeMap::new(),
            objectives: Objectives::default(),
            owners: BTreeMap::new(),
            options: Vec::new(),
            default_options: StepOptions::default(),
            capture_all: false,
        }
    }

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

    /// What a go/no-go review should weigh before running the plan: steps whose rollback
    /// discards writes (restore-only steps), irreversible steps, steps no verifier checks,
    /// resources changed without a checkpoint, no health trigger, no recovery objectives,
    /// no rollback lead. Empty when none applies. Also part of [`Plan::dry_run`].
    ///
    /// ```
    /// use rollback_core::{Plan, Risk, ROLLBACK_LEAD};
    /// use rollback_core::sim::{KeyEquals, SetKey, SimWorld};
    /// use std::time::Duration;
    ///
    /// let w = SimWorld::new();
    /// let plan = Plan::builder("rename")
    ///     .checkpoint("db", w.checkpoint("db"))
    ///     .step("db", SetKey::new("set-k", &w, "db", "k", "v2"), &[])
    ///     .verify_after("set-k", KeyEquals::new("k-is-v2", &w, "db", "k", Some("v2")))
    ///     .rto_target(Duration::from_secs(60))
    ///     .owner(ROLLBACK_LEAD, "db on-call")
    ///     .build()?;
    /// // Verified, covered, compensable, with a target and a lead: only the missing soak
    /// // window is left for the review.
    /// assert_eq!(plan.risks(), vec![Risk::NoSoakTrigger]);
    /// assert!(plan.risks()[0].to_string().contains("no soak window"));
    /// # Ok::<(), rollback_core::PlanError>(())
    /// ```
    pub fn risks(&self) -> Vec<Risk> {
        let covered: BTreeSet<&str> = self.checkpoints.iter().map(|c| c.resource()).collect();
        let mut out = Vec::new();
        for s in &self.steps {
            let step = s.id().to_string();
            let touches = s.step.touches();
            match s.step.reversibility() {
                Reversibility::RestoreOnly => {
                    if let Some(Undo::Restore { resources }) = self.undo.get(s.id()) {
                        let (selective, full): (Vec<String>, Vec<String>) = resources
                            .iter()
                            .cloned()
                            .partition(|r| self.is_selective(r));
                        if !full.is_empty() {
                            out.push(Risk::RestoreDiscardsWrites {
                                step: step.clone(),
                                resources: full,
                            });
                        }
                        if !selective.is_empty() {
                            out.push(Risk::UndoLogConflicts {
                                step: step.clone(),
                                resources: selective,
                            });
                        }
                    }
                }
                Reversibility::Irreversible => match self.approvals.get(s.id()) {
                    Some(why) => out.push(Risk::IrreversibleApproved {
                        step: step.clone(),
                        approval: why.clone(),
                    }),
                    None => out.push(Risk::Irreversible {
                        step: step.clone(),
                        resources: touches.clone(),
                    }),
                },
                Reversibility::Compensable => {}
            }
            let uncovered: Vec<String> = touches
                .iter()
                .filter(|t| !covered.contains(t.as_str()))
                .cloned()
                .collect();
            if !uncovered.is_empty() {
                out.push(Risk::NoCheckpoint {
                    step: step.clone(),
                    resources: uncovered,
                });
            }
            if !self.post_step.iter().any(|(id, _)| id == s.id()) && self.finals.is_empty() {
                out.push(Risk::Unverified { step });
            }
        }
        if self.triggers.is_empty() || self.soak.is_zero() {
            out.push(Risk::NoSoakTrigger);
        }
        if self.objectives.rto_ms.is_none() {
            out.push(Risk::NoRtoTarget);
        }
        if !self.owners.keys().any(|r| r == ROLLBACK_LEAD) {
            out.push(Risk::NoRollbackLead);
        }
        out
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

    /// One line of the rollback path: how step `s` is undone.
    fn undo_line(&self, s: &PlannedStep) -> String {
        let selective = |rs: &[String]| !rs.is_empty() && rs.iter().all(|r| self.is_selective(r));
        match self.undo.get(s.id()) {
            Some(Undo::Compensation) | None => format!("revert {} (own compensation)", s.id()),
            Some(Undo::CompensationOf { steps }) => format!(
                "{} is undone by the revert of {} (it removes everything {} wrote): no restore",
                s.id(),
                steps.join(", "),
                s.id()
            ),
            Some(Undo::Restore { resources }) if selective(resources) => format!(
                "{} is undone by the undo log of {} (the run's own writes only; the application's are kept)",
                s.id(),
                resources.join(", ")
            ),
            Some(Undo::Restore { resources }) => format!(
                "{} is undone by restoring {} (discards the application's writes to it since capture)",
                s.id(),
                resources.join(", ")
            ),
            Some(Undo::Stays) => format!(
                "{} is IRREVERSIBLE and stays applied (approved: {})",
                s.id(),
                self.approvals.get(s.id()).map(String::as_str).unwrap_or("-")
            ),
        }
    }

    /// The exact sequence a run would follow, and its rollback path.
    pub fn dry_run(&self) -> DryRun {
        let covered: BTreeSet<&str> = self.checkpoints.iter().map(|c| c.resource()).collect();
        let apply = self
            .steps
            .iter()
            .map(|s| DryStep {
                id: s.id().to_string(),
                component: s.component.clone(),
                reversibility: s.step.reversibility(),
                depends_on: s.deps.clone(),
                description: s.step.describe(),
                touches: s.step.touches(),
                effects: s.step.effects(),
                undo: self.undo.get(s.id()).cloned().unwrap_or(Undo::Compensation),
                verifiers_after: self
                    .post_step
                    .iter()
                    .filter(|(id, _)| id == s.id())
                    .map(|(_, v)| v.id().to_string())
                    .collect(),
            })
            .collect::<Vec<_>>();
        let _ = &covered;
        let mut rollback = Vec::new();
        for s in self.steps.iter().rev() {
            rollback.push(self.undo_line(s));
        }
        for c in &self.checkpoints {
            let r = c.resource();
            rollback.push(if c.checkpoint.selective() {
                format!("undo the run's own writes to {r} from its undo log if it differs from its baseline (the application's writes are kept)")
            } else if self.needs_snapshot(r) {
                format!("restore {r} if it differs from its baseline (discards every write made to it since capture)")
            } else {
                format!("{r} is not restored (compensations undo every change to it): only fingerprinted at the start and checked after")
            });
        }
        for c in &self.checkpoints {
            rollback.push(format!(
                "prove parity of {} with its baseline fingerprint",
                c.resource()
            ));
        }
        DryRun {
            plan: self.name.clone(),
            digest: self.digest,
            checkpoints: self
                .checkpoints
                .iter()
                .map(|c| c.resource().to_string())
                .collect(),
            preconditions: self
                .preconditions
                .iter()
                .map(|v| v.id().to_string())
                .collect(),
            apply,
            final_verifiers: self.finals.iter().map(|v| v.id().to_string()).collect(),
            triggers: self.triggers.iter().map(|t| t.id().to_string()).collect(),
            soak_ms: self.soak.as_millis() as u64,
            rollback,
            objectives: self.objectives,
            owners: self.owners.clone(),
            risks: self.risks(),
        }
    }
}

impl PlanBuilder {
    /// Add a checkpoint of a resource, tagged with `component`. A shared checkpoint
    /// (`Arc<C>`, `Arc<dyn Checkpoint>`) or a boxed one is a checkpoint too.
    pub fn checkpoint(mut self, component: &str, cp: impl Checkpoint + 'static) -> Self {
        self.checkpoints.push(PlannedCheckpoint {
            checkpoint: Arc::new(cp),
            component: component.into(),
        });
        self
    }
    /// Add a step of `component` that runs after the steps `deps`. A shared step
    /// (`Arc<S>`, `Arc<dyn Step>`) or a boxed one is a step too.
    pub fn step(mut self, component: &str, step: impl Step + 'static, deps: &[&str]) -> Self {
        self.steps.push(PlannedStep {
            step: Arc::new(step),
            component: component.into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            options: StepOptions::default(),
        });
        self
    }
    /// Options for one step (by id).
    pub fn step_options(mut self, step: &str, options: StepOptions) -> Self {
        self.options.push((step.to_string(), options));
        self
    }
    /// Options for every step without its own.
    pub fn default_step_options(mut self, options: StepOptions) -> Self {
        self.default_options = options;
        self
    }
    /// A verifier that must pass before anything changes.
    pub fn precondition(mut self, v: impl Verifier + 'static) -> Self {
        self.preconditions.push(Arc::new(v));
        self
    }
    /// A verifier run after the step `step` is applied; failing it rolls back.
    pub fn verify_after(mut self, step: &str, v: impl Verifier + 'static) -> Self {
        self.post_step.push((step.to_string(), Arc::new(v)));
        self
    }
    /// A verifier run after every step is applied; failing it rolls back.
    pub fn verify_final(mut self, v: impl Verifier + 'static) -> Self {
        self.finals.push(Arc::new(v));
        self
    }
    /// A health trigger polled during the soak window.
    pub fn trigger(mut self, t: Trigger) -> Self {
        self.triggers.push(t);
        self
    }
    /// How long to observe triggers after the final verifiers pass, before committing.
    pub fn soak(mut self, d: Duration) -> Self {
        self.soak = d;
        self
    }
    /// Capture every checkpoint in full, even those no undo path needs (by default a
    /// checkpoint whose changes are all undone by compensations is only fingerprinted, so a
    /// backfill of a new column does not copy a big table). A full snapshot is then there
    /// to fall back on should a compensation fail, at the price of the copy.
    pub fn capture_all_checkpoints(mut self) -> Self {
        self.capture_all = true;
        self
    }
    /// Explicitly approve an irreversible step that no checkpoint covers, with the reason
    /// (kept in the plan digest and the report).
    pub fn approve_irreversible(mut self, step: &str, reason: &str) -> Self {
        self.approvals.insert(step.to_string(), reason.to_string());
        self
    }

    /// Declare the recovery time objective: the longest acceptable time from a rollback's
    /// trigger to every resource verified back at its baseline. The report says whether a
    /// rollback met it.
    pub fn rto_target(mut self, d: Duration) -> Self {
        self.objectives.rto_ms = Some(d.as_millis() as u64);
        self
    }

    /// Declare the recovery point objective: the longest acceptable window of writes a
    /// checkpoint restore may discard. The report says whether a rollback met it.
    pub fn rpo_target(mut self, d: Duration) -> Self {
        self.objectives.rpo_ms = Some(d.as_millis() as u64);
        self
    }

    /// Name who owns a role during the run, e.g. [`ROLLBACK_LEAD`], `"data verification"`,
    /// `"customer communication"`, `"post-incident review"`. Owners appear in the dry run,
    /// the report and its incident skeleton, and the notifier's messages.
    pub fn owner(mut self, role: &str, who: &str) -> Self {
        self.owners.insert(role.into(), who.into());
        self
    }

    /// Validate and build the plan.
    ///
    /// # Errors
    /// A [`PlanError`] naming the culprit: duplicate ids, unknown or cyclic dependencies,
    /// restore-only steps without a covering checkpoint, unapproved irreversible steps.
    pub fn build(self) -> Result<Plan, PlanError> {
        let plan = self.name.clone();
        let empty = |what: &str| PlanError::EmptyName {
            plan: plan.clone(),
            what: what.into(),
        };
        let blank = |s: &str| s.trim().is_empty();
        if blank(&plan) {
            return Err(empty("plan name"));
        }
        if self.steps.iter().any(|s| blank(s.id())) {
            return Err(empty("a step id"));
        }
        if self.checkpoints.iter().any(|c| blank(c.resource())) {
            return Err(empty("a checkpoint resource"));
        }
        let verifiers = self
            .preconditions
            .iter()
            .chain(self.post_step.iter().map(|(_, v)| v))
            .chain(self.finals.iter())
            .chain(self.triggers.iter().map(|t| &t.verifier));
        if verifiers.clone().any(|v| blank(v.id())) {
            return Err(empty("a verifier id"));
        }
        if self.steps.is_empty() {
            return Err(PlanError::Empty { plan });
        }
        let mut ids = BTreeSet::new();
        for s in &self.steps {
            if !ids.insert(s.id().to_string()) {
                return Err(PlanError::DuplicateStep {
                    plan,
                    step: s.id().into(),
                });
            }
        }
        let mut resources = BTreeSet::new();
        for c in &self.checkpoints {
            if !resources.insert(c.resource().to_string()) {
                return Err(PlanError::DuplicateCheckpoint {
                    plan,
                    resource: c.resource().into(),
                });
            }
        }
        let read_baselines: BTreeSet<String> =
            verifiers.clone().flat_map(|v| v.baselines()).collect();
        let mut vids = BTreeSet::new();
        for v in verifiers {
            if !vids.insert(v.id().to_string()) {
                return Err(PlanError::DuplicateVerifier {
                    plan,
                    verifier: v.id().into(),
                });
            }
        }
        for s in &self.steps {
            for d in &s.deps {
                if !ids.contains(d) {
                    return Err(PlanError::UnknownDependency {
                        plan,
                        step: s.id().into(),
                        dependency: d.clone(),
                    });
                }
            }
        }
        for (step, _) in &self.post_step {
            if !ids.contains(step) {
                return Err(PlanError::UnknownStep {
                    plan,
                    what: "verify_after".into(),
                    step: step.clone(),
                });
            }
        }
        for (step, _) in &self.options {
            if !ids.contains(step) {
                return Err(PlanError::UnknownStep {
                    plan,
                    what: "step_options".into(),
                    step: step.clone(),
                });
            }
        }
        for step in self.approvals.keys() {
            if !ids.contains(step) {
                return Err(PlanError::UnknownStep {
                    plan,
                    what: "approve_irreversible".into(),
                    step: step.clone(),
                });
            }
        }
        for s in &self.steps {
            let touches = s.step.touches();
            if let Some(e) = s
                .step
                .effects()
                .iter()
                .find(|e| !touches.iter().any(|t| t == e.resource()))
            {
                return Err(PlanError::EffectOutsideTouches {
                    plan,
                    step: s.id().into(),
                    resource: e.resource().into(),
                });
            }
        }
        let order = topo_order(&plan, &self.steps)?;
        let undo = undo_paths(&plan, &self.steps, &order, &resources, &self.approvals)?;
        let mut by_id: HashMap<String, PlannedStep> = self
            .steps
            .into_iter()
            .map(|s| (s.id().to_string(), s))
            .collect();
        let options: HashMap<String, StepOptions> = self.options.into_iter().collect();
        let steps: Vec<PlannedStep> = order
            .into_iter()
            .filter_map(|id| by_id.remove(&id))
            .map(|mut s| {
                s.options = options.get(s.id()).copied().unwrap_or(self.default_options);
                s
            })
            .collect();

        #[derive(Serialize)]
        struct Spec<'a> {
            name: &'a str,
            steps: Vec<serde_json::Value>,
            checkpoints: Vec<(&'a str, &'a str)>,
            preconditions: Vec<&'a str>,
            post_step: Vec<(&'a str, &'a str)>,
            finals: Vec<&'a str>,
            triggers: Vec<&'a str>,
            approvals: &'a BTreeMap<String, String>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            capture_all: bool,
        }
        let spec = Spec {
            name: &plan,
            steps: steps
                .iter()
                .map(|s| {
                    let mut v = serde_json::json!({
                        "id": s.id(), "component": s.component, "deps": s.deps,
                        "reversibility": s.step.reversibility(), "touches": s.step.touches(),
                        "spec": s.step.spec(),
                    });
                    // Declared effects decide the undo path: they belong in the digest
                    // (left out when they say no more than `touches`, so digests of
                    // plans whose steps declare none stay as they were).
                    let effects = s.step.effects();
                    let plain = effects
                        .iter()
                        .all(|e| matches!(e, Effect::Writes { part: None, .. }))
                        && effects.len() == s.step.touches().len();
                    if !plain {
                        v["effects"] = serde_json::json!(effects);
                    }
                    v
                })
                .collect(),
            checkpoints: self
                .checkpoints
                .iter()
                .map(|c| (c.component.as_str(), c.resource()))
                .collect(),
            preconditions: self.preconditions.iter().map(|v| v.id()).collect(),
            post_step: self
                .post_step
                .iter()
                .map(|(s, v)| (s.as_str(), v.id()))
                .collect(),
            finals: self.finals.iter().map(|v| v.id()).collect(),
            triggers: self.triggers.iter().map(|t| t.id()).collect(),
            approvals: &self.approvals,
            capture_all: self.capture_all,
        };
        let digest = Digest::of_json(&spec);
        Ok(Plan {
            name: plan,
            steps,
            checkpoints: self.checkpoints,
            preconditions: self.preconditions,
            post_step: self.post_step,
            finals: self.finals,
            triggers: self.triggers,
            soak: self.soak,
            approvals: self.approvals,
            objectives: self.objectives,
            owners: self.owners,
            undo,
            read_baselines,
            capture_all: self.capture_all,
            digest,
        })
    }
}

/// How each step is undone: its own revert; the reverts of earlier compensable steps
/// (its ancestors) that create everything it writes; a restore of the checkpoints of what
/// it touches; or nothing (approved irreversible). Refuses restore-only steps no
/// compensation and no checkpoint covers, and unapproved irreversible ones.
fn undo_paths(
    plan: &str,
    steps: &[PlannedStep],
    order: &[String],
    checkpoints: &BTreeSet<String>,
    approvals: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Undo>, PlanError> {
    let by_id: HashMap<&str, &PlannedStep> = steps.iter().map(|s| (s.id(), s)).collect();
    // Ancestors, in topological order (dependencies first).
    let mut ancestors: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for id in order {
        let s = by_id[id.as_str()];
        let mut a = BTreeSet::new();
        for d in &s.deps {
            a.insert(d.as_str());
            a.extend(ancestors[d.as_str()].iter().copied());
        }
        ancestors.insert(s.id(), a);
    }
    let mut out = BTreeMap::new();
    for id in order {
        let s = by_id[id.as_str()];
        let undo = match s.step.reversibility() {
            Reversibility::Compensable => Undo::Compensation,
            r => {
                let effects = s.step.effects();
                let creators: Vec<(&str, Vec<Effect>)> = ancestors[s.id()]
                    .iter()
                    .map(|a| by_id[a])
                    .filter(|a| a.step.reversibility() == Reversibility::Compensable)
                    .map(|a| {
                        let created = a
                            .step
                            .effects()
                            .into_iter()
                            .filter(|e| matches!(e, Effect::Creates { .. }))
                            .collect();
                        (a.id(), created)
                    })
                    .collect();
                let mut by: BTreeSet<&str> = BTreeSet::new();
                let all_covered = !effects.is_empty()
                    && effects.iter().all(|e| {
                        match creators
                            .iter()
                            .find(|(_, cs)| cs.iter().any(|c| e.is_within(c)))
                        {
                            Some((id, _)) => {
                                by.insert(id);
                                true
                            }
                            None => false,
                        }
                    });
                let touches = s.step.touches();
                let missing: Vec<String> = touches
                    .iter()
                    .filter(|t| !checkpoints.contains(*t))
                    .cloned()
                    .collect();
                let restorable = !touches.is_empty() && missing.is_empty();
                if all_covered {
                    Undo::CompensationOf {
                        steps: by.into_iter().map(str::to_string).collect(),
                    }
                } else if restorable {
                    Undo::Restore { resources: touches }
                } else if r == Reversibility::RestoreOnly {
                    return Err(PlanError::Uncovered {
                        plan: plan.into(),
                        step: s.id().into(),
                        resources: missing,
                    });
                } else if approvals.contains_key(s.id()) {
                    Undo::Stays
                } else {
                    return Err(PlanError::UnapprovedIrreversible {
                        plan: plan.into(),
                        step: s.id().into(),
                    });
                }
            }
        };
        out.insert(s.id().to_string(), undo);
    }
    Ok(out)
}

/// Kahn's algorithm, stable in insertion order; on a cycle, names one.
fn topo_order(plan: &str, steps: &[PlannedStep]) -> Result<Vec<String>, PlanError> {
    let index: HashMap<&str, usize> = steps.iter().enumerate().map(|(i, s)| (s.id(), i)).collect();
    let mut indegree: Vec<usize> = steps.iter().map(|s| s.deps.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        for d in &s.deps {
            dependents[index[d.as_str()]].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..steps.len()).filter(|i| indegree[*i] == 0).collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some(i) = ready.pop_first() {
        order.push(steps[i].id().to_string());
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.insert(j);
            }
        }
    }
    if order.len() == steps.len() {
        return Ok(order);
    }
    // Walk dependencies from a node left over until one repeats.
    let start = (0..steps.len()).find(|i| indegree[*i] > 0).unwrap_or(0);
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = steps[cur]
            .deps
            .iter()
            .map(|d| index[d.as_str()])
            .find(|j| indegree[*j] > 0)
            .unwrap_or(start);
        if let Some(pos) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> = path[pos..]
                .iter()
                .map(|i| steps[*i].id().to_string())
                .collect();
            cycle.reverse();
            cycle.push(cycle[0].clone());
            return Err(PlanError::Cycle {
                plan: plan.into(),
                cycle,
            });
        }
        path.push(next);
        cur = next;
    }
}

/// One step of a dry run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryStep {
    /// Step id.
    pub id: String,
    /// Component.
    pub component: String,
    /// Reversibility.
    pub reversibility: Reversibility,
    /// Dependencies.
    pub depends_on: Vec<String>,
    /// Description.
    pub description: String,
    /// Resources it may change.
    pub touches: Vec<String>,
    /// What it changes, as it declares.
    pub effects: Vec<Effect>,
    /// How a rollback undoes it.
    pub undo: Undo,
    /// Verifiers run after it.
    pub verifiers_after: Vec<String>,
}

/// Something a go/no-go review should weigh before a plan runs ([`Plan::risks`]).
/// `Display` gives the sentence the dry run prints; the JSON form is tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Risk {
    /// A restore-only step is undone by restoring full snapshots: the application's writes
    /// to those resources since capture are discarded on rollback (RPO > 0).
    RestoreDiscardsWrites {
        /// The step.
        step: String,
        /// The resources restored.
        resources: Vec<String>,
    },
    /// A restore-only step is undone by selective undo logs, which keep the application's
    /// writes; rows both wrote are conflicts resolved by the log's policy.
    UndoLogConflicts {
        /// The step.
        step: String,
        /// The resources with an undo log.
        resources: Vec<String>,
    },
    /// An approved irreversible step stays applied after a rollback.
    IrreversibleApproved {
        /// The step.
        step: String,
        /// The approval's reason.
        approval: String,
    },
    /// An irreversible step that only a restore of what it touches undoes (RPO > 0).
    Irreversible {
        /// The step.
        step: String,
        /// What it touches.
        resources: Vec<String>,
    },
    /// A step changes resources no checkpoint covers: parity there is not proven after a
    /// rollback.
    NoCheckpoint {
        /// The step.
        step: String,
        /// The uncovered resources.
        resources: Vec<String>,
    },
    /// No post-step or final verifier checks a step.
    Unverified {
        /// The step.
        step: String,
    },
    /// No soak window with a health trigger: a regression that shows only under traffic
    /// commits.
    NoSoakTrigger,
    /// No RTO target: the report cannot say whether recovery was fast enough.
    NoRtoTarget,
    /// No rollback lead named ([`PlanBuilder::owner`] with [`ROLLBACK_LEAD`]).
    NoRollbackLead,
}

impl Risk {
    /// The step the risk is about, if it is about one.
    pub fn step(&self) -> Option<&str> {
        match self {
            Risk::RestoreDiscardsWrites { step, .. }
            | Risk::UndoLogConflicts { step, .. }
            | Risk::IrreversibleApproved { step, .. }
            | Risk::Irreversible { step, .. }
            | Risk::NoCheckpoint { step, .. }
            | Risk::Unverified { step } => Some(step),
            Risk::NoSoakTrigger | Risk::NoRtoTarget | Risk::NoRollbackLead => None,
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Risk::RestoreDiscardsWrites { step, resources } => write!(
                f,
                "{step} is undone only by restoring {}: the application's writes to it since capture are discarded on rollback (RPO > 0)",
                resources.join(", ")
            ),
            Risk::UndoLogConflicts { step, resources } => write!(
                f,
                "{step} is undone by the undo log of {}, which keeps the application's writes; rows both wrote are conflicts, resolved by its policy and listed in the report",
                resources.join(", ")
            ),
            Risk::IrreversibleApproved { step, approval } => write!(
                f,
                "{step} is irreversible and stays applied after a rollback (approved: {approval})"
            ),
            Risk::Irreversible { step, resources } => write!(
                f,
                "{step} is irreversible; only restoring {} undoes it (RPO > 0)",
                resources.join(", ")
            ),
            Risk::NoCheckpoint { step, resources } => write!(
                f,
                "{step} changes {} with no checkpoint: parity there is not proven after a rollback",
                resources.join(", ")
            ),
            Risk::Unverified { step } => {
                write!(f, "{step}: no verifier checks it (no post-step or final verifier)")
            }
            Risk::NoSoakTrigger => f.write_str(
                "no soak window with a health trigger: a regression that shows only under traffic commits",
            ),
            Risk::NoRtoTarget => {
                f.write_str("no RTO target: the report cannot say whether recovery was fast enough")
            }
            Risk::NoRollbackLead => write!(f, "no {ROLLBACK_LEAD} named (PlanBuilder::owner)"),
        }
    }
}

/// The exact sequence a run would follow and its rollback path. `Display` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    /// Plan name.
    pub plan: String,
    /// Plan digest.
    pub digest: Digest,
    /// Checkpoints captured first.
    pub checkpoints: Vec<String>,
    /// Preconditions checked before.
    pub preconditions: Vec<String>,
    /// Steps in apply order.
    pub apply: Vec<DryStep>,
    /// Final verifiers.
    pub final_verifiers: Vec<String>,
    /// Triggers polled in the soak window.
    pub triggers: Vec<String>,
    /// Soak window.
    pub soak_ms: u64,
    /// The rollback path, in order.
    pub rollback: Vec<String>,
    /// Declared recovery objectives.
    pub objectives: Objectives,
    /// Declared owners (role → who).
    pub owners: BTreeMap<String, String>,
    /// What a go/no-go review should weigh ([`Plan::risks`]).
    pub risks: Vec<Risk>,
}

impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "plan {} ({})", self.plan, self.digest.short())?;
        writeln!(f, "preconditions: {}", list(&self.preconditions))?;
        writeln!(f, "capture: {}", list(&self.checkpoints))?;
        writeln!(f, "apply:")?;
        for (i, s) in self.apply.iter().enumerate() {
            writeln!(
                f,
                "  {}. [{}] {} ({}){}{}",
                i + 1,
                s.component,
                s.description,
                s.reversibility,
                if s.depends_on.is_empty() {
                    String::new()
                } else {
                    format!(" after {}", s.depends_on.join(", "))
                },
                if s.verifiers_after.is_empty() {
                    String::new()
                } else {
                    format!("; verify {}", s.verifiers_after.join(", "))
                },
            )?;
        }
        writeln!(f, "final verifiers: {}", list(&self.final_verifiers))?;
        writeln!(
            f,
            "soak: {} ms watching {}",
            self.soak_ms,
            list(&self.triggers)
        )?;
        writeln!(f, "rollback path:")?;
        for (i, r) in self.rollback.iter().enumerate() {
            writeln!(f, "  {}. {}", i + 1, r)?;
        }
        let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
        writeln!(
            f,
            "objectives: RTO {}, RPO {}",
            ms(self.objectives.rto_ms),
            ms(self.objectives.rpo_ms)
        )?;
        if !self.owners.is_empty() {
            let owners: Vec<String> = self
                .owners
                .iter()
                .map(|(role, who)| format!("{role}: {who}"))
                .collect();
            writeln!(f, "owners: {}", owners.join("; "))?;
        }
        writeln!(f, "go/no-go risks:")?;
        if self.risks.is_empty() {
            writeln!(f, "  none found")?;
        }
        for r in &self.risks {
            writeln!(f, "  - {r}")?;
        }
        Ok(())
    }
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}
