//! The Unleash provider: flag state through Unleash's Admin API.

use crate::provider::check_flag_name;
use crate::{FlagProvider, FlagState, Strategy, Variant};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::HeaderValue;
use reqwest::Method;
use rollback_core::{Error, Result, Secret};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

mod http;
mod ready;

use http::redact_userinfo;
pub use ready::UnleashReady;

const BACKEND: &str = "unleash";

/// What an Unleash server supports, read once per provider (see
/// [`UnleashProvider::server_facts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerFacts {
    /// The server's version (`ui-config`), empty when it does not say.
    pub version: String,
    /// Whether flag-level (environment) variants may be written. Unleash 6 refuses them
    /// (HTTP 403) unless its `enableLegacyVariants` flag is on; strategy variants work
    /// everywhere.
    pub flag_variants: bool,
}

/// Flags of one Unleash project and environment, through the Admin API with an admin
/// token.
///
/// Requests that fail to connect, time out, or get a 5xx or 429 answer are retried with
/// exponential backoff (3 retries from 100 ms by default); then they fail with
/// [`Error::Transient`] whose `maybe_applied` is true only for a write that may have
/// reached the server. Other answers fail with [`Error::Backend`] (`backend: "unleash"`),
/// 409 with [`Error::Conflict`]; so do, at once and without retry, TLS failures (a
/// certificate from an unknown CA or for another host), a bad token (401, 403) and a
/// project that does not exist.
///
/// `https://` URLs use rustls with the platform's roots; add a private CA with
/// [`UnleashProvider::with_root_certificate_pem`], or give your own configured client
/// with [`UnleashProvider::with_client`]. The token is sent only in the `Authorization` header
/// (marked sensitive) and never appears in `Debug`, errors or logs.
///
/// Unleash cannot hold an *enabled* flag without strategies (enabling one adds a 100 %
/// `flexibleRollout`): `put` refuses that state with [`Error::Invalid`]. Flag-level
/// (environment) variants are legacy in Unleash 6, which answers them with 403 unless its
/// `enableLegacyVariants` flag is on: `put` then refuses them with [`Error::Invalid`]
/// before writing anything ([`UnleashProvider::server_facts`]); strategy variants are kept
/// with their strategies.
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_flags::{FlagProvider, UnleashProvider};
/// let unleash = UnleashProvider::new("http://127.0.0.1:4242", "*:*.admin-token", "default", "development")?;
/// println!("{:?}", unleash.get("new-checkout").await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct UnleashProvider {
    client: reqwest::Client,
    /// The `Authorization` header (sensitive), sent with every request.
    auth: HeaderValue,
    /// Roots trusted beyond the platform's, for the provider's own client.
    extra_roots: Vec<reqwest::Certificate>,
    /// Facts about the server, read once when first needed.
    facts: Arc<OnceCell<ServerFacts>>,
    /// Set once the project is known to exist.
    project_found: Arc<OnceCell<()>>,
    base: String,
    /// `base` with any user info replaced by `***`: what Debug, errors and logs show.
    shown: String,
    token: Secret,
    project: String,
    environment: String,
    scope: String,
    retries: u32,
    backoff: Duration,
    concurrency: usize,
}

impl fmt::Debug for UnleashProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnleashProvider")
            .field("url", &self.shown)
            .field("token", &self.token)
            .field("project", &self.project)
            .field("environment", &self.environment)
            .field("retries", &self.retries)
            .finish()
    }
}

fn check_id(what: &str, s: &str) -> Result<()> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
    {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "unleash {what} {s:?} must be non-empty [A-Za-z0-9._~-]"
        )))
    }
}

impl UnleashProvider {
    /// A provider for `project`/`environment` of the Unleash at `url` (e.g.
    /// `http://127.0.0.1:4242`), authenticated with an admin API token.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed URL, project or environment.
    pub fn new(
        url: &str,
        admin_token: impl Into<String>,
        project: &str,
        environment: &str,
    ) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid(
                "unleash url must start with http:// or https://",
            ));
        }
        check_id("project", project)?;
        check_id("environment", environment)?;
        let token = Secret::new(admin_token);
        let mut auth = HeaderValue::from_str(token.expose())
            .map_err(|_| Error::invalid("unleash admin token is not a valid header value"))?;
        auth.set_sensitive(true);
        Ok(UnleashProvider {
            client: Self::own_client(&[])?,
            auth,
            extra_roots: Vec::new(),
            facts: Arc::new(OnceCell::new()),
            project_found: Arc::new(OnceCell::new()),
            shown: redact_userinfo(&base),
            base,
            token,
            project: project.into(),
            environment: environment.into(),
            scope: format!("{project}/{environment}"),
            retries: 3,
            backoff: Duration::from_millis(100),
            concurrency: 8,
        })
    }

    /// The provider's own HTTP client: rustls, the platform's roots plus `extra_roots`.
    fn own_client(extra_roots: &[reqwest::Certificate]) -> Result<reqwest::Client> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15));
        for c in extra_roots {
            b = b.add_root_certificate(c.clone());
        }
        b.build().map_err(|e| {
            Error::backend_not_applied(BACKEND, format!("building the HTTP client: {e}"))
        })
    }

    /// Also trust the root certificates in `pem` (a private CA in front of Unleash), on
    /// the provider's own client; the platform's roots stay trusted. Replaces a client
    /// given with [`UnleashProvider::with_client`].
    ///
    /// ```no_run
    /// # fn demo() -> rollback_core::Result<()> {
    /// use rollback_flags::UnleashProvider;
    /// let ca = std::fs::read("/etc/ssl/internal-ca.pem").expect("CA file");
    /// let unleash = UnleashProvider::new("https://unleash.internal", "*:*.admin-token", "default", "production")?
    ///     .with_root_certificate_pem(&ca)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Invalid`] when `pem` holds no certificate or a malformed one.
    pub fn with_root_certificate_pem(mut self, pem: &[u8]) -> Result<Self> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::invalid(format!("unleash root certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::invalid(
                "unleash root certificate PEM holds no certificate",
            ));
        }
        self.extra_roots.extend(certs);
        self.client = Self::own_client(&self.extra_roots)?;
        Ok(self)
    }

    /// Send requests through `client`, configured as your team's (proxies, client
    /// certificates for mTLS, roots, timeouts). The admin token is still added to each
    /// request by the provider (in a sensitive header), so the client need not carry it.
    /// Errors are classified as with the provider's own client: a TLS failure
    /// (certificate, host name) is permanent, a refused connection or a timeout is
    /// transient.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use rollback_flags::UnleashProvider;
    /// let client = reqwest::Client::builder()
    ///     .proxy(reqwest::Proxy::https("http://proxy.internal:3128")?)
    ///     .build()?;
    /// let unleash = UnleashProvider::new("https://unleash.example.com", "*:*.admin-token", "default", "production")?
    ///     .with_client(client);
    /// # Ok(()) }
    /// ```
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    /// From the environment: `ROLLBACK_TEST_UNLEASH_URL` or `UNLEASH_URL`, and
    /// `ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN` or `UNLEASH_ADMIN_TOKEN`; `None` when either is
    /// unset.
    ///
    /// # Errors
    /// As [`UnleashProvider::new`].
    pub fn from_env(project: &str, environment: &str) -> Result<Option<Self>> {
        let var = |a: &str, b: &str| {
            std::env::var(a)
                .ok()
                .or_else(|| std::env::var(b).ok())
                .filter(|v| !v.is_empty())
        };
        match (
            var("ROLLBACK_TEST_UNLEASH_URL", "UNLEASH_URL"),
            var("ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN", "UNLEASH_ADMIN_TOKEN"),
        ) {
            (Some(url), Some(token)) => Self::new(&url, token, project, environment).map(Some),
            _ => Ok(None),
        }
    }

    /// Retry transient failures `retries` times, waiting `backoff`, then twice as long
    /// each time.
    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// The project.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The environment.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// What the server supports (version, whether flag-level variants may be written),
    /// read once from `/api/admin/ui-config` and kept.
    ///
    /// # Errors
    /// Transient and backend errors of the request.
    pub async fn server_facts(&self) -> Result<ServerFacts> {
        self.facts
            .get_or_try_init(|| async {
                let path = "/api/admin/ui-config";
                let body = self
                    .expect_ok(Method::GET, path, None, false, false)
                    .await?;
                let version = body
                    .get("version")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let major: u32 = version
                    .split('.')
                    .next()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                let legacy = body
                    .pointer("/flags/enableLegacyVariants")
                    .and_then(Value::as_bool);
                // Before 6, environment variants were the normal kind; from 6 on they
                // are legacy, written only while the server's flag allows it.
                let flag_variants = match legacy {
                    Some(on) => on,
                    None => (1..6).contains(&major),
                };
                Ok(ServerFacts {
                    version,
                    flag_variants,
                })
            })
            .await
            .cloned()
    }

    /// Check that the project exists (once; kept): a missing project is a permanent
    /// error, not an empty project.
    async fn ensure_project(&self) -> Result<()> {
        self.project_found
            .get_or_try_init(|| async {
                let path = format!("/api/admin/projects/{}", self.project);
                let a = self.call(Method::GET, &path, None, false).await?;
                match a.status {
                    200..=299 => Ok(()),
                    404 => Err(Error::backend_not_applied(
                        BACKEND,
                        format!(
                            "unleash at {}: project {} does not exist",
                            self.shown, self.project
                        ),
                    )),
                    _ => Err(Self::http_error(&Method::GET, &path, &a, false)),
                }
            })
            .await
            .map(|_| ())
    }

    fn features_path(&self) -> String {
        format!("/api/admin/projects/{}/features", self.project)
    }

    fn env_path(&self, flag: &str) -> String {
        format!(
            "{}/{flag}/environments/{}",
            self.features_path(),
            self.environment
        )
    }

    /// The flag's environment with strategy ids, `None` when the flag does not exist.
    async fn read(&self, flag: &str) -> Result<Option<(FlagState, Vec<(String, Strategy)>)>> {
        check_flag_name(flag)?;
        let path = format!("{}/{flag}?variantEnvironments=true", self.features_path());
        let a = self.call(Method::GET, &path, None, false).await?;
        if a.status == 404 {
            // No such flag — or no such project, which must not read as "absent".
            self.ensure_project().await?;
            return Ok(None);
        }
        if !(200..300).contains(&a.status) {
            return Err(Self::http_error(&Method::GET, &path, &a, false));
        }
        if a.body.get("archived").and_then(Value::as_bool) == Some(true) {
            return Ok(None);
        }
        let env = a
            .body
            .get("environments")
            .and_then(Value::as_array)
            .and_then(|envs| {
                envs.iter()
                    .find(|e| e.get("name").and_then(Value::as_str) == Some(&self.environment))
            })
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unleash: environment {} is not enabled in project {}",
                    self.environment, self.project
                ))
            })?;
        let malformed = |what: &str, e: serde_json::Error| {
            Error::backend_not_applied(BACKEND, format!("unexpected {what} for flag {flag}: {e}"))
        };
        let mut with_ids = Vec::new();
        for s in env
            .get("strategies")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let id = s
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let st: Strategy =
                serde_json::from_value(strip_nulls(s)).map_err(|e| malformed("strategy", e))?;
            with_ids.push((id, st));
        }
        let variants: Vec<Variant> = match env.get("variants") {
            Some(v) if !v.is_null() => {
                serde_json::from_value(v.clone()).map_err(|e| malformed("variants", e))?
            }
            _ => Vec::new(),
        };
        let state = FlagState {
            enabled: env.get("enabled").and_then(Value::as_bool).unwrap_or(false),
            strategies: with_ids.iter().map(|(_, s)| s.clone()).collect(),
            variants,
        }
        .normalized();
        Ok(Some((state, with_ids)))
    }

    fn strategy_body(s: &Strategy) -> Value {
        json!({
            "name": s.name,
            "parameters": s.parameters,
            "constraints": s.constraints,
            "variants": s.variants,
            "segments": s.segments,
            "title": s.title,
            "disabled": s.disabled,
            "sortOrder": s.sort_order,
        })
    }

    async fn toggle(&self, flag: &str, on: bool, any_written: bool) -> Result<()> {
        let path = format!("{}/{}", self.env_path(flag), if on { "on" } else { "off" });
        self.expect_ok(Method::POST, &path, None, true, any_written)
            .await
            .map(|_| ())
    }

    async fn create(&self, flag: &str) -> Result<()> {
        let path = self.features_path();
        let body = json!({"name": flag, "type": "release", "impressionData": false});
        let a = self.call(Method::POST, &path, Some(&body), true).await?;
        if (200..300).contains(&a.status) {
            return Ok(());
        }
        let archived = a.status == 409
            && a.body
                .get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.contains("archived"));
        if archived {
            // The flag was archived (perhaps by a step being rolled back): revive it,
            // then the caller writes its state.
            let revive = format!("/api/admin/projects/{}/revive", self.project);
            self.expect_ok(
                Method::POST,
                &revive,
                Some(&json!({"features": [flag]})),
                true,
                false,
            )
            .await?;
            return Ok(());
        }
        Err(Self::http_error(&Method::POST, &path, &a, false))
    }
}

/// Unleash returns `"title": null` and the like; absent and null mean the same to us.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

fn same_content(a: &Strategy, b: &Strategy) -> bool {
    a == b
}

#[async_trait]
impl FlagProvider for UnleashProvider {
    fn kind(&self) -> &str {
        "unleash"
    }

    fn scope(&self) -> &str {
        &self.scope
    }

    async fn list(&self) -> Result<Vec<String>> {
        let path = self.features_path();
        let body = self
            .expect_ok(Method::GET, &path, None, false, false)
            .await?;
        let mut names: Vec<String> = body
            .get("features")
            .and_then(Value::as_array)
            .map(|fs| {
                fs.iter()
                    .filter(|f| f.get("archived").and_then(Value::as_bool) != Some(true))
                    .filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            // Unleash lists no flags for a project that does not exist.
            self.ensure_project().await?;
        }
        names.sort();
        Ok(names)
    }

    async fn get(&self, flag: &str) -> Result<Option<FlagState>> {
        Ok(self.read(flag).await?.map(|(s, _)| s))
    }

    async fn get_many(&self, flags: &[String]) -> Result<BTreeMap<String, Option<FlagState>>> {
        futures::stream::iter(flags.iter().cloned())
            .map(|f| async move {
                let s = self.get(&f).await?;
                Ok::<_, Error>((f, s))
            })
            .buffered(self.concurrency)
            .try_collect()
            .await
    }

    async fn put(&self, flag: &str, state: &FlagState) -> Result<()> {
        check_flag_name(flag)?;
        let target = state.clone().normalized();
        if target.enabled && target.strategies.is_empty() {
            return Err(Error::invalid(format!(
                "unleash cannot hold flag {flag} enabled without strategies (enabling adds a 100% rollout); give it a strategy"
            )));
        }
        if !target.variants.is_empty() {
            let facts = self.server_facts().await?;
            if !facts.flag_variants {
                return Err(Error::invalid(format!(
                    "unleash {} does not accept flag-level variants (its enableLegacyVariants \
                     flag is off; it answers them with 403): give flag {flag} its variants on a \
                     strategy (Strategy::variants) instead",
                    facts.version
                )));
            }
        }
        let mut written = false;
        let (current, with_ids) = match self.read(flag).await? {
            Some(r) => r,
            None => {
                self.create(flag).await?;
                written = true;
                match self
                    .read(flag)
                    .await
                    .map_err(|e| e.after_writes("unleash"))?
                {
                    Some(r) => r,
                    None => {
                        return Err(Error::conflict(format!(
                            "unleash: flag {flag} vanished right after it was created"
                        )))
                    }
                }
            }
        };
        if current == target {
            return Ok(());
        }
        let mut enabled = current.enabled;
        if !target.enabled && enabled {
            self.toggle(flag, false, written).await?;
            written = true;
            enabled = false;
        }
        // Strategies: keep identical ones, update the rest in place, add the missing,
        // then delete the extra (adding first so an enabled flag never loses its last
        // strategy, which Unleash answers by disabling it).
        let mut unmatched_current: Vec<(String, Strategy)> = Vec::new();
        let mut unmatched_target: Vec<&Strategy> = target.strategies.iter().collect();
        for (id, s) in with_ids {
            if let Some(pos) = unmatched_target.iter().position(|t| same_content(t, &s)) {
                unmatched_target.remove(pos);
            } else {
                unmatched_current.push((id, s));
            }
        }
        let strategies = format!("{}/strategies", self.env_path(flag));
        let mut order: Vec<(String, i64)> = Vec::new();
        for t in unmatched_target {
            let body = Self::strategy_body(t);
            // Update in place a strategy of the same name (Unleash ignores a null title
            // on update, so one whose title must go is replaced instead).
            let reuse = unmatched_current
                .iter()
                .position(|(_, c)| c.name == t.name && (c.title.is_none() || t.title.is_some()));
            match reuse.map(|i| unmatched_current.remove(i)) {
                Some((id, old)) => {
                    let path = format!("{strategies}/{id}");
                    self.expect_ok(Method::PUT, &path, Some(&body), true, written)
                        .await?;
                    written = true;
                    // PUT keeps the old sort order; fix it below if it differs.
                    if old.sort_order != t.sort_order {
                        order.push((id, t.sort_order));
                    }
                }
                None => {
                    self.expect_ok(Method::POST, &strategies, Some(&body), true, written)
                        .await?;
                    written = true;
                }
            }
        }
        let to_delete: Vec<String> = unmatched_current.into_iter().map(|(id, _)| id).collect();
        if !order.is_empty() {
            let path = format!("{strategies}/set-sort-order");
            let body = Value::Array(
                order
                    .iter()
                    .map(|(id, so)| json!({"id": id, "sortOrder": so}))
                    .collect(),
            );
            self.expect_ok(Method::POST, &path, Some(&body), true, written)
                .await?;
            written = true;
        }
        for id in to_delete {
            let path = format!("{strategies}/{id}");
            let a = self
                .call(Method::DELETE, &path, None, true)
                .await
                .map_err(|e| {
                    if written {
                        e.after_writes("unleash")
                    } else {
                        e
                    }
                })?;
            if !(200..300).contains(&a.status) && a.status != 404 {
                return Err(Self::http_error(&Method::DELETE, &path, &a, written));
            }
            written = true;
        }
        if target.variants != current.variants {
            let path = format!("{}/variants", self.env_path(flag));
            let body = serde_json::to_value(&target.variants).unwrap_or(Value::Null);
            self.expect_ok(Method::PUT, &path, Some(&body), true, written)
                .await?;
            written = true;
        }
        if target.enabled && !enabled {
            self.toggle(flag, true, written).await?;
        }
        Ok(())
    }

    async fn delete(&self, flag: &str) -> Result<()> {
        check_flag_name(flag)?;
        // Unleash records lifecycle stages from events, asynchronously: a flag deleted
        // from the archive before its `archived` stage is written makes that insert fail
        // its foreign key, and Unleash 6 exits on the unhandled error. So wait for the
        // flag's creation to be recorded, archive it, wait for the archive to be
        // recorded, and only then delete it from the archive; should a stage not show up
        // in time, the flag is left archived (not served to clients).
        // A failed lifecycle read decides nothing here: the archive request will tell.
        let _ = self.await_lifecycle(flag, "initial").await;
        let archive = format!("{}/{flag}", self.features_path());
        let a = self.call(Method::DELETE, &archive, None, true).await?;
        if !(200..300).contains(&a.status) && a.status != 404 {
            return Err(Self::http_error(&Method::DELETE, &archive, &a, false));
        }
        let written = a.status != 404;
        if written
            && !self
                .await_lifecycle(flag, "archived")
                .await
                .unwrap_or(false)
        {
            tracing::warn!(
                flag,
                "Unleash did not record the archive in time; the flag is left archived"
            );
            return Ok(());
        }
        let purge = format!("/api/admin/archive/{flag}");
        let a = self
            .call(Method::DELETE, &purge, None, true)
            .await
            .map_err(|e| {
                if written {
                    e.after_writes("unleash")
                } else {
                    e
                }
            })?;
        if !(200..300).contains(&a.status) && a.status != 404 {
            return Err(Self::http_error(&Method::DELETE, &purge, &a, written));
        }
        Ok(())
    }
}

impl UnleashProvider {
    /// Wait (up to 10 s) until Unleash's lifecycle of `flag` shows `stage`. `Ok(false)`
    /// when it did not in time, or when this Unleash keeps no lifecycle (no such endpoint).
    async fn await_lifecycle(&self, flag: &str, stage: &str) -> Result<bool> {
        let path = format!("{}/{flag}/lifecycle", self.features_path());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let a = self.call(Method::GET, &path, None, false).await?;
            if a.status == 404 {
                return Ok(false);
            }
            let seen = a.body.as_array().is_some_and(|stages| {
                stages
                    .iter()
                    .any(|s| s.get("stage").and_then(Value::as_str) == Some(stage))
            });
            if seen {
                return Ok(true);
            }
            if std::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
