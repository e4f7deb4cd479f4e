//! PDF reports carried inside a result, each becoming a QUBS report attachment:
//! - in an ORU^R01, OBX segments of value type ED (encapsulated data) whose OBX-5 is
//!   `source^Application^PDF^Base64^data`;
//! - in a FHIR DiagnosticReport, `presentedForm` attachments of type `application/pdf`
//!   with `data`.
//!
//! RP (reference pointer) values and attachments given only by `url` point elsewhere and
//! are not fetched: the bridge reaches no host but QUBS.

use base64::Engine;

use crate::hl7::ack::{AckCode, AckError, ErrorCode, ErrorLocation};
use crate::hl7::er7::Message;
use crate::outbox::Attachment;

use super::Refusal;

/// The PDFs in the given ORDER_OBSERVATION groups (from 0), in message order.
pub fn extract(
    text: &str,
    groups: &[usize],
    appointment_id: &str,
    max_bytes: usize,
) -> Result<Vec<Attachment>, Refusal> {
    let Ok(msg) = Message::parse(text) else {
        return Ok(Vec::new());
    };
    let component = msg.delimiters().component;
    let all_groups = msg.order_groups();
    let mut found = Vec::new();
    let mut obx_seen = 0u32;
    for (index, segment) in msg.segments().enumerate() {
        if segment.id() != "OBX" {
            continue;
        }
        obx_seen += 1;
        let in_wanted_group = groups
            .iter()
            .filter_map(|g| all_groups.get(*g))
            .any(|g| g.segments.contains(&index));
        let value_type = segment.field(2).unwrap_or_default().trim();
        if !in_wanted_group || !value_type.eq_ignore_ascii_case("ED") {
            continue;
        }
        let value = segment.field(5).unwrap_or_default();
        let parts: Vec<&str> = value.split(component as char).collect();
        let part = |n: usize| parts.get(n - 1).map_or("", |s| s.trim());
        let is_pdf =
            part(3).eq_ignore_ascii_case("PDF") || part(2).to_ascii_lowercase().contains("pdf");
        if !is_pdf {
            continue;
        }
        let location = Some(ErrorLocation {
            segment: "OBX".into(),
            sequence: obx_seen,
            field: 5,
        });
        let refuse = |code, text: String| Refusal {
            ack_code: AckCode::AE,
            error: AckError {
                code,
                location: location.clone(),
                text,
            },
            kind: "attachment",
            qubs_request_id: None,
        };
        if !part(4).eq_ignore_ascii_case("Base64") {
            return Err(refuse(
                ErrorCode::DataTypeError,
                format!(
                    "OBX {obx_seen}: an encapsulated PDF must be Base64-encoded (OBX-5.4 is {:?})",
                    part(4)
                ),
            ));
        }
        let data: Vec<u8> = part(5)
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        // Base64 grows data by 4/3: refuse before decoding something far too large.
        if data.len() / 4 * 3 > max_bytes + 3 {
            return Err(refuse(
                ErrorCode::ApplicationInternalError,
                format!(
                    "OBX {obx_seen}: the PDF is about {} bytes; attachments are limited to {max_bytes}",
                    data.len() / 4 * 3
                ),
            ));
        }
        let content = base64::engine::general_purpose::STANDARD
            .decode(&data)
            .map_err(|e| {
                refuse(
                    ErrorCode::DataTypeError,
                    format!("OBX {obx_seen}: OBX-5.5 is not valid Base64 ({e})"),
                )
            })?;
        if content.len() > max_bytes {
            return Err(refuse(
                ErrorCode::ApplicationInternalError,
                format!(
                    "OBX {obx_seen}: the PDF is {} bytes; attachments are limited to {max_bytes}",
                    content.len()
                ),
            ));
        }
        if !content.starts_with(b"%PDF-") {
            return Err(refuse(
                ErrorCode::DataTypeError,
                format!("OBX {obx_seen}: OBX-5 says PDF but the data does not start with %PDF-"),
            ));
        }
        found.push(Attachment {
            file_name: format!("{appointment_id}-report-{}.pdf", found.len() + 1),
            content_type: "application/pdf".into(),
            content,
        });
    }
    Ok(found)
}

/// The PDFs in a DiagnosticReport's `presentedForm`, in order. A PDF that is not base64,
/// not a PDF or too large refuses the report, naming the element.
pub fn from_diagnostic_report(
    report: &serde_json::Value,
    appointment_id: &str,
    max_bytes: usize,
) -> Result<Vec<Attachment>, Refusal> {
    let forms = match report.get("presentedForm") {
        Some(serde_json::Value::Array(a)) => a.as_slice(),
        _ => &[],
    };
    let mut found = Vec::new();
    for (i, form) in forms.iter().enumerate() {
        let content_type = form
            .get("contentType")
            .and_then(|c| c.as_str())
            .unwrap_or("");
        let (mime, _) = crate::mapping::fhir_report::media_type(content_type);
        let Some(data) = form.get("data").and_then(|d| d.as_str()) else {
            continue;
        };
        if mime != "application/pdf" || data.trim().is_empty() {
            continue;
        }
        let refuse = |code, text: String| Refusal {
            ack_code: AckCode::AE,
            error: AckError {
                code,
                location: None,
                text,
            },
            kind: "attachment",
            qubs_request_id: None,
        };
        let data: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if data.len() / 4 * 3 > max_bytes + 3 {
            return Err(refuse(
                ErrorCode::ApplicationInternalError,
                format!(
                    "presentedForm[{i}]: the PDF is about {} bytes; attachments are limited to {max_bytes}",
                    data.len() / 4 * 3
                ),
            ));
        }
        let content = base64::engine::general_purpose::STANDARD
            .decode(&data)
            .map_err(|e| {
                refuse(
                    ErrorCode::DataTypeError,
                    format!("presentedForm[{i}].data is not valid base64 ({e})"),
                )
            })?;
        if content.len() > max_bytes {
            return Err(refuse(
                ErrorCode::ApplicationInternalError,
                format!(
                    "presentedForm[{i}]: the PDF is {} bytes; attachments are limited to {max_bytes}",
                    content.len()
                ),
            ));
        }
        if !content.starts_with(b"%PDF-") {
            return Err(refuse(
                ErrorCode::DataTypeError,
                format!(
                    "presentedForm[{i}] says application/pdf but the data does not start with %PDF-"
                ),
            ));
        }
        found.push(Attachment {
            file_name: format!("{appointment_id}-report-{}.pdf", found.len() + 1),
            content_type: "application/pdf".into(),
            content,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oru(obx5: &str) -> String {
        format!(
            "MSH|^~\\&|RIS|H|QB|Q|20260101||ORU^R01|M1|P|2.5.1\rPID|||1\r\
             OBR|1|A1||X|||||||||||||||||||F\rOBX|1|TX|T||text||||||F\r\
             OBX|2|ED|18748-4^Report^LN||{obx5}||||||F\r"
        )
    }

    #[test]
    fn base64_pdfs_are_extracted_with_wrapped_lines() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4 hello");
        let (a, b) = b64.split_at(8);
        let text = oru(&format!("^Application^PDF^Base64^{a}\n{b}"));
        let found = extract(&text, &[0], "A1", 1000).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].content, b"%PDF-1.4 hello");
        assert_eq!(found[0].content_type, "application/pdf");
    }

    #[test]
    fn diagnostic_report_pdfs() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.3 report");
        let report = serde_json::json!({"presentedForm": [
            {"contentType": "text/plain", "data": "aGk="},
            {"contentType": "application/pdf", "url": "http://example.org/r.pdf"},
            {"contentType": "application/pdf", "data": b64}
        ]});
        let found = from_diagnostic_report(&report, "A7", 1000).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].content, b"%PDF-1.3 report");
        assert_eq!(found[0].file_name, "A7-report-1.pdf");
        let bad = serde_json::json!({"presentedForm": [{"contentType": "application/pdf", "data": "aGVsbG8="}]});
        let e = from_diagnostic_report(&bad, "A7", 1000).unwrap_err();
        assert!(e.error.text.contains("presentedForm[0]") && e.error.text.contains("%PDF-"));
        let e = from_diagnostic_report(&report, "A7", 4).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::ApplicationInternalError);
    }

    #[test]
    fn too_large_bad_base64_and_not_pdf_are_refused_with_the_obx() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(vec![b'%'; 3000]);
        let e = extract(&oru(&format!("^AP^PDF^Base64^{b64}")), &[0], "A1", 1000).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::ApplicationInternalError);
        assert_eq!(e.error.location.as_ref().unwrap().sequence, 2);
        let e = extract(&oru("^AP^PDF^Base64^***"), &[0], "A1", 1000).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::DataTypeError);
        let not_pdf = base64::engine::general_purpose::STANDARD.encode(b"hello");
        let e = extract(&oru(&format!("^AP^PDF^Base64^{not_pdf}")), &[0], "A1", 1000);
        assert!(e.unwrap_err().error.text.contains("%PDF-"));
        // Other groups' OBX are not this report's.
        assert!(
            extract(&oru("^AP^PDF^Base64^***"), &[1], "A1", 1000)
                .unwrap()
                .is_empty()
        );
    }
}
