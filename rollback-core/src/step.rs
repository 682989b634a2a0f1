//! The [`Step`] trait: one change, with its undo.

use crate::{Context, Result};
use async_trait::async_trait;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// How a step can be undone.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reversibility {
    /// The step's own [`Step::revert`] undoes it (a compensation).
    Compensable,
    /// Only restoring a checkpoint of what it touches undoes it (e.g. a `DROP COLUMN`).
    RestoreOnly,
    /// Nothing undoes it (an email sent, a key destroyed). Needs explicit approval.
    Irreversible,
}

impl std::fmt::Display for Reversibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reversibility::Compensable => "compensable",
            Reversibility::RestoreOnly => "restore-only",
            Reversibility::Irreversible => "irreversible",
        })
    }
}

/// One thing a step changes, precisely enough for a plan to tell which compensation
/// already undoes which effect (see [`Step::effects`]).
///
/// A `part` names something inside a resource — a column of a table, a key prefix of a
/// bucket — in the adapter's own terms; `None` means the whole resource.
///
/// ```
/// use rollback_core::Effect;
/// let add = Effect::creates("postgres:shop/public.customers", Some("tier"));
/// let fill = Effect::writes("postgres:shop/public.customers", Some("tier"));
/// let other = Effect::writes("postgres:shop/public.customers", Some("name"));
/// assert!(fill.is_within(&add)); // dropping the column removes what the backfill wrote
/// assert!(!other.is_within(&add));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Creates `part` of `resource` (a column, an index), or the whole resource when `part`
    /// is `None` (a table the step creates). The step's own revert removes it entirely,
    /// with everything any step wrote into it.
    Creates {
        /// The resource (as [`Checkpoint::resource`](crate::Checkpoint::resource)).
        resource: String,
        /// What inside it; `None`: all of it.
        part: Option<String>,
    },
    /// Writes data in `part` of `resource` (`None`: anywhere in it).
    Writes {
        /// The resource.
        resource: String,
        /// What inside it; `None`: anywhere.
        part: Option<String>,
    },
}

impl Effect {
    /// An [`Effect::Creates`].
    pub fn creates(resource: impl Into<String>, part: Option<&str>) -> Self {
        Effect::Creates {
            resource: resource.into(),
            part: part.map(str::to_string),
        }
    }
    /// An [`Effect::Writes`].
    pub fn writes(resource: impl Into<String>, part: Option<&str>) -> Self {
        Effect::Writes {
            resource: resource.into(),
            part: part.map(str::to_string),
        }
    }
    /// The resource.
    pub fn resource(&self) -> &str {
        match self {
            Effect::Creates { resource, .. } | Effect::Writes { resource, .. } => resource,
        }
    }
    /// What inside the resource (`None`: all of it).
    pub fn part(&self) -> Option<&str> {
        match self {
            Effect::Creates { part, .. } | Effect::Writes { part, .. } => part.as_deref(),
        }
    }
    /// Whether removing what `creator` creates removes this effect too: `creator` creates
    /// the whole resource, or exactly the part this effect is confined to.
    pub fn is_within(&self, creator: &Effect) -> bool {
        let Effect::Creates { resource, part } = creator else {
            return false;
        };
        self.resource() == resource
            && match part {
                None => true,
                Some(p) => self.part() == Some(p.as_str()),
            }
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (verb, r, p) = match self {
            Effect::Creates { resource, part } => ("creates", resource, part),
            Effect::Writes { resource, part } => ("writes", resource, part),
        };
        match p {
            Some(p) => write!(f, "{verb} {p} of {r}"),
            None => write!(f, "{verb} {r}"),
        }
    }
}

/// Everything needed to undo an applied step; journaled before the executor moves on.
///
/// ```
/// use rollback_core::Receipt;
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Prev { value: Option<String> }
/// let r = Receipt::new(&Prev { value: None });
/// assert_eq!(r.parse::<Prev>().unwrap(), Prev { value: None });
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Receipt(pub serde_json::Value);

impl Receipt {
    /// A receipt holding `value`.
    pub fn new<T: Serialize>(value: &T) -> Self {
        Receipt(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }
    /// An empty receipt (nothing to remember).
    pub fn empty() -> Self {
        Receipt(serde_json::Value::Null)
    }
    /// Decode the receipt.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] when it does not decode as `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.0.clone())
            .map_err(|e| crate::Error::invalid(format!("malformed receipt: {e}")))
    }
}

/// One change to one or more resources.
///
/// # Contract
/// An implementation promises:
/// 1. **Stable identity.** [`id`](Step::id) and [`spec`](Step::spec) are the same in
///    every process that builds the same plan (they enter the plan digest).
/// 2. **Honest reversibility.** [`reversibility`](Step::reversibility) is never more
///    optimistic than the truth, and [`touches`](Step::touches) lists every resource the
///    step may change, so the plan can demand a covering checkpoint.
/// 3. **Idempotent apply.** Applying again after a successful or interrupted apply gives
///    the same state and an equivalent receipt; it never applies the change twice.
/// 4. **Idempotent revert.** Reverting again after a successful or interrupted revert
///    succeeds and gives the same state; reverting a step that never took effect is a
///    no-op.
/// 5. **Revert without receipt.** `revert(None, ..)` (the apply's outcome is unknown: a
///    crash or timeout) undoes whatever part of the apply may have happened.
/// 6. **Uncertainty is reported.** An error from `apply` after which the change may have
///    happened says so ([`Error::maybe_applied`](crate::Error::maybe_applied)).
/// 7. **Restore-only steps** may return `Ok(())` from `revert` without doing anything; the
///    covering checkpoint undoes them. **Irreversible steps** return
///    [`Error::Irreversible`](crate::Error::Irreversible) from `revert`.
/// 8. **Honest effects.** [`effects`](Step::effects) covers everything the step may
///    change; an [`Effect::Creates`] is removed entirely (with whatever was written into
///    it) by this step's own `revert`, so the plan relies on it to undo later steps.
/// 9. **Fenced writes** (where the backend can check them atomically with the write): a
///    change made under [`Context::fence`] is refused with
///    [`Error::Fenced`](crate::Error::Fenced) when a newer epoch of the same key already
///    wrote, and every apply or revert raises the key's epoch — even one that has nothing
///    to do — so a paused older runner cannot act after it. Checked by
///    `conformance::step_writes_are_fenced`.
#[async_trait]
pub trait Step: Send + Sync {
    /// Stable id, unique in its plan.
    fn id(&self) -> &str;

    /// How the step can be undone.
    fn reversibility(&self) -> Reversibility;

    /// Resource ids (as [`Checkpoint::resource`](crate::Checkpoint::resource)) this step
    /// may change.
    fn touches(&self) -> Vec<String> {
        Vec::new()
    }

    /// What the step changes (contract clause 8). By default it writes anywhere in each
    /// resource of [`touches`](Step::touches). A step that adds a column or creates a table
    /// says so ([`Effect::Creates`]), and one that writes only some columns says which:
    /// then a plan sees that the revert of an earlier step already undoes a restore-only
    /// step (a backfill of a column that an earlier step adds and its revert drops) and
    /// needs no restore for it — a restore would discard the application's writes.
    fn effects(&self) -> Vec<Effect> {
        self.touches()
            .into_iter()
            .map(|r| Effect::writes(r, None))
            .collect()
    }

    /// The declared specification (SQL text, object layout, flag state), hashed into the
    /// plan digest so a resumed run is checked to be the same plan.
    fn spec(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// One line for dry runs and reports.
    fn describe(&self) -> String {
        self.id().to_string()
    }

    /// Make the change.
    ///
    /// # Errors
    /// Any; say whether the change may have happened (contract clause 6).
    ///
    /// # Cancel safety
    /// Dropping the future may leave the change partly made; the executor then treats the
    /// step as applied with no receipt and reverts it (clause 5).
    async fn apply(&self, ctx: &Context) -> Result<Receipt>;

    /// Undo the change described by `receipt` (`None`: the outcome of apply is unknown).
    ///
    /// # Errors
    /// Any; the executor retries transient ones and falls back to a covering checkpoint.
    async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()>;
}

/// A shared or boxed step is a step: every method forwards (a wrapper that forgot one
/// would silently fall back to its default).
macro_rules! forward_step {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: Step + ?Sized> Step for $ptr {
            fn id(&self) -> &str {
                (**self).id()
            }
            fn reversibility(&self) -> Reversibility {
                (**self).reversibility()
            }
            fn touches(&self) -> Vec<String> {
                (**self).touches()
            }
            fn effects(&self) -> Vec<Effect> {
                (**self).effects()
            }
            fn spec(&self) -> serde_json::Value {
                (**self).spec()
            }
            fn describe(&self) -> String {
                (**self).describe()
            }
            async fn apply(&self, ctx: &Context) -> Result<Receipt> {
                (**self).apply(ctx).await
            }
            async fn revert(&self, receipt: Option<&Receipt>, ctx: &Context) -> Result<()> {
                (**self).revert(receipt, ctx).await
            }
        }
    )*};
}
forward_step!(std::sync::Arc<T>, Box<T>);
