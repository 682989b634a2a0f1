//! [`RewriteObjects`]: rewrite objects through a user function, keeping the originals.

use super::put::restore_backups;
use super::Area;
use crate::backend::{ObjectBackend, PutMode};
use crate::bucket::ObjectInfo;
use crate::error::after_writes;
use crate::listing::{lister, raw_lister, resource_id, run_concurrent, url, Objects};
use async_trait::async_trait;
use bytes::Bytes;
use rollback_core::{Context, Error, Receipt, Result, Reversibility, Step};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// The rewrite function: given a key and its content, the new content (`None`: leave the
/// object as it is). It must be deterministic: a resumed apply calls it again for
/// objects whose rewrite was interrupted.
pub type RewriteFn = Arc<dyn Fn(&str, &Bytes) -> Result<Option<Bytes>> + Send + Sync>;

/// Rewrite every object under a prefix through a function (a format migration: add a
/// field to every JSON document). Compensable.
///
/// Before rewriting an object, apply copies it (server-side) to the step's area of the
/// store; an object whose backup exists and whose ETag differs from it is already done,
/// so a resumed apply never rewrites twice. Revert copies every backup back.
///
/// ```no_run
/// # fn demo(bucket: rollback_s3::S3Bucket) {
/// use rollback_s3::RewriteObjects;
/// let step = RewriteObjects::new("add-schema-field", &bucket, "v2/", "schema-v2", |_key, body| {
///     let mut doc: serde_json::Value = serde_json::from_slice(body)
///         .map_err(|e| rollback_core::Error::invalid(e.to_string()))?;
///     doc["schema"] = serde_json::json!(2);
///     Ok(Some(serde_json::to_vec(&doc).unwrap_or_default().into()))
/// });
/// # let _ = step; }
/// ```
#[derive(Clone)]
pub struct RewriteObjects {
    id: String,
    bucket: Objects,
    prefix: String,
    label: String,
    f: RewriteFn,
    touches: Vec<String>,
}

impl fmt::Debug for RewriteObjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RewriteObjects")
            .field("id", &self.id)
            .field("bucket", &self.bucket.name())
            .field("prefix", &self.prefix)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RewriteReceipt {
    prefix: String,
    rewritten: u64,
    unchanged: u64,
}

impl RewriteObjects {
    /// A step `id` rewriting every object of `bucket` under `prefix` with `f`. `label`
    /// names the function's version in the plan's spec (change it when `f` changes).
    pub fn new<B, F>(id: &str, bucket: &B, prefix: &str, label: &str, f: F) -> Self
    where
        B: ObjectBackend + Clone + 'static,
        F: Fn(&str, &Bytes) -> Result<Option<Bytes>> + Send + Sync + 'static,
    {
        RewriteObjects {
            id: id.into(),
            touches: vec![resource_id(bucket, prefix)],
            bucket: Arc::new(bucket.clone()),
            prefix: prefix.into(),
            label: label.into(),
            f: Arc::new(f),
        }
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

    /// Rewrite one object; `backup` is its backup's ETag when one exists. Returns
    /// whether the object was changed.
    async fn rewrite_one(
        &self,
        area: &Area,
        o: ObjectInfo,
        backup: Option<String>,
    ) -> Result<bool> {
        match backup {
            Some(b) if b != o.etag => return Ok(true), // rewritten by an earlier apply
            Some(_) => {}
            None => {
                area.store()
                    .copy(
                        self.bucket.name(),
                        &o.key,
                        &area.key(&format!("prev/{}", o.key)),
                        Some(&o.etag),
                    )
                    .await?;
            }
        }
        let Some(body) = self.bucket.get(&o.key).await? else {
            return Err(Error::conflict(format!(
                "{} disappeared during the rewrite",
                o.key
            )));
        };
        match (self.f)(&o.key, &body)? {
            Some(new) if new != body => {
                self.bucket
                    .put_object(&o.key, new, PutMode::Overwrite)
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl Step for RewriteObjects {
    fn id(&self) -> &str {
        &self.id
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Compensable
    }

    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }

    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "s3.rewrite_objects",
            "bucket": self.bucket.name(),
            "prefix": self.prefix,
            "function": self.label,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}: rewrite {}* with {}",
            self.id,
            url(&*self.bucket, &self.prefix),
            self.label
        )
    }

    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        let area = Area::new(&self.bucket, ctx, &self.id);
        if let Some(r) = area.get_json::<RewriteReceipt>("done.json").await? {
            return Ok(Receipt::new(&r));
        }
        let run = async {
            let prev_prefix = area.key("prev/");
            let mut backups = raw_lister(area.store(), &prev_prefix);
            let mut l = lister(&self.bucket, &self.prefix);
            let (mut rewritten, mut unchanged) = (0u64, 0u64);
            while let Some(page) = l.next_page().await? {
                if ctx.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let mut items = Vec::with_capacity(page.len());
                for o in page {
                    let want = format!("{prev_prefix}{}", o.key);
                    while backups.peek().await?.is_some_and(|b| b.key < want) {
                        backups.next().await?;
                    }
                    let backup = backups
                        .peek()
                        .await?
                        .filter(|b| b.key == want)
                        .map(|b| b.etag.clone());
                    items.push((o, backup));
                }
                let changed = run_concurrent(&*self.bucket, items, |(o, backup)| {
                    let area = &area;
                    async move { self.rewrite_one(area, o, backup).await }
                })
                .await?;
                let c = changed.iter().filter(|c| **c).count() as u64;
                rewritten += c;
                unchanged += changed.len() as u64 - c;
                ctx.progress(&self.id, rewritten + unchanged, None, "objects");
            }
            let r = RewriteReceipt {
                prefix: self.prefix.clone(),
                rewritten,
                unchanged,
            };
            area.put_json("done.json", &r).await?;
            Ok(Receipt::new(&r))
        };
        run.await.map_err(after_writes)
    }

    async fn revert(&self, _receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        let area = Area::new(&self.bucket, ctx, &self.id);
        restore_backups(&self.bucket, &area, ctx, &self.id).await?;
        Ok(())
    }
}
