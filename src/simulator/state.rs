//! The simulator's data and the QUBS rules it enforces, apart from HTTP.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The status an appointment must have to be listed as pending and to accept a report.
pub const PENDING_REPORTING: &str = "PENDING REPORTING";
/// QUBS's documented limit on report text (UTF-8 bytes).
pub const MAX_REPORT_TEXT_BYTES: usize = 2_097_152;
/// QUBS's documented limit on one presigned PUT.
pub const MAX_UPLOAD_BYTES: usize = 2 * 1024 * 1024;

/// An error the simulator answers with (as an RFC 7807 problem).
#[derive(Debug, Clone)]
pub struct SimProblem {
    pub status: u16,
    pub detail: String,
}

pub(crate) fn problem(status: u16, detail: impl Into<String>) -> SimProblem {
    SimProblem {
        status,
        detail: detail.into(),
    }
}

/// A site and its settings.
#[derive(Debug, Clone)]
pub struct SiteRecord {
    pub name: String,
    pub time_zone: String,
}

/// An attachment of an appointment, with its content.
#[derive(Debug, Clone)]
pub struct AttachmentRecord {
    /// Metadata as QUBS lists it (without `url`/`urlExpiresAtUtc`, added per request).
    pub meta: Map<String, Value>,
    pub content_type: String,
    pub content: Bytes,
}

/// The report QUBS holds for an appointment (each submission overwrites it).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredReport {
    pub report_guid: String,
    pub appointment_id: String,
    pub report_text: String,
    pub report_status: String,
    pub report_format: String,
    pub interpreting_clinician_name: Option<String>,
    pub interpreting_clinician_provider_number: Option<String>,
    pub interpreting_clinician_email: Option<String>,
    pub reported_at_utc: String,
    /// How many submissions have written this report.
    pub revision: u32,
}

/// One accepted report submission (replays of an idempotent request are not counted).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Submission {
    pub appointment_id: String,
    pub report_status: String,
    pub idempotency_key: Option<String>,
    /// SHA-256 of the report text, hex: lets tests compare content without keeping it.
    pub report_text_sha256: String,
}

/// A registered report attachment and, once uploaded, its content.
#[derive(Debug, Clone)]
pub struct ReportAttachmentRecord {
    pub appointment_id: String,
    pub file_name: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub content: Option<Bytes>,
}

#[derive(Debug, Clone)]
struct IdempotentReply {
    payload_sha256: [u8; 32],
    status: u16,
    body: Value,
    stored_at: Instant,
    retention: Duration,
}

/// Everything one QUBS domain holds.
#[derive(Debug, Default)]
pub struct DomainData {
    pub sites: Vec<SiteRecord>,
    /// By appointment id; ordered, so cursor paging is a range scan.
    pub appointments: BTreeMap<String, Value>,
    /// Pending appointments the list leaves out while they stay readable by id: QUBS does
    /// not promise a stable order across pages, so a pass over the list can miss one.
    pub unlisted: HashSet<String>,
    pub comments: HashMap<String, Vec<Value>>,
    pub attachments: HashMap<String, Vec<AttachmentRecord>>,
    pub reports: HashMap<String, StoredReport>,
    pub submissions: Vec<Submission>,
    pub report_attachments: HashMap<String, ReportAttachmentRecord>,
    idempotency: HashMap<String, IdempotentReply>,
    /// Keys of idempotent POSTs being processed now: a duplicate meanwhile gets 409.
    in_progress: HashSet<String>,
    /// When expired idempotency keys were last swept out (at most once a second, so a
    /// large key set does not make every POST slow).
    idempotency_swept: Option<Instant>,
}

/// The outcome of a POST that honours `Idempotency-Key`.
#[derive(Debug)]
pub(crate) struct PostOutcome {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

impl DomainData {
    /// The appointment if it is pending reporting; 404 otherwise (the report POST's rule,
    /// and in strict mode that of comments and attachments too).
    pub(crate) fn pending(&self, id: &str) -> Result<&Value, SimProblem> {
        match self.appointments.get(id) {
            Some(a) if is_pending(a) => Ok(a),
            Some(_) => Err(problem(
                404,
                format!("appointment {id} is not in {PENDING_REPORTING} status"),
            )),
            None => Err(problem(404, format!("appointment {id} was not found"))),
        }
    }

    /// The page after `after` (exclusive) of pending appointments, and whether more follow.
    pub(crate) fn pending_page(
        &self,
        after: Option<&str>,
        size: usize,
    ) -> (Vec<Value>, Option<String>) {
        let range = match after {
            Some(a) => self
                .appointments
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.appointments.range::<str, _>(..),
        };
        let mut items = Vec::with_capacity(size);
        let mut last = None;
        let mut more = false;
        let listed = range.filter(|(id, a)| is_pending(a) && !self.unlisted.contains(*id));
        for (id, appt) in listed {
            if items.len() == size {
                more = true;
                break;
            }
            items.push(appt.clone());
            last = Some(id.clone());
        }
        (items, if more { last } else { None })
    }

    /// The strict mode's DynamoDB-style page `page` of a pass (0 first) after `after`: the
    /// limit applies to the items read *before* the filter (all appointments, pending or
    /// not, listed or not), as in a DynamoDB query with a filter expression; every third
    /// page reads none (an empty page that carries a token) and the next reads half; and a
    /// page that read exactly its limit carries a token even at the end (an empty last
    /// page follows). Answers the items and, when more may follow, the key read last.
    pub(crate) fn strict_pending_page(
        &self,
        after: Option<&str>,
        page: u32,
        size: usize,
    ) -> (Vec<Value>, Option<Option<String>>) {
        let limit = match page % 3 {
            1 => 0,
            2 => (size / 2).max(1),
            _ => size,
        };
        let mut range = match after {
            Some(a) => self
                .appointments
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.appointments.range::<str, _>(..),
        }
        .peekable();
        if limit == 0 {
            let more = range.peek().is_some();
            return (Vec::new(), more.then(|| after.map(str::to_string)));
        }
        let mut items = Vec::new();
        let mut read = 0;
        let mut last = None;
        for (id, appt) in range.by_ref().take(limit) {
            read += 1;
            last = Some(id.clone());
            if is_pending(appt) && !self.unlisted.contains(id) {
                items.push(appt.clone());
            }
        }
        (items, (read == limit).then_some(last))
    }

    /// Marks an idempotent POST as being processed; 409 when one with the same key is.
    pub(crate) fn begin_processing(&mut self, key: &str) -> Result<(), SimProblem> {
        if self.replay_known(key) {
            return Ok(());
        }
        if !self.in_progress.insert(key.to_string()) {
            return Err(problem(
                409,
                "a request with this Idempotency-Key is still being processed",
            ));
        }
        Ok(())
    }

    pub(crate) fn end_processing(&mut self, key: &str) {
        self.in_progress.remove(key);
    }

    fn replay_known(&self, key: &str) -> bool {
        self.idempotency
            .get(key)
            .is_some_and(|r| r.stored_at.elapsed() < r.retention)
    }

    /// Looks up a stored reply for `key`; 409 when the payload differs.
    fn replay(&mut self, key: &str, payload: &[u8; 32]) -> Result<Option<PostOutcome>, SimProblem> {
        if self
            .idempotency_swept
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.idempotency
                .retain(|_, r| r.stored_at.elapsed() < r.retention);
            self.idempotency_swept = Some(Instant::now());
        }
        let live = self
            .idempotency
            .get(key)
            .filter(|r| r.stored_at.elapsed() < r.retention);
        match live {
            Some(r) if &r.payload_sha256 == payload => Ok(Some(PostOutcome {
                status: r.status,
                body: r.body.clone(),
                replayed: true,
            })),
            Some(_) => Err(problem(
                409,
                "Idempotency-Key was already used with a different request payload",
            )),
            None => Ok(None),
        }
    }

    fn remember(
        &mut self,
        key: Option<&str>,
        payload: [u8; 32],
        status: u16,
        body: &Value,
        retention: Duration,
    ) {
        if let Some(key) = key {
            self.idempotency.insert(
                key.to_string(),
                IdempotentReply {
                    payload_sha256: payload,
                    status,
                    body: body.clone(),
                    stored_at: Instant::now(),
                    retention,
                },
            );
        }
    }

    /// `POST .../report` with QUBS's documented rules.
    pub(crate) fn submit_report(
        &mut self,
        appointment_id: &str,
        idempotency_key: Option<&str>,
        body: &[u8],
        retention: Duration,
        now: jiff::Timestamp,
    ) -> Result<PostOutcome, SimProblem> {
        let payload: [u8; 32] = Sha256::digest(body).into();
        if let Some(key) = idempotency_key
            && let Some(outcome) = self.replay(key, &payload)?
        {
            return Ok(outcome);
        }
        let fields = json_object(body)?;
        let text = match fields.get("reportText") {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => return Err(problem(400, "reportText is required")),
            Some(_) => return Err(problem(400, "reportText must be a string")),
        };
        if text.len() > MAX_REPORT_TEXT_BYTES {
            return Err(problem(
                400,
                format!(
                    "reportText is {} bytes; it must be {MAX_REPORT_TEXT_BYTES} bytes or less",
                    text.len()
                ),
            ));
        }
        let status = match fields.get("reportStatus") {
            Some(Value::String(s)) if s.eq_ignore_ascii_case("preliminary") => "preliminary",
            Some(Value::String(s)) if s.eq_ignore_ascii_case("final") => "final",
            Some(Value::Null) | None => return Err(problem(400, "reportStatus is required")),
            Some(_) => {
                return Err(problem(
                    400,
                    "reportStatus must be one of: preliminary, final",
                ));
            }
        };
        let optional = |name: &str| -> Result<Option<String>, SimProblem> {
            match fields.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(problem(400, format!("{name} must be a string or null"))),
            }
        };
        let format = optional("reportFormat")?.unwrap_or_else(|| "text/plain".into());
        let name = optional("interpretingClinicianName")?;
        let provider = optional("interpretingClinicianProviderNumber")?;
        let email = optional("interpretingClinicianEmail")?;
        let reported_at = match optional("reportedAtUtc")? {
            Some(s) => s
                .parse::<jiff::Timestamp>()
                .map_err(|_| problem(400, "reportedAtUtc must be a UTC timestamp (ISO 8601)"))?
                .to_string(),
            None => now.to_string(),
        };
        self.pending(appointment_id)?;
        let report = self
            .reports
            .entry(appointment_id.to_string())
            .or_insert_with(|| StoredReport {
                report_guid: uuid::Uuid::new_v4().to_string(),
                appointment_id: appointment_id.to_string(),
                report_text: String::new(),
                report_status: String::new(),
                report_format: String::new(),
                interpreting_clinician_name: None,
                interpreting_clinician_provider_number: None,
                interpreting_clinician_email: None,
                reported_at_utc: String::new(),
                revision: 0,
            });
        report.report_text = text.clone();
        report.report_status = status.to_string();
        report.report_format = format;
        report.interpreting_clinician_name = name;
        report.interpreting_clinician_provider_number = provider;
        report.interpreting_clinician_email = email;
        report.reported_at_utc = reported_at.clone();
        report.revision += 1;
        let answer = json!({
            "reportGuid": report.report_guid,
            "reportStatus": status,
            "reportedAtUtc": reported_at,
        });
        self.submissions.push(Submission {
            appointment_id: appointment_id.to_string(),
            report_status: status.to_string(),
            idempotency_key: idempotency_key.map(str::to_string),
            report_text_sha256: hex(&Sha256::digest(text.as_bytes())),
        });
        self.remember(idempotency_key, payload, 201, &answer, retention);
        Ok(PostOutcome {
            status: 201,
            body: answer,
            replayed: false,
        })
    }

    /// `POST .../report/attachments`: registers files and hands out upload URLs.
    pub(crate) fn register_report_attachments(
        &mut self,
        appointment_id: &str,
        idempotency_key: Option<&str>,
        body: &[u8],
        retention: Duration,
        upload_url: impl Fn(&str) -> (String, String),
    ) -> Result<PostOutcome, SimProblem> {
        let payload: [u8; 32] = Sha256::digest(body).into();
        if let Some(key) = idempotency_key
            && let Some(outcome) = self.replay(key, &payload)?
        {
            return Ok(outcome);
        }
        let fields = json_object(body)?;
        let Some(Value::Array(files)) = fields.get("files") else {
            return Err(problem(400, "files must be an array"));
        };
        if files.is_empty() || files.len() > 20 {
            return Err(problem(
                400,
                format!("register 1 to 20 files at a time, not {}", files.len()),
            ));
        }
        self.pending(appointment_id)?;
        let mut registered = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let name = file
                .get("fileName")
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| problem(400, format!("files[{i}].fileName is required")))?;
            let content_type = file
                .get("contentType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if content_type != "application/pdf" && content_type != "application/dicom" {
                return Err(problem(
                    400,
                    format!("files[{i}].contentType must be application/pdf or application/dicom"),
                ));
            }
            let size = file
                .get("sizeBytes")
                .and_then(Value::as_u64)
                .ok_or_else(|| problem(400, format!("files[{i}].sizeBytes is required")))?;
            if size as usize > MAX_UPLOAD_BYTES {
                return Err(problem(
                    400,
                    format!(
                        "files[{i}] is {size} bytes; one upload takes at most {MAX_UPLOAD_BYTES}"
                    ),
                ));
            }
            registered.push((name.to_string(), content_type.to_string(), size));
        }
        let mut answers = Vec::new();
        for (name, content_type, size) in registered {
            let guid = uuid::Uuid::new_v4().to_string();
            let (url, expires) = upload_url(&guid);
            answers.push(json!({
                "attachmentGuid": guid,
                "fileName": name,
                "uploadUrl": url,
                "uploadUrlExpiresAtUtc": expires,
            }));
            self.report_attachments.insert(
                guid,
                ReportAttachmentRecord {
                    appointment_id: appointment_id.to_string(),
                    file_name: name,
                    content_type,
                    size_bytes: size,
                    content: None,
                },
            );
        }
        let answer = json!({ "attachments": answers });
        self.remember(idempotency_key, payload, 201, &answer, retention);
        Ok(PostOutcome {
            status: 201,
            body: answer,
            replayed: false,
        })
    }
}

pub(crate) fn is_pending(appointment: &Value) -> bool {
    appointment
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|s| s.trim().eq_ignore_ascii_case(PENDING_REPORTING))
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, SimProblem> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(problem(400, "request body must be a JSON object")),
        Err(e) => Err(problem(
            400,
            format!(
                "request body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain_with(id: &str, status: &str) -> DomainData {
        let mut d = DomainData::default();
        d.appointments
            .insert(id.into(), json!({"appointmentId": id, "status": status}));
        d
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn report_rules() {
        let mut d = domain_with("A1", "Pending Reporting");
        let now = jiff::Timestamp::UNIX_EPOCH;
        let ok = br#"{"reportText":"x","reportStatus":"FINAL"}"#;
        let first = d.submit_report("A1", Some("k1"), ok, DAY, now).unwrap();
        assert_eq!(first.status, 201);
        assert_eq!(first.body["reportStatus"], "final");
        let again = d.submit_report("A1", Some("k1"), ok, DAY, now).unwrap();
        assert!(again.replayed);
        assert_eq!(again.body, first.body);
        assert_eq!(d.submissions.len(), 1);
        let other = br#"{"reportText":"y","reportStatus":"final"}"#;
        assert_eq!(
            d.submit_report("A1", Some("k1"), other, DAY, now)
                .unwrap_err()
                .status,
            409
        );
        assert_eq!(
            d.submit_report("A2", None, ok, DAY, now)
                .unwrap_err()
                .status,
            404
        );
        assert_eq!(
            d.submit_report("A1", None, br#"{"reportStatus":"final"}"#, DAY, now)
                .unwrap_err()
                .detail,
            "reportText is required"
        );
        assert_eq!(
            d.submit_report(
                "A1",
                None,
                br#"{"reportText":"x","reportStatus":"draft"}"#,
                DAY,
                now
            )
            .unwrap_err()
            .status,
            400
        );
        let big = format!(
            r#"{{"reportText":"{}","reportStatus":"final"}}"#,
            "a".repeat(MAX_REPORT_TEXT_BYTES + 1)
        );
        assert_eq!(
            d.submit_report("A1", None, big.as_bytes(), DAY, now)
                .unwrap_err()
                .status,
            400
        );
        let exact = format!(
            r#"{{"reportText":"{}","reportStatus":"preliminary"}}"#,
            "a".repeat(MAX_REPORT_TEXT_BYTES)
        );
        d.submit_report("A1", None, exact.as_bytes(), DAY, now)
            .unwrap();
        assert_eq!(
            d.reports["A1"].revision, 2,
            "the second submission overwrote the first"
        );
        assert_eq!(d.reports["A1"].report_status, "preliminary");
    }

    #[test]
    fn report_needs_pending_status() {
        let mut d = domain_with("A1", "FINALISED");
        let e = d
            .submit_report(
                "A1",
                None,
                br#"{"reportText":"x","reportStatus":"final"}"#,
                DAY,
                jiff::Timestamp::UNIX_EPOCH,
            )
            .unwrap_err();
        assert_eq!(e.status, 404);
    }

    #[test]
    fn paging_is_a_cursor_over_pending_items() {
        let mut d = DomainData::default();
        for i in 0..7 {
            let status = if i == 3 {
                "FINALISED"
            } else {
                PENDING_REPORTING
            };
            d.appointments.insert(
                format!("A{i}"),
                json!({"appointmentId": format!("A{i}"), "status": status}),
            );
        }
        let (p1, c1) = d.pending_page(None, 3);
        assert_eq!(p1.len(), 3);
        assert_eq!(c1.as_deref(), Some("A2"));
        let (p2, c2) = d.pending_page(c1.as_deref(), 3);
        assert_eq!(
            p2.iter()
                .map(|v| v["appointmentId"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["A4", "A5", "A6"]
        );
        assert_eq!(c2, None);
    }
}
