//! Load-time diagnostics of a mapping set: collected by every pass, reported root cause
//! first and in a stable order.
//!
//! Each error carries the pass that found it ([`Stage`]). A file that cannot be read or is
//! not YAML is reported before the problems of its shape, which come before unknown names,
//! which come before the checks of meaning: the first message is the one to fix first.
//! Within a stage, errors are ordered by file, then line and column, then text, so two runs
//! over the same files print the same lines in the same order.

use std::path::{Path, PathBuf};

use super::Diagnostic;
use super::yaml::Pos;

/// The pass that found a problem, in the order problems are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// A file cannot be read, is not UTF-8 or not YAML.
    Read,
    /// The YAML does not have the shape of a mapping file (keys, lists, text).
    Parse,
    /// A name does not resolve: a source path, a target, a table, a filter, a segment.
    Resolve,
    /// Names resolve but do not fit together: types, bindings, required fields, codes.
    Check,
}

/// Hint given when a message has none of its own.
const DEFAULT_HINT: &str = "see mappings/README.md for the syntax, with examples";

/// Diagnostics collected while a set is compiled.
#[derive(Debug, Default)]
pub struct Diags {
    errors: Vec<(Stage, Diagnostic)>,
    warnings: Vec<Diagnostic>,
}

impl Diags {
    /// Records an error; an empty hint becomes a pointer to the language reference.
    pub fn error(
        &mut self,
        stage: Stage,
        file: &Path,
        pos: Pos,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let hint = hint.into();
        self.errors.push((
            stage,
            Diagnostic {
                file: file.to_path_buf(),
                pos,
                message: message.into(),
                hint: Some(if hint.is_empty() {
                    DEFAULT_HINT.to_string()
                } else {
                    hint
                }),
            },
        ));
    }

    /// Records a warning (a finding that does not stop the mapping).
    pub fn warn(&mut self, file: &Path, pos: Pos, message: String, hint: String) {
        self.warnings.push(Diagnostic {
            file: file.to_path_buf(),
            pos,
            message,
            hint: Some(hint),
        });
    }

    /// Number of errors so far.
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// Whether an error was recorded since `mark` (an [`Diags::error_count`]).
    pub fn errors_since(&self, mark: usize) -> bool {
        self.errors.len() > mark
    }

    /// Takes the warnings recorded since `mark` (a length of the warning list).
    pub fn take_warnings(&mut self) -> Vec<Diagnostic> {
        std::mem::take(&mut self.warnings)
    }

    /// The errors, root cause first, without duplicates.
    pub fn into_sorted(self) -> Vec<Diagnostic> {
        let mut e = self.errors;
        e.sort_by(|(sa, a), (sb, b)| {
            (sa, &a.file, a.pos, &a.message).cmp(&(sb, &b.file, b.pos, &b.message))
        });
        e.dedup_by(|x, y| x.1 == y.1);
        e.into_iter().map(|(_, d)| d).collect()
    }
}

/// A file that is not UTF-8, pointed at its first bad byte (line and character column).
pub fn not_utf8(file: PathBuf, bytes: &[u8], e: std::str::Utf8Error) -> Diagnostic {
    let (pos, message) = not_utf8_at(bytes, e);
    Diagnostic {
        file,
        pos,
        message,
        hint: Some("save mapping and table files as UTF-8".into()),
    }
}

/// Where the first byte that is not UTF-8 is, and a message naming it.
pub fn not_utf8_at(bytes: &[u8], e: std::str::Utf8Error) -> (Pos, String) {
    let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
    let line_start = valid.rfind('\n').map_or(0, |i| i + 1);
    (
        Pos {
            line: valid.matches('\n').count() as u32 + 1,
            column: valid[line_start..].chars().count() as u32 + 1,
        },
        format!("not valid UTF-8 (byte 0x{:02X})", bytes[e.valid_up_to()]),
    )
}
