//! The [`FlagProvider`] trait and the in-memory provider.

use crate::FlagState;
use async_trait::async_trait;
use rollback_core::{Error, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Reads and writes flag state in one scope (an Unleash project and environment, a flag
/// file, an in-memory set).
///
/// # Contract
/// 1. **Scope identity.** [`kind`](FlagProvider::kind) and [`scope`](FlagProvider::scope)
///    are stable across processes; together they name the flags this provider sees
///    (resource ids are `flags:<kind>:<scope>[/<flag>]`).
/// 2. **Reads are read-only.** `list` and `get` change nothing.
/// 3. **Exact writes.** After `put(flag, s)` returns `Ok`, `get(flag)` returns a state
///    equal to `s.normalized()` — or `put` refused `s` before changing anything
///    ([`Error::Invalid`]) because the provider cannot hold it.
/// 4. **Idempotent writes.** `put` of the state the flag already has, and `delete` of a
///    flag that does not exist, change nothing and succeed.
/// 5. **Typed failures.** An unreachable backend is [`Error::Transient`], with
///    `maybe_applied` true only when a write may have reached it; errors never carry
///    credentials.
#[async_trait]
pub trait FlagProvider: Send + Sync + fmt::Debug {
    /// The provider kind: `unleash`, `file`, `memory`.
    fn kind(&self) -> &str;

    /// The scope within the kind: `<project>/<environment>` for Unleash, the file path,
    /// the in-memory set's name.
    fn scope(&self) -> &str;

    /// Names of every flag in the scope (archived flags excluded), sorted.
    ///
    /// # Errors
    /// Backend errors.
    async fn list(&self) -> Result<Vec<String>>;

    /// The state of `flag`, `None` when it does not exist.
    ///
    /// # Errors
    /// Backend errors.
    async fn get(&self, flag: &str) -> Result<Option<FlagState>>;

    /// Make `flag` have `state`, creating the flag when it does not exist.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the provider cannot hold `state` (nothing changed);
    /// backend errors.
    ///
    /// # Cancel safety
    /// Dropping the future may leave the flag partly written; `put` again finishes it.
    async fn put(&self, flag: &str, state: &FlagState) -> Result<()>;

    /// Remove `flag` (Unleash: archive, then delete from the archive). No-op when absent.
    ///
    /// # Errors
    /// Backend errors.
    async fn delete(&self, flag: &str) -> Result<()>;

    /// The states of several flags (`None`: absent). Providers with a network round trip
    /// per flag override this to read concurrently.
    ///
    /// # Errors
    /// Backend errors.
    async fn get_many(&self, flags: &[String]) -> Result<BTreeMap<String, Option<FlagState>>> {
        let mut out = BTreeMap::new();
        for f in flags {
            out.insert(f.clone(), self.get(f).await?);
        }
        Ok(out)
    }
}

/// A shared or boxed provider is a provider: every method forwards (a wrapper that forgot
/// `get_many` would silently lose its concurrent reads).
macro_rules! forward_provider {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: FlagProvider + ?Sized> FlagProvider for $ptr {
            fn kind(&self) -> &str {
                (**self).kind()
            }
            fn scope(&self) -> &str {
                (**self).scope()
            }
            async fn list(&self) -> Result<Vec<String>> {
                (**self).list().await
            }
            async fn get(&self, flag: &str) -> Result<Option<FlagState>> {
                (**self).get(flag).await
            }
            async fn put(&self, flag: &str, state: &FlagState) -> Result<()> {
                (**self).put(flag, state).await
            }
            async fn delete(&self, flag: &str) -> Result<()> {
                (**self).delete(flag).await
            }
            async fn get_many(
                &self,
                flags: &[String],
            ) -> Result<BTreeMap<String, Option<FlagState>>> {
                (**self).get_many(flags).await
            }
        }
    )*};
}
forward_provider!(Arc<T>, Box<T>);

/// The resource id of every flag in `provider`'s scope: `flags:<kind>:<scope>`.
pub fn scope_resource(provider: &dyn FlagProvider) -> String {
    format!("flags:{}:{}", provider.kind(), provider.scope())
}

/// The resource id of one flag: `flags:<kind>:<scope>/<flag>`.
///
/// ```
/// use rollback_flags::{MemoryProvider, flag_resource};
/// let p = MemoryProvider::new("sim");
/// assert_eq!(flag_resource(&p, "checkout"), "flags:memory:sim/checkout");
/// ```
pub fn flag_resource(provider: &dyn FlagProvider, flag: &str) -> String {
    format!("{}/{flag}", scope_resource(provider))
}

/// The same error, saying the failed action may have taken effect (a write before it
/// succeeded).
pub(crate) fn mark_maybe_applied(e: Error) -> Error {
    match e {
        Error::Transient { message, .. } => Error::Transient {
            message,
            maybe_applied: true,
        },
        Error::Backend {
            backend, source, ..
        } => Error::Backend {
            backend,
            source,
            maybe_applied: true,
        },
        other => other,
    }
}

pub(crate) fn check_flag_name(flag: &str) -> Result<()> {
    let ok = !flag.is_empty()
        && flag.len() <= 100
        && flag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "flag name {flag:?} must be 1-100 characters of [A-Za-z0-9._~-]"
        )))
    }
}

/// Flags held in memory, for simulation and tests. Clones share the same flags.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use rollback_flags::{FlagProvider, FlagState, MemoryProvider};
/// let p = MemoryProvider::new("sim");
/// p.put("checkout", &FlagState::rollout("checkout", 10)).await?;
/// assert_eq!(p.get("checkout").await?.unwrap().rollout_percent(), Some(10));
/// # Ok::<(), rollback_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryProvider {
    scope: String,
    flags: Arc<Mutex<BTreeMap<String, FlagState>>>,
    fail_writes: Arc<Mutex<u32>>,
}

impl fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryProvider")
            .field("scope", &self.scope)
            .field("flags", &self.lock().len())
            .finish()
    }
}

impl MemoryProvider {
    /// An empty set of flags named `scope`.
    pub fn new(scope: impl Into<String>) -> Self {
        MemoryProvider {
            scope: scope.into(),
            ..Default::default()
        }
    }

    /// Make the next `n` writes fail with a transient error (nothing written), to
    /// simulate an unreachable provider.
    pub fn fail_next_writes(&self, n: u32) {
        *self.fail_writes.lock().unwrap_or_else(|e| e.into_inner()) = n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FlagState>> {
        self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_fault(&self) -> Result<()> {
        let mut n = self.fail_writes.lock().unwrap_or_else(|e| e.into_inner());
        if *n > 0 {
            *n -= 1;
            return Err(Error::transient(
                "memory provider: injected write failure",
                false,
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl FlagProvider for MemoryProvider {
    fn kind(&self) -> &str {
        "memory"
    }
    fn scope(&self) -> &str {
        &self.scope
    }
    async fn list(&self) -> Result<Vec<String>> {
        Ok(self.lock().keys().cloned().collect())
    }
    async fn get(&self, flag: &str) -> Result<Option<FlagState>> {
        Ok(self.lock().get(flag).cloned())
    }
    async fn put(&self, flag: &str, state: &FlagState) -> Result<()> {
        check_flag_name(flag)?;
        self.take_fault()?;
        self.lock()
            .insert(flag.to_string(), state.clone().normalized());
        Ok(())
    }
    async fn delete(&self, flag: &str) -> Result<()> {
        self.take_fault()?;
        self.lock().remove(flag);
        Ok(())
    }
}
