use super::{
    check_fence, decide_lease, now_ms, released, Entry, Journal, Lease, LiveProgress, Record,
};
use crate::{Digest, Result};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
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
    /// Per plan, its runs (`runs_of_plan`) and those not ended (`open_runs_of_plan`),
    /// kept as records are appended: asking costs nothing per run that ended.
    plans: BTreeMap<String, PlanRuns>,
}

#[derive(Default, Debug)]
struct PlanRuns {
    all: BTreeSet<String>,
    open: BTreeSet<String>,
}

impl Inner {
    /// Index the record `rec` just appended to `run_id` (contract clauses 9, 10).
    fn index(&mut self, run_id: &str, rec: &Record) {
        if rec.seq == 0 {
            if let Entry::RunStarted { plan, .. } = &rec.entry {
                let runs = self.plans.entry(plan.clone()).or_default();
                runs.all.insert(run_id.to_string());
                runs.open.insert(run_id.to_string());
            }
        }
        let Some(ended) = rec.entry.ends_run() else {
            return;
        };
        let Some(plan) = self.runs.get(run_id).and_then(|r| super::plan_of(r)) else {
            return;
        };
        if let Some(runs) = self.plans.get_mut(plan) {
            if ended {
                runs.open.remove(run_id);
            } else {
                runs.open.insert(run_id.to_string());
            }
        }
    }

    /// Index `run_id` again from its stored records (after they were replaced).
    fn reindex(&mut self, run_id: &str) {
        for runs in self.plans.values_mut() {
            runs.all.remove(run_id);
            runs.open.remove(run_id);
        }
        let Some(records) = self.runs.get(run_id) else {
            return;
        };
        if let Some(plan) = super::plan_of(records) {
            let ended = super::run_ended(records);
            let runs = self.plans.entry(plan.to_string()).or_default();
            runs.all.insert(run_id.to_string());
            if !ended {
                runs.open.insert(run_id.to_string());
            }
        }
    }
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the stored records of a run (tests of tamper detection use this).
    pub fn dangerous_overwrite(&self, run_id: &str, records: Vec<Record>) {
        let mut g = self.lock();
        g.runs.insert(run_id.to_string(), records);
        g.reindex(run_id);
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
        g.index(run_id, &rec);
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
        // From the index of first records (the run's chain is verified when it is read).
        Ok(self
            .lock()
            .plans
            .get(plan)
            .map(|r| r.all.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn open_runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .plans
            .get(plan)
            .map(|r| r.open.iter().cloned().collect())
            .unwrap_or_default())
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
