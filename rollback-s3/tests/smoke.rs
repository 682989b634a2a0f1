mod common;
use rollback_core::{Checkpoint, Context};
use rollback_s3::S3Checkpoint;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_capture_restore_timing() {
    for versioned in [true, false] {
        let b = common::fresh_bucket("smoke", versioned).await;
        let t = Instant::now();
        common::seed(&b, "v1/", 10, 1000).await;
        eprintln!("versioned={versioned} seed 1000: {:?}", t.elapsed());
        let cp = S3Checkpoint::new(&b, "");
        let ctx = Context::detached();
        let fp0 = cp.fingerprint(&ctx).await.unwrap();
        let t = Instant::now();
        let snap = cp.capture(&ctx).await.unwrap();
        eprintln!("capture: {:?} {}", t.elapsed(), snap.kind);
        assert_eq!(snap.fingerprint, fp0);
        b.put("v1/tenant-000/obj-000000.json", b"changed".to_vec())
            .await
            .unwrap();
        b.put("v2/new", b"new".to_vec()).await.unwrap();
        b.delete("v1/tenant-001/obj-000001.json").await.unwrap();
        assert_ne!(cp.fingerprint(&ctx).await.unwrap(), fp0);
        let t = Instant::now();
        let r = cp.restore(&snap, &ctx).await.unwrap();
        eprintln!("restore: {:?} {:?}", t.elapsed(), r);
        assert_eq!(cp.fingerprint(&ctx).await.unwrap(), fp0);
        let r = cp.restore(&snap, &ctx).await.unwrap();
        assert_eq!(r.items_changed, Some(0));
        cp.discard(&snap, &ctx).await.unwrap();
        b.dangerous_delete_bucket().await.unwrap();
    }
}
