//! Verifiers: flags match a snapshot (the run's baseline) or an expected state.

use crate::checkpoint::{FlagCheckpoint, FlagSnapshot};
use crate::{FlagProvider, FlagState};
use async_trait::async_trait;
use rollback_core::{Checkpoint, Context, Result, Snapshot, Verdict, Verifier};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

fn differences(
    expected: &BTreeMap<String, Option<FlagState>>,
    actual: &BTreeMap<String, Option<FlagState>>,
) -> Vec<serde_json::Value> {
    let names: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    names
        .into_iter()
        .filter_map(|n| {
            let e = expected.get(n).cloned().flatten();
            let a = actual.get(n).cloned().flatten();
            (e != a).then(|| json!({"flag": n, "expected": e, "actual": a}))
        })
        .collect()
}

/// The covered flags equal a snapshot: the run's baseline of the checkpoint's resource
/// ([`FlagsMatchSnapshot::baseline`]) or a given snapshot. Evidence lists each differing
/// flag with its expected and actual state; the verdict's value is their number.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use rollback_core::{Checkpoint, Context, Verifier};
/// use rollback_flags::{FlagCheckpoint, FlagProvider, FlagState, FlagsMatchSnapshot, MemoryProvider};
/// let p = MemoryProvider::new("sim");
/// p.put("a", &FlagState::rollout("a", 10)).await?;
/// let cp = FlagCheckpoint::all(Arc::new(p.clone()));
/// let snap = cp.capture(&Context::detached()).await?;
/// p.put("a", &FlagState::off()).await?;
/// let v = FlagsMatchSnapshot::baseline("flags-back", cp.clone());
/// let verdict = v.verify(&Context::detached().with_baseline([snap])).await?;
/// assert!(!verdict.passed());
/// assert_eq!(verdict.evidence["differing"][0]["flag"], "a");
/// # Ok::<(), rollback_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FlagsMatchSnapshot {
    id: String,
    checkpoint: FlagCheckpoint,
    snapshot: Option<Snapshot>,
}

impl FlagsMatchSnapshot {
    /// Compare with the run's baseline of `checkpoint`'s resource
    /// ([`Context::baseline`]); inconclusive when there is none.
    pub fn baseline(id: &str, checkpoint: FlagCheckpoint) -> Self {
        FlagsMatchSnapshot {
            id: id.into(),
            checkpoint,
            snapshot: None,
        }
    }

    /// Compare with a given snapshot of `checkpoint`.
    pub fn snapshot(id: &str, checkpoint: FlagCheckpoint, snapshot: Snapshot) -> Self {
        FlagsMatchSnapshot {
            id: id.into(),
            checkpoint,
            snapshot: Some(snapshot),
        }
    }
}

#[async_trait]
impl Verifier for FlagsMatchSnapshot {
    fn id(&self) -> &str {
        &self.id
    }

    fn baselines(&self) -> Vec<String> {
        match self.snapshot {
            Some(_) => Vec::new(),
            None => vec![self.checkpoint.resource().to_string()],
        }
    }
    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        let resource = self.checkpoint.resource();
        let snap = match self.snapshot.as_ref().or_else(|| ctx.baseline(resource)) {
            Some(s) => s,
            None => {
                return Ok(Verdict::inconclusive(format!(
                    "no baseline snapshot of {resource} in this run"
                )))
            }
        };
        if snap.resource != resource {
            return Ok(Verdict::inconclusive(format!(
                "snapshot {} is of {}, not {resource}",
                snap.id, snap.resource
            )));
        }
        let expected = FlagSnapshot::from_snapshot(snap)?.flags;
        let names: Vec<String> = expected.keys().cloned().collect();
        let actual = self.checkpoint.read(&names).await?;
        let diff = differences(&expected, &actual);
        let n = diff.len();
        Ok(Verdict::check(
            n == 0,
            if n == 0 {
                format!("{} flags of {resource} match the snapshot", actual.len())
            } else {
                format!("{n} flags of {resource} differ from the snapshot")
            },
        )
        .with_evidence(json!({
            "resource": resource,
            "snapshot": snap.id,
            "checked": expected.len().max(actual.len()),
            "differing": diff,
        }))
        .with_value(n as f64))
    }
}

/// What one flag is expected to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The flag does not exist.
    Absent,
    /// Exactly this state.
    Exactly(FlagState),
    /// Exists, with these fields where given.
    Like {
        /// Expected enabled.
        enabled: Option<bool>,
        /// Expected rollout percentage.
        rollout: Option<u32>,
    },
}

impl Expect {
    /// Expect the flag on.
    pub fn on() -> Self {
        Expect::Like {
            enabled: Some(true),
            rollout: None,
        }
    }
    /// Expect the flag off.
    pub fn off() -> Self {
        Expect::Like {
            enabled: Some(false),
            rollout: None,
        }
    }
    /// Expect the flag on at `percent` %.
    pub fn rollout(percent: u32) -> Self {
        Expect::Like {
            enabled: Some(true),
            rollout: Some(percent),
        }
    }
    fn holds(&self, actual: Option<&FlagState>) -> bool {
        match (self, actual) {
            (Expect::Absent, a) => a.is_none(),
            (Expect::Exactly(s), Some(a)) => s.clone().normalized() == *a,
            (Expect::Like { enabled, rollout }, Some(a)) => {
                enabled.is_none_or(|e| e == a.enabled)
                    && rollout.is_none_or(|r| Some(r) == a.rollout_percent())
            }
            (_, None) => false,
        }
    }
    fn describe(&self) -> serde_json::Value {
        match self {
            Expect::Absent => json!("absent"),
            Expect::Exactly(s) => json!({"exactly": s}),
            Expect::Like { enabled, rollout } => json!({"enabled": enabled, "rollout": rollout}),
        }
    }
}

/// Flags are in an expected state (e.g. after a kill switch: off). Evidence lists each
/// flag that is not, with what was expected and what was found.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use rollback_core::{Context, Verifier};
/// use rollback_flags::{Expect, FlagProvider, FlagState, FlagsMatch, MemoryProvider};
/// let p = MemoryProvider::new("sim");
/// p.put("a", &FlagState::rollout("a", 10)).await?;
/// let v = FlagsMatch::new("a-at-10", Arc::new(p)).flag("a", Expect::rollout(10));
/// assert!(v.verify(&Context::detached()).await?.passed());
/// # Ok::<(), rollback_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FlagsMatch {
    id: String,
    provider: Arc<dyn FlagProvider>,
    expect: BTreeMap<String, Expect>,
}

impl FlagsMatch {
    /// A verifier `id` over flags of `provider`.
    pub fn new(id: &str, provider: Arc<dyn FlagProvider>) -> Self {
        FlagsMatch {
            id: id.into(),
            provider,
            expect: BTreeMap::new(),
        }
    }
    /// Expect `flag` to be as `expect` says.
    pub fn flag(mut self, flag: &str, expect: Expect) -> Self {
        self.expect.insert(flag.into(), expect);
        self
    }
}

#[async_trait]
impl Verifier for FlagsMatch {
    fn id(&self) -> &str {
        &self.id
    }
    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let names: Vec<String> = self.expect.keys().cloned().collect();
        let actual = self.provider.get_many(&names).await?;
        let differing: Vec<serde_json::Value> = self
            .expect
            .iter()
            .filter_map(|(n, e)| {
                let a = actual.get(n).cloned().flatten();
                (!e.holds(a.as_ref()))
                    .then(|| json!({"flag": n, "expected": e.describe(), "actual": a}))
            })
            .collect();
        let n = differing.len();
        Ok(Verdict::check(
            n == 0,
            if n == 0 {
                format!("{} flags as expected", self.expect.len())
            } else {
                format!("{n} of {} flags not as expected", self.expect.len())
            },
        )
        .with_evidence(json!({"checked": self.expect.len(), "differing": differing}))
        .with_value(n as f64))
    }
}
