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
    assert_eq!(v["occurrenceDateTime"], "2026-11-20T09:15:00+11:00");
    assert_eq!(v["identifier"][0]["value"], "APT-1001");
    assert_eq!(v["subject"]["display"], "Mrs Jane Mary O'Brien");
    assert_eq!(
        v["note"][0]["text"],
        "Prior CT 2024 at another site ^ compare"
    );
    assert_eq!(
        v["note"][1]["text"],
        "ALERT: Contrast allergy (iodine) - premedicate"
    );
    assert_eq!(v["code"]["coding"][0]["code"], "24627-2");
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
        t.contains("\rORC|NW|APT-1001^QUBS|||SC||^^^20261120091500+1100^20261120094500+1100^A|")
    );
    assert!(t.contains("Persistent cough 6 weeks. ?mass \\F\\ r/o PE"));
    assert!(t.contains("\rNTE|2|O|ALERT: Contrast allergy (iodine) - premedicate|RE\r"));
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
