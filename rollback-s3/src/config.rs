//! Connecting to an S3 API: endpoint, credentials, retries, and a request counter.

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::Client;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `tracing` filter directives that keep the AWS SDK's own DEBUG/TRACE dumps out of the
/// logs: they print the signing identity, whose access key id is shown (the secret key
/// never is). Append them to your filter, e.g.
/// `EnvFilter::new(format!("debug,{SDK_LOG_FILTER}"))`. This crate's own events never
/// carry credentials.
pub const SDK_LOG_FILTER: &str = "aws_smithy_runtime=info,aws_sigv4=info";

/// A secret string (a secret access key): never printed by `Debug` or `Display`.
///
/// ```
/// use rollback_s3::Secret;
/// let s = Secret::new("wJalrXUtnFEMI");
/// assert_eq!(format!("{s:?}"), "Secret(***)");
/// assert_eq!(s.expose(), "wJalrXUtnFEMI");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself (to hand to the SDK; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where an S3-compatible API is and how to sign in to it: builds an
/// [`aws_sdk_s3::Client`] with path-style addressing, a fixed region, static
/// credentials, plain-HTTP transport and the SDK's standard retries (throttling such as
/// `503 SlowDown` and transient network errors are retried with exponential backoff).
///
/// `Debug` never shows the credentials.
///
/// ```
/// use rollback_s3::S3Settings;
/// let settings = S3Settings::new("http://127.0.0.1:59000", "us-east-1", "AKID", "very-secret")
///     .max_attempts(5);
/// assert!(!format!("{settings:?}").contains("very-secret"));
/// let client = settings.client(); // no request is sent yet
/// # let _ = client;
/// ```
#[derive(Clone)]
pub struct S3Settings {
    endpoint: String,
    region: String,
    access_key_id: Secret,
    secret_access_key: Secret,
    max_attempts: u32,
    initial_backoff: Duration,
    attempt_timeout: Option<Duration>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

impl S3Settings {
    /// Settings for `endpoint` (e.g. `http://127.0.0.1:59000`) in `region` with static
    /// credentials; 5 attempts per request, 100 ms first backoff, 30 s per attempt.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        S3Settings {
            endpoint: endpoint.into(),
            region: region.into(),
            access_key_id: Secret::new(access_key_id),
            secret_access_key: Secret::new(secret_access_key),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            attempt_timeout: Some(Duration::from_secs(30)),
        }
    }

    /// Read `{PREFIX}_ENDPOINT`, `{PREFIX}_ACCESS_KEY`, `{PREFIX}_SECRET_KEY` and
    /// optionally `{PREFIX}_REGION` (default `us-east-1`) from the environment, e.g. with
    /// `prefix = "ROLLBACK_TEST_S3"`. `None` when the endpoint is unset.
    pub fn from_env(prefix: &str) -> Option<Self> {
        let var = |name: &str| std::env::var(format!("{prefix}_{name}")).ok();
        let endpoint = var("ENDPOINT")?;
        Some(Self::new(
            endpoint,
            var("REGION").unwrap_or_else(|| "us-east-1".into()),
            var("ACCESS_KEY").unwrap_or_default(),
            var("SECRET_KEY").unwrap_or_default(),
        ))
    }

    /// Attempts per request, the first included (the SDK's standard retry strategy).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// First retry backoff (doubled per attempt, with jitter).
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }

    /// Give up on one attempt after `d` (`None`: no limit).
    pub fn attempt_timeout(mut self, d: Option<Duration>) -> Self {
        self.attempt_timeout = d;
        self
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Strings that must never appear in logs or errors (the credentials).
    pub(crate) fn redactions(&self) -> Vec<String> {
        [&self.access_key_id, &self.secret_access_key]
            .into_iter()
            .map(|s| s.expose().to_string())
            .filter(|s| s.len() >= 4)
            .collect()
    }

    fn config_builder(&self) -> aws_sdk_s3::config::Builder {
        let mut timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(5));
        if let Some(t) = self.attempt_timeout {
            timeouts = timeouts.operation_attempt_timeout(t);
        }
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint.clone())
            .force_path_style(true)
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                self.access_key_id.expose(),
                self.secret_access_key.expose(),
                None,
                None,
                "rollback-s3-static",
            ))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(self.max_attempts)
                    .with_initial_backoff(self.initial_backoff),
            )
            .timeout_config(timeouts.build())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
    }

    /// A client for these settings.
    pub fn client(&self) -> Client {
        Client::from_conf(self.config_builder().build())
    }

    /// A client for these settings whose requests (every attempt, retries included) are
    /// counted by `counter`.
    pub fn client_counted(&self, counter: &RequestCounter) -> Client {
        Client::from_conf(self.config_builder().interceptor(counter.clone()).build())
    }
}

/// Counts the HTTP requests a client sends, per S3 operation (an SDK interceptor; every
/// attempt counts, retries included).
///
/// ```
/// use rollback_s3::{RequestCounter, S3Settings};
/// let counter = RequestCounter::new();
/// let _client = S3Settings::new("http://127.0.0.1:59000", "us-east-1", "a", "b")
///     .client_counted(&counter);
/// assert_eq!(counter.total(), 0);
/// ```
#[derive(Clone, Default, Debug)]
pub struct RequestCounter {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl RequestCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests per operation name (`ListObjectsV2`, `CopyObject`, ...).
    pub fn by_operation(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|g| g.clone()).unwrap_or_default()
    }
    /// All requests.
    pub fn total(&self) -> u64 {
        self.by_operation().values().sum()
    }
    /// Back to zero.
    pub fn reset(&self) {
        if let Ok(mut g) = self.counts.lock() {
            g.clear();
        }
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "rollback-s3-request-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let name = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_else(|| "unknown".into());
        if let Ok(mut g) = self.counts.lock() {
            *g.entry(name).or_default() += 1;
        }
        Ok(())
    }
}
