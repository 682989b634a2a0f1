//! [`FolderBackend`]: objects as files in a local folder, with snapshots and step state
//! in a second folder — an [`ObjectBackend`] for the copy-based checkpoint, every step
//! and every verifier of this crate, without an S3 server.

use crate::backend::{ListPage, ObjectBackend, PutMode, StoreLocation};
use crate::bucket::ObjectInfo;
use async_trait::async_trait;
use bytes::Bytes;
use rollback_core::{Error, Result};
use std::fmt;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

const BACKEND: &str = "folder";

/// Keys per listing page.
const PAGE: usize = 1000;

#[derive(Debug)]
struct FolderError(String);

impl fmt::Display for FolderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FolderError {}

fn backend(message: impl Into<String>, maybe_applied: bool) -> Error {
    Error::Backend {
        backend: BACKEND,
        source: Box::new(FolderError(message.into())),
        maybe_applied,
    }
}

fn io(what: &str, path: &Path, e: std::io::Error, write: bool) -> Error {
    backend(format!("{what} {}: {e}", path.display()), write)
}

/// Run blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| backend(format!("file task failed: {e}"), true))?
}

/// Check a key (or, with `prefix`, a listing prefix): relative, `/`-separated, no empty,
/// `.` or `..` parts, no part starting with `.` (reserved for temporary files).
fn check_key(key: &str, prefix: bool) -> Result<()> {
    let body = if prefix {
        match key.rfind('/') {
            Some(i) => &key[..i],
            None => "",
        }
    } else {
        key
    };
    let last_ok = !prefix || !key.rsplit('/').next().unwrap_or("").starts_with('.');
    if body.is_empty() {
        return if prefix && last_ok {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "object key {key:?} is empty or hidden"
            )))
        };
    }
    let ok = last_ok
        && !body.starts_with('/')
        && body
            .split('/')
            .all(|p| !p.is_empty() && !p.starts_with('.') && !p.contains('\\'))
        && Path::new(body)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "object key {key:?} must be a relative path of non-empty parts not starting with '.'"
        )))
    }
}

/// The ETag of a content: the first 32 hex digits of its blake3.
fn etag_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..32].to_string()
}

fn info_of(key: &str, path: &Path) -> Result<Option<ObjectInfo>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if path.is_dir() => {
            let _ = e;
            return Ok(None);
        }
        Err(e) => return Err(io("reading", path, e, false)),
    };
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(Some(ObjectInfo {
        key: key.to_string(),
        size: bytes.len() as u64,
        etag: etag_of(&bytes),
        last_modified_ms: modified,
        version_id: None,
    }))
}

/// Write `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync
/// of the folder. A reader sees the old file or the new one, never a torn one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::invalid(format!("{} has no parent folder", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e, false))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("writing", path, e, true)
    })
}

/// Remove `dir` and its empty parents up to (not including) `root`.
fn prune_up(root: &Path, mut dir: &Path) {
    while dir != root && dir.starts_with(root) {
        if std::fs::remove_dir(dir).is_err() {
            return;
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => return,
        }
    }
}

/// Every key under `root` starting with `prefix`, sorted (temporary files skipped).
fn keys_under(root: &Path, prefix: &str) -> Result<Vec<String>> {
    fn walk(dir: &Path, rel: &str, prefix: &str, out: &mut Vec<String>) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("listing", dir, e, false)),
        };
        for e in entries {
            let e = e.map_err(|e| io("listing", dir, e, false))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let key = format!("{rel}{name}");
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                let sub = format!("{key}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    walk(&e.path(), &sub, prefix, out)?;
                }
            } else if key.starts_with(prefix) {
                out.push(key);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    let start = match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    };
    walk(&root.join(start), start, prefix, &mut out)?;
    out.sort();
    Ok(out)
}

/// A local folder as an [`ObjectBackend`]: key `v1/42/invoice.pdf` is the file
/// `<root>/v1/42/invoice.pdf`; snapshots and step state live in a separate *state* folder
/// (the [`StoreLocation`]), so the object folder holds only objects. Cheap to clone.
///
/// - The ETag of an object is the first 32 hex digits of the blake3 of its content, so
///   a copy keeps its source's ETag and a conditional write compares content.
/// - Writes are atomic (a temporary file beside the target, fsync, rename, fsync of the
///   folder): after a crash, an object has its old or its new content.
/// - Conditional puts and copies ([`PutMode`], `if_match`) check and write under one
///   lock shared by every clone of this handle and its store handle: atomic within this
///   process, not against other processes writing the same folder.
/// - Keys are relative `/`-separated paths whose parts are not empty and do not start
///   with `.`; anything else is [`Error::Invalid`] before any file is touched.
/// - Listings read the folder tree (every page walks the listed folder), which suits
///   thousands of objects, not millions.
/// - It has no versions: the checkpoint is copy-based, and a
///   [`DeleteObjects::versioned`](crate::DeleteObjects::versioned) step is refused.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use rollback_core::{Checkpoint, Context, Step};
/// use rollback_s3::{FolderBackend, MovePrefix, S3Checkpoint};
/// let dir = tempfile::tempdir().unwrap();
/// let folder = FolderBackend::new(dir.path().join("objects"), dir.path().join("state"));
/// folder.put("v1/42/invoice.pdf", b"%PDF-1.7".to_vec()).await?;
/// let cp = S3Checkpoint::new(&folder, "");
/// let ctx = Context::standalone("demo");
/// let snap = cp.capture(&ctx).await?;
/// MovePrefix::new("move", &folder, "v1/", "v2/").apply(&ctx).await?;
/// assert!(folder.get("v2/42/invoice.pdf").await?.is_some());
/// cp.restore(&snap, &ctx).await?;
/// assert_eq!(cp.fingerprint(&ctx).await?, snap.fingerprint);
/// # Ok::<(), rollback_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct FolderBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// This handle's folder and name (the object folder, or the state folder for the
    /// store's handle).
    root: PathBuf,
    name: String,
    /// The object folder and its name (copy sources of the store's handle).
    objects: (String, PathBuf),
    state_root: PathBuf,
    store: StoreLocation,
    concurrency: usize,
    lock: Arc<Mutex<()>>,
}

impl fmt::Debug for FolderBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FolderBackend")
            .field("root", &self.inner.root)
            .field("name", &self.inner.name)
            .field("state", &self.inner.state_root)
            .finish()
    }
}

impl FolderBackend {
    /// Objects under `root`; snapshots and step state under `state` (keep it outside
    /// `root`). The backend's name in resource ids (`folder:<name>/<prefix>`) is `root` as
    /// given; see [`FolderBackend::named`].
    pub fn new(root: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let state_root = state.into();
        FolderBackend {
            inner: Arc::new(Inner {
                name: root.display().to_string(),
                objects: (root.display().to_string(), root.clone()),
                store: StoreLocation {
                    bucket: state_root.display().to_string(),
                    prefix: String::new(),
                },
                root,
                state_root,
                concurrency: 4,
                lock: Arc::new(Mutex::new(())),
            }),
        }
    }

    /// Use `name` instead of the root path in resource ids (stable across machines).
    pub fn named(self, name: impl Into<String>) -> Self {
        let name = name.into();
        let store = StoreLocation {
            bucket: format!("{name}.state"),
            prefix: String::new(),
        };
        self.with(|i| {
            i.objects.0 = name.clone();
            i.name = name;
            i.store = store;
        })
    }

    /// Files read or written at once (default 4).
    pub fn concurrency(self, n: usize) -> Self {
        self.with(|i| i.concurrency = n.max(1))
    }

    fn with(&self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            root: self.inner.root.clone(),
            name: self.inner.name.clone(),
            objects: self.inner.objects.clone(),
            state_root: self.inner.state_root.clone(),
            store: self.inner.store.clone(),
            concurrency: self.inner.concurrency,
            lock: self.inner.lock.clone(),
        };
        f(&mut inner);
        FolderBackend {
            inner: Arc::new(inner),
        }
    }

    /// The object folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The folder of snapshots and step state.
    pub fn state(&self) -> &Path {
        &self.inner.state_root
    }

    /// The resource id of a prefix: `folder:<name>/<prefix>`.
    pub fn resource_id(&self, prefix: &str) -> String {
        crate::listing::resource_id(self, prefix)
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.inner.root.join(key)
    }

    /// The folder of namespace `ns` (this one or its store).
    fn root_of(&self, ns: &str) -> Result<PathBuf> {
        if ns == self.inner.name {
            Ok(self.inner.root.clone())
        } else if ns == self.inner.objects.0 {
            Ok(self.inner.objects.1.clone())
        } else if ns == self.inner.store.bucket {
            Ok(self.inner.state_root.clone())
        } else {
            Err(Error::invalid(format!(
                "folder {}: unknown source namespace {ns:?}",
                self.inner.name
            )))
        }
    }

    /// Put `bytes` at `key` (replacing what is there); returns the ETag.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad key; file errors.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<String> {
        self.put_object(key, bytes.into(), PutMode::Overwrite).await
    }

    /// The content of `key`, `None` when absent.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad key; file errors.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        ObjectBackend::get(self, key).await
    }

    /// Every object under `prefix`, in key order (holds the listing in memory).
    ///
    /// # Errors
    /// File errors.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let me: crate::listing::Objects = Arc::new(self.clone());
        let mut l = crate::listing::lister(&me, prefix);
        let mut out = Vec::new();
        while let Some(page) = l.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }

    /// Delete every object and all snapshots and step state (test and demo teardown).
    ///
    /// # Errors
    /// File errors.
    pub async fn dangerous_clear(&self) -> Result<()> {
        let dirs = [self.inner.root.clone(), self.inner.state_root.clone()];
        blocking(move || {
            for d in dirs {
                match std::fs::remove_dir_all(&d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("removing", &d, e, true)),
                }
            }
            Ok(())
        })
        .await
    }

    /// A handle on the state folder as a namespace of its own.
    fn state_handle(&self) -> FolderBackend {
        let store = self.inner.store.clone();
        let state = self.inner.state_root.clone();
        self.with(|i| {
            i.name = store.bucket.clone();
            i.root = state;
        })
    }
}

#[async_trait]
impl ObjectBackend for FolderBackend {
    fn scheme(&self) -> &str {
        BACKEND
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn store_location(&self) -> &StoreLocation {
        &self.inner.store
    }

    fn store_backend(&self) -> Arc<dyn ObjectBackend> {
        if self.inner.name == self.inner.store.bucket {
            Arc::new(self.clone())
        } else {
            Arc::new(self.state_handle())
        }
    }

    fn concurrency_limit(&self) -> usize {
        self.inner.concurrency
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage> {
        check_key(prefix, true)?;
        let root = self.inner.root.clone();
        let prefix = prefix.to_string();
        let after = token.or(start_after).map(str::to_string);
        blocking(move || {
            let keys = keys_under(&root, &prefix)?;
            let from = match &after {
                Some(a) => keys.partition_point(|k| k.as_str() <= a.as_str()),
                None => 0,
            };
            let mut objects = Vec::new();
            let mut last = None;
            for k in keys[from..].iter() {
                if objects.len() == PAGE {
                    break;
                }
                last = Some(k.clone());
                // Deleted between the walk and the read: not listed.
                if let Some(o) = info_of(k, &root.join(k))? {
                    objects.push(o);
                }
            }
            let more = from + PAGE < keys.len();
            Ok(ListPage {
                objects,
                next: if more { last } else { None },
            })
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        check_key(key, false)?;
        let path = self.path_of(key);
        blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(_) if path.is_dir() => Ok(None),
            Err(e) => Err(io("reading", &path, e, false)),
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        check_key(key, false)?;
        let path = self.path_of(key);
        let key = key.to_string();
        blocking(move || info_of(&key, &path)).await
    }

    async fn put_object(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String> {
        check_key(key, false)?;
        let path = self.path_of(key);
        let key = key.to_string();
        let lock = self.inner.lock.clone();
        blocking(move || {
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            match &mode {
                PutMode::Overwrite => {}
                PutMode::Create => {
                    if info_of(&key, &path)?.is_some() {
                        return Err(Error::conflict(format!("{key} already exists")));
                    }
                }
                PutMode::IfMatch(want) => match info_of(&key, &path)? {
                    Some(o) if o.etag == want.trim_matches('"') => {}
                    Some(o) => {
                        return Err(Error::conflict(format!(
                            "{key} has ETag {}, not {want}",
                            o.etag
                        )))
                    }
                    None => return Err(Error::conflict(format!("{key} does not exist"))),
                },
            }
            write_atomic(&path, &body)?;
            Ok(etag_of(&body))
        })
        .await
    }

    async fn copy(
        &self,
        src: &str,
        src_key: &str,
        dst_key: &str,
        if_match: Option<&str>,
    ) -> Result<String> {
        check_key(src_key, false)?;
        check_key(dst_key, false)?;
        let src_path = self.root_of(src)?.join(src_key);
        let dst_path = self.path_of(dst_key);
        let src_key = src_key.to_string();
        let if_match = if_match.map(|e| e.trim_matches('"').to_string());
        let lock = self.inner.lock.clone();
        blocking(move || {
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            let bytes = match std::fs::read(&src_path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::conflict(format!("copy source {src_key} is gone")))
                }
                Err(e) => return Err(io("reading", &src_path, e, false)),
            };
            let etag = etag_of(&bytes);
            if let Some(want) = if_match {
                if want != etag {
                    return Err(Error::conflict(format!(
                        "copy source {src_key} changed (ETag {etag}, expected {want})"
                    )));
                }
            }
            write_atomic(&dst_path, &bytes)?;
            Ok(etag)
        })
        .await
    }

    async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        for k in &keys {
            check_key(k, false)?;
        }
        let root = self.inner.root.clone();
        blocking(move || {
            for k in keys {
                let path = root.join(&k);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io("deleting", &path, e, true)),
                }
                if let Some(dir) = path.parent() {
                    prune_up(&root, dir);
                }
            }
            Ok(())
        })
        .await
    }

    async fn dangerous_purge(&self, prefix: &str) -> Result<u64> {
        check_key(prefix, true)?;
        let root = self.inner.root.clone();
        let keys = {
            let prefix = prefix.to_string();
            blocking(move || keys_under(&root, &prefix)).await?
        };
        let n = keys.len() as u64;
        self.delete_keys(keys).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_stay_inside_the_folder() {
        for bad in [
            "../escape",
            "/abs",
            "a//b",
            ".hidden",
            "a/./b",
            "a/../b",
            "",
        ] {
            assert!(check_key(bad, false).is_err(), "{bad:?} accepted");
        }
        assert!(check_key("v1/42/invoice.pdf", false).is_ok());
        for ok in ["", "v1/", "v1/4", "snapshots/s3-1/manifest/"] {
            assert!(check_key(ok, true).is_ok(), "{ok:?} refused");
        }
        assert!(check_key("../", true).is_err());
        assert!(check_key("v1/.tmp", true).is_err());
    }
}
