//! The HTML report renders in a real browser: headless Chromium (Debian's package,
//! installed by scripts/test) takes a screenshot of it and dumps its DOM.

mod fixture;

use fixture::{rollback, run, ROLLED_BACK};
use rollback_core::journal::{FileJournal, Journal};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

/// The Chromium binary: `ROLLBACK_TEST_CHROMIUM`, else `chromium` on the PATH. Missing, the
/// test is skipped with the reason outside CI and fails under `CI=true`.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("ROLLBACK_TEST_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("chromium"))
                    .find(|p| p.is_file())
            })
        })
        .filter(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "Chromium is missing and CI=true: scripts/test installs it (rb_install_chromium)"
            );
        }
        eprintln!(
            "skipped: no chromium (scripts/lib/servers.sh installs it with rb_install_chromium)"
        );
    }
    found
}

fn headless(bin: &PathBuf, profile: &std::path::Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1200,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[tokio::test]
async fn the_html_report_renders_in_chromium_with_its_timeline() {
    let Some(bin) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let j: Arc<dyn Journal> = Arc::new(FileJournal::open(&journal).unwrap());
    let (report, _) = run(j, ROLLED_BACK, false).await;
    let page = dir.path().join("report.html");
    rollback()
        .arg("--journal")
        .arg(&journal)
        .args(["report", ROLLED_BACK, "--format", "html", "--output"])
        .arg(&page)
        .assert()
        .success();
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no script, nothing fetched.
    assert!(!html.contains("<script"), "the page runs no script");
    assert!(
        !html.contains("src=") && !html.contains("<link"),
        "the page loads nothing"
    );
    let url = format!("file://{}", page.display());

    let shot = dir.path().join("out.png");
    let out = headless(&bin, &dir.path().join("profile-shot"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 900));
    // A blank 1200×900 page compresses to a few kilobytes; the report's tables and chart
    // do not.
    assert!(
        png.len() > 30_000,
        "the screenshot looks empty: {} bytes",
        png.len()
    );

    let out = headless(&bin, &dir.path().join("profile-dom"))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<svg"), "the chart is in the DOM");
    for step in &report.steps {
        assert!(
            dom.contains(&format!("step {}", step.id)),
            "lane of {}",
            step.id
        );
    }
    for cp in &report.checkpoints {
        assert!(dom.contains(&format!("checkpoint {}", cp.resource)));
    }
    assert!(dom.contains("verifier checkout-error-rate"));
    assert!(dom.contains("RTO"), "RTO is marked");
    assert!(report.rto_ms.is_some(), "a finished rollback has an RTO");
    assert!(
        dom.contains("(target 5.0 s: met)"),
        "the RTO against its target: {dom}"
    );
    // Every record of the timeline is in the page.
    for t in &report.timeline {
        let detail = t
            .detail
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(dom.contains(&detail), "timeline line missing: {}", t.detail);
    }
    assert!(dom.contains("Incident report"));
}
