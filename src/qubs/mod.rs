//! The QUBS Integrations API: a client for every endpoint the bridge uses.
//!
//! - [`Client`]: OAuth2 client credentials (cached, refreshed early, single-flight), an
//!   `X-Correlation-Id` on every request, RFC 7807 errors as [`Error`], retries with
//!   exponential back-off and jitter for 429 (honouring `Retry-After`), 502/503/504,
//!   connect errors and timeouts — GETs always, the report POST only with an
//!   `Idempotency-Key`, which is reused on every retry — within a bounded time budget.
//! - [`model`]: what QUBS returns, read tolerantly (only `appointmentId` is required;
//!   unknown fields are kept; one malformed list item is skipped and reported).
//!
//! Assumed, not documented by QUBS (see `qubs-api.md`): the report-attachment registration
//! body `{"files": [{fileName, contentType, sizeBytes}]}` and its answer
//! `{"attachments": [{attachmentGuid, fileName, uploadUrl, uploadUrlExpiresAtUtc}]}`.

pub mod auth;
pub mod client;
pub mod model;
pub mod problem;
pub mod retry;

pub use client::{CallObserver, Client, Download, MAX_REPORT_TEXT_BYTES, MAX_UPLOAD_BYTES};
pub use model::{
    Appointment, Attachment, Comment, CommentType, Disposition, PENDING_REPORTING, PendingPage,
    ReportAttachmentFile, ReportAttachmentUpload, ReportReceipt, Site, SiteSettings, SkippedItem,
};
pub use problem::{Error, ErrorKind, Problem, ProblemKind};
