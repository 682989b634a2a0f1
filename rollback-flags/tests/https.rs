//! Unleash over HTTPS (`ROLLBACK_TEST_UNLEASH_TLS_URL`: a TLS front whose certificate
//! names only `localhost`, signed by the test CA in `ROLLBACK_TEST_TLS_DIR`), and the
//! errors that no retry can fix: they are permanent, fast, and say what to change.

mod common;

use rollback_core::Error;
use rollback_flags::{FlagProvider, FlagState, UnleashProvider};
use std::time::{Duration, Instant};

fn provider(url: &str) -> UnleashProvider {
    UnleashProvider::new(url, common::admin_token(), "default", "development")
        .unwrap()
        .retries(3, Duration::from_millis(200))
}

/// `p.get` fails permanently (no retry: well under the 1.4 s three retries would take),
/// saying `says`, with no credential in it.
async fn expect_permanent(p: &UnleashProvider, says: &str) -> Error {
    let t0 = Instant::now();
    let err = p.get("any-flag").await.expect_err("must fail");
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_millis(1000),
        "took {elapsed:?}: a permanent failure must not be retried ({err})"
    );
    assert!(
        matches!(
            err,
            Error::Backend {
                maybe_applied: false,
                ..
            } | Error::Invalid { .. }
        ),
        "permanent, not transient: {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(says), "{says:?} not in: {text}");
    assert!(
        !text.contains(&common::admin_token()),
        "token in error: {text}"
    );
    err
}

#[tokio::test]
async fn https_with_the_private_ca_reads_and_writes_flags() {
    let Some((url, dir)) = common::unleash_tls() else {
        return;
    };
    let ca = std::fs::read(format!("{dir}/ca.pem")).unwrap();
    let p = provider(&url).with_root_certificate_pem(&ca).unwrap();
    let prefix = common::prefix("https");
    let flag = format!("{prefix}a");
    p.put(&flag, &FlagState::rollout(&flag, 30)).await.unwrap();
    assert_eq!(
        p.get(&flag).await.unwrap(),
        Some(FlagState::rollout(&flag, 30))
    );
    // The plain endpoint behind the TLS front sees the same flag.
    assert_eq!(
        common::unleash().get(&flag).await.unwrap(),
        Some(FlagState::rollout(&flag, 30))
    );
    p.delete(&flag).await.unwrap();
    assert_eq!(p.get(&flag).await.unwrap(), None);
}

#[tokio::test]
async fn an_unknown_ca_is_refused_permanently() {
    let Some((url, dir)) = common::unleash_tls() else {
        return;
    };
    // The platform's roots do not hold the test CA.
    expect_permanent(&provider(&url), "not signed by a trusted CA").await;
    // Nor does an unrelated CA.
    let other = std::fs::read(format!("{dir}/other-ca.pem")).unwrap();
    let p = provider(&url).with_root_certificate_pem(&other).unwrap();
    expect_permanent(&p, "not signed by a trusted CA").await;
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused_permanently() {
    let Some((url, dir)) = common::unleash_tls() else {
        return;
    };
    let ca = std::fs::read(format!("{dir}/ca.pem")).unwrap();
    // The certificate names `localhost` only.
    let by_ip = url.replacen("localhost", "127.0.0.1", 1);
    let p = provider(&by_ip).with_root_certificate_pem(&ca).unwrap();
    expect_permanent(&p, "does not name the host").await;
}

#[tokio::test]
async fn plain_http_to_the_tls_endpoint_fails_saying_to_use_https() {
    let Some((url, _)) = common::unleash_tls() else {
        return;
    };
    let plain = url.replacen("https://", "http://", 1);
    let p = UnleashProvider::new(&plain, common::admin_token(), "default", "development")
        .unwrap()
        .retries(1, Duration::from_millis(10));
    let err = p
        .get("any-flag")
        .await
        .expect_err("plain HTTP to a TLS port");
    let text = err.to_string();
    assert!(text.contains("use https://"), "{text}");
    assert!(!text.contains(&common::admin_token()), "{text}");
}

#[tokio::test]
async fn with_client_sends_through_the_given_client() {
    let Some((url, dir)) = common::unleash_tls() else {
        return;
    };
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(format!("{dir}/ca.pem")).unwrap()).unwrap();
    // A team's client: only its own CA, its own timeouts; no token in it.
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let p = provider(&url).with_client(client);
    let names = p.list().await.expect("list over the given client");
    let _ = names;
    // A client that does not trust the CA is refused, permanently, as with the provider's own.
    let bare = reqwest::Client::builder().build().unwrap();
    expect_permanent(
        &provider(&url).with_client(bare),
        "not signed by a trusted CA",
    )
    .await;
}

#[tokio::test]
async fn a_bad_token_or_a_missing_project_is_permanent() {
    let url = common::unleash_url();
    let p = UnleashProvider::new(&url, "*:*.not-a-token", "default", "development")
        .unwrap()
        .retries(3, Duration::from_millis(200));
    let err = expect_permanent_on(&p).await;
    assert!(err.to_string().contains("401"), "{err}");
    // A client token on the admin API: 403.
    let p = UnleashProvider::new(&url, common::client_token(), "default", "development")
        .unwrap()
        .retries(3, Duration::from_millis(200));
    let err = expect_permanent_on(&p).await;
    assert!(err.to_string().contains("403"), "{err}");
    // A project that does not exist is an error, not an empty project.
    let p = UnleashProvider::new(
        &url,
        common::admin_token(),
        "no-such-project",
        "development",
    )
    .unwrap()
    .retries(3, Duration::from_millis(200));
    let err = expect_permanent_on(&p).await;
    assert!(
        err.to_string()
            .contains("project no-such-project does not exist"),
        "{err}"
    );
    let err = p.list().await.expect_err("list of a missing project");
    assert!(err.to_string().contains("does not exist"), "{err}");
    // A URL that is not HTTP at all is refused when the provider is made.
    let err = UnleashProvider::new("ftp://127.0.0.1:1", "t", "default", "development").unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
}

async fn expect_permanent_on(p: &UnleashProvider) -> Error {
    let t0 = Instant::now();
    let err = p.get("any-flag").await.expect_err("must fail");
    assert!(t0.elapsed() < Duration::from_millis(1000), "retried: {err}");
    assert!(
        matches!(
            err,
            Error::Backend {
                maybe_applied: false,
                ..
            }
        ),
        "permanent: {err:?}"
    );
    assert!(!err.to_string().contains(&common::admin_token()));
    err
}
