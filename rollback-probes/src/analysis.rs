//! [`Analysis`]: Argo Rollouts-style analysis of a probe's measurements, as a verifier
//! for a soak trigger.

use crate::probe::{Measurement, Outcome, Probe};
use async_trait::async_trait;
use rollback_core::{Context, Result, Trigger, Verdict, Verifier};
use serde_json::json;
use std::sync::Mutex;
use std::time::Duration;

/// The measurements of one run, and what they decided.
#[derive(Debug, Default)]
struct State {
    run: String,
    history: Vec<Measurement>,
    failures: u32,
    inconclusive: u32,
    errors: u32,
    consecutive_errors: u32,
    decided: Option<Verdict>,
}

/// Analysis of a [`Probe`] with the semantics of an Argo Rollouts `AnalysisTemplate`
/// metric: each poll takes one measurement, and the analysis
/// - **fails** when the failed measurements exceed `failure_limit` (default 0: the first
///   failure fails it), or when more than `consecutive_error_limit` measurements in a
///   row could not be taken (default 4: a monitoring outage is not a pass, but one
///   error is not a breach);
/// - is **inconclusive** when the inconclusive measurements exceed `inconclusive_limit`
///   (default 0) — a soak trigger counts that as a breach too: no data is never health;
/// - is **successful** once `count` measurements were taken within the limits (if a
///   count is set); later polls take no measurement.
///
/// Until it is decided, each poll passes, with the measurement as the verdict's value
/// and the history so far (timestamps, values, outcomes) as its evidence; the deciding
/// verdict carries the whole history, so the run report shows which value breached and
/// when. Once decided, every later poll of the same run returns the same verdict; a new
/// run starts afresh.
///
/// ```
/// use rollback_probes::{Analysis, Measurement, Probe};
/// use rollback_core::{Context, Verifier};
/// struct Rate(std::sync::atomic::AtomicU32);
/// #[async_trait::async_trait]
/// impl Probe for Rate {
///     fn id(&self) -> &str { "error-rate" }
///     async fn measure(&self) -> Measurement {
///         let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///         let v = if n < 2 { 0.001 } else { 0.2 };
///         Measurement::check(v < 0.01, Some(v), format!("{v}"))
///     }
/// }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let a = Analysis::new(Rate(Default::default())).failure_limit(1);
/// let ctx = Context::detached();
/// assert!(a.verify(&ctx).await.unwrap().passed());  // 0.001
/// assert!(a.verify(&ctx).await.unwrap().passed());  // 0.001
/// assert!(a.verify(&ctx).await.unwrap().passed());  // 0.2: 1 failure, limit 1
/// assert!(!a.verify(&ctx).await.unwrap().passed()); // 0.2: 2 failures
/// # });
/// ```
#[derive(Debug)]
pub struct Analysis<P> {
    probe: P,
    interval: Duration,
    count: Option<u32>,
    failure_limit: u32,
    inconclusive_limit: u32,
    consecutive_error_limit: u32,
    state: Mutex<State>,
}

/// `HH:MM:SS.mmm UTC` of an epoch-ms time.
fn utc(ms: u64) -> String {
    let day = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

/// Measurements kept in a verdict's evidence (the newest).
const HISTORY: usize = 50;

impl<P: Probe> Analysis<P> {
    /// An analysis of `probe` with Argo's defaults: every 10 s, no count, failure limit 0,
    /// inconclusive limit 0, consecutive error limit 4.
    pub fn new(probe: P) -> Self {
        Analysis {
            probe,
            interval: Duration::from_secs(10),
            count: None,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
            state: Mutex::new(State::default()),
        }
    }
    /// Time between measurements (used by [`Analysis::trigger`]).
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Successful after this many measurements within the limits.
    pub fn count(mut self, n: u32) -> Self {
        self.count = Some(n.max(1));
        self
    }
    /// Failed measurements tolerated.
    pub fn failure_limit(mut self, n: u32) -> Self {
        self.failure_limit = n;
        self
    }
    /// Inconclusive measurements tolerated.
    pub fn inconclusive_limit(mut self, n: u32) -> Self {
        self.inconclusive_limit = n;
        self
    }
    /// Measurements in a row that could not be taken, tolerated.
    pub fn consecutive_error_limit(mut self, n: u32) -> Self {
        self.consecutive_error_limit = n;
        self
    }
    /// A check for [`rollback_core::PlanBuilder::verify_after`] or `verify_final`: one
    /// verification takes every measurement (`count`, default 1, `interval` apart) and
    /// passes only when the analysis is successful — a tolerated failure, inconclusive
    /// or error along the way still counts against the limits, but an undecided poll
    /// is never taken for a pass.
    pub fn to_completion(self) -> Completed<P> {
        Completed(self)
    }

    /// A soak trigger polling this analysis every interval, breached by its first
    /// failing verdict (the limits are the analysis').
    pub fn trigger(self) -> Trigger
    where
        P: 'static,
    {
        let every = self.interval;
        Trigger::new(self).every(every).threshold(1, 1)
    }

    fn evidence(&self, s: &State) -> serde_json::Value {
        let from = s.history.len().saturating_sub(HISTORY);
        json!({
            "probe": self.probe.id(),
            "measurements": s.history[from..],
            "taken": s.history.len(),
            "failed": s.failures,
            "inconclusive": s.inconclusive,
            "errors": s.errors,
            "consecutive_errors": s.consecutive_errors,
            "limits": {
                "failure": self.failure_limit,
                "inconclusive": self.inconclusive_limit,
                "consecutive_error": self.consecutive_error_limit,
                "count": self.count,
            },
        })
    }
}

#[async_trait]
impl<P: Probe> Verifier for Analysis<P> {
    fn id(&self) -> &str {
        self.probe.id()
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        {
            let mut s = self.state.lock().expect("analysis state");
            if s.run != ctx.run_id() {
                *s = State {
                    run: ctx.run_id().to_string(),
                    ..State::default()
                };
            }
            if let Some(v) = &s.decided {
                return Ok(v.clone());
            }
        }
        let m = self.probe.measure().await;
        tracing::debug!(probe = self.probe.id(), outcome = ?m.outcome, value = ?m.value, detail = %m.detail, "measurement");
        let mut s = self.state.lock().expect("analysis state");
        match m.outcome {
            Outcome::Success => s.consecutive_errors = 0,
            Outcome::Failure => {
                s.failures += 1;
                s.consecutive_errors = 0;
            }
            Outcome::Inconclusive => {
                s.inconclusive += 1;
                s.consecutive_errors = 0;
            }
            Outcome::Error => {
                s.errors += 1;
                s.consecutive_errors += 1;
            }
        }
        s.history.push(m.clone());
        let n = s.history.len();
        let at = |m: &Measurement| m.at_ms;
        let decided = if s.failures > self.failure_limit {
            Some(Verdict::fail(format!(
                "{} failed measurement(s), over the limit of {}: last {} (at {})",
                s.failures,
                self.failure_limit,
                m.detail,
                utc(at(&m))
            )))
        } else if s.consecutive_errors > self.consecutive_error_limit {
            Some(Verdict::fail(format!(
                "{} measurement(s) in a row could not be taken, over the limit of {}: {}",
                s.consecutive_errors, self.consecutive_error_limit, m.detail
            )))
        } else if s.inconclusive > self.inconclusive_limit {
            Some(Verdict::inconclusive(format!(
                "{} inconclusive measurement(s), over the limit of {}: last {}",
                s.inconclusive, self.inconclusive_limit, m.detail
            )))
        } else if self.count.is_some_and(|c| n as u32 >= c) {
            Some(Verdict::pass(format!(
                "analysis successful: {n} measurement(s) within the limits"
            )))
        } else {
            None
        };
        let evidence = self.evidence(&s);
        let verdict = match decided {
            Some(v) => {
                let v = v.with_evidence(evidence);
                let v = match m.value {
                    Some(x) => v.with_value(x),
                    None => v,
                };
                s.decided = Some(v.clone());
                v
            }
            None => {
                let v = Verdict::pass(format!("measurement {n}: {:?}, {}", m.outcome, m.detail))
                    .with_evidence(evidence);
                match m.value {
                    Some(x) => v.with_value(x),
                    None => v,
                }
            }
        };
        Ok(verdict)
    }
}

/// An [`Analysis`] run to completion in one verification (see [`Analysis::to_completion`]).
#[derive(Debug)]
pub struct Completed<P>(Analysis<P>);

#[async_trait]
impl<P: Probe> Verifier for Completed<P> {
    fn id(&self) -> &str {
        self.0.probe.id()
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        // A fresh analysis for each verification.
        *self.0.state.lock().expect("analysis state") = State {
            run: ctx.run_id().to_string(),
            ..State::default()
        };
        let count = self.0.count.unwrap_or(1);
        let mut last = None;
        for i in 0..count {
            if i > 0 {
                tokio::time::sleep(self.0.interval).await;
            }
            let v = self.0.verify(ctx).await?;
            if let Some(decided) = self.0.state.lock().expect("analysis state").decided.clone() {
                return Ok(decided);
            }
            last = v.value;
        }
        let s = self.0.state.lock().expect("analysis state");
        let v = Verdict::pass(format!(
            "analysis successful: {count} measurement(s) within the limits"
        ))
        .with_evidence(self.0.evidence(&s));
        Ok(match last {
            Some(x) => v.with_value(x),
            None => v,
        })
    }
}
