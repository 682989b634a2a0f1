//! A local-folder object store: the embedded default for the storage component of the
//! examples, when no S3 endpoint is given.
//!
//! Objects are files under a root folder (key `v1/42/invoice.pdf` ↔
//! `<root>/v1/42/invoice.pdf`); snapshots and step bookkeeping live in a separate *state*
//! folder, so the object folder holds only objects. It implements the core traits the
//! same way `rollback-s3` does for buckets, and passes the core's conformance suite
//! (`examples/tests/folder.rs`):
//!
//! - [`FolderCheckpoint`]: a copy-based checkpoint of a prefix (a manifest of key, size
//!   and blake3 of every file, plus a copy of every file);
//! - [`FolderMovePrefix`]: move every object under one prefix to another (the re-layout
//!   `v1/{customer}/…` → `v2/{customer}/…`), compensable, resumable, with a drill switch
//!   that fails it midway;
//! - [`FolderLayoutParity`]: after a re-layout, the new prefix holds exactly what the old
//!   one held at the baseline.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use rollback_core::{Checkpoint, Context, Step};
//! use examples::folder::{FolderCheckpoint, FolderMovePrefix, FolderStore};
//! let dir = tempfile::tempdir().unwrap();
//! let store = FolderStore::new(dir.path().join("objects"), dir.path().join("state"));
//! store.put("v1/42/invoice.pdf", b"%PDF-1.7".to_vec()).await?;
//! let cp = FolderCheckpoint::new(&store, "");
//! let ctx = Context::standalone("demo");
//! let snap = cp.capture(&ctx).await?;
//! FolderMovePrefix::new("move", &store, "v1/", "v2/").apply(&ctx).await?;
//! assert!(store.get("v2/42/invoice.pdf").await?.is_some());
//! cp.restore(&snap, &ctx).await?;
//! assert_eq!(cp.fingerprint(&ctx).await?, snap.fingerprint);
//! # Ok::<(), rollback_core::Error>(())
//! # }).unwrap();
//! ```

use async_trait::async_trait;
use rollback_core::{
    Checkpoint, Context, Digest, Error, Hasher, Receipt, Restored, Result, Reversibility, Snapshot,
    Step, Verdict, Verifier,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

const BACKEND: &str = "folder";

/// The snapshot kind a [`FolderCheckpoint`] writes.
pub const SNAPSHOT_KIND: &str = "folder.copy";

/// Evidence samples listed per kind of difference.
const SAMPLE: usize = 10;

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

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    backend(format!("{what} {}: {e}", path.display()), false)
}

/// Run blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| backend(format!("file task failed: {e}"), true))?
}

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderObject {
    /// The key (path relative to the root, `/`-separated).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content.
    pub blake3: Digest,
}

/// A folder of objects, with a separate folder for snapshots and step state. Cheap to
/// clone.
#[derive(Clone)]
pub struct FolderStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    state: PathBuf,
    name: String,
}

impl fmt::Debug for FolderStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FolderStore")
            .field("root", &self.inner.root)
            .field("state", &self.inner.state)
            .field("name", &self.inner.name)
            .finish()
    }
}

/// Check a key or prefix: relative, `/`-separated, no `.`/`..` parts, no part starting
/// with `.` (reserved for temporary files).
fn check_key(key: &str, prefix: bool) -> Result<()> {
    let body = if prefix {
        key.strip_suffix('/').unwrap_or(key)
    } else {
        key
    };
    if body.is_empty() {
        return if prefix {
            Ok(())
        } else {
            Err(Error::invalid("empty object key"))
        };
    }
    let ok = !body.starts_with('/')
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

fn digest_file(path: &Path) -> Result<(u64, Digest)> {
    let bytes = std::fs::read(path).map_err(|e| io("reading", path, e))?;
    Ok((bytes.len() as u64, Digest::of(&bytes)))
}

/// Write `bytes` to `path` atomically (temporary file beside it, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::invalid(format!("{} has no parent folder", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
    f.write_all(bytes).map_err(|e| io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into", path, e))?;
    Ok(())
}

/// Remove empty folders under `dir` (not `dir` itself).
fn prune_empty(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            prune_empty(&p);
            let _ = std::fs::remove_dir(&p); // fails (and is kept) when not empty
        }
    }
}

impl FolderStore {
    /// Objects under `root`; snapshots and step state under `state` (keep it outside
    /// `root`). The store's name in resource ids is `root` as given.
    pub fn new(root: impl Into<PathBuf>, state: impl Into<PathBuf>) -> Self {
        let root = root.into();
        FolderStore {
            inner: Arc::new(Inner {
                name: root.display().to_string(),
                root,
                state: state.into(),
            }),
        }
    }

    /// Name the store in resource ids (`folder:<name>/<prefix>`) instead of using its
    /// path, so that a plan's resources do not depend on where the folder is.
    pub fn named(self, name: impl Into<String>) -> Self {
        FolderStore {
            inner: Arc::new(Inner {
                root: self.inner.root.clone(),
                state: self.inner.state.clone(),
                name: name.into(),
            }),
        }
    }

    /// The object folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The state folder (snapshots, step markers).
    pub fn state(&self) -> &Path {
        &self.inner.state
    }

    /// The store's name in resource ids.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The resource id of a prefix: `folder:<name>/<prefix>`.
    pub fn resource_id(&self, prefix: &str) -> String {
        format!("folder:{}/{prefix}", self.inner.name)
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.inner.root.join(key)
    }

    /// Write an object (atomically).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed key; I/O errors.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        check_key(key, false)?;
        let path = self.path_of(key);
        blocking(move || write_atomic(&path, &bytes)).await
    }

    /// Read an object (`None` when absent).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed key; I/O errors.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key, false)?;
        let path = self.path_of(key);
        blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path, e)),
        })
        .await
    }

    /// Every object under `prefix`, in key order, with its size and blake3.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn list(&self, prefix: &str) -> Result<Vec<FolderObject>> {
        check_key(prefix, true)?;
        let me = self.clone();
        let prefix = prefix.to_string();
        blocking(move || me.list_sync(&prefix)).await
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<FolderObject>> {
        // Walk from the deepest folder the prefix names, then filter by the full prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = self.inner.root.join(dir_part);
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("listing", &dir, e)),
            };
            for e in entries {
                let e = e.map_err(|e| io("listing", &dir, e))?;
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') {
                    continue; // temporary files
                }
                let path = e.path();
                let ft = e.file_type().map_err(|e| io("inspecting", &path, e))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let rel = path
                        .strip_prefix(&self.inner.root)
                        .map_err(|_| Error::invalid("listing left the root folder"))?;
                    let key = rel
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().to_string())
                        .collect::<Vec<_>>()
                        .join("/");
                    if key.starts_with(prefix) {
                        let (size, blake3) = digest_file(&path)?;
                        out.push(FolderObject { key, size, blake3 });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Delete every object and all state (to start a demo over).
    ///
    /// # Errors
    /// I/O errors.
    pub async fn dangerous_clear(&self) -> Result<()> {
        let me = self.clone();
        blocking(move || {
            for d in [&me.inner.root, &me.inner.state] {
                match std::fs::remove_dir_all(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("removing", d, e)),
                }
                std::fs::create_dir_all(d).map_err(|e| io("creating", d, e))?;
            }
            Ok(())
        })
        .await
    }
}

/// The manifest a [`FolderCheckpoint`] stores (and hashes into the snapshot's digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    store: String,
    prefix: String,
    objects: Vec<FolderObject>,
}

/// What a folder snapshot's descriptor holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Descriptor {
    /// Folder holding `manifest.json` and `objects/`.
    dir: PathBuf,
    objects: u64,
}

fn fingerprint_of(prefix: &str, objects: &[FolderObject]) -> Digest {
    let mut h = Hasher::new();
    h.field(b"examples/folder/fingerprint/v1");
    h.field(prefix.as_bytes());
    for o in objects {
        h.field(o.key.as_bytes());
        h.field(&o.size.to_le_bytes());
        h.field(&o.blake3.0);
    }
    h.finish()
}

/// A copy-based checkpoint of every object under a prefix of a [`FolderStore`].
///
/// Capture copies every file into `<state>/snapshots/<id>/objects/` and writes a manifest
/// (key, size, blake3 of each); the snapshot's `digest` is the blake3 of the manifest.
/// Restore reads the manifest and every copy back and refuses
/// ([`Error::DigestMismatch`]) when any of them no longer hashes to what was recorded —
/// before changing anything; then it deletes objects created since, and copies back only
/// those that differ. The fingerprint is a blake3 over (key, size, blake3) of every
/// object under the prefix, in key order.
#[derive(Debug, Clone)]
pub struct FolderCheckpoint {
    store: FolderStore,
    prefix: String,
    resource: String,
}

impl FolderCheckpoint {
    /// A checkpoint of every object under `prefix` (`""`: the whole store).
    pub fn new(store: &FolderStore, prefix: &str) -> Self {
        FolderCheckpoint {
            resource: store.resource_id(prefix),
            store: store.clone(),
            prefix: prefix.to_string(),
        }
    }

    /// The covered prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn descriptor(&self, snapshot: &Snapshot) -> Result<Descriptor> {
        snapshot.ensure_resource(&self.resource)?;
        if snapshot.kind != SNAPSHOT_KIND {
            return Err(Error::invalid(format!(
                "snapshot {} is of kind {}, not {SNAPSHOT_KIND}",
                snapshot.id, snapshot.kind
            )));
        }
        serde_json::from_value(snapshot.descriptor.clone())
            .map_err(|e| Error::invalid(format!("malformed folder snapshot {}: {e}", snapshot.id)))
    }

    /// Read and check a snapshot's manifest against its digest (contract clause 4).
    fn manifest(&self, snapshot: &Snapshot) -> Result<(Descriptor, Manifest)> {
        let d = self.descriptor(snapshot)?;
        let path = d.dir.join("manifest.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::DigestMismatch {
                    resource: self.resource.clone(),
                    expected: snapshot.digest,
                    actual: Digest::of(b""),
                })
            }
            Err(e) => return Err(io("reading", &path, e)),
        };
        snapshot.ensure_digest(Digest::of(&bytes))?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("malformed manifest {}: {e}", path.display())))?;
        if m.prefix != self.prefix || m.store != self.store.name() {
            return Err(Error::WrongResource {
                expected: self.resource.clone(),
                found: self.store.resource_id(&m.prefix),
            });
        }
        Ok((d, m))
    }

    fn capture_sync(&self) -> Result<Snapshot> {
        let objects = self.store.list_sync(&self.prefix)?;
        let fingerprint = fingerprint_of(&self.prefix, &objects);
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.store.state().join("snapshots").join(&id);
        let copies = dir.join("objects");
        let mut size = 0u64;
        for o in &objects {
            let src = self.store.path_of(&o.key);
            let bytes = std::fs::read(&src).map_err(|e| io("reading", &src, e))?;
            if Digest::of(&bytes) != o.blake3 {
                return Err(Error::conflict(format!(
                    "{} changed while it was being captured",
                    o.key
                )));
            }
            size += bytes.len() as u64;
            write_atomic(&copies.join(&o.key), &bytes)?;
        }
        let manifest = Manifest {
            store: self.store.name().to_string(),
            prefix: self.prefix.clone(),
            objects,
        };
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| Error::invalid(format!("manifest does not serialize: {e}")))?;
        write_atomic(&dir.join("manifest.json"), &bytes)?;
        let n = manifest.objects.len() as u64;
        Ok(Snapshot::new(
            id,
            self.resource.clone(),
            SNAPSHOT_KIND,
            Digest::of(&bytes),
            fingerprint,
            serde_json::to_value(Descriptor { dir, objects: n }).unwrap_or(serde_json::Value::Null),
        )
        .with_size(size))
    }

    fn restore_sync(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
        let (d, m) = self.manifest(snapshot)?;
        let copies = d.dir.join("objects");
        // Check every copy before changing anything.
        for o in &m.objects {
            let p = copies.join(&o.key);
            let actual = match std::fs::read(&p) {
                Ok(b) => Digest::of(&b),
                Err(_) => Digest::of(b""),
            };
            if actual != o.blake3 {
                return Err(Error::DigestMismatch {
                    resource: self.resource.clone(),
                    expected: o.blake3,
                    actual,
                });
            }
        }
        let wanted: BTreeMap<&str, &FolderObject> =
            m.objects.iter().map(|o| (o.key.as_str(), o)).collect();
        let current = self.store.list_sync(&self.prefix)?;
        let total = (current.len() + m.objects.len()) as u64;
        let mut changed = 0u64;
        for o in &current {
            if !wanted.contains_key(o.key.as_str()) {
                let p = self.store.path_of(&o.key);
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("removing", &p, e)),
                }
                changed += 1;
                ctx.progress(&self.resource, changed, Some(total), "objects restored");
            }
        }
        let now: BTreeMap<&str, &FolderObject> =
            current.iter().map(|o| (o.key.as_str(), o)).collect();
        for o in &m.objects {
            if now.get(o.key.as_str()).is_some_and(|c| *c == o) {
                continue;
            }
            let src = copies.join(&o.key);
            let bytes = std::fs::read(&src).map_err(|e| io("reading", &src, e))?;
            write_atomic(&self.store.path_of(&o.key), &bytes)?;
            changed += 1;
            ctx.progress(&self.resource, changed, Some(total), "objects restored");
        }
        prune_empty(&self.store.root().join(match self.prefix.rfind('/') {
            Some(i) => &self.prefix[..i],
            None => "",
        }));
        Ok(Restored::by("copy").changed(changed).note(format!(
            "{} objects checked against the manifest",
            m.objects.len()
        )))
    }
}

#[async_trait]
impl Checkpoint for FolderCheckpoint {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, _ctx: &Context) -> Result<Snapshot> {
        let me = self.clone();
        blocking(move || me.capture_sync()).await
    }

    async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
        let me = self.clone();
        let snapshot = snapshot.clone();
        let ctx = ctx.clone();
        blocking(move || me.restore_sync(&snapshot, &ctx)).await
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        let objects = self.store.list(&self.prefix).await?;
        Ok(fingerprint_of(&self.prefix, &objects))
    }

    async fn discard(&self, snapshot: &Snapshot, _ctx: &Context) -> Result<()> {
        let d = self.descriptor(snapshot)?;
        blocking(move || match std::fs::remove_dir_all(&d.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &d.dir, e)),
        })
        .await
    }
}

/// What a finished [`FolderMovePrefix`] remembers (its receipt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveReceipt {
    /// Source prefix.
    pub from: String,
    /// Destination prefix.
    pub to: String,
    /// Objects moved.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The cursor journaled after each batch.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct MoveCursor {
    done: u64,
    bytes: u64,
}

/// Move every object under one prefix of a [`FolderStore`] to the same key under
/// another (`v1/42/a.pdf` → `v2/42/a.pdf`). Compensable.
///
/// Apply refuses a non-empty destination, writes a `started` marker under
/// `<state>/steps/<run>/<step>/` before the first move, renames objects batch by batch in
/// key order (journaling a cursor and reporting progress after each batch, stopping at a
/// batch boundary when the run is cancelled), and writes a `done` marker holding the
/// receipt at the end: a second apply in the same run returns it without moving anything,
/// a resumed apply moves what is left. Revert (with or without receipt, after a full or
/// partial apply) moves every destination object back whose source key is free, deletes
/// destination objects identical to their source, and reports a conflict (leaving it in
/// place) for one whose source was rewritten since; with neither marker it does nothing.
#[derive(Debug, Clone)]
pub struct FolderMovePrefix {
    id: String,
    store: FolderStore,
    from: String,
    to: String,
    batch: usize,
    fail_after: Option<u64>,
    touches: Vec<String>,
}

impl FolderMovePrefix {
    /// A step `id` moving `from` to `to` in `store` (touching the store's whole-store
    /// resource, `folder:<name>/`).
    pub fn new(id: &str, store: &FolderStore, from: &str, to: &str) -> Self {
        FolderMovePrefix {
            id: id.into(),
            touches: vec![store.resource_id("")],
            store: store.clone(),
            from: from.into(),
            to: to.into(),
            batch: 50,
            fail_after: None,
        }
    }

    /// Objects per batch (default 50).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Name the resources (checkpoint resource ids) this step changes.
    pub fn touching<I, S>(mut self, resources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.touches = resources.into_iter().map(Into::into).collect();
        self
    }

    /// Drill: fail, with the move partly done, once `n` objects are moved (at a batch
    /// boundary). Part of the spec.
    pub fn fail_after(mut self, n: u64) -> Self {
        self.fail_after = Some(n);
        self
    }

    fn area(&self, ctx: &Context) -> PathBuf {
        let safe = |s: &str| s.replace(['/', '\\'], "_");
        self.store
            .state()
            .join("steps")
            .join(safe(ctx.run_id()))
            .join(safe(&self.id))
    }

    fn validate(&self) -> Result<()> {
        check_key(&self.from, true)?;
        check_key(&self.to, true)?;
        if self.from.is_empty()
            || self.to.is_empty()
            || self.from.starts_with(&self.to)
            || self.to.starts_with(&self.from)
        {
            return Err(Error::invalid(format!(
                "step {}: prefixes {:?} and {:?} overlap or are empty",
                self.id, self.from, self.to
            )));
        }
        Ok(())
    }

    fn map(&self, key: &str) -> String {
        format!("{}{}", self.to, &key[self.from.len()..])
    }

    fn unmap(&self, key: &str) -> String {
        format!("{}{}", self.from, &key[self.to.len()..])
    }

    async fn apply_inner(&self, ctx: &Context) -> Result<Receipt> {
        self.validate()?;
        let area = self.area(ctx);
        let done_path = area.join("done.json");
        if let Ok(bytes) = tokio::fs::read(&done_path).await {
            let r: MoveReceipt = serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid(format!("malformed marker: {e}")))?;
            return Ok(Receipt::new(&r));
        }
        let started = area.join("started.json");
        let resumed = tokio::fs::try_exists(&started).await.unwrap_or(false);
        if !resumed {
            if !self.store.list(&self.to).await?.is_empty() {
                return Err(Error::conflict(format!(
                    "step {}: destination {} is not empty; refusing to mix layouts",
                    self.id,
                    self.store.resource_id(&self.to)
                )));
            }
            let spec = serde_json::to_vec(&self.spec()).unwrap_or_default();
            blocking(move || write_atomic(&started, &spec)).await?;
        }
        // From here on, any failure may leave the move partly done.
        let mark = |e: Error| match e {
            Error::Backend {
                backend, source, ..
            } => Error::Backend {
                backend,
                source,
                maybe_applied: true,
            },
            Error::Transient { message, .. } => Error::Transient {
                message,
                maybe_applied: true,
            },
            other => other,
        };
        let mut cursor: MoveCursor = ctx
            .cursor()
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        let sources = self.store.list(&self.from).await.map_err(mark)?;
        let total = cursor.done + sources.len() as u64;
        ctx.progress(&self.id, cursor.done, Some(total), "objects");
        for batch in sources.chunks(self.batch) {
            if ctx.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let me = self.clone();
            let batch = batch.to_vec();
            let (n, moved) = (
                batch.len() as u64,
                batch.iter().map(|o| o.size).sum::<u64>(),
            );
            blocking(move || me.move_batch(&batch))
                .await
                .map_err(mark)?;
            cursor.done += n;
            cursor.bytes += moved;
            ctx.save_cursor(json!(cursor)).await.map_err(mark)?;
            ctx.progress(&self.id, cursor.done, Some(total), "objects");
            if let Some(k) = self.fail_after {
                if cursor.done >= k && cursor.done < total {
                    return Err(backend(
                        format!(
                            "step {}: drill: injected failure after {} of {total} objects",
                            self.id, cursor.done
                        ),
                        true,
                    ));
                }
            }
        }
        let receipt = MoveReceipt {
            from: self.from.clone(),
            to: self.to.clone(),
            objects: cursor.done,
            bytes: cursor.bytes,
        };
        let bytes = serde_json::to_vec(&receipt).unwrap_or_default();
        blocking(move || write_atomic(&done_path, &bytes))
            .await
            .map_err(mark)?;
        let me = self.clone();
        blocking(move || {
            prune_empty(&me.store.root().join(me.from.trim_end_matches('/')));
            let _ = std::fs::remove_dir(me.store.root().join(me.from.trim_end_matches('/')));
            Ok(())
        })
        .await?;
        Ok(Receipt::new(&receipt))
    }

    fn move_batch(&self, batch: &[FolderObject]) -> Result<()> {
        for o in batch {
            let src = self.store.path_of(&o.key);
            let dst = self.store.path_of(&self.map(&o.key));
            if let Some(dir) = dst.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
            }
            if dst.exists() {
                // A retried batch: the destination is already there.
                let (_, d) = digest_file(&dst)?;
                if d != o.blake3 {
                    return Err(Error::conflict(format!(
                        "step {}: {} already exists with other content",
                        self.id,
                        self.map(&o.key)
                    )));
                }
                std::fs::remove_file(&src).map_err(|e| io("removing", &src, e))?;
            } else {
                std::fs::rename(&src, &dst).map_err(|e| io("moving", &src, e))?;
            }
        }
        Ok(())
    }

    fn revert_sync(&self, ctx: &Context) -> Result<u64> {
        self.validate()?;
        let area = self.area(ctx);
        if !area.join("started.json").exists() && !area.join("done.json").exists() {
            return Ok(0); // never applied, or already reverted
        }
        let mut undone = 0u64;
        let mut conflicts = Vec::new();
        for d in self.store.list_sync(&self.to)? {
            let src_key = self.unmap(&d.key);
            let src = self.store.path_of(&src_key);
            let dst = self.store.path_of(&d.key);
            if src.exists() {
                let (_, s) = digest_file(&src)?;
                if s == d.blake3 {
                    std::fs::remove_file(&dst).map_err(|e| io("removing", &dst, e))?;
                } else {
                    conflicts.push(d.key.clone());
                    continue;
                }
            } else {
                if let Some(dir) = src.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
                }
                std::fs::rename(&dst, &src).map_err(|e| io("moving back", &dst, e))?;
            }
            undone += 1;
            if undone.is_multiple_of(self.batch as u64) {
                ctx.progress(&self.id, undone, None, "objects reverted");
            }
        }
        if !undone.is_multiple_of(self.batch as u64) || undone == 0 {
            ctx.progress(&self.id, undone, None, "objects reverted");
        }
        if !conflicts.is_empty() {
            return Err(Error::conflict(format!(
                "step {}: {} destination objects differ from their sources and were left in place, e.g. {:?}",
                self.id,
                conflicts.len(),
                &conflicts[..conflicts.len().min(SAMPLE)]
            )));
        }
        prune_empty(&self.store.root().join(self.to.trim_end_matches('/')));
        let _ = std::fs::remove_dir(self.store.root().join(self.to.trim_end_matches('/')));
        match std::fs::remove_dir_all(&area) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &area, e)),
        }
        Ok(undone)
    }
}

#[async_trait]
impl Step for FolderMovePrefix {
    fn id(&self) -> &str {
        &self.id
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::Compensable
    }
    fn touches(&self) -> Vec<String> {
        self.touches.clone()
    }
    fn spec(&self) -> serde_json::Value {
        json!({
            "kind": "folder.move_prefix",
            "store": self.store.name(),
            "from": self.from,
            "to": self.to,
            "batch": self.batch,
            "fail_after": self.fail_after,
        })
    }
    fn describe(&self) -> String {
        format!(
            "{}: move {} to {}*{}",
            self.id,
            self.store.resource_id(&self.from),
            self.to,
            self.fail_after
                .map(|n| format!(" (drill: fails after {n} objects)"))
                .unwrap_or_default()
        )
    }
    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        self.apply_inner(ctx).await
    }
    async fn revert(&self, _receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        let me = self.clone();
        let ctx2 = ctx.clone();
        let n = blocking(move || me.revert_sync(&ctx2)).await?;
        tracing::info!(step = %self.id, objects = n, "move reverted");
        Ok(())
    }
}

/// After a re-layout: the objects the baseline snapshot (of a [`FolderCheckpoint`]) held
/// under `from` are exactly the current objects under `to` (same suffixes, sizes and
/// blake3). Evidence lists missing, extra and changed keys; the value is their number.
#[derive(Debug, Clone)]
pub struct FolderLayoutParity {
    id: String,
    checkpoint: FolderCheckpoint,
    from: String,
    to: String,
}

impl FolderLayoutParity {
    /// Compare the run's baseline of `checkpoint` under `from` with the store under `to`.
    pub fn new(id: &str, checkpoint: &FolderCheckpoint, from: &str, to: &str) -> Self {
        FolderLayoutParity {
            id: id.into(),
            checkpoint: checkpoint.clone(),
            from: from.into(),
            to: to.into(),
        }
    }
}

#[async_trait]
impl Verifier for FolderLayoutParity {
    fn id(&self) -> &str {
        &self.id
    }

    fn baselines(&self) -> Vec<String> {
        vec![self.checkpoint.resource().to_string()]
    }

    async fn verify(&self, ctx: &Context) -> Result<Verdict> {
        let resource = self.checkpoint.resource().to_string();
        let Some(snap) = ctx.baseline(&resource).cloned() else {
            return Ok(Verdict::inconclusive(format!(
                "no baseline snapshot of {resource} in this run"
            )));
        };
        let cp = self.checkpoint.clone();
        let (_, manifest) = blocking(move || cp.manifest(&snap)).await?;
        let expected: BTreeMap<String, (u64, Digest)> = manifest
            .objects
            .iter()
            .filter(|o| o.key.starts_with(&self.from))
            .map(|o| (o.key[self.from.len()..].to_string(), (o.size, o.blake3)))
            .collect();
        let actual: BTreeMap<String, (u64, Digest)> = self
            .checkpoint
            .store
            .list(&self.to)
            .await?
            .into_iter()
            .map(|o| (o.key[self.to.len()..].to_string(), (o.size, o.blake3)))
            .collect();
        let missing: Vec<String> = expected
            .keys()
            .filter(|k| !actual.contains_key(*k))
            .map(|k| format!("{}{k}", self.to))
            .collect();
        let extra: Vec<String> = actual
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .map(|k| format!("{}{k}", self.to))
            .collect();
        let changed: Vec<String> = expected
            .iter()
            .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
            .map(|(k, _)| format!("{}{k}", self.to))
            .collect();
        let n = missing.len() + extra.len() + changed.len();
        let bytes: u64 = actual.values().map(|(s, _)| s).sum();
        Ok(Verdict::check(
            n == 0,
            if n == 0 {
                format!(
                    "{} objects ({bytes} B) under {} equal the baseline's under {}",
                    actual.len(),
                    self.to,
                    self.from
                )
            } else {
                format!(
                    "{} missing, {} extra, {} changed under {} (vs the baseline's {})",
                    missing.len(),
                    extra.len(),
                    changed.len(),
                    self.to,
                    self.from
                )
            },
        )
        .with_evidence(json!({
            "expected_objects": expected.len(),
            "actual_objects": actual.len(),
            "missing": &missing[..missing.len().min(SAMPLE)],
            "extra": &extra[..extra.len().min(SAMPLE)],
            "changed": &changed[..changed.len().min(SAMPLE)],
        }))
        .with_value(n as f64))
    }
}
