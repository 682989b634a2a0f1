//! Object steps on the real S3 server: refusals, partial applies undone without a
//! receipt, conflicts, cancellation at batch boundaries.

#[macro_use]
mod common;

use rollback_core::events::RunEvent;
use rollback_core::journal::MemoryJournal;
use rollback_core::{Context, Error, Executor, Outcome, Plan, PlanError, Step};
use rollback_s3::faults::FailAfterCopies;
use rollback_s3::{
    CopyPrefix, DeleteObjects, MovePrefix, PutObjects, RewriteObjects, S3Checkpoint,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn run_ctx() -> Context {
    Context::standalone(&uuid::Uuid::new_v4().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_refuses_a_non_empty_destination_and_changes_nothing() {
    require_server!();
    let b = common::fresh_bucket("move-dest-busy", false).await;
    common::seed(&b, "v1/", 2, 10).await;
    b.put("v2/already-here", b"x".to_vec()).await.unwrap();
    let before = common::independent_state(b.client(), b.name(), "").await;
    let step = MovePrefix::new("mv", &b, "v1/", "v2/");
    let err = step.apply(&run_ctx()).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert!(!err.maybe_applied());
    assert_eq!(
        common::independent_state(b.client(), b.name(), "").await,
        before
    );
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_rejects_overlapping_prefixes() {
    require_server!();
    let b = common::fresh_bucket("move-overlap", false).await;
    let err = MovePrefix::new("mv", &b, "a/", "a/b/")
        .apply(&run_ctx())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_revert_without_receipt_undoes_a_partial_apply() {
    require_server!();
    for versioned in [false, true] {
        let b = common::fresh_bucket("move-partial", versioned).await;
        common::seed(&b, "v1/", 5, 300).await;
        let before = common::independent_state(b.client(), b.name(), "").await;
        let step = FailAfterCopies::new(&b, 200, |b| {
            MovePrefix::new("mv", b, "v1/", "v2/").batch_size(100)
        });
        let ctx = run_ctx();
        let err = step.apply(&ctx).await.unwrap_err();
        assert!(
            err.maybe_applied(),
            "a failure mid-move must say the move may have happened"
        );
        assert_eq!(b.list("v2/").await.unwrap().len(), 200);
        assert_eq!(b.list("v1/").await.unwrap().len(), 100);

        step.revert(None, &ctx).await.unwrap();
        assert_eq!(
            common::independent_state(b.client(), b.name(), "").await,
            before
        );
        step.revert(None, &ctx).await.unwrap(); // idempotent
        assert_eq!(
            common::independent_state(b.client(), b.name(), "").await,
            before
        );
        b.dangerous_delete_bucket().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_revert_leaves_a_rewritten_source_in_place_and_reports_a_conflict() {
    require_server!();
    let b = common::fresh_bucket("move-conflict", false).await;
    common::seed(&b, "v1/", 2, 10).await;
    let step = MovePrefix::new("mv", &b, "v1/", "v2/");
    let ctx = run_ctx();
    let receipt = step.apply(&ctx).await.unwrap();
    b.put(
        "v1/tenant-000/obj-000000.json",
        b"written after the move".to_vec(),
    )
    .await
    .unwrap();
    let err = step.revert(Some(&receipt), &ctx).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains("v2/tenant-000/obj-000000.json"));
    // Nothing was lost: the newer source and the moved copy are both there; the rest
    // went back.
    assert_eq!(
        b.get("v1/tenant-000/obj-000000.json")
            .await
            .unwrap()
            .unwrap()
            .as_ref(),
        b"written after the move"
    );
    assert!(b
        .head("v2/tenant-000/obj-000000.json")
        .await
        .unwrap()
        .is_some());
    assert_eq!(b.list("v1/").await.unwrap().len(), 10);
    assert_eq!(b.list("v2/").await.unwrap().len(), 1);
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_prefix_revert_deletes_only_its_copies() {
    require_server!();
    let b = common::fresh_bucket("copy-revert", false).await;
    common::seed(&b, "v1/", 2, 10).await;
    let before = common::independent_state(b.client(), b.name(), "").await;
    let step = CopyPrefix::new("cp", &b, "v1/", "v2/");
    let ctx = run_ctx();
    let r = step.apply(&ctx).await.unwrap();
    assert_eq!(b.list("v2/").await.unwrap().len(), 10);
    assert_eq!(b.list("v1/").await.unwrap().len(), 10);
    step.revert(Some(&r), &ctx).await.unwrap();
    assert_eq!(
        common::independent_state(b.client(), b.name(), "").await,
        before
    );
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_without_a_covering_checkpoint_is_refused_by_the_plan() {
    require_server!();
    let b = common::fresh_bucket("delete-guard", false).await;
    let uncovered = Plan::builder("p")
        .step("s3", DeleteObjects::new("rm", &b, "v1/"), &[])
        .build();
    assert!(
        matches!(uncovered, Err(PlanError::Uncovered { .. })),
        "{uncovered:?}"
    );
    let unapproved = Plan::builder("p")
        .step(
            "s3",
            DeleteObjects::new("rm", &b, "v1/").irreversible(),
            &[],
        )
        .build();
    assert!(matches!(
        unapproved,
        Err(PlanError::UnapprovedIrreversible { .. })
    ));
    assert!(Plan::builder("p")
        .step(
            "s3",
            DeleteObjects::new("rm", &b, "v1/").irreversible(),
            &[]
        )
        .approve_irreversible("rm", "old exports, kept elsewhere")
        .build()
        .is_ok());
    assert!(Plan::builder("p")
        .checkpoint("s3", S3Checkpoint::new(&b, "v1/"))
        .step("s3", DeleteObjects::new("rm", &b, "v1/"), &[])
        .build()
        .is_ok());
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_delete_refuses_an_unversioned_bucket_and_deletes_nothing() {
    require_server!();
    let b = common::fresh_bucket("delete-not-versioned", false).await;
    common::seed(&b, "v1/", 2, 5).await;
    let err = DeleteObjects::new("rm", &b, "v1/")
        .versioned()
        .apply(&run_ctx())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Invalid { .. }) && !err.maybe_applied(),
        "{err:?}"
    );
    assert_eq!(b.list("v1/").await.unwrap().len(), 5);
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_delete_revert_makes_the_same_versions_current_again() {
    require_server!();
    let b = common::fresh_bucket("delete-versioned", true).await;
    common::seed(&b, "v1/", 2, 6).await;
    let mut versions = Vec::new();
    for o in b.list("v1/").await.unwrap() {
        versions.push((
            o.key.clone(),
            b.head(&o.key).await.unwrap().unwrap().version_id,
        ));
    }
    let step = DeleteObjects::new("rm", &b, "v1/").versioned();
    let ctx = run_ctx();
    step.apply(&ctx).await.unwrap();
    assert!(b.list("v1/").await.unwrap().is_empty());
    step.revert(None, &ctx).await.unwrap();
    for (k, v) in versions {
        assert_eq!(b.head(&k).await.unwrap().unwrap().version_id, v, "{k}");
    }
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_objects_revert_restores_overwritten_content_and_removes_new_keys() {
    require_server!();
    let b = common::fresh_bucket("put-revert", false).await;
    b.put("cfg/a.json", b"old".to_vec()).await.unwrap();
    let step = PutObjects::new("put", &b)
        .object("cfg/a.json", b"new".to_vec())
        .object("cfg/b.json", b"added".to_vec());
    assert_eq!(step.touches(), vec![format!("s3:{}/cfg/", b.name())]);
    let ctx = run_ctx();
    let r = step.apply(&ctx).await.unwrap();
    let r2 = step.apply(&ctx).await.unwrap();
    assert_eq!(r, r2, "a second apply returns the same receipt");
    assert_eq!(b.get("cfg/a.json").await.unwrap().unwrap().as_ref(), b"new");
    step.revert(Some(&r), &ctx).await.unwrap();
    assert_eq!(b.get("cfg/a.json").await.unwrap().unwrap().as_ref(), b"old");
    assert!(b.head("cfg/b.json").await.unwrap().is_none());
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_interrupted_and_applied_again_rewrites_every_object_once() {
    require_server!();
    let b = common::fresh_bucket("rewrite-once", false).await;
    common::seed(&b, "docs/", 1, 30).await;
    let before = common::independent_state(b.client(), b.name(), "").await;
    let fail_once = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU64::new(0));
    let (f, c) = (fail_once.clone(), calls.clone());
    let step = RewriteObjects::new("rw", &b, "docs/", "bang/1", move |key, body| {
        if key.ends_with("obj-000020.json") && f.swap(false, Ordering::SeqCst) {
            return Err(Error::transient(
                "the function's dependency hiccuped",
                false,
            ));
        }
        c.fetch_add(1, Ordering::SeqCst);
        let mut v = body.to_vec();
        v.push(b'!');
        Ok(Some(v.into()))
    });
    let ctx = run_ctx();
    let err = step.apply(&ctx).await.unwrap_err();
    assert!(err.maybe_applied(), "{err:?}");
    step.apply(&ctx).await.unwrap();
    step.apply(&ctx).await.unwrap();
    for o in b.list("docs/").await.unwrap() {
        let body = b.get(&o.key).await.unwrap().unwrap();
        assert!(
            body.ends_with(b"}!") && !body.ends_with(b"!!"),
            "{}: {body:?}",
            o.key
        );
    }
    assert!(calls.load(Ordering::SeqCst) >= 30);
    step.revert(None, &ctx).await.unwrap();
    assert_eq!(
        common::independent_state(b.client(), b.name(), "").await,
        before
    );
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_run_stops_the_move_at_a_batch_boundary_and_rolls_back() {
    require_server!();
    let b = common::fresh_bucket("move-cancel", true).await;
    common::seed(&b, "v1/", 5, 600).await;
    let before = common::independent_state(b.client(), b.name(), "").await;
    let plan = Plan::builder(format!("cancel-{}", b.name()))
        .checkpoint("storage", S3Checkpoint::new(&b, ""))
        .step(
            "storage",
            MovePrefix::new("mv", &b, "v1/", "v2/").batch_size(100),
            &[],
        )
        .build()
        .unwrap();
    let ex = Executor::new(MemoryJournal::new());
    let mut events = ex.subscribe();
    let cancel = tokio_util::sync::CancellationToken::new();
    let token = cancel.clone();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(e) = events.recv().await {
            if let RunEvent::Progress {
                source,
                done,
                total,
                ..
            } = &e.event
            {
                if source == "mv" {
                    seen.push((*done, *total));
                    if *done >= 200 {
                        token.cancel();
                    }
                }
            }
            if matches!(e.event, RunEvent::RunFinished { .. }) {
                break;
            }
        }
        seen
    });
    let report = ex.run_with_cancel(&plan, cancel).await.unwrap();
    let progress = watcher.await.unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven());
    assert!(progress.contains(&(200, Some(600))), "{progress:?}");
    assert!(
        progress.iter().all(|(d, _)| *d < 600),
        "the move must stop before its end: {progress:?}"
    );
    assert_eq!(
        common::independent_state(b.client(), b.name(), "").await,
        before
    );
    b.dangerous_delete_bucket().await.unwrap();
}

/// A write that lands between the listing and the backup copy is a conflict on every
/// server: S3 refuses the copy (412), and where the server ignores
/// `x-amz-copy-source-if-match` (moto, radosgw) the copy's ETag gives it away. The
/// other writer's content is kept, and the revert undoes only the step's own rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_reports_a_write_between_listing_and_backup_as_a_conflict() {
    require_server!();
    let b = common::fresh_bucket("rewrite-race", false)
        .await
        .concurrency(1);
    b.put("data/a", b"a0".to_vec()).await.unwrap();
    b.put("data/b", b"b0".to_vec()).await.unwrap();
    let writer = b.clone();
    let step = RewriteObjects::new("rw", &b, "data/", "race/1", move |key, body| {
        if key == "data/a" {
            // Another writer changes data/b after the listing, before its backup.
            let w = writer.clone();
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(w.put("data/b", b"b1 from another writer".to_vec()))
            })
            .unwrap();
        }
        let mut v = body.to_vec();
        v.extend_from_slice(b"+");
        Ok(Some(v.into()))
    });
    let ctx = run_ctx();
    let err = step.apply(&ctx).await.unwrap_err();
    // data/a was rewritten already: the conflict comes as "maybe applied".
    fn is_conflict(e: &Error) -> bool {
        match e {
            Error::Conflict { .. } => true,
            Error::Backend { source, .. } => {
                source.downcast_ref::<Error>().is_some_and(is_conflict)
            }
            _ => false,
        }
    }
    assert!(is_conflict(&err) && err.maybe_applied(), "{err:?}");
    assert!(err.to_string().contains("data/b"), "{err}");
    assert_eq!(
        b.get("data/b").await.unwrap().unwrap().as_ref(),
        b"b1 from another writer"
    );
    step.revert(None, &ctx).await.unwrap();
    assert_eq!(b.get("data/a").await.unwrap().unwrap().as_ref(), b"a0");
    assert_eq!(
        b.get("data/b").await.unwrap().unwrap().as_ref(),
        b"b1 from another writer"
    );
    b.dangerous_delete_bucket().await.unwrap();
}
