//! The vocabulary and small grammars of the mapping language: what a file declares, how a
//! source is written (JSON paths, HL7 paths, templates, fallback chains) and the built-in
//! shape of the Order document that sources are checked against.
//!
//! The YAML itself is read by [`super::compile`], which walks the node tree and reports
//! every problem of a file at once.

use crate::hl7::er7;

/// What a mapping reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// The Order document (appointment, comments, attachments, site, config).
    Order,
    /// An inbound HL7 ORU^R01; one evaluation per ORDER_OBSERVATION group.
    Oru,
    /// An inbound FHIR DiagnosticReport (under `resource`), with `site` and `config`.
    DiagnosticReport,
}

/// What a mapping produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// A FHIR R4 resource (JSON).
    Fhir,
    /// An HL7 v2 message (ER7).
    Hl7,
    /// A QUBS report submission.
    Report,
}

/// Comparison inside a list filter `[field op values]` or an HL7 segment filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `in (a, b)`
    In,
    /// `not in (a, b)`
    NotIn,
}

impl Op {
    /// Whether `value` passes against `values`.
    pub fn test(&self, value: Option<&str>, values: &[String]) -> bool {
        let hit = value.is_some_and(|v| values.iter().any(|x| x == v));
        match self {
            Op::Eq | Op::In => hit,
            Op::Ne | Op::NotIn => !hit,
        }
    }
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `.name`
    Key(String),
    /// `[n]` (0-based, as in FHIR paths)
    Index(usize),
    /// `[*]`
    All,
    /// `[field op values]`: the array items whose `field` passes.
    Filter {
        /// Item field compared.
        field: String,
        /// Comparison.
        op: Op,
        /// Values compared with.
        values: Vec<String>,
    },
}

/// A JSON path: a root name (`appointment`, `comments`, a `for_each` alias, ...) and steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    /// First name of the path.
    pub root: String,
    /// The rest.
    pub steps: Vec<Step>,
}

impl JsonPath {
    /// Whether the path can yield several values.
    pub fn is_many(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::All | Step::Filter { .. }))
    }

    /// The path with array selectors written as `[]`, e.g. `comments[].commentText`:
    /// the form shapes and "fields read" are expressed in.
    pub fn shape_key(&self) -> String {
        let mut s = self.root.clone();
        for st in &self.steps {
            match st {
                Step::Key(k) => {
                    s.push('.');
                    s.push_str(k);
                }
                _ => s.push_str("[]"),
            }
        }
        s
    }

    /// Parses `a.b[0].c`, `comments[*]`, `comments[commentType in (AA, PA)]`,
    /// `presentedForm[contentType = text/plain].data`.
    pub fn parse(s: &str) -> Result<JsonPath, String> {
        let s = s.trim();
        let mut chars = s.char_indices().peekable();
        let mut root = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '.' || c == '[' {
                break;
            }
            root.push(c);
            chars.next();
        }
        if !valid_name(&root) {
            return Err(format!("`{s}` does not start with a field name"));
        }
        let mut steps = Vec::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '.' => {
                    let mut k = String::new();
                    while let Some(&(_, c)) = chars.peek() {
                        if c == '.' || c == '[' {
                            break;
                        }
                        k.push(c);
                        chars.next();
                    }
                    if !valid_name(&k) {
                        return Err(format!("`{s}`: expected a field name after `.`"));
                    }
                    steps.push(Step::Key(k));
                }
                '[' => {
                    let close = s[i..]
                        .find(']')
                        .map(|p| i + p)
                        .ok_or_else(|| format!("`{s}`: `[` without `]`"))?;
                    let inner = s[i + 1..close].trim();
                    while let Some(&(j, _)) = chars.peek() {
                        if j > close {
                            break;
                        }
                        chars.next();
                    }
                    steps.push(parse_selector(inner).map_err(|e| format!("`{s}`: {e}"))?);
                }
                _ => return Err(format!("`{s}`: unexpected `{c}`")),
            }
        }
        Ok(JsonPath { root, steps })
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(c0) if c0.is_ascii_alphabetic() || c0 == '_' || c0 == '$')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_selector(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::All);
    }
    if let Ok(n) = inner.parse::<usize>() {
        return Ok(Step::Index(n));
    }
    let (field, op, rest) = if let Some(p) = inner.find(" not in ") {
        (&inner[..p], Op::NotIn, &inner[p + 8..])
    } else if let Some(p) = inner.find(" in ") {
        (&inner[..p], Op::In, &inner[p + 4..])
    } else if let Some(p) = inner.find("!=") {
        (&inner[..p], Op::Ne, &inner[p + 2..])
    } else if let Some(p) = inner.find('=') {
        (&inner[..p], Op::Eq, &inner[p + 1..])
    } else {
        return Err(
            "a selector is `[n]`, `[*]`, `[field = v]`, `[field != v]` or `[field in (a, b)]`"
                .into(),
        );
    };
    let field = field.trim();
    if !valid_name(field) {
        return Err(format!("`{field}` is not a field name"));
    }
    let values = parse_values(rest.trim(), matches!(op, Op::In | Op::NotIn))?;
    Ok(Step::Filter {
        field: field.to_string(),
        op,
        values,
    })
}

fn parse_values(rest: &str, list: bool) -> Result<Vec<String>, String> {
    let unquote = |v: &str| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
    if list {
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or("`in` needs a list in parentheses, e.g. `in (AA, PA)`")?;
        Ok(inner
            .split(',')
            .map(unquote)
            .filter(|v| !v.is_empty())
            .collect())
    } else {
        Ok(vec![unquote(rest)])
    }
}

/// An HL7 source: a position, optionally restricted to segments whose fields pass tests,
/// e.g. `OBX[OBX-2 in (TX, FT)]-5` or `OBX[OBX-2 in (TX, FT) and OBX-11 not in (W, D)]-5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7Source {
    /// The position read.
    pub path: er7::Path,
    /// `(field, op, values)` tests a candidate segment must all pass (empty: no filter).
    pub filter: Vec<(u16, Op, Vec<String>)>,
}

impl Hl7Source {
    /// Parses an HL7 source.
    pub fn parse(s: &str) -> Result<Hl7Source, String> {
        let s = s.trim();
        // A segment filter sits in the occurrence brackets and names fields of the segment.
        if s.len() > 4 && s.as_bytes()[3] == b'[' {
            let close = s.find(']').ok_or("`[` without `]`")?;
            let inner = &s[4..close];
            if inner.len() > 4 && inner[..3] == s[..3] {
                let seg = &s[..3];
                let p = er7::Path::parse(&format!("{seg}{}", &s[close + 1..]))
                    .map_err(|e| e.to_string())?;
                let mut filter = Vec::new();
                for test in inner.split(" and ") {
                    let test = test.trim();
                    let Some(after) = test.strip_prefix(seg) else {
                        return Err(format!(
                            "each test of a segment filter names a field of {seg}, e.g. `{seg}-2 in (TX, FT)`"
                        ));
                    };
                    // `OBX-2 in (...)`: the field number, then the shared selector grammar.
                    let after = after.trim_start_matches(['-', '.']);
                    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
                    let n: u16 = digits
                        .parse()
                        .map_err(|_| "segment filter must name a field such as `OBX-2`")?;
                    let Step::Filter { op, values, .. } =
                        parse_selector(&format!("f{}", &after[digits.len()..]))?
                    else {
                        return Err(
                            "segment filter must compare a field, e.g. `OBX[OBX-2 in (TX, FT)]-5`"
                                .into(),
                        );
                    };
                    filter.push((n, op, values));
                }
                let mut path = p;
                path.occurrence = er7::Index::All;
                return Ok(Hl7Source { path, filter });
            }
        }
        Ok(Hl7Source {
            path: er7::Path::parse(s).map_err(|e| e.to_string())?,
            filter: Vec::new(),
        })
    }

    /// Whether the source can yield several values.
    pub fn is_many(&self) -> bool {
        self.path.occurrence == er7::Index::All
            || self.path.repetition == Some(er7::Index::All)
            || !self.filter.is_empty()
    }
}

/// Whether `s` looks like an HL7 position (`OBR-25`, `OBX[*]-5`, `MSH-9.2`).
pub fn looks_like_hl7(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 5
        && b[0].is_ascii_uppercase()
        && b[1..3]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && matches!(b[3], b'-' | b'[' | b'.')
}

/// One alternative of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alt {
    /// A path into the JSON input (or a `for_each` item).
    Json(JsonPath),
    /// A position in the inbound HL7 message.
    Hl7(Hl7Source),
    /// `{...}` placeholders in literal text.
    Template(Vec<Part>),
    /// `$index`: 1-based number of the current `for_each` item.
    Index,
    /// `$set_id`: in an HL7 output, 1 + the number of segments with the same id written
    /// just before this one (the Set ID of NTE, OBX, ... in a group).
    SetId,
}

impl Alt {
    /// Whether the alternative can yield several values.
    pub fn is_many(&self) -> bool {
        match self {
            Alt::Json(p) => p.is_many(),
            Alt::Hl7(h) => h.is_many(),
            Alt::Template(_) | Alt::Index | Alt::SetId => false,
        }
    }
}

/// Piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// A placeholder: alternatives, first present wins.
    Value(Vec<Alt>),
}

/// Parses one alternative (not a template).
pub fn parse_alt(s: &str, hl7: bool) -> Result<Alt, String> {
    let s = s.trim();
    if s == "$index" {
        return Ok(Alt::Index);
    }
    if s == "$set_id" {
        return Ok(Alt::SetId);
    }
    if hl7 && looks_like_hl7(s) {
        return Ok(Alt::Hl7(Hl7Source::parse(s)?));
    }
    JsonPath::parse(s).map(Alt::Json)
}

/// Parses `a | b | c` into alternatives; an alternative containing `{` is a template.
pub fn parse_chain(s: &str, hl7: bool) -> Result<Vec<Alt>, String> {
    split_top(s, '|')
        .into_iter()
        .map(|a| {
            if a.contains('{') {
                parse_template(a, hl7).map(Alt::Template)
            } else {
                parse_alt(a, hl7)
            }
        })
        .collect()
}

/// Parses `text {path | path} text`; `{{` and `}}` are literal braces.
pub fn parse_template(s: &str, hl7: bool) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{{") {
            text.push('{');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("}}") {
            text.push('}');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let close = r.find('}').ok_or("template placeholder `{` without `}`")?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            let inner = &r[..close];
            let alts = split_top(inner, '|')
                .into_iter()
                .map(|a| parse_alt(a, hl7))
                .collect::<Result<Vec<_>, _>>()?;
            parts.push(Part::Value(alts));
            rest = &r[close + 1..];
        } else {
            let c = rest.chars().next().expect("non-empty");
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// Splits on `sep` outside brackets and braces.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' | '{' => depth += 1,
            ']' | ')' | '}' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out
}

/// Fields of a QUBS user object (assigned radiologist and other user summaries).
const USER: &[&str] = &[
    "userId",
    "fullName",
    "firstName",
    "lastName",
    "email",
    "providerNumber",
];

/// The declared shape of the Order document, as `shape_key` strings. Objects marked open
/// (`.*`) accept any field: their content is not published by QUBS (or is free config).
pub fn order_shape() -> (Vec<String>, Vec<String>) {
    let mut known: Vec<String> = Vec::new();
    let appt = [
        "domain",
        "appointmentId",
        "status",
        "scheduledSite",
        "appointmentDate",
        "startTime",
        "endTime",
        "patientId",
        "patientName",
        "dateOfBirth",
        "patientDateOfBirth",
        "gender",
        "patientSex",
        "studyDescription",
        "clinicalInfo",
        "modality",
        "priority",
        "examCodes",
        "doctorName",
        "doctorFirstName",
        "doctorLastName",
        "reportingDeadlineUtc",
        "reportingDeadline",
        "assignedRadiologist",
        "radiologist",
        "attendedBy",
        "authorisedBy",
    ];
    known.push("domain".into());
    known.push("appointment".into());
    for f in appt {
        known.push(format!("appointment.{f}"));
    }
    for u in ["assignedRadiologist", "radiologist"] {
        for f in USER {
            known.push(format!("appointment.{u}.{f}"));
        }
    }
    known.push("appointment.examCodes[]".into());
    known.push("comments".into());
    known.push("comments[]".into());
    for f in [
        "guid",
        "commentType",
        "appointmentId",
        "patientId",
        "commentText",
        "commentDateTime",
        "isAlert",
        "commentBy",
        "lastModifiedDateTime",
    ] {
        known.push(format!("comments[].{f}"));
    }
    known.push("attachments".into());
    known.push("attachments[]".into());
    for f in [
        "guid",
        "category",
        "fileName",
        "addedDateTime",
        "addedBy",
        "lastModifiedDateTime",
        "url",
        "urlExpiresAtUtc",
    ] {
        known.push(format!("attachments[].{f}"));
    }
    known.push("site".into());
    known.push("config".into());
    // Set by the order feed: `new`, `changed` or `removed` (absent elsewhere).
    known.push("event".into());
    known.push("event.kind".into());
    let open = [
        "site",
        "config",
        "appointment.examCodes[]",
        "appointment.attendedBy",
        "appointment.authorisedBy",
        "comments[].commentBy",
        "attachments[].addedBy",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (known, open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let p = JsonPath::parse("comments[commentType in (AA, PA)].commentText").unwrap();
        assert_eq!(p.root, "comments");
        assert_eq!(
            p.steps[0],
            Step::Filter {
                field: "commentType".into(),
                op: Op::In,
                values: vec!["AA".into(), "PA".into()]
            }
        );
        assert_eq!(p.shape_key(), "comments[].commentText");
        assert!(p.is_many());
        let p = JsonPath::parse("identifier[0].value").unwrap();
        assert_eq!(p.steps[0], Step::Index(0));
        assert!(!p.is_many());
        let p = JsonPath::parse("resource.presentedForm[contentType = text/plain].data").unwrap();
        assert_eq!(p.shape_key(), "resource.presentedForm[].data");
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse("a[x y]").is_err());
    }

    #[test]
    fn chains_and_templates() {
        let c = parse_chain(
            "appointment.dateOfBirth | appointment.patientDateOfBirth",
            false,
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        let c = parse_chain("ORC-2.1 | OBR-2.1 | OBR-18", true).unwrap();
        assert!(matches!(&c[2], Alt::Hl7(h) if h.path.to_string() == "OBR-18"));
        let t = parse_template(
            "{appointment.appointmentDate}T{appointment.startTime}",
            false,
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[1], Part::Text("T".into()));
        let t = parse_template("{{x}} {a | b}", false).unwrap();
        assert_eq!(t[0], Part::Text("{x} ".into()));
    }

    #[test]
    fn hl7_segment_filter() {
        let h = Hl7Source::parse("OBX[OBX-2 in (TX, FT, ST)]-5").unwrap();
        assert_eq!(h.path.to_string(), "OBX[*]-5");
        assert_eq!(
            h.filter,
            [(2, Op::In, vec!["TX".into(), "FT".into(), "ST".into()])]
        );
        let h = Hl7Source::parse("OBX[OBX-2 in (TX, CE) and OBX-11 not in (W, D)]-16[1]").unwrap();
        assert_eq!(h.path.to_string(), "OBX[*]-16[1]");
        assert_eq!(
            h.filter,
            [
                (2, Op::In, vec!["TX".into(), "CE".into()]),
                (11, Op::NotIn, vec!["W".into(), "D".into()])
            ]
        );
        assert!(Hl7Source::parse("OBX[OBX-2 in (TX) and PID-3 = x]-5").is_err());
        assert!(h.is_many());
        let h = Hl7Source::parse("OBR-32.1.2").unwrap();
        assert!(h.filter.is_empty() && !h.is_many());
    }
}
