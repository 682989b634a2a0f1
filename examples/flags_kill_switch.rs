//! A canary cutover behind feature flags, with a kill switch and automatic rollback.
//!
//! `new-checkout` goes 1 % → 10 % → 50 % → 100 % with a health check (the checkout error
//! rate an application would report, measured through the OpenFeature bridge) after each
//! stage; once the new path serves everyone, a kill switch turns `legacy-checkout` off.
//! A soak window keeps watching the error rate. Any failure rolls everything back: the
//! kill switch is reverted (legacy on again) and the new path is turned off at once.
//!
//! ```text
//! cargo run -p examples --example flags_kill_switch               # healthy: committed
//! cargo run -p examples --example flags_kill_switch -- --fail     # errors at 10 %: rolled back
//! cargo run -p examples --example flags_kill_switch -- --fail-late  # errors after the cutover
//! ```
//!
//! Flags live in a flagd-format file under `target/flags_kill_switch/` by default; with
//! `ROLLBACK_TEST_UNLEASH_URL` (or `UNLEASH_URL`) and `ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN`
//! (or `UNLEASH_ADMIN_TOKEN`) set, they live in Unleash (project `default`, environment
//! `development`).

use rollback_core::events::RunEvent;
use rollback_core::journal::FileJournal;
use rollback_core::{Context, Executor, Plan, Trigger, Verdict, Verifier};
use rollback_flags::open_feature::{EvaluationContext, OpenFeature};
use rollback_flags::{
    Expect, FileProvider, FlagCheckpoint, FlagProvider, FlagState, FlagsMatch, OpenFeatureBridge,
    SetFlag, StagedRollout, UnleashProvider,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const NEW: &str = "rollback-example-new-checkout";
const LEGACY: &str = "rollback-example-legacy-checkout";

/// The checkout error rate the application would report: every user the flag sends to
/// the new path fails with `new_path_errors` probability (0.2 % healthy; 30 % when the
/// new code is broken), users on the legacy path never fail.
struct CheckoutErrorRate {
    client: rollback_flags::open_feature::Client,
    broken: Arc<AtomicBool>,
    max: f64,
}

#[async_trait::async_trait]
impl Verifier for CheckoutErrorRate {
    fn id(&self) -> &str {
        "checkout-error-rate"
    }
    async fn verify(&self, _ctx: &Context) -> rollback_core::Result<Verdict> {
        let users = 200;
        let mut on_new = 0;
        for i in 0..users {
            let user = EvaluationContext::default().with_targeting_key(format!("user-{i}"));
            if self
                .client
                .get_bool_value(NEW, Some(&user), None)
                .await
                .unwrap_or(false)
            {
                on_new += 1;
            }
        }
        let share = on_new as f64 / users as f64;
        let new_path_errors = if self.broken.load(Ordering::SeqCst) {
            0.30
        } else {
            0.002
        };
        let rate = share * new_path_errors;
        Ok(Verdict::check(
            rate <= self.max,
            format!(
                "error rate {:.2}% with {:.0}% of users on the new checkout (max {:.1}%)",
                rate * 100.0,
                share * 100.0,
                self.max * 100.0
            ),
        )
        .with_value(rate))
    }
}

/// Breaks the new checkout once it serves everyone (for `--fail-late`).
struct BreakAfterCutover {
    provider: Arc<dyn FlagProvider>,
    broken: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Verifier for BreakAfterCutover {
    fn id(&self) -> &str {
        "chaos"
    }
    async fn verify(&self, _ctx: &Context) -> rollback_core::Result<Verdict> {
        let full = self
            .provider
            .get(NEW)
            .await?
            .and_then(|s| s.rollout_percent())
            == Some(100);
        if full {
            self.broken.store(true, Ordering::SeqCst);
        }
        Ok(Verdict::pass("chaos injected"))
    }
}

fn line(e: &RunEvent) -> Option<String> {
    Some(match e {
        RunEvent::CheckpointCaptured {
            resource, digest, ..
        } => {
            format!("captured {resource} ({digest})")
        }
        RunEvent::StepStarted { step, action, .. } => format!("{action:?} {step} ..."),
        RunEvent::StepFinished {
            step,
            ok,
            millis,
            error,
            ..
        } => format!(
            "  {step}: {} in {millis} ms{}",
            if *ok { "ok" } else { "FAILED" },
            error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
        RunEvent::Progress {
            source,
            done,
            total,
            unit,
        } => {
            format!("  {source}: {done}/{} {unit}", total.unwrap_or(0))
        }
        RunEvent::Verdict {
            verifier,
            phase,
            status,
            summary,
        } => {
            format!("  verdict {verifier} [{phase}]: {status:?}: {summary}")
        }
        RunEvent::RollbackStarted { reason, .. } => format!("ROLLBACK: {reason}"),
        RunEvent::CheckpointRestored {
            resource, method, ..
        } => {
            format!("restored {resource} by {method}")
        }
        RunEvent::Parity { resource, ok } => format!("parity of {resource}: {ok}"),
        RunEvent::RunFinished { outcome } => format!("finished: {outcome}"),
        _ => return None,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fail_early = args.iter().any(|a| a == "--fail");
    let fail_late = args.iter().any(|a| a == "--fail-late");

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/flags_kill_switch");
    std::fs::create_dir_all(&dir)?;
    let provider: Arc<dyn FlagProvider> = match UnleashProvider::from_env("default", "development")?
    {
        Some(unleash) => {
            println!("flags: Unleash {unleash:?}");
            Arc::new(unleash)
        }
        None => {
            let file = FileProvider::new(dir.join("flags.json")).with_scope("example");
            println!("flags: file {}", file.path().display());
            Arc::new(file)
        }
    };

    // Before the migration: legacy serves everyone, the new checkout is off.
    let mut new_off = FlagState::rollout(NEW, 0);
    new_off.enabled = false;
    provider.put(NEW, &new_off).await?;
    provider
        .put(LEGACY, &FlagState::rollout(LEGACY, 100))
        .await?;

    let mut api = OpenFeature::default();
    api.set_provider(OpenFeatureBridge::new(provider.clone()))
        .await;
    let broken = Arc::new(AtomicBool::new(fail_early));
    let health = Arc::new(CheckoutErrorRate {
        client: api.create_client(),
        broken: broken.clone(),
        max: 0.02,
    });

    let mut plan = Plan::builder("checkout-cutover")
        .checkpoint("flags", FlagCheckpoint::flag(provider.clone(), NEW))
        .checkpoint("flags", FlagCheckpoint::flag(provider.clone(), LEGACY))
        .step(
            "flags",
            StagedRollout::new("canary", provider.clone(), NEW, &[1, 10, 50, 100])
                .health_check(health.clone())
                .pause(Duration::from_millis(200)),
            &[],
        )
        .step(
            "flags",
            SetFlag::kill_switch("retire-legacy", provider.clone(), LEGACY),
            &["canary"],
        )
        .verify_final(
            FlagsMatch::new("cutover-complete", provider.clone())
                .flag(NEW, Expect::rollout(100))
                .flag(LEGACY, Expect::off()),
        )
        .soak(Duration::from_secs(1))
        .trigger(Trigger::new(health).every(Duration::from_millis(250)));
    if fail_late {
        // Breaks the new checkout once it serves everyone; the soak trigger sees it.
        plan = plan.verify_final(BreakAfterCutover {
            provider: provider.clone(),
            broken,
        });
    }
    let plan = plan.build()?;
    println!("\n{}", plan.dry_run());

    let executor = Executor::new(FileJournal::open(dir.join("journal"))?);
    let mut events = executor.subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if let Some(l) = line(&e) {
                println!("{l}");
            }
            if matches!(e, RunEvent::RunFinished { .. }) {
                break;
            }
        }
    });
    let report = executor.run(&plan).await?;
    let _ = printer.await;

    let user = EvaluationContext::default().with_targeting_key("user-1");
    let client = api.create_client();
    println!(
        "\nuser-1 now gets: new checkout {}, legacy checkout {}",
        client
            .get_bool_value(NEW, Some(&user), None)
            .await
            .unwrap_or(false),
        client
            .get_bool_value(LEGACY, Some(&user), None)
            .await
            .unwrap_or(false),
    );
    println!("\n{}", report.to_markdown());
    Ok(())
}
