//! Load-time: reads a mapping file's node tree, checks everything that can be checked
//! before any input arrives, and compiles it into a plan that [`super::eval`] runs without
//! looking at YAML again. Every problem is collected with its file:line:column and a hint;
//! a file with any error yields no plan.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::codes;
use super::fhir::{self, FhirTarget, Prim, Ty};
use super::filters::{Filter, Hl7NameKind, NamePart, Policy, Table, TimeOut};
use super::hl7::{self, Hl7Target, Rep};
use super::spec::{self, Alt, InputKind, JsonPath, OutputKind, Part, Step};
use super::yaml::{Kind, Node, Pos};
use super::{Diagnostic, ReportField};

/// Where a rule is written, for error messages: `file:line:col (target X)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// File name (no directory).
    pub file: Arc<str>,
    /// Position of the rule.
    pub pos: Pos,
    /// Target as written.
    pub target: Arc<str>,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} (target `{}`)", self.file, self.pos, self.target)
    }
}

/// A condition (`when`, or `where` on a `for_each`).
#[derive(Debug, Clone)]
pub struct Cond {
    /// Value tested (empty for `any`, `all`, `not`).
    pub chain: Vec<Alt>,
    /// Test.
    pub test: Test,
    /// `equals`/`in`/`not_in` compare trimmed values ignoring case.
    pub ignore_case: bool,
}

/// What a condition checks.
#[derive(Debug, Clone)]
pub enum Test {
    /// Value equals one of these (`equals: x` or `in: [..]`).
    In(Vec<String>),
    /// Value is none of these.
    NotIn(Vec<String>),
    /// Value is present (true) or absent (false).
    Present(bool),
    /// Value is a key of this code table.
    InTable(usize),
    /// At least one of these holds.
    Any(Vec<Cond>),
    /// All of these hold.
    All(Vec<Cond>),
    /// This does not hold.
    Not(Box<Cond>),
}

/// Where a value goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A FHIR element.
    Fhir(FhirTarget),
    /// An HL7 position in the current segment.
    Hl7(Hl7Target),
    /// A report submission field.
    Report(ReportField),
    /// No value: a `for_each` container.
    None,
}

/// Where a value comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A constant.
    Const(String),
    /// Alternatives, first present wins.
    Chain(Vec<Alt>),
    /// Alternatives with their own filters: the first stage whose value is present after
    /// its filters wins (`from:` list items written `{from: ..., filters: [...]}`).
    Stages(Vec<Stage>),
}

/// One alternative of a [`Source::Stages`] source.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Its alternatives (a fallback chain).
    pub chain: Vec<Alt>,
    /// Filters applied to this alternative only.
    pub filters: Vec<Filter>,
}

/// A repeat over a list.
#[derive(Debug, Clone)]
pub struct Each {
    /// The list.
    pub over: JsonPath,
    /// Name the item is bound to.
    pub alias: String,
    /// FHIR: steps of the array each item appends to (`note` for `note[*]`).
    pub array: Option<Vec<fhir::TStep>>,
    /// `where`: only the items for which this holds.
    pub filter: Option<Cond>,
    /// Rules run per item.
    pub rules: Vec<Rule>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it is written.
    pub at: RuleRef,
    /// Condition.
    pub when: Option<Cond>,
    /// Source (absent for containers).
    pub source: Option<Source>,
    /// Filters in order.
    pub filters: Vec<Filter>,
    /// Target.
    pub target: Target,
    /// Repeat.
    pub each: Option<Box<Each>>,
}

/// One segment of an HL7 output plan.
#[derive(Debug, Clone)]
pub struct SegmentPlan {
    /// Segment id.
    pub id: String,
    /// Where it is written.
    pub at: RuleRef,
    /// Condition.
    pub when: Option<Cond>,
    /// One segment per item of this list.
    pub each: Option<(JsonPath, String)>,
    /// `where`: only the items for which this holds.
    pub filter: Option<Cond>,
    /// Rules.
    pub rules: Vec<Rule>,
}

/// A resource contained in a FHIR output (`contained:`), written only when one of its
/// rules wrote a value.
#[derive(Debug, Clone)]
pub struct ContainedPlan {
    /// Resource type (`Patient`, `Practitioner`, `Location`).
    pub resource: String,
    /// Its `id`, which references name as `#id`.
    pub id: String,
    /// Condition.
    pub when: Option<Cond>,
    /// Rules, targeting the contained resource's elements.
    pub rules: Vec<Rule>,
}

/// How a rule uses an input field, for `qubs-bridge mappings fields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseKind {
    /// The field's value is written to the target (possibly as one alternative).
    Sent,
    /// The field decides whether a rule applies (`when`, `where`).
    Decides,
    /// The list is iterated (`for_each`).
    Iterates,
}

/// One use of an input field by a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldUse {
    /// The field, as a shape key (`comments[].commentText`).
    pub field: String,
    /// The target it goes to, or the rule's target for conditions.
    pub target: String,
    /// How it is used.
    pub kind: UseKind,
}

/// What a compiled mapping produces.
#[derive(Debug, Clone)]
pub enum Plan {
    /// A FHIR resource.
    Fhir {
        /// Resource type.
        resource: String,
        /// Rules.
        rules: Vec<Rule>,
        /// Contained resources, in order.
        contained: Vec<ContainedPlan>,
    },
    /// An HL7 message.
    Hl7 {
        /// `ORM^O01`.
        message: String,
        /// Version written to MSH-12.
        version: String,
        /// Segments in order.
        segments: Vec<SegmentPlan>,
        /// How line breaks in values are escaped.
        line_breaks: crate::hl7::escape::LineBreaks,
    },
    /// A report submission.
    Report {
        /// Rules.
        rules: Vec<Rule>,
    },
}

/// A compiled mapping file.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The mapping's name (`mapping:`).
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// Input kind.
    pub input: InputKind,
    /// The plan.
    pub plan: Plan,
    /// Code tables.
    pub tables: Vec<Table>,
    /// Input fields read, as shape keys (`comments[].commentText`).
    pub reads: Vec<String>,
    /// Table files read (for the content hash).
    pub table_files: Vec<PathBuf>,
    /// Input fields deliberately not sent, with the reason (`not_sent:`).
    pub not_sent: Vec<(String, String)>,
    /// Which rule uses which input field, and how.
    pub uses: Vec<FieldUse>,
    /// Load-time findings that do not stop the mapping (e.g. one LOINC code for keys
    /// that name different exams).
    pub warnings: Vec<Diagnostic>,
}

/// What the LOINC checks need to know about a code table.
#[derive(Debug, Clone, Default)]
struct TableMeta {
    /// `system:` as declared.
    system: Option<String>,
    /// `synonyms:` groups of keys that mean the same.
    synonyms: Vec<Vec<String>>,
    /// The file the values are written in, and each `(key, value, position)`.
    file: PathBuf,
    values: Vec<(String, String, Pos)>,
    /// Position of the table's name.
    pos: Pos,
    /// Where `default:` is written (file and position).
    default_at: Option<(PathBuf, Pos)>,
    /// Inferred from a rule whose coding system is LOINC.
    used_as_loinc: bool,
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

impl Compiled {
    /// What this mapping does with the input field `field` (a shape key). A field is sent
    /// when a rule writes it or one of its parents (an object read whole); a parent listed
    /// under `not_sent` covers its children.
    pub fn field_fate(&self, field: &str) -> super::FieldFate {
        let covers = |read: &str| {
            field == read
                || field
                    .strip_prefix(read)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        };
        let mut sent: Vec<String> = Vec::new();
        let mut used: Vec<String> = Vec::new();
        for u in &self.uses {
            if covers(&u.field) {
                let list = if u.kind == UseKind::Sent {
                    &mut sent
                } else {
                    &mut used
                };
                if !list.contains(&u.target) {
                    list.push(u.target.clone());
                }
            }
        }
        if !sent.is_empty() {
            return super::FieldFate::Sent(sent);
        }
        if let Some((_, reason)) = self.not_sent.iter().find(|(f, _)| covers(f)) {
            return super::FieldFate::NotSent(reason.clone());
        }
        if !used.is_empty() {
            return super::FieldFate::Used(used);
        }
        super::FieldFate::Unaccounted
    }
}

struct Cx {
    file: PathBuf,
    fname: Arc<str>,
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    input: InputKind,
    output: OutputKind,
    table_meta: Vec<TableMeta>,
    coded: Vec<CodedTarget>,
    uses: Vec<FieldUse>,
    known: HashSet<String>,
    open: Vec<String>,
    tables: Vec<Table>,
    table_names: HashMap<String, (usize, Pos)>,
    reads: Vec<String>,
    /// Fields read to select list items or segments, not yet attributed to a target.
    selectors: Vec<String>,
    table_files: Vec<PathBuf>,
    targets: HashMap<String, (Pos, bool)>,
}

#[derive(Clone)]
struct Scope<'s> {
    output: OutputKind,
    resource: &'s str,
    segment: Option<&'s str>,
    version: &'s str,
    prefix: Option<String>,
    aliases: Vec<(String, String)>,
    each_id: Option<Pos>,
    /// Inside a rule-level `for_each` (HL7 `[*]` repetitions are allowed).
    rep_each: bool,
    /// Prefix of target keys, so that a contained resource's targets do not clash with
    /// the container's.
    ns: String,
}

impl Cx {
    fn err(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        let mut hint = hint.into();
        if hint.is_empty() {
            hint = "see mappings/README.md for the syntax, with examples".into();
        }
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            pos,
            message: message.into(),
            hint: (!hint.is_empty()).then_some(hint),
        });
    }

    /// A problem in another file than the mapping's own (a table file).
    fn err_in(
        &mut self,
        file: PathBuf,
        pos: Pos,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let hint: String = hint.into();
        self.diags.push(Diagnostic {
            file,
            pos,
            message: message.into(),
            hint: (!hint.is_empty()).then_some(hint),
        });
    }

    fn keys(&mut self, n: &Node, allowed: &[&str], what: &str) {
        if let Kind::Map(m) = &n.kind {
            for (k, _) in m {
                let name = k.as_str().unwrap_or("");
                if !allowed.contains(&name) {
                    let hint = fhir::hint_for(name, allowed);
                    self.err(k.pos, format!("unknown key `{name}` in {what}"), hint);
                }
            }
        } else {
            self.err(
                n.pos,
                format!("{what} must be a mapping, found {}", n.type_name()),
                "",
            );
        }
    }

    fn string(&mut self, n: &Node, what: &str) -> Option<String> {
        match n.scalar_text() {
            Some(s) => Some(s),
            None => {
                self.err(
                    n.pos,
                    format!("{what} must be text, found {}", n.type_name()),
                    "",
                );
                None
            }
        }
    }
}

const FILE_KEYS: &[&str] = &[
    "mapping",
    "description",
    "input",
    "output",
    "resource",
    "message",
    "version",
    "tables",
    "rules",
    "segments",
    "extra_fields",
    "line_breaks",
    "not_sent",
    "contained",
];
const RULE_KEYS: &[&str] = &[
    "min_version",
    "target",
    "from",
    "value",
    "template",
    "filters",
    "when",
    "for_each",
    "as",
    "where",
    "rules",
    "description",
];
const SEGMENT_KEYS: &[&str] = &[
    "segment",
    "when",
    "for_each",
    "as",
    "where",
    "rules",
    "min_version",
    "description",
];
const TABLE_KEYS: &[&str] = &[
    "values",
    "unmapped",
    "default",
    "ignore_case",
    "file",
    "require_keys",
    "description",
    "system",
    "synonyms",
];

/// Compiles one mapping file's text. `file` is used for messages and to find table files.
pub fn compile(file: &Path, text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    let fname: Arc<str> = file
        .file_name()
        .map_or_else(
            || file.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        )
        .into();
    let root = match super::yaml::parse(text) {
        Ok(n) => n,
        Err((pos, msg)) => {
            return Err(vec![Diagnostic {
                file: file.to_path_buf(),
                pos,
                message: format!("YAML syntax: {msg}"),
                hint: Some("check indentation and quoting around this position".into()),
            }]);
        }
    };
    let mut cx = Cx {
        file: file.to_path_buf(),
        fname,
        diags: Vec::new(),
        warnings: Vec::new(),
        input: InputKind::Order,
        output: OutputKind::Fhir,
        table_meta: Vec::new(),
        coded: Vec::new(),
        uses: Vec::new(),
        known: HashSet::new(),
        open: Vec::new(),
        tables: Vec::new(),
        table_names: HashMap::new(),
        reads: Vec::new(),
        selectors: Vec::new(),
        table_files: Vec::new(),
        targets: HashMap::new(),
    };
    cx.keys(&root, FILE_KEYS, "the mapping file");
    let name = match root.get("mapping") {
        Some(n) => cx.string(n, "`mapping`").unwrap_or_default(),
        None => {
            cx.err(
                root.pos,
                "missing `mapping:` (the mapping's name)",
                "add e.g. `mapping: service_request`",
            );
            String::new()
        }
    };
    let input = match root.get("input").map(|n| (n, n.as_str())) {
        Some((_, Some("order"))) => InputKind::Order,
        Some((_, Some("oru"))) => InputKind::Oru,
        Some((_, Some("diagnostic_report"))) => InputKind::DiagnosticReport,
        Some((n, _)) => {
            cx.err(
                n.pos,
                "`input` must be order, oru or diagnostic_report",
                "e.g. `input: order`",
            );
            InputKind::Order
        }
        None => {
            cx.err(
                root.pos,
                "missing `input:`",
                "add `input: order`, `input: oru` or `input: diagnostic_report`",
            );
            InputKind::Order
        }
    };
    cx.input = input;
    let output = match root.get("output").map(|n| (n, n.as_str())) {
        Some((_, Some("fhir"))) => OutputKind::Fhir,
        Some((_, Some("hl7"))) => OutputKind::Hl7,
        Some((_, Some("report"))) => OutputKind::Report,
        Some((n, _)) => {
            cx.err(
                n.pos,
                "`output` must be fhir, hl7 or report",
                "e.g. `output: fhir`",
            );
            OutputKind::Fhir
        }
        None => {
            cx.err(
                root.pos,
                "missing `output:`",
                "add `output: fhir`, `output: hl7` or `output: report`",
            );
            OutputKind::Fhir
        }
    };
    cx.output = output;
    match (input, output) {
        (InputKind::Order, OutputKind::Report)
        | (InputKind::Oru | InputKind::DiagnosticReport, OutputKind::Fhir | OutputKind::Hl7) => {
            let pos = root.get("output").map_or(root.pos, |n| n.pos);
            cx.err(
                pos,
                "this input/output pair is not supported",
                "orders map to fhir or hl7; oru and diagnostic_report map to report",
            );
        }
        _ => {}
    }
    // Input shape.
    match input {
        InputKind::Order => {
            let (known, open) = spec::order_shape();
            cx.known = known.into_iter().collect();
            cx.open = open;
        }
        InputKind::Oru => {
            cx.known = ["site", "config", "domain"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            cx.open = vec!["site".into(), "config".into()];
        }
        InputKind::DiagnosticReport => {
            cx.known = ["site", "config", "domain", "resource"]
                .iter()
                .chain(super::fhir_report::READ_FIELDS)
                .map(|s| s.to_string())
                .collect();
            cx.open = vec!["site".into(), "config".into()];
        }
    }
    if let Some(n) = root.get("extra_fields") {
        match &n.kind {
            Kind::Seq(items) => {
                for it in items {
                    if let Some(s) = cx.string(it, "an extra field") {
                        match JsonPath::parse(&s) {
                            Ok(p) => {
                                cx.known.insert(p.shape_key());
                            }
                            Err(e) => cx.err(
                                it.pos,
                                e,
                                "write a path such as `appointment.referralSource`",
                            ),
                        }
                    }
                }
            }
            _ => cx.err(n.pos, "`extra_fields` must be a list of paths", ""),
        }
    }
    if let Some(t) = root.get("tables") {
        compile_tables(&mut cx, t);
    }
    let plan = match output {
        OutputKind::Fhir => {
            let resource = match root.get("resource") {
                Some(n) => {
                    let r = cx.string(n, "`resource`").unwrap_or_default();
                    if fhir::resource_elements(&r).is_none() {
                        cx.err(
                            n.pos,
                            format!("resource `{r}` is not supported"),
                            "use ServiceRequest or DiagnosticReport",
                        );
                    }
                    r
                }
                None => {
                    cx.err(
                        root.pos,
                        "missing `resource:`",
                        "add `resource: ServiceRequest` or `resource: DiagnosticReport`",
                    );
                    String::new()
                }
            };
            let scope = Scope {
                output,
                resource: &resource,
                segment: None,
                version: "",
                prefix: None,
                aliases: Vec::new(),
                each_id: None,
                rep_each: false,
                ns: String::new(),
            };
            let rules = rules_of(&mut cx, root.get("rules"), &scope, root.pos);
            if fhir::resource_elements(&resource).is_some() {
                for req in fhir::required_elements(&resource) {
                    if !cx.targets.keys().any(|k| {
                        k == req
                            || k.starts_with(&format!("{req}."))
                            || k.starts_with(&format!("{req}["))
                    }) {
                        let pos = root.get("rules").map_or(root.pos, |n| n.pos);
                        cx.err(
                            pos,
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
            let contained = contained_of(&mut cx, root.get("contained"));
            Plan::Fhir {
                resource,
                rules,
                contained,
            }
        }
        OutputKind::Report => {
            let scope = Scope {
                output,
                resource: "",
                segment: None,
                version: "",
                prefix: None,
                aliases: Vec::new(),
                each_id: None,
                rep_each: false,
                ns: String::new(),
            };
            let rules = rules_of(&mut cx, root.get("rules"), &scope, root.pos);
            for req in [
                ReportField::AppointmentId,
                ReportField::ReportText,
                ReportField::ReportStatus,
            ] {
                if !cx.targets.contains_key(req.name()) {
                    cx.err(
                        root.pos,
                        format!(
                            "report field `{}` is required but no rule sets it",
                            req.name()
                        ),
                        format!("add a rule with `target: {}`", req.name()),
                    );
                }
            }
            Plan::Report { rules }
        }
        OutputKind::Hl7 => compile_hl7(&mut cx, &root),
    };
    if output == OutputKind::Hl7 && input == InputKind::Order {
        // MSH-7 (now) is written in the site's zone.
        note_zone_read(&mut cx, "MSH-7");
    }
    if !matches!(output, OutputKind::Hl7) && root.get("segments").is_some() {
        let pos = root.get("segments").map_or(root.pos, |n| n.pos);
        cx.err(pos, "`segments` is only for `output: hl7`", "use `rules`");
    }
    if output != OutputKind::Fhir
        && let Some(n) = root.get("contained")
    {
        cx.err(
            n.pos,
            "`contained` is only for `output: fhir`",
            "remove it, or map the resource in a FHIR mapping",
        );
    }
    let selectors = std::mem::take(&mut cx.selectors);
    cx.reads.extend(selectors);
    let not_sent = not_sent_of(&mut cx, root.get("not_sent"));
    check_codes(&mut cx);
    if cx.diags.is_empty() {
        Ok(Compiled {
            name,
            file: file.to_path_buf(),
            input,
            plan,
            tables: cx.tables,
            reads: cx.reads,
            table_files: cx.table_files,
            not_sent,
            uses: cx.uses,
            warnings: cx.warnings,
        })
    } else {
        Err(cx.diags)
    }
}

/// `contained:` — resources inside a FHIR output, each with its own rules.
fn contained_of(cx: &mut Cx, n: Option<&Node>) -> Vec<ContainedPlan> {
    let Some(n) = n else { return Vec::new() };
    let Kind::Seq(items) = &n.kind else {
        cx.err(
            n.pos,
            "`contained` must be a list of resources",
            "each item has `resource:`, `id:` and `rules:`",
        );
        return Vec::new();
    };
    let mut out: Vec<ContainedPlan> = Vec::new();
    for it in items {
        cx.keys(
            it,
            &["resource", "id", "when", "rules", "description"],
            "a contained resource",
        );
        let resource = it
            .get("resource")
            .and_then(|r| cx.string(r, "`resource`"))
            .unwrap_or_default();
        if !fhir::CONTAINED.contains(&resource.as_str()) {
            cx.err(
                it.get("resource").map_or(it.pos, |r| r.pos),
                format!("`{resource}` cannot be a contained resource here"),
                format!("supported: {}", fhir::CONTAINED.join(", ")),
            );
            continue;
        }
        let id = it
            .get("id")
            .and_then(|r| cx.string(r, "`id`"))
            .unwrap_or_default();
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !id_ok {
            cx.err(
                it.get("id").map_or(it.pos, |r| r.pos),
                "a contained resource needs an `id` of letters, digits, `-` and `.` (at most 64)",
                "e.g. `id: patient`; references then name it `#patient`",
            );
            continue;
        }
        if out.iter().any(|c| c.id == id) {
            cx.err(
                it.get("id").map_or(it.pos, |r| r.pos),
                format!("contained id `{id}` is used twice"),
                "give each contained resource its own id",
            );
            continue;
        }
        let resource_static: &'static str = fhir::CONTAINED
            .iter()
            .find(|r| **r == resource)
            .copied()
            .unwrap_or("");
        let scope = Scope {
            output: OutputKind::Fhir,
            resource: resource_static,
            segment: None,
            version: "",
            prefix: None,
            aliases: Vec::new(),
            each_id: None,
            rep_each: false,
            ns: format!("contained#{id}/"),
        };
        let when = it.get("when").and_then(|w| cond(cx, w, &scope));
        let rules = rules_of(cx, it.get("rules"), &scope, it.pos);
        out.push(ContainedPlan {
            resource,
            id,
            when,
            rules,
        });
    }
    out
}

/// `not_sent:` — input fields a mapping deliberately leaves out, each with its reason.
fn not_sent_of(cx: &mut Cx, n: Option<&Node>) -> Vec<(String, String)> {
    let Some(n) = n else { return Vec::new() };
    let Kind::Map(entries) = &n.kind else {
        cx.err(
            n.pos,
            "`not_sent` must map input fields to the reason they are not sent",
            "e.g. `appointment.attendedBy: QUBS user object; no output field for it`",
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        let field = k.scalar_text().unwrap_or_default();
        let reason = v.scalar_text().unwrap_or_default();
        if reason.trim().is_empty() {
            cx.err(
                v.pos,
                format!("`not_sent` for `{field}` needs a reason"),
                "say why the field is left out, for the analyst who reads the file next",
            );
        }
        let key = match JsonPath::parse(&field.replace("[]", "[*]")) {
            Ok(p) => p.shape_key(),
            Err(e) => {
                cx.err(
                    k.pos,
                    e,
                    "write the field as `appointment.attendedBy` or `comments[].guid`",
                );
                continue;
            }
        };
        let open = cx
            .open
            .iter()
            .any(|o| key.starts_with(&format!("{o}.")) || key.starts_with(&format!("{o}[")));
        if !cx.known.contains(&key) && !open {
            cx.err(
                k.pos,
                format!("`not_sent` names `{field}`, which is not an input field"),
                "use the field's path as in the input, e.g. `appointment.attendedBy`",
            );
            continue;
        }
        if let Some(r) = cx.reads.iter().find(|r| {
            **r == key || r.starts_with(&format!("{key}.")) || r.starts_with(&format!("{key}["))
        }) {
            cx.err(
                k.pos,
                format!("`{field}` is listed under `not_sent` but a rule reads `{r}`"),
                "remove it from `not_sent`, or remove the rule",
            );
            continue;
        }
        out.push((key, reason));
    }
    out
}

/// The LOINC checks: a table is LOINC when it says `system: LN` (or `http://loinc.org`)
/// or when a rule puts its values in a coding whose system is LOINC; a constant is LOINC
/// when its coding's system is. Every such code must have its right check digit; a code
/// given to several keys that are not declared `synonyms` is a warning.
fn check_codes(cx: &mut Cx) {
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
            cx.table_meta[t].used_as_loinc = true;
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
    for (i, meta) in cx.table_meta.clone().into_iter().enumerate() {
        let declared = meta.system.as_deref().is_some_and(codes::is_loinc_system);
        if !declared && !meta.used_as_loinc {
            continue;
        }
        let name = cx.tables[i].name.clone();
        for (key, value, pos) in &meta.values {
            if value.trim().is_empty() {
                continue;
            }
            if let Err(e) = codes::check_loinc(value) {
                cx.diags.push(Diagnostic {
                    file: meta.file.clone(),
                    pos: *pos,
                    message: format!(
                        "table `{name}`: `{value}` (for `{key}`) is not a valid LOINC code: {e}"
                    ),
                    hint: Some(
                        "LOINC codes are checked because the table says `system: LN` or feeds a LOINC coding"
                            .into(),
                    ),
                });
            }
        }
        let pairs: Vec<(String, String)> = meta
            .values
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        for (code, keys) in codes::shared_codes(&pairs, &meta.synonyms, cx.tables[i].ignore_case) {
            let pos = meta
                .values
                .iter()
                .filter(|(_, v, _)| v.trim() == code)
                .nth(1)
                .map_or(meta.pos, |x| x.2);
            cx.warnings.push(Diagnostic {
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
}

fn compile_hl7(cx: &mut Cx, root: &Node) -> Plan {
    let message = match root.get("message") {
        Some(n) => {
            let m = cx.string(n, "`message`").unwrap_or_default();
            if hl7::structure(&m).is_none() {
                cx.err(
                    n.pos,
                    format!("message `{m}` is not supported"),
                    "use `message: ORM^O01`",
                );
            }
            m
        }
        None => {
            cx.err(root.pos, "missing `message:`", "add `message: ORM^O01`");
            String::new()
        }
    };
    let version = match root.get("version") {
        Some(n) => {
            let v = cx.string(n, "`version`").unwrap_or_default();
            if !hl7::VERSIONS.contains(&v.as_str()) {
                cx.err(
                    n.pos,
                    format!("HL7 version `{v}` is not supported"),
                    format!(
                        "use one of {} (quote it: \"2.5.1\")",
                        hl7::VERSIONS.join(", ")
                    ),
                );
            }
            v
        }
        None => "2.5.1".to_string(),
    };
    let vidx = hl7::VERSIONS
        .iter()
        .position(|v| *v == version)
        .unwrap_or(0);
    let line_breaks = match root.get("line_breaks").map(|n| (n, n.as_str())) {
        None | Some((_, Some("hex"))) => crate::hl7::escape::LineBreaks::Hex,
        Some((_, Some("br"))) => crate::hl7::escape::LineBreaks::Br,
        Some((n, _)) => {
            cx.err(
                n.pos,
                "`line_breaks` must be `hex` or `br`",
                "hex writes \\X0D\\ and \\X0A\\ (exact bytes); br writes \\.br\\ (formatted text)",
            );
            crate::hl7::escape::LineBreaks::Hex
        }
    };
    let mut segments = Vec::new();
    let Some(segs) = root.get("segments") else {
        cx.err(
            root.pos,
            "missing `segments:` (the segments of the message, in order)",
            "",
        );
        return Plan::Hl7 {
            message,
            version,
            segments,
            line_breaks,
        };
    };
    let Kind::Seq(items) = &segs.kind else {
        cx.err(segs.pos, "`segments` must be a list", "");
        return Plan::Hl7 {
            message,
            version,
            segments,
            line_breaks,
        };
    };
    if root.get("rules").is_some() {
        let pos = root.get("rules").map_or(root.pos, |n| n.pos);
        cx.err(
            pos,
            "an hl7 mapping has `segments`, each with its own `rules`",
            "move the rules under their segment",
        );
    }
    let mut ids: Vec<(String, Pos)> = Vec::new();
    for it in items {
        cx.keys(it, SEGMENT_KEYS, "a segment");
        let Some(id) = it.get("segment").and_then(|n| cx.string(n, "`segment`")) else {
            cx.err(
                it.pos,
                "a segment entry needs `segment:` (e.g. `segment: PID`)",
                "",
            );
            continue;
        };
        if let Some(mv) = it.get("min_version") {
            let m = mv.scalar_text().unwrap_or_default();
            match hl7::VERSIONS.iter().position(|v| *v == m) {
                Some(mi) if vidx < mi => continue, // not in this version: skipped by design
                Some(_) => {}
                None => cx.err(
                    mv.pos,
                    format!("unknown HL7 version `{m}`"),
                    format!("one of {}", hl7::VERSIONS.join(", ")),
                ),
            }
        }
        if hl7::field_count(&id, &version).is_none() {
            cx.err(it.get("segment").map_or(it.pos, |n| n.pos), format!("segment {id} is not known for HL7 v{version}"), "the built-in tables know MSH PID PV1 ORC OBR NTE OBX MSA ERR (and TQ1 from v2.5, which ORM^O01 does not use)");
            continue;
        }
        ids.push((id.clone(), it.pos));
        let mut aliases = Vec::new();
        let each = match it.get("for_each") {
            Some(n) => {
                let alias = it
                    .get("as")
                    .and_then(|a| a.scalar_text())
                    .unwrap_or_else(|| "item".into());
                match n.as_str().map(JsonPath::parse) {
                    Some(Ok(p)) => {
                        let key = check_json(cx, &p, n.pos, &[]);
                        // Iterating a list reads its items, not every field of them.
                        if let Some(k) = &key {
                            cx.reads.retain(|r| r != k);
                        }
                        if !p.is_many() {
                            cx.err(n.pos, "`for_each` needs a list: end the path with `[*]` or a filter like `[commentType in (AA, PA)]`", "");
                        }
                        aliases.push((alias.clone(), key.unwrap_or_default()));
                        Some((p, alias))
                    }
                    Some(Err(e)) => {
                        cx.err(n.pos, e, "");
                        None
                    }
                    None => {
                        cx.err(n.pos, "`for_each` must be a path", "");
                        None
                    }
                }
            }
            None => None,
        };
        let seg_id = id.clone();
        let scope = Scope {
            output: OutputKind::Hl7,
            resource: "",
            segment: Some(&seg_id),
            version: &version,
            prefix: None,
            aliases,
            each_id: Some(it.pos),
            rep_each: false,
            ns: String::new(),
        };
        let reads_at = cx.reads.len();
        let when = it.get("when").and_then(|w| cond(cx, w, &scope));
        let filter = match it.get("where") {
            Some(w) if each.is_none() => {
                cx.err(
                    w.pos,
                    "`where` filters the items of a `for_each`; this segment has none",
                    "use `when` for a condition on the whole segment",
                );
                None
            }
            Some(w) => cond(cx, w, &scope),
            None => None,
        };
        attribute(cx, reads_at, &id, UseKind::Decides);
        if let Some((p, _)) = &each {
            cx.uses.push(FieldUse {
                field: p.shape_key(),
                target: format!("{id} (one segment per item)"),
                kind: UseKind::Iterates,
            });
        }
        let rules = rules_of(cx, it.get("rules"), &scope, it.pos);
        segments.push(SegmentPlan {
            id: id.clone(),
            at: RuleRef {
                file: cx.fname.clone(),
                pos: it.pos,
                target: id.clone().into(),
            },
            when,
            each,
            filter,
            rules,
        });
    }
    if let Some((order, required)) = hl7::structure(&message) {
        let list: Vec<&str> = ids.iter().map(|(s, _)| s.as_str()).collect();
        if list.first() != Some(&"MSH") {
            cx.err(
                segs.pos,
                "the first segment must be MSH",
                "add `- segment: MSH` first (MSH-7, MSH-9, MSH-10 and MSH-12 are generated)",
            );
        }
        if let Err(k) = hl7::check_order(&list, order) {
            cx.err(
                ids[k].1,
                format!("segment {} is out of order for {message}", ids[k].0),
                format!("{message} order: {}", order.join(" ")),
            );
        }
        for r in required {
            if !list.contains(r) {
                cx.err(
                    segs.pos,
                    format!("{message} requires a {r} segment"),
                    format!("add `- segment: {r}`"),
                );
            }
        }
    }
    Plan::Hl7 {
        message,
        version,
        segments,
        line_breaks,
    }
}

fn compile_tables(cx: &mut Cx, n: &Node) {
    let Kind::Map(entries) = &n.kind else {
        cx.err(n.pos, "`tables` must map table names to tables", "");
        return;
    };
    for (k, v) in entries {
        let name = k.scalar_text().unwrap_or_default();
        let cx_file = cx.file.clone();
        // A table may live in its own file; its content is read as if written here.
        let loaded;
        let mut values_file = cx.file.clone();
        let body: &Node = match v.get("file") {
            Some(f) => {
                let rel = f.scalar_text().unwrap_or_default();
                let path = cx.file.parent().unwrap_or(Path::new(".")).join(&rel);
                match std::fs::read_to_string(&path) {
                    Ok(text) => match super::yaml::parse(&text) {
                        Ok(node) => {
                            cx.table_files.push(path.clone());
                            values_file = path.clone();
                            loaded = node;
                            &loaded
                        }
                        Err((pos, msg)) => {
                            cx.diags.push(Diagnostic {
                                file: path,
                                pos,
                                message: format!("YAML syntax: {msg}"),
                                hint: None,
                            });
                            continue;
                        }
                    },
                    Err(_) => {
                        cx.err(
                            f.pos,
                            format!("table file `{rel}` cannot be read"),
                            "paths are relative to this mapping file",
                        );
                        continue;
                    }
                }
            }
            None => v,
        };
        let mut merged_keys: Vec<(Node, Node)> = match (&v.kind, &body.kind) {
            (Kind::Map(a), Kind::Map(b)) if !std::ptr::eq(v, body) => a
                .iter()
                .filter(|(k, _)| k.as_str() != Some("file"))
                .cloned()
                .chain(b.iter().cloned())
                .collect(),
            (_, Kind::Map(b)) => b.clone(),
            _ => {
                cx.err(
                    body.pos,
                    format!("table `{name}` must be a mapping with `values`"),
                    "",
                );
                continue;
            }
        };
        merged_keys.retain(|(k, _)| k.as_str() != Some("file"));
        let t = Node {
            pos: body.pos,
            kind: Kind::Map(merged_keys),
        };
        // A problem inside a table file is reported at that file's own line, not at the
        // mapping that uses the table.
        let in_table_file = !std::ptr::eq(v, body);
        let origin = |key: &str| -> PathBuf {
            if in_table_file && (key.is_empty() || body.get(key).is_some()) {
                values_file.clone()
            } else {
                cx_file.clone()
            }
        };
        if let Kind::Map(entries) = &t.kind {
            for (key, _) in entries {
                let kname = key.as_str().unwrap_or("");
                if !TABLE_KEYS.contains(&kname) {
                    let hint = fhir::hint_for(kname, TABLE_KEYS);
                    let message = format!("unknown key `{kname}` in table `{name}`");
                    cx.err_in(origin(kname), key.pos, message, hint);
                }
            }
        }
        let ignore_case = matches!(
            t.get("ignore_case").map(|n| &n.kind),
            Some(Kind::Bool(true))
        );
        let mut map = HashMap::new();
        let mut meta = TableMeta {
            system: t.get("system").and_then(|n| n.scalar_text()),
            file: values_file.clone(),
            pos: k.pos,
            ..TableMeta::default()
        };
        match t.get("synonyms").map(|n| &n.kind) {
            None => {}
            Some(Kind::Seq(groups)) => {
                for g in groups {
                    match &g.kind {
                        Kind::Seq(keys) => meta
                            .synonyms
                            .push(keys.iter().filter_map(|k| k.scalar_text()).collect()),
                        _ => cx.err_in(
                            origin("synonyms"),
                            g.pos,
                            format!("table `{name}`: each `synonyms` entry is a list of keys"),
                            "e.g. `synonyms: [[MR, MRI], [XR, CR, DX]]`",
                        ),
                    }
                }
            }
            Some(_) => {
                let pos = t.get("synonyms").map_or(t.pos, |n| n.pos);
                cx.err_in(
                    origin("synonyms"),
                    pos,
                    format!("table `{name}`: `synonyms` must be a list of lists of keys"),
                    "e.g. `synonyms: [[MR, MRI], [XR, CR, DX]]`",
                );
            }
        }
        match t.get("values").map(|n| (n, &n.kind)) {
            Some((_, Kind::Map(vals))) => {
                for (vk, vv) in vals {
                    if let (Some(a), Some(b)) = (vk.scalar_text(), vv.scalar_text()) {
                        meta.values.push((a, b, vk.pos));
                    }
                    let (Some(a), Some(b)) = (vk.scalar_text(), vv.scalar_text()) else {
                        cx.err_in(
                            origin("values"),
                            vk.pos,
                            format!("table `{name}`: keys and values must be text"),
                            "",
                        );
                        continue;
                    };
                    let key = if ignore_case {
                        a.trim().to_lowercase()
                    } else {
                        a.trim().to_string()
                    };
                    if map.insert(key, b).is_some() {
                        cx.err_in(
                            origin("values"),
                            vk.pos,
                            format!(
                                "table `{name}`: key `{a}` appears twice{}",
                                if ignore_case {
                                    " (keys are compared ignoring case)"
                                } else {
                                    ""
                                }
                            ),
                            "",
                        );
                    }
                }
            }
            Some((n, _)) => cx.err_in(
                origin("values"),
                n.pos,
                format!("table `{name}`: `values` must map codes to codes"),
                "",
            ),
            None => cx.err_in(
                origin(""),
                t.pos,
                format!("table `{name}` has no `values`"),
                "add `values:` with `from: to` lines",
            ),
        }
        let policy = match t.get("unmapped").map(|n| (n, n.as_str())) {
            Some((_, Some("error"))) => Policy::Error,
            Some((_, Some("pass_through"))) => Policy::PassThrough,
            Some((_, Some("default"))) => Policy::Default,
            Some((n, _)) => {
                cx.err_in(
                    origin("unmapped"),
                    n.pos,
                    format!("table `{name}`: `unmapped` must be error, pass_through or default"),
                    "",
                );
                Policy::Error
            }
            None => {
                cx.err_in(origin(""), t.pos, format!("table `{name}` has no `unmapped` policy"), "say what happens to values not in the table: `unmapped: error`, `pass_through` or `default`");
                Policy::Error
            }
        };
        let default = t.get("default").and_then(|n| n.scalar_text());
        meta.default_at = t.get("default").map(|n| (origin("default"), n.pos));
        if policy == Policy::Default && default.is_none() {
            cx.err_in(
                origin(""),
                t.pos,
                format!("table `{name}` has `unmapped: default` but no `default`"),
                "add `default: <value>`",
            );
        }
        if let Some(req) = t.get("require_keys") {
            if let Kind::Seq(keys) = &req.kind {
                for k in keys {
                    let kt = k.scalar_text().unwrap_or_default();
                    let lk = if ignore_case {
                        kt.trim().to_lowercase()
                    } else {
                        kt.trim().to_string()
                    };
                    if !map.contains_key(&lk) {
                        cx.err_in(
                            origin("require_keys"),
                            k.pos,
                            format!("table `{name}` is missing the required key `{kt}`"),
                            "add it under `values`",
                        );
                    }
                }
            } else {
                cx.err_in(
                    origin("require_keys"),
                    req.pos,
                    "`require_keys` must be a list",
                    "",
                );
            }
        }
        if cx.table_names.contains_key(&name) {
            cx.err(
                k.pos,
                format!("table `{name}` is defined twice"),
                "rename or remove one of them",
            );
            continue;
        }
        cx.table_names
            .insert(name.clone(), (cx.tables.len(), k.pos));
        let values_at = match &t.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some("values"))
                .map(|(k, _)| (origin("values"), k.pos.line)),
            _ => None,
        };
        cx.table_meta.push(meta);
        cx.tables.push(Table {
            name,
            map,
            ignore_case,
            policy,
            default,
            values_at,
        });
    }
}

fn rules_of(cx: &mut Cx, n: Option<&Node>, scope: &Scope<'_>, parent: Pos) -> Vec<Rule> {
    let Some(n) = n else {
        if scope.segment.is_none() || scope.each_id.is_none() {
            cx.err(parent, "missing `rules:`", "");
        }
        return Vec::new();
    };
    let Kind::Seq(items) = &n.kind else {
        cx.err(
            n.pos,
            "`rules` must be a list of rules",
            "start each rule with `- target: ...`",
        );
        return Vec::new();
    };
    items.iter().filter_map(|it| rule(cx, it, scope)).collect()
}

fn rule(cx: &mut Cx, n: &Node, scope: &Scope<'_>) -> Option<Rule> {
    cx.keys(n, RULE_KEYS, "a rule");
    if let Some(mv) = n.get("min_version") {
        let m = mv.scalar_text().unwrap_or_default();
        let have = hl7::VERSIONS.iter().position(|v| *v == scope.version);
        match (hl7::VERSIONS.iter().position(|v| *v == m), have) {
            (None, _) => cx.err(
                mv.pos,
                format!("unknown HL7 version `{m}`"),
                format!("one of {}", hl7::VERSIONS.join(", ")),
            ),
            (Some(_), None) => cx.err(mv.pos, "`min_version` is only for hl7 mappings", ""),
            // Not in this version: the rule is skipped by design.
            (Some(mi), Some(hi)) if hi < mi => return None,
            _ => {}
        }
    }
    let target_text = n.get("target").and_then(|t| cx.string(t, "`target`"));
    let tpos = n.get("target").map_or(n.pos, |t| t.pos);
    let is_each = n.get("for_each").is_some();
    let at = RuleRef {
        file: cx.fname.clone(),
        pos: n.pos,
        target: target_text.clone().unwrap_or_default().into(),
    };
    let reads_at = cx.reads.len();
    let when = n.get("when").and_then(|w| cond(cx, w, scope));
    let shown = shown_target(scope, target_text.as_deref().unwrap_or(""));
    attribute(cx, reads_at, &shown, UseKind::Decides);
    if is_each {
        return each_rule(cx, n, scope, at, when, target_text, tpos);
    }
    let Some(target_text) = target_text else {
        cx.err(
            n.pos,
            "a rule needs `target:`",
            "say where the value goes, e.g. `target: code.text`",
        );
        return None;
    };
    let target = resolve_target(cx, &target_text, tpos, scope, false)?;
    // Source.
    let srcs: Vec<&str> = ["from", "value", "template"]
        .into_iter()
        .filter(|k| n.get(k).is_some())
        .collect();
    if srcs.len() != 1 {
        cx.err(n.pos, format!("rule for `{target_text}` needs exactly one of `from`, `value`, `template` (found {})", if srcs.is_empty() { "none".to_string() } else { srcs.join(", ") }), "");
        return None;
    }
    let hl7_in = cx.input == InputKind::Oru;
    let src_reads_at = cx.reads.len();
    let (source, mut many) = match srcs[0] {
        "value" => {
            let v = n.get("value").expect("checked");
            (Source::Const(cx.string(v, "`value`")?), false)
        }
        "template" => {
            let v = n.get("template").expect("checked");
            let s = cx.string(v, "`template`")?;
            match spec::parse_template(&s, hl7_in) {
                Ok(parts) => {
                    for p in &parts {
                        if let Part::Value(alts) = p {
                            for a in alts {
                                check_alt(cx, a, v.pos, &scope.aliases);
                            }
                        }
                    }
                    (Source::Chain(vec![Alt::Template(parts)]), false)
                }
                Err(e) => {
                    cx.err(v.pos, e, "placeholders look like `{appointment.patientId}`");
                    return None;
                }
            }
        }
        _ => {
            let v = n.get("from").expect("checked");
            match &v.kind {
                Kind::Seq(items) if items.iter().any(|i| matches!(i.kind, Kind::Map(_))) => {
                    stages_of(cx, items, scope)
                }
                _ => {
                    let alts: Vec<String> = match &v.kind {
                        Kind::Seq(items) => items.iter().filter_map(|i| i.scalar_text()).collect(),
                        _ => vec![cx.string(v, "`from`")?],
                    };
                    let chain = chain_of(cx, &alts, v.pos, scope);
                    let many = chain.iter().any(Alt::is_many);
                    (Source::Chain(chain), many)
                }
            }
        }
    };
    attribute(cx, src_reads_at, &shown, UseKind::Sent);
    let filters = filters_of(cx, n.get("filters"), &mut many);
    let stage_filters = match &source {
        Source::Stages(st) => st.iter().flat_map(|s| &s.filters).collect(),
        _ => Vec::new(),
    };
    if filters.iter().chain(stage_filters).any(reads_zone) {
        note_zone_read(cx, &shown);
    }
    if many {
        cx.err(n.pos, format!("type mismatch: the source of `{target_text}` yields a list but the target holds one value"), "add a `join: \"\\n\"` or `first` filter, or use `for_each`");
    }
    check_value_type(cx, n, &target, &source, &filters, scope);
    note_coded_target(cx, n, &target, &source, &filters, scope);
    // A target set twice.
    let key = match &target {
        Target::Fhir(t) => format!("{}{}", scope.ns, t.text),
        Target::Hl7(t) => format!(
            "{}#{}",
            t.text,
            scope.each_id.map(|p| p.to_string()).unwrap_or_default()
        ),
        Target::Report(r) => r.name().to_string(),
        Target::None => String::new(),
    };
    let key = if key.contains("[*]") {
        format!(
            "{key}@{}",
            scope.each_id.map(|p| p.to_string()).unwrap_or_default()
        )
    } else {
        key
    };
    let conditional = when.is_some();
    match cx.targets.get(&key) {
        Some(&(first, first_cond)) if !(conditional && first_cond) => {
            cx.err(
                tpos,
                format!(
                    "target `{target_text}` is set twice (first at line {})",
                    first.line
                ),
                "remove one rule, or give both a `when` so that they exclude each other",
            );
        }
        _ => {
            cx.targets.insert(key, (tpos, conditional));
        }
    }
    Some(Rule {
        at,
        when,
        source: Some(source),
        filters,
        target,
        each: None,
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
fn note_zone_read(cx: &mut Cx, target: &str) {
    const ZONE: &str = "site.timeZone";
    if !cx.reads.iter().any(|r| r == ZONE) {
        cx.reads.push(ZONE.to_string());
    }
    let u = FieldUse {
        field: ZONE.to_string(),
        target: format!("{target} (its UTC offset)"),
        kind: UseKind::Decides,
    };
    if !cx.uses.contains(&u) {
        cx.uses.push(u);
    }
}

/// Records the reads made since `from` as uses by `target`.
fn attribute(cx: &mut Cx, from: usize, target: &str, kind: UseKind) {
    let from = from.min(cx.reads.len());
    let new: Vec<FieldUse> = cx.reads[from..]
        .iter()
        .map(|f| FieldUse {
            field: f.clone(),
            target: target.to_string(),
            kind: kind.clone(),
        })
        .collect();
    // Fields that chose list items or segments (`[commentType in (AA, PA)]`,
    // `OBX[OBX-2 in (TX, FT)]`) decide what the target gets; they are not sent.
    let selectors: Vec<FieldUse> = std::mem::take(&mut cx.selectors)
        .into_iter()
        .map(|field| FieldUse {
            field,
            target: target.to_string(),
            kind: UseKind::Decides,
        })
        .collect();
    for u in new.into_iter().chain(selectors) {
        if u.kind == UseKind::Decides && !cx.reads.contains(&u.field) {
            cx.reads.push(u.field.clone());
        }
        if !cx.uses.contains(&u) {
            cx.uses.push(u);
        }
    }
}

/// Parses `from:` alternatives (each may be a `a | b` chain) and checks their paths.
fn chain_of(cx: &mut Cx, alts: &[String], pos: Pos, scope: &Scope<'_>) -> Vec<Alt> {
    let hl7_in = cx.input == InputKind::Oru;
    let mut chain = Vec::new();
    for a in alts {
        match spec::parse_chain(a, hl7_in) {
            Ok(c) => chain.extend(c),
            Err(e) => cx.err(
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
        check_alt(cx, a, pos, &scope.aliases);
    }
    chain
}

/// A `from:` list whose items may carry their own filters:
/// `- {from: appointment.doctorName, filters: [{name: given}]}`.
fn stages_of(cx: &mut Cx, items: &[Node], scope: &Scope<'_>) -> (Source, bool) {
    let mut stages = Vec::new();
    let mut many = false;
    for it in items {
        let (alts, filters_node) = match &it.kind {
            Kind::Map(_) => {
                cx.keys(it, &["from", "filters"], "a `from` alternative");
                let Some(f) = it.get("from").and_then(|f| cx.string(f, "`from`")) else {
                    cx.err(
                        it.pos,
                        "an alternative written as a mapping needs `from:`",
                        "e.g. `- {from: appointment.doctorName, filters: [{name: family}]}`",
                    );
                    continue;
                };
                (vec![f], it.get("filters"))
            }
            _ => match it.scalar_text() {
                Some(t) => (vec![t], None),
                None => {
                    cx.err(
                        it.pos,
                        "a `from` alternative must be a path or a mapping",
                        "",
                    );
                    continue;
                }
            },
        };
        let chain = chain_of(cx, &alts, it.pos, scope);
        let mut m = chain.iter().any(Alt::is_many);
        let filters = filters_of(cx, filters_node, &mut m);
        many |= m;
        stages.push(Stage { chain, filters });
    }
    (Source::Stages(stages), many)
}

/// Remembers rules that write a coding's code or system, for [`check_codes`].
fn note_coded_target(
    cx: &mut Cx,
    n: &Node,
    target: &Target,
    source: &Source,
    filters: &[Filter],
    scope: &Scope<'_>,
) {
    let last_table = || {
        filters.iter().rev().find_map(|f| match f {
            Filter::Table(i) => Some(*i),
            _ => None,
        })
    };
    let stage_table = || match source {
        Source::Stages(st) => st.iter().find_map(|s| {
            s.filters.iter().rev().find_map(|f| match f {
                Filter::Table(i) => Some(*i),
                _ => None,
            })
        }),
        _ => None,
    };
    let constant = match source {
        Source::Const(c) if filters.is_empty() => {
            Some((c.clone(), n.get("value").map_or(n.pos, |v| v.pos)))
        }
        _ => None,
    };
    let (coding, is_system) = match target {
        Target::Fhir(t) => {
            let full = format!("{}{}", scope.ns, shown_target(scope, &t.text));
            match full.rsplit_once('.') {
                Some((c, "code")) => (c.to_string(), false),
                Some((c, "system")) => (c.to_string(), true),
                _ => return,
            }
        }
        Target::Hl7(t) => {
            // CE/CWE triplets: identifier at components 1 and 4, coding system at 3 and 6.
            let at = scope.each_id.map(|p| p.to_string()).unwrap_or_default();
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
        _ => return,
    };
    cx.coded.push(CodedTarget {
        coding,
        table: last_table().or_else(stage_table),
        constant,
        is_system,
    });
}

#[allow(clippy::too_many_arguments)]
fn each_rule(
    cx: &mut Cx,
    n: &Node,
    scope: &Scope<'_>,
    at: RuleRef,
    when: Option<Cond>,
    target_text: Option<String>,
    tpos: Pos,
) -> Option<Rule> {
    let over_node = n.get("for_each").expect("checked");
    let over = match over_node.as_str().map(JsonPath::parse) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            cx.err(over_node.pos, e, "");
            return None;
        }
        None => {
            cx.err(
                over_node.pos,
                "`for_each` must be a path such as `comments[*]`",
                "",
            );
            return None;
        }
    };
    let key = check_json(cx, &over, over_node.pos, &scope.aliases).unwrap_or_default();
    // Iterating a list reads its items, not every field of them.
    cx.reads.retain(|r| *r != key);
    cx.uses.push(FieldUse {
        field: key.clone(),
        target: shown_target(
            scope,
            target_text
                .as_deref()
                .unwrap_or("(one repetition per item)"),
        ),
        kind: UseKind::Iterates,
    });
    if !over.is_many() {
        cx.err(over_node.pos, "`for_each` needs a list: end the path with `[*]` or a filter like `[commentType in (AA, PA)]`", "");
    }
    for k in ["from", "value", "template", "filters"] {
        if let Some(x) = n.get(k) {
            cx.err(
                x.pos,
                format!("a `for_each` rule has no `{k}`: put it on the rules inside"),
                "",
            );
        }
    }
    let alias = n
        .get("as")
        .and_then(|a| a.scalar_text())
        .unwrap_or_else(|| "item".into());
    let mut inner = scope.clone();
    inner.aliases.push((alias.clone(), key));
    inner.each_id = Some(n.pos);
    inner.rep_each = true;
    let reads_at = cx.reads.len();
    let filter = n.get("where").and_then(|w| cond(cx, w, &inner));
    attribute(
        cx,
        reads_at,
        &shown_target(scope, target_text.as_deref().unwrap_or("")),
        UseKind::Decides,
    );
    let mut array = None;
    match scope.output {
        OutputKind::Fhir => {
            let Some(t) = &target_text else {
                cx.err(
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
                cx.err(
                    tpos,
                    format!("the target of a `for_each` must end with `[*]` (found `{t}`)"),
                    "e.g. `target: note[*]`; the rules inside then target `text`, `time`, ...",
                );
                return None;
            }
            match fhir::resolve(scope.resource, &full, true) {
                Ok(ft) => {
                    let mut steps = ft.steps.clone();
                    steps.pop(); // the final Each: the array itself
                    array = Some(steps);
                }
                Err((m, h)) => {
                    cx.err(tpos, m, h);
                    return None;
                }
            }
            inner.prefix = Some(full);
        }
        OutputKind::Hl7 => {
            if target_text.is_some() {
                cx.err(tpos, "an HL7 `for_each` rule has no target; its rules use `[*]` for the repetition, e.g. `PID-3[*].1`", "");
            }
        }
        OutputKind::Report => {
            cx.err(
                n.pos,
                "`for_each` is not available in report mappings",
                "use a `[*]` source with `join`",
            );
            return None;
        }
    }
    let rules = rules_of(cx, n.get("rules"), &inner, n.pos);
    Some(Rule {
        at,
        when,
        source: None,
        filters: Vec::new(),
        target: Target::None,
        each: Some(Box::new(Each {
            over,
            alias,
            array,
            filter,
            rules,
        })),
    })
}

fn resolve_target(
    cx: &mut Cx,
    t: &str,
    pos: Pos,
    scope: &Scope<'_>,
    partial: bool,
) -> Option<Target> {
    match scope.output {
        OutputKind::Fhir => {
            let full = match &scope.prefix {
                Some(p) => format!("{p}.{t}"),
                None => t.to_string(),
            };
            if full.contains("[*]") && scope.prefix.is_none() {
                cx.err(
                    pos,
                    format!("`[*]` in `{t}` needs an enclosing `for_each`"),
                    "use a fixed index like `[0]`, or wrap the rule in a `for_each`",
                );
                return None;
            }
            if t == "resourceType" {
                cx.err(
                    pos,
                    "resourceType is written automatically",
                    "remove this rule",
                );
                return None;
            }
            match fhir::resolve(scope.resource, &full, partial) {
                Ok(ft) => Some(Target::Fhir(ft)),
                Err((m, h)) => {
                    cx.err(pos, m, h);
                    None
                }
            }
        }
        OutputKind::Hl7 => {
            let seg = scope.segment.unwrap_or("");
            match hl7::resolve(t, seg, scope.version) {
                Ok(ht) => {
                    if ht.rep == Rep::Each && !scope.rep_each {
                        cx.err(
                            pos,
                            format!("`[*]` in `{t}` needs an enclosing `for_each`"),
                            "",
                        );
                        return None;
                    }
                    if seg == "MSH" && matches!(ht.field, 7 | 9 | 10 | 12) {
                        cx.err(pos, format!("{t} is generated (MSH-7 time, MSH-9 type, MSH-10 control id, MSH-12 version)"), "remove this rule; set `message` and `version` at the top of the file");
                        return None;
                    }
                    Some(Target::Hl7(ht))
                }
                Err((m, h)) => {
                    cx.err(pos, m, h);
                    None
                }
            }
        }
        OutputKind::Report => match ReportField::parse(t) {
            Some(r) => Some(Target::Report(r)),
            None => {
                let names: Vec<&str> = ReportField::ALL.iter().map(|f| f.name()).collect();
                cx.err(
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
fn check_json(cx: &mut Cx, p: &JsonPath, pos: Pos, aliases: &[(String, String)]) -> Option<String> {
    let (base, rest_key): (String, String) = match aliases.iter().rev().find(|(a, _)| *a == p.root)
    {
        Some((_, k)) => {
            let pk = p.shape_key();
            (k.clone(), pk[p.root.len()..].to_string())
        }
        None => (String::new(), p.shape_key()),
    };
    let key = format!("{base}{rest_key}");
    if cx.input == InputKind::DiagnosticReport && key.starts_with("resource") {
        let parts: Vec<&str> = key
            .split('.')
            .skip(1)
            .map(|s| s.trim_end_matches("[]"))
            .collect();
        if let Err((m, h)) = fhir_source_ok(&parts) {
            cx.err(pos, m, h);
            return None;
        }
        cx.reads.push(key.clone());
        return Some(key);
    }
    let ok = |cx: &Cx, k: &str| {
        cx.known.contains(k)
            || cx
                .open
                .iter()
                .any(|o| k.starts_with(&format!("{o}.")) || k.starts_with(&format!("{o}[")))
    };
    if !ok(cx, &key) {
        let parent = key.rsplit_once('.').map_or("", |(a, _)| a);
        let sibs: Vec<&str> = cx
            .known
            .iter()
            .filter_map(|k| k.strip_prefix(parent).and_then(|r| r.strip_prefix('.')))
            .filter(|r| !r.contains('.') && !r.contains('['))
            .collect();
        let last = key.rsplit('.').next().unwrap_or(&key);
        let mut hint = if parent.is_empty() {
            let roots: Vec<&str> = cx
                .known
                .iter()
                .filter(|k| !k.contains('.') && !k.contains('['))
                .map(String::as_str)
                .collect();
            let mut r = roots.clone();
            r.sort();
            fhir::hint_for(last, &r)
        } else {
            let mut s = sibs.clone();
            s.sort();
            fhir::hint_for(last, &s)
        };
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
        if cx.input == InputKind::Order {
            hint.push_str("; a field QUBS sends that is not in the built-in shape can be declared under `extra_fields`");
        }
        cx.err(
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
                if !ok(cx, &fk) {
                    cx.err(
                        pos,
                        format!(
                            "unknown field `{field}` in the filter of `{}`",
                            p_display(p)
                        ),
                        "",
                    );
                } else {
                    // The items are chosen by this field: it is read (see `attribute`).
                    cx.selectors.push(fk);
                }
            }
            _ => prefix.push_str("[]"),
        }
    }
    cx.reads.push(key.clone());
    Some(key)
}

fn p_display(p: &JsonPath) -> String {
    p.shape_key().replace("[]", "[…]")
}

fn fhir_source_ok(parts: &[&str]) -> Result<(), (String, String)> {
    // Walk DiagnosticReport elements, ignoring list-ness (sources may select items).
    let mut path = String::new();
    for (i, p) in parts.iter().enumerate() {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(p);
        // Re-resolve as a partial target with `[0]` for lists.
        let probe: Vec<String> = parts[..=i].iter().map(|s| s.to_string()).collect();
        let mut text = String::new();
        for (k, s) in probe.iter().enumerate() {
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
    }
    Ok(())
}

fn check_alt(cx: &mut Cx, a: &Alt, pos: Pos, aliases: &[(String, String)]) {
    match a {
        Alt::Json(p) => {
            if cx.input == InputKind::Oru && spec::looks_like_hl7(&p.root) {
                return;
            }
            check_json(cx, p, pos, aliases);
        }
        Alt::Hl7(h) => {
            if cx.input != InputKind::Oru {
                cx.err(pos, format!("`{}` is an HL7 path but this mapping reads `input: order`/`diagnostic_report`", h.path), "HL7 paths are for `input: oru`");
                return;
            }
            let seg = h.path.segment_id();
            if let Some(max) = hl7::max_field_count(seg)
                && h.path.field > max
            {
                cx.err(pos, format!("{seg}-{} does not exist in any supported HL7 version ({seg} has at most {max} fields)", h.path.field), format!("use {seg}-1 to {seg}-{max}"));
            }
            for (f, _, _) in &h.filter {
                if let Some(max) = hl7::max_field_count(seg)
                    && *f > max
                {
                    cx.err(
                        pos,
                        format!("{seg}-{f} in the segment filter does not exist"),
                        "",
                    );
                }
                // The segments are chosen by this field: it is read (see `attribute`).
                cx.selectors.push(format!("{seg}-{f}"));
            }
            cx.reads.push(h.path.to_string());
        }
        Alt::Template(parts) => {
            for p in parts {
                if let Part::Value(alts) = p {
                    for a in alts {
                        check_alt(cx, a, pos, aliases);
                    }
                }
            }
        }
        Alt::Index => {
            if aliases.is_empty() {
                cx.err(pos, "`$index` is only available inside `for_each`", "");
            }
        }
        Alt::SetId => {
            if cx.output != OutputKind::Hl7 {
                cx.err(
                    pos,
                    "`$set_id` is only available in hl7 mappings",
                    "it numbers consecutive segments of the same kind, e.g. NTE-1",
                );
            }
        }
    }
}

fn cond(cx: &mut Cx, n: &Node, scope: &Scope<'_>) -> Option<Cond> {
    cx.keys(
        n,
        &[
            "from",
            "equals",
            "in",
            "not_in",
            "present",
            "in_table",
            "ignore_case",
            "any",
            "all",
            "not",
        ],
        "`when`",
    );
    let composite: Vec<&str> = ["any", "all", "not"]
        .into_iter()
        .filter(|k| n.get(k).is_some())
        .collect();
    if !composite.is_empty() {
        if composite.len() > 1 || n.get("from").is_some() {
            cx.err(
                n.pos,
                "a condition is either one test (`from:` and a test) or one of `any`, `all`, `not`",
                "nest them: `{any: [{from: c.isAlert, equals: true}, {from: c.commentType, in: [AA, PA]}]}`",
            );
            return None;
        }
        let k = composite[0];
        let v = n.get(k).expect("present");
        let test = if k == "not" {
            Test::Not(Box::new(cond(cx, v, scope)?))
        } else {
            let Kind::Seq(items) = &v.kind else {
                cx.err(v.pos, format!("`{k}` needs a list of conditions"), "");
                return None;
            };
            if items.is_empty() {
                cx.err(v.pos, format!("`{k}` needs at least one condition"), "");
                return None;
            }
            let inner: Vec<Cond> = items.iter().filter_map(|i| cond(cx, i, scope)).collect();
            if inner.len() != items.len() {
                return None;
            }
            if k == "any" {
                Test::Any(inner)
            } else {
                Test::All(inner)
            }
        };
        return Some(Cond {
            chain: Vec::new(),
            test,
            ignore_case: false,
        });
    }
    let from = n.get("from").and_then(|f| cx.string(f, "`when.from`"));
    let Some(from) = from else {
        cx.err(
            n.pos,
            "`when` needs `from:` (the value tested)",
            "e.g. `when: {from: comment.isAlert, equals: true}`",
        );
        return None;
    };
    let chain = match spec::parse_chain(&from, cx.input == InputKind::Oru) {
        Ok(c) => c,
        Err(e) => {
            cx.err(n.pos, e, "");
            return None;
        }
    };
    for a in &chain {
        check_alt(cx, a, n.pos, &scope.aliases);
    }
    let list = |cx: &mut Cx, v: &Node| -> Vec<String> {
        match &v.kind {
            Kind::Seq(items) => items.iter().filter_map(|i| i.scalar_text()).collect(),
            _ => match v.scalar_text() {
                Some(s) => vec![s],
                None => {
                    cx.err(v.pos, "expected a value or a list of values", "");
                    vec![]
                }
            },
        }
    };
    let tests: Vec<Test> = [
        n.get("equals").map(|v| Test::In(list(cx, v))),
        n.get("in").map(|v| Test::In(list(cx, v))),
        n.get("not_in").map(|v| Test::NotIn(list(cx, v))),
        n.get("present")
            .map(|v| Test::Present(!matches!(v.kind, Kind::Bool(false)))),
        n.get("in_table").and_then(|v| {
            let t = v.scalar_text().unwrap_or_default();
            match cx.table_names.get(&t) {
                Some(&(i, _)) => Some(Test::InTable(i)),
                None => {
                    cx.err(
                        v.pos,
                        format!("unknown code table `{t}`"),
                        "define it under `tables:`",
                    );
                    None
                }
            }
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    if tests.len() != 1 {
        cx.err(
            n.pos,
            "`when` needs exactly one of `equals`, `in`, `not_in`, `present`, `in_table`",
            "",
        );
        return None;
    }
    let ignore_case = matches!(
        n.get("ignore_case").map(|v| &v.kind),
        Some(Kind::Bool(true))
    );
    let test = tests.into_iter().next().expect("one");
    if ignore_case && !matches!(test, Test::In(_) | Test::NotIn(_)) {
        cx.err(
            n.pos,
            "`ignore_case` applies to `equals`, `in` and `not_in`",
            "code tables compare ignoring case with their own `ignore_case: true`",
        );
    }
    Some(Cond {
        chain,
        test,
        ignore_case,
    })
}

fn filters_of(cx: &mut Cx, n: Option<&Node>, many: &mut bool) -> Vec<Filter> {
    let Some(n) = n else { return Vec::new() };
    let items: Vec<&Node> = match &n.kind {
        Kind::Seq(items) => items.iter().collect(),
        _ => vec![n],
    };
    let mut out = Vec::new();
    for it in items {
        let (name, arg, pos) = match &it.kind {
            Kind::Str(s) => (s.clone(), None, it.pos),
            Kind::Map(m) if m.len() == 1 => (
                m[0].0.scalar_text().unwrap_or_default(),
                Some(&m[0].1),
                m[0].0.pos,
            ),
            _ => {
                cx.err(
                    it.pos,
                    "a filter is a name (`trim`) or a name with an argument (`{default: routine}`)",
                    "",
                );
                continue;
            }
        };
        let text_arg = |cx: &mut Cx| -> Option<String> {
            match arg.and_then(|a| a.scalar_text()) {
                Some(s) => Some(s),
                None => {
                    cx.err(
                        pos,
                        format!("filter `{name}` needs an argument, e.g. `{{{name}: ...}}`"),
                        "",
                    );
                    None
                }
            }
        };
        let time = |cx: &mut Cx| -> Option<TimeOut> {
            let a = text_arg(cx)?;
            let t = TimeOut::parse(&a);
            if t.is_none() {
                cx.err(
                    pos,
                    format!(
                        "filter `{name}`: output must be instant, offset, hl7, date or hl7_date"
                    ),
                    "",
                );
            }
            t
        };
        let no_arg = |cx: &mut Cx, f: Filter| -> Option<Filter> {
            if arg.is_some() {
                cx.err(
                    pos,
                    format!("filter `{name}` takes no argument"),
                    format!("write just `{name}`"),
                );
            }
            Some(f)
        };
        let f = match name.as_str() {
            "trim" => no_arg(cx, Filter::Trim),
            "upper" => no_arg(cx, Filter::Upper),
            "lower" => no_arg(cx, Filter::Lower),
            "required" => no_arg(cx, Filter::Required),
            "first" => {
                *many = false;
                no_arg(cx, Filter::First)
            }
            "base64_decode" => no_arg(cx, Filter::Base64Decode),
            "rank" => {
                *many = false;
                let order: Vec<String> = match arg.map(|a| &a.kind) {
                    Some(Kind::Seq(items)) => {
                        items.iter().filter_map(|i| i.scalar_text()).collect()
                    }
                    _ => Vec::new(),
                };
                if order.is_empty() {
                    cx.err(
                        pos,
                        "filter `rank` needs a list of values, first ranked first",
                        "e.g. `{rank: [preliminary, final]}`",
                    );
                    None
                } else {
                    Some(Filter::Rank(order))
                }
            }
            "default" => text_arg(cx).map(Filter::Default),
            "prefix" => text_arg(cx).map(Filter::Prefix),
            "suffix" => text_arg(cx).map(Filter::Suffix),
            "join" => {
                *many = false;
                text_arg(cx).map(Filter::Join)
            }
            "split" => {
                *many = true;
                text_arg(cx).map(Filter::Split)
            }
            "table" => text_arg(cx).and_then(|t| match cx.table_names.get(&t) {
                Some(&(i, _)) => Some(Filter::Table(i)),
                None => {
                    let names: Vec<&str> = cx.table_names.keys().map(String::as_str).collect();
                    let hint = if names.is_empty() {
                        "define it under `tables:`".to_string()
                    } else {
                        fhir::hint_for(&t, &names)
                    };
                    cx.err(pos, format!("unknown code table `{t}`"), hint);
                    None
                }
            }),
            "site_time" => time(cx).map(Filter::SiteTime),
            "instant" => time(cx).map(Filter::Instant),
            "hl7_time" => time(cx).map(Filter::Hl7Time),
            "date" => time(cx).map(Filter::Date),
            "site_time_end" => time(cx).map(Filter::SiteTimeEnd),
            "single_line" => no_arg(cx, Filter::SingleLine),
            "hl7_max_length" => text_arg(cx).and_then(|a| match a.parse::<usize>() {
                Ok(n) if n >= 2 => Some(Filter::Hl7MaxLength(n)),
                _ => {
                    cx.err(
                        pos,
                        "filter `hl7_max_length` needs a number of characters (2 or more)",
                        "e.g. `{hl7_max_length: 300}` for an ST field of 300",
                    );
                    None
                }
            }),
            "name" => text_arg(cx).and_then(|a| {
                let p = match a.as_str() {
                    "family" => NamePart::Family,
                    "given" => NamePart::Given,
                    "middle" => NamePart::Middle,
                    "prefix" => NamePart::Prefix,
                    "suffix" => NamePart::Suffix,
                    "text" => NamePart::Text,
                    _ => {
                        cx.err(
                            pos,
                            "filter `name`: part must be family, given, middle, prefix, suffix or text",
                            "",
                        );
                        return None;
                    }
                };
                Some(Filter::Name(p))
            }),
            "hl7_name" => text_arg(cx).and_then(|a| match a.as_str() {
                "xpn" => Some(Filter::Hl7Name(Hl7NameKind::Xpn)),
                "xcn" | "cnn" | "ndl" => Some(Filter::Hl7Name(Hl7NameKind::Xcn)),
                _ => {
                    cx.err(
                        pos,
                        "filter `hl7_name`: layout must be xpn, xcn, cnn or ndl",
                        "",
                    );
                    None
                }
            }),
            other => {
                cx.err(
                    pos,
                    format!("unknown filter `{other}`"),
                    fhir::hint_for(other, super::filters::NAMES),
                );
                None
            }
        };
        out.extend(f);
    }
    out
}

fn check_value_type(
    cx: &mut Cx,
    n: &Node,
    target: &Target,
    source: &Source,
    filters: &[Filter],
    scope: &Scope<'_>,
) {
    let Target::Fhir(ft) = target else {
        if let (Target::Report(ReportField::ReportStatus), Source::Const(c)) = (target, source)
            && !matches!(c.to_lowercase().as_str(), "preliminary" | "final")
        {
            cx.err(
                n.pos,
                "reportStatus must be `preliminary` or `final`",
                "map other codes with a table, e.g. `{table: result_status}`",
            );
        }
        return;
    };
    let pos = n.get("value").map_or(n.pos, |v| v.pos);
    // The last table filter decides the codes a table-fed target can receive.
    let last_table = filters.iter().rev().find_map(|f| match f {
        Filter::Table(i) => Some(*i),
        _ => None,
    });
    let element = ft.text.rsplit('.').next().unwrap_or("");
    if !ft.text.contains('.')
        && let Some(codes) = fhir::required_binding(scope.resource, element)
    {
        if let Source::Const(c) = source
            && filters.is_empty()
            && !codes.contains(&c.as_str())
        {
            cx.err(
                pos,
                format!("`{c}` is not a valid {}.{element} code", scope.resource),
                format!("one of: {}", codes.join(", ")),
            );
        }
        if let Some(i) = last_table {
            let t = cx.tables[i].clone();
            let tname = t.name.clone();
            let tpos = cx.table_names.get(&tname).map_or(pos, |x| x.1);
            // Each bad code is reported at its own line, in the table's own file. An empty
            // value means "no value" (the rule writes nothing), not a code.
            let meta = &cx.table_meta[i];
            let mut bad: Vec<(PathBuf, Pos, String)> = meta
                .values
                .iter()
                .filter(|(_, v, _)| !v.is_empty() && !codes.contains(&v.as_str()))
                .map(|(k, v, p)| (meta.file.clone(), *p, format!("`{v}` (for `{k}`)")))
                .collect();
            if let Some(d) = &t.default
                && !codes.contains(&d.as_str())
            {
                let (file, at) = meta.default_at.clone().unwrap_or((cx.file.clone(), tpos));
                bad.push((file, at, format!("the default `{d}`")));
            }
            let used_by = format!("{} line {}", cx.fname, pos.line);
            for (file, at, what) in bad {
                cx.err_in(
                    file,
                    at,
                    format!(
                        "table `{tname}`: {what} is not a valid {}.{element} code (the table feeds it at {used_by})",
                        scope.resource
                    ),
                    format!("allowed: {}", codes.join(", ")),
                );
            }
            if t.policy == Policy::PassThrough {
                cx.err(tpos, format!("table `{tname}` feeds the coded element {}.{element} with `unmapped: pass_through`", scope.resource), "an unmapped value would make an invalid resource: use `unmapped: default` or `error`");
            }
        }
    }
    if let (Ty::Prim(p, tn), Source::Const(c)) = (ft.ty, source) {
        let ok = match p {
            Prim::Bool => matches!(c.as_str(), "true" | "false"),
            Prim::Int => c.parse::<i64>().is_ok(),
            Prim::Decimal => c.parse::<f64>().is_ok(),
            Prim::Str => true,
        };
        if !ok && filters.is_empty() {
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
