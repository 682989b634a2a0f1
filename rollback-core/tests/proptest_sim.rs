//! Property tests over random plans and fault schedules: whatever fails and wherever the
//! process dies, the run ends with every resource exactly at its baseline or exactly at
//! the fully applied target, and the report says which.

use proptest::prelude::*;
use rollback_core::journal::{Journal, MemoryJournal};
use rollback_core::sim::{
    arb_faults, arb_plan, CrashAfter, FaultSchedule, HealthProbe, SimPlanSpec, SimWorld,
};
use rollback_core::{Executor, Outcome, Plan, ResumePolicy, RunReport, StepOptions, Trigger};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

type State = BTreeMap<String, BTreeMap<String, String>>;

static RUNS: AtomicU64 = AtomicU64::new(0);
static CRASH_POINTS: AtomicU64 = AtomicU64::new(0);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Build the plan with fast retries, and a failing health trigger when asked.
fn plan_for(spec: &SimPlanSpec, world: &SimWorld, faults: &FaultSchedule) -> Plan {
    rebuild(
        spec,
        world,
        faults
            .unhealthy
            .then(|| HealthProbe::new("health", world, &[0.0, 0.5])),
    )
}

fn rebuild(spec: &SimPlanSpec, world: &SimWorld, probe: Option<HealthProbe>) -> Plan {
    // SimPlanSpec::build gives the structure; add options and the trigger on top.
    let built = spec.build(world).unwrap();
    let mut b = Plan::builder("sim-plan");
    for c in built.checkpoints() {
        b = b.checkpoint(&c.component, c.checkpoint.clone());
    }
    for s in built.steps() {
        let deps: Vec<&str> = s.deps.iter().map(String::as_str).collect();
        b = b.step(&s.component, s.step.clone(), &deps);
    }
    b = b.default_step_options(
        StepOptions::default()
            .retries(2)
            .backoff(Duration::from_millis(1)),
    );
    if let Some(p) = probe {
        b = b
            .trigger(
                Trigger::new(p)
                    .every(Duration::from_millis(1))
                    .threshold(1, 1),
            )
            .soak(Duration::from_millis(20));
    }
    b.build().unwrap()
}

fn executor(journal: Arc<dyn Journal>, policy: ResumePolicy) -> Executor {
    Executor::with_journal(journal)
        .holder("sim")
        .on_resume(policy)
        .rollback_retries(4)
}

/// The invariant: baseline or target, and the report agrees.
fn check(
    report: &RunReport,
    state: &State,
    baseline: &State,
    target: &State,
) -> Result<(), TestCaseError> {
    RUNS.fetch_add(1, Ordering::Relaxed);
    match report.outcome {
        Outcome::Committed => prop_assert_eq!(state, target, "committed but not at target"),
        Outcome::RolledBack => {
            prop_assert_eq!(state, baseline, "rolled back but not at baseline");
            prop_assert!(
                report.parity_proven()
                    || report.checkpoints.iter().all(|c| c.fingerprint.is_none())
            );
        }
        other => prop_assert!(false, "run ended {other}: {}", report.to_markdown()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_plan_under_any_faults_ends_at_baseline_or_target(
        (spec, faults) in arb_plan().prop_flat_map(|p| { let n = p.steps.len(); (Just(p), arb_faults(n)) })
    ) {
        rt().block_on(async {
            let world = SimWorld::new();
            spec.seed(&world);
            let baseline = world.snapshot_state();
            let plan = plan_for(&spec, &world, &faults);
            let target = spec.target(&plan, &baseline);
            faults.install(&world);
            let report = executor(Arc::new(MemoryJournal::new()), ResumePolicy::RollBack).run(&plan).await.unwrap();
            if faults.fail_apply.is_some() || faults.unhealthy {
                prop_assert_eq!(report.outcome, Outcome::RolledBack);
            }
            check(&report, &world.snapshot_state(), &baseline, &target)
        })?;
    }

    #[test]
    fn a_crash_after_every_journal_record_then_resume_ends_at_baseline_or_target(
        (spec, faults) in arb_plan().prop_flat_map(|p| { let n = p.steps.len(); (Just(p), arb_faults(n)) }),
        roll_forward in any::<bool>(),
        second_crash in prop::option::of(0u64..40),
    ) {
        let policy = if roll_forward { ResumePolicy::RollForward } else { ResumePolicy::RollBack };
        // How many records does an uninterrupted run write?
        let total = rt().block_on(async {
            let world = SimWorld::new();
            spec.seed(&world);
            let plan = plan_for(&spec, &world, &faults);
            faults.install(&world);
            let journal = Arc::new(MemoryJournal::new());
            executor(journal.clone(), policy).run(&plan).await.unwrap();
            let run = journal.runs().await.unwrap().remove(0);
            journal.records(&run).await.unwrap().len() as u64
        });
        for crash_after in 0..total {
            CRASH_POINTS.fetch_add(1, Ordering::Relaxed);
            rt().block_on(async {
                let world = SimWorld::new();
                spec.seed(&world);
                let baseline = world.snapshot_state();
                let plan = plan_for(&spec, &world, &faults);
                let target = spec.target(&plan, &baseline);
                faults.install(&world);
                let journal = Arc::new(MemoryJournal::new());
                let crashing = executor(Arc::new(CrashAfter::new(journal.clone(), crash_after)), policy);
                prop_assert!(crashing.run(&plan).await.is_err(), "the crash must stop the run");
                let Some(run_id) = journal.runs().await.unwrap().pop() else {
                    // Crashed before the first record: nothing ran, nothing changed.
                    prop_assert_eq!(world.snapshot_state(), baseline);
                    return Ok(());
                };
                if let Some(n) = second_crash {
                    // The resuming process dies too; a third one finishes.
                    let again = executor(Arc::new(CrashAfter::new(journal.clone(), n)), policy);
                    let _ = again.resume(&plan, &run_id).await;
                }
                let report = executor(journal.clone(), policy).resume(&plan, &run_id).await.unwrap();
                check(&report, &world.snapshot_state(), &baseline, &target)
            })?;
        }
    }
}

#[test]
fn zz_report_case_counts() {
    // Runs last in name order within this binary only when run single-threaded; the
    // counts are printed for the record and asserted loosely.
    eprintln!(
        "proptest_sim: {} runs checked, {} crash points",
        RUNS.load(Ordering::Relaxed),
        CRASH_POINTS.load(Ordering::Relaxed)
    );
}
