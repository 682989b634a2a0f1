//! TLS like libpq, against the TLS-only cluster `scripts/test` starts
//! (`ROLLBACK_TEST_PG_TLS_URL`: `ssl = on`, `hostssl`-only `pg_hba.conf`, a certificate
//! whose only name is `localhost`, signed by the test CA in `ROLLBACK_TEST_TLS_DIR`), and
//! the plain cluster (`ROLLBACK_TEST_PG_URL`) for servers without SSL.

mod common;

use common::with_database;
use rollback_core::conformance::Subject;
use rollback_core::Error;
use rollback_postgres::{
    tls_failure, Database, PgJournal, SqlStep, SslMode, Table, TableSnapshot, TlsFailure,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The TLS server's URL (host `localhost`, no sslmode) and the test CA's folder; `None`
/// (with the reason printed) when they are not set outside CI. Under `CI=true` a missing
/// server fails the test.
fn tls_server() -> Option<(String, String)> {
    match (
        std::env::var("ROLLBACK_TEST_PG_TLS_URL"),
        std::env::var("ROLLBACK_TEST_TLS_DIR"),
    ) {
        (Ok(url), Ok(dir)) => Some((url, dir)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "ROLLBACK_TEST_PG_TLS_URL / ROLLBACK_TEST_TLS_DIR are not set: scripts/test starts \
                 the TLS-only PostgreSQL (rb_start_postgres_tls) and exports them"
            );
            eprintln!(
                "skipped: ROLLBACK_TEST_PG_TLS_URL or ROLLBACK_TEST_TLS_DIR is not set (run through scripts/test)"
            );
            None
        }
    }
}

/// `url` with `params` appended to its query.
fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// `url` with its host replaced by `host`.
fn with_host(url: &str, host: &str) -> String {
    url.replacen("@localhost:", &format!("@{host}:"), 1)
}

/// A fresh database on the TLS server, made over a verify-full connection; its URL
/// (verify-full with the test CA).
async fn fresh_db(url: &str, dir: &str, label: &str) -> String {
    let admin = Database::connect(&with_params(
        url,
        &format!("sslmode=verify-full&sslrootcert={dir}/ca.pem"),
    ))
    .expect("admin pool");
    let name = format!(
        "rbt_tls_{label}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    admin
        .execute_batch(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create database over TLS");
    with_params(
        &with_database(url, &name),
        &format!("sslmode=verify-full&sslrootcert={dir}/ca.pem"),
    )
}

/// Whether the session behind `db` is encrypted (`pg_stat_ssl`).
async fn encrypted(db: &Database) -> bool {
    let c = db.client().await.expect("client");
    c.query_one(
        "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
        &[],
    )
    .await
    .expect("pg_stat_ssl")
    .get(0)
}

/// Connect and expect a permanent TLS failure of kind `want`, quickly (no retry loop),
/// whose message names the cause and never the password.
async fn expect_refused(db: &Database, want: TlsFailure, says: &str) {
    let t0 = Instant::now();
    let err = db.client().await.expect_err("connection must be refused");
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "refused after {elapsed:?}: a permanent failure must not be retried"
    );
    assert_eq!(tls_failure(&err), Some(want), "{err}");
    assert!(
        matches!(err, Error::Backend { .. }),
        "a TLS refusal is permanent, not transient: {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(says), "message should say {says:?}: {text}");
    assert!(!text.contains("hunter2"), "password in error: {text}");
    // dedicated sessions go through the same connector.
    let err = db
        .dedicated()
        .await
        .expect_err("dedicated must be refused too");
    assert_eq!(tls_failure(&err), Some(want), "{err}");
}

#[tokio::test]
async fn conformance_suite_passes_over_tls_with_verify_full() {
    let Some((url, dir)) = tls_server() else {
        return;
    };
    let db_url = fresh_db(&url, &dir, "conf").await;
    let db = Database::connect(&db_url).expect("pool");
    assert_eq!(db.ssl_mode(), SslMode::VerifyFull);
    assert!(encrypted(&db).await, "the session is not encrypted");
    db.execute_batch(
        "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, qty int DEFAULT 0);
         INSERT INTO items (name, qty) SELECT 'item ' || g, g FROM generate_series(1, 300) g;
         CREATE TABLE other (id int PRIMARY KEY, v text);
         INSERT INTO other VALUES (1, 'x');",
    )
    .await
    .expect("setup");
    let cp = TableSnapshot::new(&db, Table::public("items"));
    let other = TableSnapshot::new(&db, Table::public("other"));
    let step = SqlStep::new(&db, "bump", "UPDATE items SET qty = qty + 1 WHERE id <= 50")
        .down("UPDATE items SET qty = qty - 1 WHERE id <= 50")
        .touching(rollback_core::Checkpoint::resource(&cp));
    rollback_core::conformance::run_all(Subject {
        checkpoint: Arc::new(cp),
        other_checkpoint: Arc::new(other),
        step: Arc::new(step),
        journal: Arc::new(PgJournal::new(&db)),
    })
    .await;
    // A dedicated session is encrypted too.
    let c = db.dedicated().await.expect("dedicated over TLS");
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_issued_for_another_host() {
    let Some((url, dir)) = tls_server() else {
        return;
    };
    // The certificate names `localhost` only; 127.0.0.1 is another name.
    let url = with_host(&url, "postgres:hunter2@127.0.0.1").replacen("postgres@", "", 1);
    let db = Database::connect(&with_params(
        &url,
        &format!("sslmode=verify-full&sslrootcert={dir}/ca.pem"),
    ))
    .unwrap();
    expect_refused(&db, TlsFailure::WrongHostname, "does not name the host").await;
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let Some((url, dir)) = tls_server() else {
        return;
    };
    let url = with_host(&url, "127.0.0.1");
    let db = Database::connect(&with_params(
        &url,
        &format!("sslmode=verify-ca&sslrootcert={dir}/ca.pem"),
    ))
    .unwrap();
    assert!(encrypted(&db).await);
    let db = Database::connect(&with_params(
        &url,
        &format!("sslmode=verify-ca&sslrootcert={dir}/other-ca.pem"),
    ))
    .unwrap();
    expect_refused(&db, TlsFailure::UnknownCa, "not signed by a trusted CA").await;
}

#[tokio::test]
async fn verify_full_refuses_a_server_signed_by_an_unknown_ca() {
    let Some((url, dir)) = tls_server() else {
        return;
    };
    let db = Database::connect(&with_params(
        &url,
        &format!("sslmode=verify-full&sslrootcert={dir}/other-ca.pem"),
    ))
    .unwrap();
    expect_refused(&db, TlsFailure::UnknownCa, "not signed by a trusted CA").await;
}

#[tokio::test]
async fn plain_connection_to_a_tls_only_server_fails_clearly() {
    let Some((url, _)) = tls_server() else { return };
    let db = Database::connect(&with_params(&url, "sslmode=disable")).unwrap();
    expect_refused(&db, TlsFailure::ServerRequiresSsl, "accepts only SSL").await;
}

#[tokio::test]
async fn require_and_prefer_encrypt_without_checking_the_certificate() {
    let Some((url, _)) = tls_server() else { return };
    // As libpq: no root certificate, no check; the server only takes TLS.
    for mode in ["require", "prefer"] {
        let db = Database::connect(&with_params(
            &with_host(&url, "127.0.0.1"),
            &format!("sslmode={mode}"),
        ))
        .unwrap();
        assert!(encrypted(&db).await, "sslmode={mode}");
    }
    // prefer is the default.
    let db = Database::connect(&url).unwrap();
    assert_eq!(db.ssl_mode(), SslMode::Prefer);
    assert!(encrypted(&db).await);
}

#[tokio::test]
async fn require_with_a_root_certificate_checks_the_chain() {
    let Some((url, dir)) = tls_server() else {
        return;
    };
    let db = Database::connect(&with_params(
        &url,
        &format!("sslmode=require&sslrootcert={dir}/other-ca.pem"),
    ))
    .unwrap();
    expect_refused(&db, TlsFailure::UnknownCa, "not signed by a trusted CA").await;
}

#[tokio::test]
async fn require_refuses_a_server_without_ssl_and_prefer_falls_back_to_plain() {
    // The plain test cluster has ssl = off.
    let plain = common::server_url();
    let db = Database::connect(&with_params(&plain, "sslmode=require")).unwrap();
    expect_refused(&db, TlsFailure::ServerRefusedSsl, "does not support SSL").await;
    let db = Database::connect(&with_params(&plain, "sslmode=prefer")).unwrap();
    assert!(
        !encrypted(&db).await,
        "prefer on a server without SSL is plain"
    );
    let db = Database::connect(&plain).unwrap();
    assert!(
        !encrypted(&db).await,
        "the default (prefer) falls back to plain"
    );
}

#[tokio::test]
async fn builder_options_override_the_connection_string() {
    let Some((url, dir)) = tls_server() else {
        return;
    };
    let ca = std::fs::read(format!("{dir}/ca.pem")).unwrap();
    // The string says disable; the builder says verify-full with the CA as PEM bytes.
    let db = Database::builder(&with_params(&url, "sslmode=disable"))
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert_pem(ca)
        .pool_size(3)
        .build()
        .unwrap();
    assert!(encrypted(&db).await);
    // And a root file given in code replaces the string's.
    let db = Database::builder(&with_params(
        &url,
        &format!("sslmode=verify-full&sslrootcert={dir}/other-ca.pem"),
    ))
    .ssl_root_cert(format!("{dir}/ca.pem"))
    .build()
    .unwrap();
    assert!(encrypted(&db).await);
}

#[tokio::test]
async fn key_value_connection_strings_take_the_tls_parameters() {
    let Some((url, dir)) = tls_server() else {
        return;
    };
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_string();
    let conn = format!(
        "host=localhost port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{dir}/ca.pem' application_name='tls test'"
    );
    let db = Database::connect(&conn).unwrap();
    assert!(encrypted(&db).await);
    let c = db.client().await.unwrap();
    let app: String = c
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "tls test", "the other parameters are kept");
}

#[tokio::test]
async fn bad_tls_options_are_refused_before_connecting() {
    let url = "postgres://app:hunter2@localhost:1/db";
    let invalid = |conn: &str, says: &str| {
        let err = Database::connect(conn).expect_err(conn);
        assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(says), "{says:?} not in {text}");
        assert!(!text.contains("hunter2"), "password in error: {text}");
    };
    invalid(
        &format!("{url}?sslmode=verify-everything"),
        "unknown sslmode",
    );
    invalid(&format!("{url}?sslmode=allow"), "sslmode=allow");
    invalid(
        &format!("{url}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        "/nonexistent/ca.pem",
    );
    invalid(&format!("{url}?sslcert=/tmp/c.pem"), "sslkey is not");
    invalid(&format!("{url}?sslkey=/tmp/c.key"), "sslcert is not");
    invalid(
        &format!("{url}?sslmode=require&sslrootcert=system"),
        "sslrootcert=system needs sslmode=verify-full",
    );
    invalid(
        &format!("{url}?sslmode=verify-full&sslrootcert=%zz"),
        "malformed",
    );
    let err = Database::builder(url)
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert_pem(b"not a certificate".to_vec())
        .build()
        .expect_err("no certificate in PEM");
    assert!(err.to_string().contains("no certificate"), "{err}");
}

/// A client certificate for `CN=postgres` signed by the CA whose key is `ca_key` (the test
/// CA's, or the unrelated one's), made with openssl in `dir`: (cert, key) paths.
fn client_cert(dir: &std::path::Path, ca: &str, ca_key: &str) -> (String, String) {
    let key = dir.join("client.key");
    let csr = dir.join("client.csr");
    let cert = dir.join("client.pem");
    let ext = dir.join("client.ext");
    std::fs::write(&ext, "extendedKeyUsage=clientAuth\n").unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        "/CN=postgres",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert.to_str().unwrap(),
        "-days",
        "1",
        "-extfile",
        ext.to_str().unwrap(),
    ]);
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn sslcert_and_sslkey_present_a_client_certificate() {
    let Some((url, dir)) = tls_server() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = client_cert(
        tmp.path(),
        &format!("{dir}/ca.pem"),
        &format!("{dir}/ca.key"),
    );
    let db = Database::connect(&with_params(
        &url,
        &format!("sslmode=verify-full&sslrootcert={dir}/ca.pem&sslcert={cert}&sslkey={key}"),
    ))
    .unwrap();
    let c = db
        .client()
        .await
        .expect("connect with a client certificate");
    let dn: Option<String> = c
        .query_one(
            "SELECT client_dn FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dn.as_deref(),
        Some("/CN=postgres"),
        "the server saw the client certificate"
    );

    // One from a CA the server does not trust is refused by the server.
    let other = tempfile::tempdir().unwrap();
    let (cert, key) = client_cert(
        other.path(),
        &format!("{dir}/other-ca.pem"),
        &format!("{dir}/other-ca.key"),
    );
    let db = Database::builder(&with_params(
        &url,
        &format!("sslmode=verify-full&sslrootcert={dir}/ca.pem"),
    ))
    .ssl_client_cert(cert, key)
    .build()
    .unwrap();
    expect_refused(
        &db,
        TlsFailure::RejectedByServer,
        "refused the TLS handshake",
    )
    .await;
}

#[tokio::test]
async fn a_unix_socket_under_the_default_prefer_connects_plain() {
    let Some((url, _)) = tls_server() else { return };
    let Ok(sock) = std::env::var("ROLLBACK_TEST_PG_TLS_SOCKET_DIR") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "ROLLBACK_TEST_PG_TLS_SOCKET_DIR is not set"
        );
        eprintln!("skipped: ROLLBACK_TEST_PG_TLS_SOCKET_DIR is not set (run through scripts/test)");
        return;
    };
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_string();
    // As libpq: no TLS on a Unix socket; prefer (the default) connects plain.
    let db = Database::connect(&format!(
        "host={sock} port={port} user=postgres dbname=postgres"
    ))
    .unwrap();
    assert_eq!(db.ssl_mode(), SslMode::Prefer);
    assert!(!encrypted(&db).await);
    db.dedicated().await.expect("dedicated over the socket");
}

#[tokio::test]
async fn sslrootcert_system_means_verify_full_against_the_platform_roots() {
    let Some((url, _)) = tls_server() else { return };
    // As libpq 16: `system` implies verify-full; the platform does not trust the test CA.
    let db = Database::connect(&with_params(&url, "sslrootcert=system")).unwrap();
    assert_eq!(db.ssl_mode(), SslMode::VerifyFull);
    expect_refused(&db, TlsFailure::UnknownCa, "not signed by a trusted CA").await;
}
