//! S3 relayout: move every object from `v1/{tenant}/…` to `v2/{tenant}/…` on a real
//! S3-compatible server, as one journaled, verified, reversible plan.
//!
//! It creates the bucket with demo objects if absent, prints the dry run, moves v1 → v2
//! with progress, checks that v2 holds exactly what v1 held (a manifest parity check),
//! and prints the Markdown report and the number of S3 requests made. With `--fail` the
//! move fails halfway and the run rolls back by itself, proving parity with the baseline.
//!
//! ```text
//! # endpoint and credentials: ROLLBACK_TEST_S3_* (as exported by scripts/test) or S3_*
//! export S3_ENDPOINT=http://127.0.0.1:59000 S3_ACCESS_KEY=test S3_SECRET_KEY=test
//! cargo run --example s3_relayout                     # move v1 → v2, committed
//! cargo run --example s3_relayout -- --fail           # fails midway → automatic rollback
//! cargo run --example s3_relayout -- --objects 10000 --unversioned --reset
//! cargo run --release --example s3_relayout -- --measure --objects 10000
//! ```
//!
//! Options: `--bucket NAME` (default `rollback-demo`), `--objects N` (default 1000),
//! `--unversioned` (copy-based checkpoint instead of versions), `--reset` (empty the
//! bucket first), `--measure` (time capture and restore of N objects, versioned and
//! copy-based, and count their requests).

use examples::faults::FailAfterCopies;
use rollback_core::journal::FileJournal;
use rollback_core::{Checkpoint, ConsoleProgress, Context, Executor, Outcome, Plan, Step};
use rollback_s3::{
    ManifestParity, MovePrefix, ObjectAbsent, RequestCounter, S3Bucket, S3Checkpoint, S3Settings,
    SDK_LOG_FILTER,
};
use std::sync::Arc;
use std::time::Instant;

type BoxError = Box<dyn std::error::Error>;

struct Args {
    bucket: String,
    objects: usize,
    versioned: bool,
    fail: bool,
    reset: bool,
    measure: bool,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    Args {
        bucket: value("--bucket").unwrap_or_else(|| "rollback-demo".into()),
        objects: value("--objects")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
        versioned: !argv.iter().any(|a| a == "--unversioned"),
        fail: argv.iter().any(|a| a == "--fail"),
        reset: argv.iter().any(|a| a == "--reset"),
        measure: argv.iter().any(|a| a == "--measure"),
    }
}

fn settings() -> Result<S3Settings, BoxError> {
    S3Settings::from_env("ROLLBACK_TEST_S3")
        .or_else(|| S3Settings::from_env("S3"))
        .ok_or_else(|| {
            "set ROLLBACK_TEST_S3_ENDPOINT (or S3_ENDPOINT) and the matching _ACCESS_KEY, \
             _SECRET_KEY: `scripts/test --servers-only` prints them"
                .into()
        })
}

/// Put `n` demo objects under `v1/tenant-XXX/`, 32 at a time.
async fn seed(bucket: &S3Bucket, n: usize) -> Result<(), BoxError> {
    let t = Instant::now();
    let keys: Vec<usize> = (0..n).collect();
    for chunk in keys.chunks(32) {
        let puts = chunk.iter().map(|i| {
            let key = format!("v1/tenant-{:03}/doc-{i:06}.json", i % 50);
            let body = format!("{{\"doc\":{i},\"tenant\":{}}}", i % 50);
            let b = bucket.clone();
            async move { b.put(&key, body.into_bytes()).await }
        });
        join_all(puts).await?;
    }
    println!("seeded {n} objects under v1/ in {:.1?}", t.elapsed());
    Ok(())
}

/// A tiny join-all on tokio tasks, to keep this example's dependencies to the workspace's.
async fn join_all<F, T, E>(futs: impl IntoIterator<Item = F>) -> Result<Vec<T>, E>
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task panicked")?);
    }
    Ok(out)
}

fn print_requests(label: &str, counter: &RequestCounter) {
    let ops = counter.by_operation();
    let list: Vec<String> = ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "{label}: {} requests ({})",
        counter.total(),
        list.join(", ")
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{filter},{SDK_LOG_FILTER}"
        )))
        .init();
    let args = args();
    let settings = settings()?;
    if args.measure {
        return measure(&settings, args.objects).await;
    }

    let counter = RequestCounter::new();
    let bucket = S3Bucket::connect_counted(&settings, &args.bucket, &counter).concurrency(32);
    if args.reset && bucket.exists().await? {
        bucket.dangerous_purge("").await?;
    }
    bucket.create(args.versioned).await?;
    let v1 = bucket.list("v1/").await?.len();
    let v2 = bucket.list("v2/").await?.len();
    match (v1, v2) {
        (0, 0) => seed(&bucket, args.objects).await?,
        (_, 0) => println!("bucket {} already has {v1} objects under v1/", args.bucket),
        _ => {
            return Err(format!(
                "bucket {} already has {v2} objects under v2/ (a committed earlier run?): \
                 pass --reset to start over",
                args.bucket
            )
            .into())
        }
    }
    println!(
        "bucket {} is {}",
        args.bucket,
        if bucket.is_versioned().await? {
            "versioned: the checkpoint records versions and copies nothing"
        } else {
            "not versioned: the checkpoint makes server-side copies"
        }
    );

    // One checkpoint of the whole bucket (minus `.rollback/`, where snapshots and step
    // bookkeeping live), one step, two checks.
    let checkpoint = S3Checkpoint::new(&bucket, "");
    // Batches of 100 keys: progress every 100 objects, and `--fail` lands mid-move.
    // `--fail` wraps the step so that its backend fails halfway (fault injection from
    // outside: the production step has no knob for it).
    let mv: Arc<dyn Step> = if args.fail {
        let half = (v1.max(args.objects) / 2) as u64;
        Arc::new(FailAfterCopies::new(&bucket, half, |b| {
            MovePrefix::new("move-v1-to-v2", b, "v1/", "v2/").batch_size(100)
        }))
    } else {
        Arc::new(MovePrefix::new("move-v1-to-v2", &bucket, "v1/", "v2/").batch_size(100))
    };
    let plan = Plan::builder(format!("relayout-{}", args.bucket))
        .checkpoint("storage", checkpoint.clone())
        .step("storage", mv, &[])
        .verify_after(
            "move-v1-to-v2",
            ManifestParity::against_baseline("v2-holds-what-v1-held", &checkpoint)
                .mapped("v1/", "v2/"),
        )
        .verify_final(ObjectAbsent::prefix("v1-is-empty", &bucket, "v1/"))
        .build()?;
    println!("\n{}", plan.dry_run());

    let journal_dir = std::env::temp_dir().join(format!("rollback-s3-relayout-{}", args.bucket));
    let executor = Executor::new(FileJournal::open(&journal_dir)?);
    // Progress, as it happens: one line per step, verdict, restore and proof.
    let printer = ConsoleProgress::stdout()
        .without_run_ids()
        .follow(executor.subscribe());
    counter.reset();
    let t = Instant::now();
    let report = executor.run(&plan).await?;
    let _ = printer.await;
    println!("\nrun finished in {:.1?}", t.elapsed());
    print_requests("S3 requests during the run", &counter);
    println!("journal: {}\n", journal_dir.display());
    println!("{}", report.to_markdown());
    match report.outcome {
        Outcome::Committed => println!("committed: v2/ holds every object, v1/ is empty"),
        Outcome::RolledBack if report.parity_proven() => {
            println!("rolled back: the bucket is back to its baseline, parity proven")
        }
        other => return Err(format!("run ended {other:?}").into()),
    }
    Ok(())
}

/// Capture and restore times of `n` objects, versioned vs copy-based, with their
/// request counts: seed, capture, move all of v1 to v2 (no revert), restore from the
/// checkpoint alone, prove parity.
async fn measure(settings: &S3Settings, n: usize) -> Result<(), BoxError> {
    println!("| mode | objects | capture | capture requests | move | restore | restore requests | changed |");
    println!("|---|---|---|---|---|---|---|---|");
    for versioned in [true, false] {
        let counter = RequestCounter::new();
        let name = format!(
            "rollback-measure-{}-{}",
            if versioned { "versions" } else { "copy" },
            std::process::id()
        );
        let bucket = S3Bucket::connect_counted(settings, &name, &counter).concurrency(32);
        bucket.create(versioned).await?;
        seed(&bucket, n).await?;
        let cp = S3Checkpoint::new(&bucket, "");
        let ctx = Context::detached();

        counter.reset();
        let t = Instant::now();
        let snap = cp.capture(&ctx).await?;
        let capture = t.elapsed();
        let capture_requests = counter.by_operation();
        print_requests(&format!("  capture ({})", snap.kind), &counter);

        let mv = MovePrefix::new("measure-move", &bucket, "v1/", "v2/");
        let t = Instant::now();
        mv.apply(&Context::standalone(&name)).await?;
        let moved = t.elapsed();

        counter.reset();
        let t = Instant::now();
        let restored = cp.restore(&snap, &ctx).await?;
        let restore = t.elapsed();
        let restore_requests = counter.by_operation();
        print_requests("  restore", &counter);
        let parity = cp.fingerprint(&ctx).await? == snap.fingerprint;
        assert!(parity, "restore must give back the captured state");

        let fmt = |m: &std::collections::BTreeMap<String, u64>| {
            format!(
                "{} ({})",
                m.values().sum::<u64>(),
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        println!(
            "| {} | {n} | {:.2?} | {} | {:.2?} | {:.2?} | {} | {} |",
            snap.kind,
            capture,
            fmt(&capture_requests),
            moved,
            restore,
            fmt(&restore_requests),
            restored.items_changed.unwrap_or(0)
        );
        bucket.dangerous_delete_bucket().await?;
    }
    Ok(())
}
