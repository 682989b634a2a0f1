//! [`UnleashReady`]: the precondition that the Unleash a plan writes to can take its changes.

use super::http::Answer;
use super::UnleashProvider;
use async_trait::async_trait;
use reqwest::Method;
use rollback_core::{Error, Result};
use serde_json::{json, Value};

/// A plan precondition: the Unleash a plan writes to can take its changes — the token is
/// an admin one (no 401/403), the project exists, the environment is enabled in it, and,
/// with [`UnleashReady::needs_flag_variants`], the server accepts flag-level variants
/// (Unleash 6 answers them with 403 unless `enableLegacyVariants` is on). A failing
/// check fails the run's preflight, before anything changes, with what to fix; an
/// unreachable server is an error (transient), as for any call.
///
/// ```no_run
/// # fn demo(unleash: rollback_flags::UnleashProvider) -> rollback_core::Result<()> {
/// use rollback_core::Plan;
/// let plan = Plan::builder("checkout")
///     .precondition(unleash.ready_check())
///     // … steps on `unleash` …
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct UnleashReady {
    provider: UnleashProvider,
    id: String,
    flag_variants: bool,
}

impl UnleashReady {
    /// Also require that flag-level (environment) variants may be written.
    pub fn needs_flag_variants(mut self) -> Self {
        self.flag_variants = true;
        self
    }
}

impl UnleashProvider {
    /// The precondition [`UnleashReady`] for this provider's server, project and
    /// environment.
    pub fn ready_check(&self) -> UnleashReady {
        UnleashReady {
            id: format!("unleash-ready:{}", self.scope),
            provider: self.clone(),
            flag_variants: false,
        }
    }
}

#[async_trait]
impl rollback_core::Verifier for UnleashReady {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &rollback_core::Context) -> Result<rollback_core::Verdict> {
        use rollback_core::Verdict;
        let p = &self.provider;
        // Permanent failures (token, project) are the verdict; transient ones are errors.
        let permanent = |e: Error| match e {
            Error::Transient { .. } => Err(e),
            other => Ok(Verdict::fail(other.to_string())),
        };
        let facts = match p.server_facts().await {
            Ok(f) => f,
            Err(e) => return permanent(e),
        };
        let path = format!("/api/admin/projects/{}", p.project);
        let a = p.call(Method::GET, &path, None, false).await?;
        if a.status == 404 {
            return Ok(Verdict::fail(format!(
                "unleash at {}: project {} does not exist",
                p.shown, p.project
            )));
        }
        if !(200..300).contains(&a.status) {
            return permanent(Self::http_error_of(&path, &a));
        }
        let environments: Vec<String> = a
            .body
            .get("environments")
            .and_then(Value::as_array)
            .map(|envs| {
                envs.iter()
                    .filter_map(|e| {
                        e.get("environment")
                            .or_else(|| e.get("name"))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let evidence = json!({
            "version": facts.version,
            "flag_variants": facts.flag_variants,
            "project": p.project,
            "environments": environments,
        });
        if !environments.iter().any(|e| e == &p.environment) {
            return Ok(Verdict::fail(format!(
                "unleash: environment {} is not enabled in project {} (enabled: {})",
                p.environment,
                p.project,
                environments.join(", ")
            ))
            .with_evidence(evidence));
        }
        if self.flag_variants && !facts.flag_variants {
            return Ok(Verdict::fail(format!(
                "unleash {} does not accept flag-level variants (enableLegacyVariants is off): \
                 put variants on a strategy instead",
                facts.version
            ))
            .with_evidence(evidence));
        }
        Ok(Verdict::pass(format!(
            "unleash {} ready: project {}, environment {}{}",
            facts.version,
            p.project,
            p.environment,
            if self.flag_variants {
                ", flag-level variants accepted"
            } else {
                ""
            }
        ))
        .with_evidence(evidence))
    }
}

impl UnleashReady {
    fn http_error_of(path: &str, a: &Answer) -> Error {
        UnleashProvider::http_error(&Method::GET, path, a, false)
    }
}
