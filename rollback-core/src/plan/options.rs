//! Per-step execution options and health triggers.

use crate::Verifier;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Per-step execution options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOptions {
    /// Give up on one attempt after this long (the effect is then uncertain). `None`: no limit.
    pub timeout: Option<Duration>,
    /// Retries after a transient error (apply and revert alike).
    pub retries: u32,
    /// First backoff; doubled after each retry.
    pub backoff: Duration,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            timeout: None,
            retries: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

impl StepOptions {
    /// With a timeout per attempt.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// With `n` retries on transient errors.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
    /// With this first backoff.
    pub fn backoff(mut self, d: Duration) -> Self {
        self.backoff = d;
        self
    }
}

/// A health trigger: a verifier polled during the soak window; when it fails
/// `max_failures` times within the last `window` polls, rollback starts by itself.
#[derive(Clone)]
pub struct Trigger {
    pub(crate) verifier: Arc<dyn Verifier>,
    pub(crate) every: Duration,
    pub(crate) window: usize,
    pub(crate) max_failures: usize,
    pub(crate) max_value: Option<f64>,
}

impl Trigger {
    /// A trigger on `verifier`: polled every second, breached by 1 failure in 1 poll.
    ///
    /// A shared verifier (`Arc<V>`, `Arc<dyn Verifier>`) or a boxed one is a verifier too,
    /// so the caller can keep a handle on it.
    pub fn new(verifier: impl Verifier + 'static) -> Self {
        Trigger {
            verifier: Arc::new(verifier),
            every: Duration::from_secs(1),
            window: 1,
            max_failures: 1,
            max_value: None,
        }
    }
    /// Poll interval.
    pub fn every(mut self, d: Duration) -> Self {
        self.every = d;
        self
    }
    /// Breached when at least `max_failures` of the last `window` polls failed.
    pub fn threshold(mut self, max_failures: usize, window: usize) -> Self {
        self.max_failures = max_failures.max(1);
        self.window = window.max(self.max_failures);
        self
    }
    /// Also count a poll as failed when the verdict's value exceeds `max` (an error rate,
    /// a latency).
    pub fn max_value(mut self, max: f64) -> Self {
        self.max_value = Some(max);
        self
    }
    /// The trigger's verifier id.
    pub fn id(&self) -> &str {
        self.verifier.id()
    }
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trigger")
            .field("verifier", &self.verifier.id())
            .field("every", &self.every)
            .field(
                "threshold",
                &format!("{}/{}", self.max_failures, self.window),
            )
            .field("max_value", &self.max_value)
            .finish()
    }
}
