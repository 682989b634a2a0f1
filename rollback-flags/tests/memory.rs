//! Simulation on the in-memory provider: transient write failures and cancellation.

use rollback_core::journal::MemoryJournal;
use rollback_core::{Executor, Outcome, Plan};
use rollback_flags::{FlagCheckpoint, FlagProvider, FlagState, MemoryProvider, StagedRollout};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn transient_write_failure_is_retried_by_the_executor_and_commits() {
    let mem = MemoryProvider::new("sim");
    mem.put("f", &FlagState::off()).await.unwrap();
    let p: Arc<dyn FlagProvider> = Arc::new(mem.clone());
    let plan = Plan::builder("retry")
        .checkpoint("flags", FlagCheckpoint::flag(p.clone(), "f"))
        .step(
            "flags",
            StagedRollout::new("roll", p.clone(), "f", &[10, 100]),
            &[],
        )
        .default_step_options(
            rollback_core::StepOptions::default().backoff(Duration::from_millis(5)),
        )
        .build()
        .unwrap();
    mem.fail_next_writes(1);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::Committed,
        "{}",
        report.to_markdown()
    );
    assert!(report.to_markdown().contains("injected write failure"));
    assert_eq!(
        mem.get("f").await.unwrap().unwrap().rollout_percent(),
        Some(100)
    );
}

#[tokio::test]
async fn cancelling_a_rollout_between_stages_rolls_it_back() {
    let mem = MemoryProvider::new("sim");
    mem.put("f", &FlagState::off()).await.unwrap();
    let p: Arc<dyn FlagProvider> = Arc::new(mem.clone());
    let plan = Plan::builder("cancel")
        .checkpoint("flags", FlagCheckpoint::flag(p.clone(), "f"))
        .step(
            "flags",
            StagedRollout::new("roll", p.clone(), "f", &[1, 10, 100])
                .pause(Duration::from_millis(300)),
            &[],
        )
        .build()
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    let report = Executor::new(MemoryJournal::new())
        .run_with_cancel(&plan, cancel)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.parity_proven());
    assert_eq!(mem.get("f").await.unwrap(), Some(FlagState::off()));
}
