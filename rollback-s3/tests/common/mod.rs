//! Shared helpers for the tests: real moto server from `ROLLBACK_TEST_S3_*`, a fresh
//! bucket per test, and a listing + content hash computed without the library.
#![allow(dead_code, unreachable_pub)]

use rollback_s3::aws_sdk_s3::Client;
use rollback_s3::{S3Bucket, S3Settings};
use std::collections::BTreeMap;

/// Settings of the test server; panics when the environment does not name one.
pub fn settings() -> S3Settings {
    S3Settings::from_env("ROLLBACK_TEST_S3").unwrap_or_else(|| {
        panic!(
            "ROLLBACK_TEST_S3_ENDPOINT is not set: run the tests through `scripts/test` \
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
