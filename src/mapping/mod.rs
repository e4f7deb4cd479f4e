//! The declarative mapping engine.
//!
//! Analysts write YAML mapping files (`mappings/*.yaml`, language documented in
//! `mappings/README.md`). [`MappingSet::load_dir`] reads and checks all of them, reporting
//! every problem with file:line:column and a hint, and compiles each into a plan. Mapping
//! then evaluates a plan against one input:
//!
//! - outbound, an **Order** JSON document → FHIR R4 JSON ([`Body::Fhir`], checked with
//!   fhir-sdk's R4B types) or an HL7 v2 ER7 message ([`Body::Hl7`], re-parsed with
//!   hl7-parser) — [`MappingSet::map_order`];
//! - inbound, an ORU^R01 → one [`ReportSubmission`] per ORDER_OBSERVATION group
//!   ([`MappingSet::map_oru`]), or a FHIR DiagnosticReport → one submission
//!   ([`MappingSet::map_diagnostic_report`]).
//!
//! Every output carries the mapping-set version (a content hash of the files) and the
//! values code tables did not map. Errors name the rule (file:line:column and target),
//! never the value: values are PHI.

pub mod codes;
pub mod compile;
pub mod eval;
pub mod fhir;
pub mod fhir_report;
pub mod filters;
pub mod golden;
pub mod hl7;
pub mod html_text;
pub mod inbound;
pub mod names;
pub mod preview;
pub mod schema;
pub mod spec;
pub mod unread;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::hl7::er7;
use crate::hl7::writer::{self, MessageBuilder, MshFields, SegmentBuilder};
pub use compile::Compiled;
use compile::Plan;
pub use inbound::{ReportStatus, ReportSubmission};
pub use spec::{InputKind, OutputKind};
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
    /// How an HL7 output is checked before it is returned.
    pub hl7_check: Hl7Check,
}

/// How an emitted HL7 message is re-read before it leaves. Both check segment count
/// (nothing truncated), delimiters and MSH-7/9/10/12.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hl7Check {
    /// Re-parse with hl7-parser, an implementation independent of our writer (default).
    /// It builds a full tree and costs about half of an ORM^O01 mapping run.
    #[default]
    Hl7Parser,
    /// Re-read with this crate's own zero-copy reader: for bulk runs of a mapping set whose
    /// outputs were already proven with [`Hl7Check::Hl7Parser`] (golden cases, dry runs).
    Reader,
}

/// A produced document.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// FHIR R4 JSON.
    Fhir(Value),
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

/// A file that is not UTF-8, pointed at its first bad byte (line and character column).
fn not_utf8(file: PathBuf, bytes: &[u8], e: std::str::Utf8Error) -> Diagnostic {
    let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
    let line_start = valid.rfind('\n').map_or(0, |i| i + 1);
    Diagnostic {
        file,
        pos: Pos {
            line: valid.matches('\n').count() as u32 + 1,
            column: valid[line_start..].chars().count() as u32 + 1,
        },
        message: format!("not valid UTF-8 (byte 0x{:02X})", bytes[e.valid_up_to()]),
        hint: Some("save mapping files as UTF-8".into()),
    }
}

/// A loaded, checked and compiled set of mapping files.
#[derive(Debug, Clone)]
pub struct MappingSet {
    version: String,
    mappings: BTreeMap<String, Arc<Compiled>>,
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
                Ok(Err(e)) => diags.push(not_utf8(f, e.as_bytes(), e.utf8_error())),
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
        let mut diags = Vec::new();
        let mut mappings: BTreeMap<String, Arc<Compiled>> = BTreeMap::new();
        let mut hash = Sha256::new();
        for (path, text) in files {
            match compile::compile(path, text) {
                Ok(c) => {
                    hash.update(
                        path.file_name()
                            .map(|f| f.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    );
                    hash.update([0]);
                    hash.update(text.as_bytes());
                    hash.update([0]);
                    for tf in &c.table_files {
                        hash.update(std::fs::read(tf).unwrap_or_default());
                        hash.update([0]);
                    }
                    if let Some(prev) = mappings.get(&c.name) {
                        diags.push(Diagnostic {
                            file: path.clone(),
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
                Err(mut d) => diags.append(&mut d),
            }
        }
        if !diags.is_empty() {
            diags.sort_by(|a, b| (&a.file, a.pos, &a.message).cmp(&(&b.file, b.pos, &b.message)));
            // A table file shared by several mappings is checked once per mapping: say
            // each of its problems once.
            diags.dedup();
            return Err(LoadErrors(diags));
        }
        let digest = hash.finalize();
        let version = format!(
            "sha256:{}",
            digest
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Ok(MappingSet { version, mappings })
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
        let m = self.mapping(name, InputKind::Order)?;
        let zone = site_zone(order.get("site"))?;
        let mut env = eval::Env::new(order, zone.clone(), &m.tables);
        let body = match &m.plan {
            Plan::Fhir {
                resource,
                rules,
                contained,
            } => {
                let mut out = eval::Out::new();
                out.fhir = fhir::Tree::resource(resource);
                let inner = run_contained(&mut env, contained)?;
                if !inner.is_empty()
                    && let fhir::Tree::Obj(entries) = &mut out.fhir
                {
                    entries.push(("contained".into(), fhir::Tree::Arr(inner)));
                }
                env.run(rules, &mut out)?;
                let json = std::mem::take(&mut out.fhir)
                    .into_value()
                    .unwrap_or(Value::Null);
                fhir::check(resource, &json)
                    .and_then(|()| fhir::check_local_references(&json))
                    .map_err(|reason| MapError::InvalidOutput {
                        mapping: m.name.clone(),
                        what: resource.clone(),
                        rules: rules_hint(rules, &reason),
                        reason,
                    })?;
                Body::Fhir(json)
            }
            Plan::Hl7 { .. } => Body::Hl7(run_hl7(m, &mut env, options, zone.as_ref())?),
            Plan::Report { .. } => return Err(MapError::WrongInput(name.to_string())),
        };
        Ok(Output {
            mapping: m.name.clone(),
            version: self.version.clone(),
            body,
            unmapped: count(env.unmapped),
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
        self.map_oru_with(&m.name.clone(), text, ctx)
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
        let Plan::Report { rules } = &m.plan else {
            return Err(MapError::WrongInput(name.to_string()));
        };
        let msg = er7::Message::parse(text)?;
        let msh10 = msg.control_id().unwrap_or("(no MSH-10)").to_string();
        let input = context_value(ctx, None);
        let zone = site_zone(input.get("site"))?;
        let groups = msg.order_groups();
        if groups.is_empty() {
            return Err(MapError::Value {
                rule: format!("message {msh10}"),
                reason: NO_ORDER_GROUP.into(),
            });
        }
        let mut submissions = Vec::with_capacity(groups.len());
        let mut unmapped = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            let scope = msg.group_scope(g);
            let mut env = eval::Env::new(&input, zone.clone(), &m.tables);
            env.hl7 = Some(&scope);
            env.delims = msg.delimiters();
            let mut out = eval::Out::new();
            let in_group = |e: MapError| MapError::InGroup {
                msh10: msh10.clone(),
                group: gi + 1,
                source: Box::new(e),
            };
            env.run(rules, &mut out).map_err(in_group)?;
            let sub = inbound::build(&out.report).map_err(|(f, reason)| {
                in_group(MapError::InvalidOutput {
                    mapping: m.name.clone(),
                    what: "report submission".into(),
                    reason: format!("{}: {reason}", f.name()),
                    rules: rules_for_field(rules, f),
                })
            })?;
            unmapped.append(&mut env.unmapped);
            submissions.push(sub);
        }
        let (submissions, groups) = merge_by_appointment(submissions);
        Ok(Inbound {
            mapping: m.name.clone(),
            version: self.version.clone(),
            submissions,
            groups,
            unmapped: count(unmapped),
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
        let Plan::Report { rules } = &m.plan else {
            return Err(MapError::WrongInput(m.name.clone()));
        };
        let (read, warnings) = fhir_report::read(report, &ctx.config)?;
        let mut input = context_value(ctx, Some(report));
        input["read"] = read;
        let zone = site_zone(input.get("site"))?;
        let mut env = eval::Env::new(&input, zone, &m.tables);
        let mut out = eval::Out::new();
        env.run(rules, &mut out)?;
        let sub = inbound::build(&out.report).map_err(|(f, reason)| MapError::InvalidOutput {
            mapping: m.name.clone(),
            what: "report submission".into(),
            reason: format!("{}: {reason}", f.name()),
            rules: rules_for_field(rules, f),
        })?;
        Ok(Inbound {
            mapping: m.name.clone(),
            version: self.version.clone(),
            submissions: vec![sub],
            groups: vec![vec![0]],
            unmapped: count(env.unmapped),
            warnings,
        })
    }
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

fn context_value(ctx: &InboundContext, resource: Option<&Value>) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(d) = &ctx.domain {
        m.insert("domain".into(), Value::String(d.clone()));
    }
    m.insert("site".into(), ctx.site.clone());
    m.insert("config".into(), ctx.config.clone());
    if let Some(r) = resource {
        m.insert("resource".into(), r.clone());
    }
    Value::Object(m)
}

fn site_zone(site: Option<&Value>) -> Result<Option<TimeZone>, MapError> {
    match site.and_then(|s| s.get("timeZone")).and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(name) => jiff::tz::db()
            .get(name)
            .map(Some)
            .map_err(|_| MapError::Value {
                rule: "site.timeZone".into(),
                reason: "not a known IANA time zone".into(),
            }),
    }
}

fn count(seen: Vec<(String, String)>) -> Vec<Unmapped> {
    let mut m: BTreeMap<(String, String), usize> = BTreeMap::new();
    for k in seen {
        *m.entry(k).or_default() += 1;
    }
    m.into_iter()
        .map(|((table, value), count)| Unmapped {
            table,
            value,
            count,
        })
        .collect()
}

fn all_rules<'r>(rules: &'r [compile::Rule], out: &mut Vec<&'r compile::Rule>) {
    for r in rules {
        out.push(r);
        if let Some(e) = &r.each {
            all_rules(&e.rules, out);
        }
    }
}

/// Rules whose target's top element is named in `reason` (serde names the field).
fn rules_hint(rules: &[compile::Rule], reason: &str) -> String {
    let mut all = Vec::new();
    all_rules(rules, &mut all);
    let hits: Vec<String> = all
        .iter()
        .filter(|r| {
            let top = r.at.target.split(['.', '[']).next().unwrap_or("");
            !top.is_empty() && reason.contains(&format!("`{top}`"))
        })
        .map(|r| r.at.to_string())
        .collect();
    if hits.is_empty() {
        "not identified; run a dry run and compare with the resource's definition".into()
    } else {
        hits.join(", ")
    }
}

fn rules_for_field(rules: &[compile::Rule], f: ReportField) -> String {
    let hits: Vec<String> = rules
        .iter()
        .filter(|r| matches!(r.target, compile::Target::Report(x) if x == f))
        .map(|r| r.at.to_string())
        .collect();
    if hits.is_empty() {
        "none".into()
    } else {
        hits.join(", ")
    }
}

/// The contained resources whose rules wrote something, each with its type and id.
fn run_contained<'a>(
    env: &mut eval::Env<'a>,
    plans: &'a [compile::ContainedPlan],
) -> Result<Vec<fhir::Tree>, MapError> {
    let mut out = Vec::new();
    for c in plans {
        if let Some(w) = &c.when
            && !env.test(w)
        {
            continue;
        }
        let mut o = eval::Out::new();
        o.fhir = fhir::Tree::Obj(vec![
            (
                "resourceType".into(),
                fhir::Tree::Leaf(Value::String(c.resource.clone())),
            ),
            ("id".into(), fhir::Tree::Leaf(Value::String(c.id.clone()))),
        ]);
        if env.run(&c.rules, &mut o)? {
            out.push(o.fhir);
        }
    }
    Ok(out)
}

fn run_hl7<'a>(
    m: &'a Compiled,
    env: &mut eval::Env<'a>,
    options: &MapOptions,
    zone: Option<&TimeZone>,
) -> Result<String, MapError> {
    let Plan::Hl7 {
        message,
        version,
        segments,
        line_breaks,
    } = &m.plan
    else {
        return Err(MapError::WrongInput(m.name.clone()));
    };
    let (message, version, line_breaks) = (message.as_str(), version.as_str(), *line_breaks);
    let (code, trigger) = message.split_once('^').unwrap_or((message, ""));
    let structure = format!("{code}_{trigger}");
    let now = options.now.clone().unwrap_or_else(|| {
        jiff::Timestamp::now().to_zoned_datetime(zone.cloned().unwrap_or(TimeZone::UTC))
    });
    let control_id = options
        .control_id
        .clone()
        .unwrap_or_else(writer::new_control_id);
    let fields = MshFields {
        sending_application: "",
        sending_facility: "",
        receiving_application: "",
        receiving_facility: "",
        message_code: code,
        trigger_event: trigger,
        // MSH-9.3 (message structure) exists from v2.3.1.
        structure: (version != "2.3").then_some(structure.as_str()),
        processing_id: "P",
        version,
        charset: None,
    };
    let mut mb = MessageBuilder {
        line_breaks,
        ..MessageBuilder::default()
    };
    for sp in segments {
        if let Some(c) = &sp.when
            && !env.test(c)
        {
            continue;
        }
        let fresh = || {
            if sp.id == "MSH" {
                writer::msh(&fields, &now, &control_id)
            } else {
                SegmentBuilder::new(&sp.id)
            }
        };
        match &sp.each {
            Some((over, alias)) => {
                let items = env.json(over);
                let mut n = 0;
                for item in items {
                    env.bind(alias, item, n + 1);
                    if let Some(w) = &sp.filter
                        && !env.test(w)
                    {
                        env.unbind();
                        continue;
                    }
                    env.set_id = set_id(&mb.segments, &sp.id);
                    let mut out = eval::Out::new();
                    out.seg = fresh();
                    let r = env.run(&sp.rules, &mut out);
                    env.unbind();
                    if r? {
                        n += 1;
                        mb.segments.push(out.seg);
                    }
                }
            }
            None => {
                env.set_id = set_id(&mb.segments, &sp.id);
                let mut out = eval::Out::new();
                out.seg = fresh();
                env.run(&sp.rules, &mut out)?;
                mb.segments.push(out.seg);
            }
        }
    }
    let text = mb.render();
    let checked = match options.hl7_check {
        Hl7Check::Hl7Parser => writer::check_with_hl7_parser(&text),
        Hl7Check::Reader => writer::check_with_reader(&text),
    };
    checked.map_err(|e| MapError::InvalidOutput {
        mapping: m.name.clone(),
        what: message.to_string(),
        reason: e.to_string(),
        rules: "MSH rules and segment list".into(),
    })?;
    Ok(text)
}

/// 1 + the number of `id` segments at the end of `written`: the Set ID of the next one.
fn set_id(written: &[SegmentBuilder], id: &str) -> usize {
    1 + written.iter().rev().take_while(|s| s.id() == id).count()
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
