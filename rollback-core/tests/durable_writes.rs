//! How many durable writes a run costs. Each journal write is one `fdatasync` in the file
//! journal, so the count is the run's disk latency: a step's outcome goes out with the next
//! step's intent in one write, never after the next action.

use async_trait::async_trait;
use rollback_core::journal::{Entry, FileJournal, Journal, Lease, LostTail, Record};
use rollback_core::sim::{SetKey, SimWorld};
use rollback_core::{CancellationToken, Executor, Outcome, Plan, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A journal that counts its durable writes and remembers each write's entries.
struct Counting {
    inner: FileJournal,
    writes: AtomicUsize,
    batches: Mutex<Vec<Vec<String>>>,
}

#[async_trait]
impl Journal for Counting {
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.batches.lock().unwrap().push(vec![entry.kind().into()]);
        self.inner.append(run_id, entry, epoch).await
    }
    async fn append_all(&self, run_id: &str, entries: &[Entry], epoch: u64) -> Result<Vec<Record>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.batches
            .lock()
            .unwrap()
            .push(entries.iter().map(|e| e.kind().to_string()).collect());
        self.inner.append_all(run_id, entries, epoch).await
    }
    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        self.inner.records(run_id).await
    }
    async fn runs(&self) -> Result<Vec<String>> {
        self.inner.runs().await
    }
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        self.inner.release_lease(key, holder).await
    }
    async fn lost_tail(&self, run_id: &str) -> Result<Option<LostTail>> {
        self.inner.lost_tail(run_id).await
    }
}

fn chain(w: &SimWorld, n: usize) -> Plan {
    let mut b = Plan::builder("durable-writes").checkpoint("db", w.checkpoint("db"));
    for i in 0..n {
        let id = format!("s{i}");
        let prev = format!("s{}", i.wrapping_sub(1));
        let deps: Vec<&str> = if i == 0 { vec![] } else { vec![prev.as_str()] };
        b = b.step(
            "db",
            SetKey::new(&id, w, "db", &format!("k{i}"), "v"),
            &deps,
        );
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_costs_one_durable_write_and_its_intent_is_durable_before_it_acts() {
    const STEPS: usize = 40;
    let w = SimWorld::new();
    let plan = chain(&w, STEPS);
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Counting {
        inner: FileJournal::open(dir.path()).unwrap(),
        writes: AtomicUsize::new(0),
        batches: Mutex::new(Vec::new()),
    });
    let report = Executor::new(journal.clone())
        .run_as(&plan, "r", CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);

    let writes = journal.writes.load(Ordering::SeqCst);
    let records = journal.records("r").await.unwrap();
    // Before outcomes rode with the next intent, every step took two writes (intent,
    // outcome): 2 × 40 + the run's own records.
    let per_step = writes as f64 / STEPS as f64;
    eprintln!(
        "{writes} durable writes for {STEPS} steps ({} records): {per_step:.2} per step",
        records.len()
    );
    assert!(
        per_step <= 1.2,
        "{writes} durable writes for {STEPS} steps ({} records): {per_step:.2} per step",
        records.len()
    );
    // Every step's outcome is journaled, in order, right before the next intent.
    let applied = records
        .iter()
        .filter(|r| matches!(r.entry, Entry::Applied { .. }))
        .count();
    assert_eq!(applied, STEPS);
    let batches = journal.batches.lock().unwrap();
    // The run opens with one write of its three opening records (nothing acts between
    // them); the baseline fingerprint (which announces no action) goes out with the
    // first step's intent; after that only an outcome is deferred.
    assert_eq!(
        batches[0],
        ["run_started", "plan_described", "lease_taken"],
        "{batches:?}"
    );
    assert_eq!(batches[1], ["fingerprinted", "apply_intent"], "{batches:?}");
    assert_eq!(writes, STEPS + 2, "{batches:?}");
    for b in batches.iter().skip(2).filter(|b| b.len() > 1) {
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(b[0], "applied", "only an outcome is deferred: {b:?}");
    }
    // The intent of each step is in a write made before that step's outcome was known:
    // no write holds a step's intent together with its own outcome.
    for b in batches.iter() {
        assert!(
            !(b.first().map(String::as_str) == Some("apply_intent")
                && b.get(1).map(String::as_str) == Some("applied")),
            "{b:?}"
        );
    }
}

/// Two steps setting `k0`, then `k1`, to `new`.
fn two_steps(w: &SimWorld, name: &str) -> Plan {
    Plan::builder(name)
        .checkpoint("db", w.checkpoint("db"))
        .step("db", SetKey::new("s0", w, "db", "k0", "new"), &[])
        .step("db", SetKey::new("s1", w, "db", "k1", "new"), &["s0"])
        .build()
        .unwrap()
}

/// A run on a file journal with inline file work, on a current-thread runtime: it
/// commits, its records read back verified, and another journal on the folder sees the
/// run ended.
#[tokio::test]
async fn a_run_commits_on_a_file_journal_with_inline_io() {
    let w = SimWorld::new();
    let plan = two_steps(&w, "inline-io");
    let dir = tempfile::tempdir().unwrap();
    let journal = FileJournal::open(dir.path()).unwrap().inline_io(true);
    let report = Executor::new(journal.clone())
        .run_as(&plan, "r", CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::Committed);
    assert_eq!(w.get("db", "k1").as_deref(), Some("new"));
    let other = FileJournal::open(dir.path()).unwrap();
    let records = other.records("r").await.unwrap();
    assert_eq!(records.last().map(|r| r.entry.kind()), Some("committed"));
    assert!(other
        .open_runs_of_plan("inline-io")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(other.runs_of_plan("inline-io").await.unwrap(), ["r"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_step_still_journals_the_deferred_outcome_before_rolling_back() {
    let w = SimWorld::new();
    w.set("db", "k0", "old");
    let plan = two_steps(&w, "deferred-then-fail");
    w.faults().fail_apply("s1", 1);
    let dir = tempfile::tempdir().unwrap();
    let journal = FileJournal::open(dir.path()).unwrap();
    let report = Executor::new(journal.clone())
        .run_as(&plan, "r", CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.outcome, Outcome::RolledBack);
    assert_eq!(
        w.resource_state("db").get("k0").map(String::as_str),
        Some("old")
    );
    let kinds: Vec<&str> = journal
        .records("r")
        .await
        .unwrap()
        .iter()
        .map(|r| r.entry.kind())
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    let applied = kinds
        .iter()
        .position(|k| *k == "applied")
        .expect("s0's outcome");
    let started = kinds
        .iter()
        .position(|k| *k == "rollback_started")
        .expect("rollback");
    assert!(applied < started, "{kinds:?}");
}
