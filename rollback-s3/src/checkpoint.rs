//! [`S3Checkpoint`]: manifest checkpoints of a bucket prefix, versioned or copy-based.

use crate::backend::ObjectBackend;
use crate::bucket::{ObjectInfo, DELETE_BATCH};
use crate::error::after_writes;
use crate::listing::{
    lister, raw_lister, resource_id, run_concurrent, version_fix, version_lister, versioned,
    Objects, VersionFix, Work,
};
use crate::manifest::{
    fingerprint_field, ManifestEntry, ManifestHeader, ManifestReader, ManifestRef, ManifestWriter,
    FORMAT, PART_ENTRIES,
};
use async_trait::async_trait;
use rollback_core::{Checkpoint, Context, Digest, Error, Hasher, Restored, Result, Snapshot};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::sync::Arc;

/// How a checkpoint keeps the captured state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointMode {
    /// Versions when the bucket has versioning enabled, copies otherwise (decided at
    /// capture).
    #[default]
    Auto,
    /// Record the current version id of every key; copy nothing. Needs versioning.
    Versions,
    /// Server-side copy of every object under a snapshot prefix of the store.
    Copy,
}

/// A checkpoint of every object under a prefix of a bucket.
///
/// Capture writes a manifest (key, size, ETag, last-modified, version id, and optionally
/// a blake3 of content) as JSON-lines parts under `<store>/snapshots/<id>/manifest/`;
/// the [`Snapshot`] keeps only the manifest's location and its blake3 digest (its
/// `descriptor` is a [`ManifestRef`]), so 100k keys never inflate the journal.
///
/// - **Versioned** ([`CheckpointMode::Versions`]): capture copies nothing. Restore puts
///   back exactly the captured versions: it removes delete markers laid over them, copies
///   a captured version over a newer one, deletes (with a delete marker, so nothing is
///   lost) keys created since, and touches only what changed.
/// - **Copy-based** ([`CheckpointMode::Copy`]): capture makes server-side copies under
///   `<store>/snapshots/<id>/objects/`; restore copies back only what differs from the
///   manifest and deletes keys that did not exist.
///
/// Restore first reads the whole manifest back and refuses
/// ([`Error::DigestMismatch`]) when it does not hash to the snapshot's digest, or when a
/// captured version or snapshot copy is gone or altered — before changing anything.
/// Listings, copies and deletes run page by page with bounded concurrency and batch
/// deletes, so memory stays flat however many objects there are.
///
/// The fingerprint is a blake3 over (key, size, ETag) of every object under the prefix,
/// in key order, excluding the store prefix.
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_core::{Checkpoint, Context};
/// use rollback_s3::{S3Bucket, S3Checkpoint, S3Settings};
/// let bucket = S3Bucket::connect(
///     &S3Settings::new("http://127.0.0.1:59000", "us-east-1", "key", "secret"),
///     "media",
/// );
/// let cp = S3Checkpoint::new(&bucket, "");
/// assert_eq!(cp.resource(), "s3:media/");
/// let snap = cp.capture(&Context::detached()).await?;
/// // ... change things ...
/// cp.restore(&snap, &Context::detached()).await?;
/// assert_eq!(cp.fingerprint(&Context::detached()).await?, snap.fingerprint);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct S3Checkpoint {
    bucket: Objects,
    prefix: String,
    resource: String,
    mode: CheckpointMode,
    content_digests: bool,
    part_entries: usize,
    restore_buffer: usize,
}

/// The resolved mode of one capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Versions,
    Copy,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Versions => "versions",
            Mode::Copy => "copy",
        }
    }
}

impl S3Checkpoint {
    /// A checkpoint of every object of `bucket` under `prefix` (`""`: the whole bucket,
    /// minus the store prefix), in [`CheckpointMode::Auto`].
    ///
    /// `bucket` is any [`ObjectBackend`]: an [`S3Bucket`](crate::S3Bucket), or a shared
    /// `Arc<dyn ObjectBackend>`. Versions need a [`VersionedBackend`](crate::VersionedBackend)
    /// with versioning enabled.
    pub fn new<B>(bucket: &B, prefix: impl Into<String>) -> Self
    where
        B: ObjectBackend + Clone + 'static,
    {
        let prefix = prefix.into();
        S3Checkpoint {
            resource: resource_id(bucket, &prefix),
            bucket: Arc::new(bucket.clone()),
            prefix,
            mode: CheckpointMode::Auto,
            content_digests: false,
            part_entries: PART_ENTRIES,
            restore_buffer: RESTORE_BUFFER,
        }
    }

    /// Choose how captured state is kept.
    pub fn mode(mut self, mode: CheckpointMode) -> Self {
        self.mode = mode;
        self
    }

    /// Also record a blake3 digest of every object's content in the manifest (one GET
    /// per object at capture).
    pub fn content_digests(mut self, on: bool) -> Self {
        self.content_digests = on;
        self
    }

    /// Entries per stored manifest part (default [`PART_ENTRIES`]): what a capture or
    /// restore holds in memory at once.
    pub fn manifest_part_entries(mut self, n: usize) -> Self {
        self.part_entries = n.max(1);
        self
    }

    /// How many restore actions (copies, deletes) the checking pass of a restore keeps
    /// in memory (default 100,000). When a restore has more to do, a second pass over
    /// the manifest and the bucket computes them again while executing them, so memory
    /// stays bounded.
    pub fn restore_buffer(mut self, n: usize) -> Self {
        self.restore_buffer = n;
        self
    }

    /// The covered prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The backend handle.
    pub fn bucket(&self) -> &Arc<dyn ObjectBackend> {
        &self.bucket
    }

    async fn is_versioned(&self) -> Result<bool> {
        match self.bucket.as_versioned() {
            Some(v) => v.is_versioned().await,
            None => Ok(false),
        }
    }

    async fn resolve(&self) -> Result<Mode> {
        match self.mode {
            CheckpointMode::Copy => Ok(Mode::Copy),
            CheckpointMode::Versions => {
                if self.is_versioned().await? {
                    Ok(Mode::Versions)
                } else {
                    Err(Error::invalid(format!(
                        "checkpoint of {} asks for versions, but bucket {} does not have versioning enabled",
                        self.resource,
                        self.bucket.name()
                    )))
                }
            }
            CheckpointMode::Auto => Ok(if self.is_versioned().await? {
                Mode::Versions
            } else {
                Mode::Copy
            }),
        }
    }

    async fn digest_contents(
        &self,
        entries: &mut [ManifestEntry],
        from: impl Fn(&ManifestEntry) -> (String, Option<String>),
        source: &Objects,
    ) -> Result<()> {
        if !self.content_digests {
            return Ok(());
        }
        let targets: Vec<(String, Option<String>)> = entries.iter().map(&from).collect();
        let digests = run_concurrent(&**source, targets, |(k, v)| async move {
            let body = match v {
                Some(v) => {
                    versioned(&**source, "reading a captured version")?
                        .get_version(&k, Some(&v))
                        .await?
                }
                None => source.get(&k).await?,
            };
            let body = body.ok_or_else(|| {
                Error::conflict(format!("{k} disappeared while it was being captured"))
            })?;
            Ok(blake3::hash(&body).to_hex().to_string())
        })
        .await?;
        for (e, d) in entries.iter_mut().zip(digests) {
            e.blake3 = Some(d);
        }
        Ok(())
    }

    async fn capture_into(
        &self,
        mode: Mode,
        w: &mut ManifestWriter,
        copies_prefix: &str,
        ctx: &Context,
    ) -> Result<()> {
        let mut done = 0u64;
        match mode {
            Mode::Versions => {
                let mut vl = version_lister(&self.bucket, &self.prefix);
                let mut batch: Vec<ManifestEntry> = Vec::new();
                loop {
                    let next = vl.next().await?;
                    let end = next.is_none();
                    if let Some(kv) = next {
                        if let Some(cur) = kv.current() {
                            batch.push(ManifestEntry::from_info(&ObjectInfo {
                                key: kv.key.clone(),
                                size: cur.size,
                                etag: cur.etag.clone(),
                                last_modified_ms: cur.last_modified_ms,
                                version_id: Some(cur.version_id.clone()),
                            }));
                        }
                    }
                    if batch.len() >= DELETE_BATCH || (end && !batch.is_empty()) {
                        self.digest_contents(
                            &mut batch,
                            |e| (e.key.clone(), e.version_id.clone()),
                            &self.bucket,
                        )
                        .await?;
                        for e in batch.drain(..) {
                            w.push(&e).await?;
                        }
                        done = w.entries();
                        ctx.progress(&self.resource, done, None, "objects captured");
                    }
                    if end {
                        break;
                    }
                }
            }
            Mode::Copy => {
                let store = self.bucket.store_backend();
                let src = self.bucket.name().to_string();
                let mut l = lister(&self.bucket, &self.prefix);
                while let Some(page) = l.next_page().await? {
                    let copies = run_concurrent(&*store, page, |o| {
                        let store = &store;
                        let src = &src;
                        async move {
                            let etag = store
                                .copy(
                                    src,
                                    &o.key,
                                    &format!("{copies_prefix}{}", o.key),
                                    Some(&o.etag),
                                )
                                .await
                                .map_err(|e| match e {
                                    Error::Conflict { .. } => Error::conflict(format!(
                                        "{} changed while it was being captured",
                                        o.key
                                    )),
                                    e => e,
                                })?;
                            let mut e = ManifestEntry::from_info(&o);
                            e.copy_etag = Some(etag);
                            Ok(e)
                        }
                    })
                    .await?;
                    let mut entries = copies;
                    self.digest_contents(
                        &mut entries,
                        |e| (format!("{copies_prefix}{}", e.key), None),
                        &store,
                    )
                    .await?;
                    for e in &entries {
                        w.push(e).await?;
                    }
                    done += entries.len() as u64;
                    ctx.progress(&self.resource, done, None, "objects captured");
                }
            }
        }
        Ok(())
    }

    /// Read the manifest back and check it against the snapshot, before changing anything.
    async fn verify_manifest(&self, snapshot: &Snapshot) -> Result<ManifestRef> {
        snapshot.ensure_resource(&self.resource)?;
        let mref = ManifestRef::from_descriptor(&snapshot.descriptor)?;
        if mref.header.resource != self.resource
            || mref.header.bucket != self.bucket.name()
            || mref.header.prefix != self.prefix
        {
            return Err(Error::WrongResource {
                expected: self.resource.clone(),
                found: mref.header.resource.clone(),
            });
        }
        let actual = ManifestReader::new(&self.bucket, &mref).digest().await?;
        snapshot.ensure_digest(actual)?;
        Ok(mref)
    }

    /// One merge of the manifest with the bucket (and, for copy snapshots, with the
    /// snapshot copies). With `execute == false` it changes nothing: it checks that every
    /// captured version or copy is still there, unaltered (returned as `missing`), and
    /// collects the restore work while it fits in the restore buffer. With
    /// `execute == true` it runs the work in batches as it goes.
    async fn pass(&self, mref: &ManifestRef, ctx: &Context, execute: bool) -> Result<Pass> {
        let b = &self.bucket;
        let name = b.name().to_string();
        let mut out = Pass::default();
        let mut reader = ManifestReader::new(b, mref);
        let versions = match mref.header.mode.as_str() {
            "versions" => true,
            "copy" => false,
            other => return Err(Error::invalid(format!("unknown snapshot mode {other:?}"))),
        };
        let copies = if versions {
            None
        } else {
            let (Some(cb), Some(cp)) = (&mref.copies_bucket, &mref.copies_prefix) else {
                return Err(Error::invalid("copy snapshot without a copies location"));
            };
            let store = if cb == b.name() {
                b.clone()
            } else {
                b.store_backend()
            };
            Some((cb.clone(), cp.clone(), raw_lister(&store, cp)))
        };
        let mut copies = copies;
        let mut vl = versions.then(|| version_lister(b, &self.prefix));
        let mut l = (!versions).then(|| lister(b, &self.prefix));
        let mut m = reader.next().await?;
        let mut cur_v = match &mut vl {
            Some(vl) => vl.next().await?,
            None => None,
        };
        let mut cur_o = match &mut l {
            Some(l) => l.next().await?,
            None => None,
        };
        let mut work = Work::default();
        loop {
            let cur_key = if versions {
                cur_v.as_ref().map(|kv| kv.key.as_str())
            } else {
                cur_o.as_ref().map(|o| o.key.as_str())
            };
            let ord = match (&m, cur_key) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(e), Some(k)) => e.key.as_str().cmp(k),
            };
            // A key created since the capture: delete it (a delete marker when versioned).
            if ord == Ordering::Greater {
                if versions {
                    let kv = cur_v.take().unwrap_or_else(|| unreachable!());
                    if kv.current().is_some() {
                        work.deletes.push((kv.key, None));
                    }
                    cur_v = vl.as_mut().unwrap_or_else(|| unreachable!()).next().await?;
                } else {
                    let o = cur_o.take().unwrap_or_else(|| unreachable!());
                    work.deletes.push((o.key, None));
                    cur_o = l.as_mut().unwrap_or_else(|| unreachable!()).next().await?;
                }
            } else {
                let e = m.take().unwrap_or_else(|| unreachable!());
                if versions {
                    let want = e.version_id.clone().unwrap_or_else(|| "null".into());
                    let kv = if ord == Ordering::Equal {
                        cur_v.take()
                    } else {
                        None
                    };
                    let present = kv.as_ref().is_some_and(|kv| {
                        kv.versions
                            .iter()
                            .any(|v| v.version_id == want && v.etag == e.etag)
                    });
                    match kv.as_ref().filter(|_| present) {
                        None => out.note_missing(&e.key),
                        Some(kv) => {
                            match version_fix(kv, &want, e.size, &e.etag, e.last_modified_ms) {
                                VersionFix::None => {}
                                VersionFix::RemoveMarkers(ids) => {
                                    for id in ids {
                                        work.deletes.push((kv.key.clone(), Some(id)));
                                    }
                                }
                                VersionFix::CopyBack => work.copies.push((
                                    name.clone(),
                                    kv.key.clone(),
                                    Some(want),
                                    kv.key.clone(),
                                    None,
                                )),
                            }
                        }
                    }
                    if ord == Ordering::Equal {
                        cur_v = vl.as_mut().unwrap_or_else(|| unreachable!()).next().await?;
                    }
                } else {
                    let (cb, cp, cl) = copies.as_mut().unwrap_or_else(|| unreachable!());
                    let copy_key = format!("{cp}{}", e.key);
                    if !execute {
                        while cl.peek().await?.is_some_and(|o| o.key < copy_key) {
                            cl.next().await?;
                        }
                        let intact = cl.peek().await?.is_some_and(|o| {
                            o.key == copy_key && Some(&o.etag) == e.copy_etag.as_ref()
                        });
                        if !intact {
                            out.note_missing(&e.key);
                        }
                    }
                    let o = if ord == Ordering::Equal {
                        cur_o.take()
                    } else {
                        None
                    };
                    let same = o
                        .as_ref()
                        .is_some_and(|o| o.etag == e.etag && o.size == e.size);
                    if !same {
                        work.copies.push((
                            cb.clone(),
                            copy_key,
                            None,
                            e.key.clone(),
                            e.copy_etag.clone(),
                        ));
                    }
                    if ord == Ordering::Equal {
                        cur_o = l.as_mut().unwrap_or_else(|| unreachable!()).next().await?;
                    }
                }
                m = reader.next().await?;
            }
            if execute && work.len() >= DELETE_BATCH {
                work.flush(b).await?;
                ctx.progress(&self.resource, work.changed, None, "objects restored");
            }
            if !execute && !out.overflow && work.len() > self.restore_buffer {
                out.overflow = true;
            }
            if !execute && out.overflow {
                work = Work::default();
            }
        }
        if execute {
            work.flush(b).await?;
            ctx.progress(&self.resource, work.changed, None, "objects restored");
        }
        out.work = work;
        Ok(out)
    }
}

/// The outcome of a [`S3Checkpoint::pass`].
#[derive(Default)]
struct Pass {
    missing: u64,
    sample: Vec<String>,
    overflow: bool,
    work: Work,
}

impl Pass {
    fn note_missing(&mut self, key: &str) {
        self.missing += 1;
        if self.sample.len() < 10 {
            self.sample.push(key.to_string());
        }
    }
}

/// Restore work items kept from the checking pass (beyond this, the work is computed
/// again by a second pass, so memory stays bounded).
pub(crate) const RESTORE_BUFFER: usize = 100_000;

#[async_trait]
impl Checkpoint for S3Checkpoint {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
        let mode = self.resolve().await?;
        let id = format!("s3-{}", uuid::Uuid::new_v4().simple());
        let store = self.bucket.store_backend();
        let base = format!("{}snapshots/{id}/", self.bucket.store_location().prefix);
        let parts_prefix = format!("{base}manifest/");
        let copies_prefix = format!("{base}objects/");
        let header = ManifestHeader {
            format: FORMAT.into(),
            resource: self.resource.clone(),
            bucket: self.bucket.name().into(),
            prefix: self.prefix.clone(),
            mode: mode.name().into(),
            copies: (mode == Mode::Copy).then(|| format!("{}/{copies_prefix}", store.name())),
        };
        let mut w = ManifestWriter::new(store.clone(), parts_prefix, header, self.part_entries);
        let res = self.capture_into(mode, &mut w, &copies_prefix, ctx).await;
        let finished = match res {
            Ok(()) => {
                w.finish(
                    self.content_digests,
                    (mode == Mode::Copy).then(|| (store.name().to_string(), copies_prefix.clone())),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let (mref, digest, fingerprint) = match finished {
            Ok(x) => x,
            Err(e) => {
                if let Err(pe) = store.dangerous_purge(&base).await {
                    tracing::warn!(error = %pe, "could not clean up a failed capture");
                }
                return Err(e);
            }
        };
        tracing::info!(
            resource = %self.resource,
            mode = mode.name(),
            objects = mref.entries,
            bytes = mref.total_bytes,
            digest = %digest.short(),
            "captured"
        );
        Ok(Snapshot::new(
            id,
            self.resource.clone(),
            format!("s3.{}", mode.name()),
            digest,
            fingerprint,
            serde_json::to_value(&mref).map_err(|e| Error::invalid(format!("descriptor: {e}")))?,
        )
        .with_size(mref.total_bytes))
    }

    async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
        let mref = self.verify_manifest(snapshot).await?;
        // First pass: check the captured content is intact and compute what differs,
        // changing nothing.
        let mut checked = self.pass(&mref, ctx, false).await?;
        if checked.missing > 0 {
            tracing::error!(
                resource = %self.resource,
                missing = checked.missing,
                sample = ?checked.sample,
                "captured content is gone or altered; refusing to restore"
            );
            let mut h = Hasher::new();
            h.update(b"captured content missing or altered");
            for k in &checked.sample {
                h.field(k.as_bytes());
            }
            return Err(Error::DigestMismatch {
                resource: self.resource.clone(),
                expected: snapshot.digest,
                actual: h.finish(),
            });
        }
        let method = mref.header.mode.clone();
        let run = async {
            if checked.overflow {
                // Too much work to hold: compute it again while executing it.
                Ok(self.pass(&mref, ctx, true).await?.work.changed)
            } else {
                let mut work = std::mem::take(&mut checked.work);
                let mut batch = Work::default();
                let copies = std::mem::take(&mut work.copies);
                let deletes = std::mem::take(&mut work.deletes);
                let mut changed = 0;
                for chunk in copies.chunks(DELETE_BATCH) {
                    batch.copies = chunk.to_vec();
                    batch.flush(&self.bucket).await?;
                    changed = batch.changed;
                    ctx.progress(&self.resource, changed, None, "objects restored");
                }
                for chunk in deletes.chunks(DELETE_BATCH * 4) {
                    batch.deletes = chunk.to_vec();
                    batch.flush(&self.bucket).await?;
                    changed = batch.changed;
                    ctx.progress(&self.resource, changed, None, "objects restored");
                }
                Ok::<u64, Error>(changed)
            }
        };
        let changed = run.await.map_err(after_writes)?;
        tracing::info!(resource = %self.resource, method = %method, changed, "restored");
        Ok(Restored::by(method)
            .changed(changed)
            .note(format!("{} objects in the manifest", mref.entries)))
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        let mut h = Hasher::new();
        let mut l = lister(&self.bucket, &self.prefix);
        while let Some(page) = l.next_page().await? {
            for o in &page {
                fingerprint_field(&mut h, &o.key, o.size, &o.etag);
            }
        }
        Ok(h.finish())
    }

    async fn discard(&self, snapshot: &Snapshot, _ctx: &Context) -> Result<()> {
        let mref = ManifestRef::from_descriptor(&snapshot.descriptor)?;
        let store = self.bucket.store_backend();
        // parts_prefix is `<store>/snapshots/<id>/manifest/`: purge `<store>/snapshots/<id>/`.
        let base = mref
            .parts_prefix
            .strip_suffix("manifest/")
            .unwrap_or(&mref.parts_prefix)
            .to_string();
        if !base.starts_with(&self.bucket.store_location().prefix) || base.is_empty() {
            return Err(Error::invalid(format!(
                "refusing to discard {base:?}: not under the store prefix"
            )));
        }
        store.dangerous_purge(&base).await?;
        Ok(())
    }
}
