//! OVSDB error objects (RFC 7047 §3.1 and §4.1.3).
//!
//! An [`OvsdbError`] is what a transaction operation, a method call or a parse of
//! protocol data fails with.  On the wire it is `{"error": <tag>, "details": <text>}`,
//! exactly as `ovsdb-server` writes it, so clients can match on the tag; the standard
//! tags are the constants in [`tag`].  The server builds them with the constructors
//! below; the client reads them back with [`OvsdbError::from_json`].  Plain data,
//! `Send + Sync`.

use std::borrow::Cow;

use serde_json::{json, Map, Value};

/// The standard error tags of RFC 7047 §4.1.3 and those `ovsdb-server` adds.
pub mod tag {
    /// The request does not follow the RFC 7047 grammar or the schema's types.
    pub const SYNTAX_ERROR: &str = "syntax error";
    /// A value is outside what the schema allows (range, enum, size, index).
    pub const CONSTRAINT_VIOLATION: &str = "constraint violation";
    /// A strong reference to a missing row, or deleting a referenced row.
    pub const REFERENTIAL_INTEGRITY_VIOLATION: &str = "referential integrity violation";
    /// The server ran out of a resource (memory, rows).
    pub const RESOURCES_EXHAUSTED: &str = "resources exhausted";
    /// A storage error on the server.
    pub const IO_ERROR: &str = "I/O error";
    /// Two inserts in one transaction used the same `uuid-name`.
    pub const DUPLICATE_UUID_NAME: &str = "duplicate uuid-name";
    /// Division by zero in a mutation.
    pub const DOMAIN_ERROR: &str = "domain error";
    /// An arithmetic mutation overflowed.
    pub const RANGE_ERROR: &str = "range error";
    /// A `wait` operation timed out.
    pub const TIMED_OUT: &str = "timed out";
    /// The operation is not supported.
    pub const NOT_SUPPORTED: &str = "not supported";
    /// An `abort` operation ran.
    pub const ABORTED: &str = "aborted";
    /// An `assert` named a lock the client does not own.
    pub const NOT_OWNER: &str = "not owner";
    /// The request names a database the server does not have.
    pub const UNKNOWN_DATABASE: &str = "unknown database";
    /// The request names a table the schema does not have.
    pub const UNKNOWN_TABLE: &str = "unknown table";
    /// The request names a column the table does not have.
    pub const UNKNOWN_COLUMN: &str = "unknown column";
    /// A condition or mutation uses an unknown function or mutator.
    pub const UNKNOWN_OPERATOR: &str = "unknown operator";
}

/// An OVSDB error object: a machine-readable tag and an optional sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{tag}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct OvsdbError {
    /// Machine-readable tag such as `"constraint violation"` (see [`tag`]).
    pub tag: Cow<'static, str>,
    /// A sentence for humans, if the error carries one.
    pub details: Option<String>,
}

impl OvsdbError {
    /// Creates an error with a tag and a detail sentence.
    pub fn new(tag: impl Into<Cow<'static, str>>, details: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            details: Some(details.into()),
        }
    }

    /// `syntax error`: the request does not follow RFC 7047 grammar or the schema's types.
    pub fn syntax(details: impl Into<String>) -> Self {
        Self::new(tag::SYNTAX_ERROR, details)
    }

    /// `constraint violation`: a value is outside what the schema allows.
    pub fn constraint(details: impl Into<String>) -> Self {
        Self::new(tag::CONSTRAINT_VIOLATION, details)
    }

    /// `referential integrity violation`.
    pub fn referential(details: impl Into<String>) -> Self {
        Self::new(tag::REFERENTIAL_INTEGRITY_VIOLATION, details)
    }

    /// `unknown table`, `unknown column` and friends.
    pub fn unknown(tag: &'static str, details: impl Into<String>) -> Self {
        Self::new(tag, details)
    }

    /// The details sentence, or `""` when there is none.
    pub fn details(&self) -> &str {
        self.details.as_deref().unwrap_or_default()
    }

    /// The JSON error object sent on the wire (`details` omitted when absent).
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("error".into(), json!(self.tag));
        if let Some(d) = &self.details {
            o.insert("details".into(), json!(d));
        }
        Value::Object(o)
    }

    /// Reads an error as a peer sent it: an error object, a bare tag string (some
    /// servers answer JSON-RPC requests that way), or any other JSON (an object
    /// without a string `error` included), whose text becomes the tag.
    pub fn from_json(v: &Value) -> Self {
        match v {
            Value::String(s) => Self {
                tag: s.clone().into(),
                details: None,
            },
            Value::Object(o) => Self {
                tag: o
                    .get("error")
                    .and_then(Value::as_str)
                    .map_or_else(|| v.to_string(), str::to_owned)
                    .into(),
                details: o.get("details").and_then(Value::as_str).map(str::to_owned),
            },
            other => Self {
                tag: other.to_string().into(),
                details: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_text() {
        let e = OvsdbError::constraint("5 is not in the valid range 0 to 4 (inclusive)");
        assert_eq!(
            e.to_json(),
            json!({"error": "constraint violation",
                   "details": "5 is not in the valid range 0 to 4 (inclusive)"})
        );
        assert_eq!(OvsdbError::from_json(&e.to_json()), e);
        assert_eq!(
            e.to_string(),
            "constraint violation: 5 is not in the valid range 0 to 4 (inclusive)"
        );
        let bare = OvsdbError::from_json(&json!("unknown method"));
        assert_eq!(bare.tag, "unknown method");
        assert_eq!(bare.details, None);
        assert_eq!(bare.to_string(), "unknown method");
        assert_eq!(bare.to_json(), json!({"error": "unknown method"}));
    }
}
