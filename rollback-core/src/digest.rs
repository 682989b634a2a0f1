//! blake3 digests, printed and serialized as lowercase hex.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A 32-byte blake3 digest.
///
/// Digests identify captured state (a [`Snapshot`](crate::Snapshot)'s content), the
/// current state of a resource (a fingerprint), a [`Plan`](crate::Plan), and chain the
/// records of a journal. They serialize as 64 lowercase hex characters.
///
/// ```
/// use rollback_core::Digest;
/// let d = Digest::of(b"hello");
/// assert_eq!(d.to_hex().len(), 64);
/// assert_eq!(Digest::from_hex(&d.to_hex()).unwrap(), d);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// The digest of a value's canonical JSON encoding (serde_json with sorted map keys
    /// when the value uses `BTreeMap`s, as every type of this crate does).
    pub fn of_json<T: Serialize + ?Sized>(value: &T) -> Self {
        // Serializing our own types to a Vec cannot fail (no non-string map keys).
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        Digest::of(&bytes)
    }

    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// The first 12 hex characters, for logs and reports.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    /// Parse 64 hex characters (either case).
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] when `s` is not 64 hex characters.
    pub fn from_hex(s: &str) -> crate::Result<Self> {
        blake3::Hash::from_hex(s)
            .map(|h| Digest(*h.as_bytes()))
            .map_err(|_| crate::Error::Invalid {
                message: format!("not a 64-character hex digest: {:?}", truncate(s, 80)),
            })
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental blake3 hasher producing a [`Digest`].
#[derive(Default, Clone)]
pub struct Hasher(blake3::Hasher);

impl Hasher {
    /// A new, empty hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(bytes);
        self
    }
    /// Feed a length-prefixed field, so that ("ab","c") and ("a","bc") differ.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }
    /// The digest of everything fed so far.
    pub fn finish(&self) -> Digest {
        Digest(*self.0.finalize().as_bytes())
    }
}

/// In JSON a digest is its lowercase hex string.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Digest {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Digest".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A blake3 digest, as 64 lowercase hex digits.",
            "type": "string",
            "pattern": "^[0-9a-f]{64}$"
        })
    }
}
