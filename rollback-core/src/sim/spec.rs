//! Random simulated plans and fault schedules: [`SimPlanSpec`], [`FaultSchedule`] and,
//! with the `proptest` feature, their strategies.

use super::{ResourceState, SetKey, SimWorld};
use crate::{Error, Plan, Result};
#[cfg(feature = "proptest")]
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
