//! HL7 v2 acknowledgements (ACK) for inbound messages.
//!
//! The ACK answers in the sender's own delimiters: MSH-3/4 and MSH-5/6 are the incoming
//! MSH-5/6 and MSH-3/4 copied verbatim (swapped), MSH-9 is `ACK^<trigger>^ACK`, MSH-10 is new,
//! MSH-12 echoes the incoming version, and MSA-2 is always the incoming MSH-10. Errors add an
//! ERR segment with an HL7 table 0357 code, the location and plain text — in ERR-2/3/4/8
//! from v2.5 on; before, ERR-1 (segment ^ sequence ^ field ^ code, four components) and the
//! text in MSA-3, cut to that field's 80 characters.
//!
//! [`IncomingHeader::recover`] reads what it can of a message's MSH even when the rest does
//! not parse, so that an unparseable frame still gets an ACK with its MSH-10.

use std::borrow::Cow;
use std::fmt::Write;

use super::Delimiters;
use super::er7::Message;
use super::escape::{escape, unescape};
use super::writer::{hl7_timestamp, new_control_id};

/// MSA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept.
    AA,
    /// Application error.
    AE,
    /// Application reject.
    AR,
    /// Commit accept (enhanced mode).
    CA,
    /// Commit error (enhanced mode).
    CE,
    /// Commit reject (enhanced mode).
    CR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }
}

/// HL7 table 0357 message error condition codes the bridge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    SegmentSequence,
    RequiredFieldMissing,
    DataTypeError,
    TableValueNotFound,
    UnsupportedMessageType,
    UnsupportedEventCode,
    UnsupportedVersion,
    UnknownKeyIdentifier,
    ApplicationInternalError,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::SegmentSequence => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataTypeError => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedVersion => 203,
            ErrorCode::UnknownKeyIdentifier => 204,
            ErrorCode::ApplicationInternalError => 207,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequence => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataTypeError => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedVersion => "Unsupported version id",
            ErrorCode::UnknownKeyIdentifier => "Unknown key identifier",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }
}

/// Where an error is: segment id, its occurrence (from 1) and field number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLocation {
    pub segment: String,
    pub sequence: u32,
    pub field: u32,
}

/// What goes into ERR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    pub code: ErrorCode,
    pub location: Option<ErrorLocation>,
    /// Plain text for the sender's operators (no patient data).
    pub text: String,
}

/// The MSH fields an ACK needs, read from a message as far as it can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingHeader {
    pub delimiters: Delimiters,
    /// MSH-3..MSH-6 as raw text in the incoming delimiters.
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// MSH-9.1 and MSH-9.2.
    pub message_code: String,
    pub trigger_event: String,
    /// MSH-10, unescaped (its value), when it could be read.
    pub control_id: Option<String>,
    /// MSH-11.
    pub processing_id: String,
    /// MSH-12.
    pub version: String,
    /// MSH-15 accept acknowledgment type (`AL`, `NE`, `ER`, `SU`), empty in original mode.
    pub accept_ack_type: String,
    /// MSH-16 application acknowledgment type.
    pub application_ack_type: String,
}

impl IncomingHeader {
    /// Reads the first MSH found, tolerating a byte-order mark, leading junk and any line
    /// ending. Fields it cannot find are empty.
    pub fn recover(text: &str) -> IncomingHeader {
        let text = text.trim_start_matches('\u{feff}');
        let start = text.find("MSH").filter(|&i| text.len() > i + 4);
        let mut header = IncomingHeader {
            delimiters: Delimiters::default(),
            sending_application: String::new(),
            sending_facility: String::new(),
            receiving_application: String::new(),
            receiving_facility: String::new(),
            message_code: String::new(),
            trigger_event: String::new(),
            control_id: None,
            processing_id: String::new(),
            version: String::new(),
            accept_ack_type: String::new(),
            application_ack_type: String::new(),
        };
        let Some(start) = start else {
            return header;
        };
        // The MSH as the reader sees it when the message reads: a line that is not a segment
        // is part of the field before it (a wrapped value), for MSH-10 too, so MSA-2 echoes
        // the same MSH-10 the mapping reads (found by fuzzing). Otherwise its first line.
        let line = match Message::parse(text) {
            Ok(msg) => msg.segment(0).map(|msh| msh.raw()).unwrap_or_default(),
            Err(_) => text[start..].split(['\r', '\n']).next().unwrap_or_default(),
        };
        // `MSH` at the end of a line has no field separator: nothing more to read.
        let Some(&field_sep) = line.as_bytes().get(3) else {
            return header;
        };
        let fields: Vec<&str> = line.split(field_sep as char).collect();
        // fields[0] = "MSH", fields[1] = MSH-2, fields[n] = MSH-(n+1)
        if let Some(d) = fields
            .get(1)
            .and_then(|enc| Delimiters::from_msh(field_sep, enc.as_bytes()))
        {
            header.delimiters = d;
        } else {
            return header;
        }
        let msh = |n: usize| fields.get(n - 1).copied().unwrap_or_default().to_string();
        header.sending_application = msh(3);
        header.sending_facility = msh(4);
        header.receiving_application = msh(5);
        header.receiving_facility = msh(6);
        let nine = msh(9);
        let mut parts = nine.split(header.delimiters.component as char);
        header.message_code = parts.next().unwrap_or_default().to_string();
        header.trigger_event = parts.next().unwrap_or_default().to_string();
        // MSH-10 is kept as its value: `build` escapes it into MSA-2, so keeping it raw
        // would escape an escaped id twice and MSA-2 would no longer match it.
        let control = msh(10);
        header.control_id =
            (!control.is_empty()).then(|| unescape(&control, &header.delimiters).into_owned());
        header.processing_id = msh(11);
        header.version = msh(12)
            .split(header.delimiters.component as char)
            .next()
            .unwrap_or_default()
            .to_string();
        header.accept_ack_type = msh(15);
        header.application_ack_type = msh(16);
        header
    }

    /// Whether MSH-15/16 ask for enhanced-mode acknowledgements.
    pub fn enhanced_mode(&self) -> bool {
        !self.accept_ack_type.is_empty() || !self.application_ack_type.is_empty()
    }
}

/// Whether `version` is 2.5 or later (ERR-2..ERR-8 layout).
fn err_v25(version: &str) -> bool {
    let mut it = version.split('.');
    let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    (major, minor) >= (2, 5)
}

/// Renders the ACK (CR-separated, in the incoming delimiters).
pub fn build(
    incoming: &IncomingHeader,
    code: AckCode,
    error: Option<&AckError>,
    now: &jiff::ZonedDateTime,
) -> String {
    let d = &incoming.delimiters;
    let f = d.field as char;
    let c = d.component as char;
    let s = d.subcomponent as char;
    let version = if incoming.version.is_empty() {
        "2.5.1".into()
    } else {
        echoed(&incoming.version, d)
    };
    let version = version.as_ref();
    let trigger = if incoming.trigger_event.is_empty() {
        "R01".into()
    } else {
        echoed(&incoming.trigger_event, d)
    };
    let processing = if incoming.processing_id.is_empty() {
        "P".into()
    } else {
        echoed(&incoming.processing_id, d)
    };
    let v25 = err_v25(version);
    let mut out = String::with_capacity(256);
    let _ = write!(
        out,
        "MSH{f}{enc}{f}{ra}{f}{rf}{f}{sa}{f}{sf}{f}{now}{f}{f}ACK{c}{trigger}{structure}{f}{id}{f}{processing}{f}{version}\r",
        enc = d.encoding_characters(),
        ra = echoed(&incoming.receiving_application, d),
        rf = echoed(&incoming.receiving_facility, d),
        sa = echoed(&incoming.sending_application, d),
        sf = echoed(&incoming.sending_facility, d),
        // The offset sign may be a delimiter: `+` or `-` are valid separators.
        now = escape(&hl7_timestamp(now), d),
        structure = if version_at_least(version, 2, 3, 1) {
            format!("{c}ACK")
        } else {
            String::new()
        },
        id = new_control_id(),
    );
    let _ = write!(
        out,
        "MSA{f}{}{f}{}",
        code.as_str(),
        echoed(
            &escape(incoming.control_id.as_deref().unwrap_or_default(), d),
            d
        )
    );
    if let (Some(e), false) = (error, v25) {
        // Before 2.5 the text goes in MSA-3, an ST of at most 80 characters.
        let _ = write!(out, "{f}{}", within(&e.text, MSA3_LENGTH, d));
    }
    out.push('\r');
    if let Some(e) = error {
        let location = e
            .location
            .as_ref()
            .map(|l| format!("{}{c}{}{c}{}", escape(&l.segment, d), l.sequence, l.field))
            .unwrap_or_default();
        let text = echoed(&escape(&e.text, d), d).into_owned();
        if v25 {
            let _ = write!(
                out,
                "ERR{f}{f}{location}{f}{code}{c}{desc}{c}HL70357{f}E{f}{f}{f}{f}{text}\r",
                code = e.code.code(),
                desc = e.code.description(),
            );
        } else {
            // ERR-1 (v2.2-2.4: CM, named ELD from 2.3.1) has four components: segment ID ^
            // sequence ^ field position ^ code identifying error (a CE, so its code, text
            // and table are subcomponents). Without a location the first three stay empty.
            let location = if location.is_empty() {
                format!("{c}{c}")
            } else {
                location
            };
            let _ = write!(
                out,
                "ERR{f}{location}{c}{code}{s}{desc}{s}HL70357\r",
                code = e.code.code(),
                desc = e.code.description(),
            );
        }
    }
    out
}

/// MSA-3's length in v2.2-2.4 (the field that carries the error text there).
pub const MSA3_LENGTH: usize = 80;

/// `text` escaped for a field of at most `limit` characters (as written, escapes counted):
/// whole when it fits, else cut at a character and ended with `...`.
fn within(text: &str, limit: usize, d: &Delimiters) -> String {
    let written = |t: &str| echoed(&escape(t, d), d).into_owned();
    let whole = written(text);
    if whole.chars().count() <= limit {
        return whole;
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let piece = written(c.encode_utf8(&mut [0; 4]));
        let n = piece.chars().count();
        if used + n > limit - 3 {
            break;
        }
        out.push_str(&piece);
        used += n;
    }
    out.push_str("...");
    out
}

/// A raw header field (text in the incoming delimiters) echoed into the ACK. It must not
/// bring in a field separator (one set by hand would shift the ACK's fields), a line break
/// (it would split a segment) or MLLP framing bytes (0x0B, or 0x1C before the CR that ends
/// a segment: an ACK holding those cannot be sent at all). Field separators become `\F\`,
/// every ASCII control character a `\Xhh\` escape.
fn echoed<'a>(value: &'a str, d: &Delimiters) -> Cow<'a, str> {
    if !value.bytes().any(|b| b.is_ascii_control() || b == d.field) {
        return Cow::Borrowed(value);
    }
    let e = d.escape as char;
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if c == d.field as char {
            let _ = write!(out, "{e}F{e}");
        } else if c.is_ascii_control() {
            let _ = write!(out, "{e}X{:02X}{e}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn version_at_least(version: &str, major: u32, minor: u32, patch: u32) -> bool {
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    );
    v >= (major, minor, patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::ZonedDateTime {
        "2026-11-27T10:00:00+11:00[Australia/Sydney]"
            .parse()
            .unwrap()
    }

    const ORU: &str = "MSH|^~\\&|RIS|HOSP^1.2.3^ISO|QUBS|RAD|20261127093000||ORU^R01^ORU_R01|MSG0001|P|2.5.1\rPID|1\rOBR|1|A1\r";

    #[test]
    fn accept_swaps_sender_and_receiver_and_echoes_msh10() {
        let h = IncomingHeader::recover(ORU);
        let ack = build(&h, AckCode::AA, None, &now());
        let segs: Vec<&str> = ack.split('\r').collect();
        let msh: Vec<&str> = segs[0].split('|').collect();
        assert_eq!(&msh[2..6], ["QUBS", "RAD", "RIS", "HOSP^1.2.3^ISO"]);
        assert_eq!(msh[6], "20261127100000+1100");
        assert_eq!(msh[8], "ACK^R01^ACK");
        assert_ne!(msh[9], "MSG0001");
        assert_eq!(msh[11], "2.5.1");
        assert_eq!(segs[1], "MSA|AA|MSG0001");
        assert_eq!(segs.len(), 3, "MSH, MSA, then the final CR");
    }

    #[test]
    fn errors_use_the_v25_err_layout() {
        let h = IncomingHeader::recover(ORU);
        let e = AckError {
            code: ErrorCode::RequiredFieldMissing,
            location: Some(ErrorLocation {
                segment: "OBR".into(),
                sequence: 1,
                field: 25,
            }),
            text: "result status | missing".into(),
        };
        let ack = build(&h, AckCode::AE, Some(&e), &now());
        let segs: Vec<&str> = ack.split('\r').collect();
        assert_eq!(segs[1], "MSA|AE|MSG0001");
        assert_eq!(
            segs[2],
            "ERR||OBR^1^25|101^Required field missing^HL70357|E||||result status \\F\\ missing"
        );
    }

    #[test]
    fn before_v25_err1_and_msa3_carry_the_error() {
        let h = IncomingHeader::recover(&ORU.replace("2.5.1", "2.3"));
        let e = AckError {
            code: ErrorCode::UnknownKeyIdentifier,
            location: None,
            text: "appointment not found".into(),
        };
        let ack = build(&h, AckCode::AE, Some(&e), &now());
        let segs: Vec<&str> = ack.split('\r').collect();
        assert!(segs[0].contains("|ACK^R01|"), "{}", segs[0]);
        assert_eq!(segs[1], "MSA|AE|MSG0001|appointment not found");
        assert_eq!(segs[2], "ERR|^^^204&Unknown key identifier&HL70357");

        let located = AckError {
            location: Some(ErrorLocation {
                segment: "OBR".into(),
                sequence: 1,
                field: 2,
            }),
            ..e
        };
        let ack = build(&h, AckCode::AE, Some(&located), &now());
        assert!(
            ack.ends_with("\rERR|OBR^1^2^204&Unknown key identifier&HL70357\r"),
            "{ack}"
        );
    }

    #[test]
    fn before_v25_the_text_fits_msa3() {
        let h = IncomingHeader::recover(&ORU.replace("2.5.1", "2.4"));
        let long = AckError {
            code: ErrorCode::UnknownKeyIdentifier,
            location: None,
            text: format!("appointment A404 | is unknown {}", "x".repeat(100)),
        };
        let ack = build(&h, AckCode::AE, Some(&long), &now());
        let msa3 = ack
            .split('\r')
            .nth(1)
            .unwrap()
            .splitn(4, '|')
            .nth(3)
            .unwrap();
        assert_eq!(msa3.chars().count(), MSA3_LENGTH, "{msa3}");
        assert!(
            msa3.starts_with("appointment A404 \\F\\ is unknown xx"),
            "{msa3}"
        );
        assert!(msa3.ends_with("x..."), "{msa3}");
        // Short texts are whole; v2.5 puts any length in ERR-8.
        let short = AckError {
            text: "appointment not found".into(),
            ..long.clone()
        };
        let ack = build(&h, AckCode::AE, Some(&short), &now());
        assert!(
            ack.contains("\rMSA|AE|MSG0001|appointment not found\r"),
            "{ack}"
        );
        let ack = build(
            &IncomingHeader::recover(ORU),
            AckCode::AE,
            Some(&long),
            &now(),
        );
        assert!(
            ack.ends_with(&format!("is unknown {}\r", "x".repeat(100))),
            "{ack}"
        );
    }

    #[test]
    fn recovers_what_it_can_from_broken_input() {
        let h = IncomingHeader::recover(
            "\u{feff}junk\nMSH|^~\\&|A|B|C|D|x||ORU^R01|ID42|P|2.4\nOBX|bad",
        );
        assert_eq!(h.control_id.as_deref(), Some("ID42"));
        assert_eq!(h.version, "2.4");
        for short in ["MSH\rPID|1", "MSH\r\n", "junk MSH\nMSH"] {
            assert_eq!(IncomingHeader::recover(short).control_id, None, "{short:?}");
        }
        // `MSH` alone on its line: recover indexed past the line and panicked.
        let h = IncomingHeader::recover("MSH\rPID|1\r");
        assert_eq!(h.message_code, "");
        let h = IncomingHeader::recover("not hl7 at all");
        assert_eq!(h.control_id, None);
        let ack = build(&h, AckCode::AR, None, &now());
        assert!(ack.contains("\rMSA|AR|\r"), "{ack}");
        let h = IncomingHeader::recover("MSH#^~\\&#A#B#C#D#x##ORU^R01#X9#P#2.5");
        let ack = build(&h, AckCode::AA, None, &now());
        assert!(ack.starts_with("MSH#^~\\&#C#D#A#B#"), "{ack}");
        assert!(ack.contains("MSA#AA#X9"), "{ack}");
    }

    #[test]
    fn echoed_control_characters_are_hex_escaped() {
        let h = IncomingHeader::recover(
            "MSH|^~\\&|A\x0b|B|C|D|x||ORU^R01|ID\x1c|P|2.5.1\x1c|||\rPID|1",
        );
        let e = AckError {
            code: ErrorCode::DataTypeError,
            location: None,
            text: "bad\x1c".into(),
        };
        let ack = build(&h, AckCode::AE, Some(&e), &now());
        assert!(
            crate::mllp::codec::check_payload(ack.as_bytes()).is_ok(),
            "{ack:?}"
        );
        assert!(ack.contains("|A\\X0B\\|"), "{ack:?}");
        assert!(ack.contains("|2.5.1\\X1C\\\r"), "{ack:?}");
        assert!(ack.contains("\rMSA|AE|ID\\X1C\\\r"), "{ack:?}");
        assert!(ack.contains("|bad\\X1C\\\r"), "{ack:?}");
    }

    #[test]
    fn an_escaped_control_id_is_echoed_as_the_same_value() {
        // MSH-10 `M\T\1` (the value `M&1`) used to come back as `M\E\T\E\1`.
        let h = IncomingHeader::recover("MSH|^~\\&|A|B|C|D|x||ORU^R01|M\\T\\1|P|2.5.1\r");
        assert_eq!(h.control_id.as_deref(), Some("M&1"));
        let ack = build(&h, AckCode::AA, None, &now());
        assert!(ack.contains("\rMSA|AA|M\\T\\1\r"), "{ack}");
    }

    #[test]
    fn a_wrapped_msh10_is_echoed_whole() {
        // Found by fuzzing: the reader joins a line that is not a segment to the field
        // before it, recover stopped at the line break, and MSA-2 lost the second part.
        let h = IncomingHeader::recover("MSH|^~\\&|A|B|C|D|x||ORU^R01|ID\n42|P|2.5\rOBR|1\r");
        assert_eq!(h.control_id.as_deref(), Some("ID\n42"));
        assert_eq!(h.version, "2.5");
        let ack = build(&h, AckCode::AA, None, &now());
        assert!(ack.contains("\rMSA|AA|ID\\X0A\\42\r"), "{ack}");
    }

    #[test]
    fn enhanced_mode_is_read_from_msh15_16() {
        let h = IncomingHeader::recover("MSH|^~\\&|A|B|C|D|x||ORU^R01|1|P|2.5.1|||AL|AL\r");
        assert!(h.enhanced_mode());
        assert!(!IncomingHeader::recover(ORU).enhanced_mode());
    }
}
