//! Manifests: the key-ordered list of every object of a prefix (size, ETag,
//! last-modified, version id, optional blake3 of content), stored as JSON-lines objects
//! in parts of [`PART_ENTRIES`] entries, with a blake3 digest over all parts.

use crate::backend::{ObjectBackend, PutMode};
use crate::bucket::ObjectInfo;
use crate::error::backend_msg;
use crate::listing::{url, Objects};
use rollback_core::{Digest, Error, Hasher, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Default entries per stored manifest part (about 1–2 MB of JSON lines).
pub const PART_ENTRIES: usize = 10_000;

/// The manifest format tag.
pub const FORMAT: &str = "rollback-s3.manifest/1";

/// One object in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The key.
    #[serde(rename = "k")]
    pub key: String,
    /// Size in bytes.
    #[serde(rename = "s")]
    pub size: u64,
    /// ETag, unquoted.
    #[serde(rename = "e")]
    pub etag: String,
    /// Last modified, milliseconds since the Unix epoch.
    #[serde(rename = "m")]
    pub last_modified_ms: i64,
    /// The captured version id (versioned buckets).
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// blake3 of the content (hex), when content digests were asked for.
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// ETag of the snapshot copy (copy-based snapshots).
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub copy_etag: Option<String>,
}

impl ManifestEntry {
    /// An entry for a listed object.
    pub fn from_info(o: &ObjectInfo) -> Self {
        ManifestEntry {
            key: o.key.clone(),
            size: o.size,
            etag: o.etag.clone(),
            last_modified_ms: o.last_modified_ms,
            version_id: o.version_id.clone(),
            blake3: None,
            copy_etag: None,
        }
    }
}

/// The first line of a manifest: what it is of. Covered by the digest, and compared with
/// the snapshot descriptor on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// [`FORMAT`].
    pub format: String,
    /// The resource id.
    pub resource: String,
    /// The bucket.
    pub bucket: String,
    /// The prefix.
    pub prefix: String,
    /// `"versions"` or `"copy"` (or `"listing"` for a plain manifest).
    pub mode: String,
    /// Where snapshot copies are (copy mode): `bucket/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<String>,
}

/// Where a stored manifest is and what it holds; the `descriptor` of a
/// [`rollback_core::Snapshot`] taken by [`crate::S3Checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRef {
    /// The header the manifest starts with.
    pub header: ManifestHeader,
    /// The bucket the manifest parts are stored in.
    pub store_bucket: String,
    /// The key prefix of the parts (`part-000000.jsonl`, ...).
    pub parts_prefix: String,
    /// Number of parts.
    pub parts: u32,
    /// Number of entries.
    pub entries: u64,
    /// Sum of object sizes.
    pub total_bytes: u64,
    /// Whether entries carry blake3 digests of content.
    pub content_digests: bool,
    /// Where the copies of a copy-based snapshot are: bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies_bucket: Option<String>,
    /// Where the copies of a copy-based snapshot are: key prefix (a copy of `key` is at
    /// `copies_prefix + key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies_prefix: Option<String>,
}

impl ManifestRef {
    /// The key of part `i`.
    pub fn part_key(&self, i: u32) -> String {
        part_key(&self.parts_prefix, i)
    }

    /// Parse from a snapshot descriptor.
    ///
    /// # Errors
    /// [`Error::Invalid`] when it is not one.
    pub fn from_descriptor(v: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(v.clone())
            .map_err(|e| Error::invalid(format!("not an S3 manifest descriptor: {e}")))
    }
}

fn part_key(prefix: &str, i: u32) -> String {
    format!("{prefix}part-{i:06}.jsonl")
}

/// Feed one object into a fingerprint hasher (key, size, ETag).
pub(crate) fn fingerprint_field(h: &mut Hasher, key: &str, size: u64, etag: &str) {
    h.field(key.as_bytes())
        .field(&size.to_le_bytes())
        .field(etag.as_bytes());
}

/// Writes a manifest part by part while hashing it.
pub(crate) struct ManifestWriter {
    store: Objects,
    parts_prefix: String,
    header: ManifestHeader,
    part_entries: usize,
    buf: Vec<u8>,
    in_part: usize,
    parts: u32,
    entries: u64,
    total_bytes: u64,
    digest: Hasher,
    fingerprint: Hasher,
}

impl ManifestWriter {
    pub(crate) fn new(
        store: Objects,
        parts_prefix: String,
        header: ManifestHeader,
        part_entries: usize,
    ) -> Self {
        let mut buf = serde_json::to_vec(&header).unwrap_or_default();
        buf.push(b'\n');
        ManifestWriter {
            store,
            parts_prefix,
            header,
            part_entries: part_entries.max(1),
            buf,
            in_part: 0,
            parts: 0,
            entries: 0,
            total_bytes: 0,
            digest: Hasher::new(),
            fingerprint: Hasher::new(),
        }
    }

    /// Entries pushed so far.
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    pub(crate) async fn push(&mut self, e: &ManifestEntry) -> Result<()> {
        serde_json::to_writer(&mut self.buf, e)
            .map_err(|e| Error::invalid(format!("manifest entry: {e}")))?;
        self.buf.push(b'\n');
        fingerprint_field(&mut self.fingerprint, &e.key, e.size, &e.etag);
        self.entries += 1;
        self.total_bytes += e.size;
        self.in_part += 1;
        if self.in_part >= self.part_entries {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let bytes = std::mem::take(&mut self.buf);
        self.digest.update(&bytes);
        let key = part_key(&self.parts_prefix, self.parts);
        self.store
            .put_object(&key, bytes.into(), PutMode::Overwrite)
            .await?;
        self.parts += 1;
        self.in_part = 0;
        Ok(())
    }

    /// Store the last part; returns the reference, the digest and the fingerprint.
    pub(crate) async fn finish(
        mut self,
        content_digests: bool,
        copies: Option<(String, String)>,
    ) -> Result<(ManifestRef, Digest, Digest)> {
        if self.in_part > 0 || self.parts == 0 {
            self.flush().await?;
        }
        let (copies_bucket, copies_prefix) = match copies {
            Some((b, p)) => (Some(b), Some(p)),
            None => (None, None),
        };
        Ok((
            ManifestRef {
                header: self.header,
                store_bucket: self.store.name().to_string(),
                parts_prefix: self.parts_prefix,
                parts: self.parts,
                entries: self.entries,
                total_bytes: self.total_bytes,
                content_digests,
                copies_bucket,
                copies_prefix,
            },
            self.digest.finish(),
            self.fingerprint.finish(),
        ))
    }
}

/// Reads a stored manifest, part by part.
pub(crate) struct ManifestReader {
    store: Objects,
    mref: ManifestRef,
    next_part: u32,
    buf: VecDeque<ManifestEntry>,
    /// The first part, kept from verification (saves a request for small manifests).
    cached_first: Option<bytes::Bytes>,
}

impl ManifestReader {
    pub(crate) fn new(bucket: &Objects, mref: &ManifestRef) -> Self {
        let store = if mref.store_bucket == bucket.name() {
            bucket.clone()
        } else {
            bucket.store_backend()
        };
        ManifestReader {
            store,
            mref: mref.clone(),
            next_part: 0,
            buf: VecDeque::new(),
            cached_first: None,
        }
    }

    async fn part(&self, i: u32) -> Result<bytes::Bytes> {
        let key = self.mref.part_key(i);
        self.store.get(&key).await?.ok_or_else(|| {
            backend_msg(
                format!("manifest part {} is missing", url(&*self.store, &key)),
                false,
            )
        })
    }

    /// Read every part and return the digest of their content (and check the header).
    pub(crate) async fn digest(&mut self) -> Result<Digest> {
        let mut h = Hasher::new();
        for i in 0..self.mref.parts {
            let bytes = self.part(i).await?;
            h.update(&bytes);
            if i == 0 {
                let header_line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
                let header: Option<ManifestHeader> = serde_json::from_slice(header_line).ok();
                if header.as_ref() != Some(&self.mref.header) {
                    // Report as a digest problem: the content is not what was captured.
                    tracing::error!(
                        parts = %self.mref.parts_prefix,
                        "manifest header does not match the snapshot descriptor"
                    );
                    h.update(b"\0header-mismatch");
                }
                if self.mref.parts == 1 {
                    self.cached_first = Some(bytes);
                }
            }
        }
        Ok(h.finish())
    }

    /// The next entry, in key order.
    pub(crate) async fn next(&mut self) -> Result<Option<ManifestEntry>> {
        while self.buf.is_empty() {
            if self.next_part >= self.mref.parts {
                return Ok(None);
            }
            let bytes = match (self.next_part, self.cached_first.take()) {
                (0, Some(b)) => b,
                (i, _) => self.part(i).await?,
            };
            let first = self.next_part == 0;
            self.next_part += 1;
            for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if line.is_empty() || (first && n == 0) {
                    continue;
                }
                let e: ManifestEntry = serde_json::from_slice(line).map_err(|e| {
                    Error::invalid(format!(
                        "manifest {} part {}: malformed entry: {e}",
                        self.mref.parts_prefix,
                        self.next_part - 1
                    ))
                })?;
                self.buf.push_back(e);
            }
        }
        Ok(self.buf.pop_front())
    }
}
