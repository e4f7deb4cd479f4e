//! Bytes → the ORU^R01 intake path without outbox or network: decoding, header recovery,
//! the lazy reader, mapping with the default mapping set, PDF extraction, key derivation
//! and the ACK for the outcome. Invariants: no panic; the ACK re-reads with the project's
//! reader and its MSA-2 carries the incoming MSH-10 value.

#![no_main]

#[path = "../checks.rs"]
mod checks;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use qubs_bridge::mapping::MappingSet;

static SET: LazyLock<MappingSet> = LazyLock::new(|| {
    MappingSet::load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../mappings"))
        .expect("the default mapping set loads")
});

static NOW: LazyLock<jiff::ZonedDateTime> = LazyLock::new(|| {
    "2026-11-27T10:00:00+11:00[Australia/Sydney]"
        .parse()
        .unwrap()
});

/// Small, so that the size check and its refusal are reachable with small inputs.
const MAX_ATTACHMENT_BYTES: usize = 256;

fuzz_target!(|data: &[u8]| {
    checks::oru_to_report(&SET, data, MAX_ATTACHMENT_BYTES, &NOW);
});
