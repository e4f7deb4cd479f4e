//! Pass 4 of 4, **lower**: a checked mapping into the [`Plan`] the evaluator runs.
//!
//! Equal expressions become one node (hash-consing), so work shared by several rules is
//! done once per input: `appointment.patientName` through `single_line` is computed once
//! and split once for the five PID-5 components; the site-local start time read by ORC-7,
//! OBR-7, OBR-27 and OBR-36 is converted once. Conditions are shared the same way. Input
//! paths become slots of a trie; HL7 targets become cells sorted by position, and a constant
//! written by exactly one rule of a segment is escaped here, once, instead of per message.

use std::collections::HashMap;
use std::sync::Arc;

use super::fhir::TStep;
use super::filters::{Filter, Table};
use super::hl7::Rep;
use super::ir::{self, Body, Cond, Mapping, Rule, RuleKind, Source, Target, Test};
use super::output_check::Hl7Limits;
use super::plan::*;
use super::spec::{Alt, JsonPath, Part, Step};
use crate::hl7::Delimiters;
use crate::hl7::escape::{LineBreaks, escape_into};

struct Lowerer {
    exprs: Vec<Expr>,
    labels: Vec<Option<Box<str>>>,
    slot_labels: Vec<Box<str>>,
    expr_depth: Vec<u8>,
    expr_many: Vec<bool>,
    expr_ids: HashMap<Expr, ExprId>,
    conds: Vec<CondOp>,
    cond_depth: Vec<u8>,
    cond_ids: HashMap<CondOp, CondId>,
    slots: u32,
    /// Tries being built: index 0 the input's, then one per open `for_each` depth.
    tries: Vec<Trie>,
    rules: Vec<RuleInfo>,
    names: Vec<Box<str>>,
    paths: Vec<Vec<FStep>>,
    max_depth: u8,
    line_breaks: LineBreaks,
}

/// Names bound by `for_each` where rules are lowered, innermost last: (alias, depth).
type Aliases = Vec<(String, u8)>;

/// Lowers a checked mapping.
pub fn lower(m: &Mapping) -> Plan {
    let line_breaks = match &m.body {
        Body::Hl7 { line_breaks, .. } => *line_breaks,
        _ => LineBreaks::Hex,
    };
    let mut l = Lowerer {
        exprs: Vec::new(),
        labels: Vec::new(),
        slot_labels: Vec::new(),
        expr_depth: Vec::new(),
        expr_many: Vec::new(),
        expr_ids: HashMap::new(),
        conds: Vec::new(),
        cond_depth: Vec::new(),
        cond_ids: HashMap::new(),
        slots: 0,
        tries: vec![Trie::default()],
        rules: Vec::new(),
        names: vec!["resourceType".into(), "id".into(), "contained".into()],
        paths: Vec::new(),
        max_depth: 0,
        line_breaks,
    };
    l.tries[0].nodes.push(TrieNode::default());
    let output = match &m.body {
        Body::Fhir {
            resource,
            rules,
            contained,
            ..
        } => {
            let contained = contained
                .iter()
                .map(|c| {
                    let when = c.when.as_ref().map(|w| l.cond(w, &Vec::new()));
                    let ops = l.block(rules_of(&c.rules), &Vec::new(), 0, None);
                    ContainedOp {
                        resource: c.resource.clone().into(),
                        id: c.id.clone().into(),
                        when,
                        ops,
                    }
                })
                .collect();
            let ops = l.block(rules_of(rules), &Vec::new(), 0, None);
            Output::Fhir {
                resource: resource.clone().into(),
                contained,
                ops,
            }
        }
        Body::Report { rules } => Output::Report {
            ops: l.block(rules_of(rules), &Vec::new(), 0, None),
        },
        Body::Hl7 {
            message,
            version,
            segments,
            line_breaks,
            custom,
            ..
        } => {
            let segments = segments
                .iter()
                .map(|s| l.segment(s, message, version))
                .collect();
            Output::Hl7 {
                message: message.clone().into(),
                version: version.clone().into(),
                line_breaks: *line_breaks,
                segments,
                limits: Arc::new(Hl7Limits::new(message, version, custom)),
            }
        }
    };
    let trie = std::mem::take(&mut l.tries[0]);
    Plan {
        exprs: l.exprs,
        labels: l.labels,
        slot_labels: l.slot_labels,
        expr_depth: l.expr_depth,
        conds: l.conds,
        cond_depth: l.cond_depth,
        slots: l.slots,
        trie,
        rules: l.rules,
        names: l.names,
        paths: l.paths,
        max_depth: l.max_depth,
        tables: Arc::from(m.tables.clone().into_boxed_slice()) as Arc<[Table]>,
        output,
    }
}

fn rules_of(rules: &[Rule]) -> &[Rule] {
    rules
}

impl Lowerer {
    fn expr(&mut self, e: Expr, depth: u8, many: bool) -> ExprId {
        if let Some(&id) = self.expr_ids.get(&e) {
            return id;
        }
        let id = self.exprs.len() as ExprId;
        self.exprs.push(e.clone());
        self.labels.push(None);
        self.expr_depth.push(depth);
        self.expr_many.push(many);
        self.expr_ids.insert(e, id);
        id
    }

    fn depth(&self, x: ExprId) -> u8 {
        self.expr_depth[x as usize]
    }

    fn cond_node(&mut self, c: CondOp, depth: u8) -> CondId {
        if let Some(&id) = self.cond_ids.get(&c) {
            return id;
        }
        let id = self.conds.len() as CondId;
        self.conds.push(c.clone());
        self.cond_depth.push(depth);
        self.cond_ids.insert(c, id);
        id
    }

    /// A slot for `steps` under `root` (the input, or the item at a depth).
    fn slot(&mut self, root: Root, steps: &[TrieKey], label: &str) -> SlotId {
        let t = match root {
            Root::Input => 0,
            Root::Item(d) => usize::from(d),
        };
        let trie = &mut self.tries[t];
        let mut at = 0usize;
        for s in steps {
            let next = match s {
                TrieKey::Key(k) => trie.nodes[at]
                    .keys
                    .iter()
                    .find(|(n, _)| **n == **k)
                    .map(|x| x.1),
                TrieKey::Index(i) => trie.nodes[at]
                    .indexes
                    .iter()
                    .find(|(n, _)| n == i)
                    .map(|x| x.1),
            };
            at = match next {
                Some(n) => n as usize,
                None => {
                    let n = trie.nodes.len() as u32;
                    trie.nodes.push(TrieNode::default());
                    match s {
                        TrieKey::Key(k) => {
                            let keys = &mut trie.nodes[at].keys;
                            let i = keys.partition_point(|(x, _)| **x < **k);
                            keys.insert(i, (k.clone(), n));
                        }
                        TrieKey::Index(i) => trie.nodes[at].indexes.push((*i, n)),
                    }
                    n as usize
                }
            };
        }
        match trie.nodes[at].slot {
            Some(s) => s,
            None => {
                let s = self.slots;
                self.slots += 1;
                trie.nodes[at].slot = Some(s);
                self.slot_labels.push(label.into());
                s
            }
        }
    }

    /// Where a JSON path starts, and its steps from there.
    fn root_of<'p>(&self, p: &'p JsonPath, aliases: &Aliases) -> (Root, Vec<TrieKey>, &'p [Step]) {
        match aliases.iter().rev().find(|(a, _)| *a == p.root) {
            Some((_, d)) => (Root::Item(*d), Vec::new(), &p.steps),
            None => (
                Root::Input,
                vec![TrieKey::Key(p.root.clone().into())],
                &p.steps,
            ),
        }
    }

    fn root_depth(root: Root) -> u8 {
        match root {
            Root::Input => 0,
            Root::Item(d) => d,
        }
    }

    /// The expression of one source alternative.
    fn alt(&mut self, a: &Alt, aliases: &Aliases, depth: u8) -> ExprId {
        let id = self.alt_expr(a, aliases, depth);
        if self.labels[id as usize].is_none() {
            self.labels[id as usize] = Some(super::eval::describe_alt(a).into());
        }
        id
    }

    fn alt_expr(&mut self, a: &Alt, aliases: &Aliases, depth: u8) -> ExprId {
        match a {
            Alt::Json(p) => {
                let (root, mut keys, steps) = self.root_of(p, aliases);
                let d = Self::root_depth(root);
                if p.is_many() {
                    let rel = JsonPath {
                        root: String::new(),
                        steps: steps.to_vec(),
                    };
                    let rel = match root {
                        Root::Input => JsonPath {
                            root: p.root.clone(),
                            steps: steps.to_vec(),
                        },
                        Root::Item(_) => rel,
                    };
                    return self.expr(Expr::Many(root, rel), d, true);
                }
                for s in steps {
                    keys.push(match s {
                        Step::Key(k) => TrieKey::Key(k.clone().into()),
                        Step::Index(i) => TrieKey::Index(*i),
                        Step::All | Step::Filter { .. } => unreachable!("single-valued path"),
                    });
                }
                let slot = self.slot(root, &keys, &super::eval::describe_alt(a));
                self.expr(Expr::Slot(slot), d, false)
            }
            Alt::Hl7(h) => self.expr(Expr::Hl7(h.clone()), 0, h.is_many()),
            Alt::Index => self.expr(Expr::Index(depth), depth, false),
            Alt::SetId => self.expr(Expr::SetId, VOLATILE, false),
            Alt::Template(parts) => {
                let mut out = Vec::new();
                let mut d = 0u8;
                for p in parts {
                    match p {
                        Part::Text(t) => out.push(TplPart::Text(t.clone().into())),
                        Part::Value(alts) => {
                            let c = self.chain(alts, aliases, depth);
                            d = d.max(self.depth(c));
                            out.push(TplPart::Value(c));
                        }
                    }
                }
                self.expr(Expr::Template(out), d, false)
            }
        }
    }

    fn chain(&mut self, alts: &[Alt], aliases: &Aliases, depth: u8) -> ExprId {
        let ids: Vec<ExprId> = alts.iter().map(|a| self.alt(a, aliases, depth)).collect();
        if ids.len() == 1 {
            return ids[0];
        }
        let d = ids.iter().map(|&x| self.depth(x)).max().unwrap_or(0);
        let many = ids.iter().any(|&x| self.expr_many[x as usize]);
        self.expr(Expr::Chain(ids), d, many)
    }

    fn filters(&mut self, mut x: ExprId, filters: &[Filter]) -> ExprId {
        for f in filters {
            let d = self.depth(x);
            let many = self.expr_many[x as usize];
            x = match f {
                Filter::Name(part) if !many => {
                    let parsed = self.expr(Expr::NameParse(x), d, false);
                    self.expr(Expr::NamePart(*part, parsed), d, false)
                }
                _ => {
                    let many = match f {
                        Filter::Join(_) | Filter::First | Filter::Rank(_) => false,
                        Filter::Split(_) => true,
                        _ => many,
                    };
                    self.expr(Expr::Filter(f.clone(), x), d, many)
                }
            };
        }
        x
    }

    fn source(&mut self, s: &Source, aliases: &Aliases, depth: u8) -> ExprId {
        match s {
            Source::Const(c) => self.expr(Expr::Const(c.clone().into()), 0, false),
            Source::Chain(alts) => self.chain(alts, aliases, depth),
            Source::Stages(stages) => {
                let ids: Vec<ExprId> = stages
                    .iter()
                    .map(|st| {
                        let c = self.chain(&st.chain, aliases, depth);
                        self.filters(c, &st.filters)
                    })
                    .collect();
                let d = ids.iter().map(|&x| self.depth(x)).max().unwrap_or(0);
                let many = ids.iter().any(|&x| self.expr_many[x as usize]);
                self.expr(Expr::Stages(ids), d, many)
            }
        }
    }

    fn cond(&mut self, c: &Cond, aliases: &Aliases) -> CondId {
        let depth = aliases.last().map_or(0, |a| a.1);
        let (op, d) = match &c.test {
            Test::Any(cs) | Test::All(cs) => {
                let ids: Vec<CondId> = cs.iter().map(|x| self.cond(x, aliases)).collect();
                let d = ids
                    .iter()
                    .map(|&i| self.cond_depth[i as usize])
                    .max()
                    .unwrap_or(0);
                let op = if matches!(c.test, Test::Any(_)) {
                    CondOp::Any(ids)
                } else {
                    CondOp::All(ids)
                };
                (op, d)
            }
            Test::Not(inner) => {
                let i = self.cond(inner, aliases);
                (CondOp::Not(i), self.cond_depth[i as usize])
            }
            Test::Present(want) => {
                let mut alts = Vec::new();
                let mut d = 0u8;
                for a in &c.chain {
                    let pa = match a {
                        Alt::Json(p) if p.is_many() => {
                            let x = self.alt(a, aliases, depth);
                            let Expr::Many(root, rel) = self.exprs[x as usize].clone() else {
                                unreachable!("a list path lowers to Many")
                            };
                            d = d.max(self.depth(x));
                            PresentAlt::Many(root, rel)
                        }
                        Alt::Json(_) => {
                            let x = self.alt(a, aliases, depth);
                            d = d.max(self.depth(x));
                            let Expr::Slot(s) = self.exprs[x as usize] else {
                                unreachable!("a single path lowers to a slot")
                            };
                            PresentAlt::Slot(s)
                        }
                        other => {
                            let x = self.alt(other, aliases, depth);
                            d = d.max(self.depth(x));
                            PresentAlt::Expr(x)
                        }
                    };
                    alts.push(pa);
                }
                (CondOp::Present(alts, *want), d)
            }
            Test::InTable(t) => {
                let x = self.chain(&c.chain, aliases, depth);
                (CondOp::InTable(x, *t), self.depth(x))
            }
            Test::In(values) | Test::NotIn(values) => {
                let x = self.chain(&c.chain, aliases, depth);
                let values = values
                    .iter()
                    .map(|v| {
                        if c.ignore_case {
                            v.trim().to_lowercase().into()
                        } else {
                            v.clone().into()
                        }
                    })
                    .collect();
                (
                    CondOp::In {
                        expr: x,
                        values,
                        negate: matches!(c.test, Test::NotIn(_)),
                        ignore_case: c.ignore_case,
                    },
                    self.depth(x),
                )
            }
        };
        self.cond_node(op, d)
    }

    fn name(&mut self, n: &str) -> u16 {
        match self.names.iter().position(|x| **x == *n) {
            Some(i) => i as u16,
            None => {
                self.names.push(n.into());
                (self.names.len() - 1) as u16
            }
        }
    }

    fn fhir_path(&mut self, steps: &[TStep]) -> u32 {
        let mut out = Vec::with_capacity(steps.len());
        let mut level = 0u8;
        for s in steps {
            out.push(match s {
                TStep::Key(k) => FStep::Key(self.name(k)),
                TStep::Index(i) => FStep::Index(*i as u32),
                TStep::Each => {
                    level += 1;
                    FStep::Each(level - 1)
                }
            });
        }
        match self.paths.iter().position(|p| *p == out) {
            Some(i) => i as u32,
            None => {
                self.paths.push(out);
                (self.paths.len() - 1) as u32
            }
        }
    }

    fn rule_info(&mut self, r: &Rule, when: Option<CondId>) -> RuleId {
        let (source, filters, sources) = match &r.kind {
            RuleKind::Value(v) => {
                let sources = match &v.source {
                    Source::Chain(alts) => super::eval::describe_chain(alts),
                    Source::Stages(stages) => stages
                        .iter()
                        .map(|s| super::eval::describe_chain(&s.chain))
                        .collect::<Vec<_>>()
                        .join(" | "),
                    Source::Const(_) => String::new(),
                };
                (Some(v.source.clone()), v.filters.clone(), sources)
            }
            RuleKind::Each(e) => (
                None,
                Vec::new(),
                super::eval::describe_chain(&[Alt::Json(e.over.clone())]),
            ),
        };
        self.rules.push(RuleInfo {
            at: r.at.clone(),
            sources,
            source,
            filters,
            when,
        });
        (self.rules.len() - 1) as RuleId
    }

    /// Lowers rules; HL7 cells are looked up in `cells` (static positions of the segment).
    fn block(
        &mut self,
        rules: &[Rule],
        aliases: &Aliases,
        depth: u8,
        cells: Option<&[Pos4]>,
    ) -> Vec<Op> {
        let mut ops = Vec::with_capacity(rules.len());
        for r in rules {
            let when = r.when.as_ref().map(|w| self.cond(w, aliases));
            let rule = self.rule_info(r, when);
            match &r.kind {
                RuleKind::Value(v) => {
                    let src = self.source(&v.source, aliases, depth);
                    let expr = self.filters(src, &v.filters);
                    let dest = match &v.target {
                        Target::Fhir(t) => Dest::Fhir(self.fhir_path(&t.steps), t.ty),
                        Target::Report(f) => Dest::Report(*f),
                        Target::Hl7(t) => Dest::Hl7(match t.rep {
                            Rep::Each => CellRef::Each(t.field, t.component, t.subcomponent),
                            Rep::Nth(n) => {
                                let p = Pos4 {
                                    field: t.field,
                                    rep: n,
                                    comp: t.component,
                                    sub: t.subcomponent,
                                };
                                let i = cells
                                    .and_then(|c| c.iter().position(|x| *x == p))
                                    .expect("every static target has a cell");
                                CellRef::Static(i as u16)
                            }
                        }),
                    };
                    ops.push(Op::Write {
                        rule,
                        when,
                        expr,
                        dest,
                        pre: false,
                    });
                }
                RuleKind::Each(e) => {
                    let each = self.each(
                        &e.over,
                        &e.alias,
                        e.filter.as_ref(),
                        aliases,
                        depth,
                        |l, inner, d| {
                            let array = e.array.as_ref().map(|steps| l.fhir_path(steps));
                            (l.block(&e.rules, inner, d, cells), array)
                        },
                    );
                    ops.push(Op::Each {
                        rule,
                        when,
                        each: Box::new(each),
                    });
                }
            }
        }
        ops
    }

    /// A repeat over `over`, its body lowered by `body` with the item bound one level deeper.
    fn each(
        &mut self,
        over: &JsonPath,
        alias: &str,
        filter: Option<&Cond>,
        aliases: &Aliases,
        depth: u8,
        body: impl FnOnce(&mut Lowerer, &Aliases, u8) -> (Vec<Op>, Option<u32>),
    ) -> EachOp {
        let (root, _, steps) = self.root_of(over, aliases);
        let path = match root {
            Root::Input => over.clone(),
            Root::Item(_) => JsonPath {
                root: String::new(),
                steps: steps.to_vec(),
            },
        };
        let d = depth + 1;
        self.max_depth = self.max_depth.max(d);
        // A fresh trie for this level's item paths.
        let saved = if self.tries.len() > usize::from(d) {
            Some(std::mem::take(&mut self.tries[usize::from(d)]))
        } else {
            self.tries.push(Trie::default());
            None
        };
        self.tries[usize::from(d)].nodes.push(TrieNode::default());
        let mut inner = aliases.clone();
        inner.push((alias.to_string(), d));
        let filter = filter.map(|f| self.cond(f, &inner));
        let (ops, array) = body(self, &inner, d);
        let trie = match saved {
            Some(s) => std::mem::replace(&mut self.tries[usize::from(d)], s),
            None => self.tries.pop().expect("pushed"),
        };
        EachOp {
            root,
            path,
            depth: d,
            trie,
            filter,
            array,
            body: ops,
        }
    }

    fn segment(&mut self, s: &ir::Segment, message: &str, version: &str) -> SegmentOp {
        let mut cells: Vec<Pos4> = Vec::new();
        fn collect(rules: &[Rule], out: &mut Vec<Pos4>) {
            for r in rules {
                match &r.kind {
                    RuleKind::Value(v) => {
                        if let Target::Hl7(t) = &v.target
                            && let Rep::Nth(n) = t.rep
                        {
                            out.push(Pos4 {
                                field: t.field,
                                rep: n,
                                comp: t.component,
                                sub: t.subcomponent,
                            });
                        }
                    }
                    RuleKind::Each(e) => collect(&e.rules, out),
                }
            }
        }
        collect(&s.rules, &mut cells);
        let msh = s.id == "MSH";
        let field = |f: u16, c: u16| Pos4 {
            field: f,
            rep: 1,
            comp: c,
            sub: 1,
        };
        let (code, trigger) = message.split_once('^').unwrap_or((message, ""));
        let generated: Vec<(Pos4, CellInit)> = if msh {
            let mut g = vec![
                (field(7, 1), CellInit::Now),
                (field(9, 1), CellInit::Text(self.escaped(code))),
                (field(9, 2), CellInit::Text(self.escaped(trigger))),
                (field(10, 1), CellInit::ControlId),
                (field(11, 1), CellInit::Text("P".into())),
                (field(12, 1), CellInit::Text(self.escaped(version))),
            ];
            // MSH-9.3 (message structure) exists from v2.3.1.
            if version != "2.3" {
                g.push((
                    field(9, 3),
                    CellInit::Text(self.escaped(&format!("{code}_{trigger}"))),
                ));
            }
            g
        } else {
            Vec::new()
        };
        cells.extend(generated.iter().map(|(p, _)| *p));
        cells.sort();
        cells.dedup();
        let mut init: Vec<CellInit> = cells
            .iter()
            .map(|p| {
                generated
                    .iter()
                    .find(|(g, _)| g == p)
                    .map_or(CellInit::Empty, |(_, i)| i.clone())
            })
            .collect();
        let (mut each, mut ops) = match &s.each {
            Some((over, alias)) => {
                let e = self.each(
                    over,
                    alias,
                    s.filter.as_ref(),
                    &Vec::new(),
                    0,
                    |l, inner, d| (l.block(&s.rules, inner, d, Some(&cells)), None),
                );
                (Some(Box::new(e)), Vec::new())
            }
            None => (None, self.block(&s.rules, &Vec::new(), 0, Some(&cells))),
        };
        let when = s.when.as_ref().map(|w| self.cond(w, &Vec::new()));
        // A constant written unconditionally by the only rule writing its cell (and no
        // generated value there) is escaped once, here.
        let body = each.as_ref().map_or(&ops, |e| &e.body);
        let mut writers = vec![0usize; cells.len()];
        count_writers(body, &mut writers);
        let mut prefilled = Vec::new();
        for op in body {
            if let Op::Write {
                when: None,
                expr,
                dest: Dest::Hl7(CellRef::Static(c)),
                ..
            } = op
                && let Expr::Const(text) = &self.exprs[*expr as usize]
                && writers[usize::from(*c)] == 1
                && matches!(init[usize::from(*c)], CellInit::Empty)
            {
                prefilled.push((*c, text.clone()));
            }
        }
        for (c, text) in &prefilled {
            init[usize::from(*c)] = CellInit::Text(self.escaped(text));
        }
        let body = match &mut each {
            Some(e) => &mut e.body,
            None => &mut ops,
        };
        for op in body.iter_mut() {
            if let Op::Write {
                dest: Dest::Hl7(CellRef::Static(c)),
                pre,
                when: None,
                ..
            } = op
                && prefilled.iter().any(|(p, _)| p == c)
            {
                *pre = true;
            }
        }
        SegmentOp {
            id: s.id.clone().into(),
            at: s.at.clone(),
            when,
            each,
            cells,
            init,
            ops,
        }
    }

    fn escaped(&self, text: &str) -> Box<str> {
        let mut out = String::with_capacity(text.len());
        escape_into(&mut out, text, &Delimiters::default(), self.line_breaks);
        out.into()
    }
}

fn count_writers(ops: &[Op], writers: &mut [usize]) {
    for op in ops {
        match op {
            Op::Write {
                dest: Dest::Hl7(CellRef::Static(c)),
                ..
            } => writers[usize::from(*c)] += 1,
            Op::Write { .. } => {}
            Op::Each { each, .. } => count_writers(&each.body, writers),
        }
    }
}

/// A step of a trie path.
#[derive(Debug, Clone)]
enum TrieKey {
    Key(Box<str>),
    Index(usize),
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::plan::{CellInit, Expr, Op, Output};

    fn plan(name: &str) -> super::super::plan::Plan {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
        let (mut c, _) =
            super::super::compile::compile_set(&[(dir.join(format!("{name}.yaml")), text)])
                .unwrap();
        c.remove(0).plan
    }

    #[test]
    fn shared_work_is_one_node() {
        let p = plan("orm_o01");
        // The patient's name is split once for PID-5.1 to PID-5.5; the doctor's once for
        // PV1-8, ORC-12 and OBR-16.
        let splits = p
            .exprs
            .iter()
            .filter(|e| matches!(e, Expr::NameParse(_)))
            .count();
        let parts = p
            .exprs
            .iter()
            .filter(|e| matches!(e, Expr::NamePart(..)))
            .count();
        assert!(
            splits <= 6 && parts >= 2 * splits,
            "{splits} splits, {parts} parts"
        );
        // The site-local start time (ORC-7.4, OBR-7, OBR-27.4, OBR-36) is one node.
        let site_times = p
            .exprs
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Expr::Filter(super::super::filters::Filter::SiteTime(_), _)
                )
            })
            .count();
        assert_eq!(site_times, 1);
        // Every input path is one slot, however many rules read it.
        assert!(p.slots < 50, "{} slots for orm_o01's paths", p.slots);
        // Paths from the input's root have one slot each; each of the two NTE loops over
        // `comments[*]` (as `c`) resolves its item's paths once per item.
        let (items, input): (Vec<&str>, Vec<&str>) = p
            .slot_labels
            .iter()
            .map(|s| &**s)
            .partition(|l| l.starts_with("c."));
        let mut dedup = input.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), input.len(), "{input:?}");
        for l in &items {
            assert_eq!(items.iter().filter(|x| *x == l).count(), 2, "{items:?}");
        }
    }

    #[test]
    fn constants_of_one_rule_are_escaped_at_load() {
        let p = plan("orm_o01");
        let Output::Hl7 { segments, .. } = &p.output else {
            panic!("hl7")
        };
        let pid = segments.iter().find(|s| &*s.id == "PID").unwrap();
        // PID-1 `1` and PID-3.5 `MR` are text already; their ops say so.
        let pre: Vec<&CellInit> = pid
            .init
            .iter()
            .filter(|i| matches!(i, CellInit::Text(_)))
            .collect();
        assert_eq!(pre.len(), 2, "{:?}", pid.init);
        assert_eq!(
            pid.ops
                .iter()
                .filter(|o| matches!(o, Op::Write { pre: true, .. }))
                .count(),
            2
        );
        // MSH starts with its generated fields.
        let msh = &segments[0];
        assert!(msh.init.iter().any(|i| matches!(i, CellInit::Now)));
        assert!(msh.init.iter().any(|i| matches!(i, CellInit::ControlId)));
    }
}
