//! Private S3 errors and their mapping onto [`rollback_core::Error`].

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use rollback_core::Error;
use std::fmt;

/// Whether an operation changes state (then an uncertain outcome means "maybe applied").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
}

/// One failed S3 request, described without credentials.
#[derive(Debug)]
pub(crate) struct S3OpError {
    pub(crate) operation: &'static str,
    pub(crate) target: String,
    pub(crate) code: Option<String>,
    pub(crate) status: Option<u16>,
    pub(crate) detail: String,
}

impl fmt::Display for S3OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.operation, self.target)?;
        if let Some(s) = self.status {
            write!(f, " (HTTP {s})")?;
        }
        if let Some(c) = &self.code {
            write!(f, " [{c}]")?;
        }
        write!(f, ": {}", self.detail)
    }
}

impl std::error::Error for S3OpError {}

/// Remove every redacted string (credentials) from `s`, and cap its length.
pub(crate) fn scrub(s: &str, redactions: &[String]) -> String {
    let mut out = s.to_string();
    for r in redactions {
        if !r.is_empty() {
            out = out.replace(r.as_str(), "***");
        }
    }
    if out.len() > 600 {
        let mut end = 600;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// What kind of failure a request ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Rejected by the server before doing anything, worth retrying (throttling, 503).
    RejectedTransient,
    /// Outcome unknown, worth retrying (timeout, dropped connection, 500/502/504).
    UncertainTransient,
    /// Precondition failed (412) or a conflicting concurrent change (409).
    Conflict,
    /// The request could not be built: nothing was sent.
    Construction,
    /// Any other answer of the server (it refused: nothing happened).
    Refused,
}

/// Map an SDK error of one request onto the core error, with `maybe_applied` set for
/// writes whose outcome is uncertain.
pub(crate) fn map_sdk<E, R>(
    err: SdkError<E, R>,
    operation: &'static str,
    target: &str,
    op: Op,
    redactions: &[String],
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + HasStatus,
{
    let (class, code, status) = match &err {
        SdkError::ConstructionFailure(_) => (Class::Construction, None, None),
        SdkError::TimeoutError(_) => (Class::UncertainTransient, None, None),
        SdkError::DispatchFailure(d) => {
            let connector = d.as_connector_error();
            let endpoint = connector.is_some_and(|c| unresolvable_endpoint(c));
            if let Some(tls) = connector.and_then(|c| tls_failure(c)) {
                // The TLS handshake failed: the same certificate fails the same way next
                // time. Say why, in words an operator can act on.
                let e = S3OpError {
                    operation,
                    target: target.to_string(),
                    code: None,
                    status: None,
                    detail: scrub(&tls, redactions),
                };
                return Error::Backend {
                    backend: "s3",
                    source: Box::new(e),
                    maybe_applied: false,
                };
            }
            if let Some(c) = connector.and_then(|c| credentials_failure(c)) {
                // Identity resolution runs before anything is sent.
                let e = S3OpError {
                    operation,
                    target: target.to_string(),
                    code: None,
                    status: None,
                    detail: scrub(
                        &format!("no credentials to sign with: {}", DisplayErrorContext(c)),
                        redactions,
                    ),
                };
                return match c {
                    CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
                        Error::transient(e.to_string(), false)
                    }
                    _ => Error::Backend {
                        backend: "s3",
                        source: Box::new(e),
                        maybe_applied: false,
                    },
                };
            }
            if d.is_user() || endpoint {
                // Nothing was sent, and sending again cannot help (a malformed endpoint).
                (Class::Construction, None, None)
            } else {
                (Class::UncertainTransient, None, None)
            }
        }
        SdkError::ResponseError(r) => (Class::UncertainTransient, None, r.raw().status()),
        SdkError::ServiceError(s) => {
            let code = s.err().code().map(str::to_string);
            let status = s.raw().status();
            let class = classify(code.as_deref(), status);
            (class, code, status)
        }
        _ => (Class::UncertainTransient, None, None),
    };
    let mut detail = scrub(&DisplayErrorContext(&err).to_string(), redactions);
    if detail.contains("connection closed before message completed") {
        // What a TLS-only server does with a plain-HTTP request, too.
        detail.insert_str(
            0,
            "the server closed the connection without answering (a dropped connection, \
             or a plain-HTTP request to an HTTPS-only endpoint: then use https://): ",
        );
    }
    let e = S3OpError {
        operation,
        target: target.to_string(),
        code,
        status,
        detail,
    };
    let write = op == Op::Write;
    match class {
        Class::RejectedTransient => Error::transient(e.to_string(), false),
        Class::UncertainTransient => Error::transient(e.to_string(), write),
        Class::Conflict => Error::conflict(e.to_string()),
        Class::Construction => Error::Backend {
            backend: "s3",
            source: Box::new(e),
            maybe_applied: false,
        },
        Class::Refused => Error::Backend {
            backend: "s3",
            source: Box::new(e),
            maybe_applied: false,
        },
    }
}

/// Whether the request failed because its endpoint cannot be resolved into a URI (a
/// malformed endpoint URL): a permanent error, whatever the SDK's dispatch kind says.
fn unresolvable_endpoint(err: &(dyn std::error::Error + 'static)) -> bool {
    use aws_smithy_runtime_api::client::endpoint::error::ResolveEndpointError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        // The S3 endpoint rules raise aws-smithy-http's type; the runtime its own.
        if e.is::<ResolveEndpointError>()
            || e.is::<aws_smithy_http::endpoint::ResolveEndpointError>()
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The credential provider's error, when the request failed for want of credentials.
fn credentials_failure<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// When the request failed in the TLS handshake (rustls refused the server's
/// certificate, or the server does not speak TLS), a sentence saying so.
fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(match r {
                rustls::Error::InvalidCertificate(c) => format!(
                    "TLS handshake failed: the server's certificate was refused ({c:?}); \
                     check the CA bundle and that the endpoint's host name is one the \
                     certificate names"
                ),
                rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                    format!(
                        "TLS handshake failed: the endpoint does not speak TLS ({r}); \
                         use an http:// endpoint for a plain-HTTP server"
                    )
                }
                other => format!("TLS handshake failed: {other}"),
            });
        }
        // hyper-rustls nests the rustls error inside io::Errors.
        cur = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _).or_else(|| e.source()),
            None => e.source(),
        };
    }
    None
}

fn classify(code: Option<&str>, status: Option<u16>) -> Class {
    match code {
        Some(
            "SlowDown"
            | "ServiceUnavailable"
            | "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "RequestThrottled",
        ) => return Class::RejectedTransient,
        Some("InternalError" | "RequestTimeout" | "RequestTimeTooSkewed") => {
            return Class::UncertainTransient
        }
        Some("PreconditionFailed" | "OperationAborted" | "ConditionalRequestConflict") => {
            return Class::Conflict
        }
        _ => {}
    }
    match status {
        Some(503) | Some(429) => Class::RejectedTransient,
        Some(500) | Some(502) | Some(504) => Class::UncertainTransient,
        Some(412) | Some(409) => Class::Conflict,
        _ => Class::Refused,
    }
}

/// Access to the HTTP status of a raw response.
pub(crate) trait HasStatus {
    fn status(&self) -> Option<u16>;
}

impl HasStatus for aws_smithy_runtime_api::http::Response {
    fn status(&self) -> Option<u16> {
        Some(self.status().as_u16())
    }
}

/// The status code of a service error, if the error is one.
pub(crate) fn service_status<E, R: HasStatus>(err: &SdkError<E, R>) -> Option<u16> {
    match err {
        SdkError::ServiceError(s) => s.raw().status(),
        _ => None,
    }
}

/// Turn an error raised after some writes already happened into one that says so.
pub(crate) fn after_writes(e: Error) -> Error {
    match e {
        Error::Transient { message, .. } => Error::Transient {
            message,
            maybe_applied: true,
        },
        Error::Backend {
            backend, source, ..
        } => Error::Backend {
            backend,
            source,
            maybe_applied: true,
        },
        e if e.maybe_applied() => e,
        other => Error::Backend {
            backend: "s3",
            source: Box::new(other),
            maybe_applied: true,
        },
    }
}

/// A plain backend error with a message (no SDK error behind it).
pub(crate) fn backend_msg(message: impl Into<String>, maybe_applied: bool) -> Error {
    Error::Backend {
        backend: "s3",
        source: message.into().into(),
        maybe_applied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_transient_and_not_applied() {
        assert_eq!(
            classify(Some("SlowDown"), Some(503)),
            Class::RejectedTransient
        );
        assert_eq!(classify(None, Some(503)), Class::RejectedTransient);
        assert_eq!(classify(None, Some(500)), Class::UncertainTransient);
        assert_eq!(classify(Some("NoSuchKey"), Some(404)), Class::Refused);
        assert_eq!(classify(None, Some(412)), Class::Conflict);
    }

    #[test]
    fn scrub_removes_credentials_and_caps_length() {
        let s = scrub(
            "sig AKIDXYZ and s3cr3t!",
            &["AKIDXYZ".into(), "s3cr3t!".into()],
        );
        assert_eq!(s, "sig *** and ***");
        assert!(scrub(&"x".repeat(5000), &[]).len() < 700);
    }
}
