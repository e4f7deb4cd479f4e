//! Structured input → the ACK builder, original and enhanced codes, every HL7 version
//! layout, error codes and locations, with hostile header values (delimiters, escape
//! sequences, line breaks, unicode). Invariants: the ACK re-reads with the project's
//! reader as exactly MSH, MSA and (with an error) ERR; MSA-1 is the code; MSA-2 is the
//! incoming control id and the error text comes back, both after unescaping.

#![no_main]

#[path = "../checks.rs"]
mod checks;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use qubs_bridge::hl7::Delimiters;
use qubs_bridge::hl7::ack::{AckCode, AckError, ErrorCode, ErrorLocation, IncomingHeader};

const VERSIONS: [&str; 12] = [
    "", "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.9",
];
const CODES: [AckCode; 6] = [
    AckCode::AA,
    AckCode::AE,
    AckCode::AR,
    AckCode::CA,
    AckCode::CE,
    AckCode::CR,
];
const ERRORS: [ErrorCode; 9] = [
    ErrorCode::SegmentSequence,
    ErrorCode::RequiredFieldMissing,
    ErrorCode::DataTypeError,
    ErrorCode::TableValueNotFound,
    ErrorCode::UnsupportedMessageType,
    ErrorCode::UnsupportedEventCode,
    ErrorCode::UnsupportedVersion,
    ErrorCode::UnknownKeyIdentifier,
    ErrorCode::ApplicationInternalError,
];

/// A string biased towards what breaks HL7: delimiters, escapes, breaks, non-ASCII.
#[derive(Debug)]
struct Hostile(String);

impl<'a> Arbitrary<'a> for Hostile {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        const PIECES: [&str; 18] = [
            "|", "^", "~", "\\", "&", "#", "\r", "\n", "\r\n", "\\F\\", "\\E\\", "\\X0D\\", "MSH",
            "ERR|", "é", "😀", "\u{feff}", "A1",
        ];
        let mut s = String::new();
        for _ in 0..u.int_in_range(0..=8)? {
            if u.arbitrary()? {
                s.push_str(u.choose(&PIECES)?);
            } else {
                s.push_str(u.arbitrary::<&str>()?);
            }
        }
        Ok(Hostile(s))
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// MSH-1 and MSH-2; default delimiters when they are not valid.
    delimiters: [u8; 5],
    sending_application: Hostile,
    sending_facility: Hostile,
    receiving_application: Hostile,
    receiving_facility: Hostile,
    trigger_event: Hostile,
    control_id: Option<Hostile>,
    processing_id: Hostile,
    /// A known version, or (past the list) any text.
    version: (u8, Hostile),
    accept_ack_type: Hostile,
    application_ack_type: Hostile,
    code: u8,
    error: Option<Error>,
}

#[derive(Debug, Arbitrary)]
struct Error {
    code: u8,
    location: Option<(Hostile, u32, u32)>,
    text: Hostile,
}

fuzz_target!(|input: Input| {
    let [f, c, r, e, s] = input.delimiters;
    let delimiters = Delimiters::from_msh(f, &[c, r, e, s]).unwrap_or_default();
    let version = match VERSIONS.get(usize::from(input.version.0)) {
        Some(v) => v.to_string(),
        None => input.version.1.0,
    };
    let header = IncomingHeader {
        delimiters,
        sending_application: input.sending_application.0,
        sending_facility: input.sending_facility.0,
        receiving_application: input.receiving_application.0,
        receiving_facility: input.receiving_facility.0,
        message_code: "ORU".into(),
        trigger_event: input.trigger_event.0,
        control_id: input.control_id.map(|h| h.0),
        processing_id: input.processing_id.0,
        version,
        accept_ack_type: input.accept_ack_type.0,
        application_ack_type: input.application_ack_type.0,
    };
    let code = CODES[usize::from(input.code) % CODES.len()];
    let error = input.error.map(|e| AckError {
        code: ERRORS[usize::from(e.code) % ERRORS.len()],
        location: e.location.map(|(segment, sequence, field)| ErrorLocation {
            segment: segment.0,
            sequence,
            field,
        }),
        text: e.text.0,
    });
    let now: jiff::ZonedDateTime = "2026-04-05T02:30:00+10:00[Australia/Sydney]"
        .parse()
        .unwrap();

    checks::ack(&header, code, error.as_ref(), &now);
});
