//! Fault injection from outside the production steps (feature `faults`; for drills and
//! tests, never needed in production): [`FailAfterCopies`] wraps a step
//! built over an object backend and makes the backend fail midway through the step's
//! apply, as if the process had lost the backend with the change partly applied.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use rollback_s3::faults::FailAfterCopies;
//! use rollback_core::{Context, Step};
//! use rollback_s3::{FolderBackend, MovePrefix};
//! let dir = tempfile::tempdir().unwrap();
//! let folder = FolderBackend::new(dir.path().join("objects"), dir.path().join("state"));
//! for i in 0..10 {
//!     folder.put(&format!("v1/{i}"), b"x".to_vec()).await?;
//! }
//! let step = FailAfterCopies::new(&folder, 4, |b| MovePrefix::new("move", b, "v1/", "v2/").batch_size(2));
//! let ctx = Context::standalone("demo");
//! assert!(step.apply(&ctx).await.unwrap_err().maybe_applied());
//! assert_eq!(folder.list("v2/").await?.len(), 4);
//! step.revert(None, &ctx).await?; // the fault is off outside apply
//! assert_eq!(folder.list("v1/").await?.len(), 10);
//! # Ok::<(), rollback_core::Error>(())
//! # }).unwrap();
//! ```

use crate::{ListPage, ObjectBackend, ObjectInfo, PutMode, StoreLocation};
use async_trait::async_trait;
use bytes::Bytes;
use rollback_core::{Context, Effect, Error, Receipt, Result, Reversibility, Step};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Injected(String);

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Injected {}

#[derive(Debug)]
struct Fault {
    after: u64,
    armed: AtomicBool,
    copied: AtomicU64,
    /// Set when a batch delete ends with at least `after` objects copied.
    tripped: AtomicBool,
}

/// A backend that, while its fault is armed, refuses every copy once `after` copies
/// have succeeded and the batch delete that follows them has ended. Everything else
/// forwards.
#[derive(Debug, Clone)]
struct Faulty {
    inner: Arc<dyn ObjectBackend>,
    fault: Arc<Fault>,
}

#[async_trait]
impl ObjectBackend for Faulty {
    fn scheme(&self) -> &str {
        self.inner.scheme()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn store_location(&self) -> &StoreLocation {
        self.inner.store_location()
    }
    fn store_backend(&self) -> Arc<dyn ObjectBackend> {
        self.inner.store_backend()
    }
    fn concurrency_limit(&self) -> usize {
        self.inner.concurrency_limit()
    }
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<&str>,
    ) -> Result<ListPage> {
        self.inner.list_page(prefix, start_after, token).await
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.inner.head(key).await
    }
    async fn put_object(&self, key: &str, body: Bytes, mode: PutMode) -> Result<String> {
        self.inner.put_object(key, body, mode).await
    }
    async fn copy(
        &self,
        src: &str,
        src_key: &str,
        dst_key: &str,
        if_match: Option<&str>,
    ) -> Result<String> {
        let f = &self.fault;
        let done = f.copied.load(Ordering::SeqCst);
        if f.armed.load(Ordering::SeqCst) && f.tripped.load(Ordering::SeqCst) {
            return Err(Error::Backend {
                backend: "drill",
                source: Box::new(Injected(format!("injected failure after {done} objects"))),
                maybe_applied: true,
            });
        }
        let etag = self.inner.copy(src, src_key, dst_key, if_match).await?;
        f.copied.fetch_add(1, Ordering::SeqCst);
        Ok(etag)
    }
    async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        self.inner.delete_keys(keys).await?;
        let f = &self.fault;
        if f.copied.load(Ordering::SeqCst) >= f.after {
            f.tripped.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
    async fn dangerous_purge(&self, prefix: &str) -> Result<u64> {
        self.inner.dangerous_purge(prefix).await
    }
}

/// A move whose apply fails (a backend error: the change may be partly applied) once
/// `after` objects were moved: the batch that reaches the count finishes (its copies and
/// its source deletes), and the next copy is refused — as a move that loses its backend
/// between two batches. Its revert, and every other method, is the wrapped step's, with
/// the fault off.
pub struct FailAfterCopies<S> {
    step: S,
    fault: Arc<Fault>,
}

impl<S: fmt::Debug> fmt::Debug for FailAfterCopies<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailAfterCopies")
            .field("step", &self.step)
            .field("after", &self.fault.after)
            .finish()
    }
}

impl<S: Step> FailAfterCopies<S> {
    /// Build the step with `build` over `backend` wrapped in the fault.
    pub fn new<B>(backend: &B, after: u64, build: impl FnOnce(&Arc<dyn ObjectBackend>) -> S) -> Self
    where
        B: ObjectBackend + Clone + 'static,
    {
        let fault = Arc::new(Fault {
            after,
            armed: AtomicBool::new(false),
            copied: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
        });
        let faulty: Arc<dyn ObjectBackend> = Arc::new(Faulty {
            inner: Arc::new(backend.clone()),
            fault: fault.clone(),
        });
        FailAfterCopies {
            step: build(&faulty),
            fault,
        }
    }
}

#[async_trait]
impl<S: Step> Step for FailAfterCopies<S> {
    fn id(&self) -> &str {
        self.step.id()
    }
    fn reversibility(&self) -> Reversibility {
        self.step.reversibility()
    }
    fn touches(&self) -> Vec<String> {
        self.step.touches()
    }
    fn effects(&self) -> Vec<Effect> {
        self.step.effects()
    }
    fn spec(&self) -> serde_json::Value {
        self.step.spec()
    }
    fn describe(&self) -> String {
        format!(
            "{} (drill: fails after {} objects)",
            self.step.describe(),
            self.fault.after
        )
    }
    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        self.fault.copied.store(0, Ordering::SeqCst);
        self.fault.tripped.store(false, Ordering::SeqCst);
        self.fault.armed.store(true, Ordering::SeqCst);
        let res = self.step.apply(ctx).await;
        self.fault.armed.store(false, Ordering::SeqCst);
        res
    }
    async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        self.step.revert(receipt, ctx).await
    }
}
