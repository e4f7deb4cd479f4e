//! Pass 3 of 4, **check**: a resolved mapping's parts fit together — constants have their
//! element's type, coded elements with a required binding only receive valid codes (from a
//! constant or through a table), required elements and report fields are set, a list does
//! not flow into a single value, a target is not set twice, segments follow the message
//! structure, `not_sent` does not list a field a rule reads, and every LOINC code the
//! mapping can send carries its check digit (a code shared by keys that are not synonyms is
//! a warning).

use std::collections::HashMap;

use super::ReportField;
use super::codes;
use super::diag::{Diags, Stage};
use super::fhir::{self, Prim, Ty};
use super::filters::{Filter, Policy};
use super::hl7;
use super::ir::*;
use super::yaml::Pos;

struct Cx<'m, 'd> {
    m: &'m Mapping,
    diags: &'d mut Diags,
    /// Set-twice keys seen: key → (position, conditional).
    targets: HashMap<String, (Pos, bool)>,
    coded: Vec<CodedTarget>,
    used_as_loinc: Vec<bool>,
}

/// A rule writing a code, or a coding system, for the LOINC checks.
#[derive(Debug, Clone)]
struct CodedTarget {
    /// The coding the target belongs to (`code.coding[1]`, `OBR-4@line:col#4`).
    coding: String,
    /// The last table of its filters.
    table: Option<usize>,
    /// A constant source and its position.
    constant: Option<(String, Pos)>,
    /// Whether it sets the coding's system rather than its code.
    is_system: bool,
}

impl Cx<'_, '_> {
    fn err(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .error(Stage::Check, &self.m.file, pos, message, hint);
    }
}

/// Checks `m`; problems go to `diags`, warnings are returned.
pub fn check(m: &Mapping, diags: &mut Diags) -> Vec<super::Diagnostic> {
    let mut cx = Cx {
        m,
        diags,
        targets: HashMap::new(),
        coded: Vec::new(),
        used_as_loinc: vec![false; m.tables.len()],
    };
    match &m.body {
        Body::Fhir {
            resource,
            rules,
            contained,
            rules_pos,
        } => {
            let known = fhir::resource_elements(resource).is_some();
            rules_check(&mut cx, rules, resource, "");
            for c in contained {
                rules_check(
                    &mut cx,
                    &c.rules,
                    &c.resource,
                    &format!("contained#{}/", c.id),
                );
            }
            if known {
                for req in fhir::required_elements(resource) {
                    let set = m.written.iter().any(|k| {
                        k == req
                            || k.starts_with(&format!("{req}."))
                            || k.starts_with(&format!("{req}["))
                    });
                    if !set {
                        cx.err(
                            *rules_pos,
                            format!("{resource}.{req} is required but no rule sets it"),
                            format!(
                                "add a rule with `target: {req}{}`",
                                if *req == "subject" {
                                    ".reference (or .display)"
                                } else {
                                    ""
                                }
                            ),
                        );
                    }
                }
            }
        }
        Body::Report { rules } => {
            rules_check(&mut cx, rules, "", "");
            for req in [
                ReportField::AppointmentId,
                ReportField::ReportText,
                ReportField::ReportStatus,
            ] {
                if !m.written.iter().any(|k| k == req.name()) {
                    cx.err(
                        m.root,
                        format!(
                            "report field `{}` is required but no rule sets it",
                            req.name()
                        ),
                        format!("add a rule with `target: {}`", req.name()),
                    );
                }
            }
        }
        Body::Hl7 {
            message,
            segments,
            custom,
            segments_pos,
            structure_known,
            ..
        } => {
            for s in segments {
                rules_check(&mut cx, &s.rules, "", "");
            }
            if *structure_known {
                structure(&mut cx, message, segments, custom, *segments_pos);
            }
        }
    }
    not_sent(&mut cx);
    check_codes(&mut cx)
}

fn rules_check(cx: &mut Cx<'_, '_>, rules: &[Rule], resource: &str, ns: &str) {
    for r in rules {
        match &r.kind {
            RuleKind::Each(e) => rules_check(cx, &e.rules, resource, ns),
            RuleKind::Value(v) => {
                if v.many {
                    cx.err(
                        r.at.pos,
                        format!(
                            "type mismatch: the source of `{}` yields a list but the target holds one value",
                            r.at.target
                        ),
                        "add a `join: \"\\n\"` or `first` filter, or use `for_each`",
                    );
                }
                value_type(cx, r, v, resource);
                note_coded_target(cx, v, ns);
                let conditional = r.when.is_some();
                match cx.targets.get(&v.key) {
                    Some(&(first, first_cond)) if !(conditional && first_cond) => {
                        cx.err(
                            v.target_pos,
                            format!(
                                "target `{}` is set twice (first at line {})",
                                r.at.target, first.line
                            ),
                            "remove one rule, or give both a `when` so that they exclude each other",
                        );
                    }
                    _ => {
                        cx.targets
                            .insert(v.key.clone(), (v.target_pos, conditional));
                    }
                }
            }
        }
    }
}

fn last_table(filters: &[Filter]) -> Option<usize> {
    filters.iter().rev().find_map(|f| match f {
        Filter::Table(i) => Some(*i),
        _ => None,
    })
}

fn value_type(cx: &mut Cx<'_, '_>, r: &Rule, v: &ValueRule, resource: &str) {
    let Target::Fhir(ft) = &v.target else {
        if let (Target::Report(ReportField::ReportStatus), Source::Const(c)) =
            (&v.target, &v.source)
            && !matches!(c.to_lowercase().as_str(), "preliminary" | "final")
        {
            cx.err(
                r.at.pos,
                "reportStatus must be `preliminary` or `final`",
                "map other codes with a table, e.g. `{table: result_status}`",
            );
        }
        return;
    };
    let pos = v.value_pos;
    // The last table filter decides the codes a table-fed target can receive.
    let element = ft.text.rsplit('.').next().unwrap_or("");
    if !ft.text.contains('.')
        && let Some(codes) = fhir::required_binding(resource, element)
    {
        if let Source::Const(c) = &v.source
            && v.filters.is_empty()
            && !codes.contains(&c.as_str())
        {
            cx.err(
                pos,
                format!("`{c}` is not a valid {resource}.{element} code"),
                format!("one of: {}", codes.join(", ")),
            );
        }
        if let Some(i) = last_table(&v.filters) {
            let t = &cx.m.tables[i];
            let meta = &cx.m.table_meta[i];
            // Each bad code is reported at its own line, in the table's own file. An empty
            // value means "no value" (the rule writes nothing), not a code.
            let mut bad: Vec<(std::path::PathBuf, Pos, String)> = meta
                .values
                .iter()
                .filter(|(_, v, _)| !v.is_empty() && !codes.contains(&v.as_str()))
                .map(|(k, v, p)| (meta.file.clone(), *p, format!("`{v}` (for `{k}`)")))
                .collect();
            if let Some(d) = &t.default
                && !codes.contains(&d.as_str())
            {
                let (file, at) = meta
                    .default_at
                    .clone()
                    .unwrap_or((cx.m.file.clone(), meta.pos));
                bad.push((file, at, format!("the default `{d}`")));
            }
            let tname = t.name.clone();
            let policy = t.policy;
            let tpos = meta.pos;
            let used_by = format!("{} line {}", cx.m.fname, pos.line);
            for (file, at, what) in bad {
                cx.diags.error(
                    Stage::Check,
                    &file,
                    at,
                    format!("table `{tname}`: {what} is not a valid {resource}.{element} code (the table feeds it at {used_by})"),
                    format!("allowed: {}", codes.join(", ")),
                );
            }
            if policy == Policy::PassThrough {
                cx.err(tpos, format!("table `{tname}` feeds the coded element {resource}.{element} with `unmapped: pass_through`"), "an unmapped value would make an invalid resource: use `unmapped: default` or `error`");
            }
        }
    }
    if let (Ty::Prim(p, tn), Source::Const(c)) = (ft.ty, &v.source) {
        let ok = match p {
            Prim::Bool => matches!(c.as_str(), "true" | "false"),
            Prim::Int => c.parse::<i64>().is_ok(),
            Prim::Decimal => c.parse::<f64>().is_ok(),
            Prim::Str => true,
        };
        if !ok && v.filters.is_empty() {
            cx.err(
                pos,
                format!("type mismatch: `{}` is a {tn}, the value is not", ft.text),
                match p {
                    Prim::Bool => "write `true` or `false`",
                    _ => "write a number",
                },
            );
        }
    }
}

/// Remembers rules that write a coding's code or system, for [`check_codes`].
fn note_coded_target(cx: &mut Cx<'_, '_>, v: &ValueRule, ns: &str) {
    let stage_table = || match &v.source {
        Source::Stages(st) => st.iter().find_map(|s| last_table(&s.filters)),
        _ => None,
    };
    let constant = match &v.source {
        Source::Const(c) if v.filters.is_empty() => Some((c.clone(), v.value_pos)),
        _ => None,
    };
    let (coding, is_system) = match &v.target {
        Target::Fhir(_) => {
            let full = format!("{ns}{}", v.shown);
            match full.rsplit_once('.') {
                Some((c, "code")) => (c.to_string(), false),
                Some((c, "system")) => (c.to_string(), true),
                _ => return,
            }
        }
        Target::Hl7(t) => {
            // CE/CWE triplets: identifier at components 1 and 4, coding system at 3 and 6.
            let at = v.key.rsplit_once('#').map_or("", |x| x.1);
            let (first, is_system) = match t.component % 3 {
                1 => (t.component, false),
                0 => (t.component - 2, true),
                _ => return,
            };
            (
                format!(
                    "{}-{}[{:?}]@{at}#{first}.{}",
                    t.segment, t.field, t.rep, t.subcomponent
                ),
                is_system,
            )
        }
        Target::Report(_) => return,
    };
    cx.coded.push(CodedTarget {
        coding,
        table: last_table(&v.filters).or_else(stage_table),
        constant,
        is_system,
    });
}

/// The LOINC checks: a table is LOINC when it says `system: LN` (or `http://loinc.org`)
/// or when a rule puts its values in a coding whose system is LOINC; a constant is LOINC
/// when its coding's system is. Every such code must have its right check digit; a code
/// given to several keys that are not declared `synonyms` is a warning.
fn check_codes(cx: &mut Cx<'_, '_>) -> Vec<super::Diagnostic> {
    let systems: HashMap<String, String> = cx
        .coded
        .iter()
        .filter(|c| c.is_system)
        .filter_map(|c| {
            c.constant
                .as_ref()
                .map(|(v, _)| (c.coding.clone(), v.clone()))
        })
        .collect();
    let coded = std::mem::take(&mut cx.coded);
    for c in coded.iter().filter(|c| !c.is_system) {
        let Some(system) = systems.get(&c.coding) else {
            continue;
        };
        if !codes::is_loinc_system(system) {
            continue;
        }
        if let Some(t) = c.table {
            cx.used_as_loinc[t] = true;
        }
        if let Some((v, pos)) = &c.constant
            && let Err(e) = codes::check_loinc(v)
        {
            cx.err(
                *pos,
                format!("`{v}` is not a valid LOINC code: {e}"),
                "it is checked because its coding's system is LOINC (`LN` or `http://loinc.org`)",
            );
        }
    }
    let mut warnings = Vec::new();
    for (i, meta) in cx.m.table_meta.iter().enumerate() {
        let declared = meta.system.as_deref().is_some_and(codes::is_loinc_system);
        if !declared && !cx.used_as_loinc[i] {
            continue;
        }
        let name = &cx.m.tables[i].name;
        for (key, value, pos) in &meta.values {
            if value.trim().is_empty() {
                continue;
            }
            if let Err(e) = codes::check_loinc(value) {
                cx.diags.error(
                    Stage::Check,
                    &meta.file,
                    *pos,
                    format!(
                        "table `{name}`: `{value}` (for `{key}`) is not a valid LOINC code: {e}"
                    ),
                    "LOINC codes are checked because the table says `system: LN` or feeds a LOINC coding",
                );
            }
        }
        let pairs: Vec<(String, String)> = meta
            .values
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        for (code, keys) in codes::shared_codes(&pairs, &meta.synonyms, cx.m.tables[i].ignore_case)
        {
            let pos = meta
                .values
                .iter()
                .filter(|(_, v, _)| v.trim() == code)
                .nth(1)
                .map_or(meta.pos, |x| x.2);
            warnings.push(super::Diagnostic {
                file: meta.file.clone(),
                pos,
                message: format!(
                    "table `{name}`: LOINC code `{code}` is the value of {} keys ({}), which may name different exams, body parts or modalities",
                    keys.len(),
                    keys.join(", ")
                ),
                hint: Some(
                    "check the code names each of them; if the keys mean the same, list them together under `synonyms`"
                        .into(),
                ),
            });
        }
    }
    warnings
}

/// `not_sent` must not list a field some rule reads.
fn not_sent(cx: &mut Cx<'_, '_>) {
    for (key, _, pos) in &cx.m.not_sent {
        if let Some(r) = cx.m.reads.iter().find(|r| {
            *r == key || r.starts_with(&format!("{key}.")) || r.starts_with(&format!("{key}["))
        }) {
            let shown = key.clone();
            let r = r.clone();
            cx.err(
                *pos,
                format!("`{shown}` is listed under `not_sent` but a rule reads `{r}`"),
                "remove it from `not_sent`, or remove the rule",
            );
        }
    }
}

/// Segments follow the message structure (custom segments at their declared place) and
/// include the required ones; every declared custom segment is written somewhere.
fn structure(
    cx: &mut Cx<'_, '_>,
    message: &str,
    segments: &[Segment],
    custom: &[CustomSegment],
    segs_pos: Pos,
) {
    let Some((order, required)) = hl7::structure(message) else {
        return;
    };
    let order = with_custom(order, custom);
    let list: Vec<&str> = segments.iter().map(|s| s.id.as_str()).collect();
    if list.first() != Some(&"MSH") {
        cx.err(
            segs_pos,
            "the first segment must be MSH",
            "add `- segment: MSH` first (MSH-7, MSH-9, MSH-10 and MSH-12 are generated)",
        );
    }
    if let Err(k) = hl7::check_order(&list, &order) {
        let k = misplaced_custom(&list, &order, custom).unwrap_or(k);
        let hint = match custom.iter().find(|c| c.id == segments[k].id) {
            Some(c) => format!(
                "{} is declared `after: {}`; {message} order: {}",
                c.id,
                c.after.as_deref().unwrap_or(""),
                order.join(" ")
            ),
            None => format!("{message} order: {}", order.join(" ")),
        };
        cx.err(
            segments[k].at.pos,
            format!("segment {} is out of order for {message}", segments[k].id),
            hint,
        );
    }
    for r in required {
        if !list.contains(r) {
            cx.err(
                segs_pos,
                format!("{message} requires a {r} segment"),
                format!("add `- segment: {r}`"),
            );
        }
    }
    for c in custom.iter().filter(|c| c.after.is_some()) {
        if !list.contains(&c.id.as_str()) {
            cx.err(
                c.pos,
                format!(
                    "custom segment {} is declared but no segment entry writes it",
                    c.id
                ),
                format!(
                    "add `- segment: {}` after {} under `segments`",
                    c.id,
                    c.after.as_deref().unwrap_or("")
                ),
            );
        }
    }
}

/// A custom segment written before its place pushes the standard segments after it out of
/// order: name that custom segment (the root cause) rather than the first standard one.
fn misplaced_custom(list: &[&str], order: &[&str], custom: &[CustomSegment]) -> Option<usize> {
    let is_custom = |id: &str| custom.iter().any(|c| c.id == id);
    let standard: Vec<usize> = (0..list.len()).filter(|&i| !is_custom(list[i])).collect();
    let ids = |with: Option<usize>| -> Vec<&str> {
        (0..list.len())
            .filter(|i| standard.contains(i) || Some(*i) == with)
            .map(|i| list[i])
            .collect()
    };
    hl7::check_order(&ids(None), order).ok()?;
    (0..list.len())
        .filter(|&i| is_custom(list[i]))
        .find(|&i| hl7::check_order(&ids(Some(i)), order).is_err())
}

/// The message structure with each custom segment right after the segment it follows.
pub fn with_custom<'a>(order: &[&'a str], custom: &'a [CustomSegment]) -> Vec<&'a str> {
    let mut out: Vec<&str> = order.to_vec();
    for c in custom {
        if let Some(after) = &c.after
            && let Some(i) = out.iter().position(|s| *s == after.as_str())
        {
            out.insert(i + 1, c.id.as_str());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn errors(text: &str) -> Vec<String> {
        match super::super::compile::compile_set(&[(
            PathBuf::from("/virtual/m.yaml"),
            text.to_string(),
        )]) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn bindings_types_and_required_elements() {
        let e = errors(
            "mapping: m\ninput: order\noutput: fhir\nresource: ServiceRequest\nrules:\n  - {target: status, value: activ}\n  - {target: doNotPerform, value: maybe}\n  - {target: subject.display, from: \"comments[*].commentText\"}\n",
        );
        assert!(
            e.iter()
                .any(|x| x
                    .contains("6:29: error: `activ` is not a valid ServiceRequest.status code")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|x| x.contains("type mismatch: `doNotPerform` is a boolean")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|x| x.contains("yields a list but the target holds one value")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|x| x.contains("ServiceRequest.intent is required")),
            "{e:#?}"
        );
    }

    #[test]
    fn a_rule_that_failed_to_resolve_still_counts_as_setting_its_target() {
        // The intent rule has an unknown filter: that is the error, not "intent is required".
        let e = errors(
            "mapping: m\ninput: order\noutput: fhir\nresource: ServiceRequest\nrules:\n  - {target: status, value: active}\n  - {target: intent, value: order, filters: [trimm]}\n  - {target: subject.display, from: appointment.patientName}\n",
        );
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("unknown filter `trimm`"), "{e:#?}");
    }

    #[test]
    fn custom_segments_have_their_place_in_the_structure() {
        let head = "mapping: m\ninput: order\noutput: hl7\nmessage: ORM^O01\ncustom_segments:\n  - {segment: ZDS, after: OBR, fields: [{field: 1, datatype: ST}]}\nsegments:\n  - segment: MSH\n  - segment: PID\n    rules: [{target: PID-3, from: appointment.patientId}]\n";
        let tail = "  - segment: ORC\n    rules: [{target: ORC-1, value: NW}]\n  - segment: OBR\n    rules: [{target: OBR-1, value: \"1\"}]\n";
        let zds = "  - segment: ZDS\n    rules: [{target: ZDS-1, value: x}]\n";
        assert!(errors(&format!("{head}{tail}{zds}")).is_empty());
        let early = head.replace("  - segment: PID", &format!("{zds}  - segment: PID"));
        let e = errors(&format!("{early}{tail}"));
        assert!(
            e.iter().any(|x| x.contains("segment ZDS is out of order")
                && x.contains("declared `after: OBR`")),
            "{e:#?}"
        );
        let e = errors(&format!("{head}{tail}"));
        assert!(
            e.iter().any(
                |x| x.contains("custom segment ZDS is declared but no segment entry writes it")
            ),
            "{e:#?}"
        );
        let e = errors(&format!(
            "{}{tail}{zds}",
            head.replace("after: OBR", "after: NTE")
        ));
        assert!(
            e.iter().any(|x| x.contains("NTE appears more than once")),
            "{e:#?}"
        );
    }
}
