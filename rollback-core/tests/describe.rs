//! The journal describes its plan: a run's report is rebuilt from its records alone and
//! equals the report built with the plan; older journals without the description still
//! load, and say clearly what they cannot do.

use rollback_core::journal::{Entry, FileJournal, Journal, MemoryJournal};
use rollback_core::sim::{CrashAfter, HealthProbe, KeyEquals, SetKey, SimWorld};
use rollback_core::{Error, Executor, Outcome, Plan, RunReport, Trigger, Undo, ROLLBACK_LEAD};
use std::sync::Arc;
use std::time::Duration;

fn world() -> SimWorld {
    let w = SimWorld::new();
    w.set("db", "schema", "v1");
    w.set("db", "old", "x");
    w.set("store", "v1/a", "A");
    w
}

/// Compensable and restore-only steps, every kind of verifier, objectives and owners.
fn plan(w: &SimWorld, health: &[f64]) -> Plan {
    Plan::builder("describe")
        .checkpoint("database", w.checkpoint("db"))
        .checkpoint("storage", w.checkpoint("store"))
        .step(
            "database",
            SetKey::new("schema", w, "db", "schema", "v2"),
            &[],
        )
        .step(
            "database",
            SetKey::delete("drop-old", w, "db", "old"),
            &["schema"],
        )
        .step("storage", SetKey::new("move", w, "store", "v2/a", "A"), &[])
        .precondition(KeyEquals::new("schema-v1", w, "db", "schema", Some("v1")))
        .verify_after(
            "schema",
            KeyEquals::new("schema-v2", w, "db", "schema", Some("v2")),
        )
        .verify_final(KeyEquals::new("moved", w, "store", "v2/a", Some("A")))
        .trigger(
            Trigger::new(HealthProbe::new("errors", w, health))
                .every(Duration::from_millis(5))
                .threshold(1, 2)
                .max_value(0.05),
        )
        .soak(Duration::from_millis(30))
        .rto_target(Duration::from_secs(60))
        .rpo_target(Duration::from_secs(5))
        .owner(ROLLBACK_LEAD, "db on-call")
        .build()
        .unwrap()
}

async fn rebuilt_equals_report(journal: Arc<dyn Journal>, plan: &Plan, want: Outcome) {
    let report = match Executor::with_journal(journal.clone()).run(plan).await {
        Ok(r) => r,
        Err(e) => panic!("run failed: {e}"),
    };
    assert_eq!(report.outcome, want, "{}", report.to_markdown());
    let records = journal.records(&report.run_id).await.unwrap();
    assert_eq!(records[1].entry.kind(), "plan_described");
    let rebuilt = RunReport::rebuild(&report.run_id, &records).unwrap();
    assert_eq!(rebuilt, report);
    assert_eq!(
        RunReport::from_records(plan, &report.run_id, &records),
        rebuilt
    );
    assert_eq!(
        RunReport::load(journal.as_ref(), &report.run_id)
            .await
            .unwrap(),
        report
    );
}

#[tokio::test]
async fn the_report_rebuilt_from_a_memory_journal_equals_the_plans_report() {
    let w = world();
    let p = plan(&w, &[0.0]);
    rebuilt_equals_report(Arc::new(MemoryJournal::new()), &p, Outcome::Committed).await;
    let w = world();
    let p = plan(&w, &[0.0, 0.5, 0.5]);
    rebuilt_equals_report(Arc::new(MemoryJournal::new()), &p, Outcome::RolledBack).await;
}

#[tokio::test]
async fn the_report_rebuilt_from_a_file_journal_equals_the_plans_report() {
    let dir = tempfile::tempdir().unwrap();
    let w = world();
    let p = plan(&w, &[0.0, 0.5, 0.5]);
    let journal = Arc::new(FileJournal::open(dir.path()).unwrap());
    rebuilt_equals_report(journal, &p, Outcome::RolledBack).await;
    // And read back by another process's journal.
    let again = FileJournal::open(dir.path()).unwrap();
    let run = again.runs().await.unwrap().remove(0);
    let report = RunReport::load(&again, &run).await.unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(report.objectives.rto_ms, Some(60_000));
}

#[tokio::test]
async fn the_description_names_steps_checkpoints_verifiers_objectives_and_owners() {
    let w = world();
    let p = plan(&w, &[0.0]);
    let d = p.describe();
    assert_eq!(d.digest, p.digest());
    let ids: Vec<&str> = d.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["schema", "drop-old", "move"]);
    let drop = &d.steps[1];
    assert_eq!(drop.depends_on, ["schema"]);
    assert_eq!(drop.touches, ["db"]);
    assert_eq!(
        drop.undo,
        Undo::Restore {
            resources: vec!["db".into()]
        }
    );
    assert!(!drop.description.is_empty());
    let cps: Vec<(&str, &str, bool)> = d
        .checkpoints
        .iter()
        .map(|c| (c.resource.as_str(), c.component.as_str(), c.snapshot))
        .collect();
    assert_eq!(cps, [("db", "database", true), ("store", "storage", false)]);
    let phases: Vec<(&str, &str)> = d
        .verifiers
        .iter()
        .map(|v| (v.id.as_str(), v.phase.as_str()))
        .collect();
    assert_eq!(
        phases,
        [
            ("schema-v1", "precondition"),
            ("schema-v2", "after:schema"),
            ("moved", "final"),
            ("errors", "soak")
        ]
    );
    let t = d.verifiers[3].trigger.as_ref().expect("trigger details");
    assert_eq!((t.every_ms, t.max_failures, t.window), (5, 1, 2));
    assert_eq!(t.max_value, Some(0.05));
    assert_eq!(d.soak_ms, 30);
    assert_eq!(d.objectives.rpo_ms, Some(5_000));
    assert_eq!(
        d.owners.get(ROLLBACK_LEAD).map(String::as_str),
        Some("db on-call")
    );
    // It survives the journal's JSON.
    let json = serde_json::to_string(&Entry::PlanDescribed(Box::new(d.clone()))).unwrap();
    assert!(json.starts_with("{\"type\":\"plan_described\""), "{json}");
    let back: Entry = serde_json::from_str(&json).unwrap();
    assert_eq!(back, Entry::PlanDescribed(Box::new(d)));
}

/// A journal as written before runs described their plan: the same entries, without the
/// `plan_described` record.
async fn without_description(from: &dyn Journal, run: &str) -> Arc<MemoryJournal> {
    let old = Arc::new(MemoryJournal::new());
    for r in from.records(run).await.unwrap() {
        if r.entry.kind() != "plan_described" {
            old.append(run, &r.entry, r.epoch).await.unwrap();
        }
    }
    old
}

#[tokio::test]
async fn an_older_journal_without_a_description_loads_and_its_report_needs_the_plan() {
    let w = world();
    let p = plan(&w, &[0.0]);
    let journal = Arc::new(MemoryJournal::new());
    let report = Executor::with_journal(journal.clone())
        .run(&p)
        .await
        .unwrap();
    let old = without_description(journal.as_ref(), &report.run_id).await;
    let records = old.records(&report.run_id).await.unwrap();
    let err = RunReport::rebuild(&report.run_id, &records).unwrap_err();
    assert!(
        matches!(&err, Error::Undescribed { run_id } if run_id == &report.run_id),
        "{err:?}"
    );
    assert!(err.to_string().contains("needs the plan"), "{err}");
    // With the plan, the report is what it was.
    let with_plan = RunReport::from_records(&p, &report.run_id, &records);
    assert_eq!(with_plan.outcome, Outcome::Committed);
    assert_eq!(with_plan.steps, report.steps);
    assert!(matches!(
        RunReport::rebuild("nope", &[]),
        Err(Error::UnknownRun { .. })
    ));
}

#[tokio::test]
async fn resuming_an_older_journal_describes_the_plan_so_its_report_can_be_rebuilt() {
    let w = world();
    let baseline = w.snapshot_state();
    let p = plan(&w, &[0.0]);
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    // Dies after journaling the intent to apply `drop-old` (run, plan, lease, 2 × capture
    // or fingerprint, precondition, schema's intent+outcome, its verdict, drop's intent).
    let crashing = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 9)));
    assert!(crashing.run(&p).await.is_err());
    let run = journal.runs().await.unwrap().remove(0);
    let old = without_description(journal.as_ref(), &run).await;
    let report = Executor::with_journal(old.clone())
        .resume(&p, &run)
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(w.snapshot_state(), baseline);
    let records = old.records(&run).await.unwrap();
    let kinds: Vec<&str> = records.iter().map(|r| r.entry.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "plan_described").count(), 1);
    assert_eq!(RunReport::rebuild(&run, &records).unwrap(), report);
}

#[tokio::test]
async fn a_description_of_another_plan_is_refused() {
    let w = world();
    let p = plan(&w, &[0.0]);
    let journal = Arc::new(MemoryJournal::new());
    let report = Executor::with_journal(journal.clone())
        .run(&p)
        .await
        .unwrap();
    let forged = Arc::new(MemoryJournal::new());
    let other = Plan::builder("other")
        .step("x", SetKey::new("x", &w, "x", "k", "v"), &[])
        .build()
        .unwrap();
    for r in journal.records(&report.run_id).await.unwrap() {
        let entry = match r.entry {
            Entry::PlanDescribed(_) => Entry::PlanDescribed(Box::new(other.describe())),
            e => e,
        };
        forged
            .append(&report.run_id, &entry, r.epoch)
            .await
            .unwrap();
    }
    let records = forged.records(&report.run_id).await.unwrap();
    assert!(matches!(
        RunReport::rebuild(&report.run_id, &records),
        Err(Error::PlanMismatch { .. })
    ));
}
