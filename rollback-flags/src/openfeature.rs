//! The OpenFeature bridge: an [`open_feature::provider::FeatureProvider`] that evaluates
//! the flags of any [`FlagProvider`], so an application sees the same flags a migration
//! controls.

use crate::{FlagProvider, FlagState, Strategy, Variant, ROLLOUT_STRATEGY};
use async_trait::async_trait;
use open_feature::provider::{FeatureProvider, ProviderMetadata, ResolutionDetails};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationReason, EvaluationResult,
    StructValue,
};
use std::io::Cursor;
use std::sync::Arc;

/// Unleash's seed for variant bucketing.
const VARIANT_SEED: u32 = 86_028_157;

/// Unleash's normalized bucket (1..=`normalizer`) of `id` in `group`: murmur3 (x86, 32
/// bit) of `"<group>:<id>"`, so a user falls in the same bucket here as in Unleash SDKs.
///
/// ```
/// let b = rollback_flags::bucket("checkout", "user-42", 100, 0);
/// assert!((1..=100).contains(&b));
/// assert_eq!(b, rollback_flags::bucket("checkout", "user-42", 100, 0));
/// ```
pub fn bucket(group: &str, id: &str, normalizer: u32, seed: u32) -> u32 {
    let key = format!("{group}:{id}");
    let h = murmur3::murmur3_32(&mut Cursor::new(key.as_bytes()), seed).unwrap_or(0);
    h % normalizer.max(1) + 1
}

/// The outcome of evaluating a boolean flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoolEvaluation {
    /// The value.
    pub value: bool,
    /// Why (`disabled`, `static`, `split`, `default`).
    pub reason: &'static str,
    /// The strategy that matched, if any.
    pub strategy: Option<String>,
}

/// Evaluate a flag as a boolean for `targeting_key`, honouring `enabled` and rollout
/// percentages (Unleash's bucketing: a key is in a `P` % rollout when its bucket of
/// 1..=100 in the strategy's `groupId` is at most `P`). Strategies this bridge cannot
/// decide (constraints, custom strategy names) do not match.
///
/// # Errors
/// [`EvaluationErrorCode::TargetingKeyMissing`] when only a partial rollout could decide
/// and no targeting key was given.
///
/// ```
/// use rollback_flags::{evaluate_bool, FlagState};
/// let s = FlagState::rollout("checkout", 10);
/// let on = (0..1000).filter(|i| evaluate_bool("checkout", &s, Some(&format!("u{i}"))).unwrap().value).count();
/// assert!((60..140).contains(&on), "{on} of 1000 users in a 10% rollout");
/// ```
pub fn evaluate_bool(
    flag: &str,
    state: &FlagState,
    targeting_key: Option<&str>,
) -> Result<BoolEvaluation, EvaluationError> {
    if !state.enabled {
        return Ok(BoolEvaluation {
            value: false,
            reason: "disabled",
            strategy: None,
        });
    }
    if state.strategies.is_empty() {
        return Ok(BoolEvaluation {
            value: true,
            reason: "static",
            strategy: None,
        });
    }
    let mut missing_key = false;
    for s in state.strategies.iter().filter(|s| !s.disabled) {
        if !s.constraints.is_empty() || !s.segments.is_empty() {
            continue;
        }
        let matched = match s.name.as_str() {
            "default" => true,
            ROLLOUT_STRATEGY => match (s.rollout_percent(), targeting_key) {
                (None, _) | (Some(0), _) => false,
                (Some(p), _) if p >= 100 => true,
                (Some(p), Some(key)) => bucket(s.group_id().unwrap_or(flag), key, 100, 0) <= p,
                (Some(_), None) => {
                    missing_key = true;
                    false
                }
            },
            _ => false,
        };
        if matched {
            return Ok(BoolEvaluation {
                value: true,
                reason: "split",
                strategy: Some(s.name.clone()),
            });
        }
    }
    if missing_key {
        return Err(EvaluationError::builder()
            .code(EvaluationErrorCode::TargetingKeyMissing)
            .message(format!(
                "flag {flag} is a partial rollout: give a targeting key"
            ))
            .build());
    }
    Ok(BoolEvaluation {
        value: false,
        reason: "default",
        strategy: None,
    })
}

/// The variant served to `targeting_key`: of the first matching strategy's variants, else
/// of the flag's variants (weights out of their total, Unleash's variant bucketing).
pub fn select_variant<'a>(
    flag: &str,
    state: &'a FlagState,
    matched: Option<&'a Strategy>,
    targeting_key: Option<&str>,
) -> Option<&'a Variant> {
    let (variants, group) = match matched {
        Some(s) if !s.variants.is_empty() => (&s.variants, s.group_id().unwrap_or(flag)),
        _ => (&state.variants, flag),
    };
    let total: u32 = variants.iter().map(|v| v.weight).sum();
    if variants.is_empty() || total == 0 {
        return None;
    }
    let key = targeting_key.unwrap_or("");
    let target = bucket(group, key, total, VARIANT_SEED);
    let mut acc = 0;
    variants.iter().find(|v| {
        acc += v.weight;
        v.weight > 0 && target <= acc
    })
}

/// An OpenFeature provider over any [`FlagProvider`]: boolean evaluation honours enabled
/// and rollout percentage by a stable hash of the targeting key (see
/// [`evaluate_bool`]); string evaluation serves the selected variant's payload (or
/// name). Every evaluation reads the provider, so the application sees a migration's
/// change — or its rollback — at once.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use open_feature::{EvaluationContext, provider::FeatureProvider};
/// use rollback_flags::{FlagProvider, FlagState, MemoryProvider, OpenFeatureBridge};
/// let flags = MemoryProvider::new("sim");
/// flags.put("checkout", &FlagState::rollout("checkout", 100)).await.unwrap();
/// let bridge = OpenFeatureBridge::new(Arc::new(flags));
/// let ctx = EvaluationContext::default().with_targeting_key("user-1");
/// assert!(bridge.resolve_bool_value("checkout", &ctx).await.unwrap().value);
/// # });
/// ```
#[derive(Debug)]
pub struct OpenFeatureBridge {
    provider: Arc<dyn FlagProvider>,
    metadata: ProviderMetadata,
}

impl OpenFeatureBridge {
    /// A bridge to `provider`.
    pub fn new(provider: Arc<dyn FlagProvider>) -> Self {
        let metadata = ProviderMetadata::new(format!("rollback-flags:{}", provider.kind()));
        OpenFeatureBridge { provider, metadata }
    }

    async fn state(&self, flag: &str) -> EvaluationResult<FlagState> {
        match self.provider.get(flag).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(EvaluationError::builder()
                .code(EvaluationErrorCode::FlagNotFound)
                .message(format!("no flag {flag}"))
                .build()),
            Err(e) => Err(EvaluationError::builder()
                .code(EvaluationErrorCode::General("PROVIDER_ERROR".into()))
                .message(e.to_string())
                .build()),
        }
    }
}

fn type_mismatch(flag: &str, t: &str) -> EvaluationError {
    EvaluationError::builder()
        .code(EvaluationErrorCode::TypeMismatch)
        .message(format!(
            "flag {flag} is not evaluated as {t} by this bridge"
        ))
        .build()
}

fn reason(r: &str) -> EvaluationReason {
    match r {
        "disabled" => EvaluationReason::Disabled,
        "static" => EvaluationReason::Static,
        "split" => EvaluationReason::Split,
        _ => EvaluationReason::Default,
    }
}

#[async_trait]
impl FeatureProvider for OpenFeatureBridge {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        let state = self.state(flag_key).await?;
        let e = evaluate_bool(flag_key, &state, ctx.targeting_key.as_deref())?;
        Ok(ResolutionDetails {
            value: e.value,
            variant: Some(if e.value { "on" } else { "off" }.to_string()),
            reason: Some(reason(e.reason)),
            flag_metadata: None,
        })
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        let state = self.state(flag_key).await?;
        let key = ctx.targeting_key.as_deref();
        let e = evaluate_bool(flag_key, &state, key)?;
        if !e.value {
            return Err(EvaluationError::builder()
                .code(EvaluationErrorCode::General("DISABLED".into()))
                .message(format!("flag {flag_key} is off for this context"))
                .build());
        }
        let matched = state
            .strategies
            .iter()
            .find(|s| !s.disabled && Some(&s.name) == e.strategy.as_ref());
        let v = select_variant(flag_key, &state, matched, key)
            .ok_or_else(|| type_mismatch(flag_key, "a string (it has no variants)"))?;
        Ok(ResolutionDetails {
            value: v
                .payload
                .as_ref()
                .map(|p| p.value.clone())
                .unwrap_or_else(|| v.name.clone()),
            variant: Some(v.name.clone()),
            reason: Some(EvaluationReason::Split),
            flag_metadata: None,
        })
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        _ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        Err(type_mismatch(flag_key, "an integer"))
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        _ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        Err(type_mismatch(flag_key, "a float"))
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        _ctx: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        Err(type_mismatch(flag_key, "a struct"))
    }
}
