//! Simulated verifiers: [`KeyEquals`] and the scripted [`HealthProbe`].

use super::SimWorld;
use crate::{Context, Error, Result, Verdict, Verifier};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Passes when `resource[key]` equals the expected value.
#[derive(Clone, Debug)]
pub struct KeyEquals {
    id: String,
    world: SimWorld,
    resource: String,
    key: String,
    expected: Option<String>,
}

impl KeyEquals {
    /// A verifier of `resource[key] == expected` (`None`: absent).
    pub fn new(
        id: &str,
        world: &SimWorld,
        resource: &str,
        key: &str,
        expected: Option<&str>,
    ) -> Self {
        KeyEquals {
            id: id.into(),
            world: world.clone(),
            resource: resource.into(),
            key: key.into(),
            expected: expected.map(Into::into),
        }
    }
}

#[async_trait]
impl Verifier for KeyEquals {
    fn id(&self) -> &str {
        &self.id
    }
    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let actual = self.world.get(&self.resource, &self.key);
        Ok(Verdict::check(
            actual == self.expected,
            format!(
                "{}[{}] is {:?}, expected {:?}",
                self.resource, self.key, actual, self.expected
            ),
        )
        .with_evidence(serde_json::json!({ "actual": actual, "expected": self.expected })))
    }
}

/// A scripted health probe: returns the scripted verdicts in turn (the last one repeats),
/// optionally failing at random with probability `flakiness`, after `delay`.
#[derive(Clone, Debug)]
pub struct HealthProbe {
    id: String,
    world: SimWorld,
    script: Arc<Mutex<std::collections::VecDeque<f64>>>,
    last: Arc<Mutex<f64>>,
    flakiness: f64,
    delay: Duration,
}

impl HealthProbe {
    /// A probe reporting the error rates in `script` in turn; a verdict fails when the
    /// rate is above 0.05.
    pub fn new(id: &str, world: &SimWorld, script: &[f64]) -> Self {
        HealthProbe {
            id: id.into(),
            world: world.clone(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            last: Arc::new(Mutex::new(0.0)),
            flakiness: 0.0,
            delay: Duration::ZERO,
        }
    }
    /// Fail at random (seeded by the world) with this probability.
    pub fn flaky(mut self, p: f64) -> Self {
        self.flakiness = p;
        self
    }
    /// Take this long to answer.
    pub fn slow(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

#[async_trait]
impl Verifier for HealthProbe {
    fn id(&self) -> &str {
        &self.id
    }
    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let rate = {
            let mut s = self.script.lock().unwrap_or_else(|e| e.into_inner());
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = s.pop_front() {
                *last = r;
            }
            *last
        };
        if self.flakiness > 0.0 && self.world.random() < self.flakiness {
            return Err(Error::transient("probe timed out", false));
        }
        Ok(
            Verdict::check(rate <= 0.05, format!("error rate {:.1}%", rate * 100.0))
                .with_value(rate)
                .with_evidence(serde_json::json!({ "error_rate": rate })),
        )
    }
}
