//! Streaming over any [`ObjectBackend`]: paged listings that skip the store, version
//! listings grouped per key, bounded concurrency, and batched copy and delete work — the
//! building blocks every checkpoint, step and verifier of this crate is written over.

use crate::backend::{ObjectBackend, VersionedBackend};
use crate::bucket::ObjectInfo;
use futures::{StreamExt, TryStreamExt};
use rollback_core::{Error, Result};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

/// A shared handle on any backend.
pub(crate) type Objects = Arc<dyn ObjectBackend>;

/// The smallest string greater than every key starting with `prefix` (for skipping an
/// excluded prefix in a listing).
fn past(prefix: &str) -> String {
    format!("{prefix}{}", "\u{10FFFF}".repeat(4))
}

/// The resource id of a prefix of a backend: `<scheme>:<name>/<prefix>`.
pub(crate) fn resource_id(b: &dyn ObjectBackend, prefix: &str) -> String {
    format!("{}:{}/{}", b.scheme(), b.name(), prefix)
}

/// The URL of a key (or prefix) of a backend: `<scheme>://<name>/<key>`.
pub(crate) fn url(b: &dyn ObjectBackend, key: &str) -> String {
    format!("{}://{}/{}", b.scheme(), b.name(), key)
}

/// The prefix to exclude from listings of `prefix` of `b` (the store, when it lies
/// inside).
pub(crate) fn exclusion_for(b: &dyn ObjectBackend, prefix: &str) -> Option<String> {
    let s = b.store_location();
    (s.bucket == b.name() && s.prefix.starts_with(prefix) && !s.prefix.is_empty())
        .then(|| s.prefix.clone())
}

/// The versioning capability of `b`, or an error naming what needed it.
pub(crate) fn versioned<'a>(
    b: &'a dyn ObjectBackend,
    what: &str,
) -> Result<&'a dyn VersionedBackend> {
    b.as_versioned().ok_or_else(|| {
        Error::invalid(format!(
            "{what} needs a versioned backend, and {} is not",
            url(b, "")
        ))
    })
}

/// Run `f` over `items` with at most `b`'s concurrency in flight; results in input order.
pub(crate) async fn run_concurrent<T, R, F, Fut>(
    b: &dyn ObjectBackend,
    items: Vec<T>,
    f: F,
) -> Result<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R>>,
{
    futures::stream::iter(items.into_iter().map(f))
        .buffered(b.concurrency_limit())
        .try_collect()
        .await
}

/// A paged listing of `prefix` that skips the store.
pub(crate) fn lister(b: &Objects, prefix: &str) -> Lister {
    Lister::new(b.clone(), prefix, exclusion_for(&**b, prefix))
}

/// A paged listing of `prefix` that skips nothing.
pub(crate) fn raw_lister(b: &Objects, prefix: &str) -> Lister {
    Lister::new(b.clone(), prefix, None)
}

/// A paged listing of every version of `prefix`, grouped per key, skipping the store.
pub(crate) fn version_lister(b: &Objects, prefix: &str) -> VersionLister {
    VersionLister::new(b.clone(), prefix, exclusion_for(&**b, prefix))
}

/// A paged, forward-only listing (`ListObjectsV2` on S3: 1000 keys per request).
pub(crate) struct Lister {
    bucket: Objects,
    prefix: String,
    exclude: Option<String>,
    token: Option<String>,
    start_after: Option<String>,
    done: bool,
    buf: VecDeque<ObjectInfo>,
}

impl Lister {
    fn new(bucket: Objects, prefix: &str, exclude: Option<String>) -> Self {
        Lister {
            bucket,
            prefix: prefix.to_string(),
            exclude,
            token: None,
            start_after: None,
            done: false,
            buf: VecDeque::new(),
        }
    }

    /// Start after `key` (exclusive).
    pub(crate) fn start_after(mut self, key: Option<String>) -> Self {
        self.start_after = key;
        self
    }

    async fn fetch(&mut self) -> Result<Option<Vec<ObjectInfo>>> {
        if self.done {
            return Ok(None);
        }
        let out = self
            .bucket
            .list_page(
                &self.prefix,
                if self.token.is_none() {
                    self.start_after.as_deref()
                } else {
                    None
                },
                self.token.as_deref(),
            )
            .await?;
        let mut page = Vec::with_capacity(out.objects.len());
        let mut hit_exclusion = false;
        let mut last = None;
        for o in out.objects {
            last = Some(o.key.clone());
            if let Some(x) = &self.exclude {
                if o.key.starts_with(x.as_str()) {
                    hit_exclusion = true;
                    continue;
                }
            }
            page.push(o);
        }
        match out.next {
            Some(t) => {
                let in_exclusion = matches!((&self.exclude, &last), (Some(x), Some(l)) if l.starts_with(x.as_str()));
                if hit_exclusion && in_exclusion {
                    // Jump over the excluded prefix instead of paging through it.
                    self.token = None;
                    self.start_after = self.exclude.as_deref().map(past);
                } else {
                    self.token = Some(t);
                }
            }
            _ => self.done = true,
        }
        Ok(Some(page))
    }

    /// The next non-empty page, `None` at the end.
    pub(crate) async fn next_page(&mut self) -> Result<Option<Vec<ObjectInfo>>> {
        if !self.buf.is_empty() {
            return Ok(Some(self.buf.drain(..).collect()));
        }
        loop {
            match self.fetch().await? {
                None => return Ok(None),
                Some(p) if p.is_empty() => continue,
                Some(p) => return Ok(Some(p)),
            }
        }
    }

    /// Count what is left of the listing.
    pub(crate) async fn count(mut self) -> Result<u64> {
        let mut n = self.buf.len() as u64;
        self.buf.clear();
        while let Some(p) = self.next_page().await? {
            n += p.len() as u64;
        }
        Ok(n)
    }

    /// The next object, `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<ObjectInfo>> {
        if self.buf.is_empty() {
            match self.next_page().await? {
                None => return Ok(None),
                Some(p) => self.buf.extend(p),
            }
        }
        Ok(self.buf.pop_front())
    }

    /// The next object without consuming it.
    pub(crate) async fn peek(&mut self) -> Result<Option<&ObjectInfo>> {
        if self.buf.is_empty() {
            if let Some(p) = self.next_page().await? {
                self.buf.extend(p);
            }
        }
        Ok(self.buf.front())
    }
}

/// One version (or delete marker) of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionEntry {
    pub(crate) version_id: String,
    pub(crate) is_latest: bool,
    pub(crate) size: u64,
    pub(crate) etag: String,
    pub(crate) last_modified_ms: i64,
}

/// Every version and delete marker of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyVersions {
    pub(crate) key: String,
    /// Versions holding data, newest first.
    pub(crate) versions: Vec<VersionEntry>,
    /// Delete markers, newest first.
    pub(crate) markers: Vec<VersionEntry>,
}

impl KeyVersions {
    /// The current version, `None` when the key is absent (no versions, or a delete
    /// marker is the latest).
    pub(crate) fn current(&self) -> Option<&VersionEntry> {
        if self.markers.iter().any(|m| m.is_latest) {
            return None;
        }
        self.versions
            .iter()
            .find(|v| v.is_latest)
            .or_else(|| self.versions.first())
    }

    /// The latest delete marker, when one is the latest entry.
    pub(crate) fn latest_marker(&self) -> Option<&VersionEntry> {
        self.markers.iter().find(|m| m.is_latest)
    }

    fn merge(&mut self, other: KeyVersions) {
        self.versions.extend(other.versions);
        self.markers.extend(other.markers);
    }
}

/// What to do to make `want` (a captured version of a key) current again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VersionFix {
    /// Nothing: the current version is `want`, or has its size and ETag.
    None,
    /// Remove these delete markers (laid over `want`, which is the newest data version).
    RemoveMarkers(Vec<String>),
    /// Copy `want` over the current state (a new version with the same content).
    CopyBack,
}

/// Decide how to make version `want` (size, ETag, last-modified) of `kv.key` current.
pub(crate) fn version_fix(
    kv: &KeyVersions,
    want: &str,
    size: u64,
    etag: &str,
    last_modified_ms: i64,
) -> VersionFix {
    let restored = kv
        .current()
        .is_some_and(|v| v.version_id == want || (v.etag == etag && v.size == size));
    if restored {
        return VersionFix::None;
    }
    let newest = kv.versions.first();
    let newest_ms = newest.map(|n| n.last_modified_ms).unwrap_or(0);
    let only_markers_above = newest.is_some_and(|n| n.version_id == want)
        && kv.latest_marker().is_some()
        && kv
            .versions
            .iter()
            .skip(1)
            .all(|v| v.last_modified_ms <= newest_ms);
    if only_markers_above {
        VersionFix::RemoveMarkers(
            kv.markers
                .iter()
                .filter(|m| m.is_latest || m.last_modified_ms >= last_modified_ms)
                .map(|m| m.version_id.clone())
                .collect(),
        )
    } else {
        VersionFix::CopyBack
    }
}

/// A paged listing of every version (`ListObjectVersions` on S3), grouped per key, in key
/// order.
pub(crate) struct VersionLister {
    bucket: Objects,
    prefix: String,
    exclude: Option<String>,
    key_marker: Option<String>,
    vid_marker: Option<String>,
    done: bool,
    carry: Option<KeyVersions>,
    buf: VecDeque<KeyVersions>,
}

impl VersionLister {
    fn new(bucket: Objects, prefix: &str, exclude: Option<String>) -> Self {
        VersionLister {
            bucket,
            prefix: prefix.to_string(),
            exclude,
            key_marker: None,
            vid_marker: None,
            done: false,
            carry: None,
            buf: VecDeque::new(),
        }
    }

    async fn fetch(&mut self) -> Result<bool> {
        if self.done {
            if let Some(c) = self.carry.take() {
                self.buf.push_back(c);
                return Ok(true);
            }
            return Ok(false);
        }
        let out = versioned(&*self.bucket, "a version listing")?
            .list_versions_page(
                &self.prefix,
                self.key_marker.as_deref(),
                self.vid_marker.as_deref(),
            )
            .await?;
        let mut page: BTreeMap<String, KeyVersions> = BTreeMap::new();
        let excluded = |k: &str| matches!(&self.exclude, Some(x) if k.starts_with(x.as_str()));
        for v in out.versions {
            if excluded(&v.key) {
                continue;
            }
            let kv = page.entry(v.key.clone()).or_insert_with(|| KeyVersions {
                key: v.key.clone(),
                ..Default::default()
            });
            let entry = VersionEntry {
                version_id: v.version_id,
                is_latest: v.is_latest,
                size: v.size,
                etag: v.etag,
                last_modified_ms: v.last_modified_ms,
            };
            if v.delete_marker {
                kv.markers.push(entry);
            } else {
                kv.versions.push(entry);
            }
        }
        // No jump over the excluded prefix here (unlike `Lister`): a `KeyMarker` that is not
        // the last key of a page is mishandled by some servers (moto drops the first
        // version after it), so the store's versions are paged through and skipped.
        match out.next {
            Some((key, vid)) => {
                self.key_marker = Some(key);
                self.vid_marker = vid;
            }
            None => self.done = true,
        }
        // Join the key carried from the previous page; keep the last key of this page
        // back (its versions may continue on the next page).
        if let Some(mut c) = self.carry.take() {
            match page.remove(&c.key) {
                Some(more) => {
                    c.merge(more);
                    page.insert(c.key.clone(), c);
                }
                None => self.buf.push_back(c),
            }
        }
        let mut entries: Vec<KeyVersions> = page.into_values().collect();
        if !self.done {
            self.carry = entries.pop();
        }
        self.buf.extend(entries);
        if self.done {
            if let Some(c) = self.carry.take() {
                self.buf.push_back(c);
            }
        }
        Ok(true)
    }

    /// The next key with all its versions, `None` at the end.
    pub(crate) async fn next(&mut self) -> Result<Option<KeyVersions>> {
        while self.buf.is_empty() {
            if !self.fetch().await? {
                return Ok(None);
            }
        }
        Ok(self.buf.pop_front())
    }
}

/// One server-side copy: (source namespace, source key, source version, destination key,
/// if-match ETag of the source).
pub(crate) type CopyJob = (String, String, Option<String>, String, Option<String>);

/// Batched copy and delete work, flushed every
/// [`DELETE_BATCH`](crate::bucket::DELETE_BATCH) items.
#[derive(Default)]
pub(crate) struct Work {
    /// (source namespace, source key, source version, destination key, if-match)
    pub(crate) copies: Vec<CopyJob>,
    pub(crate) deletes: Vec<(String, Option<String>)>,
    pub(crate) changed: u64,
}

impl Work {
    pub(crate) fn len(&self) -> usize {
        self.copies.len() + self.deletes.len()
    }

    /// Run the copies (into `b`), then the deletes (from `b`). Work naming versions needs
    /// `b`'s versioning capability.
    pub(crate) async fn flush(&mut self, b: &Objects) -> Result<()> {
        let copies = std::mem::take(&mut self.copies);
        let n = copies.len() as u64;
        run_concurrent(&**b, copies, |(sb, sk, sv, dk, m)| async move {
            match sv {
                Some(v) => {
                    versioned(&**b, "copying a version")?
                        .copy_version(&sb, &sk, &v, &dk)
                        .await
                }
                None => b.copy(&sb, &sk, &dk, m.as_deref()).await,
            }
        })
        .await?;
        let deletes = std::mem::take(&mut self.deletes);
        let d = deletes.len() as u64;
        if deletes.iter().any(|(_, v)| v.is_some()) {
            versioned(&**b, "deleting a version")?
                .delete_versions(deletes)
                .await?;
        } else if !deletes.is_empty() {
            b.delete_keys(deletes.into_iter().map(|(k, _)| k).collect())
                .await?;
        }
        self.changed += n + d;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_sorts_after_every_key_of_the_prefix() {
        let p = past(".rollback/");
        assert!(p.as_str() > ".rollback/zzzz/\u{FFFF}");
        assert!(p.as_str() < ".rollback0");
    }
}
