//! [`Secret`]: a credential that never reaches a log.

use std::fmt;

/// A credential (a password, an API token, a secret key): its `Debug` and `Display`
/// never show it, so a struct holding one can derive `Debug` and be logged safely. Every
/// adapter of this workspace holds its credentials in one.
///
/// ```
/// use rollback_core::Secret;
/// let s = Secret::new("*:*.very-secret");
/// assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
/// assert_eq!(s.expose(), "*:*.very-secret");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a credential.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The credential itself: hand it to the backend only, never to a log or an error.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
