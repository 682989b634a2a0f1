//! A running plan publishes its progress beside the journal, for watchers in other
//! processes; it is not a record.

use rollback_core::journal::{FileJournal, Journal, LiveProgress, MemoryJournal};
use rollback_core::sim::{SetKey, SimWorld};
use rollback_core::{Executor, Outcome, Plan};
use std::sync::Arc;

fn plan(w: &SimWorld) -> Plan {
    w.set("db", "old", "x");
    Plan::builder("live")
        .checkpoint("database", w.checkpoint("db"))
        // Undone by a restore: the checkpoint is captured in full, and its capture reports
        // its progress.
        .step("database", SetKey::delete("drop", w, "db", "old"), &[])
        .build()
        .unwrap()
}

async fn published(journal: Arc<dyn Journal>) -> Vec<LiveProgress> {
    let w = SimWorld::new();
    let report = Executor::with_journal(journal.clone())
        .run(&plan(&w))
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    let progress = journal.progress(&report.run_id).await.unwrap();
    // Not a record: the run's records carry no trace of it.
    let records = journal.records(&report.run_id).await.unwrap();
    assert!(records.iter().all(|r| r.entry.kind() != "progress"));
    progress
}

#[tokio::test]
async fn the_file_journal_keeps_each_sources_latest_progress_for_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    let p = published(Arc::new(FileJournal::open(dir.path()).unwrap())).await;
    let capture = p
        .iter()
        .find(|p| p.source == "db")
        .expect("the capture's progress");
    assert_eq!(
        (capture.done, capture.total, capture.unit.as_str()),
        (1, Some(1), "snapshots")
    );
    // Another process reads the same.
    let other = FileJournal::open(dir.path()).unwrap();
    let run = other.runs().await.unwrap().remove(0);
    assert_eq!(other.progress(&run).await.unwrap(), p);
    assert_eq!(other.progress("no-such-run").await.unwrap(), Vec::new());
}

#[tokio::test]
async fn the_memory_journal_keeps_the_latest_progress_per_source() {
    let p = published(Arc::new(MemoryJournal::new())).await;
    assert_eq!(p.len(), 1, "{p:?}");
    let j = MemoryJournal::new();
    let at = |done| LiveProgress {
        source: "backfill".into(),
        done,
        total: Some(10),
        unit: "rows".into(),
        at_ms: done,
    };
    j.publish_progress("r", &at(3)).await.unwrap();
    j.publish_progress("r", &at(7)).await.unwrap();
    assert_eq!(j.progress("r").await.unwrap(), vec![at(7)]);
}
