//! Domain types shared by the mapping engine, the QUBS client and the edges.

use std::fmt;

use serde::{Deserialize, Serialize};

/// QUBS refuses report text over this many UTF-8 bytes.
pub const MAX_REPORT_TEXT_BYTES: usize = 2_097_152;

/// A JSON parse error by kind and position only (the text itself may be PHI): `syntax
/// error at line 1 column 5`, `eof error at …`, and for serde_json's recursion limit,
/// which it classifies as a syntax error, `nested more than 128 levels deep at …`.
pub fn json_error(e: &serde_json::Error) -> String {
    let what = if e.to_string().starts_with("recursion limit exceeded") {
        "nested more than 128 levels deep".to_string()
    } else {
        format!("{:?} error", e.classify()).to_lowercase()
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Status of a submitted report, as QUBS accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportStatus {
    Preliminary,
    Final,
}

impl ReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Preliminary => "preliminary",
            ReportStatus::Final => "final",
        }
    }
}

impl fmt::Display for ReportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A report to submit to QUBS for one appointment: what an ORU^R01 or a FHIR
/// DiagnosticReport becomes after mapping.
///
/// `Debug` shows ids and sizes only: report text is PHI.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportSubmission {
    /// The QUBS domain, when the input names it (otherwise the receiving channel decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub appointment_id: String,
    pub report_text: String,
    pub report_status: ReportStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreting_clinician_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreting_clinician_provider_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreting_clinician_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at_utc: Option<jiff::Timestamp>,
}

impl fmt::Debug for ReportSubmission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportSubmission")
            .field("domain", &self.domain)
            .field("appointment_id", &self.appointment_id)
            .field("report_status", &self.report_status)
            .field("report_text_bytes", &self.report_text.len())
            .field("report_format", &self.report_format)
            .field("reported_at_utc", &self.reported_at_utc)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_report_text_and_clinician() {
        let r = ReportSubmission {
            domain: Some("acme".into()),
            appointment_id: "A1".into(),
            report_text: "Findings: secret".into(),
            report_status: ReportStatus::Final,
            report_format: None,
            interpreting_clinician_name: Some("Dr Who".into()),
            interpreting_clinician_provider_number: None,
            interpreting_clinician_email: None,
            reported_at_utc: None,
        };
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("Dr Who"),
            "{shown}"
        );
        assert!(shown.contains("A1"));
    }
}
