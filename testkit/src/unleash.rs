//! The real Unleash `scripts/test` starts: its URLs and tokens, unique flag names, the
//! Admin API for setup, and the client API (what an application sees).

use crate::env::require as env;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The test Unleash's plain-HTTP URL (`ROLLBACK_TEST_UNLEASH_URL`, on loopback).
pub fn unleash_url() -> String {
    let url = env("ROLLBACK_TEST_UNLEASH_URL");
    assert!(
        url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:"),
        "ROLLBACK_TEST_UNLEASH_URL must point at 127.0.0.1, got {url}"
    );
    url
}

/// Unleash behind TLS and the test CA's folder (`ROLLBACK_TEST_UNLEASH_TLS_URL`,
/// `ROLLBACK_TEST_TLS_DIR`); `None`, with the reason printed, when they are not set
/// outside CI. Under `CI=true` a missing server fails the test.
pub fn unleash_tls() -> Option<(String, String)> {
    match (
        std::env::var("ROLLBACK_TEST_UNLEASH_TLS_URL"),
        std::env::var("ROLLBACK_TEST_TLS_DIR"),
    ) {
        (Ok(url), Ok(dir)) => Some((url, dir)),
        _ => {
            assert!(
                !crate::env::in_ci(),
                "ROLLBACK_TEST_UNLEASH_TLS_URL / ROLLBACK_TEST_TLS_DIR are not set: scripts/test \
                 starts Unleash's TLS front (rb_start_unleash_tls) and exports them"
            );
            eprintln!(
                "skipped: ROLLBACK_TEST_UNLEASH_TLS_URL or ROLLBACK_TEST_TLS_DIR is not set (run through scripts/test)"
            );
            None
        }
    }
}

/// The Admin API token (`ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN`).
pub fn admin_token() -> String {
    env("ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN")
}

/// The client API token (`ROLLBACK_TEST_UNLEASH_CLIENT_TOKEN`): what an application uses.
pub fn client_token() -> String {
    env("ROLLBACK_TEST_UNLEASH_CLIENT_TOKEN")
}

/// A unique flag-name prefix for one test.
pub fn prefix(label: &str) -> String {
    format!(
        "rbt-{label}-{}-",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A plain HTTP client for the Admin and client APIs.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Create a bare flag through the Admin API (what an operator did before the migration).
pub async fn create_flag(name: &str) {
    let r = http()
        .post(format!(
            "{}/api/admin/projects/default/features",
            unleash_url()
        ))
        .header("Authorization", admin_token())
        .json(&serde_json::json!({"name": name, "type": "release"}))
        .send()
        .await
        .expect("create flag");
    assert!(r.status().is_success(), "create {name}: {}", r.status());
}

/// The id of Unleash's latest flag event: the client API's `meta.revisionId` is the
/// largest id of events that name a flag (Unleash 6's `getMaxRevisionId`), so it catches
/// up to this one.
pub async fn latest_event_id() -> u64 {
    let v: Value = http()
        .get(format!("{}/api/admin/events", unleash_url()))
        .header("Authorization", admin_token())
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("events json");
    v["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["featureName"].is_string())
        .filter_map(|e| e["id"].as_u64())
        .max()
        .unwrap_or(0)
}

/// What an application sees: `GET /api/client/features` with the client token, the
/// features whose names start with `prefix`, by name — read once the client API's
/// revision has caught up with every change made so far (Unleash 6 serves the client API
/// from a cache refreshed by revision; we poll its `meta.revisionId`, not a blind sleep).
pub async fn client_view(prefix: &str) -> (BTreeMap<String, Value>, Duration) {
    let target = latest_event_id().await;
    let start = Instant::now();
    loop {
        let v: Value = http()
            .get(format!("{}/api/client/features", unleash_url()))
            .header("Authorization", client_token())
            .send()
            .await
            .expect("client features")
            .json()
            .await
            .expect("client json");
        let rev = v["meta"]["revisionId"].as_u64().unwrap_or(0);
        if rev >= target {
            let features = v["features"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
                .map(|f| (f["name"].as_str().unwrap().to_string(), f))
                .collect();
            return (features, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the client API did not reach revision {target} in 30 s (at {rev})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Field-by-field differences between two client views: `(flag, field, before, after)`.
pub fn diff_views(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
) -> Vec<(String, String, Value, Value)> {
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for n in names {
        match (before.get(n), after.get(n)) {
            (Some(Value::Object(b)), Some(Value::Object(a))) => {
                let fields: std::collections::BTreeSet<&String> =
                    b.keys().chain(a.keys()).collect();
                for f in fields {
                    let (bv, av) = (
                        b.get(f).cloned().unwrap_or(Value::Null),
                        a.get(f).cloned().unwrap_or(Value::Null),
                    );
                    if bv != av {
                        out.push((n.clone(), f.clone(), bv, av));
                    }
                }
            }
            (b, a) => out.push((
                n.clone(),
                "<flag>".into(),
                b.cloned().unwrap_or(Value::Null),
                a.cloned().unwrap_or(Value::Null),
            )),
        }
    }
    out
}
