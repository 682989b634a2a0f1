//! [`PlanBuilder`]: gathers a plan's parts; [`PlanBuilder::build`] validates them.

use super::validate::{topo_order, undo_paths};
use super::{Objectives, Plan, PlannedCheckpoint, PlannedStep};
use super::{PlanError, StepOptions, Trigger};
use crate::{Checkpoint, Digest, Effect, Step, Verifier};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

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

    /// Name who owns a role during the run, e.g. [`ROLLBACK_LEAD`](super::ROLLBACK_LEAD), `"data verification"`,
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
