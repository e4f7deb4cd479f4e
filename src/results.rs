//! Results going back to QUBS: an ORU^R01, a FHIR DiagnosticReport or a ready-made report
//! becomes one QUBS report submission per appointment, sent with an `Idempotency-Key`
//! derived from the content, and (for HL7) answered with the ACK the standard promises.
//!
//! The key is a UUIDv5 over the domain, the appointment, the source message id (MSH-10) and
//! a hash of the submission, so a retransmitted message yields the same key — QUBS then
//! answers with the original report instead of storing a second one — while a corrected
//! result (new MSH-10) is a new submission that overwrites the report.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::ReportSubmission;
use crate::hl7::ack::{self, AckCode, AckError, ErrorCode, ErrorLocation, IncomingHeader};
use crate::hl7::er7;
use crate::live_mappings::LiveMappings;
use crate::mapping::{InboundContext, MapError};
use crate::qubs::{self, ReportReceipt};

/// Namespace of the bridge's idempotency keys (a fixed, random UUID).
const KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_2c0e_93d4_4e8a_a1c7_5f3e_0d29_b846);

/// The `Idempotency-Key` for one submission: stable across retransmissions of the same
/// source message, different for any change of content.
pub fn idempotency_key(domain: &str, source_id: &str, report: &ReportSubmission) -> String {
    let payload = serde_json::to_vec(report).expect("a submission serializes");
    let digest = Sha256::digest(&payload);
    let mut name = Vec::with_capacity(domain.len() + source_id.len() + 80);
    for part in [
        domain.as_bytes(),
        report.appointment_id.as_bytes(),
        source_id.as_bytes(),
    ] {
        name.extend_from_slice(part);
        name.push(0);
    }
    name.extend_from_slice(&digest);
    Uuid::new_v5(&KEY_NAMESPACE, &name).to_string()
}

/// One report QUBS accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub appointment_id: String,
    pub receipt: ReportReceipt,
}

/// Why a result was not (fully) accepted.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// AE (application error) or AR (reject).
    pub ack_code: AckCode,
    pub error: AckError,
    /// Machine-readable kind for API callers, e.g. `not_pending`.
    pub kind: &'static str,
    pub qubs_request_id: Option<String>,
}

/// What became of one ORU^R01.
#[derive(Debug, Clone)]
pub struct OruOutcome {
    /// The ACK, ER7.
    pub ack: String,
    pub ack_code: AckCode,
    /// Reports QUBS accepted (all of them when `refusal` is `None`).
    pub accepted: Vec<Accepted>,
    pub refusal: Option<Refusal>,
    /// MSH-10 of the message, when readable.
    pub control_id: Option<String>,
}

/// Turns results into QUBS reports.
pub struct Results {
    pub client: qubs::Client,
    pub mappings: Arc<LiveMappings>,
    pub config_values: Map<String, Value>,
}

fn refusal(ack_code: AckCode, code: ErrorCode, kind: &'static str, text: String) -> Refusal {
    Refusal {
        ack_code,
        error: AckError {
            code,
            location: None,
            text,
        },
        kind,
        qubs_request_id: None,
    }
}

impl Results {
    fn context(&self, domain: &str, site: Value) -> InboundContext {
        InboundContext {
            domain: Some(domain.to_string()),
            site,
            config: Value::Object(self.config_values.clone()),
        }
    }

    /// Maps and submits an ORU^R01 and builds its ACK.
    pub async fn submit_oru(&self, domain: &str, bytes: &[u8]) -> OruOutcome {
        let text = er7::decode_bytes(bytes);
        let header = IncomingHeader::recover(&text);
        let result = self.oru(domain, &text, &header).await;
        let (ack_code, accepted, refusal) = match result {
            Ok(accepted) => (AckCode::AA, accepted, None),
            Err((accepted, r)) => (r.ack_code, accepted, Some(r)),
        };
        let now = jiff::ZonedDateTime::now();
        let ack = ack::build(&header, ack_code, refusal.as_ref().map(|r| &r.error), &now);
        match &refusal {
            None => tracing::info!(
                domain,
                msh10 = header.control_id.as_deref().unwrap_or("-"),
                reports = accepted.len(),
                "ORU^R01 accepted"
            ),
            Some(r) => tracing::warn!(
                domain,
                msh10 = header.control_id.as_deref().unwrap_or("-"),
                ack = r.ack_code.as_str(),
                error_code = r.error.code.code(),
                reason = %r.error.text,
                "ORU^R01 not accepted"
            ),
        }
        OruOutcome {
            ack,
            ack_code,
            accepted,
            refusal,
            control_id: header.control_id.clone(),
        }
    }

    async fn oru(
        &self,
        domain: &str,
        text: &str,
        header: &IncomingHeader,
    ) -> Result<Vec<Accepted>, (Vec<Accepted>, Refusal)> {
        let none = Vec::new;
        if header.message_code.is_empty() {
            return Err((
                none(),
                refusal(
                    AckCode::AR,
                    ErrorCode::SegmentSequence,
                    "unparseable",
                    "no readable MSH segment: this is not an HL7 v2 message".into(),
                ),
            ));
        }
        if header.message_code != "ORU" || header.trigger_event != "R01" {
            return Err((
                none(),
                refusal(
                    AckCode::AR,
                    if header.message_code == "ORU" {
                        ErrorCode::UnsupportedEventCode
                    } else {
                        ErrorCode::UnsupportedMessageType
                    },
                    "unsupported_message",
                    format!(
                        "message type {}^{} is not accepted here; send ORU^R01",
                        header.message_code, header.trigger_event
                    ),
                ),
            ));
        }
        let set = self.mappings.current();
        // First pass only to learn the appointments (times are read in UTC here); the
        // second pass reads them in the appointment's site time zone.
        let probe_site = json!({"siteName": "", "timeZone": "UTC"});
        let first = set
            .map_oru(text, &self.context(domain, probe_site))
            .map_err(|e| (none(), map_refusal(&e)))?;
        let msh10 = header.control_id.clone().unwrap_or_default();
        let mut accepted = Vec::new();
        for (i, sub) in first.submissions.iter().enumerate() {
            let site = match self.site_of(domain, &sub.appointment_id).await {
                Ok(site) => site,
                Err(r) => return Err((accepted, r)),
            };
            let mut second = match set.map_oru(text, &self.context(domain, site)) {
                Ok(s) => s,
                Err(e) => return Err((accepted, map_refusal(&e))),
            };
            let sub = second.submissions.swap_remove(i);
            let key = idempotency_key(domain, &msh10, &sub);
            match self.client.submit_report(domain, &sub, Some(&key)).await {
                Ok(receipt) => accepted.push(Accepted {
                    appointment_id: sub.appointment_id.clone(),
                    receipt,
                }),
                Err(e) => return Err((accepted, qubs_refusal(&sub.appointment_id, &e, i + 1))),
            }
        }
        Ok(accepted)
    }

    /// The site settings of an appointment that must be pending reporting.
    async fn site_of(&self, domain: &str, appointment_id: &str) -> Result<Value, Refusal> {
        let appointment = self
            .client
            .appointment(domain, appointment_id)
            .await
            .map_err(|e| qubs_refusal(appointment_id, &e, 1))?;
        let status = appointment.status().unwrap_or_default();
        if !status.trim().eq_ignore_ascii_case(qubs::PENDING_REPORTING) {
            return Err(refusal(
                AckCode::AE,
                ErrorCode::UnknownKeyIdentifier,
                "not_pending",
                format!("appointment {appointment_id} is not pending reporting (status {status})"),
            ));
        }
        match appointment.scheduled_site().filter(|s| !s.is_empty()) {
            None => Ok(Value::Null),
            Some(site) => match self.client.site_settings(domain, site).await {
                Ok(s) => Ok(serde_json::to_value(s).unwrap_or(Value::Null)),
                Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => Ok(Value::Null),
                Err(e) => Err(qubs_refusal(appointment_id, &e, 1)),
            },
        }
    }

    /// Maps and submits a FHIR DiagnosticReport (JSON).
    pub async fn submit_diagnostic_report(
        &self,
        domain: &str,
        json_text: &str,
        key: Option<&str>,
    ) -> Result<Vec<Accepted>, Refusal> {
        let value: Value = serde_json::from_str(json_text).map_err(|e| {
            refusal(
                AckCode::AR,
                ErrorCode::DataTypeError,
                "unparseable",
                format!(
                    "not JSON: {} error at line {} column {}",
                    format!("{:?}", e.classify()).to_lowercase(),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let set = self.mappings.current();
        let inbound = set
            .map_diagnostic_report(&value, &self.context(domain, Value::Null))
            .map_err(|e| map_refusal(&e))?;
        let source_id = value
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("fhir")
            .to_string();
        let mut accepted = Vec::new();
        for sub in inbound.submissions {
            let derived = idempotency_key(domain, &source_id, &sub);
            let key = key.unwrap_or(&derived);
            let receipt = self
                .client
                .submit_report(domain, &sub, Some(key))
                .await
                .map_err(|e| qubs_refusal(&sub.appointment_id, &e, 1))?;
            accepted.push(Accepted {
                appointment_id: sub.appointment_id,
                receipt,
            });
        }
        Ok(accepted)
    }

    /// Submits a report given in QUBS's own terms.
    pub async fn submit_report(
        &self,
        domain: &str,
        report: &ReportSubmission,
        key: Option<&str>,
    ) -> Result<Accepted, qubs::Error> {
        let derived = idempotency_key(domain, "report", report);
        let receipt = self
            .client
            .submit_report(domain, report, Some(key.unwrap_or(&derived)))
            .await?;
        Ok(Accepted {
            appointment_id: report.appointment_id.clone(),
            receipt,
        })
    }
}

/// A mapping failure as an ACK error. Messages name rules and fields, never values.
fn map_refusal(e: &MapError) -> Refusal {
    let (inner, group) = match e {
        MapError::InGroup { source, group, .. } => (source.as_ref(), *group as u32),
        other => (other, 1),
    };
    let text = e.to_string();
    let location = |segment: &str, field: u32| {
        Some(ErrorLocation {
            segment: segment.into(),
            sequence: group,
            field,
        })
    };
    let mentions = |name: &str| text.contains(name);
    let (ack_code, code, kind, loc) = match inner {
        MapError::Hl7(_) => (AckCode::AR, ErrorCode::DataTypeError, "unparseable", None),
        MapError::Unmapped { .. } => (
            AckCode::AE,
            ErrorCode::TableValueNotFound,
            "unmapped_value",
            if mentions("reportStatus") || mentions("result_status") {
                location("OBR", 25)
            } else {
                None
            },
        ),
        MapError::Required { .. } | MapError::InvalidOutput { .. } => {
            let loc = if mentions("appointmentId") {
                location("OBR", 2)
            } else if mentions("reportStatus") {
                location("OBR", 25)
            } else if mentions("reportText") {
                location("OBX", 5)
            } else {
                None
            };
            let code = if text.contains("bytes") {
                ErrorCode::ApplicationInternalError
            } else {
                ErrorCode::RequiredFieldMissing
            };
            (AckCode::AE, code, "mapping", loc)
        }
        MapError::Value { .. } => (AckCode::AE, ErrorCode::DataTypeError, "mapping", None),
        MapError::UnknownMapping(_) | MapError::WrongInput(_) | MapError::InGroup { .. } => (
            AckCode::AE,
            ErrorCode::ApplicationInternalError,
            "mapping",
            None,
        ),
    };
    Refusal {
        ack_code,
        error: AckError {
            code,
            location: loc,
            text,
        },
        kind,
        qubs_request_id: None,
    }
}

/// A QUBS failure for one appointment as an ACK error.
fn qubs_refusal(appointment_id: &str, e: &qubs::Error, group: usize) -> Refusal {
    let status = e.status().map(|s| s.as_u16());
    let (code, kind, text) = match status {
        Some(404) => (
            ErrorCode::UnknownKeyIdentifier,
            "not_found",
            format!("appointment {appointment_id} is unknown to QUBS or not pending reporting"),
        ),
        Some(400) => (
            ErrorCode::ApplicationInternalError,
            "rejected",
            format!("QUBS refused the report for appointment {appointment_id}: {e}"),
        ),
        _ => (
            ErrorCode::ApplicationInternalError,
            "qubs_unavailable",
            format!("QUBS could not take the report for appointment {appointment_id} now: {e}"),
        ),
    };
    Refusal {
        ack_code: AckCode::AE,
        error: AckError {
            code,
            location: Some(ErrorLocation {
                segment: "OBR".into(),
                sequence: group as u32,
                field: 2,
            }),
            text,
        },
        kind,
        qubs_request_id: e.problem().and_then(|p| p.request_id.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ReportStatus;

    fn report(text: &str) -> ReportSubmission {
        ReportSubmission {
            domain: None,
            appointment_id: "A1".into(),
            report_text: text.into(),
            report_status: ReportStatus::Final,
            report_format: None,
            interpreting_clinician_name: None,
            interpreting_clinician_provider_number: None,
            interpreting_clinician_email: None,
            reported_at_utc: None,
        }
    }

    #[test]
    fn keys_are_stable_for_retransmissions_and_differ_for_changes() {
        let k = idempotency_key("acme", "MSG1", &report("x"));
        assert_eq!(k, idempotency_key("acme", "MSG1", &report("x")));
        assert_ne!(k, idempotency_key("acme", "MSG2", &report("x")));
        assert_ne!(k, idempotency_key("acme", "MSG1", &report("y")));
        assert_ne!(k, idempotency_key("globex", "MSG1", &report("x")));
        assert!(k.len() <= 128 && k.is_ascii());
    }
}
