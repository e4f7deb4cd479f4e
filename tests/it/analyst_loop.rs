//! The analyst's loop, as an analyst meets it: golden cases that say which field changed,
//! `map` on a QUBS appointment exactly as the API returns it, what no rule reads (inbound
//! too, without false positives), the input schema, mistakes pointed at the right line, and
//! a value the tables do not know counted in production.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::bridge;
use crate::common::{GRPC_TOKEN, authed, start_bridge};
use qubs_bridge::grpc::pb::order_service_client::OrderServiceClient;
use qubs_bridge::grpc::pb::{ListPendingOrdersRequest, OutputFormat};
use qubs_bridge::mapping::MappingSet;
use qubs_bridge::mapping::golden::{self, Status};
use qubs_bridge::simulator::Simulator;

const ROUTINE_CT: &str = "mappings/tests/order-routine-ct/order.json";

/// Runs `cmd`: (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// A copy of the shipped mapping files, their tables and the golden cases named.
fn mappings_copy(cases: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new("mappings"), dir.path());
    copy_dir(Path::new("mappings/tables"), &dir.path().join("tables"));
    for c in cases {
        copy_dir(
            &Path::new("mappings/tests").join(c),
            &dir.path().join("tests").join(c),
        );
    }
    dir
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no `{from}`", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

// ---------------------------------------------------------------------------------------
// Golden cases

#[test]
fn a_changed_field_is_shown_as_that_field_and_volatile_fields_are_ignored() {
    let dir = mappings_copy(&["order-routine-ct"]);
    let case = dir.path().join("tests/order-routine-ct");
    // The expectation says MR went out; the mapping sends CT. MSH-7 and MSH-10 differ too,
    // as they would in a case without a fixed clock: they are not differences.
    let orm = case.join("orm_o01.hl7");
    let text = std::fs::read_to_string(&orm).unwrap();
    let obr = text.lines().find(|l| l.starts_with("OBR|")).unwrap();
    let fields: Vec<&str> = obr.split('|').collect();
    assert_eq!(fields[24], "CT");
    let mut changed: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    changed[24] = "NMR".into();
    let text = text
        .replace(obr, &changed.join("|"))
        .replace("20261120100000+1100", "20261121080000+1100")
        .replace("GOLDEN0001", "ANOTHERID");
    std::fs::write(&orm, text).unwrap();
    let sr = case.join("service_request.json");
    edit(&sr, "\"priority\": \"asap\"", "\"priority\": \"routine\"");

    let (code, out, err) = run(bridge()
        .args(["mappings", "test"])
        .arg(dir.path())
        .args(["--case", "order-routine-ct"]));
    assert_eq!(code, 1, "{out}{err}");
    // One line for the one field, however long OBR is.
    assert!(
        out.contains("FAIL    order-routine-ct/orm_o01.hl7\n        OBR-24: NMR → CT\n3 case output(s), 2 failed"),
        "{out}"
    );
    assert!(
        !out.contains("MSH-7") && !out.contains("MSH-10"),
        "volatile fields are not differences: {out}"
    );
    assert!(
        out.contains(
            "FAIL    order-routine-ct/service_request.json\n        priority: routine → asap\n"
        ),
        "{out}"
    );
    assert!(err.contains("2 golden case output(s) differ"), "{err}");

    // The same as records.
    let (_, out, _) = run(bridge().args(["mappings", "test"]).arg(dir.path()).args([
        "--case",
        "order-routine-ct",
        "--format",
        "json",
    ]));
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let orm = records
        .iter()
        .find(|r| r["case"] == "order-routine-ct/orm_o01.hl7")
        .unwrap();
    assert_eq!(orm["status"], "fail");
    assert_eq!(
        orm["diffs"],
        json!([{"path": "OBR-24", "expected": "NMR", "actual": "CT"}])
    );
}

#[test]
fn update_rewrites_only_the_cases_named_and_a_new_case_asks_for_an_expectation() {
    let dir = mappings_copy(&["order-routine-ct", "order-no-exam-code"]);
    let tests = dir.path().join("tests");
    for c in ["order-routine-ct", "order-no-exam-code"] {
        edit(&tests.join(c).join("orm_o01.hl7"), "|P|2.5.1|", "|P|2.5|");
    }
    // A new case: an input and a case.yaml naming it, nothing else.
    let new = tests.join("my-new-case");
    std::fs::create_dir(&new).unwrap();
    std::fs::copy(ROUTINE_CT, new.join("order.json")).unwrap();
    std::fs::write(new.join("case.yaml"), "input: order.json\n").unwrap();

    let (code, out, err) = run(bridge()
        .args(["mappings", "test"])
        .arg(dir.path())
        .args(["--case", "my-new-*"]));
    assert_eq!(code, 1, "{out}{err}");
    // Every mapping of the input's kind, each waiting for its first expectation: no wall of `+`.
    assert_eq!(
        out.matches("no expectation yet — run with --update")
            .count(),
        3,
        "{out}"
    );
    assert!(out.contains("NEW     my-new-case/orm_o01.hl7"), "{out}");
    assert!(!out.contains("+ "), "{out}");
    assert!(out.contains("3 without expectation"), "{out}");

    // --update with --case: the named cases only.
    let (code, out, err) = run(bridge().args(["mappings", "test"]).arg(dir.path()).args([
        "--case",
        "order-routine-*",
        "--case",
        "my-new-case",
        "--update",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("UPDATED order-routine-ct/orm_o01.hl7"),
        "{out}"
    );
    assert!(new.join("service_request.json").is_file());
    assert!(!out.contains("order-no-exam-code"), "{out}");
    let (code, out, _) = run(bridge().args(["mappings", "test"]).arg(dir.path()));
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL    order-no-exam-code/orm_o01.hl7\n        MSH-12: 2.5 → 2.5.1"),
        "{out}"
    );
    assert!(out.contains("ok      my-new-case/orm_o01.hl7"), "{out}");

    // A pattern that matches nothing, and -i without a terminal, are usage errors.
    let (code, _, err) = run(bridge()
        .args(["mappings", "test"])
        .arg(dir.path())
        .args(["--case", "nothing-like-this*"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("no golden case matches `nothing-like-this*`"),
        "{err}"
    );
    let (code, _, err) = run(bridge()
        .args(["mappings", "test", "-i"])
        .arg(dir.path())
        .stdin(std::process::Stdio::null()));
    assert_eq!(code, 2);
    assert!(err.contains("stdin is not one; use --update"), "{err}");
}

#[test]
fn an_error_expectation_survives_a_comment_above_its_rule() {
    let dir = mappings_copy(&["order-missing-patient-id"]);
    let case = dir.path().join("tests/order-missing-patient-id/case.yaml");
    // The old form, with the line the rule used to be on, next to the new one.
    let text = std::fs::read_to_string(&case).unwrap();
    assert!(
        text.contains("expect_error: {kind: required, target: PID-3.1"),
        "{text}"
    );
    std::fs::write(
        &case,
        format!(
            "{text}  - mapping: orm_o01\n    expect_error: \"orm_o01.yaml:1:1 (target `PID-3.1`): required value is missing\"\n"
        ),
    )
    .unwrap();
    // Comments above the rule move it down three lines.
    let orm = dir.path().join("orm_o01.yaml");
    let text = std::fs::read_to_string(&orm).unwrap();
    let at = text.find("      - target: PID-3.1").unwrap();
    std::fs::write(
        &orm,
        format!(
            "{}      # the patient id\n      # (required)\n      # see README\n{}",
            &text[..at],
            &text[at..]
        ),
    )
    .unwrap();
    let set = MappingSet::load_dir(dir.path()).unwrap();
    let r = golden::run(&set, &dir.path().join("tests"), false).unwrap();
    assert!(r.passed(), "{r}");
    assert_eq!(r.count(Status::Passed), 4, "{r}");

    // A different target is a failure that says what was expected.
    let text = std::fs::read_to_string(&case).unwrap();
    std::fs::write(&case, text.replace("target: PID-3.1,", "target: PID-3.4,")).unwrap();
    let r = golden::run(&set, &dir.path().join("tests"), false).unwrap();
    let failed: Vec<_> = r.results.iter().filter(|c| !c.passed).collect();
    assert_eq!(failed.len(), 1, "{r}");
    let detail = failed[0].detail.as_deref().unwrap();
    assert!(
        detail.contains("target `PID-3.4` (got `PID-3.1`)"),
        "{detail}"
    );
}

// ---------------------------------------------------------------------------------------
// map

fn appointment_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let order: Value = serde_json::from_str(&std::fs::read_to_string(ROUTINE_CT).unwrap()).unwrap();
    let files = (
        dir.join("appointment.json"),
        dir.join("comments.json"),
        dir.join("attachments.json"),
    );
    std::fs::write(&files.0, order["appointment"].to_string()).unwrap();
    std::fs::write(&files.1, order["comments"].to_string()).unwrap();
    std::fs::write(&files.2, order["attachments"].to_string()).unwrap();
    files
}

#[test]
fn map_takes_a_bare_qubs_appointment_as_the_service_assembles_it() {
    let dir = tempfile::tempdir().unwrap();
    let (appointment, comments, attachments) = appointment_files(dir.path());
    // Without a zone, the local times cannot be read: the error says what to pass.
    let (code, out, err) = run(bridge()
        .args(["map", "--mapping", "orm_o01", "--input"])
        .arg(&appointment));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("(target `ORC-7.4`): no site time zone"),
        "{err}"
    );
    assert!(err.contains("hint: pass --site-tz"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // With the zone and the comments: the same message as from the order document.
    let (code, bare, err) = run(bridge()
        .args([
            "map",
            "--mapping",
            "orm_o01",
            "--site-tz",
            "Australia/Sydney",
            "--input",
        ])
        .arg(&appointment)
        .arg("--comments")
        .arg(&comments)
        .arg("--attachments")
        .arg(&attachments));
    assert_eq!(code, 0, "{err}");
    let (_, document, _) =
        run(bridge().args(["map", "--mapping", "orm_o01", "--input", ROUTINE_CT]));
    let segments = |er7: &str| -> Vec<String> {
        er7.split_terminator('\r')
            .filter(|s| !s.starts_with("MSH"))
            .map(str::to_string)
            .collect()
    };
    // MSH-5 (receiving application) comes from configuration, which the order file carries.
    assert_eq!(segments(&bare), segments(&document), "{bare:?}");
    assert!(
        bare.starts_with("MSH|^~\\&|QUBS-BRIDGE|North Shore Imaging|"),
        "{bare:?}"
    );
    assert!(
        bare.contains("\rNTE|2|P|Prior CT 2024 at another site \\S\\ compare|"),
        "{bare:?}"
    );

    // The JSON envelope parses, its output is the ER7.
    let (code, out, _) = run(bridge()
        .args([
            "map",
            "--mapping",
            "service_request",
            "--site-tz",
            "Australia/Sydney",
            "--format",
            "json",
            "--input",
        ])
        .arg(&appointment));
    assert_eq!(code, 0);
    let envelope: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(envelope["output"]["resourceType"], "ServiceRequest");
    assert_eq!(
        envelope["output"]["occurrencePeriod"]["start"],
        "2026-11-20T09:15:00+11:00"
    );
    assert_eq!(envelope["errors"], json!([]));
    // A bare appointment has no `site.timeZone` field to list: the zone came from --site-tz.
    let unread: Vec<&str> = envelope["unreadFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !unread
            .iter()
            .any(|f| f.starts_with("site.") || f.starts_with("config.")),
        "{unread:?}"
    );

    // A page of the pending list with several items is refused with what to do instead.
    let page = dir.path().join("page.json");
    let one: Value = serde_json::from_str(&std::fs::read_to_string(&appointment).unwrap()).unwrap();
    std::fs::write(
        &page,
        json!({"items": [one.clone(), one], "nextToken": null}).to_string(),
    )
    .unwrap();
    let (code, _, err) = run(bridge()
        .args(["map", "--mapping", "orm_o01", "--input"])
        .arg(&page));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a page of 2 pending appointments"), "{err}");
}

#[test]
fn map_shows_the_refused_value_once_and_where_the_table_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let oru = dir.path().join("r.hl7");
    let mut obr: Vec<String> = vec![String::new(); 26];
    obr[0] = "OBR".into();
    obr[1] = "1".into();
    obr[2] = "A100001".into();
    obr[25] = "R".into();
    std::fs::write(
        &oru,
        format!(
            "MSH|^~\\&|RIS|H|QUBS|H|20261120101500+1100||ORU^R01|MSG-R1|P|2.5.1\rPID|1||P-1||Doe^Jane\r{}\rOBX|1|TX|||Normal study.||||||F|||||^Smith^Anna\r",
            obr.join("|")
        ),
    )
    .unwrap();
    let (code, out, err) = run(bridge()
        .args(["map", "--mapping", "oru_to_report", "--input"])
        .arg(&oru));
    assert_eq!(code, 1, "{out}{err}");
    let line = err.lines().next().unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        line.starts_with("error: message MSG-R1, order group 1: oru_to_report.yaml:"),
        "{line}"
    );
    assert!(
        line.contains(
            "(target `reportStatus`): the value `R` is not in code table `result_status`"
        ),
        "{line}"
    );
    // Said once, and pointed at the table's values.
    assert_eq!(line.matches("result_status").count(), 1, "{line}");
    let yaml = std::fs::read_to_string("mappings/oru_to_report.yaml").unwrap();
    let values_line = yaml.lines().position(|l| l.trim() == "values:").unwrap() + 1;
    assert!(
        line.ends_with(&format!(
            "add it under `values:` at oru_to_report.yaml:{values_line}"
        )),
        "{line}"
    );

    // The same message in the envelope.
    let (_, out, _) = run(bridge()
        .args([
            "map",
            "--mapping",
            "oru_to_report",
            "--format",
            "json",
            "--input",
        ])
        .arg(&oru));
    let envelope: Value = serde_json::from_str(&out).unwrap();
    assert!(
        envelope["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("the value `R` is not in code table `result_status`"),
        "{envelope}"
    );
}

#[test]
fn unread_fields_of_inbound_inputs_are_listed_without_the_fields_that_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let oru = dir.path().join("r.hl7");
    let mut obr: Vec<String> = vec![String::new(); 26];
    obr[0] = "OBR".into();
    obr[1] = "1".into();
    obr[2] = "A100001".into();
    obr[4] = "CTCHC^CT Chest^L".into();
    obr[25] = "F".into();
    std::fs::write(
        &oru,
        format!(
            "MSH|^~\\&|RIS|H|QUBS|H|20261120101500+1100||ORU^R01|MSG-U1|P|2.5.1\rPID|1||P-1||Doe^Jane\r{}\rOBX|1|TX|18782-3^Study observation^LN||Normal study.||||||F|||||^Smith^Anna\rZDS|1.2.3.4\r",
            obr.join("|")
        ),
    )
    .unwrap();
    let (code, out, err) = run(bridge()
        .args([
            "map",
            "--mapping",
            "oru_to_report",
            "--site-tz",
            "Australia/Sydney",
            "--format",
            "json",
            "--input",
        ])
        .arg(&oru));
    assert_eq!(code, 0, "{err}");
    let envelope: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(envelope["output"][0]["reportStatus"], "final");
    assert_eq!(
        envelope["output"][0]["interpretingClinicianName"],
        "Anna Smith"
    );
    let unread: Vec<&str> = envelope["unreadFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // What nobody takes: the patient, the exam code, the observation id, a Z-segment.
    for f in ["PID-3", "PID-5", "OBR-4", "OBX-3", "ZDS-1", "MSH-7"] {
        assert!(unread.contains(&f), "{f} missing from {unread:?}");
    }
    // What the rules read (OBX-16 the radiologist, OBX-2 and OBX-11 choose the text rows,
    // OBR-25 the status), the set IDs, and what the bridge reads itself (MSH-9, MSH-10).
    for f in [
        "OBX-16", "OBX-2", "OBX-11", "OBX-5", "OBR-25", "OBR-2", "OBX-1", "MSH-9", "MSH-10",
    ] {
        assert!(
            !unread
                .iter()
                .any(|u| *u == f || u.starts_with(&format!("{f}."))),
            "{f} listed in {unread:?}"
        );
    }

    // A DiagnosticReport: element paths; those behind the read.* fields the mapping uses
    // (presentedForm, basedOn) count as read.
    let report = json!({
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"text": "CT chest"},
        "basedOn": [{"identifier": {"system": "urn:qubs:appointment", "value": "A100001"}}],
        "presentedForm": [{"contentType": "text/plain", "data": "Tm9ybWFsIHN0dWR5Lg=="}],
        "effectiveDateTime": "2026-11-20T09:15:00+11:00"
    });
    let dr = dir.path().join("dr.json");
    std::fs::write(&dr, report.to_string()).unwrap();
    let (code, out, err) = run(bridge()
        .args([
            "map",
            "--mapping",
            "diagnostic_report_to_report",
            "--site-tz",
            "Australia/Sydney",
            "--format",
            "json",
            "--input",
        ])
        .arg(&dr));
    assert_eq!(code, 0, "{err}");
    let envelope: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(envelope["output"][0]["reportText"], "Normal study.");
    let unread: Vec<&str> = envelope["unreadFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(unread.contains(&"resource.code.text"), "{unread:?}");
    for f in [
        "resource.presentedForm",
        "resource.basedOn",
        "resource.status",
        "resource.resourceType",
    ] {
        assert!(
            !unread.iter().any(|u| u.starts_with(f)),
            "{f} listed in {unread:?}"
        );
    }
}

#[test]
fn fields_read_through_filters_and_list_selectors_are_not_unread() {
    // A mapping of the kind an analyst writes: alerts chosen by a list filter, a time
    // converted in the site's zone. Neither `comments[].commentType` nor `site.timeZone`
    // is named as a source, yet both are read.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alerts.yaml"),
        r#"mapping: alerts
input: order
output: fhir
resource: ServiceRequest
rules:
  - target: status
    value: active
  - target: intent
    value: order
  - target: identifier[0].value
    from: appointment.appointmentId
  - target: subject.display
    from: appointment.patientName
  - target: occurrenceDateTime
    template: "{appointment.appointmentDate}T{appointment.startTime}"
    filters: [{site_time: offset}]
  - for_each: comments[commentType in (AA, PA)]
    as: alert
    target: note[*]
    rules:
      - target: text
        from: alert.commentText
"#,
    )
    .unwrap();
    let set = MappingSet::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let order = json!({
        "appointment": {"appointmentId": "A1", "patientName": "Jane Doe",
                        "appointmentDate": "2026-11-20", "startTime": "09:15:00"},
        "comments": [{"commentType": "PA", "commentText": "Contrast allergy"},
                     {"commentType": "AC", "commentText": "Prior CT"}],
        "site": {"timeZone": "Australia/Sydney"}
    });
    let run = set.dry_run("alerts", &order, &Default::default()).unwrap();
    let body = match &run.output.body {
        qubs_bridge::mapping::Body::Fhir(v) => v.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(body["note"], json!([{"text": "Contrast allergy"}]));
    assert_eq!(body["occurrenceDateTime"], "2026-11-20T09:15:00+11:00");
    assert_eq!(
        run.unread_fields,
        Vec::<String>::new(),
        "nothing is left unread"
    );
    // And `mappings fields` says what they decide.
    assert_eq!(
        set.field_fate("alerts", "comments[].commentType"),
        Some(qubs_bridge::mapping::FieldFate::Used(vec![
            "note[*]".into()
        ]))
    );
    assert!(matches!(
        set.field_fate("alerts", "site.timeZone"),
        Some(qubs_bridge::mapping::FieldFate::Used(t)) if t == ["occurrenceDateTime (its UTC offset)"]
    ));
}

// ---------------------------------------------------------------------------------------
// Mistakes, at the right line

#[test]
fn a_bad_code_is_reported_once_at_its_line_in_the_table_file() {
    let dir = mappings_copy(&[]);
    let priority = dir.path().join("tables/priority.yaml");
    edit(&priority, "  stat: stat", "  stat: STAT!");
    let loinc = dir.path().join("tables/exam_loinc.yaml");
    let text = std::fs::read_to_string(&loinc).unwrap();
    let (line_no, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.trim_start().starts_with("CTCHC:"))
        .unwrap();
    std::fs::write(
        &loinc,
        text.replace(line, &line.replace("24628-0", "24628-1")),
    )
    .unwrap();
    let (code, _, err) = run(bridge().args(["mappings", "check"]).arg(dir.path()));
    assert_eq!(code, 1, "{err}");
    let stat_line = std::fs::read_to_string(&priority)
        .unwrap()
        .lines()
        .position(|l| l.contains("STAT!"))
        .unwrap()
        + 1;
    let want = format!(
        "tables/priority.yaml:{stat_line}:3: error: table `priority`: `STAT!` (for `stat`) is not a valid ServiceRequest.priority code"
    );
    assert!(err.contains(&want), "{want}\n{err}");
    assert!(
        !err.contains("service_request.yaml:"),
        "the mapping is not the place: {err}"
    );
    // exam_loinc.yaml feeds three mappings: its bad check digit is said once.
    let at = format!("tables/exam_loinc.yaml:{}:3: error:", line_no + 1);
    assert_eq!(err.matches(&at).count(), 1, "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The input schema and the golden inputs

#[test]
fn mappings_fields_prints_the_whole_input_schema_and_the_fields_of_the_golden_inputs() {
    let (code, out, err) =
        run(bridge().args(["mappings", "fields", "--schema", "--format", "json"]));
    assert_eq!(code, 0, "{err}");
    let fields: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["field"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Every field mapping files are checked against is in the schema.
    let (known, _) = qubs_bridge::mapping::spec::order_shape();
    for k in known.iter().filter(|k| {
        ![
            "appointment",
            "comments",
            "comments[]",
            "attachments",
            "attachments[]",
            "site",
            "config",
            "event",
        ]
        .contains(&k.as_str())
    }) {
        assert!(
            fields
                .iter()
                .any(|f| f == k || f.strip_suffix(".*").is_some_and(|p| p == k)),
            "{k} is missing from the schema"
        );
    }
    for f in [
        "comments[].commentType",
        "attachments[].urlExpiresAtUtc",
        "site.timeZone",
        "appointment.assignedRadiologist.providerNumber",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f}");
    }
    let (code, out, _) = run(bridge().args([
        "mappings",
        "fields",
        "--schema",
        "--input",
        "diagnostic-report",
    ]));
    assert_eq!(code, 0);
    assert!(out.contains("read.interpreter.providerNumber"), "{out}");
    assert!(out.contains("resource.presentedForm[]"), "{out}");

    let (code, out, err) =
        run(bridge().args(["mappings", "fields", "--cases", "--format", "json"]));
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |input: &str, field: &str| {
        rows.iter()
            .find(|r| r["input"] == input && r["field"] == field)
            .unwrap_or_else(|| panic!("no {input} {field}"))
            .clone()
    };
    let modality = row("order", "appointment.modality");
    assert!(modality["cases"].as_u64().unwrap() >= 10);
    assert_eq!(modality["mappings"]["orm_o01"], "sent");
    assert_eq!(
        row("order", "site.timeZone")["mappings"]["orm_o01"],
        "decides"
    );
    assert_eq!(row("oru", "OBX-16")["mappings"]["oru_to_report"], "read");
    assert_eq!(row("oru", "PID-5")["mappings"]["oru_to_report"], "NOT READ");
    assert_eq!(
        row("diagnostic_report", "resource.presentedForm[].data")["mappings"]["diagnostic_report_to_report"],
        "read"
    );
}

// ---------------------------------------------------------------------------------------
// Production

#[tokio::test(flavor = "current_thread")]
async fn an_unknown_modality_is_counted_logged_once_without_its_value_and_stays_ready() {
    let capture = crate::common::logs::Capture::default();
    // The service runs on this thread: a thread-local subscriber sees what it logs here.
    let _guard = tracing::subscriber::set_default(capture.subscriber("qubs_bridge=warn"));
    let sim = Simulator::new();
    sim.add_site("acme", "Main", "Australia/Sydney");
    for (id, modality) in [("A0001", "DEXA"), ("A0002", "CT")] {
        let mut a = crate::common::pending(id);
        a["modality"] = modality.into();
        a["appointmentDate"] = "2026-11-20".into();
        a["startTime"] = "09:15:00".into();
        sim.put_appointment("acme", a);
    }
    let bridge = start_bridge(sim, &[]).await;
    let mut client = OrderServiceClient::new(bridge.channel().await);
    for _ in 0..2 {
        let page = client
            .list_pending_orders(authed(
                ListPendingOrdersRequest {
                    domain: "acme".into(),
                    formats: vec![OutputFormat::Hl7OrmO01 as i32],
                    ..Default::default()
                },
                GRPC_TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        let dexa = page
            .orders
            .iter()
            .find(|o| o.appointment_id == "A0001")
            .unwrap();
        let obr = dexa.outputs[0]
            .content
            .split('\r')
            .find(|s| s.starts_with("OBR|"))
            .unwrap();
        assert_eq!(obr.split('|').nth(24), Some("RAD"), "{obr}");
        assert_eq!(dexa.modality, "DEXA");
        assert_eq!(dexa.scheduled_local, "2026-11-20T09:15:00");
    }
    let metrics = bridge.admin_text("/metrics").await;
    assert!(
        metrics.contains(
            r#"qubs_bridge_mapping_unmapped_values_total{mapping="orm_o01",table="hl7_diagnostic_service"} 2"#
        ),
        "{metrics}"
    );
    let ready = reqwest::get(format!("http://{}/readyz", bridge.service.admin_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let logs = capture.text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("values not in code tables"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "once for the appointment, not per call: {logs}"
    );
    assert!(
        lines[0].contains("appointment_id=\"A0001\""),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("hl7_diagnostic_service"), "{}", lines[0]);
    assert!(!logs.contains("DEXA"), "never the value: {logs}");
    bridge.shutdown.cancel();
}
