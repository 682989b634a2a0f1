//! [`DeleteObjects`]: delete every object under a prefix.

use super::Area;
use crate::backend::ObjectBackend;
use crate::bucket::DELETE_BATCH;
use crate::error::after_writes;
use crate::listing::{
    lister, raw_lister, resource_id, url, version_fix, version_lister, versioned, Objects,
    VersionFix, Work,
};
use async_trait::async_trait;
use rollback_core::{Context, Error, Receipt, Result, Reversibility, Step};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Delete every object under a prefix.
///
/// Reversibility is declared, since it depends on the bucket:
/// - [`DeleteObjects::new`]: **restore-only**. On an unversioned bucket a delete destroys
///   data; the plan builder refuses the step unless a checkpoint covers the resources
///   it touches (by default `s3:<bucket>/<prefix>`; see [`DeleteObjects::touching`]).
/// - [`DeleteObjects::irreversible`]: nothing undoes it; the plan needs either a covering
///   checkpoint or `approve_irreversible`.
/// - [`DeleteObjects::versioned`]: **compensable**, for a bucket with versioning enabled
///   (checked at apply, which refuses otherwise). Apply records each deleted key's
///   version in the step's area before deleting it (a delete marker: nothing is lost);
///   revert makes the recorded versions current again.
///
/// ```
/// use rollback_core::Plan;
/// use rollback_s3::{DeleteObjects, S3Bucket, S3Settings};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let bucket = S3Bucket::connect(&S3Settings::new("http://127.0.0.1:1", "us-east-1", "a", "b"), "media");
/// // No checkpoint covers s3:media/v1/: the plan is refused before anything runs.
/// let refused = Plan::builder("cleanup")
///     .step("storage", DeleteObjects::new("drop-v1", &bucket, "v1/"), &[])
///     .build();
/// assert!(refused.is_err());
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct DeleteObjects {
    id: String,
    bucket: Objects,
    prefix: String,
    reversibility: Reversibility,
    touches: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DeleteReceipt {
    prefix: String,
    deleted: u64,
    versioned: bool,
}

/// One deleted key and the version that was current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Deleted {
    key: String,
    version: String,
    size: u64,
    etag: String,
    last_modified_ms: i64,
}

impl DeleteObjects {
    /// A restore-only step `id` deleting every object of `bucket` under `prefix`.
    pub fn new<B>(id: &str, bucket: &B, prefix: &str) -> Self
    where
        B: ObjectBackend + Clone + 'static,
    {
        DeleteObjects {
            id: id.into(),
            touches: vec![resource_id(bucket, prefix)],
            bucket: Arc::new(bucket.clone()),
            prefix: prefix.into(),
            reversibility: Reversibility::RestoreOnly,
        }
    }

    /// Declare the step irreversible (for a plan that approves it explicitly).
    pub fn irreversible(mut self) -> Self {
        self.reversibility = Reversibility::Irreversible;
        self
    }

    /// Declare the bucket versioned: the step becomes compensable (apply refuses if the
    /// bucket does not have versioning enabled).
    pub fn versioned(mut self) -> Self {
        self.reversibility = Reversibility::Compensable;
        self
    }

    /// Name the resources (checkpoint resource ids) this step changes. Default:
    /// `s3:<bucket>/<prefix>`.
    pub fn touching<I, S>(mut self, resources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.touches = resources.into_iter().map(Into::into).collect();
        self
    }

    async fn delete_unversioned(&self, ctx: &Context) -> Result<u64> {
        let mut l = lister(&self.bucket, &self.prefix);
        let mut n = 0u64;
        while let Some(page) = l.next_page().await? {
            if ctx.is_cancelled() {
                return Err(Error::Cancelled);
            }
            n += page.len() as u64;
            self.bucket
                .delete_keys(page.into_iter().map(|o| o.key).collect())
                .await?;
            ctx.progress(&self.id, n, None, "objects deleted");
        }
        Ok(n)
    }

    async fn delete_versioned(&self, area: &Area, ctx: &Context) -> Result<u64> {
        // Continue numbering batch records after those of an interrupted apply.
        let mut batch_no = raw_lister(area.store(), &area.key("deleted/"))
            .count()
            .await?;
        let mut vl = version_lister(&self.bucket, &self.prefix);
        let mut n = 0u64;
        let mut batch: Vec<Deleted> = Vec::new();
        loop {
            let next = vl.next().await?;
            let end = next.is_none();
            if let Some(kv) = next {
                if let Some(cur) = kv.current() {
                    batch.push(Deleted {
                        key: kv.key.clone(),
                        version: cur.version_id.clone(),
                        size: cur.size,
                        etag: cur.etag.clone(),
                        last_modified_ms: cur.last_modified_ms,
                    });
                }
            }
            if batch.len() >= DELETE_BATCH || (end && !batch.is_empty()) {
                if ctx.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                // Record first, then delete: revert finds every version it must bring back.
                area.put_json(&format!("deleted/{batch_no:06}.json"), &batch)
                    .await?;
                batch_no += 1;
                n += batch.len() as u64;
                versioned(&*self.bucket, "a versioned delete")?
                    .delete_versions(batch.drain(..).map(|d| (d.key, None)).collect())
                    .await?;
                ctx.progress(&self.id, n, None, "objects deleted");
            }
            if end {
                return Ok(n);
            }
        }
    }

    async fn revert_versioned(&self, area: &Area, ctx: &Context) -> Result<u64> {
        let b = &self.bucket;
        let name = b.name().to_string();
        let mut records = raw_lister(area.store(), &area.key("deleted/"));
        let mut vl = version_lister(b, &self.prefix);
        let mut cur = vl.next().await?;
        let mut work = Work::default();
        while let Some(rec) = records.next().await? {
            let batch: Vec<Deleted> = match area.store().get(&rec.key).await? {
                Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                    Error::invalid(format!("delete record {} is malformed: {e}", rec.key))
                })?,
                None => continue,
            };
            for d in batch {
                while cur.as_ref().is_some_and(|kv| kv.key < d.key) {
                    cur = vl.next().await?;
                }
                let Some(kv) = cur.as_ref().filter(|kv| kv.key == d.key) else {
                    return Err(Error::conflict(format!(
                        "step {}: no version of {} is left to bring back",
                        self.id, d.key
                    )));
                };
                match version_fix(kv, &d.version, d.size, &d.etag, d.last_modified_ms) {
                    VersionFix::None => {}
                    VersionFix::RemoveMarkers(ids) => {
                        for id in ids {
                            work.deletes.push((d.key.clone(), Some(id)));
                        }
                    }
                    VersionFix::CopyBack => work.copies.push((
                        name.clone(),
                        d.key.clone(),
                        Some(d.version.clone()),
                        d.key.clone(),
                        None,
                    )),
                }
            }
            if work.len() >= DELETE_BATCH {
                work.flush(b).await?;
                ctx.progress(&self.id, work.changed, None, "objects restored");
            }
        }
        work.flush(b).await?;
        Ok(work.changed)
    }
}

#[async_trait]
impl Step for DeleteObjects {
    fn id(&self) -> &str {
        &self.id
    }

    fn reversibility(&self) -> Reversibility {
        self.reversibility
    }

    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }

    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "s3.delete_objects",
            "bucket": self.bucket.name(),
            "prefix": self.prefix,
            "reversibility": self.reversibility,
        })
    }

    fn describe(&self) -> String {
        format!("{}: delete {}*", self.id, url(&*self.bucket, &self.prefix))
    }

    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        let area = Area::new(&self.bucket, ctx, &self.id);
        if let Some(r) = area.get_json::<DeleteReceipt>("done.json").await? {
            return Ok(Receipt::new(&r));
        }
        let versioned = self.reversibility == Reversibility::Compensable;
        let on = match self.bucket.as_versioned() {
            Some(v) => v.is_versioned().await?,
            None => false,
        };
        if versioned && !on {
            return Err(Error::invalid(format!(
                "step {}: declared versioned, but bucket {} does not have versioning enabled; \
                 refusing an irreversible delete",
                self.id,
                self.bucket.name()
            )));
        }
        let run = async {
            let deleted = if versioned {
                self.delete_versioned(&area, ctx).await?
            } else {
                self.delete_unversioned(ctx).await?
            };
            let r = DeleteReceipt {
                prefix: self.prefix.clone(),
                deleted,
                versioned,
            };
            area.put_json("done.json", &r).await?;
            Ok(Receipt::new(&r))
        };
        run.await.map_err(after_writes)
    }

    async fn revert(&self, _receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        let area = Area::new(&self.bucket, ctx, &self.id);
        match self.reversibility {
            Reversibility::Irreversible => Err(Error::Irreversible {
                step: self.id.clone(),
                reason: format!(
                    "objects under {} were deleted",
                    url(&*self.bucket, &self.prefix)
                ),
            }),
            Reversibility::RestoreOnly => {
                // The covering checkpoint brings the objects back; drop the bookkeeping
                // so that a later apply in this run deletes again.
                area.purge().await?;
                Ok(())
            }
            Reversibility::Compensable => {
                let n = self.revert_versioned(&area, ctx).await?;
                area.purge().await?;
                tracing::info!(step = %self.id, restored = n, "delete reverted");
                Ok(())
            }
        }
    }
}
