//! What a go/no-go review reads before a plan runs: the dry run and the risks.

use super::{Objectives, Plan, PlannedStep, Undo, ROLLBACK_LEAD};
use crate::{Checkpoint, Digest, Effect, Reversibility, Step, Verifier};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

impl Plan {
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
    /// No rollback lead named ([`PlanBuilder::owner`](super::PlanBuilder::owner) with [`ROLLBACK_LEAD`]).
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
