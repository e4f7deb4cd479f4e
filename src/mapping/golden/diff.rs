//! Field-level differences between two outputs of a mapping, as an analyst reads them:
//! HL7 v2 segment by segment and field by field (`OBR-24: MR → NMR`), JSON by path
//! (`priority: routine → asap`). Fields that differ on every run (MSH-7, MSH-10, FHIR
//! `meta.lastUpdated`) are volatile: ignored by rule, so a case without a fixed clock
//! still compares.
//!
//! The documents compared are outputs the analyst's own input produced: the differences
//! show values, and belong on the analyst's screen, never in a log.

use std::fmt;

use serde_json::Value;

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// `OBR-24`, `PID-5.2`, `NTE[2]` (a whole segment), `priority`, `note[1].text`.
    pub path: String,
    /// The expected value; `None` when the field or segment is not in the expectation.
    pub expected: Option<String>,
    /// The actual value; `None` when it is not in the output.
    pub actual: Option<String>,
}

impl fmt::Display for FieldDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |v: &Option<String>| match v {
            None => "(absent)".to_string(),
            Some(s) if s.is_empty() => "(empty)".to_string(),
            Some(s) => s.clone(),
        };
        write!(
            f,
            "{}: {} → {}",
            self.path,
            side(&self.expected),
            side(&self.actual)
        )
    }
}

/// HL7 fields whose value changes on every run.
pub const VOLATILE_HL7: &[&str] = &["MSH-7", "MSH-10"];

/// Whether a JSON path is volatile (a resource's `meta.lastUpdated`, at any depth).
fn volatile_json(path: &str) -> bool {
    path == "meta.lastUpdated" || path.ends_with(".meta.lastUpdated")
}

/// The differences between two ER7 messages (segments separated by CR, LF or CRLF),
/// volatile fields left out. Empty when they are the same.
pub fn hl7(expected: &str, actual: &str) -> Vec<FieldDiff> {
    let split = |t: &str| -> Vec<String> {
        t.replace("\r\n", "\n")
            .replace('\r', "\n")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (split(expected), split(actual));
    let delims = Delims::of(&b).unwrap_or_else(|| Delims::of(&a).unwrap_or_default());
    let ids = |segs: &[String]| -> Vec<String> { segs.iter().map(|s| seg_id(s)).collect() };
    let (ida, idb) = (ids(&a), ids(&b));
    let label = |ids: &[String], i: usize| -> String {
        let id = &ids[i];
        let total = ids.iter().filter(|x| *x == id).count();
        if total > 1 {
            let nth = ids[..=i].iter().filter(|x| *x == id).count();
            format!("{id}[{nth}]")
        } else {
            id.clone()
        }
    };
    let mut out = Vec::new();
    for step in align(&a, &b, |x, y| seg_id(x) == seg_id(y)) {
        match step {
            Step::Same(..) => {}
            Step::Pair(i, j) => {
                let at = label(&idb, j);
                segment_fields(&at, &idb[j], &a[i], &b[j], &delims, &mut out);
            }
            Step::Removed(i) => out.push(FieldDiff {
                path: label(&ida, i),
                expected: Some(a[i].clone()),
                actual: None,
            }),
            Step::Added(j) => out.push(FieldDiff {
                path: label(&idb, j),
                expected: None,
                actual: Some(b[j].clone()),
            }),
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Delims {
    field: char,
    component: char,
    repetition: char,
    subcomponent: char,
}

impl Default for Delims {
    fn default() -> Self {
        Delims {
            field: '|',
            component: '^',
            repetition: '~',
            subcomponent: '&',
        }
    }
}

impl Delims {
    fn of(segments: &[String]) -> Option<Delims> {
        let msh = segments.iter().find(|s| s.starts_with("MSH"))?;
        let mut c = msh[3..].chars();
        Some(Delims {
            field: c.next()?,
            component: c.next()?,
            repetition: c.next()?,
            subcomponent: c.nth(1)?,
        })
    }
}

fn seg_id(segment: &str) -> String {
    segment.chars().take(3).collect()
}

/// The fields of one segment that differ, down to the component or sub-component.
fn segment_fields(at: &str, id: &str, a: &str, b: &str, d: &Delims, out: &mut Vec<FieldDiff>) {
    let fields = |s: &str| -> Vec<String> { s.split(d.field).map(str::to_string).collect() };
    let (fa, fb) = (fields(a), fields(b));
    // MSH-1 is the field separator itself: the split's second item is MSH-2.
    let number = |i: usize| if id == "MSH" { i + 1 } else { i };
    for i in 1..fa.len().max(fb.len()) {
        let n = number(i);
        let name = format!("{at}-{n}");
        if VOLATILE_HL7.contains(&format!("{id}-{n}").as_str()) {
            continue;
        }
        let (x, y) = (
            fa.get(i).map_or("", String::as_str),
            fb.get(i).map_or("", String::as_str),
        );
        if x == y {
            continue;
        }
        if id == "MSH" && n == 2 {
            out.push(diff(name, x, y));
            continue;
        }
        field_parts(&name, x, y, d, out);
    }
}

fn diff(path: String, x: &str, y: &str) -> FieldDiff {
    FieldDiff {
        path,
        expected: Some(x.to_string()),
        actual: Some(y.to_string()),
    }
}

/// A differing field, split into repetitions, components and sub-components as far as
/// either side has them.
fn field_parts(name: &str, x: &str, y: &str, d: &Delims, out: &mut Vec<FieldDiff>) {
    let reps = |s: &str| -> Vec<String> { s.split(d.repetition).map(str::to_string).collect() };
    let (ra, rb) = (reps(x), reps(y));
    let many_reps = ra.len().max(rb.len()) > 1;
    for r in 0..ra.len().max(rb.len()) {
        let (x, y) = (
            ra.get(r).map_or("", String::as_str),
            rb.get(r).map_or("", String::as_str),
        );
        if x == y {
            continue;
        }
        let at = if many_reps {
            format!("{name}[{}]", r + 1)
        } else {
            name.to_string()
        };
        let comps = |s: &str| -> Vec<String> { s.split(d.component).map(str::to_string).collect() };
        let (ca, cb) = (comps(x), comps(y));
        if ca.len().max(cb.len()) == 1 {
            out.push(diff(at, x, y));
            continue;
        }
        for c in 0..ca.len().max(cb.len()) {
            let (x, y) = (
                ca.get(c).map_or("", String::as_str),
                cb.get(c).map_or("", String::as_str),
            );
            if x == y {
                continue;
            }
            let at = format!("{at}.{}", c + 1);
            let subs =
                |s: &str| -> Vec<String> { s.split(d.subcomponent).map(str::to_string).collect() };
            let (sa, sb) = (subs(x), subs(y));
            if sa.len().max(sb.len()) == 1 {
                out.push(diff(at, x, y));
                continue;
            }
            for k in 0..sa.len().max(sb.len()) {
                let (x, y) = (
                    sa.get(k).map_or("", String::as_str),
                    sb.get(k).map_or("", String::as_str),
                );
                if x != y {
                    out.push(diff(format!("{at}.{}", k + 1), x, y));
                }
            }
        }
    }
}

/// The differences between two JSON documents by path (`code.coding[1].code`), volatile
/// paths left out. Empty when they are the same.
pub fn json(expected: &Value, actual: &Value) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    json_at(String::new(), expected, actual, &mut out);
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn json_at(path: String, a: &Value, b: &Value, out: &mut Vec<FieldDiff>) {
    if a == b || volatile_json(&path) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = join(&path, k);
                match y.get(k) {
                    Some(vb) => json_at(p, va, vb, out),
                    None if !volatile_json(&p) => out.push(FieldDiff {
                        path: p,
                        expected: Some(shown(va)),
                        actual: None,
                    }),
                    None => {}
                }
            }
            for (k, vb) in y {
                let p = join(&path, k);
                if !x.contains_key(k) && !volatile_json(&p) {
                    out.push(FieldDiff {
                        path: p,
                        expected: None,
                        actual: Some(shown(vb)),
                    });
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            let item = |i: usize| format!("{path}[{i}]");
            if x.len() == y.len() {
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    json_at(item(i), va, vb, out);
                }
                return;
            }
            // An item added or removed: line the lists up so the others compare as pairs.
            for step in align(x, y, same_kind) {
                match step {
                    Step::Same(..) => {}
                    Step::Pair(i, j) => json_at(item(j), &x[i], &y[j], out),
                    Step::Removed(i) => out.push(FieldDiff {
                        path: item(i),
                        expected: Some(shown(&x[i])),
                        actual: None,
                    }),
                    Step::Added(j) => out.push(FieldDiff {
                        path: item(j),
                        expected: None,
                        actual: Some(shown(&y[j])),
                    }),
                }
            }
        }
        _ => out.push(FieldDiff {
            path: if path.is_empty() {
                "(document)".into()
            } else {
                path
            },
            expected: Some(shown(a)),
            actual: Some(shown(b)),
        }),
    }
}

/// Whether two list items may be compared field by field (both objects, or both not).
fn same_kind(a: &Value, b: &Value) -> bool {
    a.is_object() == b.is_object()
}

/// A JSON value as shown in a difference: text without quotes, the rest as compact JSON,
/// long values cut.
fn shown(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    const MAX: usize = 160;
    if s.chars().count() > MAX {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// One step of lining two sequences up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Equal items.
    Same(usize, usize),
    /// Different items of the same kind, compared part by part.
    Pair(usize, usize),
    /// Only in the first sequence.
    Removed(usize),
    /// Only in the second.
    Added(usize),
}

/// Lines `a` and `b` up: equal items by a longest common subsequence, then, between two
/// equal items, the remaining ones in order as pairs where `pairable` allows.
fn align<T: PartialEq>(a: &[T], b: &[T], pairable: impl Fn(&T, &T) -> bool) -> Vec<Step> {
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
    let mut steps = Vec::new();
    let (mut i, mut j) = (0, 0);
    let (mut gap_a, mut gap_b) = (Vec::new(), Vec::new());
    let flush = |gap_a: &mut Vec<usize>, gap_b: &mut Vec<usize>, steps: &mut Vec<Step>| {
        let mut rest_b: Vec<usize> = std::mem::take(gap_b);
        for ia in std::mem::take(gap_a) {
            match rest_b.iter().position(|&jb| pairable(&a[ia], &b[jb])) {
                Some(k) => {
                    // Items of `b` skipped over are additions before this pair.
                    for jb in rest_b.drain(..k) {
                        steps.push(Step::Added(jb));
                    }
                    steps.push(Step::Pair(ia, rest_b.remove(0)));
                }
                None => steps.push(Step::Removed(ia)),
            }
        }
        steps.extend(rest_b.into_iter().map(Step::Added));
    };
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            flush(&mut gap_a, &mut gap_b, &mut steps);
            steps.push(Step::Same(i, j));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || t[i][j + 1] >= t[i + 1][j]) {
            gap_b.push(j);
            j += 1;
        } else {
            gap_a.push(i);
            i += 1;
        }
    }
    flush(&mut gap_a, &mut gap_b, &mut steps);
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORM: &str = "MSH|^~\\&|QUBS-BRIDGE|Site|||20261120100000+1100||ORM^O01^ORM_O01|GOLDEN0001|P|2.5.1\n\
        PID|1||P-1^^^acme^MR||O'Brien^Jane\n\
        NTE|1|P|first\n\
        OBR|1|A1||CT^CT Chest^L||||||||||||||||||||CT";

    #[test]
    fn one_changed_field_is_one_line() {
        let changed = ORM.replace("|||CT", "|||NMR");
        assert!(ORM.ends_with(&format!("L{}CT", "|".repeat(20))));
        let d = hl7(ORM, &changed);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].to_string(), "OBR-24: CT → NMR");
    }

    #[test]
    fn components_and_volatile_fields() {
        let changed = ORM
            .replace("O'Brien^Jane", "O'Brien^Janet")
            .replace("20261120100000+1100", "20261121110000+1100")
            .replace("GOLDEN0001", "X1");
        let d = hl7(ORM, &changed);
        assert_eq!(
            d.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["PID-5.2: Jane → Janet"]
        );
    }

    #[test]
    fn an_inserted_segment_is_one_addition() {
        let changed = ORM.replace("NTE|1|P|first", "NTE|1|P|first\nNTE|2|P|second");
        let d = hl7(ORM, &changed);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "NTE[2]");
        assert_eq!(d[0].expected, None);
        assert_eq!(d[0].actual.as_deref(), Some("NTE|2|P|second"));
    }

    #[test]
    fn json_by_path() {
        let a = json!({"resourceType": "ServiceRequest", "priority": "routine",
            "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
            "note": [{"text": "a"}, {"text": "b"}]});
        let b = json!({"resourceType": "ServiceRequest", "priority": "asap",
            "meta": {"lastUpdated": "2026-02-02T00:00:00Z"},
            "note": [{"text": "a"}, {"text": "new"}, {"text": "b"}]});
        let d: Vec<String> = json(&a, &b).iter().map(ToString::to_string).collect();
        assert_eq!(
            d,
            [
                "priority: routine → asap",
                "note[1]: (absent) → {\"text\":\"new\"}"
            ]
        );
    }
}
