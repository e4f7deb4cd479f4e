//! Runs the golden cases in mappings/tests against the shipped mappings.
//! `UPDATE_GOLDEN=1 cargo test --test mapping_golden` rewrites the expectations.

use std::path::PathBuf;

use qubs_bridge::mapping::{MappingSet, golden};

#[test]
fn golden_cases_pass() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let set = MappingSet::load_dir(&root).unwrap_or_else(|e| panic!("{e}"));
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let report = golden::run(&set, &root.join("tests"), update).unwrap();
    println!("{report}");
    assert!(report.results.len() >= 30, "cases went missing");
    assert!(report.passed(), "{report}");
}

#[test]
fn golden_mismatch_shows_a_diff() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let set = MappingSet::load_dir(&root).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("c");
    std::fs::create_dir(&case).unwrap();
    std::fs::copy(
        root.join("tests/order-routine-ct/order.json"),
        case.join("order.json"),
    )
    .unwrap();
    std::fs::write(
        case.join("case.yaml"),
        "input: order.json\nkind: order\noutputs:\n  - mapping: service_request\n    expected: sr.json\n",
    )
    .unwrap();
    std::fs::write(
        case.join("sr.json"),
        "{\n  \"resourceType\": \"ServiceRequest\"\n}\n",
    )
    .unwrap();
    let r = golden::run(&set, tmp.path(), false).unwrap();
    assert!(!r.passed());
    let detail = r.results[0].detail.clone().unwrap();
    // Field by field: what the expectation lacks, by JSON path.
    assert!(detail.contains("status: (absent) → active"), "{detail}");
    assert!(
        !detail.lines().any(|l| l.starts_with("resourceType")),
        "{detail}"
    );
    // With update, the expectation is rewritten and the next run passes.
    assert!(golden::run(&set, tmp.path(), true).unwrap().passed());
    assert!(golden::run(&set, tmp.path(), false).unwrap().passed());
}

#[test]
fn run_dir_loads_the_set_and_reports_load_errors() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mappings");
    assert!(golden::run_dir(&root, false).unwrap().passed());
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("bad.yaml"), "mapping: bad\ninput: order\n").unwrap();
    let e = golden::run_dir(tmp.path(), false).unwrap_err().to_string();
    assert!(e.contains("bad.yaml:1:1: error: missing `output:`"), "{e}");
}

#[test]
fn mapping_set_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<MappingSet>();
}
