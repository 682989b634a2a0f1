//! [`FlagCheckpoint`]: snapshots of a set of flags, restored exactly and verified by
//! reading back.

use crate::model::digest_flags;
use crate::provider::scope_resource;
use crate::{FlagProvider, FlagState};
use async_trait::async_trait;
use rollback_core::{Checkpoint, Context, Digest, Error, Restored, Result, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The snapshot kind this crate writes.
pub const SNAPSHOT_KIND: &str = "flags.state";

/// Which flags of a provider's scope a checkpoint covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Every flag in the scope, including flags created after the capture (restore
    /// deletes those).
    All,
    /// Every flag whose name starts with the prefix (same rule for flags created later).
    Prefix(String),
    /// Exactly these flags; one that does not exist is captured as absent (restore
    /// deletes it if it appeared).
    Flags(BTreeSet<String>),
}

/// What a flag snapshot's descriptor holds: the captured state itself, inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagSnapshot {
    /// Provider kind.
    pub provider: String,
    /// Provider scope.
    pub scope: String,
    /// Which flags are covered.
    pub selection: Selection,
    /// Flag name → state (`None`: the flag did not exist).
    pub flags: BTreeMap<String, Option<FlagState>>,
}

impl FlagSnapshot {
    /// Decode a snapshot's descriptor.
    ///
    /// # Errors
    /// [`Error::Invalid`] when it is not a flag snapshot.
    pub fn from_snapshot(s: &Snapshot) -> Result<Self> {
        if s.kind != SNAPSHOT_KIND {
            return Err(Error::invalid(format!(
                "snapshot {} is of kind {}, not {SNAPSHOT_KIND}",
                s.id, s.kind
            )));
        }
        Self::deserialize(&s.descriptor)
            .map_err(|e| Error::invalid(format!("malformed flag snapshot {}: {e}", s.id)))
    }

    /// The digest of the captured flags (what the snapshot's `digest` must be).
    pub fn digest(&self) -> Digest {
        digest_flags(&self.flags)
    }
}

/// A checkpoint of a set of flags in one provider scope.
///
/// Resource ids: `flags:<kind>:<scope>` for [`Selection::All`],
/// `flags:<kind>:<scope>/<flag>` for one flag ([`FlagCheckpoint::flag`]),
/// `flags:<kind>:<scope>/<prefix>*` for a prefix, and `flags:<kind>:<scope>/{a,b,c}` for
/// a set of several flags. Give each flag its own checkpoint when a plan may roll back one
/// flag and keep another (component rollback).
///
/// The snapshot carries the state inline; `digest` and `fingerprint` are both the blake3
/// of the canonical encoding of the covered flags ([`digest_flags`]). `restore` writes
/// back exactly the captured state (enabled, strategies with their parameters, variants),
/// deletes covered flags that did not exist, then reads back and refuses to report
/// success unless the read-back digest is the captured one.
///
/// What is covered is what [`FlagState`] holds for the provider's environment. Flag
/// metadata shared by all environments (Unleash's type, description, stale mark,
/// impression data, tags, dependencies) is not: a flag deleted during the run and
/// re-created by a restore gets type `release` and no description (an archived one is
/// revived with its own).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use rollback_core::{Checkpoint, Context};
/// use rollback_flags::{FlagCheckpoint, FlagProvider, FlagState, MemoryProvider};
/// let p = MemoryProvider::new("sim");
/// p.put("checkout", &FlagState::rollout("checkout", 10)).await?;
/// let cp = FlagCheckpoint::flag(Arc::new(p.clone()), "checkout");
/// assert_eq!(cp.resource(), "flags:memory:sim/checkout");
/// let ctx = Context::detached();
/// let snap = cp.capture(&ctx).await?;
/// p.put("checkout", &FlagState::off()).await?;
/// cp.restore(&snap, &ctx).await?;
/// assert_eq!(p.get("checkout").await?.unwrap().rollout_percent(), Some(10));
/// # Ok::<(), rollback_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FlagCheckpoint {
    provider: Arc<dyn FlagProvider>,
    selection: Selection,
    resource: String,
}

impl FlagCheckpoint {
    /// A checkpoint of `selection` in `provider`'s scope.
    pub fn new(provider: Arc<dyn FlagProvider>, selection: Selection) -> Self {
        let base = scope_resource(provider.as_ref());
        let resource = match &selection {
            Selection::All => base,
            Selection::Prefix(p) => format!("{base}/{p}*"),
            Selection::Flags(f) if f.len() == 1 => {
                format!(
                    "{base}/{}",
                    f.iter().next().map(String::as_str).unwrap_or("")
                )
            }
            Selection::Flags(f) => format!(
                "{base}/{{{}}}",
                f.iter().map(String::as_str).collect::<Vec<_>>().join(",")
            ),
        };
        FlagCheckpoint {
            provider,
            selection,
            resource,
        }
    }

    /// Every flag in the scope.
    pub fn all(provider: Arc<dyn FlagProvider>) -> Self {
        Self::new(provider, Selection::All)
    }

    /// One flag: resource `flags:<kind>:<scope>/<flag>`, the id steps on that flag list
    /// in [`Step::touches`](rollback_core::Step::touches).
    pub fn flag(provider: Arc<dyn FlagProvider>, flag: &str) -> Self {
        Self::new(provider, Selection::Flags([flag.to_string()].into()))
    }

    /// A set of flags.
    pub fn flags<I, S>(provider: Arc<dyn FlagProvider>, flags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::new(
            provider,
            Selection::Flags(flags.into_iter().map(Into::into).collect()),
        )
    }

    /// Every flag whose name starts with `prefix`.
    pub fn prefix(provider: Arc<dyn FlagProvider>, prefix: &str) -> Self {
        Self::new(provider, Selection::Prefix(prefix.to_string()))
    }

    /// The selection.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// The provider.
    pub fn provider(&self) -> &Arc<dyn FlagProvider> {
        &self.provider
    }

    /// Whether `flag` is covered.
    pub fn covers(&self, flag: &str) -> bool {
        match &self.selection {
            Selection::All => true,
            Selection::Prefix(p) => flag.starts_with(p.as_str()),
            Selection::Flags(f) => f.contains(flag),
        }
    }

    /// The current state of the covered flags (plus `extra` names, e.g. those a snapshot
    /// holds).
    ///
    /// # Errors
    /// Provider errors.
    pub async fn read(&self, extra: &[String]) -> Result<BTreeMap<String, Option<FlagState>>> {
        let mut names: BTreeSet<String> = match &self.selection {
            Selection::Flags(f) => f.clone(),
            _ => self
                .provider
                .list()
                .await?
                .into_iter()
                .filter(|f| self.covers(f))
                .collect(),
        };
        names.extend(extra.iter().cloned());
        let names: Vec<String> = names.into_iter().collect();
        let mut states = self.provider.get_many(&names).await?;
        if !matches!(self.selection, Selection::Flags(_)) {
            // Under a list-based selection an absent flag is simply not there.
            states.retain(|_, s| s.is_some());
        }
        Ok(states)
    }
}

#[async_trait]
impl Checkpoint for FlagCheckpoint {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, _ctx: &Context) -> Result<Snapshot> {
        let flags = self.read(&[]).await?;
        let digest = digest_flags(&flags);
        let descriptor = FlagSnapshot {
            provider: self.provider.kind().to_string(),
            scope: self.provider.scope().to_string(),
            selection: self.selection.clone(),
            flags,
        };
        let descriptor = serde_json::to_value(&descriptor)
            .map_err(|e| Error::invalid(format!("flag snapshot does not serialize: {e}")))?;
        let size = descriptor.to_string().len() as u64;
        Ok(Snapshot::new(
            uuid::Uuid::new_v4().to_string(),
            self.resource.clone(),
            SNAPSHOT_KIND,
            digest,
            digest,
            descriptor,
        )
        .with_size(size))
    }

    async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
        snapshot.ensure_resource(&self.resource)?;
        let snap = FlagSnapshot::from_snapshot(snapshot)?;
        snapshot.ensure_digest(snap.digest())?;
        if snap.selection != self.selection {
            return Err(Error::invalid(format!(
                "snapshot {} covers {:?}, this checkpoint {:?}",
                snapshot.id, snap.selection, self.selection
            )));
        }
        let names: Vec<String> = snap.flags.keys().cloned().collect();
        let current = self.read(&names).await?;
        let all: BTreeSet<&String> = current.keys().chain(snap.flags.keys()).collect();
        let mut changed = 0u64;
        let total = all.len() as u64;
        for name in all {
            let now = current.get(name).cloned().flatten();
            let want = snap.flags.get(name).cloned().flatten();
            if now == want {
                continue;
            }
            match &want {
                Some(state) => self.provider.put(name, state).await?,
                None => self.provider.delete(name).await?,
            }
            changed += 1;
            ctx.progress(&self.resource, changed, Some(total), "flags restored");
        }
        let after = self.read(&names).await?;
        let actual = digest_flags(&after);
        if actual != snapshot.fingerprint {
            let differing: Vec<&String> = after
                .iter()
                .filter(|(n, s)| snap.flags.get(*n).cloned().flatten() != **s)
                .map(|(n, _)| n)
                .collect();
            return Err(Error::conflict(format!(
                "{}: read-back after restore differs from the snapshot for {differing:?} (a concurrent writer?)",
                self.resource
            )));
        }
        Ok(Restored::by("flags.write")
            .changed(changed)
            .note(format!("{} flags verified by read-back", after.len())))
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        Ok(digest_flags(&self.read(&[]).await?))
    }
}
