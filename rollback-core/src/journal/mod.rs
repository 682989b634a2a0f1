//! Journals: the append-only, hash-chained record of every run.
//!
//! The journal is the source of truth. Every action on a resource is preceded by a
//! durable *intent* record and followed by an *outcome* record; [`Executor::resume`]
//! rebuilds a run from its records alone. Each [`Record`] carries the blake3 hash of the
//! previous one, so a tampered, reordered or missing record is detected when read.
//!
//! [`Executor::resume`]: crate::Executor::resume

mod file;
mod memory;

pub use file::FileJournal;
pub use memory::MemoryJournal;

use crate::executor::RunPolicy;
use crate::{Digest, Receipt, Result, Snapshot, Verdict};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a journal record says happened (or is about to happen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)] // fields are named for what they hold
pub enum Entry {
    /// A run started.
    RunStarted {
        plan: String,
        plan_digest: Digest,
        holder: String,
        policy: RunPolicy,
    },
    /// The lease on the plan was taken (possibly from an expired holder).
    LeaseTaken {
        holder: String,
        taken_over_from: Option<String>,
    },
    /// A crashed or stopped run was resumed.
    Resumed { holder: String },
    /// A baseline capture is about to start.
    CaptureIntent { checkpoint: String },
    /// A baseline was captured.
    Captured {
        checkpoint: String,
        snapshot: Snapshot,
        duration_ms: u64,
    },
    /// A step is about to be applied.
    ApplyIntent { step: String, attempt: u32 },
    /// A step was applied; the receipt is everything needed to undo it.
    Applied {
        step: String,
        receipt: Receipt,
        duration_ms: u64,
    },
    /// An apply failed.
    ApplyFailed {
        step: String,
        attempt: u32,
        error: String,
        maybe_applied: bool,
        transient: bool,
    },
    /// A resumable step saved its cursor.
    Progress {
        step: String,
        cursor: serde_json::Value,
    },
    /// A verifier returned (or failed to run: status inconclusive).
    Verdict {
        verifier: String,
        phase: String,
        verdict: Verdict,
    },
    /// Rollback started.
    RollbackStarted {
        reason: String,
        steps: Vec<String>,
        checkpoints: Vec<String>,
    },
    /// A step is about to be reverted.
    RevertIntent { step: String, attempt: u32 },
    /// A step was reverted.
    Reverted { step: String, duration_ms: u64 },
    /// A revert failed.
    RevertFailed {
        step: String,
        attempt: u32,
        error: String,
    },
    /// A checkpoint restore is about to start.
    RestoreIntent { checkpoint: String },
    /// A checkpoint was restored.
    Restored {
        checkpoint: String,
        method: String,
        items_changed: Option<u64>,
        duration_ms: u64,
    },
    /// A restore failed.
    RestoreFailed { checkpoint: String, error: String },
    /// Parity of a resource with its baseline fingerprint was checked.
    Parity {
        checkpoint: String,
        expected: Digest,
        actual: Digest,
    },
    /// The run committed: every step applied and verified.
    Committed,
    /// The run rolled back, with parity proven for every resource in scope.
    RolledBack { partial: bool },
    /// The rollback could not finish; `remaining` names what is left.
    RollbackFailed {
        remaining: Vec<String>,
        error: String,
    },
    /// After the run ended (committed or rolled back), a baseline snapshot's storage was
    /// released with [`Checkpoint::discard`](crate::Checkpoint::discard); `error` when that
    /// failed (the snapshot is then left in place, named in the report).
    Discarded {
        checkpoint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Entry {
    /// The `type` tag of the entry, e.g. `apply_intent`.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::RunStarted { .. } => "run_started",
            Entry::LeaseTaken { .. } => "lease_taken",
            Entry::Resumed { .. } => "resumed",
            Entry::CaptureIntent { .. } => "capture_intent",
            Entry::Captured { .. } => "captured",
            Entry::ApplyIntent { .. } => "apply_intent",
            Entry::Applied { .. } => "applied",
            Entry::ApplyFailed { .. } => "apply_failed",
            Entry::Progress { .. } => "progress",
            Entry::Verdict { .. } => "verdict",
            Entry::RollbackStarted { .. } => "rollback_started",
            Entry::RevertIntent { .. } => "revert_intent",
            Entry::Reverted { .. } => "reverted",
            Entry::RevertFailed { .. } => "revert_failed",
            Entry::RestoreIntent { .. } => "restore_intent",
            Entry::Restored { .. } => "restored",
            Entry::RestoreFailed { .. } => "restore_failed",
            Entry::Parity { .. } => "parity",
            Entry::Committed => "committed",
            Entry::RolledBack { .. } => "rolled_back",
            Entry::RollbackFailed { .. } => "rollback_failed",
            Entry::Discarded { .. } => "discarded",
        }
    }
}

/// One sealed journal record: an [`Entry`] with its position, time and hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the run, from 0.
    pub seq: u64,
    /// When it was written, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Hash of the previous record (all zeros for the first).
    pub prev: Digest,
    /// What happened.
    pub entry: Entry,
    /// blake3 over `run_id`, `seq`, `at_ms`, `prev` and the entry's JSON.
    pub hash: Digest,
}

impl Record {
    /// Seal `entry` as record `seq` of `run_id`, chained to `prev`.
    pub fn seal(run_id: &str, seq: u64, at_ms: u64, prev: Digest, entry: Entry) -> Record {
        // Seal the entry as a reader will decode it: JSON has no NaN or infinity (serde_json
        // writes them as `null`, read back as `None`), so a verdict value of NaN would
        // otherwise hash differently once read back, and the record would read as tampered.
        let entry = serde_json::to_vec(&entry)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or(entry);
        let hash = Self::compute_hash(run_id, seq, at_ms, &prev, &entry);
        Record {
            seq,
            at_ms,
            prev,
            entry,
            hash,
        }
    }

    fn compute_hash(run_id: &str, seq: u64, at_ms: u64, prev: &Digest, entry: &Entry) -> Digest {
        let json = serde_json::to_vec(entry).unwrap_or_default();
        crate::digest::Hasher::new()
            .field(run_id.as_bytes())
            .field(&seq.to_le_bytes())
            .field(&at_ms.to_le_bytes())
            .field(&prev.0)
            .field(&json)
            .finish()
    }

    /// Check this record's own hash and its place after `prev` (`None`: it must be first).
    ///
    /// # Errors
    /// [`JournalError::Tampered`] or [`JournalError::OutOfOrder`].
    pub fn verify(&self, run_id: &str, prev: Option<&Record>) -> Result<(), JournalError> {
        let (want_seq, want_prev) = match prev {
            // `prev` may be any decoded record: a seq of u64::MAX has no successor.
            Some(p) => (p.seq.saturating_add(1), p.hash),
            None => (0, Digest::default()),
        };
        if self.seq != want_seq || self.prev != want_prev {
            return Err(JournalError::OutOfOrder {
                run_id: run_id.to_string(),
                seq: self.seq,
                expected_seq: want_seq,
            });
        }
        if Self::compute_hash(run_id, self.seq, self.at_ms, &self.prev, &self.entry) != self.hash {
            return Err(JournalError::Tampered {
                run_id: run_id.to_string(),
                seq: self.seq,
            });
        }
        Ok(())
    }
}

/// Verify a whole chain of records of `run_id`.
///
/// # Errors
/// The first [`JournalError`] found.
pub fn verify_chain(run_id: &str, records: &[Record]) -> Result<(), JournalError> {
    let mut prev: Option<&Record> = None;
    for r in records {
        r.verify(run_id, prev)?;
        prev = Some(r);
    }
    Ok(())
}

/// Errors reading or writing a journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A record's hash does not match its content: it was altered.
    #[error("journal of run {run_id}: record {seq} was altered (hash mismatch)")]
    Tampered {
        /// Run.
        run_id: String,
        /// The record.
        seq: u64,
    },
    /// Records are missing, duplicated or reordered.
    #[error("journal of run {run_id}: record {seq} found where {expected_seq} was expected (missing, duplicated or reordered records)")]
    OutOfOrder {
        /// Run.
        run_id: String,
        /// The record's seq.
        seq: u64,
        /// The seq expected at that place.
        expected_seq: u64,
    },
    /// A record cannot be decoded (and is not a torn tail).
    #[error("journal of run {run_id}: record at line {line} is malformed: {message}")]
    Malformed {
        /// Run.
        run_id: String,
        /// 1-based line (or position) of the record.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A concurrent writer appended to the same run.
    #[error("journal of run {run_id}: concurrent append detected at seq {seq}")]
    Concurrent {
        /// Run.
        run_id: String,
        /// Contended position.
        seq: u64,
    },
    /// I/O failure.
    #[error("journal i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The storage backend failed.
    #[error("journal backend: {0}")]
    Backend(String),
}

/// A lease on a key (the plan's name): who holds it, until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The key.
    pub key: String,
    /// The holder.
    pub holder: String,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The previous holder whose expired lease was taken over, if any.
    #[serde(default)]
    pub taken_over_from: Option<String>,
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
/// 4. **Leases.** `acquire_lease` grants the lease when it is free, expired, or already
///    held by the same holder (a renewal); otherwise it fails with
///    [`Error::LeaseHeld`](crate::Error::LeaseHeld). Two holders never hold one key at
///    once.
#[async_trait]
pub trait Journal: Send + Sync {
    /// Append `entry` to the run `run_id` (creating the run at its first record).
    ///
    /// # Errors
    /// I/O or backend errors; a concurrent writer.
    async fn append(&self, run_id: &str, entry: &Entry) -> Result<Record>;

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

    /// Take or renew the lease `key` for `holder` for `ttl`.
    ///
    /// # Errors
    /// [`Error::LeaseHeld`](crate::Error::LeaseHeld) when another holder's lease is live.
    async fn acquire_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<Lease>;

    /// Release the lease if `holder` holds it.
    ///
    /// # Errors
    /// I/O or backend errors.
    async fn release_lease(&self, key: &str, holder: &str) -> Result<()>;
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Decide a lease request against the current lease (shared by journals).
pub(crate) fn decide_lease(
    current: Option<&Lease>,
    key: &str,
    holder: &str,
    ttl: Duration,
    now: u64,
) -> Result<Lease> {
    // Saturate: a huge ttl (`Duration::MAX` for "never expires") must not wrap around into
    // an expiry in the past, which would let another holder take the lease at once.
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let expires_at_ms = now.saturating_add(ttl_ms);
    match current {
        Some(l) if l.holder != holder && l.expires_at_ms > now => Err(crate::Error::LeaseHeld {
            key: key.to_string(),
            holder: l.holder.clone(),
            remaining_ms: l.expires_at_ms - now,
        }),
        Some(l) if l.holder != holder => Ok(Lease {
            key: key.to_string(),
            holder: holder.to_string(),
            expires_at_ms,
            taken_over_from: Some(l.holder.clone()),
        }),
        _ => Ok(Lease {
            key: key.to_string(),
            holder: holder.to_string(),
            expires_at_ms,
            taken_over_from: None,
        }),
    }
}
