//! `expect_error:` in a golden case: which error a mapping must fail with, matched by what
//! it is (its kind, the rule's target, the table...) rather than by its text, so that a
//! comment added above a rule (which moves its line) does not break the case.
//!
//! ```yaml
//! expect_error:
//!   kind: required          # required | unmapped | value | invalid_output | hl7_input | …
//!   target: PID-3.1         # the failing rule's target
//!   file: orm_o01.yaml      # optional: the mapping file of the rule
//!   table: result_status    # optional: the code table (kind unmapped)
//!   field: site.timeZone    # optional: the input field named (kind value)
//!   group: 1                # optional: the ORDER_OBSERVATION group of an ORU
//!   contains: looked at     # optional: text the message must contain
//! ```
//!
//! The older form, one string the message must contain, still works; line and column
//! numbers in it (`orm_o01.yaml:95:9`) are ignored.

use super::super::MapError;
use super::super::yaml::{Kind, Node};

/// What a mapping error is, in the terms an expectation names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFacts {
    /// `required`, `unmapped`, `value`, `invalid_output`, `hl7_input`, `unknown_mapping`,
    /// `wrong_input`.
    pub kind: &'static str,
    /// The mapping file of the failing rule.
    pub file: Option<String>,
    /// The failing rule's target.
    pub target: Option<String>,
    /// The code table (`unmapped`).
    pub table: Option<String>,
    /// An input field named instead of a rule (`site.timeZone`).
    pub field: Option<String>,
    /// The ORDER_OBSERVATION group (1-based) of an ORU.
    pub group: Option<usize>,
}

impl ErrorFacts {
    /// The facts of `e`.
    pub fn of(e: &MapError) -> ErrorFacts {
        let mut facts = ErrorFacts::default();
        let mut e = e;
        while let MapError::InGroup { group, source, .. } = e {
            facts.group = Some(*group);
            e = source;
        }
        let rule = match e {
            MapError::Required { rule, .. } => {
                facts.kind = "required";
                Some(rule)
            }
            MapError::Unmapped { rule, table, .. } => {
                facts.kind = "unmapped";
                facts.table = Some(table.clone());
                Some(rule)
            }
            MapError::Value { rule, .. } => {
                facts.kind = "value";
                Some(rule)
            }
            MapError::InvalidOutput { mapping, .. } => {
                facts.kind = "invalid_output";
                facts.file = Some(format!("{mapping}.yaml"));
                None
            }
            MapError::Hl7(_) => {
                facts.kind = "hl7_input";
                None
            }
            MapError::UnknownMapping(_) => {
                facts.kind = "unknown_mapping";
                None
            }
            MapError::WrongInput(_) => {
                facts.kind = "wrong_input";
                None
            }
            MapError::InGroup { .. } => unreachable!("unwrapped above"),
        };
        if let Some(rule) = rule {
            match parse_rule(rule) {
                Some((file, target)) => {
                    facts.file = Some(file);
                    facts.target = Some(target);
                }
                // Not a rule: an input field or the message (`site.timeZone`, `message X`).
                None => facts.field = Some(rule.clone()),
            }
        }
        facts
    }
}

/// `file.yaml:12:5 (target `X`)` → (`file.yaml`, `X`).
fn parse_rule(rule: &str) -> Option<(String, String)> {
    let (at, rest) = rule.split_once(" (target `")?;
    let target = rest.strip_suffix("`)")?;
    let file = at.split(':').next()?;
    Some((file.to_string(), target.to_string()))
}

/// An `expect_error:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// The older form: text the message contains (line:column ignored).
    Text(String),
    /// What the error must be; unset keys are not checked.
    Facts {
        /// As [`ErrorFacts::kind`].
        kind: Option<String>,
        /// As [`ErrorFacts::file`].
        file: Option<String>,
        /// As [`ErrorFacts::target`].
        target: Option<String>,
        /// As [`ErrorFacts::table`].
        table: Option<String>,
        /// As [`ErrorFacts::field`].
        field: Option<String>,
        /// As [`ErrorFacts::group`].
        group: Option<usize>,
        /// Text the message contains.
        contains: Option<String>,
    },
}

/// The kinds an expectation may name.
pub const KINDS: &[&str] = &[
    "required",
    "unmapped",
    "value",
    "invalid_output",
    "hl7_input",
    "unknown_mapping",
    "wrong_input",
];

const KEYS: &[&str] = &[
    "kind", "file", "target", "table", "field", "group", "contains",
];

impl Expectation {
    /// Reads `expect_error:` (text, or a mapping of the keys above).
    pub fn parse(n: &Node) -> Result<Expectation, String> {
        if let Some(text) = n.scalar_text() {
            return Ok(Expectation::Text(text));
        }
        let Kind::Map(entries) = &n.kind else {
            return Err("`expect_error` must be text or a mapping such as `{kind: required, target: PID-3.1}`".into());
        };
        for (k, _) in entries {
            let key = k.scalar_text().unwrap_or_default();
            if !KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "unknown key `{key}` in `expect_error` (known: {})",
                    KEYS.join(", ")
                ));
            }
        }
        let text = |k: &str| n.get(k).and_then(Node::scalar_text);
        let kind = text("kind");
        if let Some(k) = &kind
            && !KINDS.contains(&k.as_str())
        {
            return Err(format!(
                "`expect_error.kind` `{k}` is not one of {}",
                KINDS.join(", ")
            ));
        }
        let group = match text("group") {
            None => None,
            Some(g) => Some(
                g.parse::<usize>()
                    .map_err(|_| format!("`expect_error.group` must be a number, not `{g}`"))?,
            ),
        };
        Ok(Expectation::Facts {
            kind,
            file: text("file"),
            target: text("target"),
            table: text("table"),
            field: text("field"),
            group,
            contains: text("contains"),
        })
    }

    /// `None` when `e` is the expected error, else what differs.
    pub fn check(&self, e: &MapError) -> Option<String> {
        let message = e.to_string();
        match self {
            Expectation::Text(want) => {
                let (want_m, got_m) = (without_positions(want), without_positions(&message));
                (!got_m.contains(&want_m))
                    .then(|| format!("expected an error containing {want:?}, got: {message}"))
            }
            Expectation::Facts {
                kind,
                file,
                target,
                table,
                field,
                group,
                contains,
            } => {
                let got = ErrorFacts::of(e);
                let mut wrong = Vec::new();
                let mut cmp = |name: &str, want: &Option<String>, have: Option<&str>| {
                    if let Some(w) = want
                        && have != Some(w.as_str())
                    {
                        wrong.push(format!("{name} `{w}` (got {})", shown(have)));
                    }
                };
                cmp("kind", kind, Some(got.kind));
                cmp("file", file, got.file.as_deref());
                cmp("target", target, got.target.as_deref());
                cmp("table", table, got.table.as_deref());
                cmp("field", field, got.field.as_deref());
                let g = got.group.map(|g| g.to_string());
                cmp("group", &group.map(|g| g.to_string()), g.as_deref());
                if let Some(c) = contains
                    && !message.contains(c.as_str())
                {
                    wrong.push(format!("a message containing {c:?}"));
                }
                (!wrong.is_empty()).then(|| {
                    format!(
                        "expected an error with {}; the mapping failed with: {message}",
                        wrong.join(", ")
                    )
                })
            }
        }
    }
}

fn shown(v: Option<&str>) -> String {
    v.map_or("none".into(), |s| format!("`{s}`"))
}

/// `orm_o01.yaml:95:9 (target …` → `orm_o01.yaml (target …`: line and column left out,
/// so that a comment above a rule does not break an expectation.
fn without_positions(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find(".yaml:").or_else(|| rest.find(".yml:")) {
        let ext = if rest[p..].starts_with(".yaml:") {
            5
        } else {
            4
        };
        out.push_str(&rest[..p + ext]);
        let after = &rest[p + ext..];
        // `:line:col` (or `:line`): skip it.
        let digits = |t: &str| {
            t.strip_prefix(':')
                .map(|u| u.len() - u.trim_start_matches(|c: char| c.is_ascii_digit()).len())
                .filter(|n| *n > 0)
                .map(|n| n + 1)
        };
        match digits(after) {
            Some(n1) => {
                let after = &after[n1..];
                rest = match digits(after) {
                    Some(n2) => &after[n2..],
                    None => after,
                };
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_ignored_in_text_expectations() {
        assert_eq!(
            without_positions("x: orm_o01.yaml:95:9 (target `PID-3.1`): required"),
            "x: orm_o01.yaml (target `PID-3.1`): required"
        );
        let e = MapError::Required {
            rule: "orm_o01.yaml:97:9 (target `PID-3.1`)".into(),
            sources: "appointment.patientId".into(),
        };
        let old = Expectation::Text("orm_o01.yaml:95:9 (target `PID-3.1`): required".into());
        assert_eq!(old.check(&e), None);
    }

    #[test]
    fn facts_match_kind_target_and_group() {
        let e = MapError::InGroup {
            msh10: "M1".into(),
            group: 2,
            source: Box::new(MapError::Unmapped {
                rule: "oru_to_report.yaml:40:5 (target `reportStatus`)".into(),
                table: "result_status".into(),
                sources: "OBR-25".into(),
                value: "R".into(),
            }),
        };
        let f = ErrorFacts::of(&e);
        assert_eq!(f.kind, "unmapped");
        assert_eq!(f.target.as_deref(), Some("reportStatus"));
        assert_eq!(f.file.as_deref(), Some("oru_to_report.yaml"));
        assert_eq!(f.group, Some(2));
        let want = |target: &str| Expectation::Facts {
            kind: Some("unmapped".into()),
            file: None,
            target: Some(target.into()),
            table: Some("result_status".into()),
            field: None,
            group: Some(2),
            contains: None,
        };
        assert_eq!(want("reportStatus").check(&e), None);
        let miss = want("reportText").check(&e).unwrap();
        assert!(
            miss.contains("target `reportText` (got `reportStatus`)"),
            "{miss}"
        );
    }
}
