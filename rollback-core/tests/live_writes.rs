//! Roll back the migration, not the customers' writes — on simulated resources: a
//! compensation undoes what it covers without restoring anything (the application's
//! writes stay), a restore is used only for what no compensation undoes, parity is never
//! claimed over nothing, notices say only what the plan can keep, and the report tells
//! what happened (RTO from the interruption, what a restore found).

use async_trait::async_trait;
use rollback_core::events::{Notice, NoticeKind, Notifier};
use rollback_core::journal::{Journal, MemoryJournal};
use rollback_core::report::StepState;
use rollback_core::sim::{CrashAfter, SetKey, SimWorld};
use rollback_core::{
    Context, Effect, Error, Executor, Outcome, Plan, Receipt, Result, Reversibility, Risk, Step,
    Trigger, Undo, Verdict, Verifier,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The application: each poll of this "health check" writes like a customer would (an
/// insert and an update of a key the migration never touches), and the check fails from
/// the third poll on.
struct Traffic {
    world: SimWorld,
    polls: AtomicU32,
}

#[async_trait]
impl Verifier for Traffic {
    fn id(&self) -> &str {
        "error-rate"
    }
    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        self.world.set("db", &format!("order-{n}"), "placed");
        self.world.set("db", "name", &format!("Ada v{n}"));
        Ok(Verdict::check(n < 3, format!("poll {n}")))
    }
}

#[derive(Clone, Default)]
struct Notices(Arc<Mutex<Vec<Notice>>>);

#[async_trait]
impl Notifier for Notices {
    async fn notify(&self, n: &Notice) -> std::result::Result<(), String> {
        self.0.lock().unwrap().push(n.clone());
        Ok(())
    }
}

fn seeded() -> SimWorld {
    let w = SimWorld::new();
    w.set("db", "name", "Ada");
    w.set("db", "plan", "basic");
    w
}

/// The plan: `add-tier` creates the tier (compensable: its revert removes it),
/// `fill-tier` backfills it (restore-only, but it writes only inside what add-tier creates).
fn tier_plan(w: &SimWorld, traffic: Arc<Traffic>) -> Plan {
    Plan::builder("add-tier")
        .checkpoint("db", w.checkpoint("db"))
        .step(
            "db",
            SetKey::new("add-tier", w, "db", "tier", "")
                .with_effects(vec![Effect::creates("db", Some("tier"))]),
            &[],
        )
        .step(
            "db",
            SetKey::new("fill-tier", w, "db", "tier", "gold")
                .restore_only()
                .with_effects(vec![Effect::writes("db", Some("tier"))]),
            &["add-tier"],
        )
        .trigger(
            Trigger::new(traffic)
                .every(Duration::from_millis(20))
                .threshold(1, 1),
        )
        .soak(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_backfill_of_a_new_column_is_undone_by_dropping_it_and_the_applications_writes_survive() {
    let w = seeded();
    let traffic = Arc::new(Traffic {
        world: w.clone(),
        polls: AtomicU32::new(0),
    });
    let plan = tier_plan(&w, traffic.clone());
    assert_eq!(
        plan.undo("fill-tier"),
        Some(&Undo::CompensationOf {
            steps: vec!["add-tier".into()]
        })
    );
    assert!(!plan.needs_snapshot("db"), "no undo path restores db");
    let dry = plan.dry_run().to_string();
    assert!(
        dry.contains("fill-tier is undone by the revert of add-tier"),
        "{dry}"
    );
    let notices = Notices::default();
    let report = Executor::new(MemoryJournal::new())
        .notifier(notices.clone())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(
        report.outcome,
        Outcome::RolledBack,
        "{}",
        report.to_markdown()
    );
    // The migration is gone; every write of the application's is still there.
    assert_eq!(
        w.get("db", "tier"),
        None,
        "the tier the migration added is gone"
    );
    let polls = traffic.polls.load(Ordering::SeqCst);
    assert_eq!(polls, 3);
    for n in 1..=polls {
        assert_eq!(
            w.get("db", &format!("order-{n}")).as_deref(),
            Some("placed")
        );
    }
    assert_eq!(w.get("db", "name").as_deref(), Some("Ada v3"));
    assert_eq!(w.get("db", "plan").as_deref(), Some("basic"));
    // Nothing was restored, nothing discarded; no snapshot was even taken.
    let db = &report.checkpoints[0];
    assert!(db.fingerprint_only);
    assert_eq!(db.restores, 0);
    assert_eq!(report.items_discarded, None);
    let fill = report.steps.iter().find(|s| s.id == "fill-tier").unwrap();
    assert_eq!(fill.state, StepState::UndoneByCompensation);
    // db differs from its baseline (the application wrote to it): not proven, and said.
    assert!(!report.parity_proven());
    assert_eq!(report.unproven.len(), 1, "{:?}", report.unproven);
    assert!(report.unproven[0].starts_with("db:"));
    assert!(report.to_markdown().contains("**NOT proven**"));
    // The notices promise only what the plan kept.
    let notices = notices.0.lock().unwrap().clone();
    let started = notices
        .iter()
        .find(|n| n.kind == NoticeKind::RollbackStarted)
        .unwrap();
    assert!(started.may_discard.is_empty());
    assert!(
        started
            .message
            .contains("no data written by customers is being deleted"),
        "{}",
        started.message
    );
    let finished = notices
        .iter()
        .find(|n| n.kind == NoticeKind::RollbackFinished)
        .unwrap();
    assert!(
        finished.message.contains("could not be verified back"),
        "{}",
        finished.message
    );
    assert!(
        !finished.message.contains("and db verified back"),
        "{}",
        finished.message
    );
}

/// Without writers, the same rollback is proven: compensation brings db back exactly.
#[tokio::test]
async fn a_compensated_resource_nobody_else_wrote_is_proven_without_a_restore() {
    let w = seeded();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("add-tier-quiet")
        .checkpoint("db", w.checkpoint("db"))
        .step(
            "db",
            SetKey::new("add-tier", &w, "db", "tier", "")
                .with_effects(vec![Effect::creates("db", Some("tier"))]),
            &[],
        )
        .step(
            "db",
            SetKey::new("fill-tier", &w, "db", "tier", "gold")
                .restore_only()
                .with_effects(vec![Effect::writes("db", Some("tier"))]),
            &["add-tier"],
        )
        .build()
        .unwrap();
    w.faults().fail_apply("fill-tier", 1);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(w.snapshot_state(), baseline);
    assert!(report.parity_proven(), "{}", report.to_markdown());
    assert_eq!(report.checkpoints[0].restores, 0);
}

/// A step no compensation covers is undone by a restore, which discards the
/// application's writes: the notice at the start says so instead of "no data deleted".
#[tokio::test]
async fn a_notice_never_promises_no_data_loss_when_a_restore_will_discard_writes() {
    let w = seeded();
    let traffic = Arc::new(Traffic {
        world: w.clone(),
        polls: AtomicU32::new(0),
    });
    let plan = Plan::builder("drop-plan")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::delete("drop-plan", &w, "db", "plan"), &[])
        .trigger(Trigger::new(traffic).every(Duration::from_millis(20)))
        .soak(Duration::from_secs(5))
        .build()
        .unwrap();
    assert_eq!(
        plan.undo("drop-plan"),
        Some(&Undo::Restore {
            resources: vec!["db".into()]
        })
    );
    assert!(plan.risks().contains(&Risk::RestoreDiscardsWrites {
        step: "drop-plan".into(),
        resources: vec!["db".into()]
    }));
    let notices = Notices::default();
    let report = Executor::new(MemoryJournal::new())
        .notifier(notices.clone())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(report.checkpoints[0].restores, 1);
    assert!(report.rpo_ms.is_some());
    let notices = notices.0.lock().unwrap().clone();
    let started = &notices[0];
    assert_eq!(started.kind, NoticeKind::RollbackStarted);
    assert_eq!(started.may_discard, vec!["db".to_string()]);
    assert!(
        started.message.contains("may be reverted") && !started.message.contains("no data"),
        "{}",
        started.message
    );
    let finished = &notices[1];
    // The sim's restore does not count others' writes: the notice does not claim a count.
    assert!(
        finished.message.contains("may have been reverted"),
        "{}",
        finished.message
    );
}

/// A step whose revert silently does nothing, on a resource without a checkpoint, and a
/// step that names no resource: rolled back, but parity is not claimed for either.
struct Silent {
    id: &'static str,
    touches: Vec<String>,
}

#[async_trait]
impl Step for Silent {
    fn id(&self) -> &str {
        self.id
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::Compensable
    }
    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }
    async fn apply(&self, _ctx: &Context) -> Result<Receipt> {
        Ok(Receipt::empty())
    }
    async fn revert(&self, _r: Option<&Receipt>, _ctx: &Context) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_rollback_over_resources_without_checkpoints_is_never_reported_proven() {
    let w = seeded();
    let plan = Plan::builder("no-checkpoint")
        .step(
            "app",
            Silent {
                id: "reindex",
                touches: vec!["search-index".into()],
            },
            &[],
        )
        .step(
            "app",
            Silent {
                id: "mystery",
                touches: vec![],
            },
            &["reindex"],
        )
        .step("db", SetKey::new("fails", &w, "db", "k", "v"), &["mystery"])
        .build()
        .unwrap();
    w.faults().fail_apply("fails", 1);
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert!(
        !report.parity_proven(),
        "zero checkpoints compared: not proven"
    );
    let u = report.unproven.join("\n");
    assert!(
        u.contains("search-index: changed by reindex and has no checkpoint"),
        "{u}"
    );
    assert!(u.contains("step mystery: names no resource"), "{u}");
    assert!(report.incident_skeleton().contains("NOT proven"));
}

/// After a crash, the outage counts from the interruption, not from the resume.
#[tokio::test]
async fn rto_after_a_crash_counts_from_the_interruption() {
    let w = seeded();
    let plan = Plan::builder("crash")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::delete("drop", &w, "db", "plan"), &[])
        .step("db", SetKey::new("set", &w, "db", "k", "v"), &["drop"])
        .build()
        .unwrap();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    // Dies after journaling the intent to apply `set`.
    let crashing = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 8)))
        .holder("first")
        .lease_ttl(Duration::from_millis(100));
    assert!(crashing.run(&plan).await.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let run = journal.runs().await.unwrap().remove(0);
    let report = Executor::with_journal(journal)
        .holder("second")
        .resume(&plan, &run)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    let rto = report.rto_ms.unwrap();
    assert!(rto >= 400, "RTO {rto} ms counts from the interruption");
}

/// A step that half-applies and says it did nothing: the restore another step needed
/// shows what it found.
struct HalfApplies {
    world: SimWorld,
}

#[async_trait]
impl Step for HalfApplies {
    fn id(&self) -> &str {
        "half"
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::RestoreOnly
    }
    fn touches(&self) -> Vec<String> {
        vec!["db".into()]
    }
    async fn apply(&self, _ctx: &Context) -> Result<Receipt> {
        self.world.set("db", "half-written", "yes");
        Err(Error::backend_not_applied(
            "custom",
            "gave up (it says: nothing happened)",
        ))
    }
    async fn revert(&self, _r: Option<&Receipt>, _ctx: &Context) -> Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_step_claiming_it_did_not_apply_is_shown_with_what_the_restore_found() {
    let w = seeded();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("half")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", HalfApplies { world: w.clone() }, &[])
        .capture_all_checkpoints()
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    let half = &report.steps[0];
    // Nothing applied per the journal: no restore is needed for it, and db differs.
    assert_eq!(half.state, StepState::NotApplied);
    assert_eq!(w.get("db", "half-written").as_deref(), Some("yes"));
    assert!(!report.parity_proven());
    assert!(
        report.unproven[0].starts_with("db:"),
        "{:?}",
        report.unproven
    );
    let _ = baseline;
}

/// `Error::backend` is "may have applied" unless said otherwise: a custom step's failure
/// is then undone.
#[tokio::test]
async fn a_custom_steps_backend_error_is_treated_as_maybe_applied_and_undone() {
    struct Fails(SimWorld);
    #[async_trait]
    impl Step for Fails {
        fn id(&self) -> &str {
            "fails"
        }
        fn reversibility(&self) -> Reversibility {
            Reversibility::RestoreOnly
        }
        fn touches(&self) -> Vec<String> {
            vec!["db".into()]
        }
        async fn apply(&self, _ctx: &Context) -> Result<Receipt> {
            self.0.set("db", "half-written", "yes");
            Err(Error::backend("custom", "connection reset"))
        }
        async fn revert(&self, _r: Option<&Receipt>, _ctx: &Context) -> Result<()> {
            Ok(())
        }
    }
    let w = seeded();
    let baseline = w.snapshot_state();
    let plan = Plan::builder("fails")
        .checkpoint("db", w.checkpoint("db"))
        .step("db", Fails(w.clone()), &[])
        .build()
        .unwrap();
    let report = Executor::new(MemoryJournal::new())
        .run(&plan)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(
        w.snapshot_state(),
        baseline,
        "the half-applied write was undone"
    );
    assert_eq!(report.steps[0].state, StepState::UndoneByRestore);
    assert!(report.parity_proven());
}
