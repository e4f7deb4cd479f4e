//! Results going back to QUBS: an ORU^R01, a FHIR DiagnosticReport or a ready-made report
//! becomes one QUBS report submission per appointment.
//!
//! **Intake** checks and maps a result (with the site time zone unknown yet), derives each
//! report's `Idempotency-Key`, and commits the message and its reports to the durable
//! [`Outbox`] — or refuses it with the reason. Nothing is acknowledged as accepted before
//! that commit. The [`worker`] then submits each stored report (re-mapped in its site's
//! time zone) and settles it as submitted or dead.
//!
//! **Acknowledgements.** In original mode (MSH-15/16 empty) the ACK is AA once QUBS has
//! the report (`ack_mode = after_submit`, the default) or once it is stored
//! (`after_store`); AE for application errors, AR for messages that are not an ORU^R01 one
//! can read. In `after_submit` mode a result QUBS has not confirmed within `ack_wait_secs`
//! is answered AE (ERR 207, "stored, not confirmed yet"): it stays in the outbox and will be
//! submitted, and resending it is safe. In enhanced mode the commit ACK (CA/CE/CR) answers
//! the storing, and the application ACK (AA/AE) follows when the reports settle; MSH-15 and
//! MSH-16 (AL, NE, ER, SU) say which of them the sender wants.
//!
//! **Exactly once, in effect.** The key is a UUIDv5 over the domain, the appointment, the
//! source message id (MSH-10) and a hash of the report, so a retransmitted message finds
//! its reports already stored and gets the same answer, and QUBS replays its original
//! response to a resubmission; a corrected result (new MSH-10) is a new submission that
//! overwrites. Per appointment, reports go to QUBS in arrival order, and a preliminary that
//! arrives after a final for the same appointment is refused (AE): it would overwrite it.

pub mod mllp;
pub mod pdf;
pub mod settings;
pub mod worker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::{AckMode, ResultsSettings};
use crate::domain::ReportSubmission;
use crate::hl7::ack::{self, AckCode, AckError, ErrorCode, ErrorLocation, IncomingHeader};
use crate::hl7::er7;
use crate::live_mappings::LiveMappings;
use crate::mapping::{InboundContext, MapError, MappingSet};
use crate::outbox::{
    Admission, Entry, NewMessage, NewResult, Outbox, Receipt, Settled, Source, State,
};
use crate::qubs;

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

/// One report the bridge took: submitted to QUBS, or stored and on its way.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub appointment_id: String,
    /// The outbox entry.
    pub outbox_id: i64,
    /// `Submitted` with QUBS's receipt, or `Pending` (stored, not confirmed yet).
    pub state: State,
    pub receipt: Option<Receipt>,
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

/// One acknowledgement of an ORU^R01.
#[derive(Debug, Clone)]
pub struct OruAck {
    /// The ACK, ER7 with CR separators.
    pub text: String,
    pub code: AckCode,
    pub accepted: Vec<Accepted>,
    pub refusal: Option<Refusal>,
}

/// What became of one ORU^R01.
#[derive(Debug, Clone)]
pub struct OruOutcome {
    pub header: IncomingHeader,
    /// The original-mode ACK, or in enhanced mode the commit ACK.
    pub ack: OruAck,
    /// False when the sender's MSH-15 asks for no commit ACK in this case.
    pub send_ack: bool,
    /// Enhanced mode: the stored reports whose settling the application ACK will report
    /// (see [`Results::application_ack`]); `None` when no application ACK is due.
    pub application_ack_for: Option<Vec<i64>>,
}

/// Turns results into QUBS reports, through the outbox.
pub struct Results {
    pub client: qubs::Client,
    pub mappings: Arc<LiveMappings>,
    pub config_values: Map<String, Value>,
    pub outbox: Arc<Outbox>,
    pub settings: ResultsSettings,
    /// Counts results newly stored (the console's results-in chart, `results_stored`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Values the inbound mappings' code tables did not have (counted and logged).
    pub unmapped: Arc<crate::unmapped::UnmappedValues>,
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

/// The site intake maps with: local times are read as UTC there, since the appointment's
/// site is not known yet; the worker maps again in the site's time zone before submitting.
fn utc_site() -> Value {
    json!({"siteName": "", "timeZone": "UTC"})
}

fn storage_refusal(e: &crate::outbox::OutboxError) -> Refusal {
    tracing::error!(error = %e, "a result could not be stored");
    refusal(
        AckCode::AE,
        ErrorCode::ApplicationInternalError,
        "storage",
        "the bridge could not store the result; nothing was accepted, send it again".into(),
    )
}

/// Whether an acknowledgement of type `ack_type` (MSH-15 or MSH-16) is wanted when the
/// outcome is `ok`. Empty counts as AL.
fn wanted(ack_type: &str, ok: bool) -> bool {
    match ack_type.trim().to_ascii_uppercase().as_str() {
        "NE" => false,
        "ER" => !ok,
        "SU" => ok,
        _ => true,
    }
}

/// The commit-level code (enhanced mode) for an original-mode one.
pub fn commit_code(code: AckCode) -> AckCode {
    match code {
        AckCode::AA => AckCode::CA,
        AckCode::AE => AckCode::CE,
        AckCode::AR => AckCode::CR,
        other => other,
    }
}

/// `code` in the mode the sender asked for: commit-level when MSH-15/16 ask for enhanced
/// acknowledgement, as it is otherwise.
pub fn code_for(header: &IncomingHeader, code: AckCode) -> AckCode {
    if header.enhanced_mode() {
        commit_code(code)
    } else {
        code
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

    fn build_ack(
        &self,
        header: &IncomingHeader,
        code: AckCode,
        accepted: Vec<Accepted>,
        refusal: Option<Refusal>,
    ) -> OruAck {
        let now = jiff::ZonedDateTime::now();
        let text = ack::build(header, code, refusal.as_ref().map(|r| &r.error), &now);
        OruAck {
            text,
            code,
            accepted,
            refusal,
        }
    }

    /// Takes an ORU^R01: checks, maps and stores it, and answers as the ack mode and the
    /// message's MSH-15/16 say.
    pub async fn submit_oru(&self, domain: &str, bytes: &[u8]) -> OruOutcome {
        let decoded = crate::hl7::charset::decode(bytes);
        let text = decoded.text;
        let header = IncomingHeader::recover(&text);
        if let Some(w) = &decoded.warning {
            // The warning names offsets and charsets only: no PHI.
            tracing::warn!(
                domain,
                msh10 = header.control_id.as_deref().unwrap_or("-"),
                charset = decoded.charset,
                warning = %w,
                "ORU^R01 character set"
            );
        }
        let enhanced = header.enhanced_mode();
        let intake = self.intake_oru(domain, &text, &header).await;
        let outcome = match intake {
            Err(r) => {
                let code = code_for(&header, r.ack_code);
                let ack = self.build_ack(&header, code, Vec::new(), Some(r));
                OruOutcome {
                    send_ack: !enhanced || wanted(&header.accept_ack_type, false),
                    ack,
                    header,
                    application_ack_for: None,
                }
            }
            Ok(ids) if enhanced => {
                let accepted = self.snapshot(&ids).await.iter().map(accepted).collect();
                let ack = self.build_ack(&header, AckCode::CA, accepted, None);
                // Whether the application ACK is wanted depends on the outcome; decided
                // when it is known.
                let later = (!header
                    .application_ack_type
                    .trim()
                    .eq_ignore_ascii_case("NE"))
                .then_some(ids);
                OruOutcome {
                    send_ack: wanted(&header.accept_ack_type, true),
                    ack,
                    header,
                    application_ack_for: later,
                }
            }
            Ok(ids) => {
                let ack = match self.settings.ack_mode {
                    AckMode::AfterStore => {
                        let entries = self.snapshot(&ids).await;
                        let accepted = entries.iter().map(accepted).collect();
                        match dead_refusal(&entries) {
                            Some(r) => self.build_ack(&header, AckCode::AE, accepted, Some(r)),
                            None => self.build_ack(&header, AckCode::AA, accepted, None),
                        }
                    }
                    AckMode::AfterSubmit => {
                        self.settled_ack(&header, &ids, self.settings.ack_wait())
                            .await
                    }
                };
                OruOutcome {
                    ack,
                    header,
                    send_ack: true,
                    application_ack_for: None,
                }
            }
        };
        log_outcome(domain, &outcome.header, &outcome.ack);
        outcome
    }

    /// Enhanced mode: the application ACK for stored reports, once they settle (waiting at
    /// most `wait`). `None` when MSH-16 does not want one for the outcome, or the reports
    /// have not settled in time.
    pub async fn application_ack(
        &self,
        header: &IncomingHeader,
        ids: &[i64],
        wait: Duration,
    ) -> Option<OruAck> {
        let ack = self.settled_ack(header, ids, wait).await;
        wanted(&header.application_ack_type, ack.code == AckCode::AA).then_some(ack)
    }

    /// AA when every report is submitted; AE with the first dead report's reason; AE 207
    /// "not confirmed yet" when some are still pending after `wait`.
    async fn settled_ack(&self, header: &IncomingHeader, ids: &[i64], wait: Duration) -> OruAck {
        self.wait_settled(ids, wait).await;
        let entries = self.snapshot(ids).await;
        let accepted: Vec<Accepted> = entries.iter().map(accepted).collect();
        if let Some(r) = dead_refusal(&entries) {
            return self.build_ack(header, AckCode::AE, accepted, Some(r));
        }
        if let Some(pending) = accepted.iter().find(|a| a.state == State::Pending) {
            let r = Refusal {
                ack_code: AckCode::AE,
                error: AckError {
                    code: ErrorCode::ApplicationInternalError,
                    location: None,
                    text: format!(
                        "the result is stored (outbox entry {}) but QUBS has not confirmed the report for appointment {} yet; it will be submitted, and sending the message again is safe",
                        pending.outbox_id, pending.appointment_id
                    ),
                },
                kind: "not_confirmed",
                qubs_request_id: None,
            };
            return self.build_ack(header, AckCode::AE, accepted, Some(r));
        }
        self.build_ack(header, AckCode::AA, accepted, None)
    }

    /// Waits until every report of `ids` has settled, for at most `wait` in all.
    async fn wait_settled(&self, ids: &[i64], wait: Duration) {
        let deadline = Instant::now() + wait;
        for id in ids {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.outbox.wait_settled(*id, left).await.is_none() {
                return;
            }
        }
    }

    /// The current state of stored reports.
    async fn snapshot(&self, ids: &[i64]) -> Vec<Entry> {
        match self.outbox.entries(ids.to_vec()).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(error = %e, "outbox read failed");
                Vec::new()
            }
        }
    }

    /// Checks, maps and stores an ORU^R01; the outbox ids of its reports.
    async fn intake_oru(
        &self,
        domain: &str,
        text: &str,
        header: &IncomingHeader,
    ) -> Result<Vec<i64>, Refusal> {
        let set = self.mappings.current();
        let prepared = prepare_oru(
            &set,
            domain,
            &self.config_values,
            text,
            header,
            self.settings.max_attachment_bytes,
        )?;
        let groups = prepared.groups;
        let (mapping, version, unmapped) = &prepared.unmapped;
        let appointments: Vec<&str> = prepared
            .message
            .results
            .iter()
            .map(|r| r.appointment_id.as_str())
            .collect();
        self.unmapped
            .record(mapping, version, domain, &appointments.join(","), unmapped);
        let mut message = prepared.message;
        // The application ACK of enhanced mode waits for the outcome too.
        message.awaited |= header.enhanced_mode();
        self.store(message, |index| {
            groups
                .get(index)
                .and_then(|g| g.first())
                .copied()
                .unwrap_or(0)
        })
        .await
    }

    /// Commits a message to the outbox; refuses a preliminary that would follow a final.
    async fn store(
        &self,
        mut message: NewMessage,
        group_of: impl Fn(usize) -> usize,
    ) -> Result<Vec<i64>, Refusal> {
        message.awaited |= self.settings.ack_mode == AckMode::AfterSubmit;
        let appointments: Vec<String> = message
            .results
            .iter()
            .map(|r| r.appointment_id.clone())
            .collect();
        match self.outbox.admit(message).await {
            Ok(Admission::Stored { ids }) => {
                self.metrics.results_stored.inc_by(ids.len() as u64);
                Ok(ids)
            }
            Ok(Admission::Duplicate { ids }) => Ok(ids),
            Ok(Admission::PreliminaryAfterFinal { index, final_id }) => Err(Refusal {
                ack_code: AckCode::AE,
                error: AckError {
                    code: ErrorCode::ApplicationInternalError,
                    location: Some(ErrorLocation {
                        segment: "OBR".into(),
                        sequence: group_of(index) as u32 + 1,
                        field: 25,
                    }),
                    text: format!(
                        "appointment {} already has a final report (outbox entry {final_id}); a preliminary result never overwrites a final one",
                        appointments[index]
                    ),
                },
                kind: "preliminary_after_final",
                qubs_request_id: None,
            }),
            Err(e) => Err(storage_refusal(&e)),
        }
    }

    /// Takes a FHIR DiagnosticReport (JSON): maps, stores and (in `after_submit` mode)
    /// waits for QUBS.
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
                format!("not JSON: {}", crate::domain::json_error(&e)),
            )
        })?;
        check_resource_type(&value)?;
        let set = self.mappings.current();
        let inbound = set
            .map_diagnostic_report(&value, &self.context(domain, utc_site()))
            .map_err(|e| map_refusal(&e))?;
        let source_id = value
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("fhir")
            .to_string();
        let appointments: Vec<&str> = inbound
            .submissions
            .iter()
            .map(|s| s.appointment_id.as_str())
            .collect();
        self.unmapped.record(
            &inbound.mapping,
            &inbound.version,
            domain,
            &appointments.join(","),
            &inbound.unmapped,
        );
        for w in &inbound.warnings {
            // Reader warnings name elements and content types, never values.
            tracing::warn!(domain, warning = %w, "DiagnosticReport read with a warning");
        }
        let mut results = Vec::with_capacity(inbound.submissions.len());
        for (i, sub) in inbound.submissions.iter().enumerate() {
            let attachments = pdf::from_diagnostic_report(
                &value,
                &sub.appointment_id,
                self.settings.max_attachment_bytes,
            )?;
            results.push(NewResult {
                key: match key {
                    Some(k) if inbound.submissions.len() == 1 => k.to_string(),
                    Some(k) => format!("{k}-{i}"),
                    None => idempotency_key(domain, &source_id, sub),
                },
                domain: domain.to_string(),
                appointment_id: sub.appointment_id.clone(),
                group: i as u32,
                report_status: sub.report_status.as_str().to_string(),
                attachments,
            });
        }
        let message = NewMessage {
            source: Source::Fhir,
            source_id,
            body: json_text.as_bytes().to_vec(),
            results,
            awaited: false,
        };
        let ids = self.store(message, |i| i).await?;
        self.answer(&ids).await
    }

    /// Takes a report given in QUBS's own terms: stores and (in `after_submit` mode) waits.
    pub async fn submit_report(
        &self,
        domain: &str,
        report: &ReportSubmission,
        key: Option<&str>,
    ) -> Result<Accepted, Refusal> {
        let derived = idempotency_key(domain, "report", report);
        let message = NewMessage {
            source: Source::Report,
            source_id: "report".into(),
            body: serde_json::to_vec(report).expect("a submission serializes"),
            results: vec![NewResult {
                key: key.unwrap_or(&derived).to_string(),
                domain: domain.to_string(),
                appointment_id: report.appointment_id.clone(),
                group: 0,
                report_status: report.report_status.as_str().to_string(),
                attachments: Vec::new(),
            }],
            awaited: false,
        };
        let ids = self.store(message, |i| i).await?;
        let mut accepted = self.answer(&ids).await?;
        accepted.pop().ok_or_else(|| {
            refusal(
                AckCode::AE,
                ErrorCode::ApplicationInternalError,
                "storage",
                "the stored report could not be read back".into(),
            )
        })
    }

    /// For gRPC callers: the reports' state now (`after_store`) or once settled
    /// (`after_submit`, waiting at most `ack_wait_secs`); a dead report is an error.
    async fn answer(&self, ids: &[i64]) -> Result<Vec<Accepted>, Refusal> {
        if self.settings.ack_mode == AckMode::AfterSubmit {
            self.wait_settled(ids, self.settings.ack_wait()).await;
        }
        let entries = self.snapshot(ids).await;
        match dead_refusal(&entries) {
            Some(r) => Err(r),
            None => Ok(entries.iter().map(accepted).collect()),
        }
    }
}

/// An ORU^R01 checked and mapped, ready for the outbox.
#[derive(Clone)]
pub struct PreparedOru {
    /// The message and one result per appointment, with keys and PDF attachments.
    pub message: NewMessage,
    /// For each result, the ORDER_OBSERVATION groups (from 0) it was made from.
    pub groups: Vec<Vec<usize>>,
    /// The mapping's name and set version, and the values its code tables did not have.
    pub unmapped: (String, String, Vec<crate::mapping::Unmapped>),
}

/// The pure part of ORU^R01 intake, without outbox or network (the fuzz target
/// `oru_to_report` drives it directly): checks the header, maps with `set` (site time zone
/// UTC, as at intake), extracts the PDFs and derives each report's key.
pub fn prepare_oru(
    set: &MappingSet,
    domain: &str,
    config_values: &Map<String, Value>,
    text: &str,
    header: &IncomingHeader,
    max_attachment_bytes: usize,
) -> Result<PreparedOru, Refusal> {
    if header.message_code.is_empty() {
        return Err(unreadable_header(text));
    }
    if header.message_code != "ORU" || header.trigger_event != "R01" {
        return Err(refusal(
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
        ));
    }
    check_control_id(header)?;
    let context = InboundContext {
        domain: Some(domain.to_string()),
        site: utc_site(),
        config: Value::Object(config_values.clone()),
    };
    let inbound = set.map_oru(text, &context).map_err(|e| map_refusal(&e))?;
    let msh10 = header.control_id.clone().unwrap_or_default();
    let mut results = Vec::with_capacity(inbound.submissions.len());
    for (sub, groups) in inbound.submissions.iter().zip(&inbound.groups) {
        let attachments = pdf::extract(text, groups, &sub.appointment_id, max_attachment_bytes)?;
        results.push(NewResult {
            key: idempotency_key(domain, &msh10, sub),
            domain: domain.to_string(),
            appointment_id: sub.appointment_id.clone(),
            group: groups.first().copied().unwrap_or(0) as u32,
            report_status: sub.report_status.as_str().to_string(),
            attachments,
        });
    }
    Ok(PreparedOru {
        message: NewMessage {
            source: Source::Hl7,
            source_id: msh10,
            body: text.as_bytes().to_vec(),
            results,
            awaited: false,
        },
        groups: inbound.groups,
        unmapped: (inbound.mapping, inbound.version, inbound.unmapped),
    })
}

/// Only a DiagnosticReport is read as one: the mapping reads `basedOn`, `identifier`,
/// `status` and `conclusion`, which other resources have too.
fn check_resource_type(value: &Value) -> Result<(), Refusal> {
    let problem = match value {
        Value::Object(o) => match o.get("resourceType") {
            Some(Value::String(t)) if t == "DiagnosticReport" => return Ok(()),
            Some(Value::String(t)) if t.len() <= 64 => {
                format!("resourceType is `{t}`; expected `DiagnosticReport`")
            }
            Some(Value::String(_)) => "resourceType is not `DiagnosticReport`".to_string(),
            _ => "resourceType is missing; expected `DiagnosticReport`".to_string(),
        },
        other => format!(
            "expected a FHIR DiagnosticReport object, found {}",
            qubs::model::json_kind(other)
        ),
    };
    Err(refusal(
        AckCode::AR,
        ErrorCode::DataTypeError,
        "unparseable",
        problem,
    ))
}

/// Why a message's MSH-9 could not be read: no MSH at all, delimiters that cannot be
/// delimiters, or an MSH whose MSH-9 is empty — each said as such.
fn unreadable_header(text: &str) -> Refusal {
    match er7::Message::parse(text) {
        Err(e @ er7::ReadError::EncodingCharacters) => refusal(
            AckCode::AR,
            ErrorCode::SegmentSequence,
            "unparseable",
            e.to_string(),
        ),
        Ok(_) => Refusal {
            ack_code: AckCode::AR,
            error: AckError {
                code: ErrorCode::RequiredFieldMissing,
                location: Some(ErrorLocation {
                    segment: "MSH".into(),
                    sequence: 1,
                    field: 9,
                }),
                text: "MSH-9 (message type) is empty; send ORU^R01".into(),
            },
            kind: "unsupported_message",
            qubs_request_id: None,
        },
        Err(_) => refusal(
            AckCode::AR,
            ErrorCode::SegmentSequence,
            "unparseable",
            "no readable MSH segment: this is not an HL7 v2 message".into(),
        ),
    }
}

/// Longest MSH-10 taken (the ST length of MSH-10 from v2.7; earlier versions allow less).
const MAX_CONTROL_ID_CHARS: usize = 199;

/// MSH-10 is required: the sender matches the ACK to its message by it, and the bridge
/// recognises a retransmission by it.
fn check_control_id(header: &IncomingHeader) -> Result<(), Refusal> {
    let id = header.control_id.as_deref().unwrap_or_default();
    let length = id.chars().count();
    let (code, text) = if id.trim().is_empty() {
        (
            ErrorCode::RequiredFieldMissing,
            "MSH-10 (message control id) is empty: the sender could not match this acknowledgement"
                .to_string(),
        )
    } else if length > MAX_CONTROL_ID_CHARS {
        (
            ErrorCode::DataTypeError,
            format!(
                "MSH-10 (message control id) is {length} characters long; at most {MAX_CONTROL_ID_CHARS} are allowed"
            ),
        )
    } else {
        return Ok(());
    };
    Err(Refusal {
        ack_code: AckCode::AR,
        error: AckError {
            code,
            location: Some(ErrorLocation {
                segment: "MSH".into(),
                sequence: 1,
                field: 10,
            }),
            text,
        },
        kind: "invalid_header",
        qubs_request_id: None,
    })
}

fn accepted(e: &Entry) -> Accepted {
    Accepted {
        appointment_id: e.appointment_id.clone(),
        outbox_id: e.id,
        state: e.state,
        receipt: e.receipt.clone(),
    }
}

/// The refusal the first dead report among `entries` stands for, if one is dead.
fn dead_refusal(entries: &[Entry]) -> Option<Refusal> {
    let entry = entries.iter().find(|e| e.state == State::Dead)?;
    let Some(Settled::Dead {
        kind,
        reason,
        qubs_request_id,
    }) = entry.settled()
    else {
        return None;
    };
    let (code, kind, field): (ErrorCode, &'static str, u32) = match kind.as_str() {
        "not_found" => (ErrorCode::UnknownKeyIdentifier, "not_found", 2),
        "not_pending" => (ErrorCode::UnknownKeyIdentifier, "not_pending", 2),
        "rejected" => (ErrorCode::ApplicationInternalError, "rejected", 2),
        "mapping" => (ErrorCode::RequiredFieldMissing, "mapping", 2),
        "attachment" => (ErrorCode::ApplicationInternalError, "attachment", 5),
        "horizon" => (ErrorCode::ApplicationInternalError, "qubs_unavailable", 2),
        _ => (ErrorCode::ApplicationInternalError, "dead", 2),
    };
    Some(Refusal {
        ack_code: AckCode::AE,
        error: AckError {
            code,
            location: Some(ErrorLocation {
                segment: if field == 5 { "OBX" } else { "OBR" }.into(),
                sequence: entry.group + 1,
                field,
            }),
            text: reason,
        },
        kind,
        qubs_request_id,
    })
}

fn log_outcome(domain: &str, header: &IncomingHeader, ack: &OruAck) {
    let msh10 = header.control_id.as_deref().unwrap_or("-");
    match &ack.refusal {
        None => tracing::info!(
            domain,
            msh10,
            ack = ack.code.as_str(),
            reports = ack.accepted.len(),
            "ORU^R01 accepted"
        ),
        Some(r) => tracing::warn!(
            domain,
            msh10,
            ack = ack.code.as_str(),
            error_code = r.error.code.code(),
            reason = %r.error.text,
            "ORU^R01 not accepted"
        ),
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
        // A missing segment is a structure error (table 0357 code 100), not a data type one.
        MapError::Value { reason, .. } if reason == crate::mapping::NO_ORDER_GROUP => {
            (AckCode::AR, ErrorCode::SegmentSequence, "unparseable", None)
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
