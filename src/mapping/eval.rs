//! Runs a [`Plan`] against one input.
//!
//! The input's paths are resolved into slots once ([`Env::new`] walks the plan's trie over
//! the JSON; each `for_each` item walks its own). An expression's value is computed when a
//! rule first needs it and kept, with a stamp saying for which input or item it holds, so a
//! value shared by several rules is computed once. Values borrow from the input and from the
//! plan (constants, table results) unless a filter made new text.
//!
//! A value a code table did not have is counted once for every rule whose value passed
//! through that table — as if each rule had applied its filters on its own — so sharing the
//! work does not change the unmapped counts the outputs report.

use std::borrow::Cow;

use jiff::tz::TimeZone;
use serde_json::Value;

use super::MapError;
use super::fhir::{Prim, Ty};
use super::filters::{self, FilterEnv, FilterError, Val};
use super::names::NameText;
use super::out_fhir::{Leaf, Tree};
use super::out_hl7::{Cell, Cells};
use super::plan::*;
use super::spec::{Alt, JsonPath, Part, Step};
use super::trace::TraceBuilder;
use crate::hl7::Delimiters;
use crate::hl7::er7;
use crate::hl7::escape::unescape;

/// An expression's kept value.
#[derive(Debug, Default)]
pub(super) struct Res<'a> {
    /// The value.
    pub val: Val<'a>,
    /// Head of its list of table misses (index into [`Env::misses`]; 0: none).
    pub misses: u32,
    /// Chains and stages: the alternative that won (`u32::MAX`: none). Name splits: index
    /// into [`Env::names`].
    pub aux: u32,
}

/// One value a table did not have, linked to the misses before it on the same value.
#[derive(Debug)]
pub(super) struct Miss<'a> {
    pub table: u32,
    pub value: Cow<'a, str>,
    pub next: u32,
}

/// What an input slot holds.
#[derive(Debug, Clone, Copy)]
pub enum SlotVal<'a> {
    /// A JSON value.
    Json(&'a Value),
    /// Text given by the caller (the domain of an inbound message).
    Text(&'a str),
}

/// Everything a run reads and keeps.
pub struct Env<'a> {
    pub(super) plan: &'a Plan,
    /// The input document, or `None` when the input is given as named roots.
    input: Option<&'a Value>,
    roots: Vec<(&'a str, SlotVal<'a>)>,
    /// The ORDER_OBSERVATION group being read, for ORU input.
    pub hl7: Option<&'a er7::Scope<'a, 'a>>,
    /// Site zone.
    pub zone: Option<TimeZone>,
    /// Delimiters of the inbound message (default otherwise).
    pub delims: Delimiters,
    slots: Vec<Option<SlotVal<'a>>>,
    pub(super) res: Vec<Res<'a>>,
    stamp: Vec<u32>,
    cval: Vec<bool>,
    cstamp: Vec<u32>,
    /// Current stamp per depth (`gens[d]`: the item bound at depth d).
    gens: Vec<u32>,
    counter: u32,
    /// Items bound by `for_each`, by depth - 1: the item and its 1-based number.
    items: Vec<(&'a Value, usize)>,
    /// `$set_id` of the HL7 segment being written.
    pub set_id: usize,
    pub(super) misses: Vec<Miss<'a>>,
    pub(super) names: Vec<NameText<'a>>,
    /// Values tables did not map, one entry per rule that met them: (table, value).
    pub unmapped: Vec<(u32, Cow<'a, str>)>,
    scratch: Vec<(u32, Cow<'a, str>)>,
    /// Whether values may be moved out of a node read by one consumer only (not while a
    /// trace is recorded, which shows every step).
    pub(super) trace: Option<TraceBuilder>,
}

/// Where rule values are written.
pub struct Sink<'a> {
    /// FHIR resource under construction.
    pub fhir: Tree<'a>,
    /// The object rules write into (the resource, or a contained one).
    pub base: u32,
    /// Array index `[*]` stands for, per FHIR `for_each` level.
    pub each: Vec<usize>,
    /// HL7 segment under construction.
    pub cells: Cells<'a>,
    /// `for_each` levels entered inside the current segment (their values are copied).
    pub nested: u32,
    /// Report fields, indexed by [`super::ReportField`].
    pub report: Vec<Option<String>>,
}

impl<'a> Sink<'a> {
    /// An empty sink.
    pub fn new() -> Sink<'a> {
        Sink {
            fhir: Tree::new(),
            base: 0,
            each: Vec::new(),
            cells: Cells::default(),
            nested: 0,
            report: vec![None; super::ReportField::ALL.len()],
        }
    }
}

impl Default for Sink<'_> {
    fn default() -> Self {
        Sink::new()
    }
}

/// Small numbers as text, so that `$index` and `$set_id` borrow instead of allocating.
const NUMBERS: [&str; 32] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
];

fn number(n: usize) -> Cow<'static, str> {
    match NUMBERS.get(n) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(n.to_string()),
    }
}

impl<'a> Env<'a> {
    /// A run of `plan` over `input` (the Order document).
    pub fn new(plan: &'a Plan, input: &'a Value, zone: Option<TimeZone>) -> Env<'a> {
        let mut env = Env::empty(plan, zone);
        env.input = Some(input);
        walk(&plan.trie, 0, input, &mut env.slots);
        env
    }

    /// A run of `plan` over an input given as named parts (`site`, `config`, `domain`,
    /// `resource`, `read`), so that nothing is copied into one document first.
    pub fn with_roots(
        plan: &'a Plan,
        roots: Vec<(&'a str, SlotVal<'a>)>,
        zone: Option<TimeZone>,
    ) -> Env<'a> {
        let mut env = Env::empty(plan, zone);
        let root = &plan.trie.nodes[0];
        for (k, child) in &root.keys {
            match roots.iter().find(|(n, _)| *n == &**k).map(|r| r.1) {
                Some(SlotVal::Json(v)) => walk(&plan.trie, *child as usize, v, &mut env.slots),
                Some(SlotVal::Text(t)) => {
                    if let Some(s) = plan.trie.nodes[*child as usize].slot {
                        env.slots[s as usize] = Some(SlotVal::Text(t));
                    }
                }
                None => {}
            }
        }
        env.roots = roots;
        env
    }

    fn empty(plan: &'a Plan, zone: Option<TimeZone>) -> Env<'a> {
        let mut env = Env {
            plan,
            input: None,
            roots: Vec::new(),
            hl7: None,
            zone,
            delims: Delimiters::default(),
            slots: vec![None; plan.slots as usize],
            res: Vec::with_capacity(plan.exprs.len()),
            stamp: vec![0; plan.exprs.len()],
            cval: vec![false; plan.conds.len()],
            cstamp: vec![0; plan.conds.len()],
            gens: vec![1; usize::from(plan.max_depth) + 1],
            counter: 1,
            items: Vec::with_capacity(usize::from(plan.max_depth)),
            set_id: 1,
            misses: vec![Miss {
                table: 0,
                value: Cow::Borrowed(""),
                next: 0,
            }],
            names: Vec::new(),
            unmapped: Vec::new(),
            scratch: Vec::new(),
            trace: None,
        };
        env.res.resize_with(plan.exprs.len(), Res::default);
        env
    }

    /// The value at slot `s`, when JSON.
    pub(super) fn slot(&self, s: SlotId) -> Option<SlotVal<'a>> {
        self.slots[s as usize]
    }

    /// Starts recording a trace.
    pub fn record_trace(&mut self) {
        self.trace = Some(TraceBuilder::default());
    }

    /// Binds a `for_each` item at `depth`: its paths are resolved, and every kept value
    /// that depends on that depth or deeper is forgotten.
    fn bind(&mut self, each: &'a EachOp, item: &'a Value, index: usize) {
        let d = usize::from(each.depth);
        self.items.truncate(d - 1);
        self.items.push((item, index));
        for n in &each.trie.nodes {
            if let Some(s) = n.slot {
                self.slots[s as usize] = None;
            }
        }
        walk(&each.trie, 0, item, &mut self.slots);
        for g in &mut self.gens[d..] {
            self.counter += 1;
            *g = self.counter;
        }
    }

    fn unbind(&mut self, each: &EachOp) {
        let d = usize::from(each.depth);
        self.items.truncate(d - 1);
        for g in &mut self.gens[d..] {
            self.counter += 1;
            *g = self.counter;
        }
    }

    fn valid(&self, x: ExprId) -> bool {
        let d = self.plan.expr_depth[x as usize];
        d != VOLATILE && self.stamp[x as usize] == self.gens[usize::from(d)]
    }

    fn set(&mut self, x: ExprId, r: Res<'a>) {
        let d = self.plan.expr_depth[x as usize];
        if d != VOLATILE {
            self.stamp[x as usize] = self.gens[usize::from(d)];
        }
        self.res[x as usize] = r;
    }

    /// The value of `x` (a clone: kept values are shared).
    fn take(&self, x: ExprId) -> Val<'a> {
        self.res[x as usize].val.clone()
    }

    /// The values at a list path.
    fn many(&self, root: Root, p: &'a JsonPath) -> Vec<&'a Value> {
        let start = match root {
            Root::Input => match self.input {
                Some(input) => input.get(&p.root),
                None => self
                    .roots
                    .iter()
                    .find(|(n, _)| *n == p.root)
                    .and_then(|(_, v)| match v {
                        SlotVal::Json(v) => Some(*v),
                        SlotVal::Text(_) => None,
                    }),
            },
            Root::Item(d) => self.items.get(usize::from(d) - 1).map(|i| i.0),
        };
        match start {
            Some(v) => json_walk(v, &p.steps),
            None => Vec::new(),
        }
    }

    /// Computes `x` (and what it needs) unless it is kept.
    pub(super) fn ensure(&mut self, x: ExprId) -> Result<(), FilterError> {
        if self.valid(x) {
            return Ok(());
        }
        let plan = self.plan;
        let r = match &plan.exprs[x as usize] {
            Expr::Slot(s) => Res {
                val: match self.slots[*s as usize] {
                    Some(SlotVal::Json(v)) => match scalar(v) {
                        Some(t) if !t.is_empty() => Val::One(t),
                        _ => Val::None,
                    },
                    Some(SlotVal::Text(t)) if !t.is_empty() => Val::One(Cow::Borrowed(t)),
                    _ => Val::None,
                },
                ..Res::default()
            },
            Expr::Many(root, p) => {
                let vals: Vec<Cow<'a, str>> =
                    self.many(*root, p).into_iter().filter_map(scalar).collect();
                Res {
                    val: if vals.is_empty() {
                        Val::None
                    } else {
                        Val::Many(vals)
                    },
                    ..Res::default()
                }
            }
            Expr::Hl7(h) => Res {
                val: self.hl7_value(h),
                ..Res::default()
            },
            Expr::Const(c) => Res {
                val: Val::One(Cow::Borrowed(c)),
                ..Res::default()
            },
            Expr::Index(d) => Res {
                val: self
                    .items
                    .get(usize::from(*d).wrapping_sub(1))
                    .map_or(Val::None, |i| Val::One(number(i.1))),
                ..Res::default()
            },
            Expr::SetId => Res {
                val: Val::One(number(self.set_id)),
                ..Res::default()
            },
            Expr::Template(parts) => {
                let mut s = String::new();
                let mut placeholders = 0;
                let mut missing = 0;
                for p in parts {
                    match p {
                        TplPart::Text(t) => s.push_str(t),
                        TplPart::Value(c) => {
                            placeholders += 1;
                            self.ensure(*c)?;
                            match &self.res[*c as usize].val {
                                Val::One(v) => s.push_str(v),
                                Val::Many(v) => s.push_str(&v.join(", ")),
                                Val::None => missing += 1,
                            }
                        }
                    }
                }
                let val = if placeholders > 0 && missing == placeholders {
                    Val::None
                } else {
                    let t = s.trim();
                    if t.is_empty() {
                        Val::None
                    } else if t.len() == s.len() {
                        Val::One(Cow::Owned(s))
                    } else {
                        Val::One(Cow::Owned(t.to_string()))
                    }
                };
                Res {
                    val,
                    ..Res::default()
                }
            }
            Expr::Chain(alts) => {
                let mut out = Res {
                    aux: u32::MAX,
                    ..Res::default()
                };
                for (k, a) in alts.iter().enumerate() {
                    self.ensure(*a)?;
                    if self.res[*a as usize].val.is_present() {
                        out.val = self.take(*a);
                        out.misses = self.res[*a as usize].misses;
                        out.aux = k as u32;
                        break;
                    }
                }
                out
            }
            Expr::Stages(stages) => {
                let mut out = Res {
                    aux: u32::MAX,
                    ..Res::default()
                };
                for (k, st) in stages.iter().enumerate() {
                    self.ensure(*st)?;
                    // Every stage tried counts its table misses, as it would on its own.
                    let mut m = self.res[*st as usize].misses;
                    while m != 0 {
                        let (table, value, next) = {
                            let x = &self.misses[m as usize];
                            (x.table, x.value.clone(), x.next)
                        };
                        out.misses = self.push_miss(table, value, out.misses);
                        m = next;
                    }
                    if self.res[*st as usize].val.is_present() {
                        out.val = self.take(*st);
                        out.aux = k as u32;
                        break;
                    }
                }
                out
            }
            Expr::Filter(f, c) => {
                self.ensure(*c)?;
                let input = self.take(*c);
                let child_misses = self.res[*c as usize].misses;
                let tables: &'a [filters::Table] = &plan.tables;
                let mut scratch = std::mem::take(&mut self.scratch);
                let result = {
                    let mut fenv = FilterEnv {
                        tables,
                        zone: self.zone.as_ref(),
                        delimiters: self.delims,
                        misses: &mut scratch,
                    };
                    filters::apply(f, input, &mut fenv)
                };
                let mut misses = child_misses;
                for (t, v) in scratch.drain(..) {
                    misses = self.push_miss(t, v, misses);
                }
                self.scratch = scratch;
                let val = match result {
                    Ok(v) => v,
                    Err(e) => {
                        // The rule that needed this value names it; its misses still count.
                        self.flush_misses(misses);
                        return Err(e);
                    }
                };
                Res {
                    val,
                    misses,
                    aux: 0,
                }
            }
            Expr::NameParse(c) => {
                self.ensure(*c)?;
                let parsed = match &self.res[*c as usize].val {
                    Val::One(Cow::Borrowed(s)) => super::names::parts(s),
                    Val::One(Cow::Owned(s)) => owned_name(super::names::parts(s)),
                    _ => NameText::default(),
                };
                self.names.push(parsed);
                Res {
                    val: Val::None,
                    misses: self.res[*c as usize].misses,
                    aux: (self.names.len() - 1) as u32,
                }
            }
            Expr::NamePart(part, np) => {
                self.ensure(*np)?;
                let src = &self.res[*np as usize];
                let n = &self.names[src.aux as usize];
                let v = match part {
                    filters::NamePart::Family => &n.family,
                    filters::NamePart::Given => &n.given,
                    filters::NamePart::Middle => &n.middle,
                    filters::NamePart::Prefix => &n.prefix,
                    filters::NamePart::Suffix => &n.suffix,
                    filters::NamePart::Text => &n.text,
                };
                // A name filter on an absent value gives no value.
                let parent = match &plan.exprs[*np as usize] {
                    Expr::NameParse(c) => *c,
                    _ => unreachable!("a name part reads a name split"),
                };
                let val = if matches!(self.res[parent as usize].val, Val::One(_)) {
                    Val::One(v.clone())
                } else {
                    Val::None
                };
                Res {
                    val,
                    misses: src.misses,
                    aux: 0,
                }
            }
        };
        self.set(x, r);
        Ok(())
    }

    fn push_miss(&mut self, table: u32, value: Cow<'a, str>, next: u32) -> u32 {
        self.misses.push(Miss { table, value, next });
        (self.misses.len() - 1) as u32
    }

    /// Counts the misses of list `head` for one rule.
    fn flush_misses(&mut self, mut head: u32) {
        while head != 0 {
            let m = &self.misses[head as usize];
            self.unmapped.push((m.table, m.value.clone()));
            head = m.next;
        }
    }

    /// Whether condition `c` holds.
    pub(super) fn test(&mut self, c: CondId) -> bool {
        let d = self.plan.cond_depth[c as usize];
        if d != VOLATILE && self.cstamp[c as usize] == self.gens[usize::from(d)] {
            return self.cval[c as usize];
        }
        let plan = self.plan;
        let v = match &plan.conds[c as usize] {
            CondOp::Any(cs) => cs.iter().any(|x| self.test(*x)),
            CondOp::All(cs) => cs.iter().all(|x| self.test(*x)),
            CondOp::Not(x) => !self.test(*x),
            CondOp::Present(alts, want) => {
                let mut any = false;
                for a in alts {
                    let p = match a {
                        PresentAlt::Slot(s) => match self.slots[*s as usize] {
                            Some(SlotVal::Json(v)) => present(v),
                            Some(SlotVal::Text(t)) => !t.trim().is_empty(),
                            None => false,
                        },
                        PresentAlt::Many(root, p) => self.many(*root, p).into_iter().any(present),
                        PresentAlt::Expr(x) => {
                            self.ensure(*x).is_ok() && self.res[*x as usize].val.is_present()
                        }
                    };
                    if p {
                        any = true;
                        break;
                    }
                }
                any == *want
            }
            CondOp::InTable(x, t) => {
                self.ensure(*x).is_ok()
                    && match &self.res[*x as usize].val {
                        Val::One(s) => plan.tables[*t].get(s).is_some(),
                        _ => false,
                    }
            }
            CondOp::In {
                expr,
                values,
                negate,
                ignore_case,
            } => {
                let same = |v: &str, s: &str| {
                    if *ignore_case {
                        s.trim().chars().flat_map(char::to_lowercase).eq(v.chars())
                    } else {
                        v == s
                    }
                };
                let hit = self.ensure(*expr).is_ok()
                    && match &self.res[*expr as usize].val {
                        Val::One(s) => values.iter().any(|v| same(v, s)),
                        Val::Many(items) => items.iter().any(|s| values.iter().any(|v| same(v, s))),
                        Val::None => false,
                    };
                hit != *negate
            }
        };
        if d != VOLATILE {
            self.cstamp[c as usize] = self.gens[usize::from(d)];
        }
        self.cval[c as usize] = v;
        v
    }

    fn rule_error(&self, rule: RuleId, e: FilterError) -> MapError {
        let info = &self.plan.rules[rule as usize];
        match e {
            FilterError::Required => MapError::Required {
                rule: info.at.to_string(),
                sources: info.sources.clone(),
            },
            FilterError::Unmapped { table, value } => MapError::Unmapped {
                rule: info.at.to_string(),
                table,
                sources: info.sources.clone(),
                value,
            },
            FilterError::Invalid(reason) => MapError::Value {
                rule: info.at.to_string(),
                reason,
            },
        }
    }

    /// Runs `ops` into `out`; returns whether anything was written.
    pub fn run(&mut self, ops: &'a [Op], out: &mut Sink<'a>) -> Result<bool, MapError> {
        let mut wrote = false;
        for op in ops {
            match op {
                Op::Write {
                    rule,
                    when,
                    expr,
                    dest,
                    pre,
                } => {
                    if let Some(c) = when
                        && !self.test(*c)
                    {
                        if self.trace.is_some() {
                            self.trace_skip(*rule, *dest_ref(dest), out);
                        }
                        continue;
                    }
                    if *pre {
                        wrote = true;
                        if self.trace.is_some() {
                            self.ensure(*expr).map_err(|e| self.rule_error(*rule, e))?;
                            self.trace_write(*rule, *expr, *dest_ref(dest), out, true);
                        }
                        continue;
                    }
                    if let Err(e) = self.ensure(*expr) {
                        return Err(self.rule_error(*rule, e));
                    }
                    self.flush_misses(self.res[*expr as usize].misses);
                    let written = self.write(*rule, *expr, dest, out)?;
                    if self.trace.is_some() {
                        self.trace_write(*rule, *expr, *dest_ref(dest), out, written);
                    }
                    wrote |= written;
                }
                Op::Each { rule, when, each } => {
                    if let Some(c) = when
                        && !self.test(*c)
                    {
                        continue;
                    }
                    let _ = rule;
                    wrote |= self.each(each, out, |env, out| {
                        let body: &'a [Op] = &each.body;
                        env.run(body, out)
                    })?;
                }
            }
        }
        Ok(wrote)
    }

    /// Runs `body` once per item of `each`'s list that passes its `where`; returns whether
    /// any item wrote something. FHIR items append to their array after what is there.
    pub(super) fn each(
        &mut self,
        each: &'a EachOp,
        out: &mut Sink<'a>,
        mut body: impl FnMut(&mut Env<'a>, &mut Sink<'a>) -> Result<bool, MapError>,
    ) -> Result<bool, MapError> {
        let items = self.many(each.root, &each.path);
        let base = match each.array {
            Some(p) => out
                .fhir
                .array_len(out.base, &self.plan.paths[p as usize], &out.each),
            None => 0,
        };
        let mut k = 0;
        let mut passed = 0;
        let mut wrote = false;
        out.nested += 1;
        for item in items {
            self.bind(each, item, passed + 1);
            if let Some(w) = each.filter
                && !self.test(w)
            {
                continue;
            }
            passed += 1;
            out.each.push(base + k);
            let r = body(self, out);
            out.each.pop();
            if r? {
                k += 1;
                wrote = true;
            }
        }
        out.nested -= 1;
        self.unbind(each);
        Ok(wrote)
    }

    /// Writes the value of `expr` to `dest`; false when there is none.
    fn write(
        &mut self,
        rule: RuleId,
        expr: ExprId,
        dest: &Dest,
        out: &mut Sink<'a>,
    ) -> Result<bool, MapError> {
        let val = &self.res[expr as usize].val;
        let Some(text) = val.written() else {
            return Ok(false);
        };
        match dest {
            Dest::Hl7(CellRef::Static(i)) => {
                let cell = if out.nested == 0 {
                    Cell::Expr(expr)
                } else {
                    Cell::Text(owned_like(val, text))
                };
                out.cells.set(*i, cell);
            }
            Dest::Hl7(CellRef::Each(f, c, s)) => {
                let rep = out.each.last().map_or(1, |i| *i as u16 + 1);
                let v = owned_like(val, text);
                out.cells.set_extra(
                    Pos4 {
                        field: *f,
                        rep,
                        comp: *c,
                        sub: *s,
                    },
                    v,
                );
            }
            Dest::Report(f) => out.report[*f as usize] = Some(text.to_string()),
            Dest::Fhir(path, ty) => {
                let leaf = match ty {
                    Ty::Prim(Prim::Bool, _) => match text.to_lowercase().as_str() {
                        "true" => Leaf::Bool(true),
                        "false" => Leaf::Bool(false),
                        _ => return Err(self.type_err(rule, "a boolean (true/false)")),
                    },
                    Ty::Prim(Prim::Int, _) => match text.trim().parse::<i64>() {
                        Ok(n) => Leaf::Num(n.to_string()),
                        Err(_) => return Err(self.type_err(rule, "an integer")),
                    },
                    Ty::Prim(Prim::Decimal, _) => match text.trim().parse::<serde_json::Number>() {
                        Ok(n) => Leaf::Num(n.to_string()),
                        Err(_) => return Err(self.type_err(rule, "a decimal")),
                    },
                    _ => Leaf::Str(owned_like(val, text)),
                };
                out.fhir
                    .write(out.base, &self.plan.paths[*path as usize], &out.each, leaf);
            }
        }
        Ok(true)
    }

    fn type_err(&self, rule: RuleId, what: &str) -> MapError {
        MapError::Value {
            rule: self.plan.rules[rule as usize].at.to_string(),
            reason: format!("the value is not {what}"),
        }
    }

    /// The text of an expression cell when rendering.
    pub(super) fn cell_text(&self, x: ExprId) -> Option<&str> {
        self.res[x as usize].val.written()
    }

    /// Values of an inbound HL7 source in the current group.
    fn hl7_value(&self, h: &'a super::spec::Hl7Source) -> Val<'a> {
        let Some(scope) = self.hl7 else {
            return Val::None;
        };
        let d = scope.message().delimiters();
        let mut out: Vec<Cow<'a, str>> = Vec::new();
        let mut n = 0u16;
        scope.for_each_with_id(&h.path.segment, &mut |seg| {
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
                    return;
                }
            } else {
                n += 1;
                if let er7::Index::Nth(k) = h.path.occurrence
                    && k != n
                {
                    return;
                }
            }
            let field_level = h.path.component.is_none();
            let coded = field_level && is_coded_obx5(&seg, h.path.field, &d);
            let mut found = false;
            seg.visit(&h.path, &mut |raw| {
                found = true;
                if coded {
                    out.push(Cow::Owned(coded_text(raw, &d)));
                    return;
                }
                let has_reps = raw.as_bytes().contains(&d.repetition);
                out.push(if field_level && h.path.repetition.is_none() && has_reps {
                    // Repetitions of a text field are lines.
                    Cow::Owned(
                        raw.split(d.repetition as char)
                            .map(|r| unescape(r, &d))
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )
                } else {
                    unescape(raw, &d)
                });
            });
            if !found && h.is_many() {
                out.push(Cow::Borrowed(""));
            }
        });
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
}

/// The destination of a write, for traces.
fn dest_ref(d: &Dest) -> &Dest {
    d
}

/// `text` (the written part of `val`) as a value that outlives the kept one.
fn owned_like<'a>(val: &Val<'a>, text: &str) -> Cow<'a, str> {
    match val {
        Val::One(Cow::Borrowed(b)) => Cow::Borrowed(b),
        Val::Many(items) => match items.iter().find(|s| !s.is_empty()) {
            Some(Cow::Borrowed(b)) => Cow::Borrowed(b),
            _ => Cow::Owned(text.to_string()),
        },
        _ => Cow::Owned(text.to_string()),
    }
}

fn owned_name(n: NameText<'_>) -> NameText<'static> {
    NameText {
        family: Cow::Owned(n.family.into_owned()),
        given: Cow::Owned(n.given.into_owned()),
        middle: Cow::Owned(n.middle.into_owned()),
        prefix: Cow::Owned(n.prefix.into_owned()),
        suffix: Cow::Owned(n.suffix.into_owned()),
        text: Cow::Owned(n.text.into_owned()),
    }
}

/// Fills the slots of `trie` below node `at` from `v`: one pass over each object reached.
fn walk<'a>(trie: &Trie, at: usize, v: &'a Value, slots: &mut [Option<SlotVal<'a>>]) {
    let node = &trie.nodes[at];
    if let Some(s) = node.slot
        && !v.is_null()
    {
        slots[s as usize] = Some(SlotVal::Json(v));
    }
    if !node.keys.is_empty()
        && let Value::Object(m) = v
    {
        if m.len() <= node.keys.len() {
            for (k, x) in m {
                if let Ok(i) = node.keys.binary_search_by(|(n, _)| (**n).cmp(k.as_str())) {
                    walk(trie, node.keys[i].1 as usize, x, slots);
                }
            }
        } else {
            for (k, child) in &node.keys {
                if let Some(x) = m.get(&**k) {
                    walk(trie, *child as usize, x, slots);
                }
            }
        }
    }
    if !node.indexes.is_empty()
        && let Value::Array(a) = v
    {
        for (i, child) in &node.indexes {
            if let Some(x) = a.get(*i) {
                walk(trie, *child as usize, x, slots);
            }
        }
    }
}

/// The values at `steps` from `start` (items of lists, or the one value), nulls left out.
fn json_walk<'a>(start: &'a Value, steps: &[Step]) -> Vec<&'a Value> {
    let mut cur: Vec<&'a Value> = vec![start];
    for st in steps {
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

/// Whether a JSON value counts as present for `present: true`: objects and non-empty lists
/// do; a blank string does not (there is nothing to send).
fn present(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.trim().is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Null => false,
        _ => true,
    }
}

/// Text of a scalar JSON value; `None` for null, objects and arrays.
pub fn scalar(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(true) => Some(Cow::Borrowed("true")),
        Value::Bool(false) => Some(Cow::Borrowed("false")),
        _ => None,
    }
}

/// A source chain as an analyst would write it (`OBR-25 | OBX[OBX-11 not in (W, D)]-11`),
/// for error messages: paths only, never values.
pub fn describe_chain(alts: &[Alt]) -> String {
    alts.iter()
        .map(describe_alt)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// One alternative as written.
pub fn describe_alt(a: &Alt) -> String {
    let values = |v: &[String]| v.join(", ");
    let op_text = |op: &super::spec::Op, v: &[String]| match op {
        super::spec::Op::Eq => format!("= {}", values(v)),
        super::spec::Op::Ne => format!("!= {}", values(v)),
        super::spec::Op::In => format!("in ({})", values(v)),
        super::spec::Op::NotIn => format!("not in ({})", values(v)),
    };
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
