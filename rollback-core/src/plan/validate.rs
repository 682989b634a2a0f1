//! The graph checks [`PlanBuilder::build`](super::PlanBuilder::build) runs: how each step
//! is undone, and a stable topological order that names a cycle.

use super::PlanError;
use super::{PlannedStep, Undo};
use crate::{Effect, Reversibility, Step};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How each step is undone: its own revert; the reverts of earlier compensable steps
/// (its ancestors) that create everything it writes; a restore of the checkpoints of what
/// it touches; or nothing (approved irreversible). Refuses restore-only steps no
/// compensation and no checkpoint covers, and unapproved irreversible ones.
pub(super) fn undo_paths(
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
pub(super) fn topo_order(plan: &str, steps: &[PlannedStep]) -> Result<Vec<String>, PlanError> {
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
