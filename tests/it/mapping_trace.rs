//! The value trace as a library API: recording it changes nothing in what is mapped, it
//! covers every rule that ran with where its value came from, and its debug form (what a
//! stray `{:?}` in a log would print) holds no values.

use std::path::{Path, PathBuf};

use qubs_bridge::mapping::trace::{Outcome, SourceTrace};
use qubs_bridge::mapping::{InboundContext, MapOptions, MappingSet};
use serde_json::Value;

fn set() -> MappingSet {
    MappingSet::load_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn options() -> MapOptions {
    MapOptions {
        now: Some(
            "2026-11-20T10:00:00+11:00[Australia/Sydney]"
                .parse()
                .unwrap(),
        ),
        control_id: Some("TRACE0001".into()),
        ..MapOptions::default()
    }
}

/// Every golden order input.
fn golden_orders() -> Vec<(PathBuf, Value)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("mappings/tests")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("order.json").is_file())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let text = std::fs::read_to_string(d.join("order.json")).unwrap();
            let order = serde_json::from_str(&text).unwrap();
            (d, order)
        })
        .collect()
}

#[test]
fn tracing_changes_nothing_in_the_output_of_any_golden_order() {
    let set = set();
    let orders = golden_orders();
    assert!(orders.len() >= 15, "{} golden orders", orders.len());
    for (dir, order) in &orders {
        for name in ["orm_o01", "service_request", "diagnostic_report"] {
            let plain = set.map_order_with(name, order, &options());
            let (traced, trace) = set.map_order_traced(name, order, &options());
            let case = format!("{} / {name}", dir.display());
            match (&plain, &traced) {
                (Ok(a), Ok(b)) => assert_eq!(a.body, b.body, "{case}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{case}"),
                _ => panic!("{case}: {plain:?} traced as {traced:?}"),
            }
            assert_eq!(trace.mapping, name);
            if plain.is_ok() {
                assert!(!trace.fields.is_empty(), "{case}");
            }
            for f in &trace.fields {
                // Every entry names its rule in its file, and a written value says where it
                // came from unless a rule writes a constant.
                assert!(
                    f.rule.starts_with(&format!("{name}.yaml:")),
                    "{case}: {}",
                    f.rule
                );
                if f.outcome == Outcome::Written {
                    assert!(f.value.is_some(), "{case}: {}", f.target);
                }
            }
        }
    }
}

#[test]
fn a_fhir_trace_shows_contained_targets_tables_and_the_alternative_used() {
    let set = set();
    let text = std::fs::read_to_string("mappings/tests/order-routine-ct/order.json").unwrap();
    let mut order: Value = serde_json::from_str(&text).unwrap();
    // `gender` absent: the sex comes from the second alternative.
    let a = order["appointment"].as_object_mut().unwrap();
    let sex = a.remove("gender").unwrap();
    a.insert("patientSex".into(), sex);
    let (result, trace) = set.map_order_traced("service_request", &order, &options());
    result.unwrap();

    let priority = trace.field("priority");
    assert_eq!(priority.len(), 1, "{trace:?}");
    let p = priority[0];
    assert_eq!(p.outcome, Outcome::Written);
    assert_eq!(p.value.as_deref(), Some("asap"));
    let tables: Vec<_> = p.steps.iter().filter_map(|s| s.table.as_ref()).collect();
    assert!(
        tables
            .iter()
            .any(|t| t.table == "priority" && t.key == "Urgent - same day" && t.hit),
        "{:?}",
        p.steps.iter().map(|s| &s.filter).collect::<Vec<_>>()
    );

    // The contained Patient's gender: `#patient/gender`, from `patientSex`.
    let gender: Vec<_> = trace
        .fields
        .iter()
        .filter(|f| f.target.ends_with("/gender"))
        .collect();
    assert_eq!(gender.len(), 1, "{trace:?}");
    assert!(gender[0].target.starts_with('#'), "{}", gender[0].target);
    assert_eq!(gender[0].value.as_deref(), Some("female"));
    match &gender[0].source {
        Some(SourceTrace::Alternatives { alternatives, won }) => {
            let used = &alternatives[won.expect("an alternative was used")];
            assert!(used.path.ends_with("patientSex"), "{}", used.path);
        }
        other => panic!("{:?}", other.is_some()),
    }
}

#[test]
fn an_oru_trace_has_every_group_and_its_debug_form_no_values() {
    let set = set();
    let text = std::fs::read_to_string("tests/data/demo-oru-A100001.hl7").unwrap();
    let ctx = InboundContext {
        site: serde_json::json!({"timeZone": "Australia/Sydney"}),
        ..Default::default()
    };
    let plain = set.map_oru(&text, &ctx).unwrap();
    let (traced, trace) = set.map_oru_traced("oru_to_report", &text, &ctx);
    let traced = traced.unwrap();
    assert_eq!(plain.submissions, traced.submissions);
    let report = trace.field("reportText");
    assert_eq!(report.len(), plain.submissions.len(), "{trace:?}");
    assert!(report.iter().all(|f| f.group.is_some()));
    let appointment = trace.field("appointmentId");
    assert_eq!(
        appointment[0].value.as_deref(),
        Some(plain.submissions[0].appointment_id.as_str())
    );

    // Values are PHI: the trace's Debug lists rules and targets only.
    let debug = format!("{trace:?}");
    assert!(debug.contains("reportText"), "{debug}");
    let text_value = plain.submissions[0].report_text.lines().next().unwrap();
    assert!(!text_value.is_empty());
    assert!(!debug.contains(text_value), "{debug}");
    assert!(
        !debug.contains(&plain.submissions[0].appointment_id),
        "{debug}"
    );
}
