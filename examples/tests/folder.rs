//! The local-folder object store (the examples' embedded default for objects) against
//! the core's conformance suite, and its behaviour in both directions, checked on the
//! files themselves.

use examples::folder::{FolderCheckpoint, FolderLayoutParity, FolderMovePrefix, FolderStore};
use rollback_core::journal::{FileJournal, MemoryJournal};
use rollback_core::{
    conformance, Checkpoint, Context, Error, Executor, Outcome, Plan, Step, Verifier,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

fn store(dir: &Path, name: &str) -> FolderStore {
    FolderStore::new(dir.join(name).join("objects"), dir.join(name).join("state")).named(name)
}

async fn seed(s: &FolderStore, prefix: &str, n: usize) {
    for i in 0..n {
        s.put(
            &format!("{prefix}{}/file-{i:03}.bin", i % 7),
            format!("object {i}").repeat(i % 5 + 1).into_bytes(),
        )
        .await
        .unwrap();
    }
}

/// Every file under `root` with its content, read with plain std::fs (not the store).
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

#[tokio::test]
async fn folder_checkpoint_and_move_pass_the_core_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "main");
    let other = store(dir.path(), "other");
    seed(&s, "v1/", 40).await;
    seed(&other, "v1/", 3).await;
    let before = files(s.root());
    conformance::run_all(conformance::Subject {
        checkpoint: Arc::new(FolderCheckpoint::new(&s, "")),
        other_checkpoint: Arc::new(FolderCheckpoint::new(&other, "")),
        step: Arc::new(FolderMovePrefix::new("move", &s, "v1/", "v2/").batch(7)),
        journal: Arc::new(MemoryJournal::new()),
    })
    .await;
    assert_eq!(files(s.root()), before, "the suite left the folder changed");
}

#[tokio::test]
async fn move_failing_midway_is_rolled_back_to_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "drill");
    seed(&s, "v1/", 100).await;
    let before = files(s.root());
    let cp = FolderCheckpoint::new(&s, "");
    let plan = Plan::builder("move-midway")
        .checkpoint("storage", cp.clone())
        .step(
            "storage",
            FolderMovePrefix::new("move", &s, "v1/", "v2/")
                .batch(10)
                .fail_after(40),
            &[],
        )
        .verify_after(
            "move",
            FolderLayoutParity::new("v2-holds-v1", &cp, "v1/", "v2/"),
        )
        .build()
        .unwrap();
    let journal = FileJournal::open(dir.path().join("journal")).unwrap();
    let report = Executor::new(journal).run(&plan).await.unwrap();
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(report.parity_proven(), "{md}");
    assert!(
        md.contains("injected failure after 40 of 100 objects"),
        "{md}"
    );
    assert_eq!(files(s.root()), before);
}

#[tokio::test]
async fn move_then_parity_passes_and_revert_puts_every_file_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "both-ways");
    seed(&s, "v1/", 30).await;
    let before = files(s.root());
    let cp = FolderCheckpoint::new(&s, "");
    let ctx = Context::standalone("both-ways");
    let snap = cp.capture(&ctx).await.unwrap();
    let step = FolderMovePrefix::new("move", &s, "v1/", "v2/").batch(4);
    let receipt = step.apply(&ctx).await.unwrap();
    let moved = files(s.root());
    assert_eq!(moved.len(), 30);
    assert!(moved.keys().all(|k| k.starts_with("v2/")), "{moved:?}");
    for (k, v) in &before {
        assert_eq!(moved.get(&k.replacen("v1/", "v2/", 1)), Some(v));
    }
    let parity = FolderLayoutParity::new("p", &cp, "v1/", "v2/");
    let verdict = parity
        .verify(&Context::standalone("v").with_baseline([snap.clone()]))
        .await
        .unwrap();
    assert!(verdict.passed(), "{verdict:?}");
    step.revert(Some(&receipt), &ctx).await.unwrap();
    assert_eq!(files(s.root()), before);
    // The parity verifier now sees nothing under v2/.
    let verdict = parity
        .verify(&Context::standalone("v").with_baseline([snap]))
        .await
        .unwrap();
    assert!(!verdict.passed());
    assert_eq!(verdict.evidence["missing"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn restore_refuses_a_snapshot_whose_copy_was_altered_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "tamper");
    seed(&s, "v1/", 5).await;
    let cp = FolderCheckpoint::new(&s, "");
    let ctx = Context::standalone("tamper");
    let snap = cp.capture(&ctx).await.unwrap();
    s.put("v1/0/file-000.bin", b"changed".to_vec())
        .await
        .unwrap();
    let changed = files(s.root());
    // Alter one snapshot copy behind the checkpoint's back.
    let copy =
        Path::new(snap.descriptor["dir"].as_str().unwrap()).join("objects/v1/1/file-001.bin");
    std::fs::write(&copy, b"tampered").unwrap();
    match cp.restore(&snap, &ctx).await {
        Err(Error::DigestMismatch { .. }) => {}
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(files(s.root()), changed);
}

#[tokio::test]
async fn move_refuses_a_non_empty_destination_and_revert_keeps_rewritten_sources() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "conflict");
    seed(&s, "v1/", 6).await;
    s.put("v2/already/here.bin", b"x".to_vec()).await.unwrap();
    let step = FolderMovePrefix::new("move", &s, "v1/", "v2/");
    let err = step.apply(&Context::standalone("c1")).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");

    let s = store(dir.path(), "conflict2");
    seed(&s, "v1/", 6).await;
    let ctx = Context::standalone("c2");
    let step = FolderMovePrefix::new("move", &s, "v1/", "v2/");
    step.apply(&ctx).await.unwrap();
    // Someone writes the old key again with other content: revert must not overwrite it.
    s.put("v1/0/file-000.bin", b"new content".to_vec())
        .await
        .unwrap();
    let err = step.revert(None, &ctx).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(
        s.get("v1/0/file-000.bin").await.unwrap().as_deref(),
        Some(&b"new content"[..])
    );
    assert!(s.get("v2/0/file-000.bin").await.unwrap().is_some());
}

#[tokio::test]
async fn keys_that_leave_the_folder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "keys");
    for bad in ["../escape", "/abs", "a//b", ".hidden", "a/./b", ""] {
        assert!(
            matches!(s.put(bad, b"x".to_vec()).await, Err(Error::Invalid { .. })),
            "{bad:?} accepted"
        );
    }
}
