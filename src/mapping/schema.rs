//! The input schema: every field a mapping can read, for each kind of input, with what it
//! holds — `qubs-bridge mappings fields --schema`. The order fields are the built-in shape
//! that mapping files are checked against ([`super::spec::order_shape`]), each described
//! here from the QUBS API documentation (where QUBS documents a field only in words, the
//! name is the one the bridge assumes; see `mappings/README.md`).

use super::spec::{self, InputKind};

/// One readable field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaField {
    /// The path a rule writes (`appointment.patientId`, `comments[].commentText`, `OBR-25`).
    pub path: String,
    /// What it holds.
    pub description: String,
}

/// What the order fields hold, by path. Paths under an open object (`site`, `config`,
/// `examCodes[]`, the QUBS user objects) stand for any field there.
const ORDER: &[(&str, &str)] = &[
    ("domain", "the QUBS domain the order came from"),
    (
        "event.kind",
        "order feed only: `new`, `changed` or `removed`",
    ),
    (
        "appointment.domain",
        "the domain, as QUBS repeats it in the appointment",
    ),
    (
        "appointment.appointmentId",
        "QUBS appointment id (the only field QUBS always sends)",
    ),
    (
        "appointment.status",
        "appointment status, e.g. PENDING REPORTING, AUTHORISED, APPPOINTMENT CANCELLED (sic)",
    ),
    (
        "appointment.scheduledSite",
        "name of the site the exam is scheduled at",
    ),
    (
        "appointment.appointmentDate",
        "site-local date yyyy-MM-dd (may be null)",
    ),
    (
        "appointment.startTime",
        "site-local start time HH:mm:ss (may be null)",
    ),
    (
        "appointment.endTime",
        "site-local end time HH:mm:ss (may be null)",
    ),
    ("appointment.patientId", "QUBS patient id"),
    (
        "appointment.patientName",
        "patient name as stored (one field; see the `name` filter)",
    ),
    ("appointment.dateOfBirth", "date of birth yyyy-MM-dd"),
    (
        "appointment.patientDateOfBirth",
        "date of birth, as some QUBS views name it",
    ),
    ("appointment.gender", "sex as stored (free text)"),
    ("appointment.patientSex", "sex, as some QUBS views name it"),
    (
        "appointment.studyDescription",
        "study description as stored",
    ),
    (
        "appointment.clinicalInfo",
        "clinical information text (may span lines)",
    ),
    (
        "appointment.modality",
        "modality as stored (CT, MR, US, CR, ...; free text)",
    ),
    (
        "appointment.priority",
        "priority as stored (free text, no published code list)",
    ),
    ("appointment.examCodes", "exam codes: a list of objects"),
    (
        "appointment.examCodes[].code",
        "an exam code (QUBS's own code)",
    ),
    (
        "appointment.examCodes[].*",
        "any other field of an exam-code object",
    ),
    ("appointment.doctorName", "the referrer's name in one field"),
    ("appointment.doctorFirstName", "the referrer's given name"),
    ("appointment.doctorLastName", "the referrer's family name"),
    (
        "appointment.reportingDeadlineUtc",
        "reporting deadline, a UTC instant (optional)",
    ),
    (
        "appointment.reportingDeadline",
        "reporting deadline, as some QUBS views name it",
    ),
    (
        "appointment.assignedRadiologist",
        "the radiologist assigned (a user object, or null)",
    ),
    (
        "appointment.radiologist",
        "the radiologist, as some QUBS views name it (a user object)",
    ),
    (
        "appointment.attendedBy.*",
        "QUBS user object; its fields are not published",
    ),
    (
        "appointment.authorisedBy.*",
        "QUBS user object; its fields are not published",
    ),
    ("comments[].guid", "comment id"),
    (
        "comments[].commentType",
        "AC appointment comment, AA appointment alert, PC patient comment, PA patient alert",
    ),
    (
        "comments[].appointmentId",
        "the appointment's id (empty for patient-level comments)",
    ),
    ("comments[].patientId", "the patient's id"),
    ("comments[].commentText", "the comment's text"),
    ("comments[].commentDateTime", "when it was written (UTC)"),
    ("comments[].isAlert", "true for an alert"),
    (
        "comments[].commentBy.*",
        "QUBS user object; its fields are not published",
    ),
    (
        "comments[].lastModifiedDateTime",
        "when it was last changed (UTC)",
    ),
    ("attachments[].guid", "attachment id"),
    (
        "attachments[].category",
        "free text such as Referral, Worksheet",
    ),
    ("attachments[].fileName", "the file's name"),
    ("attachments[].addedDateTime", "when it was added (UTC)"),
    (
        "attachments[].addedBy.*",
        "QUBS user object; its fields are not published",
    ),
    (
        "attachments[].lastModifiedDateTime",
        "when it was last changed (UTC)",
    ),
    (
        "attachments[].url",
        "short-lived presigned URL (may be null)",
    ),
    (
        "attachments[].urlExpiresAtUtc",
        "when the URL expires (UTC)",
    ),
    ("site.siteName", "the scheduled site's name"),
    (
        "site.timeZone",
        "the site's IANA time zone: every site-local date and time is read in it",
    ),
    ("site.domain", "the site's domain"),
    ("site.*", "any other field of the site's settings"),
    (
        "config.*",
        "values from the service configuration (`mappings.values`)",
    ),
];

const USER_FIELDS: &[(&str, &str)] = &[
    ("userId", "QUBS user id"),
    ("fullName", "display name"),
    ("firstName", "given name"),
    ("lastName", "family name"),
    ("email", "e-mail address"),
    ("providerNumber", "provider number"),
];

const CONTEXT: &[(&str, &str)] = &[
    ("domain", "the QUBS domain of the receiving feed or caller"),
    (
        "site.timeZone",
        "the site's IANA time zone (HL7 times without an offset are read in it)",
    ),
    ("site.*", "any other field of the site's settings"),
    (
        "config.*",
        "values from the service configuration (`mappings.values`)",
    ),
];

/// Every field a mapping reading `input` can name, in a stable order.
pub fn fields(input: InputKind) -> Vec<SchemaField> {
    let f = |path: &str, description: &str| SchemaField {
        path: path.to_string(),
        description: description.to_string(),
    };
    let mut out = Vec::new();
    match input {
        InputKind::Order => {
            for (path, what) in ORDER {
                out.push(f(path, what));
                if let Some(user) = path
                    .strip_prefix("appointment.")
                    .filter(|p| matches!(*p, "assignedRadiologist" | "radiologist"))
                {
                    for (field, desc) in USER_FIELDS {
                        out.push(f(&format!("appointment.{user}.{field}"), desc));
                    }
                }
            }
            // The built-in shape is the authority: a field added there shows up here.
            let (known, _) = spec::order_shape();
            for k in known {
                let container = matches!(
                    k.as_str(),
                    "appointment"
                        | "comments"
                        | "comments[]"
                        | "attachments"
                        | "attachments[]"
                        | "site"
                        | "config"
                        | "event"
                        | "appointment.examCodes[]"
                        | "appointment.attendedBy"
                        | "appointment.authorisedBy"
                );
                if !container && !out.iter().any(|x| x.path == k) {
                    out.push(f(&k, ""));
                }
            }
        }
        InputKind::Oru => {
            out.push(f(
                "SEG-F[.C[.S]]",
                "any HL7 position: segment, field, component, sub-component (`OBR-25`, `OBR-32.1.2`, `PID-3[2].1`); rules run once per ORDER_OBSERVATION group (ORC, OBR and what follows), other segments are read from the message",
            ));
            out.push(f(
                "OBX[OBX-2 in (TX, FT)]-5",
                "the OBX segments of the group whose field passes the test (a list)",
            ));
            out.extend(CONTEXT.iter().map(|(p, d)| f(p, d)));
        }
        InputKind::DiagnosticReport => {
            for (name, ty, list) in super::fhir::resource_elements("DiagnosticReport")
                .unwrap_or_default()
                .iter()
            {
                let path = format!("resource.{name}{}", if *list { "[]" } else { "" });
                out.push(f(
                    &path,
                    &format!(
                        "R4 DiagnosticReport.{name} ({ty}{})",
                        if *list { ", a list" } else { "" }
                    ),
                ));
            }
            for (path, what) in READ {
                out.push(f(path, what));
            }
            out.extend(CONTEXT.iter().map(|(p, d)| f(p, d)));
        }
    }
    out
}

/// What the bridge's reader of a DiagnosticReport gives the mapping (`read.*`).
const READ: &[(&str, &str)] = &[
    (
        "read.text",
        "the report text from the first text/plain presentedForm, else the first HTML/XHTML one as plain text",
    ),
    (
        "read.textSource",
        "where read.text came from, e.g. presentedForm[0] (application/xhtml)",
    ),
    (
        "read.conclusionNotInText",
        "conclusion, when read.text does not already contain it",
    ),
    (
        "read.pdfCount",
        "how many application/pdf presentedForms carry data",
    ),
    (
        "read.appointment.basedOnIdentifier",
        "basedOn[].identifier.value in the placer-order system",
    ),
    (
        "read.appointment.containedServiceRequest",
        "the placer-order identifier of the contained ServiceRequest basedOn points at",
    ),
    (
        "read.appointment.serviceRequestId",
        "the id of a basedOn reference to ServiceRequest/{id}",
    ),
    (
        "read.appointment.reportIdentifier",
        "identifier[].value in the placer-order system",
    ),
    (
        "read.interpreter.name",
        "the interpreting radiologist's name (contained Practitioner, else the reference's display)",
    ),
    (
        "read.interpreter.providerNumber",
        "that radiologist's provider number",
    ),
];
