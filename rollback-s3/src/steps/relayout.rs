//! [`MovePrefix`] and [`CopyPrefix`]: re-lay out a prefix (`v1/{tenant}/…` →
//! `v2/{tenant}/…`).

use super::{common_dir, Area};
use crate::backend::ObjectBackend;
use crate::bucket::DELETE_BATCH;
use crate::error::after_writes;
use crate::listing::{lister, resource_id, url, Objects, Work};
use async_trait::async_trait;
use rollback_core::{Context, Error, Receipt, Result, Reversibility, Step};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a relayout did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayoutReceipt {
    /// Source prefix.
    pub from: String,
    /// Destination prefix.
    pub to: String,
    /// Objects copied (or moved) by this apply.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Whether the sources were deleted (a move).
    pub moved: bool,
}

#[derive(Debug, Clone)]
struct Relayout {
    id: String,
    bucket: Objects,
    from: String,
    to: String,
    delete_source: bool,
    touches: Vec<String>,
    batch: usize,
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    done: u64,
    bytes: u64,
    last: String,
}

impl Relayout {
    fn new(id: &str, bucket: Objects, from: &str, to: &str, delete_source: bool) -> Self {
        Relayout {
            id: id.into(),
            touches: vec![resource_id(&*bucket, common_dir(from, to))],
            bucket,
            from: from.into(),
            to: to.into(),
            delete_source,
            batch: DELETE_BATCH,
        }
    }

    fn map(&self, key: &str) -> String {
        format!("{}{}", self.to, &key[self.from.len()..])
    }

    fn validate(&self) -> Result<()> {
        if self.from.starts_with(&self.to) || self.to.starts_with(&self.from) {
            return Err(Error::invalid(format!(
                "step {}: prefixes {:?} and {:?} overlap (one contains the other)",
                self.id, self.from, self.to
            )));
        }
        let store = self.bucket.store_location();
        if store.bucket == self.bucket.name()
            && !store.prefix.is_empty()
            && (self.from.starts_with(&store.prefix) || self.to.starts_with(&store.prefix))
        {
            return Err(Error::invalid(format!(
                "step {}: cannot relayout inside the store prefix {:?}",
                self.id, store.prefix
            )));
        }
        Ok(())
    }

    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": if self.delete_source { "s3.move_prefix" } else { "s3.copy_prefix" },
            "bucket": self.bucket.name(),
            "from": self.from,
            "to": self.to,
        })
    }

    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        self.validate()?;
        let area = Area::new(&self.bucket, ctx, &self.id);
        if let Some(r) = area.get_json::<RelayoutReceipt>("done.json").await? {
            return Ok(Receipt::new(&r));
        }
        let resumed = area.exists("started.json").await?;
        if !resumed {
            if lister(&self.bucket, &self.to).next().await?.is_some() {
                return Err(Error::conflict(format!(
                    "step {}: destination {} is not empty; refusing to mix layouts",
                    self.id,
                    url(&*self.bucket, &self.to)
                )));
            }
            area.put_json("started.json", &self.spec()).await?;
        }
        self.run(ctx, &area, resumed).await.map_err(after_writes)
    }

    async fn run(&self, ctx: &Context, area: &Area, resumed: bool) -> Result<Receipt> {
        let b = &self.bucket;
        // Where a copy left off (a move needs no cursor: moved sources are gone).
        let cursor: Option<Cursor> = if resumed && !self.delete_source {
            ctx.cursor()
                .and_then(|c| serde_json::from_value(c.clone()).ok())
        } else {
            None
        };
        let (mut done, mut bytes) = cursor.as_ref().map(|c| (c.done, c.bytes)).unwrap_or((0, 0));
        let total = lister(b, &self.from).count().await?
            + if self.delete_source {
                lister(b, &self.to).count().await?
            } else {
                0
            };
        let mut l = lister(b, &self.from).start_after(cursor.map(|c| c.last));
        let name = b.name().to_string();
        ctx.progress(&self.id, done, Some(total), "objects");
        while let Some(page) = l.next_page().await? {
            for batch in page.chunks(self.batch) {
                if ctx.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let last = batch.last().map(|o| o.key.clone()).unwrap_or_default();
                let mut work = Work::default();
                for o in batch {
                    work.copies.push((
                        name.clone(),
                        o.key.clone(),
                        None,
                        self.map(&o.key),
                        Some(o.etag.clone()),
                    ));
                    if self.delete_source {
                        work.deletes.push((o.key.clone(), None));
                    }
                }
                work.flush(b).await?;
                done += batch.len() as u64;
                bytes += batch.iter().map(|o| o.size).sum::<u64>();
                ctx.save_cursor(serde_json::json!(Cursor { done, bytes, last }))
                    .await?;
                ctx.progress(&self.id, done, Some(total), "objects");
            }
        }
        let receipt = RelayoutReceipt {
            from: self.from.clone(),
            to: self.to.clone(),
            objects: done,
            bytes,
            moved: self.delete_source,
        };
        area.put_json("done.json", &receipt).await?;
        tracing::info!(step = %self.id, objects = done, bytes, "relayout applied");
        Ok(Receipt::new(&receipt))
    }

    async fn revert(&self, ctx: &Context) -> Result<()> {
        self.validate()?;
        let area = Area::new(&self.bucket, ctx, &self.id);
        if !area.exists("started.json").await? && !area.exists("done.json").await? {
            return Ok(()); // never applied, or already reverted
        }
        let b = &self.bucket;
        let name = b.name().to_string();
        let mut dst = lister(b, &self.to);
        let mut src = lister(b, &self.from);
        let mut work = Work::default();
        let mut conflicts: Vec<String> = Vec::new();
        let mut conflict_count = 0u64;
        let mut undone = 0u64;
        while let Some(d) = dst.next().await? {
            let ks = format!("{}{}", self.from, &d.key[self.to.len()..]);
            while src.peek().await?.is_some_and(|s| s.key < ks) {
                src.next().await?;
            }
            let source = src.peek().await?.filter(|s| s.key == ks).cloned();
            match source {
                None if self.delete_source => {
                    work.copies
                        .push((name.clone(), d.key.clone(), None, ks, Some(d.etag.clone())));
                    work.deletes.push((d.key, None));
                }
                Some(s) if s.etag == d.etag && s.size == d.size => {
                    work.deletes.push((d.key, None));
                }
                _ => {
                    // The source was rewritten since (move), or the copy no longer matches
                    // its source (copy): deleting the destination could lose data.
                    conflict_count += 1;
                    if conflicts.len() < 10 {
                        conflicts.push(d.key);
                    }
                }
            }
            if work.len() >= DELETE_BATCH {
                undone += work.deletes.len() as u64;
                work.flush(b).await?;
                ctx.progress(&self.id, undone, None, "objects reverted");
                if ctx.is_cancelled() {
                    tracing::warn!(step = %self.id, "cancellation ignored: a revert runs to its end");
                }
            }
        }
        undone += work.deletes.len() as u64;
        work.flush(b).await?;
        ctx.progress(&self.id, undone, None, "objects reverted");
        if conflict_count > 0 {
            return Err(Error::conflict(format!(
                "step {}: {conflict_count} destination objects differ from their sources and were left in place, e.g. {conflicts:?}",
                self.id
            )));
        }
        area.purge().await?;
        tracing::info!(step = %self.id, objects = undone, "relayout reverted");
        Ok(())
    }
}

macro_rules! relayout_step {
    ($(#[$doc:meta])* $name:ident, $move:expr, $verb:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(Relayout);

        impl $name {
            #[doc = concat!("A step `id` that ", $verb, " every object of `bucket` under `from` to the same key under `to`.")]
            ///
            /// Touches `s3:<bucket>/<common parent of from and to>` unless told otherwise
            /// with `touching`.
            pub fn new<B>(id: &str, bucket: &B, from: &str, to: &str) -> Self
            where
                B: ObjectBackend + Clone + 'static,
            {
                $name(Relayout::new(id, Arc::new(bucket.clone()), from, to, $move))
            }

            /// Name the resources (checkpoint resource ids) this step changes.
            pub fn touching<I, S>(mut self, resources: I) -> Self
            where
                I: IntoIterator<Item = S>,
                S: Into<String>,
            {
                self.0.touches = resources.into_iter().map(Into::into).collect();
                self
            }

            /// Objects per batch (default 1000, at most 1000): the unit of progress
            /// reports, journaled cursors, cancellation checks and batch deletes.
            pub fn batch_size(mut self, n: usize) -> Self {
                self.0.batch = n.clamp(1, DELETE_BATCH);
                self
            }
        }

        #[async_trait]
        impl Step for $name {
            fn id(&self) -> &str {
                &self.0.id
            }
            fn reversibility(&self) -> Reversibility {
                Reversibility::Compensable
            }
            fn touches(&self) -> Vec<String> {
                self.0.touches.clone()
            }
            fn spec(&self) -> serde_json::Value {
                self.0.spec()
            }
            fn describe(&self) -> String {
                format!(
                    "{}: {} {}* to {}*",
                    self.0.id, $verb, url(&*self.0.bucket, &self.0.from), self.0.to
                )
            }
            async fn apply(&self, ctx: &Context) -> Result<Receipt> {
                self.0.apply(ctx).await
            }
            async fn revert(&self, _receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
                self.0.revert(ctx).await
            }
        }
    };
}

relayout_step!(
    /// Move every object under a prefix to another prefix: the common re-layout
    /// (`v1/{tenant}/…` → `v2/{tenant}/…`). Compensable.
    ///
    /// Apply refuses a non-empty destination, journals a cursor after every page of
    /// 1000 keys, copies with `x-amz-copy-source-if-match` and batch-deletes the sources;
    /// it reports progress and stops at page boundaries when the run is cancelled.
    /// Revert (with or without receipt, after a full or partial apply) copies every
    /// destination object back to its source key where the source is gone and deletes
    /// the destination; a destination whose source was rewritten since is left in place
    /// and reported as a conflict.
    ///
    /// ```no_run
    /// # async fn demo(bucket: rollback_s3::S3Bucket) -> rollback_core::Result<()> {
    /// use rollback_core::{Executor, Plan, journal::MemoryJournal};
    /// use rollback_s3::{MovePrefix, S3Checkpoint};
    /// let plan = Plan::builder("relayout")
    ///     .checkpoint("storage", S3Checkpoint::new(&bucket, ""))
    ///     .step("storage", MovePrefix::new("move-v1-v2", &bucket, "v1/", "v2/"), &[])
    ///     .build()?;
    /// let report = Executor::new(MemoryJournal::new()).run(&plan).await?;
    /// println!("{}", report.to_markdown());
    /// # Ok(()) }
    /// ```
    MovePrefix,
    true,
    "moves"
);

relayout_step!(
    /// Copy every object under a prefix to another prefix (the sources stay).
    /// Compensable: revert deletes the copies that still match their sources.
    CopyPrefix,
    false,
    "copies"
);
