//! [`Condition`]: a comparison a measured value must satisfy.

use rollback_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

/// What a measured value must satisfy to count as a success, e.g. `result < 0.01` for an
/// error rate. A value that is `NaN` satisfies no condition: the probe reports it as
/// inconclusive, never as a success.
///
/// ```
/// use rollback_probes::Condition;
/// let c = Condition::parse("result < 0.01").unwrap();
/// assert!(c.holds(0.002));
/// assert!(!c.holds(0.05));
/// assert!(!c.holds(f64::NAN));
/// assert_eq!(c.to_string(), "result < 0.01");
/// assert!(Condition::parse("result <").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The operator.
    pub op: Op,
    /// The right-hand side.
    pub threshold: f64,
}

impl Condition {
    /// `result < v`.
    pub fn lt(v: f64) -> Self {
        Condition {
            op: Op::Lt,
            threshold: v,
        }
    }
    /// `result <= v`.
    pub fn le(v: f64) -> Self {
        Condition {
            op: Op::Le,
            threshold: v,
        }
    }
    /// `result > v`.
    pub fn gt(v: f64) -> Self {
        Condition {
            op: Op::Gt,
            threshold: v,
        }
    }
    /// `result >= v`.
    pub fn ge(v: f64) -> Self {
        Condition {
            op: Op::Ge,
            threshold: v,
        }
    }
    /// `result == v`.
    pub fn eq(v: f64) -> Self {
        Condition {
            op: Op::Eq,
            threshold: v,
        }
    }
    /// `result != v`.
    pub fn ne(v: f64) -> Self {
        Condition {
            op: Op::Ne,
            threshold: v,
        }
    }

    /// Parse `result <op> <number>` (`result` may be left out), with `<op>` one of
    /// `<`, `<=`, `>`, `>=`, `==`, `!=`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming what is wrong.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        let t = t.strip_prefix("result").map(str::trim_start).unwrap_or(t);
        let (op, rest) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .iter()
        .find_map(|(sym, op)| t.strip_prefix(sym).map(|r| (*op, r.trim())))
        .ok_or_else(|| {
            Error::invalid(format!(
                "condition {s:?}: expected `result <op> <number>` with <op> one of < <= > >= == !="
            ))
        })?;
        let threshold: f64 = rest
            .parse()
            .map_err(|_| Error::invalid(format!("condition {s:?}: {rest:?} is not a number")))?;
        if !threshold.is_finite() {
            return Err(Error::invalid(format!(
                "condition {s:?}: the threshold must be a finite number"
            )));
        }
        Ok(Condition { op, threshold })
    }

    /// Whether `v` satisfies the condition (never for `NaN`).
    pub fn holds(&self, v: f64) -> bool {
        if v.is_nan() {
            return false;
        }
        let t = self.threshold;
        match self.op {
            Op::Lt => v < t,
            Op::Le => v <= t,
            Op::Gt => v > t,
            Op::Ge => v >= t,
            Op::Eq => v == t,
            Op::Ne => v != t,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "result {} {}", self.op.symbol(), self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_operator_and_refuses_the_rest() {
        for (s, v, ok) in [
            ("result < 1", 0.5, true),
            ("result <= 1", 1.0, true),
            ("result > 1", 1.0, false),
            ("result >= 1", 1.0, true),
            ("result == 2", 2.0, true),
            ("result != 2", 2.0, false),
            ("  < 0.5 ", 0.1, true),
            ("result<1e-3", 0.0001, true),
        ] {
            assert_eq!(Condition::parse(s).unwrap().holds(v), ok, "{s} with {v}");
        }
        for bad in [
            "",
            "result",
            "result ~ 1",
            "result < x",
            "result < NaN",
            "result < inf",
        ] {
            assert!(Condition::parse(bad).is_err(), "{bad:?}");
        }
        assert!(!Condition::ne(1.0).holds(f64::NAN));
    }
}
