//! What QUBS returns, read tolerantly.
//!
//! QUBS stores free text and publishes few field definitions, so the client keeps every
//! appointment as the JSON object QUBS sent (mapping files reach any field, known or not)
//! and only insists on `appointmentId`. Lists are read item by item: one malformed item is
//! reported and skipped instead of failing the page.
//!
//! `Debug` on these types prints ids only: the objects carry PHI.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The appointment status QUBS lists as pending and accepts reports for.
pub const PENDING_REPORTING: &str = "PENDING REPORTING";

/// Why one list item was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedItem {
    /// Position in the page or list, from 0.
    pub index: usize,
    /// The item's id when it could be read (`appointmentId`, `guid`).
    pub id: Option<String>,
    /// What is wrong with it, without its content.
    pub reason: String,
}

impl fmt::Display for SkippedItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "item {} (id {id}): {}", self.index, self.reason),
            None => write!(f, "item {}: {}", self.index, self.reason),
        }
    }
}

/// One QUBS appointment: the JSON object as sent, with typed accessors for known fields.
#[derive(Clone, PartialEq)]
pub struct Appointment {
    id: String,
    fields: Map<String, Value>,
}

impl Appointment {
    /// Accepts any object with a non-blank `appointmentId` (string or integer); every
    /// other field is kept as sent.
    ///
    /// ```
    /// use qubs_bridge::qubs::Appointment;
    /// let a = Appointment::from_json(serde_json::json!({
    ///     "appointmentId": "A123456", "status": "PENDING REPORTING", "vendorExtra": [1, 2]
    /// })).unwrap();
    /// assert_eq!(a.id(), "A123456");
    /// assert_eq!(a.status(), Some("PENDING REPORTING"));
    /// assert_eq!(a.fields()["vendorExtra"][1], 2);
    /// assert!(Appointment::from_json(serde_json::json!({"status": "x"})).is_err());
    /// ```
    pub fn from_json(value: Value) -> Result<Appointment, String> {
        let Value::Object(fields) = value else {
            return Err(format!(
                "expected a JSON object, found {}",
                json_kind(&value)
            ));
        };
        let id = match fields.get("appointmentId") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
            Some(Value::String(_)) => return Err("appointmentId is blank".into()),
            Some(other) => {
                return Err(format!(
                    "appointmentId must be a string, found {}",
                    json_kind(other)
                ));
            }
            None => return Err("appointmentId is missing".into()),
        };
        Ok(Appointment { id, fields })
    }

    /// `appointmentId`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A top-level string field, `None` when absent, null or not a string.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    pub fn domain(&self) -> Option<&str> {
        self.str_field("domain")
    }

    /// Appointment status as stored (e.g. `PENDING REPORTING`).
    pub fn status(&self) -> Option<&str> {
        self.str_field("status")
    }

    /// Whether the appointment waits for its report (status `PENDING REPORTING`, as stored:
    /// any case, surrounding blanks).
    pub fn is_pending_reporting(&self) -> bool {
        self.status()
            .is_some_and(|s| s.trim().eq_ignore_ascii_case(PENDING_REPORTING))
    }

    /// The site whose settings carry the appointment's time zone.
    pub fn scheduled_site(&self) -> Option<&str> {
        self.str_field("scheduledSite")
    }

    pub fn patient_id(&self) -> Option<&str> {
        self.str_field("patientId")
    }

    /// Every field QUBS sent, known or not.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The appointment as QUBS sent it.
    pub fn to_json(&self) -> Value {
        Value::Object(self.fields.clone())
    }

    pub fn into_json(self) -> Value {
        Value::Object(self.fields)
    }
}

impl fmt::Debug for Appointment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Appointment")
            .field("id", &self.id)
            .field("fields", &self.fields.len())
            .finish()
    }
}

/// One page of the pending-reporting list.
#[derive(Debug, Clone)]
pub struct PendingPage {
    pub appointments: Vec<Appointment>,
    /// Items that could not be read, reported and left out.
    pub skipped: Vec<SkippedItem>,
    /// Cursor for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// Comment types QUBS documents.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommentType {
    /// `AC`
    AppointmentComment,
    /// `AA`
    AppointmentAlert,
    /// `PC`
    PatientComment,
    /// `PA`
    PatientAlert,
    /// Anything else, kept as sent.
    Other(String),
}

impl CommentType {
    /// Reads QUBS's two-letter code, in any case and with stray blanks.
    ///
    /// ```
    /// use qubs_bridge::qubs::CommentType;
    /// assert_eq!(CommentType::parse(" pa"), CommentType::PatientAlert);
    /// assert!(CommentType::parse("AA").is_alert());
    /// assert_eq!(CommentType::parse("ZZ"), CommentType::Other("ZZ".into()));
    /// ```
    pub fn parse(code: &str) -> CommentType {
        match code.trim().to_ascii_uppercase().as_str() {
            "AC" => CommentType::AppointmentComment,
            "AA" => CommentType::AppointmentAlert,
            "PC" => CommentType::PatientComment,
            "PA" => CommentType::PatientAlert,
            _ => CommentType::Other(code.to_string()),
        }
    }

    /// Alerts (`AA`, `PA`) as opposed to comments.
    pub fn is_alert(&self) -> bool {
        matches!(
            self,
            CommentType::AppointmentAlert | CommentType::PatientAlert
        )
    }
}

/// An appointment or patient comment/alert. Unknown fields are kept in `extra`.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    #[serde(default)]
    pub guid: Option<String>,
    #[serde(default)]
    pub comment_type: Option<String>,
    #[serde(default)]
    pub appointment_id: Option<String>,
    #[serde(default)]
    pub patient_id: Option<String>,
    #[serde(default)]
    pub comment_text: Option<String>,
    #[serde(default)]
    pub comment_date_time: Option<String>,
    #[serde(default)]
    pub is_alert: Option<bool>,
    #[serde(default)]
    pub comment_by: Option<Value>,
    #[serde(default)]
    pub last_modified_date_time: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Comment {
    pub fn kind(&self) -> CommentType {
        CommentType::parse(self.comment_type.as_deref().unwrap_or_default())
    }

    /// An alert by type (`AA`/`PA`) or by the `isAlert` flag.
    pub fn is_alert(&self) -> bool {
        self.is_alert.unwrap_or(false) || self.kind().is_alert()
    }
}

impl fmt::Debug for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Comment")
            .field("guid", &self.guid)
            .field("comment_type", &self.comment_type)
            .finish_non_exhaustive()
    }
}

/// Attachment metadata with its presigned download URL.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(default)]
    pub guid: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub added_date_time: Option<String>,
    #[serde(default)]
    pub added_by: Option<Value>,
    #[serde(default)]
    pub last_modified_date_time: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_expires_at_utc: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Attachment {
    /// `urlExpiresAtUtc` parsed, when present and valid.
    pub fn url_expires_at(&self) -> Option<jiff::Timestamp> {
        self.url_expires_at_utc.as_deref()?.parse().ok()
    }
}

/// How presigned attachment URLs ask the browser to present the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Disposition {
    #[default]
    Inline,
    Attachment,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Inline => "inline",
            Disposition::Attachment => "attachment",
        }
    }
}

/// A site of a domain.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Site {
    #[serde(default)]
    pub domain: Option<String>,
    pub site_name: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A site's settings; the bridge needs its IANA time zone.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteSettings {
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub site_name: Option<String>,
    /// IANA zone, e.g. `Australia/Sydney`.
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What QUBS answers to an accepted report (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportReceipt {
    pub report_guid: String,
    #[serde(default)]
    pub report_status: Option<String>,
    #[serde(default)]
    pub reported_at_utc: Option<String>,
}

/// A file to register as an attachment of a submitted report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportAttachmentFile {
    pub file_name: String,
    /// `application/pdf` or `application/dicom`.
    pub content_type: String,
    pub size_bytes: u64,
}

/// A registered report attachment and where to PUT its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportAttachmentUpload {
    pub attachment_guid: String,
    pub file_name: String,
    pub upload_url: String,
    #[serde(default)]
    pub upload_url_expires_at_utc: Option<String>,
}

/// Reads a JSON array item by item; malformed items are skipped and reported.
pub(crate) fn read_items<T>(
    items: Vec<Value>,
    id_field: &str,
    parse: impl Fn(Value) -> Result<T, String>,
) -> (Vec<T>, Vec<SkippedItem>) {
    let mut good = Vec::with_capacity(items.len());
    let mut skipped = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let id = item.get(id_field).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        match parse(item) {
            Ok(v) => good.push(v),
            Err(reason) => skipped.push(SkippedItem { index, id, reason }),
        }
    }
    (good, skipped)
}

/// Deserializes one item, turning serde's message into one without the offending value
/// (values are PHI; the field path is enough to find the problem).
pub(crate) fn from_item<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    if !value.is_object() {
        return Err(format!(
            "expected a JSON object, found {}",
            json_kind(&value)
        ));
    }
    serde_json::from_value(value).map_err(|e| redact_serde_message(&e.to_string()))
}

/// Keeps serde's explanation but drops quoted values: `invalid type: string "Jane", expected a
/// boolean` becomes `invalid type: string, expected a boolean`.
fn redact_serde_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_quotes = false;
    let mut prev_space = false;
    for c in msg.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
            continue;
        }
        if in_quotes {
            continue;
        }
        if c == ' ' && prev_space {
            continue;
        }
        prev_space = c == ' ';
        out.push(c);
    }
    out.replace(" ,", ",")
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn appointment_keeps_unknown_fields_and_needs_only_its_id() {
        let a =
            Appointment::from_json(json!({"appointmentId": "A1", "newField": {"x": 1}})).unwrap();
        assert_eq!(a.id(), "A1");
        assert_eq!(a.fields()["newField"]["x"], 1);
        assert_eq!(a.status(), None);
        let a = Appointment::from_json(json!({"appointmentId": 77})).unwrap();
        assert_eq!(a.id(), "77");
    }

    #[test]
    fn appointment_without_id_is_refused_with_reason() {
        assert_eq!(
            Appointment::from_json(json!({"patientName": "X"})).unwrap_err(),
            "appointmentId is missing"
        );
        assert_eq!(
            Appointment::from_json(json!({"appointmentId": " "})).unwrap_err(),
            "appointmentId is blank"
        );
        assert_eq!(
            Appointment::from_json(json!("A1")).unwrap_err(),
            "expected a JSON object, found a string"
        );
    }

    #[test]
    fn malformed_comment_is_skipped_without_leaking_its_text() {
        let items = vec![
            json!({"guid": "c1", "commentType": "AA", "commentText": "ok"}),
            json!({"guid": "c2", "isAlert": "Jane Citizen"}),
        ];
        let (good, skipped): (Vec<Comment>, _) = read_items(items, "guid", from_item);
        assert_eq!(good.len(), 1);
        assert!(good[0].is_alert());
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].id.as_deref(), Some("c2"));
        assert!(!skipped[0].reason.contains("Jane"), "{}", skipped[0].reason);
        assert!(skipped[0].reason.contains("expected a boolean"));
    }
}
