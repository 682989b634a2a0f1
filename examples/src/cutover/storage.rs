//! The object store's part of the cutover: its checkpoint, the move and its parity check.

use super::{steps, FROM, TO};
use crate::faults::FailAfterCopies;
use rollback_core::{Checkpoint, Result, Step, Verifier};
use rollback_s3::{ManifestParity, MovePrefix, ObjectBackend, S3Checkpoint};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The checkpoint of every object of `storage`.
pub fn storage_checkpoint(storage: &Arc<dyn ObjectBackend>) -> Arc<dyn Checkpoint> {
    Arc::new(S3Checkpoint::new(storage, ""))
}

/// Objects per batch of the move on `storage`: a listing page (1000 keys) on S3, 25 on a
/// local folder, so that the small embedded fixture fails midway in the drill.
pub fn move_batch(storage: &dyn ObjectBackend) -> usize {
    if storage.scheme() == "s3" {
        1000
    } else {
        25
    }
}

/// The move `v1/` → `v2/`; with `fail_after`, wrapped so that its apply fails (the
/// backend lost midway) once that many objects were copied.
pub fn move_step(storage: &Arc<dyn ObjectBackend>, fail_after: Option<u64>) -> Arc<dyn Step> {
    let batch = move_batch(&**storage);
    let build =
        |b: &Arc<dyn ObjectBackend>| MovePrefix::new(steps::MOVE, b, FROM, TO).batch_size(batch);
    match fail_after {
        Some(n) => Arc::new(FailAfterCopies::new(storage, n, build)),
        None => Arc::new(build(storage)),
    }
}

/// `v2/` holds exactly what `v1/` held at the baseline.
pub fn layout_parity(storage: &Arc<dyn ObjectBackend>, id: &str) -> Arc<dyn Verifier> {
    Arc::new(ManifestParity::against_baseline(id, &S3Checkpoint::new(storage, "")).mapped(FROM, TO))
}

/// Every object under `prefix` of `storage` (its store excluded): key → size.
///
/// # Errors
/// Backend errors.
pub async fn list_objects(
    storage: &dyn ObjectBackend,
    prefix: &str,
) -> Result<BTreeMap<String, u64>> {
    let store = storage.store_location();
    let excluded = |k: &str| {
        store.bucket == storage.name() && !store.prefix.is_empty() && k.starts_with(&store.prefix)
    };
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = storage.list_page(prefix, None, token.as_deref()).await?;
        out.extend(
            page.objects
                .into_iter()
                .filter(|o| !excluded(&o.key))
                .map(|o| (o.key, o.size)),
        );
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Make `storage` hold nothing: objects, snapshots, step state (the bucket or folder
/// must exist, or be creatable on first write).
///
/// # Errors
/// Backend errors.
pub async fn reset_storage(storage: &dyn ObjectBackend) -> Result<()> {
    storage.dangerous_purge("").await?;
    let store = storage.store_backend();
    if store.name() != storage.name() {
        store.dangerous_purge("").await?;
    }
    Ok(())
}
