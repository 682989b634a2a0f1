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

/// The core's `conformance::interrupted_step_resumes`, with one fix: the crashing run is
/// started with the resume policy under test. (The core's check starts it with the
/// default policy, which is journaled and wins on resume, so its RollForward half fails
/// for every adapter, the core's own doc test included; see the crate report.)
pub async fn interrupted_step_resumes(
    step: std::sync::Arc<dyn rollback_core::Step>,
    cp: std::sync::Arc<dyn rollback_core::Checkpoint>,
    journal: std::sync::Arc<dyn rollback_core::journal::Journal>,
) {
    use rollback_core::sim::CrashAfter;
    use rollback_core::{Context, Error, Executor, Outcome, Plan, ResumePolicy};
    use std::sync::Arc;
    let unique = |l: &str| {
        format!(
            "conformance-{l}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    };
    let fp = |cp: Arc<dyn rollback_core::Checkpoint>| async move {
        cp.fingerprint(&Context::detached())
            .await
            .expect("fingerprint failed")
    };
    let ctx = Context::standalone(&unique("interrupt"));
    let before = fp(cp.clone()).await;
    let guard = cp.capture(&ctx).await.expect("capture failed");
    let plan = Plan::builder(unique("plan"))
        .checkpoint_arc("subject", cp.clone())
        .step_arc("subject", step.clone(), &[])
        .build()
        .expect("plan builds");
    let holder = unique("holder");
    let clean = Executor::with_journal(journal.clone())
        .holder(&holder)
        .run(&plan)
        .await
        .expect("clean run");
    assert_eq!(
        clean.outcome,
        Outcome::Committed,
        "an uninterrupted run must commit: {}",
        clean.to_markdown()
    );
    let target = fp(cp.clone()).await;
    cp.restore(&guard, &ctx)
        .await
        .expect("restore between phases failed");
    assert_eq!(fp(cp.clone()).await, before);
    for policy in [ResumePolicy::RollBack, ResumePolicy::RollForward] {
        let runs_before = journal.runs().await.expect("runs");
        let crashing = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 5)))
            .holder(&holder)
            .on_resume(policy);
        let err = crashing
            .run(&plan)
            .await
            .expect_err("the crashing journal must stop the run");
        assert!(matches!(err, Error::Crashed(_)), "unexpected error {err:?}");
        let run_id = journal
            .runs()
            .await
            .expect("runs")
            .into_iter()
            .find(|r| !runs_before.contains(r))
            .expect("the interrupted run is in the journal");
        let report = Executor::with_journal(journal.clone())
            .holder(&holder)
            .on_resume(policy)
            .resume(&plan, &run_id)
            .await
            .expect("resume failed");
        match policy {
            ResumePolicy::RollBack => {
                assert_eq!(
                    report.outcome,
                    Outcome::RolledBack,
                    "{}",
                    report.to_markdown()
                );
                assert!(report.parity_proven(), "{}", report.to_markdown());
                assert_eq!(
                    fp(cp.clone()).await,
                    before,
                    "resume did not roll back to the baseline"
                );
            }
            ResumePolicy::RollForward => {
                assert_eq!(
                    report.outcome,
                    Outcome::Committed,
                    "{}",
                    report.to_markdown()
                );
                assert_eq!(
                    fp(cp.clone()).await,
                    target,
                    "resume did not roll forward to the target"
                );
            }
        }
        cp.restore(&guard, &ctx)
            .await
            .expect("restore between phases failed");
    }
    assert_eq!(fp(cp.clone()).await, before);
    cp.discard(&guard, &ctx).await.expect("discard failed");
}

/// Every check of the core's `conformance::run_all`, the interrupted-step check taken
/// from [`interrupted_step_resumes`] above.
pub async fn run_all(s: rollback_core::conformance::Subject) {
    use rollback_core::conformance::{
        apply_and_revert_are_idempotent, capture_mutate_restore, restore_refuses_other_resource,
        restore_refuses_tampered_digest, revert_without_receipt,
    };
    capture_mutate_restore(s.checkpoint.as_ref(), s.step.as_ref()).await;
    restore_refuses_tampered_digest(s.checkpoint.as_ref(), s.step.as_ref()).await;
    restore_refuses_other_resource(s.checkpoint.as_ref(), s.other_checkpoint.as_ref()).await;
    apply_and_revert_are_idempotent(s.step.as_ref(), s.checkpoint.as_ref()).await;
    revert_without_receipt(s.step.as_ref(), s.checkpoint.as_ref()).await;
    interrupted_step_resumes(s.step.clone(), s.checkpoint.clone(), s.journal.clone()).await;
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
