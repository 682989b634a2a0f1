//! Why a plan was refused.

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
