//! The declarative mapping engine.
//!
//! Analysts write YAML mapping files (`mappings/*.yaml`, language documented in
//! `mappings/README.md`). [`MappingSet::load_dir`] reads and checks all of them, reporting
//! every problem with file:line:column and a hint, and compiles each into a plan. Mapping
//! then evaluates a plan against one input:
//!
//! - outbound, an **Order** JSON document → FHIR R4 JSON ([`Body::Fhir`]) or an HL7 v2 ER7
//!   message ([`Body::Hl7`]) — [`MappingSet::map_order`]. Every output is checked before
//!   it is returned ([`output_check`]): by default with one pass over the finished text,
//!   with [`OutputCheck::Full`] also by hl7-parser's re-parse or fhir-sdk's R4B types;
//! - inbound, an ORU^R01 → one [`ReportSubmission`] per ORDER_OBSERVATION group
//!   ([`MappingSet::map_oru`]), or a FHIR DiagnosticReport → one submission
//!   ([`MappingSet::map_diagnostic_report`]).
//!
//! Every output carries the mapping-set version (a content hash of the files) and the
//! values code tables did not map. Errors name the rule (file:line:column and target),
//! never the value: values are PHI.

mod check;
pub mod codes;
pub mod compile;
mod diag;
pub mod eval;
mod exec;
pub mod fhir;
pub mod fhir_report;
pub mod filters;
pub mod golden;
pub mod hl7;
mod hl7_tables;
pub mod html_text;
pub mod inbound;
pub mod ir;
mod lower;
pub mod names;
mod out_fhir;
mod out_hl7;
pub mod output_check;
pub mod parse;
pub mod plan;
pub mod preview;
mod resolve;
pub mod schema;
mod source;
pub mod spec;
pub mod trace;
pub mod unread;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::hl7::er7;
pub use compile::Compiled;
pub use inbound::{ReportStatus, ReportSubmission};
pub use output_check::OutputCheck;
pub use spec::{InputKind, OutputKind};
pub use trace::Trace;
pub use yaml::Pos;

/// The reason of the [`MapError::Value`] for an ORU^R01 without any OBR.
pub const NO_ORDER_GROUP: &str =
    "no OBR segment: an ORU^R01 needs at least one ORDER_OBSERVATION group";

/// One load-time problem in a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file.
    pub file: PathBuf,
    /// Line and column.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: error: {}",
            self.file.display(),
            self.pos,
            self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl Diagnostic {
    /// The diagnostic as a warning line: `file:line:col: warning: message` and its hint.
    pub fn as_warning(&self) -> String {
        let mut s = format!(
            "{}:{}: warning: {}",
            self.file.display(),
            self.pos,
            self.message
        );
        if let Some(h) = &self.hint {
            s.push_str(&format!("\n  hint: {h}"));
        }
        s
    }
}

/// All load-time problems of a mapping set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(pub Vec<Diagnostic>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        write!(f, "{} error(s) in mapping files", self.0.len())
    }
}

/// Fields of a report submission a mapping can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportField {
    /// `domain`
    Domain,
    /// `appointmentId`
    AppointmentId,
    /// `reportText`
    ReportText,
    /// `reportStatus`
    ReportStatus,
    /// `reportFormat`
    ReportFormat,
    /// `interpretingClinicianName`
    InterpretingClinicianName,
    /// `interpretingClinicianProviderNumber`
    InterpretingClinicianProviderNumber,
    /// `interpretingClinicianEmail`
    InterpretingClinicianEmail,
    /// `reportedAtUtc`
    ReportedAtUtc,
}

impl ReportField {
    /// All fields, in index order.
    pub const ALL: [ReportField; 9] = [
        ReportField::Domain,
        ReportField::AppointmentId,
        ReportField::ReportText,
        ReportField::ReportStatus,
        ReportField::ReportFormat,
        ReportField::InterpretingClinicianName,
        ReportField::InterpretingClinicianProviderNumber,
        ReportField::InterpretingClinicianEmail,
        ReportField::ReportedAtUtc,
    ];

    /// The name used in mapping files (the QUBS JSON name).
    pub fn name(self) -> &'static str {
        match self {
            ReportField::Domain => "domain",
            ReportField::AppointmentId => "appointmentId",
            ReportField::ReportText => "reportText",
            ReportField::ReportStatus => "reportStatus",
            ReportField::ReportFormat => "reportFormat",
            ReportField::InterpretingClinicianName => "interpretingClinicianName",
            ReportField::InterpretingClinicianProviderNumber => {
                "interpretingClinicianProviderNumber"
            }
            ReportField::InterpretingClinicianEmail => "interpretingClinicianEmail",
            ReportField::ReportedAtUtc => "reportedAtUtc",
        }
    }

    /// Reads a name.
    pub fn parse(s: &str) -> Option<ReportField> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// Why one input could not be mapped. Names rules and fields, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// No mapping with that name, or none for that input.
    #[error("no mapping `{0}` in the mapping set")]
    UnknownMapping(String),
    /// The mapping reads another kind of input.
    #[error("mapping `{0}` does not read this kind of input")]
    WrongInput(String),
    /// A `required` filter found nothing.
    #[error("{rule}: required value is missing{}", looked_at(.sources))]
    Required {
        /// The rule.
        rule: String,
        /// The rule's source as written (`OBR-25 | OBX[…]-11`), empty for constants: where
        /// the value was looked for.
        sources: String,
    },
    /// A code table with `unmapped: error` did not have the value.
    #[error("{rule}: value not in code table `{table}` (its policy is `unmapped: error`)")]
    Unmapped {
        /// The rule.
        rule: String,
        /// The table.
        table: String,
        /// Where the value was looked for, as written (`OBR-25 | OBX[…]-11`).
        sources: String,
        /// The value itself: PHI, never part of the message. Only the offline tools, whose
        /// user supplied the input, show it (`qubs-bridge map`, golden cases).
        value: String,
    },
    /// A value had the wrong form.
    #[error("{rule}: {reason}")]
    Value {
        /// The rule (or input field).
        rule: String,
        /// What is wrong.
        reason: String,
    },
    /// The inbound HL7 could not be read.
    #[error("HL7 input: {0}")]
    Hl7(#[from] er7::ReadError),
    /// An error in one ORDER_OBSERVATION group of an ORU.
    #[error("message {msh10}, order group {group}: {source}")]
    InGroup {
        /// MSH-10.
        msh10: String,
        /// 1-based group number.
        group: usize,
        /// The error.
        source: Box<MapError>,
    },
    /// The output failed its check.
    #[error("mapping `{mapping}` produced an invalid {what}: {reason} (rules: {rules})")]
    InvalidOutput {
        /// Mapping name.
        mapping: String,
        /// FHIR resource type or HL7 message.
        what: String,
        /// What is wrong (no values).
        reason: String,
        /// Rules that wrote the offending part, when they can be told.
        rules: String,
    },
}

fn looked_at(sources: &str) -> String {
    if sources.is_empty() {
        String::new()
    } else {
        format!(" (looked at: {sources})")
    }
}

/// Options for one outbound mapping run.
#[derive(Debug, Clone, Default)]
pub struct MapOptions {
    /// MSH-7; default now (in the site zone when known).
    pub now: Option<jiff::ZonedDateTime>,
    /// MSH-10; default a fresh id.
    pub control_id: Option<String>,
    /// How the output is checked before it is returned; default the set's
    /// ([`MappingSet::with_output_check`], `mappings.output_check`).
    pub check: Option<OutputCheck>,
}

/// A FHIR resource as compact JSON text, as the bridge sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirJson(pub String);

impl FhirJson {
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The resource as a JSON value (keys in the order written).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).expect("the bridge writes valid JSON")
    }

    /// The resource pretty-printed (two-space indent), as golden files store it.
    pub fn to_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_default()
    }
}

impl fmt::Display for FhirJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A produced document.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// FHIR R4 JSON.
    Fhir(FhirJson),
    /// HL7 v2 ER7 text (CR separators).
    Hl7(String),
}

/// A value a code table did not map, with how often it was seen in this run. Contains
/// source values: show it to analysts (dry runs, reports), do not log it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmapped {
    /// Table name.
    pub table: String,
    /// The value.
    pub value: String,
    /// Times seen.
    pub count: usize,
}

/// An outbound result.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Mapping name.
    pub mapping: String,
    /// Mapping-set version.
    pub version: String,
    /// The document.
    pub body: Body,
    /// Values code tables did not map.
    pub unmapped: Vec<Unmapped>,
}

/// An inbound result.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// Mapping name.
    pub mapping: String,
    /// Mapping-set version.
    pub version: String,
    /// One per appointment: ORDER_OBSERVATION groups of the same appointment are merged.
    pub submissions: Vec<ReportSubmission>,
    /// For each submission, the ORDER_OBSERVATION groups (from 0) it was made from.
    pub groups: Vec<Vec<usize>>,
    /// Values code tables did not map.
    pub unmapped: Vec<Unmapped>,
    /// What the reader tolerated or noticed: for HL7 the character set it fell back to,
    /// wrapped lines and empty segments; for FHIR presentedForms it could not use. No PHI.
    pub warnings: Vec<String>,
}

/// Context of an inbound result: the site (with `timeZone`) and config values.
#[derive(Debug, Clone, Default)]
pub struct InboundContext {
    /// QUBS domain.
    pub domain: Option<String>,
    /// Site settings (`{"siteName", "timeZone", ...}`); `Value::Null` when unknown.
    pub site: Value,
    /// Free config values.
    pub config: Value,
}

/// A dry run: the output plus what an analyst needs to judge the mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct DryRun {
    /// The output.
    pub output: Output,
    /// Input fields (as `comments[].guid`) that no rule read and `not_sent` does not list.
    pub unread_fields: Vec<String>,
}

/// A loaded, checked and compiled set of mapping files.
#[derive(Debug, Clone)]
pub struct MappingSet {
    version: String,
    mappings: BTreeMap<String, Arc<Compiled>>,
    output_check: OutputCheck,
}

/// What a mapping does with one input field: `qubs-bridge mappings fields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldFate {
    /// Written to these targets (an alternative of a fallback chain counts).
    Sent(Vec<String>),
    /// Only used to decide (conditions) or iterated, at these targets.
    Used(Vec<String>),
    /// Deliberately not sent, for this reason (`not_sent:` in the mapping file).
    NotSent(String),
    /// Neither read nor listed under `not_sent`.
    Unaccounted,
}

impl MappingSet {
    /// Loads every `*.yaml`/`*.yml` file directly in `dir` (table files they reference may
    /// sit in sub-directories). All problems of all files are returned together.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<MappingSet, LoadErrors> {
        let dir = dir.as_ref();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect(),
            Err(e) => {
                return Err(LoadErrors(vec![Diagnostic {
                    file: dir.to_path_buf(),
                    pos: Pos { line: 1, column: 1 },
                    message: format!("cannot read the mapping directory: {e}"),
                    hint: None,
                }]));
            }
        };
        files.sort();
        let mut texts = Vec::new();
        let mut diags = Vec::new();
        for f in files {
            match std::fs::read(&f).map(String::from_utf8) {
                Ok(Ok(t)) => texts.push((f, t)),
                Ok(Err(e)) => diags.push(diag::not_utf8(f, e.as_bytes(), e.utf8_error())),
                Err(e) => diags.push(Diagnostic {
                    file: f,
                    pos: Pos { line: 1, column: 1 },
                    message: format!("cannot read: {e}"),
                    hint: None,
                }),
            }
        }
        match Self::from_texts(&texts) {
            Ok(s) if diags.is_empty() => Ok(s),
            Ok(_) => Err(LoadErrors(diags)),
            Err(LoadErrors(mut more)) => {
                diags.append(&mut more);
                Err(LoadErrors(diags))
            }
        }
    }

    /// Every load-time problem of the mapping files in `dir` (empty when they are fine):
    /// what `qubs-bridge mappings check` prints.
    pub fn check_dir(dir: impl AsRef<Path>) -> Vec<Diagnostic> {
        match Self::load_dir(dir) {
            Ok(_) => Vec::new(),
            Err(LoadErrors(d)) => d,
        }
    }

    /// Compiles mapping files given as `(path, text)`; table files are read from disk
    /// relative to each path.
    pub fn from_texts(files: &[(PathBuf, String)]) -> Result<MappingSet, LoadErrors> {
        let (compiled, version) = compile::compile_set(files).map_err(LoadErrors)?;
        let mut diags = Vec::new();
        let mut mappings: BTreeMap<String, Arc<Compiled>> = BTreeMap::new();
        for c in compiled {
            if let Some(prev) = mappings.get(&c.name) {
                diags.push(Diagnostic {
                    file: c.file.clone(),
                    pos: Pos { line: 1, column: 1 },
                    message: format!(
                        "mapping name `{}` is also used by {}",
                        c.name,
                        prev.file.display()
                    ),
                    hint: Some("each file needs its own `mapping:` name".into()),
                });
            } else {
                mappings.insert(c.name.clone(), Arc::new(c));
            }
        }
        if !diags.is_empty() {
            return Err(LoadErrors(diags));
        }
        Ok(MappingSet {
            version,
            mappings,
            output_check: OutputCheck::Basic,
        })
    }

    /// The same set with outputs checked as `check` says (`mappings.output_check`).
    pub fn with_output_check(mut self, check: OutputCheck) -> MappingSet {
        self.output_check = check;
        self
    }

    /// How this set checks its outputs by default.
    pub fn output_check(&self) -> OutputCheck {
        self.output_check
    }

    /// Content hash of the files (`sha256:` + 16 hex digits).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Load-time warnings of every mapping (problems that do not stop it).
    pub fn warnings(&self) -> Vec<&Diagnostic> {
        self.mappings.values().flat_map(|m| &m.warnings).collect()
    }

    /// For an order mapping, each input field (the known Order fields, the fields its rules
    /// read and those it lists under `not_sent`) with what the mapping does with it.
    pub fn field_fates(&self, name: &str) -> Option<Vec<(String, FieldFate)>> {
        let m = self.get(name)?;
        let mut fields: Vec<String> = Vec::new();
        if m.input == InputKind::Order {
            let (known, _) = spec::order_shape();
            fields.extend(known.into_iter().filter(|k| {
                // Containers are not fields; their leaves are.
                !matches!(
                    k.as_str(),
                    "appointment"
                        | "comments"
                        | "comments[]"
                        | "attachments"
                        | "attachments[]"
                        | "site"
                        | "config"
                        | "event"
                        | "appointment.examCodes"
                ) && !k.ends_with("assignedRadiologist")
                    && !k.ends_with("radiologist")
            }));
        }
        // Lists are shown by their items' fields.
        fields.extend(
            m.uses
                .iter()
                .map(|u| u.field.clone())
                .filter(|f| !f.ends_with("[]")),
        );
        fields.extend(m.not_sent.iter().map(|(f, _)| f.clone()));
        fields.retain(|f| !f.ends_with("[]") || m.not_sent.iter().any(|(n, _)| n == f));
        fields.sort();
        fields.dedup();
        Some(
            fields
                .into_iter()
                .map(|f| {
                    let fate = m.field_fate(&f);
                    (f, fate)
                })
                .collect(),
        )
    }

    /// What `name` does with the input field `field` (a shape key such as
    /// `comments[].commentText`); see [`MappingSet::field_fates`].
    pub fn field_fate(&self, name: &str, field: &str) -> Option<FieldFate> {
        self.get(name).map(|m| m.field_fate(field))
    }

    /// Names of the mappings.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.mappings.keys().map(String::as_str)
    }

    /// A compiled mapping.
    pub fn get(&self, name: &str) -> Option<&Compiled> {
        self.mappings.get(name).map(|a| a.as_ref())
    }

    /// A content hash of the values in `order` that the order mappings read (the union of
    /// their reads), so that an edit to anything no mapping reads is not a change. Object
    /// keys are taken in sorted order, list items in their order; `event` (the feed's own
    /// field) is never part of it.
    pub fn order_fingerprint(&self, order: &Value) -> String {
        let reads: Vec<&str> = self
            .mappings
            .values()
            .filter(|m| m.input == InputKind::Order)
            .flat_map(|m| m.reads.iter().map(String::as_str))
            .filter(|r| *r != "event" && !r.starts_with("event."))
            .collect();
        let covered = |shape: &str| {
            reads.iter().any(|r| {
                shape == *r
                    || shape
                        .strip_prefix(r)
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            })
        };
        fn walk(
            v: &Value,
            path: &mut String,
            shape: &mut String,
            covered: &dyn Fn(&str) -> bool,
            h: &mut Sha256,
        ) {
            match v {
                Value::Object(m) => {
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort();
                    for k in keys {
                        let (pl, sl) = (path.len(), shape.len());
                        if !path.is_empty() {
                            path.push('.');
                            shape.push('.');
                        }
                        path.push_str(k);
                        shape.push_str(k);
                        walk(&m[k.as_str()], path, shape, covered, h);
                        path.truncate(pl);
                        shape.truncate(sl);
                    }
                }
                Value::Array(a) => {
                    for (i, x) in a.iter().enumerate() {
                        let (pl, sl) = (path.len(), shape.len());
                        path.push_str(&format!("[{i}]"));
                        shape.push_str("[]");
                        walk(x, path, shape, covered, h);
                        path.truncate(pl);
                        shape.truncate(sl);
                    }
                }
                Value::Null => {}
                leaf if covered(shape) => {
                    h.update(path.as_bytes());
                    h.update([0]);
                    h.update(leaf.to_string().as_bytes());
                    h.update([0]);
                }
                _ => {}
            }
        }
        let mut h = Sha256::new();
        let root = match order {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| k.as_str() != "event")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            other => other.clone(),
        };
        walk(
            &root,
            &mut String::new(),
            &mut String::new(),
            &covered,
            &mut h,
        );
        let digest = h.finalize();
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    fn mapping(&self, name: &str, input: InputKind) -> Result<&Compiled, MapError> {
        let m = self
            .get(name)
            .ok_or_else(|| MapError::UnknownMapping(name.to_string()))?;
        if m.input != input {
            return Err(MapError::WrongInput(name.to_string()));
        }
        Ok(m)
    }

    fn only(&self, input: InputKind, what: &str) -> Result<&Compiled, MapError> {
        let mut it = self.mappings.values().filter(|m| m.input == input);
        match (it.next(), it.next()) {
            (Some(m), None) => Ok(m),
            _ => Err(MapError::UnknownMapping(format!(
                "(exactly one mapping with `input: {what}` is needed; name it explicitly)"
            ))),
        }
    }

    /// Maps an Order with mapping `name`.
    pub fn map_order(&self, name: &str, order: &Value) -> Result<Output, MapError> {
        self.map_order_with(name, order, &MapOptions::default())
    }

    /// Maps an Order with options (fixed MSH-7/MSH-10 for reproducible runs).
    pub fn map_order_with(
        &self,
        name: &str,
        order: &Value,
        options: &MapOptions,
    ) -> Result<Output, MapError> {
        self.order_run(name, order, options, None)
    }

    /// Maps an Order and records how every output field came about. The trace is returned
    /// also when the mapping fails (up to the rule that failed). It holds values (PHI):
    /// show it to the analyst, never log it.
    pub fn map_order_traced(
        &self,
        name: &str,
        order: &Value,
        options: &MapOptions,
    ) -> (Result<Output, MapError>, Trace) {
        let mut trace = Trace {
            mapping: name.to_string(),
            fields: Vec::new(),
        };
        let r = self.order_run(name, order, options, Some(&mut trace));
        (r, trace)
    }

    fn order_run(
        &self,
        name: &str,
        order: &Value,
        options: &MapOptions,
        trace: Option<&mut Trace>,
    ) -> Result<Output, MapError> {
        let m = self.mapping(name, InputKind::Order)?;
        let check = options.check.unwrap_or(self.output_check);
        let (body, unmapped) = exec::order(m, order, options, check, trace)?;
        Ok(Output {
            mapping: m.name.clone(),
            version: self.version.clone(),
            body,
            unmapped,
        })
    }

    /// Maps an Order and also lists the input fields no rule read.
    pub fn dry_run(
        &self,
        name: &str,
        order: &Value,
        options: &MapOptions,
    ) -> Result<DryRun, MapError> {
        let output = self.map_order_with(name, order, options)?;
        let m = self.mapping(name, InputKind::Order)?;
        Ok(DryRun {
            output,
            unread_fields: unread::order(m, order),
        })
    }

    /// Maps an ORU^R01 with the set's only `input: oru` mapping.
    pub fn map_oru(&self, text: &str, ctx: &InboundContext) -> Result<Inbound, MapError> {
        let m = self.only(InputKind::Oru, "oru")?;
        self.oru_run(m, text, ctx, None)
    }

    /// Maps an ORU^R01 given as the bytes received, decoded as [`crate::hl7::charset`] says;
    /// a character-set fallback is the first of the result's warnings.
    pub fn map_oru_bytes_with(
        &self,
        name: &str,
        bytes: &[u8],
        ctx: &InboundContext,
    ) -> Result<Inbound, MapError> {
        let decoded = crate::hl7::charset::decode(bytes);
        let mut inbound = self.map_oru_with(name, &decoded.text, ctx)?;
        if let Some(w) = decoded.warning {
            inbound.warnings.insert(0, w);
        }
        Ok(inbound)
    }

    /// Maps an ORU^R01 with mapping `name`: one submission per ORDER_OBSERVATION group.
    pub fn map_oru_with(
        &self,
        name: &str,
        text: &str,
        ctx: &InboundContext,
    ) -> Result<Inbound, MapError> {
        let m = self.mapping(name, InputKind::Oru)?;
        self.oru_run(m, text, ctx, None)
    }

    /// [`MappingSet::map_oru_with`] with a trace of every report field of every group
    /// (PHI: never log it).
    pub fn map_oru_traced(
        &self,
        name: &str,
        text: &str,
        ctx: &InboundContext,
    ) -> (Result<Inbound, MapError>, Trace) {
        let mut trace = Trace {
            mapping: name.to_string(),
            fields: Vec::new(),
        };
        let r = self
            .mapping(name, InputKind::Oru)
            .and_then(|m| self.oru_run(m, text, ctx, Some(&mut trace)));
        (r, trace)
    }

    fn oru_run(
        &self,
        m: &Compiled,
        text: &str,
        ctx: &InboundContext,
        mut trace: Option<&mut Trace>,
    ) -> Result<Inbound, MapError> {
        let msg = er7::Message::parse(text)?;
        let msh10 = || msg.control_id().unwrap_or("(no MSH-10)").to_string();
        let zone = exec::site_zone(Some(&ctx.site))?;
        let groups = msg.order_groups();
        if groups.is_empty() {
            return Err(MapError::Value {
                rule: format!("message {}", msh10()),
                reason: NO_ORDER_GROUP.into(),
            });
        }
        let mut submissions = Vec::with_capacity(groups.len());
        let mut unmapped = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            let scope = msg.group_scope(g);
            let mut env =
                eval::Env::with_roots(&m.plan, exec::inbound_roots(ctx, None, None), zone.clone());
            env.hl7 = Some(&scope);
            env.delims = msg.delimiters();
            if trace.is_some() {
                env.record_trace();
                env.set_trace_group(gi + 1);
            }
            let in_group = |e: MapError| MapError::InGroup {
                msh10: msh10(),
                group: gi + 1,
                source: Box::new(e),
            };
            let fields = exec::report(m, &mut env);
            if let (Some(t), Some(b)) = (trace.as_deref_mut(), env.take_trace()) {
                t.fields.extend(b.fields);
            }
            let fields = fields.map_err(in_group)?;
            let sub = inbound::build(&fields).map_err(|(f, reason)| {
                in_group(MapError::InvalidOutput {
                    mapping: m.name.clone(),
                    what: "report submission".into(),
                    reason: format!("{}: {reason}", f.name()),
                    rules: exec::rules_for_field(m, f),
                })
            })?;
            unmapped.extend(exec::count(&m.plan, env.unmapped));
            submissions.push(sub);
        }
        let (submissions, groups) = merge_by_appointment(submissions);
        Ok(Inbound {
            mapping: m.name.clone(),
            version: self.version.clone(),
            submissions,
            groups,
            unmapped: merge_counts(unmapped),
            warnings: msg.warnings().iter().map(ToString::to_string).collect(),
        })
    }

    /// Maps a FHIR DiagnosticReport with the set's only `input: diagnostic_report` mapping.
    pub fn map_diagnostic_report(
        &self,
        report: &Value,
        ctx: &InboundContext,
    ) -> Result<Inbound, MapError> {
        let m = self.only(InputKind::DiagnosticReport, "diagnostic_report")?;
        self.dr_run(m, report, ctx, None)
    }

    /// [`MappingSet::map_diagnostic_report`] with a trace (PHI: never log it).
    pub fn map_diagnostic_report_traced(
        &self,
        report: &Value,
        ctx: &InboundContext,
    ) -> (Result<Inbound, MapError>, Trace) {
        let mut trace = Trace::default();
        let r = self
            .only(InputKind::DiagnosticReport, "diagnostic_report")
            .and_then(|m| {
                trace.mapping = m.name.clone();
                self.dr_run(m, report, ctx, Some(&mut trace))
            });
        (r, trace)
    }

    fn dr_run(
        &self,
        m: &Compiled,
        report: &Value,
        ctx: &InboundContext,
        trace: Option<&mut Trace>,
    ) -> Result<Inbound, MapError> {
        let (read, warnings) = fhir_report::read(report, &ctx.config)?;
        let zone = exec::site_zone(Some(&ctx.site))?;
        let mut env = eval::Env::with_roots(
            &m.plan,
            exec::inbound_roots(ctx, Some(report), Some(&read)),
            zone,
        );
        if trace.is_some() {
            env.record_trace();
        }
        let fields = exec::report(m, &mut env);
        if let (Some(t), Some(b)) = (trace, env.take_trace()) {
            t.fields.extend(b.fields);
        }
        let sub = inbound::build(&fields?).map_err(|(f, reason)| MapError::InvalidOutput {
            mapping: m.name.clone(),
            what: "report submission".into(),
            reason: format!("{}: {reason}", f.name()),
            rules: exec::rules_for_field(m, f),
        })?;
        Ok(Inbound {
            mapping: m.name.clone(),
            version: self.version.clone(),
            submissions: vec![sub],
            groups: vec![vec![0]],
            unmapped: exec::count(&m.plan, env.unmapped),
            warnings,
        })
    }
}

/// Unmapped counts of several groups added up.
fn merge_counts(all: Vec<Unmapped>) -> Vec<Unmapped> {
    let mut m: BTreeMap<(String, String), usize> = BTreeMap::new();
    for u in all {
        *m.entry((u.table, u.value)).or_default() += u.count;
    }
    m.into_iter()
        .map(|((table, value), count)| Unmapped {
            table,
            value,
            count,
        })
        .collect()
}

/// One submission per appointment: QUBS keeps one report per appointment and a later POST
/// overwrites the earlier one, so groups of the same appointment are merged — texts joined
/// by a blank line in message order, `preliminary` unless every part is final, the latest
/// `reportedAtUtc`, other fields from the first group that has them.
fn merge_by_appointment(subs: Vec<ReportSubmission>) -> (Vec<ReportSubmission>, Vec<Vec<usize>>) {
    let mut out: Vec<ReportSubmission> = Vec::with_capacity(subs.len());
    let mut groups: Vec<Vec<usize>> = Vec::with_capacity(subs.len());
    for (gi, s) in subs.into_iter().enumerate() {
        match out
            .iter()
            .position(|o| o.appointment_id == s.appointment_id && o.domain == s.domain)
        {
            None => {
                out.push(s);
                groups.push(vec![gi]);
            }
            Some(k) => {
                groups[k].push(gi);
                let o = &mut out[k];
                o.report_text.push_str("\n\n");
                o.report_text.push_str(&s.report_text);
                if s.report_status == ReportStatus::Preliminary {
                    o.report_status = ReportStatus::Preliminary;
                }
                o.report_format = o.report_format.take().or(s.report_format);
                o.interpreting_clinician_name = o
                    .interpreting_clinician_name
                    .take()
                    .or(s.interpreting_clinician_name);
                o.interpreting_clinician_provider_number = o
                    .interpreting_clinician_provider_number
                    .take()
                    .or(s.interpreting_clinician_provider_number);
                o.interpreting_clinician_email = o
                    .interpreting_clinician_email
                    .take()
                    .or(s.interpreting_clinician_email);
                o.reported_at_utc = o.reported_at_utc.max(s.reported_at_utc);
            }
        }
    }
    (out, groups)
}

/// Leaves of `input` (as shape keys) not covered by any read.
pub fn unread_fields(input: &Value, reads: &[String]) -> Vec<String> {
    fn walk(v: &Value, key: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let nk = if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    };
                    walk(x, nk, out);
                }
            }
            Value::Array(a) => {
                for x in a {
                    walk(x, format!("{key}[]"), out);
                }
            }
            Value::Null => {}
            _ => out.push(key),
        }
    }
    let mut leaves = Vec::new();
    walk(input, String::new(), &mut leaves);
    leaves.sort();
    leaves.dedup();
    leaves
        .into_iter()
        .filter(|l| {
            !reads.iter().any(|r| {
                l == r
                    || l.strip_prefix(r.as_str())
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            })
        })
        .collect()
}
