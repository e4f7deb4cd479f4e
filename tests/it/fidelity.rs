//! Clinical fidelity of the shipped order mappings, checked from the source.
//!
//! For every demo order (the 40 pending appointments of the embedded simulator, fetched
//! over HTTP with the real client and assembled as the service does) and every order
//! input of the golden cases, this test works out on its own what each output must carry
//! — ids, names, exam codes, times with their offsets, comments and alerts, status — and
//! checks it field by field in the ServiceRequest, the DiagnosticReport (JSON) and the
//! ORM^O01 (parsed here with a small ER7 reader of its own). It never compares with a
//! recorded output. It also checks that every input field lands in each output or is
//! listed in the mapping file as deliberately not sent.
//!
//! `QUBS_FIDELITY_DUMP=dir` writes every output to `dir`, for the independent validator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use jiff::tz::TimeZone;
use qubs_bridge::config::Settings;
use qubs_bridge::mapping::{Body, FieldFate, MapOptions, MappingSet};
use qubs_bridge::orders::{Include, Order};
use qubs_bridge::simulator::{Simulator, demo_clinicians, demo_patients};
use serde_json::Value;

use crate::common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn mappings() -> MappingSet {
    MappingSet::load_dir(root().join("mappings")).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------
// What the source says, worked out here.

/// The LOINC code each exam of the demo and the golden cases must carry, looked up by
/// hand in LOINC (long common name), and the modality-level codes for orders without an
/// exam code.
fn exam_loinc(code: &str) -> Option<(&'static str, &'static str)> {
    Some(match code.trim().to_uppercase().as_str() {
        "CTBRN" => ("30799-1", "CT Head WO contrast"),
        "MRKNL" => ("26257-6", "MR Knee - left"),
        "XRCHE" => ("36643-5", "XR Chest 2 Views"),
        "USABD" => ("24558-9", "US Abdomen"),
        "CTPA" => ("36147-7", "CTA Pulmonary arteries W contrast IV"),
        "MRLSP" => ("24968-0", "MR Lumbar spine"),
        "MGBIL" => ("26175-0", "MG Breast - bilateral Screening"),
        "XRANR" => ("46347-1", "XR Ankle - right GE 3 Views"),
        "CTABP" => ("36813-4", "CT Abdomen and Pelvis W contrast IV"),
        "USTHY" => ("25010-0", "US Thyroid gland"),
        "CTCHC" => ("24628-0", "CT Chest W contrast IV"),
        _ => return None,
    })
}

fn modality_loinc(modality: &str) -> Option<(&'static str, &'static str)> {
    Some(match modality.trim().to_uppercase().as_str() {
        "CT" => ("25045-6", "CT Unspecified body region"),
        "MR" | "MRI" => ("25056-3", "MR Unspecified body region"),
        "US" => ("25061-3", "US Unspecified body region"),
        "XR" | "CR" | "DX" => ("43468-8", "XR Unspecified body region Views"),
        "NM" => ("49118-3", "NM Unspecified body region Views"),
        "PT" | "PET" => ("44136-0", "PT Unspecified body region"),
        _ => return None,
    })
}

/// OBR-24 for a modality: the HL7 table 0074 (Diagnostic Service Section ID) code,
/// worked out here from the table (CT CAT scan, NMR nuclear magnetic resonance, RUS
/// radiology ultrasound, RX radiograph, NMS nuclear medicine scan, RAD radiology); a
/// modality without a closer section is RAD.
fn diagnostic_service(modality: &str) -> &'static str {
    match modality.trim().to_uppercase().as_str() {
        "CT" => "CT",
        "MR" | "MRI" => "NMR",
        "US" => "RUS",
        "XR" | "CR" | "DX" | "MG" => "RX",
        "NM" | "PT" | "PET" | "PET-CT" => "NMS",
        _ => "RAD",
    }
}

/// Every code of HL7 table 0074 that a radiology order can carry.
const TABLE_0074_IMAGING: &[&str] = &[
    "CT", "CTH", "CUS", "NMR", "NMS", "OUS", "RAD", "RUS", "RX", "VUS", "XRC",
];

/// (ServiceRequest.status, DiagnosticReport.status, ORC-1 without a feed event, ORC-5).
fn expected_status(status: &str) -> (&'static str, &'static str, &'static str, &'static str) {
    match status.trim().to_uppercase().as_str() {
        "APPPOINTMENT CANCELLED" | "APPOINTMENT CANCELLED" => ("revoked", "cancelled", "CA", "CA"),
        "DID NOT ATTEND" => ("revoked", "cancelled", "DC", "DC"),
        "AUTHORISED" | "FINALISED" => ("completed", "final", "SC", "CM"),
        "DICTATION INPROGRESS" | "DICTATED" | "TYPING INPROGRESS" => {
            ("active", "partial", "NW", "IP")
        }
        "TYPED" | "REVIEW TYPED" | "AUTHORISING" | "SECOND REVIEW" | "PEER REVIEW"
        | "SECOND OPINION" => ("active", "preliminary", "NW", "IP"),
        "NOT ARRIVED" | "ARRIVED" | "CANCELLATION LIST" => ("active", "registered", "NW", "SC"),
        _ => ("active", "registered", "NW", "IP"),
    }
}

/// (FHIR request-priority, HL7 priority) for QUBS's free-text priority; none for a blank
/// one (both standards read a missing priority as routine).
fn expected_priority(p: &str) -> Option<(&'static str, &'static str)> {
    Some(match p.trim().to_lowercase().as_str() {
        "" => return None,
        "urgent" => ("urgent", "A"),
        "urgent - same day" | "same day" | "asap" => ("asap", "A"),
        "stat" | "emergency" => ("stat", "S"),
        _ => ("routine", "R"),
    })
}

/// A person's name parts as the source means them: (title, given names, family).
#[derive(Debug, Clone, PartialEq)]
struct Person {
    title: String,
    given: String,
    family: String,
}

fn person(title: &str, given: &str, family: &str) -> Person {
    Person {
        title: title.into(),
        given: given.into(),
        family: family.into(),
    }
}

fn words(s: &str) -> Vec<String> {
    s.split([' ', ',', '^'])
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// `part` as the source spells it (the source may upper-case a family name).
fn cased(name: &str, part: &str) -> String {
    let src: Vec<&str> = name
        .split([' ', ',', '^'])
        .filter(|w| !w.is_empty())
        .collect();
    let k = part.split_whitespace().count();
    if k == 0 {
        return String::new();
    }
    src.windows(k)
        .map(|w| w.join(" "))
        .find(|w| w.to_lowercase() == part.to_lowercase())
        .unwrap_or_else(|| part.to_string())
}

/// The intended parts of a single-field name: a demo person whose words are exactly the
/// name's, or a golden-case name read by hand.
fn intended(name: &str, people: &[Person]) -> Person {
    let mut w = words(name);
    w.sort();
    for p in people {
        let mut pw = words(&format!("{} {} {}", p.title, p.given, p.family));
        pw.sort();
        let title = if pw == w {
            Some(p.title.as_str())
        } else {
            let mut pw = words(&format!("{} {}", p.given, p.family));
            pw.sort();
            (pw == w).then_some("")
        };
        if let Some(t) = title {
            return person(t, &cased(name, &p.given), &cased(name, &p.family));
        }
    }
    match name.trim() {
        "Mrs Jane Mary O'Brien" => person("Mrs", "Jane Mary", "O'Brien"),
        "SMITH, John" => person("", "John", "SMITH"),
        "Zoë Ñúñez-Müller" => person("", "Zoë", "Ñúñez-Müller"),
        "Dr Alan Grant" => person("Dr", "Alan", "Grant"),
        "Dr Søren Kierkegaard" => person("Dr", "Søren", "Kierkegaard"),
        "Dr Ellie Sattler" => person("Dr", "Ellie", "Sattler"),
        "Māui Te Rangi" => person("", "Māui", "Te Rangi"),
        "Dr Tomás Ó Súilleabháin" => person("Dr", "Tomás", "Ó Súilleabháin"),
        "Prof Pieter van der Berg" => person("Prof", "Pieter", "van der Berg"),
        other => panic!("no intended reading for the name {other:?}: add it to the test"),
    }
}

fn people() -> Vec<Person> {
    let mut v: Vec<Person> = demo_patients()
        .iter()
        .map(|(f, g)| person("", g, f))
        .collect();
    v.extend(demo_clinicians().iter().map(|(t, g, f)| person(t, g, f)));
    v
}

fn s<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn nonblank(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
}

/// The expected start and end of an appointment: site-local date and times in the site's
/// zone; a time in a DST gap moves forward by the gap, one in an overlap takes the earlier
/// offset; an end clock time before the start's is the next day, and an end that would
/// fall on or before its (gap-shifted) start keeps the booked length.
fn expected_times(
    date: &str,
    start: &str,
    end: Option<&str>,
    zone: &TimeZone,
) -> (jiff::ZonedDateTime, Option<jiff::ZonedDateTime>) {
    let d: jiff::civil::Date = date.parse().unwrap();
    let st: jiff::civil::Time = start.parse().unwrap();
    let local_start = d.to_datetime(st);
    let z_start = zone
        .to_ambiguous_zoned_datetime(local_start)
        .compatible()
        .unwrap();
    let z_end = end.map(|e| {
        let et: jiff::civil::Time = e.parse().unwrap();
        let mut local_end = d.to_datetime(et);
        if local_end < local_start {
            local_end = local_end.checked_add(jiff::Span::new().days(1)).unwrap();
        }
        let plain = zone
            .to_ambiguous_zoned_datetime(local_end)
            .compatible()
            .unwrap();
        if plain.timestamp() > z_start.timestamp() || local_end == local_start {
            plain
        } else {
            let booked = local_start.until(local_end).unwrap();
            z_start.checked_add(booked).unwrap()
        }
    });
    (z_start, z_end)
}

fn hl7_ts(z: &jiff::ZonedDateTime) -> String {
    z.strftime("%Y%m%d%H%M%S%z").to_string()
}

fn fhir_ts(z: &jiff::ZonedDateTime) -> String {
    z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// A comment as every output must carry it.
#[derive(Debug, Clone, PartialEq)]
struct Note {
    text: String,
    alert: bool,
    patient_level: bool,
    time: Option<String>,
}

/// Comments with text, patient-level first, then order-level, each in QUBS's order.
fn expected_notes(doc: &Value) -> Vec<Note> {
    let comments = doc["comments"].as_array().cloned().unwrap_or_default();
    let read = |c: &Value| {
        let kind = s(c, "commentType").trim().to_uppercase();
        let alert = c["isAlert"] == Value::Bool(true)
            || s(c, "isAlert").eq_ignore_ascii_case("true")
            || kind == "AA"
            || kind == "PA";
        nonblank(c, "commentText").map(|text| Note {
            text,
            alert,
            patient_level: kind == "PC" || kind == "PA",
            time: nonblank(c, "commentDateTime").map(|t| {
                t.parse::<jiff::Timestamp>()
                    .map(|ts| ts.to_string())
                    .unwrap_or(t)
            }),
        })
    };
    let all: Vec<Note> = comments.iter().filter_map(read).collect();
    let (patient, order): (Vec<Note>, Vec<Note>) = all.into_iter().partition(|n| n.patient_level);
    patient.into_iter().chain(order).collect()
}

// ---------------------------------------------------------------------------------------
// A small ER7 reader, independent of the bridge's own.

struct Er7 {
    segments: Vec<Vec<String>>,
}

impl Er7 {
    fn parse(text: &str) -> Er7 {
        assert!(text.ends_with('\r'), "segments end with CR");
        assert!(!text.contains('\n'), "no LF in an ER7 message");
        Er7 {
            segments: text
                .split('\r')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let mut f: Vec<String> = l.split('|').map(str::to_string).collect();
                    if f[0] == "MSH" {
                        // MSH-1 is the field separator itself.
                        f.insert(1, "|".into());
                    }
                    f
                })
                .collect(),
        }
    }

    fn ids(&self) -> Vec<&str> {
        self.segments.iter().map(|s| s[0].as_str()).collect()
    }

    fn seg(&self, id: &str) -> &Vec<String> {
        self.segments
            .iter()
            .find(|s| s[0] == id)
            .unwrap_or_else(|| panic!("no {id}"))
    }

    /// Raw field `n` of a segment (`""` when absent).
    fn raw(seg: &[String], n: usize) -> &str {
        seg.get(n).map_or("", String::as_str)
    }

    /// Component `c` (1-based) of field `n`, sub-component `sc`, unescaped.
    fn get(seg: &[String], n: usize, c: usize, sc: usize) -> String {
        let f = Self::raw(seg, n);
        let comp = f.split('^').nth(c - 1).unwrap_or("");
        unescape(comp.split('&').nth(sc - 1).unwrap_or(""))
    }
}

fn unescape(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(p) = rest.find('\\') {
        out.push_str(&rest[..p]);
        let after = &rest[p + 1..];
        let end = after.find('\\').expect("escape sequence is closed");
        let esc = &after[..end];
        match esc {
            "F" => out.push('|'),
            "S" => out.push('^'),
            "T" => out.push('&'),
            "R" => out.push('~'),
            "E" => out.push('\\'),
            ".br" => out.push('\n'),
            x if x.starts_with('X') => {
                let bytes: Vec<u8> = (1..x.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&x[i..i + 2], 16).unwrap())
                    .collect();
                out.push_str(&String::from_utf8(bytes).unwrap());
            }
            other => panic!("unexpected escape \\{other}\\"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------
// The inputs.

async fn demo_orders() -> Vec<Value> {
    let f = common::start(Simulator::demo(), &[]).await;
    let pending: Vec<_> = f
        .client
        .pending_appointments("acme")
        .try_collect()
        .await
        .unwrap();
    let config = Settings::load_unchecked(None, Vec::<(String, String)>::new())
        .unwrap()
        .mappings
        .values;
    let mut docs = Vec::new();
    for a in pending {
        let order = Order::assemble(
            &f.client,
            "acme",
            a,
            Include {
                comments: true,
                attachments: true,
            },
        )
        .await
        .unwrap();
        docs.push(order.to_json(&config));
    }
    docs.sort_by(|a, b| {
        s(&a["appointment"], "appointmentId").cmp(s(&b["appointment"], "appointmentId"))
    });
    docs
}

fn golden_orders() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root().join("mappings/tests")).unwrap() {
        let dir = e.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("order-") {
            continue;
        }
        let text = std::fs::read_to_string(dir.join("order.json")).unwrap();
        out.push((name, serde_json::from_str(&text).unwrap()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

// ---------------------------------------------------------------------------------------
// The checks.

struct Outputs {
    sr: Result<Value, String>,
    dr: Result<Value, String>,
    orm: Result<String, String>,
}

fn map_all(set: &MappingSet, doc: &Value, dump: Option<(&Path, &str)>) -> Outputs {
    let opts = MapOptions {
        now: Some(
            "2026-11-20T10:00:00+11:00[Australia/Sydney]"
                .parse()
                .unwrap(),
        ),
        control_id: Some("FIDELITY01".into()),
        ..MapOptions::default()
    };
    let fhir = |name: &str| {
        set.map_order_with(name, doc, &opts)
            .map(|o| match o.body {
                Body::Fhir(v) => v,
                Body::Hl7(_) => panic!("FHIR expected"),
            })
            .map_err(|e| e.to_string())
    };
    let out = Outputs {
        sr: fhir("service_request"),
        dr: fhir("diagnostic_report"),
        orm: set
            .map_order_with("orm_o01", doc, &opts)
            .map(|o| match o.body {
                Body::Hl7(t) => t,
                Body::Fhir(_) => panic!("HL7 expected"),
            })
            .map_err(|e| e.to_string()),
    };
    if let Some((dir, stem)) = dump {
        std::fs::create_dir_all(dir).unwrap();
        if let Ok(v) = &out.sr {
            std::fs::write(
                dir.join(format!("{stem}.sr.json")),
                serde_json::to_string_pretty(v).unwrap(),
            )
            .unwrap();
        }
        if let Ok(v) = &out.dr {
            std::fs::write(
                dir.join(format!("{stem}.dr.json")),
                serde_json::to_string_pretty(v).unwrap(),
            )
            .unwrap();
        }
        if let Ok(t) = &out.orm {
            std::fs::write(dir.join(format!("{stem}.orm.hl7")), t).unwrap();
        }
    }
    out
}

/// Every leaf of the order document (as a shape key), config excepted: configuration is
/// not source data.
fn leaves(v: &Value, key: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let nk = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                if nk != "config" {
                    leaves(x, nk, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| leaves(x, format!("{key}[]"), out)),
        Value::Null => {}
        Value::String(s) if s.trim().is_empty() => {}
        _ => out.push(key),
    }
}

/// Every identifier in a FHIR resource has a value.
fn identifiers_have_values(v: &Value, path: &str, failures: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}.{k}");
                if k == "identifier" {
                    let ids: Vec<&Value> = match x {
                        Value::Array(a) => a.iter().collect(),
                        other => vec![other],
                    };
                    for id in ids {
                        if nonblank(id, "value").is_none() {
                            failures.push(format!("{p}: identifier without a value"));
                        }
                    }
                }
                identifiers_have_values(x, &p, failures);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                identifiers_have_values(x, &format!("{path}[{i}]"), failures);
            }
        }
        _ => {}
    }
}

fn contained<'v>(r: &'v Value, id: &str) -> Option<&'v Value> {
    r["contained"].as_array()?.iter().find(|c| s(c, "id") == id)
}

/// Checks one order; returns what does not match, each naming the order and the field.
fn check_order(
    set: &MappingSet,
    label: &str,
    doc: &Value,
    people: &[Person],
    dump: Option<&Path>,
) -> Vec<String> {
    let mut bad: Vec<String> = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            bad.push(format!("{label}: {what}"));
        }
    };
    let a = &doc["appointment"];
    let out = map_all(set, doc, dump.map(|d| (d, label)));

    // Orders the mappings must refuse, and why.
    let appointment_id = nonblank(a, "appointmentId");
    let zone_name = doc["site"]["timeZone"].as_str().unwrap_or("");
    let zone = jiff::tz::db().get(zone_name).ok();
    if appointment_id.is_none() {
        for (name, r) in [
            ("service_request", out.sr.as_ref().err()),
            ("diagnostic_report", out.dr.as_ref().err()),
            ("orm_o01", out.orm.as_ref().err()),
        ] {
            expect(
                r.is_some_and(|e| e.contains("appointment.appointmentId")),
                format!("{name} must refuse an order without appointmentId, naming it: {r:?}"),
            );
        }
        return bad;
    }
    if !zone_name.is_empty() && zone.is_none() {
        for r in [
            out.sr.as_ref().err(),
            out.dr.as_ref().err(),
            out.orm.as_ref().err(),
        ] {
            expect(
                r.is_some_and(|e| e.contains("site.timeZone")),
                format!("an unknown time zone must be refused naming site.timeZone: {r:?}"),
            );
        }
        return bad;
    }
    let patient_id = nonblank(a, "patientId");
    let sr = out
        .sr
        .unwrap_or_else(|e| panic!("{label}: service_request: {e}"));
    let dr = out
        .dr
        .unwrap_or_else(|e| panic!("{label}: diagnostic_report: {e}"));
    let orm = match (&patient_id, out.orm) {
        (None, Err(e)) => {
            expect(
                e.contains("appointment.patientId") && e.contains("PID-3.1"),
                format!("the ORM refusal must name PID-3.1 and appointment.patientId: {e}"),
            );
            None
        }
        (None, Ok(_)) => {
            expect(false, "an ORM without a patient id must be refused".into());
            None
        }
        (Some(_), Ok(t)) => Some(Er7::parse(&t)),
        (Some(_), Err(e)) => panic!("{label}: orm_o01: {e}"),
    };
    let id = appointment_id.unwrap();

    // --- Identifiers: never one without a value.
    for (name, r) in [("ServiceRequest", &sr), ("DiagnosticReport", &dr)] {
        let mut f = Vec::new();
        identifiers_have_values(r, name, &mut f);
        for x in f {
            expect(false, x);
        }
    }
    expect(
        sr["identifier"][0]["value"] == id.as_str(),
        "SR identifier = appointmentId".into(),
    );
    expect(
        dr["identifier"][0]["value"] == id.as_str(),
        "DR identifier = appointmentId".into(),
    );
    expect(
        dr["basedOn"][0]["identifier"]["value"] == id.as_str(),
        "DR basedOn = appointmentId".into(),
    );
    for r in [&sr, &dr] {
        expect(
            r["subject"]["reference"] == "#patient",
            "subject -> #patient".into(),
        );
        let patient = contained(r, "patient");
        expect(patient.is_some(), "a contained Patient".into());
        match &patient_id {
            Some(p) => {
                expect(
                    r["subject"]["identifier"]["value"] == p.as_str(),
                    "subject identifier = patientId".into(),
                );
                expect(
                    patient.is_some_and(|pt| pt["identifier"][0]["value"] == p.as_str()),
                    "contained Patient identifier = patientId".into(),
                );
            }
            None => expect(
                r["subject"].get("identifier").is_none(),
                "no subject identifier without a patient id".into(),
            ),
        }
    }

    // --- Status. The FHIR status follows the appointment; the ORM also follows the feed
    // event: an order gone from the pending list is withdrawn (CA), whatever its last
    // status; otherwise a status that closes the order decides, else the event.
    let (sr_status, dr_status, mut orc1, mut orc5) = expected_status(s(a, "status"));
    match s(&doc["event"], "kind") {
        "removed" => (orc1, orc5) = ("CA", "CA"),
        "changed" if orc1 == "NW" => orc1 = "XO",
        _ => {}
    }
    expect(
        sr["status"] == sr_status,
        format!("SR status {} != {sr_status}", sr["status"]),
    );
    expect(
        dr["status"] == dr_status,
        format!("DR status {} != {dr_status}", dr["status"]),
    );

    // --- Patient name, date of birth, sex.
    let pname = nonblank(a, "patientName").expect("patientName");
    let want = intended(&pname, people);
    let dob = nonblank(a, "dateOfBirth").or_else(|| nonblank(a, "patientDateOfBirth"));
    let sex = nonblank(a, "gender")
        .or_else(|| nonblank(a, "patientSex"))
        .map(|g| match g.to_lowercase().as_str() {
            "f" | "female" => ("F", "female"),
            "m" | "male" => ("M", "male"),
            "o" | "other" => ("O", "other"),
            _ => ("U", "unknown"),
        });
    for r in [&sr, &dr] {
        let pt = contained(r, "patient").cloned().unwrap_or(Value::Null);
        let n = &pt["name"][0];
        expect(
            s(n, "family") == want.family,
            format!("Patient family {} != {}", n["family"], want.family),
        );
        let given: Vec<&str> = n["given"]
            .as_array()
            .map(|g| g.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        expect(
            given.join(" ") == want.given,
            format!("Patient given {given:?} != {}", want.given),
        );
        expect(
            pt["birthDate"].as_str() == dob.as_deref(),
            format!("birthDate {} != {dob:?}", pt["birthDate"]),
        );
        expect(
            pt["gender"].as_str() == sex.map(|x| x.1),
            format!("gender {} != {sex:?}", pt["gender"]),
        );
    }

    // --- The exam.
    let exam = a["examCodes"][0]["code"]
        .as_str()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    let exam_text = nonblank(a, "studyDescription")
        .or_else(|| nonblank(&a["examCodes"][0], "description"))
        .or_else(|| nonblank(a, "modality"));
    let loinc = match exam {
        Some(code) => exam_loinc(code),
        None => nonblank(a, "modality").and_then(|m| modality_loinc(&m)),
    };
    for r in [&sr, &dr] {
        let codings = r["code"]["coding"].as_array().cloned().unwrap_or_default();
        expect(
            r["code"]["text"].as_str().map(str::to_string) == exam_text || exam_text.is_none(),
            "code.text = study description".into(),
        );
        let local: Vec<&Value> = codings
            .iter()
            .filter(|c| s(c, "system") == "urn:qubs:exam-code")
            .collect();
        let ln: Vec<&Value> = codings
            .iter()
            .filter(|c| s(c, "system") == "http://loinc.org")
            .collect();
        match exam {
            Some(code) => {
                expect(
                    local.len() == 1 && s(local[0], "code") == code,
                    format!("exam code {code} as the first coding: {codings:?}"),
                );
                expect(
                    codings.first().is_some_and(|c| s(c, "code") == code),
                    "the exam code comes first".into(),
                );
            }
            None => expect(
                local.is_empty(),
                "no local coding without an exam code".into(),
            ),
        }
        match loinc {
            Some((c, d)) => expect(
                ln.len() == 1 && s(ln[0], "code") == c && s(ln[0], "display") == d,
                format!("LOINC {c} ({d}) expected: {ln:?}"),
            ),
            None => expect(ln.is_empty(), format!("no LOINC coding expected: {ln:?}")),
        }
    }

    // --- Times.
    let start = nonblank(a, "startTime");
    let end = nonblank(a, "endTime");
    let times = match (&zone, nonblank(a, "appointmentDate"), &start) {
        (Some(z), Some(d), Some(st)) => Some(expected_times(&d, st, end.as_deref(), z)),
        _ => None,
    };
    if times.is_none() {
        // No start time: the date alone, and no end anywhere.
        let date = nonblank(a, "appointmentDate");
        expect(
            sr["occurrenceDateTime"].as_str() == date.as_deref(),
            "SR occurrenceDateTime = the date".into(),
        );
        expect(
            dr["effectiveDateTime"].as_str() == date.as_deref(),
            "DR effectiveDateTime = the date".into(),
        );
        expect(
            sr.get("occurrencePeriod").is_none() && dr.get("effectivePeriod").is_none(),
            "no period without a start".into(),
        );
    }
    if let Some((zs, ze)) = &times {
        if let Some(ze) = ze {
            expect(
                ze.timestamp() >= zs.timestamp(),
                "the end is not before the start".into(),
            );
        }
        for (name, period) in [
            ("SR occurrencePeriod", &sr["occurrencePeriod"]),
            ("DR effectivePeriod", &dr["effectivePeriod"]),
        ] {
            expect(
                period["start"] == fhir_ts(zs),
                format!("{name}.start {} != {}", period["start"], fhir_ts(zs)),
            );
            let want_end = ze.as_ref().map(fhir_ts);
            expect(
                period["end"].as_str().map(str::to_string) == want_end,
                format!("{name}.end {} != {want_end:?}", period["end"]),
            );
        }
    }

    // --- Priority.
    let prio = expected_priority(s(a, "priority"));
    let (fhir_prio, hl7_prio) = prio.unwrap_or_default();
    expect(
        sr["priority"].as_str() == prio.map(|p| p.0),
        format!("SR priority {} != {fhir_prio}", sr["priority"]),
    );

    // --- Referrer.
    let first = nonblank(a, "doctorFirstName");
    let last = nonblank(a, "doctorLastName");
    let full = nonblank(a, "doctorName");
    let referrer = match (&first, &last, &full) {
        (None, None, None) => None,
        (_, _, Some(f)) => {
            let p = intended(f, people);
            Some(person(
                &p.title,
                first.as_deref().unwrap_or(&p.given),
                last.as_deref().unwrap_or(&p.family),
            ))
        }
        _ => Some(person(
            "",
            first.as_deref().unwrap_or(""),
            last.as_deref().unwrap_or(""),
        )),
    };
    if let Some(rf) = &referrer {
        let pr = contained(&sr, "referrer").cloned().unwrap_or(Value::Null);
        expect(
            sr["requester"]["reference"] == "#referrer",
            "requester -> #referrer".into(),
        );
        expect(
            s(&pr["name"][0], "family") == rf.family,
            format!(
                "referrer family {} != {}",
                pr["name"][0]["family"], rf.family
            ),
        );
        let given: Vec<&str> = pr["name"][0]["given"]
            .as_array()
            .map(|g| g.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        expect(
            given.join(" ") == rf.given,
            format!("referrer given {given:?} != {}", rf.given),
        );
    }

    // --- Radiologist.
    let rad = [&a["assignedRadiologist"], &a["radiologist"]]
        .into_iter()
        .find(|r| r.is_object())
        .cloned();
    let rad_person = rad.as_ref().map(|r| {
        match (
            nonblank(r, "firstName"),
            nonblank(r, "lastName"),
            nonblank(r, "fullName"),
        ) {
            (f, l, Some(full)) => {
                let p = intended(&full, people);
                person(
                    &p.title,
                    f.as_deref().unwrap_or(&p.given),
                    l.as_deref().unwrap_or(&p.family),
                )
            }
            (f, l, None) => person("", f.as_deref().unwrap_or(""), l.as_deref().unwrap_or("")),
        }
    });
    for (r, element) in [(&sr, "performer"), (&dr, "resultsInterpreter")] {
        match (&rad, &rad_person) {
            (Some(rd), Some(rp)) => {
                let pr = contained(r, "radiologist").cloned().unwrap_or(Value::Null);
                expect(
                    r[element][0]["reference"] == "#radiologist",
                    format!("{element} -> #radiologist"),
                );
                expect(
                    s(&pr["name"][0], "family") == rp.family,
                    format!(
                        "radiologist family {} != {}",
                        pr["name"][0]["family"], rp.family
                    ),
                );
                let given: Vec<&str> = pr["name"][0]["given"]
                    .as_array()
                    .map(|g| g.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                expect(
                    given.join(" ") == rp.given,
                    format!("radiologist given {given:?} != {}", rp.given),
                );
                expect(
                    pr["telecom"][0]["value"].as_str() == nonblank(rd, "email").as_deref(),
                    "radiologist e-mail".into(),
                );
                expect(
                    pr["identifier"][0]["value"].as_str()
                        == nonblank(rd, "providerNumber").as_deref(),
                    "radiologist provider number".into(),
                );
            }
            _ => expect(
                r.get(element).is_none() && contained(r, "radiologist").is_none(),
                format!("no {element} without a radiologist"),
            ),
        }
    }

    // --- Reporting deadline, site, attachments.
    let deadline = nonblank(a, "reportingDeadlineUtc").or_else(|| nonblank(a, "reportingDeadline"));
    for r in [&sr, &dr] {
        expect(
            r["extension"][0]["valueDateTime"].as_str() == deadline.as_deref(),
            format!(
                "deadline {} != {deadline:?}",
                r["extension"][0]["valueDateTime"]
            ),
        );
    }
    let site_name = nonblank(&doc["site"], "siteName").or_else(|| nonblank(a, "scheduledSite"));
    expect(
        contained(&sr, "site").and_then(|l| l["name"].as_str()) == site_name.as_deref(),
        "site as the contained Location".into(),
    );
    let atts: Vec<Value> = doc["attachments"].as_array().cloned().unwrap_or_default();
    let info = sr["supportingInfo"].as_array().cloned().unwrap_or_default();
    expect(
        info.len() == atts.len(),
        format!("{} attachments, {} supportingInfo", atts.len(), info.len()),
    );
    for (att, si) in atts.iter().zip(&info) {
        expect(
            si["identifier"]["value"] == att["guid"],
            "supportingInfo identifier = attachment guid".into(),
        );
        expect(
            s(si, "display") == format!("{}: {}", s(att, "category"), s(att, "fileName")),
            "supportingInfo display = category: fileName".into(),
        );
    }

    // --- Comments and alerts, in the ServiceRequest.
    let notes = expected_notes(doc);
    let got: Vec<Value> = sr["note"].as_array().cloned().unwrap_or_default();
    expect(
        got.len() == notes.len(),
        format!("{} notes, {} comments", got.len(), notes.len()),
    );
    for (n, g) in notes.iter().zip(&got) {
        let text = if n.alert {
            format!("ALERT: {}", n.text)
        } else {
            n.text.clone()
        };
        expect(
            g["text"] == text.as_str(),
            format!("note {} != {text:?}", g["text"]),
        );
        expect(
            g["time"].as_str() == n.time.as_deref(),
            "note time = commentDateTime".into(),
        );
    }
    expect(
        dr.get("note").is_none(),
        "no note on a DiagnosticReport".into(),
    );

    // --- The ORM, field by field.
    let Some(m) = orm else { return bad };
    let pid = m.seg("PID");
    let orc = m.seg("ORC");
    let obr = m.seg("OBR");
    expect(
        Er7::get(pid, 3, 1, 1) == patient_id.clone().unwrap_or_default(),
        "PID-3.1 = patientId".into(),
    );
    expect(
        Er7::get(pid, 3, 4, 1) == s(doc, "domain"),
        "PID-3.4 = domain".into(),
    );
    expect(
        Er7::get(pid, 5, 1, 1) == want.family,
        format!("PID-5.1 {} != {}", Er7::get(pid, 5, 1, 1), want.family),
    );
    let given = [Er7::get(pid, 5, 2, 1), Er7::get(pid, 5, 3, 1)]
        .join(" ")
        .trim()
        .to_string();
    expect(
        given == want.given,
        format!("PID-5.2/3 {given:?} != {}", want.given),
    );
    expect(
        Er7::get(pid, 5, 5, 1) == want.title,
        format!("PID-5.5 {} != {}", Er7::get(pid, 5, 5, 1), want.title),
    );
    expect(
        Er7::get(pid, 7, 1, 1) == dob.clone().unwrap_or_default().replace('-', ""),
        "PID-7 = date of birth".into(),
    );
    expect(
        Er7::get(pid, 8, 1, 1) == sex.map(|x| x.0).unwrap_or(""),
        "PID-8 = sex".into(),
    );
    expect(
        Er7::get(orc, 1, 1, 1) == orc1,
        format!("ORC-1 {} != {orc1}", Er7::get(orc, 1, 1, 1)),
    );
    expect(
        Er7::get(orc, 5, 1, 1) == orc5,
        format!("ORC-5 {} != {orc5}", Er7::get(orc, 5, 1, 1)),
    );
    expect(
        Er7::get(orc, 2, 1, 1) == id && Er7::get(obr, 2, 1, 1) == id,
        "ORC-2/OBR-2 = appointmentId".into(),
    );
    expect(
        Er7::get(orc, 7, 6, 1) == hl7_prio && Er7::get(obr, 27, 6, 1) == hl7_prio,
        format!("priority {hl7_prio}"),
    );
    if times.is_none() {
        for (seg, f, name) in [(orc, 7, "ORC-7"), (obr, 27, "OBR-27")] {
            expect(
                Er7::get(seg, f, 4, 1).is_empty() && Er7::get(seg, f, 5, 1).is_empty(),
                format!("{name}: no start or end without a start time"),
            );
        }
    }
    if let Some((zs, ze)) = &times {
        for (seg, f, name) in [(orc, 7, "ORC-7"), (obr, 27, "OBR-27")] {
            expect(
                Er7::get(seg, f, 4, 1) == hl7_ts(zs),
                format!("{name}.4 {} != {}", Er7::get(seg, f, 4, 1), hl7_ts(zs)),
            );
            let want_end = ze.as_ref().map(hl7_ts).unwrap_or_default();
            expect(
                Er7::get(seg, f, 5, 1) == want_end,
                format!("{name}.5 {} != {want_end}", Er7::get(seg, f, 5, 1)),
            );
        }
        expect(
            Er7::get(obr, 36, 1, 1) == hl7_ts(zs),
            "OBR-36 = start".into(),
        );
    }
    // OBR-24: the modality as an HL7 table 0074 section, which RIS systems check.
    let section = Er7::get(obr, 24, 1, 1);
    match nonblank(a, "modality") {
        Some(modality) => expect(
            section == diagnostic_service(&modality)
                && TABLE_0074_IMAGING.contains(&section.as_str()),
            format!("OBR-24 {section} != table 0074 section of {modality}"),
        ),
        None => expect(section.is_empty(), "OBR-24 empty without a modality".into()),
    }
    // OBR-4: the exam code first, LOINC as the alternate.
    expect(
        Er7::get(obr, 4, 1, 1) == exam.unwrap_or(""),
        format!("OBR-4.1 {} != {exam:?}", Er7::get(obr, 4, 1, 1)),
    );
    expect(
        Er7::get(obr, 4, 2, 1) == exam_text.clone().unwrap_or_default(),
        "OBR-4.2 = study description".into(),
    );
    expect(
        Er7::get(obr, 4, 3, 1) == if exam.is_some() { "L" } else { "" },
        "OBR-4.3 = L".into(),
    );
    let (lc, ld) = loinc.unwrap_or(("", ""));
    expect(
        Er7::get(obr, 4, 4, 1) == lc
            && Er7::get(obr, 4, 5, 1) == ld
            && Er7::get(obr, 4, 6, 1) == if loinc.is_some() { "LN" } else { "" },
        format!("OBR-4.4-6 {} != {lc}^{ld}^LN", Er7::raw(obr, 4)),
    );
    // Referrer in PV1-8, ORC-12, OBR-16 (XCN); radiologist in OBR-32 (NDL).
    let pv1 = m.seg("PV1");
    for (seg, f, name) in [(pv1, 8, "PV1-8"), (orc, 12, "ORC-12"), (obr, 16, "OBR-16")] {
        let (fam, giv, title) = referrer.as_ref().map_or(("", "", ""), |r| {
            (r.family.as_str(), r.given.as_str(), r.title.as_str())
        });
        let g = [Er7::get(seg, f, 3, 1), Er7::get(seg, f, 4, 1)]
            .join(" ")
            .trim()
            .to_string();
        expect(
            Er7::get(seg, f, 2, 1) == fam && g == giv && Er7::get(seg, f, 6, 1) == title,
            format!("{name} {} != ^{fam}^{giv}^^^{title}", Er7::raw(seg, f)),
        );
    }
    match (&rad, &rad_person) {
        (Some(rd), Some(rp)) => {
            let g = [Er7::get(obr, 32, 1, 3), Er7::get(obr, 32, 1, 4)]
                .join(" ")
                .trim()
                .to_string();
            expect(
                Er7::get(obr, 32, 1, 1) == nonblank(rd, "providerNumber").unwrap_or_default()
                    && Er7::get(obr, 32, 1, 2) == rp.family
                    && g == rp.given
                    && Er7::get(obr, 32, 1, 6) == rp.title,
                format!("OBR-32 {} != {rp:?}", Er7::raw(obr, 32)),
            );
        }
        _ => expect(
            Er7::raw(obr, 32).is_empty(),
            "no OBR-32 without a radiologist".into(),
        ),
    }
    // Clinical history: OBR-13 within 300 characters, the whole text in an NTE.
    let clinical = nonblank(a, "clinicalInfo");
    let obr13_raw = Er7::raw(obr, 13);
    expect(
        obr13_raw.chars().count() <= 300,
        format!("OBR-13 is {} characters", obr13_raw.chars().count()),
    );
    if let Some(c) = &clinical {
        let one_line = c
            .split(['\r', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let got = Er7::get(obr, 13, 1, 1);
        // Components of OBR-13 are not used: rejoin in case the text held `^`.
        let got = if obr13_raw.contains('^') {
            unescape(obr13_raw)
        } else {
            got
        };
        let cut = got.strip_suffix('…');
        expect(
            got == one_line || cut.is_some_and(|p| one_line.starts_with(p.trim_end())),
            format!("OBR-13 is the clinical history, or its start: {got:?}"),
        );
    }
    // NTEs: patient-level after PID, then after OBR the clinical history and order-level.
    let ids = m.ids();
    let pid_at = ids.iter().position(|x| *x == "PID").unwrap();
    let obr_at = ids.iter().position(|x| *x == "OBR").unwrap();
    let after = |from: usize| -> Vec<&Vec<String>> {
        m.segments[from + 1..]
            .iter()
            .take_while(|s| s[0] == "NTE")
            .collect()
    };
    let patient_ntes = after(pid_at);
    let mut order_ntes = after(obr_at);
    if let Some(c) = &clinical {
        let first = order_ntes.first().copied();
        expect(
            first.is_some_and(|n| {
                unescape(Er7::raw(n, 3)) == c.replace("\r\n", "\n").replace('\r', "\n")
                    && Er7::get(n, 4, 1, 1) == "1R"
            }),
            "the first NTE after OBR holds the whole clinical history (1R)".into(),
        );
        if !order_ntes.is_empty() {
            order_ntes.remove(0);
        }
    }
    let want_patient: Vec<&Note> = notes.iter().filter(|n| n.patient_level).collect();
    let want_order: Vec<&Note> = notes.iter().filter(|n| !n.patient_level).collect();
    for (got, want, level) in [
        (&patient_ntes, &want_patient, "patient"),
        (&order_ntes, &want_order, "order"),
    ] {
        expect(
            got.len() == want.len(),
            format!("{} {level}-level NTEs, {} comments", got.len(), want.len()),
        );
        for (g, n) in got.iter().zip(want.iter()) {
            // In FT a line break is one `\.br\`, whatever the source's line ending.
            let text = n.text.replace("\r\n", "\n").replace('\r', "\n");
            let text = if n.alert {
                format!("ALERT: {text}")
            } else {
                text
            };
            expect(
                unescape(Er7::raw(g, 3)) == text,
                format!("NTE-3 {:?} != {text:?}", unescape(Er7::raw(g, 3))),
            );
            expect(
                Er7::raw(g, 2) == "P",
                "NTE-2 = P (placer, table 0105)".into(),
            );
            let kind = if n.alert { "AI" } else { "RE" };
            expect(
                Er7::get(g, 4, 1, 1) == kind && Er7::get(g, 4, 3, 1) == "HL70364",
                format!("NTE-4 {} != {kind}", Er7::raw(g, 4)),
            );
        }
    }
    for group in [&patient_ntes, &after(obr_at)] {
        for (i, n) in group.iter().enumerate() {
            expect(
                Er7::raw(n, 1) == (i + 1).to_string(),
                format!("NTE-1 set id {} != {}", Er7::raw(n, 1), i + 1),
            );
        }
    }
    // No line break outside NTE-3 (FT): ST, XPN, XCN and CE fields allow none.
    for seg in &m.segments {
        for (i, f) in seg.iter().enumerate() {
            let allowed = seg[0] == "NTE" && i == 3;
            if !allowed {
                expect(
                    !f.contains("\\X0A\\") && !f.contains("\\X0D\\") && !f.contains("\\.br\\"),
                    format!("{}-{i} holds a line break", seg[0]),
                );
            }
        }
    }
    bad
}

fn every_field_is_accounted_for(set: &MappingSet, label: &str, doc: &Value) -> Vec<String> {
    let mut fields = Vec::new();
    leaves(doc, String::new(), &mut fields);
    fields.sort();
    fields.dedup();
    let mut bad = Vec::new();
    for mapping in ["service_request", "diagnostic_report", "orm_o01"] {
        for f in &fields {
            if set.field_fate(mapping, f) == Some(FieldFate::Unaccounted) {
                bad.push(format!(
                    "{label}: {mapping} neither sends `{f}` nor lists it under not_sent"
                ));
            }
        }
    }
    bad
}

#[tokio::test]
async fn demo_orders_carry_what_their_source_says() {
    let set = mappings();
    let people = people();
    let dump = std::env::var_os("QUBS_FIDELITY_DUMP").map(PathBuf::from);
    let docs = demo_orders().await;
    assert_eq!(docs.len(), 40, "the demo lists 40 pending appointments");
    let mut bad = Vec::new();
    let mut loinc_by_exam: BTreeMap<String, usize> = BTreeMap::new();
    for doc in &docs {
        let label = s(&doc["appointment"], "appointmentId").to_string();
        bad.extend(check_order(&set, &label, doc, &people, dump.as_deref()));
        bad.extend(every_field_is_accounted_for(&set, &label, doc));
        let code = doc["appointment"]["examCodes"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            exam_loinc(&code).is_some(),
            "{label}: the demo exam {code} has a LOINC code"
        );
        *loinc_by_exam.entry(code).or_default() += 1;
    }
    assert!(
        loinc_by_exam.len() >= 8,
        "the demo covers many exams: {loinc_by_exam:?}"
    );
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn golden_order_inputs_carry_what_their_source_says() {
    let set = mappings();
    let people = people();
    let dump = std::env::var_os("QUBS_FIDELITY_DUMP").map(PathBuf::from);
    let mut bad = Vec::new();
    let cases = golden_orders();
    assert!(cases.len() >= 7, "order cases went missing");
    for (name, doc) in &cases {
        bad.extend(check_order(&set, name, doc, &people, dump.as_deref()));
        bad.extend(every_field_is_accounted_for(&set, name, doc));
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
