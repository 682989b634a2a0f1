//! Verifiers: manifest parity, object exists / absent, and predicates over objects.

use crate::backend::ObjectBackend;
use crate::bucket::{ObjectInfo, DELETE_BATCH};
use crate::listing::{lister, run_concurrent, url, Objects};
use crate::manifest::{ManifestEntry, ManifestReader, ManifestRef};
use crate::S3Checkpoint;
use async_trait::async_trait;
use bytes::Bytes;
use rollback_core::{Checkpoint, Context, Error, Result, Snapshot, Verdict, Verifier};
use serde_json::json;
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// Keys listed per kind of difference in a verdict's evidence.
pub const SAMPLE_CAP: usize = 20;

#[derive(Debug, Clone)]
enum Against {
    /// The run's baseline snapshot of this resource.
    Baseline(String),
    /// A given snapshot.
    Snapshot(Box<Snapshot>),
}

/// Parity of a prefix with a manifest: the baseline snapshot of a checkpoint (from
/// [`Context::baseline`]) or any [`S3Checkpoint`] snapshot. Compares object counts, total
/// bytes, and per key the size and ETag (or, with [`ManifestParity::by_content`], a blake3
/// of the content when the manifest has content digests). The evidence lists missing,
/// extra and changed keys (at most [`SAMPLE_CAP`] of each) with their counts.
///
/// With [`ManifestParity::mapped`] it checks a re-layout: the manifest's objects under
/// `from` must be exactly the current objects under `to` (same suffixes, same content).
///
/// ```no_run
/// # fn demo(bucket: rollback_s3::S3Bucket) {
/// use rollback_s3::{ManifestParity, S3Checkpoint};
/// let cp = S3Checkpoint::new(&bucket, "");
/// // After moving v1/ to v2/: v2/ holds exactly what v1/ held at the baseline.
/// let moved_intact = ManifestParity::against_baseline("v2-equals-v1", &cp).mapped("v1/", "v2/");
/// # let _ = moved_intact; }
/// ```
#[derive(Debug, Clone)]
pub struct ManifestParity {
    id: String,
    bucket: Objects,
    prefix: String,
    against: Against,
    mapping: Option<(String, String)>,
    by_content: bool,
}

#[derive(Default)]
struct Tally {
    expected_objects: u64,
    expected_bytes: u64,
    actual_objects: u64,
    actual_bytes: u64,
    missing: (u64, Vec<String>),
    extra: (u64, Vec<String>),
    changed: (u64, Vec<serde_json::Value>),
}

fn note<T>(slot: &mut (u64, Vec<T>), v: T) {
    slot.0 += 1;
    if slot.1.len() < SAMPLE_CAP {
        slot.1.push(v);
    }
}

impl ManifestParity {
    /// Parity of `checkpoint`'s prefix with the run's baseline snapshot of it.
    pub fn against_baseline(id: &str, checkpoint: &S3Checkpoint) -> Self {
        ManifestParity {
            id: id.into(),
            bucket: checkpoint.bucket().clone(),
            prefix: checkpoint.prefix().into(),
            against: Against::Baseline(checkpoint.resource().into()),
            mapping: None,
            by_content: false,
        }
    }

    /// Parity of `prefix` of `bucket` with the manifest of `snapshot` (taken by an
    /// [`S3Checkpoint`], possibly of another prefix: combine with
    /// [`ManifestParity::mapped`]).
    pub fn against_snapshot<B>(id: &str, bucket: &B, prefix: &str, snapshot: Snapshot) -> Self
    where
        B: ObjectBackend + Clone + 'static,
    {
        ManifestParity {
            id: id.into(),
            bucket: Arc::new(bucket.clone()),
            prefix: prefix.into(),
            against: Against::Snapshot(Box::new(snapshot)),
            mapping: None,
            by_content: false,
        }
    }

    /// Compare the manifest's objects under `from` with the current objects under `to`.
    pub fn mapped(mut self, from: &str, to: &str) -> Self {
        self.mapping = Some((from.into(), to.into()));
        self
    }

    /// Compare content digests (blake3, one GET per current object) instead of ETags;
    /// needs a manifest captured with [`S3Checkpoint::content_digests`].
    pub fn by_content(mut self, on: bool) -> Self {
        self.by_content = on;
        self
    }

    fn snapshot<'a>(&'a self, ctx: &'a Context) -> Result<&'a Snapshot> {
        match &self.against {
            Against::Snapshot(s) => Ok(s),
            Against::Baseline(r) => ctx.baseline(r).ok_or_else(|| {
                Error::invalid(format!(
                    "verifier {}: no baseline snapshot of {r} in this run (is its checkpoint in the plan?)",
                    self.id
                ))
            }),
        }
    }

    async fn compare_page(
        &self,
        pairs: Vec<(ManifestEntry, ObjectInfo)>,
        t: &mut Tally,
    ) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        if !self.by_content {
            for (e, o) in pairs {
                if e.size != o.size || e.etag != o.etag {
                    note(
                        &mut t.changed,
                        json!({"key": o.key, "expected": {"size": e.size, "etag": e.etag}, "actual": {"size": o.size, "etag": o.etag}}),
                    );
                }
            }
            return Ok(());
        }
        let b = &self.bucket;
        let results = run_concurrent(&**b, pairs, |(e, o)| async move {
            let body = b.get(&o.key).await?;
            let actual = body.map(|x| blake3::hash(&x).to_hex().to_string());
            Ok((e, o, actual))
        })
        .await?;
        for (e, o, actual) in results {
            if e.blake3.is_none() || e.blake3 != actual || e.size != o.size {
                note(
                    &mut t.changed,
                    json!({"key": o.key, "expected": {"size": e.size, "blake3": e.blake3}, "actual": {"size": o.size, "blake3": actual}}),
                );
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Verifier for ManifestParity {
    fn id(&self) -> &str {
        &self.id
    }

    fn baselines(&self) -> Vec<String> {
        match &self.against {
            Against::Baseline(r) => vec![r.clone()],
            Against::Snapshot(_) => Vec::new(),
        }
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        let snap = self.snapshot(ctx)?;
        let mref = ManifestRef::from_descriptor(&snap.descriptor)?;
        if self.by_content && !mref.content_digests {
            return Ok(Verdict::inconclusive(format!(
                "{}: the manifest of {} has no content digests (capture with content_digests(true))",
                self.id, snap.resource
            )));
        }
        let actual_digest = ManifestReader::new(&self.bucket, &mref).digest().await?;
        snap.ensure_digest(actual_digest)?;
        let (from, to) = match &self.mapping {
            Some((f, t)) => (f.clone(), t.clone()),
            None => (self.prefix.clone(), self.prefix.clone()),
        };
        let mut reader = ManifestReader::new(&self.bucket, &mref);
        let mut lister = lister(&self.bucket, &to);
        let mut t = Tally::default();
        let mut m = next_mapped(&mut reader, &from, &to).await?;
        let mut c = lister.next().await?;
        let mut pairs = Vec::new();
        loop {
            let ord = match (&m, &c) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(e), Some(o)) => e.key.cmp(&o.key),
            };
            match ord {
                Ordering::Less => {
                    let e = m.take().unwrap_or_else(|| unreachable!());
                    t.expected_objects += 1;
                    t.expected_bytes += e.size;
                    note(&mut t.missing, e.key);
                    m = next_mapped(&mut reader, &from, &to).await?;
                }
                Ordering::Greater => {
                    let o = c.take().unwrap_or_else(|| unreachable!());
                    t.actual_objects += 1;
                    t.actual_bytes += o.size;
                    note(&mut t.extra, o.key);
                    c = lister.next().await?;
                }
                Ordering::Equal => {
                    let e = m.take().unwrap_or_else(|| unreachable!());
                    let o = c.take().unwrap_or_else(|| unreachable!());
                    t.expected_objects += 1;
                    t.expected_bytes += e.size;
                    t.actual_objects += 1;
                    t.actual_bytes += o.size;
                    pairs.push((e, o));
                    m = next_mapped(&mut reader, &from, &to).await?;
                    c = lister.next().await?;
                }
            }
            if pairs.len() >= DELETE_BATCH {
                self.compare_page(std::mem::take(&mut pairs), &mut t)
                    .await?;
            }
        }
        self.compare_page(pairs, &mut t).await?;
        let differences = t.missing.0 + t.extra.0 + t.changed.0;
        let what = if self.by_content {
            "content"
        } else {
            "size+ETag"
        };
        let target = match &self.mapping {
            Some((f, to)) => format!("{} vs {}@{f}", url(&*self.bucket, to), snap.resource),
            None => format!("{} vs {}", url(&*self.bucket, &self.prefix), snap.resource),
        };
        let summary = if differences == 0 {
            format!(
                "{target}: {} objects, {} bytes, {what} identical",
                t.actual_objects, t.actual_bytes
            )
        } else {
            format!(
                "{target}: {} missing, {} extra, {} changed ({} expected, {} found)",
                t.missing.0, t.extra.0, t.changed.0, t.expected_objects, t.actual_objects
            )
        };
        Ok(Verdict::check(differences == 0, summary)
            .with_evidence(json!({
                "snapshot": snap.id,
                "manifest_digest": snap.digest,
                "compared_by": what,
                "expected": {"objects": t.expected_objects, "bytes": t.expected_bytes},
                "actual": {"objects": t.actual_objects, "bytes": t.actual_bytes},
                "missing": {"count": t.missing.0, "sample": t.missing.1},
                "extra": {"count": t.extra.0, "sample": t.extra.1},
                "changed": {"count": t.changed.0, "sample": t.changed.1},
            }))
            .with_value(differences as f64))
    }
}

/// The next manifest entry under `from`, its key moved under `to`.
async fn next_mapped(
    r: &mut ManifestReader,
    from: &str,
    to: &str,
) -> Result<Option<ManifestEntry>> {
    while let Some(mut e) = r.next().await? {
        if e.key.starts_with(from) {
            e.key = format!("{to}{}", &e.key[from.len()..]);
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// Passes when an object exists (optionally with a given ETag).
#[derive(Debug, Clone)]
pub struct ObjectExists {
    id: String,
    bucket: Objects,
    key: String,
    etag: Option<String>,
}

impl ObjectExists {
    /// Check that `key` exists in `bucket`.
    pub fn new<B>(id: &str, bucket: &B, key: &str) -> Self
    where
        B: ObjectBackend + Clone + 'static,
    {
        ObjectExists {
            id: id.into(),
            bucket: Arc::new(bucket.clone()),
            key: key.into(),
            etag: None,
        }
    }

    /// Also require this ETag.
    pub fn with_etag(mut self, etag: &str) -> Self {
        self.etag = Some(etag.trim_matches('"').into());
        self
    }
}

#[async_trait]
impl Verifier for ObjectExists {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let url = url(&*self.bucket, &self.key);
        Ok(match self.bucket.head(&self.key).await? {
            None => Verdict::fail(format!("{url} does not exist"))
                .with_evidence(json!({"key": self.key, "exists": false})),
            Some(o) => {
                let ok = self.etag.as_ref().is_none_or(|e| *e == o.etag);
                Verdict::check(
                    ok,
                    if ok {
                        format!("{url} exists ({} bytes)", o.size)
                    } else {
                        format!("{url} exists with another ETag")
                    },
                )
                .with_evidence(json!({"key": self.key, "exists": true, "size": o.size, "etag": o.etag, "expected_etag": self.etag}))
            }
        })
    }
}

/// Passes when an object (or every object under a prefix) is absent.
#[derive(Debug, Clone)]
pub struct ObjectAbsent {
    id: String,
    bucket: Objects,
    key: String,
    prefix: bool,
}

impl ObjectAbsent {
    /// Check that `key` does not exist in `bucket`.
    pub fn key<B>(id: &str, bucket: &B, key: &str) -> Self
    where
        B: ObjectBackend + Clone + 'static,
    {
        ObjectAbsent {
            id: id.into(),
            bucket: Arc::new(bucket.clone()),
            key: key.into(),
            prefix: false,
        }
    }

    /// Check that nothing exists under `prefix` in `bucket` (the store excepted).
    pub fn prefix<B>(id: &str, bucket: &B, prefix: &str) -> Self
    where
        B: ObjectBackend + Clone + 'static,
    {
        ObjectAbsent {
            id: id.into(),
            bucket: Arc::new(bucket.clone()),
            key: prefix.into(),
            prefix: true,
        }
    }
}

#[async_trait]
impl Verifier for ObjectAbsent {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let url = url(&*self.bucket, &self.key);
        if !self.prefix {
            return Ok(match self.bucket.head(&self.key).await? {
                None => Verdict::pass(format!("{url} is absent")),
                Some(o) => Verdict::fail(format!("{url} exists ({} bytes)", o.size))
                    .with_evidence(json!({"key": o.key, "size": o.size, "etag": o.etag})),
            });
        }
        let mut l = lister(&self.bucket, &self.key);
        let mut count = 0u64;
        let mut sample = Vec::new();
        while let Some(page) = l.next_page().await? {
            count += page.len() as u64;
            sample.extend(
                page.into_iter()
                    .take(SAMPLE_CAP - sample.len().min(SAMPLE_CAP))
                    .map(|o| o.key),
            );
        }
        Ok(Verdict::check(
            count == 0,
            if count == 0 {
                format!("nothing under {url}")
            } else {
                format!("{count} objects under {url}")
            },
        )
        .with_evidence(json!({"prefix": self.key, "count": count, "sample": sample}))
        .with_value(count as f64))
    }
}

type MetaPred = Arc<dyn Fn(&ObjectInfo) -> bool + Send + Sync>;
type ContentPred = Arc<dyn Fn(&ObjectInfo, &Bytes) -> bool + Send + Sync>;

#[derive(Clone)]
enum Pred {
    Meta(MetaPred),
    Content(ContentPred),
}

/// A custom predicate over every object under a prefix: over its listing entry (key,
/// size, ETag, last-modified) or over its content (one GET per object). Fails when any
/// object does not satisfy it; the evidence lists the offenders, and the verdict's value
/// is their count (for trigger thresholds).
///
/// ```no_run
/// # fn demo(bucket: rollback_s3::S3Bucket) {
/// use rollback_s3::ObjectPredicate;
/// let non_empty = ObjectPredicate::metadata("no-empty-objects", &bucket, "v2/", "size > 0", |o| o.size > 0);
/// let json = ObjectPredicate::content("valid-json", &bucket, "v2/", "parses as JSON", |_o, body| {
///     serde_json::from_slice::<serde_json::Value>(body).is_ok()
/// });
/// # let _ = (non_empty, json); }
/// ```
#[derive(Clone)]
pub struct ObjectPredicate {
    id: String,
    bucket: Objects,
    prefix: String,
    label: String,
    pred: Pred,
}

impl fmt::Debug for ObjectPredicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectPredicate")
            .field("id", &self.id)
            .field("bucket", &self.bucket.name())
            .field("prefix", &self.prefix)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl ObjectPredicate {
    /// A predicate over listing entries; `label` says what it checks.
    pub fn metadata<B, F>(id: &str, bucket: &B, prefix: &str, label: &str, f: F) -> Self
    where
        B: ObjectBackend + Clone + 'static,
        F: Fn(&ObjectInfo) -> bool + Send + Sync + 'static,
    {
        ObjectPredicate {
            id: id.into(),
            bucket: Arc::new(bucket.clone()),
            prefix: prefix.into(),
            label: label.into(),
            pred: Pred::Meta(Arc::new(f)),
        }
    }

    /// A predicate over content.
    pub fn content<B, F>(id: &str, bucket: &B, prefix: &str, label: &str, f: F) -> Self
    where
        B: ObjectBackend + Clone + 'static,
        F: Fn(&ObjectInfo, &Bytes) -> bool + Send + Sync + 'static,
    {
        ObjectPredicate {
            id: id.into(),
            bucket: Arc::new(bucket.clone()),
            prefix: prefix.into(),
            label: label.into(),
            pred: Pred::Content(Arc::new(f)),
        }
    }
}

#[async_trait]
impl Verifier for ObjectPredicate {
    fn id(&self) -> &str {
        &self.id
    }

    async fn verify(&self, _ctx: &Context) -> Result<Verdict> {
        let b = &self.bucket;
        let mut l = lister(b, &self.prefix);
        let (mut checked, mut failed) = (0u64, (0u64, Vec::new()));
        while let Some(page) = l.next_page().await? {
            checked += page.len() as u64;
            let oks: Vec<(String, bool)> = match &self.pred {
                Pred::Meta(f) => page.iter().map(|o| (o.key.clone(), f(o))).collect(),
                Pred::Content(f) => {
                    run_concurrent(&**b, page, |o| {
                        let f = f.clone();
                        async move {
                            let ok = match b.get(&o.key).await? {
                                Some(body) => f(&o, &body),
                                None => true, // deleted meanwhile: nothing to judge
                            };
                            Ok((o.key, ok))
                        }
                    })
                    .await?
                }
            };
            for (k, ok) in oks {
                if !ok {
                    note(&mut failed, k);
                }
            }
        }
        let url = url(&**b, &self.prefix);
        Ok(Verdict::check(
            failed.0 == 0,
            if failed.0 == 0 {
                format!("all {checked} objects under {url} satisfy: {}", self.label)
            } else {
                format!(
                    "{} of {checked} objects under {url} fail: {}",
                    failed.0, self.label
                )
            },
        )
        .with_evidence(json!({"predicate": self.label, "checked": checked, "failed": failed.0, "sample": failed.1}))
        .with_value(failed.0 as f64))
    }
}
