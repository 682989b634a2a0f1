//! Shared test helpers: a fresh database per test on the server of `ROLLBACK_TEST_PG_URL`,
//! login roles and comparable `pg_dump` views, from the workspace's test kit.
#![allow(unused_imports, unreachable_pub, dead_code)]

pub use rollback_testkit::pg::*;

/// `report` is a rollback whose migration tool's ledger is proven back at its baseline:
/// checked like any resource, never assumed (no ledger among what is not proven, and no
/// checkpoint that differs from its baseline).
#[track_caller]
pub fn assert_rolled_back_with_ledger_proven(report: &rollback_core::RunReport) {
    let md = report.to_markdown();
    assert_eq!(report.outcome, rollback_core::Outcome::RolledBack, "{md}");
    assert!(
        report.unproven.iter().all(|u| !u.contains("ledger"))
            && report.checkpoints.iter().all(|c| c.parity != Some(false)),
        "{md}"
    );
}
