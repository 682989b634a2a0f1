//! The object-backend traits: [`ObjectBackend`] (what every checkpoint, step and verifier
//! of this crate needs from a store of objects) and [`VersionedBackend`] (the capability
//! of keeping every version of a key, which the versioned checkpoint and the compensable
//! delete need).

use crate::bucket::ObjectInfo;
use async_trait::async_trait;
use bytes::Bytes;
use rollback_core::Result;
use std::fmt;
use std::sync::Arc;

/// Where snapshots (manifests, copies) and step state (markers, backups) are kept: a
/// namespace of the backend (a bucket, a folder) and a key prefix in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLocation {
    /// The namespace (the bucket of an S3 store).
    pub bucket: String,
    /// The key prefix (ends with `/`, or is empty).
    pub prefix: String,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// The objects of the page, in key order (nothing excluded).
    pub objects: Vec<ObjectInfo>,
    /// Where the next page starts, `None` on the last page.
    pub next: Option<String>,
}

/// How a put treats what is already at the key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PutMode {
    /// Replace whatever is there (no condition sent).
    #[default]
    Overwrite,
    /// Only when the key does not exist; [`Error::Conflict`](rollback_core::Error::Conflict)
    /// otherwise.
    Create,
    /// Only when the current object has this ETag;
    /// [`Error::Conflict`](rollback_core::Error::Conflict) otherwise.
    IfMatch(String),
}

/// A store of objects: keys (`/`-separated strings) to byte strings, in one namespace
/// (a bucket, a folder), with a second place — the [`StoreLocation`] — for snapshots and step
/// state.
///
/// Keep it small: listings are paged, everything else is one object at a time except
/// batch deletes; concurrency, exclusion of the store and streaming are done once, in
/// this crate, over these methods.
///
/// # Contract
/// 1. **Key order.** [`list_page`](ObjectBackend::list_page) returns keys under the
///    prefix in ascending byte order; following `next` tokens visits every key present
///    for the whole listing exactly once. `start_after` (first page only) skips keys
///    up to and including it.
/// 2. **Reads are read-only.** `list_page`, `get` and `head` change nothing; absent keys
///    are `Ok(None)`, never an error.
/// 3. **ETags identify content.** Two objects with the same ETag and size have the same
///    content as far as this crate is concerned; a `put` or `copy` returns the new ETag,
///    which `head` and listings then show.
/// 4. **Conditions are atomic.** A [`PutMode::Create`] or [`PutMode::IfMatch`] put, and a
///    copy with `if_match`, either write after checking the condition or change nothing
///    and return [`Error::Conflict`](rollback_core::Error::Conflict).
/// 5. **Idempotent deletes.** Deleting an absent key succeeds.
/// 6. **No torn objects.** A reader sees an object's previous content or its new content,
///    never a mix, even when a write is interrupted.
/// 7. **Typed failures.** Bad keys are [`Error::Invalid`](rollback_core::Error::Invalid)
///    before anything changes; an unreachable backend is
///    [`Error::Transient`](rollback_core::Error::Transient) with `maybe_applied` true only
///    when a write may have happened; errors never carry credentials.
#[async_trait]
pub trait ObjectBackend: Send + Sync + fmt::Debug {
    /// The kind of backend, the scheme of its resource ids and URLs: `s3`, `folder`.
    fn scheme(&self) -> &str;

    /// The namespace name (the bucket name).
    fn name(&self) -> &str;

    /// Where snapshots and step state are kept.
    fn store_location(&self) -> &StoreLocation;

    /// A handle on the store's namespace (the same handle when the store lies in this
    /// namespace), with the same store location.
    fn store_backend(&self) -> Arc<dyn ObjectBackend>;

    /// How many requests this crate keeps in flight at once on this backend.
    fn concurrency_limit(&self) -> usize;

    /// The versioning capability, when this backend has it (a bucket may have it or not:
    /// see [`VersionedBackend::is_versioned`]).
    fn as_versioned(&self) -> Option<&dyn VersionedBackend> {
        None
    }

    /// One page of the keys under `prefix`: the first page when `token` is `None`
    /// (starting after `start_after` when given), else the page `token` names.
    ///
    /// # Errors
    /// Backend errors.
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage>;

    /// The content of `key`, `None` when absent.
    ///
    /// # Errors
    /// Backend errors.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// The size, ETag and last-modified time of `key`, `None` when absent.
    ///
    /// # Errors
    /// Backend errors.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>>;

    /// Write `body` at `key` under `mode`; returns the new ETag.
    ///
    /// # Errors
    /// [`Error::Conflict`](rollback_core::Error::Conflict) when `mode`'s condition does not
    /// hold; backend errors.
    ///
    /// # Cancel safety
    /// Dropping the future leaves the old or the new object (clause 6).
    async fn put_object(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String>;

    /// Copy `src_key` of namespace `src` (this backend's name or its store's) to
    /// `dst_key` of this namespace, only when the source's ETag is still `if_match`
    /// (when given). Returns the new ETag.
    ///
    /// # Errors
    /// [`Error::Conflict`](rollback_core::Error::Conflict) when the source changed or is
    /// gone; [`Error::Invalid`](rollback_core::Error::Invalid) for an unknown namespace;
    /// backend errors.
    async fn copy(
        &self,
        src: &str,
        src_key: &str,
        dst_key: &str,
        if_match: Option<&str>,
    ) -> Result<String>;

    /// Delete these keys (a delete marker each on a versioned bucket). Idempotent.
    ///
    /// # Errors
    /// Backend errors.
    async fn delete_keys(&self, keys: Vec<String>) -> Result<()>;

    /// Permanently delete everything under `prefix` (every version, on a versioned
    /// bucket). Returns how many objects (or versions) were deleted.
    ///
    /// # Errors
    /// Backend errors.
    async fn dangerous_purge(&self, prefix: &str) -> Result<u64>;
}

/// One version, or delete marker, of a key in a [`VersionedBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// The key.
    pub key: String,
    /// The version id (`null` for an object written before versioning was enabled).
    pub version_id: String,
    /// Whether this is the latest entry of the key.
    pub is_latest: bool,
    /// Whether this is a delete marker (no data).
    pub delete_marker: bool,
    /// Size in bytes (0 for a delete marker).
    pub size: u64,
    /// The ETag without quotes (empty for a delete marker).
    pub etag: String,
    /// Last-modified time, milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
}

/// One page of a version listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionPage {
    /// Versions and delete markers of the page.
    pub versions: Vec<ObjectVersion>,
    /// The (key marker, version-id marker) of the next page, `None` on the last page.
    pub next: Option<(String, Option<String>)>,
}

/// The versioning capability of an [`ObjectBackend`] (like object_store's
/// `MultipartStore` next to its `ObjectStore`): every write keeps the previous version,
/// a delete lays a delete marker, and old versions can be read, listed, copied and
/// their markers removed. The versioned checkpoint and the compensable delete need it.
///
/// # Contract
/// 1. **Nothing is lost.** While [`is_versioned`](VersionedBackend::is_versioned) is
///    true, puts, copies and [`delete_keys`](ObjectBackend::delete_keys) keep every
///    earlier version readable by its id.
/// 2. **Version order.** [`list_versions_page`](VersionedBackend::list_versions_page)
///    lists keys in ascending order and, per key, versions newest first; following
///    `next` visits every version once.
/// 3. **Removing a marker restores.** Deleting the latest delete marker (by its version
///    id) makes the newest version under it current again.
#[async_trait]
pub trait VersionedBackend: ObjectBackend {
    /// Whether versioning is enabled now (suspended counts as not versioned).
    ///
    /// # Errors
    /// Backend errors.
    async fn is_versioned(&self) -> Result<bool>;

    /// One page of every version and delete marker under `prefix`.
    ///
    /// # Errors
    /// Backend errors.
    async fn list_versions_page(
        &self,
        prefix: &str,
        key_marker: Option<&str>,
        version_marker: Option<&str>,
    ) -> Result<VersionPage>;

    /// The content of one version of `key` (`None`: the current one), `None` when absent.
    ///
    /// # Errors
    /// Backend errors.
    async fn get_version(&self, key: &str, version: Option<&str>) -> Result<Option<Bytes>>;

    /// Copy version `version` of `src_key` of namespace `src` to `dst_key` of this
    /// namespace (a new current version). Returns the new ETag.
    ///
    /// # Errors
    /// As [`ObjectBackend::copy`].
    async fn copy_version(
        &self,
        src: &str,
        src_key: &str,
        version: &str,
        dst_key: &str,
    ) -> Result<String>;

    /// Delete keys, or specific versions of them (a delete marker's id removes the
    /// marker; `None` lays a new delete marker). Idempotent.
    ///
    /// # Errors
    /// Backend errors.
    async fn delete_versions(&self, keys: Vec<(String, Option<String>)>) -> Result<()>;
}

/// A shared or boxed backend is a backend: every method forwards.
macro_rules! forward_backend {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: ObjectBackend + ?Sized> ObjectBackend for $ptr {
            fn scheme(&self) -> &str {
                (**self).scheme()
            }
            fn name(&self) -> &str {
                (**self).name()
            }
            fn store_location(&self) -> &StoreLocation {
                (**self).store_location()
            }
            fn store_backend(&self) -> Arc<dyn ObjectBackend> {
                (**self).store_backend()
            }
            fn concurrency_limit(&self) -> usize {
                (**self).concurrency_limit()
            }
            fn as_versioned(&self) -> Option<&dyn VersionedBackend> {
                (**self).as_versioned()
            }
            async fn list_page(
                &self,
                prefix: &str,
                start_after: Option<&str>,
                token: Option<&str>,
            ) -> Result<ListPage> {
                (**self).list_page(prefix, start_after, token).await
            }
            async fn get(&self, key: &str) -> Result<Option<Bytes>> {
                (**self).get(key).await
            }
            async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
                (**self).head(key).await
            }
            async fn put_object(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String> {
                (**self).put_object(key, body, mode).await
            }
            async fn copy(
                &self,
                src: &str,
                src_key: &str,
                dst_key: &str,
                if_match: Option<&str>,
            ) -> Result<String> {
                (**self).copy(src, src_key, dst_key, if_match).await
            }
            async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
                (**self).delete_keys(keys).await
            }
            async fn dangerous_purge(&self, prefix: &str) -> Result<u64> {
                (**self).dangerous_purge(prefix).await
            }
        }
    )*};
}
forward_backend!(Arc<T>, Box<T>);
