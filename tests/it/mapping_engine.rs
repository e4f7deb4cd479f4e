//! The shipped mappings in mappings/ load, and map a realistic order and results.

use std::path::PathBuf;

use qubs_bridge::mapping::{Body, InboundContext, MapOptions, MappingSet};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn set() -> MappingSet {
    MappingSet::load_dir(root().join("mappings")).unwrap_or_else(|e| panic!("{e}"))
}

fn order(name: &str) -> Value {
    let t = std::fs::read_to_string(root().join("tests/data/orders").join(name)).unwrap();
    serde_json::from_str(&t).unwrap()
}

fn opts() -> MapOptions {
    MapOptions {
        now: Some(
            "2026-11-20T10:00:00+11:00[Australia/Sydney]"
                .parse()
                .unwrap(),
        ),
        control_id: Some("TEST0001".into()),
        ..MapOptions::default()
    }
}

#[test]
fn shipped_mappings_load() {
    let s = set();
    let names: Vec<&str> = s.names().collect();
    assert_eq!(
        names,
        [
            "diagnostic_report",
            "diagnostic_report_to_report",
            "orm_o01",
            "oru_to_report",
            "service_request"
        ]
    );
    assert!(s.version().starts_with("sha256:"));
}

#[test]
fn order_to_service_request() {
    let s = set();
    let out = s
        .map_order_with("service_request", &order("routine-ct.json"), &opts())
        .unwrap();
    let Body::Fhir(v) = &out.body else { panic!() };
    println!("{}", serde_json::to_string_pretty(v).unwrap());
    assert_eq!(v["status"], "active");
    assert_eq!(v["priority"], "asap");
    assert_eq!(v["occurrencePeriod"]["start"], "2026-11-20T09:15:00+11:00");
    assert_eq!(v["occurrencePeriod"]["end"], "2026-11-20T09:45:00+11:00");
    assert_eq!(v["identifier"][0]["value"], "APT-1001");
    assert_eq!(v["subject"]["display"], "Mrs Jane Mary O'Brien");
    assert_eq!(v["subject"]["reference"], "#patient");
    // The patient-level alert first, then the order-level comment (as in the ORM).
    assert_eq!(
        v["note"][0]["text"],
        "ALERT: Contrast allergy (iodine) - premedicate"
    );
    assert_eq!(
        v["note"][1]["text"],
        "Prior CT 2024 at another site ^ compare"
    );
    // The exam code first, its LOINC code second.
    assert_eq!(v["code"]["coding"][0]["code"], "CTCHC");
    assert_eq!(v["code"]["coding"][1]["code"], "24628-0");
    assert_eq!(v["contained"][0]["birthDate"], "1961-03-14");
    assert_eq!(out.version, s.version());
}

#[test]
fn order_to_orm() {
    let s = set();
    let out = s
        .map_order_with("orm_o01", &order("routine-ct.json"), &opts())
        .unwrap();
    let Body::Hl7(t) = &out.body else { panic!() };
    println!("{}", t.replace('\r', "\n"));
    assert!(t.starts_with("MSH|^~\\&|QUBS-BRIDGE|North Shore Imaging|RIS||20261120100000+1100||ORM^O01^ORM_O01|TEST0001|P|2.5.1||||||UNICODE UTF-8\r"));
    assert!(t.contains("\rPID|1||P-55021^^^acme^MR||O'Brien^Jane^Mary^^Mrs||19610314|F\r"));
    assert!(
        t.contains("\rORC|NW|APT-1001^QUBS|||IP||^^^20261120091500+1100^20261120094500+1100^A|")
    );
    assert!(t.contains("Persistent cough 6 weeks. ?mass \\F\\ r/o PE"));
    // The patient alert after PID, the order comment after OBR (and the clinical history).
    assert!(t.contains(
        "\rNTE|1|P|ALERT: Contrast allergy (iodine) - premedicate|AI^Ancillary Instructions^HL70364\rPV1|"
    ));
    assert!(
        t.contains("\rNTE|2|P|Prior CT 2024 at another site \\S\\ compare|RE^Remark^HL70364\r")
    );
    assert!(t.contains("|CTCHC^CT Chest with contrast^L^24628-0^CT Chest W contrast IV^LN|"));
}

#[test]
fn diagnostic_report_registered() {
    let s = set();
    let out = s
        .map_order_with("diagnostic_report", &order("routine-ct.json"), &opts())
        .unwrap();
    let Body::Fhir(v) = &out.body else { panic!() };
    assert_eq!(v["status"], "registered");
    assert_eq!(v["category"][0]["coding"][0]["code"], "LP29684-5");
    assert_eq!(v["basedOn"][0]["identifier"]["value"], "APT-1001");
}

#[test]
fn oru_samples_to_reports() {
    let s = set();
    let ctx = InboundContext {
        site: serde_json::json!({"timeZone": "Australia/Sydney"}),
        ..Default::default()
    };
    let t = std::fs::read_to_string(root().join("tests/data/hl7/dcm4che-oru-r01-sr-findings.hl7"))
        .unwrap();
    let r = s.map_oru(&t, &ctx).unwrap();
    assert_eq!(r.submissions.len(), 1);
    let sub = &r.submissions[0];
    println!("{}", serde_json::to_string_pretty(sub).unwrap());
    assert_eq!(sub.appointment_id, "PlacerOrderNumberImagingServiceRequest");
}

#[test]
fn dry_run_lists_unread_fields_and_unmapped_values() {
    let s = set();
    let mut o = order("routine-ct.json");
    o["appointment"]["priority"] = "whenever".into();
    o["appointment"]["referralSource"] = "GP".into();
    let d = s.dry_run("service_request", &o, &opts()).unwrap();
    assert_eq!(d.output.unmapped.len(), 1);
    assert_eq!(d.output.unmapped[0].table, "priority");
    assert_eq!(d.output.unmapped[0].value, "whenever");
    assert!(
        d.unread_fields
            .contains(&"appointment.referralSource".to_string()),
        "{:?}",
        d.unread_fields
    );
    // A field the file lists under `not_sent` is accounted for.
    assert!(!d.unread_fields.contains(&"comments[].guid".to_string()));
    assert!(
        !d.unread_fields
            .contains(&"comments[].commentText".to_string())
    );
    assert!(
        !d.unread_fields
            .contains(&"appointment.appointmentId".to_string())
    );
}

#[test]
fn repeating_fields_and_segment_conditions() {
    let yaml = r#"mapping: t
input: order
output: hl7
message: ORM^O01
version: "2.5.1"
segments:
  - segment: MSH
  - segment: PID
    rules:
      - for_each: appointment.examCodes[*]
        as: x
        rules:
          - target: PID-3[*].1
            from: x.code
          - target: PID-3[*].5
            value: EX
  - segment: ORC
    rules:
      - target: ORC-1
        value: NW
  - segment: OBR
    rules:
      - target: OBR-4.2
        value: x
  - segment: NTE
    when: {from: appointment.clinicalInfo, present: true}
    rules:
      - target: NTE-3
        from: appointment.clinicalInfo
"#;
    let set = MappingSet::from_texts(&[(PathBuf::from("t.yaml"), yaml.to_string())])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut o = order("routine-ct.json");
    o["appointment"]["examCodes"] = serde_json::json!([{"code": "A"}, {"code": ""}, {"code": "B"}]);
    let out = set.map_order_with("t", &o, &opts()).unwrap();
    let Body::Hl7(t) = out.body else { panic!() };
    // Every item writes PID-3.5, so the empty code keeps its repetition.
    assert!(t.contains("\rPID|||A^^^^EX~^^^^EX~B^^^^EX\r"), "{t}");
    assert!(t.contains("\rNTE|||Persistent cough"));
    o["appointment"]["clinicalInfo"] = serde_json::Value::Null;
    let out = set.map_order_with("t", &o, &opts()).unwrap();
    let Body::Hl7(t) = out.body else { panic!() };
    assert!(!t.contains("NTE"));
}

#[test]
fn invalid_output_is_an_error_naming_the_mapping() {
    // pass_through of a free-text priority into a coded element is refused at load time;
    // a date-time the site cannot resolve is refused at run time, naming the rule.
    let s = set();
    let mut o = order("routine-ct.json");
    o["appointment"]["startTime"] = "9.15am".into();
    let e = s
        .map_order_with("service_request", &o, &opts())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("service_request.yaml:") && e.contains("occurrencePeriod.start"),
        "{e}"
    );
    assert!(!e.contains("9.15am"), "PHI-free: {e}");
}

#[test]
fn diagnostic_report_input() {
    let s = set();
    let mut dr: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("tests/data/fhir/hl7r4-diagnosticreport-ultrasound.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // The FHIR example has no link to an order: a clear error, then mapped once linked.
    let e = s
        .map_diagnostic_report(&dr, &InboundContext::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("appointmentId") && e.contains("required"), "{e}");
    // An identifier in another system is not an appointment id; with the placer system it is.
    dr["identifier"] = serde_json::json!([{"system": "urn:hospital:reports", "value": "R-9"}]);
    let e = s
        .map_diagnostic_report(&dr, &InboundContext::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("looked at: read.appointment"), "{e}");
    dr["identifier"] = serde_json::json!([{"system": "urn:qubs:appointment", "value": "APT-9"}]);
    let r = s
        .map_diagnostic_report(&dr, &InboundContext::default())
        .unwrap();
    assert_eq!(r.submissions[0].appointment_id, "APT-9");
    assert_eq!(
        r.submissions[0].report_status,
        qubs_bridge::mapping::ReportStatus::Final
    );
    assert!(!r.submissions[0].report_text.is_empty());
}

#[test]
fn oru_groups_of_one_appointment_are_merged() {
    let s = set();
    let msg = "MSH|^~\\&|RIS|X|QUBS|Y|20261120101500||ORU^R01^ORU_R01|M1|P|2.5.1\r\
PID|1||P1\r\
OBR|1|APT-1||CT1||||||||||||||||||20261120101000|||F\r\
OBX|1|TX|||Part one \\T\\ more||||||F\r\
OBR|2|APT-1||CT2||||||||||||||||||20261120101200|||P\r\
OBX|1|FT|||Part two\\.br\\line||||||P\r\
OBR|3|APT-2||XR||||||||||||||||||20261120101300+1000|||C\r\
OBX|1|NM|||5||||||F\r\
OBX|2|ST|||Other appointment||||||F\r";
    let ctx = InboundContext {
        site: serde_json::json!({"timeZone": "Australia/Sydney"}),
        ..Default::default()
    };
    let r = s.map_oru(msg, &ctx).unwrap();
    assert_eq!(r.submissions.len(), 2);
    let a = &r.submissions[0];
    assert_eq!(a.appointment_id, "APT-1");
    assert_eq!(a.report_text, "Part one & more\n\nPart two\nline");
    assert_eq!(
        a.report_status,
        qubs_bridge::mapping::ReportStatus::Preliminary
    );
    // OBR-22 without offset is read in the site zone (AEDT, +11:00); the later one wins.
    assert_eq!(
        a.reported_at_utc.unwrap().to_string(),
        "2026-11-19T23:12:00Z"
    );
    let b = &r.submissions[1];
    assert_eq!(
        (b.appointment_id.as_str(), b.report_text.as_str()),
        ("APT-2", "Other appointment")
    );
    assert_eq!(
        b.reported_at_utc.unwrap().to_string(),
        "2026-11-20T00:13:00Z"
    );

    // An unknown result status is refused, naming the group, rule and table, not the value.
    let bad = msg.replace("|||C\r", "|||X\r");
    let e = s.map_oru(&bad, &ctx).unwrap_err().to_string();
    assert!(
        e.contains("message M1, order group 3") && e.contains("result_status"),
        "{e}"
    );
}

#[test]
fn orm_version_is_configurable() {
    let text = std::fs::read_to_string(root().join("mappings/orm_o01.yaml")).unwrap();
    for v in ["2.3", "2.3.1", "2.4", "2.5", "2.6"] {
        let t = text.replace("version: \"2.5.1\"", &format!("version: \"{v}\""));
        let path = root().join("mappings/orm_o01.yaml");
        let set = MappingSet::from_texts(&[(path, t)]).unwrap_or_else(|e| panic!("{v}: {e}"));
        let out = set
            .map_order_with("orm_o01", &order("routine-ct.json"), &opts())
            .unwrap();
        let Body::Hl7(msg) = out.body else { panic!() };
        assert!(msg.contains(&format!("|TEST0001|P|{v}|")), "{v}");
        // NTE-4 (comment type) only exists from v2.4.
        assert_eq!(
            msg.contains("|RE^Remark^HL70364\r"),
            v != "2.3" && v != "2.3.1",
            "{v}"
        );
        // MSH-9.3 (structure) is written from v2.3.1.
        assert_eq!(msg.contains("ORM^O01^ORM_O01"), v != "2.3", "{v}");
    }
}

/// The ORU mapping on mangled samples returns results or errors, never panics.
#[test]
fn oru_mapping_never_panics_on_mangled_input() {
    let s = set();
    let ctx = InboundContext::default();
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let dir = root().join("tests/data/hl7");
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for _ in 0..25 {
            let mut t = text.clone();
            for _ in 0..(next() % 5 + 1) {
                let mut at = (next() as usize) % (t.len() + 1);
                while !t.is_char_boundary(at) {
                    at -= 1;
                }
                let ins = [
                    "\r",
                    "|",
                    "^",
                    "&",
                    "\\",
                    "~",
                    "OBR|",
                    "\rOBX|1|TX|||",
                    "ORC|",
                ][(next() % 9) as usize];
                t.insert_str(at, ins);
            }
            let _ = s.map_oru(&t, &ctx);
        }
    }
}

#[test]
fn hl7_line_breaks_are_configurable() {
    let text = |setting: &str| {
        format!(
            r#"mapping: t
input: order
output: hl7
message: ORM^O01
{setting}segments:
  - segment: MSH
  - segment: PID
    rules:
      - target: PID-3.1
        from: appointment.patientId
  - segment: ORC
    rules:
      - target: ORC-1
        value: NW
  - segment: OBR
    rules:
      - target: OBR-13
        from: appointment.clinicalInfo
        filters: [single_line]
  - segment: NTE
    rules:
      - target: NTE-3
        from: appointment.clinicalInfo
"#
        )
    };
    let mut o = order("routine-ct.json");
    o["appointment"]["clinicalInfo"] = "Line one\r\nLine two\nthree".into();
    for (setting, want) in [
        ("", "Line one\\X0D\\\\X0A\\Line two\\X0A\\three"),
        ("line_breaks: br\n", "Line one\\.br\\Line two\\.br\\three"),
    ] {
        let set = MappingSet::from_texts(&[(PathBuf::from("t.yaml"), text(setting))])
            .unwrap_or_else(|e| panic!("{e}"));
        let Body::Hl7(msg) = set.map_order_with("t", &o, &opts()).unwrap().body else {
            panic!()
        };
        assert!(
            msg.contains(&format!("\rNTE|||{want}\r")),
            "{setting:?}: {msg}"
        );
        // `single_line` keeps line breaks out of an ST field, whatever the setting.
        assert!(msg.contains("|Line one Line two three\r"), "{msg}");
    }
    let e = MappingSet::from_texts(&[(PathBuf::from("t.yaml"), text("line_breaks: crlf\n"))])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`line_breaks` must be `hex` or `br`"), "{e}");
}

#[test]
fn the_order_fingerprint_follows_what_the_mappings_read() {
    let set = set();
    let base = order("routine-ct.json");
    let fp = set.order_fingerprint(&base);
    assert_eq!(fp.len(), 32);
    assert_eq!(fp, set.order_fingerprint(&base.clone()), "stable");

    // Key order and the feed's own `event` field do not matter.
    let mut reordered = serde_json::Map::new();
    let object = base.as_object().unwrap();
    for (k, v) in object.iter().rev() {
        reordered.insert(k.clone(), v.clone());
    }
    let mut with_event = Value::Object(reordered);
    with_event["event"] = serde_json::json!({"kind": "changed"});
    assert_eq!(set.order_fingerprint(&with_event), fp);

    // A field no mapping reads does not matter; one they read does.
    let mut unread = base.clone();
    unread["appointment"]["bookingReference"] = "BR-1".into();
    assert_eq!(set.order_fingerprint(&unread), fp);
    let mut read = base.clone();
    read["appointment"]["patientName"] = "Someone Else".into();
    assert_ne!(set.order_fingerprint(&read), fp);
    // A comment edit is a change (the ORM's NTE segments read comment text).
    let mut comment = base.clone();
    comment["comments"] = serde_json::json!([{"commentType": "AC", "commentText": "new"}]);
    assert_ne!(set.order_fingerprint(&comment), fp);
}

#[test]
fn the_orm_order_control_comes_from_the_feed_event() {
    let set = set();
    let control = |kind: Option<&str>| {
        let mut o = order("routine-ct.json");
        if let Some(k) = kind {
            o["event"] = serde_json::json!({ "kind": k });
        }
        let out = set.map_order_with("orm_o01", &o, &opts()).unwrap();
        let Body::Hl7(er7) = out.body else {
            panic!("HL7 expected")
        };
        er7.split('\r')
            .find(|s| s.starts_with("ORC|"))
            .and_then(|s| s.split('|').nth(1))
            .unwrap()
            .to_string()
    };
    assert_eq!(control(None), "NW", "orders read over gRPC are new orders");
    assert_eq!(control(Some("new")), "NW");
    assert_eq!(control(Some("changed")), "XO");
    assert_eq!(control(Some("removed")), "CA");
}

#[test]
fn where_conditions_alternatives_with_filters_and_set_ids() {
    let yaml = r#"mapping: t
input: order
output: hl7
message: ORM^O01
segments:
  - segment: MSH
  - segment: PID
    rules:
      - target: PID-3.1
        from: appointment.patientId
  - segment: NTE
    for_each: comments[*]
    as: c
    where: {all: [{from: c.commentType, in: [pc, pa], ignore_case: true}, {from: c.commentText, present: true}]}
    rules:
      - target: NTE-1
        from: $set_id
      - target: NTE-3
        from: c.commentText
      - target: NTE-4
        when: {any: [{from: c.isAlert, equals: true}, {from: c.commentType, in: [AA, PA], ignore_case: true}]}
        value: ALERT
  - segment: ORC
    rules:
      - target: ORC-1
        value: NW
      # The structured field as it is; the single-field name parsed only without it.
      - target: ORC-12.2
        from:
          - appointment.doctorLastName
          - {from: appointment.doctorName, filters: [{name: family}]}
      - target: ORC-12.3
        from:
          - appointment.doctorFirstName
          - {from: appointment.doctorName, filters: [{name: given}]}
  - segment: OBR
    rules:
      - target: OBR-4.2
        value: x
  - segment: NTE
    when: {not: {from: appointment.clinicalInfo, present: false}}
    rules:
      - target: NTE-1
        from: $set_id
      - target: NTE-3
        value: first
  - segment: NTE
    for_each: comments[*]
    as: c
    where: {not: {from: c.commentType, in: [PC, PA], ignore_case: true}}
    rules:
      - target: NTE-1
        from: $set_id
      - target: NTE-3
        from: c.commentText
"#;
    let set = MappingSet::from_texts(&[(PathBuf::from("t.yaml"), yaml.to_string())])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut o = order("routine-ct.json");
    o["comments"] = serde_json::json!([
        {"commentType": "ac", "commentText": "order one"},
        {"commentType": "pa", "commentText": "patient alert", "isAlert": false},
        {"commentType": "PC", "commentText": "   "},
        {"commentType": "Pc", "commentText": "patient comment"},
        {"commentType": "AC", "commentText": "order two", "isAlert": true},
    ]);
    o["appointment"]["doctorName"] = "Dr Aroha Te Rangi".into();
    o["appointment"]["doctorFirstName"] = "Aroha".into();
    let run = |o: &Value| {
        let Body::Hl7(t) = set.map_order_with("t", o, &opts()).unwrap().body else {
            panic!()
        };
        t
    };
    let t = run(&o);
    // Patient-level items only (a blank text is no comment), numbered 1, 2 after PID.
    assert!(
        t.contains("\rNTE|1||patient alert|ALERT\rNTE|2||patient comment\rORC|"),
        "{t}"
    );
    // Structured first name as it is, family name parsed from doctorName (particle kept).
    assert!(t.contains("\rORC|NW|||||||||||^Te Rangi^Aroha\r"), "{t}");
    // After OBR the set ids continue across the two NTE segment plans.
    assert!(
        t.contains("\rNTE|1||first\rNTE|2||order one\rNTE|3||order two\r"),
        "{t}"
    );
    o["appointment"]["doctorLastName"] = "Te Rangi-Smith".into();
    assert!(run(&o).contains("^Te Rangi-Smith^Aroha\r"));
}
