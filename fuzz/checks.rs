//! The invariants the fuzz targets check, in one place: the targets call them on fuzzed
//! input, and `tests/it/fuzz_regressions.rs` (which includes this file) replays every input
//! they ever broke through the very same checks under `cargo test`.

#![allow(dead_code)] // each includer uses part of it

use qubs_bridge::hl7::ack::{self, AckCode, AckError, IncomingHeader};
use qubs_bridge::hl7::er7::{self, Message, Path};
use qubs_bridge::hl7::escape::unescape;
use qubs_bridge::mapping::MappingSet;
use qubs_bridge::results::{code_for, prepare_oru};

/// Bytes → the ORU^R01 intake path without outbox or network: decoding, header recovery,
/// the lazy reader, mapping with `set`, PDF extraction, key derivation and the ACK for the
/// outcome. No panic; prepared results are consistent; the ACK re-reads with the project's
/// reader and its MSA-2 carries the incoming MSH-10 value.
pub fn oru_to_report(
    set: &MappingSet,
    data: &[u8],
    max_attachment_bytes: usize,
    now: &jiff::ZonedDateTime,
) {
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
    let outcome = prepare_oru(set, "acme", &config, &text, &header, max_attachment_bytes);
    if let Ok(prepared) = &outcome {
        assert_eq!(prepared.message.results.len(), prepared.groups.len());
        for r in &prepared.message.results {
            assert!(!r.appointment_id.is_empty());
            for a in &r.attachments {
                assert!(a.content.len() <= max_attachment_bytes);
                assert!(a.content.starts_with(b"%PDF-"));
            }
        }
    }
    let (code, error) = match &outcome {
        Ok(_) => (AckCode::AA, None),
        Err(r) => (r.ack_code, Some(&r.error)),
    };
    let ack_text = ack::build(&header, code_for(&header, code), error, now);

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
}

/// The ACK for `header`: re-reads with the project's reader as exactly MSH, MSA and (with
/// an error) ERR, in the header's delimiters; MSA-1 is the code; MSA-2 is the incoming
/// control id and the error text comes back, both after unescaping.
pub fn ack(
    header: &IncomingHeader,
    code: AckCode,
    error: Option<&AckError>,
    now: &jiff::ZonedDateTime,
) {
    let text = ack::build(header, code, error, now);
    let d = header.delimiters;
    let msg = Message::parse(&text).unwrap_or_else(|e| panic!("ACK does not read ({e}): {text:?}"));
    assert_eq!(msg.delimiters(), d);
    let ids: Vec<&str> = msg.segments().map(|s| s.id()).collect();
    let want: &[&str] = if error.is_some() {
        &["MSH", "MSA", "ERR"]
    } else {
        &["MSH", "MSA"]
    };
    assert_eq!(ids, want, "segments of {text:?}");
    assert!(
        msg.warnings().is_empty(),
        "{:?} in {text:?}",
        msg.warnings()
    );
    let get = |p: &str| msg.query(p).unwrap().unwrap_or_default();
    assert_eq!(get("MSH-9.1"), "ACK");
    assert_eq!(get("MSA-1"), code.as_str());
    assert_eq!(
        unescape(get("MSA-2"), &d),
        header.control_id.as_deref().unwrap_or_default(),
        "MSA-2 in {text:?}"
    );
    if let Some(e) = error {
        // The text is in ERR-8 (2.5 on), whole; or in MSA-3 (before 2.5), whole when it fits
        // the field's 80 characters, else its start followed by `...`.
        let (msa3, err8) = (get("MSA-3"), get("ERR-8"));
        let kept = unescape(err8, &d) == e.text
            || unescape(msa3, &d) == e.text
            || (msa3.chars().count() <= ack::MSA3_LENGTH
                && msa3.ends_with("...")
                && e.text
                    .starts_with(unescape(&msa3[..msa3.len() - 3], &d).as_ref()));
        assert!(kept, "error text lost in {text:?}");
    }
}
