//! FHIR R4 targets: a compact element list for ServiceRequest and DiagnosticReport (and
//! the datatypes they use), path checks at load time, writing values into a JSON tree, and
//! the fhir-sdk check every resource passes before it leaves.

use serde_json::{Map, Value};

/// Kind of a FHIR element's type, as far as the mapping needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prim {
    /// A JSON string primitive (string, code, uri, dateTime, ...).
    Str,
    /// `boolean`
    Bool,
    /// `integer`, `unsignedInt`, `positiveInt`
    Int,
    /// `decimal`
    Decimal,
}

/// Resolved type of an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// A primitive, with its FHIR type name.
    Prim(Prim, &'static str),
    /// A complex datatype or backbone element, by name.
    Complex(&'static str),
}

/// `(element, type, is_list)`; a type in lower case is a primitive.
type Elements = &'static [(&'static str, &'static str, bool)];

const SERVICE_REQUEST: Elements = &[
    ("id", "id", false),
    ("meta", "Meta", false),
    ("implicitRules", "uri", false),
    ("language", "code", false),
    ("extension", "Extension", true),
    ("identifier", "Identifier", true),
    ("instantiatesCanonical", "canonical", true),
    ("instantiatesUri", "uri", true),
    ("basedOn", "Reference", true),
    ("replaces", "Reference", true),
    ("requisition", "Identifier", false),
    ("status", "code", false),
    ("intent", "code", false),
    ("category", "CodeableConcept", true),
    ("priority", "code", false),
    ("doNotPerform", "boolean", false),
    ("code", "CodeableConcept", false),
    ("orderDetail", "CodeableConcept", true),
    ("quantityQuantity", "Quantity", false),
    ("subject", "Reference", false),
    ("encounter", "Reference", false),
    ("occurrenceDateTime", "dateTime", false),
    ("occurrencePeriod", "Period", false),
    ("asNeededBoolean", "boolean", false),
    ("asNeededCodeableConcept", "CodeableConcept", false),
    ("authoredOn", "dateTime", false),
    ("requester", "Reference", false),
    ("performerType", "CodeableConcept", false),
    ("performer", "Reference", true),
    ("locationCode", "CodeableConcept", true),
    ("locationReference", "Reference", true),
    ("reasonCode", "CodeableConcept", true),
    ("reasonReference", "Reference", true),
    ("insurance", "Reference", true),
    ("supportingInfo", "Reference", true),
    ("specimen", "Reference", true),
    ("bodySite", "CodeableConcept", true),
    ("note", "Annotation", true),
    ("patientInstruction", "string", false),
    ("relevantHistory", "Reference", true),
];

const DIAGNOSTIC_REPORT: Elements = &[
    ("id", "id", false),
    ("meta", "Meta", false),
    ("implicitRules", "uri", false),
    ("language", "code", false),
    ("extension", "Extension", true),
    ("identifier", "Identifier", true),
    ("basedOn", "Reference", true),
    ("status", "code", false),
    ("category", "CodeableConcept", true),
    ("code", "CodeableConcept", false),
    ("subject", "Reference", false),
    ("encounter", "Reference", false),
    ("effectiveDateTime", "dateTime", false),
    ("effectivePeriod", "Period", false),
    ("issued", "instant", false),
    ("performer", "Reference", true),
    ("resultsInterpreter", "Reference", true),
    ("specimen", "Reference", true),
    ("result", "Reference", true),
    ("imagingStudy", "Reference", true),
    ("media", "DiagnosticReportMedia", true),
    ("conclusion", "string", false),
    ("conclusionCode", "CodeableConcept", true),
    ("presentedForm", "Attachment", true),
];

/// Resource types a FHIR mapping may contain (`contained:`).
pub const CONTAINED: &[&str] = &["Patient", "Practitioner", "Location"];

const PATIENT: Elements = &[
    ("identifier", "Identifier", true),
    ("active", "boolean", false),
    ("name", "HumanName", true),
    ("telecom", "ContactPoint", true),
    ("gender", "code", false),
    ("birthDate", "date", false),
    ("address", "Address", true),
];

const PRACTITIONER: Elements = &[
    ("identifier", "Identifier", true),
    ("active", "boolean", false),
    ("name", "HumanName", true),
    ("telecom", "ContactPoint", true),
    ("gender", "code", false),
    ("address", "Address", true),
];

const LOCATION: Elements = &[
    ("identifier", "Identifier", true),
    ("status", "code", false),
    ("name", "string", false),
    ("alias", "string", true),
    ("description", "string", false),
    ("mode", "code", false),
    ("telecom", "ContactPoint", true),
    ("address", "Address", false),
];

fn datatype(name: &str) -> Option<Elements> {
    Some(match name {
        "HumanName" => &[
            ("use", "code", false),
            ("text", "string", false),
            ("family", "string", false),
            ("given", "string", true),
            ("prefix", "string", true),
            ("suffix", "string", true),
            ("period", "Period", false),
        ],
        "ContactPoint" => &[
            ("system", "code", false),
            ("value", "string", false),
            ("use", "code", false),
            ("rank", "positiveInt", false),
            ("period", "Period", false),
        ],
        "Address" => &[
            ("use", "code", false),
            ("type", "code", false),
            ("text", "string", false),
            ("line", "string", true),
            ("city", "string", false),
            ("district", "string", false),
            ("state", "string", false),
            ("postalCode", "string", false),
            ("country", "string", false),
            ("period", "Period", false),
        ],
        "Identifier" => &[
            ("use", "code", false),
            ("type", "CodeableConcept", false),
            ("system", "uri", false),
            ("value", "string", false),
            ("period", "Period", false),
            ("assigner", "Reference", false),
        ],
        "CodeableConcept" => &[("coding", "Coding", true), ("text", "string", false)],
        "Coding" => &[
            ("system", "uri", false),
            ("version", "string", false),
            ("code", "code", false),
            ("display", "string", false),
            ("userSelected", "boolean", false),
        ],
        "Reference" => &[
            ("reference", "string", false),
            ("type", "uri", false),
            ("identifier", "Identifier", false),
            ("display", "string", false),
        ],
        "Annotation" => &[
            ("authorReference", "Reference", false),
            ("authorString", "string", false),
            ("time", "dateTime", false),
            ("text", "markdown", false),
        ],
        "Period" => &[("start", "dateTime", false), ("end", "dateTime", false)],
        "Attachment" => &[
            ("contentType", "code", false),
            ("language", "code", false),
            ("data", "base64Binary", false),
            ("url", "url", false),
            ("size", "unsignedInt", false),
            ("hash", "base64Binary", false),
            ("title", "string", false),
            ("creation", "dateTime", false),
        ],
        "Meta" => &[
            ("versionId", "id", false),
            ("lastUpdated", "instant", false),
            ("source", "uri", false),
            ("profile", "canonical", true),
            ("security", "Coding", true),
            ("tag", "Coding", true),
        ],
        "Quantity" => &[
            ("value", "decimal", false),
            ("comparator", "code", false),
            ("unit", "string", false),
            ("system", "uri", false),
            ("code", "code", false),
        ],
        "Extension" => &[
            ("url", "uri", false),
            ("valueString", "string", false),
            ("valueCode", "code", false),
            ("valueBoolean", "boolean", false),
            ("valueDateTime", "dateTime", false),
            ("valueReference", "Reference", false),
            ("valueCodeableConcept", "CodeableConcept", false),
            ("valueIdentifier", "Identifier", false),
        ],
        "DiagnosticReportMedia" => &[("comment", "string", false), ("link", "Reference", false)],
        _ => return None,
    })
}

/// The top-level element list of a resource type a mapping can produce.
pub fn resource_elements(resource: &str) -> Option<Elements> {
    match resource {
        "ServiceRequest" => Some(SERVICE_REQUEST),
        "DiagnosticReport" => Some(DIAGNOSTIC_REPORT),
        _ => None,
    }
}

/// The element list of an output resource or of a resource it may contain.
fn elements_of(resource: &str) -> Option<Elements> {
    resource_elements(resource).or(match resource {
        "Patient" => Some(PATIENT),
        "Practitioner" => Some(PRACTITIONER),
        "Location" => Some(LOCATION),
        _ => None,
    })
}

/// Elements a resource must have, for the "required never set" check.
pub fn required_elements(resource: &str) -> &'static [&'static str] {
    match resource {
        "ServiceRequest" => &["status", "intent", "subject"],
        "DiagnosticReport" => &["status", "code", "subject"],
        _ => &[],
    }
}

/// Codes of the required bindings we know, by `Resource.element`.
pub fn required_binding(resource: &str, element: &str) -> Option<&'static [&'static str]> {
    Some(match (resource, element) {
        ("ServiceRequest", "status") => &[
            "draft",
            "active",
            "on-hold",
            "revoked",
            "completed",
            "entered-in-error",
            "unknown",
        ],
        ("ServiceRequest", "intent") => &[
            "proposal",
            "plan",
            "directive",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        ],
        ("ServiceRequest", "priority") => &["routine", "urgent", "asap", "stat"],
        ("Patient" | "Practitioner", "gender") => &["male", "female", "other", "unknown"],
        ("Location", "status") => &["active", "suspended", "inactive"],
        ("Location", "mode") => &["instance", "kind"],
        ("DiagnosticReport", "status") => &[
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
        _ => return None,
    })
}

fn prim_of(t: &'static str) -> Option<Ty> {
    let p = match t {
        "boolean" => Prim::Bool,
        "integer" | "unsignedInt" | "positiveInt" => Prim::Int,
        "decimal" => Prim::Decimal,
        t if t.starts_with(|c: char| c.is_ascii_lowercase()) => Prim::Str,
        _ => return None,
    };
    Some(Ty::Prim(p, t))
}

/// One step of a target path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TStep {
    /// An element name.
    Key(String),
    /// A fixed array index.
    Index(usize),
    /// `[*]`: the element of the current `for_each` item (an appended element).
    Each,
}

/// A checked FHIR target: steps and the leaf type.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirTarget {
    /// Steps from the resource root.
    pub steps: Vec<TStep>,
    /// Type of the element written.
    pub ty: Ty,
    /// The path as written (for messages).
    pub text: String,
}

/// Resolves `path` (e.g. `identifier[0].system`, `note[*].text`) against `resource`.
/// `partial` allows the path to end on a complex element (a `for_each` prefix).
/// The error is `(message, hint)`.
pub fn resolve(resource: &str, path: &str, partial: bool) -> Result<FhirTarget, (String, String)> {
    let mut elements = elements_of(resource).ok_or_else(|| {
        (
            format!("resource `{resource}` is not supported"),
            "use ServiceRequest or DiagnosticReport".to_string(),
        )
    })?;
    let mut steps = Vec::new();
    let mut ty = Ty::Complex("resource");
    let mut owner = resource.to_string();
    let segs: Vec<&str> = path.split('.').collect();
    for (i, seg) in segs.iter().enumerate() {
        let (name, sel) = match seg.find('[') {
            Some(p) if seg.ends_with(']') => (&seg[..p], Some(&seg[p + 1..seg.len() - 1])),
            Some(_) => {
                return Err((
                    format!("`{path}`: bad index in `{seg}`"),
                    "write `name[0]` or `name[*]`".into(),
                ));
            }
            None => (*seg, None),
        };
        let Some(&(_, t, list)) = elements.iter().find(|(n, _, _)| *n == name) else {
            let names: Vec<&str> = elements.iter().map(|e| e.0).collect();
            return Err((
                format!("`{name}` is not an element of {owner} (in target `{path}`)"),
                hint_for(name, &names),
            ));
        };
        steps.push(TStep::Key(name.to_string()));
        match (list, sel) {
            (true, None) => {
                return Err((
                    format!("`{name}` in {owner} is a list (target `{path}`)"),
                    format!("write `{name}[0]` for one element, or `{name}[*]` inside `for_each`"),
                ));
            }
            (false, Some(_)) => {
                return Err((
                    format!("`{name}` in {owner} is not a list (target `{path}`)"),
                    format!("remove the index: `{name}`"),
                ));
            }
            (true, Some("*")) => steps.push(TStep::Each),
            (true, Some(n)) => match n.parse::<usize>() {
                Ok(n) => steps.push(TStep::Index(n)),
                Err(_) => {
                    return Err((
                        format!("`{seg}`: index must be a number or `*` (target `{path}`)"),
                        "e.g. `identifier[0]`".into(),
                    ));
                }
            },
            (false, None) => {}
        }
        let last = i + 1 == segs.len();
        if let Some(p) = prim_of(t) {
            if !last {
                return Err((
                    format!("`{name}` is a {t}, it has no sub-elements (target `{path}`)"),
                    format!("end the target at `{name}`"),
                ));
            }
            ty = p;
        } else {
            let sub = datatype(t).ok_or_else(|| {
                (
                    format!("elements of `{t}` cannot be mapped (target `{path}`)"),
                    "use a different element".to_string(),
                )
            })?;
            ty = Ty::Complex(t);
            if last && !partial {
                let names: Vec<&str> = sub.iter().map(|e| e.0).collect();
                return Err((
                    format!(
                        "`{name}` is a {t}: a value needs a primitive element (target `{path}`)"
                    ),
                    format!("set one of its elements: {}", names.join(", ")),
                ));
            }
            elements = sub;
            owner = t.to_string();
        }
    }
    Ok(FhirTarget {
        steps,
        ty,
        text: path.to_string(),
    })
}

/// A suggestion for an unknown name: the closest known one, else the list.
pub fn hint_for(name: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (edit_distance(&name.to_lowercase(), &k.to_lowercase()), *k))
        .min();
    match best {
        Some((d, k)) if d <= 3 => format!("did you mean `{k}`?"),
        _ => format!("known: {}", known.join(", ")),
    }
}

/// Levenshtein distance (names are short).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let v = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
            cur.push(v);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A resource under construction. FHIR objects are small, so keys are found by a linear
/// scan rather than hashed (serde_json's map hashes with SipHash on every lookup, which
/// was a quarter of a ServiceRequest run); the tree becomes JSON once, at the end.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Tree {
    /// Nothing written yet.
    #[default]
    Empty,
    /// A primitive value.
    Leaf(Value),
    /// An object, keys in first-written order.
    Obj(Vec<(String, Tree)>),
    /// An array.
    Arr(Vec<Tree>),
}

impl Tree {
    /// A resource with its `resourceType`.
    pub fn resource(resource_type: &str) -> Tree {
        Tree::Obj(vec![(
            "resourceType".to_string(),
            Tree::Leaf(Value::String(resource_type.to_string())),
        )])
    }

    /// The JSON, without empty objects, arrays or strings (items that wrote nothing);
    /// `None` when nothing is left.
    pub fn into_value(self) -> Option<Value> {
        match self {
            Tree::Empty => None,
            Tree::Leaf(Value::String(s)) if s.is_empty() => None,
            Tree::Leaf(Value::Null) => None,
            Tree::Leaf(v) => Some(v),
            Tree::Obj(entries) => {
                // Sized up front: collecting a filter_map starts from an empty map and
                // regrows it (and its hash index) as entries arrive.
                let mut m = Map::with_capacity(entries.len());
                for (k, t) in entries {
                    if let Some(v) = t.into_value() {
                        m.insert(k, v);
                    }
                }
                (!m.is_empty()).then_some(Value::Object(m))
            }
            Tree::Arr(items) => {
                let mut a = Vec::with_capacity(items.len());
                a.extend(items.into_iter().filter_map(Tree::into_value));
                (!a.is_empty()).then_some(Value::Array(a))
            }
        }
    }
}

/// Writes `value` at `steps` in `root`, creating objects and arrays on the way; `each` is
/// the array index `[*]` stands for, per nesting level.
pub fn write(root: &mut Tree, steps: &[TStep], each: &[usize], value: Value) {
    let mut cur = root;
    let mut each_i = 0;
    for st in steps {
        match st {
            TStep::Key(name) => {
                if !matches!(cur, Tree::Obj(_)) {
                    *cur = Tree::Obj(Vec::new());
                }
                let Tree::Obj(entries) = cur else {
                    unreachable!("made an object")
                };
                let i = match entries.iter().position(|(k, _)| k == name) {
                    Some(i) => i,
                    None => {
                        entries.push((name.clone(), Tree::Empty));
                        entries.len() - 1
                    }
                };
                cur = &mut entries[i].1;
            }
            TStep::Index(_) | TStep::Each => {
                let i = match st {
                    TStep::Index(i) => *i,
                    _ => {
                        let i = each.get(each_i).copied().unwrap_or(0);
                        each_i += 1;
                        i
                    }
                };
                if !matches!(cur, Tree::Arr(_)) {
                    *cur = Tree::Arr(Vec::new());
                }
                let Tree::Arr(items) = cur else {
                    unreachable!("made an array")
                };
                if items.len() <= i {
                    items.resize(i + 1, Tree::Empty);
                }
                cur = &mut items[i];
            }
        }
    }
    *cur = Tree::Leaf(value);
}

/// Length of the array at `steps` (0 when absent), for appending `for_each` elements.
pub fn array_len(root: &Tree, steps: &[TStep], each: &[usize]) -> usize {
    let mut cur = root;
    let mut each_i = 0;
    for st in steps {
        let next = match (st, cur) {
            (TStep::Key(k), Tree::Obj(entries)) => {
                entries.iter().find(|(n, _)| n == k).map(|e| &e.1)
            }
            (TStep::Index(i), Tree::Arr(items)) => items.get(*i),
            (TStep::Each, Tree::Arr(items)) => {
                let i = each.get(each_i).copied().unwrap_or(0);
                each_i += 1;
                items.get(i)
            }
            _ => None,
        };
        match next {
            Some(t) => cur = t,
            None => return 0,
        }
    }
    match cur {
        Tree::Arr(items) => items.len(),
        _ => 0,
    }
}

/// Checks a resource with fhir-sdk's R4B types (same as R4 for these two resources).
/// The error is serde's message with quoted values removed, so no PHI leaks into it.
pub fn check(resource: &str, v: &Value) -> Result<(), String> {
    use fhir_sdk::r4b::resources::{DiagnosticReport, ServiceRequest};
    let r = match resource {
        "ServiceRequest" => ServiceRequest::deserialize(v).map(|_| ()),
        "DiagnosticReport" => DiagnosticReport::deserialize(v).map(|_| ()),
        other => return Err(format!("no check for resource {other}")),
    };
    r.map_err(|e| redact(&e.to_string()))
}

use serde::Deserialize;

/// Checks the local references of a resource: every `#id` reference names a contained
/// resource, and every contained resource is referenced (FHIR's dom-3). Messages name
/// ids, which come from the mapping file, never values.
pub fn check_local_references(v: &Value) -> Result<(), String> {
    fn refs<'v>(v: &'v Value, out: &mut Vec<&'v str>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("reference", Value::String(r)) if r.starts_with('#') => out.push(&r[1..]),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let ids: Vec<&str> = v
        .get("contained")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    refs(v, &mut found);
    if let Some(r) = found.iter().find(|r| !ids.contains(r)) {
        return Err(format!(
            "reference `#{r}` names no contained resource (its rules wrote nothing, or its `when` did not hold)"
        ));
    }
    if let Some(id) = ids.iter().find(|id| !found.contains(id)) {
        return Err(format!(
            "contained resource `#{id}` is not referenced (FHIR requires every contained resource to be referenced)"
        ));
    }
    Ok(())
}

/// serde's message, keeping only what cannot hold a value: field names and the list of
/// expected codes. Anything else (a date-time parse error, say) becomes a generic message,
/// because it may quote the offending value (PHI).
pub fn redact(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or("");
    let first = first.split(" at line ").next().unwrap_or(first);
    let expected = first.find(", expected").map_or("", |p| &first[p..]);
    if first.starts_with("missing field")
        || first.starts_with("unknown field")
        || first.starts_with("duplicate field")
    {
        first.to_string()
    } else if first.starts_with("unknown variant") {
        format!("unknown code{expected}")
    } else if first.starts_with("invalid type") {
        format!("invalid JSON type{expected}")
    } else {
        "a value does not match its FHIR type (date/time, code or number format)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolves_paths() {
        let t = resolve("ServiceRequest", "identifier[0].system", false).unwrap();
        assert_eq!(t.ty, Ty::Prim(Prim::Str, "uri"));
        assert_eq!(
            t.steps,
            [
                TStep::Key("identifier".into()),
                TStep::Index(0),
                TStep::Key("system".into())
            ]
        );
        assert!(resolve("ServiceRequest", "note[*].text", false).is_ok());
        assert!(resolve("ServiceRequest", "note[*]", true).is_ok());
        assert!(resolve("ServiceRequest", "code.coding[0].code", false).is_ok());
        let (m, h) = resolve("ServiceRequest", "identifer[0].value", false).unwrap_err();
        assert!(m.contains("identifer") && h.contains("identifier"), "{h}");
        let (_, h) = resolve("ServiceRequest", "code", false).unwrap_err();
        assert!(h.contains("text"));
        let (m, _) = resolve("ServiceRequest", "note.text", false).unwrap_err();
        assert!(m.contains("list"));
        let (m, _) = resolve("ServiceRequest", "status.x", false).unwrap_err();
        assert!(m.contains("no sub-elements"));
        assert_eq!(
            resolve("DiagnosticReport", "presentedForm[0].size", false)
                .unwrap()
                .ty,
            Ty::Prim(Prim::Int, "unsignedInt")
        );
    }

    #[test]
    fn writes_and_prunes() {
        let mut v = Tree::resource("ServiceRequest");
        let t = resolve("ServiceRequest", "identifier[1].value", false).unwrap();
        write(&mut v, &t.steps, &[], json!("A1"));
        let n = resolve("ServiceRequest", "note[*].text", false).unwrap();
        write(&mut v, &n.steps, &[0], json!("first"));
        write(&mut v, &n.steps, &[1], json!("second"));
        assert_eq!(array_len(&v, &n.steps[..1], &[]), 2);
        write(&mut v, &n.steps, &[3], json!(""));
        assert_eq!(
            v.into_value().unwrap(),
            json!({"resourceType": "ServiceRequest", "identifier": [{"value": "A1"}],
                   "note": [{"text": "first"}, {"text": "second"}]})
        );
    }

    #[test]
    fn fhir_sdk_check_and_redaction() {
        let ok = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                        "subject": {"display": "x"}});
        check("ServiceRequest", &ok).unwrap();
        let bad = json!({"resourceType": "ServiceRequest", "status": "SECRETVALUE", "intent": "order",
                         "subject": {"display": "x"}});
        let e = check("ServiceRequest", &bad).unwrap_err();
        assert!(!e.contains("SECRETVALUE"), "{e}");
        let missing =
            json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order"});
        assert!(check("ServiceRequest", &missing).is_err());
    }
}
