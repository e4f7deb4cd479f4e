//! Pass 1 of 4, **parse**: a mapping file's YAML (and the YAML of the table files it names)
//! into a syntax tree that keeps the position of every value.
//!
//! This pass knows the shape of the language — which keys a rule, a segment or a table may
//! have, what is a list, what is text — and nothing of its meaning: source paths, targets
//! and filter names stay text for [`super::resolve`]. A table file is read through the
//! [`Sources`] of the whole set, so each file is read once and the set's version hashes
//! exactly the bytes compiled; a table file that cannot be read or parsed is recorded as
//! broken, so that the rules naming the table are not reported again as "unknown table".

use std::path::{Path, PathBuf};

use super::diag::{Diags, Stage};
use super::source::Sources;
use super::yaml::{Kind, Node, Pos};

/// A value with the position it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sp<T> {
    /// Where the value starts.
    pub pos: Pos,
    /// The value.
    pub val: T,
}

impl<T> Sp<T> {
    fn new(pos: Pos, val: T) -> Sp<T> {
        Sp { pos, val }
    }
}

/// Text as written, with its position.
pub type Text = Sp<String>;

/// One mapping file.
#[derive(Debug, Clone, Default)]
pub struct FileAst {
    /// Position of the document (top-level problems point here).
    pub root: Pos,
    /// `mapping:`
    pub mapping: Option<Text>,
    /// `input:`
    pub input: Option<Text>,
    /// `output:`
    pub output: Option<Text>,
    /// `resource:`
    pub resource: Option<Text>,
    /// `message:`
    pub message: Option<Text>,
    /// `version:`
    pub version: Option<Text>,
    /// `line_breaks:`
    pub line_breaks: Option<Text>,
    /// `extra_fields:` input paths.
    pub extra_fields: Vec<Text>,
    /// `not_sent:` field → reason.
    pub not_sent: Vec<(Text, Text)>,
    /// Whether `not_sent` was written (for "only for" checks).
    pub not_sent_pos: Option<Pos>,
    /// `tables:`
    pub tables: Vec<TableAst>,
    /// `contained:` (position of the key's value when written).
    pub contained: Option<Sp<Vec<ContainedAst>>>,
    /// `rules:`
    pub rules: Option<Sp<Vec<RuleAst>>>,
    /// `segments:`
    pub segments: Option<Sp<Vec<SegmentAst>>>,
    /// `custom_segments:`
    pub custom_segments: Option<Sp<Vec<CustomSegmentAst>>>,
    /// `custom_fields:`
    pub custom_fields: Option<Sp<Vec<CustomFieldAst>>>,
}

/// A code table, written inline or in its own file.
#[derive(Debug, Clone)]
pub struct TableAst {
    /// Its name (position of the key).
    pub name: Text,
    /// Its content; `None` when its file could not be read or parsed (already reported).
    pub body: Option<TableBody>,
}

/// What a table says.
#[derive(Debug, Clone, Default)]
pub struct TableBody {
    /// Position of the table (inline) or of its file's document.
    pub pos: Pos,
    /// The file its keys and values are written in.
    pub file: PathBuf,
    /// `values:` key → value, in order; `None` when not text (already reported).
    pub values: Vec<(Text, Text)>,
    /// Whether `values:` was written.
    pub has_values: bool,
    /// The file and line of `values:`: where an analyst adds a value the table lacks.
    pub values_at: Option<(PathBuf, u32)>,
    /// `unmapped:`
    pub unmapped: Option<Text>,
    /// `default:`
    pub default: Option<Text>,
    /// The file `default:` is written in.
    pub default_file: Option<PathBuf>,
    /// `ignore_case: true`
    pub ignore_case: bool,
    /// `require_keys:`
    pub require_keys: Vec<Text>,
    /// `system:`
    pub system: Option<String>,
    /// `synonyms:`
    pub synonyms: Vec<Vec<String>>,
}

/// Where a rule's value comes from, as written.
#[derive(Debug, Clone)]
pub enum SourceAst {
    /// None of `from`, `value`, `template`.
    Missing,
    /// More than one of them (their names).
    Several(Vec<&'static str>),
    /// `value:`
    Value(Text),
    /// `template:`
    Template(Text),
    /// `from:` as one text (possibly `a | b`).
    From(Text),
    /// `from:` as a list; each item a path text or `{from, filters}`.
    FromList(Pos, Vec<FromItem>),
}

/// One item of a `from:` list.
#[derive(Debug, Clone)]
pub enum FromItem {
    /// A path, chain or template, as text.
    Plain(Text),
    /// `{from: ..., filters: [...]}`: an alternative with its own filters.
    Staged {
        /// Position of the item.
        pos: Pos,
        /// Its `from:`.
        from: Text,
        /// Its filters.
        filters: Vec<FilterAst>,
    },
}

/// A filter as written: `trim` or `{table: priority}`.
#[derive(Debug, Clone)]
pub struct FilterAst {
    /// Position of its name.
    pub pos: Pos,
    /// Its name.
    pub name: String,
    /// Its argument.
    pub arg: Option<ArgAst>,
}

/// A filter's argument.
#[derive(Debug, Clone)]
pub enum ArgAst {
    /// Text (numbers and booleans as written).
    Text(Text),
    /// A list of texts.
    List(Pos, Vec<Text>),
    /// Something else (a mapping, null).
    Other(Pos),
}

impl ArgAst {
    /// The argument as text, when it is.
    pub fn text(&self) -> Option<&str> {
        match self {
            ArgAst::Text(t) => Some(&t.val),
            _ => None,
        }
    }
}

/// A condition (`when`, `where`) as written.
#[derive(Debug, Clone)]
pub struct CondAst {
    /// Position of the condition.
    pub pos: Pos,
    /// What it is.
    pub kind: CondKind,
}

/// The kinds of condition.
#[derive(Debug, Clone)]
pub enum CondKind {
    /// `{from: ..., <test>, ignore_case}`.
    Test {
        /// The value tested.
        from: Text,
        /// The test.
        test: TestAst,
        /// `ignore_case: true`.
        ignore_case: bool,
    },
    /// `any: [...]`
    Any(Vec<CondAst>),
    /// `all: [...]`
    All(Vec<CondAst>),
    /// `not: {...}`
    Not(Box<CondAst>),
}

/// One test of a condition.
#[derive(Debug, Clone)]
pub enum TestAst {
    /// `equals: v`
    Equals(Vec<String>),
    /// `in: [..]`
    In(Vec<String>),
    /// `not_in: [..]`
    NotIn(Vec<String>),
    /// `present: true|false`
    Present(bool),
    /// `in_table: name`
    InTable(Text),
}

/// One rule.
#[derive(Debug, Clone)]
pub struct RuleAst {
    /// Position of the rule.
    pub pos: Pos,
    /// `min_version:`
    pub min_version: Option<Text>,
    /// `target:`
    pub target: Option<Text>,
    /// The source.
    pub source: SourceAst,
    /// `filters:` (position of the list when written).
    pub filters: Vec<FilterAst>,
    /// Position of `filters:` when written.
    pub filters_pos: Option<Pos>,
    /// `when:`
    pub when: Option<CondAst>,
    /// `for_each:`
    pub for_each: Option<Text>,
    /// `as:`
    pub alias: Option<Text>,
    /// `where:`
    pub where_: Option<CondAst>,
    /// `rules:` of a `for_each`.
    pub rules: Option<Sp<Vec<RuleAst>>>,
}

/// One segment of an HL7 mapping.
#[derive(Debug, Clone)]
pub struct SegmentAst {
    /// Position of the entry.
    pub pos: Pos,
    /// `segment:`
    pub id: Option<Text>,
    /// `min_version:`
    pub min_version: Option<Text>,
    /// `when:`
    pub when: Option<CondAst>,
    /// `for_each:`
    pub for_each: Option<Text>,
    /// `as:`
    pub alias: Option<Text>,
    /// `where:`
    pub where_: Option<CondAst>,
    /// `rules:`
    pub rules: Option<Sp<Vec<RuleAst>>>,
}

/// A contained resource of a FHIR mapping.
#[derive(Debug, Clone)]
pub struct ContainedAst {
    /// Position of the entry.
    pub pos: Pos,
    /// `resource:`
    pub resource: Option<Text>,
    /// `id:`
    pub id: Option<Text>,
    /// `when:`
    pub when: Option<CondAst>,
    /// `rules:`
    pub rules: Option<Sp<Vec<RuleAst>>>,
}

/// A custom (Z) segment declared by an HL7 mapping.
#[derive(Debug, Clone)]
pub struct CustomSegmentAst {
    /// Position of the entry.
    pub pos: Pos,
    /// `segment:` e.g. `ZDS`.
    pub id: Option<Text>,
    /// `after:` the segment it follows in the message structure.
    pub after: Option<Text>,
    /// `description:`
    pub description: Option<Text>,
    /// `fields:`
    pub fields: Vec<FieldDeclAst>,
    /// Position of `fields:` (or of the entry).
    pub fields_pos: Pos,
}

/// A field declared for a custom segment or added to a standard one.
#[derive(Debug, Clone)]
pub struct FieldDeclAst {
    /// Position of the entry.
    pub pos: Pos,
    /// `segment:` (only for `custom_fields`).
    pub segment: Option<Text>,
    /// `field:` its number.
    pub field: Option<Text>,
    /// `name:`
    pub name: Option<Text>,
    /// `datatype:`
    pub datatype: Option<Text>,
    /// `length:`
    pub length: Option<Text>,
    /// `required: true`
    pub required: bool,
}

/// An extra field declared for a standard segment (`custom_fields:`).
pub type CustomFieldAst = FieldDeclAst;

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
    "custom_segments",
    "custom_fields",
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
const COND_KEYS: &[&str] = &[
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
];
const CONTAINED_KEYS: &[&str] = &["resource", "id", "when", "rules", "description"];
const CUSTOM_SEGMENT_KEYS: &[&str] = &["segment", "after", "description", "fields"];
const FIELD_DECL_KEYS: &[&str] = &[
    "field",
    "name",
    "datatype",
    "length",
    "required",
    "description",
];
const CUSTOM_FIELD_KEYS: &[&str] = &[
    "segment",
    "field",
    "name",
    "datatype",
    "length",
    "required",
    "description",
];

/// The parser's state for one file.
struct Parser<'d, 's> {
    file: PathBuf,
    diags: &'d mut Diags,
    sources: &'s mut Sources,
}

impl Parser<'_, '_> {
    fn err(&mut self, pos: Pos, message: impl Into<String>, hint: impl Into<String>) {
        self.diags
            .error(Stage::Parse, &self.file, pos, message, hint);
    }

    /// Reports keys of `n` that are not in `allowed`; false when `n` is not a mapping.
    fn keys(&mut self, n: &Node, allowed: &[&str], what: &str) -> bool {
        let Kind::Map(m) = &n.kind else {
            self.err(
                n.pos,
                format!("{what} must be a mapping, found {}", n.type_name()),
                "",
            );
            return false;
        };
        for (k, _) in m {
            let name = k.scalar_text().unwrap_or_default();
            if !allowed.contains(&name.as_str()) {
                let hint = super::fhir::hint_for(&name, allowed);
                self.err(k.pos, format!("unknown key `{name}` in {what}"), hint);
            }
        }
        true
    }

    fn text(&mut self, n: &Node, what: &str) -> Option<Text> {
        match n.scalar_text() {
            Some(s) => Some(Sp::new(n.pos, s)),
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

    fn opt_text(&mut self, n: &Node, key: &str, what: &str) -> Option<Text> {
        n.get(key).and_then(|v| self.text(v, what))
    }

    fn list<'n>(&mut self, n: &'n Node, what: &str, hint: &str) -> Option<&'n [Node]> {
        match &n.kind {
            Kind::Seq(items) => Some(items),
            _ => {
                self.err(n.pos, format!("{what} must be a list"), hint);
                None
            }
        }
    }
}

/// Parses one mapping file's text. Problems go to `diags`; the tree holds what could be read.
pub fn parse_file(
    file: &Path,
    text: &str,
    sources: &mut Sources,
    diags: &mut Diags,
) -> Option<FileAst> {
    let root = match super::yaml::parse(text) {
        Ok(n) => n,
        Err((pos, msg)) => {
            diags.error(
                Stage::Read,
                file,
                pos,
                format!("YAML syntax: {msg}"),
                "check indentation and quoting around this position",
            );
            return None;
        }
    };
    let mut p = Parser {
        file: file.to_path_buf(),
        diags,
        sources,
    };
    let mut ast = FileAst {
        root: root.pos,
        ..FileAst::default()
    };
    if !p.keys(&root, FILE_KEYS, "the mapping file") {
        return Some(ast);
    }
    ast.mapping = p.opt_text(&root, "mapping", "`mapping`");
    ast.input = p.opt_text(&root, "input", "`input`");
    ast.output = p.opt_text(&root, "output", "`output`");
    ast.resource = p.opt_text(&root, "resource", "`resource`");
    ast.message = p.opt_text(&root, "message", "`message`");
    ast.version = p.opt_text(&root, "version", "`version`");
    ast.line_breaks = p.opt_text(&root, "line_breaks", "`line_breaks`");
    if let Some(n) = root.get("extra_fields") {
        match &n.kind {
            Kind::Seq(items) => {
                for it in items {
                    if let Some(t) = p.text(it, "an extra field") {
                        ast.extra_fields.push(t);
                    }
                }
            }
            _ => p.err(n.pos, "`extra_fields` must be a list of paths", ""),
        }
    }
    if let Some(n) = root.get("not_sent") {
        ast.not_sent_pos = Some(n.pos);
        match &n.kind {
            Kind::Map(entries) => {
                for (k, v) in entries {
                    ast.not_sent.push((
                        Sp::new(k.pos, k.scalar_text().unwrap_or_default()),
                        Sp::new(v.pos, v.scalar_text().unwrap_or_default()),
                    ));
                }
            }
            _ => p.err(
                n.pos,
                "`not_sent` must map input fields to the reason they are not sent",
                "e.g. `appointment.attendedBy: QUBS user object; no output field for it`",
            ),
        }
    }
    if let Some(t) = root.get("tables") {
        ast.tables = tables(&mut p, t);
    }
    if let Some(n) = root.get("contained") {
        let items = match &n.kind {
            Kind::Seq(items) => items
                .iter()
                .filter_map(|it| contained(&mut p, it))
                .collect(),
            _ => {
                p.err(
                    n.pos,
                    "`contained` must be a list of resources",
                    "each item has `resource:`, `id:` and `rules:`",
                );
                Vec::new()
            }
        };
        ast.contained = Some(Sp::new(n.pos, items));
    }
    if let Some(n) = root.get("rules") {
        ast.rules = Some(rules(&mut p, n));
    }
    if let Some(n) = root.get("segments") {
        let items = match p.list(n, "`segments`", "") {
            Some(items) => items.iter().filter_map(|it| segment(&mut p, it)).collect(),
            None => Vec::new(),
        };
        ast.segments = Some(Sp::new(n.pos, items));
    }
    if let Some(n) = root.get("custom_segments") {
        let items = match p.list(
            n,
            "`custom_segments`",
            "each item declares one segment: `segment`, `after`, `fields`",
        ) {
            Some(items) => items
                .iter()
                .filter_map(|it| custom_segment(&mut p, it))
                .collect(),
            None => Vec::new(),
        };
        ast.custom_segments = Some(Sp::new(n.pos, items));
    }
    if let Some(n) = root.get("custom_fields") {
        let items = match p.list(
            n,
            "`custom_fields`",
            "each item declares one field: `segment`, `field`, `datatype`, `length`",
        ) {
            Some(items) => items
                .iter()
                .filter_map(|it| field_decl(&mut p, it, CUSTOM_FIELD_KEYS, "a custom field"))
                .collect(),
            None => Vec::new(),
        };
        ast.custom_fields = Some(Sp::new(n.pos, items));
    }
    Some(ast)
}

fn tables(p: &mut Parser<'_, '_>, n: &Node) -> Vec<TableAst> {
    let Kind::Map(entries) = &n.kind else {
        p.err(n.pos, "`tables` must map table names to tables", "");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in entries {
        let name = Sp::new(k.pos, k.scalar_text().unwrap_or_default());
        let body = table(p, &name.val, v);
        out.push(TableAst { name, body });
    }
    out
}

/// A table's keys, from the mapping file and (with `file:`) its own file, merged: what the
/// file says comes after what is written inline.
fn table(p: &mut Parser<'_, '_>, name: &str, v: &Node) -> Option<TableBody> {
    let mut entries: Vec<(&Node, &Node, PathBuf)> = Vec::new();
    let mut pos = v.pos;
    let mut values_file = p.file.clone();
    let loaded;
    match &v.kind {
        Kind::Map(m) => {
            for (k, x) in m {
                if k.as_str() != Some("file") {
                    entries.push((k, x, p.file.clone()));
                }
            }
        }
        _ => {
            p.err(
                v.pos,
                format!("table `{name}` must be a mapping with `values`"),
                "",
            );
            return None;
        }
    }
    if let Some(f) = v.get("file") {
        let rel = f.scalar_text().unwrap_or_default();
        let path = p.file.parent().unwrap_or(Path::new(".")).join(&rel);
        let text = match p.sources.read(&path) {
            Ok(t) => t,
            Err(why) => {
                p.diags.error(
                    Stage::Read,
                    &p.file,
                    f.pos,
                    format!("table file `{rel}` cannot be read ({why})"),
                    "paths are relative to this mapping file",
                );
                return None;
            }
        };
        match super::yaml::parse(&text) {
            Ok(node) => loaded = node,
            Err((epos, msg)) => {
                p.diags.error(
                    Stage::Read,
                    &path,
                    epos,
                    format!("YAML syntax: {msg}"),
                    "check indentation and quoting around this position",
                );
                return None;
            }
        }
        match &loaded.kind {
            Kind::Map(m) => {
                for (k, x) in m {
                    entries.push((k, x, path.clone()));
                }
            }
            _ => {
                p.diags.error(
                    Stage::Parse,
                    &path,
                    loaded.pos,
                    format!(
                        "table `{name}` must be a mapping with `values`, found {}",
                        loaded.type_name()
                    ),
                    "",
                );
                return None;
            }
        }
        pos = loaded.pos;
        values_file = path;
    }
    let mut body = TableBody {
        pos,
        file: values_file.clone(),
        ..TableBody::default()
    };
    let what = format!("table `{name}`");
    for (k, x, file) in &entries {
        let key = k.scalar_text().unwrap_or_default();
        let err = |p: &mut Parser<'_, '_>, at: Pos, m: String, h: &str| {
            p.diags.error(Stage::Parse, file, at, m, h);
        };
        match key.as_str() {
            "values" => {
                body.has_values = true;
                body.values_at = Some((PathBuf::from(&**file), k.pos.line));
                match &x.kind {
                    Kind::Map(vals) => {
                        for (vk, vv) in vals {
                            match (vk.scalar_text(), vv.scalar_text()) {
                                (Some(a), Some(b)) => {
                                    body.values.push((Sp::new(vk.pos, a), Sp::new(vv.pos, b)))
                                }
                                _ => err(
                                    p,
                                    vk.pos,
                                    format!("table `{name}`: keys and values must be text"),
                                    "",
                                ),
                            }
                        }
                    }
                    _ => err(
                        p,
                        x.pos,
                        format!("table `{name}`: `values` must map codes to codes"),
                        "",
                    ),
                }
            }
            "unmapped" => body.unmapped = x.scalar_text().map(|t| Sp::new(x.pos, t)),
            "default" => {
                body.default = x.scalar_text().map(|t| Sp::new(x.pos, t));
                body.default_file = Some(PathBuf::from(&**file));
            }
            "ignore_case" => body.ignore_case = matches!(x.kind, Kind::Bool(true)),
            "system" => body.system = x.scalar_text(),
            "description" => {}
            "require_keys" => match &x.kind {
                Kind::Seq(keys) => body.require_keys.extend(
                    keys.iter()
                        .map(|k| Sp::new(k.pos, k.scalar_text().unwrap_or_default())),
                ),
                _ => err(p, x.pos, "`require_keys` must be a list".into(), ""),
            },
            "synonyms" => match &x.kind {
                Kind::Seq(groups) => {
                    for g in groups {
                        match &g.kind {
                            Kind::Seq(keys) => body
                                .synonyms
                                .push(keys.iter().filter_map(|k| k.scalar_text()).collect()),
                            _ => err(
                                p,
                                g.pos,
                                format!("table `{name}`: each `synonyms` entry is a list of keys"),
                                "e.g. `synonyms: [[MR, MRI], [XR, CR, DX]]`",
                            ),
                        }
                    }
                }
                _ => err(
                    p,
                    x.pos,
                    format!("table `{name}`: `synonyms` must be a list of lists of keys"),
                    "e.g. `synonyms: [[MR, MRI], [XR, CR, DX]]`",
                ),
            },
            other => {
                let hint = super::fhir::hint_for(other, TABLE_KEYS);
                err(p, k.pos, format!("unknown key `{other}` in {what}"), &hint);
            }
        }
    }
    Some(body)
}

fn contained(p: &mut Parser<'_, '_>, it: &Node) -> Option<ContainedAst> {
    if !p.keys(it, CONTAINED_KEYS, "a contained resource") {
        return None;
    }
    Some(ContainedAst {
        pos: it.pos,
        resource: p.opt_text(it, "resource", "`resource`"),
        id: p.opt_text(it, "id", "`id`"),
        when: it.get("when").and_then(|w| cond(p, w)),
        rules: it.get("rules").map(|n| rules(p, n)),
    })
}

fn rules(p: &mut Parser<'_, '_>, n: &Node) -> Sp<Vec<RuleAst>> {
    let Kind::Seq(items) = &n.kind else {
        p.err(
            n.pos,
            "`rules` must be a list of rules",
            "start each rule with `- target: ...`",
        );
        return Sp::new(n.pos, Vec::new());
    };
    Sp::new(n.pos, items.iter().filter_map(|it| rule(p, it)).collect())
}

fn rule(p: &mut Parser<'_, '_>, n: &Node) -> Option<RuleAst> {
    if !p.keys(n, RULE_KEYS, "a rule") {
        return None;
    }
    let found: Vec<&'static str> = ["from", "value", "template"]
        .into_iter()
        .filter(|k| n.get(k).is_some())
        .collect();
    let source = match found.as_slice() {
        [] => SourceAst::Missing,
        ["value"] => match p.opt_text(n, "value", "`value`") {
            Some(t) => SourceAst::Value(t),
            None => return None,
        },
        ["template"] => match p.opt_text(n, "template", "`template`") {
            Some(t) => SourceAst::Template(t),
            None => return None,
        },
        ["from"] => {
            let v = n.get("from").expect("found");
            match &v.kind {
                Kind::Seq(items) => {
                    let mut out = Vec::new();
                    for it in items {
                        match &it.kind {
                            Kind::Map(_) => {
                                p.keys(it, &["from", "filters"], "a `from` alternative");
                                let Some(f) = it.get("from").and_then(|f| p.text(f, "`from`"))
                                else {
                                    p.err(
                                        it.pos,
                                        "an alternative written as a mapping needs `from:`",
                                        "e.g. `- {from: appointment.doctorName, filters: [{name: family}]}`",
                                    );
                                    continue;
                                };
                                let filters = it.get("filters").map(|f| filters(p, f));
                                out.push(FromItem::Staged {
                                    pos: it.pos,
                                    from: f,
                                    filters: filters.unwrap_or_default(),
                                });
                            }
                            _ => match it.scalar_text() {
                                Some(t) => out.push(FromItem::Plain(Sp::new(it.pos, t))),
                                None => p.err(
                                    it.pos,
                                    "a `from` alternative must be a path or a mapping",
                                    "",
                                ),
                            },
                        }
                    }
                    SourceAst::FromList(v.pos, out)
                }
                _ => match p.text(v, "`from`") {
                    Some(t) => SourceAst::From(t),
                    None => return None,
                },
            }
        }
        several => SourceAst::Several(several.to_vec()),
    };
    Some(RuleAst {
        pos: n.pos,
        min_version: n
            .get("min_version")
            .map(|mv| Sp::new(mv.pos, mv.scalar_text().unwrap_or_default())),
        target: p.opt_text(n, "target", "`target`"),
        source,
        filters_pos: n.get("filters").map(|f| f.pos),
        filters: n.get("filters").map(|f| filters(p, f)).unwrap_or_default(),
        when: n.get("when").and_then(|w| cond(p, w)),
        for_each: n
            .get("for_each")
            .map(|f| Sp::new(f.pos, f.as_str().map(str::to_string).unwrap_or_default())),
        alias: n
            .get("as")
            .and_then(|a| a.scalar_text().map(|t| Sp::new(a.pos, t))),
        where_: n.get("where").and_then(|w| cond(p, w)),
        rules: n.get("rules").map(|r| rules(p, r)),
    })
}

fn segment(p: &mut Parser<'_, '_>, it: &Node) -> Option<SegmentAst> {
    if !p.keys(it, SEGMENT_KEYS, "a segment") {
        return None;
    }
    Some(SegmentAst {
        pos: it.pos,
        id: p.opt_text(it, "segment", "`segment`"),
        min_version: it
            .get("min_version")
            .map(|mv| Sp::new(mv.pos, mv.scalar_text().unwrap_or_default())),
        when: it.get("when").and_then(|w| cond(p, w)),
        for_each: it
            .get("for_each")
            .map(|f| Sp::new(f.pos, f.as_str().map(str::to_string).unwrap_or_default())),
        alias: it
            .get("as")
            .and_then(|a| a.scalar_text().map(|t| Sp::new(a.pos, t))),
        where_: it.get("where").and_then(|w| cond(p, w)),
        rules: it.get("rules").map(|r| rules(p, r)),
    })
}

fn custom_segment(p: &mut Parser<'_, '_>, it: &Node) -> Option<CustomSegmentAst> {
    if !p.keys(it, CUSTOM_SEGMENT_KEYS, "a custom segment") {
        return None;
    }
    let mut fields = Vec::new();
    let mut fields_pos = it.pos;
    if let Some(f) = it.get("fields") {
        fields_pos = f.pos;
        if let Some(items) = p.list(
            f,
            "`fields`",
            "e.g. `fields: [{field: 1, name: Study Instance UID, datatype: ST, length: 64}]`",
        ) {
            fields = items
                .iter()
                .filter_map(|x| field_decl(p, x, FIELD_DECL_KEYS, "a field of a custom segment"))
                .collect();
        }
    }
    Some(CustomSegmentAst {
        pos: it.pos,
        id: p.opt_text(it, "segment", "`segment`"),
        after: p.opt_text(it, "after", "`after`"),
        description: p.opt_text(it, "description", "`description`"),
        fields,
        fields_pos,
    })
}

fn field_decl(
    p: &mut Parser<'_, '_>,
    it: &Node,
    allowed: &[&str],
    what: &str,
) -> Option<FieldDeclAst> {
    if !p.keys(it, allowed, what) {
        return None;
    }
    Some(FieldDeclAst {
        pos: it.pos,
        segment: p.opt_text(it, "segment", "`segment`"),
        field: p.opt_text(it, "field", "`field`"),
        name: p.opt_text(it, "name", "`name`"),
        datatype: p.opt_text(it, "datatype", "`datatype`"),
        length: p.opt_text(it, "length", "`length`"),
        required: matches!(it.get("required").map(|r| &r.kind), Some(Kind::Bool(true))),
    })
}

fn filters(p: &mut Parser<'_, '_>, n: &Node) -> Vec<FilterAst> {
    let items: Vec<&Node> = match &n.kind {
        Kind::Seq(items) => items.iter().collect(),
        _ => vec![n],
    };
    let mut out = Vec::new();
    for it in items {
        match &it.kind {
            Kind::Str(s) => out.push(FilterAst {
                pos: it.pos,
                name: s.clone(),
                arg: None,
            }),
            Kind::Map(m) if m.len() == 1 => {
                let (k, v) = &m[0];
                let arg = match &v.kind {
                    Kind::Seq(items) => ArgAst::List(
                        v.pos,
                        items
                            .iter()
                            .filter_map(|i| i.scalar_text().map(|t| Sp::new(i.pos, t)))
                            .collect(),
                    ),
                    _ => match v.scalar_text() {
                        Some(t) => ArgAst::Text(Sp::new(v.pos, t)),
                        None => ArgAst::Other(v.pos),
                    },
                };
                out.push(FilterAst {
                    pos: k.pos,
                    name: k.scalar_text().unwrap_or_default(),
                    arg: Some(arg),
                });
            }
            _ => p.err(
                it.pos,
                "a filter is a name (`trim`) or a name with an argument (`{default: routine}`)",
                "",
            ),
        }
    }
    out
}

fn cond(p: &mut Parser<'_, '_>, n: &Node) -> Option<CondAst> {
    if !p.keys(n, COND_KEYS, "`when`") {
        return None;
    }
    let composite: Vec<&str> = ["any", "all", "not"]
        .into_iter()
        .filter(|k| n.get(k).is_some())
        .collect();
    if !composite.is_empty() {
        if composite.len() > 1 || n.get("from").is_some() {
            p.err(
                n.pos,
                "a condition is either one test (`from:` and a test) or one of `any`, `all`, `not`",
                "nest them: `{any: [{from: c.isAlert, equals: true}, {from: c.commentType, in: [AA, PA]}]}`",
            );
            return None;
        }
        let k = composite[0];
        let v = n.get(k).expect("present");
        let kind = if k == "not" {
            CondKind::Not(Box::new(cond(p, v)?))
        } else {
            let Kind::Seq(items) = &v.kind else {
                p.err(v.pos, format!("`{k}` needs a list of conditions"), "");
                return None;
            };
            if items.is_empty() {
                p.err(v.pos, format!("`{k}` needs at least one condition"), "");
                return None;
            }
            let inner: Vec<CondAst> = items.iter().filter_map(|i| cond(p, i)).collect();
            if inner.len() != items.len() {
                return None;
            }
            if k == "any" {
                CondKind::Any(inner)
            } else {
                CondKind::All(inner)
            }
        };
        return Some(CondAst { pos: n.pos, kind });
    }
    let Some(from) = n.get("from").and_then(|f| p.text(f, "`when.from`")) else {
        p.err(
            n.pos,
            "`when` needs `from:` (the value tested)",
            "e.g. `when: {from: comment.isAlert, equals: true}`",
        );
        return None;
    };
    let list = |p: &mut Parser<'_, '_>, v: &Node| -> Vec<String> {
        match &v.kind {
            Kind::Seq(items) => items.iter().filter_map(|i| i.scalar_text()).collect(),
            _ => match v.scalar_text() {
                Some(s) => vec![s],
                None => {
                    p.err(v.pos, "expected a value or a list of values", "");
                    vec![]
                }
            },
        }
    };
    let tests: Vec<TestAst> = [
        n.get("equals").map(|v| TestAst::Equals(list(p, v))),
        n.get("in").map(|v| TestAst::In(list(p, v))),
        n.get("not_in").map(|v| TestAst::NotIn(list(p, v))),
        n.get("present")
            .map(|v| TestAst::Present(!matches!(v.kind, Kind::Bool(false)))),
        n.get("in_table")
            .map(|v| TestAst::InTable(Sp::new(v.pos, v.scalar_text().unwrap_or_default()))),
    ]
    .into_iter()
    .flatten()
    .collect();
    if tests.len() != 1 {
        p.err(
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
    if ignore_case
        && !matches!(
            test,
            TestAst::Equals(_) | TestAst::In(_) | TestAst::NotIn(_)
        )
    {
        p.err(
            n.pos,
            "`ignore_case` applies to `equals`, `in` and `not_in`",
            "code tables compare ignoring case with their own `ignore_case: true`",
        );
    }
    Some(CondAst {
        pos: n.pos,
        kind: CondKind::Test {
            from,
            test,
            ignore_case,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<FileAst>, Vec<super::super::Diagnostic>) {
        let mut sources = Sources::default();
        let mut diags = Diags::default();
        let ast = parse_file(Path::new("/virtual/m.yaml"), text, &mut sources, &mut diags);
        (ast, diags.into_sorted())
    }

    #[test]
    fn keeps_positions_and_shapes() {
        let (ast, d) = parse(
            "mapping: m\ninput: order\noutput: hl7\nsegments:\n  - segment: PID\n    rules:\n      - target: PID-3.1\n        from: [appointment.patientId, {from: appointment.x, filters: [trim]}]\n        filters: [trim, {table: t}]\n        when: {any: [{from: a.b, in: [X, Y]}, {not: {from: a.c, present: true}}]}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        let ast = ast.unwrap();
        let segs = ast.segments.unwrap();
        let rule = &segs.val[0].rules.as_ref().unwrap().val[0];
        assert_eq!(
            rule.target.as_ref().unwrap().pos,
            Pos {
                line: 7,
                column: 17
            }
        );
        let SourceAst::FromList(_, items) = &rule.source else {
            panic!("a from list")
        };
        assert!(matches!(&items[1], FromItem::Staged { filters, .. } if filters[0].name == "trim"));
        assert_eq!(rule.filters[1].name, "table");
        assert_eq!(
            rule.filters[1].arg.as_ref().and_then(ArgAst::text),
            Some("t")
        );
        let Some(CondAst {
            kind: CondKind::Any(parts),
            ..
        }) = &rule.when
        else {
            panic!("an any")
        };
        assert!(matches!(parts[1].kind, CondKind::Not(_)));
    }

    #[test]
    fn shape_problems_are_reported_at_their_key() {
        let (_, d) = parse(
            "mapping: m\ninput: order\nrulez: []\nrules:\n  - target: x\n    frm: a\n  - 3\n",
        );
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert!(
            text[0].contains("m.yaml:3:1: error: unknown key `rulez`"),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("6:5: error: unknown key `frm` in a rule"))
        );
        assert!(text.iter().any(|t| t.contains("did you mean `from`")));
        assert!(text.iter().any(|t| t.contains("a rule must be a mapping")));
    }

    #[test]
    fn a_table_file_is_read_once_and_a_broken_one_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t.yaml"),
            "unmapped: error\nvalues: {a: b}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "values: [\n").unwrap();
        let mut sources = Sources::default();
        let mut diags = Diags::default();
        let text = "mapping: m\ntables:\n  a: {file: t.yaml}\n  b: {file: t.yaml}\n  c: {file: bad.yaml}\n";
        let ast = parse_file(&dir.path().join("m.yaml"), text, &mut sources, &mut diags).unwrap();
        assert_eq!(ast.tables.len(), 3);
        assert!(ast.tables[0].body.is_some() && ast.tables[2].body.is_none());
        assert_eq!(ast.tables[1].body.as_ref().unwrap().values[0].0.val, "a");
        // The good file was read once although two tables name it.
        std::fs::write(dir.path().join("t.yaml"), "changed: on disk\n").unwrap();
        let before = sources.version();
        let again = sources.read(&dir.path().join("t.yaml")).unwrap();
        assert!(
            again.contains("values"),
            "the text compiled, not the disk's new one"
        );
        assert_eq!(sources.version(), before);
        let d = diags.into_sorted();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].file.ends_with("bad.yaml") && d[0].message.starts_with("YAML syntax"));
    }

    #[test]
    fn custom_segments_and_fields() {
        let (ast, d) = parse(
            "custom_segments:\n  - segment: ZDS\n    after: OBR\n    fields:\n      - {field: 1, name: UID, datatype: RP, length: 64, required: true}\ncustom_fields:\n  - {segment: PID, field: 40, datatype: CX}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        let ast = ast.unwrap();
        let z = &ast.custom_segments.unwrap().val[0];
        assert_eq!(z.id.as_ref().unwrap().val, "ZDS");
        assert!(z.fields[0].required);
        assert_eq!(z.fields[0].length.as_ref().unwrap().val, "64");
        assert_eq!(
            ast.custom_fields.unwrap().val[0]
                .field
                .as_ref()
                .unwrap()
                .val,
            "40"
        );
    }
}
