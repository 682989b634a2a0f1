//! Throttling and dropped connections, injected by a small TCP proxy in front of the real
//! S3 server (it answers `503 SlowDown` or hangs up instead of forwarding): retried with
//! backoff by the SDK, then mapped to `Error::Transient` with `maybe_applied` right.

#[macro_use]
mod common;

use rollback_core::{Context, Error, Step};
use rollback_s3::{PutObjects, RequestCounter, S3Bucket, S3Settings};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    SlowDown,
    HangUp,
}

/// A proxy answering the first `faulty` requests with `fault`, forwarding the rest.
struct FaultProxy {
    endpoint: String,
    requests: Arc<AtomicU64>,
}

async fn read_request(c: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = c.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = c.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // Forward with `Connection: close`, so one upstream response ends with EOF.
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut out: String = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:") && !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str("Connection: close\r\n\r\n");
    let mut req = out.into_bytes();
    req.extend_from_slice(&buf[head_end..]);
    Some(req)
}

impl FaultProxy {
    async fn start(fault: Fault, faulty: u64) -> Self {
        let settings = common::settings();
        let endpoint = settings
            .endpoint()
            .expect("the test server has an endpoint");
        let upstream = endpoint
            .strip_prefix("http://")
            .expect("the fault proxy forwards plain HTTP only")
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicU64::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let seen = seen.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut c).await else {
                        return;
                    };
                    let i = seen.fetch_add(1, Ordering::SeqCst);
                    if i < faulty {
                        if fault == Fault::SlowDown {
                            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                            let resp = format!("HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                            let _ = c.write_all(resp.as_bytes()).await;
                        }
                        let _ = c.shutdown().await; // HangUp: the request was read, no answer
                        return;
                    }
                    let Ok(mut up) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    if up.write_all(&req).await.is_err() {
                        return;
                    }
                    let mut resp = Vec::new();
                    let _ = up.read_to_end(&mut resp).await;
                    let _ = c.write_all(&resp).await;
                    let _ = c.shutdown().await;
                });
            }
        });
        FaultProxy { endpoint, requests }
    }

    fn settings(&self, attempts: u32) -> S3Settings {
        common::settings()
            .with_endpoint(&self.endpoint)
            .max_attempts(attempts)
            .initial_backoff(Duration::from_millis(10))
            .attempt_timeout(Some(Duration::from_secs(5)))
    }
}

async fn bucket_behind(
    proxy: &FaultProxy,
    attempts: u32,
    counter: &RequestCounter,
) -> (S3Bucket, S3Bucket) {
    let direct = common::fresh_bucket("retry", false).await;
    let behind = S3Bucket::connect_counted(&proxy.settings(attempts), direct.name(), counter);
    (direct, behind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_backoff_until_it_succeeds() {
    require_server!();
    let proxy = FaultProxy::start(Fault::SlowDown, 2).await;
    let counter = RequestCounter::new();
    let (direct, b) = bucket_behind(&proxy, 5, &counter).await;
    b.put("k", b"v".to_vec()).await.unwrap();
    assert_eq!(
        common::count(&counter, "PutObject"),
        3,
        "two throttled attempts, then success"
    );
    assert_eq!(proxy.requests.load(Ordering::SeqCst), 3);
    assert_eq!(direct.get("k").await.unwrap().unwrap().as_ref(), b"v");
    direct.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_throttling_becomes_a_transient_error_that_did_not_apply() {
    require_server!();
    let proxy = FaultProxy::start(Fault::SlowDown, u64::MAX).await;
    let counter = RequestCounter::new();
    let (direct, b) = bucket_behind(&proxy, 3, &counter).await;
    let err = b.put("k", b"v".to_vec()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transient {
                maybe_applied: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("SlowDown"), "{err}");
    assert_eq!(common::count(&counter, "PutObject"), 3);
    direct.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_transient_and_a_write_may_have_applied() {
    require_server!();
    let proxy = FaultProxy::start(Fault::HangUp, u64::MAX).await;
    let counter = RequestCounter::new();
    let (direct, b) = bucket_behind(&proxy, 2, &counter).await;
    let write = b.put("k", b"v".to_vec()).await.unwrap_err();
    assert!(
        matches!(
            write,
            Error::Transient {
                maybe_applied: true,
                ..
            }
        ),
        "{write:?}"
    );
    let read = b.get("k").await.unwrap_err();
    assert!(
        matches!(
            read,
            Error::Transient {
                maybe_applied: false,
                ..
            }
        ),
        "{read:?}"
    );
    assert!(
        common::count(&counter, "PutObject") >= 2,
        "{:?}",
        counter.by_operation()
    );
    direct.dangerous_delete_bucket().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_rides_through_throttling() {
    require_server!();
    let proxy = FaultProxy::start(Fault::SlowDown, 3).await;
    let counter = RequestCounter::new();
    let (direct, b) = bucket_behind(&proxy, 5, &counter).await;
    let step = PutObjects::new("put", &b)
        .object("a", b"1".to_vec())
        .object("b", b"2".to_vec());
    let ctx = Context::standalone("throttled-run");
    step.apply(&ctx).await.unwrap();
    assert_eq!(direct.get("a").await.unwrap().unwrap().as_ref(), b"1");
    step.revert(None, &ctx).await.unwrap();
    assert!(direct.head("a").await.unwrap().is_none());
    direct.dangerous_delete_bucket().await.unwrap();
}

/// A malformed endpoint cannot start working by retrying: it is a permanent error
/// (nothing was sent), so a run fails fast with the cause instead of backing off. A
/// well-formed endpoint that refuses connections stays transient.
#[tokio::test]
async fn a_malformed_endpoint_is_a_permanent_error_not_a_transient_one() {
    require_server!();
    for endpoint in [
        "not a url",
        "127.0.0.1:59000",
        "http://",
        "http://127.0.0.1:notaport",
        "ftp://127.0.0.1:59000",
    ] {
        let settings =
            S3Settings::new(endpoint, "us-east-1", "AKID", "secret-key-1").max_attempts(3);
        let err = S3Bucket::connect(&settings, "bucket-x")
            .exists()
            .await
            .unwrap_err();
        assert!(!err.is_transient(), "{endpoint:?}: {err}");
        assert!(!err.maybe_applied(), "{endpoint:?}: nothing was sent");
        assert!(
            err.to_string().contains("not a valid URI"),
            "{endpoint:?}: {err}"
        );
    }
    let refused =
        S3Settings::new("http://127.0.0.1:1", "us-east-1", "AKID", "secret-key-1").max_attempts(1);
    let err = S3Bucket::connect(&refused, "bucket-x")
        .exists()
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}
