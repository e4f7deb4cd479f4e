//! The resolved form of a mapping file: what [`super::resolve`] makes of the syntax tree
//! and what [`super::check`] and [`super::lower`] read. Every name is resolved here — source
//! paths parsed and checked against the input, targets against the output, tables and
//! filters by name — and every position needed for a later message is kept.

use std::path::PathBuf;
use std::sync::Arc;

use super::fhir::{FhirTarget, TStep};
use super::filters::{Filter, Table};
use super::hl7::Hl7Target;
use super::spec::{Alt, InputKind, JsonPath, OutputKind};
use super::yaml::Pos;
use super::{Diagnostic, ReportField};

/// Where a rule is written, for messages and traces: `file:line:col (target X)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// What a rule does.
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Writes one value.
    Value(Box<ValueRule>),
    /// Repeats its rules over a list.
    Each(Box<Each>),
}

/// A rule that writes a value.
#[derive(Debug, Clone)]
pub struct ValueRule {
    /// Source.
    pub source: Source,
    /// Filters in order.
    pub filters: Vec<Filter>,
    /// Target.
    pub target: Target,
    /// Position of the target.
    pub target_pos: Pos,
    /// Position of the `value:` (constants are reported there), else of the rule.
    pub value_pos: Pos,
    /// Whether the value is still a list after the filters (a type error on a value target).
    pub many: bool,
    /// Key under which "set twice" is checked (target, scoped to its segment, repeat and
    /// contained resource).
    pub key: String,
    /// The target as `mappings fields` shows it.
    pub shown: String,
}

/// A repeat over a list.
#[derive(Debug, Clone)]
pub struct Each {
    /// The list.
    pub over: JsonPath,
    /// Name the item is bound to.
    pub alias: String,
    /// FHIR: steps of the array each item appends to (`note` for `note[*]`).
    pub array: Option<Vec<TStep>>,
    /// `where`: only the items for which this holds.
    pub filter: Option<Cond>,
    /// Rules run per item.
    pub rules: Vec<Rule>,
}

/// One resolved rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Where it is written.
    pub at: RuleRef,
    /// Condition.
    pub when: Option<Cond>,
    /// What it does.
    pub kind: RuleKind,
}

impl Rule {
    /// The value rule, when it is one.
    pub fn value(&self) -> Option<&ValueRule> {
        match &self.kind {
            RuleKind::Value(v) => Some(v),
            RuleKind::Each(_) => None,
        }
    }
}

/// One segment of an HL7 output.
#[derive(Debug, Clone)]
pub struct Segment {
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
pub struct Contained {
    /// Resource type (`Patient`, `Practitioner`, `Location`).
    pub resource: String,
    /// Its `id`, which references name as `#id`.
    pub id: String,
    /// Condition.
    pub when: Option<Cond>,
    /// Rules, targeting the contained resource's elements.
    pub rules: Vec<Rule>,
}

/// A segment (or fields of a standard segment) declared by an HL7 mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomSegment {
    /// Segment id (`ZDS`), or the standard segment whose fields are extended.
    pub id: String,
    /// The segment it follows in the message structure (custom segments only).
    pub after: Option<String>,
    /// Its declared fields, by number.
    pub fields: Vec<FieldDecl>,
    /// Where it is declared.
    pub pos: Pos,
}

/// A declared field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDecl {
    /// Field number.
    pub field: u16,
    /// Its name, for messages and traces.
    pub name: String,
    /// HL7 datatype (`ST`, `CE`, ...).
    pub datatype: String,
    /// Most characters as sent (escapes count); `None` for no limit.
    pub length: Option<usize>,
    /// Whether every message must carry it.
    pub required: bool,
}

/// What a mapping produces.
#[derive(Debug, Clone)]
pub enum Body {
    /// A FHIR resource.
    Fhir {
        /// Resource type.
        resource: String,
        /// Rules.
        rules: Vec<Rule>,
        /// Contained resources, in order.
        contained: Vec<Contained>,
        /// Position of `rules:` (for "required but never set").
        rules_pos: Pos,
    },
    /// An HL7 message.
    Hl7 {
        /// `ORM^O01`.
        message: String,
        /// Version written to MSH-12.
        version: String,
        /// Segments in order.
        segments: Vec<Segment>,
        /// How line breaks in values are escaped.
        line_breaks: crate::hl7::escape::LineBreaks,
        /// Declared custom segments and extra fields.
        custom: Vec<CustomSegment>,
        /// Position of `segments:`.
        segments_pos: Pos,
        /// Whether the message, version and segment list resolved (else structure checks
        /// would only repeat the root cause).
        structure_known: bool,
    },
    /// A report submission.
    Report {
        /// Rules.
        rules: Vec<Rule>,
    },
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
    /// The rule, as the value trace names it (`orm_o01.yaml:264:9`); `None` for uses that
    /// are not one rule's (a segment's `when`, a list iterated, the MSH-7 time zone).
    pub rule: Option<Arc<str>>,
}

/// What the LOINC checks need to know about a code table.
#[derive(Debug, Clone, Default)]
pub struct TableMeta {
    /// `system:` as declared.
    pub system: Option<String>,
    /// `synonyms:` groups of keys that mean the same.
    pub synonyms: Vec<Vec<String>>,
    /// The file the values are written in.
    pub file: PathBuf,
    /// Each `(key, value, position of the key)`.
    pub values: Vec<(String, String, Pos)>,
    /// Position of the table's name.
    pub pos: Pos,
    /// Where `default:` is written (file and position).
    pub default_at: Option<(PathBuf, Pos)>,
}

/// A resolved mapping file.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The mapping's name (`mapping:`).
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// The file name, shared by every rule reference.
    pub fname: Arc<str>,
    /// Position of the document.
    pub root: Pos,
    /// Input kind.
    pub input: InputKind,
    /// Output kind.
    pub output: OutputKind,
    /// Code tables.
    pub tables: Vec<Table>,
    /// Their metadata, same order.
    pub table_meta: Vec<TableMeta>,
    /// What it produces.
    pub body: Body,
    /// Input fields deliberately not sent: `(shape key, reason, position of the key)`.
    pub not_sent: Vec<(String, String, Pos)>,
    /// Input fields read, as shape keys (`comments[].commentText`).
    pub reads: Vec<String>,
    /// Which rule uses which input field, and how.
    pub uses: Vec<FieldUse>,
    /// Every target some rule names and that resolved (with its contained-resource
    /// prefix), even when the rule's source did not: "required but no rule sets it" is
    /// then not said of a target whose rule has another problem.
    pub written: Vec<String>,
    /// Load-time findings that do not stop the mapping.
    pub warnings: Vec<Diagnostic>,
}
