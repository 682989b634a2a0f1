//! Object steps: put objects, copy or move a prefix to a new layout, rewrite objects
//! through a function, delete objects.
//!
//! Every step keeps its bookkeeping (markers, backups of what it overwrote) in the
//! store, under `<store>/steps/<run id>/<step id>/`, written *before* the change it
//! describes; this is what makes apply and revert idempotent and lets `revert(None)`
//! undo a partial apply after a crash. Outside a run, give each use its own
//! [`Context::standalone`] run id: two applies with the same run id are one apply.

mod delete;
mod put;
mod relayout;
mod rewrite;

pub use delete::DeleteObjects;
pub use put::PutObjects;
pub use relayout::{CopyPrefix, MovePrefix, RelayoutReceipt};
pub use rewrite::{RewriteFn, RewriteObjects};

use crate::backend::{ObjectBackend, PutMode};
use crate::listing::Objects;
use rollback_core::{Context, Error, Result};
use serde::{de::DeserializeOwned, Serialize};

/// A step's bookkeeping area in the store.
pub(crate) struct Area {
    store: Objects,
    prefix: String,
}

fn path_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect()
}

impl Area {
    pub(crate) fn new(bucket: &Objects, ctx: &Context, step_id: &str) -> Self {
        let prefix = format!(
            "{}steps/{}/{}/",
            bucket.store_location().prefix,
            path_safe(ctx.run_id()),
            path_safe(step_id)
        );
        Area {
            store: bucket.store_backend(),
            prefix,
        }
    }

    pub(crate) fn store(&self) -> &Objects {
        &self.store
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        match self.store.get(&self.key(name)).await? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::invalid(format!("step marker {} is malformed: {e}", self.key(name)))
            }),
        }
    }

    pub(crate) async fn put_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| Error::invalid(format!("step marker: {e}")))?;
        self.store
            .put_object(&self.key(name), bytes.into(), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    pub(crate) async fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.store.head(&self.key(name)).await?.is_some())
    }

    /// Remove every marker and backup of this step.
    pub(crate) async fn purge(&self) -> Result<()> {
        self.store.dangerous_purge(&self.prefix).await?;
        Ok(())
    }
}

/// The longest common prefix of two strings, cut back to its last `/` (a "directory").
pub(crate) fn common_dir<'a>(a: &'a str, b: &str) -> &'a str {
    let mut n = 0;
    for ((i, x), y) in a.char_indices().zip(b.chars()) {
        if x != y {
            break;
        }
        n = i + x.len_utf8();
    }
    match a[..n].rfind('/') {
        Some(i) => &a[..=i],
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_dir_cuts_at_the_last_slash() {
        assert_eq!(common_dir("v1/", "v2/"), "");
        assert_eq!(common_dir("data/v1/", "data/v2/"), "data/");
        assert_eq!(common_dir("a/b/c", "a/b/c"), "a/b/");
        assert_eq!(path_safe("a/b"), "a_b");
    }
}
