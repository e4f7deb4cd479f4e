//! Bytes as a YAML mapping file (placed in the default mapping directory, so `tables/...`
//! references find the default tables) → `MappingSet::from_texts`: Ok or diagnostics,
//! never a panic or a hang (alias bombs and deep nesting are bounded by serde-saphyr's
//! budget). A file that loads is then run on a fixed order, ORU^R01 and DiagnosticReport,
//! so that whatever the checker lets through is also safe to evaluate.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use qubs_bridge::mapping::{InboundContext, InputKind, MapOptions, MappingSet, OutputCheck};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../mappings");

static ORDER: LazyLock<Value> = LazyLock::new(|| {
    let text = include_str!("../../mappings/tests/order-unicode-and-delimiters/order.json");
    serde_json::from_str(text).unwrap()
});
static ORU: &str = include_str!("../../tests/data/demo-oru-A100001.hl7");
static REPORT: LazyLock<Value> = LazyLock::new(|| {
    let text = include_str!("../../mappings/tests/dr-final-presented-form/input.json");
    serde_json::from_str(text).unwrap()
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = [(PathBuf::from(DIR).join("fuzz.yaml"), text.to_string())];
    let set = match MappingSet::from_texts(&files) {
        Ok(set) => set,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a diagnostic");
            return;
        }
    };
    let options = MapOptions {
        now: Some(
            "2026-11-27T10:00:00+11:00[Australia/Sydney]"
                .parse()
                .unwrap(),
        ),
        control_id: Some("FUZZ1".into()),
        check: Some(OutputCheck::Full),
    };
    let ctx = InboundContext {
        domain: Some("acme".into()),
        site: serde_json::json!({"siteName": "Main", "timeZone": "Australia/Sydney"}),
        config: Value::Object(Default::default()),
    };
    let names: Vec<String> = set.names().map(str::to_string).collect();
    for name in names {
        let _ = match set.get(&name).unwrap().input {
            InputKind::Order => set.map_order_with(&name, &ORDER, &options).map(drop),
            InputKind::Oru => set.map_oru_with(&name, ORU, &ctx).map(drop),
            InputKind::DiagnosticReport => set.map_diagnostic_report(&REPORT, &ctx).map(drop),
        };
    }
});
