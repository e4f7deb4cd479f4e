//! Bytes → the ORU^R01 intake path without outbox or network: decoding, header recovery,
//! the lazy reader, mapping with the default mapping set, PDF extraction, key derivation
//! and the ACK for the outcome. Invariants: no panic; the ACK re-reads with the project's
//! reader and its MSA-2 carries the incoming MSH-10 value.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use qubs_bridge::hl7::ack::{self, AckCode, IncomingHeader};
use qubs_bridge::hl7::er7::{self, Message, Path};
use qubs_bridge::hl7::escape::unescape;
use qubs_bridge::mapping::MappingSet;
use qubs_bridge::results::{commit_code, prepare_oru};

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
    let text = er7::decode_bytes(data);
    let header = IncomingHeader::recover(&text);

    // The reader on its own, beyond what the default mapping asks of it.
    if let Ok(msg) = Message::parse(&text) {
        let _ = msg.control_id();
        let groups = msg.order_groups();
        let paths = ["OBX[*]-5", "OBR-25", "PID-3[2].1", "MSH-9.2", "OBR-32.1.2"];
        for g in &groups {
            let scope = msg.group_scope(g);
            for p in paths {
                let p = Path::parse(p).unwrap();
                for v in scope.all(&p) {
                    let _ = unescape(v, &msg.delimiters());
                }
            }
        }
        assert!(msg.covered_len() <= msg.text().len());
    }

    let config = serde_json::Map::new();
    let outcome = prepare_oru(&SET, "acme", &config, &text, &header, MAX_ATTACHMENT_BYTES);
    if let Ok(prepared) = &outcome {
        assert_eq!(prepared.message.results.len(), prepared.groups.len());
        for r in &prepared.message.results {
            assert!(!r.appointment_id.is_empty());
            for a in &r.attachments {
                assert!(a.content.len() <= MAX_ATTACHMENT_BYTES);
                assert!(a.content.starts_with(b"%PDF-"));
            }
        }
    }
    let (code, error) = match &outcome {
        Ok(_) => (AckCode::AA, None),
        Err(r) => (r.ack_code, Some(&r.error)),
    };
    let code = if header.enhanced_mode() {
        commit_code(code)
    } else {
        code
    };
    let ack_text = ack::build(&header, code, error, &NOW);

    let ack = Message::parse(&ack_text).expect("the ACK re-reads");
    assert_eq!(ack.delimiters(), header.delimiters);
    let msa = ack.query("MSA-2").unwrap().unwrap_or_default();
    assert_eq!(
        unescape(msa, &header.delimiters),
        header.control_id.as_deref().unwrap_or_default(),
        "MSA-2 carries MSH-10"
    );
    // When the message reads, the MSH-10 it holds (unescaped) is what MSA-2 says.
    if let Ok(msg) = Message::parse(&text)
        && msg.delimiters() == header.delimiters
        && let Some(raw) = msg.control_id()
        && header.control_id.is_some()
    {
        assert_eq!(
            unescape(msa, &header.delimiters),
            unescape(raw, &header.delimiters),
            "MSA-2 is the message's MSH-10 value"
        );
    }
});
