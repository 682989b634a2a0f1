//! The provider-neutral flag model: [`FlagState`], [`Strategy`], [`Variant`], and the
//! canonical encoding their digests are computed over.

use rollback_core::Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The name of the strategy that carries a percentage rollout (Unleash's
/// `flexibleRollout`; the file provider maps it to flagd's `fractional` targeting).
pub const ROLLOUT_STRATEGY: &str = "flexibleRollout";

/// The state of one flag in one environment: what an application evaluates.
///
/// Field names follow Unleash's Admin API (camelCase in JSON), the richest model of the
/// three providers. Two states are equal when an application would see the same flag
/// configuration; [`FlagState::normalized`] puts the strategy list in canonical order.
///
/// ```
/// use rollback_flags::FlagState;
/// let s = FlagState::rollout("checkout", 10);
/// assert!(s.enabled);
/// assert_eq!(s.rollout_percent(), Some(10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlagState {
    /// Whether the flag is on in the environment (a disabled flag evaluates to false for
    /// everyone, whatever its strategies).
    pub enabled: bool,
    /// Activation strategies, in evaluation order. An enabled flag with no strategy is on
    /// for everyone.
    #[serde(default)]
    pub strategies: Vec<Strategy>,
    /// Flag-level variants (Unleash's environment variants, deprecated there in favour of
    /// strategy variants; flagd's `variants` for non-boolean flags).
    #[serde(default)]
    pub variants: Vec<Variant>,
}

/// One activation strategy (Unleash's model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// Strategy name, e.g. `flexibleRollout`, `default`, `userWithId`.
    pub name: String,
    /// Parameters (Unleash sends strings: `"rollout": "10"`).
    #[serde(default)]
    pub parameters: BTreeMap<String, Value>,
    /// Constraints, kept as the provider returns them.
    #[serde(default)]
    pub constraints: Vec<Value>,
    /// Strategy variants.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// Segment ids.
    #[serde(default)]
    pub segments: Vec<Value>,
    /// Optional title.
    #[serde(default)]
    pub title: Option<String>,
    /// A disabled strategy is kept but not evaluated.
    #[serde(default)]
    pub disabled: bool,
    /// Evaluation order.
    #[serde(default)]
    pub sort_order: i64,
}

/// A variant with its weight (Unleash: weights out of 1000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    /// Variant name.
    pub name: String,
    /// Weight.
    pub weight: u32,
    /// `variable` (shares what is left) or `fix`.
    #[serde(default = "variable")]
    pub weight_type: String,
    /// Stickiness context field (`default`: userId, then sessionId, then random).
    #[serde(default = "default_stickiness")]
    pub stickiness: String,
    /// Payload served with the variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
}

fn variable() -> String {
    "variable".into()
}
fn default_stickiness() -> String {
    "default".into()
}

impl Variant {
    /// A variant of weight `weight` (out of 1000) without payload.
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        Variant {
            name: name.into(),
            weight,
            weight_type: variable(),
            stickiness: default_stickiness(),
            payload: None,
        }
    }
    /// With a payload.
    pub fn with_payload(mut self, kind: impl Into<String>, value: impl Into<String>) -> Self {
        self.payload = Some(Payload {
            kind: kind.into(),
            value: value.into(),
        });
        self
    }
}

/// A variant's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// `string`, `json`, `csv` or `number`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload, as text.
    pub value: String,
}

impl Strategy {
    /// A `flexibleRollout` strategy serving `percent` % of users, sticky on the default
    /// stickiness, grouped by `group_id` (Unleash uses the flag name).
    pub fn rollout(percent: u32, group_id: &str) -> Self {
        let mut parameters = BTreeMap::new();
        parameters.insert(
            "rollout".into(),
            Value::String(percent.min(100).to_string()),
        );
        parameters.insert("stickiness".into(), Value::String("default".into()));
        parameters.insert("groupId".into(), Value::String(group_id.into()));
        Strategy {
            name: ROLLOUT_STRATEGY.into(),
            parameters,
            ..Default::default()
        }
    }

    /// The rollout percentage of a `flexibleRollout` strategy.
    pub fn rollout_percent(&self) -> Option<u32> {
        if self.name != ROLLOUT_STRATEGY {
            return None;
        }
        match self.parameters.get("rollout")? {
            Value::String(s) => s.trim().parse().ok(),
            Value::Number(n) => n.as_u64().map(|n| n.min(100) as u32),
            _ => None,
        }
    }

    /// The `groupId` parameter, if any.
    pub fn group_id(&self) -> Option<&str> {
        self.parameters.get("groupId").and_then(Value::as_str)
    }

    /// Whether this strategy is exactly what [`Strategy::rollout`] builds (no constraints,
    /// segments, variants or title; enabled; first in order).
    pub fn is_plain_rollout(&self) -> bool {
        self.name == ROLLOUT_STRATEGY
            && self.rollout_percent().is_some()
            && self.constraints.is_empty()
            && self.segments.is_empty()
            && self.variants.is_empty()
            && self.title.is_none()
            && !self.disabled
            && self.sort_order == 0
            && self
                .parameters
                .get("stickiness")
                .is_none_or(|s| s.as_str() == Some("default"))
            && self
                .parameters
                .keys()
                .all(|k| matches!(k.as_str(), "rollout" | "stickiness" | "groupId"))
    }
}

impl FlagState {
    /// An enabled flag `flag` with a single `flexibleRollout` strategy at `percent` %.
    pub fn rollout(flag: &str, percent: u32) -> Self {
        FlagState {
            enabled: true,
            strategies: vec![Strategy::rollout(percent, flag)],
            variants: Vec::new(),
        }
    }

    /// A disabled flag without strategies.
    pub fn off() -> Self {
        FlagState::default()
    }

    /// The rollout percentage of the first enabled `flexibleRollout` strategy.
    pub fn rollout_percent(&self) -> Option<u32> {
        self.strategies
            .iter()
            .filter(|s| !s.disabled)
            .find_map(Strategy::rollout_percent)
    }

    /// This state with its rollout set to `percent` (the first `flexibleRollout` strategy
    /// is changed; one is added, grouped by `flag`, when there is none).
    pub fn with_rollout(mut self, flag: &str, percent: u32) -> Self {
        let percent = percent.min(100);
        match self
            .strategies
            .iter_mut()
            .find(|s| !s.disabled && s.name == ROLLOUT_STRATEGY)
        {
            Some(s) => {
                s.parameters
                    .insert("rollout".into(), Value::String(percent.to_string()));
            }
            None => {
                let mut s = Strategy::rollout(percent, flag);
                s.sort_order = self
                    .strategies
                    .iter()
                    .map(|s| s.sort_order + 1)
                    .max()
                    .unwrap_or(0);
                self.strategies.push(s);
            }
        }
        self.normalized()
    }

    /// The same state with strategies in canonical order (by sort order, then content).
    pub fn normalized(mut self) -> Self {
        self.strategies
            .sort_by_cached_key(|s| (s.sort_order, canonical_json(&to_value(s))));
        self
    }

    /// The canonical JSON encoding (sorted keys, no spaces) of the normalized state.
    pub fn canonical(&self) -> String {
        canonical_json(&to_value(&self.clone().normalized()))
    }

    /// blake3 of [`FlagState::canonical`].
    pub fn digest(&self) -> Digest {
        Digest::of(self.canonical().as_bytes())
    }
}

fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Canonical JSON: object keys sorted at every level, no insignificant whitespace. Used
/// for every digest this crate computes, whatever `serde_json`'s map order is.
///
/// ```
/// let v = serde_json::json!({"b": 1, "a": {"d": [2, 1], "c": null}});
/// assert_eq!(rollback_flags::canonical_json(&v), r#"{"a":{"c":null,"d":[2,1]},"b":1}"#);
/// ```
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The canonical digest of a set of flags: name → state, `None` for a flag that does not
/// exist. This is what snapshots carry and fingerprints compare.
pub fn digest_flags(flags: &BTreeMap<String, Option<FlagState>>) -> Digest {
    let mut h = rollback_core::Hasher::new();
    h.field(b"rollback-flags/v1");
    for (name, state) in flags {
        h.field(name.as_bytes());
        match state {
            None => h.field(b"absent"),
            Some(s) => h.field(s.canonical().as_bytes()),
        };
    }
    h.finish()
}

/// A change to a flag: the fields that are `Some` are set, the rest kept.
///
/// ```
/// use rollback_flags::{FlagChange, FlagState};
/// let before = FlagState::rollout("checkout", 10);
/// let after = FlagChange::new().rollout(50).apply_to("checkout", before);
/// assert_eq!(after.rollout_percent(), Some(50));
/// assert!(FlagChange::kill().apply_to("checkout", after).enabled == false);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FlagChange {
    /// Turn the flag on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Set the rollout percentage (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u32>,
    /// Replace the flag-level variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<Variant>>,
}

impl FlagChange {
    /// A change that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Turn the flag off (a kill switch).
    pub fn kill() -> Self {
        Self::new().enabled(false)
    }
    /// Set enabled.
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = Some(on);
        self
    }
    /// Set the rollout percentage.
    pub fn rollout(mut self, percent: u32) -> Self {
        self.rollout = Some(percent.min(100));
        self
    }
    /// Replace the flag-level variants.
    pub fn variants(mut self, variants: Vec<Variant>) -> Self {
        self.variants = Some(variants);
        self
    }
    /// The state `prior` becomes under this change.
    pub fn apply_to(&self, flag: &str, prior: FlagState) -> FlagState {
        let mut s = prior;
        if let Some(p) = self.rollout {
            s = s.with_rollout(flag, p);
        }
        if let Some(on) = self.enabled {
            s.enabled = on;
        }
        if let Some(v) = &self.variants {
            s.variants = v.clone();
        }
        s.normalized()
    }
    /// One line for reports: `enabled=false rollout=10%`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(on) = self.enabled {
            parts.push(format!("enabled={on}"));
        }
        if let Some(p) = self.rollout {
            parts.push(format!("rollout={p}%"));
        }
        if let Some(v) = &self.variants {
            parts.push(format!("variants={}", v.len()));
        }
        if parts.is_empty() {
            "no change".into()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_is_set_on_the_existing_strategy_and_added_when_missing() {
        let s = FlagState::off().with_rollout("f", 10);
        assert_eq!(s.strategies.len(), 1);
        assert_eq!(s.strategies[0].group_id(), Some("f"));
        let s = s.with_rollout("f", 50);
        assert_eq!(s.strategies.len(), 1);
        assert_eq!(s.rollout_percent(), Some(50));
        assert!(s.strategies[0].is_plain_rollout());
    }

    #[test]
    fn digest_ignores_map_order_and_strategy_listing_order() {
        let mut a = FlagState::off().with_rollout("f", 10);
        let mut extra = Strategy {
            name: "default".into(),
            sort_order: 1,
            ..Default::default()
        };
        a.strategies.push(extra.clone());
        let mut b = a.clone();
        b.strategies.reverse();
        assert_eq!(a.digest(), b.digest());
        extra.disabled = true;
        b.strategies[0] = extra;
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn absent_and_present_flags_digest_differently() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), None);
        let d1 = digest_flags(&m);
        m.insert("a".to_string(), Some(FlagState::off()));
        assert_ne!(d1, digest_flags(&m));
    }
}
