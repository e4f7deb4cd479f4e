//! The evaluation plan a mapping is lowered to ([`super::lower`]) and the evaluator runs
//! ([`super::eval`]).
//!
//! - **Slots.** Every input path a rule reads without `[*]` or a filter is a slot. The paths
//!   form a trie walked once per input (and once per `for_each` item, for the item's own
//!   paths): one pass over each JSON object reached, instead of a hashed lookup per rule
//!   and path step.
//! - **Expressions.** Sources and filter chains are nodes of one graph per mapping, built
//!   so that equal sub-expressions are one node: a name read by five rules is split once,
//!   a site-local time written to four fields is converted once. A node's value is kept
//!   for the rest of the input (or of the `for_each` item it depends on).
//! - **Conditions** are nodes too, with their answer kept the same way.
//! - **Ops** are the rules in order: write a node's value to a target, or repeat a block
//!   over a list. HL7 segments keep their targets as cells sorted by position, with
//!   constants escaped once at load time; FHIR targets are element paths whose names are
//!   interned.

use std::sync::Arc;

use super::ReportField;
use super::fhir::Ty;
use super::filters::{Filter, NamePart, Table};
use super::ir::RuleRef;
use super::spec::{Alt, Hl7Source, JsonPath};
use crate::hl7::escape::LineBreaks;

/// Index of an expression node.
pub type ExprId = u32;
/// Index of a condition node.
pub type CondId = u32;
/// Index of an input slot.
pub type SlotId = u32;
/// Index of a rule's description ([`RuleInfo`]).
pub type RuleId = u32;

/// Depth of a value that changes with every segment (`$set_id`): never kept.
pub const VOLATILE: u8 = u8::MAX;

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Root {
    /// The input document.
    Input,
    /// The item bound by the `for_each` at this depth (1 = outermost).
    Item(u8),
}

/// One input path's trie: object keys and array indexes leading to slots.
#[derive(Debug, Clone, Default)]
pub struct Trie {
    /// Nodes; 0 is the root.
    pub nodes: Vec<TrieNode>,
}

/// A trie node.
#[derive(Debug, Clone, Default)]
pub struct TrieNode {
    /// The slot that holds the value reached here.
    pub slot: Option<SlotId>,
    /// Object keys, sorted, each with its node.
    pub keys: Vec<(Box<str>, u32)>,
    /// Array indexes, each with its node.
    pub indexes: Vec<(usize, u32)>,
}

/// A node of the expression graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// The text of a scalar at an input slot.
    Slot(SlotId),
    /// A path that can hold several values, walked when needed.
    Many(Root, JsonPath),
    /// A position in the inbound HL7 message.
    Hl7(Hl7Source),
    /// Constant text.
    Const(Box<str>),
    /// `$index` of the `for_each` at this depth.
    Index(u8),
    /// `$set_id` of the segment being written.
    SetId,
    /// Text and placeholders (each a [`Expr::Chain`]).
    Template(Vec<TplPart>),
    /// Alternatives: the first present one.
    Chain(Vec<ExprId>),
    /// Alternatives with their own filters: the first present after its filters.
    Stages(Vec<ExprId>),
    /// A filter applied to a value.
    Filter(Filter, ExprId),
    /// A single-field name split into its parts (shared by the rules reading them).
    NameParse(ExprId),
    /// One part of a split name.
    NamePart(NamePart, ExprId),
}

/// Piece of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TplPart {
    /// Literal text.
    Text(Box<str>),
    /// A placeholder.
    Value(ExprId),
}

/// One alternative a `present` test looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PresentAlt {
    /// A slot: objects and non-empty lists count, blank text does not.
    Slot(SlotId),
    /// A list path: any item that counts.
    Many(Root, JsonPath),
    /// Any other value: present when not empty.
    Expr(ExprId),
}

/// A node of the condition graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CondOp {
    /// `present: want`
    Present(Vec<PresentAlt>, bool),
    /// `in_table`: the value is a key of the table.
    InTable(ExprId, usize),
    /// `equals`/`in` (negated for `not_in`), values as written or (ignoring case) trimmed
    /// and lower-cased.
    In {
        /// The value (a chain).
        expr: ExprId,
        /// The values compared with.
        values: Vec<Box<str>>,
        /// `not_in`.
        negate: bool,
        /// Compare trimmed, ignoring case.
        ignore_case: bool,
    },
    /// `any`
    Any(Vec<CondId>),
    /// `all`
    All(Vec<CondId>),
    /// `not`
    Not(CondId),
}

/// What a rule is, for errors and traces.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    /// Where it is written.
    pub at: RuleRef,
    /// Its source as written (`OBR-25 | OBX[…]-11`), for "required value is missing".
    pub sources: String,
    /// The ir-level source and filters, for the trace.
    pub source: Option<super::ir::Source>,
    /// Its filters.
    pub filters: Vec<Filter>,
    /// Its condition, as written, for the trace.
    pub when: Option<CondId>,
}

/// Where an HL7 value goes inside its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellRef {
    /// A position known at load time: index into the segment's cells.
    Static(u16),
    /// A repetition per `for_each` item (`PID-3[*].1`): field, component, sub-component.
    Each(u16, u16, u16),
}

/// Where a value goes.
#[derive(Debug, Clone, Copy)]
pub enum Dest {
    /// A FHIR element ([`FhirPath`] index) and the JSON type of its value.
    Fhir(u32, Ty),
    /// An HL7 position in the current segment.
    Hl7(CellRef),
    /// A report field.
    Report(ReportField),
}

/// A step of a FHIR element path; keys are interned names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FStep {
    /// An element name ([`Plan::names`] index).
    Key(u16),
    /// A fixed index.
    Index(u32),
    /// The current item of the `for_each` at this nesting of FHIR arrays.
    Each(u8),
}

/// A repeat.
#[derive(Debug, Clone)]
pub struct EachOp {
    /// The list.
    pub root: Root,
    /// Its path.
    pub path: JsonPath,
    /// Depth the items are bound at (1 = outermost).
    pub depth: u8,
    /// The items' own paths.
    pub trie: Trie,
    /// `where`.
    pub filter: Option<CondId>,
    /// FHIR: the array each item appends to.
    pub array: Option<u32>,
    /// Ops per item.
    pub body: Vec<Op>,
}

/// One step of a block.
#[derive(Debug, Clone)]
pub enum Op {
    /// Writes the value of `expr` to `dest` (when `when` holds and the value is not empty).
    Write {
        /// The rule.
        rule: RuleId,
        /// Its condition.
        when: Option<CondId>,
        /// Its value (source and filters).
        expr: ExprId,
        /// Its target.
        dest: Dest,
        /// The value is a constant already escaped into the cell at load time: nothing to
        /// do unless a trace is being recorded.
        pre: bool,
    },
    /// Repeats ops over a list.
    Each {
        /// The rule.
        rule: RuleId,
        /// Its condition (on the whole list).
        when: Option<CondId>,
        /// The repeat.
        each: Box<EachOp>,
    },
}

/// A position in a segment, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos4 {
    /// Field.
    pub field: u16,
    /// Repetition.
    pub rep: u16,
    /// Component.
    pub comp: u16,
    /// Sub-component.
    pub sub: u16,
}

/// What a cell starts with before the rules run.
#[derive(Debug, Clone)]
pub enum CellInit {
    /// Nothing.
    Empty,
    /// Text already escaped.
    Text(Box<str>),
    /// MSH-7, the message time.
    Now,
    /// MSH-10, the control id.
    ControlId,
}

/// One segment entry of an HL7 plan.
#[derive(Debug, Clone)]
pub struct SegmentOp {
    /// Segment id.
    pub id: Box<str>,
    /// Where it is written.
    pub at: RuleRef,
    /// Condition.
    pub when: Option<CondId>,
    /// One segment per item of this list.
    pub each: Option<Box<EachOp>>,
    /// Cell positions, sorted.
    pub cells: Vec<Pos4>,
    /// Their initial content.
    pub init: Vec<CellInit>,
    /// The rules (when `each` is set, its `body` is used instead).
    pub ops: Vec<Op>,
}

/// What a plan produces.
#[derive(Debug, Clone)]
pub enum Output {
    /// A FHIR resource.
    Fhir {
        /// Resource type.
        resource: Box<str>,
        /// Contained resources: type, id, condition, ops.
        contained: Vec<ContainedOp>,
        /// The resource's own ops.
        ops: Vec<Op>,
    },
    /// An HL7 message.
    Hl7 {
        /// `ORM^O01`.
        message: Box<str>,
        /// MSH-12.
        version: Box<str>,
        /// How line breaks are escaped.
        line_breaks: LineBreaks,
        /// Segments in order.
        segments: Vec<SegmentOp>,
        /// Checks of the output: required fields and lengths per segment.
        limits: Arc<super::output_check::Hl7Limits>,
    },
    /// A report submission.
    Report {
        /// The ops.
        ops: Vec<Op>,
    },
}

/// A contained resource.
#[derive(Debug, Clone)]
pub struct ContainedOp {
    /// Resource type.
    pub resource: Box<str>,
    /// Its id.
    pub id: Box<str>,
    /// Condition.
    pub when: Option<CondId>,
    /// Ops targeting its elements (paths relative to it).
    pub ops: Vec<Op>,
}

/// A mapping's evaluation plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Expression nodes; children always have smaller ids.
    pub exprs: Vec<Expr>,
    /// Sources as written, for traces (`appointment.patientName`, `OBR-25`).
    pub labels: Vec<Option<Box<str>>>,
    /// Each slot's path as written, for traces.
    pub slot_labels: Vec<Box<str>>,
    /// The `for_each` depth each expression depends on (0: the input only).
    pub expr_depth: Vec<u8>,
    /// Condition nodes.
    pub conds: Vec<CondOp>,
    /// Their depth.
    pub cond_depth: Vec<u8>,
    /// Number of slots.
    pub slots: u32,
    /// The input's paths.
    pub trie: Trie,
    /// Rules, for errors and traces.
    pub rules: Vec<RuleInfo>,
    /// FHIR element names.
    pub names: Vec<Box<str>>,
    /// FHIR element paths (targets).
    pub paths: Vec<Vec<FStep>>,
    /// Deepest `for_each` nesting.
    pub max_depth: u8,
    /// Code tables.
    pub tables: Arc<[Table]>,
    /// What it produces.
    pub output: Output,
}

impl Plan {
    /// The alternatives a source chain was written with, for messages.
    pub fn describe(alts: &[Alt]) -> String {
        super::eval::describe_chain(alts)
    }
}
