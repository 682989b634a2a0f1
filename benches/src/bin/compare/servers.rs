//! The servers the runner needs: reused when the test environment names them, else
//! started with the project's own `scripts/lib/servers.sh` (as `scripts/test` does) and
//! stopped when the runner ends.

use crate::Res;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the servers are.
pub(crate) struct Servers {
    /// Superuser URL of the PostgreSQL cluster (its `postgres` database).
    pub(crate) pg_url: String,
    /// The PostgreSQL binaries (`pg_dump`, `pg_restore`, `pgbench`).
    pub(crate) pg_bin: PathBuf,
    /// S3 endpoint, region, access key, secret key.
    pub(crate) s3: Option<S3Env>,
    /// The TLS-only PostgreSQL cluster (for the fingerprint over TLS).
    pub(crate) pg_tls: Option<PgTls>,
    /// The state dir of servers this runner started (stopped on drop).
    started: Option<String>,
}

/// A TLS-only PostgreSQL cluster (`rb_start_postgres_tls`): its superuser URL (host
/// `localhost`, the only name its certificate holds; no `sslmode`) and the CA that signed
/// its certificate.
#[derive(Debug, Clone)]
pub(crate) struct PgTls {
    pub(crate) url: String,
    pub(crate) ca: PathBuf,
}

impl PgTls {
    fn from_env() -> Option<Self> {
        let v = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        Some(PgTls {
            url: v("ROLLBACK_TEST_PG_TLS_URL")?,
            ca: Path::new(&v("ROLLBACK_TEST_TLS_DIR")?).join("ca.pem"),
        })
    }

    /// The superuser URL with `sslmode=verify-full` and the CA: what libpq (pgbench) and
    /// `rollback_postgres::Database::connect` both read.
    pub(crate) fn verify_full_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}sslmode=verify-full&sslrootcert={}",
            self.url,
            self.ca.display()
        )
    }
}

/// The S3 server's settings.
#[derive(Clone)]
pub(crate) struct S3Env {
    pub(crate) endpoint: String,
    pub(crate) region: String,
    pub(crate) access_key: String,
    pub(crate) secret_key: String,
}

impl std::fmt::Debug for S3Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("S3Env")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Env {
    pub(crate) fn from_env() -> Option<Self> {
        let v = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        Some(S3Env {
            endpoint: v("ROLLBACK_TEST_S3_ENDPOINT")?,
            region: v("ROLLBACK_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
            access_key: v("ROLLBACK_TEST_S3_ACCESS_KEY").unwrap_or_else(|| "test".into()),
            secret_key: v("ROLLBACK_TEST_S3_SECRET_KEY").unwrap_or_else(|| "test".into()),
        })
    }

    /// Settings for the bench: a long attempt timeout, because moto answers a
    /// `ListObjectVersions` page in time proportional to the whole bucket (it deep-copies
    /// every version per page); with the default 30 s the SDK gives up and retries while
    /// moto keeps computing the abandoned pages, and its memory grows without bound.
    pub(crate) fn settings(&self) -> rollback_s3::S3Settings {
        rollback_s3::S3Settings::new(
            &self.endpoint,
            &self.region,
            &self.access_key,
            &self.secret_key,
        )
        .attempt_timeout(Some(std::time::Duration::from_secs(900)))
    }

    /// The environment a child process reads back with [`S3Env::from_env`].
    pub(crate) fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ROLLBACK_TEST_S3_ENDPOINT", self.endpoint.clone()),
            ("ROLLBACK_TEST_S3_REGION", self.region.clone()),
            ("ROLLBACK_TEST_S3_ACCESS_KEY", self.access_key.clone()),
            ("ROLLBACK_TEST_S3_SECRET_KEY", self.secret_key.clone()),
        ]
    }
}

fn scripts_lib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/servers.sh")
}

impl Servers {
    /// Reuse the servers named by the environment, or start those missing: PostgreSQL
    /// always, moto when `need_s3`, the TLS-only PostgreSQL when `need_tls`.
    pub(crate) fn ensure(need_s3: bool, need_tls: bool) -> Res<Self> {
        let pg_url = std::env::var("ROLLBACK_TEST_PG_URL")
            .ok()
            .filter(|s| !s.is_empty());
        let s3 = S3Env::from_env();
        let mut missing = Vec::new();
        if pg_url.is_none() {
            missing.push("rb_start_postgres");
        }
        if need_s3 && s3.is_none() {
            missing.push("rb_start_moto");
        }
        let pg_tls = PgTls::from_env();
        if need_tls && pg_tls.is_none() {
            missing.push("rb_make_tls");
            missing.push("rb_start_postgres_tls");
        }
        if missing.is_empty() {
            let pg_bin = std::env::var("ROLLBACK_PG_BIN")
                .map(PathBuf::from)
                .ok()
                .or_else(find_pg_bin)
                .ok_or("ROLLBACK_PG_BIN is unset and no PostgreSQL binaries were found")?;
            eprintln!("compare: reusing the servers named by ROLLBACK_TEST_PG_URL / ROLLBACK_TEST_S3_ENDPOINT / ROLLBACK_TEST_PG_TLS_URL");
            return Ok(Servers {
                pg_url: pg_url.unwrap_or_default(),
                pg_bin,
                s3: if need_s3 { s3 } else { None },
                pg_tls: if need_tls { pg_tls } else { None },
                started: None,
            });
        }
        eprintln!(
            "compare: starting servers with scripts/lib/servers.sh ({})",
            missing.join(", ")
        );
        let script = format!(
            "set -e; . \"$1\"; rb_state_init; {}; rb_print_exports; printf 'export RB_BENCH_STATE=%s\\n' \"$RB_STATE\"",
            missing.join("; ")
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .arg("bash")
            .arg(scripts_lib())
            .stderr(std::process::Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let vars = parse_exports(&text);
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let started = get("RB_BENCH_STATE");
        if !out.status.success() {
            if let Some(state) = &started {
                stop(state);
            }
            return Err(format!("starting the servers failed ({})", out.status).into());
        }
        for (k, v) in &vars {
            if k.starts_with("ROLLBACK_") {
                std::env::set_var(k, v);
            }
        }
        let pg_url = pg_url
            .or_else(|| get("ROLLBACK_TEST_PG_URL"))
            .ok_or("the server script did not export ROLLBACK_TEST_PG_URL")?;
        let pg_bin = get("ROLLBACK_PG_BIN")
            .or_else(|| std::env::var("ROLLBACK_PG_BIN").ok())
            .map(PathBuf::from)
            .or_else(find_pg_bin)
            .ok_or("no PostgreSQL binaries")?;
        Ok(Servers {
            pg_url,
            pg_bin,
            s3: if need_s3 { S3Env::from_env() } else { None },
            pg_tls: if need_tls { PgTls::from_env() } else { None },
            started,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(state) = self.started.take() {
            eprintln!("compare: stopping the servers it started");
            stop(&state);
        }
    }
}

fn stop(state: &str) {
    let _ = Command::new("bash")
        .arg("-c")
        .arg(". \"$1\"; rb_stop_all \"$2\"")
        .arg("bash")
        .arg(scripts_lib())
        .arg(state)
        .status();
}

fn find_pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_dump").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// `export NAME='value'` lines (single-quoted the way `rb_q` quotes) → (name, value).
pub(crate) fn parse_exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), unquote(v)))
        })
        .collect()
}

fn unquote(v: &str) -> String {
    // 'a'\''b' → a'b
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '\\' if !quoted => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_url_asks_for_verify_full_with_the_test_ca() {
        let t = PgTls {
            url: "postgres://postgres@localhost:55532/postgres".into(),
            ca: "/tmp/x/tls/ca.pem".into(),
        };
        assert_eq!(
            t.verify_full_url(),
            "postgres://postgres@localhost:55532/postgres?sslmode=verify-full&sslrootcert=/tmp/x/tls/ca.pem"
        );
        let q = PgTls {
            url: "postgres://u@localhost:1/db?application_name=a".into(),
            ..t
        };
        assert!(q
            .verify_full_url()
            .contains("?application_name=a&sslmode=verify-full&"));
    }

    #[test]
    fn export_lines_are_unquoted_like_the_shell_does() {
        let v = parse_exports("export A='x y'\nnoise\nexport B='it'\\''s'\nexport C=plain\n");
        assert_eq!(
            v,
            vec![
                ("A".to_string(), "x y".to_string()),
                ("B".to_string(), "it's".to_string()),
                ("C".to_string(), "plain".to_string())
            ]
        );
    }
}
