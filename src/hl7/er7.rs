//! A lazy, zero-copy ER7 reader.
//!
//! [`Message::parse`] strips a UTF-8 byte-order mark, reads the delimiters from MSH-1/MSH-2,
//! and records where each segment starts and ends; nothing else is split until a query asks
//! for it, and every answer is a slice of the input (raw, still escaped: pass it through
//! [`super::escape::unescape`] for text).
//!
//! Segment separators may be CR, LF or CRLF, mixed. Empty lines are skipped (with a
//! warning). A line that does not start with a segment id (`[A-Z][A-Z0-9]{2}` followed by
//! the field separator or the end of the line) is a field value that was wrapped by a raw
//! line break — seen in real feeds, e.g. a CR inside base64 or an LF inside a phone number.
//! hl7-parser silently stops there. We do not: by default ([`WrappedLines::Rejoin`]) the
//! line is joined back to the segment before it, the line break staying inside that field's
//! value (the slice spans both lines, so no copy), and a [`ReadWarning::WrappedLineRejoined`]
//! is recorded; with [`WrappedLines::Reject`] the message is refused with
//! [`ReadError::WrappedLine`].
//!
//! Queries ([`Path`]) look like `OBR-25`, `OBR-32.1.2`, `OBX[2]-5`, `OBX[*]-5`,
//! `PID-3[2].1`: segment occurrence and field repetition are 1-based, `*` means all.
//! Without a repetition, a field query returns the whole field (all repetitions) and a
//! component query reads the first repetition.
//!
//! ORDER_OBSERVATION groups ([`Message::order_groups`]): a group starts at an ORC, or at
//! an OBR not directly claimed by the ORC before it, and runs to the next group. A
//! [`Scope`] over a group answers from the group's segments first and, for segment ids the
//! group does not contain, from the segments before the first group (MSH, PID, PV1, ...).

use std::fmt;
use std::ops::Range;

use super::Delimiters;

/// What to do with a line that is not a segment (a wrapped field value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WrappedLines {
    /// Join it to the previous segment, keeping the line break in the field value; warn.
    #[default]
    Rejoin,
    /// Refuse the message.
    Reject,
}

/// Reader options.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Handling of lines that are not segments.
    pub wrapped_lines: WrappedLines,
}

/// Something the reader tolerated but the caller may want to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadWarning {
    /// An empty line between segments was skipped.
    EmptyLine {
        /// 1-based line number.
        line: usize,
    },
    /// A line that is not a segment was joined to the segment before it.
    WrappedLineRejoined {
        /// 1-based line number of the wrapped line.
        line: usize,
        /// Id of the segment it was joined to.
        segment: String,
    },
}

impl fmt::Display for ReadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadWarning::EmptyLine { line } => write!(f, "line {line}: empty segment skipped"),
            ReadWarning::WrappedLineRejoined { line, segment } => write!(
                f,
                "line {line}: not a segment; joined to the {segment} segment before it \
                 (a raw line break inside a field value)"
            ),
        }
    }
}

/// Why a message or a query could not be read. Never contains field values (PHI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The text does not start with MSH.
    #[error(
        "no MSH segment: an HL7 v2 message must start with `MSH` (after an optional byte-order mark)"
    )]
    NoMsh,
    /// MSH-1/MSH-2 are not usable delimiters.
    #[error(
        "MSH-2 encoding characters invalid: expected MSH-1 and four distinct punctuation \
         characters such as `|^~\\&`"
    )]
    EncodingCharacters,
    /// A line that is not a segment, with [`WrappedLines::Reject`].
    #[error(
        "message {msh10}: line {line} is not a segment (a raw line break inside a field of \
         the {previous} segment before it)",
        msh10 = .msh10.as_deref().unwrap_or("(no MSH-10)")
    )]
    WrappedLine {
        /// MSH-10 when present.
        msh10: Option<String>,
        /// 1-based line number.
        line: usize,
        /// Id of the segment before it.
        previous: String,
    },
    /// A query that is not of the form `SEG[n]-F[r].C.S`.
    #[error("invalid HL7 path `{path}`: {reason}")]
    BadPath {
        /// The path as written.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// 1-based selector of a segment occurrence or a field repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// The n-th (1-based).
    Nth(u16),
    /// All of them.
    All,
}

/// A parsed HL7 position such as `OBX[*]-5.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Segment id, e.g. `OBX`.
    pub segment: [u8; 3],
    /// Which occurrence of the segment; default the first.
    pub occurrence: Index,
    /// Field number (1-based).
    pub field: u16,
    /// Which repetition; `None` = whole field for field queries, first for deeper ones.
    pub repetition: Option<Index>,
    /// Component (1-based).
    pub component: Option<u16>,
    /// Sub-component (1-based).
    pub subcomponent: Option<u16>,
}

impl Path {
    /// Parses `SEG[n]-F[r].C.S` (`.` is accepted instead of `-`, as hl7-parser writes it).
    pub fn parse(s: &str) -> Result<Path, ReadError> {
        let bad = |reason| ReadError::BadPath {
            path: s.to_string(),
            reason,
        };
        let b = s.as_bytes();
        if b.len() < 5 || !is_segment_id(&b[..3]) {
            return Err(bad(
                "must start with a three-letter segment id, e.g. `OBR-25`",
            ));
        }
        let segment = [b[0], b[1], b[2]];
        let mut rest = &s[3..];
        let mut occurrence = Index::Nth(1);
        if rest.starts_with('[') {
            let (idx, r) =
                bracket(rest).ok_or_else(|| bad("segment index must be `[n]` or `[*]`"))?;
            occurrence = idx;
            rest = r;
        }
        rest = rest
            .strip_prefix('-')
            .or_else(|| rest.strip_prefix('.'))
            .ok_or_else(|| bad("expected `-` and a field number after the segment id"))?;
        let (num, r) = number(rest).ok_or_else(|| bad("field number missing or zero"))?;
        let field = num;
        rest = r;
        let mut repetition = None;
        if rest.starts_with('[') {
            let (idx, r) = bracket(rest).ok_or_else(|| bad("repetition must be `[n]` or `[*]`"))?;
            repetition = Some(idx);
            rest = r;
        }
        let mut parts = [None, None];
        for slot in parts.iter_mut() {
            if let Some(r) = rest.strip_prefix('.') {
                let (n, r) =
                    number(r).ok_or_else(|| bad("component numbers are 1-based integers"))?;
                *slot = Some(n);
                rest = r;
            }
        }
        if !rest.is_empty() {
            return Err(bad(
                "unexpected text after the position (at most SEG-F.C.S)",
            ));
        }
        Ok(Path {
            segment,
            occurrence,
            field,
            repetition,
            component: parts[0],
            subcomponent: parts[1],
        })
    }

    /// The segment id as text.
    pub fn segment_id(&self) -> &str {
        std::str::from_utf8(&self.segment).expect("segment ids are ASCII")
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idx = |i: Index| match i {
            Index::Nth(n) => n.to_string(),
            Index::All => "*".to_string(),
        };
        f.write_str(self.segment_id())?;
        if self.occurrence != Index::Nth(1) {
            write!(f, "[{}]", idx(self.occurrence))?;
        }
        write!(f, "-{}", self.field)?;
        if let Some(r) = self.repetition {
            write!(f, "[{}]", idx(r))?;
        }
        if let Some(c) = self.component {
            write!(f, ".{c}")?;
        }
        if let Some(s) = self.subcomponent {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

fn number(s: &str) -> Option<(u16, &str)> {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    let n: u16 = s[..end].parse().ok()?;
    (n > 0).then_some((n, &s[end..]))
}

fn bracket(s: &str) -> Option<(Index, &str)> {
    let close = s.find(']')?;
    let inner = &s[1..close];
    let idx = if inner == "*" {
        Index::All
    } else {
        let (n, r) = number(inner)?;
        if !r.is_empty() {
            return None;
        }
        Index::Nth(n)
    };
    Some((idx, &s[close + 1..]))
}

fn is_segment_id(b: &[u8]) -> bool {
    b.len() == 3
        && b[0].is_ascii_uppercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    id: [u8; 3],
    start: u32,
    end: u32,
}

/// One segment of a read message.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    id: &'a str,
    text: &'a str,
    delims: Delimiters,
}

impl<'a> Segment<'a> {
    /// The segment id, e.g. `OBX`.
    pub fn id(&self) -> &'a str {
        self.id
    }

    /// The raw segment text (for a rejoined segment, it contains the wrapped line break).
    pub fn raw(&self) -> &'a str {
        self.text
    }

    /// Calls `f` with every raw value at `path`'s field/repetition/component in this
    /// segment (the path's segment id and occurrence are not looked at).
    pub fn visit(&self, path: &Path, f: &mut dyn FnMut(&'a str)) {
        if let Some(field) = self.field(path.field) {
            let opaque = self.id == "MSH" && path.field <= 2;
            visit_field(field, path, &self.delims, opaque, f);
        }
    }

    /// Raw field `n` (1-based), all repetitions; `None` when the segment is shorter.
    pub fn field(&self, n: u16) -> Option<&'a str> {
        let fs = self.delims.field;
        if self.id == "MSH" {
            // MSH-1 is the field separator itself and MSH-2 holds the other delimiters.
            // A later, truncated MSH line may be shorter than `MSH|`.
            return match n {
                1 => self.text.get(3..4),
                _ => nth(self.text.get(4..)?, fs, n as usize - 2),
            };
        }
        nth(self.text, fs, n as usize)
    }
}

/// The `n`-th (0-based) part of `s` split on `sep`, without allocating. `sep` is ASCII,
/// so every cut is on a char boundary.
///
/// The parts before the wanted one are skipped with a plain byte loop: they are mostly a
/// few bytes long, where starting a vectorised search per separator costs more than it
/// saves. The end of the wanted part (often long text) is found with memchr.
fn nth(s: &str, sep: u8, n: usize) -> Option<&str> {
    let b = s.as_bytes();
    let mut start = 0;
    for _ in 0..n {
        start += b[start..].iter().position(|&c| c == sep)? + 1;
    }
    let end = memchr::memchr(sep, &b[start..]).map_or(b.len(), |p| start + p);
    Some(&s[start..end])
}

/// An ORDER_OBSERVATION group: an optional ORC, an OBR and what follows up to the next group.
#[derive(Debug, Clone)]
pub struct OrderGroup {
    /// Segment indexes covered by the group.
    pub segments: Range<usize>,
    /// Segments before the first group (the message header: MSH, PID, PV1, ...).
    pub header: Range<usize>,
}

/// A read ER7 message; see the module doc.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    text: &'a str,
    delims: Delimiters,
    segs: Vec<Seg>,
    warnings: Vec<ReadWarning>,
}

impl<'a> Message<'a> {
    /// Reads `text` with default options (wrapped lines rejoined).
    pub fn parse(text: &'a str) -> Result<Message<'a>, ReadError> {
        Self::parse_with(text, ReadOptions::default())
    }

    /// Reads `text`.
    pub fn parse_with(text: &'a str, options: ReadOptions) -> Result<Message<'a>, ReadError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let b = text.as_bytes();
        // Tolerate line breaks before MSH (left over from framing), nothing else.
        let lead = b
            .iter()
            .position(|&c| c != b'\r' && c != b'\n')
            .unwrap_or(b.len());
        if b.len() < lead + 8 || &b[lead..lead + 3] != b"MSH" {
            return Err(ReadError::NoMsh);
        }
        let fs = b[lead + 3];
        let enc_end = b[lead + 4..]
            .iter()
            .position(|&c| c == fs || c == b'\r' || c == b'\n')
            .map_or(b.len(), |p| lead + 4 + p);
        let delims =
            Delimiters::from_msh(fs, &b[lead + 4..enc_end]).ok_or(ReadError::EncodingCharacters)?;

        let mut segs: Vec<Seg> = Vec::with_capacity(32);
        let mut warnings = Vec::new();
        let mut pos = lead;
        // Line numbers count CRLF as one break, like the segment splitting below.
        let mut line = 1 + text[..lead].replace("\r\n", "\n").len();
        let mut wrapped: Option<(usize, String)> = None;
        while pos < b.len() {
            let end = memchr::memchr2(b'\r', b'\n', &b[pos..]).map_or(b.len(), |p| pos + p);
            let next = if end + 1 < b.len() && b[end] == b'\r' && b[end + 1] == b'\n' {
                end + 2
            } else {
                end + 1
            };
            let l = &b[pos..end];
            if l.is_empty() {
                warnings.push(ReadWarning::EmptyLine { line });
            } else if l.len() >= 3 && is_segment_id(&l[..3]) && (l.len() == 3 || l[3] == fs) {
                segs.push(Seg {
                    id: [l[0], l[1], l[2]],
                    start: pos as u32,
                    end: end as u32,
                });
            } else {
                let prev = segs.last_mut().expect("MSH is always the first segment");
                let previous = String::from_utf8_lossy(&prev.id).into_owned();
                match options.wrapped_lines {
                    WrappedLines::Rejoin => {
                        prev.end = end as u32;
                        warnings.push(ReadWarning::WrappedLineRejoined {
                            line,
                            segment: previous,
                        });
                    }
                    WrappedLines::Reject => {
                        wrapped = Some((line, previous));
                        break;
                    }
                }
            }
            line += 1;
            pos = next;
        }
        let msg = Message {
            text,
            delims,
            segs,
            warnings,
        };
        if let Some((line, previous)) = wrapped {
            return Err(ReadError::WrappedLine {
                msh10: msg.control_id().map(str::to_string),
                line,
                previous,
            });
        }
        Ok(msg)
    }

    /// The message's delimiters.
    pub fn delimiters(&self) -> Delimiters {
        self.delims
    }

    /// The text read (without byte-order mark).
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// What was tolerated while reading.
    pub fn warnings(&self) -> &[ReadWarning] {
        &self.warnings
    }

    /// MSH-10 (message control id), raw, when present and non-empty.
    pub fn control_id(&self) -> Option<&'a str> {
        self.segment(0)
            .and_then(|s| s.field(10))
            .filter(|v| !v.is_empty())
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// Always false: a message has at least MSH.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Segment number `i` (0-based, MSH is 0).
    pub fn segment(&self, i: usize) -> Option<Segment<'a>> {
        let s = self.segs.get(i)?;
        Some(Segment {
            id: &self.text[s.start as usize..s.start as usize + 3],
            text: &self.text[s.start as usize..s.end as usize],
            delims: self.delims,
        })
    }

    /// All segments in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        (0..self.segs.len()).filter_map(move |i| self.segment(i))
    }

    /// Number of bytes covered by segments, counting separators: equals the input length
    /// (minus BOM) when nothing was dropped.
    pub fn covered_len(&self) -> usize {
        self.segs.last().map_or(0, |s| s.end as usize)
    }

    /// The ORDER_OBSERVATION groups, in order (see the module doc).
    pub fn order_groups(&self) -> Vec<OrderGroup> {
        let mut starts: Vec<usize> = Vec::new();
        let mut orc_waiting = false;
        for (i, s) in self.segs.iter().enumerate() {
            match &s.id {
                b"ORC" => {
                    starts.push(i);
                    orc_waiting = true;
                }
                b"OBR" => {
                    if !orc_waiting {
                        starts.push(i);
                    }
                    orc_waiting = false;
                }
                _ => {}
            }
        }
        let n = self.segs.len();
        let header = 0..starts.first().copied().unwrap_or(n);
        starts
            .iter()
            .enumerate()
            .map(|(k, &s)| OrderGroup {
                segments: s..starts.get(k + 1).copied().unwrap_or(n),
                header: header.clone(),
            })
            .collect()
    }

    /// A scope over the whole message.
    pub fn whole(&self) -> Scope<'_, 'a> {
        Scope {
            msg: self,
            range: 0..self.segs.len(),
            header: 0..0,
        }
    }

    /// A scope over one group, falling back to the header segments for ids the group lacks.
    pub fn group_scope(&self, group: &OrderGroup) -> Scope<'_, 'a> {
        Scope {
            msg: self,
            range: group.segments.clone(),
            header: group.header.clone(),
        }
    }

    /// First raw value at `path` in the whole message.
    pub fn get(&self, path: &Path) -> Option<&'a str> {
        self.whole().first(path)
    }

    /// Parses `path` and returns the first raw value there.
    pub fn query(&self, path: &str) -> Result<Option<&'a str>, ReadError> {
        Ok(self.get(&Path::parse(path)?))
    }
}

/// A range of segments queries are answered from.
#[derive(Debug, Clone)]
pub struct Scope<'m, 'a> {
    msg: &'m Message<'a>,
    range: Range<usize>,
    header: Range<usize>,
}

impl<'a> Scope<'_, 'a> {
    /// The message this scope reads.
    pub fn message(&self) -> &Message<'a> {
        self.msg
    }

    /// First raw value at `path`, if any.
    pub fn first(&self, path: &Path) -> Option<&'a str> {
        let mut found = None;
        self.visit(path, &mut |v| {
            if found.is_none() {
                found = Some(v);
            }
        });
        found
    }

    /// Every raw value at `path` (several when `[*]` is used).
    pub fn all(&self, path: &Path) -> Vec<&'a str> {
        let mut out = Vec::new();
        self.visit(path, &mut |v| out.push(v));
        out
    }

    /// The segments with id `id` this scope answers from (the group's, else the header's).
    pub fn segments_with_id(&self, id: &[u8; 3]) -> Vec<Segment<'a>> {
        let pick = |r: Range<usize>| -> Vec<Segment<'a>> {
            r.filter(|&i| &self.msg.segs[i].id == id)
                .filter_map(|i| self.msg.segment(i))
                .collect()
        };
        let v = pick(self.range.clone());
        if v.is_empty() {
            pick(self.header.clone())
        } else {
            v
        }
    }

    /// Calls `f` with every raw value at `path`, in message order.
    pub fn visit(&self, path: &Path, f: &mut dyn FnMut(&'a str)) {
        let found = self.visit_range(self.range.clone(), path, f);
        if !found && !self.header.is_empty() {
            self.visit_range(self.header.clone(), path, f);
        }
    }

    /// Returns whether a segment with the path's id exists in `range`.
    fn visit_range(&self, range: Range<usize>, path: &Path, f: &mut dyn FnMut(&'a str)) -> bool {
        let mut seen = 0u16;
        for i in range {
            if self.msg.segs[i].id != path.segment {
                continue;
            }
            seen += 1;
            if let Index::Nth(n) = path.occurrence
                && n != seen
            {
                continue;
            }
            self.msg.segment(i).expect("index in range").visit(path, f);
        }
        seen > 0
    }
}

fn visit_field<'a>(
    field: &'a str,
    path: &Path,
    d: &Delimiters,
    opaque: bool,
    f: &mut dyn FnMut(&'a str),
) {
    if opaque {
        // MSH-1/MSH-2 contain the delimiters themselves: never split them.
        if path.component.is_none() && path.repetition.is_none() {
            f(field);
        }
        return;
    }
    let reps: Index = match (path.repetition, path.component) {
        (Some(r), _) => r,
        (None, None) => {
            f(field);
            return;
        }
        (None, Some(_)) => Index::Nth(1),
    };
    let mut each = |rep: &'a str| {
        let Some(c) = path.component else {
            f(rep);
            return;
        };
        let Some(comp) = nth(rep, d.component, c as usize - 1) else {
            return;
        };
        match path.subcomponent {
            None => f(comp),
            Some(s) => {
                if let Some(sub) = nth(comp, d.subcomponent, s as usize - 1) {
                    f(sub)
                }
            }
        }
    };
    match reps {
        Index::All => field.split(d.repetition as char).for_each(&mut each),
        Index::Nth(n) => {
            if let Some(rep) = nth(field, d.repetition, n as usize - 1) {
                each(rep)
            }
        }
    }
}

/// Decodes raw bytes received from the wire (see [`super::charset`]: UTF-8, else the
/// charset MSH-18 names, else Windows-1252), without the warning.
pub fn decode_bytes(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    super::charset::decode(bytes).text
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str = "MSH|^~\\&|A|B|C|D|20240101120000||ORU^R01^ORU_R01|CTRL1|P|2.5.1\r\
PID|1||123^^^MRN~456^^^OTHER||Doe^Jane\r\
ORC|RE|PLAC1\r\
OBR|1|PLAC1|FILL1|CT^CT Head|||||||||||||||||||||F|||||||1234&Smith&John\r\
OBX|1|TX|||line one\r\
OBX|2|TX|||line two\r\
OBR|2|PLAC2|FILL2\r\
OBX|1|TX|||other\n";

    #[test]
    fn paths_parse_and_display() {
        for p in [
            "OBR-25",
            "OBR-32.1.2",
            "OBX[2]-5",
            "OBX[*]-5",
            "PID-3[2].1",
            "PID-3[*].1",
        ] {
            assert_eq!(Path::parse(p).unwrap().to_string(), p);
        }
        assert_eq!(Path::parse("OBX[2].5").unwrap().to_string(), "OBX[2]-5");
        for bad in [
            "OB-1",
            "OBR",
            "OBR-0",
            "OBR-x",
            "OBR-1.2.3.4",
            "OBR[a]-1",
            "obr-1",
        ] {
            assert!(Path::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries() {
        let m = Message::parse(ORU).unwrap();
        assert_eq!(m.control_id(), Some("CTRL1"));
        assert_eq!(m.query("MSH-1").unwrap(), Some("|"));
        assert_eq!(m.query("MSH-2").unwrap(), Some("^~\\&"));
        assert_eq!(m.query("MSH-9.2").unwrap(), Some("R01"));
        assert_eq!(m.query("MSH-12").unwrap(), Some("2.5.1"));
        assert_eq!(m.query("OBR-25").unwrap(), Some("F"));
        assert_eq!(m.query("OBR-32.1.2").unwrap(), Some("Smith"));
        assert_eq!(m.query("OBX[2]-5").unwrap(), Some("line two"));
        assert_eq!(m.query("PID-3[2].1").unwrap(), Some("456"));
        assert_eq!(m.query("PID-3.4").unwrap(), Some("MRN"));
        assert_eq!(m.query("PID-3").unwrap(), Some("123^^^MRN~456^^^OTHER"));
        assert_eq!(m.query("PID-99").unwrap(), None);
        assert_eq!(m.whole().all(&Path::parse("OBX[*]-5").unwrap()).len(), 3);
        assert_eq!(
            m.whole().all(&Path::parse("PID-3[*].4").unwrap()),
            ["MRN", "OTHER"]
        );
    }

    #[test]
    fn groups() {
        let m = Message::parse(ORU).unwrap();
        let g = m.order_groups();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].segments, 2..6);
        let s0 = m.group_scope(&g[0]);
        let s1 = m.group_scope(&g[1]);
        let obx = Path::parse("OBX[*]-5").unwrap();
        assert_eq!(s0.all(&obx), ["line one", "line two"]);
        assert_eq!(s1.all(&obx), ["other"]);
        let orc2 = Path::parse("ORC-2").unwrap();
        assert_eq!(s0.first(&orc2), Some("PLAC1"));
        assert_eq!(s1.first(&orc2), None, "ORC belongs to the first group only");
        // Header segments are reachable from a group.
        assert_eq!(s1.first(&Path::parse("MSH-10").unwrap()), Some("CTRL1"));
    }

    #[test]
    fn separators_bom_and_warnings() {
        let crlf = "\u{feff}MSH|^~\\&|A\r\n\r\nPID|1\r\nOBX|1|ED|||abc\r\ndef|F\nZZ9|x";
        let m = Message::parse(crlf).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m.query("OBX-5").unwrap(), Some("abc\r\ndef"));
        assert_eq!(m.query("OBX-6").unwrap(), Some("F"));
        assert_eq!(m.query("ZZ9-1").unwrap(), Some("x"));
        assert_eq!(
            m.warnings(),
            [
                ReadWarning::EmptyLine { line: 2 },
                ReadWarning::WrappedLineRejoined {
                    line: 5,
                    segment: "OBX".into()
                }
            ]
        );
        let err = Message::parse_with(
            crlf,
            ReadOptions {
                wrapped_lines: WrappedLines::Reject,
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, ReadError::WrappedLine { line: 5, .. }),
            "{err}"
        );
    }

    #[test]
    fn errors() {
        assert_eq!(Message::parse("PID|1").unwrap_err(), ReadError::NoMsh);
        assert_eq!(Message::parse("").unwrap_err(), ReadError::NoMsh);
        assert_eq!(
            Message::parse("MSH|^~|A|B|C").unwrap_err(),
            ReadError::EncodingCharacters
        );
        assert_eq!(
            Message::parse("MSH|^^\\&|A|B").unwrap_err(),
            ReadError::EncodingCharacters
        );
        assert!(ReadError::EncodingCharacters.to_string().contains("MSH-2"));
    }

    #[test]
    fn truncated_second_msh_does_not_panic() {
        let m = Message::parse("MSH|^~\\&|A\rMSH\rPID|1").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m.query("MSH[2]-1").unwrap(), None);
        assert_eq!(m.query("MSH[2]-3").unwrap(), None);
        assert_eq!(m.whole().all(&Path::parse("MSH[*]-3").unwrap()), ["A"]);
    }

    #[test]
    fn nth_parts() {
        assert_eq!(nth("a|bb||c", b'|', 0), Some("a"));
        assert_eq!(nth("a|bb||c", b'|', 1), Some("bb"));
        assert_eq!(nth("a|bb||c", b'|', 2), Some(""));
        assert_eq!(nth("a|bb||c", b'|', 3), Some("c"));
        assert_eq!(nth("a|bb||c", b'|', 4), None);
        assert_eq!(nth("a|", b'|', 1), Some(""));
        assert_eq!(nth("a|", b'|', 2), None);
        assert_eq!(nth("", b'|', 0), Some(""));
        assert_eq!(nth("", b'|', 1), None);
        assert_eq!(nth("Ä|ö€|😀", b'|', 2), Some("😀"));
    }

    #[test]
    fn eight_bit_fallback() {
        assert_eq!(decode_bytes(b"M\xfcller \x80"), "Müller €");
        assert_eq!(decode_bytes("Müller".as_bytes()), "Müller");
    }
}
