//! Load-time checks: a broken mapping is refused with every problem, each with
//! file:line:column and a hint.

use std::path::PathBuf;

use qubs_bridge::mapping::{LoadErrors, MappingSet};

fn load(name: &str, text: &str) -> Result<MappingSet, LoadErrors> {
    MappingSet::from_texts(&[(PathBuf::from(format!("/virtual/{name}")), text.to_string())])
}

fn errors(name: &str, text: &str) -> Vec<String> {
    match load(name, text) {
        Ok(_) => panic!("{name} should not load"),
        Err(e) => e.0.iter().map(|d| d.to_string()).collect(),
    }
}

fn has(errs: &[String], loc: &str, words: &str) {
    assert!(
        errs.iter().any(|e| e.contains(loc) && e.contains(words)),
        "no error at {loc} containing {words:?} in:\n{}",
        errs.join("\n")
    );
}

#[test]
fn fhir_mapping_reports_every_error_with_position_and_hint() {
    let text = r#"mapping: broken_sr
input: order
output: fhir
resource: ServiceRequest
tables:
  prio:
    unmapped: default
    default: soon
    values: {routine: routine, urgent: quick}
rules:
  - target: status
    value: activ
  - target: identifer[0].value
    from: appointment.appointmentId
  - target: code
    from: appointment.studyDescription
  - target: priority
    from: appointment.priorty
    filters: [trim, {table: prio}]
  - target: note[0].text
    from: comments[*].commentText
  - target: reasonCode[0].text
    from: appointment.clinicalInfo
    filters: [trimm]
  - target: reasonCode[0].text
    from: appointment.clinicalInfo
  - target: doNotPerform
    value: maybe
  - target: subject.display
    from: appointment.patientName
    filters: [{table: nope}]
"#;
    let e = errors("broken_sr.yaml", text);
    let f = "/virtual/broken_sr.yaml";
    has(
        &e,
        &format!("{f}:12:12"),
        "`activ` is not a valid ServiceRequest.status code",
    );
    has(
        &e,
        &format!("{f}:13:13"),
        "`identifer` is not an element of ServiceRequest",
    );
    has(&e, "did you mean `identifier`", "");
    has(&e, &format!("{f}:15:13"), "`code` is a CodeableConcept");
    has(
        &e,
        &format!("{f}:18:11"),
        "unknown source field `appointment.priorty`",
    );
    has(&e, "did you mean `priority`", "");
    has(
        &e,
        &format!("{f}:9:32"),
        "table `prio`: `quick` (for `urgent`) is not a valid ServiceRequest.priority code (the table feeds it at broken_sr.yaml line 17)",
    );
    // Each bad code at its own line: the default too.
    has(
        &e,
        &format!("{f}:8:14"),
        "table `prio`: the default `soon` is not a valid ServiceRequest.priority code",
    );
    has(&e, &format!("{f}:20:5"), "type mismatch");
    has(&e, &format!("{f}:24:15"), "unknown filter `trimm`");
    has(&e, &format!("{f}:25:13"), "is set twice (first at line 22)");
    has(
        &e,
        &format!("{f}:28:12"),
        "type mismatch: `doNotPerform` is a boolean",
    );
    has(&e, &format!("{f}:31:16"), "unknown code table `nope`");
    has(
        &e,
        &format!("{f}:11:3"),
        "ServiceRequest.intent is required but no rule sets it",
    );
    assert!(e.iter().all(|x| x.contains("hint:")), "{e:#?}");
    assert!(e.len() >= 11, "{}", e.join("\n"));
}

#[test]
fn hl7_mapping_checks_positions_versions_and_order() {
    let text = r#"mapping: broken_orm
input: order
output: hl7
message: ORM^O01
version: "2.3"
segments:
  - segment: MSH
    rules:
      - target: MSH-10
        value: X
  - segment: ORC
    rules:
      - target: ORC-1
        value: NW
      - target: ORC-25
        value: X
  - segment: PID
    rules:
      - target: PID-5.1
        from: appointment.patientName
  - segment: NTE
    for_each: comments[*]
    as: c
    rules:
      - target: NTE-4
        value: RE
      - target: NTE-3
        from: c.commentTxt
  - segment: ZZZ
"#;
    let e = errors("broken_orm.yaml", text);
    let f = "/virtual/broken_orm.yaml";
    has(&e, &format!("{f}:9:17"), "MSH-10 is generated");
    has(
        &e,
        &format!("{f}:15:17"),
        "ORC-25 does not exist in HL7 v2.3 (ORC has 19 fields)",
    );
    has(
        &e,
        &format!("{f}:25:17"),
        "NTE-4 does not exist in HL7 v2.3",
    );
    has(
        &e,
        &format!("{f}:28:15"),
        "unknown source field `c.commentTxt`",
    );
    has(&e, "did you mean `commentText`?", "");
    has(
        &e,
        &format!("{f}:17:5"),
        "segment PID is out of order for ORM^O01",
    );
    has(&e, &format!("{f}:29:14"), "segment ZZZ is not known");
    has(&e, "", "ORM^O01 requires a OBR segment");
}

#[test]
fn oru_mapping_checks() {
    let text = r#"mapping: broken_oru
input: oru
output: report
tables:
  st:
    values: {F: final}
rules:
  - target: appointmentId
    from: OBR-99 | ORC-2
  - target: reportStatus
    from: OBR-25
    filters: [{table: st}]
  - target: reportTxt
    from: OBX[*]-5
"#;
    let e = errors("broken_oru.yaml", text);
    let f = "/virtual/broken_oru.yaml";
    has(&e, &format!("{f}:9:11"), "OBR-99 does not exist");
    has(
        &e,
        &format!("{f}:6:5"),
        "table `st` has no `unmapped` policy",
    );
    has(
        &e,
        &format!("{f}:13:13"),
        "`reportTxt` is not a report field",
    );
    has(&e, "did you mean `reportText`", "");
    has(
        &e,
        "",
        "report field `reportText` is required but no rule sets it",
    );
}

#[test]
fn yaml_syntax_alias_bomb_and_unknown_keys() {
    let e = errors("syntax.yaml", "mapping: x\nrules: [a, b\n");
    has(&e, "/virtual/syntax.yaml:", "YAML syntax");
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let e = errors("bomb.yaml", &bomb);
    has(&e, "/virtual/bomb.yaml:", "YAML syntax");
    let e = errors(
        "keys.yaml",
        "mapping: k\ninput: order\noutput: fhir\nresource: ServiceRequest\nrulez: []\n",
    );
    has(
        &e,
        "/virtual/keys.yaml:5:1",
        "unknown key `rulez` in the mapping file",
    );
    has(&e, "did you mean `rules`", "");
}

#[test]
fn all_files_are_reported_together() {
    let a = "mapping: a\ninput: order\noutput: fhir\nresource: Patient\nrules: []\n";
    let b = "mapping: b\ninput: nonsense\noutput: fhir\nresource: ServiceRequest\nrules: []\n";
    let e = MappingSet::from_texts(&[
        (PathBuf::from("a.yaml"), a.to_string()),
        (PathBuf::from("b.yaml"), b.to_string()),
    ])
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("a.yaml:4:11: error: resource `Patient` is not supported"),
        "{text}"
    );
    assert!(
        text.contains("b.yaml:2:8: error: `input` must be order, oru or diagnostic_report"),
        "{text}"
    );
}

fn warnings(name: &str, text: &str) -> Vec<String> {
    load(name, text)
        .unwrap_or_else(|e| panic!("{e}"))
        .warnings()
        .iter()
        .map(|d| d.as_warning())
        .collect()
}

#[test]
fn loinc_codes_need_their_check_digit_in_tables_and_constants() {
    // A table that says it holds LOINC codes, one inferred from the coding it feeds (OBR-4.4
    // with OBR-4.6 = LN), and a constant in a LOINC coding: every code is checked.
    let text = r#"mapping: codes
input: order
output: hl7
message: ORM^O01
tables:
  declared:
    system: LN
    unmapped: default
    default: ""
    values:
      US: 24532-1
      XR: 43468-8
  inferred:
    unmapped: pass_through
    values:
      CT: 25045-5
      PART: LP29684-5
segments:
  - segment: MSH
  - segment: PID
    rules:
      - target: PID-3.1
        from: appointment.patientId
        filters: [{table: declared}]
  - segment: ORC
    rules:
      - target: ORC-1
        value: NW
  - segment: OBR
    rules:
      - target: OBR-4.4
        from: appointment.modality
        filters: [{table: inferred}]
      - target: OBR-4.6
        value: LN
      - target: OBR-4.1
        value: 36643-4
      - target: OBR-4.3
        value: LN
"#;
    let e = errors("codes.yaml", text);
    let f = "/virtual/codes.yaml";
    has(
        &e,
        &format!("{f}:11:7"),
        "`24532-1` (for `US`) is not a valid LOINC code",
    );
    has(
        &e,
        "`24532-4` would be the code with a valid check digit",
        "",
    );
    has(
        &e,
        &format!("{f}:16:7"),
        "`25045-5` (for `CT`) is not a valid LOINC code",
    );
    has(
        &e,
        &format!("{f}:37:16"),
        "`36643-4` is not a valid LOINC code",
    );
    // Part codes (LP...) have no check digit of this kind; a valid code is fine.
    assert!(
        !e.iter()
            .any(|x| x.contains("LP29684-5") || x.contains("43468-8")),
        "{e:?}"
    );
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn a_loinc_code_shared_by_keys_is_a_warning_unless_they_are_synonyms() {
    let text = |synonyms: &str| {
        format!(
            r#"mapping: shared
input: order
output: fhir
resource: ServiceRequest
tables:
  modality:
    system: http://loinc.org
    ignore_case: true
    unmapped: default
    default: ""
{synonyms}    values:
      MR: 25056-3
      MRI: 25056-3
      CT: 25056-3
rules:
  - target: status
    value: active
  - target: intent
    value: order
  - target: subject.display
    from: appointment.patientName
  - target: code.coding[0].system
    value: http://loinc.org
  - target: code.coding[0].code
    from: appointment.modality
    filters: [{{table: modality}}]
"#
        )
    };
    let w = warnings("shared.yaml", &text(""));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("/virtual/shared.yaml:13:7: warning: table `modality`: LOINC code `25056-3` is the value of 3 keys (MR, MRI, CT)"),
        "{w:?}"
    );
    // MR and MRI are the same modality; CT is not: still a warning, naming all three.
    let w = warnings("shared.yaml", &text("    synonyms: [[MR, mri]]\n"));
    assert_eq!(w.len(), 1, "{w:?}");
    let only_mr = text("    synonyms: [[MR, MRI]]\n").replace("      CT: 25056-3\n", "");
    assert!(warnings("shared.yaml", &only_mr).is_empty());
}

#[test]
fn not_sent_fields_are_checked() {
    let text = r#"mapping: ns
input: order
output: fhir
resource: ServiceRequest
not_sent:
  appointment.attendedBy: QUBS user object
  appointment.atendedBy: typo
  appointment.patientName: it is read below
  comments[].guid: ""
rules:
  - target: status
    value: active
  - target: intent
    value: order
  - target: subject.display
    from: appointment.patientName
"#;
    let e = errors("ns.yaml", text);
    let f = "/virtual/ns.yaml";
    has(
        &e,
        &format!("{f}:7:3"),
        "`appointment.atendedBy`, which is not an input field",
    );
    has(
        &e,
        &format!("{f}:8:3"),
        "`appointment.patientName` is listed under `not_sent` but a rule reads",
    );
    has(&e, &format!("{f}:9:20"), "needs a reason");
    assert_eq!(e.len(), 3, "{e:?}");

    let ok = text
        .replace("  appointment.atendedBy: typo\n", "")
        .replace("  appointment.patientName: it is read below\n", "")
        .replace("comments[].guid: \"\"", "comments[].guid: QUBS id");
    let set = load("ns.yaml", &ok).unwrap_or_else(|e| panic!("{e}"));
    use qubs_bridge::mapping::FieldFate;
    assert_eq!(
        set.field_fate("ns", "appointment.attendedBy"),
        Some(FieldFate::NotSent("QUBS user object".into()))
    );
    assert_eq!(
        set.field_fate("ns", "appointment.patientName"),
        Some(FieldFate::Sent(vec!["subject.display".into()]))
    );
    assert_eq!(
        set.field_fate("ns", "appointment.clinicalInfo"),
        Some(FieldFate::Unaccounted)
    );
}

#[test]
fn contained_resources_are_checked_at_load_and_run_time() {
    let text = r##"mapping: c
input: order
output: fhir
resource: ServiceRequest
contained:
  - resource: Patient
    id: patient
    rules:
      - target: birthDate
        from: appointment.dateOfBirth
        filters: [{date: date}]
      - target: gender
        value: femal
  - resource: Organization
    id: org
    rules: []
  - resource: Practitioner
    id: "no spaces"
    rules: []
rules:
  - target: status
    value: active
  - target: intent
    value: order
  - target: subject.reference
    value: "#patient"
"##;
    let e = errors("c.yaml", text);
    let f = "/virtual/c.yaml";
    has(
        &e,
        &format!("{f}:13:16"),
        "`femal` is not a valid Patient.gender code",
    );
    has(
        &e,
        &format!("{f}:14:15"),
        "`Organization` cannot be a contained resource here",
    );
    has(
        &e,
        &format!("{f}:18:9"),
        "a contained resource needs an `id`",
    );

    // A reference to a contained resource whose rules wrote nothing is refused at run
    // time, naming the reference; so is a contained resource nothing references.
    let ok = r##"mapping: c
input: order
output: fhir
resource: ServiceRequest
contained:
  - resource: Patient
    id: patient
    rules:
      - target: birthDate
        from: appointment.dateOfBirth
        filters: [{date: date}]
  - resource: Location
    id: site
    rules:
      - target: name
        from: site.siteName
rules:
  - target: status
    value: active
  - target: intent
    value: order
  - target: subject.reference
    value: "#patient"
"##;
    let set = load("c.yaml", ok).unwrap_or_else(|e| panic!("{e}"));
    let order = |dob: &str, site: &str| serde_json::json!({"appointment": {"dateOfBirth": dob}, "site": {"siteName": site}});
    let e = set.map_order("c", &order("", "")).unwrap_err().to_string();
    assert!(
        e.contains("reference `#patient` names no contained resource"),
        "{e}"
    );
    let e = set
        .map_order("c", &order("1961-03-14", "Main"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("contained resource `#site` is not referenced"),
        "{e}"
    );
    let out = set.map_order("c", &order("1961-03-14", "")).unwrap();
    let qubs_bridge::mapping::Body::Fhir(v) = out.body else {
        panic!()
    };
    assert_eq!(
        v["contained"],
        serde_json::json!([{"resourceType": "Patient", "id": "patient", "birthDate": "1961-03-14"}])
    );
}
