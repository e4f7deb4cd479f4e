//! Inbound results → QUBS report submissions: ORU^R01 (one submission per
//! ORDER_OBSERVATION group) and FHIR DiagnosticReport.

use super::ReportField;

// The submission is a domain type: the QUBS client sends it and `Debug` keeps its PHI out.
pub use crate::domain::{ReportStatus, ReportSubmission};

/// QUBS refuses report text above 2 MiB of UTF-8.
pub use crate::domain::MAX_REPORT_TEXT_BYTES as MAX_REPORT_BYTES;

/// Builds a submission from the report fields a mapping wrote; the error names the field.
pub fn build(fields: &[Option<String>]) -> Result<ReportSubmission, (ReportField, String)> {
    let get = |f: ReportField| fields[f as usize].clone();
    let need = |f: ReportField| {
        get(f).ok_or((f, "no value (every rule for it found nothing)".to_string()))
    };
    let status = need(ReportField::ReportStatus)?;
    let report_status = match status.to_lowercase().as_str() {
        "preliminary" => ReportStatus::Preliminary,
        "final" => ReportStatus::Final,
        _ => {
            return Err((
                ReportField::ReportStatus,
                "must be `preliminary` or `final` after mapping".into(),
            ));
        }
    };
    // One line ending throughout: `\X0D\\X0A\`, a wrapped CR or a CRLF text/plain form
    // must not leave CRs among the LFs.
    let report_text = one_line_ending(need(ReportField::ReportText)?);
    if report_text.len() > MAX_REPORT_BYTES {
        return Err((
            ReportField::ReportText,
            format!(
                "{} bytes, QUBS accepts at most {MAX_REPORT_BYTES}",
                report_text.len()
            ),
        ));
    }
    let reported_at_utc = match get(ReportField::ReportedAtUtc) {
        Some(s) => Some(s.parse::<jiff::Timestamp>().map_err(|_| {
            (
                ReportField::ReportedAtUtc,
                "not a UTC timestamp: use a time filter with output `instant`".to_string(),
            )
        })?),
        None => None,
    };
    Ok(ReportSubmission {
        domain: get(ReportField::Domain),
        appointment_id: need(ReportField::AppointmentId)?,
        report_text,
        report_status,
        report_format: get(ReportField::ReportFormat),
        interpreting_clinician_name: get(ReportField::InterpretingClinicianName),
        interpreting_clinician_provider_number: get(
            ReportField::InterpretingClinicianProviderNumber,
        ),
        interpreting_clinician_email: get(ReportField::InterpretingClinicianEmail),
        reported_at_utc,
    })
}

/// `text` with CRLF and lone CR as LF.
fn one_line_ending(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_like_the_qubs_body() {
        let mut f = vec![None; ReportField::ALL.len()];
        f[ReportField::AppointmentId as usize] = Some("A1".into());
        f[ReportField::ReportText as usize] = Some("text".into());
        f[ReportField::ReportStatus as usize] = Some("Final".into());
        f[ReportField::ReportedAtUtc as usize] = Some("2026-01-02T03:04:05Z".into());
        let s = build(&f).unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"appointmentId": "A1", "reportText": "text",
                "reportStatus": "final", "reportedAtUtc": "2026-01-02T03:04:05Z"})
        );
        f[ReportField::ReportText as usize] = Some("a\r\nb\rc\nd".into());
        assert_eq!(build(&f).unwrap().report_text, "a\nb\nc\nd");
        f[ReportField::ReportStatus as usize] = Some("C".into());
        assert_eq!(build(&f).unwrap_err().0, ReportField::ReportStatus);
    }
}
