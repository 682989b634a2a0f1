//! [`PutObjects`]: write objects, keeping what they overwrite.

use super::{common_dir, Area};
use crate::backend::{ObjectBackend, PutMode};
use crate::bucket::DELETE_BATCH;
use crate::error::after_writes;
use crate::listing::{raw_lister, resource_id, run_concurrent, url, Objects};
use async_trait::async_trait;
use bytes::Bytes;
use rollback_core::{Context, Error, Receipt, Result, Reversibility, Step};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Put objects (create or overwrite keys). Compensable.
///
/// Before writing a key, apply records its previous state in the step's area of the
/// store: a server-side copy of the object it overwrites, or an "absent" marker. Revert
/// (with or without receipt, after a full or partial apply) copies every backup back
/// and deletes the keys that did not exist.
///
/// ```no_run
/// # fn demo(bucket: rollback_s3::S3Bucket) {
/// use rollback_s3::PutObjects;
/// let step = PutObjects::new("write-index", &bucket)
///     .object("v2/acme/index.json", b"{\"version\":2}".to_vec())
///     .object("v2/globex/index.json", b"{\"version\":2}".to_vec());
/// # let _ = step; }
/// ```
#[derive(Debug, Clone)]
pub struct PutObjects {
    id: String,
    bucket: Objects,
    objects: Vec<(String, Bytes)>,
    touches: Option<Vec<String>>,
}

/// What [`PutObjects`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PutReceipt {
    objects: u64,
    bytes: u64,
}

impl PutObjects {
    /// A step `id` putting objects into `bucket` (add them with [`PutObjects::object`]).
    pub fn new<B>(id: &str, bucket: &B) -> Self
    where
        B: ObjectBackend + Clone + 'static,
    {
        PutObjects {
            id: id.into(),
            bucket: Arc::new(bucket.clone()),
            objects: Vec::new(),
            touches: None,
        }
    }

    /// Put `body` at `key`.
    pub fn object(mut self, key: impl Into<String>, body: impl Into<Bytes>) -> Self {
        self.objects.push((key.into(), body.into()));
        self
    }

    /// Name the resources (checkpoint resource ids) this step changes. Default:
    /// `s3:<bucket>/<common parent of the keys>`.
    pub fn touching<I, S>(mut self, resources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.touches = Some(resources.into_iter().map(Into::into).collect());
        self
    }

    async fn backup(&self, area: &Area, key: &str) -> Result<()> {
        let prev = area.key(&format!("prev/{key}"));
        let absent = area.key(&format!("absent/{key}"));
        let store = area.store();
        if store.head(&prev).await?.is_some() || store.head(&absent).await?.is_some() {
            return Ok(()); // recorded by an earlier (interrupted) apply
        }
        match self.bucket.head(key).await? {
            Some(o) => {
                store
                    .copy(self.bucket.name(), key, &prev, Some(&o.etag))
                    .await?;
            }
            None => {
                store
                    .put_object(&absent, Bytes::new(), PutMode::Overwrite)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Undo puts and rewrites recorded in `area`: copy every `prev/` backup back over its
/// key, delete every key with an `absent/` marker, then drop the area.
pub(crate) async fn restore_backups(
    bucket: &Objects,
    area: &Area,
    ctx: &Context,
    step: &str,
) -> Result<u64> {
    let store = area.store();
    let prev_prefix = area.key("prev/");
    let absent_prefix = area.key("absent/");
    let mut n = 0u64;
    let mut l = raw_lister(store, &prev_prefix);
    while let Some(page) = l.next_page().await? {
        let items: Vec<(String, String)> = page
            .iter()
            .map(|o| (o.key.clone(), o.etag.clone()))
            .collect();
        run_concurrent(&**bucket, items, |(backup, etag)| {
            let key = backup[prev_prefix.len()..].to_string();
            async move { bucket.copy(store.name(), &backup, &key, Some(&etag)).await }
        })
        .await?;
        n += page.len() as u64;
        ctx.progress(step, n, None, "objects reverted");
    }
    let mut l = raw_lister(store, &absent_prefix);
    while let Some(page) = l.next_page().await? {
        let keys: Vec<String> = page
            .iter()
            .map(|o| o.key[absent_prefix.len()..].to_string())
            .collect();
        for chunk in keys.chunks(DELETE_BATCH) {
            bucket.delete_keys(chunk.to_vec()).await?;
        }
        n += page.len() as u64;
        ctx.progress(step, n, None, "objects reverted");
    }
    area.purge().await?;
    Ok(n)
}

#[async_trait]
impl Step for PutObjects {
    fn id(&self) -> &str {
        &self.id
    }

    fn reversibility(&self) -> Reversibility {
        Reversibility::Compensable
    }

    fn touches(&self) -> Vec<String> {
        if let Some(t) = &self.touches {
            return t.clone();
        }
        let mut keys = self.objects.iter().map(|(k, _)| k.as_str());
        let Some(first) = keys.next() else {
            return Vec::new();
        };
        let dir = keys.fold(common_dir(first, first), |acc, k| common_dir(acc, k));
        vec![resource_id(&*self.bucket, dir)]
    }

    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "s3.put_objects",
            "bucket": self.bucket.name(),
            "objects": self.objects.iter().map(|(k, b)| {
                serde_json::json!({ "key": k, "size": b.len(), "blake3": blake3::hash(b).to_hex().to_string() })
            }).collect::<Vec<_>>(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}: put {} objects into {}",
            self.id,
            self.objects.len(),
            url(&*self.bucket, "")
        )
    }

    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        let area = Area::new(&self.bucket, ctx, &self.id);
        if let Some(r) = area.get_json::<PutReceipt>("done.json").await? {
            return Ok(Receipt::new(&r));
        }
        let total = self.objects.len() as u64;
        let run = async {
            let mut done = 0u64;
            for chunk in self.objects.chunks(DELETE_BATCH) {
                if ctx.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                run_concurrent(&*self.bucket, chunk.to_vec(), |(k, body)| {
                    let area = &area;
                    async move {
                        self.backup(area, &k).await?;
                        self.bucket.put_object(&k, body, PutMode::Overwrite).await
                    }
                })
                .await?;
                done += chunk.len() as u64;
                ctx.progress(&self.id, done, Some(total), "objects");
            }
            let r = PutReceipt {
                objects: total,
                bytes: self.objects.iter().map(|(_, b)| b.len() as u64).sum(),
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
