//! Runs a compiled plan against one input. Nothing here parses YAML or paths: sources,
//! filters and targets were resolved by [`super::compile`].

use jiff::tz::TimeZone;
use serde_json::Value;

use super::MapError;
use super::compile::{Cond, Rule, Source, Stage, Target, Test};
use super::fhir::{self, Prim, Ty};
use super::filters::{self, FilterEnv, FilterError, Table, Val};
use super::hl7::Rep;
use super::spec::{Alt, JsonPath, Part, Step};
use crate::hl7::Delimiters;
use crate::hl7::er7;
use crate::hl7::escape::unescape;
use crate::hl7::writer::{Position, SegmentBuilder};

/// Everything a rule can read.
pub struct Env<'a> {
    /// The JSON input (Order, or `{resource, site, config, domain}` for inbound).
    pub input: &'a Value,
    /// The ORDER_OBSERVATION group being read, for ORU input.
    pub hl7: Option<&'a er7::Scope<'a, 'a>>,
    /// Site zone.
    pub zone: Option<TimeZone>,
    /// Delimiters of the inbound message (default otherwise).
    pub delims: Delimiters,
    /// Code tables.
    pub tables: &'a [Table],
    /// Unmapped values seen (table, value).
    pub unmapped: Vec<(String, String)>,
    /// `$set_id` of the HL7 segment being written.
    pub set_id: usize,
    bindings: Vec<(&'a str, &'a Value, usize)>,
}

/// Where rule values are written.
pub struct Out {
    /// FHIR resource under construction.
    pub fhir: fhir::Tree,
    /// Array index `[*]` stands for, per nesting level.
    pub each: Vec<usize>,
    /// HL7 segment under construction.
    pub seg: SegmentBuilder,
    /// Report fields, indexed by [`super::ReportField`].
    pub report: Vec<Option<String>>,
}

impl Out {
    /// An empty sink.
    pub fn new() -> Out {
        Out {
            fhir: fhir::Tree::Empty,
            each: Vec::new(),
            seg: SegmentBuilder::new("ZZZ"),
            report: vec![None; super::ReportField::ALL.len()],
        }
    }
}

impl Default for Out {
    fn default() -> Self {
        Out::new()
    }
}

impl<'a> Env<'a> {
    /// A new environment.
    pub fn new(input: &'a Value, zone: Option<TimeZone>, tables: &'a [Table]) -> Env<'a> {
        Env {
            input,
            hl7: None,
            zone,
            delims: Delimiters::default(),
            tables,
            unmapped: Vec::new(),
            set_id: 1,
            bindings: Vec::new(),
        }
    }

    /// Binds a `for_each` item.
    pub fn bind(&mut self, alias: &'a str, item: &'a Value, index: usize) {
        self.bindings.push((alias, item, index));
    }

    /// Undoes the last [`Env::bind`].
    pub fn unbind(&mut self) {
        self.bindings.pop();
    }

    fn root(&self, p: &'a JsonPath) -> Option<&'a Value> {
        match self.bindings.iter().rev().find(|b| b.0 == p.root) {
            Some(b) => Some(b.1),
            None => self.input.get(&p.root),
        }
    }

    /// The value at a path without `[*]` or filters (at most one), walked without the
    /// per-step lists [`Env::json`] builds: most rules read such a path.
    fn json_one(&self, p: &'a JsonPath) -> Option<&'a Value> {
        let mut cur = self.root(p)?;
        for st in &p.steps {
            cur = match st {
                Step::Key(k) => cur.get(k)?,
                Step::Index(i) => cur.get(*i)?,
                Step::All | Step::Filter { .. } => unreachable!("json_one on a many-valued path"),
            };
        }
        (!cur.is_null()).then_some(cur)
    }

    /// JSON values at `p` (items of a list, or the one value).
    pub fn json(&self, p: &'a JsonPath) -> Vec<&'a Value> {
        if !p.is_many() {
            return self.json_one(p).into_iter().collect();
        }
        let mut cur: Vec<&'a Value> = self.root(p).into_iter().collect();
        for st in &p.steps {
            let mut next = Vec::with_capacity(cur.len());
            for v in cur {
                match st {
                    Step::Key(k) => next.extend(v.get(k)),
                    Step::Index(i) => next.extend(v.get(*i)),
                    Step::All => {
                        if let Some(a) = v.as_array() {
                            next.extend(a.iter());
                        }
                    }
                    Step::Filter { field, op, values } => {
                        if let Some(a) = v.as_array() {
                            next.extend(a.iter().filter(|item| {
                                let f = item.get(field).and_then(scalar);
                                op.test(f.as_deref(), values)
                            }));
                        }
                    }
                }
            }
            cur = next;
        }
        cur.retain(|v| !v.is_null());
        cur
    }

    fn alt(&self, a: &'a Alt) -> Val {
        match a {
            Alt::Json(p) if !p.is_many() => self
                .json_one(p)
                .and_then(scalar)
                .filter(|s| !s.is_empty())
                .map_or(Val::None, Val::One),
            Alt::Json(p) => {
                let vals: Vec<String> = self.json(p).into_iter().filter_map(scalar).collect();
                if vals.is_empty() {
                    Val::None
                } else {
                    Val::Many(vals)
                }
            }
            Alt::Index => self
                .bindings
                .last()
                .map_or(Val::None, |b| Val::One(b.2.to_string())),
            Alt::SetId => Val::One(self.set_id.to_string()),
            Alt::Hl7(h) => {
                let Some(scope) = self.hl7 else {
                    return Val::None;
                };
                let d = scope.message().delimiters();
                let mut out: Vec<String> = Vec::new();
                let segs = scope.segments_with_id(&h.path.segment);
                let mut n = 0u16;
                for seg in segs {
                    if !h.filter.is_empty() {
                        let pass = h.filter.iter().all(|(f, op, values)| {
                            // Compared without copying: escapes are rare in coded fields.
                            let v = seg.field(*f).map(|raw| {
                                let first = raw.split(d.repetition as char).next().unwrap_or("");
                                let comp = first.split(d.component as char).next().unwrap_or("");
                                unescape(comp.trim(), &d)
                            });
                            op.test(v.as_deref(), values)
                        });
                        if !pass {
                            continue;
                        }
                    } else {
                        n += 1;
                        if let er7::Index::Nth(k) = h.path.occurrence
                            && k != n
                        {
                            continue;
                        }
                    }
                    let field_level = h.path.component.is_none();
                    let coded = field_level && is_coded_obx5(&seg, h.path.field, &d);
                    let mut found = false;
                    seg.visit(&h.path, &mut |raw| {
                        found = true;
                        if coded {
                            out.push(coded_text(raw, &d));
                            return;
                        }
                        let has_reps = raw.as_bytes().contains(&d.repetition);
                        out.push(if field_level && h.path.repetition.is_none() && has_reps {
                            // Repetitions of a text field are lines.
                            raw.split(d.repetition as char)
                                .map(|r| unescape(r, &d))
                                .collect::<Vec<_>>()
                                .join("\n")
                        } else {
                            unescape(raw, &d).into_owned()
                        });
                    });
                    if !found && h.is_many() {
                        out.push(String::new());
                    }
                }
                if h.is_many() {
                    if out.is_empty() {
                        Val::None
                    } else {
                        Val::Many(out)
                    }
                } else {
                    out.into_iter()
                        .next()
                        .filter(|s| !s.is_empty())
                        .map_or(Val::None, Val::One)
                }
            }
            Alt::Template(parts) => {
                let mut s = String::new();
                let mut placeholders = 0;
                let mut missing = 0;
                for p in parts {
                    match p {
                        Part::Text(t) => s.push_str(t),
                        Part::Value(alts) => {
                            placeholders += 1;
                            match self.chain(alts) {
                                Val::One(v) => s.push_str(&v),
                                Val::Many(v) => s.push_str(&v.join(", ")),
                                Val::None => missing += 1,
                            }
                        }
                    }
                }
                if placeholders > 0 && missing == placeholders {
                    Val::None
                } else {
                    let t = s.trim();
                    if t.is_empty() {
                        Val::None
                    } else {
                        Val::One(t.to_string())
                    }
                }
            }
        }
    }

    /// First present alternative.
    pub fn chain(&self, alts: &'a [Alt]) -> Val {
        for a in alts {
            let v = self.alt(a);
            if v.is_present() {
                return v;
            }
        }
        Val::None
    }

    fn present(&self, alts: &'a [Alt]) -> bool {
        alts.iter().any(|a| match a {
            // Objects count as present for `present: true` (e.g. an assigned radiologist).
            Alt::Json(p) => {
                // A blank string is no value: "present" means there is something to send.
                let present = |v: &Value| match v {
                    Value::String(s) => !s.trim().is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    _ => true,
                };
                if p.is_many() {
                    self.json(p).into_iter().any(present)
                } else {
                    self.json_one(p).is_some_and(present)
                }
            }
            other => self.alt(other).is_present(),
        })
    }

    /// Whether a `when` holds.
    pub fn test(&self, c: &'a Cond) -> bool {
        match &c.test {
            Test::Present(want) => self.present(&c.chain) == *want,
            Test::InTable(i) => match self.chain(&c.chain) {
                Val::One(s) => self.tables[*i].get(&s).is_some(),
                _ => false,
            },
            Test::In(vals) | Test::NotIn(vals) => {
                let same = |a: &str, b: &str| {
                    if c.ignore_case {
                        a.trim().to_lowercase() == b.trim().to_lowercase()
                    } else {
                        a == b
                    }
                };
                let hit = match self.chain(&c.chain) {
                    Val::One(s) => vals.iter().any(|v| same(v, &s)),
                    Val::Many(items) => items.iter().any(|s| vals.iter().any(|v| same(v, s))),
                    Val::None => false,
                };
                hit == matches!(c.test, Test::In(_))
            }
            Test::Any(conds) => conds.iter().any(|x| self.test(x)),
            Test::All(conds) => conds.iter().all(|x| self.test(x)),
            Test::Not(x) => !self.test(x),
        }
    }

    /// The first stage whose value, after its own filters, is present.
    fn stages(&mut self, rule: &'a Rule, stages: &'a [Stage]) -> Result<Val, MapError> {
        for st in stages {
            let mut v = self.chain(&st.chain);
            for f in &st.filters {
                v = self.filter(rule, f, v)?;
            }
            if v.is_present() {
                return Ok(v);
            }
        }
        Ok(Val::None)
    }

    fn filter(&mut self, rule: &Rule, f: &filters::Filter, v: Val) -> Result<Val, MapError> {
        let mut env = FilterEnv {
            tables: self.tables,
            zone: self.zone.as_ref(),
            delimiters: self.delims,
            unmapped: &mut self.unmapped,
        };
        filters::apply(f, v, &mut env).map_err(|e| match e {
            FilterError::Required => MapError::Required {
                rule: rule.at.to_string(),
                sources: rule_sources(rule),
            },
            FilterError::Unmapped { table, value } => MapError::Unmapped {
                rule: rule.at.to_string(),
                table,
                sources: rule_sources(rule),
                value,
            },
            FilterError::Invalid(reason) => MapError::Value {
                rule: rule.at.to_string(),
                reason,
            },
        })
    }

    /// Source value of a rule after its filters.
    pub fn value(&mut self, rule: &'a Rule) -> Result<Val, MapError> {
        let mut v = match &rule.source {
            Some(Source::Const(c)) => Val::One(c.clone()),
            Some(Source::Chain(alts)) => self.chain(alts),
            Some(Source::Stages(st)) => self.stages(rule, st)?,
            None => Val::None,
        };
        for f in &rule.filters {
            v = self.filter(rule, f, v)?;
        }
        Ok(v)
    }

    /// Runs `rules` into `out`; returns whether anything was written.
    pub fn run(&mut self, rules: &'a [Rule], out: &mut Out) -> Result<bool, MapError> {
        let mut wrote = false;
        for rule in rules {
            if let Some(c) = &rule.when
                && !self.test(c)
            {
                continue;
            }
            if let Some(each) = &rule.each {
                let items = self.json(&each.over);
                let base = match &each.array {
                    Some(steps) => fhir::array_len(&out.fhir, steps, &out.each),
                    None => 0,
                };
                let mut k = 0;
                let mut passed = 0;
                for item in items {
                    self.bind(&each.alias, item, passed + 1);
                    if let Some(w) = &each.filter
                        && !self.test(w)
                    {
                        self.unbind();
                        continue;
                    }
                    passed += 1;
                    out.each.push(base + k);
                    let r = self.run(&each.rules, out);
                    out.each.pop();
                    self.unbind();
                    if r? {
                        k += 1;
                        wrote = true;
                    }
                }
                continue;
            }
            let v = match self.value(rule)? {
                Val::One(s) if !s.is_empty() => s,
                // Empty values are never written: FHIR forbids "" and HL7 trims them.
                Val::One(_) | Val::None => continue,
                Val::Many(items) => {
                    // compile rejects list sources on value targets; keep the first if a
                    // filter chain still produced a list.
                    match items.into_iter().find(|s| !s.is_empty()) {
                        Some(s) => s,
                        None => continue,
                    }
                }
            };
            write(rule, v, out)?;
            wrote = true;
        }
        Ok(wrote)
    }
}

fn write(rule: &Rule, v: String, out: &mut Out) -> Result<(), MapError> {
    match &rule.target {
        Target::Fhir(t) => {
            let json = match t.ty {
                Ty::Prim(Prim::Bool, _) => match v.to_lowercase().as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => return Err(type_err(rule, "a boolean (true/false)")),
                },
                Ty::Prim(Prim::Int, _) => v
                    .trim()
                    .parse::<i64>()
                    .map(Value::from)
                    .map_err(|_| type_err(rule, "an integer"))?,
                Ty::Prim(Prim::Decimal, _) => v
                    .trim()
                    .parse::<serde_json::Number>()
                    .map(Value::Number)
                    .map_err(|_| type_err(rule, "a decimal"))?,
                _ => Value::String(v),
            };
            fhir::write(&mut out.fhir, &t.steps, &out.each, json);
        }
        Target::Hl7(t) => {
            let rep = match t.rep {
                Rep::Nth(n) => n,
                Rep::Each => out.each.last().map_or(1, |i| *i as u16 + 1),
            };
            out.seg.set(
                Position {
                    field: t.field,
                    repetition: rep,
                    component: t.component,
                    subcomponent: t.subcomponent,
                },
                &v,
            );
        }
        Target::Report(f) => out.report[*f as usize] = Some(v),
        Target::None => {}
    }
    Ok(())
}

fn type_err(rule: &Rule, what: &str) -> MapError {
    MapError::Value {
        rule: rule.at.to_string(),
        reason: format!("the value is not {what}"),
    }
}

/// A source chain as an analyst would write it (`OBR-25 | OBX[OBX-11 not in (W, D)]-11`),
/// for error messages: paths only, never values.
pub fn describe_chain(alts: &[Alt]) -> String {
    let values = |v: &[String]| v.join(", ");
    let op_text = |op: &super::spec::Op, v: &[String]| match op {
        super::spec::Op::Eq => format!("= {}", values(v)),
        super::spec::Op::Ne => format!("!= {}", values(v)),
        super::spec::Op::In => format!("in ({})", values(v)),
        super::spec::Op::NotIn => format!("not in ({})", values(v)),
    };
    let one = |a: &Alt| -> String {
        match a {
            Alt::Json(p) => {
                let mut s = p.root.clone();
                for st in &p.steps {
                    match st {
                        Step::Key(k) => {
                            s.push('.');
                            s.push_str(k);
                        }
                        Step::Index(i) => s.push_str(&format!("[{i}]")),
                        Step::All => s.push_str("[*]"),
                        Step::Filter { field, op, values } => {
                            s.push_str(&format!("[{field} {}]", op_text(op, values)))
                        }
                    }
                }
                s
            }
            Alt::Hl7(h) if h.filter.is_empty() => h.path.to_string(),
            Alt::Hl7(h) => {
                let seg = h.path.segment_id();
                let tests: Vec<String> = h
                    .filter
                    .iter()
                    .map(|(f, op, v)| format!("{seg}-{f} {}", op_text(op, v)))
                    .collect();
                let mut at = h.path.clone();
                at.occurrence = er7::Index::Nth(1);
                let at = at.to_string();
                format!("{seg}[{}]{}", tests.join(" and "), &at[3..])
            }
            Alt::Template(parts) => {
                // The placeholders are what was looked for; the literal text is not.
                let inner: Vec<String> = parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Value(alts) => Some(format!("{{{}}}", describe_chain(alts))),
                        Part::Text(_) => None,
                    })
                    .collect();
                format!("template {}", inner.join(" "))
            }
            Alt::Index => "$index".to_string(),
            Alt::SetId => "$set_id".to_string(),
        }
    };
    alts.iter().map(one).collect::<Vec<_>>().join(" | ")
}

/// Whether `field` of `seg` is an OBX-5 holding a coded value (OBX-2 CE, CWE, CNE or CF):
/// such a value is read as its text, not as `code^text^system`.
fn is_coded_obx5(seg: &er7::Segment<'_>, field: u16, d: &Delimiters) -> bool {
    if seg.id() != "OBX" || field != 5 {
        return false;
    }
    let value_type = seg
        .field(2)
        .and_then(|t| t.split(d.component as char).next())
        .unwrap_or("")
        .trim();
    ["CE", "CWE", "CNE", "CF"]
        .iter()
        .any(|t| value_type.eq_ignore_ascii_case(t))
}

/// The text of a coded value (CE/CWE/CNE), one line per repetition: the text (component
/// 2), else the alternate text (5), else the original text (CWE-9), else the code (1).
fn coded_text(raw: &str, d: &Delimiters) -> String {
    let mut lines: Vec<String> = Vec::new();
    for rep in raw.split(d.repetition as char) {
        let parts: Vec<&str> = rep.split(d.component as char).collect();
        let text = [2, 5, 9, 1]
            .iter()
            .filter_map(|&c| parts.get(c - 1))
            .map(|p| unescape(p.trim(), d))
            .find(|t| !t.is_empty());
        if let Some(t) = text {
            lines.push(t.into_owned());
        }
    }
    lines.join("\n")
}

/// Text of a scalar JSON value; `None` for null, objects and arrays.
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Where a rule looks for its value, as written (`OBR-25 | OBX[…]-11`,
/// `appointment.patientId`), for the "required value is missing" message: positions and
/// field names, never values. Empty for constants.
fn rule_sources(rule: &Rule) -> String {
    match &rule.source {
        Some(Source::Chain(alts)) => describe_chain(alts),
        Some(Source::Stages(stages)) => stages
            .iter()
            .map(|s| describe_chain(&s.chain))
            .collect::<Vec<_>>()
            .join(" | "),
        _ => String::new(),
    }
}
