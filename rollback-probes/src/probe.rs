//! The [`Probe`] trait: one measurement of something the team already monitors.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// How one measurement came out, as Argo Rollouts classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The condition held.
    Success,
    /// The condition did not hold: the service is unhealthy.
    Failure,
    /// The probe got an answer that decides nothing (no data, `NaN`, several series where
    /// one was expected). Never a success.
    Inconclusive,
    /// The probe could not measure (the monitoring system is down, a timeout, a bad
    /// query): counted apart from failures, against the consecutive-error limit.
    Error,
}

/// One measurement: its outcome, the value seen (if any) and a line a person reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// How it came out.
    pub outcome: Outcome,
    /// The measured value that decided it (for a vector, the worst series').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// What was seen.
    pub detail: String,
    /// When it was taken (ms since the Unix epoch).
    pub at_ms: u64,
}

impl Measurement {
    /// A measurement taken now.
    pub fn new(outcome: Outcome, value: Option<f64>, detail: impl Into<String>) -> Self {
        Measurement {
            outcome,
            value,
            detail: detail.into(),
            at_ms: rollback_core::now_ms(),
        }
    }
    /// An [`Outcome::Error`] measurement.
    pub fn error(detail: impl Into<String>) -> Self {
        Self::new(Outcome::Error, None, detail)
    }
    /// An [`Outcome::Inconclusive`] measurement.
    pub fn inconclusive(value: Option<f64>, detail: impl Into<String>) -> Self {
        Self::new(Outcome::Inconclusive, value, detail)
    }
    /// Success when `ok`, failure otherwise.
    pub fn check(ok: bool, value: Option<f64>, detail: impl Into<String>) -> Self {
        Self::new(
            if ok {
                Outcome::Success
            } else {
                Outcome::Failure
            },
            value,
            detail,
        )
    }
}

/// Something measured at each poll of a soak trigger: a Prometheus query, an HTTP
/// endpoint. A probe never fails: what keeps it from measuring is an
/// [`Outcome::Error`] measurement, which [`crate::Analysis`] counts apart.
///
/// ```
/// use rollback_probes::{Measurement, Outcome, Probe};
/// struct Always;
/// #[async_trait::async_trait]
/// impl Probe for Always {
///     fn id(&self) -> &str { "always" }
///     async fn measure(&self) -> Measurement {
///         Measurement::check(true, Some(0.0), "fine")
///     }
/// }
/// ```
#[async_trait]
pub trait Probe: Send + Sync {
    /// Stable id (the verifier's id in the plan and the report).
    fn id(&self) -> &str;
    /// Take one measurement.
    async fn measure(&self) -> Measurement;
}
