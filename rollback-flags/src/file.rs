//! The file provider: flags in a JSON file in flagd's flag-definition format, written
//! atomically.

use crate::model::canonical_json;
use crate::provider::check_flag_name;
use crate::{FlagProvider, FlagState, Payload, Strategy, Variant};
use async_trait::async_trait;
use rollback_core::{Error, Result};
use serde_json::{json, Map, Value};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SCHEMA: &str = "https://flagd.dev/schema/v0/flags.json";

/// Flags in a JSON file in [flagd's flag-definition format](https://flagd.dev/reference/flag-definitions/),
/// the embedded default provider.
///
/// The mapping, both ways:
/// - `enabled` ↔ `"state": "ENABLED" | "DISABLED"`.
/// - A boolean flag has `"variants": {"on": true, "off": false}`. With no strategy it
///   serves `"defaultVariant": "on"`. A percentage rollout (one plain `flexibleRollout`
///   strategy grouped by the flag's name) is flagd's documented
///   [`fractional`](https://flagd.dev/reference/custom-operations/fractional-operation/)
///   targeting: `"targeting": {"fractional": [["on", P], ["off", 100 - P]]}` with
///   `"defaultVariant": "off"` — P % of targeting keys get `on`, bucketed by flag key and
///   targeting key as flagd does.
/// - A flag with variants (no strategy) lists them as flagd variants (payload → value:
///   a string, a number, or the parsed JSON; no payload → the variant's name), the first
///   is `defaultVariant`, and their weights are a `fractional` over the names.
///
/// Other targeting is refused on read, and `put` refuses ([`Error::Invalid`]) a state this
/// format cannot give back exactly (other strategies, constraints, CSV payloads…): the
/// file provider holds what flagd can evaluate. Other top-level keys of the file
/// (`$evaluators`, `metadata`) are kept.
///
/// Writes are atomic: the new file is written to a temporary file beside it, fsynced,
/// renamed over the old one, and the directory fsynced. Writers in one process are
/// serialized; several processes writing the same file are not coordinated.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use rollback_flags::{FileProvider, FlagProvider, FlagState};
/// let dir = tempfile::tempdir().unwrap();
/// let file = FileProvider::new(dir.path().join("flags.json"));
/// file.put("new-checkout", &FlagState::rollout("new-checkout", 10)).await?;
/// let text = std::fs::read_to_string(dir.path().join("flags.json")).unwrap();
/// assert!(text.contains("fractional"));
/// # Ok::<(), rollback_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct FileProvider {
    path: PathBuf,
    scope: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for FileProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileProvider")
            .field("path", &self.path)
            .field("scope", &self.scope)
            .finish()
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    let transient = matches!(
        e.kind(),
        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
    );
    let msg = format!("flag file {}: {what}: {e}", path.display());
    if transient {
        Error::transient(msg, false)
    } else {
        Error::backend_not_applied("flags-file", msg)
    }
}

impl FileProvider {
    /// The flags in `path` (a missing file holds no flags; the first write creates it).
    /// The scope (in resource ids) is the path as given.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        FileProvider {
            scope: path.display().to_string(),
            path,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Name the scope (`flags:file:<scope>`) instead of using the path, so that resource
    /// ids do not depend on where the file is.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn load(&self) -> Result<Map<String, Value>> {
        let path = self.path.clone();
        let text = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(e) => return Err(io_err("read", &path, e)),
        };
        match serde_json::from_slice::<Value>(&text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(Error::invalid(format!(
                "flag file {}: not a JSON object",
                path.display()
            ))),
            Err(e) => Err(Error::invalid(format!(
                "flag file {}: malformed JSON: {e}",
                path.display()
            ))),
        }
    }

    fn flags_of(doc: &Map<String, Value>) -> Map<String, Value> {
        doc.get("flags")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    async fn store(&self, mut doc: Map<String, Value>, flags: Map<String, Value>) -> Result<()> {
        doc.entry("$schema")
            .or_insert_with(|| Value::String(SCHEMA.into()));
        doc.insert("flags".into(), Value::Object(flags));
        let bytes = serde_json::to_vec_pretty(&Value::Object(doc))
            .map_err(|e| Error::invalid(format!("flag file does not serialize: {e}")))?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| Error::backend("flags-file", format!("writer task failed: {e}")))?
    }
}

/// Write temp + fsync + rename + fsync(dir).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err("create directory", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "flags.json".into());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io_err("create temp", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| io_err("write temp", &tmp, e))?;
        f.sync_all().map_err(|e| io_err("fsync temp", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err("rename", path, e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            d.sync_all()
                .map_err(|e| io_err("fsync directory", dir, e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn boolean_variants() -> Value {
    json!({"on": true, "off": false})
}

/// The flagd definition of `state`.
fn encode(flag: &str, state: &FlagState) -> Result<Value> {
    let refuse = |why: &str| {
        Err(Error::invalid(format!(
            "the flagd file format cannot hold flag {flag} as given: {why}"
        )))
    };
    let mut def = Map::new();
    def.insert(
        "state".into(),
        Value::String(if state.enabled { "ENABLED" } else { "DISABLED" }.into()),
    );
    if state.variants.is_empty() {
        def.insert("variants".into(), boolean_variants());
        match state.strategies.as_slice() {
            [] => {
                def.insert("defaultVariant".into(), json!("on"));
            }
            [s] if s.is_plain_rollout() && s.group_id() == Some(flag) => {
                let p = s.rollout_percent().unwrap_or(0);
                def.insert("defaultVariant".into(), json!("off"));
                def.insert(
                    "targeting".into(),
                    json!({"fractional": [["on", p], ["off", 100 - p]]}),
                );
            }
            _ => return refuse("only one plain flexibleRollout strategy grouped by the flag name (a percentage rollout) is supported"),
        }
    } else {
        if !state.strategies.is_empty() {
            return refuse("a flag with variants cannot also have strategies");
        }
        let mut values = Map::new();
        let mut split = Vec::new();
        for v in &state.variants {
            if v.weight_type != "variable" || v.stickiness != "default" {
                return refuse("variants must have weightType variable and default stickiness");
            }
            let value = match &v.payload {
                None => Value::String(v.name.clone()),
                Some(p) => match p.kind.as_str() {
                    "string" => Value::String(p.value.clone()),
                    "number" => match serde_json::from_str::<Value>(&p.value) {
                        Ok(n @ Value::Number(_)) => n,
                        _ => return refuse("a number payload that is not a number"),
                    },
                    "json" => match serde_json::from_str::<Value>(&p.value) {
                        Ok(j) => j,
                        Err(_) => return refuse("a json payload that is not JSON"),
                    },
                    _ => return refuse("payloads must be string, number or json"),
                },
            };
            if values.insert(v.name.clone(), value).is_some() {
                return refuse("two variants share a name");
            }
            split.push(json!([v.name, v.weight]));
        }
        def.insert("variants".into(), Value::Object(values));
        def.insert(
            "defaultVariant".into(),
            Value::String(state.variants[0].name.clone()),
        );
        def.insert("targeting".into(), json!({ "fractional": split }));
    }
    Ok(Value::Object(def))
}

/// The state a flagd definition describes.
fn decode(flag: &str, def: &Value) -> Result<FlagState> {
    let bad = |why: String| Error::invalid(format!("flag file: flag {flag}: {why}"));
    let enabled = match def.get("state").and_then(Value::as_str) {
        Some("ENABLED") => true,
        Some("DISABLED") => false,
        other => {
            return Err(bad(format!(
                "state must be ENABLED or DISABLED, found {other:?}"
            )))
        }
    };
    let variants = def
        .get("variants")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no variants".into()))?;
    let default = def
        .get("defaultVariant")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no defaultVariant".into()))?;
    if !variants.contains_key(default) {
        return Err(bad(format!("defaultVariant {default:?} is not a variant")));
    }
    // The fractional split, if any: (variant, weight) in order.
    let split: Option<Vec<(String, u32)>> = match def.get("targeting") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) if t.is_empty() => None,
        Some(Value::Object(t)) if t.len() == 1 && t.contains_key("fractional") => {
            let items = t["fractional"]
                .as_array()
                .ok_or_else(|| bad("fractional must be an array".into()))?;
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_array().map(Vec::as_slice) {
                    Some([Value::String(v), w]) => {
                        let w = w
                            .as_u64()
                            .ok_or_else(|| bad("fractional weights must be integers".into()))?;
                        if !variants.contains_key(v) {
                            return Err(bad(format!("fractional names unknown variant {v:?}")));
                        }
                        out.push((v.clone(), w as u32));
                    }
                    // flagd allows a bucketing expression first.
                    _ if i == 0 && item.is_object() => {}
                    _ => return Err(bad("fractional entries must be [variant, weight]".into())),
                }
            }
            Some(out)
        }
        Some(_) => {
            return Err(bad(
                "targeting other than a single `fractional` is not supported by this provider"
                    .into(),
            ))
        }
    };
    let boolean = Value::Object(variants.clone()) == boolean_variants();
    if boolean {
        let strategies = match split {
            None if default == "on" => Vec::new(),
            None => vec![Strategy::rollout(0, flag)],
            Some(split) => {
                let weight = |name: &str| -> u64 {
                    split
                        .iter()
                        .filter(|(v, _)| v == name)
                        .map(|(_, w)| *w as u64)
                        .sum()
                };
                let (on, total) = (weight("on"), weight("on") + weight("off"));
                let p = (on * 100 + total / 2).checked_div(total).unwrap_or(0) as u32;
                vec![Strategy::rollout(p, flag)]
            }
        };
        return Ok(FlagState {
            enabled,
            strategies,
            variants: Vec::new(),
        }
        .normalized());
    }
    let order: Vec<(String, u32)> = match split {
        Some(s) => {
            let mut s = s;
            for name in variants.keys() {
                if !s.iter().any(|(v, _)| v == name) {
                    s.push((name.clone(), 0));
                }
            }
            s
        }
        None => {
            let mut names: Vec<String> = variants.keys().cloned().collect();
            names.sort();
            names.retain(|n| n != default);
            let mut s = vec![(default.to_string(), 1000)];
            s.extend(names.into_iter().map(|n| (n, 0)));
            s
        }
    };
    let variants = order
        .into_iter()
        .map(|(name, weight)| {
            let payload = match &variants[&name] {
                Value::String(s) if *s == name => None,
                Value::String(s) => Some(Payload {
                    kind: "string".into(),
                    value: s.clone(),
                }),
                Value::Number(n) => Some(Payload {
                    kind: "number".into(),
                    value: n.to_string(),
                }),
                other => Some(Payload {
                    kind: "json".into(),
                    value: canonical_json(other),
                }),
            };
            Variant {
                payload,
                ..Variant::new(name, weight)
            }
        })
        .collect();
    Ok(FlagState {
        enabled,
        strategies: Vec::new(),
        variants,
    })
}

#[async_trait]
impl FlagProvider for FileProvider {
    fn kind(&self) -> &str {
        "file"
    }
    fn scope(&self) -> &str {
        &self.scope
    }
    async fn list(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = Self::flags_of(&self.load().await?)
            .keys()
            .cloned()
            .collect();
        names.sort();
        Ok(names)
    }
    async fn get(&self, flag: &str) -> Result<Option<FlagState>> {
        match Self::flags_of(&self.load().await?).get(flag) {
            None => Ok(None),
            Some(def) => decode(flag, def).map(Some),
        }
    }
    async fn put(&self, flag: &str, state: &FlagState) -> Result<()> {
        check_flag_name(flag)?;
        let state = state.clone().normalized();
        let def = encode(flag, &state)?;
        if decode(flag, &def)? != state {
            return Err(Error::invalid(format!(
                "the flagd file format cannot hold flag {flag} exactly as given (it would read back differently)"
            )));
        }
        let _guard = self.lock.lock().await;
        let doc = self.load().await?;
        let mut flags = Self::flags_of(&doc);
        if flags.get(flag) == Some(&def) {
            return Ok(());
        }
        flags.insert(flag.to_string(), def);
        self.store(doc, flags).await
    }
    async fn delete(&self, flag: &str) -> Result<()> {
        let _guard = self.lock.lock().await;
        let doc = self.load().await?;
        let mut flags = Self::flags_of(&doc);
        if flags.remove(flag).is_none() {
            return Ok(());
        }
        self.store(doc, flags).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_round_trips_through_fractional_targeting() {
        let s = FlagState::rollout("f", 10);
        let def = encode("f", &s).unwrap();
        assert_eq!(
            def["targeting"]["fractional"],
            json!([["on", 10], ["off", 90]])
        );
        assert_eq!(decode("f", &def).unwrap(), s);
    }

    #[test]
    fn hand_written_flagd_definitions_decode() {
        let def = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]}, ["off", 3], ["on", 1]]}});
        assert_eq!(decode("f", &def).unwrap().rollout_percent(), Some(25));
        let def = json!({"state": "DISABLED", "variants": {"red": "#f00", "blue": {"hex": "00f"}}, "defaultVariant": "red"});
        let s = decode("f", &def).unwrap();
        assert_eq!(s.variants[0].name, "red");
        assert_eq!(s.variants[0].weight, 1000);
        assert_eq!(s.variants[1].payload.as_ref().unwrap().kind, "json");
    }

    #[test]
    fn states_the_format_cannot_hold_are_refused() {
        let mut s = FlagState::rollout("f", 10);
        s.strategies[0]
            .constraints
            .push(json!({"contextName": "userId"}));
        assert!(matches!(encode("f", &s), Err(Error::Invalid { .. })));
        let def = json!({"state": "ENABLED", "variants": {"on": true, "off": false},
            "defaultVariant": "on", "targeting": {"if": [true, "on", "off"]}});
        assert!(matches!(decode("f", &def), Err(Error::Invalid { .. })));
    }
}
