//! Shared helpers for the tests: the real S3 server chosen by
//! `ROLLBACK_TEST_S3_BACKEND` (`moto`, the default, from `ROLLBACK_TEST_S3_*`;
//! `radosgw` from `ROLLBACK_TEST_RGW_*`; `radosgw-tls` from
//! `ROLLBACK_TEST_RGW_TLS_ENDPOINT` with the CA of `ROLLBACK_TEST_TLS_DIR`), a fresh
//! bucket per test, and a listing + content hash computed without the library.
#![allow(dead_code, unreachable_pub, unused_macros)]

use rollback_s3::aws_sdk_s3::Client;
use rollback_s3::{S3Bucket, S3Settings};
use std::collections::BTreeMap;

/// The S3 implementation the tests talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// moto: checks no signature, accepts any key.
    Moto,
    /// Ceph radosgw over plain HTTP: signatures enforced.
    Radosgw,
    /// Ceph radosgw over HTTPS, verified against the test CA by host name.
    RadosgwTls,
}

/// The backend named by `ROLLBACK_TEST_S3_BACKEND` (default moto).
pub fn backend() -> Backend {
    match std::env::var("ROLLBACK_TEST_S3_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("moto") => Backend::Moto,
        Ok("radosgw") => Backend::Radosgw,
        Ok("radosgw-tls") => Backend::RadosgwTls,
        Ok(other) => {
            panic!("ROLLBACK_TEST_S3_BACKEND={other:?}: expected moto, radosgw or radosgw-tls")
        }
    }
}

/// Settings of the chosen backend, or the name of the variable that is missing.
pub fn try_settings() -> Result<S3Settings, &'static str> {
    match backend() {
        Backend::Moto => {
            S3Settings::from_env("ROLLBACK_TEST_S3").ok_or("ROLLBACK_TEST_S3_ENDPOINT")
        }
        Backend::Radosgw => {
            S3Settings::from_env("ROLLBACK_TEST_RGW").ok_or("ROLLBACK_TEST_RGW_ENDPOINT")
        }
        Backend::RadosgwTls => {
            let endpoint = std::env::var("ROLLBACK_TEST_RGW_TLS_ENDPOINT")
                .map_err(|_| "ROLLBACK_TEST_RGW_TLS_ENDPOINT")?;
            let dir =
                std::env::var("ROLLBACK_TEST_TLS_DIR").map_err(|_| "ROLLBACK_TEST_TLS_DIR")?;
            let base =
                S3Settings::from_env("ROLLBACK_TEST_RGW").ok_or("ROLLBACK_TEST_RGW_ENDPOINT")?;
            Ok(base
                .with_endpoint(endpoint)
                .ca_bundle_file(format!("{dir}/ca.pem"))
                .expect("the test CA is a valid PEM bundle"))
        }
    }
}

/// Whether the backend's server is configured. When it is not: under `CI=true` this
/// panics (a missing server is a failure there), else it prints why the test is
/// skipped and returns false.
pub fn server_available() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    match try_settings() {
        Ok(_) => true,
        Err(var) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{var} is not set and CI=true: run the tests through `scripts/test`")
        }
        Err(var) => {
            eprintln!(
                "skipping {test} on {:?}: {var} is not set (run the tests through \
                 `scripts/test`, or `scripts/test --servers-only` and export what it prints)",
                backend()
            );
            false
        }
    }
}

/// Return from the test (skipped, with the reason printed) unless the backend's server
/// is configured; see [`server_available`].
macro_rules! require_server {
    () => {
        if !common::server_available() {
            return;
        }
    };
}

/// Settings of the test server; panics when the environment does not name one.
pub fn settings() -> S3Settings {
    try_settings().unwrap_or_else(|var| {
        panic!(
            "{var} is not set: run the tests through `scripts/test` \
             (or `scripts/test --servers-only` and export what it prints)"
        )
    })
}

/// A unique, valid bucket name.
pub fn bucket_name(label: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("rb-{label}-{}", &id[..10])
}

/// A fresh bucket of its own for one test.
pub async fn fresh_bucket(label: &str, versioned: bool) -> S3Bucket {
    let b = S3Bucket::connect(&settings(), bucket_name(label));
    b.create(versioned).await.expect("create bucket");
    b
}

/// What a bucket holds under a prefix, computed with plain SDK calls (ListObjectsV2 +
/// GetObject + blake3), independently of the library: key -> (size, blake3 hex).
pub async fn independent_state(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> BTreeMap<String, (u64, String)> {
    use futures::StreamExt;
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("list");
        for o in out.contents() {
            let k = o.key().unwrap().to_string();
            if !k.starts_with(".rollback/") {
                keys.push(k);
            }
        }
        token = out.next_continuation_token().map(str::to_string);
        if out.is_truncated() != Some(true) {
            break;
        }
    }
    let fetched: Vec<(String, (u64, String))> =
        futures::stream::iter(keys.into_iter().map(|k| async move {
            let out = client
                .get_object()
                .bucket(bucket)
                .key(&k)
                .send()
                .await
                .expect("get");
            let body = out.body.collect().await.expect("body").into_bytes();
            (
                k,
                (body.len() as u64, blake3::hash(&body).to_hex().to_string()),
            )
        }))
        .buffer_unordered(16)
        .collect()
        .await;
    fetched.into_iter().collect()
}

/// Put `n` small objects `prefix/tenant-{t}/obj-{i}` spread over `tenants` tenants.
pub async fn seed(bucket: &S3Bucket, prefix: &str, tenants: usize, n: usize) {
    use futures::StreamExt;
    let b = bucket.clone();
    futures::stream::iter((0..n).map(|i| {
        let b = b.clone();
        async move {
            let key = format!("{prefix}tenant-{:03}/obj-{i:06}.json", i % tenants);
            let body = format!("{{\"i\":{i},\"tenant\":{}}}", i % tenants);
            b.put(&key, body.into_bytes()).await.expect("seed put");
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;
}

/// A fresh bucket whose requests are counted by `counter`.
pub async fn fresh_counted(
    label: &str,
    versioned: bool,
    counter: &rollback_s3::RequestCounter,
) -> S3Bucket {
    let b = S3Bucket::connect_counted(&settings(), bucket_name(label), counter);
    b.create(versioned).await.expect("create bucket");
    b
}

/// Requests of one operation counted so far.
pub fn count(counter: &rollback_s3::RequestCounter, op: &str) -> u64 {
    counter.by_operation().get(op).copied().unwrap_or(0)
}
