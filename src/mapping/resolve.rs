//! Pass 2 of 4, **resolve**: every name of a parsed mapping file to what it names — the
//! input and output kinds, code tables (and their files), filters and their arguments,
//! source paths against the input's schema (the Order document, the HL7 segments, the
//! DiagnosticReport elements), targets against the output (FHIR elements, HL7 positions
//! down to the sub-component of the field's datatype, report fields), and declared custom
//! segments and fields.
//!
//! A name that does not resolve is reported once, where it is written, with a suggestion
//! ("did you mean …", or the sorted list of what is known). What depends on it is left out
//! rather than reported again: a rule naming a table whose file is broken says nothing more,
//! a mapping whose `input:` or `resource:` is unknown does not report each of its paths.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::ReportField;
use super::diag::{Diags, Stage as DStage};
use super::fhir;
use super::filters::{Filter, Hl7NameKind, NamePart, Policy, Table, TimeOut};
use super::hl7::{self, Rep};
use super::ir::*;
use super::parse::{
    ArgAst, CondAst, CondKind, ContainedAst, FileAst, FilterAst, FromItem, RuleAst, SourceAst,
    TestAst, Text,
};
use super::spec::{self, Alt, InputKind, JsonPath, OutputKind, Part, Step};
use super::yaml::Pos;

/// The resolver's state for one file.
struct Rx<'d> {
    file: std::path::PathBuf,
    fname: Arc<str>,
    diags: &'d mut Diags,
    input: InputKind,
    /// False when `input:` did not resolve: source paths are then not checked.
    input_known: bool,
    output: OutputKind,
    known: HashSet<String>,
    open: Vec<String>,
    tables: Vec<Table>,
    table_meta: Vec<TableMeta>,
    /// Table name → (index, position); `None` for a table whose file is broken.
    table_names: HashMap<String, (Option<usize>, Pos)>,
    reads: Vec<String>,
    uses: Vec<FieldUse>,
    /// Fields read to select list items or segments, not yet attributed to a target.
    selectors: Vec<String>,
    /// Declared custom segments and extra fields (HL7 output).
    custom: Vec<CustomSegment>,
    /// Targets named by a rule (see [`Mapping::written`]).
    written: Vec<String>,
}

/// Where rules are being resolved.
#[derive(Clone)]
struct Scope<'s> {
    resource: &'s str,
    /// False when the resource did not resolve: targets are then not checked.
    resource_known: bool,
    segment: Option<&'s str>,
    version: &'s str,
    prefix: Option<String>,
    /// `for_each` names bound here: (alias, shape key of the items; `None` when the list
    /// did not resolve and the item's fields cannot be checked).
    aliases: Vec<(String, Option<String>)>,
    each_id: Option<Pos>,
    /// Inside a rule-level `for_each` (HL7 `[*]` repetitions are allowed).
    rep_each: bool,
    /// Prefix of target keys, so that a contained resource's targets do not clash with
    /// the container's.
    ns: String,
}

impl Rx<'_> {
    fn err(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .error(DStage::Resolve, &self.file, pos, message, hint);
    }

    /// Structural problems found while resolving (a key missing, a wrong combination).
    fn shape_err(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .error(DStage::Parse, &self.file, pos, message, hint);
    }
}

/// Resolves a parsed file. Problems go to `diags`; what resolved is returned for the
/// checks, which only look at what resolved.
pub fn resolve(file: &Path, ast: &FileAst, diags: &mut Diags) -> Mapping {
    let fname: Arc<str> = file
        .file_name()
        .map_or_else(
            || file.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        )
        .into();
    let mut rx = Rx {
        file: file.to_path_buf(),
        fname: fname.clone(),
        diags,
        input: InputKind::Order,
        input_known: true,
        output: OutputKind::Fhir,
        known: HashSet::new(),
        open: Vec::new(),
        tables: Vec::new(),
        table_meta: Vec::new(),
        table_names: HashMap::new(),
        reads: Vec::new(),
        uses: Vec::new(),
        selectors: Vec::new(),
        custom: Vec::new(),
        written: Vec::new(),
    };
    let name = match &ast.mapping {
        Some(t) => t.val.clone(),
        None => {
            rx.shape_err(
                ast.root,
                "missing `mapping:` (the mapping's name)",
                "add e.g. `mapping: service_request`",
            );
            String::new()
        }
    };
    let input = match ast.input.as_ref().map(|t| (t.pos, t.val.as_str())) {
        Some((_, "order")) => InputKind::Order,
        Some((_, "oru")) => InputKind::Oru,
        Some((_, "diagnostic_report")) => InputKind::DiagnosticReport,
        Some((pos, _)) => {
            rx.err(
                pos,
                "`input` must be order, oru or diagnostic_report",
                "e.g. `input: order`",
            );
            rx.input_known = false;
            InputKind::Order
        }
        None => {
            rx.shape_err(
                ast.root,
                "missing `input:`",
                "add `input: order`, `input: oru` or `input: diagnostic_report`",
            );
            rx.input_known = false;
            InputKind::Order
        }
    };
    rx.input = input;
    let output = match ast.output.as_ref().map(|t| (t.pos, t.val.as_str())) {
        Some((_, "fhir")) => OutputKind::Fhir,
        Some((_, "hl7")) => OutputKind::Hl7,
        Some((_, "report")) => OutputKind::Report,
        Some((pos, _)) => {
            rx.err(
                pos,
                "`output` must be fhir, hl7 or report",
                "e.g. `output: fhir`",
            );
            OutputKind::Fhir
        }
        None => {
            rx.shape_err(
                ast.root,
                "missing `output:`",
                "add `output: fhir`, `output: hl7` or `output: report`",
            );
            OutputKind::Fhir
        }
    };
    rx.output = output;
    if let (InputKind::Order, OutputKind::Report)
    | (InputKind::Oru | InputKind::DiagnosticReport, OutputKind::Fhir | OutputKind::Hl7) =
        (input, output)
        && rx.input_known
    {
        let pos = ast.output.as_ref().map_or(ast.root, |t| t.pos);
        rx.err(
            pos,
            "this input/output pair is not supported",
            "orders map to fhir or hl7; oru and diagnostic_report map to report",
        );
    }
    input_shape(&mut rx);
    for t in &ast.extra_fields {
        match JsonPath::parse(&t.val) {
            Ok(p) => {
                rx.known.insert(p.shape_key());
            }
            Err(e) => rx.err(
                t.pos,
                e,
                "write a path such as `appointment.referralSource`",
            ),
        }
    }
    tables(&mut rx, ast);
    if output != OutputKind::Hl7 {
        // An ORU mapping declares the Z-segments it reads; other kinds have no segments.
        let reads_hl7 = input == InputKind::Oru;
        for (what, pos) in [
            ("segments", ast.segments.as_ref().map(|s| s.pos)),
            (
                "custom_segments",
                ast.custom_segments.as_ref().map(|s| s.pos),
            ),
            ("custom_fields", ast.custom_fields.as_ref().map(|s| s.pos)),
        ] {
            let allowed = reads_hl7 && what == "custom_segments";
            if let Some(pos) = pos
                && !allowed
            {
                rx.shape_err(
                    pos,
                    format!(
                        "`{what}` is only for `output: hl7`{}",
                        if what == "custom_segments" {
                            " (and `input: oru`, to read Z-segments)"
                        } else {
                            ""
                        }
                    ),
                    if what == "segments" {
                        "use `rules`"
                    } else {
                        "remove it"
                    },
                );
            }
        }
        if reads_hl7 {
            custom_declarations(&mut rx, ast, "2.5.1", false);
        }
    }
    if output != OutputKind::Fhir
        && let Some(c) = &ast.contained
    {
        rx.shape_err(
            c.pos,
            "`contained` is only for `output: fhir`",
            "remove it, or map the resource in a FHIR mapping",
        );
    }
    let body = match output {
        OutputKind::Fhir => fhir_body(&mut rx, ast),
        OutputKind::Report => {
            let scope = Scope {
                resource: "",
                resource_known: true,
                segment: None,
                version: "",
                prefix: None,
                aliases: Vec::new(),
                each_id: None,
                rep_each: false,
                ns: String::new(),
            };
            let rules = rules_of(&mut rx, ast.rules.as_ref(), &scope, ast.root);
            Body::Report { rules }
        }
        OutputKind::Hl7 => hl7_body(&mut rx, ast),
    };
    if output == OutputKind::Hl7 && input == InputKind::Order {
        // MSH-7 (now) is written in the site's zone.
        note_zone_read(&mut rx, "MSH-7", None);
    }
    let selectors = std::mem::take(&mut rx.selectors);
    rx.reads.extend(selectors);
    let not_sent = not_sent(&mut rx, ast);
    Mapping {
        name,
        file: file.to_path_buf(),
        fname,
        root: ast.root,
        input,
        output,
        tables: rx.tables,
        table_meta: rx.table_meta,
        body,
        not_sent,
        reads: rx.reads,
        uses: rx.uses,
        written: rx.written,
        warnings: Vec::new(),
    }
}

fn input_shape(rx: &mut Rx<'_>) {
    match rx.input {
        InputKind::Order => {
            let (known, open) = spec::order_shape();
            rx.known = known.into_iter().collect();
            rx.open = open;
        }
        InputKind::Oru => {
            rx.known = ["site", "config", "domain"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            rx.open = vec!["site".into(), "config".into()];
        }
        InputKind::DiagnosticReport => {
            rx.known = ["site", "config", "domain", "resource"]
                .iter()
                .chain(super::fhir_report::READ_FIELDS)
                .map(|s| s.to_string())
                .collect();
            rx.open = vec!["site".into(), "config".into()];
        }
    }
}

fn fhir_body(rx: &mut Rx<'_>, ast: &FileAst) -> Body {
    let (resource, known) = match &ast.resource {
        Some(t) => {
            let ok = fhir::resource_elements(&t.val).is_some();
            if !ok {
                rx.err(
                    t.pos,
                    format!("resource `{}` is not supported", t.val),
                    "use ServiceRequest or DiagnosticReport",
                );
            }
            (t.val.clone(), ok)
        }
        None => {
            rx.shape_err(
                ast.root,
                "missing `resource:`",
                "add `resource: ServiceRequest` or `resource: DiagnosticReport`",
            );
            (String::new(), false)
        }
    };
    let scope = Scope {
        resource: &resource,
        resource_known: known,
        segment: None,
        version: "",
        prefix: None,
        aliases: Vec::new(),
        each_id: None,
        rep_each: false,
        ns: String::new(),
    };
    let rules = rules_of(rx, ast.rules.as_ref(), &scope, ast.root);
    let contained = match &ast.contained {
        Some(c) => contained_of(rx, &c.val),
        None => Vec::new(),
    };
    Body::Fhir {
        rules_pos: ast.rules.as_ref().map_or(ast.root, |r| r.pos),
        resource,
        rules,
        contained,
    }
}

fn contained_of(rx: &mut Rx<'_>, items: &[ContainedAst]) -> Vec<Contained> {
    let mut out: Vec<Contained> = Vec::new();
    for it in items {
        let resource = it
            .resource
            .as_ref()
            .map(|t| t.val.clone())
            .unwrap_or_default();
        let Some(resource_static) = fhir::CONTAINED.iter().find(|r| **r == resource).copied()
        else {
            rx.err(
                it.resource.as_ref().map_or(it.pos, |r| r.pos),
                format!("`{resource}` cannot be a contained resource here"),
                format!("supported: {}", fhir::CONTAINED.join(", ")),
            );
            continue;
        };
        let id = it.id.as_ref().map(|t| t.val.clone()).unwrap_or_default();
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !id_ok {
            rx.err(
                it.id.as_ref().map_or(it.pos, |r| r.pos),
                "a contained resource needs an `id` of letters, digits, `-` and `.` (at most 64)",
                "e.g. `id: patient`; references then name it `#patient`",
            );
            continue;
        }
        if out.iter().any(|c| c.id == id) {
            rx.err(
                it.id.as_ref().map_or(it.pos, |r| r.pos),
                format!("contained id `{id}` is used twice"),
                "give each contained resource its own id",
            );
            continue;
        }
        let scope = Scope {
            resource: resource_static,
            resource_known: true,
            segment: None,
            version: "",
            prefix: None,
            aliases: Vec::new(),
            each_id: None,
            rep_each: false,
            ns: format!("contained#{id}/"),
        };
        let when = it.when.as_ref().and_then(|w| cond(rx, w, &scope));
        let rules = rules_of(rx, it.rules.as_ref(), &scope, it.pos);
        out.push(Contained {
            resource,
            id,
            when,
            rules,
        });
    }
    out
}

/// `not_sent:` keys as shape keys; each must name an input field.
fn not_sent(rx: &mut Rx<'_>, ast: &FileAst) -> Vec<(String, String, Pos)> {
    let mut out = Vec::new();
    for (k, v) in &ast.not_sent {
        if v.val.trim().is_empty() {
            rx.shape_err(
                v.pos,
                format!("`not_sent` for `{}` needs a reason", k.val),
                "say why the field is left out, for the analyst who reads the file next",
            );
        }
        let key = match JsonPath::parse(&k.val.replace("[]", "[*]")) {
            Ok(p) => p.shape_key(),
            Err(e) => {
                rx.err(
                    k.pos,
                    e,
                    "write the field as `appointment.attendedBy` or `comments[].guid`",
                );
                continue;
            }
        };
        let open = rx
            .open
            .iter()
            .any(|o| key.starts_with(&format!("{o}.")) || key.starts_with(&format!("{o}[")));
        if !rx.known.contains(&key) && !open {
            rx.err(
                k.pos,
                format!("`not_sent` names `{}`, which is not an input field", k.val),
                "use the field's path as in the input, e.g. `appointment.attendedBy`",
            );
            continue;
        }
        out.push((key, v.val.clone(), k.pos));
    }
    out
}

fn tables(rx: &mut Rx<'_>, ast: &FileAst) {
    for t in &ast.tables {
        let name = t.name.val.clone();
        if rx.table_names.contains_key(&name) {
            rx.err(
                t.name.pos,
                format!("table `{name}` is defined twice"),
                "rename or remove one of them",
            );
            continue;
        }
        let Some(body) = &t.body else {
            // Its file is broken (reported): rules naming it are not reported again.
            rx.table_names.insert(name, (None, t.name.pos));
            continue;
        };
        let file = body.file.clone();
        let err = |rx: &mut Rx<'_>, pos: Pos, m: String, h: &str| {
            rx.diags.error(DStage::Resolve, &file, pos, m, h);
        };
        let mut map = super::filters::TableMap::default();
        let mut meta = TableMeta {
            system: body.system.clone(),
            synonyms: body.synonyms.clone(),
            file: body.file.clone(),
            values: Vec::new(),
            pos: t.name.pos,
            default_at: body.default.as_ref().map(|d| {
                let file = body.default_file.as_ref().unwrap_or(&body.file);
                (file.clone(), d.pos)
            }),
        };
        for (k, v) in &body.values {
            meta.values.push((k.val.clone(), v.val.clone(), k.pos));
            let key = if body.ignore_case {
                k.val.trim().to_lowercase()
            } else {
                k.val.trim().to_string()
            };
            if map.insert(key, v.val.clone()).is_some() {
                err(
                    rx,
                    k.pos,
                    format!(
                        "table `{name}`: key `{}` appears twice{}",
                        k.val,
                        if body.ignore_case {
                            " (keys are compared ignoring case)"
                        } else {
                            ""
                        }
                    ),
                    "",
                );
            }
        }
        if !body.has_values {
            err(
                rx,
                body.pos,
                format!("table `{name}` has no `values`"),
                "add `values:` with `from: to` lines",
            );
        }
        let policy = match body.unmapped.as_ref().map(|t| (t.pos, t.val.as_str())) {
            Some((_, "error")) => Policy::Error,
            Some((_, "pass_through")) => Policy::PassThrough,
            Some((_, "default")) => Policy::Default,
            Some((pos, _)) => {
                err(
                    rx,
                    pos,
                    format!("table `{name}`: `unmapped` must be error, pass_through or default"),
                    "",
                );
                Policy::Error
            }
            None => {
                err(
                    rx,
                    body.pos,
                    format!("table `{name}` has no `unmapped` policy"),
                    "say what happens to values not in the table: `unmapped: error`, `pass_through` or `default`",
                );
                Policy::Error
            }
        };
        let default = body.default.as_ref().map(|t| t.val.clone());
        if policy == Policy::Default && default.is_none() {
            err(
                rx,
                body.pos,
                format!("table `{name}` has `unmapped: default` but no `default`"),
                "add `default: <value>`",
            );
        }
        for k in &body.require_keys {
            let lk = if body.ignore_case {
                k.val.trim().to_lowercase()
            } else {
                k.val.trim().to_string()
            };
            if !map.contains_key(&lk) {
                err(
                    rx,
                    k.pos,
                    format!("table `{name}` is missing the required key `{}`", k.val),
                    "add it under `values`",
                );
            }
        }
        rx.table_names
            .insert(name.clone(), (Some(rx.tables.len()), t.name.pos));
        rx.table_meta.push(meta);
        rx.tables.push(Table {
            name,
            map,
            ignore_case: body.ignore_case,
            policy,
            default,
            values_at: body.values_at.clone(),
        });
    }
}

/// A table by name: `Ok(Some(i))`, `Ok(None)` for a table whose file is broken (already
/// reported), `Err(())` after reporting an unknown name.
fn table_ref(rx: &mut Rx<'_>, name: &str, pos: Pos) -> Result<Option<usize>, ()> {
    match rx.table_names.get(name) {
        Some(&(i, _)) => Ok(i),
        None => {
            let mut names: Vec<&str> = rx.table_names.keys().map(String::as_str).collect();
            names.sort_unstable();
            let hint = if names.is_empty() {
                "define it under `tables:`".to_string()
            } else {
                fhir::hint_for(name, &names)
            };
            rx.err(pos, format!("unknown code table `{name}`"), hint);
            Err(())
        }
    }
}

fn hl7_body(rx: &mut Rx<'_>, ast: &FileAst) -> Body {
    let mut structure_known = true;
    let message = match &ast.message {
        Some(t) => {
            if hl7::structure(&t.val).is_none() {
                rx.err(
                    t.pos,
                    format!("message `{}` is not supported", t.val),
                    "use `message: ORM^O01`",
                );
                structure_known = false;
            }
            t.val.clone()
        }
        None => {
            rx.shape_err(ast.root, "missing `message:`", "add `message: ORM^O01`");
            structure_known = false;
            String::new()
        }
    };
    let version = match &ast.version {
        Some(t) => {
            if !hl7::VERSIONS.contains(&t.val.as_str()) {
                rx.err(
                    t.pos,
                    format!("HL7 version `{}` is not supported", t.val),
                    format!(
                        "use one of {} (quote it: \"2.5.1\")",
                        hl7::VERSIONS.join(", ")
                    ),
                );
                structure_known = false;
            }
            t.val.clone()
        }
        None => "2.5.1".to_string(),
    };
    let vidx = hl7::VERSIONS.iter().position(|v| *v == version);
    let line_breaks = match ast.line_breaks.as_ref().map(|t| (t.pos, t.val.as_str())) {
        None | Some((_, "hex")) => crate::hl7::escape::LineBreaks::Hex,
        Some((_, "br")) => crate::hl7::escape::LineBreaks::Br,
        Some((pos, _)) => {
            rx.err(
                pos,
                "`line_breaks` must be `hex` or `br`",
                "hex writes \\X0D\\ and \\X0A\\ (exact bytes); br writes \\.br\\ (formatted text)",
            );
            crate::hl7::escape::LineBreaks::Hex
        }
    };
    custom_declarations(rx, ast, &version, structure_known);
    let mut segments = Vec::new();
    let segments_pos = ast.segments.as_ref().map_or(ast.root, |s| s.pos);
    if ast.rules.is_some() {
        let pos = ast.rules.as_ref().map_or(ast.root, |r| r.pos);
        rx.shape_err(
            pos,
            "an hl7 mapping has `segments`, each with its own `rules`",
            "move the rules under their segment",
        );
    }
    let Some(segs) = &ast.segments else {
        rx.shape_err(
            ast.root,
            "missing `segments:` (the segments of the message, in order)",
            "",
        );
        return Body::Hl7 {
            message,
            version,
            segments,
            line_breaks,
            custom: rx.custom.clone(),
            segments_pos,
            structure_known: false,
        };
    };
    for it in &segs.val {
        let Some(id) = &it.id else {
            rx.shape_err(
                it.pos,
                "a segment entry needs `segment:` (e.g. `segment: PID`)",
                "",
            );
            continue;
        };
        if let Some(mv) = &it.min_version {
            match hl7::VERSIONS.iter().position(|v| *v == mv.val) {
                Some(mi) if vidx.is_some_and(|vi| vi < mi) => continue, // skipped by design
                Some(_) => {}
                None => rx.err(
                    mv.pos,
                    format!("unknown HL7 version `{}`", mv.val),
                    format!("one of {}", hl7::VERSIONS.join(", ")),
                ),
            }
        }
        let custom = rx
            .custom
            .iter()
            .any(|c| c.id == id.val && c.after.is_some());
        if structure_known && !custom && hl7::field_count(&id.val, &version).is_none() {
            rx.err(
                id.pos,
                format!("segment {} is not known for HL7 v{version}", id.val),
                format!(
                    "the built-in tables know {} (TQ1 from v2.5, which ORM^O01 does not use); declare a Z-segment under `custom_segments`",
                    hl7::known_segments().join(" ")
                ),
            );
            continue;
        }
        let mut aliases = Vec::new();
        let each = match &it.for_each {
            Some(t) => {
                let alias = it
                    .alias
                    .as_ref()
                    .map_or_else(|| "item".to_string(), |a| a.val.clone());
                match JsonPath::parse(&t.val) {
                    Ok(p) => {
                        let key = check_json(rx, &p, t.pos, &[]);
                        // Iterating a list reads its items, not every field of them.
                        if let Some(k) = &key {
                            rx.reads.retain(|r| r != k);
                        }
                        if !p.is_many() {
                            rx.err(t.pos, "`for_each` needs a list: end the path with `[*]` or a filter like `[commentType in (AA, PA)]`", "");
                        }
                        aliases.push((alias.clone(), key));
                        Some((p, alias))
                    }
                    Err(e) => {
                        rx.err(t.pos, e, "");
                        aliases.push((alias, None));
                        None
                    }
                }
            }
            None => None,
        };
        let scope = Scope {
            resource: "",
            resource_known: true,
            segment: Some(&id.val),
            version: &version,
            prefix: None,
            aliases,
            each_id: Some(it.pos),
            rep_each: false,
            ns: String::new(),
        };
        let reads_at = rx.reads.len();
        let when = it.when.as_ref().and_then(|w| cond(rx, w, &scope));
        let filter = match &it.where_ {
            Some(w) if it.for_each.is_none() => {
                rx.shape_err(
                    w.pos,
                    "`where` filters the items of a `for_each`; this segment has none",
                    "use `when` for a condition on the whole segment",
                );
                None
            }
            Some(w) => cond(rx, w, &scope),
            None => None,
        };
        attribute(rx, reads_at, &id.val, UseKind::Decides, None);
        if let Some((p, _)) = &each {
            rx.uses.push(FieldUse {
                field: p.shape_key(),
                target: format!("{} (one segment per item)", id.val),
                kind: UseKind::Iterates,
                rule: None,
            });
        }
        let rules = rules_of(rx, it.rules.as_ref(), &scope, it.pos);
        segments.push(Segment {
            id: id.val.clone(),
            at: RuleRef {
                file: rx.fname.clone(),
                pos: it.pos,
                target: id.val.clone().into(),
            },
            when,
            each,
            filter,
            rules,
        });
    }
    Body::Hl7 {
        message,
        version,
        segments,
        line_breaks,
        custom: rx.custom.clone(),
        segments_pos,
        structure_known,
    }
}

/// `custom_segments:` and `custom_fields:` of an HL7 mapping.
fn custom_declarations(rx: &mut Rx<'_>, ast: &FileAst, version: &str, structure_known: bool) {
    let structure: Vec<&str> = ast
        .message
        .as_ref()
        .and_then(|m| hl7::structure(&m.val))
        .map(|(order, _)| order.to_vec())
        .unwrap_or_default();
    let fields_of = |rx: &mut Rx<'_>, seg: &str, decls: &[super::parse::FieldDeclAst]| {
        let mut out: Vec<FieldDecl> = Vec::new();
        for d in decls {
            let Some(f) = &d.field else {
                rx.shape_err(
                    d.pos,
                    "a declared field needs `field:` (its number)",
                    "e.g. `field: 1`",
                );
                continue;
            };
            let Some(n) = f.val.parse::<u16>().ok().filter(|n| *n > 0) else {
                rx.err(
                    f.pos,
                    format!("`field` must be a field number ≥ 1, found `{}`", f.val),
                    "",
                );
                continue;
            };
            let mut datatype = d
                .datatype
                .as_ref()
                .map_or("ST", |t| t.val.as_str())
                .to_string();
            if !hl7::is_datatype(&datatype) {
                rx.err(
                    d.datatype.as_ref().map_or(d.pos, |t| t.pos),
                    format!("`{datatype}` is not an HL7 datatype the tables know"),
                    "e.g. ST, ID, IS, NM, DT, TS, CE, CWE, CX, EI, XCN, XPN, HD, RP",
                );
                // Still declared: the rules writing it are not reported again.
                datatype = "varies".into();
            }
            let length = match &d.length {
                Some(l) => match l.val.parse::<usize>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => {
                        rx.err(
                            l.pos,
                            format!("`length` must be a number of characters, found `{}`", l.val),
                            "e.g. `length: 64`",
                        );
                        continue;
                    }
                },
                None => None,
            };
            if out.iter().any(|x| x.field == n) {
                rx.err(f.pos, format!("{seg}-{n} is declared twice"), "");
                continue;
            }
            out.push(FieldDecl {
                field: n,
                name: d.name.as_ref().map(|t| t.val.clone()).unwrap_or_default(),
                datatype,
                length,
                required: d.required,
            });
        }
        out
    };
    if let Some(segs) = &ast.custom_segments {
        for c in &segs.val {
            let Some(id) = &c.id else {
                rx.shape_err(
                    c.pos,
                    "a custom segment needs `segment:` (e.g. `segment: ZDS`)",
                    "",
                );
                continue;
            };
            let b = id.val.as_bytes();
            let valid = b.len() == 3
                && b[0] == b'Z'
                && b[1..]
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            if !valid {
                rx.err(
                    id.pos,
                    format!("`{}` is not a custom segment id", id.val),
                    "custom segments are Z followed by two capital letters or digits, e.g. ZDS",
                );
                continue;
            }
            if rx.custom.iter().any(|x| x.id == id.val) {
                rx.err(
                    id.pos,
                    format!("custom segment {} is declared twice", id.val),
                    "",
                );
                continue;
            }
            let after = match &c.after {
                // An inbound mapping reads the segment wherever the sender put it.
                None if rx.output != OutputKind::Hl7 => String::new(),
                None => {
                    rx.shape_err(
                        c.pos,
                        format!("custom segment {} needs `after:`, the segment it follows", id.val),
                        "e.g. `after: OBR` (a ZDS with the study instance UID follows the order's OBR)",
                    );
                    continue;
                }
                Some(a) => {
                    let n = structure.iter().filter(|s| **s == a.val).count()
                        + rx.custom.iter().filter(|x| x.id == a.val).count();
                    if structure_known && n != 1 {
                        let unique: BTreeSet<&str> = structure
                            .iter()
                            .filter(|s| structure.iter().filter(|x| x == s).count() == 1)
                            .copied()
                            .collect();
                        rx.err(
                            a.pos,
                            if n == 0 {
                                format!("`after: {}`: no such segment in this message", a.val)
                            } else {
                                format!("`after: {}`: {} appears more than once in the message structure", a.val, a.val)
                            },
                            format!(
                                "name a segment that appears once: {}",
                                unique.into_iter().collect::<Vec<_>>().join(" ")
                            ),
                        );
                        continue;
                    }
                    a.val.clone()
                }
            };
            if c.fields.is_empty() {
                rx.shape_err(
                    c.fields_pos,
                    format!("custom segment {} declares no fields", id.val),
                    "add `fields: [{field: 1, name: ..., datatype: ST, length: 64}]`",
                );
            }
            let fields = fields_of(rx, &id.val, &c.fields);
            rx.custom.push(CustomSegment {
                id: id.val.clone(),
                after: Some(after).filter(|a| !a.is_empty()),
                fields,
                pos: c.pos,
            });
        }
    }
    if let Some(extra) = &ast.custom_fields {
        for d in &extra.val {
            let Some(seg) = &d.segment else {
                rx.shape_err(
                    d.pos,
                    "a custom field needs `segment:` (the standard segment it extends)",
                    "e.g. `segment: PID`",
                );
                continue;
            };
            let Some(count) = hl7::field_count(&seg.val, version) else {
                if structure_known {
                    rx.err(
                        seg.pos,
                        format!("segment {} is not known for HL7 v{version}", seg.val),
                        "custom fields extend a standard segment; a Z-segment is declared under `custom_segments`",
                    );
                }
                continue;
            };
            let decl = fields_of(rx, &seg.val, std::slice::from_ref(d));
            for f in decl {
                if f.field <= count {
                    rx.err(
                        d.field.as_ref().map_or(d.pos, |t| t.pos),
                        format!(
                            "{}-{} is a standard field of HL7 v{version}",
                            seg.val, f.field
                        ),
                        format!("custom fields come after {}-{count}", seg.val),
                    );
                    continue;
                }
                match rx
                    .custom
                    .iter_mut()
                    .find(|c| c.id == seg.val && c.after.is_none())
                {
                    Some(c) if c.fields.iter().any(|x| x.field == f.field) => {
                        rx.err(
                            d.pos,
                            format!("{}-{} is declared twice", seg.val, f.field),
                            "",
                        );
                    }
                    Some(c) => c.fields.push(f),
                    None => rx.custom.push(CustomSegment {
                        id: seg.val.clone(),
                        after: None,
                        fields: vec![f],
                        pos: d.pos,
                    }),
                }
            }
        }
    }
}

fn rules_of(
    rx: &mut Rx<'_>,
    n: Option<&super::parse::Sp<Vec<RuleAst>>>,
    scope: &Scope<'_>,
    parent: Pos,
) -> Vec<Rule> {
    let Some(n) = n else {
        if scope.segment.is_none() || scope.each_id.is_none() {
            rx.shape_err(parent, "missing `rules:`", "");
        }
        return Vec::new();
    };
    n.val.iter().filter_map(|it| rule(rx, it, scope)).collect()
}

fn rule(rx: &mut Rx<'_>, n: &RuleAst, scope: &Scope<'_>) -> Option<Rule> {
    if let Some(mv) = &n.min_version {
        let have = hl7::VERSIONS.iter().position(|v| *v == scope.version);
        match (hl7::VERSIONS.iter().position(|v| *v == mv.val), have) {
            (None, _) => rx.err(
                mv.pos,
                format!("unknown HL7 version `{}`", mv.val),
                format!("one of {}", hl7::VERSIONS.join(", ")),
            ),
            (Some(_), None) if rx.output != OutputKind::Hl7 => {
                rx.shape_err(mv.pos, "`min_version` is only for hl7 mappings", "")
            }
            // Not in this version: the rule is skipped by design.
            (Some(mi), Some(hi)) if hi < mi => return None,
            _ => {}
        }
    }
    let target_text = n.target.as_ref().map(|t| t.val.clone());
    let tpos = n.target.as_ref().map_or(n.pos, |t| t.pos);
    let at = RuleRef {
        file: rx.fname.clone(),
        pos: n.pos,
        target: target_text.clone().unwrap_or_default().into(),
    };
    let reads_at = rx.reads.len();
    let when = n.when.as_ref().and_then(|w| cond(rx, w, scope));
    let shown = shown_target(scope, target_text.as_deref().unwrap_or(""));
    // Named as the value trace names it, so a traced field finds the inputs its rule reads.
    let rule_name: Arc<str> = format!("{}:{}", at.file, at.pos).into();
    attribute(rx, reads_at, &shown, UseKind::Decides, Some(&rule_name));
    if n.for_each.is_some() {
        return each_rule(rx, n, scope, at, when, target_text, tpos);
    }
    let Some(target_text) = target_text else {
        rx.shape_err(
            n.pos,
            "a rule needs `target:`",
            "say where the value goes, e.g. `target: code.text`",
        );
        return None;
    };
    let target = resolve_target(rx, &target_text, tpos, scope, false);
    match &target {
        Some(Target::Fhir(t)) => rx.written.push(format!("{}{}", scope.ns, t.text)),
        Some(Target::Report(r)) => rx.written.push(r.name().to_string()),
        _ => {}
    }
    let hl7_in = rx.input == InputKind::Oru;
    let src_reads_at = rx.reads.len();
    let (source, mut many, value_pos) = match &n.source {
        SourceAst::Missing | SourceAst::Several(_) => {
            let found = match &n.source {
                SourceAst::Several(s) => s.join(", "),
                _ => "none".to_string(),
            };
            rx.shape_err(
                n.pos,
                format!("rule for `{target_text}` needs exactly one of `from`, `value`, `template` (found {found})"),
                "",
            );
            return None;
        }
        SourceAst::Value(v) => (Source::Const(v.val.clone()), false, v.pos),
        SourceAst::Template(v) => match spec::parse_template(&v.val, hl7_in) {
            Ok(parts) => {
                for p in &parts {
                    if let Part::Value(alts) = p {
                        for a in alts {
                            check_alt(rx, a, v.pos, &scope.aliases);
                        }
                    }
                }
                (Source::Chain(vec![Alt::Template(parts)]), false, n.pos)
            }
            Err(e) => {
                if rx.input_known {
                    rx.err(v.pos, e, "placeholders look like `{appointment.patientId}`");
                }
                return None;
            }
        },
        SourceAst::From(v) => {
            let chain = chain_of(rx, std::slice::from_ref(v), v.pos, scope);
            let many = chain.iter().any(Alt::is_many);
            (Source::Chain(chain), many, n.pos)
        }
        SourceAst::FromList(pos, items) => {
            if items.iter().any(|i| matches!(i, FromItem::Staged { .. })) {
                let (s, m) = stages_of(rx, items, scope);
                (s, m, n.pos)
            } else {
                let texts: Vec<Text> = items
                    .iter()
                    .filter_map(|i| match i {
                        FromItem::Plain(t) => Some(t.clone()),
                        FromItem::Staged { .. } => None,
                    })
                    .collect();
                let chain = chain_of(rx, &texts, *pos, scope);
                let many = chain.iter().any(Alt::is_many);
                (Source::Chain(chain), many, n.pos)
            }
        }
    };
    attribute(rx, src_reads_at, &shown, UseKind::Sent, Some(&rule_name));
    let filters = filters_of(rx, &n.filters, &mut many)?;
    let stage_filters = match &source {
        Source::Stages(st) => st.iter().flat_map(|s| &s.filters).collect(),
        _ => Vec::new(),
    };
    if filters.iter().chain(stage_filters).any(reads_zone) {
        note_zone_read(rx, &shown, Some(&rule_name));
    }
    let target = target?;
    // The key under which "set twice" is checked.
    let key = match &target {
        Target::Fhir(t) => format!("{}{}", scope.ns, t.text),
        Target::Hl7(t) => format!(
            "{}#{}",
            t.text,
            scope.each_id.map(|p| p.to_string()).unwrap_or_default()
        ),
        Target::Report(r) => r.name().to_string(),
    };
    let key = if key.contains("[*]") {
        format!(
            "{key}@{}",
            scope.each_id.map(|p| p.to_string()).unwrap_or_default()
        )
    } else {
        key
    };
    Some(Rule {
        at,
        when,
        kind: RuleKind::Value(Box::new(ValueRule {
            source,
            filters,
            target,
            target_pos: tpos,
            value_pos,
            many,
            key,
            shown,
        })),
    })
}

/// A target as `mappings fields` shows it: with its `for_each` prefix and, inside a
/// contained resource, the resource's id.
fn shown_target(scope: &Scope<'_>, t: &str) -> String {
    let t = match &scope.prefix {
        Some(p) if !t.is_empty() => format!("{p}.{t}"),
        Some(p) => p.clone(),
        None => t.to_string(),
    };
    match scope.ns.strip_prefix("contained#") {
        Some(id) => format!("contained #{}: {t}", id.trim_end_matches('/')),
        None => t,
    }
}

/// Whether a filter needs the site's time zone: it reads `site.timeZone` although no
/// path in the file names it.
fn reads_zone(f: &Filter) -> bool {
    matches!(
        f,
        Filter::SiteTime(_) | Filter::SiteTimeEnd(_) | Filter::Hl7Time(_)
    ) || matches!(f, Filter::Instant(out) if *out != TimeOut::Instant)
}

/// Records that `target`'s value is placed in time by the site's zone.
fn note_zone_read(rx: &mut Rx<'_>, target: &str, rule: Option<&Arc<str>>) {
    const ZONE: &str = "site.timeZone";
    if !rx.reads.iter().any(|r| r == ZONE) {
        rx.reads.push(ZONE.to_string());
    }
    let u = FieldUse {
        field: ZONE.to_string(),
        target: format!("{target} (its UTC offset)"),
        kind: UseKind::Decides,
        rule: rule.cloned(),
    };
    if !rx.uses.contains(&u) {
        rx.uses.push(u);
    }
}

/// Records the reads made since `from` as uses by `target`.
fn attribute(rx: &mut Rx<'_>, from: usize, target: &str, kind: UseKind, rule: Option<&Arc<str>>) {
    let from = from.min(rx.reads.len());
    let new: Vec<FieldUse> = rx.reads[from..]
        .iter()
        .map(|f| FieldUse {
            field: f.clone(),
            target: target.to_string(),
            kind: kind.clone(),
            rule: rule.cloned(),
        })
        .collect();
    // Fields that chose list items or segments (`[commentType in (AA, PA)]`,
    // `OBX[OBX-2 in (TX, FT)]`) decide what the target gets; they are not sent.
    let selectors: Vec<FieldUse> = std::mem::take(&mut rx.selectors)
        .into_iter()
        .map(|field| FieldUse {
            field,
            target: target.to_string(),
            kind: UseKind::Decides,
            rule: rule.cloned(),
        })
        .collect();
    for u in new.into_iter().chain(selectors) {
        if u.kind == UseKind::Decides && !rx.reads.contains(&u.field) {
            rx.reads.push(u.field.clone());
        }
        if !rx.uses.contains(&u) {
            rx.uses.push(u);
        }
    }
}

/// Parses `from:` alternatives (each may be a `a | b` chain) and checks their paths.
fn chain_of(rx: &mut Rx<'_>, alts: &[Text], pos: Pos, scope: &Scope<'_>) -> Vec<Alt> {
    let hl7_in = rx.input == InputKind::Oru;
    let mut chain = Vec::new();
    for a in alts {
        match spec::parse_chain(&a.val, hl7_in) {
            Ok(c) => chain.extend(c),
            // Without a known input the path grammar is unknown: nothing to say yet.
            Err(_) if !rx.input_known => {}
            Err(e) => rx.err(
                pos,
                e,
                if hl7_in {
                    "HL7 paths look like `OBR-25`, `OBX[*]-5`, `PID-3[2].1`"
                } else {
                    "paths look like `appointment.patientId` or `comments[*].commentText`"
                },
            ),
        }
    }
    for a in &chain {
        check_alt(rx, a, pos, &scope.aliases);
    }
    chain
}

/// A `from:` list whose items may carry their own filters.
fn stages_of(rx: &mut Rx<'_>, items: &[FromItem], scope: &Scope<'_>) -> (Source, bool) {
    let mut stages = Vec::new();
    let mut many = false;
    for it in items {
        let (text, pos, filters) = match it {
            FromItem::Plain(t) => (t, t.pos, &[][..]),
            FromItem::Staged { pos, from, filters } => (from, *pos, filters.as_slice()),
        };
        let chain = chain_of(rx, std::slice::from_ref(text), pos, scope);
        let mut m = chain.iter().any(Alt::is_many);
        let Some(filters) = filters_of(rx, filters, &mut m) else {
            continue;
        };
        many |= m;
        stages.push(Stage { chain, filters });
    }
    (Source::Stages(stages), many)
}

#[allow(clippy::too_many_arguments)]
fn each_rule(
    rx: &mut Rx<'_>,
    n: &RuleAst,
    scope: &Scope<'_>,
    at: RuleRef,
    when: Option<Cond>,
    target_text: Option<String>,
    tpos: Pos,
) -> Option<Rule> {
    let over_node = n.for_each.as_ref().expect("checked");
    let alias = n
        .alias
        .as_ref()
        .map_or_else(|| "item".to_string(), |a| a.val.clone());
    let over = if over_node.val.is_empty() {
        rx.shape_err(
            over_node.pos,
            "`for_each` must be a path such as `comments[*]`",
            "",
        );
        None
    } else {
        match JsonPath::parse(&over_node.val) {
            Ok(p) => Some(p),
            Err(e) => {
                rx.err(over_node.pos, e, "");
                None
            }
        }
    };
    let key = over
        .as_ref()
        .and_then(|p| check_json(rx, p, over_node.pos, &scope.aliases));
    if let Some(k) = &key {
        // Iterating a list reads its items, not every field of them.
        rx.reads.retain(|r| r != k);
        rx.uses.push(FieldUse {
            field: k.clone(),
            target: shown_target(
                scope,
                target_text
                    .as_deref()
                    .unwrap_or("(one repetition per item)"),
            ),
            kind: UseKind::Iterates,
            rule: None,
        });
    }
    if over.as_ref().is_some_and(|p| !p.is_many()) {
        rx.err(over_node.pos, "`for_each` needs a list: end the path with `[*]` or a filter like `[commentType in (AA, PA)]`", "");
    }
    if !matches!(n.source, SourceAst::Missing) || n.filters_pos.is_some() {
        let (k, pos) = match &n.source {
            SourceAst::Value(t) => ("value", t.pos),
            SourceAst::Template(t) => ("template", t.pos),
            SourceAst::From(t) => ("from", t.pos),
            SourceAst::FromList(p, _) => ("from", *p),
            _ => ("filters", n.filters_pos.unwrap_or(n.pos)),
        };
        rx.shape_err(
            pos,
            format!("a `for_each` rule has no `{k}`: put it on the rules inside"),
            "",
        );
    }
    let mut inner = scope.clone();
    inner.aliases.push((alias.clone(), key));
    inner.each_id = Some(n.pos);
    inner.rep_each = true;
    let reads_at = rx.reads.len();
    let filter = n.where_.as_ref().and_then(|w| cond(rx, w, &inner));
    attribute(
        rx,
        reads_at,
        &shown_target(scope, target_text.as_deref().unwrap_or("")),
        UseKind::Decides,
        None,
    );
    let mut array = None;
    match rx.output {
        OutputKind::Fhir => {
            let Some(t) = &target_text else {
                rx.shape_err(
                    n.pos,
                    "a FHIR `for_each` needs `target:` naming the list, e.g. `target: note[*]`",
                    "",
                );
                return None;
            };
            let full = match &scope.prefix {
                Some(p) => format!("{p}.{t}"),
                None => t.clone(),
            };
            if !full.ends_with("[*]") {
                rx.err(
                    tpos,
                    format!("the target of a `for_each` must end with `[*]` (found `{t}`)"),
                    "e.g. `target: note[*]`; the rules inside then target `text`, `time`, ...",
                );
                return None;
            }
            if scope.resource_known {
                match fhir::resolve(scope.resource, &full, true) {
                    Ok(ft) => {
                        let mut steps = ft.steps.clone();
                        steps.pop(); // the final Each: the array itself
                        array = Some(steps);
                    }
                    Err((m, h)) => {
                        rx.err(tpos, m, h);
                        return None;
                    }
                }
            }
            inner.prefix = Some(full);
        }
        OutputKind::Hl7 => {
            if target_text.is_some() {
                rx.shape_err(tpos, "an HL7 `for_each` rule has no target; its rules use `[*]` for the repetition, e.g. `PID-3[*].1`", "");
            }
        }
        OutputKind::Report => {
            rx.shape_err(
                n.pos,
                "`for_each` is not available in report mappings",
                "use a `[*]` source with `join`",
            );
            return None;
        }
    }
    let rules = rules_of(rx, n.rules.as_ref(), &inner, n.pos);
    let over = over?;
    Some(Rule {
        at,
        when,
        kind: RuleKind::Each(Box::new(Each {
            over,
            alias,
            array,
            filter,
            rules,
        })),
    })
}

fn resolve_target(
    rx: &mut Rx<'_>,
    t: &str,
    pos: Pos,
    scope: &Scope<'_>,
    partial: bool,
) -> Option<Target> {
    match rx.output {
        OutputKind::Fhir => {
            let full = match &scope.prefix {
                Some(p) => format!("{p}.{t}"),
                None => t.to_string(),
            };
            if full.contains("[*]") && scope.prefix.is_none() {
                rx.err(
                    pos,
                    format!("`[*]` in `{t}` needs an enclosing `for_each`"),
                    "use a fixed index like `[0]`, or wrap the rule in a `for_each`",
                );
                return None;
            }
            if t == "resourceType" {
                rx.err(
                    pos,
                    "resourceType is written automatically",
                    "remove this rule",
                );
                return None;
            }
            if !scope.resource_known {
                return None;
            }
            match fhir::resolve(scope.resource, &full, partial) {
                Ok(ft) => Some(Target::Fhir(ft)),
                Err((m, h)) => {
                    rx.err(pos, m, h);
                    None
                }
            }
        }
        OutputKind::Hl7 => {
            let seg = scope.segment.unwrap_or("");
            let declared = rx
                .custom
                .iter()
                .find(|c| c.id == seg)
                .map(|c| (c.fields.as_slice(), c.after.is_some()));
            let fields = hl7::SegmentFields {
                segment: seg,
                version: scope.version,
                declared: declared.map_or(&[][..], |d| d.0),
                custom: declared.is_some_and(|d| d.1),
            };
            if !hl7::VERSIONS.contains(&scope.version) {
                return None;
            }
            match hl7::resolve(t, fields) {
                Ok(ht) => {
                    if ht.rep == Rep::Each && !scope.rep_each {
                        rx.err(
                            pos,
                            format!("`[*]` in `{t}` needs an enclosing `for_each`"),
                            "",
                        );
                        return None;
                    }
                    if seg == "MSH" && matches!(ht.field, 7 | 9 | 10 | 12) {
                        rx.err(pos, format!("{t} is generated (MSH-7 time, MSH-9 type, MSH-10 control id, MSH-12 version)"), "remove this rule; set `message` and `version` at the top of the file");
                        return None;
                    }
                    Some(Target::Hl7(ht))
                }
                Err((m, h)) => {
                    rx.err(pos, m, h);
                    None
                }
            }
        }
        OutputKind::Report => match ReportField::parse(t) {
            Some(r) => Some(Target::Report(r)),
            None => {
                let names: Vec<&str> = ReportField::ALL.iter().map(|f| f.name()).collect();
                rx.err(
                    pos,
                    format!("`{t}` is not a report field"),
                    fhir::hint_for(t, &names),
                );
                None
            }
        },
    }
}

/// Checks a JSON source path against the input shape; returns its shape key.
fn check_json(
    rx: &mut Rx<'_>,
    p: &JsonPath,
    pos: Pos,
    aliases: &[(String, Option<String>)],
) -> Option<String> {
    let (base, rest_key): (String, String) = match aliases.iter().rev().find(|(a, _)| *a == p.root)
    {
        Some((_, Some(k))) => {
            let pk = p.shape_key();
            (k.clone(), pk[p.root.len()..].to_string())
        }
        // The list did not resolve (reported): its items' fields cannot be checked.
        Some((_, None)) => return None,
        None => (String::new(), p.shape_key()),
    };
    let key = format!("{base}{rest_key}");
    if !rx.input_known {
        return None;
    }
    if rx.input == InputKind::DiagnosticReport && key.starts_with("resource") {
        let parts: Vec<&str> = key
            .split('.')
            .skip(1)
            .map(|s| s.trim_end_matches("[]"))
            .collect();
        if let Err((m, h)) = fhir_source_ok(&parts) {
            rx.err(pos, m, h);
            return None;
        }
        rx.reads.push(key.clone());
        return Some(key);
    }
    let ok = |rx: &Rx<'_>, k: &str| {
        rx.known.contains(k)
            || rx
                .open
                .iter()
                .any(|o| k.starts_with(&format!("{o}.")) || k.starts_with(&format!("{o}[")))
    };
    if !ok(rx, &key) {
        let parent = key.rsplit_once('.').map_or("", |(a, _)| a);
        let last = key.rsplit('.').next().unwrap_or(&key);
        let mut names: Vec<&str> = if parent.is_empty() {
            rx.known
                .iter()
                .filter(|k| !k.contains('.') && !k.contains('['))
                .map(String::as_str)
                .collect()
        } else {
            rx.known
                .iter()
                .filter_map(|k| k.strip_prefix(parent).and_then(|r| r.strip_prefix('.')))
                .filter(|r| !r.contains('.') && !r.contains('['))
                .collect()
        };
        names.sort_unstable();
        let mut hint = fhir::hint_for(last, &names);
        if !aliases.is_empty() {
            hint.push_str(&format!(
                "; names bound by for_each here: {}",
                aliases
                    .iter()
                    .map(|a| a.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if rx.input == InputKind::Order {
            hint.push_str("; a field QUBS sends that is not in the built-in shape can be declared under `extra_fields`");
        }
        rx.err(
            pos,
            format!("unknown source field `{}`", p_display(p)),
            hint,
        );
        return None;
    }
    // Fields compared inside `[field op values]` must exist on the items too.
    let mut prefix = if base.is_empty() {
        p.root.clone()
    } else {
        base.clone()
    };
    for st in &p.steps {
        match st {
            Step::Key(k) => {
                prefix.push('.');
                prefix.push_str(k);
            }
            Step::Filter { field, .. } => {
                prefix.push_str("[]");
                let fk = format!("{prefix}.{field}");
                if !ok(rx, &fk) {
                    rx.err(
                        pos,
                        format!(
                            "unknown field `{field}` in the filter of `{}`",
                            p_display(p)
                        ),
                        "",
                    );
                } else {
                    // The items are chosen by this field: it is read (see `attribute`).
                    rx.selectors.push(fk);
                }
            }
            _ => prefix.push_str("[]"),
        }
    }
    rx.reads.push(key.clone());
    Some(key)
}

fn p_display(p: &JsonPath) -> String {
    p.shape_key().replace("[]", "[…]")
}

fn fhir_source_ok(parts: &[&str]) -> Result<(), (String, String)> {
    // Walk DiagnosticReport elements, ignoring list-ness (sources may select items).
    let mut text = String::new();
    for (k, s) in parts.iter().enumerate() {
        if k > 0 {
            text.push('.');
        }
        text.push_str(s);
        if fhir::resolve("DiagnosticReport", &text, true).is_err() {
            let with = format!("{text}[0]");
            if fhir::resolve("DiagnosticReport", &with, true).is_ok() {
                text = with;
            }
        }
    }
    if let Err((m, h)) = fhir::resolve("DiagnosticReport", &text, true) {
        return Err((m.replace("target", "source"), h));
    }
    Ok(())
}

fn check_alt(rx: &mut Rx<'_>, a: &Alt, pos: Pos, aliases: &[(String, Option<String>)]) {
    match a {
        Alt::Json(p) => {
            if rx.input == InputKind::Oru && spec::looks_like_hl7(&p.root) {
                return;
            }
            check_json(rx, p, pos, aliases);
        }
        Alt::Hl7(h) => {
            if rx.input != InputKind::Oru {
                if rx.input_known {
                    rx.err(pos, format!("`{}` is an HL7 path but this mapping reads `input: order`/`diagnostic_report`", h.path), "HL7 paths are for `input: oru`");
                }
                return;
            }
            let seg = h.path.segment_id();
            if seg.starts_with('Z') {
                let declared = rx
                    .custom
                    .iter()
                    .find(|c| c.id == seg)
                    .map(|c| c.fields.clone());
                match declared {
                    None => rx.err(
                        pos,
                        format!(
                            "`{}` reads segment {seg}, which this mapping does not declare",
                            h.path
                        ),
                        format!(
                            "declare it under `custom_segments` (segment {seg} and its `fields`)"
                        ),
                    ),
                    Some(fields) => {
                        let f = hl7::SegmentFields {
                            segment: seg,
                            version: "2.5.1",
                            declared: &fields,
                            custom: true,
                        };
                        let mut text = format!("{seg}-{}", h.path.field);
                        if let Some(c) = h.path.component {
                            text.push_str(&format!(".{c}"));
                        }
                        if let Some(s) = h.path.subcomponent {
                            text.push_str(&format!(".{s}"));
                        }
                        if let Err((m, hint)) = hl7::resolve(&text, f) {
                            rx.err(pos, m, hint);
                        }
                    }
                }
            }
            if let Some(max) = hl7::max_field_count(seg) {
                if h.path.field > max {
                    rx.err(pos, format!("{seg}-{} does not exist in any supported HL7 version ({seg} has at most {max} fields)", h.path.field), format!("use {seg}-1 to {seg}-{max}"));
                } else if let Some(c) = h.path.component {
                    // Inbound messages may be any version: a component is refused only when
                    // no version's datatype of that field has it.
                    let ok = hl7::VERSIONS.iter().any(|v| {
                        let f = hl7::SegmentFields {
                            segment: seg,
                            version: v,
                            declared: &[],
                            custom: false,
                        };
                        let text = match h.path.subcomponent {
                            Some(s) => format!("{seg}-{}.{c}.{s}", h.path.field),
                            None => format!("{seg}-{}.{c}", h.path.field),
                        };
                        hl7::resolve(&text, f).is_ok()
                            || hl7::field_count(seg, v).is_none_or(|n| h.path.field > n)
                    });
                    if !ok {
                        rx.err(
                            pos,
                            format!(
                                "`{}`: {seg}-{} has no such component in any supported HL7 version",
                                h.path, h.path.field
                            ),
                            "check the field's datatype (e.g. CE has 6 components, XCN 23)",
                        );
                    }
                }
            }
            for (f, _, _) in &h.filter {
                if let Some(max) = hl7::max_field_count(seg)
                    && *f > max
                {
                    rx.err(
                        pos,
                        format!("{seg}-{f} in the segment filter does not exist"),
                        "",
                    );
                }
                // The segments are chosen by this field: it is read (see `attribute`).
                rx.selectors.push(format!("{seg}-{f}"));
            }
            rx.reads.push(h.path.to_string());
        }
        Alt::Template(parts) => {
            for p in parts {
                if let Part::Value(alts) = p {
                    for a in alts {
                        check_alt(rx, a, pos, aliases);
                    }
                }
            }
        }
        Alt::Index => {
            if aliases.is_empty() {
                rx.err(pos, "`$index` is only available inside `for_each`", "");
            }
        }
        Alt::SetId => {
            if rx.output != OutputKind::Hl7 {
                rx.err(
                    pos,
                    "`$set_id` is only available in hl7 mappings",
                    "it numbers consecutive segments of the same kind, e.g. NTE-1",
                );
            }
        }
    }
}

fn cond(rx: &mut Rx<'_>, n: &CondAst, scope: &Scope<'_>) -> Option<Cond> {
    match &n.kind {
        CondKind::Any(items) | CondKind::All(items) => {
            let inner: Vec<Cond> = items.iter().filter_map(|i| cond(rx, i, scope)).collect();
            if inner.len() != items.len() {
                return None;
            }
            Some(Cond {
                chain: Vec::new(),
                test: if matches!(n.kind, CondKind::Any(_)) {
                    Test::Any(inner)
                } else {
                    Test::All(inner)
                },
                ignore_case: false,
            })
        }
        CondKind::Not(inner) => Some(Cond {
            chain: Vec::new(),
            test: Test::Not(Box::new(cond(rx, inner, scope)?)),
            ignore_case: false,
        }),
        CondKind::Test {
            from,
            test,
            ignore_case,
        } => {
            let chain = match spec::parse_chain(&from.val, rx.input == InputKind::Oru) {
                Ok(c) => c,
                Err(e) => {
                    if rx.input_known {
                        rx.err(n.pos, e, "");
                    }
                    return None;
                }
            };
            for a in &chain {
                check_alt(rx, a, n.pos, &scope.aliases);
            }
            let test = match test {
                TestAst::Equals(v) | TestAst::In(v) => Test::In(v.clone()),
                TestAst::NotIn(v) => Test::NotIn(v.clone()),
                TestAst::Present(b) => Test::Present(*b),
                TestAst::InTable(t) => match table_ref(rx, &t.val, t.pos) {
                    Ok(Some(i)) => Test::InTable(i),
                    Ok(None) | Err(()) => return None,
                },
            };
            Some(Cond {
                chain,
                test,
                ignore_case: *ignore_case,
            })
        }
    }
}

/// Resolves filters; `None` when one names a table whose file is broken (the rule is left
/// out quietly: its table's problem is what to fix).
fn filters_of(rx: &mut Rx<'_>, items: &[FilterAst], many: &mut bool) -> Option<Vec<Filter>> {
    let mut out = Vec::new();
    let mut quiet = false;
    for it in items {
        let name = it.name.as_str();
        let pos = it.pos;
        let text_arg = |rx: &mut Rx<'_>| -> Option<String> {
            match it.arg.as_ref().and_then(ArgAst::text) {
                Some(s) => Some(s.to_string()),
                None => {
                    rx.err(
                        pos,
                        format!("filter `{name}` needs an argument, e.g. `{{{name}: ...}}`"),
                        "",
                    );
                    None
                }
            }
        };
        let time = |rx: &mut Rx<'_>| -> Option<TimeOut> {
            let a = text_arg(rx)?;
            let t = TimeOut::parse(&a);
            if t.is_none() {
                rx.err(
                    pos,
                    format!(
                        "filter `{name}`: output must be instant, offset, hl7, date or hl7_date"
                    ),
                    "",
                );
            }
            t
        };
        let no_arg = |rx: &mut Rx<'_>, f: Filter| -> Option<Filter> {
            if it.arg.is_some() {
                rx.err(
                    pos,
                    format!("filter `{name}` takes no argument"),
                    format!("write just `{name}`"),
                );
            }
            Some(f)
        };
        let f = match name {
            "trim" => no_arg(rx, Filter::Trim),
            "upper" => no_arg(rx, Filter::Upper),
            "lower" => no_arg(rx, Filter::Lower),
            "required" => no_arg(rx, Filter::Required),
            "first" => {
                *many = false;
                no_arg(rx, Filter::First)
            }
            "base64_decode" => no_arg(rx, Filter::Base64Decode),
            "rank" => {
                *many = false;
                let order: Vec<String> = match &it.arg {
                    Some(ArgAst::List(_, items)) => items.iter().map(|i| i.val.clone()).collect(),
                    _ => Vec::new(),
                };
                if order.is_empty() {
                    rx.err(
                        pos,
                        "filter `rank` needs a list of values, first ranked first",
                        "e.g. `{rank: [preliminary, final]}`",
                    );
                    None
                } else {
                    Some(Filter::Rank(order))
                }
            }
            "default" => text_arg(rx).map(Filter::Default),
            "prefix" => text_arg(rx).map(Filter::Prefix),
            "suffix" => text_arg(rx).map(Filter::Suffix),
            "join" => {
                *many = false;
                text_arg(rx).map(Filter::Join)
            }
            "split" => {
                *many = true;
                text_arg(rx).map(Filter::Split)
            }
            "table" => match text_arg(rx) {
                Some(t) => match table_ref(rx, &t, pos) {
                    Ok(Some(i)) => Some(Filter::Table(i)),
                    Ok(None) => {
                        quiet = true;
                        None
                    }
                    Err(()) => None,
                },
                None => None,
            },
            "site_time" => time(rx).map(Filter::SiteTime),
            "instant" => time(rx).map(Filter::Instant),
            "hl7_time" => time(rx).map(Filter::Hl7Time),
            "date" => time(rx).map(Filter::Date),
            "site_time_end" => time(rx).map(Filter::SiteTimeEnd),
            "single_line" => no_arg(rx, Filter::SingleLine),
            "hl7_max_length" => text_arg(rx).and_then(|a| match a.parse::<usize>() {
                Ok(n) if n >= 2 => Some(Filter::Hl7MaxLength(n)),
                _ => {
                    rx.err(
                        pos,
                        "filter `hl7_max_length` needs a number of characters (2 or more)",
                        "e.g. `{hl7_max_length: 300}` for an ST field of 300",
                    );
                    None
                }
            }),
            "name" => text_arg(rx).and_then(|a| {
                let p = match a.as_str() {
                    "family" => NamePart::Family,
                    "given" => NamePart::Given,
                    "middle" => NamePart::Middle,
                    "prefix" => NamePart::Prefix,
                    "suffix" => NamePart::Suffix,
                    "text" => NamePart::Text,
                    _ => {
                        rx.err(
                            pos,
                            "filter `name`: part must be family, given, middle, prefix, suffix or text",
                            "",
                        );
                        return None;
                    }
                };
                Some(Filter::Name(p))
            }),
            "hl7_name" => text_arg(rx).and_then(|a| match a.as_str() {
                "xpn" => Some(Filter::Hl7Name(Hl7NameKind::Xpn)),
                "xcn" | "cnn" | "ndl" => Some(Filter::Hl7Name(Hl7NameKind::Xcn)),
                _ => {
                    rx.err(
                        pos,
                        "filter `hl7_name`: layout must be xpn, xcn, cnn or ndl",
                        "",
                    );
                    None
                }
            }),
            other => {
                rx.err(
                    pos,
                    format!("unknown filter `{other}`"),
                    fhir::hint_for(other, super::filters::NAMES),
                );
                None
            }
        };
        out.extend(f);
    }
    (!quiet).then_some(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn errors(text: &str) -> Vec<String> {
        errors_in(&PathBuf::from("/virtual/m.yaml"), text)
    }

    fn errors_in(path: &std::path::Path, text: &str) -> Vec<String> {
        match super::super::compile::compile_set(&[(path.to_path_buf(), text.to_string())]) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    }

    const ORM: &str = "mapping: m\ninput: order\noutput: hl7\nmessage: ORM^O01\nversion: \"2.5.1\"\nsegments:\n  - segment: MSH\n  - segment: PID\n    rules:\n";

    #[test]
    fn component_positions_are_resolved_against_the_datatype() {
        let e = errors(&format!(
            "{ORM}      - {{target: PID-3.99, from: appointment.patientId}}\n      - {{target: PID-8.3, from: appointment.gender}}\n      - {{target: PID-5.1.2, from: appointment.patientName}}\n  - segment: ORC\n    rules: [{{target: ORC-1, value: NW}}]\n  - segment: OBR\n    rules: [{{target: OBR-32.1.6, value: Dr}}]\n"
        ));
        assert!(
            e.iter().any(|x| x
                .contains("m.yaml:10:18: error: PID-3.99: PID-3 is CX, which has 10 components")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|x| x.contains("PID-8.3: PID-8 is IS, a single value")),
            "{e:#?}"
        );
        // PID-5.1 is FN, whose sub-component 2 exists: accepted.
        assert_eq!(e.len(), 2, "{e:#?}");
    }

    #[test]
    fn unknown_names_list_what_is_known_in_a_stable_order() {
        let text = "mapping: m\ninput: order\noutput: fhir\nresource: ServiceRequest\ntables:\n  zeta: {unmapped: error, values: {a: b}}\n  alpha: {unmapped: error, values: {a: b}}\n  mid: {unmapped: error, values: {a: b}}\nrules:\n  - {target: status, value: active}\n  - {target: intent, value: order}\n  - {target: subject.display, from: appointment.patientName, filters: [{table: nothingsimilar}]}\n";
        let first = errors(text);
        for _ in 0..5 {
            assert_eq!(
                errors(text),
                first,
                "the same messages in the same order every run"
            );
        }
        assert!(
            first[0].contains("unknown code table `nothingsimilar`")
                && first[0].contains("known: alpha, mid, zeta"),
            "{first:#?}"
        );
    }

    #[test]
    fn a_broken_table_file_is_the_only_error_and_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prio.yaml"), "values: {a: b\n").unwrap();
        let text = "mapping: m\ninput: order\noutput: fhir\nresource: ServiceRequest\ntables:\n  prio: {file: prio.yaml}\nrules:\n  - {target: status, value: active}\n  - {target: intent, value: order}\n  - {target: subject.display, from: appointment.patientName}\n  - {target: priority, from: appointment.priority, filters: [{table: prio}]}\n  - {target: code.text, from: appointment.studyDescripton}\n";
        let e = errors_in(&dir.path().join("m.yaml"), text);
        assert!(
            e[0].contains("prio.yaml") && e[0].contains("YAML syntax"),
            "{e:#?}"
        );
        assert!(
            !e.iter().any(|x| x.contains("unknown code table")),
            "{e:#?}"
        );
        // Other problems of the file are still reported, after the root cause.
        assert!(
            e[1].contains("unknown source field `appointment.studyDescripton`"),
            "{e:#?}"
        );
        assert_eq!(e.len(), 2, "{e:#?}");
    }

    #[test]
    fn an_unknown_input_or_resource_is_not_repeated_for_every_rule() {
        let e = errors(
            "mapping: m\ninput: orders\noutput: fhir\nresource: Servicerequest\nrules:\n  - {target: status, from: appointment.status}\n  - {target: bogus, from: OBR-25}\n",
        );
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].contains("`input` must be order"), "{e:#?}");
        assert!(
            e[1].contains("resource `Servicerequest` is not supported"),
            "{e:#?}"
        );
    }

    #[test]
    fn z_segments_read_by_an_oru_mapping_must_be_declared() {
        let base = "mapping: m\ninput: oru\noutput: report\n";
        let rules = "rules:\n  - {target: appointmentId, from: ZDS-2.1 | ORC-2.1}\n  - {target: reportText, from: ZDS-1.1}\n  - {target: reportStatus, value: final}\n";
        let e = errors(&format!("{base}{rules}"));
        assert!(
            e.iter()
                .any(|x| x.contains("reads segment ZDS, which this mapping does not declare")),
            "{e:#?}"
        );
        let declared = "custom_segments:\n  - segment: ZDS\n    fields: [{field: 1, datatype: RP}, {field: 2, datatype: EI}]\n";
        assert!(errors(&format!("{base}{declared}{rules}")).is_empty());
        let e = errors(&format!(
            "{base}{declared}{}",
            rules.replace("ZDS-1.1", "ZDS-3")
        ));
        assert!(
            e.iter().any(|x| x.contains("ZDS-3 is not declared")),
            "{e:#?}"
        );
    }
}
