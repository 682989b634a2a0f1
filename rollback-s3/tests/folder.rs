//! The folder backend: the core conformance suite with every step of this crate on a
//! local folder (copy-based checkpoint), and the backend contract on bad input,
//! conditional writes and interrupted writes, checked on the files themselves.

use rollback_core::conformance::{run_all, Subject};
use rollback_core::journal::MemoryJournal;
use rollback_core::{Checkpoint, Context, Error, Step};
use rollback_s3::{
    CheckpointMode, CopyPrefix, DeleteObjects, FolderBackend, MovePrefix, ObjectBackend, PutMode,
    PutObjects, RewriteObjects, S3Checkpoint,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn folder(dir: &Path, name: &str) -> FolderBackend {
    FolderBackend::new(dir.join(name).join("objects"), dir.join(name).join("state")).named(name)
}

async fn seed(f: &FolderBackend) {
    for t in 0..3 {
        for i in 0..10 {
            f.put(
                &format!("v1/tenant-{t:03}/obj-{i:06}.json"),
                format!("{{\"tenant\":{t},\"i\":{i}}}").into_bytes(),
            )
            .await
            .unwrap();
        }
    }
    f.put("other/readme.txt", b"other".to_vec()).await.unwrap();
}

/// Every file under `root` with its content, read with plain std::fs.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

async fn conform(step: impl Fn(&FolderBackend) -> Arc<dyn Step>) {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path(), "main");
    seed(&f).await;
    let before = files(f.root());
    run_all(Subject {
        checkpoint: Arc::new(S3Checkpoint::new(&f, "")),
        other_checkpoint: Arc::new(S3Checkpoint::new(&f, "other/")),
        step: step(&f),
        journal: Arc::new(MemoryJournal::new()),
    })
    .await;
    assert_eq!(
        files(f.root()),
        before,
        "the suite must leave the folder as it found it"
    );
}

#[tokio::test]
async fn copy_checkpoint_and_move_prefix_conform_on_a_folder() {
    conform(|f| Arc::new(MovePrefix::new("move-v1-v2", f, "v1/", "v2/").batch_size(7))).await;
}

#[tokio::test]
async fn copy_checkpoint_and_copy_prefix_conform_on_a_folder() {
    conform(|f| Arc::new(CopyPrefix::new("copy-v1-v2", f, "v1/", "v2/"))).await;
}

#[tokio::test]
async fn copy_checkpoint_and_put_objects_conform_on_a_folder() {
    conform(|f| {
        Arc::new(
            PutObjects::new("put-two", f)
                .object("v1/tenant-000/new.json", b"{\"new\":true}".to_vec())
                .object("v1/tenant-001/obj-000001.json", b"{\"over\":1}".to_vec())
                .touching([f.resource_id("")]),
        )
    })
    .await;
}

#[tokio::test]
async fn copy_checkpoint_and_rewrite_objects_conform_on_a_folder() {
    conform(|f| {
        Arc::new(
            RewriteObjects::new("rewrite-v1", f, "v1/", "append/1", |_k, body| {
                let mut v = body.to_vec();
                v.extend_from_slice(b" migrated");
                Ok(Some(v.into()))
            })
            .touching([f.resource_id("")]),
        )
    })
    .await;
}

#[tokio::test]
async fn copy_checkpoint_and_restore_only_delete_conform_on_a_folder() {
    conform(|f| {
        Arc::new(DeleteObjects::new("delete-t2", f, "v1/tenant-002/").touching([f.resource_id("")]))
    })
    .await;
}

#[tokio::test]
async fn keys_that_leave_the_folder_are_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path(), "keys");
    for bad in [
        "../escape",
        "/abs",
        "a//b",
        ".hidden",
        "a/./b",
        "a/../../b",
        "",
    ] {
        assert!(
            matches!(f.put(bad, b"x".to_vec()).await, Err(Error::Invalid { .. })),
            "{bad:?} accepted"
        );
        assert!(matches!(f.get(bad).await, Err(Error::Invalid { .. })));
    }
    assert!(files(dir.path()).is_empty(), "a refused key wrote a file");
    assert!(matches!(
        f.list_page("../", None, None).await,
        Err(Error::Invalid { .. })
    ));
}

#[tokio::test]
async fn an_interrupted_write_leaves_the_old_object_and_is_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path(), "torn");
    f.put("v1/a.json", b"old".to_vec()).await.unwrap();
    // What a crash between the temporary write and the rename leaves behind.
    std::fs::write(f.root().join("v1/.a.json.tmp-deadbeef"), b"ne").unwrap();
    assert_eq!(f.get("v1/a.json").await.unwrap().unwrap().as_ref(), b"old");
    let keys: Vec<String> = f
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["v1/a.json"]);
    // A checkpoint neither captures nor restores the leftover.
    let cp = S3Checkpoint::new(&f, "");
    let ctx = Context::standalone("torn");
    let snap = cp.capture(&ctx).await.unwrap();
    f.put("v1/a.json", b"new".to_vec()).await.unwrap();
    cp.restore(&snap, &ctx).await.unwrap();
    assert_eq!(f.get("v1/a.json").await.unwrap().unwrap().as_ref(), b"old");
}

#[tokio::test]
async fn conditional_puts_and_copies_change_nothing_when_the_condition_fails() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path(), "cond");
    let etag = f.put("k", b"one".to_vec()).await.unwrap();
    assert!(matches!(
        f.put_object("k", b"two".to_vec().into(), PutMode::Create)
            .await,
        Err(Error::Conflict { .. })
    ));
    assert!(matches!(
        f.put_object("k", b"two".to_vec().into(), PutMode::IfMatch("0000".into()))
            .await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(f.get("k").await.unwrap().unwrap().as_ref(), b"one");
    let e2 = f
        .put_object("k", b"two".to_vec().into(), PutMode::IfMatch(etag.clone()))
        .await
        .unwrap();
    assert_ne!(e2, etag);
    assert_eq!(f.head("k").await.unwrap().unwrap().etag, e2);
    f.put_object("new", b"x".to_vec().into(), PutMode::Create)
        .await
        .unwrap();
    // A copy whose source changed since its ETag was read.
    assert!(matches!(
        f.copy(f.name(), "k", "copy", Some(&etag)).await,
        Err(Error::Conflict { .. })
    ));
    assert!(f.get("copy").await.unwrap().is_none());
    assert_eq!(f.copy(f.name(), "k", "copy", Some(&e2)).await.unwrap(), e2);
    assert!(matches!(
        f.copy("elsewhere", "k", "copy2", None).await,
        Err(Error::Invalid { .. })
    ));
}

#[tokio::test]
async fn versions_are_refused_on_a_folder_before_any_change() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path(), "noversions");
    seed(&f).await;
    let before = files(f.root());
    let ctx = Context::standalone("nv");
    let cp = S3Checkpoint::new(&f, "").mode(CheckpointMode::Versions);
    assert!(matches!(cp.capture(&ctx).await, Err(Error::Invalid { .. })));
    let del = DeleteObjects::new("del", &f, "v1/").versioned();
    assert!(matches!(del.apply(&ctx).await, Err(Error::Invalid { .. })));
    assert_eq!(files(f.root()), before);
}

#[tokio::test]
async fn listings_page_through_more_than_a_thousand_keys_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let f = folder(dir.path(), "many");
    for i in 0..1205 {
        f.put(&format!("p/{:02}/{i:05}", i % 13), vec![b'x'; i % 3])
            .await
            .unwrap();
    }
    let first = f.list_page("p/", None, None).await.unwrap();
    assert_eq!(first.objects.len(), 1000);
    let next = first.next.clone().expect("a second page");
    let second = f.list_page("p/", None, Some(&next)).await.unwrap();
    assert_eq!(second.objects.len(), 205);
    assert!(second.next.is_none());
    let all: Vec<String> = first
        .objects
        .iter()
        .chain(&second.objects)
        .map(|o| o.key.clone())
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted);
    // p/00 … p/09: i % 13 < 10 for 92 full cycles of 13, and the last 9 keys.
    assert_eq!(f.list("p/0").await.unwrap().len(), 92 * 10 + 9);
}
