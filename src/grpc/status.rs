//! QUBS failures as gRPC statuses, with QUBS's `requestId` and our correlation id in the
//! trailers so that support can follow one call from the engine to QUBS.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::qubs;

/// Maps a QUBS error to the gRPC code an interface engine can act on.
pub fn from_qubs(e: &qubs::Error) -> Status {
    let status_code = e.status().map(|s| s.as_u16());
    let (code, prefix) = match (&e.kind, status_code) {
        (qubs::ErrorKind::InvalidRequest(_), _) => (Code::InvalidArgument, ""),
        (qubs::ErrorKind::Token { .. }, Some(400..=499)) => (
            Code::Unavailable,
            "QUBS refused the bridge's client credentials; check qubs.client_id/secret: ",
        ),
        (_, Some(400)) => (Code::InvalidArgument, ""),
        (_, Some(401)) => (Code::Unavailable, "QUBS refused the bridge's credentials: "),
        (_, Some(403)) => (
            Code::FailedPrecondition,
            "QUBS does not allow the bridge to use this domain: ",
        ),
        (_, Some(404)) => (Code::NotFound, ""),
        (_, Some(409)) => (Code::Aborted, ""),
        (_, Some(429)) => (
            Code::ResourceExhausted,
            "QUBS is rate-limiting the bridge: ",
        ),
        (_, Some(500..=599)) => (Code::Unavailable, ""),
        (qubs::ErrorKind::Decode(_), _) => (Code::Internal, ""),
        _ => (Code::Unavailable, ""),
    };
    let mut status = Status::new(code, format!("{prefix}{e}"));
    let md = status.metadata_mut();
    if let Some(id) = e.problem().and_then(|p| p.request_id.as_deref())
        && let Ok(v) = MetadataValue::try_from(id)
    {
        md.insert("qubs-request-id", v);
    }
    if let Ok(v) = MetadataValue::try_from(e.correlation_id.to_string()) {
        md.insert("x-correlation-id", v);
    }
    status
}
