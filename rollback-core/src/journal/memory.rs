use super::{
    check_fence, decide_lease, now_ms, released, Entry, Journal, Lease, LiveProgress, Record,
};
use crate::{Digest, Result};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// A journal in memory, for tests and simulation. Survives a simulated crash (drop the
/// executor, keep the journal) but not the process.
///
/// ```
/// # tokio_test_block(async {
/// use rollback_core::journal::{Journal, MemoryJournal, Entry};
/// let j = MemoryJournal::new();
/// j.append("run-1", &Entry::Committed, 0).await.unwrap();
/// assert_eq!(j.records("run-1").await.unwrap().len(), 1);
/// # });
/// # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Default, Debug)]
pub struct MemoryJournal {
    inner: Mutex<Inner>,
}

#[derive(Default, Debug)]
struct Inner {
    runs: BTreeMap<String, Vec<Record>>,
    leases: BTreeMap<String, Lease>,
    /// Per run, the latest progress of each source.
    progress: BTreeMap<String, BTreeMap<String, LiveProgress>>,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the stored records of a run (tests of tamper detection use this).
    pub fn dangerous_overwrite(&self, run_id: &str, records: Vec<Record>) {
        self.lock().runs.insert(run_id.to_string(), records);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
        let mut g = self.lock();
        let recs = g.runs.entry(run_id.to_string()).or_default();
        let (seq, prev, head_epoch) = match recs.last() {
            Some(r) => (r.seq + 1, r.hash, r.epoch),
            None => (0, Digest::default(), 0),
        };
        check_fence(run_id, head_epoch, epoch)?;
        let rec = Record::seal(run_id, seq, now_ms(), prev, epoch, entry.clone());
        recs.push(rec.clone());
        Ok(rec)
    }

    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        let recs = self.lock().runs.get(run_id).cloned().unwrap_or_default();
        super::verify_chain(run_id, &recs)?;
        Ok(recs)
    }

    async fn runs(&self) -> Result<Vec<String>> {
        Ok(self.lock().runs.keys().cloned().collect())
    }

    async fn runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
        // Reads the first record only (the run's chain is verified when it is read).
        Ok(self
            .lock()
            .runs
            .iter()
            .filter(|(_, recs)| {
                matches!(recs.first(), Some(Record { entry: Entry::RunStarted { plan: p, .. }, .. }) if p == plan)
            })
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        let mut g = self.lock();
        let lease = decide_lease(g.leases.get(key), key, holder, ttl, now_ms())?;
        g.leases.insert(key.to_string(), lease.clone());
        Ok(lease)
    }

    async fn publish_progress(&self, run_id: &str, progress: &LiveProgress) -> Result<()> {
        self.lock()
            .progress
            .entry(run_id.to_string())
            .or_default()
            .insert(progress.source.clone(), progress.clone());
        Ok(())
    }

    async fn progress(&self, run_id: &str) -> Result<Vec<LiveProgress>> {
        Ok(self
            .lock()
            .progress
            .get(run_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        Ok(self.lock().leases.get(key).cloned())
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        let mut g = self.lock();
        if let Some(l) = g.leases.get_mut(key).filter(|l| l.holder == holder) {
            *l = released(l);
        }
        Ok(())
    }
}
