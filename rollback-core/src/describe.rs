//! [`PlanDescription`]: what a run's report needs to know about its plan, written into the
//! journal when the run starts ([`Entry::PlanDescribed`](crate::journal::Entry)), so that
//! the report can be rebuilt from the records alone — by an operator with a journal and no
//! Rust program ([`RunReport::rebuild`](crate::RunReport::rebuild)).

use crate::plan::{Objectives, Plan, Undo};
use crate::{Digest, Reversibility};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A plan as data: its steps, checkpoints, verifiers, recovery objectives and owners —
/// everything a report reads from a plan, without the code that runs it. Built by
/// [`Plan::describe`] and journaled as the run's second record.
///
/// ```
/// use rollback_core::sim::{SetKey, SimWorld};
/// use rollback_core::{Plan, Reversibility};
/// let w = SimWorld::new();
/// let plan = Plan::builder("demo")
///     .checkpoint("db", w.checkpoint("db"))
///     .step("db", SetKey::new("s1", &w, "db", "k", "v"), &[])
///     .build()?;
/// let d = plan.describe();
/// assert_eq!(d.plan, "demo");
/// assert_eq!(d.digest, plan.digest());
/// assert_eq!(d.steps[0].id, "s1");
/// assert_eq!(d.steps[0].touches, vec!["db".to_string()]);
/// assert_eq!(d.steps[0].reversibility, Reversibility::Compensable);
/// # Ok::<(), rollback_core::PlanError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlanDescription {
    /// Plan name.
    pub plan: String,
    /// Plan digest (the one `run_started` carries).
    pub digest: Digest,
    /// Steps in plan (topological) order.
    pub steps: Vec<StepDescription>,
    /// Checkpoints in plan order.
    pub checkpoints: Vec<CheckpointDescription>,
    /// Verifiers, with the phase they run in.
    pub verifiers: Vec<VerifierDescription>,
    /// Length of the soak window, in milliseconds.
    #[serde(default)]
    pub soak_ms: u64,
    /// Declared recovery objectives.
    #[serde(default)]
    pub objectives: Objectives,
    /// Declared owners (role → who).
    #[serde(default)]
    pub owners: BTreeMap<String, String>,
    /// Irreversible steps approved to stay applied, with the reasons given.
    #[serde(default)]
    pub approvals: BTreeMap<String, String>,
}

/// One step of a [`PlanDescription`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepDescription {
    /// Step id.
    pub id: String,
    /// What it does, as the step says ([`Step::describe`](crate::Step::describe)).
    pub description: String,
    /// Component tag.
    pub component: String,
    /// Declared reversibility.
    pub reversibility: Reversibility,
    /// Steps applied before it.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Resources it changes.
    #[serde(default)]
    pub touches: Vec<String>,
    /// How a rollback undoes it.
    pub undo: Undo,
}

/// One checkpoint of a [`PlanDescription`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CheckpointDescription {
    /// The resource it covers.
    pub resource: String,
    /// Component tag.
    pub component: String,
    /// Whether a restore undoes the run's own writes only.
    #[serde(default)]
    pub selective: bool,
    /// Whether the run takes a full snapshot ([`Plan::needs_snapshot`]) or only a baseline
    /// fingerprint.
    #[serde(default)]
    pub snapshot: bool,
}

/// One verifier of a [`PlanDescription`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VerifierDescription {
    /// Verifier id.
    pub id: String,
    /// When it runs: `precondition`, `after:<step>`, `final` or `soak` (a trigger).
    pub phase: String,
    /// For a soak trigger: how it is polled and when it is breached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerDescription>,
}

/// How a soak trigger is polled and when it is breached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TriggerDescription {
    /// Poll interval, milliseconds.
    pub every_ms: u64,
    /// Breached when at least this many of the last `window` polls failed.
    pub max_failures: usize,
    /// The window, in polls.
    pub window: usize,
    /// A poll also fails when the verdict's value exceeds this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value: Option<f64>,
}

impl PlanDescription {
    /// How a rollback undoes step `id`.
    pub fn undo(&self, id: &str) -> Option<&Undo> {
        self.steps.iter().find(|s| s.id == id).map(|s| &s.undo)
    }

    /// The resources of the plan's checkpoints, in plan order.
    pub fn checkpoint_resources(&self) -> impl Iterator<Item = &str> {
        self.checkpoints.iter().map(|c| c.resource.as_str())
    }

    /// One line for a person: how many steps, checkpoints and verifiers, and the targets.
    pub fn summary(&self) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |t| format!("{t} ms"));
        format!(
            "plan {} described: {} step(s), {} checkpoint(s), {} verifier(s); RTO target {}, RPO target {}",
            self.plan,
            self.steps.len(),
            self.checkpoints.len(),
            self.verifiers.len(),
            ms(self.objectives.rto_ms),
            ms(self.objectives.rpo_ms),
        )
    }
}

impl Plan {
    /// The plan as data, for the journal: what a report needs without the plan's code.
    pub fn describe(&self) -> PlanDescription {
        let verifier = |id: &str, phase: String| VerifierDescription {
            id: id.to_string(),
            phase,
            trigger: None,
        };
        let mut verifiers: Vec<VerifierDescription> = self
            .preconditions
            .iter()
            .map(|v| verifier(v.id(), "precondition".into()))
            .collect();
        verifiers.extend(
            self.post_step
                .iter()
                .map(|(step, v)| verifier(v.id(), format!("after:{step}"))),
        );
        verifiers.extend(self.finals.iter().map(|v| verifier(v.id(), "final".into())));
        verifiers.extend(self.triggers.iter().map(|t| VerifierDescription {
            id: t.id().to_string(),
            phase: "soak".into(),
            trigger: Some(TriggerDescription {
                every_ms: u64::try_from(t.every.as_millis()).unwrap_or(u64::MAX),
                max_failures: t.max_failures,
                window: t.window,
                max_value: t.max_value,
            }),
        }));
        PlanDescription {
            plan: self.name.clone(),
            digest: self.digest,
            steps: self
                .steps
                .iter()
                .map(|s| StepDescription {
                    id: s.id().to_string(),
                    description: s.step.describe(),
                    component: s.component.clone(),
                    reversibility: s.step.reversibility(),
                    depends_on: s.deps.clone(),
                    touches: s.step.touches(),
                    undo: self.undo(s.id()).cloned().unwrap_or(Undo::Compensation),
                })
                .collect(),
            checkpoints: self
                .checkpoints
                .iter()
                .map(|c| CheckpointDescription {
                    resource: c.resource().to_string(),
                    component: c.component.clone(),
                    selective: c.checkpoint.selective(),
                    snapshot: self.needs_snapshot(c.resource()),
                })
                .collect(),
            verifiers,
            soak_ms: u64::try_from(self.soak.as_millis()).unwrap_or(u64::MAX),
            objectives: self.objectives,
            owners: self.owners.clone(),
            approvals: self.approvals.clone(),
        }
    }
}
