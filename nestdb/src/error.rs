//! OVSDB error objects (RFC 7047 §3.1 and §4.1.3).
//!
//! An [`OvsdbError`] is what a transaction operation or a method call fails with; it is
//! serialised as `{"error": <tag>, "details": <text>}` exactly as ovsdb-server does, so
//! clients can match on the tag.  Plain data, thread-safe.

use serde_json::{json, Value};

/// An error reported to a client as an OVSDB error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{tag}: {details}")]
pub struct OvsdbError {
    /// Machine-readable tag such as `"constraint violation"`.
    pub tag: &'static str,
    /// A sentence for humans.
    pub details: String,
}

impl OvsdbError {
    /// Creates an error with a tag and a detail sentence.
    pub fn new(tag: &'static str, details: impl Into<String>) -> Self {
        Self {
            tag,
            details: details.into(),
        }
    }

    /// `syntax error`: the request does not follow RFC 7047 grammar or the schema's types.
    pub fn syntax(details: impl Into<String>) -> Self {
        Self::new("syntax error", details)
    }

    /// `constraint violation`: a value is outside what the schema allows.
    pub fn constraint(details: impl Into<String>) -> Self {
        Self::new("constraint violation", details)
    }

    /// `referential integrity violation`.
    pub fn referential(details: impl Into<String>) -> Self {
        Self::new("referential integrity violation", details)
    }

    /// `unknown table`, `unknown column` and friends.
    pub fn unknown(tag: &'static str, details: impl Into<String>) -> Self {
        Self::new(tag, details)
    }

    /// The JSON error object sent on the wire.
    pub fn to_json(&self) -> Value {
        json!({"error": self.tag, "details": self.details})
    }
}
