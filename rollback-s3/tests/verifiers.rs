//! Verifiers on the real S3 server: manifest parity (plain, mapped, by content), object
//! exists / absent, predicates; and verifiers driving a plan's rollback.

#[macro_use]
mod common;

use rollback_core::journal::MemoryJournal;
use rollback_core::{Checkpoint, Context, Error, Executor, Outcome, Plan, Status, Verifier};
use rollback_s3::{
    ManifestParity, ManifestRef, MovePrefix, ObjectAbsent, ObjectExists, ObjectPredicate,
    S3Checkpoint,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_with_the_baseline_passes_then_lists_missing_extra_and_changed_keys() {
    require_server!();
    let b = common::fresh_bucket("parity", false).await;
    common::seed(&b, "d/", 2, 30).await;
    let cp = S3Checkpoint::new(&b, "d/");
    let snap = cp.capture(&Context::detached()).await.unwrap();
    let ctx = Context::detached().with_baseline([snap]);
    let v = ManifestParity::against_baseline("parity", &cp);
    let ok = v.verify(&ctx).await.unwrap();
    assert_eq!(ok.status, Status::Pass, "{}", ok.summary);
    assert_eq!(ok.evidence["actual"]["objects"], 30);

    b.delete("d/tenant-000/obj-000000.json").await.unwrap();
    b.put("d/extra.json", b"{}".to_vec()).await.unwrap();
    b.put("d/tenant-001/obj-000001.json", b"changed".to_vec())
        .await
        .unwrap();
    let bad = v.verify(&ctx).await.unwrap();
    assert_eq!(bad.status, Status::Fail);
    let e = &bad.evidence;
    assert_eq!(e["missing"]["count"], 1);
    assert_eq!(e["missing"]["sample"][0], "d/tenant-000/obj-000000.json");
    assert_eq!(e["extra"]["sample"][0], "d/extra.json");
    assert_eq!(
        e["changed"]["sample"][0]["key"],
        "d/tenant-001/obj-000001.json"
    );
    assert_eq!(e["expected"]["objects"], 30);
    assert_eq!(e["actual"]["objects"], 30);
    assert_eq!(bad.value, Some(3.0));
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_by_content_sees_a_same_size_change_and_needs_content_digests() {
    require_server!();
    let b = common::fresh_bucket("parity-content", true).await;
    common::seed(&b, "d/", 1, 5).await;
    let key = "d/tenant-000/obj-000003.json";
    let plain = S3Checkpoint::new(&b, "d/")
        .capture(&Context::detached())
        .await
        .unwrap();
    let with = S3Checkpoint::new(&b, "d/")
        .content_digests(true)
        .capture(&Context::detached())
        .await
        .unwrap();
    let ctx = Context::detached();
    let by_content = |s| ManifestParity::against_snapshot("p", &b, "d/", s).by_content(true);
    assert_eq!(
        by_content(with.clone()).verify(&ctx).await.unwrap().status,
        Status::Pass
    );
    assert_eq!(
        by_content(plain).verify(&ctx).await.unwrap().status,
        Status::Inconclusive
    );
    b.put(key, b"{\"i\":7,\"tenant\":0}".to_vec())
        .await
        .unwrap(); // same size
    let v = by_content(with).verify(&ctx).await.unwrap();
    assert_eq!(v.status, Status::Fail);
    assert_eq!(v.evidence["changed"]["sample"][0]["key"], key);
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_refuses_to_judge_against_a_tampered_manifest() {
    require_server!();
    let b = common::fresh_bucket("parity-tamper", false).await;
    common::seed(&b, "d/", 1, 5).await;
    let snap = S3Checkpoint::new(&b, "d/")
        .capture(&Context::detached())
        .await
        .unwrap();
    let part = ManifestRef::from_descriptor(&snap.descriptor)
        .unwrap()
        .part_key(0);
    b.put(&part, b"{}\n".to_vec()).await.unwrap();
    let r = ManifestParity::against_snapshot("p", &b, "d/", snap)
        .verify(&Context::detached())
        .await;
    assert!(matches!(r, Err(Error::DigestMismatch { .. })), "{r:?}");
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_exists_absent_and_predicates_report_offenders() {
    require_server!();
    let b = common::fresh_bucket("exists", false).await;
    let etag = b.put("a/one.json", b"{\"ok\":1}".to_vec()).await.unwrap();
    b.put("a/two.json", b"not json".to_vec()).await.unwrap();
    b.put("a/empty.json", Vec::new()).await.unwrap();
    let ctx = Context::detached();
    let status = |v: rollback_core::Verdict| v.status;
    assert_eq!(
        status(
            ObjectExists::new("e", &b, "a/one.json")
                .verify(&ctx)
                .await
                .unwrap()
        ),
        Status::Pass
    );
    assert_eq!(
        status(
            ObjectExists::new("e", &b, "a/one.json")
                .with_etag(&etag)
                .verify(&ctx)
                .await
                .unwrap()
        ),
        Status::Pass
    );
    assert_eq!(
        status(
            ObjectExists::new("e", &b, "a/one.json")
                .with_etag("0000")
                .verify(&ctx)
                .await
                .unwrap()
        ),
        Status::Fail
    );
    assert_eq!(
        status(
            ObjectExists::new("e", &b, "a/nope")
                .verify(&ctx)
                .await
                .unwrap()
        ),
        Status::Fail
    );
    assert_eq!(
        status(
            ObjectAbsent::key("x", &b, "a/nope")
                .verify(&ctx)
                .await
                .unwrap()
        ),
        Status::Pass
    );
    assert_eq!(
        status(
            ObjectAbsent::key("x", &b, "a/one.json")
                .verify(&ctx)
                .await
                .unwrap()
        ),
        Status::Fail
    );
    assert_eq!(
        status(
            ObjectAbsent::prefix("x", &b, "b/")
                .verify(&ctx)
                .await
                .unwrap()
        ),
        Status::Pass
    );
    let busy = ObjectAbsent::prefix("x", &b, "a/")
        .verify(&ctx)
        .await
        .unwrap();
    assert_eq!(
        (busy.status, busy.evidence["count"].as_u64()),
        (Status::Fail, Some(3))
    );

    let non_empty = ObjectPredicate::metadata("ne", &b, "a/", "size > 0", |o| o.size > 0)
        .verify(&ctx)
        .await
        .unwrap();
    assert_eq!(non_empty.status, Status::Fail);
    assert_eq!(
        non_empty.evidence["sample"],
        serde_json::json!(["a/empty.json"])
    );
    let json = ObjectPredicate::content("json", &b, "a/", "parses as JSON", |_o, body| {
        serde_json::from_slice::<serde_json::Value>(body).is_ok()
    })
    .verify(&ctx)
    .await
    .unwrap();
    assert_eq!(json.value, Some(2.0), "{}", json.summary);
    assert_eq!(json.evidence["checked"], 3);
    b.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_parity_check_passes_after_the_move_and_a_failing_check_rolls_it_back() {
    require_server!();
    let b = common::fresh_bucket("parity-plan", true).await;
    common::seed(&b, "v1/", 3, 40).await;
    let before = common::independent_state(b.client(), b.name(), "").await;
    let cp = S3Checkpoint::new(&b, "");
    let plan = |name: &str, fail: bool| {
        let mut p = Plan::builder(format!("{name}-{}", b.name()))
            .checkpoint("storage", cp.clone())
            .step("storage", MovePrefix::new("mv", &b, "v1/", "v2/"), &[])
            .verify_after(
                "mv",
                ManifestParity::against_baseline("v2-holds-v1", &cp).mapped("v1/", "v2/"),
            )
            .verify_final(ObjectAbsent::prefix("v1-empty", &b, "v1/"));
        if fail {
            p = p.verify_final(ObjectPredicate::metadata(
                "tiny",
                &b,
                "v2/",
                "size < 10",
                |o| o.size < 10,
            ));
        }
        p.build().unwrap()
    };
    let failing = Executor::new(MemoryJournal::new())
        .run(&plan("fail", true))
        .await
        .unwrap();
    assert_eq!(
        failing.outcome,
        Outcome::RolledBack,
        "{}",
        failing.to_markdown()
    );
    assert!(failing.parity_proven());
    let md = failing.to_markdown();
    assert!(md.contains("v2-holds-v1") && md.contains("tiny"), "{md}");
    assert_eq!(
        common::independent_state(b.client(), b.name(), "").await,
        before
    );

    let ok = Executor::new(MemoryJournal::new())
        .run(&plan("ok", false))
        .await
        .unwrap();
    assert_eq!(ok.outcome, Outcome::Committed, "{}", ok.to_markdown());
    assert_eq!(b.list("v2/").await.unwrap().len(), 40);
    assert!(cp.resource().ends_with('/'));
    b.dangerous_delete_bucket().await.unwrap();
}
