//! RFC 7807 problem details as QUBS returns them, and the client's error type.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `type` URN prefix QUBS uses for every problem.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:qubs:integrations:";

/// An `application/problem+json` body. Every member is optional: a tolerant reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type", default)]
    pub problem_type: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(rename = "requestId", default)]
    pub request_id: Option<String>,
}

/// The problem types QUBS documents, from the `type` URN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    TooManyRequests,
    ServerError,
    /// A `type` outside the documented list (or none).
    Other,
}

impl Problem {
    /// The documented kind named by `type`.
    pub fn kind(&self) -> ProblemKind {
        let suffix = self
            .problem_type
            .as_deref()
            .and_then(|t| t.strip_prefix(PROBLEM_TYPE_PREFIX));
        match suffix {
            Some("bad-request") => ProblemKind::BadRequest,
            Some("unauthorized") => ProblemKind::Unauthorized,
            Some("forbidden") => ProblemKind::Forbidden,
            Some("not-found") => ProblemKind::NotFound,
            Some("conflict") => ProblemKind::Conflict,
            Some("too-many-requests") => ProblemKind::TooManyRequests,
            Some("server-error") => ProblemKind::ServerError,
            _ => ProblemKind::Other,
        }
    }
}

/// What went wrong in one QUBS call (after any retries).
#[derive(Debug, Clone)]
pub enum ErrorKind {
    /// QUBS answered with an RFC 7807 problem.
    Problem {
        status: StatusCode,
        problem: Box<Problem>,
    },
    /// An error status whose body is not a problem document (a proxy page, plain text...).
    Status {
        status: StatusCode,
        content_type: Option<String>,
        /// The start of the body, control characters removed, for the operator.
        excerpt: String,
    },
    /// No answer within the per-attempt timeout.
    Timeout,
    /// The TCP/TLS connection could not be made.
    Connect(String),
    /// The connection failed while sending or receiving (reset, closed mid-body...).
    Transport(String),
    /// A success response whose body is not what the API documents.
    Decode(String),
    /// The OAuth2 token endpoint refused or failed.
    Token {
        status: Option<StatusCode>,
        reason: String,
    },
    /// The request was not sent because its input is invalid.
    InvalidRequest(String),
}

/// A failed QUBS call: what happened, which call, and the ids support will ask for.
#[derive(Debug, Clone)]
pub struct Error {
    /// The call, e.g. `GET pending appointments`.
    pub operation: &'static str,
    /// The `X-Correlation-Id` this call sent (the same on every retry).
    pub correlation_id: Uuid,
    /// Attempts made, the first included.
    pub attempts: u32,
    pub kind: ErrorKind,
    /// The server's `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
}

impl Error {
    /// The HTTP status QUBS answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.kind {
            ErrorKind::Problem { status, .. } | ErrorKind::Status { status, .. } => Some(*status),
            ErrorKind::Token { status, .. } => *status,
            _ => None,
        }
    }

    /// Whether QUBS answered 404: the appointment, site... asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// The RFC 7807 body, if QUBS sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match &self.kind {
            ErrorKind::Problem { problem, .. } => Some(problem),
            _ => None,
        }
    }

    /// QUBS's `requestId` (from the problem body) or, failing that, our correlation id.
    pub fn request_id(&self) -> String {
        self.problem()
            .and_then(|p| p.request_id.clone())
            .unwrap_or_else(|| self.correlation_id.to_string())
    }

    /// Whether trying again later may succeed (429, 500/502/503/504, timeouts, connection
    /// faults).
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            ErrorKind::Timeout | ErrorKind::Connect(_) | ErrorKind::Transport(_) => true,
            ErrorKind::Problem { status, .. } | ErrorKind::Status { status, .. } => {
                is_transient_status(*status)
            }
            ErrorKind::Token { status, .. } => status.is_none_or(is_transient_status),
            ErrorKind::Decode(_) | ErrorKind::InvalidRequest(_) => false,
        }
    }
}

/// 429 and the 5xx codes that say "try again": QUBS's documented `server-error` (500) is a
/// transient error its docs say to retry, like the gateway-side 502/503/504.
pub fn is_transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QUBS {} failed", self.operation)?;
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        write!(f, ": ")?;
        match &self.kind {
            ErrorKind::Problem { status, problem } => {
                write!(f, "{status}")?;
                if let Some(t) = &problem.problem_type {
                    write!(f, " ({t})")?;
                }
                if let Some(title) = &problem.title {
                    write!(f, " {title}")?;
                }
                if let Some(detail) = &problem.detail {
                    write!(f, ": {detail}")?;
                }
                match &problem.request_id {
                    Some(id) => write!(f, " [requestId {id}]"),
                    None => write!(f, " [correlation id {}]", self.correlation_id),
                }
            }
            ErrorKind::Status {
                status,
                content_type,
                excerpt,
            } => {
                write!(
                    f,
                    "{status} with a non-problem body ({})",
                    content_type.as_deref().unwrap_or("no content type")
                )?;
                if !excerpt.is_empty() {
                    write!(f, ": \"{excerpt}\"")?;
                }
                write!(f, " [correlation id {}]", self.correlation_id)
            }
            ErrorKind::Timeout => write!(
                f,
                "timed out waiting for QUBS [correlation id {}]",
                self.correlation_id
            ),
            ErrorKind::Connect(e) => write!(
                f,
                "cannot connect: {e} [correlation id {}]",
                self.correlation_id
            ),
            ErrorKind::Transport(e) => write!(
                f,
                "connection failed: {e} [correlation id {}]",
                self.correlation_id
            ),
            ErrorKind::Decode(e) => write!(
                f,
                "unexpected response body: {e} [correlation id {}]",
                self.correlation_id
            ),
            ErrorKind::Token { status, reason } => {
                write!(f, "token request refused")?;
                if let Some(s) = status {
                    write!(f, " ({s})")?;
                }
                write!(f, ": {reason} [correlation id {}]", self.correlation_id)
            }
            ErrorKind::InvalidRequest(e) => write!(f, "invalid request: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The first `max` characters of a non-problem error body, on one line, for error messages.
pub(crate) fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_kind_from_type_urn() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:qubs:integrations:conflict","status":409,"requestId":"r1"}"#,
        )
        .unwrap();
        assert_eq!(p.kind(), ProblemKind::Conflict);
        let p: Problem = serde_json::from_str(r#"{"title":"x"}"#).unwrap();
        assert_eq!(p.kind(), ProblemKind::Other);
    }

    #[test]
    fn display_names_operation_status_and_request_id() {
        let e = Error {
            operation: "POST report",
            correlation_id: Uuid::nil(),
            attempts: 3,
            kind: ErrorKind::Problem {
                status: StatusCode::CONFLICT,
                problem: Box::new(Problem {
                    problem_type: Some("urn:qubs:integrations:conflict".into()),
                    title: Some("Conflict".into()),
                    status: Some(409),
                    detail: Some("Idempotency-Key reused with a different payload".into()),
                    instance: None,
                    request_id: Some("req-42".into()),
                }),
            },
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "QUBS POST report failed after 3 attempts: 409 Conflict (urn:qubs:integrations:conflict) \
             Conflict: Idempotency-Key reused with a different payload [requestId req-42]"
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn excerpt_is_one_bounded_line() {
        assert_eq!(
            excerpt(b"<html>\r\n<b>Bad\tGateway</b></html>", 200),
            "<html> <b>Bad Gateway</b></html>"
        );
        assert_eq!(excerpt("äöü".as_bytes(), 2), "äö…");
    }
}
