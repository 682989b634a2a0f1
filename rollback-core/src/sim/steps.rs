//! Simulated steps: [`SetKey`] (compensable, restore-only or irreversible, with faults)
//! and [`SendMessage`] (irreversible).

use super::{take, SimWorld};
use crate::{Context, Error, Receipt, Result, Reversibility, Step};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize)]
struct SetReceipt {
    previous: Option<String>,
}

/// Sets `key` of `resource` to `value`; compensable (its receipt keeps the previous value).
#[derive(Clone, Debug)]
pub struct SetKey {
    id: String,
    world: SimWorld,
    resource: String,
    key: String,
    value: Option<String>,
    reversibility: Reversibility,
    effects: Option<Vec<crate::Effect>>,
}

impl SetKey {
    /// Declare what the step changes (see [`Step::effects`]) instead of "writes anywhere
    /// in its resource": e.g. a step that creates a key its revert removes, and a
    /// restore-only step writing only inside it, so the plan undoes the latter by the
    /// former's revert.
    pub fn with_effects(mut self, effects: Vec<crate::Effect>) -> Self {
        self.effects = Some(effects);
        self
    }

    /// Make this step restore-only: its revert does nothing, and a checkpoint (or the
    /// revert of the step that created what it writes) undoes it — like a backfill.
    pub fn restore_only(mut self) -> Self {
        self.reversibility = Reversibility::RestoreOnly;
        self
    }

    /// A compensable step setting `resource[key] = value`.
    pub fn new(id: &str, world: &SimWorld, resource: &str, key: &str, value: &str) -> Self {
        SetKey {
            id: id.into(),
            world: world.clone(),
            resource: resource.into(),
            key: key.into(),
            value: Some(value.into()),
            reversibility: Reversibility::Compensable,
            effects: None,
        }
    }

    /// A restore-only step deleting `resource[key]` (like a `DROP COLUMN`).
    pub fn delete(id: &str, world: &SimWorld, resource: &str, key: &str) -> Self {
        SetKey {
            id: id.into(),
            world: world.clone(),
            resource: resource.into(),
            key: key.into(),
            value: None,
            reversibility: Reversibility::RestoreOnly,
            effects: None,
        }
    }

    async fn injected(&self, ctx: &Context) -> Result<bool> {
        let delay = self.world.lock().faults.slow_apply.get(&self.id).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut g = self.world.lock();
        if take(&mut g.faults.fail_apply, &self.id) {
            return Err(Error::conflict(format!(
                "injected failure applying {} (run {})",
                self.id,
                ctx.run_id()
            )));
        }
        if take(&mut g.faults.transient_apply, &self.id) {
            return Err(Error::transient(
                format!("injected transient failure applying {}", self.id),
                false,
            ));
        }
        Ok(take(&mut g.faults.uncertain_apply, &self.id))
    }
}

#[async_trait]
impl Step for SetKey {
    fn id(&self) -> &str {
        &self.id
    }
    fn reversibility(&self) -> Reversibility {
        self.reversibility
    }
    fn touches(&self) -> Vec<String> {
        vec![self.resource.clone()]
    }
    fn effects(&self) -> Vec<crate::Effect> {
        match &self.effects {
            Some(e) => e.clone(),
            None => vec![crate::Effect::writes(&self.resource, None)],
        }
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "resource": self.resource, "key": self.key, "value": self.value })
    }
    fn describe(&self) -> String {
        match &self.value {
            Some(v) => format!("{}: set {}[{}] = {}", self.id, self.resource, self.key, v),
            None => format!("{}: delete {}[{}]", self.id, self.resource, self.key),
        }
    }

    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        let uncertain = self.injected(ctx).await?;
        let mut g = self.world.lock();
        g.admit(ctx)?;
        let marker = (ctx.run_id().to_string(), self.id.clone());
        let receipt = match g.markers.get(&marker) {
            Some(r) => r.clone(), // already applied in this run: idempotent
            None => {
                let res = g.resources.entry(self.resource.clone()).or_default();
                let previous = match &self.value {
                    Some(v) => res.insert(self.key.clone(), v.clone()),
                    None => res.remove(&self.key),
                };
                let r = Receipt::new(&SetReceipt { previous });
                g.markers.insert(marker, r.clone());
                r
            }
        };
        if uncertain {
            return Err(Error::Timeout {
                operation: format!("apply {}", self.id),
                after: Duration::from_millis(1),
            });
        }
        Ok(receipt)
    }

    async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
        let mut g = self.world.lock();
        g.admit(ctx)?;
        if take(&mut g.faults.fail_revert, &self.id) {
            return Err(Error::transient(
                format!("injected failure reverting {}", self.id),
                false,
            ));
        }
        if self.reversibility != Reversibility::Compensable {
            return Ok(()); // undone by restoring the checkpoint
        }
        let marker = (ctx.run_id().to_string(), self.id.clone());
        let receipt = match (receipt, g.markers.get(&marker)) {
            (_, Some(m)) => m.clone(),
            (Some(r), None) => r.clone(),
            (None, None) => return Ok(()), // never applied
        };
        let prev: SetReceipt = receipt.parse()?;
        let res = g.resources.entry(self.resource.clone()).or_default();
        match prev.previous {
            Some(v) => res.insert(self.key.clone(), v),
            None => res.remove(&self.key),
        };
        g.markers.remove(&marker);
        Ok(())
    }
}

/// An irreversible step: "sends" a message to the world's outbox.
#[derive(Clone, Debug)]
pub struct SendMessage {
    id: String,
    world: SimWorld,
    message: String,
}

impl SendMessage {
    /// A step sending `message`.
    pub fn new(id: &str, world: &SimWorld, message: &str) -> Self {
        SendMessage {
            id: id.into(),
            world: world.clone(),
            message: message.into(),
        }
    }
}

#[async_trait]
impl Step for SendMessage {
    fn id(&self) -> &str {
        &self.id
    }
    fn reversibility(&self) -> Reversibility {
        Reversibility::Irreversible
    }
    fn spec(&self) -> serde_json::Value {
        serde_json::json!({ "message": self.message })
    }
    async fn apply(&self, ctx: &Context) -> Result<Receipt> {
        let mut g = self.world.lock();
        g.admit(ctx)?;
        let marker = (ctx.run_id().to_string(), self.id.clone());
        if !g.markers.contains_key(&marker) {
            g.outbox.push(self.message.clone());
            g.markers.insert(marker, Receipt::empty());
        }
        Ok(Receipt::empty())
    }
    async fn revert(&self, _receipt: Option<&Receipt>, _ctx: &Context) -> Result<()> {
        Err(Error::Irreversible {
            step: self.id.clone(),
            reason: "a sent message cannot be unsent".into(),
        })
    }
}
