//! One mapping run on one input, as an analyst's tool shows it: the output as text, the
//! warnings, the input fields no rule read, and errors as data rather than failures. The
//! one implementation behind gRPC `PreviewMapping` and the console's playground. On request
//! it carries the run's value trace ([`super::trace`]), values included: the caller supplied
//! the input.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{Body, InboundContext, InputKind, MapOptions, MappingSet, Trace, Unmapped};

/// A warning about one run: a value a code table did not map, or what the HL7 reader
/// tolerated. May quote source values: show it to analysts, do not log it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// `unmapped_value` or `hl7_tolerated`.
    pub code: String,
    /// The rule or table concerned, when known.
    pub rule: String,
    pub message: String,
}

/// Why a run produced no output: `unparseable` input or a `mapping` error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub code: String,
    pub message: String,
}

/// What one run produced.
#[derive(Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The mapping set's version.
    pub version: String,
    /// FHIR JSON (pretty), ER7 (CR between segments), or the report submissions as JSON.
    pub output: String,
    pub warnings: Vec<Warning>,
    /// Input fields no rule read: order fields, HL7 positions of an ORU^R01, or element
    /// paths of a DiagnosticReport ([`super::unread`]).
    pub unread_fields: Vec<String>,
    pub errors: Vec<Problem>,
    /// How each output field came about, when asked for (`null` otherwise).
    pub trace: Option<Trace>,
}

/// The set has no mapping of that name; the message lists those it has.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no mapping `{name}`; the set has: {has}")]
pub struct NoSuchMapping {
    pub name: String,
    pub has: String,
}

fn unmapped(unmapped: &[Unmapped]) -> impl Iterator<Item = Warning> + '_ {
    unmapped.iter().map(|u| Warning {
        code: "unmapped_value".into(),
        rule: format!("table {}", u.table),
        message: format!(
            "`{}` is not in code table `{}` (seen {}x)",
            u.value, u.table, u.count
        ),
    })
}

fn problem(code: &str, message: String) -> Problem {
    Problem {
        code: code.into(),
        message,
    }
}

/// Runs `mapping` of `set` on `input` (an Order as JSON, an ORU^R01, or a FHIR
/// DiagnosticReport as JSON, as the mapping takes). `site_time_zone` (may be empty) stands
/// for the site's zone; `config` are `mappings.values`. With `trace`, the run also records
/// its value trace.
pub fn preview(
    set: &MappingSet,
    mapping: &str,
    input: &str,
    site_time_zone: &str,
    config: &Map<String, Value>,
    trace: bool,
) -> Result<Preview, NoSuchMapping> {
    let Some(kind) = set.get(mapping).map(|m| m.input) else {
        return Err(NoSuchMapping {
            name: mapping.to_string(),
            has: set.names().collect::<Vec<_>>().join(", "),
        });
    };
    let mut preview = Preview {
        version: set.version().to_string(),
        ..Default::default()
    };
    let site = if site_time_zone.is_empty() {
        Value::Null
    } else {
        json!({"siteName": "", "timeZone": site_time_zone})
    };
    let config = Value::Object(config.clone());
    let not_json = |e: serde_json::Error| {
        problem(
            "unparseable",
            format!("input is not JSON: {}", crate::domain::json_error(&e)),
        )
    };
    match kind {
        InputKind::Order => {
            let mut order: Value = match serde_json::from_str(input) {
                Ok(v) => v,
                Err(e) => {
                    preview.errors.push(not_json(e));
                    return Ok(preview);
                }
            };
            if let Some(o) = order.as_object_mut() {
                if !site.is_null() && o.get("site").is_none_or(Value::is_null) {
                    o.insert("site".into(), site);
                }
                o.entry("config").or_insert(config);
            }
            if trace {
                preview.trace = Some(
                    set.map_order_traced(mapping, &order, &MapOptions::default())
                        .1,
                );
            }
            match set.dry_run(mapping, &order, &MapOptions::default()) {
                Ok(run) => {
                    preview.output = match run.output.body {
                        Body::Fhir(v) => v.to_pretty(),
                        Body::Hl7(s) => s,
                    };
                    preview.warnings = unmapped(&run.output.unmapped).collect();
                    preview.unread_fields = run.unread_fields;
                }
                Err(e) => preview.errors.push(problem("mapping", e.to_string())),
            }
        }
        InputKind::Oru | InputKind::DiagnosticReport => {
            let ctx = InboundContext {
                domain: None,
                site,
                config,
            };
            let compiled = set.get(mapping);
            let mut unread = Vec::new();
            let mapped = if kind == InputKind::Oru {
                if let Some(m) = compiled {
                    unread = super::unread::oru(m, input);
                }
                if trace {
                    let (r, t) = set.map_oru_traced(mapping, input, &ctx);
                    preview.trace = Some(t);
                    r
                } else {
                    set.map_oru_with(mapping, input, &ctx)
                }
            } else {
                match serde_json::from_str::<Value>(input) {
                    Ok(v) => {
                        if let Some(m) = compiled {
                            unread = super::unread::diagnostic_report(m, &v);
                        }
                        if trace {
                            let (r, t) = set.map_diagnostic_report_traced(&v, &ctx);
                            preview.trace = Some(t);
                            r
                        } else {
                            set.map_diagnostic_report(&v, &ctx)
                        }
                    }
                    Err(e) => {
                        preview.errors.push(not_json(e));
                        return Ok(preview);
                    }
                }
            };
            match mapped {
                Ok(inbound) => {
                    preview.output =
                        serde_json::to_string_pretty(&inbound.submissions).unwrap_or_default();
                    preview.warnings = unmapped(&inbound.unmapped).collect();
                    preview.unread_fields = unread;
                    preview
                        .warnings
                        .extend(inbound.warnings.into_iter().map(|w| Warning {
                            code: "hl7_tolerated".into(),
                            rule: String::new(),
                            message: w,
                        }));
                }
                Err(e) => preview.errors.push(problem("mapping", e.to_string())),
            }
        }
    }
    Ok(preview)
}
