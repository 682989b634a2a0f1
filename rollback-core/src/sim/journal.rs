//! [`CrashAfter`]: a journal that "crashes" the process after `n` appends.

use crate::journal::{Entry, Journal, Lease, Record};
use crate::{Error, Result};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A journal that "crashes" the process after `n` successful appends: every later append
/// fails with [`Error::Crashed`], so the executor stops where a killed process would.
pub struct CrashAfter {
    inner: Arc<dyn Journal>,
    remaining: AtomicU64,
}

impl CrashAfter {
    /// Wrap `inner`, allowing `n` more appends.
    pub fn new(inner: Arc<dyn Journal>, n: u64) -> Self {
        CrashAfter {
            inner,
            remaining: AtomicU64::new(n),
        }
    }
}

#[async_trait]
impl Journal for CrashAfter {
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
        let ok = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !ok {
            return Err(Error::Crashed(format!(
                "before journaling {}",
                entry.kind()
            )));
        }
        self.inner.append(run_id, entry, epoch).await
    }
    async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
        self.inner.records(run_id).await
    }
    async fn lost_tail(&self, run_id: &str) -> Result<Option<crate::journal::LostTail>> {
        self.inner.lost_tail(run_id).await
    }
    async fn lease(&self, key: &str) -> Result<Option<Lease>> {
        self.inner.lease(key).await
    }
    async fn publish_progress(
        &self,
        run_id: &str,
        progress: &crate::journal::LiveProgress,
    ) -> Result<()> {
        self.inner.publish_progress(run_id, progress).await
    }
    async fn progress(&self, run_id: &str) -> Result<Vec<crate::journal::LiveProgress>> {
        self.inner.progress(run_id).await
    }
    async fn runs(&self) -> Result<Vec<String>> {
        self.inner.runs().await
    }
    async fn runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
        self.inner.runs_of_plan(plan).await
    }
    async fn open_runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
        self.inner.open_runs_of_plan(plan).await
    }
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
        self.inner.acquire_lease(key, holder, ttl).await
    }
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
        self.inner.release_lease(key, holder).await
    }
}
