//! The QUBS Integrations API: a client for every endpoint the bridge uses.
//!
//! - [`Client`]: OAuth2 client credentials (cached, refreshed early, single-flight; the
//!   request's form configurable, see [`auth`]), an `X-Correlation-Id` on every request,
//!   RFC 7807 errors as [`Error`], one fresh token after a 401 or 403, retries with
//!   exponential back-off and jitter for 429 (honouring `Retry-After`), 500/502/503/504,
//!   connect errors and timeouts — GETs always, the report POST only with an
//!   `Idempotency-Key`, which is reused on every retry — within a bounded time budget.
//! - [`sites`]: site time zones from configuration or the (assumed) sites endpoint.
//! - [`model`]: what QUBS returns, read tolerantly (only `appointmentId` is required;
//!   unknown fields are kept; one malformed list item is skipped and reported).
//!
//! Assumed, not documented by QUBS (README "What the bridge needs from QUBS" says which
//! setting turns each off): the token request, the single-appointment GET, the sites
//! endpoints, and the report attachments — their registration body
//! `{"files": [{fileName, contentType, sizeBytes}]}` and its answer
//! `{"attachments": [{attachmentGuid, fileName, uploadUrl, uploadUrlExpiresAtUtc}]}`.

pub mod auth;
pub mod client;
pub mod model;
pub mod problem;
pub mod retry;
pub mod settings;
pub mod sites;

pub use client::{CallObserver, Client, Download, MAX_REPORT_TEXT_BYTES, MAX_UPLOAD_BYTES};
pub use model::{
    Appointment, Attachment, Comment, CommentType, Disposition, PENDING_REPORTING, PendingPage,
    ReportAttachmentFile, ReportAttachmentUpload, ReportReceipt, Site, SiteSettings, SkippedItem,
};
pub use problem::{Error, ErrorKind, Problem, ProblemKind};
pub use sites::TimeZoneSource;
