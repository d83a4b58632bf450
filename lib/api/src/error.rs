//! The one error type of the control API.
//!
//! Every failure `sluiced` reports is an [`ApiError`]: a stable
//! [`ErrorCode`] a program can branch on, and a sentence that tells a
//! person what was wrong and what to do. Feature errors inside `sluiced`
//! convert into it at the control boundary (`From` impls there), keeping
//! their text.

use serde::{Deserialize, Serialize};

/// What kind of failure an [`ApiError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request is malformed or names a value that cannot be used
    /// (bad flow text, bad address, wrong number of arguments). Nothing was
    /// changed.
    InvalidArgument,
    /// The request names something that does not exist (a port, a VTEP, a
    /// neighbour). Nothing was changed.
    NotFound,
    /// The feature is not configured in this `sluiced` (no conntrack, no
    /// overlay, no local stack), or is busy; nothing was changed.
    Unavailable,
    /// A limit would be exceeded (table size, request size).
    LimitExceeded,
    /// The request names something new whose name or number is already in
    /// use (a port name, an OpenFlow port number). Nothing was changed.
    AlreadyExists,
    /// The request was valid but applying it failed; the message says why.
    Failed,
    /// The method does not exist in this `sluiced` (older version?).
    UnknownMethod,
}

impl ErrorCode {
    /// The code as written on the wire (`invalid-argument`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::LimitExceeded => "limit-exceeded",
            ErrorCode::AlreadyExists => "already-exists",
            ErrorCode::Failed => "failed",
            ErrorCode::UnknownMethod => "unknown-method",
        }
    }
}

/// A failed control request: a code and a sentence a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// What went wrong and what to do, as a sentence (no trailing newline).
    pub message: String,
}

impl ApiError {
    /// An error of `code` saying `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        while message.ends_with('\n') {
            message.pop();
        }
        ApiError { code, message }
    }

    /// [`ErrorCode::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// [`ErrorCode::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// [`ErrorCode::Failed`].
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Failed, message)
    }

    /// The form carried in a JSON-RPC `error` string of a structured call:
    /// the error as JSON, so that the code survives the unixctl framing
    /// (whose errors are strings).
    pub fn to_wire(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| self.message.clone())
    }

    /// Reads an `error` string of a reply: the JSON form when it is one,
    /// else (a text command, an older `sluiced`, the server's own framing
    /// errors) the text as an [`ErrorCode::Failed`] error, or
    /// [`ErrorCode::UnknownMethod`] for the server's unknown-command reply.
    pub fn from_wire(text: &str) -> Self {
        if let Ok(e) = serde_json::from_str::<ApiError>(text) {
            return e;
        }
        let t = text.trim_end();
        let code = if t.starts_with("\"") && t.contains("is not a valid command") {
            ErrorCode::UnknownMethod
        } else {
            ErrorCode::Failed
        };
        ApiError::new(code, t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_the_code() {
        let e = ApiError::not_found("no port named 'x'");
        assert_eq!(ApiError::from_wire(&e.to_wire()), e);
        assert_eq!(
            e.to_wire(),
            r#"{"code":"not-found","message":"no port named 'x'"}"#
        );
    }

    #[test]
    fn plain_text_errors_are_failed_and_trimmed() {
        let e = ApiError::from_wire("bad flow\n");
        assert_eq!(e.code, ErrorCode::Failed);
        assert_eq!(e.message, "bad flow");
        let e = ApiError::from_wire("\"nope\" is not a valid command\n");
        assert_eq!(e.code, ErrorCode::UnknownMethod);
    }

    #[test]
    fn new_strips_trailing_newlines() {
        assert_eq!(ApiError::invalid("x\n\n").message, "x");
    }
}
