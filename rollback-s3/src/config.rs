//! Connecting to an S3 API: endpoint, TLS, credentials, region, retries, and a request
//! counter.

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials};
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
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

/// Where the credentials come from.
#[derive(Clone)]
enum CredentialSource {
    /// The AWS SDK's standard chain (`aws-config`), optionally with a named profile.
    Chain { profile: Option<String> },
    /// Fixed keys.
    Static {
        access_key_id: Secret,
        secret_access_key: Secret,
    },
}

/// Where an S3 API is and how to sign in to it: builds an [`aws_sdk_s3::Client`] the
/// way the AWS SDK does by default, with the SDK's standard retries (throttling such as
/// `503 SlowDown` and transient network errors are retried with exponential backoff).
///
/// - **Transport**: HTTPS through rustls (the `ring` provider), verifying the server's
///   certificate and host name against the platform's root certificates, or only
///   against a custom CA bundle ([`S3Settings::ca_bundle_pem`],
///   [`S3Settings::ca_bundle_file`]) for private endpoints. An `http://` endpoint is
///   spoken to in plain HTTP (for loopback test servers).
/// - **Credentials**: the SDK's standard chain by default (`aws-config`: environment
///   variables, shared `config`/`credentials` files and profiles, web identity token,
///   container and EC2 instance metadata), resolved at the first request and cached and
///   refreshed by the SDK; static keys with [`S3Settings::static_credentials`] or
///   [`S3Settings::new`].
/// - **Region**: explicit ([`S3Settings::with_region`]), else `AWS_REGION` /
///   `AWS_DEFAULT_REGION`; [`S3Settings::resolve_region`] runs the whole region chain
///   (profile files, instance metadata).
/// - **Addressing**: path-style for a custom endpoint, virtual-hosted for AWS itself;
///   [`S3Settings::path_style`] overrides.
///
/// `Debug` never shows the credentials. A client you configured yourself (from an
/// `SdkConfig` with `aws_sdk_s3::Client::new`, or `aws_sdk_s3::Client::from_conf`)
/// goes straight to [`S3Bucket::new`](crate::S3Bucket::new).
///
/// ```
/// use rollback_s3::S3Settings;
/// // A private endpoint with its own CA; credentials from the standard chain.
/// # let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ca.pem");
/// let settings = S3Settings::custom("https://s3.internal.example:8443")
///     .with_region("eu-west-1")
///     .ca_bundle_file(&ca)?
///     .max_attempts(5);
/// let client = settings.client(); // no request is sent yet
/// # let _ = client;
/// // A loopback test server with static keys, in plain HTTP.
/// let settings = S3Settings::new("http://127.0.0.1:59000", "us-east-1", "AKID", "very-secret");
/// assert!(!format!("{settings:?}").contains("very-secret"));
/// # Ok::<(), rollback_core::Error>(())
/// ```
#[derive(Clone)]
pub struct S3Settings {
    endpoint: Option<String>,
    region: Option<String>,
    credentials: CredentialSource,
    path_style: Option<bool>,
    ca_bundle: Option<Arc<Vec<u8>>>,
    max_attempts: u32,
    initial_backoff: Duration,
    attempt_timeout: Option<Duration>,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credentials = match &self.credentials {
            CredentialSource::Chain { profile: None } => "default chain".to_string(),
            CredentialSource::Chain { profile: Some(p) } => format!("default chain, profile {p}"),
            CredentialSource::Static { .. } => "static (***)".to_string(),
        };
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials", &credentials)
            .field("path_style", &self.path_style_effective())
            .field("custom_ca_bundle", &self.ca_bundle.is_some())
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

impl S3Settings {
    fn base(endpoint: Option<String>, credentials: CredentialSource) -> Self {
        S3Settings {
            endpoint,
            region: None,
            credentials,
            path_style: None,
            ca_bundle: None,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            attempt_timeout: Some(Duration::from_secs(30)),
        }
    }

    /// Amazon S3 itself: the SDK's endpoint for the region, virtual-hosted addressing,
    /// the standard credential chain, HTTPS against the platform's roots.
    pub fn aws() -> Self {
        Self::base(None, CredentialSource::Chain { profile: None })
    }

    /// An S3-compatible endpoint (e.g. `https://s3.internal.example:8443`): path-style
    /// addressing and the standard credential chain.
    pub fn custom(endpoint: impl Into<String>) -> Self {
        Self::base(
            Some(endpoint.into()),
            CredentialSource::Chain { profile: None },
        )
    }

    /// Settings for `endpoint` (e.g. `http://127.0.0.1:59000`) in `region` with static
    /// credentials and path-style addressing; 5 attempts per request, 100 ms first
    /// backoff, 30 s per attempt.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        Self::custom(endpoint)
            .with_region(region)
            .static_credentials(access_key_id, secret_access_key)
    }

    /// Read `{PREFIX}_ENDPOINT` and optionally `{PREFIX}_REGION` (default `us-east-1`),
    /// `{PREFIX}_ACCESS_KEY` and `{PREFIX}_SECRET_KEY` (static credentials when the
    /// access key is set, else the standard chain) from the environment, e.g. with
    /// `prefix = "ROLLBACK_TEST_S3"`. `None` when the endpoint is unset.
    pub fn from_env(prefix: &str) -> Option<Self> {
        let var = |name: &str| std::env::var(format!("{prefix}_{name}")).ok();
        let settings = Self::custom(var("ENDPOINT")?)
            .with_region(var("REGION").unwrap_or_else(|| "us-east-1".into()));
        Some(match var("ACCESS_KEY") {
            Some(ak) => settings.static_credentials(ak, var("SECRET_KEY").unwrap_or_default()),
            None => settings,
        })
    }

    /// Use this endpoint URL instead.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Use this region (no region chain).
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sign with these keys instead of the credential chain.
    pub fn static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = CredentialSource::Static {
            access_key_id: Secret::new(access_key_id),
            secret_access_key: Secret::new(secret_access_key),
        };
        self
    }

    /// Use the standard credential chain with this profile of the shared files (instead
    /// of `AWS_PROFILE` or `default`).
    pub fn profile(mut self, name: impl Into<String>) -> Self {
        self.credentials = CredentialSource::Chain {
            profile: Some(name.into()),
        };
        self
    }

    /// Path-style (`https://host/bucket/key`, `true`) or virtual-hosted
    /// (`https://bucket.host/key`, `false`) addressing.
    pub fn path_style(mut self, path_style: bool) -> Self {
        self.path_style = Some(path_style);
        self
    }

    /// Trust only the CA certificates of this PEM bundle (not the platform's roots) for
    /// HTTPS: for private endpoints. The server's host name is still verified.
    ///
    /// # Errors
    /// [`Error::Invalid`](rollback_core::Error::Invalid) when the bundle holds no
    /// certificate or one that cannot be parsed.
    pub fn ca_bundle_pem(mut self, pem: impl Into<Vec<u8>>) -> Result<Self, rollback_core::Error> {
        let pem = pem.into();
        validate_ca_bundle(&pem)
            .map_err(|m| rollback_core::Error::invalid(format!("CA bundle: {m}")))?;
        self.ca_bundle = Some(Arc::new(pem));
        Ok(self)
    }

    /// [`S3Settings::ca_bundle_pem`] with the contents of a file.
    ///
    /// # Errors
    /// [`Error::Invalid`](rollback_core::Error::Invalid) when the file cannot be read or
    /// holds no valid certificate.
    pub fn ca_bundle_file(self, path: impl AsRef<Path>) -> Result<Self, rollback_core::Error> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            rollback_core::Error::invalid(format!("CA bundle {}: {e}", path.display()))
        })?;
        let pem_ok = validate_ca_bundle(&pem);
        pem_ok.map_err(|m| {
            rollback_core::Error::invalid(format!("CA bundle {}: {m}", path.display()))
        })?;
        Ok(Self {
            ca_bundle: Some(Arc::new(pem)),
            ..self
        })
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

    /// The endpoint URL (`None`: Amazon S3's own endpoint for the region).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The region set explicitly or by [`S3Settings::resolve_region`] (`None`: taken
    /// from `AWS_REGION` / `AWS_DEFAULT_REGION` when the client is built).
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// Whether requests are signed with static keys (else the standard chain).
    pub fn has_static_credentials(&self) -> bool {
        matches!(self.credentials, CredentialSource::Static { .. })
    }

    /// Fill in the region from the SDK's whole region chain (environment, the profile's
    /// `region` in the shared config file, instance metadata) when none is set.
    /// Settings with a region are returned unchanged.
    pub async fn resolve_region(mut self) -> Self {
        if self.region.is_none() {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .http_client(self.http_client());
            if let CredentialSource::Chain { profile: Some(p) } = &self.credentials {
                loader = loader.profile_name(p);
            }
            self.region = loader.load().await.region().map(|r| r.to_string());
        }
        self
    }

    /// Strings that must never appear in logs or errors (the static credentials).
    pub(crate) fn redactions(&self) -> Vec<String> {
        match &self.credentials {
            CredentialSource::Static {
                access_key_id,
                secret_access_key,
            } => [access_key_id, secret_access_key]
                .into_iter()
                .map(|s| s.expose().to_string())
                .filter(|s| s.len() >= 4)
                .collect(),
            CredentialSource::Chain { .. } => Vec::new(),
        }
    }

    fn path_style_effective(&self) -> bool {
        self.path_style.unwrap_or(self.endpoint.is_some())
    }

    fn region_effective(&self) -> Option<String> {
        self.region.clone().or_else(|| {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .into_iter()
                .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()))
        })
    }

    /// The HTTP client: rustls (ring) with the platform's roots or the custom bundle;
    /// `http://` URLs in plain HTTP.
    fn http_client(&self) -> aws_sdk_s3::config::SharedHttpClient {
        let trust = match &self.ca_bundle {
            Some(pem) => TrustStore::empty().with_pem_certificate(pem.as_slice()),
            None => TrustStore::default(),
        };
        let context = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .expect("a TLS context with a trust store always builds");
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(context)
            .build_https()
    }

    fn config_builder(&self) -> aws_sdk_s3::config::Builder {
        let mut timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(5));
        if let Some(t) = self.attempt_timeout {
            timeouts = timeouts.operation_attempt_timeout(t);
        }
        let http = self.http_client();
        let region = self.region_effective().map(Region::new);
        let mut b = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .force_path_style(self.path_style_effective())
            .region(region.clone())
            .http_client(http.clone())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(self.max_attempts)
                    .with_initial_backoff(self.initial_backoff),
            )
            .timeout_config(timeouts.build())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &self.endpoint {
            b = b.endpoint_url(e.clone());
        }
        match &self.credentials {
            CredentialSource::Static {
                access_key_id,
                secret_access_key,
            } => b.credentials_provider(Credentials::new(
                access_key_id.expose(),
                secret_access_key.expose(),
                None,
                None,
                "rollback-s3-static",
            )),
            CredentialSource::Chain { profile } => b.credentials_provider(ChainCredentials {
                profile: profile.clone(),
                region,
                http,
                chain: Arc::new(tokio::sync::OnceCell::new()),
            }),
        }
    }

    /// A client for these settings (no request is sent, no credential is loaded yet).
    pub fn client(&self) -> Client {
        Client::from_conf(self.config_builder().build())
    }

    /// A client for these settings whose requests (every attempt, retries included) are
    /// counted by `counter`.
    pub fn client_counted(&self, counter: &RequestCounter) -> Client {
        Client::from_conf(self.config_builder().interceptor(counter.clone()).build())
    }
}

/// Check that a PEM bundle holds at least one parsable certificate (the TLS stack would
/// panic on a bad one when it builds its first connection).
fn validate_ca_bundle(pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle ({e})"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM bundle".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            format!(
                "certificate {} cannot be used as a trust anchor: {e}",
                i + 1
            )
        })?;
    }
    Ok(())
}

/// The SDK's standard credential chain, built at the first request (building it reads
/// files and may call metadata endpoints, which a synchronous constructor cannot).
struct ChainCredentials {
    profile: Option<String>,
    region: Option<Region>,
    http: aws_sdk_s3::config::SharedHttpClient,
    chain: Arc<tokio::sync::OnceCell<aws_credential_types::provider::SharedCredentialsProvider>>,
}

impl fmt::Debug for ChainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainCredentials")
            .field("profile", &self.profile)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl ProvideCredentials for ChainCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let provider = self
                .chain
                .get_or_try_init(|| async {
                    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                        .http_client(self.http.clone());
                    if let Some(r) = &self.region {
                        loader = loader.region(r.clone());
                    }
                    if let Some(p) = &self.profile {
                        loader = loader.profile_name(p);
                    }
                    loader.load().await.credentials_provider().ok_or_else(|| {
                        CredentialsError::not_loaded(
                            "the standard credential chain found no source",
                        )
                    })
                })
                .await?;
            provider.provide_credentials().await
        })
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
