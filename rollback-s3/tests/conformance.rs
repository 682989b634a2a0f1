//! The core conformance suite, against the real S3 server, for every checkpoint mode
//! and every step, on a versioned and an unversioned bucket.

#[macro_use]
mod common;

use rollback_core::conformance::{run_all, Subject};
use rollback_core::journal::MemoryJournal;
use rollback_core::Step;
use rollback_s3::{
    CheckpointMode, CopyPrefix, DeleteObjects, MovePrefix, PutObjects, RewriteObjects, S3Bucket,
    S3Checkpoint,
};
use std::sync::Arc;

/// Seed a fresh bucket, run the whole suite with `step` (built for the bucket), check
/// the bucket is back to its seeded state, and delete the bucket.
async fn conform(
    label: &str,
    versioned: bool,
    mode: CheckpointMode,
    step: impl Fn(&S3Bucket) -> Arc<dyn Step>,
) {
    let b = common::fresh_bucket(label, versioned).await;
    common::seed(&b, "v1/", 3, 30).await;
    b.put("other/readme.txt", b"other".to_vec()).await.unwrap();
    let before = common::independent_state(b.client(), b.name(), "").await;
    run_all(Subject {
        checkpoint: Arc::new(S3Checkpoint::new(&b, "").mode(mode)),
        other_checkpoint: Arc::new(S3Checkpoint::new(&b, "other/").mode(mode)),
        step: step(&b),
        journal: Arc::new(MemoryJournal::new()),
    })
    .await;
    let after = common::independent_state(b.client(), b.name(), "").await;
    assert_eq!(
        before, after,
        "the suite must leave the bucket as it found it"
    );
    b.dangerous_delete_bucket().await.unwrap();
}

fn root(b: &S3Bucket) -> String {
    b.resource_id("")
}

fn move_step(b: &S3Bucket) -> Arc<dyn Step> {
    Arc::new(MovePrefix::new("move-v1-v2", b, "v1/", "v2/"))
}
fn copy_step(b: &S3Bucket) -> Arc<dyn Step> {
    Arc::new(CopyPrefix::new("copy-v1-v2", b, "v1/", "v2/"))
}
fn put_step(b: &S3Bucket) -> Arc<dyn Step> {
    Arc::new(
        PutObjects::new("put-two", b)
            .object("v1/tenant-000/new.json", b"{\"new\":true}".to_vec())
            .object(
                "v1/tenant-001/obj-000001.json",
                b"{\"overwritten\":true}".to_vec(),
            )
            .touching([root(b)]),
    )
}
fn rewrite_step(b: &S3Bucket) -> Arc<dyn Step> {
    Arc::new(
        RewriteObjects::new("rewrite-v1", b, "v1/", "append-migrated/1", |_k, body| {
            let mut v = body.to_vec();
            v.extend_from_slice(b" migrated");
            Ok(Some(v.into()))
        })
        .touching([root(b)]),
    )
}
fn delete_step(b: &S3Bucket) -> Arc<dyn Step> {
    Arc::new(DeleteObjects::new("delete-t2", b, "v1/tenant-002/").touching([root(b)]))
}
fn delete_versioned_step(b: &S3Bucket) -> Arc<dyn Step> {
    Arc::new(
        DeleteObjects::new("delete-t2", b, "v1/tenant-002/")
            .versioned()
            .touching([root(b)]),
    )
}

macro_rules! conformance {
    ($($name:ident: $versioned:expr, $mode:expr, $step:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            require_server!();
            conform(stringify!($name), $versioned, $mode, $step).await;
        }
    )*};
}

conformance! {
    versioned_checkpoint_and_move_prefix_conform: true, CheckpointMode::Versions, move_step;
    versioned_checkpoint_and_copy_prefix_conform: true, CheckpointMode::Versions, copy_step;
    versioned_checkpoint_and_put_objects_conform: true, CheckpointMode::Versions, put_step;
    versioned_checkpoint_and_rewrite_objects_conform: true, CheckpointMode::Versions, rewrite_step;
    versioned_checkpoint_and_restore_only_delete_conform: true, CheckpointMode::Versions, delete_step;
    versioned_checkpoint_and_compensable_delete_conform: true, CheckpointMode::Versions, delete_versioned_step;
    copy_checkpoint_on_versioned_bucket_conforms: true, CheckpointMode::Copy, move_step;
    copy_checkpoint_and_move_prefix_conform: false, CheckpointMode::Copy, move_step;
    copy_checkpoint_and_copy_prefix_conform: false, CheckpointMode::Copy, copy_step;
    copy_checkpoint_and_put_objects_conform: false, CheckpointMode::Copy, put_step;
    copy_checkpoint_and_rewrite_objects_conform: false, CheckpointMode::Copy, rewrite_step;
    copy_checkpoint_and_restore_only_delete_conform: false, CheckpointMode::Auto, delete_step;
}
