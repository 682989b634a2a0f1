//! [`PrometheusProbe`]: a PromQL query evaluated through Prometheus' HTTP API.

use crate::condition::Condition;
use crate::probe::{Measurement, Outcome, Probe};
use async_trait::async_trait;
use rollback_core::{Error, Result};
use serde_json::Value;
use std::time::Duration;

/// How a query answering several series is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Series {
    /// Every series must satisfy the condition (the default): one failing series is a
    /// failure.
    #[default]
    Every,
    /// Exactly one series is expected: several are inconclusive.
    Single,
}

/// A PromQL query evaluated at each measurement through `GET /api/v1/query`, its result
/// compared with a [`Condition`].
///
/// - A scalar, or every series of an instant vector ([`Series`]), is compared.
/// - **No data** (an empty vector), `NaN`, several series under [`Series::Single`], or a
///   range or string result are [`Outcome::Inconclusive`] — never a success.
/// - Prometheus unreachable, a timeout, an HTTP error or an `"status": "error"` answer
///   (a bad query) are [`Outcome::Error`].
///
/// ```no_run
/// use rollback_probes::{Analysis, Condition, PrometheusProbe};
/// # fn demo() -> rollback_core::Result<()> {
/// let errors = PrometheusProbe::new(
///     "http://127.0.0.1:9090",
///     "error-rate",
///     r#"sum(rate(http_requests_total{code=~"5.."}[1m])) / sum(rate(http_requests_total[1m]))"#,
///     Condition::parse("result < 0.01")?,
/// )?;
/// let trigger = Analysis::new(errors).failure_limit(1).trigger();
/// # let _ = trigger; Ok(()) }
/// ```
#[derive(Clone)]
pub struct PrometheusProbe {
    client: reqwest::Client,
    base: String,
    id: String,
    query: String,
    condition: Condition,
    series: Series,
    bearer: Option<String>,
}

impl std::fmt::Debug for PrometheusProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusProbe")
            .field("url", &self.base)
            .field("id", &self.id)
            .field("query", &self.query)
            .field("condition", &self.condition)
            .field("series", &self.series)
            .field("bearer", &self.bearer.as_ref().map(|_| "***"))
            .finish()
    }
}

impl PrometheusProbe {
    /// A probe `id` evaluating `query` on the Prometheus at `url` (e.g.
    /// `http://127.0.0.1:9090`), successful when `condition` holds.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URL that is not `http://` or `https://`, or an empty query.
    pub fn new(
        url: &str,
        id: impl Into<String>,
        query: impl Into<String>,
        condition: Condition,
    ) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid(
                "prometheus url must start with http:// or https://",
            ));
        }
        let query = query.into();
        if query.trim().is_empty() {
            return Err(Error::invalid("prometheus query is empty"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::invalid(format!("building the HTTP client: {e}")))?;
        Ok(PrometheusProbe {
            client,
            base,
            id: id.into(),
            query,
            condition,
            series: Series::Every,
            bearer: None,
        })
    }

    /// How several series are judged (default [`Series::Every`]).
    pub fn series(mut self, series: Series) -> Self {
        self.series = series;
        self
    }

    /// Send this bearer token (never shown in `Debug`, errors or evidence).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// Use this HTTP client (proxies, TLS settings, timeouts of your own).
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    /// The query.
    pub fn query(&self) -> &str {
        &self.query
    }

    fn judge(&self, data: &Value) -> Measurement {
        let kind = data.get("resultType").and_then(Value::as_str).unwrap_or("");
        let result = data.get("result").cloned().unwrap_or(Value::Null);
        let sample = |v: &Value| -> Option<f64> {
            v.get(1)
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<f64>().ok())
        };
        match kind {
            "scalar" => match sample(&result) {
                None => Measurement::inconclusive(None, "scalar result without a number"),
                Some(v) if v.is_nan() => Measurement::inconclusive(Some(v), "result is NaN"),
                Some(v) => Measurement::check(
                    self.condition.holds(v),
                    Some(v),
                    format!("{v} ({})", self.condition),
                ),
            },
            "vector" => {
                let series = result.as_array().cloned().unwrap_or_default();
                if series.is_empty() {
                    return Measurement::inconclusive(None, "no data (empty result)");
                }
                if self.series == Series::Single && series.len() > 1 {
                    return Measurement::inconclusive(
                        None,
                        format!("{} series where one was expected", series.len()),
                    );
                }
                let mut worst: Option<(f64, String)> = None;
                for s in &series {
                    let labels = s.get("metric").map(Value::to_string).unwrap_or_default();
                    let Some(v) = s.get("value").and_then(sample) else {
                        return Measurement::inconclusive(
                            None,
                            format!("series {labels} has no value"),
                        );
                    };
                    if v.is_nan() {
                        return Measurement::inconclusive(
                            Some(v),
                            format!("series {labels} is NaN"),
                        );
                    }
                    if !self.condition.holds(v) {
                        return Measurement::check(
                            false,
                            Some(v),
                            format!("series {labels}: {v} fails {}", self.condition),
                        );
                    }
                    // Keep the series closest to breaching.
                    let closer = match (&worst, self.condition.op) {
                        (None, _) => true,
                        (Some((w, _)), crate::Op::Lt | crate::Op::Le) => v > *w,
                        (Some((w, _)), crate::Op::Gt | crate::Op::Ge) => v < *w,
                        _ => false,
                    };
                    if closer {
                        worst = Some((v, labels));
                    }
                }
                let (v, labels) = worst.unwrap_or_default();
                Measurement::check(
                    true,
                    Some(v),
                    format!(
                        "{} series hold {}; closest: {labels} = {v}",
                        series.len(),
                        self.condition
                    ),
                )
            }
            other => Measurement::inconclusive(
                None,
                format!("result type {other:?}: the query must give a scalar or an instant vector"),
            ),
        }
    }
}

#[async_trait]
impl Probe for PrometheusProbe {
    fn id(&self) -> &str {
        &self.id
    }

    async fn measure(&self) -> Measurement {
        let mut req = self
            .client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", self.query.as_str())]);
        if let Some(t) = &self.bearer {
            req = req.bearer_auth(t);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let why = if e.is_connect() {
                    "cannot connect to Prometheus"
                } else if e.is_timeout() {
                    "Prometheus did not answer in time"
                } else {
                    "request to Prometheus failed"
                };
                return Measurement::error(format!("{why} at {}", self.base));
            }
        };
        let status = resp.status().as_u16();
        let body: Value = match resp.json().await {
            Ok(v) => v,
            Err(_) => {
                return Measurement::error(format!(
                    "Prometheus answered HTTP {status} without a JSON body"
                ))
            }
        };
        if body.get("status").and_then(Value::as_str) != Some("success") {
            let kind = body.get("errorType").and_then(Value::as_str).unwrap_or("");
            let msg = body.get("error").and_then(Value::as_str).unwrap_or("");
            return Measurement::error(format!("Prometheus: HTTP {status}: {kind}: {msg}"));
        }
        let data = body.get("data").cloned().unwrap_or(Value::Null);
        let m = self.judge(&data);
        debug_assert!(m.outcome != Outcome::Error);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(c: &str) -> PrometheusProbe {
        PrometheusProbe::new(
            "http://127.0.0.1:1",
            "p",
            "up",
            Condition::parse(c).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn judges_scalars_vectors_and_what_decides_nothing() {
        let p = probe("result < 0.5");
        let vec = |vals: &[&str]| {
            json!({"resultType": "vector", "result": vals.iter().enumerate().map(|(i, v)|
                json!({"metric": {"i": i.to_string()}, "value": [1.0, v]})).collect::<Vec<_>>()})
        };
        assert_eq!(
            p.judge(&json!({"resultType": "scalar", "result": [1.0, "0.1"]}))
                .outcome,
            Outcome::Success
        );
        assert_eq!(
            p.judge(&json!({"resultType": "scalar", "result": [1.0, "0.9"]}))
                .outcome,
            Outcome::Failure
        );
        assert_eq!(
            p.judge(&json!({"resultType": "scalar", "result": [1.0, "NaN"]}))
                .outcome,
            Outcome::Inconclusive
        );
        assert_eq!(p.judge(&vec(&[])).outcome, Outcome::Inconclusive);
        let ok = p.judge(&vec(&["0.1", "0.3"]));
        assert_eq!((ok.outcome, ok.value), (Outcome::Success, Some(0.3)));
        let bad = p.judge(&vec(&["0.1", "0.7", "0.2"]));
        assert_eq!((bad.outcome, bad.value), (Outcome::Failure, Some(0.7)));
        assert_eq!(
            p.judge(&vec(&["0.1", "NaN"])).outcome,
            Outcome::Inconclusive
        );
        let single = probe("result < 0.5").series(Series::Single);
        assert_eq!(
            single.judge(&vec(&["0.1", "0.2"])).outcome,
            Outcome::Inconclusive
        );
        assert_eq!(
            p.judge(&json!({"resultType": "matrix", "result": []}))
                .outcome,
            Outcome::Inconclusive
        );
    }

    #[test]
    fn refuses_bad_urls_and_empty_queries_and_hides_the_token() {
        assert!(PrometheusProbe::new("ftp://x", "p", "up", Condition::lt(1.0)).is_err());
        assert!(PrometheusProbe::new("http://x", "p", " ", Condition::lt(1.0)).is_err());
        let p = probe("result < 1").bearer_token("s3cr3t-token");
        assert!(!format!("{p:?}").contains("s3cr3t"));
    }
}
