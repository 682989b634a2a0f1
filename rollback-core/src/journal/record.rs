//! [`Record`]: one hash-chained journal record, its chain check, what a lost tail means,
//! and [`JournalError`].

use super::Entry;
use crate::{Digest, Result};
use serde::{Deserialize, Serialize};

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
/// longer reach. Returned by [`Journal::lost_tail`](super::Journal::lost_tail).
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
        // Only entries that can hold a float (a verdict's value, a plan's thresholds) are
        // read back here; every other one is JSON strings, integers and JSON values, which
        // read back as they were written (checked in debug builds, which the tests run).
        let json = serde_json::to_vec(&entry).unwrap_or_default();
        let (entry, json) = if entry.may_hold_floats() {
            match serde_json::from_slice::<Entry>(&json) {
                Ok(read) => {
                    let again = serde_json::to_vec(&read).unwrap_or_default();
                    (read, again)
                }
                Err(_) => (entry, json),
            }
        } else {
            (entry, json)
        };
        debug_assert!(
            serde_json::from_slice::<Entry>(&json)
                .ok()
                .and_then(|read| serde_json::to_vec(&read).ok())
                .is_some_and(|again| again == json),
            "a {} entry does not read back as it was sealed: {}",
            entry.kind(),
            String::from_utf8_lossy(&json)
        );
        let hash = Self::hash_json(run_id, seq, at_ms, &prev, epoch, &json);
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
        Self::hash_json(run_id, seq, at_ms, prev, epoch, &json)
    }

    /// The hash of a record whose entry encodes to `json`.
    fn hash_json(
        run_id: &str,
        seq: u64,
        at_ms: u64,
        prev: &Digest,
        epoch: u64,
        json: &[u8],
    ) -> Digest {
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
        h.field(json).finish()
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
