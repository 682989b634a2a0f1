//! The [`Verifier`] trait: a check that returns a verdict with evidence.

use crate::{Context, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The check holds.
    Pass,
    /// The check does not hold.
    Fail,
    /// The check could not decide (treated as a failure where proof is required).
    Inconclusive,
}

/// A verdict with its evidence (counts, digests, offending keys).
///
/// ```
/// use rollback_core::{Verdict, Status};
/// let v = Verdict::fail("3 orphan rows")
///     .with_evidence(serde_json::json!({"orphans": [4, 9, 12]}))
///     .with_value(3.0);
/// assert_eq!(v.status, Status::Fail);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Verdict {
    /// Pass, fail or inconclusive.
    pub status: Status,
    /// One line a person reads.
    pub summary: String,
    /// Machine-readable evidence.
    #[serde(default)]
    pub evidence: serde_json::Value,
    /// A measured value (error rate, latency, count) that triggers compare with thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

impl Verdict {
    fn new(status: Status, summary: impl Into<String>) -> Self {
        Verdict {
            status,
            summary: summary.into(),
            evidence: serde_json::Value::Null,
            value: None,
        }
    }
    /// A passing verdict.
    pub fn pass(summary: impl Into<String>) -> Self {
        Self::new(Status::Pass, summary)
    }
    /// A failing verdict.
    pub fn fail(summary: impl Into<String>) -> Self {
        Self::new(Status::Fail, summary)
    }
    /// An inconclusive verdict.
    pub fn inconclusive(summary: impl Into<String>) -> Self {
        Self::new(Status::Inconclusive, summary)
    }
    /// Pass when `ok`, fail otherwise.
    pub fn check(ok: bool, summary: impl Into<String>) -> Self {
        if ok {
            Self::pass(summary)
        } else {
            Self::fail(summary)
        }
    }
    /// With evidence.
    pub fn with_evidence(mut self, evidence: serde_json::Value) -> Self {
        self.evidence = evidence;
        self
    }
    /// With a measured value.
    pub fn with_value(mut self, value: f64) -> Self {
        self.value = Some(value);
        self
    }
    /// Whether the verdict is a pass.
    pub fn passed(&self) -> bool {
        self.status == Status::Pass
    }
}

/// A check: a precondition, a post-step check, a parity or integrity check, a health probe.
///
/// # Contract
/// 1. **Read-only.** Verifying changes no resource.
/// 2. **Evidence.** A failing verdict carries evidence enough to act on (offending keys,
///    counts, digests), never secrets.
/// 3. **Errors are not verdicts.** `Err` means the check could not run (the executor
///    retries transient errors and otherwise counts it as not passed).
/// 4. **Sensitive and repeatable.** Over the same state it gives the same status; it
///    passes where what it checks holds and does not pass where it does not — a
///    verifier that passes whatever the state proves nothing. Checked, with clause 1, by
///    `conformance::Suite::verifier`.
#[async_trait]
pub trait Verifier: Send + Sync {
    /// Stable id, unique in its plan.
    fn id(&self) -> &str;

    /// Resources whose baseline snapshot this verifier reads through
    /// [`Context::baseline`]: the plan captures their snapshots in full (a checkpoint no
    /// undo path restores is otherwise only fingerprinted). Default: none.
    fn baselines(&self) -> Vec<String> {
        Vec::new()
    }

    /// Run the check. [`Context::baseline`] gives the baseline snapshots for parity checks.
    ///
    /// # Errors
    /// When the check cannot run.
    async fn verify(&self, ctx: &Context) -> Result<Verdict>;
}

/// A shared or boxed verifier is a verifier: every method forwards, so a wrapper never
/// drops one.
macro_rules! forward_verifier {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: Verifier + ?Sized> Verifier for $ptr {
            fn id(&self) -> &str {
                (**self).id()
            }
            fn baselines(&self) -> Vec<String> {
                (**self).baselines()
            }
            async fn verify(&self, ctx: &Context) -> Result<Verdict> {
                (**self).verify(ctx).await
            }
        }
    )*};
}
forward_verifier!(std::sync::Arc<T>, Box<T>);
