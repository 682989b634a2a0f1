//! Rolling back a run after it committed (`Executor::rollback_committed`) on simulated
//! resources: restores and compensations, parity, the RPO since the commit, refusals,
//! and crash-and-resume of the rollback at every record.

use rollback_core::events::RunEvent;
use rollback_core::journal::{Entry, Journal, MemoryJournal};
use rollback_core::report::StepState;
use rollback_core::sim::{CrashAfter, SetKey, SimWorld};
use rollback_core::{Error, Executor, Outcome, Plan, ResumePolicy, SnapshotRetention};
use std::sync::Arc;

fn world() -> SimWorld {
    let w = SimWorld::new();
    w.set("db", "schema", "v1");
    w.set("db", "rows", "10");
    w.set("flags", "new_ui", "off");
    w
}

/// db: one step undone only by restoring its snapshot; flags: one compensable step (its
/// checkpoint is only fingerprinted).
fn plan(w: &SimWorld) -> Plan {
    Plan::builder("cutover")
        .checkpoint("database", w.checkpoint("db"))
        .checkpoint("flags", w.checkpoint("flags"))
        .step(
            "database",
            SetKey::new("db-schema", w, "db", "schema", "v2").restore_only(),
            &[],
        )
        .step(
            "flags",
            SetKey::new("flag-on", w, "flags", "new_ui", "on"),
            &["db-schema"],
        )
        .build()
        .unwrap()
}

fn at_baseline(w: &SimWorld) -> bool {
    w.get("db", "schema").as_deref() == Some("v1")
        && w.get("db", "rows").as_deref() == Some("10")
        && w.get("flags", "new_ui").as_deref() == Some("off")
}

fn executor(journal: Arc<dyn Journal>, retention: SnapshotRetention) -> Executor {
    Executor::with_journal(journal)
        .holder("ops")
        .retain_snapshots(retention)
}

#[tokio::test]
async fn committed_run_is_rolled_back_with_parity_and_the_rpo_since_commit() {
    for retention in [SnapshotRetention::KeepAll, SnapshotRetention::KeepMigrated] {
        let w = world();
        let plan = plan(&w);
        let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
        let ex = executor(journal.clone(), retention);
        let run = ex.run(&plan).await.unwrap();
        assert_eq!(run.outcome, Outcome::Committed);
        assert_eq!(w.get("db", "schema").as_deref(), Some("v2"));
        // The application writes after the commit: the restore of db discards it.
        w.set("db", "rows", "11");

        let report = ex
            .rollback_committed(&plan, &run.run_id, "error rate up since the deploy")
            .await
            .unwrap();
        assert_eq!(report.outcome, Outcome::RolledBack, "{retention:?}");
        assert!(report.parity_proven(), "{}", report.to_markdown());
        assert!(report.rolled_back_after_commit);
        assert!(at_baseline(&w), "{retention:?}");
        let commit = report.committed_at_ms.expect("commit time kept");
        assert!(report.rpo_since_commit_ms.is_some(), "db was restored");
        assert!(report.rpo_ms.unwrap() >= report.rpo_since_commit_ms.unwrap());
        assert!(report.rto_ms.is_some());
        assert!(report.finished_at_ms >= commit);
        let db = report.steps.iter().find(|s| s.id == "db-schema").unwrap();
        assert_eq!(db.state, StepState::UndoneByRestore);
        let flag = report.steps.iter().find(|s| s.id == "flag-on").unwrap();
        assert_eq!(flag.state, StepState::Reverted);
        let md = report.to_markdown();
        assert!(md.contains("rolled back after commit"), "{md}");
        assert!(md.contains("ROLLBACK AFTER COMMIT"), "{md}");
        // Rolled back with parity: KeepMigrated releases the snapshot, KeepAll keeps it.
        let expected = usize::from(retention == SnapshotRetention::KeepAll);
        assert_eq!(w.stored_snapshots(), expected, "{retention:?}");
        // The journal says it: the commit is followed by the revocation.
        let kinds: Vec<&str> = journal
            .records(&run.run_id)
            .await
            .unwrap()
            .iter()
            .map(|r| r.entry.kind())
            .collect();
        let c = kinds.iter().position(|k| *k == "committed").unwrap();
        let r = kinds
            .iter()
            .position(|k| *k == "rollback_after_commit")
            .unwrap();
        assert!(c < r, "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == "rolled_back").count(), 1);
    }
}

#[tokio::test]
async fn rolling_back_twice_returns_the_first_rollback_and_changes_nothing() {
    let w = world();
    let plan = plan(&w);
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let ex = executor(journal.clone(), SnapshotRetention::KeepAll);
    let run = ex.run(&plan).await.unwrap();
    let first = ex
        .rollback_committed(&plan, &run.run_id, "bad")
        .await
        .unwrap();
    let n = journal.records(&run.run_id).await.unwrap().len();
    // Writes after the rollback are kept: a second call restores nothing again.
    w.set("db", "rows", "12");
    let second = ex
        .rollback_committed(&plan, &run.run_id, "bad")
        .await
        .unwrap();
    assert_eq!(second.outcome, Outcome::RolledBack);
    assert_eq!(first.finished_at_ms, second.finished_at_ms);
    assert_eq!(journal.records(&run.run_id).await.unwrap().len(), n);
    assert_eq!(w.get("db", "rows").as_deref(), Some("12"));
}

#[tokio::test]
async fn rollback_committed_refuses_a_run_whose_snapshots_were_released() {
    let w = world();
    let plan = plan(&w);
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let ex = executor(journal.clone(), SnapshotRetention::Release);
    let run = ex.run(&plan).await.unwrap();
    assert_eq!(run.outcome, Outcome::Committed);
    let n = journal.records(&run.run_id).await.unwrap().len();
    let err = ex
        .rollback_committed(&plan, &run.run_id, "too late")
        .await
        .unwrap_err();
    match &err {
        Error::SnapshotsReleased {
            run_id,
            checkpoints,
        } => {
            assert_eq!(run_id, &run.run_id);
            assert_eq!(checkpoints, &vec!["db".to_string()]);
        }
        other => panic!("expected SnapshotsReleased, got {other}"),
    }
    // Nothing was journaled or changed.
    assert_eq!(journal.records(&run.run_id).await.unwrap().len(), n);
    assert_eq!(w.get("db", "schema").as_deref(), Some("v2"));
}

#[tokio::test]
async fn rollback_committed_refuses_runs_that_did_not_commit() {
    let w = world();
    w.faults().fail_apply("flag-on", 1);
    let plan = plan(&w);
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let ex = executor(journal.clone(), SnapshotRetention::KeepAll);
    let rolled = ex.run(&plan).await.unwrap();
    assert_eq!(rolled.outcome, Outcome::RolledBack);
    let err = ex
        .rollback_committed(&plan, &rolled.run_id, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotCommitted { outcome, .. } if outcome == "rolled_back"),
        "{err}"
    );

    // An interrupted run: resume finishes it, this refuses.
    let crashed = Executor::with_journal(Arc::new(CrashAfter::new(journal.clone(), 5)))
        .holder("ops")
        .retain_snapshots(SnapshotRetention::KeepAll);
    assert!(crashed.run(&plan).await.is_err());
    let open = ex.unfinished(&plan).await.unwrap().remove(0);
    let err = ex.rollback_committed(&plan, &open, "x").await.unwrap_err();
    assert!(
        matches!(&err, Error::NotCommitted { outcome, .. } if outcome == "in_progress"),
        "{err}"
    );

    let err = ex
        .rollback_committed(&plan, "no-such-run", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownRun { .. }), "{err}");

    let other = Plan::builder("cutover")
        .step("x", SetKey::new("x", &w, "x", "k", "v"), &[])
        .build()
        .unwrap();
    let err = ex
        .rollback_committed(&other, &rolled.run_id, "x")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PlanMismatch { .. }), "{err}");
}

/// A crash after every possible number of records of the rollback; a new process
/// resumes (by `resume` or by `rollback_committed` again) and the run ends rolled back
/// with parity, each effect undone once.
#[tokio::test]
async fn a_crash_anywhere_in_the_rollback_after_commit_is_resumed_to_the_baseline() {
    let mut crash_points = 0;
    for n in 0.. {
        let w = world();
        let plan = plan(&w);
        let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
        let run = executor(journal.clone(), SnapshotRetention::KeepAll)
            .run(&plan)
            .await
            .unwrap();
        let before = journal.records(&run.run_id).await.unwrap().len();
        let crashing = executor(
            Arc::new(CrashAfter::new(journal.clone(), n)),
            SnapshotRetention::KeepAll,
        )
        .lease_ttl(std::time::Duration::from_millis(1));
        match crashing.rollback_committed(&plan, &run.run_id, "bad").await {
            Ok(report) => {
                // Enough records: nothing crashed.
                assert_eq!(report.outcome, Outcome::RolledBack);
                assert!(crash_points >= 5, "only {crash_points} crash points");
                break;
            }
            Err(Error::Crashed(_)) => crash_points += 1,
            Err(e) => panic!("crash after {n} records: {e}"),
        }
        let written = journal.records(&run.run_id).await.unwrap();
        let revoked = written
            .iter()
            .any(|r| matches!(r.entry, Entry::RollbackAfterCommit { .. }));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let again = executor(journal.clone(), SnapshotRetention::KeepAll)
            .holder("ops-2")
            .on_resume(ResumePolicy::RollForward);
        let report = if revoked {
            // Revoked: either call finishes the rollback, whatever the resume policy.
            if n % 2 == 0 {
                again.resume(&plan, &run.run_id).await.unwrap()
            } else {
                again
                    .rollback_committed(&plan, &run.run_id, "bad")
                    .await
                    .unwrap()
            }
        } else {
            // Not yet revoked: the run is still committed, nothing was changed.
            assert_eq!(written.len(), before + n as usize);
            let report = again.resume(&plan, &run.run_id).await.unwrap();
            assert_eq!(report.outcome, Outcome::Committed, "after {n} records");
            assert_eq!(w.get("db", "schema").as_deref(), Some("v2"));
            again
                .rollback_committed(&plan, &run.run_id, "bad")
                .await
                .unwrap()
        };
        assert_eq!(report.outcome, Outcome::RolledBack, "crash after {n}");
        assert!(
            report.parity_proven(),
            "crash after {n}: {}",
            report.to_markdown()
        );
        assert!(report.rolled_back_after_commit);
        assert!(at_baseline(&w), "crash after {n}");
    }
}

#[tokio::test]
async fn events_of_a_tenants_rollback_after_commit_name_the_run_and_the_tenant() {
    let w = world();
    let plan = plan(&w);
    let ex =
        executor(Arc::new(MemoryJournal::new()), SnapshotRetention::KeepAll).tenant("tenant-042");
    let mut events = ex.subscribe();
    let run = ex.run(&plan).await.unwrap();
    ex.rollback_committed(&plan, &run.run_id, "wave 2 breached")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    assert!(seen.len() > 5);
    assert!(seen
        .iter()
        .all(|e| e.run_id == run.run_id && e.tenant.as_deref() == Some("tenant-042")));
    assert!(seen.iter().any(|e| matches!(
        &e.event,
        RunEvent::RollbackStarted { reason, .. } if reason.contains("wave 2 breached")
    )));
    assert!(seen[0].to_string().starts_with("[tenant-042 "));
}
