//! Unreachable and failing providers: retries with backoff, typed errors with the right
//! `maybe_applied`, a journal a later `resume` finishes — and no credential anywhere.

mod common;

use rollback_core::journal::FileJournal;
use rollback_core::{Context, Error, Executor, Outcome, Plan};
use rollback_flags::{FlagCheckpoint, FlagProvider, FlagState, StagedRollout, UnleashProvider};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A port on 127.0.0.1 nothing listens on.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

fn provider_at(url: &str, token: &str) -> UnleashProvider {
    UnleashProvider::new(url, token, "default", "development")
        .unwrap()
        .retries(2, Duration::from_millis(20))
}

#[tokio::test]
async fn unreachable_unleash_is_retried_then_fails_transient_and_not_applied() {
    let url = format!("http://127.0.0.1:{}", closed_port().await);
    let p = provider_at(&url, "*:*.closed-port-secret");
    let t = Instant::now();
    let err = p.get("anything").await.unwrap_err();
    assert!(
        t.elapsed() >= Duration::from_millis(60),
        "backoff 20 + 40 ms"
    );
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
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    // A write that never reached the server did not apply.
    let err = p.put("anything", &FlagState::off()).await.unwrap_err();
    assert!(!err.maybe_applied(), "{err:?}");
    let err = p.delete("anything").await.unwrap_err();
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
    for shown in [format!("{err}"), format!("{err:?}"), format!("{p:?}")] {
        assert!(
            !shown.contains("closed-port-secret"),
            "token leaked: {shown}"
        );
    }
}

/// A run whose flag provider is a closed port: the step's apply fails (transient, not
/// applied) after the provider's and the executor's retries; the run rolls back with
/// nothing to undo, and the file journal holds a finished run that `resume` and `report`
/// read back the same.
#[tokio::test]
async fn run_against_a_closed_port_rolls_back_with_a_consistent_journal() {
    let url = format!("http://127.0.0.1:{}", closed_port().await);
    let dead: Arc<dyn FlagProvider> = Arc::new(provider_at(&url, "*:*.closed-port-run-secret"));
    let plan = Plan::builder("closed-port")
        .step(
            "flags",
            rollback_flags::SetFlag::kill_switch("kill", dead.clone(), "checkout"),
            &[],
        )
        .default_step_options(
            rollback_core::StepOptions::default()
                .retries(2)
                .backoff(Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let report = Executor::new(FileJournal::open(dir.path()).unwrap())
        .run(&plan)
        .await
        .unwrap();
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(md.contains("connection failed (after 3 attempts)"), "{md}");
    assert!(md.contains("apply of kill failed: transient"), "{md}");
    assert!(!md.contains("closed-port-run-secret"));
    // A new process reads the same finished run from the journal.
    let again = Executor::new(FileJournal::open(dir.path()).unwrap());
    let resumed = again.resume(&plan, &report.run_id).await.unwrap();
    assert_eq!(resumed.outcome, Outcome::RolledBack);
    let rebuilt = again.report(&plan, &report.run_id).await.unwrap();
    assert_eq!(rebuilt.to_markdown(), md);
}

/// A server that answers every request with 503, counting them.
async fn always_503() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                if let Ok(n) = s.read(&mut buf).await {
                    if n > 0 {
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = s
                            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    (url, hits)
}

#[tokio::test]
async fn unleash_answering_503_is_retried_then_fails_transient_maybe_applied_only_for_writes() {
    let (url, hits) = always_503().await;
    let p = provider_at(&url, "*:*.five-oh-three-secret");
    let err = p.get("flag").await.unwrap_err();
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
    assert_eq!(hits.load(Ordering::SeqCst), 3, "one try and two retries");
    let err = p.delete("flag").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transient {
                maybe_applied: true,
                ..
            }
        ),
        "a 503 to a write may have applied: {err:?}"
    );
    // Three reads of the flag's lifecycle (a failure there decides nothing), then the
    // archive request with its two retries.
    assert_eq!(hits.load(Ordering::SeqCst), 9);
    assert!(!format!("{err} {err:?}").contains("five-oh-three-secret"));
}

/// A TCP proxy to the real Unleash that can be switched off (existing connections are
/// cut too): Unleash becoming unreachable in the middle of a run.
struct Proxy {
    url: String,
    up: Arc<AtomicBool>,
    down_tx: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let target = target.trim_start_matches("http://").to_string();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let up = Arc::new(AtomicBool::new(true));
        let (down_tx, down_rx) = tokio::sync::watch::channel(0u64);
        let u = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = l.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    drop(client); // refused, as far as a client can tell
                    continue;
                }
                let target = target.clone();
                let mut down = down_rx.clone();
                down.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.changed() => {}
                    }
                });
            }
        });
        Proxy { url, up, down_tx }
    }
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.down_tx.send_modify(|n| *n += 1);
        }
    }
}

/// A health check that takes Unleash down after the first stage (as if the network
/// failed right then), and passes.
struct CutNetworkAfterFirstStage {
    proxy: Arc<Proxy>,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl rollback_core::Verifier for CutNetworkAfterFirstStage {
    fn id(&self) -> &str {
        "cut-network"
    }
    async fn verify(&self, _ctx: &Context) -> rollback_core::Result<rollback_core::Verdict> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.proxy.set_up(false);
        }
        Ok(rollback_core::Verdict::pass("ok"))
    }
}

/// Stage 1 is written, then Unleash becomes unreachable: the apply fails (may have
/// applied), the executor retries, rolls back, cannot revert or restore while Unleash is
/// down and stops in `RollbackFailed` naming what is left; once Unleash is back, `resume`
/// from the file journal finishes the rollback with parity proven.
#[tokio::test]
async fn unleash_lost_mid_rollout_leaves_a_journal_that_resume_finishes() {
    let prefix = common::prefix("lost");
    let direct = common::unleash();
    let f = format!("{prefix}flag");
    direct.put(&f, &FlagState::off()).await.unwrap();

    let proxy = Arc::new(Proxy::start(&common::unleash_url()).await);
    let via: Arc<dyn FlagProvider> = Arc::new(provider_at(&proxy.url, &common::admin_token()));
    // Built twice: the resume runs with fresh steps (no in-process memory), as a new
    // process would.
    let make_plan = || {
        Plan::builder(format!("{prefix}plan"))
            .checkpoint("flags", FlagCheckpoint::flag(via.clone(), &f))
            .step(
                "flags",
                StagedRollout::new("rollout", via.clone(), &f, &[10, 100]).health_check(Arc::new(
                    CutNetworkAfterFirstStage {
                        proxy: proxy.clone(),
                        calls: AtomicUsize::new(0),
                    },
                )),
                &[],
            )
            .default_step_options(
                rollback_core::StepOptions::default()
                    .retries(1)
                    .backoff(Duration::from_millis(20)),
            )
            .build()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::new(FileJournal::open(dir.path()).unwrap()).rollback_retries(1);
    let report = executor.run(&make_plan()).await.unwrap();
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RollbackFailed, "{md}");
    assert!(!report.remaining.is_empty(), "{md}");
    // Stage 1 is live in Unleash: the journal says the step may have applied.
    assert_eq!(
        direct.get(&f).await.unwrap().unwrap().rollout_percent(),
        Some(10)
    );
    assert!(!md.contains(&common::admin_token()), "token in report");

    proxy.set_up(true);
    // A new process: a fresh executor and plan over the same journal.
    let run_id = report.run_id.clone();
    let executor = Executor::new(FileJournal::open(dir.path()).unwrap());
    let report = executor.resume(&make_plan(), &run_id).await.unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven());
    assert_eq!(direct.get(&f).await.unwrap(), Some(FlagState::off()));
    common::cleanup(&prefix).await;
}
