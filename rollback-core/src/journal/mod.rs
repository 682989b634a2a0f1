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
use crate::{Digest, Discarded, Proof, Receipt, Result, Snapshot, Verdict};
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
    /// What the run's report needs to know about its plan (steps, checkpoints, verifiers,
    /// objectives, owners), written right after `run_started` so that the report can be
    /// rebuilt from the records alone. Runs journaled before this record existed lack it
    /// (see [`RunReport::rebuild`](crate::RunReport::rebuild)).
    PlanDescribed(Box<crate::PlanDescription>),
    /// The lease on the plan was taken (possibly from an expired holder), with the fencing
    /// epoch of the grant: from this record on, the run refuses appends of older epochs.
    LeaseTaken {
        holder: String,
        taken_over_from: Option<String>,
        #[serde(default)]
        epoch: u64,
    },
    /// A crashed or stopped run was resumed.
    Resumed { holder: String },
    /// A baseline capture is about to start.
    CaptureIntent { checkpoint: String },
    /// A checkpoint's baseline was fingerprinted without a snapshot: no undo path of the
    /// plan restores it (compensations undo every change to it), so only parity is
    /// checked against this fingerprint after a rollback.
    Fingerprinted {
        checkpoint: String,
        fingerprint: Digest,
        duration_ms: u64,
    },
    /// After the compensations, a checkpoint differs from its baseline and is not
    /// restored: no step left to undo needs it, and its restore would discard the writes
    /// others made since capture. Parity is not proven for it; `reason` says why.
    NotRestored { checkpoint: String, reason: String },
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
        /// Writes by others than the run that the restore discarded, where known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        discarded: Option<Discarded>,
        /// The parity proof the restore took under its own lock, if it could.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<Proof>,
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
    /// A committed run is being rolled back
    /// ([`Executor::rollback_committed`](crate::Executor::rollback_committed)): its commit
    /// is revoked and the rollback of `steps`, restoring `checkpoints`, starts, as
    /// `rollback_started` does before a commit. One record, so a crash leaves either the
    /// committed run or a rollback that `resume` finishes.
    RollbackAfterCommit {
        reason: String,
        holder: String,
        steps: Vec<String>,
        checkpoints: Vec<String>,
    },
    /// A journal dropped the cut-short bytes of a record after the last complete one (a
    /// write torn by a crash) before appending; `kind` is the entry type of the cut record
    /// when enough of it survived to tell.
    TailTruncated {
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
    },
    /// Records at the end of the run were lost (see [`Journal::lost_tail`]) and resume was
    /// told explicitly what to assume about them.
    TailLossResolved {
        /// What was lost, as the journal described it.
        lost: String,
        /// The assumption made.
        assumed: TailAssumption,
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
            Entry::PlanDescribed(_) => "plan_described",
            Entry::LeaseTaken { .. } => "lease_taken",
            Entry::Resumed { .. } => "resumed",
            Entry::CaptureIntent { .. } => "capture_intent",
            Entry::Captured { .. } => "captured",
            Entry::Fingerprinted { .. } => "fingerprinted",
            Entry::NotRestored { .. } => "not_restored",
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
            Entry::RollbackAfterCommit { .. } => "rollback_after_commit",
            Entry::Discarded { .. } => "discarded",
            Entry::TailTruncated { .. } => "tail_truncated",
            Entry::TailLossResolved { .. } => "tail_loss_resolved",
        }
    }

    /// The step, checkpoint (resource) or verifier the entry is about, if one.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Entry::CaptureIntent { checkpoint }
            | Entry::Captured { checkpoint, .. }
            | Entry::Fingerprinted { checkpoint, .. }
            | Entry::NotRestored { checkpoint, .. }
            | Entry::RestoreIntent { checkpoint }
            | Entry::Restored { checkpoint, .. }
            | Entry::RestoreFailed { checkpoint, .. }
            | Entry::Parity { checkpoint, .. }
            | Entry::Discarded { checkpoint, .. } => Some(checkpoint),
            Entry::ApplyIntent { step, .. }
            | Entry::Applied { step, .. }
            | Entry::ApplyFailed { step, .. }
            | Entry::Progress { step, .. }
            | Entry::RevertIntent { step, .. }
            | Entry::Reverted { step, .. }
            | Entry::RevertFailed { step, .. } => Some(step),
            Entry::Verdict { verifier, .. } => Some(verifier),
            _ => None,
        }
    }

    /// Whether this entry ends a run (`committed`, `rolled_back`): journals that can lose
    /// a tail witness these records beyond the run's own file (see
    /// [`Journal::lost_tail`]).
    pub fn is_outcome(&self) -> bool {
        matches!(self, Entry::Committed | Entry::RolledBack { .. })
    }
}

/// What [`Executor::resume`](crate::Executor::resume) assumes about records a journal
/// lost at the end of a run, when the loss may have hidden the run's outcome (see
/// [`Error::LostTail`](crate::Error::LostTail) and
/// [`Executor::assume_lost_tail`](crate::Executor::assume_lost_tail)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TailAssumption {
    /// The lost records reached `committed`: it is recorded again and the run ends
    /// committed. Nothing is rolled back.
    Committed,
    /// The lost records reached `rolled_back`: it is recorded again and the run ends
    /// rolled back. Nothing is restored again (writes made since are kept).
    RolledBack,
    /// The run never reached an outcome: resume continues from the surviving records
    /// under the run's policy (an unfinished apply is rolled back, restoring checkpoints
    /// where resources differ from their baseline).
    NotCommitted,
}

impl std::fmt::Display for TailAssumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TailAssumption::Committed => "committed",
            TailAssumption::RolledBack => "rolled_back",
            TailAssumption::NotCommitted => "not_committed",
        })
    }
}

/// Records a journal knows it lost at the end of a run: the cut-short bytes of a torn
/// write, or an outcome it witnessed (outside the run's records) that the records no
/// longer reach. Returned by [`Journal::lost_tail`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LostTail {
    /// Bytes of a record cut short after the last complete record (0: none).
    pub torn_bytes: u64,
    /// The entry kind of the cut record, when enough of it survived to tell.
    pub torn_kind: Option<String>,
    /// An outcome record the journal witnessed that the surviving records do not reach.
    pub witnessed: Option<WitnessedOutcome>,
}

impl LostTail {
    /// Whether the lost records may have held the outcome `kind` (`committed`,
    /// `rolled_back`): it was witnessed, or the torn record is of that kind. A torn record
    /// of unknown kind is not counted here (the executor weighs it against the run's
    /// state).
    pub fn names_outcome(&self, kind: &str) -> bool {
        self.witnessed.as_ref().is_some_and(|w| w.kind == kind)
            || self.torn_kind.as_deref() == Some(kind)
    }
}

impl std::fmt::Display for LostTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.torn_bytes > 0 {
            parts.push(match &self.torn_kind {
                Some(k) => format!("a {k} record cut short ({} bytes)", self.torn_bytes),
                None => format!(
                    "a record cut short before its type ({} bytes)",
                    self.torn_bytes
                ),
            });
        }
        if let Some(w) = &self.witnessed {
            parts.push(format!(
                "records up to a witnessed {} at seq {}",
                w.kind, w.seq
            ));
        }
        f.write_str(&parts.join(" and "))
    }
}

/// An outcome record as witnessed outside a run's records (see [`LostTail`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessedOutcome {
    /// Its seq.
    pub seq: u64,
    /// Its entry kind (`committed`, `rolled_back`).
    pub kind: String,
    /// Its record hash.
    pub hash: Digest,
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
    /// The fencing epoch of the writer's lease (0: written outside any lease). Epochs
    /// never decrease along a run: a journal refuses an append whose epoch is older than
    /// the run's last record's.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// What happened.
    pub entry: Entry,
    /// blake3 over `run_id`, `seq`, `at_ms`, `prev`, the epoch (when not 0) and the
    /// entry's JSON.
    pub hash: Digest,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Record {
    /// Seal `entry` as record `seq` of `run_id`, chained to `prev`, written under the
    /// fencing `epoch`.
    pub fn seal(
        run_id: &str,
        seq: u64,
        at_ms: u64,
        prev: Digest,
        epoch: u64,
        entry: Entry,
    ) -> Record {
        // Seal the entry as a reader will decode it: JSON has no NaN or infinity (serde_json
        // writes them as `null`, read back as `None`), so a verdict value of NaN would
        // otherwise hash differently once read back, and the record would read as tampered.
        let entry = serde_json::to_vec(&entry)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or(entry);
        let hash = Self::compute_hash(run_id, seq, at_ms, &prev, epoch, &entry);
        Record {
            seq,
            at_ms,
            prev,
            epoch,
            entry,
            hash,
        }
    }

    fn compute_hash(
        run_id: &str,
        seq: u64,
        at_ms: u64,
        prev: &Digest,
        epoch: u64,
        entry: &Entry,
    ) -> Digest {
        let json = serde_json::to_vec(entry).unwrap_or_default();
        let mut h = crate::digest::Hasher::new();
        h.field(run_id.as_bytes())
            .field(&seq.to_le_bytes())
            .field(&at_ms.to_le_bytes())
            .field(&prev.0);
        // Records written outside any lease (epoch 0) hash as they did before epochs
        // existed, so older journals stay readable.
        if epoch != 0 {
            h.field(b"epoch").field(&epoch.to_le_bytes());
        }
        h.field(&json).finish()
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
        if let Some(p) = prev.filter(|p| self.epoch < p.epoch) {
            return Err(JournalError::EpochRegressed {
                run_id: run_id.to_string(),
                seq: self.seq,
                epoch: self.epoch,
                previous: p.epoch,
            });
        }
        if Self::compute_hash(
            run_id,
            self.seq,
            self.at_ms,
            &self.prev,
            self.epoch,
            &self.entry,
        ) != self.hash
        {
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
    /// A record carries an older fencing epoch than the record before it: a writer whose
    /// lease had been taken over wrote after the takeover (the journal failed to fence it).
    #[error("journal of run {run_id}: record {seq} has epoch {epoch}, older than the epoch {previous} before it (a fenced writer's record)")]
    EpochRegressed {
        /// Run.
        run_id: String,
        /// The record.
        seq: u64,
        /// Its epoch.
        epoch: u64,
        /// The epoch of the record before it.
        previous: u64,
    },
    /// The run's records end before an outcome the journal witnessed: records were lost.
    /// Only an explicit [`Entry::TailLossResolved`] may extend such a run.
    #[error("journal of run {run_id}: records were lost after seq {last_seq:?} ({lost}); resume with an explicit assumption (Executor::assume_lost_tail)")]
    TailLost {
        /// Run.
        run_id: String,
        /// The last surviving record.
        last_seq: Option<u64>,
        /// What was lost.
        lost: String,
    },
    /// I/O failure.
    #[error("journal i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The storage backend failed.
    #[error("journal backend: {0}")]
    Backend(String),
}

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
            let records = self.records(&run_id).await?;
            if matches!(
                records.first(),
                Some(Record { entry: Entry::RunStarted { plan: name, .. }, .. }) if name == plan
            ) {
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
