//! Probes against a real Prometheus (Debian's package; `ROLLBACK_PROMETHEUS_BIN` or
//! `prometheus` on the PATH), started by each test on loopback with a 1 s scrape interval,
//! scraping an exporter the test serves: a counter of requests and one of errors it
//! controls. A step flips the exporter into errors; the trigger must breach and the run
//! roll back. Prometheus down and no data are errors and inconclusive measurements that
//! follow their limits — never a pass.

use async_trait::async_trait;
use rollback_core::events::RunEvent;
use rollback_core::journal::MemoryJournal;
use rollback_core::{
    Context, Executor, Outcome, Plan, Receipt, Result, Reversibility, Status, Step, Verifier,
};
use rollback_probes::{Analysis, Condition, HttpProbe, PrometheusProbe};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The application's metrics: requests and errors, growing by a tick every 100 ms; the
/// error share is 0.1% healthy, 30% broken.
#[derive(Default)]
struct App {
    broken: AtomicBool,
    requests: AtomicU64,
    errors: AtomicU64,
    scrapes: AtomicU64,
}

/// Serve `/metrics` (the text exposition format) and `/health` (JSON) on loopback.
async fn serve(app: Arc<App>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let ticker = app.clone();
    tokio::spawn(async move {
        loop {
            ticker.requests.fetch_add(1000, Ordering::SeqCst);
            let e = if ticker.broken.load(Ordering::SeqCst) {
                300
            } else {
                1
            };
            ticker.errors.fetch_add(e, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let (ctype, body) = if req.starts_with("GET /metrics") {
                    app.scrapes.fetch_add(1, Ordering::SeqCst);
                    (
                        "text/plain; version=0.0.4",
                        format!(
                            "# TYPE app_requests_total counter\napp_requests_total {}\n# TYPE app_errors_total counter\napp_errors_total {}\n",
                            app.requests.load(Ordering::SeqCst),
                            app.errors.load(Ordering::SeqCst)
                        ),
                    )
                } else {
                    let status = if app.broken.load(Ordering::SeqCst) {
                        "degraded"
                    } else {
                        "ok"
                    };
                    ("application/json", format!("{{\"status\":\"{status}\"}}"))
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    port
}

fn prometheus_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ROLLBACK_PROMETHEUS_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    })
}

/// A Prometheus scraping `target` every second, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start Prometheus (or say why not: under `CI=true` a missing binary fails the test).
async fn prometheus(target_port: u16) -> Option<Prometheus> {
    let Some(bin) = prometheus_bin() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus is not installed (scripts/test installs Debian's package)"
        );
        eprintln!("skipped: no prometheus binary (set ROLLBACK_PROMETHEUS_BIN or install Debian's prometheus)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let p = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    // Ready, and the exporter scraped at least twice (rate() needs two samples).
    let client = reqwest::Client::new();
    let t = Instant::now();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "prometheus did not come up"
        );
        if let Ok(r) = client
            .get(format!("{}/api/v1/query", p.url))
            .query(&[("query", "count_over_time(app_requests_total[1m])")])
            .send()
            .await
        {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                let n = v["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0);
                if n >= 3.0 {
                    return Some(p);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const ERROR_RATE: &str = "sum(rate(app_errors_total[3s])) / sum(rate(app_requests_total[3s]))";

/// The migration step: flips the application into errors (its revert flips it back).
struct Flip(Arc<App>);

#[async_trait]
impl Step for Flip {
    fn id(&self) -> &str {
        "enable-new-checkout"
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::Compensable
    }
    async fn apply(&self, _: &Context) -> Result<Receipt> {
        self.0.broken.store(true, Ordering::SeqCst);
        Ok(Receipt::empty())
    }
    async fn revert(&self, _: Option<&Receipt>, _: &Context) -> Result<()> {
        self.0.broken.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// Run a one-step plan with `trigger` over a soak of `soak`; the scrapes counted when the
/// step was applied and when rollback started.
async fn run(
    app: &Arc<App>,
    trigger: rollback_core::Trigger,
    soak: Duration,
) -> (rollback_core::RunReport, Option<(u64, u64)>) {
    let plan = Plan::builder("checkout-v2")
        .step("app", Flip(app.clone()), &[])
        .soak(soak)
        .trigger(trigger)
        .build()
        .unwrap();
    let ex = Executor::new(MemoryJournal::new());
    let mut events = ex.subscribe();
    let watch = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut applied = None;
            while let Ok(e) = events.recv().await {
                match e.event {
                    RunEvent::StepFinished { ok: true, .. } if applied.is_none() => {
                        applied = Some(app.scrapes.load(Ordering::SeqCst));
                    }
                    RunEvent::RollbackStarted { .. } => {
                        return applied.map(|a| (a, app.scrapes.load(Ordering::SeqCst)));
                    }
                    _ => {}
                }
            }
            None
        })
    };
    let report = ex.run(&plan).await.unwrap();
    drop(ex);
    let scrapes = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    (report, scrapes)
}

#[tokio::test]
async fn a_rising_error_rate_breaches_within_three_scrapes_and_the_run_rolls_back() {
    let app = Arc::new(App::default());
    let port = serve(app.clone()).await;
    let Some(prom) = prometheus(port).await else {
        return;
    };
    let probe = PrometheusProbe::new(
        &prom.url,
        "error-rate",
        ERROR_RATE,
        Condition::parse("result < 0.05").unwrap(),
    )
    .unwrap();
    // Healthy before the change: the probe measures a success.
    let before = Analysis::new(probe.clone())
        .to_completion()
        .verify(&Context::detached())
        .await
        .unwrap();
    assert!(before.passed(), "{before:?}");
    let (report, scrapes) = run(
        &app,
        Analysis::new(probe)
            .interval(Duration::from_millis(250))
            .trigger(),
        Duration::from_secs(60),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    assert!(!app.broken.load(Ordering::SeqCst), "the step was reverted");
    let (applied, rolled) = scrapes.expect("rollback started after the step");
    let took = rolled - applied;
    eprintln!("breach detected {took} scrape(s) after the change");
    assert!(
        took <= 3,
        "breach detected {took} scrapes after the change\n{md}"
    );
    // The breaching verdict carries the measurement history: what value breached, when.
    let breach = report
        .verdicts
        .iter()
        .rev()
        .find(|v| v.verifier == "error-rate" && v.verdict.status == Status::Fail)
        .expect("a failing verdict");
    let value = breach.verdict.value.expect("the breaching value");
    assert!(value >= 0.05, "{value}");
    let history = breach.verdict.evidence["measurements"].as_array().unwrap();
    assert!(history.last().unwrap()["at_ms"].as_u64().unwrap() > 0);
    assert_eq!(history.last().unwrap()["outcome"], "failure");
}

#[tokio::test]
async fn no_data_is_inconclusive_and_breaches_at_its_limit_never_a_pass() {
    let app = Arc::new(App::default());
    let port = serve(app.clone()).await;
    let Some(prom) = prometheus(port).await else {
        return;
    };
    let probe = PrometheusProbe::new(
        &prom.url,
        "no-such-metric",
        "sum(rate(no_such_metric_total[3s]))",
        Condition::parse("result < 0.05").unwrap(),
    )
    .unwrap();
    // As a check, one inconclusive measurement is not a pass.
    let once = Analysis::new(probe.clone())
        .to_completion()
        .verify(&Context::detached())
        .await
        .unwrap();
    assert_eq!(once.status, Status::Inconclusive, "{once:?}");
    // As a trigger, three inconclusive measurements with a limit of 2 breach.
    let (report, _) = run(
        &app,
        Analysis::new(probe)
            .interval(Duration::from_millis(200))
            .inconclusive_limit(2)
            .trigger(),
        Duration::from_secs(30),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    let last = report
        .verdicts
        .iter()
        .rev()
        .find(|v| v.verifier == "no-such-metric")
        .unwrap();
    assert_eq!(last.verdict.status, Status::Inconclusive, "{md}");
    assert_eq!(last.verdict.evidence["inconclusive"], 3, "{md}");
    assert!(last.verdict.summary.contains("no data"), "{md}");
}

#[tokio::test]
async fn prometheus_down_is_an_error_counted_against_its_own_limit() {
    let app = Arc::new(App::default());
    // Nothing listens there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let probe = PrometheusProbe::new(&dead, "error-rate", ERROR_RATE, Condition::lt(0.05)).unwrap();
    let (report, _) = run(
        &app,
        Analysis::new(probe)
            .interval(Duration::from_millis(100))
            .consecutive_error_limit(2)
            .failure_limit(5)
            .trigger(),
        Duration::from_secs(30),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    let last = report
        .verdicts
        .iter()
        .rev()
        .find(|v| v.verifier == "error-rate")
        .unwrap();
    assert_eq!(last.verdict.status, Status::Fail);
    assert!(last.verdict.summary.contains("could not be taken"), "{md}");
    assert!(
        last.verdict
            .summary
            .contains("cannot connect to Prometheus"),
        "{md}"
    );
    assert_eq!(last.verdict.evidence["errors"], 3, "{md}");
    assert_eq!(last.verdict.evidence["failed"], 0, "{md}");
}

#[tokio::test]
async fn a_health_endpoint_turning_degraded_breaches_the_http_probe() {
    let app = Arc::new(App::default());
    let port = serve(app.clone()).await;
    let probe = HttpProbe::get("health", format!("http://127.0.0.1:{port}/health"))
        .unwrap()
        .max_latency(Duration::from_secs(2))
        .json_equals("/status", serde_json::json!("ok"));
    let ok = Analysis::new(probe.clone())
        .to_completion()
        .verify(&Context::detached())
        .await
        .unwrap();
    assert!(ok.passed(), "{ok:?}");
    let (report, _) = run(
        &app,
        Analysis::new(probe)
            .interval(Duration::from_millis(100))
            .failure_limit(1)
            .trigger(),
        Duration::from_secs(30),
    )
    .await;
    let md = report.to_markdown();
    assert_eq!(report.outcome, Outcome::RolledBack, "{md}");
    let last = report
        .verdicts
        .iter()
        .rev()
        .find(|v| v.verifier == "health")
        .unwrap();
    assert!(last.verdict.summary.contains("degraded"), "{md}");
    assert_eq!(last.verdict.evidence["failed"], 2, "{md}");
}
