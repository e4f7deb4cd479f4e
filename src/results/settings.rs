//! The `[results]` section: when to acknowledge inbound results, and how to retry QUBS.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Inbound results: when to acknowledge, and how to retry QUBS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsSettings {
    /// `after_submit`: AA once QUBS has the report; `after_store`: AA once it is on disk.
    pub ack_mode: AckMode,
    /// `after_submit`: how long a sender waits for QUBS before it is answered AE
    /// "stored, not confirmed yet" (the report is still submitted).
    pub ack_wait_secs: u64,
    /// Reports submitted to QUBS in parallel (one at a time per appointment).
    pub workers: usize,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Give up (dead letter) this long after a report was received. At most 23 h: QUBS
    /// keeps idempotency keys 24 h, and a later retry could store a second report.
    pub retry_horizon_secs: u64,
    /// Largest PDF (decoded) taken from an OBX ED; QUBS takes at most 2 MiB per upload.
    pub max_attachment_bytes: usize,
    /// What becomes of a result's PDFs: `upload` (report attachments, falling back to
    /// `inline_note` where QUBS has no such endpoint), `inline_note` (a line in the report
    /// text names them) or `off`.
    pub attachments: AttachmentHandling,
}

/// `results.attachments`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentHandling {
    Upload,
    InlineNote,
    Off,
}

impl ResultsSettings {
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    AfterSubmit,
    AfterStore,
}

impl Default for ResultsSettings {
    fn default() -> Self {
        ResultsSettings {
            ack_mode: AckMode::AfterSubmit,
            ack_wait_secs: 30,
            workers: 16,
            retry_initial_ms: 1000,
            retry_max_ms: 300_000,
            retry_horizon_secs: 82_800,
            max_attachment_bytes: 2_097_152,
            attachments: AttachmentHandling::Upload,
        }
    }
}
