//! The report's JSON is stable: it carries `schema_version`, validates against the JSON
//! Schema generated from its types, and that schema is the one committed to the repository
//! (`rollback-core/report.schema.json`; regenerate it with `UPDATE_REPORT_SCHEMA=1`).

use rollback_core::journal::MemoryJournal;
use rollback_core::report::REPORT_SCHEMA_VERSION;
use rollback_core::sim::{HealthProbe, KeyEquals, SendMessage, SetKey, SimWorld};
use rollback_core::{Executor, Outcome, Plan, RunReport, Trigger, ROLLBACK_LEAD};
use std::path::PathBuf;
use std::time::Duration;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("report.schema.json")
}

#[test]
fn the_committed_schema_is_the_one_generated_from_the_types() {
    let generated = serde_json::to_string_pretty(&RunReport::json_schema()).unwrap() + "\n";
    if std::env::var_os("UPDATE_REPORT_SCHEMA").is_some() {
        std::fs::write(committed_path(), &generated).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path()).expect(
        "rollback-core/report.schema.json is missing: run this test with UPDATE_REPORT_SCHEMA=1",
    );
    assert!(
        committed == generated,
        "the report's types changed its JSON Schema: regenerate report.schema.json \
         (UPDATE_REPORT_SCHEMA=1), raise REPORT_SCHEMA_VERSION if a reader could notice, and \
         note it in the CHANGELOG"
    );
}

/// Reports of every shape: committed, rolled back after a restore and a breach, partially
/// rolled back with an approved irreversible step.
async fn reports() -> Vec<RunReport> {
    let mut out = Vec::new();
    for health in [&[0.0][..], &[0.0, 0.5, 0.5][..]] {
        let w = SimWorld::new();
        w.set("db", "old", "x");
        w.set("store", "a", "A");
        let plan = Plan::builder("schema")
            .checkpoint("database", w.checkpoint("db"))
            .checkpoint("storage", w.checkpoint("store"))
            .step("database", SetKey::new("add", &w, "db", "k", "v"), &[])
            .step(
                "database",
                SetKey::delete("drop", &w, "db", "old"),
                &["add"],
            )
            .step("storage", SetKey::new("copy", &w, "store", "b", "A"), &[])
            .step(
                "notify",
                SendMessage::new("mail", &w, "migrated"),
                &["copy"],
            )
            .approve_irreversible("mail", "customers are told either way")
            .verify_after("add", KeyEquals::new("k-set", &w, "db", "k", Some("v")))
            .trigger(
                Trigger::new(HealthProbe::new("errors", &w, health))
                    .every(Duration::from_millis(5))
                    .threshold(1, 2)
                    .max_value(0.05),
            )
            .soak(Duration::from_millis(30))
            .rto_target(Duration::from_secs(10))
            .rpo_target(Duration::ZERO)
            .owner(ROLLBACK_LEAD, "ops")
            .build()
            .unwrap();
        out.push(
            Executor::new(MemoryJournal::new())
                .run(&plan)
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn every_report_validates_against_the_schema_and_names_its_version() {
    let schema = RunReport::json_schema();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let reports = reports().await;
    assert_eq!(reports[0].outcome, Outcome::Committed);
    assert_eq!(reports[1].outcome, Outcome::RolledBack);
    for r in reports {
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["schema_version"], REPORT_SCHEMA_VERSION);
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{:?}: {errors:#?}", r.outcome);
    }
}

#[test]
fn json_that_breaks_the_schema_is_refused() {
    let validator = jsonschema::validator_for(&RunReport::json_schema()).unwrap();
    // Not a report: the check can fail.
    let bad = serde_json::json!({ "schema_version": 1, "run_id": 7, "outcome": "exploded" });
    assert!(!validator.is_valid(&bad));
}
