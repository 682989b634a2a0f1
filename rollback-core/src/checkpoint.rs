//! The [`Checkpoint`] trait: capture, restore and fingerprint one resource.

use crate::{Context, Digest, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A serializable descriptor of captured state.
///
/// The descriptor says where the captured state lives (a snapshot schema, a set of object
/// versions, a JSON document) and carries two digests:
/// - `digest`: blake3 of the captured content itself; [`Checkpoint::restore`] recomputes
///   it from what it is about to restore and refuses on mismatch;
/// - `fingerprint`: the resource's [`Checkpoint::fingerprint`] at capture time; after a
///   restore the resource's fingerprint must equal it again (parity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unique id of this snapshot.
    pub id: String,
    /// The resource it is of (see [`Checkpoint::resource`]).
    pub resource: String,
    /// Adapter-defined kind, e.g. `"pg.table-copy"`, `"s3.versions"`, `"flags.state"`.
    pub kind: String,
    /// blake3 of the captured content.
    pub digest: Digest,
    /// The resource's fingerprint when it was captured.
    pub fingerprint: Digest,
    /// Capture time, milliseconds since the Unix epoch.
    pub captured_at_ms: u64,
    /// Size of the captured content in bytes, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Adapter-defined descriptor (locations, versions, inline content).
    pub descriptor: serde_json::Value,
}

impl Snapshot {
    /// Parse a snapshot from JSON bytes.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] for anything that is not a well-formed snapshot.
    ///
    /// ```
    /// use rollback_core::Snapshot;
    /// assert!(Snapshot::from_json(b"{not json").is_err());
    /// ```
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| crate::Error::invalid(format!("malformed snapshot: {e}")))
    }

    /// Check that this snapshot is of `resource`.
    ///
    /// # Errors
    /// [`crate::Error::WrongResource`] when it is not.
    pub fn ensure_resource(&self, resource: &str) -> Result<()> {
        if self.resource != resource {
            return Err(crate::Error::WrongResource {
                expected: resource.to_string(),
                found: self.resource.clone(),
            });
        }
        Ok(())
    }

    /// Check that `actual`, the digest of the content about to be restored, is the
    /// digest this snapshot carries.
    ///
    /// # Errors
    /// [`crate::Error::DigestMismatch`] when it is not.
    pub fn ensure_digest(&self, actual: Digest) -> Result<()> {
        if self.digest != actual {
            return Err(crate::Error::DigestMismatch {
                resource: self.resource.clone(),
                expected: self.digest,
                actual,
            });
        }
        Ok(())
    }
}

/// What a restore did, for the run report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    /// How it was restored, e.g. `"swap"`, `"copy"`, `"versions"`, `"noop"`.
    pub method: String,
    /// How many items (rows, objects, flags) were written back, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_changed: Option<u64>,
    /// Anything else worth reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Restored {
    /// A restore done by `method`.
    pub fn by(method: impl Into<String>) -> Self {
        Restored {
            method: method.into(),
            ..Default::default()
        }
    }
    /// With the number of items written back.
    pub fn changed(mut self, n: u64) -> Self {
        self.items_changed = Some(n);
        self
    }
    /// With a note.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// Captures and restores one resource: a table, a schema, a bucket prefix, a set of flags.
///
/// # Contract
/// An implementation promises:
/// 1. **Resource identity.** [`resource`](Checkpoint::resource) is stable across
///    processes and names exactly what is captured; two checkpoints of different
///    resources never share it.
/// 2. **Capture is read-only** for the resource: capturing changes neither its data nor its
///    fingerprint (it may write to a snapshot area).
/// 3. **Verifiable snapshot.** The returned [`Snapshot`] names this resource, carries the
///    blake3 `digest` of the captured content and the resource's `fingerprint` at
///    capture.
/// 4. **Refusal.** `restore` refuses, before changing anything, a snapshot of another
///    resource ([`Error::WrongResource`](crate::Error::WrongResource)) and one whose
///    content no longer hashes to its digest
///    ([`Error::DigestMismatch`](crate::Error::DigestMismatch)).
/// 5. **Parity.** After `restore` returns `Ok`, `fingerprint()` equals
///    `snapshot.fingerprint`.
/// 6. **Idempotent restore.** Restoring the same snapshot again, or after a restore that
///    was interrupted at any point, succeeds and gives the same state.
/// 7. **Deterministic fingerprint.** `fingerprint` depends only on the resource's state:
///    equal states give equal fingerprints, and any change of data the checkpoint covers
///    changes it.
/// 8. **Idempotent discard.** [`discard`](Checkpoint::discard) releases only the
///    snapshot's own storage, never the resource, and discarding a snapshot again succeeds
///    (the executor does so when a crash fell between a release and its journal record).
/// 9. **Fenced restore** (where the backend can check it atomically with the write):
///    `restore` under [`Context::fence`] is refused with
///    [`Error::Fenced`](crate::Error::Fenced), changing nothing, when a newer epoch of the
///    same key already wrote (see the Step contract, clause 8). Checked by
///    `conformance::restore_is_fenced`.
#[async_trait]
pub trait Checkpoint: Send + Sync {
    /// The stable id of the covered resource, e.g. `postgres:public.customers`.
    fn resource(&self) -> &str;

    /// Capture the resource's current state.
    ///
    /// # Errors
    /// Backend errors; nothing is changed on failure.
    async fn capture(&self, ctx: &Context) -> Result<Snapshot>;

    /// Put the resource back into the captured state.
    ///
    /// # Errors
    /// [`Error::WrongResource`](crate::Error::WrongResource),
    /// [`Error::DigestMismatch`](crate::Error::DigestMismatch), backend errors.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the resource partly restored; restoring again
    /// (clause 6) finishes the job.
    async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored>;

    /// A digest of the resource's current state, cheap enough to compare before and after.
    ///
    /// # Errors
    /// Backend errors.
    async fn fingerprint(&self, ctx: &Context) -> Result<Digest>;

    /// Release the storage a snapshot holds; the executor calls it once a run has ended
    /// (see [`SnapshotRetention`](crate::SnapshotRetention)). Idempotent (clause 8).
    /// Default: nothing.
    ///
    /// # Errors
    /// Backend errors.
    async fn discard(&self, _snapshot: &Snapshot, _ctx: &Context) -> Result<()> {
        Ok(())
    }
}
