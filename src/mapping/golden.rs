//! Golden cases: `mappings/tests/<case>/case.yaml` names an input and the expected output
//! of one or more mappings; [`run`] maps, compares and shows a line diff on mismatch, or
//! (with `update`) writes the actual output as the new expectation.
//!
//! `case.yaml`:
//! ```yaml
//! input: order.json            # an Order (JSON), an ORU (.hl7, any charset) or a DiagnosticReport (JSON)
//! kind: order                  # order | oru | diagnostic_report
//! site: {timeZone: Australia/Sydney}   # inbound only: the site context
//! now: "2026-11-20T10:00:00+11:00[Australia/Sydney]"   # MSH-7, for reproducible HL7
//! control_id: GOLDEN0001       # MSH-10
//! outputs:
//!   - mapping: service_request
//!     expected: service_request.json
//!   - mapping: orm_o01
//!     expected: orm_o01.hl7      # stored with LF between segments, for readable diffs
//!   - mapping: oru_to_report
//!     expect_error: "order group 1"   # instead of `expected`: the error must contain this
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::yaml::{self, Kind, Node};
use super::{Body, InboundContext, MapOptions, MappingSet};

/// Result of one output of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `case/expected-file`.
    pub name: String,
    /// Whether it matched.
    pub passed: bool,
    /// Diff or error text when it did not.
    pub detail: Option<String>,
    /// Whether the expectation was (re)written.
    pub updated: bool,
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
}

impl fmt::Display for GoldenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            let st = if r.updated {
                "UPDATED"
            } else if r.passed {
                "ok"
            } else {
                "FAIL"
            };
            writeln!(f, "{st:7} {}", r.name)?;
            if let Some(d) = &r.detail {
                for l in d.lines() {
                    writeln!(f, "        {l}")?;
                }
            }
        }
        let failed = self.results.iter().filter(|r| !r.passed).count();
        write!(f, "{} case output(s), {failed} failed", self.results.len())
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
}

/// Loads the mapping set in `mappings_dir` and runs the cases in `mappings_dir/tests`:
/// what `qubs-bridge mappings test [DIR] [--update]` does.
pub fn run_dir(mappings_dir: &Path, update: bool) -> Result<GoldenReport, GoldenError> {
    let set = MappingSet::load_dir(mappings_dir)?;
    run(&set, &mappings_dir.join("tests"), update)
}

/// Runs every case under `dir` (usually `mappings/tests`) against `set`.
pub fn run(set: &MappingSet, dir: &Path, update: bool) -> Result<GoldenReport, GoldenError> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| GoldenError::Io(dir.to_path_buf(), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("case.yaml").is_file())
        .collect();
    cases.sort();
    let mut report = GoldenReport::default();
    for c in cases {
        run_case(set, &c, update, &mut report.results);
    }
    Ok(report)
}

fn fail(name: String, detail: String) -> CaseResult {
    CaseResult {
        name,
        passed: false,
        detail: Some(detail),
        updated: false,
    }
}

fn run_case(set: &MappingSet, dir: &Path, update: bool, out: &mut Vec<CaseResult>) {
    let cname = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let spec = match std::fs::read_to_string(dir.join("case.yaml")).map(|t| yaml::parse(&t)) {
        Ok(Ok(n)) => n,
        Ok(Err((pos, m))) => return out.push(fail(cname, format!("case.yaml:{pos}: {m}"))),
        Err(e) => return out.push(fail(cname, format!("case.yaml: {e}"))),
    };
    let s = |k: &str| spec.get(k).and_then(Node::scalar_text);
    let Some(input_file) = s("input") else {
        return out.push(fail(cname, "case.yaml: missing `input`".into()));
    };
    let input_bytes = match std::fs::read(dir.join(&input_file)) {
        Ok(b) => b,
        Err(e) => return out.push(fail(cname, format!("{input_file}: {e}"))),
    };
    let kind = s("kind").unwrap_or_else(|| "order".into());
    // HL7 input is read as the bridge reads the wire (any charset); JSON must be UTF-8.
    let input_text = match (kind.as_str(), String::from_utf8(input_bytes.clone())) {
        (_, Ok(t)) => t,
        ("oru", Err(_)) => String::new(),
        (_, Err(e)) => return out.push(fail(cname, format!("{input_file}: {e}"))),
    };
    let options = MapOptions {
        now: s("now").and_then(|t| t.parse().ok()),
        control_id: s("control_id"),
        ..MapOptions::default()
    };
    let ctx = InboundContext {
        domain: s("domain"),
        site: spec.get("site").map(to_json).unwrap_or(Value::Null),
        config: spec.get("config").map(to_json).unwrap_or(Value::Null),
    };
    let outputs: Vec<&Node> = match spec.get("outputs").map(|n| &n.kind) {
        Some(Kind::Seq(v)) => v.iter().collect(),
        _ => return out.push(fail(cname, "case.yaml: `outputs` must be a list".into())),
    };
    for o in outputs {
        let mapping = o
            .get("mapping")
            .and_then(Node::scalar_text)
            .unwrap_or_default();
        let expected = o.get("expected").and_then(Node::scalar_text);
        let expect_error = o.get("expect_error").and_then(Node::scalar_text);
        let name = format!(
            "{cname}/{}",
            expected.clone().unwrap_or_else(|| mapping.clone())
        );
        let actual: Result<String, String> = match kind.as_str() {
            "order" => match serde_json::from_str::<Value>(&input_text) {
                Ok(v) => set
                    .map_order_with(&mapping, &v, &options)
                    .map(|o| render_output(&o.body, &o.unmapped))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("{input_file}: not JSON: {e}")),
            },
            "oru" => set
                .map_oru_bytes_with(&mapping, &input_bytes, &ctx)
                .map(|i| render_inbound(&i))
                .map_err(|e| e.to_string()),
            "diagnostic_report" => match serde_json::from_str::<Value>(&input_text) {
                Ok(v) => set
                    .map_diagnostic_report(&v, &ctx)
                    .map(|i| render_inbound(&i))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("{input_file}: not JSON: {e}")),
            },
            other => Err(format!("unknown kind `{other}`")),
        };
        let r = match (expect_error, expected, actual) {
            (Some(want), _, Err(e)) if e.contains(&want) => CaseResult {
                name,
                passed: true,
                detail: None,
                updated: false,
            },
            (Some(want), _, Err(e)) => fail(
                name,
                format!("expected an error containing {want:?}, got: {e}"),
            ),
            (Some(_), _, Ok(_)) => fail(name, "expected an error, but mapping succeeded".into()),
            (None, None, _) => fail(name, "output needs `expected` or `expect_error`".into()),
            (None, Some(_), Err(e)) => fail(name, format!("mapping failed: {e}")),
            (None, Some(file), Ok(actual)) => {
                let path = dir.join(&file);
                let want = std::fs::read_to_string(&path).unwrap_or_default();
                if want == actual {
                    CaseResult {
                        name,
                        passed: true,
                        detail: None,
                        updated: false,
                    }
                } else if update {
                    match std::fs::write(&path, &actual) {
                        Ok(()) => CaseResult {
                            name,
                            passed: true,
                            detail: None,
                            updated: true,
                        },
                        Err(e) => fail(name, format!("cannot write {file}: {e}")),
                    }
                } else {
                    fail(name, diff(&want, &actual))
                }
            }
        };
        out.push(r);
    }
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
        Body::Fhir(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
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
