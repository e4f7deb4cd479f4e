//! Throughput of the mapping engine on realistic inputs:
//! - orders → FHIR ServiceRequest + HL7 ORM^O01 (both, per order), and each alone;
//! - ORU^R01 (radiology, 5 / 20 / 60 TX observations) → report submission.
//!
//! `cargo bench -j 1 --bench mapping`; numbers are per core (criterion runs one thread).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qubs_bridge::mapping::{InboundContext, MapOptions, MappingSet, OutputCheck};
use serde_json::Value;

fn set() -> MappingSet {
    MappingSet::load_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mappings")).unwrap()
}

fn order() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/orders/routine-ct.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A radiology ORU^R01 with `n` TX observations of report text (~90 bytes each).
fn oru(n: usize) -> String {
    let mut s = String::from(
        "MSH|^~\\&|RIS|NSI|QUBS|ACME|20261120101500+1100||ORU^R01^ORU_R01|MSG0001|P|2.5.1\r\
         PID|1||P-55021^^^acme^MR||O'Brien^Jane^Mary^^Mrs||19610314|F\r\
         PV1|1|O\r\
         ORC|RE|APT-1001^QUBS|F-77^RIS\r\
         OBR|1|APT-1001^QUBS|F-77^RIS|24627-2^CT Chest with contrast^LN|||20261120091500+1100|||||||||^Grant^Alan||ACC-1||||20261120101200+1100|||F|||||||2345678A&Sattler&Ellie&&&Dr\r",
    );
    for i in 1..=n {
        s.push_str(&format!(
            "OBX|{i}|TX|18782-3^Radiology Study observation^LN|{i}|Line {i}: the lungs are clear \\T\\ there is no effusion; heart size normal.||||||F|||20261120101200+1100\r"
        ));
    }
    s
}

fn bench(c: &mut Criterion) {
    let set = set();
    let order = order();
    let opts = MapOptions::default();
    let mut g = c.benchmark_group("order");
    g.throughput(Throughput::Elements(1));
    g.bench_function("service_request+orm_o01", |b| {
        b.iter(|| {
            let a = set
                .map_order_with("service_request", black_box(&order), &opts)
                .unwrap();
            let h = set
                .map_order_with("orm_o01", black_box(&order), &opts)
                .unwrap();
            black_box((a, h))
        })
    });
    g.bench_function("service_request", |b| {
        b.iter(|| {
            black_box(
                set.map_order_with("service_request", black_box(&order), &opts)
                    .unwrap(),
            )
        })
    });
    g.bench_function("orm_o01", |b| {
        b.iter(|| {
            black_box(
                set.map_order_with("orm_o01", black_box(&order), &opts)
                    .unwrap(),
            )
        })
    });
    // The same with the full output check (hl7-parser, fhir-sdk).
    let full = MapOptions {
        check: Some(OutputCheck::Full),
        ..MapOptions::default()
    };
    g.bench_function("orm_o01_full_check", |b| {
        b.iter(|| {
            black_box(
                set.map_order_with("orm_o01", black_box(&order), &full)
                    .unwrap(),
            )
        })
    });
    g.bench_function("service_request+orm_o01_full_check", |b| {
        b.iter(|| {
            let a = set
                .map_order_with("service_request", black_box(&order), &full)
                .unwrap();
            let h = set
                .map_order_with("orm_o01", black_box(&order), &full)
                .unwrap();
            black_box((a, h))
        })
    });
    g.finish();

    let ctx = InboundContext {
        site: serde_json::json!({"timeZone": "Australia/Sydney"}),
        ..Default::default()
    };
    let mut g = c.benchmark_group("oru_to_report");
    g.throughput(Throughput::Elements(1));
    for n in [5usize, 20, 60] {
        let msg = oru(n);
        assert_eq!(set.map_oru(&msg, &ctx).unwrap().submissions.len(), 1);
        g.bench_function(format!("{n}_obx_{}_bytes", msg.len()), |b| {
            b.iter(|| black_box(set.map_oru(black_box(&msg), &ctx).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
