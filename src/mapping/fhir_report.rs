//! The bridge's reading of a FHIR DiagnosticReport, given to `input: diagnostic_report`
//! mappings as `read.*` next to the resource itself.
//!
//! Some of what a report says cannot be had with a path: `presentedForm` is base64 in a
//! charset named by its content type, possibly HTML; a `basedOn` reference may point at a
//! contained ServiceRequest (`#sr1`) or at `ServiceRequest/{id}` (relative or absolute,
//! with or without `_history`); `resultsInterpreter` may point at a contained Practitioner.
//! The reader resolves these once; the mapping file decides which of them to use and in
//! which order (see `mappings/diagnostic_report_to_report.yaml`). An identifier counts as
//! an appointment id only with the bridge's placer-order system (`placerIdentifierSystem`
//! in the mapping values, default `urn:qubs:appointment`): a report's own id in some other
//! system is never taken for one.
//!
//! `read` holds, each absent when not found:
//!
//! | field | what |
//! |---|---|
//! | `read.text` | the report text: the first `text/plain` presentedForm with data (trailing whitespace dropped), else the first `text/html` / `application/xhtml(+xml)` one as plain text |
//! | `read.textSource` | where `read.text` came from, e.g. `presentedForm[1] (text/html)` |
//! | `read.conclusionNotInText` | `conclusion`, when there is a `read.text` that does not already contain it (case and spacing ignored) |
//! | `read.pdfCount` | how many `application/pdf` presentedForms carry data (each becomes a report attachment) |
//! | `read.appointment.basedOnIdentifier` | `basedOn[].identifier.value` with the placer system |
//! | `read.appointment.containedServiceRequest` | the placer-system identifier of the contained ServiceRequest a `basedOn` reference (`#id`) points at |
//! | `read.appointment.serviceRequestId` | `{id}` of a `basedOn[].reference` to `ServiceRequest/{id}` |
//! | `read.appointment.reportIdentifier` | `identifier[].value` with the placer system |
//! | `read.interpreter.name` | the contained Practitioner a `resultsInterpreter` points at: `name.text`, else prefix, given, family, suffix; else the reference's `display` |
//! | `read.interpreter.providerNumber` | that Practitioner's identifier with the provider-number system (`providerNumberSystem`, default `urn:qubs:provider-number`), else its first identifier; else the reference's `identifier.value` |
//!
//! Reading never fails on content it does not use; it fails (naming the element) on
//! presentedForm data that is not base64 or HTML that cannot be read. Other observations
//! (a PDF or a form given only by URL) are returned as warnings, without values.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::MapError;

/// Default of `placerIdentifierSystem` (the system the bridge's own orders carry).
pub const DEFAULT_PLACER_SYSTEM: &str = "urn:qubs:appointment";
/// Default of `providerNumberSystem`.
pub const DEFAULT_PROVIDER_SYSTEM: &str = "urn:qubs:provider-number";

/// Every `read.*` path a mapping may name (checked at load time like resource paths).
pub const READ_FIELDS: &[&str] = &[
    "read",
    "read.text",
    "read.textSource",
    "read.conclusionNotInText",
    "read.pdfCount",
    "read.appointment",
    "read.appointment.basedOnIdentifier",
    "read.appointment.containedServiceRequest",
    "read.appointment.serviceRequestId",
    "read.appointment.reportIdentifier",
    "read.interpreter",
    "read.interpreter.name",
    "read.interpreter.providerNumber",
];

/// The `read` object and the warnings of reading `report`.
pub fn read(report: &Value, config: &Value) -> Result<(Value, Vec<String>), MapError> {
    let system = |key: &str, default: &str| -> String {
        config
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(default)
            .trim()
            .to_string()
    };
    let placer = system("placerIdentifierSystem", DEFAULT_PLACER_SYSTEM);
    let provider = system("providerNumberSystem", DEFAULT_PROVIDER_SYSTEM);
    let mut warnings = Vec::new();
    let mut out = Map::new();

    if let Some((text, source)) = presented_text(report, &mut warnings)? {
        if let Some(c) = str_at(report, "conclusion")
            && !normalized(&text).contains(&normalized(c))
        {
            out.insert("conclusionNotInText".into(), json!(c.trim()));
        }
        out.insert("text".into(), json!(text));
        out.insert("textSource".into(), json!(source));
    }

    let pdfs = list(report, "presentedForm")
        .iter()
        .filter(|f| media_type(str_at(f, "contentType").unwrap_or("")).0 == "application/pdf")
        .filter(|f| str_at(f, "data").is_some_and(|d| !d.trim().is_empty()))
        .count();
    if pdfs > 0 {
        out.insert("pdfCount".into(), json!(pdfs));
    }

    let mut appointment = Map::new();
    let based_on = list(report, "basedOn");
    if let Some(v) = based_on
        .iter()
        .filter_map(|r| r.get("identifier"))
        .find_map(|i| identifier_value(i, &placer))
    {
        appointment.insert("basedOnIdentifier".into(), json!(v));
    }
    if let Some(v) = based_on
        .iter()
        .filter_map(|r| contained(report, r, "ServiceRequest"))
        .find_map(|sr| {
            list(sr, "identifier")
                .iter()
                .find_map(|i| identifier_value(i, &placer))
        })
    {
        appointment.insert("containedServiceRequest".into(), json!(v));
    }
    if let Some(v) = based_on
        .iter()
        .filter_map(|r| str_at(r, "reference"))
        .find_map(|r| reference_id(r, "ServiceRequest"))
    {
        appointment.insert("serviceRequestId".into(), json!(v));
    }
    if let Some(v) = list(report, "identifier")
        .iter()
        .find_map(|i| identifier_value(i, &placer))
    {
        appointment.insert("reportIdentifier".into(), json!(v));
    }
    if !appointment.is_empty() {
        out.insert("appointment".into(), Value::Object(appointment));
    }

    let mut interpreter = Map::new();
    for r in list(report, "resultsInterpreter") {
        let practitioner = contained(report, r, "Practitioner");
        let name = practitioner
            .and_then(practitioner_name)
            .or_else(|| str_at(r, "display").map(|d| d.trim().to_string()))
            .filter(|n| !n.is_empty());
        let number = practitioner
            .and_then(|p| {
                let ids = list(p, "identifier");
                ids.iter()
                    .find_map(|i| identifier_value(i, &provider))
                    .or_else(|| ids.iter().find_map(|i| str_at(i, "value").map(str::trim)))
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
            })
            .or_else(|| {
                r.get("identifier")
                    .and_then(|i| str_at(i, "value"))
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
            });
        if name.is_none() && number.is_none() {
            continue;
        }
        if let Some(n) = name {
            interpreter.insert("name".into(), json!(n));
        }
        if let Some(n) = number {
            interpreter.insert("providerNumber".into(), json!(n));
        }
        break;
    }
    if !interpreter.is_empty() {
        out.insert("interpreter".into(), Value::Object(interpreter));
    }
    Ok((Value::Object(out), warnings))
}

/// A presentedForm's media type (lower case, no parameters) and its `charset` parameter.
pub fn media_type(content_type: &str) -> (String, Option<String>) {
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').to_string())
    });
    (mime, charset)
}

fn is_html(mime: &str) -> bool {
    matches!(
        mime,
        "text/html" | "application/xhtml+xml" | "application/xhtml" | "text/xhtml"
    )
}

/// The text of the preferred presentedForm, with where it came from.
fn presented_text(
    report: &Value,
    warnings: &mut Vec<String>,
) -> Result<Option<(String, String)>, MapError> {
    let forms = list(report, "presentedForm");
    let mut plain = None;
    let mut html = None;
    for (i, form) in forms.iter().enumerate() {
        let (mime, _) = media_type(str_at(form, "contentType").unwrap_or(""));
        let has_data = str_at(form, "data").is_some_and(|d| !d.trim().is_empty());
        let shown = if mime.is_empty() {
            "no contentType"
        } else {
            mime.as_str()
        };
        if !has_data {
            if str_at(form, "url").is_some() {
                warnings.push(format!(
                    "presentedForm[{i}] ({shown}) has a url but no data; the bridge does not fetch it"
                ));
            }
            continue;
        }
        if mime == "text/plain" && plain.is_none() {
            plain = Some(i);
        } else if is_html(&mime) && html.is_none() {
            html = Some(i);
        } else if mime != "application/pdf" && mime != "text/plain" && !is_html(&mime) {
            warnings.push(format!(
                "presentedForm[{i}] ({shown}) is not text, HTML or PDF; not used"
            ));
        }
    }
    let Some(i) = plain.or(html) else {
        return Ok(None);
    };
    let form = forms[i];
    let element = format!("presentedForm[{i}]");
    let (mime, charset) = media_type(str_at(form, "contentType").unwrap_or(""));
    let data = str_at(form, "data").unwrap_or("");
    let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|_| MapError::Value {
            rule: format!("{element}.data"),
            reason: "not valid base64".into(),
        })?;
    let text = decode_text(&bytes, charset.as_deref(), &element, warnings);
    let text = if is_html(&mime) {
        super::html_text::to_plain_text(&text).map_err(|reason| MapError::Value {
            rule: format!("{element}.data"),
            reason,
        })?
    } else {
        // Trailing line breaks are not content (and would double before an appended
        // conclusion).
        text.trim_end().to_string()
    };
    Ok(Some((text, format!("{element} ({mime})"))))
}

/// Attachment bytes as text: the declared charset, else UTF-8, else Windows-1252 (said).
fn decode_text(
    bytes: &[u8],
    charset: Option<&str>,
    element: &str,
    warnings: &mut Vec<String>,
) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if let Some(enc) = charset.and_then(|c| encoding_rs::Encoding::for_label(c.as_bytes())) {
        let (text, _, had_errors) = enc.decode(bytes);
        if !had_errors {
            return text.into_owned();
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(t) => t.to_string(),
        Err(e) => {
            warnings.push(format!(
                "{element}: not valid UTF-8 (first invalid byte at offset {}) and no usable \
                 charset in contentType; read as Windows-1252",
                e.valid_up_to()
            ));
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
                .into_owned()
        }
    }
}

/// Text compared for "already contains": lower case, runs of whitespace as one space.
fn normalized(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn list<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    match v.get(key) {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Object(_)) => vec![&v[key]],
        _ => Vec::new(),
    }
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// An Identifier's value when its system is `system` (compared exactly, trimmed).
fn identifier_value<'a>(identifier: &'a Value, system: &str) -> Option<&'a str> {
    let s = str_at(identifier, "system")?.trim();
    let v = str_at(identifier, "value")?.trim();
    (s == system && !v.is_empty()).then_some(v)
}

/// The contained resource of type `kind` a Reference (`{"reference": "#id"}`) points at.
fn contained<'a>(report: &'a Value, reference: &Value, kind: &str) -> Option<&'a Value> {
    let id = str_at(reference, "reference")?.trim().strip_prefix('#')?;
    list(report, "contained").into_iter().find(|c| {
        str_at(c, "resourceType") == Some(kind) && str_at(c, "id").map(str::trim) == Some(id)
    })
}

/// `{id}` of a literal reference to `kind`: `Kind/{id}`, `https://host/fhir/Kind/{id}`, each
/// optionally followed by `/_history/{v}`. `None` for other types, contained (`#`) and
/// logical references.
pub fn reference_id<'a>(reference: &'a str, kind: &str) -> Option<&'a str> {
    let r = reference.trim();
    let r = match r.find("/_history/") {
        Some(p) => &r[..p],
        None => r,
    };
    let (before, id) = r.rsplit_once('/')?;
    let resource_type = before.rsplit('/').next()?;
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    (resource_type == kind && id_ok).then_some(id)
}

/// A Practitioner's display name from its first usable HumanName.
fn practitioner_name(p: &Value) -> Option<String> {
    let names = list(p, "name");
    let name = names
        .iter()
        .find(|n| str_at(n, "use") == Some("official"))
        .or_else(|| names.first())?;
    if let Some(t) = str_at(name, "text")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_string());
    }
    let words = |key: &str| -> Vec<String> {
        list(name, key)
            .iter()
            .filter_map(|v| v.as_str())
            .chain(str_at(name, key))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let parts: Vec<String> = [
        words("prefix"),
        words("given"),
        words("family"),
        words("suffix"),
    ]
    .concat();
    (!parts.is_empty()).then(|| parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn references() {
        assert_eq!(
            reference_id("ServiceRequest/A100", "ServiceRequest"),
            Some("A100")
        );
        assert_eq!(
            reference_id(
                "https://x.org/fhir/ServiceRequest/A-1/_history/3",
                "ServiceRequest"
            ),
            Some("A-1")
        );
        assert_eq!(reference_id("Patient/1", "ServiceRequest"), None);
        assert_eq!(reference_id("#sr1", "ServiceRequest"), None);
        assert_eq!(reference_id("ServiceRequest/", "ServiceRequest"), None);
    }

    #[test]
    fn text_prefers_plain_then_html_and_keeps_an_unseen_conclusion() {
        let r = json!({
            "conclusion": "No  acute ABNORMALITY.",
            "presentedForm": [
                {"contentType": "application/pdf", "data": b64("%PDF-1.4")},
                {"contentType": "text/html; charset=utf-8", "data": b64("<p>Findings</p><p>no acute abnormality.</p>")},
                {"contentType": "application/pdf", "url": "http://x/report.pdf"}
            ]
        });
        let (v, w) = read(&r, &Value::Null).unwrap();
        assert_eq!(v["text"], "Findings\n\nno acute abnormality.");
        assert_eq!(v["textSource"], "presentedForm[1] (text/html)");
        assert!(
            v.get("conclusionNotInText").is_none(),
            "contained, ignoring case and spacing"
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("presentedForm[2]"));
        let r = json!({
            "conclusion": "Impression: normal.",
            "presentedForm": [{"contentType": "text/plain", "data": b64("Full report.")}]
        });
        let (v, _) = read(&r, &Value::Null).unwrap();
        assert_eq!(v["conclusionNotInText"], "Impression: normal.");
        // Only a conclusion: no text, nothing to append to.
        let (v, _) = read(&json!({"conclusion": "x"}), &Value::Null).unwrap();
        assert_eq!(v, json!({}));
    }

    #[test]
    fn eight_bit_text_without_charset_is_windows_1252() {
        let data = base64::engine::general_purpose::STANDARD.encode(b"Caf\xe9 \x96 ok");
        let r = json!({"presentedForm": [{"contentType": "text/plain", "data": data}]});
        let (v, w) = read(&r, &Value::Null).unwrap();
        assert_eq!(v["text"], "Café – ok");
        assert!(w[0].contains("Windows-1252"));
        let latin9 = json!({"presentedForm": [{"contentType": "text/plain;charset=ISO-8859-15",
            "data": base64::engine::general_purpose::STANDARD.encode(b"\xa4")}]});
        assert_eq!(read(&latin9, &Value::Null).unwrap().0["text"], "€");
        let bad = json!({"presentedForm": [{"contentType": "text/plain", "data": "***"}]});
        let e = read(&bad, &Value::Null).unwrap_err().to_string();
        assert!(
            e.contains("presentedForm[0].data") && e.contains("base64"),
            "{e}"
        );
    }

    #[test]
    fn appointment_candidates_only_with_the_placer_system() {
        let r = json!({
            "contained": [
                {"resourceType": "ServiceRequest", "id": "sr1",
                 "identifier": [{"system": "urn:other", "value": "X9"},
                                {"system": "urn:qubs:appointment", "value": "A200"}]},
                {"resourceType": "Practitioner", "id": "pr1",
                 "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1730152098"}],
                 "name": [{"family": "Williams", "given": ["Sarah", "K"], "prefix": ["Dr"]}]}
            ],
            "basedOn": [{"reference": "#sr1"}, {"reference": "ServiceRequest/A300"},
                        {"identifier": {"system": "urn:qubs:appointment", "value": " A100 "}}],
            "identifier": [{"system": "urn:hospital:reports", "value": "R1"},
                           {"system": "urn:qubs:appointment", "value": "A400"}],
            "resultsInterpreter": [{"reference": "#pr1", "display": "ignored"}]
        });
        let (v, _) = read(&r, &Value::Null).unwrap();
        assert_eq!(
            v["appointment"],
            json!({"basedOnIdentifier": "A100", "containedServiceRequest": "A200",
                   "serviceRequestId": "A300", "reportIdentifier": "A400"})
        );
        assert_eq!(
            v["interpreter"],
            json!({"name": "Dr Sarah K Williams", "providerNumber": "1730152098"})
        );
        // Another configured placer system: the default one no longer counts.
        let (v, _) = read(&r, &json!({"placerIdentifierSystem": "urn:other"})).unwrap();
        assert_eq!(v["appointment"]["containedServiceRequest"], "X9");
        assert!(v["appointment"].get("reportIdentifier").is_none());
        // A reference with a display only.
        let r = json!({"resultsInterpreter": [{"reference": "Practitioner/p1", "display": "Dr Ronald Bone"}],
                       "identifier": [{"value": "A1"}]});
        let (v, _) = read(&r, &Value::Null).unwrap();
        assert_eq!(v, json!({"interpreter": {"name": "Dr Ronald Bone"}}));
    }
}
