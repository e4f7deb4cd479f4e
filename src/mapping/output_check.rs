//! The check every output passes before it leaves.
//!
//! The default (**basic**) check reads the finished text on its own — it does not trust the
//! writer that made it — and costs a pass over the bytes:
//!
//! - **HL7**: `MSH|^~\&|` first, CR after every segment and no other control character,
//!   segment ids, every escape sequence closed and known, no more fields than the segment
//!   has (standard, or declared for a custom segment), segments in the order of the message
//!   structure, the required ones present; MSH-7 a timestamp, MSH-9 a type and trigger,
//!   MSH-10 set, MSH-12 the mapping's version, PID-3 and ORC-1 set, declared required
//!   fields set; the lengths the bridge relies on (MSH-10, OBR-13, one- and two-letter
//!   codes) and the declared lengths of custom fields, counted as sent.
//! - **FHIR**: well-formed JSON (escapes, no duplicate keys), the resource type, every
//!   element known for its type, lists where the element repeats and single values where it
//!   does not, primitives of the right JSON type and form (dates, date-times, instants,
//!   codes, ids, URIs, no empty strings), codes of the required bindings, the required
//!   elements, contained resources with their ids, and local references both ways (FHIR's
//!   dom-3).
//!
//! The **full** check (`mappings.output_check = "full"`, always in `mappings test` and in
//! the test suite) adds the independent parsers: hl7-parser re-reads the message and
//! fhir-sdk deserializes the resource into its typed R4B model.
//!
//! Messages name positions and elements, never values.

use std::fmt;

use super::fhir;
use super::hl7;
use super::ir::CustomSegment;
use super::out_fhir::JSON_SPECIAL;

/// How outputs are checked before they leave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputCheck {
    /// The fast check of this module, independent of the writer (the default).
    #[default]
    Basic,
    /// The basic check and the independent parsers (hl7-parser, fhir-sdk).
    Full,
}

/// Why an output failed its check. No values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError(pub String);

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(m: impl Into<String>) -> Result<T, CheckError> {
    Err(CheckError(m.into()))
}

/// What the HL7 check needs to know about a mapping's message.
#[derive(Debug, Clone, Default)]
pub struct Hl7Limits {
    code: String,
    trigger: String,
    version: String,
    /// The message structure with custom segments in place.
    order: Vec<String>,
    required: Vec<String>,
    custom: Vec<CustomSegment>,
}

impl Hl7Limits {
    /// The limits of `message` in `version` with the mapping's declarations.
    pub fn new(message: &str, version: &str, custom: &[CustomSegment]) -> Hl7Limits {
        let (code, trigger) = message.split_once('^').unwrap_or((message, ""));
        let (order, required) = match hl7::structure(message) {
            Some((o, r)) => (
                super::check::with_custom(o, custom)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                r.iter().map(|s| s.to_string()).collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        Hl7Limits {
            code: code.into(),
            trigger: trigger.into(),
            version: version.into(),
            order,
            required,
            custom: custom.to_vec(),
        }
    }

    fn declared(&self, seg: &str, field: u16) -> Option<&super::ir::FieldDecl> {
        self.custom
            .iter()
            .filter(|c| c.id == seg)
            .flat_map(|c| &c.fields)
            .find(|f| f.field == field)
    }

    fn field_count(&self, seg: &str) -> Option<usize> {
        let standard = hl7::field_count(seg, &self.version).map(usize::from);
        let declared = self
            .custom
            .iter()
            .filter(|c| c.id == seg)
            .flat_map(|c| &c.fields)
            .map(|f| usize::from(f.field))
            .max();
        match (standard, declared) {
            (Some(s), Some(d)) => Some(s.max(d)),
            (s, d) => s.or(d),
        }
    }
}

/// The basic check of an emitted ER7 message (see the module doc).
pub fn check_hl7(text: &str, limits: &Hl7Limits) -> Result<(), CheckError> {
    if !text.starts_with("MSH|^~\\&|") {
        return fail("MSH-1/MSH-2 must be `|^~\\&`");
    }
    if !text.ends_with('\r') {
        return fail("the last segment is not ended by CR");
    }
    let mut ids: Vec<&str> = Vec::with_capacity(16);
    for (n, seg) in text[..text.len() - 1].split('\r').enumerate() {
        let n = n + 1;
        let b = seg.as_bytes();
        if b.len() < 3
            || !b[0].is_ascii_uppercase()
            || !b[1..3]
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            || (b.len() > 3 && b[3] != b'|')
        {
            return fail(format!("segment {n} does not start with a segment id"));
        }
        if let Some(p) = b.iter().position(|&c| is_forbidden_control(c)) {
            return fail(format!(
                "segment {n} ({}) holds a control character (byte {p}) that must be escaped",
                &seg[..3]
            ));
        }
        let id = &seg[..3];
        segment(n, id, seg, limits)?;
        ids.push(id);
    }
    if !limits.order.is_empty() {
        let order: Vec<&str> = limits.order.iter().map(String::as_str).collect();
        if let Err(k) = hl7::check_order(&ids, &order) {
            return fail(format!(
                "segment {} ({}) is out of order for {}^{}",
                k + 1,
                ids[k],
                limits.code,
                limits.trigger
            ));
        }
        for r in &limits.required {
            if !ids.contains(&r.as_str()) {
                return fail(format!(
                    "{}^{} without a {r} segment",
                    limits.code, limits.trigger
                ));
            }
        }
    }
    Ok(())
}

/// Checks one segment: escapes, field count, required fields, lengths.
fn segment(n: usize, id: &str, seg: &str, limits: &Hl7Limits) -> Result<(), CheckError> {
    let msh = id == "MSH";
    // Fields after the id (MSH: after MSH-2, whose characters are the delimiters).
    let body = if msh {
        seg.get(9..).unwrap_or("")
    } else {
        seg.get(4..).unwrap_or("")
    };
    let first = if msh { 3u16 } else { 1 };
    let mut count = usize::from(first) - 1;
    let mut required_seen: [bool; 4] = [false; 4];
    for (i, field) in body.split('|').enumerate() {
        let f = first + i as u16;
        if seg.len() <= 4 && !msh {
            break;
        }
        count = usize::from(f);
        escapes(field).map_err(|why| CheckError(format!("segment {n} ({id}), {id}-{f}: {why}")))?;
        let max = limits
            .declared(id, f)
            .and_then(|d| d.length)
            .or_else(|| hl7::max_length(id, f));
        if let Some(max) = max {
            let len = field.chars().count();
            if len > max {
                return fail(format!(
                    "segment {n} ({id}): {id}-{f} is {len} characters as sent, at most {max}"
                ));
            }
        }
        // The first component of the first repetition: only MSH-7 and MSH-12 read it.
        let first_comp = || field.split(['^', '~']).next().unwrap_or("");
        match (id, f) {
            ("MSH", 7) => {
                let digits = first_comp().bytes().take_while(u8::is_ascii_digit).count();
                if !(digits >= 12 && digits % 2 == 0) {
                    return fail("MSH-7 must be a timestamp YYYYMMDDHHMM[SS]");
                }
                required_seen[0] = true;
            }
            ("MSH", 9) => {
                let mut parts = field.split('^');
                let ok3 = |s: Option<&str>| {
                    s.is_some_and(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
                };
                if !ok3(parts.next()) || !ok3(parts.next()) {
                    return fail("MSH-9 needs a message code and a trigger event");
                }
                required_seen[1] = true;
            }
            ("MSH", 10) if !field.is_empty() => required_seen[2] = true,
            ("MSH", 12) => {
                if first_comp() != limits.version {
                    return fail(format!(
                        "MSH-12 must be the mapping's version {}",
                        limits.version
                    ));
                }
                required_seen[3] = true;
            }
            ("PID", 3) | ("ORC", 1) if !field.is_empty() => required_seen[0] = true,
            _ => {}
        }
        if field.is_empty()
            && let Some(d) = limits.declared(id, f)
            && d.required
        {
            return fail(format!(
                "segment {n} ({id}): {id}-{f} ({}) is required",
                d.name
            ));
        }
    }
    if let Some(max) = limits.field_count(id)
        && count > max
    {
        return fail(format!(
            "segment {n} ({id}) has {count} fields, {id} has {max} in HL7 v{}",
            limits.version
        ));
    }
    if msh {
        for (seen, what) in required_seen.iter().zip([
            "MSH-7 (time) is empty",
            "MSH-9 (type) is empty",
            "MSH-10 (control id) is empty",
            "MSH-12 (version) is empty",
        ]) {
            if !seen {
                return fail(what);
            }
        }
    }
    if matches!(id, "PID" | "ORC") && !required_seen[0] {
        return fail(format!(
            "segment {n} ({id}): {} is required",
            if id == "PID" { "PID-3" } else { "ORC-1" }
        ));
    }
    for d in limits
        .custom
        .iter()
        .filter(|c| c.id == id)
        .flat_map(|c| &c.fields)
        .filter(|d| d.required)
    {
        if usize::from(d.field) > count {
            return fail(format!(
                "segment {n} ({id}): {id}-{} ({}) is required",
                d.field, d.name
            ));
        }
    }
    Ok(())
}

/// LF would split a segment for many readers, and VT/FS would end the MLLP frame; NUL ends
/// C strings. One bit test per byte.
fn is_forbidden_control(c: u8) -> bool {
    const SET: u64 = 1 << b'\n' | 1 << 0x00 | 1 << 0x0b | 1 << 0x1c;
    c < 64 && (SET >> c) & 1 == 1
}

/// Every `\` of a field opens an escape sequence that is closed and known.
fn escapes(field: &str) -> Result<(), &'static str> {
    let b = field.as_bytes();
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'\\', &b[i..]) {
        let start = i + p + 1;
        let Some(len) = memchr::memchr(b'\\', &b[start..]) else {
            return Err("an escape sequence is not closed");
        };
        let body = &field[start..start + len];
        let known = matches!(
            body,
            "F" | "S" | "T" | "R" | "E" | "H" | "N" | ".br" | ".fi" | ".nf" | ".ce"
        ) || body.strip_prefix('X').is_some_and(|h| {
            !h.is_empty() && h.len() % 2 == 0 && h.bytes().all(|c| c.is_ascii_hexdigit())
        }) || [".sp", ".in", ".ti", ".sk"].iter().any(|p| {
            body.strip_prefix(p).is_some_and(|r| {
                r.trim_start_matches(['+', '-', ' '])
                    .bytes()
                    .all(|c| c.is_ascii_digit())
            })
        });
        if !known || body.bytes().any(|c| matches!(c, b'|' | b'^' | b'~' | b'&')) {
            return Err("an escape sequence is not one HL7 defines");
        }
        i = start + len + 1;
    }
    Ok(())
}

/// The full check's HL7 part: hl7-parser re-reads the message and sees every segment.
pub fn check_hl7_full(text: &str) -> Result<(), CheckError> {
    crate::hl7::writer::check_with_hl7_parser(text).map_err(|e| CheckError(e.to_string()))
}

/// The full check's FHIR part: fhir-sdk's typed R4B model accepts the resource.
pub fn check_fhir_full(resource: &str, json: &str) -> Result<(), CheckError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|_| CheckError("not JSON".into()))?;
    fhir::check(resource, &v).map_err(CheckError)
}

// ---- FHIR ---------------------------------------------------------------------------

/// A JSON value read by the checker, borrowing its strings.
#[derive(Debug)]
enum J<'t> {
    Null,
    Bool,
    Num,
    Str(&'t str, bool),
    Arr(Vec<J<'t>>),
    Obj(Vec<(&'t str, J<'t>)>),
}

struct Reader<'t> {
    t: &'t str,
    b: &'t [u8],
    i: usize,
    depth: usize,
}

impl<'t> Reader<'t> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Result<J<'t>, CheckError> {
        self.ws();
        self.depth += 1;
        if self.depth > 64 {
            return fail("JSON nested too deeply");
        }
        let v = match self.b.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut m: Vec<(&'t str, J<'t>)> = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let J::Str(k, _) = self.string()? else {
                            unreachable!("string() reads a string")
                        };
                        if m.iter().any(|(x, _)| *x == k) {
                            return fail(format!("JSON key `{k}` appears twice"));
                        }
                        self.ws();
                        if self.b.get(self.i) != Some(&b':') {
                            return fail("JSON: `:` expected");
                        }
                        self.i += 1;
                        let v = self.value()?;
                        m.push((k, v));
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return fail("JSON: `,` or `}` expected"),
                        }
                    }
                }
                J::Obj(m)
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                } else {
                    loop {
                        a.push(self.value()?);
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return fail("JSON: `,` or `]` expected"),
                        }
                    }
                }
                J::Arr(a)
            }
            Some(b'"') => self.string()?,
            Some(b't') if self.b[self.i..].starts_with(b"true") => {
                self.i += 4;
                J::Bool
            }
            Some(b'f') if self.b[self.i..].starts_with(b"false") => {
                self.i += 5;
                J::Bool
            }
            Some(b'n') if self.b[self.i..].starts_with(b"null") => {
                self.i += 4;
                J::Null
            }
            Some(b'-' | b'0'..=b'9') => {
                let s = self.i;
                while self.i < self.b.len()
                    && matches!(
                        self.b[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                if self.t[s..self.i].parse::<f64>().is_err() {
                    return fail("JSON: a number is malformed");
                }
                J::Num
            }
            _ => return fail("JSON: a value expected"),
        };
        self.depth -= 1;
        Ok(v)
    }

    /// A string; `J::Str(raw text, has escapes)`.
    fn string(&mut self) -> Result<J<'t>, CheckError> {
        if self.b.get(self.i) != Some(&b'"') {
            return fail("JSON: a string expected");
        }
        self.i += 1;
        let s = self.i;
        let mut escaped = false;
        loop {
            // Plain bytes, skipped with one table load each.
            while self.i < self.b.len() && !JSON_SPECIAL[usize::from(self.b[self.i])] {
                self.i += 1;
            }
            match self.b.get(self.i) {
                None => return fail("JSON: a string is not closed"),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    match self.b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u')
                            if self
                                .b
                                .get(self.i + 2..self.i + 6)
                                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                        {
                            self.i += 6
                        }
                        _ => return fail("JSON: an escape in a string is malformed"),
                    }
                }
                // The skip above stops only at `"`, `\\` and control characters.
                Some(_) => return fail("JSON: a control character in a string"),
            }
        }
        let raw = &self.t[s..self.i];
        self.i += 1;
        Ok(J::Str(raw, escaped))
    }
}

/// The basic check of a FHIR resource as JSON text (see the module doc).
pub fn check_fhir(resource: &str, text: &str) -> Result<(), CheckError> {
    let mut r = Reader {
        t: text,
        b: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let root = r.value()?;
    r.ws();
    if r.i != r.b.len() {
        return fail("JSON: text after the resource");
    }
    let J::Obj(m) = &root else {
        return fail("the resource is not a JSON object");
    };
    match get(m, "resourceType") {
        Some(J::Str(t, _)) if *t == resource => {}
        _ => return fail(format!("resourceType must be {resource}")),
    }
    let Some(elements) = fhir::elements_of(resource) else {
        return fail(format!("no check for resource {resource}"));
    };
    let mut refs: Vec<&str> = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    object(resource, elements, m, &At::Root(resource), &mut refs, true)?;
    if let Some(c) = get(m, "contained") {
        let J::Arr(items) = c else {
            return fail("`contained` must be a list");
        };
        for (k, item) in items.iter().enumerate() {
            let J::Obj(cm) = item else {
                return fail(format!("contained[{k}] is not an object"));
            };
            let Some(J::Str(rt, _)) = get(cm, "resourceType") else {
                return fail(format!("contained[{k}] has no resourceType"));
            };
            if !fhir::CONTAINED.contains(rt) {
                return fail(format!("contained[{k}]: `{rt}` cannot be contained here"));
            }
            let Some(J::Str(id, _)) = get(cm, "id") else {
                return fail(format!("contained[{k}] ({rt}) has no id"));
            };
            if !is_id(id) {
                return fail(format!("contained[{k}] ({rt}): the id is not a FHIR id"));
            }
            if ids.contains(id) {
                return fail(format!("contained id `{id}` is used twice"));
            }
            ids.push(id);
            let ce = fhir::elements_of(rt).expect("a contained type has elements");
            let at = At::Index(&At::Root("contained"), k);
            object(rt, ce, cm, &at, &mut refs, true)?;
        }
    }
    for req in fhir::required_elements(resource) {
        if get(m, req).is_none() {
            return fail(format!("{resource}.{req} is required"));
        }
    }
    if let Some(r) = refs.iter().find(|r| !ids.contains(r)) {
        return fail(format!(
            "reference `#{r}` names no contained resource (its rules wrote nothing, or its `when` did not hold)"
        ));
    }
    if let Some(id) = ids.iter().find(|id| !refs.contains(id)) {
        return fail(format!(
            "contained resource `#{id}` is not referenced (FHIR requires every contained resource to be referenced)"
        ));
    }
    Ok(())
}

/// Where an element is (`ServiceRequest.code.coding[0]`): built up on the stack as the check
/// descends, and written out only into an error message.
enum At<'p> {
    Root(&'p str),
    Key(&'p At<'p>, &'p str),
    Index(&'p At<'p>, usize),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Root(name) => f.write_str(name),
            At::Key(parent, key) => write!(f, "{parent}.{key}"),
            At::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn get<'m, 't>(m: &'m [(&'t str, J<'t>)], k: &str) -> Option<&'m J<'t>> {
    m.iter().find(|(x, _)| *x == k).map(|(_, v)| v)
}

/// Checks the elements of an object of type `owner`.
fn object<'t>(
    owner: &str,
    elements: fhir::Elements,
    m: &[(&'t str, J<'t>)],
    at: &At<'_>,
    refs: &mut Vec<&'t str>,
    resource: bool,
) -> Result<(), CheckError> {
    if m.is_empty() {
        return fail(format!("{at} is an empty object"));
    }
    for (k, v) in m {
        if resource && matches!(*k, "resourceType" | "id" | "contained") {
            if *k == "id"
                && let J::Str(s, _) = v
                && !is_id(s)
            {
                return fail(format!("{at}.id is not a FHIR id"));
            }
            continue;
        }
        let Some(&(_, ty, list)) = elements.iter().find(|(n, _, _)| n == k) else {
            return fail(format!("{at}: `{k}` is not an element of {owner}"));
        };
        let path = At::Key(at, k);
        match (list, v) {
            (true, J::Arr(items)) => {
                if items.is_empty() {
                    return fail(format!("{path} is an empty list"));
                }
                for (i, item) in items.iter().enumerate() {
                    element(owner, k, ty, item, &At::Index(&path, i), refs)?;
                }
            }
            (true, _) => return fail(format!("{path} must be a list")),
            (false, J::Arr(_)) => return fail(format!("{path} must not be a list")),
            (false, item) => element(owner, k, ty, item, &path, refs)?,
        }
    }
    Ok(())
}

/// Checks one element value of type `ty`.
fn element<'t>(
    owner: &str,
    name: &str,
    ty: &str,
    v: &J<'t>,
    at: &At<'_>,
    refs: &mut Vec<&'t str>,
) -> Result<(), CheckError> {
    if ty.starts_with(|c: char| c.is_ascii_lowercase()) {
        return primitive(owner, name, ty, v, at, refs);
    }
    let J::Obj(m) = v else {
        return fail(format!("{at} must be an object ({ty})"));
    };
    let Some(sub) = fhir::datatype(ty) else {
        return Ok(());
    };
    object(ty, sub, m, at, refs, false)
}

fn primitive<'t>(
    owner: &str,
    name: &str,
    ty: &str,
    v: &J<'t>,
    at: &At<'_>,
    refs: &mut Vec<&'t str>,
) -> Result<(), CheckError> {
    match ty {
        "boolean" => {
            return match v {
                J::Bool => Ok(()),
                _ => fail(format!("{at} must be a boolean")),
            };
        }
        "integer" | "unsignedInt" | "positiveInt" | "decimal" => {
            return match v {
                J::Num => Ok(()),
                _ => fail(format!("{at} must be a number")),
            };
        }
        _ => {}
    }
    let J::Str(s, escaped) = v else {
        return fail(format!("{at} must be a string ({ty})"));
    };
    if s.is_empty() {
        return fail(format!("{at} is an empty string"));
    }
    let plain = !escaped;
    let ok = match ty {
        "code" => plain && s.trim() == *s && !s.contains("  "),
        "id" => is_id(s),
        "uri" | "url" | "canonical" => plain && !s.bytes().any(|b| b.is_ascii_whitespace()),
        "date" => is_date(s),
        "dateTime" => is_date_time(s, false),
        "instant" => is_date_time(s, true),
        "base64Binary" => {
            plain
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        }
        _ => true,
    };
    if !ok {
        return fail(format!("{at} is not a valid FHIR {ty}"));
    }
    if let Some(codes) = fhir::required_binding(owner, name)
        && !codes.contains(s)
    {
        return fail(format!("{at} is not a code of its required value set"));
    }
    if name == "reference"
        && let Some(local) = s.strip_prefix('#')
    {
        refs.push(local);
    }
    Ok(())
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn digits(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_digit)
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` with a real month and day.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        4 => digits(b),
        7 => digits(&b[..4]) && b[4] == b'-' && month(&b[5..7]),
        10 => {
            digits(&b[..4])
                && b[4] == b'-'
                && month(&b[5..7])
                && b[7] == b'-'
                && s.parse::<jiff::civil::Date>().is_ok()
        }
        _ => false,
    }
}

fn month(b: &[u8]) -> bool {
    digits(b) && matches!((b[0] - b'0') * 10 + (b[1] - b'0'), 1..=12)
}

/// A date, or a date and time with seconds and a zone (`Z` or `±hh:mm`); an instant needs
/// the time.
fn is_date_time(s: &str, instant: bool) -> bool {
    let Some((date, rest)) = s.split_once('T') else {
        return !instant && is_date(s);
    };
    if date.len() != 10 || !is_date(date) {
        return false;
    }
    let b = rest.as_bytes();
    if b.len() < 9
        || !(digits(&b[..2])
            && b[2] == b':'
            && digits(&b[3..5])
            && b[5] == b':'
            && digits(&b[6..8]))
    {
        return false;
    }
    if &b[..2] > b"23".as_slice() || &b[3..5] > b"59".as_slice() || &b[6..8] > b"60".as_slice() {
        return false;
    }
    let mut z = &rest[8..];
    if let Some(f) = z.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        z = &f[n..];
    }
    match z.as_bytes() {
        b"Z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            digits(&[*h1, *h2, *m1, *m2]) && [*h1, *h2] <= *b"14" && [*m1, *m2] <= *b"59"
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Hl7Limits {
        Hl7Limits::new("ORM^O01", "2.5.1", &[])
    }

    const GOOD: &str = "MSH|^~\\&|QUBS|SITE|RIS||20261120100000+1100||ORM^O01^ORM_O01|ABC|P|2.5.1\rPID|1||P-1^^^acme^MR||Doe^Jane\rORC|NW|A1^QUBS\rOBR|1|A1^QUBS||X^Y\rNTE|1|P|a \\F\\ b\\.br\\c\r";

    #[test]
    fn good_hl7_passes() {
        check_hl7(GOOD, &limits()).unwrap();
    }

    #[test]
    fn broken_hl7_is_refused_without_values() {
        let cases = [
            (GOOD.replace("a \\F\\ b", "a \\Q\\ b"), "escape sequence"),
            (GOOD.replace("\\.br\\c", "\\.brc"), "not closed"),
            (GOOD.replace("\\.br\\c", "\nc"), "control character"),
            (GOOD.replace("|ABC|", "||"), "MSH-10"),
            (GOOD.replace("ORC|NW|", "ORC||"), "ORC-1"),
            (GOOD.replace("|2.5.1\r", "|2.4\r"), "MSH-12"),
            (GOOD.replace("\rNTE", "\r\rNTE"), "segment id"),
            (GOOD.replace("ORC|NW|A1^QUBS\r", ""), "without a ORC"),
            (GOOD.replace("\rPID", "\rPV1|1\rPID"), "out of order"),
            (
                GOOD.replace("OBR|1|", &format!("OBR|1|{}", "|".repeat(60))),
                "fields",
            ),
            (
                GOOD.replace("X^Y", &format!("X^Y{}", "|".repeat(9) + &"x".repeat(301))),
                "at most 300",
            ),
            (GOOD.trim_end_matches('\r').to_string(), "CR"),
        ];
        for (text, want) in cases {
            let e = check_hl7(&text, &limits()).unwrap_err().0;
            assert!(e.contains(want), "{want}: {e}");
            assert!(!e.contains("Jane") && !e.contains("a  b"), "{e}");
        }
    }

    #[test]
    fn declared_custom_fields() {
        let custom = [CustomSegment {
            id: "ZDS".into(),
            after: Some("OBR".into()),
            fields: vec![super::super::ir::FieldDecl {
                field: 1,
                name: "Study Instance UID".into(),
                datatype: "ST".into(),
                length: Some(8),
                required: true,
            }],
            pos: Default::default(),
        }];
        let l = Hl7Limits::new("ORM^O01", "2.5.1", &custom);
        let ok = GOOD.replace("\rNTE", "\rZDS|1.2.3\rNTE");
        check_hl7(&ok, &l).unwrap();
        let long = GOOD.replace("\rNTE", "\rZDS|1.2.3.4.5.6\rNTE");
        assert!(check_hl7(&long, &l).unwrap_err().0.contains("at most 8"));
        let empty = GOOD.replace("\rNTE", "\rZDS\rNTE");
        assert!(check_hl7(&empty, &l).unwrap_err().0.contains("required"));
        let two = GOOD.replace("\rNTE", "\rZDS|1|2\rNTE");
        assert!(check_hl7(&two, &l).unwrap_err().0.contains("fields"));
        let misplaced = GOOD.replace("\rPID", "\rZDS|1\rPID");
        assert!(
            check_hl7(&misplaced, &l)
                .unwrap_err()
                .0
                .contains("out of order")
        );
    }

    const SR: &str = r##"{"resourceType":"ServiceRequest","contained":[{"resourceType":"Patient","id":"patient","name":[{"family":"Doe"}],"birthDate":"1961-03-14"}],"status":"active","intent":"order","subject":{"reference":"#patient"},"occurrencePeriod":{"start":"2026-11-20T09:15:00+11:00"},"note":[{"text":"a \"b\"\n","time":"2026-11-19T22:10:00Z"}]}"##;

    #[test]
    fn good_fhir_passes() {
        check_fhir("ServiceRequest", SR).unwrap();
        check_fhir_full("ServiceRequest", SR).unwrap();
    }

    #[test]
    fn broken_fhir_is_refused() {
        let cases = [
            (SR.replace("\"active\"", "\"activ\""), "value set"),
            (
                SR.replace("\"intent\":\"order\",", ""),
                "intent is required",
            ),
            (
                SR.replace("occurrencePeriod", "occurrencePeriods"),
                "not an element",
            ),
            (
                SR.replace("1961-03-14", "1961-02-30"),
                "contained[0].birthDate is not a valid FHIR date",
            ),
            (
                SR.replace("09:15:00+11:00", "09:15:00"),
                "ServiceRequest.occurrencePeriod.start is not a valid FHIR dateTime",
            ),
            (
                SR.replace("\"time\":\"2026-11-19T22:10:00Z\"", "\"time\":true"),
                "ServiceRequest.note[0].time must be a string",
            ),
            (
                SR.replace("#patient\"}", "#nobody\"}"),
                "names no contained",
            ),
            (
                SR.replace(
                    "\"name\":[{\"family\":\"Doe\"}]",
                    "\"name\":{\"family\":\"Doe\"}",
                ),
                "list",
            ),
            (
                SR.replace("{\"family\":\"Doe\"}", "{}"),
                "contained[0].name[0] is an empty object",
            ),
            (
                SR.replace(
                    "\"intent\":\"order\"",
                    "\"intent\":\"order\",\"intent\":\"order\"",
                ),
                "twice",
            ),
            (SR.replace("\\n", "\\x"), "escape"),
            (
                SR.replace("a \\\"b\\\"", "a\tb"),
                "control character in a string",
            ),
            (format!("{SR} x"), "after the resource"),
        ];
        for (text, want) in cases {
            let e = check_fhir("ServiceRequest", &text).unwrap_err().0;
            assert!(e.contains(want), "{want}: {e}");
            assert!(!e.contains("Doe"), "{e}");
        }
    }

    #[test]
    fn date_times() {
        for ok in [
            "2026",
            "2026-11",
            "2026-11-20",
            "2026-11-20T09:15:00Z",
            "2026-11-20T09:15:00.5+11:00",
        ] {
            assert!(is_date_time(ok, false), "{ok}");
        }
        for bad in [
            "2026-13",
            "2026-11-20T09:15Z",
            "2026-11-20T24:00:00Z",
            "20261120",
            "2026-11-20T09:15:00+1100",
        ] {
            assert!(!is_date_time(bad, false), "{bad}");
        }
        assert!(!is_date_time("2026-11-20", true));
    }
}
