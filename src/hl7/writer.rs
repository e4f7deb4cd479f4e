//! Writing ER7 messages: segments built by position, escaping automatic, CR between
//! segments, trailing empty fields/components/repetitions trimmed; MSH generation.

use super::Delimiters;
use super::escape::{LineBreaks, escape_into};

/// A position in a segment, all 1-based: field, repetition, component, sub-component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// Field number.
    pub field: u16,
    /// Repetition (1 = first).
    pub repetition: u16,
    /// Component (1 = first).
    pub component: u16,
    /// Sub-component (1 = first).
    pub subcomponent: u16,
}

impl Position {
    /// Field `f`, first repetition, first component and sub-component.
    pub fn field(f: u16) -> Position {
        Position {
            field: f,
            repetition: 1,
            component: 1,
            subcomponent: 1,
        }
    }
}

/// One segment under construction; values are plain text, escaped when rendered.
///
/// Values are kept as a flat list of (position, text) — one allocation per value — and
/// placed when rendering; empty values are not kept, which is what trims trailing empty
/// fields, repetitions and components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBuilder {
    id: String,
    values: Vec<(Position, String)>,
}

fn key(p: &Position) -> (u16, u16, u16, u16) {
    (
        p.field,
        p.repetition.max(1),
        p.component.max(1),
        p.subcomponent.max(1),
    )
}

impl SegmentBuilder {
    /// A new empty segment with id `id` (e.g. `PID`).
    pub fn new(id: &str) -> SegmentBuilder {
        SegmentBuilder {
            id: id.to_string(),
            values: Vec::new(),
        }
    }

    /// The segment id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets the plain-text value at `pos`, replacing what was there (`""` clears it).
    pub fn set(&mut self, pos: Position, value: &str) {
        let k = key(&pos);
        let at = self.values.iter().position(|(p, _)| key(p) == k);
        match (at, value.is_empty()) {
            (Some(i), true) => {
                self.values.remove(i);
            }
            (Some(i), false) => {
                self.values[i].1.clear();
                self.values[i].1.push_str(value);
            }
            (None, true) => {}
            (None, false) => self.values.push((pos, value.to_string())),
        }
    }

    /// Sets field `f` (first repetition, component and sub-component).
    pub fn set_field(&mut self, f: u16, value: &str) {
        self.set(Position::field(f), value);
    }

    /// The plain-text value at `pos`, when set.
    pub fn get(&self, pos: Position) -> Option<&str> {
        let k = key(&pos);
        self.values
            .iter()
            .find(|(p, _)| key(p) == k)
            .map(|(_, v)| v.as_str())
    }

    /// Appends this segment, escaped, to `out` (no segment separator).
    pub fn render_into(&self, out: &mut String, d: &Delimiters, breaks: LineBreaks) {
        out.push_str(&self.id);
        // (field, repetition, component, sub-component) written so far.
        let mut cur = (0u16, 1u16, 1u16, 1u16);
        if self.id == "MSH" {
            // MSH-1 and MSH-2 are the delimiters themselves, never values.
            out.push(d.field as char);
            out.push_str(&d.encoding_characters());
            cur.0 = 2;
        }
        let mut order: Vec<&(Position, String)> = self
            .values
            .iter()
            .filter(|(p, _)| !(self.id == "MSH" && p.field <= 2))
            .collect();
        order.sort_by_key(|(p, _)| key(p));
        let push = |out: &mut String, c: u8, n: u16| {
            for _ in 0..n {
                out.push(c as char);
            }
        };
        for (p, v) in order {
            let (f, r, c, sc) = key(p);
            if f > cur.0 {
                push(out, d.field, f - cur.0);
                cur = (f, 1, 1, 1);
            }
            if r > cur.1 {
                push(out, d.repetition, r - cur.1);
                cur = (f, r, 1, 1);
            }
            if c > cur.2 {
                push(out, d.component, c - cur.2);
                cur = (f, r, c, 1);
            }
            if sc > cur.3 {
                push(out, d.subcomponent, sc - cur.3);
                cur.3 = sc;
            }
            escape_into(out, v, d, breaks);
        }
    }
}

/// A message under construction.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    /// Delimiters used when rendering (default `|^~\&`).
    pub delimiters: Delimiters,
    /// How line breaks in values are escaped.
    pub line_breaks: LineBreaks,
    /// Segments in order; the first should be MSH.
    pub segments: Vec<SegmentBuilder>,
}

impl Default for MessageBuilder {
    fn default() -> Self {
        MessageBuilder {
            delimiters: Delimiters::default(),
            line_breaks: LineBreaks::Hex,
            segments: Vec::new(),
        }
    }
}

impl MessageBuilder {
    /// Renders the message: segments separated (and terminated) by CR.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * self.segments.len());
        for s in &self.segments {
            s.render_into(&mut out, &self.delimiters, self.line_breaks);
            out.push('\r');
        }
        out
    }
}

/// What goes into a generated MSH.
#[derive(Debug, Clone)]
pub struct MshFields<'a> {
    /// MSH-3.
    pub sending_application: &'a str,
    /// MSH-4.
    pub sending_facility: &'a str,
    /// MSH-5.
    pub receiving_application: &'a str,
    /// MSH-6.
    pub receiving_facility: &'a str,
    /// MSH-9.1, e.g. `ORM`.
    pub message_code: &'a str,
    /// MSH-9.2, e.g. `O01`.
    pub trigger_event: &'a str,
    /// MSH-9.3, e.g. `ORM_O01` (written from v2.3.1 on).
    pub structure: Option<&'a str>,
    /// MSH-11, `P`, `D` or `T`.
    pub processing_id: &'a str,
    /// MSH-12, e.g. `2.5.1`.
    pub version: &'a str,
    /// MSH-18, e.g. `UNICODE UTF-8`; `None` leaves it empty.
    pub charset: Option<&'a str>,
}

/// Builds an MSH with MSH-7 = `now` and MSH-10 = `control_id`.
pub fn msh(fields: &MshFields<'_>, now: &jiff::ZonedDateTime, control_id: &str) -> SegmentBuilder {
    let mut s = SegmentBuilder::new("MSH");
    s.set_field(3, fields.sending_application);
    s.set_field(4, fields.sending_facility);
    s.set_field(5, fields.receiving_application);
    s.set_field(6, fields.receiving_facility);
    s.set_field(7, &hl7_timestamp(now));
    let nine = |c| Position {
        component: c,
        ..Position::field(9)
    };
    s.set(nine(1), fields.message_code);
    s.set(nine(2), fields.trigger_event);
    if let Some(st) = fields.structure {
        s.set(nine(3), st);
    }
    s.set_field(10, control_id);
    s.set_field(11, fields.processing_id);
    s.set_field(12, fields.version);
    if let Some(cs) = fields.charset {
        s.set_field(18, cs);
    }
    s
}

/// A fresh MSH-10: 20 hex digits from a random (v4) UUID. MSH-10 is an ST of at most 20
/// characters up to v2.6 (the validator's length rule), so a full 32-digit UUID would not
/// fit; 20 digits keep 76 random bits, ample for uniqueness.
pub fn new_control_id() -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.truncate(20);
    s.make_ascii_uppercase();
    s
}

/// HL7 TS/DTM with seconds and offset: `YYYYMMDDHHMMSS+ZZZZ`.
pub fn hl7_timestamp(z: &jiff::ZonedDateTime) -> String {
    z.strftime("%Y%m%d%H%M%S%z").to_string()
}

/// Why an emitted message failed the re-parse check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// hl7-parser refused it.
    #[error("emitted HL7 does not re-parse with hl7-parser: {0}")]
    Parse(String),
    /// hl7-parser read fewer segments than were written.
    #[error("hl7-parser read {parsed} of {written} segments: output would be truncated")]
    Truncated {
        /// Segments hl7-parser saw.
        parsed: usize,
        /// Segments written.
        written: usize,
    },
    /// An MSH field is missing or malformed.
    #[error("emitted MSH is incorrect: {0}")]
    Msh(&'static str),
}

/// Re-parses an emitted message with hl7-parser (an independent implementation) and checks
/// the MSH: delimiters, MSH-7 timestamp, MSH-9 type and trigger, MSH-10, MSH-12.
pub fn check_with_hl7_parser(text: &str) -> Result<(), CheckError> {
    let msg = hl7_parser::Message::parse(text).map_err(|e| CheckError::Parse(e.to_string()))?;
    let written = text.split('\r').filter(|s| !s.is_empty()).count();
    if msg.segments.len() != written {
        return Err(CheckError::Truncated {
            parsed: msg.segments.len(),
            written,
        });
    }
    check_msh(text, |p| msg.query(p).map(|r| r.raw_value()).unwrap_or(""))
}

/// The same checks with this crate's own reader: several times faster than
/// [`check_with_hl7_parser`], for bulk runs of mappings already proven with the full check.
pub fn check_with_reader(text: &str) -> Result<(), CheckError> {
    let msg = super::er7::Message::parse_with(
        text,
        super::er7::ReadOptions {
            wrapped_lines: super::er7::WrappedLines::Reject,
        },
    )
    .map_err(|e| CheckError::Parse(e.to_string()))?;
    let written = text.split('\r').filter(|s| !s.is_empty()).count();
    if msg.len() != written || !msg.warnings().is_empty() {
        return Err(CheckError::Truncated {
            parsed: msg.len(),
            written,
        });
    }
    // Path::parse accepts hl7-parser's `MSH.9.1` spelling too.
    check_msh(text, |p| {
        super::er7::Path::parse(p)
            .ok()
            .and_then(|p| msg.get(&p))
            .unwrap_or("")
    })
}

fn check_msh<'t>(text: &str, q: impl Fn(&str) -> &'t str) -> Result<(), CheckError> {
    if !text.starts_with("MSH|^~\\&|") {
        return Err(CheckError::Msh("MSH-1/MSH-2 must be `|^~\\&`"));
    }
    let ts = q("MSH.7");
    let digits = ts.bytes().take_while(u8::is_ascii_digit).count();
    if !(digits >= 12 && digits % 2 == 0) {
        return Err(CheckError::Msh(
            "MSH-7 must be a timestamp YYYYMMDDHHMM[SS]",
        ));
    }
    let ok3 = |s: &str| s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok3(q("MSH.9.1")) || !ok3(q("MSH.9.2")) {
        return Err(CheckError::Msh(
            "MSH-9 needs a message code and a trigger event",
        ));
    }
    if q("MSH.10").is_empty() {
        return Err(CheckError::Msh("MSH-10 (control id) is empty"));
    }
    if !q("MSH.12").starts_with("2.") {
        return Err(CheckError::Msh("MSH-12 (version) must be 2.x"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::er7::Message;
    use crate::hl7::escape::unescape;

    fn fields() -> MshFields<'static> {
        MshFields {
            sending_application: "QUBS",
            sending_facility: "SITE",
            receiving_application: "RIS",
            receiving_facility: "",
            message_code: "ORM",
            trigger_event: "O01",
            structure: Some("ORM_O01"),
            processing_id: "P",
            version: "2.5.1",
            charset: Some("UNICODE UTF-8"),
        }
    }

    #[test]
    fn renders_trims_and_escapes() {
        let mut s = SegmentBuilder::new("PID");
        s.set_field(3, "123");
        s.set(
            Position {
                component: 2,
                ..Position::field(5)
            },
            "Jane",
        );
        s.set(
            Position {
                component: 1,
                ..Position::field(5)
            },
            "O'Brien|Smith",
        );
        s.set_field(9, "");
        let mut out = String::new();
        s.render_into(&mut out, &Delimiters::default(), LineBreaks::Hex);
        assert_eq!(out, "PID|||123||O'Brien\\F\\Smith^Jane");
    }

    #[test]
    fn msh_and_round_trip() {
        let now: jiff::ZonedDateTime = "2026-04-05T02:30:00+11:00[Australia/Sydney]"
            .parse()
            .unwrap();
        let id = new_control_id();
        assert_eq!(id.len(), 20);
        assert_ne!(id, new_control_id());
        let mut m = MessageBuilder::default();
        m.segments.push(msh(&fields(), &now, &id));
        let mut nte = SegmentBuilder::new("NTE");
        nte.set_field(1, "1");
        let text = "Größe ^ 5 & mehr | ~ \\ line\r\nnext 😀";
        nte.set_field(3, text);
        m.segments.push(nte);
        let out = m.render();
        assert!(out.starts_with("MSH|^~\\&|QUBS|SITE|RIS||20260405023000+1100||ORM^O01^ORM_O01|"));
        check_with_hl7_parser(&out).unwrap();
        let read = Message::parse(&out).unwrap();
        assert_eq!(read.control_id(), Some(id.as_str()));
        let raw = read.query("NTE-3").unwrap().unwrap();
        assert_eq!(unescape(raw, &read.delimiters()), text);
        assert_eq!(read.query("MSH-18").unwrap(), Some("UNICODE UTF-8"));
    }

    #[test]
    fn reader_check_agrees() {
        for t in [
            "MSH|^~\\&|A||||2026||ORM^O01|1|P|2.5\r",
            "MSH|^~\\&|A||||20260101120000||ORM|1|P|2.5\r",
            "MSH|^~\\&|A||||20260101120000||ORM^O01||P|2.5\r",
            "MSH|^~\\&|A||||20260101120000||ORM^O01|1|P|2.5\r",
            "MSH|^~\\&|A||||20260101120000||ORM^O01|1|P|2.5\rPID|1\r",
        ] {
            assert_eq!(
                check_with_reader(t).is_ok(),
                check_with_hl7_parser(t).is_ok(),
                "{t:?}"
            );
        }
        assert!(
            check_with_reader("MSH|^~\\&|A||||20260101120000||ORM^O01|1|P|2.5\rPID|1\rbroken\r")
                .is_err()
        );
    }

    #[test]
    fn check_catches_bad_msh() {
        assert!(check_with_hl7_parser("MSH|^~\\&|A||||2026||ORM^O01|1|P|2.5\r").is_err());
        assert!(check_with_hl7_parser("MSH|^~\\&|A||||20260101120000||ORM|1|P|2.5\r").is_err());
        assert!(check_with_hl7_parser("MSH|^~\\&|A||||20260101120000||ORM^O01||P|2.5\r").is_err());
        assert!(check_with_hl7_parser("MSH|^~\\&|A||||20260101120000||ORM^O01|1|P|2.5\r").is_ok());
    }
}
