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

type Component = Vec<String>;
type Repetition = Vec<Component>;
type Field = Vec<Repetition>;

/// One segment under construction; values are plain text, escaped when rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBuilder {
    id: String,
    fields: Vec<Field>,
}

fn slot<T: Default>(v: &mut Vec<T>, i1: u16) -> &mut T {
    let i = (i1.max(1) - 1) as usize;
    if v.len() <= i {
        v.resize_with(i + 1, T::default);
    }
    &mut v[i]
}

impl SegmentBuilder {
    /// A new empty segment with id `id` (e.g. `PID`).
    pub fn new(id: &str) -> SegmentBuilder {
        SegmentBuilder {
            id: id.to_string(),
            fields: Vec::new(),
        }
    }

    /// The segment id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets the plain-text value at `pos`, replacing what was there.
    pub fn set(&mut self, pos: Position, value: &str) {
        let f = slot(&mut self.fields, pos.field);
        let r = slot(f, pos.repetition);
        let c = slot(r, pos.component);
        let s = slot(c, pos.subcomponent);
        s.clear();
        s.push_str(value);
    }

    /// Sets field `f` (first repetition, component and sub-component).
    pub fn set_field(&mut self, f: u16, value: &str) {
        self.set(Position::field(f), value);
    }

    /// The plain-text value at `pos`, when set.
    pub fn get(&self, pos: Position) -> Option<&str> {
        let i = |n: u16| (n.max(1) - 1) as usize;
        self.fields
            .get(i(pos.field))?
            .get(i(pos.repetition))?
            .get(i(pos.component))?
            .get(i(pos.subcomponent))
            .map(String::as_str)
    }

    /// Appends this segment, escaped, to `out` (no segment separator).
    pub fn render_into(&self, out: &mut String, d: &Delimiters, breaks: LineBreaks) {
        out.push_str(&self.id);
        let is_msh = self.id == "MSH";
        let first = if is_msh {
            out.push(d.field as char);
            out.push_str(&d.encoding_characters());
            2 // MSH-1 and MSH-2 are written above, never from values.
        } else {
            0
        };
        let last_field = last_non_empty(&self.fields, |f| !field_empty(f));
        for (i, field) in self.fields.iter().enumerate().take(last_field) {
            if i < first {
                continue;
            }
            out.push(d.field as char);
            let last_rep = last_non_empty(field, |r| !rep_empty(r));
            for (ri, rep) in field.iter().enumerate().take(last_rep) {
                if ri > 0 {
                    out.push(d.repetition as char);
                }
                let last_comp = last_non_empty(rep, |c| !comp_empty(c));
                for (ci, comp) in rep.iter().enumerate().take(last_comp) {
                    if ci > 0 {
                        out.push(d.component as char);
                    }
                    let last_sub = last_non_empty(comp, |s| !s.is_empty());
                    for (si, sub) in comp.iter().enumerate().take(last_sub) {
                        if si > 0 {
                            out.push(d.subcomponent as char);
                        }
                        escape_into(out, sub, d, breaks);
                    }
                }
            }
        }
    }
}

fn last_non_empty<T>(v: &[T], non_empty: impl Fn(&T) -> bool) -> usize {
    v.iter().rposition(non_empty).map_or(0, |p| p + 1)
}
fn comp_empty(c: &Component) -> bool {
    c.iter().all(String::is_empty)
}
fn rep_empty(r: &Repetition) -> bool {
    r.iter().all(comp_empty)
}
fn field_empty(f: &Field) -> bool {
    f.iter().all(rep_empty)
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
    let q = |p: &str| msg.query(p).map(|r| r.raw_value()).unwrap_or("");
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
    fn check_catches_bad_msh() {
        assert!(check_with_hl7_parser("MSH|^~\\&|A||||2026||ORM^O01|1|P|2.5\r").is_err());
        assert!(check_with_hl7_parser("MSH|^~\\&|A||||20260101120000||ORM|1|P|2.5\r").is_err());
        assert!(check_with_hl7_parser("MSH|^~\\&|A||||20260101120000||ORM^O01||P|2.5\r").is_err());
        assert!(check_with_hl7_parser("MSH|^~\\&|A||||20260101120000||ORM^O01|1|P|2.5\r").is_ok());
    }
}
