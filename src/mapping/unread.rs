//! What no rule reads: the fields of one input that a mapping neither reads nor lists under
//! `not_sent`, for every kind of input — an order's JSON paths, an ORU^R01's HL7 positions,
//! a DiagnosticReport's element paths. `qubs-bridge map` shows them so that an analyst sees
//! what a new sender sends that no rule takes (OBX-16 from a new dictation system).
//!
//! A field counts as read when a rule reads it or a parent of it, when it chooses list items
//! or segments (`[commentType in (AA, PA)]`, `OBX[OBX-2 in (TX, FT)]`), when a filter needs
//! it (the time filters read `site.timeZone`), or when the bridge itself reads it (MSH
//! delimiters, control id, acknowledgement fields; the DiagnosticReport elements behind
//! each `read.*` field the mapping reads). Set IDs (`OBX-1`) and the bridge's own
//! configuration (`config.*`) are not sent data and are never listed.

use serde_json::{Value, json};

use super::compile::Compiled;
use crate::hl7::er7::{self, Path};

/// MSH fields the bridge reads itself, whatever the mapping does: delimiters (1, 2), the
/// ACK's addresses (3-6), message type (9), control id (10), processing id (11), version
/// (12), acknowledgement modes (15, 16) and character set (18).
const MSH_READ_BY_THE_BRIDGE: &[u16] = &[1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 15, 16, 18];

/// Segments whose field 1 is a Set ID: a counter, not data.
const SET_ID_SEGMENTS: &[&str] = &[
    "PID", "PV1", "NK1", "AL1", "DG1", "OBR", "OBX", "NTE", "TQ1", "SPM",
];

/// For each `read.*` field of a DiagnosticReport mapping, the elements of the resource the
/// bridge's reader looks at to produce it (see `fhir_report::read`).
const READ_SOURCES: &[(&str, &[&str])] = &[
    (
        "read.text",
        &["presentedForm[].contentType", "presentedForm[].data"],
    ),
    (
        "read.textSource",
        &["presentedForm[].contentType", "presentedForm[].data"],
    ),
    (
        "read.conclusionNotInText",
        &[
            "conclusion",
            "presentedForm[].contentType",
            "presentedForm[].data",
        ],
    ),
    (
        "read.pdfCount",
        &["presentedForm[].contentType", "presentedForm[].data"],
    ),
    (
        "read.appointment.basedOnIdentifier",
        &["basedOn[].identifier.system", "basedOn[].identifier.value"],
    ),
    (
        "read.appointment.containedServiceRequest",
        &[
            "basedOn[].reference",
            "contained[].resourceType",
            "contained[].id",
            "contained[].identifier[].system",
            "contained[].identifier[].value",
        ],
    ),
    (
        "read.appointment.serviceRequestId",
        &["basedOn[].reference"],
    ),
    (
        "read.appointment.reportIdentifier",
        &["identifier[].system", "identifier[].value"],
    ),
    (
        "read.interpreter.name",
        &[
            "resultsInterpreter[].reference",
            "resultsInterpreter[].display",
            "contained[].resourceType",
            "contained[].id",
            "contained[].name[].text",
            "contained[].name[].prefix[]",
            "contained[].name[].given[]",
            "contained[].name[].family",
            "contained[].name[].suffix[]",
        ],
    ),
    (
        "read.interpreter.providerNumber",
        &[
            "resultsInterpreter[].reference",
            "resultsInterpreter[].identifier.value",
            "contained[].resourceType",
            "contained[].id",
            "contained[].identifier[].system",
            "contained[].identifier[].value",
        ],
    ),
];

/// The order fields (as `comments[].guid`) of `order` that `m` does not account for.
/// `config.*` is the bridge's configuration, shared by every mapping, not sent data.
pub fn order(m: &Compiled, order: &Value) -> Vec<String> {
    let mut accounted = m.reads.clone();
    accounted.extend(m.not_sent.iter().map(|(f, _)| f.clone()));
    accounted.push("config".into());
    super::unread_fields(order, &accounted)
}

/// The elements of a DiagnosticReport (as `resource.presentedForm[].url`) that `m` does not
/// account for. `resourceType` is not a field.
pub fn diagnostic_report(m: &Compiled, report: &Value) -> Vec<String> {
    let mut accounted: Vec<String> = m.reads.clone();
    accounted.extend(m.not_sent.iter().map(|(f, _)| f.clone()));
    accounted.push("resource.resourceType".into());
    for (field, sources) in READ_SOURCES {
        let covered = m.reads.iter().any(|r| {
            r == field
                || field
                    .strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        });
        if covered {
            accounted.extend(sources.iter().map(|s| format!("resource.{s}")));
        }
    }
    super::unread_fields(&json!({ "resource": report }), &accounted)
}

/// The HL7 positions of an ORU^R01 that hold a value and that `m` does not read: `PID-5`
/// for a whole field, `OBR-32.2` for a component of a field whose other components are
/// read. Each position once, in message order.
pub fn oru(m: &Compiled, text: &str) -> Vec<String> {
    let reads: Vec<Path> = m.reads.iter().filter_map(|r| Path::parse(r).ok()).collect();
    positions(text, &reads)
}

/// The fields of an order that hold a value (`config.*` aside), as `comments[].guid`.
pub fn order_present(order: &Value) -> Vec<String> {
    super::unread_fields(order, &["config".to_string()])
}

/// The elements of a DiagnosticReport that hold a value, as `resource.code.text`.
pub fn diagnostic_report_present(report: &Value) -> Vec<String> {
    super::unread_fields(
        &json!({ "resource": report }),
        &["resource.resourceType".to_string()],
    )
}

/// The HL7 fields of an ORU^R01 that hold a value (`PID-5`), as [`oru`] names them.
pub fn oru_present(text: &str) -> Vec<String> {
    positions(text, &[])
}

/// The positions of `text` holding a value that `reads` do not cover.
fn positions(text: &str, reads: &[Path]) -> Vec<String> {
    let Ok(msg) = er7::Message::parse(text) else {
        return Vec::new();
    };
    let d = msg.delimiters();
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for seg in msg.segments() {
        let id = seg.id();
        let of_field = |n: u16| {
            reads
                .iter()
                .filter(move |p| p.segment_id() == id && p.field == n)
        };
        for n in 1u16.. {
            let Some(raw) = seg.field(n) else { break };
            if raw.trim().is_empty()
                || (id == "MSH" && MSH_READ_BY_THE_BRIDGE.contains(&n))
                || (n == 1 && SET_ID_SEGMENTS.contains(&id))
                || of_field(n).any(|p| p.component.is_none())
            {
                continue;
            }
            let read_components: Vec<u16> = of_field(n).filter_map(|p| p.component).collect();
            if read_components.is_empty() {
                push(format!("{id}-{n}"));
                continue;
            }
            // Some components are read: name the others that hold a value.
            let first_rep = raw.split(d.repetition as char).next().unwrap_or("");
            for (i, c) in first_rep.split(d.component as char).enumerate() {
                let c_no = i as u16 + 1;
                if !c.trim().is_empty() && !read_components.contains(&c_no) {
                    push(format!("{id}-{n}.{c_no}"));
                }
            }
        }
    }
    out
}
