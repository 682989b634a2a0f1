//! The runner's side of a lease: its fencing token, renewal, and the check made before
//! every durable action.

use crate::journal::Journal;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The fencing token of the runner a call belongs to: the lease key and the epoch of the
/// grant it runs under (see [`Context::fence`](crate::Context::fence)).
///
/// Epochs grow with every takeover of the key. An adapter that can check the token
/// atomically with its own write (in the same transaction, under the same lock) remembers
/// the highest epoch it has seen for `key` and refuses a lower one with
/// [`Error::Fenced`]: a runner that was paused while another took its run over then
/// cannot change the resource after the takeover. `rollback-postgres` does this in every
/// step, backfill batch and table restore.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// The lease key (the plan's name).
    pub key: String,
    /// The epoch of the runner's lease grant.
    pub epoch: u64,
}

impl Fence {
    /// The error an adapter returns when it has seen `current`, newer than this fence.
    pub fn stale(&self, current: u64) -> Error {
        Error::Fenced {
            scope: format!("lease {}", self.key),
            epoch: self.epoch,
            current,
        }
    }
}

/// A held lease: renewed in the background, checked before every durable action.
pub(crate) struct LeaseKeeper {
    journal: Arc<dyn Journal>,
    holder: String,
    ttl: Duration,
    fence: Fence,
    /// Until when the lease is surely held, by this process's monotonic clock: the time a
    /// successful grant was *requested* plus the TTL (the journal's expiry is later).
    held_until: Mutex<Instant>,
    /// Set once another holder is known to have the key: nothing more may be done.
    lost: AtomicBool,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("fence", &self.fence)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl LeaseKeeper {
    /// Take (or renew) the lease `key` for `holder`.
    pub(crate) async fn acquire(
        journal: Arc<dyn Journal>,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<(Arc<LeaseKeeper>, crate::journal::Lease)> {
        let asked = Instant::now();
        let lease = journal.acquire_lease(key, holder, ttl).await?;
        let keeper = Arc::new(LeaseKeeper {
            journal,
            holder: holder.to_string(),
            ttl,
            fence: Fence {
                key: key.to_string(),
                epoch: lease.epoch,
            },
            held_until: Mutex::new(deadline(asked, ttl)),
            lost: AtomicBool::new(false),
        });
        Ok((keeper, lease))
    }

    pub(crate) fn fence(&self) -> &Fence {
        &self.fence
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Mark the lease lost (an adapter or the journal refused this runner's epoch).
    pub(crate) fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    fn fenced(&self, current: u64) -> Error {
        self.mark_lost();
        self.fence.stale(current)
    }

    /// Renew the lease now. A grant of another epoch, or another live holder, fences this
    /// runner.
    ///
    /// # Errors
    /// [`Error::Fenced`]; journal errors (the lease may or may not still be held).
    pub(crate) async fn renew(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.fence.stale(0));
        }
        let asked = Instant::now();
        match self
            .journal
            .acquire_lease(&self.fence.key, &self.holder, self.ttl)
            .await
        {
            Ok(l) if l.epoch == self.fence.epoch => {
                *self.held_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    deadline(asked, self.ttl);
                Ok(())
            }
            // Someone held the key in between (taken and released): this grant is not ours.
            Ok(l) => {
                let _ = self
                    .journal
                    .release_lease(&self.fence.key, &self.holder)
                    .await;
                Err(self.fenced(l.epoch))
            }
            Err(Error::LeaseHeld { .. }) => Err(self.fenced(0)),
            Err(e) => Err(e),
        }
    }

    /// Check, immediately before a durable action, that the lease is still held: refused
    /// once lost; renewed first when less than a third of the TTL is surely left.
    ///
    /// # Errors
    /// [`Error::Fenced`]; journal errors renewing it (the action must not go ahead).
    pub(crate) async fn ensure(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.fence.stale(0));
        }
        let until = *self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        let margin = (self.ttl / 3).min(Duration::from_secs(3600));
        if Instant::now() + margin < until {
            return Ok(());
        }
        self.renew().await
    }

    /// Renew every third of the TTL until dropped or lost.
    pub(crate) fn renew_in_background(self: &Arc<Self>) -> AbortOnDrop {
        let keeper = Arc::clone(self);
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(keeper.ttl / 3).await;
                match keeper.renew().await {
                    Ok(()) => {}
                    Err(e @ Error::Fenced { .. }) => {
                        tracing::error!(error = %e, "lease lost to another runner; this runner stops at its next action");
                        return;
                    }
                    Err(e) => tracing::error!(error = %e, "lease renewal failed"),
                }
            }
        }))
    }
}

fn deadline(from: Instant, ttl: Duration) -> Instant {
    from.checked_add(ttl)
        .unwrap_or_else(|| from + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Aborts the task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
