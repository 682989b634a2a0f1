//! [`SimCheckpoint`]: a checkpoint of one simulated resource.

use super::{take, SimWorld};
use crate::{Checkpoint, Context, Digest, Error, Restored, Result, Snapshot};
use async_trait::async_trait;

/// A checkpoint of one simulated resource.
#[derive(Clone, Debug)]
pub struct SimCheckpoint {
    pub(super) world: SimWorld,
    pub(super) resource: String,
}

#[async_trait]
impl Checkpoint for SimCheckpoint {
    fn resource(&self) -> &str {
        &self.resource
    }

    async fn capture(&self, ctx: &Context) -> Result<Snapshot> {
        let mut g = self.world.lock();
        let state = g.resources.get(&self.resource).cloned().unwrap_or_default();
        g.snapshot_counter += 1;
        let id = format!(
            "sim-{}-{}-{}",
            self.resource,
            ctx.run_id(),
            g.snapshot_counter
        );
        let digest = SimWorld::fingerprint_of(&state);
        let size = state.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        g.snapshots.insert(id.clone(), state);
        ctx.progress(&self.resource, 1, Some(1), "snapshots");
        Ok(Snapshot::new(
            id.clone(),
            self.resource.clone(),
            "sim.kv",
            digest,
            digest,
            serde_json::json!({ "stored_as": id }),
        )
        .with_size(size))
    }

    async fn restore(&self, snapshot: &Snapshot, ctx: &Context) -> Result<Restored> {
        snapshot.ensure_resource(&self.resource)?;
        let key = snapshot
            .descriptor
            .get("stored_as")
            .and_then(|v| v.as_str())
            .unwrap_or(&snapshot.id)
            .to_string();
        let mut g = self.world.lock();
        g.admit(ctx)?;
        if take(&mut g.faults.fail_restore, &self.resource) {
            return Err(Error::transient(
                format!("injected restore failure of {}", self.resource),
                false,
            ));
        }
        let stored = g.snapshots.get(&key).cloned().ok_or_else(|| {
            Error::invalid(format!("snapshot {key} is not in the snapshot store"))
        })?;
        snapshot.ensure_digest(SimWorld::fingerprint_of(&stored))?;
        let current = g.resources.get(&self.resource).cloned().unwrap_or_default();
        let changed = stored
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .count()
            + current.keys().filter(|k| !stored.contains_key(*k)).count();
        g.resources.insert(self.resource.clone(), stored);
        Ok(Restored::by("copy").changed(changed as u64))
    }

    async fn fingerprint(&self, _ctx: &Context) -> Result<Digest> {
        Ok(SimWorld::fingerprint_of(
            &self.world.resource_state(&self.resource),
        ))
    }

    async fn discard(&self, snapshot: &Snapshot, _ctx: &Context) -> Result<()> {
        snapshot.ensure_resource(&self.resource)?;
        let mut g = self.world.lock();
        if take(&mut g.faults.fail_discard, &self.resource) {
            return Err(Error::transient(
                format!("injected discard failure of {}", self.resource),
                false,
            ));
        }
        let key = snapshot
            .descriptor
            .get("stored_as")
            .and_then(|v| v.as_str())
            .unwrap_or(&snapshot.id)
            .to_string();
        g.snapshots.remove(&key);
        Ok(())
    }
}
