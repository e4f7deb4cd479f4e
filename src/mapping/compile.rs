//! Compiling a mapping set: each file goes through the four passes — [`super::parse`],
//! [`super::resolve`], [`super::check`], [`super::lower`] — and every problem of every
//! file is reported together, root cause first ([`super::diag`]). Table files are read
//! through one [`Sources`], so each is read once and the set's version hashes exactly the
//! bytes compiled.

use std::path::PathBuf;

use super::Diagnostic;
use super::diag::Diags;
use super::ir::{FieldUse, UseKind};
use super::plan::Plan;
use super::source::Sources;
use super::spec::InputKind;

/// A compiled mapping file.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The mapping's name (`mapping:`).
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// Input kind.
    pub input: InputKind,
    /// The evaluation plan.
    pub plan: Plan,
    /// Input fields read, as shape keys (`comments[].commentText`).
    pub reads: Vec<String>,
    /// Input fields deliberately not sent, with the reason (`not_sent:`).
    pub not_sent: Vec<(String, String)>,
    /// Which rule uses which input field, and how.
    pub uses: Vec<FieldUse>,
    /// Load-time findings that do not stop the mapping (e.g. one LOINC code for keys
    /// that name different exams).
    pub warnings: Vec<Diagnostic>,
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

/// Compiles mapping files given as `(path, text)`; table files are read from disk relative
/// to each path. Returns the compiled mappings (in the order given) and the set's version.
pub fn compile_set(
    files: &[(PathBuf, String)],
) -> Result<(Vec<Compiled>, String), Vec<Diagnostic>> {
    let mut sources = Sources::default();
    let mut diags = Diags::default();
    let mut out = Vec::new();
    for (path, text) in files {
        sources.add_mapping(path, text);
        let mark = diags.error_count();
        let Some(ast) = super::parse::parse_file(path, text, &mut sources, &mut diags) else {
            continue;
        };
        let mut m = super::resolve::resolve(path, &ast, &mut diags);
        m.warnings = super::check::check(&m, &mut diags);
        if diags.errors_since(mark) {
            continue;
        }
        let plan = super::lower::lower(&m);
        out.push(Compiled {
            name: m.name,
            file: m.file,
            input: m.input,
            plan,
            reads: m.reads,
            not_sent: m.not_sent.into_iter().map(|(k, r, _)| (k, r)).collect(),
            uses: m.uses,
            warnings: m.warnings,
        });
    }
    let errors = diags.into_sorted();
    if errors.is_empty() {
        Ok((out, sources.version()))
    } else {
        Err(errors)
    }
}

/// Compiles one mapping file's text (table files read relative to `file`).
pub fn compile(file: &std::path::Path, text: &str) -> Result<Compiled, Vec<Diagnostic>> {
    compile_set(&[(file.to_path_buf(), text.to_string())]).map(|(mut v, _)| v.remove(0))
}
