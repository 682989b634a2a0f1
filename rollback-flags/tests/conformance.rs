//! The core conformance suite on every provider: Unleash (the real server started by
//! `scripts/test`), the flagd-format file, and memory.

mod common;

use rollback_flags::{
    FileProvider, FlagChange, FlagCheckpoint, FlagProvider, FlagState, MemoryProvider, SetFlag,
    StagedRollout,
};
use std::sync::Arc;

/// Seed two flags and run the suite with a SetFlag step on a one-flag checkpoint, a staged
/// rollout on a prefix checkpoint, and a kill switch on a flag-set checkpoint. Crash points
/// are journal record counts: 5 kills the run at the step's first cursor (before the flag
/// changes), 6 after the change and before the outcome is journaled, 7 and 8 between
/// rollout stages.
async fn suite(p: Arc<dyn FlagProvider>, prefix: &str) {
    let a = format!("{prefix}a");
    let b = format!("{prefix}b");
    p.put(&a, &FlagState::rollout(&a, 10)).await.unwrap();
    p.put(&b, &FlagState::off()).await.unwrap();

    common::conformance(
        Arc::new(FlagCheckpoint::flag(p.clone(), &a)),
        Arc::new(FlagCheckpoint::flag(p.clone(), &b)),
        || {
            Arc::new(SetFlag::new(
                "set-a",
                p.clone(),
                &a,
                FlagChange::new().rollout(50),
            ))
        },
        &[6, 7],
    )
    .await;

    common::conformance(
        Arc::new(FlagCheckpoint::prefix(p.clone(), prefix)),
        Arc::new(FlagCheckpoint::flag(p.clone(), &a)),
        || Arc::new(StagedRollout::new("roll-b", p.clone(), &b, &[1, 10, 100])),
        &[6, 7, 8, 9],
    )
    .await;

    common::conformance(
        Arc::new(FlagCheckpoint::flags(p.clone(), [&a, &b])),
        Arc::new(FlagCheckpoint::all(p.clone())),
        || Arc::new(SetFlag::kill_switch("kill-a", p.clone(), &a)),
        &[7],
    )
    .await;

    // Everything is as seeded.
    assert_eq!(p.get(&a).await.unwrap(), Some(FlagState::rollout(&a, 10)));
    assert_eq!(p.get(&b).await.unwrap(), Some(FlagState::off()));
}

#[tokio::test]
async fn conformance_suite_passes_on_memory() {
    suite(Arc::new(MemoryProvider::new("conformance")), "m-").await;
}

#[tokio::test]
async fn conformance_suite_passes_on_the_flag_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileProvider::new(dir.path().join("flags.json")).with_scope("conformance");
    suite(Arc::new(file), "f-").await;
}

#[tokio::test]
async fn conformance_suite_passes_on_unleash() {
    let prefix = common::prefix("conf");
    suite(Arc::new(common::unleash()), &prefix).await;
    common::cleanup(&prefix).await;
}

/// Unleash behind TLS (`ROLLBACK_TEST_UNLEASH_TLS_URL`, a certificate for `localhost`
/// signed by the test CA): the same suite over HTTPS, certificate and host name checked.
#[tokio::test]
async fn conformance_suite_passes_on_unleash_over_https() {
    let Some((url, dir)) = common::unleash_tls() else {
        return;
    };
    let ca = std::fs::read(format!("{dir}/ca.pem")).unwrap();
    let p =
        rollback_flags::UnleashProvider::new(&url, common::admin_token(), "default", "development")
            .unwrap()
            .with_root_certificate_pem(&ca)
            .unwrap();
    let prefix = common::prefix("conf-tls");
    suite(Arc::new(p), &prefix).await;
    common::cleanup(&prefix).await;
}
