//! The value trace: for every output field, how its value came about.
//!
//! A trace is recorded only when asked for (the `*_traced` methods of
//! [`super::MappingSet`]); otherwise the evaluator checks one `Option` per rule and nothing
//! else. It is built from what the evaluation keeps anyway — each expression's
//! value, which alternative of a chain won, which table lookups missed — so it shows exactly
//! what ran, not a second interpretation of the rules.
//!
//! A trace holds input values and output values: it is PHI. It is meant to be shown to the
//! analyst who supplied the input (`map --explain`, `PreviewMapping` with `trace`, the
//! console) and never logged: its `Debug` shows rules and targets only, never values.

use std::fmt;

use serde::Serialize;

use super::eval::{Env, Sink, describe_alt};
use super::filters::{Filter, Policy, TimeOut, Val};
use super::plan::*;

/// How each output field of one mapping run came about, in the order rules ran.
#[derive(Clone, Default, PartialEq, Serialize)]
pub struct Trace {
    /// Mapping name.
    pub mapping: String,
    /// One entry per rule that ran (or was skipped by its `when`).
    pub fields: Vec<FieldTrace>,
}

/// One rule's part in the output.
#[derive(Clone, PartialEq, Serialize)]
pub struct FieldTrace {
    /// The output field: `PID-5.1`, `note[1].text`, `#patient/name[0].family`,
    /// `reportStatus`.
    pub target: String,
    /// HL7: the segment and its number in the message (`NTE #3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// ORU: the ORDER_OBSERVATION group (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// The rule: file, line and column.
    pub rule: String,
    /// What happened.
    pub outcome: Outcome,
    /// The value written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The rule's `when`, and how it was decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<CondTrace>,
    /// Where the value came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceTrace>,
    /// Each filter, in order, with its result.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepTrace>,
}

/// What a rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It wrote its value.
    Written,
    /// Its value was empty: nothing written.
    Empty,
    /// Its `when` did not hold.
    Skipped,
}

/// A value as the trace shows it.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TraceValue {
    /// One text.
    One(String),
    /// Several.
    Many(Vec<String>),
}

fn value_of(v: &Val<'_>) -> Option<TraceValue> {
    match v {
        Val::None => None,
        Val::One(s) => Some(TraceValue::One(s.to_string())),
        Val::Many(items) => Some(TraceValue::Many(
            items.iter().map(|s| s.to_string()).collect(),
        )),
    }
}

/// Where a value came from.
#[derive(Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceTrace {
    /// A constant.
    Constant {
        /// Its text.
        value: String,
    },
    /// Paths tried in order (`a | b`): each with what it held; the first present won.
    Alternatives {
        /// The alternatives.
        alternatives: Vec<AltTrace>,
        /// Index of the one that won.
        #[serde(skip_serializing_if = "Option::is_none")]
        won: Option<usize>,
    },
    /// Alternatives with their own filters (`from:` list items with `filters`).
    Stages {
        /// Each stage tried, with its source and filters.
        stages: Vec<StageTrace>,
        /// Index of the one that won.
        #[serde(skip_serializing_if = "Option::is_none")]
        won: Option<usize>,
    },
}

/// One alternative of a source.
#[derive(Clone, PartialEq, Serialize)]
pub struct AltTrace {
    /// The path as written (`appointment.patientName`, `OBR-25`, a template).
    pub path: String,
    /// The raw value found there (absent: nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<TraceValue>,
}

/// One stage of a source with filtered alternatives.
#[derive(Clone, PartialEq, Serialize)]
pub struct StageTrace {
    /// Its source.
    pub source: SourceTrace,
    /// Its filters.
    pub steps: Vec<StepTrace>,
    /// Whether it was tried (stages after the winner are not).
    pub tried: bool,
}

/// One filter step.
#[derive(Clone, PartialEq, Serialize)]
pub struct StepTrace {
    /// The filter as written (`trim`, `{table: priority}`).
    pub filter: String,
    /// Its result (absent: no value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<TraceValue>,
    /// For a table: the lookup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<TableHit>,
}

/// A code table lookup.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct TableHit {
    /// The table.
    pub table: String,
    /// The key looked up.
    pub key: String,
    /// Whether the table has it.
    pub hit: bool,
    /// For a miss: what the table's policy did (`default`, `pass_through`, `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// A condition and how it was decided.
#[derive(Clone, PartialEq, Serialize)]
pub struct CondTrace {
    /// The test as written (`appointment.startTime present: true`).
    pub test: String,
    /// The value tested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<TraceValue>,
    /// Whether it held.
    pub result: bool,
    /// The parts of `any`, `all`, `not`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<CondTrace>,
}

impl fmt::Debug for Trace {
    /// Rules and targets only: values are PHI.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("mapping", &self.mapping)
            .field("fields", &self.fields)
            .finish()
    }
}

impl fmt::Debug for FieldTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldTrace")
            .field("target", &self.target)
            .field("segment", &self.segment)
            .field("rule", &self.rule)
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl Trace {
    /// The entries for one output field (`PID-5.1`, `OBR-24`, `priority`, `note[0].text`):
    /// every rule whose target is that field or starts with it.
    pub fn field(&self, target: &str) -> Vec<&FieldTrace> {
        self.fields
            .iter()
            .filter(|f| {
                f.target == target
                    || f.target.starts_with(&format!("{target}."))
                    || f.target.starts_with(&format!("{target}["))
            })
            .collect()
    }

    /// The trace as text for a terminal: one block per field, values quoted. Holds PHI.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for f in &self.fields {
            let at = match (&f.segment, f.group) {
                (Some(s), _) => format!("{} in {s}", f.target),
                (None, Some(g)) => format!("{} (group {g})", f.target),
                (None, None) => f.target.clone(),
            };
            let outcome = match (f.outcome, &f.value) {
                (Outcome::Written, Some(v)) => format!("= {v:?}"),
                (Outcome::Written, None) => "written".into(),
                (Outcome::Empty, _) => "(no value: nothing written)".into(),
                (Outcome::Skipped, _) => "(skipped: `when` did not hold)".into(),
            };
            out.push_str(&format!("{at} {outcome}\n  rule {}\n", f.rule));
            if let Some(w) = &f.when {
                render_cond(&mut out, w, 2, "when");
            }
            if let Some(s) = &f.source {
                render_source(&mut out, s, 2);
            }
            for s in &f.steps {
                render_step(&mut out, s, 2);
            }
        }
        out
    }
}

fn tv(v: &Option<TraceValue>) -> String {
    match v {
        None => "(absent)".into(),
        Some(TraceValue::One(s)) => format!("{s:?}"),
        Some(TraceValue::Many(items)) => format!("{items:?}"),
    }
}

fn render_cond(out: &mut String, c: &CondTrace, indent: usize, label: &str) {
    let pad = " ".repeat(indent);
    let value = if c.parts.is_empty() {
        format!(" (value {})", tv(&c.value))
    } else {
        String::new()
    };
    out.push_str(&format!("{pad}{label} {}{value}: {}\n", c.test, c.result));
    for p in &c.parts {
        render_cond(out, p, indent + 2, "-");
    }
}

fn render_source(out: &mut String, s: &SourceTrace, indent: usize) {
    let pad = " ".repeat(indent);
    match s {
        SourceTrace::Constant { value } => out.push_str(&format!("{pad}value {value:?}\n")),
        SourceTrace::Alternatives { alternatives, won } => {
            for (i, a) in alternatives.iter().enumerate() {
                let mark = if Some(i) == *won { " <- used" } else { "" };
                out.push_str(&format!("{pad}from {} = {}{mark}\n", a.path, tv(&a.raw)));
            }
        }
        SourceTrace::Stages { stages, won } => {
            for (i, st) in stages.iter().enumerate() {
                let mark = if Some(i) == *won {
                    " <- used"
                } else if !st.tried {
                    " (not tried)"
                } else {
                    ""
                };
                out.push_str(&format!("{pad}alternative {}{mark}\n", i + 1));
                render_source(out, &st.source, indent + 2);
                for step in &st.steps {
                    render_step(out, step, indent + 2);
                }
            }
        }
    }
}

fn render_step(out: &mut String, s: &StepTrace, indent: usize) {
    let pad = " ".repeat(indent);
    let table = match &s.table {
        Some(t) if t.hit => format!(" (table {}: {:?} found)", t.table, t.key),
        Some(t) => format!(
            " (table {}: {:?} not found, {})",
            t.table,
            t.key,
            t.policy.as_deref().unwrap_or("")
        ),
        None => String::new(),
    };
    out.push_str(&format!(
        "{pad}| {} -> {}{table}\n",
        s.filter,
        tv(&s.result)
    ));
}

/// How a filter is written in a mapping file.
pub fn describe_filter(f: &Filter, tables: &[super::filters::Table]) -> String {
    let time = |t: &TimeOut| match t {
        TimeOut::Instant => "instant",
        TimeOut::Offset => "offset",
        TimeOut::Hl7 => "hl7",
        TimeOut::Date => "date",
        TimeOut::Hl7Date => "hl7_date",
    };
    match f {
        Filter::Trim => "trim".into(),
        Filter::Upper => "upper".into(),
        Filter::Lower => "lower".into(),
        Filter::Required => "required".into(),
        Filter::Default(d) => format!("{{default: {d}}}"),
        Filter::Table(i) => format!("{{table: {}}}", tables[*i].name),
        Filter::Prefix(p) => format!("{{prefix: {p:?}}}"),
        Filter::Suffix(p) => format!("{{suffix: {p:?}}}"),
        Filter::Join(s) => format!("{{join: {s:?}}}"),
        Filter::Split(s) => format!("{{split: {s:?}}}"),
        Filter::First => "first".into(),
        Filter::Rank(o) => format!("{{rank: [{}]}}", o.join(", ")),
        Filter::SiteTime(t) => format!("{{site_time: {}}}", time(t)),
        Filter::Instant(t) => format!("{{instant: {}}}", time(t)),
        Filter::Hl7Time(t) => format!("{{hl7_time: {}}}", time(t)),
        Filter::Date(t) => format!("{{date: {}}}", time(t)),
        Filter::SiteTimeEnd(t) => format!("{{site_time_end: {}}}", time(t)),
        Filter::Name(p) => format!("{{name: {}}}", part_name(*p)),
        Filter::Hl7Name(k) => format!(
            "{{hl7_name: {}}}",
            match k {
                super::filters::Hl7NameKind::Xpn => "xpn",
                super::filters::Hl7NameKind::Xcn => "xcn",
            }
        ),
        Filter::Base64Decode => "base64_decode".into(),
        Filter::SingleLine => "single_line".into(),
        Filter::Hl7MaxLength(n) => format!("{{hl7_max_length: {n}}}"),
    }
}

fn part_name(p: super::filters::NamePart) -> &'static str {
    use super::filters::NamePart;
    match p {
        NamePart::Family => "family",
        NamePart::Given => "given",
        NamePart::Middle => "middle",
        NamePart::Prefix => "prefix",
        NamePart::Suffix => "suffix",
        NamePart::Text => "text",
    }
}

/// What the evaluator knows while it records.
#[derive(Debug, Default)]
pub struct TraceBuilder {
    /// The entries so far.
    pub fields: Vec<FieldTrace>,
    /// HL7: the segment being written and its number in the message.
    pub segment: Option<(String, usize)>,
    /// FHIR: the contained resource being written.
    pub contained: Option<String>,
    /// ORU: the group being read.
    pub group: Option<usize>,
}

impl<'a> Env<'a> {
    /// The trace recorded so far (and stops recording).
    pub(super) fn take_trace(&mut self) -> Option<TraceBuilder> {
        self.trace.take()
    }

    /// Notes the HL7 segment being written (its id and number among its kind in a row).
    pub(super) fn set_trace_segment(&mut self, id: &str, n: usize) {
        if let Some(t) = &mut self.trace {
            t.segment = Some((id.to_string(), n));
        }
    }

    /// Notes the contained resource being written.
    pub(super) fn set_trace_contained(&mut self, id: Option<&str>) {
        if let Some(t) = &mut self.trace {
            t.contained = id.map(str::to_string);
        }
    }

    /// Notes the ORDER_OBSERVATION group being read.
    pub(super) fn set_trace_group(&mut self, group: usize) {
        if let Some(t) = &mut self.trace {
            t.group = Some(group);
        }
    }

    fn target_text(&self, rule: RuleId, dest: Dest, out: &Sink<'a>) -> String {
        let plan = self.plan;
        match dest {
            Dest::Fhir(path, _) => {
                let mut s = String::new();
                if let Some(id) = self.trace.as_ref().and_then(|t| t.contained.as_ref()) {
                    s.push('#');
                    s.push_str(id);
                    s.push('/');
                }
                let mut first = true;
                for st in &plan.paths[path as usize] {
                    match *st {
                        FStep::Key(k) => {
                            if !first {
                                s.push('.');
                            }
                            s.push_str(&plan.names[usize::from(k)]);
                        }
                        FStep::Index(i) => s.push_str(&format!("[{i}]")),
                        FStep::Each(level) => s.push_str(&format!(
                            "[{}]",
                            out.each.get(usize::from(level)).copied().unwrap_or(0)
                        )),
                    }
                    first = false;
                }
                s
            }
            Dest::Report(f) => f.name().to_string(),
            Dest::Hl7(CellRef::Each(..)) => {
                let rep = out.each.last().map_or(1, |i| i + 1);
                plan.rules[rule as usize]
                    .at
                    .target
                    .replace("[*]", &format!("[{rep}]"))
            }
            Dest::Hl7(CellRef::Static(_)) => plan.rules[rule as usize].at.target.to_string(),
        }
    }

    fn entry(&self, rule: RuleId, dest: Dest, out: &Sink<'a>, outcome: Outcome) -> FieldTrace {
        let t = self.trace.as_ref();
        FieldTrace {
            target: self.target_text(rule, dest, out),
            segment: t
                .and_then(|t| t.segment.as_ref())
                .map(|(id, n)| format!("{id} #{n}")),
            group: t.and_then(|t| t.group),
            rule: {
                let at = &self.plan.rules[rule as usize].at;
                format!("{}:{}", at.file, at.pos)
            },
            outcome,
            value: None,
            when: None,
            source: None,
            steps: Vec::new(),
        }
    }

    /// Records a rule skipped by its `when`.
    pub(super) fn trace_skip(&mut self, rule: RuleId, dest: Dest, out: &Sink<'a>) {
        let mut e = self.entry(rule, dest, out, Outcome::Skipped);
        e.when = self.plan.rules[rule as usize]
            .when
            .map(|c| self.explain_cond(c));
        if let Some(t) = &mut self.trace {
            t.fields.push(e);
        }
    }

    /// Records a rule that ran.
    pub(super) fn trace_write(
        &mut self,
        rule: RuleId,
        expr: ExprId,
        dest: Dest,
        out: &Sink<'a>,
        written: bool,
    ) {
        let outcome = if written {
            Outcome::Written
        } else {
            Outcome::Empty
        };
        let mut e = self.entry(rule, dest, out, outcome);
        e.value = self.res[expr as usize].val.written().map(str::to_string);
        e.when = self.plan.rules[rule as usize]
            .when
            .map(|c| self.explain_cond(c));
        let (source, steps) = self.explain_value(expr);
        e.source = Some(source);
        e.steps = steps;
        if let Some(t) = &mut self.trace {
            t.fields.push(e);
        }
    }

    /// The source and filter steps of an expression, from what the run kept.
    fn explain_value(&mut self, expr: ExprId) -> (SourceTrace, Vec<StepTrace>) {
        let plan = self.plan;
        let mut steps = Vec::new();
        let mut x = expr;
        loop {
            match &plan.exprs[x as usize] {
                Expr::Filter(f, c) => {
                    let table = match f {
                        Filter::Table(i) => {
                            let t = &plan.tables[*i];
                            match &self.res[*c as usize].val {
                                Val::One(key) if !key.is_empty() => {
                                    let hit = t.get(key).is_some();
                                    Some(TableHit {
                                        table: t.name.clone(),
                                        key: key.to_string(),
                                        hit,
                                        policy: (!hit).then(|| {
                                            match t.policy {
                                                Policy::Default => "default",
                                                Policy::PassThrough => "pass_through",
                                                Policy::Error => "error",
                                            }
                                            .to_string()
                                        }),
                                    })
                                }
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    steps.push(StepTrace {
                        filter: describe_filter(f, &plan.tables),
                        result: value_of(&self.res[x as usize].val),
                        table,
                    });
                    x = *c;
                }
                Expr::NamePart(part, np) => {
                    steps.push(StepTrace {
                        filter: format!("{{name: {}}}", part_name(*part)),
                        result: value_of(&self.res[x as usize].val),
                        table: None,
                    });
                    x = match &plan.exprs[*np as usize] {
                        Expr::NameParse(c) => *c,
                        _ => unreachable!("a name part reads a name split"),
                    };
                }
                _ => break,
            }
        }
        steps.reverse();
        (self.explain_source(x), steps)
    }

    fn explain_source(&mut self, x: ExprId) -> SourceTrace {
        let plan = self.plan;
        match &plan.exprs[x as usize] {
            Expr::Const(c) => SourceTrace::Constant {
                value: c.to_string(),
            },
            Expr::Chain(alts) => {
                let won = self.res[x as usize].aux;
                let alternatives = alts
                    .iter()
                    .map(|a| {
                        // Alternatives after the winner were not needed; they are read here
                        // so the analyst sees what they hold (sources have no side effects).
                        let _ = self.ensure(*a);
                        AltTrace {
                            path: self.label(*a),
                            raw: value_of(&self.res[*a as usize].val),
                        }
                    })
                    .collect();
                SourceTrace::Alternatives {
                    alternatives,
                    won: (won != u32::MAX).then_some(won as usize),
                }
            }
            Expr::Stages(stages) => {
                let won = self.res[x as usize].aux;
                let stages = stages
                    .iter()
                    .enumerate()
                    .map(|(k, st)| {
                        let tried = won == u32::MAX || k as u32 <= won;
                        if tried {
                            let (source, steps) = self.explain_value(*st);
                            StageTrace {
                                source,
                                steps,
                                tried,
                            }
                        } else {
                            let mut y = *st;
                            while let Expr::Filter(_, c) | Expr::NamePart(_, c) =
                                &plan.exprs[y as usize]
                            {
                                y = match &plan.exprs[*c as usize] {
                                    Expr::NameParse(p) => *p,
                                    _ => *c,
                                };
                            }
                            StageTrace {
                                source: SourceTrace::Alternatives {
                                    alternatives: vec![AltTrace {
                                        path: self.label(y),
                                        raw: None,
                                    }],
                                    won: None,
                                },
                                steps: Vec::new(),
                                tried,
                            }
                        }
                    })
                    .collect();
                SourceTrace::Stages {
                    stages,
                    won: (won != u32::MAX).then_some(won as usize),
                }
            }
            _ => {
                let _ = self.ensure(x);
                SourceTrace::Alternatives {
                    alternatives: vec![AltTrace {
                        path: self.label(x),
                        raw: value_of(&self.res[x as usize].val),
                    }],
                    won: self.res[x as usize].val.is_present().then_some(0),
                }
            }
        }
    }

    /// A source expression as written.
    fn label(&self, x: ExprId) -> String {
        let plan = self.plan;
        match &plan.exprs[x as usize] {
            Expr::Chain(alts) => alts
                .iter()
                .map(|a| self.label(*a))
                .collect::<Vec<_>>()
                .join(" | "),
            _ => plan.labels[x as usize]
                .as_deref()
                .unwrap_or("(value)")
                .to_string(),
        }
    }

    /// A condition and how it was decided (evaluated again: conditions are pure).
    pub(super) fn explain_cond(&mut self, c: CondId) -> CondTrace {
        let plan = self.plan;
        let result = self.test(c);
        match &plan.conds[c as usize] {
            CondOp::Any(cs) | CondOp::All(cs) => CondTrace {
                test: if matches!(plan.conds[c as usize], CondOp::Any(_)) {
                    "any".into()
                } else {
                    "all".into()
                },
                value: None,
                result,
                parts: cs.iter().map(|x| self.explain_cond(*x)).collect(),
            },
            CondOp::Not(x) => CondTrace {
                test: "not".into(),
                value: None,
                result,
                parts: vec![self.explain_cond(*x)],
            },
            CondOp::Present(alts, want) => {
                let paths: Vec<String> = alts
                    .iter()
                    .map(|a| match a {
                        PresentAlt::Slot(s) => plan.slot_labels[*s as usize].to_string(),
                        PresentAlt::Many(_, p) => describe_alt(&super::spec::Alt::Json(p.clone())),
                        PresentAlt::Expr(x) => self.label(*x),
                    })
                    .collect();
                let value = alts.iter().find_map(|a| match a {
                    PresentAlt::Slot(s) => self.slot_value(*s),
                    PresentAlt::Expr(x) => {
                        let _ = self.ensure(*x);
                        value_of(&self.res[*x as usize].val)
                    }
                    PresentAlt::Many(..) => None,
                });
                CondTrace {
                    test: format!("{} present: {want}", paths.join(" | ")),
                    value,
                    result,
                    parts: Vec::new(),
                }
            }
            CondOp::InTable(x, t) => {
                let _ = self.ensure(*x);
                CondTrace {
                    test: format!("{} in_table: {}", self.label(*x), plan.tables[*t].name),
                    value: value_of(&self.res[*x as usize].val),
                    result,
                    parts: Vec::new(),
                }
            }
            CondOp::In {
                expr,
                values,
                negate,
                ignore_case,
            } => {
                let _ = self.ensure(*expr);
                CondTrace {
                    test: format!(
                        "{} {} [{}]{}",
                        self.label(*expr),
                        if *negate { "not_in" } else { "in" },
                        values.join(", "),
                        if *ignore_case { " (ignoring case)" } else { "" }
                    ),
                    value: value_of(&self.res[*expr as usize].val),
                    result,
                    parts: Vec::new(),
                }
            }
        }
    }

    fn slot_value(&self, s: SlotId) -> Option<TraceValue> {
        self.slot(s).map(|v| match v {
            super::eval::SlotVal::Json(v) => match super::eval::scalar(v) {
                Some(t) => TraceValue::One(t.into_owned()),
                None => TraceValue::One(v.to_string()),
            },
            super::eval::SlotVal::Text(t) => TraceValue::One(t.to_string()),
        })
    }
}
