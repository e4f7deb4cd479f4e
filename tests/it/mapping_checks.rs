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
        &format!("{f}:6:3"),
        "table `prio` feeds ServiceRequest.priority but has values that are not valid codes: quick, soon",
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
