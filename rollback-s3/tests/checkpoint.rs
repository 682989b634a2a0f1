//! S3Checkpoint behaviour on the real S3 server, beyond the conformance suite.

#[macro_use]
mod common;

use rollback_core::{Checkpoint, Context, Error, Hasher};
use rollback_s3::{CheckpointMode, ManifestRef, RequestCounter, S3Checkpoint};

fn ctx() -> Context {
    Context::detached()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_capture_copies_nothing_and_restore_brings_back_the_exact_versions() {
    require_server!();
    let counter = RequestCounter::new();
    let b = common::fresh_counted("cp-versions", true, &counter).await;
    common::seed(&b, "data/", 2, 20).await;
    let (k1, k2) = (
        "data/tenant-000/obj-000000.json",
        "data/tenant-001/obj-000001.json",
    );
    let v1 = b.head(k1).await.unwrap().unwrap().version_id.unwrap();
    let original_k2 = b.get(k2).await.unwrap().unwrap();
    let cp = S3Checkpoint::new(&b, "data/");

    counter.reset();
    let snap = cp.capture(&ctx()).await.unwrap();
    assert_eq!(snap.kind, "s3.versions");
    assert_eq!(
        common::count(&counter, "CopyObject"),
        0,
        "a versioned capture copies nothing"
    );
    assert_eq!(common::count(&counter, "GetObject"), 0);

    b.delete(k1).await.unwrap(); // a delete marker over the captured version
    b.put(k2, b"overwritten".to_vec()).await.unwrap();
    b.put("data/new.json", b"created later".to_vec())
        .await
        .unwrap();

    counter.reset();
    let restored = cp.restore(&snap, &ctx()).await.unwrap();
    assert_eq!(restored.method, "versions");
    assert_eq!(
        restored.items_changed,
        Some(3),
        "only what changed is touched"
    );
    assert_eq!(
        common::count(&counter, "CopyObject"),
        1,
        "one newer version is copied over"
    );
    assert_eq!(cp.fingerprint(&ctx()).await.unwrap(), snap.fingerprint);

    // The delete marker was removed: the very same version is current again.
    assert_eq!(b.head(k1).await.unwrap().unwrap().version_id.unwrap(), v1);
    assert_eq!(b.get(k2).await.unwrap().unwrap(), original_k2);
    assert!(b.head("data/new.json").await.unwrap().is_none());
    // Nothing written since the checkpoint is lost: it stays in the version history.
    let history = b
        .client()
        .list_object_versions()
        .bucket(b.name())
        .prefix("data/")
        .send()
        .await
        .unwrap();
    let kept: Vec<_> = history.versions().iter().filter_map(|v| v.key()).collect();
    assert!(kept.contains(&"data/new.json"));
    assert_eq!(
        kept.iter().filter(|k| **k == k2).count(),
        3,
        "original, overwrite, copy-back"
    );

    counter.reset();
    let again = cp.restore(&snap, &ctx()).await.unwrap();
    assert_eq!(again.items_changed, Some(0));
    assert_eq!(common::count(&counter, "CopyObject"), 0);
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_based_capture_copies_every_object_and_restore_copies_back_only_what_differs() {
    require_server!();
    let counter = RequestCounter::new();
    let b = common::fresh_counted("cp-copy", false, &counter).await;
    common::seed(&b, "data/", 2, 20).await;
    let baseline = common::independent_state(b.client(), b.name(), "").await;
    let cp = S3Checkpoint::new(&b, "data/");

    counter.reset();
    let snap = cp.capture(&ctx()).await.unwrap();
    assert_eq!(snap.kind, "s3.copy");
    assert_eq!(common::count(&counter, "CopyObject"), 20);

    b.put("data/tenant-000/obj-000000.json", b"x".to_vec())
        .await
        .unwrap();
    b.delete("data/tenant-001/obj-000001.json").await.unwrap();
    b.put("data/new.json", b"new".to_vec()).await.unwrap();

    counter.reset();
    let r = cp.restore(&snap, &ctx()).await.unwrap();
    assert_eq!(r.method, "copy");
    assert_eq!(r.items_changed, Some(3));
    assert_eq!(
        common::count(&counter, "CopyObject"),
        2,
        "copies back only what differs"
    );
    assert_eq!(
        common::independent_state(b.client(), b.name(), "").await,
        baseline
    );
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_tampered_stored_manifest_and_changes_nothing() {
    require_server!();
    for versioned in [true, false] {
        let b = common::fresh_bucket("cp-tamper", versioned).await;
        common::seed(&b, "data/", 2, 10).await;
        let cp = S3Checkpoint::new(&b, "data/");
        let snap = cp.capture(&ctx()).await.unwrap();
        b.put("data/new.json", b"new".to_vec()).await.unwrap();
        let changed = cp.fingerprint(&ctx()).await.unwrap();

        let mref = ManifestRef::from_descriptor(&snap.descriptor).unwrap();
        let part = mref.part_key(0);
        let mut bytes = b.get(&part).await.unwrap().unwrap().to_vec();
        let pos = bytes.windows(4).position(|w| w == b"obj-").unwrap();
        bytes[pos] = b'X'; // rename one key in the manifest
        b.put(&part, bytes).await.unwrap();

        match cp.restore(&snap, &ctx()).await {
            Err(Error::DigestMismatch { .. }) => {}
            other => panic!("tampered manifest not refused: {other:?}"),
        }
        assert_eq!(
            cp.fingerprint(&ctx()).await.unwrap(),
            changed,
            "a refused restore changed the bucket"
        );
        b.dangerous_delete_bucket().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_when_a_snapshot_copy_was_altered() {
    require_server!();
    let b = common::fresh_bucket("cp-copy-altered", false).await;
    common::seed(&b, "data/", 2, 10).await;
    let cp = S3Checkpoint::new(&b, "data/");
    let snap = cp.capture(&ctx()).await.unwrap();
    b.delete("data/tenant-000/obj-000000.json").await.unwrap();
    let changed = cp.fingerprint(&ctx()).await.unwrap();
    let mref = ManifestRef::from_descriptor(&snap.descriptor).unwrap();
    let copy = format!(
        "{}data/tenant-000/obj-000000.json",
        mref.copies_prefix.unwrap()
    );
    b.put(&copy, b"not what was captured".to_vec())
        .await
        .unwrap();
    match cp.restore(&snap, &ctx()).await {
        Err(Error::DigestMismatch { .. }) => {}
        other => panic!("altered copy not refused: {other:?}"),
    }
    assert_eq!(cp.fingerprint(&ctx()).await.unwrap(), changed);
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_when_a_captured_version_was_purged() {
    require_server!();
    let b = common::fresh_bucket("cp-version-purged", true).await;
    common::seed(&b, "data/", 2, 10).await;
    let key = "data/tenant-000/obj-000000.json";
    let cp = S3Checkpoint::new(&b, "data/");
    let snap = cp.capture(&ctx()).await.unwrap();
    let v = b.head(key).await.unwrap().unwrap().version_id.unwrap();
    b.put(key, b"newer".to_vec()).await.unwrap();
    b.client()
        .delete_object()
        .bucket(b.name())
        .key(key)
        .version_id(v)
        .send()
        .await
        .unwrap();
    let changed = cp.fingerprint(&ctx()).await.unwrap();
    match cp.restore(&snap, &ctx()).await {
        Err(Error::DigestMismatch { .. }) => {}
        other => panic!("purged version not refused: {other:?}"),
    }
    assert_eq!(cp.fingerprint(&ctx()).await.unwrap(), changed);
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_mode_is_refused_on_an_unversioned_bucket() {
    require_server!();
    let b = common::fresh_bucket("cp-no-versioning", false).await;
    b.put("a", b"a".to_vec()).await.unwrap();
    let cp = S3Checkpoint::new(&b, "").mode(CheckpointMode::Versions);
    assert!(matches!(
        cp.capture(&ctx()).await,
        Err(Error::Invalid { .. })
    ));
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_is_stored_in_parts_and_the_snapshot_keeps_only_its_location_and_digest() {
    require_server!();
    let b = common::fresh_bucket("cp-parts", false).await;
    common::seed(&b, "data/", 5, 250).await;
    let cp = S3Checkpoint::new(&b, "data/")
        .manifest_part_entries(100)
        .content_digests(true);
    let snap = cp.capture(&ctx()).await.unwrap();
    let json = serde_json::to_vec(&snap).unwrap();
    assert!(
        json.len() < 2048,
        "the snapshot must not inline the manifest ({} bytes)",
        json.len()
    );
    let mref = ManifestRef::from_descriptor(&snap.descriptor).unwrap();
    assert_eq!((mref.parts, mref.entries), (3, 250));

    // The digest is blake3 over the stored parts, computed here without the library.
    let mut all = Vec::new();
    for i in 0..mref.parts {
        let out = b
            .client()
            .get_object()
            .bucket(b.name())
            .key(mref.part_key(i))
            .send()
            .await
            .unwrap();
        all.extend_from_slice(&out.body.collect().await.unwrap().into_bytes());
    }
    assert_eq!(rollback_core::Digest::of(&all), snap.digest);
    // Content digests in the manifest are the blake3 of each object.
    let state = common::independent_state(b.client(), b.name(), "data/").await;
    let mut seen = 0;
    for line in all.split(|c| *c == b'\n').skip(1).filter(|l| !l.is_empty()) {
        let e: rollback_s3::ManifestEntry = serde_json::from_slice(line).unwrap();
        assert_eq!(e.blake3.as_deref(), Some(state[&e.key].1.as_str()));
        seen += 1;
    }
    assert_eq!(seen, 250);

    for i in [0, 120, 249] {
        b.delete(&format!("data/tenant-{:03}/obj-{i:06}.json", i % 5))
            .await
            .unwrap();
    }
    let r = cp.restore(&snap, &ctx()).await.unwrap();
    assert_eq!(r.items_changed, Some(3));
    assert_eq!(
        common::independent_state(b.client(), b.name(), "data/").await,
        state
    );
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprint_is_blake3_over_key_size_and_etag_and_ignores_the_store() {
    require_server!();
    let b = common::fresh_bucket("cp-fingerprint", false).await;
    common::seed(&b, "", 3, 15).await;
    let cp = S3Checkpoint::new(&b, "");
    let fp = cp.fingerprint(&ctx()).await.unwrap();

    // Computed here from a plain listing.
    let out = b
        .client()
        .list_objects_v2()
        .bucket(b.name())
        .send()
        .await
        .unwrap();
    let mut h = Hasher::new();
    for o in out.contents() {
        h.field(o.key().unwrap().as_bytes())
            .field(&(o.size().unwrap() as u64).to_le_bytes())
            .field(o.e_tag().unwrap().trim_matches('"').as_bytes());
    }
    assert_eq!(h.finish(), fp);

    let snap = cp.capture(&ctx()).await.unwrap(); // writes copies under .rollback/
    assert_eq!(
        cp.fingerprint(&ctx()).await.unwrap(),
        fp,
        "the store is not part of the resource"
    );
    // Same size, other content: the ETag changes, so does the fingerprint.
    b.put(
        "tenant-000/obj-000000.json",
        b"{\"i\":9,\"tenant\":0}".to_vec(),
    )
    .await
    .unwrap();
    assert_ne!(cp.fingerprint(&ctx()).await.unwrap(), fp);
    cp.restore(&snap, &ctx()).await.unwrap();
    assert_eq!(cp.fingerprint(&ctx()).await.unwrap(), fp);
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_removes_the_snapshot_copies_and_manifest() {
    require_server!();
    let b = common::fresh_bucket("cp-discard", false).await;
    common::seed(&b, "data/", 2, 10).await;
    let cp = S3Checkpoint::new(&b, "data/");
    let snap = cp.capture(&ctx()).await.unwrap();
    let under = |p: String| {
        let b = b.clone();
        async move {
            b.client()
                .list_objects_v2()
                .bucket(b.name())
                .prefix(p)
                .send()
                .await
                .unwrap()
                .key_count()
                .unwrap_or(0)
        }
    };
    let area = format!(".rollback/snapshots/{}/", snap.id);
    assert_eq!(
        under(area.clone()).await,
        11,
        "10 copies and 1 manifest part"
    );
    cp.discard(&snap, &ctx()).await.unwrap();
    assert_eq!(under(area).await, 0);
    assert_eq!(under("data/".into()).await, 10);
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_prefix_leaves_other_prefixes_alone() {
    require_server!();
    let b = common::fresh_bucket("cp-prefix-only", true).await;
    common::seed(&b, "v1/", 2, 10).await;
    let cp = S3Checkpoint::new(&b, "v1/");
    assert_eq!(cp.resource(), format!("s3:{}/v1/", b.name()));
    let snap = cp.capture(&ctx()).await.unwrap();
    b.put("v1/extra", b"x".to_vec()).await.unwrap();
    b.put("v2/kept", b"y".to_vec()).await.unwrap();
    cp.restore(&snap, &ctx()).await.unwrap();
    assert!(b.head("v1/extra").await.unwrap().is_none());
    assert!(b.head("v2/kept").await.unwrap().is_some());
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_with_more_work_than_its_buffer_computes_it_again_and_finishes() {
    require_server!();
    for versioned in [true, false] {
        let b = common::fresh_bucket("cp-two-pass", versioned).await;
        common::seed(&b, "d/", 3, 30).await;
        let state = common::independent_state(b.client(), b.name(), "").await;
        let cp = S3Checkpoint::new(&b, "d/").restore_buffer(3);
        let snap = cp.capture(&ctx()).await.unwrap();
        for i in 0..10 {
            b.delete(&format!("d/tenant-{:03}/obj-{i:06}.json", i % 3))
                .await
                .unwrap();
            b.put(&format!("d/new-{i}"), b"new".to_vec()).await.unwrap();
        }
        let r = cp.restore(&snap, &ctx()).await.unwrap();
        assert_eq!(r.items_changed, Some(20), "versioned={versioned}");
        assert_eq!(
            common::independent_state(b.client(), b.name(), "").await,
            state
        );
        b.dangerous_delete_bucket().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_skip_a_store_holding_more_than_a_page_of_objects() {
    require_server!();
    for versioned in [true, false] {
        let b = common::fresh_bucket("cp-big-store", versioned)
            .await
            .concurrency(32);
        // 1,100 objects in the store (sorted before `data/`), 5 objects of data.
        common::seed(&b, ".rollback/noise/", 1, 1100).await;
        common::seed(&b, "data/", 1, 5).await;
        let cp = S3Checkpoint::new(&b, "");
        let snap = cp.capture(&ctx()).await.unwrap();
        let mref = ManifestRef::from_descriptor(&snap.descriptor).unwrap();
        assert_eq!(mref.entries, 5, "versioned={versioned}");
        b.put("data/new", b"n".to_vec()).await.unwrap();
        let r = cp.restore(&snap, &ctx()).await.unwrap();
        assert_eq!(r.items_changed, Some(1));
        assert_eq!(cp.fingerprint(&ctx()).await.unwrap(), snap.fingerprint);
        assert_eq!(b.list("").await.unwrap().len(), 5);
        b.dangerous_delete_bucket().await.unwrap();
    }
}
