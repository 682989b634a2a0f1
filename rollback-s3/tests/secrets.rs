//! Credentials never appear in Debug output, error messages, logs or reports.

#[macro_use]
mod common;

use rollback_core::journal::MemoryJournal;
use rollback_core::{Checkpoint, Context, Executor, Plan};
use rollback_s3::faults::FailAfterCopies;
use rollback_s3::{MovePrefix, S3Bucket, S3Checkpoint, S3Settings, Secret};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn credentials() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (format!("AKIDLEAK{}", &id[..12]), format!("sk-LEAK-{id}"))
}

/// Settings with distinctive credentials the server accepts: fresh random ones on moto
/// (which accepts any), the configured user's on radosgw (whose secret is random too).
fn exercised_settings() -> (S3Settings, String, String) {
    let base = common::settings();
    match common::backend() {
        common::Backend::Moto => {
            let (ak, sk) = credentials();
            (base.static_credentials(&ak, &sk), ak, sk)
        }
        _ => {
            let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} unset"));
            let (ak, sk) = (
                var("ROLLBACK_TEST_RGW_ACCESS_KEY"),
                var("ROLLBACK_TEST_RGW_SECRET_KEY"),
            );
            (base, ak, sk)
        }
    }
}

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} contains a credential: {text}");
    }
}

#[test]
fn debug_output_of_settings_secrets_and_buckets_hides_credentials() {
    let (ak, sk) = credentials();
    let settings = S3Settings::new("http://127.0.0.1:1", "us-east-1", &ak, &sk);
    let bucket = S3Bucket::connect(&settings, "b");
    for text in [
        format!("{settings:?}"),
        format!("{:?}", Secret::new(&sk)),
        format!("{}", Secret::new(&sk)),
        format!("{bucket:?}"),
        format!("{:?}", S3Checkpoint::new(&bucket, "")),
        format!("{:?}", MovePrefix::new("m", &bucket, "a/", "b/")),
    ] {
        assert_clean("Debug output", &text, &[&ak, &sk]);
    }
}

/// Run a failing migration and failing requests on this thread with a subscriber using
/// `filter`, writing into a buffer; returns (access key, secret, texts, log).
async fn exercise(filter: &str) -> (String, String, Vec<String>, String) {
    let (settings, ak, sk) = exercised_settings();
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let settings = settings.max_attempts(2);
    let b = S3Bucket::connect(&settings, common::bucket_name("secrets"));
    b.create(false).await.unwrap();
    common::seed(&b, "v1/", 2, 10).await;

    // A run with a failure and a rollback: capture, move, restore, report.
    let cp = S3Checkpoint::new(&b, "");
    let plan = Plan::builder(format!("secrets-{}", b.name()))
        .checkpoint("storage", cp.clone())
        .step(
            "storage",
            FailAfterCopies::new(&b, 1, |b| {
                MovePrefix::new("mv", b, "v1/", "v2/").batch_size(5)
            }),
            &[],
        )
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    let mut texts = vec![
        report.to_markdown(),
        serde_json::to_string(&report).unwrap(),
    ];

    // Errors: a missing bucket, a refused request, an unreachable endpoint.
    let missing = S3Bucket::connect(&settings, "no-such-bucket-for-secrets");
    texts.push(
        missing
            .put("k", b"v".to_vec())
            .await
            .unwrap_err()
            .to_string(),
    );
    texts.push(format!("{:?}", missing.get("k").await.unwrap_err()));
    texts.push(format!(
        "{:?}",
        S3Checkpoint::new(&missing, "")
            .capture(&Context::detached())
            .await
            .unwrap_err()
    ));
    let unreachable = S3Settings::new("http://127.0.0.1:9", "us-east-1", &ak, &sk).max_attempts(1);
    let err = S3Bucket::connect(&unreachable, "b")
        .put("k", b"v".to_vec())
        .await
        .unwrap_err();
    texts.push(err.to_string());
    texts.push(format!("{err:?}"));

    b.dangerous_delete_bucket().await.unwrap();
    drop(_guard);
    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    (ak, sk, texts, log)
}

#[tokio::test(flavor = "current_thread")]
async fn errors_reports_and_trace_logs_never_contain_the_secret_key() {
    require_server!();
    let (ak, sk, texts, log) = exercise("trace").await;
    assert!(
        log.contains("CopyObject"),
        "the subscriber must have captured the SDK's logs"
    );
    assert!(log.contains("rollback_s3"), "and the crate's own");
    for (i, t) in texts.iter().enumerate() {
        assert_clean(&format!("error or report #{i}"), t, &[&ak, &sk]);
    }
    assert_clean("the TRACE log", &log, &[&sk]);
    // The crate's own events never carry the access key id either (the SDK's debug dumps
    // of its signing identity do: see SDK_LOG_FILTER).
    for line in log
        .lines()
        .filter(|l| l.contains(" rollback_s3::") || l.contains(" rollback_core::"))
    {
        if !line.contains("aws_") {
            assert_clean("a rollback log event", line, &[&ak]);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn with_the_sdk_log_filter_no_credential_appears_in_trace_logs() {
    require_server!();
    let (ak, sk, texts, log) = exercise(&format!("trace,{}", rollback_s3::SDK_LOG_FILTER)).await;
    assert!(
        log.contains("rollback_s3"),
        "the crate's own logs must be captured"
    );
    for (i, t) in texts.iter().enumerate() {
        assert_clean(&format!("error or report #{i}"), t, &[&ak, &sk]);
    }
    assert_clean("the filtered TRACE log", &log, &[&ak, &sk]);
}
