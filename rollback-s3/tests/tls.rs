//! HTTPS, certificate checks, the credential chain and permanent errors, against Ceph
//! radosgw (signatures enforced) with its TLS endpoint: `ROLLBACK_TEST_RGW_*`,
//! `ROLLBACK_TEST_RGW_TLS_ENDPOINT` (`https://localhost:PORT`) and the certificates of
//! `ROLLBACK_TEST_TLS_DIR` (a test CA, a server certificate for `localhost` only, and an
//! unrelated CA).

use rollback_core::Error;
use rollback_s3::{S3Bucket, S3Settings};
use std::time::{Duration, Instant};

struct Rgw {
    plain: String,
    tls: String,
    tls_dir: String,
    access_key: String,
    secret_key: String,
}

impl Rgw {
    /// The server, or `None` (skipped, with the reason printed) when it is not
    /// configured; under `CI=true` a missing server is a failure.
    fn get() -> Option<Rgw> {
        let var = |k: &str| std::env::var(k).map_err(|_| k.to_string());
        let got = (|| {
            Ok::<_, String>(Rgw {
                plain: var("ROLLBACK_TEST_RGW_ENDPOINT")?,
                tls: var("ROLLBACK_TEST_RGW_TLS_ENDPOINT")?,
                tls_dir: var("ROLLBACK_TEST_TLS_DIR")?,
                access_key: var("ROLLBACK_TEST_RGW_ACCESS_KEY")?,
                secret_key: var("ROLLBACK_TEST_RGW_SECRET_KEY")?,
            })
        })();
        match got {
            Ok(r) => Some(r),
            Err(k) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{k} is not set and CI=true: run the tests through `scripts/test`")
            }
            Err(k) => {
                eprintln!(
                    "skipping {}: {k} is not set (run the tests through `scripts/test`)",
                    std::thread::current().name().unwrap_or("this test")
                );
                None
            }
        }
    }

    fn ca(&self, name: &str) -> String {
        format!("{}/{name}", self.tls_dir)
    }

    /// Static keys, TLS endpoint, the test CA, few quick attempts.
    fn tls_settings(&self) -> S3Settings {
        S3Settings::custom(&self.tls)
            .with_region("us-east-1")
            .static_credentials(&self.access_key, &self.secret_key)
            .ca_bundle_file(self.ca("ca.pem"))
            .unwrap()
            .max_attempts(2)
            .initial_backoff(Duration::from_millis(10))
            .attempt_timeout(Some(Duration::from_secs(10)))
    }

    fn tls_port(&self) -> &str {
        self.tls.rsplit(':').next().unwrap()
    }
}

fn bucket_name(label: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("rb-{label}-{}", &id[..10])
}

/// The error of a PUT through `settings`, with the time it took.
async fn put_error(settings: &S3Settings, bucket: &str) -> (Error, Duration) {
    let t = Instant::now();
    let err = S3Bucket::connect(settings, bucket)
        .put("k", b"v".to_vec())
        .await
        .expect_err("the request must fail");
    (err, t.elapsed())
}

fn assert_permanent(err: &Error) {
    assert!(
        matches!(
            err,
            Error::Backend {
                maybe_applied: false,
                ..
            }
        ),
        "expected a permanent backend error that applied nothing, got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_ca_bundle_verifies_the_host_name_and_round_trips() {
    let Some(rgw) = Rgw::get() else { return };
    let b = S3Bucket::connect(&rgw.tls_settings(), bucket_name("tls"));
    b.create(true).await.unwrap();
    b.put("a/b.txt", b"over tls".to_vec()).await.unwrap();
    assert_eq!(
        b.get("a/b.txt").await.unwrap().unwrap().as_ref(),
        b"over tls"
    );
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_is_refused_with_a_clear_permanent_error() {
    let Some(rgw) = Rgw::get() else { return };
    let settings = rgw
        .tls_settings()
        .ca_bundle_file(rgw.ca("other-ca.pem"))
        .unwrap();
    let (err, _) = put_error(&settings, "any-bucket").await;
    assert_permanent(&err);
    let msg = err.to_string();
    assert!(
        msg.contains("certificate was refused") && msg.contains("UnknownIssuer"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_roots_do_not_trust_a_private_ca() {
    let Some(rgw) = Rgw::get() else { return };
    let settings = S3Settings::custom(&rgw.tls)
        .with_region("us-east-1")
        .static_credentials(&rgw.access_key, &rgw.secret_key)
        .max_attempts(1);
    let (err, _) = put_error(&settings, "any-bucket").await;
    assert_permanent(&err);
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_certificate_does_not_name_is_refused() {
    let Some(rgw) = Rgw::get() else { return };
    // The certificate names DNS:localhost only.
    let settings = rgw
        .tls_settings()
        .with_endpoint(format!("https://127.0.0.1:{}", rgw.tls_port()));
    let (err, _) = put_error(&settings, "any-bucket").await;
    assert_permanent(&err);
    let msg = err.to_string();
    assert!(
        msg.contains("certificate was refused") && msg.contains("NotValidForName"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_endpoint_fails_fast_and_clearly() {
    let Some(rgw) = Rgw::get() else { return };
    let settings = rgw
        .tls_settings()
        .with_endpoint(format!("http://127.0.0.1:{}", rgw.tls_port()));
    let (err, took) = put_error(&settings, "any-bucket").await;
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // To the client this is a connection closed without an answer: transient (the
    // request may have been read), and the message names the likely cause.
    assert!(matches!(err, Error::Transient { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("PutObject") && msg.contains("HTTPS-only endpoint"),
        "{msg}"
    );
    assert!(!msg.contains(&rgw.secret_key), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_http_endpoint_is_refused_as_not_tls() {
    let Some(rgw) = Rgw::get() else { return };
    let port = rgw.plain.rsplit(':').next().unwrap();
    let settings = rgw
        .tls_settings()
        .with_endpoint(format!("https://localhost:{port}"));
    let (err, _) = put_error(&settings, "any-bucket").await;
    assert_permanent(&err);
    assert!(err.to_string().contains("does not speak TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_key_is_a_permanent_signature_error() {
    let Some(rgw) = Rgw::get() else { return };
    let wrong = format!("{}-wrong", rgw.secret_key);
    let settings = rgw
        .tls_settings()
        .static_credentials(&rgw.access_key, &wrong);
    let (err, _) = put_error(&settings, "any-bucket").await;
    assert_permanent(&err);
    let msg = err.to_string();
    assert!(
        msg.contains("403") && msg.contains("SignatureDoesNotMatch"),
        "{msg}"
    );
    assert!(!msg.contains(&wrong), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_access_key_is_a_permanent_error() {
    let Some(rgw) = Rgw::get() else { return };
    let settings = rgw
        .tls_settings()
        .static_credentials("AKIDNOSUCHUSER", "nope-nope-nope");
    let (err, _) = put_error(&settings, "any-bucket").await;
    assert_permanent(&err);
    let msg = err.to_string();
    assert!(
        msg.contains("403") && msg.contains("InvalidAccessKeyId"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_a_permanent_error() {
    let Some(rgw) = Rgw::get() else { return };
    let (err, _) = put_error(&rgw.tls_settings(), &bucket_name("missing")).await;
    assert_permanent(&err);
    let msg = err.to_string();
    assert!(msg.contains("404") && msg.contains("NoSuchBucket"), "{msg}");
}

/// The standard chain: a named profile of the shared files, then the environment
/// variables (which come first in the chain). One test, as both read the process
/// environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_credential_chain_signs_with_profile_files_and_environment() {
    let Some(rgw) = Rgw::get() else { return };
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    let config = dir.path().join("config");
    std::fs::write(
        &credentials,
        format!(
            "[rgw]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            rgw.access_key, rgw.secret_key
        ),
    )
    .unwrap();
    std::fs::write(&config, "[profile rgw]\nregion = us-east-1\n").unwrap();
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        std::env::remove_var(v);
    }
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &credentials);
    std::env::set_var("AWS_CONFIG_FILE", &config);
    // No instance metadata on a test machine: do not wait for it.
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");

    // The profile, with its region from the shared config file.
    let settings = S3Settings::custom(&rgw.tls)
        .profile("rgw")
        .ca_bundle_file(rgw.ca("ca.pem"))
        .unwrap()
        .resolve_region()
        .await;
    assert_eq!(settings.region(), Some("us-east-1"));
    assert!(!settings.has_static_credentials());
    let b = S3Bucket::connect(&settings, bucket_name("chain"));
    b.create(false).await.unwrap();
    b.put("k", b"from the profile".to_vec()).await.unwrap();

    // A profile that does not exist: a clear, permanent error.
    let missing = S3Settings::custom(&rgw.tls)
        .with_region("us-east-1")
        .profile("no-such-profile")
        .ca_bundle_file(rgw.ca("ca.pem"))
        .unwrap()
        .max_attempts(1);
    let (err, _) = put_error(&missing, b.name()).await;
    assert_permanent(&err);
    assert!(err.to_string().contains("no-such-profile"), "{err}");

    // Environment variables.
    std::env::set_var("AWS_ACCESS_KEY_ID", &rgw.access_key);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &rgw.secret_key);
    std::env::set_var("AWS_REGION", "us-east-1");
    let settings = S3Settings::custom(&rgw.tls)
        .ca_bundle_file(rgw.ca("ca.pem"))
        .unwrap();
    let from_env = S3Bucket::connect(&settings, b.name());
    assert_eq!(
        from_env.get("k").await.unwrap().unwrap().as_ref(),
        b"from the profile"
    );
    from_env.dangerous_delete_bucket().await.unwrap();
    for v in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
        std::env::remove_var(v);
    }
}

#[test]
fn a_ca_bundle_that_is_not_a_certificate_is_invalid_input() {
    let err = S3Settings::custom("https://localhost:1")
        .ca_bundle_pem(b"not a certificate".to_vec())
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    let err = S3Settings::custom("https://localhost:1")
        .ca_bundle_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec())
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    let err = S3Settings::custom("https://localhost:1")
        .ca_bundle_file("/nonexistent/ca.pem")
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { message } if message.contains("/nonexistent/ca.pem")),
        "{err:?}"
    );
}
