//! [`HttpProbe`]: an endpoint's status, latency and a field of its JSON answer.

use crate::condition::Condition;
use crate::probe::{Measurement, Probe};
use async_trait::async_trait;
use rollback_core::{Error, Result};
use serde_json::Value;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// What a JSON field of the answer must be.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldCheck {
    /// This exact JSON value (e.g. `"ok"`).
    Equals(Value),
    /// A number satisfying the condition.
    Number(Condition),
}

/// A `GET` of an endpoint at each measurement: a success when its status is in the
/// expected range (200–299 by default), it answered within the latency limit (if any),
/// and the JSON field (if any, by [JSON pointer](https://www.rfc-editor.org/rfc/rfc6901))
/// satisfies its check.
///
/// - A status outside the range, a slow answer or a field that fails its check is a
///   [`crate::Outcome::Failure`] (the service is unhealthy).
/// - A body that is not JSON or lacks the field is [`crate::Outcome::Inconclusive`].
/// - No connection or no answer within the timeout is [`crate::Outcome::Error`].
///
/// ```no_run
/// use rollback_probes::{Analysis, HttpProbe};
/// use std::time::Duration;
/// # fn demo() -> rollback_core::Result<()> {
/// let health = HttpProbe::get("checkout-health", "http://127.0.0.1:8080/health")?
///     .max_latency(Duration::from_millis(300))
///     .json_equals("/status", serde_json::json!("ok"));
/// let trigger = Analysis::new(health).failure_limit(2).trigger();
/// # let _ = trigger; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HttpProbe {
    client: reqwest::Client,
    id: String,
    url: String,
    statuses: RangeInclusive<u16>,
    max_latency: Option<Duration>,
    field: Option<(String, FieldCheck)>,
}

impl HttpProbe {
    /// A probe `id` of `GET url`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URL that is not `http://` or `https://`.
    pub fn get(id: impl Into<String>, url: impl Into<String>) -> Result<Self> {
        let url = url.into();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::invalid(
                "probe url must start with http:// or https://",
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::invalid(format!("building the HTTP client: {e}")))?;
        Ok(HttpProbe {
            client,
            id: id.into(),
            url,
            statuses: 200..=299,
            max_latency: None,
            field: None,
        })
    }

    /// The statuses that count as healthy (default 200–299).
    pub fn statuses(mut self, range: RangeInclusive<u16>) -> Self {
        self.statuses = range;
        self
    }

    /// A slower answer is a failure.
    pub fn max_latency(mut self, d: Duration) -> Self {
        self.max_latency = Some(d);
        self
    }

    /// The JSON field at `pointer` (e.g. `/status`) must equal `value`.
    pub fn json_equals(mut self, pointer: impl Into<String>, value: Value) -> Self {
        self.field = Some((pointer.into(), FieldCheck::Equals(value)));
        self
    }

    /// The JSON field at `pointer` must be a number satisfying `condition`.
    pub fn json_number(mut self, pointer: impl Into<String>, condition: Condition) -> Self {
        self.field = Some((pointer.into(), FieldCheck::Number(condition)));
        self
    }

    /// Use this HTTP client (proxies, TLS settings, timeouts of your own).
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }
}

#[async_trait]
impl Probe for HttpProbe {
    fn id(&self) -> &str {
        &self.id
    }

    async fn measure(&self) -> Measurement {
        let t = Instant::now();
        let resp = match self.client.get(&self.url).send().await {
            Ok(r) => r,
            Err(e) => {
                let why = if e.is_connect() {
                    "cannot connect"
                } else if e.is_timeout() {
                    "no answer in time"
                } else {
                    "request failed"
                };
                return Measurement::error(format!("{why}: GET {}", self.url));
            }
        };
        let status = resp.status().as_u16();
        let body = resp.bytes().await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !self.statuses.contains(&status) {
            return Measurement::check(
                false,
                Some(ms),
                format!(
                    "HTTP {status} (expected {}–{}) in {ms:.0} ms",
                    self.statuses.start(),
                    self.statuses.end()
                ),
            );
        }
        if let Some(max) = self.max_latency {
            if t.elapsed() > max {
                return Measurement::check(
                    false,
                    Some(ms),
                    format!("HTTP {status} in {ms:.0} ms, over {} ms", max.as_millis()),
                );
            }
        }
        let Some((pointer, check)) = &self.field else {
            return Measurement::check(true, Some(ms), format!("HTTP {status} in {ms:.0} ms"));
        };
        let json: Option<Value> = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
        let Some(json) = json else {
            return Measurement::inconclusive(
                Some(ms),
                format!("HTTP {status}: the body is not JSON"),
            );
        };
        let Some(field) = json.pointer(pointer) else {
            return Measurement::inconclusive(
                Some(ms),
                format!("HTTP {status}: no field {pointer}"),
            );
        };
        match check {
            FieldCheck::Equals(want) => Measurement::check(
                field == want,
                Some(ms),
                format!("{pointer} = {field} (expected {want})"),
            ),
            FieldCheck::Number(c) => match field.as_f64() {
                Some(v) if v.is_nan() => {
                    Measurement::inconclusive(Some(v), format!("{pointer} is NaN"))
                }
                Some(v) => {
                    Measurement::check(c.holds(v), Some(v), format!("{pointer} = {v} ({c})"))
                }
                None => {
                    Measurement::inconclusive(None, format!("{pointer} = {field} is not a number"))
                }
            },
        }
    }
}
