//! Talking to Unleash: one request with retries, and its failures as typed errors that
//! never show a credential (TLS causes in words, HTTP errors with the body truncated).

use super::{UnleashProvider, BACKEND};
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use rollback_core::{Error, Result};
use serde_json::Value;

/// A TLS failure talking to Unleash: permanent (the certificate or the configuration must
/// change), never retried.
#[derive(Debug, thiserror::Error)]
#[error("unleash at {url}: TLS: {cause}")]
pub(super) struct TlsError {
    pub(super) url: String,
    pub(super) cause: String,
}

/// An HTTP failure from Unleash, safe to show (no credentials, body truncated).
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: HTTP {status}: {message}")]
pub(super) struct HttpError {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) status: u16,
    pub(super) message: String,
}

/// What one HTTP exchange gave.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
}

impl UnleashProvider {
    /// One request with retries. `write`: whether it changes state (for `maybe_applied`).
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        write: bool,
    ) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0u32;
        let mut reached = false;
        loop {
            attempt += 1;
            let mut req = self
                .client
                .request(method.clone(), &url)
                .header(AUTHORIZATION, self.auth.clone());
            if let Some(b) = body {
                req = req.json(b);
            }
            let (failure, detail) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if status >= 500 || status == 429 {
                        reached = true;
                        (format!("HTTP {status}"), String::new())
                    } else {
                        let text = resp.text().await.unwrap_or_default();
                        let body = if text.trim().is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_str(&text).unwrap_or(Value::String(text))
                        };
                        return Ok(Answer { status, body });
                    }
                }
                Err(e) => {
                    if let Some(cause) = tls_cause(&e) {
                        // Permanent: retrying cannot fix a certificate.
                        return Err(Error::Backend {
                            backend: BACKEND,
                            source: Box::new(TlsError {
                                url: self.shown.clone(),
                                cause,
                            }),
                            maybe_applied: false,
                        });
                    }
                    if e.is_builder() {
                        return Err(Error::invalid(format!(
                            "unleash at {}: {method} {path}: the request cannot be made: {}",
                            self.shown,
                            error_chain(&e.without_url())
                        )));
                    }
                    if !e.is_connect() {
                        reached = true;
                    }
                    let (connect, timeout) = (e.is_connect(), e.is_timeout());
                    // Without the URL: it may hold user info.
                    let detail = error_chain(&e.without_url());
                    if connect {
                        ("connection failed".to_string(), detail)
                    } else if timeout {
                        ("timed out".to_string(), detail)
                    } else if self.base.starts_with("http://") {
                        (
                            "request failed".to_string(),
                            format!(
                                "{detail}; a server that speaks only TLS answers plain HTTP \
                                 like this: use https://"
                            ),
                        )
                    } else {
                        ("request failed".to_string(), detail)
                    }
                }
            };
            tracing::warn!(backend = BACKEND, %method, path, attempt, failure = %failure, detail = %detail, "unleash request failed");
            if attempt > self.retries {
                return Err(Error::transient(
                    format!(
                        "unleash at {}: {method} {path}: {failure} (after {attempt} attempts){}",
                        self.shown,
                        if detail.is_empty() {
                            String::new()
                        } else {
                            format!(": {detail}")
                        }
                    ),
                    write && reached,
                ));
            }
            tokio::time::sleep(self.backoff.saturating_mul(1u32 << (attempt - 1).min(10))).await;
        }
    }

    pub(super) fn http_error(
        method: &Method,
        path: &str,
        a: &Answer,
        maybe_applied: bool,
    ) -> Error {
        let message = a
            .body
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| a.body.to_string());
        let message: String = message.chars().take(300).collect();
        if a.status == 409 {
            return Error::conflict(format!("unleash: {method} {path}: {message}"));
        }
        Error::Backend {
            backend: BACKEND,
            source: Box::new(HttpError {
                method: method.to_string(),
                path: path.to_string(),
                status: a.status,
                message,
            }),
            maybe_applied,
        }
    }

    /// A request that must answer 2xx.
    pub(super) async fn expect_ok(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        write: bool,
        any_written: bool,
    ) -> Result<Value> {
        let a = self
            .call(method.clone(), path, body, write)
            .await
            .map_err(|e| {
                if any_written {
                    e.after_writes("unleash")
                } else {
                    e
                }
            })?;
        if (200..300).contains(&a.status) {
            Ok(a.body)
        } else {
            Err(Self::http_error(&method, path, &a, any_written))
        }
    }
}

/// The TLS cause of a request error, in words, when it is one.
pub(super) fn tls_cause(e: &reqwest::Error) -> Option<String> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(r) = find_rustls(s) {
            use rustls::CertificateError as C;
            return Some(match r {
                rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
                    "the server's certificate is not signed by a trusted CA (add the CA with \
                     with_root_certificate_pem, or give a configured client with with_client)"
                        .to_string()
                }
                rustls::Error::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. },
                ) => "the server's certificate does not name the host in the URL (use a \
                      host name the certificate holds)"
                    .to_string(),
                other => format!("handshake failed: {other}"),
            });
        }
        src = s.source();
    }
    None
}

/// An error and its sources, in one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut m = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !m.contains(&t) {
            m.push_str(&format!(": {t}"));
        }
        src = s.source();
    }
    m
}

/// `http://user:pass@host` → `http://***@host`.
pub(super) fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// The rustls error in `e`, looking through `io::Error`s wrapped in one another (whose
/// `source` skips the error they wrap).
pub(super) fn find_rustls<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    let io = e.downcast_ref::<std::io::Error>()?;
    let inner: &(dyn std::error::Error + 'static) = io.get_ref()?;
    find_rustls(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn user_info_in_the_url_is_never_shown() {
        let p = UnleashProvider::new(
            "http://bob:hunter2@127.0.0.1:4242/",
            "tok-en",
            "default",
            "development",
        )
        .unwrap();
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-en"),
            "{shown}"
        );
        assert!(shown.contains("http://***@127.0.0.1:4242"), "{shown}");
        assert_eq!(
            redact_userinfo("http://127.0.0.1:1/a@b"),
            "http://127.0.0.1:1/a@b"
        );
    }
}
