//! Executor behaviour on simulated resources: apply, rollback, partial rollback,
//! retries, uncertain outcomes, triggers, cancellation, resume, rehearsal, reports.

use rollback_core::events::{Notice, Notifier, RunEvent};
use rollback_core::journal::{FileJournal, Journal, MemoryJournal};
use rollback_core::report::StepState;
use rollback_core::sim::{CrashAfter, HealthProbe, KeyEquals, SendMessage, SetKey, SimWorld};
use rollback_core::{
    ConsoleProgress, Error, Executor, Outcome, Plan, PlanError, Risk, RollbackScope,
    SnapshotRetention, StepOptions, Trigger,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn world() -> SimWorld {
    let w = SimWorld::new();
    w.set("db", "schema", "v1");
    w.set("db", "name", "Ada Lovelace");
    w.set("store", "v1/a", "A");
    w.set("flags", "new_ui", "off");
    w
}

/// db: two steps; store: one step after db; flags: one step after store.
fn cutover(w: &SimWorld) -> Plan {
    cutover_builder(w).build().unwrap()
}

/// The same plan with every checkpoint captured in full: compensations alone undo its
/// steps, so by default its checkpoints are only fingerprinted.
fn cutover_full(w: &SimWorld) -> Plan {
    cutover_builder(w)
        .capture_all_checkpoints()
        .build()
        .unwrap()
}

fn cutover_builder(w: &SimWorld) -> rollback_core::PlanBuilder {
    Plan::builder("cutover")
        .checkpoint("database", w.checkpoint("db"))
        .checkpoint("storage", w.checkpoint("store"))
        .checkpoint("flags", w.checkpoint("flags"))
        .step(
            "database",
            SetKey::new("db-schema", w, "db", "schema", "v2"),
            &[],
        )
        .step(
            "database",
            SetKey::new("db-first", w, "db", "first", "Ada"),
            &["db-schema"],
        )
        .step(
            "storage",
            SetKey::new("store-move", w, "store", "v2/a", "A"),
            &[],
        )
        .step(
            "flags",
            SetKey::new("flag-on", w, "flags", "new_ui", "on"),
            &["store-move"],
        )
}

#[tokio::test]
async fn committed_run_applies_every_step_and_reports_it() {
    let w = world();
    let plan = cutover(&w);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(w.get("db", "schema").as_deref(), Some("v2"));
    assert_eq!(w.get("flags", "new_ui").as_deref(), Some("on"));
    assert!(report.steps.iter().all(|s| s.state == StepState::Applied));
    assert_eq!(report.rto_ms, None);
    assert!(report.to_markdown().contains("**committed**"));
}

#[tokio::test]
async fn failed_step_rolls_back_whole_plan_and_proves_parity() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = cutover(&w);
    w.faults().fail_apply("flag-on", 1);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report.parity_proven());
    assert_eq!(w.snapshot_state(), baseline);
    assert_eq!(report.rpo_ms, Some(0), "compensations lose no writes");
    assert!(report.rto_ms.is_some());
    assert_eq!(report.undone().len(), 3);
    assert!(report
        .rollback_reason
        .as_deref()
        .unwrap()
        .contains("flag-on"));
}

#[tokio::test]
async fn component_scope_keeps_the_independent_database_change() {
    let w = world();
    let plan = cutover(&w);
    w.faults().fail_apply("flag-on", 1);
    let report = Executor::new(MemoryJournal::new())
        .scope(RollbackScope::Component)
        .run(&plan)
        .await
        .unwrap();
    // flags failed: flags has no dependents; storage is not rolled back since flags depends
    // on storage, not the other way round.
    assert_eq!(report.outcome, Outcome::PartiallyRolledBack);
    assert_eq!(w.get("db", "schema").as_deref(), Some("v2"));
    assert_eq!(w.get("store", "v2/a").as_deref(), Some("A"));
    assert_eq!(w.get("flags", "new_ui").as_deref(), Some("off"));
    assert_eq!(report.kept(), vec!["db-schema", "db-first", "store-move"]);
}

#[tokio::test]
async fn storage_failure_rolls_back_storage_and_the_flag_that_depends_on_it() {
    let w = world();
    let plan = Plan::builder("cutover")
        .checkpoint("database", w.checkpoint("db"))
        .checkpoint("storage", w.checkpoint("store"))
        .checkpoint("flags", w.checkpoint("flags"))
        .step(
            "database",
            SetKey::new("db-schema", &w, "db", "schema", "v2"),
            &[],
        )
        .step(
            "storage",
            SetKey::new("store-move", &w, "store", "v2/a", "A"),
            &[],
        )
        .step(
            "flags",
            SetKey::new("flag-on", &w, "flags", "new_ui", "on"),
            &["store-move"],
        )
        .verify_after(
            "flag-on",
            KeyEquals::new("store-ok", &w, "store", "v2/a", Some("B")),
        )
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .scope(RollbackScope::Component)
        .run(&plan)
        .await
        .unwrap();
    // The failing verifier is attached to flag-on, whose component is flags: scope = flags.
    assert_eq!(report.outcome, Outcome::PartiallyRolledBack);
    assert_eq!(w.get("flags", "new_ui").as_deref(), Some("off"));

    let w = world();
    let plan = Plan::builder("cutover2")
        .checkpoint("database", w.checkpoint("db"))
        .checkpoint("storage", w.checkpoint("store"))
        .checkpoint("flags", w.checkpoint("flags"))
        .step(
            "database",
            SetKey::new("db-schema", &w, "db", "schema", "v2"),
            &[],
        )
        .step(
            "storage",
            SetKey::new("store-move", &w, "store", "v2/a", "A"),
            &[],
        )
        .step(
            "flags",
            SetKey::new("flag-on", &w, "flags", "new_ui", "on"),
            &["store-move"],
        )
        .step(
            "storage",
            SetKey::new("store-cleanup", &w, "store", "v1/a", "gone"),
            &["flag-on"],
        )
        .verify_after(
            "db-schema",
            KeyEquals::new("schema-v2", &w, "db", "schema", Some("v2")),
        )
        .build()
        .unwrap();
    w.faults().fail_apply("store-cleanup", 1);
    let report = Executor::new(MemoryJournal::new())
        .scope(RollbackScope::Component)
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::PartiallyRolledBack);
    assert_eq!(
        w.get("db", "schema").as_deref(),
        Some("v2"),
        "database change kept"
    );
    assert_eq!(w.get("store", "v2/a"), None, "storage undone");
    assert_eq!(
        w.get("flags", "new_ui").as_deref(),
        Some("off"),
        "dependent flag undone"
    );
    assert_eq!(report.kept(), vec!["db-schema"]);
    assert!(report.parity_proven());
    assert_eq!(
        report.kept_verified(),
        Some(true),
        "the kept database step is re-verified"
    );
}

#[tokio::test]
async fn transient_apply_errors_are_retried_with_backoff() {
    let w = world();
    let plan = Plan::builder("retry")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .default_step_options(
            StepOptions::default()
                .retries(3)
                .backoff(Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    w.faults().transient_apply("s", 2);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(report.steps[0].apply_attempts, 3);
}

#[tokio::test]
async fn uncertain_apply_is_treated_as_applied_and_reverted() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("uncertain")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .default_step_options(StepOptions::default().retries(0))
        .build()
        .unwrap();
    w.faults().uncertain_apply("s", 1);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(report.steps[0].state, StepState::Reverted);
    assert_eq!(w.snapshot_state(), baseline);
}

#[tokio::test]
async fn revert_failures_are_retried_then_fall_back_to_the_checkpoint() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = cutover_full(&w);
    w.faults()
        .fail_apply("flag-on", 1)
        .fail_revert("store-move", 100);
    let report = Executor::new(MemoryJournal::new())
        .rollback_retries(2)
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert_eq!(w.snapshot_state(), baseline);
    let store = report
        .checkpoints
        .iter()
        .find(|c| c.resource == "store")
        .unwrap();
    assert_eq!(store.restore_method.as_deref(), Some("copy"));
    assert_eq!(
        report
            .steps
            .iter()
            .find(|s| s.id == "store-move")
            .unwrap()
            .state,
        StepState::UndoneByRestore
    );
    assert!(report.rpo_ms.is_some());
}

#[tokio::test]
async fn rollback_that_cannot_finish_names_what_is_left_and_resume_finishes_it() {
    let w = world();
    let baseline = w.snapshot_state();
    let journal = Arc::new(MemoryJournal::new());
    let plan = Plan::builder("stuck")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("a", &w, "db", "schema", "v2"), &[])
        .step("other", SetKey::new("b", &w, "elsewhere", "k", "v"), &["a"])
        .step("db", SetKey::new("c", &w, "db", "x", "y"), &["b"])
        .build()
        .unwrap();
    // b touches an uncovered resource: a failing revert of b cannot fall back to a restore.
    w.faults().fail_apply("c", 1).fail_revert("b", 3);
    let ex = Executor::with_journal(journal.clone())
        .holder("ops")
        .rollback_retries(1);
    let report = ex.run(&plan).await.unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RollbackFailed,
        "{}",
        report.to_markdown()
    );
    assert!(
        report.remaining.iter().any(|r| r.contains("step b")),
        "{:?}",
        report.remaining
    );
    assert!(report.to_markdown().contains("Left undone"));
    let report = ex.resume(&plan, &report.run_id).await.unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert_eq!(w.snapshot_state(), baseline);
    assert_eq!(report.resumes, 1);
}

#[tokio::test]
async fn failing_post_step_verifier_rolls_back() {
    let w = world();
    let plan = Plan::builder("verify")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .verify_after(
            "s",
            KeyEquals::new("schema-is-v3", &w, "db", "schema", Some("v3")),
        )
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(report.verdicts.len(), 1);
    assert_eq!(report.verdicts[0].verdict.evidence["actual"], "v2");
}

#[tokio::test]
async fn failing_precondition_changes_nothing() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("pre")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .precondition(KeyEquals::new("on-v0", &w, "db", "schema", Some("v0")))
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report
        .steps
        .iter()
        .all(|s| s.state == StepState::NotApplied));
    assert_eq!(w.snapshot_state(), baseline);
}

#[tokio::test]
async fn health_trigger_breach_during_soak_rolls_back_by_itself() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("soak")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .trigger(
            Trigger::new(HealthProbe::new(
                "error-rate",
                &w,
                &[0.0, 0.01, 0.2, 0.3, 0.4],
            ))
            .every(Duration::from_millis(5))
            .threshold(2, 3),
        )
        .soak(Duration::from_secs(5))
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report
        .rollback_reason
        .as_deref()
        .unwrap()
        .contains("error-rate"));
    assert_eq!(
        report.verdicts.len(),
        4,
        "breach on the 4th poll (2 of the last 3 failed)"
    );
    assert_eq!(w.snapshot_state(), baseline);
}

#[tokio::test]
async fn healthy_soak_commits() {
    let w = world();
    let plan = Plan::builder("soak-ok")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .trigger(
            Trigger::new(HealthProbe::new("error-rate", &w, &[0.0]))
                .every(Duration::from_millis(10)),
        )
        .soak(Duration::from_millis(60))
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert!(report.verdicts.len() >= 3);
}

#[tokio::test]
async fn cancellation_starts_rollback_and_never_abandons_applied_steps() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = cutover(&w);
    w.faults()
        .slow_apply("db-first", Duration::from_millis(200));
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c2.cancel();
    });
    let report = Executor::new(MemoryJournal::new())
        .run_with_cancel(&plan, cancel)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(report.rollback_reason.as_deref(), Some("cancelled"));
    assert_eq!(w.snapshot_state(), baseline);
}

#[tokio::test]
async fn step_timeout_counts_as_uncertain_and_is_reverted() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("timeout")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("slow", &w, "db", "schema", "v2"), &[])
        .step_options(
            "slow",
            StepOptions::default()
                .timeout(Duration::from_millis(20))
                .retries(0),
        )
        .build()
        .unwrap();
    w.faults().slow_apply("slow", Duration::from_millis(500));
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report.steps[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("timed out"));
    assert_eq!(w.snapshot_state(), baseline);
}

#[tokio::test]
async fn restore_only_step_is_undone_by_its_checkpoint_and_rpo_is_reported() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("drop")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::delete("drop-name", &w, "db", "name"), &[])
        .step(
            "db",
            SetKey::new("after", &w, "db", "schema", "v2"),
            &["drop-name"],
        )
        .build()
        .unwrap();
    w.faults().fail_apply("after", 1);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(w.snapshot_state(), baseline);
    assert_eq!(report.steps[0].state, StepState::UndoneByRestore);
    assert!(report.rpo_ms.is_some());
    assert!(report.checkpoints[0].restore_method.is_some());
}

#[test]
fn plan_refuses_restore_only_step_without_checkpoint() {
    let w = world();
    let err = Plan::builder("p")
        .step("db", SetKey::delete("drop", &w, "db", "name"), &[])
        .build()
        .unwrap_err();
    assert!(
        matches!(err, PlanError::Uncovered { ref step, .. } if step == "drop"),
        "{err}"
    );
}

#[test]
fn plan_refuses_unapproved_irreversible_step_and_accepts_approved_one() {
    let w = world();
    let err = Plan::builder("p")
        .step("mail", SendMessage::new("email", &w, "hi"), &[])
        .build()
        .unwrap_err();
    assert!(matches!(err, PlanError::UnapprovedIrreversible { ref step, .. } if step == "email"));
    let plan = Plan::builder("p")
        .step("mail", SendMessage::new("email", &w, "hi"), &[])
        .approve_irreversible("email", "customers must be told")
        .build()
        .unwrap();
    assert!(plan.dry_run().to_string().contains("IRREVERSIBLE"));
}

#[test]
fn plan_refuses_cycles_naming_them() {
    let w = world();
    let err = Plan::builder("p")
        .step("c", SetKey::new("a", &w, "x", "k", "1"), &["c"])
        .step("c", SetKey::new("b", &w, "x", "k", "2"), &["a"])
        .step("c", SetKey::new("c", &w, "x", "k", "3"), &["b"])
        .build()
        .unwrap_err();
    match err {
        PlanError::Cycle { cycle, .. } => {
            assert_eq!(cycle.len(), 4, "{cycle:?}");
            assert_eq!(cycle.first(), cycle.last());
        }
        other => panic!("expected a cycle, got {other}"),
    }
}

#[test]
fn plan_refuses_duplicates_and_unknown_dependencies() {
    let w = world();
    let dup = Plan::builder("p")
        .step("c", SetKey::new("a", &w, "x", "k", "1"), &[])
        .step("c", SetKey::new("a", &w, "x", "k", "2"), &[])
        .build()
        .unwrap_err();
    assert!(matches!(dup, PlanError::DuplicateStep { .. }));
    let unknown = Plan::builder("p")
        .step("c", SetKey::new("a", &w, "x", "k", "1"), &["nope"])
        .build()
        .unwrap_err();
    assert!(
        matches!(unknown, PlanError::UnknownDependency { ref dependency, .. } if dependency == "nope")
    );
    let dupcp = Plan::builder("p")
        .checkpoint("c", w.checkpoint("x"))
        .checkpoint("c", w.checkpoint("x"))
        .step("c", SetKey::new("a", &w, "x", "k", "1"), &[])
        .build()
        .unwrap_err();
    assert!(matches!(dupcp, PlanError::DuplicateCheckpoint { .. }));
}

#[test]
fn plan_digest_changes_with_the_declared_spec() {
    let w = world();
    let a = Plan::builder("p")
        .step("c", SetKey::new("a", &w, "x", "k", "1"), &[])
        .build()
        .unwrap();
    let b = Plan::builder("p")
        .step("c", SetKey::new("a", &w, "x", "k", "1"), &[])
        .build()
        .unwrap();
    let c = Plan::builder("p")
        .step("c", SetKey::new("a", &w, "x", "k", "2"), &[])
        .build()
        .unwrap();
    assert_eq!(a.digest(), b.digest());
    assert_ne!(a.digest(), c.digest());
}

#[test]
fn dry_run_lists_apply_order_and_rollback_path_with_reversibility() {
    let w = world();
    let plan = cutover(&w);
    let dry = plan.dry_run();
    let order: Vec<&str> = dry.apply.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        order,
        vec!["db-schema", "db-first", "store-move", "flag-on"]
    );
    assert_eq!(dry.rollback[0], "revert flag-on (own compensation)");
    let text = dry.to_string();
    assert!(text.contains("compensable"));
    assert!(text.contains("prove parity of db"));
}

#[tokio::test]
async fn resume_refuses_a_different_plan() {
    let w = world();
    let journal = Arc::new(MemoryJournal::new());
    let plan = cutover(&w);
    let crashing =
        Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 7))).holder("h");
    assert!(crashing.run(&plan).await.is_err());
    let run_id = journal.runs().await.unwrap().remove(0);
    let other = Plan::builder("cutover")
        .step("x", SetKey::new("x", &w, "x", "k", "v"), &[])
        .build()
        .unwrap();
    let err = Executor::with_journal(journal.clone())
        .holder("h")
        .resume(&other, &run_id)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PlanMismatch { .. }), "{err}");
}

#[tokio::test]
async fn a_live_lease_stops_a_second_runner_and_an_expired_one_is_taken_over() {
    let w = world();
    let journal = Arc::new(MemoryJournal::new());
    let plan = cutover(&w);
    journal
        .acquire_lease("cutover", "other-host", Duration::from_secs(60))
        .await
        .unwrap();
    let err = Executor::with_journal(journal.clone())
        .run(&plan)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseHeld { ref holder, .. } if holder == "other-host"));

    journal
        .acquire_lease("cutover", "other-host", Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = Executor::with_journal(journal.clone())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(report.lease_takeovers.len(), 1, "the takeover is journaled");
    assert!(report.lease_takeovers[0].contains("other-host"));
}

#[tokio::test]
async fn rehearsal_applies_rolls_back_proves_parity_and_applies_again() {
    let w = world();
    let plan = cutover(&w);
    let r = Executor::new(MemoryJournal::new())
        .rehearse(&plan)
        .await
        .unwrap();
    assert!(r.passed(), "{}", r.rehearsal.to_markdown());
    assert_eq!(r.rehearsal.outcome, Outcome::RolledBack);
    assert_eq!(w.get("flags", "new_ui").as_deref(), Some("on"));
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Notice>>>);

#[async_trait::async_trait]
impl Notifier for Recorder {
    async fn notify(&self, notice: &Notice) -> Result<(), String> {
        self.0.lock().unwrap().push(notice.clone());
        Ok(())
    }
}

#[tokio::test]
async fn notifier_and_event_stream_see_the_rollback() {
    let w = world();
    let plan = cutover(&w);
    w.faults().fail_apply("store-move", 1);
    let rec = Recorder::default();
    let ex = Executor::new(MemoryJournal::new()).notifier(rec.clone());
    let mut events = ex.subscribe();
    let report = ex.run(&plan).await.unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    let notices = rec.0.lock().unwrap().clone();
    assert_eq!(notices.len(), 2);
    assert!(notices[0].message.starts_with("Investigating"));
    assert!(notices[1].message.starts_with("Resolved"));
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    // Every event names its run, not only the first.
    assert!(seen.len() > 5, "{seen:?}");
    assert!(seen.iter().all(|e| e.run_id == report.run_id), "{seen:?}");
    assert!(seen
        .iter()
        .any(|e| matches!(e.event, RunEvent::RollbackStarted { .. })));
    assert!(seen
        .iter()
        .any(|e| matches!(e.event, RunEvent::Parity { ok: true, .. })));
    assert!(matches!(
        seen.last().map(|e| &e.event),
        Some(RunEvent::RunFinished { .. })
    ));
    // The console renderer turns them into lines a person reads: no debug formatting.
    let mut console = ConsoleProgress::new(Vec::new()).without_run_ids();
    for e in &seen {
        console.render(e).unwrap();
    }
    let text = String::from_utf8(console.into_inner()).unwrap();
    assert!(
        text.contains("ROLLBACK started: step store-move failed"),
        "{text}"
    );
    assert!(
        text.contains("parity of db with its baseline: proven"),
        "{text}"
    );
    assert!(text.ends_with("run finished: rolled_back\n"), "{text}");
    assert!(!text.contains('{') && !text.contains("Some("), "{text}");
}

#[tokio::test]
async fn report_round_trips_through_json_and_markdown_has_incident_skeleton() {
    let w = world();
    let plan = cutover(&w);
    w.faults().fail_apply("db-first", 1);
    let dir = tempfile::tempdir().unwrap();
    let ex = Executor::new(FileJournal::open(dir.path()).unwrap());
    let report = ex.run(&plan).await.unwrap();
    let back: rollback_core::RunReport = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(back, report);
    let md = report.to_markdown();
    for section in [
        "## Steps",
        "## Checkpoints",
        "## Verdicts",
        "## Timeline",
        "Incident report",
        "Root cause",
        "RTO",
    ] {
        assert!(md.contains(section), "missing {section}");
    }
    // The report rebuilt from the journal alone is the same.
    assert_eq!(ex.report(&plan, &report.run_id).await.unwrap(), report);
}

#[tokio::test]
async fn restore_refuses_a_corrupted_snapshot_and_rollback_fails_explicitly() {
    let w = world();
    let journal = Arc::new(MemoryJournal::new());
    let plan = Plan::builder("corrupt")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::delete("drop", &w, "db", "name"), &[])
        .step("db", SetKey::new("fail", &w, "db", "x", "1"), &["drop"])
        .build()
        .unwrap();
    w.faults()
        .fail_apply("fail", 1)
        .slow_apply("fail", Duration::from_millis(50));
    // Corrupt the snapshot while the second step runs.
    let ex = Executor::with_journal(journal.clone());
    let mut events = ex.subscribe();
    let w2 = w.clone();
    let j2 = journal.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if matches!(e.event, RunEvent::StepStarted { ref step, .. } if step == "fail") {
                let run = j2.runs().await.unwrap().remove(0);
                for r in j2.records(&run).await.unwrap() {
                    if let rollback_core::journal::Entry::Captured { snapshot, .. } = r.entry {
                        w2.dangerous_corrupt_snapshot(&snapshot.id);
                    }
                }
                break;
            }
        }
    });
    let report = ex.run(&plan).await.unwrap();
    watcher.await.unwrap();
    assert_eq!(report.outcome, Outcome::RollbackFailed);
    assert!(
        report.remaining.iter().any(|r| r.contains("checkpoint db")),
        "{:?}",
        report.remaining
    );
    assert!(report
        .timeline
        .iter()
        .any(|t| t.detail.contains("does not match its digest")));
}

#[tokio::test]
async fn a_new_run_is_refused_while_an_interrupted_run_of_the_plan_is_unfinished() {
    let w = world();
    let baseline = w.snapshot_state();
    let journal = Arc::new(MemoryJournal::new());
    let plan = cutover(&w);
    let crashing =
        Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 9))).holder("h");
    assert!(crashing.run(&plan).await.is_err());
    let ex = Executor::with_journal(journal.clone()).holder("h");
    let open = ex.unfinished(&plan).await.unwrap();
    assert_eq!(open.len(), 1);
    let err = ex.run(&plan).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict { ref message } if message.contains(&open[0])),
        "{err}"
    );
    let report = ex.resume(&plan, &open[0]).await.unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(w.snapshot_state(), baseline);
    assert!(ex.unfinished(&plan).await.unwrap().is_empty());
    assert!(ex.run(&plan).await.unwrap().is_committed());
}

/// A journal that answers `runs_of_plan` and `open_runs_of_plan` the trait's default
/// way, reading every run's records: what the journals' indexes must agree with.
struct ReadsEveryRun(Arc<dyn Journal>);

#[async_trait::async_trait]
impl Journal for ReadsEveryRun {
    async fn append(
        &self,
        run_id: &str,
        entry: &rollback_core::journal::Entry,
        epoch: u64,
    ) -> rollback_core::Result<rollback_core::journal::Record> {
        self.0.append(run_id, entry, epoch).await
    }
    async fn records(
        &self,
        run_id: &str,
    ) -> rollback_core::Result<Vec<rollback_core::journal::Record>> {
        self.0.records(run_id).await
    }
    async fn runs(&self) -> rollback_core::Result<Vec<String>> {
        self.0.runs().await
    }
    async fn acquire_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> rollback_core::Result<rollback_core::journal::Lease> {
        self.0.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> rollback_core::Result<()> {
        self.0.release_lease(key, holder).await
    }
}

/// `unfinished` from `journal`'s index, checked against reading every run.
async fn unfinished_agree(journal: &Arc<dyn Journal>, plan: &Plan) -> Vec<String> {
    let indexed = Executor::with_journal(journal.clone())
        .unfinished(plan)
        .await
        .unwrap();
    let read = Executor::with_journal(Arc::new(ReadsEveryRun(journal.clone())))
        .unfinished(plan)
        .await
        .unwrap();
    assert_eq!(indexed, read, "the index and a read of every run disagree");
    let mut all = journal.runs_of_plan(plan.name()).await.unwrap();
    let mut all_read = ReadsEveryRun(journal.clone())
        .runs_of_plan(plan.name())
        .await
        .unwrap();
    all.sort();
    all_read.sort();
    assert_eq!(
        all, all_read,
        "runs_of_plan: the index and a read of every run disagree"
    );
    indexed
}

/// Crash a run after every record count in turn, in a journal that keeps every earlier
/// run: after each crash the only unfinished run is the crashed one (as reading every run
/// says), resume ends it at the baseline, and then none is unfinished.
async fn crash_at_every_record_count_then_resume(
    journal: Arc<dyn Journal>,
    fresh: impl Fn() -> Arc<dyn Journal>,
) {
    let w = world();
    let plan = cutover(&w);
    let ex = Executor::with_journal(journal.clone()).holder("h");
    let full = ex.run(&plan).await.unwrap();
    assert!(full.is_committed());
    let records = journal.records(&full.run_id).await.unwrap().len() as u64;
    // A run that committed, reopened and ended again (a rollback after its commit).
    let back = Executor::with_journal(journal.clone())
        .holder("h")
        .retain_snapshots(SnapshotRetention::KeepAll)
        .run(&plan)
        .await
        .unwrap();
    assert!(back.is_committed());
    let undone = Executor::with_journal(journal.clone())
        .holder("h")
        .rollback_committed(&plan, &back.run_id, "back to the baseline")
        .await
        .unwrap();
    assert_eq!(undone.outcome, Outcome::RolledBack);
    for n in 0..records {
        let crashing =
            Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), n))).holder("h");
        assert!(
            crashing.run(&plan).await.is_err(),
            "crash after {n} records"
        );
        let open = unfinished_agree(&journal, &plan).await;
        if n == 0 {
            // Nothing written: no run.
            assert!(open.is_empty(), "{open:?}");
            continue;
        }
        assert_eq!(open.len(), 1, "crash after {n} records: {open:?}");
        // A process that never saw this journal gives the same answer.
        assert_eq!(unfinished_agree(&fresh(), &plan).await, open);
        let report = ex.resume(&plan, &open[0]).await.unwrap();
        assert_eq!(
            report.outcome,
            Outcome::RolledBack,
            "crash after {n} records"
        );
        assert!(report.parity_proven(), "crash after {n} records");
        assert!(unfinished_agree(&journal, &plan).await.is_empty());
        assert!(unfinished_agree(&fresh(), &plan).await.is_empty());
    }
    assert!(ex.run(&plan).await.unwrap().is_committed());
    assert!(unfinished_agree(&journal, &plan).await.is_empty());
}

#[tokio::test]
async fn the_memory_journal_names_the_crashed_run_unfinished_after_a_crash_at_every_record() {
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let same = journal.clone();
    crash_at_every_record_count_then_resume(journal, move || same.clone()).await;
}

#[tokio::test]
async fn the_file_journal_names_the_crashed_run_unfinished_after_a_crash_at_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let journal: Arc<dyn Journal> = Arc::new(FileJournal::open(dir.path()).unwrap());
    let path = dir.path().to_path_buf();
    crash_at_every_record_count_then_resume(journal, move || {
        Arc::new(FileJournal::open(&path).unwrap())
    })
    .await;
}

#[tokio::test]
async fn snapshots_are_released_after_commit_and_after_a_proven_rollback() {
    // Committed: every captured snapshot released, journaled and reported.
    let w = world();
    let plan = cutover_full(&w);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(w.stored_snapshots(), 0);
    assert!(report.checkpoints.iter().all(|c| c.discarded == Some(true)));
    assert!(report.to_markdown().contains("| released |"));

    // Rolled back with parity proven: released too.
    let w = world();
    let plan = cutover_full(&w);
    w.faults().fail_apply("flag-on", 1);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(w.stored_snapshots(), 0);
    assert_eq!(
        report
            .timeline
            .iter()
            .filter(|t| t.kind == "discarded")
            .count(),
        3
    );
}

#[tokio::test]
async fn keep_snapshots_leaves_them_restorable_after_the_run() {
    let w = world();
    let plan = cutover_full(&w);
    let report = Executor::new(MemoryJournal::new())
        .retain_snapshots(SnapshotRetention::KeepAll)
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(w.stored_snapshots(), 3);
    assert!(report.checkpoints.iter().all(|c| c.discarded.is_none()));
    assert!(report.to_markdown().contains("| kept |"));
}

#[tokio::test]
async fn keep_migrated_releases_only_what_a_rollback_proved_back_at_baseline() {
    // Partial rollback: flags rolled back (released), database and storage kept migrated.
    let w = world();
    let plan = cutover_full(&w);
    w.faults().fail_apply("flag-on", 1);
    let report = Executor::new(MemoryJournal::new())
        .scope(RollbackScope::Component)
        .retain_snapshots(SnapshotRetention::KeepMigrated)
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::PartiallyRolledBack);
    let released: Vec<&str> = report
        .checkpoints
        .iter()
        .filter(|c| c.discarded == Some(true))
        .map(|c| c.resource.as_str())
        .collect();
    assert_eq!(released, vec!["flags"]);
    assert_eq!(w.stored_snapshots(), 2);

    // Committed: everything stays migrated, so every snapshot is kept.
    let w = world();
    let plan = cutover_full(&w);
    let report = Executor::new(MemoryJournal::new())
        .retain_snapshots(SnapshotRetention::KeepMigrated)
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(w.stored_snapshots(), 3);
}

#[tokio::test]
async fn a_failed_release_is_reported_and_does_not_change_the_outcome() {
    let w = world();
    let plan = cutover_full(&w);
    w.faults().fail_discard("store", 1);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(
        w.stored_snapshots(),
        1,
        "the storage snapshot stays in place"
    );
    let storage = report
        .checkpoints
        .iter()
        .find(|c| c.resource == "store")
        .unwrap();
    assert_eq!(storage.discarded, Some(false));
    assert!(storage
        .discard_error
        .as_deref()
        .unwrap()
        .contains("injected discard failure"));
    assert!(report.to_markdown().contains("**release failed**"));
}

#[tokio::test]
async fn a_stopped_rollback_keeps_its_snapshots_for_resume() {
    let w = world();
    let plan = Plan::builder("stuck")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("a", &w, "db", "schema", "v2"), &[])
        .step("other", SetKey::new("b", &w, "elsewhere", "k", "v"), &["a"])
        .step("db", SetKey::new("c", &w, "db", "x", "y"), &["b"])
        .capture_all_checkpoints()
        .build()
        .unwrap();
    // b touches an uncovered resource: its failing revert stops the rollback.
    w.faults().fail_apply("c", 1).fail_revert("b", 3);
    let ex = Executor::new(MemoryJournal::new()).rollback_retries(1);
    let report = ex.run(&plan).await.unwrap();
    assert_eq!(report.outcome, Outcome::RollbackFailed);
    assert_eq!(w.stored_snapshots(), 1, "resume needs the snapshot");
    assert!(report.checkpoints.iter().all(|c| c.discarded.is_none()));
    let resumed = ex.resume(&plan, &report.run_id).await.unwrap();
    assert_eq!(resumed.outcome, Outcome::RolledBack);
    assert_eq!(w.stored_snapshots(), 0);
    assert_eq!(resumed.checkpoints[0].discarded, Some(true));
}

#[tokio::test]
async fn a_crash_after_commit_releases_the_snapshots_on_resume() {
    let w = world();
    let plan = cutover_full(&w);
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    // Find how many records a committed run writes before its first release.
    let probe = Executor::with_journal(Arc::new(MemoryJournal::new()))
        .retain_snapshots(SnapshotRetention::KeepAll)
        .run(&cutover_full(&world()))
        .await
        .unwrap();
    let until_commit = probe.timeline.len() as u64;
    let crashing = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), until_commit)))
        .holder("first")
        .lease_ttl(Duration::from_millis(200));
    assert!(
        crashing.run(&plan).await.is_err(),
        "crashes after committing"
    );
    // The first release ran; its record did not reach the journal.
    assert_eq!(w.stored_snapshots(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = journal.runs().await.unwrap();
    let report = Executor::with_journal(journal)
        .holder("second")
        .resume(&plan, &runs[0])
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(w.stored_snapshots(), 0);
    assert_eq!(w.get("flags", "new_ui").as_deref(), Some("on"));
}

#[tokio::test]
async fn a_component_rollback_that_keeps_nothing_is_a_full_rollback() {
    // The first step fails: nothing outside the failed component was applied, so
    // nothing is kept and the rollback is not "partial".
    let w = world();
    let baseline = w.snapshot_state();
    let plan = cutover(&w);
    w.faults().fail_apply("db-schema", 1);
    let report = Executor::new(MemoryJournal::new())
        .scope(RollbackScope::Component)
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert!(report.kept().is_empty());
    assert_eq!(w.snapshot_state(), baseline);
}

#[tokio::test]
async fn recovery_objectives_and_owners_reach_the_dry_run_report_and_notices() {
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<Notice>>>);
    #[async_trait::async_trait]
    impl Notifier for Seen {
        async fn notify(&self, n: &Notice) -> Result<(), String> {
            self.0.lock().unwrap().push(n.clone());
            Ok(())
        }
    }
    let w = world();
    let build = |rto: Duration| {
        Plan::builder("objectives")
            .checkpoint("database", w.checkpoint("db"))
            .step(
                "database",
                SetKey::new("schema", &w, "db", "schema", "v2"),
                &[],
            )
            .step(
                "database",
                SetKey::new("first", &w, "db", "first", "Ada"),
                &["schema"],
            )
            .rto_target(rto)
            .rpo_target(Duration::ZERO)
            .owner(rollback_core::ROLLBACK_LEAD, "dana (db on-call)")
            .owner("post-incident review", "platform team")
            .build()
            .unwrap()
    };

    let plan = build(Duration::from_secs(60));
    let dry = plan.dry_run();
    assert_eq!(dry.objectives.rto_ms, Some(60_000));
    let text = dry.to_string();
    assert!(
        text.contains("objectives: RTO 60000 ms, RPO 0 ms"),
        "{text}"
    );
    assert!(text.contains("rollback lead: dana (db on-call)"), "{text}");
    // No verifier checks these steps, and no soak trigger: the review is told so.
    assert!(plan
        .risks()
        .iter()
        .any(|r| matches!(r, Risk::Unverified { .. })));
    assert!(plan.risks().contains(&Risk::NoSoakTrigger));
    assert!(!plan.risks().contains(&Risk::NoRollbackLead));
    // The dry run prints each risk's sentence.
    assert!(
        text.contains("no soak window with a health trigger"),
        "{text}"
    );

    w.faults().fail_apply("first", 1);
    let seen = Seen::default();
    let report = Executor::new(MemoryJournal::new())
        .notifier(seen.clone())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(report.rto_met, Some(true), "{}", report.to_markdown());
    assert_eq!(report.rpo_met, Some(true), "compensations lose no writes");
    let md = report.to_markdown();
    assert!(md.contains("(target 60000 ms: met)"), "{md}");
    assert!(md.contains("_to be written by platform team_"), "{md}");
    let notices = seen.0.lock().unwrap().clone();
    assert!(!notices.is_empty());
    assert!(notices
        .iter()
        .all(
            |n| n.owners.get("rollback lead").map(String::as_str) == Some("dana (db on-call)")
                && !n.message.contains("dana")
        ));

    // A zero RTO is missed by any rollback that takes a measurable time.
    let plan = build(Duration::ZERO);
    w.faults().fail_apply("first", 1);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    if report.rto_ms.unwrap() > 0 {
        assert_eq!(report.rto_met, Some(false));
        assert!(report.to_markdown().contains("**missed**"));
    } else {
        assert_eq!(report.rto_met, Some(true), "0 ms within a 0 ms target");
    }
}

/// A step that makes its change, then panics (the effect happened; the panic says
/// nothing about it).
struct PanicsAfterApplying(SetKey);

#[async_trait::async_trait]
impl rollback_core::Step for PanicsAfterApplying {
    fn id(&self) -> &str {
        self.0.id()
    }
    fn reversibility(&self) -> rollback_core::Reversibility {
        self.0.reversibility()
    }
    fn touches(&self) -> Vec<String> {
        self.0.touches()
    }
    async fn apply(
        &self,
        ctx: &rollback_core::Context,
    ) -> rollback_core::Result<rollback_core::Receipt> {
        self.0.apply(ctx).await?;
        panic!("boom in {}", self.0.id());
    }
    async fn revert(
        &self,
        receipt: Option<&rollback_core::Receipt>,
        ctx: &rollback_core::Context,
    ) -> rollback_core::Result<()> {
        self.0.revert(receipt, ctx).await
    }
}

struct PanickingVerifier;

#[async_trait::async_trait]
impl rollback_core::Verifier for PanickingVerifier {
    fn id(&self) -> &str {
        "panics"
    }
    async fn verify(
        &self,
        _ctx: &rollback_core::Context,
    ) -> rollback_core::Result<rollback_core::Verdict> {
        panic!("the verifier's own bug")
    }
}

#[tokio::test]
async fn a_panicking_step_is_rolled_back_in_the_same_process_and_the_lease_released() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("panics")
        .checkpoint("database", w.checkpoint("db"))
        .step("database", SetKey::new("ok", &w, "db", "schema", "v2"), &[])
        .step(
            "database",
            PanicsAfterApplying(SetKey::new("bad", &w, "db", "name", "X")),
            &["ok"],
        )
        .build()
        .unwrap();
    let journal = Arc::new(MemoryJournal::new());
    let report = Executor::with_journal(journal.clone())
        .holder("a")
        .run(&plan)
        .await
        .expect("the panic does not unwind out of run()");
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(report.parity_proven());
    assert_eq!(w.snapshot_state(), baseline);
    let bad = report.steps.iter().find(|s| s.id == "bad").unwrap();
    let err = bad.last_error.as_deref().unwrap();
    assert!(
        err.contains("panicked") && err.contains("boom in bad"),
        "{err}"
    );
    assert!(report
        .rollback_reason
        .as_deref()
        .unwrap()
        .contains("boom in bad"));
    // The lease was released at once: another runner starts without waiting for its TTL.
    let again = Executor::with_journal(journal).holder("b").run(&plan).await;
    assert!(again.is_ok(), "{again:?}");
}

#[tokio::test]
async fn a_panicking_verifier_is_an_inconclusive_verdict_that_rolls_back() {
    let w = world();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("panicking-verifier")
        .checkpoint("database", w.checkpoint("db"))
        .step("database", SetKey::new("s", &w, "db", "schema", "v2"), &[])
        .verify_after("s", PanickingVerifier)
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(w.snapshot_state(), baseline);
    let v = &report.verdicts[0];
    assert_eq!(v.verdict.status, rollback_core::Status::Inconclusive);
    assert!(
        v.verdict.summary.contains("the verifier's own bug"),
        "{}",
        v.verdict.summary
    );
}

#[test]
fn plan_refuses_empty_names() {
    let w = world();
    let err = Plan::builder("")
        .step("db", SetKey::new("s", &w, "db", "k", "v"), &[])
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, PlanError::EmptyName { what, .. } if what == "plan name"),
        "{err}"
    );
    let err = Plan::builder("p")
        .step("db", SetKey::new(" ", &w, "db", "k", "v"), &[])
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, PlanError::EmptyName { what, .. } if what == "a step id"),
        "{err}"
    );
    let err = Plan::builder("p")
        .checkpoint("db", w.checkpoint(""))
        .step("db", SetKey::new("s", &w, "db", "k", "v"), &[])
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, PlanError::EmptyName { what, .. } if what == "a checkpoint resource"),
        "{err}"
    );
}

#[tokio::test]
async fn a_resume_is_cancellable_like_a_run_and_cancelling_it_rolls_back() {
    let w = world();
    let baseline = w.snapshot_state();
    let journal = Arc::new(MemoryJournal::new());
    let plan = cutover(&w);
    let crashing =
        Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 9))).holder("h");
    assert!(crashing.run(&plan).await.is_err());
    let run_id = journal.runs().await.unwrap().remove(0);
    // The policy would continue the run; the cancellation rolls it back instead.
    let cancel = CancellationToken::new();
    cancel.cancel();
    let report = Executor::with_journal(journal.clone())
        .holder("h")
        .on_resume(rollback_core::ResumePolicy::RollForward)
        .resume_with_cancel(&plan, &run_id, cancel)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    assert_eq!(
        report.rollback_reason.as_deref(),
        Some("cancelled"),
        "{}",
        report.to_markdown()
    );
    assert_eq!(w.snapshot_state(), baseline);
}
