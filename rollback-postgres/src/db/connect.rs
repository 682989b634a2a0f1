//! Connecting: [`DatabaseBuilder`] and libpq's TLS parameters (`sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`), read from the builder or the connection string.

use super::{tls, Database, DEFAULT_POOL_SIZE};
use rollback_core::{Error, Result};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// How a connection negotiates TLS: libpq's `sslmode`, with libpq's meaning.
///
/// | Mode | Encrypted | Server certificate checked |
/// |---|---|---|
/// | `disable` | never | — |
/// | `prefer` (default) | when the server accepts SSL; plain when it refuses | only when a root certificate is given (then as `verify-ca`) |
/// | `require` | always: a server refusing SSL is an error | only when a root certificate is given (then as `verify-ca`) |
/// | `verify-ca` | always | signed by a trusted root |
/// | `verify-full` | always | signed by a trusted root **and** issued for the host connected to |
///
/// As in libpq, `prefer` falls back to a plain connection only when the server answers
/// that it does not do SSL, not when a TLS handshake fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server accepts it, else plain (libpq's default).
    #[default]
    Prefer,
    /// TLS or fail; the certificate is checked only against a given root certificate.
    Require,
    /// TLS, and the server's certificate chains to a trusted root.
    VerifyCa,
    /// TLS, the certificate chains to a trusted root and names the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq name (`verify-full`…).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(Error::invalid(
                    "sslmode=allow (plain first, TLS on refusal) is not supported: use prefer",
                ))
            }
            other => {
                return Err(Error::invalid(format!(
                    "unknown sslmode {other:?} (expected disable, prefer, require, verify-ca or verify-full)"
                )))
            }
        })
    }
}

/// Where the trusted root certificates come from.
#[derive(Clone)]
pub(crate) enum Roots {
    /// A PEM file (`sslrootcert=<path>`).
    File(PathBuf),
    /// PEM bytes given to the builder.
    Pem(Vec<u8>),
    /// The platform's trust store (`sslrootcert=system`, as libpq 16).
    System,
}

/// Options of [`Database::connect`] beyond the connection string: pool size and TLS.
/// Made by [`Database::builder`]; an option set here wins over the same parameter in the
/// connection string.
///
/// ```no_run
/// # fn demo() -> rollback_core::Result<()> {
/// use rollback_postgres::{Database, SslMode};
/// let db = Database::builder("postgres://app@db.internal:5432/shop")
///     .ssl_mode(SslMode::VerifyFull)
///     .ssl_root_cert("/etc/ssl/db-ca.pem")
///     .ssl_client_cert("/etc/ssl/app.pem", "/etc/ssl/app.key")
///     .pool_size(16)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DatabaseBuilder {
    conn: String,
    pool_size: usize,
    ssl_mode: Option<SslMode>,
    root: Option<Roots>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for DatabaseBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection string may hold a password: not shown.
        f.debug_struct("DatabaseBuilder")
            .field("pool_size", &self.pool_size)
            .field("ssl_mode", &self.ssl_mode)
            .finish_non_exhaustive()
    }
}

impl DatabaseBuilder {
    pub(super) fn new(conn: &str) -> Self {
        DatabaseBuilder {
            conn: conn.to_string(),
            pool_size: DEFAULT_POOL_SIZE,
            ssl_mode: None,
            root: None,
            client_cert: None,
        }
    }

    /// The pool's size (at least 2; default [`DEFAULT_POOL_SIZE`]).
    pub fn pool_size(mut self, max_size: usize) -> Self {
        self.pool_size = max_size;
        self
    }

    /// The TLS mode (overrides `sslmode` in the connection string; default `prefer`).
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = Some(mode);
        self
    }

    /// Trust the root certificates of this PEM file (overrides `sslrootcert`).
    pub fn ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.root = Some(Roots::File(path.into()));
        self
    }

    /// Trust the root certificates of these PEM bytes (overrides `sslrootcert`).
    pub fn ssl_root_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root = Some(Roots::Pem(pem.into()));
        self
    }

    /// Trust the platform's root certificates (as `sslrootcert=system`).
    pub fn ssl_system_roots(mut self) -> Self {
        self.root = Some(Roots::System);
        self
    }

    /// Present this client certificate chain and key (PEM files) to the server
    /// (overrides `sslcert` and `sslkey`).
    pub fn ssl_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Build the pool. No connection is made until one is needed; certificate files are
    /// read now.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed connection string (the message never repeats
    /// it), an unknown `sslmode`, a root or client certificate that cannot be read or
    /// parsed (the message names the file), `sslcert` without `sslkey` or the reverse,
    /// `sslrootcert=system` with a mode weaker than `verify-full`, or `verify-ca` /
    /// `verify-full` with no root certificate (none given and no
    /// `~/.postgresql/root.crt`).
    pub fn build(self) -> Result<Database> {
        let (rest, params) = split_tls_params(&self.conn)?;
        let mut mode = match params.sslmode.as_deref() {
            Some(m) => Some(m.parse::<SslMode>()?),
            None => None,
        };
        if self.ssl_mode.is_some() {
            mode = self.ssl_mode;
        }
        let mut root = params.sslrootcert.map(|r| {
            if r == "system" {
                Roots::System
            } else {
                Roots::File(PathBuf::from(r))
            }
        });
        if self.root.is_some() {
            root = self.root;
        }
        let client_cert = match (self.client_cert, params.sslcert, params.sslkey) {
            (Some(c), _, _) => Some(c),
            (None, Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None, None) => None,
            (None, Some(_), None) => {
                return Err(Error::invalid("sslcert is set but sslkey is not"))
            }
            (None, None, Some(_)) => {
                return Err(Error::invalid("sslkey is set but sslcert is not"))
            }
        };
        let mode = match (mode, &root) {
            (None, Some(Roots::System)) => SslMode::VerifyFull,
            (Some(m), Some(Roots::System)) if m != SslMode::VerifyFull => {
                return Err(Error::invalid(format!(
                    "sslrootcert=system needs sslmode=verify-full (got {m}), as libpq"
                )))
            }
            (m, _) => m.unwrap_or_default(),
        };
        if root.is_none() && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            // libpq's default root file.
            match default_root_file() {
                Some(p) => root = Some(Roots::File(p)),
                None => {
                    return Err(Error::invalid(format!(
                        "sslmode={mode} needs a root certificate to check the server's: set \
                         sslrootcert (a PEM file, or `system` for the platform's roots) or \
                         create ~/.postgresql/root.crt"
                    )))
                }
            }
        }
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|_| {
            Error::invalid(
                "malformed PostgreSQL connection string (not shown: it may hold a password)",
            )
        })?;
        let tls = match mode {
            SslMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            m => {
                config.ssl_mode(if m == SslMode::Prefer {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                Some(tls::MakeRustls::new(
                    m,
                    root.as_ref(),
                    client_cert.as_ref(),
                )?)
            }
        };
        Database::from_config(config, tls, mode, self.pool_size)
    }
}

/// `~/.postgresql/root.crt` when it exists (libpq's default `sslrootcert`).
fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".postgresql").join("root.crt");
    p.is_file().then_some(p)
}

/// The TLS parameters taken out of a connection string.
#[derive(Default)]
struct TlsParams {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl TlsParams {
    /// Take `key`'s value if it is one of ours.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Split a connection string (URL or `key=value` form) into the string without the TLS
/// parameters (which tokio-postgres rejects or ignores) and those parameters. Errors
/// never repeat the string.
fn split_tls_params(conn: &str) -> Result<(String, TlsParams)> {
    let mut params = TlsParams::default();
    let malformed = || {
        Error::invalid("malformed PostgreSQL connection string (not shown: it may hold a password)")
    };
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Some((base, query)) = conn.split_once('?') else {
            return Ok((conn.to_string(), params));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k).ok_or_else(malformed)?;
            let value = percent_decode(v).ok_or_else(malformed)?;
            if !params.take(&key, value) {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    // key=value form: values may be single-quoted, with \' and \\ escapes.
    let mut kept = Vec::new();
    let mut chars = conn.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return Err(malformed());
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(malformed)?),
                    Some(c) => value.push(c),
                    None => return Err(malformed()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    value.push(chars.next().ok_or_else(malformed)?);
                } else {
                    value.push(c);
                }
            }
        }
        if !params.take(&key, value.clone()) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), params))
}

/// Decode `%XX` escapes (and nothing else); `None` for a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
