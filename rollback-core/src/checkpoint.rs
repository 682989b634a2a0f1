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
///
/// Adapters build one with [`Snapshot::new`] (the type is `#[non_exhaustive]`, so a field
/// added later breaks no adapter):
///
/// ```
/// use rollback_core::{Digest, Snapshot};
/// let content = b"id,name\n1,Ada\n";
/// let snap = Snapshot::new(
///     "snap-1",
///     "postgres:public.customers",
///     "example.csv",
///     Digest::of(content),
///     Digest::of(b"fingerprint of the table"),
///     serde_json::json!({ "path": "/backups/snap-1.csv" }),
/// )
/// .with_size(content.len() as u64);
/// assert_eq!(snap.size_bytes, Some(14));
/// assert!(snap.captured_at_ms > 0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
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
    /// A snapshot captured now: `digest` is blake3 of the captured content (what
    /// `restore` re-checks), `fingerprint` the resource's fingerprint at capture,
    /// `descriptor` where the adapter keeps the content.
    pub fn new(
        id: impl Into<String>,
        resource: impl Into<String>,
        kind: impl Into<String>,
        digest: Digest,
        fingerprint: Digest,
        descriptor: serde_json::Value,
    ) -> Self {
        Snapshot {
            id: id.into(),
            resource: resource.into(),
            kind: kind.into(),
            digest,
            fingerprint,
            captured_at_ms: crate::now_ms(),
            size_bytes: None,
            descriptor,
        }
    }

    /// The size of the captured content in bytes.
    pub fn with_size(mut self, bytes: u64) -> Self {
        self.size_bytes = Some(bytes);
        self
    }

    /// Set the capture time (milliseconds since the Unix epoch), e.g. when the content was
    /// read from a database snapshot taken earlier.
    pub fn captured_at(mut self, ms: u64) -> Self {
        self.captured_at_ms = ms;
        self
    }

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
    /// Writes made since capture by others than the run (the application's) that this
    /// restore discarded, where the checkpoint can tell (`None`: it cannot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<Discarded>,
    /// The parity proof taken by the restore itself, in its own transaction under the lock
    /// that kept writers out (contract clause 5): the executor checks it instead of a
    /// fingerprint taken afterwards, which concurrent writers could race.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// Items written since capture by others than the run that a restore discarded — or,
/// where the checkpoint cannot tell writers apart, every item written since capture that
/// it reverted (`includes_run`): the restore's recovery point, by items rather than by
/// time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Discarded {
    /// How many (rows, objects, flags): exactly, or at least (see `exact`).
    pub items: u64,
    /// Whether `items` is exact (an undo log knows) or a lower bound (a copy compared by
    /// counts).
    pub exact: bool,
    /// Their keys, where known (capped by the checkpoint; `items` counts them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Items both the run and the application wrote, and how each was resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// The checkpoint cannot tell the run's writes from others': `items` counts every
    /// item written since capture that the restore reverted, the run's own included.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub includes_run: bool,
}

/// A fingerprint a restore took under its own lock, to be compared with the snapshot's
/// baseline fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The fingerprint: of the resource as restored, or — for a restore that keeps the
    /// application's writes — of the resource with those items set aside (each replaced
    /// by its image at capture), which equals the baseline exactly when everything else is
    /// back at its baseline.
    pub fingerprint: Digest,
    /// Items set aside for the comparison (kept application writes); 0 for a full restore.
    #[serde(default)]
    pub set_aside: u64,
    /// How the fingerprint was established when the restore did not read the whole
    /// resource for it — e.g. from the parts the restore changed, re-read, and the stored
    /// digests of the rest, with what makes that sound — or why it read everything after
    /// all. `None`: the whole resource was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl Proof {
    /// The proof of a full restore: the resource's fingerprint under the restore's lock.
    pub fn of(fingerprint: Digest) -> Self {
        Proof {
            fingerprint,
            set_aside: 0,
            method: None,
        }
    }
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
    /// With what the restore discarded of others' writes.
    pub fn discarded(mut self, d: Discarded) -> Self {
        self.discarded = Some(d);
        self
    }
    /// With the parity proof taken under the restore's lock.
    pub fn proof(mut self, p: Proof) -> Self {
        self.proof = Some(p);
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
/// 5. **Parity.** After `restore` returns `Ok`, the resource is back at the snapshot:
///    with no one else writing, `fingerprint()` equals `snapshot.fingerprint`. A restore
///    that can take its own proof under the lock that keeps writers out returns it
///    ([`Restored::proof`]), so parity holds at the restore's commit whatever writers do
///    next; a [`selective`](Checkpoint::selective) restore proves it with the
///    application's writes set aside. One that answers
///    [`restore_proves`](Checkpoint::restore_proves) returns that proof from every
///    restore, a restore with nothing to do included.
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
///    same key already wrote (see the Step contract, clause 9). Checked by
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

    /// Whether `restore` undoes only the run's own writes and keeps everyone else's (an
    /// undo log that knows who wrote each change). The executor then restores such a
    /// checkpoint whenever it differs from its baseline after the compensations. Any other
    /// checkpoint's restore discards every write since capture, so it is restored only for
    /// effects no compensation undoes. Default: `false`.
    fn selective(&self) -> bool {
        false
    }

    /// Whether `restore` costs little when the resource is unchanged (it finds nothing to
    /// put back without reading the whole resource: returning [`Restored`] with method
    /// `noop`) and always returns [`Restored::proof`], taken under its own lock. The
    /// executor then restores such a checkpoint without fingerprinting it first, so a
    /// rollback reads only what the restore reads. Default: `false`.
    fn restore_proves(&self) -> bool {
        false
    }

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

/// A shared or boxed checkpoint is a checkpoint: every method forwards.
macro_rules! forward_checkpoint {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: Checkpoint + ?Sized> Checkpoint for $ptr {
            fn resource(&self) -> &str {
                (**self).resource()
            }
            async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
                (**self).capture(ctx).await
            }
            async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
                (**self).restore(snapshot, ctx).await
            }
            fn selective(&self) -> bool {
                (**self).selective()
            }
            fn restore_proves(&self) -> bool {
                (**self).restore_proves()
            }
            async fn fingerprint(&self, ctx: &Context) -> Result<Digest> {
                (**self).fingerprint(ctx).await
            }
            async fn discard(&self, snapshot: &Snapshot, ctx: &Context) -> Result<()> {
                (**self).discard(snapshot, ctx).await
            }
        }
    )*};
}
forward_checkpoint!(std::sync::Arc<T>, Box<T>);
