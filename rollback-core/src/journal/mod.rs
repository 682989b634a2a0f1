//! Journals: the append-only, hash-chained record of every run.
//!
//! The journal is the source of truth. Every action on a resource is preceded by a
//! durable *intent* record and followed by an *outcome* record; [`Executor::resume`]
//! rebuilds a run from its records alone. Each [`Record`] carries the blake3 hash of the
//! previous one, so a tampered, reordered or missing record is detected when read.
//!
//! [`Executor::resume`]: crate::Executor::resume

mod entry;
mod file;
mod memory;
mod record;

pub use entry::Entry;
pub use file::FileJournal;
pub use memory::MemoryJournal;
pub use record::{verify_chain, JournalError, LostTail, Record, TailAssumption, WitnessedOutcome};

use crate::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A lease on a key (the plan's name): who holds it, until when, and its fencing epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The key.
    pub key: String,
    /// The holder (empty once released: the key is free, its epoch remembered).
    pub holder: String,
    /// Expiry, milliseconds since the Unix epoch (by the journal's clock).
    pub expires_at_ms: u64,
    /// The previous holder whose expired lease was taken over, if any.
    #[serde(default)]
    pub taken_over_from: Option<String>,
    /// The fencing token of this grant: greater than the epoch of every earlier grant of
    /// the key, kept by renewals. Every record a holder appends carries it, and the
    /// journal refuses records of an epoch older than the run's last one.
    #[serde(default)]
    pub epoch: u64,
}

/// Where runs are recorded. Implementations: [`MemoryJournal`], [`FileJournal`], and the
/// PostgreSQL journal of `rollback-postgres`.
///
/// # Contract
/// 1. **Durable append.** When `append` returns `Ok`, the record survives a crash of this
///    process (and of the machine, for durable journals).
/// 2. **Chained.** Records of a run get consecutive `seq` from 0, each sealed with
///    [`Record::seal`] chained to the previous one's hash.
/// 3. **Verified reads.** `records` returns the run's records only after checking the
///    chain; a torn last record (a write cut short) is dropped, anything else wrong is a
///    [`JournalError`].
/// 4. **Leases.** `acquire_lease` grants the lease when it is free, released, expired,
///    or already held by the same holder (a renewal); otherwise it fails with
///    [`Error::LeaseHeld`](crate::Error::LeaseHeld). Two holders never hold one key at
///    once. Expiry is decided by one clock for all holders (the journal's).
/// 5. **Fencing epochs.** Every grant to a holder that did not hold the key gets an
///    epoch greater than any earlier grant of the key (released keys remember theirs);
///    a renewal keeps it. A `ttl` too large to represent saturates: it never wraps into
///    an expiry in the past.
/// 6. **Fenced appends.** `append` refuses, atomically with the write (under the same
///    lock or in the same transaction that reads the run's head), an `epoch` older than
///    the epoch of the run's last record, with [`Error::Fenced`](crate::Error::Fenced);
///    nothing is written.
/// 7. **Reads never write.** `records` and `lost_tail` change nothing (they work on a
///    read-only copy); dropping a torn tail happens only in `append`, which records it
///    ([`Entry::TailTruncated`]).
/// 8. **Lost tails are told.** A journal that can lose the end of a run (a file cut
///    short) reports it in `lost_tail`, and refuses to extend a run whose records end
///    before an outcome it witnessed, except with [`Entry::TailLossResolved`].
/// 9. **Runs of a plan.** `runs_of_plan(p)` lists exactly the runs whose first record is
///    the `run_started` of plan `p` (checked by
///    `rollback_core::conformance::journal::runs_of_plan`).
/// 10. **Open runs of a plan.** `open_runs_of_plan(p)` lists exactly the runs of
///    `runs_of_plan(p)` that have not ended ([`run_ended`] of their records is false), as
///    the records read then say (checked by
///    `rollback_core::conformance::journal::open_runs_of_plan`).
///
/// The `conformance` feature checks these clauses on any implementation
/// (`rollback_core::conformance::journal`).
#[async_trait]
pub trait Journal: Send + Sync {
    /// Append `entry` to the run `run_id` (creating the run at its first record) as a
    /// writer holding fencing `epoch` (0 outside any lease).
    ///
    /// # Errors
    /// [`Error::Fenced`](crate::Error::Fenced) when the run already has a record of a
    /// newer epoch; I/O or backend errors; a concurrent writer.
    async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record>;

    /// Append several entries in order, as one durable write where the journal can: all of
    /// them are durable when it returns `Ok` (the executor uses it to write a step's
    /// outcome together with the next intent — one fsync instead of two — without ever
    /// acting before its intent is durable). On `Err` any prefix may have been appended,
    /// exactly as with the same entries appended one by one; records are verified on read
    /// either way. Default: one [`append`](Journal::append) per entry.
    ///
    /// # Errors
    /// As [`append`](Journal::append).
    async fn append_all(&self, run_id: &str, entries: &[Entry], epoch: u64) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push(self.append(run_id, e, epoch).await?);
        }
        Ok(out)
    }

    /// Every record of `run_id`, verified. Empty when the run does not exist.
    ///
    /// # Errors
    /// [`JournalError`] when the chain is broken.
    async fn records(&self, run_id: &str) -> Result<Vec<Record>>;

    /// Ids of all runs in the journal.
    ///
    /// # Errors
    /// I/O or backend errors.
    async fn runs(&self) -> Result<Vec<String>>;

    /// Ids of the runs whose first record starts a run of the plan named `plan`, in any
    /// order. Default: every run's records read and their first record checked; journals
    /// that can answer from an index do (the PostgreSQL journal, whose fleets hold
    /// thousands of runs).
    ///
    /// # Errors
    /// I/O or backend errors; a run whose chain is broken.
    async fn runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for run_id in self.runs().await? {
            if plan_of(&self.records(&run_id).await?) == Some(plan) {
                out.push(run_id);
            }
        }
        Ok(out)
    }

    /// Ids of the runs of the plan named `plan` that have not ended ([`run_ended`]): the
    /// runs a new run of the plan must wait for, in any order. The executor asks it before
    /// every run, so its cost should not grow with the runs that ended: journals keep an
    /// index (the memory journal: the open runs of each plan; the file journal: what each
    /// run file held when this process last read or wrote it). Default: every run of
    /// [`runs_of_plan`](Journal::runs_of_plan) read and its records checked.
    ///
    /// # Errors
    /// I/O or backend errors; a run whose chain is broken (when the journal reads it).
    async fn open_runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for run_id in self.runs_of_plan(plan).await? {
            let records = self.records(&run_id).await?;
            if plan_of(&records) == Some(plan) && !run_ended(&records) {
                out.push(run_id);
            }
        }
        Ok(out)
    }

    /// Take or renew the lease `key` for `holder` for `ttl`.
    ///
    /// # Errors
    /// [`Error::LeaseHeld`](crate::Error::LeaseHeld) when another holder's lease is live.
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease>;

    /// Release the lease if `holder` holds it (the key remembers its epoch).
    ///
    /// # Errors
    /// I/O or backend errors.
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()>;

    /// What this journal knows it lost at the end of `run_id` (contract clause 8).
    /// Default: nothing (journals whose appends are transactions cannot tear).
    ///
    /// # Errors
    /// I/O or backend errors.
    async fn lost_tail(&self, _run_id: &str) -> Result<Option<LostTail>> {
        Ok(None)
    }

    /// The lease of `key` as stored, without taking it: for operators' tools, which show
    /// who holds a plan and check that no run's records carry an epoch newer than the
    /// key's. `None`: never granted. Reads never write. Default: `None` (a journal that
    /// cannot tell).
    ///
    /// # Errors
    /// I/O or backend errors.
    async fn lease(&self, _key: &str) -> Result<Option<Lease>> {
        Ok(None)
    }

    /// Keep `progress` as the latest of its source for the run `run_id`, replacing the
    /// one before: what a long step, snapshot or restore reports while it works, for
    /// watchers in other processes. Not a record — not chained, not durable, read by
    /// neither `resume` nor the report; best effort. Default: dropped.
    ///
    /// # Errors
    /// I/O or backend errors (the executor logs them and goes on).
    async fn publish_progress(&self, _run_id: &str, _progress: &LiveProgress) -> Result<()> {
        Ok(())
    }

    /// The latest progress of each source of `run_id` (see
    /// [`publish_progress`](Journal::publish_progress)). Default: none.
    ///
    /// # Errors
    /// I/O or backend errors.
    async fn progress(&self, _run_id: &str) -> Result<Vec<LiveProgress>> {
        Ok(Vec::new())
    }
}

/// The latest progress of one source of a running run, published beside the journal (see
/// [`Journal::publish_progress`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveProgress {
    /// What is progressing (a step id, a checkpoint resource, a verifier).
    pub source: String,
    /// Units done.
    pub done: u64,
    /// Units in all, where known.
    pub total: Option<u64>,
    /// The unit ("rows", "objects", "bytes").
    pub unit: String,
    /// When it was published, epoch ms.
    pub at_ms: u64,
}

/// A shared or boxed journal is a journal: every method forwards (a wrapper that forgot
/// `lost_tail` would hide a lost outcome).
macro_rules! forward_journal {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: Journal + ?Sized> Journal for $ptr {
            async fn append(&self, run_id: &str, entry: &Entry, epoch: u64) -> Result<Record> {
                (**self).append(run_id, entry, epoch).await
            }
            async fn append_all(
                &self,
                run_id: &str,
                entries: &[Entry],
                epoch: u64,
            ) -> Result<Vec<Record>> {
                (**self).append_all(run_id, entries, epoch).await
            }
            async fn records(&self, run_id: &str) -> Result<Vec<Record>> {
                (**self).records(run_id).await
            }
            async fn runs(&self) -> Result<Vec<String>> {
                (**self).runs().await
            }
            async fn runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
                (**self).runs_of_plan(plan).await
            }
            async fn open_runs_of_plan(&self, plan: &str) -> Result<Vec<String>> {
                (**self).open_runs_of_plan(plan).await
            }
            async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease> {
                (**self).acquire_lease(key, holder, ttl).await
            }
            async fn release_lease(&self, key: &str, holder: &str) -> Result<()> {
                (**self).release_lease(key, holder).await
            }
            async fn lost_tail(&self, run_id: &str) -> Result<Option<LostTail>> {
                (**self).lost_tail(run_id).await
            }
            async fn lease(&self, key: &str) -> Result<Option<Lease>> {
                (**self).lease(key).await
            }
            async fn publish_progress(&self, run_id: &str, progress: &LiveProgress) -> Result<()> {
                (**self).publish_progress(run_id, progress).await
            }
            async fn progress(&self, run_id: &str) -> Result<Vec<LiveProgress>> {
                (**self).progress(run_id).await
            }
        }
    )*};
}
forward_journal!(std::sync::Arc<T>, Box<T>);

/// Whether a run whose records (or entries) are these has ended: the last entry that
/// says so ([`Entry::ends_run`]) is an outcome not revoked since. For journal
/// implementations, which may fold [`Entry::ends_run`] as they append instead.
pub fn run_ended<'a>(entries: impl IntoIterator<Item = &'a Record>) -> bool {
    entries
        .into_iter()
        .fold(false, |ended, r| r.entry.ends_run().unwrap_or(ended))
}

/// The plan a run's records start a run of: the plan of its first record when that is a
/// `run_started` (contract clause 9). For journal implementations.
pub fn plan_of(records: &[Record]) -> Option<&str> {
    match records.first() {
        Some(Record {
            entry: Entry::RunStarted { plan, .. },
            ..
        }) => Some(plan),
        _ => None,
    }
}

/// Refuse an append of `epoch` to `run_id` whose last record has `head_epoch`
/// (contract clause 6). For journal implementations.
///
/// # Errors
/// [`Error::Fenced`](crate::Error::Fenced) when `epoch < head_epoch`.
pub fn check_fence(run_id: &str, head_epoch: u64, epoch: u64) -> Result<()> {
    if epoch < head_epoch {
        return Err(crate::Error::Fenced {
            scope: format!("run {run_id}"),
            epoch,
            current: head_epoch,
        });
    }
    Ok(())
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The largest expiry a lease may have, in ms since the Unix epoch: `i64::MAX`, so that
/// journals storing it as a signed 64-bit number (SQL `bigint`) cannot wrap it.
pub const MAX_LEASE_EXPIRY_MS: u64 = i64::MAX as u64;

/// The expiry of a lease granted at `now` for `ttl`, saturated at
/// [`MAX_LEASE_EXPIRY_MS`] (contract clause 5). For journal implementations.
pub fn lease_expiry(now_ms: u64, ttl: Duration) -> u64 {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_add(ttl_ms).min(MAX_LEASE_EXPIRY_MS)
}

/// Decide a lease request against the current lease of `key` (clauses 4 and 5), by the
/// journal's clock `now`. For journal implementations: read the current lease, decide,
/// and store the result under one lock or transaction.
///
/// # Errors
/// [`Error::LeaseHeld`](crate::Error::LeaseHeld) while another holder's lease is live;
/// [`Error::Invalid`](crate::Error::Invalid) for an empty holder.
pub fn decide_lease(
    current: Option<&Lease>,
    key: &str,
    holder: &str,
    ttl: Duration,
    now: u64,
) -> Result<Lease> {
    if holder.is_empty() {
        return Err(crate::Error::invalid("a lease holder must not be empty"));
    }
    let expires_at_ms = lease_expiry(now, ttl);
    let grant = |epoch: u64, taken_over_from: Option<String>| Lease {
        key: key.to_string(),
        holder: holder.to_string(),
        expires_at_ms,
        taken_over_from,
        epoch,
    };
    match current {
        // Nobody took the key since this holder got it (the holder field is unchanged):
        // a renewal, even after expiry, keeps the epoch.
        Some(l) if l.holder == holder => Ok(grant(l.epoch, None)),
        Some(l) if !l.holder.is_empty() && l.expires_at_ms > now => Err(crate::Error::LeaseHeld {
            key: key.to_string(),
            holder: l.holder.clone(),
            remaining_ms: l.expires_at_ms - now,
        }),
        Some(l) => Ok(grant(
            l.epoch.saturating_add(1),
            (!l.holder.is_empty()).then(|| l.holder.clone()),
        )),
        None => Ok(grant(1, None)),
    }
}

/// The stored form of a released lease: no holder, expired, its epoch kept so the next
/// grant is newer. For journal implementations.
pub fn released(lease: &Lease) -> Lease {
    Lease {
        key: lease.key.clone(),
        holder: String::new(),
        expires_at_ms: 0,
        taken_over_from: None,
        epoch: lease.epoch,
    }
}
