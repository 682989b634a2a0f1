//! Private errors of this crate and their conversion into [`rollback_core::Error`].

use rollback_core::Error;
use std::fmt;
use tokio_postgres::error::SqlState;

/// The backend name used in [`Error::Backend`].
pub(crate) const BACKEND: &str = "postgres";

/// A PostgreSQL error with what we were doing. Its `Display` carries the server's message,
/// SQLSTATE, detail and hint, never the connection string.
#[derive(Debug)]
pub(crate) struct PgError {
    context: String,
    message: String,
    code: Option<String>,
    class: Class,
    tls: Option<TlsFailure>,
}

/// Why a connection's TLS failed, as [`tls_failure`] reads it from an error of this
/// crate. Each of these is permanent (retrying cannot help: the configuration or the
/// server's certificate must change), and the error's message names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The server does not do SSL, and the `sslmode` (`require`, `verify-ca`,
    /// `verify-full`) needs it.
    ServerRefusedSsl,
    /// The server accepts only encrypted connections from here (`hostssl` lines in
    /// `pg_hba.conf`) and this one was plain (`sslmode=disable`).
    ServerRequiresSsl,
    /// The server's certificate is not signed by a trusted root (`sslrootcert`).
    UnknownCa,
    /// The server's certificate is not issued for the host connected to
    /// (`verify-full`).
    WrongHostname,
    /// The server's certificate is invalid otherwise (expired, not yet valid, revoked,
    /// not for server authentication…).
    BadCertificate,
    /// The server ended the handshake with an alert (e.g. it refused the client
    /// certificate, or wanted one).
    RejectedByServer,
    /// Another TLS failure (protocol, no common cipher…).
    Handshake,
}

impl TlsFailure {
    /// What to do about it, for the error message.
    fn hint(self) -> &'static str {
        match self {
            TlsFailure::ServerRefusedSsl => {
                "the server does not support SSL; enable ssl on the server, or lower sslmode \
                 (prefer falls back to plain)"
            }
            TlsFailure::ServerRequiresSsl => {
                "the server accepts only SSL connections here; use sslmode=require or stronger"
            }
            TlsFailure::UnknownCa => {
                "the server's certificate is not signed by a trusted CA; set sslrootcert to the \
                 CA that issued it"
            }
            TlsFailure::WrongHostname => {
                "the server's certificate does not name the host connected to (sslmode=verify-full); \
                 connect with a name the certificate holds"
            }
            TlsFailure::BadCertificate => "the server's certificate is not valid",
            TlsFailure::RejectedByServer => {
                "the server refused the TLS handshake (check sslcert/sslkey and the server's \
                 ssl_ca_file)"
            }
            TlsFailure::Handshake => "the TLS handshake failed",
        }
    }
}

/// The TLS cause of an error returned by this crate, if it is one: a connection refused
/// for a certificate, a hostname, or SSL refused or required by the server.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use rollback_postgres::{tls_failure, Database, TlsFailure};
/// let db = Database::connect("postgres://app@127.0.0.1/shop?sslmode=verify-full&sslrootcert=ca.pem")?;
/// if let Err(e) = db.client().await {
///     assert_eq!(tls_failure(&e), Some(TlsFailure::WrongHostname)); // the cert names `localhost`
/// }
/// # Ok(()) }
/// ```
pub fn tls_failure(error: &Error) -> Option<TlsFailure> {
    match error {
        Error::Backend { source, .. } => source.downcast_ref::<PgError>().and_then(|e| e.tls),
        _ => None,
    }
}

/// The TLS cause of a tokio-postgres error, if any.
fn tls_cause(e: &tokio_postgres::Error) -> Option<TlsFailure> {
    if let Some(db) = e.as_db_error() {
        // pg_hba.conf has no line for a plain connection, only hostssl ones.
        let plain_refused = db.code() == &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().contains("no encryption");
        return plain_refused.then_some(TlsFailure::ServerRequiresSsl);
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        // tokio-postgres' own error when the server answers 'N' to SSLRequest.
        if s.to_string() == "server does not support TLS" {
            return Some(TlsFailure::ServerRefusedSsl);
        }
        if let Some(r) = find_rustls(s) {
            use rustls::CertificateError as C;
            return Some(match r {
                rustls::Error::InvalidCertificate(C::UnknownIssuer) => TlsFailure::UnknownCa,
                rustls::Error::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. },
                ) => TlsFailure::WrongHostname,
                rustls::Error::InvalidCertificate(_) => TlsFailure::BadCertificate,
                rustls::Error::AlertReceived(_) => TlsFailure::RejectedByServer,
                _ => TlsFailure::Handshake,
            });
        }
        src = s.source();
    }
    None
}

/// How an error can be acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Retrying may succeed; the transaction (if any) was rolled back.
    Transient,
    /// The connection broke: the outcome of an in-flight COMMIT is unknown.
    Connection,
    /// Anything else.
    Permanent,
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.message)?;
        if let Some(code) = &self.code {
            write!(f, " (SQLSTATE {code})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}

impl PgError {
    pub(crate) fn new(context: impl Into<String>, e: &tokio_postgres::Error) -> Self {
        let (message, code) = match e.as_db_error() {
            Some(db) => {
                let mut m = format!("{}: {}", db.severity(), db.message());
                if let Some(d) = db.detail() {
                    m.push_str(&format!("; DETAIL: {d}"));
                }
                if let Some(h) = db.hint() {
                    m.push_str(&format!("; HINT: {h}"));
                }
                (m, Some(db.code().code().to_string()))
            }
            None => {
                let mut m = e.to_string();
                let mut src = std::error::Error::source(e);
                while let Some(s) = src {
                    m.push_str(&format!(": {s}"));
                    src = s.source();
                }
                (m, None)
            }
        };
        let tls = tls_cause(e);
        let (message, class) = match tls {
            // Permanent: the configuration or the certificate must change.
            Some(t) => (format!("{message}; {}", t.hint()), Class::Permanent),
            None => (message, classify(e)),
        };
        PgError {
            context: context.into(),
            message,
            code,
            class,
            tls,
        }
    }

    /// An error of ours with a class.
    pub(crate) fn other(context: impl Into<String>, message: String, class: Class) -> Self {
        PgError {
            context: context.into(),
            message,
            code: None,
            class,
            tls: None,
        }
    }

    pub(crate) fn class(&self) -> Class {
        self.class
    }

    /// Convert into the core error. `maybe_applied`: whether the operation that failed may
    /// have taken effect (decided by the caller, who knows whether a commit was in flight).
    pub(crate) fn into_core(self, maybe_applied: bool) -> Error {
        match self.class {
            Class::Transient | Class::Connection => {
                Error::transient_from(self.to_string(), self, maybe_applied)
            }
            Class::Permanent => Error::Backend {
                backend: BACKEND,
                source: Box::new(self),
                maybe_applied,
            },
        }
    }
}

fn classify(e: &tokio_postgres::Error) -> Class {
    if e.is_closed() {
        return Class::Connection;
    }
    if let Some(code) = e.code() {
        let transient = [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::CANNOT_CONNECT_NOW,
        ];
        if transient.contains(code) {
            return Class::Transient;
        }
        let connection = [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::IDLE_SESSION_TIMEOUT,
        ];
        if connection.contains(code) || code.code().starts_with("08") {
            return Class::Connection;
        }
        return Class::Permanent;
    }
    // No SQLSTATE: I/O, closed socket, protocol trouble: the connection is gone.
    if e.as_db_error().is_none() {
        let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
        if io || e.to_string().contains("communicating") || e.to_string().contains("connect") {
            return Class::Connection;
        }
    }
    Class::Permanent
}

/// Extension to attach context to `tokio_postgres` results.
pub(crate) trait PgResultExt<T> {
    /// Convert into a core error with `context`; the effect did not happen (the failing
    /// statement or transaction was rolled back).
    fn ctx(self, context: &str) -> Result<T, Error>;
}

impl<T> PgResultExt<T> for Result<T, tokio_postgres::Error> {
    fn ctx(self, context: &str) -> Result<T, Error> {
        self.map_err(|e| PgError::new(context, &e).into_core(false))
    }
}

/// A pool error (cannot get a connection); nothing happened. Transient when waiting may
/// help (a timeout, a server that refuses connections for now or cannot be reached);
/// permanent when it cannot (authentication failed, unknown role or database): the run
/// then fails fast with the server's own message; a session whose settings cannot be
/// pinned is a permanent misconfiguration too.
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    match &e {
        deadpool_postgres::PoolError::Backend(pg) => {
            PgError::new("connecting", pg).into_core(false)
        }
        deadpool_postgres::PoolError::Timeout(_) | deadpool_postgres::PoolError::Closed => {
            Error::transient_from(format!("connecting: {e}"), e, false)
        }
        other => backend_msg(format!("connecting: {other}")),
    }
}

/// A backend error with a message of ours.
pub(crate) fn backend_msg(message: impl Into<String>) -> Error {
    Error::backend_not_applied(BACKEND, message.into())
}

/// The rustls error in `e`, looking through `io::Error`s wrapped in one another (whose
/// `source` skips the error they wrap).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    let io = e.downcast_ref::<std::io::Error>()?;
    let inner: &(dyn std::error::Error + 'static) = io.get_ref()?;
    find_rustls(inner)
}
