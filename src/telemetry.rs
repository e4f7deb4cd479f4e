//! Logging with `tracing`: human-readable or JSON lines on stderr, filtered by
//! `telemetry.log_filter` or `RUST_LOG`.
//!
//! PHI policy: the bridge logs identifiers (domain, appointment id, attachment guid,
//! correlation id, MSH-10), counts, sizes and statuses — never patient names, dates of birth,
//! clinical text, comments or report text, and never a secret or token. Types that carry PHI
//! have `Debug` implementations that print ids only, and error messages name fields, not
//! their values. A test runs the demo flow at TRACE level and searches the output for the
//! seeded patient names and the client secret.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use serde::{Deserialize, Serialize};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `filter`.
/// Calling it twice is harmless (the second call changes nothing).
pub fn init(format: LogFormat, filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_span_events(FmtSpan::NONE);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `pretty` for people, `json` for log shippers.
    pub log_format: LogFormat,
    /// `tracing` env-filter directives; `RUST_LOG` wins when set.
    pub log_filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
        }
    }
}
