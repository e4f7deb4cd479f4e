//! Golden cases: `mappings/tests/<case>/case.yaml` names an input and the expected output
//! of one or more mappings; [`run_cases`] maps, compares field by field ([`diff`]) and
//! shows what changed, or writes the actual output as the new expectation when the caller
//! accepts it (`--update`, or a yes at the interactive prompt).
//!
//! `case.yaml`:
//! ```yaml
//! input: order.json            # an Order (JSON), an ORU (.hl7, any charset) or a DiagnosticReport (JSON)
//! kind: order                  # order | oru | diagnostic_report (default: from the input)
//! site: {timeZone: Australia/Sydney}   # inbound only: the site context
//! now: "2026-11-20T10:00:00+11:00[Australia/Sydney]"   # MSH-7, for reproducible HL7
//! control_id: GOLDEN0001       # MSH-10
//! outputs:                     # default: every mapping that reads this kind of input
//!   - mapping: service_request
//!     expected: service_request.json   # default: <mapping>.json, or .hl7 for HL7
//!   - mapping: orm_o01
//!     expected: orm_o01.hl7      # stored with LF between segments, for readable diffs
//!   - mapping: oru_to_report
//!     expect_error: {kind: required, target: reportText}   # see [`expect`]
//! ```

pub mod diff;
pub mod expect;

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::plan::Output as Plan;
use super::yaml::{self, Kind, Node};
use super::{Body, InboundContext, InputKind, MapOptions, MappingSet};
use diff::FieldDiff;
use expect::Expectation;

/// How one case output came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The output is the expected one (volatile fields aside), or the expected error.
    Passed,
    /// It differs, or the case could not run.
    Failed,
    /// There is no expectation yet.
    New,
    /// The expectation was (re)written with this run's output.
    Updated,
}

impl Status {
    /// `ok`, `fail`, `new`, `updated`: the `status` of `mappings test --format json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "ok",
            Status::Failed => "fail",
            Status::New => "new",
            Status::Updated => "updated",
        }
    }
}

/// Result of one output of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `case/expected-file` (or `case/mapping` for an expected error).
    pub name: String,
    /// The case (its directory's name).
    pub case: String,
    /// How it came out.
    pub status: Status,
    /// Whether it passed (or was updated).
    pub passed: bool,
    /// What differs, or why it failed, for people.
    pub detail: Option<String>,
    /// The fields that differ (empty when it passed or failed for another reason).
    pub diffs: Vec<FieldDiff>,
    /// Whether the expectation was (re)written.
    pub updated: bool,
}

impl CaseResult {
    fn new(name: String, case: &str, status: Status, detail: Option<String>) -> CaseResult {
        CaseResult {
            name,
            case: case.to_string(),
            passed: matches!(status, Status::Passed | Status::Updated),
            updated: status == Status::Updated,
            status,
            detail,
            diffs: Vec::new(),
        }
    }
}

/// Results of a golden run.
#[derive(Debug, Clone, Default)]
pub struct GoldenReport {
    /// One per case output.
    pub results: Vec<CaseResult>,
}

impl GoldenReport {
    /// Whether every case passed.
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    /// How many came out `status`.
    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }

    /// The closing line: `66 case output(s), 1 failed, 1 without expectation`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} case output(s), {} failed",
            self.results.len(),
            self.count(Status::Failed)
        );
        for (status, what) in [
            (Status::New, "without expectation"),
            (Status::Updated, "updated"),
        ] {
            let n = self.count(status);
            if n > 0 {
                s.push_str(&format!(", {n} {what}"));
            }
        }
        s
    }
}

impl fmt::Display for GoldenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            let st = match r.status {
                Status::Passed => "ok",
                Status::Failed => "FAIL",
                Status::New => "NEW",
                Status::Updated => "UPDATED",
            };
            writeln!(f, "{st:7} {}", r.name)?;
            if let Some(d) = &r.detail {
                for l in d.lines() {
                    writeln!(f, "        {l}")?;
                }
            }
        }
        write!(f, "{}", self.summary())
    }
}

/// Why the golden run itself could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// The tests directory cannot be read.
    #[error("cannot read golden cases in {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The mapping files do not load.
    #[error("{0}")]
    Load(#[from] super::LoadErrors),
    /// A `--case` pattern matched no case.
    #[error("no golden case matches `{pattern}` (cases: {known})")]
    NoMatch {
        /// The pattern.
        pattern: String,
        /// The cases there are.
        known: String,
    },
}

/// A mismatch (or a case without expectation) offered for acceptance.
#[derive(Debug, Clone)]
pub struct Proposal<'a> {
    /// `case/expected-file`.
    pub name: &'a str,
    /// No expectation existed.
    pub new: bool,
    /// What differs, as shown to people (empty for a new case).
    pub detail: &'a str,
    /// The output that would become the expectation.
    pub actual: &'a str,
}

/// Loads the mapping set in `mappings_dir` and runs the cases in `mappings_dir/tests`:
/// what `qubs-bridge mappings test [DIR] [--update]` does.
pub fn run_dir(mappings_dir: &Path, update: bool) -> Result<GoldenReport, GoldenError> {
    let set = MappingSet::load_dir(mappings_dir)?;
    run(&set, &mappings_dir.join("tests"), update)
}

/// Runs every case under `dir` (usually `mappings/tests`) against `set`; with `update`,
/// every mismatch becomes the new expectation.
pub fn run(set: &MappingSet, dir: &Path, update: bool) -> Result<GoldenReport, GoldenError> {
    run_cases(set, dir, &[], &mut |_| update)
}

/// The case directories under `dir` (those with a `case.yaml`), sorted.
pub fn case_names(dir: &Path) -> Result<Vec<String>, GoldenError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| GoldenError::Io(dir.to_path_buf(), e))?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("case.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Runs the cases under `dir` whose names match one of `patterns` (all when empty; `*`
/// and `?` are wildcards). For each output that differs from its expectation, or has
/// none yet, `accept` decides whether this run's output becomes the expectation.
pub fn run_cases(
    set: &MappingSet,
    dir: &Path,
    patterns: &[String],
    accept: &mut dyn FnMut(&Proposal<'_>) -> bool,
) -> Result<GoldenReport, GoldenError> {
    let names = case_names(dir)?;
    for p in patterns {
        if !names.iter().any(|n| wildcard(p, n)) {
            return Err(GoldenError::NoMatch {
                pattern: p.clone(),
                known: names.join(", "),
            });
        }
    }
    let mut report = GoldenReport::default();
    for name in names
        .iter()
        .filter(|n| patterns.is_empty() || patterns.iter().any(|p| wildcard(p, n)))
    {
        run_case(set, &dir.join(name), accept, &mut report.results);
    }
    Ok(report)
}

/// `*` (any run of characters) and `?` (one character) wildcards.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// The input of one golden case.
#[derive(Debug, Clone)]
pub struct CaseInput {
    /// The case.
    pub case: String,
    /// What it is.
    pub kind: InputKind,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl CaseInput {
    /// The input as text (an ORU in whatever charset it was sent).
    pub fn text(&self) -> String {
        crate::hl7::charset::decode(&self.bytes).text.into_owned()
    }

    /// The input as JSON.
    pub fn json(&self) -> Result<Value, GoldenError> {
        serde_json::from_slice(&self.bytes).map_err(|e| {
            GoldenError::Io(
                PathBuf::from(&self.case),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }
}

/// The inputs of the cases under `dir` (cases whose `case.yaml` or input cannot be read
/// are left out: `mappings test` reports them).
pub fn case_inputs(dir: &Path) -> Result<Vec<CaseInput>, GoldenError> {
    let mut out = Vec::new();
    for case in case_names(dir)? {
        let d = dir.join(&case);
        let Ok(Ok(spec)) = std::fs::read_to_string(d.join("case.yaml")).map(|t| yaml::parse(&t))
        else {
            continue;
        };
        let Some(file) = spec.get("input").and_then(Node::scalar_text) else {
            continue;
        };
        let Ok(bytes) = std::fs::read(d.join(&file)) else {
            continue;
        };
        let kind = match spec
            .get("kind")
            .and_then(Node::scalar_text)
            .as_deref()
            .unwrap_or_else(|| infer_kind(&file, &bytes))
        {
            "oru" => InputKind::Oru,
            "diagnostic_report" => InputKind::DiagnosticReport,
            _ => InputKind::Order,
        };
        out.push(CaseInput { case, kind, bytes });
    }
    Ok(out)
}

/// The kind of an input when `case.yaml` does not say: ER7 is an ORU, a JSON resource of
/// type DiagnosticReport a DiagnosticReport, anything else an order.
fn infer_kind(file: &str, bytes: &[u8]) -> &'static str {
    if file.ends_with(".hl7") || bytes.starts_with(b"MSH") {
        return "oru";
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if v.get("resourceType").and_then(Value::as_str) == Some("DiagnosticReport") => {
            "diagnostic_report"
        }
        _ => "order",
    }
}

/// One `outputs:` entry.
struct Wanted {
    mapping: String,
    expected: Option<String>,
    expect_error: Option<Result<Expectation, String>>,
}

fn run_case(
    set: &MappingSet,
    dir: &Path,
    accept: &mut dyn FnMut(&Proposal<'_>) -> bool,
    out: &mut Vec<CaseResult>,
) {
    let cname = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let fail =
        |detail: String| CaseResult::new(cname.clone(), &cname, Status::Failed, Some(detail));
    let spec = match std::fs::read_to_string(dir.join("case.yaml")).map(|t| yaml::parse(&t)) {
        Ok(Ok(n)) => n,
        Ok(Err((pos, m))) => return out.push(fail(format!("case.yaml:{pos}: {m}"))),
        Err(e) => return out.push(fail(format!("case.yaml: {e}"))),
    };
    let s = |k: &str| spec.get(k).and_then(Node::scalar_text);
    let Some(input_file) = s("input") else {
        return out.push(fail(
            "case.yaml: missing `input` (the input file of this case)".into(),
        ));
    };
    let input_bytes = match std::fs::read(dir.join(&input_file)) {
        Ok(b) => b,
        Err(e) => return out.push(fail(format!("{input_file}: {e}"))),
    };
    let kind = s("kind").unwrap_or_else(|| infer_kind(&input_file, &input_bytes).into());
    let input_kind = match kind.as_str() {
        "order" => InputKind::Order,
        "oru" => InputKind::Oru,
        "diagnostic_report" => InputKind::DiagnosticReport,
        other => {
            return out.push(fail(format!(
                "case.yaml: unknown kind `{other}` (order, oru or diagnostic_report)"
            )));
        }
    };
    // HL7 input is read as the bridge reads the wire (any charset); JSON must be UTF-8.
    let input_text = match (input_kind, String::from_utf8(input_bytes.clone())) {
        (_, Ok(t)) => t,
        (InputKind::Oru, Err(_)) => String::new(),
        (_, Err(e)) => return out.push(fail(format!("{input_file}: {e}"))),
    };
    // Golden cases prove the outputs: the full check, with the independent parsers.
    let options = MapOptions {
        now: s("now").and_then(|t| t.parse().ok()),
        control_id: s("control_id"),
        check: Some(super::OutputCheck::Full),
    };
    let ctx = InboundContext {
        domain: s("domain"),
        site: spec.get("site").map(to_json).unwrap_or(Value::Null),
        config: spec.get("config").map(to_json).unwrap_or(Value::Null),
    };
    let wanted: Vec<Wanted> = match spec.get("outputs").map(|n| &n.kind) {
        Some(Kind::Seq(v)) => v
            .iter()
            .map(|o| Wanted {
                mapping: o
                    .get("mapping")
                    .and_then(Node::scalar_text)
                    .unwrap_or_default(),
                expected: o.get("expected").and_then(Node::scalar_text),
                expect_error: o.get("expect_error").map(Expectation::parse),
            })
            .collect(),
        // Without `outputs`, every mapping of this kind of input.
        None => set
            .names()
            .filter(|n| set.get(n).is_some_and(|m| m.input == input_kind))
            .map(|n| Wanted {
                mapping: n.to_string(),
                expected: None,
                expect_error: None,
            })
            .collect(),
        Some(_) => return out.push(fail("case.yaml: `outputs` must be a list".into())),
    };
    for w in wanted {
        let Some(m) = set.get(&w.mapping) else {
            out.push(fail(format!(
                "case.yaml: no mapping `{}` in the set (it has: {})",
                w.mapping,
                set.names().collect::<Vec<_>>().join(", ")
            )));
            continue;
        };
        let is_hl7 = matches!(m.plan.output, Plan::Hl7 { .. });
        let actual: Result<String, super::MapError> = match input_kind {
            InputKind::Order => match order_document(&input_text) {
                Ok(v) => set
                    .map_order_with(&w.mapping, &v, &options)
                    .map(|o| render_output(&o.body, &o.unmapped)),
                Err(e) => {
                    out.push(fail(format!("{input_file}: {e}")));
                    continue;
                }
            },
            InputKind::Oru => set
                .map_oru_bytes_with(&w.mapping, &input_bytes, &ctx)
                .map(|i| render_inbound(&i)),
            InputKind::DiagnosticReport => match serde_json::from_str::<Value>(&input_text) {
                Ok(v) => set
                    .map_diagnostic_report(&v, &ctx)
                    .map(|i| render_inbound(&i)),
                Err(e) => {
                    out.push(fail(format!("{input_file}: not JSON: {e}")));
                    continue;
                }
            },
        };
        if let Some(expectation) = w.expect_error {
            let name = format!("{cname}/{}", w.mapping);
            let r = match (expectation, actual) {
                (Err(bad), _) => fail_named(name, &cname, format!("case.yaml: {bad}")),
                (Ok(want), Err(e)) => match want.check(&e) {
                    None => CaseResult::new(name, &cname, Status::Passed, None),
                    Some(why) => fail_named(name, &cname, why),
                },
                (Ok(_), Ok(_)) => fail_named(
                    name,
                    &cname,
                    "expected an error, but the mapping succeeded".into(),
                ),
            };
            out.push(r);
            continue;
        }
        let file = w
            .expected
            .unwrap_or_else(|| format!("{}.{}", w.mapping, if is_hl7 { "hl7" } else { "json" }));
        let name = format!("{cname}/{file}");
        let actual = match actual {
            Ok(a) => a,
            Err(e) => {
                out.push(fail_named(name, &cname, format!("mapping failed: {e}")));
                continue;
            }
        };
        let path = dir.join(&file);
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        let (status, detail, diffs) = if want.trim().is_empty() {
            (Status::New, String::new(), Vec::new())
        } else {
            match compare(&want, &actual, is_hl7) {
                None => {
                    out.push(CaseResult::new(name, &cname, Status::Passed, None));
                    continue;
                }
                Some((detail, diffs)) => (Status::Failed, detail, diffs),
            }
        };
        let proposal = Proposal {
            name: &name,
            new: status == Status::New,
            detail: &detail,
            actual: &actual,
        };
        let mut r = if accept(&proposal) {
            match write_atomically(&path, &actual) {
                Ok(()) => CaseResult::new(name, &cname, Status::Updated, None),
                Err(e) => fail_named(name, &cname, format!("cannot write {file}: {e}")),
            }
        } else if status == Status::New {
            CaseResult::new(
                name,
                &cname,
                Status::New,
                Some("no expectation yet — run with --update to record this output".into()),
            )
        } else {
            CaseResult::new(name, &cname, Status::Failed, Some(detail))
        };
        if r.status == Status::Failed {
            r.diffs = diffs;
        }
        out.push(r);
    }
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so
/// a reader (a mapping reload, a golden run beside) sees the old file or the new one, never
/// half of one. The temporary name starts with a dot and ends in `.tmp`: neither a mapping
/// file nor a case's expectation.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn fail_named(name: String, case: &str, detail: String) -> CaseResult {
    CaseResult::new(name, case, Status::Failed, Some(detail))
}

/// The order document of an order case.
fn order_document(text: &str) -> Result<Value, String> {
    serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| format!("not JSON: {e}"))
}

/// `None` when `actual` matches `want` (volatile fields aside); else the differences
/// for people and by field.
fn compare(want: &str, actual: &str, is_hl7: bool) -> Option<(String, Vec<FieldDiff>)> {
    if want == actual {
        return None;
    }
    let (want_doc, want_unmapped) = split_trailer(want);
    let (got_doc, got_unmapped) = split_trailer(actual);
    let diffs = if is_hl7 {
        Some(diff::hl7(want_doc, got_doc))
    } else {
        match (
            serde_json::from_str::<Value>(want_doc),
            serde_json::from_str::<Value>(got_doc),
        ) {
            (Ok(a), Ok(b)) => Some(diff::json(&a, &b)),
            // An expectation edited into something that is not JSON: lines it is.
            _ => None,
        }
    };
    let mut lines: Vec<String> = Vec::new();
    match &diffs {
        Some(d) => lines.extend(d.iter().map(ToString::to_string)),
        None => lines.push(diff(want_doc, got_doc)),
    }
    for u in &want_unmapped {
        if !got_unmapped.contains(u) {
            lines.push(format!("- {u}"));
        }
    }
    for u in &got_unmapped {
        if !want_unmapped.contains(u) {
            lines.push(format!("+ {u}"));
        }
    }
    if lines.is_empty() {
        // Only volatile fields, or formatting, differ.
        return None;
    }
    Some((lines.join("\n"), diffs.unwrap_or_default()))
}

/// The document and its trailing `# unmapped: …` lines.
fn split_trailer(text: &str) -> (&str, Vec<String>) {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut k = lines.len();
    while k > 0 && (lines[k - 1].starts_with("# unmapped: ") || lines[k - 1].trim().is_empty()) {
        k -= 1;
    }
    let doc_len: usize = lines[..k].iter().map(|l| l.len()).sum();
    let unmapped = lines[k..]
        .iter()
        .filter_map(|l| l.strip_prefix("# "))
        .map(|l| l.trim_end().to_string())
        .collect();
    (&text[..doc_len], unmapped)
}

fn to_json(n: &Node) -> Value {
    match &n.kind {
        Kind::Null => Value::Null,
        Kind::Bool(b) => Value::Bool(*b),
        Kind::Number(s) => s
            .parse::<serde_json::Number>()
            .map_or(Value::String(s.clone()), Value::Number),
        Kind::Str(s) => Value::String(s.clone()),
        Kind::Seq(v) => Value::Array(v.iter().map(to_json).collect()),
        Kind::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.scalar_text().unwrap_or_default(), to_json(v)))
                .collect(),
        ),
    }
}

/// Text form of an outbound result used in expectations.
pub fn render_output(body: &Body, unmapped: &[super::Unmapped]) -> String {
    let mut s = match body {
        Body::Fhir(v) => v.to_pretty(),
        Body::Hl7(t) => t.trim_end_matches('\r').replace('\r', "\n"),
    };
    s.push('\n');
    for u in unmapped {
        // Kept out of the document itself, after it, so a diff shows both.
        s.push_str(&format!(
            "# unmapped: table {} value {:?} x{}\n",
            u.table, u.value, u.count
        ));
    }
    s
}

fn render_inbound(i: &super::Inbound) -> String {
    let v = serde_json::json!({
        "submissions": i.submissions,
        "unmapped": i.unmapped,
        "warnings": i.warnings,
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// A line diff (`-` expected, `+` actual) with a little context.
pub fn diff(want: &str, got: &str) -> String {
    let a: Vec<&str> = want.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    // LCS table; expectations are small.
    let mut t = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            t[i][j] = if a[i] == b[j] {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || t[i][j + 1] > t[i + 1][j]) {
            ops.push(('+', b[j]));
            j += 1;
        } else {
            ops.push(('-', a[i]));
            i += 1;
        }
    }
    let near = |k: usize| {
        ops[k.saturating_sub(2)..(k + 3).min(ops.len())]
            .iter()
            .any(|o| o.0 != ' ')
    };
    let mut out = String::from("--- expected\n+++ actual\n");
    let mut skipped = false;
    for (k, (c, l)) in ops.iter().enumerate() {
        if *c == ' ' && !near(k) {
            skipped = true;
            continue;
        }
        if skipped {
            out.push_str("  ...\n");
            skipped = false;
        }
        out.push(*c);
        out.push(' ');
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changes_with_context() {
        let d = diff("a\nb\nc\nd\ne\nf\ng\n", "a\nb\nc\nX\ne\nf\ng\n");
        assert!(d.contains("- d\n+ X\n"), "{d}");
        assert!(d.contains("  c\n") && !d.contains("  a\n"), "{d}");
    }
}
