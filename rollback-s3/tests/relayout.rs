//! The headline scenario: re-lay out N objects (`v1/{tenant}/…` → `v2/{tenant}/…`) on the
//! real S3 server, fail midway or SIGKILL the process mid-move, roll back, and prove the
//! bucket equal to its baseline with a listing and content hashes computed in this file
//! (plain SDK calls + blake3), independently of the library.

#[macro_use]
mod common;

use rollback_core::journal::FileJournal;
use rollback_core::{Executor, Outcome, Plan, ResumePolicy, Step};
use rollback_s3::faults::FailAfterCopies;
use rollback_s3::{ManifestParity, MovePrefix, ObjectBackend, S3Bucket, S3Checkpoint};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Objects per scenario: 1,000 by default to keep the debug suite within minutes on
/// moto; `ROLLBACK_S3_RELAYOUT_OBJECTS=10000` runs the full-size scenario (measured: see
/// the crate's CHANGELOG / report).
fn objects() -> usize {
    std::env::var("ROLLBACK_S3_RELAYOUT_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

/// The plan, identical in every process that builds it for `bucket`.
fn relayout_plan(bucket: &S3Bucket, fail_after: Option<u64>) -> Plan {
    let cp = S3Checkpoint::new(bucket, "");
    // Batches of 100: the failure and the kill land between batches, mid-move.
    let build = |b: &Arc<dyn ObjectBackend>| {
        MovePrefix::new("move-v1-to-v2", b, "v1/", "v2/").batch_size(100)
    };
    let mv: Arc<dyn Step> = match fail_after {
        Some(n) => Arc::new(FailAfterCopies::new(bucket, n, build)),
        None => Arc::new(MovePrefix::new("move-v1-to-v2", bucket, "v1/", "v2/").batch_size(100)),
    };
    Plan::builder(format!("relayout-{}", bucket.name()))
        .checkpoint("storage", cp.clone())
        .step("storage", mv, &[])
        .verify_final(ManifestParity::against_baseline("v2-holds-v1", &cp).mapped("v1/", "v2/"))
        .build()
        .expect("plan builds")
}

async fn fails_midway_and_rolls_back(versioned: bool) {
    let n = objects();
    let b = common::fresh_bucket("relayout-fail", versioned)
        .await
        .concurrency(32);
    let t = Instant::now();
    common::seed(&b, "v1/", 50, n).await;
    let baseline = common::independent_state(b.client(), b.name(), "").await;
    assert_eq!(baseline.len(), n);
    eprintln!(
        "[{versioned}] seeded and hashed {n} objects in {:?}",
        t.elapsed()
    );

    let dir = tempfile::tempdir().unwrap();
    let plan = relayout_plan(&b, Some(n as u64 / 2));
    let t = Instant::now();
    let report = Executor::new(FileJournal::open(dir.path()).unwrap())
        .run(&plan)
        .await
        .unwrap();
    eprintln!(
        "[{versioned}] run (capture, half the move, rollback) in {:?}",
        t.elapsed()
    );
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven(), "{}", report.to_markdown());

    let after = common::independent_state(b.client(), b.name(), "").await;
    assert_eq!(after.len(), n, "object count differs from the baseline");
    assert!(
        after == baseline,
        "bucket content differs from the baseline"
    );
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_failing_midway_rolls_back_to_baseline_on_versioned_bucket() {
    require_server!();
    fails_midway_and_rolls_back(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_failing_midway_rolls_back_to_baseline_on_unversioned_bucket() {
    require_server!();
    fails_midway_and_rolls_back(false).await;
}

const CHILD: &str = "ROLLBACK_S3_KILL_CHILD";

/// Not a test on its own: the process the kill test starts (this test binary re-invoked
/// with `ROLLBACK_S3_KILL_CHILD` set), which runs the relayout until it is SIGKILLed.
/// Without the variable it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process_for_kill_test() {
    require_server!();
    if std::env::var(CHILD).is_err() {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} unset"));
    let b = S3Bucket::connect(&common::settings(), var("KILL_BUCKET")).concurrency(32);
    let plan = relayout_plan(&b, None);
    let ex = Executor::new(FileJournal::open(var("KILL_JOURNAL")).unwrap())
        .holder("killed-child")
        .lease_ttl(Duration::from_secs(2));
    let report = ex
        .run_as(&plan, &var("KILL_RUN_ID"), Default::default())
        .await
        .unwrap();
    panic!(
        "the child was meant to be killed, but finished: {:?}",
        report.outcome
    );
}

async fn count_under(b: &S3Bucket, prefix: &str) -> usize {
    let out = b
        .client()
        .list_objects_v2()
        .bucket(b.name())
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    let mut n = out.key_count().unwrap_or(0) as usize;
    let mut token = out.next_continuation_token().map(str::to_string);
    while let Some(t) = token {
        let out = b
            .client()
            .list_objects_v2()
            .bucket(b.name())
            .prefix(prefix)
            .continuation_token(t)
            .send()
            .await
            .unwrap();
        n += out.key_count().unwrap_or(0) as usize;
        token = out.next_continuation_token().map(str::to_string);
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_killed_by_sigkill_is_resumed_and_rolled_back_by_a_fresh_executor() {
    require_server!();
    let n = objects();
    let b = common::fresh_bucket("relayout-kill", false)
        .await
        .concurrency(32);
    common::seed(&b, "v1/", 50, n).await;
    let baseline = common::independent_state(b.client(), b.name(), "").await;
    let dir = tempfile::tempdir().unwrap();
    let run_id = uuid::Uuid::new_v4().to_string();

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_for_kill_test",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("KILL_BUCKET", b.name())
        .env("KILL_JOURNAL", dir.path())
        .env("KILL_RUN_ID", &run_id)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a third of the objects were moved (copied and their sources deleted).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(
            Instant::now() < deadline,
            "the child never got a third of the way"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited by itself: {status}");
        }
        if count_under(&b, "v1/").await <= n - n / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    let moved = count_under(&b, "v2/").await;
    let left = count_under(&b, "v1/").await;
    eprintln!("killed with {moved} objects under v2/ and {left} under v1/");
    assert!(
        moved > 0 && left > 0 && left < n,
        "the kill must land mid-move"
    );

    // A fresh executor on the same journal resumes the run (once the dead child's lease
    // has expired) and rolls it back.
    let plan = relayout_plan(&b, None);
    let ex =
        Executor::new(FileJournal::open(dir.path()).unwrap()).on_resume(ResumePolicy::RollBack);
    let report = loop {
        match ex.resume(&plan, &run_id).await {
            Err(rollback_core::Error::LeaseHeld { .. }) => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven(), "{}", report.to_markdown());
    let after = common::independent_state(b.client(), b.name(), "").await;
    assert_eq!(after.len(), n);
    assert!(
        after == baseline,
        "bucket content differs from the baseline"
    );
    b.dangerous_delete_bucket().await.unwrap();
}
