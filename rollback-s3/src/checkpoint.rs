//! [`S3Checkpoint`]: manifest checkpoints of a bucket prefix, versioned or copy-based.

use crate::bucket::{version_fix, KeyVersions, ObjectInfo, S3Bucket, VersionFix, DELETE_BATCH};
use crate::error::after_writes;
use crate::manifest::{
    fingerprint_field, ManifestEntry, ManifestHeader, ManifestReader, ManifestRef, ManifestWriter,
    FORMAT, PART_ENTRIES,
};
use async_trait::async_trait;
use rollback_core::{Checkpoint, Context, Digest, Error, Hasher, Restored, Result, Snapshot};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

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
    bucket: S3Bucket,
    prefix: String,
    resource: String,
    mode: CheckpointMode,
    content_digests: bool,
    part_entries: usize,
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

/// Batched copy and delete work, flushed every [`DELETE_BATCH`] items.
#[derive(Default)]
pub(crate) struct Work {
    /// (source bucket, source key, source version, destination key, if-match)
    pub(crate) copies: Vec<(String, String, Option<String>, String, Option<String>)>,
    pub(crate) deletes: Vec<(String, Option<String>)>,
    pub(crate) changed: u64,
}

impl Work {
    pub(crate) fn len(&self) -> usize {
        self.copies.len() + self.deletes.len()
    }

    pub(crate) async fn flush(&mut self, bucket: &S3Bucket) -> Result<()> {
        let copies = std::mem::take(&mut self.copies);
        let n = copies.len() as u64;
        bucket
            .run_concurrent(copies, |(sb, sk, sv, dk, m)| async move {
                bucket
                    .copy_from(&sb, &sk, sv.as_deref(), &dk, m.as_deref())
                    .await
            })
            .await?;
        let deletes = std::mem::take(&mut self.deletes);
        let d = deletes.len() as u64;
        bucket.delete_batch(deletes).await?;
        self.changed += n + d;
        Ok(())
    }
}

impl S3Checkpoint {
    /// A checkpoint of every object of `bucket` under `prefix` (`""`: the whole bucket,
    /// minus the store prefix), in [`CheckpointMode::Auto`].
    pub fn new(bucket: &S3Bucket, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        S3Checkpoint {
            resource: bucket.resource_id(&prefix),
            bucket: bucket.clone(),
            prefix,
            mode: CheckpointMode::Auto,
            content_digests: false,
            part_entries: PART_ENTRIES,
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

    /// The covered prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bucket handle.
    pub fn bucket(&self) -> &S3Bucket {
        &self.bucket
    }

    async fn resolve(&self) -> Result<Mode> {
        match self.mode {
            CheckpointMode::Copy => Ok(Mode::Copy),
            CheckpointMode::Versions => {
                if self.bucket.is_versioned().await? {
                    Ok(Mode::Versions)
                } else {
                    Err(Error::invalid(format!(
                        "checkpoint of {} asks for versions, but bucket {} does not have versioning enabled",
                        self.resource,
                        self.bucket.name()
                    )))
                }
            }
            CheckpointMode::Auto => Ok(if self.bucket.is_versioned().await? {
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
        source: &S3Bucket,
    ) -> Result<()> {
        if !self.content_digests {
            return Ok(());
        }
        let targets: Vec<(String, Option<String>)> = entries.iter().map(&from).collect();
        let digests = source
            .run_concurrent(targets, |(k, v)| async move {
                let body = source.get_version(&k, v.as_deref()).await?.ok_or_else(|| {
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
                let mut vl = self.bucket.version_lister(&self.prefix);
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
                let store = self.bucket.store_bucket();
                let src = self.bucket.name().to_string();
                let mut l = self.bucket.lister(&self.prefix);
                while let Some(page) = l.next_page().await? {
                    let copies = store
                        .run_concurrent(page, |o| {
                            let store = &store;
                            let src = &src;
                            async move {
                                let etag = store
                                    .copy_from(
                                        src,
                                        &o.key,
                                        None,
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

    /// Check that every captured version or snapshot copy is still there, unaltered.
    async fn verify_content(&self, snapshot: &Snapshot, mref: &ManifestRef) -> Result<()> {
        let mut reader = ManifestReader::new(&self.bucket, mref);
        let mut missing: Vec<String> = Vec::new();
        let mut missing_count = 0u64;
        let mut note = |k: &str| {
            missing_count += 1;
            if missing.len() < 10 {
                missing.push(k.to_string());
            }
        };
        match mref.header.mode.as_str() {
            "versions" => {
                let mut vl = self.bucket.version_lister(&self.prefix);
                let mut cur: Option<KeyVersions> = vl.next().await?;
                while let Some(e) = reader.next().await? {
                    while cur.as_ref().is_some_and(|kv| kv.key < e.key) {
                        cur = vl.next().await?;
                    }
                    let found = cur.as_ref().is_some_and(|kv| {
                        kv.key == e.key
                            && kv.versions.iter().any(|v| {
                                Some(&v.version_id) == e.version_id.as_ref() && v.etag == e.etag
                            })
                    });
                    if !found {
                        note(&e.key);
                    }
                }
            }
            "copy" => {
                let (Some(cb), Some(cp)) = (&mref.copies_bucket, &mref.copies_prefix) else {
                    return Err(Error::invalid("copy snapshot without a copies location"));
                };
                let copies = if cb == self.bucket.name() {
                    self.bucket.clone()
                } else {
                    self.bucket.store_bucket()
                };
                let mut l = copies.raw_lister(cp);
                while let Some(e) = reader.next().await? {
                    let want = format!("{cp}{}", e.key);
                    while l.peek().await?.is_some_and(|o| o.key < want) {
                        l.next().await?;
                    }
                    let ok = l
                        .peek()
                        .await?
                        .is_some_and(|o| o.key == want && Some(&o.etag) == e.copy_etag.as_ref());
                    if !ok {
                        note(&e.key);
                    }
                }
            }
            other => return Err(Error::invalid(format!("unknown snapshot mode {other:?}"))),
        }
        if missing_count > 0 {
            tracing::error!(
                resource = %self.resource,
                missing = missing_count,
                sample = ?missing,
                "captured content is gone or altered; refusing to restore"
            );
            let mut h = Hasher::new();
            h.update(b"captured content missing or altered");
            for k in &missing {
                h.field(k.as_bytes());
            }
            return Err(Error::DigestMismatch {
                resource: self.resource.clone(),
                expected: snapshot.digest,
                actual: h.finish(),
            });
        }
        Ok(())
    }

    async fn restore_versions(&self, mref: &ManifestRef, ctx: &Context) -> Result<u64> {
        let b = &self.bucket;
        let name = b.name().to_string();
        let mut reader = ManifestReader::new(b, mref);
        let mut vl = b.version_lister(&self.prefix);
        let mut work = Work::default();
        let mut m = reader.next().await?;
        let mut c = vl.next().await?;
        loop {
            let ord = match (&m, &c) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(e), Some(kv)) => e.key.cmp(&kv.key),
            };
            match ord {
                Ordering::Less => {
                    // Verified before: cannot happen unless the bucket changed meanwhile.
                    let e = m.take().unwrap_or_else(|| unreachable!());
                    return Err(Error::conflict(format!(
                        "captured versions of {} disappeared during restore",
                        e.key
                    )));
                }
                Ordering::Greater => {
                    let kv = c.take().unwrap_or_else(|| unreachable!());
                    if kv.current().is_some() {
                        work.deletes.push((kv.key, None));
                    }
                    c = vl.next().await?;
                }
                Ordering::Equal => {
                    let e = m.take().unwrap_or_else(|| unreachable!());
                    let kv = c.take().unwrap_or_else(|| unreachable!());
                    let want = e.version_id.clone().unwrap_or_else(|| "null".into());
                    match version_fix(&kv, &want, e.size, &e.etag, e.last_modified_ms) {
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
                    m = reader.next().await?;
                    c = vl.next().await?;
                }
            }
            if work.len() >= DELETE_BATCH {
                work.flush(b).await?;
                ctx.progress(&self.resource, work.changed, None, "objects restored");
            }
        }
        work.flush(b).await?;
        Ok(work.changed)
    }

    async fn restore_copies(&self, mref: &ManifestRef, ctx: &Context) -> Result<u64> {
        let b = &self.bucket;
        let (Some(cb), Some(cp)) = (&mref.copies_bucket, &mref.copies_prefix) else {
            return Err(Error::invalid("copy snapshot without a copies location"));
        };
        let mut reader = ManifestReader::new(b, mref);
        let mut l = b.lister(&self.prefix);
        let mut work = Work::default();
        let mut m = reader.next().await?;
        let mut c = l.next().await?;
        loop {
            let ord = match (&m, &c) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(e), Some(o)) => e.key.cmp(&o.key),
            };
            let copy_back = |e: &ManifestEntry| {
                (
                    cb.clone(),
                    format!("{cp}{}", e.key),
                    None,
                    e.key.clone(),
                    e.copy_etag.clone(),
                )
            };
            match ord {
                Ordering::Less => {
                    let e = m.take().unwrap_or_else(|| unreachable!());
                    work.copies.push(copy_back(&e));
                    m = reader.next().await?;
                }
                Ordering::Greater => {
                    let o = c.take().unwrap_or_else(|| unreachable!());
                    work.deletes.push((o.key, None));
                    c = l.next().await?;
                }
                Ordering::Equal => {
                    let e = m.take().unwrap_or_else(|| unreachable!());
                    let o = c.take().unwrap_or_else(|| unreachable!());
                    if o.etag != e.etag || o.size != e.size {
                        work.copies.push(copy_back(&e));
                    }
                    m = reader.next().await?;
                    c = l.next().await?;
                }
            }
            if work.len() >= DELETE_BATCH {
                work.flush(b).await?;
                ctx.progress(&self.resource, work.changed, None, "objects restored");
            }
        }
        work.flush(b).await?;
        Ok(work.changed)
    }
}

#[async_trait]
impl Checkpoint for S3Checkpoint {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
        let mode = self.resolve().await?;
        let id = format!("s3-{}", uuid::Uuid::new_v4().simple());
        let store = self.bucket.store_bucket();
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
        Ok(Snapshot {
            id,
            resource: self.resource.clone(),
            kind: format!("s3.{}", mode.name()),
            digest,
            fingerprint,
            captured_at_ms: rollback_core::now_ms(),
            size_bytes: Some(mref.total_bytes),
            descriptor: serde_json::to_value(&mref)
                .map_err(|e| Error::invalid(format!("descriptor: {e}")))?,
        })
    }

    async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
        let mref = self.verify_manifest(snapshot).await?;
        self.verify_content(snapshot, &mref).await?;
        let method = mref.header.mode.clone();
        let changed = match method.as_str() {
            "versions" => self.restore_versions(&mref, ctx).await,
            _ => self.restore_copies(&mref, ctx).await,
        }
        .map_err(after_writes)?;
        tracing::info!(resource = %self.resource, method = %method, changed, "restored");
        Ok(Restored::by(method)
            .changed(changed)
            .note(format!("{} objects in the manifest", mref.entries)))
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        let mut h = Hasher::new();
        let mut l = self.bucket.lister(&self.prefix);
        while let Some(page) = l.next_page().await? {
            for o in &page {
                fingerprint_field(&mut h, &o.key, o.size, &o.etag);
            }
        }
        Ok(h.finish())
    }

    async fn discard(&self, snapshot: &Snapshot, _ctx: &Context) -> Result<()> {
        let mref = ManifestRef::from_descriptor(&snapshot.descriptor)?;
        let store = self.bucket.store_bucket();
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
