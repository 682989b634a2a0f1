//! [`S3Bucket`]: a bucket handle shared by checkpoints, steps and verifiers, with the
//! low-level operations they use (paged listings, server-side copies, batch deletes),
//! every error mapped onto [`rollback_core::Error`] without credentials.

use crate::backend::{
    ListPage, ObjectBackend, ObjectVersion, PutMode, StoreLocation, VersionPage, VersionedBackend,
};
use crate::config::S3Settings;
use crate::error::{backend_msg, map_sdk, service_status, Op};
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, Delete, ObjectIdentifier, VersioningConfiguration,
};
use aws_sdk_s3::Client;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rollback_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Default number of requests in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Keys per `DeleteObjects` request (the S3 maximum).
pub(crate) const DELETE_BATCH: usize = 1000;

/// The default prefix, in the bucket itself, of snapshots and step state.
pub const DEFAULT_STORE_PREFIX: &str = ".rollback/";

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The ETag without quotes.
    pub etag: String,
    /// Last-modified time, milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
    /// The version id, where the listing gives one (versioned listings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

/// A handle on one bucket: the client, the bucket name, where snapshots and step state
/// are stored, and how many requests run at once. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> rollback_core::Result<()> {
/// use rollback_s3::{S3Bucket, S3Settings};
/// let settings = S3Settings::new("http://127.0.0.1:59000", "us-east-1", "key", "secret");
/// let bucket = S3Bucket::connect(&settings, "media").concurrency(32);
/// bucket.create(true).await?; // versioned
/// bucket.put("v1/acme/logo.png", b"png".to_vec()).await?;
/// assert_eq!(bucket.resource_id("v1/"), "s3:media/v1/");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct S3Bucket {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    name: String,
    store: StoreLocation,
    concurrency: usize,
    redactions: Vec<String>,
}

impl fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Bucket")
            .field("name", &self.inner.name)
            .field("store", &self.inner.store)
            .field("concurrency", &self.inner.concurrency)
            .finish_non_exhaustive()
    }
}

const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn copy_source(bucket: &str, key: &str, version: Option<&str>) -> String {
    let mut s = format!("{bucket}/{}", utf8_percent_encode(key, COPY_SOURCE));
    if let Some(v) = version {
        s.push_str("?versionId=");
        s.push_str(&utf8_percent_encode(v, NON_ALPHANUMERIC).to_string());
    }
    s
}

pub(crate) fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

/// Whether an (unquoted) ETag is a plain MD5 (32 hex digits), not a multipart one.
fn is_md5(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

fn quote(etag: &str) -> String {
    format!("\"{}\"", etag.trim_matches('"'))
}

fn millis(d: Option<&aws_smithy_types::DateTime>) -> i64 {
    d.and_then(|d| d.to_millis().ok()).unwrap_or(0)
}

impl S3Bucket {
    /// A handle on bucket `name` using your own configured client. Snapshots and step
    /// state go under [`DEFAULT_STORE_PREFIX`] in the same bucket.
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        let name = name.into();
        S3Bucket {
            inner: Arc::new(Inner {
                client,
                store: StoreLocation {
                    bucket: name.clone(),
                    prefix: DEFAULT_STORE_PREFIX.into(),
                },
                name,
                concurrency: DEFAULT_CONCURRENCY,
                redactions: Vec::new(),
            }),
        }
    }

    /// A handle on bucket `name` with a client built from `settings` (whose credentials
    /// are also scrubbed from every error message).
    pub fn connect(settings: &S3Settings, name: impl Into<String>) -> Self {
        Self::new(settings.client(), name).redacting(settings.redactions())
    }

    /// Same as [`S3Bucket::connect`], counting requests with `counter`.
    pub fn connect_counted(
        settings: &S3Settings,
        name: impl Into<String>,
        counter: &crate::RequestCounter,
    ) -> Self {
        Self::new(settings.client_counted(counter), name).redacting(settings.redactions())
    }

    fn with(&self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            client: self.inner.client.clone(),
            name: self.inner.name.clone(),
            store: self.inner.store.clone(),
            concurrency: self.inner.concurrency,
            redactions: self.inner.redactions.clone(),
        };
        f(&mut inner);
        S3Bucket {
            inner: Arc::new(inner),
        }
    }

    /// Also scrub these strings (credentials of your own client) from error messages.
    pub fn redacting(self, secrets: impl IntoIterator<Item = String>) -> Self {
        let secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        self.with(|i| i.redactions.extend(secrets))
    }

    /// Keep snapshots and step state in `bucket` under `prefix` (a `/` is appended when
    /// missing). Keys under it are excluded from fingerprints and listings of this crate.
    pub fn store(self, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let bucket = bucket.into();
        self.with(|i| i.store = StoreLocation { bucket, prefix })
    }

    /// Keep snapshots and step state in this bucket under `prefix`.
    pub fn store_prefix(self, prefix: impl Into<String>) -> Self {
        let b = self.inner.name.clone();
        self.store(b, prefix)
    }

    /// Requests in flight at once for listings, copies and deletes (default 16).
    pub fn concurrency(self, n: usize) -> Self {
        self.with(|i| i.concurrency = n.max(1))
    }

    /// The bucket name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Where snapshots and step state are kept.
    pub fn store_location(&self) -> &StoreLocation {
        &self.inner.store
    }

    /// The configured concurrency.
    pub fn concurrency_limit(&self) -> usize {
        self.inner.concurrency
    }

    /// The resource id of a prefix of this bucket: `s3:<bucket>/<prefix>`.
    pub fn resource_id(&self, prefix: &str) -> String {
        format!("s3:{}/{}", self.inner.name, prefix)
    }

    /// A handle on the store bucket (same client and settings).
    pub(crate) fn store_bucket(&self) -> S3Bucket {
        if self.inner.store.bucket == self.inner.name {
            self.clone()
        } else {
            let b = self.inner.store.bucket.clone();
            self.with(|i| i.name = b)
        }
    }

    fn err<E, R>(
        &self,
        e: aws_sdk_s3::error::SdkError<E, R>,
        operation: &'static str,
        key: &str,
        op: Op,
    ) -> Error
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + crate::error::HasStatus,
    {
        map_sdk(
            e,
            operation,
            &format!("s3://{}/{}", self.inner.name, key),
            op,
            &self.inner.redactions,
        )
    }

    /// Create the bucket if it does not exist, and enable versioning when `versioned`.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn create(&self, versioned: bool) -> Result<()> {
        let c = &self.inner.client;
        if let Err(e) = c.create_bucket().bucket(self.name()).send().await {
            let owned = e
                .as_service_error()
                .map(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists())
                .unwrap_or(false);
            if !owned {
                return Err(self.err(e, "CreateBucket", "", Op::Write));
            }
        }
        if versioned {
            c.put_bucket_versioning()
                .bucket(self.name())
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.err(e, "PutBucketVersioning", "", Op::Write))?;
        }
        Ok(())
    }

    /// Whether versioning is enabled (suspended counts as not versioned).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn is_versioned(&self) -> Result<bool> {
        let res = self
            .inner
            .client
            .get_bucket_versioning()
            .bucket(self.name())
            .send()
            .await;
        match res {
            Ok(out) => Ok(out.status() == Some(&BucketVersioningStatus::Enabled)),
            Err(aws_sdk_s3::error::SdkError::ServiceError(s))
                if s.raw().status().as_u16() == 200 =>
            {
                // Some S3-compatible servers (moto) answer with a differently named XML
                // root, which the SDK refuses to parse; the answer is still in the body.
                let body = s.raw().body().bytes().unwrap_or_default();
                let text = String::from_utf8_lossy(body);
                if text.contains("VersioningResponse") || text.contains("VersioningConfiguration") {
                    Ok(text.contains("<Status>Enabled</Status>"))
                } else {
                    Err(self.err(
                        aws_sdk_s3::error::SdkError::ServiceError(s),
                        "GetBucketVersioning",
                        "",
                        Op::Read,
                    ))
                }
            }
            Err(e) => Err(self.err(e, "GetBucketVersioning", "", Op::Read)),
        }
    }

    /// Whether the bucket exists.
    ///
    /// # Errors
    /// Backend errors other than "not found".
    pub async fn exists(&self) -> Result<bool> {
        match self
            .inner
            .client
            .head_bucket()
            .bucket(self.name())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if service_status(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.err(e, "HeadBucket", "", Op::Read)),
        }
    }

    /// Put an object; returns its ETag (unquoted).
    ///
    /// # Errors
    /// Backend errors (`maybe_applied` set when the outcome is uncertain).
    pub async fn put(&self, key: &str, body: impl Into<Bytes>) -> Result<String> {
        self.put_conditional(key, body.into(), PutMode::Overwrite)
            .await
    }

    /// The content of an object, `None` when it does not exist.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.get_version(key, None).await
    }

    /// The content of one version of an object (`None`: the latest), `None` when absent.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn get_version(&self, key: &str, version: Option<&str>) -> Result<Option<Bytes>> {
        let res = self
            .inner
            .client
            .get_object()
            .bucket(self.name())
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await;
        let out = match res {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(self.err(e, "GetObject", key, Op::Read)),
        };
        let body = out.body.collect().await.map_err(|e| {
            Error::transient(
                format!("GetObject s3://{}/{key}: reading body: {e}", self.name()),
                false,
            )
        })?;
        Ok(Some(body.into_bytes()))
    }

    /// An object's size, ETag and version, `None` when it does not exist.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let res = self
            .inner
            .client
            .head_object()
            .bucket(self.name())
            .key(key)
            .send()
            .await;
        match res {
            Ok(o) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: o.content_length().unwrap_or(0).max(0) as u64,
                etag: o.e_tag().map(unquote).unwrap_or_default(),
                last_modified_ms: millis(o.last_modified()),
                version_id: o.version_id().map(str::to_string),
            })),
            Err(e) if service_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.err(e, "HeadObject", key, Op::Read)),
        }
    }

    /// Every object under `prefix` (excluding the store), in key order. Holds the whole
    /// listing in memory: for large prefixes use the streaming checkpoints and steps.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let me: crate::listing::Objects = Arc::new(self.clone());
        let mut l = crate::listing::lister(&me, prefix);
        let mut out = Vec::new();
        while let Some(page) = l.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }

    /// Delete one object (a delete marker on a versioned bucket). Idempotent.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.inner
            .client
            .delete_object()
            .bucket(self.name())
            .key(key)
            .send()
            .await
            .map_err(|e| self.err(e, "DeleteObject", key, Op::Write))?;
        Ok(())
    }

    /// Permanently delete every version and delete marker of every key under `prefix`
    /// (including the store, if it lies there). Returns how many were deleted.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn dangerous_purge(&self, prefix: &str) -> Result<u64> {
        // Always list from the start: what was listed is deleted, so the next listing
        // starts with what is left (and no marker can point at a deleted version, which
        // some servers mishandle).
        let mut n = 0u64;
        loop {
            let out = self
                .inner
                .client
                .list_object_versions()
                .bucket(self.name())
                .prefix(prefix)
                .send()
                .await
                .map_err(|e| self.err(e, "ListObjectVersions", prefix, Op::Read))?;
            let mut ids: Vec<(String, Option<String>)> = out
                .versions()
                .iter()
                .filter_map(|v| Some((v.key()?.to_string(), v.version_id().map(str::to_string))))
                .collect();
            ids.extend(
                out.delete_markers().iter().filter_map(|m| {
                    Some((m.key()?.to_string(), m.version_id().map(str::to_string)))
                }),
            );
            if ids.is_empty() {
                return Ok(n);
            }
            n += ids.len() as u64;
            self.delete_batch(ids).await?;
        }
    }

    /// Purge every version of every object, then delete the bucket (test teardown).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn dangerous_delete_bucket(&self) -> Result<()> {
        self.dangerous_purge("").await?;
        self.inner
            .client
            .delete_bucket()
            .bucket(self.name())
            .send()
            .await
            .map_err(|e| self.err(e, "DeleteBucket", "", Op::Write))?;
        Ok(())
    }

    /// One `ListObjectsV2` request.
    async fn list_raw(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage> {
        let out = self
            .inner
            .client
            .list_objects_v2()
            .bucket(self.name())
            .prefix(prefix)
            .set_continuation_token(token.map(str::to_string))
            .set_start_after(start_after.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.err(e, "ListObjectsV2", prefix, Op::Read))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key()?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(unquote).unwrap_or_default(),
                    last_modified_ms: millis(o.last_modified()),
                    version_id: None,
                })
            })
            .collect();
        let next = match (
            out.is_truncated() == Some(true),
            out.next_continuation_token(),
        ) {
            (true, Some(t)) => Some(t.to_string()),
            _ => None,
        };
        Ok(ListPage { objects, next })
    }

    /// One `ListObjectVersions` request: versions first, then delete markers.
    async fn list_versions_raw(
        &self,
        prefix: &str,
        key_marker: Option<&str>,
        version_marker: Option<&str>,
    ) -> Result<VersionPage> {
        let out = self
            .inner
            .client
            .list_object_versions()
            .bucket(self.name())
            .prefix(prefix)
            .set_key_marker(key_marker.map(str::to_string))
            .set_version_id_marker(version_marker.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.err(e, "ListObjectVersions", prefix, Op::Read))?;
        let mut versions: Vec<ObjectVersion> = out
            .versions()
            .iter()
            .filter_map(|v| {
                Some(ObjectVersion {
                    key: v.key()?.to_string(),
                    version_id: v.version_id().unwrap_or("null").to_string(),
                    is_latest: v.is_latest() == Some(true),
                    delete_marker: false,
                    size: v.size().unwrap_or(0).max(0) as u64,
                    etag: v.e_tag().map(unquote).unwrap_or_default(),
                    last_modified_ms: millis(v.last_modified()),
                })
            })
            .collect();
        versions.extend(out.delete_markers().iter().filter_map(|m| {
            Some(ObjectVersion {
                key: m.key()?.to_string(),
                version_id: m.version_id().unwrap_or("null").to_string(),
                is_latest: m.is_latest() == Some(true),
                delete_marker: true,
                size: 0,
                etag: String::new(),
                last_modified_ms: millis(m.last_modified()),
            })
        }));
        let next = match (out.is_truncated() == Some(true), out.next_key_marker()) {
            (true, Some(k)) => Some((
                k.to_string(),
                out.next_version_id_marker().map(str::to_string),
            )),
            _ => None,
        };
        Ok(VersionPage { versions, next })
    }

    /// Put with a condition (`If-None-Match: *` or `If-Match`); none for an overwrite.
    async fn put_conditional(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String> {
        let (if_none_match, if_match) = match mode {
            PutMode::Overwrite => (None, None),
            PutMode::Create => (Some("*".to_string()), None),
            PutMode::IfMatch(e) => (None, Some(quote(&e))),
        };
        let out = self
            .inner
            .client
            .put_object()
            .bucket(self.name())
            .key(key)
            .set_if_none_match(if_none_match)
            .set_if_match(if_match)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.err(e, "PutObject", key, Op::Write))?;
        Ok(out.e_tag().map(unquote).unwrap_or_default())
    }

    // ---- crate-internal building blocks -------------------------------------------

    /// Server-side copy `src_bucket/src_key[@version]` → this bucket's `dst_key`, only if
    /// the source's ETag is still `if_match` (when given). Returns the new ETag.
    pub(crate) async fn copy_from(
        &self,
        src_bucket: &str,
        src_key: &str,
        src_version: Option<&str>,
        dst_key: &str,
        if_match: Option<&str>,
    ) -> Result<String> {
        let out = self
            .inner
            .client
            .copy_object()
            .bucket(self.name())
            .key(dst_key)
            .copy_source(copy_source(src_bucket, src_key, src_version))
            .set_copy_source_if_match(if_match.map(quote))
            .send()
            .await
            .map_err(|e| self.err(e, "CopyObject", dst_key, Op::Write))?;
        let etag = out
            .copy_object_result()
            .and_then(|r| r.e_tag())
            .map(unquote)
            .unwrap_or_default();
        // moto and radosgw ignore `x-amz-copy-source-if-match`: check the copy itself.
        // A copy's ETag is the MD5 of its content, as the source's is when the source
        // was written in one part and not with SSE-KMS; only then can they be compared.
        let kms = out
            .server_side_encryption()
            .is_some_and(|s| s.as_str().starts_with("aws:kms"));
        if let Some(expected) = if_match.map(unquote) {
            if !kms && is_md5(&expected) && is_md5(&etag) && etag != expected {
                return Err(Error::conflict(format!(
                    "{src_bucket}/{src_key} changed after it was listed (ETag {expected}, \
                     now {etag}): a concurrent writer; {dst_key} holds the newer content"
                )));
            }
        }
        Ok(etag)
    }

    /// Delete keys (optionally specific versions) with `DeleteObjects`, 1000 per request,
    /// batches in parallel. Idempotent: deleting what is absent succeeds.
    pub(crate) async fn delete_batch(&self, keys: Vec<(String, Option<String>)>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let chunks: Vec<Vec<(String, Option<String>)>> =
            keys.chunks(DELETE_BATCH).map(|c| c.to_vec()).collect();
        crate::listing::run_concurrent(self, chunks, |chunk| async move {
            let first = chunk[0].0.clone();
            let mut ids = Vec::with_capacity(chunk.len());
            for (k, v) in chunk {
                ids.push(
                    ObjectIdentifier::builder()
                        .key(k)
                        .set_version_id(v)
                        .build()
                        .map_err(|e| Error::invalid(format!("delete request: {e}")))?,
                );
            }
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| Error::invalid(format!("delete request: {e}")))?;
            let out = self
                .inner
                .client
                .delete_objects()
                .bucket(self.name())
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.err(e, "DeleteObjects", &first, Op::Write))?;
            if let Some(e) = out.errors().first() {
                let code = e.code().unwrap_or("unknown");
                let transient = matches!(code, "SlowDown" | "InternalError" | "ServiceUnavailable");
                let msg = format!(
                    "DeleteObjects s3://{}: {} of the keys failed, e.g. {:?}: {code} {}",
                    self.name(),
                    out.errors().len(),
                    e.key().unwrap_or(""),
                    e.message().unwrap_or("")
                );
                return Err(if transient {
                    Error::transient(msg, true)
                } else {
                    backend_msg(msg, true)
                });
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ObjectBackend for S3Bucket {
    fn scheme(&self) -> &str {
        "s3"
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn store_location(&self) -> &StoreLocation {
        &self.inner.store
    }

    fn store_backend(&self) -> Arc<dyn ObjectBackend> {
        Arc::new(self.store_bucket())
    }

    fn concurrency_limit(&self) -> usize {
        self.inner.concurrency
    }

    fn as_versioned(&self) -> Option<&dyn VersionedBackend> {
        Some(self)
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage> {
        self.list_raw(prefix, start_after, token).await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        S3Bucket::get_version(self, key, None).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        S3Bucket::head(self, key).await
    }

    async fn put_object(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String> {
        self.put_conditional(key, body, mode).await
    }

    async fn copy(
        &self,
        src: &str,
        src_key: &str,
        dst_key: &str,
        if_match: Option<&str>,
    ) -> Result<String> {
        self.copy_from(src, src_key, None, dst_key, if_match).await
    }

    async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        self.delete_batch(keys.into_iter().map(|k| (k, None)).collect())
            .await
    }

    async fn dangerous_purge(&self, prefix: &str) -> Result<u64> {
        S3Bucket::dangerous_purge(self, prefix).await
    }
}

#[async_trait]
impl VersionedBackend for S3Bucket {
    async fn is_versioned(&self) -> Result<bool> {
        S3Bucket::is_versioned(self).await
    }

    async fn list_versions_page(
        &self,
        prefix: &str,
        key_marker: Option<&str>,
        version_marker: Option<&str>,
    ) -> Result<VersionPage> {
        self.list_versions_raw(prefix, key_marker, version_marker)
            .await
    }

    async fn get_version(&self, key: &str, version: Option<&str>) -> Result<Option<Bytes>> {
        S3Bucket::get_version(self, key, version).await
    }

    async fn copy_version(
        &self,
        src: &str,
        src_key: &str,
        version: &str,
        dst_key: &str,
    ) -> Result<String> {
        self.copy_from(src, src_key, Some(version), dst_key, None)
            .await
    }

    async fn delete_versions(&self, keys: Vec<(String, Option<String>)>) -> Result<()> {
        self.delete_batch(keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_encodes_keys_but_not_slashes() {
        assert_eq!(copy_source("b", "v1/a b+c", None), "b/v1/a%20b%2Bc");
        assert_eq!(
            copy_source("b", "k", Some("3/L4kq")),
            "b/k?versionId=3%2FL4kq"
        );
    }
}
