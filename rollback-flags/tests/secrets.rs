//! The admin token never appears in Debug output, errors, logs or reports. Alone in its
//! test binary: it installs the global tracing subscriber that collects every log line.

mod common;

use rollback_core::{Context, Executor, Outcome, Plan, Step};
use rollback_flags::{
    FlagChange, FlagCheckpoint, FlagProvider, FlagState, SetFlag, UnleashProvider,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

fn provider_at(url: &str, token: &str) -> UnleashProvider {
    UnleashProvider::new(url, token, "default", "development")
        .unwrap()
        .retries(1, Duration::from_millis(10))
}

/// A server that answers every request with 503.
async fn always_503() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                if let Ok(n) = s.read(&mut buf).await {
                    if n > 0 {
                        let _ = s
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    url
}

/// A `MakeWriter` collecting every log line.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn admin_token_never_appears_in_debug_errors_logs_or_reports() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let token = common::admin_token();
    let secret_part = token.rsplit('.').next().unwrap().to_string();
    assert!(secret_part.len() >= 6);

    let prefix = common::prefix("secret");
    let p: Arc<dyn FlagProvider> = Arc::new(common::unleash());
    let f = format!("{prefix}flag");
    p.put(&f, &FlagState::rollout(&f, 10)).await.unwrap();
    let mut shown = vec![format!("{p:?}"), format!("{:?}", common::unleash())];

    // A committed run and a failed one, with the real token.
    let plan = Plan::builder(format!("{prefix}plan"))
        .checkpoint("flags", FlagCheckpoint::flag(p.clone(), &f))
        .step(
            "flags",
            SetFlag::new("up", p.clone(), &f, FlagChange::new().rollout(60)),
            &[],
        )
        .build()
        .unwrap();
    let report = Executor::new(rollback_core::journal::MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    shown.push(report.to_markdown());
    shown.push(serde_json::to_string(&report).unwrap());

    // 4xx answers (a flag name Unleash refuses in another project, a bad strategy).
    let bad = UnleashProvider::new(
        &common::unleash_url(),
        token.clone(),
        "no-such-project",
        "development",
    )
    .unwrap();
    let err = bad.put(&f, &FlagState::off()).await.unwrap_err();
    shown.push(format!("{err} {err:?}"));

    // The same token against a closed port and a 503 server.
    let url = format!("http://127.0.0.1:{}", closed_port().await);
    let dead: Arc<dyn FlagProvider> = Arc::new(provider_at(&url, &token));
    let step = SetFlag::kill_switch("kill", dead.clone(), &f);
    let err = step.apply(&Context::standalone("dead")).await.unwrap_err();
    shown.push(format!("{err} {err:?} {step:?}"));
    let url = always_503().await;
    let err = provider_at(&url, &token).delete(&f).await.unwrap_err();
    shown.push(format!("{err} {err:?}"));

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("unleash request failed"),
        "the failures were logged: {logs}"
    );
    shown.push(logs);
    for s in &shown {
        assert!(
            !s.contains(&secret_part),
            "the admin token leaked into: {s}"
        );
    }
    common::cleanup(&prefix).await;
}
