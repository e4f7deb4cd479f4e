//! Running one compiled mapping on one input: the evaluator fills the output (an HL7
//! message rendered segment by segment, a FHIR tree written as JSON, or report fields),
//! and the output is checked before it is returned.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use serde_json::Value;

use super::compile::Compiled;
use super::eval::{Env, Sink, SlotVal};
use super::out_fhir::{self, Leaf};
use super::out_hl7::{self, Render};
use super::output_check::{self, OutputCheck};
use super::plan::{FStep, Output as PlanOutput};
use super::trace::Trace;
use super::{Body, FhirJson, InboundContext, MapError, MapOptions, ReportField, Unmapped};
use crate::hl7::Delimiters;
use crate::hl7::writer;

/// An order mapping's document and unmapped values.
pub(super) fn order(
    m: &Compiled,
    input: &Value,
    options: &MapOptions,
    check: OutputCheck,
    trace: Option<&mut Trace>,
) -> Result<(Body, Vec<Unmapped>), MapError> {
    let zone = site_zone(input.get("site"))?;
    let mut env = Env::new(&m.plan, input, zone.clone());
    if trace.is_some() {
        env.record_trace();
    }
    let result = match &m.plan.output {
        PlanOutput::Fhir { .. } => fhir(m, &mut env, check).map(Body::Fhir),
        PlanOutput::Hl7 { .. } => hl7(m, &mut env, options, zone.as_ref(), check).map(Body::Hl7),
        PlanOutput::Report { .. } => Err(MapError::WrongInput(m.name.clone())),
    };
    if let (Some(t), Some(b)) = (trace, env.take_trace()) {
        t.fields.extend(b.fields);
    }
    let body = result?;
    Ok((body, count(&m.plan, env.unmapped)))
}

fn fhir<'a>(m: &'a Compiled, env: &mut Env<'a>, check: OutputCheck) -> Result<FhirJson, MapError> {
    let PlanOutput::Fhir {
        resource,
        contained,
        ops,
    } = &m.plan.output
    else {
        unreachable!("a FHIR plan")
    };
    let mut sink = Sink::new();
    let rt = [FStep::Key(out_fhir::RESOURCE_TYPE)];
    let id = [FStep::Key(out_fhir::ID)];
    sink.fhir
        .write(0, &rt, &[], Leaf::Str(Cow::Borrowed(resource)));
    let mut written = Vec::new();
    for c in contained {
        if let Some(w) = c.when
            && !env.test(w)
        {
            continue;
        }
        let node = sink.fhir.detached_object();
        sink.fhir
            .write(node, &rt, &[], Leaf::Str(Cow::Borrowed(&c.resource)));
        sink.fhir
            .write(node, &id, &[], Leaf::Str(Cow::Borrowed(&c.id)));
        sink.base = node;
        env.set_trace_contained(Some(&c.id));
        if env.run(&c.ops, &mut sink)? {
            written.push(node);
        }
    }
    env.set_trace_contained(None);
    sink.base = 0;
    for node in written {
        sink.fhir.append(0, out_fhir::CONTAINED, node);
    }
    env.run(ops, &mut sink)?;
    let text = sink.fhir.to_json(&m.plan.names, 2048);
    let checked = output_check::check_fhir(resource, &text).and_then(|()| match check {
        OutputCheck::Full => output_check::check_fhir_full(resource, &text),
        OutputCheck::Basic => Ok(()),
    });
    checked.map_err(|e| MapError::InvalidOutput {
        mapping: m.name.clone(),
        what: resource.to_string(),
        rules: rules_hint(m, &e.0),
        reason: e.0,
    })?;
    Ok(FhirJson(text))
}

fn hl7<'a>(
    m: &'a Compiled,
    env: &mut Env<'a>,
    options: &MapOptions,
    zone: Option<&TimeZone>,
    check: OutputCheck,
) -> Result<String, MapError> {
    let PlanOutput::Hl7 {
        message,
        line_breaks,
        segments,
        limits,
        ..
    } = &m.plan.output
    else {
        unreachable!("an HL7 plan")
    };
    let now = options.now.clone().unwrap_or_else(|| {
        jiff::Timestamp::now().to_zoned_datetime(zone.cloned().unwrap_or(TimeZone::UTC))
    });
    let now = writer::hl7_timestamp(&now);
    let control_id = options
        .control_id
        .clone()
        .unwrap_or_else(writer::new_control_id);
    let r = Render {
        delimiters: Delimiters::default(),
        line_breaks: *line_breaks,
        now: &now,
        control_id: &control_id,
    };
    let mut out = String::with_capacity(1536);
    let mut sink = Sink::new();
    // The segment written last and how many of its kind end the message: `$set_id`.
    let mut last: &str = "";
    let mut run = 0usize;
    // Segments written so far (the trace numbers them).
    let mut written = 0usize;
    for seg in segments {
        if let Some(c) = seg.when
            && !env.test(c)
        {
            continue;
        }
        let set_id = |last: &str, run: usize| if last == &*seg.id { run + 1 } else { 1 };
        match &seg.each {
            None => {
                env.set_id = set_id(last, run);
                env.set_trace_segment(&seg.id, written + 1);
                sink.cells.reset(&seg.init);
                env.run(&seg.ops, &mut sink)?;
                written += 1;
                out_hl7::render(&mut out, &seg.id, &seg.cells, &mut sink.cells, &r, &|x| {
                    env.cell_text(x)
                });
                run = if last == &*seg.id { run + 1 } else { 1 };
                last = &seg.id;
            }
            Some(each) => {
                env.each(each, &mut sink, |env, sink| {
                    env.set_id = set_id(last, run);
                    env.set_trace_segment(&seg.id, written + 1);
                    sink.cells.reset(&seg.init);
                    // The segment's own item: its values are read before the next one.
                    let nested = std::mem::replace(&mut sink.nested, 0);
                    let wrote = env.run(&each.body, sink);
                    sink.nested = nested;
                    if wrote? {
                        out_hl7::render(&mut out, &seg.id, &seg.cells, &mut sink.cells, &r, &|x| {
                            env.cell_text(x)
                        });
                        run = if last == &*seg.id { run + 1 } else { 1 };
                        last = &seg.id;
                        written += 1;
                        Ok(true)
                    } else {
                        Ok(false)
                    }
                })?;
            }
        }
    }
    let checked = output_check::check_hl7(&out, limits).and_then(|()| match check {
        OutputCheck::Full => output_check::check_hl7_full(&out),
        OutputCheck::Basic => Ok(()),
    });
    checked.map_err(|e| MapError::InvalidOutput {
        mapping: m.name.clone(),
        what: message.to_string(),
        reason: e.0,
        rules: "MSH rules and segment list".into(),
    })?;
    Ok(out)
}

/// Report fields of one inbound evaluation.
pub(super) fn report<'a>(
    m: &'a Compiled,
    env: &mut Env<'a>,
) -> Result<Vec<Option<String>>, MapError> {
    let PlanOutput::Report { ops } = &m.plan.output else {
        return Err(MapError::WrongInput(m.name.clone()));
    };
    let mut sink = Sink::new();
    env.run(ops, &mut sink)?;
    Ok(sink.report)
}

/// The inbound input as named parts.
pub(super) fn inbound_roots<'a>(
    ctx: &'a InboundContext,
    resource: Option<&'a Value>,
    read: Option<&'a Value>,
) -> Vec<(&'a str, SlotVal<'a>)> {
    let mut roots = Vec::with_capacity(5);
    if let Some(d) = &ctx.domain {
        roots.push(("domain", SlotVal::Text(d)));
    }
    roots.push(("site", SlotVal::Json(&ctx.site)));
    roots.push(("config", SlotVal::Json(&ctx.config)));
    if let Some(r) = resource {
        roots.push(("resource", SlotVal::Json(r)));
    }
    if let Some(r) = read {
        roots.push(("read", SlotVal::Json(r)));
    }
    roots
}

/// Rules whose target's top element is named in `reason` (the check names the element).
fn rules_hint(m: &Compiled, reason: &str) -> String {
    let hits: Vec<String> = m
        .plan
        .rules
        .iter()
        .filter(|r| {
            let top = r.at.target.split(['.', '[']).next().unwrap_or("");
            !top.is_empty()
                && (reason.contains(&format!("`{top}`"))
                    || reason.contains(&format!(".{top}"))
                    || reason.starts_with(&format!("{top} ")))
        })
        .map(|r| r.at.to_string())
        .collect();
    if hits.is_empty() {
        "not identified; run a dry run and compare with the resource's definition".into()
    } else {
        hits.join(", ")
    }
}

/// Rules that set report field `f`.
pub(super) fn rules_for_field(m: &Compiled, f: ReportField) -> String {
    let hits: Vec<String> = m
        .plan
        .rules
        .iter()
        .filter(|r| ReportField::parse(&r.at.target) == Some(f))
        .map(|r| r.at.to_string())
        .collect();
    if hits.is_empty() {
        "none".into()
    } else {
        hits.join(", ")
    }
}

/// The site's zone, from its IANA name.
pub(super) fn site_zone(site: Option<&Value>) -> Result<Option<TimeZone>, MapError> {
    match site.and_then(|s| s.get("timeZone")).and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(name) => zone_named(name).map(Some).ok_or_else(|| MapError::Value {
            rule: "site.timeZone".into(),
            reason: "not a known IANA time zone".into(),
        }),
    }
}

thread_local! {
    /// Zones looked up on this thread: a site's zone is needed for every message.
    static ZONES: std::cell::RefCell<Vec<(String, TimeZone)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn zone_named(name: &str) -> Option<TimeZone> {
    ZONES.with(|z| {
        if let Some((_, tz)) = z.borrow().iter().find(|(n, _)| n == name) {
            return Some(tz.clone());
        }
        let tz = jiff::tz::db().get(name).ok()?;
        let mut z = z.borrow_mut();
        if z.len() < 64 {
            z.push((name.to_string(), tz.clone()));
        }
        Some(tz)
    })
}

/// Unmapped values with how often each was met.
pub(super) fn count(plan: &super::plan::Plan, seen: Vec<(u32, Cow<'_, str>)>) -> Vec<Unmapped> {
    if seen.is_empty() {
        return Vec::new();
    }
    let mut m: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (t, v) in seen {
        *m.entry((plan.tables[t as usize].name.clone(), v.into_owned()))
            .or_default() += 1;
    }
    m.into_iter()
        .map(|((table, value), count)| Unmapped {
            table,
            value,
            count,
        })
        .collect()
}
