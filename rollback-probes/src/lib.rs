//! Health probes from the monitoring a team already has, for the executor's soak
//! triggers: [`PrometheusProbe`] (a PromQL query through the HTTP API), [`HttpProbe`]
//! (an endpoint's status, latency and a JSON field), and [`Analysis`], which judges a
//! probe's measurements the way an Argo Rollouts `AnalysisTemplate` does — failure,
//! inconclusive and consecutive-error limits, an optional count — and is the
//! [`Verifier`](rollback_core::Verifier) a [`Trigger`](rollback_core::Trigger) polls.
//!
//! A query against a database is already a verifier: see `rollback_postgres::SqlAssertion`.
//!
//! ```no_run
//! use rollback_core::Plan;
//! use rollback_probes::{Analysis, Condition, PrometheusProbe};
//! use std::time::Duration;
//! # fn demo() -> rollback_core::Result<()> {
//! let error_rate = PrometheusProbe::new(
//!     "http://127.0.0.1:9090",
//!     "checkout-error-rate",
//!     r#"sum(rate(http_requests_total{job="checkout",code=~"5.."}[1m]))
//!          / sum(rate(http_requests_total{job="checkout"}[1m]))"#,
//!     Condition::parse("result < 0.01")?,
//! )?;
//! let plan = Plan::builder("checkout-v2")
//!     .soak(Duration::from_secs(600))
//!     .trigger(
//!         Analysis::new(error_rate)
//!             .interval(Duration::from_secs(15))
//!             .failure_limit(1)            // two bad measurements breach
//!             .inconclusive_limit(2)       // no data three times breaches too
//!             .consecutive_error_limit(4)  // Prometheus down five times in a row breaches
//!             .trigger(),
//!     );
//! # let _ = plan; Ok(()) }
//! ```
//!
//! **What counts as what.** A measurement is a *success* when its condition holds, a
//! *failure* when it does not, *inconclusive* when the answer decides nothing (no data,
//! `NaN`, several series where one was expected, a body without the field), and an
//! *error* when it could not be taken (the server down, a timeout, a bad query). No data
//! is never a pass.

mod analysis;
mod condition;
mod http;
mod probe;
mod prometheus;

pub use analysis::{Analysis, Completed};
pub use condition::{Condition, Op};
pub use http::{FieldCheck, HttpProbe};
pub use probe::{Measurement, Outcome, Probe};
pub use prometheus::{PrometheusProbe, Series};
